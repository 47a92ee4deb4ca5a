#![doc = include_str!("../README.md")]

pub mod deliver;
pub mod endpoints;
pub mod event;
pub mod outbox;
pub mod registry;
pub mod subscriptions;

use std::{borrow::Cow, future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, message::PublishMessage};
use stockflow_shared::{
    consume::{Delivery, HandleError, Handled, Handler, Outcome},
    settings::{ConfigError, Env, Secret},
    topology::{
        self, ConsumerSpec, TopologySettings, NOTIFY_ALERTS, NOTIFY_AVAILABILITY,
        NOTIFY_ORDER_RESULTS,
    },
    worker::{readiness_checks, Service, WorkerSettings},
};

use crate::{
    deliver::RetryPolicy,
    endpoints::{Endpoints, SubscriptionSet},
    event::EventType,
    subscriptions::{EventFilter, Subscription},
};

/// The consumers this worker reads, each with the name of its readiness check: alerts, the
/// ledger (one consumer per ledger partition when the deployment is partitioned), order
/// results and the channel quantities.
pub fn consumers(topology: &TopologySettings) -> Vec<(ConsumerSpec, Cow<'static, str>)> {
    let ledger = topology::notify_stock_changes(topology);
    std::iter::once((NOTIFY_ALERTS, "consumer_alerts".into()))
        .chain(readiness_checks(&ledger, "consumer_stock_changes"))
        .chain([
            (NOTIFY_ORDER_RESULTS, "consumer_order_results".into()),
            (NOTIFY_AVAILABILITY, "consumer_availability".into()),
        ])
        .collect()
}

/// Settings replaced by the retry horizon and the back-off floor and ceiling: refused, so a
/// deployment that still sets them learns what they became.
const REPLACED: [(&str, &str); 3] = [
    (
        "STOCKFLOW_WEBHOOK_MAX_ATTEMPTS",
        "removed: a failing delivery is retried until STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS",
    ),
    (
        "STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS",
        "renamed STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS (now the shortest wait, jitter included)",
    ),
    (
        "STOCKFLOW_WEBHOOK_BACKOFF_MAX_MILLIS",
        "renamed STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS",
    ),
];

/// The notify worker's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS, listener, topology, consume loop of the fan-out (no Redis: notify keeps no state).
    pub worker: WorkerSettings,
    /// Where deliveries go (`STOCKFLOW_WEBHOOKS_FILE`); the `WEBHOOK_SUBSCRIPTIONS` bucket's
    /// subscriptions are added while the worker runs.
    pub subscriptions: Vec<Subscription>,
    /// The signing secret of subscriptions that name none (`STOCKFLOW_WEBHOOK_SECRET` or
    /// `_FILE`), also those of the bucket.
    pub default_secret: Option<Secret>,
    /// Back-off, horizon, breaker and timeouts.
    pub retry: RetryPolicy,
    /// POSTs in flight per endpoint (`STOCKFLOW_WEBHOOK_CONCURRENCY`).
    pub concurrency: usize,
}

impl Settings {
    /// Reads the environment and the subscriptions file; errors name the variable (and the
    /// subscription).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        for (var, reason) in REPLACED {
            if env.raw(var).is_some() {
                return Err(ConfigError::Invalid {
                    var,
                    reason: reason.into(),
                });
            }
        }
        let worker = WorkerSettings::from_env(env, "notify-worker", "127.0.0.1:9466")?;
        let millis =
            |var, default, range| env.bounded(var, default, range).map(Duration::from_millis);
        let retry = RetryPolicy {
            timeout: millis("STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS", 10_000, 10..=300_000)?,
            backoff_floor: millis("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", 1_000, 1..=600_000)?,
            backoff_ceiling: millis(
                "STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS",
                300_000,
                1..=3_600_000,
            )?,
            horizon: env.seconds(
                "STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS",
                24 * 3600,
                1..=MAX_HORIZON_SECONDS,
            )?,
            breaker_failures: env.bounded_as(
                "STOCKFLOW_WEBHOOK_BREAKER_FAILURES",
                20,
                0..=100_000,
            )?,
            breaker_open: env.seconds("STOCKFLOW_WEBHOOK_BREAKER_OPEN_SECONDS", 30, 1..=86_400)?,
        };
        if retry.backoff_floor > retry.backoff_ceiling {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS",
                reason: "must not exceed STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS".into(),
            });
        }
        Ok(Self {
            worker,
            subscriptions: subscriptions::from_env(env)?,
            default_secret: env.secret(
                subscriptions::DEFAULT_SECRET_VAR,
                subscriptions::DEFAULT_SECRET_FILE_VAR,
            )?,
            retry,
            concurrency: env.bounded_as("STOCKFLOW_WEBHOOK_CONCURRENCY", 8, 1..=256)?,
        })
    }
}

