//! Logs (tracing) and metrics (Prometheus) set up once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::settings::{ConfigError, Env};

/// Log format and filter.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Filter directives (`STOCKFLOW_LOG`), e.g. `info,stock_worker=debug`.
    pub filter: String,
    /// JSON lines instead of text (`STOCKFLOW_LOG_FORMAT=json`).
    pub json: bool,
}

impl LogSettings {
    /// Reads `STOCKFLOW_LOG` and `STOCKFLOW_LOG_FORMAT`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let filter = env.string("STOCKFLOW_LOG", "info");
        tracing_subscriber::EnvFilter::try_new(&filter).map_err(|e| ConfigError::Invalid {
            var: "STOCKFLOW_LOG",
            reason: e.to_string(),
        })?;
        let json = match env.string("STOCKFLOW_LOG_FORMAT", "text").as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::Invalid {
                    var: "STOCKFLOW_LOG_FORMAT",
                    reason: format!("{other:?} is neither \"text\" nor \"json\""),
                })
            }
        };
        Ok(Self { filter, json })
    }

    /// Installs the global subscriber; a second call (several workers in one test process) is a
    /// no-op.
    pub fn init(&self) {
        use std::io::IsTerminal as _;
        let mut filter = tracing_subscriber::EnvFilter::new(&self.filter);
        // The NATS client logs each connection event itself, and `connect` logs it again with
        // the server's address: keep only ours unless the filter asks for the client's, by name
        // or with a global debug/trace level.
        let everything = self.filter.split(',').any(|d| {
            let d = d.trim().to_ascii_lowercase();
            !d.contains('=') && (d == "debug" || d == "trace")
        });
        if !everything && !self.filter.contains("async_nats") {
            if let Ok(quiet) = "async_nats=warn".parse() {
                filter = filter.add_directive(quiet);
            }
        }
        // Colour only for a person at a terminal: files and log collectors get plain text.
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr);
        let _already_set = if self.json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
    }
}

/// Latency buckets in seconds: 0.5 ms .. 10 s. Explicit, so the exporter emits histograms rather
/// than summaries.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Hold-expiry lag buckets in seconds: 10 ms .. 5 min.
pub const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0];

/// The process-wide Prometheus recorder. Installed on first use; later calls return the same
/// handle, so several workers in one process share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("stockflow_hold_expiry_lag_seconds".into()),
                    LAG_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                })
                // Only fails for an empty bucket list; ours are constants.
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Only fails when another recorder is already installed; then ours renders nothing,
            // which the health tests would catch.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            // Histograms buffer samples until upkeep drains them; the exporter runs upkeep
            // itself only with its own HTTP listener, which we don't use (ours serves /readyz
            // too), so a low-priority thread does it. Rendering also drains, so 5 s is plenty.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .ok();
            describe();
            handle
        })
        .clone()
}

/// Describes the metrics every worker has, and sets `stockflow_build_info`: once per process,
/// when the recorder is installed.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "stockflow_build_info",
        "Always 1; its version label is the running build's"
    );
    metrics::gauge!("stockflow_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    describe_counter!("stockflow_events_total", "Input events by type and outcome");
    describe_histogram!(
        "stockflow_event_latency_seconds",
        Unit::Seconds,
        "Input stored in its stream -> input acknowledged"
    );
    describe_histogram!(
        "stockflow_redis_script_seconds",
        Unit::Seconds,
        "One atomic Redis operation"
    );
    describe_counter!(
        "stockflow_derived_published_total",
        "Derived events stored by JetStream"
    );
    describe_counter!("stockflow_alerts_total", "Stock alerts raised");
    describe_counter!(
        "stockflow_dead_letters_total",
        "Inputs sent to DEAD_LETTERS"
    );
    describe_counter!(
        "stockflow_transient_failures_total",
        "Inputs NAKed for a retry"
    );
    describe_gauge!("stockflow_messages_in_flight", "Inputs being processed now");
    describe_counter!(
        "stockflow_consumer_restarts_total",
        "Consume loop re-subscriptions"
    );
    describe_counter!(
        "stockflow_handler_panics_total",
        "Handler panics (the input is retried, then dead-lettered)"
    );
    describe_gauge!("stockflow_ready", "1 when the worker is ready");
    describe_gauge!(
        "stockflow_consumer_pending_messages",
        "Messages not yet delivered"
    );
    describe_gauge!(
        "stockflow_consumer_ack_pending_messages",
        "Delivered, not yet acknowledged"
    );
}
