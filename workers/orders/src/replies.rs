//! The replies of the worker's scripts (`lua/*.lua`), decoded once into types: the steps match
//! variants, never strings, and a reply of any other shape is a [`ReplyError`] — a bug, never a
//! default value.

use stockflow_shared::{consume::HandleError, outcome::Outcome};

use crate::{
    command::{decode_lines, Line},
    read::{decode_parts, OrderStatus, Part},
};

/// A script answered something no version of it returns: a bug, which the consume loop retries
/// a few times and then dead-letters (`HandleError::Unexpected`).
#[derive(Debug, thiserror::Error)]
#[error("{script} answered {reply:?}, expected {expected}")]
pub(crate) struct ReplyError {
    /// The script, and its action for `order.lua`.
    pub(crate) script: &'static str,
    /// The shapes it answers.
    pub(crate) expected: &'static str,
    /// What it answered.
    pub(crate) reply: Vec<String>,
}

impl From<ReplyError> for HandleError {
    fn from(error: ReplyError) -> Self {
        HandleError::Unexpected {
            reason: error.to_string(),
        }
    }
}

/// A script reply: one decoding per script (and action), in one place.
pub(crate) trait Reply: Sized {
    /// The script, and its action for `order.lua` (for errors).
    const SCRIPT: &'static str;
    /// The shapes it answers, as the script's header states them (for errors).
    const EXPECTED: &'static str;

    /// The reply's fields decoded; `None` for any shape not in [`Self::EXPECTED`].
    fn from_fields(fields: &[&str]) -> Option<Self>;

    /// Decodes a reply, or says what came instead.
    fn decode(reply: Vec<String>) -> Result<Self, ReplyError> {
        let fields: Vec<&str> = reply.iter().map(String::as_str).collect();
        Self::from_fields(&fields).ok_or(ReplyError {
            script: Self::SCRIPT,
            expected: Self::EXPECTED,
            reply,
        })
    }
}

/// A status field: one of [`OrderStatus`].
fn status(field: &str) -> Option<OrderStatus> {
    OrderStatus::parse(field)
}

/// A status field that is `''` while the order is not placed (or its record is gone): `Some(None)`.
fn status_or_unplaced(field: &str) -> Option<Option<OrderStatus>> {
    if field.is_empty() {
        Some(None)
    } else {
        status(field).map(Some)
    }
}

/// A `'1'` / `'0'` flag.
fn flag(field: &str) -> Option<bool> {
    match field {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// A stored outcome of a line step: `''` when the step changed no level, else it must parse.
fn change(field: &str) -> Option<Option<Outcome>> {
    if field.is_empty() {
        Some(None)
    } else {
        Outcome::parse(field).ok().map(Some)
    }
}

/// An order that was decided before this call (`{'decided', status, published}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decided {
    /// Where the order is now: the decision, or how it ended since; `None` when its record is
    /// gone (expired while this delivery ran), which does not stand as a decision either.
    pub(crate) status: Option<OrderStatus>,
    /// The decision is stored in JetStream.
    pub(crate) published: bool,
}

impl Decided {
    fn from_fields(status_field: &str, published: &str) -> Option<Self> {
        Some(Self {
            status: status_or_unplaced(status_field)?,
            published: flag(published)?,
        })
    }

    /// Whether the order still stands as decided (not ended since).
    pub(crate) fn stands(self) -> bool {
        matches!(
            self.status,
            Some(OrderStatus::Confirmed | OrderStatus::Rejected)
        )
    }
}

/// `order.lua place`: whether the placement saga runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Run (or re-run) the saga.
    Go,
    /// Decided by an earlier delivery.
    Decided(Decided),
    /// A cancel came first: nothing may be reserved; the placer reports the cancel.
    Cancelled,
    /// Placed before with other lines or another hold.
    Conflict,
}

