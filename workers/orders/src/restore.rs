//! Restoring the order keys from the streams: what `stockflow_ops::rebuild` writes, through the
//! scripts beside the order scripts (`lua/restore_order.lua`, `lua/restore_line.lua`), so the
//! field names have one owner.

use std::time::Duration;

use stockflow_shared::{keys::Keys, redis_conn::RedisConnection};

use crate::read::Part;

/// One order line as the ledger describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRecord<'a> {
    /// The line's SKU.
    pub sku: &'a str,
    /// The order.
    pub order_id: &'a str,
    /// The line within the order.
    pub line_id: &'a str,
    /// Where it was reserved: one part, or one per location a split line took units from, in
    /// allocation order (each with its units shipped).
    pub parts: &'a [Part],
    /// Units reserved (all parts).
    pub quantity: i64,
    /// Units shipped so far (all parts).
    pub shipped: i64,
    /// The sales channel of its order ('' for none): a reserved line counts what it still
    /// holds as the channel's own reservations.
    pub channel: &'a str,
    /// Whether what it held was given back.
    pub released: bool,
    /// Per fulfilment: its event id, units shipped, units still held after it.
    pub shipments: &'a [(String, i64, i64)],
    /// Its backorder, when it was confirmed beyond stock.
    pub backorder: Option<&'a Backorder>,
}

/// A backordered line's place in its SKU's queue, as its ledger entries left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backorder {
    /// Where its units wait.
    pub location: String,
    /// Units still waiting (0: filled whole, or released: it leaves the queue).
    pub waiting: i64,
    /// Units backordered at placement (what its decision said).
    pub backordered: i64,
    /// Units filled since placement (part of its part at `location`).
    pub filled: i64,
    /// When they were expected, ms since the Unix epoch (0 unknown).
    pub expected_at_ms: i64,
    /// Its rank in the queue.
    pub rank: u64,
}

/// One order as `ORDER_RESULTS` and `ORDER_EVENTS` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord<'a> {
    /// `confirmed`, `rejected`, `cancelled`, `expired` or `fulfilled`.
    pub status: &'a str,
    /// Its lines, encoded by [`crate::command::encode_lines`].
    pub lines: &'a str,
    /// When its checkout hold expires, ms since the Unix epoch (0 when none).
    pub expires_at_ms: i64,
    /// Whether it was confirmed before it ended.
    pub confirmed: bool,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Whether it was committed.
    pub committed: bool,
    /// The sales channel it comes from ('' for none).
    pub channel: &'a str,
}

/// The restore scripts, loaded once.
#[derive(Debug, Clone)]
pub struct Restore {
    keys: Keys,
    order: redis::Script,
    line: redis::Script,
}

impl Restore {
    /// The scripts, for keys under `keys`' prefix.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            order: stockflow_shared::script(include_str!("../lua/restore_order.lua")),
            line: stockflow_shared::script(include_str!("../lua/restore_line.lua")),
        }
    }

    /// Writes a line's record (and, for a reserved line of a channel order, the channel's own
    /// reservations it holds); `expire_after` for a released line, `None` keeps it.
    pub async fn line(
        &self,
        redis: &RedisConnection,
        line: &LineRecord<'_>,
        expire_after: Option<Duration>,
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        let mut invocation =
            self.line
                .key(self.keys.order_line(line.sku, line.order_id, line.line_id));
        let parts: Vec<String> = line
            .parts
            .iter()
            .map(|p| format!("{}\u{1f}{}\u{1f}{}", p.location, p.quantity, p.shipped))
            .collect();
        let backorder = line.backorder.map_or_else(String::new, |b| {
            format!(
                "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
                b.location,
                b.waiting,
                b.backordered,
                b.expected_at_ms,
                b.rank,
                line.order_id,
                line.line_id
            )
        });
        invocation
            .key(self.keys.channels(line.sku))
            .key(self.keys.stock(line.sku))
            .key(self.keys.backorders(line.sku))
            .arg(if line.released {
                "released"
            } else {
                "reserved"
            })
            .arg(parts.join("\u{1e}"))
            .arg(line.quantity)
            .arg(line.shipped)
            .arg(expire_after.map(millis).unwrap_or_default())
            .arg(line.channel)
            .arg(backorder);
        for (fulfilment, units, left) in line.shipments {
            invocation.arg(fulfilment).arg(units).arg(left);
        }
        invocation.invoke_async::<i64>(&mut redis).await.map(drop)
    }

    /// Writes an order's record; `expire_after` for a final order, `None` keeps it.
    pub async fn order(
        &self,
        redis: &RedisConnection,
        order_id: &str,
        order: &OrderRecord<'_>,
        expire_after: Option<Duration>,
    ) -> redis::RedisResult<()> {
        let flag = |set: bool| if set { "1" } else { "" };
        let mut redis = redis.clone();
        self.order
            .key(self.keys.order(order_id))
            .arg(order.status)
            .arg(order.lines)
            .arg(order.expires_at_ms)
            .arg(if order.confirmed {
                "confirmed"
            } else {
                "placing"
            })
            .arg(flag(order.cancelled))
            .arg(flag(order.committed))
            .arg(expire_after.map(millis).unwrap_or_default())
            .arg(order.channel)
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }

    /// Schedules the expiry of `order_id`'s checkout hold at `due_ms`, in the schedule the hold
    /// expiry loop reads.
    pub async fn schedule_hold(
        &self,
        redis: &RedisConnection,
        order_id: &str,
        due_ms: i64,
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        redis::cmd("ZADD")
            .arg(self.keys.holds_due())
            .arg(due_ms)
            .arg(order_id)
            .query_async::<i64>(&mut redis)
            .await
            .map(drop)
    }
}

/// Whole milliseconds of `d`, at least 1 (`PEXPIRE` with 0 would delete the key at once).
fn millis(d: Duration) -> String {
    i64::try_from(d.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
        .to_string()
}
