//! Decoding and validating a stock fact: everything wrong with an input is found here, before
//! Redis is touched, and reported as a reason a person can act on.

use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, EventMeta, PolicySet, StockEvent},
};
use stockflow_shared::{
    consume::HandleError,
    validate::{
        positive, validate_location, validate_meta, validate_reason, validate_sku, MAX_LEVEL,
        MAX_QUANTITY,
    },
};

/// What a valid fact does, in the terms of the `apply_stock` script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// on_hand += quantity.
    Received(i64),
    /// on_hand -= quantity.
    Sold(i64),
    /// on_hand += quantity.
    Returned(i64),
    /// on_hand += delta.
    Adjusted(i64),
    /// on_hand := on_hand, if it equals `expected` (when given).
    Counted {
        /// Counted units.
        on_hand: i64,
        /// Compare-and-set guard.
        expected: Option<i64>,
    },
    /// Moves `quantity` to `to`.
    Transferred {
        /// Destination location.
        to: String,
        /// Units.
        quantity: i64,
    },
    /// Sets (>= 0) or removes (< 0) policy values; `None` leaves one alone.
    PolicySet {
        /// Low-stock threshold.
        threshold: Option<i64>,
        /// Safety stock.
        safety_stock: Option<i64>,
        /// Location priority for order allocation, comma-joined ('' leaves it alone).
        location_priority: String,
    },
}

impl Op {
    /// Event type label for metrics and the script's `op` argument.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Received(_) => "received",
            Self::Sold(_) => "sold",
            Self::Returned(_) => "returned",
            Self::Adjusted(_) => "adjusted",
            Self::Counted { .. } => "counted",
            Self::Transferred { .. } => "transferred",
            Self::PolicySet { .. } => "policy_set",
        }
    }
}

/// A decoded, valid stock fact.
#[derive(Debug, Clone)]
pub struct Fact {
    /// Envelope.
    pub meta: EventMeta,
    /// SKU.
    pub sku: String,
    /// Location ('' only for a SKU-wide policy).
    pub location: String,
    /// The change.
    pub op: Op,
}

fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl Fact {
    /// The policy change of a `policy_set`, as the contract states it (for the ledger).
    pub fn policy(&self) -> Option<PolicySet> {
        match &self.op {
            Op::PolicySet {
                threshold,
                safety_stock,
                location_priority,
            } => Some(PolicySet {
                low_stock_threshold: *threshold,
                safety_stock: *safety_stock,
                location_priority: location_priority
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
            _ => None,
        }
    }

    /// The script arguments after the location: quantity, expected, destination, threshold,
    /// safety stock, location priority.
    pub fn script_args(&self) -> [String; 6] {
        let none = String::new;
        match &self.op {
            Op::Received(q) | Op::Sold(q) | Op::Returned(q) | Op::Adjusted(q) => {
                [q.to_string(), none(), none(), none(), none(), none()]
            }
            Op::Counted { on_hand, expected } => [
                on_hand.to_string(),
                optional(*expected),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::Transferred { to, quantity } => [
                quantity.to_string(),
                none(),
                to.clone(),
                none(),
                none(),
                none(),
            ],
            Op::PolicySet {
                threshold,
                safety_stock,
                location_priority,
            } => [
                none(),
                none(),
                none(),
                optional(*threshold),
                optional(*safety_stock),
                location_priority.clone(),
            ],
        }
    }

    /// What the event does, as compared between two deliveries of one `event_id`: the same id
    /// with a different change is a conflict, not a duplicate. `args` are [`Self::script_args`],
    /// passed in so they are built once per event.
    pub fn fingerprint(&self, args: &[String; 6]) -> String {
        let [a, b, c, d, e, f] = args;
        format!(
            "{}|{}|{a}|{b}|{c}|{d}|{e}|{f}",
            self.op.name(),
            self.location
        )
    }
}

/// Decodes and validates `payload` received on `subject` from the unpartitioned `STOCK_EVENTS`:
/// the subject must be `stock.events.<sku-token>` of the event's own SKU.
pub fn parse(subject: &str, payload: &[u8]) -> Result<Fact, HandleError> {
    parse_from(Layout::Single, subject, payload)
}

/// Like [`parse`], for a fact read from a partition stream `STOCK_EVENTS_<p>`: the servers'
/// mapping stored it as `stock.events.<p>.<sku-token>`, and the token must be its SKU's.
pub fn parse_partitioned(subject: &str, payload: &[u8]) -> Result<Fact, HandleError> {
    parse_from(Layout::Partitioned, subject, payload)
}

/// Which subject form a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `stock.events.<sku-token>`.
    Single,
    /// `stock.events.<partition>.<sku-token>`.
    Partitioned,
}

fn parse_from(layout: Layout, subject: &str, payload: &[u8]) -> Result<Fact, HandleError> {
    let event = StockEvent::decode(payload).map_err(|e| {
        HandleError::malformed("unknown", "decode", format!("not a StockEvent: {e}"))
    })?;
    let Some(change) = event.change else {
        return Err(HandleError::malformed(
            "unknown",
            "unknown_type",
            "no change set (missing or unknown fact type)",
        ));
    };
    let op = match change {
        Change::Received(c) => Op::Received(c.quantity),
        Change::Sold(c) => Op::Sold(c.quantity),
        Change::Returned(c) => Op::Returned(c.quantity),
        Change::Adjusted(c) => Op::Adjusted(c.delta),
        Change::Counted(c) => Op::Counted {
            on_hand: c.on_hand,
            expected: c.expected_on_hand,
        },
        Change::Transferred(c) => Op::Transferred {
            to: c.to_location,
            quantity: c.quantity,
        },
        Change::PolicySet(c) => Op::PolicySet {
            threshold: c.low_stock_threshold,
            safety_stock: c.safety_stock,
            location_priority: c.location_priority.join(","),
        },
    };
    let kind = op.name();
    let bad =
        |category: &'static str, reason: String| HandleError::malformed(kind, category, reason);

    let meta = event.meta.unwrap_or_default();
    validate_meta(&meta).map_err(|reason| bad("invalid_meta", reason))?;
    validate_reason(&meta).map_err(|reason| bad("unknown_enum", reason))?;
    validate_sku(&event.sku).map_err(|reason| bad("invalid_sku", reason))?;
    let expected_subject = subjects::stock_event(&event.sku);
    let on_its_subject = match layout {
        Layout::Single => subject == expected_subject,
        Layout::Partitioned => {
            subject != expected_subject
                && subjects::stock_event_token(subject)
                    == Some(subjects::encode_token(&event.sku).as_str())
        }
    };
    if !on_its_subject {
        return Err(bad(
            "subject_mismatch",
            format!("published on {subject} but its sku belongs on {expected_subject}"),
        ));
    }
    let sku_wide_policy = matches!(op, Op::PolicySet { .. }) && event.location.is_empty();
    if !sku_wide_policy {
        validate_location("location", &event.location).map_err(|r| bad("invalid_location", r))?;
    }
    if let Op::Transferred { to, .. } = &op {
        // Not a quantity problem: its own category, so a channel sending these is easy to spot.
        if *to == event.location {
            return Err(bad(
                "same_location",
                "to_location equals location: a transfer moves units between two locations".into(),
            ));
        }
    }
    validate_op(&op, &event.location).map_err(|reason| bad("invalid_quantity", reason))?;
    Ok(Fact {
        meta,
        sku: event.sku,
        location: event.location,
        op,
    })
}

fn validate_op(op: &Op, location: &str) -> Result<(), String> {
    match op {
        Op::Received(q) | Op::Sold(q) | Op::Returned(q) => positive("quantity", *q),
        Op::Adjusted(delta) => {
            // unsigned_abs: `abs` of i64::MIN overflows.
            if *delta == 0 || delta.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
                Err(format!(
                    "delta must be non-zero within ±{MAX_QUANTITY}, got {delta}"
                ))
            } else {
                Ok(())
            }
        }
        Op::Counted { on_hand, expected } => {
            if !(0..=MAX_QUANTITY).contains(on_hand) {
                return Err(format!("on_hand must be 0..={MAX_QUANTITY}, got {on_hand}"));
            }
            match expected {
                Some(e) if e.unsigned_abs() > MAX_LEVEL.unsigned_abs() => {
                    Err(format!("expected_on_hand {e} is out of range"))
                }
                _ => Ok(()),
            }
        }
        Op::Transferred { to, quantity } => {
            positive("quantity", *quantity)?;
            validate_location("to_location", to)
        }
        Op::PolicySet {
            threshold,
            safety_stock,
            location_priority,
        } => {
            if threshold.is_none() && safety_stock.is_none() && location_priority.is_empty() {
                return Err(
                    "policy_set sets none of low_stock_threshold, safety_stock, location_priority"
                        .into(),
                );
            }
            if !location_priority.is_empty() {
                if !location.is_empty() {
                    return Err("location_priority is SKU-wide: leave location empty".into());
                }
                let locations: Vec<&str> = location_priority.split(',').collect();
                if locations.len() > 32 {
                    return Err("location_priority lists more than 32 locations".into());
                }
                for l in locations {
                    validate_location("location_priority", l)?;
                    if l.contains(',') {
                        return Err("location_priority entries cannot contain ','".into());
                    }
                }
            }
            for (field, value) in [
                ("low_stock_threshold", threshold),
                ("safety_stock", safety_stock),
            ] {
                if let Some(v) = value {
                    if *v > MAX_QUANTITY {
                        return Err(format!("{field} must be at most {MAX_QUANTITY}, got {v}"));
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use stockflow_proto::v1::{Adjusted, Counted, Received};

    use super::*;

    fn event(change: Change) -> Vec<u8> {
        StockEvent {
            meta: Some(EventMeta {
                event_id: "e1".into(),
                ..Default::default()
            }),
            sku: "A".into(),
            location: "wh".into(),
            change: Some(change),
        }
        .encode_to_vec()
    }

    #[test]
    fn partitioned_subjects_must_carry_the_skus_token() {
        let fact = event(Change::Received(Received { quantity: 1 }));
        assert!(parse_partitioned("stock.events.2.A", &fact).is_ok());
        assert!(parse("stock.events.A", &fact).is_ok());
        for (subject, partitioned) in [
            ("stock.events.2.B", true),
            ("stock.events.A", true),
            ("stock.events.2.A", false),
        ] {
            let result = if partitioned {
                parse_partitioned(subject, &fact)
            } else {
                parse(subject, &fact)
            };
            assert!(
                matches!(
                    result,
                    Err(HandleError::Malformed {
                        category: "subject_mismatch",
                        ..
                    })
                ),
                "{subject}"
            );
        }
    }

    fn category(result: Result<Fact, HandleError>) -> &'static str {
        match result {
            Err(HandleError::Malformed { category, .. }) => category,
            other => panic!("malformed expected: {other:?}"),
        }
    }

    #[test]
    fn unknown_reasons_and_same_location_transfers_have_their_own_categories() {
        let mut unknown =
            StockEvent::decode(&event(Change::Received(Received { quantity: 1 }))[..])
                .expect("decodes");
        unknown.meta.as_mut().expect("meta").reason = 99;
        assert_eq!(
            category(parse("stock.events.A", &unknown.encode_to_vec())),
            "unknown_enum"
        );
        let same = event(Change::Transferred(stockflow_proto::v1::Transferred {
            to_location: "wh".into(),
            quantity: 1,
        }));
        assert_eq!(category(parse("stock.events.A", &same)), "same_location");
    }

    #[test]
    fn extreme_integers_are_malformed_not_a_panic() {
        for change in [
            Change::Adjusted(Adjusted { delta: i64::MIN }),
            Change::Counted(Counted {
                on_hand: 1,
                expected_on_hand: Some(i64::MIN),
            }),
        ] {
            let error = parse("stock.events.A", &event(change)).expect_err("out of range");
            assert!(
                matches!(
                    error,
                    HandleError::Malformed {
                        category: "invalid_quantity",
                        ..
                    }
                ),
                "{error}"
            );
        }
    }
}
