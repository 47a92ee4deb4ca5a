//! `/metrics`, `/healthz` and `/readyz` on one small HTTP listener.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// Named readiness flags.
type Checks = Vec<(Cow<'static, str>, Arc<AtomicBool>)>;

/// Readiness: a set of named checks, each flipped by the component it watches.
#[derive(Debug, Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<Checks>>,
}

/// One readiness check; starts not ready.
#[derive(Debug, Clone)]
pub struct HealthCheck(Arc<AtomicBool>);

impl HealthCheck {
    /// Marks the component ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether the component is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Health {
    /// Registers a check named `name` (e.g. `nats`, `redis`, `consumer`).
    pub fn check(&self, name: impl Into<Cow<'static, str>>) -> HealthCheck {
        let flag = Arc::new(AtomicBool::new(false));
        self.lock().push((name.into(), flag.clone()));
        HealthCheck(flag)
    }

    /// Names of the checks that are not ready.
    pub fn failing(&self) -> Vec<Cow<'static, str>> {
        self.lock()
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Relaxed))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Checks> {
        // A panic while holding this lock cannot leave the Vec inconsistent: recover it.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Binds `addr` (port 0 picks a free port) and serves until `shutdown`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener STOCKFLOW_METRICS_ADDR={addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, metrics });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    Ok(bound)
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let failing = state.health.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        )
    }
}
