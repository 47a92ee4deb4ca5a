//! The measurements: each starts fresh servers, loads them, runs the real worker binaries as
//! child processes, and reports the median and range over the runs.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use redis::AsyncCommands as _;
use stockflow_proto::{
    subjects,
    v1::{order_result::Result as Decision, OrderResult},
};
use stockflow_shared::keys::Keys;

use crate::{
    load, pg,
    procs::{self, CpuMeter, WorkerProcess},
    raw,
    report::{Runs, Table},
    stack::Stack,
};

/// Sizes of one benchmark run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) runs: usize,
    /// Backlog of stock facts per throughput run.
    pub(crate) facts: usize,
    /// SKUs the facts and orders are spread over.
    pub(crate) skus: usize,
    /// Duration of each open-loop latency run.
    pub(crate) latency_seconds: f64,
    /// Events of the backlog scenario (one run, ten slices).
    pub(crate) backlog: usize,
    /// Backlog of orders per order throughput run.
    pub(crate) orders: usize,
    /// Orders for the one hot SKU, and its stock.
    pub(crate) flash_orders: usize,
    pub(crate) flash_stock: i64,
    /// Stock facts per PostgreSQL run (each pool size); its flash sale takes the flash orders.
    pub(crate) pg_events: usize,
    pub(crate) pg_pools: Vec<usize>,
    /// SKUs a rule change is measured over.
    pub(crate) rule_change_skus: usize,
    /// SKUs a connector's shop maps, and the length of each steady connector phase in seconds.
    pub(crate) connector_skus: usize,
    pub(crate) connector_seconds: f64,
    /// Scenario names to run; all when empty.
    pub(crate) only: Vec<String>,
}

impl Config {
    pub(crate) fn full() -> Self {
        Self {
            runs: 3,
            facts: 40_000,
            skus: 1_000,
            latency_seconds: 6.0,
            backlog: 1_000_000,
            orders: 10_000,
            flash_orders: 5_000,
            flash_stock: 1_250,
            pg_events: 5_000,
            pg_pools: vec![1, 2, 4, 8, 16],
            rule_change_skus: 100_000,
            connector_skus: 10_000,
            connector_seconds: 40.0,
            only: Vec::new(),
        }
    }

    pub(crate) fn quick() -> Self {
        Self {
            runs: 1,
            facts: 4_000,
            skus: 100,
            latency_seconds: 2.0,
            backlog: 100_000,
            orders: 2_000,
            flash_orders: 1_000,
            flash_stock: 250,
            pg_events: 1_000,
            pg_pools: vec![1, 4, 16],
            rule_change_skus: 10_000,
            connector_skus: 1_000,
            connector_seconds: 3.0,
            only: Vec::new(),
        }
    }

    pub(crate) fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// Scenario names for `--only`.
pub(crate) const SCENARIOS: &[&str] = &[
    "stock",
    "raw",
    "latency",
    "backlog",
    "scale",
    "orders",
    "flash",
    "postgres",
    "channels",
    "history",
    "connectors",
];

/// Which consumer of the stock stream is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    Stockflow,
    /// The per-message raw path.
    Raw,
    /// The batched raw path in the given shape.
    Batched(raw::Shape),
}

impl Path {
    fn label(self) -> String {
        match self {
            Self::Stockflow => "stockflow (stock-worker)".into(),
            Self::Raw => "per-message raw path".into(),
            Self::Batched(shape) => format!("batched raw path ({})", shape.label()),
        }
    }

    fn durable(self) -> &'static str {
        match self {
            Self::Stockflow => "stock-worker",
            Self::Raw | Self::Batched(_) => raw::RAW_PATH.durable,
        }
    }
}

/// Where the numbers of all scenarios are gathered for tables and ratios.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) tables: Vec<Table>,
    pub(crate) stock_max: Option<f64>,
    /// The per-message raw path's drain rate.
    pub(crate) raw_max: Option<f64>,
    /// The batched raw path's drain rate ([`raw::Shape::DEFAULT`]).
    pub(crate) batched_max: Option<f64>,
    pub(crate) pg_facts_best: Option<f64>,
    pub(crate) pg_flash_best: Option<f64>,
    pub(crate) flash: Option<f64>,
    pub(crate) flash_oversold: Option<bool>,
    /// Three-line orders per second through one order-worker (backlog).
    pub(crate) orders_3_lines: Option<f64>,
    pub(crate) p50_at_10k: Option<f64>,
    pub(crate) p99_at_10k: Option<f64>,
    /// The stock-worker's latency curve: offered events/s and p99 ms (medians), by offered rate.
    pub(crate) stock_curve: Vec<(f64, f64)>,
    /// p99 ms from a fact to its channel quantity read from the feed, at 10,000 facts/s.
    pub(crate) channel_p99_at_10k: Option<f64>,
    /// The backlog drain: fastest slice / slowest slice.
    pub(crate) backlog_flatness: Option<f64>,
    /// The backlog drain: the stock-worker's VmHWM, MiB.
    pub(crate) backlog_peak_mib: Option<f64>,
    pub(crate) peak_rss_mib: Option<f64>,
    pub(crate) memory: Vec<(String, Runs, Runs)>,
}

