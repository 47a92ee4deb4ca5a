//! Every read and write of the order records in Redis: the four scripts, each call returning its
//! typed reply ([`crate::replies`]) and going through the worker's coalesced calls
//! ([`crate::batch`]), and the few plain reads a step needs. The steps call these by name and
//! never spell a Redis command (the hold schedule is in [`crate::expire`]).

use stockflow_shared::consume::HandleError;

use crate::{
    batch::{Call, ScriptKind},
    command::{decode_lines, encode_lines, placement_fingerprint, Line},
    read::{decode_parts, Decision, OrderStatus, Part},
    replies::{
        Committed, Decide, Ending, Marked, Placement, Release, Reply, Reservation, Shipment,
    },
    OrderHandler,
};

/// How an order ends: the `lua/order.lua` actions that release its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// A cancel command.
    Cancel,
    /// Its checkout hold ran out.
    Expire,
    /// Its last shipment, or every unit shipped.
    Fulfilled,
    /// Nothing new: only finish a release a crash interrupted.
    Finish,
}

impl End {
    /// The script's action.
    fn action(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Expire => "expire",
            Self::Fulfilled => "fulfilled",
            Self::Finish => "finish",
        }
    }
}

impl OrderHandler {
    /// Runs one `lua/order.lua` action on `order_id`'s record.
    async fn order_call<R: Reply>(
        &self,
        order_id: &str,
        action: &str,
        args: &[String],
    ) -> Result<R, HandleError> {
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(action.to_owned());
        argv.extend_from_slice(args);
        self.calls
            .run(Call {
                script: ScriptKind::Order,
                keys: vec![self.keys.order(order_id)],
                args: argv,
                rank: (0, 0),
            })
            .await
    }

    /// Records a placement (or meets an earlier one): `place`.
    pub(crate) async fn begin_placement(
        &self,
        order_id: &str,
        lines: &[Line],
        hold_seconds: i64,
        channel: &str,
    ) -> Result<Placement, HandleError> {
        let args = [
            placement_fingerprint(lines, hold_seconds, channel),
            encode_lines(lines),
            hold_seconds.to_string(),
            channel.to_owned(),
        ];
        self.order_call(order_id, "place", &args).await
    }

    /// Records this delivery's decision, unless another came first: `decide`.
    pub(crate) async fn record_decision(
        &self,
        order_id: &str,
        decision: Decision,
        expires_at_ms: i64,
    ) -> Result<Decide, HandleError> {
        let args = [
            decision.status().as_str().to_owned(),
            expires_at_ms.to_string(),
        ];
        self.order_call(order_id, "decide", &args).await
    }

    /// Marks the decision as stored in JetStream: `published`.
    pub(crate) async fn mark_published(&self, order_id: &str) -> Result<(), HandleError> {
        let Marked = self
            .order_call(order_id, "published", &[self.retention.to_string()])
            .await?;
        Ok(())
    }

    /// Marks the release as finished: `settled`.
    pub(crate) async fn mark_settled(&self, order_id: &str) -> Result<(), HandleError> {
        let Marked = self
            .order_call(order_id, "settled", &[self.retention.to_string()])
            .await?;
        Ok(())
    }

    /// Records that payment is done, so the hold never expires: `commit`.
    pub(crate) async fn record_commit(&self, order_id: &str) -> Result<(), HandleError> {
        let Committed = self
            .order_call(order_id, "commit", &[self.retention.to_string()])
            .await?;
        Ok(())
    }

    /// Ends the order `how` says (or finds it ended): what the caller must release.
    pub(crate) async fn end_order(&self, order_id: &str, how: End) -> Result<Ending, HandleError> {
        self.order_call(order_id, how.action(), &[self.retention.to_string()])
            .await
    }

    /// The channel specs a line script computes with: every defined channel (the script
    /// recomputes those drawing from a location whose levels it changed), and the order's
    /// `channel` as the book holds it (also when removed).
    fn channel_specs(&self, channel: &str) -> String {
        let named = if channel.is_empty() {
            None
        } else {
            self.book.get(channel)
        };
        self.book
            .specs_for(named.as_ref().map(|known| (channel, known)))
    }

    /// Runs a per-line script on `line`'s record, in the SKU's slot; `rank` orders it among the
    /// calls of its batch (see [`Call::rank`]).
    async fn line_call<R: Reply>(
        &self,
        script: ScriptKind,
        order_id: &str,
        line: &Line,
        args: Vec<String>,
        rank: (u64, usize),
    ) -> Result<R, HandleError> {
        let keys = vec![
            self.keys.order_line(&line.sku, order_id, &line.line_id),
            self.keys.stock(&line.sku),
            self.keys.policy(&line.sku),
            self.keys.channels(&line.sku),
        ];
        self.calls
            .run(Call {
                script,
                keys,
                args,
                rank,
            })
            .await
    }

