//! JSON input → protobuf event, judged by the workers' own parsers (`stock_worker::fact::parse`,
//! `order_worker::command::parse`), so the gateway accepts exactly what the workers apply.

use prost::Message as _;
use serde::{de::DeserializeOwned, Deserialize};
use sha2::{Digest as _, Sha256};
use stockflow_proto::{
    subjects,
    v1::{
        order_event, stock_event::Change, Adjusted, Counted, EventMeta, FulfilledLine,
        OrderCancelled, OrderCommitted, OrderEvent, OrderFulfilled, OrderLine, OrderPlaced,
        PolicySet, Reason, Received, Returned, Sold, StockEvent, Transferred,
    },
};
use stockflow_shared::{consume::HandleError, validate::MAX_EVENT_ID_BYTES};

use crate::error::ApiError;

/// An event ready to publish: validated, encoded, with its subject and message id.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The event's idempotency key.
    pub event_id: String,
    /// `stock.events.<sku-token>` or `orders.events.<order-token>`.
    pub subject: String,
    /// `Nats-Msg-Id`: `fact:<sku-token>:<event_id>` or `order:<order-token>:<event_id>`, so
    /// JetStream drops a re-post within its duplicate window.
    pub msg_id: String,
    /// The protobuf bytes.
    pub payload: Vec<u8>,
    /// What the payload is, to compare it with another one stored under the same id.
    pub kind: Kind,
    /// For a stock fact: the stock worker's dedup record of its `event_id` and the fingerprint
    /// the worker stores there, so a reuse of the id for another change is found before
    /// publishing, also past JetStream's duplicate window.
    pub dedup: Option<Dedup>,
}

/// The contract message an [`Outgoing`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `StockEvent`.
    Stock,
    /// `OrderEvent`.
    Order,
}

/// Where the stock worker remembers a fact's `event_id`, and what it remembers of its change.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// The fact's SKU (the record lives in its slot).
    pub sku: String,
    /// `stock_worker::fact::Fact::fingerprint`: the change, as the worker compares it.
    pub fingerprint: String,
}

impl Outgoing {
    /// Whether `stored` (another message published under this one's `Nats-Msg-Id`) asks for
    /// the same change. The envelope (`source`, `reference`, `occurred_at_ms`, `reason`) is not
    /// compared, as the workers do not compare it either: only what the event changes.
    pub fn same_change(&self, stored: &[u8]) -> bool {
        fn content<M: prost::Message + Default>(bytes: &[u8], clear: impl Fn(&mut M)) -> Option<M> {
            let mut message = M::decode(bytes).ok()?;
            clear(&mut message);
            Some(message)
        }
        match self.kind {
            Kind::Stock => {
                let clear = |e: &mut StockEvent| e.meta = None;
                content(stored, clear).is_some_and(|a| content(&self.payload, clear) == Some(a))
            }
            Kind::Order => {
                let clear = |e: &mut OrderEvent| e.meta = None;
                content(stored, clear).is_some_and(|a| content(&self.payload, clear) == Some(a))
            }
        }
    }
}

/// The envelope fields every JSON event may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaJson {
    /// Idempotency key; the `Idempotency-Key` header may give it instead.
    #[serde(default)]
    pub event_id: Option<String>,
    /// The reporting channel, e.g. `pos:store-12`.
    #[serde(default)]
    pub source: String,
    /// Why, e.g. `damaged` (the proto `Reason` without its prefix, lower case).
    #[serde(default)]
    pub reason: Option<String>,
    /// URI of the source document.
    #[serde(default)]
    pub reference: String,
    /// When it happened at the source, ms since the Unix epoch.
    #[serde(default)]
    pub occurred_at_ms: i64,
}

/// The envelope of a JSON struct that carries the envelope fields inline (serde's `flatten`
/// would defeat `deny_unknown_fields`).
macro_rules! meta_of {
    ($json:expr) => {
        MetaJson {
            event_id: $json.event_id,
            source: $json.source,
            reason: $json.reason,
            reference: $json.reference,
            occurred_at_ms: $json.occurred_at_ms,
        }
    };
}

/// A stock fact in JSON. `type` picks the fact; only its own fields may be set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockFactJson {
    /// `received`, `sold`, `returned`, `adjusted`, `counted`, `transferred`, `policy_set`.
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    sku: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    quantity: Option<i64>,
    #[serde(default)]
    delta: Option<i64>,
    #[serde(default)]
    on_hand: Option<i64>,
    #[serde(default)]
    expected_on_hand: Option<i64>,
    #[serde(default)]
    to_location: Option<String>,
    #[serde(default)]
    low_stock_threshold: Option<i64>,
    #[serde(default)]
    safety_stock: Option<i64>,
    #[serde(default)]
    location_priority: Option<Vec<String>>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    source: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    occurred_at_ms: i64,
}

