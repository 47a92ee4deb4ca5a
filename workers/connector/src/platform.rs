//! What every platform module implements ([`Platform`]): verify and translate its webhooks, push
//! a batch of quantities, read one quantity. The rest of the connector (HTTP intake, the
//! availability feed, batching, throttling, back-off, dead letters, metrics) is written once,
//! against this trait.

use std::time::Duration;

use axum::http::HeaderMap;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use crate::shops::{Item, PlatformKind};

/// Why an inbound webhook is refused. The variant is the HTTP answer and the metric label.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    /// No signature header: 401.
    #[error("no signature header")]
    MissingSignature,
    /// The signature does not match the body: 401. The body is never logged.
    #[error("the signature does not match the body")]
    BadSignature,
    /// A topic the connector does not translate: answered 200 (so the platform does not retry
    /// it forever) and counted.
    #[error("topic {0:?} is not handled")]
    IgnoredTopic(String),
    /// A signed body that is not the documented shape: 400, counted.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

impl Rejected {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::IgnoredTopic(_) => "ignored_topic",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// What an order webhook means for stockflow: a channel sale or a channel return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// Units sold on the channel (`sold` with `channel`).
    Sold,
    /// Units given back to the channel (`returned` with `channel`).
    Returned,
}

impl FactKind {
    /// The stock fact's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sold => "sold",
            Self::Returned => "returned",
        }
    }
}

/// One stock fact an inbound webhook asks for. Its `event_id` derives from the platform's own
/// ids only, so a retried or re-sent webhook yields the same ids and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundFact {
    /// `<platform>:<shop>:…` from the platform's order, line and refund ids.
    pub event_id: String,
    /// Sold or returned.
    pub kind: FactKind,
    /// The stockflow SKU (the line's SKU on the platform).
    pub sku: String,
    /// Units, > 0.
    pub quantity: i64,
    /// A URI of the platform document (order, refund).
    pub reference: String,
}

/// One quantity to set on the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The stockflow SKU.
    pub sku: String,
    /// Where it lives on the platform.
    pub item: Item,
    /// The quantity to set.
    pub quantity: i64,
    /// What the connector believes the platform holds now (the compare of a compare-and-set;
    /// ignored by platforms without one).
    pub expected: i64,
}

/// How one item of a pushed batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Set.
    Set,
    /// The platform holds another quantity than `expected` (someone edited it there): nothing
    /// was set.
    Stale,
    /// Not set because another item of the same call was refused: push it again.
    NotApplied,
    /// Refused for good (unknown item, validation error): dead-letter it with this reason.
    Refused(String),
}

/// Why a push or a read did not happen. The variant decides: wait, retry, or give up.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// Rate-limited (HTTP 429, `THROTTLED`): try again after `retry_after`.
    #[error("throttled; retry after {retry_after:?}")]
    Throttled {
        /// How long the platform asks to wait (from its cost budget or `Retry-After`).
        retry_after: Duration,
    },
    /// The platform did not answer, or answered 5xx: retried with back-off until the horizon.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was refused (authentication, a 4xx, a shape the platform rejects).
    #[error("refused: {0}")]
    Refused(String),
}

/// A call's result: one outcome per pushed item (same order) and how long to wait before the
/// next call (the platform's cost budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// One per item of the batch, in order.
    pub outcomes: Vec<ItemOutcome>,
    /// Pause before the next call to this shop, when its budget is low.
    pub pause: Option<Duration>,
}

/// A platform: one implementation per module ([`crate::shopify`], [`crate::woocommerce`]).
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// Which platform.
    fn kind(&self) -> PlatformKind;

    /// Checks the webhook's signature over the raw body, in constant time.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejected>;

    /// The platform's delivery id of a webhook (for logs and dedup), if it sends one.
    fn delivery_id(&self, headers: &HeaderMap) -> Option<String>;

    /// Turns a verified webhook into stock facts.
    fn translate(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<InboundFact>, Rejected>;

    /// Most items one push call may carry.
    fn max_batch(&self) -> usize;

    /// Whether pushes compare-and-set (a stale compare is possible, and the current quantity
    /// must be known before the first push).
    fn compares(&self) -> bool;

    /// Sets the quantities of `batch` in one call; `key` is the call's idempotency key (the same
    /// for the same batch, so a retried call is applied once).
    fn push<'a>(
        &'a self,
        batch: &'a [Push],
        key: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<PushReport, PlatformError>>;

    /// Reads the quantity the platform holds for `item`.
    fn read<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<i64, PlatformError>>;
}

/// Verifies a base64 HMAC-SHA256 signature of `body` under `secret`, in constant time (Shopify's
/// `X-Shopify-Hmac-Sha256`, WooCommerce's `X-WC-Webhook-Signature`).
pub fn verify_base64_hmac(
    secret: &[u8],
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), Rejected> {
    use base64::Engine as _;
    let signature = signature.ok_or(Rejected::MissingSignature)?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| Rejected::BadSignature)?;
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).map_err(|_| Rejected::BadSignature)
}

/// The base64 HMAC-SHA256 of `body` under `secret` (what the platforms send; for tests and the
/// fake platforms).
pub fn sign_base64_hmac(secret: &[u8], body: &[u8]) -> String {
    use base64::Engine as _;
    // HMAC takes keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A header's value as text, if present and printable.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What an HTTP failure means: 429 is a throttle (with its `Retry-After`), 5xx and 408 a platform
/// that is down, anything else a refusal.
pub fn classify_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> PlatformError {
    let retry_after = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        PlatformError::Throttled {
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        }
    } else if status.is_server_error() || status == reqwest::StatusCode::REQUEST_TIMEOUT {
        PlatformError::Unavailable(format!("HTTP {}", status.as_u16()))
    } else {
        PlatformError::Refused(format!("HTTP {}", status.as_u16()))
    }
}

/// A transport error, without its URL (which may name the shop's private host).
pub fn transport_error(e: &reqwest::Error) -> PlatformError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    PlatformError::Unavailable(kind.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_over_the_raw_body() {
        let body = br#"{"id":1}"#;
        let good = sign_base64_hmac(b"secret", body);
        assert_eq!(verify_base64_hmac(b"secret", body, Some(&good)), Ok(()));
        assert_eq!(
            verify_base64_hmac(b"other", body, Some(&good)),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            verify_base64_hmac(b"secret", b"{\"id\": 1}", Some(&good)),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            verify_base64_hmac(b"secret", body, Some("not base64!")),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            verify_base64_hmac(b"secret", body, None),
            Err(Rejected::MissingSignature)
        );
    }
}
