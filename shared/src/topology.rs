//! The streams and durable consumers stockflow runs on, declared in one place.
//!
//! [`ensure`] creates what is missing and verifies what exists. It never silently rewrites an
//! existing stream or consumer: a difference in a setting the workers rely on is an error that
//! names it; `setup` with `update` applies the declared configuration deliberately. The key-value
//! buckets ([`buckets`]) are created when missing; an existing one is used as it is.

use std::{sync::LazyLock, time::Duration};

use async_nats::jetstream::{self, consumer, kv, stream};
use futures::TryStreamExt as _;
use stockflow_proto::subjects;

/// How streams are created.
#[derive(Debug, Clone)]
pub struct TopologySettings {
    /// Replicas per stream (1 on one server, 3 on a cluster).
    pub replicas: usize,
    /// How long a delivered message may stay unacknowledged before JetStream redelivers it: the
    /// time a crashed worker's messages wait before another worker gets them.
    pub ack_wait: Duration,
    /// Partitions of the stock input (`STOCKFLOW_STOCK_PARTITIONS`): 1 is the single stream
    /// `STOCK_EVENTS`; N > 1 is N streams `STOCK_EVENTS_<p>` fed by the servers' subject mapping
    /// ([`subjects::stock_mappings`]), each with its own `stock-worker` consumer.
    pub stock_partitions: usize,
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            stock_partitions: 1,
        }
    }
}

/// Most partitions `STOCKFLOW_STOCK_PARTITIONS` accepts.
pub const MAX_STOCK_PARTITIONS: usize = 128;

/// `STOCK_EVENTS_0` .. `STOCK_EVENTS_127`, made once: a [`ConsumerSpec`] names its stream for the
/// life of the process (metric labels, readiness).
static PARTITION_STREAMS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..MAX_STOCK_PARTITIONS)
        .map(subjects::stock_events_partition)
        .collect()
});

/// `STOCK_CHANGES_0` .. `STOCK_CHANGES_127`, made once for the same reason.
static LEDGER_PARTITION_STREAMS: LazyLock<Vec<String>> = LazyLock::new(|| {
    (0..MAX_STOCK_PARTITIONS)
        .map(subjects::stock_changes_partition)
        .collect()
});

/// A worker's durable pull consumer.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSpec {
    /// The stream it reads.
    pub stream: &'static str,
    /// Durable consumer name (also the worker name in metrics).
    pub durable: &'static str,
}

/// The stock worker's consumer.
pub const STOCK_WORKER: ConsumerSpec = ConsumerSpec {
    stream: subjects::STOCK_EVENTS,
    durable: "stock-worker",
};

/// The order worker's consumer.
pub const ORDER_WORKER: ConsumerSpec = ConsumerSpec {
    stream: subjects::ORDER_EVENTS,
    durable: "order-worker",
};

/// The notify worker's consumer of alerts.
pub const NOTIFY_ALERTS: ConsumerSpec = ConsumerSpec {
    stream: subjects::ALERTS,
    durable: "notify-worker",
};

/// The notify worker's consumer of the ledger (it skips `stock.outcomes.>` itself: a filtered
/// consumer would be refused by the checks below).
pub const NOTIFY_STOCK_CHANGES: ConsumerSpec = ConsumerSpec {
    stream: subjects::STOCK_CHANGES,
    durable: "notify-worker",
};

/// The notify worker's consumer of order results.
pub const NOTIFY_ORDER_RESULTS: ConsumerSpec = ConsumerSpec {
    stream: subjects::ORDER_RESULTS,
    durable: "notify-worker",
};

/// The stock worker's consumer of channel definition changes.
pub const CHANNEL_RULES: ConsumerSpec = ConsumerSpec {
    stream: subjects::CHANNEL_EVENTS,
    durable: "stock-worker",
};

/// The notify worker's consumer of channel quantities.
pub const NOTIFY_AVAILABILITY: ConsumerSpec = ConsumerSpec {
    stream: subjects::AVAILABILITY,
    durable: "notify-worker",
};

/// The stock worker's follower of the ledger: recomputes the kits using a component that
/// changed (`workers/stock/src/kits.rs`).
pub const KIT_FOLLOWER: ConsumerSpec = ConsumerSpec {
    stream: subjects::STOCK_CHANGES,
    durable: "stock-kits",
};

/// Every durable consumer `setup` declares.
pub const CONSUMERS: &[ConsumerSpec] = &[
    STOCK_WORKER,
    CHANNEL_RULES,
    NOTIFY_AVAILABILITY,
    ORDER_WORKER,
    NOTIFY_ALERTS,
    NOTIFY_STOCK_CHANGES,
    NOTIFY_ORDER_RESULTS,
    KIT_FOLLOWER,
];

/// The stock worker's consumers: [`STOCK_WORKER`] on one stream, or one `stock-worker` per
/// partition stream.
pub fn stock_workers(settings: &TopologySettings) -> Vec<ConsumerSpec> {
    if settings.stock_partitions <= 1 {
        return vec![STOCK_WORKER];
    }
    PARTITION_STREAMS
        .iter()
        .take(settings.stock_partitions)
        .map(|stream| ConsumerSpec {
            stream: stream.as_str(),
            durable: STOCK_WORKER.durable,
        })
        .collect()
}

