//! Quantities out: one durable consumer per shop on its channel's availability feed, one
//! [`Feed`] handler per shop, and one [`Pusher`] task per shop that batches what the handlers
//! hand it into platform calls, one call at a time, paced by the platform's cost budget.
//!
//! A message is acked once its quantity is set on the platform (or found superseded, or
//! dead-lettered). Until then it stays pending in the consumer — durably, across restarts — and
//! comes back after a back-off; past the retry horizon (measured from when the quantity changed)
//! it is dead-lettered. A throttle is never a failure: it waits as long as the platform asks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use stockflow_proto::{subjects, v1::ChannelAvailabilityChanged};
use stockflow_shared::{
    consume::{Delivery, HandleError, Handled, Handler, Outcome},
    deadletter::{DeadLetters, Route},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{
    facts,
    platform::{ItemOutcome, Platform, PlatformError, Push},
    shops::{Item, Shop},
    Clock, RetryPolicy,
};

/// Every shop's item mappings, by shop id and SKU: the live copy of the `CONNECTOR_ITEMS` bucket
/// (`crate::live` keeps it current), read at each push, so a mapping change applies to the next
/// push without a restart.
pub type Mappings = Arc<RwLock<HashMap<String, HashMap<String, Item>>>>;

/// Header of a connector dead letter: the shop.
pub use stockflow_proto::subjects::HEADER_CONNECTOR_DL_SHOP as HEADER_DL_SHOP;

/// What the pusher answers for one item.
#[derive(Debug)]
enum Answer {
    /// The call ran: this item's outcome, and the quantity it was compared against.
    Done {
        /// How the item ended.
        outcome: ItemOutcome,
        /// The compare value the call carried (filled just before the call).
        expected: i64,
    },
    /// The platform is known to hold the quantity already: nothing was sent.
    Unchanged,
    /// A newer quantity of the same SKU was in the same batch and went instead.
    Superseded,
    /// The call did not run.
    Failed(PlatformError),
}

/// One item handed to the pusher.
#[derive(Debug)]
struct Job {
    push: Push,
    sequence: u64,
    reply: oneshot::Sender<Answer>,
}

/// What a shop's handler and pusher share: the shop, its platform and the quantities the
/// platform is known to hold (set by this process, or read from it).
#[derive(Debug)]
pub struct ShopState {
    /// The shop.
    pub shop: Shop,
    /// Its platform.
    pub platform: Arc<dyn Platform>,
    /// Its item mappings (with every other shop's).
    mappings: Mappings,
    known: Mutex<HashMap<String, i64>>,
    /// No call to the platform before this instant (its cost budget, a throttle): pushes and
    /// reads share it, so a read cannot spend what a push waits for.
    not_before: Mutex<tokio::time::Instant>,
}

impl ShopState {
    /// A shop whose platform quantities are not known yet, mapping the items of [`Shop::items`].
    pub fn new(shop: Shop, platform: Arc<dyn Platform>) -> Self {
        let mappings = Mappings::default();
        mappings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(shop.id.clone(), shop.items.clone());
        Self::with_mappings(shop, platform, mappings)
    }

    /// A shop whose platform quantities are not known yet, its items read from `mappings`.
    pub fn with_mappings(shop: Shop, platform: Arc<dyn Platform>, mappings: Mappings) -> Self {
        Self {
            shop,
            platform,
            mappings,
            known: Mutex::default(),
            not_before: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Where `sku` lives on the platform, if the shop maps it (now).
    pub fn item(&self, sku: &str) -> Option<Item> {
        self.mappings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&self.shop.id)
            .and_then(|items| items.get(sku))
            .cloned()
    }

    /// Forgets what the platform holds of `sku` (its mapping changed: the quantity known is
    /// another item's); the next push reads it first.
    pub fn forget(&self, sku: &str) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(sku);
    }

    /// Waits until the platform's budget allows a call.
    async fn paced(&self) {
        let until = *self
            .not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tokio::time::sleep_until(until).await;
    }

    /// No call before `pause` from now.
    fn pause(&self, pause: Duration) {
        let mut not_before = self
            .not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *not_before = (*not_before).max(tokio::time::Instant::now() + pause);
    }

    /// Reads `item`'s quantity on the platform, paced like the pushes.
    async fn read(&self, item: &crate::shops::Item) -> Result<i64, PlatformError> {
        self.paced().await;
        let read = self.platform.read(item).await;
        match &read {
            Ok(_) => reachable(&self.shop.id, true),
            Err(PlatformError::Throttled { retry_after }) => {
                metrics::counter!("stockflow_connector_throttles_total", "shop" => self.shop.id.clone())
                    .increment(1);
                self.pause(*retry_after);
            }
            Err(_) => reachable(&self.shop.id, false),
        }
        read
    }

    fn known(&self, sku: &str) -> Option<i64> {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sku)
            .copied()
    }

    fn set_known(&self, sku: &str, quantity: i64) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sku.to_owned(), quantity);
    }

    /// The platform moved `sku` by `delta` itself (one of the shop's own orders or restocked
    /// returns, stored for the first time): what it is known to hold moves with it, so the
    /// availability change the order causes compares against the right quantity.
    pub fn platform_moved(&self, sku: &str, delta: i64) {
        if let Some(known) = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(sku)
        {
            *known += delta;
        }
    }

    fn label(&self) -> String {
        self.shop.id.clone()
    }
}