impl Results {
    /// Records a process's idle and peak RSS; `stockflow` ones count towards the RSS target.
    fn memory(&mut self, worker: &str, stockflow: bool, idle: Option<f64>, peak: f64) {
        let entry = match self.memory.iter_mut().find(|(w, _, _)| w == worker) {
            Some(entry) => entry,
            None => {
                self.memory
                    .push((worker.to_owned(), Runs::default(), Runs::default()));
                let last = self.memory.len() - 1;
                &mut self.memory[last]
            }
        };
        if let Some(idle) = idle {
            entry.1.push(idle);
        }
        entry.2.push(peak);
        if stockflow {
            self.peak_rss_mib = Some(self.peak_rss_mib.unwrap_or(0.0).max(peak));
        }
    }
}

/// Column headers of the CPU figures every stock table reports, in [`cpu_per_event`]'s order.
const CPU_HEADERS: [&str; 4] = [
    "worker CPU µs/event",
    "nats-server CPU µs/event",
    "redis-server CPU µs/event",
    "load generator CPU µs/event",
];

/// One backlog drain: rate, CPU per event of each process, peak RSS of the workers.
#[derive(Debug)]
struct DrainRun {
    per_second: f64,
    /// µs of CPU per event: workers (summed), nats-server, redis-server, the bench itself.
    cpu_us: [f64; 4],
    /// µs redis-server spent inside script calls per event (`INFO commandstats`): the cost of
    /// the Lua work itself, steadier than process CPU time.
    script_us: f64,
    /// Script calls per event (below 1 when calls are batched).
    script_calls: f64,
    peak_mib: Vec<f64>,
}

/// Total µs redis-server spent in `EVALSHA`/`EVAL` so far, and the number of those calls.
async fn script_stats(stack: &Stack) -> anyhow::Result<(f64, f64)> {
    let mut conn = stack.conn.clone();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    let field = |line: &str, name: &str| {
        line.split([',', ':'])
            .find_map(|field| field.strip_prefix(name))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .fold((0.0, 0.0), |(usec, calls), l| {
            (usec + field(l, "usec="), calls + field(l, "calls="))
        }))
}

const DRAIN_DEADLINE: Duration = Duration::from_secs(600);

async fn start_path(path: Path, stack: &Stack) -> anyhow::Result<WorkerProcess> {
    let (nats, redis) = (stack.nats_url(), stack.redis_url());
    match path {
        Path::Stockflow => {
            WorkerProcess::start(&procs::sibling_binary("stock-worker")?, &[], &nats, &redis).await
        }
        Path::Raw => {
            let args = [crate::RAW_WORKER_COMMAND];
            WorkerProcess::start(&std::env::current_exe()?, &args, &nats, &redis).await
        }
        Path::Batched(shape) => {
            let args = [crate::RAW_WORKER_COMMAND, crate::BATCHED_FLAG];
            let env = shape.env();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            WorkerProcess::start_with(&std::env::current_exe()?, &args, &nats, &redis, &env).await
        }
    }
}

/// A stack ready for `path`: the raw paths' consumer declared (the workers declare their own).
async fn stack_for(path: Path) -> anyhow::Result<Stack> {
    let stack = Stack::start().await?;
    if path != Path::Stockflow {
        raw::declare(&stack.js).await?;
    }
    Ok(stack)
}

/// Starts measuring CPU time: the servers and the bench process (the load generator) from now.
fn cpu_meter(stack: &Stack) -> CpuMeter {
    let mut pids = stack.server_pids.to_vec();
    pids.push(std::process::id());
    CpuMeter::start(&pids)
}

/// µs of CPU per event since `meter` started: workers (every process the meter holds past the
/// servers and the bench, summed), nats-server, redis-server, the load generator.
fn cpu_per_event(meter: &CpuMeter, events: f64) -> [f64; 4] {
    let used = meter.used();
    let per = |seconds: f64| seconds * 1e6 / events;
    let at = |i: usize| used.get(i).copied().unwrap_or(f64::NAN);
    [
        per(used.iter().skip(3).sum()),
        per(at(0)),
        per(at(1)),
        per(at(2)),
    ]
}

