//! The handler API: what a worker implements ([`Handler`]), what it is given ([`Delivery`]) and
//! what it answers ([`Handled`] or a [`HandleError`], whose variant decides what the loop does).

use std::{borrow::Cow, future::Future, time::Duration};

use async_nats::jetstream;
use stockflow_proto::subjects;

/// How one input event ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect was applied now.
    Applied,
    /// Its `event_id` was seen before: nothing changed.
    Duplicate,
    /// A count whose `expected_on_hand` did not match: nothing changed, a rejection was emitted.
    Stale,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
        }
    }
}

/// What a handler reports for a message it finished.
#[derive(Debug, Clone, Copy)]
pub struct Handled {
    /// Event type label, e.g. `received`.
    pub event_type: &'static str,
    /// How it ended.
    pub outcome: Outcome,
}

/// A dependency a transient failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// Redis.
    Redis,
    /// NATS / JetStream.
    Nats,
}

impl Dependency {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Nats => "nats",
        }
    }
}

/// Why a handler did not finish a message; the variant decides what the loop does with it.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The input can never be applied: it goes to `DEAD_LETTERS` with `reason`, and is
    /// terminated so it never blocks the stream.
    #[error("malformed {event_type} event: {reason}")]
    Malformed {
        /// Event type label (`unknown` when undecodable).
        event_type: &'static str,
        /// Metric label: a short, fixed category such as `decode` or `invalid_quantity`.
        category: &'static str,
        /// Human-readable reason, stored in the dead letter's header.
        reason: String,
    },
    /// The input arrived before what it depends on (e.g. a fulfilment before its order's
    /// decision): NAKed with a back-off and retried, like a transient failure.
    #[error("not yet applicable: {0}")]
    NotYet(String),
    /// The handler chose when the input should come back (e.g. a webhook endpoint's own back-off,
    /// or the rest of its breaker's open period): NAKed with exactly `delay`, never dead-lettered.
    #[error("retry in {delay:?}: {reason}")]
    RetryIn {
        /// Why it is not done yet.
        reason: String,
        /// When JetStream should redeliver it.
        delay: Duration,
    },
    /// A dependency failed; the input is NAKed with a back-off and retried. Never dead-lettered.
    #[error("{} unavailable: {source:#}", dependency.as_str())]
    Transient {
        /// Which dependency.
        dependency: Dependency,
        /// The underlying error.
        #[source]
        source: anyhow::Error,
    },
    /// A dependency answered something the code does not expect (a script reply of the wrong shape):
    /// a bug, not a transient failure. Retried a few times, then dead-lettered.
    #[error("unexpected reply: {reason}")]
    Unexpected {
        /// What was expected and what came.
        reason: String,
    },
}

impl HandleError {
    /// A malformed-input error.
    pub fn malformed(
        event_type: &'static str,
        category: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self::Malformed {
            event_type,
            category,
            reason: reason.into(),
        }
    }

    /// A Redis failure.
    pub fn redis(source: impl Into<anyhow::Error>) -> Self {
        Self::Transient {
            dependency: Dependency::Redis,
            source: source.into(),
        }
    }

    /// A NATS failure.
    pub fn nats(source: impl Into<anyhow::Error>) -> Self {
        Self::Transient {
            dependency: Dependency::Nats,
            source: source.into(),
        }
    }
}

/// One message as the loop hands it to a [`Handler`]: the message as JetStream delivered it, and
/// its subject as producers published it.
///
/// A stock partition stream (`STOCK_EVENTS_<p>`, `STOCK_CHANGES_<p>`) stores
/// `stock.<kind>.<p>.<sku-token>`, the servers' mapping having inserted the partition; a handler
/// sees `stock.<kind>.<sku-token>` in [`Delivery::subject`], partitioned deployment or not. A
/// message of any other stream keeps its subject as it is.
#[derive(Debug)]
pub struct Delivery {
    /// The message, for its payload, headers, metadata and stored subject.
    message: jetstream::Message,
    /// Its unpartitioned subject, only when that differs from the stored one.
    logical: Option<String>,
}

