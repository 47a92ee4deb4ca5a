#![doc = include_str!("../README.md")]

mod admin;
pub mod auth;
mod channels;
mod connectors;
mod console;
pub mod error;
mod feed;
mod history;
pub mod input;
mod openapi;
mod publish;
mod routes;

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use stockflow_shared::{
    channels::Locations,
    connect::RedisSettings,
    keys::Keys,
    settings::{ConfigError, Env},
    worker::{Service, ServiceSettings},
};

use crate::auth::{Auth, Tokens};

pub use crate::openapi::DOCUMENT as OPENAPI_DOCUMENT;
pub use crate::routes::router;

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS, logging, `/metrics`, `/healthz`, `/readyz` (`STOCKFLOW_METRICS_ADDR`), the start-up
    /// wait for NATS and Redis, and the bound on graceful shutdown.
    pub service: ServiceSettings,
    /// Redis connection and key prefix (queries read the workers' keys).
    pub redis: RedisSettings,
    /// The API listener (`STOCKFLOW_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Who may call the API.
    pub auth: Auth,
    /// Largest request body, bytes (`STOCKFLOW_GATEWAY_BODY_LIMIT_BYTES`); larger ones get 413.
    pub body_limit: usize,
    /// Most events in one batch (`STOCKFLOW_GATEWAY_MAX_BATCH`).
    pub max_batch: usize,
    /// Longest `?wait=` an order may ask for (`STOCKFLOW_GATEWAY_MAX_WAIT_SECONDS`).
    pub max_wait: Duration,
    /// How long a publish may wait for JetStream's acknowledgement before the answer is 503
    /// (`STOCKFLOW_GATEWAY_PUBLISH_TIMEOUT_SECONDS`).
    pub publish_timeout: Duration,
    /// How often an event stream (Server-Sent Events: availability, a SKU's changes, alerts)
    /// with nothing to say sends a heartbeat comment (`STOCKFLOW_SSE_HEARTBEAT_SECONDS`).
    pub sse_heartbeat: Duration,
}

impl Settings {
    /// Reads the environment; errors name the variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceSettings::from_env(env, "gateway", "127.0.0.1:9467")?,
            redis: RedisSettings::from_env(env)?,
            http_addr: env.addr("STOCKFLOW_HTTP_ADDR", "127.0.0.1:8080")?,
            auth: auth_from_env(env)?,
            body_limit: env.bounded_as(
                "STOCKFLOW_GATEWAY_BODY_LIMIT_BYTES",
                1 << 20,
                1024..=64 << 20,
            )?,
            max_batch: env.bounded_as("STOCKFLOW_GATEWAY_MAX_BATCH", 500, 1..=10_000)?,
            max_wait: env.seconds("STOCKFLOW_GATEWAY_MAX_WAIT_SECONDS", 10, 1..=60)?,
            publish_timeout: env.seconds("STOCKFLOW_GATEWAY_PUBLISH_TIMEOUT_SECONDS", 5, 1..=60)?,
            sse_heartbeat: env.seconds("STOCKFLOW_SSE_HEARTBEAT_SECONDS", 15, 1..=300)?,
        })
    }
}

/// `STOCKFLOW_GATEWAY_AUTH` = `tokens` (default; at least one token must be configured) or
/// `none` (no authentication, an explicit choice).
fn auth_from_env(env: &Env) -> Result<Auth, ConfigError> {
    const VAR: &str = "STOCKFLOW_GATEWAY_TOKENS";
    const FILE_VAR: &str = "STOCKFLOW_GATEWAY_TOKENS_FILE";
    let tokens = match env.secret(VAR, FILE_VAR)? {
        Some(text) => {
            let var = if env.raw(VAR).is_some() {
                VAR
            } else {
                FILE_VAR
            };
            Tokens::parse(var, &text)?
        }
        None => Tokens::default(),
    };
    match env.string("STOCKFLOW_GATEWAY_AUTH", "tokens").as_str() {
        "tokens" if tokens.is_empty() => Err(ConfigError::Invalid {
            var: VAR,
            reason: format!(
                "no gateway tokens configured: set {VAR} or {FILE_VAR} (scope:token entries), \
                 or STOCKFLOW_GATEWAY_AUTH=none to run without authentication"
            ),
        }),
        "tokens" => Ok(Auth::Tokens(tokens)),
        "none" if !tokens.is_empty() => Err(ConfigError::Invalid {
            var: "STOCKFLOW_GATEWAY_AUTH",
            reason: format!("is none, but {VAR} or {FILE_VAR} holds tokens: choose one"),
        }),
        "none" => Ok(Auth::Disabled),
        other => Err(ConfigError::Invalid {
            var: "STOCKFLOW_GATEWAY_AUTH",
            reason: format!("{other:?} is neither \"tokens\" nor \"none\""),
        }),
    }
}