/// Publishes a backlog of stock facts, starts `workers` processes of `path`, measures the drain.
async fn drain_stock(
    cfg: &Config,
    path: Path,
    workers: usize,
    run: usize,
) -> anyhow::Result<DrainRun> {
    let stack = stack_for(path).await?;
    let inputs = load::stock_facts(cfg.facts, cfg.skus, &format!("d{run}"));
    load::preload(&stack.js, &inputs).await?;
    let mut meter = cpu_meter(&stack);
    let mut running = Vec::with_capacity(workers);
    for _ in 0..workers {
        let worker = start_path(path, &stack).await?;
        meter.include_whole_life(worker.pid());
        running.push(worker);
    }
    let drain = load::measure_drain(
        &stack.js,
        subjects::STOCK_EVENTS,
        path.durable(),
        1,
        inputs.len() as u64,
        DRAIN_DEADLINE,
    )
    .await?;
    let events = inputs.len() as f64;
    let (script_usec, script_calls) = script_stats(&stack).await?;
    Ok(DrainRun {
        per_second: drain.per_second,
        cpu_us: cpu_per_event(&meter, events),
        script_us: script_usec / events,
        script_calls: script_calls / events,
        peak_mib: running.iter().map(|w| w.memory().peak_mib).collect(),
    })
}

fn fmt_cpu(runs: &[Runs; 4]) -> Vec<String> {
    runs.iter().map(|r| r.show(1)).collect()
}

/// Headers of a table of one-process drains ([`drain_rows`]).
fn drain_headers() -> Vec<&'static str> {
    let mut headers = vec!["path", "events/s"];
    headers.extend(CPU_HEADERS);
    headers.extend([
        "of which in scripts µs/event",
        "script calls/event",
        "worker peak RSS MiB",
    ]);
    headers
}

/// One process of each path, path after path, drains the same backlog `cfg.runs` times; one row
/// per path. Returns each path's median rate.
async fn drain_rows(
    cfg: &Config,
    paths: &[Path],
    table: &mut Table,
    results: &mut Results,
) -> anyhow::Result<Vec<f64>> {
    let mut medians = Vec::with_capacity(paths.len());
    for &path in paths {
        let (mut rate, mut cpu, mut peak, mut script, mut calls) = (
            Runs::default(),
            <[Runs; 4]>::default(),
            Runs::default(),
            Runs::default(),
            Runs::default(),
        );
        for run in 0..cfg.runs {
            let r = drain_stock(cfg, path, 1, run).await?;
            eprintln!(
                "  {} run {}: {:.0} events/s",
                path.label(),
                run + 1,
                r.per_second
            );
            rate.push(r.per_second);
            script.push(r.script_us);
            calls.push(r.script_calls);
            for (runs, value) in cpu.iter_mut().zip(r.cpu_us) {
                runs.push(value);
            }
            let p = r.peak_mib.iter().copied().fold(0.0, f64::max);
            peak.push(p);
            results.memory(&path.label(), path == Path::Stockflow, None, p);
        }
        medians.push(rate.median());
        let mut row = vec![path.label(), rate.show(0)];
        row.extend(fmt_cpu(&cpu));
        row.push(script.show(1));
        row.push(calls.show(3));
        row.push(peak.show(1));
        table.row(row);
    }
    Ok(medians)
}

/// Max sustained throughput of one worker: stockflow, the per-message raw path and the batched
/// raw path on the same backlog.
pub(crate) async fn stock_throughput(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let mut table = Table::new(
        "Stock facts: throughput of one worker process (backlog drain)",
        &drain_headers(),
    );
    table.note = format!(
        "{} receipts over {} SKUs stored first, then one worker started; rate from 10% of the \
         backlog acked to all acked. CPU per event is process CPU time over the drain / events \
         (the worker's whole life; the load generator only polls the ack floor here). The \
         batched raw path runs {} batches of up to {} events in flight, one script call per batch.",
        cfg.facts,
        cfg.skus,
        raw::Shape::DEFAULT.batches,
        raw::Shape::DEFAULT.size
    );
    let paths = [
        Path::Stockflow,
        Path::Raw,
        Path::Batched(raw::Shape::DEFAULT),
    ];
    let rates = drain_rows(cfg, &paths, &mut table, results).await?;
    results.stock_max = rates.first().copied();
    results.raw_max = rates.get(1).copied();
    results.batched_max = rates.get(2).copied();
    results.tables.push(table);
    Ok(())
}

/// The plumbing's ceiling by batch shape: the per-message raw path and the batched raw path
/// with 256 events in flight cut as 1×256, 4×64 and 8×32.
pub(crate) async fn raw_sweep(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let mut table = Table::new(
        "Raw paths: the plumbing's ceiling by batch shape (backlog drain)",
        &drain_headers(),
    );
    table.note = format!(
        "Same backlog as the stock throughput ({} receipts over {} SKUs). Every shape keeps 256 \
         events in flight: batches × batch size. A batch is what the pull subscription has ready \
         when a slot frees (so `script calls/event` shows the mean batch size as its inverse); \
         its derived messages are published together and their PubAcks awaited together, then \
         its inputs acked together.",
        cfg.facts, cfg.skus
    );
    let mut paths = vec![Path::Raw];
    paths.extend(raw::Shape::SWEEP.map(Path::Batched));
    let rates = drain_rows(cfg, &paths, &mut table, results).await?;
    // Without the stock scenario, the ratios take the plumbing's rates from here.
    if results.raw_max.is_none() {
        results.raw_max = rates.first().copied();
    }
    if results.batched_max.is_none() {
        results.batched_max = paths
            .iter()
            .position(|p| *p == Path::Batched(raw::Shape::DEFAULT))
            .and_then(|i| rates.get(i).copied());
    }
    results.tables.push(table);
    Ok(())
}