/// The ledger streams: `STOCK_CHANGES`, or `STOCK_CHANGES_<p>` per partition. A SKU's entries
/// are all in one of them, in the order they were written.
pub fn ledger_streams(settings: &TopologySettings) -> Vec<&'static str> {
    if settings.stock_partitions <= 1 {
        return vec![subjects::STOCK_CHANGES];
    }
    LEDGER_PARTITION_STREAMS
        .iter()
        .take(settings.stock_partitions)
        .map(String::as_str)
        .collect()
}

/// The notify worker's consumers of the ledger: [`NOTIFY_STOCK_CHANGES`] on one stream, or one
/// `notify-worker` per ledger partition.
pub fn notify_stock_changes(settings: &TopologySettings) -> Vec<ConsumerSpec> {
    ledger_streams(settings)
        .into_iter()
        .map(|stream| ConsumerSpec {
            stream,
            durable: NOTIFY_STOCK_CHANGES.durable,
        })
        .collect()
}

/// The kit follower's consumers: [`KIT_FOLLOWER`] on one ledger stream, or one `stock-kits` per
/// ledger partition.
pub fn kit_followers(settings: &TopologySettings) -> Vec<ConsumerSpec> {
    ledger_streams(settings)
        .into_iter()
        .map(|stream| ConsumerSpec {
            stream,
            durable: KIT_FOLLOWER.durable,
        })
        .collect()
}

/// Every durable consumer `setup` declares with these settings: [`CONSUMERS`], with the stock
/// worker's consumer once per input partition and the notify worker's ledger consumer once per
/// ledger partition.
pub fn consumers(settings: &TopologySettings) -> Vec<ConsumerSpec> {
    CONSUMERS
        .iter()
        .flat_map(|spec| {
            if spec.stream == STOCK_WORKER.stream {
                stock_workers(settings)
            } else if spec.stream == KIT_FOLLOWER.stream && spec.durable == KIT_FOLLOWER.durable {
                kit_followers(settings)
            } else if spec.stream == NOTIFY_STOCK_CHANGES.stream {
                notify_stock_changes(settings)
            } else {
                vec![*spec]
            }
        })
        .collect()
}

/// Smallest `STOCKFLOW_ACK_WAIT_SECONDS`. What keeps a message being handled from redelivery is
/// the in-progress ticker: every third of the ack wait it touches the messages handled for at
/// least a third of it, so the first touch may leave as late as two thirds in. At 5 s that leaves
/// 1.7 s for the touch to reach the server from a loaded process or across a reconnect (the NATS
/// client waits up to 4 s between tries); below it, a healthy worker under load sees messages it
/// is still handling redelivered to another replica — no wrong effect (handlers are idempotent),
/// but double work, duplicate webhooks and, under load, a redelivery storm. NAK back-offs
/// (200 ms to 20 s) do not depend on it: a NAKed message waits for its own delay, and only a NAK
/// that could not be sent falls back to the ack wait, which then bounds how fast it is retried.
pub const MIN_ACK_WAIT_SECONDS: u64 = 5;

/// Longest a message may wait between two deliveries (NAK back-off cap, ack wait): the duplicate
/// windows below must exceed it.
pub const MAX_REDELIVERY_SPAN: Duration = Duration::from_secs(60);

