//! The HTTP gateway against real servers: a real listener on 127.0.0.1, a real HTTP client,
//! real nats-server, redis-server and workers.

use reqwest::StatusCode;
use serde_json::{json, Value};
use stockflow_proto::subjects;
use stockflow_tests::{count, eventually, DEADLINE};
use tokio_util::sync::CancellationToken;

use crate::world::*;

const READ: &str = "read-token-0123456789";
const WRITE: &str = "write-token-0123456789";
const TOKENS: &str =
    "read:read-token-0123456789,write:write-token-0123456789,admin:admin-token-0123456789";

/// A gateway running inside the test process, and a client for it.
struct Gateway {
    base: String,
    metrics: String,
    http: reqwest::Client,
    stop: CancellationToken,
    running: gateway::Running,
}

impl Gateway {
    async fn start(world: &World, extra: &[(&str, &str)]) -> Self {
        let mut pairs = vec![
            ("STOCKFLOW_HTTP_ADDR", "127.0.0.1:0"),
            ("STOCKFLOW_GATEWAY_TOKENS", TOKENS),
            ("STOCKFLOW_GATEWAY_PUBLISH_TIMEOUT_SECONDS", "1"),
        ];
        pairs.extend_from_slice(extra);
        let settings = gateway::Settings::from_env(&world.env(&pairs)).expect("settings");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let running = gateway::start(settings, async move { signal.cancelled().await })
            .await
            .expect("gateway starts");
        Self {
            base: format!("http://{}", running.api_addr),
            metrics: format!("http://{}", running.metrics_addr),
            http: reqwest::Client::new(),
            stop,
            running,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` as JSON with a token and an optional idempotency key.
    async fn post(
        &self,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url(path)).bearer_auth(token).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        answer(request.send().await.expect("request")).await
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        answer(
            self.http
                .get(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .expect("request"),
        )
        .await
    }

    async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("gateway stops in time")
            .expect("gateway ends cleanly");
    }
}

async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// `stockflow_http_requests_total{route="/v1/stock/events",status="202"}`, 0 when absent.
fn accepted_posts(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                r#"stockflow_http_requests_total{route="/v1/stock/events",status="202"} "#,
            )
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn received_json(sku: &str, location: &str, quantity: i64) -> Value {
    json!({"type": "received", "sku": sku, "location": location, "quantity": quantity})
}

#[tokio::test]
async fn tokens_are_required_and_scopes_enforced() {
    let world = World::start().await;
    let gw = Gateway::start(&world, &[]).await;
    let body = received_json("AUTH-1", "wh", 1);

    let missing = gw
        .http
        .post(gw.url("/v1/stock/events"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let (_, error) = answer(missing).await;
    assert_eq!(error["error"], "unauthorized");

    let (status, error) = gw
        .post(
            "/v1/stock/events",
            "not-a-token-0123456789",
            Some("k"),
            &body,
        )
        .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );

    let (status, error) = gw.post("/v1/stock/events", READ, Some("k"), &body).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await,
        0,
        "refused requests publish nothing"
    );

    // A read token reads; the write token includes read.
    let (status, error) = gw.get("/v1/stock/AUTH-1", READ).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert_eq!(
        gw.get("/v1/stock/AUTH-1", WRITE).await.0,
        StatusCode::NOT_FOUND
    );

    // Every operation in the OpenAPI document is served and guarded: without a token it is
    // 401, never 404 or 405; the document itself needs none.
    let doc = gw
        .http
        .get(gw.url("/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(doc.status(), StatusCode::OK);
    let doc: Value = doc.json().await.expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 8);
    for (path, item) in paths {
        if path == "/openapi.json" {
            continue;
        }
        let concrete = path
            .replace("{sku}", "S1")
            .replace("{location}", "wh")
            .replace("{order_id}", "o-1");
        for method in ["get", "post"] {
            if item.get(method).is_none() {
                continue;
            }
            let request = if method == "get" {
                gw.http.get(gw.url(&concrete))
            } else {
                gw.http.post(gw.url(&concrete)).json(&json!({}))
            };
            let status = request.send().await.expect("request").status();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_input_names_the_field_and_oversized_bodies_get_413() {
    let world = World::start().await;
    let gw = Gateway::start(&world, &[("STOCKFLOW_GATEWAY_BODY_LIMIT_BYTES", "2048")]).await;
    let cases = [
        (
            json!({"type": "received", "sku": "V1", "location": "wh", "quantity": 0}),
            Some("k1"),
            "quantity",
        ),
        (
            json!({"type": "received", "sku": "", "location": "wh", "quantity": 1}),
            Some("k2"),
            "sku",
        ),
        (
            json!({"type": "received", "sku": "V1", "quantity": 1}),
            Some("k3"),
            "location",
        ),
        (
            json!({"type": "teleported", "sku": "V1", "location": "wh"}),
            Some("k4"),
            "type",
        ),
        (
            json!({"type": "adjusted", "sku": "V1", "location": "wh", "delta": "many"}),
            Some("k5"),
            "delta",
        ),
        (
            json!({"type": "received", "sku": "V1", "location": "wh", "quantity": 1}),
            None,
            "event_id",
        ),
        (
            json!([{"type": "sold", "sku": "V1", "location": "wh", "quantity": 1},
                   {"type": "sold", "sku": "V1", "location": "wh", "quantity": -3}]),
            Some("b"),
            "[1].quantity",
        ),
    ];
    for (body, key, field) in cases {
        let (status, error) = gw.post("/v1/stock/events", WRITE, key, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["error"], "invalid_input", "{error}");
        assert_eq!(error["field"], field, "{body}: {error}");
    }
    let (status, error) = gw
        .post(
            "/v1/orders",
            WRITE,
            Some("p"),
            &json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "V1", "quantity": 2_000_000}]}),
        )
        .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("quantity")),
        "{error}"
    );
    let (status, error) = gw
        .post(
            "/v1/orders?wait=soon",
            WRITE,
            Some("p"),
            &json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "V1", "quantity": 1}]}),
        )
        .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("wait")),
        "{error}"
    );

    let big = json!({"type": "received", "sku": "V1", "location": "wh", "quantity": 1, "reference": "x".repeat(4000)});
    let (status, error) = gw.post("/v1/stock/events", WRITE, Some("big"), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert_eq!(error["error"], "body_too_large");

    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await
            + count(&world.js, subjects::ORDER_EVENTS, "orders.events.>").await,
        0,
        "invalid input publishes nothing, not even the valid half of a batch"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_re_post_is_stored_once_and_applied_once_and_stock_reads_back() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[]).await;
    let sku = "GW TEE/red"; // needs percent-encoding in the URL and a token in the subject
    let body = received_json(sku, "wh", 5);
    let accepted_before = accepted_posts(&gw.metrics_text().await);

    let (status, first) = gw
        .post("/v1/stock/events", WRITE, Some("rcv-1"), &body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(
        (first["event_id"].as_str(), first["duplicate"].as_bool()),
        (Some("rcv-1"), Some(false))
    );
    let (status, second) = gw
        .post("/v1/stock/events", WRITE, Some("rcv-1"), &body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(second["duplicate"], true, "{second}");
    assert_eq!(second["seq"], first["seq"]);
    let filter = subjects::stock_event(sku);
    assert_eq!(count(&world.js, subjects::STOCK_EVENTS, &filter).await, 1);

    // A batch: a sale at the same location and a receipt elsewhere.
    let (status, batch) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("batch-1"),
            &json!([
                {"type": "sold", "sku": sku, "location": "wh", "quantity": 2},
                {"event_id": "rcv-2", "type": "received", "sku": sku, "location": "shop", "quantity": 4},
                {"event_id": "pol-1", "type": "policy_set", "sku": sku, "location": "shop", "safety_stock": 1}
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{batch}");
    let ids: Vec<&str> = batch["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["batch-1:0", "rcv-2", "pol-1"]);

    world.wait_stock_idle().await;
    world.wait_on_hand(sku, "wh", 3).await;
    let path = "/v1/stock/GW%20TEE%2Fred";
    let (status, levels) = gw.get(path, READ).await;
    assert_eq!(status, StatusCode::OK, "{levels}");
    assert_eq!(levels["sku"], sku);
    assert_eq!(
        levels["locations"],
        json!([
            {"location": "shop", "on_hand": 4, "reserved": 0, "safety_stock": 1, "available": 3},
            {"location": "wh", "on_hand": 3, "reserved": 0, "safety_stock": 0, "available": 3}
        ])
    );
    assert_eq!(
        levels["totals"],
        json!({"on_hand": 7, "reserved": 0, "safety_stock": 1, "available": 6})
    );
    let (status, one) = gw.get(&format!("{path}/shop"), READ).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (one["on_hand"].as_i64(), one["available"].as_i64()),
        (Some(4), Some(3))
    );
    assert_eq!(
        gw.get(&format!("{path}/nowhere"), READ).await.0,
        StatusCode::NOT_FOUND
    );

    // Request metrics carry the route template, never the SKU.
    // The recorder is process-wide and other tests run alongside: compare with the count
    // taken before this test's posts.
    let metrics = gw.metrics_text().await;
    assert!(accepted_posts(&metrics) >= accepted_before + 3, "{metrics}");
    assert!(
        metrics.contains(r#"route="/v1/stock/{sku}/{location}""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("stockflow_http_request_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("GW TEE") && !metrics.contains("GW%20TEE"),
        "{metrics}"
    );

    gw.shutdown().await;
    stock.shutdown().await;
}

fn checkout(order_id: &str, sku: &str, quantity: i64) -> Value {
    json!({"order_id": order_id, "lines": [{"line_id": "1", "sku": sku, "quantity": quantity}], "source": "web"})
}

#[tokio::test]
async fn a_checkout_waits_for_confirmation_or_rejection() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let gw = Gateway::start(&world, &[]).await;
    let (status, _) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("rcv"),
            &received_json("GW-MUG", "wh", 5),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    world.wait_on_hand("GW-MUG", "wh", 5).await;

    let (status, confirmed) = gw
        .post(
            "/v1/orders?wait=5s",
            WRITE,
            Some("place-a"),
            &checkout("web-a", "GW-MUG", 3),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{confirmed}");
    assert_eq!(confirmed["decision"], "confirmed");
    assert_eq!(
        confirmed["allocations"],
        json!([{"line_id": "1", "sku": "GW-MUG", "location": "wh", "quantity": 3}])
    );

    let (status, rejected) = gw
        .post(
            "/v1/orders?wait=5s",
            WRITE,
            Some("place-b"),
            &checkout("web-b", "GW-MUG", 4),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{rejected}");
    assert_eq!(rejected["decision"], "rejected");
    assert_eq!(
        rejected["shortfalls"],
        json!([{"line_id": "1", "sku": "GW-MUG", "requested": 4, "available": 2}])
    );

    // The same request again: JetStream reports the duplicate, the decision is read back.
    let (status, same) = gw
        .post(
            "/v1/orders?wait=5s",
            WRITE,
            Some("place-a"),
            &checkout("web-a", "GW-MUG", 3),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{same}");
    assert_eq!(same["duplicate"], true, "{same}");
    assert_eq!(same["allocations"], confirmed["allocations"]);

    // A re-post of a decided order (new key, so JetStream stores it; the worker publishes no
    // second decision) answers from the stored decision.
    let (status, again) = gw
        .post(
            "/v1/orders?wait=5s",
            WRITE,
            Some("place-a-retry"),
            &checkout("web-a", "GW-MUG", 3),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["allocations"], confirmed["allocations"]);
    let (status, conflict) = gw
        .post(
            "/v1/orders?wait=5s",
            WRITE,
            Some("place-a-other"),
            &checkout("web-a", "GW-MUG", 1),
        )
        .await;
    assert_eq!(
        (status, conflict["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{conflict}"
    );

    let (status, order) = gw.get("/v1/orders/web-a", READ).await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["allocations"], confirmed["allocations"]);
    assert_eq!(order["lines"][0]["state"], "reserved");
    let (_, order_b) = gw.get("/v1/orders/web-b", READ).await;
    assert_eq!(
        (order_b["status"].as_str(), order_b["decision"].as_str()),
        (Some("rejected"), Some("rejected"))
    );
    assert_eq!(order_b["shortfalls"], rejected["shortfalls"]);
    assert_eq!(
        gw.get("/v1/orders/web-z", READ).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(world.on_hand_reserved("GW-MUG", "wh").await, (5, 3));

    // Cancel releases the reservation.
    let (status, cancelled) = gw
        .post(
            "/v1/orders/web-a/cancel",
            WRITE,
            Some("cancel-a"),
            &json!({"source": "web"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    eventually("web-a cancelled", DEADLINE, || async {
        let (_, order) = gw.get("/v1/orders/web-a", READ).await;
        (order["status"] == "cancelled").then_some(())
    })
    .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("GW-MUG", "wh").await, (5, 0));
    let (_, order) = gw.get("/v1/orders/web-a", READ).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(order["decision"], "confirmed", "{order}");
    assert_eq!(order["lines"][0]["state"], "released", "{order}");

    gw.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn with_no_order_worker_the_wait_ends_in_202() {
    let world = World::start().await;
    let gw = Gateway::start(&world, &[]).await;
    let (status, pending) = gw
        .post(
            "/v1/orders?wait=300ms",
            WRITE,
            Some("place-late"),
            &checkout("late", "GW-X", 1),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{pending}");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["duplicate"], false);
    assert_eq!(
        count(
            &world.js,
            subjects::ORDER_EVENTS,
            &subjects::order_event("late")
        )
        .await,
        1,
        "the placement is stored for the worker to decide later"
    );
    assert_eq!(
        gw.get("/v1/orders/late", READ).await.0,
        StatusCode::NOT_FOUND
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn with_nats_or_redis_down_the_answer_is_503() {
    let mut world = World::start().await;
    let gw = Gateway::start(&world, &[]).await;
    world.nats.stop();
    let (status, error) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("lost-1"),
            &received_json("GW-DOWN", "wh", 1),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"], "unavailable");
    let (status, error) = gw
        .post(
            "/v1/orders?wait=1s",
            WRITE,
            Some("lost-2"),
            &checkout("down", "GW-DOWN", 1),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    eventually("readyz reports nats", DEADLINE, || async {
        let response = gw
            .http
            .get(format!("{}/readyz", gw.metrics))
            .send()
            .await
            .ok()?;
        let status = response.status();
        let text = response.text().await.ok()?;
        (status == StatusCode::SERVICE_UNAVAILABLE && text.contains("nats")).then_some(())
    })
    .await;

    // Queries need Redis: without it they are 503, not 404.
    world.redis.stop();
    let (status, error) = gw.get("/v1/stock/GW-DOWN", READ).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["error"], "unavailable");
    gw.shutdown().await;
}

const ADMIN: &str = "admin-token-0123456789";

#[tokio::test]
async fn dead_letters_are_listed_shown_and_replayed_by_admin_tokens_only() {
    let world = World::start().await;
    let letters = crate::dead_letters::store_each_kind(&world, "gw").await;
    let stock_worker = world.stock_worker();
    let order_worker = world.order_worker();
    let gw = Gateway::start(&world, &[]).await;
    let replay_path = |seq: u64| format!("/v1/dead-letters/{seq}/replay");

    // Read and write tokens may not see or replay dead letters.
    for token in [READ, WRITE] {
        for path in [
            "/v1/dead-letters".to_owned(),
            format!("/v1/dead-letters/{}", letters.stock),
        ] {
            let (status, error) = gw.get(&path, token).await;
            assert_eq!(
                (status, error["error"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "GET {path}"
            );
        }
        let (status, error) = gw
            .post(&replay_path(letters.stock), token, None, &json!({}))
            .await;
        assert_eq!(
            (status, error["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("needs admin")),
            "{error}"
        );
    }
    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await,
        0,
        "a refused replay publishes nothing"
    );

    // The listing, a page at a time.
    let (status, page) = gw.get("/v1/dead-letters?limit=3", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let first: Vec<u64> = page["dead_letters"]
        .as_array()
        .expect("array")
        .iter()
        .map(|l| l["sequence"].as_u64().expect("sequence"))
        .collect();
    assert_eq!(first, [letters.stock, letters.order, letters.webhook]);
    let after = page["next_after"].as_u64().expect("more to come");
    let (_, page) = gw
        .get(&format!("/v1/dead-letters?after={after}&limit=3"), ADMIN)
        .await;
    let rest = page["dead_letters"].as_array().expect("array");
    assert_eq!(rest.len(), 1, "{page}");
    assert_eq!(page["next_after"], Value::Null);
    let derived = &rest[0];
    assert_eq!(derived["sequence"].as_u64(), Some(letters.derived));
    assert_eq!(derived["original_stream"], "ALERTS");
    assert_eq!(derived["replayable"], false);
    assert!(
        derived["refusal"]
            .as_str()
            .is_some_and(|r| r.contains("second copy")),
        "{derived}"
    );
    let (status, error) = gw.get("/v1/dead-letters?limit=0", ADMIN).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("limit"))
    );

    // One dead letter in full: the webhook delivery with its headers and JSON body.
    let (status, one) = gw
        .get(&format!("/v1/dead-letters/{}", letters.webhook), ADMIN)
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["kind"], "webhook_delivery");
    assert_eq!(
        one["original_subject"],
        subjects::webhook(&letters.endpoint)
    );
    assert_eq!(one["payload_json"], letters.body);
    assert_eq!(
        one["headers"]["X-Stockflow-Event-Id"][0],
        letters.event_id.as_str()
    );
    for (path, status, field) in [
        (
            "/v1/dead-letters/x1".to_owned(),
            StatusCode::BAD_REQUEST,
            Some("seq"),
        ),
        (
            "/v1/dead-letters/999".to_owned(),
            StatusCode::NOT_FOUND,
            None,
        ),
    ] {
        let (got, error) = gw.get(&path, ADMIN).await;
        assert_eq!(
            (got, error["field"].as_str()),
            (status, field),
            "{path}: {error}"
        );
        assert!(error["message"].is_string(), "{error}");
    }

    // The stock fact: applied once, however often the replay is asked for.
    let (status, done) = gw
        .post(&replay_path(letters.stock), ADMIN, None, &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["kind"], "stock_fact");
    assert_eq!(done["stream"], subjects::STOCK_EVENTS);
    assert_eq!(done["duplicate"], false);
    let (status, again) = gw
        .post(&replay_path(letters.stock), ADMIN, None, &json!({}))
        .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "replayed, so removed: {again}"
    );
    world.wait_stock_idle().await;
    assert_eq!(
        world.on_hand_reserved(&letters.sku, "wh").await,
        (letters.quantity, 0)
    );
    assert_eq!(world.ledger(&letters.sku).await.len(), 1, "applied once");

    // The order placement: decided once.
    let (status, done) = gw
        .post(&replay_path(letters.order), ADMIN, None, &json!({}))
        .await;
    assert_eq!(
        (status, done["kind"].as_str()),
        (StatusCode::OK, Some("order_command"))
    );
    eventually("the replayed order decided", DEADLINE, || async {
        (crate::dead_letters::decisions_for(&world, &letters.order_id).await == 1).then_some(())
    })
    .await;

    // The webhook delivery: on webhooks.<endpoint> with the same event id.
    let (status, done) = gw
        .post(&replay_path(letters.webhook), ADMIN, None, &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["subject"], subjects::webhook(&letters.endpoint));
    assert_eq!(done["stream"], subjects::WEBHOOKS);
    let outbox = crate::dead_letters::outbox(&world, &letters.endpoint).await;
    let [delivery] = outbox.as_slice() else {
        panic!("one delivery in the outbox: {}", outbox.len());
    };
    crate::dead_letters::assert_replayed_delivery(delivery, &letters, letters.webhook);

    // The derived-stream entry: 409, in the error shape, and kept.
    let (status, refused) = gw
        .post(&replay_path(letters.derived), ADMIN, None, &json!({}))
        .await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("ALERTS, which the workers derive")),
        "{refused}"
    );
    let (_, page) = gw.get("/v1/dead-letters", ADMIN).await;
    assert_eq!(
        page["dead_letters"].as_array().map(Vec::len),
        Some(1),
        "{page}"
    );

    gw.shutdown().await;
    stock_worker.shutdown().await;
    order_worker.shutdown().await;
}
