//! The dead-letter stream: malformed inputs with their original bytes, headers and a reason.

use async_nats::{
    header::{HeaderMap, NATS_MESSAGE_ID},
    jetstream::{self, message::PublishMessage},
};
use stockflow_proto::subjects;

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
        let mut headers = HeaderMap::new();
        let mut original_id = None;
        if let Some(original) = &message.headers {
            for (name, values) in original.iter() {
                if *name == NATS_MESSAGE_ID {
                    original_id = values.first().cloned();
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
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers)
            .message_id(format!("dlq:{stream}:{sequence}"));
        self.js
            .send_publish(subjects::dead_letter(&stream), publish)
            .await?
            .await?;
        Ok(())
    }
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
