//! `stockflow-demo`: a day of multi-channel traffic through real workers.
//!
//! Starts the stock, order and notify workers and the gateway in this process (against
//! `STOCKFLOW_NATS_URL` / `STOCKFLOW_REDIS_URL`) and a webhook receiver on 127.0.0.1, replays a
//! store chain's day — a warehouse receipt, transfers, the sales channels opening (three stores'
//! POS, the web shop, a marketplace with a buffer), POS sales at three stores, marketplace sales
//! that name their channel and re-sends of some of them, returns, damage, a cycle count (one of
//! them stale), a restock, and a few malformed messages — prints what each channel may sell at
//! the close (from the `AVAILABILITY` feed, checked against the levels) and how the buffer held
//! the marketplace back, then sends the web shop's checkouts through the gateway (one of them a
//! preorder, filled when its purchase order arrives) and prints the
//! final levels, the alerts, the duplicates absorbed, the dead letters, the order decisions and
//! the signed webhook deliveries the receiver verified. Every run uses its own key prefix and its
//! own channel ids (`<run>-<name>`), so it starts from zero.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    io::Write as _,
    time::Duration,
};

use anyhow::Context as _;
use prost::Message as _;
use stockflow_cli::{
    events, last_sequence, read_after, read_levels,
    receiver::{Delivery, WebhookReceiver},
    wait_until_caught_up, wait_until_stock_caught_up,
};
use stockflow_proto::{
    msg_id, subjects,
    v1::{
        channel_event, order_result, stock_event::Change, Adjusted, AlertKind, AllocationStrategy,
        AvailabilityRules, BackorderPolicy, Channel, ChannelAvailabilityChanged, ChannelEvent,
        ChannelKind, ChannelRulesSet, ChannelSet, Counted, EventMeta, Expected, KitComponent,
        KitDefined, OrderResult, PolicySet, Reason, Received, ReleaseReason, Returned, Sold,
        StockAlert, StockEvent, Transferred, UnsellableMoved, UnsellableState,
    },
};
use stockflow_shared::{
    keys::Keys,
    settings::{Env, Secret},
};
use tokio_util::sync::CancellationToken;

const SKUS: &[&str] = &[
    "TSHIRT-BLK-M",
    "TSHIRT-BLK-L",
    "HOODIE-GRY-S",
    "SNEAKER-42",
    "MUG-LOGO",
    "Café crème 250g",
];
const STORES: &[&str] = &["store-01", "store-02", "store-03"];
const WAREHOUSE: &str = "wh-east";
/// The demo's webhook subscriptions: id, hook path on the receiver, event types.
const HOOKS: [(&str, &str, &[&str]); 2] = [
    (
        "demo-alerts",
        "alerts",
        &[
            "low_stock",
            "out_of_stock",
            "back_in_stock",
            "negative_stock",
            "channel_oversold",
        ],
    ),
    (
        "demo-orders",
        "orders",
        &["order_confirmed", "order_rejected", "order_released"],
    ),
];
/// How long the receiver may take to see every expected delivery once the day is over.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
const WEB: &str = "web";

/// The marketplace: the channel whose buffer the day is about.
const MARKETPLACE: &str = "marketplace";
/// The web shop's channel (its own stock, then the warehouse, then the stores).
const WEB_SHOP: &str = "web";
/// The marketplace hears each change of what it may list this many of the day's events late
/// (a connector that is a moment behind), and sells only what it lists as it last heard.
const MARKETPLACE_LAG: usize = 12;
/// SNEAKER-42 sells fast at the stores: the marketplace keeps more of it back.
const SNEAKER_BUFFER: i64 = 5;

/// The marketplace's rules: 2 units held back for the stores' own customers, at most 25
/// listed, nothing listed below 3.
fn marketplace_rules() -> AvailabilityRules {
    AvailabilityRules {
        buffer: Some(2),
        max_listed: Some(25),
        end_when_below: Some(3),
        ..Default::default()
    }
}

/// The per-SKU overrides of the marketplace's rules: (SKU, rules).
fn marketplace_overrides() -> Vec<(&'static str, AvailabilityRules)> {
    vec![(
        "SNEAKER-42",
        AvailabilityRules {
            buffer: Some(SNEAKER_BUFFER),
            ..Default::default()
        },
    )]
}

/// The day's sales channels, by short name; their ids are `<run>-<name>` (the feed and the
/// `CHANNELS` bucket are not scoped by the key prefix, so every run names its own).
fn sales_channels(run: &str) -> Vec<(String, Channel)> {
    let channel = |name: &str,
                   display: &str,
                   kind: ChannelKind,
                   locations: &[&str],
                   rules: AvailabilityRules,
                   allocation: AllocationStrategy| {
        (
            name.to_owned(),
            Channel {
                id: format!("{run}-{name}"),
                name: display.to_owned(),
                kind: kind.into(),
                locations: locations.iter().map(|l| (*l).to_owned()).collect(),
                rules: Some(rules),
                allocation: allocation.into(),
                rules_version: 0,
            },
        )
    };
    let mut channels: Vec<(String, Channel)> = STORES
        .iter()
        .map(|store| {
            channel(
                &format!("pos-{store}"),
                &format!("{store} POS"),
                ChannelKind::Pos,
                &[store],
                AvailabilityRules::default(),
                AllocationStrategy::Priority,
            )
        })
        .collect();
    let mut web_locations = vec![WEB, WAREHOUSE];
    web_locations.extend(STORES);
    channels.push(channel(
        WEB_SHOP,
        "web shop",
        ChannelKind::Web,
        &web_locations,
        AvailabilityRules {
            percent: Some(90),
            ..Default::default()
        },
        AllocationStrategy::Priority,
    ));
    channels.push(channel(
        MARKETPLACE,
        "marketplace (acme)",
        ChannelKind::Marketplace,
        STORES,
        marketplace_rules(),
        AllocationStrategy::MostAvailable,
    ));
    channels
}

/// The rules `channel` applies to `sku`: its own, or the SKU's override field by field.
fn override_for(name: &str, sku: &str) -> Option<AvailabilityRules> {
    (name == MARKETPLACE)
        .then(|| {
            marketplace_overrides()
                .into_iter()
                .find(|(s, _)| *s == sku)
                .map(|(_, rules)| rules)
        })
        .flatten()
}

/// A tiny deterministic generator: the same day every run.
struct Dice(u64);

impl Dice {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // n is small; the modulo bias is irrelevant for a demo.
        (self.0 % n as u64) as usize
    }
}

/// One phase of the day: its events are published, then the worker catches up.
struct Phase {
    title: &'static str,
    events: Vec<Outgoing>,
}

enum Outgoing {
    /// A fact, published under its `Nats-Msg-Id` (`stockflow_proto::msg_id`).
    Fact(StockEvent),
    /// A re-send of an earlier event: same event_id, a `Nats-Msg-Id` of its own, as a channel's
    /// re-send after JetStream's duplicate window would be; the stock worker absorbs it.
    Resend(StockEvent),
    Malformed(&'static str, String, Vec<u8>),
    /// A channel definition, published on `channels.events.<channel-id>` under its
    /// `Nats-Msg-Id` (`msg_id::channel_event`).
    Channel(ChannelEvent),
}

/// The day's event ids: `<run>-<prefix>-<n>`, numbered in the order they are made.
struct Ids<'a> {
    run: &'a str,
    n: usize,
}

impl Ids<'_> {
    fn next(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{}-{prefix}-{:05}", self.run, self.n)
    }

    /// A fact with a fresh id, to publish as is.
    fn fact(
        &mut self,
        prefix: &str,
        source: &str,
        reason: Reason,
        sku: &str,
        location: &str,
        change: Change,
    ) -> Outgoing {
        Outgoing::Fact(events::fact(
            self.next(prefix),
            source,
            reason,
            sku,
            location,
            change,
        ))
    }
}

/// The day: the morning (up to the channels opening), the trading day and the evening, and
/// what the marketplace's buyers did.
struct Day {
    morning: Vec<Phase>,
    rest: Vec<Phase>,
    marketplace: MarketplaceDay,
}

