//! Bad input ends in DEAD_LETTERS with its reason, its original bytes and headers, while valid
//! events keep flowing.

use prost::Message as _;
use stockflow_proto::subjects::{self, HEADER_DEAD_LETTER_REASON, HEADER_ORIGINAL_SUBJECT};

use crate::world::*;

#[tokio::test]
async fn each_class_of_malformed_input_is_dead_lettered_with_its_reason() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "GOOD";
    let mut missing_id = event("x", sku, "a", received(1));
    missing_id.meta.as_mut().expect("meta").event_id.clear();
    let mut no_change = event("nc", sku, "a", received(1));
    no_change.change = None;
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "not a StockEvent",
            subjects::stock_event(sku),
            b"\xff\xff\xff garbage".to_vec(),
        ),
        (
            "sku is missing",
            "stock.events.x".into(),
            event("e", "", "a", received(1)).encode_to_vec(),
        ),
        (
            "event_id is missing",
            subjects::stock_event(sku),
            missing_id.encode_to_vec(),
        ),
        (
            "quantity must be",
            subjects::stock_event(sku),
            event("z", sku, "a", received(0)).encode_to_vec(),
        ),
        (
            "quantity must be",
            subjects::stock_event(sku),
            event("n", sku, "a", sold(-4)).encode_to_vec(),
        ),
        (
            "no change set",
            subjects::stock_event(sku),
            no_change.encode_to_vec(),
        ),
        (
            "location is longer",
            subjects::stock_event(sku),
            event("l", sku, &"L".repeat(65), received(1)).encode_to_vec(),
        ),
        (
            "sku is 129 bytes",
            subjects::stock_event(&"S".repeat(129)),
            event("s", &"S".repeat(129), "a", received(1)).encode_to_vec(),
        ),
        (
            "belongs on",
            subjects::stock_event("OTHER"),
            event("w", sku, "a", received(1)).encode_to_vec(),
        ),
    ];
    for (i, (_, subject, payload)) in cases.iter().enumerate() {
        world.publish_raw(subject, payload.clone()).await;
        // A valid event after each bad one: the worker keeps going.
        world
            .publish(&event(&format!("ok{i}"), sku, "a", received(1)))
            .await;
        // One case at a time: the dead letters are compared with the cases in order, and the
        // worker handles in-flight inputs concurrently.
        world.wait_stock_idle().await;
    }
    world.wait_on_hand(sku, "a", cases.len() as i64).await;
    world.wait_stock_idle().await;

    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters.len(), cases.len());
    for ((expected_reason, subject, payload), letter) in cases.iter().zip(&letters) {
        let headers = letter.headers.as_ref().expect("headers");
        let reason = headers
            .get(HEADER_DEAD_LETTER_REASON)
            .expect("reason")
            .as_str();
        assert!(
            reason.contains(expected_reason),
            "{reason:?} should mention {expected_reason:?}"
        );
        assert_eq!(
            headers
                .get(HEADER_ORIGINAL_SUBJECT)
                .expect("subject")
                .as_str(),
            subject
        );
        assert_eq!(&letter.payload[..], &payload[..], "original bytes are kept");
        assert!(
            headers.get(subjects::HEADER_ORIGINAL_MSG_ID).is_some(),
            "original headers are kept"
        );
    }
    assert_eq!(world.ledger(sku).await.len(), cases.len());
    worker.shutdown().await;
}

#[tokio::test]
async fn an_event_id_reused_for_a_different_change_is_a_conflict() {
    let world = World::start().await;
    let worker = world.stock_worker();
    world.publish(&event("dup", "LAMP", "a", received(5))).await;
    // Applied before the reuse arrives: two events in flight at once may apply in either order.
    world.wait_on_hand("LAMP", "a", 5).await;
    world
        .publish(&event("dup", "LAMP", "a", received(50)))
        .await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved("LAMP", "a").await, (5, 0));
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters.len(), 1);
    let reason = letters[0]
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_DEAD_LETTER_REASON))
        .expect("reason");
    assert!(reason.as_str().contains("different change"), "{reason:?}");
    worker.shutdown().await;
}

