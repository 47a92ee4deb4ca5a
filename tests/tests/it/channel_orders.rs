//! Orders from a sales channel: lines reserve only from the channel's locations, split across
//! them by its allocation strategy; every part is released, expired and shipped; the channel
//! quantities follow the reservations.

use stockflow_proto::v1::{
    order_event::Command, order_result::Result as Decision, AllocationStrategy, AvailabilityRules,
    FulfilledLine, OrderCancelled, OrderEvent, OrderFulfilled, OrderResult, ReleaseReason,
};

use crate::world::*;

/// A placement of `lines` from `channel`.
fn from_channel(
    id: &str,
    order_id: &str,
    channel: &str,
    lines: &[(&str, &str, i64, &str)],
    hold_seconds: i64,
) -> OrderEvent {
    let mut event = order(id, order_id, placed(lines, hold_seconds));
    if let Some(Command::Placed(placement)) = &mut event.command {
        placement.channel = channel.to_owned();
    }
    event
}

fn cancel(id: &str, order_id: &str) -> OrderEvent {
    order(id, order_id, Command::Cancelled(OrderCancelled {}))
}

/// Defines `id` over `locations` and waits until its quantity of `sku` is `quantity` (so every
/// worker can look it up).
async fn define(
    world: &World,
    id: &str,
    locations: &[&str],
    rules: AvailabilityRules,
    strategy: AllocationStrategy,
    sku: &str,
    quantity: i64,
) {
    let mut definition = channel(id, locations, rules);
    definition.allocation = strategy.into();
    world
        .publish_channel(&channel_set(&format!("def-{id}"), definition))
        .await;
    world.wait_availability(id, sku, quantity).await;
}

/// The first result of `order_id` that `pick` accepts, waited for.
async fn result_of<T>(
    world: &World,
    order_id: &str,
    pick: impl Fn(&OrderResult) -> Option<T>,
) -> T {
    stockflow_tests::eventually(
        &format!("a result of {order_id}"),
        stockflow_tests::DEADLINE,
        || async {
            world
                .order_results()
                .await
                .iter()
                .filter(|r| r.order_id == order_id)
                .find_map(&pick)
        },
    )
    .await
}

/// The confirmation's parts: (line_id, location, units).
async fn confirmed_parts(world: &World, order_id: &str) -> Vec<(String, String, i64)> {
    result_of(world, order_id, |r| match &r.result {
        Some(Decision::Confirmed(c)) => Some(
            c.lines
                .iter()
                .map(|a| (a.line_id.clone(), a.location.clone(), a.quantity))
                .collect(),
        ),
        _ => None,
    })
    .await
}

/// Waits for `order_id`'s release and checks why.
async fn released(world: &World, order_id: &str, reason: ReleaseReason) {
    let got = result_of(world, order_id, |r| match &r.result {
        Some(Decision::Released(x)) => Some(x.reason),
        _ => None,
    })
    .await;
    assert_eq!(got, reason as i32, "{order_id} released for another reason");
}

fn parts(expected: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    expected
        .iter()
        .map(|(l, loc, q)| ((*l).to_owned(), (*loc).to_owned(), *q))
        .collect()
}

/// The ledger entries of one order step of `sku`: (kind, location, reserved after - before,
/// channel).
async fn step_entries(world: &World, sku: &str, cause: &str) -> Vec<(String, String, i64, String)> {
    world
        .ledger(sku)
        .await
        .iter()
        .filter(|e| e.cause_event_id == cause)
        .map(|e| {
            (
                e.kind.clone(),
                e.location.clone(),
                e.after.unwrap_or_default().reserved - e.before.unwrap_or_default().reserved,
                e.channel.clone(),
            )
        })
        .collect()
}

const SKU: &str = "SNEAKER-42";

/// Stock: the warehouse 50, the store 20.
async fn warehouse_and_store(world: &World) {
    world.publish(&event("r-wh", SKU, "wh", received(50))).await;
    world
        .publish(&event("r-st", SKU, "store", received(20)))
        .await;
    world.wait_on_hand(SKU, "wh", 50).await;
    world.wait_on_hand(SKU, "store", 20).await;
}

