//! The connector's shops and item mappings kept in NATS KV, against real servers, a real stock
//! worker, a running connector and a local server playing Shopify's documented side: shops and
//! items created with `stockctl connectors …` (the real binary) and through the gateway's admin
//! routes reach the running connector without a restart (a newly mapped SKU gets its quantity
//! pushed; an unmapped one gets no more pushes; a removed shop stops); a CSV import reports its
//! bad rows by line and imports the rest, twice without change; values are refused naming the
//! field (a `STOCKFLOW_…` variable, a base URL with a query among them); a read token gets 403;
//! a shop whose secret variable is not set, or not on `STOCKFLOW_CONNECTOR_SECRET_VARIABLES`, is
//! skipped and reported by name, and its platform hears nothing; no secret value appears in any
//! output. Steps that need a mapping change in force wait for the revision the connector
//! reports. And a dead letter of a message carrying
//! `Nats-Expected-*` headers is stored.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use stockflow_proto::v1::AvailabilityRules;
use stockflow_shared::deadletter::{DeadLetters, Route};
use stockflow_tests::{
    events::{channel, channel_set},
    eventually,
    platforms::FakeShopify,
    DEADLINE,
};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{stockctl, Ran},
    world::*,
};

const SECRET: &str = "shpss_config_secret_value";
const TOKEN: &str = "shpat_config_token_value";
const READ: &str = "read-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const TOKENS: &str = "read:read-token-0123456789,admin:admin-token-0123456789";
const LOCATION: &str = "gid://shopify/Location/1";

/// (SKU, Shopify inventory item, units received at store-1).
const ITEMS: [(&str, &str, i64); 4] = [
    ("TEE", "gid://shopify/InventoryItem/11", 10),
    ("MUG", "gid://shopify/InventoryItem/12", 6),
    ("CAP", "gid://shopify/InventoryItem/13", 4),
    ("BAG", "gid://shopify/InventoryItem/14", 3),
];

/// Every output a test saw, to check no secret is in any.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn ran(&mut self, ran: &Ran) {
        self.0.push(ran.stdout.clone());
        self.0.push(ran.stderr.clone());
    }

    fn body(&mut self, body: &Value) {
        self.0.push(body.to_string());
    }

    fn assert_no_secret(&self) {
        for text in &self.0 {
            assert!(
                !text.contains(SECRET) && !text.contains(TOKEN) && !text.contains(OTHER_TOKEN),
                "a secret value in an output: {text}"
            );
        }
    }
}

struct Gateway {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    running: gateway::Running,
}

impl Gateway {
    async fn start(world: &World) -> Self {
        let settings = gateway::Settings::from_env(&world.env(&[
            ("STOCKFLOW_HTTP_ADDR", "127.0.0.1:0"),
            ("STOCKFLOW_GATEWAY_TOKENS", TOKENS),
        ]))
        .expect("settings");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let running = gateway::start(settings, async move { signal.cancelled().await })
            .await
            .expect("gateway starts");
        Self {
            base: format!("http://{}", running.api_addr),
            http: reqwest::Client::new(),
            stop,
            running,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request.send().await.expect("request")).await
    }

    async fn csv(&self, path: &str, token: &str, text: &str) -> (StatusCode, Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("Content-Type", "text/csv")
            .body(text.to_owned());
        answer(request.send().await.expect("request")).await
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("the gateway stops in time")
            .expect("the gateway stops cleanly");
    }
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A variable set in the connector's environment but not on its allowlist.
const OTHER_TOKEN: &str = "shpat_not_listed_value";

/// A connector started with no shops file: every shop comes from the buckets. It may read
/// `acme`'s secrets and `GHOST_TOKEN`, which is not set; `OTHER_TOKEN` is set but not listed.
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
            "ACME_SECRET,ACME_TOKEN,GHOST_TOKEN",
        ),
        ("ACME_SECRET", SECRET),
        ("ACME_TOKEN", TOKEN),
        ("OTHER_TOKEN", OTHER_TOKEN),
    ]))
    .expect("connector settings");
    assert!(settings.shops.is_empty(), "no shops file");
    RunningWorker::spawn(|shutdown| connector::run(settings, shutdown))
}

/// The newest revision of `CONNECTOR_ITEMS`: that of the test's last write.
async fn items_revision(world: &World) -> u64 {
    connector::config::ConfigStore::open(&world.js)
        .await
        .expect("the connector's buckets")
        .items_revision()
        .await
        .expect("the bucket's revision")
}

