//! Kits (bundles): a kit's levels follow its components, in every location and channel; a
//! sale, return or order of a kit takes or gives its components, all or nothing; rebuild
//! restores the definitions.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{
        order_result::Result as Decision, AlertKind, AvailabilityRules, ChannelAvailabilityChanged,
    },
};

use stockflow_tests::{eventually, DEADLINE};

use crate::world::*;

/// The gift box of these tests: a mug, a box and two cards.
const GIFT: &[(&str, i64)] = &[("MUG", 1), ("BOX", 1), ("CARD", 2)];

/// Waits until the kit `sku` has `on_hand` kits at `location`.
async fn wait_kits(world: &World, sku: &str, location: &str, on_hand: i64) {
    world.wait_on_hand(sku, location, on_hand).await;
}

#[tokio::test]
async fn a_kit_follows_its_components_everywhere_and_a_component_sold_elsewhere_lowers_every_kit() {
    let world = World::start().await;
    let stock = world.stock_worker();
    for (i, (sku, location, quantity)) in [
        ("MUG", "wh", 10),
        ("BOX", "wh", 4),
        ("CARD", "wh", 9),
        ("MUG", "store", 5),
        ("BOX", "store", 5),
        ("CARD", "store", 1),
    ]
    .iter()
    .enumerate()
    {
        world
            .publish(&event(&format!("r{i}"), sku, location, received(*quantity)))
            .await;
    }
    // A channel may name only locations that have stock recorded.
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "web-1",
            channel("web", &["wh"], AvailabilityRules::default()),
        ))
        .await;
    // The channel is known before the kits are defined.
    world.wait_availability("web", "MUG", 10).await;
    world.publish(&event("k1", "GIFTBOX", "", kit(GIFT))).await;
    world
        .publish(&event("k2", "TRAY", "", kit(&[("BOX", 2)])))
        .await;
    // min(10 / 1, 4 / 1, 9 / 2) at wh; at the store one card makes no kit.
    wait_kits(&world, "GIFTBOX", "wh", 4).await;
    wait_kits(&world, "TRAY", "wh", 2).await;
    wait_kits(&world, "TRAY", "store", 2).await;
    assert_eq!(world.on_hand_reserved("GIFTBOX", "store").await, (0, 0));
    world.wait_availability("web", "GIFTBOX", 4).await;

    // Boxes sold on their own lower both kits that use them, and the channel with them.
    world.publish(&event("s1", "BOX", "wh", sold(4))).await;
    wait_kits(&world, "GIFTBOX", "wh", 0).await;
    wait_kits(&world, "TRAY", "wh", 0).await;
    world.wait_availability("web", "GIFTBOX", 0).await;
    world.publish(&event("r9", "BOX", "wh", received(3))).await;
    wait_kits(&world, "GIFTBOX", "wh", 3).await;
    world.wait_availability("web", "GIFTBOX", 3).await;
    let alerts: Vec<(i32, String)> = world
        .alerts("GIFTBOX")
        .await
        .into_iter()
        .map(|a| (a.kind, a.location))
        .collect();
    for kind in [AlertKind::OutOfStock, AlertKind::BackInStock] {
        assert!(
            alerts.contains(&(kind.into(), "wh".to_owned())),
            "{kind:?} at wh in {alerts:?}"
        );
    }
    let ledger = world.ledger("GIFTBOX").await;
    let defined = ledger
        .iter()
        .find(|e| e.kind == "kit_defined")
        .expect("a kit_defined entry");
    assert_eq!(
        defined.kit.as_ref().map(|k| k.components.len()),
        Some(3),
        "the definition rides on its entry: {defined:?}"
    );
    assert!(ledger.iter().any(|e| e.kind == "kit_buildable"));

    // Facts that move a kit's own stock are refused: it has none.
    world
        .publish(&event("bad1", "GIFTBOX", "wh", received(5)))
        .await;
    // A component may not be a kit, nor a kit a component.
    world
        .publish(&event("bad2", "HAMPER", "", kit(&[("GIFTBOX", 1)])))
        .await;
    world
        .publish(&event("bad3", "BOX", "", kit(&[("MUG", 1)])))
        .await;
    let reasons = eventually("three dead letters", DEADLINE, || async {
        let reasons = world.dead_letter_reasons().await;
        (reasons.len() >= 3).then_some(reasons)
    })
    .await;
    for reason in ["no stock of its own", "itself a kit", "component of kit"] {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "{reason}: {reasons:?}"
        );
    }

    // The delay from a component's change to the kit's channel quantity, measured.
    world
        .publish(&event("r10", "MUG", "wh", received(1000)))
        .await;
    world
        .publish(&event("r11", "CARD", "wh", received(2000)))
        .await;
    let client = world.js.client();
    let mut feed = client
        .subscribe(subjects::availability("web", "GIFTBOX"))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let mut delays = Vec::new();
    for i in 0..60 {
        let expected = 4 + i as i64;
        let started = Instant::now();
        world
            .publish(&event(&format!("m{i}"), "BOX", "wh", received(1)))
            .await;
        loop {
            let message = tokio::time::timeout(DEADLINE, feed.next())
                .await
                .expect("the kit's channel quantity follows")
                .expect("subscription open");
            let change = ChannelAvailabilityChanged::decode(message.payload).expect("decodes");
            if change.available_to_sell == expected {
                break;
            }
        }
        delays.push(started.elapsed());
    }
    delays.sort();
    let percentile = |p: usize| delays[(delays.len() * p / 100).min(delays.len() - 1)];
    println!(
        "kits: component change -> kit channel quantity over {} changes: p50 {:?}, p99 {:?}, max {:?}",
        delays.len(),
        percentile(50),
        percentile(99),
        delays[delays.len() - 1]
    );
    assert!(percentile(50) < Duration::from_secs(5), "{delays:?}");
    stock.shutdown().await;
}

