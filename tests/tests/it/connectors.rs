//! Connectors against local servers that play Shopify's and WooCommerce's documented side: a
//! store chain sells on its Shopify shop, its WooCommerce shop and at the till at once; orders
//! come in once however often the platforms retry; every shop ends with its channel's quantity
//! after throttles, a stale compare (a merchant's edit in Shopify), a connector restart and an
//! outage; a push still failing past the retry horizon (a moved clock) is dead-lettered, and its
//! replay pushes the SKU's newest quantity.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use stockflow_proto::{subjects, v1::AvailabilityRules};
use stockflow_tests::{
    count,
    events::{channel, channel_set},
    eventually, free_port,
    platforms::{sign, FakeShopify, FakeWoo},
    DEADLINE,
};

use crate::world::*;

const SHOPIFY_SECRET: &str = "shpss_test_secret";
const SHOPIFY_TOKEN: &str = "shpat_test_token";
const WOO_SECRET: &str = "woo-webhook-secret";
const WOO_KEY: &str = "ck_test";
const WOO_CS: &str = "cs_test";

/// (SKU, Shopify inventory item, WooCommerce product, units received at store-1).
const ITEMS: [(&str, &str, u64, i64); 3] = [
    ("TEE-M", "gid://shopify/InventoryItem/1", 101, 10),
    ("MUG", "gid://shopify/InventoryItem/2", 102, 6),
    ("CAP", "gid://shopify/InventoryItem/3", 103, 4),
];
const LOCATION: &str = "gid://shopify/Location/1";

struct Chain {
    world: World,
    stock: RunningWorker,
    shopify: FakeShopify,
    woo: FakeWoo,
    shops_file: String,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    /// Seconds the connector's clock is ahead of the system's.
    offset: Arc<AtomicU64>,
    http: reqwest::Client,
}

impl Chain {
    /// Stock at store-1, a `web` channel sold through the Shopify shop `acme` and a `market`
    /// channel sold through the WooCommerce shop `corner`, both on store-1; the shops start at 0.
    /// Shopify's budget is tiny (20 points, 5 restored per second, 10 per call), so the
    /// connector's first calls are throttled.
    async fn start() -> Self {
        let world = World::start().await;
        let stock = world.stock_worker();
        for (sku, _, _, units) in ITEMS {
            world
                .publish(&event(&format!("r-{sku}"), sku, "store-1", received(units)))
                .await;
        }
        world.wait_stock_idle().await;
        for (id, name) in [("c-web", "web"), ("c-market", "market")] {
            world
                .publish_channel(&channel_set(
                    id,
                    channel(name, &["store-1"], AvailabilityRules::default()),
                ))
                .await;
        }
        for (sku, _, _, units) in ITEMS {
            world.wait_availability("web", sku, units).await;
            world.wait_availability("market", sku, units).await;
        }
        let shopify = FakeShopify::start(
            SHOPIFY_TOKEN,
            20.0,
            5.0,
            10.0,
            &ITEMS.map(|(_, item, _, _)| (item, LOCATION, 0)),
        )
        .await;
        let woo = FakeWoo::start(WOO_KEY, WOO_CS, &ITEMS.map(|(_, _, id, _)| (id, 0))).await;
        let dir = tempfile::tempdir().expect("dir");
        let shops = serde_json::json!({"shops": [
            {"id": "acme", "platform": "shopify", "channel": "web", "base_url": shopify.url,
             "webhook_secret_env": "ACME_SECRET", "access_token_env": "ACME_TOKEN",
             "items": ITEMS.map(|(sku, item, _, _)| serde_json::json!(
                {"sku": sku, "inventory_item_id": item, "location_id": LOCATION, "location": "store-1"}))},
            {"id": "corner", "platform": "woocommerce", "channel": "market", "base_url": woo.url,
             "webhook_secret_env": "CORNER_SECRET", "consumer_key_env": "CORNER_KEY",
             "consumer_secret_env": "CORNER_CS",
             "items": ITEMS.map(|(sku, _, id, _)| serde_json::json!({"sku": sku, "product_id": id}))},
        ]});
        let file = dir.path().join("shops.json");
        std::fs::write(&file, shops.to_string()).expect("shops file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self {
            world,
            stock,
            shopify,
            woo,
            shops_file: file.to_string_lossy().into_owned(),
            _dir: dir,
            addr,
            offset: Arc::new(AtomicU64::new(0)),
            http: reqwest::Client::new(),
        }
    }

