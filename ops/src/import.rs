//! Importing initial stock or counts in bulk (`stockctl import`): reading and checking a
//! sheet, planning what to publish against what Redis holds, publishing, and reading back what
//! became of every row.
//!
//! Each valid row becomes an unconditional `counted` fact (on_hand := the file's value) and,
//! when the row gives `threshold` or `safety_stock`, a `policy_set` for that location.
//!
//! Re-running the same file changes nothing, for two reasons that hold together:
//! 1. rows whose location already has the file's values (read from Redis first) are
//!    `unchanged` and not published at all — this holds however long after the first run;
//! 2. every event id is derived from the file's digest and the row's content
//!    (`imp-<file>-<row>-c|p`), and the worker applies an `event_id` once within
//!    `STOCKFLOW_DEDUP_TTL_SECONDS`: a row that drifted since (a sale after the import) is
//!    published again but absorbed as a duplicate, so the same file never resets it twice.
//!    A *different* file is a new count sheet: its rows get new ids and are applied.
//!
//! An initial load (`Options::initial_load`, `stockctl import --initial-load`) marks every
//! event with the reason `REASON_OPENING_BALANCE`: the stock worker records the levels in the
//! ledger as usual but raises no low/out-of/back-in-stock alerts, so loading a warehouse does
//! not flood `ALERTS` and every webhook subscriber; nor does it recompute the sales channels
//! row by row — once its rows are applied, each SKU's channel quantities are computed once.
//!
//! When waited for, the outcome of every published row is read back: `applied` when the ledger
//! has an entry caused by one of its events, `invalid` when the worker dead-lettered it,
//! `unchanged` otherwise (the worker absorbed it as a duplicate). Otherwise published rows are
//! reported as `published`, not as applied.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::{stream::FuturesUnordered, StreamExt as _};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use stockflow_proto::{
    input::Event,
    subjects,
    v1::{stock_event::Change, Counted, EventMeta, PolicySet, Reason, StockChanged, StockEvent},
};
use stockflow_shared::{
    keys::Keys,
    redis_conn::RedisConnection,
    topology::{self, ConsumerSpec, TopologySettings},
    validate::{validate_location, validate_sku, MAX_QUANTITY},
};

/// One valid row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Line in the file (the header is line 1).
    pub line: u64,
    /// SKU.
    pub sku: String,
    /// Location.
    pub location: String,
    /// Units counted.
    pub on_hand: i64,
    /// Low-stock threshold to set, if given.
    pub threshold: Option<i64>,
    /// Safety stock to set, if given.
    pub safety_stock: Option<i64>,
}

/// A row that was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Invalid {
    /// Line in the file.
    pub line: u64,
    /// What is wrong, naming the column.
    pub reason: String,
}

/// A file read and checked.
#[derive(Debug, Clone)]
pub struct Sheet {
    /// Valid rows, in file order.
    pub rows: Vec<Row>,
    /// Refused rows, in file order.
    pub invalid: Vec<Invalid>,
    /// First 16 hex digits of the file's SHA-256: part of every event id.
    pub digest: String,
}

/// The file as a whole cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    /// The header row is missing a required column, names one twice, or names an unknown one.
    #[error(
        "header row: {0}; expected the columns sku, location, on_hand[, threshold, safety_stock]"
    )]
    Header(String),
    /// The CSV cannot be read at all.
    #[error("reading the CSV: {0}")]
    Csv(#[from] csv::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Sku,
    Location,
    OnHand,
    Threshold,
    SafetyStock,
}

fn column(name: &str) -> Option<Column> {
    match name.trim().to_ascii_lowercase().as_str() {
        "sku" => Some(Column::Sku),
        "location" => Some(Column::Location),
        "on_hand" => Some(Column::OnHand),
        "threshold" | "low_stock_threshold" => Some(Column::Threshold),
        "safety_stock" => Some(Column::SafetyStock),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn quantity(field: &str, text: &str) -> Result<i64, String> {
    let value: i64 = text
        .parse()
        .map_err(|_| format!("{field} {text:?} is not a whole number"))?;
    if !(0..=MAX_QUANTITY).contains(&value) {
        return Err(format!("{field} must be 0..={MAX_QUANTITY}, got {value}"));
    }
    Ok(value)
}

fn optional_quantity(field: &str, text: Option<&str>) -> Result<Option<i64>, String> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => quantity(field, text).map(Some),
    }
}

