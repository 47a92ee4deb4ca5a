//! Retention of order records: a final order's record expires, a running one's never does, a
//! duplicate of a final order's commands changes nothing, and a rebuild restores final orders with
//! what is left of their retention.

use stockflow_ops::rebuild;
use stockflow_proto::v1::{
    order_event::Command, order_result::Result as Decision, FulfilledLine, OrderCancelled,
    OrderCommitted, OrderFulfilled, ReleaseReason,
};
use stockflow_tests::{eventually, DEADLINE};

use crate::world::*;

/// The lowest settings the workers accept: the retention's floor is the dedup TTL.
const DEDUP_TTL_SECONDS: u64 = 600;
const RETENTION_SECONDS: u64 = 900;
const SHORT_RETENTION: &[(&str, &str)] = &[
    ("STOCKFLOW_DEDUP_TTL_SECONDS", "600"),
    ("STOCKFLOW_ORDER_RETENTION_SECONDS", "900"),
];
/// A test runs well within this, so a record whose clock started during the test has more left.
const TEST_SPAN_MS: i64 = 120_000;

fn cancel(id: &str, order_id: &str) -> stockflow_proto::v1::OrderEvent {
    order(id, order_id, Command::Cancelled(OrderCancelled {}))
}

fn commit(id: &str, order_id: &str) -> stockflow_proto::v1::OrderEvent {
    order(id, order_id, Command::Committed(OrderCommitted {}))
}

fn ship_all(id: &str, order_id: &str, quantity: i64) -> stockflow_proto::v1::OrderEvent {
    order(
        id,
        order_id,
        Command::Fulfilled(OrderFulfilled {
            lines: vec![FulfilledLine {
                line_id: "1".into(),
                quantity,
            }],
            last_shipment: true,
        }),
    )
}

/// Milliseconds left before `key` expires: -1 without an expiry, -2 when the key is gone.
async fn pttl(world: &World, key: &str) -> i64 {
    let mut conn = world.redis.connection().await;
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("pttl")
}

/// When `order_id`'s record expires, ms since the Unix epoch, as Redis keeps it (`PEXPIRETIME`):
/// exact, where the test's clock plus a PTTL would be off by however long the round trip took.
async fn deadline(world: &World, order_id: &str) -> i64 {
    let mut conn = world.redis.connection().await;
    redis::cmd("PEXPIRETIME")
        .arg(world.keys.order(order_id))
        .query_async(&mut conn)
        .await
        .expect("pexpiretime")
}

async fn status(world: &World, order_id: &str) -> Option<String> {
    let mut conn = world.redis.connection().await;
    redis::cmd("HGET")
        .arg(world.keys.order(order_id))
        .arg("status")
        .query_async(&mut conn)
        .await
        .expect("hget")
}

/// Asserts the order is final: its record expires within the retention, after each of its line
/// records (which last the dedup TTL), so a late duplicate meets the order, not a bare line.
async fn assert_retained(world: &World, order_id: &str, skus: &[&str]) {
    let left = pttl(world, &world.keys.order(order_id)).await;
    let most = (RETENTION_SECONDS * 1000) as i64;
    assert!(
        (most - TEST_SPAN_MS..=most).contains(&left),
        "order {order_id}: PTTL {left} ms, expected within the {most} ms retention"
    );
    for (i, sku) in skus.iter().enumerate() {
        let line = world.keys.order_line(sku, order_id, &(i + 1).to_string());
        let line_left = pttl(world, &line).await;
        assert!(
            line_left == -2 || (0..=left).contains(&line_left),
            "line {line} of {order_id}: PTTL {line_left} ms, order {left} ms"
        );
        assert!(
            line_left <= (DEDUP_TTL_SECONDS * 1000) as i64,
            "a released line lasts the dedup TTL"
        );
    }
}

async fn assert_kept(world: &World, order_id: &str) {
    assert_eq!(
        pttl(world, &world.keys.order(order_id)).await,
        -1,
        "order {order_id} is not final: its record has no expiry"
    );
}

