#![doc = include_str!("../README.md")]

pub mod command;
mod read;

pub use read::{read_order, Decision, LineState, OrderStatus, ReadError, StoredLine, StoredOrder};

use std::{future::Future, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use stockflow_proto::{
    subjects::{self, encode_token},
    v1::{
        order_event, order_result, Allocation, EventMeta, OrderConfirmed, OrderEvent,
        OrderHoldExpired, OrderRejected, OrderResult, ReleaseReason, ReservationReleased,
        Shortfall,
    },
};
use stockflow_shared::now_ms;
use stockflow_shared::{
    consume::{HandleError, Handled, Handler, Outcome},
    keys::Keys,
    ledger::{Cause, Derived, DerivedKind, Ledger},
    outcome,
    replication::{self, Replicas},
    settings::{ConfigError, Env},
    topology::ORDER_WORKER,
    worker::{Runtime, Service, StateSettings, WorkerSettings},
};
use tokio_util::sync::CancellationToken;

use crate::command::{
    decode_lines, encode_lines, placement_fingerprint, Command, Line, OrderCommand,
};

/// The order worker's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS, listener, topology, consume loop.
    pub worker: WorkerSettings,
    /// Redis, dedup TTL, replica wait.
    pub state: StateSettings,
    /// Global location priority for lines without a location (`STOCKFLOW_LOCATION_PRIORITY`,
    /// comma-separated); a SKU's own priority (policy field `prio`) comes first.
    pub location_priority: String,
    /// How often due holds are looked for (`STOCKFLOW_HOLD_POLL_MILLIS`).
    pub hold_poll: Duration,
    /// How long an order's record is kept once the order is final
    /// (`STOCKFLOW_ORDER_RETENTION_SECONDS`, see [`order_retention`]).
    pub order_retention: Duration,
}

/// The variable that sets how long a final order's record is kept.
pub const ORDER_RETENTION_VAR: &str = "STOCKFLOW_ORDER_RETENTION_SECONDS";

/// Default retention of a final order's record: a week, as long as `ORDER_EVENTS` keeps the
/// commands, so no command still in the stream finds its order forgotten.
pub const DEFAULT_ORDER_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Longest retention of a final order's record: a year.
pub const MAX_ORDER_RETENTION: Duration = Duration::from_secs(366 * 86_400);

/// Reads `STOCKFLOW_ORDER_RETENTION_SECONDS`: how long an order's record is kept once the order
/// is final (rejected, or cancelled / expired / fulfilled and released). It is at least
/// `dedup_ttl` (`STOCKFLOW_DEDUP_TTL_SECONDS`): a late duplicate of an order's commands must meet
/// the order's record, since the records of its released lines last `dedup_ttl`. The default is
/// [`DEFAULT_ORDER_RETENTION`], or `dedup_ttl` when that is longer.
pub fn order_retention(env: &Env, dedup_ttl: Duration) -> Result<Duration, ConfigError> {
    let floor = dedup_ttl.as_secs();
    let ceiling = MAX_ORDER_RETENTION.as_secs();
    let seconds = env.parse(
        ORDER_RETENTION_VAR,
        DEFAULT_ORDER_RETENTION.as_secs().max(floor),
    )?;
    if !(floor..=ceiling).contains(&seconds) {
        return Err(ConfigError::Invalid {
            var: ORDER_RETENTION_VAR,
            reason: format!(
                "{seconds} is out of range {floor}..={ceiling}: a final order is kept at least \
                 as long as an event id is remembered (STOCKFLOW_DEDUP_TTL_SECONDS = {floor}), \
                 so late duplicates of its commands are still recognised"
            ),
        });
    }
    Ok(Duration::from_secs(seconds))
}

