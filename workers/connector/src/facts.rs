//! Publishing the stock facts a connector derives (channel sales and returns from orders, the
//! difference a stale compare found) the way every publisher does: the contract's JSON shape
//! (`stockflow_proto::input::json`), its checks, its subject and its `Nats-Msg-Id`, so JetStream
//! and the stock worker drop a repeat.

use async_nats::jetstream::{self, message::PublishMessage};
use serde_json::{json, Value};
use stockflow_proto::input::{json::event_from_value, InputError};

use crate::platform::InboundFact;

/// Why a fact was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The contract refuses it (a SKU too long, a quantity out of range): never retried.
    #[error("refused by the contract: {0}")]
    Invalid(String),
    /// JetStream did not store it; retrying is safe (same `Nats-Msg-Id`).
    #[error("JetStream did not store it: {0:#}")]
    Unavailable(anyhow::Error),
}

impl From<InputError> for PublishError {
    fn from(e: InputError) -> Self {
        Self::Invalid(format!("{}: {}", e.field, e.reason))
    }
}

/// The stock fact of an inbound order line: a `sold` or `returned` naming `channel`, whose
/// allocation picks the location.
pub fn channel_fact(fact: &InboundFact, channel: &str, source: &str) -> Value {
    json!({
        "type": fact.kind.as_str(),
        "sku": fact.sku,
        "channel": channel,
        "quantity": fact.quantity,
        "event_id": fact.event_id,
        "source": source,
        "reference": fact.reference,
    })
}

/// Publishes one fact given as its JSON shape and waits until JetStream stored it; `true` when
/// it was a duplicate (stored before under the same message id).
pub async fn publish(js: &jetstream::Context, fact: Value) -> Result<bool, PublishError> {
    let event = event_from_value(fact)?;
    event.check()?;
    let message = PublishMessage::build()
        .payload(event.encode().into())
        .message_id(event.msg_id());
    let ack = js
        .send_publish(event.subject(), message)
        .await
        .map_err(|e| PublishError::Unavailable(e.into()))?
        .await
        .map_err(|e| PublishError::Unavailable(e.into()))?;
    Ok(ack.duplicate)
}
