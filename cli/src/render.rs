//! Messages of stockflow's subjects decoded for people (one line) and for programs (JSON).
//!
//! The JSON of an input event (`StockEvent`, `OrderEvent`) has the shape `stockctl publish
//! --json` accepts, so what `stockctl dlq show` prints can be edited and published again.

use serde_json::{json, Map, Value};
use stockflow_proto::v1::{
    order_event::Command, order_result::Result as Decision, stock_event::Change, AlertKind,
    EventMeta, Levels, OrderEvent, OrderResult, Reason, RejectionReason, ReleaseReason, StockAlert,
    StockChanged, StockEvent, StockEventRejected,
};

/// A message decoded both ways.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The message type, e.g. `stock_changed`, `alert`, `received`.
    pub kind: String,
    /// One line for a person.
    pub text: String,
    /// Every field, for programs.
    pub json: Value,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Nothing stockflow publishes lives on this subject.
    #[error("no stockflow message is published on {0}")]
    UnknownSubject(String),
    /// A webhook delivery whose body is not JSON.
    #[error("not a JSON webhook body: {0}")]
    Json(serde_json::Error),
    /// The bytes are not the protobuf message the subject carries.
    #[error("not a {expected}: {source}")]
    Protobuf {
        /// The message the subject carries.
        expected: &'static str,
        /// What prost reported.
        source: prost::DecodeError,
    },
}

fn decode_as<M: prost::Message + Default>(
    payload: &[u8],
    expected: &'static str,
) -> Result<M, DecodeError> {
    M::decode(payload).map_err(|source| DecodeError::Protobuf { expected, source })
}

/// Decodes `payload` by the subject it was published on.
pub fn decode(subject: &str, payload: &[u8]) -> Result<Decoded, DecodeError> {
    if subject.starts_with("stock.events.") {
        Ok(stock_event(&decode_as(payload, "StockEvent")?))
    } else if subject.starts_with("orders.events.") {
        Ok(order_event(&decode_as(payload, "OrderEvent")?))
    } else if subject.starts_with("stock.changes.") {
        Ok(stock_changed(&decode_as(payload, "StockChanged")?))
    } else if subject.starts_with("stock.outcomes.") {
        Ok(rejected(&decode_as(payload, "StockEventRejected")?))
    } else if subject.starts_with("alerts.") {
        Ok(alert(&decode_as(payload, "StockAlert")?))
    } else if subject.starts_with("orders.results.") {
        Ok(order_result(&decode_as(payload, "OrderResult")?))
    } else if subject.starts_with("webhooks.") {
        // notify-worker's outbox holds the JSON body it POSTs.
        let json: Value = serde_json::from_slice(payload).map_err(DecodeError::Json)?;
        Ok(Decoded {
            kind: "webhook_delivery".into(),
            text: json.to_string(),
            json,
        })
    } else {
        Err(DecodeError::UnknownSubject(subject.to_owned()))
    }
}

/// `REASON_CYCLE_COUNT` with prefix `REASON_` → `cycle_count`.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// The lower-case name of a [`Reason`] (`damaged`, `cycle_count`, ...).
pub fn reason_name(value: i32) -> String {
    Reason::try_from(value)
        .map(|r| short_name(r.as_str_name(), "REASON_"))
        .unwrap_or_else(|_| format!("unknown_{value}"))
}

/// The [`Reason`] called `name` (as [`reason_name`] prints it).
pub fn reason_from_name(name: &str) -> Option<Reason> {
    Reason::from_str_name(&format!("REASON_{}", name.to_ascii_uppercase()))
}

fn alert_name(value: i32) -> String {
    AlertKind::try_from(value)
        .map(|k| short_name(k.as_str_name(), "ALERT_KIND_"))
        .unwrap_or_else(|_| format!("unknown_{value}"))
}

fn levels_json(levels: Option<&Levels>) -> Value {
    let l = levels.copied().unwrap_or_default();
    let mut json = json!({
        "on_hand": l.on_hand,
        "reserved": l.reserved,
        "safety_stock": l.safety_stock,
        "available": l.available,
    });
    // Incoming and unsellable units only where there are some.
    for (name, value) in [
        ("incoming", l.incoming),
        ("incoming_expected_at_ms", l.incoming_expected_at_ms),
        ("damaged", l.damaged),
        ("quality_control", l.quality_control),
        ("held", l.held),
    ] {
        if value != 0 {
            json[name] = value.into();
        }
    }
    json
}