impl Delivery {
    /// `message`, read from `stream`.
    pub fn new(message: jetstream::Message, stream: &str) -> Self {
        let logical = logical_subject(stream, message.subject.as_str());
        Self { message, logical }
    }

    /// The message as JetStream delivered it (its `subject` is the stored one).
    pub fn message(&self) -> &jetstream::Message {
        &self.message
    }

    /// The subject as producers published it: without the partition of a stock partition stream.
    pub fn subject(&self) -> &str {
        self.logical
            .as_deref()
            .unwrap_or_else(|| self.message.subject.as_str())
    }

    /// The message's payload.
    pub fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    /// The message, for acking it.
    pub(super) fn into_message(self) -> jetstream::Message {
        self.message
    }
}

/// The unpartitioned form of `subject` read from `stream`, when it differs: only a stock partition
/// stream's subjects carry a partition. An unpartitioned stream's subject is never rewritten, so a
/// producer publishing `stock.events.3.X` there still gets it refused as published.
fn logical_subject(stream: &str, subject: &str) -> Option<String> {
    let partitioned = subjects::stock_events_partition_of(stream).is_some()
        || subjects::stock_changes_partition_of(stream).is_some();
    if !partitioned {
        return None;
    }
    match subjects::unpartitioned(subject) {
        Cow::Owned(logical) => Some(logical),
        Cow::Borrowed(_) => None,
    }
}

/// Input the contract refuses can never be applied: it is dead-lettered under the refusal's
/// category, with its reason.
impl From<stockflow_proto::input::InputError> for HandleError {
    fn from(error: stockflow_proto::input::InputError) -> Self {
        Self::malformed(error.event_type, error.category.as_str(), error.reason)
    }
}

/// A worker's logic for one input message. The loop acks only after `handle` returns `Ok`, so
/// everything `handle` makes durable (Redis writes, derived publishes) must be done by then.
///
/// ```no_run
/// use stockflow_shared::consume::{Delivery, HandleError, Handled, Handler, Outcome};
///
/// /// Refuses empty payloads, accepts the rest.
/// struct NonEmpty;
///
/// impl Handler for NonEmpty {
///     async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
///         if delivery.payload().is_empty() {
///             return Err(HandleError::malformed("test", "empty", "no payload"));
///         }
///         tracing::debug!(subject = delivery.subject(), "accepted");
///         Ok(Handled { event_type: "test", outcome: Outcome::Applied })
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Must be idempotent: the same message may arrive again at any time.
    fn handle(
        &self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<Handled, HandleError>> + Send;

    /// The `type` labels [`Handled::event_type`] can take: their `stockflow_events_total` series
    /// are registered at 0 when the loop starts, so dashboards and alerts see every type from
    /// the start rather than no series until its first event.
    fn event_types(&self) -> &'static [&'static str] {
        &[]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_see_stock_subjects_as_producers_published_them() {
        assert_eq!(
            logical_subject("STOCK_EVENTS_3", "stock.events.3.A-1").as_deref(),
            Some("stock.events.A-1")
        );
        assert_eq!(
            logical_subject("STOCK_CHANGES_0", "stock.outcomes.0.~YS5i").as_deref(),
            Some("stock.outcomes.~YS5i")
        );
        assert_eq!(
            logical_subject("STOCK_CHANGES_12", "stock.changes.12.B").as_deref(),
            Some("stock.changes.B")
        );
        // Unpartitioned streams keep their subjects, even one that looks partitioned.
        assert_eq!(logical_subject("STOCK_EVENTS", "stock.events.3.A"), None);
        assert_eq!(logical_subject("STOCK_EVENTS", "stock.events.A"), None);
        assert_eq!(logical_subject("ORDER_EVENTS", "orders.events.o-1"), None);
        assert_eq!(logical_subject("ALERTS", "alerts.low_stock.A"), None);
    }

    #[test]
    fn an_unexpected_reply_says_what_came() {
        let err = HandleError::Unexpected {
            reason: "apply_stock answered [\"odd\"]".into(),
        };
        assert_eq!(
            err.to_string(),
            "unexpected reply: apply_stock answered [\"odd\"]"
        );
    }
}
