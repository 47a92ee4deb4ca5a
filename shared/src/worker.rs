//! The one runtime every service uses: settings, connections, topology check, health
//! listener, dependency monitor, consume loops, extra tasks, an HTTP API, and the drain at
//! shutdown — so a service is its settings, a [`Handler`] (or routes) and a few lines of `main`.
//!
//! ```no_run
//! # use stockflow_shared::{consume::*, settings::Env, worker::*, topology::STOCK_WORKER};
//! # #[derive(Debug)] struct MyHandler;
//! # impl Handler for MyHandler {
//! #     async fn handle(&self, _: &Delivery) -> Result<Handled, HandleError> {
//! #         unimplemented!()
//! #     }
//! # }
//! # async fn example() -> anyhow::Result<()> {
//! let settings = WorkerSettings::from_env(&Env::process(), "my-worker", "127.0.0.1:9470")?;
//! settings.service.log.init();
//! // NATS only; `.redis(&redis_settings)` would add Redis (connection, readiness, monitor).
//! let runtime = Service::worker(&settings)
//!     .start(stockflow_shared::shutdown_signal())
//!     .await?;
//! runtime.consume(STOCK_WORKER, MyHandler).await
//! # }
//! ```

use std::{borrow::Cow, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    connect::{NatsSettings, RedisSettings},
    consume::{ConsumeSettings, Consumer, Handler},
    deadletter::DeadLetters,
    health::{self, Health, HealthCheck},
    redis_conn::RedisConnection,
    replication::ReplicaWait,
    settings::{ConfigError, Env},
    startup::Startup,
    telemetry::{self, LogSettings},
    topology::{self, ConsumerSpec, Mode, TopologySettings},
};

/// What every service reads: NATS, logging, the health listener, the start-up wait and the
/// shutdown bound.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// NATS connection.
    pub nats: NatsSettings,
    /// Logging.
    pub log: LogSettings,
    /// `/metrics`, `/healthz`, `/readyz` listener (`STOCKFLOW_METRICS_ADDR`).
    pub metrics_addr: SocketAddr,
    /// How long a start may wait for its servers (`STOCKFLOW_STARTUP_TIMEOUT_SECONDS`); `None`
    /// waits forever.
    pub startup_timeout: Option<Duration>,
    /// Bound on graceful shutdown (`STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS`): in-flight messages or
    /// requests get this long to finish.
    pub shutdown_timeout: Duration,
}

impl ServiceSettings {
    /// Reads the variables every service shares; `name` is the NATS client name,
    /// `metrics_addr` the local default of the health listener.
    pub fn from_env(env: &Env, name: &str, metrics_addr: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            shutdown_timeout: env.seconds("STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS", 20, 1..=600)?,
            nats: NatsSettings::from_env(env, name)?,
            log: LogSettings::from_env(env)?,
            metrics_addr: env.addr("STOCKFLOW_METRICS_ADDR", metrics_addr)?,
            startup_timeout: crate::startup::timeout_from_env(env)?,
        })
    }
}

/// What a service that consumes reads: the shared part, the topology it checks at start and
/// the consume loop's tuning.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Connections, logging, listener, start-up and shutdown.
    pub service: ServiceSettings,
    /// Streams and consumers (checked at start).
    pub topology: TopologySettings,
    /// Consume loop tuning (`STOCKFLOW_MAX_IN_FLIGHT`; drains within the shutdown timeout).
    pub consume: ConsumeSettings,
}

impl WorkerSettings {
    /// Reads the variables of [`ServiceSettings`], the topology and the consume loop.
    pub fn from_env(env: &Env, name: &str, metrics_addr: &str) -> Result<Self, ConfigError> {
        let service = ServiceSettings::from_env(env, name, metrics_addr)?;
        Ok(Self {
            consume: ConsumeSettings {
                max_in_flight: env.bounded_as("STOCKFLOW_MAX_IN_FLIGHT", 256, 1..=10_000)?,
                drain_timeout: service.shutdown_timeout,
                ..ConsumeSettings::default()
            },
            topology: topology_from_env(env)?,
            service,
        })
    }

