//! A kit whose components live in three different slots (on three primaries): its levels follow
//! them, and a kit order reserves all three or none.

use stockflow_proto::{subjects, v1::order_result::Result as Decision, v1::OrderResult};
use stockflow_tests::events::{kit, sold};

use crate::world::*;

/// Three component SKUs whose keys fall on the three primaries' slot ranges.
async fn components_on_three_primaries(world: &ClusterWorld) -> Vec<(String, u16)> {
    let mut conn = world.redis_connection().await;
    let mut found: Vec<Option<(String, u16)>> = vec![None, None, None];
    for i in 0..200 {
        let sku = format!("PART-{i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(world.keys.stock(&sku))
            .query_async(&mut conn)
            .await
            .expect("keyslot");
        // Three primaries split the 16384 slots in thirds.
        let third = (usize::from(slot) * 3 / 16384).min(2);
        found[third].get_or_insert((sku, slot));
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
        .into_iter()
        .map(|f| f.expect("a SKU per primary"))
        .collect()
}

/// Waits until HAMPER@wh has `expected` kits.
async fn wait_kits(world: &ClusterWorld, expected: i64) {
    stockflow_tests::eventually(
        &format!("HAMPER@wh {expected}"),
        stockflow_tests::DEADLINE,
        || async { (world.on_hand_reserved("HAMPER", "wh").await.0 == expected).then_some(()) },
    )
    .await
}

#[tokio::test]
async fn a_kit_of_components_on_three_primaries_follows_them_and_reserves_all_or_nothing() {
    let world = ClusterWorld::start().await;
    let stock = world.stock_worker();
    let parts = components_on_three_primaries(&world).await;
    println!("components {parts:?}");
    let (a, b, c) = (&parts[0].0, &parts[1].0, &parts[2].0);
    for (i, (sku, quantity)) in [(a, 10), (b, 6), (c, 9)].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "wh", received(*quantity)))
            .await;
    }
    world
        .publish(&event(
            "k1",
            "HAMPER",
            "",
            kit(&[(a.as_str(), 1), (b.as_str(), 2), (c.as_str(), 3)]),
        ))
        .await;
    // min(10 / 1, 6 / 2, 9 / 3)
    wait_kits(&world, 3).await;
    world.publish(&event("s1", b, "wh", sold(2))).await;
    wait_kits(&world, 2).await;

    let orders = world.order_worker();
    // Three hampers need 9 of `c`: short, so nothing is reserved anywhere; two fit.
    world
        .publish_order(&order("p1", "o-1", placed(&[("1", "HAMPER", 3, "wh")], 0)))
        .await;
    world.wait_orders_idle().await;
    world
        .publish_order(&order("p2", "o-2", placed(&[("1", "HAMPER", 2, "wh")], 0)))
        .await;
    world.wait_orders_idle().await;
    let results: Vec<OrderResult> = world
        .read(subjects::ORDER_RESULTS, "orders.results.>")
        .await;
    let decided = |id: &str| {
        results
            .iter()
            .find(|r| r.order_id == id)
            .and_then(|r| r.result.clone())
    };
    assert!(matches!(decided("o-1"), Some(Decision::Rejected(_))));
    assert!(matches!(decided("o-2"), Some(Decision::Confirmed(_))));
    assert_eq!(world.on_hand_reserved(a, "wh").await, (10, 2));
    assert_eq!(world.on_hand_reserved(b, "wh").await, (4, 4));
    assert_eq!(world.on_hand_reserved(c, "wh").await, (9, 6));
    wait_kits(&world, 0).await;
    orders.shutdown().await;
    stock.shutdown().await;
}