    fn connector(&self) -> RunningWorker {
        let addr = self.addr.to_string();
        let mut settings = connector::Settings::from_env(&self.world.env(&[
            ("STOCKFLOW_CONNECTOR_SHOPS_FILE", self.shops_file.as_str()),
            ("STOCKFLOW_CONNECTOR_ADDR", addr.as_str()),
            ("STOCKFLOW_ACK_WAIT_SECONDS", "5"),
            ("STOCKFLOW_CONNECTOR_TIMEOUT_MILLIS", "2000"),
            ("STOCKFLOW_CONNECTOR_BACKOFF_FLOOR_MILLIS", "20"),
            ("STOCKFLOW_CONNECTOR_BACKOFF_CEILING_MILLIS", "200"),
            ("STOCKFLOW_CONNECTOR_BATCH_MILLIS", "20"),
            ("STOCKFLOW_CONNECTOR_RETRY_HORIZON_SECONDS", "3600"),
            ("ACME_SECRET", SHOPIFY_SECRET),
            ("ACME_TOKEN", SHOPIFY_TOKEN),
            ("CORNER_SECRET", WOO_SECRET),
            ("CORNER_KEY", WOO_KEY),
            ("CORNER_CS", WOO_CS),
        ]))
        .expect("connector settings");
        let offset = self.offset.clone();
        settings.clock = connector::Clock::from_fn(move || {
            SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst))
        });
        RunningWorker::spawn(|shutdown| connector::run(settings, shutdown))
    }

    /// POSTs a webhook signed with `secret` (or a wrong one) and returns the status.
    async fn webhook(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
        secret: &str,
        signature_header: &str,
    ) -> u16 {
        let body = body.to_string();
        let url = format!("http://{}{path}", self.addr);
        eventually("the connector answers", DEADLINE, || async {
            let mut request = self
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .header(signature_header, sign(secret, body.as_bytes()));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request
                .body(body.clone())
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        })
        .await
    }

    async fn shopify_order(
        &self,
        topic: &str,
        webhook_id: &str,
        body: &serde_json::Value,
        secret: &str,
    ) -> u16 {
        self.webhook(
            "/webhooks/shopify/acme",
            &[
                ("X-Shopify-Topic", topic),
                ("X-Shopify-Webhook-Id", webhook_id),
                ("X-Shopify-Shop-Domain", "acme.myshopify.com"),
            ],
            body,
            secret,
            "X-Shopify-Hmac-Sha256",
        )
        .await
    }

    async fn wait_shopify(&self, sku: &str, quantity: i64) {
        let item = ITEMS.iter().find(|i| i.0 == sku).expect("item").1;
        eventually(
            &format!("Shopify lists {quantity} of {sku}"),
            DEADLINE,
            || async { (self.shopify.quantity(item, LOCATION) == Some(quantity)).then_some(()) },
        )
        .await;
    }

    async fn wait_woo(&self, sku: &str, quantity: i64) {
        let id = ITEMS.iter().find(|i| i.0 == sku).expect("item").2;
        eventually(
            &format!("WooCommerce lists {quantity} of {sku}"),
            DEADLINE,
            || async { (self.woo.stock(id) == Some(quantity)).then_some(()) },
        )
        .await;
    }

    async fn wait_both(&self, sku: &str, quantity: i64) {
        self.wait_shopify(sku, quantity).await;
        self.wait_woo(sku, quantity).await;
    }
}

