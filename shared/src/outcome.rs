//! What a stock script returns: the levels it changed and the alerts those changes crossed.
//! The encoding is described in `lua/prelude.lua`.

use stockflow_proto::v1::{AlertKind, Levels};

/// One (sku, location) changed by one event.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelChange {
    /// Location ('' only for a SKU-wide policy with no stock anywhere).
    pub location: String,
    /// Ledger kind, e.g. `sold`, `transferred_in`, `reserved`.
    pub kind: String,
    /// Levels before.
    pub before: Levels,
    /// Levels after.
    pub after: Levels,
    /// Low-stock threshold in force, if any.
    pub threshold: Option<i64>,
    /// Alerts the change crossed into.
    pub alerts: Vec<AlertKind>,
    /// The purchase order an `expected`, `expected_cancelled` or `received` against one
    /// changed, as it stands after the change.
    pub purchase_order: Option<PurchaseOrder>,
    /// The backordered order line this change reserved, filled or released units for.
    pub backorder: Option<BackorderLine>,
}

/// A backordered order line, as one change left it (see `lua/prelude.lua`, "Backorders").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackorderLine {
    /// The order.
    pub order_id: String,
    /// Its line.
    pub line_id: String,
    /// Units this change filled from stock that became available (0 unless `backorder_filled`).
    pub filled: i64,
    /// Units of the line still backordered after it.
    pub backordered: i64,
    /// When they are expected, ms since the Unix epoch; 0 unknown.
    pub expected_at_ms: i64,
    /// The line's place in its SKU's queue (lower is filled first).
    pub rank: u64,
}

/// One purchase order at one location, after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseOrder {
    /// Its reference.
    pub reference: String,
    /// Units it still has outstanding there (0: fully received or cancelled).
    pub outstanding: i64,
    /// Its expected date, ms since the Unix epoch (0 when nothing is outstanding).
    pub expected_at_ms: i64,
}

/// What a sales channel may sell of the SKU, recomputed by the same script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelChange {
    /// The channel id.
    pub channel: String,
    /// What it listed before (0 the first time).
    pub before: i64,
    /// What it lists now.
    pub after: i64,
    /// The new version; 0 when the quantity did not change (nothing to publish).
    pub version: u64,
    /// The rules version it was computed with.
    pub rules_version: u64,
    /// The pool it was computed from.
    pub pool: i64,
    /// Units a sale of this channel took beyond what it offered.
    pub oversold: i64,
    /// The oversold crossing raises an alert (the first oversold sale since it offered units).
    pub alert: bool,
}

/// How a script ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The changes were applied.
    Applied,
    /// A count's expected on_hand did not match: nothing changed.
    StaleCount {
        /// What the count expected.
        expected: i64,
        /// What on_hand was.
        actual: i64,
    },
}

/// The outcome of one event, as stored in its dedup record.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Redis server time of the change, ms since the Unix epoch.
    pub applied_at_ms: i64,
    /// Applied or not.
    pub verdict: Verdict,
    /// Levels changed, in order.
    pub changes: Vec<LevelChange>,
    /// Channel quantities recomputed, in order.
    pub channels: Vec<ChannelChange>,
}

/// A stored outcome that does not parse: a bug or a foreign writer, never bad input.
#[derive(Debug, thiserror::Error)]
#[error("unreadable script outcome: {0}")]
pub struct OutcomeParseError(String);

const RECORD: char = '\u{1e}';
/// The first field of a channel record.
const CHANNEL_MARK: &str = "\u{1d}";
/// The first field of a backorder record (it belongs to the change before it).
const BACKORDER_MARK: &str = "\u{1c}";
const FIELD: char = '\u{1f}';

fn int(field: Option<&str>, what: &str) -> Result<i64, OutcomeParseError> {
    field
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| OutcomeParseError(format!("{what} is not an integer")))
}

fn alert_kind(name: &str) -> Result<AlertKind, OutcomeParseError> {
    Ok(match name {
        "low_stock" => AlertKind::LowStock,
        "out_of_stock" => AlertKind::OutOfStock,
        "back_in_stock" => AlertKind::BackInStock,
        "negative_stock" => AlertKind::NegativeStock,
        "channel_oversold" => AlertKind::ChannelOversold,
        other => return Err(OutcomeParseError(format!("unknown alert {other:?}"))),
    })
}

