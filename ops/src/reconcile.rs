//! Comparing Redis with the ledger (`stockctl reconcile`, the gateway's `GET /v1/reconcile`),
//! and publishing the corrections that bring on-hand levels back to it (`reconcile --fix`).
//!
//! The ledger's sum of `after - before` per (sku, location) is the level (see
//! [`crate::rebuild`]); a level on which Redis holds something else has drifted.
//!
//! A channel quantity has drifted when the feed's newest quantity or Redis' `q:<channel>`
//! differs from what [`stockflow_shared::channels::quantity`] gives from the levels in Redis,
//! the channel's rules (the `CHANNELS` bucket) and the SKU's override (the ledger's last
//! `channel_rules` entry). `--fix` sends that SKU a `ChannelRecompute`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{
        stock_event::Change, AvailabilityRules, Channel, ChannelRecompute, EventMeta, Reason,
        StockEvent,
    },
};
use stockflow_shared::{
    keys::Keys,
    levels::LocationLevels,
    redis_conn::RedisConnection,
    topology::{self, TopologySettings},
};

use crate::{
    rebuild::{Fold, Totals},
    Error,
};

/// `source` of the corrections `reconcile --fix` publishes. Their ledger entries restore Redis
/// to the ledger, so the ledger's own sums leave them out.
pub const RECONCILE_SOURCE: &str = "stockctl:reconcile";

/// A level on which Redis and the ledger disagree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// `on_hand`, `reserved`, `incoming`, `damaged`, `quality_control`, `held`, `backordered`
    /// (units of order lines waiting for stock), or `purchase_order` (the units still
    /// outstanding on [`Self::purchase_order`]).
    pub field: &'static str,
    /// What the ledger sums to.
    pub ledger: i64,
    /// What Redis holds.
    pub redis: i64,
    /// The purchase order of a `purchase_order` drift ('' otherwise).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub purchase_order: String,
    /// A `kit` drift: the kit's components as the ledger defines them, `<sku>=<units>` joined by
    /// spaces ('' when the ledger has it as no kit, and for every other field). Its `ledger`
    /// and `redis` are the number of components each holds (0: not a kit).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kit: String,
}

/// A (channel, SKU) whose published or stored quantity differs from what its levels and rules
/// give.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelDrift {
    /// SKU.
    pub sku: String,
    /// Channel id.
    pub channel: String,
    /// What the rules give from the levels Redis holds.
    pub expected: i64,
    /// The feed's newest quantity.
    pub feed: i64,
    /// Its version.
    pub version: u64,
    /// What Redis holds (`q:<channel>`), `None` when nothing.
    pub redis: Option<i64>,
}

/// What a settled comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The levels that differ, by SKU and location.
    pub drift: Vec<Drift>,
    /// The channel quantities that differ, by SKU and channel.
    pub channels: Vec<ChannelDrift>,
    /// Workers that did not catch up in time before the second look, each as a sentence (the
    /// drift was compared anyway).
    pub not_caught_up: Vec<String>,
}

/// What the caller is told while a comparison runs (a progress bar on a terminal).
pub trait Progress: Send {
    /// The ledger holds `messages` messages; reading them starts.
    fn reading(&mut self, _messages: u64) {}
    /// One more ledger message is read.
    fn read(&mut self) {}
    /// The levels of `skus` SKUs are about to be read from Redis and compared.
    fn comparing(&mut self, _skus: u64) {}
    /// `skus` more SKUs are compared.
    fn compared(&mut self, _skus: u64) {}
    /// Redis and the ledger differed: waiting for the workers before looking again.
    fn settling(&mut self) {}
    /// The comparison is over.
    fn finished(&mut self) {}
}

/// Tells nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {}

/// Stock hashes read from Redis in one pipelined round trip.
const BATCH: usize = 1000;

