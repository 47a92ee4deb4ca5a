//! Every fact type, duplicates, alerts, negative stock, stale counts, health.

use stockflow_proto::v1::{AlertKind, Reason};

use crate::world::*;

#[tokio::test]
async fn every_fact_type_changes_levels_and_writes_one_ledger_entry_each() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "TSHIRT-RED-M";
    world
        .publish(&event("e1", sku, "store-1", received(10)))
        .await;
    world.wait_on_hand(sku, "store-1", 10).await;
    world.publish(&event("e2", sku, "store-1", sold(3))).await;
    world.wait_on_hand(sku, "store-1", 7).await;
    world
        .publish(&event("e3", sku, "store-1", returned(1)))
        .await;
    world.wait_on_hand(sku, "store-1", 8).await;
    world
        .publish(&event("e4", sku, "store-1", adjusted(-2)))
        .await;
    world.wait_on_hand(sku, "store-1", 6).await;
    world
        .publish(&event("e5", sku, "store-1", counted(9, None)))
        .await;
    world.wait_on_hand(sku, "store-1", 9).await;
    world
        .publish(&event("e6", sku, "store-1", transferred("wh-east", 4)))
        .await;
    world.wait_on_hand(sku, "wh-east", 4).await;
    world
        .publish(&event("e7", sku, "store-1", policy(Some(2), Some(1))))
        .await;
    world.wait_stock_idle().await;

    assert_eq!(world.on_hand_reserved(sku, "store-1").await, (5, 0));
    let ledger = world.ledger(sku).await;
    let kinds: Vec<(&str, &str, &str)> = ledger
        .iter()
        .map(|e| {
            (
                e.cause_event_id.as_str(),
                e.kind.as_str(),
                e.location.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("e1", "received", "store-1"),
            ("e2", "sold", "store-1"),
            ("e3", "returned", "store-1"),
            ("e4", "adjusted", "store-1"),
            ("e5", "counted", "store-1"),
            ("e6", "transferred_out", "store-1"),
            ("e6", "transferred_in", "wh-east"),
            ("e7", "policy_set", "store-1"),
        ]
    );
    // Before/after chain: each entry starts where the previous one of its location ended.
    assert_eq!(ledger[1].before, Some(levels(10, 0, 0)));
    assert_eq!(ledger[1].after, Some(levels(7, 0, 0)));
    assert_eq!(ledger[1].reason, Reason::Sold as i32);
    assert_eq!(ledger[1].source, "test:harness");
    assert_eq!(ledger[1].reference, "urn:test:e2");
    assert_eq!(ledger[4].reason, Reason::CycleCount as i32);
    assert_eq!(ledger[7].before, Some(levels(5, 0, 0)));
    assert_eq!(
        ledger[7].after,
        Some(levels(5, 0, 1)),
        "safety stock lowers available"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn the_same_event_twice_with_different_msg_ids_is_applied_once() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "MUG";
    let sale = event("pos-12-0001", sku, "store-12", received(5));
    for _ in 0..3 {
        // World::publish uses a fresh Nats-Msg-Id each time: JetStream stores all three.
        world.publish(&sale).await;
    }
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "store-12").await, (5, 0));
    assert_eq!(world.ledger(sku).await.len(), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn alerts_fire_once_per_crossing_under_concurrent_sales() {
    let world = World::start().await;
    let worker = world.stock_worker_with(&[("STOCKFLOW_MAX_IN_FLIGHT", "64")]);
    let sku = "HOT-SKU";
    world
        .publish(&event("p", sku, "", policy(Some(10), None)))
        .await;
    world.publish(&event("r", sku, "web", received(100))).await;
    world.wait_on_hand(sku, "web", 100).await;
    // The threshold too is in place before the sales (both were in flight at once).
    world.wait_stock_idle().await;
    // 120 single-unit sales at once: crosses low-stock once, out-of-stock once, and goes
    // negative once; sales are never refused because the goods really left.
    let sales: Vec<_> = (0..120)
        .map(|i| event(&format!("s{i}"), sku, "web", sold(1)))
        .collect();
    futures::future::join_all(sales.iter().map(|e| world.publish(e))).await;
    world.wait_on_hand(sku, "web", -20).await;
    world.publish(&event("r2", sku, "web", received(50))).await;
    world.wait_on_hand(sku, "web", 30).await;
    world.wait_stock_idle().await;

    let alerts = world.alerts(sku).await;
    let count = |kind: AlertKind| alerts.iter().filter(|a| a.kind == kind as i32).count();
    assert_eq!(count(AlertKind::LowStock), 1, "{alerts:?}");
    assert_eq!(count(AlertKind::OutOfStock), 1, "{alerts:?}");
    assert_eq!(count(AlertKind::NegativeStock), 1, "{alerts:?}");
    // The first receipt (0 -> 100) and the restock (-20 -> 30) both cross into stock.
    let back: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::BackInStock as i32)
        .map(|a| a.cause_event_id.as_str())
        .collect();
    assert_eq!(back, ["r", "r2"]);
    let low = alerts
        .iter()
        .find(|a| a.kind == AlertKind::LowStock as i32)
        .expect("low");
    assert_eq!(low.threshold, 10);
    assert_eq!(low.levels.expect("levels").available, 10);
    assert_eq!(world.ledger(sku).await.len(), 1 + 1 + 120 + 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_sale_below_zero_is_applied_and_raises_negative_stock() {
    let world = World::start().await;
    let worker = world.stock_worker();
    world
        .publish(&event("r", "CABLE", "store-3", received(1)))
        .await;
    // Applied before the sale: the last ledger entry asserted below is the sale's.
    world.wait_on_hand("CABLE", "store-3", 1).await;
    world
        .publish(&event("s", "CABLE", "store-3", sold(3)))
        .await;
    world.wait_on_hand("CABLE", "store-3", -2).await;
    world.wait_stock_idle().await;
    let alerts = world.alerts("CABLE").await;
    let kinds: Vec<i32> = alerts.iter().map(|a| a.kind).collect();
    assert!(
        kinds.contains(&(AlertKind::NegativeStock as i32)),
        "{kinds:?}"
    );
    let last = world.ledger("CABLE").await.pop().expect("entry");
    assert_eq!(
        last.after,
        Some(levels(-2, 0, 0)),
        "available shows the deficit, signed"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_count_with_a_stale_expectation_changes_nothing_and_says_so() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "SHOE-42";
    // One at a time: the ledger order and the rejection asserted below follow the order facts
    // are applied in, and the worker applies in-flight facts concurrently.
    world.publish(&event("r", sku, "wh", received(10))).await;
    world.wait_on_hand(sku, "wh", 10).await;
    world.publish(&event("s", sku, "wh", sold(2))).await;
    world.wait_on_hand(sku, "wh", 8).await;
    // The counter started when on_hand was 10; a sale happened meanwhile.
    world
        .publish(&event("c-stale", sku, "wh", counted(7, Some(10))))
        .await;
    world.wait_stock_idle().await;
    world
        .publish(&event("c-fresh", sku, "wh", counted(7, Some(8))))
        .await;
    world.wait_on_hand(sku, "wh", 7).await;
    world.wait_stock_idle().await;
    let outcomes = stockflow_tests::read_stream(
        &world.js,
        stockflow_proto::subjects::STOCK_CHANGES,
        &stockflow_proto::subjects::stock_outcome(sku),
    )
    .await;
    assert_eq!(outcomes.len(), 1);
    let rejected = <stockflow_proto::v1::StockEventRejected as prost::Message>::decode(
        outcomes[0].payload.clone(),
    )
    .expect("rejection");
    assert_eq!(rejected.event_id, "c-stale");
    assert_eq!(rejected.location, "wh");
    assert_eq!(
        (rejected.expected_on_hand, rejected.actual_on_hand),
        (10, 8)
    );
    let causes: Vec<String> = world
        .ledger(sku)
        .await
        .into_iter()
        .map(|e| e.cause_event_id)
        .collect();
    assert_eq!(causes, ["r", "s", "c-fresh"]);
    worker.shutdown().await;
}

#[tokio::test]
async fn skus_that_are_not_subject_tokens_round_trip() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "Café crème 250g.v2 *promo*";
    world
        .publish(&event("r", sku, "store-1", received(4)))
        .await;
    world.wait_on_hand(sku, "store-1", 4).await;
    world.wait_stock_idle().await;
    let ledger = world.ledger(sku).await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].sku, sku);
    worker.shutdown().await;
}