#[tokio::test]
async fn a_line_no_location_covers_is_split_by_the_channels_strategy_and_cancel_releases_every_part(
) {
    let world = World::start().await;
    let stock = world.stock_worker();
    warehouse_and_store(&world).await;
    let none = AvailabilityRules::default();
    define(
        &world,
        "web",
        &["wh", "store"],
        none,
        AllocationStrategy::Priority,
        SKU,
        70,
    )
    .await;
    define(
        &world,
        "shop",
        &["store", "wh"],
        none,
        AllocationStrategy::Priority,
        SKU,
        70,
    )
    .await;
    define(
        &world,
        "market",
        &["store", "wh"],
        none,
        AllocationStrategy::MostAvailable,
        SKU,
        70,
    )
    .await;
    let orders = world.order_worker();

    // Priority, listed warehouse first: 50 there, the other 10 at the store.
    world
        .publish_order(&from_channel(
            "p1",
            "o-web",
            "web",
            &[("1", SKU, 60, "")],
            0,
        ))
        .await;
    assert_eq!(
        confirmed_parts(&world, "o-web").await,
        parts(&[("1", "wh", 50), ("1", "store", 10)])
    );
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (50, 50));
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (20, 10));
    assert_eq!(
        step_entries(&world, SKU, "o-web/1/reserve").await,
        vec![
            ("reserved".into(), "wh".into(), 50, "web".into()),
            ("reserved".into(), "store".into(), 10, "web".into())
        ]
    );
    // Every channel drawing from those locations follows: 10 left.
    world.wait_availability("shop", SKU, 10).await;

    // Cancel gives back both parts, one ledger entry each.
    world.publish_order(&cancel("c1", "o-web")).await;
    released(&world, "o-web", ReleaseReason::Cancelled).await;
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (50, 0));
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (20, 0));
    assert_eq!(
        step_entries(&world, SKU, "o-web/1/release").await,
        vec![
            ("released".into(), "wh".into(), -50, "web".into()),
            ("released".into(), "store".into(), -10, "web".into())
        ]
    );
    world.wait_availability("web", SKU, 70).await;

    // Priority, listed store first: all 20 of the store, 40 of the warehouse.
    world
        .publish_order(&from_channel(
            "p2",
            "o-shop",
            "shop",
            &[("1", SKU, 60, "")],
            0,
        ))
        .await;
    assert_eq!(
        confirmed_parts(&world, "o-shop").await,
        parts(&[("1", "store", 20), ("1", "wh", 40)])
    );
    world.publish_order(&cancel("c2", "o-shop")).await;
    released(&world, "o-shop", ReleaseReason::Cancelled).await;

    // Most available first, whatever the listing: the warehouse's 50, then the store's 10.
    world
        .publish_order(&from_channel(
            "p3",
            "o-market",
            "market",
            &[("1", SKU, 60, "")],
            0,
        ))
        .await;
    assert_eq!(
        confirmed_parts(&world, "o-market").await,
        parts(&[("1", "wh", 50), ("1", "store", 10)])
    );
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (50, 50));
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (20, 10));

    // The order record lists every part (what GET /v1/orders/{id} answers).
    let mut redis = world.redis.connection().await;
    let stored = order_worker::read_order(&mut redis, &world.keys, "o-market")
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.channel, "market");
    let allocations: Vec<(String, i64)> = stored
        .allocations()
        .into_iter()
        .map(|a| (a.location, a.quantity))
        .collect();
    assert_eq!(allocations, vec![("wh".into(), 50), ("store".into(), 10)]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_channel_order_whose_second_line_cannot_be_covered_reserves_nothing() {
    let world = World::start().await;
    let stock = world.stock_worker();
    warehouse_and_store(&world).await;
    world
        .publish(&event("r-cap", "CAP", "store", received(3)))
        .await;
    world.wait_on_hand("CAP", "store", 3).await;
    // Elsewhere, not the channel's: never counted.
    world
        .publish(&event("r-cap2", "CAP", "outlet", received(9)))
        .await;
    world.wait_on_hand("CAP", "outlet", 9).await;
    define(
        &world,
        "web",
        &["wh", "store"],
        AvailabilityRules::default(),
        AllocationStrategy::Priority,
        SKU,
        70,
    )
    .await;
    let orders = world.order_worker();
    world
        .publish_order(&from_channel(
            "p1",
            "o1",
            "web",
            &[("1", SKU, 60, ""), ("2", "CAP", 4, "")],
            0,
        ))
        .await;
    let short = result_of(&world, "o1", |r| match &r.result {
        Some(Decision::Rejected(x)) => Some(x.short_lines.clone()),
        _ => None,
    })
    .await;
    assert_eq!(short.len(), 1, "{short:?}");
    assert_eq!(
        (
            short[0].line_id.as_str(),
            short[0].requested,
            short[0].available
        ),
        ("2", 4, 3),
        "the total of the channel's locations"
    );
    world.wait_orders_idle().await;
    for (sku, location, on_hand) in [(SKU, "wh", 50), (SKU, "store", 20), ("CAP", "store", 3)] {
        assert_eq!(
            world.on_hand_reserved(sku, location).await,
            (on_hand, 0),
            "{sku}@{location}"
        );
    }
    assert_eq!(world.on_hand_reserved("CAP", "outlet").await, (9, 0));
    // The first line was taken, then given back part by part.
    assert_eq!(
        step_entries(&world, SKU, "o1/1/release").await,
        vec![
            ("released".into(), "wh".into(), -50, "web".into()),
            ("released".into(), "store".into(), -10, "web".into())
        ]
    );
    world.wait_availability("web", SKU, 70).await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn expiry_releases_every_part_and_a_fulfilment_ships_per_part() {
    let world = World::start().await;
    let stock = world.stock_worker();
    warehouse_and_store(&world).await;
    define(
        &world,
        "web",
        &["wh", "store"],
        AvailabilityRules::default(),
        AllocationStrategy::Priority,
        SKU,
        70,
    )
    .await;
    let orders = world.order_worker();

    // A one-second hold, never paid: both parts come back.
    world
        .publish_order(&from_channel("p1", "held", "web", &[("1", SKU, 60, "")], 1))
        .await;
    assert_eq!(confirmed_parts(&world, "held").await.len(), 2);
    released(&world, "held", ReleaseReason::Expired).await;
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (50, 0));
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (20, 0));
    assert_eq!(
        step_entries(&world, SKU, "held/1/release")
            .await
            .iter()
            .map(|(_, location, delta, _)| (location.as_str(), *delta))
            .collect::<Vec<_>>(),
        vec![("wh", -50), ("store", -10)]
    );

    // Split 50 + 10; shipping 55 takes the warehouse's part first, then 5 of the store's.
    world
        .publish_order(&from_channel("p2", "sent", "web", &[("1", SKU, 60, "")], 0))
        .await;
    assert_eq!(confirmed_parts(&world, "sent").await.len(), 2);
    let ship = |id: &str, units, last| {
        order(
            id,
            "sent",
            Command::Fulfilled(OrderFulfilled {
                lines: vec![FulfilledLine {
                    line_id: "1".into(),
                    quantity: units,
                }],
                last_shipment: last,
            }),
        )
    };
    world.publish_order(&ship("f1", 55, false)).await;
    world.wait_on_hand(SKU, "store", 15).await;
    let shipped: Vec<(String, String, i64)> = world
        .ledger(SKU)
        .await
        .iter()
        .filter(|e| e.cause_event_id == "sent/1/ship/f1")
        .map(|e| {
            (
                e.kind.clone(),
                e.location.clone(),
                e.before.unwrap_or_default().on_hand - e.after.unwrap_or_default().on_hand,
            )
        })
        .collect();
    assert_eq!(
        shipped,
        vec![
            ("shipped".into(), "wh".into(), 50),
            ("shipped".into(), "store".into(), 5)
        ]
    );
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (0, 0));
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (15, 5));
    // The last shipment (nothing more shipped) releases the store's remaining 5.
    world
        .publish_order(&order(
            "f2",
            "sent",
            Command::Fulfilled(OrderFulfilled {
                lines: vec![],
                last_shipment: true,
            }),
        ))
        .await;
    released(&world, "sent", ReleaseReason::FulfilledRemainder).await;
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (15, 0));
    world.wait_availability("web", SKU, 15).await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn the_marketplace_quantity_follows_reservations_expiry_and_cancel() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let sku = "TEE";
    for store in ["s1", "s2", "s3"] {
        world
            .publish(&event(&format!("r-{store}"), sku, store, received(5)))
            .await;
        world.wait_on_hand(sku, store, 5).await;
    }
    let buffer = AvailabilityRules {
        buffer: Some(2),
        ..Default::default()
    };
    // Pool 15, buffer 2.
    define(
        &world,
        "market",
        &["s1", "s2", "s3"],
        buffer,
        AllocationStrategy::Priority,
        sku,
        13,
    )
    .await;
    let orders = world.order_worker();
    // An order without a channel lowers every channel drawing from its location.
    world
        .publish_order(&order("p1", "pos", placed(&[("1", sku, 4, "s1")], 0)))
        .await;
    world.wait_availability("market", sku, 9).await;
    // The marketplace's own order, held a second: 1 at s1, 5 at s2 -> pool 5, lists 3.
    world
        .publish_order(&from_channel(
            "p2",
            "mkt",
            "market",
            &[("1", sku, 6, "")],
            1,
        ))
        .await;
    assert_eq!(
        confirmed_parts(&world, "mkt").await,
        parts(&[("1", "s1", 1), ("1", "s2", 5)])
    );
    world.wait_availability("market", sku, 3).await;
    released(&world, "mkt", ReleaseReason::Expired).await;
    world.wait_availability("market", sku, 9).await;
    world.publish_order(&cancel("c1", "pos")).await;
    released(&world, "pos", ReleaseReason::Cancelled).await;
    world.wait_availability("market", sku, 13).await;
    let feed = world.availability("market", sku).await.expect("feed");
    assert_eq!(
        (feed.pool, feed.cause_event_id.as_str()),
        (15, "pos/1/release")
    );
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn an_own_reservations_channel_ignores_other_channels_orders_while_a_default_one_does_not() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let sku = "MUG";
    world.publish(&event("r1", sku, "s1", received(10))).await;
    world.wait_on_hand(sku, "s1", 10).await;
    let own = AvailabilityRules {
        own_reservations_only: Some(true),
        ..Default::default()
    };
    define(
        &world,
        "pos",
        &["s1"],
        own,
        AllocationStrategy::Priority,
        sku,
        10,
    )
    .await;
    define(
        &world,
        "web",
        &["s1"],
        AvailabilityRules::default(),
        AllocationStrategy::Priority,
        sku,
        10,
    )
    .await;
    let pos_before = world.availability("pos", sku).await.expect("pos");
    let orders = world.order_worker();
    world
        .publish_order(&from_channel("p1", "w1", "web", &[("1", sku, 3, "")], 0))
        .await;
    world.wait_availability("web", sku, 7).await;
    // Computed in the same step as web's 7: unchanged, so no new version either.
    let pos_after = world.availability("pos", sku).await.expect("pos");
    assert_eq!(
        (pos_after.available_to_sell, pos_after.version),
        (10, pos_before.version)
    );
    // Its own order lowers it; the default channel sees every reservation.
    world
        .publish_order(&from_channel("p2", "p1", "pos", &[("1", sku, 2, "")], 0))
        .await;
    world.wait_availability("pos", sku, 8).await;
    world.wait_availability("web", sku, 5).await;
    world.publish_order(&cancel("c1", "p1")).await;
    world.wait_availability("pos", sku, 10).await;
    world.wait_availability("web", sku, 7).await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn duplicates_reserve_once_and_unknown_channels_or_foreign_locations_are_dead_lettered() {
    let world = World::start().await;
    let stock = world.stock_worker();
    warehouse_and_store(&world).await;
    world
        .publish(&event("r-out", SKU, "outlet", received(5)))
        .await;
    world.wait_on_hand(SKU, "outlet", 5).await;
    define(
        &world,
        "web",
        &["wh", "store"],
        AvailabilityRules::default(),
        AllocationStrategy::Priority,
        SKU,
        70,
    )
    .await;
    let orders = world.order_worker();
    let placement = from_channel("p1", "o1", "web", &[("1", SKU, 60, "")], 0);
    world.publish_order(&placement).await;
    world.publish_order(&placement).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (50, 50));
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (20, 10));
    let decisions = world
        .order_results()
        .await
        .iter()
        .filter(|r| r.order_id == "o1")
        .count();
    assert_eq!(decisions, 1, "one decision");
    assert_eq!(step_entries(&world, SKU, "o1/1/reserve").await.len(), 2);

    // The category is the metric's label (other tests may add to it: compare before/after).
    let letters_counted =
        |category| crate::malformed::dead_letters_counted("order-worker", category);
    let before = (
        letters_counted("unknown_channel"),
        letters_counted("invalid_location"),
    );
    world
        .publish_order(&from_channel(
            "p2",
            "o2",
            "nowhere",
            &[("1", SKU, 1, "")],
            0,
        ))
        .await;
    world
        .publish_order(&from_channel(
            "p3",
            "o3",
            "web",
            &[("1", SKU, 1, "outlet")],
            0,
        ))
        .await;
    let letters =
        stockflow_tests::eventually("two dead letters", stockflow_tests::DEADLINE, || async {
            let letters =
                stockflow_tests::read_stream(&world.js, "DEAD_LETTERS", "deadletter.ORDER_EVENTS")
                    .await;
            (letters.len() == 2).then_some(letters)
        })
        .await;
    let reasons: Vec<String> = letters
        .iter()
        .map(|l| stockflow_shared::deadletter::reason(l))
        .collect();
    // Two orders, handled concurrently: in either order.
    for expected in ["\"nowhere\" is not defined", "lines[0].location \"outlet\""] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
    assert!(letters_counted("unknown_channel") > before.0);
    assert!(letters_counted("invalid_location") > before.1);
    // Neither reserved anything, nor was recorded.
    assert_eq!(world.on_hand_reserved(SKU, "outlet").await, (5, 0));
    let mut redis = world.redis.connection().await;
    for order_id in ["o2", "o3"] {
        assert!(order_worker::read_order(&mut redis, &world.keys, order_id)
            .await
            .expect("read")
            .is_none());
    }
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn after_a_rebuild_a_split_channel_order_is_still_cancelled_part_by_part() {
    let world = World::start().await;
    let (stock, orders) = (world.stock_worker(), world.order_worker());
    warehouse_and_store(&world).await;
    let own = AvailabilityRules {
        own_reservations_only: Some(true),
        ..Default::default()
    };
    define(
        &world,
        "pos",
        &["wh", "store"],
        own,
        AllocationStrategy::Priority,
        SKU,
        70,
    )
    .await;
    world
        .publish_order(&from_channel("p1", "o1", "pos", &[("1", SKU, 60, "")], 0))
        .await;
    assert_eq!(confirmed_parts(&world, "o1").await.len(), 2);
    world
        .publish_order(&order(
            "f1",
            "o1",
            Command::Fulfilled(OrderFulfilled {
                lines: vec![FulfilledLine {
                    line_id: "1".into(),
                    quantity: 55,
                }],
                last_shipment: false,
            }),
        ))
        .await;
    world.wait_on_hand(SKU, "store", 15).await;
    world.wait_orders_idle().await;
    let own_reserved = |location: &'static str| {
        let world = &world;
        async move {
            let mut redis = world.redis.connection().await;
            let held: Option<i64> = redis::cmd("HGET")
                .arg(world.keys.channels(SKU))
                .arg(format!("r:pos:{location}"))
                .query_async(&mut redis)
                .await
                .expect("hget");
            held
        }
    };
    assert_eq!(
        (own_reserved("wh").await, own_reserved("store").await),
        (None, Some(5))
    );
    stock.shutdown().await;
    orders.shutdown().await;

    let mut conn = world.redis_connection().await;
    world.flush_and_rebuild(&mut conn).await;
    // The line's parts, what each shipped, the order's channel and its own reservations.
    let mut redis = world.redis.connection().await;
    let stored = order_worker::read_order(&mut redis, &world.keys, "o1")
        .await
        .expect("read")
        .expect("restored");
    assert_eq!(stored.channel, "pos");
    assert_eq!(
        stored.lines[0]
            .parts
            .iter()
            .map(|p| (p.location.as_str(), p.quantity, p.shipped))
            .collect::<Vec<_>>(),
        vec![("wh", 50, 50), ("store", 10, 5)]
    );
    assert_eq!(
        (own_reserved("wh").await, own_reserved("store").await),
        (None, Some(5))
    );
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (15, 5));

    let (stock, orders) = (world.stock_worker(), world.order_worker());
    world.publish_order(&cancel("c1", "o1")).await;
    released(&world, "o1", ReleaseReason::Cancelled).await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved(SKU, "store").await, (15, 0));
    assert_eq!(world.on_hand_reserved(SKU, "wh").await, (0, 0));
    assert_eq!(
        own_reserved("store").await,
        None,
        "the channel holds nothing any more"
    );
    orders.shutdown().await;
    stock.shutdown().await;
}