impl Settings {
    /// Reads the environment; errors name the variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let location_priority = env.string("STOCKFLOW_LOCATION_PRIORITY", "");
        for location in location_priority.split(',').filter(|l| !l.is_empty()) {
            stockflow_shared::validate::validate_location("location", location).map_err(
                |reason| ConfigError::Invalid {
                    var: "STOCKFLOW_LOCATION_PRIORITY",
                    reason,
                },
            )?;
        }
        let worker = WorkerSettings::from_env(env, "order-worker", "127.0.0.1:9465")?;
        let state = StateSettings::from_env(env)?;
        Ok(Self {
            order_retention: order_retention(env, state.dedup_ttl)?,
            worker,
            state,
            location_priority,
            hold_poll: Duration::from_millis(env.bounded(
                "STOCKFLOW_HOLD_POLL_MILLIS",
                200,
                10..=60_000,
            )?),
        })
    }
}

/// Runs the order worker until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let runtime = Service::worker(&settings.worker)
        .redis(&settings.state.redis)
        .start(shutdown)
        .await?;
    let handler = OrderHandler::new(&runtime, &settings);
    tokio::spawn(expire_holds(
        handler.clone(),
        settings.hold_poll,
        runtime.shutdown.clone(),
    ));
    runtime.consume(ORDER_WORKER, handler).await
}

/// The order worker's handler.
#[derive(Debug, Clone)]
pub struct OrderHandler {
    redis: stockflow_shared::redis_conn::RedisConnection,
    js: jetstream::Context,
    keys: Keys,
    ledger: Ledger,
    location_priority: String,
    ttl: u64,
    /// Seconds a final order's record is kept.
    retention: u64,
    order: redis::Script,
    reserve: redis::Script,
    release: redis::Script,
    ship: redis::Script,
    /// Replicas that must hold a step before what it produced is published.
    replicas: Option<Replicas>,
}

/// What reserving one line gave.
enum LineResult {
    Reserved { location: String },
    Short { available: i64 },
    Released,
}

impl OrderHandler {
    /// A handler using the runtime's connections.
    pub fn new(runtime: &Runtime, settings: &Settings) -> Self {
        Self {
            redis: runtime.redis.clone(),
            js: runtime.js.clone(),
            keys: Keys::new(settings.state.redis.key_prefix.clone()),
            ledger: Ledger::new(runtime.js.clone()),
            location_priority: settings.location_priority.clone(),
            ttl: settings.state.dedup_ttl.as_secs(),
            retention: settings.order_retention.as_secs(),
            order: stockflow_shared::script(include_str!("../lua/order.lua")),
            reserve: stockflow_shared::script(include_str!("../lua/reserve_line.lua")),
            release: stockflow_shared::script(include_str!("../lua/release_line.lua")),
            ship: stockflow_shared::script(include_str!("../lua/ship_line.lua")),
            replicas: Replicas::new(settings.state.replica_wait.as_ref()),
        }
    }

    async fn order_script(
        &self,
        order_id: &str,
        args: &[String],
    ) -> Result<Vec<String>, HandleError> {
        let mut redis = self.redis.clone();
        let mut invocation = self.order.key(self.keys.order(order_id));
        for arg in args {
            invocation.arg(arg);
        }
        invocation
            .invoke_async(&mut redis)
            .await
            .map_err(HandleError::redis)
    }

    /// A state-machine step that takes no argument but the retention (`lua/order.lua`).
    async fn order_step(&self, order_id: &str, action: &str) -> Result<Vec<String>, HandleError> {
        self.order_script(order_id, &[action.into(), self.retention.to_string()])
            .await
    }

    async fn line_script(
        &self,
        script: &redis::Script,
        order_id: &str,
        line: &Line,
        args: &[String],
    ) -> Result<Vec<String>, HandleError> {
        let started = std::time::Instant::now();
        let mut redis = self.redis.clone();
        let mut invocation = script.key(self.keys.order_line(&line.sku, order_id, &line.line_id));
        invocation
            .key(self.keys.stock(&line.sku))
            .key(self.keys.policy(&line.sku));
        for arg in args {
            invocation.arg(arg);
        }
        let reply = invocation
            .invoke_async(&mut redis)
            .await
            .map_err(HandleError::redis);
        metrics::histogram!("stockflow_redis_script_seconds", "script" => "order_line")
            .record(started.elapsed().as_secs_f64());
        reply
    }

