//! Comparing Redis with the ledger (`stockctl reconcile`, the gateway's `GET /v1/reconcile`),
//! and publishing the corrections that bring on-hand levels back to it (`reconcile --fix`).
//!
//! The ledger's sum of `after - before` per (sku, location) is the level (see
//! [`crate::rebuild`]); a level on which Redis holds something else has drifted.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, EventMeta, Reason, StockEvent},
};
use stockflow_shared::{
    keys::Keys,
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
    /// `on_hand` or `reserved`.
    pub field: &'static str,
    /// What the ledger sums to.
    pub ledger: i64,
    /// What Redis holds.
    pub redis: i64,
}

/// What a settled comparison found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The levels that differ, by SKU and location.
    pub drift: Vec<Drift>,
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
    let mut report = Report {
        drift: drift_with(js, redis, keys, progress).await?,
        not_caught_up: Vec::new(),
    };
    if report.drift.is_empty() {
        progress.finished();
        return Ok(report);
    }
    progress.settling();
    report.not_caught_up = wait_for_workers(js, topology, settle).await;
    report.drift = drift_with(js, redis, keys, progress).await?;
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
    let stock = crate::streams::wait_until_stock_caught_up(js, topology, settle).await;
    let orders = crate::streams::wait_until_caught_up(
        js,
        topology::ORDER_WORKER.stream,
        topology::ORDER_WORKER.durable,
        settle,
    )
    .await;
    [stock, orders]
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
    let mut skus: BTreeSet<String> = fold.levels.keys().map(|(sku, _)| sku.clone()).collect();
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
        for (sku, hash) in chunk.iter().zip(hashes) {
            compare(sku, &stored_levels(hash), &fold, &mut out);
        }
        progress.compared(chunk.len() as u64);
    }
    Ok(out)
}

/// On-hand and reserved per location, from a stock hash's `oh:<location>` and `rs:<location>`.
fn stored_levels(hash: BTreeMap<String, i64>) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (field, value) in hash {
        if let Some(location) = field.strip_prefix("oh:") {
            out.entry(location.to_owned()).or_default().0 = value;
        } else if let Some(location) = field.strip_prefix("rs:") {
            out.entry(location.to_owned()).or_default().1 = value;
        }
    }
    out
}

/// Appends to `out` the drift of `sku`'s locations, by location, on-hand before reserved.
fn compare(sku: &str, stored: &BTreeMap<String, (i64, i64)>, fold: &Fold, out: &mut Vec<Drift>) {
    // The ledger's locations of this SKU: one range of the map, sorted by (sku, location).
    let in_ledger = fold
        .levels
        .range((sku.to_owned(), String::new())..)
        .take_while(|((s, _), _)| s == sku)
        .map(|((_, location), totals)| (location, totals));
    let mut locations: BTreeMap<&String, (Totals, (i64, i64))> = BTreeMap::new();
    for (location, totals) in in_ledger {
        locations.entry(location).or_default().0 = *totals;
    }
    for (location, held) in stored {
        locations.entry(location).or_default().1 = *held;
    }
    for (location, (ledger, held)) in locations {
        for (field, ledger, redis) in [
            ("on_hand", ledger.on_hand, held.0),
            ("reserved", ledger.reserved, held.1),
        ] {
            if ledger != redis {
                out.push(Drift {
                    sku: sku.to_owned(),
                    location: location.clone(),
                    field,
                    ledger,
                    redis,
                });
            }
        }
    }
}

/// Publishes one `adjusted` fact per on-hand drift that brings Redis back to the ledger, with
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
        let msg_id = stockflow_proto::msg_id::stock_fact(&d.sku, &event_id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        js.publish_with_headers(
            subjects::stock_event(&event.sku),
            headers,
            event.encode_to_vec().into(),
        )
        .await
        .context("publishing a correction")?
        .await
        .context("storing a correction")?;
        published += 1;
    }
    Ok(published)
}