/// Waits until the connector has applied `shop`'s mappings up to `revision`.
async fn wait_mappings_applied(world: &World, shop: &str, revision: u64) {
    eventually(
        &format!("{shop}'s mappings applied up to revision {revision}"),
        DEADLINE,
        || async {
            let mut seen = Seen::default();
            let status = status_of(world, &mut seen, shop).await?;
            (status["items_revision"].as_u64()? >= revision).then_some(())
        },
    )
    .await;
}

async fn wait_shopify(shopify: &FakeShopify, sku: &str, quantity: i64) {
    let item = ITEMS.iter().find(|i| i.0 == sku).expect("item").1;
    eventually(
        &format!("Shopify lists {quantity} of {sku}"),
        DEADLINE,
        || async { (shopify.quantity(item, LOCATION) == Some(quantity)).then_some(()) },
    )
    .await;
}

/// `stockctl connectors status -o json`'s entry of `shop`.
async fn status_of(world: &World, seen: &mut Seen, shop: &str) -> Option<Value> {
    let ran = stockctl(world, &["-o", "json", "connectors", "status"]).await;
    seen.ran(&ran);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let report: Value = serde_json::from_str(&ran.stdout).expect("status JSON");
    report["shops"]
        .as_array()
        .expect("shops")
        .iter()
        .find(|s| s["shop"] == shop)
        .cloned()
}

async fn ok(world: &World, seen: &mut Seen, args: &[&str]) -> Ran {
    let ran = stockctl(world, args).await;
    seen.ran(&ran);
    assert_eq!(
        ran.code, 0,
        "stockctl {args:?} failed:\n{}\n{}",
        ran.stdout, ran.stderr
    );
    ran
}

