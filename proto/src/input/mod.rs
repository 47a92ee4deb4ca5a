//! The input contract: what a channel may send, in JSON and in protobuf, and how it is judged.
//!
//! Every entry point — the stock and order workers decoding JetStream messages, the gateway's
//! HTTP bodies, `stockctl publish` and `import`, the demo — goes through this one module, so an
//! input is accepted or refused for the same reason wherever it arrives:
//!
//! - [`fact::parse`] and [`order::parse`] decode a protobuf `StockEvent` / `OrderEvent` and
//!   check it as the workers apply it;
//! - [`json`] holds the JSON shapes (serde) and turns them into those protobuf events, then into
//!   the checked [`fact::Fact`] / [`order::OrderCommand`];
//! - [`Event`] is a checked-or-not input ready to publish: its subject, its `Nats-Msg-Id`
//!   ([`crate::msg_id`]) and its bytes.
//!
//! A refusal is an [`InputError`]: the field at fault, a fixed [`Category`] and a reason for a
//! person. The consume loop turns it into a dead letter (`stockflow_shared` implements
//! `From<InputError>` for its `HandleError::Malformed`); the gateway into a 400.

pub mod channel;
pub mod fact;
pub mod json;
pub mod order;

use prost::Message as _;

use crate::{
    msg_id, subjects,
    v1::{order_event, OrderEvent, StockEvent},
};

/// Why an input is refused: it can never be applied as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct InputError {
    /// The event type (`received`, `order_placed`, ...; `unknown` before the type is known): a
    /// metric label.
    pub event_type: &'static str,
    /// The field at fault, by its path in the JSON shape: `quantity`, `lines[1].sku`, `type`,
    /// `body` for the input as a whole.
    pub field: String,
    /// What kind of fault: a short, fixed name callers count and branch on.
    pub category: Category,
    /// Why, for a person; it names the field.
    pub reason: String,
}

impl InputError {
    /// A refusal of `field` of an input of type `event_type`.
    pub fn new(
        event_type: &'static str,
        field: impl Into<String>,
        category: Category,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            event_type,
            field: field.into(),
            category,
            reason: reason.into(),
        }
    }

    /// A fault in the JSON shape itself (not JSON, an unknown or mistyped field, a field that
    /// does not apply to the type).
    pub fn json(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new("unknown", field, Category::InvalidJson, reason)
    }
}

/// The kinds of fault, as the dead-letter metrics and headers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// The bytes are not the contract's protobuf message.
    Decode,
    /// No change / command set: missing, or a type this version does not know.
    UnknownType,
    /// The envelope: `event_id`, `source` or `reference`.
    InvalidMeta,
    /// An enum value the contract does not define (the envelope's `reason`).
    UnknownEnum,
    /// The SKU.
    InvalidSku,
    /// Published on a subject that is not its SKU's or order's.
    SubjectMismatch,
    /// A location.
    InvalidLocation,
    /// A transfer to the location it comes from.
    SameLocation,
    /// A quantity, delta, count or policy value.
    InvalidQuantity,
    /// The order id.
    InvalidOrderId,
    /// An order's lines: their number, a line id.
    InvalidLines,
    /// A placement's checkout hold.
    InvalidHold,
    /// The JSON shape (only JSON input has it; never a dead letter).
    InvalidJson,
    /// A channel id, a channel definition or availability rules.
    InvalidChannel,
    /// A channel that is not defined (a channel sale, return or order).
    UnknownChannel,
    /// A channel definition naming a location that has no stock recorded anywhere.
    UnknownLocation,
    /// A purchase-order reference (`expected`, `expected_cancelled`, a `received` naming one).
    InvalidPurchaseOrder,
    /// A kit definition: a component's SKU or quantity, the kit itself or another kit as a
    /// component, too many components; a fact a kit cannot take (kits have no stock of their own).
    InvalidKit,
}

impl Category {
    /// Every category.
    pub const ALL: [Self; 18] = [
        Self::Decode,
        Self::UnknownType,
        Self::InvalidMeta,
        Self::UnknownEnum,
        Self::InvalidSku,
        Self::SubjectMismatch,
        Self::InvalidLocation,
        Self::SameLocation,
        Self::InvalidQuantity,
        Self::InvalidOrderId,
        Self::InvalidLines,
        Self::InvalidHold,
        Self::InvalidJson,
        Self::InvalidChannel,
        Self::UnknownChannel,
        Self::UnknownLocation,
        Self::InvalidPurchaseOrder,
        Self::InvalidKit,
    ];

    /// The category's name: `decode`, `invalid_quantity`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::UnknownType => "unknown_type",
            Self::InvalidMeta => "invalid_meta",
            Self::UnknownEnum => "unknown_enum",
            Self::InvalidSku => "invalid_sku",
            Self::SubjectMismatch => "subject_mismatch",
            Self::InvalidLocation => "invalid_location",
            Self::SameLocation => "same_location",
            Self::InvalidQuantity => "invalid_quantity",
            Self::InvalidOrderId => "invalid_order_id",
            Self::InvalidLines => "invalid_lines",
            Self::InvalidHold => "invalid_hold",
            Self::InvalidJson => "invalid_json",
            Self::InvalidChannel => "invalid_channel",
            Self::UnknownChannel => "unknown_channel",
            Self::UnknownLocation => "unknown_location",
            Self::InvalidPurchaseOrder => "invalid_purchase_order",
            Self::InvalidKit => "invalid_kit",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An input event: a stock fact or an order command.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stock fact.
    Stock(StockEvent),
    /// An order command.
    Order(OrderEvent),
}