/// Reads and checks a CSV file's bytes.
pub fn read_sheet(bytes: &[u8]) -> Result<Sheet, SheetError> {
    let digest = hex(&Sha256::digest(bytes)[..8]);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = reader.headers()?.clone();
    let mut columns: Vec<Column> = Vec::new();
    for name in &header {
        let c =
            column(name).ok_or_else(|| SheetError::Header(format!("unknown column {name:?}")))?;
        if columns.contains(&c) {
            return Err(SheetError::Header(format!("column {name:?} appears twice")));
        }
        columns.push(c);
    }
    for (required, name) in [
        (Column::Sku, "sku"),
        (Column::Location, "location"),
        (Column::OnHand, "on_hand"),
    ] {
        if !columns.contains(&required) {
            return Err(SheetError::Header(format!("no {name} column")));
        }
    }
    let mut rows = Vec::new();
    let mut invalid = Vec::new();
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => match e.position() {
                // A row that is not UTF-8 or not CSV: refuse the row, keep the others.
                Some(position) => {
                    invalid.push(Invalid {
                        line: position.line(),
                        reason: format!("unreadable row: {e}"),
                    });
                    continue;
                }
                None => return Err(e.into()),
            },
        };
        let line = record.position().map(|p| p.line()).unwrap_or_default();
        let field = |c: Column| {
            columns
                .iter()
                .position(|x| *x == c)
                .and_then(|i| record.get(i))
        };
        let parsed = (|| -> Result<Row, String> {
            if record.len() != columns.len() {
                return Err(format!(
                    "has {} fields, the header has {}",
                    record.len(),
                    columns.len()
                ));
            }
            let sku = field(Column::Sku).unwrap_or_default();
            validate_sku(sku)?;
            let location = field(Column::Location).unwrap_or_default();
            validate_location("location", location)?;
            Ok(Row {
                line,
                sku: sku.to_owned(),
                location: location.to_owned(),
                on_hand: quantity("on_hand", field(Column::OnHand).unwrap_or_default())?,
                threshold: optional_quantity("threshold", field(Column::Threshold))?,
                safety_stock: optional_quantity("safety_stock", field(Column::SafetyStock))?,
            })
        })();
        match parsed {
            Ok(row) => {
                let key = (row.sku.clone(), row.location.clone());
                if let Some(first) = seen.get(&key) {
                    // Two values for one location in one sheet: which wins would depend on
                    // processing order, so the later one is refused.
                    invalid.push(Invalid {
                        line,
                        reason: format!(
                            "sku {:?} at location {:?} is already on line {first}",
                            row.sku, row.location
                        ),
                    });
                } else {
                    seen.insert(key, line);
                    rows.push(row);
                }
            }
            Err(reason) => invalid.push(Invalid { line, reason }),
        }
    }
    Ok(Sheet {
        rows,
        invalid,
        digest,
    })
}

impl Row {
    /// The row's content id: equal rows of one file get equal event ids.
    fn content_id(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            self.sku.as_str(),
            &self.location,
            &self.on_hand.to_string(),
            &self.threshold.map(|t| t.to_string()).unwrap_or_default(),
            &self.safety_stock.map(|s| s.to_string()).unwrap_or_default(),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        hex(&hasher.finalize()[..8])
    }

    fn event(&self, sheet: &str, source: &str, suffix: char, change: Change) -> StockEvent {
        let event_id = format!("imp-{sheet}-{}-{suffix}", self.content_id());
        StockEvent {
            meta: Some(EventMeta {
                event_id,
                occurred_at_ms: stockflow_shared::now_ms(),
                source: source.to_owned(),
                reason: 0,
                reference: format!("urn:stockflow:import:{sheet}:line:{}", self.line),
            }),
            sku: self.sku.clone(),
            location: self.location.clone(),
            change: Some(change),
            ..Default::default()
        }
    }

    /// The unconditional count that sets on_hand to the file's value.
    pub fn count(&self, sheet: &str, source: &str) -> StockEvent {
        self.event(
            sheet,
            source,
            'c',
            Change::Counted(Counted {
                on_hand: self.on_hand,
                expected_on_hand: None,
            }),
        )
    }

