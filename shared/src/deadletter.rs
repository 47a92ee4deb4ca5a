//! The dead-letter stream: malformed inputs with their original bytes, headers and a reason.

use async_nats::{
    header::{HeaderMap, NATS_MESSAGE_ID},
    jetstream::{self, message::PublishMessage},
};
use stockflow_proto::subjects;

/// Why a stored dead letter was dead-lettered ('' when its headers do not say).
pub fn reason(message: &async_nats::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(subjects::HEADER_DEAD_LETTER_REASON))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

/// Stores malformed inputs in `DEAD_LETTERS`.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
}

impl DeadLetters {
    /// Dead letters published through `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Stores `message` with `reason`, and returns once JetStream has it. Its `Nats-Msg-Id` is
    /// derived from the input's stream position, so a retry after a crash stores it once.
    pub async fn store(&self, message: &jetstream::Message, reason: &str) -> anyhow::Result<()> {
        self.store_with(message, reason, Route::default()).await
    }

    /// Like [`Self::store`], on `route`'s subject and message id, with its extra headers: for
    /// failures that are not about the input itself (e.g. a webhook that never accepted it), where
    /// one input may give several dead letters.
    pub async fn store_with(
        &self,
        message: &jetstream::Message,
        reason: &str,
        route: Route,
    ) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        let mut original_id = None;
        if let Some(original) = &message.headers {
            for (name, values) in original.iter() {
                if *name == NATS_MESSAGE_ID {
                    original_id = values.first().cloned();
                    continue;
                }
                if is_expectation(name.as_ref()) {
                    // A publish condition of the original stream (e.g. the feed's
                    // `Nats-Expected-Last-Subject-Sequence`): kept, it would be checked against
                    // `DEAD_LETTERS` and refuse the dead letter.
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let (stream, sequence) = match message.info() {
            Ok(info) => (info.stream.to_owned(), info.stream_sequence),
            Err(_) => ("unknown".to_owned(), 0),
        };
        headers.insert(subjects::HEADER_DEAD_LETTER_REASON, truncate(reason, 1024));
        headers.insert(subjects::HEADER_ORIGINAL_SUBJECT, message.subject.as_str());
        headers.insert(subjects::HEADER_ORIGINAL_STREAM, stream.as_str());
        headers.insert(
            subjects::HEADER_ORIGINAL_SEQUENCE,
            sequence.to_string().as_str(),
        );
        if let Some(id) = original_id {
            headers.insert(subjects::HEADER_ORIGINAL_MSG_ID, id);
        }
        for (name, value) in route.headers {
            headers.insert(name, truncate(&value, 1024));
        }
        let message_id = route
            .message_id
            .unwrap_or_else(|| stockflow_proto::msg_id::dead_letter(&stream, sequence));
        let subject = route
            .subject
            .unwrap_or_else(|| subjects::dead_letter(&stream));
        let max_payload = self.js.client().server_info().max_payload;
        let payload = fit(
            &mut headers,
            &message_id,
            message.payload.clone(),
            max_payload,
        );
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(message_id);
        self.js.send_publish(subject, publish).await?.await?;
        Ok(())
    }
}

/// Whether header `name` asks JetStream to check something before it stores the message
/// (`Nats-Expected-Stream`, `Nats-Expected-Last-Sequence`, `Nats-Expected-Last-Subject-Sequence`,
/// `Nats-Expected-Last-Msg-Id`, …). Header names are case-insensitive.
fn is_expectation(name: &str) -> bool {
    const PREFIX: &str = "nats-expected-";
    name.get(..PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PREFIX))
}

/// Where a dead letter goes and what it adds; the default is `deadletter.<source stream>` with the
/// `Nats-Msg-Id` `dlq:<stream>:<sequence>`.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// Subject under `deadletter.>` (default `deadletter.<source stream>`).
    pub subject: Option<String>,
    /// `Nats-Msg-Id`; must be stable for the same failure so a retry stores it once.
    pub message_id: Option<String>,
    /// Extra headers (values are clipped to one line).
    pub headers: Vec<(&'static str, String)>,
}

/// Bytes `headers` take on the wire (`NATS/1.0` line, `name: value` lines, blank line).
fn header_bytes(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
}

/// A malformed input as large as the server accepts would not fit next to the dead-letter
/// headers, and would then be retried forever: its payload is clipped to fit and the original
/// size recorded in a header. `max_payload` 0 means unknown (nothing is clipped).
fn fit(
    headers: &mut HeaderMap,
    message_id: &str,
    payload: bytes::Bytes,
    max_payload: usize,
) -> bytes::Bytes {
    // The message id header is added by the publish; a margin covers the truncation header.
    let overhead = header_bytes(headers) + "Nats-Msg-Id".len() + message_id.len() + 4;
    let margin = subjects::HEADER_PAYLOAD_TRUNCATED.len() + 24;
    if max_payload == 0 || overhead + payload.len() <= max_payload {
        return payload;
    }
    headers.insert(
        subjects::HEADER_PAYLOAD_TRUNCATED,
        payload.len().to_string().as_str(),
    );
    let keep = max_payload
        .saturating_sub(overhead + margin)
        .min(payload.len());
    payload.slice(..keep)
}

/// Header values must be one line; reasons are clipped on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = one_line.len().min(max);
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_conditions_of_the_original_are_not_copied() {
        for name in [
            "Nats-Expected-Last-Subject-Sequence",
            "Nats-Expected-Last-Sequence",
            "Nats-Expected-Stream",
            "nats-expected-last-msg-id",
        ] {
            assert!(is_expectation(name), "{name}");
        }
        for name in ["Nats-Msg-Id", "Stockflow-Event-Type", "Nats-Expected", "X"] {
            assert!(!is_expectation(name), "{name}");
        }
    }

    #[test]
    fn a_payload_that_does_not_fit_next_to_the_headers_is_clipped_and_its_size_recorded() {
        let mut headers = HeaderMap::new();
        headers.insert(subjects::HEADER_DEAD_LETTER_REASON, "not a StockEvent");
        let payload = bytes::Bytes::from(vec![7_u8; 1000]);
        let clipped = fit(&mut headers, "dlq:S:1", payload.clone(), 1024);
        assert!(clipped.len() < 1000);
        assert!(header_bytes(&headers) + clipped.len() + "Nats-Msg-Id: dlq:S:1\r\n".len() <= 1024);
        assert_eq!(
            headers
                .get(subjects::HEADER_PAYLOAD_TRUNCATED)
                .map(|v| v.as_str()),
            Some("1000")
        );

        let mut roomy = HeaderMap::new();
        assert_eq!(
            fit(&mut roomy, "dlq:S:1", payload.clone(), 1 << 20),
            payload
        );
        assert!(roomy.get(subjects::HEADER_PAYLOAD_TRUNCATED).is_none());
    }
}