impl Reply for Placement {
    const SCRIPT: &'static str = "order.lua place";
    const EXPECTED: &'static str =
        "{'go'} | {'decided', status, published} | {'cancelled'} | {'conflict'}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        Some(match fields {
            ["go"] => Self::Go,
            ["decided", status, published] => {
                Self::Decided(Decided::from_fields(status, published)?)
            }
            ["cancelled"] => Self::Cancelled,
            ["conflict"] => Self::Conflict,
            _ => return None,
        })
    }
}

/// `order.lua decide`: whether this delivery's decision was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decide {
    /// Recorded now.
    Recorded,
    /// Cancelled meanwhile: the caller releases every line.
    Cancelled,
    /// Decided by an earlier delivery (a replay).
    Decided(Decided),
}

impl Reply for Decide {
    const SCRIPT: &'static str = "order.lua decide";
    const EXPECTED: &'static str = "{'ok'} | {'cancelled'} | {'decided', status, published}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        Some(match fields {
            ["ok"] => Self::Recorded,
            ["cancelled"] => Self::Cancelled,
            ["decided", status, published] => {
                Self::Decided(Decided::from_fields(status, published)?)
            }
            _ => return None,
        })
    }
}

/// `order.lua published | settled`: the mark is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marked;

impl Reply for Marked {
    const SCRIPT: &'static str = "order.lua published | settled";
    const EXPECTED: &'static str = "{'ok'}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        matches!(fields, ["ok"]).then_some(Self)
    }
}

/// `order.lua commit`: the commit is recorded (whatever the order's status, which comes along).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committed;

impl Reply for Committed {
    const SCRIPT: &'static str = "order.lua commit";
    const EXPECTED: &'static str = "{'ok', status or ''}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        match fields {
            ["ok", status] => status_or_unplaced(status).map(|_| Self),
            _ => None,
        }
    }
}

/// `order.lua cancel | expire | fulfilled | finish`: what the caller must release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Release these lines (now, or still: a release a crash interrupted).
    Release {
        /// The status before the order ended; `None` when it ended before it was placed.
        before: Option<OrderStatus>,
        /// The order's lines.
        lines: Vec<Line>,
        /// The status now (`placing` for a cancel that overtook the decision).
        now: OrderStatus,
        /// The decision is stored in JetStream.
        published: bool,
        /// The sales channel the order comes from ('' for none).
        channel: String,
    },
    /// Nothing to release: not placed, not confirmed, committed (for an expiry), or settled.
    Nothing,
}

impl Reply for Ending {
    const SCRIPT: &'static str = "order.lua cancel | expire | fulfilled | finish";
    const EXPECTED: &'static str =
        "{'release', status before or '', lines, status now, published, channel} | {'nothing', status or ''}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        Some(match fields {
            ["release", before, lines, now, published, channel] => Self::Release {
                before: status_or_unplaced(before)?,
                lines: decode_lines(lines),
                now: status(now)?,
                published: flag(published)?,
                channel: (*channel).to_owned(),
            },
            ["nothing", status] => {
                status_or_unplaced(status)?;
                Self::Nothing
            }
            _ => return None,
        })
    }
}

/// `reserve_line.lua`: what reserving one line gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reservation {
    /// Reserved in `parts`; `change` is the reservation's ledger entry.
    Reserved {
        /// Where: one part, or several for a split line, in allocation order (as placed: a
        /// backordered line's part at its backorder location may hold 0 units).
        parts: Vec<Part>,
        /// The reservation's outcome.
        change: Option<Outcome>,
        /// Units confirmed beyond stock, waiting at the backorder location (0: none).
        backordered: i64,
        /// When they are expected, ms since the Unix epoch (0 unknown).
        expected_at_ms: i64,
    },
    /// No candidate location covers the line (a channel order: not all of them together).
    Short {
        /// The most any candidate had available (a channel order: the total), units.
        available: i64,
    },
    /// Released before this delivery got here; `change` is its reservation's outcome, if it
    /// ever was reserved (its placer may have died before recording it).
    Released {
        /// The reservation's outcome.
        change: Option<Outcome>,
    },
}

