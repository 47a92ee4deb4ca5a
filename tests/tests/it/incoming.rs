//! Incoming stock on real servers: purchase orders expected, received in part and beyond,
//! cancelled; two purchase orders at one location; a receipt before its `expected`; duplicates;
//! kill -9 of the stock worker in the middle (then reconcile finds no drift); rebuild after
//! FLUSHALL restores incoming, purchase orders and unsellable units, and sums a purchase order's
//! entries stored out of apply order.

use std::collections::BTreeMap;

use stockflow_ops::reconcile;
use stockflow_proto::v1::{
    stock_event::Change, Expected, ExpectedCancelled, StockEvent, UnsellableMoved, UnsellableState,
};
use stockflow_shared::levels::{purchase_orders, read_levels, LocationLevels, OpenPurchaseOrder};

use crate::world::*;

const DAY_1: i64 = 1_800_000_000_000;
const DAY_2: i64 = DAY_1 + 86_400_000;

pub(crate) fn expected(po: &str, quantity: i64, at: i64) -> Change {
    Change::Expected(Expected {
        purchase_order: po.into(),
        quantity,
        expected_at_ms: at,
    })
}

pub(crate) fn cancelled(po: &str, quantity: Option<i64>) -> Change {
    Change::ExpectedCancelled(ExpectedCancelled {
        purchase_order: po.into(),
        quantity,
    })
}

/// A receipt of `quantity` against purchase order `po`.
pub(crate) fn receipt(id: &str, sku: &str, location: &str, po: &str, quantity: i64) -> StockEvent {
    StockEvent {
        purchase_order: po.into(),
        ..event(id, sku, location, received(quantity))
    }
}

pub(crate) fn unsellable(state: UnsellableState, quantity: i64, to_unsellable: bool) -> Change {
    Change::UnsellableMoved(UnsellableMoved {
        state: state.into(),
        quantity,
        to_unsellable,
    })
}

pub(crate) async fn levels_of(world: &World, sku: &str) -> BTreeMap<String, LocationLevels> {
    let mut conn = world.redis.connection().await;
    read_levels(&mut conn, &world.keys, sku)
        .await
        .expect("levels")
}

async fn open_orders(world: &World, sku: &str) -> Vec<OpenPurchaseOrder> {
    let mut conn = world.redis.connection().await;
    let hash: BTreeMap<String, i64> =
        redis::AsyncCommands::hgetall(&mut conn, world.keys.stock(sku))
            .await
            .expect("stock hash");
    purchase_orders(&hash)
}

fn po(location: &str, reference: &str, outstanding: i64, at: i64) -> OpenPurchaseOrder {
    OpenPurchaseOrder {
        location: location.into(),
        reference: reference.into(),
        outstanding,
        expected_at_ms: at,
    }
}

