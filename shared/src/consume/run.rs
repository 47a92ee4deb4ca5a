//! The loop: bind the consumer, feed messages to tasks while there are free slots, watch for
//! stalls, re-bind after a back-off when the subscription ends, and drain at shutdown.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::PullConsumer};
use tokio::{sync::Semaphore, task::JoinSet, time::Interval};
use tokio_util::sync::CancellationToken;

use super::{
    handler::Handler,
    metrics::LoopMetrics,
    policy::backoff,
    progress::InProgress,
    pull::{self, Messages, Pull},
};
use crate::{deadletter::DeadLetters, health::HealthCheck, topology::ConsumerSpec};

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    /// Messages processed concurrently (and the pull batch size).
    pub max_in_flight: usize,
    /// Bound on waiting for in-flight messages at shutdown.
    pub drain_timeout: Duration,
    /// Pending messages but no delivery for this long: the subscription is re-bound.
    pub stall_after: Duration,
    /// How often consumer info is polled (lag gauges, stall check).
    pub poll_interval: Duration,
    /// How messages are pulled.
    pub pull: Pull,
}

impl Default for ConsumeSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            drain_timeout: Duration::from_secs(20),
            stall_after: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            pull: Pull::Pipelined,
        }
    }
}

/// Everything the loop needs besides the handler.
#[derive(Debug)]
pub struct Consumer {
    /// JetStream context.
    pub js: jetstream::Context,
    /// Which durable consumer.
    pub spec: ConsumerSpec,
    /// Where malformed inputs go.
    pub dead_letters: DeadLetters,
    /// Flipped to ready while the consumer is bound.
    pub bound: HealthCheck,
    /// Checked before each pull: while false (e.g. Redis down) the loop takes no new messages.
    pub can_process: HealthCheck,
    /// Tuning.
    pub settings: ConsumeSettings,
}

impl Consumer {
    /// Runs until `shutdown`; then stops pulling, lets in-flight messages finish (bounded by
    /// `drain_timeout`) and returns.
    pub async fn run<H: Handler>(self, handler: Arc<H>, shutdown: CancellationToken) {
        // Shared with every message task: one reference count per message, not a deep clone.
        let state = Arc::new(Loop::new(self, handler));
        state.run(shutdown).await;
    }
}

/// One consume loop's state, shared by its message tasks.
#[derive(Debug)]
pub(super) struct Loop<H> {
    /// What it consumes, where dead letters go, its health checks and tuning.
    pub(super) consumer: Consumer,
    /// The worker's logic.
    pub(super) handler: Arc<H>,
    /// Metric handles, registered once.
    pub(super) metrics: LoopMetrics,
    /// Messages being handled, kept in progress while they are slow.
    pub(super) in_progress: InProgress,
    /// Free slots: one per message in flight, at most `max_in_flight`.
    permits: Arc<Semaphore>,
}

/// One binding of the consumer: ends when the subscription must be re-bound.
struct Bound {
    /// The consumer, for its info (lag gauges, stall check).
    consumer: PullConsumer,
    /// Where messages come from.
    messages: Messages,
    /// When the last message arrived (or intake resumed after a pause).
    last_delivery: Instant,
    /// When to poll the consumer's info next.
    poll: Interval,
}

impl<H: Handler> Loop<H> {
    fn new(consumer: Consumer, handler: Arc<H>) -> Self {
        Self {
            metrics: LoopMetrics::new(consumer.spec.durable, handler.event_types()),
            in_progress: InProgress::new(consumer.js.client()),
            permits: Arc::new(Semaphore::new(consumer.settings.max_in_flight)),
            handler,
            consumer,
        }
    }