#[tokio::test]
async fn a_kit_sold_or_returned_moves_its_components_once() {
    let world = World::start().await;
    let stock = world.stock_worker();
    for (i, (sku, quantity)) in [("MUG", 10), ("BOX", 10), ("CARD", 20)].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(*quantity)))
            .await;
    }
    world.publish(&event("k1", "GIFTBOX", "", kit(GIFT))).await;
    wait_kits(&world, "GIFTBOX", "wh", 10).await;
    let sale = event("pos-1", "GIFTBOX", "wh", sold(3));
    world.publish(&sale).await;
    // The same sale again, with a new Nats-Msg-Id: absorbed by each component.
    world.publish(&sale).await;
    wait_kits(&world, "GIFTBOX", "wh", 7).await;
    world
        .publish(&event("ret-1", "GIFTBOX", "wh", returned(1)))
        .await;
    wait_kits(&world, "GIFTBOX", "wh", 8).await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved("MUG", "wh").await, (8, 0));
    assert_eq!(world.on_hand_reserved("BOX", "wh").await, (8, 0));
    assert_eq!(world.on_hand_reserved("CARD", "wh").await, (16, 0));
    let cards = world.ledger("CARD").await;
    let sold: Vec<_> = cards.iter().filter(|e| e.kind == "sold").collect();
    assert_eq!(sold.len(), 1, "one sale of the kit, once: {sold:?}");
    // Components sorted by SKU: BOX, CARD, MUG.
    assert_eq!(sold[0].cause_event_id, "pos-1/k2");
    stock.shutdown().await;
}

