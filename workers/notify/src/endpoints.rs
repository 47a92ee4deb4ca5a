//! The delivery loops, one per endpoint, and the set of subscriptions the fan-out enqueues for.
//!
//! The subscriptions file's endpoints are started once, at start ([`Endpoints::start_file`]);
//! those the `WEBHOOK_SUBSCRIPTIONS` bucket holds at start too, before the fan-out runs
//! ([`Endpoints::start_bucket`]); then they come and go while the worker runs
//! ([`Endpoints::watch`]): a new one gets its consumer `webhook-<id>` and a loop, a deleted one
//! is taken out of the fan-out, its loop stopped (deliveries in flight finish) and its consumer
//! removed with the deliveries still queued for it. A bucket entry with the id of a file
//! subscription is ignored: the file wins.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use stockflow_proto::subjects;
use stockflow_shared::{
    consume::{ConsumeSettings, Consumer, Pull},
    deadletter::DeadLetters,
    health::{Health, HealthCheck},
    settings::Secret,
    startup::{Failure, Startup},
    topology::{self, ConsumerSpec, TopologySettings},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    deliver::{self, Deliverer, Endpoint, RetryPolicy},
    registry::{Registry, Stored},
    subscriptions::Subscription,
    Settings,
};

/// The subscriptions the fan-out enqueues deliveries for, as they are now: read once per input,
/// replaced whole on a change.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionSet(Arc<RwLock<Arc<Vec<Subscription>>>>);

impl SubscriptionSet {
    /// The current subscriptions.
    pub fn current(&self) -> Arc<Vec<Subscription>> {
        // A panic while holding the lock cannot leave the Arc half-written: recover it.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Adds `subscription`, replacing one with its id.
    fn put(&self, subscription: Subscription) {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<Subscription> = guard
            .iter()
            .filter(|s| s.id != subscription.id)
            .cloned()
            .collect();
        next.push(subscription);
        *guard = Arc::new(next);
    }

    /// Removes the subscription `id`.
    fn remove(&self, id: &str) {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let next: Vec<Subscription> = guard.iter().filter(|s| s.id != id).cloned().collect();
        *guard = Arc::new(next);
    }
}

/// Where a running endpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `STOCKFLOW_WEBHOOKS_FILE`: runs until shutdown.
    File,
    /// The bucket, with the stored value it was started from.
    Bucket(Vec<u8>),
}

/// One endpoint's running loop.
#[derive(Debug)]
struct Running {
    source: Source,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What the delivery loops need, and the loops that run.
#[derive(Debug)]
pub struct Endpoints {
    js: jetstream::Context,
    topology: TopologySettings,
    retry: RetryPolicy,
    consume: ConsumeSettings,
    concurrency: usize,
    default_secret: Option<Secret>,
    client: reqwest::Client,
    /// Readiness: the file endpoints' consumers are bound (`consumer_webhook_<id>`).
    health: Health,
    /// Flags of the bucket endpoints' consumers: not readiness checks, since they come and go.
    unlisted: Health,
    /// Flags of the breakers: not readiness checks, since an endpoint's outage is not notify's.
    pauses: Health,
    nats_up: HealthCheck,
    shutdown: CancellationToken,
    subscriptions: SubscriptionSet,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
    /// Consumer names, made `'static` once per id (metric labels).
    durables: Mutex<HashMap<String, &'static str>>,
}

impl Endpoints {
    /// The loops' settings; nothing runs yet.
    pub fn new(
        settings: &Settings,
        js: jetstream::Context,
        health: &Health,
        nats_up: &HealthCheck,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        Ok(Self {
            js,
            topology: settings.worker.topology.clone(),
            retry: settings.retry.clone(),
            consume: settings.worker.consume.clone(),
            concurrency: settings.concurrency,
            default_secret: settings.default_secret.clone(),
            client: Deliverer::client(settings.retry.timeout)
                .context("building the HTTP client")?,
            health: health.clone(),
            unlisted: Health::default(),
            pauses: Health::default(),
            nats_up: nats_up.clone(),
            shutdown: shutdown.clone(),
            subscriptions: SubscriptionSet::default(),
            running: tokio::sync::Mutex::default(),
            durables: Mutex::default(),
        })
    }

    /// The subscriptions the fan-out reads.
    pub fn subscriptions(&self) -> SubscriptionSet {
        self.subscriptions.clone()
    }

