//! Reading an order back from the records the worker keeps (`lua/order.lua` for the order,
//! `lua/reserve_line.lua` for each line): what the gateway's queries and checkouts see.

use std::collections::HashMap;

use stockflow_proto::v1::{Allocation, Shortfall};
use stockflow_shared::keys::Keys;

use crate::command::{decode_lines, placement_fingerprint, Line};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Placed, not decided yet.
    Placing,
    /// Every line is reserved.
    Confirmed,
    /// A line could not be covered: nothing is reserved.
    Rejected,
    /// Cancelled (before or after the decision).
    Cancelled,
    /// The checkout hold ran out.
    Expired,
    /// Shipped; whatever was left is released.
    Fulfilled,
}

impl OrderStatus {
    /// Every status, in the order of its life.
    pub const ALL: [Self; 6] = [
        Self::Placing,
        Self::Confirmed,
        Self::Rejected,
        Self::Cancelled,
        Self::Expired,
        Self::Fulfilled,
    ];

    /// The status as the API and the records spell it: the one place the names are spelled
    /// (`lua/order.lua` declares them once, and a unit test keeps the two equal).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placing => "placing",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Fulfilled => "fulfilled",
        }
    }

    /// The status `text` spells, if any.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// What one line holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineState {
    /// No record: not reserved yet (or the record of a released line has expired).
    Pending,
    /// Units held at `location`; `shipped` of them already left.
    Reserved {
        /// Where.
        location: String,
        /// Units shipped so far.
        shipped: i64,
    },
    /// The line could not be covered; `available` is the most any candidate location had.
    Short {
        /// Units.
        available: i64,
    },
    /// Held once, given back since (cancel, expiry, rejection of another line, last shipment).
    Released {
        /// Where it was held, if it ever was.
        location: Option<String>,
        /// Units shipped before the release.
        shipped: i64,
    },
}

/// One part of a reserved line: units held at one location. A line has one part, or — a line of
/// a channel order that no single location covered — one per location it was split across, in
/// allocation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Where.
    pub location: String,
    /// Units reserved there.
    pub quantity: i64,
    /// Units of them shipped so far.
    pub shipped: i64,
}

/// Decodes a line record's `parts` (as `lua/parts.lua` encodes them: records `\x1e`, fields
/// `\x1f`: location, units, shipped); `None` for anything else.
pub(crate) fn decode_parts(text: &str) -> Option<Vec<Part>> {
    text.split('\u{1e}')
        .map(|part| match part.split('\u{1f}').collect::<Vec<_>>()[..] {
            [location, quantity, shipped] if !location.is_empty() => Some(Part {
                location: location.to_owned(),
                quantity: quantity.parse().ok()?,
                shipped: shipped.parse().ok()?,
            }),
            _ => None,
        })
        .collect()
}

/// The parts a line record holds: its `parts`, or for a record written before lines could be
/// split, its one location (`loc`, `qty`, `shipped`); none when it never was reserved.
fn parts_of(record: &HashMap<String, String>) -> Vec<Part> {
    if let Some(parts) = record.get("parts").and_then(|p| decode_parts(p)) {
        return parts;
    }
    let number = |name: &str| record.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    match record.get("loc") {
        Some(location) if !location.is_empty() => vec![Part {
            location: location.clone(),
            quantity: number("qty"),
            shipped: number("shipped"),
        }],
        _ => Vec::new(),
    }
}

/// One line of a stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    /// The line as placed.
    pub line: Line,
    /// What it holds now (for a split line, `location` is its first part's).
    pub state: LineState,
    /// Where it is (or was) held, one entry per part; empty when it never was reserved.
    pub parts: Vec<Part>,
    /// A backordered line: where its units wait, how many still do and when they are
    /// expected (ms since the Unix epoch, 0 unknown).
    pub backorder: Option<(String, i64, i64)>,
}

/// The decision on a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every line was reserved.
    Confirmed,
    /// Nothing was reserved.
    Rejected,
}

impl Decision {
    /// The status the decision gives the order.
    pub(crate) fn status(self) -> OrderStatus {
        match self {
            Self::Confirmed => OrderStatus::Confirmed,
            Self::Rejected => OrderStatus::Rejected,
        }
    }
}

/// An order as the worker's records hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    /// The order.
    pub order_id: String,
    /// Where it is.
    pub status: OrderStatus,
    /// Its lines (empty for an order cancelled before it was placed).
    pub lines: Vec<StoredLine>,
    /// Checkout hold asked for, seconds (0: none).
    pub hold_seconds: i64,
    /// When the hold expires, ms since the Unix epoch; 0: no expiry.
    pub expires_at_ms: i64,
    /// Payment is done: the hold no longer expires.
    pub committed: bool,
    /// The sales channel the order comes from ('' for none).
    pub channel: String,
    /// The status before the order ended (`confirmed`, `placing`, ...), '' while it runs.
    previous: String,
    fingerprint: String,
}

impl StoredOrder {
    /// Whether the order was placed with other lines, another hold or from another channel than
    /// these: a new placement with these would be a conflict, which the worker dead-letters.
    pub fn placed_otherwise(&self, lines: &[Line], hold_seconds: i64, channel: &str) -> bool {
        !self.fingerprint.is_empty()
            && self.fingerprint != placement_fingerprint(lines, hold_seconds, channel)
    }