fn day(run: &str, channels: &[(String, Channel)]) -> Day {
    let mut ids = Ids { run, n: 0 };
    let mut dice = Dice(0x5eed_cafe);
    let opening = policies_and_receipt(&mut ids);
    let transfers = transfers(&mut ids);
    let open = channels_open(&mut ids, channels);
    let marketplace = channel_id(channels, MARKETPLACE);
    let (mut trading, resends, marketplace_day) = trading(&mut ids, &mut dice, &marketplace);
    trading.extend(malformed(&mut ids));
    let purchase = purchase_order_and_damage(&mut ids);
    let evening = evening(&mut ids, resends);
    Day {
        morning: vec![
            Phase {
                title: "07:00 policies and the warehouse receipt",
                events: opening,
            },
            Phase {
                title: "08:00 transfers to the stores and the web shop",
                events: transfers,
            },
            Phase {
                title: "08:30 the sales channels open",
                events: open,
            },
        ],
        rest: vec![
            Phase {
                title: "09:00-21:00 POS sales, marketplace sales, returns, damage",
                events: trading,
            },
            Phase {
                title: "17:00 a purchase order arrives in part; a damaged unit",
                events: purchase,
            },
            Phase {
                title: "21:30 cycle counts, restock, late marketplace re-sends",
                events: evening,
            },
        ],
        marketplace: marketplace_day,
    }
}

/// The id of the channel named `name` (`<run>-<name>`).
fn channel_id(channels: &[(String, Channel)], name: &str) -> String {
    channels
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c.id.clone())
        .unwrap_or_default()
}

/// Units each store gets from the warehouse in the morning (few sneakers to store-02).
fn stocked(sku: &str, store: &str) -> i64 {
    if sku == "SNEAKER-42" && store == "store-02" {
        30
    } else {
        80
    }
}

/// The channel definitions (stores have stock by now: a channel may only name known
/// locations), then the marketplace's per-SKU overrides.
fn channels_open(ids: &mut Ids<'_>, channels: &[(String, Channel)]) -> Vec<Outgoing> {
    let mut events: Vec<Outgoing> = channels
        .iter()
        .map(|(_, channel)| {
            let event_id = ids.next("chn");
            Outgoing::Channel(ChannelEvent {
                meta: Some(EventMeta {
                    reference: format!("urn:stockflow:erp:{event_id}"),
                    event_id,
                    occurred_at_ms: events::now_ms(),
                    source: "erp".into(),
                    reason: Reason::Policy.into(),
                }),
                channel_id: channel.id.clone(),
                change: Some(channel_event::Change::Set(ChannelSet {
                    channel: Some(channel.clone()),
                })),
            })
        })
        .collect();
    let marketplace = channel_id(channels, MARKETPLACE);
    for (sku, rules) in marketplace_overrides() {
        events.push(ids.fact(
            "ovr",
            "erp",
            Reason::Policy,
            sku,
            "",
            Change::ChannelRules(ChannelRulesSet {
                channel: marketplace.clone(),
                rules: Some(rules),
            }),
        ));
    }
    events
}

/// What the marketplace's buyers did during the day, per SKU.
#[derive(Default)]
struct MarketplaceDay {
    /// Units it sold (each a `sold` fact naming the channel).
    sold: BTreeMap<&'static str, i64>,
    /// Buyers it turned away because it listed 0 (as it last heard).
    turned_away: BTreeMap<&'static str, i64>,
}

/// The stores' levels as the day's script has them, so that the marketplace sells only what it
/// lists: it hears what it may list (the channel's rules applied to the stores' levels, by the
/// model `stockflow_shared::channels::quantity`) `MARKETPLACE_LAG` events late.
struct Shelves {
    /// on_hand per SKU, per store in `STORES` order (nothing is reserved during the day).
    on_hand: BTreeMap<&'static str, Vec<i64>>,
    /// What the marketplace listed after each of the last events, per SKU, the oldest first.
    listed: VecDeque<BTreeMap<&'static str, i64>>,
}

impl Shelves {
    fn new() -> Self {
        let on_hand = SKUS
            .iter()
            .map(|sku| (*sku, STORES.iter().map(|st| stocked(sku, st)).collect()))
            .collect();
        let mut shelves = Self {
            on_hand,
            listed: VecDeque::new(),
        };
        shelves.tick();
        shelves
    }

    fn add(&mut self, sku: &str, store: &str, delta: i64) {
        let i = STORES.iter().position(|s| *s == store).unwrap_or_default();
        if let Some(levels) = self.on_hand.get_mut(sku) {
            levels[i] += delta;
        }
    }

    /// What the marketplace may list of `sku` now.
    fn listing(&self, sku: &str) -> i64 {
        let levels = self.on_hand.get(sku).cloned().unwrap_or_default();
        stockflow_shared::channels::quantity(
            &levels,
            &marketplace_rules(),
            override_for(MARKETPLACE, sku).as_ref(),
        )
        .0
    }

    /// One event of the day went by.
    fn tick(&mut self) {
        let now = SKUS.iter().map(|sku| (*sku, self.listing(sku))).collect();
        self.listed.push_back(now);
        while self.listed.len() > MARKETPLACE_LAG + 1 {
            self.listed.pop_front();
        }
    }

    /// What the marketplace believes it may list of `sku`.
    fn heard(&self, sku: &str) -> i64 {
        self.listed
            .front()
            .and_then(|listed| listed.get(sku).copied())
            .unwrap_or_default()
    }

    /// A marketplace sale, taken as the channel takes it: the store with the most available
    /// first (ties in listing order), what none covers from the first of them.
    fn take(&mut self, sku: &str, quantity: i64) {
        let Some(levels) = self.on_hand.get_mut(sku) else {
            return;
        };
        let mut order: Vec<usize> = (0..levels.len()).collect();
        order.sort_by_key(|i| std::cmp::Reverse(levels[*i]));
        let mut left = quantity;
        for i in &order {
            let take = left.min(levels[*i].max(0));
            levels[*i] -= take;
            left -= take;
        }
        if let Some(first) = order.first() {
            levels[*first] -= left;
        }
    }
}

/// Per SKU: a SKU-wide low-stock threshold, the web shop's policy, the warehouse receipt.
fn policies_and_receipt(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let mut events = Vec::new();
    for sku in SKUS {
        events.push(ids.fact(
            "pol",
            "erp",
            Reason::Policy,
            sku,
            "",
            Change::PolicySet(PolicySet {
                low_stock_threshold: Some(5),
                safety_stock: None,
                location_priority: vec![],
                ..PolicySet::default()
            }),
        ));
        events.push(ids.fact(
            "pol",
            "erp",
            Reason::Policy,
            sku,
            WEB,
            Change::PolicySet(PolicySet {
                low_stock_threshold: Some(8),
                safety_stock: Some(2),
                location_priority: vec![],
                ..PolicySet::default()
            }),
        ));
        events.push(ids.fact(
            "rcv",
            "wms",
            Reason::Received,
            sku,
            WAREHOUSE,
            Change::Received(Received { quantity: 400 }),
        ));
    }
    events
}

/// From the warehouse to every store (few sneakers to store-02) and to the web shop.
fn transfers(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let mut events = Vec::new();
    for sku in SKUS {
        for store in STORES {
            let quantity = stocked(sku, store);
            events.push(ids.fact(
                "trf",
                "wms",
                Reason::Transfer,
                sku,
                WAREHOUSE,
                Change::Transferred(Transferred {
                    to_location: (*store).into(),
                    quantity,
                }),
            ));
        }
        events.push(ids.fact(
            "trf",
            "wms",
            Reason::Transfer,
            sku,
            WAREHOUSE,
            Change::Transferred(Transferred {
                to_location: WEB.into(),
                quantity: 80,
            }),
        ));
    }
    events
}

