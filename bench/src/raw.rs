//! The raw paths: the plumbing's ceiling with none of stockflow's logic. Each consumes stock
//! events, dedups them by `Nats-Msg-Id` and bumps a counter in one Lua script, publishes one
//! derived message with a deterministic `Nats-Msg-Id`, waits for its PubAck, then acks the input.
//! No protobuf, no validation, no metrics. Each runs as its own process, like a worker
//! (`stockflow-bench raw-worker [--batched]`).
//!
//! - **per message** ([`run`]): one script call, one publish and one ack per event, 256 events in
//!   flight — the shape of stockflow's workers before batching;
//! - **batched** ([`run_batched`]): several batches in flight ([`Shape`]), ONE script call per
//!   batch, the batch's derived messages published asynchronously with their PubAcks awaited
//!   together, then the batch's acks sent together. A batch is whatever the pull subscription has
//!   ready (up to the batch size) when a slot is free, so a batch forms while the previous ones
//!   are on the wire and an idle system still answers one event at a time with no added wait.
//!   One script call spans keys of many SKUs: that is fine on the single redis-server the bench
//!   runs (Redis Cluster would need one call per slot).

use std::{future::IntoFuture, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage};
use futures::StreamExt as _;
use stockflow_proto::subjects;
use stockflow_shared::topology::{self, ConsumerSpec, TopologySettings};

/// The raw paths' durable consumer on the stock stream (each measurement has its own servers,
/// so the per-message and the batched path never share it).
pub(crate) const RAW_PATH: ConsumerSpec = ConsumerSpec {
    stream: subjects::STOCK_EVENTS,
    durable: "raw-path",
};

/// Same concurrency as the stock worker's default `STOCKFLOW_MAX_IN_FLIGHT`.
const IN_FLIGHT: usize = 256;

/// Dedup TTL of the raw paths' records, seconds.
const DEDUP_TTL: u64 = 86_400;

const SCRIPT: &str = r"
-- KEYS[1] dedup key, KEYS[2] counter hash; ARGV[1] counter field, ARGV[2] dedup TTL seconds.
-- Returns the new count, or false for a duplicate.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
return false
";

const BATCH_SCRIPT: &str = r"
-- The per-message script over a whole batch, in one call.
-- KEYS: per event i (1-based), KEYS[2i-1] its dedup key and KEYS[2i] its counter hash.
-- ARGV[1] counter field, ARGV[2] dedup TTL seconds.
-- Returns one entry per event, in order: the new count, or false (nil) for a duplicate.
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[2]) then
    out[#out + 1] = redis.call('HINCRBY', KEYS[i + 1], ARGV[1], 1)
  else
    out[#out + 1] = false
  end
end
return out
";

/// Environment variable: batches the batched raw path keeps in flight.
pub(crate) const BATCHES_VAR: &str = "STOCKFLOW_BENCH_RAW_BATCHES";
/// Environment variable: most events in one batch of the batched raw path.
pub(crate) const BATCH_SIZE_VAR: &str = "STOCKFLOW_BENCH_RAW_BATCH_SIZE";

/// How the batched raw path groups its work: `batches` in flight of at most `size` events each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Batches in flight at once.
    pub(crate) batches: usize,
    /// Most events in one batch (one script call).
    pub(crate) size: usize,
}

impl Shape {
    /// The shape the stock and latency scenarios measure.
    pub(crate) const DEFAULT: Self = Self {
        batches: 4,
        size: 64,
    };

    /// The shapes the `raw` scenario sweeps: 256 events in flight, cut three ways.
    pub(crate) const SWEEP: [Self; 3] = [
        Self {
            batches: 1,
            size: 256,
        },
        Self::DEFAULT,
        Self {
            batches: 8,
            size: 32,
        },
    ];

    /// The environment that selects this shape in the raw worker's process.
    pub(crate) fn env(self) -> [(&'static str, String); 2] {
        [
            (BATCHES_VAR, self.batches.to_string()),
            (BATCH_SIZE_VAR, self.size.to_string()),
        ]
    }

    /// Reads the shape from [`BATCHES_VAR`] and [`BATCH_SIZE_VAR`] ([`Self::DEFAULT`] for a
    /// variable that is not set); an error names the variable.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let read = |name: &str, default: usize| -> anyhow::Result<usize> {
            match std::env::var(name) {
                Err(std::env::VarError::NotPresent) => Ok(default),
                Err(e) => Err(anyhow::anyhow!("{name}: {e}")),
                Ok(value) => match value.trim().parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => anyhow::bail!("{name} must be a whole number ≥ 1, got {value:?}"),
                },
            }
        };
        Ok(Self {
            batches: read(BATCHES_VAR, Self::DEFAULT.batches)?,
            size: read(BATCH_SIZE_VAR, Self::DEFAULT.size)?,
        })
    }

    /// `4×64`.
    pub(crate) fn label(self) -> String {
        format!("{}×{}", self.batches, self.size)
    }
}