#[tokio::test]
async fn a_chain_sells_on_shopify_woocommerce_and_the_till_at_once_and_every_shop_ends_right() {
    let chain = Chain::start().await;
    let connector = chain.connector();
    for (sku, _, _, units) in ITEMS {
        chain.wait_both(sku, units).await;
    }
    assert!(
        chain.shopify.state().throttled > 0,
        "the first calls exceeded the budget and were throttled, then resumed"
    );

    // All at once: a Shopify order (Shopify takes the units itself), a WooCommerce order
    // (likewise), a sale at the till.
    chain.shopify.edit(ITEMS[0].1, LOCATION, 8);
    let order = serde_json::json!({"id": 5_001_u64, "name": "#1001", "line_items": [
        {"id": 77_001_u64, "sku": "TEE-M", "quantity": 2, "variant_id": 9}]});
    chain.woo.state().stock.insert(102, 5);
    let woo_order = serde_json::json!({"id": 727, "status": "processing", "line_items": [
        {"id": 315, "sku": "MUG", "quantity": 1, "product_id": 102}]});
    let till = event("pos-1", "CAP", "store-1", sold(1));
    let (a, b, c, d) = tokio::join!(
        chain.shopify_order("orders/create", "w-1", &order, SHOPIFY_SECRET),
        chain.webhook(
            "/webhooks/woocommerce/corner",
            &[
                ("X-WC-Webhook-Topic", "order.created"),
                ("X-WC-Webhook-Delivery-ID", "d-1")
            ],
            &woo_order,
            WOO_SECRET,
            "X-WC-Webhook-Signature"
        ),
        chain.world.publish(&till),
        // Shopify retries the same delivery, and re-sends the order under a new webhook id.
        async {
            (
                chain
                    .shopify_order("orders/create", "w-1", &order, SHOPIFY_SECRET)
                    .await,
                chain
                    .shopify_order("orders/create", "w-2", &order, SHOPIFY_SECRET)
                    .await,
            )
        },
    );
    assert_eq!((a, b, c, d), (200, 200, (), (200, 200)));
    assert_eq!(
        chain
            .shopify_order("orders/create", "w-3", &order, "not-the-secret")
            .await,
        401,
        "a bad HMAC is refused"
    );
    chain.world.wait_on_hand("TEE-M", "store-1", 8).await;
    chain.world.wait_on_hand("MUG", "store-1", 5).await;
    chain.world.wait_on_hand("CAP", "store-1", 3).await;
    for (sku, quantity) in [("TEE-M", 8), ("MUG", 5), ("CAP", 3)] {
        chain.wait_both(sku, quantity).await;
    }

    // A merchant counts 9 mugs in the Shopify admin; then the till sells one. The compare is
    // stale: the connector re-reads 9, books the +4 at store-1, and pushes the new quantity.
    chain.shopify.edit(ITEMS[1].1, LOCATION, 9);
    chain
        .world
        .publish(&event("pos-2", "MUG", "store-1", sold(1)))
        .await;
    eventually("the compare is found stale", DEADLINE, || async {
        (chain.shopify.state().stale >= 1).then_some(())
    })
    .await;
    chain.world.wait_on_hand("MUG", "store-1", 8).await;
    chain.wait_both("MUG", 8).await;
    assert!(
        chain.shopify.state().stale >= 1,
        "the edit was found by the compare"
    );

    // A refund with restock comes back through both webhooks that carry it: one return.
    chain.shopify.edit(ITEMS[0].1, LOCATION, 9);
    let refund = serde_json::json!({"id": 900, "order_id": 5_001_u64, "refund_line_items": [
        {"id": 61, "quantity": 1, "restock_type": "return",
         "line_item": {"id": 77_001_u64, "sku": "TEE-M", "quantity": 2}}]});
    let cancelled = serde_json::json!({"id": 5_001_u64, "line_items": [], "refunds": [refund]});
    assert_eq!(
        chain
            .shopify_order("refunds/create", "w-4", &refund, SHOPIFY_SECRET)
            .await,
        200
    );
    assert_eq!(
        chain
            .shopify_order("orders/cancelled", "w-5", &cancelled, SHOPIFY_SECRET)
            .await,
        200
    );
    chain.world.wait_on_hand("TEE-M", "store-1", 9).await;
    chain.wait_both("TEE-M", 9).await;

    chain.world.wait_stock_idle().await;
    let ledger = chain.world.ledger("TEE-M").await;
    let shopify_entries: Vec<_> = ledger
        .iter()
        .filter(|e| e.cause_event_id.starts_with("shopify:acme:"))
        .map(|e| e.cause_event_id.as_str())
        .collect();
    assert_eq!(
        shopify_entries,
        vec![
            "shopify:acme:5001:77001:sold",
            "shopify:acme:5001:refund-line:61:returned"
        ],
        "one sale and one return, whatever the retries"
    );
    let pushed = chain.shopify.state().pushes.clone();
    assert!(pushed.iter().all(|p| p
        .reference
        .starts_with("stockflow://connector/acme/availability/web/")));
    assert!(
        pushed.iter().all(|p| p
            .items
            .iter()
            .all(|(item, _)| item.starts_with("gid://shopify/InventoryItem/"))),
        "{pushed:?}"
    );
    connector.shutdown().await;
    chain.stock.shutdown().await;
}