/// An order placement in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderJson {
    #[serde(default)]
    order_id: String,
    #[serde(default)]
    lines: Vec<OrderLineJson>,
    #[serde(default)]
    hold_seconds: i64,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    source: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    occurred_at_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderLineJson {
    #[serde(default)]
    line_id: String,
    #[serde(default)]
    sku: String,
    #[serde(default)]
    quantity: i64,
    #[serde(default)]
    location: String,
}

/// A fulfilment in JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FulfilJson {
    #[serde(default)]
    lines: Vec<FulfilledLineJson>,
    #[serde(default)]
    last_shipment: bool,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    source: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reference: String,
    #[serde(default)]
    occurred_at_ms: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FulfilledLineJson {
    #[serde(default)]
    line_id: String,
    #[serde(default)]
    quantity: i64,
}

/// The commands on an existing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAction {
    /// Release whatever the order holds.
    Cancel,
    /// Payment done: the hold no longer expires.
    Commit,
    /// Units shipped.
    Fulfil,
}

/// Parses one JSON value into `T`, naming the field at fault. A field set to `null` is the
/// same as a field left out, for every field at every depth: one rule for nulls.
pub fn from_value<T: DeserializeOwned>(mut value: serde_json::Value) -> Result<T, ApiError> {
    drop_nulls(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Unknown and missing fields are named inside serde's message, not in the path.
        let field = match quoted_field(&inner) {
            // An unknown field is already the last segment of the path; a missing one is not.
            Some(f) if path == "." || path.ends_with(&f) => f,
            Some(f) => format!("{path}.{f}"),
            None if path == "." => "body".into(),
            None => path,
        };
        ApiError::invalid(field, inner)
    })
}

