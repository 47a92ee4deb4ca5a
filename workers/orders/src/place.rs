//! The placement saga: record the placement, reserve line by line, decide, report. Every step is
//! idempotent, so a redelivery after a crash anywhere replays it to the same end.

use stockflow_proto::v1::{
    order_result, Allocation, OrderConfirmed, OrderRejected, ReleaseReason, Shortfall,
};
use stockflow_shared::{consume::HandleError, consume::Outcome, now_ms};

use crate::{
    command::{Line, OrderCommand},
    read::Decision,
    records::End,
    replies::{Decide, Placement, Reservation},
    OrderHandler,
};

impl OrderHandler {
    /// Places `order`: all of its lines reserved, or none.
    pub(crate) async fn place(
        &self,
        order: &OrderCommand,
        lines: &[Line],
        hold_seconds: i64,
    ) -> Result<Outcome, HandleError> {
        let mut outcome = Outcome::Applied;
        match self
            .begin_placement(&order.order_id, lines, hold_seconds)
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
        // Reserve line by line; records answer replays identically.
        let mut reservations = Vec::with_capacity(lines.len());
        for line in lines {
            reservations.push(self.reserve(order, line).await?);
        }
        let confirmed = reservations
            .iter()
            .all(|r| matches!(r, Reservation::Reserved { .. }));
        if !confirmed {
            // Compensate: give back what was taken (idempotent; blocks late reservations too).
            self.release_lines(order, lines).await?;
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
                self.release_lines(order, lines).await?;
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
            let allocations = lines
                .iter()
                .zip(&reservations)
                .filter_map(|(line, r)| match r {
                    Reservation::Reserved { location, .. } => Some(Allocation {
                        line_id: line.line_id.clone(),
                        sku: line.sku.clone(),
                        location: location.clone(),
                        quantity: line.quantity,
                    }),
                    _ => None,
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

    /// Reserves one line and records the reservation in the ledger — also for a line released
    /// before this delivery got here, in case its placer died before recording it.
    async fn reserve(&self, order: &OrderCommand, line: &Line) -> Result<Reservation, HandleError> {
        let reservation = self.reserve_line(&order.order_id, line).await?;
        match &reservation {
            Reservation::Reserved { change, .. } | Reservation::Released { change } => {
                self.publish_change(order, line, "reserve", change.as_ref())
                    .await?;
            }
            Reservation::Short { .. } => {}
        }
        Ok(reservation)
    }
}