/// Registers a shop's series at 0.
pub fn register_metrics(shop: &str) {
    for name in [
        "stockflow_connector_pushes_total",
        "stockflow_connector_quantities_pushed_total",
        "stockflow_connector_throttles_total",
        "stockflow_connector_stale_compares_total",
        "stockflow_connector_push_failures_total",
        "stockflow_connector_dead_letters_total",
    ] {
        metrics::counter!(name, "shop" => shop.to_owned()).increment(0);
    }
    metrics::gauge!("stockflow_connector_shop_reachable", "shop" => shop.to_owned()).set(1.0);
    metrics::gauge!("stockflow_connector_last_success_timestamp_seconds", "shop" => shop.to_owned())
        .set(unix_seconds(SystemTime::now()));
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A shop's batching loop: takes what the handlers hand it, waits up to `window` for more (up to
/// the platform's batch limit), keeps the newest quantity per SKU, and makes one call at a time,
/// no sooner than the platform's cost budget allows.
#[derive(Debug)]
pub struct Pusher {
    state: Arc<ShopState>,
    jobs: mpsc::Receiver<Job>,
    window: Duration,
}

/// The handle the handler sends jobs through.
#[derive(Debug, Clone)]
pub struct PushQueue(mpsc::Sender<Job>);

impl Pusher {
    /// The loop and its queue.
    pub fn new(state: Arc<ShopState>, window: Duration) -> (Self, PushQueue) {
        let (tx, rx) = mpsc::channel(state.platform.max_batch() * 4);
        (
            Self {
                state,
                jobs: rx,
                window,
            },
            PushQueue(tx),
        )
    }

    /// Runs until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let shop = self.state.label();
        let max = self.state.platform.max_batch().max(1);
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                job = self.jobs.recv() => match job { Some(job) => job, None => return },
            };
            let mut jobs = vec![first];
            let gather_until = tokio::time::Instant::now() + self.window;
            while jobs.len() < max {
                tokio::select! {
                    job = self.jobs.recv() => match job { Some(job) => jobs.push(job), None => break },
                    () = tokio::time::sleep_until(gather_until) => break,
                }
            }
            // The newest quantity per SKU only.
            let mut newest: HashMap<String, usize> = HashMap::new();
            for (i, job) in jobs.iter().enumerate() {
                match newest.get(&job.push.sku) {
                    Some(&j) if jobs[j].sequence >= job.sequence => {}
                    _ => {
                        newest.insert(job.push.sku.clone(), i);
                    }
                }
            }
            let mut kept = Vec::with_capacity(newest.len());
            for (i, job) in jobs.into_iter().enumerate() {
                if newest.get(&job.push.sku) == Some(&i) {
                    kept.push(job);
                } else {
                    let _ = job.reply.send(Answer::Superseded);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.state.paced() => {}
            }
            // The compare value is what the platform holds now, not what it held when the
            // handler queued the job: an earlier call for the same SKU may have set it since
            // (or an order on the platform moved it).
            let compares = self.state.platform.compares();
            let mut batch = Vec::with_capacity(kept.len());
            let mut replies = Vec::with_capacity(kept.len());
            let mut sequences = Vec::with_capacity(kept.len());
            for mut job in kept {
                if let Some(known) = self.state.known(&job.push.sku) {
                    job.push.expected = known;
                }
                if compares && job.push.expected == job.push.quantity {
                    let _ = job.reply.send(Answer::Unchanged);
                    continue;
                }
                sequences.push(job.sequence);
                batch.push(job.push);
                replies.push(job.reply);
            }
            if batch.is_empty() {
                continue;
            }
            let first_seq = sequences.iter().copied().min().unwrap_or_default();
            let last_seq = sequences.iter().copied().max().unwrap_or_default();
            let key = idempotency_key(&shop, &batch, &sequences);
            let reference = format!(
                "stockflow://connector/{shop}/availability/{}/{first_seq}-{last_seq}",
                self.state.shop.channel
            );
            let result = self.state.platform.push(&batch, &key, &reference).await;
            match result {
                Ok(report) => {
                    metrics::counter!("stockflow_connector_pushes_total", "shop" => shop.clone())
                        .increment(1);
                    if let Some(pause) = report.pause {
                        self.state.pause(pause);
                    }
                    reachable(&shop, true);
                    let mut set = 0u64;
                    for ((push, reply), outcome) in batch.iter().zip(replies).zip(report.outcomes) {
                        if outcome == ItemOutcome::Set {
                            set += 1;
                            self.state.set_known(&push.sku, push.quantity);
                        }
                        let _ = reply.send(Answer::Done {
                            outcome,
                            expected: push.expected,
                        });
                    }
                    metrics::counter!("stockflow_connector_quantities_pushed_total", "shop" => shop.clone())
                        .increment(set);
                }
                Err(error) => {
                    match &error {
                        PlatformError::Throttled { retry_after } => {
                            metrics::counter!("stockflow_connector_throttles_total", "shop" => shop.clone())
                                .increment(1);
                            self.state.pause(*retry_after);
                            reachable(&shop, true);
                        }
                        _ => {
                            metrics::counter!("stockflow_connector_push_failures_total", "shop" => shop.clone())
                                .increment(1);
                            reachable(&shop, false);
                        }
                    }
                    for reply in replies {
                        let _ = reply.send(Answer::Failed(error.clone()));
                    }
                }
            }
        }
    }
}

