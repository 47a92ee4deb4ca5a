//! Failover under load: processing goes on when the node leading a stream dies, and when a
//! Redis primary dies and its replica takes over. What asynchronous Redis replication loses is
//! measured, found by `reconcile`, and repaired by its corrections.

use std::collections::BTreeMap;

use stockflow_cli::rebuild;
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
        .map(|i| fact(&format!("e-{i}"), &sku(i), "wh", received(1)))
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
    // the ledger still has them. Nothing is ever counted twice: Redis can only be behind.
    let mut conn = world.redis_connection().await;
    let drift = rebuild::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    let lost: i64 = drift.iter().map(|d| d.ledger - d.redis).sum();
    println!(
        "asynchronous replication lost {lost} unit(s) over {} level(s)",
        drift.len()
    );
    assert!(drift.iter().all(|d| d.redis < d.ledger), "{drift:?}");
    rebuild::publish_corrections(&world.js, &drift)
        .await
        .expect("corrections");
    world.wait_stock_idle().await;
    assert_eq!(levels(&world).await, model());
    assert!(rebuild::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .is_empty());
    world.redis.start_node(primary);
    for w in workers {
        w.shutdown().await;
    }
}