#[tokio::test]
async fn a_purchase_order_is_received_in_part_then_beyond_and_another_is_cancelled() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "PO-SKU";
    let facts = vec![
        event("r0", sku, "wh", received(10)),
        event("x1", sku, "wh", expected("PO-1", 30, DAY_2)),
        event("x2", sku, "wh", expected("PO-2", 20, DAY_1)),
        receipt("r1", sku, "wh", "PO-1", 12),
        receipt("r2", sku, "wh", "PO-1", 25),
        event("c1", sku, "wh", cancelled("PO-1", None)),
        event("c2", sku, "wh", cancelled("PO-2", Some(5))),
    ];
    // One at a time: the ledger's order is checked below, and the worker applies what it holds
    // concurrently.
    for fact in &facts[..3] {
        world.publish(fact).await;
        world.wait_stock_idle().await;
    }
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!(
        (wh.on_hand, wh.incoming, wh.incoming_expected_at_ms),
        (10, 50, DAY_1),
        "two purchase orders; the earliest date"
    );
    assert_eq!(wh.available(), 10, "incoming is not available");

    // A partial receipt leaves the rest of its purchase order incoming, the other untouched.
    world.publish(&facts[3]).await;
    world.wait_on_hand(sku, "wh", 22).await;
    assert_eq!(levels_of(&world, sku).await["wh"].incoming, 38);
    assert_eq!(
        open_orders(&world, sku).await,
        vec![po("wh", "PO-1", 18, DAY_2), po("wh", "PO-2", 20, DAY_1)]
    );

    // Receiving beyond what PO-1 expects: 18 from incoming, 7 straight to on_hand; PO-2 stays.
    world.publish(&facts[4]).await;
    world.wait_on_hand(sku, "wh", 47).await;
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!((wh.incoming, wh.incoming_expected_at_ms), (20, DAY_1));
    assert_eq!(
        open_orders(&world, sku).await,
        vec![po("wh", "PO-2", 20, DAY_1)]
    );

    // Cancelling PO-1 (nothing left) changes nothing; 5 of PO-2 leave incoming.
    world.publish(&facts[5]).await;
    world.wait_stock_idle().await;
    world.publish(&facts[6]).await;
    world.wait_stock_idle().await;
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!((wh.on_hand, wh.incoming, wh.available()), (47, 15, 47));
    assert_eq!(
        open_orders(&world, sku).await,
        vec![po("wh", "PO-2", 15, DAY_1)]
    );

    let ledger = world.ledger(sku).await;
    let entries: Vec<_> = ledger
        .iter()
        .map(|e| {
            let (b, a) = (e.before.unwrap_or_default(), e.after.unwrap_or_default());
            (
                e.kind.as_str(),
                e.purchase_order.as_str(),
                e.purchase_order_outstanding,
                a.on_hand - b.on_hand,
                a.incoming - b.incoming,
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("received", "", 0, 10, 0),
            ("expected", "PO-1", 30, 0, 30),
            ("expected", "PO-2", 20, 0, 20),
            ("received", "PO-1", 18, 12, -12),
            // The over-receipt is recorded: 25 arrived, 18 of them were expected.
            ("received", "PO-1", 0, 25, -18),
            ("expected_cancelled", "PO-1", 0, 0, 0),
            ("expected_cancelled", "PO-2", 15, 0, -5),
        ]
    );
    assert_eq!(ledger[2].purchase_order_expected_at_ms, DAY_1);

    // Every fact again under new message ids: the dedup records absorb them all.
    for fact in &facts {
        world.publish(fact).await;
    }
    world.wait_stock_idle().await;
    assert_eq!(world.ledger(sku).await.len(), ledger.len());
    assert_eq!(levels_of(&world, sku).await["wh"], wh);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_purchase_order_at_one_location_is_not_received_at_another() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "PO-2LOC";
    world
        .publish(&event("x1", sku, "wh", expected("PO-9", 10, DAY_1)))
        .await;
    world.publish(&receipt("r1", sku, "store", "PO-9", 4)).await;
    world.wait_stock_idle().await;
    let levels = levels_of(&world, sku).await;
    assert_eq!(levels["wh"].incoming, 10, "PO-9 is expected at wh");
    assert_eq!((levels["store"].on_hand, levels["store"].incoming), (4, 0));
    worker.shutdown().await;
}

/// Facts of one purchase order do not commute: a receipt that arrives before its `expected`
/// finds nothing outstanding and is a plain receipt (all of it an over-receipt), and the later
/// `expected` stays incoming until it is received again or cancelled. The ledger shows it: the
/// receipt's entry names the order with 0 outstanding and leaves incoming as it was.
#[tokio::test]
async fn a_receipt_before_its_expected_is_a_plain_receipt_and_the_order_stays_open() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "PO-ORPHAN";
    world.publish(&receipt("r1", sku, "wh", "PO-7", 4)).await;
    world.wait_on_hand(sku, "wh", 4).await;
    world
        .publish(&event("x1", sku, "wh", expected("PO-7", 10, DAY_1)))
        .await;
    world.wait_stock_idle().await;
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!((wh.on_hand, wh.incoming), (4, 10));
    assert_eq!(
        open_orders(&world, sku).await,
        vec![po("wh", "PO-7", 10, DAY_1)]
    );
    let ledger = world.ledger(sku).await;
    let receipt = &ledger[0];
    let (b, a) = (
        receipt.before.unwrap_or_default(),
        receipt.after.unwrap_or_default(),
    );
    assert_eq!(
        (
            receipt.kind.as_str(),
            receipt.purchase_order.as_str(),
            receipt.purchase_order_outstanding,
            a.on_hand - b.on_hand,
            a.incoming - b.incoming,
        ),
        ("received", "PO-7", 0, 4, 0)
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn bad_purchase_orders_are_dead_lettered_naming_the_field() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "PO-BAD";
    world
        .publish(&event("b1", sku, "wh", expected("", 10, DAY_1)))
        .await;
    world
        .publish(&event("b2", sku, "wh", expected("PO 1", 10, DAY_1)))
        .await;
    world
        .publish(&event("b3", sku, "wh", expected("PO-1", 10, 0)))
        .await;
    world
        .publish(&StockEvent {
            purchase_order: "PO-1".into(),
            ..event("b4", sku, "wh", sold(1))
        })
        .await;
    let reasons = world.wait_dead_letter_reasons(4).await;
    for needle in [
        "purchase_order is missing",
        "printable ASCII",
        "expected_at_ms",
        "only received names a purchase order",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle} in {reasons:?}"
        );
    }
    assert!(levels_of(&world, sku).await.is_empty());
    worker.shutdown().await;
}

