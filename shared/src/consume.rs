//! The consume loop, written once: pull, dispatch to a [`Handler`], then ack, NAK with back-off,
//! or dead-letter and terminate — with metrics, a stall watchdog and a bounded, graceful shutdown.
//!
//! The loop never ends on a stream error: a failed pull, missed heartbeats, a deleted consumer or
//! a quietly stalled subscription all lead to re-binding the consumer after a back-off.

use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::{
    jetstream::{self, consumer::PullConsumer, AckKind},
    Subject,
};
use futures::{FutureExt as _, StreamExt as _};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    deadletter::DeadLetters,
    health::HealthCheck,
    topology::{ConsumerSpec, TopologySettings},
};

/// Deliveries that may panic before the input is dead-lettered.
const PANICS_BEFORE_DEAD_LETTER: i64 = 3;

/// How one input event ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect was applied now.
    Applied,
    /// Its `event_id` was seen before: nothing changed.
    Duplicate,
    /// A count whose `expected_on_hand` did not match: nothing changed, a rejection was emitted.
    Stale,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
        }
    }
}

/// What a handler reports for a message it finished.
#[derive(Debug, Clone, Copy)]
pub struct Handled {
    /// Event type label, e.g. `received`.
    pub event_type: &'static str,
    /// How it ended.
    pub outcome: Outcome,
}

/// A dependency a transient failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// Redis.
    Redis,
    /// NATS / JetStream.
    Nats,
}

impl Dependency {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Nats => "nats",
        }
    }
}

/// Why a handler did not finish a message; the variant decides what the loop does with it.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The input can never be applied: it goes to `DEAD_LETTERS` with `reason`, and is
    /// terminated so it never blocks the stream.
    #[error("malformed {event_type} event: {reason}")]
    Malformed {
        /// Event type label (`unknown` when undecodable).
        event_type: &'static str,
        /// Metric label: a short, fixed category such as `decode` or `invalid_quantity`.
        category: &'static str,
        /// Human-readable reason, stored in the dead letter's header.
        reason: String,
    },
    /// The input arrived before what it depends on (e.g. a fulfilment before its order's
    /// decision): NAKed with a back-off and retried, like a transient failure.
    #[error("not yet applicable: {0}")]
    NotYet(String),
    /// The handler chose when the input should come back (e.g. a webhook endpoint's own back-off,
    /// or the rest of its breaker's open period): NAKed with exactly `delay`, never dead-lettered.
    #[error("retry in {delay:?}: {reason}")]
    RetryIn {
        /// Why it is not done yet.
        reason: String,
        /// When JetStream should redeliver it.
        delay: Duration,
    },
    /// A dependency failed; the input is NAKed with a back-off and retried. Never dead-lettered.
    #[error("{} unavailable: {source:#}", dependency.as_str())]
    Transient {
        /// Which dependency.
        dependency: Dependency,
        /// The underlying error.
        #[source]
        source: anyhow::Error,
    },
}

impl HandleError {
    /// A malformed-input error.
    pub fn malformed(
        event_type: &'static str,
        category: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self::Malformed {
            event_type,
            category,
            reason: reason.into(),
        }
    }

    /// A Redis failure.
    pub fn redis(source: impl Into<anyhow::Error>) -> Self {
        Self::Transient {
            dependency: Dependency::Redis,
            source: source.into(),
        }
    }

    /// A NATS failure.
    pub fn nats(source: impl Into<anyhow::Error>) -> Self {
        Self::Transient {
            dependency: Dependency::Nats,
            source: source.into(),
        }
    }
}

/// Input the contract refuses can never be applied: it is dead-lettered under the refusal's
/// category, with its reason.
impl From<stockflow_proto::input::InputError> for HandleError {
    fn from(error: stockflow_proto::input::InputError) -> Self {
        Self::malformed(error.event_type, error.category.as_str(), error.reason)
    }
}

/// A worker's logic for one input message. The loop acks only after `handle` returns `Ok`, so
/// everything `handle` makes durable (Redis writes, derived publishes) must be done by then.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. Must be idempotent: the same message may arrive again at any time.
    fn handle(
        &self,
        message: &jetstream::Message,
    ) -> impl Future<Output = Result<Handled, HandleError>> + Send;
}

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