/// The declared stream configurations.
pub fn streams(settings: &TopologySettings) -> Vec<stream::Config> {
    let day = Duration::from_secs(24 * 3600);
    let stream = |name: &str, subjects: &[&str], max_age: Duration, duplicate_window: Duration| {
        stream::Config {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: settings.replicas,
            max_age,
            duplicate_window,
            ..Default::default()
        }
    };
    // Inputs are kept a week (replay, audit); the ledger and dead letters are kept until an
    // operator decides otherwise (rebuild needs the ledger); alerts are notifications.
    let (stock_inputs, ledgers) = if settings.stock_partitions <= 1 {
        (
            vec![stream(
                subjects::STOCK_EVENTS,
                &["stock.events.>"],
                7 * day,
                Duration::from_secs(120),
            )],
            vec![stream(
                subjects::STOCK_CHANGES,
                &["stock.changes.>", "stock.outcomes.>"],
                Duration::ZERO,
                5 * MAX_REDELIVERY_SPAN,
            )],
        )
    } else {
        // The servers' mappings rewrite `stock.<kind>.<sku-token>` to
        // `stock.<kind>.<p>.<sku-token>`: partition p holds exactly its own subjects, and a SKU's
        // input and ledger partitions have the same index.
        let partitions = 0..settings.stock_partitions;
        (
            partitions
                .clone()
                .map(|p| {
                    stream(
                        &subjects::stock_events_partition(p),
                        &[&subjects::stock_events_partition_subject(p)],
                        7 * day,
                        Duration::from_secs(120),
                    )
                })
                .collect(),
            partitions
                .map(|p| {
                    stream(
                        &subjects::stock_changes_partition(p),
                        &subjects::stock_changes_partition_subjects(p)
                            .each_ref()
                            .map(String::as_str),
                        Duration::ZERO,
                        5 * MAX_REDELIVERY_SPAN,
                    )
                })
                .collect::<Vec<_>>(),
        )
    };
    stock_inputs
        .into_iter()
        .chain(ledgers)
        .chain([
            stream(
                subjects::ALERTS,
                &["alerts.>"],
                30 * day,
                5 * MAX_REDELIVERY_SPAN,
            ),
            stream(
                subjects::DEAD_LETTERS,
                &["deadletter.>"],
                Duration::ZERO,
                5 * MAX_REDELIVERY_SPAN,
            ),
            stream(
                subjects::ORDER_EVENTS,
                &["orders.events.>"],
                7 * day,
                Duration::from_secs(120),
            ),
            stream(
                subjects::ORDER_RESULTS,
                &["orders.results.>"],
                Duration::ZERO,
                5 * MAX_REDELIVERY_SPAN,
            ),
            // Channel definitions: few, kept for good (they are the history of the rules).
            stream(
                subjects::CHANNEL_EVENTS,
                &["channels.events.>"],
                Duration::ZERO,
                Duration::from_secs(120),
            ),
            // What each channel may sell: only the newest quantity of each (channel, SKU), so
            // a reader that was away reads one message per SKU; direct gets serve the gateway.
            stream::Config {
                max_messages_per_subject: 1,
                allow_direct: true,
                ..stream(
                    subjects::AVAILABILITY,
                    &["availability.>"],
                    Duration::ZERO,
                    5 * MAX_REDELIVERY_SPAN,
                )
            },
            // Pushes a connector is asked to make again (replayed dead letters): a work queue,
            // one subject per shop and SKU.
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..stream(
                    subjects::CONNECTOR_RETRIES,
                    &["connectors.retry.>"],
                    WEBHOOKS_MAX_AGE,
                    5 * MAX_REDELIVERY_SPAN,
                )
            },
            // The webhook outbox: a work queue, so a delivery leaves the stream once its
            // endpoint acknowledged it (or it was dead-lettered); the per-endpoint consumers'
            // filters never overlap.
            stream::Config {
                retention: stream::RetentionPolicy::WorkQueue,
                ..stream(
                    subjects::WEBHOOKS,
                    &["webhooks.>"],
                    WEBHOOKS_MAX_AGE,
                    5 * MAX_REDELIVERY_SPAN,
                )
            },
        ])
        .collect()
}

/// How long a webhook delivery may wait in `WEBHOOKS` before JetStream drops it: well above the
/// longest retry horizon notify accepts, so a delivery always ends as a POST or a dead letter.
pub const WEBHOOKS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The key-value bucket of the webhook subscriptions made through the gateway's admin routes
/// (`/v1/webhooks`): one key per subscription id, its value the subscription as JSON. Its stream
/// is `KV_WEBHOOK_SUBSCRIPTIONS`; notify-worker watches it.
pub const WEBHOOK_SUBSCRIPTIONS: &str = "WEBHOOK_SUBSCRIPTIONS";

/// Largest value in [`WEBHOOK_SUBSCRIPTIONS`], bytes: a subscription with long SKU and
/// location filters fits many times over.
pub const WEBHOOK_SUBSCRIPTION_MAX_BYTES: usize = 256 * 1024;

/// The key-value bucket of the sales channels as the stock worker applied them: one key per
/// channel id, its value the `stockflow.v1.Channel` (protobuf); the entry's revision is the
/// channel's `rules_version`. Written only by the stock worker (from `CHANNEL_EVENTS`); every
/// worker that computes channel quantities watches it.
pub const CHANNELS: &str = "CHANNELS";

/// The key-value bucket of the connector's shops: one key per shop id, its value the shop as
/// JSON (platform, channel, API base URL and version, and the NAMES of the variables holding its
/// secrets — never a secret). Written by `stockctl connectors shops …`, the gateway's
/// `/v1/connectors/{shop}` and the connector's shops-file seed; the connector watches it.
pub const CONNECTOR_SHOPS: &str = "CONNECTOR_SHOPS";

/// The key-value bucket of the connector's item mappings: one key per shop and SKU
/// (`<shop>.<sku-key>`), its value where that SKU lives on the shop's platform, as JSON. Written
/// like [`CONNECTOR_SHOPS`]; the connector watches it.
pub const CONNECTOR_ITEMS: &str = "CONNECTOR_ITEMS";

/// The key-value bucket where the connector reports each shop it was configured with: running,
/// or skipped and why (a variable that is not set — its name, never a value). Written only by the
/// connector; read by `stockctl connectors status` and `GET /v1/connectors`.
pub const CONNECTOR_STATE: &str = "CONNECTOR_STATE";