/// The envelope fields, as `publish --json` reads them (empty ones left out).
fn meta_json(meta: Option<&EventMeta>, out: &mut Map<String, Value>) {
    let meta = meta.cloned().unwrap_or_default();
    out.insert("event_id".into(), meta.event_id.into());
    if !meta.source.is_empty() {
        out.insert("source".into(), meta.source.into());
    }
    if meta.reason != 0 {
        out.insert("reason".into(), reason_name(meta.reason).into());
    }
    if !meta.reference.is_empty() {
        out.insert("reference".into(), meta.reference.into());
    }
    if meta.occurred_at_ms != 0 {
        out.insert("occurred_at_ms".into(), meta.occurred_at_ms.into());
    }
}

fn envelope_text(meta: Option<&EventMeta>) -> String {
    let meta = meta.cloned().unwrap_or_default();
    let mut text = format!("[event_id {}", meta.event_id);
    if !meta.source.is_empty() {
        text.push_str(&format!(", source {}", meta.source));
    }
    if meta.reason != 0 {
        text.push_str(&format!(", {}", reason_name(meta.reason)));
    }
    text.push(']');
    text
}

/// A stock fact, in the shape `publish --json` accepts.
pub fn stock_event(event: &StockEvent) -> Decoded {
    let mut out = Map::new();
    let (kind, what) = match &event.change {
        Some(Change::Received(c)) if !event.purchase_order.is_empty() => {
            out.insert("quantity".into(), c.quantity.into());
            out.insert("purchase_order".into(), event.purchase_order.clone().into());
            (
                "received",
                format!("received {} on {}", c.quantity, event.purchase_order),
            )
        }
        Some(Change::Received(c)) => {
            out.insert("quantity".into(), c.quantity.into());
            ("received", format!("received {}", c.quantity))
        }
        Some(Change::Expected(c)) => {
            out.insert("purchase_order".into(), c.purchase_order.clone().into());
            out.insert("quantity".into(), c.quantity.into());
            out.insert("expected_at_ms".into(), c.expected_at_ms.into());
            (
                "expected",
                format!(
                    "expected {} on {} at {} ms",
                    c.quantity, c.purchase_order, c.expected_at_ms
                ),
            )
        }
        Some(Change::ExpectedCancelled(c)) => {
            out.insert("purchase_order".into(), c.purchase_order.clone().into());
            let what = match c.quantity {
                Some(q) => {
                    out.insert("quantity".into(), q.into());
                    format!("cancelled {q} expected on {}", c.purchase_order)
                }
                None => format!("cancelled what is expected on {}", c.purchase_order),
            };
            ("expected_cancelled", what)
        }
        Some(Change::UnsellableMoved(c)) => {
            let state = stockflow_proto::v1::UnsellableState::try_from(c.state)
                .map(stockflow_proto::input::fact::state_name)
                .unwrap_or("unknown");
            out.insert("state".into(), state.into());
            out.insert("quantity".into(), c.quantity.into());
            out.insert("to_unsellable".into(), c.to_unsellable.into());
            let what = if c.to_unsellable {
                format!("{} units became {state}", c.quantity)
            } else {
                format!("{} {state} units became sellable", c.quantity)
            };
            ("unsellable_moved", what)
        }
        Some(Change::KitDefined(c)) => {
            let components: Vec<Value> = c
                .components
                .iter()
                .map(|c| json!({"sku": c.sku, "quantity": c.quantity}))
                .collect();
            out.insert("components".into(), components.into());
            let what = if c.components.is_empty() {
                "no longer a kit".to_owned()
            } else {
                let parts: Vec<String> = c
                    .components
                    .iter()
                    .map(|c| format!("{} × {}", c.quantity, c.sku))
                    .collect();
                format!("kit of {}", parts.join(" + "))
            };
            ("kit_defined", what)
        }
        Some(Change::KitBuildable(c)) => {
            out.insert("buildable".into(), c.buildable.into());
            out.insert("stamp".into(), c.stamp.into());
            (
                "kit_buildable",
                format!("{} kits buildable (computation {})", c.buildable, c.stamp),
            )
        }
        Some(Change::Sold(c)) => {
            out.insert("quantity".into(), c.quantity.into());
            ("sold", format!("sold {}", c.quantity))
        }
        Some(Change::Returned(c)) => {
            out.insert("quantity".into(), c.quantity.into());
            ("returned", format!("returned {}", c.quantity))
        }
        Some(Change::Adjusted(c)) => {
            out.insert("delta".into(), c.delta.into());
            ("adjusted", format!("adjusted {:+}", c.delta))
        }
        Some(Change::Counted(c)) => {
            out.insert("on_hand".into(), c.on_hand.into());
            let mut what = format!("counted on_hand {}", c.on_hand);
            if let Some(expected) = c.expected_on_hand {
                out.insert("expected_on_hand".into(), expected.into());
                what.push_str(&format!(" (expected {expected})"));
            }
            ("counted", what)
        }
        Some(Change::Transferred(c)) => {
            out.insert("to_location".into(), c.to_location.clone().into());
            out.insert("quantity".into(), c.quantity.into());
            (
                "transferred",
                format!("transferred {} to {}", c.quantity, c.to_location),
            )
        }
        Some(Change::PolicySet(c)) => {
            let mut parts = Vec::new();
            if let Some(t) = c.low_stock_threshold {
                out.insert("low_stock_threshold".into(), t.into());
                parts.push(format!("low_stock_threshold {t}"));
            }
            if let Some(s) = c.safety_stock {
                out.insert("safety_stock".into(), s.into());
                parts.push(format!("safety_stock {s}"));
            }
            if !c.location_priority.is_empty() {
                out.insert(
                    "location_priority".into(),
                    c.location_priority.clone().into(),
                );
                parts.push(format!(
                    "location_priority {}",
                    c.location_priority.join(",")
                ));
            }
            ("policy_set", format!("policy {}", parts.join(", ")))
        }
        Some(Change::ChannelRules(c)) => {
            let rules = stockflow_proto::input::json::AvailabilityRulesJson::from(
                c.rules.unwrap_or_default(),
            );
            let value = serde_json::to_value(rules).unwrap_or_default();
            out.insert("channel".into(), c.channel.clone().into());
            out.insert("rules".into(), value.clone());
            (
                "channel_rules",
                format!("channel {} rules {value}", c.channel),
            )
        }
        Some(Change::ChannelRecompute(c)) => {
            out.insert("channel".into(), c.channel.clone().into());
            (
                "channel_recompute",
                format!(
                    "recompute channel {} (rules version {})",
                    c.channel, c.rules_version
                ),
            )
        }
        None => ("unknown", "no change set".to_owned()),
    };
    let mut json = Map::new();
    json.insert("type".into(), kind.into());
    meta_json(event.meta.as_ref(), &mut json);
    json.insert("sku".into(), event.sku.clone().into());
    json.insert("location".into(), event.location.clone().into());
    if !event.channel.is_empty() {
        json.insert("channel".into(), event.channel.clone().into());
    }
    json.extend(out);
    let by_channel = format!("channel {}", event.channel);
    let location = if !event.channel.is_empty() {
        &by_channel
    } else if event.location.is_empty() {
        "(all locations)"
    } else {
        &event.location
    };
    Decoded {
        kind: kind.to_owned(),
        text: format!(
            "{} @ {location}: {what} {}",
            event.sku,
            envelope_text(event.meta.as_ref())
        ),
        json: Value::Object(json),
    }
}