impl Reply for Reservation {
    const SCRIPT: &'static str = "reserve_line.lua";
    const EXPECTED: &'static str =
        "{'reserved', parts, outcome, backordered, expected_at} | {'short', available} \
         | {'released', outcome or ''}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        Some(match fields {
            ["reserved", parts, outcome, backordered, expected_at] => Self::Reserved {
                parts: decode_parts(parts)?,
                change: change(outcome)?,
                backordered: backordered.parse().ok()?,
                expected_at_ms: expected_at.parse().ok()?,
            },
            ["short", available] => Self::Short {
                available: available.parse().ok()?,
            },
            ["released", outcome] => Self::Released {
                change: change(outcome)?,
            },
            _ => return None,
        })
    }
}

/// `release_line.lua`: what releasing one line gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Release {
    /// Units were given back (now, or by an earlier call: the outcome is stored).
    Released {
        /// The release's outcome.
        change: Option<Outcome>,
    },
    /// Never reserved; it never will be now.
    Tombstone,
    /// It held nothing.
    Nothing,
}

impl Reply for Release {
    const SCRIPT: &'static str = "release_line.lua";
    const EXPECTED: &'static str = "{'released', outcome} | {'tombstone'} | {'nothing'}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        Some(match fields {
            ["released", outcome] => Self::Released {
                change: change(outcome)?,
            },
            ["tombstone"] => Self::Tombstone,
            ["nothing"] => Self::Nothing,
            _ => return None,
        })
    }
}

/// `ship_line.lua`: what shipping units of one line gave.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shipment {
    /// Shipped (now, or by an earlier delivery of the same fulfilment).
    Shipped {
        /// Units the line still holds.
        left: i64,
        /// The shipment's outcome (`None` when no unit was left to ship).
        change: Option<Outcome>,
    },
    /// The line holds no reservation (released, short or never reserved): nothing to ship.
    NotReserved,
}

impl Reply for Shipment {
    const SCRIPT: &'static str = "ship_line.lua";
    const EXPECTED: &'static str =
        "{'shipped', units, units left, outcome or ''} | {'not_reserved'}";