/// Compares Redis with the ledger; when they differ, waits (up to `settle` per worker) until the
/// stock and order workers have caught up with their inputs and compares again: an event applied
/// in Redis whose ledger entry is still being stored looks like drift for an instant. A worker's
/// consumer with nothing pending and nothing unacknowledged is not waited for (whether or not a
/// worker is running).
pub async fn settled_drift(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    topology: &TopologySettings,
    settle: Duration,
    progress: &mut dyn Progress,
) -> Result<Report, Error> {
    let (drift, channels) = all_drift_with(js, redis, keys, progress).await?;
    let mut report = Report {
        drift,
        channels,
        not_caught_up: Vec::new(),
    };
    if report.drift.is_empty() && report.channels.is_empty() {
        progress.finished();
        return Ok(report);
    }
    progress.settling();
    report.not_caught_up = wait_for_workers(js, topology, settle).await;
    (report.drift, report.channels) = all_drift_with(js, redis, keys, progress).await?;
    progress.finished();
    Ok(report)
}

/// Waits (up to `settle` each) for the stock and order workers to catch up; what did not, as
/// sentences.
async fn wait_for_workers(
    js: &jetstream::Context,
    topology: &TopologySettings,
    settle: Duration,
) -> Vec<String> {
    // A channel's new rules reach its SKUs as recompute commands on the stock input.
    let rules = crate::streams::wait_until_caught_up(
        js,
        topology::CHANNEL_RULES.stream,
        topology::CHANNEL_RULES.durable,
        settle,
    )
    .await;
    let stock = crate::streams::wait_until_stock_caught_up(js, topology, settle).await;
    let orders = crate::streams::wait_until_caught_up(
        js,
        topology::ORDER_WORKER.stream,
        topology::ORDER_WORKER.durable,
        settle,
    )
    .await;
    [rules, stock, orders]
        .into_iter()
        .filter_map(|caught_up| caught_up.err().map(|e| format!("{e:#}")))
        .collect()
}

/// Compares Redis levels with the ledger's sums, for every (sku, location) either side knows.
pub async fn drift(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
) -> Result<Vec<Drift>, Error> {
    drift_with(js, redis, keys, &mut Quiet).await
}

/// Messages in the ledger streams (entries and rejections): what [`Fold::ledger`] reads.
async fn ledger_messages(js: &jetstream::Context) -> Result<u64, Error> {
    let mut total = 0;
    for name in crate::rebuild::ledger_streams(js).await? {
        let mut stream = js
            .get_stream(&name)
            .await
            .with_context(|| format!("opening stream {name}"))?;
        total += stream
            .info()
            .await
            .with_context(|| format!("reading {name}'s state"))?
            .state
            .messages;
    }
    Ok(total)
}

/// [`drift`], telling `progress` how far it is. Reads the ledger once, then the stock hashes
/// of every SKU either side knows, [`BATCH`] per pipelined round trip.
pub async fn drift_with(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    progress: &mut dyn Progress,
) -> Result<Vec<Drift>, Error> {
    progress.reading(ledger_messages(js).await?);
    let fold = Fold::ledger_with(js, &mut || progress.read()).await?;
    level_drift(&fold, redis, keys, progress).await
}

/// The drift of the levels and of the channel quantities, reading the ledger once.
pub async fn all_drift_with(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    progress: &mut dyn Progress,
) -> Result<(Vec<Drift>, Vec<ChannelDrift>), Error> {
    progress.reading(ledger_messages(js).await?);
    let fold = Fold::ledger_with(js, &mut || progress.read()).await?;
    let levels = level_drift(&fold, redis, keys, progress).await?;
    let channels = channel_drift(js, redis, keys, &fold).await?;
    Ok((levels, channels))
}