/// 1, 2 and 4 stock-worker processes on one durable consumer.
pub(crate) async fn scale(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let mut headers = vec!["processes", "events/s"];
    headers.extend(CPU_HEADERS);
    headers[2] = "workers' CPU µs/event (sum)";
    let mut table = Table::new("Stock facts: worker processes sharing one stream", &headers);
    table.note = "Same backlog as above. On 2 cores shared with nats-server, redis-server and \
                  the load generator, more processes add contention, not capacity."
        .into();
    for workers in [1, 2, 4] {
        let (mut rate, mut cpu) = (Runs::default(), <[Runs; 4]>::default());
        for run in 0..cfg.runs {
            let r = drain_stock(cfg, Path::Stockflow, workers, run).await?;
            eprintln!(
                "  {workers} workers run {}: {:.0} events/s",
                run + 1,
                r.per_second
            );
            rate.push(r.per_second);
            for (runs, value) in cpu.iter_mut().zip(r.cpu_us) {
                runs.push(value);
            }
        }
        let mut row = vec![workers.to_string(), rate.show(0)];
        row.extend(fmt_cpu(&cpu));
        table.row(row);
    }
    results.tables.push(table);
    Ok(())
}

/// Fixed offered loads of the latency curve, events/s, besides 25% and 50% of the maximum.
const FIXED_LOADS: [f64; 3] = [10_000.0, 15_000.0, 20_000.0];

/// Open-loop latency of the stock-worker and the batched raw path at 25% and 50% of their
/// measured maximum and at 10,000, 15,000 and 20,000 events/s (the knee of the curve), and of
/// the per-message raw path at 10,000 events/s.
pub(crate) async fn latency(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let mut headers = vec![
        "path",
        "offered events/s",
        "achieved events/s",
        "p50 ms",
        "p99 ms",
        "max ms",
    ];
    headers.extend(CPU_HEADERS);
    let mut table = Table::new(
        "Stock facts: end-to-end latency, open loop (scheduled publish → ledger entry stored → input acked)",
        &headers,
    );
    table.note = format!(
        "Events published on a fixed schedule for {} s per run; latency from each event's \
         scheduled publish time to its ack as seen on `$JS.ACK`; first 5% not counted. CPU per \
         event over the run, the load generator's (publishing, observing acks) included.",
        cfg.latency_seconds
    );
    let mut loads = Vec::new();
    for (path, max) in [
        (Path::Stockflow, results.stock_max.unwrap_or(10_000.0)),
        (
            Path::Batched(raw::Shape::DEFAULT),
            results.batched_max.unwrap_or(20_000.0),
        ),
    ] {
        let mut rates: Vec<f64> = [(max * 0.25).round(), (max * 0.5).round()]
            .into_iter()
            .chain(FIXED_LOADS)
            .collect();
        rates.sort_by(f64::total_cmp);
        rates.dedup();
        loads.extend(rates.into_iter().map(|rate| (path, rate)));
    }
    loads.push((Path::Raw, 10_000.0));
    for (path, rate) in loads {
        let (mut achieved, mut p50, mut p99, mut worst, mut cpu) = (
            Runs::default(),
            Runs::default(),
            Runs::default(),
            Runs::default(),
            <[Runs; 4]>::default(),
        );
        for run in 0..cfg.runs {
            let stack = stack_for(path).await?;
            let worker = start_path(path, &stack).await?;
            let idle = worker.memory().rss_mib;
            let n = (rate * cfg.latency_seconds) as usize;
            let inputs = load::stock_facts(n, cfg.skus, &format!("l{run}"));
            let mut meter = cpu_meter(&stack);
            meter.include_from_now(worker.pid());
            let l = load::open_loop(
                &stack.client,
                &stack.js,
                subjects::STOCK_EVENTS,
                &inputs,
                rate,
            )
            .await?;
            for (runs, value) in cpu.iter_mut().zip(cpu_per_event(&meter, n as f64)) {
                runs.push(value);
            }
            eprintln!(
                "  {} at {rate:.0}/s run {}: p50 {:.2} ms p99 {:.2} ms ({} unacked)",
                path.label(),
                run + 1,
                l.p50_ms,
                l.p99_ms,
                l.unacked
            );
            results.memory(
                &path.label(),
                path == Path::Stockflow,
                Some(idle),
                worker.memory().peak_mib,
            );
            achieved.push(l.achieved);
            p50.push(l.p50_ms);
            p99.push(l.p99_ms);
            worst.push(l.max_ms);
        }
        if path == Path::Stockflow {
            results.stock_curve.push((rate, p99.median()));
            if rate == 10_000.0 {
                results.p50_at_10k = Some(p50.median());
                results.p99_at_10k = Some(p99.median());
            }
        }
        let mut row = vec![
            path.label(),
            format!("{rate:.0}"),
            achieved.show(0),
            p50.show(2),
            p99.show(2),
            worst.show(1),
        ];
        row.extend(fmt_cpu(&cpu));
        table.row(row);
    }
    results.tables.push(table);
    Ok(())
}

