//! Unsellable units on real servers: damaged units leave available and every channel's quantity
//! at once and come back; a move beyond what is free is refused with its reason; a sale never
//! takes unsellable units; an order cannot reserve them; duplicates change nothing.

use stockflow_proto::v1::{AvailabilityRules, UnsellableState};

use stockflow_tests::{eventually, DEADLINE};

use crate::{
    incoming::{levels_of, unsellable},
    world::*,
};

#[tokio::test]
async fn damaged_units_leave_available_and_the_channel_at_once_and_come_back() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "UN-1";
    world.publish(&event("r1", sku, "s1", received(10))).await;
    world.publish(&event("r2", sku, "s2", received(4))).await;
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "mkt-1",
            channel("mkt", &["s1", "s2"], AvailabilityRules::default()),
        ))
        .await;
    world.wait_availability("mkt", sku, 14).await;

    let damage = event(
        "d1",
        sku,
        "s1",
        unsellable(UnsellableState::Damaged, 3, true),
    );
    world.publish(&damage).await;
    world.wait_availability("mkt", sku, 11).await;
    let s1 = levels_of(&world, sku).await["s1"];
    assert_eq!((s1.on_hand, s1.damaged, s1.available()), (10, 3, 7));

    // The move is one ledger entry; the channel's change names it as its cause.
    let ledger = world.ledger(sku).await;
    let entry = ledger.last().expect("an entry");
    assert_eq!(
        (entry.kind.as_str(), entry.unsellable_state),
        ("unsellable_moved", UnsellableState::Damaged as i32)
    );
    let after = entry.after.unwrap_or_default();
    assert_eq!((after.on_hand, after.damaged, after.available), (10, 3, 7));
    let feed = world.availability("mkt", sku).await.expect("feed");
    assert_eq!((feed.cause_event_id.as_str(), feed.pool), ("d1", 11));

    // A duplicate changes nothing.
    world.publish(&damage).await;
    world.wait_stock_idle().await;
    assert_eq!(world.ledger(sku).await.len(), ledger.len());

    // Two come back: sellable again, listed again.
    world
        .publish(&event(
            "d2",
            sku,
            "s1",
            unsellable(UnsellableState::Damaged, 2, false),
        ))
        .await;
    world.wait_availability("mkt", sku, 13).await;

    // A sale never takes the damaged unit: on_hand goes down, damaged stays.
    world.publish(&event("s1", sku, "s1", sold(9))).await;
    world.wait_on_hand(sku, "s1", 1).await;
    let s1 = levels_of(&world, sku).await["s1"];
    assert_eq!((s1.damaged, s1.available()), (1, 0));
    world.wait_availability("mkt", sku, 4).await;

    // A count is every unit on hand: the damaged one stays damaged.
    world
        .publish(&event("c1", sku, "s1", counted(6, None)))
        .await;
    world.wait_on_hand(sku, "s1", 6).await;
    let s1 = levels_of(&world, sku).await["s1"];
    assert_eq!((s1.damaged, s1.available()), (1, 5));
    worker.shutdown().await;
}

#[tokio::test]
async fn a_move_beyond_what_is_free_is_refused_and_dead_lettered_with_its_reason() {
    let world = World::start().await;
    let (stock, orders) = (world.stock_worker(), world.order_worker());
    let sku = "UN-2";
    world.publish(&event("r1", sku, "wh", received(5))).await;
    world.wait_stock_idle().await;
    // An order holds 2 of the 5: only 3 are free to become unsellable.
    world
        .publish_order(&order("p1", "o-1", placed(&[("1", sku, 2, "wh")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (5, 2));
    world
        .publish(&event(
            "q1",
            sku,
            "wh",
            unsellable(UnsellableState::QualityControl, 4, true),
        ))
        .await;
    world
        .publish(&event(
            "h1",
            sku,
            "wh",
            unsellable(UnsellableState::Held, 1, false),
        ))
        .await;
    world
        .publish(&event(
            "q2",
            sku,
            "wh",
            unsellable(UnsellableState::QualityControl, 3, true),
        ))
        .await;
    world.wait_stock_idle().await;
    let reasons = world.wait_dead_letter_reasons(2).await;
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("move of 4 units") && r.contains("3 units")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("move of 1 units") && r.contains("0 units")),
        "{reasons:?}"
    );
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!((wh.quality_control, wh.held, wh.available()), (3, 0, 0));

    // Nothing is left to reserve: an order for one more unit is short.
    world
        .publish_order(&order("p2", "o-2", placed(&[("1", sku, 1, "wh")], 0)))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(sku, "wh").await, (5, 2));
    stock.shutdown().await;
    orders.shutdown().await;
}

/// A refused move is remembered like a stale count: a redelivery (its dead letter stored, its
/// ack lost) is refused again even once the units are free, and is never applied as well as
/// dead-lettered; only a replay of its dead letter (`stockctl dlq replay`) judges it again.
#[tokio::test]
async fn a_redelivered_refused_move_stays_refused_until_its_dead_letter_is_replayed() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let sku = "UN-3";
    world.publish(&event("r1", sku, "wh", received(5))).await;
    world.wait_on_hand(sku, "wh", 5).await;
    let hold = event("h1", sku, "wh", unsellable(UnsellableState::Held, 6, true));
    world.publish(&hold).await;
    let letters = |n: usize| {
        let world = &world;
        eventually("dead letters", DEADLINE, move || async move {
            let letters = stockflow_shared::replay::list_all(&world.js)
                .await
                .expect("dead letters");
            (letters.len() >= n).then_some(letters)
        })
    };
    letters(1).await;

    // The units become free; the same move comes again: refused again, with the units there
    // were when it was judged.
    world.publish(&event("r2", sku, "wh", received(3))).await;
    world.wait_on_hand(sku, "wh", 8).await;
    world.publish(&hold).await;
    let both = letters(2).await;
    for letter in &both {
        let reason = letter.reason();
        assert!(
            reason.contains("move of 6 units") && reason.contains("5 units"),
            "{reason}"
        );
    }
    world.wait_stock_idle().await;
    let wh = levels_of(&world, sku).await["wh"];
    assert_eq!((wh.on_hand, wh.held, wh.available()), (8, 0, 8));
    assert_eq!(world.ledger(sku).await.len(), 2, "only the two receipts");

    // A replay of its dead letter is judged again, against the levels now.
    stockflow_shared::replay::replay(&world.js, &both[1])
        .await
        .expect("replay");
    eventually("the replayed move applied", DEADLINE, || async {
        (levels_of(&world, sku).await["wh"].held == 6).then_some(())
    })
    .await;
    assert_eq!(levels_of(&world, sku).await["wh"].available(), 2);
    stock.shutdown().await;
}
