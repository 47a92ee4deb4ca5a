//! HTTP bodies → protobuf events, through the contract's own JSON shapes and checks
//! (`stockflow_proto::input`), so the gateway accepts exactly what the workers apply. What is
//! the gateway's own: the `Idempotency-Key` header, batches, and the answer's field paths.

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use stockflow_proto::{
    input::{channel, fact, json, order, Event, InputError},
    msg_id, subjects,
    v1::{ChannelEvent, OrderEvent, StockEvent},
};
use stockflow_shared::validate::MAX_EVENT_ID_BYTES;

use crate::error::ApiError;

pub use stockflow_proto::input::json::{OrderAction, PlaceOrderJson, StockFactJson};

/// A refusal by the contract is a 400 naming the field.
impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        ApiError::invalid(error.field, error.reason)
    }
}

/// An event ready to publish: validated, encoded, with its subject and message id.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The event's idempotency key.
    pub event_id: String,
    /// `stock.events.<sku-token>` or `orders.events.<order-token>`.
    pub subject: String,
    /// `Nats-Msg-Id` (`stockflow_proto::msg_id`): `fact:<sku-token>:<event_id>` or
    /// `order:<order-token>:<event_id>`, the same as every other publisher gives the event, so
    /// JetStream drops a re-post within its duplicate window.
    pub msg_id: String,
    /// The protobuf bytes.
    pub payload: Vec<u8>,
    /// The event, to compare it with another one stored under the same id.
    pub event: Content,
    /// For a stock fact: the stock worker's dedup record of its `event_id` and the fingerprint
    /// the worker stores there, so a reuse of the id for another change is found before
    /// publishing, also past JetStream's duplicate window.
    pub dedup: Option<Dedup>,
}

/// Where the stock worker remembers a fact's `event_id`, and what it remembers of its change.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// The fact's SKU (the record lives in its slot).
    pub sku: String,
    /// `Fact::fingerprint`: the change, as the worker compares it.
    pub fingerprint: String,
}

/// What an [`Outgoing`] carries: a stock fact or an order command, or a channel definition
/// change (`channels.events.<channel-id>`).
#[derive(Debug, Clone)]
pub enum Content {
    /// A stock fact or an order command.
    Event(Event),
    /// A channel definition change.
    Channel(ChannelEvent),
}

impl Content {
    /// Whether `stored` asks for the same change, its envelope aside.
    pub fn same_change(&self, stored: &[u8]) -> bool {
        match self {
            Self::Event(event) => event.same_change(stored),
            Self::Channel(event) => ChannelEvent::decode(stored).is_ok_and(|s| {
                ChannelEvent { meta: None, ..s }
                    == ChannelEvent {
                        meta: None,
                        ..event.clone()
                    }
            }),
        }
    }

    /// Whether this is a stock fact overriding a channel's rules for a SKU (an admin change).
    pub fn is_channel_rules(&self) -> bool {
        matches!(
            self,
            Self::Event(Event::Stock(StockEvent {
                change: Some(stockflow_proto::v1::stock_event::Change::ChannelRules(_)),
                ..
            }))
        )
    }

    /// A kit definition: an admin change, like a channel's rules.
    pub fn is_kit_defined(&self) -> bool {
        matches!(
            self,
            Self::Event(Event::Stock(StockEvent {
                change: Some(stockflow_proto::v1::stock_event::Change::KitDefined(_)),
                ..
            }))
        )
    }
}

impl Outgoing {
    fn new(event: Event, dedup: Option<Dedup>) -> Self {
        Self {
            event_id: event.event_id().to_owned(),
            subject: event.subject(),
            msg_id: event.msg_id(),
            payload: event.encode(),
            event: Content::Event(event),
            dedup,
        }
    }