/// The levels of every SKU either side knows, compared with `fold`'s sums.
async fn level_drift(
    fold: &Fold,
    redis: &mut RedisConnection,
    keys: &Keys,
    progress: &mut dyn Progress,
) -> Result<Vec<Drift>, Error> {
    let mut skus: BTreeSet<String> = fold.levels.keys().map(|(sku, _)| sku.clone()).collect();
    let backordered = fold.backordered();
    for key in redis
        .scan_match(&format!("{}:{{*}}:stock", keys.prefix()))
        .await
        .context("listing the stock keys in Redis")?
    {
        let token = key
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map(|(token, _)| token);
        if let Some(sku) = token.and_then(subjects::decode_token) {
            skus.insert(sku);
        }
    }
    let skus: Vec<String> = skus.into_iter().collect();
    progress.comparing(skus.len() as u64);
    let mut out = Vec::new();
    for chunk in skus.chunks(BATCH) {
        let cmds = chunk
            .iter()
            .map(|sku| {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(keys.stock(sku));
                cmd
            })
            .collect();
        let replies = redis
            .run_all(cmds)
            .await
            .context("reading stock levels from Redis")?;
        let hashes: Vec<BTreeMap<String, i64>> =
            redis::from_redis_value(redis::Value::Array(replies))
                .context("reading stock levels from Redis")?;
        // Kit definitions live in the policy hash (field `kit`).
        let cmds = chunk
            .iter()
            .map(|sku| {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(keys.policy(sku)).arg("kit");
                cmd
            })
            .collect();
        let replies = redis
            .run_all(cmds)
            .await
            .context("reading kit definitions from Redis")?;
        let kits: Vec<Option<String>> = redis::from_redis_value(redis::Value::Array(replies))
            .context("reading kit definitions from Redis")?;
        for ((sku, hash), kit) in chunk.iter().zip(hashes).zip(kits) {
            compare(sku, &stored_levels(hash), fold, &backordered, &mut out);
            compare_kit(sku, kit.as_deref(), fold, &mut out);
        }
        progress.compared(chunk.len() as u64);
    }
    Ok(out)
}

/// Every channel the `CHANNELS` bucket defines, by id (none when the bucket does not exist).
async fn defined_channels(js: &jetstream::Context) -> Result<BTreeMap<String, Channel>, Error> {
    let Ok(store) = js.get_key_value(topology::CHANNELS).await else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    let mut keys = store.keys().await.context("listing the channels")?;
    let mut ids = Vec::new();
    while let Some(key) = keys.next().await {
        ids.push(key.context("listing the channels")?);
    }
    for id in ids {
        let Some(entry) = store
            .entry(&id)
            .await
            .with_context(|| format!("reading channel {id:?}"))?
        else {
            continue;
        };
        if let Some(channel) = stockflow_shared::channels::defined_by(&entry)
            .with_context(|| format!("channel {id:?} in the bucket is not a Channel"))?
        {
            out.insert(id, channel);
        }
    }
    Ok(out)
}

