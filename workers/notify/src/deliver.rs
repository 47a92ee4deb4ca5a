//! One delivery of one event to one endpoint: signed POSTs, retried with exponential back-off and
//! full jitter, and a dead letter once the endpoint refuses it for good or attempts run out.

use std::{sync::Mutex, time::Duration};

use async_nats::jetstream;
use hmac::{Hmac, Mac as _};
use reqwest::StatusCode;
use sha2::Sha256;
use stockflow_shared::deadletter::{DeadLetters, Route};
use tokio::{sync::Semaphore, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{event::Notification, subscriptions::Subscription};

/// Header: the derived event's id, the same on every attempt and redelivery.
pub const HEADER_EVENT_ID: &str = "X-Stockflow-Event-Id";
/// Header: the event type (`low_stock`, `order_confirmed`, ...).
pub const HEADER_EVENT_TYPE: &str = "X-Stockflow-Event-Type";
/// Header: Unix seconds when this attempt was signed.
pub const HEADER_TIMESTAMP: &str = "X-Stockflow-Timestamp";
/// Header: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const HEADER_SIGNATURE: &str = "X-Stockflow-Signature";

/// Dead-letter header: the subscription id.
pub const HEADER_DL_ENDPOINT: &str = "Stockflow-Webhook-Endpoint";
/// Dead-letter header: how many POSTs were made.
pub const HEADER_DL_ATTEMPTS: &str = "Stockflow-Webhook-Attempts";
/// Dead-letter header: the event id the receiver would have seen.
pub const HEADER_DL_EVENT_ID: &str = "Stockflow-Webhook-Event-Id";

/// Retry and timeout settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// POSTs per delivery before it is dead-lettered (`STOCKFLOW_WEBHOOK_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Bound on one POST, connect to last byte (`STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS`).
    pub timeout: Duration,
    /// First back-off ceiling; doubles per attempt (`STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS`).
    pub backoff_base: Duration,
    /// Largest back-off ceiling (`STOCKFLOW_WEBHOOK_BACKOFF_MAX_MILLIS`).
    pub backoff_max: Duration,
    /// Consecutive failed POSTs that open an endpoint's breaker; 0 never opens it
    /// (`STOCKFLOW_WEBHOOK_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// How long an open breaker dead-letters without POSTing before it lets a POST try again
    /// (`STOCKFLOW_WEBHOOK_BREAKER_OPEN_SECONDS`).
    pub breaker_open: Duration,
}

impl RetryPolicy {
    /// Full jitter: uniformly random in `0..=min(max, base * 2^(attempt-1))`, so endpoints that
    /// come back are not hit by every retry at once.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.backoff_max);
        ceiling.mul_f64(fastrand::f64())
    }
}

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

/// An endpoint, its own bound on concurrent POSTs (a slow endpoint uses up its own permits, never
/// another's) and its breaker.
#[derive(Debug)]
pub struct Endpoint {
    /// The subscription.
    pub subscription: Subscription,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
}

/// Consecutive failures of one endpoint. Once open, deliveries are dead-lettered without a POST
/// until `open_until`: inputs are acked only when every endpoint has them, so a dead endpoint
/// that kept every input for its full retry schedule would end up holding the whole in-flight
/// window, and with it every healthy endpoint.
#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    last_failure: String,
}