/// An order command, in the shape `publish --json` accepts.
pub fn order_event(event: &OrderEvent) -> Decoded {
    let mut out = Map::new();
    let (kind, what) = match &event.command {
        Some(Command::Placed(p)) => {
            let lines: Vec<Value> = p
                .lines
                .iter()
                .map(|l| {
                    json!({"line_id": l.line_id, "sku": l.sku, "quantity": l.quantity, "location": l.location})
                })
                .collect();
            out.insert("lines".into(), lines.into());
            out.insert("hold_seconds".into(), p.hold_seconds.into());
            let shown: Vec<String> = p
                .lines
                .iter()
                .map(|l| {
                    let at = if l.location.is_empty() {
                        String::new()
                    } else {
                        format!("@{}", l.location)
                    };
                    format!("{}: {} x{}{at}", l.line_id, l.sku, l.quantity)
                })
                .collect();
            let hold = if p.hold_seconds > 0 {
                format!(", hold {} s", p.hold_seconds)
            } else {
                String::new()
            };
            ("order_placed", format!("placed {}{hold}", shown.join("; ")))
        }
        Some(Command::Committed(_)) => ("order_committed", "committed".to_owned()),
        Some(Command::Cancelled(_)) => ("order_cancelled", "cancelled".to_owned()),
        Some(Command::Fulfilled(f)) => {
            let lines: Vec<Value> = f
                .lines
                .iter()
                .map(|l| json!({"line_id": l.line_id, "quantity": l.quantity}))
                .collect();
            out.insert("lines".into(), lines.into());
            out.insert("last_shipment".into(), f.last_shipment.into());
            let shown: Vec<String> = f
                .lines
                .iter()
                .map(|l| format!("{} x{}", l.line_id, l.quantity))
                .collect();
            let last = if f.last_shipment {
                " (last shipment)"
            } else {
                ""
            };
            (
                "order_fulfilled",
                format!("fulfilled {}{last}", shown.join("; ")),
            )
        }
        Some(Command::HoldExpired(h)) => {
            out.insert("due_at_ms".into(), h.due_at_ms.into());
            ("order_hold_expired", "hold expired".to_owned())
        }
        None => ("unknown", "no command set".to_owned()),
    };
    let mut json = Map::new();
    json.insert("type".into(), kind.into());
    meta_json(event.meta.as_ref(), &mut json);
    json.insert("order_id".into(), event.order_id.clone().into());
    json.extend(out);
    Decoded {
        kind: kind.to_owned(),
        text: format!(
            "order {}: {what} {}",
            event.order_id,
            envelope_text(event.meta.as_ref())
        ),
        json: Value::Object(json),
    }
}