    /// Declares the file subscriptions' consumers, waiting while JetStream does not answer (a
    /// consumer that exists with other settings fails at once), and starts their loops.
    pub async fn start_file(
        &self,
        startup: &Startup,
        subscriptions: &[Subscription],
    ) -> anyhow::Result<()> {
        for subscription in subscriptions {
            let id = &subscription.id;
            startup
                .wait("JetStream to declare the webhook consumers", || async {
                    let declared =
                        topology::ensure_webhook_consumer(&self.js, id, &self.topology).await;
                    declared.map_err(|e| {
                        let unavailable = matches!(e, topology::TopologyError::JetStream { .. });
                        let e = anyhow::Error::new(e)
                            .context(format!("declaring the deliveries consumer of webhook {id}"));
                        if unavailable {
                            Failure::Unavailable(e)
                        } else {
                            Failure::Misconfigured(e)
                        }
                    })
                })
                .await?;
        }
        let mut running = self.running.lock().await;
        for subscription in subscriptions {
            let bound = self
                .health
                .check(format!("consumer_webhook_{}", subscription.id));
            self.subscriptions.put(subscription.clone());
            let (stop, task) = self.spawn(subscription.clone(), bound, false);
            running.insert(
                subscription.id.clone(),
                Running {
                    source: Source::File,
                    stop,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Starts the loops of the subscriptions the bucket holds now, waiting while JetStream does
    /// not answer: called before the fan-out starts, so no event is fanned out without them.
    /// [`Self::watch`] then follows the changes.
    pub async fn start_bucket(&self, startup: &Startup) -> anyhow::Result<()> {
        let entries = startup
            .wait("JetStream to read the webhook subscriptions", || async {
                let registry = Registry::open(&self.js)
                    .await
                    .map_err(|e| Failure::Unavailable(e.into()))?;
                registry
                    .entries()
                    .await
                    .map_err(|e| Failure::Unavailable(e.into()))
            })
            .await?;
        for entry in entries {
            self.apply(entry).await;
        }
        Ok(())
    }

    /// Follows the bucket until shutdown: the current subscriptions first, then every change.
    /// A bucket that is missing or a watch that breaks is retried with a back-off.
    pub async fn watch(self: Arc<Self>) {
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            match self.follow().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot watch the webhook subscriptions bucket; retrying");
                    }
                }
            }
            // Back-off between attempts to re-open the watch while JetStream does not answer;
            // shutdown ends the wait at once.
            let pause = backoff(failures);
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One watch of the bucket, until it ends or shutdown.
    async fn follow(&self) -> anyhow::Result<()> {
        let registry = Registry::open(&self.js).await?;
        let mut changes = registry.watch().await?;
        loop {
            let change = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                change = changes.next() => change,
            };
            match change {
                Some(Ok(entry)) => self.apply(entry).await,
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            }
        }
    }

    /// Applies one change of the bucket.
    async fn apply(&self, entry: kv::Entry) {
        let id = entry.key;
        let mut running = self.running.lock().await;
        if running.get(&id).is_some_and(|r| r.source == Source::File) {
            tracing::warn!(endpoint = %id, "a subscription of the bucket has the id of one of STOCKFLOW_WEBHOOKS_FILE: ignored, the file's is delivered");
            return;
        }
        let value = entry.value.to_vec();
        if entry.operation == kv::Operation::Put
            && running
                .get(&id)
                .is_some_and(|r| r.source == Source::Bucket(value.clone()))
        {
            return;
        }
        // Changed or deleted: the running loop, if any, stops first.
        if let Some(old) = running.remove(&id) {
            self.subscriptions.remove(&id);
            old.stop.cancel();
            if let Err(e) = old.task.await {
                tracing::error!(endpoint = %id, error = %e, "delivery loop panicked");
            }
        }
        if entry.operation != kv::Operation::Put {
            match topology::remove_webhook_consumer(&self.js, &id).await {
                Ok(true) => {
                    tracing::info!(endpoint = %id, "webhook subscription deleted: its consumer and queued deliveries are removed")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %id, error = %e, "removing the consumer of a deleted webhook subscription failed")
                }
            }
            return;
        }
        let subscription = match Stored::from_json(&value)
            .map_err(|e| e.to_string())
            .and_then(|stored| {
                if stored.id == id {
                    stored
                        .into_subscription(self.default_secret.as_ref())
                        .map_err(|e| e.to_string())
                } else {
                    Err(format!("id: {:?} is not its key", stored.id))
                }
            }) {
            Ok(subscription) => subscription,
            Err(reason) => {
                tracing::error!(endpoint = %id, %reason, "webhook subscription of the bucket not delivered");
                return;
            }
        };
        tracing::info!(endpoint = %id, "webhook subscription added");
        // In the fan-out first: what it enqueues from now on waits for the consumer.
        self.subscriptions.put(subscription.clone());
        let bound = self.unlisted.check(id.clone());
        let (stop, task) = self.spawn(subscription, bound, true);
        running.insert(
            id,
            Running {
                source: Source::Bucket(value),
                stop,
                task,
            },
        );
    }

