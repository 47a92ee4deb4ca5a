//! Input limits, enforced end to end: levels up to the documented ±10^15 are exact (Lua numbers
//! are doubles) and a change beyond is refused; lines per order and units per line at their
//! maximum pass and one more is dead-lettered; a message over NATS `max_payload` is refused at
//! publish, and one just under it that is malformed is still dead-lettered.

use async_nats::jetstream::context::PublishErrorKind;
use prost::Message as _;
use redis::AsyncCommands as _;
use stockflow_proto::{subjects, v1::order_result::Result as Decision};
use stockflow_shared::validate::{MAX_LEVEL, MAX_QUANTITY};
use stockflow_tests::{NatsServer, RedisServer};

use crate::world::*;

/// Sets on_hand of (sku, location) directly: reaching 10^15 by events would take a million.
async fn seed_on_hand(world: &World, sku: &str, location: &str, on_hand: i64) {
    let mut conn = world.redis.connection().await;
    let () = conn
        .hset(world.keys.stock(sku), format!("oh:{location}"), on_hand)
        .await
        .expect("seed on_hand");
}

#[tokio::test]
async fn levels_are_exact_up_to_the_maximum_and_a_change_beyond_is_refused() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "BULK";
    // Odd values near the limit: a float with fewer than 50 mantissa bits would round them.
    seed_on_hand(&world, sku, "top", MAX_LEVEL - MAX_QUANTITY - 7).await;
    seed_on_hand(&world, sku, "bottom", -MAX_LEVEL + 3).await;
    // One at a time: which change goes beyond the limit depends on the order they apply in.
    for (id, location, change) in [
        ("r1", "top", received(MAX_QUANTITY)),
        ("r2", "top", received(7)),
        ("over", "top", received(1)),
        ("s1", "bottom", sold(3)),
        ("under", "bottom", sold(1)),
    ] {
        world.publish(&event(id, sku, location, change)).await;
        world.wait_stock_idle().await;
    }
    // A transfer into a full location is refused whole: the source keeps its units too.
    seed_on_hand(&world, sku, "mid", 10).await;
    for (id, change) in [("t1", transferred("top", 5)), ("a1", adjusted(-1))] {
        world.publish(&event(id, sku, "mid", change)).await;
        world.wait_stock_idle().await;
    }

    assert_eq!(world.on_hand_reserved(sku, "top").await, (MAX_LEVEL, 0));
    assert_eq!(world.on_hand_reserved(sku, "bottom").await, (-MAX_LEVEL, 0));
    assert_eq!(world.on_hand_reserved(sku, "mid").await, (9, 0));
    let after: Vec<(String, i64, i64)> = world
        .ledger(sku)
        .await
        .iter()
        .map(|entry| {
            let levels = entry.after.unwrap_or_default();
            (entry.location.clone(), levels.on_hand, levels.available)
        })
        .collect();
    assert_eq!(
        after,
        vec![
            ("top".into(), MAX_LEVEL - 7, MAX_LEVEL - 7),
            ("top".into(), MAX_LEVEL, MAX_LEVEL),
            ("bottom".into(), -MAX_LEVEL, -MAX_LEVEL),
            ("mid".into(), 9, 9),
        ],
        "every level in the ledger is exact"
    );
    let reasons = world.dead_letter_reasons().await;
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for reason in &reasons {
        assert!(reason.contains("beyond ±10^15"), "{reason}");
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn an_order_of_the_most_lines_and_units_is_placed_and_one_more_is_dead_lettered() {
    use order_worker::command::{MAX_LINES, MAX_LINE_QUANTITY};
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let skus: Vec<String> = (0..=MAX_LINES).map(|i| format!("PART-{i}")).collect();
    for sku in &skus {
        world
            .publish(&event(
                &format!("in-{sku}"),
                sku,
                "wh",
                received(MAX_LINE_QUANTITY),
            ))
            .await;
    }
    world.wait_stock_idle().await;
    let line_ids: Vec<String> = (0..=MAX_LINES).map(|i| i.to_string()).collect();
    let lines = |n: usize, quantity: i64| -> Vec<(&str, &str, i64, &str)> {
        (0..n)
            .map(|i| (line_ids[i].as_str(), skus[i].as_str(), quantity, "wh"))
            .collect()
    };
    world
        .publish_order(&order("p1", "most-lines", placed(&lines(MAX_LINES, 1), 0)))
        .await;
    world
        .publish_order(&order(
            "p2",
            "too-many",
            placed(&lines(MAX_LINES + 1, 1), 0),
        ))
        .await;
    // Dead-lettered before the other malformed order is published: the reasons are asserted in
    // order, and the worker applies in-flight commands concurrently.
    world.wait_orders_idle().await;
    world
        .publish_order(&order(
            "p3",
            "most-units",
            placed(&[("1", &skus[MAX_LINES], MAX_LINE_QUANTITY, "wh")], 0),
        ))
        .await;
    world
        .publish_order(&order(
            "p4",
            "too-many-units",
            placed(&[("1", &skus[0], MAX_LINE_QUANTITY + 1, "wh")], 0),
        ))
        .await;
    world.wait_orders_idle().await;

    let results = world.order_results().await;
    let confirmed = |id: &str| {
        results
            .iter()
            .filter(|r| r.order_id == id)
            .map(|r| matches!(r.result, Some(Decision::Confirmed(_))))
            .collect::<Vec<_>>()
    };
    assert_eq!(confirmed("most-lines"), [true]);
    assert_eq!(confirmed("most-units"), [true]);
    assert_eq!(
        confirmed("too-many"),
        [false; 0],
        "no decision, a dead letter"
    );
    assert_eq!(confirmed("too-many-units"), [false; 0]);
    assert_eq!(
        world.on_hand_reserved(&skus[MAX_LINES], "wh").await,
        (MAX_LINE_QUANTITY, MAX_LINE_QUANTITY)
    );
    let reasons = world.dead_letter_reasons().await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains(&format!("got {}", MAX_LINES + 1)),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("quantity must be"), "{}", reasons[1]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_message_over_max_payload_is_refused_and_a_malformed_one_under_it_is_dead_lettered() {
    const MAX_PAYLOAD: usize = 16 * 1024;
    let world = World::start_on(
        NatsServer::start_with(&format!("max_payload: {MAX_PAYLOAD}")),
        RedisServer::start(),
        &[],
    )
    .await;
    let worker = world.stock_worker();
    let subject = subjects::stock_event("BIG");

    let error = world
        .js
        .publish(subject.clone(), vec![0_u8; MAX_PAYLOAD + 1].into())
        .await
        .expect_err("over max_payload");
    assert_eq!(error.kind(), PublishErrorKind::MaxPayloadExceeded);

    // Malformed and as large as the server takes: its dead letter carries extra headers, so it
    // may not fit whole, and must still be stored rather than retried forever.
    world
        .publish_raw(&subject, vec![0xff_u8; MAX_PAYLOAD - 200])
        .await;
    // Dead-lettered before the next malformed fact is published: the letters are asserted in
    // order, and the worker handles in-flight facts concurrently.
    world.wait_stock_idle().await;
    // Well-formed protobuf with a field far over its limit.
    let mut oversized = event("big-ref", "BIG", "wh", received(1));
    oversized.meta.as_mut().expect("meta").reference = "r".repeat(MAX_PAYLOAD / 2);
    world.publish_raw(&subject, oversized.encode_to_vec()).await;
    world
        .publish(&event("fine", "BIG", "wh", received(1)))
        .await;
    world.wait_stock_idle().await;

    assert_eq!(world.on_hand_reserved("BIG", "wh").await, (1, 0));
    let reasons = world.dead_letter_reasons().await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("not a StockEvent"), "{}", reasons[0]);
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    let clipped = letters[0]
        .headers
        .as_ref()
        .and_then(|h| h.get(subjects::HEADER_PAYLOAD_TRUNCATED))
        .map(|v| v.as_str().to_owned());
    assert_eq!(clipped, Some((MAX_PAYLOAD - 200).to_string()));
    assert!(letters[0].payload.len() < MAX_PAYLOAD - 200);
    assert!(
        letters[0].payload.iter().all(|b| *b == 0xff),
        "a prefix of the original"
    );
    assert!(
        reasons[1].contains("reference is longer than 512 bytes"),
        "{}",
        reasons[1]
    );
    worker.shutdown().await;
}
