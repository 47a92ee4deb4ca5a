//! Connectors: how long a channel change takes to reach a Shopify shop — a stock fact published →
//! the shop holds the new quantity — for 10,000 SKUs, under a Standard shop's cost budget and with
//! the budget lifted (the connector's own ceiling). The shop is the tests' fake Shopify
//! (`stockflow_tests::platforms`), which plays the documented side: `inventorySetQuantities` with
//! compare-and-set, at most 250 quantities a call, and a leaky-bucket cost budget that answers
//! `THROTTLED` when a call does not fit.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    msg_id, subjects,
    v1::{stock_event::Change, AvailabilityRules, EventMeta, Received, StockEvent},
};
use stockflow_tests::platforms::{AppliedPush, FakeShopify};

use crate::{
    channels::{self, STORES, STORE_STOCK},
    load::{self, Input},
    procs::{self, WorkerProcess},
    report::{percentile, Runs, Table},
    scenarios::{Config, Results},
    stack::Stack,
};

const SHOP: &str = "bench-shop";
const CHANNEL: &str = "web";
const LOCATION: &str = "gid://shopify/Location/1";
const TOKEN: &str = "shpat_bench_token";
/// What the fake charges for a call: Shopify's cost of a mutation (10 points, whatever the
/// number of quantities it sets). The fake charges a read the same.
const CALL_COST: f64 = 10.0;
/// The open-loop rates of the steady phases, facts per second.
const RATES: [f64; 2] = [1_000.0, 2_500.0];

/// A shop's GraphQL Admin API cost budget.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Budget {
    label: &'static str,
    /// Bucket size, points.
    maximum: f64,
    /// Points restored per second.
    restore_rate: f64,
}

/// A Standard-plan shop: 100 points restored per second (Shopify's documented rate for the
/// plan), a bucket of 2,000 points.
const STANDARD: Budget = Budget {
    label: "Standard shop",
    maximum: 2_000.0,
    restore_rate: 100.0,
};

/// No budget to speak of: what the connector itself can do.
const LIFTED: Budget = Budget {
    label: "lifted",
    maximum: 1e12,
    restore_rate: 1e12,
};

/// What a phase sends: every SKU once as fast as it can be published, or facts at a steady rate.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Every SKU once, right after the connector started: it reads each SKU's quantity from the
    /// shop before its first push.
    Cold,
    /// Every SKU once, the connector knowing what the shop holds.
    Burst,
    /// Facts per second, open loop.
    Steady(f64),
}

impl Load {
    fn label(self, skus: usize) -> String {
        match self {
            Self::Cold => format!("{skus} SKUs once, connector just started"),
            Self::Burst => format!("{skus} SKUs once"),
            Self::Steady(rate) => format!("{rate:.0} facts/s"),
        }
    }
}

/// The phases of one run, in order, on one connector.
const PHASES: [(Load, Budget); 6] = [
    (Load::Cold, LIFTED),
    (Load::Burst, STANDARD),
    (Load::Steady(RATES[0]), STANDARD),
    (Load::Steady(RATES[1]), STANDARD),
    (Load::Burst, LIFTED),
    (Load::Steady(RATES[1]), LIFTED),
];

fn sku(i: usize) -> String {
    format!("SKU-{i}")
}

fn item(i: usize) -> String {
    format!("gid://shopify/InventoryItem/{}", i + 1)
}

/// The servers, a stock-worker, the connector and its shop, for one run.
#[derive(Debug)]
struct World {
    // Fields drop in order: the processes stop before their servers do.
    _connector: WorkerProcess,
    _worker: WorkerProcess,
    stack: Stack,
    fake: FakeShopify,
    /// When each cause's quantity was read from the channel's feed.
    feed: Arc<Mutex<HashMap<String, Instant>>>,
    /// Each SKU's channel quantity after the facts published so far.
    targets: Vec<i64>,
    /// Each SKU's inventory item.
    items: Vec<String>,
    _dir: tempfile::TempDir,
}

