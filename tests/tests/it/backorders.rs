//! Backorders and preorders on real servers: each policy (none, against incoming, capped,
//! unlimited), the decision's backordered quantity and expected date, fills in order of
//! placement when stock arrives (receipts, returns, a cancelled order's units), duplicates that
//! change nothing, a cancel that leaves the queue, all-or-nothing across lines, and what a
//! channel lists beyond stock (a preorder listing).

use stockflow_proto::v1::{
    order_event::Command, order_result::Result as Decision, stock_event::Change, Allocation,
    AvailabilityRules, BackorderPolicy, OrderCancelled, OrderResult, PolicySet, StockChanged,
};

use stockflow_ops::reconcile;

use crate::{
    incoming::{expected, receipt},
    world::*,
};

const DAY_1: i64 = 1_800_000_000_000;
const DAY_2: i64 = DAY_1 + 86_400_000;

/// A SKU-wide backorder policy.
fn backorder(policy: BackorderPolicy, limit: Option<i64>) -> Change {
    Change::PolicySet(PolicySet {
        backorder_policy: policy.into(),
        backorder_limit: limit,
        ..PolicySet::default()
    })
}

/// A one-line placement of `quantity` of `sku` (any location).
fn one_line(event_id: &str, order_id: &str, sku: &str, quantity: i64) -> OrderEvent {
    order(event_id, order_id, placed(&[("1", sku, quantity, "")], 0))
}

type OrderEvent = stockflow_proto::v1::OrderEvent;

/// Places `order` and waits for its decision.
async fn decide(world: &World, event: &OrderEvent) -> Decision {
    world.publish_order(event).await;
    let order_id = event.order_id.clone();
    stockflow_tests::eventually(
        &format!("the decision on {order_id}"),
        stockflow_tests::DEADLINE,
        || async {
            world
                .order_results()
                .await
                .into_iter()
                .find(|r: &OrderResult| {
                    r.order_id == order_id
                        && matches!(
                            r.result,
                            Some(Decision::Confirmed(_) | Decision::Rejected(_))
                        )
                })
                .and_then(|r| r.result)
        },
    )
    .await
}

/// The allocations of a confirmation (panics on a rejection).
fn allocations(decision: &Decision) -> Vec<Allocation> {
    match decision {
        Decision::Confirmed(c) => c.lines.clone(),
        other => panic!("expected a confirmation, got {other:?}"),
    }
}

/// (location, quantity, backordered, expected_at_ms) of each allocation.
fn summary(decision: &Decision) -> Vec<(String, i64, i64, i64)> {
    allocations(decision)
        .into_iter()
        .map(|a| {
            (
                a.location,
                a.quantity,
                a.backordered,
                a.backorder_expected_at_ms,
            )
        })
        .collect()
}

fn at(
    location: &str,
    quantity: i64,
    backordered: i64,
    expected_at_ms: i64,
) -> (String, i64, i64, i64) {
    (location.into(), quantity, backordered, expected_at_ms)
}

/// The ledger's fills of `sku`: (order_id, units filled, units still backordered), in the order
/// they were applied (each fill raises the location's reserved units: their order is the apply
/// order, whatever order the entries were stored in).
async fn fills(world: &World, sku: &str) -> Vec<(String, i64, i64)> {
    let mut entries: Vec<StockChanged> = world
        .ledger(sku)
        .await
        .into_iter()
        .filter(|e| e.kind == "backorder_filled")
        .collect();
    entries.sort_by_key(|e| e.after.expect("after").reserved);
    entries
        .into_iter()
        .map(|e| (e.order_id, e.backorder_filled, e.backordered))
        .collect()
}