/// SKUs the backlog is spread over.
const BACKLOG_SKUS: usize = 10_000;

/// A backlog of `cfg.backlog` receipts over 10,000 SKUs drained by one stock-worker: the rate of
/// each tenth of it (flat when the cost per event does not grow with the work done), the
/// worker's CPU per event and resident memory as each tenth ends, and its peak RSS. One run.
pub(crate) async fn backlog(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let total = cfg.backlog as u64;
    let slice = (total / 10).max(1);
    let stack = stack_for(Path::Stockflow).await?;
    let stored = std::time::Instant::now();
    load::preload(
        &stack.js,
        (0..cfg.backlog).map(|i| load::stock_fact(i, BACKLOG_SKUS, "b")),
    )
    .await?;
    let publish_rate = total as f64 / stored.elapsed().as_secs_f64().max(1e-3);
    eprintln!("  {total} receipts stored at {publish_rate:.0}/s");
    let mut meter = cpu_meter(&stack);
    let worker = start_path(Path::Stockflow, &stack).await?;
    meter.include_whole_life(worker.pid());
    let pid = worker.pid();
    let from = load::ack_floor(&stack.js, subjects::STOCK_EVENTS, "stock-worker").await?;
    let slices = load::drain_slices(
        &stack.js,
        subjects::STOCK_EVENTS,
        "stock-worker",
        (from, total, slice),
        Duration::from_secs(3_600),
        || (procs::cpu_seconds(pid), procs::Memory::of(pid).rss_mib),
    )
    .await?;
    let cpu = cpu_per_event(&meter, total as f64);
    let peak = worker.memory().peak_mib;
    drop(worker);
    drop(stack);
    results.memory(&Path::Stockflow.label(), true, None, peak);
    let mut table = Table::new(
        &format!("Stock facts: a backlog of {total} events drained by one stock-worker"),
        &[
            "slice (acked up to)",
            "events/s",
            "worker CPU µs/event in the slice",
            "worker RSS MiB at its end",
        ],
    );
    let mut previous = (from, 0.0);
    let mut worker_cpu = Vec::with_capacity(slices.len());
    for s in &slices {
        let (cpu_seconds, rss) = s.sample;
        let events = s.acked.saturating_sub(previous.0).max(1) as f64;
        let cpu_us = (cpu_seconds - previous.1) * 1e6 / events;
        table.row(vec![
            s.acked.to_string(),
            format!("{:.0}", s.per_second),
            format!("{cpu_us:.1}"),
            format!("{rss:.1}"),
        ]);
        worker_cpu.push(cpu_us);
        previous = (s.acked, cpu_seconds);
    }
    let spread = |values: &[f64]| {
        let (hi, lo) = values
            .iter()
            .fold((f64::NEG_INFINITY, f64::INFINITY), |(hi, lo), v| {
                (hi.max(*v), lo.min(*v))
            });
        hi / lo
    };
    let rates: Vec<f64> = slices.iter().map(|s| s.per_second).collect();
    let flatness = spread(&rates);
    // The first slice carries the start-up: the cost per event is compared over the others.
    let cpu_flatness = spread(worker_cpu.get(1..).unwrap_or_default());
    results.backlog_flatness = Some(flatness);
    results.backlog_peak_mib = Some(peak);
    let verdict = if flatness <= FLAT_LIMIT {
        "flat"
    } else {
        "not flat"
    };
    table.note = format!(
        "{total} receipts over {BACKLOG_SKUS} SKUs stored first (async publishes, at most 4,096 \
         PubAcks in flight: {publish_rate:.0}/s), then one stock-worker started; one run. A slice \
         ends at the first poll (every 10 ms) of the consumer's ack floor at or past each \
         {slice} events; the first slice includes the worker's start-up, its CPU too."
    );
    table.note.push_str(&format!(
        "\n\n**Rate {verdict}**: fastest slice / slowest slice = {flatness:.2}× (flat: ≤ \
         {FLAT_LIMIT}×); the worker's CPU µs/event, highest slice / lowest slice after the \
         first = {cpu_flatness:.2}× (steadier than the rate on shared cores). **Peak RSS \
         (VmHWM) {peak:.1} MiB** (target ≤ 64 MiB). Over the whole drain, CPU µs/event: worker \
         {:.1}, nats-server {:.1}, redis-server {:.1}, load generator {:.1}.",
        cpu[0], cpu[1], cpu[2], cpu[3]
    ));
    results.tables.push(table);
    Ok(())
}

