//! Reading and replaying dead letters: the one implementation behind `stockctl dlq` and the
//! gateway's admin routes.
//!
//! A replay publishes the original bytes again on the original subject, with the original headers
//! (the dead-letter bookkeeping dropped), a `Nats-Msg-Id` of `replay:DEAD_LETTERS:<seq>` and a
//! [`HEADER_REPLAYED_FROM`] header, then **deletes** the dead letter: `DEAD_LETTERS` holds what
//! still needs attention. What can be replayed, by original stream:
//!
//! - `STOCK_EVENTS` (and its partitions `STOCK_EVENTS_<p>`) and `ORDER_EVENTS`: inputs, whose
//!   workers dedup by `event_id`;
//! - `WEBHOOKS`: a webhook delivery notify-worker gave up on, replayed to its endpoint's outbox
//!   subject `webhooks.<endpoint-id>` with its `X-Stockflow-Event-Id`, so the receiver can still
//!   deduplicate;
//! - a connector's push past its horizon (`deadletter.connectors.<shop>`, from `AVAILABILITY` or
//!   `CONNECTOR_RETRIES`): replayed as a request on `connectors.retry.<shop>.<sku-token>`, which
//!   the connector answers by pushing the SKU's *newest* quantity (the one the dead letter holds
//!   may be old, and is never put back in the feed).
//!
//! Refused, with a [`Refusal`] that says why: an entry of a derived stream (the ledger, alerts,
//! order results — notify-worker dead-letters the ones it cannot read), since republishing it
//! would give every consumer a second copy of an event that happened once (also a webhook dead
//! letter from before the outbox, which holds such an entry rather than the delivery); a payload
//! clipped when it was stored; a dead letter without its origin.
//!
//! Replaying one dead letter twice stores one message: the `Nats-Msg-Id` is derived from the dead
//! letter's sequence, and the dead letter is deleted only after the replay is stored. A retry
//! after a failed delete, within the target stream's duplicate window, is answered as a
//! duplicate; past it, a second copy is stored, which the workers absorb by `event_id` and a
//! webhook receiver by `X-Stockflow-Event-Id`.

use std::time::Duration;

use async_nats::{
    header::HeaderMap,
    jetstream::{self, message::PublishMessage, stream::RawMessageErrorKind},
};
use futures::StreamExt as _;
use stockflow_proto::subjects;

/// Header a replayed message carries: `DEAD_LETTERS:<sequence>` of the dead letter it came from.
pub const HEADER_REPLAYED_FROM: &str = "Stockflow-Replayed-From";

/// Most dead letters one [`list`] call returns.
pub const MAX_PAGE: usize = 1000;

/// A dead letter as stored.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Sequence in `DEAD_LETTERS`.
    pub sequence: u64,
    /// When it was stored.
    pub stored: time::OffsetDateTime,
    /// Its subject in `DEAD_LETTERS` (`deadletter.<stream>`, `deadletter.webhooks.<id>`).
    pub subject: String,
    /// Original headers plus the `Stockflow-*` bookkeeping ones.
    pub headers: HeaderMap,
    /// The original bytes (clipped when [`subjects::HEADER_PAYLOAD_TRUNCATED`] is set).
    pub payload: bytes::Bytes,
}

impl DeadLetter {
    /// The value of header `name`, '' when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    }

    /// Why it was dead-lettered.
    pub fn reason(&self) -> String {
        self.header(subjects::HEADER_DEAD_LETTER_REASON)
    }

    /// The subject it was first published on.
    pub fn original_subject(&self) -> String {
        self.header(subjects::HEADER_ORIGINAL_SUBJECT)
    }

    /// The stream it was first stored in.
    pub fn original_stream(&self) -> String {
        self.header(subjects::HEADER_ORIGINAL_STREAM)
    }

    /// Its sequence there.
    pub fn original_sequence(&self) -> String {
        self.header(subjects::HEADER_ORIGINAL_SEQUENCE)
    }