    /// The `setup` command: declares (or, in [`Mode::Update`], updates) the topology.
    pub async fn setup(&self, mode: Mode) -> anyhow::Result<()> {
        setup(&self.service.nats, &self.topology, mode)
            .await
            .map(|_| ())
    }
}

/// The topology variables: stream replicas, the consumers' ack wait, stock partitions. Every
/// component that checks or reads the topology reads them (the workers, `stockctl`).
pub fn topology_from_env(env: &Env) -> Result<TopologySettings, ConfigError> {
    Ok(TopologySettings {
        replicas: env.bounded_as("STOCKFLOW_STREAM_REPLICAS", 1, 1..=5)?,
        ack_wait: env.seconds(
            "STOCKFLOW_ACK_WAIT_SECONDS",
            30,
            topology::MIN_ACK_WAIT_SECONDS..=3600,
        )?,
        stock_partitions: env.bounded_as(
            "STOCKFLOW_STOCK_PARTITIONS",
            1,
            1..=topology::MAX_STOCK_PARTITIONS,
        )?,
    })
}

/// What a worker that keeps state in Redis reads too: the connection, how long an `event_id`
/// is remembered, and the optional replica wait.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Redis connection and key prefix.
    pub redis: RedisSettings,
    /// How long an `event_id` is remembered (`STOCKFLOW_DEDUP_TTL_SECONDS`).
    pub dedup_ttl: Duration,
    /// Replicas that must confirm a write before its effects are published (off by default).
    pub replica_wait: Option<ReplicaWait>,
}

impl StateSettings {
    /// Reads `STOCKFLOW_REDIS_*`, `STOCKFLOW_KEY_PREFIX`, the dedup TTL and the replica wait.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            redis: RedisSettings::from_env(env)?,
            dedup_ttl: dedup_ttl_from_env(env)?,
            replica_wait: ReplicaWait::from_env(env)?,
        })
    }
}

/// `STOCKFLOW_DEDUP_TTL_SECONDS`: how long an `event_id` is remembered.
pub fn dedup_ttl_from_env(env: &Env) -> Result<Duration, ConfigError> {
    // Longer than any redelivery span and JetStream's duplicate windows (minutes).
    env.seconds("STOCKFLOW_DEDUP_TTL_SECONDS", 86_400, 600..=90 * 86_400)
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
pub async fn setup(
    nats: &NatsSettings,
    topology: &TopologySettings,
    mode: Mode,
) -> anyhow::Result<topology::Report> {
    let client = nats.connect().await?;
    let js = jetstream::new(client.clone());
    let report = topology::ensure(&js, topology, mode)
        .await
        .context("declaring streams and consumers")?;
    client.drain().await.ok();
    tracing::info!(
        created = report.count(topology::Action::Created),
        updated = report.count(topology::Action::Updated),
        "streams and consumers are in place"
    );
    Ok(report)
}

/// The first log line of a service: the version and the settings an operator checks first;
/// URLs without credentials, no secret. `redis` is `None` for a service without Redis,
/// `topology` for one that checks none (the gateway).
pub fn log_start(
    nats: &NatsSettings,
    redis: Option<&RedisSettings>,
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
        redis = redis.map(|r| tracing::field::display(r.redacted_url())),
        redis_cluster = redis.map(|r| r.cluster),
        key_prefix = redis.map(|r| tracing::field::display(&r.key_prefix)),
        %metrics_addr,
        stock_partitions = topology.map(|t| t.stock_partitions),
        stream_replicas = topology.map(|t| t.replicas),
        "starting"
    );
}

/// What a service uses, declared before it starts: NATS always; the topology it checks and the
/// consume tuning when it consumes; Redis when `R` is `&RedisSettings` (see [`Service::redis`]).
#[derive(Debug, Clone, Copy)]
pub struct Service<'a, R = ()> {
    settings: &'a ServiceSettings,
    topology: Option<&'a TopologySettings>,
    consume: Option<&'a ConsumeSettings>,
    redis: R,
}

