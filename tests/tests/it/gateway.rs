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
        (StatusCode::BAD_REQUEST, Some("lines[0].quantity")),
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

fn sold_json(sku: &str, quantity: i64) -> Value {
    json!({"type": "sold", "sku": sku, "location": "wh", "quantity": quantity})
}

/// One `Idempotency-Key`, another change: 409, first within JetStream's duplicate window (no
/// worker has applied anything yet, so only the stored message can tell), then past it (the
/// first event published under another `Nats-Msg-Id`, as a re-post after the window is, and
/// applied: only the worker's dedup record can tell). The same change is a duplicate both ways.
#[tokio::test]
async fn a_reused_key_with_another_change_is_a_conflict_and_the_same_change_a_duplicate() {
    let world = World::start().await;
    let gw = Gateway::start(&world, &[]).await;
    let sku = "GW-IDEM";
    let subject = subjects::stock_event(sku);

    // Within the duplicate window: decided from the message JetStream holds.
    let (status, first) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("idem-1"),
            &received_json(sku, "wh", 5),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("idem-1"),
            &received_json(sku, "wh", 5),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        (again["duplicate"].as_bool(), &again["seq"]),
        (Some(true), &first["seq"])
    );
    let (status, conflict) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("idem-1"),
            &received_json(sku, "wh", 7),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(
        (conflict["error"].as_str(), conflict["field"].as_str()),
        (Some("conflict"), Some("event_id"))
    );
    // The envelope is not the change: another source is the same event.
    let mut other_source = received_json(sku, "wh", 5);
    other_source["source"] = json!("pos:7");
    let (status, same) = gw
        .post("/v1/stock/events", WRITE, Some("idem-1"), &other_source)
        .await;
    assert_eq!(
        (status, same["duplicate"].as_bool()),
        (StatusCode::ACCEPTED, Some(true)),
        "{same}"
    );

    // A batch: item 1 changed on the re-post is a conflict, item 0 a duplicate.
    let batch = json!([sold_json(sku, 1), sold_json(sku, 2)]);
    let (status, stored) = gw
        .post("/v1/stock/events", WRITE, Some("idem-b"), &batch)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stored}");
    let changed = json!([sold_json(sku, 1), sold_json(sku, 3)]);
    let (status, answer) = gw
        .post("/v1/stock/events", WRITE, Some("idem-b"), &changed)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"], "conflict");
    assert_eq!(
        (
            answer["events"][0]["stored"].as_bool(),
            answer["events"][0]["duplicate"].as_bool()
        ),
        (Some(true), Some(true)),
        "{answer}"
    );
    assert_eq!(
        (
            answer["events"][1]["stored"].as_bool(),
            answer["events"][1]["error"].as_str()
        ),
        (Some(false), Some("conflict")),
        "{answer}"
    );
    assert_eq!(count(&world.js, subjects::STOCK_EVENTS, &subject).await, 3);

    // Past the window: the worker's dedup record decides, before anything is published.
    let stock = world.stock_worker();
    world.wait_stock_idle().await;
    world.wait_on_hand(sku, "wh", 2).await;
    world
        .publish(&stockflow_tests::events::event(
            "idem-late",
            sku,
            "wh",
            stockflow_tests::events::received(10),
        ))
        .await;
    world.wait_on_hand(sku, "wh", 12).await;
    let stored_before = count(&world.js, subjects::STOCK_EVENTS, &subject).await;
    let (status, conflict) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("idem-late"),
            &received_json(sku, "wh", 11),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["field"], "event_id");
    let late_batch = json!([sold_json(sku, 1), {"event_id": "idem-late", "type": "received", "sku": sku, "location": "wh", "quantity": 9}]);
    let (status, conflict) = gw
        .post("/v1/stock/events", WRITE, Some("idem-late-b"), &late_batch)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["field"], "[1].event_id");
    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, &subject).await,
        stored_before,
        "a conflict found before publishing stores nothing, not even the valid items"
    );
    let (status, same) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("idem-late"),
            &received_json(sku, "wh", 10),
        )
        .await;
    assert_eq!(
        (status, same["duplicate"].as_bool()),
        (StatusCode::ACCEPTED, Some(true)),
        "{same}"
    );
    world.wait_stock_idle().await;
    assert_eq!(
        world.on_hand_reserved(sku, "wh").await,
        (12, 0),
        "applied once"
    );
    gw.shutdown().await;
    stock.shutdown().await;
}