    /// Milliseconds since the Unix epoch at which it was stored.
    pub fn stored_at_ms(&self) -> i64 {
        i64::try_from(self.stored.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// What a replay would do with it: where it goes, or why it is refused.
    pub fn plan(&self) -> Result<Target, Refusal> {
        plan(self)
    }
}

/// What kind of message a replayable dead letter holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A stock fact (`STOCK_EVENTS` or a partition).
    StockFact,
    /// An order command (`ORDER_EVENTS`).
    OrderCommand,
    /// A webhook delivery from notify-worker's outbox (`WEBHOOKS`).
    WebhookDelivery,
    /// A connector's push to a shop (`AVAILABILITY` or `CONNECTOR_RETRIES`), replayed as a
    /// request to push the SKU's newest quantity to that shop again.
    ConnectorPush,
}

impl Kind {
    /// Its name in listings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StockFact => "stock_fact",
            Self::OrderCommand => "order_command",
            Self::WebhookDelivery => "webhook_delivery",
            Self::ConnectorPush => "connector_push",
        }
    }
}

/// Where a replay is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What it is.
    pub kind: Kind,
    /// The subject it is published on.
    pub subject: String,
}

/// Why a dead letter is not replayed. The variant is the decision; the text is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An entry of a stream the workers derive (ledger, alerts, order results): republishing it
    /// would make every consumer see a second copy of one event.
    #[error(
        "it is an entry of {stream}, which the workers derive ({what}): republishing it would give \
         every consumer a second copy of an event that happened once; the entry is still in \
         {stream}, read it there (e.g. `stockctl tail`)"
    )]
    DerivedStream {
        /// The original stream.
        stream: String,
        /// What that stream holds.
        what: &'static str,
    },
    /// A webhook delivery dead-lettered before deliveries went through the `WEBHOOKS` outbox:
    /// it holds the derived event, not the delivery, so it cannot go to its endpoint alone.
    #[error(
        "it is a webhook delivery to {endpoint} stored before deliveries went through the \
         {outbox} outbox: it holds the {stream} entry, not the delivery, and republishing that \
         entry would reach every consumer again; the entry is still in {stream}, send it to \
         {endpoint} from there"
    )]
    OldWebhookDelivery {
        /// The endpoint that did not take it.
        endpoint: String,
        /// The derived stream it came from.
        stream: String,
        /// `WEBHOOKS`.
        outbox: &'static str,
    },
    /// A stream this version does not know how to replay into.
    #[error("it came from {0:?}, which is not an input stockflow can replay into")]
    UnknownStream(String),
    /// The payload was clipped to fit next to the dead-letter headers.
    #[error(
        "its payload was clipped when it was stored ({original_bytes} bytes originally): \
         replaying the rest would publish something else; re-send the original from its source"
    )]
    Truncated {
        /// The original size, as recorded.
        original_bytes: String,
    },
    /// A header the replay needs is missing or does not fit the stream.
    #[error("its {header} header is {value:?}, which does not fit {stream}")]
    BadOrigin {
        /// Which header.
        header: &'static str,
        /// Its value.
        value: String,
        /// The original stream.
        stream: String,
    },
}

/// Why reading or replaying a dead letter failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No such sequence: never stored, or already replayed (and so deleted).
    #[error("DEAD_LETTERS has no message {0} (replayed, or never stored?)")]
    NotFound(u64),
    /// The dead letter is not replayed, for the reason given.
    #[error("dead letter {sequence} cannot be replayed: {refusal}")]
    Refused {
        /// Its sequence.
        sequence: u64,
        /// Why.
        refusal: Refusal,
    },
    /// NATS or JetStream did not do what was asked; retrying is safe.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

/// `error` as [`ReplayError::Unavailable`], with what was being done.
fn unavailable(context: String, error: impl Into<anyhow::Error>) -> ReplayError {
    ReplayError::Unavailable(error.into().context(context))
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The dead letter's sequence.
    pub sequence: u64,
    /// What it was.
    pub kind: Kind,
    /// Where it was published.
    pub subject: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence there (the earlier copy's, for a duplicate).
    pub stream_sequence: u64,
    /// The stream already held this replay (a retry within its duplicate window).
    pub duplicate: bool,
}

/// Streams the workers derive, and what each holds.
fn derived(stream: &str) -> Option<&'static str> {
    if stream == subjects::STOCK_CHANGES || subjects::stock_changes_partition_of(stream).is_some() {
        Some("the stock ledger and rejections")
    } else if stream == subjects::ALERTS {
        Some("stock alerts")
    } else if stream == subjects::ORDER_RESULTS {
        Some("order decisions and releases")
    } else {
        None
    }
}

