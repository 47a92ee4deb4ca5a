//! Derived events as webhook payloads: decoding the protobuf messages of `ALERTS`,
//! `STOCK_CHANGES`, `ORDER_RESULTS` and `AVAILABILITY`, and their JSON rendering.

use async_nats::jetstream;
use prost::Message as _;
use serde_json::{json, Value};
use stockflow_proto::{
    subjects,
    v1::{
        order_result, AlertKind, ChannelAvailabilityChanged, Levels, OrderResult, StockAlert,
        StockChanged,
    },
};
use stockflow_shared::consume::HandleError;

/// The event types a subscription can ask for (`X-Stockflow-Event-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// `ALERTS`, `alerts.low_stock.*`.
    LowStock,
    /// `ALERTS`, `alerts.out_of_stock.*`.
    OutOfStock,
    /// `ALERTS`, `alerts.back_in_stock.*`.
    BackInStock,
    /// `ALERTS`, `alerts.negative_stock.*`.
    NegativeStock,
    /// `ALERTS`, `alerts.channel_oversold.*`: a channel sold more than it offered.
    ChannelOversold,
    /// A ledger entry, `STOCK_CHANGES`, `stock.changes.*` (`stock.changes.<p>.*` in
    /// `STOCK_CHANGES_<p>`).
    StockChanged,
    /// `AVAILABILITY`, `availability.<channel>.*`: what a channel may sell of a SKU changed.
    ChannelAvailability,
    /// `ORDER_RESULTS`: every line is reserved.
    OrderConfirmed,
    /// `ORDER_RESULTS`: at least one line could not be covered.
    OrderRejected,
    /// `ORDER_RESULTS`: the order holds nothing any more (cancelled, expired, fulfilled).
    OrderReleased,
    /// A ledger entry of kind `backorder_filled` (`STOCK_CHANGES`): units that arrived were
    /// reserved for a backordered order line. Delivered as this type, not as `stock_changed`.
    BackorderFilled,
}

/// The names of every [`EventType`]: the `type` labels notify's consume loops register at 0.
pub static NAMES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| EventType::ALL.map(EventType::as_str).to_vec());

impl EventType {
    /// Every type, in documentation order.
    pub const ALL: [Self; 11] = [
        Self::LowStock,
        Self::OutOfStock,
        Self::BackInStock,
        Self::NegativeStock,
        Self::ChannelOversold,
        Self::StockChanged,
        Self::ChannelAvailability,
        Self::OrderConfirmed,
        Self::OrderRejected,
        Self::OrderReleased,
        Self::BackorderFilled,
    ];

    /// The name used in the subscriptions file, the payload and the header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LowStock => "low_stock",
            Self::OutOfStock => "out_of_stock",
            Self::BackInStock => "back_in_stock",
            Self::NegativeStock => "negative_stock",
            Self::ChannelOversold => "channel_oversold",
            Self::StockChanged => "stock_changed",
            Self::ChannelAvailability => "channel_availability",
            Self::OrderConfirmed => "order_confirmed",
            Self::OrderRejected => "order_rejected",
            Self::OrderReleased => "order_released",
            Self::BackorderFilled => "backorder_filled",
        }
    }

    /// The type named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The known names, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// One derived event, ready to deliver.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Its type.
    pub event_type: EventType,
    /// Stable per derived event: its `Nats-Msg-Id` (computed from its cause, so the same on
    /// every re-publish), else `<stream>:<sequence>`. Receivers deduplicate on it.
    pub event_id: String,
    /// SKUs it is about (filters).
    pub skus: Vec<String>,
    /// Locations it is about (filters).
    pub locations: Vec<String>,
    /// Sales channels it is about (filters): a channel quantity's or an oversold alert's
    /// channel, a ledger entry's when a channel sale or return caused it.
    pub channels: Vec<String>,
    /// The JSON body, rendered once so every attempt signs and sends the same bytes.
    pub body: bytes::Bytes,
}