impl World {
    /// `skus` SKUs with stock at the three stores, a channel `web` over them, a fake Shopify shop
    /// holding each SKU's channel quantity (its budget lifted), and a connector started with a
    /// shops file whose items come from CSV.
    async fn start(skus: usize) -> anyhow::Result<Self> {
        let stack = Stack::start().await?;
        channels::stock_stores(&stack, skus).await?;
        let worker = WorkerProcess::start(
            &procs::sibling_binary("stock-worker")?,
            &[],
            &stack.nats_url(),
            &stack.redis_url(),
        )
        .await?;
        channels::define(
            &stack.js,
            &[channels::definition(
                CHANNEL,
                &STORES,
                AvailabilityRules::default(),
            )],
        )
        .await?;
        let initial = STORE_STOCK * STORES.len() as i64;
        let items: Vec<String> = (0..skus).map(item).collect();
        let holding: Vec<(&str, &str, i64)> = items
            .iter()
            .map(|i| (i.as_str(), LOCATION, initial))
            .collect();
        let fake = FakeShopify::start(
            TOKEN,
            LIFTED.maximum,
            LIFTED.restore_rate,
            CALL_COST,
            &holding,
        )
        .await;
        let dir = tempfile::tempdir()?;
        let mut csv = String::from("sku,inventory_item_id,location_id,location\n");
        for (i, item) in items.iter().enumerate() {
            writeln!(csv, "{},{item},{LOCATION},{}", sku(i), STORES[0])?;
        }
        std::fs::write(dir.path().join("items.csv"), csv)?;
        let shops = serde_json::json!({"shops": [{
            "id": SHOP, "platform": "shopify", "channel": CHANNEL, "base_url": fake.url,
            "webhook_secret_env": "BENCH_SHOP_WEBHOOK_SECRET",
            "access_token_env": "BENCH_SHOP_TOKEN", "items_csv": "items.csv"}]});
        let file = dir.path().join("shops.json");
        std::fs::write(&file, shops.to_string())?;
        let file = file.to_string_lossy().into_owned();
        let addr = format!("127.0.0.1:{}", procs::free_port()?);
        let connector = WorkerProcess::start_with(
            &procs::sibling_binary("connector")?,
            &[],
            &stack.nats_url(),
            &stack.redis_url(),
            &[
                ("STOCKFLOW_CONNECTOR_SHOPS_FILE", file.as_str()),
                ("STOCKFLOW_CONNECTOR_ADDR", addr.as_str()),
                ("BENCH_SHOP_WEBHOOK_SECRET", "bench-webhook-secret"),
                ("BENCH_SHOP_TOKEN", TOKEN),
            ],
        )
        .await?;
        let feed = channels::feed_reader(&stack.js, CHANNEL).await?;
        Ok(Self {
            _connector: connector,
            _worker: worker,
            stack,
            fake,
            feed,
            targets: vec![initial; skus],
            items,
            _dir: dir,
        })
    }
}

/// One fact of a phase: its SKU, the channel quantity it leads to, its event id, and when it
/// was (due to be) published.
struct Sent {
    sku: usize,
    target: i64,
    event_id: String,
    at: Instant,
}

/// What one phase measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Fact → channel quantity read from the feed: p50, p99 ms.
    feed: [f64; 2],
    /// Fact → the shop holds the quantity (or a newer one): p50, p99, max ms.
    push: [f64; 3],
    calls: f64,
    /// Calls per second from the phase's first fact to its last push.
    calls_per_second: f64,
    items_per_call: f64,
    throttles: f64,
    reads: f64,
    /// Facts whose quantity the shop never held within the deadline.
    missing: f64,
}

/// A receipt of one unit of SKU `i % skus` at a store: each raises the channel's quantity of
/// that SKU by one, so a SKU's quantities only grow and "the shop holds it" is "holds at least".
fn receipt(i: usize, skus: usize, tag: &str) -> (usize, String, Input) {
    let index = i % skus;
    let sku = sku(index);
    let event_id = format!("{tag}-{i}");
    let event = StockEvent {
        meta: Some(EventMeta {
            event_id: event_id.clone(),
            source: "bench:pos".into(),
            ..Default::default()
        }),
        sku: sku.clone(),
        location: STORES[(i / skus) % STORES.len()].into(),
        change: Some(Change::Received(Received { quantity: 1 })),
        ..Default::default()
    };
    let input = Input {
        subject: subjects::stock_event(&sku),
        msg_id: msg_id::stock_fact(&sku, &event_id),
        payload: event.encode_to_vec().into(),
    };
    (index, event_id, input)
}