fn plan(letter: &DeadLetter) -> Result<Target, Refusal> {
    let stream = letter.original_stream();
    let subject = letter.original_subject();
    if let Some(what) = derived(&stream) {
        // notify-worker filed these under `deadletter.webhooks.<endpoint-id>`.
        if let Some(endpoint) = letter.subject.strip_prefix("deadletter.webhooks.") {
            return Err(Refusal::OldWebhookDelivery {
                endpoint: endpoint.to_owned(),
                stream,
                outbox: subjects::WEBHOOKS,
            });
        }
        return Err(Refusal::DerivedStream { stream, what });
    }
    let bad_subject = |stream: &str| Refusal::BadOrigin {
        header: subjects::HEADER_ORIGINAL_SUBJECT,
        value: subject.clone(),
        stream: stream.to_owned(),
    };
    let target = if stream == subjects::STOCK_EVENTS {
        if !subject.starts_with("stock.events.") {
            return Err(bad_subject(&stream));
        }
        Target {
            kind: Kind::StockFact,
            subject,
        }
    } else if subjects::stock_events_partition_of(&stream).is_some() {
        // Stored by the servers' mapping as `stock.events.<p>.<sku-token>`: it goes back on
        // `stock.events.<sku-token>`, so the mapping in force now places it, whatever the number
        // of partitions is today.
        let Some(token) = subjects::stock_event_token(&subject) else {
            return Err(bad_subject(&stream));
        };
        Target {
            kind: Kind::StockFact,
            subject: subjects::stock_event_of_token(token),
        }
    } else if stream == subjects::ORDER_EVENTS {
        if !is_under(&subject, "orders.events.") {
            return Err(bad_subject(&stream));
        }
        Target {
            kind: Kind::OrderCommand,
            subject,
        }
    } else if stream == subjects::AVAILABILITY {
        // A connector's push past its horizon, filed under `deadletter.connectors.<shop>`: the
        // quantity it carried may be old, so it is not put back in the feed; the connector is
        // asked to push the SKU's newest quantity to that shop instead.
        let Some(shop) = letter.subject.strip_prefix("deadletter.connectors.") else {
            return Err(Refusal::UnknownStream(stream));
        };
        let Some((_, token)) = subjects::availability_parts(&subject) else {
            return Err(bad_subject(&stream));
        };
        Target {
            kind: Kind::ConnectorPush,
            subject: subjects::connector_retry(shop, token),
        }
    } else if stream == subjects::CONNECTOR_RETRIES {
        if !subject.starts_with("connectors.retry.") {
            return Err(bad_subject(&stream));
        }
        Target {
            kind: Kind::ConnectorPush,
            subject,
        }
    } else if stream == subjects::WEBHOOKS {
        if !is_under(&subject, "webhooks.") {
            return Err(bad_subject(&stream));
        }
        Target {
            kind: Kind::WebhookDelivery,
            subject,
        }
    } else {
        return Err(Refusal::UnknownStream(stream));
    };
    if letter
        .headers
        .get(subjects::HEADER_PAYLOAD_TRUNCATED)
        .is_some()
    {
        return Err(Refusal::Truncated {
            original_bytes: letter.header(subjects::HEADER_PAYLOAD_TRUNCATED),
        });
    }
    Ok(target)
}

/// `subject` is `prefix` followed by one subject token (no wildcard, nothing empty).
fn is_under(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .is_some_and(|token| !token.is_empty() && !token.contains(['.', '*', '>', ' ']))
}