/// How the loop pulls messages from its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// One continuous pull that asks for the next batch while the current one is handled: the
    /// fastest, for handlers that take milliseconds. While every slot is busy, the messages of
    /// the next batch wait in the client unseen, and come back after the ack wait.
    Pipelined,
    /// Each pull asks for no more messages than there are free slots, so every delivered message
    /// starts at once and is kept in progress: for handlers that may take longer than the ack
    /// wait (webhooks), at the cost of one round trip per batch.
    WithinWindow,
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

/// Metric handles of the per-message path, registered once: registering builds the labelled key
/// and looks it up in the registry, which per message showed up in the worker's profile.
#[derive(Debug)]
struct LoopMetrics {
    in_flight: metrics::Gauge,
    latency: metrics::Histogram,
    /// `stockflow_events_total` by (type, outcome) of handled messages.
    handled: Mutex<HashMap<(&'static str, &'static str), metrics::Counter>>,
}

impl LoopMetrics {
    fn new(worker: &'static str) -> Self {
        Self {
            in_flight: metrics::gauge!("stockflow_messages_in_flight", "worker" => worker),
            latency: metrics::histogram!("stockflow_event_latency_seconds", "worker" => worker),
            handled: Mutex::new(HashMap::new()),
        }
    }

    fn handled(&self, worker: &'static str, handled: Handled) {
        let key = (handled.event_type, handled.outcome.as_str());
        // A poisoned lock only means another task panicked while holding it: the map is intact.
        let mut counters = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .entry(key)
            .or_insert_with(|| {
                metrics::counter!("stockflow_events_total", "worker" => worker, "type" => key.0, "outcome" => key.1)
            })
            .increment(1);
    }
}

/// Back-off for re-binding, NAKs and start-up retries: doubling from `base`, capped, with jitter.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(cap);
    // Up to 20% jitter, from the clock's low bits: enough to spread retries of one batch.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    capped + capped.mul_f64(f64::from(nanos % 200) / 1000.0)
}

/// Messages being handled, so that the slow ones are kept from being redelivered: one ticker
/// sends an in-progress ack (`+WPI`) for each message handled longer than a third of the
/// consumer's ack wait. Fast messages cost one map insert and remove, no timer and no ack.
#[derive(Debug)]
struct InProgress {
    client: async_nats::Client,
    state: Mutex<InProgressState>,
    /// Wakes the ticker when the period changes (the ack wait is known once bound).
    period_changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct InProgressState {
    /// A third of the consumer's ack wait: both the age from which a message is touched and
    /// the period of the ticker, so a slow message is touched at least once per ack wait.
    every: Duration,
    next_id: u64,
    /// Ack subject of each message being handled, and when its handling started.
    handling: HashMap<u64, (Instant, Subject)>,
}

/// Removes its message from [`InProgress`] when handling ends (or panics).
struct Tracked<'a> {
    in_progress: &'a InProgress,
    id: Option<u64>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.in_progress.state().handling.remove(&id);
        }
    }
}

impl InProgress {
    fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            state: Mutex::new(InProgressState {
                every: TopologySettings::default().ack_wait / 3,
                next_id: 0,
                handling: HashMap::new(),
            }),
            period_changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InProgressState> {
        // A poisoned lock only means a task panicked while holding it: the map is intact.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the consumer's ack wait as it is on the server (bound consumers report it).
    fn set_ack_wait(&self, ack_wait: Duration) {
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        let previous = std::mem::replace(&mut self.state().every, every);
        if previous != every {
            self.period_changed.notify_one();
        }
    }

    fn track(&self, message: &jetstream::Message) -> Tracked<'_> {
        let id = message.reply.clone().map(|reply| {
            let mut state = self.state();
            let id = state.next_id;
            state.next_id = id.wrapping_add(1);
            state.handling.insert(id, (Instant::now(), reply));
            id
        });
        Tracked {
            in_progress: self,
            id,
        }
    }

    /// Ack subjects of the messages handled for at least `every`.
    fn due(&self, now: Instant) -> Vec<Subject> {
        let state = self.state();
        state
            .handling
            .values()
            .filter(|(since, _)| now.saturating_duration_since(*since) >= state.every)
            .map(|(_, reply)| reply.clone())
            .collect()
    }

    /// Touches the slow messages once per period until `stop`.
    async fn run(&self, worker: &'static str, stop: CancellationToken) {
        loop {
            let every = self.state().every;
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.period_changed.notified() => continue,
                () = tokio::time::sleep(every) => {}
            }
            for reply in self.due(Instant::now()) {
                if let Err(e) = self.client.publish(reply, AckKind::Progress.into()).await {
                    tracing::debug!(worker, error = %e, "in-progress ack failed");
                }
            }
        }
    }
}

