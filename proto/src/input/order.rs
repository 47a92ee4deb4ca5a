//! Decoding and validating order commands.

use std::collections::HashSet;

use prost::Message as _;

use super::{Category, InputError};
use crate::{
    subjects,
    v1::{order_event::Command as Proto, EventMeta, OrderEvent},
    validate::{meta_fault, validate_channel_id, validate_location, validate_reason, validate_sku},
};

/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units in one line.
pub const MAX_LINE_QUANTITY: i64 = 1_000_000;
/// Longest checkout hold, seconds.
pub const MAX_HOLD_SECONDS: i64 = 86_400;
/// Longest order id, in bytes.
pub const MAX_ORDER_ID_BYTES: usize = 128;

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
    /// The sales channel a placement comes from (a channel id); '' for none, and for every other
    /// command (they act on the order as placed).
    pub channel: String,
}

/// Checks a placement's channel: '' (none) or a channel id (a subject token), field `channel`.
pub fn check_channel(channel: &str) -> Result<(), InputError> {
    if channel.is_empty() {
        return Ok(());
    }
    validate_channel_id("channel", channel)
        .map_err(|r| InputError::new("order_placed", "channel", Category::InvalidChannel, r))
}

/// A fault of line `index`: its field is `lines[<index>].<field>`.
fn line_fault(
    event_type: &'static str,
    index: usize,
    field: &str,
    category: Category,
    reason: String,
) -> InputError {
    InputError::new(
        event_type,
        format!("lines[{index}].{field}"),
        category,
        reason,
    )
}

/// Checks a placement's lines: ids unique and valid, SKUs valid, quantities in range. A fault
/// names the line by its position: `lines[1].quantity`.
pub fn check_lines(lines: &[Line]) -> Result<(), InputError> {
    let mut ids = HashSet::new();
    for (index, line) in lines.iter().enumerate() {
        let fault =
            |field, category, reason| line_fault("order_placed", index, field, category, reason);
        validate_location("line_id", &line.line_id)
            .map_err(|r| fault("line_id", Category::InvalidLines, r))?;
        if !ids.insert(&line.line_id) {
            return Err(fault(
                "line_id",
                Category::InvalidLines,
                format!("line_id {:?} appears twice", line.line_id),
            ));
        }
        validate_sku(&line.sku).map_err(|r| fault("sku", Category::InvalidSku, r))?;
        if !(1..=MAX_LINE_QUANTITY).contains(&line.quantity) {
            return Err(fault(
                "quantity",
                Category::InvalidQuantity,
                format!(
                    "quantity must be 1..={MAX_LINE_QUANTITY}, got {}",
                    line.quantity
                ),
            ));
        }
        if !line.location.is_empty() {
            validate_location("location", &line.location)
                .map_err(|r| fault("location", Category::InvalidLocation, r))?;
        }
    }
    Ok(())
}

/// Checks a fulfilment's (line_id, units) pairs.
pub fn check_fulfilled_lines(lines: &[(String, i64)]) -> Result<(), InputError> {
    for (index, (line_id, quantity)) in lines.iter().enumerate() {
        let fault =
            |field, category, reason| line_fault("order_fulfilled", index, field, category, reason);
        validate_location("line_id", line_id)
            .map_err(|r| fault("line_id", Category::InvalidLines, r))?;
        if !(1..=MAX_LINE_QUANTITY).contains(quantity) {
            return Err(fault(
                "quantity",
                Category::InvalidQuantity,
                format!("quantity must be 1..={MAX_LINE_QUANTITY}, got {quantity}"),
            ));
        }
    }
    Ok(())
}