/// What notify-worker adds to a webhook dead letter: records of the failed attempts, not part of
/// the delivery. Other `Stockflow-Webhook-*` headers (e.g. the outbox message's `-Source`)
/// belong to the delivery and are kept.
const WEBHOOK_DEAD_LETTER_HEADERS: &[&str] = &[
    subjects::HEADER_WEBHOOK_DL_ENDPOINT,
    subjects::HEADER_WEBHOOK_DL_ATTEMPTS,
    subjects::HEADER_WEBHOOK_DL_EVENT_ID,
];

/// Headers a replay drops: the dead letter's bookkeeping (reason, origin, clipping, notify's
/// attempt records) and the NATS ones (a replay gets its own message id).
fn is_bookkeeping(name: &str) -> bool {
    ["Nats-", "Stockflow-Dead-Letter", "Stockflow-Original-"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        || WEBHOOK_DEAD_LETTER_HEADERS.contains(&name)
        || name == subjects::HEADER_PAYLOAD_TRUNCATED
        || name == HEADER_REPLAYED_FROM
}

/// The headers a replay of `letter` carries.
pub fn replay_headers(letter: &DeadLetter) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        if is_bookkeeping(name.as_ref()) {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    let from = format!("{}:{}", subjects::DEAD_LETTERS, letter.sequence);
    headers.insert(HEADER_REPLAYED_FROM, from.as_str());
    headers
}

/// The `Nats-Msg-Id` of a replay of dead letter `sequence`.
pub fn replay_message_id(sequence: u64) -> String {
    stockflow_proto::msg_id::replay(sequence)
}

async fn dead_letters(js: &jetstream::Context) -> Result<jetstream::stream::Stream, ReplayError> {
    js.get_stream(subjects::DEAD_LETTERS).await.map_err(|e| {
        unavailable(
            format!(
                "stream {} is not available (has `stockctl setup` run?)",
                subjects::DEAD_LETTERS
            ),
            e,
        )
    })
}

/// A page of dead letters.
#[derive(Debug, Clone)]
pub struct Page {
    /// In sequence order.
    pub letters: Vec<DeadLetter>,
    /// Sequence to pass as `after` for the next page; `None` when this page reached the end.
    pub next_after: Option<u64>,
}

/// Up to `limit` (at most [`MAX_PAGE`]) dead letters stored after sequence `after`, in order.
pub async fn list(js: &jetstream::Context, after: u64, limit: usize) -> Result<Page, ReplayError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let stream = dead_letters(js).await?;
    let reading = || format!("reading {}", subjects::DEAD_LETTERS);
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "deadletter.>".to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after.saturating_add(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(reading(), e))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| unavailable(reading(), e))?
        .num_pending;
    let want = usize::try_from(pending).unwrap_or(usize::MAX).min(limit);
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(reading(), e))?;
    let mut letters = Vec::with_capacity(want);
    while letters.len() < want {
        let message = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(unavailable(reading(), e)),
            Ok(None) | Err(_) => {
                return Err(ReplayError::Unavailable(anyhow::anyhow!(
                    "{} stopped early",
                    reading()
                )))
            }
        };
        let info = message.info().map_err(|e| {
            ReplayError::Unavailable(anyhow::anyhow!("a message without JetStream metadata: {e}"))
        })?;
        letters.push(DeadLetter {
            sequence: info.stream_sequence,
            stored: info.published,
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
        });
    }
    let more = pending > letters.len() as u64;
    let next_after = more.then(|| letters.last().map_or(after, |l| l.sequence));
    Ok(Page {
        letters,
        next_after,
    })
}

/// Every dead letter stored now, in order.
pub async fn list_all(js: &jetstream::Context) -> Result<Vec<DeadLetter>, ReplayError> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = list(js, after, MAX_PAGE).await?;
        all.extend(page.letters);
        match page.next_after {
            Some(next) => after = next,
            None => return Ok(all),
        }
    }
}

