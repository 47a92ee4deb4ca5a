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
    /// The event was stored before: JetStream already held a message with this `Nats-Msg-Id`
    /// (a re-post within the stream's duplicate window), or the worker had applied the same
    /// change under this `event_id` (found before publishing).
    pub(crate) duplicate: bool,
    /// The stream.
    pub(crate) stream: String,
    /// Its sequence in the stream (the first one's, for a duplicate JetStream dropped).
    pub(crate) seq: u64,
}

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// JetStream did not acknowledge in time, or the connection failed: nothing is promised
    /// either way, a re-post with the same key is safe.
    #[error("{0}")]
    Unavailable(String),
    /// Its `event_id` is already stored with another change: the first one stands.
    #[error("event_id {event_id:?} is already stored with another change ({stream} seq {seq}); the first one stands")]
    Conflict {
        /// The id used twice.
        event_id: String,
        /// Where the first one is.
        stream: String,
        /// Its sequence.
        seq: u64,
    },
}

impl PublishError {
    fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Publishes `event` and waits for the PubAck, at most `timeout`. When JetStream reports a
/// duplicate, the message it holds under that `Nats-Msg-Id` is read back and compared with this
/// one: the same change is a duplicate, another one a conflict.
pub(crate) async fn publish(
    js: &jetstream::Context,
    event: &Outgoing,
    timeout: Duration,
) -> Result<Stored, PublishError> {
    let message = PublishMessage::build()
        .payload(event.payload.clone().into())
        .message_id(&event.msg_id);
    let ack = tokio::time::timeout(timeout, async {
        js.send_publish(event.subject.clone(), message)
            .await
            .map_err(PublishError::unavailable)?
            .await
            .map_err(PublishError::unavailable)
    })
    .await
    .map_err(|_| {
        PublishError::unavailable(format!(
            "no acknowledgement from JetStream within {timeout:?}"
        ))
    })??;
    if ack.duplicate {
        let stored = tokio::time::timeout(timeout, async {
            js.get_stream_no_info(&ack.stream)
                .await
                .map_err(PublishError::unavailable)?
                .get_raw_message(ack.sequence)
                .await
                .map_err(PublishError::unavailable)
        })
        .await
        .map_err(|_| {
            PublishError::unavailable(format!(
                "JetStream did not return the stored duplicate within {timeout:?}"
            ))
        })??;
        if !event.same_change(&stored.payload) {
            return Err(PublishError::Conflict {
                event_id: event.event_id.clone(),
                stream: ack.stream,
                seq: ack.sequence,
            });
        }
    }
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
) -> Vec<Result<Stored, PublishError>> {
    futures::future::join_all(events.iter().map(|e| publish(js, e, timeout))).await
}