    /// The policy the row sets, if it gives any.
    pub fn policy(&self, sheet: &str, source: &str) -> Option<StockEvent> {
        (self.threshold.is_some() || self.safety_stock.is_some()).then(|| {
            self.event(
                sheet,
                source,
                'p',
                Change::PolicySet(PolicySet {
                    low_stock_threshold: self.threshold,
                    safety_stock: self.safety_stock,
                    location_priority: vec![],
                    ..PolicySet::default()
                }),
            )
        })
    }
}

/// What Redis holds now for a row's location.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Current {
    on_hand: Option<i64>,
    threshold: Option<i64>,
    safety_stock: Option<i64>,
}

/// Reads the current on_hand and the location's own policy for every row, pipelined.
async fn current(
    redis: &mut RedisConnection,
    keys: &Keys,
    rows: &[Row],
) -> anyhow::Result<Vec<Current>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(1000) {
        let mut cmds = Vec::with_capacity(2 * chunk.len());
        for row in chunk {
            let mut stock = redis::cmd("HMGET");
            stock
                .arg(keys.stock(&row.sku))
                .arg(format!("oh:{}", row.location));
            let mut policy = redis::cmd("HMGET");
            policy
                .arg(keys.policy(&row.sku))
                .arg(format!("thr:{}", row.location))
                .arg(format!("ss:{}", row.location));
            cmds.extend([stock, policy]);
        }
        let replies = redis
            .run_all(cmds)
            .await
            .context("reading current levels from Redis")?;
        let values: Vec<Vec<Option<i64>>> = redis::from_redis_value(redis::Value::Array(replies))
            .context("reading current levels from Redis")?;
        for pair in values.chunks(2) {
            let get = |i: usize, j: usize| pair.get(i).and_then(|v| v.get(j)).copied().flatten();
            out.push(Current {
                on_hand: get(0, 0),
                threshold: get(1, 0),
                safety_stock: get(1, 1),
            });
        }
    }
    Ok(out)
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Its location already had the file's values: nothing published.
    AlreadyAsInFile,
    /// Published; JetStream stored at least one of its events anew.
    Published(Vec<String>),
    /// Published, but JetStream already held every event (a re-run within its duplicate window).
    AlreadyStored,
}

/// The result of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Rows read (valid and invalid).
    pub rows: usize,
    /// Rows the worker applied (when waited for).
    pub applied: usize,
    /// Rows published whose effect was not waited for.
    pub published: usize,
    /// Rows whose location already had the file's values.
    pub unchanged_as_in_file: usize,
    /// Rows absorbed as duplicates of an earlier import of this file.
    pub unchanged_duplicate: usize,
    /// Refused rows (by the file check, or dead-lettered by the worker), by line.
    pub invalid: Vec<Invalid>,
    /// Whether the outcome was waited for.
    pub waited: bool,
}

impl Summary {
    /// Rows that changed nothing.
    pub fn unchanged(&self) -> usize {
        self.unchanged_as_in_file + self.unchanged_duplicate
    }
}

/// Rows to publish, with the events each needs; the others' fates are already known.
#[derive(Debug, Default)]
struct Plan {
    /// (row index, events) for rows whose location differs from the file.
    publish: Vec<(usize, Vec<StockEvent>)>,
    /// Rows decided without publishing.
    fates: BTreeMap<usize, Fate>,
    /// Rows whose events the worker's parser refuses.
    invalid: Vec<Invalid>,
}

/// Compares every row with what Redis holds and builds the events for those that differ, each
/// checked by the worker's own parser.
fn plan(sheet: &Sheet, now: &[Current], options: &Options) -> Plan {
    let source = options.source.as_str();
    let mut plan = Plan::default();
    for (index, (row, have)) in sheet.rows.iter().zip(now).enumerate() {
        let mut inputs = Vec::new();
        if have.on_hand != Some(row.on_hand) {
            inputs.push(row.count(&sheet.digest, source));
        }
        let policy_differs = (row.threshold.is_some() && have.threshold != row.threshold)
            || (row.safety_stock.is_some() && have.safety_stock != row.safety_stock);
        if policy_differs {
            if let Some(policy) = row.policy(&sheet.digest, source) {
                inputs.push(policy);
            }
        }
        if options.initial_load {
            for input in &mut inputs {
                if let Some(meta) = &mut input.meta {
                    meta.reason = Reason::OpeningBalance.into();
                }
            }
        }
        if inputs.is_empty() {
            plan.fates.insert(index, Fate::AlreadyAsInFile);
        } else if let Some(reason) = inputs.iter().find_map(|e| validate(e).err()) {
            plan.invalid.push(Invalid {
                line: row.line,
                reason,
            });
        } else {
            plan.publish.push((index, inputs));
        }
    }
    plan
}