/// A ledger entry.
pub fn stock_changed(entry: &StockChanged) -> Decoded {
    let before = entry.before.unwrap_or_default();
    let after = entry.after.unwrap_or_default();
    let mut changes = vec![format!("on_hand {}→{}", before.on_hand, after.on_hand)];
    if before.reserved != after.reserved {
        changes.push(format!("reserved {}→{}", before.reserved, after.reserved));
    }
    if before.safety_stock != after.safety_stock {
        changes.push(format!(
            "safety_stock {}→{}",
            before.safety_stock, after.safety_stock
        ));
    }
    changes.push(format!(
        "available {}→{}",
        before.available, after.available
    ));
    Decoded {
        kind: "stock_changed".into(),
        text: format!(
            "{} @ {}: {} {} [cause {}, {}, source {}]",
            entry.sku,
            entry.location,
            entry.kind,
            changes.join(", "),
            entry.cause_event_id,
            reason_name(entry.reason),
            entry.source
        ),
        json: json!({
            "type": "stock_changed",
            "sku": entry.sku,
            "location": entry.location,
            "kind": entry.kind,
            "cause_event_id": entry.cause_event_id,
            "reason": reason_name(entry.reason),
            "source": entry.source,
            "reference": entry.reference,
            "before": levels_json(entry.before.as_ref()),
            "after": levels_json(entry.after.as_ref()),
            "occurred_at_ms": entry.occurred_at_ms,
            "applied_at_ms": entry.applied_at_ms,
        }),
    }
}

/// A valid event that changed nothing.
pub fn rejected(rejection: &StockEventRejected) -> Decoded {
    let reason = RejectionReason::try_from(rejection.reason)
        .map(|r| short_name(r.as_str_name(), "REJECTION_REASON_"))
        .unwrap_or_else(|_| format!("unknown_{}", rejection.reason));
    Decoded {
        kind: "stock_event_rejected".into(),
        text: format!(
            "{} @ {}: rejected ({reason}): expected on_hand {}, was {} [event_id {}]",
            rejection.sku,
            rejection.location,
            rejection.expected_on_hand,
            rejection.actual_on_hand,
            rejection.event_id
        ),
        json: json!({
            "type": "stock_event_rejected",
            "sku": rejection.sku,
            "location": rejection.location,
            "event_id": rejection.event_id,
            "reason": reason,
            "expected_on_hand": rejection.expected_on_hand,
            "actual_on_hand": rejection.actual_on_hand,
            "source": rejection.source,
            "reference": rejection.reference,
        }),
    }
}

/// A stock alert.
pub fn alert(alert: &StockAlert) -> Decoded {
    let kind = alert_name(alert.kind);
    let levels = alert.levels.unwrap_or_default();
    let threshold = if alert.kind == AlertKind::LowStock as i32 {
        format!(", threshold {}", alert.threshold)
    } else {
        String::new()
    };
    Decoded {
        kind: "alert".into(),
        text: format!(
            "{} @ {}: ALERT {kind}: available {}, on_hand {}{threshold} [cause {}]",
            alert.sku, alert.location, levels.available, levels.on_hand, alert.cause_event_id
        ),
        json: json!({
            "type": "alert",
            "kind": kind,
            "sku": alert.sku,
            "location": alert.location,
            "cause_event_id": alert.cause_event_id,
            "levels": levels_json(alert.levels.as_ref()),
            "threshold": alert.threshold,
            "raised_at_ms": alert.raised_at_ms,
        }),
    }
}

