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
    consume::{Consumer, Delivery, HandleError, Handled, Handler, Outcome},
    deadletter::DeadLetters,
    health::{self, Health, HealthCheck},
    settings::{ConfigError, Env, Secret},
    startup::Startup,
    telemetry,
    topology::{self, ConsumerSpec, TopologySettings, NOTIFY_ALERTS, NOTIFY_ORDER_RESULTS},
    worker::{readiness_checks, WorkerSettings},
};
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::RetryPolicy,
    endpoints::{Endpoints, SubscriptionSet},
    event::EventType,
    subscriptions::{EventFilter, Subscription},
};

/// The consumers this worker reads, each with the name of its readiness check: alerts, the
/// ledger (one consumer per ledger partition when the deployment is partitioned) and order
/// results.
pub fn consumers(topology: &TopologySettings) -> Vec<(ConsumerSpec, Cow<'static, str>)> {
    let ledger = topology::notify_stock_changes(topology);
    std::iter::once((NOTIFY_ALERTS, "consumer_alerts".into()))
        .chain(readiness_checks(&ledger, "consumer_stock_changes"))
        .chain([(NOTIFY_ORDER_RESULTS, "consumer_order_results".into())])
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
    /// Connections, listener, consume loop of the fan-out (Redis settings are read but unused).
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
            breaker_failures: u32::try_from(env.bounded(
                "STOCKFLOW_WEBHOOK_BREAKER_FAILURES",
                20,
                0..=100_000,
            )?)
            .unwrap_or(20),
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
            concurrency: usize::try_from(env.bounded(
                "STOCKFLOW_WEBHOOK_CONCURRENCY",
                8,
                1..=256,
            )?)
            .unwrap_or(8),
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
    let token = stockflow_shared::shutdown::token_for(shutdown);
    describe_metrics();
    // The health listener first: `/readyz` names `nats` while the worker waits for it.
    let health = Health::default();
    let nats_up = health.check("nats");
    health::serve(
        settings.worker.metrics_addr,
        health.clone(),
        telemetry::metrics_handle(),
        token.clone(),
    )
    .await?;
    let startup = Startup::new(settings.worker.startup_timeout, token.clone());
    let (nats, js) = startup
        .nats_with_topology(&settings.worker.nats, &settings.worker.topology)
        .await?;
    let endpoints = Arc::new(Endpoints::new(
        &settings,
        js.clone(),
        &health,
        &nats_up,
        &token,
    )?);
    endpoints
        .start_file(&startup, &settings.subscriptions)
        .await?;
    endpoints.start_bucket(&startup).await?;
    tokio::spawn(monitor(nats.clone(), nats_up.clone(), token.clone()));
    if settings.subscriptions.is_empty() {
        tracing::info!(
            "no webhook subscriptions in STOCKFLOW_WEBHOOKS_FILE: delivering to those of the \
             WEBHOOK_SUBSCRIPTIONS bucket only"
        );
    }
    let fan_out = Arc::new(FanOut {
        js: js.clone(),
        subscriptions: endpoints.subscriptions(),
    });
    let inputs = consumers(&settings.worker.topology)
        .into_iter()
        .map(|(spec, check)| {
            let consumer = Consumer {
                js: js.clone(),
                spec,
                dead_letters: DeadLetters::new(js.clone()),
                bound: health.check(check),
                can_process: nats_up.clone(),
                settings: settings.worker.consume.clone(),
            };
            tokio::spawn(consumer.run(fan_out.clone(), token.clone()))
        })
        .collect::<Vec<_>>();
    let registry = tokio::spawn(endpoints.clone().watch());
    for task in inputs.into_iter().chain([registry]) {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "consume loop panicked");
        }
    }
    endpoints.join().await;
    if let Err(e) = nats.drain().await {
        tracing::warn!(error = %e, "nats drain failed");
    }
    tracing::info!("notify-worker stopped");
    Ok(())
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

/// Keeps the `nats` readiness check current; the consume loops take no input while it is down.
async fn monitor(nats: async_nats::Client, nats_up: HealthCheck, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        nats_up.set(nats.connection_state() == async_nats::connection::State::Connected);
    }
}

/// Fans one derived event out into the outbox: one message per endpoint that wants it, acked
/// only once `WEBHOOKS` stored every one. It never waits for an endpoint.
#[derive(Debug)]
struct FanOut {
    js: jetstream::Context,
    subscriptions: SubscriptionSet,
}

impl FanOut {
    /// Whether any endpoint may want a ledger entry: most deployments subscribe to alerts and
    /// order results only, and the ledger is the busiest stream.
    fn wants_stock_changes(subscriptions: &[Subscription]) -> bool {
        subscriptions.iter().any(|s| match &s.events {
            EventFilter::All => true,
            EventFilter::Only(types) => types.contains(&EventType::StockChanged),
        })
    }
}

impl Handler for FanOut {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        let message = delivery.message();
        let subscriptions = self.subscriptions.current();
        if delivery.subject().starts_with("stock.changes.")
            && !Self::wants_stock_changes(&subscriptions)
        {
            return Ok(Handled {
                event_type: EventType::StockChanged.as_str(),
                outcome: Outcome::Applied,
            });
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
        let settings = Settings::from_env(&env(&[])).expect("defaults");
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
}
