//! Payment and shipping of a confirmed order: a commit stops its hold from expiring; a
//! fulfilment ships units line by line, and the last one (or the one that ships the last unit)
//! ends the order, releasing what is left.

use stockflow_shared::consume::{HandleError, Outcome};

use crate::{
    command::OrderCommand, read::OrderStatus, records::End, replies::Shipment, OrderHandler,
};

impl OrderHandler {
    /// Records that the order is paid: its hold no longer expires.
    pub(crate) async fn commit(&self, order: &OrderCommand) -> Result<Outcome, HandleError> {
        self.record_commit(&order.order_id).await?;
        self.unschedule_hold(&order.order_id).await?;
        Ok(Outcome::Applied)
    }

    /// Ships `shipped` (line id, units) of the order; ends it when `last` or nothing is left.
    pub(crate) async fn fulfil(
        &self,
        order: &OrderCommand,
        shipped: &[(String, i64)],
        last: bool,
    ) -> Result<Outcome, HandleError> {
        let (status, lines, channel) = self.placed_order(&order.order_id).await?;
        match status {
            None | Some(OrderStatus::Placing) => {
                return Err(HandleError::NotYet(format!(
                    "order {:?} is not decided yet",
                    order.order_id
                )));
            }
            Some(OrderStatus::Confirmed | OrderStatus::Fulfilled) => {}
            Some(other) => {
                return Err(HandleError::malformed(
                    "order_fulfilled",
                    "nothing_to_fulfil",
                    format!(
                        "order {:?} is {}: it holds nothing to ship",
                        order.order_id,
                        other.as_str()
                    ),
                ));
            }
        }
        let mut complete = true;
        for line in &lines {
            let units = shipped
                .iter()
                .find(|(id, _)| *id == line.line_id)
                .map(|(_, q)| *q);
            let left = match units {
                Some(units) => {
                    match self
                        .ship_line(&order.order_id, line, &channel, units, &order.meta.event_id)
                        .await?
                    {
                        Shipment::Shipped { left, change } => {
                            let step = format!("ship/{}", order.meta.event_id);
                            self.publish_change(order, line, &channel, &step, change.as_ref())
                                .await?;
                            left
                        }
                        // Released (or never reserved): it holds nothing, so nothing is left.
                        Shipment::NotReserved => 0,
                    }
                }
                None => self.units_held(&order.order_id, line).await?,
            };
            complete &= left <= 0;
        }
        if last || complete {
            self.end(order, End::Fulfilled).await?;
        }
        Ok(Outcome::Applied)
    }
}