/// Decodes and validates `payload` received on `subject`.
pub fn parse(subject: &str, payload: &[u8]) -> Result<OrderCommand, InputError> {
    let event = OrderEvent::decode(payload).map_err(|e| {
        InputError::new(
            "unknown",
            "body",
            Category::Decode,
            format!("not an OrderEvent: {e}"),
        )
    })?;
    let Some(proto) = event.command else {
        return Err(InputError::new(
            "unknown",
            "type",
            Category::UnknownType,
            "no command set (missing or unknown type)",
        ));
    };
    let mut channel = String::new();
    let command = match proto {
        Proto::Placed(p) => {
            channel = p.channel;
            Command::Placed {
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
            }
        }
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
    let bad = |field: &str, category: Category, reason: String| {
        InputError::new(kind, field, category, reason)
    };
    let meta = event.meta.unwrap_or_default();
    meta_fault(&meta).map_err(|(field, r)| bad(field, Category::InvalidMeta, r))?;
    validate_reason(&meta).map_err(|r| bad("reason", Category::UnknownEnum, r))?;
    let id = &event.order_id;
    if id.is_empty() || id.len() > MAX_ORDER_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "order_id",
            Category::InvalidOrderId,
            format!("order_id must be 1..={MAX_ORDER_ID_BYTES} bytes of printable ASCII"),
        ));
    }
    let expected = subjects::order_event(id);
    if subject != expected {
        return Err(bad(
            "subject",
            Category::SubjectMismatch,
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
                    "lines",
                    Category::InvalidLines,
                    format!("an order has 1..={MAX_LINES} lines, got {}", lines.len()),
                ));
            }
            if !(0..=MAX_HOLD_SECONDS).contains(hold_seconds) {
                return Err(bad(
                    "hold_seconds",
                    Category::InvalidHold,
                    format!("hold_seconds must be 0..={MAX_HOLD_SECONDS}"),
                ));
            }
            check_lines(lines)?;
            check_channel(&channel)?;
        }
        Command::Fulfilled { lines, .. } => check_fulfilled_lines(lines)?,
        Command::Committed | Command::Cancelled | Command::HoldExpired { .. } => {}
    }
    Ok(OrderCommand {
        meta,
        order_id: event.order_id,
        command,
        channel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{
        FulfilledLine, OrderCancelled, OrderFulfilled, OrderLine, OrderPlaced, Reason,
    };

    fn event(command: Proto) -> OrderEvent {
        OrderEvent {
            meta: Some(EventMeta {
                event_id: "c-1".into(),
                ..Default::default()
            }),
            order_id: "o-1".into(),
            command: Some(command),
        }
    }

    fn fault(event: &OrderEvent) -> (String, Category) {
        match parse(&subjects::order_event("o-1"), &event.encode_to_vec()) {
            Err(e) => (e.field, e.category),
            Ok(command) => panic!("refusal expected: {command:?}"),
        }
    }

    #[test]
    fn a_reason_the_contract_does_not_define_is_its_own_category() {
        let command = |reason: i32| {
            let mut e = event(Proto::Cancelled(OrderCancelled::default()));
            e.meta.as_mut().expect("meta").reason = reason;
            e
        };
        let subject = subjects::order_event("o-1");
        assert!(parse(&subject, &command(Reason::Released as i32).encode_to_vec()).is_ok());
        let error = parse(&subject, &command(99).encode_to_vec()).expect_err("unknown");
        assert_eq!(error.category, Category::UnknownEnum);
        assert_eq!(error.category.as_str(), "unknown_enum");
        assert!(error.reason.contains("reason 99"), "{error}");
    }

    #[test]
    fn every_fault_names_its_field_and_category() {
        let line = |line_id: &str, sku: &str, quantity| OrderLine {
            line_id: line_id.into(),
            sku: sku.into(),
            quantity,
            location: String::new(),
        };
        let placed = |lines: Vec<OrderLine>, hold_seconds| {
            event(Proto::Placed(OrderPlaced {
                lines,
                hold_seconds,
                ..Default::default()
            }))
        };
        let mut bad_id = event(Proto::Cancelled(OrderCancelled {}));
        bad_id.order_id = "o 1".into();
        let cases = [
            (placed(vec![], 0), "lines", Category::InvalidLines),
            (
                placed(vec![line("1", "A", 1)], -1),
                "hold_seconds",
                Category::InvalidHold,
            ),
            (
                placed(vec![line("1", "A", 1), line("1", "B", 1)], 0),
                "lines[1].line_id",
                Category::InvalidLines,
            ),
            (
                placed(vec![line("1", "A", 1), line("2", "B\u{7}", 1)], 0),
                "lines[1].sku",
                Category::InvalidSku,
            ),
            (
                placed(vec![line("1", "A", MAX_LINE_QUANTITY + 1)], 0),
                "lines[0].quantity",
                Category::InvalidQuantity,
            ),
            (
                event(Proto::Fulfilled(OrderFulfilled {
                    lines: vec![FulfilledLine {
                        line_id: "1".into(),
                        quantity: 0,
                    }],
                    last_shipment: false,
                })),
                "lines[0].quantity",
                Category::InvalidQuantity,
            ),
            (bad_id, "order_id", Category::InvalidOrderId),
        ];
        for (event, field, category) in cases {
            assert_eq!(fault(&event), (field.to_owned(), category), "{field}");
        }
        let from = |channel: &str| {
            event(Proto::Placed(OrderPlaced {
                lines: vec![line("1", "A", 1)],
                channel: channel.into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            fault(&from("web shop")),
            ("channel".to_owned(), Category::InvalidChannel)
        );
        let placed = parse(
            &subjects::order_event("o-1"),
            &from("web-shop").encode_to_vec(),
        )
        .expect("a channel id");
        assert_eq!(placed.channel, "web-shop");
        let elsewhere = parse(
            "orders.events.o-2",
            &event(Proto::Cancelled(OrderCancelled {})).encode_to_vec(),
        )
        .expect_err("wrong subject");
        assert_eq!(elsewhere.category, Category::SubjectMismatch);
    }
}