impl<'a> Service<'a> {
    /// A service on NATS that checks no topology and consumes nothing (yet).
    pub fn new(settings: &'a ServiceSettings) -> Self {
        Self {
            settings,
            topology: None,
            consume: None,
            redis: (),
        }
    }

    /// A consuming service: its topology is checked (and what is missing created) at start, and
    /// its consume loops are tuned by `settings.consume`.
    pub fn worker(settings: &'a WorkerSettings) -> Self {
        Self {
            topology: Some(&settings.topology),
            consume: Some(&settings.consume),
            ..Self::new(&settings.service)
        }
    }

    /// Uses Redis too: connected at start (`/readyz` names `redis` until it answers), watched by
    /// the dependency monitor, and consume loops take no input while it is down.
    pub fn redis(self, redis: &'a RedisSettings) -> Service<'a, &'a RedisSettings> {
        Service {
            settings: self.settings,
            topology: self.topology,
            consume: self.consume,
            redis,
        }
    }

    /// Starts the service: logs `starting`, serves health first (so an orchestrator sees a live
    /// process that is not ready while it waits), then connects to NATS and checks the topology
    /// (creating what is missing) — waiting for servers that do not answer yet (see
    /// [`crate::startup`]) while `/readyz` names them — and starts the dependency monitor.
    /// `shutdown` ends the service when it resolves, also while it waits.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Runtime<()>> {
        let (runtime, _) = self.start_with(None, shutdown).await?;
        Ok(runtime)
    }
}

impl Service<'_, &RedisSettings> {
    /// Starts the service as a service without Redis does (see `start` there), then connects to
    /// Redis, waiting for it while `/readyz` names `redis`; the monitor watches both.
    pub async fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Runtime> {
        let redis = self.redis;
        let (runtime, connection) = self.start_with(Some(redis), shutdown).await?;
        let connection = connection.context("Redis was asked for but not connected")?;
        Ok(runtime.with_redis(connection))
    }
}

impl<R> Service<'_, R> {
    /// The start of either kind; the connection is `Some` when `redis` is.
    async fn start_with(
        self,
        redis: Option<&RedisSettings>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<(Runtime<()>, Option<RedisConnection>)> {
        let settings = self.settings;
        let token = crate::shutdown::token_for(shutdown);
        log_start(&settings.nats, redis, settings.metrics_addr, self.topology);
        let health = Health::default();
        let nats_up = health.check("nats");
        let redis_up = redis.map(|_| health.check("redis"));
        let metrics_addr = health::serve(
            settings.metrics_addr,
            health.clone(),
            telemetry::metrics_handle(),
            token.clone(),
        )
        .await?;
        let startup = Startup::new(settings.startup_timeout, token.clone());
        let (nats, js) = match self.topology {
            Some(topology) => startup.nats_with_topology(&settings.nats, topology).await?,
            None => {
                let nats = startup.nats(&settings.nats).await?;
                let js = jetstream::new(nats.clone());
                (nats, js)
            }
        };
        // Until the monitor takes over: `/readyz` then names only what is still awaited.
        nats_up.set(true);
        let connection = match redis {
            Some(redis) => Some(startup.redis(redis).await?),
            None => None,
        };
        let watched = connection.clone().zip(redis_up.clone());
        tokio::spawn(monitor(
            nats.clone(),
            watched,
            nats_up.clone(),
            token.clone(),
        ));
        let runtime = Runtime {
            nats,
            js,
            redis: (),
            health,
            metrics_addr,
            shutdown: token,
            startup,
            can_process: redis_up.unwrap_or(nats_up),
            consume: self.consume.cloned().unwrap_or_else(|| ConsumeSettings {
                drain_timeout: settings.shutdown_timeout,
                ..ConsumeSettings::default()
            }),
            shutdown_timeout: settings.shutdown_timeout,
            name: settings.nats.client_name.clone(),
            tasks: JoinSet::new(),
        };
        Ok((runtime, connection))
    }
}

