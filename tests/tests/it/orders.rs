//! Orders: all-or-nothing reservations, never oversell, lifecycle, expiry, crashes.

use stockflow_proto::v1::{
    order_event::Command, order_result::Result as Decision, FulfilledLine, OrderCancelled,
    OrderCommitted, OrderFulfilled, ReleaseReason,
};

use crate::world::*;

fn decisions(results: &[stockflow_proto::v1::OrderResult]) -> (usize, usize, usize) {
    let confirmed = results
        .iter()
        .filter(|r| matches!(r.result, Some(Decision::Confirmed(_))))
        .count();
    let rejected = results
        .iter()
        .filter(|r| matches!(r.result, Some(Decision::Rejected(_))))
        .count();
    let released = results
        .iter()
        .filter(|r| matches!(r.result, Some(Decision::Released(_))))
        .count();
    (confirmed, rejected, released)
}

#[tokio::test]
async fn flash_sale_never_oversells_with_three_workers() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world
        .publish(&event("stock", "DROP-1", "wh", received(1000)))
        .await;
    world.wait_on_hand("DROP-1", "wh", 1000).await;
    let workers = [
        world.order_worker(),
        world.order_worker(),
        world.order_worker(),
    ];
    let orders: Vec<_> = (0..5000)
        .map(|i| {
            order(
                &format!("p{i}"),
                &format!("o{i}"),
                placed(&[("1", "DROP-1", 1, "")], 0),
            )
        })
        .collect();
    for chunk in orders.chunks(500) {
        futures::future::join_all(chunk.iter().map(|o| world.publish_order(o))).await;
    }
    world.wait_orders_idle().await;
    let (confirmed, rejected, _) = decisions(&world.order_results().await);
    assert_eq!((confirmed, rejected), (1000, 4000));
    assert_eq!(world.on_hand_reserved("DROP-1", "wh").await, (1000, 1000));
    let ledger = world.ledger("DROP-1").await;
    assert_eq!(ledger.iter().filter(|e| e.kind == "reserved").count(), 1000);
    assert!(
        ledger
            .iter()
            .all(|e| e.after.expect("after").available >= 0),
        "a reservation made available negative"
    );
    for worker in workers {
        worker.shutdown().await;
    }
    stock.shutdown().await;
}

