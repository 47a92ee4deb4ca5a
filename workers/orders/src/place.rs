//! The placement saga: record the placement, reserve line by line, decide, report. Every step is
//! idempotent, so a redelivery after a crash anywhere replays it to the same end.

use stockflow_proto::{
    input::Category,
    v1::{order_result, Allocation, OrderConfirmed, OrderRejected, ReleaseReason, Shortfall},
};
use stockflow_shared::{channels::Known, consume::HandleError, consume::Outcome, now_ms};

use crate::{
    command::{Line, OrderCommand},
    kits::KitLines,
    read::Decision,
    records::End,
    replies::{Decide, Placement, Reservation},
    OrderHandler,
};

impl OrderHandler {
    /// Places `order`: all of its lines reserved, or none. `sequence` is the placement's stream
    /// sequence: among the reservations that share a script call it decides who comes first.
    pub(crate) async fn place(
        &self,
        order: &OrderCommand,
        lines: &[Line],
        kits: &KitLines,
        hold_seconds: i64,
        sequence: u64,
    ) -> Result<Outcome, HandleError> {
        let channel = order.channel.as_str();
        // A placement recorded before was judged then: its redelivery is answered from the
        // record even if the channel changed or went since.
        if !channel.is_empty() && !self.recorded(&order.order_id).await? {
            self.check_channel(channel, lines).await?;
        }
        let mut outcome = Outcome::Applied;
        match self
            .begin_placement(&order.order_id, lines, hold_seconds, channel)
            .await?
        {
            Placement::Conflict => {
                return Err(HandleError::malformed(
                    "order_placed",
                    "order_conflict",
                    format!(
                        "order {:?} was already placed with different lines",
                        order.order_id
                    ),
                ));
            }
            Placement::Cancelled => {
                self.publish_released(order, ReleaseReason::Cancelled)
                    .await?;
                self.mark_settled(&order.order_id).await?;
                return Ok(Outcome::Applied);
            }
            Placement::Decided(decided) => {
                outcome = Outcome::Duplicate;
                // Replay the saga only to finish a decision a crash left unpublished; for an
                // ended order, finish a release a crash may have interrupted.
                if !decided.stands() {
                    self.end(order, End::Finish).await?;
                    return Ok(outcome);
                }
                if decided.published {
                    return Ok(outcome);
                }
            }
            Placement::Go => {}
        }
        // Reserve every line (each in its SKU's batch); records answer replays identically.
        let reservations = self.reserve(order, lines, sequence).await?;
        let confirmed = reservations
            .iter()
            .all(|r| matches!(r, Reservation::Reserved { .. }));
        if !confirmed {
            // Compensate: give back what was taken (idempotent; blocks late reservations too).
            self.release_lines(order, lines, channel).await?;
        }
        let expires_at_ms = if confirmed && hold_seconds > 0 {
            now_ms() + hold_seconds * 1000
        } else {
            0
        };
        let decision = if confirmed {
            Decision::Confirmed
        } else {
            Decision::Rejected
        };
        let expires_at_ms = match self
            .record_decision(&order.order_id, decision, expires_at_ms)
            .await?
        {
            Decide::Recorded => {
                let verdict = decision.status().as_str();
                metrics::counter!("stockflow_reservations_total", "outcome" => verdict)
                    .increment(1);
                expires_at_ms
            }
            Decide::Cancelled => {
                self.release_lines(order, lines, channel).await?;
                self.publish_released(order, ReleaseReason::Cancelled)
                    .await?;
                self.mark_settled(&order.order_id).await?;
                return Ok(outcome);
            }
            // Decided by an earlier delivery: publish that same decision again — unless the order
            // has ended since (cancelled while this delivery was reserving): then this delivery's
            // view of the lines is no decision; finish the release instead.
            Decide::Decided(decided) if !decided.stands() => {
                self.end(order, End::Finish).await?;
                return Ok(outcome);
            }
            Decide::Decided(_) => self.hold_expiry(&order.order_id).await?,
        };
        if confirmed && expires_at_ms > 0 {
            self.schedule_hold(&order.order_id, expires_at_ms).await?;
        }
        let result = if confirmed {
            // One allocation per part: a split line has several with its line_id.
            let allocations = lines.iter().zip(&reservations).flat_map(|(line, r)| {
                let (parts, backordered, expected_at_ms) = match r {
                    Reservation::Reserved {
                        parts,
                        backordered,
                        expected_at_ms,
                        ..
                    } => (parts.as_slice(), *backordered, *expected_at_ms),
                    _ => (&[][..], 0, 0),
                };
                // The backordered units wait at the last part's location (the script puts it
                // last, or it is the only one).
                let last = parts.len().saturating_sub(1);
                parts.iter().enumerate().map(move |(i, part)| {
                    let waiting = if i == last { backordered } else { 0 };
                    let (kit_sku, kit_line_id) =
                        kits.get(&line.line_id).cloned().unwrap_or_default();
                    Allocation {
                        line_id: line.line_id.clone(),
                        sku: line.sku.clone(),
                        location: part.location.clone(),
                        quantity: part.quantity,
                        backordered: waiting,
                        backorder_expected_at_ms: if waiting > 0 { expected_at_ms } else { 0 },
                        kit_sku,
                        kit_line_id,
                    }
                })
            });
            order_result::Result::Confirmed(OrderConfirmed {
                lines: allocations.collect(),
                expires_at_ms,
            })
        } else {
            let short = lines
                .iter()
                .zip(&reservations)
                .filter_map(|(line, r)| match r {
                    Reservation::Short { available } => Some(Shortfall {
                        line_id: line.line_id.clone(),
                        sku: line.sku.clone(),
                        requested: line.quantity,
                        available: *available,
                    }),
                    _ => None,
                });
            order_result::Result::Rejected(OrderRejected {
                short_lines: short.collect(),
            })
        };
        self.publish_result(order, "decision", result).await?;
        // Later duplicates of the placement publish nothing, even past JetStream's window.
        self.mark_published(&order.order_id).await?;
        Ok(outcome)
    }