async fn raw(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = gw
        .http
        .request(method, gw.url(path))
        .bearer_auth(WRITE)
        .send()
        .await
        .expect("request");
    let headers = response.headers().clone();
    let (status, body) = answer(response).await;
    (status, headers, body)
}

fn assert_json_error(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    code: &str,
) {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{status}: {body}"
    );
    assert_eq!(body["error"].as_str(), Some(code), "{status}: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The `Nats-Msg-Id` JetStream holds for the message at `seq` of `STOCK_EVENTS`.
async fn stored_msg_id(world: &World, seq: u64) -> String {
    let message = world
        .js
        .get_stream(subjects::STOCK_EVENTS)
        .await
        .expect("stream")
        .get_raw_message(seq)
        .await
        .expect("stored message");
    message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_owned())
        .expect("a Nats-Msg-Id")
}

/// The gateway and stockctl give one event one `Nats-Msg-Id`, so JetStream stores it once
/// whichever way it is sent first; and either refuses another change under a stored id.
#[tokio::test]
async fn an_event_sent_through_the_gateway_and_stockctl_is_stored_once() {
    let world = World::start().await;
    let gw = Gateway::start(&world, &[]).await;
    let sku = "ONE.ID-1";
    let stored = || count(&world.js, subjects::STOCK_EVENTS, "stock.events.>");
    let publish = |event_id: &'static str, quantity: &'static str| {
        let world = &world;
        async move {
            crate::cli::stockctl(
                world,
                &[
                    "publish",
                    "received",
                    "--sku",
                    sku,
                    "--location",
                    "wh",
                    "--quantity",
                    quantity,
                    "--event-id",
                    event_id,
                ],
            )
            .await
        }
    };

    // Through the gateway first, then stockctl's flags and its JSON.
    let (status, first) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("once-1"),
            &received_json(sku, "wh", 4),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    let seq = first["seq"].as_u64().expect("seq");
    assert_eq!(
        stored_msg_id(&world, seq).await,
        stockflow_proto::msg_id::stock_fact(sku, "once-1")
    );
    let again = publish("once-1", "4").await;
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert!(
        again
            .stdout
            .contains(&format!("sequence {seq}, duplicate: yes")),
        "{}",
        again.stdout
    );
    let json = format!(
        r#"{{"type":"received","sku":"{sku}","location":"wh","quantity":4,"event_id":"once-1","source":"elsewhere"}}"#
    );
    let as_json = crate::cli::stockctl(&world, &["publish", "--json", &json]).await;
    assert!(
        as_json.stdout.contains("duplicate: yes"),
        "{}{}",
        as_json.stdout,
        as_json.stderr
    );
    assert_eq!(stored().await, 1, "one event, stored once");

    // Through stockctl first, then the gateway.
    let first = publish("once-2", "6").await;
    assert!(
        first.stdout.contains("duplicate: no"),
        "{}{}",
        first.stdout,
        first.stderr
    );
    let (status, again) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("once-2"),
            &received_json(sku, "wh", 6),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        stored_msg_id(&world, again["seq"].as_u64().expect("seq")).await,
        stockflow_proto::msg_id::stock_fact(sku, "once-2")
    );
    assert_eq!(stored().await, 2);

    // Another change under a stored id: refused by both, the first change stands.
    let other = publish("once-1", "5").await;
    assert_eq!(other.code, 1, "{}{}", other.stdout, other.stderr);
    assert!(
        other.stderr.contains("already stored with another change"),
        "{}",
        other.stderr
    );
    let (status, conflict) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("once-2"),
            &received_json(sku, "wh", 7),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(stored().await, 2, "nothing of a conflict is stored");
    gw.shutdown().await;
}

