//! Waiting for the servers at start-up, written once for every binary.
//!
//! A process may start before NATS or Redis (a node reboot, a `docker compose up`, a server
//! restarting): it keeps trying, with a capped back-off, until the server answers — logging once
//! when it starts waiting and once when it goes on, never per try. A configuration error (wrong
//! credentials, a TLS file the client refuses, a topology that differs) is not "server down":
//! it ends the start at once. `STOCKFLOW_STARTUP_TIMEOUT_SECONDS` bounds the whole wait for an
//! operator who prefers failing fast to waiting (0, the default, waits forever).
//!
//! Why not `async_nats::ConnectOptions::retry_on_initial_connect`: it returns a client at once
//! and retries in the background, reporting every failure — wrong credentials included — only
//! as events, so a start could neither fail fast on a configuration error nor honour a deadline.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::{
    connect::{redact_url, NatsSettings, RedisConnectError, RedisSettings},
    redis_conn::RedisConnection,
    settings::{ConfigError, Env},
    topology::{self, TopologyError, TopologySettings},
};

/// The variable that bounds the wait.
pub const TIMEOUT_VAR: &str = "STOCKFLOW_STARTUP_TIMEOUT_SECONDS";

/// First pause between two tries; it doubles per try up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_millis(100);

/// Longest pause between two tries: a server that comes back is noticed within this.
pub const RETRY_CAP: Duration = Duration::from_secs(2);

/// Reads `STOCKFLOW_STARTUP_TIMEOUT_SECONDS`: `None` (wait forever) for the default 0.
pub fn timeout_from_env(env: &Env) -> Result<Option<Duration>, ConfigError> {
    let timeout = env.seconds(TIMEOUT_VAR, 0, 0..=86_400)?;
    Ok((!timeout.is_zero()).then_some(timeout))
}

/// Why one try failed: the variant decides whether to try again.
#[derive(Debug)]
pub enum Failure {
    /// The server is down, unreachable or not answering yet: try again.
    Unavailable(anyhow::Error),
    /// Trying again cannot help (credentials, TLS, a topology mismatch): give up now.
    Misconfigured(anyhow::Error),
}

/// Why a start did not get its servers.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A configuration error; the message names the variable(s) it came from.
    #[error(transparent)]
    Misconfigured(anyhow::Error),
    /// `STOCKFLOW_STARTUP_TIMEOUT_SECONDS` passed while the server was still unavailable.
    #[error("gave up waiting for {server} after {limit:?} ({TIMEOUT_VAR}={}; 0 waits forever): {last:#}", limit.as_secs())]
    TimedOut {
        /// What was waited for, e.g. `nats at nats://127.0.0.1:4222`.
        server: String,
        /// The configured limit.
        limit: Duration,
        /// The last failure.
        last: anyhow::Error,
    },
    /// Shutdown was requested while waiting.
    #[error("stopped while waiting for {server}")]
    Stopped {
        /// What was waited for.
        server: String,
    },
}

/// The waiting of one process start: one deadline for all its servers, counted from creation.
#[derive(Debug, Clone)]
pub struct Startup {
    started: Instant,
    timeout: Option<Duration>,
    shutdown: CancellationToken,
}

impl Startup {
    /// Starts the clock; `timeout` is `STOCKFLOW_STARTUP_TIMEOUT_SECONDS` (`None`: forever),
    /// `shutdown` ends the wait.
    pub fn new(timeout: Option<Duration>, shutdown: CancellationToken) -> Self {
        Self {
            started: Instant::now(),
            timeout,
            shutdown,
        }
    }