#[tokio::test]
async fn a_kit_order_reserves_every_component_or_none() {
    let world = World::start().await;
    let (stock, orders) = (world.stock_worker(), world.order_worker());
    for (i, (sku, quantity)) in [("MUG", 5), ("BOX", 5), ("CARD", 3)].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(*quantity)))
            .await;
    }
    world.publish(&event("k1", "GIFTBOX", "", kit(GIFT))).await;
    wait_kits(&world, "GIFTBOX", "wh", 1).await;
    // Two gift boxes need four cards: three are there. Nothing is reserved.
    world
        .publish_order(&order("p1", "o-1", placed(&[("1", "GIFTBOX", 2, "")], 0)))
        .await;
    // One fits, next to a plain line.
    world
        .publish_order(&order(
            "p2",
            "o-2",
            placed(&[("1", "GIFTBOX", 1, ""), ("2", "MUG", 1, "")], 0),
        ))
        .await;
    world.wait_orders_idle().await;
    let results = world.order_results().await;
    let decision = |id: &str| {
        results
            .iter()
            .find(|r| r.order_id == id)
            .and_then(|r| r.result.clone())
            .expect("a decision")
    };
    match decision("o-1") {
        Decision::Rejected(r) => {
            assert_eq!(r.short_lines.len(), 1, "{r:?}");
            assert_eq!(
                (
                    r.short_lines[0].line_id.as_str(),
                    r.short_lines[0].sku.as_str()
                ),
                ("1/2", "CARD")
            );
        }
        other => panic!("o-1 rejected expected: {other:?}"),
    }
    match decision("o-2") {
        Decision::Confirmed(c) => {
            let mut parts: Vec<_> = c
                .lines
                .iter()
                .map(|a| {
                    (
                        a.line_id.as_str(),
                        a.sku.as_str(),
                        a.quantity,
                        a.kit_sku.as_str(),
                        a.kit_line_id.as_str(),
                    )
                })
                .collect();
            parts.sort();
            assert_eq!(
                parts,
                [
                    ("1/1", "BOX", 1, "GIFTBOX", "1"),
                    ("1/2", "CARD", 2, "GIFTBOX", "1"),
                    ("1/3", "MUG", 1, "GIFTBOX", "1"),
                    ("2", "MUG", 1, "", ""),
                ]
            );
        }
        other => panic!("o-2 confirmed expected: {other:?}"),
    }
    assert_eq!(world.on_hand_reserved("MUG", "wh").await, (5, 2));
    assert_eq!(world.on_hand_reserved("BOX", "wh").await, (5, 1));
    assert_eq!(world.on_hand_reserved("CARD", "wh").await, (3, 2));
    // The reservation took the last cards' pair: no gift box is left to sell.
    wait_kits(&world, "GIFTBOX", "wh", 0).await;
    orders.shutdown().await;
    stock.shutdown().await;
}

/// Components for `kits` gift boxes at wh, and the kit defined; waits until it follows.
async fn stock_gift_boxes(world: &World, kits: i64) {
    for (i, (sku, per_kit)) in GIFT.iter().enumerate() {
        world
            .publish(&event(
                &format!("r{i}"),
                sku,
                "wh",
                received(kits * per_kit),
            ))
            .await;
    }
    world.publish(&event("k1", "GIFTBOX", "", kit(GIFT))).await;
    wait_kits(world, "GIFTBOX", "wh", kits).await;
}

/// Confirmed decisions of `results`.
fn confirmed(results: &[stockflow_proto::v1::OrderResult]) -> usize {
    results
        .iter()
        .filter(|r| matches!(r.result, Some(Decision::Confirmed(_))))
        .count()
}

#[tokio::test]
async fn a_flash_sale_of_a_kit_never_oversells_a_component() {
    let world = World::start().await;
    let stock = world.stock_worker();
    // Cards are the scarce component: 60 make 30 gift boxes; mugs and boxes are plenty.
    for (i, (sku, quantity)) in [("MUG", 1000), ("BOX", 1000), ("CARD", 60)]
        .iter()
        .enumerate()
    {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(*quantity)))
            .await;
    }
    world.publish(&event("k1", "GIFTBOX", "", kit(GIFT))).await;
    wait_kits(&world, "GIFTBOX", "wh", 30).await;
    // Cards also sell on their own: the kits may only have what is left of them.
    let workers = [world.order_worker(), world.order_worker()];
    let orders: Vec<_> = (0..400)
        .map(|i| {
            let lines: &[(&str, &str, i64, &str)] = if i % 10 == 0 {
                &[("1", "CARD", 1, "")]
            } else {
                &[("1", "GIFTBOX", 1, "")]
            };
            order(&format!("p{i}"), &format!("o{i}"), placed(lines, 0))
        })
        .collect();
    futures::future::join_all(orders.iter().map(|o| world.publish_order(o))).await;
    world.wait_orders_idle().await;
    let results = world.order_results().await;
    assert_eq!(results.len(), 400, "one decision per order");
    let cards_alone = results
        .iter()
        .filter(|r| {
            matches!(&r.result, Some(Decision::Confirmed(c)) if c.lines.iter().all(|a| a.kit_sku.is_empty()))
        })
        .count() as i64;
    let kits = confirmed(&results) as i64 - cards_alone;
    // Every card went, to a gift box or alone, and not one more.
    assert_eq!(
        2 * kits + cards_alone,
        60,
        "kits {kits}, cards alone {cards_alone}"
    );
    assert_eq!(world.on_hand_reserved("CARD", "wh").await, (60, 60));
    assert_eq!(world.on_hand_reserved("MUG", "wh").await, (1000, kits));
    assert_eq!(world.on_hand_reserved("BOX", "wh").await, (1000, kits));
    for sku in ["MUG", "BOX", "CARD"] {
        assert!(
            world
                .ledger(sku)
                .await
                .iter()
                .all(|e| e.after.expect("after").available >= 0),
            "a reservation made {sku}'s available negative"
        );
    }
    wait_kits(&world, "GIFTBOX", "wh", 0).await;
    for worker in workers {
        worker.shutdown().await;
    }
    stock.shutdown().await;
}

