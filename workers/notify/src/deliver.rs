//! Delivery of the webhook outbox: one consumer per endpoint on `WEBHOOKS`, whose handler signs
//! and POSTs each delivery. A failure is NAKed with a back-off between a floor and a ceiling;
//! only a refusal (4xx other than 408/429, a redirect) or a delivery still failing past the retry
//! horizon becomes a dead letter. A failing endpoint's breaker pauses its consumer: nothing is
//! pulled or POSTed while it is open, and nothing is dead-lettered because of it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use hmac::{Hmac, Mac as _};
use reqwest::StatusCode;
use sha2::Sha256;
use stockflow_shared::{
    consume::{Delivery, HandleError, Handled, Handler, Outcome},
    deadletter::{DeadLetters, Route},
    health::HealthCheck,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{event::EventType, outbox, subscriptions::Subscription};

/// Header: the derived event's id, the same on every attempt and redelivery.
pub const HEADER_EVENT_ID: &str = "X-Stockflow-Event-Id";
/// Header: the event type (`low_stock`, `order_confirmed`, ...).
pub const HEADER_EVENT_TYPE: &str = "X-Stockflow-Event-Type";
/// Header: Unix seconds when this attempt was signed.
pub const HEADER_TIMESTAMP: &str = "X-Stockflow-Timestamp";
/// Header: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const HEADER_SIGNATURE: &str = "X-Stockflow-Signature";

/// The dead-letter headers of a failed delivery, defined with the other dead-letter headers so
/// that replay strips exactly these.
pub use stockflow_proto::subjects::{
    HEADER_WEBHOOK_DL_ATTEMPTS as HEADER_DL_ATTEMPTS,
    HEADER_WEBHOOK_DL_ENDPOINT as HEADER_DL_ENDPOINT,
    HEADER_WEBHOOK_DL_EVENT_ID as HEADER_DL_EVENT_ID,
};

/// Retry, horizon, breaker and timeout settings (shared with the connector).
pub use stockflow_shared::retry::RetryPolicy;

/// `sha256=<hex>` over `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// What the breaker lets a delivery do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// POST it (closed, or the one probe of a half-open breaker).
    Post,
    /// Paused: come back after this long.
    Wait(Duration),
}

/// Consecutive failed POSTs of one endpoint. Past the threshold it opens: the endpoint is paused
/// for the open period (its consumer pulls nothing, what it holds is NAKed with the rest of the
/// period), then half-open: one probe goes out, a success closes it, a failure re-opens it.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    last_failure: String,
}

impl Breaker {
    /// A closed breaker that opens after `failures_to_open` consecutive failures (0: never), for
    /// `open_for`.
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open,
            open_for,
            state: Mutex::new(BreakerState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether it is open at `now` (the gauge).
    pub fn is_open(&self, now: Instant) -> bool {
        self.state().open_until.is_some_and(|until| now < until)
    }

    /// Whether the consumer may pull at `now`: closed, or half-open with no probe out yet.
    pub fn may_pull(&self, now: Instant) -> bool {
        let state = self.state();
        match state.open_until {
            None => true,
            Some(until) => now >= until && !state.probing,
        }
    }

    /// What a delivery taken up at `now` may do; `probe_wait` is how long a delivery waits while
    /// another one probes a half-open breaker.
    pub fn admit(&self, now: Instant, probe_wait: Duration) -> Admit {
        let mut state = self.state();
        match state.open_until {
            None => Admit::Post,
            Some(until) if now < until => Admit::Wait(until - now),
            Some(_) if state.probing => Admit::Wait(probe_wait),
            Some(_) => {
                state.probing = true;
                Admit::Post
            }
        }
    }

    /// The last failure, for dead-letter reasons.
    pub fn last_failure(&self) -> String {
        self.state().last_failure.clone()
    }

    /// Records a POST's outcome at `now`; returns the state change, if any, for the log and the
    /// gauge: `Some(true)` opened, `Some(false)` closed.
    pub fn record(&self, failure: Option<&str>, now: Instant) -> Option<bool> {
        let mut state = self.state();
        match failure {
            None => {
                state.consecutive_failures = 0;
                state.probing = false;
                state.open_until.take().map(|_| false)
            }
            Some(reason) => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.last_failure = reason.to_owned();
                // A failed probe re-opens it for a full period.
                if state.probing
                    || (self.failures_to_open > 0
                        && state.consecutive_failures >= self.failures_to_open)
                {
                    state.probing = false;
                    state.open_until = Some(now + self.open_for);
                    return Some(true);
                }
                None
            }
        }
    }