#[tokio::test]
async fn a_short_line_rejects_the_whole_order_and_leaves_nothing_reserved() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "PEN", "wh", received(10))).await;
    world.publish(&event("b", "INK", "wh", received(1))).await;
    world.wait_on_hand("PEN", "wh", 10).await;
    world.wait_on_hand("INK", "wh", 1).await;
    let orders = world.order_worker();
    world
        .publish_order(&order(
            "p1",
            "multi",
            placed(&[("1", "PEN", 4, ""), ("2", "INK", 2, "")], 0),
        ))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(
        world.on_hand_reserved("PEN", "wh").await,
        (10, 0),
        "compensated"
    );
    assert_eq!(world.on_hand_reserved("INK", "wh").await, (1, 0));
    let results = world.order_results().await;
    let Some(Decision::Rejected(rejected)) = &results[0].result else {
        panic!("{results:?}")
    };
    assert_eq!(rejected.short_lines.len(), 1);
    assert_eq!(
        (
            rejected.short_lines[0].sku.as_str(),
            rejected.short_lines[0].requested,
            rejected.short_lines[0].available
        ),
        ("INK", 2, 1)
    );
    // The ledger shows the reservation taken and given back.
    let kinds: Vec<String> = world
        .ledger("PEN")
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["received", "reserved", "released"]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn duplicates_change_nothing_and_a_conflicting_placement_is_dead_lettered() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "BOOK", "wh", received(10))).await;
    world.wait_on_hand("BOOK", "wh", 10).await;
    let orders = world.order_worker();
    let place = order("p1", "o1", placed(&[("1", "BOOK", 3, "")], 0));
    for _ in 0..3 {
        world.publish_order(&place).await;
    }
    // The placement is applied before the conflicting one arrives: whichever is applied first
    // is the order, and the other is the conflict.
    world.wait_orders_idle().await;
    world
        .publish_order(&order("p1b", "o1", placed(&[("1", "BOOK", 9, "")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("BOOK", "wh").await, (10, 3));
    assert_eq!(decisions(&world.order_results().await), (1, 0, 0));
    let letters =
        stockflow_tests::read_stream(&world.js, "DEAD_LETTERS", "deadletter.ORDER_EVENTS").await;
    assert_eq!(letters.len(), 1);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_cancel_before_the_placement_leaves_nothing_reserved() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "CUP", "wh", received(5))).await;
    world.wait_on_hand("CUP", "wh", 5).await;
    let orders = [world.order_worker(), world.order_worker()];
    // Published in the wrong order, processed by two replicas. The cancel is applied first: a
    // placement applied before it would be confirmed, then released.
    world
        .publish_order(&order("c1", "late", Command::Cancelled(OrderCancelled {})))
        .await;
    world.wait_orders_idle().await;
    world
        .publish_order(&order("p1", "late", placed(&[("1", "CUP", 2, "")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("CUP", "wh").await, (5, 0));
    let (confirmed, _, released) = decisions(&world.order_results().await);
    assert_eq!((confirmed, released), (0, 1));
    for o in orders {
        o.shutdown().await;
    }
    stock.shutdown().await;
}

#[tokio::test]
async fn partial_fulfilment_ships_then_the_last_shipment_releases_the_rest() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "SOCK", "wh", received(20))).await;
    world.wait_on_hand("SOCK", "wh", 20).await;
    let orders = world.order_worker();
    world
        .publish_order(&order("p", "f1", placed(&[("1", "SOCK", 5, "wh")], 0)))
        .await;
    let ship = |id: &str, q: i64, last: bool| {
        order(
            id,
            "f1",
            Command::Fulfilled(OrderFulfilled {
                lines: vec![FulfilledLine {
                    line_id: "1".into(),
                    quantity: q,
                }],
                last_shipment: last,
            }),
        )
    };
    world.publish_order(&ship("s1", 2, false)).await;
    world.publish_order(&ship("s1", 2, false)).await; // a duplicate ships nothing more
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("SOCK", "wh").await, (18, 3));
    world.publish_order(&ship("s2", 1, true)).await;
    world.wait_orders_idle().await;
    assert_eq!(
        world.on_hand_reserved("SOCK", "wh").await,
        (17, 0),
        "remainder released"
    );
    let results = world.order_results().await;
    assert!(matches!(results.last().and_then(|r| r.result.clone()),
        Some(Decision::Released(r)) if r.reason == ReleaseReason::FulfilledRemainder as i32));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn an_uncommitted_hold_expires_once_and_a_committed_one_does_not() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world
        .publish(&event("a", "SEAT", "venue", received(10)))
        .await;
    world.wait_on_hand("SEAT", "venue", 10).await;
    let orders = [world.order_worker(), world.order_worker()];
    world
        .publish_order(&order(
            "p1",
            "abandoned",
            placed(&[("1", "SEAT", 2, "")], 1),
        ))
        .await;
    world
        .publish_order(&order("p2", "paid", placed(&[("1", "SEAT", 3, "")], 1)))
        .await;
    world
        .publish_order(&order("c2", "paid", Command::Committed(OrderCommitted {})))
        .await;
    // A short hold: wait for its release, not for time.
    stockflow_tests::eventually("hold released", stockflow_tests::DEADLINE, || async {
        let results = world.order_results().await;
        results
            .iter()
            .any(|r| {
                r.order_id == "abandoned"
                    && matches!(&r.result,
            Some(Decision::Released(x)) if x.reason == ReleaseReason::Expired as i32)
            })
            .then_some(())
    })
    .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("SEAT", "venue").await, (10, 3));
    let released = world
        .order_results()
        .await
        .into_iter()
        .filter(|r| matches!(r.result, Some(Decision::Released(_))))
        .count();
    assert_eq!(
        released, 1,
        "expired exactly once, the committed order kept its seats"
    );
    for o in orders {
        o.shutdown().await;
    }
    stock.shutdown().await;
}

