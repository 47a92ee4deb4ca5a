//! A connector shop whose channel changed in `CONNECTOR_SHOPS` while no connector ran: at the
//! next start its feed consumer still follows the old channel; the connector makes its consumers
//! anew instead of skipping the shop, and the shop gets the new channel's quantity.

use stockflow_proto::v1::AvailabilityRules;
use stockflow_tests::{
    events::{channel, channel_set},
    eventually,
    platforms::FakeShopify,
    DEADLINE,
};

use crate::world::*;

const SECRET: &str = "shpss_channel_secret_value";
const TOKEN: &str = "shpat_channel_token_value";
const ITEM: &str = "gid://shopify/InventoryItem/21";
const LOCATION: &str = "gid://shopify/Location/1";

fn connector(world: &World) -> RunningWorker {
    let settings = connector::Settings::from_env(&world.env(&[
        ("STOCKFLOW_CONNECTOR_ADDR", "127.0.0.1:0"),
        ("STOCKFLOW_ACK_WAIT_SECONDS", "5"),
        ("STOCKFLOW_CONNECTOR_TIMEOUT_MILLIS", "2000"),
        ("STOCKFLOW_CONNECTOR_BACKOFF_FLOOR_MILLIS", "20"),
        ("STOCKFLOW_CONNECTOR_BACKOFF_CEILING_MILLIS", "200"),
        ("STOCKFLOW_CONNECTOR_BATCH_MILLIS", "20"),
        (
            "STOCKFLOW_CONNECTOR_SECRET_VARIABLES",
            "ACME_SECRET,ACME_TOKEN",
        ),
        ("ACME_SECRET", SECRET),
        ("ACME_TOKEN", TOKEN),
    ]))
    .expect("connector settings");
    RunningWorker::spawn(|shutdown| connector::run(settings, shutdown))
}

fn shop(base_url: &str, channel: &str) -> connector::shops::ShopConfig {
    connector::shops::ShopConfig {
        id: "acme".into(),
        platform: connector::shops::PlatformKind::Shopify,
        channel: channel.into(),
        base_url: base_url.into(),
        api_version: None,
        webhook_secret_env: "ACME_SECRET".into(),
        access_token_env: Some("ACME_TOKEN".into()),
        consumer_key_env: None,
        consumer_secret_env: None,
    }
}

async fn state_of(world: &World) -> Option<String> {
    let shops = connector::status::shops(&world.js).await.ok()?;
    shops
        .into_iter()
        .find(|s| s.shop == "acme")
        .and_then(|s| s.state)
}

#[tokio::test]
async fn a_channel_changed_while_no_connector_ran_is_followed_at_start() {
    let world = World::start().await;
    let _stock = world.stock_worker();
    world
        .publish(&event("r-1", "TEE", "store-1", received(10)))
        .await;
    world
        .publish(&event("r-2", "TEE", "store-2", received(4)))
        .await;
    world.wait_stock_idle().await;
    for (id, location) in [("web", "store-1"), ("outlet", "store-2")] {
        world
            .publish_channel(&channel_set(
                &format!("c-{id}"),
                channel(id, &[location], AvailabilityRules::default()),
            ))
            .await;
    }
    world.wait_availability("web", "TEE", 10).await;
    world.wait_availability("outlet", "TEE", 4).await;
    let shopify = FakeShopify::start(TOKEN, 1000.0, 100.0, 10.0, &[(ITEM, LOCATION, 0)]).await;

    let store = connector::config::ConfigStore::open(&world.js)
        .await
        .expect("the connector's buckets");
    store
        .put_shop(&shop(&shopify.url, "web"))
        .await
        .expect("shop stored");
    let item: connector::shops::Item = serde_json::from_value(serde_json::json!({
        "sku": "TEE", "inventory_item_id": ITEM, "location_id": LOCATION
    }))
    .expect("item");
    store.put_item("acme", &item).await.expect("item stored");

    let running = connector(&world);
    eventually("Shopify lists web's 10 T-shirts", DEADLINE, || async {
        (shopify.quantity(ITEM, LOCATION) == Some(10)).then_some(())
    })
    .await;
    running.shutdown().await;

    // While no connector runs, the shop moves to the outlet channel.
    store
        .put_shop(&shop(&shopify.url, "outlet"))
        .await
        .expect("shop changed");
    let running = connector(&world);
    eventually("Shopify lists outlet's 4 T-shirts", DEADLINE, || async {
        (shopify.quantity(ITEM, LOCATION) == Some(4)).then_some(())
    })
    .await;
    assert_eq!(state_of(&world).await.as_deref(), Some("running"));
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = world
        .js
        .get_stream(stockflow_proto::subjects::AVAILABILITY)
        .await
        .expect("AVAILABILITY")
        .get_consumer("connector-acme")
        .await
        .expect("the shop's consumer");
    let info = consumer.info().await.expect("consumer info");
    assert_eq!(
        info.config.filter_subject,
        stockflow_proto::subjects::channel_availability("outlet")
    );
    running.shutdown().await;
}