/// Decodes a derived event. `Ok(None)` for messages that are not delivered (rejections on
/// `stock.outcomes.>`); an undecodable message is malformed and gets dead-lettered.
pub fn decode(message: &jetstream::Message) -> Result<Option<Notification>, HandleError> {
    let subject = message.subject.as_str();
    let event_id = event_id(message);
    let malformed = |what: &'static str, e: prost::DecodeError| {
        HandleError::malformed(what, "decode", format!("not a {what}: {e}"))
    };
    let (event_type, about, data) = if subject.starts_with("alerts.") {
        let alert =
            StockAlert::decode(message.payload.clone()).map_err(|e| malformed("stock_alert", e))?;
        let event_type = match alert.kind() {
            AlertKind::LowStock => EventType::LowStock,
            AlertKind::OutOfStock => EventType::OutOfStock,
            AlertKind::BackInStock => EventType::BackInStock,
            AlertKind::NegativeStock => EventType::NegativeStock,
            AlertKind::ChannelOversold => EventType::ChannelOversold,
            AlertKind::Unspecified => {
                return Err(HandleError::malformed(
                    "stock_alert",
                    "invalid_kind",
                    "alert kind is unspecified",
                ))
            }
        };
        if event_type == EventType::ChannelOversold {
            // About a channel, not a location: what it offered and what was sold.
            let data = json!({
                "sku": alert.sku,
                "channel": alert.channel,
                "offered": alert.offered,
                "sold": alert.sold,
                "cause_event_id": alert.cause_event_id,
                "raised_at_ms": alert.raised_at_ms,
            });
            let about = About::new(alert.sku, None, Some(alert.channel));
            (event_type, about, data)
        } else {
            let data = json!({
                "sku": alert.sku,
                "location": alert.location,
                "cause_event_id": alert.cause_event_id,
                "levels": levels(alert.levels.as_ref()),
                "threshold": alert.threshold,
                "raised_at_ms": alert.raised_at_ms,
            });
            let about = About::new(alert.sku, Some(alert.location), None);
            (event_type, about, data)
        }
    } else if subject.starts_with("stock.changes.") {
        let change = StockChanged::decode(message.payload.clone())
            .map_err(|e| malformed("stock_changed", e))?;
        let mut data = json!({
            "sku": change.sku,
            "location": change.location,
            "kind": change.kind,
            "reason": enum_name(change.reason().as_str_name(), "REASON_"),
            "cause_event_id": change.cause_event_id,
            "source": change.source,
            "reference": change.reference,
            "before": levels(change.before.as_ref()),
            "after": levels(change.after.as_ref()),
            "occurred_at_ms": change.occurred_at_ms,
            "applied_at_ms": change.applied_at_ms,
        });
        // Only on entries a channel caused: a channel-less entry's body stays as it was.
        if !change.channel.is_empty() {
            if let Some(data) = data.as_object_mut() {
                data.insert("channel".into(), change.channel.clone().into());
            }
        }
        let event_type = if change.kind == "backorder_filled" {
            if let Some(data) = data.as_object_mut() {
                data.insert("order_id".into(), change.order_id.clone().into());
                data.insert("line_id".into(), change.line_id.clone().into());
                data.insert("filled".into(), change.backorder_filled.into());
                data.insert("backordered".into(), change.backordered.into());
                data.insert(
                    "backorder_expected_at_ms".into(),
                    change.backorder_expected_at_ms.into(),
                );
            }
            EventType::BackorderFilled
        } else {
            EventType::StockChanged
        };
        let channel = (!change.channel.is_empty()).then_some(change.channel);
        (
            event_type,
            About::new(change.sku, Some(change.location), channel),
            data,
        )
    } else if subject.starts_with("availability.") {
        let changed = ChannelAvailabilityChanged::decode(message.payload.clone())
            .map_err(|e| malformed("channel_availability", e))?;
        let data = json!({
            "channel": changed.channel,
            "sku": changed.sku,
            "available_to_sell": changed.available_to_sell,
            "version": changed.version,
            "previous": changed.previous,
            "cause_event_id": changed.cause_event_id,
            "rules_version": changed.rules_version,
            "changed_at_ms": changed.changed_at_ms,
        });
        (
            EventType::ChannelAvailability,
            About::new(changed.sku, None, Some(changed.channel)),
            data,
        )
    } else if subject.starts_with("orders.results.") {
        let result = OrderResult::decode(message.payload.clone())
            .map_err(|e| malformed("order_result", e))?;
        let (event_type, skus, locations, data) = order(result)?;
        let about = About {
            skus,
            locations,
            channels: Vec::new(),
        };
        (event_type, about, data)
    } else {
        // `stock.outcomes.>` shares STOCK_CHANGES but is not a notification.
        return Ok(None);
    };
    let body = json!({
        "event_id": event_id,
        "type": event_type.as_str(),
        // As producers publish it, partitioned deployment or not.
        "subject": subjects::unpartitioned(subject),
        "data": data,
    });
    Ok(Some(Notification {
        event_type,
        event_id,
        skus: about.skus,
        locations: about.locations,
        channels: about.channels,
        // Serialising a `Value` cannot fail.
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    }))
}

