//! A flash sale through the batched order path: many concurrent single-unit orders for one SKU,
//! and three-line orders that share it, decided in batches by an order worker that is killed
//! (`kill -9`) twice with batches in flight — some reservations applied, none acked.

use std::collections::HashMap;

use stockflow_proto::v1::order_result::Result as Decision;

use crate::world::*;

const STOCK: i64 = 1250;
const SINGLES: usize = 2400;
const TRIPLES: usize = 300;

#[tokio::test]
async fn a_flash_sale_killed_mid_batch_never_oversells_and_decides_each_order_once() {
    let world = World::start().await;
    let stock = world.stock_worker();
    for (i, (sku, units)) in [("HOT", STOCK), ("B", 10_000), ("C", 10_000)]
        .into_iter()
        .enumerate()
    {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(units)))
            .await;
    }
    world.wait_on_hand("C", "wh", 10_000).await;
    // Every ninth order has three lines, the hot SKU's in the middle, so a batch of the hot
    // SKU's slot holds lines of both kinds of order.
    let orders: Vec<_> = (0..SINGLES + TRIPLES)
        .map(|i| {
            let id = format!("f{i}");
            let lines: &[(&str, &str, i64, &str)] = if i % 9 == 0 {
                &[("1", "B", 1, ""), ("2", "HOT", 1, ""), ("3", "C", 2, "")]
            } else {
                &[("1", "HOT", 1, "")]
            };
            order(&format!("p{i}"), &id, placed(lines, 0))
        })
        .collect();
    let triples: Vec<&str> = orders
        .iter()
        .filter(|o| matches!(placed_lines(o), Some(3)))
        .map(|o| o.order_id.as_str())
        .collect();
    assert!(
        triples.len() >= TRIPLES,
        "{} three-line orders",
        triples.len()
    );
    for chunk in orders.chunks(500) {
        futures::future::join_all(chunk.iter().map(|o| world.publish_order(o))).await;
    }
    for target in [300, 1200] {
        let mut child = world.order_worker_process();
        stockflow_tests::wait_for_count(&world.js, "ORDER_RESULTS", "orders.results.>", target)
            .await;
        child.kill();
    }
    let _last = world.order_worker_process();
    world.wait_orders_idle().await;

    // Every order decided exactly once: one decision message each, none twice.
    let results = world.order_results().await;
    let mut decided: HashMap<&str, Vec<bool>> = HashMap::new();
    for result in &results {
        match &result.result {
            Some(Decision::Confirmed(_)) => decided.entry(&result.order_id).or_default().push(true),
            Some(Decision::Rejected(_)) => decided.entry(&result.order_id).or_default().push(false),
            other => panic!("{}: no release was asked for: {other:?}", result.order_id),
        }
    }
    assert_eq!(decided.len(), orders.len(), "every order decided");
    for (order_id, decisions) in &decided {
        assert_eq!(decisions.len(), 1, "{order_id} decided {decisions:?}");
    }
    let confirmed = |id: &str| decided.get(id).is_some_and(|d| d[0]);
    let confirmed_orders = orders.iter().filter(|o| confirmed(&o.order_id)).count();
    let confirmed_triples = triples.iter().filter(|id| confirmed(id)).count() as i64;

    // Zero oversell, and no unit lost: demand exceeds the stock, every unit is sold once.
    let (on_hand, reserved) = world.on_hand_reserved("HOT", "wh").await;
    assert_eq!(on_hand, STOCK);
    assert_eq!(
        confirmed_orders as i64, STOCK,
        "one unit per confirmed order"
    );
    assert_eq!(reserved, STOCK, "reserved = confirmed units");
    // All or nothing: a confirmed three-line order holds all its lines, a rejected one none.
    assert_eq!(
        world.on_hand_reserved("B", "wh").await,
        (10_000, confirmed_triples)
    );
    assert_eq!(
        world.on_hand_reserved("C", "wh").await,
        (10_000, 2 * confirmed_triples)
    );
    // The ledger explains the levels: one reservation per confirmed unit, never negative.
    let ledger = world.ledger("HOT").await;
    let count = |kind: &str| ledger.iter().filter(|e| e.kind == kind).count() as i64;
    assert_eq!(count("reserved") - count("released"), STOCK);
    assert!(
        ledger
            .iter()
            .all(|e| e.after.expect("after").available >= 0),
        "no reservation made available negative"
    );
    stock.shutdown().await;
}

/// How many lines a placement has (`None` for any other command).
fn placed_lines(order: &stockflow_proto::v1::OrderEvent) -> Option<usize> {
    match &order.command {
        Some(stockflow_proto::v1::order_event::Command::Placed(p)) => Some(p.lines.len()),
        _ => None,
    }
}