    /// How many consecutive POSTs failed.
    pub fn consecutive_failures(&self) -> u32 {
        self.state().consecutive_failures
    }
}

/// An endpoint: its subscription and its breaker.
#[derive(Debug)]
pub struct Endpoint {
    /// The subscription.
    pub subscription: Subscription,
    /// Its breaker.
    pub breaker: Breaker,
}

impl Endpoint {
    /// `subscription` with a closed breaker.
    pub fn new(subscription: Subscription, policy: &RetryPolicy) -> Self {
        Self {
            subscription,
            breaker: Breaker::new(policy.breaker_failures, policy.breaker_open),
        }
    }
}

/// Keeps `stockflow_webhook_breaker_open{endpoint}` and the consumer's `may_pull` flag current,
/// also when no delivery comes by: the gauge drops to 0 when the open period ends.
pub async fn watch_breaker(
    endpoint: Arc<Endpoint>,
    nats_up: HealthCheck,
    may_pull: HealthCheck,
    shutdown: CancellationToken,
) {
    let gauge = metrics::gauge!("stockflow_webhook_breaker_open", "endpoint" => endpoint.subscription.id.clone());
    gauge.set(0.0);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        gauge.set(if endpoint.breaker.is_open(now) {
            1.0
        } else {
            0.0
        });
        may_pull.set(nats_up.get() && endpoint.breaker.may_pull(now));
    }
}

/// What one POST came to.
enum Attempt {
    Delivered,
    /// 5xx, 408, 429, a timeout or a connection error.
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other status: the endpoint refuses this request for good.
    Permanent {
        reason: String,
    },
}

/// Delivers one endpoint's outbox messages; the handler of its consumer on `WEBHOOKS`.
#[derive(Debug)]
pub struct Deliverer {
    client: reqwest::Client,
    policy: RetryPolicy,
    endpoint: Arc<Endpoint>,
    dead_letters: DeadLetters,
}

impl Deliverer {
    /// A deliverer to `endpoint` over `client`.
    pub fn new(
        client: reqwest::Client,
        policy: RetryPolicy,
        endpoint: Arc<Endpoint>,
        dead_letters: DeadLetters,
    ) -> Self {
        // The endpoint's series exist from the start, at 0.
        let id = endpoint.subscription.id.clone();
        for outcome in ["delivered", "retried", "failed"] {
            metrics::counter!("stockflow_webhook_deliveries_total", "endpoint" => id.clone(), "outcome" => outcome)
                .increment(0);
        }
        Self {
            client,
            policy,
            endpoint,
            dead_letters,
        }
    }

    /// The HTTP client every deliverer shares: POSTs time out after `timeout`; redirects are
    /// not followed (a webhook URL that moved is a configuration error, a permanent failure).
    pub fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stockflow-notify/", env!("CARGO_PKG_VERSION")))
            .build()?)
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!("stockflow_webhook_deliveries_total", "endpoint" => self.endpoint.subscription.id.clone(), "outcome" => outcome)
            .increment(1);
    }

    async fn post(&self, delivery: &outbox::Outgoing) -> Attempt {
        let subscription = &self.endpoint.subscription;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        // Signed at POST time: the timestamp is this attempt's.
        let signature = signature(
            subscription.secret.expose().as_bytes(),
            &timestamp,
            &delivery.body,
        );
        let started = Instant::now();
        let sent = self
            .client
            .post(subscription.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_EVENT_ID, &delivery.event_id)
            .header(HEADER_EVENT_TYPE, &delivery.event_type)
            .header(HEADER_TIMESTAMP, &timestamp)
            .header(HEADER_SIGNATURE, signature)
            .body(delivery.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(response) => classify(response.status(), response.headers()),
            // The URL may carry credentials: never put it in a reason.
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                Attempt::Retryable {
                    reason: format!("{kind}: {}", error_chain(&e.without_url())),
                    retry_after: None,
                }
            }
        };
        metrics::histogram!("stockflow_webhook_delivery_seconds", "endpoint" => subscription.id.clone())
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Stores the outbox message itself as the dead letter, on `deadletter.webhooks.<id>`; the
    /// loop then acks it, which removes it from the work queue.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        delivery: &outbox::Outgoing,
        reason: &str,
        delivered: i64,
    ) -> Result<Handled, HandleError> {
        let id = &self.endpoint.subscription.id;
        let route = Route {
            subject: Some(stockflow_proto::subjects::dead_letter(
                &stockflow_proto::subjects::webhook(id),
            )),
            // The default `dlq:WEBHOOKS:<sequence>`: one dead letter per outbox message.
            message_id: None,
            headers: vec![
                (HEADER_DL_ENDPOINT, id.clone()),
                (HEADER_DL_ATTEMPTS, delivered.to_string()),
                (HEADER_DL_EVENT_ID, delivery.event_id.clone()),
            ],
        };
        let reason = format!("webhook {id}: {reason}");
        tracing::warn!(endpoint = %id, event_id = %delivery.event_id, %reason, "webhook delivery dead-lettered");
        self.dead_letters
            .store_with(message, &reason, route)
            .await
            .map_err(HandleError::nats)?;
        self.count("failed");
        metrics::counter!("stockflow_dead_letters_total", "worker" => "notify-worker", "reason" => "webhook_failed")
            .increment(1);
        Ok(self.handled(delivery))
    }

    fn handled(&self, delivery: &outbox::Outgoing) -> Handled {
        Handled {
            event_type: EventType::from_name(&delivery.event_type)
                .map_or("webhook", EventType::as_str),
            outcome: Outcome::Applied,
        }
    }

    fn horizon_reason(&self, last: &str) -> String {
        format!(
            "not delivered within the retry horizon of {}s (STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS) since it was enqueued; last failure: {last}",
            self.policy.horizon.as_secs()
        )
    }
}

