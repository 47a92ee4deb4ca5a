//! What becomes of a message once its handler is done: the decision is the [`HandleError`]
//! variant (or a panic) and the delivery count, never a string. Pure, so it is tested alone.

use std::time::Duration;

use super::handler::{Dependency, HandleError, Handled};

/// Deliveries that may panic before the input is dead-lettered.
pub(super) const PANICS_BEFORE_DEAD_LETTER: i64 = 3;

/// Deliveries that may end in an unexpected reply ([`HandleError::Unexpected`]) before the input
/// is dead-lettered: a bug, so a few retries only, in case the reply was a fluke.
pub(super) const UNEXPECTED_BEFORE_DEAD_LETTER: i64 = 5;

/// What the loop does with a message.
#[derive(Debug)]
pub(super) enum Action {
    /// Ack: its effects are durable.
    Ack(Handled),
    /// NAK it, to come back after `delay`.
    Retry {
        /// The redelivery delay.
        delay: Duration,
        /// Why, for logs and metrics.
        cause: Retry,
    },
    /// Store it in `DEAD_LETTERS`, then terminate it.
    DeadLetter(DeadLetter),
}

/// Why a message is retried.
#[derive(Debug)]
pub(super) enum Retry {
    /// [`HandleError::NotYet`].
    NotYet(String),
    /// [`HandleError::Transient`].
    Transient {
        /// Which dependency failed.
        dependency: Dependency,
        /// How.
        source: anyhow::Error,
    },
    /// [`HandleError::RetryIn`]: the handler chose the delay.
    Asked(String),
    /// The handler panicked (already logged and counted).
    Panicked,
    /// [`HandleError::Unexpected`], below its bound.
    Unexpected(String),
}

/// A message that goes to `DEAD_LETTERS`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct DeadLetter {
    /// Event type label.
    pub(super) event_type: &'static str,
    /// `stockflow_dead_letters_total`'s `reason` label.
    pub(super) category: &'static str,
    /// Stored in the dead letter's reason header.
    pub(super) reason: String,
    /// What led here, which decides how loudly it is logged.
    pub(super) source: Source,
}

/// What led to a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// Input the handler refused ([`HandleError::Malformed`]): a warning.
    Input,
    /// A handler panic on each of its last deliveries (the panic was logged as an error).
    Panic,
    /// An unexpected reply on each of its last deliveries: a bug, logged as an error.
    Unexpected,
}

/// The action for a handler's `result` on the message's `delivered`-th delivery.
pub(super) fn decide(result: Result<Handled, HandleError>, delivered: i64) -> Action {
    let retry = |cause| Action::Retry {
        delay: nak_delay(None, delivered),
        cause,
    };
    match result {
        Ok(handled) => Action::Ack(handled),
        Err(HandleError::Malformed {
            event_type,
            category,
            reason,
        }) => Action::DeadLetter(DeadLetter {
            event_type,
            category,
            reason,
            source: Source::Input,
        }),
        Err(HandleError::NotYet(reason)) => retry(Retry::NotYet(reason)),
        Err(HandleError::Transient { dependency, source }) => {
            retry(Retry::Transient { dependency, source })
        }
        Err(HandleError::RetryIn { reason, delay }) => Action::Retry {
            delay: nak_delay(Some(delay), delivered),
            cause: Retry::Asked(reason),
        },
        Err(HandleError::Unexpected { reason }) if delivered < UNEXPECTED_BEFORE_DEAD_LETTER => {
            retry(Retry::Unexpected(reason))
        }
        Err(HandleError::Unexpected { reason }) => Action::DeadLetter(DeadLetter {
            event_type: "unknown",
            category: "unexpected",
            reason: format!("unexpected reply on delivery {delivered}: {reason}"),
            source: Source::Unexpected,
        }),
    }
}

