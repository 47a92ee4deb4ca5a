#![doc = include_str!("../README.md")]

mod batch;
pub mod channels;
pub mod fact;
pub mod kits;
pub mod restore;

use std::{future::Future, sync::Arc};

use async_nats::jetstream;
use stockflow_proto::input::fact::Op;
use stockflow_shared::{
    batch::CoalesceSettings,
    channels::{ChannelBook, Locations},
    consume::{Delivery, HandleError, Handled, Handler, Outcome},
    keys::Keys,
    ledger::{Cause, Ledger},
    outcome::{self, Verdict},
    replication::{self, Replicas},
    settings::{ConfigError, Env},
    topology,
    worker::{readiness_checks, Runtime, Service, StateSettings, WorkerSettings},
};

use crate::fact::Fact;

/// Sends `event`, a fact the stock worker derives (a kit's components' sales, a kit's level, a
/// channel's recompute), to its SKU's input subject under the fact's `Nats-Msg-Id`, so a
/// redelivery of its cause sends a duplicate JetStream drops. Await the returned PubAck.
pub(crate) async fn send_fact(
    js: &jetstream::Context,
    event: &stockflow_proto::v1::StockEvent,
) -> Result<jetstream::context::PublishAckFuture, HandleError> {
    use prost::Message as _;
    let event_id = event.meta.as_ref().map_or("", |m| m.event_id.as_str());
    let publish = jetstream::message::PublishMessage::build()
        .payload(event.encode_to_vec().into())
        .message_id(stockflow_proto::msg_id::stock_fact(&event.sku, event_id));
    js.send_publish(stockflow_proto::subjects::stock_event(&event.sku), publish)
        .await
        .map_err(HandleError::nats)
}

/// The stock worker's settings: the shared ones and the shape of its `apply_stock` batches.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS, listener, topology, consume loop.
    pub worker: WorkerSettings,
    /// Redis, dedup TTL, replica wait.
    pub state: StateSettings,
    /// How the `apply_stock` calls of concurrent messages share round trips: most items in one
    /// call (`STOCKFLOW_STOCK_BATCH_MAX`) and most calls on the wire at once
    /// (`STOCKFLOW_STOCK_BATCHES_IN_FLIGHT`).
    pub batch: CoalesceSettings,
}

impl Settings {
    /// Reads the environment; errors name the variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            worker: WorkerSettings::from_env(env, "stock-worker", "127.0.0.1:9464")?,
            state: StateSettings::from_env(env)?,
            batch: env.batch_shape(
                "STOCKFLOW_STOCK_BATCH_MAX",
                "STOCKFLOW_STOCK_BATCHES_IN_FLIGHT",
            )?,
        })
    }
}

/// Runs the stock worker until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut runtime = Service::worker(&settings.worker)
        .redis(&settings.state.redis)
        .start(shutdown)
        .await?;
    describe_metrics();
    let book = ChannelBook::start(&runtime.js).await?;
    let handler =
        StockHandler::new(&runtime, &settings.state, book.clone()).with_batch_shape(settings.batch);
    let rules = channels::ChannelRulesHandler::new(&runtime, &settings, book);
    let consumer = runtime.consumer(topology::CHANNEL_RULES, "consumer_channels");
    runtime.spawn_consumer(consumer, Arc::new(rules));
    let kits = Arc::new(kits::KitFollower::new(
        runtime.js.clone(),
        runtime.redis.clone(),
        Keys::new(settings.state.redis.key_prefix.clone()),
    ));
    for spec in topology::kit_followers(&settings.worker.topology) {
        let consumer = runtime.consumer(spec, format!("consumer_kits_{}", spec.stream));
        runtime.spawn_consumer(consumer, kits.clone());
    }
    let consumers = readiness_checks(
        &topology::stock_workers(&settings.worker.topology),
        "consumer",
    );
    runtime.consume_all(&consumers, handler).await
}

/// Registers the stock worker's alert counters at 0 (after the runtime installed the recorder),
/// so dashboards and alerts see every kind from the start rather than no series until its
/// first alert.
fn describe_metrics() {
    use stockflow_proto::v1::AlertKind;
    for kind in [
        AlertKind::LowStock,
        AlertKind::OutOfStock,
        AlertKind::BackInStock,
        AlertKind::NegativeStock,
        AlertKind::ChannelOversold,
    ] {
        metrics::counter!("stockflow_alerts_total", "kind" => outcome::alert_name(kind))
            .increment(0);
    }
}

