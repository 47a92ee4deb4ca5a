//! Fuzzing the decoders and validators with proptest: arbitrary bytes and structured-but-wild
//! protobuf messages (extreme integers, empty, overlong, control and non-ASCII strings, missing
//! parts) go into the stock fact and order command parsers, the subject token decoder, the
//! script outcome parser and the shared validators. Nothing panics; every rejection is a
//! `HandleError::Malformed` with a category and a reason; everything accepted satisfies the
//! limits the rest of the system relies on.
//!
//! Bounded for CI: `STOCKFLOW_FUZZ_CASES` cases per property (default 256); raise it for a
//! longer run by hand, e.g. `STOCKFLOW_FUZZ_CASES=100000 cargo test -p stockflow-tests --test it
//! fuzz`.

use proptest::prelude::*;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{self, order_event::Command as OrderProto, stock_event::Change, EventMeta},
};
use stockflow_shared::{
    consume::HandleError,
    outcome::{LevelChange, Outcome, Verdict},
    validate::{
        validate_location, validate_meta, validate_reason, validate_sku, MAX_EVENT_ID_BYTES,
        MAX_LEVEL, MAX_LOCATION_BYTES, MAX_QUANTITY,
    },
};

fn config() -> ProptestConfig {
    let cases = std::env::var("STOCKFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Shrinking is for finding a small failing case, not for CI time.
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// Strings that probe every check: empty, plain, at and past each length limit, control
/// characters, separators used by the Redis encodings, subject wildcards, any Unicode.
fn wild_string() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_-]{1,16}",
        "[ -~]{60,70}",
        "[ -~]{120,135}",
        "[a-z\u{1e}\u{1f},.*> {}~\n\t]{1,12}",
        any::<String>(),
        "\\PC{200,600}",
    ]
    .boxed()
}

/// Integers at and around every bound, and anything else.
fn wild_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        -3..=3_i64,
        (MAX_QUANTITY - 2)..=(MAX_QUANTITY + 2),
        (-MAX_QUANTITY - 2)..=(-MAX_QUANTITY + 2),
        (MAX_LEVEL - 2)..=(MAX_LEVEL + 2),
    ]
    .boxed()
}

fn wild_meta() -> BoxedStrategy<Option<EventMeta>> {
    prop::option::weighted(
        0.95,
        (
            prop_oneof![4 => "[!-~]{1,20}", 1 => wild_string()],
            wild_i64(),
            wild_string(),
            // Mostly reasons the contract defines, so most wild events get past the envelope.
            prop_oneof![4 => 0..=12_i32, 1 => any::<i32>()],
            wild_string(),
        )
            .prop_map(
                |(event_id, occurred_at_ms, source, reason, reference)| EventMeta {
                    event_id,
                    occurred_at_ms,
                    source,
                    reason,
                    reference,
                },
            ),
    )
    .boxed()
}

fn wild_change() -> BoxedStrategy<Option<Change>> {
    let change = prop_oneof![
        wild_i64().prop_map(|quantity| Change::Received(v1::Received { quantity })),
        wild_i64().prop_map(|quantity| Change::Sold(v1::Sold { quantity })),
        wild_i64().prop_map(|quantity| Change::Returned(v1::Returned { quantity })),
        wild_i64().prop_map(|delta| Change::Adjusted(v1::Adjusted { delta })),
        (wild_i64(), prop::option::of(wild_i64())).prop_map(|(on_hand, expected_on_hand)| {
            Change::Counted(v1::Counted {
                on_hand,
                expected_on_hand,
            })
        }),
        (wild_string(), wild_i64()).prop_map(|(to_location, quantity)| {
            Change::Transferred(v1::Transferred {
                to_location,
                quantity,
            })
        }),
        (
            prop::option::of(wild_i64()),
            prop::option::of(wild_i64()),
            prop::collection::vec(wild_string(), 0..40),
        )
            .prop_map(|(low_stock_threshold, safety_stock, location_priority)| {
                Change::PolicySet(v1::PolicySet {
                    low_stock_threshold,
                    safety_stock,
                    location_priority,
                    ..v1::PolicySet::default()
                })
            }),
    ];
    prop::option::weighted(0.95, change).boxed()
}

fn wild_stock_event() -> impl Strategy<Value = v1::StockEvent> {
    (
        wild_meta(),
        prop_oneof![3 => "[A-Z0-9-]{1,10}", 1 => wild_string()],
        prop_oneof![3 => Just("wh".to_owned()), 1 => Just(String::new()), 1 => wild_string()],
        wild_change(),
    )
        .prop_map(|(meta, sku, location, change)| v1::StockEvent {
            meta,
            sku,
            location,
            change,
            ..Default::default()
        })
}