impl Event {
    /// Its subject: `stock.events.<sku-token>` or `orders.events.<order-token>`.
    pub fn subject(&self) -> String {
        match self {
            Self::Stock(e) => subjects::stock_event(&e.sku),
            Self::Order(e) => subjects::order_event(&e.order_id),
        }
    }

    /// Its `event_id` ('' without an envelope).
    pub fn event_id(&self) -> &str {
        let meta = match self {
            Self::Stock(e) => e.meta.as_ref(),
            Self::Order(e) => e.meta.as_ref(),
        };
        meta.map(|m| m.event_id.as_str()).unwrap_or_default()
    }

    /// Its `Nats-Msg-Id` ([`msg_id::stock_fact`], [`msg_id::order_command`]): the same for the
    /// same event from any publisher.
    pub fn msg_id(&self) -> String {
        match self {
            Self::Stock(e) => msg_id::stock_fact(&e.sku, self.event_id()),
            Self::Order(e) => msg_id::order_command(&e.order_id, self.event_id()),
        }
    }

    /// The protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Stock(e) => e.encode_to_vec(),
            Self::Order(e) => e.encode_to_vec(),
        }
    }

    /// Judges the event as its worker will: what the worker would dead-letter is refused here,
    /// with the same reason. An `OrderHoldExpired` is refused too: only the order worker
    /// publishes it.
    pub fn check(&self) -> Result<(), InputError> {
        let subject = self.subject();
        let bytes = self.encode();
        match self {
            Self::Stock(_) => fact::parse(&subject, &bytes).map(drop),
            Self::Order(e) => {
                if matches!(e.command, Some(order_event::Command::HoldExpired(_))) {
                    return Err(InputError::new(
                        "hold_expired",
                        "type",
                        Category::UnknownType,
                        "order_hold_expired is published by the order worker itself",
                    ));
                }
                order::parse(&subject, &bytes).map(drop)
            }
        }
    }

    /// Whether `stored` (the bytes of another message published under this one's
    /// `Nats-Msg-Id`) asks for the same change. The envelope (`source`, `reference`,
    /// `occurred_at_ms`, `reason`) is not compared, as the workers do not compare it either:
    /// only what the event changes.
    pub fn same_change(&self, stored: &[u8]) -> bool {
        match self {
            Self::Stock(e) => StockEvent::decode(stored).is_ok_and(|s| {
                StockEvent { meta: None, ..s }
                    == StockEvent {
                        meta: None,
                        ..e.clone()
                    }
            }),
            Self::Order(e) => OrderEvent::decode(stored).is_ok_and(|s| {
                OrderEvent { meta: None, ..s }
                    == OrderEvent {
                        meta: None,
                        ..e.clone()
                    }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{stock_event::Change, EventMeta, OrderCancelled, OrderCommitted, Received};

    fn received(event_id: &str, source: &str, quantity: i64) -> Event {
        Event::Stock(StockEvent {
            meta: Some(EventMeta {
                event_id: event_id.into(),
                source: source.into(),
                ..Default::default()
            }),
            sku: "a.b".into(),
            location: "wh".into(),
            change: Some(Change::Received(Received { quantity })),
            ..Default::default()
        })
    }

    #[test]
    fn an_event_knows_its_subject_and_message_id() {
        let fact = received("k-1", "pos", 5);
        assert_eq!(fact.subject(), "stock.events.~YS5i");
        assert_eq!(fact.msg_id(), "fact:~YS5i:k-1");
        assert_eq!(fact.event_id(), "k-1");
        assert!(fact.check().is_ok());
        let zero = received("k-1", "pos", 0);
        let error = zero.check().expect_err("zero");
        assert_eq!(
            (error.field.as_str(), error.category),
            ("quantity", Category::InvalidQuantity)
        );
    }

    #[test]
    fn a_change_is_compared_without_its_envelope() {
        let first = received("k", "a", 5);
        let same = received("k", "b", 5);
        let other = received("k", "a", 7);
        assert!(same.same_change(&first.encode()));
        assert!(!other.same_change(&first.encode()));
        assert!(!other.same_change(b"not protobuf at all"));
        let order = |command| {
            Event::Order(OrderEvent {
                meta: None,
                order_id: "o-1".into(),
                command: Some(command),
            })
        };
        let cancel = order(order_event::Command::Cancelled(OrderCancelled {}));
        let commit = order(order_event::Command::Committed(OrderCommitted {}));
        assert!(!commit.same_change(&cancel.encode()));
        assert!(cancel.same_change(&cancel.encode()));
    }
}