/// What JetStream answered for a plan's publishes.
#[derive(Debug, Default)]
struct Stored {
    /// Rows with at least one event stored anew (false: every event was a duplicate).
    anew: HashMap<usize, bool>,
    /// Highest sequence stored, per stream (one per partition of the stock input).
    last_sequence: BTreeMap<String, u64>,
    /// Per row: the stream its events went to (one SKU, one partition) and the highest
    /// sequence among them.
    row_sequence: HashMap<usize, (String, u64)>,
}

/// Publishes every planned event with at most `in_flight` acknowledgements outstanding.
async fn publish_plan(
    js: &jetstream::Context,
    sheet: &Sheet,
    publish: &[(usize, Vec<StockEvent>)],
    in_flight: usize,
    progress: &mut dyn Progress,
) -> anyhow::Result<Stored> {
    progress.publishing(publish.len() as u64);
    // Events of each row still waiting for their acknowledgement: a row is stored with its last.
    let mut unacked: HashMap<usize, usize> = publish
        .iter()
        .map(|(index, inputs)| (*index, inputs.len()))
        .collect();
    let mut row_done = |index: usize, progress: &mut dyn Progress| {
        if let Some(left) = unacked.get_mut(&index) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                progress.stored();
            }
        }
    };
    let mut stored = Stored::default();
    let mut pending = FuturesUnordered::new();
    for (index, inputs) in publish {
        for input in inputs {
            if pending.len() >= in_flight {
                if let Some(done) = pending.next().await {
                    let done: Acked = done;
                    let row = done.0;
                    note_ack(done, sheet, &mut stored)?;
                    row_done(row, progress);
                }
            }
            let message = PublishMessage::build()
                .payload(input.encode_to_vec().into())
                .message_id(stockflow_proto::msg_id::stock_fact(
                    &input.sku,
                    &event_id(input),
                ));
            let line = sheet.rows[*index].line;
            let ack = js
                .send_publish(subjects::stock_event(&input.sku), message)
                .await
                .with_context(|| format!("line {line}: publishing"))?;
            let index = *index;
            pending.push(async move { (index, ack.await) });
        }
    }
    while let Some(done) = pending.next().await {
        let row = done.0;
        note_ack(done, sheet, &mut stored)?;
        row_done(row, progress);
    }
    progress.published();
    Ok(stored)
}

/// Per event id: `Ok` when a ledger stream has an entry it caused after the sequence
/// `ledger_from` names for it, `Err(reason)` when it was dead-lettered after `dead_from`.
async fn outcomes(
    js: &jetstream::Context,
    stock_workers: &[ConsumerSpec],
    ledger_from: &[(&str, u64)],
    dead_from: u64,
) -> anyhow::Result<HashMap<String, Result<(), String>>> {
    let mut outcome_of = HashMap::new();
    let mut ledger = Vec::new();
    // Each ledger partition has its own sequence.
    for (stream, from) in ledger_from {
        ledger.extend(
            crate::streams::read_after(js, stream, "stock.changes.>", *from)
                .await
                .with_context(|| format!("reading the ledger ({stream})"))?,
        );
    }
    for entry in ledger {
        if let Ok(change) = StockChanged::decode(entry.payload.clone()) {
            outcome_of.insert(change.cause_event_id, Ok(()));
        }
    }
    let mut dead = Vec::new();
    for spec in stock_workers {
        dead.extend(
            crate::streams::read_after(
                js,
                subjects::DEAD_LETTERS,
                &subjects::dead_letter(spec.stream),
                dead_from,
            )
            .await
            .context("reading dead letters")?,
        );
    }
    for letter in dead {
        if let Ok(event) = StockEvent::decode(letter.payload.clone()) {
            let reason = stockflow_shared::deadletter::reason(&letter);
            outcome_of.insert(event.meta.unwrap_or_default().event_id, Err(reason));
        }
    }
    Ok(outcome_of)
}

