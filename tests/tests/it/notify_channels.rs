//! Channel quantities and oversold alerts as webhooks: a subscription filtered on one channel
//! gets that channel's quantity changes only, every version in order; a channel sale beyond the
//! offer is delivered once as `channel_oversold`; an endpoint that was down gets the newest
//! quantity of every SKU once it is back.

use std::{collections::HashMap, time::Duration};

use stockflow_proto::{subjects, v1::AvailabilityRules};
use stockflow_tests::{
    events::{channel, channel_fact, channel_set},
    eventually, DEADLINE,
};

use crate::{
    notify::{fast, notify_worker, subscriptions_file, wait_deliveries_done, Receiver},
    world::*,
};

/// The channel quantities `receiver` accepted: (channel, SKU) -> (version, available_to_sell),
/// in the order they arrived.
fn quantities(receiver: &Receiver) -> HashMap<(String, String), Vec<(u64, i64)>> {
    let mut by_key: HashMap<_, Vec<_>> = HashMap::new();
    for post in receiver
        .received()
        .into_iter()
        .filter(|r| (200..300).contains(&r.status) && r.event_type == "channel_availability")
    {
        let data = &post.body["data"];
        let key = (
            data["channel"].as_str().unwrap_or_default().to_owned(),
            data["sku"].as_str().unwrap_or_default().to_owned(),
        );
        by_key.entry(key).or_default().push((
            data["version"].as_u64().unwrap_or_default(),
            data["available_to_sell"].as_i64().unwrap_or(-1),
        ));
    }
    by_key
}