/// The subject a message arrives on: mostly the right one, sometimes anything.
fn subject_for(right: String) -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(right), 1 => wild_string()]
}

/// A rejection must be a dead letter with a reason, never a transient failure (which would
/// retry bad input forever) and never a panic.
fn assert_malformed(error: HandleError) -> Result<(), TestCaseError> {
    match error {
        HandleError::Malformed {
            category, reason, ..
        } => {
            prop_assert!(!category.is_empty());
            prop_assert!(!reason.is_empty());
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "bad input answered as {other}, not malformed"
        ))),
    }
}

/// A location or id that goes into the `\x1e`/`\x1f`-separated Redis encodings.
fn assert_encodable(field: &str, value: &str) -> Result<(), TestCaseError> {
    prop_assert!(!value.chars().any(char::is_control), "{field} {value:?}");
    Ok(())
}

fn check_stock(subject: &str, payload: &[u8]) -> Result<(), TestCaseError> {
    use stock_worker::fact::{self, Op};
    let fact = match fact::parse(subject, payload) {
        Ok(fact) => fact,
        Err(error) => return assert_malformed(error),
    };
    prop_assert!(validate_sku(&fact.sku).is_ok());
    assert_encodable("sku", &fact.sku)?;
    prop_assert_eq!(subject, subjects::stock_event(&fact.sku));
    prop_assert!(validate_meta(&fact.meta).is_ok());
    prop_assert!(validate_reason(&fact.meta).is_ok());
    prop_assert!(fact.meta.event_id.len() <= MAX_EVENT_ID_BYTES);
    assert_encodable("location", &fact.location)?;
    prop_assert!(fact.location.len() <= MAX_LOCATION_BYTES);
    let in_range = |q: i64| (-MAX_QUANTITY..=MAX_QUANTITY).contains(&q);
    match &fact.op {
        Op::Received(q) | Op::Sold(q) | Op::Returned(q) => {
            prop_assert!((1..=MAX_QUANTITY).contains(q))
        }
        Op::Adjusted(d) => prop_assert!(*d != 0 && in_range(*d)),
        Op::Counted { on_hand, expected } => {
            prop_assert!((0..=MAX_QUANTITY).contains(on_hand));
            // The script compares it as a double: it must be exact.
            if let Some(e) = expected {
                prop_assert!(e.unsigned_abs() <= MAX_LEVEL.unsigned_abs());
            }
        }
        Op::Transferred { to, quantity } => {
            prop_assert!((1..=MAX_QUANTITY).contains(quantity));
            prop_assert!(!to.is_empty() && *to != fact.location);
            assert_encodable("to_location", to)?;
        }
        Op::PolicySet {
            threshold,
            safety_stock,
            location_priority,
            ..
        } => {
            for value in [threshold, safety_stock].into_iter().flatten() {
                prop_assert!(*value <= MAX_QUANTITY);
            }
            assert_encodable("location_priority", location_priority)?;
        }
        Op::ChannelRules { channel, .. } | Op::ChannelRecompute { channel, .. } => {
            assert_encodable("channel", channel)?;
        }
        Op::ReceivedAgainst {
            purchase_order,
            quantity,
        }
        | Op::Expected {
            purchase_order,
            quantity,
            ..
        } => {
            prop_assert!((1..=MAX_QUANTITY).contains(quantity));
            assert_encodable("purchase_order", purchase_order)?;
        }
        Op::ExpectedCancelled {
            purchase_order,
            quantity,
        } => {
            prop_assert!(quantity.is_none_or(|q| (1..=MAX_QUANTITY).contains(&q)));
            assert_encodable("purchase_order", purchase_order)?;
        }
        Op::UnsellableMoved { quantity, .. } => {
            prop_assert!((1..=MAX_QUANTITY).contains(quantity));
        }
        Op::KitDefined { components } => {
            prop_assert!(components.windows(2).all(|w| w[0].0 < w[1].0));
            for (sku, quantity) in components {
                prop_assert!(*sku != fact.sku && *quantity >= 1);
            }
        }
        Op::KitBuildable { buildable, stamp } => {
            prop_assert!((0..=MAX_QUANTITY).contains(buildable) && *stamp >= 1);
        }
    }
    // The fingerprint and script arguments are built for every accepted fact.
    let args = fact.script_args();
    prop_assert!(!fact.fingerprint(&args).is_empty());
    Ok(())
}

