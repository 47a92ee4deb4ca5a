//! The raw path: the plumbing's ceiling with none of stockflow's logic. Consume a stock event, run
//! one Lua call (dedup by `Nats-Msg-Id` + a counter), publish one derived message with a
//! deterministic `Nats-Msg-Id` and wait for its PubAck, then ack the input. No protobuf, no
//! validation, no metrics. Run as its own process (`stockflow-bench raw-worker`), like a worker.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage};
use futures::StreamExt as _;
use stockflow_proto::subjects;
use stockflow_shared::topology::{self, ConsumerSpec, TopologySettings};

/// The raw path's durable consumer on the stock stream.
pub(crate) const RAW_PATH: ConsumerSpec = ConsumerSpec {
    stream: subjects::STOCK_EVENTS,
    durable: "raw-path",
};

/// Same concurrency as the stock worker's default `STOCKFLOW_MAX_IN_FLIGHT`.
const IN_FLIGHT: usize = 256;

const SCRIPT: &str = r"
-- KEYS[1] dedup key, KEYS[2] counter hash; ARGV[1] counter field, ARGV[2] dedup TTL seconds.
-- Returns the new count, or false for a duplicate.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
return false
";

/// Declares the raw path's consumer (same settings as the stock worker's).
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

/// Runs the raw path until killed. Once its consumer is bound, every connection to `ready_addr`
/// gets `200 OK` (the bench waits for it as it waits for a worker's `/readyz`).
pub(crate) async fn run(
    nats_url: &str,
    redis_url: &str,
    ready_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client);
    let redis = redis::Client::open(redis_url)?;
    let conn = redis::aio::ConnectionManager::new(redis).await?;
    let script = redis::Script::new(SCRIPT);
    let consumer: PullConsumer = js
        .get_stream(RAW_PATH.stream)
        .await?
        .get_consumer(RAW_PATH.durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(IN_FLIGHT)
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
    messages
        .for_each_concurrent(IN_FLIGHT, |message| {
            let js = js.clone();
            let mut conn = conn.clone();
            let script = &script;
            async move {
                let Ok(message) = message else { return };
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
                let count: redis::RedisResult<Option<i64>> = script
                    .key(format!("raw:{{{token}}}:evt:{msg_id}"))
                    .key(format!("raw:{{{token}}}:count"))
                    .arg("wh")
                    .arg(86_400)
                    .invoke_async(&mut conn)
                    .await;
                let Ok(count) = count else { return }; // not acked: redelivered
                let publish = PublishMessage::build()
                    .payload(count.unwrap_or(0).to_string().into())
                    .message_id(format!("raw:{msg_id}"));
                let stored = match js
                    .send_publish(format!("stock.changes.{token}"), publish)
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
