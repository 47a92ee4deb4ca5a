//! Publishes what a change derives — ledger entries, alerts, rejections — with `Nats-Msg-Id`s
//! derived from the cause, so publishing again after a crash stores nothing twice.

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use stockflow_proto::{
    subjects::{self, encode_token},
    v1::{EventMeta, Reason, RejectionReason, StockAlert, StockChanged, StockEventRejected},
};

use crate::outcome::{alert_name, Outcome, Verdict};

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
        _ => Reason::Unspecified,
    }
}

/// Publishes derived events through JetStream.
#[derive(Debug, Clone)]
pub struct Ledger {
    js: jetstream::Context,
}

impl Ledger {
    /// A ledger publishing through `js`.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes everything `outcome` derives for `cause` and waits until JetStream stored all of
    /// it. Safe to call again with the same arguments: every message carries a deterministic id.
    pub async fn publish(&self, cause: Cause<'_>, outcome: &Outcome) -> anyhow::Result<()> {
        let token = encode_token(cause.sku);
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
            pending.push((
                "outcome",
                subjects::stock_outcome(cause.sku),
                format!("out:{token}:{}", cause.cause_id),
                rejected.encode_to_vec(),
            ));
        }
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
            };
            pending.push((
                "stock_changed",
                subjects::stock_changed(cause.sku),
                format!("chg:{token}:{}:{index}", cause.cause_id),
                entry.encode_to_vec(),
            ));
            for kind in &change.alerts {
                let name = alert_name(*kind);
                let alert = StockAlert {
                    kind: (*kind).into(),
                    sku: cause.sku.to_owned(),
                    location: change.location.clone(),
                    cause_event_id: cause.cause_id.to_owned(),
                    levels: Some(change.after),
                    threshold: change.threshold.unwrap_or_default(),
                    raised_at_ms: outcome.applied_at_ms,
                };
                pending.push((
                    name,
                    subjects::alert(name, cause.sku),
                    format!("alr:{token}:{}:{index}:{name}", cause.cause_id),
                    alert.encode_to_vec(),
                ));
            }
        }
        self.publish_all(pending).await
    }

    /// Publishes `(kind, subject, msg_id, payload)` messages concurrently and waits for every
    /// acknowledgement.
    pub async fn publish_all(
        &self,
        messages: Vec<(&'static str, String, String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(messages.len());
        for (kind, subject, id, payload) in messages {
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(id);
            acks.push((kind, self.js.send_publish(subject, publish).await?));
        }
        for (kind, ack) in acks {
            let ack = ack.await?;
            if !ack.duplicate {
                let (metric_kind, alert) = match kind {
                    "stock_changed" | "outcome" | "order_result" => (kind, None),
                    alert => ("alert", Some(alert)),
                };
                metrics::counter!("stockflow_derived_published_total", "kind" => metric_kind)
                    .increment(1);
                if let Some(alert) = alert {
                    metrics::counter!("stockflow_alerts_total", "kind" => alert).increment(1);
                }
            }
        }
        Ok(())
    }
}