/// Declares the raw paths' consumer (same settings as the stock worker's).
pub(crate) async fn declare(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_stream(RAW_PATH.stream)
        .await?
        .get_or_create_consumer(
            RAW_PATH.durable,
            topology::consumer_config(&RAW_PATH, &TopologySettings::default()),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// What both raw paths start with: clients, the consumer's message stream, the readiness port.
struct Plumbing {
    js: jetstream::Context,
    conn: redis::aio::ConnectionManager,
    messages: jetstream::consumer::pull::Stream,
}

/// Connects, binds the consumer (pulling up to `in_flight` messages per request) and, once it is
/// bound, answers `200 OK` to every connection on `ready_addr` (the bench waits for it as it
/// waits for a worker's `/readyz`).
async fn plumbing(
    nats_url: &str,
    redis_url: &str,
    ready_addr: std::net::SocketAddr,
    in_flight: usize,
) -> anyhow::Result<Plumbing> {
    let client = async_nats::connect(nats_url)
        .await
        .context("connecting to STOCKFLOW_NATS_URL")?;
    let js = jetstream::new(client);
    let redis = redis::Client::open(redis_url).context("STOCKFLOW_REDIS_URL")?;
    let conn = redis::aio::ConnectionManager::new(redis)
        .await
        .context("connecting to STOCKFLOW_REDIS_URL")?;
    let consumer: PullConsumer = js
        .get_stream(RAW_PATH.stream)
        .await?
        .get_consumer(RAW_PATH.durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(in_flight)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    let listener = tokio::net::TcpListener::bind(ready_addr).await?;
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        }
    });
    Ok(Plumbing { js, conn, messages })
}

/// An input's `Nats-Msg-Id` and the last token of its subject (the SKU's token).
fn identify(message: &jetstream::Message) -> (String, String) {
    let msg_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    let token = message
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    (msg_id, token)
}

/// The derived message of an input: its count, with a message id derived from the input's.
fn derived(msg_id: &str, count: Option<i64>) -> PublishMessage {
    PublishMessage::build()
        .payload(count.unwrap_or(0).to_string().into())
        .message_id(format!("raw:{msg_id}"))
}

/// Runs the per-message raw path until killed.
pub(crate) async fn run(
    nats_url: &str,
    redis_url: &str,
    ready_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let Plumbing { js, conn, messages } =
        plumbing(nats_url, redis_url, ready_addr, IN_FLIGHT).await?;
    let script = redis::Script::new(SCRIPT);
    messages
        .for_each_concurrent(IN_FLIGHT, |message| {
            let js = js.clone();
            let mut conn = conn.clone();
            let script = &script;
            async move {
                let Ok(message) = message else { return };
                let (msg_id, token) = identify(&message);
                let count: redis::RedisResult<Option<i64>> = script
                    .key(format!("raw:{{{token}}}:evt:{msg_id}"))
                    .key(format!("raw:{{{token}}}:count"))
                    .arg("wh")
                    .arg(DEDUP_TTL)
                    .invoke_async(&mut conn)
                    .await;
                let Ok(count) = count else { return }; // not acked: redelivered
                let stored = match js
                    .send_publish(format!("stock.changes.{token}"), derived(&msg_id, count))
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    let _ = message.ack().await;
                }
            }
        })
        .await;
    Ok(())
}

/// Runs the batched raw path until killed: `shape.batches` batches in flight, one script call
/// per batch.
pub(crate) async fn run_batched(
    nats_url: &str,
    redis_url: &str,
    ready_addr: std::net::SocketAddr,
    shape: Shape,
) -> anyhow::Result<()> {
    let Plumbing { js, conn, messages } =
        plumbing(nats_url, redis_url, ready_addr, shape.batches * shape.size).await?;
    let script = redis::Script::new(BATCH_SCRIPT);
    // `ready_chunks` takes what is ready, up to the size, without waiting for more; the stream is
    // polled only when one of the `batches` slots is free, so the next batch gathers meanwhile.
    messages
        .ready_chunks(shape.size)
        .for_each_concurrent(shape.batches, |batch| {
            let js = js.clone();
            let mut conn = conn.clone();
            let script = &script;
            async move {
                // An error item is a failed pull, not a message: nothing to apply or ack.
                let batch: Vec<jetstream::Message> = batch.into_iter().flatten().collect();
                if batch.is_empty() {
                    return;
                }
                let ids: Vec<(String, String)> = batch.iter().map(identify).collect();
                let mut invocation = script.prepare_invoke();
                for (msg_id, token) in &ids {
                    invocation
                        .key(format!("raw:{{{token}}}:evt:{msg_id}"))
                        .key(format!("raw:{{{token}}}:count"));
                }
                invocation.arg("wh").arg(DEDUP_TTL);
                let counts: redis::RedisResult<Vec<Option<i64>>> =
                    invocation.invoke_async(&mut conn).await;
                // Not acked on failure: the whole batch is redelivered (the dedup keys make the
                // second application a no-op).
                let Ok(counts) = counts else { return };
                if counts.len() != ids.len() {
                    return;
                }
                // Every publish goes out before any PubAck is awaited.
                let mut acks = Vec::with_capacity(ids.len());
                for ((msg_id, token), count) in ids.iter().zip(counts) {
                    acks.push(
                        js.send_publish(format!("stock.changes.{token}"), derived(msg_id, count))
                            .await
                            .map(IntoFuture::into_future),
                    );
                }
                let stored = futures::future::join_all(acks.into_iter().map(|ack| async move {
                    match ack {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    }
                }))
                .await;
                // Acks of the batch go out together; an input whose derived message was not
                // stored is left to be redelivered.
                futures::future::join_all(
                    batch
                        .iter()
                        .zip(stored)
                        .filter(|(_, stored)| *stored)
                        .map(|(message, _)| message.ack()),
                )
                .await;
            }
        })
        .await;
    Ok(())
}