/// A started service: its clients, health, the shutdown token, and the tasks it runs until
/// shutdown. `R` is its Redis connection, `()` for a service without Redis.
///
/// It ends in one of [`Runtime::consume`], [`Runtime::consume_all`], [`Runtime::serve`] or
/// [`Runtime::finish`]: each waits for the service's tasks, then drains the NATS connection.
#[derive(Debug)]
pub struct Runtime<R = RedisConnection> {
    /// NATS client.
    pub nats: async_nats::Client,
    /// JetStream context.
    pub js: jetstream::Context,
    /// Redis connection (multiplexed, reconnecting), or `()`.
    pub redis: R,
    /// Readiness checks.
    pub health: Health,
    /// Where `/metrics` is served (the bound port when configured with port 0).
    pub metrics_addr: SocketAddr,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// The start-up wait, for servers the service waits for beyond the runtime's own (its
    /// deadline counts from the start).
    pub startup: Startup,
    /// Whether consume loops may take input: `redis` when the service uses Redis, else `nats`.
    can_process: HealthCheck,
    consume: ConsumeSettings,
    shutdown_timeout: Duration,
    /// The NATS client name, for the last log line.
    name: String,
    tasks: JoinSet<()>,
}

impl Runtime<()> {
    fn with_redis<R>(self, redis: R) -> Runtime<R> {
        Runtime {
            nats: self.nats,
            js: self.js,
            redis,
            health: self.health,
            metrics_addr: self.metrics_addr,
            shutdown: self.shutdown,
            startup: self.startup,
            can_process: self.can_process,
            consume: self.consume,
            shutdown_timeout: self.shutdown_timeout,
            name: self.name,
            tasks: self.tasks,
        }
    }
}

impl<R> Runtime<R> {
    /// A consume loop on `spec`'s consumer with its own readiness check `check`, tuned by the
    /// service's consume settings and pausing while a dependency is down; change its fields
    /// before [`Runtime::spawn_consumer`] where one loop differs.
    pub fn consumer(&self, spec: ConsumerSpec, check: impl Into<Cow<'static, str>>) -> Consumer {
        Consumer {
            js: self.js.clone(),
            spec,
            dead_letters: DeadLetters::new(self.js.clone()),
            bound: self.health.check(check),
            can_process: self.can_process.clone(),
            settings: self.consume.clone(),
        }
    }

    /// Whether consume loops may take input now (the readiness of NATS, or of Redis when the
    /// service uses it): a flag to combine with a loop's own condition.
    pub fn can_process(&self) -> HealthCheck {
        self.can_process.clone()
    }

    /// Runs `task` until it ends; tasks should end at shutdown (watch [`Runtime::shutdown`]).
    /// The runtime waits for every task before it drains NATS.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Runs `consumer` with `handler` until shutdown, as one of the service's tasks.
    pub fn spawn_consumer<H: Handler>(&mut self, consumer: Consumer, handler: Arc<H>) {
        let shutdown = self.shutdown.clone();
        self.spawn(consumer.run(handler, shutdown));
    }

