//! `stockctl rebuild` and `stockctl reconcile`: renders what [`stockflow_ops::rebuild`] and
//! [`stockflow_ops::reconcile`] return.

use std::time::Duration;

use stockflow_shared::{keys::Keys, redis_conn::RedisConnection};

use super::Outcome;
use stockflow_ops::{rebuild, reconcile};

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
    let report = reconcile::settled_drift(
        &js,
        &mut redis,
        &keys,
        &settings.topology,
        Duration::from_secs(30),
    )
    .await?;
    for e in &report.not_caught_up {
        eprintln!("stockctl: {e}; comparing anyway");
    }
    let drift = report.drift;
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
        let published = reconcile::publish_corrections(&js, &drift).await?;
        crate::outln!(
            "published {published} correction(s); reserved drift needs `stockctl rebuild`"
        );
    }
    Ok(Outcome::Drift)
}