#[tokio::test]
async fn order_workers_killed_in_the_middle_of_kit_reservations_reserve_each_component_once() {
    let world = World::start().await;
    let stock = world.stock_worker();
    stock_gift_boxes(&world, 150).await;
    let n = 400;
    let orders: Vec<_> = (0..n)
        .map(|i| {
            order(
                &format!("p{i}"),
                &format!("m{i}"),
                placed(&[("1", "GIFTBOX", 1, ""), ("2", "MUG", 1, "")], 0),
            )
        })
        .collect();
    futures::future::join_all(orders.iter().map(|o| world.publish_order(o))).await;
    for target in [40, 120] {
        let mut child = world.order_worker_process();
        stockflow_tests::wait_for_count(&world.js, "ORDER_RESULTS", "orders.results.>", target)
            .await;
        child.kill();
    }
    let _last = world.order_worker_process();
    world.wait_orders_idle().await;
    let results = world.order_results().await;
    let mut decided: Vec<&str> = results.iter().map(|r| r.order_id.as_str()).collect();
    decided.sort();
    decided.dedup();
    assert_eq!(decided.len(), n, "one decision per order");
    let kits = confirmed(&results) as i64;
    // Each confirmed order holds one gift box (a mug, a box, two cards) and one more mug.
    assert!(kits > 0 && kits <= 75, "{kits}");
    assert_eq!(world.on_hand_reserved("MUG", "wh").await.1, 2 * kits);
    assert_eq!(world.on_hand_reserved("BOX", "wh").await.1, kits);
    assert_eq!(world.on_hand_reserved("CARD", "wh").await.1, 2 * kits);
    stock.shutdown().await;
}

#[tokio::test]
async fn kit_definitions_are_rebuilt_from_the_ledger_and_a_stale_computation_changes_nothing() {
    let world = World::start().await;
    let stock = world.stock_worker();
    stock_gift_boxes(&world, 5).await;
    world
        .publish(&event("k2", "TRAY", "", kit(&[("BOX", 1)])))
        .await;
    wait_kits(&world, "TRAY", "wh", 5).await;
    // The same definition again, and its removal: a removed kit has no levels.
    world
        .publish(&event("k2", "TRAY", "", kit(&[("BOX", 1)])))
        .await;
    world.publish(&event("k3", "TRAY", "", kit(&[]))).await;
    wait_kits(&world, "TRAY", "wh", 0).await;
    // A computation older than the last one applied changes nothing.
    world
        .publish(&event(
            "stale-1",
            "GIFTBOX",
            "wh",
            stockflow_proto::v1::stock_event::Change::KitBuildable(
                stockflow_proto::v1::KitBuildable {
                    buildable: 99,
                    stamp: 1,
                },
            ),
        ))
        .await;
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved("GIFTBOX", "wh").await, (5, 0));
    stock.shutdown().await;

    let mut conn = world.redis_connection().await;
    let report = world.flush_and_rebuild(&mut conn).await;
    assert_eq!(report.kits, 1, "{report:?}");
    assert_eq!(world.on_hand_reserved("GIFTBOX", "wh").await, (5, 0));
    // The rebuilt definition and index carry on: a component sold lowers the kit.
    let stock = world.stock_worker();
    world.publish(&event("s1", "CARD", "wh", sold(3))).await;
    wait_kits(&world, "GIFTBOX", "wh", 3).await;
    assert_eq!(world.on_hand_reserved("TRAY", "wh").await, (0, 0));
    stock.shutdown().await;
}

