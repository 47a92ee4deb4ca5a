//! Backorders on clusters: the queue, the line records and the stock hash of a SKU share its
//! slot, so placements, fills and cancels run unchanged wherever the SKU lives.

use stockflow_proto::v1::{
    order_event::Command, stock_event::Change, BackorderPolicy, OrderCancelled, PolicySet,
};

use crate::world::*;

#[tokio::test]
async fn backorders_fill_in_order_of_placement_on_clusters() {
    let world = ClusterWorld::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    // SKUs spread over every primary.
    let skus: Vec<String> = (0..6).map(|i| format!("BO-CL-{i}")).collect();
    for (i, sku) in skus.iter().enumerate() {
        world
            .publish(&event(
                &format!("pol-{i}"),
                sku,
                "",
                Change::PolicySet(PolicySet {
                    backorder_policy: BackorderPolicy::Unlimited.into(),
                    ..PolicySet::default()
                }),
            ))
            .await;
        world
            .publish(&event(&format!("r0-{i}"), sku, "wh", received(1)))
            .await;
    }
    world.wait_stock_idle().await;
    // Per SKU three preorders of 2: the first takes the unit on hand, all wait for the rest.
    for (i, sku) in skus.iter().enumerate() {
        for o in 0..3 {
            world
                .publish_order(&order(
                    &format!("p-{i}-{o}"),
                    &format!("o-{i}-{o}"),
                    placed(&[("1", sku, 2, "wh")], 0),
                ))
                .await;
        }
    }
    world.wait_orders_idle().await;
    // The first is cancelled: its unit goes to the second.
    for i in 0..skus.len() {
        world
            .publish_order(&order(
                &format!("c-{i}"),
                &format!("o-{i}-0"),
                Command::Cancelled(OrderCancelled {}),
            ))
            .await;
    }
    world.wait_orders_idle().await;
    for sku in &skus {
        assert_eq!(world.on_hand_reserved(sku, "wh").await, (1, 1), "{sku}");
    }
    // 3 arrive: the second gets its last unit, the third both of its.
    for (i, sku) in skus.iter().enumerate() {
        world
            .publish(&event(&format!("r1-{i}"), sku, "wh", received(3)))
            .await;
    }
    world.wait_stock_idle().await;
    for sku in &skus {
        assert_eq!(world.on_hand_reserved(sku, "wh").await, (4, 4), "{sku}");
    }
    orders.shutdown().await;
    stock.shutdown().await;
}