/// The declared key-value buckets.
pub fn buckets(settings: &TopologySettings) -> Vec<kv::Config> {
    vec![
        kv::Config {
            bucket: CHANNELS.to_owned(),
            description: "stockflow sales channels (applied from CHANNEL_EVENTS)".to_owned(),
            history: 16,
            max_value_size: 64 * 1024,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: WEBHOOK_SUBSCRIPTIONS.to_owned(),
            description: "stockflow webhook subscriptions (gateway /v1/webhooks)".to_owned(),
            // The current value only: a deleted subscription's secret does not linger in history.
            history: 1,
            max_value_size: i32::try_from(WEBHOOK_SUBSCRIPTION_MAX_BYTES).unwrap_or(i32::MAX),
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: CONNECTOR_SHOPS.to_owned(),
            description: "stockflow connector shops (stockctl connectors shops, gateway /v1/connectors)".to_owned(),
            // The current value only: the connector follows the newest.
            history: 1,
            max_value_size: 16 * 1024,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: CONNECTOR_ITEMS.to_owned(),
            description: "stockflow connector item mappings (stockctl connectors items, gateway /v1/connectors/{shop}/items)".to_owned(),
            history: 1,
            max_value_size: 4 * 1024,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
        kv::Config {
            bucket: CONNECTOR_STATE.to_owned(),
            description: "stockflow connector: each configured shop, running or skipped and why".to_owned(),
            history: 1,
            max_value_size: 4 * 1024,
            storage: stream::StorageType::File,
            num_replicas: settings.replicas,
            ..Default::default()
        },
    ]
}

/// Creates the bucket `config` declares when its stream does not exist; an existing bucket is
/// left as it is.
async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<Action, TopologyError> {
    let bucket = config.bucket.clone();
    let stream = format!("KV_{bucket}");
    match js.get_stream(&stream).await {
        Ok(_) => return Ok(Action::Unchanged),
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {}
        Err(e) => return Err(js_error(format!("looking up bucket {bucket}"))(e.into())),
    }
    js.create_key_value(config)
        .await
        .map_err(|e| js_error(format!("creating bucket {bucket}"))(e.into()))?;
    tracing::info!(%bucket, "created key-value bucket");
    Ok(Action::Created)
}

/// The durable consumer name of webhook endpoint `endpoint` on `WEBHOOKS`.
pub fn webhook_durable(endpoint: &str) -> String {
    format!("webhook-{endpoint}")
}

/// The declared configuration of webhook endpoint `endpoint`'s consumer: its own subject only,
/// from the start (that subject only ever holds its deliveries).
pub fn webhook_consumer_config(
    endpoint: &str,
    settings: &TopologySettings,
) -> consumer::pull::Config {
    let base = consumer_config(
        &ConsumerSpec {
            stream: subjects::WEBHOOKS,
            durable: "",
        },
        settings,
    );
    consumer::pull::Config {
        durable_name: Some(webhook_durable(endpoint)),
        description: Some(format!("stockflow notify-worker deliveries to {endpoint}")),
        filter_subject: subjects::webhook(endpoint),
        deliver_policy: consumer::DeliverPolicy::All,
        ..base
    }
}

/// Creates webhook endpoint `endpoint`'s consumer, or verifies the one that exists reads that
/// endpoint's subject with explicit acks and unbounded redeliveries.
pub async fn ensure_webhook_consumer(
    js: &jetstream::Context,
    endpoint: &str,
    settings: &TopologySettings,
) -> Result<(), TopologyError> {
    let config = webhook_consumer_config(endpoint, settings);
    declare_consumer(js, subjects::WEBHOOKS, config, Mode::Verify)
        .await
        .map(|_| ())
}

/// Removes webhook endpoint `endpoint`'s consumer and the deliveries still queued for it on
/// `webhooks.<endpoint>`: what a deleted subscription leaves behind. Returns whether the consumer
/// existed; removing one that is gone already is not an error (every notify replica does it).
pub async fn remove_webhook_consumer(
    js: &jetstream::Context,
    endpoint: &str,
) -> Result<bool, TopologyError> {
    let durable = webhook_durable(endpoint);
    let stream = js
        .get_stream(subjects::WEBHOOKS)
        .await
        .map_err(|e| js_error(format!("looking up stream {}", subjects::WEBHOOKS))(e.into()))?;
    let existed = match stream.delete_consumer(&durable).await {
        Ok(_) => true,
        Err(e) if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {
            false
        }
        Err(e) => {
            return Err(js_error(format!(
                "removing consumer {}/{durable}",
                subjects::WEBHOOKS
            ))(e.into()))
        }
    };
    stream
        .purge()
        .filter(subjects::webhook(endpoint))
        .await
        .map_err(|e| {
            js_error(format!(
                "purging the deliveries of {endpoint} from {}",
                subjects::WEBHOOKS
            ))(e.into())
        })?;
    Ok(existed)
}

/// The durable consumer name of connector shop `shop` on `AVAILABILITY`.
pub fn connector_durable(shop: &str) -> String {
    format!("connector-{shop}")
}

/// The declared configuration of connector shop `shop`'s consumer: the availability feed of
/// `channel` (`availability.<channel>.>`), from the start. `AVAILABILITY` keeps the newest
/// quantity per (channel, SKU) only, so what waits for an unreachable shop is one message per
/// changed SKU, however many times it changed.
pub fn connector_consumer_config(
    shop: &str,
    channel: &str,
    settings: &TopologySettings,
) -> consumer::pull::Config {
    let base = consumer_config(
        &ConsumerSpec {
            stream: subjects::AVAILABILITY,
            durable: "",
        },
        settings,
    );
    consumer::pull::Config {
        durable_name: Some(connector_durable(shop)),
        description: Some(format!(
            "stockflow connector: channel {channel}'s quantities pushed to shop {shop}"
        )),
        filter_subject: subjects::channel_availability(channel),
        deliver_policy: consumer::DeliverPolicy::All,
        ..base
    }
}

/// The durable consumer name of connector shop `shop` on `CONNECTOR_RETRIES`.
pub fn connector_retries_durable(shop: &str) -> String {
    format!("connector-{shop}-retries")
}

/// The declared configuration of connector shop `shop`'s consumer of its replayed pushes
/// (`connectors.retry.<shop>.>`).
pub fn connector_retries_config(shop: &str, settings: &TopologySettings) -> consumer::pull::Config {
    let base = consumer_config(
        &ConsumerSpec {
            stream: subjects::CONNECTOR_RETRIES,
            durable: "",
        },
        settings,
    );
    consumer::pull::Config {
        durable_name: Some(connector_retries_durable(shop)),
        description: Some(format!(
            "stockflow connector: pushes to shop {shop} asked again"
        )),
        filter_subject: format!("connectors.retry.{shop}.>"),
        deliver_policy: consumer::DeliverPolicy::All,
        ..base
    }
}

/// Creates connector shop `shop`'s consumers — on `channel`'s feed, and on its replayed pushes —
/// or verifies the ones that exist read their subjects with explicit acks and unbounded
/// redeliveries (a shop moved to another channel fails here, naming the consumer to remove).
pub async fn ensure_connector_consumer(
    js: &jetstream::Context,
    shop: &str,
    channel: &str,
    settings: &TopologySettings,
) -> Result<(), TopologyError> {
    let config = connector_consumer_config(shop, channel, settings);
    declare_consumer(js, subjects::AVAILABILITY, config, Mode::Verify).await?;
    let config = connector_retries_config(shop, settings);
    declare_consumer(js, subjects::CONNECTOR_RETRIES, config, Mode::Verify)
        .await
        .map(|_| ())
}

/// The declared configuration of a durable consumer.
pub fn consumer_config(spec: &ConsumerSpec, settings: &TopologySettings) -> consumer::pull::Config {
    // Channel definitions are applied strictly one after the other, in stream order, across
    // every replica: two definitions of one channel applied out of order (or an old one
    // redelivered after a newer one) would leave the older rules in force.
    let max_ack_pending =
        if spec.stream == CHANNEL_RULES.stream && spec.durable == CHANNEL_RULES.durable {
            1
        } else {
            20_000
        };
    // The kit follower starts at the ledger's end when it is first declared: the entries before
    // it (possibly years of them) name no kit, since kits came with it; every later
    // `kit_defined` entry recomputes its kit from the levels of then.
    let deliver_policy = if spec.durable == KIT_FOLLOWER.durable {
        consumer::DeliverPolicy::New
    } else {
        consumer::DeliverPolicy::All
    };
    consumer::pull::Config {
        durable_name: Some(spec.durable.to_owned()),
        description: Some(format!("stockflow {}", spec.durable)),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        // Transient failures are retried until they succeed: never dropped after N attempts.
        max_deliver: -1,
        max_ack_pending,
        // Durable consumers never expire from inactivity (KEDA scales to max on a missing one).
        inactive_threshold: Duration::ZERO,
        ..Default::default()
    }
}

/// A declared object differs from what exists.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// An existing stream or consumer has a setting the workers rely on set differently.
    #[error("{object} exists with {setting} = {actual}, expected {expected}; run `setup --update` to apply the declared configuration")]
    Mismatch {
        /// `stream X` or `consumer X/Y`.
        object: String,
        /// The setting.
        setting: &'static str,
        /// What exists.
        actual: String,
        /// What is declared.
        expected: String,
    },
    /// The stock input or the ledger exists with another number of partitions than
    /// `STOCKFLOW_STOCK_PARTITIONS` declares. Never changed by `setup`, not even with `--update`:
    /// drain and remove the old streams first (docs/operations.md, "Partitioned stock input").
    #[error("stock streams {existing:?} exist, but STOCKFLOW_STOCK_PARTITIONS={declared} declares {expected:?}; changing the number of partitions is refused once they hold messages, and the ledger is kept forever: see docs/operations.md, \"Partitioned stock input\"")]
    Partitions {
        /// The stock input (or ledger) streams found.
        existing: Vec<String>,
        /// The declared number of partitions.
        declared: usize,
        /// The streams it declares.
        expected: Vec<String>,
    },
    /// JetStream refused or did not answer.
    #[error("{action}: {source}")]
    JetStream {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: async_nats::Error,
    },
}