    /// Whether `stored` (another message published under this one's `Nats-Msg-Id`) asks for
    /// the same change. The envelope (`source`, `reference`, `occurred_at_ms`, `reason`) is not
    /// compared, as the workers do not compare it either: only what the event changes.
    pub fn same_change(&self, stored: &[u8]) -> bool {
        self.event.same_change(stored)
    }
}

/// A channel definition change, judged as the stock worker judges it
/// (`stockflow_proto::input::channel::check`); whether its locations are known is the caller's
/// to check.
pub fn channel_event(event: ChannelEvent) -> Result<Outgoing, ApiError> {
    let subject = subjects::channel_event(&event.channel_id);
    let command = channel::check(&subject, event.clone())?;
    Ok(Outgoing {
        event_id: command.meta.event_id.clone(),
        msg_id: msg_id::channel_event(&command.channel_id, &command.meta.event_id),
        subject,
        payload: event.encode_to_vec(),
        event: Content::Channel(event),
        dedup: None,
    })
}

/// Parses one JSON value into `T`, naming the field at fault; `null` is a member left out.
pub fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    Ok(json::from_value(value)?)
}

/// Parses a body that is one JSON value or an array of them.
pub fn one_or_many(body: &[u8]) -> Result<(Vec<serde_json::Value>, bool), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    Ok(match value {
        serde_json::Value::Array(items) => (items, true),
        one => (vec![one], false),
    })
}

