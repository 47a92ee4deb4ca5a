//! Load generation and observation: the events, a backlog published before the workers start,
//! the drain rate read from the consumer's ack floor, and open-loop latency from the acks seen
//! on the wire.

use std::{
    borrow::Borrow,
    collections::HashMap,
    future::IntoFuture as _,
    time::{Duration, Instant},
};

use async_nats::{jetstream, HeaderMap};
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{
        order_event::Command, stock_event::Change, EventMeta, OrderEvent, OrderLine, OrderPlaced,
        Received, StockEvent,
    },
};

use crate::report::percentile;

/// One input: its subject, `Nats-Msg-Id` and encoded payload.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) subject: String,
    pub(crate) msg_id: String,
    pub(crate) payload: Bytes,
}

fn meta(event_id: String) -> Option<EventMeta> {
    Some(EventMeta {
        event_id,
        occurred_at_ms: 1_700_000_000_000,
        source: "bench:pos".into(),
        reason: 0,
        reference: String::new(),
    })
}

/// `n` receipts of one unit, spread round-robin over `skus` SKUs at one location.
pub(crate) fn stock_facts(n: usize, skus: usize, tag: &str) -> Vec<Input> {
    (0..n).map(|i| stock_fact(i, skus, tag)).collect()
}

/// Receipt `i` of [`stock_facts`], built on its own (a large backlog is generated as it is
/// published rather than held in memory).
pub(crate) fn stock_fact(i: usize, skus: usize, tag: &str) -> Input {
    let sku = format!("SKU-{}", i % skus);
    let event_id = format!("{tag}-{i}");
    let event = StockEvent {
        meta: meta(event_id.clone()),
        sku: sku.clone(),
        location: "wh".into(),
        change: Some(Change::Received(Received { quantity: 1 })),
        ..Default::default()
    };
    Input {
        subject: subjects::stock_event(&sku),
        msg_id: event_id,
        payload: event.encode_to_vec().into(),
    }
}

/// `n` orders of one unit per line; line `k` of order `i` takes `sku(i, k)` at `wh`.
pub(crate) fn orders(
    n: usize,
    lines: usize,
    tag: &str,
    sku: impl Fn(usize, usize) -> String,
) -> Vec<Input> {
    (0..n)
        .map(|i| {
            let order_id = format!("{tag}-{i}");
            let event = OrderEvent {
                meta: meta(format!("place-{order_id}")),
                order_id: order_id.clone(),
                command: Some(Command::Placed(OrderPlaced {
                    lines: (0..lines)
                        .map(|k| OrderLine {
                            line_id: k.to_string(),
                            sku: sku(i, k),
                            quantity: 1,
                            location: "wh".into(),
                        })
                        .collect(),
                    hold_seconds: 0,
                    ..Default::default()
                })),
            };
            Input {
                subject: subjects::order_event(&order_id),
                msg_id: format!("place-{order_id}"),
                payload: event.encode_to_vec().into(),
            }
        })
        .collect()
}

pub(crate) async fn send(
    js: &jetstream::Context,
    input: &Input,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", input.msg_id.as_str());
    Ok(js
        .publish_with_headers(input.subject.clone(), headers, input.payload.clone())
        .await?)
}

/// PubAcks the preload keeps in flight: enough to keep JetStream's writes coalesced, few enough
/// that none waits out the client's PubAck timeout.
const PRELOAD_IN_FLIGHT: usize = 4_096;

/// Publishes `inputs` as fast as JetStream stores them: asynchronous publishes with at most
/// [`PRELOAD_IN_FLIGHT`] PubAcks outstanding (a sliding window, so the publisher never stalls
/// for a whole window). `inputs` may be generated on the fly.
pub(crate) async fn preload<I: Borrow<Input>>(
    js: &jetstream::Context,
    inputs: impl IntoIterator<Item = I>,
) -> anyhow::Result<()> {
    let mut pending = futures::stream::FuturesUnordered::new();
    for input in inputs {
        if pending.len() >= PRELOAD_IN_FLIGHT {
            if let Some(stored) = pending.next().await {
                stored?;
            }
        }
        pending.push(send(js, input.borrow()).await?.into_future());
    }
    while let Some(stored) = pending.next().await {
        stored?;
    }
    Ok(())
}