    /// Reserves every line — concurrently, each line a call in its SKU's batch, in stream order
    /// there — then records the reservations in the ledger, all lines' entries published
    /// together; also for a line released before this delivery got here, in case its placer died
    /// before recording it.
    async fn reserve(
        &self,
        order: &OrderCommand,
        lines: &[Line],
        sequence: u64,
    ) -> Result<Vec<Reservation>, HandleError> {
        let channel = order.channel.as_str();
        let reservations =
            futures::future::try_join_all(lines.iter().enumerate().map(|(index, line)| {
                self.reserve_line(&order.order_id, line, channel, (sequence, index))
            }))
            .await?;
        let changes = lines
            .iter()
            .zip(&reservations)
            .filter_map(|(line, r)| match r {
                Reservation::Reserved { change, .. } | Reservation::Released { change } => {
                    Some(self.publish_change(order, line, channel, "reserve", change.as_ref()))
                }
                Reservation::Short { .. } => None,
            });
        futures::future::try_join_all(changes).await?;
        Ok(reservations)
    }

    /// Judges the channel an order comes from before anything is recorded: it must be defined
    /// (never defined or removed: `unknown_channel`), and a line that names a location must name
    /// one of the channel's (`invalid_location`).
    /// Whether the order has a record: a placement (or a cancel) of it was taken already.
    async fn recorded(&self, order_id: &str) -> Result<bool, HandleError> {
        let mut redis = self.redis.clone();
        redis::cmd("EXISTS")
            .arg(self.keys.order(order_id))
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)
    }

    async fn check_channel(&self, channel: &str, lines: &[Line]) -> Result<(), HandleError> {
        let defined = match self.book.lookup(channel).await.map_err(HandleError::nats)? {
            Some(Known::Defined(defined)) => defined,
            Some(Known::Removed(_)) | None => {
                return Err(HandleError::malformed(
                    "order_placed",
                    Category::UnknownChannel.as_str(),
                    format!("channel {channel:?} is not defined (never, or removed)"),
                ));
            }
        };
        for (index, line) in lines.iter().enumerate() {
            if !line.location.is_empty() && !defined.locations.contains(&line.location) {
                return Err(HandleError::malformed(
                    "order_placed",
                    Category::InvalidLocation.as_str(),
                    format!(
                        "lines[{index}].location {:?} is not one of channel {channel:?}'s \
                         locations ({}): a channel order reserves only from them",
                        line.location,
                        defined.locations.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}
