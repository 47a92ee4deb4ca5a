//! Failover under load: processing goes on when the node leading a stream dies, and when a
//! Redis primary dies and its replica takes over. What asynchronous Redis replication loses is
//! measured, found by `reconcile`, and repaired by its corrections.

use std::collections::BTreeMap;

use stockflow_ops::reconcile;
use stockflow_proto::{subjects, v1::StockChanged};

use crate::world::*;

const SKUS: usize = 20;
const EVENTS: usize = 2_000;

fn sku(i: usize) -> String {
    format!("FO-{}", i % SKUS)
}

/// Publishes events `range` (one unit received each), a hundred at a time.
async fn publish_range(world: &ClusterWorld, range: std::ops::Range<usize>) {
    let events: Vec<_> = range
        .map(|i| event(&format!("e-{i}"), &sku(i), "wh", received(1)))
        .collect();
    for chunk in events.chunks(100) {
        futures::future::join_all(chunk.iter().map(|e| world.publish(e))).await;
    }
}

/// The model: every event received one unit.
fn model() -> BTreeMap<String, i64> {
    let mut on_hand = BTreeMap::new();
    for i in 0..EVENTS {
        *on_hand.entry(sku(i)).or_insert(0) += 1;
    }
    on_hand
}

async fn levels(world: &ClusterWorld) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for i in 0..SKUS {
        out.insert(sku(i), world.on_hand_reserved(&sku(i), "wh").await.0);
    }
    out
}

/// One ledger entry per input event, none twice.
async fn assert_one_entry_per_event(world: &ClusterWorld) {
    let ledger: Vec<StockChanged> = world.read(subjects::STOCK_CHANGES, "stock.changes.>").await;
    let mut causes: Vec<&str> = ledger.iter().map(|e| e.cause_event_id.as_str()).collect();
    causes.sort_unstable();
    causes.dedup();
    assert_eq!((ledger.len(), causes.len()), (EVENTS, EVENTS));
}

/// Drift between Redis and the ledger, and the units Redis lacks in all. Nothing is ever counted
/// twice: Redis can only be behind the ledger.
async fn lost_units(world: &ClusterWorld) -> (Vec<reconcile::Drift>, i64) {
    let mut conn = world.redis_connection().await;
    let drift = reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    assert!(drift.iter().all(|d| d.redis < d.ledger), "{drift:?}");
    let lost = drift.iter().map(|d| d.ledger - d.redis).sum();
    (drift, lost)
}

#[tokio::test]
async fn killing_the_stream_leader_loses_nothing() {
    let mut world = ClusterWorld::start().await;
    let workers = [world.stock_worker(), world.stock_worker()];
    publish_range(&world, 0..EVENTS / 2).await;
    let mut stream = world
        .js
        .get_stream(subjects::STOCK_EVENTS)
        .await
        .expect("stream");
    let info = stream.info().await.expect("stream info");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let node = world.nats.index_of(&leader).expect("a node of ours");
    world.nats.stop_node(node);
    println!("killed stream leader {leader} after {} events", EVENTS / 2);
    publish_range(&world, EVENTS / 2..EVENTS).await;
    world.wait_stock_idle().await;
    world.nats.start_node(node);
    assert_eq!(levels(&world).await, model());
    assert_one_entry_per_event(&world).await;
    for w in workers {
        w.shutdown().await;
    }
}

#[tokio::test]
async fn a_promoted_replica_misses_at_most_what_reconcile_repairs() {
    let mut world = ClusterWorld::start().await;
    let workers = [world.stock_worker(), world.stock_worker()];
    publish_range(&world, 0..EVENTS / 2).await;
    // Kill while the workers are writing, not before they start.
    stockflow_tests::eventually(
        "the workers are busy",
        stockflow_tests::DEADLINE,
        || async {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = world
                .js
                .get_stream(subjects::STOCK_EVENTS)
                .await
                .ok()?
                .get_consumer("stock-worker")
                .await
                .ok()?;
            let acked = consumer.info().await.ok()?.ack_floor.stream_sequence;
            (acked >= (EVENTS / 8) as u64).then_some(())
        },
    )
    .await;
    let primary = world.redis.fail_over(&world.keys.stock(&sku(0)));
    println!(
        "killed the Redis primary of {} after {} events",
        sku(0),
        EVENTS / 2
    );
    publish_range(&world, EVENTS / 2..EVENTS).await;
    world.wait_stock_idle().await;
    assert_one_entry_per_event(&world).await;

    // Writes the primary acknowledged but had not yet sent to its replica are gone from Redis;
    // the ledger still has them.
    let (drift, lost) = lost_units(&world).await;
    println!(
        "asynchronous replication lost {lost} unit(s) over {} level(s)",
        drift.len()
    );
    let mut conn = world.redis_connection().await;
    reconcile::publish_corrections(&world.js, &drift)
        .await
        .expect("corrections");
    world.wait_stock_idle().await;
    assert_eq!(levels(&world).await, model());
    assert!(reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .is_empty());
    world.redis.start_node(primary);
    for w in workers {
        w.shutdown().await;
    }
}