/// The subject segment and metric label of an alert kind.
pub fn alert_name(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LowStock => "low_stock",
        AlertKind::OutOfStock => "out_of_stock",
        AlertKind::BackInStock => "back_in_stock",
        AlertKind::NegativeStock => "negative_stock",
        AlertKind::ChannelOversold => "channel_oversold",
        AlertKind::Unspecified => "unspecified",
    }
}

impl Outcome {
    /// Parses a stored outcome.
    pub fn parse(text: &str) -> Result<Self, OutcomeParseError> {
        let mut records = text.split(RECORD);
        let head: Vec<&str> = records.next().unwrap_or_default().split(FIELD).collect();
        if head.first() != Some(&"1") || head.len() != 5 {
            return Err(OutcomeParseError("bad header".into()));
        }
        let applied_at_ms = int(head.get(1).copied(), "applied_at")?;
        let verdict = match head[2] {
            "applied" => Verdict::Applied,
            "stale" => Verdict::StaleCount {
                expected: int(Some(head[3]), "expected")?,
                actual: int(Some(head[4]), "actual")?,
            },
            other => return Err(OutcomeParseError(format!("unknown result {other:?}"))),
        };
        let mut changes = Vec::new();
        let mut channels = Vec::new();
        for record in records {
            if let Some(rest) = record.strip_prefix(CHANNEL_MARK) {
                channels.push(parse_channel(rest)?);
            } else if let Some(rest) = record.strip_prefix(BACKORDER_MARK) {
                let line = parse_backorder(rest)?;
                let change: &mut LevelChange = changes.last_mut().ok_or_else(|| {
                    OutcomeParseError("a backorder record before any change".into())
                })?;
                change.backorder = Some(line);
            } else {
                changes.push(parse_change(record)?);
            }
        }
        Ok(Self {
            applied_at_ms,
            verdict,
            changes,
            channels,
        })
    }
}

fn parse_channel(record: &str) -> Result<ChannelChange, OutcomeParseError> {
    // The mark's own field separator comes first.
    let f: Vec<&str> = record
        .strip_prefix(FIELD)
        .unwrap_or(record)
        .split(FIELD)
        .collect();
    if f.len() != 8 {
        return Err(OutcomeParseError(format!(
            "channel record has {} fields",
            f.len()
        )));
    }
    let unsigned = |i: usize, what: &str| -> Result<u64, OutcomeParseError> {
        f[i].parse()
            .map_err(|_| OutcomeParseError(format!("{what} is not an unsigned integer")))
    };
    Ok(ChannelChange {
        channel: f[0].to_owned(),
        before: int(Some(f[1]), "before")?,
        after: int(Some(f[2]), "after")?,
        version: unsigned(3, "version")?,
        rules_version: unsigned(4, "rules_version")?,
        pool: int(Some(f[5]), "pool")?,
        oversold: int(Some(f[6]), "oversold")?,
        alert: f[7] == "1",
    })
}

fn parse_backorder(record: &str) -> Result<BackorderLine, OutcomeParseError> {
    let f: Vec<&str> = record
        .strip_prefix(FIELD)
        .unwrap_or(record)
        .split(FIELD)
        .collect();
    if f.len() != 6 {
        return Err(OutcomeParseError(format!(
            "backorder record has {} fields",
            f.len()
        )));
    }
    Ok(BackorderLine {
        order_id: f[0].to_owned(),
        line_id: f[1].to_owned(),
        filled: int(Some(f[2]), "filled")?,
        backordered: int(Some(f[3]), "backordered")?,
        expected_at_ms: int(Some(f[4]), "expected_at")?,
        rank: f[5]
            .parse()
            .map_err(|_| OutcomeParseError("rank is not an unsigned integer".into()))?,
    })
}