/// Largest fastest/slowest slice ratio of a backlog drain still called flat: the spread of one
/// measurement on shared cores, not a trend.
pub(crate) const FLAT_LIMIT: f64 = 1.25;

const DEEP_STOCK: i64 = 1_000_000_000;

async fn stock_up(
    stack: &Stack,
    skus: impl IntoIterator<Item = String>,
    on_hand: i64,
) -> anyhow::Result<()> {
    let keys = Keys::new("sf");
    let mut conn = stack.conn.clone();
    for sku in skus {
        let () = conn.hset(keys.stock(&sku), "oh:wh", on_hand).await?;
    }
    Ok(())
}

fn sku_names(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("SKU-{i}"))
}

/// Three-line orders per second one order-worker should decide (#17).
pub(crate) const ORDERS_3_LINES_TARGET: f64 = 10_000.0;

/// Orders of one and of three lines: backlog throughput and open-loop decision latency.
pub(crate) async fn orders(cfg: &Config, results: &mut Results) -> anyhow::Result<()> {
    let mut table = Table::new(
        "Orders: order-worker throughput and decision latency",
        &[
            "order",
            "orders/s (backlog)",
            "offered orders/s",
            "p50 ms",
            "p99 ms",
            "worker peak RSS MiB",
            "target (backlog)",
        ],
    );
    table.note = format!(
        "{} orders over {} SKUs with ample stock; latency open loop at half the measured \
         rate, from scheduled publish to the input's ack (decision and reservations stored).",
        cfg.orders, cfg.skus
    );
    let worker_binary = procs::sibling_binary("order-worker")?;
    for lines in [1usize, 3] {
        let skus = cfg.skus;
        let sku = move |i: usize, k: usize| format!("SKU-{}", (i * 3 + k * 7) % skus);
        let (mut rate, mut peak) = (Runs::default(), Runs::default());
        for run in 0..cfg.runs {
            let stack = Stack::start().await?;
            stock_up(&stack, sku_names(cfg.skus), DEEP_STOCK).await?;
            let inputs = load::orders(cfg.orders, lines, &format!("o{run}"), sku);
            load::preload(&stack.js, &inputs).await?;
            let worker =
                WorkerProcess::start(&worker_binary, &[], &stack.nats_url(), &stack.redis_url())
                    .await?;
            let drain = load::measure_drain(
                &stack.js,
                subjects::ORDER_EVENTS,
                "order-worker",
                1,
                inputs.len() as u64,
                DRAIN_DEADLINE,
            )
            .await?;
            eprintln!(
                "  {lines}-line orders run {}: {:.0} orders/s",
                run + 1,
                drain.per_second
            );
            rate.push(drain.per_second);
            let p = worker.memory().peak_mib;
            peak.push(p);
            results.memory("order-worker", true, None, p);
        }
        let offered = (rate.median() * 0.5).round().max(1.0);
        let (mut p50, mut p99) = (Runs::default(), Runs::default());
        for run in 0..cfg.runs {
            let stack = Stack::start().await?;
            stock_up(&stack, sku_names(cfg.skus), DEEP_STOCK).await?;
            let worker =
                WorkerProcess::start(&worker_binary, &[], &stack.nats_url(), &stack.redis_url())
                    .await?;
            let idle = worker.memory().rss_mib;
            let n = (offered * cfg.latency_seconds) as usize;
            let inputs = load::orders(n, lines, &format!("ol{run}"), sku);
            let l = load::open_loop(
                &stack.client,
                &stack.js,
                subjects::ORDER_EVENTS,
                &inputs,
                offered,
            )
            .await?;
            eprintln!(
                "  {lines}-line orders at {offered:.0}/s run {}: p50 {:.2} ms p99 {:.2} ms",
                run + 1,
                l.p50_ms,
                l.p99_ms
            );
            results.memory("order-worker", true, Some(idle), worker.memory().peak_mib);
            p50.push(l.p50_ms);
            p99.push(l.p99_ms);
        }
        let target = if lines == 3 {
            results.orders_3_lines = Some(rate.median());
            format!(
                "≥ 10,000 orders/s: {}",
                if rate.median() >= ORDERS_3_LINES_TARGET {
                    "met"
                } else {
                    "**not met**"
                }
            )
        } else {
            "–".into()
        };
        table.row(vec![
            format!("{lines} line{}", if lines == 1 { "" } else { "s" }),
            rate.show(0),
            format!("{offered:.0}"),
            p50.show(2),
            p99.show(2),
            peak.show(1),
            target,
        ]);
    }
    results.tables.push(table);
    Ok(())
}

/// Counts confirmed decisions in `ORDER_RESULTS`.
async fn confirmed(stack: &Stack) -> anyhow::Result<u64> {
    let messages =
        stockflow_tests::read_stream(&stack.js, subjects::ORDER_RESULTS, "orders.results.>").await;
    let mut confirmed = 0;
    for message in messages {
        let result = OrderResult::decode(message.payload.clone())?;
        if matches!(result.result, Some(Decision::Confirmed(_))) {
            confirmed += 1;
        }
    }
    Ok(confirmed)
}

