//! Sales channels: how fast a stock fact reaches a channel's readers (fact published → the new
//! channel quantity read from the feed), and what a rule change over every SKU costs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    msg_id, subjects,
    v1::{
        channel_event, stock_event::Change, AvailabilityRules, Channel, ChannelAvailabilityChanged,
        ChannelEvent, ChannelKind, ChannelSet, EventMeta, Received, Sold, StockEvent,
    },
};
use stockflow_shared::{keys::Keys, topology};

use crate::{
    load::{self, Input},
    procs::{self, WorkerProcess},
    report::{percentile, Runs, Table},
    scenarios::{Config, Results},
    stack::Stack,
};

pub(crate) const STORES: [&str; 3] = ["store-1", "store-2", "store-3"];
/// Deep enough that no sale of a run empties a store.
pub(crate) const STORE_STOCK: i64 = 1_000_000;

pub(crate) fn definition(id: &str, locations: &[&str], rules: AvailabilityRules) -> ChannelEvent {
    ChannelEvent {
        meta: Some(EventMeta {
            event_id: format!("bench-{id}"),
            ..Default::default()
        }),
        channel_id: id.to_owned(),
        change: Some(channel_event::Change::Set(ChannelSet {
            channel: Some(Channel {
                id: id.to_owned(),
                name: id.to_owned(),
                kind: ChannelKind::Marketplace.into(),
                locations: locations.iter().map(|l| (*l).to_owned()).collect(),
                rules: Some(rules),
                ..Default::default()
            }),
        })),
    }
}

/// Publishes `events` and waits until the stock worker stored every channel in the bucket.
pub(crate) async fn define(js: &jetstream::Context, events: &[ChannelEvent]) -> anyhow::Result<()> {
    for event in events {
        js.publish_with_headers(
            subjects::channel_event(&event.channel_id),
            {
                let mut headers = async_nats::HeaderMap::new();
                let id = msg_id::channel_event(
                    &event.channel_id,
                    &event.meta.clone().unwrap_or_default().event_id,
                );
                headers.insert("Nats-Msg-Id", id.as_str());
                headers
            },
            event.encode_to_vec().into(),
        )
        .await?
        .await?;
    }
    let kv = js.get_key_value(topology::CHANNELS).await?;
    let started = Instant::now();
    loop {
        let mut stored = 0;
        for event in events {
            if kv.entry(&event.channel_id).await?.is_some() {
                stored += 1;
            }
        }
        if stored == events.len() {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "channels not applied within 60 s"
        );
        // Poll interval of a wait bounded above.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stock at the three stores for `skus` SKUs, written straight into Redis (the known-locations
/// set included) so a run starts at once.
pub(crate) async fn stock_stores(stack: &Stack, skus: usize) -> anyhow::Result<()> {
    let keys = Keys::new("sf");
    let mut conn = stack.conn.clone();
    let mut pipe = redis::pipe();
    for i in 0..skus {
        for store in STORES {
            pipe.hset(
                keys.stock(&format!("SKU-{i}")),
                format!("oh:{store}"),
                STORE_STOCK,
            )
            .ignore();
        }
    }
    pipe.sadd(keys.locations(), &STORES[..]).ignore();
    let () = pipe.query_async(&mut conn).await?;
    Ok(())
}

/// `n` facts over `skus` SKUs at the stores, alternating a sale and a receipt of one unit: each
/// changes the pool of a channel over every store by one.
fn store_facts(n: usize, skus: usize, tag: &str) -> Vec<Input> {
    (0..n)
        .map(|i| {
            let sku = format!("SKU-{}", i % skus);
            let event_id = format!("{tag}-{i}");
            let change = if i % 2 == 0 {
                Change::Sold(Sold { quantity: 1 })
            } else {
                Change::Received(Received { quantity: 1 })
            };
            let event = StockEvent {
                meta: Some(EventMeta {
                    event_id: event_id.clone(),
                    source: "bench:pos".into(),
                    ..Default::default()
                }),
                sku: sku.clone(),
                location: STORES[(i / skus) % STORES.len()].into(),
                change: Some(change),
                ..Default::default()
            };
            Input {
                subject: subjects::stock_event(&sku),
                msg_id: msg_id::stock_fact(&sku, &event_id),
                payload: event.encode_to_vec().into(),
            }
        })
        .collect()
}

/// When each cause's new quantity of `channel` was read from the feed, by a live JetStream
/// consumer.
pub(crate) async fn feed_reader(
    js: &jetstream::Context,
    channel: &str,
) -> anyhow::Result<Arc<Mutex<HashMap<String, Instant>>>> {
    let stream = js.get_stream(subjects::AVAILABILITY).await?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects::channel_availability(channel),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let at = Instant::now();
            if let Ok(m) = ChannelAvailabilityChanged::decode(message.payload.as_ref()) {
                into.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(m.cause_event_id)
                    .or_insert(at);
            }
        }
    });
    Ok(seen)
}

