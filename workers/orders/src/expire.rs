//! Checkout holds that run out. A confirmed order with a hold is scheduled in a Redis sorted set
//! (`holds_due`, scored by its expiry); every replica polls it and turns each due hold into an
//! `OrderHoldExpired` command with a deterministic `Nats-Msg-Id`, so a hold expires once. The
//! command then ends the order like a cancel. A hold leaves the schedule in one place,
//! [`OrderHandler::unschedule_hold`]: when its command is published, or when its order is
//! committed or ends.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{order_event, EventMeta, OrderEvent, OrderHoldExpired},
};
use stockflow_shared::{
    consume::{HandleError, Outcome},
    now_ms,
};
use tokio_util::sync::CancellationToken;

use crate::{command::OrderCommand, records::End, OrderHandler};

/// Due holds taken per poll.
const DUE_PER_POLL: usize = 200;

impl OrderHandler {
    /// Ends the order whose hold ran out (due at `due_at_ms`), unless it was committed or ended.
    pub(crate) async fn expire(
        &self,
        order: &OrderCommand,
        due_at_ms: i64,
    ) -> Result<Outcome, HandleError> {
        let outcome = self.end(order, End::Expire).await?;
        if outcome == Outcome::Applied {
            metrics::counter!("stockflow_holds_expired_total").increment(1);
            let lag = (now_ms() - due_at_ms).max(0) as f64 / 1000.0;
            metrics::histogram!("stockflow_hold_expiry_lag_seconds").record(lag);
        }
        Ok(outcome)
    }

    /// Schedules the order's hold to expire at `expires_at_ms`; a hold already scheduled keeps
    /// its time (a replayed placement does not move it).
    pub(crate) async fn schedule_hold(
        &self,
        order_id: &str,
        expires_at_ms: i64,
    ) -> Result<(), HandleError> {
        let mut redis = self.redis.clone();
        redis::cmd("ZADD")
            .arg(self.keys.holds_due())
            .arg("NX")
            .arg(expires_at_ms)
            .arg(order_id)
            .query_async::<i64>(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        Ok(())
    }

    /// Takes the order's hold off the schedule (idempotent).
    pub(crate) async fn unschedule_hold(&self, order_id: &str) -> Result<(), HandleError> {
        let mut redis = self.redis.clone();
        redis::cmd("ZREM")
            .arg(self.keys.holds_due())
            .arg(order_id)
            .query_async::<i64>(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        Ok(())
    }

    /// Holds due now, oldest first: (order id, due at ms), at most [`DUE_PER_POLL`].
    async fn due_holds(&self) -> Result<Vec<(String, i64)>, HandleError> {
        let mut redis = self.redis.clone();
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.holds_due())
            .arg("-inf")
            .arg(now_ms())
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(DUE_PER_POLL)
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)
    }
}

/// Turns due holds into `OrderHoldExpired` commands. Every replica runs it; the deterministic
/// `Nats-Msg-Id` and the order's state machine make a hold expire exactly once.
pub async fn expire_holds(handler: OrderHandler, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = expire_due(&handler).await {
            tracing::warn!(error = %format!("{e:#}"), "expiring holds failed; will retry");
        }
    }
}

/// Publishes the command of each due hold, then takes the hold off the schedule.
async fn expire_due(handler: &OrderHandler) -> anyhow::Result<()> {
    for (order_id, due_at_ms) in handler.due_holds().await? {
        let event = OrderEvent {
            meta: Some(EventMeta {
                event_id: format!("expire:{order_id}"),
                occurred_at_ms: due_at_ms,
                source: "order-worker:hold".into(),
                ..Default::default()
            }),
            order_id: order_id.clone(),
            command: Some(order_event::Command::HoldExpired(OrderHoldExpired {
                due_at_ms,
            })),
        };
        let publish = PublishMessage::build()
            .payload(event.encode_to_vec().into())
            .message_id(stockflow_proto::msg_id::hold_expiry(&order_id));
        handler
            .js
            .send_publish(subjects::order_event(&order_id), publish)
            .await?
            .await?;
        handler.unschedule_hold(&order_id).await?;
    }
    Ok(())
}