/// What a bound consumer delivers from, as [`Pull`] says.
enum Messages {
    Pipelined(jetstream::consumer::pull::Stream),
    WithinWindow {
        /// Boxed: its cached info would make every `Messages` four times as large.
        consumer: Box<PullConsumer>,
        max: usize,
        batch: Option<jetstream::consumer::pull::Batch>,
    },
}

impl Messages {
    /// The next message; the caller holds one free slot for it. `Err` carries the cause of
    /// ending the subscription (the restart metric's label).
    async fn next(
        &mut self,
        permits: &Semaphore,
    ) -> Option<Result<jetstream::Message, (&'static str, async_nats::Error)>> {
        match self {
            Self::Pipelined(stream) => Some(stream.next().await?.map_err(|e| {
                let cause = match e.kind() {
                    jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                        "missing_heartbeat"
                    }
                    jetstream::consumer::pull::MessagesErrorKind::ConsumerDeleted => {
                        "consumer_deleted"
                    }
                    _ => "pull_error",
                };
                (cause, e.into())
            })),
            Self::WithinWindow {
                consumer,
                max,
                batch,
            } => loop {
                if let Some(current) = batch.as_mut() {
                    match current.next().await {
                        Some(Ok(message)) => return Some(Ok(message)),
                        Some(Err(e)) => return Some(Err(("pull_error", e))),
                        // Filled or expired: ask again for what is free now.
                        None => *batch = None,
                    }
                }
                // Only the pump takes slots, so the free ones stay free for this batch. No idle
                // heartbeats: a pull that fails to be renewed every few seconds ends the binding.
                let room = (1 + permits.available_permits()).min(*max);
                match consumer
                    .batch()
                    .max_messages(room)
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await
                {
                    Ok(next) => *batch = Some(next),
                    Err(e) => return Some(Err(("pull_error", e.into()))),
                }
            },
        }
    }
}

impl Consumer {
    /// Runs until `shutdown`; then stops pulling, lets in-flight messages finish (bounded by
    /// `drain_timeout`) and returns.
    pub async fn run<H: Handler>(self, handler: Arc<H>, shutdown: CancellationToken) {
        // Shared with every message task: one reference count per message, not a deep clone.
        let this = Arc::new(self);
        this.run_shared(handler, shutdown).await;
    }