/// What the caller is told while an import runs (a progress bar), counted in rows of the
/// sheet (a row may be two events: its count and its policy).
pub trait Progress {
    /// The events of `rows` rows are about to be published.
    fn publishing(&mut self, _rows: u64) {}
    /// One more row is stored (JetStream acknowledged each of its events).
    fn stored(&mut self) {}
    /// Every row is stored.
    fn published(&mut self) {}
    /// Waiting until the stock worker has applied `rows` rows.
    fn waiting(&mut self, _rows: usize) {}
    /// The stock worker has applied `rows` of the rows waited for so far.
    fn applied(&mut self, _rows: usize) {}
    /// The wait is over (whether every row was applied or not).
    fn waited(&mut self) {}
}

/// Tells nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {}

/// How to import.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `source` recorded in the events.
    pub source: String,
    /// Publishes awaiting JetStream's acknowledgement at once (at least 1).
    pub in_flight: usize,
    /// Wait (at most this long) until the stock worker has applied every published row, then
    /// read what became of each; `None` reports published rows as `published`.
    pub wait: Option<Duration>,
    /// An initial load: the events carry the reason `REASON_OPENING_BALANCE`, so the stock
    /// worker sets the levels without raising low/out-of/back-in-stock alerts.
    pub initial_load: bool,
}

/// Imports `sheet`: compares it with Redis, publishes the facts for the rows that differ into
/// the stock input of `topology`, and with [`Options::wait`] reads back what became of them.
pub async fn import(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    topology: &TopologySettings,
    sheet: &Sheet,
    options: &Options,
    progress: &mut dyn Progress,
) -> anyhow::Result<Summary> {
    let now = current(redis, keys, &sheet.rows).await?;
    let Plan {
        publish,
        mut fates,
        invalid,
    } = plan(sheet, &now, options);

    let stock_workers = topology::stock_workers(topology);
    for spec in &stock_workers {
        js.get_stream(spec.stream).await.with_context(|| {
            format!(
                "stream {} is not available (has `stockctl setup` run?)",
                spec.stream
            )
        })?;
    }
    let mut ledger_from = Vec::new();
    for stream in topology::ledger_streams(topology) {
        ledger_from.push((stream, crate::streams::last_sequence(js, stream).await?));
    }
    let dead_from = crate::streams::last_sequence(js, subjects::DEAD_LETTERS).await?;
    let stored = publish_plan(js, sheet, &publish, options.in_flight.max(1), progress).await?;
    for (index, inputs) in &publish {
        let fate = if stored.anew.get(index).copied().unwrap_or(false) {
            Fate::Published(inputs.iter().map(event_id).collect())
        } else {
            Fate::AlreadyStored
        };
        fates.insert(*index, fate);
    }

    let mut outcome_of = HashMap::new();
    let waiting = fates
        .values()
        .filter(|f| matches!(f, Fate::Published(_)))
        .count();
    if let Some(deadline) = options.wait.filter(|_| waiting > 0) {
        progress.waiting(waiting);
        let published: Vec<usize> = fates
            .iter()
            .filter(|(_, f)| matches!(f, Fate::Published(_)))
            .map(|(index, _)| *index)
            .collect();
        let applied =
            wait_until_applied(js, &stock_workers, &stored, &published, deadline, progress).await;
        progress.waited();
        applied.context("the import is published (re-running it is safe), but not yet applied")?;
        outcome_of = outcomes(js, &stock_workers, &ledger_from, dead_from).await?;
        if options.initial_load {
            let skus: std::collections::BTreeSet<&str> = published
                .iter()
                .map(|index| sheet.rows[*index].sku.as_str())
                .collect();
            recompute_channels(js, &sheet.digest, &skus).await?;
            crate::streams::wait_until_stock_caught_up(js, topology, deadline)
                .await
                .context("the channel quantities of the load are published, not yet computed")?;
        }
    }

    let mut summary = Summary {
        rows: sheet.rows.len() + sheet.invalid.len(),
        invalid: sheet.invalid.iter().cloned().chain(invalid).collect(),
        waited: options.wait.is_some(),
        ..Summary::default()
    };
    for (index, fate) in fates {
        match fate {
            Fate::AlreadyAsInFile => summary.unchanged_as_in_file += 1,
            Fate::AlreadyStored => summary.unchanged_duplicate += 1,
            Fate::Published(_) if options.wait.is_none() => summary.published += 1,
            Fate::Published(ids) => {
                let known: Vec<&Result<(), String>> =
                    ids.iter().filter_map(|id| outcome_of.get(id)).collect();
                if let Some(Err(reason)) = known.iter().find(|o| o.is_err()) {
                    summary.invalid.push(Invalid {
                        line: sheet.rows[index].line,
                        reason: format!("dead-lettered by the stock worker: {reason}"),
                    });
                } else if known.is_empty() {
                    // No ledger entry and no dead letter: absorbed as a duplicate.
                    summary.unchanged_duplicate += 1;
                } else {
                    summary.applied += 1;
                }
            }
        }
    }
    summary.invalid.sort_by_key(|i| i.line);
    Ok(summary)
}

