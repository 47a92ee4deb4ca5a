//! A stock fact as the worker applies it: decoded and validated by the contract
//! (`stockflow_proto::input::fact`), so every entry point judges a fact the same way; what
//! the contract refuses is dead-lettered.

pub use stockflow_proto::input::fact::{Fact, Op};
use stockflow_shared::consume::HandleError;

/// Decodes and validates `payload` received on `subject` from the unpartitioned `STOCK_EVENTS`:
/// the subject must be `stock.events.<sku-token>` of the event's own SKU.
pub fn parse(subject: &str, payload: &[u8]) -> Result<Fact, HandleError> {
    Ok(stockflow_proto::input::fact::parse(subject, payload)?)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use stockflow_proto::v1::{stock_event::Change, EventMeta, Received, StockEvent};

    use super::*;

    #[test]
    fn a_refusal_is_dead_lettered_under_its_category() {
        let fact = |quantity| {
            StockEvent {
                meta: Some(EventMeta {
                    event_id: "e1".into(),
                    ..Default::default()
                }),
                sku: "A".into(),
                location: "wh".into(),
                change: Some(Change::Received(Received { quantity })),
                ..Default::default()
            }
            .encode_to_vec()
        };
        assert!(parse("stock.events.A", &fact(1)).is_ok());
        match parse("stock.events.A", &fact(0)) {
            Err(HandleError::Malformed {
                event_type,
                category,
                reason,
            }) => {
                assert_eq!((event_type, category), ("received", "invalid_quantity"));
                assert!(reason.starts_with("quantity must be"), "{reason}");
            }
            other => panic!("malformed expected: {other:?}"),
        }
        assert!(matches!(
            parse("stock.events.B", &fact(1)),
            Err(HandleError::Malformed {
                category: "subject_mismatch",
                ..
            })
        ));
    }
}
