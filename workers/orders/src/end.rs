//! How an order ends — cancelled, expired, or the rest of a fulfilment — and the release of
//! what it holds. Every step is idempotent; the order is marked settled only at the end, so a
//! redelivery completes an interrupted release.

use stockflow_proto::v1::{order_result, Allocation, OrderConfirmed, ReleaseReason};
use stockflow_shared::consume::{HandleError, Outcome};

use crate::{
    command::{Line, OrderCommand},
    read::OrderStatus,
    records::End,
    replies::{Ending, Release},
    OrderHandler,
};

impl OrderHandler {
    /// Ends the order `how` says — or, for [`End::Finish`], only finishes a release a crash
    /// interrupted: releases whatever the order holds and says why.
    pub(crate) async fn end(&self, order: &OrderCommand, how: End) -> Result<Outcome, HandleError> {
        let Ending::Release {
            before,
            lines,
            now,
            published,
            channel,
        } = self.end_order(&order.order_id, how).await?
        else {
            return Ok(Outcome::Duplicate);
        };
        self.release_lines(order, &lines, &channel).await?;
        if now == OrderStatus::Placing {
            // A cancel that overtook the decision: the placer finishes the order.
            return Ok(Outcome::Applied);
        }
        self.unschedule_hold(&order.order_id).await?;
        if before == Some(OrderStatus::Confirmed) {
            if !published {
                // Its placer died between deciding and reporting: the confirmation comes first.
                self.publish_stored_confirmation(order, &lines).await?;
            }
            let reason = match now {
                OrderStatus::Expired => ReleaseReason::Expired,
                OrderStatus::Fulfilled => ReleaseReason::FulfilledRemainder,
                _ => ReleaseReason::Cancelled,
            };
            self.publish_released(order, reason).await?;
        } else {
            // Cancelled before its placement (no status) or its decision (`placing`): the placer
            // reports that, unless it died first — then its redelivery, or a repeated cancel, does.
            self.publish_released(order, ReleaseReason::Cancelled)
                .await?;
        }
        self.mark_settled(&order.order_id).await?;
        Ok(Outcome::Applied)
    }

    /// Releases every line of an order from `channel` (each at most once, every part) — the
    /// lines concurrently, each a call in its SKU's batch — and records the releases in the
    /// ledger, their entries published together.
    pub(crate) async fn release_lines(
        &self,
        order: &OrderCommand,
        lines: &[Line],
        channel: &str,
    ) -> Result<(), HandleError> {
        let releases = futures::future::try_join_all(
            lines
                .iter()
                .map(|line| self.release_line(&order.order_id, line, channel)),
        )
        .await?;
        let changes = lines
            .iter()
            .zip(&releases)
            .filter_map(|(line, release)| match release {
                Release::Released { change } => {
                    Some(self.publish_change(order, line, channel, "release", change.as_ref()))
                }
                Release::Tombstone | Release::Nothing => None,
            });
        futures::future::try_join_all(changes).await?;
        let released = releases
            .iter()
            .filter(|release| matches!(release, Release::Released { .. }))
            .count();
        metrics::counter!("stockflow_reservations_total", "outcome" => "released")
            .increment(released as u64);
        Ok(())
    }

    /// Publishes the confirmation an order's placer stored but did not report, rebuilt from the
    /// line records (each keeps the parts it was reserved in), and marks it published.
    async fn publish_stored_confirmation(
        &self,
        order: &OrderCommand,
        lines: &[Line],
    ) -> Result<(), HandleError> {
        let mut allocations = Vec::with_capacity(lines.len());
        for line in lines {
            let (parts, backordered, expected_at_ms) =
                self.reserved_parts(&order.order_id, line).await?;
            // As the placer reports it: the backordered units on the last part.
            let last = parts.len().saturating_sub(1);
            for (i, part) in parts.into_iter().enumerate() {
                let waiting = if i == last { backordered } else { 0 };
                allocations.push(Allocation {
                    line_id: line.line_id.clone(),
                    sku: line.sku.clone(),
                    location: part.location,
                    quantity: part.quantity,
                    backordered: waiting,
                    backorder_expected_at_ms: if waiting > 0 { expected_at_ms } else { 0 },
                    // Only the decision knows which kit line a part belongs to.
                    ..Default::default()
                });
            }
        }
        let result = order_result::Result::Confirmed(OrderConfirmed {
            lines: allocations,
            expires_at_ms: self.hold_expiry(&order.order_id).await?,
        });
        self.publish_result(order, "decision", result).await?;
        self.mark_published(&order.order_id).await?;
        Ok(())
    }
}