/// An initial load's opening balances leave the sales channels alone (the stock worker skips
/// their channel step), so each loaded SKU's quantity of every defined channel is computed
/// once, here, when all its rows are applied: one `ChannelRecompute` per (SKU, channel), its
/// id derived from the file (`imp-<file>-ch-<channel>`), so re-running the load sends nothing
/// new.
async fn recompute_channels(
    js: &jetstream::Context,
    digest: &str,
    skus: &std::collections::BTreeSet<&str>,
) -> anyhow::Result<()> {
    use stockflow_proto::v1::{stock_event::Change, ChannelRecompute, EventMeta, Reason};
    let store = js
        .get_key_value(stockflow_shared::topology::CHANNELS)
        .await?;
    let mut ids = store.keys().await?;
    let mut channels = Vec::new();
    while let Some(id) = ids.next().await {
        let id = id?;
        if let Some(entry) = store.entry(&id).await? {
            if let Some(channel) = stockflow_shared::channels::defined_by(&entry)
                .with_context(|| format!("channel {id:?} in the bucket is not a Channel"))?
            {
                channels.push(channel);
            }
        }
    }
    let mut acks = Vec::new();
    for channel in &channels {
        let event_id = format!("imp-{digest}-ch-{}", channel.id);
        for sku in skus {
            let event = StockEvent {
                meta: Some(EventMeta {
                    event_id: event_id.clone(),
                    source: "stockctl:import".into(),
                    reason: Reason::Policy.into(),
                    ..Default::default()
                }),
                sku: (*sku).to_owned(),
                change: Some(Change::ChannelRecompute(ChannelRecompute {
                    channel: channel.id.clone(),
                    rules_version: channel.rules_version,
                })),
                ..Default::default()
            };
            let publish = PublishMessage::build()
                .payload(event.encode_to_vec().into())
                .message_id(stockflow_proto::msg_id::stock_fact(sku, &event_id));
            acks.push(js.send_publish(subjects::stock_event(sku), publish).await?);
            if acks.len() >= 256 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Waits until each stock-worker consumer's ack floor has passed the events of every row in
/// `rows` (each partition stream has its own sequence and its own consumer), telling
/// `progress` how many rows are applied as the floors move.
async fn wait_until_applied(
    js: &jetstream::Context,
    stock_workers: &[ConsumerSpec],
    stored: &Stored,
    rows: &[usize],
    deadline: Duration,
    progress: &mut dyn Progress,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Per stream: the last sequence of each row, sorted, and its stock-worker consumer.
    let mut waits = Vec::new();
    for spec in stock_workers {
        let mut sequences: Vec<u64> = rows
            .iter()
            .filter_map(|index| stored.row_sequence.get(index))
            .filter(|(stream, _)| stream == spec.stream)
            .map(|(_, sequence)| *sequence)
            .collect();
        if sequences.is_empty() {
            continue;
        }
        sequences.sort_unstable();
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream(spec.stream)
            .await?
            .get_consumer(spec.durable)
            .await
            .map_err(|e| anyhow::anyhow!("no consumer {} on {}: {e}", spec.durable, spec.stream))?;
        waits.push((spec, sequences, consumer));
    }
    loop {
        let mut applied = 0;
        let mut behind = Vec::new();
        for (spec, sequences, consumer) in &mut waits {
            let floor = consumer.info().await?.ack_floor.stream_sequence;
            let done = sequences.partition_point(|sequence| *sequence <= floor);
            applied += done;
            if done < sequences.len() {
                behind.push(format!(
                    "{} on {} is at sequence {floor} of {}",
                    spec.durable,
                    spec.stream,
                    sequences.last().copied().unwrap_or_default()
                ));
            }
        }
        progress.applied(applied);
        if behind.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "{applied} of {} rows applied within {deadline:?} ({}): is the stock worker running?",
            rows.len(),
            behind.join("; ")
        );
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Judges the fact as the stock worker will (the contract's check): what the worker would
/// dead-letter is refused before publishing, with the same reason.
pub fn validate(event: &StockEvent) -> Result<(), String> {
    Event::Stock(event.clone()).check().map_err(|e| e.reason)
}

fn event_id(event: &StockEvent) -> String {
    event
        .meta
        .as_ref()
        .map(|m| m.event_id.clone())
        .unwrap_or_default()
}

type Acked = (
    usize,
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
);

fn note_ack((index, ack): Acked, sheet: &Sheet, stored: &mut Stored) -> anyhow::Result<()> {
    let ack = ack.with_context(|| {
        format!(
            "line {}: JetStream did not store the event (rows before it may be stored; \
             re-running the import is safe)",
            sheet.rows[index].line
        )
    })?;
    let last = stored.last_sequence.entry(ack.stream.clone()).or_default();
    *last = (*last).max(ack.sequence);
    let row = stored.row_sequence.entry(index).or_insert((ack.stream, 0));
    row.1 = row.1.max(ack.sequence);
    let entry = stored.anew.entry(index).or_insert(false);
    *entry |= !ack.duplicate;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_checked_and_named_by_line() {
        let csv = "sku,location,on_hand,threshold,safety_stock\n\
                   A1,s1,10,2,\n\
                   A2,s1,-5,,\n\
                   ,s1,3,,\n\
                   A3,s1,abc,,\n\
                   A1,s1,11,,\n\
                   A4,s1,4\n\
                   A5,s2,0,,1\n";
        let sheet = read_sheet(csv.as_bytes()).expect("readable");
        assert_eq!(sheet.rows.len(), 2);
        assert_eq!(sheet.rows[0].threshold, Some(2));
        assert_eq!(sheet.rows[0].safety_stock, None);
        assert_eq!(sheet.rows[1].line, 8);
        let lines: Vec<u64> = sheet.invalid.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7]);
        assert!(
            sheet.invalid[0].reason.contains("on_hand"),
            "{:?}",
            sheet.invalid
        );
        assert!(sheet.invalid[1].reason.contains("sku"));
        assert!(sheet.invalid[3].reason.contains("line 2"));
        assert!(sheet.invalid[4].reason.contains("fields"));
    }

    #[test]
    fn headers_are_required_and_known() {
        assert!(matches!(
            read_sheet(b"sku,location\nA,b\n"),
            Err(SheetError::Header(_))
        ));
        assert!(matches!(
            read_sheet(b"sku,location,on_hand,colour\n"),
            Err(SheetError::Header(_))
        ));
    }

    #[test]
    fn event_ids_depend_on_the_file_and_the_row() {
        let sheet = read_sheet(b"sku,location,on_hand\nA,s,1\nB,s,1\n").expect("ok");
        let again = read_sheet(b"sku,location,on_hand\nA,s,1\nB,s,1\n").expect("ok");
        let other = read_sheet(b"sku,location,on_hand\nA,s,1\nB,s,2\n").expect("ok");
        let id = |s: &Sheet, i: usize| {
            s.rows[i]
                .count(&s.digest, "t")
                .meta
                .unwrap_or_default()
                .event_id
        };
        assert_eq!(id(&sheet, 0), id(&again, 0));
        assert_ne!(id(&sheet, 0), id(&sheet, 1));
        assert_ne!(id(&sheet, 0), id(&other, 0));
        assert!(validate(&sheet.rows[0].count(&sheet.digest, "t")).is_ok());
    }
}