    /// The decision on its placement, once there is one.
    pub fn decision(&self) -> Option<Decision> {
        match self.status {
            OrderStatus::Placing => None,
            OrderStatus::Rejected => Some(Decision::Rejected),
            OrderStatus::Confirmed | OrderStatus::Fulfilled => Some(Decision::Confirmed),
            OrderStatus::Expired | OrderStatus::Cancelled => {
                (self.previous == OrderStatus::Confirmed.as_str()).then_some(Decision::Confirmed)
            }
        }
    }

    /// Where each line was reserved (for a confirmed order): one allocation per part, so a
    /// split line has several with its `line_id`.
    pub fn allocations(&self) -> Vec<Allocation> {
        self.lines
            .iter()
            .filter(|l| {
                matches!(
                    l.state,
                    LineState::Reserved { .. }
                        | LineState::Released {
                            location: Some(_),
                            ..
                        }
                )
            })
            .flat_map(|l| {
                l.parts.iter().map(|part| {
                    // Units still waiting, on the part where they wait.
                    let (backordered, backorder_expected_at_ms) = match &l.backorder {
                        Some((location, waiting, at))
                            if *location == part.location && *waiting > 0 =>
                        {
                            (*waiting, *at)
                        }
                        _ => (0, 0),
                    };
                    Allocation {
                        line_id: l.line.line_id.clone(),
                        sku: l.line.sku.clone(),
                        location: part.location.clone(),
                        quantity: part.quantity,
                        backordered,
                        backorder_expected_at_ms,
                        // Only the decision knows which kit line a part belongs to.
                        ..Default::default()
                    }
                })
            })
            .collect()
    }

    /// The lines that could not be covered (for a rejected order).
    pub fn shortfalls(&self) -> Vec<Shortfall> {
        self.lines
            .iter()
            .filter_map(|l| match l.state {
                LineState::Short { available } => Some(Shortfall {
                    line_id: l.line.line_id.clone(),
                    sku: l.line.sku.clone(),
                    requested: l.line.quantity,
                    available,
                }),
                _ => None,
            })
            .collect()
    }
}

/// Why an order could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Redis did not answer: a retry may succeed.
    #[error("reading the order's records from Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The record holds something no version of the worker writes: a bug, which no retry
    /// repairs.
    #[error("the record of order {order_id:?} cannot be interpreted: {reason}")]
    Unreadable {
        /// The order.
        order_id: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads `order_id`'s records; `None` when the worker has never seen the order, or the order
/// is final and its record has expired (`STOCKFLOW_ORDER_RETENTION_SECONDS`): an expired order
/// reads as unknown. So does an order that only a commit has reached: the commit is kept for a
/// placement that may still come (it overtook it), but nothing was placed.
pub async fn read_order(
    redis: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    order_id: &str,
) -> Result<Option<StoredOrder>, ReadError> {
    let order: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.order(order_id))
        .query_async(redis)
        .await?;
    if order.is_empty() {
        return Ok(None);
    }
    let field = |name: &str| order.get(name).map(String::as_str).unwrap_or("");
    let number = |name: &str| field(name).parse::<i64>().unwrap_or(0);
    let status = match (OrderStatus::parse(field("status")), field("status")) {
        (Some(status), _) => status,
        // A cancel that arrived before the placement leaves only the flag.
        (None, "") if field("cancelled") == "1" => OrderStatus::Cancelled,
        // A commit that arrived before the placement (or after its record expired): not placed.
        (None, "") if field("fp").is_empty() => return Ok(None),
        (None, status) => {
            return Err(ReadError::Unreadable {
                order_id: order_id.to_owned(),
                reason: format!("unknown status {status:?}"),
            })
        }
    };
    let mut lines = Vec::new();
    for line in decode_lines(field("lines")) {
        let record: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.order_line(&line.sku, order_id, &line.line_id))
            .query_async(redis)
            .await?;
        lines.push(StoredLine {
            state: line_state(&record),
            parts: parts_of(&record),
            backorder: record.get("bol").map(|location| {
                let number = |name: &str| record.get(name).and_then(|v| v.parse().ok());
                (
                    location.clone(),
                    number("bo").unwrap_or(0),
                    number("boe").unwrap_or(0),
                )
            }),
            line,
        });
    }
    Ok(Some(StoredOrder {
        order_id: order_id.to_owned(),
        status,
        lines,
        hold_seconds: number("hold"),
        expires_at_ms: number("expires"),
        committed: field("committed") == "1",
        channel: field("ch").to_owned(),
        previous: field("from").to_owned(),
        fingerprint: field("fp").to_owned(),
    }))
}

fn line_state(record: &HashMap<String, String>) -> LineState {
    let shipped = record
        .get("shipped")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // A short line keeps `avail` after its release, which only tombstones it.
    if let Some(available) = record.get("avail").and_then(|a| a.parse().ok()) {
        return LineState::Short { available };
    }
    match record.get("state").map(String::as_str) {
        Some("reserved") => LineState::Reserved {
            location: record.get("loc").cloned().unwrap_or_default(),
            shipped,
        },
        Some(_) => LineState::Released {
            location: record.get("loc").cloned(),
            shipped,
        },
        None => LineState::Pending,
    }
}
