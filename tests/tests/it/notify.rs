//! Webhook deliveries against real HTTP receivers on 127.0.0.1: signatures, retries, isolation
//! of a dead endpoint, an outage outlasting the old give-up time, the breaker as a pause, the
//! retry horizon, dead letters, filters, and at-least-once across a kill -9 and a restart.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use async_nats::HeaderMap;
use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use hmac::{Hmac, Mac as _};
use prost::Message as _;
use sha2::Sha256;
use stockflow_proto::{
    subjects,
    v1::{order_result, AlertKind, OrderRejected, OrderResult, Shortfall, StockAlert},
};
use stockflow_tests::{eventually, DEADLINE};

use crate::world::*;

pub(crate) const SECRET: &str = "whsec-test-1";

/// Ack wait of the consumers notify creates for its endpoints in these tests.
pub(crate) const ACK_WAIT_SECONDS: &str = "5";

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) event_id: String,
    pub(crate) event_type: String,
    pub(crate) body: serde_json::Value,
    /// What the receiver answered.
    pub(crate) status: u16,
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer first, in order; 204 afterwards.
    script: Mutex<VecDeque<u16>>,
    /// Requests whose signature did not verify.
    bad_signatures: Mutex<Vec<String>>,
    /// Pacing of each answer (lets a test kill the worker mid-stream).
    delay: Duration,
    /// Status once the script is used up (a test may switch it: an endpoint going down or up).
    fallback: AtomicU16,
}

/// A webhook receiver on a free port that verifies every signature the way a customer would.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub(crate) async fn start(script: &[u16], delay: Duration) -> Self {
        Self::serve(ReceiverState {
            script: Mutex::new(script.iter().copied().collect()),
            delay,
            fallback: AtomicU16::new(204),
            ..Default::default()
        })
        .await
    }

    /// Answers every POST with `status`.
    pub(crate) async fn failing(status: u16) -> Self {
        Self::serve(ReceiverState {
            fallback: AtomicU16::new(status),
            ..Default::default()
        })
        .await
    }

    /// From now on, answers every POST with `status`.
    pub(crate) fn answer(&self, status: u16) {
        self.state.fallback.store(status, Ordering::SeqCst);
    }

    /// POSTs per event id.
    fn posts_per_event(&self) -> HashMap<String, usize> {
        let mut per_event = HashMap::new();
        for post in self.received() {
            *per_event.entry(post.event_id).or_default() += 1;
        }
        per_event
    }

    async fn serve(state: ReceiverState) -> Self {
        let state = Arc::new(state);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    fn ids(&self) -> HashSet<String> {
        self.received().into_iter().map(|r| r.event_id).collect()
    }

    /// Event ids of the POSTs it answered with a 2xx.
    pub(crate) fn accepted_ids(&self) -> HashSet<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.event_id)
            .collect()
    }

    /// POSTs it refused or failed.
    fn failed_posts(&self) -> usize {
        self.received()
            .iter()
            .filter(|r| !(200..300).contains(&r.status))
            .count()
    }

    pub(crate) fn assert_signatures_verified(&self) {
        let bad = self.state.bad_signatures.lock().expect("lock").clone();
        assert!(bad.is_empty(), "signatures that did not verify: {bad:?}");
    }
}