    async fn run_shared<H: Handler>(
        self: &Arc<Self>,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        let worker = self.spec.durable;
        let loop_metrics = Arc::new(LoopMetrics::new(worker));
        let permits = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let in_progress = Arc::new(InProgress::new(self.js.client()));
        // Not a child of `shutdown`: messages still draining after it are kept in progress too.
        let keep_in_progress = CancellationToken::new();
        tokio::spawn({
            let in_progress = Arc::clone(&in_progress);
            let stop = keep_in_progress.clone();
            async move { in_progress.run(worker, stop).await }
        });
        let _stop_keeping = keep_in_progress.drop_guard();
        let mut tasks = JoinSet::new();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.bind().await {
                Ok((consumer, messages)) => {
                    self.bound.set(true);
                    metrics::gauge!("stockflow_ready", "worker" => worker, "stream" => self.spec.stream)
                        .set(1.0);
                    let cause = self
                        .pump(
                            consumer,
                            messages,
                            &handler,
                            &loop_metrics,
                            &in_progress,
                            &permits,
                            &mut tasks,
                            &shutdown,
                        )
                        .await;
                    self.bound.set(false);
                    metrics::gauge!("stockflow_ready", "worker" => worker, "stream" => self.spec.stream)
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
        let drained = tokio::time::timeout(self.settings.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Unfinished messages are not acked: JetStream redelivers them after ack_wait.
            tracing::warn!(worker, left = tasks.len(), "drain timed out");
            tasks.abort_all();
        }
    }

    async fn bind(&self) -> anyhow::Result<(PullConsumer, Messages)> {
        let stream = self.js.get_stream(self.spec.stream).await?;
        let consumer: PullConsumer = stream
            .get_consumer(self.spec.durable)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let messages = match self.settings.pull {
            Pull::Pipelined => Messages::Pipelined(
                consumer
                    .stream()
                    .max_messages_per_batch(self.settings.max_in_flight)
                    .heartbeat(Duration::from_secs(5))
                    .messages()
                    .await?,
            ),
            Pull::WithinWindow => Messages::WithinWindow {
                consumer: Box::new(consumer.clone()),
                max: self.settings.max_in_flight,
                batch: None,
            },
        };
        Ok((consumer, messages))
    }

    /// Feeds messages to tasks until shutdown (`None`) or until the subscription must be re-bound
    /// (`Some(cause)`).
    // Private plumbing of `run_shared`: its state, passed down rather than bundled in a struct.
    #[allow(clippy::too_many_arguments)]
    async fn pump<H: Handler>(
        self: &Arc<Self>,
        mut consumer: PullConsumer,
        mut messages: Messages,
        handler: &Arc<H>,
        loop_metrics: &Arc<LoopMetrics>,
        in_progress: &Arc<InProgress>,
        permits: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Option<&'static str> {
        let worker = self.spec.durable;
        let mut last_delivery = Instant::now();
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        in_progress.set_ack_wait(consumer.cached_info().config.ack_wait);
        loop {
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(worker, error = %e, "message task panicked");
                }
            }
            // A dependency is down: take nothing new until it is back; what is in flight NAKs
            // itself with a back-off. The monitor refreshes the flag every 500 ms, so polling it
            // at half that notices recovery promptly.
            if !self.can_process.get() {
                while !self.can_process.get() {
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                // Nothing was pulled on purpose: not a stall.
                last_delivery = Instant::now();
            }
            let permit = tokio::select! {
                () = shutdown.cancelled() => return None,
                permit = permits.clone().acquire_owned() => permit.ok()?,
            };
            // Created once: a watch tick must not abandon a pull request half made.
            let next = messages.next(permits);
            tokio::pin!(next);
            let next = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    _ = poll.tick() => {
                        if let Some(cause) = self.watch(&mut consumer, last_delivery, permits).await {
                            return Some(cause);
                        }
                    }
                    next = &mut next => break next,
                }
            };
            match next {
                Some(Ok(message)) => {
                    last_delivery = Instant::now();
                    let handler = handler.clone();
                    let this = Arc::clone(self);
                    let loop_metrics = Arc::clone(loop_metrics);
                    let in_progress = Arc::clone(in_progress);
                    tasks.spawn(async move {
                        this.process(handler.as_ref(), &loop_metrics, &in_progress, message)
                            .await;
                        drop(permit);
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
        permits: &Semaphore,
    ) -> Option<&'static str> {
        let worker = self.spec.durable;
        let info = match consumer.info().await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(worker, error = %e, "consumer info unavailable");
                return None;
            }
        };
        // Gauges are f64; counts stay far below 2^53.
        // One worker may read several streams (notify-worker): one series per consumer.
        let stream = self.spec.stream;
        metrics::gauge!("stockflow_consumer_pending_messages", "worker" => worker, "stream" => stream)
            .set(info.num_pending as f64);
        metrics::gauge!("stockflow_consumer_ack_pending_messages", "worker" => worker, "stream" => stream)
            .set(info.num_ack_pending as f64);
        let idle = last_delivery.elapsed() >= self.settings.stall_after;
        let has_room = permits.available_permits() > 0;
        (info.num_pending > 0 && idle && has_room).then_some("stalled")
    }

    async fn process<H: Handler>(
        &self,
        handler: &H,
        loop_metrics: &LoopMetrics,
        in_progress: &InProgress,
        message: jetstream::Message,
    ) {
        let worker = self.spec.durable;
        let in_flight = &loop_metrics.in_flight;
        in_flight.increment(1.0);
        let tracked = in_progress.track(&message);
        let handled = AssertUnwindSafe(handler.handle(&message))
            .catch_unwind()
            .await;
        drop(tracked);
        let result = match handled {
            Ok(result) => result,
            Err(panic) => match self.after_panic(&message, panic.as_ref()) {
                Some(dead) => Err(dead),
                None => {
                    self.nak(&message, None).await;
                    in_flight.decrement(1.0);
                    return;
                }
            },
        };
        match result {
            Ok(handled) => {
                if let Err(e) = message.ack().await {
                    // Not acked means redelivered, and the handler is idempotent.
                    tracing::warn!(worker, error = %e, "ack failed");
                }
                loop_metrics.handled(worker, handled);
                if let Ok(info) = message.info() {
                    let stored = info.published;
                    let now = time::OffsetDateTime::now_utc();
                    let seconds = (now - stored).as_seconds_f64().max(0.0);
                    loop_metrics.latency.record(seconds);
                }
            }
            Err(HandleError::Malformed {
                event_type,
                category,
                reason,
            }) => {
                tracing::warn!(worker, event_type, %reason, subject = %message.subject, "dead-lettering malformed input");
                match self.dead_letters.store(&message, &reason).await {
                    Ok(()) => {
                        if let Err(e) = message.ack_with(AckKind::Term).await {
                            tracing::warn!(worker, error = %e, "terminate failed");
                        }
                        metrics::counter!("stockflow_events_total", "worker" => worker, "type" => event_type, "outcome" => "dead_lettered")
                            .increment(1);
                        metrics::counter!("stockflow_dead_letters_total", "worker" => worker, "reason" => category)
                            .increment(1);
                    }
                    Err(e) => {
                        tracing::warn!(worker, error = %e, "dead letter not stored; will retry");
                        self.nak(&message, Some(Dependency::Nats)).await;
                    }
                }
            }
            Err(HandleError::NotYet(reason)) => {
                tracing::debug!(worker, %reason, "not yet applicable; retrying later");
                metrics::counter!("stockflow_transient_failures_total", "worker" => worker, "kind" => "not_yet")
                    .increment(1);
                self.nak(&message, None).await;
            }
            Err(HandleError::Transient { dependency, source }) => {
                tracing::warn!(worker, dependency = dependency.as_str(), error = %format!("{source:#}"), "transient failure; retrying");
                self.nak(&message, Some(dependency)).await;
            }
            Err(HandleError::RetryIn { reason, delay }) => {
                tracing::debug!(worker, %reason, ?delay, "retrying later, as the handler asked");
                self.nak_in(&message, Some(delay)).await;
            }
        }
        in_flight.decrement(1.0);
    }

    /// A handler panic is a bug, most likely one this very input triggers: retried a few times
    /// in case it is not, then dead-lettered so it cannot block the stream (`stockctl dlq
    /// replay` brings it back after a fix). `None` means retry.
    fn after_panic(
        &self,
        message: &jetstream::Message,
        panic: &(dyn std::any::Any + Send),
    ) -> Option<HandleError> {
        let worker = self.spec.durable;
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-text panic payload".to_owned());
        let deliveries = message.info().map(|i| i.delivered).unwrap_or(1);
        metrics::counter!("stockflow_handler_panics_total", "worker" => worker).increment(1);
        tracing::error!(worker, deliveries, panic = %what, subject = %message.subject, "handler panicked");
        (deliveries >= PANICS_BEFORE_DEAD_LETTER).then(|| {
            HandleError::malformed(
                "unknown",
                "handler_panic",
                format!("the handler panicked on delivery {deliveries}: {what}"),
            )
        })
    }

    async fn nak(&self, message: &jetstream::Message, dependency: Option<Dependency>) {
        let worker = self.spec.durable;
        if let Some(dependency) = dependency {
            metrics::counter!("stockflow_transient_failures_total", "worker" => worker, "kind" => dependency.as_str())
                .increment(1);
        }
        self.nak_in(message, None).await;
    }

    /// NAKs `message` to come back after `requested`, or after the loop's own back-off.
    async fn nak_in(&self, message: &jetstream::Message, requested: Option<Duration>) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let delay = nak_delay(requested, delivered);
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(worker = self.spec.durable, error = %e, "nak failed; redelivery after ack_wait");
        }
    }
}

