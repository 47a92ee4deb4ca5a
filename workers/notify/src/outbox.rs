//! The webhook outbox: one message on `webhooks.<endpoint>` in `WEBHOOKS` per (endpoint, derived
//! event), carrying everything its POST needs. A dead-lettered delivery is this message itself,
//! so a replay that republishes it to its original subject with its original headers enqueues
//! the same delivery again.

use async_nats::{header::HeaderMap, jetstream};
use stockflow_proto::subjects;

use crate::{
    deliver::{HEADER_EVENT_ID, HEADER_EVENT_TYPE},
    event::Notification,
};

/// Outbox header: the input it was fanned out from, `<stream>:<sequence>` (for operators).
pub const HEADER_SOURCE: &str = "Stockflow-Webhook-Source";

/// The `Nats-Msg-Id` of `endpoint`'s delivery of the input at `stream`/`sequence`: a redelivered
/// input enqueues nothing twice.
pub fn message_id(endpoint: &str, stream: &str, sequence: u64) -> String {
    stockflow_proto::msg_id::webhook_delivery(endpoint, stream, sequence)
}

/// The outbox message of `notification` for `endpoint`: subject, headers (without the
/// `Nats-Msg-Id`, set by the publish) and body.
pub fn message(
    endpoint: &str,
    notification: &Notification,
    stream: &str,
    sequence: u64,
) -> (String, HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_EVENT_ID, notification.event_id.as_str());
    headers.insert(HEADER_EVENT_TYPE, notification.event_type.as_str());
    headers.insert(HEADER_SOURCE, format!("{stream}:{sequence}").as_str());
    (
        subjects::webhook(endpoint),
        headers,
        notification.body.clone(),
    )
}

/// One delivery as read back from `WEBHOOKS`.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `X-Stockflow-Event-Id`.
    pub event_id: String,
    /// `X-Stockflow-Event-Type`, as enqueued.
    pub event_type: String,
    /// The JSON body, sent as it is.
    pub body: bytes::Bytes,
}

/// Reads a delivery; `None` when it lacks its event id (not an outbox message).
pub fn read(message: &jetstream::Message) -> Option<Outgoing> {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .filter(|v| !v.is_empty())
    };
    Some(Outgoing {
        event_id: header(HEADER_EVENT_ID)?,
        event_type: header(HEADER_EVENT_TYPE).unwrap_or_default(),
        body: message.payload.clone(),
    })
}