/// Units backordered at `location` and the lines waiting in the SKU's queue.
async fn waiting(world: &World, sku: &str, location: &str) -> (i64, usize) {
    let mut conn = world.redis.connection().await;
    let units: Option<i64> =
        redis::AsyncCommands::hget(&mut conn, world.keys.stock(sku), format!("bo:{location}"))
            .await
            .expect("hget");
    let queued: usize = redis::AsyncCommands::zcard(&mut conn, world.keys.backorders(sku))
        .await
        .expect("zcard");
    (units.unwrap_or(0), queued)
}

#[tokio::test]
async fn capped_confirms_up_to_the_cap_and_receipts_fill_in_order_of_placement() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "CAP-1";
    world.publish(&event("r0", sku, "wh", received(3))).await;
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::Capped, Some(5)),
        ))
        .await;
    world.wait_on_hand(sku, "wh", 3).await;
    world.wait_stock_idle().await;

    // 3 on hand: 3 reserved at once, 2 backordered (no purchase order: no expected date).
    let first = decide(&world, &one_line("p1", "o1", sku, 5)).await;
    assert_eq!(summary(&first), [at("wh", 3, 2, 0)]);
    // The cap (5) less the 2 backordered leaves 3: 4 is refused, 3 is taken.
    let refused = decide(&world, &one_line("p2", "o2", sku, 4)).await;
    assert!(matches!(refused, Decision::Rejected(_)), "{refused:?}");
    let third = decide(&world, &one_line("p3", "o3", sku, 3)).await;
    assert_eq!(summary(&third), [at("wh", 0, 3, 0)]);
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (3, 3));
    assert_eq!(waiting(&world, sku, "wh").await, (5, 2));
    // The levels show them (what `stockctl stock` and `GET /v1/stock/{sku}` answer).
    let mut conn = world.redis_connection().await;
    let levels = stockflow_shared::levels::read_levels(&mut conn, &world.keys, sku)
        .await
        .expect("levels");
    assert_eq!(levels["wh"].backordered, 5);
    assert_eq!(levels["wh"].available(), 0);

    // 4 arrive: o1 gets its 2, then o3 2 of its 3; one more arrives by a return: o3 is whole.
    world.publish(&event("r1", sku, "wh", received(4))).await;
    world.wait_on_hand(sku, "wh", 7).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (7, 7));
    assert_eq!(waiting(&world, sku, "wh").await, (1, 1));
    // The stored order (what `GET /v1/orders/{id}` shows) holds 2 and waits for 1.
    let mut redis = world.redis_connection().await;
    let stored = order_worker::read_order(&mut redis, &world.keys, "o3")
        .await
        .expect("read")
        .expect("stored");
    let now: Vec<(i64, i64)> = stored
        .allocations()
        .iter()
        .map(|a| (a.quantity, a.backordered))
        .collect();
    assert_eq!(now, [(2, 1)]);
    // A duplicate of the receipt changes nothing.
    world.publish(&event("r1", sku, "wh", received(4))).await;
    world.publish(&event("r2", sku, "wh", returned(1))).await;
    world.wait_on_hand(sku, "wh", 8).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (8, 8));
    assert_eq!(waiting(&world, sku, "wh").await, (0, 0));
    assert_eq!(
        fills(&world, sku).await,
        [
            ("o1".to_owned(), 2, 0),
            ("o3".to_owned(), 2, 1),
            ("o3".to_owned(), 1, 0)
        ]
    );
    // Each fill names its order line and is a reservation in the ledger.
    let ledger = world.ledger(sku).await;
    let fill = ledger
        .iter()
        .find(|e| e.kind == "backorder_filled")
        .expect("a fill");
    assert_eq!(
        (fill.line_id.as_str(), fill.cause_event_id.as_str()),
        ("1", "r1")
    );
    assert_eq!(fill.reason(), stockflow_proto::v1::Reason::Reserved);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn against_incoming_backorders_up_to_the_purchase_orders_with_their_dates() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "PRE-1";
    world
        .publish(&event("e1", sku, "wh", expected("PO-1", 10, DAY_1)))
        .await;
    world
        .publish(&event("e2", sku, "wh", expected("PO-2", 5, DAY_2)))
        .await;
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::AgainstIncoming, None),
        ))
        .await;
    world.wait_stock_idle().await;

    // Nothing on hand: a preorder of 6 waits for PO-1 (day 1) ...
    let first = decide(&world, &one_line("p1", "o1", sku, 6)).await;
    assert_eq!(summary(&first), [at("wh", 0, 6, DAY_1)]);
    // ... 7 more need PO-2 too (day 2) ...
    let second = decide(&world, &one_line("p2", "o2", sku, 7)).await;
    assert_eq!(summary(&second), [at("wh", 0, 7, DAY_2)]);
    // ... and 3 more than the 2 still incoming are refused.
    let refused = decide(&world, &one_line("p3", "o3", sku, 3)).await;
    let Decision::Rejected(rejected) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(rejected.short_lines[0].available, 0);

    // PO-1 arrives: o1 whole, o2 4 of its 7.
    world.publish(&receipt("rc1", sku, "wh", "PO-1", 10)).await;
    world.wait_on_hand(sku, "wh", 10).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (10, 10));
    assert_eq!(waiting(&world, sku, "wh").await, (3, 1));
    assert_eq!(
        fills(&world, sku).await,
        [("o1".to_owned(), 6, 0), ("o2".to_owned(), 4, 3)]
    );
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn without_a_policy_a_short_line_is_rejected_as_before() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "NONE-1";
    world.publish(&event("r0", sku, "wh", received(2))).await;
    world
        .publish(&event("e1", sku, "wh", expected("PO-1", 10, DAY_1)))
        .await;
    world.wait_on_hand(sku, "wh", 2).await;
    let refused = decide(&world, &one_line("p1", "o1", sku, 3)).await;
    assert!(matches!(refused, Decision::Rejected(_)), "{refused:?}");
    // A policy set back to none behaves the same.
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::None, None),
        ))
        .await;
    world.wait_stock_idle().await;
    let refused = decide(&world, &one_line("p2", "o2", sku, 3)).await;
    assert!(matches!(refused, Decision::Rejected(_)), "{refused:?}");
    // A covered line carries no backorder.
    let covered = decide(&world, &one_line("p3", "o3", sku, 2)).await;
    assert_eq!(summary(&covered), [at("wh", 2, 0, 0)]);
    assert_eq!(waiting(&world, sku, "wh").await, (0, 0));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_line_that_cannot_be_backordered_rejects_the_order_and_nothing_is_held_or_queued() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    world
        .publish(&event("r0", "OPEN-1", "wh", received(1)))
        .await;
    world
        .publish(&event("r1", "SHUT-1", "wh", received(1)))
        .await;
    world
        .publish(&event(
            "pol",
            "OPEN-1",
            "",
            backorder(BackorderPolicy::Unlimited, None),
        ))
        .await;
    world.wait_stock_idle().await;
    let decision = decide(
        &world,
        &order(
            "p1",
            "multi",
            placed(&[("1", "OPEN-1", 5, ""), ("2", "SHUT-1", 2, "")], 0),
        ),
    )
    .await;
    assert!(matches!(decision, Decision::Rejected(_)), "{decision:?}");
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("OPEN-1", "wh").await, (1, 0));
    assert_eq!(waiting(&world, "OPEN-1", "wh").await, (0, 0));
    // Its units stay free for the next order.
    let next = decide(&world, &one_line("p2", "o2", "OPEN-1", 1)).await;
    assert_eq!(summary(&next), [at("wh", 1, 0, 0)]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_backorder_leaves_the_queue_and_its_units_fill_the_next() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "CXL-1";
    world.publish(&event("r0", sku, "wh", received(2))).await;
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::Unlimited, None),
        ))
        .await;
    world.wait_stock_idle().await;
    let first = decide(&world, &one_line("p1", "o1", sku, 4)).await;
    assert_eq!(summary(&first), [at("wh", 2, 2, 0)]);
    let second = decide(&world, &one_line("p2", "o2", sku, 3)).await;
    assert_eq!(summary(&second), [at("wh", 0, 3, 0)]);
    assert_eq!(waiting(&world, sku, "wh").await, (5, 2));

    // o1 is cancelled: it leaves the queue, and the 2 units it held go to o2.
    world
        .publish_order(&order("c1", "o1", Command::Cancelled(OrderCancelled {})))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (2, 2));
    assert_eq!(waiting(&world, sku, "wh").await, (1, 1));
    assert_eq!(fills(&world, sku).await, [("o2".to_owned(), 2, 1)]);
    // A receipt now fills o2 alone.
    world.publish(&event("r1", sku, "wh", received(5))).await;
    world.wait_on_hand(sku, "wh", 7).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (7, 3));
    assert_eq!(waiting(&world, sku, "wh").await, (0, 0));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_preorder_listing_shows_what_the_policy_allows_beyond_stock() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "LIST-1";
    world.publish(&event("r0", sku, "wh", received(2))).await;
    world.wait_on_hand(sku, "wh", 2).await;
    world
        .publish_channel(&channel_set(
            "def-web",
            channel("web", &["wh"], AvailabilityRules::default()),
        ))
        .await;
    world.wait_availability("web", sku, 2).await;
    // Against incoming: stock plus what is incoming, less what is backordered.
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::AgainstIncoming, None),
        ))
        .await;
    world
        .publish(&event("e1", sku, "wh", expected("PO-1", 10, DAY_1)))
        .await;
    world.wait_availability("web", sku, 12).await;
    // A preorder of 5 takes the 2 on hand and 3 of the incoming: 7 left to list.
    let preorder = decide(&world, &one_line("p1", "o1", sku, 5)).await;
    assert_eq!(summary(&preorder), [at("wh", 2, 3, DAY_1)]);
    world.wait_availability("web", sku, 7).await;
    // Capped at 4 (3 of them taken): 1 beyond stock.
    world
        .publish(&event(
            "pol2",
            sku,
            "",
            backorder(BackorderPolicy::Capped, Some(4)),
        ))
        .await;
    world.wait_availability("web", sku, 1).await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn concurrent_receipts_fill_strictly_in_order_of_placement_and_never_twice() {
    let world = World::start().await;
    let stock = [world.stock_worker(), world.stock_worker()];
    let orders = world.order_worker();
    let sku = "RUSH-1";
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::Unlimited, None),
        ))
        .await;
    world.wait_stock_idle().await;
    // Twenty preorders of 3, nothing on hand: each waits whole, in order of placement.
    let placed_orders = 20;
    for i in 0..placed_orders {
        world
            .publish_order(&order(
                &format!("p{i}"),
                &format!("o{i:02}"),
                placed(&[("1", sku, 3, "wh")], 0),
            ))
            .await;
    }
    world.wait_orders_idle().await;
    assert_eq!(waiting(&world, sku, "wh").await, (60, placed_orders));

    // Two producers send 30 receipts of 2 units concurrently, each receipt twice.
    let producer = |name: &'static str| {
        let world = &world;
        async move {
            for i in 0..15 {
                let receipt = event(&format!("{name}-{i}"), sku, "wh", received(2));
                world.publish(&receipt).await;
                world.publish(&receipt).await;
            }
        }
    };
    futures::join!(producer("a"), producer("b"));
    world.wait_on_hand(sku, "wh", 60).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (60, 60));
    assert_eq!(waiting(&world, sku, "wh").await, (0, 0));

    let fills = fills(&world, sku).await;
    // Never filled twice: every order got exactly its 3 units ...
    let total: i64 = fills.iter().map(|(_, units, _)| units).sum();
    assert_eq!(total, 60);
    for i in 0..placed_orders {
        let id = format!("o{i:02}");
        let got: i64 = fills
            .iter()
            .filter(|(o, _, _)| *o == id)
            .map(|(_, units, _)| units)
            .sum();
        assert_eq!(got, 3, "{id}");
    }
    // ... and strictly in order of placement: no order was filled before an earlier one was
    // whole.
    let order_of_fills: Vec<&str> = fills.iter().map(|(o, _, _)| o.as_str()).collect();
    let mut sorted = order_of_fills.clone();
    sorted.sort();
    assert_eq!(order_of_fills, sorted, "{fills:?}");
    for window in fills.windows(2) {
        if window[0].0 != window[1].0 {
            assert_eq!(window[0].2, 0, "{} left before it was whole", window[0].0);
        }
    }
    orders.shutdown().await;
    for worker in stock {
        worker.shutdown().await;
    }
}

