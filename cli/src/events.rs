//! Builders for stock facts, and publishing them.

use async_nats::{jetstream, HeaderMap};
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, EventMeta, Reason, StockEvent},
};
pub use stockflow_shared::now_ms;

/// A stock fact with its envelope.
pub fn fact(
    event_id: impl Into<String>,
    source: &str,
    reason: Reason,
    sku: &str,
    location: &str,
    change: Change,
) -> StockEvent {
    let event_id = event_id.into();
    StockEvent {
        meta: Some(EventMeta {
            reference: format!("urn:stockflow:{source}:{event_id}"),
            event_id,
            occurred_at_ms: now_ms(),
            source: source.to_owned(),
            reason: reason.into(),
        }),
        sku: sku.to_owned(),
        location: location.to_owned(),
        change: Some(change),
        ..Default::default()
    }
}

/// Publishes `event` on its subject with `msg_id` and waits until JetStream stored it.
pub async fn publish(
    js: &jetstream::Context,
    event: &StockEvent,
    msg_id: &str,
) -> anyhow::Result<()> {
    publish_raw(
        js,
        &subjects::stock_event(&event.sku),
        event.encode_to_vec(),
        msg_id,
    )
    .await
}

/// Publishes raw bytes (e.g. a deliberately malformed message).
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    msg_id: &str,
) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await?
        .await?;
    Ok(())
}