/// The `event_id` item `index` of a batch without its own id gets: `<key>:<index>`, or, when
/// that would be longer than an `event_id` may be, the key cut short and followed by `~` and
/// 16 hex digits of its SHA-256 before `:<index>` — so every key the document allows (up to 128
/// bytes) works in a batch, and a re-post of the batch gets the same ids.
pub fn batch_item_id(key: &str, index: usize) -> String {
    let id = format!("{key}:{index}");
    if id.len() <= MAX_EVENT_ID_BYTES {
        return id;
    }
    let digest = Sha256::digest(key.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    let suffix = format!("~{hash}:{index}");
    // The key is printable ASCII (checked by the caller), so any cut is a char boundary.
    let keep = MAX_EVENT_ID_BYTES
        .saturating_sub(suffix.len())
        .min(key.len());
    format!("{}{suffix}", &key[..keep])
}

/// Picks the event id from the body and the `Idempotency-Key` header (in a batch, item `i`
/// without its own id gets [`batch_item_id`]).
fn event_id(
    body: Option<String>,
    header: Option<&str>,
    index: Option<usize>,
) -> Result<String, ApiError> {
    let from_header = header.map(|key| match index {
        Some(i) => batch_item_id(key, i),
        None => key.to_owned(),
    });
    match (body, from_header) {
        (Some(body), Some(header)) if index.is_none() && body != header => Err(ApiError::invalid(
            "event_id",
            "event_id and the Idempotency-Key header differ",
        )),
        (Some(body), _) => Ok(body),
        (None, Some(header)) => Ok(header),
        (None, None) => Err(ApiError::invalid(
            "event_id",
            "event_id is missing: send an Idempotency-Key header or event_id in the body",
        )),
    }
}

/// A stock fact from its JSON body, judged as the stock worker judges it; `index` is its
/// position in a batch.
pub fn stock_fact(
    value: serde_json::Value,
    idempotency_key: Option<&str>,
    index: Option<usize>,
) -> Result<Outgoing, ApiError> {
    let event: StockEvent = from_value::<StockFactJson>(value)?
        .into_event(|body| event_id(body, idempotency_key, index))?;
    let event = Event::Stock(event);
    let fact = fact::parse(&event.subject(), &event.encode())?;
    let dedup = Dedup {
        fingerprint: fact.fingerprint(&fact.script_args()),
        sku: fact.sku,
    };
    Ok(Outgoing::new(event, Some(dedup)))
}

/// An order placement from its JSON body, judged as the order worker judges it; `index` is its
/// position in a batch.
pub fn placement(
    value: serde_json::Value,
    idempotency_key: Option<&str>,
    index: Option<usize>,
) -> Result<(Outgoing, order::OrderCommand), ApiError> {
    let event = from_value::<PlaceOrderJson>(value)?
        .into_event(|body| event_id(body, idempotency_key, index))?;
    order_outgoing(event)
}

fn order_outgoing(event: OrderEvent) -> Result<(Outgoing, order::OrderCommand), ApiError> {
    let event = Event::Order(event);
    let command = order::parse(&event.subject(), &event.encode())?;
    Ok((Outgoing::new(event, None), command))
}

/// Builds and validates a cancel, commit or fulfilment of `order_id` from its JSON body
/// (`{}` or empty for cancel and commit).
pub fn order_action(
    order_id: String,
    action: OrderAction,
    body: serde_json::Value,
    idempotency_key: Option<&str>,
) -> Result<Outgoing, ApiError> {
    let event = json::order_action(order_id, action, body, |body| {
        event_id(body, idempotency_key, None)
    })?;
    order_outgoing(event).map(|(outgoing, _)| outgoing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fact(value: serde_json::Value, key: Option<&str>) -> Result<Outgoing, ApiError> {
        stock_fact(value, key, None)
    }

    #[test]
    fn a_valid_fact_gets_its_subject_and_message_id() {
        let out = fact(
            json!({"type": "received", "sku": "a.b", "location": "wh", "quantity": 5}),
            Some("k-1"),
        )
        .expect("valid");
        assert_eq!(out.subject, "stock.events.~YS5i");
        assert_eq!(out.msg_id, "fact:~YS5i:k-1");
        assert_eq!(out.event_id, "k-1");
    }

    /// The contract's refusals name their field (its own tests cover each); the gateway keeps
    /// that field in its answer and adds its own: the missing idempotency key.
    #[test]
    fn errors_name_the_field() {
        let err = fact(
            json!({"type": "received", "sku": "A", "location": "wh", "quantity": 0}),
            Some("k"),
        )
        .expect_err("zero quantity");
        assert_eq!(err.field.as_deref(), Some("quantity"), "{err:?}");
        let err = fact(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
            None,
        )
        .expect_err("no id");
        assert_eq!(err.field.as_deref(), Some("event_id"));
    }

    #[test]
    fn batch_items_get_indexed_ids_and_fields() {
        let out = stock_fact(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
            Some("batch-7"),
            Some(2),
        )
        .expect("valid");
        assert_eq!(out.event_id, "batch-7:2");
        let err = ApiError::invalid("quantity", "x").at_index(3);
        assert_eq!(err.field.as_deref(), Some("[3].quantity"));
    }

    #[test]
    fn orders_are_judged_by_the_order_worker() {
        let place = |body: serde_json::Value| placement(body, Some("p-1"), None);
        let (out, command) = place(
            json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "A", "quantity": 2}]}),
        )
        .expect("valid");
        assert_eq!(out.subject, "orders.events.o-1");
        assert_eq!(command.order_id, "o-1");
        let err = place(json!({"order_id": "o-1", "lines": []})).expect_err("no lines");
        assert_eq!(err.field.as_deref(), Some("lines"));
        let err = place(
            json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "A", "quantity": 0}]}),
        )
        .expect_err("zero");
        assert_eq!(err.field.as_deref(), Some("lines[0].quantity"));
        let err = place(json!({"order_id": "o-1", "lines": [
            {"line_id": "1", "sku": "A", "quantity": 1},
            {"line_id": "2", "sku": "B\u{7}", "quantity": 1}]}))
        .expect_err("control character");
        assert_eq!(err.field.as_deref(), Some("lines[1].sku"));
        assert_eq!(err.at_index(1).field.as_deref(), Some("[1].lines[1].sku"));
        let err = order_action(
            "o-1".into(),
            OrderAction::Fulfil,
            json!({"lines": [{"line_id": "1", "quantity": 1}, {"line_id": "2", "quantity": 0}]}),
            Some("f-1"),
        )
        .expect_err("zero shipped");
        assert_eq!(err.field.as_deref(), Some("lines[1].quantity"));
        let err = place(
            json!({"order_id": "o 1", "lines": [{"line_id": "1", "sku": "A", "quantity": 1}]}),
        )
        .expect_err("space");
        assert_eq!(err.field.as_deref(), Some("order_id"));
        let err = order_action("o-1".into(), OrderAction::Fulfil, json!({}), Some("f-1"))
            .expect_err("nothing shipped");
        assert_eq!(err.field.as_deref(), Some("lines"));
    }

    #[test]
    fn null_is_absent_for_every_field() {
        let out = fact(
            json!({"type": "received", "sku": "A", "location": "wh", "quantity": 5,
                   "event_id": null, "source": null, "reason": null, "reference": null,
                   "occurred_at_ms": null, "delta": null}),
            Some("k-null"),
        )
        .expect("nulls are absent");
        assert_eq!(out.event_id, "k-null");
        let (_, command) = placement(
            json!({"order_id": "o-1", "hold_seconds": null,
            "lines": [{"line_id": "1", "sku": "A", "quantity": 1, "location": null}]}),
            Some("p-1"),
            None,
        )
        .expect("valid");
        assert_eq!(command.order_id, "o-1");
        let err = fact(
            json!({"type": "received", "sku": null, "location": "wh", "quantity": 1}),
            Some("k"),
        )
        .expect_err("a required field set to null is missing");
        assert_eq!(err.field.as_deref(), Some("sku"));
    }

    #[test]
    fn every_valid_key_gives_valid_batch_item_ids() {
        assert_eq!(batch_item_id("batch-7", 3), "batch-7:3");
        let long = "k".repeat(MAX_EVENT_ID_BYTES);
        let ids: Vec<String> = [0, 9, 499, 9_999]
            .iter()
            .map(|i| batch_item_id(&long, *i))
            .collect();
        for (i, id) in [0, 9, 499, 9_999].iter().zip(&ids) {
            assert!(id.len() <= MAX_EVENT_ID_BYTES, "{id}");
            assert!(id.ends_with(&format!(":{i}")), "{id}");
            assert_eq!(id, &batch_item_id(&long, *i), "stable");
        }
        let other = format!("{}x", "k".repeat(MAX_EVENT_ID_BYTES - 1));
        assert_ne!(
            batch_item_id(&other, 0),
            ids[0],
            "keys sharing a prefix get other ids"
        );
        let out = stock_fact(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
            Some(&long),
            Some(12),
        )
        .expect("a 128-byte key is valid in a batch");
        assert!(out.event_id.len() <= MAX_EVENT_ID_BYTES);
    }

    #[test]
    fn a_change_is_compared_without_its_envelope() {
        let first = fact(
            json!({"type": "received", "sku": "A", "location": "wh", "quantity": 5, "source": "a"}),
            Some("k"),
        )
        .expect("valid");
        let same = fact(
            json!({"type": "received", "sku": "A", "location": "wh", "quantity": 5, "source": "b"}),
            Some("k"),
        )
        .expect("valid");
        let other = fact(
            json!({"type": "received", "sku": "A", "location": "wh", "quantity": 7}),
            Some("k"),
        )
        .expect("valid");
        assert!(same.same_change(&first.payload));
        assert!(!other.same_change(&first.payload));
        assert!(!other.same_change(b"not protobuf at all"));
        let cancel =
            order_action("o-1".into(), OrderAction::Cancel, json!({}), Some("c")).expect("valid");
        let commit =
            order_action("o-1".into(), OrderAction::Commit, json!({}), Some("c")).expect("valid");
        assert!(!commit.same_change(&cancel.payload));
        assert!(cancel.same_change(&cancel.payload));
    }
}
