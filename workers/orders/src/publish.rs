//! What the steps publish, each only once the Redis step it reports is held by the replicas:
//! ledger entries of line steps on `STOCK_CHANGES`, decisions and releases on `ORDER_RESULTS`.

use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{order_result, EventMeta, OrderResult, ReleaseReason, ReservationReleased},
};
use stockflow_shared::{
    consume::HandleError,
    ledger::{Cause, Derived, DerivedKind},
    now_ms,
    outcome::Outcome,
    replication,
};

use crate::{
    command::{Line, OrderCommand},
    OrderHandler,
};

impl OrderHandler {
    /// Publishes the ledger entries a line step of an order from `channel` produced (`step`
    /// makes their ids unique), then the channel quantities it changed; `None`: the step changed
    /// no level, nothing to publish.
    pub(crate) async fn publish_change(
        &self,
        order: &OrderCommand,
        line: &Line,
        channel: &str,
        step: &str,
        change: Option<&Outcome>,
    ) -> Result<(), HandleError> {
        let Some(change) = change else {
            return Ok(());
        };
        replication::confirm(
            self.replicas.as_ref(),
            &self.redis,
            &self.keys.stock(&line.sku),
        )
        .await?;
        let cause_id = format!("{}/{}/{step}", order.order_id, line.line_id);
        let meta = EventMeta {
            event_id: cause_id.clone(),
            ..order.meta.clone()
        };
        let cause = Cause {
            sku: &line.sku,
            cause_id: &cause_id,
            location: &line.location,
            meta: &meta,
            policy: None,
            order_line: Some((&order.order_id, &line.line_id)),
            channel,
            channel_rules: None,
            kit: None,
        };
        self.ledger
            .publish(cause, change)
            .await
            .map_err(HandleError::nats)
    }

    /// Publishes an order result; `id` makes its `Nats-Msg-Id` (one per kind of result).
    pub(crate) async fn publish_result(
        &self,
        order: &OrderCommand,
        id: &str,
        result: order_result::Result,
    ) -> Result<(), HandleError> {
        replication::confirm(
            self.replicas.as_ref(),
            &self.redis,
            &self.keys.order(&order.order_id),
        )
        .await?;
        let message = OrderResult {
            order_id: order.order_id.clone(),
            cause_event_id: order.meta.event_id.clone(),
            decided_at_ms: now_ms(),
            result: Some(result),
        };
        let derived = Derived {
            kind: DerivedKind::OrderResult,
            subject: subjects::order_result(&order.order_id),
            msg_id: stockflow_proto::msg_id::order_result(&order.order_id, id),
            payload: message.encode_to_vec(),
        };
        self.ledger
            .publish_all(vec![derived])
            .await
            .map_err(HandleError::nats)?;
        Ok(())
    }

    /// Publishes that the order's reservations are released, and why.
    pub(crate) async fn publish_released(
        &self,
        order: &OrderCommand,
        reason: ReleaseReason,
    ) -> Result<(), HandleError> {
        let result = order_result::Result::Released(ReservationReleased {
            reason: reason.into(),
        });
        self.publish_result(order, "released", result).await
    }
}