/// One SKU, many concurrent orders of one unit: throughput and proof of zero oversell, for the
/// order-worker and for the PostgreSQL baseline (best pool size).
pub(crate) async fn flash_sale(
    cfg: &Config,
    results: &mut Results,
    pg: Option<&pg::Postgres>,
) -> anyhow::Result<()> {
    let mut table = Table::new(
        "Flash sale: one hot SKU, many concurrent single-unit orders",
        &[
            "system",
            "orders/s",
            "confirmed",
            "stock",
            "on_hand / reserved after",
            "oversold",
        ],
    );
    table.note = format!(
        "{} orders for one SKU with {} in stock: every order is decided (confirmed or rejected); \
         zero oversell means confirmed ≤ stock, reserved ≤ on_hand and reserved = confirmed. The \
         ratios table compares the rate with PostgreSQL's best and with the batched raw path's \
         rate in the same run.",
        cfg.flash_orders, cfg.flash_stock
    );
    if results.batched_max.is_none() {
        // The ratios compare the flash sale with the plumbing's ceiling of this run.
        let mut ceiling = Table::new(
            "Batched raw path: the flash sale's ceiling (the stock scenario did not run)",
            &drain_headers(),
        );
        let rates = drain_rows(
            cfg,
            &[Path::Batched(raw::Shape::DEFAULT)],
            &mut ceiling,
            results,
        )
        .await?;
        results.batched_max = rates.first().copied();
        results.tables.push(ceiling);
    }
    let worker_binary = procs::sibling_binary("order-worker")?;
    let (mut rate, mut ok) = (Runs::default(), true);
    let mut last = (0u64, 0i64, 0i64);
    for run in 0..cfg.runs {
        let stack = Stack::start().await?;
        stock_up(&stack, ["HOT".to_owned()], cfg.flash_stock).await?;
        let inputs = load::orders(cfg.flash_orders, 1, &format!("f{run}"), |_, _| "HOT".into());
        load::preload(&stack.js, &inputs).await?;
        let worker =
            WorkerProcess::start(&worker_binary, &[], &stack.nats_url(), &stack.redis_url())
                .await?;
        let drain = load::measure_drain(
            &stack.js,
            subjects::ORDER_EVENTS,
            "order-worker",
            1,
            inputs.len() as u64,
            DRAIN_DEADLINE,
        )
        .await?;
        let confirmed = confirmed(&stack).await?;
        let mut conn = stack.conn.clone();
        let (on_hand, reserved): (Option<i64>, Option<i64>) = conn
            .hmget(Keys::new("sf").stock("HOT"), &["oh:wh", "rs:wh"])
            .await?;
        let (on_hand, reserved) = (on_hand.unwrap_or(0), reserved.unwrap_or(0));
        let sound = i64::try_from(confirmed).unwrap_or(i64::MAX) <= cfg.flash_stock
            && reserved <= on_hand
            && u64::try_from(reserved).unwrap_or(0) == confirmed;
        ok &= sound;
        eprintln!(
            "  flash sale run {}: {:.0} orders/s, {confirmed} confirmed, on_hand {on_hand} reserved {reserved}",
            run + 1,
            drain.per_second
        );
        results.memory("order-worker", true, None, worker.memory().peak_mib);
        rate.push(drain.per_second);
        last = (confirmed, on_hand, reserved);
    }
    results.flash = Some(rate.median());
    results.flash_oversold = Some(!ok);
    table.row(vec![
        "stockflow (order-worker)".into(),
        rate.show(0),
        last.0.to_string(),
        cfg.flash_stock.to_string(),
        format!("{} / {}", last.1, last.2),
        if ok { "no".into() } else { "**YES**".into() },
    ]);
    if let Some(pg) = pg {
        let (best, pool, applied, levels, sweep) = pg_best(cfg, pg, pg::Kind::Reserve).await?;
        let sound = i64::try_from(applied).unwrap_or(i64::MAX) <= cfg.flash_stock
            && levels.1 <= levels.0
            && u64::try_from(levels.1).unwrap_or(0) == applied;
        results.pg_flash_best = Some(best.median());
        table.row(vec![
            format!("PostgreSQL, best pool size ({pool})"),
            best.show(0),
            applied.to_string(),
            cfg.flash_stock.to_string(),
            format!("{} / {}", levels.0, levels.1),
            if sound { "no".into() } else { "**YES**".into() },
        ]);
        let mut sweep_table = Table::new(
            "PostgreSQL baseline: connection pool sweep (flash-sale reservations)",
            &["pool size", "orders/s"],
        );
        sweep_table.note = format!(
            "{} single-unit reservations of the hot SKU ({} in stock), one transaction each (as \
             for the facts, the update only when on_hand − reserved covers the order).",
            cfg.flash_orders, cfg.flash_stock
        );
        for (pool, runs) in &sweep {
            sweep_table.row(vec![pool.to_string(), runs.show(0)]);
        }
        results.tables.push(table);
        results.tables.push(sweep_table);
        return Ok(());
    }
    results.tables.push(table);
    Ok(())
}

