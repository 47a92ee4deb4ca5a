//! Dependencies that go away and come back: nothing is dead-lettered, nothing is lost, the
//! worker recovers by itself.

use stockflow_proto::subjects;

use crate::world::*;

#[tokio::test]
async fn events_in_flight_when_redis_goes_down_are_retried_not_dead_lettered() {
    let mut world = World::start().await;
    let worker = world.stock_worker();
    let events: Vec<_> = (0..300)
        .map(|i| event(&format!("e{i}"), "BOLT", "wh", received(1)))
        .collect();
    let publishing = futures::future::join_all(events.iter().map(|e| world.publish(e)));
    publishing.await;
    // Stop Redis while the worker is working through them.
    world.redis.shutdown();
    world.redis.resume();
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved("BOLT", "wh").await, (300, 0));
    assert_eq!(world.ledger("BOLT").await.len(), 300);
    let letters = stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters, 0, "transient failures are never dead-lettered");
    worker.shutdown().await;
}

#[tokio::test]
async fn the_worker_rebinds_after_nats_restarts() {
    let mut world = World::start().await;
    let worker = world.stock_worker();
    world
        .publish(&event("before", "NUT", "wh", received(1)))
        .await;
    world.wait_on_hand("NUT", "wh", 1).await;
    world.nats.restart();
    // The clients reconnect by themselves; publish once the server takes it.
    let after = event("after", "NUT", "wh", received(1));
    stockflow_tests::eventually(
        "publish after restart",
        stockflow_tests::DEADLINE,
        || async { world.try_publish(&after).await.then_some(()) },
    )
    .await;
    world.wait_on_hand("NUT", "wh", 2).await;
    worker.shutdown().await;
}
