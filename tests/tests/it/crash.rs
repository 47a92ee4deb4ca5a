//! Crashes at the worst moments lose nothing and double-count nothing.

use std::collections::HashSet;

use stockflow_shared::keys::Keys;

use crate::world::*;

#[tokio::test]
async fn a_redelivery_after_the_effect_was_committed_changes_nothing() {
    let world = World::start().await;
    let sku = "DESK";
    let fact = event("w-1", sku, "wh", received(7));
    world.publish(&fact).await;

    // A worker died right after its script ran: Redis has the effect, the ledger and the ack
    // are missing. Reproduce exactly that with the handler's own script.
    let redis = stockflow_shared::connect::RedisSettings::local(&world.redis.url(), "sf")
        .connect()
        .await
        .expect("redis");
    let book = stockflow_tests::channel_book(&world.js).await;
    let handler =
        stock_worker::StockHandler::with(redis, world.js.clone(), Keys::new("sf"), 3600, book);
    let parsed = stock_worker::fact::parse(
        &stockflow_proto::subjects::stock_event(sku),
        &prost::Message::encode_to_vec(&fact),
    )
    .expect("valid");
    assert!(matches!(
        handler.apply(&parsed).await,
        Ok(stock_worker::Applied::New(_))
    ));
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (7, 0));

    // The message is still unacked: a worker now receives it.
    let worker = world.stock_worker();
    world.wait_stock_idle().await;
    assert_eq!(
        world.on_hand_reserved(sku, "wh").await,
        (7, 0),
        "not applied twice"
    );
    let ledger = world.ledger(sku).await;
    assert_eq!(
        ledger.len(),
        1,
        "the missing ledger entry was published, once"
    );
    assert_eq!(ledger[0].after, Some(levels(7, 0, 0)));

    // And again later (e.g. a POS re-sending): still nothing changes, nothing is re-published.
    world.publish(&fact).await;
    world.wait_stock_idle().await;
    assert_eq!(world.ledger(sku).await.len(), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn shutdown_with_events_in_flight_loses_nothing() {
    let world = World::start().await;
    let n = 1500;
    let events: Vec<_> = (0..n)
        .map(|i| {
            event(
                &format!("e{i}"),
                &format!("SKU-{}", i % 7),
                "store",
                received(1),
            )
        })
        .collect();
    futures::future::join_all(events.iter().map(|e| world.publish(e))).await;
    let worker = world.stock_worker();
    // Stop as soon as processing is under way.
    stockflow_tests::wait_for_count(&world.js, "STOCK_CHANGES", "stock.changes.>", 50).await;
    worker.shutdown().await;
    let worker = world.stock_worker();
    world.wait_stock_idle().await;
    worker.shutdown().await;
    assert_all_applied_once(&world, n, 7).await;
}

#[tokio::test]
async fn kill_9_at_random_moments_loses_nothing_and_double_counts_nothing() {
    let world = World::start().await;
    let n = 3000;
    let skus = 11;
    let events: Vec<_> = (0..n)
        .map(|i| {
            event(
                &format!("k{i}"),
                &format!("SKU-{}", i % skus),
                "store",
                received(1),
            )
        })
        .collect();
    futures::future::join_all(events.iter().map(|e| world.publish(e))).await;
    let mut seen = 0;
    for round in 1..=3u64 {
        let mut child = world.stock_worker_process();
        // Kill once it has made progress: mid-batch, between script, publish and ack.
        seen = stockflow_tests::wait_for_count(
            &world.js,
            "STOCK_CHANGES",
            "stock.changes.>",
            (seen + 200).min(n as u64 * round / 4),
        )
        .await;
        child.kill();
    }
    let mut child = world.stock_worker_process();
    world.wait_stock_idle().await;
    child.kill();
    assert_all_applied_once(&world, n, skus).await;
}

/// Every event `0..n` (one unit each, spread over `skus` SKUs) is applied once and has exactly
/// one ledger entry.
async fn assert_all_applied_once(world: &World, n: usize, skus: usize) {
    let mut total = 0;
    for s in 0..skus {
        let sku = format!("SKU-{s}");
        let expected = (0..n).filter(|i| i % skus == s).count() as i64;
        assert_eq!(
            world.on_hand_reserved(&sku, "store").await.0,
            expected,
            "{sku}"
        );
        let ledger = world.ledger(&sku).await;
        let causes: HashSet<_> = ledger.iter().map(|e| e.cause_event_id.clone()).collect();
        assert_eq!(
            causes.len(),
            ledger.len(),
            "{sku}: a ledger entry was written twice"
        );
        assert_eq!(ledger.len() as i64, expected, "{sku}: ledger entries");
        total += ledger.len();
    }
    assert_eq!(total, n);
}