/// Publishes `n` receipts (at `rate` per second, or as fast as they go), waits until the shop
/// holds every SKU's last quantity, and measures each fact's lag to the feed and to the shop.
async fn phase(
    world: &mut World,
    tag: &str,
    n: usize,
    rate: Option<f64>,
) -> anyhow::Result<Measured> {
    let skus = world.items.len();
    let (pushes_before, throttles_before, reads_before) = {
        let state = world.fake.state();
        (
            state.pushes.len(),
            state.throttled + state.too_many,
            state.reads,
        )
    };
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let started = Instant::now();
    let mut sent = Vec::with_capacity(n);
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let (index, event_id, input) = receipt(i, skus, tag);
        let at = match interval {
            Some(interval) => {
                let due = started + interval.mul_f64(i as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => Instant::now(),
        };
        let ack = load::send(&world.stack.js, &input).await?;
        acks.push(tokio::spawn(async move { ack.await.is_ok() }));
        world.targets[index] += 1;
        sent.push(Sent {
            sku: index,
            target: world.targets[index],
            event_id,
            at,
        });
        // The context waits for acks nobody polls past its own limit: poll them as they come.
        while futures::FutureExt::now_or_never(acks.next())
            .flatten()
            .is_some()
        {}
    }
    while acks.next().await.is_some() {}
    let location = LOCATION.to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let held = {
            let state = world.fake.state();
            world
                .items
                .iter()
                .zip(&world.targets)
                .all(|(item, target)| {
                    state
                        .quantities
                        .get(&(item.clone(), location.clone()))
                        .is_some_and(|q| q >= target)
                })
        };
        if held || Instant::now() > deadline {
            break;
        }
        // Poll interval of a wait bounded above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (pushes, throttles, reads): (Vec<AppliedPush>, u64, u64) = {
        let state = world.fake.state();
        (
            state.pushes[pushes_before..].to_vec(),
            state.throttled + state.too_many - throttles_before,
            state.reads - reads_before,
        )
    };
    let index: HashMap<&str, usize> = world
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.as_str(), i))
        .collect();
    // When the shop took each quantity of each SKU, in order.
    let mut arrivals: Vec<Vec<(Instant, i64)>> = vec![Vec::new(); skus];
    let mut items = 0usize;
    for push in &pushes {
        items += push.items.len();
        for (item, quantity) in &push.items {
            if let Some(&i) = index.get(item.as_str()) {
                arrivals[i].push((push.at, *quantity));
            }
        }
    }
    let feed = world
        .feed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // A steady phase's first 5% is its ramp; a burst counts whole.
    let skip = if rate.is_some() { n / 20 } else { 0 };
    let ms = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
    let (mut feed_lags, mut push_lags, mut missing) = (Vec::new(), Vec::new(), 0usize);
    for fact in sent.iter().skip(skip) {
        if let Some(seen) = feed.get(&fact.event_id) {
            feed_lags.push(ms(fact.at, *seen));
        }
        match arrivals[fact.sku].iter().find(|(_, q)| *q >= fact.target) {
            Some((at, _)) => push_lags.push(ms(fact.at, *at)),
            None => missing += 1,
        }
    }
    feed_lags.sort_by(f64::total_cmp);
    push_lags.sort_by(f64::total_cmp);
    Ok(Measured {
        feed: [percentile(&feed_lags, 50.0), percentile(&feed_lags, 99.0)],
        push: [
            percentile(&push_lags, 50.0),
            percentile(&push_lags, 99.0),
            push_lags.last().copied().unwrap_or(f64::NAN),
        ],
        calls: pushes.len() as f64,
        calls_per_second: pushes.len() as f64
            / pushes
                .last()
                .map_or(f64::NAN, |p| p.at.duration_since(started).as_secs_f64()),
        items_per_call: items as f64 / (pushes.len().max(1)) as f64,
        throttles: throttles as f64,
        reads: reads as f64,
        missing: missing as f64,
    })
}

