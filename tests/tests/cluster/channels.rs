//! Sales channels on clusters: a marketplace over three stores, its SKUs in every slot, its
//! quantities computed on Redis Cluster (one slot per script) and published to the R3 feed.

use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{AvailabilityRules, ChannelAvailabilityChanged},
};
use stockflow_tests::{
    events::{channel, channel_fact, channel_set, sold},
    eventually, DEADLINE,
};

use crate::world::*;

impl ClusterWorld {
    async fn availability(&self, channel: &str, sku: &str) -> Option<ChannelAvailabilityChanged> {
        let stream = self.js.get_stream(subjects::AVAILABILITY).await.ok()?;
        let stored = stream
            .direct_get_last_for_subject(subjects::availability(channel, sku))
            .await
            .ok()?;
        ChannelAvailabilityChanged::decode(stored.payload.as_ref()).ok()
    }

    async fn wait_availability(&self, channel: &str, sku: &str, quantity: i64) {
        eventually(
            &format!("{channel} to offer {quantity} of {sku}"),
            DEADLINE,
            || async {
                self.availability(channel, sku)
                    .await
                    .filter(|a| a.available_to_sell == quantity)
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_marketplace_over_three_stores_is_exact_on_clusters() {
    let world = ClusterWorld::start().await;
    let workers = [world.stock_worker(), world.stock_worker()];
    let stores = ["store-1", "store-2", "store-3"];
    let skus: Vec<String> = (0..12).map(|i| format!("CLCH-{i}")).collect();
    for sku in &skus {
        for store in stores {
            world
                .publish(&event(&format!("r-{sku}-{store}"), sku, store, received(5)))
                .await;
        }
    }
    world.wait_stock_idle().await;
    let rules = AvailabilityRules {
        buffer: Some(2),
        max_listed: Some(10),
        end_when_below: Some(3),
        ..Default::default()
    };
    let definition = channel_set("c1", channel("market", &stores, rules));
    world
        .publish_raw(
            &subjects::channel_event("market"),
            definition.encode_to_vec(),
        )
        .await;
    for sku in &skus {
        world.wait_availability("market", sku, 10).await;
    }
    // Store sales, then (once they are applied: two workers take a SKU's facts in any order)
    // a marketplace sale beyond its offer, on every SKU.
    for sku in &skus {
        world
            .publish(&event_at("s1", sku, "store-1", sold(4)))
            .await;
        world
            .publish(&event_at("s2", sku, "store-2", sold(5)))
            .await;
    }
    world.wait_stock_idle().await;
    for sku in &skus {
        world
            .publish(&channel_fact(&format!("m-{sku}"), sku, "market", sold(3)))
            .await;
    }
    world.wait_stock_idle().await;
    for sku in &skus {
        // Pool 1 + 0 + 5 = 6 before the marketplace took 3: 3 - 2 = 1 < 3, lists 0.
        world.wait_availability("market", sku, 0).await;
        let store_3 = world.on_hand_reserved(sku, "store-3").await.0;
        let store_1 = world.on_hand_reserved(sku, "store-1").await.0;
        assert_eq!(
            (store_1, store_3),
            (0, 3),
            "{sku}: taken from store-1 then store-3"
        );
    }
    for worker in workers {
        worker.shutdown().await;
    }
}

/// `event` with an id unique per SKU.
fn event_at(
    id: &str,
    sku: &str,
    location: &str,
    change: stockflow_proto::v1::stock_event::Change,
) -> stockflow_proto::v1::StockEvent {
    event(&format!("{id}-{sku}"), sku, location, change)
}
