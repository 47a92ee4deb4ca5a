//! Publishes what a change derives — ledger entries, alerts, rejections — with `Nats-Msg-Id`s
//! derived from the cause, so publishing again after a crash stores nothing twice.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use prost::Message as _;
use stockflow_proto::{
    msg_id, subjects,
    v1::{
        AlertKind, ChannelAvailabilityChanged, ChannelRulesSet, EventMeta, KitDefined, Levels,
        PolicySet, Reason, RejectionReason, StockAlert, StockChanged, StockEventRejected,
        UnsellableState,
    },
};

use crate::outcome::{alert_name, ChannelChange, Outcome, Verdict};

/// The input event a change came from.
#[derive(Debug, Clone, Copy)]
pub struct Cause<'a> {
    /// SKU whose levels changed.
    pub sku: &'a str,
    /// Unique id of the cause within the SKU: the input's `event_id`, or for orders an id derived
    /// from the order, line and step.
    pub cause_id: &'a str,
    /// Location named by the input (for rejections).
    pub location: &'a str,
    /// Envelope of the input (reason, source, reference, occurred_at).
    pub meta: &'a EventMeta,
    /// The policy change of a `policy_set` input, recorded on its ledger entries.
    pub policy: Option<&'a PolicySet>,
    /// The order line an order step acts on: (order_id, line_id).
    pub order_line: Option<(&'a str, &'a str)>,
    /// The sales channel the input named ('' for none).
    pub channel: &'a str,
    /// The override of a `channel_rules` input, recorded on its ledger entry.
    pub channel_rules: Option<&'a ChannelRulesSet>,
    /// The definition of a `kit_defined` input, recorded on its ledger entries.
    pub kit: Option<&'a KitDefined>,
}

/// The unsellable state whose units a change moved (`Unspecified` when none did).
pub fn moved_state(before: &Levels, after: &Levels) -> UnsellableState {
    if before.damaged != after.damaged {
        UnsellableState::Damaged
    } else if before.quality_control != after.quality_control {
        UnsellableState::QualityControl
    } else if before.held != after.held {
        UnsellableState::Held
    } else {
        UnsellableState::Unspecified
    }
}

/// The natural reason of a ledger kind, used when the input gave none.
pub fn default_reason(kind: &str) -> Reason {
    match kind {
        "received" => Reason::Received,
        "sold" => Reason::Sold,
        "returned" => Reason::Returned,
        "adjusted" => Reason::Correction,
        "counted" => Reason::CycleCount,
        "transferred_out" | "transferred_in" => Reason::Transfer,
        "policy_set" => Reason::Policy,
        "reserved" => Reason::Reserved,
        "released" => Reason::Released,
        "shipped" => Reason::Shipped,
        "channel_rules" | "kit_defined" => Reason::Policy,
        "kit_buildable" => Reason::CycleCount,
        "backorder_filled" => Reason::Reserved,
        _ => Reason::Unspecified,
    }
}

/// Whether the input is an opening balance (`REASON_OPENING_BALANCE`, an initial load): its
/// changes are recorded in the ledger, but raise only the alerts
/// [`raised_for_opening_balance`] lets through.
pub fn is_opening_balance(meta: &EventMeta) -> bool {
    meta.reason == Reason::OpeningBalance as i32
}

/// The alerts an opening balance still raises: `NEGATIVE_STOCK` (a data-quality problem), not
/// the threshold crossings (low, out of, back in stock) that loading a level is not news of.
pub fn raised_for_opening_balance(kind: AlertKind) -> bool {
    kind == AlertKind::NegativeStock
}

/// Publishes derived events through JetStream.
#[derive(Debug, Clone)]
pub struct Ledger {
    js: jetstream::Context,
    /// `stockflow_derived_published_total` by kind, registered once (not per message).
    published: [metrics::Counter; 4],
    /// `stockflow_derived_published_total{kind="channel_availability"}`.
    availability_published: metrics::Counter,
    /// The last channel quantity this process stored per feed subject.
    feed_tail: FeedTails,
}

/// A feed message this process stored: its stream sequence and version.
#[derive(Debug, Clone, Copy)]
struct FeedTail {
    sequence: u64,
    version: u64,
}