/// The dead letter at `sequence`.
pub async fn get(js: &jetstream::Context, sequence: u64) -> Result<DeadLetter, ReplayError> {
    let stream = dead_letters(js).await?;
    match stream.get_raw_message(sequence).await {
        Ok(message) => Ok(DeadLetter {
            sequence: message.sequence,
            stored: message.time,
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload,
        }),
        Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
            Err(ReplayError::NotFound(sequence))
        }
        Err(e) => Err(unavailable(
            format!("reading message {sequence} of {}", subjects::DEAD_LETTERS),
            e,
        )),
    }
}

/// Publishes `letter` on its target subject and waits for the stream to store it, without
/// deleting the dead letter ([`replay`] does both). Safe to repeat: within the target stream's
/// duplicate window the repeat is answered as a duplicate.
pub async fn republish(
    js: &jetstream::Context,
    letter: &DeadLetter,
) -> Result<Replayed, ReplayError> {
    let target = plan(letter).map_err(|refusal| ReplayError::Refused {
        sequence: letter.sequence,
        refusal,
    })?;
    let message = PublishMessage::build()
        .payload(letter.payload.clone())
        .headers(replay_headers(letter))
        .message_id(replay_message_id(letter.sequence));
    let publishing = || {
        format!(
            "publishing dead letter {} on {}",
            letter.sequence, target.subject
        )
    };
    let ack = js
        .send_publish(target.subject.clone(), message)
        .await
        .map_err(|e| unavailable(publishing(), e))?
        .await
        .map_err(|e| {
            unavailable(
                format!(
                    "JetStream did not store the replay on {} (is a stream for it declared?)",
                    target.subject
                ),
                e,
            )
        })?;
    Ok(Replayed {
        sequence: letter.sequence,
        kind: target.kind,
        subject: target.subject,
        stream: ack.stream,
        stream_sequence: ack.sequence,
        duplicate: ack.duplicate,
    })
}

/// Republishes `letter` (see [`republish`]), then deletes it from `DEAD_LETTERS`.
pub async fn replay(js: &jetstream::Context, letter: &DeadLetter) -> Result<Replayed, ReplayError> {
    let replayed = republish(js, letter).await?;
    let stream = dead_letters(js).await?;
    stream.delete_message(letter.sequence).await.map_err(|e| {
        unavailable(
            format!(
                "replayed (stored in {} sequence {}), but deleting dead letter {} failed; replay \
                 it again to delete it (the repeat is stored once)",
                replayed.stream, replayed.stream_sequence, letter.sequence
            ),
            e,
        )
    })?;
    metrics::counter!("stockflow_dead_letters_replayed_total", "kind" => replayed.kind.as_str())
        .increment(1);
    Ok(replayed)
}