    /// The durable consumer's name: the `worker` of logs and metrics.
    pub(super) fn worker(&self) -> &'static str {
        self.consumer.spec.durable
    }

    async fn run(self: &Arc<Self>, shutdown: CancellationToken) {
        let worker = self.worker();
        let stream = self.consumer.spec.stream;
        // Not a child of `shutdown`: messages still draining after it are kept in progress too.
        let keep_in_progress = CancellationToken::new();
        tokio::spawn({
            let this = Arc::clone(self);
            let stop = keep_in_progress.clone();
            async move { this.in_progress.run(worker, stop).await }
        });
        let _stop_keeping = keep_in_progress.drop_guard();
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.bind().await {
                Ok(bound) => {
                    self.consumer.bound.set(true);
                    metrics::gauge!("stockflow_ready", "worker" => worker, "stream" => stream)
                        .set(1.0);
                    let cause = self.pump(bound, &mut tasks, &shutdown).await;
                    self.consumer.bound.set(false);
                    metrics::gauge!("stockflow_ready", "worker" => worker, "stream" => stream)
                        .set(0.0);
                    match cause {
                        None => break,
                        Some(cause) => {
                            tracing::warn!(
                                worker,
                                cause,
                                "consumer subscription ended; re-binding"
                            );
                            metrics::counter!("stockflow_consumer_restarts_total", "worker" => worker, "cause" => cause)
                                .increment(1);
                            failures = 0;
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(worker, error = %e, "cannot bind consumer; retrying");
                }
            }
            // Back off before re-binding so a server that is down is not hammered.
            let delay = backoff(failures, Duration::from_millis(100), Duration::from_secs(5));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!(
            worker,
            in_flight = tasks.len(),
            "draining in-flight messages"
        );
        let drained = tokio::time::timeout(self.consumer.settings.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Unfinished messages are not acked: JetStream redelivers them after ack_wait.
            tracing::warn!(worker, left = tasks.len(), "drain timed out");
            tasks.abort_all();
        }
    }

    async fn bind(&self) -> anyhow::Result<Bound> {
        let spec = self.consumer.spec;
        let settings = &self.consumer.settings;
        let (consumer, messages) =
            pull::bind(&self.consumer.js, spec.stream, spec.durable, settings).await?;
        self.in_progress
            .set_ack_wait(consumer.cached_info().config.ack_wait);
        Ok(Bound {
            consumer,
            messages,
            last_delivery: Instant::now(),
            poll: tokio::time::interval(settings.poll_interval),
        })
    }

    /// Feeds messages to tasks until shutdown (`None`) or until the subscription must be re-bound
    /// (`Some(cause)`).
    async fn pump(
        self: &Arc<Self>,
        mut bound: Bound,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Option<&'static str> {
        let worker = self.worker();
        let can_process = &self.consumer.can_process;
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(worker, error = %e, "message task panicked");
                }
            }
            // A dependency is down: take nothing new until it is back; what is in flight NAKs
            // itself with a back-off. The monitor refreshes the flag every 500 ms, so polling it
            // at half that notices recovery promptly.
            if !can_process.get() {
                while !can_process.get() {
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                // Nothing was pulled on purpose: not a stall.
                bound.last_delivery = Instant::now();
            }
            let slot = tokio::select! {
                () = shutdown.cancelled() => return None,
                permit = Arc::clone(&self.permits).acquire_owned() => permit.ok()?,
            };
            // Created once: a watch tick must not abandon a pull request half made.
            let next = bound.messages.next(&self.permits);
            tokio::pin!(next);
            let next = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    _ = bound.poll.tick() => {
                        if let Some(cause) = self.watch(&mut bound.consumer, bound.last_delivery).await {
                            return Some(cause);
                        }
                    }
                    next = &mut next => break next,
                }
            };
            match next {
                Some(Ok(message)) => {
                    bound.last_delivery = Instant::now();
                    let in_flight = self.metrics.in_flight(slot);
                    let this = Arc::clone(self);
                    tasks.spawn(async move {
                        this.process(message).await;
                        drop(in_flight);
                    });
                }
                Some(Err((cause, e))) => {
                    tracing::warn!(worker, error = %e, "pull failed");
                    return Some(cause);
                }
                None => return Some("stream_ended"),
            }
        }
    }

    /// Publishes lag gauges; reports a stall when messages wait but none were delivered lately
    /// although there is room for them.
    async fn watch(
        &self,
        consumer: &mut PullConsumer,
        last_delivery: Instant,
    ) -> Option<&'static str> {
        let worker = self.worker();
        let info = match consumer.info().await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(worker, error = %e, "consumer info unavailable");
                return None;
            }
        };
        // Gauges are f64; counts stay far below 2^53.
        // One worker may read several streams (notify-worker): one series per consumer.
        let stream = self.consumer.spec.stream;
        metrics::gauge!("stockflow_consumer_pending_messages", "worker" => worker, "stream" => stream)
            .set(info.num_pending as f64);
        metrics::gauge!("stockflow_consumer_ack_pending_messages", "worker" => worker, "stream" => stream)
            .set(info.num_ack_pending as f64);
        let idle = last_delivery.elapsed() >= self.consumer.settings.stall_after;
        let has_room = self.permits.available_permits() > 0;
        (info.num_pending > 0 && idle && has_room).then_some("stalled")
    }
}
