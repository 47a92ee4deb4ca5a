#![doc = include_str!("../README.md")]

pub mod deliver;
pub mod event;
pub mod subscriptions;

use std::{borrow::Cow, future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::{stream::FuturesUnordered, StreamExt as _};
use stockflow_shared::{
    consume::{Consumer, HandleError, Handled, Handler, Outcome, Pull},
    deadletter::DeadLetters,
    health::{self, Health, HealthCheck},
    settings::{ConfigError, Env},
    startup::Startup,
    telemetry,
    topology::{self, ConsumerSpec, TopologySettings, NOTIFY_ALERTS, NOTIFY_ORDER_RESULTS},
    worker::{readiness_checks, WorkerSettings},
};
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::{Deliverer, Delivery, Endpoint, RetryPolicy},
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

/// Default in-flight window per stream: an input stays in flight until every endpoint has its
/// delivery, so the window must hold the inputs a retrying endpoint keeps open.
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The notify worker's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connections, listener, consume loop (Redis settings are read but unused).
    pub worker: WorkerSettings,
    /// Where deliveries go (`STOCKFLOW_WEBHOOKS_FILE`).
    pub subscriptions: Vec<Subscription>,
    /// Retries and timeouts.
    pub retry: RetryPolicy,
    /// POSTs in flight per endpoint (`STOCKFLOW_WEBHOOK_CONCURRENCY`).
    pub concurrency: usize,
}

impl Settings {
    /// Reads the environment and the subscriptions file; errors name the variable (and the
    /// subscription).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut worker = WorkerSettings::from_env(env, "notify-worker", "127.0.0.1:9466")?;
        // Read again with this worker's own default, so `--help` shows that one.
        worker.consume.max_in_flight = usize::try_from(env.bounded(
            "STOCKFLOW_MAX_IN_FLIGHT",
            DEFAULT_MAX_IN_FLIGHT as u64,
            1..=10_000,
        )?)
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        // An input may wait for its endpoints far longer than the ack wait: pull only what can
        // start at once, so none waits unseen in the client while JetStream redelivers it.
        worker.consume.pull = Pull::WithinWindow;
        let millis =
            |var, default, range| env.bounded(var, default, range).map(Duration::from_millis);
        let retry = RetryPolicy {
            // Bounded by the range check.
            max_attempts: u32::try_from(env.bounded(
                "STOCKFLOW_WEBHOOK_MAX_ATTEMPTS",
                8,
                1..=100,
            )?)
            .unwrap_or(8),
            timeout: millis("STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS", 10_000, 10..=300_000)?,
            backoff_base: millis("STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS", 1_000, 1..=600_000)?,
            backoff_max: millis(
                "STOCKFLOW_WEBHOOK_BACKOFF_MAX_MILLIS",
                60_000,
                1..=3_600_000,
            )?,
            breaker_failures: u32::try_from(env.bounded(
                "STOCKFLOW_WEBHOOK_BREAKER_FAILURES",
                20,
                0..=100_000,
            )?)
            .unwrap_or(20),
            breaker_open: env.seconds("STOCKFLOW_WEBHOOK_BREAKER_OPEN_SECONDS", 30, 1..=86_400)?,
        };
        if retry.backoff_base > retry.backoff_max {
            return Err(ConfigError::Invalid {
                var: "STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS",
                reason: "must not exceed STOCKFLOW_WEBHOOK_BACKOFF_MAX_MILLIS".into(),
            });
        }
        Ok(Self {
            worker,
            subscriptions: subscriptions::from_env(env)?,
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

/// Runs the notify worker until `shutdown` resolves: one consume loop per stream, all feeding
/// the same endpoints.
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
    let (nats, js) = Startup::new(settings.worker.startup_timeout, token.clone())
        .nats_with_topology(&settings.worker.nats, &settings.worker.topology)
        .await?;
    tokio::spawn(monitor(nats.clone(), nats_up.clone(), token.clone()));
    if settings.subscriptions.is_empty() {
        tracing::warn!("no webhook subscriptions: every event is acknowledged undelivered");
    }
    let handler = Arc::new(NotifyHandler {
        endpoints: settings
            .subscriptions
            .iter()
            .map(|s| Endpoint::new(s.clone(), settings.concurrency))
            .collect(),
        deliverer: Deliverer::new(
            settings.retry.clone(),
            DeadLetters::new(js.clone()),
            token.clone(),
        )
        .context("building the HTTP client")?,
    });
    let loops = consumers(&settings.worker.topology)
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
            consumer.run(handler.clone(), token.clone())
        });
    futures::future::join_all(loops).await;
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
        "Webhook POSTs by endpoint and outcome (delivered, retried, failed)"
    );
    describe_histogram!(
        "stockflow_webhook_delivery_seconds",
        Unit::Seconds,
        "One webhook POST round trip"
    );
    describe_gauge!(
        "stockflow_webhook_breaker_open",
        "1 while an endpoint's breaker dead-letters without POSTing"
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

/// Fans one derived event out to the endpoints that want it, and reports it handled (so it is
/// acked) only when every one of them has it or has a dead letter for it.
#[derive(Debug)]
struct NotifyHandler {
    endpoints: Vec<Endpoint>,
    deliverer: Deliverer,
}

impl NotifyHandler {
    /// Whether any endpoint may want a ledger entry: most deployments subscribe to alerts and
    /// order results only, and the ledger is the busiest stream.
    fn wants_stock_changes(&self) -> bool {
        self.endpoints.iter().any(|e| match &e.subscription.events {
            EventFilter::All => true,
            EventFilter::Only(types) => types.contains(&EventType::StockChanged),
        })
    }
}

impl Handler for NotifyHandler {
    async fn handle(&self, message: &jetstream::Message) -> Result<Handled, HandleError> {
        if message.subject.starts_with("stock.changes.") && !self.wants_stock_changes() {
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
        let handled = Handled {
            event_type: notification.event_type.as_str(),
            outcome: Outcome::Applied,
        };
        // Each endpoint's delivery runs on its own: a slow one waits for its own permits and
        // back-off, while the others finish and free nothing but their own share of this input.
        // However long that takes, the consume loop keeps the input in progress.
        let mut deliveries: FuturesUnordered<_> = self
            .endpoints
            .iter()
            .filter(|e| {
                e.subscription.wants(
                    notification.event_type,
                    &notification.skus,
                    &notification.locations,
                )
            })
            .map(|endpoint| self.deliverer.deliver(endpoint, &notification, message))
            .collect();
        let mut interrupted = false;
        while let Some(done) = deliveries.next().await {
            if done == Delivery::Interrupted {
                interrupted = true;
            }
        }
        if interrupted {
            // Some endpoint neither has it nor a dead letter: the input must come back.
            return Err(HandleError::NotYet(
                "webhook deliveries interrupted by shutdown".into(),
            ));
        }
        Ok(handled)
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
        assert_eq!(settings.worker.consume.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(settings.retry.max_attempts, 8);
        assert_eq!(settings.worker.consume.pull, Pull::WithinWindow);
        for (extra, var) in [
            (
                [("STOCKFLOW_WEBHOOK_MAX_ATTEMPTS", "0")],
                "STOCKFLOW_WEBHOOK_MAX_ATTEMPTS",
            ),
            (
                [("STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS", "999999")],
                "STOCKFLOW_WEBHOOK_BACKOFF_BASE_MILLIS",
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