async fn released(world: &World, order_id: &str, reason: ReleaseReason) {
    eventually(&format!("{order_id} released"), DEADLINE, || async {
        world
            .order_results()
            .await
            .iter()
            .any(|r| {
                r.order_id == order_id
                    && matches!(&r.result,
                            Some(Decision::Released(x)) if x.reason == reason as i32)
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn final_orders_expire_within_the_retention_and_running_ones_never() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("r", "KEG", "wh", received(50))).await;
    world.publish(&event("r2", "TAP", "wh", received(50))).await;
    world.wait_on_hand("KEG", "wh", 50).await;
    world.wait_on_hand("TAP", "wh", 50).await;
    let orders = world.order_worker_with(SHORT_RETENTION);

    // Commands that come before their placement: remembered for the retention only.
    world.publish_order(&cancel("c-early", "early")).await;
    world
        .publish_order(&commit("k-first", "first-commit"))
        .await;
    world.wait_orders_idle().await;
    for orphan in ["early", "first-commit"] {
        let left = pttl(&world, &world.keys.order(orphan)).await;
        assert!(left > 0, "{orphan}: a bare command record expires ({left})");
    }

    let running = [
        order("p1", "running", placed(&[("1", "KEG", 1, "")], 3_600)),
        order("p2", "paid", placed(&[("1", "KEG", 1, "")], 3_600)),
        commit("k2", "paid"),
        order("p3", "first-commit", placed(&[("1", "KEG", 1, "")], 3_600)),
        order(
            "p4",
            "gone",
            placed(&[("1", "KEG", 2, ""), ("2", "TAP", 1, "")], 0),
        ),
        order("p5", "shipped", placed(&[("1", "KEG", 3, "")], 0)),
        commit("k5", "shipped"),
        order(
            "p6",
            "short",
            placed(&[("1", "KEG", 1, ""), ("2", "TAP", 500, "")], 0),
        ),
        order("p7", "lapsed", placed(&[("1", "TAP", 2, "")], 1)),
        order("p8", "early", placed(&[("1", "KEG", 4, "")], 0)),
    ];
    for command in &running {
        world.publish_order(command).await;
    }
    world.wait_orders_idle().await;
    world.publish_order(&cancel("c4", "gone")).await;
    world.publish_order(&ship_all("f5", "shipped", 2)).await;
    released(&world, "lapsed", ReleaseReason::Expired).await;
    world.wait_orders_idle().await;

    let expected = [
        ("running", "confirmed"),
        ("paid", "confirmed"),
        ("first-commit", "confirmed"),
        ("gone", "cancelled"),
        ("shipped", "fulfilled"),
        ("short", "rejected"),
        ("lapsed", "expired"),
        ("early", "cancelled"),
    ];
    for (order_id, want) in expected {
        assert_eq!(
            status(&world, order_id).await.as_deref(),
            Some(want),
            "{order_id}"
        );
    }
    // Confirmed, committed or not, may still be fulfilled or cancelled: kept. A placement after
    // a commit takes the bare record's expiry away.
    for order_id in ["running", "paid", "first-commit"] {
        assert_kept(&world, order_id).await;
    }
    assert_retained(&world, "gone", &["KEG", "TAP"]).await;
    assert_retained(&world, "shipped", &["KEG"]).await;
    assert_retained(&world, "short", &["KEG", "TAP"]).await;
    assert_retained(&world, "lapsed", &["TAP"]).await;
    assert_retained(&world, "early", &["KEG"]).await;
    // Nothing is held but the three running orders' units (shipped: 2 of 3 left, 1 released).
    assert_eq!(world.on_hand_reserved("KEG", "wh").await, (48, 3));
    assert_eq!(world.on_hand_reserved("TAP", "wh").await, (50, 0));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn duplicates_of_a_final_orders_commands_change_nothing_and_keep_its_expiry() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("r", "VASE", "wh", received(10))).await;
    world.wait_on_hand("VASE", "wh", 10).await;
    let orders = world.order_worker_with(SHORT_RETENTION);
    let gone = order("p1", "gone", placed(&[("1", "VASE", 2, "")], 0));
    let shipped = order("p2", "shipped", placed(&[("1", "VASE", 3, "")], 0));
    let short = order("p3", "short", placed(&[("1", "VASE", 99, "")], 0));
    for command in [&gone, &shipped, &short] {
        world.publish_order(command).await;
    }
    world.wait_orders_idle().await;
    world.publish_order(&cancel("c1", "gone")).await;
    world.publish_order(&ship_all("f2", "shipped", 3)).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("VASE", "wh").await, (7, 0));
    let results = world.order_results().await.len();
    let ledger = world.ledger("VASE").await.len();
    let mut before = Vec::new();
    for order_id in ["gone", "shipped", "short"] {
        assert_retained(&world, order_id, &["VASE"]).await;
        before.push(pttl(&world, &world.keys.order(order_id)).await);
    }

    // Every command again, under new message ids (as after JetStream's duplicate window).
    for command in [
        &gone,
        &shipped,
        &short,
        &cancel("c1", "gone"),
        &cancel("c2", "shipped"),
        &cancel("c3", "short"),
        &commit("k1", "gone"),
        &commit("k3", "short"),
        &ship_all("f2", "shipped", 3),
    ] {
        world.publish_order(command).await;
    }
    world.wait_orders_idle().await;
    assert_eq!(
        world.on_hand_reserved("VASE", "wh").await,
        (7, 0),
        "stock unchanged"
    );
    assert_eq!(
        world.order_results().await.len(),
        results,
        "no second result"
    );
    assert_eq!(
        world.ledger("VASE").await.len(),
        ledger,
        "no second ledger entry"
    );
    for (order_id, was) in ["gone", "shipped", "short"].into_iter().zip(before) {
        let left = pttl(&world, &world.keys.order(order_id)).await;
        assert!(
            (0..=was).contains(&left),
            "{order_id}: the expiry runs on ({was} ms then, {left} ms now)"
        );
    }
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn rebuild_restores_final_orders_with_what_is_left_of_their_retention() {
    let world = World::start().await;
    let (stock, orders) = (
        world.stock_worker(),
        world.order_worker_with(SHORT_RETENTION),
    );
    world.publish(&event("r", "LUTE", "wh", received(10))).await;
    world.wait_on_hand("LUTE", "wh", 10).await;
    for command in [
        order("p1", "held", placed(&[("1", "LUTE", 1, "")], 3_600)),
        order("p2", "gone", placed(&[("1", "LUTE", 2, "")], 0)),
        order("p3", "short", placed(&[("1", "LUTE", 99, "")], 0)),
        cancel("c2", "gone"),
    ] {
        world.publish_order(&command).await;
        world.wait_orders_idle().await;
    }
    let gone_deadline = deadline(&world, "gone").await;
    let short_deadline = deadline(&world, "short").await;
    stock.shutdown().await;
    orders.shutdown().await;

    let mut conn = world.redis_connection().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let retention = rebuild::Retention {
        dedup_ttl: std::time::Duration::from_secs(DEDUP_TTL_SECONDS),
        orders: std::time::Duration::from_secs(RETENTION_SECONDS),
    };
    let report = rebuild::rebuild(&world.js, &mut conn, &world.keys, retention)
        .await
        .expect("rebuild");
    assert_eq!(report.orders, 3, "{report:?}");
    assert_kept(&world, "held").await;
    assert_retained(&world, "gone", &["LUTE"]).await;
    assert_retained(&world, "short", &["LUTE"]).await;
    // Counted from when the order ended, not from the rebuild: a rebuild keeps nothing longer
    // than the lost state would have (the worker started the clock a moment after the result).
    for (order_id, was) in [("gone", gone_deadline), ("short", short_deadline)] {
        let now = deadline(&world, order_id).await;
        assert!(
            (was - 5_000..=was + 50).contains(&now),
            "{order_id}: expires at {now} after the rebuild, at {was} before"
        );
    }

    // A duplicate placement of the restored final order reserves nothing.
    let orders = world.order_worker_with(SHORT_RETENTION);
    world
        .publish_order(&order("p2", "gone", placed(&[("1", "LUTE", 2, "")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("LUTE", "wh").await, (10, 1));
    orders.shutdown().await;
}

#[tokio::test]
async fn a_retention_below_the_dedup_ttl_stops_the_worker_and_stockctl_at_start_up() {
    let world = World::start().await;
    let bad = [
        ("STOCKFLOW_DEDUP_TTL_SECONDS", "3600"),
        ("STOCKFLOW_ORDER_RETENTION_SECONDS", "600"),
    ];
    for (binary, args) in [("order-worker", &[][..]), ("stockctl", &["rebuild"][..])] {
        let mut command = tokio::process::Command::from(world.worker_command(binary, &bad));
        command.args(args).kill_on_drop(true);
        let output = tokio::time::timeout(DEADLINE, command.output())
            .await
            .unwrap_or_else(|_| panic!("{binary} kept running with a bad retention"))
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary} started");
        assert!(
            stderr.contains("STOCKFLOW_ORDER_RETENTION_SECONDS")
                && stderr.contains("STOCKFLOW_DEDUP_TTL_SECONDS"),
            "{binary}: {stderr}"
        );
    }
}
