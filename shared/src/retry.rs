//! What the workers that call out over HTTP (notify-worker's webhook deliveries, the
//! connector's platform pushes) share about retrying: the back-off, horizon, breaker and timeout
//! settings ([`RetryPolicy`]), and the clock the horizon is measured on ([`Clock`]).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

/// Retry, horizon, breaker and timeout settings. Each worker reads them from its own variables
/// (`STOCKFLOW_WEBHOOK_…` for notify-worker, `STOCKFLOW_CONNECTOR_…` for the connector).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Bound on one call, connect to last byte (`STOCKFLOW_WEBHOOK_TIMEOUT_MILLIS`).
    pub timeout: Duration,
    /// Shortest wait before a failed call is tried again, jitter included
    /// (`STOCKFLOW_WEBHOOK_BACKOFF_FLOOR_MILLIS`).
    pub backoff_floor: Duration,
    /// Longest wait between two tries; also caps a `Retry-After`
    /// (`STOCKFLOW_WEBHOOK_BACKOFF_CEILING_MILLIS`).
    pub backoff_ceiling: Duration,
    /// How long after it was enqueued a failing call is still retried
    /// (`STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS`).
    pub horizon: Duration,
    /// Consecutive failed calls that open an endpoint's breaker; 0 never opens it
    /// (`STOCKFLOW_WEBHOOK_BREAKER_FAILURES`).
    pub breaker_failures: u32,
    /// How long an open breaker pauses its endpoint before one probe is let through
    /// (`STOCKFLOW_WEBHOOK_BREAKER_OPEN_SECONDS`).
    pub breaker_open: Duration,
}

impl RetryPolicy {
    /// The wait after the `delivered`-th try failed: doubling from the floor, capped at the
    /// ceiling, with jitter over its upper half that never goes below the floor, so endpoints
    /// that come back are not hit by every retry at once.
    pub fn backoff(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.max(1) - 1)
            .unwrap_or(u32::MAX)
            .min(30);
        let ceiling = self
            .backoff_floor
            .saturating_mul(1u32 << doublings.min(20))
            .min(self.backoff_ceiling);
        let jittered = ceiling / 2 + (ceiling / 2).mul_f64(fastrand::f64());
        jittered.clamp(self.backoff_floor, self.backoff_ceiling)
    }

    /// The wait after a retryable failure: the back-off, or the endpoint's `Retry-After` if it
    /// asks for longer (up to the ceiling).
    pub fn retry_delay(&self, delivered: i64, retry_after: Option<Duration>) -> Duration {
        self.backoff(delivered)
            .max(retry_after.unwrap_or_default().min(self.backoff_ceiling))
    }
}

/// What "now" is for a retry horizon: the system clock, or one a test moves.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(SystemTime::now))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// Now.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}