/// A handler panic is a bug, most likely one this very input triggers: retried a few times in
/// case it is not, then dead-lettered so it cannot block the stream (`stockctl dlq replay` brings
/// it back after a fix). `what` is the panic's message.
pub(super) fn after_panic(what: &str, delivered: i64) -> Action {
    if delivered < PANICS_BEFORE_DEAD_LETTER {
        return Action::Retry {
            delay: nak_delay(None, delivered),
            cause: Retry::Panicked,
        };
    }
    Action::DeadLetter(DeadLetter {
        event_type: "unknown",
        category: "handler_panic",
        reason: format!("the handler panicked on delivery {delivered}: {what}"),
        source: Source::Panic,
    })
}

/// The text of a panic's payload (`panic!` with a literal or a format string).
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

/// Back-off for re-binding, NAKs and start-up retries: doubling from `base`, capped, with jitter.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(cap);
    // Up to 20% jitter, from the clock's low bits: enough to spread retries of one batch.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    capped + capped.mul_f64(f64::from(nanos % 200) / 1000.0)
}

/// The redelivery delay of a NAK: what the handler asked for, as it is (its own policy may
/// exceed the loop's cap by far), else doubling from 200 ms per delivery, capped at 20 s.
pub(super) fn nak_delay(requested: Option<Duration>, delivered: i64) -> Duration {
    requested.unwrap_or_else(|| {
        let attempt = u32::try_from(delivered.max(1) - 1).unwrap_or(u32::MAX);
        backoff(attempt, Duration::from_millis(200), Duration::from_secs(20))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::Outcome;

    /// Whether `delay` is `base` plus at most the 20% jitter.
    fn about(delay: Duration, base: Duration) -> bool {
        delay >= base && delay <= base.mul_f64(1.2)
    }

    fn retry_delay(action: &Action) -> Duration {
        match action {
            Action::Retry { delay, .. } => *delay,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    fn dead_letter(action: Action) -> DeadLetter {
        match action {
            Action::DeadLetter(letter) => letter,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn a_nak_waits_as_long_as_the_handler_asked_else_the_loops_back_off() {
        let hours = Duration::from_secs(3 * 3600);
        assert_eq!(nak_delay(Some(hours), 1), hours, "not capped, not jittered");
        assert_eq!(
            nak_delay(Some(Duration::from_millis(5)), 40),
            Duration::from_millis(5)
        );
        let first = nak_delay(None, 1);
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(240));
        let late = nak_delay(None, 100);
        assert!(late >= Duration::from_secs(20) && late <= Duration::from_secs(24));
        let err = HandleError::RetryIn {
            reason: "endpoint paused".into(),
            delay: Duration::from_secs(2),
        };
        assert_eq!(err.to_string(), "retry in 2s: endpoint paused");
    }

    #[test]
    fn the_nak_delay_doubles_per_delivery_from_200_ms_up_to_20_s() {
        for (delivered, base_ms) in [
            (0, 200),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1_600),
            (5, 3_200),
            (7, 12_800),
            (8, 20_000),
            (30, 20_000),
            (i64::MAX, 20_000),
        ] {
            let delay = nak_delay(None, delivered);
            assert!(
                about(delay, Duration::from_millis(base_ms)),
                "delivery {delivered}: {delay:?}, expected {base_ms} ms + ≤20%"
            );
        }
    }

    #[test]
    fn every_retryable_error_is_naked_with_the_back_off_and_never_dead_lettered() {
        for delivered in [1, 3, 50] {
            let errors = [
                HandleError::NotYet("order not decided".into()),
                HandleError::redis(anyhow::anyhow!("connection refused")),
                HandleError::nats(anyhow::anyhow!("timed out")),
            ];
            for err in errors {
                let action = decide(Err(err), delivered);
                let base = nak_delay(None, delivered);
                let delay = retry_delay(&action);
                // Both jittered: compare with the un-jittered part.
                assert!(
                    delay.mul_f64(1.2) >= base && base.mul_f64(1.2) >= delay,
                    "{delay:?} vs {base:?}"
                );
            }
        }
        let asked = decide(
            Err(HandleError::RetryIn {
                reason: "paused".into(),
                delay: Duration::from_secs(7),
            }),
            99,
        );
        assert_eq!(retry_delay(&asked), Duration::from_secs(7));
        assert!(matches!(
            asked,
            Action::Retry {
                cause: Retry::Asked(_),
                ..
            }
        ));
    }

    #[test]
    fn success_is_acked_and_malformed_input_dead_lettered_at_once() {
        let handled = Handled {
            event_type: "received",
            outcome: Outcome::Duplicate,
        };
        match decide(Ok(handled), 4) {
            Action::Ack(h) => assert_eq!(h.outcome, Outcome::Duplicate),
            other => panic!("expected an ack, got {other:?}"),
        }
        let letter = dead_letter(decide(
            Err(HandleError::malformed(
                "sold",
                "invalid_quantity",
                "quantity 0",
            )),
            1,
        ));
        assert_eq!(
            letter,
            DeadLetter {
                event_type: "sold",
                category: "invalid_quantity",
                reason: "quantity 0".into(),
                source: Source::Input,
            }
        );
    }

    #[test]
    fn an_unexpected_reply_is_retried_with_back_off_then_dead_lettered_on_the_fifth_delivery() {
        let unexpected = || {
            Err(HandleError::Unexpected {
                reason: "apply_stock answered [\"odd\"]".into(),
            })
        };
        for delivered in 1..UNEXPECTED_BEFORE_DEAD_LETTER {
            let action = decide(unexpected(), delivered);
            assert!(
                matches!(
                    action,
                    Action::Retry {
                        cause: Retry::Unexpected(_),
                        ..
                    }
                ),
                "delivery {delivered}: {action:?}"
            );
            let expected = Duration::from_millis(200 << (delivered - 1));
            assert!(
                about(retry_delay(&action), expected),
                "delivery {delivered}"
            );
        }
        assert_eq!(UNEXPECTED_BEFORE_DEAD_LETTER, 5);
        for delivered in [5, 6, 40] {
            let letter = dead_letter(decide(unexpected(), delivered));
            assert_eq!(letter.category, "unexpected");
            assert_eq!(letter.source, Source::Unexpected);
            assert_eq!(
                letter.reason,
                format!("unexpected reply on delivery {delivered}: apply_stock answered [\"odd\"]")
            );
        }
    }

    #[test]
    fn a_panicking_handler_is_retried_twice_then_its_input_dead_lettered() {
        for delivered in [1, 2] {
            let action = after_panic("boom", delivered);
            assert!(
                matches!(
                    action,
                    Action::Retry {
                        cause: Retry::Panicked,
                        ..
                    }
                ),
                "delivery {delivered}: {action:?}"
            );
            assert!(about(
                retry_delay(&action),
                Duration::from_millis(200 << (delivered - 1))
            ));
        }
        let letter = dead_letter(after_panic("index out of bounds", 3));
        assert_eq!(
            letter,
            DeadLetter {
                event_type: "unknown",
                category: "handler_panic",
                reason: "the handler panicked on delivery 3: index out of bounds".into(),
                source: Source::Panic,
            }
        );
        assert_eq!(
            dead_letter(after_panic("again", 9)).category,
            "handler_panic"
        );
    }

    #[test]
    fn a_panics_message_is_read_from_either_payload_type() {
        let caught = |f: fn()| std::panic::catch_unwind(f).expect_err("it panics");
        let literal = caught(|| panic!("a literal"));
        assert_eq!(panic_text(literal.as_ref()), "a literal");
        let formatted = caught(|| panic!("delivery {}", 3));
        assert_eq!(panic_text(formatted.as_ref()), "delivery 3");
        let other = caught(|| std::panic::panic_any(42_u8));
        assert_eq!(panic_text(other.as_ref()), "non-text panic payload");
    }
}
