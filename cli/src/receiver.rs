//! A webhook receiver on 127.0.0.1, as a customer would run one: it checks each delivery's
//! `X-Stockflow-Signature` over the raw body, answers 204 when it verifies and 401 when it does
//! not, and records what it received. `stockflow-demo` points the notify worker at it.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use stockflow_shared::settings::Secret;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far a delivery's timestamp may be from our clock before it counts as a replay.
const TIMESTAMP_TOLERANCE_SECONDS: u64 = 300;

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The path segment after `/hooks/`: which subscription it came through.
    pub hook: String,
    /// `X-Stockflow-Event-Id`, the id receivers deduplicate on.
    pub event_id: String,
    /// `X-Stockflow-Event-Type` (`low_stock`, `order_confirmed`, …).
    pub event_type: String,
    /// Whether `X-Stockflow-Signature` verified with the shared secret (and the timestamp was
    /// fresh); `Err` says why not.
    pub signature: Result<(), String>,
    /// The JSON body (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

impl Delivery {
    /// A string field of the body's `data` (`sku`, `location`, `order_id`, …), or `""`.
    pub fn data(&self, field: &str) -> &str {
        self.body["data"][field].as_str().unwrap_or_default()
    }
}

/// What the handlers share.
#[derive(Debug)]
struct Inbox {
    secret: Secret,
    received: Mutex<Vec<Delivery>>,
    /// Bumped on every delivery, so a waiter wakes on a change instead of polling.
    count: watch::Sender<usize>,
}

/// A running receiver; it stops when dropped.
#[derive(Debug)]
pub struct WebhookReceiver {
    addr: SocketAddr,
    inbox: Arc<Inbox>,
    stop: CancellationToken,
}

/// Deliveries a wait expected and did not see in time.
#[derive(Debug, thiserror::Error)]
#[error("{} expected webhook deliveries did not arrive within {waited:?}: {}", missing.len(), preview(missing))]
pub struct NotDelivered {
    /// The event ids that did not arrive.
    pub missing: Vec<String>,
    /// How long we waited.
    pub waited: Duration,
}

fn preview(ids: &[String]) -> String {
    let mut shown = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        shown.push_str(&format!(", … {} more", ids.len() - 5));
    }
    shown
}