    /// Waits until every loop has stopped (after shutdown).
    pub async fn join(&self) {
        let mut running = self.running.lock().await;
        for (id, endpoint) in running.drain() {
            endpoint.stop.cancel();
            if let Err(e) = endpoint.task.await {
                tracing::error!(endpoint = %id, error = %e, "delivery loop panicked");
            }
        }
    }

    fn durable(&self, id: &str) -> &'static str {
        let mut names = self.durables.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .entry(id.to_owned())
            // Named for the life of the process (metric labels): leaked once per id.
            .or_insert_with(|| Box::leak(topology::webhook_durable(id).into_boxed_str()))
    }

    /// One endpoint's loop on its own consumer, with at most `concurrency` POSTs in flight: an
    /// endpoint that fails or hangs holds its own deliveries and nobody else's. With `declare`
    /// it first creates the consumer, retrying while JetStream does not answer.
    fn spawn(
        &self,
        subscription: Subscription,
        bound: HealthCheck,
        declare: bool,
    ) -> (CancellationToken, JoinHandle<()>) {
        let stop = self.shutdown.child_token();
        let id = subscription.id.clone();
        let endpoint = Arc::new(Endpoint::new(subscription, &self.retry));
        let may_pull = self.pauses.check(id.clone());
        let consumer = Consumer {
            js: self.js.clone(),
            spec: ConsumerSpec {
                stream: subjects::WEBHOOKS,
                durable: self.durable(&id),
            },
            dead_letters: DeadLetters::new(self.js.clone()),
            bound,
            can_process: may_pull.clone(),
            settings: ConsumeSettings {
                max_in_flight: self.concurrency,
                // A POST may take longer than the ack wait: pull only what can start at once.
                pull: Pull::WithinWindow,
                ..self.consume.clone()
            },
        };
        let handler = Arc::new(Deliverer::new(
            self.client.clone(),
            self.retry.clone(),
            endpoint.clone(),
            DeadLetters::new(self.js.clone()),
        ));
        let breaker =
            deliver::watch_breaker(endpoint, self.nats_up.clone(), may_pull, stop.clone());
        let (js, topology, token) = (self.js.clone(), self.topology.clone(), stop.clone());
        let task = tokio::spawn(async move {
            if declare && !declare_until_done(&js, &id, &topology, &token).await {
                return;
            }
            tokio::join!(breaker, consumer.run(handler, token));
        });
        (stop, task)
    }
}

/// Creates endpoint `id`'s consumer, retrying with a back-off until it is there; `false` when
/// `stop` came first or the consumer exists with other settings (logged).
async fn declare_until_done(
    js: &jetstream::Context,
    id: &str,
    topology: &TopologySettings,
    stop: &CancellationToken,
) -> bool {
    let mut tries = 0u32;
    loop {
        match topology::ensure_webhook_consumer(js, id, topology).await {
            Ok(()) => return true,
            Err(e @ topology::TopologyError::JetStream { .. }) => {
                if tries == 0 {
                    tracing::warn!(endpoint = %id, error = %e, "declaring the deliveries consumer; retrying");
                }
            }
            Err(e) => {
                tracing::error!(endpoint = %id, error = %e, "the deliveries consumer differs: not delivering");
                return false;
            }
        }
        // Back-off between declarations while JetStream does not answer; `stop` (the
        // subscription deleted, or shutdown) ends the wait at once.
        let pause = backoff(tries);
        tries = tries.saturating_add(1);
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Pause before retry `tries` + 1: doubling from 100 ms up to 5 s.
fn backoff(tries: u32) -> Duration {
    Duration::from_millis(100)
        .saturating_mul(1u32 << tries.min(6))
        .min(Duration::from_secs(5))
}