#[tokio::test]
async fn a_shop_that_is_down_delays_only_itself_and_gets_one_push_per_changed_item_after_a_restart()
{
    let chain = Chain::start().await;
    let connector = chain.connector();
    for (sku, _, _, units) in ITEMS {
        chain.wait_both(sku, units).await;
    }
    chain.shopify.state().down = true;
    for (id, sku, change) in [
        ("o1", "CAP", sold(1)),
        ("o2", "CAP", sold(1)),
        ("o3", "CAP", received(5)),
        ("o4", "TEE-M", sold(1)),
        ("o5", "TEE-M", sold(1)),
    ] {
        chain
            .world
            .publish(&event(id, sku, "store-1", change))
            .await;
    }
    // The WooCommerce shop is not held up by the Shopify one.
    chain.wait_woo("CAP", 7).await;
    chain.wait_woo("TEE-M", 8).await;
    eventually("pushes to the shop that is down fail", DEADLINE, || async {
        (chain.shopify.state().refused_while_down >= 3).then_some(())
    })
    .await;
    // A restart while it is down loses nothing: the pushes are pending in the shop's consumer.
    connector.shutdown().await;
    let before = chain.shopify.state().refused_while_down;
    let connector = chain.connector();
    eventually("the restarted connector tries again", DEADLINE, || async {
        (chain.shopify.state().refused_while_down > before).then_some(())
    })
    .await;
    let applied_before = chain.shopify.state().pushes.len();
    chain.shopify.state().down = false;
    chain.wait_shopify("CAP", 7).await;
    chain.wait_shopify("TEE-M", 8).await;
    chain
        .world
        .wait_idle(subjects::AVAILABILITY, "connector-acme")
        .await;
    let after: Vec<(String, i64)> = chain.shopify.state().pushes[applied_before..]
        .iter()
        .flat_map(|p| p.items.clone())
        .collect();
    let mut items: Vec<&str> = after.iter().map(|(i, _)| i.as_str()).collect();
    items.sort_unstable();
    assert_eq!(
        items,
        vec![ITEMS[0].1, ITEMS[2].1],
        "one push per changed item, the newest quantity: {after:?}"
    );

    // Down again, and a push still failing past the retry horizon (an hour, on a clock moved
    // two hours on) is dead-lettered, replayable.
    chain.shopify.state().down = true;
    chain
        .world
        .publish(&event("o6", "CAP", "store-1", sold(1)))
        .await;
    chain.wait_woo("CAP", 6).await;
    let refused = chain.shopify.state().refused_while_down;
    eventually("the push fails", DEADLINE, || async {
        (chain.shopify.state().refused_while_down > refused).then_some(())
    })
    .await;
    chain.offset.store(2 * 3600, Ordering::SeqCst);
    eventually(
        "the push past the horizon is dead-lettered",
        DEADLINE,
        || async {
            (count(
                &chain.world.js,
                subjects::DEAD_LETTERS,
                "deadletter.connectors.acme",
            )
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
    // Once the shop is back, replaying the dead letter pushes the SKU's newest quantity.
    chain.shopify.state().down = false;
    let letters = stockflow_shared::replay::list_all(&chain.world.js)
        .await
        .expect("dead letters");
    let letter = letters
        .iter()
        .find(|l| l.subject == "deadletter.connectors.acme")
        .expect("the connector's dead letter");
    assert!(
        letter.reason().contains("retry horizon"),
        "{}",
        letter.reason()
    );
    let replayed = stockflow_shared::replay::replay(&chain.world.js, letter)
        .await
        .expect("replayed");
    assert_eq!(replayed.kind, stockflow_shared::replay::Kind::ConnectorPush);
    assert_eq!(
        replayed.subject,
        subjects::connector_retry("acme", &subjects::encode_token("CAP"))
    );
    chain.wait_shopify("CAP", 6).await;

    // What an operator sees: both shops, nothing left in DEAD_LETTERS; a shops file whose
    // secrets are not in the environment is refused, naming the variable.
    let status = crate::cli::stockctl(&chain.world, &["-o", "json", "connectors", "status"]).await;
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    let shops: Vec<&str> = status["shops"]
        .as_array()
        .expect("shops")
        .iter()
        .map(|s| s["shop"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(shops, vec!["acme", "corner"]);
    assert!(status["shops"]
        .as_array()
        .expect("shops")
        .iter()
        .all(|s| s["dead_letters"] == 0));
    let check =
        crate::cli::stockctl(&chain.world, &["connectors", "check", &chain.shops_file]).await;
    assert_ne!(check.code, 0);
    assert!(
        check.stderr.contains("the variable ACME_SECRET is not set"),
        "{}",
        check.stderr
    );
    connector.shutdown().await;
    chain.stock.shutdown().await;
}

/// The AVAILABILITY messages the shop's consumer has not handed out yet.
async fn undelivered(chain: &Chain, durable: &str) -> u64 {
    let stream = chain
        .world
        .js
        .get_stream(subjects::AVAILABILITY)
        .await
        .expect("stream");
    let info = stream.consumer_info(durable).await.expect("consumer info");
    info.num_pending
}

#[tokio::test]
async fn a_sku_changing_again_while_its_push_is_in_flight_books_no_edit_and_ends_newest() {
    let chain = Chain::start().await;
    let connector = chain.connector();
    for (sku, _, _, units) in ITEMS {
        chain.wait_shopify(sku, units).await;
    }
    chain
        .world
        .wait_idle(subjects::AVAILABILITY, "connector-acme")
        .await;
    // The first change's push is held in flight; the second change is handled meanwhile.
    chain.shopify.hold(true);
    chain
        .world
        .publish(&event("h1", "MUG", "store-1", sold(1)))
        .await;
    eventually("the first push is in flight", DEADLINE, || async {
        (chain.shopify.state().held >= 1).then_some(())
    })
    .await;
    chain
        .world
        .publish(&event("h2", "MUG", "store-1", sold(1)))
        .await;
    chain.world.wait_availability("web", "MUG", 4).await;
    eventually("the second change is handed out", DEADLINE, || async {
        (undelivered(&chain, "connector-acme").await == 0).then_some(())
    })
    .await;
    chain.shopify.hold(false);
    chain.wait_shopify("MUG", 4).await;
    chain
        .world
        .wait_idle(subjects::AVAILABILITY, "connector-acme")
        .await;
    chain.world.wait_stock_idle().await;
    // The second push compared against what the first one set: no stale compare, and nothing
    // booked as a merchant's edit (on-hand is the 6 received less the 2 sold).
    assert_eq!(chain.shopify.state().stale, 0, "no stale compare");
    assert_eq!(chain.world.on_hand_reserved("MUG", "store-1").await.0, 4);
    assert_eq!(chain.shopify.quantity(ITEMS[1].1, LOCATION), Some(4));
    connector.shutdown().await;
    chain.stock.shutdown().await;
}

/// Pauses (or resumes) a durable consumer on `AVAILABILITY` (JetStream's consumer pause): it
/// delivers nothing while paused.
async fn pause(chain: &Chain, durable: &str, on: bool) {
    let body = if on {
        serde_json::json!({"pause_until": "2999-01-01T00:00:00Z"})
    } else {
        serde_json::json!({})
    };
    let answer: serde_json::Value = chain
        .world
        .js
        .request(
            format!("CONSUMER.PAUSE.{}.{durable}", subjects::AVAILABILITY),
            &body,
        )
        .await
        .expect("pause request");
    assert_eq!(answer["paused"], on, "{answer}");
}

#[tokio::test]
async fn a_shop_order_superseded_by_a_newer_change_is_counted_once() {
    let mut chain = Chain::start().await;
    let connector = chain.connector();
    for (sku, _, _, units) in ITEMS {
        chain.wait_shopify(sku, units).await;
    }
    chain
        .world
        .wait_idle(subjects::AVAILABILITY, "connector-acme")
        .await;
    // A Shopify order (Shopify takes the unit itself), then a sale at the till, while the shop's
    // consumer is paused: the order's availability change is superseded by the till's before
    // the connector sees it.
    pause(&chain, "connector-acme", true).await;
    let stopped = RunningWorker::spawn(|shutdown| async move {
        shutdown.await;
        Ok(())
    });
    std::mem::replace(&mut chain.stock, stopped)
        .shutdown()
        .await;
    chain.shopify.edit(ITEMS[1].1, LOCATION, 5);
    let order = serde_json::json!({"id": 6_001_u64, "name": "#2001", "line_items": [
        {"id": 88_001_u64, "sku": "MUG", "quantity": 1, "variant_id": 9}]});
    assert_eq!(
        chain
            .shopify_order("orders/create", "w-s1", &order, SHOPIFY_SECRET)
            .await,
        200
    );
    chain
        .world
        .publish(&event("pos-s1", "MUG", "store-1", sold(1)))
        .await;
    chain.stock = chain.world.stock_worker();
    chain.world.wait_on_hand("MUG", "store-1", 4).await;
    chain.world.wait_availability("web", "MUG", 4).await;
    pause(&chain, "connector-acme", false).await;
    chain.wait_shopify("MUG", 4).await;
    chain
        .world
        .wait_idle(subjects::AVAILABILITY, "connector-acme")
        .await;
    chain.world.wait_stock_idle().await;
    // The push compared against 5 (the order moved what the connector knew): the sale is not
    // taken for a merchant's edit and counted a second time.
    assert_eq!(chain.shopify.state().stale, 0, "no stale compare");
    assert_eq!(chain.world.on_hand_reserved("MUG", "store-1").await.0, 4);
    assert_eq!(chain.shopify.quantity(ITEMS[1].1, LOCATION), Some(4));
    connector.shutdown().await;
    chain.stock.shutdown().await;
}

#[tokio::test]
async fn an_order_line_the_contract_refuses_is_skipped_and_the_others_are_stored() {
    let chain = Chain::start().await;
    let connector = chain.connector();
    let order = serde_json::json!({"id": 7_001_u64, "name": "#3001", "line_items": [
        {"id": 99_001_u64, "sku": "MUG", "quantity": 2_000_000_000_i64, "variant_id": 9},
        {"id": 99_002_u64, "sku": "CAP", "quantity": 1, "variant_id": 9}]});
    assert_eq!(
        chain
            .shopify_order("orders/create", "w-i1", &order, SHOPIFY_SECRET)
            .await,
        200,
        "answered 200, so Shopify does not retry it until it drops the subscription"
    );
    chain.world.wait_on_hand("CAP", "store-1", 3).await;
    chain.world.wait_stock_idle().await;
    assert_eq!(chain.world.on_hand_reserved("MUG", "store-1").await.0, 6);
    connector.shutdown().await;
    chain.stock.shutdown().await;
}
