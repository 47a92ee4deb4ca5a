//! Rebuilding Redis from JetStream (`stockctl rebuild`), and the fold of the streams that
//! [`crate::reconcile`] compares Redis with.
//!
//! The ledger (`STOCK_CHANGES`, kept forever) is the source of truth: every change to a level
//! is one entry with the levels before and after, so the sum of `after - before` per
//! (sku, location) is the level, in whatever order concurrent workers stored the entries.
//! A partitioned ledger (`STOCK_CHANGES_<p>`) is read one partition after the other: everything
//! kept per SKU (levels, policies, order lines, outcomes) comes from its one partition, in the
//! order it was stored, and nothing is kept across SKUs that needs an order between them.
//! Policy entries carry the change as the input gave it, and order steps name their order line.
//! Order decisions come from `ORDER_RESULTS` (kept forever); commits of orders whose hold is
//! still running come from `ORDER_EVENTS` (kept a week, holds last at most a day).
//!
//! Channel state comes from the ledger (each SKU's last `channel_rules` entry per channel) and
//! from the `AVAILABILITY` feed, which keeps each (channel, SKU)'s newest quantity and version.
//!
//! Rebuild expects the workers to be stopped (scaled to zero): inputs wait in their streams and
//! are applied on top of the rebuilt state when the workers start again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt as _;
use order_worker::{
    command::{encode_lines, Line},
    restore::{Backorder, LineRecord, OrderRecord},
    Part,
};
use prost::Message as _;
use stock_worker::restore::{ChannelState, EventOutcome, Policy};
use stockflow_proto::{
    subjects,
    v1::{
        order_event, order_result, AvailabilityRules, ChannelAvailabilityChanged, OrderEvent,
        OrderResult, ReleaseReason, StockChanged, StockEventRejected,
    },
};
use stockflow_shared::{channels::Locations, keys::Keys, redis_conn::RedisConnection};

use crate::Error;

/// Script calls in flight at once while writing.
const IN_FLIGHT: usize = 64;

/// Ledger kinds written by order steps.
const ORDER_KINDS: [&str; 4] = ["reserved", "released", "shipped", "backorder_filled"];

/// On-hand and reserved units of one (sku, location), as the ledger sums them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Units present.
    pub on_hand: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// Units incoming (on open purchase orders).
    pub incoming: i64,
    /// Unsellable units: damaged.
    pub damaged: i64,
    /// Unsellable units: quality control.
    pub quality_control: i64,
    /// Unsellable units: held.
    pub held: i64,
    touched_on_hand: bool,
    touched_reserved: bool,
    /// Some entry changed incoming or an unsellable state.
    touched_model: bool,
}

/// One purchase order at one location, as the ledger sums it.
///
/// Ledger entries are not stored in the order their facts were applied: a worker killed after
/// applying a fact and before publishing its entry leaves it to the redelivery, which publishes
/// it after entries of facts applied later. So the outstanding units are a sum, like the levels:
/// in an entry naming the purchase order, `after.incoming - before.incoming` is exactly that
/// order's change at that location (apply_stock.lua changes both together). The expected date
/// is the one of the entry applied last (the highest `applied_at_ms`; on a tie, the one stored
/// last — facts applied in one batched script call share their `applied_at_ms`, so two facts of
/// one call that both re-date the order may leave either date).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurchaseOrder {
    /// Units still outstanding.
    pub outstanding: i64,
    /// Its expected date, ms since the Unix epoch, as its last applied entry left it.
    pub expected_at_ms: i64,
    /// When that entry was applied, ms since the Unix epoch.
    applied_at_ms: i64,
}

impl PurchaseOrder {
    /// Adds one entry naming the order: its change of incoming, its applied time and the
    /// expected date it left.
    fn add(&mut self, delta: i64, applied_at_ms: i64, expected_at_ms: i64) {
        self.outstanding += delta;
        if applied_at_ms >= self.applied_at_ms {
            self.applied_at_ms = applied_at_ms;
            self.expected_at_ms = expected_at_ms;
        }
    }
}

/// One order line as the ledger describes it.
#[derive(Debug, Clone, Default)]
struct LineState {
    sku: String,
    /// Where its units are held: one part per location, in the order they were reserved (a
    /// line of a channel order may be split across several).
    parts: Vec<Part>,
    /// The sales channel of its order ('' for none).
    channel: String,
    quantity: i64,
    shipped: i64,
    released: bool,
    /// When it was released, ms since the Unix epoch (its record lasts the dedup TTL from then).
    released_at_ms: i64,
    /// Fulfilment event id -> (units, units still held after it).
    shipments: Vec<(String, i64, i64)>,
    /// Its backorder, when it was confirmed beyond stock.
    backorder: Option<Backorder>,
}