/// `apply_stock.lua`'s flags (ARGV[13]): `1` an opening balance, `r` a replayed dead letter.
fn script_flags(opening_balance: bool, replayed: bool) -> String {
    let mut flags = String::new();
    if opening_balance {
        flags.push('1');
    }
    if replayed {
        flags.push('r');
    }
    flags
}

/// `lua/apply_stock.lua` with the shared prelude.
fn apply_stock_script() -> redis::Script {
    stockflow_shared::script(include_str!("../lua/apply_stock.lua"))
}

/// What the `apply_stock` script answered.
#[derive(Debug)]
pub enum Applied {
    /// First delivery: applied now.
    New(outcome::Outcome),
    /// Seen before; `published` tells whether its derived events are known to be stored.
    Seen {
        /// The stored outcome.
        outcome: outcome::Outcome,
        /// Derived events are in JetStream.
        published: bool,
    },
    /// The same `event_id` came with a different change.
    Conflict,
    /// The change would take a level beyond ±10^15 at `location`.
    OutOfRange(String),
    /// The sale, return or recompute names a channel the script was given no spec of.
    UnknownChannel(String),
    /// An unsellable move asks for more units than `location` has free (into a state: on_hand
    /// − reserved − unsellable) or than the state holds (out of it): nothing changed. The
    /// refusal is remembered in the dedup record: a redelivery gets it again, unjudged, and
    /// only a replay of its dead letter judges it again.
    Insufficient {
        /// The location.
        location: String,
        /// The units there were.
        free: i64,
    },
    /// A fact that moves stock, on a kit (which has none): nothing changed. These are its
    /// components.
    Kit(kits::Components),
}

/// Applies stock facts: one atomic step per event (many events share one `apply_stock` call),
/// then the derived events, then the mark (in a later call) and the ack.
#[derive(Debug, Clone)]
pub struct StockHandler {
    redis: stockflow_shared::redis_conn::RedisConnection,
    keys: Keys,
    /// Where a kit's sale or return is sent on as its components'.
    js: jetstream::Context,
    ledger: Ledger,
    /// `apply_stock` calls: the applies and marks of all in-flight events, coalesced.
    batches: batch::Batches,
    dedup_ttl_seconds: u64,
    /// Replicas that must hold a change before its ledger entry is published.
    replicas: Option<Replicas>,
    /// The sales channels, as the scripts compute with them.
    book: ChannelBook,
    /// The locations a channel may name.
    locations: Locations,
}

impl StockHandler {
    /// A handler using the runtime's connections and the worker's state settings.
    pub fn new(runtime: &Runtime, state: &StateSettings, book: ChannelBook) -> Self {
        Self::with(
            runtime.redis.clone(),
            runtime.js.clone(),
            Keys::new(state.redis.key_prefix.clone()),
            state.dedup_ttl.as_secs(),
            book,
        )
        .with_replicas(Replicas::new(state.replica_wait.as_ref()))
    }

    /// A handler from its parts (tests drive it directly).
    pub fn with(
        redis: stockflow_shared::redis_conn::RedisConnection,
        js: jetstream::Context,
        keys: Keys,
        dedup_ttl_seconds: u64,
        book: ChannelBook,
    ) -> Self {
        let batches = batch::Batches::start(
            redis.clone(),
            apply_stock_script(),
            CoalesceSettings::default(),
        );
        Self {
            redis,
            ledger: Ledger::new(js.clone()),
            js,
            batches,
            dedup_ttl_seconds,
            replicas: None,
            locations: Locations::new(&keys),
            keys,
            book,
        }
    }

    /// Batches its `apply_stock` calls in `shape` rather than the default (4 × 64).
    pub fn with_batch_shape(mut self, shape: CoalesceSettings) -> Self {
        // The default batches' task ends once its handle is dropped here.
        self.batches = batch::Batches::start(self.redis.clone(), apply_stock_script(), shape);
        self
    }

    /// Waits for `replicas` before publishing each change.
    pub fn with_replicas(mut self, replicas: Option<Replicas>) -> Self {
        self.replicas = replicas;
        self
    }

    /// Runs `apply_stock` for `fact`: the one atomic step of the stock path (in the next batch).
    pub async fn apply(&self, fact: &Fact) -> Result<Applied, HandleError> {
        self.apply_keyed(fact, &self.dedup_key(fact), false).await
    }

    /// The key of `fact`'s dedup record, built once per event for its apply and its mark.
    fn dedup_key(&self, fact: &Fact) -> String {
        self.keys.event(&fact.sku, &fact.meta.event_id)
    }