/// Facts on `skus` SKUs, in three phases (a SKU's facts are processed concurrently, so only
/// facts that commute share a phase): per SKU a receipt of 1000; then `n` facts (expected 2 on
/// one of two purchase orders, or one unit damaged, never more than is free); then `n / 2`
/// receipts of one unit against them (never more than expected).
fn crash_workload(skus: usize, n: usize) -> [Vec<StockEvent>; 3] {
    let mut opening = Vec::new();
    let mut first = Vec::new();
    let mut second = Vec::new();
    for s in 0..skus {
        let sku = format!("PK-{s}");
        opening.push(event(&format!("{sku}-r"), &sku, "wh", received(1000)));
        for i in 0..n {
            let id = format!("{sku}-{i}");
            let po = if i % 4 < 2 { "PO-A" } else { "PO-B" };
            first.push(if i % 2 == 0 {
                event(&id, &sku, "wh", expected(po, 2, DAY_1 + i as i64))
            } else {
                event(
                    &id,
                    &sku,
                    "wh",
                    unsellable(UnsellableState::Damaged, 1, true),
                )
            });
        }
        for i in 0..n / 2 {
            let po = if i % 2 == 0 { "PO-A" } else { "PO-B" };
            second.push(receipt(&format!("{sku}-g{i}"), &sku, "wh", po, 1));
        }
    }
    [opening, first, second]
}

#[tokio::test]
async fn kill_9_in_the_middle_leaves_exact_incoming_and_unsellable_levels() {
    let world = World::start().await;
    let (skus, n) = (5, 120);
    let [opening, first, second] = crash_workload(skus, n);
    for fact in &opening {
        world.publish(fact).await;
    }
    let mut child = world.stock_worker_process();
    world.wait_stock_idle().await;
    child.kill();
    let mut seen = opening.len() as u64;
    for batch in [&first, &second] {
        futures::future::join_all(batch.iter().map(|e| world.publish(e))).await;
        // One ledger entry per fact: a worker that got far before its kill leaves less to wait
        // for, never more than the phase has.
        let phase_end = seen + batch.len() as u64;
        for _ in 0..2 {
            let mut child = world.stock_worker_process();
            seen = stockflow_tests::wait_for_count(
                &world.js,
                "STOCK_CHANGES",
                "stock.changes.>",
                (seen + batch.len() as u64 / 4).min(phase_end),
            )
            .await;
            child.kill();
        }
        let mut child = world.stock_worker_process();
        world.wait_stock_idle().await;
        child.kill();
        // One ledger entry per fact: the next phase's kills come after its own progress.
        seen = stockflow_tests::count(&world.js, "STOCK_CHANGES", "stock.changes.>").await;
    }
    for s in 0..skus {
        let sku = format!("PK-{s}");
        let wh = levels_of(&world, &sku).await["wh"];
        // n/2 expected of 2 units, n/2 damaged units, n/2 receipts of one unit.
        let half = n as i64 / 2;
        assert_eq!(
            (wh.on_hand, wh.incoming, wh.damaged),
            (1000 + half, 2 * half - half, half),
            "{sku}"
        );
        assert_eq!(wh.available(), 1000 + half - half, "{sku}");
        let ledger = world.ledger(&sku).await;
        let causes: std::collections::HashSet<_> =
            ledger.iter().map(|e| e.cause_event_id.clone()).collect();
        assert_eq!(
            causes.len(),
            ledger.len(),
            "{sku}: an entry was written twice"
        );
        assert_eq!(ledger.len(), 1 + n + n / 2, "{sku}: ledger entries");
        // n/4 expected of 2 and n/4 receipts of one unit on each purchase order; its date is
        // one of its own facts' (the one applied last, whichever that was).
        let orders = open_orders(&world, &sku).await;
        let summary: Vec<_> = orders
            .iter()
            .map(|o| (o.reference.as_str(), o.outstanding))
            .collect();
        let quarter = n as i64 / 4;
        assert_eq!(
            summary,
            vec![
                ("PO-A", 2 * quarter - quarter),
                ("PO-B", 2 * quarter - quarter)
            ],
            "{sku}"
        );
        for (o, residue) in orders.iter().zip([0, 2]) {
            let i = o.expected_at_ms - DAY_1;
            assert!(
                (0..n as i64).contains(&i) && i % 4 == residue,
                "{sku}: {o:?} carries a date none of its facts gave"
            );
        }
    }
    // The ledger, in whatever order the crashes left its entries, sums to what Redis holds.
    let mut conn = world.redis_connection().await;
    let drift = reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    assert!(drift.is_empty(), "{drift:?}");
}