/// Verifies `X-Stockflow-Signature` as documented: HMAC-SHA256 over `<timestamp>.<body>`.
pub(crate) fn verify(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("missing {name}"))
    };
    let timestamp = header("x-stockflow-timestamp")?;
    let signature = header("x-stockflow-signature")?;
    let seconds: u64 = timestamp.parse().map_err(|_| "timestamp not a number")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(seconds) > 300 {
        return Err(format!("timestamp {seconds} too far from {now}"));
    }
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or("no sha256= prefix")?;
    let expected: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| "signature is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    // Constant-time comparison, as a receiver should do it.
    mac.verify_slice(&expected)
        .map_err(|_| "signature mismatch".to_owned())
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> StatusCode {
    if !state.delay.is_zero() {
        // A slow endpoint is what this receiver simulates, not a wait for anything.
        tokio::time::sleep(state.delay).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    if let Err(e) = verify(&headers, &body) {
        state.bad_signatures.lock().expect("lock").push(e);
    }
    let status = state
        .script
        .lock()
        .expect("lock")
        .pop_front()
        .unwrap_or_else(|| state.fallback.load(Ordering::SeqCst));
    state.received.lock().expect("lock").push(Received {
        event_id: header("x-stockflow-event-id"),
        event_type: header("x-stockflow-event-type"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        status,
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::NO_CONTENT)
}

/// A TCP endpoint that accepts connections and never answers: every POST times out.
struct Hanging {
    url: String,
    accepted: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hanging {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(Mutex::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                *counter.lock().expect("lock") += 1;
                held.push(socket);
            }
        });
        Self {
            url: format!("http://{addr}/hook"),
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().expect("lock")
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A URL nobody listens on: connections are refused.
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/hook")
}

/// Writes the subscriptions file into `dir`.
pub(crate) fn subscriptions_file(
    dir: &tempfile::TempDir,
    subscriptions: serde_json::Value,
) -> String {
    let path = dir.path().join("webhooks.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({ "subscriptions": subscriptions })).expect("json"),
    )
    .expect("write subscriptions");
    path.to_string_lossy().into_owned()
}

/// Settings for a fast test: short timeouts and back-off, and a short ack wait (5 s, the least
/// the workers accept) for the endpoints' consumers, which the worker creates: a delivery held
/// by a stopped worker comes back after it.
pub(crate) fn fast<'a>(file: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("STOCKFLOW_ACK_WAIT_SECONDS", ACK_WAIT_SECONDS),
        ("STOCKFLOW_WEBHOOKS_FILE", file),
        ("STOCKFLOW_WEBHOOK_SECRET", SECRET),
        ("STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS", "2000"),
        ("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", "20"),
        ("STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS", "200"),
    ];
    env.extend_from_slice(extra);
    env
}

pub(crate) fn notify_worker(world: &World, env: &[(&str, &str)]) -> RunningWorker {
    let settings = notify_worker::Settings::from_env(&world.env(env)).expect("notify settings");
    RunningWorker::spawn(|shutdown| notify_worker::run(settings, shutdown))
}

pub(crate) fn alert(kind: AlertKind, sku: &str, location: &str, cause: &str) -> StockAlert {
    StockAlert {
        kind: kind.into(),
        sku: sku.to_owned(),
        location: location.to_owned(),
        cause_event_id: cause.to_owned(),
        levels: Some(levels(3, 0, 0)),
        threshold: 5,
        raised_at_ms: 1_700_000_000_000,
        ..Default::default()
    }
}

/// Publishes an alert the way the stock worker does, with its derived `Nats-Msg-Id`.
pub(crate) async fn publish_alert(world: &World, alert: &StockAlert) -> String {
    let kind = match alert.kind() {
        AlertKind::LowStock => "low_stock",
        AlertKind::OutOfStock => "out_of_stock",
        AlertKind::BackInStock => "back_in_stock",
        _ => "negative_stock",
    };
    let msg_id = format!(
        "alr:{}:{}:0:{kind}",
        subjects::encode_token(&alert.sku),
        alert.cause_event_id
    );
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    world
        .js
        .publish_with_headers(
            subjects::alert(kind, &alert.sku),
            headers,
            alert.encode_to_vec().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    msg_id
}

async fn wait_alerts_delivered(world: &World, endpoints: &[&str]) {
    world.wait_idle(subjects::ALERTS, "notify-worker").await;
    wait_deliveries_done(world, endpoints).await;
}

/// Deliveries of `endpoint` still in `WEBHOOKS`: waiting, or taken up and not yet acked.
pub(crate) async fn outbox_len(world: &World, endpoint: &str) -> u64 {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = world
        .js
        .get_stream(subjects::WEBHOOKS)
        .await
        .expect("WEBHOOKS")
        .get_consumer(&stockflow_shared::topology::webhook_durable(endpoint))
        .await
        .expect("the endpoint's consumer");
    let info = consumer.info().await.expect("consumer info");
    info.num_pending + info.num_ack_pending as u64
}

/// Waits until each endpoint's deliveries were all POSTed (or dead-lettered).
pub(crate) async fn wait_deliveries_done(world: &World, endpoints: &[&str]) {
    for endpoint in endpoints {
        eventually(
            &format!("every delivery to {endpoint} done"),
            DEADLINE,
            || async { (outbox_len(world, endpoint).await == 0).then_some(()) },
        )
        .await;
    }
}

/// Dead letters of `endpoint`.
async fn dead_letters_of(world: &World, endpoint: &str) -> u64 {
    stockflow_tests::count(
        &world.js,
        subjects::DEAD_LETTERS,
        &format!("deadletter.webhooks.{endpoint}"),
    )
    .await
}

/// The value of `metric{endpoint="<endpoint>"}` in a scrape.
fn gauge_of(metrics: &str, metric: &str, endpoint: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(&format!("{metric}{{")) && l.contains(&format!("endpoint=\"{endpoint}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

#[tokio::test]
async fn deliveries_are_signed_and_retried_after_500_with_the_same_event_id() {
    let world = World::start().await;
    let receiver = Receiver::start(&[500, 503], Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{"id": "crm", "url": receiver.url, "events": ["low_stock"]}]),
    );
    let worker = notify_worker(&world, &fast(&file, &[]));

    let msg_id = publish_alert(&world, &alert(AlertKind::LowStock, "A1", "store-1", "e-1")).await;
    let attempts = eventually("three attempts", DEADLINE, || async {
        let got = receiver.received();
        (got.len() >= 3).then_some(got)
    })
    .await;
    wait_alerts_delivered(&world, &["crm"]).await;

    assert_eq!(
        receiver.received().len(),
        3,
        "two failures, then one success"
    );
    receiver.assert_signatures_verified();
    for attempt in &attempts {
        assert_eq!(attempt.event_id, msg_id, "same event id on every attempt");
        assert_eq!(attempt.event_type, "low_stock");
        assert_eq!(attempt.body, attempts[0].body, "same body on every attempt");
    }
    let body = &attempts[0].body;
    assert_eq!(body["event_id"], msg_id.as_str());
    assert_eq!(body["type"], "low_stock");
    assert_eq!(body["data"]["sku"], "A1");
    assert_eq!(body["data"]["location"], "store-1");
    assert_eq!(body["data"]["levels"]["on_hand"], 3);
    assert_eq!(body["data"]["threshold"], 5);
    assert_eq!(
        stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await,
        0
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_dead_endpoint_does_not_hold_back_a_healthy_one() {
    let world = World::start().await;
    let healthy = Receiver::start(&[], Duration::ZERO).await;
    let hanging = Hanging::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            // Listed first, so a delivery that waited for them would starve the healthy one.
            {"id": "hanging", "url": hanging.url, "events": ["*"]},
            {"id": "refusing", "url": closed_url(), "events": ["*"]},
            {"id": "healthy", "url": healthy.url, "events": ["*"]},
        ]),
    );
    let worker = notify_worker(
        &world,
        &fast(
            &file,
            &[
                ("STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS", "500"),
                ("STOCKFLOW_WEBHOOK_CONCURRENCY", "2"),
                // Without the breaker: isolation must hold on its own while they retry.
                ("STOCKFLOW_WEBHOOK_BREAKER_FAILURES", "0"),
            ],
        ),
    );

    let mut ids = HashSet::new();
    for n in 0..40 {
        let sku = format!("SKU-{n}");
        ids.insert(publish_alert(&world, &alert(AlertKind::OutOfStock, &sku, "wh", "e-1")).await);
    }
    eventually("the healthy endpoint has every event", DEADLINE, || async {
        (healthy.ids() == ids).then_some(())
    })
    .await;
    healthy.assert_signatures_verified();
    wait_deliveries_done(&world, &["healthy"]).await;

    // The inputs are acked (fanned out), while the dead endpoints keep their own deliveries:
    // still retried, nothing dead-lettered.
    world.wait_idle(subjects::ALERTS, "notify-worker").await;
    assert!(hanging.accepted() >= 1, "the hanging endpoint was tried");
    for dead in ["hanging", "refusing"] {
        assert_eq!(
            outbox_len(&world, dead).await,
            40,
            "{dead} keeps its deliveries"
        );
    }
    assert_eq!(
        stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await,
        0,
        "still retrying"
    );
    // Shutdown interrupts the retries promptly and leaves the deliveries for a redelivery.
    worker.shutdown().await;
}

/// A header of a stored message, or "".
fn header_of(message: &async_nats::jetstream::Message, name: &str) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_refusal_is_dead_lettered_at_once_as_the_outbox_message() {
    let world = World::start().await;
    let gone = Receiver::start(&[410], Duration::ZERO).await;
    let healthy = Receiver::start(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            {"id": "gone", "url": gone.url, "events": ["back_in_stock"]},
            {"id": "healthy", "url": healthy.url, "events": ["back_in_stock"]},
        ]),
    );
    let worker = notify_worker(&world, &fast(&file, &[]));

    let payload = alert(AlertKind::BackInStock, "B2", "wh", "e-9");
    let msg_id = publish_alert(&world, &payload).await;
    stockflow_tests::wait_for_count(
        &world.js,
        subjects::DEAD_LETTERS,
        "deadletter.webhooks.>",
        1,
    )
    .await;
    wait_alerts_delivered(&world, &["gone", "healthy"]).await;

    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.webhooks.>")
            .await;
    assert_eq!(letters.len(), 1, "only the refusing endpoint's");
    let letter = &letters[0];
    assert_eq!(letter.subject.as_str(), "deadletter.webhooks.gone");
    assert_eq!(header_of(letter, "Stockflow-Webhook-Endpoint"), "gone");
    assert_eq!(header_of(letter, "Stockflow-Webhook-Event-Id"), msg_id);
    assert_eq!(
        header_of(letter, "Stockflow-Webhook-Attempts"),
        "1",
        "4xx is not retried"
    );
    // The outbox message itself: replaying it to its subject enqueues the same delivery.
    assert_eq!(
        header_of(letter, "Stockflow-Original-Stream"),
        subjects::WEBHOOKS
    );
    assert_eq!(
        header_of(letter, "Stockflow-Original-Subject"),
        subjects::webhook("gone")
    );
    assert_eq!(header_of(letter, "X-Stockflow-Event-Id"), msg_id);
    assert_eq!(header_of(letter, "X-Stockflow-Event-Type"), "back_in_stock");
    let body: serde_json::Value = serde_json::from_slice(&letter.payload).expect("JSON body");
    assert_eq!(
        body,
        gone.received()[0].body,
        "the body the endpoint refused"
    );
    let reason = header_of(letter, "Stockflow-Dead-Letter-Reason");
    assert!(
        reason.contains("webhook gone: HTTP 410 (refused; not retried)"),
        "{reason}"
    );
    assert_eq!(gone.received().len(), 1);
    assert_eq!(healthy.ids(), HashSet::from([msg_id.clone()]));

    // A replay as `stockctl dlq replay` does it: the dead letter's bytes and headers, back on its
    // original subject. The endpoint (now accepting) gets the same event id and body.
    let mut headers = HeaderMap::new();
    if let Some(stored) = &letter.headers {
        for (name, values) in stored.iter() {
            if name.to_string() != "Nats-Msg-Id" {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
    }
    world
        .js
        .publish_with_headers(
            header_of(letter, "Stockflow-Original-Subject"),
            headers,
            letter.payload.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    eventually("the replayed delivery is POSTed", DEADLINE, || async {
        (gone.accepted_ids() == HashSet::from([msg_id.clone()])).then_some(())
    })
    .await;
    wait_deliveries_done(&world, &["gone"]).await;
    let posts = gone.received();
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[1].body, posts[0].body, "the same body");
    assert_eq!(posts[1].event_type, "back_in_stock");
    gone.assert_signatures_verified();
    worker.shutdown().await;
}

#[tokio::test]
async fn a_delivery_failing_past_the_retry_horizon_is_dead_lettered_naming_it() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{"id": "refusing", "url": closed_url(), "events": ["*"]}]),
    );
    let worker = notify_worker(
        &world,
        &fast(
            &file,
            &[
                ("STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS", "2"),
                ("STOCKFLOW_WEBHOOK_BREAKER_FAILURES", "0"),
            ],
        ),
    );
    let msg_id = publish_alert(&world, &alert(AlertKind::LowStock, "H1", "wh", "e-1")).await;
    stockflow_tests::wait_for_count(
        &world.js,
        subjects::DEAD_LETTERS,
        "deadletter.webhooks.>",
        1,
    )
    .await;
    wait_alerts_delivered(&world, &["refusing"]).await;
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.webhooks.>")
            .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(header_of(letter, "Stockflow-Webhook-Event-Id"), msg_id);
    let reason = header_of(letter, "Stockflow-Dead-Letter-Reason");
    assert!(
        reason.contains("webhook refusing: not delivered within the retry horizon of 2s (STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS)")
            && reason.contains("connection failed"),
        "{reason}"
    );
    let attempts: u32 = header_of(letter, "Stockflow-Webhook-Attempts")
        .parse()
        .expect("attempts");
    assert!(
        attempts > 1,
        "retried until the horizon, not given up at once: {attempts}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn subscriptions_get_only_the_types_skus_and_locations_they_asked_for() {
    let world = World::start().await;
    let lows = Receiver::start(&[], Duration::ZERO).await;
    let ledger = Receiver::start(&[], Duration::ZERO).await;
    let orders = Receiver::start(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            {"id": "lows", "url": lows.url, "events": ["low_stock", "out_of_stock"], "skus": ["A1"]},
            {"id": "ledger", "url": ledger.url, "events": ["stock_changed"], "locations": ["store-1"]},
            {"id": "orders", "url": orders.url, "events": ["order_rejected"], "skus": ["A1"]},
        ]),
    );
    let stock = world.stock_worker();
    let worker = notify_worker(&world, &fast(&file, &[]));

    // The real stock worker derives the events: A1 and B2 both cross low and out of stock at
    // store-1; A1 also moves at wh; a stale count emits a rejection (never delivered).
    for (n, (sku, location, change)) in [
        ("A1", "store-1", policy(Some(5), None)),
        ("A1", "store-1", received(10)),
        ("A1", "store-1", sold(6)),
        ("A1", "store-1", sold(4)),
        ("B2", "store-1", policy(Some(5), None)),
        ("B2", "store-1", received(10)),
        ("B2", "store-1", sold(10)),
        ("A1", "wh", received(3)),
        ("A1", "wh", counted(1, Some(99))),
    ]
    .into_iter()
    .enumerate()
    {
        world
            .publish(&event(&format!("f-{n}"), sku, location, change))
            .await;
        // One at a time: the crossings asserted below follow the order facts are applied in.
        world.wait_stock_idle().await;
    }
    // Order results straight onto their stream: one rejected for A1, one for B2.
    for (order_id, sku) in [("o-1", "A1"), ("o-2", "B2")] {
        let result = OrderResult {
            order_id: order_id.into(),
            cause_event_id: format!("place-{order_id}"),
            decided_at_ms: 1,
            result: Some(order_result::Result::Rejected(OrderRejected {
                short_lines: vec![Shortfall {
                    line_id: "l1".into(),
                    sku: sku.into(),
                    requested: 5,
                    available: 0,
                }],
            })),
        };
        world
            .publish_raw(&subjects::order_result(order_id), result.encode_to_vec())
            .await;
    }
    world.wait_stock_idle().await;
    for stream in [
        subjects::ALERTS,
        subjects::STOCK_CHANGES,
        subjects::ORDER_RESULTS,
    ] {
        world.wait_idle(stream, "notify-worker").await;
    }
    wait_deliveries_done(&world, &["lows", "ledger", "orders"]).await;

    let mut low_kinds: Vec<(String, String)> = lows
        .received()
        .iter()
        .map(|r| {
            (
                r.event_type.clone(),
                r.body["data"]["sku"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    low_kinds.sort();
    low_kinds.dedup();
    assert_eq!(
        low_kinds,
        vec![
            ("low_stock".to_owned(), "A1".to_owned()),
            ("out_of_stock".to_owned(), "A1".to_owned())
        ]
    );

    // Exactly the ledger entries at store-1, identified by their Nats-Msg-Ids.
    let expected: HashSet<String> =
        stockflow_tests::read_stream(&world.js, subjects::STOCK_CHANGES, "stock.changes.>")
            .await
            .iter()
            .filter(|m| {
                stockflow_proto::v1::StockChanged::decode(m.payload.clone())
                    .is_ok_and(|c| c.location == "store-1")
            })
            .filter_map(|m| {
                m.headers
                    .as_ref()?
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_owned())
            })
            .collect();
    let all = stockflow_tests::count(&world.js, subjects::STOCK_CHANGES, "stock.changes.>").await;
    assert!(
        expected.len() >= 5,
        "receipts and sales of A1 and B2 at store-1"
    );
    assert!(
        (expected.len() as u64) < all,
        "the wh entries exist and are left out"
    );
    assert_eq!(ledger.ids(), expected);
    assert!(ledger
        .received()
        .iter()
        .all(|r| r.event_type == "stock_changed" && r.body["data"]["location"] == "store-1"));

    let rejected = orders.received();
    assert!(!rejected.is_empty());
    assert!(rejected
        .iter()
        .all(|r| r.event_type == "order_rejected" && r.body["data"]["order_id"] == "o-1"));
    for receiver in [&lows, &ledger, &orders] {
        receiver.assert_signatures_verified();
    }
    worker.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn every_event_is_delivered_at_least_once_across_a_kill() {
    let world = World::start().await;
    // Paced answers, one at a time: the kill lands in the middle of the stream.
    let receiver = Receiver::start(&[], Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{"id": "crm", "url": receiver.url, "events": ["*"]}]),
    );
    let metrics_addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").to_string()
    };
    let spawn = || {
        stockflow_tests::KillOnDrop(
            std::process::Command::new(stockflow_tests::workspace_binary("notify-worker"))
                .env("STOCKFLOW_NATS_URL", world.nats.url())
                .env("STOCKFLOW_METRICS_ADDR", &metrics_addr)
                .env("STOCKFLOW_LOG", "warn")
                .env("STOCKFLOW_WEBHOOKS_FILE", &file)
                .env("STOCKFLOW_WEBHOOK_SECRET", SECRET)
                .env("STOCKFLOW_ACK_WAIT_SECONDS", ACK_WAIT_SECONDS)
                .env("STOCKFLOW_WEBHOOK_CONCURRENCY", "1")
                .env("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", "20")
                .env("STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS", "200")
                .spawn()
                .expect("spawn notify-worker"),
        )
    };
    let n = 300;
    let mut ids = HashSet::new();
    for i in 0..n {
        let sku = format!("K-{i}");
        ids.insert(publish_alert(&world, &alert(AlertKind::LowStock, &sku, "wh", "e-1")).await);
    }

    let mut first = spawn();
    let seen = eventually("some deliveries", DEADLINE, || async {
        let seen = receiver.ids().len();
        (seen >= 30).then_some(seen)
    })
    .await;
    first.kill();
    let at_kill = receiver.ids().len();
    assert!(at_kill < n, "killed mid-way ({seen}..{at_kill} of {n})");

    let _second = spawn();
    eventually("every event delivered", DEADLINE, || async {
        (receiver.ids() == ids).then_some(())
    })
    .await;
    wait_alerts_delivered(&world, &["crm"]).await;
    receiver.assert_signatures_verified();

    // The restarted process counted its deliveries per endpoint, with no SKU in any label.
    let metrics = scrape(&metrics_addr).await;
    let delivered = metrics
        .lines()
        .find(|l| {
            l.starts_with("stockflow_webhook_deliveries_total{")
                && l.contains("endpoint=\"crm\"")
                && l.contains("outcome=\"delivered\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(delivered >= 1.0, "{metrics}");
    assert!(metrics.contains("stockflow_webhook_delivery_seconds_bucket{endpoint=\"crm\""));
    assert!(!metrics.contains("K-1"), "no SKU in labels");
}

/// `GET /metrics` over a plain socket.
async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener");
    socket
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    socket
        .read_to_string(&mut response)
        .await
        .expect("response");
    response
}

#[tokio::test]
async fn a_receiver_down_longer_than_the_old_give_up_time_gets_everything_once_back() {
    let world = World::start().await;
    let down = Receiver::failing(503).await;
    let healthy = Receiver::start(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            {"id": "down", "url": down.url, "events": ["*"]},
            {"id": "healthy", "url": healthy.url, "events": ["*"]},
        ]),
    );
    // The breaker has its own test: here every delivery is retried on its own schedule.
    let worker = notify_worker(
        &world,
        &fast(&file, &[("STOCKFLOW_WEBHOOK_BREAKER_FAILURES", "0")]),
    );
    let n = 20;
    let mut ids = HashSet::new();
    for i in 0..n {
        let sku = format!("O-{i}");
        ids.insert(publish_alert(&world, &alert(AlertKind::LowStock, &sku, "wh", "e-1")).await);
    }
    // The second endpoint gets everything during the outage.
    eventually("the healthy endpoint has every event", DEADLINE, || async {
        (healthy.accepted_ids() == ids).then_some(())
    })
    .await;
    wait_deliveries_done(&world, &["healthy"]).await;
    // Every delivery failed more often than the old 8 attempts allowed.
    eventually("nine failed POSTs of every event", DEADLINE, || async {
        let posts = down.posts_per_event();
        (posts.len() == n && posts.values().all(|p| *p >= 9)).then_some(())
    })
    .await;
    assert!(down.accepted_ids().is_empty());
    assert_eq!(dead_letters_of(&world, "down").await, 0, "still retrying");

    down.answer(204);
    eventually("every event delivered once back", DEADLINE, || async {
        (down.accepted_ids() == ids).then_some(())
    })
    .await;
    wait_alerts_delivered(&world, &["down", "healthy"]).await;
    assert_eq!(down.accepted_ids(), ids, "each event id, none missing");
    down.assert_signatures_verified();
    assert_eq!(
        stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await,
        0,
        "nothing dead-lettered"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn notify_restarted_while_an_endpoint_is_down_loses_nothing() {
    let world = World::start().await;
    let down = Receiver::failing(503).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{"id": "down", "url": down.url, "events": ["*"]}]),
    );
    let env = fast(&file, &[("STOCKFLOW_WEBHOOK_BREAKER_FAILURES", "0")]);
    let first = notify_worker(&world, &env);
    let n = 10;
    let mut ids = HashSet::new();
    for i in 0..n {
        let sku = format!("R-{i}");
        ids.insert(publish_alert(&world, &alert(AlertKind::LowStock, &sku, "wh", "e-1")).await);
    }
    eventually("every event tried", DEADLINE, || async {
        (down.ids() == ids).then_some(())
    })
    .await;
    first.shutdown().await;
    assert_eq!(
        outbox_len(&world, "down").await,
        n as u64,
        "held in the outbox"
    );

    down.answer(204);
    let second = notify_worker(&world, &env);
    eventually(
        "every event delivered after the restart",
        DEADLINE,
        || async { (down.accepted_ids() == ids).then_some(()) },
    )
    .await;
    wait_alerts_delivered(&world, &["down"]).await;
    assert_eq!(
        stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await,
        0
    );
    second.shutdown().await;
}

