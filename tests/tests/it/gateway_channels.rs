//! The gateway's sales channel routes against real servers and a real stock worker: channels
//! managed by admin tokens, what a channel may sell read one SKU at a time, a page at a time, and
//! followed live as Server-Sent Events that resume without gaps or regressions.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use stockflow_tests::{eventually, DEADLINE};
use tokio_util::sync::CancellationToken;

use crate::world::*;

const READ: &str = "read-token-0123456789";
const WRITE: &str = "write-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const TOKENS: &str =
    "read:read-token-0123456789,write:write-token-0123456789,admin:admin-token-0123456789";

/// A gateway inside the test process, and a client for it.
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

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, token, None, None)
            .await
    }

    async fn put(&self, path: &str, token: &str, key: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, token, Some(key), Some(body))
            .await
    }

    async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, token, None, None)
            .await
    }

    async fn post(&self, path: &str, token: &str, key: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, token, Some(key), Some(body))
            .await
    }

    /// `stockflow_sse_clients`, 0 when not exported yet.
    async fn sse_clients(&self) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix("stockflow_sse_clients "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Receipts of `quantity` of `sku` at every one of `stores`, applied.
    async fn receive(&self, world: &World, sku: &str, stores: &[&str], quantity: i64) {
        for store in stores {
            let (status, body) = self
                .post(
                    "/v1/stock/events",
                    WRITE,
                    &format!("rcv-{sku}-{store}-{quantity}"),
                    &json!({"type": "received", "sku": sku, "location": store, "quantity": quantity}),
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
        for store in stores {
            world.wait_on_hand(sku, store, quantity).await;
        }
    }

    /// Waits until GET availability says `channel` may sell `quantity` of `sku`; returns it.
    async fn wait_quantity(&self, channel: &str, sku: &str, quantity: i64) -> Value {
        let path = format!("/v1/channels/{channel}/availability/{sku}");
        eventually(
            &format!("{channel} to offer {quantity} of {sku} over HTTP"),
            DEADLINE,
            || async {
                let (status, body) = self.get(&path, READ).await;
                (status == StatusCode::OK && body["available_to_sell"] == quantity).then_some(body)
            },
        )
        .await
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("gateway stops in time")
            .expect("gateway ends cleanly");
    }
}

fn market(locations: &[&str], rules: Value) -> Value {
    json!({"name": "Acme marketplace", "kind": "marketplace", "locations": locations, "rules": rules})
}

#[tokio::test]
async fn admins_manage_channels_and_rules_and_refusals_name_the_field() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[]).await;
    let sku = "SNEAKER-42";
    let stores = ["store-1", "store-2", "store-3"];
    gw.receive(&world, sku, &stores, 5).await;

    // Refusals name their field; nothing is stored.
    let rules = json!({"buffer": 2, "max_listed": 10, "end_when_below": 3});
    let (status, body) = gw
        .put(
            "/v1/channels/market",
            ADMIN,
            "bad-1",
            &market(&stores, json!({"percent": 150})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "rules.percent", "{body}");
    let (status, body) = gw
        .put(
            "/v1/channels/market",
            ADMIN,
            "bad-2",
            &market(&["store-1", "nowhere"], rules.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        (body["error"].as_str(), body["field"].as_str()),
        (Some("unknown_location"), Some("locations[1]")),
        "{body}"
    );
    let mut other = market(&stores, rules.clone());
    other["id"] = json!("elsewhere");
    let (status, body) = gw.put("/v1/channels/market", ADMIN, "bad-3", &other).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "id", "{body}");
    let (status, body) = gw
        .put(
            "/v1/channels/market/rules/SNEAKER-42",
            ADMIN,
            "bad-4",
            &json!({"percent": -1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], "percent", "{body}");

    // Rules are admin changes, whichever route carries them.
    let definition = market(&stores, rules.clone());
    let (status, body) = gw
        .put("/v1/channels/market", WRITE, "w-1", &definition)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let rules_fact = json!({"type": "channel_rules", "sku": sku, "channel": "market",
                            "rules": {"max_listed": 5}});
    let (status, body) = gw.post("/v1/stock/events", WRITE, "w-2", &rules_fact).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = gw.get("/v1/channels", WRITE).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = gw.get("/v1/channels/market", READ).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Defined: stored once, shown with its rules version, and its quantity computed.
    let (status, stored) = gw
        .put("/v1/channels/market", ADMIN, "ch-1", &definition)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stored}");
    assert_eq!(
        (stored["event_id"].as_str(), stored["duplicate"].as_bool()),
        (Some("ch-1"), Some(false))
    );
    assert_eq!(stored["stream"], "CHANNEL_EVENTS");
    let (status, again) = gw
        .put("/v1/channels/market", ADMIN, "ch-1", &definition)
        .await;
    assert_eq!(
        (status, again["duplicate"].as_bool()),
        (StatusCode::ACCEPTED, Some(true))
    );
    let shown = eventually("the channel to be defined", DEADLINE, || async {
        let (status, body) = gw.get("/v1/channels/market", ADMIN).await;
        (status == StatusCode::OK).then_some(body)
    })
    .await;
    assert_eq!(shown["locations"], json!(stores));
    assert_eq!(shown["rules"], rules);
    assert_eq!(
        (shown["kind"].as_str(), shown["allocation"].as_str()),
        (Some("marketplace"), Some("priority"))
    );
    assert!(shown["rules_version"].as_u64() >= Some(1), "{shown}");
    let (status, listed) = gw.get("/v1/channels", ADMIN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["channels"], json!([shown]));

    // Pool 15 - buffer 2 = 13, at most 10.
    let quantity = gw.wait_quantity("market", sku, 10).await;
    assert_eq!(
        (
            quantity["channel"].as_str(),
            quantity["sku"].as_str(),
            quantity["pool"].as_i64()
        ),
        (Some("market"), Some(sku), Some(15))
    );
    assert_eq!(quantity["rules_version"], shown["rules_version"]);
    assert!(quantity["sequence"].as_u64() >= Some(1));
    let fed = world.availability("market", sku).await.expect("feed");
    assert_eq!(quantity["version"], fed.version);
    let (status, _) = gw
        .get("/v1/channels/market/availability/NO-SUCH-SKU", READ)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A SKU's override, through its route and through the facts route, then cleared.
    let (status, body) = gw
        .put(
            &format!("/v1/channels/market/rules/{sku}"),
            ADMIN,
            "ov-1",
            &json!({"max_listed": 4}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    gw.wait_quantity("market", sku, 4).await;
    let (status, body) = gw
        .post("/v1/stock/events", ADMIN, "ov-2", &rules_fact)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    gw.wait_quantity("market", sku, 5).await;
    let (status, body) = gw
        .delete(&format!("/v1/channels/market/rules/{sku}"), ADMIN)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    gw.wait_quantity("market", sku, 10).await;

    // Removed: its quantity goes to 0 and it is no longer shown; a second removal is 404.
    let (status, body) = gw.delete("/v1/channels/market", ADMIN).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    gw.wait_quantity("market", sku, 0).await;
    eventually("the channel to be gone", DEADLINE, || async {
        let (status, _) = gw.get("/v1/channels/market", ADMIN).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (status, _) = gw.delete("/v1/channels/market", ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, listed) = gw.get("/v1/channels", ADMIN).await;
    assert_eq!((status, listed), (StatusCode::OK, json!({"channels": []})));
    gw.shutdown().await;
    stock.shutdown().await;
}

/// Every page of `channel` from the start, `limit` at a time: (items, page sizes).
async fn page_through(gw: &Gateway, channel: &str, limit: usize) -> (Vec<Value>, Vec<usize>) {
    let (mut items, mut sizes, mut after) = (Vec::new(), Vec::new(), 0);
    loop {
        let (status, page) = gw
            .get(
                &format!("/v1/channels/{channel}/availability?after={after}&limit={limit}"),
                READ,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["items"].as_array().expect("items").clone();
        sizes.push(got.len());
        items.extend(got);
        match page["next_after"].as_u64() {
            Some(next) => {
                assert!(next > after, "next_after moves on: {page}");
                after = next;
            }
            None => return (items, sizes),
        }
    }
}

#[tokio::test]
async fn a_channel_is_paged_whole_every_sku_exactly_once() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[]).await;
    let skus: Vec<String> = (0..250).map(|i| format!("PAGE-{i:03}")).collect();
    let batch: Vec<Value> = skus
        .iter()
        .map(|sku| json!({"type": "received", "sku": sku, "location": "wh", "quantity": 3}))
        .collect();
    let (status, body) = gw
        .post("/v1/stock/events", WRITE, "page-rcv", &json!(batch))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    world.wait_on_hand("PAGE-249", "wh", 3).await;
    world.wait_stock_idle().await;
    let (status, body) = gw
        .put(
            "/v1/channels/web",
            ADMIN,
            "web-1",
            &json!({"locations": ["wh"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually("every SKU's quantity in the feed", DEADLINE, || async {
        let (items, _) = page_through(&gw, "web", 1000).await;
        (items.len() == skus.len()).then_some(())
    })
    .await;

    let (items, sizes) = page_through(&gw, "web", 100).await;
    assert_eq!(sizes, vec![100, 100, 50]);
    let mut seen = BTreeMap::new();
    let mut last = 0;
    for item in &items {
        let sequence = item["sequence"].as_u64().expect("sequence");
        assert!(sequence > last, "stream order");
        last = sequence;
        assert_eq!(item["available_to_sell"], 3, "{item}");
        *seen
            .entry(item["sku"].as_str().expect("sku").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        skus,
        "every SKU is listed"
    );
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    // Past the end: an empty page that says so.
    let (status, page) = gw
        .get(&format!("/v1/channels/web/availability?after={last}"), READ)
        .await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"items": [], "next_after": null}))
    );
    let (status, body) = gw
        .get("/v1/channels/web/availability?limit=1001", READ)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "limit");
    gw.shutdown().await;
    stock.shutdown().await;
}

/// What an SSE stream sent: an event or a comment.
#[derive(Debug)]
enum Frame {
    Event { id: u64, event: String, data: Value },
    Comment(String),
}

/// A Server-Sent Events client reading frames off a streaming response.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(gw: &Gateway, channel: &str, last_event_id: Option<u64>) -> Self {
        let mut request = gw
            .http
            .get(gw.url(&format!("/v1/channels/{channel}/availability/stream")))
            .bearer_auth(READ);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("stream");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next frame; `None` when the stream ended. Panics past the deadline.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data, mut comment) = (None, None, None, None);
                for line in block.lines() {
                    if let Some(text) = line.strip_prefix(':') {
                        comment = Some(text.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => id = value.parse().ok(),
                            "event" => event = Some(value.to_owned()),
                            "data" => data = serde_json::from_str(value).ok(),
                            _ => {}
                        }
                    }
                }
                return Some(match (id, event, data, comment) {
                    (Some(id), Some(event), Some(data), _) => Frame::Event { id, event, data },
                    (_, _, _, Some(text)) => Frame::Comment(text),
                    _ => panic!("an SSE block that is neither an event nor a comment: {block:?}"),
                });
            }
            let chunk = tokio::time::timeout(DEADLINE, self.response.chunk())
                .await
                .expect("the stream says something before the deadline")
                .expect("the stream reads")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// Events up to the next heartbeat: everything the stream had to say before it fell quiet.
    async fn until_heartbeat(&mut self) -> Vec<(u64, Value)> {
        let mut events = Vec::new();
        loop {
            match self.next().await.expect("the stream stays open") {
                Frame::Comment(text) if text == "heartbeat" => return events,
                Frame::Comment(_) => {}
                Frame::Event { id, event, data } => {
                    assert_eq!(event, "availability");
                    assert_eq!(data["sequence"], id, "the id is the stream sequence");
                    events.push((id, data));
                }
            }
        }
    }

    /// Events until `done` says the ones seen are enough.
    async fn until(&mut self, mut done: impl FnMut(&[(u64, Value)]) -> bool) -> Vec<(u64, Value)> {
        let mut events = Vec::new();
        while !done(&events) {
            if let Frame::Event { id, data, .. } = self.next().await.expect("open") {
                events.push((id, data));
            }
        }
        events
    }
}

fn quantity_of(events: &[(u64, Value)], sku: &str) -> Option<i64> {
    events
        .iter()
        .rev()
        .find(|(_, e)| e["sku"] == sku)
        .and_then(|(_, e)| e["available_to_sell"].as_i64())
}

#[tokio::test]
async fn an_sse_client_follows_live_and_resumes_without_gaps_or_regressions() {
    let world = World::start().await;
    let stock = world.stock_worker();
    let gw = Gateway::start(&world, &[("STOCKFLOW_SSE_HEARTBEAT_SECONDS", "1")]).await;
    let skus = ["LIVE-A", "LIVE-B", "LIVE-C"];
    for sku in skus {
        gw.receive(&world, sku, &["store-1"], 20).await;
    }
    let (status, body) = gw
        .put(
            "/v1/channels/pos",
            ADMIN,
            "pos-1",
            &json!({"kind": "pos", "locations": ["store-1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for sku in skus {
        gw.wait_quantity("pos", sku, 20).await;
    }

    // Without Last-Event-ID: everything current, then live.
    let mut session: Vec<(u64, Value)> = Vec::new();
    let mut sse = Sse::open(&gw, "pos", None).await;
    let current = sse.until_heartbeat().await;
    let current_skus: BTreeSet<&str> = current
        .iter()
        .filter_map(|(_, e)| e["sku"].as_str())
        .collect();
    assert_eq!(current_skus, skus.into_iter().collect());
    assert!(current.iter().all(|(_, e)| e["available_to_sell"] == 20));
    session.extend(current);
    assert_eq!(gw.sse_clients().await, 1.0);

    let sale = |id: &str, sku: &str| json!({"event_id": id, "type": "sold", "sku": sku, "location": "store-1", "quantity": 1});
    let (status, _) = gw
        .post("/v1/stock/events", WRITE, "s-1", &sale("s-1", "LIVE-A"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let live = sse
        .until(|events| quantity_of(events, "LIVE-A") == Some(19))
        .await;
    session.extend(live);
    let last_id = session.last().expect("events").0;
    drop(sse);
    eventually("the stream to be counted closed", DEADLINE, || async {
        (gw.sse_clients().await == 0.0).then_some(())
    })
    .await;

    // Away: A sold twice more, B once, C untouched.
    for (id, sku) in [("s-2", "LIVE-A"), ("s-3", "LIVE-B"), ("s-4", "LIVE-A")] {
        let (status, _) = gw.post("/v1/stock/events", WRITE, id, &sale(id, sku)).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let a = gw.wait_quantity("pos", "LIVE-A", 17).await;
    let b = gw.wait_quantity("pos", "LIVE-B", 19).await;

    // Back with Last-Event-ID: exactly the SKUs changed meanwhile, at their newest version.
    let mut sse = Sse::open(&gw, "pos", Some(last_id)).await;
    let missed = sse.until_heartbeat().await;
    let got: Vec<(&str, i64, u64)> = missed
        .iter()
        .map(|(_, e)| {
            (
                e["sku"].as_str().expect("sku"),
                e["available_to_sell"].as_i64().expect("quantity"),
                e["version"].as_u64().expect("version"),
            )
        })
        .collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![
            ("LIVE-A", 17, a["version"].as_u64().expect("version")),
            ("LIVE-B", 19, b["version"].as_u64().expect("version")),
        ],
        "{missed:?}"
    );
    assert!(missed.iter().all(|(id, _)| *id > last_id));
    session.extend(missed);

    // Over the whole session, every SKU's versions only go up, and the last is what GET says.
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, e) in &session {
        versions
            .entry(e["sku"].as_str().expect("sku").to_owned())
            .or_default()
            .push(e["version"].as_u64().expect("version"));
    }
    for (sku, seen) in &versions {
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{sku}: {seen:?}");
        let (status, now) = gw
            .get(&format!("/v1/channels/pos/availability/{sku}"), READ)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            quantity_of(&session, sku),
            now["available_to_sell"].as_i64()
        );
        assert_eq!(seen.last().copied(), now["version"].as_u64());
    }

    // Shutdown ends an open stream at once instead of waiting out the shutdown bound.
    let started = Instant::now();
    gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for an open stream",
        started.elapsed()
    );
    // The stream ends (`next` panics past the deadline otherwise).
    while let Some(frame) = sse.next().await {
        assert!(matches!(frame, Frame::Comment(_)), "{frame:?}");
    }
    stock.shutdown().await;
}