/// What Redis holds of a SKU's backorders: the policy hash, the queue (member, score) and, per
/// queued or filled line, its record's backorder fields and parts.
async fn backorder_state(
    world: &World,
    sku: &str,
    lines: &[(&str, &str)],
) -> (
    std::collections::BTreeMap<String, String>,
    Vec<(String, f64)>,
    Option<i64>,
    Vec<Vec<Option<String>>>,
) {
    use redis::AsyncCommands as _;
    let mut conn = world.redis.connection().await;
    let policy: std::collections::BTreeMap<String, String> =
        conn.hgetall(world.keys.policy(sku)).await.expect("policy");
    let queue: Vec<(String, f64)> = conn
        .zrange_withscores(world.keys.backorders(sku), 0, -1)
        .await
        .expect("queue");
    let waiting: Option<i64> = conn.hget(world.keys.stock(sku), "bo:wh").await.expect("bo");
    let mut records = Vec::new();
    for (order_id, line_id) in lines {
        let fields: Vec<Option<String>> = conn
            .hmget(
                world.keys.order_line(sku, order_id, line_id),
                &["state", "bo", "bq", "bol", "bor", "oid", "lid", "parts"],
            )
            .await
            .expect("line record");
        records.push(fields);
    }
    (policy, queue, waiting, records)
}