/// A thousand buyers — every fifth at the marketplace, which sells only what it lists as it
/// last heard, names its channel instead of a location, and re-sends about one sale in eight at
/// once — returns now and then, and a damaged item. Also gives the marketplace's re-sent sales,
/// for the late re-sends of the evening, and what its buyers did.
fn trading(
    ids: &mut Ids<'_>,
    dice: &mut Dice,
    marketplace: &str,
) -> (Vec<Outgoing>, Vec<StockEvent>, MarketplaceDay) {
    let mut events = Vec::new();
    let mut resends = Vec::new();
    let mut shelves = Shelves::new();
    let mut day = MarketplaceDay::default();
    for i in 0..1000 {
        let sku = SKUS[dice.next(SKUS.len())];
        if i % 5 == 0 && shelves.heard(sku) < 1 {
            *day.turned_away.entry(sku).or_default() += 1;
        } else if i % 5 == 0 {
            let event = StockEvent {
                channel: marketplace.to_owned(),
                ..events::fact(
                    ids.next("mkt"),
                    "marketplace:acme",
                    Reason::Sold,
                    sku,
                    "",
                    Change::Sold(Sold { quantity: 1 }),
                )
            };
            shelves.take(sku, 1);
            *day.sold.entry(sku).or_default() += 1;
            // The marketplace feed re-sends about one sale in eight, some of them at once.
            if dice.next(8) == 0 {
                events.push(Outgoing::Resend(event.clone()));
                resends.push(event.clone());
            }
            events.push(Outgoing::Fact(event));
        } else {
            let store = STORES[dice.next(STORES.len())];
            let sku = if store == "store-02" && dice.next(12) == 0 {
                "SNEAKER-42"
            } else {
                sku
            };
            let quantity = 1 + i64::try_from(dice.next(2)).unwrap_or(0);
            shelves.add(sku, store, -quantity);
            events.push(ids.fact(
                "pos",
                &format!("pos:{store}"),
                Reason::Sold,
                sku,
                store,
                Change::Sold(Sold { quantity }),
            ));
        }
        if i % 90 == 0 {
            let store = STORES[dice.next(STORES.len())];
            shelves.add(sku, store, 1);
            events.push(ids.fact(
                "ret",
                &format!("pos:{store}"),
                Reason::Returned,
                sku,
                store,
                Change::Returned(Returned { quantity: 1 }),
            ));
        }
        shelves.tick();
    }
    events.push(ids.fact(
        "dmg",
        "pos:store-03",
        Reason::Damaged,
        "MUG-LOGO",
        "store-03",
        Change::Adjusted(Adjusted { delta: -2 }),
    ));
    (events, resends, day)
}

/// Messages the stock worker must dead-letter: undecodable bytes, a zero quantity, a missing
/// event_id, no fact type.
fn malformed(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let subject = subjects::stock_event("MUG-LOGO");
    let mut events = vec![Outgoing::Malformed(
        "undecodable bytes",
        subject.clone(),
        b"\x08\x96\x01garbage".to_vec(),
    )];
    let mut zero = events::fact(
        ids.next("bad"),
        "pos:store-01",
        Reason::Sold,
        "MUG-LOGO",
        "store-01",
        Change::Sold(Sold { quantity: 0 }),
    );
    events.push(Outgoing::Malformed(
        "zero quantity",
        subject.clone(),
        zero.encode_to_vec(),
    ));
    if let Some(meta) = zero.meta.as_mut() {
        meta.event_id.clear();
    }
    events.push(Outgoing::Malformed(
        "missing event_id",
        subject.clone(),
        zero.encode_to_vec(),
    ));
    zero.change = None;
    if let Some(meta) = zero.meta.as_mut() {
        meta.event_id = "no-type".into();
    }
    events.push(Outgoing::Malformed(
        "unknown fact type",
        subject,
        zero.encode_to_vec(),
    ));
    events
}

/// The purchase order the demo's hoodies come on.
const PURCHASE_ORDER: &str = "PO-4711";
/// When the rest of it is expected: 2026-12-14 09:00 UTC.
const PURCHASE_ORDER_DUE_MS: i64 = 1_797_238_800_000;

/// The SKU the web shop takes preorders for: none in stock, a purchase order on its way.
const PREORDER_SKU: &str = "CONSOLE-X";
/// The purchase order it comes on.
const PREORDER_PURCHASE_ORDER: &str = "PO-4712";
/// Units expected on it.
const PREORDER_EXPECTED: i64 = 20;

/// A purchase order of 60 hoodies for the warehouse, 40 of them received in the afternoon (20
/// stay incoming, not available), and a T-shirt found damaged at the warehouse: it stays on
/// hand but leaves available and every channel's quantity at once.
fn purchase_order_and_damage(ids: &mut Ids<'_>) -> Vec<Outgoing> {
    let mut receipt = events::fact(
        ids.next("rcv"),
        "wms",
        Reason::Received,
        "HOODIE-GRY-S",
        WAREHOUSE,
        Change::Received(Received { quantity: 40 }),
    );
    receipt.purchase_order = PURCHASE_ORDER.into();
    vec![
        ids.fact(
            "po",
            "erp",
            Reason::Unspecified,
            "HOODIE-GRY-S",
            WAREHOUSE,
            Change::Expected(Expected {
                purchase_order: PURCHASE_ORDER.into(),
                quantity: 60,
                expected_at_ms: PURCHASE_ORDER_DUE_MS,
            }),
        ),
        Outgoing::Fact(receipt),
        // Preorders: CONSOLE-X may be sold against what is incoming, and 20 are on their way.
        ids.fact(
            "pol",
            "erp",
            Reason::Unspecified,
            PREORDER_SKU,
            "",
            Change::PolicySet(PolicySet {
                backorder_policy: BackorderPolicy::AgainstIncoming.into(),
                ..PolicySet::default()
            }),
        ),
        ids.fact(
            "po",
            "erp",
            Reason::Unspecified,
            PREORDER_SKU,
            WAREHOUSE,
            Change::Expected(Expected {
                purchase_order: PREORDER_PURCHASE_ORDER.into(),
                quantity: PREORDER_EXPECTED,
                expected_at_ms: PURCHASE_ORDER_DUE_MS,
            }),
        ),
        ids.fact(
            "dmg",
            "wms",
            Reason::Damaged,
            "TSHIRT-BLK-L",
            WAREHOUSE,
            Change::UnsellableMoved(UnsellableMoved {
                state: UnsellableState::Damaged.into(),
                quantity: 1,
                to_unsellable: true,
            }),
        ),
    ]
}

/// Cycle counts (one of them stale), a restock of the sneakers, and late re-sends from the
/// marketplace, hours after the originals.
fn evening(ids: &mut Ids<'_>, resends: Vec<StockEvent>) -> Vec<Outgoing> {
    let mut events = vec![
        ids.fact(
            "cnt",
            "handheld:store-01",
            Reason::CycleCount,
            "MUG-LOGO",
            "store-01",
            Change::Counted(Counted {
                on_hand: 3,
                expected_on_hand: Some(9_999),
            }),
        ),
        ids.fact(
            "cnt",
            "handheld:store-01",
            Reason::CycleCount,
            "HOODIE-GRY-S",
            "store-01",
            Change::Counted(Counted {
                on_hand: 7,
                expected_on_hand: None,
            }),
        ),
        ids.fact(
            "trf",
            "wms",
            Reason::Transfer,
            "SNEAKER-42",
            WAREHOUSE,
            Change::Transferred(Transferred {
                to_location: "store-02".into(),
                quantity: 80,
            }),
        ),
    ];
    events.extend(resends.into_iter().take(10).map(Outgoing::Resend));
    events
}

fn progress(done: usize, total: usize, title: &str) {
    let width = 30;
    let filled = done * width / total.max(1);
    eprint!(
        "\r  [{}{}] {done:>5}/{total} {title:<60}",
        "#".repeat(filled),
        ".".repeat(width - filled)
    );
    std::io::stderr().flush().ok();
}

