#![doc = include_str!("../README.md")]

mod batch;
pub mod command;
mod end;
mod expire;
mod fulfil;
pub mod kits;
mod place;
mod publish;
mod read;
mod records;
mod replies;
pub mod restore;

pub use expire::expire_holds;
pub use read::{
    read_order, Decision, LineState, OrderStatus, Part, ReadError, StoredLine, StoredOrder,
};

use std::{future::Future, time::Duration};

use async_nats::jetstream;
use stockflow_shared::{
    batch::CoalesceSettings,
    channels::ChannelBook,
    consume::{Delivery, HandleError, Handled, Handler},
    keys::Keys,
    ledger::Ledger,
    replication::Replicas,
    settings::{ConfigError, Env},
    topology::ORDER_WORKER,
    worker::{Runtime, Service, StateSettings, WorkerSettings},
};

use crate::{batch::Calls, command::Command, records::End};

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
    /// How the script calls of concurrent messages share round trips: most calls in one batch
    /// (`STOCKFLOW_ORDER_BATCH_MAX`) and most batches on the wire at once
    /// (`STOCKFLOW_ORDER_BATCHES_IN_FLIGHT`).
    pub batch: CoalesceSettings,
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

/// Reads `STOCKFLOW_ORDER_BATCH_MAX` (1..=1024) and `STOCKFLOW_ORDER_BATCHES_IN_FLIGHT`
/// (1..=64); unset, the coalescer's defaults (batches of up to 64, four at once).
fn batch_settings(env: &Env) -> Result<CoalesceSettings, ConfigError> {
    let default = CoalesceSettings::default();
    Ok(CoalesceSettings {
        max_batch: env.bounded_as("STOCKFLOW_ORDER_BATCH_MAX", default.max_batch, 1..=1024)?,
        max_batches_in_flight: env.bounded_as(
            "STOCKFLOW_ORDER_BATCHES_IN_FLIGHT",
            default.max_batches_in_flight,
            1..=64,
        )?,
    })
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
            batch: batch_settings(env)?,
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
    describe_metrics();
    let book = ChannelBook::start(&runtime.js).await?;
    let handler = OrderHandler::new(&runtime, &settings, book);
    tokio::spawn(expire_holds(
        handler.clone(),
        settings.hold_poll,
        runtime.shutdown.clone(),
    ));
    runtime.consume(ORDER_WORKER, handler).await
}

/// Describes the order worker's own metrics and registers its counters at 0 (after the runtime
/// installed the recorder), so dashboards and alerts see them from the start rather than no
/// series until the first order.
fn describe_metrics() {
    use metrics::{counter, describe_counter, describe_histogram, Unit};
    describe_counter!(
        "stockflow_reservations_total",
        "Placements decided (confirmed, rejected) and order lines released"
    );
    for outcome in [
        read::Decision::Confirmed.status().as_str(),
        read::Decision::Rejected.status().as_str(),
        "released",
    ] {
        counter!("stockflow_reservations_total", "outcome" => outcome).increment(0);
    }
    describe_counter!(
        "stockflow_holds_expired_total",
        "Checkout holds released at their expiry"
    );
    counter!("stockflow_holds_expired_total").increment(0);
    describe_histogram!(
        "stockflow_hold_expiry_lag_seconds",
        Unit::Seconds,
        "A hold's due time -> its release"
    );
}

/// The order worker's handler: decodes a command and runs its step (`place`, `end`, `fulfil`,
/// `expire`, one file each).
#[derive(Debug, Clone)]
pub struct OrderHandler {
    /// Redis, where the order and line records live.
    redis: stockflow_shared::redis_conn::RedisConnection,
    /// JetStream, for hold expiry commands.
    js: jetstream::Context,
    /// Key names.
    keys: Keys,
    /// Publishes ledger entries and order results.
    ledger: Ledger,
    /// Global location priority (`STOCKFLOW_LOCATION_PRIORITY`).
    location_priority: String,
    /// Seconds a line record that holds nothing is kept (the dedup TTL).
    ttl: u64,
    /// Seconds a final order's record is kept.
    retention: u64,
    /// The order and line scripts, their calls coalesced across messages.
    calls: Calls,
    /// Replicas that must hold a step before what it produced is published.
    replicas: Option<Replicas>,
    /// The sales channels: an order's channel, and the specs the line scripts compute with.
    book: ChannelBook,
}

impl OrderHandler {
    /// A handler using the runtime's connections and the channels in `book`.
    pub fn new(runtime: &Runtime, settings: &Settings, book: ChannelBook) -> Self {
        Self {
            redis: runtime.redis.clone(),
            js: runtime.js.clone(),
            keys: Keys::new(settings.state.redis.key_prefix.clone()),
            ledger: Ledger::new(runtime.js.clone()),
            location_priority: settings.location_priority.clone(),
            ttl: settings.state.dedup_ttl.as_secs(),
            retention: settings.order_retention.as_secs(),
            calls: Calls::start(runtime.redis.clone(), settings.batch),
            replicas: Replicas::new(settings.state.replica_wait.as_ref()),
            book,
        }
    }
}

impl Handler for OrderHandler {
    fn event_types(&self) -> &'static [&'static str] {
        &[
            "order_placed",
            "order_committed",
            "order_cancelled",
            "order_fulfilled",
            "hold_expired",
        ]
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        let order = command::parse(delivery.subject(), delivery.payload())?;
        let event_type = order.command.name();
        // Its place in the stream, which orders reservations of one batch: first come, first
        // served. JetStream sets the metadata on every message it delivers; one without it
        // (never seen) comes after the others.
        let sequence = delivery
            .message()
            .info()
            .map_or(u64::MAX, |info| info.stream_sequence);
        let outcome = match &order.command {
            Command::Placed {
                lines,
                hold_seconds,
            } => {
                let (lines, kits) = self.expand_kits(&order.order_id, lines).await?;
                self.place(&order, &lines, &kits, *hold_seconds, sequence)
                    .await?
            }
            Command::Cancelled => self.end(&order, End::Cancel).await?,
            Command::HoldExpired { due_at_ms } => self.expire(&order, *due_at_ms).await?,
            Command::Committed => self.commit(&order).await?,
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