fn wild_line() -> impl Strategy<Value = v1::OrderLine> {
    (
        prop_oneof!["[0-9]{1,3}", wild_string()],
        prop_oneof!["[A-Z]{1,4}", wild_string()],
        prop_oneof![1..=5_i64, wild_i64()],
        prop_oneof![Just(String::new()), Just("wh".to_owned()), wild_string()],
    )
        .prop_map(|(line_id, sku, quantity, location)| v1::OrderLine {
            line_id,
            sku,
            quantity,
            location,
        })
}

fn wild_order_event() -> impl Strategy<Value = v1::OrderEvent> {
    let command = prop_oneof![
        (
            prop_oneof![
                prop::collection::vec(wild_line(), 0..4),
                prop::collection::vec(wild_line(), 95..105),
            ],
            prop_oneof![0..=60_i64, wild_i64()],
        )
            .prop_map(|(lines, hold_seconds)| OrderProto::Placed(v1::OrderPlaced {
                lines,
                hold_seconds,
                ..Default::default()
            })),
        Just(OrderProto::Committed(v1::OrderCommitted {})),
        Just(OrderProto::Cancelled(v1::OrderCancelled {})),
        (
            prop::collection::vec((wild_string(), wild_i64()), 0..4),
            any::<bool>()
        )
            .prop_map(
                |(lines, last_shipment)| OrderProto::Fulfilled(v1::OrderFulfilled {
                    lines: lines
                        .into_iter()
                        .map(|(line_id, quantity)| v1::FulfilledLine { line_id, quantity })
                        .collect(),
                    last_shipment,
                })
            ),
        wild_i64()
            .prop_map(|due_at_ms| OrderProto::HoldExpired(v1::OrderHoldExpired { due_at_ms })),
    ];
    (
        wild_meta(),
        prop_oneof!["[a-z0-9-]{1,12}", wild_string()],
        prop::option::weighted(0.95, command),
    )
        .prop_map(|(meta, order_id, command)| v1::OrderEvent {
            meta,
            order_id,
            command,
        })
}

fn check_order(subject: &str, payload: &[u8]) -> Result<(), TestCaseError> {
    use order_worker::command::{self, Command, MAX_HOLD_SECONDS, MAX_LINES, MAX_LINE_QUANTITY};
    let order = match command::parse(subject, payload) {
        Ok(order) => order,
        Err(error) => return assert_malformed(error),
    };
    prop_assert_eq!(subject, subjects::order_event(&order.order_id));
    prop_assert!(validate_meta(&order.meta).is_ok());
    prop_assert!(validate_reason(&order.meta).is_ok());
    match &order.command {
        Command::Placed {
            lines,
            hold_seconds,
        } => {
            prop_assert!((1..=MAX_LINES).contains(&lines.len()));
            prop_assert!((0..=MAX_HOLD_SECONDS).contains(hold_seconds));
            for line in lines {
                prop_assert!((1..=MAX_LINE_QUANTITY).contains(&line.quantity));
                prop_assert!(validate_sku(&line.sku).is_ok());
            }
            // The order record stores the lines in one string: they must come back the same.
            prop_assert_eq!(&command::decode_lines(&command::encode_lines(lines)), lines);
        }
        Command::Fulfilled { lines, .. } => {
            for (line_id, quantity) in lines {
                prop_assert!(validate_location("line_id", line_id).is_ok());
                prop_assert!((1..=MAX_LINE_QUANTITY).contains(quantity));
            }
        }
        Command::Committed | Command::Cancelled | Command::HoldExpired { .. } => {}
    }
    Ok(())
}

/// Encodes an outcome the way `lua/prelude.lua` does.
fn encode_outcome(outcome: &Outcome) -> String {
    let (result, a, b) = match &outcome.verdict {
        Verdict::Applied => ("applied", String::new(), String::new()),
        Verdict::StaleCount { expected, actual } => {
            ("stale", expected.to_string(), actual.to_string())
        }
    };
    let mut records = vec![format!(
        "1\u{1f}{}\u{1f}{result}\u{1f}{a}\u{1f}{b}",
        outcome.applied_at_ms
    )];
    for c in &outcome.changes {
        let levels = |l: &v1::Levels| {
            format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                l.on_hand, l.reserved, l.safety_stock, l.available
            )
        };
        let alerts: Vec<&str> = c
            .alerts
            .iter()
            .map(|k| stockflow_shared::outcome::alert_name(*k))
            .collect();
        records.push(format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            c.location,
            c.kind,
            levels(&c.before),
            levels(&c.after),
            c.threshold.map(|t| t.to_string()).unwrap_or_default(),
            alerts.join(",")
        ));
    }
    records.join("\u{1e}")
}