/// One order as `ORDER_RESULTS` describes it.
#[derive(Debug, Clone, Default)]
struct OrderState {
    status: &'static str,
    confirmed: bool,
    lines: String,
    expires_at_ms: i64,
    cancelled: bool,
    committed: bool,
    /// When its final result (rejection or release) was stored, ms since the Unix epoch.
    ended_at_ms: i64,
}

/// How long restored records live: as long as the workers keep them, counted from when the
/// workers wrote them, so a rebuild keeps nothing longer than the lost state would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long an event id is remembered (`STOCKFLOW_DEDUP_TTL_SECONDS`): dedup records and
    /// the records of released order lines.
    pub dedup_ttl: Duration,
    /// How long a final order's record is kept (`STOCKFLOW_ORDER_RETENTION_SECONDS`).
    pub orders: Duration,
}

/// Milliseconds of `ttl` left for a record written at `written_at_ms`; `None` when none is.
fn left_ms(ttl: Duration, written_at_ms: i64, now_ms: i64) -> Option<i64> {
    let left = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX) - (now_ms - written_at_ms);
    (left > 0).then_some(left)
}

/// Everything the streams say about the state Redis should hold.
#[derive(Debug, Default)]
pub struct Fold {
    /// Levels per (sku, location).
    pub levels: BTreeMap<(String, String), Totals>,
    /// Policy per SKU.
    pub policies: BTreeMap<String, Policy>,
    /// Each purchase order by (sku, location, reference), summed over the entries naming it;
    /// 0 outstanding when it was fully received or cancelled.
    pub purchase_orders: BTreeMap<(String, String, String), PurchaseOrder>,
    /// Each SKU's override of a channel's rules, by (sku, channel): its last `channel_rules`
    /// entry, left out when that entry set no field (it removed the override).
    pub channel_rules: BTreeMap<(String, String), AvailabilityRules>,
    /// Each kit's components (sorted by SKU), as its last `kit_defined` entry left them; a kit
    /// whose last definition had none is not a kit any more and is left out.
    pub kits: BTreeMap<String, Vec<(String, i64)>>,
    /// The `AVAILABILITY` feed's newest (quantity, version) by (sku, channel); read by
    /// [`Self::everything`] only.
    pub feed: BTreeMap<(String, String), (i64, u64)>,
    /// Stock inputs seen: (sku, event_id) -> how each ended.
    stock_events: HashMap<(String, String), EventOutcome>,
    policy_causes: HashSet<(String, String)>,
    lines: BTreeMap<(String, String), LineState>,
    orders: BTreeMap<String, OrderState>,
    /// Ledger entries read.
    pub entries: u64,
    /// Bytes the ledger stream stores.
    pub ledger_bytes: u64,
}

/// What a rebuild wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Ledger entries read.
    pub entries: u64,
    /// (sku, location) levels written.
    pub locations: usize,
    /// SKUs with a policy.
    pub policies: usize,
    /// Dedup records restored (still inside the dedup window).
    pub dedup_records: usize,
    /// Orders restored.
    pub orders: usize,
    /// Order lines restored.
    pub lines: usize,
    /// Checkout holds scheduled again.
    pub holds: usize,
    /// Average stored bytes per ledger message (for retention planning).
    pub bytes_per_entry: u64,
    /// Per-SKU overrides of a channel's rules restored.
    pub channel_overrides: usize,
    /// Kit definitions restored.
    pub kits: usize,
    /// Channel quantities (with their versions) restored from the feed.
    pub channel_quantities: usize,
    /// Locations written to the set of known locations.
    pub known_locations: usize,
    /// (sku, location) with incoming or unsellable units or open purchase orders written.
    pub model_locations: usize,
}