    /// Waits for every task, then flushes the acks and publishes still buffered and closes the
    /// NATS connection. A task that panicked is logged, and reported as an error once drained.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let mut panicked = 0;
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a task of the service panicked");
                panicked += 1;
            }
        }
        if let Err(e) = self.nats.drain().await {
            tracing::warn!(error = %e, "nats drain failed");
        }
        tracing::info!(worker = %self.name, "stopped");
        if panicked > 0 {
            anyhow::bail!("{panicked} task(s) of {} panicked", self.name);
        }
        Ok(())
    }

    /// Runs `handler` on `spec`'s consumer (readiness check `consumer`) until shutdown, then
    /// finishes (see [`Runtime::finish`]).
    pub async fn consume<H: Handler>(self, spec: ConsumerSpec, handler: H) -> anyhow::Result<()> {
        self.consume_all(&[(spec, "consumer".into())], handler)
            .await
    }

    /// Runs one consume loop per consumer, all sharing `handler`, until shutdown; each loop has
    /// its own readiness check, named next to its consumer. Then finishes (see
    /// [`Runtime::finish`]).
    pub async fn consume_all<H: Handler>(
        mut self,
        consumers: &[(ConsumerSpec, Cow<'static, str>)],
        handler: H,
    ) -> anyhow::Result<()> {
        let handler = Arc::new(handler);
        for (spec, check) in consumers {
            let consumer = self.consumer(*spec, check.clone());
            self.spawn_consumer(consumer, handler.clone());
        }
        self.finish().await
    }

    /// Serves `app` on `listener` until shutdown; then stops accepting and lets the requests in
    /// flight finish, bounded by the shutdown timeout. Then finishes (see [`Runtime::finish`]).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
    ) -> anyhow::Result<()> {
        let stop = self.shutdown.clone();
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        let serve = std::future::IntoFuture::into_future(serve);
        tokio::pin!(serve);
        let token = self.shutdown.clone();
        let shutdown_timeout = self.shutdown_timeout;
        tokio::select! {
            served = &mut serve => served.context("serving the API")?,
            () = async {
                token.cancelled().await;
                // The bound on graceful shutdown: in-flight requests get this long to finish.
                tokio::time::sleep(shutdown_timeout).await;
            } => tracing::warn!("requests still in flight at the shutdown deadline"),
        }
        self.finish().await
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

/// Keeps the `nats` readiness check, and the `redis` one of a service that uses Redis, current
/// until `shutdown`.
async fn monitor(
    nats: async_nats::Client,
    mut redis: Option<(RedisConnection, HealthCheck)>,
    nats_up: HealthCheck,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        nats_up.set(nats.connection_state() == async_nats::connection::State::Connected);
        let Some((redis, redis_up)) = &mut redis else {
            continue;
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(env: &Env) -> Vec<String> {
        env.asked().into_iter().map(|v| v.name).collect()
    }

    #[test]
    fn each_part_reads_only_its_own_variables() {
        let env = Env::recording([("STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS", "7")]);
        let worker = WorkerSettings::from_env(&env, "t", "127.0.0.1:0").expect("defaults");
        assert_eq!(worker.consume.drain_timeout, Duration::from_secs(7));
        assert_eq!(worker.consume.max_in_flight, 256);
        let read = names(&env);
        assert!(
            read.iter().any(|n| n == "STOCKFLOW_STOCK_PARTITIONS"),
            "{read:?}"
        );
        assert!(
            !read
                .iter()
                .any(|n| n.contains("REDIS") || n.contains("DEDUP") || n.contains("PREFIX")),
            "a worker without state reads no Redis setting: {read:?}"
        );

        let env = Env::recording([]);
        ServiceSettings::from_env(&env, "t", "127.0.0.1:0").expect("defaults");
        let read = names(&env);
        assert!(
            !read
                .iter()
                .any(|n| n.contains("MAX_IN_FLIGHT") || n.contains("PARTITIONS")),
            "a service that consumes nothing reads no consume setting: {read:?}"
        );

        let env = Env::recording([]);
        let state = StateSettings::from_env(&env).expect("defaults");
        assert_eq!(state.dedup_ttl, Duration::from_secs(86_400));
        assert!(state.replica_wait.is_none());
        assert!(names(&env).iter().any(|n| n == "STOCKFLOW_REDIS_URL"));
    }

    #[test]
    fn typed_settings_name_the_variable() {
        for (var, value) in [
            ("STOCKFLOW_MAX_IN_FLIGHT", "0"),
            ("STOCKFLOW_STREAM_REPLICAS", "6"),
            ("STOCKFLOW_STOCK_PARTITIONS", "-1"),
        ] {
            let env = Env::from_pairs([(var, value)]);
            let err = WorkerSettings::from_env(&env, "t", "127.0.0.1:0").expect_err(var);
            assert!(err.to_string().starts_with(&format!("{var}:")), "{err}");
        }
    }
}