type Rendered = (EventType, Vec<String>, Vec<String>, Value);

/// What an event is about, for the subscriptions' filters.
struct About {
    skus: Vec<String>,
    locations: Vec<String>,
    channels: Vec<String>,
}

impl About {
    /// One SKU, at most one location and one channel (an empty location names none).
    fn new(sku: String, location: Option<String>, channel: Option<String>) -> Self {
        Self {
            skus: vec![sku],
            locations: location.into_iter().filter(|l| !l.is_empty()).collect(),
            channels: channel.into_iter().collect(),
        }
    }
}

fn order(result: OrderResult) -> Result<Rendered, HandleError> {
    let mut skus = Vec::new();
    let mut locations = Vec::new();
    let (event_type, details) = match result.result {
        Some(order_result::Result::Confirmed(confirmed)) => {
            let lines: Vec<Value> = confirmed
                .lines
                .iter()
                .map(|l| {
                    let mut line = json!({"line_id": l.line_id, "sku": l.sku, "location": l.location, "quantity": l.quantity});
                    // Only on a backordered line: every other line's body stays as it was.
                    if l.backordered > 0 {
                        if let Some(line) = line.as_object_mut() {
                            line.insert("backordered".into(), l.backordered.into());
                            line.insert(
                                "backorder_expected_at_ms".into(),
                                l.backorder_expected_at_ms.into(),
                            );
                        }
                    }
                    line
                })
                .collect();
            skus.extend(confirmed.lines.iter().map(|l| l.sku.clone()));
            locations.extend(confirmed.lines.iter().map(|l| l.location.clone()));
            (
                EventType::OrderConfirmed,
                json!({"lines": lines, "expires_at_ms": confirmed.expires_at_ms}),
            )
        }
        Some(order_result::Result::Rejected(rejected)) => {
            let lines: Vec<Value> = rejected
                .short_lines
                .iter()
                .map(|l| {
                    json!({"line_id": l.line_id, "sku": l.sku, "requested": l.requested, "available": l.available})
                })
                .collect();
            skus.extend(rejected.short_lines.iter().map(|l| l.sku.clone()));
            (EventType::OrderRejected, json!({"short_lines": lines}))
        }
        Some(order_result::Result::Released(released)) => (
            EventType::OrderReleased,
            json!({"reason": enum_name(released.reason().as_str_name(), "RELEASE_REASON_")}),
        ),
        None => {
            return Err(HandleError::malformed(
                "order_result",
                "missing_result",
                "order result has no decision",
            ))
        }
    };
    let mut data = json!({
        "order_id": result.order_id,
        "cause_event_id": result.cause_event_id,
        "decided_at_ms": result.decided_at_ms,
    });
    if let (Some(data), Value::Object(details)) = (data.as_object_mut(), details) {
        data.extend(details);
    }
    Ok((event_type, skus, locations, data))
}

/// `Nats-Msg-Id`, or the stream position when a publisher set none.
fn event_id(message: &jetstream::Message) -> String {
    let header = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .filter(|v| !v.is_empty());
    header.unwrap_or_else(|| match message.info() {
        Ok(info) => format!("{}:{}", info.stream, info.stream_sequence),
        Err(_) => format!("{}:unknown", message.subject),
    })
}

fn levels(levels: Option<&Levels>) -> Value {
    let levels = levels.cloned().unwrap_or_default();
    json!({
        "on_hand": levels.on_hand,
        "reserved": levels.reserved,
        "safety_stock": levels.safety_stock,
        "available": levels.available,
    })
}

/// `REASON_CYCLE_COUNT` -> `cycle_count`.
fn enum_name(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::from_name(t.as_str()), Some(t));
        }
        assert_eq!(EventType::from_name("sold"), None);
        assert_eq!(enum_name("REASON_CYCLE_COUNT", "REASON_"), "cycle_count");
    }
}
