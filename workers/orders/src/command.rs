//! Decoding and validating order commands.

use std::collections::HashSet;

use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{order_event::Command as Proto, EventMeta, OrderEvent},
};
use stockflow_shared::consume::HandleError;
use stockflow_shared::validate::{validate_location, validate_meta, validate_reason, validate_sku};

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units in one line.
pub const MAX_LINE_QUANTITY: i64 = 1_000_000;
/// Longest checkout hold, seconds.
pub const MAX_HOLD_SECONDS: i64 = 86_400;

/// One order line, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Unique within the order.
    pub line_id: String,
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Requested location, '' to choose.
    pub location: String,
}

/// What a command asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Reserve every line or none.
    Placed {
        /// The lines.
        lines: Vec<Line>,
        /// Checkout hold, seconds (0: none).
        hold_seconds: i64,
    },
    /// Payment done.
    Committed,
    /// Release everything.
    Cancelled,
    /// Ship units of some lines.
    Fulfilled {
        /// (line_id, units).
        lines: Vec<(String, i64)>,
        /// Release the rest afterwards.
        last_shipment: bool,
    },
    /// The hold is due (published by the worker itself).
    HoldExpired {
        /// Due time, ms since the Unix epoch.
        due_at_ms: i64,
    },
}

impl Command {
    /// Metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "order_placed",
            Self::Committed => "order_committed",
            Self::Cancelled => "order_cancelled",
            Self::Fulfilled { .. } => "order_fulfilled",
            Self::HoldExpired { .. } => "hold_expired",
        }
    }
}

/// A decoded, valid order command.
#[derive(Debug, Clone)]
pub struct OrderCommand {
    /// Envelope.
    pub meta: EventMeta,
    /// The order.
    pub order_id: String,
    /// The command.
    pub command: Command,
}

/// Encodes lines for the order record (fields `\x1f`, lines `\x1e`; ids hold no control chars).
pub fn encode_lines(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| {
            format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                l.line_id, l.sku, l.quantity, l.location
            )
        })
        .collect::<Vec<_>>()
        .join("\u{1e}")
}

/// What identifies a placement: two placements of one order with the same fingerprint are the
/// same order; a different one is a conflict.
pub fn placement_fingerprint(lines: &[Line], hold_seconds: i64) -> String {
    format!("{hold_seconds}\u{1d}{}", encode_lines(lines))
}

/// Decodes what [`encode_lines`] made.
pub fn decode_lines(text: &str) -> Vec<Line> {
    text.split('\u{1e}')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\u{1f}').collect();
            Some(Line {
                line_id: (*f.first()?).to_owned(),
                sku: (*f.get(1)?).to_owned(),
                quantity: f.get(2)?.parse().ok()?,
                location: (*f.get(3)?).to_owned(),
            })
        })
        .collect()
}

/// What is wrong with one line of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The line's position in the command.
    pub index: usize,
    /// The line's field at fault: `line_id`, `sku`, `quantity`, `location`.
    pub field: &'static str,
    /// Dead-letter category.
    pub category: &'static str,
    /// Why, naming the field.
    pub reason: String,
}

/// Checks a placement's lines: ids unique and valid, SKUs valid, quantities in range.
pub fn check_lines(lines: &[Line]) -> Result<(), LineError> {
    let mut ids = HashSet::new();
    for (index, line) in lines.iter().enumerate() {
        let error = |field, category, reason| LineError {
            index,
            field,
            category,
            reason,
        };
        validate_location("line_id", &line.line_id)
            .map_err(|r| error("line_id", "invalid_lines", r))?;
        if !ids.insert(&line.line_id) {
            return Err(error(
                "line_id",
                "invalid_lines",
                format!("line_id {:?} appears twice", line.line_id),
            ));
        }
        validate_sku(&line.sku).map_err(|r| error("sku", "invalid_sku", r))?;
        if !(1..=MAX_LINE_QUANTITY).contains(&line.quantity) {
            return Err(error(
                "quantity",
                "invalid_quantity",
                format!(
                    "quantity must be 1..={MAX_LINE_QUANTITY}, got {}",
                    line.quantity
                ),
            ));
        }
        if !line.location.is_empty() {
            validate_location("location", &line.location)
                .map_err(|r| error("location", "invalid_location", r))?;
        }
    }
    Ok(())
}