impl Endpoint {
    /// `subscription` with at most `concurrency` POSTs in flight.
    pub fn new(subscription: Subscription, concurrency: usize) -> Self {
        Self {
            subscription,
            permits: Semaphore::new(concurrency),
            breaker: Mutex::new(Breaker::default()),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        // The breaker holds plain counters: a panic elsewhere cannot leave it inconsistent.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why deliveries are dead-lettered at once right now, if they are.
    fn open_reason(&self) -> Option<String> {
        let breaker = self.breaker();
        let open = breaker
            .open_until
            .is_some_and(|until| Instant::now() < until);
        open.then(|| {
            format!(
                "breaker open after {} consecutive failed attempts, last: {}",
                breaker.consecutive_failures, breaker.last_failure
            )
        })
    }

    fn record(&self, failure: Option<&str>, policy: &RetryPolicy) {
        let id = self.subscription.id.clone();
        let mut breaker = self.breaker();
        match failure {
            None => {
                if breaker.open_until.take().is_some() {
                    tracing::info!(endpoint = %id, "webhook endpoint recovered; breaker closed");
                    metrics::gauge!("stockflow_webhook_breaker_open", "endpoint" => id).set(0.0);
                }
                breaker.consecutive_failures = 0;
            }
            Some(reason) => {
                breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
                breaker.last_failure = reason.to_owned();
                // Past the threshold every failure (e.g. the probe after the open period)
                // re-opens it for a full period.
                if policy.breaker_failures > 0
                    && breaker.consecutive_failures >= policy.breaker_failures
                {
                    if breaker.open_until.is_none() {
                        tracing::warn!(endpoint = %id, failures = breaker.consecutive_failures, "webhook endpoint failing; breaker open");
                    }
                    breaker.open_until = Some(Instant::now() + policy.breaker_open);
                    metrics::gauge!("stockflow_webhook_breaker_open", "endpoint" => id).set(1.0);
                }
            }
        }
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The endpoint answered 2xx.
    Delivered,
    /// Recorded in `DEAD_LETTERS`.
    DeadLettered,
    /// Shutdown came first: nothing is recorded, the input must be redelivered.
    Interrupted,
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

/// Delivers notifications; shared by every message task.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    policy: RetryPolicy,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
}

impl Deliverer {
    /// A deliverer whose POSTs time out after `policy.timeout`; redirects are not followed (a
    /// webhook URL that moved is a configuration error, surfaced as a permanent failure).
    pub fn new(
        policy: RetryPolicy,
        dead_letters: DeadLetters,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stockflow-notify/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            dead_letters,
            shutdown,
        })
    }

    /// Delivers `notification` to `endpoint` until it is accepted or dead-lettered (or shutdown).
    pub async fn deliver(
        &self,
        endpoint: &Endpoint,
        notification: &Notification,
        message: &jetstream::Message,
    ) -> Delivery {
        let id = endpoint.subscription.id.as_str();
        let mut attempt = 0u32;
        loop {
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => return Delivery::Interrupted,
                permit = endpoint.permits.acquire() => permit,
            };
            // Checked after waiting for a permit: the breaker may have opened meanwhile.
            if let Some(reason) = endpoint.open_reason() {
                drop(permit);
                metrics::counter!("stockflow_webhook_deliveries_total", "endpoint" => id.to_owned(), "outcome" => "failed")
                    .increment(1);
                tracing::debug!(endpoint = id, event_id = %notification.event_id, "breaker open; dead-lettering");
                return self
                    .dead_letter(endpoint, notification, message, &reason, attempt)
                    .await;
            }
            attempt += 1;
            let outcome = self.post(endpoint, notification).await;
            drop(permit);
            endpoint.record(
                match &outcome {
                    Attempt::Delivered => None,
                    Attempt::Retryable { reason, .. } | Attempt::Permanent { reason } => {
                        Some(reason)
                    }
                },
                &self.policy,
            );
            let reason = match outcome {
                Attempt::Delivered => {
                    metrics::counter!("stockflow_webhook_deliveries_total", "endpoint" => id.to_owned(), "outcome" => "delivered")
                        .increment(1);
                    return Delivery::Delivered;
                }
                Attempt::Retryable {
                    reason,
                    retry_after,
                } if attempt < self.policy.max_attempts => {
                    metrics::counter!("stockflow_webhook_deliveries_total", "endpoint" => id.to_owned(), "outcome" => "retried")
                        .increment(1);
                    // A Retry-After within the back-off cap is honoured; a longer one is capped.
                    let delay = self
                        .policy
                        .backoff(attempt)
                        .max(retry_after.unwrap_or_default().min(self.policy.backoff_max));
                    tracing::debug!(endpoint = id, event_id = %notification.event_id, attempt, %reason, ?delay, "webhook attempt failed; retrying");
                    // Back-off before the next attempt (with jitter, or the endpoint's Retry-After).
                    tokio::select! {
                        () = self.shutdown.cancelled() => return Delivery::Interrupted,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
                Attempt::Retryable { reason, .. } | Attempt::Permanent { reason } => reason,
            };
            metrics::counter!("stockflow_webhook_deliveries_total", "endpoint" => id.to_owned(), "outcome" => "failed")
                .increment(1);
            tracing::warn!(endpoint = id, event_id = %notification.event_id, attempt, %reason, "webhook delivery failed; dead-lettering");
            return self
                .dead_letter(endpoint, notification, message, &reason, attempt)
                .await;
        }
    }

    async fn post(&self, endpoint: &Endpoint, notification: &Notification) -> Attempt {
        let subscription = &endpoint.subscription;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let signature = signature(
            subscription.secret.expose().as_bytes(),
            &timestamp,
            &notification.body,
        );
        let started = Instant::now();
        let sent = self
            .client
            .post(subscription.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_EVENT_ID, &notification.event_id)
            .header(HEADER_EVENT_TYPE, notification.event_type.as_str())
            .header(HEADER_TIMESTAMP, &timestamp)
            .header(HEADER_SIGNATURE, signature)
            .body(notification.body.clone())
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

    /// Stores the dead letter, retrying while NATS is unavailable: the input is acked only once
    /// every delivery ended, so this must succeed or be interrupted.
    async fn dead_letter(
        &self,
        endpoint: &Endpoint,
        notification: &Notification,
        message: &jetstream::Message,
        reason: &str,
        attempts: u32,
    ) -> Delivery {
        let id = &endpoint.subscription.id;
        let (stream, sequence) = match message.info() {
            Ok(info) => (info.stream.to_owned(), info.stream_sequence),
            Err(_) => ("unknown".to_owned(), 0),
        };
        let route = Route {
            subject: Some(format!("deadletter.webhooks.{id}")),
            // One dead letter per (endpoint, input), however often this is retried.
            message_id: Some(format!("whk:{id}:{stream}:{sequence}")),
            headers: vec![
                (HEADER_DL_ENDPOINT, id.clone()),
                (HEADER_DL_ATTEMPTS, attempts.to_string()),
                (HEADER_DL_EVENT_ID, notification.event_id.clone()),
            ],
        };
        let reason = format!("webhook {id}: {reason} (after {attempts} attempts)");
        let mut failures = 0u32;
        loop {
            match self
                .dead_letters
                .store_with(message, &reason, route.clone())
                .await
            {
                Ok(()) => {
                    metrics::counter!("stockflow_dead_letters_total", "worker" => "notify-worker", "reason" => "webhook_failed")
                        .increment(1);
                    return Delivery::DeadLettered;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(endpoint = %id, error = %e, "dead letter not stored; retrying");
                    let delay = Duration::from_millis(200)
                        .saturating_mul(1 << failures.min(5))
                        .min(Duration::from_secs(5));
                    // Back-off while JetStream cannot store the dead letter.
                    tokio::select! {
                        () = self.shutdown.cancelled() => return Delivery::Interrupted,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
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

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let policy = RetryPolicy {
            max_attempts: 5,
            timeout: Duration::from_secs(1),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            breaker_failures: 0,
            breaker_open: Duration::from_secs(1),
        };
        for attempt in 1..=10 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(policy.backoff(attempt) <= cap);
            }
        }
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