/// Longest retry horizon: a day below `WEBHOOKS`' max age, which leaves room for the last back-off
/// (at most an hour) and an open breaker, so JetStream never drops a delivery that is neither
/// POSTed nor dead-lettered.
pub const MAX_HORIZON_SECONDS: u64 = topology::WEBHOOKS_MAX_AGE.as_secs() - 24 * 3600;

/// Runs the notify worker until `shutdown` resolves: one fan-out loop per input stream, which
/// enqueues each event's deliveries in `WEBHOOKS`, and one delivery loop per endpoint, of the
/// subscriptions file and of the `WEBHOOK_SUBSCRIPTIONS` bucket (watched: see [`endpoints`]).
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut runtime = Service::worker(&settings.worker).start(shutdown).await?;
    // After the start, which installs the recorder: described before, the text would be lost.
    describe_metrics();
    let endpoints = Arc::new(Endpoints::new(
        &settings,
        runtime.js.clone(),
        &runtime.health,
        &runtime.can_process(),
        &runtime.shutdown,
    )?);
    endpoints
        .start_file(&runtime.startup, &settings.subscriptions)
        .await?;
    // Before any fan-out: an event handled right after the start must see the bucket's too.
    endpoints.start_bucket(&runtime.startup).await?;
    if settings.subscriptions.is_empty() {
        tracing::info!(
            "no webhook subscriptions in STOCKFLOW_WEBHOOKS_FILE: delivering to those of the \
             WEBHOOK_SUBSCRIPTIONS bucket only"
        );
    }
    let fan_out = Arc::new(FanOut {
        js: runtime.js.clone(),
        subscriptions: endpoints.subscriptions(),
    });
    for (spec, check) in consumers(&settings.worker.topology) {
        let consumer = runtime.consumer(spec, check);
        runtime.spawn_consumer(consumer, fan_out.clone());
    }
    // The bucket is followed until shutdown; then every endpoint's loop finishes its POSTs.
    runtime.spawn(async move {
        endpoints.clone().watch().await;
        endpoints.join().await;
    });
    runtime.finish().await
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "stockflow_webhook_deliveries_total",
        "Webhook POSTs by endpoint and outcome (delivered, retried, failed = dead-lettered)"
    );
    describe_histogram!(
        "stockflow_webhook_delivery_seconds",
        Unit::Seconds,
        "One webhook POST round trip"
    );
    describe_gauge!(
        "stockflow_webhook_breaker_open",
        "1 while an endpoint's breaker is open and its deliveries are paused"
    );
}

/// Fans one derived event out into the outbox: one message per endpoint that wants it, acked
/// only once `WEBHOOKS` stored every one. It never waits for an endpoint.
#[derive(Debug)]
struct FanOut {
    js: jetstream::Context,
    subscriptions: SubscriptionSet,
}

impl FanOut {
    /// The type of every message on `subject` when one stream carries only that type: the
    /// ledger (`stock.changes.>`) and the channel quantities (`availability.>`), the busiest
    /// streams.
    fn bulk_type(subject: &str) -> Option<EventType> {
        if subject.starts_with("stock.changes.") {
            Some(EventType::StockChanged)
        } else if subject.starts_with("availability.") {
            Some(EventType::ChannelAvailability)
        } else {
            None
        }
    }

    /// Whether any endpoint may want an event of `event_type`: most deployments subscribe to
    /// alerts and order results only, and a busy stream's messages are then passed over
    /// without being decoded.
    fn anyone_wants(subscriptions: &[Subscription], event_type: EventType) -> bool {
        // The ledger also carries the fills of backordered lines, delivered as their own type.
        let also = (event_type == EventType::StockChanged).then_some(EventType::BackorderFilled);
        subscriptions.iter().any(|s| match &s.events {
            EventFilter::All => true,
            EventFilter::Only(types) => {
                types.contains(&event_type) || also.is_some_and(|t| types.contains(&t))
            }
        })
    }
}