#[tokio::test]
async fn every_error_is_json_and_names_its_field() {
    let world = World::start().await;
    let gw = Gateway::start(&world, &[]).await;
    use reqwest::Method;

    let (status, headers, body) = raw(&gw, Method::DELETE, "/v1/stock/events").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_json_error(status, &headers, &body, "method_not_allowed");
    assert_eq!(
        headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );

    let long = format!("/v1/stock/{}", "A".repeat(9000));
    let (status, headers, body) = raw(&gw, Method::GET, &long).await;
    assert_eq!(status, StatusCode::URI_TOO_LONG);
    assert_json_error(status, &headers, &body, "uri_too_long");

    let (status, headers, body) = raw(&gw, Method::GET, "/v1/stock/%FF%FE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_json_error(status, &headers, &body, "invalid_input");

    let (status, headers, body) = raw(&gw, Method::GET, "/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_json_error(status, &headers, &body, "not_found");

    let (status, body) = gw
        .post(
            "/v1/orders?wait=2s&wait=2s",
            WRITE,
            Some("q-1"),
            &checkout("q", "GW-Q", 1),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("wait")),
        "{body}"
    );
    assert_eq!(body["error"], "invalid_input");

    let response = gw
        .http
        .post(gw.url("/v1/stock/events"))
        .bearer_auth(WRITE)
        .header("Idempotency-Key", "bad-json")
        .body("{not json")
        .send()
        .await
        .expect("request");
    let headers = response.headers().clone();
    let (status, body) = answer(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_json_error(status, &headers, &body, "invalid_input");

    // Fields inside lines and batches are named by their full path.
    let two_lines = json!({"order_id": "paths", "lines": [
        {"line_id": "1", "sku": "GW-P", "quantity": 1},
        {"line_id": "2", "sku": "GW-P2", "quantity": 0}]});
    let (status, body) = gw.post("/v1/orders", WRITE, Some("p-1"), &two_lines).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("lines[1].quantity")),
        "{body}"
    );
    let batch = json!([
        checkout("paths-a", "GW-P", 1),
        {"order_id": "paths-b", "lines": [{"line_id": "1", "sku": "bad\u{1}sku", "quantity": 1}]}
    ]);
    let (status, body) = gw.post("/v1/orders", WRITE, Some("p-2"), &batch).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("[1].lines[0].sku")),
        "{body}"
    );

    // The key: named when too long, also when every item has its own id; 128 bytes work in a
    // batch.
    let too_long = "k".repeat(129);
    let (status, body) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some(&too_long),
            &received_json("GW-K", "wh", 1),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
        "{body}"
    );
    let own_ids = json!([{"event_id": "own-1", "type": "received", "sku": "GW-K", "location": "wh", "quantity": 1}]);
    let (status, body) = gw
        .post("/v1/stock/events", WRITE, Some(&too_long), &own_ids)
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
        "{body}"
    );
    let longest = "k".repeat(128);
    let batch = json!([
        received_json("GW-K", "wh", 1),
        received_json("GW-K", "shop", 2)
    ]);
    let (status, body) = gw
        .post("/v1/stock/events", WRITE, Some(&longest), &batch)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let ids: Vec<&str> = body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(
        ids.len() == 2 && ids.iter().all(|id| id.len() <= 128) && ids[0] != ids[1],
        "{ids:?}"
    );

    // One rule for null: absent.
    let mut nulls = received_json("GW-K", "wh", 1);
    nulls["source"] = Value::Null;
    nulls["event_id"] = Value::Null;
    let (status, body) = gw
        .post("/v1/stock/events", WRITE, Some("nulls-1"), &nulls)
        .await;
    assert_eq!(
        (status, body["event_id"].as_str()),
        (StatusCode::ACCEPTED, Some("nulls-1")),
        "{body}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn commands_for_an_unknown_order_are_404_and_leave_nothing() {
    let world = World::start().await;
    let orders = world.order_worker();
    let gw = Gateway::start(&world, &[]).await;
    for (command, body) in [
        ("commit", json!({})),
        ("cancel", json!({})),
        ("fulfil", json!({"last_shipment": true})),
    ] {
        let (status, answer) = gw
            .post(
                &format!("/v1/orders/ghost/{command}"),
                WRITE,
                Some(&format!("ghost-{command}")),
                &body,
            )
            .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{command}: {answer}"
        );
    }
    assert_eq!(
        count(
            &world.js,
            subjects::ORDER_EVENTS,
            &subjects::order_event("ghost")
        )
        .await,
        0
    );
    let (status, answer) = gw.get("/v1/orders/ghost", READ).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // A commit that reaches the worker without the gateway (or overtakes a placement) leaves
    // a record the reader knows: still an unknown order, never a 503.
    world
        .publish_order(&stockflow_tests::events::order(
            "ghost-direct",
            "ghost-2",
            stockflow_proto::v1::order_event::Command::Committed(Default::default()),
        ))
        .await;
    world.wait_orders_idle().await;
    let (status, answer) = gw.get("/v1/orders/ghost-2", READ).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");

    // A record no worker writes is a loud bug: 500, not "retry".
    let mut redis = world.redis_connection().await;
    redis::cmd("HSET")
        .arg(world.keys.order("broken"))
        .arg("status")
        .arg("half-done")
        .query_async::<i64>(&mut redis)
        .await
        .expect("hset");
    let (status, answer) = gw.get("/v1/orders/broken", READ).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, Some("internal")),
        "{answer}"
    );
    let (status, _) = gw
        .post(
            "/v1/orders/broken/commit",
            WRITE,
            Some("broken-c"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    gw.shutdown().await;
    orders.shutdown().await;
}

/// A commit sent right after its placement was stored, before any worker decided it, is
/// accepted (JetStream holds the placement) and takes effect; then fulfil ships over HTTP.
#[tokio::test]
async fn commit_and_fulfil_work_over_http_also_right_after_the_placement() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[]).await;
    let (status, _) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("rcv-cf"),
            &received_json("GW-CF", "wh", 10),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    world.wait_on_hand("GW-CF", "wh", 10).await;
    let mut order = checkout("cf-1", "GW-CF", 4);
    order["hold_seconds"] = json!(600);
    let (status, placed) = gw.post("/v1/orders", WRITE, Some("place-cf"), &order).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
    let (status, committed) = gw
        .post(
            "/v1/orders/cf-1/commit",
            WRITE,
            Some("commit-cf"),
            &json!({}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "a commit for a stored, undecided placement: {committed}"
    );

    let orders = world.order_worker();
    eventually("cf-1 confirmed and committed", DEADLINE, || async {
        let (_, order) = gw.get("/v1/orders/cf-1", READ).await;
        (order["status"] == "confirmed" && order["committed"] == true).then_some(())
    })
    .await;
    let (status, _) = gw
        .post(
            "/v1/orders/cf-1/fulfil",
            WRITE,
            Some("ship-cf-1"),
            &json!({"lines": [{"line_id": "1", "quantity": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = gw
        .post(
            "/v1/orders/cf-1/fulfil",
            WRITE,
            Some("ship-cf-2"),
            &json!({"last_shipment": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("cf-1 fulfilled", DEADLINE, || async {
        let (_, order) = gw.get("/v1/orders/cf-1", READ).await;
        (order["status"] == "fulfilled").then_some(())
    })
    .await;
    world.wait_orders_idle().await;
    world.wait_stock_idle().await;
    assert_eq!(
        world.on_hand_reserved("GW-CF", "wh").await,
        (9, 0),
        "one unit shipped, the other three released"
    );
    gw.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
}

/// A cancel sent right after its placement was stored, before any worker decided it, is
/// accepted, and whichever the worker processes first, nothing stays reserved.
#[tokio::test]
async fn a_cancel_right_after_its_placement_is_accepted_and_leaves_nothing_reserved() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[]).await;
    let (status, _) = gw
        .post(
            "/v1/stock/events",
            WRITE,
            Some("rcv-cx"),
            &received_json("GW-CX", "wh", 5),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    world.wait_on_hand("GW-CX", "wh", 5).await;
    let (status, _) = gw
        .post(
            "/v1/orders",
            WRITE,
            Some("place-cx"),
            &checkout("cx-1", "GW-CX", 2),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, cancelled) = gw
        .post(
            "/v1/orders/cx-1/cancel",
            WRITE,
            Some("cancel-cx"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    let orders = world.order_worker();
    world.wait_orders_idle().await;
    world.wait_stock_idle().await;
    let (_, order) = gw.get("/v1/orders/cx-1", READ).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(world.on_hand_reserved("GW-CX", "wh").await, (5, 0));
    gw.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
}

/// The schemathesis CLI: `$STOCKFLOW_SCHEMATHESIS_BIN`, else the one `scripts/bootstrap.py`
/// installs into `.dev/venv`.
fn schemathesis() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("STOCKFLOW_SCHEMATHESIS_BIN") {
        return path.into();
    }
    let local = stockflow_tests::workspace_root().join(".dev/venv/bin/schemathesis");
    assert!(
        local.is_file(),
        "schemathesis not found: run `python3 scripts/bootstrap.py` (or `./dev test`), which \
         installs it into .dev/venv, or set STOCKFLOW_SCHEMATHESIS_BIN"
    );
    local
}

/// A property-based run of the OpenAPI document against the real gateway, with a stock and an
/// order worker and real servers behind it: every operation gets its examples, boundary values
/// and generated requests, valid and invalid (fixed seed, bounded number of cases), with a write
/// token. It fails on any 5xx, on any status the document does not list for the operation, and
/// on any body, content type or header that does not match the document.
#[tokio::test]
async fn the_api_answers_as_its_openapi_document_says_under_schemathesis() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let gw = Gateway::start(&world, &[]).await;
    // Something to find, so reads answer 200 as well as 404.
    for (key, sku, location) in [
        ("st-1", "MUG", "wh-east"),
        ("st-2", "TSHIRT-RED_M", "store-12"),
    ] {
        let (status, _) = gw
            .post(
                "/v1/stock/events",
                WRITE,
                Some(key),
                &received_json(sku, location, 50),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    world.wait_on_hand("MUG", "wh-east", 50).await;
    let (status, _) = gw
        .post(
            "/v1/orders?wait=5s",
            WRITE,
            Some("st-o"),
            &checkout("web-10021", "MUG", 1),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let report = tempfile::tempdir().expect("report dir");
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .arg("run")
        .arg(gw.url("/openapi.json"))
        .args(["--url", &gw.base])
        .args(["--header", &format!("Authorization: Bearer {WRITE}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        // An event stream never ends by itself: an availability stream's answers are checked
        // by gateway_channels' SSE test instead, the console's streams by its browser test.
        .args(["--exclude-operation-id", "streamChannelAvailability"])
        .args(["--exclude-operation-id", "streamSkuChanges"])
        .args(["--exclude-operation-id", "streamAlerts"])
        .args(["--mode", "all"])
        .args(["--seed", "20261206"])
        .args(["--max-examples", "25"])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "15"])
        .args(["--suppress-health-check", "too_slow"])
        .args(["--report-dir", &report.path().to_string_lossy()])
        .args(["--no-color", "--output-truncate", "false"])
        // Its cache directory goes with the report, not into the work tree.
        .current_dir(report.path())
        .kill_on_drop(true);
    let run = tokio::time::timeout(std::time::Duration::from_secs(240), command.output())
        .await
        .expect("schemathesis finishes within its bound")
        .expect("schemathesis runs");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    // Shown with --nocapture: which operations ran, how many cases.
    eprintln!("{out}");
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{out}\n{err}"
    );
    gw.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
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

/// A signing secret given through the API: it must never come back.
const WEBHOOK_SECRET: &str = "whsec-given-through-the-api-7f3a";

async fn delete(gw: &Gateway, path: &str, token: &str) -> (StatusCode, Value) {
    answer(
        gw.http
            .delete(gw.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// Whether the consumer `webhook-<id>` exists on `WEBHOOKS`.
async fn webhook_consumer_exists(world: &World, id: &str) -> bool {
    let stream = world
        .js
        .get_stream(subjects::WEBHOOKS)
        .await
        .expect("WEBHOOKS");
    stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &stockflow_shared::topology::webhook_durable(id),
        )
        .await
        .is_ok()
}

/// Webhook subscriptions through the admin routes, with notify-worker already running: a
/// created one is delivered to without a restart, a deleted one stops getting deliveries and
/// its consumer is gone; read and write tokens are refused; the secret is never echoed; bad
/// input is a 400 naming the field.
#[tokio::test]
async fn webhook_subscriptions_are_managed_by_admin_tokens_and_notify_follows_them() {
    use crate::notify::{alert, fast, notify_worker, publish_alert, subscriptions_file, Receiver};
    use stockflow_proto::v1::AlertKind;

    let world = World::start().await;
    // A file subscription: the witness that notify delivered what came after a deletion.
    let witness = Receiver::start(&[], std::time::Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        json!([{"id": "witness", "url": witness.url, "events": ["low_stock"]}]),
    );
    let notify = notify_worker(&world, &fast(&file, &[]));
    let gw = Gateway::start(&world, &[]).await;
    let receiver = Receiver::start(&[], std::time::Duration::ZERO).await;
    let crm = json!({"id": "crm", "url": receiver.url, "events": ["low_stock"]});

    // Read and write tokens may neither see nor change subscriptions.
    for token in [READ, WRITE] {
        let answers = [
            gw.get("/v1/webhooks", token).await,
            gw.get("/v1/webhooks/crm", token).await,
            gw.post("/v1/webhooks", token, None, &crm).await,
            delete(&gw, "/v1/webhooks/crm", token).await,
        ];
        for (status, error) in answers {
            assert_eq!(
                (status, error["error"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "{error}"
            );
        }
    }
    let (status, listed) = gw.get("/v1/webhooks", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        listed,
        json!({"webhooks": []}),
        "a refused create stores nothing"
    );

    // Bad input: 400 naming the field, nothing stored.
    for (body, field) in [
        (
            json!({"id": "a b", "url": receiver.url, "events": ["*"]}),
            "id",
        ),
        (
            json!({"id": "x", "url": "ftp://example.com/h", "events": ["*"]}),
            "url",
        ),
        (
            json!({"id": "x", "url": "not a url", "events": ["*"]}),
            "url",
        ),
        (
            json!({"id": "x", "url": receiver.url, "events": ["sold"]}),
            "events",
        ),
        (
            json!({"id": "x", "url": receiver.url, "events": []}),
            "events",
        ),
        (
            json!({"id": "x", "url": receiver.url, "events": ["*"], "skus": []}),
            "skus",
        ),
        (
            json!({"id": "x", "url": receiver.url, "events": ["*"], "secret": "short"}),
            "secret",
        ),
        (
            json!({"id": "x", "url": receiver.url, "events": ["*"], "sku": ["A1"]}),
            "sku",
        ),
        (json!({"url": receiver.url, "events": ["*"]}), "id"),
    ] {
        let (status, error) = gw.post("/v1/webhooks", ADMIN, None, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert_eq!(error["field"], field, "{body}: {error}");
    }
    let (status, error) = gw.get("/v1/webhooks/a%20b", ADMIN).await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("id"))
    );

    // Created while notify runs: it declares the consumer and delivers.
    let (status, created) = gw.post("/v1/webhooks", ADMIN, None, &crm).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["secret_set"], false);
    let (status, error) = gw.post("/v1/webhooks", ADMIN, None, &crm).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    // One with its own secret: stored, never shown.
    let signed = json!({"id": "signed", "url": receiver.url, "events": ["order_rejected"],
                        "skus": ["NONE"], "secret": WEBHOOK_SECRET});
    let response = gw
        .http
        .post(gw.url("/v1/webhooks"))
        .bearer_auth(ADMIN)
        .json(&signed)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.expect("body");
    assert!(!text.contains(WEBHOOK_SECRET), "secret echoed: {text}");
    assert!(text.contains(r#""secret_set":true"#), "{text}");
    for path in ["/v1/webhooks", "/v1/webhooks/signed"] {
        let text = gw
            .http
            .get(gw.url(path))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        assert!(
            !text.contains(WEBHOOK_SECRET),
            "GET {path} echoed the secret: {text}"
        );
    }
    let (_, listed) = gw.get("/v1/webhooks", ADMIN).await;
    let ids: Vec<&str> = listed["webhooks"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, ["crm", "signed"], "{listed}");
    let (status, shown) = gw.get("/v1/webhooks/signed", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["secret_set"], true);
    assert_eq!(shown["skus"], json!(["NONE"]));

    eventually("notify declares webhook-crm", DEADLINE, || async {
        webhook_consumer_exists(&world, "crm").await.then_some(())
    })
    .await;
    let first = publish_alert(&world, &alert(AlertKind::LowStock, "W1", "store-1", "wh-1")).await;
    eventually("crm receives the alert", DEADLINE, || async {
        receiver
            .received()
            .iter()
            .any(|r| r.event_id == first)
            .then_some(())
    })
    .await;
    receiver.assert_signatures_verified();
    // A notify started later loads the bucket's subscriptions too.
    notify.shutdown().await;
    let notify = notify_worker(&world, &fast(&file, &[]));
    let again = publish_alert(&world, &alert(AlertKind::LowStock, "W3", "store-1", "wh-3")).await;
    eventually(
        "crm receives an alert after a restart",
        DEADLINE,
        || async {
            receiver
                .received()
                .iter()
                .any(|r| r.event_id == again)
                .then_some(())
        },
    )
    .await;
    let (status, error) = gw
        .post(
            "/v1/webhooks",
            ADMIN,
            None,
            &json!({"id": "x", "url": receiver.url, "events": ["*"], "secret": 4_242_424_242_u64}),
        )
        .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("secret"))
    );
    assert!(!error.to_string().contains("4242424242"), "{error}");

    // Deleted: its consumer goes, and what comes after reaches the witness only.
    let (status, _) = delete(&gw, "/v1/webhooks/crm", ADMIN).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = gw.get("/v1/webhooks/crm", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, error) = delete(&gw, "/v1/webhooks/crm", ADMIN).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    eventually("notify removes webhook-crm", DEADLINE, || async {
        (!webhook_consumer_exists(&world, "crm").await).then_some(())
    })
    .await;
    let before = receiver.received().len();
    let second = publish_alert(&world, &alert(AlertKind::LowStock, "W2", "store-1", "wh-2")).await;
    eventually("the witness receives the later alert", DEADLINE, || async {
        witness
            .received()
            .iter()
            .any(|r| r.event_id == second)
            .then_some(())
    })
    .await;
    world.wait_idle(subjects::ALERTS, "notify-worker").await;
    assert_eq!(
        receiver.received().len(),
        before,
        "a deleted subscription got a delivery"
    );
    assert_eq!(
        count(&world.js, subjects::WEBHOOKS, "webhooks.crm").await,
        0,
        "nothing is queued for a deleted subscription"
    );
    assert!(webhook_consumer_exists(&world, "signed").await);
    gw.shutdown().await;
    notify.shutdown().await;
}

/// Commit and fulfil over HTTP change stock exactly as the same commands published on NATS do
/// (what `stockctl` sends): the same order on two SKUs, one driven each way, ends with the same
/// levels and the same status.
#[tokio::test]
async fn commit_and_fulfil_over_http_change_stock_as_the_same_commands_over_nats() {
    use stockflow_proto::v1::{
        order_event::Command, FulfilledLine, OrderCommitted, OrderFulfilled,
    };

    let world = World::start().await;
    let stock = world.stock_worker();
    let orders = world.order_worker();
    let gw = Gateway::start(&world, &[]).await;
    for (key, sku) in [("rcv-h", "GW-HTTP"), ("rcv-n", "GW-NATS")] {
        let (status, _) = gw
            .post(
                "/v1/stock/events",
                WRITE,
                Some(key),
                &received_json(sku, "wh", 10),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        world.wait_on_hand(sku, "wh", 10).await;
    }

    // Over HTTP.
    let mut order = checkout("via-http", "GW-HTTP", 4);
    order["hold_seconds"] = json!(600);
    order["lines"][0]["location"] = json!("wh");
    let (status, placed_http) = gw
        .post("/v1/orders?wait=5s", WRITE, Some("place-h"), &order)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{placed_http}");
    let (status, _) = gw
        .post(
            "/v1/orders/via-http/commit",
            WRITE,
            Some("commit-h"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = gw
        .post(
            "/v1/orders/via-http/fulfil",
            WRITE,
            Some("ship-h-1"),
            &json!({"lines": [{"line_id": "1", "quantity": 3}]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    world.wait_orders_idle().await;
    world.wait_stock_idle().await;
    let http_after_ship = world.on_hand_reserved("GW-HTTP", "wh").await;
    let (status, _) = gw
        .post(
            "/v1/orders/via-http/fulfil",
            WRITE,
            Some("ship-h-2"),
            &json!({"last_shipment": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // The same commands on NATS.
    world
        .publish_order(&stockflow_tests::events::order(
            "place-n",
            "via-nats",
            stockflow_tests::events::placed(&[("1", "GW-NATS", 4, "wh")], 600),
        ))
        .await;
    world.wait_orders_idle().await;
    world
        .publish_order(&stockflow_tests::events::order(
            "commit-n",
            "via-nats",
            Command::Committed(OrderCommitted {}),
        ))
        .await;
    let ship = |id: &str, quantity: i64, last: bool| {
        stockflow_tests::events::order(
            id,
            "via-nats",
            Command::Fulfilled(OrderFulfilled {
                lines: if quantity > 0 {
                    vec![FulfilledLine {
                        line_id: "1".into(),
                        quantity,
                    }]
                } else {
                    Vec::new()
                },
                last_shipment: last,
            }),
        )
    };
    world.publish_order(&ship("ship-n-1", 3, false)).await;
    world.wait_orders_idle().await;
    world.wait_stock_idle().await;
    let nats_after_ship = world.on_hand_reserved("GW-NATS", "wh").await;
    world.publish_order(&ship("ship-n-2", 0, true)).await;

    eventually("both orders fulfilled", DEADLINE, || async {
        let (_, http) = gw.get("/v1/orders/via-http", READ).await;
        let (_, nats) = gw.get("/v1/orders/via-nats", READ).await;
        (http["status"] == "fulfilled" && nats["status"] == "fulfilled").then_some(())
    })
    .await;
    world.wait_orders_idle().await;
    world.wait_stock_idle().await;
    assert_eq!(http_after_ship, (7, 1), "three shipped, one still reserved");
    assert_eq!(http_after_ship, nats_after_ship);
    let http_end = world.on_hand_reserved("GW-HTTP", "wh").await;
    assert_eq!(http_end, (7, 0), "the last shipment released the rest");
    assert_eq!(http_end, world.on_hand_reserved("GW-NATS", "wh").await);
    let (_, http) = gw.get("/v1/orders/via-http", READ).await;
    let (_, nats) = gw.get("/v1/orders/via-nats", READ).await;
    assert_eq!(http["committed"], nats["committed"]);
    assert_eq!(http["lines"][0]["shipped"], nats["lines"][0]["shipped"]);
    assert_eq!(http["lines"][0]["shipped"], 3);
    gw.shutdown().await;
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn reconcile_reports_drift_to_admin_tokens_only_and_fixes_nothing() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[]).await;
    for (key, location, quantity) in [("rc-1", "wh", 40), ("rc-2", "store-1", 7)] {
        let (status, _) = gw
            .post(
                "/v1/stock/events",
                WRITE,
                Some(key),
                &received_json("RC-1", location, quantity),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    world.wait_on_hand("RC-1", "wh", 40).await;
    world.wait_on_hand("RC-1", "store-1", 7).await;
    world.wait_stock_idle().await;

    // No token: 401; read and write tokens: 403.
    let (status, error) = answer(
        gw.http
            .get(gw.url("/v1/reconcile"))
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    for token in [READ, WRITE] {
        let (status, error) = gw.get("/v1/reconcile", token).await;
        assert_eq!(
            (status, error["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{error}"
        );
    }

    let (status, report) = gw.get("/v1/reconcile", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report, json!({"agrees": true, "drift": []}));

    // Redis loses the last write of one level.
    let mut conn = world.redis_connection().await;
    let _: i64 = redis::AsyncCommands::hincr(&mut conn, world.keys.stock("RC-1"), "oh:wh", -3)
        .await
        .expect("hincr");
    let (status, report) = gw.get("/v1/reconcile", ADMIN).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({"agrees": false, "drift": [
            {"sku": "RC-1", "location": "wh", "field": "on_hand", "ledger": 40, "redis": 37}
        ]})
    );
    // Read-only: asking again finds the same drift, and nothing was published to fix it.
    let (_, again) = gw.get("/v1/reconcile", ADMIN).await;
    assert_eq!(again, report);
    assert_eq!(world.on_hand_reserved("RC-1", "wh").await, (37, 0));
    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await,
        2,
        "only the two receipts are in the input"
    );

    gw.shutdown().await;
    stock.shutdown().await;
}