#[tokio::test]
async fn order_workers_killed_mid_saga_finish_or_compensate() {
    let world = World::start().await;
    let stock = world.stock_worker();
    for (i, sku) in ["A", "B", "C"].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(300)))
            .await;
    }
    world.wait_on_hand("C", "wh", 300).await;
    let n: usize = 600;
    let orders: Vec<_> = (0..n)
        .map(|i| {
            order(
                &format!("p{i}"),
                &format!("m{i}"),
                placed(
                    &[
                        ("1", "A", 1, ""),
                        ("2", "B", 1, ""),
                        ("3", "C", 1 + (i % 2) as i64, ""),
                    ],
                    0,
                ),
            )
        })
        .collect();
    futures::future::join_all(orders.iter().map(|o| world.publish_order(o))).await;
    for target in [60, 200] {
        let mut child = world.order_worker_process();
        stockflow_tests::wait_for_count(&world.js, "ORDER_RESULTS", "orders.results.>", target)
            .await;
        child.kill();
    }
    let _last = world.order_worker_process();
    world.wait_orders_idle().await;
    let results = world.order_results().await;
    let (confirmed, rejected, _) = decisions(&results);
    assert_eq!(confirmed + rejected, n, "one decision per order");
    // Every confirmed order holds all three lines; rejected ones hold nothing.
    let (_, a) = world.on_hand_reserved("A", "wh").await;
    let (_, b) = world.on_hand_reserved("B", "wh").await;
    assert_eq!((a, b), (confirmed as i64, confirmed as i64));
    let c_expected: i64 = results
        .iter()
        .filter_map(|r| match &r.result {
            Some(Decision::Confirmed(c)) => Some(c.lines[2].quantity),
            _ => None,
        })
        .sum();
    assert_eq!(world.on_hand_reserved("C", "wh").await.1, c_expected);
    stock.shutdown().await;
}