/// The process environment with `overrides` on top: each in-process component gets its own.
fn overlay(overrides: &[(&str, String)]) -> Env {
    let map: BTreeMap<String, String> = overrides
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    Env::from_fn(move |name| map.get(name).cloned().or_else(|| std::env::var(name).ok()))
}

/// A secret nobody can guess from outside this run (the demo's signing secret and gateway token).
fn fresh_secret(run: &str, purpose: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(run)
        .chain_update(purpose)
        .chain_update(std::process::id().to_le_bytes())
        .chain_update(format!("{:?}", std::time::SystemTime::now()))
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the subscriptions file that points the notify worker at `receiver`.
fn write_subscriptions(
    dir: &std::path::Path,
    receiver: &WebhookReceiver,
) -> anyhow::Result<std::path::PathBuf> {
    let subscriptions: Vec<serde_json::Value> = HOOKS
        .iter()
        .map(|(id, hook, events)| {
            serde_json::json!({"id": id, "url": receiver.url(hook), "events": events})
        })
        .collect();
    let path = dir.join("webhooks.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "subscriptions": subscriptions }))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The id the notify worker delivers a derived event under: its `Nats-Msg-Id`, or
/// `<stream>:<sequence>` without one (workers/notify/README.md).
fn delivery_id(message: &async_nats::jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| match message.info() {
            Ok(info) => format!("{}:{}", info.stream, info.stream_sequence),
            Err(_) => message.subject.to_string(),
        })
}

/// One checkout through the gateway, waiting up to 2 s for the decision.
async fn checkout(
    http: &reqwest::Client,
    api: std::net::SocketAddr,
    token: &Secret,
    run: &str,
    (n, sku, quantity, hold_seconds): (usize, &str, i64, i64),
) -> anyhow::Result<String> {
    let order_id = format!("{run}-order-{n}");
    let answer = http
        .post(format!("http://{api}/v1/orders?wait=2s"))
        .bearer_auth(token.expose())
        .header("Idempotency-Key", format!("{run}-chk-{n}"))
        .json(&serde_json::json!({
            "order_id": order_id,
            "source": "web:checkout",
            "lines": [{"line_id": "1", "sku": sku, "quantity": quantity}],
            "hold_seconds": hold_seconds,
        }))
        .send()
        .await
        .with_context(|| format!("POST /v1/orders for {order_id}"))?;
    let status = answer.status();
    let body: serde_json::Value = answer
        .json()
        .await
        .context("reading the gateway's answer")?;
    let detail = match status.as_u16() {
        201 => body["allocations"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        let mut line = format!(
                            "{} x{} from {}",
                            l["sku"].as_str().unwrap_or("?"),
                            l["quantity"],
                            l["location"].as_str().unwrap_or("?")
                        );
                        if let Some(waiting) = l["backordered"].as_i64() {
                            line.push_str(&format!(
                                ", {waiting} backordered (a preorder, expected {})",
                                l["backorder_expected_at_ms"]
                                    .as_i64()
                                    .map_or("some day".to_owned(), day_of)
                            ));
                        }
                        line
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        409 => body["shortfalls"]
            .as_array()
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| {
                        format!(
                            "{} wanted {}, at most {} at one location",
                            l["sku"].as_str().unwrap_or("?"),
                            l["requested"],
                            l["available"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        202 => "no decision within 2s".to_owned(),
        _ => anyhow::bail!("the gateway answered {status} for {order_id}: {body}"),
    };
    Ok(format!(
        "order-{n:<3} {} {:<10} {detail}",
        status.as_u16(),
        body["decision"].as_str().unwrap_or("pending")
    ))
}

/// Prints the verified deliveries of this run, one line each, and a summary.
fn print_deliveries(receiver: &WebhookReceiver, run: &str, expected: &HashSet<String>) {
    let all = receiver.deliveries();
    let (ours, earlier): (Vec<&Delivery>, Vec<&Delivery>) =
        all.iter().partition(|d| d.body.to_string().contains(run));
    let mut seen = HashSet::new();
    let mut verified = 0;
    for (_, hook, _) in HOOKS {
        stockflow_cli::outln!("\n  POST /hooks/{hook}");
        for d in ours.iter().filter(|d| d.hook == hook) {
            if !seen.insert(d.event_id.clone()) {
                continue;
            }
            let about = if hook == "orders" {
                format!(
                    "{:<29}",
                    d.data("order_id").trim_start_matches(&format!("{run}-"))
                )
            } else {
                // A channel's alert names the channel, the others a location.
                let place = match d.data("channel") {
                    "" => d.data("location"),
                    channel => channel.trim_start_matches(&format!("{run}-")),
                };
                format!("{:<18} {place:<10}", d.data("sku"))
            };
            let signature = match &d.signature {
                Ok(()) => {
                    verified += 1;
                    "signature ok".to_owned()
                }
                Err(e) => format!("SIGNATURE REFUSED: {e}"),
            };
            stockflow_cli::outln!(
                "    {:<16} {about} {signature}  {}",
                d.event_type,
                d.event_id.replace(&format!("{run}-"), "")
            );
        }
    }
    let repeats = ours.len() - seen.len();
    stockflow_cli::outln!(
        "\nWebhooks: {} expected, {} delivered, {verified} signatures verified, {} repeated \
         (at-least-once: receivers dedup on X-Stockflow-Event-Id){}",
        expected.len(),
        seen.len(),
        repeats,
        if earlier.is_empty() {
            String::new()
        } else {
            format!(", {} left over from earlier runs", earlier.len())
        }
    );
}

const PROGRAM: stockflow_shared::cli::Program = stockflow_shared::cli::Program {
    name: "stockflow-demo",
    version: env!("CARGO_PKG_VERSION"),
    about: "Runs every worker in one process and plays a day at a three-store chain against the \
            NATS and Redis the environment points at.",
    commands: &[],
    listing_env: &[],
    // The demo's own defaults last: they replace the workers' in the listing.
    read_settings: |env| {
        let _ = stock_worker::Settings::from_env(env);
        let _ = env.string("STOCKFLOW_KEY_PREFIX", "demo<ms>");
        let _ = env.string("STOCKFLOW_LOG", "error");
    },
};

fn main() -> std::process::ExitCode {
    PROGRAM.answer_and_exit();
    if std::env::args().len() > 1 {
        eprintln!("usage: stockflow-demo (no arguments; see stockflow-demo --help)");
        return std::process::ExitCode::from(2);
    }
    stockflow_shared::cli::finish(demo())
}

#[tokio::main]
async fn demo() -> anyhow::Result<()> {
    let run = format!("demo{}", events::now_ms());
    let stack = Stack::start(&run).await?;
    let js = &stack.js;
    let topology = &stack.settings.worker.topology;
    // The ledger is one stream, or one per partition, each with its own sequence.
    let ledger_streams = stockflow_shared::topology::ledger_streams(topology);
    let marks = marks(js, &ledger_streams).await?;
    stockflow_cli::outln!(
        "stockflow demo — run {run}: a day at a three-store chain with a web shop and a \
         marketplace\n"
    );
    let channels = sales_channels(&run);
    let day = day(&run, &channels);
    let mut played = Played::new(&day);
    play(js, topology, &run, &day.morning, &mut played).await?;
    let opened = read_feed(js, &channels).await?;
    play(js, topology, &run, &day.rest, &mut played).await?;
    let closed = read_feed(js, &channels).await?;
    let close = print_channels(&stack, &channels, &closed).await?;
    let oversold = oversold_alerts(
        js,
        marks[subjects::ALERTS],
        &channel_id(&channels, MARKETPLACE),
    )
    .await?;
    print_marketplace(&run, &opened, &closed, &close, &day.marketplace, &oversold);

    // The web shop's checkouts, through the gateway: orders that fit, one that asks for more
    // than any single location holds, and abandoned carts whose 1-second holds expire.
    let results_mark = last_sequence(js, subjects::ORDER_RESULTS).await?;
    let http = reqwest::Client::new();
    let mut checkouts = Vec::new();
    for cart in CARTS {
        checkouts.push(checkout(&http, stack.api, &stack.token, &run, cart).await?);
    }
    // A decision per cart and 2 expiries.
    let order_results = order_results(js, results_mark, CARTS.len() + 2).await?;
    wait_until_stock_caught_up(js, topology, Duration::from_secs(60)).await?;
    let preorder = preorder_arrives(&http, &stack, &run).await?;

    print_levels(&stack).await?;
    print_levels_from_the_gateway(&http, &stack).await?;
    let derived = Derived::read(js, &ledger_streams, &marks).await?;
    print_alerts(&derived.alerts)?;
    stockflow_cli::outln!("\nEvents published: {}  ledger entries: {}  duplicates re-sent and absorbed: {}  stale counts refused: {}", played.total, derived.ledger.len(), played.resent, derived.outcomes.len());
    print_dead_letters(&played.malformed, &derived.letters);
    stockflow_cli::outln!(
        "\nCheckouts through the gateway: POST /v1/orders?wait=2s (http://{})\n",
        stack.api
    );
    for line in &checkouts {
        stockflow_cli::outln!("  {line}");
    }
    print_order_results(&run, &order_results)?;
    stockflow_cli::outln!("{preorder}");

    // Every alert and order result of this run must reach the receiver, signed.
    let expected: HashSet<String> = derived
        .alerts
        .iter()
        .chain(&order_results)
        .map(delivery_id)
        .collect();
    let delivered = stack.receiver.wait_for(&expected, DELIVERY_DEADLINE).await;
    stockflow_cli::outln!(
        "\nWebhook deliveries received by http://{} (HMAC-SHA256 signatures checked)",
        stack.receiver.addr()
    );
    print_deliveries(&stack.receiver, &run, &expected);
    delivered.context("the notify worker did not deliver every alert and order result")?;
    anyhow::ensure!(
        close.differ.is_empty(),
        "a channel quantity in the feed differs from the rules applied to the levels: {}",
        close.differ.join("; ")
    );

    gift_box(&http, &stack, &run).await?;

    let metrics_addr = stack.settings.worker.service.metrics_addr;
    stockflow_cli::outln!(
        "\nMetrics: http://{metrics_addr}/metrics   readiness: http://{metrics_addr}/readyz"
    );
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        stockflow_cli::outln!(
            "The workers and the gateway keep running so you can look; press Ctrl-C to stop."
        );
        stockflow_shared::shutdown_signal().await;
    }
    stack.stop().await
}

/// The gift box the merchandising team defines at the close: a kit of a mug and a black T-shirt
/// (M). It has no stock of its own: what its components make, at every location.
const GIFT_BOX: &str = "GIFT-BOX";
const GIFT_BOX_COMPONENTS: [(&str, i64); 2] = [("MUG-LOGO", 1), ("TSHIRT-BLK-M", 1)];

/// Defines the gift box, shows what its components make, sells one through the web shop's
/// checkout (which reserves its components, all or nothing) and shows the kit follow.
async fn gift_box(http: &reqwest::Client, stack: &Stack, run: &str) -> anyhow::Result<()> {
    let js = &stack.js;
    let definition = events::fact(
        format!("{run}-kit-gift-box"),
        "merchandising",
        Reason::Policy,
        GIFT_BOX,
        "",
        Change::KitDefined(KitDefined {
            components: GIFT_BOX_COMPONENTS
                .iter()
                .map(|(sku, quantity)| KitComponent {
                    sku: (*sku).to_owned(),
                    quantity: *quantity,
                })
                .collect(),
        }),
    );
    let event_id = definition.meta.as_ref().map(|m| m.event_id.clone());
    events::publish(
        js,
        &definition,
        &msg_id::stock_fact(GIFT_BOX, &event_id.unwrap_or_default()),
    )
    .await?;
    let parts: Vec<String> = GIFT_BOX_COMPONENTS
        .iter()
        .map(|(sku, quantity)| format!("{quantity} × {sku}"))
        .collect();
    stockflow_cli::outln!(
        "\nA kit: {GIFT_BOX} = {} (kit_defined; its levels follow its components)\n",
        parts.join(" + ")
    );
    settle_kits(stack).await?;
    print_kit_levels(stack, "defined").await?;
    let line = checkout(http, stack.api, &stack.token, run, (6, GIFT_BOX, 1, 0)).await?;
    stockflow_cli::outln!("  {line}");
    settle_kits(stack).await?;
    print_kit_levels(stack, "after the checkout").await
}

/// Waits until the kit follower and the stock worker have taken in everything published.
async fn settle_kits(stack: &Stack) -> anyhow::Result<()> {
    let topology = &stack.settings.worker.topology;
    for _ in 0..2 {
        wait_until_stock_caught_up(&stack.js, topology, Duration::from_secs(60)).await?;
        for spec in stockflow_shared::topology::kit_followers(topology) {
            wait_until_caught_up(
                &stack.js,
                spec.stream,
                spec.durable,
                Duration::from_secs(60),
            )
            .await?;
        }
    }
    Ok(())
}

async fn print_kit_levels(stack: &Stack, when: &str) -> anyhow::Result<()> {
    let mut redis = stack.settings.state.redis.connect().await?;
    let keys = Keys::new(stack.prefix.clone());
    let levels = read_levels(&mut redis, &keys, GIFT_BOX).await?;
    let at: Vec<String> = levels
        .iter()
        .filter(|(_, l)| l.on_hand != 0)
        .map(|(location, l)| format!("{location} {}", l.available()))
        .collect();
    stockflow_cli::outln!("  {GIFT_BOX} available, {when}: {}", at.join(", "));
    Ok(())
}

/// The preorder's purchase order arrives at the warehouse (a receipt through the gateway): the
/// waiting line is filled from it in the same step (a `backorder_filled` ledger entry). Returns
/// what to print: the web shop's listing of the SKU before and after, and the fill.
async fn preorder_arrives(
    http: &reqwest::Client,
    stack: &Stack,
    run: &str,
) -> anyhow::Result<String> {
    let web = format!("{run}-{WEB_SHOP}");
    let listed = |feed: Option<ChannelAvailabilityChanged>| {
        feed.map_or("-".to_owned(), |a| a.available_to_sell.to_string())
    };
    let before = listed(newest_availability(&stack.js, &web, PREORDER_SKU).await);
    let answer = http
        .post(format!("http://{}/v1/stock/events", stack.api))
        .bearer_auth(stack.token.expose())
        .header("Idempotency-Key", format!("{run}-preorder-receipt"))
        .json(&serde_json::json!({
            "type": "received",
            "sku": PREORDER_SKU,
            "location": WAREHOUSE,
            "quantity": PREORDER_EXPECTED,
            "purchase_order": PREORDER_PURCHASE_ORDER,
            "source": "wms",
        }))
        .send()
        .await
        .context("POST /v1/stock/events for the preorder's receipt")?;
    anyhow::ensure!(
        answer.status().is_success(),
        "the gateway refused the preorder's receipt: {}",
        answer.status()
    );
    wait_until_stock_caught_up(
        &stack.js,
        &stack.settings.worker.topology,
        Duration::from_secs(60),
    )
    .await?;
    let after = listed(newest_availability(&stack.js, &web, PREORDER_SKU).await);
    let mut redis = stack.settings.state.redis.connect().await?;
    let keys = Keys::new(stack.prefix.clone());
    let wh = read_levels(&mut redis, &keys, PREORDER_SKU)
        .await?
        .remove(WAREHOUSE)
        .unwrap_or_default();
    Ok(format!(
        "\nPreorder: {PREORDER_SKU} sold against {PREORDER_PURCHASE_ORDER} ({PREORDER_EXPECTED} \
         incoming), the web shop listing {before} (incoming less what was preordered; its \
         buffer holds back stock, not preorders). On arrival the preorder was filled first: on \
         hand {}, reserved {}; the web shop lists {after}.",
        wh.on_hand, wh.reserved
    ))
}

/// The UTC date of `ms` since the Unix epoch, e.g. `2026-12-14`.
fn day_of(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_or_else(|_| ms.to_string(), |t| t.date().to_string())
}

/// The newest quantity of (`channel`, `sku`) in the `AVAILABILITY` feed.
async fn newest_availability(
    js: &async_nats::jetstream::Context,
    channel: &str,
    sku: &str,
) -> Option<ChannelAvailabilityChanged> {
    let stream = js.get_stream(subjects::AVAILABILITY).await.ok()?;
    let stored = stream
        .direct_get_last_for_subject(subjects::availability(channel, sku))
        .await
        .ok()?;
    ChannelAvailabilityChanged::decode(stored.payload.as_ref()).ok()
}

/// The web shop's carts: (number, SKU, units, hold seconds).
const CARTS: [(usize, &str, i64, i64); 6] = [
    (1, "TSHIRT-BLK-M", 2, 0),
    (2, "MUG-LOGO", 1, 0),
    (3, "SNEAKER-42", 500, 0),
    (4, "HOODIE-GRY-S", 1, 1),
    (5, "Café crème 250g", 3, 1),
    // A preorder: nothing on hand, confirmed against the purchase order on its way.
    (6, PREORDER_SKU, 2, 0),
];

/// Everything the demo runs in this process: the stock, order and notify workers, the gateway,
/// and the webhook receiver the notify worker delivers to.
struct Stack {
    settings: stock_worker::Settings,
    /// The run's key prefix.
    prefix: String,
    js: async_nats::jetstream::Context,
    stop: CancellationToken,
    workers: Vec<(&'static str, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    gateway: gateway::Running,
    api: std::net::SocketAddr,
    /// The gateway's write token, made for this run.
    token: Secret,
    receiver: WebhookReceiver,
    /// Holds the notify worker's subscriptions file.
    _scratch: tempfile::TempDir,
}

impl Stack {
    /// Starts every component, each with its own view of the environment.
    async fn start(run: &str) -> anyhow::Result<Self> {
        let env = Env::process();
        let prefix = env.string("STOCKFLOW_KEY_PREFIX", run);
        let worker_env = overlay(&[("STOCKFLOW_KEY_PREFIX", prefix.clone())]);
        let settings =
            stock_worker::Settings::from_env(&worker_env).context("invalid configuration")?;
        stockflow_shared::telemetry::LogSettings {
            filter: env.string("STOCKFLOW_LOG", "error"),
            json: false,
        }
        .init();

        let js = async_nats::jetstream::new(settings.worker.service.nats.connect().await?);
        stockflow_shared::topology::ensure(
            &js,
            &settings.worker.topology,
            stockflow_shared::topology::Mode::Verify,
        )
        .await?;
        let stop = CancellationToken::new();
        let stopped = |stop: &CancellationToken| {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        };
        let mut workers = vec![(
            "worker task",
            tokio::spawn(stock_worker::run(settings.clone(), stopped(&stop))),
        )];
        let mut order_settings =
            order_worker::Settings::from_env(&worker_env).context("invalid configuration")?;
        order_settings.worker.service.metrics_addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        order_settings.hold_poll = Duration::from_millis(50);
        workers.push((
            "order worker task",
            tokio::spawn(order_worker::run(order_settings, stopped(&stop))),
        ));

        // The alerts and order results go out as signed webhooks to a receiver of our own.
        let webhook_secret = Secret::new(fresh_secret(run, "webhook"));
        let receiver = WebhookReceiver::start(webhook_secret.clone())
            .await
            .context("starting the webhook receiver")?;
        let scratch = tempfile::tempdir().context("creating a temporary directory")?;
        let notify_settings = notify_worker::Settings::from_env(&overlay(&[
            (
                "STOCKFLOW_WEBHOOKS_FILE",
                write_subscriptions(scratch.path(), &receiver)?
                    .display()
                    .to_string(),
            ),
            (
                "STOCKFLOW_WEBHOOK_SECRET",
                webhook_secret.expose().to_owned(),
            ),
            ("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0".into()),
            ("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", "100".into()),
            ("STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS", "2000".into()),
        ]))
        .context("invalid notify-worker configuration")?;
        workers.push((
            "notify worker task",
            tokio::spawn(notify_worker::run(notify_settings, stopped(&stop))),
        ));

        // The web shop talks to the gateway, with a write token made for this run.
        let token = Secret::new(format!("demo-{}", fresh_secret(run, "token")));
        let gateway = gateway::start(
            gateway::Settings::from_env(&overlay(&[
                ("STOCKFLOW_KEY_PREFIX", prefix.clone()),
                ("STOCKFLOW_HTTP_ADDR", "127.0.0.1:0".into()),
                ("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0".into()),
                (
                    "STOCKFLOW_GATEWAY_TOKENS",
                    format!("write:{}", token.expose()),
                ),
            ]))
            .context("invalid gateway configuration")?,
            stopped(&stop),
        )
        .await
        .context("starting the gateway")?;
        Ok(Self {
            settings,
            prefix,
            js,
            stop,
            workers,
            api: gateway.api_addr,
            gateway,
            token,
            receiver,
            _scratch: scratch,
        })
    }

    /// Stops every component and waits for each to finish.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for (name, task) in self.workers {
            task.await.context(name)??;
        }
        self.gateway.wait().await
    }
}

/// The last sequence of each stream the summary reads, before the day starts.
async fn marks(
    js: &async_nats::jetstream::Context,
    ledger_streams: &[&'static str],
) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut marks = BTreeMap::new();
    for stream in ledger_streams
        .iter()
        .copied()
        .chain([subjects::ALERTS, subjects::DEAD_LETTERS])
    {
        marks.insert(stream, last_sequence(js, stream).await?);
    }
    Ok(marks)
}

/// What publishing the day sent.
struct Played {
    /// Messages of the whole day.
    total: usize,
    /// Messages published so far.
    done: usize,
    resent: usize,
    malformed: Vec<&'static str>,
}

impl Played {
    fn new(day: &Day) -> Self {
        Self {
            total: day
                .morning
                .iter()
                .chain(&day.rest)
                .map(|p| p.events.len())
                .sum(),
            done: 0,
            resent: 0,
            malformed: Vec::new(),
        }
    }
}

/// Publishes every phase, each followed by waiting until the stock worker applied it: the
/// channel definitions (and so their recompute commands are stored), then the stock input.
async fn play(
    js: &async_nats::jetstream::Context,
    topology: &stockflow_shared::topology::TopologySettings,
    run: &str,
    phases: &[Phase],
    played: &mut Played,
) -> anyhow::Result<()> {
    for phase in phases {
        for (i, event) in phase.events.iter().enumerate() {
            publish(js, run, event, played.done).await?;
            match event {
                Outgoing::Fact(_) | Outgoing::Channel(_) => {}
                Outgoing::Resend(_) => played.resent += 1,
                Outgoing::Malformed(what, ..) => played.malformed.push(*what),
            }
            played.done += 1;
            if i % 25 == 0 {
                progress(played.done, played.total, phase.title);
            }
        }
        let rules = stockflow_shared::topology::CHANNEL_RULES;
        wait_until_caught_up(js, rules.stream, rules.durable, Duration::from_secs(120)).await?;
        wait_until_stock_caught_up(js, topology, Duration::from_secs(120)).await?;
        progress(played.done, played.total, phase.title);
    }
    if played.done == played.total {
        eprintln!();
    }
    Ok(())
}

/// Publishes message `n` of the day: a fact under its own `Nats-Msg-Id`, a re-send and a
/// malformed message under one made for this run.
async fn publish(
    js: &async_nats::jetstream::Context,
    run: &str,
    event: &Outgoing,
    n: usize,
) -> anyhow::Result<()> {
    let other_id = || format!("{run}-msg-{n}");
    match event {
        Outgoing::Fact(e) => {
            let event_id = e
                .meta
                .as_ref()
                .map(|m| m.event_id.as_str())
                .unwrap_or_default();
            events::publish(js, e, &msg_id::stock_fact(&e.sku, event_id)).await
        }
        Outgoing::Resend(e) => events::publish(js, e, &other_id()).await,
        Outgoing::Malformed(_, subject, bytes) => {
            events::publish_raw(js, subject, bytes.clone(), &other_id()).await
        }
        Outgoing::Channel(e) => {
            let event_id = e
                .meta
                .as_ref()
                .map(|m| m.event_id.as_str())
                .unwrap_or_default();
            events::publish_raw(
                js,
                &subjects::channel_event(&e.channel_id),
                e.encode_to_vec(),
                &msg_id::channel_event(&e.channel_id, event_id),
            )
            .await
        }
    }
}

/// Reads `ORDER_RESULTS` after `mark` until `expected` results are in, or 30 s passed.
async fn order_results(
    js: &async_nats::jetstream::Context,
    mark: u64,
    expected: usize,
) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let results = read_after(js, subjects::ORDER_RESULTS, "orders.results.>", mark).await?;
        if results.len() >= expected || std::time::Instant::now() > deadline {
            return Ok(results);
        }
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The final levels of every SKU, read from Redis.
async fn print_levels(stack: &Stack) -> anyhow::Result<()> {
    let mut redis = stack.settings.state.redis.connect().await?;
    let keys = Keys::new(stack.prefix.clone());
    stockflow_cli::outln!(
        "\nFinal levels (available = on_hand - reserved - safety stock - unsellable)\n"
    );
    stockflow_cli::outln!(
        "  {:<18} {:<10} {:>8} {:>9} {:>7} {:>10}",
        "sku",
        "location",
        "on_hand",
        "reserved",
        "safety",
        "available"
    );
    for sku in SKUS {
        for (location, l) in read_levels(&mut redis, &keys, sku).await? {
            stockflow_cli::outln!(
                "  {sku:<18} {location:<10} {:>8} {:>9} {:>7} {:>10}",
                l.on_hand,
                l.reserved,
                l.safety_stock,
                l.available()
            );
        }
    }
    stockflow_cli::outln!("\nIncoming (on open purchase orders) and unsellable units\n");
    for sku in SKUS {
        for (location, l) in read_levels(&mut redis, &keys, sku).await? {
            if l.incoming != 0 {
                stockflow_cli::outln!(
                    "  {sku:<18} {location:<10} incoming {} (earliest expected at {} ms)",
                    l.incoming,
                    l.incoming_expected_at_ms
                );
            }
            for (state, units) in [
                ("damaged", l.damaged),
                ("quality_control", l.quality_control),
                ("held", l.held),
            ] {
                if units != 0 {
                    stockflow_cli::outln!("  {sku:<18} {location:<10} {state} {units}");
                }
            }
        }
    }
    Ok(())
}

/// One SKU's totals as the gateway serves them.
async fn print_levels_from_the_gateway(
    http: &reqwest::Client,
    stack: &Stack,
) -> anyhow::Result<()> {
    let stock: serde_json::Value = http
        .get(format!("http://{}/v1/stock/MUG-LOGO", stack.api))
        .bearer_auth(stack.token.expose())
        .send()
        .await
        .context("GET /v1/stock/MUG-LOGO")?
        .error_for_status()
        .context("GET /v1/stock/MUG-LOGO")?
        .json()
        .await
        .context("reading GET /v1/stock/MUG-LOGO")?;
    stockflow_cli::outln!(
        "\n  The gateway serves the same levels: GET /v1/stock/MUG-LOGO → totals {}",
        stock["totals"]
    );
    Ok(())
}

/// What the workers derived during the day.
struct Derived {
    ledger: Vec<async_nats::jetstream::Message>,
    outcomes: Vec<async_nats::jetstream::Message>,
    alerts: Vec<async_nats::jetstream::Message>,
    letters: Vec<async_nats::jetstream::Message>,
}

impl Derived {
    /// Reads every stream after its mark.
    async fn read(
        js: &async_nats::jetstream::Context,
        ledger_streams: &[&'static str],
        marks: &BTreeMap<&'static str, u64>,
    ) -> anyhow::Result<Self> {
        let (mut ledger, mut outcomes) = (Vec::new(), Vec::new());
        for stream in ledger_streams {
            ledger.extend(read_after(js, stream, "stock.changes.>", marks[stream]).await?);
            outcomes.extend(read_after(js, stream, "stock.outcomes.>", marks[stream]).await?);
        }
        let alerts = read_after(js, subjects::ALERTS, "alerts.>", marks[subjects::ALERTS]).await?;
        let letters = read_after(
            js,
            subjects::DEAD_LETTERS,
            "deadletter.>",
            marks[subjects::DEAD_LETTERS],
        )
        .await?;
        Ok(Self {
            ledger,
            outcomes,
            alerts,
            letters,
        })
    }
}

/// The alerts by kind, with the first few places each.
fn print_alerts(alerts: &[async_nats::jetstream::Message]) -> anyhow::Result<()> {
    let mut by_kind: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in alerts {
        let alert = StockAlert::decode(message.payload.clone())?;
        let kind = message.subject.split('.').nth(1).unwrap_or("?").to_owned();
        by_kind
            .entry(kind)
            .or_default()
            .push(format!("{}@{}", alert.sku, alert.location));
    }
    stockflow_cli::outln!(
        "\nAlerts raised ({} in all, one per threshold crossing)\n",
        alerts.len()
    );
    for (kind, places) in &by_kind {
        let mut shown: Vec<&String> = places.iter().take(4).collect();
        shown.dedup();
        let more = places.len().saturating_sub(4);
        stockflow_cli::outln!(
            "  {kind:<15} {:>3}  {}{}",
            places.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if more > 0 {
                format!(", … {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// The dead letters' reasons.
fn print_dead_letters(malformed: &[&str], letters: &[async_nats::jetstream::Message]) {
    stockflow_cli::outln!(
        "\nDead letters ({} malformed messages sent)\n",
        malformed.len()
    );
    for letter in letters {
        let reason = stockflow_shared::deadletter::reason(letter);
        stockflow_cli::outln!("  {reason}");
    }
}

/// The order decisions and releases, one line each.
fn print_order_results(
    run: &str,
    order_results: &[async_nats::jetstream::Message],
) -> anyhow::Result<()> {
    stockflow_cli::outln!(
        "\nOrder results on ORDER_RESULTS (decisions, then the abandoned carts' expiries)\n"
    );
    for message in order_results {
        let result = OrderResult::decode(message.payload.clone())?;
        let line = match result.result {
            Some(order_result::Result::Confirmed(c)) => format!(
                "confirmed: {}",
                c.lines
                    .iter()
                    .map(|l| format!("{} x{} from {}", l.sku, l.quantity, l.location))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(order_result::Result::Rejected(r)) => format!(
                "rejected: {}",
                r.short_lines
                    .iter()
                    .map(|s| format!(
                        "{} wanted {}, at most {} at one location",
                        s.sku, s.requested, s.available
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(order_result::Result::Released(r)) => format!(
                "released: {:?}",
                ReleaseReason::try_from(r.reason).unwrap_or_default()
            ),
            None => "?".into(),
        };
        stockflow_cli::outln!(
            "  {:<26} {line}",
            result.order_id.trim_start_matches(&format!("{run}-"))
        );
    }
    Ok(())
}

/// Per channel (by short name), the newest quantity of every SKU in the feed.
type Feed = BTreeMap<String, BTreeMap<String, ChannelAvailabilityChanged>>;

/// The newest quantity of every SKU of every channel, as a connector's initial sync reads it:
/// one ordered read of `availability.<channel-id>.>` from the last message of each subject.
async fn read_feed(
    js: &async_nats::jetstream::Context,
    channels: &[(String, Channel)],
) -> anyhow::Result<Feed> {
    use futures::StreamExt as _;
    let stream = js.get_stream(subjects::AVAILABILITY).await?;
    let mut feed = Feed::new();
    for (name, channel) in channels {
        let mut consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: subjects::channel_availability(&channel.id),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let pending = consumer.info().await?.num_pending;
        let mut messages = consumer.messages().await?;
        let quantities = feed.entry(name.clone()).or_default();
        for _ in 0..pending {
            let message = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await
            {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(None) | Err(_) => anyhow::bail!("reading the {name} feed stopped early"),
            };
            let quantity = ChannelAvailabilityChanged::decode(message.payload.clone())
                .with_context(|| format!("decoding {}", message.subject))?;
            quantities.insert(quantity.sku.clone(), quantity);
        }
    }
    Ok(feed)
}

/// `rules` in a few words.
fn describe(rules: &AvailabilityRules) -> String {
    let mut parts = Vec::new();
    if let Some(buffer) = rules.buffer {
        parts.push(format!("buffer {buffer}"));
    }
    if let Some(percent) = rules.percent {
        parts.push(format!("{percent}% of the pool"));
    }
    if let Some(max) = rules.max_listed {
        parts.push(format!("at most {max}"));
    }
    if let Some(end) = rules.end_when_below {
        parts.push(format!("0 below {end}"));
    }
    if parts.is_empty() {
        "the whole pool".into()
    } else {
        parts.join(", ")
    }
}

/// What each channel may sell of every SKU at the close, from the feed, checked against an
/// independent recomputation from the levels in Redis.
struct Close {
    /// The quantities where the feed and the recomputation differ.
    differ: Vec<String>,
    /// The pool of each (channel name, SKU) now. (A feed message carries the pool of its
    /// change; the pool moves on without a message while the quantity stays, e.g. at the
    /// maximum.)
    pools: BTreeMap<(String, String), i64>,
}

async fn print_channels(
    stack: &Stack,
    channels: &[(String, Channel)],
    closed: &Feed,
) -> anyhow::Result<Close> {
    stockflow_cli::outln!(
        "\nSales channels at the close: what each may sell, the newest message per SKU in the \
         AVAILABILITY feed\n"
    );
    for (name, channel) in channels {
        let strategy = match AllocationStrategy::try_from(channel.allocation) {
            Ok(AllocationStrategy::MostAvailable) => ", most available first",
            _ => "",
        };
        let mut rules = describe(&channel.rules.unwrap_or_default());
        for (sku, r) in marketplace_overrides() {
            if name == MARKETPLACE {
                rules.push_str(&format!("; {sku}: {}", describe(&r)));
            }
        }
        stockflow_cli::outln!(
            "  {name:<13} {:<19} from {}{strategy}: {rules}",
            channel.name,
            channel.locations.join(", ")
        );
    }
    stockflow_cli::outln!("  (channel ids: <run>-<name>)\n");
    let header: Vec<String> = channels.iter().map(|(n, _)| format!("{n:>13}")).collect();
    stockflow_cli::outln!("  {:<18}{}", "sku", header.join(""));
    let mut redis = stack.settings.state.redis.connect().await?;
    let keys = Keys::new(stack.prefix.clone());
    let mut differ = Vec::new();
    let mut pools = BTreeMap::new();
    let mut checked = 0;
    for sku in SKUS {
        let levels: BTreeMap<String, i64> = read_levels(&mut redis, &keys, sku)
            .await?
            .into_iter()
            .map(|(location, l)| (location, l.available()))
            .collect();
        let mut row = Vec::new();
        for (name, channel) in channels {
            let listed = closed
                .get(name)
                .and_then(|q| q.get(*sku))
                .map(|q| q.available_to_sell);
            let available: Vec<i64> = channel
                .locations
                .iter()
                .map(|l| levels.get(l).copied().unwrap_or_default())
                .collect();
            let (expected, pool) = stockflow_shared::channels::quantity(
                &available,
                &channel.rules.unwrap_or_default(),
                override_for(name, sku).as_ref(),
            );
            pools.insert((name.clone(), (*sku).to_owned()), pool);
            checked += 1;
            if listed != Some(expected) {
                differ.push(format!(
                    "{name} {sku}: the feed says {listed:?}, the levels say {expected}"
                ));
            }
            row.push(match listed {
                Some(q) => format!("{q:>13}"),
                None => format!("{:>13}", "-"),
            });
        }
        stockflow_cli::outln!("  {sku:<18}{}", row.join(""));
    }
    if differ.is_empty() {
        stockflow_cli::outln!(
            "\n  All {checked} equal each channel's rules applied to the levels read from Redis \
             now (an independent recomputation)."
        );
    }
    for line in &differ {
        stockflow_cli::outln!("  DIFFERS: {line}");
    }
    Ok(Close { differ, pools })
}

/// How the marketplace's buffer held it back while the stores sold: per SKU what it listed
/// when it opened and at the close (and the pool of its stores then), how often its quantity
/// changed, what its buyers did, and the `CHANNEL_OVERSOLD` alerts it raised.
fn print_marketplace(
    run: &str,
    opened: &Feed,
    closed: &Feed,
    close: &Close,
    day: &MarketplaceDay,
    oversold: &[StockAlert],
) {
    stockflow_cli::outln!(
        "\nHow the buffer held the marketplace back while the stores sold\n\n  The marketplace \
         hears each change {MARKETPLACE_LAG} events late and sells only what it lists as it \
         last heard;\n  a sale it makes after the stores sold what it still listed is more than \
         it offered: a CHANNEL_OVERSOLD.\n"
    );
    stockflow_cli::outln!(
        "  {:<18}{:>7}{:>7}{:>7}{:>7}{:>9}{:>6}{:>12}{:>10}",
        "sku",
        "opened",
        "pool",
        "closed",
        "pool",
        "changes",
        "sold",
        "turned away",
        "oversold"
    );
    let quantity = |feed: &Feed, sku: &str| {
        feed.get(MARKETPLACE)
            .and_then(|q| q.get(sku))
            .cloned()
            .unwrap_or_default()
    };
    let (mut pool, mut listed) = (0, 0);
    for sku in SKUS {
        let (open, closing) = (quantity(opened, sku), quantity(closed, sku));
        let pool_now = close
            .pools
            .get(&(MARKETPLACE.to_owned(), (*sku).to_owned()))
            .copied()
            .unwrap_or_default();
        pool += pool_now;
        listed += closing.available_to_sell;
        stockflow_cli::outln!(
            "  {sku:<18}{:>7}{:>7}{:>7}{:>7}{:>9}{:>6}{:>12}{:>10}",
            open.available_to_sell,
            open.pool,
            closing.available_to_sell,
            pool_now,
            closing.version.saturating_sub(open.version),
            day.sold.get(sku).copied().unwrap_or_default(),
            day.turned_away.get(sku).copied().unwrap_or_default(),
            oversold.iter().filter(|a| a.sku == *sku).count()
        );
    }
    stockflow_cli::outln!(
        "\n  At the close it lists {listed} of the {pool} units its stores have: the rest is \
         held back for the stores' own customers."
    );
    if oversold.is_empty() {
        stockflow_cli::outln!(
            "  CHANNEL_OVERSOLD: none — every sale it made on stale news was still within what \
             it offered."
        );
    } else {
        stockflow_cli::outln!(
            "  CHANNEL_OVERSOLD: {} (one per crossing; the buffer is thin there):",
            oversold.len()
        );
        for alert in oversold {
            stockflow_cli::outln!(
                "    {:<18} offered {}, sold {} ({})",
                alert.sku,
                alert.offered,
                alert.sold,
                alert.cause_event_id.trim_start_matches(&format!("{run}-"))
            );
        }
    }
}

/// The `CHANNEL_OVERSOLD` alerts `channel` raised after `mark`.
async fn oversold_alerts(
    js: &async_nats::jetstream::Context,
    mark: u64,
    channel: &str,
) -> anyhow::Result<Vec<StockAlert>> {
    let filter = format!(
        "alerts.{}.>",
        stockflow_shared::outcome::alert_name(AlertKind::ChannelOversold)
    );
    let mut out = Vec::new();
    for message in read_after(js, subjects::ALERTS, &filter, mark).await? {
        let alert = StockAlert::decode(message.payload.clone())?;
        if alert.channel == channel {
            out.push(alert);
        }
    }
    Ok(out)
}
