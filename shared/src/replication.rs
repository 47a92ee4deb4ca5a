//! Waiting for Redis replicas before a write is made visible.
//!
//! Redis replicates asynchronously: a primary that dies a moment after a script may take the
//! script's effect with it, while the ledger entry published from that effect survives (see
//! GUARANTEES.md). With [`ReplicaWait`] enabled, a worker sends `WAIT` to the primary it wrote
//! to before it publishes what the write produced. Until enough replicas confirm, it publishes
//! nothing and does not acknowledge the input, so after a failover the input is redelivered and
//! applied again on the promoted replica: nothing acknowledged is lost, nothing is counted twice.
//!
//! The price: one more round trip per write, and a shard with fewer live replicas than asked
//! for stops taking inputs (they are NAKed and retried) until a replica is back.

use std::time::{Duration, Instant};

use crate::{
    consume::HandleError,
    redis_conn::RedisConnection,
    settings::{ConfigError, Env},
};

/// How many replicas must confirm a write, and how long to wait for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must hold the write (`WAIT numreplicas`).
    pub replicas: u32,
    /// Longest wait (`WAIT timeout`); past it the input is retried later.
    pub timeout: Duration,
}

impl ReplicaWait {
    /// `STOCKFLOW_REDIS_WAIT_REPLICAS` (0, the default, turns the wait off) and
    /// `STOCKFLOW_REDIS_WAIT_TIMEOUT_MILLIS`.
    pub fn from_env(env: &Env) -> Result<Option<Self>, ConfigError> {
        let replicas = env.bounded_as::<u32>("STOCKFLOW_REDIS_WAIT_REPLICAS", 0, 0..=5)?;
        let timeout = env.bounded("STOCKFLOW_REDIS_WAIT_TIMEOUT_MILLIS", 500, 10..=60_000)?;
        Ok((replicas > 0).then(|| Self {
            replicas,
            timeout: Duration::from_millis(timeout),
        }))
    }
}

/// A worker's replica wait, with its metrics registered once (after the recorder is installed,
/// which settings are read before).
#[derive(Debug, Clone)]
pub struct Replicas {
    wait: ReplicaWait,
    confirmed_seconds: metrics::Histogram,
    unconfirmed: metrics::Counter,
}

impl Replicas {
    /// The waits `wait` describes, or none.
    pub fn new(wait: Option<&ReplicaWait>) -> Option<Self> {
        wait.map(|wait| Self {
            wait: wait.clone(),
            confirmed_seconds: metrics::histogram!("stockflow_redis_replica_wait_seconds"),
            unconfirmed: metrics::counter!("stockflow_redis_replica_wait_timeouts_total"),
        })
    }

    /// Waits until the primary serving `key` has its writes so far on enough replicas. A
    /// shortfall is a transient Redis failure: the caller's input is retried.
    pub async fn confirm(&self, redis: &RedisConnection, key: &str) -> Result<(), HandleError> {
        let started = Instant::now();
        let wanted = self.wait.replicas;
        let timeout_ms = u64::try_from(self.wait.timeout.as_millis()).unwrap_or(u64::MAX);
        let confirmed = redis
            .clone()
            .wait_for_replicas(key, wanted, timeout_ms)
            .await
            .map_err(HandleError::redis)?;
        if confirmed < wanted {
            self.unconfirmed.increment(1);
            return Err(HandleError::redis(anyhow::anyhow!(
                "{confirmed} of {wanted} replica(s) confirmed the write within {timeout_ms} ms"
            )));
        }
        self.confirmed_seconds
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Confirms `key`'s writes when a wait is configured; nothing otherwise.
pub async fn confirm(
    replicas: Option<&Replicas>,
    redis: &RedisConnection,
    key: &str,
) -> Result<(), HandleError> {
    match replicas {
        Some(replicas) => replicas.confirm(redis, key).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_bounded() {
        assert!(ReplicaWait::from_env(&Env::from_pairs([]))
            .expect("defaults")
            .is_none());
        let on = ReplicaWait::from_env(&Env::from_pairs([
            ("STOCKFLOW_REDIS_WAIT_REPLICAS", "1"),
            ("STOCKFLOW_REDIS_WAIT_TIMEOUT_MILLIS", "250"),
        ]))
        .expect("valid")
        .expect("enabled");
        assert_eq!((on.replicas, on.timeout), (1, Duration::from_millis(250)));
        let err = ReplicaWait::from_env(&Env::from_pairs([("STOCKFLOW_REDIS_WAIT_REPLICAS", "9")]))
            .expect_err("out of range");
        assert!(
            err.to_string().contains("STOCKFLOW_REDIS_WAIT_REPLICAS"),
            "{err}"
        );
    }
}