#[tokio::test]
async fn bad_configuration_fails_at_start_naming_the_setting() {
    let world = World::start().await;
    for (var, value) in [
        ("STOCKFLOW_MAX_IN_FLIGHT", "0"),
        ("STOCKFLOW_METRICS_ADDR", "localhost"),
        ("STOCKFLOW_REDIS_URL", "http://nope"),
        ("STOCKFLOW_DEDUP_TTL_SECONDS", "ten"),
        ("STOCKFLOW_LOG_FORMAT", "xml"),
        ("STOCKFLOW_NATS_URL", "garbage"),
        ("STOCKFLOW_ACK_WAIT_SECONDS", "1"),
        ("STOCKFLOW_STARTUP_TIMEOUT_SECONDS", "soon"),
    ] {
        let err = stock_worker::Settings::from_env(&world.env(&[(var, value)]))
            .expect_err("invalid setting");
        assert!(err.to_string().starts_with(var), "{var}: {err}");
    }
}

/// Panics on the payload `boom`; counts the other messages it handles.
struct PanicsOnBoom(std::sync::atomic::AtomicUsize);

impl stockflow_shared::consume::Handler for PanicsOnBoom {
    async fn handle(
        &self,
        delivery: &stockflow_shared::consume::Delivery,
    ) -> Result<stockflow_shared::consume::Handled, stockflow_shared::consume::HandleError> {
        assert_ne!(delivery.payload(), b"boom", "a bug this input triggers");
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(stockflow_shared::consume::Handled {
            event_type: "test",
            outcome: stockflow_shared::consume::Outcome::Applied,
        })
    }
}