impl WebhookReceiver {
    /// Binds a free port on 127.0.0.1 and serves `POST /hooks/{hook}`, verifying signatures
    /// with `secret`.
    pub async fn start(secret: Secret) -> std::io::Result<Self> {
        let inbox = Arc::new(Inbox {
            secret,
            received: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        });
        let app = Router::new()
            .route("/hooks/{hook}", post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "webhook receiver stopped");
            }
        });
        Ok(Self { addr, inbox, stop })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the hook named `hook`.
    pub fn url(&self, hook: &str) -> String {
        format!("http://{}/hooks/{hook}", self.addr)
    }

    /// Every delivery so far, in arrival order (retries and redeliveries included).
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.inbox.received).clone()
    }

    /// Waits until a delivery with a verified signature has arrived for every id in
    /// `expected`, or `deadline` has passed.
    pub async fn wait_for(
        &self,
        expected: &HashSet<String>,
        deadline: Duration,
    ) -> Result<(), NotDelivered> {
        let mut changes = self.inbox.count.subscribe();
        let missing = || {
            let verified: HashSet<String> = lock(&self.inbox.received)
                .iter()
                .filter(|d| d.signature.is_ok())
                .map(|d| d.event_id.clone())
                .collect();
            let mut missing: Vec<String> = expected.difference(&verified).cloned().collect();
            missing.sort();
            missing
        };
        let waited = tokio::time::timeout(deadline, async {
            loop {
                // Marks the current count as seen before checking, so no delivery is missed.
                changes.borrow_and_update();
                if missing().is_empty() {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        match (waited, missing()) {
            (_, missing) if missing.is_empty() => Ok(()),
            (_, missing) => Err(NotDelivered {
                missing,
                waited: deadline,
            }),
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a Vec that is still valid: keep using it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn receive(
    State(inbox): State<Arc<Inbox>>,
    Path(hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature = verify(inbox.secret.expose().as_bytes(), &headers, &body);
    let status = if signature.is_ok() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    };
    lock(&inbox.received).push(Delivery {
        hook,
        event_id: header("x-stockflow-event-id"),
        event_type: header("x-stockflow-event-type"),
        signature,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    inbox.count.send_modify(|n| *n += 1);
    status
}

/// Checks `X-Stockflow-Signature` as documented in workers/notify/README.md: `sha256=` and the
/// hex HMAC-SHA256 of `<X-Stockflow-Timestamp>.<raw body>`, compared in constant time, with a
/// timestamp close to our clock.
pub fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("missing {name}"))
    };
    let timestamp = header("x-stockflow-timestamp")?;
    let signature = header("x-stockflow-signature")?;
    let seconds: u64 = timestamp
        .parse()
        .map_err(|_| format!("timestamp {timestamp:?} is not a number"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(seconds) > TIMESTAMP_TOLERANCE_SECONDS {
        return Err(format!("timestamp {seconds} is too far from now ({now})"));
    }
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or("signature lacks the sha256= prefix")?;
    let claimed = decode_hex(hex).ok_or("signature is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&claimed)
        .map_err(|_| "signature does not match".to_owned())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> String {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string()
    }

    async fn post(
        url: &str,
        signing_secret: &[u8],
        timestamp: &str,
        body: &str,
    ) -> reqwest::StatusCode {
        let signature =
            notify_worker::deliver::signature(signing_secret, timestamp, body.as_bytes());
        reqwest::Client::new()
            .post(url)
            .header("X-Stockflow-Event-Id", "alr:A:e-1:0:low_stock")
            .header("X-Stockflow-Event-Type", "low_stock")
            .header("X-Stockflow-Timestamp", timestamp)
            .header("X-Stockflow-Signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("POST to the receiver")
            .status()
    }

    #[tokio::test]
    async fn accepts_the_notify_workers_signature_and_refuses_others() {
        let receiver = WebhookReceiver::start(Secret::new("whsec-demo"))
            .await
            .expect("receiver starts");
        let body = r#"{"event_id":"alr:A:e-1:0:low_stock","type":"low_stock","data":{"sku":"A","location":"store-1"}}"#;
        let url = receiver.url("alerts");
        assert_eq!(post(&url, b"whsec-demo", &now(), body).await, 204);
        assert_eq!(post(&url, b"other", &now(), body).await, 401);
        assert_eq!(post(&url, b"whsec-demo", "1000", body).await, 401);

        let deliveries = receiver.deliveries();
        assert_eq!(deliveries.len(), 3);
        assert!(deliveries[0].signature.is_ok());
        assert_eq!(deliveries[0].hook, "alerts");
        assert_eq!(deliveries[0].data("sku"), "A");
        assert_eq!(deliveries[0].data("location"), "store-1");
        assert_eq!(
            deliveries[1].signature,
            Err("signature does not match".into())
        );
        assert!(deliveries[2]
            .signature
            .as_ref()
            .is_err_and(|e| e.contains("too far")));

        let want: HashSet<String> = ["alr:A:e-1:0:low_stock".to_owned()].into();
        receiver
            .wait_for(&want, Duration::from_secs(1))
            .await
            .expect("the verified delivery counts");
        let more: HashSet<String> = ["alr:A:e-1:0:low_stock", "alr:B:e-2:0:out_of_stock"]
            .map(str::to_owned)
            .into();
        let missing = receiver
            .wait_for(&more, Duration::from_millis(200))
            .await
            .expect_err("one id never arrives");
        assert_eq!(missing.missing, vec!["alr:B:e-2:0:out_of_stock".to_owned()]);
    }
}
