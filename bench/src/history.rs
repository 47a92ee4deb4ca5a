//! A SKU's history over a long ledger: a ledger of `Config::backlog` entries (1,000,000 in the
//! full run) written straight to `STOCK_CHANGES`, [`QUERIED`] of them for the queried SKU spread
//! evenly in sequence and time, the rest for 10,000 other SKUs; then the queries of
//! `GET /v1/skus/{sku}/ledger` and `/levels` ([`stockflow_ops::history`]) are timed.

use std::time::{Duration, Instant};

use futures::{stream::FuturesUnordered, StreamExt as _};
use prost::Message as _;
use stockflow_ops::history::{self, Query};
use stockflow_proto::{
    subjects,
    v1::{Levels, StockChanged},
};

use crate::{
    report::{Runs, Table},
    scenarios::{Config, Results},
    stack::Stack,
};

/// The SKU whose history is read.
const SKU: &str = "HISTORY-1";
/// Its entries in the ledger.
const QUERIED: usize = 1_000;
/// The other SKUs the rest of the ledger is spread over.
const OTHERS: usize = 10_000;
/// Locations the entries rotate over.
const LOCATIONS: [&str; 3] = ["wh", "store-1", "store-2"];
/// The time the ledger spans, applied_at_ms going up evenly along it.
const SPAN: Duration = Duration::from_secs(365 * 24 * 3600);
/// Timings per query and run; the run's figure is their median.
const REPEATS: usize = 21;
/// What a person waiting for a page should wait at most.
pub(crate) const PAGE_TARGET_MS: f64 = 100.0;

/// Entry `i` of `n`: the queried SKU's every `n / QUERIED`-th entry, another SKU's otherwise.
fn entry(i: usize, n: usize, start_ms: i64, on_hand: &mut [i64; 3]) -> (String, StockChanged) {
    let step = (n / QUERIED).max(1);
    let applied_at_ms =
        start_ms + i64::try_from(i as u128 * SPAN.as_millis() / n as u128).unwrap_or(i64::MAX);
    let (sku, k) = if i % step == step - 1 {
        (SKU.to_owned(), i / step)
    } else {
        (format!("OTHER-{}", i % OTHERS), i)
    };
    let at = k % LOCATIONS.len();
    let (kind, delta) = if k % 4 == 3 {
        ("sold", -1)
    } else {
        ("received", 3)
    };
    let before = on_hand[at];
    if sku == SKU {
        on_hand[at] += delta;
    }
    let levels = |on_hand| Levels {
        on_hand,
        available: on_hand,
        ..Default::default()
    };
    let change = StockChanged {
        sku: sku.clone(),
        location: LOCATIONS[at].to_owned(),
        cause_event_id: format!("bench-{i}"),
        source: "bench".into(),
        kind: kind.into(),
        before: Some(levels(before)),
        after: Some(levels(before + delta)),
        occurred_at_ms: applied_at_ms,
        applied_at_ms,
        ..Default::default()
    };
    (subjects::stock_changed(&sku), change)
}

/// Writes the ledger with asynchronous publishes, 1,000 acks in flight at most (below the
/// context's own limit, which would otherwise wait for acks nobody polls); returns the
/// queried SKU's (sequence, applied_at_ms) in order.
async fn write_ledger(stack: &Stack, n: usize, start_ms: i64) -> anyhow::Result<Vec<(u64, i64)>> {
    let mut acks = FuturesUnordered::new();
    let mut on_hand = [0; 3];
    let mut queried = Vec::with_capacity(QUERIED);
    for i in 0..n {
        let (subject, change) = entry(i, n, start_ms, &mut on_hand);
        let mine = change.sku == SKU;
        let ack = stack
            .js
            .publish(subject, change.encode_to_vec().into())
            .await?;
        acks.push(async move { (mine, change.applied_at_ms, ack.await) });
        while acks.len() >= 1_000 {
            if let Some((mine, at, ack)) = acks.next().await {
                let ack = ack?;
                if mine {
                    queried.push((ack.sequence, at));
                }
            }
        }
    }
    while let Some((mine, at, ack)) = acks.next().await {
        let ack = ack?;
        if mine {
            queried.push((ack.sequence, at));
        }
    }
    queried.sort_unstable();
    Ok(queried)
}