/// An order decision.
pub fn order_result(result: &OrderResult) -> Decoded {
    let (what, detail) = match &result.result {
        Some(Decision::Confirmed(c)) => {
            let lines: Vec<String> = c
                .lines
                .iter()
                .map(|a| format!("{}: {} x{}@{}", a.line_id, a.sku, a.quantity, a.location))
                .collect();
            let detail = json!({
                "lines": c.lines.iter().map(|a| {
                    let mut line = json!({"line_id": a.line_id, "sku": a.sku, "location": a.location, "quantity": a.quantity});
                    if !a.kit_sku.is_empty() {
                        line["kit_sku"] = a.kit_sku.clone().into();
                        line["kit_line_id"] = a.kit_line_id.clone().into();
                    }
                    line
                }).collect::<Vec<_>>(),
                "expires_at_ms": c.expires_at_ms,
            });
            (
                "confirmed",
                (format!("confirmed {}", lines.join("; ")), detail),
            )
        }
        Some(Decision::Rejected(r)) => {
            let lines: Vec<String> = r
                .short_lines
                .iter()
                .map(|s| {
                    format!(
                        "{}: {} requested {}, available {}",
                        s.line_id, s.sku, s.requested, s.available
                    )
                })
                .collect();
            let detail = json!({
                "short_lines": r.short_lines.iter().map(|s| json!({"line_id": s.line_id, "sku": s.sku, "requested": s.requested, "available": s.available})).collect::<Vec<_>>(),
            });
            (
                "rejected",
                (format!("rejected, short {}", lines.join("; ")), detail),
            )
        }
        Some(Decision::Released(r)) => {
            let reason = ReleaseReason::try_from(r.reason)
                .map(|r| short_name(r.as_str_name(), "RELEASE_REASON_"))
                .unwrap_or_else(|_| format!("unknown_{}", r.reason));
            (
                "released",
                (format!("released ({reason})"), json!({ "reason": reason })),
            )
        }
        None => ("unknown", ("no result set".to_owned(), json!({}))),
    };
    let (text, detail) = detail;
    let mut json = Map::new();
    json.insert("type".into(), "order_result".into());
    json.insert("result".into(), what.into());
    json.insert("order_id".into(), result.order_id.clone().into());
    json.insert(
        "cause_event_id".into(),
        result.cause_event_id.clone().into(),
    );
    json.insert("decided_at_ms".into(), result.decided_at_ms.into());
    if let Value::Object(detail) = detail {
        json.extend(detail);
    }
    Decoded {
        kind: "order_result".into(),
        text: format!(
            "order {}: {text} [cause {}]",
            result.order_id, result.cause_event_id
        ),
        json: Value::Object(json),
    }
}

/// Bytes for a person: printable ASCII as is, everything else escaped.
pub fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Bytes as hex, 32 per line.
pub fn hex_lines(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(32)
        .map(|chunk| chunk.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use stockflow_proto::v1::Received;

    #[test]
    fn reasons_have_short_names_both_ways() {
        assert_eq!(reason_name(Reason::CycleCount as i32), "cycle_count");
        assert_eq!(reason_from_name("damaged"), Some(Reason::Damaged));
        assert_eq!(reason_from_name("nonsense"), None);
    }

    #[test]
    fn a_fact_reads_as_one_line_and_as_json() {
        let event = StockEvent {
            meta: Some(EventMeta {
                event_id: "e1".into(),
                source: "pos".into(),
                ..Default::default()
            }),
            sku: "A1".into(),
            location: "store-1".into(),
            change: Some(Change::Received(Received { quantity: 5 })),
            ..Default::default()
        };
        let decoded = decode("stock.events.A1", &event.encode_to_vec()).expect("decodes");
        assert_eq!(
            decoded.text,
            "A1 @ store-1: received 5 [event_id e1, source pos]"
        );
        assert_eq!(decoded.json["type"], "received");
        assert_eq!(decoded.json["quantity"], 5);
    }

    #[test]
    fn unknown_subjects_and_garbage_are_errors() {
        assert!(matches!(
            decode("elsewhere.x", b""),
            Err(DecodeError::UnknownSubject(_))
        ));
        assert!(matches!(
            decode("stock.changes.A", &[0xff, 0xff, 0xff]),
            Err(DecodeError::Protobuf { .. })
        ));
        assert_eq!(escaped(b"a\x00b"), "a\\x00b");
        assert_eq!(hex_lines(&[1, 171]), vec!["01ab".to_owned()]);
    }
}