#[tokio::test]
async fn health_and_metrics_are_served() {
    let world = World::start().await;
    let settings = stock_worker::Settings::from_env(&world.env(&[])).expect("settings");
    let runtime = stockflow_shared::worker::Service::worker(&settings.worker)
        .redis(&settings.state.redis)
        .start(std::future::pending())
        .await
        .expect("runtime");
    let addr = runtime.metrics_addr;
    let shutdown = runtime.shutdown.clone();
    let book = stockflow_tests::channel_book(&runtime.js).await;
    let handler = stock_worker::StockHandler::new(&runtime, &settings.state, book);
    let task = tokio::spawn(runtime.consume(stockflow_shared::topology::STOCK_WORKER, handler));
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    stockflow_tests::eventually("ready", stockflow_tests::DEADLINE, || async {
        get("/readyz")
            .await
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    world
        .publish(&event("m1", "METRIC", "a", received(1)))
        .await;
    world.wait_on_hand("METRIC", "a", 1).await;
    let metrics = stockflow_tests::eventually("metrics", stockflow_tests::DEADLINE, || async {
        get("/metrics")
            .await
            .filter(|m| m.contains("stockflow_event_latency_seconds_bucket"))
    })
    .await;
    assert!(metrics.contains("stockflow_events_total{"), "{metrics}");
    assert!(metrics.contains("outcome=\"applied\""), "{metrics}");
    assert!(
        metrics.contains("stockflow_redis_script_seconds_bucket"),
        "{metrics}"
    );
    assert!(!metrics.contains("METRIC"), "no SKU in labels");
    assert!(get("/healthz")
        .await
        .expect("healthz")
        .starts_with("HTTP/1.1 200"));

    // Redis gone: not ready; back: ready again, by itself.
    let mut world = world;
    world.redis.stop();
    stockflow_tests::eventually("not ready", stockflow_tests::DEADLINE, || async {
        get("/readyz")
            .await
            .filter(|r| r.starts_with("HTTP/1.1 503") && r.contains("redis"))
    })
    .await;
    world.redis.resume();
    stockflow_tests::eventually("ready again", stockflow_tests::DEADLINE, || async {
        get("/readyz")
            .await
            .filter(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    shutdown.cancel();
    task.await.expect("join").expect("clean stop");
}
