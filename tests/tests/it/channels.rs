//! Sales channels: what each may sell, computed with every change and published to the feed.

use stockflow_proto::v1::{AlertKind, AvailabilityRules};
use stockflow_tests::events::{channel, channel_fact, channel_set};

use crate::world::*;

fn marketplace_rules() -> AvailabilityRules {
    AvailabilityRules {
        buffer: Some(2),
        max_listed: Some(10),
        end_when_below: Some(3),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_marketplace_fed_by_three_stores_follows_every_change() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "SNEAKER-42";
    for (i, store) in ["store-1", "store-2", "store-3"].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, store, received(5)))
            .await;
    }
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "c1",
            channel(
                "market",
                &["store-1", "store-2", "store-3"],
                marketplace_rules(),
            ),
        ))
        .await;
    // Pool 15, buffer 2 -> 13, at most 10.
    world.wait_availability("market", sku, 10).await;
    world.publish(&event("s1", sku, "store-1", sold(4))).await;
    world.wait_availability("market", sku, 9).await;
    world.publish(&event("s2", sku, "store-2", sold(5))).await;
    world.wait_availability("market", sku, 4).await;
    // Pool 4 - 2 = 2, below the end-when of 3: the marketplace lists nothing.
    world.publish(&event("s3", sku, "store-3", sold(2))).await;
    world.wait_availability("market", sku, 0).await;
    world
        .publish(&event("r4", sku, "store-1", received(5)))
        .await;
    world.wait_availability("market", sku, 7).await;
    let before = world.availability("market", sku).await.expect("feed");

    // The marketplace sells 9 while offering 7: taken from its stores in priority order,
    // recorded per store, and the crossing is raised once.
    world
        .publish(&channel_fact("m1", sku, "market", sold(9)))
        .await;
    world.wait_availability("market", sku, 0).await;
    let after = world.availability("market", sku).await.expect("feed");
    assert!(after.version > before.version);
    assert_eq!(after.cause_event_id, "m1");
    let ledger = world.ledger(sku).await;
    let parts: Vec<(&str, &str, i64)> = ledger
        .iter()
        .filter(|e| e.cause_event_id == "m1")
        .map(|e| {
            (
                e.location.as_str(),
                e.channel.as_str(),
                e.before.unwrap_or_default().on_hand - e.after.unwrap_or_default().on_hand,
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![("store-1", "market", 6), ("store-3", "market", 3)],
        "store-1 had 6, store-2 none, store-3 3"
    );
    let alerts = world.alerts(sku).await;
    let oversold: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::ChannelOversold as i32)
        .collect();
    assert_eq!(oversold.len(), 1, "{alerts:?}");
    assert_eq!((oversold[0].offered, oversold[0].sold), (7, 9));
    assert_eq!(oversold[0].channel, "market");
    worker.shutdown().await;
}