    /// The channel specs the script needs for `fact`: every channel the book knows, and the
    /// channel it names itself as looked up (waiting for the rules version a recompute asks
    /// for). A channel it names that was never defined is `UnknownChannel`.
    async fn channel_specs(&self, fact: &Fact) -> Result<Result<String, Applied>, HandleError> {
        let named = match &fact.op {
            Op::ChannelRecompute {
                channel,
                rules_version,
            } => {
                // The watch brings a new definition within milliseconds; a recompute that
                // outruns it waits a moment, then comes back later.
                match self
                    .book
                    .at_least(channel, *rules_version, std::time::Duration::from_secs(2))
                    .await
                    .map_err(HandleError::nats)?
                {
                    Some(known) => Some(known),
                    None => {
                        return Err(HandleError::NotYet(format!(
                            "channel {channel:?} rules version {rules_version} is not in the CHANNELS bucket yet"
                        )))
                    }
                }
            }
            _ if !fact.channel.is_empty() => {
                match self
                    .book
                    .lookup(&fact.channel)
                    .await
                    .map_err(HandleError::nats)?
                {
                    Some(known) => Some(known),
                    // An override may precede its channel.
                    None if matches!(fact.op, Op::ChannelRules { .. }) => None,
                    None => return Ok(Err(Applied::UnknownChannel(fact.channel.clone()))),
                }
            }
            _ => None,
        };
        Ok(Ok(self.book.specs_for(
            named.as_ref().map(|known| (fact.channel.as_str(), known)),
        )))
    }

    /// `replayed`: the delivery is a replay of the fact's dead letter (`stockctl dlq replay`),
    /// so a refusal its dedup record remembers is judged again.
    async fn apply_keyed(
        &self,
        fact: &Fact,
        dedup_key: &str,
        replayed: bool,
    ) -> Result<Applied, HandleError> {
        let specs = match self.channel_specs(fact).await? {
            Ok(specs) => specs,
            Err(unknown) => return Ok(unknown),
        };
        let args = fact.script_args();
        let fingerprint = fact.fingerprint(&args);
        let [quantity, expected, to, threshold, safety, priority] = args;
        let item = batch::Item::Apply {
            keys: [
                dedup_key.to_owned(),
                self.keys.stock(&fact.sku),
                self.keys.policy(&fact.sku),
                self.keys.channels(&fact.sku),
            ],
            args: Box::new([
                fact.op.name().to_owned(),
                fact.location.clone(),
                quantity,
                expected,
                to,
                fingerprint,
                self.dedup_ttl_seconds.to_string(),
                threshold,
                safety,
                priority,
                fact.channel.clone(),
                specs,
                script_flags(
                    // An opening balance leaves the channels to the end of its load (`import`).
                    stockflow_shared::ledger::is_opening_balance(&fact.meta),
                    replayed,
                ),
            ]),
        };
        let reply = self
            .batches
            .run(item)
            .await
            .map_err(batch::BatchError::into_handle_error)?;
        // A reply the script cannot give is a bug: bounded retries, then a dead letter.
        let parse = |text: &str| {
            outcome::Outcome::parse(text).map_err(|e| HandleError::Unexpected {
                reason: format!("apply_stock's outcome {text:?}: {e:#}"),
            })
        };
        match reply
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["applied", text, _] => Ok(Applied::New(parse(text)?)),
            ["duplicate", text, published] => Ok(Applied::Seen {
                outcome: parse(text)?,
                published: *published == "1",
            }),
            ["conflict", _] => Ok(Applied::Conflict),
            ["out_of_range", location] => Ok(Applied::OutOfRange((*location).to_owned())),
            ["unknown_channel", channel] => Ok(Applied::UnknownChannel((*channel).to_owned())),
            ["kit", components] => stockflow_proto::input::fact::decode_kit(components)
                .map(Applied::Kit)
                .ok_or_else(|| HandleError::Unexpected {
                    reason: format!("apply_stock answered kit with {components:?}"),
                }),
            ["insufficient", location, free] => Ok(Applied::Insufficient {
                location: (*location).to_owned(),
                free: free.parse().map_err(|_| HandleError::Unexpected {
                    reason: format!("apply_stock answered insufficient with {free:?} units"),
                })?,
            }),
            other => Err(HandleError::Unexpected {
                reason: format!("apply_stock answered {other:?}"),
            }),
        }
    }

    async fn publish(
        &self,
        fact: &Fact,
        dedup_key: &str,
        outcome: &outcome::Outcome,
    ) -> Result<(), HandleError> {
        // A change the ledger records must not be one a failover can still take back.
        replication::confirm(
            self.replicas.as_ref(),
            &self.redis,
            &self.keys.stock(&fact.sku),
        )
        .await?;
        let policy = fact.policy();
        let channel_rules = fact.channel_rules();
        let kit = fact.kit();
        let cause = Cause {
            sku: &fact.sku,
            cause_id: &fact.meta.event_id,
            location: &fact.location,
            meta: &fact.meta,
            policy: policy.as_ref(),
            order_line: None,
            channel: &fact.channel,
            channel_rules: channel_rules.as_ref(),
            kit: kit.as_ref(),
        };
        // The locations a channel may name: noted before the ack, so a crash notes them again.
        self.locations
            .note(
                &self.redis,
                outcome.changes.iter().map(|c| c.location.as_str()),
            )
            .await
            .map_err(HandleError::redis)?;
        self.ledger
            .publish(cause, outcome)
            .await
            .map_err(HandleError::nats)?;
        // Before the ack: a later duplicate must find the mark, even past JetStream's window.
        // It rides in the next `apply_stock` call with other events' applies.
        match self
            .batches
            .run(batch::Item::Mark(dedup_key.to_owned()))
            .await
            .map_err(batch::BatchError::into_handle_error)?
            .as_slice()
        {
            [marked, _] if marked == "marked" => Ok(()),
            other => Err(HandleError::Unexpected {
                reason: format!("apply_stock answered a mark with {other:?}"),
            }),
        }
    }
}