/// When each cause's new quantity of `channel` was read by a client of the gateway's
/// Server-Sent Events stream (`/v1/channels/<channel>/availability/stream`).
async fn sse_reader(
    http: &str,
    channel: &str,
) -> anyhow::Result<Arc<Mutex<HashMap<String, Instant>>>> {
    let mut response = reqwest::Client::new()
        .get(format!(
            "http://{http}/v1/channels/{channel}/availability/stream"
        ))
        .header("Accept", "text/event-stream")
        .send()
        .await?
        .error_for_status()?;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let into = seen.clone();
    tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            let at = Instant::now();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let cause = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .and_then(|data| serde_json::from_str::<serde_json::Value>(data.trim()).ok())
                    .and_then(|v| v["cause_event_id"].as_str().map(str::to_owned));
                if let Some(cause) = cause {
                    into.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(cause)
                        .or_insert(at);
                }
            }
        }
    });
    Ok(seen)
}

/// Latencies of one reader in one run: p50, p99, max ms, achieved/s, never seen.
fn latencies(
    scheduled: &[(String, Instant)],
    seen: &HashMap<String, Instant>,
    started: Instant,
) -> [f64; 5] {
    let n = scheduled.len();
    let mut latencies = Vec::with_capacity(n);
    let mut missing = 0;
    let mut last = started;
    for (cause, due) in scheduled.iter().skip(n / 20) {
        match seen.get(cause) {
            Some(at) => {
                last = last.max(*at);
                latencies.push(at.saturating_duration_since(*due).as_secs_f64() * 1e3);
            }
            None => missing += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    let achieved = seen.len() as f64 / last.duration_since(started).as_secs_f64().max(1e-3);
    [
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN),
        achieved,
        missing as f64,
    ]
}

/// One open-loop run, measured by both readers (JetStream consumer, SSE client): p50, p99 and
/// max ms from each fact's scheduled publish to its channel quantity read, the achieved rate,
/// and facts never seen.
async fn propagation_run(cfg: &Config, rate: f64, run: usize) -> anyhow::Result<[[f64; 5]; 2]> {
    let stack = Stack::start().await?;
    stock_stores(&stack, cfg.skus).await?;
    let worker = WorkerProcess::start(
        &procs::sibling_binary("stock-worker")?,
        &[],
        &stack.nats_url(),
        &stack.redis_url(),
    )
    .await?;
    let http = format!("127.0.0.1:{}", procs::free_port()?);
    let gateway = WorkerProcess::start_with(
        &procs::sibling_binary("gateway")?,
        &[],
        &stack.nats_url(),
        &stack.redis_url(),
        &[
            ("STOCKFLOW_HTTP_ADDR", http.as_str()),
            ("STOCKFLOW_GATEWAY_AUTH", "none"),
        ],
    )
    .await?;
    define(
        &stack.js,
        &[
            definition("pos-1", &["store-1"], AvailabilityRules::default()),
            definition("web", &STORES, AvailabilityRules::default()),
            definition(
                "market",
                &STORES,
                AvailabilityRules {
                    buffer: Some(5),
                    percent: Some(80),
                    ..Default::default()
                },
            ),
        ],
    )
    .await?;
    let feed = feed_reader(&stack.js, "web").await?;
    let sse = sse_reader(&http, "web").await?;
    let n = (rate * cfg.latency_seconds) as usize;
    let tag = format!("ch{run}");
    let inputs = store_facts(n, cfg.skus, &tag);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let mut scheduled = Vec::with_capacity(n);
    let mut acks = futures::stream::FuturesUnordered::new();
    for (i, input) in inputs.iter().enumerate() {
        let due = started + interval.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let ack = load::send(&stack.js, input).await?;
        acks.push(tokio::spawn(async move { ack.await.is_ok() }));
        scheduled.push((format!("{tag}-{i}"), due));
        while futures::FutureExt::now_or_never(acks.next())
            .flatten()
            .is_some()
        {}
    }
    while acks.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = |seen: &Arc<Mutex<HashMap<String, Instant>>>| {
        seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    };
    while (count(&feed) < n || count(&sse) < n) && Instant::now() < deadline {
        // Poll interval of a wait bounded above.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = |seen: &Arc<Mutex<HashMap<String, Instant>>>| {
        seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    let (feed, sse) = (snapshot(&feed), snapshot(&sse));
    drop(gateway);
    drop(worker);
    Ok([
        latencies(&scheduled, &feed, started),
        latencies(&scheduled, &sse, started),
    ])
}

/// Fact published → channel quantity read from the feed, at 1,000 and 10,000 facts/s.
pub(crate) async fn propagation(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let mut table = Table::new(
        "Channels: stock fact published → new channel quantity read from the feed",
        &[
            "reader",
            "offered facts/s",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "never seen",
        ],
    );
    table.note = format!(
        "{} SKUs with stock at three stores and three channels over them (one store; all three; \
         all three with a buffer and a percentage), one stock-worker. Each fact is a sale or a \
         receipt of one unit at a store, so it changes the all-stores channel's quantity; latency \
         from the fact's scheduled publish to that quantity read by a live JetStream consumer of \
         `AVAILABILITY` (ordered, filter `availability.web.>`) and by a client of the gateway's \
         Server-Sent Events stream of that channel; {} s per run, first 5% not counted.",
        cfg.skus, cfg.latency_seconds
    );
    const READERS: [&str; 2] = ["JetStream consumer", "SSE client (gateway)"];
    for rate in [1_000.0, 10_000.0] {
        let mut runs: [[Runs; 5]; 2] = Default::default();
        for run in 0..cfg.runs {
            let r = propagation_run(cfg, rate, run).await?;
            for (reader, (runs, values)) in READERS.iter().zip(runs.iter_mut().zip(r)) {
                eprintln!(
                    "  {reader} at {rate:.0}/s run {}: p50 {:.2} ms p99 {:.2} ms ({} never seen)",
                    run + 1,
                    values[0],
                    values[1],
                    values[4]
                );
                for (runs, value) in runs.iter_mut().zip(values) {
                    runs.push(value);
                }
            }
        }
        if rate == 10_000.0 {
            results.channel_p99_at_10k = Some(runs[0][1].median());
        }
        for (reader, runs) in READERS.iter().zip(&runs) {
            table.row(vec![
                (*reader).into(),
                format!("{rate:.0}"),
                runs[3].show(0),
                runs[0].show(2),
                runs[1].show(2),
                runs[2].show(1),
                runs[4].show(0),
            ]);
        }
    }
    results.tables.push(table);
    Ok(())
}

/// A new channel over the location of `skus` SKUs: from its definition published to every SKU's
/// quantity in the feed.
pub(crate) async fn rule_change(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let skus = cfg.rule_change_skus;
    let mut table = Table::new(
        "Channels: a rule change reaching every SKU",
        &["SKUs", "workers", "seconds", "SKUs/s"],
    );
    table.note = format!(
        "{skus} SKUs, each with one receipt applied (so the ledger lists it); then one channel \
         definition published. Time from its publish to {skus} quantities in `AVAILABILITY`: the \
         stock worker stores the definition, lists the SKUs from the ledger's subjects, publishes \
         one recompute command per SKU, and each is applied like any stock fact (one script on the \
         SKU's own keys, so it runs unchanged on Redis Cluster). The cost is linear in the SKUs \
         and spreads over stock-worker replicas and partitions like any fact."
    );
    for workers in [1usize, 2] {
        let mut seconds = Runs::default();
        for run in 0..cfg.runs {
            let stack = Stack::start().await?;
            let inputs = load::stock_facts(skus, skus, &format!("rc{run}"));
            load::preload(&stack.js, &inputs).await?;
            let mut running = Vec::new();
            for _ in 0..workers {
                running.push(
                    WorkerProcess::start(
                        &procs::sibling_binary("stock-worker")?,
                        &[],
                        &stack.nats_url(),
                        &stack.redis_url(),
                    )
                    .await?,
                );
            }
            load::measure_drain(
                &stack.js,
                subjects::STOCK_EVENTS,
                "stock-worker",
                1,
                inputs.len() as u64,
                Duration::from_secs(600),
            )
            .await?;
            let started = Instant::now();
            let event = definition("all", &["wh"], AvailabilityRules::default());
            stack
                .js
                .publish(subjects::channel_event("all"), event.encode_to_vec().into())
                .await?
                .await?;
            let mut feed = stack.js.get_stream(subjects::AVAILABILITY).await?;
            loop {
                let stored = feed.info().await?.state.messages;
                if stored >= skus as u64 {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(600),
                    "{stored} of {skus} quantities after 600 s"
                );
                // Poll interval: the time is taken over seconds.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = started.elapsed().as_secs_f64();
            eprintln!(
                "  rule change over {skus} SKUs, {workers} workers, run {}: {took:.2} s",
                run + 1
            );
            seconds.push(took);
            drop(running);
        }
        table.row(vec![
            skus.to_string(),
            workers.to_string(),
            seconds.show(2),
            format!("{:.0}", skus as f64 / seconds.median()),
        ]);
    }
    results.tables.push(table);
    Ok(())
}