    fn from_fields(fields: &[&str]) -> Option<Self> {
        Some(match fields {
            ["shipped", units, left, outcome] => {
                units.parse::<i64>().ok()?;
                Self::Shipped {
                    left: left.parse().ok()?,
                    change: change(outcome)?,
                }
            }
            ["not_reserved"] => Self::NotReserved,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reservation's outcome, as `reserve_line.lua` stores it.
    const OUTCOME: &str = "1\u{1f}1700\u{1f}applied\u{1f}\u{1f}\u{1e}a\u{1f}reserved\u{1f}5\u{1f}0\u{1f}0\u{1f}5\u{1f}5\u{1f}2\u{1f}0\u{1f}3\u{1f}\u{1f}";

    fn reply(fields: &[&str]) -> Vec<String> {
        fields.iter().map(|f| (*f).to_owned()).collect()
    }

    fn decode<R: Reply>(fields: &[&str]) -> Result<R, ReplyError> {
        R::decode(reply(fields))
    }

    fn outcome() -> Outcome {
        Outcome::parse(OUTCOME).expect("a valid outcome")
    }

    /// Every reply of the wrong shape is an error naming the script, what it expects and what
    /// came — never a default.
    fn rejects<R: Reply + std::fmt::Debug>(fields: &[&str]) {
        let error = decode::<R>(fields).expect_err(&format!("{fields:?} must not decode"));
        assert_eq!(error.script, R::SCRIPT);
        assert_eq!(error.reply, reply(fields));
        let text = HandleError::from(error).to_string();
        assert!(text.starts_with("unexpected reply: "), "{text}");
        assert!(text.contains(R::EXPECTED), "{text}");
    }

    #[test]
    fn lua_spells_every_status_as_rust_does() {
        let names: Vec<String> = OrderStatus::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let line = format!(
            "local PLACING, CONFIRMED, REJECTED, CANCELLED, EXPIRED, FULFILLED = {}\n",
            names.join(", ")
        );
        assert!(
            include_str!("../lua/order.lua").contains(&line),
            "lua/order.lua must declare the statuses as\n{line}"
        );
    }

    #[test]
    fn placement_replies() {
        assert_eq!(decode::<Placement>(&["go"]).expect("go"), Placement::Go);
        assert_eq!(
            decode::<Placement>(&["decided", "confirmed", "1"]).expect("decided"),
            Placement::Decided(Decided {
                status: Some(OrderStatus::Confirmed),
                published: true
            })
        );
        let ended = decode::<Placement>(&["decided", "expired", "0"]).expect("ended");
        assert!(matches!(ended, Placement::Decided(d) if !d.stands() && !d.published));
        assert_eq!(
            decode::<Placement>(&["cancelled"]).expect("cancelled"),
            Placement::Cancelled
        );
        assert_eq!(
            decode::<Placement>(&["conflict"]).expect("conflict"),
            Placement::Conflict
        );
        rejects::<Placement>(&[]);
        rejects::<Placement>(&["ok"]);
        rejects::<Placement>(&["decided", "confirmed"]);
        rejects::<Placement>(&["decided", "shipped", "1"]);
        rejects::<Placement>(&["decided", "rejected", "yes"]);
        rejects::<Placement>(&["go", "now"]);
    }

    #[test]
    fn decide_replies() {
        assert_eq!(decode::<Decide>(&["ok"]).expect("ok"), Decide::Recorded);
        assert_eq!(
            decode::<Decide>(&["cancelled"]).expect("cancelled"),
            Decide::Cancelled
        );
        let decided = decode::<Decide>(&["decided", "rejected", "0"]).expect("decided");
        assert!(matches!(decided, Decide::Decided(d) if d.stands() && !d.published));
        rejects::<Decide>(&["go"]);
        rejects::<Decide>(&["decided", "placing"]);
        rejects::<Decide>(&["decided", "unknown", "0"]);
        // A record gone meanwhile: no decision that stands.
        let gone = decode::<Decide>(&["decided", "", "0"]).expect("gone");
        assert!(matches!(gone, Decide::Decided(d) if d.status.is_none() && !d.stands()));
    }

    #[test]
    fn mark_and_commit_replies() {
        assert_eq!(decode::<Marked>(&["ok"]).expect("ok"), Marked);
        rejects::<Marked>(&["ok", "confirmed"]);
        rejects::<Marked>(&[]);
        for status in ["", "placing", "confirmed", "fulfilled"] {
            assert_eq!(
                decode::<Committed>(&["ok", status]).expect(status),
                Committed
            );
        }
        rejects::<Committed>(&["ok"]);
        rejects::<Committed>(&["ok", "paid"]);
    }

    #[test]
    fn ending_replies() {
        let lines = "l1\u{1f}sku-a\u{1f}2\u{1f}\u{1e}l2\u{1f}sku-b\u{1f}1\u{1f}wh";
        let release = decode::<Ending>(&["release", "confirmed", lines, "expired", "1", "web"])
            .expect("release");
        let Ending::Release {
            before,
            lines: decoded,
            now,
            published,
            channel,
        } = release
        else {
            panic!("not a release: {release:?}");
        };
        assert_eq!(before, Some(OrderStatus::Confirmed));
        assert_eq!(now, OrderStatus::Expired);
        assert!(published);
        assert_eq!(channel, "web");
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1].location, "wh");
        // A cancel before the placement: no status before, nothing decided.
        assert!(matches!(
            decode::<Ending>(&["release", "", "", "cancelled", "0", ""]).expect("unplaced"),
            Ending::Release {
                before: None,
                now: OrderStatus::Cancelled,
                published: false,
                ..
            }
        ));
        for status in ["", "confirmed", "rejected"] {
            assert_eq!(
                decode::<Ending>(&["nothing", status]).expect(status),
                Ending::Nothing
            );
        }
        rejects::<Ending>(&["nothing"]);
        rejects::<Ending>(&["release", "confirmed", lines, "", "1", ""]);
        rejects::<Ending>(&["release", "confirmed", lines, "expired", "1"]);
        rejects::<Ending>(&["release", "done", lines, "expired", "1", ""]);
        rejects::<Ending>(&["ok"]);
    }

    #[test]
    fn reservation_replies() {
        let part = |location: &str, quantity| Part {
            location: location.into(),
            quantity,
            shipped: 0,
        };
        assert_eq!(
            decode::<Reservation>(&["reserved", "wh\u{1f}5\u{1f}0", OUTCOME, "0", "0"])
                .expect("reserved"),
            Reservation::Reserved {
                parts: vec![part("wh", 5)],
                change: Some(outcome()),
                backordered: 0,
                expected_at_ms: 0,
            }
        );
        assert_eq!(
            decode::<Reservation>(&[
                "reserved",
                "wh\u{1f}50\u{1f}0\u{1e}s1\u{1f}10\u{1f}0",
                OUTCOME,
                "4",
                "1700"
            ])
            .expect("split"),
            Reservation::Reserved {
                parts: vec![part("wh", 50), part("s1", 10)],
                change: Some(outcome()),
                backordered: 4,
                expected_at_ms: 1700,
            }
        );
        assert_eq!(
            decode::<Reservation>(&["short", "3"]).expect("short"),
            Reservation::Short { available: 3 }
        );
        assert_eq!(
            decode::<Reservation>(&["released", OUTCOME]).expect("released"),
            Reservation::Released {
                change: Some(outcome())
            }
        );
        assert_eq!(
            decode::<Reservation>(&["released", ""]).expect("never reserved"),
            Reservation::Released { change: None }
        );
        // The old code read these as 0 units available; they are bugs.
        rejects::<Reservation>(&["short", ""]);
        rejects::<Reservation>(&["short", "many"]);
        rejects::<Reservation>(&["short"]);
        rejects::<Reservation>(&["reserved", "", OUTCOME]);
        rejects::<Reservation>(&["reserved", "wh", OUTCOME]);
        rejects::<Reservation>(&["reserved", "wh\u{1f}5\u{1f}0\u{1e}", OUTCOME]);
        rejects::<Reservation>(&["reserved", "wh\u{1f}5\u{1f}0", "garbage", "0", "0"]);
        rejects::<Reservation>(&["reserved", "wh\u{1f}5\u{1f}0", OUTCOME, "x", "0"]);
        rejects::<Reservation>(&["released"]);
    }

    #[test]
    fn release_replies() {
        assert_eq!(
            decode::<Release>(&["released", OUTCOME]).expect("released"),
            Release::Released {
                change: Some(outcome())
            }
        );
        assert_eq!(
            decode::<Release>(&["tombstone"]).expect("tombstone"),
            Release::Tombstone
        );
        assert_eq!(
            decode::<Release>(&["nothing"]).expect("nothing"),
            Release::Nothing
        );
        rejects::<Release>(&["released"]);
        rejects::<Release>(&["released", "1\u{1f}x"]);
        rejects::<Release>(&["reserved", "wh", OUTCOME]);
    }

    #[test]
    fn shipment_replies() {
        assert_eq!(
            decode::<Shipment>(&["shipped", "2", "3", OUTCOME]).expect("shipped"),
            Shipment::Shipped {
                left: 3,
                change: Some(outcome())
            }
        );
        assert_eq!(
            decode::<Shipment>(&["shipped", "0", "0", ""]).expect("nothing left"),
            Shipment::Shipped {
                left: 0,
                change: None
            }
        );
        assert_eq!(
            decode::<Shipment>(&["not_reserved"]).expect("not reserved"),
            Shipment::NotReserved
        );
        // The old code read these as 0 units left, which completes the order: now an error.
        rejects::<Shipment>(&["shipped"]);
        rejects::<Shipment>(&["shipped", "2", "three", OUTCOME]);
        rejects::<Shipment>(&["shipped", "two", "3", OUTCOME]);
        rejects::<Shipment>(&["shipped", "2", "3"]);
        rejects::<Shipment>(&[]);
    }
}