impl Handler for StockHandler {
    fn event_types(&self) -> &'static [&'static str] {
        &[
            "received",
            "sold",
            "returned",
            "adjusted",
            "counted",
            "transferred",
            "policy_set",
            "channel_rules",
            "channel_recompute",
            "expected",
            "expected_cancelled",
            "unsellable_moved",
            "kit_defined",
            "kit_buildable",
        ]
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        // The subject as published: the loop has taken out a partition stream's partition.
        let fact = fact::parse(delivery.subject(), delivery.payload())?;
        let event_type = fact.op.name();
        let dedup_key = self.dedup_key(&fact);
        let replayed = delivery.message().headers.as_ref().is_some_and(|h| {
            h.get(stockflow_shared::replay::HEADER_REPLAYED_FROM)
                .is_some()
        });
        kits::check_definition(&self.redis, &self.keys, &fact).await?;
        let outcome = match self.apply_keyed(&fact, &dedup_key, replayed).await? {
            Applied::New(outcome) => {
                for change in outcome.channels.iter().filter(|c| c.oversold > 0) {
                    metrics::counter!("stockflow_channel_oversold_total", "channel" => change.channel.clone())
                        .increment(1);
                }
                self.publish(&fact, &dedup_key, &outcome).await?;
                match outcome.verdict {
                    Verdict::Applied => Outcome::Applied,
                    _ => Outcome::Stale,
                }
            }
            Applied::Seen { outcome, published } => {
                // A crash between the script and the publish leaves `published` unset: finish
                // the job; JetStream drops what was already stored.
                if !published {
                    self.publish(&fact, &dedup_key, &outcome).await?;
                }
                Outcome::Duplicate
            }
            Applied::Conflict => {
                return Err(HandleError::malformed(
                    event_type,
                    "event_id_conflict",
                    format!(
                        "event_id {:?} was already used for a different change of this sku",
                        fact.meta.event_id
                    ),
                ))
            }
            Applied::UnknownChannel(channel) => {
                return Err(HandleError::malformed(
                    event_type,
                    "unknown_channel",
                    format!("channel {channel:?} is not defined (stockctl channels list)"),
                ))
            }
            Applied::Insufficient { location, free } => {
                let quantity = match &fact.op {
                    Op::UnsellableMoved { quantity, .. } => *quantity,
                    _ => 0,
                };
                return Err(HandleError::malformed(
                    event_type,
                    "invalid_quantity",
                    format!(
                        "the move of {quantity} units at {location:?} exceeds the {free} units there are to move"
                    ),
                ));
            }
            Applied::Kit(components) => {
                // A sale or return of a kit is one of each component; the rest is refused.
                kits::expand_fact(&self.js, &fact, &components).await?;
                Outcome::Applied
            }
            Applied::OutOfRange(location) => {
                return Err(HandleError::malformed(
                    event_type,
                    "invalid_quantity",
                    format!("the change would take on_hand at {location:?} beyond ±10^15"),
                ))
            }
        };
        Ok(Handled {
            event_type,
            outcome,
        })
    }
}