/// The last [`FeedTail`] per subject, shared by every clone of a [`Ledger`]. A hint only: a
/// stale one costs a refused publish and a read, never a wrong message.
#[derive(Debug, Clone, Default)]
struct FeedTails(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, FeedTail>>>);

impl FeedTails {
    /// Subjects remembered at most; past it the memory starts over.
    const MAX: usize = 100_000;

    fn get(&self, subject: &str) -> Option<FeedTail> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(subject)
            .copied()
    }

    fn keep(&self, subject: String, tail: FeedTail) {
        let mut tails = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if tails.len() >= Self::MAX {
            tails.clear();
        }
        tails.insert(subject, tail);
    }
}

impl Ledger {
    /// A ledger publishing through `js`.
    pub fn new(js: jetstream::Context) -> Self {
        let counter = |kind: DerivedKind| metrics::counter!("stockflow_derived_published_total", "kind" => kind.label());
        Self {
            js,
            published: [
                counter(DerivedKind::StockChanged),
                counter(DerivedKind::Rejection),
                counter(DerivedKind::Alert(AlertKind::Unspecified)),
                counter(DerivedKind::OrderResult),
            ],
            availability_published: metrics::counter!("stockflow_derived_published_total", "kind" => "channel_availability"),
            feed_tail: FeedTails::default(),
        }
    }