#[tokio::test]
async fn shops_and_items_from_stockctl_and_the_gateway_reach_a_running_connector() {
    let world = World::start().await;
    let _stock = world.stock_worker();
    for (sku, _, units) in ITEMS {
        world
            .publish(&event(&format!("r-{sku}"), sku, "store-1", received(units)))
            .await;
    }
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "c-web",
            channel("web", &["store-1"], AvailabilityRules::default()),
        ))
        .await;
    for (sku, _, units) in ITEMS {
        world.wait_availability("web", sku, units).await;
    }
    let shopify = FakeShopify::start(
        TOKEN,
        1000.0,
        100.0,
        10.0,
        &ITEMS.map(|(_, item, _)| (item, LOCATION, 0)),
    )
    .await;
    let connector = connector(&world);
    let gateway = Gateway::start(&world).await;
    let mut seen = Seen::default();

    // A shop through stockctl, while the connector runs; one SKU mapped through stockctl, one
    // through the gateway: both get their quantity, with no restart.
    let base_url = shopify.url.clone();
    ok(
        &world,
        &mut seen,
        &[
            "connectors",
            "shops",
            "set",
            "acme",
            "--platform",
            "shopify",
            "--channel",
            "web",
            "--base-url",
            &base_url,
            "--webhook-secret-env",
            "ACME_SECRET",
            "--access-token-env",
            "ACME_TOKEN",
        ],
    )
    .await;
    ok(
        &world,
        &mut seen,
        &[
            "connectors",
            "items",
            "set",
            "acme",
            "TEE",
            "--inventory-item-id",
            ITEMS[0].1,
            "--location-id",
            LOCATION,
            "--location",
            "store-1",
        ],
    )
    .await;
    wait_shopify(&shopify, "TEE", 10).await;
    let (status, body) = gateway
        .send(
            reqwest::Method::PUT,
            "/v1/connectors/acme/items/MUG",
            ADMIN,
            Some(&json!({"inventory_item_id": ITEMS[1].1, "location_id": LOCATION})),
        )
        .await;
    seen.body(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["changed"], true);
    wait_shopify(&shopify, "MUG", 6).await;
    let running = eventually("acme is reported running", DEADLINE, || async {
        let mut seen = Seen::default();
        let acme = status_of(&world, &mut seen, "acme").await?;
        (acme["state"] == "running").then_some(acme)
    })
    .await;
    assert_eq!(running["configured"], true);

    // Reads: the shop (variable names, no values) and its items.
    let (status, shop) = gateway
        .send(reqwest::Method::GET, "/v1/connectors/acme", ADMIN, None)
        .await;
    seen.body(&shop);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shop["access_token_env"], "ACME_TOKEN");
    let listed = ok(
        &world,
        &mut seen,
        &["-o", "json", "connectors", "items", "list", "acme"],
    )
    .await;
    let listed: Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let skus: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["sku"].as_str())
        .collect();
    assert_eq!(skus, ["MUG", "TEE"]);

    // Unmapped through the gateway: the till sells a mug and a T-shirt; the T-shirt is pushed,
    // the mug no more.
    let (status, body) = gateway
        .send(
            reqwest::Method::DELETE,
            "/v1/connectors/acme/items/MUG",
            ADMIN,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    eventually("the mapping is gone", DEADLINE, || async {
        let (_, body) = gateway
            .send(
                reqwest::Method::GET,
                "/v1/connectors/acme/items",
                ADMIN,
                None,
            )
            .await;
        (body["items"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    // The connector reports the revision its mappings reached: once it covers the removal, the
    // mug's sale is not pushed.
    let removed_at = items_revision(&world).await;
    wait_mappings_applied(&world, "acme", removed_at).await;
    world
        .publish(&event("pos-1", "TEE", "store-1", sold(1)))
        .await;
    wait_shopify(&shopify, "TEE", 9).await;
    world
        .publish(&event("pos-2", "MUG", "store-1", sold(1)))
        .await;
    world.wait_availability("web", "MUG", 5).await;
    world
        .publish(&event("pos-3", "TEE", "store-1", sold(1)))
        .await;
    wait_shopify(&shopify, "TEE", 8).await;
    eventually("the shop's feed is idle", DEADLINE, || async {
        let mut seen = Seen::default();
        let acme = status_of(&world, &mut seen, "acme").await?;
        (acme["pending"] == 0).then_some(())
    })
    .await;
    assert_eq!(
        shopify.quantity(ITEMS[1].1, LOCATION),
        Some(6),
        "an unmapped SKU is not pushed"
    );

    // A CSV import through stockctl with a bad row (line 3): the rest is imported, the bad row
    // reported by line, exit 3; again, nothing changes.
    let dir = tempfile::tempdir().expect("dir");
    let csv = dir.path().join("items.csv");
    std::fs::write(
        &csv,
        format!(
            "sku,inventory_item_id,location_id,location\nCAP,{},{LOCATION},store-1\nBAD,gid://shopify/Product/1,{LOCATION},\n",
            ITEMS[2].1
        ),
    )
    .expect("csv");
    let csv = csv.to_string_lossy().into_owned();
    let ran = stockctl(&world, &["connectors", "items", "import", "acme", &csv]).await;
    seen.ran(&ran);
    assert_eq!(ran.code, 3, "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout
            .contains("line 3: refused (BAD): inventory_item_id"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("1 imported, 0 unchanged, 1 refused"),
        "{}",
        ran.stdout
    );
    wait_shopify(&shopify, "CAP", 4).await;
    let again = stockctl(
        &world,
        &["-o", "json", "connectors", "items", "import", "acme", &csv],
    )
    .await;
    seen.ran(&again);
    let report: Value = serde_json::from_str(&again.stdout).expect("JSON");
    assert_eq!(report["report"]["imported"], 0, "idempotent");
    assert_eq!(report["report"]["unchanged"], 1);

    // A CSV import through the gateway, with a bad row (line 2: no location GID).
    let (status, body) = gateway
        .csv(
            "/v1/connectors/acme/items",
            ADMIN,
            &format!(
                "sku,inventory_item_id,location_id\nNOPE,{},\nBAG,{},{LOCATION}\n",
                ITEMS[3].1, ITEMS[3].1
            ),
        )
        .await;
    seen.body(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["imported"], 1);
    assert_eq!(body["refused"][0]["line"], 2, "{body}");
    assert!(
        body["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("location_id:")),
        "{body}"
    );
    wait_shopify(&shopify, "BAG", 3).await;

    // Values refused, naming the field.
    for (path, value, field) in [
        (
            "/v1/connectors/acme",
            json!({"platform": "shopify", "channel": "w.b", "base_url": base_url,
                   "webhook_secret_env": "ACME_SECRET", "access_token_env": "ACME_TOKEN"}),
            "channel",
        ),
        (
            "/v1/connectors/acme",
            json!({"platform": "shopify", "channel": "web", "base_url": "https://u:p@acme.example",
                   "webhook_secret_env": "ACME_SECRET", "access_token_env": "ACME_TOKEN"}),
            "base_url",
        ),
        (
            "/v1/connectors/acme",
            json!({"platform": "shopify", "channel": "web", "base_url": base_url,
                   "webhook_secret_env": "ACME_SECRET"}),
            "access_token_env",
        ),
        (
            "/v1/connectors/acme",
            json!({"platform": "shopify", "channel": "web", "base_url": base_url,
                   "webhook_secret_env": "ACME_SECRET", "access_token_env": TOKEN}),
            "access_token_env",
        ),
        // One of stockflow's own settings, which the connector would send to the shop.
        (
            "/v1/connectors/acme",
            json!({"platform": "shopify", "channel": "web", "base_url": "https://attacker.example",
                   "webhook_secret_env": "ACME_SECRET", "access_token_env": "STOCKFLOW_NATS_PASSWORD"}),
            "access_token_env",
        ),
        // WooCommerce's query-string auth in the URL.
        (
            "/v1/connectors/acme",
            json!({"platform": "shopify", "channel": "web",
                   "base_url": "https://acme.example/?consumer_key=ck_1&consumer_secret=cs_2",
                   "webhook_secret_env": "ACME_SECRET", "access_token_env": "ACME_TOKEN"}),
            "base_url",
        ),
        (
            "/v1/connectors/acme/items/HAT",
            json!({"inventory_item_id": "gid://shopify/InventoryItem/x", "location_id": LOCATION}),
            "inventory_item_id",
        ),
        (
            "/v1/connectors/acme/items/HAT",
            json!({"product_id": 5}),
            "inventory_item_id",
        ),
    ] {
        let (status, body) = gateway
            .send(reqwest::Method::PUT, path, ADMIN, Some(&value))
            .await;
        seen.body(&body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {value}: {body}");
        assert_eq!(body["field"], field, "{path} {value}: {body}");
    }
    let refused = stockctl(
        &world,
        &[
            "connectors",
            "items",
            "set",
            "acme",
            "HAT",
            "--inventory-item-id",
            ITEMS[0].1,
        ],
    )
    .await;
    seen.ran(&refused);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("location_id"), "{}", refused.stderr);
    let missing = stockctl(&world, &["connectors", "shops", "show", "nobody"]).await;
    assert_eq!(missing.code, 5, "{}", missing.stderr);

    // A read token may not see or change the configuration.
    for (method, path, body) in [
        (reqwest::Method::GET, "/v1/connectors/acme", None),
        (reqwest::Method::GET, "/v1/connectors/acme/items", None),
        (
            reqwest::Method::PUT,
            "/v1/connectors/acme/items/HAT",
            Some(json!({"inventory_item_id": ITEMS[0].1, "location_id": LOCATION})),
        ),
        (reqwest::Method::DELETE, "/v1/connectors/acme", None),
    ] {
        let (status, _) = gateway.send(method, path, READ, body.as_ref()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }

    // A shop whose token variable is not set: skipped and reported by the variable's name; acme
    // keeps running.
    let (status, body) = gateway
        .send(
            reqwest::Method::PUT,
            "/v1/connectors/ghost",
            ADMIN,
            Some(
                &json!({"platform": "shopify", "channel": "web", "base_url": base_url,
                "webhook_secret_env": "ACME_SECRET", "access_token_env": "GHOST_TOKEN"}),
            ),
        )
        .await;
    seen.body(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    let ghost = eventually("ghost is reported skipped", DEADLINE, || async {
        let mut seen = Seen::default();
        let ghost = status_of(&world, &mut seen, "ghost").await?;
        (ghost["state"] == "skipped").then_some(ghost)
    })
    .await;
    assert_eq!(
        ghost["problem"], "access_token_env: the variable GHOST_TOKEN is not set",
        "{ghost}"
    );
    let table = ok(&world, &mut seen, &["connectors", "status"]).await;
    assert!(
        table
            .stdout
            .contains("ghost: skipped: access_token_env: the variable GHOST_TOKEN"),
        "{}",
        table.stdout
    );
    // A shop naming a variable that is set but not on the allowlist: skipped, reported by the
    // variable's name, and its platform never hears from the connector.
    let stranger = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let stranger_url = format!("http://{}", stranger.local_addr().expect("address"));
    let (status, body) = gateway
        .send(
            reqwest::Method::PUT,
            "/v1/connectors/stranger",
            ADMIN,
            Some(
                &json!({"platform": "shopify", "channel": "web", "base_url": stranger_url,
                "webhook_secret_env": "ACME_SECRET", "access_token_env": "OTHER_TOKEN"}),
            ),
        )
        .await;
    seen.body(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = gateway
        .send(
            reqwest::Method::PUT,
            "/v1/connectors/stranger/items/TEE",
            ADMIN,
            Some(&json!({"inventory_item_id": ITEMS[0].1, "location_id": LOCATION})),
        )
        .await;
    seen.body(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    let stranger_at = items_revision(&world).await;
    wait_mappings_applied(&world, "stranger", stranger_at).await;
    let skipped = eventually("stranger is reported skipped", DEADLINE, || async {
        let mut seen = Seen::default();
        let shop = status_of(&world, &mut seen, "stranger").await?;
        (shop["state"] == "skipped").then_some(shop)
    })
    .await;
    assert_eq!(
        skipped["problem"],
        "access_token_env: the variable OTHER_TOKEN is not on STOCKFLOW_CONNECTOR_SECRET_VARIABLES (nor named by the shops file)",
        "{skipped}"
    );
    assert!(
        futures::FutureExt::now_or_never(stranger.accept()).is_none(),
        "the connector called a shop it skipped"
    );
    let (_, listed) = gateway
        .send(reqwest::Method::GET, "/v1/connectors", ADMIN, None)
        .await;
    seen.body(&listed);
    assert!(!listed.to_string().contains(OTHER_TOKEN), "{listed}");
    world
        .publish(&event("pos-4", "TEE", "store-1", sold(1)))
        .await;
    wait_shopify(&shopify, "TEE", 7).await;

    // Removed through stockctl: the connector stops the shop and deletes its consumer.
    ok(
        &world,
        &mut seen,
        &["connectors", "shops", "remove", "acme"],
    )
    .await;
    let removed = ok(&world, &mut seen, &["connectors", "shops", "list"]).await;
    assert!(!removed.stdout.contains("acme"), "{}", removed.stdout);
    eventually("acme's consumer is deleted", DEADLINE, || async {
        let mut seen = Seen::default();
        status_of(&world, &mut seen, "acme")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    for args in [
        &["connectors", "shops", "list"][..],
        &["-o", "json", "connectors", "shops", "list"],
        &["connectors", "shops", "show", "ghost"],
        &["-o", "json", "connectors", "status"],
    ] {
        ok(&world, &mut seen, args).await;
    }
    seen.assert_no_secret();
    gateway.stop().await;
    connector.shutdown().await;
}

/// A message stored with a publish condition (`Nats-Expected-Last-Subject-Sequence`, as the
/// availability feed's are) is dead-lettered with its other headers, not refused by
/// `DEAD_LETTERS`.
#[tokio::test]
async fn a_dead_letter_drops_the_publish_conditions_of_its_original() {
    let world = World::start().await;
    let js = &world.js;
    js.create_stream(jetstream::stream::Config {
        name: "DL_CONDITIONS".into(),
        subjects: vec!["dlcond.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    js.publish("dlcond.a", "first".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", "1");
    headers.insert("Stockflow-Test", "kept");
    js.publish_with_headers("dlcond.a", headers, "second".into())
        .await
        .expect("publish")
        .await
        .expect("stored under its condition");
    let stream = js.get_stream("DL_CONDITIONS").await.expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "dlcond.a".into(),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(2)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let mut second = None;
    while let Some(message) = messages.next().await {
        let message = message.expect("message");
        if message.payload.as_ref() == b"second" {
            second = Some(message);
        }
    }
    let second = second.expect("the conditioned message");
    DeadLetters::new(js.clone())
        .store_with(
            &second,
            "test",
            Route {
                subject: Some("deadletter.connectors.test".into()),
                message_id: None,
                headers: vec![],
            },
        )
        .await
        .expect("the dead letter is stored");
    let letters = js
        .get_stream(stockflow_proto::subjects::DEAD_LETTERS)
        .await
        .expect("DEAD_LETTERS");
    let letter = letters
        .get_last_raw_message_by_subject("deadletter.connectors.test")
        .await
        .expect("stored");
    let headers = letter.headers;
    assert_eq!(
        headers.get("Stockflow-Test").map(|v| v.as_str()),
        Some("kept")
    );
    assert!(headers.get("Nats-Expected-Last-Subject-Sequence").is_none());
}