/// Whether [`ensure`] may change existing objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create what is missing; report differences as errors.
    Verify,
    /// Create what is missing; update what differs.
    Update,
}

/// The kind of a declared object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A stream.
    Stream,
    /// A durable consumer.
    Consumer,
    /// A key-value bucket.
    Bucket,
}

impl ObjectKind {
    /// `stream`, `consumer` or `bucket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Consumer => "consumer",
            Self::Bucket => "bucket",
        }
    }
}

/// What [`ensure`] did to one declared object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It was missing and is created.
    Created,
    /// It differed and the declared configuration is applied ([`Mode::Update`]).
    Updated,
    /// It exists as declared (a bucket: it exists, and is used as it is).
    Unchanged,
}

impl Action {
    /// `created`, `updated` or `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One declared object and what [`ensure`] did to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Stream, consumer or bucket.
    pub kind: ObjectKind,
    /// `STOCK_EVENTS`, `STOCK_EVENTS/stock-worker`, `WEBHOOK_SUBSCRIPTIONS`.
    pub name: String,
    /// What was done.
    pub action: Action,
}

/// What [`ensure`] did, object by object, in the order it declares them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every declared stream, consumer and bucket.
    pub objects: Vec<Declared>,
}

impl Report {
    /// How many objects had `action` done to them.
    pub fn count(&self, action: Action) -> usize {
        self.objects.iter().filter(|o| o.action == action).count()
    }
}