#[tokio::test]
async fn stockctl_sets_shows_and_removes_a_kit_and_refuses_a_bad_one() {
    use crate::cli::stockctl;
    let world = World::start().await;
    let stock = world.stock_worker();
    for (i, (sku, quantity)) in [("MUG", 4), ("BOX", 4), ("CARD", 4)].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(*quantity)))
            .await;
    }
    let set = stockctl(
        &world,
        &[
            "kits",
            "set",
            "GIFTBOX",
            "MUG=1",
            "BOX=1",
            "CARD=2",
            "--event-id",
            "kit-1",
        ],
    )
    .await;
    assert_eq!(set.code, 0, "{}\n{}", set.stdout, set.stderr);
    wait_kits(&world, "GIFTBOX", "wh", 2).await;
    let shown = stockctl(&world, &["kits", "show", "GIFTBOX"]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .contains("GIFTBOX is a kit of 1 × BOX + 2 × CARD + 1 × MUG"),
        "{}",
        shown.stdout
    );
    let levels = stockctl(&world, &["stock", "GIFTBOX", "-o", "json"]).await;
    assert!(levels.stdout.contains(r#""kit":"#), "{}", levels.stdout);
    // Judged before it is published: nothing reaches the stream.
    let bad = stockctl(&world, &["kits", "set", "GIFTBOX", "GIFTBOX=1"]).await;
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("cannot be a component of itself"),
        "{}",
        bad.stderr
    );
    let removed = stockctl(&world, &["kits", "remove", "GIFTBOX"]).await;
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    wait_kits(&world, "GIFTBOX", "wh", 0).await;
    assert_ne!(stockctl(&world, &["kits", "show", "GIFTBOX"]).await.code, 0);
    stock.shutdown().await;
}

#[tokio::test]
async fn a_kit_follows_its_components_on_a_partitioned_stock_input() {
    let world = World::start_partitioned(3).await;
    let stock = world.stock_worker();
    for (i, (sku, quantity)) in [("MUG", 6), ("BOX", 9), ("CARD", 8)].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(*quantity)))
            .await;
    }
    world.publish(&event("k1", "GIFTBOX", "", kit(GIFT))).await;
    wait_kits(&world, "GIFTBOX", "wh", 4).await;
    world.publish(&event("s1", "MUG", "wh", sold(3))).await;
    wait_kits(&world, "GIFTBOX", "wh", 3).await;
    world
        .publish(&event("pos-1", "GIFTBOX", "wh", sold(2)))
        .await;
    wait_kits(&world, "GIFTBOX", "wh", 1).await;
    assert_eq!(world.on_hand_reserved("CARD", "wh").await, (4, 0));
    stock.shutdown().await;
}

#[tokio::test]
async fn reconcile_finds_a_lost_kit_definition_and_its_fix_restores_it() {
    use stockflow_ops::reconcile;
    let world = World::start().await;
    let stock = world.stock_worker();
    stock_gift_boxes(&world, 5).await;
    world.wait_stock_idle().await;
    let mut conn = world.redis_connection().await;
    assert_eq!(
        reconcile::drift(&world.js, &mut conn, &world.keys)
            .await
            .expect("drift"),
        vec![],
        "nothing drifted yet"
    );
    // Redis loses the definition (a failover that lost the write, say).
    let _: i64 = redis::cmd("HDEL")
        .arg(world.keys.policy("GIFTBOX"))
        .arg("kit")
        .query_async(&mut conn)
        .await
        .expect("hdel");
    let drift = reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    assert_eq!(
        drift
            .iter()
            .map(|d| (d.sku.as_str(), d.field, d.ledger, d.redis, d.kit.as_str()))
            .collect::<Vec<_>>(),
        [("GIFTBOX", "kit", 3, 0, "BOX=1 CARD=2 MUG=1")]
    );
    assert_eq!(
        reconcile::publish_corrections(&world.js, &drift)
            .await
            .expect("fix"),
        1
    );
    eventually("the definition restored", DEADLINE, || async {
        let mut conn = world.redis_connection().await;
        reconcile::drift(&world.js, &mut conn, &world.keys)
            .await
            .expect("drift")
            .is_empty()
            .then_some(())
    })
    .await;
    // The kit follows again.
    world.publish(&event("s1", "MUG", "wh", sold(1))).await;
    wait_kits(&world, "GIFTBOX", "wh", 4).await;
    stock.shutdown().await;
}