/// How fast a consumer drained a backlog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    pub(crate) per_second: f64,
}

/// Polls `durable`'s ack floor every 10 ms, calling `on_poll(acked, now)` each time, until it
/// reaches `last` with nothing pending; returns the instant of that last poll.
async fn watch_ack_floor(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    last: u64,
    deadline: Duration,
    mut on_poll: impl FnMut(u64, Instant),
) -> anyhow::Result<Instant> {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await?
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let started = Instant::now();
    loop {
        let info = consumer.info().await?;
        let acked = info.ack_floor.stream_sequence;
        let now = Instant::now();
        on_poll(acked, now);
        if acked >= last && info.num_ack_pending == 0 {
            return Ok(now);
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "{durable} acked up to {acked} of {last} within {deadline:?}"
        );
        // Poll interval: rates are taken over seconds, so 10 ms is fine-grained enough.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `durable`'s ack floor until it reaches `last`, and returns the rate between the first
/// poll past 10% of the backlog (start-up excluded) and the end.
pub(crate) async fn measure_drain(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    first: u64,
    last: u64,
    deadline: Duration,
) -> anyhow::Result<Drain> {
    let total = last + 1 - first;
    let warm = first + total / 10;
    let started = Instant::now();
    let mut mark: Option<(Instant, u64)> = None;
    let end = watch_ack_floor(js, stream, durable, last, deadline, |acked, now| {
        if mark.is_none() && acked >= warm {
            mark = Some((now, acked));
        }
    })
    .await?;
    let (since, from) = mark.unwrap_or((started, first));
    let window = end.saturating_duration_since(since);
    let events = last.saturating_sub(from).max(1);
    Ok(Drain {
        per_second: events as f64 / window.as_secs_f64().max(1e-3),
    })
}

/// `durable`'s ack floor (stream sequence) now.
pub(crate) async fn ack_floor(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> anyhow::Result<u64> {
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await?
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(consumer.info().await?.ack_floor.stream_sequence)
}

/// One slice of a backlog drain: from the previous mark to the first poll at or past its end.
#[derive(Debug, Clone)]
pub(crate) struct Slice<T> {
    /// Ack floor at the end of the slice.
    pub(crate) acked: u64,
    /// Events acked per second within the slice.
    pub(crate) per_second: f64,
    /// What `sample` returned when the slice ended.
    pub(crate) sample: T,
}

/// Polls `durable`'s ack floor from `from` (acked when called) to `last`, and cuts the drain
/// into slices of `slice` events: per slice, the rate (the ack floor's rise over the time
/// between the polls that crossed the slice's bounds) and `sample()` taken as it ended.
pub(crate) async fn drain_slices<T>(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    (from, last, slice): (u64, u64, u64),
    deadline: Duration,
    mut sample: impl FnMut() -> T,
) -> anyhow::Result<Vec<Slice<T>>> {
    let slice = slice.max(1);
    let mut slices = Vec::new();
    let mut previous = (from, Instant::now());
    let mut next_bound = from + slice;
    watch_ack_floor(js, stream, durable, last, deadline, |acked, now| {
        if acked >= next_bound.min(last) && acked > previous.0 {
            let seconds = now.saturating_duration_since(previous.1).as_secs_f64();
            slices.push(Slice {
                acked,
                per_second: (acked - previous.0) as f64 / seconds.max(1e-3),
                sample: sample(),
            });
            previous = (acked, now);
            while next_bound <= acked {
                next_bound += slice;
            }
        }
    })
    .await?;
    Ok(slices)
}

/// Latencies of one open-loop run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Inputs acked per second over the whole run.
    pub(crate) achieved: f64,
    /// Inputs whose ack was not seen within a minute of the last publish.
    pub(crate) unacked: usize,
}

/// Publishes `inputs` on a fixed schedule of `rate` per second (open loop: a slow system does not
/// slow the publisher) and measures, per input, the time from its scheduled publish to its ack by
/// the worker, as seen on `$JS.ACK.<stream>.>`. The first 5% are warm-up and not counted.
pub(crate) async fn open_loop(
    client: &async_nats::Client,
    js: &jetstream::Context,
    stream: &str,
    inputs: &[Input],
    rate: f64,
) -> anyhow::Result<Latency> {
    let mut acks = client.subscribe(format!("$JS.ACK.{stream}.>")).await?;
    client.flush().await?;
    let expected = inputs.len();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut observer = tokio::spawn(async move {
        // Ack instants by stream sequence, matched with the publish schedule afterwards.
        let mut acked: HashMap<u64, Instant> = HashMap::with_capacity(expected);
        while acked.len() < expected {
            let message = tokio::select! {
                _ = &mut stop_rx => break,
                message = acks.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let payload = message.payload.as_ref();
            if !(payload.is_empty() || payload == b"+ACK") {
                continue;
            }
            if let Some(sequence) = ack_stream_sequence(message.subject.as_str()) {
                acked.entry(sequence).or_insert_with(Instant::now);
            }
        }
        acked
    });
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for (i, input) in inputs.iter().enumerate() {
        let due = started + interval.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let ack = send(js, input).await?;
        let tx = stored_tx.clone();
        pending.push(tokio::spawn(async move {
            if let Ok(ack) = ack.await {
                let _ = tx.send((ack.sequence, due));
            }
        }));
        // Reap finished PubAck tasks without waiting for the others.
        while futures::FutureExt::now_or_never(pending.next())
            .flatten()
            .is_some()
        {}
    }
    while pending.next().await.is_some() {}
    drop(stored_tx);
    let mut scheduled: Vec<(u64, Instant)> = Vec::with_capacity(expected);
    while let Some(entry) = stored_rx.recv().await {
        scheduled.push(entry);
    }
    scheduled.sort_by_key(|(_, due)| *due);
    let acked = match tokio::time::timeout(Duration::from_secs(60), &mut observer).await {
        Ok(acked) => acked?,
        Err(_) => {
            let _ = stop_tx.send(());
            observer.await?
        }
    };
    let warm_up = scheduled.len() / 20;
    let mut latencies = Vec::with_capacity(scheduled.len());
    let mut unacked = 0;
    let mut last_ack = started;
    for (sequence, due) in &scheduled {
        match acked.get(sequence) {
            Some(at) => {
                last_ack = last_ack.max(*at);
                latencies.push(at.saturating_duration_since(*due).as_secs_f64() * 1e3);
            }
            None => unacked += 1,
        }
    }
    let achieved =
        latencies.len() as f64 / last_ack.duration_since(started).as_secs_f64().max(1e-3);
    let counted = latencies.split_off(warm_up.min(latencies.len()));
    let (p50_ms, p99_ms, max_ms) = summarize(counted);
    Ok(Latency {
        p50_ms,
        p99_ms,
        max_ms,
        achieved,
        unacked,
    })
}

/// The stream sequence in an ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`
/// (9 tokens), or with domain and account hash (12 tokens or more).
pub(crate) fn ack_stream_sequence(subject: &str) -> Option<u64> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let index = match tokens.len() {
        9 => 5,
        n if n >= 11 => 7,
        _ => return None,
    };
    tokens.get(index)?.parse().ok()
}

fn summarize(mut latencies_ms: Vec<f64>) -> (f64, f64, f64) {
    latencies_ms.sort_by(f64::total_cmp);
    (
        percentile(&latencies_ms, 50.0),
        percentile(&latencies_ms, 99.0),
        latencies_ms.last().copied().unwrap_or(f64::NAN),
    )
}