#[tokio::test]
async fn an_open_breaker_pauses_its_endpoint_and_its_gauge_follows_the_real_state() {
    let world = World::start().await;
    let flaky = Receiver::failing(503).await;
    let refusing = Receiver::failing(410).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([
            {"id": "flaky", "url": flaky.url, "events": ["low_stock"]},
            {"id": "refusing", "url": refusing.url, "events": ["back_in_stock"]},
        ]),
    );
    let metrics_addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    // A process of its own, so that its /metrics holds only its gauges.
    let _worker = stockflow_tests::KillOnDrop(
        std::process::Command::new(stockflow_tests::workspace_binary("notify-worker"))
            .env("STOCKFLOW_NATS_URL", world.nats.url())
            .env("STOCKFLOW_METRICS_ADDR", metrics_addr.to_string())
            .env("STOCKFLOW_LOG", "warn")
            .env("STOCKFLOW_WEBHOOKS_FILE", &file)
            .env("STOCKFLOW_WEBHOOK_SECRET", SECRET)
            .env("STOCKFLOW_ACK_WAIT_SECONDS", ACK_WAIT_SECONDS)
            .env("STOCKFLOW_WEBHOOK_CONCURRENCY", "1")
            .env("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", "20")
            .env("STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS", "200")
            .env("STOCKFLOW_WEBHOOK_BREAKER_FAILURES", "3")
            .env("STOCKFLOW_WEBHOOK_BREAKER_OPEN_SECONDS", "3")
            .spawn()
            .expect("spawn notify-worker"),
    );
    let gauge = |endpoint: &'static str| {
        let addr = metrics_addr.to_string();
        async move {
            gauge_of(
                &scrape(&addr).await,
                "stockflow_webhook_breaker_open",
                endpoint,
            )
        }
    };
    eventually("ready", DEADLINE, || async {
        stockflow_tests::http_get(metrics_addr, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;

    let n = 10;
    let mut ids = HashSet::new();
    for i in 0..n {
        let sku = format!("F-{i}");
        ids.insert(publish_alert(&world, &alert(AlertKind::LowStock, &sku, "wh", "e-1")).await);
    }
    eventually("the breaker opens", DEADLINE, || async {
        (gauge("flaky").await == Some(1.0)).then_some(())
    })
    .await;
    let failed_when_opened = flaky.failed_posts();
    assert!(failed_when_opened >= 3, "{failed_when_opened}");
    // An endpoint's outage is not notify's: still ready.
    let (status, body) = stockflow_tests::http_get(metrics_addr, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 200, "{body}");
    eventually("every delivery held, none dropped", DEADLINE, || async {
        (outbox_len(&world, "flaky").await == n as u64).then_some(())
    })
    .await;

    flaky.answer(204);
    eventually(
        "every event delivered after the pause",
        DEADLINE,
        || async { (flaky.accepted_ids() == ids).then_some(()) },
    )
    .await;
    wait_deliveries_done(&world, &["flaky"]).await;
    // No POST while open: at most the probe that was already out when the endpoint came back.
    assert!(
        flaky.failed_posts() <= failed_when_opened + 1,
        "{} failed POSTs, {failed_when_opened} when the breaker opened",
        flaky.failed_posts()
    );
    eventually("the breaker closes", DEADLINE, || async {
        (gauge("flaky").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        dead_letters_of(&world, "flaky").await,
        0,
        "nothing dead-lettered for it"
    );

    // Three refusals open the other endpoint's breaker with nothing left to deliver: the gauge
    // still returns to 0 when the open period ends.
    for i in 0..3 {
        let sku = format!("G-{i}");
        publish_alert(&world, &alert(AlertKind::BackInStock, &sku, "wh", "e-1")).await;
    }
    eventually(
        "the refusing endpoint's breaker opens",
        DEADLINE,
        || async { (gauge("refusing").await == Some(1.0)).then_some(()) },
    )
    .await;
    wait_deliveries_done(&world, &["refusing"]).await;
    assert_eq!(
        gauge("refusing").await,
        Some(1.0),
        "open with no traffic left"
    );
    assert_eq!(
        dead_letters_of(&world, "refusing").await,
        3,
        "refusals are dead-lettered"
    );
    eventually(
        "the gauge returns to 0 without traffic",
        DEADLINE,
        || async { (gauge("refusing").await == Some(0.0)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn slow_deliveries_are_kept_in_progress_and_posted_once() {
    // The endpoint's consumer has a 5 s ack wait (`fast`). Every POST takes longer than that,
    // two at a time: deliveries wait for the endpoint for more than an ack wait, and none of
    // that may look like a crash to JetStream.
    let world = World::start().await;
    let receiver = Receiver::start(&[], Duration::from_millis(5500)).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = subscriptions_file(
        &dir,
        serde_json::json!([{"id": "slow", "url": receiver.url, "events": ["*"]}]),
    );
    let worker = notify_worker(
        &world,
        &fast(
            &file,
            &[
                ("STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS", "10000"),
                ("STOCKFLOW_WEBHOOK_CONCURRENCY", "2"),
            ],
        ),
    );
    let n = 4;
    let mut ids = HashSet::new();
    for i in 0..n {
        let sku = format!("P-{i}");
        ids.insert(publish_alert(&world, &alert(AlertKind::LowStock, &sku, "wh", "e-1")).await);
    }
    eventually("every event delivered", DEADLINE, || async {
        (receiver.ids() == ids).then_some(())
    })
    .await;
    wait_alerts_delivered(&world, &["slow"]).await;
    // Stopping drains what the worker holds, so a late redelivered copy would be POSTed by now.
    worker.shutdown().await;

    let posts = receiver.received();
    let mut per_event = std::collections::HashMap::<&str, usize>::new();
    for post in &posts {
        *per_event.entry(post.event_id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "POSTed more than once: {repeated:?}");
    assert_eq!(posts.len(), n, "one POST per event");
    receiver.assert_signatures_verified();
}
