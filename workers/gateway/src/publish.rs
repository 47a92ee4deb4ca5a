//! Publishing to JetStream: an answer is 2xx only once the PubAck came back.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use serde::Serialize;

use crate::input::Outgoing;

/// What JetStream said about one stored event.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stored {
    /// The event's idempotency key.
    pub(crate) event_id: String,
    /// JetStream already held a message with this `Nats-Msg-Id` (a re-post within the
    /// stream's duplicate window); nothing new was stored.
    pub(crate) duplicate: bool,
    /// The stream.
    pub(crate) stream: String,
    /// Its sequence in the stream (the first one's, for a duplicate).
    pub(crate) seq: u64,
}

/// Publishes `event` and waits for the PubAck, at most `timeout`.
pub(crate) async fn publish(
    js: &jetstream::Context,
    event: &Outgoing,
    timeout: Duration,
) -> anyhow::Result<Stored> {
    let message = PublishMessage::build()
        .payload(event.payload.clone().into())
        .message_id(&event.msg_id);
    let ack = tokio::time::timeout(timeout, async {
        js.send_publish(event.subject.clone(), message)
            .await?
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no acknowledgement from JetStream within {timeout:?}"))??;
    Ok(Stored {
        event_id: event.event_id.clone(),
        duplicate: ack.duplicate,
        stream: ack.stream,
        seq: ack.sequence,
    })
}

/// Publishes every event concurrently. Each one is stored or not on its own: the caller learns
/// which, and a re-post of the whole batch stores only the missing ones.
pub(crate) async fn publish_all(
    js: &jetstream::Context,
    events: &[Outgoing],
    timeout: Duration,
) -> Vec<Result<Stored, String>> {
    futures::future::join_all(
        events
            .iter()
            .map(|e| async move { publish(js, e, timeout).await.map_err(|e| format!("{e:#}")) }),
    )
    .await
}