/// Reads dead letter `sequence` and replays it.
pub async fn replay_sequence(
    js: &jetstream::Context,
    sequence: u64,
) -> Result<Replayed, ReplayError> {
    let letter = get(js, sequence).await?;
    replay(js, &letter).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(stream: &str, subject: &str) -> DeadLetter {
        let mut headers = HeaderMap::new();
        headers.insert(subjects::HEADER_ORIGINAL_STREAM, stream);
        headers.insert(subjects::HEADER_ORIGINAL_SUBJECT, subject);
        headers.insert(subjects::HEADER_DEAD_LETTER_REASON, "why");
        headers.insert(subjects::HEADER_ORIGINAL_SEQUENCE, "7");
        headers.insert(subjects::HEADER_ORIGINAL_MSG_ID, "m-1");
        headers.insert("Stockflow-Webhook-Attempts", "9");
        headers.insert("Stockflow-Webhook-Source", "ALERTS:3");
        headers.insert("X-Stockflow-Event-Id", "ev-1");
        headers.insert("Nats-Msg-Id", "dlq:S:7");
        DeadLetter {
            sequence: 42,
            stored: time::OffsetDateTime::UNIX_EPOCH,
            subject: subjects::dead_letter(stream),
            headers,
            payload: bytes::Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn a_connector_push_is_replayed_as_a_request_to_push_the_newest_quantity() {
        let mut push = letter("AVAILABILITY", "availability.web.A1");
        push.subject = "deadletter.connectors.acme".into();
        assert_eq!(
            push.plan(),
            Ok(Target {
                kind: Kind::ConnectorPush,
                subject: "connectors.retry.acme.A1".into(),
            })
        );
        let mut again = letter("CONNECTOR_RETRIES", "connectors.retry.acme.A1");
        again.subject = "deadletter.connectors.acme".into();
        assert_eq!(
            again.plan().map(|t| t.subject),
            Ok("connectors.retry.acme.A1".into())
        );
        // Not a connector's: an availability entry is not put back in the feed.
        assert_eq!(
            letter("AVAILABILITY", "availability.web.A1").plan(),
            Err(Refusal::UnknownStream("AVAILABILITY".into()))
        );
    }

    #[test]
    fn inputs_and_webhook_deliveries_go_back_where_they_came_from() {
        for (stream, subject, kind, target) in [
            (
                "STOCK_EVENTS",
                "stock.events.A1",
                Kind::StockFact,
                "stock.events.A1",
            ),
            (
                "STOCK_EVENTS_2",
                "stock.events.2.A1",
                Kind::StockFact,
                "stock.events.A1",
            ),
            (
                "ORDER_EVENTS",
                "orders.events.o-1",
                Kind::OrderCommand,
                "orders.events.o-1",
            ),
            (
                "WEBHOOKS",
                "webhooks.erp",
                Kind::WebhookDelivery,
                "webhooks.erp",
            ),
        ] {
            assert_eq!(
                letter(stream, subject).plan(),
                Ok(Target {
                    kind,
                    subject: target.to_owned()
                }),
                "{stream}"
            );
        }
    }

    #[test]
    fn derived_streams_unknown_origins_and_clipped_payloads_are_refused() {
        for stream in [
            "STOCK_CHANGES",
            "STOCK_CHANGES_1",
            "ALERTS",
            "ORDER_RESULTS",
        ] {
            let refusal = letter(stream, "x.y").plan().expect_err(stream);
            assert!(
                matches!(&refusal, Refusal::DerivedStream { stream: s, .. } if s == stream),
                "{refusal}"
            );
            assert!(refusal.to_string().contains("second copy"), "{refusal}");
        }
        let mut old_delivery = letter("ALERTS", "alerts.low_stock.A");
        old_delivery.subject = "deadletter.webhooks.erp".into();
        assert!(
            matches!(
                old_delivery.plan(),
                Err(Refusal::OldWebhookDelivery { endpoint, .. }) if endpoint == "erp"
            ),
            "{:?}",
            old_delivery.plan()
        );
        assert_eq!(
            letter("unknown", "stock.events.A").plan(),
            Err(Refusal::UnknownStream("unknown".into()))
        );
        for (stream, subject) in [
            ("WEBHOOKS", "webhooks.>"),
            ("WEBHOOKS", "webhooks.a.b"),
            ("ORDER_EVENTS", ""),
            ("STOCK_EVENTS", "alerts.low.A"),
        ] {
            assert!(
                matches!(
                    letter(stream, subject).plan(),
                    Err(Refusal::BadOrigin { .. })
                ),
                "{stream} {subject}"
            );
        }
        let mut clipped = letter("STOCK_EVENTS", "stock.events.A");
        clipped
            .headers
            .insert(subjects::HEADER_PAYLOAD_TRUNCATED, "2000000");
        assert!(matches!(clipped.plan(), Err(Refusal::Truncated { .. })));
    }

    #[test]
    fn a_replay_keeps_the_original_headers_and_drops_the_bookkeeping() {
        let headers = replay_headers(&letter("WEBHOOKS", "webhooks.erp"));
        let names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            headers.get("X-Stockflow-Event-Id").map(|v| v.as_str()),
            Some("ev-1")
        );
        assert_eq!(
            headers.get(HEADER_REPLAYED_FROM).map(|v| v.as_str()),
            Some("DEAD_LETTERS:42")
        );
        assert_eq!(
            headers.get("Stockflow-Webhook-Source").map(|v| v.as_str()),
            Some("ALERTS:3"),
            "the delivery's own header"
        );
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(replay_message_id(42), "replay:DEAD_LETTERS:42");
    }
}