/// Calls `each` for every message of `stream` stored up to now, in stream order.
async fn for_each_message(
    js: &jetstream::Context,
    stream: &str,
    mut each: impl FnMut(&jetstream::Message) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut handle = js
        .get_stream(stream)
        .await
        .with_context(|| format!("opening stream {stream}"))?;
    let state = handle.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(state.bytes);
    }
    let consumer = handle
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => anyhow::bail!("reading {stream} stopped early"),
        };
        each(&message).with_context(|| format!("{stream} message on {}", message.subject))?;
        let sequence = message
            .info()
            .map_err(|e| anyhow::anyhow!(e))?
            .stream_sequence;
        if sequence >= state.last_sequence {
            return Ok(state.bytes);
        }
    }
}

/// The ledger streams that exist: `STOCK_CHANGES`, or every `STOCK_CHANGES_<p>` in partition
/// order. Read from the server rather than from `STOCKFLOW_STOCK_PARTITIONS`: whatever holds
/// ledger entries is read (`setup` never lets both layouts exist side by side).
pub async fn ledger_streams(js: &jetstream::Context) -> Result<Vec<String>, Error> {
    let mut streams: Vec<String> = js
        .stream_names()
        .filter_map(|name| async move {
            match name {
                Ok(name)
                    if name == subjects::STOCK_CHANGES
                        || subjects::stock_changes_partition_of(&name).is_some() =>
                {
                    Some(Ok(name))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("listing streams")?;
    if streams.is_empty() {
        return Err(Error::NoLedger);
    }
    streams.sort_by_key(|name| subjects::stock_changes_partition_of(name));
    Ok(streams)
}

/// The newest quantity of every (channel, SKU) in the `AVAILABILITY` feed, by (sku, channel):
/// the stream keeps the last message per subject, so this is one read from its start. A
/// deployment whose topology has no feed yet has none.
pub async fn availability_feed(
    js: &jetstream::Context,
) -> Result<BTreeMap<(String, String), ChannelAvailabilityChanged>, Error> {
    match js.get_stream(subjects::AVAILABILITY).await {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            return Ok(BTreeMap::new())
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("opening stream {}", subjects::AVAILABILITY))
                .into())
        }
    }
    let mut feed = BTreeMap::new();
    for_each_message(js, subjects::AVAILABILITY, |message| {
        let q = ChannelAvailabilityChanged::decode(message.payload.as_ref())?;
        feed.insert((q.sku.clone(), q.channel.clone()), q);
        Ok(())
    })
    .await?;
    Ok(feed)
}

fn published_ms(message: &jetstream::Message) -> i64 {
    message
        .info()
        .map(|info| (info.published.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_default()
}

impl Fold {
    /// Reads the ledger only: the levels and policies (what `reconcile` compares).
    pub async fn ledger(js: &jetstream::Context) -> Result<Self, Error> {
        Self::ledger_with(js, &mut || {}).await
    }

    /// [`Self::ledger`], calling `read` after each message (for a progress display).
    /// Units of order lines still backordered (waiting for stock) per (sku, location), as the
    /// ledger entries of the lines not released leave them.
    pub fn backordered(&self) -> BTreeMap<(String, String), i64> {
        let mut out = BTreeMap::new();
        for line in self.lines.values().filter(|l| !l.released) {
            if let Some(b) = line.backorder.as_ref().filter(|b| b.waiting > 0) {
                *out.entry((line.sku.clone(), b.location.clone()))
                    .or_default() += b.waiting;
            }
        }
        out
    }

    pub async fn ledger_with(
        js: &jetstream::Context,
        read: &mut (dyn FnMut() + Send),
    ) -> Result<Self, Error> {
        let mut fold = Self::default();
        for stream in ledger_streams(js).await? {
            fold.ledger_bytes += for_each_message(js, &stream, |message| {
                read();
                fold.stock_message(message)
            })
            .await?;
        }
        Ok(fold)
    }

    /// Reads the ledger, order results, recent order commands and the availability feed.
    pub async fn everything(js: &jetstream::Context) -> Result<Self, Error> {
        let mut fold = Self::ledger(js).await?;
        fold.feed = availability_feed(js)
            .await?
            .into_iter()
            .map(|(key, q)| (key, (q.available_to_sell, q.version)))
            .collect();
        for_each_message(js, subjects::ORDER_RESULTS, |message| {
            fold.order_result(message)
        })
        .await?;
        for_each_message(js, subjects::ORDER_EVENTS, |message| {
            fold.order_event(message)
        })
        .await?;
        Ok(fold)
    }

    fn stock_message(&mut self, message: &jetstream::Message) -> anyhow::Result<()> {
        if message.subject.starts_with("stock.outcomes.") {
            let rejected = StockEventRejected::decode(message.payload.as_ref())?;
            let outcome = EventOutcome::Stale {
                at_ms: published_ms(message),
                expected: rejected.expected_on_hand,
                actual: rejected.actual_on_hand,
            };
            self.stock_events
                .insert((rejected.sku, rejected.event_id), outcome);
            return Ok(());
        }
        let entry = StockChanged::decode(message.payload.as_ref())?;
        self.entries += 1;
        let (before, after) = (
            entry.before.unwrap_or_default(),
            entry.after.unwrap_or_default(),
        );
        if !entry.location.is_empty() && entry.source != crate::reconcile::RECONCILE_SOURCE {
            let totals = self
                .levels
                .entry((entry.sku.clone(), entry.location.clone()))
                .or_default();
            totals.on_hand += after.on_hand - before.on_hand;
            totals.reserved += after.reserved - before.reserved;
            if entry.kind != "policy_set" {
                totals.touched_on_hand = true;
            }
            totals.touched_reserved |= ORDER_KINDS.contains(&entry.kind.as_str());
            let deltas = [
                (&mut totals.incoming, after.incoming - before.incoming),
                (&mut totals.damaged, after.damaged - before.damaged),
                (
                    &mut totals.quality_control,
                    after.quality_control - before.quality_control,
                ),
                (&mut totals.held, after.held - before.held),
            ];
            for (total, delta) in deltas {
                *total += delta;
                totals.touched_model |= delta != 0;
            }
            if !entry.purchase_order.is_empty() {
                self.purchase_orders
                    .entry((
                        entry.sku.clone(),
                        entry.location.clone(),
                        entry.purchase_order.clone(),
                    ))
                    .or_default()
                    .add(
                        after.incoming - before.incoming,
                        entry.applied_at_ms,
                        entry.purchase_order_expected_at_ms,
                    );
            }
        }
        if ORDER_KINDS.contains(&entry.kind.as_str()) {
            self.order_step(&entry, before.on_hand - after.on_hand);
            return Ok(());
        }
        if let Some(set) = &entry.channel_rules {
            // As in apply_stock.lua: the last override replaces the one before; one that sets
            // no field removes it.
            let key = (entry.sku.clone(), set.channel.clone());
            match set.rules.filter(|r| *r != AvailabilityRules::default()) {
                Some(rules) => {
                    self.channel_rules.insert(key, rules);
                }
                None => {
                    self.channel_rules.remove(&key);
                }
            }
        }
        if entry.kind == "kit_defined" {
            // As in apply_stock.lua: the last definition replaces the one before; none removes it.
            let mut components: Vec<(String, i64)> = entry
                .kit
                .iter()
                .flat_map(|k| &k.components)
                .map(|c| (c.sku.clone(), c.quantity))
                .collect();
            components.sort();
            if components.is_empty() {
                self.kits.remove(&entry.sku);
            } else {
                self.kits.insert(entry.sku.clone(), components);
            }
        }
        if let Some(policy) = &entry.policy {
            if self
                .policy_causes
                .insert((entry.sku.clone(), entry.cause_event_id.clone()))
            {
                let stored = self.policies.entry(entry.sku.clone()).or_default();
                let values = stored
                    .locations
                    .entry(entry.policy_location.clone())
                    .or_default();
                // As in apply_stock.lua: absent leaves a value, a negative one removes it.
                for (value, given) in [
                    (&mut values.threshold, policy.low_stock_threshold),
                    (&mut values.safety_stock, policy.safety_stock),
                ] {
                    if let Some(v) = given {
                        *value = (v >= 0).then_some(v);
                    }
                }
                if !policy.location_priority.is_empty() {
                    stored.priority = Some(policy.location_priority.join(","));
                }
                // As in apply_stock.lua: unspecified leaves it, none removes it.
                if let Ok(Some(backorder)) = stockflow_proto::input::fact::backorder_of(policy) {
                    stored.backorder = (backorder != stockflow_proto::input::fact::Backorder::None)
                        .then_some(backorder);
                }
            }
        }
        self.stock_events.insert(
            (entry.sku, entry.cause_event_id),
            EventOutcome::Applied {
                at_ms: entry.applied_at_ms,
            },
        );
        Ok(())
    }

    fn order_step(&mut self, entry: &StockChanged, shipped_units: i64) {
        let line = self
            .lines
            .entry((entry.order_id.clone(), entry.line_id.clone()))
            .or_default();
        line.sku.clone_from(&entry.sku);
        if !entry.channel.is_empty() {
            line.channel.clone_from(&entry.channel);
        }
        let (before, after) = (
            entry.before.unwrap_or_default(),
            entry.after.unwrap_or_default(),
        );
        // The part at the entry's location (a line reserves at a location once).
        let index = match line.parts.iter().position(|p| p.location == entry.location) {
            Some(index) => index,
            None => {
                line.parts.push(Part {
                    location: entry.location.clone(),
                    quantity: 0,
                    shipped: 0,
                });
                line.parts.len() - 1
            }
        };
        // A backordered line's entries (its reservation, fills, release) say what still waits:
        // it only goes down, so the least is the last, in whatever order they were stored.
        if entry.backorder_rank != 0 {
            let b = line.backorder.get_or_insert_with(|| Backorder {
                location: entry.location.clone(),
                waiting: entry.backordered,
                backordered: 0,
                filled: 0,
                expected_at_ms: entry.backorder_expected_at_ms,
                rank: entry.backorder_rank,
            });
            b.waiting = b.waiting.min(entry.backordered);
            if entry.kind == "reserved" {
                b.backordered = entry.backordered;
            }
        }
        let filled_here = line
            .backorder
            .as_ref()
            .filter(|b| b.location == entry.location)
            .map_or(0, |b| b.filled);
        match entry.kind.as_str() {
            "reserved" => {
                // What stock covered at placement, and what fills added since.
                line.parts[index].quantity = after.reserved - before.reserved + filled_here;
                line.quantity = line.parts.iter().map(|p| p.quantity).sum();
            }
            "backorder_filled" => {
                line.parts[index].quantity += entry.backorder_filled;
                line.quantity += entry.backorder_filled;
                if let Some(b) = line.backorder.as_mut() {
                    b.filled += entry.backorder_filled;
                }
            }
            "released" => {
                line.released = true;
                line.released_at_ms = entry.applied_at_ms;
            }
            _ => {
                line.shipped += shipped_units;
                line.parts[index].shipped += shipped_units;
                let prefix = format!("{}/{}/ship/", entry.order_id, entry.line_id);
                if let Some(fulfilment) = entry.cause_event_id.strip_prefix(&prefix) {
                    // As ship_line.lua marks it: the units still waiting count as left, so a
                    // redelivered fulfilment does not find the line complete.
                    let waiting = line.backorder.as_ref().map_or(0, |b| b.waiting);
                    let left = line.quantity - line.shipped + waiting;
                    // A fulfilment of a split line ships from several parts: one mark.
                    match line.shipments.last_mut() {
                        Some((id, units, held)) if id == fulfilment => {
                            *units += shipped_units;
                            *held = left;
                        }
                        _ => line
                            .shipments
                            .push((fulfilment.to_owned(), shipped_units, left)),
                    }
                }
            }
        }
    }

    fn order_result(&mut self, message: &jetstream::Message) -> anyhow::Result<()> {
        let result = OrderResult::decode(message.payload.as_ref())?;
        let order = self.orders.entry(result.order_id).or_default();
        match result.result {
            Some(order_result::Result::Confirmed(confirmed)) => {
                order.confirmed = true;
                if order.status.is_empty() {
                    order.status = "confirmed";
                }
                order.expires_at_ms = confirmed.expires_at_ms;
                // One allocation per part: a split line's parts make one line again, which
                // names no location (it did not ask for one).
                let mut lines: Vec<Line> = Vec::with_capacity(confirmed.lines.len());
                for a in confirmed.lines {
                    match lines.iter_mut().find(|l| l.line_id == a.line_id) {
                        Some(line) => {
                            line.quantity += a.quantity + a.backordered;
                            line.location.clear();
                        }
                        None => lines.push(Line {
                            line_id: a.line_id,
                            sku: a.sku,
                            quantity: a.quantity + a.backordered,
                            location: a.location,
                        }),
                    }
                }
                order.lines = encode_lines(&lines);
            }
            Some(order_result::Result::Rejected(_)) => {
                order.status = "rejected";
                order.ended_at_ms = published_ms(message);
            }
            Some(order_result::Result::Released(released)) => {
                order.ended_at_ms = published_ms(message);
                order.status = match ReleaseReason::try_from(released.reason) {
                    Ok(ReleaseReason::Expired) => "expired",
                    Ok(ReleaseReason::FulfilledRemainder) => "fulfilled",
                    _ => "cancelled",
                };
                order.cancelled |= order.status == "cancelled";
            }
            None => {}
        }
        Ok(())
    }

    fn order_event(&mut self, message: &jetstream::Message) -> anyhow::Result<()> {
        // Inputs may be malformed (they went to dead letters); only commits matter here.
        let Ok(event) = OrderEvent::decode(message.payload.as_ref()) else {
            return Ok(());
        };
        if let Some(order_event::Command::Committed(_)) = event.command {
            if let Some(order) = self.orders.get_mut(&event.order_id) {
                order.committed = true;
            }
        }
        Ok(())
    }

    /// Writes the fold into Redis, through the workers' restore scripts
    /// ([`stock_worker::restore`], [`order_worker::restore`]). Records the workers would have
    /// let expire by now (dedup records, released lines, final orders) are not restored; the
    /// others keep what is left of their time.
    pub async fn write(
        &self,
        redis: &RedisConnection,
        keys: &Keys,
        retention: Retention,
    ) -> Result<RebuildReport, Error> {
        let now = stockflow_shared::now_ms();
        let stock = &stock_worker::restore::Restore::new(keys.clone());
        let orders = &order_worker::restore::Restore::new(keys.clone());
        let mut report = RebuildReport {
            entries: self.entries,
            bytes_per_entry: self.ledger_bytes / self.entries.max(1),
            ..Default::default()
        };

        let levels: Vec<_> = self
            .levels
            .iter()
            .filter(|(_, t)| t.touched_on_hand || t.touched_reserved)
            .collect();
        report.locations = levels.len();
        each(levels, |((sku, location), t)| {
            stock.level(
                redis,
                sku,
                location,
                t.touched_on_hand.then_some(t.on_hand),
                t.touched_reserved.then_some(t.reserved),
            )
        })
        .await?;

        // Incoming, unsellable units and open purchase orders, where the ledger has any.
        let mut model: BTreeMap<(&str, &str), stock_worker::restore::ModelLevels> = BTreeMap::new();
        for ((sku, location), t) in self.levels.iter().filter(|(_, t)| t.touched_model) {
            let m = model.entry((sku, location)).or_default();
            m.incoming = t.incoming;
            m.damaged = t.damaged;
            m.quality_control = t.quality_control;
            m.held = t.held;
        }
        for ((sku, location, reference), po) in &self.purchase_orders {
            if po.outstanding > 0 {
                model
                    .entry((sku, location))
                    .or_default()
                    .purchase_orders
                    .push((reference.clone(), po.outstanding, po.expected_at_ms));
            }
        }
        report.model_locations = model.len();
        each(
            model.into_iter().collect(),
            |((sku, location), m)| async move { stock.model(redis, sku, location, &m).await },
        )
        .await?;

        let policies: Vec<_> = self
            .policies
            .iter()
            .filter(|(_, p)| !p.is_empty())
            .collect();
        report.policies = policies.len();
        each(policies, |(sku, policy)| stock.policy(redis, sku, policy)).await?;

        report.kits = self.kits.len();
        each(self.kits.iter().collect(), |(sku, components)| {
            stock.kit(redis, sku, components)
        })
        .await?;

        let mut channels: BTreeMap<&str, BTreeMap<String, ChannelState>> = BTreeMap::new();
        for ((sku, channel), rules) in &self.channel_rules {
            report.channel_overrides += 1;
            channels
                .entry(sku)
                .or_default()
                .entry(channel.clone())
                .or_default()
                .override_rules = Some(*rules);
        }
        for ((sku, channel), published) in &self.feed {
            report.channel_quantities += 1;
            channels
                .entry(sku)
                .or_default()
                .entry(channel.clone())
                .or_default()
                .published = Some(*published);
        }
        each(channels.into_iter().collect(), |(sku, states)| async move {
            stock.channels(redis, sku, &states).await
        })
        .await?;

        // The locations a channel may name: every location the ledger has an entry of, as the
        // stock worker noted them while applying those entries.
        let known: BTreeSet<&str> = self
            .levels
            .keys()
            .map(|(_, location)| location.as_str())
            .collect();
        report.known_locations = known.len();
        Locations::new(keys)
            .note(redis, known)
            .await
            .context("writing the known locations to Redis")?;

        let events: Vec<_> = self
            .stock_events
            .iter()
            .filter_map(|(id, outcome)| {
                let at_ms = match *outcome {
                    EventOutcome::Applied { at_ms } | EventOutcome::Stale { at_ms, .. } => at_ms,
                };
                left_ms(retention.dedup_ttl, at_ms, now).map(|left| (id, *outcome, left))
            })
            .collect();
        report.dedup_records = events.len();
        each(events, |((sku, event_id), outcome, left)| {
            stock.event(redis, sku, event_id, outcome, duration_ms(left))
        })
        .await?;

        let lines: Vec<_> = self
            .lines
            .iter()
            .filter_map(|((order_id, line_id), line)| {
                let expiry = if line.released {
                    Some(duration_ms(left_ms(
                        retention.dedup_ttl,
                        line.released_at_ms,
                        now,
                    )?))
                } else {
                    None
                };
                let record = LineRecord {
                    sku: &line.sku,
                    order_id,
                    line_id,
                    parts: &line.parts,
                    // As reserve_line.lua records it: the line's units, those still waiting too.
                    quantity: line.quantity + line.backorder.as_ref().map_or(0, |b| b.waiting),
                    shipped: line.shipped,
                    released: line.released,
                    shipments: &line.shipments,
                    channel: &line.channel,
                    backorder: line.backorder.as_ref(),
                };
                Some((record, expiry))
            })
            .collect();
        report.lines = lines.len();
        each(lines, |(record, expiry)| async move {
            orders.line(redis, &record, expiry).await
        })
        .await?;

        // An order's channel is on its lines' ledger entries.
        let mut channels: HashMap<&str, &str> = HashMap::new();
        for ((order_id, _), line) in &self.lines {
            if !line.channel.is_empty() {
                channels.insert(order_id.as_str(), line.channel.as_str());
            }
        }
        let mut holds = Vec::new();
        let records: Vec<_> = self
            .orders
            .iter()
            .filter(|(_, order)| !order.status.is_empty())
            .filter_map(|(order_id, order)| {
                let ended = matches!(order.status, "cancelled" | "expired" | "fulfilled");
                // Final orders keep their record as long as the order worker would (order.lua).
                let expiry = if ended || order.status == "rejected" {
                    Some(duration_ms(left_ms(
                        retention.orders,
                        order.ended_at_ms,
                        now,
                    )?))
                } else {
                    None
                };
                if order.status == "confirmed" && !order.committed && order.expires_at_ms > 0 {
                    holds.push((order_id, order.expires_at_ms));
                }
                let record = OrderRecord {
                    status: order.status,
                    lines: &order.lines,
                    expires_at_ms: order.expires_at_ms,
                    confirmed: order.confirmed,
                    cancelled: order.cancelled,
                    committed: order.committed,
                    channel: channels.get(order_id.as_str()).copied().unwrap_or_default(),
                };
                Some((order_id, record, expiry))
            })
            .collect();
        report.orders = records.len();
        each(records, |(order_id, record, expiry)| async move {
            orders.order(redis, order_id, &record, expiry).await
        })
        .await?;
        report.holds = holds.len();
        each(holds, |(order_id, due)| {
            orders.schedule_hold(redis, order_id, due)
        })
        .await?;
        Ok(report)
    }
}

/// Runs `write` for every item, [`IN_FLIGHT`] at a time, and stops at the first error.
async fn each<T, F, Fut>(items: Vec<T>, write: F) -> anyhow::Result<()>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<()>>,
{
    let mut writes = futures::stream::iter(items)
        .map(write)
        .buffer_unordered(IN_FLIGHT);
    while let Some(written) = writes.next().await {
        written.context("writing rebuilt state to Redis")?;
    }
    Ok(())
}

fn duration_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or_default())
}

/// True when Redis holds no key under the prefix.
pub async fn is_empty(redis: &mut RedisConnection, keys: &Keys) -> Result<bool, Error> {
    let found = redis
        .scan_match(&format!("{}:*", keys.prefix()))
        .await
        .context("listing the keys in Redis")?;
    Ok(found.is_empty())
}

/// Rebuilds every stockflow key in Redis from JetStream. Refuses to write over existing state
/// ([`Error::NotEmpty`]).
pub async fn rebuild(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    retention: Retention,
) -> Result<RebuildReport, Error> {
    if !is_empty(redis, keys).await? {
        return Err(Error::NotEmpty);
    }
    let fold = Fold::everything(js).await?;
    fold.write(redis, keys, retention).await
}