/// What every request handler shares: clients and limits, no per-request state.
#[derive(Debug, Clone)]
pub struct AppState {
    js: jetstream::Context,
    nats: async_nats::Client,
    redis: stockflow_shared::redis_conn::RedisConnection,
    keys: Keys,
    auth: Auth,
    max_batch: usize,
    max_wait: Duration,
    publish_timeout: Duration,
    /// The locations with stock recorded (a channel may draw only from those).
    locations: Locations,
    /// Heartbeat interval of the event streams.
    sse_heartbeat: Duration,
    /// Cancelled at shutdown: open event streams end, so graceful shutdown does not wait
    /// for them.
    shutdown: tokio_util::sync::CancellationToken,
}

/// A started gateway.
#[derive(Debug)]
pub struct Running {
    /// Where the API listens (the bound port when configured with port 0).
    pub api_addr: SocketAddr,
    /// Where `/metrics`, `/healthz`, `/readyz` are served.
    pub metrics_addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the gateway has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the gateway task panicked")?
    }
}

/// Binds the health listener, waits for NATS and Redis (see `stockflow_shared::startup`), binds
/// the API listener and serves until `shutdown` resolves; then stops accepting, finishes the
/// requests in flight (bounded by the shutdown timeout) and drains NATS.
pub async fn start(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    // The API listener opens once NATS and Redis answered.
    let runtime = Service::new(&settings.service)
        .redis(&settings.redis)
        .start(shutdown)
        .await?;
    if matches!(settings.auth, Auth::Disabled) {
        tracing::warn!("STOCKFLOW_GATEWAY_AUTH=none: the API accepts every request");
    }
    let listener = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| {
            format!(
                "binding the API listener STOCKFLOW_HTTP_ADDR={}",
                settings.http_addr
            )
        })?;
    let api_addr = listener.local_addr()?;
    let state = AppState {
        js: jetstream::ContextBuilder::new()
            .timeout(settings.publish_timeout)
            .build(runtime.nats.clone()),
        nats: runtime.nats.clone(),
        redis: runtime.redis.clone(),
        keys: Keys::new(settings.redis.key_prefix.clone()),
        auth: settings.auth.clone(),
        max_batch: settings.max_batch,
        max_wait: settings.max_wait,
        publish_timeout: settings.publish_timeout,
        locations: Locations::new(&Keys::new(settings.redis.key_prefix.clone())),
        sse_heartbeat: settings.sse_heartbeat,
        shutdown: runtime.shutdown.clone(),
    };
    let metrics_addr = runtime.metrics_addr;
    let task = tokio::spawn(runtime.serve(listener, router(state, settings.body_limit)));
    tracing::info!(%api_addr, "gateway listening");
    Ok(Running {
        api_addr,
        metrics_addr,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tokens_the_gateway_refuses_to_start_unless_told_to() {
        let err = Settings::from_env(&Env::from_pairs([])).expect_err("no tokens");
        assert!(
            err.to_string().starts_with("STOCKFLOW_GATEWAY_TOKENS:"),
            "{err}"
        );
        let open = Settings::from_env(&Env::from_pairs([("STOCKFLOW_GATEWAY_AUTH", "none")]))
            .expect("explicitly open");
        assert!(matches!(open.auth, Auth::Disabled));
        let both = Settings::from_env(&Env::from_pairs([
            ("STOCKFLOW_GATEWAY_AUTH", "none"),
            ("STOCKFLOW_GATEWAY_TOKENS", "read:rrrrrrrrrrrrrrrrrrrr"),
        ]))
        .expect_err("contradictory");
        assert!(err_names(&both, "STOCKFLOW_GATEWAY_AUTH"));
    }

    #[test]
    fn tokens_come_from_a_file_and_settings_never_print_them() {
        let dir = tempfile_dir();
        let file = dir.join("tokens");
        std::fs::write(
            &file,
            "# gateway tokens\nadmin:aaaaaaaaaaaaaaaaaaaa\nread:rrrrrrrrrrrrrrrrrrrr\n",
        )
        .expect("write");
        let path = file.to_string_lossy().into_owned();
        let settings = Settings::from_env(&Env::from_pairs([(
            "STOCKFLOW_GATEWAY_TOKENS_FILE",
            path.as_str(),
        )]))
        .expect("valid");
        let Auth::Tokens(tokens) = &settings.auth else {
            panic!("tokens expected")
        };
        assert_eq!(tokens.len(), 2);
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("aaaaaaaa") && !shown.contains("rrrrrrrr"),
            "{shown}"
        );
        let bad = Settings::from_env(&Env::from_pairs([
            ("STOCKFLOW_GATEWAY_BODY_LIMIT_BYTES", "10"),
            ("STOCKFLOW_GATEWAY_AUTH", "none"),
        ]))
        .expect_err("too small");
        assert!(err_names(&bad, "STOCKFLOW_GATEWAY_BODY_LIMIT_BYTES"));
        let bad = Settings::from_env(&Env::from_pairs([
            ("STOCKFLOW_SSE_HEARTBEAT_SECONDS", "0"),
            ("STOCKFLOW_GATEWAY_AUTH", "none"),
        ]))
        .expect_err("no heartbeat");
        assert!(err_names(&bad, "STOCKFLOW_SSE_HEARTBEAT_SECONDS"));
        std::fs::remove_dir_all(dir).ok();
    }

    fn err_names(err: &ConfigError, var: &str) -> bool {
        err.to_string().starts_with(&format!("{var}:"))
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sf-gateway-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