#[tokio::test]
async fn lines_without_a_location_follow_the_sku_priority_then_the_global_one() {
    let world = World::start().await;
    let stock = world.stock_worker();
    for (i, (sku, loc, q)) in [
        ("TV", "wh-a", 5),
        ("TV", "wh-b", 5),
        ("TV", "store", 5),
        ("RADIO", "wh-a", 5),
        ("RADIO", "wh-b", 5),
    ]
    .iter()
    .enumerate()
    {
        world
            .publish(&event(&format!("r{i}"), sku, loc, received(*q)))
            .await;
    }
    let mut prio = event("prio", "TV", "", policy(None, None));
    if let Some(stockflow_proto::v1::stock_event::Change::PolicySet(p)) = prio.change.as_mut() {
        p.location_priority = vec!["store".into(), "wh-b".into()];
    }
    world.publish(&prio).await;
    world.wait_stock_idle().await;
    let settings = order_worker::Settings::from_env(
        &world.env(&[("STOCKFLOW_LOCATION_PRIORITY", "wh-b,wh-a")]),
    )
    .expect("settings");
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    let task = tokio::spawn(order_worker::run(settings, async move {
        signal.cancelled().await
    }));
    // TV: its own priority (store first); RADIO: the global one (wh-b first); a line that no
    // single location covers whole is short even though the SKU has enough in total.
    world
        .publish_order(&order("p1", "tv", placed(&[("1", "TV", 4, "")], 0)))
        .await;
    world
        .publish_order(&order("p2", "radio", placed(&[("1", "RADIO", 4, "")], 0)))
        .await;
    world
        .publish_order(&order("p3", "big", placed(&[("1", "RADIO", 6, "")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("TV", "store").await.1, 4);
    assert_eq!(world.on_hand_reserved("RADIO", "wh-b").await.1, 4);
    assert_eq!(
        world.on_hand_reserved("RADIO", "wh-a").await.1,
        0,
        "no split shipments"
    );
    stop.cancel();
    task.await.expect("join").expect("clean stop");
    stock.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_confirmed_order_releases_its_reservations_once() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "LAMP", "wh", received(6))).await;
    world.wait_on_hand("LAMP", "wh", 6).await;
    let orders = world.order_worker();
    world
        .publish_order(&order(
            "p",
            "keep-then-cancel",
            placed(&[("1", "LAMP", 4, "")], 0),
        ))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("LAMP", "wh").await, (6, 4));
    let cancel = order(
        "c",
        "keep-then-cancel",
        Command::Cancelled(OrderCancelled {}),
    );
    world.publish_order(&cancel).await;
    world.publish_order(&cancel).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("LAMP", "wh").await, (6, 0));
    assert_eq!(decisions(&world.order_results().await), (1, 0, 1));
    let kinds: Vec<String> = world
        .ledger("LAMP")
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["received", "reserved", "released"]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_hold_that_falls_due_while_no_worker_runs_expires_after_a_restart() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world
        .publish(&event("a", "BIKE", "shop", received(5)))
        .await;
    world.wait_on_hand("BIKE", "shop", 5).await;
    let orders = world.order_worker();
    world
        .publish_order(&order("p", "cart", placed(&[("1", "BIKE", 2, "")], 5)))
        .await;
    let expires_at_ms =
        stockflow_tests::eventually("confirmed", stockflow_tests::DEADLINE, || async {
            world
                .order_results()
                .await
                .into_iter()
                .find_map(|r| match r.result {
                    Some(Decision::Confirmed(c)) => Some(c.expires_at_ms),
                    _ => None,
                })
        })
        .await;
    orders.shutdown().await;
    assert_eq!(
        decisions(&world.order_results().await),
        (1, 0, 0),
        "not released before due"
    );

    // The hold falls due with no order worker running: the schedule lives in Redis.
    stockflow_tests::eventually("hold due", stockflow_tests::DEADLINE, || async {
        (stockflow_shared::now_ms() > expires_at_ms).then_some(())
    })
    .await;
    assert_eq!(world.on_hand_reserved("BIKE", "shop").await, (5, 2));
    let orders = world.order_worker();
    stockflow_tests::eventually(
        "expired after restart",
        stockflow_tests::DEADLINE,
        || async { (decisions(&world.order_results().await).2 == 1).then_some(()) },
    )
    .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("BIKE", "shop").await, (5, 0));
    let metrics = stockflow_shared::telemetry::metrics_handle().render();
    assert!(
        metrics.contains("stockflow_hold_expiry_lag_seconds_bucket"),
        "expiry lag is measured"
    );
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_release_interrupted_by_a_crash_is_finished_by_the_redelivery() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "DRUM", "wh", received(6))).await;
    world.wait_on_hand("DRUM", "wh", 6).await;
    let orders = world.order_worker();
    world
        .publish_order(&order("p", "crashy", placed(&[("1", "DRUM", 4, "")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("DRUM", "wh").await, (6, 4));
    // A worker moved the order to cancelled and died before releasing its lines.
    let mut redis = world.redis.connection().await;
    let _: () = redis::cmd("HSET")
        .arg(world.keys.order("crashy"))
        .arg(&["status", "cancelled", "from", "confirmed", "cancelled", "1"])
        .query_async(&mut redis)
        .await
        .expect("hset");
    // The cancel is redelivered.
    world
        .publish_order(&order("c", "crashy", Command::Cancelled(OrderCancelled {})))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("DRUM", "wh").await, (6, 0));
    assert_eq!(decisions(&world.order_results().await), (1, 0, 1));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_duplicate_placement_long_after_publishes_no_second_decision() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("a", "HARP", "wh", received(3))).await;
    world.wait_on_hand("HARP", "wh", 3).await;
    let orders = world.order_worker();
    let place = order("p", "late-dup", placed(&[("1", "HARP", 1, "")], 0));
    world.publish_order(&place).await;
    world.wait_orders_idle().await;
    assert_eq!(world.order_results().await.len(), 1);
    // JetStream's duplicate window has passed: recreating the stream forgets every msg id.
    let mut config = world
        .js
        .get_stream("ORDER_RESULTS")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    config.subjects = vec!["orders.results.>".into()];
    world
        .js
        .delete_stream("ORDER_RESULTS")
        .await
        .expect("delete");
    world.js.create_stream(config).await.expect("recreate");
    world.publish_order(&place).await;
    world.wait_orders_idle().await;
    assert!(world.order_results().await.is_empty(), "no second decision");
    assert_eq!(world.on_hand_reserved("HARP", "wh").await, (3, 1));
    orders.shutdown().await;
    stock.shutdown().await;
}
