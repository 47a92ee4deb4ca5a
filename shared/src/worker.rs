//! The composition every worker shares: settings, connections, topology check, health listener,
//! dependency monitor, and the consume loop — so a worker is its [`Handler`] plus a few lines.

use std::{borrow::Cow, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::{
    connect::{NatsSettings, RedisSettings},
    consume::{ConsumeSettings, Consumer, Handler},
    deadletter::DeadLetters,
    health::{self, Health, HealthCheck},
    settings::{ConfigError, Env},
    startup::Startup,
    telemetry::{self, LogSettings},
    topology::{self, ConsumerSpec, Mode, TopologySettings},
};

/// Settings every worker reads.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// NATS connection.
    pub nats: NatsSettings,
    /// Redis connection and key prefix.
    pub redis: RedisSettings,
    /// Logging.
    pub log: LogSettings,
    /// `/metrics`, `/healthz`, `/readyz` listener.
    pub metrics_addr: SocketAddr,
    /// Consume loop tuning.
    pub consume: ConsumeSettings,
    /// Stream creation.
    pub topology: TopologySettings,
    /// How long an `event_id` is remembered.
    pub dedup_ttl: Duration,
    /// Replicas that must confirm a write before its effects are published (off by default).
    pub replica_wait: Option<crate::replication::ReplicaWait>,
    /// How long a start may wait for its servers (`STOCKFLOW_STARTUP_TIMEOUT_SECONDS`); `None`
    /// waits forever.
    pub startup_timeout: Option<Duration>,
}

impl WorkerSettings {
    /// Reads the shared variables; `name` is the client name, `metrics_addr` the local default.
    pub fn from_env(env: &Env, name: &str, metrics_addr: &str) -> Result<Self, ConfigError> {
        let shutdown = env.seconds("STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS", 20, 1..=600)?;
        let max_in_flight = env.bounded("STOCKFLOW_MAX_IN_FLIGHT", 256, 1..=10_000)?;
        Ok(Self {
            nats: NatsSettings::from_env(env, name)?,
            redis: RedisSettings::from_env(env)?,
            log: LogSettings::from_env(env)?,
            metrics_addr: env.addr("STOCKFLOW_METRICS_ADDR", metrics_addr)?,
            consume: ConsumeSettings {
                // Bounded above by the range check.
                max_in_flight: usize::try_from(max_in_flight).unwrap_or(256),
                drain_timeout: shutdown,
                ..ConsumeSettings::default()
            },
            topology: TopologySettings {
                replicas: usize::try_from(env.bounded("STOCKFLOW_STREAM_REPLICAS", 1, 1..=5)?)
                    .unwrap_or(1),
                ack_wait: env.seconds(
                    "STOCKFLOW_ACK_WAIT_SECONDS",
                    30,
                    topology::MIN_ACK_WAIT_SECONDS..=3600,
                )?,
                // Every component reads it: each one checks the topology at start.
                stock_partitions: usize::try_from(env.bounded(
                    "STOCKFLOW_STOCK_PARTITIONS",
                    1,
                    1..=topology::MAX_STOCK_PARTITIONS as u64,
                )?)
                .unwrap_or(1),
            },
            // Longer than any redelivery span and JetStream's duplicate windows (minutes).
            dedup_ttl: env.seconds("STOCKFLOW_DEDUP_TTL_SECONDS", 86_400, 600..=90 * 86_400)?,
            replica_wait: crate::replication::ReplicaWait::from_env(env)?,
            startup_timeout: crate::startup::timeout_from_env(env)?,
        })
    }
}

/// A worker's command line: no argument runs it, `setup` declares streams and consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run the worker.
    Run,
    /// Declare (or, with `--update`, update) the topology and exit.
    Setup(Mode),
}

impl Command {
    /// Parses `std::env::args`.
    pub fn from_args(usage: &str) -> anyhow::Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match args.as_slice() {
            [] => Ok(Self::Run),
            ["setup"] => Ok(Self::Setup(Mode::Verify)),
            ["setup", "--update"] => Ok(Self::Setup(Mode::Update)),
            _ => anyhow::bail!("usage: {usage} [setup [--update]] (see {usage} --help)"),
        }
    }
}

/// Declares streams and consumers and reports what it did.
pub async fn setup(settings: &WorkerSettings, mode: Mode) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = settings.nats.connect().await?;
    let js = jetstream::new(client.clone());
    topology::ensure(&js, &settings.topology, mode)
        .await
        .context("declaring streams and consumers")?;
    client.drain().await.ok();
    tracing::info!("streams and consumers are in place");
    Ok(())
}

/// The first log line of a worker or the gateway: the version and the settings an operator
/// checks first; URLs without credentials, no secret. `topology` is `None` for the gateway.
pub fn log_start(
    nats: &NatsSettings,
    redis: &RedisSettings,
    metrics_addr: SocketAddr,
    topology: Option<&TopologySettings>,
) {
    let servers: Vec<String> = nats
        .urls
        .iter()
        .map(|u| crate::connect::redact_url(u))
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        client = %nats.client_name,
        nats = %servers.join(","),
        nats_credentials = nats.auth.variables(),
        redis = %redis.redacted_url(),
        redis_cluster = redis.cluster,
        key_prefix = %redis.key_prefix,
        %metrics_addr,
        stock_partitions = topology.map(|t| t.stock_partitions),
        stream_replicas = topology.map(|t| t.replicas),
        "starting"
    );
}

