//! `stockctl rebuild` and `stockctl reconcile`: see [`crate::rebuild`].

use std::time::Duration;

use stockflow_proto::subjects;
use stockflow_shared::{keys::Keys, redis_conn::RedisConnection};

use super::Outcome;
use crate::rebuild;

async fn connect(
    settings: &super::Settings,
) -> anyhow::Result<(async_nats::jetstream::Context, RedisConnection, Keys)> {
    let js = super::jetstream(settings).await?;
    let redis = settings.redis.connect().await?;
    Ok((js, redis, Keys::new(settings.redis.key_prefix.clone())))
}

/// Restores Redis from JetStream; refuses when Redis already holds data.
pub async fn rebuild(settings: &super::Settings, order_retention: Duration) -> anyhow::Result<()> {
    let (js, mut redis, keys) = connect(settings).await?;
    let retention = rebuild::Retention {
        dedup_ttl: settings.dedup_ttl,
        orders: order_retention,
    };
    let report = rebuild::rebuild(&js, &mut redis, &keys, retention).await?;
    crate::outln!(
        "rebuilt from {} ledger entries (~{} bytes each): {} levels, {} policies, {} orders, \
         {} order lines, {} holds scheduled, {} dedup records",
        report.entries,
        report.bytes_per_entry,
        report.locations,
        report.policies,
        report.orders,
        report.lines,
        report.holds,
        report.dedup_records
    );
    Ok(())
}

/// Compares Redis with the ledger; prints the drift, and with `fix` publishes corrections.
pub async fn reconcile(settings: &super::Settings, fix: bool) -> anyhow::Result<Outcome> {
    let (js, mut redis, keys) = connect(settings).await?;
    let mut drift = rebuild::drift(&js, &mut redis, &keys).await?;
    if !drift.is_empty() {
        // An event applied in Redis whose ledger entry is still being stored looks like drift
        // for an instant: look again once the workers have caught up (best effort).
        let stock =
            crate::wait_until_stock_caught_up(&js, &settings.topology, Duration::from_secs(30))
                .await;
        let orders = crate::wait_until_caught_up(
            &js,
            subjects::ORDER_EVENTS,
            "order-worker",
            Duration::from_secs(30),
        )
        .await;
        for caught_up in [stock, orders] {
            if let Err(e) = caught_up {
                eprintln!("stockctl: {e:#}; comparing anyway");
            }
        }
        drift = rebuild::drift(&js, &mut redis, &keys).await?;
    }
    if drift.is_empty() {
        crate::outln!("Redis agrees with the ledger");
        return Ok(Outcome::Done);
    }
    crate::outln!(
        "{:<24} {:<16} {:<9} {:>12} {:>12}",
        "sku",
        "location",
        "field",
        "ledger",
        "redis"
    );
    for d in &drift {
        crate::outln!(
            "{:<24} {:<16} {:<9} {:>12} {:>12}",
            d.sku,
            d.location,
            d.field,
            d.ledger,
            d.redis
        );
    }
    if fix {
        let published = rebuild::publish_corrections(&js, &drift).await?;
        crate::outln!(
            "published {published} correction(s); reserved drift needs `stockctl rebuild`"
        );
    }
    Ok(Outcome::Drift)
}