#[tokio::test]
async fn rebuild_restores_the_policy_the_queue_and_each_backordered_line() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "REB-1";
    world.publish(&event("r0", sku, "wh", received(2))).await;
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::Capped, Some(10)),
        ))
        .await;
    world.wait_stock_idle().await;
    let first = decide(&world, &one_line("p1", "o1", sku, 5)).await;
    assert_eq!(summary(&first), [at("wh", 2, 3, 0)]);
    let second = decide(&world, &one_line("p2", "o2", sku, 4)).await;
    assert_eq!(summary(&second), [at("wh", 0, 4, 0)]);
    // o1 filled whole, o2 with 1 of its 4.
    world.publish(&event("r1", sku, "wh", received(4))).await;
    world.wait_on_hand(sku, "wh", 6).await;
    world.wait_stock_idle().await;
    world.wait_orders_idle().await;
    orders.shutdown().await;
    stock.shutdown().await;
    let lines = [("o1", "1"), ("o2", "1")];
    let before = backorder_state(&world, sku, &lines).await;
    assert_eq!(before.1.len(), 1, "{before:?}");
    assert_eq!(before.2, Some(3));

    let mut conn = world.redis_connection().await;
    // Reconcile checks the backordered units against the ledger's waiting lines.
    assert!(reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .is_empty());
    let _: () = redis::cmd("HSET")
        .arg(world.keys.stock(sku))
        .arg("bo:wh")
        .arg(5)
        .query_async(&mut conn)
        .await
        .expect("hset");
    let drift: Vec<(&str, i64, i64)> = reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .iter()
        .map(|d| (d.field, d.ledger, d.redis))
        .collect();
    assert_eq!(drift, [("backordered", 3, 5)]);
    world.flush_and_rebuild(&mut conn).await;
    let after = backorder_state(&world, sku, &lines).await;
    assert_eq!(after, before, "rebuilt state equals the lost one");
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (6, 6));
    assert!(reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .is_empty());

    // The rebuilt queue goes on: 3 more fill o2, and the cap still holds (10, none waiting).
    let stock = world.stock_worker();
    let orders = world.order_worker();
    world.publish(&event("r2", sku, "wh", received(3))).await;
    world.wait_on_hand(sku, "wh", 9).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (9, 9));
    assert_eq!(waiting(&world, sku, "wh").await, (0, 0));
    let third = decide(&world, &one_line("p3", "o3", sku, 10)).await;
    assert_eq!(summary(&third), [at("wh", 0, 10, 0)]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn each_fill_is_a_signed_backorder_filled_webhook_and_the_confirmation_names_the_backorder() {
    use crate::notify::{fast, notify_worker, subscriptions_file, Receiver};
    let world = World::start().await;
    let receiver = Receiver::start(&[], std::time::Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            {"id": "shop", "url": receiver.url, "events": ["backorder_filled", "order_confirmed"]},
        ]),
    );
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let notify = notify_worker(&world, &fast(&file, &[]));
    let sku = "HOOK-1";
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::Unlimited, None),
        ))
        .await;
    world.wait_stock_idle().await;
    // Nothing anywhere yet: the line names where it waits.
    let decision = decide(
        &world,
        &order("p1", "o1", placed(&[("1", sku, 3, "wh")], 0)),
    )
    .await;
    assert_eq!(summary(&decision), [at("wh", 0, 3, 0)]);
    // One receipt after the other: 2 of the 3, then the last one.
    world.publish(&event("r1", sku, "wh", received(2))).await;
    world.wait_stock_idle().await;
    world.publish(&event("r2", sku, "wh", received(5))).await;
    let received = stockflow_tests::eventually(
        "two fills and a confirmation delivered",
        stockflow_tests::DEADLINE,
        || async {
            let got = receiver.received();
            (got.len() >= 3).then_some(got)
        },
    )
    .await;
    receiver.assert_signatures_verified();
    let mut types: Vec<&str> = received.iter().map(|r| r.event_type.as_str()).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        ["backorder_filled", "backorder_filled", "order_confirmed"]
    );
    let confirmed = received
        .iter()
        .find(|r| r.event_type == "order_confirmed")
        .expect("confirmation");
    assert_eq!(confirmed.body["data"]["lines"][0]["backordered"], 3);
    let mut filled: Vec<(i64, i64)> = received
        .iter()
        .filter(|r| r.event_type == "backorder_filled")
        .map(|r| {
            assert_eq!(r.body["data"]["order_id"], "o1");
            (
                r.body["data"]["filled"].as_i64().expect("filled"),
                r.body["data"]["backordered"].as_i64().expect("backordered"),
            )
        })
        .collect();
    filled.sort_unstable();
    assert_eq!(filled, [(1, 0), (2, 1)]);
    notify.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_backordered_line_ships_only_what_was_filled() {
    use stockflow_proto::v1::{FulfilledLine, OrderFulfilled};
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "SHIP-1";
    world.publish(&event("r0", sku, "wh", received(3))).await;
    world
        .publish(&event(
            "pol",
            sku,
            "",
            backorder(BackorderPolicy::Unlimited, None),
        ))
        .await;
    world.wait_stock_idle().await;
    let decision = decide(&world, &one_line("p1", "o1", sku, 5)).await;
    assert_eq!(summary(&decision), [at("wh", 3, 2, 0)]);
    let fulfil = |id: &str, quantity: i64| {
        order(
            id,
            "o1",
            Command::Fulfilled(OrderFulfilled {
                lines: vec![FulfilledLine {
                    line_id: "1".into(),
                    quantity,
                }],
                last_shipment: false,
            }),
        )
    };
    // All 5 asked for: the 3 held ship, the 2 waiting stay queued.
    world.publish_order(&fulfil("f1", 5)).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (0, 0));
    assert_eq!(waiting(&world, sku, "wh").await, (2, 1));
    // Redis lost and rebuilt, then f1 delivered again: its restored mark still counts the 2
    // waiting units as left, so the line is not complete and stays queued.
    orders.shutdown().await;
    stock.shutdown().await;
    let mut conn = world.redis_connection().await;
    world.flush_and_rebuild(&mut conn).await;
    let (stock, orders) = (world.stock_worker(), world.order_worker());
    world.publish_order(&fulfil("f1", 5)).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (0, 0));
    assert_eq!(waiting(&world, sku, "wh").await, (2, 1));
    // They arrive, are filled, and ship.
    world.publish(&event("r1", sku, "wh", received(2))).await;
    world.wait_on_hand(sku, "wh", 2).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (2, 2));
    world.publish_order(&fulfil("f2", 2)).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (0, 0));
    assert_eq!(waiting(&world, sku, "wh").await, (0, 0));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_channel_sells_under_its_own_backorder_policy_and_a_sku_override_wins() {
    use stockflow_proto::v1::{order_event, ChannelRulesSet, OrderLine, OrderPlaced};
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let sku = "CHAN-1";
    world.publish(&event("r0", sku, "wh", received(2))).await;
    world.wait_on_hand(sku, "wh", 2).await;
    let preorders = AvailabilityRules {
        backorder_policy: BackorderPolicy::Capped.into(),
        backorder_limit: Some(5),
        ..AvailabilityRules::default()
    };
    world
        .publish_channel(&channel_set(
            "def-web",
            channel("web", &["wh"], AvailabilityRules::default()),
        ))
        .await;
    world
        .publish_channel(&channel_set("def-pre", channel("pre", &["wh"], preorders)))
        .await;
    // The SKU has no policy: the web shop lists its stock; the preorder channel 5 beyond it.
    world.wait_availability("web", sku, 2).await;
    world.wait_availability("pre", sku, 7).await;
    let from = |channel: &str, event_id: &str, order_id: &str, quantity: i64| {
        order(
            event_id,
            order_id,
            order_event::Command::Placed(OrderPlaced {
                lines: vec![OrderLine {
                    line_id: "1".into(),
                    sku: sku.into(),
                    quantity,
                    location: String::new(),
                }],
                hold_seconds: 0,
                channel: channel.into(),
            }),
        )
    };
    let preorder = decide(&world, &from("pre", "p1", "o1", 4)).await;
    assert_eq!(summary(&preorder), [at("wh", 2, 2, 0)]);
    let web = decide(&world, &from("web", "p2", "o2", 1)).await;
    assert!(matches!(web, Decision::Rejected(_)), "{web:?}");
    world.wait_availability("pre", sku, 3).await;
    world.wait_availability("web", sku, 0).await;
    // The SKU's override for the preorder channel: nothing beyond stock.
    world
        .publish(&event(
            "ovr",
            sku,
            "",
            Change::ChannelRules(ChannelRulesSet {
                channel: "pre".into(),
                rules: Some(AvailabilityRules {
                    backorder_policy: BackorderPolicy::None.into(),
                    ..AvailabilityRules::default()
                }),
            }),
        ))
        .await;
    world.wait_availability("pre", sku, 0).await;
    world.wait_stock_idle().await;
    world.wait_orders_idle().await;
    let mut conn = world.redis_connection().await;
    let (levels, channels) =
        reconcile::all_drift_with(&world.js, &mut conn, &world.keys, &mut reconcile::Quiet)
            .await
            .expect("drift");
    assert!(
        levels.is_empty() && channels.is_empty(),
        "{levels:?} {channels:?}"
    );
    orders.shutdown().await;
    stock.shutdown().await;
}