type PgBest = (Runs, usize, u64, (i64, i64), Vec<(usize, Runs)>);

/// Per run, the best throughput over the pool sizes; the pool size most often best.
async fn pg_best(cfg: &Config, pg: &pg::Postgres, kind: pg::Kind) -> anyhow::Result<PgBest> {
    let mut best = Runs::default();
    let mut wins = vec![0usize; cfg.pg_pools.len()];
    let mut applied = 0;
    let mut levels = (0, 0);
    let sweep = pg_sweep(cfg, pg, kind).await?;
    for run in 0..cfg.runs {
        let (i, rate) = sweep
            .iter()
            .enumerate()
            .map(|(i, (_, runs))| (i, runs.0[run]))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, f64::NAN));
        wins[i] += 1;
        best.push(rate);
    }
    if kind == pg::Kind::Reserve {
        // One more run at the winning size, for the oversell check.
        let pool = cfg.pg_pools[argmax(&wins)];
        let (events, skus) = pg_events(cfg, kind, 99);
        pg::prepare(pg, &skus, cfg.flash_stock).await?;
        applied = pg::run(pg, kind, events, pool).await?.applied;
        levels = pg::levels(pg, "HOT").await?;
    }
    Ok((best, cfg.pg_pools[argmax(&wins)], applied, levels, sweep))
}

fn argmax(counts: &[usize]) -> usize {
    counts
        .iter()
        .enumerate()
        .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i)
}

fn pg_events(cfg: &Config, kind: pg::Kind, run: usize) -> (Arc<Vec<pg::Event>>, Vec<String>) {
    match kind {
        pg::Kind::Fact => (
            Arc::new(
                (0..cfg.pg_events)
                    .map(|i| pg::Event {
                        id: format!("d{run}-{i}"),
                        sku: format!("SKU-{}", i % cfg.skus),
                        quantity: 1,
                    })
                    .collect(),
            ),
            sku_names(cfg.skus).collect(),
        ),
        pg::Kind::Reserve => (
            Arc::new(
                (0..cfg.flash_orders)
                    .map(|i| pg::Event {
                        id: format!("place-f{run}-{i}"),
                        sku: "HOT".into(),
                        quantity: 1,
                    })
                    .collect(),
            ),
            vec!["HOT".into()],
        ),
    }
}

/// Throughput per pool size, `cfg.runs` runs each.
async fn pg_sweep(
    cfg: &Config,
    pg: &pg::Postgres,
    kind: pg::Kind,
) -> anyhow::Result<Vec<(usize, Runs)>> {
    let mut out: Vec<(usize, Runs)> = cfg.pg_pools.iter().map(|p| (*p, Runs::default())).collect();
    for run in 0..cfg.runs {
        for (pool, runs) in &mut out {
            let (events, skus) = pg_events(cfg, kind, run);
            let stock = match kind {
                pg::Kind::Fact => 0,
                pg::Kind::Reserve => cfg.flash_stock,
            };
            pg::prepare(pg, &skus, stock).await?;
            let outcome = pg::run(pg, kind, events, *pool).await?;
            eprintln!(
                "  PostgreSQL {kind:?} pool {pool} run {}: {:.0}/s",
                run + 1,
                outcome.per_second
            );
            runs.push(outcome.per_second);
        }
    }
    Ok(out)
}

/// The PostgreSQL baseline on the stock facts (same events as the stock throughput), with the
/// pool-size sweep as its own table.
pub(crate) async fn postgres_facts(
    cfg: &Config,
    results: &mut Results,
    pg: &pg::Postgres,
) -> anyhow::Result<()> {
    let facts = pg_sweep(cfg, pg, pg::Kind::Fact).await?;
    let mut table = Table::new(
        "PostgreSQL baseline: connection pool sweep (stock facts)",
        &["pool size", "facts/s"],
    );
    table.note = format!(
        "{} receipts over {} SKUs, one transaction each: INSERT dedup ON CONFLICT DO NOTHING, \
         SELECT … FOR UPDATE, UPDATE, INSERT ledger row, COMMIT (prepared statements, \
         synchronous_commit=off).",
        cfg.pg_events, cfg.skus
    );
    let mut best = Runs::default();
    for run in 0..cfg.runs {
        best.push(
            facts
                .iter()
                .map(|(_, r)| r.0[run])
                .fold(f64::NEG_INFINITY, f64::max),
        );
    }
    for (pool, runs) in &facts {
        table.row(vec![pool.to_string(), runs.show(0)]);
    }
    results.pg_facts_best = Some(best.median());
    results.tables.push(table);
    Ok(())
}