/// A connected worker: clients, health, and the shutdown token.
#[derive(Debug)]
pub struct Runtime {
    /// NATS client.
    pub nats: async_nats::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Redis connection (multiplexed, reconnecting).
    pub redis: crate::redis_conn::RedisConnection,
    /// Readiness checks.
    pub health: Health,
    /// Where `/metrics` is served (the bound port when configured with port 0).
    pub metrics_addr: SocketAddr,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    redis_up: HealthCheck,
    settings: WorkerSettings,
}

impl Runtime {
    /// Starts the health listener, then connects and verifies the topology (creating what is
    /// missing), waiting for servers that do not answer yet (see [`crate::startup`]) while
    /// `/readyz` names them; then starts the dependency monitor. `shutdown` ends the worker when
    /// it resolves, also while it waits.
    pub async fn start(
        settings: WorkerSettings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        let token = crate::shutdown::token_for(shutdown);
        log_start(
            &settings.nats,
            &settings.redis,
            settings.metrics_addr,
            Some(&settings.topology),
        );
        // First, so an orchestrator sees a live process that is not ready while it waits.
        let health = Health::default();
        let nats_up = health.check("nats");
        let redis_up = health.check("redis");
        let metrics_addr = health::serve(
            settings.metrics_addr,
            health.clone(),
            telemetry::metrics_handle(),
            token.clone(),
        )
        .await?;
        let startup = Startup::new(settings.startup_timeout, token.clone());
        let (nats, js) = startup
            .nats_with_topology(&settings.nats, &settings.topology)
            .await?;
        // Until the monitor takes over: `/readyz` then names only what is still awaited.
        nats_up.set(true);
        let redis = startup.redis(&settings.redis).await?;
        tokio::spawn(monitor(
            nats.clone(),
            redis.clone(),
            nats_up,
            redis_up.clone(),
            token.clone(),
        ));
        Ok(Self {
            nats,
            js,
            redis,
            health,
            metrics_addr,
            shutdown: token,
            redis_up,
            settings,
        })
    }

    /// The settings the worker started with.
    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// Runs `handler` on `spec`'s consumer until shutdown, then drains the NATS connection.
    pub async fn consume<H: Handler>(self, spec: ConsumerSpec, handler: H) -> anyhow::Result<()> {
        self.consume_all(&[(spec, "consumer".into())], handler)
            .await
    }

    /// Runs one consume loop per consumer, all sharing `handler`, until shutdown; each loop has
    /// its own readiness check, named next to its consumer. Then drains the NATS connection.
    pub async fn consume_all<H: Handler>(
        self,
        consumers: &[(ConsumerSpec, Cow<'static, str>)],
        handler: H,
    ) -> anyhow::Result<()> {
        let handler = Arc::new(handler);
        let loops = consumers.iter().map(|(spec, check)| {
            let consumer = Consumer {
                js: self.js.clone(),
                spec: *spec,
                dead_letters: DeadLetters::new(self.js.clone()),
                bound: self.health.check(check.clone()),
                can_process: self.redis_up.clone(),
                settings: self.settings.consume.clone(),
            };
            consumer.run(handler.clone(), self.shutdown.clone())
        });
        futures::future::join_all(loops).await;
        // Flush acks and publishes still buffered, then close.
        if let Err(e) = self.nats.drain().await {
            tracing::warn!(error = %e, "nats drain failed");
        }
        if let Some((spec, _)) = consumers.first() {
            tracing::info!(worker = spec.durable, "stopped");
        }
        Ok(())
    }
}

/// Each consumer with the name of its readiness check: `single` when there is one consumer, and
/// `consumer_<stream>` per partition stream, so `/readyz` says which partition is unbound.
pub fn readiness_checks(
    specs: &[ConsumerSpec],
    single: &'static str,
) -> Vec<(ConsumerSpec, Cow<'static, str>)> {
    match specs {
        [one] => vec![(*one, single.into())],
        partitions => partitions
            .iter()
            .map(|spec| (*spec, format!("consumer_{}", spec.stream).into()))
            .collect(),
    }
}

/// Keeps the `nats` and `redis` readiness checks current until `shutdown` (every worker, and the
/// gateway, which has no consumer).
pub async fn monitor(
    nats: async_nats::Client,
    mut redis: crate::redis_conn::RedisConnection,
    nats_up: HealthCheck,
    redis_up: HealthCheck,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        nats_up.set(nats.connection_state() == async_nats::connection::State::Connected);
        let up = tokio::time::timeout(Duration::from_secs(1), redis.is_up())
            .await
            .unwrap_or(false);
        if !up && redis.is_cluster() {
            // After a failover: read the slot map again (see `ClusterHandle`).
            if let Err(e) = redis.refresh().await {
                tracing::debug!(error = %e, "redis cluster refresh failed");
            }
        }
        if up != redis_up.get() {
            if up {
                tracing::info!("redis is reachable");
            } else {
                tracing::warn!("redis is unreachable; pausing intake");
            }
        }
        redis_up.set(up);
    }
}