/// Keeps `stockflow_connector_shop_reachable` and the time of the last answer current (the
/// alert fires on a shop that has not answered for N minutes).
fn reachable(shop: &str, up: bool) {
    metrics::gauge!("stockflow_connector_shop_reachable", "shop" => shop.to_owned()).set(if up {
        1.0
    } else {
        0.0
    });
    if up {
        metrics::gauge!("stockflow_connector_last_success_timestamp_seconds", "shop" => shop.to_owned())
            .set(unix_seconds(SystemTime::now()));
    }
}

/// The same key for the same call: a call retried after a lost answer is applied once. The
/// `AVAILABILITY` sequences of the batch's messages are part of it, so a later change back to an
/// earlier quantity (5→3, 3→5, 5→3) is a new call, not an answer the platform kept.
fn idempotency_key(shop: &str, batch: &[Push], sequences: &[u64]) -> String {
    let mut hash = Sha256::new();
    hash.update(shop.as_bytes());
    for (push, sequence) in batch.iter().zip(sequences) {
        hash.update(
            format!(
                "\n{}\t{}\t{}\t{sequence}",
                push.sku, push.quantity, push.expected
            )
            .as_bytes(),
        );
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("stockflow-{hex}")
}

/// A shop's handler on its consumer: decides what one availability message asks of the shop.
#[derive(Debug)]
pub struct Feed {
    state: Arc<ShopState>,
    queue: PushQueue,
    js: jetstream::Context,
    dead_letters: DeadLetters,
    policy: RetryPolicy,
    clock: Clock,
}

impl Feed {
    /// The handler of `state`'s shop.
    pub fn new(
        state: Arc<ShopState>,
        queue: PushQueue,
        js: jetstream::Context,
        policy: RetryPolicy,
        clock: Clock,
    ) -> Self {
        Self {
            state,
            queue,
            dead_letters: DeadLetters::new(js.clone()),
            js,
            policy,
            clock,
        }
    }

    fn handled(outcome: Outcome) -> Handled {
        Handled {
            event_type: "channel_availability",
            outcome,
        }
    }

    /// Whether a newer quantity of the same SKU replaced this one in the stream (its push would
    /// be wasted: the newer one is, or will be, delivered too).
    async fn superseded(&self, subject: &str, sequence: u64) -> Result<bool, HandleError> {
        let stream = self
            .js
            .get_stream_no_info(subjects::AVAILABILITY)
            .await
            .map_err(HandleError::nats)?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(last) => Ok(last.sequence > sequence),
            Err(e) => Err(HandleError::nats(e)),
        }
    }

    /// The newest quantity of the SKU a replayed push (`connectors.retry.<shop>.<sku-token>`)
    /// names, with its `AVAILABILITY` sequence; `None` when the channel never listed it.
    async fn newest(
        &self,
        subject: &str,
    ) -> Result<Option<(ChannelAvailabilityChanged, u64)>, HandleError> {
        let prefix = format!("connectors.retry.{}.", self.state.shop.id);
        let Some(token) = subject.strip_prefix(&prefix).filter(|t| !t.contains('.')) else {
            return Err(HandleError::malformed(
                "channel_availability",
                "subject_mismatch",
                format!("{subject} is not {prefix}<sku-token>"),
            ));
        };
        let stream = self
            .js
            .get_stream_no_info(subjects::AVAILABILITY)
            .await
            .map_err(HandleError::nats)?;
        let feed = format!("availability.{}.{token}", self.state.shop.channel);
        match stream.get_last_raw_message_by_subject(&feed).await {
            Ok(last) => Ok(Some((decode(&last.payload)?, last.sequence))),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(HandleError::nats(e)),
        }
    }

    /// A failure of the platform: retried after a back-off, or dead-lettered past the horizon.
    async fn failed(
        &self,
        delivery: &Delivery,
        reason: &str,
        (stored, delivered): (SystemTime, i64),
    ) -> Result<Handled, HandleError> {
        let age = self
            .clock
            .now()
            .duration_since(stored)
            .unwrap_or(Duration::ZERO);
        if age <= self.policy.horizon {
            return Err(HandleError::RetryIn {
                reason: format!("shop {}: {reason}", self.state.shop.id),
                delay: self.policy.backoff(delivered),
            });
        }
        let reason = format!(
            "shop {}: not pushed within the retry horizon of {}s (STOCKFLOW_CONNECTOR_RETRY_HORIZON_SECONDS) since the quantity changed; last failure: {reason}",
            self.state.shop.id,
            self.policy.horizon.as_secs()
        );
        self.dead_letter(delivery, &reason).await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<Handled, HandleError> {
        let shop = &self.state.shop.id;
        let route = Route {
            subject: Some(format!("deadletter.connectors.{shop}")),
            message_id: None,
            headers: vec![(HEADER_DL_SHOP, shop.clone())],
        };
        tracing::warn!(shop = %shop, subject = %delivery.subject(), %reason, "push dead-lettered");
        self.dead_letters
            .store_with(delivery.message(), reason, route)
            .await
            .map_err(HandleError::nats)?;
        metrics::counter!("stockflow_connector_dead_letters_total", "shop" => shop.clone())
            .increment(1);
        metrics::counter!("stockflow_dead_letters_total", "worker" => "connector", "reason" => "push_failed")
            .increment(1);
        Ok(Self::handled(Outcome::Applied))
    }

    /// Books what someone changed on the platform (`actual` where the connector expected
    /// `expected`) as an `adjusted` fact at the item's stockflow location, with an event id
    /// derived from the message and both quantities, so a retry books it once.
    async fn book_difference(
        &self,
        push: &Push,
        sequence: u64,
        actual: i64,
    ) -> Result<(), HandleError> {
        let shop = &self.state.shop;
        let platform = self.state.platform.kind().as_str();
        let delta = actual - push.expected;
        let Some(location) = push.item.location.as_deref() else {
            tracing::warn!(shop = %shop.id, sku = %push.sku, delta, "the quantity was edited on the platform, but the item names no stockflow location: not booked, stockflow's quantity is set over it");
            return Ok(());
        };
        let mut hash = Sha256::new();
        hash.update(format!("{}\t{sequence}\t{}\t{actual}", push.sku, push.expected).as_bytes());
        let digest: String = hash
            .finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        let fact = serde_json::json!({
            "type": "adjusted",
            "sku": push.sku,
            "location": location,
            "delta": delta,
            // Not `<platform>:<shop>:…` (the shop's own orders, which the shop counted already): the
            // quantity this difference leads to must be pushed.
            "event_id": format!("{platform}-edit:{}:{digest}", shop.id),
            "source": platform,
            "reason": "correction",
            "reference": format!("{platform}://{}/inventory/{}", shop.id, subjects::encode_token(&push.sku)),
        });
        match facts::publish(&self.js, fact).await {
            Ok(_) => {
                tracing::info!(shop = %shop.id, sku = %push.sku, delta, "quantity edited on the platform booked in stockflow");
                Ok(())
            }
            Err(facts::PublishError::Invalid(reason)) => {
                tracing::warn!(shop = %shop.id, sku = %push.sku, %reason, "the platform's difference cannot be booked");
                Ok(())
            }
            Err(facts::PublishError::Unavailable(e)) => Err(HandleError::nats(e)),
        }
    }
}

impl Handler for Feed {
    fn event_types(&self) -> &'static [&'static str] {
        &["channel_availability"]
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        let message = delivery.message();
        let info = message
            .info()
            .map_err(|e| HandleError::nats(anyhow::anyhow!("message without metadata: {e}")))?;
        // Horizon and back-off count from this message: the feed's, or a replayed push's.
        let stored = (SystemTime::from(info.published), info.delivered);
        let retry = delivery.subject().starts_with("connectors.retry.");
        let (change, sequence) = if retry {
            match self.newest(delivery.subject()).await? {
                Some(newest) => newest,
                // The channel never listed the SKU: nothing to push.
                None => return Ok(Self::handled(Outcome::Applied)),
            }
        } else {
            let change = decode(message.payload.as_ref())?;
            (change, info.stream_sequence)
        };
        let shop = &self.state.shop;
        let Some(item) = self.state.item(&change.sku) else {
            // Not sold in this shop.
            return Ok(Self::handled(Outcome::Applied));
        };
        if !retry && self.superseded(delivery.subject(), sequence).await? {
            return Ok(Self::handled(Outcome::Duplicate));
        }
        let quantity = change.available_to_sell;
        let own = format!("{}:{}:", self.state.platform.kind().as_str(), shop.id);
        if change.cause_event_id.starts_with(&own)
            && self.state.known(&change.sku) == Some(quantity)
        {
            // This shop's own order moved it, and the platform counted it already (the intake
            // moved the known quantity when it stored the order): nothing to send. Otherwise (a
            // channel whose rules are not 1:1, a newer change in between) it is pushed like any
            // other change.
            return Ok(Self::handled(Outcome::Duplicate));
        }
        let expected = match self.state.known(&change.sku) {
            Some(known) => known,
            None if self.state.platform.compares() => match self.state.read(&item).await {
                Ok(actual) => {
                    self.state.set_known(&change.sku, actual);
                    actual
                }
                Err(PlatformError::Throttled { retry_after }) => {
                    return Err(HandleError::RetryIn {
                        reason: format!("shop {}: throttled", shop.id),
                        delay: retry_after,
                    })
                }
                Err(e) => return self.failed(delivery, &e.to_string(), stored).await,
            },
            None => change.previous,
        };
        if self.state.platform.compares() && expected == quantity {
            return Ok(Self::handled(Outcome::Duplicate));
        }
        let push = Push {
            sku: change.sku.clone(),
            item: item.clone(),
            quantity,
            expected,
        };
        let (reply, answer) = oneshot::channel();
        self.queue
            .0
            .send(Job {
                push: push.clone(),
                sequence,
                reply,
            })
            .await
            .map_err(|_| HandleError::RetryIn {
                reason: "shutting down".into(),
                delay: self.policy.backoff_floor,
            })?;
        let answer = answer.await.map_err(|_| HandleError::RetryIn {
            reason: "shutting down".into(),
            delay: self.policy.backoff_floor,
        })?;
        match answer {
            Answer::Done {
                outcome: ItemOutcome::Set,
                ..
            } => {
                let lag_ms = unix_ms(self.clock.now())
                    .saturating_sub(change.changed_at_ms)
                    .max(0);
                metrics::histogram!("stockflow_connector_push_lag_seconds", "shop" => shop.id.clone())
                    .record(lag_ms as f64 / 1000.0);
                Ok(Self::handled(Outcome::Applied))
            }
            Answer::Superseded | Answer::Unchanged => Ok(Self::handled(Outcome::Duplicate)),
            Answer::Done {
                outcome: ItemOutcome::NotApplied,
                ..
            } => Err(HandleError::RetryIn {
                reason: format!("shop {}: another item of the call was refused", shop.id),
                delay: self.policy.backoff_floor,
            }),
            Answer::Done {
                outcome: ItemOutcome::Stale,
                expected,
            } => {
                metrics::counter!("stockflow_connector_stale_compares_total", "shop" => shop.id.clone())
                    .increment(1);
                let actual = match self.state.read(&item).await {
                    Ok(actual) => actual,
                    Err(PlatformError::Throttled { retry_after }) => {
                        return Err(HandleError::RetryIn {
                            reason: format!("shop {}: throttled", shop.id),
                            delay: retry_after,
                        })
                    }
                    Err(e) => return self.failed(delivery, &e.to_string(), stored).await,
                };
                // Compared against what the connector knows now: a sale on the platform the
                // intake stored since the call moved that too, and is not an edit.
                let expected = self.state.known(&change.sku).unwrap_or(expected);
                let push = Push { expected, ..push };
                self.book_difference(&push, sequence, actual).await?;
                self.state.set_known(&change.sku, actual);
                // Pushed again (the booked difference also brings a newer quantity).
                Err(HandleError::RetryIn {
                    reason: format!("shop {}: stale compare, pushing again", shop.id),
                    delay: self.policy.backoff_floor,
                })
            }
            Answer::Done {
                outcome: ItemOutcome::Refused(reason),
                ..
            } => self.dead_letter(delivery, &reason).await,
            Answer::Failed(PlatformError::Throttled { retry_after }) => Err(HandleError::RetryIn {
                reason: format!("shop {}: throttled", shop.id),
                delay: retry_after,
            }),
            Answer::Failed(e) => self.failed(delivery, &e.to_string(), stored).await,
        }
    }
}