    /// Publishes everything `outcome` derives for `cause` and waits until JetStream stored all of
    /// it. Safe to call again with the same arguments: every message carries a deterministic id.
    /// The ledger entries and alerts are all sent before any acknowledgement is awaited (the
    /// client's writer puts them on the wire together, with other tasks' messages), then their
    /// acknowledgements are awaited as a group; the channel quantities follow, concurrently.
    pub async fn publish(&self, cause: Cause<'_>, outcome: &Outcome) -> anyhow::Result<()> {
        let mut pending = Vec::new();
        if let Verdict::StaleCount { expected, actual } = outcome.verdict {
            let rejected = StockEventRejected {
                sku: cause.sku.to_owned(),
                location: cause.location.to_owned(),
                event_id: cause.cause_id.to_owned(),
                reason: RejectionReason::StaleCount.into(),
                expected_on_hand: expected,
                actual_on_hand: actual,
                source: cause.meta.source.clone(),
                reference: cause.meta.reference.clone(),
            };
            pending.push(Derived {
                kind: DerivedKind::Rejection,
                subject: subjects::stock_outcome(cause.sku),
                msg_id: msg_id::stock_outcome(cause.sku, cause.cause_id),
                payload: rejected.encode_to_vec(),
            });
        }
        let changed_subject = subjects::stock_changed(cause.sku);
        let opening_balance = is_opening_balance(cause.meta);
        for (index, change) in outcome.changes.iter().enumerate() {
            let reason = match Reason::try_from(cause.meta.reason) {
                Ok(Reason::Unspecified) | Err(_) => default_reason(&change.kind),
                Ok(given) => given,
            };
            let entry = StockChanged {
                sku: cause.sku.to_owned(),
                location: change.location.clone(),
                cause_event_id: cause.cause_id.to_owned(),
                reason: reason.into(),
                source: cause.meta.source.clone(),
                reference: cause.meta.reference.clone(),
                before: Some(change.before),
                after: Some(change.after),
                occurred_at_ms: cause.meta.occurred_at_ms,
                applied_at_ms: outcome.applied_at_ms,
                kind: change.kind.clone(),
                policy: cause.policy.cloned(),
                policy_location: if cause.policy.is_some() {
                    cause.location.to_owned()
                } else {
                    String::new()
                },
                // A fill names the line it filled, whatever caused it (a receipt, another
                // order's release).
                order_id: match &change.backorder {
                    Some(b) => b.order_id.clone(),
                    None => cause
                        .order_line
                        .map(|(o, _)| o.to_owned())
                        .unwrap_or_default(),
                },
                line_id: match &change.backorder {
                    Some(b) => b.line_id.clone(),
                    None => cause
                        .order_line
                        .map(|(_, l)| l.to_owned())
                        .unwrap_or_default(),
                },
                backorder_filled: change.backorder.as_ref().map_or(0, |b| b.filled),
                backordered: change.backorder.as_ref().map_or(0, |b| b.backordered),
                backorder_expected_at_ms: change.backorder.as_ref().map_or(0, |b| b.expected_at_ms),
                backorder_rank: change.backorder.as_ref().map_or(0, |b| b.rank),
                channel_rules: cause.channel_rules.cloned(),
                channel: cause.channel.to_owned(),
                purchase_order: change
                    .purchase_order
                    .as_ref()
                    .map(|p| p.reference.clone())
                    .unwrap_or_default(),
                purchase_order_outstanding: change
                    .purchase_order
                    .as_ref()
                    .map_or(0, |p| p.outstanding),
                purchase_order_expected_at_ms: change
                    .purchase_order
                    .as_ref()
                    .map_or(0, |p| p.expected_at_ms),
                unsellable_state: moved_state(&change.before, &change.after).into(),
                kit: cause.kit.cloned(),
            };
            pending.push(Derived {
                kind: DerivedKind::StockChanged,
                subject: changed_subject.clone(),
                msg_id: msg_id::stock_changed(cause.sku, cause.cause_id, index),
                payload: entry.encode_to_vec(),
            });
            for kind in &change.alerts {
                if opening_balance && !raised_for_opening_balance(*kind) {
                    continue;
                }
                let name = alert_name(*kind);
                let alert = StockAlert {
                    kind: (*kind).into(),
                    sku: cause.sku.to_owned(),
                    location: change.location.clone(),
                    cause_event_id: cause.cause_id.to_owned(),
                    levels: Some(change.after),
                    threshold: change.threshold.unwrap_or_default(),
                    raised_at_ms: outcome.applied_at_ms,
                    ..Default::default()
                };
                pending.push(Derived {
                    kind: DerivedKind::Alert(*kind),
                    subject: subjects::alert(name, cause.sku),
                    msg_id: msg_id::alert(cause.sku, cause.cause_id, index, name),
                    payload: alert.encode_to_vec(),
                });
            }
        }
        let first_channel_index = outcome.changes.len();
        for (offset, change) in outcome.channels.iter().enumerate() {
            if !change.alert {
                continue;
            }
            let name = alert_name(AlertKind::ChannelOversold);
            let alert = StockAlert {
                kind: AlertKind::ChannelOversold.into(),
                sku: cause.sku.to_owned(),
                cause_event_id: cause.cause_id.to_owned(),
                raised_at_ms: outcome.applied_at_ms,
                channel: change.channel.clone(),
                offered: change.before,
                sold: change.before + change.oversold,
                ..Default::default()
            };
            pending.push(Derived {
                kind: DerivedKind::Alert(AlertKind::ChannelOversold),
                subject: subjects::alert(name, cause.sku),
                msg_id: msg_id::alert(
                    cause.sku,
                    cause.cause_id,
                    first_channel_index + offset,
                    name,
                ),
                payload: alert.encode_to_vec(),
            });
        }
        self.publish_all(pending).await?;
        // After the ledger: a channel quantity is never ahead of the entries that explain it.
        futures::future::try_join_all(
            outcome
                .channels
                .iter()
                .filter(|c| c.version > 0)
                .map(|change| self.publish_availability(cause, outcome.applied_at_ms, change)),
        )
        .await?;
        Ok(())
    }

