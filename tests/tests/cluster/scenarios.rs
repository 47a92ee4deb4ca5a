//! Stock facts, the flash sale, multi-line orders across slots, hold expiry and rebuild, on
//! clusters.

use stockflow_ops::{rebuild, reconcile};
use stockflow_proto::{
    subjects,
    v1::{order_result::Result as Decision, OrderResult, ReleaseReason, StockChanged},
};
use stockflow_tests::{eventually, DEADLINE};

use crate::world::*;

/// SKUs spread over every primary: their hash tags fall in different slots.
fn skus(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("CL-{i}")).collect()
}

/// Run with the replica wait on (`STOCKFLOW_REDIS_WAIT_REPLICAS=1`): every stock change and
/// order step waits for its shard's replica; the other scenarios run without it.
#[tokio::test]
async fn facts_and_multi_slot_orders_are_exact_on_clusters() {
    let world = ClusterWorld::start().await;
    let wait = [("STOCKFLOW_REDIS_WAIT_REPLICAS", "1")];
    let workers = [
        world.stock_worker_with(&wait),
        world.stock_worker_with(&wait),
    ];
    let skus = skus(30);
    for (i, sku) in skus.iter().enumerate() {
        world
            .publish(&event(&format!("r-{i}"), sku, "wh", received(10)))
            .await;
    }
    world.wait_stock_idle().await;
    let orders = [
        world.order_worker_with(&wait),
        world.order_worker_with(&wait),
    ];
    // Ten orders of three lines on three different SKUs; every fifth asks for too much of one
    // line and must leave nothing reserved on the other two.
    for o in 0..10 {
        let (a, b, c) = (&skus[o], &skus[o + 10], &skus[o + 20]);
        let too_much = if o % 5 == 0 { 11 } else { 2 };
        world
            .publish_order(&order(
                &format!("p-{o}"),
                &format!("order-{o}"),
                placed(
                    &[
                        ("1", a, 1, "wh"),
                        ("2", b, 1, "wh"),
                        ("3", c, too_much, "wh"),
                    ],
                    0,
                ),
            ))
            .await;
    }
    world.wait_orders_idle().await;
    let results: Vec<OrderResult> = world
        .read(subjects::ORDER_RESULTS, "orders.results.>")
        .await;
    let confirmed = |o: usize| {
        results.iter().any(|r| {
            r.order_id == format!("order-{o}") && matches!(r.result, Some(Decision::Confirmed(_)))
        })
    };
    for o in 0..10 {
        assert_eq!(confirmed(o), o % 5 != 0, "order-{o}");
        let expect_reserved = |q: i64| if o % 5 == 0 { 0 } else { q };
        assert_eq!(
            world.on_hand_reserved(&skus[o], "wh").await,
            (10, expect_reserved(1))
        );
        assert_eq!(
            world.on_hand_reserved(&skus[o + 20], "wh").await,
            (10, expect_reserved(2))
        );
    }
    let ledger: Vec<StockChanged> = world.read(subjects::STOCK_CHANGES, "stock.changes.>").await;
    assert_eq!(ledger.iter().filter(|e| e.kind == "received").count(), 30);
    for w in orders.into_iter().chain(workers) {
        w.shutdown().await;
    }
}

#[tokio::test]
async fn the_flash_sale_never_oversells_on_clusters() {
    let world = ClusterWorld::start().await;
    let stock = world.stock_worker();
    world
        .publish(&event("drop", "DROP", "wh", received(100)))
        .await;
    world.wait_stock_idle().await;
    let workers = [world.order_worker(), world.order_worker()];
    let placements: Vec<_> = (0..400)
        .map(|i| {
            order(
                &format!("p{i}"),
                &format!("o{i}"),
                placed(&[("1", "DROP", 1, "wh")], 0),
            )
        })
        .collect();
    for chunk in placements.chunks(100) {
        futures::future::join_all(chunk.iter().map(|o| world.publish_order(o))).await;
    }
    world.wait_orders_idle().await;
    let results: Vec<OrderResult> = world
        .read(subjects::ORDER_RESULTS, "orders.results.>")
        .await;
    let confirmed = results
        .iter()
        .filter(|r| matches!(r.result, Some(Decision::Confirmed(_))))
        .count();
    assert_eq!((confirmed, results.len()), (100, 400));
    assert_eq!(world.on_hand_reserved("DROP", "wh").await, (100, 100));
    for w in workers {
        w.shutdown().await;
    }
    stock.shutdown().await;
}

#[tokio::test]
async fn holds_expire_and_a_flushed_cluster_is_rebuilt() {
    let world = ClusterWorld::start().await;
    let (stock, orders) = (world.stock_worker(), world.order_worker());
    let skus = skus(12);
    for (i, sku) in skus.iter().enumerate() {
        world
            .publish(&event(&format!("r-{i}"), sku, "wh", received(5)))
            .await;
    }
    world.wait_stock_idle().await;
    world
        .publish_order(&order(
            "p-short",
            "short-hold",
            placed(&[("1", &skus[0], 2, "wh")], 1),
        ))
        .await;
    world
        .publish_order(&order(
            "p-long",
            "long-hold",
            placed(&[("1", &skus[1], 3, "wh")], 3_600),
        ))
        .await;
    eventually("the short hold expires", DEADLINE, || async {
        let results: Vec<OrderResult> = world
            .read(subjects::ORDER_RESULTS, "orders.results.>")
            .await;
        results
            .iter()
            .any(|r| {
                r.order_id == "short-hold"
                    && matches!(&r.result,
                        Some(Decision::Released(x)) if x.reason == ReleaseReason::Expired as i32)
            })
            .then_some(())
    })
    .await;
    world.wait_orders_idle().await;
    let mut before = Vec::new();
    for sku in &skus {
        before.push(world.on_hand_reserved(sku, "wh").await);
    }
    assert_eq!(before[0], (5, 0));
    assert_eq!(before[1], (5, 3));
    stock.shutdown().await;
    orders.shutdown().await;

    let mut conn = world.redis_connection().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flush every primary");
    assert!(rebuild::is_empty(&mut conn, &world.keys)
        .await
        .expect("scan"));
    let report = rebuild::rebuild(
        &world.js,
        &mut conn,
        &world.keys,
        rebuild::Retention {
            dedup_ttl: std::time::Duration::from_secs(86_400),
            orders: order_worker::DEFAULT_ORDER_RETENTION,
        },
    )
    .await
    .expect("rebuild");
    assert_eq!(report.holds, 1, "{report:?}");
    let mut after = Vec::new();
    for sku in &skus {
        after.push(world.on_hand_reserved(sku, "wh").await);
    }
    assert_eq!(after, before);
    assert!(reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .is_empty());
}
