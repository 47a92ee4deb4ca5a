//! Order commands as the worker applies them: decoded and validated by the contract
//! (`stockflow_proto::input::order`), so every entry point judges a command the same way; what
//! the contract refuses is dead-lettered. The encoding of lines in the order record is the
//! worker's own.

use stockflow_shared::consume::HandleError;

pub use stockflow_proto::input::order::{
    Command, Line, OrderCommand, MAX_HOLD_SECONDS, MAX_LINES, MAX_LINE_QUANTITY,
};

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
/// same order; a different one is a conflict. An order without a channel keeps the fingerprint
/// it had before orders could name one.
pub fn placement_fingerprint(lines: &[Line], hold_seconds: i64, channel: &str) -> String {
    let lines = encode_lines(lines);
    if channel.is_empty() {
        format!("{hold_seconds}\u{1d}{lines}")
    } else {
        format!("{hold_seconds}\u{1d}{lines}\u{1d}{channel}")
    }
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

/// Decodes and validates `payload` received on `subject`.
pub fn parse(subject: &str, payload: &[u8]) -> Result<OrderCommand, HandleError> {
    Ok(stockflow_proto::input::order::parse(subject, payload)?)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use stockflow_proto::{
        subjects,
        v1::{order_event::Command as Proto, EventMeta, OrderCancelled, OrderEvent, Reason},
    };

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
                event_type,
                category,
                reason,
            }) => {
                assert_eq!((event_type, category), ("order_cancelled", "unknown_enum"));
                assert!(reason.contains("reason 99"), "{reason}");
            }
            other => panic!("malformed expected: {other:?}"),
        }
    }

    #[test]
    fn lines_survive_the_record_encoding() {
        let lines = vec![
            Line {
                line_id: "1".into(),
                sku: "Caf\u{e9} cr\u{e8}me".into(),
                quantity: 3,
                location: String::new(),
            },
            Line {
                line_id: "2".into(),
                sku: "A:B".into(),
                quantity: 1,
                location: "wh".into(),
            },
        ];
        assert_eq!(decode_lines(&encode_lines(&lines)), lines);
        assert_ne!(
            placement_fingerprint(&lines, 0, ""),
            placement_fingerprint(&lines, 60, "")
        );
        assert_ne!(
            placement_fingerprint(&lines, 0, ""),
            placement_fingerprint(&lines, 0, "web")
        );
    }
}