    /// Publishes one channel quantity to `AVAILABILITY` unless a newer version of it is stored
    /// already. Two workers may publish versions of one (channel, SKU) in either order; the feed
    /// keeps one message per subject, so the older must not land last. Each publish states the
    /// subject's last sequence it saw (`Nats-Expected-Last-Subject-Sequence`); a race retries
    /// with the new last message, and stops when that one is as new or newer. The last message
    /// this process stored per subject is remembered, so the common case (one worker owns the
    /// SKU for a while) costs one round trip, not a read and a publish.
    async fn publish_availability(
        &self,
        cause: Cause<'_>,
        applied_at_ms: i64,
        change: &ChannelChange,
    ) -> anyhow::Result<()> {
        let subject = subjects::availability(&change.channel, cause.sku);
        let message = ChannelAvailabilityChanged {
            channel: change.channel.clone(),
            sku: cause.sku.to_owned(),
            available_to_sell: change.after,
            version: change.version,
            cause_event_id: cause.cause_id.to_owned(),
            previous: change.before,
            changed_at_ms: applied_at_ms,
            rules_version: change.rules_version,
            pool: change.pool,
        };
        let payload = bytes::Bytes::from(message.encode_to_vec());
        let stream = self.js.get_stream_no_info(subjects::AVAILABILITY).await?;
        let mut remembered = self.feed_tail.get(&subject);
        loop {
            let remembered = remembered.take();
            let last = match remembered {
                Some(stored) if stored.version >= change.version => return Ok(()),
                Some(stored) => Ok(stored.sequence),
                None => Err(()),
            };
            let last = match last {
                Ok(sequence) => sequence,
                Err(()) => match stream.direct_get_last_for_subject(subject.as_str()).await {
                    Ok(stored) => {
                        let held = ChannelAvailabilityChanged::decode(stored.payload.as_ref())
                            .map(|m| m.version)
                            .unwrap_or(0);
                        if held >= change.version {
                            return Ok(());
                        }
                        stored.sequence
                    }
                    Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => 0,
                    Err(e) => return Err(e.into()),
                },
            };
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(msg_id::availability(
                    &change.channel,
                    cause.sku,
                    change.version,
                ))
                .expected_last_subject_sequence(last);
            let acked = match self.js.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => return Err(e.into()),
            };
            match acked {
                Ok(ack) => {
                    if !ack.duplicate {
                        self.availability_published.increment(1);
                        self.feed_tail.keep(
                            subject,
                            FeedTail {
                                sequence: ack.sequence,
                                version: change.version,
                            },
                        );
                    }
                    return Ok(());
                }
                // Another version landed meanwhile (or what was remembered is stale): look.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Publishes `messages` concurrently and waits for every acknowledgement.
    pub async fn publish_all(&self, messages: Vec<Derived>) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let publish = PublishMessage::build()
                .payload(message.payload.into())
                .message_id(message.msg_id);
            acks.push((
                message.kind,
                self.js.send_publish(message.subject, publish).await?,
            ));
        }
        for (kind, ack) in acks {
            // A duplicate was counted when it was first stored.
            if ack.await?.duplicate {
                continue;
            }
            self.published[kind.index()].increment(1);
            if let DerivedKind::Alert(alert) = kind {
                metrics::counter!("stockflow_alerts_total", "kind" => alert_name(alert))
                    .increment(1);
            }
        }
        Ok(())
    }
}

/// What a derived message is, for metrics.
#[derive(Debug, Clone, Copy)]
pub enum DerivedKind {
    /// A ledger entry.
    StockChanged,
    /// A `StockEventRejected`.
    Rejection,
    /// A stock alert.
    Alert(AlertKind),
    /// An order decision or release.
    OrderResult,
}

impl DerivedKind {
    /// Position of its counter in [`Ledger`].
    fn index(self) -> usize {
        match self {
            Self::StockChanged => 0,
            Self::Rejection => 1,
            Self::Alert(_) => 2,
            Self::OrderResult => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::StockChanged => "stock_changed",
            Self::Rejection => "outcome",
            Self::Alert(_) => "alert",
            Self::OrderResult => "order_result",
        }
    }
}

/// A derived message ready to publish.
#[derive(Debug)]
pub struct Derived {
    /// For metrics.
    pub kind: DerivedKind,
    /// Where it goes.
    pub subject: String,
    /// Its `Nats-Msg-Id`, computed from its cause.
    pub msg_id: String,
    /// Encoded protobuf.
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opening_balance_raises_only_negative_stock() {
        let meta = |reason: Reason| EventMeta {
            reason: reason.into(),
            ..Default::default()
        };
        assert!(is_opening_balance(&meta(Reason::OpeningBalance)));
        for other in [Reason::Unspecified, Reason::CycleCount, Reason::Received] {
            assert!(!is_opening_balance(&meta(other)), "{other:?}");
        }
        assert!(raised_for_opening_balance(AlertKind::NegativeStock));
        for quiet in [
            AlertKind::LowStock,
            AlertKind::OutOfStock,
            AlertKind::BackInStock,
        ] {
            assert!(!raised_for_opening_balance(quiet), "{quiet:?}");
        }
    }
}