/// A purchase order's ledger entries stored out of the order they were applied in, as a worker
/// killed between applying a fact and publishing its entry leaves them: `expected PO-1 +10` is
/// applied, the worker dies; a receipt of 4 against PO-1 is applied and published ("6
/// outstanding"); the redelivered `expected` is a duplicate and publishes its stored entry ("10
/// outstanding") last. Rebuild and reconcile sum the entries, as they do the levels.
#[tokio::test]
async fn rebuild_sums_a_purchase_orders_entries_stored_out_of_apply_order() {
    use prost::Message as _;
    use stockflow_proto::v1::{Levels, StockChanged};
    let world = World::start().await;
    let sku = "PO-ORDER";
    let t = 1_700_000_000_000;
    let entry = |cause: &str, kind: &str, po: &str, applied: i64, b: Levels, a: Levels, out, at| {
        StockChanged {
            sku: sku.into(),
            location: "wh".into(),
            cause_event_id: cause.into(),
            kind: kind.into(),
            before: Some(b),
            after: Some(a),
            applied_at_ms: applied,
            purchase_order: po.into(),
            purchase_order_outstanding: out,
            purchase_order_expected_at_ms: at,
            ..Default::default()
        }
    };
    let levels = |on_hand, incoming, at| Levels {
        on_hand,
        available: on_hand,
        incoming,
        incoming_expected_at_ms: at,
        ..Default::default()
    };
    // In the order they are stored; applied_at says the order they were applied in.
    let stored = [
        // PO-1: the receipt (applied second) before the expected (applied first).
        entry(
            "r1",
            "received",
            "PO-1",
            t + 1,
            levels(0, 10, DAY_1),
            levels(4, 6, DAY_1),
            6,
            DAY_1,
        ),
        entry(
            "x1",
            "expected",
            "PO-1",
            t,
            levels(0, 0, 0),
            levels(0, 10, DAY_1),
            10,
            DAY_1,
        ),
        // PO-2 re-dated: DAY_1 then DAY_2 applied, stored the other way round.
        entry(
            "x3",
            "expected",
            "PO-2",
            t + 3,
            levels(4, 8, DAY_1),
            levels(4, 11, DAY_2),
            5,
            DAY_2,
        ),
        entry(
            "x2",
            "expected",
            "PO-2",
            t + 2,
            levels(4, 6, DAY_2),
            levels(4, 8, DAY_1),
            2,
            DAY_1,
        ),
    ];
    for e in &stored {
        world
            .js
            .publish(
                stockflow_proto::subjects::stock_changed(sku),
                e.encode_to_vec().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    let mut conn = world.redis_connection().await;
    // Nothing is in Redis yet: the rebuild reads the ledger alone.
    let report = world.flush_and_rebuild(&mut conn).await;
    assert_eq!(report.model_locations, 1, "{report:?}");
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!(
        (wh.on_hand, wh.incoming, wh.incoming_expected_at_ms),
        (4, 11, DAY_1)
    );
    assert_eq!(
        open_orders(&world, sku).await,
        vec![po("wh", "PO-1", 6, DAY_1), po("wh", "PO-2", 5, DAY_2)],
        "each order's sum, and the date of its entry applied last"
    );
    let drift = reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    assert!(drift.is_empty(), "{drift:?}");
}

#[tokio::test]
async fn rebuild_after_flushall_restores_incoming_purchase_orders_and_unsellable_units() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "PO-RB";
    let facts = vec![
        event("r0", sku, "wh", received(20)),
        event("x1", sku, "wh", expected("PO-1", 30, DAY_2)),
        event("x2", sku, "wh", expected("PO-2", 5, DAY_1)),
        receipt("r1", sku, "wh", "PO-2", 5),
        receipt("r2", sku, "wh", "PO-1", 10),
        event(
            "d1",
            sku,
            "wh",
            unsellable(UnsellableState::Damaged, 3, true),
        ),
        event(
            "q1",
            sku,
            "wh",
            unsellable(UnsellableState::QualityControl, 4, true),
        ),
        event(
            "q2",
            sku,
            "wh",
            unsellable(UnsellableState::QualityControl, 1, false),
        ),
        event("h1", sku, "store", received(2)),
        event(
            "h2",
            sku,
            "store",
            unsellable(UnsellableState::Held, 2, true),
        ),
    ];
    // One at a time: a receipt against a purchase order, or a move into a state, means what it
    // says only after the facts before it (the worker applies what it holds concurrently).
    for fact in &facts {
        world.publish(fact).await;
        world.wait_stock_idle().await;
    }
    let before = (levels_of(&world, sku).await, open_orders(&world, sku).await);
    assert_eq!(before.0["wh"].incoming, 20);
    assert_eq!(
        (before.0["wh"].damaged, before.0["wh"].quality_control),
        (3, 3)
    );
    assert_eq!(before.0["store"].held, 2);
    assert_eq!(before.1, vec![po("wh", "PO-1", 20, DAY_2)]);
    worker.shutdown().await;

    let mut conn = world.redis_connection().await;
    // A drift reconcile sees: a damaged unit and a purchase order's units lost in Redis.
    let _: () = redis::AsyncCommands::hdel(&mut conn, world.keys.stock(sku), "dm:wh")
        .await
        .expect("hdel");
    let _: () = redis::AsyncCommands::hset(&mut conn, world.keys.stock(sku), "po:wh\u{1f}PO-1", 19)
        .await
        .expect("hset");
    let drift = reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    let fields: Vec<(&str, &str, i64, i64)> = drift
        .iter()
        .map(|d| (d.field, d.purchase_order.as_str(), d.ledger, d.redis))
        .collect();
    assert_eq!(
        fields,
        vec![("damaged", "", 3, 0), ("purchase_order", "PO-1", 20, 19)]
    );

    let report = world.flush_and_rebuild(&mut conn).await;
    assert_eq!(report.model_locations, 2, "{report:?}");
    assert_eq!(
        (levels_of(&world, sku).await, open_orders(&world, sku).await),
        before,
        "rebuilt state equals the lost one"
    );
    assert!(reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift")
        .is_empty());

    // The rebuilt state goes on: the rest of PO-1 arrives, the duplicates are absorbed.
    let worker = world.stock_worker();
    for fact in &facts {
        world.publish(fact).await;
    }
    world.publish(&receipt("r3", sku, "wh", "PO-1", 20)).await;
    world.wait_stock_idle().await;
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!(
        (wh.on_hand, wh.incoming, wh.incoming_expected_at_ms),
        (55, 0, 0)
    );
    assert_eq!(wh.available(), 55 - 3 - 3);
    assert_eq!(world.ledger(sku).await.len(), facts.len() + 1);
    worker.shutdown().await;
}