fn parse_change(record: &str) -> Result<LevelChange, OutcomeParseError> {
    let f: Vec<&str> = record.split(FIELD).collect();
    // 12 fields as stored before incoming and unsellable units existed; 22 with them; 25 with
    // a purchase order.
    if ![12, 22, 25].contains(&f.len()) {
        return Err(OutcomeParseError(format!("change has {} fields", f.len())));
    }
    let levels = |i: usize, more: usize| -> Result<Levels, OutcomeParseError> {
        let extra = |j: usize, what: &str| -> Result<i64, OutcomeParseError> {
            if f.len() == 12 {
                Ok(0)
            } else {
                int(Some(f[more + j]), what)
            }
        };
        Ok(Levels {
            on_hand: int(Some(f[i]), "on_hand")?,
            reserved: int(Some(f[i + 1]), "reserved")?,
            safety_stock: int(Some(f[i + 2]), "safety_stock")?,
            available: int(Some(f[i + 3]), "available")?,
            incoming: extra(0, "incoming")?,
            incoming_expected_at_ms: extra(1, "incoming_expected_at_ms")?,
            damaged: extra(2, "damaged")?,
            quality_control: extra(3, "quality_control")?,
            held: extra(4, "held")?,
        })
    };
    let purchase_order = if f.len() == 25 {
        Some(PurchaseOrder {
            reference: f[22].to_owned(),
            outstanding: int(Some(f[23]), "outstanding")?,
            expected_at_ms: int(Some(f[24]), "expected_at")?,
        })
    } else {
        None
    };
    Ok(LevelChange {
        location: f[0].to_owned(),
        kind: f[1].to_owned(),
        before: levels(2, 12)?,
        after: levels(6, 17)?,
        purchase_order,
        backorder: None,
        threshold: if f[10].is_empty() {
            None
        } else {
            Some(int(Some(f[10]), "threshold")?)
        },
        alerts: f[11]
            .split(',')
            .filter(|a| !a.is_empty())
            .map(alert_kind)
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_transfer() {
        let text = "1\u{1f}1700\u{1f}applied\u{1f}\u{1f}\u{1e}a\u{1f}transferred_out\u{1f}5\u{1f}0\u{1f}0\u{1f}5\u{1f}0\u{1f}0\u{1f}0\u{1f}0\u{1f}\u{1f}out_of_stock\u{1e}b\u{1f}transferred_in\u{1f}0\u{1f}0\u{1f}1\u{1f}-1\u{1f}5\u{1f}0\u{1f}1\u{1f}4\u{1f}2\u{1f}back_in_stock";
        let outcome = Outcome::parse(text).expect("valid");
        assert_eq!(outcome.applied_at_ms, 1700);
        assert_eq!(outcome.verdict, Verdict::Applied);
        assert_eq!(outcome.changes.len(), 2);
        assert_eq!(outcome.changes[0].alerts, vec![AlertKind::OutOfStock]);
        assert_eq!(outcome.changes[1].threshold, Some(2));
        assert_eq!(outcome.changes[1].before.available, -1);
    }

    #[test]
    fn parses_channel_records_apart_from_level_changes() {
        let text = "1\u{1f}5\u{1f}applied\u{1f}\u{1f}\u{1e}a\u{1f}sold\u{1f}5\u{1f}0\u{1f}0\u{1f}5\u{1f}3\u{1f}0\u{1f}0\u{1f}3\u{1f}\u{1f}\u{1e}\u{1d}\u{1f}market\u{1f}4\u{1f}0\u{1f}7\u{1f}2\u{1f}3\u{1f}1\u{1f}1";
        let outcome = Outcome::parse(text).expect("valid");
        assert_eq!(outcome.changes.len(), 1);
        assert_eq!(
            outcome.channels,
            vec![ChannelChange {
                channel: "market".into(),
                before: 4,
                after: 0,
                version: 7,
                rules_version: 2,
                pool: 3,
                oversold: 1,
                alert: true,
            }]
        );
    }

    #[test]
    fn parses_incoming_unsellable_and_a_purchase_order() {
        let f = |v: &[&str]| v.join("\u{1f}");
        let change = f(&[
            "a", "received", "5", "0", "0", "5", "8", "0", "0", "7", "", "", "4", "9", "0", "0",
            "1", "1", "9", "0", "0", "1", "PO-1", "1", "9",
        ]);
        let outcome = Outcome::parse(&format!("1\u{1f}5\u{1f}applied\u{1f}\u{1f}\u{1e}{change}"))
            .expect("valid");
        let c = &outcome.changes[0];
        assert_eq!((c.before.incoming, c.after.incoming), (4, 1));
        assert_eq!((c.after.held, c.after.incoming_expected_at_ms), (1, 9));
        assert_eq!(
            c.purchase_order,
            Some(PurchaseOrder {
                reference: "PO-1".into(),
                outstanding: 1,
                expected_at_ms: 9
            })
        );
        let short = f(&[
            "a", "sold", "5", "0", "0", "5", "4", "0", "0", "4", "", "", "1",
        ]);
        assert!(
            Outcome::parse(&format!("1\u{1f}5\u{1f}applied\u{1f}\u{1f}\u{1e}{short}")).is_err()
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Outcome::parse("nonsense").is_err());
        assert!(Outcome::parse("1\u{1f}x\u{1f}applied\u{1f}\u{1f}").is_err());
    }
}