/// Declares every stream, durable consumer and key-value bucket, and reports what it did.
pub async fn ensure(
    js: &jetstream::Context,
    settings: &TopologySettings,
    mode: Mode,
) -> Result<Report, TopologyError> {
    let declared = streams(settings);
    check_stock_layout(js, settings, &declared, Layout::Input).await?;
    check_stock_layout(js, settings, &declared, Layout::Ledger).await?;
    let mut report = Report::default();
    for config in declared {
        let name = config.name.clone();
        let action = ensure_stream(js, config, mode).await?;
        report.objects.push(Declared {
            kind: ObjectKind::Stream,
            name,
            action,
        });
    }
    for spec in consumers(settings) {
        let action = ensure_consumer(js, &spec, settings, mode).await?;
        report.objects.push(Declared {
            kind: ObjectKind::Consumer,
            name: format!("{}/{}", spec.stream, spec.durable),
            action,
        });
    }
    for config in buckets(settings) {
        let name = config.bucket.clone();
        let action = ensure_bucket(js, config).await?;
        report.objects.push(Declared {
            kind: ObjectKind::Bucket,
            name,
            action,
        });
    }
    Ok(report)
}

/// Whether none of `streams` has ever stored a message.
async fn never_used(js: &jetstream::Context, streams: &[String]) -> Result<bool, TopologyError> {
    for name in streams {
        let mut stream = js
            .get_stream(name)
            .await
            .map_err(|e| js_error(format!("looking up stream {name}"))(e.into()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| js_error(format!("reading stream {name}"))(e.into()))?;
        if info.state.last_sequence > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The partitioned stream families: both follow `STOCKFLOW_STOCK_PARTITIONS`.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `STOCK_EVENTS` or `STOCK_EVENTS_<p>`.
    Input,
    /// `STOCK_CHANGES` or `STOCK_CHANGES_<p>`.
    Ledger,
}

impl Layout {
    /// `Some(None)` for the unpartitioned stream, `Some(Some(p))` for partition p, `None` for a
    /// stream of another family.
    fn partition_of(self, name: &str) -> Option<Option<usize>> {
        let (single, partition) = match self {
            Self::Input => (
                subjects::STOCK_EVENTS,
                subjects::stock_events_partition_of(name),
            ),
            Self::Ledger => (
                subjects::STOCK_CHANGES,
                subjects::stock_changes_partition_of(name),
            ),
        };
        if name == single {
            Some(None)
        } else {
            partition.map(Some)
        }
    }
}

/// Refuses to add a stock input or ledger layout next to another one (their subjects would
/// overlap), or to add partitions to streams that already hold messages (a SKU's facts or ledger
/// entries would be split between its old and its new partition). Creating the missing
/// partitions of a layout that never stored a message is allowed: a first `setup` that stopped
/// half-way.
async fn check_stock_layout(
    js: &jetstream::Context,
    settings: &TopologySettings,
    declared: &[stream::Config],
    layout: Layout,
) -> Result<(), TopologyError> {
    let is_member = |name: &str| layout.partition_of(name).is_some();
    let expected: Vec<String> = declared
        .iter()
        .map(|c| c.name.clone())
        .filter(|name| is_member(name))
        .collect();
    let mut existing: Vec<String> = js
        .stream_names()
        .try_filter(|name| std::future::ready(is_member(name)))
        .try_collect()
        .await
        .map_err(|e| js_error("listing streams".to_owned())(e.into()))?;
    let missing_only = existing.iter().all(|name| expected.contains(name));
    if missing_only && (existing.len() == expected.len() || never_used(js, &existing).await?) {
        // The declared layout, or a first `setup` that stopped half-way: create the rest.
        return Ok(());
    }
    existing.sort_by_key(|name| layout.partition_of(name));
    Err(TopologyError::Partitions {
        existing,
        declared: settings.stock_partitions,
        expected,
    })
}

fn js_error(action: String) -> impl FnOnce(async_nats::Error) -> TopologyError {
    move |source| TopologyError::JetStream { action, source }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
    mode: Mode,
) -> Result<Action, TopologyError> {
    let name = config.name.clone();
    let existing = match js.get_stream(&name).await {
        Ok(mut stream) => Some(
            stream
                .info()
                .await
                .map_err(|e| js_error(format!("reading stream {name}"))(e.into()))?
                .config
                .clone(),
        ),
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
            None
        }
        Err(e) => return Err(js_error(format!("looking up stream {name}"))(e.into())),
    };
    let Some(actual) = existing else {
        js.create_stream(config)
            .await
            .map_err(|e| js_error(format!("creating stream {name}"))(e.into()))?;
        tracing::info!(stream = %name, "created stream");
        return Ok(Action::Created);
    };
    let mismatch = stream_mismatch(&actual, &config);
    match (mismatch, mode) {
        (None, _) => Ok(Action::Unchanged),
        (Some(_), Mode::Update) => {
            js.update_stream(config)
                .await
                .map_err(|e| js_error(format!("updating stream {name}"))(e.into()))?;
            tracing::info!(stream = %name, "updated stream");
            Ok(Action::Updated)
        }
        (Some((setting, actual, expected)), Mode::Verify) => Err(TopologyError::Mismatch {
            object: format!("stream {name}"),
            setting,
            actual,
            expected,
        }),
    }
}

fn stream_mismatch(
    actual: &stream::Config,
    expected: &stream::Config,
) -> Option<(&'static str, String, String)> {
    let mut want = expected.subjects.clone();
    let mut have = actual.subjects.clone();
    want.sort();
    have.sort();
    if want != have {
        return Some(("subjects", format!("{have:?}"), format!("{want:?}")));
    }
    if actual.duplicate_window < expected.duplicate_window {
        return Some((
            "duplicate_window",
            format!("{:?}", actual.duplicate_window),
            format!("at least {:?}", expected.duplicate_window),
        ));
    }
    if actual.retention != expected.retention {
        return Some((
            "retention",
            format!("{:?}", actual.retention),
            format!("{:?}", expected.retention),
        ));
    }
    None
}

async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    settings: &TopologySettings,
    mode: Mode,
) -> Result<Action, TopologyError> {
    declare_consumer(js, spec.stream, consumer_config(spec, settings), mode).await
}