    /// Reserves `line` at one location that covers it whole, or for an order from `channel`
    /// across the channel's locations (`lua/reserve_line.lua`). Among the reservations of one
    /// batch on the SKU's slot it comes in `rank` order: its input's stream sequence, then its
    /// position in the order.
    pub(crate) async fn reserve_line(
        &self,
        order_id: &str,
        line: &Line,
        channel: &str,
        rank: (u64, usize),
    ) -> Result<Reservation, HandleError> {
        let args = vec![
            line.quantity.to_string(),
            line.location.clone(),
            self.location_priority.clone(),
            self.ttl.to_string(),
            channel.to_owned(),
            self.channel_specs(channel),
            backorder_rank(rank),
            order_id.to_owned(),
            line.line_id.clone(),
        ];
        self.line_call(ScriptKind::Reserve, order_id, line, args, rank)
            .await
    }

    /// Gives back what `line` (of an order from `channel`) still holds, every part
    /// (`lua/release_line.lua`).
    pub(crate) async fn release_line(
        &self,
        order_id: &str,
        line: &Line,
        channel: &str,
    ) -> Result<Release, HandleError> {
        let args = vec![self.ttl.to_string(), self.channel_specs(channel)];
        self.line_call(ScriptKind::Release, order_id, line, args, (0, 0))
            .await
    }

    /// Ships `units` of `line` (of an order from `channel`) for the fulfilment `event_id`, from
    /// its parts in allocation order (`lua/ship_line.lua`).
    pub(crate) async fn ship_line(
        &self,
        order_id: &str,
        line: &Line,
        channel: &str,
        units: i64,
        event_id: &str,
    ) -> Result<Shipment, HandleError> {
        let args = vec![
            units.to_string(),
            event_id.to_owned(),
            self.channel_specs(channel),
        ];
        self.line_call(ScriptKind::Ship, order_id, line, args, (0, 0))
            .await
    }

    /// When the order's hold expires, ms since the Unix epoch; 0 when it has none (a rejected
    /// order, or no hold asked for).
    pub(crate) async fn hold_expiry(&self, order_id: &str) -> Result<i64, HandleError> {
        let mut redis = self.redis.clone();
        let value: Option<i64> = redis::cmd("HGET")
            .arg(self.keys.order(order_id))
            .arg("expires")
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        Ok(value.unwrap_or(0))
    }

    /// Where `line` was reserved at placement, one part per location (a backordered line's as
    /// they were then, not as fills grew them), with its units backordered then and their
    /// expected date (0, 0 for none); a record that keeps no location (never reserved) gives one
    /// part at '' for the whole line.
    pub(crate) async fn reserved_parts(
        &self,
        order_id: &str,
        line: &Line,
    ) -> Result<(Vec<Part>, i64, i64), HandleError> {
        let mut redis = self.redis.clone();
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        );
        let (parts, location, placed, backordered, expected_at_ms): Fields = redis::cmd("HMGET")
            .arg(self.keys.order_line(&line.sku, order_id, &line.line_id))
            .arg("parts")
            .arg("loc")
            .arg("p0")
            .arg("bq")
            .arg("boe")
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        let (backordered, expected_at_ms) = (backordered.unwrap_or(0), expected_at_ms.unwrap_or(0));
        if let Some(parts) = placed.or(parts).as_deref().and_then(decode_parts) {
            return Ok((parts, backordered, expected_at_ms));
        }
        Ok((
            vec![Part {
                location: location.unwrap_or_default(),
                quantity: line.quantity,
                shipped: 0,
            }],
            0,
            0,
        ))
    }

    /// The order's status (`None` before its placement), its lines and its channel.
    pub(crate) async fn placed_order(
        &self,
        order_id: &str,
    ) -> Result<(Option<OrderStatus>, Vec<Line>, String), HandleError> {
        let mut redis = self.redis.clone();
        let (status, lines, channel): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(self.keys.order(order_id))
                .arg("status")
                .arg("lines")
                .arg("ch")
                .query_async(&mut redis)
                .await
                .map_err(HandleError::redis)?;
        let status = match status {
            None => None,
            Some(text) => {
                Some(
                    OrderStatus::parse(&text).ok_or_else(|| HandleError::Unexpected {
                        reason: format!("order {order_id:?} has the unknown status {text:?}"),
                    })?,
                )
            }
        };
        Ok((
            status,
            decode_lines(&lines.unwrap_or_default()),
            channel.unwrap_or_default(),
        ))
    }

    /// Units `line` still holds; 0 when it has no record (it holds nothing).
    pub(crate) async fn units_held(&self, order_id: &str, line: &Line) -> Result<i64, HandleError> {
        let mut redis = self.redis.clone();
        let (quantity, shipped): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.keys.order_line(&line.sku, order_id, &line.line_id))
            .arg("qty")
            .arg("shipped")
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        Ok(quantity.unwrap_or(0) - shipped.unwrap_or(0))
    }
}

/// A line's place in its SKU's backorder queue: its order's stream sequence, then its index
/// (an order has at most 100 lines, so 128 slots per order keep every rank distinct and exact
/// in a sorted set's score up to 2^46 placements). A placement without a usable sequence never
/// backorders: '' tells the script so.
fn backorder_rank((sequence, index): (u64, usize)) -> String {
    if sequence == 0 || sequence >= 1 << 46 {
        String::new()
    } else {
        (sequence * 128 + index as u64).to_string()
    }
}