/// The redelivery delay of a NAK: what the handler asked for, as it is (its own policy may
/// exceed the loop's cap by far), else doubling from 200 ms per delivery, capped at 20 s.
fn nak_delay(requested: Option<Duration>, delivered: i64) -> Duration {
    requested.unwrap_or_else(|| {
        let attempt = u32::try_from(delivered.max(1) - 1).unwrap_or(u32::MAX);
        backoff(attempt, Duration::from_millis(200), Duration::from_secs(20))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nak_waits_as_long_as_the_handler_asked_else_the_loops_back_off() {
        let hours = Duration::from_secs(3 * 3600);
        assert_eq!(nak_delay(Some(hours), 1), hours, "not capped, not jittered");
        assert_eq!(
            nak_delay(Some(Duration::from_millis(5)), 40),
            Duration::from_millis(5)
        );
        let first = nak_delay(None, 1);
        assert!(first >= Duration::from_millis(200) && first <= Duration::from_millis(240));
        let late = nak_delay(None, 100);
        assert!(late >= Duration::from_secs(20) && late <= Duration::from_secs(24));
        let err = HandleError::RetryIn {
            reason: "endpoint paused".into(),
            delay: Duration::from_secs(2),
        };
        assert_eq!(err.to_string(), "retry in 2s: endpoint paused");
    }
}
