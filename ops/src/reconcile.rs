//! Comparing Redis with the ledger (`stockctl reconcile`, the gateway's `GET /v1/reconcile`),
//! and publishing the corrections that bring on-hand levels back to it (`reconcile --fix`).
//!
//! The ledger's sum of `after - before` per (sku, location) is the level (see
//! [`crate::rebuild`]); a level on which Redis holds something else has drifted.

use std::{collections::HashSet, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, EventMeta, Reason, StockEvent},
};
use stockflow_shared::{keys::Keys, redis_conn::RedisConnection, topology::TopologySettings};

use crate::{rebuild::Fold, Error};

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

/// Compares Redis with the ledger; when they differ, waits (up to `settle` per worker) until the
/// stock and order workers have caught up with their inputs and compares again: an event applied
/// in Redis whose ledger entry is still being stored looks like drift for an instant.
pub async fn settled_drift(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    topology: &TopologySettings,
    settle: Duration,
) -> Result<Report, Error> {
    let mut report = Report {
        drift: drift(js, redis, keys).await?,
        not_caught_up: Vec::new(),
    };
    if report.drift.is_empty() {
        return Ok(report);
    }
    let stock = crate::streams::wait_until_stock_caught_up(js, topology, settle).await;
    let orders =
        crate::streams::wait_until_caught_up(js, subjects::ORDER_EVENTS, "order-worker", settle)
            .await;
    for caught_up in [stock, orders] {
        if let Err(e) = caught_up {
            report.not_caught_up.push(format!("{e:#}"));
        }
    }
    report.drift = drift(js, redis, keys).await?;
    Ok(report)
}

/// Compares Redis levels with the ledger's sums, for every (sku, location) either side knows.
pub async fn drift(
    js: &jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
) -> Result<Vec<Drift>, Error> {
    let fold = Fold::ledger(js).await?;
    let mut skus: HashSet<String> = fold.levels.keys().map(|(sku, _)| sku.clone()).collect();
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
    let mut out = Vec::new();
    let mut skus: Vec<String> = skus.into_iter().collect();
    skus.sort();
    for sku in skus {
        let stored = stockflow_shared::levels::read_levels(redis, keys, &sku).await?;
        let mut locations: Vec<&String> = stored.keys().collect();
        locations.extend(
            fold.levels
                .keys()
                .filter(|(s, _)| *s == sku)
                .map(|(_, l)| l),
        );
        locations.sort();
        locations.dedup();
        for location in locations {
            let ledger = fold
                .levels
                .get(&(sku.clone(), location.clone()))
                .copied()
                .unwrap_or_default();
            let held = stored.get(location).copied().unwrap_or_default();
            for (field, ledger, redis) in [
                ("on_hand", ledger.on_hand, held.on_hand),
                ("reserved", ledger.reserved, held.reserved),
            ] {
                if ledger != redis {
                    out.push(Drift {
                        sku: sku.clone(),
                        location: location.clone(),
                        field,
                        ledger,
                        redis,
                    });
                }
            }
        }
    }
    Ok(out)
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