    /// Tries `attempt` until it succeeds, fails with [`Failure::Misconfigured`], the deadline
    /// passes or shutdown is requested. `server` names what is waited for in the logs and errors.
    pub async fn wait<T, F, Fut>(&self, server: &str, mut attempt: F) -> Result<T, StartupError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut waiting_since: Option<Instant> = None;
        let mut previous: Option<anyhow::Error> = None;
        let mut tries = 0u32;
        loop {
            let remaining = self
                .timeout
                .map(|limit| limit.saturating_sub(self.started.elapsed()));
            let tried = tokio::select! {
                () = self.shutdown.cancelled() => return Err(self.stopped(server)),
                tried = bounded(remaining, attempt()) => tried,
            };
            let last = match tried {
                // The deadline cut this try short: the previous try's failure says why.
                None => previous
                    .take()
                    .unwrap_or_else(|| anyhow::anyhow!("no answer before the start-up deadline")),
                Some(Ok(value)) => {
                    if let Some(since) = waiting_since {
                        tracing::info!(
                            waited_seconds = since.elapsed().as_secs_f64(),
                            "{server} answered; going on"
                        );
                    }
                    return Ok(value);
                }
                Some(Err(Failure::Misconfigured(e))) => return Err(StartupError::Misconfigured(e)),
                Some(Err(Failure::Unavailable(e))) => e,
            };
            if waiting_since.is_none() {
                // Once per wait, not per try: the reason rarely changes while a server is down.
                tracing::warn!("waiting for {server}: {last:#}");
                waiting_since = Some(Instant::now());
            }
            let remaining = self
                .timeout
                .map(|limit| (limit, limit.saturating_sub(self.started.elapsed())));
            if let Some((limit, Duration::ZERO)) = remaining {
                return Err(StartupError::TimedOut {
                    server: server.to_owned(),
                    limit,
                    last,
                });
            }
            previous = Some(last);
            let mut pause = crate::consume::backoff(tries, RETRY_BASE, RETRY_CAP);
            if let Some((_, left)) = remaining {
                pause = pause.min(left);
            }
            tries = tries.saturating_add(1);
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(self.stopped(server)),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Connects to NATS, waiting while no server answers; wrong credentials or TLS fail at once.
    pub async fn nats(&self, settings: &NatsSettings) -> Result<async_nats::Client, StartupError> {
        let servers: Vec<String> = settings.urls.iter().map(|u| redact_url(u.trim())).collect();
        let server = format!("nats at {}", servers.join(","));
        self.wait(&server, || async {
            settings.connect().await.map_err(nats_failure)
        })
        .await
    }

    /// Verifies (and completes) the topology, waiting while JetStream does not answer (a server
    /// restarting, a cluster electing leaders); a mismatch fails at once.
    pub async fn topology(
        &self,
        js: &jetstream::Context,
        settings: &TopologySettings,
    ) -> Result<(), StartupError> {
        self.wait("JetStream to answer the topology check", || async {
            match topology::ensure(js, settings, topology::Mode::Verify).await {
                Ok(_) => Ok(()),
                Err(e @ TopologyError::JetStream { .. }) => Err(Failure::Unavailable(
                    anyhow::Error::new(e).context("checking streams and consumers"),
                )),
                Err(e) => Err(Failure::Misconfigured(
                    anyhow::Error::new(e).context("checking streams and consumers"),
                )),
            }
        })
        .await
    }

    /// [`Self::nats`], then [`Self::topology`]: what every worker does first.
    pub async fn nats_with_topology(
        &self,
        settings: &NatsSettings,
        topology: &TopologySettings,
    ) -> Result<(async_nats::Client, jetstream::Context), StartupError> {
        let nats = self.nats(settings).await?;
        let js = jetstream::new(nats.clone());
        self.topology(&js, topology).await?;
        Ok((nats, js))
    }

    /// Connects to Redis, waiting while it is down or loading; wrong credentials fail at once.
    pub async fn redis(&self, settings: &RedisSettings) -> Result<RedisConnection, StartupError> {
        let server = format!("redis at {}", settings.redacted_url());
        self.wait(&server, || async {
            settings.connect().await.map_err(redis_failure)
        })
        .await
    }

    fn stopped(&self, server: &str) -> StartupError {
        StartupError::Stopped {
            server: server.to_owned(),
        }
    }
}

/// `attempt`, bounded by what is left of the deadline (an unanswered connect can take seconds):
/// `None` when the deadline cut it short.
async fn bounded<T>(
    remaining: Option<Duration>,
    attempt: impl Future<Output = Result<T, Failure>>,
) -> Option<Result<T, Failure>> {
    match remaining {
        None => Some(attempt.await),
        Some(left) => tokio::time::timeout(left, attempt).await.ok(),
    }
}

/// Comma-separated URLs, each without credentials.
/// A refused, timed-out or unresolvable connection is a server not there yet (a DNS name may
/// appear only once its server is scheduled); anything else — authorization, signing with the
/// credentials, TLS, reading a creds file — is the configuration.
fn nats_failure(e: anyhow::Error) -> Failure {
    use async_nats::ConnectErrorKind as Kind;
    match e
        .downcast_ref::<crate::connect::NatsConnectError>()
        .map(|c| c.kind())
    {
        Some(Kind::Io | Kind::TimedOut | Kind::Dns | Kind::MaxReconnects) => {
            Failure::Unavailable(e)
        }
        _ => Failure::Misconfigured(e),
    }
}

/// Redis down, unreachable, loading its data or a cluster without all its slots is "not yet";
/// authentication and client configuration errors are not.
fn redis_failure(e: anyhow::Error) -> Failure {
    use redis::{ErrorKind, ServerErrorKind};
    let unavailable = e.downcast_ref::<RedisConnectError>().is_some_and(|r| {
        matches!(
            r.kind(),
            ErrorKind::Io
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                )
        )
    });
    if unavailable {
        Failure::Unavailable(e)
    } else {
        Failure::Misconfigured(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_defaults_to_forever_and_names_its_variable() {
        assert_eq!(
            timeout_from_env(&Env::from_pairs([])).expect("default"),
            None
        );
        let env = Env::from_pairs([(TIMEOUT_VAR, "2")]);
        assert_eq!(
            timeout_from_env(&env).expect("valid"),
            Some(Duration::from_secs(2))
        );
        let env = Env::from_pairs([(TIMEOUT_VAR, "soon")]);
        let err = timeout_from_env(&env).expect_err("not a number");
        assert!(err.to_string().starts_with(TIMEOUT_VAR), "{err}");
    }

    #[tokio::test]
    async fn a_configuration_error_ends_the_wait_at_once() {
        let startup = Startup::new(None, CancellationToken::new());
        let mut tries = 0;
        let err = startup
            .wait("x", || {
                tries += 1;
                async { Err::<(), _>(Failure::Misconfigured(anyhow::anyhow!("bad password"))) }
            })
            .await
            .expect_err("misconfigured");
        assert!(matches!(err, StartupError::Misconfigured(_)), "{err}");
        assert_eq!(tries, 1);
    }

    #[tokio::test]
    async fn an_unavailable_server_is_retried_until_it_answers() {
        let startup = Startup::new(None, CancellationToken::new());
        let mut tries = 0;
        let value = startup
            .wait("x", || {
                tries += 1;
                let done = tries >= 3;
                async move {
                    if done {
                        Ok(7)
                    } else {
                        Err(Failure::Unavailable(anyhow::anyhow!("refused")))
                    }
                }
            })
            .await
            .expect("answers on the third try");
        assert_eq!((value, tries), (7, 3));
    }

    #[tokio::test]
    async fn the_deadline_names_the_server_and_the_setting() {
        let startup = Startup::new(Some(Duration::from_millis(300)), CancellationToken::new());
        let err = startup
            .wait("nats at nats://127.0.0.1:1", || async {
                Err::<(), _>(Failure::Unavailable(anyhow::anyhow!("connection refused")))
            })
            .await
            .expect_err("never answers");
        let text = err.to_string();
        assert!(matches!(err, StartupError::TimedOut { .. }), "{text}");
        assert!(text.contains("nats at nats://127.0.0.1:1"), "{text}");
        assert!(text.contains(TIMEOUT_VAR), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait() {
        let stop = CancellationToken::new();
        let startup = Startup::new(None, stop.clone());
        stop.cancel();
        let err = startup
            .wait("redis at redis://127.0.0.1:1", || async {
                Err::<(), _>(Failure::Unavailable(anyhow::anyhow!("refused")))
            })
            .await
            .expect_err("stopped");
        assert!(matches!(err, StartupError::Stopped { .. }), "{err}");
    }
}