/// Creates the durable consumer `config` declares on `stream`, or checks the settings the workers
/// rely on (explicit acks, never expiring, the declared filter, unbounded redeliveries) and,
/// in [`Mode::Update`], applies the declaration where they differ.
async fn declare_consumer(
    js: &jetstream::Context,
    stream: &str,
    config: consumer::pull::Config,
    mode: Mode,
) -> Result<Action, TopologyError> {
    let durable = config.durable_name.clone().unwrap_or_default();
    let object = format!("consumer {stream}/{durable}");
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| js_error(format!("looking up stream {stream}"))(e.into()))?;
    let existing = stream
        .get_consumer::<consumer::pull::Config>(&durable)
        .await;
    let actual = match existing {
        Ok(consumer) => consumer.cached_info().config.clone(),
        Err(_) => {
            stream
                .create_consumer(config)
                .await
                .map_err(|e| js_error(format!("creating {object}"))(e.into()))?;
            tracing::info!(%object, "created consumer");
            return Ok(Action::Created);
        }
    };
    let mismatch = if actual.ack_policy != consumer::AckPolicy::Explicit {
        Some((
            "ack_policy",
            format!("{:?}", actual.ack_policy),
            "Explicit".to_owned(),
        ))
    } else if actual.inactive_threshold != Duration::ZERO {
        // A consumer that expires when idle makes KEDA scale to the maximum once it is gone.
        Some((
            "inactive_threshold",
            format!("{:?}", actual.inactive_threshold),
            "0 (never expires)".to_owned(),
        ))
    } else if actual.filter_subject != config.filter_subject || !actual.filter_subjects.is_empty() {
        Some((
            "filter_subject",
            actual.filter_subject.clone(),
            config.filter_subject.clone(),
        ))
    } else if actual.max_deliver != -1 {
        Some((
            "max_deliver",
            actual.max_deliver.to_string(),
            "-1".to_owned(),
        ))
    } else {
        None
    };
    match (mismatch, mode) {
        (None, _) => Ok(Action::Unchanged),
        (Some(_), Mode::Update) => {
            stream
                .update_consumer(config)
                .await
                .map_err(|e| js_error(format!("updating {object}"))(e.into()))?;
            tracing::info!(%object, "updated consumer");
            Ok(Action::Updated)
        }
        (Some((setting, actual, expected)), Mode::Verify) => Err(TopologyError::Mismatch {
            object,
            setting,
            actual,
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{settings::Env, worker::WorkerSettings};

    fn names(settings: &TopologySettings) -> Vec<String> {
        streams(settings).into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn one_partition_is_the_single_stock_stream() {
        let settings = TopologySettings::default();
        assert_eq!(settings.stock_partitions, 1);
        let stock = &streams(&settings)[0];
        assert_eq!(stock.name, "STOCK_EVENTS");
        assert_eq!(stock.subjects, vec!["stock.events.>".to_owned()]);
        assert_eq!(stock_workers(&settings).len(), 1);
        assert_eq!(ledger_streams(&settings), ["STOCK_CHANGES"]);
        assert_eq!(notify_stock_changes(&settings).len(), 1);
        assert_eq!(consumers(&settings).len(), CONSUMERS.len());
    }

    #[test]
    fn partitions_replace_the_stock_stream_and_its_consumer() {
        let settings = TopologySettings {
            stock_partitions: 3,
            ..TopologySettings::default()
        };
        let all = names(&settings);
        assert!(!all.contains(&"STOCK_EVENTS".to_owned()));
        for p in 0..3 {
            let config = streams(&settings)
                .into_iter()
                .find(|s| s.name == format!("STOCK_EVENTS_{p}"))
                .expect("partition stream");
            assert_eq!(config.subjects, vec![format!("stock.events.{p}.*")]);
        }
        assert!(!all.contains(&"STOCK_CHANGES".to_owned()));
        for p in 0..3 {
            let config = streams(&settings)
                .into_iter()
                .find(|s| s.name == format!("STOCK_CHANGES_{p}"))
                .expect("ledger partition stream");
            assert_eq!(
                config.subjects,
                vec![
                    format!("stock.changes.{p}.*"),
                    format!("stock.outcomes.{p}.*")
                ]
            );
            assert_eq!(config.max_age, Duration::ZERO, "the ledger is kept");
            assert_eq!(config.duplicate_window, 5 * MAX_REDELIVERY_SPAN);
        }
        assert_eq!(all.len(), names(&TopologySettings::default()).len() + 4);
        let notify: Vec<(&str, &str)> = notify_stock_changes(&settings)
            .iter()
            .map(|s| (s.stream, s.durable))
            .collect();
        assert_eq!(
            notify,
            [
                ("STOCK_CHANGES_0", "notify-worker"),
                ("STOCK_CHANGES_1", "notify-worker"),
                ("STOCK_CHANGES_2", "notify-worker")
            ]
        );
        let stock: Vec<(&str, &str)> = stock_workers(&settings)
            .iter()
            .map(|s| (s.stream, s.durable))
            .collect();
        assert_eq!(
            stock,
            [
                ("STOCK_EVENTS_0", "stock-worker"),
                ("STOCK_EVENTS_1", "stock-worker"),
                ("STOCK_EVENTS_2", "stock-worker")
            ]
        );
        // Per partition (3): the stock worker, the notify worker and the kit follower.
        assert_eq!(consumers(&settings).len(), CONSUMERS.len() + 6);
    }

    #[test]
    fn the_webhook_outbox_is_a_work_queue_read_per_endpoint() {
        let settings = TopologySettings::default();
        let outbox = streams(&settings)
            .into_iter()
            .find(|s| s.name == subjects::WEBHOOKS)
            .expect("WEBHOOKS is declared");
        assert_eq!(outbox.subjects, vec!["webhooks.>".to_owned()]);
        assert_eq!(outbox.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(outbox.max_age, WEBHOOKS_MAX_AGE);
        assert_eq!(outbox.duplicate_window, 5 * MAX_REDELIVERY_SPAN);
        let consumer = webhook_consumer_config("crm", &settings);
        assert_eq!(consumer.durable_name.as_deref(), Some("webhook-crm"));
        assert_eq!(consumer.filter_subject, "webhooks.crm");
        assert_eq!(consumer.deliver_policy, consumer::DeliverPolicy::All);
        assert_eq!(consumer.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(
            consumer.max_deliver, -1,
            "retried until the horizon, not a count"
        );
    }

    #[test]
    fn the_number_of_partitions_is_bounded_and_errors_name_the_variable() {
        let read = |value: &str| {
            WorkerSettings::from_env(
                &Env::from_pairs([("STOCKFLOW_STOCK_PARTITIONS", value)]),
                "test",
                "127.0.0.1:0",
            )
        };
        assert_eq!(read("8").expect("valid").topology.stock_partitions, 8);
        assert_eq!(
            read("128").expect("valid").topology.stock_partitions,
            MAX_STOCK_PARTITIONS
        );
        for bad in ["0", "129", "many"] {
            let err = read(bad).expect_err("refused");
            assert!(
                err.to_string().contains("STOCKFLOW_STOCK_PARTITIONS"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_ack_wait_below_the_minimum_is_refused_naming_the_variable_and_the_minimum() {
        let read = |value: &str| {
            WorkerSettings::from_env(
                &Env::from_pairs([("STOCKFLOW_ACK_WAIT_SECONDS", value)]),
                "test",
                "127.0.0.1:0",
            )
        };
        assert_eq!(
            read("5").expect("the minimum").topology.ack_wait,
            Duration::from_secs(MIN_ACK_WAIT_SECONDS)
        );
        for bad in ["1", "4", "0"] {
            let text = read(bad).expect_err("below the minimum").to_string();
            assert!(text.starts_with("STOCKFLOW_ACK_WAIT_SECONDS:"), "{text}");
            assert!(
                text.contains(&format!("{MIN_ACK_WAIT_SECONDS}..")),
                "{text}"
            );
        }
    }
}