/// Removes every object member whose value is `null`, at any depth.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `unknown field `foo`, expected ...` -> `foo`.
fn quoted_field(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("missing field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
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

fn meta(json: MetaJson, event_id: String) -> Result<EventMeta, ApiError> {
    let reason = match json.reason.as_deref() {
        None | Some("") => Reason::Unspecified,
        Some(name) => Reason::from_str_name(&format!("REASON_{}", name.to_ascii_uppercase()))
            .filter(|r| *r != Reason::Unspecified)
            .ok_or_else(|| {
                ApiError::invalid(
                    "reason",
                    format!("reason {name:?} is not one of received, sold, returned, damaged, shrinkage, correction, cycle_count, transfer, reserved, released, shipped, policy"),
                )
            })?,
    };
    Ok(EventMeta {
        event_id,
        occurred_at_ms: json.occurred_at_ms,
        source: json.source,
        reason: reason.into(),
        reference: json.reference,
    })
}

/// Fields a worker's reason may start with; anything else is reported under `fallback`.
const FIELDS: &[&str] = &[
    "event_id",
    "source",
    "reference",
    "sku",
    "location",
    "quantity",
    "delta",
    "on_hand",
    "expected_on_hand",
    "to_location",
    "low_stock_threshold",
    "safety_stock",
    "location_priority",
    "order_id",
    "line_id",
    "hold_seconds",
    "lines",
];

/// Turns a worker's verdict into a 400 naming the field.
fn rejected(error: HandleError) -> ApiError {
    let HandleError::Malformed {
        category, reason, ..
    } = error
    else {
        // The parsers only ever judge input; anything else would be a bug worth seeing.
        return ApiError::invalid("body", error.to_string());
    };
    let first = reason.split_whitespace().next().unwrap_or("");
    let field = if let Some(field) = FIELDS.iter().find(|f| **f == first) {
        *field
    } else {
        match category {
            "invalid_lines" => "lines",
            "invalid_hold" => "hold_seconds",
            "invalid_order_id" => "order_id",
            "invalid_sku" => "sku",
            "invalid_location" => "location",
            _ => "type",
        }
    };
    ApiError::invalid(field, reason)
}

/// A line the order worker refuses, named by its full path: `lines[1].quantity`.
fn line_error(error: order_worker::command::LineError) -> ApiError {
    ApiError::invalid(
        format!("lines[{}].{}", error.index, error.field),
        error.reason,
    )
}

fn require(value: Option<i64>, field: &str, kind: &str) -> Result<i64, ApiError> {
    value.ok_or_else(|| ApiError::invalid(field, format!("{field} is required for type {kind}")))
}

impl StockFactJson {
    /// The names of the type-specific fields that are set.
    fn set_fields(&self) -> Vec<&'static str> {
        [
            ("quantity", self.quantity.is_some()),
            ("delta", self.delta.is_some()),
            ("on_hand", self.on_hand.is_some()),
            ("expected_on_hand", self.expected_on_hand.is_some()),
            ("to_location", self.to_location.is_some()),
            ("low_stock_threshold", self.low_stock_threshold.is_some()),
            ("safety_stock", self.safety_stock.is_some()),
            ("location_priority", self.location_priority.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    fn change(&self) -> Result<Change, ApiError> {
        let kind = self.kind.as_str();
        let allowed: &[&str] = match kind {
            "received" | "sold" | "returned" => &["quantity"],
            "adjusted" => &["delta"],
            "counted" => &["on_hand", "expected_on_hand"],
            "transferred" => &["to_location", "quantity"],
            "policy_set" => &["low_stock_threshold", "safety_stock", "location_priority"],
            "" => return Err(ApiError::invalid("type", "type is missing")),
            other => {
                return Err(ApiError::invalid(
                    "type",
                    format!("type {other:?} is not one of received, sold, returned, adjusted, counted, transferred, policy_set"),
                ))
            }
        };
        if let Some(field) = self.set_fields().into_iter().find(|f| !allowed.contains(f)) {
            return Err(ApiError::invalid(
                field,
                format!("{field} does not apply to type {kind}"),
            ));
        }
        Ok(match kind {
            "received" => Change::Received(Received {
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "sold" => Change::Sold(Sold {
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "returned" => Change::Returned(Returned {
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "adjusted" => Change::Adjusted(Adjusted {
                delta: require(self.delta, "delta", kind)?,
            }),
            "counted" => Change::Counted(Counted {
                on_hand: require(self.on_hand, "on_hand", kind)?,
                expected_on_hand: self.expected_on_hand,
            }),
            "transferred" => Change::Transferred(Transferred {
                to_location: self.to_location.clone().ok_or_else(|| {
                    ApiError::invalid(
                        "to_location",
                        "to_location is required for type transferred",
                    )
                })?,
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            _ => Change::PolicySet(PolicySet {
                low_stock_threshold: self.low_stock_threshold,
                safety_stock: self.safety_stock,
                location_priority: self.location_priority.clone().unwrap_or_default(),
            }),
        })
    }

    /// Builds and validates the event; `index` is its position in a batch.
    pub fn into_outgoing(
        self,
        idempotency_key: Option<&str>,
        index: Option<usize>,
    ) -> Result<Outgoing, ApiError> {
        let change = self.change()?;
        let event_id = event_id(self.event_id.clone(), idempotency_key, index)?;
        let event = StockEvent {
            meta: Some(meta(meta_of!(self), event_id.clone())?),
            sku: self.sku,
            location: self.location,
            change: Some(change),
        };
        let subject = subjects::stock_event(&event.sku);
        let payload = event.encode_to_vec();
        let fact = stock_worker::fact::parse(&subject, &payload).map_err(rejected)?;
        Ok(Outgoing {
            msg_id: format!("fact:{}:{event_id}", subjects::encode_token(&event.sku)),
            event_id,
            subject,
            payload,
            kind: Kind::Stock,
            dedup: Some(Dedup {
                fingerprint: fact.fingerprint(&fact.script_args()),
                sku: fact.sku,
            }),
        })
    }
}

fn order_outgoing(
    event: OrderEvent,
) -> Result<(Outgoing, order_worker::command::OrderCommand), ApiError> {
    let subject = subjects::order_event(&event.order_id);
    let payload = event.encode_to_vec();
    let command = order_worker::command::parse(&subject, &payload).map_err(rejected)?;
    let event_id = command.meta.event_id.clone();
    Ok((
        Outgoing {
            msg_id: format!(
                "order:{}:{event_id}",
                subjects::encode_token(&event.order_id)
            ),
            event_id,
            subject,
            payload,
            kind: Kind::Order,
            dedup: None,
        },
        command,
    ))
}

impl PlaceOrderJson {
    /// Builds and validates the placement.
    pub fn into_outgoing(
        self,
        idempotency_key: Option<&str>,
        index: Option<usize>,
    ) -> Result<(Outgoing, order_worker::command::OrderCommand), ApiError> {
        let event_id = event_id(self.event_id.clone(), idempotency_key, index)?;
        let lines: Vec<order_worker::command::Line> = self
            .lines
            .into_iter()
            .map(|l| order_worker::command::Line {
                line_id: l.line_id,
                sku: l.sku,
                quantity: l.quantity,
                location: l.location,
            })
            .collect();
        // The worker's own line check, asked first so the error names the line's position.
        order_worker::command::check_lines(&lines).map_err(line_error)?;
        let event = OrderEvent {
            meta: Some(meta(meta_of!(self), event_id)?),
            order_id: self.order_id,
            command: Some(order_event::Command::Placed(OrderPlaced {
                lines: lines
                    .into_iter()
                    .map(|l| OrderLine {
                        line_id: l.line_id,
                        sku: l.sku,
                        quantity: l.quantity,
                        location: l.location,
                    })
                    .collect(),
                hold_seconds: self.hold_seconds,
            })),
        };
        order_outgoing(event)
    }
}

/// Builds and validates a cancel, commit or fulfilment of `order_id` from its JSON body
/// (`{}` or empty for cancel and commit).
pub fn order_action(
    order_id: String,
    action: OrderAction,
    body: serde_json::Value,
    idempotency_key: Option<&str>,
) -> Result<Outgoing, ApiError> {
    let (command, meta_json) = match action {
        OrderAction::Cancel | OrderAction::Commit => {
            let meta_json: MetaJson = from_value(body)?;
            let command = if action == OrderAction::Cancel {
                order_event::Command::Cancelled(OrderCancelled {})
            } else {
                order_event::Command::Committed(OrderCommitted {})
            };
            (command, meta_json)
        }
        OrderAction::Fulfil => {
            let json: FulfilJson = from_value(body)?;
            if json.lines.is_empty() && !json.last_shipment {
                return Err(ApiError::invalid(
                    "lines",
                    "lines is empty: name the shipped lines, or set last_shipment",
                ));
            }
            let shipped: Vec<(String, i64)> = json
                .lines
                .into_iter()
                .map(|l| (l.line_id, l.quantity))
                .collect();
            order_worker::command::check_fulfilled_lines(&shipped).map_err(line_error)?;
            let command = order_event::Command::Fulfilled(OrderFulfilled {
                lines: shipped
                    .into_iter()
                    .map(|(line_id, quantity)| FulfilledLine { line_id, quantity })
                    .collect(),
                last_shipment: json.last_shipment,
            });
            (command, meta_of!(json))
        }
    };
    let event_id = event_id(meta_json.event_id.clone(), idempotency_key, None)?;
    let event = OrderEvent {
        meta: Some(meta(meta_json, event_id)?),
        order_id,
        command: Some(command),
    };
    order_outgoing(event).map(|(outgoing, _)| outgoing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fact(value: serde_json::Value, key: Option<&str>) -> Result<Outgoing, ApiError> {
        from_value::<StockFactJson>(value)?.into_outgoing(key, None)
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

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": 0}),
                "quantity",
            ),
            (
                json!({"type": "received", "sku": "", "location": "wh", "quantity": 1}),
                "sku",
            ),
            (
                json!({"type": "received", "sku": "A", "quantity": 1}),
                "location",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh"}),
                "quantity",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": 1, "delta": 2}),
                "delta",
            ),
            (
                json!({"type": "gifted", "sku": "A", "location": "wh"}),
                "type",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": "x"}),
                "quantity",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": 1, "colour": "red"}),
                "colour",
            ),
            (
                json!({"type": "adjusted", "sku": "A", "location": "wh", "delta": 0}),
                "delta",
            ),
            (
                json!({"type": "transferred", "sku": "A", "location": "wh", "to_location": "wh", "quantity": 1}),
                "to_location",
            ),
            (
                json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1, "reason": "lost"}),
                "reason",
            ),
        ];
        for (body, field) in cases {
            let err = fact(body.clone(), Some("k")).expect_err(&body.to_string());
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {err:?}");
        }
        let err = fact(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
            None,
        )
        .expect_err("no id");
        assert_eq!(err.field.as_deref(), Some("event_id"));
    }

    #[test]
    fn batch_items_get_indexed_ids_and_fields() {
        let out = from_value::<StockFactJson>(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
        )
        .expect("json")
        .into_outgoing(Some("batch-7"), Some(2))
        .expect("valid");
        assert_eq!(out.event_id, "batch-7:2");
        let err = ApiError::invalid("quantity", "x").at_index(3);
        assert_eq!(err.field.as_deref(), Some("[3].quantity"));
    }

    #[test]
    fn orders_are_judged_by_the_order_worker() {
        let place = |body: serde_json::Value| {
            from_value::<PlaceOrderJson>(body)?.into_outgoing(Some("p-1"), None)
        };
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
        let (_, command) =
            from_value::<PlaceOrderJson>(json!({"order_id": "o-1", "hold_seconds": null,
            "lines": [{"line_id": "1", "sku": "A", "quantity": 1, "location": null}]}))
            .expect("json")
            .into_outgoing(Some("p-1"), None)
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
        let out = from_value::<StockFactJson>(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
        )
        .expect("json")
        .into_outgoing(Some(&long), Some(12))
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