/// What `channel` may sell of a SKU whose hashes are `stock`, `policy` and `ats`, under its
/// rules and `override_rules`; 0 for a channel that is not defined (removed).
fn expected_quantity(
    channel: Option<&Channel>,
    id: &str,
    override_rules: Option<&AvailabilityRules>,
    stock: &BTreeMap<String, i64>,
    policy: &BTreeMap<String, String>,
    ats: &BTreeMap<String, String>,
) -> i64 {
    let Some(channel) = channel else {
        return 0;
    };
    let rules = channel.rules.unwrap_or_default();
    let own = override_rules
        .and_then(|r| r.own_reservations_only)
        .or(rules.own_reservations_only)
        .unwrap_or(false);
    let available: Vec<i64> = channel
        .locations
        .iter()
        .map(|l| {
            let on_hand = stock.get(&format!("oh:{l}")).copied().unwrap_or(0);
            let reserved = if own {
                ats.get(&format!("r:{id}:{l}"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            } else {
                stock.get(&format!("rs:{l}")).copied().unwrap_or(0)
            };
            let safety: i64 = policy
                .get(&format!("ss:{l}"))
                .or_else(|| policy.get("ss"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Unsellable units are in no channel's pool.
            let unsellable: i64 = ["dm", "qc", "hd"]
                .iter()
                .map(|state| stock.get(&format!("{state}:{l}")).copied().unwrap_or(0))
                .sum();
            on_hand - reserved - safety - unsellable
        })
        .collect();
    let (quantity, _) = stockflow_shared::channels::quantity(&available, &rules, override_rules);
    let (kind, limit) =
        stockflow_shared::channels::channel_backorder(&rules, override_rules, policy);
    let beyond =
        stockflow_shared::channels::beyond_stock(&channel.locations, (&kind, limit), stock);
    stockflow_shared::channels::with_backorders(quantity, beyond, &rules, override_rules)
}

/// Compares every (channel, SKU) of the `AVAILABILITY` feed with what its levels and rules give.
pub async fn channel_drift(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    fold: &Fold,
) -> Result<Vec<ChannelDrift>, Error> {
    let feed = crate::rebuild::availability_feed(js).await?;
    if feed.is_empty() {
        return Ok(Vec::new());
    }
    let channels = defined_channels(js).await?;
    let mut by_sku: BTreeMap<&str, Vec<&stockflow_proto::v1::ChannelAvailabilityChanged>> =
        BTreeMap::new();
    for ((sku, _), q) in &feed {
        by_sku.entry(sku).or_default().push(q);
    }
    let skus: Vec<&str> = by_sku.keys().copied().collect();
    let mut out = Vec::new();
    for chunk in skus.chunks(BATCH) {
        let mut cmds = Vec::with_capacity(chunk.len() * 3);
        for sku in chunk {
            for key in [keys.stock(sku), keys.policy(sku), keys.channels(sku)] {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(key);
                cmds.push(cmd);
            }
        }
        let replies = redis
            .run_all(cmds)
            .await
            .context("reading channel state from Redis")?;
        for (sku, replies) in chunk.iter().zip(replies.chunks(3)) {
            let [stock, policy, ats] = replies else {
                return Err(anyhow::anyhow!("Redis answered a pipeline short").into());
            };
            let stock: BTreeMap<String, i64> = redis::from_redis_value(stock.clone())
                .context("reading stock levels from Redis")?;
            let policy: BTreeMap<String, String> = redis::from_redis_value(policy.clone())
                .context("reading stock policy from Redis")?;
            let ats: BTreeMap<String, String> =
                redis::from_redis_value(ats.clone()).context("reading channel state from Redis")?;
            for q in &by_sku[sku] {
                let override_rules = fold
                    .channel_rules
                    .get(&((*sku).to_owned(), q.channel.clone()));
                let expected = expected_quantity(
                    channels.get(&q.channel),
                    &q.channel,
                    override_rules,
                    &stock,
                    &policy,
                    &ats,
                );
                let held = ats
                    .get(&format!("q:{}", q.channel))
                    .and_then(|v| v.parse().ok());
                if q.available_to_sell != expected || held != Some(expected) {
                    out.push(ChannelDrift {
                        sku: (*sku).to_owned(),
                        channel: q.channel.clone(),
                        expected,
                        feed: q.available_to_sell,
                        version: q.version,
                        redis: held,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The levels per location of a stock hash, and its open purchase orders.
fn stored_levels(hash: BTreeMap<String, i64>) -> Stored {
    let mut levels = BTreeMap::new();
    stockflow_shared::levels::fold_stock_hash(&hash, &mut levels);
    let purchase_orders = stockflow_shared::levels::purchase_orders(&hash)
        .into_iter()
        .map(|p| ((p.location, p.reference), p.outstanding))
        .collect();
    let backordered = hash
        .iter()
        .filter_map(|(field, units)| Some((field.strip_prefix("bo:")?.to_owned(), *units)))
        .collect();
    Stored {
        levels,
        purchase_orders,
        backordered,
    }
}

/// What Redis holds of one SKU.
struct Stored {
    levels: BTreeMap<String, LocationLevels>,
    /// Outstanding units by (location, purchase order).
    purchase_orders: BTreeMap<(String, String), i64>,
    /// Units of order lines waiting for stock, by location (`bo:<location>`).
    backordered: BTreeMap<String, i64>,
}

/// Appends to `out` the drift of `sku`'s locations, by location, on-hand before reserved
/// (then incoming, damaged, quality_control, held), then of its purchase orders (field
/// `purchase_order`, naming it).
fn compare(
    sku: &str,
    stored: &Stored,
    fold: &Fold,
    backordered: &BTreeMap<(String, String), i64>,
    out: &mut Vec<Drift>,
) {
    // The ledger's locations of this SKU: one range of the map, sorted by (sku, location).
    let in_ledger = fold
        .levels
        .range((sku.to_owned(), String::new())..)
        .take_while(|((s, _), _)| s == sku)
        .map(|((_, location), totals)| (location, totals));
    let mut locations: BTreeMap<&String, (Totals, LocationLevels)> = BTreeMap::new();
    for (location, totals) in in_ledger {
        locations.entry(location).or_default().0 = *totals;
    }
    for (location, held) in &stored.levels {
        locations.entry(location).or_default().1 = *held;
    }
    for (location, (ledger, held)) in locations {
        for (field, ledger, redis) in [
            ("on_hand", ledger.on_hand, held.on_hand),
            ("reserved", ledger.reserved, held.reserved),
            ("incoming", ledger.incoming, held.incoming),
            ("damaged", ledger.damaged, held.damaged),
            (
                "quality_control",
                ledger.quality_control,
                held.quality_control,
            ),
            ("held", ledger.held, held.held),
        ] {
            if ledger != redis {
                out.push(Drift {
                    sku: sku.to_owned(),
                    location: location.clone(),
                    field,
                    ledger,
                    redis,
                    purchase_order: String::new(),
                    kit: String::new(),
                });
            }
        }
    }
    // Backordered units: the ledger's lines still waiting against what Redis counts.
    let mut waiting: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for ((_, location), units) in backordered
        .range((sku.to_owned(), String::new())..)
        .take_while(|((s, _), _)| s == sku)
    {
        waiting.entry(location.clone()).or_default().0 = *units;
    }
    for (location, units) in &stored.backordered {
        waiting.entry(location.clone()).or_default().1 = *units;
    }
    for (location, (ledger, redis)) in waiting {
        if ledger != redis {
            out.push(Drift {
                sku: sku.to_owned(),
                location,
                field: "backordered",
                ledger,
                redis,
                purchase_order: String::new(),
                kit: String::new(),
            });
        }
    }
    // Purchase orders: the ledger's sum for each against what Redis holds.
    let mut orders: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for ((_, location, reference), po) in fold
        .purchase_orders
        .range((sku.to_owned(), String::new(), String::new())..)
        .take_while(|((s, _, _), _)| s == sku)
    {
        orders
            .entry((location.clone(), reference.clone()))
            .or_default()
            .0 = po.outstanding;
    }
    for (key, outstanding) in &stored.purchase_orders {
        orders.entry(key.clone()).or_default().1 = *outstanding;
    }
    for ((location, reference), (ledger, redis)) in orders {
        if ledger != redis {
            out.push(Drift {
                sku: sku.to_owned(),
                location,
                field: "purchase_order",
                ledger,
                redis,
                purchase_order: reference,
                kit: String::new(),
            });
        }
    }
}

/// Appends a `kit` drift when Redis holds another definition of `sku` than its last
/// `kit_defined` entry (or none where the ledger has one, or one the ledger removed).
fn compare_kit(sku: &str, stored: Option<&str>, fold: &Fold, out: &mut Vec<Drift>) {
    let empty = Vec::new();
    let ledger = fold.kits.get(sku).unwrap_or(&empty);
    let redis = stored
        .and_then(stockflow_proto::input::fact::decode_kit)
        .unwrap_or_default();
    if *ledger != redis {
        out.push(Drift {
            sku: sku.to_owned(),
            location: String::new(),
            field: "kit",
            ledger: ledger.len() as i64,
            redis: redis.len() as i64,
            purchase_order: String::new(),
            kit: ledger
                .iter()
                .map(|(component, units)| format!("{component}={units}"))
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
}

/// Publishes one `adjusted` fact per on-hand drift (and the ledger's definition per `kit`
/// drift) that brings Redis back to the ledger, with
/// `source` [`RECONCILE_SOURCE`] and an event id fixed by the drift, so running the fix twice
/// for the same drift applies it once. Reserved drift has no stock fact that repairs it: rebuild.
pub async fn publish_corrections(
    js: &jetstream::Context,
    drifts: &[Drift],
) -> Result<usize, Error> {
    let mut published = 0;
    for d in drifts.iter().filter(|d| d.field == "on_hand") {
        let event_id = format!(
            "reconcile:{}:{}:{}",
            subjects::encode_token(&d.location),
            d.redis,
            d.ledger
        );
        let event = StockEvent {
            meta: Some(EventMeta {
                event_id: event_id.clone(),
                occurred_at_ms: stockflow_shared::now_ms(),
                source: RECONCILE_SOURCE.to_owned(),
                reason: Reason::Correction.into(),
                reference: String::new(),
            }),
            sku: d.sku.clone(),
            location: d.location.clone(),
            change: Some(Change::Adjusted(stockflow_proto::v1::Adjusted {
                delta: d.ledger - d.redis,
            })),
            ..Default::default()
        };
        publish_fact(js, &event, &event_id, "a correction").await?;
        published += 1;
    }
    // A kit whose definition Redis lost or holds wrong gets the ledger's again: applied, it
    // also makes the kit follower recompute the kit everywhere.
    for d in drifts.iter().filter(|d| d.field == "kit") {
        let event_id = format!("reconcile:kit:{:016x}", fingerprint(&d.kit));
        let components = d
            .kit
            .split(' ')
            .filter_map(|pair| pair.rsplit_once('='))
            .map(|(sku, units)| stockflow_proto::v1::KitComponent {
                sku: sku.to_owned(),
                quantity: units.parse().unwrap_or_default(),
            })
            .collect();
        let event = StockEvent {
            meta: Some(EventMeta {
                event_id: event_id.clone(),
                occurred_at_ms: stockflow_shared::now_ms(),
                source: RECONCILE_SOURCE.to_owned(),
                reason: Reason::Correction.into(),
                reference: String::new(),
            }),
            sku: d.sku.clone(),
            change: Some(Change::KitDefined(stockflow_proto::v1::KitDefined {
                components,
            })),
            ..Default::default()
        };
        publish_fact(js, &event, &event_id, "a kit definition").await?;
        published += 1;
    }
    Ok(published)
}

/// A stable 64-bit fingerprint of `text` (FNV-1a): the same drift gives the same event id.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Publishes one of reconcile's own stock facts with its `Nats-Msg-Id`, and waits until stored.
async fn publish_fact(
    js: &jetstream::Context,
    event: &StockEvent,
    event_id: &str,
    what: &str,
) -> Result<(), Error> {
    let msg_id = stockflow_proto::msg_id::stock_fact(&event.sku, event_id);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    js.publish_with_headers(
        subjects::stock_event(&event.sku),
        headers,
        event.encode_to_vec().into(),
    )
    .await
    .with_context(|| format!("publishing {what}"))?
    .await
    .with_context(|| format!("storing {what}"))?;
    Ok(())
}

/// Forgets what Redis holds as a channel's quantity of a SKU and raises its version to at least
/// the feed's: the next computation then publishes whatever it finds, as a version newer than
/// the feed holds. One SKU's channels hash: one slot.
const FORGET_QUANTITY: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], 'v:' .. ARGV[1]) or '0')
if v < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'v:' .. ARGV[1], ARGV[2]) end
redis.call('HDEL', KEYS[1], 'q:' .. ARGV[1])
return 1
";

/// Repairs each channel drift: forgets the SKU's stored quantity (raising its version to the
/// feed's, which a Redis that lost its last writes may hold below), then publishes a
/// `ChannelRecompute`, so the stock worker computes the quantity again from the levels and
/// publishes it as a new version — also when Redis already held the right number and only the
/// feed was behind. The event id is fixed by the drift
/// (`reconcile:<channel>:<version>:<redis>:<expected>`), so running the fix twice for the same
/// drift recomputes once.
pub async fn publish_recomputes(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    drifts: &[ChannelDrift],
) -> Result<usize, Error> {
    let channels = defined_channels(js).await?;
    let forget = redis::Script::new(FORGET_QUANTITY);
    let mut published = 0;
    for d in drifts {
        let () = forget
            .key(keys.channels(&d.sku))
            .arg(&d.channel)
            .arg(d.version)
            .invoke_async::<i64>(redis)
            .await
            .map(drop)
            .context("forgetting a drifted channel quantity")?;
        // The rules version the worker must know first: the bucket's; a removed channel is no
        // longer listed there, and any version is as new as its removal (the bucket keeps the
        // delete marker, the newest entry of its history).
        let rules_version = channels
            .get(&d.channel)
            .map(|c| c.rules_version)
            .unwrap_or(1)
            .max(1);
        let held = d
            .redis
            .map(|q| q.to_string())
            .unwrap_or_else(|| "none".into());
        let event_id = format!(
            "reconcile:{}:{}:{held}:{}",
            d.channel, d.version, d.expected
        );
        let event = StockEvent {
            meta: Some(EventMeta {
                event_id: event_id.clone(),
                occurred_at_ms: stockflow_shared::now_ms(),
                source: RECONCILE_SOURCE.to_owned(),
                reason: Reason::Correction.into(),
                reference: String::new(),
            }),
            sku: d.sku.clone(),
            change: Some(Change::ChannelRecompute(ChannelRecompute {
                channel: d.channel.clone(),
                rules_version,
            })),
            ..Default::default()
        };
        publish_fact(js, &event, &event_id, "a channel recompute").await?;
        published += 1;
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<V: Clone>(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn a_channel_quantity_is_computed_from_the_hashes_as_the_scripts_do() {
        let channel = Channel {
            id: "m".into(),
            locations: vec!["a".into(), "b".into(), "c".into()],
            rules: Some(AvailabilityRules {
                buffer: Some(1),
                ..Default::default()
            }),
            rules_version: 3,
            ..Default::default()
        };
        // a: 10 - 4 reserved - 2 safety (its own); b: 5 - 0 - 1 (the SKU's); c: none.
        let stock = map(&[("oh:a", 10), ("rs:a", 4), ("oh:b", 5)]);
        let policy = map(&[("ss:a", "2".to_owned()), ("ss", "1".to_owned())]);
        let ats = map(&[("r:m:a", "1".to_owned()), ("q:m", "7".to_owned())]);
        let expected = |override_rules: Option<&AvailabilityRules>| {
            expected_quantity(Some(&channel), "m", override_rules, &stock, &policy, &ats)
        };
        assert_eq!(expected(None), 4 + 4 - 1);
        let own = AvailabilityRules {
            own_reservations_only: Some(true),
            ..Default::default()
        };
        // Only the channel's own reservation at a counts: 10 - 1 - 2.
        assert_eq!(expected(Some(&own)), 7 + 4 - 1);
        assert_eq!(
            expected_quantity(None, "m", None, &stock, &policy, &ats),
            0,
            "a removed channel sells nothing"
        );
    }
}