fn level_value() -> impl Strategy<Value = i64> {
    prop_oneof![-MAX_LEVEL..=MAX_LEVEL, Just(MAX_LEVEL), Just(-MAX_LEVEL)]
}

fn levels() -> impl Strategy<Value = v1::Levels> {
    (level_value(), level_value(), level_value(), level_value()).prop_map(
        |(on_hand, reserved, safety_stock, available)| v1::Levels {
            on_hand,
            reserved,
            safety_stock,
            available,
            ..Default::default()
        },
    )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    use v1::AlertKind;
    let change = (
        "[a-z0-9 ._-]{1,10}",
        "[a-z_]{1,16}",
        levels(),
        levels(),
        prop::option::of(level_value()),
        prop::collection::vec(
            prop_oneof![
                Just(AlertKind::LowStock),
                Just(AlertKind::OutOfStock),
                Just(AlertKind::BackInStock),
                Just(AlertKind::NegativeStock),
            ],
            0..4,
        ),
    )
        .prop_map(
            |(location, kind, before, after, threshold, alerts)| LevelChange {
                location,
                kind,
                before,
                after,
                threshold,
                alerts,
                purchase_order: None,
                backorder: None,
            },
        );
    (
        any::<i64>(),
        prop_oneof![
            Just(Verdict::Applied),
            (level_value(), level_value())
                .prop_map(|(expected, actual)| Verdict::StaleCount { expected, actual }),
        ],
        prop::collection::vec(change, 0..4),
    )
        .prop_map(|(applied_at_ms, verdict, changes)| Outcome {
            applied_at_ms,
            verdict,
            changes,
            channels: Vec::new(),
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stock_facts_from_arbitrary_bytes_never_panic(
        subject in wild_string(),
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_stock(&subject, &payload)?;
    }

    #[test]
    fn wild_stock_events_are_accepted_within_limits_or_dead_lettered_with_a_reason(
        (event, subject) in wild_stock_event()
            .prop_flat_map(|e| { let right = subjects::stock_event(&e.sku); (Just(e), subject_for(right)) }),
    ) {
        check_stock(&subject, &event.encode_to_vec())?;
    }

    #[test]
    fn order_commands_from_arbitrary_bytes_never_panic(
        subject in wild_string(),
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        check_order(&subject, &payload)?;
    }

    #[test]
    fn wild_order_commands_are_accepted_within_limits_or_dead_lettered_with_a_reason(
        (event, subject) in wild_order_event()
            .prop_flat_map(|e| { let right = subjects::order_event(&e.order_id); (Just(e), subject_for(right)) }),
    ) {
        check_order(&subject, &event.encode_to_vec())?;
    }

    #[test]
    fn subject_tokens_round_trip_and_foreign_tokens_never_panic(id in wild_string(), token in wild_string()) {
        let encoded = subjects::encode_token(&id);
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)));
        if !id.is_empty() {
            prop_assert_eq!(subjects::decode_token(&encoded), Some(id));
        }
        if let Some(decoded) = subjects::decode_token(&token) {
            // One token per id: whatever decodes re-encodes to the same token.
            prop_assert_eq!(subjects::encode_token(&decoded), token);
        }
    }

    #[test]
    fn script_outcomes_round_trip_and_garbage_is_an_error_not_a_panic(
        outcome in outcome(),
        garbage in prop_oneof![any::<String>(), "[0-9a-z_,\u{1e}\u{1f}-]{0,80}"],
    ) {
        let text = encode_outcome(&outcome);
        prop_assert_eq!(Outcome::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?, outcome);
        let _ = Outcome::parse(&garbage);
    }

    #[test]
    fn validators_accept_only_what_they_promise(value in wild_string(), meta in wild_meta()) {
        if validate_sku(&value).is_ok() {
            prop_assert!(!value.is_empty() && value.len() <= subjects::MAX_SKU_BYTES);
            assert_encodable("sku", &value)?;
        }
        if validate_location("location", &value).is_ok() {
            prop_assert!(!value.is_empty() && value.len() <= MAX_LOCATION_BYTES);
            assert_encodable("location", &value)?;
        }
        if let Some(meta) = meta {
            if validate_meta(&meta).is_ok() {
                prop_assert!(!meta.event_id.is_empty() && meta.event_id.len() <= MAX_EVENT_ID_BYTES);
                prop_assert!(meta.event_id.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