/// One run: every phase of [`PHASES`] in order on one connector.
async fn run(cfg: &Config, run: usize) -> anyhow::Result<Vec<Measured>> {
    let skus = cfg.connector_skus;
    let mut world = World::start(skus).await?;
    let mut out = Vec::with_capacity(PHASES.len());
    for (i, (load, budget)) in PHASES.iter().enumerate() {
        let tag = format!("cn{run}-{i}");
        let measured = match load {
            Load::Cold | Load::Burst => {
                // An idle shop: its bucket is full.
                world
                    .fake
                    .set_budget(budget.maximum, budget.restore_rate, budget.maximum);
                phase(&mut world, &tag, skus, None).await?
            }
            Load::Steady(rate) => {
                // A sustained load: the bucket is what the load leaves of it, so the phase starts
                // with it empty (what the previous phase left is not this one's).
                world
                    .fake
                    .set_budget(budget.maximum, budget.restore_rate, 0.0);
                let n = (rate * cfg.connector_seconds) as usize;
                phase(&mut world, &tag, n, Some(*rate)).await?
            }
        };
        eprintln!(
            "  {} ({}) run {}: push p50 {:.1} ms p99 {:.1} ms, {} calls of {:.0}, {} throttles, {} never pushed",
            load.label(skus),
            budget.label,
            run + 1,
            measured.push[0],
            measured.push[1],
            measured.calls,
            measured.items_per_call,
            measured.throttles,
            measured.missing
        );
        out.push(measured);
    }
    Ok(out)
}

/// Stock fact published → the shop holds the new quantity, for every SKU once and at steady
/// rates, under a Standard shop's budget and with the budget lifted.
pub(crate) async fn push_lag(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let skus = cfg.connector_skus;
    let mut table = Table::new(
        "Connectors: stock fact published → the Shopify shop holds the new quantity",
        &[
            "load",
            "budget",
            "feed p50 ms",
            "feed p99 ms",
            "push p50 ms",
            "push p99 ms",
            "push max ms",
            "push / feed p50",
            "calls",
            "calls/s",
            "quantities / call",
            "throttles",
            "reads",
            "never pushed",
        ],
    );
    table.note = format!(
        "{skus} SKUs with stock at three stores, a channel `{CHANNEL}` over the three, one \
         stock-worker and one `connector` (release build, shops file with its {skus} items from \
         CSV, `STOCKFLOW_CONNECTOR_BATCH_MILLIS` 50) pushing to a fake Shopify shop \
         (`stockflow_tests::platforms::FakeShopify`: `inventorySetQuantities` with compare-and-set, \
         at most 250 quantities a call, a leaky-bucket cost budget answering `THROTTLED`). Each \
         fact is a receipt of one unit at a store. Lag from the fact's (scheduled) publish to its \
         channel quantity read from the feed (an ordered consumer of `AVAILABILITY`), and to the \
         moment the shop holds that quantity or a newer one (a SKU changed again before its push \
         is pushed once, newest). Budgets: **Standard shop** — 100 points restored per second \
         (Shopify's documented restore rate for the Standard plan), a bucket of 2,000 points, \
         {CALL_COST} points a call (a mutation's cost; the fake charges a read the same); a burst \
         starts with a full bucket (an idle shop), a steady phase with an empty one (what a \
         sustained load leaves of it); **lifted** — no budget, the connector's own ceiling. \
         Phases in this order on one connector: the first, right after the connector started, \
         reads each SKU's quantity before its first push (`reads`), the later ones compare \
         against what the connector set. Steady phases: {:.0} s each, first 5% not counted.",
        cfg.connector_seconds
    );
    let mut runs: Vec<[Runs; 12]> = vec![Default::default(); PHASES.len()];
    for run_index in 0..cfg.runs {
        for (runs, m) in runs.iter_mut().zip(run(cfg, run_index).await?) {
            let values = [
                m.feed[0],
                m.feed[1],
                m.push[0],
                m.push[1],
                m.push[2],
                m.push[0] / m.feed[0],
                m.calls,
                m.calls_per_second,
                m.items_per_call,
                m.throttles,
                m.reads,
                m.missing,
            ];
            for (runs, value) in runs.iter_mut().zip(values) {
                runs.push(value);
            }
        }
    }
    for ((load, budget), runs) in PHASES.iter().zip(&runs) {
        table.row(vec![
            load.label(skus),
            budget.label.into(),
            runs[0].show(1),
            runs[1].show(1),
            runs[2].show(1),
            runs[3].show(1),
            runs[4].show(0),
            runs[5].show(1),
            runs[6].show(0),
            runs[7].show(1),
            runs[8].show(0),
            runs[9].show(0),
            runs[10].show(0),
            runs[11].show(0),
        ]);
    }
    results.tables.push(table);
    Ok(())
}