/// Checks a fulfilment's (line_id, units) pairs.
pub fn check_fulfilled_lines(lines: &[(String, i64)]) -> Result<(), LineError> {
    for (index, (line_id, quantity)) in lines.iter().enumerate() {
        validate_location("line_id", line_id).map_err(|reason| LineError {
            index,
            field: "line_id",
            category: "invalid_lines",
            reason,
        })?;
        if !(1..=MAX_LINE_QUANTITY).contains(quantity) {
            return Err(LineError {
                index,
                field: "quantity",
                category: "invalid_quantity",
                reason: format!("quantity must be 1..={MAX_LINE_QUANTITY}, got {quantity}"),
            });
        }
    }
    Ok(())
}

/// Decodes and validates `payload` received on `subject`.
pub fn parse(subject: &str, payload: &[u8]) -> Result<OrderCommand, HandleError> {
    let event = OrderEvent::decode(payload).map_err(|e| {
        HandleError::malformed("unknown", "decode", format!("not an OrderEvent: {e}"))
    })?;
    let Some(proto) = event.command else {
        return Err(HandleError::malformed(
            "unknown",
            "unknown_type",
            "no command set (missing or unknown type)",
        ));
    };
    let command = match proto {
        Proto::Placed(p) => Command::Placed {
            lines: p
                .lines
                .into_iter()
                .map(|l| Line {
                    line_id: l.line_id,
                    sku: l.sku,
                    quantity: l.quantity,
                    location: l.location,
                })
                .collect(),
            hold_seconds: p.hold_seconds,
        },
        Proto::Committed(_) => Command::Committed,
        Proto::Cancelled(_) => Command::Cancelled,
        Proto::Fulfilled(f) => Command::Fulfilled {
            lines: f
                .lines
                .into_iter()
                .map(|l| (l.line_id, l.quantity))
                .collect(),
            last_shipment: f.last_shipment,
        },
        Proto::HoldExpired(h) => Command::HoldExpired {
            due_at_ms: h.due_at_ms,
        },
    };
    let kind = command.name();
    let bad =
        |category: &'static str, reason: String| HandleError::malformed(kind, category, reason);
    let meta = event.meta.unwrap_or_default();
    validate_meta(&meta).map_err(|r| bad("invalid_meta", r))?;
    validate_reason(&meta).map_err(|r| bad("unknown_enum", r))?;
    let id = &event.order_id;
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "invalid_order_id",
            "order_id must be 1..=128 bytes of printable ASCII".into(),
        ));
    }
    let expected = subjects::order_event(id);
    if subject != expected {
        return Err(bad(
            "subject_mismatch",
            format!("published on {subject} but its order belongs on {expected}"),
        ));
    }
    match &command {
        Command::Placed {
            lines,
            hold_seconds,
        } => {
            if lines.is_empty() || lines.len() > MAX_LINES {
                return Err(bad(
                    "invalid_lines",
                    format!("an order has 1..={MAX_LINES} lines, got {}", lines.len()),
                ));
            }
            if !(0..=MAX_HOLD_SECONDS).contains(hold_seconds) {
                return Err(bad(
                    "invalid_hold",
                    format!("hold_seconds must be 0..={MAX_HOLD_SECONDS}"),
                ));
            }
            check_lines(lines).map_err(|e| bad(e.category, e.reason))?;
        }
        Command::Fulfilled { lines, .. } => {
            check_fulfilled_lines(lines).map_err(|e| bad(e.category, e.reason))?;
        }
        Command::Committed | Command::Cancelled | Command::HoldExpired { .. } => {}
    }
    Ok(OrderCommand {
        meta,
        order_id: event.order_id,
        command,
    })
}

#[cfg(test)]
mod tests {
    use stockflow_proto::v1::{OrderCancelled, Reason};

    use super::*;

    #[test]
    fn a_reason_the_contract_does_not_define_is_its_own_category() {
        let command = |reason: i32| OrderEvent {
            meta: Some(EventMeta {
                event_id: "c-1".into(),
                reason,
                ..Default::default()
            }),
            order_id: "o-1".into(),
            command: Some(Proto::Cancelled(OrderCancelled::default())),
        };
        let subject = subjects::order_event("o-1");
        assert!(parse(&subject, &command(Reason::Released as i32).encode_to_vec()).is_ok());
        match parse(&subject, &command(99).encode_to_vec()) {
            Err(HandleError::Malformed {
                category, reason, ..
            }) => {
                assert_eq!(category, "unknown_enum");
                assert!(reason.contains("reason 99"), "{reason}");
            }
            other => panic!("malformed expected: {other:?}"),
        }
    }
}