/// The median of [`REPEATS`] timings of `query`, in ms.
async fn time<F, Fut, T>(mut query: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, stockflow_ops::Error>>,
{
    let mut runs = Runs::default();
    for _ in 0..REPEATS {
        let started = Instant::now();
        query().await?;
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(runs.median())
}

/// Times the history queries over a ledger of `config.backlog` entries.
pub(crate) async fn queries(config: &Config, results: &mut Results) -> anyhow::Result<()> {
    let n = config.backlog.max(QUERIED);
    let names = [
        "page 1 (newest 50)",
        "page 1 at a location and kind (newest 50)",
        "a page deep in time (50 before a cursor 10% in)",
        "a page deep in time (to = 10% in, newest 50)",
        "levels at a past time (every location, 50% in)",
        "levels at a past time (one location, 50% in)",
        "the whole history of the SKU (before: what the ledger route read)",
    ];
    let mut figures: Vec<Runs> = vec![Runs::default(); names.len()];
    let mut write_s = Runs::default();
    for _ in 0..config.runs {
        let stack = Stack::start().await?;
        let start_ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let started = Instant::now();
        let queried = write_ledger(&stack, n, start_ms).await?;
        write_s.push(started.elapsed().as_secs_f64());
        eprintln!(
            "  ledger written in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        anyhow::ensure!(queried.len() == QUERIED.min(n), "the queried SKU's entries");
        let js = &stack.js;
        let (deep_seq, deep_ms) = queried[queried.len() / 10];
        let (_, half_ms) = queried[queried.len() / 2];
        let queries: Vec<Query> = vec![
            Query::default(),
            Query {
                location: Some("store-1".into()),
                kind: Some("sold".into()),
                ..Query::default()
            },
            Query {
                before: Some(deep_seq),
                ..Query::default()
            },
            Query {
                to_ms: Some(deep_ms),
                ..Query::default()
            },
        ];
        for (q, figure) in queries.iter().zip(figures.iter_mut()) {
            let page = history::page(js, SKU, q).await?;
            anyhow::ensure!(page.items.len() == 50, "a full page: {q:?}");
            figure.push(time(|| history::page(js, SKU, q)).await?);
        }
        let every = history::levels_at(js, SKU, half_ms, None).await?;
        anyhow::ensure!(every.len() == LOCATIONS.len(), "every location by then");
        figures[4].push(time(|| history::levels_at(js, SKU, half_ms, None)).await?);
        figures[5].push(time(|| history::levels_at(js, SKU, half_ms, Some("wh"))).await?);
        let whole = Query {
            limit: history::MAX_LIMIT,
            ..Query::default()
        };
        figures[6].push(time(|| history::page(js, SKU, &whole)).await?);
    }
    let mut table = Table::new(
        &format!(
            "History: queries over a ledger of {n} entries ({QUERIED} of them the queried SKU's)"
        ),
        &["query", "ms (median of 21)", "target", "met"],
    );
    table.note = format!(
        "Written straight to STOCK_CHANGES with asynchronous publishes in {} s; the queried \
         SKU's entries are spread evenly over the stream and over a year of applied_at_ms. Each \
         figure is the median of {REPEATS} back-to-back queries (stockflow_ops::history, what \
         the gateway and stockctl call), then the median over the runs. The last row reads \
         all {QUERIED} of the SKU's entries, as one page of 1,000.",
        write_s.show(0)
    );
    for (name, figure) in names.iter().zip(&figures) {
        let target = if name.starts_with("the whole") {
            "–".to_owned()
        } else {
            format!("< {PAGE_TARGET_MS:.0} ms")
        };
        let met = if name.starts_with("the whole") {
            "–"
        } else if figure.median() < PAGE_TARGET_MS {
            "yes"
        } else {
            "no"
        };
        table.row(vec![
            (*name).to_owned(),
            figure.show(1),
            target,
            met.to_owned(),
        ]);
    }
    results.tables.push(table);
    Ok(())
}
