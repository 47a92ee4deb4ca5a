//! Reading streams and waiting for the workers' consumers: what the operations (and the
//! tests and the demo, through `stockflow_cli`) use to tell when an input has been applied.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;

/// Messages of `stream` matching `filter` stored after sequence `after`.
pub async fn read_after(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    after: u64,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let stream = js.get_stream(stream).await?;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    while (out.len() as u64) < pending {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(message))) => out.push(message),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) | Err(_) => anyhow::bail!("reading {filter} stopped early"),
        }
    }
    Ok(out)
}

/// Last sequence of `stream` (0 when empty).
pub async fn last_sequence(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(stream).await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// A wait's budget as an operator wrote it: whole seconds (`5s` for `--timeout 5`, not the
/// `4.999999749s` left of it once the wait starts), milliseconds below a second.
fn shown(budget: Duration) -> String {
    if budget >= Duration::from_secs(1) {
        format!("{}s", (budget.as_millis() + 500) / 1000)
    } else {
        format!("{}ms", budget.as_millis())
    }
}

/// Waits until `durable` on `stream` has acknowledged every message up to `sequence` (its ack
/// floor reached it), however much else is in flight.
pub async fn wait_until_acked(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    sequence: u64,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let stream_handle = js.get_stream(stream).await?;
    let mut consumer: jetstream::consumer::PullConsumer = stream_handle
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("no consumer {durable} on {stream}: {e}"))?;
    loop {
        let info = consumer.info().await?;
        if info.ack_floor.stream_sequence >= sequence {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "{durable} has not processed {stream} up to sequence {sequence} within {} \
             (it is at {}): is it running?",
            shown(deadline),
            info.ack_floor.stream_sequence
        );
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the stock worker has acknowledged everything stored so far in the stock input:
/// `STOCK_EVENTS`, or every partition stream of a partitioned `topology`.
pub async fn wait_until_stock_caught_up(
    js: &jetstream::Context,
    topology: &stockflow_shared::topology::TopologySettings,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    for spec in stockflow_shared::topology::stock_workers(topology) {
        let left = deadline.saturating_sub(started.elapsed());
        wait_until_caught_up(js, spec.stream, spec.durable, left).await?;
    }
    Ok(())
}

/// Waits until `durable` on `stream` has acknowledged everything stored so far: its ack floor
/// reached the stream's last sequence, or nothing is left for it (no message pending delivery,
/// none delivered and unacknowledged) — a consumer that has nothing to do returns at once, also
/// when no worker is running or the last messages are not for it.
pub async fn wait_until_caught_up(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let target = last_sequence(js, stream).await?;
    loop {
        let stream_handle = js.get_stream(stream).await?;
        let mut consumer: jetstream::consumer::PullConsumer = stream_handle
            .get_consumer(durable)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let info = consumer.info().await?;
        let idle = info.num_pending == 0 && info.num_ack_pending == 0;
        if idle || (info.ack_floor.stream_sequence >= target && info.num_ack_pending == 0) {
            return Ok(());
        }
        // What the consumer looked like at the deadline tells a stuck worker (messages
        // delivered, unacked, redelivered) from a slow one (messages still pending).
        anyhow::ensure!(
            started.elapsed() < deadline,
            "{durable} did not catch up with {stream} within {}: acked up to {} of \
             {target}, {} pending, {} delivered and unacked, {} redelivered",
            shown(deadline),
            info.ack_floor.stream_sequence,
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered,
        );
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker's consumer that is consuming now, as [`consuming`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consuming {
    /// The stream it reads.
    pub stream: String,
    /// Its durable name.
    pub durable: String,
    /// Pull requests waiting for messages (a running worker keeps one open).
    pub waiting: usize,
    /// Messages delivered and not yet acknowledged.
    pub unacked: usize,
}

impl std::fmt::Display for Consuming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} ({} pull request(s) waiting, {} message(s) delivered and unacknowledged)",
            self.durable, self.stream, self.waiting, self.unacked
        )
    }
}

/// The consumers among `specs` that a worker is consuming from now. The rule: a consumer is
/// being consumed while it has a pull request waiting (`num_waiting > 0`: a running worker
/// always keeps one open, and the server drops it when the worker's connection closes) or
/// messages delivered and not acknowledged (`num_ack_pending > 0`: a worker is handling them,
/// or one died and they wait for their ack deadline).
pub async fn consuming(
    js: &jetstream::Context,
    specs: &[stockflow_shared::topology::ConsumerSpec],
) -> anyhow::Result<Vec<Consuming>> {
    let mut out = Vec::new();
    for spec in specs {
        let stream = js
            .get_stream(spec.stream)
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", spec.stream))?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(spec.durable)
            .await
            .map_err(|e| anyhow::anyhow!("no consumer {} on {}: {e}", spec.durable, spec.stream))?;
        let info = consumer.info().await?;
        if info.num_waiting > 0 || info.num_ack_pending > 0 {
            out.push(Consuming {
                stream: spec.stream.to_owned(),
                durable: spec.durable.to_owned(),
                waiting: info.num_waiting,
                unacked: info.num_ack_pending,
            });
        }
    }
    Ok(out)
}