#[tokio::test]
async fn an_input_that_makes_the_handler_panic_is_retried_then_dead_lettered() {
    use stockflow_shared::{consume, deadletter::DeadLetters, health::Health, topology};
    let world = World::start().await;
    let health = Health::default();
    let can_process = health.check("redis");
    can_process.set(true);
    let consumer = consume::Consumer {
        js: world.js.clone(),
        spec: topology::STOCK_WORKER,
        dead_letters: DeadLetters::new(world.js.clone()),
        bound: health.check("consumer"),
        can_process,
        settings: consume::ConsumeSettings::default(),
    };
    let handler = std::sync::Arc::new(PanicsOnBoom(Default::default()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(consumer.run(handler.clone(), shutdown.clone()));

    let boom = subjects::stock_event("BOOM");
    world.publish_raw(&boom, b"boom".to_vec()).await;
    for i in 0..3 {
        world
            .publish_raw(
                &subjects::stock_event("FINE"),
                format!("ok{i}").into_bytes(),
            )
            .await;
    }
    world.wait_stock_idle().await;

    assert_eq!(handler.0.load(std::sync::atomic::Ordering::SeqCst), 3);
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters.len(), 1, "only the panicking input");
    let headers = letters[0].headers.as_ref().expect("headers");
    let reason = headers.get(HEADER_DEAD_LETTER_REASON).expect("reason");
    assert!(
        reason.as_str().contains("panicked on delivery 3"),
        "{reason:?}"
    );
    assert_eq!(
        headers
            .get(HEADER_ORIGINAL_SUBJECT)
            .expect("subject")
            .as_str(),
        boom
    );
    assert_eq!(&letters[0].payload[..], b"boom");
    shutdown.cancel();
    running.await.expect("the loop ends cleanly");
}

/// `stockflow_dead_letters_total{worker, reason}` in this process: its in-process workers share
/// one recorder, so other tests running at the same time may add to it; compare before/after.
pub(crate) fn dead_letters_counted(worker: &str, category: &str) -> u64 {
    let page = stockflow_shared::telemetry::metrics_handle().render();
    page.lines()
        .filter(|line| {
            line.starts_with("stockflow_dead_letters_total{")
                && line.contains(&format!("worker=\"{worker}\""))
                && line.contains(&format!("reason=\"{category}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn unknown_enum_values_and_same_location_transfers_are_dead_lettered_in_their_own_categories()
{
    let world = World::start().await;
    let stock_worker = world.stock_worker();
    let order_worker = world.order_worker();
    let before = [
        dead_letters_counted("stock-worker", "unknown_enum"),
        dead_letters_counted("stock-worker", "same_location"),
        dead_letters_counted("order-worker", "unknown_enum"),
    ];

    let mut unknown_reason = event("enum-1", "ENUM", "wh", received(5));
    unknown_reason.meta.as_mut().expect("meta").reason = 99;
    world.publish(&unknown_reason).await;
    world
        .publish(&event("same-1", "ENUM", "wh", transferred("wh", 1)))
        .await;
    let mut placement = order("enum-2", "o-enum", placed(&[("1", "ENUM", 1, "")], 0));
    placement.meta.as_mut().expect("meta").reason = 42;
    world.publish_order(&placement).await;
    // A valid fact afterwards: the worker keeps going.
    world
        .publish(&event("enum-ok", "ENUM", "wh", received(2)))
        .await;
    world.wait_stock_idle().await;
    world.wait_orders_idle().await;

    assert_eq!(
        world.on_hand_reserved("ENUM", "wh").await,
        (2, 0),
        "only the valid fact is applied, not reason 99 under a guessed reason"
    );
    assert_eq!(world.ledger("ENUM").await.len(), 1);
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| {
            l.headers
                .as_ref()
                .and_then(|h| h.get(HEADER_DEAD_LETTER_REASON))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for expected in [
        "reason 99 is not a value of stockflow.v1.Reason",
        "reason 42 is not a value of stockflow.v1.Reason",
        "to_location equals location",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected:?} in {reasons:?}"
        );
    }
    let after = [
        dead_letters_counted("stock-worker", "unknown_enum"),
        dead_letters_counted("stock-worker", "same_location"),
        dead_letters_counted("order-worker", "unknown_enum"),
    ];
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(a > b, "category {i} counted: {before:?} -> {after:?}");
    }
    stock_worker.shutdown().await;
    order_worker.shutdown().await;
}

#[tokio::test]
async fn a_fact_whose_script_raises_is_retried_then_dead_lettered_and_its_neighbours_flow() {
    use redis::AsyncCommands as _;
    let world = World::start().await;
    // A key of the wrong type: `apply_stock` raises WRONGTYPE on this SKU on every delivery.
    let mut conn = world.redis.connection().await;
    let _: () = conn
        .set(world.keys.stock("BROKEN"), "not a hash")
        .await
        .expect("set");
    let worker = world.stock_worker();
    world
        .publish(&event("broken", "BROKEN", "a", received(1)))
        .await;
    for i in 0..5 {
        world
            .publish(&event(&format!("fine{i}"), "FINE", "a", received(1)))
            .await;
    }
    world.wait_on_hand("FINE", "a", 5).await;
    world.wait_stock_idle().await;

    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters.len(), 1, "only the fact the script raised on");
    let headers = letters[0].headers.as_ref().expect("headers");
    let reason = headers
        .get(HEADER_DEAD_LETTER_REASON)
        .expect("reason")
        .as_str();
    assert!(
        reason.contains("apply_stock raised") && reason.contains("WRONGTYPE"),
        "{reason:?}"
    );
    assert_eq!(
        headers
            .get(HEADER_ORIGINAL_SUBJECT)
            .expect("subject")
            .as_str(),
        subjects::stock_event("BROKEN")
    );
    assert_eq!(world.ledger("FINE").await.len(), 5);
    worker.shutdown().await;
}