impl Handler for Deliverer {
    fn event_types(&self) -> &'static [&'static str] {
        &crate::event::NAMES
    }

    async fn handle(&self, incoming: &Delivery) -> Result<Handled, HandleError> {
        let message = incoming.message();
        let Some(delivery) = outbox::read(message) else {
            return Err(HandleError::malformed(
                "webhook",
                "decode",
                format!("not a webhook delivery: no {HEADER_EVENT_ID} header"),
            ));
        };
        let (delivered, enqueued) = match message.info() {
            Ok(info) => (info.delivered, info.published),
            Err(_) => (1, time::OffsetDateTime::now_utc()),
        };
        let age =
            || Duration::try_from(time::OffsetDateTime::now_utc() - enqueued).unwrap_or_default();
        let past_horizon = || age() >= self.policy.horizon;
        match self
            .endpoint
            .breaker
            .admit(Instant::now(), self.policy.backoff_floor)
        {
            Admit::Post => {}
            // The endpoint has been failing for as long as the horizon allows: the delivery
            // ends here, not because the breaker is open.
            Admit::Wait(_) if past_horizon() => {
                let last = self.endpoint.breaker.last_failure();
                return self
                    .dead_letter(message, &delivery, &self.horizon_reason(&last), delivered)
                    .await;
            }
            Admit::Wait(delay) => {
                return Err(HandleError::RetryIn {
                    reason: "endpoint paused by its breaker".into(),
                    delay,
                })
            }
        }
        let outcome = self.post(&delivery).await;
        let id = &self.endpoint.subscription.id;
        let failure = match &outcome {
            Attempt::Delivered => None,
            Attempt::Retryable { reason, .. } | Attempt::Permanent { reason } => {
                Some(reason.as_str())
            }
        };
        match self.endpoint.breaker.record(failure, Instant::now()) {
            Some(true) => {
                tracing::warn!(endpoint = %id, failures = self.endpoint.breaker.consecutive_failures(), "webhook endpoint failing; breaker open, deliveries paused");
                metrics::gauge!("stockflow_webhook_breaker_open", "endpoint" => id.clone())
                    .set(1.0);
            }
            Some(false) => {
                tracing::info!(endpoint = %id, "webhook endpoint recovered; breaker closed");
                metrics::gauge!("stockflow_webhook_breaker_open", "endpoint" => id.clone())
                    .set(0.0);
            }
            None => {}
        }
        match outcome {
            Attempt::Delivered => {
                self.count("delivered");
                Ok(self.handled(&delivery))
            }
            Attempt::Permanent { reason } => {
                self.dead_letter(
                    message,
                    &delivery,
                    &format!("{reason} (refused; not retried)"),
                    delivered,
                )
                .await
            }
            Attempt::Retryable { reason, .. } if past_horizon() => {
                self.dead_letter(message, &delivery, &self.horizon_reason(&reason), delivered)
                    .await
            }
            Attempt::Retryable {
                reason,
                retry_after,
            } => {
                self.count("retried");
                let delay = self.policy.retry_delay(delivered, retry_after);
                tracing::debug!(endpoint = %id, event_id = %delivery.event_id, delivered, %reason, delay_seconds = delay.as_secs_f64(), "webhook attempt failed; retrying");
                Err(HandleError::RetryIn { reason, delay })
            }
        }
    }
}