/// How a stale replica's promotion ended.
struct StalePromotion {
    /// Units of events whose writes the promoted replica never received.
    unreplicated: i64,
    /// Units the ledger holds and Redis does not, after the workers caught up.
    lost: i64,
}

/// Shuts down the replica of `sku(0)`'s primary, runs the second half of the workload while the
/// primary takes writes alone, then kills the primary and promotes the stale replica. This is
/// asynchronous replication's loss window, held open long enough to be measured exactly: on a
/// healthy cluster it is the replication lag, here it is every write since the replica went down.
async fn promote_a_stale_replica(worker_env: &[(&str, &str)]) -> (ClusterWorld, StalePromotion) {
    let mut world = ClusterWorld::start().await;
    let workers = [
        world.stock_worker_with(worker_env),
        world.stock_worker_with(worker_env),
    ];
    publish_range(&world, 0..EVENTS / 2).await;
    world.wait_stock_idle().await;
    world.redis.wait_until_replicated();

    let key = world.keys.stock(&sku(0));
    let primary = world.redis.primary_for(&key);
    let replica = world.redis.replica_of(primary);
    let on_primary: Vec<String> = (0..SKUS)
        .map(sku)
        .filter(|s| world.redis.primary_for(&world.keys.stock(s)) == primary)
        .collect();
    // Shut down, not killed: the replica keeps exactly what it had applied, so the writes it
    // misses are the window's. (A replica that also loses its own unsynced AOF tail is a
    // second failure, which no replica wait covers.)
    world.redis.shut_down_node(replica);
    publish_range(&world, EVENTS / 2..EVENTS).await;
    let unreplicated = (EVENTS / 2..EVENTS)
        .filter(|&i| on_primary.contains(&sku(i)))
        .count() as i64;

    // Every event has been applied by the primary, whether or not it was acknowledged.
    let model = model();
    let expected: i64 = on_primary.iter().map(|s| model[s]).sum();
    let alone = stockflow_shared::redis_conn::RedisConnection::Single(
        redis::aio::ConnectionManager::new(
            redis::Client::open(world.redis.node_url(primary)).expect("node url"),
        )
        .await
        .expect("connect to the primary"),
    );
    stockflow_tests::eventually(
        "the lone primary applied the second half",
        stockflow_tests::DEADLINE,
        || async {
            let mut alone = alone.clone();
            let mut held = 0;
            for s in &on_primary {
                let levels = stockflow_shared::levels::read_levels(&mut alone, &world.keys, s)
                    .await
                    .ok()?;
                held += levels.get("wh").map_or(0, |l| l.on_hand);
            }
            (held == expected).then_some(())
        },
    )
    .await;

    world.redis.promote_stale_replica(&key, replica);
    println!(
        "promoted the stale replica of {} ({} SKUs); {unreplicated} unit(s) were never replicated",
        sku(0),
        on_primary.len()
    );
    world.wait_stock_idle().await;
    assert_one_entry_per_event(&world).await;
    let (_, lost) = lost_units(&world).await;
    for w in workers {
        w.shutdown().await;
    }
    (world, StalePromotion { unreplicated, lost })
}

#[tokio::test]
async fn without_replica_wait_a_promoted_stale_replica_loses_exactly_its_unreplicated_writes() {
    let (world, promotion) = promote_a_stale_replica(&[]).await;
    println!(
        "without WAIT: lost {} of {} unreplicated unit(s)",
        promotion.lost, promotion.unreplicated
    );
    assert!(promotion.unreplicated > 0);
    assert_eq!(promotion.lost, promotion.unreplicated);
    assert_ne!(levels(&world).await, model());
}

#[tokio::test]
async fn with_replica_wait_a_promoted_stale_replica_loses_nothing() {
    let (world, promotion) = promote_a_stale_replica(&[
        ("STOCKFLOW_REDIS_WAIT_REPLICAS", "1"),
        // Short: while the replica is down every wait runs to this bound.
        ("STOCKFLOW_REDIS_WAIT_TIMEOUT_MILLIS", "20"),
    ])
    .await;
    println!(
        "with WAIT 1: lost {} of {} unreplicated unit(s)",
        promotion.lost, promotion.unreplicated
    );
    assert!(promotion.unreplicated > 0);
    assert_eq!(promotion.lost, 0);
    assert_eq!(levels(&world).await, model());
}