impl Handler for FanOut {
    fn event_types(&self) -> &'static [&'static str] {
        &event::NAMES
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        let message = delivery.message();
        let subscriptions = self.subscriptions.current();
        if let Some(event_type) = Self::bulk_type(delivery.subject()) {
            if !Self::anyone_wants(&subscriptions, event_type) {
                return Ok(Handled {
                    event_type: event_type.as_str(),
                    outcome: Outcome::Applied,
                });
            }
        }
        let Some(notification) = event::decode(message)? else {
            return Ok(Handled {
                event_type: "stock_outcome",
                outcome: Outcome::Applied,
            });
        };
        let (stream, sequence) = message
            .info()
            .map(|info| (info.stream.to_owned(), info.stream_sequence))
            .map_err(|e| HandleError::nats(anyhow::anyhow!("message without metadata: {e}")))?;
        let mut acks = Vec::new();
        for subscription in subscriptions.iter().filter(|s| {
            s.wants(
                notification.event_type,
                &notification.skus,
                &notification.locations,
                &notification.channels,
            )
        }) {
            let (subject, headers, body) =
                outbox::message(&subscription.id, &notification, &stream, sequence);
            let publish = PublishMessage::build()
                .payload(body)
                .headers(headers)
                .message_id(outbox::message_id(&subscription.id, &stream, sequence));
            // Sent together, then awaited together: one round trip, not one per endpoint.
            acks.push(
                self.js
                    .send_publish(subject, publish)
                    .await
                    .map_err(HandleError::nats)?,
            );
        }
        for ack in acks {
            ack.await.map_err(HandleError::nats)?;
        }
        Ok(Handled {
            event_type: notification.event_type.as_str(),
            outcome: Outcome::Applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_errors_name_the_variable() {
        let dir = std::env::temp_dir().join(format!("sf-notify-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("webhooks.json");
        std::fs::write(&file, r#"{"subscriptions": []}"#).expect("write");
        let path = file.to_string_lossy().into_owned();
        let env = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![("STOCKFLOW_WEBHOOKS_FILE".to_owned(), path.clone())];
            pairs.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            let map: std::collections::HashMap<_, _> = pairs.into_iter().collect();
            Env::from_fn(move |name| map.get(name).cloned())
        };
        // No Redis: its variables are neither read nor checked.
        let settings = Settings::from_env(&env(&[
            ("STOCKFLOW_REDIS_URL", "http://not-redis"),
            ("STOCKFLOW_DEDUP_TTL_SECONDS", "1"),
        ]))
        .expect("defaults");
        assert_eq!(settings.retry.horizon, Duration::from_secs(24 * 3600));
        assert_eq!(settings.retry.backoff_floor, Duration::from_secs(1));
        assert_eq!(settings.retry.backoff_ceiling, Duration::from_secs(300));
        assert!(
            Duration::from_secs(MAX_HORIZON_SECONDS) + settings.retry.backoff_ceiling
                < topology::WEBHOOKS_MAX_AGE
        );
        for (extra, var) in [
            (
                [("STOCKFLOW_WEBHOOK_MAX_ATTEMPTS", "8")],
                "STOCKFLOW_WEBHOOK_MAX_ATTEMPTS",
            ),
            (
                [("STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS", "100")],
                "STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS",
            ),
            (
                [("STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS", "999999")],
                "STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS",
            ),
            (
                [("STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS", "691200")],
                "STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS",
            ),
            (
                [("STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS", "0")],
                "STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS",
            ),
            (
                [("STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS", "soon")],
                "STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS",
            ),
        ] {
            let err = Settings::from_env(&env(&extra)).expect_err(var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn help_lists_no_redis_variable() {
        let env = Env::recording([]);
        let _ = Settings::from_env(&env);
        let names: Vec<String> = env.asked().into_iter().map(|v| v.name).collect();
        for shared in [
            "STOCKFLOW_NATS_URL",
            "STOCKFLOW_METRICS_ADDR",
            "STOCKFLOW_MAX_IN_FLIGHT",
            "STOCKFLOW_STOCK_PARTITIONS",
            "STOCKFLOW_STARTUP_TIMEOUT_SECONDS",
            "STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS",
        ] {
            assert!(names.iter().any(|n| n == shared), "{shared} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("STOCKFLOW_REDIS_")
                || n == "STOCKFLOW_KEY_PREFIX"
                || n == "STOCKFLOW_DEDUP_TTL_SECONDS"),
            "{names:?}"
        );
    }
}