fn classify(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered;
    }
    let reason = format!("HTTP {}", status.as_u16());
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Attempt::Retryable {
            reason,
            retry_after,
        }
    } else {
        Attempt::Permanent { reason }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex_over_timestamp_dot_body() {
        let sig = signature(b"key", "1700000000", br#"{"a":1}"#);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").expect("key");
        mac.update(br#"1700000000.{"a":1}"#);
        let direct: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sig, format!("sha256={direct}"));
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, signature(b"other", "1700000000", br#"{"a":1}"#));
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            timeout: Duration::from_secs(1),
            backoff_floor: Duration::from_millis(100),
            backoff_ceiling: Duration::from_millis(1000),
            horizon: Duration::from_secs(3600),
            breaker_failures: 3,
            breaker_open: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_from_the_floor_to_the_ceiling_and_jitter_never_goes_below_the_floor() {
        let policy = policy();
        for delivered in 1..=40_i64 {
            let shift = u32::try_from(delivered - 1).expect("positive").min(10);
            let cap = Duration::from_millis(100_u64 << shift).min(Duration::from_secs(1));
            for _ in 0..50 {
                let delay = policy.backoff(delivered);
                assert!(delay >= policy.backoff_floor, "{delivered}: {delay:?}");
                assert!(delay >= cap / 2 && delay <= cap, "{delivered}: {delay:?}");
            }
        }
        assert!(policy.backoff(0) >= policy.backoff_floor);
        // Retry-After is honoured up to the ceiling.
        let asked = policy.retry_delay(1, Some(Duration::from_millis(700)));
        assert_eq!(asked, Duration::from_millis(700));
        let capped = policy.retry_delay(1, Some(Duration::from_secs(3600)));
        assert_eq!(capped, policy.backoff_ceiling);
    }

    #[test]
    fn the_breaker_pauses_then_lets_one_probe_through() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        let start = Instant::now();
        let wait = Duration::from_millis(100);
        assert_eq!(breaker.admit(start, wait), Admit::Post);
        assert_eq!(breaker.record(Some("HTTP 503"), start), None);
        assert_eq!(breaker.record(Some("HTTP 503"), start), None);
        assert_eq!(breaker.record(Some("HTTP 503"), start), Some(true));
        assert!(breaker.is_open(start));
        assert!(!breaker.may_pull(start));
        let later = start + Duration::from_secs(4);
        assert_eq!(
            breaker.admit(later, wait),
            Admit::Wait(Duration::from_secs(6))
        );
        // The period ends: open no more, and exactly one probe goes out.
        let after = start + Duration::from_secs(10);
        assert!(!breaker.is_open(after));
        assert!(breaker.may_pull(after));
        assert_eq!(breaker.admit(after, wait), Admit::Post);
        assert!(
            !breaker.may_pull(after),
            "no more pulls while the probe is out"
        );
        assert_eq!(breaker.admit(after, wait), Admit::Wait(wait));
        // A failed probe re-opens it for a full period.
        assert_eq!(breaker.record(Some("HTTP 503"), after), Some(true));
        assert!(breaker.is_open(after + Duration::from_secs(9)));
        assert_eq!(breaker.last_failure(), "HTTP 503");
        let again = after + Duration::from_secs(10);
        assert_eq!(breaker.admit(again, wait), Admit::Post);
        // A successful probe closes it.
        assert_eq!(breaker.record(None, again), Some(false));
        assert!(breaker.may_pull(again));
        assert_eq!(breaker.admit(again, wait), Admit::Post);
        assert_eq!(breaker.consecutive_failures(), 0);
    }

    #[test]
    fn a_breaker_with_no_threshold_never_opens() {
        let breaker = Breaker::new(0, Duration::from_secs(10));
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(breaker.record(Some("connection failed"), now), None);
        }
        assert!(!breaker.is_open(now));
        assert_eq!(breaker.admit(now, Duration::ZERO), Admit::Post);
    }

    #[test]
    fn statuses_are_classified() {
        let none = reqwest::header::HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, &none),
            Attempt::Delivered
        ));
        for retry in [500, 502, 503, 408, 429] {
            let status = StatusCode::from_u16(retry).expect("status");
            assert!(
                matches!(classify(status, &none), Attempt::Retryable { .. }),
                "{retry}"
            );
        }
        for permanent in [400, 401, 404, 410, 301] {
            let status = StatusCode::from_u16(permanent).expect("status");
            assert!(
                matches!(classify(status, &none), Attempt::Permanent { .. }),
                "{permanent}"
            );
        }
    }
}