fn decode(payload: &[u8]) -> Result<ChannelAvailabilityChanged, HandleError> {
    ChannelAvailabilityChanged::decode(payload).map_err(|e| {
        HandleError::malformed(
            "channel_availability",
            "decode",
            format!("not a ChannelAvailabilityChanged: {e}"),
        )
    })
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shops::Item;

    #[test]
    fn the_idempotency_key_is_the_batch() {
        let push = |q| Push {
            sku: "A1".into(),
            item: Item {
                sku: "A1".into(),
                location: None,
                inventory_item_id: None,
                location_id: None,
                product_id: None,
                variation_id: None,
            },
            quantity: q,
            expected: 3,
        };
        assert_eq!(
            idempotency_key("s", &[push(1)], &[7]),
            idempotency_key("s", &[push(1)], &[7])
        );
        assert_ne!(
            idempotency_key("s", &[push(1)], &[7]),
            idempotency_key("s", &[push(2)], &[7])
        );
        assert_ne!(
            idempotency_key("s", &[push(1)], &[7]),
            idempotency_key("t", &[push(1)], &[7])
        );
        // The same quantity and compare again, from a later change: a new call.
        assert_ne!(
            idempotency_key("s", &[push(1)], &[7]),
            idempotency_key("s", &[push(1)], &[9])
        );
    }
}