    /// Publishes the ledger entry a line step produced.
    async fn publish_change(
        &self,
        order: &OrderCommand,
        line: &Line,
        step: &str,
        text: &str,
    ) -> Result<(), HandleError> {
        if text.is_empty() {
            return Ok(());
        }
        let parsed = outcome::Outcome::parse(text).map_err(HandleError::redis)?;
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
        };
        self.ledger
            .publish(cause, &parsed)
            .await
            .map_err(HandleError::nats)
    }

    async fn reserve_line(
        &self,
        order: &OrderCommand,
        line: &Line,
    ) -> Result<LineResult, HandleError> {
        let args = [
            line.quantity.to_string(),
            line.location.clone(),
            self.location_priority.clone(),
            self.ttl.to_string(),
        ];
        let reply = self
            .line_script(&self.reserve, &order.order_id, line, &args)
            .await?;
        match reply
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["reserved", location, text] => {
                self.publish_change(order, line, "reserve", text).await?;
                Ok(LineResult::Reserved {
                    location: (*location).to_owned(),
                })
            }
            ["short", available] => Ok(LineResult::Short {
                available: available.parse().unwrap_or(0),
            }),
            ["released", text] => {
                // Released before this delivery got here; if it was reserved, record that
                // reservation in case its placer died before doing so.
                self.publish_change(order, line, "reserve", text).await?;
                Ok(LineResult::Released)
            }
            other => Err(HandleError::redis(anyhow::anyhow!(
                "reserve_line answered {other:?}"
            ))),
        }
    }

    async fn release_lines(&self, order: &OrderCommand, lines: &[Line]) -> Result<(), HandleError> {
        for line in lines {
            let reply = self
                .line_script(
                    &self.release,
                    &order.order_id,
                    line,
                    &[self.ttl.to_string()],
                )
                .await?;
            if let ["released", text] = reply
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                self.publish_change(order, line, "release", text).await?;
                metrics::counter!("stockflow_reservations_total", "outcome" => "released")
                    .increment(1);
            }
        }
        Ok(())
    }

    async fn publish_result(
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
            msg_id: format!("res:{}:{id}", encode_token(&order.order_id)),
            payload: message.encode_to_vec(),
        };
        self.ledger
            .publish_all(vec![derived])
            .await
            .map_err(HandleError::nats)?;
        Ok(())
    }

    async fn released(
        &self,
        order: &OrderCommand,
        reason: ReleaseReason,
    ) -> Result<(), HandleError> {
        let result = order_result::Result::Released(ReservationReleased {
            reason: reason.into(),
        });
        self.publish_result(order, "released", result).await
    }

    /// The placement saga. Every step is idempotent, so a redelivery after a crash anywhere
    /// replays it to the same end.
    async fn place(
        &self,
        order: &OrderCommand,
        lines: &[Line],
        hold_seconds: i64,
    ) -> Result<Outcome, HandleError> {
        let encoded = encode_lines(lines);
        let fingerprint = placement_fingerprint(lines, hold_seconds);
        let begin = self
            .order_script(
                &order.order_id,
                &[
                    "place".into(),
                    fingerprint,
                    encoded,
                    hold_seconds.to_string(),
                ],
            )
            .await?;
        let mut outcome = Outcome::Applied;
        match begin.first().map(String::as_str) {
            Some("conflict") => {
                return Err(HandleError::malformed(
                    "order_placed",
                    "order_conflict",
                    format!(
                        "order {:?} was already placed with different lines",
                        order.order_id
                    ),
                ));
            }
            Some("cancelled") => {
                self.released(order, ReleaseReason::Cancelled).await?;
                self.order_step(&order.order_id, "settled").await?;
                return Ok(Outcome::Applied);
            }
            Some("decided") => {
                outcome = Outcome::Duplicate;
                // Replay the saga only to finish a decision a crash left unpublished; for an
                // ended order, finish a release a crash may have interrupted.
                let decided = matches!(
                    begin.get(1).map(String::as_str),
                    Some("confirmed" | "rejected")
                );
                if !decided {
                    self.end(order, "finish").await?;
                    return Ok(outcome);
                }
                if begin.get(2).map(String::as_str) == Some("1") {
                    return Ok(outcome);
                }
            }
            Some("go") => {}
            other => {
                return Err(HandleError::redis(anyhow::anyhow!(
                    "order place answered {other:?}"
                )))
            }
        }
        // Reserve line by line; records answer replays identically.
        let mut results = Vec::with_capacity(lines.len());
        for line in lines {
            results.push(self.reserve_line(order, line).await?);
        }
        let confirmed = results
            .iter()
            .all(|r| matches!(r, LineResult::Reserved { .. }));
        if !confirmed {
            // Compensate: give back what was taken (idempotent; blocks late reservations too).
            self.release_lines(order, lines).await?;
        }
        let expires_at_ms = if confirmed && hold_seconds > 0 {
            now_ms() + hold_seconds * 1000
        } else {
            0
        };
        let verdict = if confirmed { "confirmed" } else { "rejected" };
        let decide = self
            .order_script(
                &order.order_id,
                &["decide".into(), verdict.into(), expires_at_ms.to_string()],
            )
            .await?;
        let expires_at_ms = match decide.first().map(String::as_str) {
            Some("ok") => {
                metrics::counter!("stockflow_reservations_total", "outcome" => verdict)
                    .increment(1);
                expires_at_ms
            }
            Some("cancelled") => {
                self.release_lines(order, lines).await?;
                self.released(order, ReleaseReason::Cancelled).await?;
                self.order_step(&order.order_id, "settled").await?;
                return Ok(outcome);
            }
            // Decided by an earlier delivery: publish that same decision again — unless the order
            // has ended since (cancelled while this delivery was reserving): then this delivery's
            // view of the lines is no decision; finish the release instead.
            Some("decided")
                if !matches!(
                    decide.get(1).map(String::as_str),
                    Some("confirmed" | "rejected")
                ) =>
            {
                self.end(order, "finish").await?;
                return Ok(outcome);
            }
            _ => self.stored_expiry(&order.order_id).await?,
        };
        if confirmed && expires_at_ms > 0 {
            let mut redis = self.redis.clone();
            redis::cmd("ZADD")
                .arg(self.keys.holds_due())
                .arg("NX")
                .arg(expires_at_ms)
                .arg(&order.order_id)
                .query_async::<i64>(&mut redis)
                .await
                .map_err(HandleError::redis)?;
        }
        let result = if confirmed {
            let allocations = lines.iter().zip(&results).filter_map(|(line, r)| match r {
                LineResult::Reserved { location } => Some(Allocation {
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
            let short = lines.iter().zip(&results).filter_map(|(line, r)| match r {
                LineResult::Short { available } => Some(Shortfall {
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
        self.order_step(&order.order_id, "published").await?;
        Ok(outcome)
    }

    async fn stored_expiry(&self, order_id: &str) -> Result<i64, HandleError> {
        let mut redis = self.redis.clone();
        let value: Option<i64> = redis::cmd("HGET")
            .arg(self.keys.order(order_id))
            .arg("expires")
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        Ok(value.unwrap_or(0))
    }

    /// Cancel, expire, finish the fulfilment — or `finish` a release a crash interrupted:
    /// release whatever the order holds and say why. Every step is idempotent; the order is
    /// marked settled only at the end, so a redelivery completes an interrupted release.
    async fn end(&self, order: &OrderCommand, action: &str) -> Result<Outcome, HandleError> {
        let reply = self.order_step(&order.order_id, action).await?;
        let ["release", before, lines, now, published] =
            reply.iter().map(String::as_str).collect::<Vec<_>>()[..]
        else {
            return Ok(Outcome::Duplicate);
        };
        let lines = decode_lines(lines);
        self.release_lines(order, &lines).await?;
        if now == "placing" {
            // A cancel that overtook the decision: the placer finishes the order.
            return Ok(Outcome::Applied);
        }
        let mut redis = self.redis.clone();
        redis::cmd("ZREM")
            .arg(self.keys.holds_due())
            .arg(&order.order_id)
            .query_async::<i64>(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        if before == "confirmed" {
            if published != "1" {
                // Its placer died between deciding and reporting: the confirmation comes first.
                self.publish_stored_confirmation(order, &lines).await?;
            }
            let reason = match now {
                "expired" => ReleaseReason::Expired,
                "fulfilled" => ReleaseReason::FulfilledRemainder,
                _ => ReleaseReason::Cancelled,
            };
            self.released(order, reason).await?;
        } else {
            // Cancelled before its placement ('') or its decision ('placing'): the placer reports
            // that, unless it died first — then its redelivery, or a repeated cancel, does.
            self.released(order, ReleaseReason::Cancelled).await?;
        }
        self.order_step(&order.order_id, "settled").await?;
        Ok(Outcome::Applied)
    }

    /// Publishes the confirmation an order's placer stored but did not report, rebuilt from the
    /// line records (each keeps the location it was reserved at), and marks it published.
    async fn publish_stored_confirmation(
        &self,
        order: &OrderCommand,
        lines: &[Line],
    ) -> Result<(), HandleError> {
        let mut redis = self.redis.clone();
        let mut allocations = Vec::with_capacity(lines.len());
        for line in lines {
            let location: Option<String> = redis::cmd("HGET")
                .arg(
                    self.keys
                        .order_line(&line.sku, &order.order_id, &line.line_id),
                )
                .arg("loc")
                .query_async(&mut redis)
                .await
                .map_err(HandleError::redis)?;
            allocations.push(Allocation {
                line_id: line.line_id.clone(),
                sku: line.sku.clone(),
                location: location.unwrap_or_default(),
                quantity: line.quantity,
            });
        }
        let expires_at_ms = self.stored_expiry(&order.order_id).await?;
        let result = order_result::Result::Confirmed(OrderConfirmed {
            lines: allocations,
            expires_at_ms,
        });
        self.publish_result(order, "decision", result).await?;
        self.order_step(&order.order_id, "published").await?;
        Ok(())
    }

    async fn fulfil(
        &self,
        order: &OrderCommand,
        shipped: &[(String, i64)],
        last: bool,
    ) -> Result<Outcome, HandleError> {
        let mut redis = self.redis.clone();
        let (status, stored): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.order(&order.order_id))
            .arg("status")
            .arg("lines")
            .query_async(&mut redis)
            .await
            .map_err(HandleError::redis)?;
        match status.as_deref() {
            None | Some("placing") => {
                return Err(HandleError::NotYet(format!(
                    "order {:?} is not decided yet",
                    order.order_id
                )));
            }
            Some("confirmed" | "fulfilled") => {}
            Some(other) => {
                return Err(HandleError::malformed(
                    "order_fulfilled",
                    "nothing_to_fulfil",
                    format!(
                        "order {:?} is {other}: it holds nothing to ship",
                        order.order_id
                    ),
                ));
            }
        }
        let lines = decode_lines(&stored.unwrap_or_default());
        let mut complete = true;
        for line in &lines {
            let units = shipped
                .iter()
                .find(|(id, _)| *id == line.line_id)
                .map(|(_, q)| *q);
            let left = match units {
                Some(units) => {
                    let reply = self
                        .line_script(
                            &self.ship,
                            &order.order_id,
                            line,
                            &[units.to_string(), order.meta.event_id.clone()],
                        )
                        .await?;
                    match reply
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .as_slice()
                    {
                        ["shipped", _, left, text] => {
                            self.publish_change(
                                order,
                                line,
                                &format!("ship/{}", order.meta.event_id),
                                text,
                            )
                            .await?;
                            left.parse().unwrap_or(0)
                        }
                        _ => 0,
                    }
                }
                None => {
                    let (qty, done): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                        .arg(
                            self.keys
                                .order_line(&line.sku, &order.order_id, &line.line_id),
                        )
                        .arg("qty")
                        .arg("shipped")
                        .query_async(&mut redis)
                        .await
                        .map_err(HandleError::redis)?;
                    qty.unwrap_or(0) - done.unwrap_or(0)
                }
            };
            complete &= left <= 0;
        }
        if last || complete {
            self.end(order, "fulfilled").await?;
        }
        Ok(Outcome::Applied)
    }
}

impl Handler for OrderHandler {
    async fn handle(&self, message: &jetstream::Message) -> Result<Handled, HandleError> {
        let order = command::parse(message.subject.as_str(), &message.payload)?;
        let event_type = order.command.name();
        let outcome = match &order.command {
            Command::Placed {
                lines,
                hold_seconds,
            } => self.place(&order, lines, *hold_seconds).await?,
            Command::Cancelled => self.end(&order, "cancel").await?,
            Command::HoldExpired { due_at_ms } => {
                let outcome = self.end(&order, "expire").await?;
                if outcome == Outcome::Applied {
                    metrics::counter!("stockflow_holds_expired_total").increment(1);
                    let lag = (now_ms() - due_at_ms).max(0) as f64 / 1000.0;
                    metrics::histogram!("stockflow_hold_expiry_lag_seconds").record(lag);
                }
                outcome
            }
            Command::Committed => {
                self.order_step(&order.order_id, "commit").await?;
                let mut redis = self.redis.clone();
                redis::cmd("ZREM")
                    .arg(self.keys.holds_due())
                    .arg(&order.order_id)
                    .query_async::<i64>(&mut redis)
                    .await
                    .map_err(HandleError::redis)?;
                Outcome::Applied
            }
            Command::Fulfilled {
                lines,
                last_shipment,
            } => self.fulfil(&order, lines, *last_shipment).await?,
        };
        Ok(Handled {
            event_type,
            outcome,
        })
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

async fn expire_due(handler: &OrderHandler) -> anyhow::Result<()> {
    let mut redis = handler.redis.clone();
    let due: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(handler.keys.holds_due())
        .arg("-inf")
        .arg(now_ms())
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(200)
        .query_async(&mut redis)
        .await?;
    for (order_id, due_at_ms) in due {
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
            .message_id(format!("expire:{}", encode_token(&order_id)));
        handler
            .js
            .send_publish(subjects::order_event(&order_id), publish)
            .await?
            .await?;
        redis::cmd("ZREM")
            .arg(handler.keys.holds_due())
            .arg(&order_id)
            .query_async::<i64>(&mut redis)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn retention_defaults_to_a_week_or_the_dedup_ttl_when_longer() {
        let unset = Env::from_pairs([]);
        assert_eq!(
            order_retention(&unset, DAY).expect("default"),
            DEFAULT_ORDER_RETENTION
        );
        assert_eq!(order_retention(&unset, 30 * DAY).expect("raised"), 30 * DAY);
        let set = Env::from_pairs([(ORDER_RETENTION_VAR, "600")]);
        assert_eq!(
            order_retention(&set, Duration::from_secs(600)).expect("at the floor"),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn retention_below_the_dedup_ttl_or_above_a_year_fails_naming_both_variables() {
        for value in ["3600", "31708801", "soon"] {
            let env = Env::from_pairs([(ORDER_RETENTION_VAR, value)]);
            let error = order_retention(&env, DAY).expect_err(value).to_string();
            assert!(error.starts_with(ORDER_RETENTION_VAR), "{error}");
            if value != "soon" {
                assert!(error.contains("STOCKFLOW_DEDUP_TTL_SECONDS"), "{error}");
            }
        }
    }
}