/// Waits until `receiver` accepted version `version` of (`channel`, `sku`).
async fn wait_delivered(receiver: &Receiver, channel: &str, sku: &str, version: u64) {
    let key = (channel.to_owned(), sku.to_owned());
    eventually(
        &format!("version {version} of {channel}/{sku} delivered"),
        DEADLINE,
        || async {
            quantities(receiver)
                .get(&key)
                .is_some_and(|got| got.iter().any(|(v, _)| *v == version))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_channel_subscription_gets_that_channels_quantities_only_every_version_in_order() {
    let world = World::start().await;
    let market_hook = Receiver::start(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{
            "id": "market-feed", "url": market_hook.url,
            "events": ["channel_availability"], "channels": ["market"],
        }]),
    );
    let stock = world.stock_worker();
    let notify = notify_worker(&world, &fast(&file, &[]));
    let sku = "SNEAKER-42";
    world
        .publish(&event("r1", sku, "store-1", received(10)))
        .await;
    world
        .publish(&event("r2", sku, "store-2", received(5)))
        .await;
    world.wait_stock_idle().await;
    // The marketplace draws on both stores and holds 2 back; the web shop on store-1 alone.
    let rules = AvailabilityRules {
        buffer: Some(2),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set(
            "c-market",
            channel("market", &["store-1", "store-2"], rules),
        ))
        .await;
    world
        .publish_channel(&channel_set(
            "c-web",
            channel("web", &["store-1"], AvailabilityRules::default()),
        ))
        .await;
    world.wait_availability("market", sku, 13).await;
    world.wait_availability("web", sku, 10).await;

    // Each step waits for the market's new quantity to be delivered before the next: every
    // version reaches the endpoint, and nothing can overtake it.
    let mut expected = Vec::new();
    let first = world.availability("market", sku).await.expect("feed");
    wait_delivered(&market_hook, "market", sku, first.version).await;
    expected.push((first.version, 13));
    for (id, location, change, market) in [
        ("s1", "store-1", sold(3), 10),
        ("s2", "store-2", sold(4), 6),
        ("r3", "store-2", received(2), 8),
    ] {
        world.publish(&event(id, sku, location, change)).await;
        world.wait_availability("market", sku, market).await;
        let now = world.availability("market", sku).await.expect("feed");
        assert_eq!(now.cause_event_id, id);
        wait_delivered(&market_hook, "market", sku, now.version).await;
        expected.push((now.version, market));
    }
    let web = world.availability("web", sku).await.expect("web's feed");
    assert_eq!(
        web.available_to_sell, 7,
        "the web shop's quantity moved too"
    );
    world.wait_stock_idle().await;
    world
        .wait_idle(subjects::AVAILABILITY, "notify-worker")
        .await;
    wait_deliveries_done(&world, &["market-feed"]).await;

    let got = quantities(&market_hook);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![("market".to_owned(), sku.to_owned())],
        "the market's quantities only, never the web shop's"
    );
    assert_eq!(got[&("market".to_owned(), sku.to_owned())], expected);
    assert!(
        expected.windows(2).all(|w| w[0].0 < w[1].0),
        "versions increase: {expected:?}"
    );
    // The body a connector reads: the version to drop older ones, what it listed before, why.
    let posts = market_hook.received();
    for post in &posts {
        assert_eq!(post.event_type, "channel_availability");
        let data = &post.body["data"];
        let version = data["version"].as_u64().expect("version");
        assert_eq!(
            post.event_id,
            format!("ats:market:{}:{version}", subjects::encode_token(sku)),
            "the feed's message id is the event id"
        );
        assert_eq!(post.body["type"], "channel_availability");
        assert_eq!(
            post.body["subject"],
            subjects::availability("market", sku).as_str()
        );
        assert!(
            data["rules_version"].as_u64().is_some_and(|v| v > 0),
            "{data}"
        );
        assert!(
            data["changed_at_ms"].as_i64().is_some_and(|t| t > 0),
            "{data}"
        );
    }
    let last = &posts.last().expect("a delivery").body["data"];
    assert_eq!(
        (
            last["previous"].as_i64(),
            last["available_to_sell"].as_i64(),
            last["cause_event_id"].as_str()
        ),
        (Some(6), Some(8), Some("r3"))
    );
    market_hook.assert_signatures_verified();
    notify.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_channel_sale_beyond_the_offer_is_delivered_once_as_channel_oversold() {
    let world = World::start().await;
    let market_hook = Receiver::start(&[], Duration::ZERO).await;
    let web_hook = Receiver::start(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            {"id": "market-alerts", "url": market_hook.url,
             "events": ["channel_oversold"], "channels": ["market"]},
            {"id": "web-alerts", "url": web_hook.url,
             "events": ["channel_oversold"], "channels": ["web"]},
        ]),
    );
    let stock = world.stock_worker();
    let notify = notify_worker(&world, &fast(&file, &[]));
    let sku = "SNEAKER-42";
    world
        .publish(&event("r1", sku, "store-1", received(6)))
        .await;
    world.wait_stock_idle().await;
    let rules = AvailabilityRules {
        buffer: Some(2),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set(
            "c-market",
            channel("market", &["store-1"], rules),
        ))
        .await;
    world
        .publish_channel(&channel_set(
            "c-web",
            channel("web", &["store-1"], AvailabilityRules::default()),
        ))
        .await;
    world.wait_availability("market", sku, 4).await;
    world.wait_availability("web", sku, 6).await;

    // The marketplace offers 4 and sells 5: its buffer was too thin.
    world
        .publish(&channel_fact("m1", sku, "market", sold(5)))
        .await;
    world.wait_availability("market", sku, 0).await;
    world.wait_stock_idle().await;
    world.wait_idle(subjects::ALERTS, "notify-worker").await;
    wait_deliveries_done(&world, &["market-alerts", "web-alerts"]).await;

    let posts = market_hook.received();
    assert_eq!(posts.len(), 1, "one delivery: {posts:?}");
    let post = &posts[0];
    assert_eq!(post.event_type, "channel_oversold");
    assert!((200..300).contains(&post.status));
    let data = &post.body["data"];
    assert_eq!(data["channel"], "market");
    assert_eq!(data["sku"], sku);
    assert_eq!(
        (data["offered"].as_i64(), data["sold"].as_i64()),
        (Some(4), Some(5))
    );
    assert_eq!(data["cause_event_id"], "m1");
    assert_eq!(
        post.body["subject"],
        subjects::alert("channel_oversold", sku).as_str()
    );
    assert!(
        web_hook.received().is_empty(),
        "the web shop oversold nothing"
    );
    market_hook.assert_signatures_verified();
    notify.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_down_for_a_while_gets_the_newest_quantity_of_every_sku_once_back() {
    let world = World::start().await;
    let down = Receiver::failing(503).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{
            "id": "connector", "url": down.url,
            "events": ["channel_availability"], "channels": ["market"],
        }]),
    );
    let stock = world.stock_worker();
    // The breaker has its own test: here every delivery is retried on its own schedule.
    let notify = notify_worker(
        &world,
        &fast(&file, &[("STOCKFLOW_WEBHOOK_BREAKER_FAILURES", "0")]),
    );
    let skus = ["CAP-1", "CAP-2", "CAP-3"];
    for sku in skus {
        world
            .publish(&event(&format!("r-{sku}"), sku, "store-1", received(20)))
            .await;
    }
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "c-market",
            channel("market", &["store-1"], AvailabilityRules::default()),
        ))
        .await;
    for sku in skus {
        world.wait_availability("market", sku, 20).await;
    }
    // While the endpoint is down, every SKU sells three times.
    for round in 1..=3 {
        for sku in skus {
            world
                .publish(&event(&format!("s{round}-{sku}"), sku, "store-1", sold(1)))
                .await;
        }
    }
    let mut newest = HashMap::new();
    for sku in skus {
        world.wait_availability("market", sku, 17).await;
        let feed = world.availability("market", sku).await.expect("feed");
        newest.insert(sku.to_owned(), feed.version);
    }
    world.wait_stock_idle().await;
    world
        .wait_idle(subjects::AVAILABILITY, "notify-worker")
        .await;
    eventually(
        "every queued delivery failed at least once",
        DEADLINE,
        || async {
            let failed: std::collections::HashSet<String> = down
                .received()
                .into_iter()
                .filter(|r| r.status == 503)
                .map(|r| r.event_id)
                .collect();
            let latest: Vec<String> = skus
                .iter()
                .map(|sku| {
                    format!(
                        "ats:market:{}:{}",
                        subjects::encode_token(sku),
                        newest[*sku]
                    )
                })
                .collect();
            latest.iter().all(|id| failed.contains(id)).then_some(())
        },
    )
    .await;
    assert!(down.accepted_ids().is_empty());

    down.answer(204);
    wait_deliveries_done(&world, &["connector"]).await;
    let got = quantities(&down);
    for sku in skus {
        let versions = &got[&("market".to_owned(), sku.to_owned())];
        let newest_delivered = versions.iter().max().expect("delivered");
        assert_eq!(
            *newest_delivered,
            (newest[sku], 17),
            "{sku}: the newest quantity arrives"
        );
    }
    // Whatever was enqueued while it was down was delivered: nothing lost, nothing dead-lettered.
    let failed: std::collections::HashSet<String> = down
        .received()
        .into_iter()
        .filter(|r| r.status == 503)
        .map(|r| r.event_id)
        .collect();
    let accepted = down.accepted_ids();
    assert!(
        failed.is_subset(&accepted),
        "not delivered: {:?}",
        failed.difference(&accepted).collect::<Vec<_>>()
    );
    assert_eq!(
        stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await,
        0,
        "nothing dead-lettered"
    );
    down.assert_signatures_verified();
    notify.shutdown().await;
    stock.shutdown().await;
}
