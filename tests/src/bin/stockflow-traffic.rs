//! `stockflow-traffic`: a short, deterministic mix of traffic for running workers, chosen so that
//! every metric of docs/operations.md that the stock and order workers export gets samples.
//!
//! Used by helm/tests/check_prometheus.py, where a real Prometheus scrapes the worker binaries.
//! Unlike `stockflow-demo` it runs no worker of its own, so every event is handled (and
//! counted) by the processes under test. Publishes, against `STOCKFLOW_NATS_URL`:
//!
//! - stock facts for fresh SKUs: a low-stock policy, a receipt, sales down to low stock and to
//!   zero, a restock (low / out of / back in stock alerts), a re-send of an event (duplicate),
//!   a count taken against a stale level (stale), undecodable bytes (dead letter), and a burst of
//!   receipts (throughput, latency, lag);
//! - orders: one confirmed then cancelled (released), one too large (rejected), two whose holds
//!   expire two seconds apart, and one whose shipment arrives before its placement (NAKed as
//!   `not_yet`, then applied).
//!
//! Each step waits for the worker to finish the previous one where the order matters. Waits
//! until both workers have caught up and both holds have expired.
//! Exits non-zero when a step does not finish within 30 seconds.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use prost::Message as _;
use stockflow_cli::{events, read_after, wait_until_caught_up};
use stockflow_proto::{
    subjects,
    v1::{
        order_event::Command, order_result, stock_event::Change, Counted, EventMeta, FulfilledLine,
        OrderCancelled, OrderEvent, OrderFulfilled, OrderLine, OrderPlaced, OrderResult, PolicySet,
        Reason, Received, ReleaseReason, Sold,
    },
};
use stockflow_shared::settings::Env;

/// Receipts published at once, to make throughput, latency and lag visible.
const BURST: usize = 400;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = Env::process();
    let url = env.string("STOCKFLOW_NATS_URL", "nats://127.0.0.1:4222");
    let deadline = Duration::from_secs(30);
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to STOCKFLOW_NATS_URL {url}"))?;
    let js = jetstream::new(client);
    let run = format!("traffic{}", events::now_ms());
    let results_mark = stockflow_cli::last_sequence(&js, subjects::ORDER_RESULTS).await?;

    stock_facts(&js, &run, deadline).await?;
    wait_until_caught_up(&js, subjects::STOCK_EVENTS, "stock-worker", deadline).await?;
    println!("stock facts applied");

    orders(&js, &run, deadline).await?;
    let started = Instant::now();
    loop {
        let results = read_after(
            &js,
            subjects::ORDER_RESULTS,
            "orders.results.>",
            results_mark,
        )
        .await?;
        let expired = results
            .iter()
            .filter(|m| {
                OrderResult::decode(m.payload.clone()).is_ok_and(|r| {
                    matches!(r.result, Some(order_result::Result::Released(ref x))
                        if x.reason == ReleaseReason::Expired as i32)
                })
            })
            .count();
        if expired >= 2 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "{expired} of 2 checkout holds expired within {deadline:?}"
        );
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until_caught_up(&js, subjects::ORDER_EVENTS, "order-worker", deadline).await?;
    wait_until_caught_up(&js, subjects::STOCK_EVENTS, "stock-worker", deadline).await?;
    println!("orders decided, two holds expired");
    Ok(())
}

async fn stock_facts(js: &jetstream::Context, run: &str, deadline: Duration) -> anyhow::Result<()> {
    let sku = format!("{run}-MUG");
    let at = "store-01";
    let fact = |n: &str, reason, change| {
        events::fact(format!("{run}-{n}"), "traffic", reason, &sku, at, change)
    };
    let restock = fact(
        "restock",
        Reason::Received,
        Change::Received(Received { quantity: 20 }),
    );
    let sequence = [
        fact(
            "policy",
            Reason::Policy,
            Change::PolicySet(PolicySet {
                low_stock_threshold: Some(5),
                safety_stock: None,
                location_priority: vec![],
                ..PolicySet::default()
            }),
        ),
        fact(
            "receipt",
            Reason::Received,
            Change::Received(Received { quantity: 10 }),
        ),
        fact("sale-1", Reason::Sold, Change::Sold(Sold { quantity: 6 })), // low stock
        fact("sale-2", Reason::Sold, Change::Sold(Sold { quantity: 4 })), // out of stock
        restock.clone(),                                                  // back in stock
        fact(
            "count",
            Reason::CycleCount,
            Change::Counted(Counted {
                on_hand: 3,
                expected_on_hand: Some(9_999),
            }),
        ), // stale
    ];
    // One at a time: a worker handles what it pulls concurrently, and the alerts depend on the
    // order of the changes.
    for (i, event) in sequence.iter().enumerate() {
        events::publish(js, event, &format!("{run}-msg-{i}")).await?;
        wait_until_caught_up(js, subjects::STOCK_EVENTS, "stock-worker", deadline).await?;
    }
    // The same event again under a new message id: JetStream stores it, the worker absorbs it.
    events::publish(js, &restock, &format!("{run}-msg-resend")).await?;
    events::publish_raw(
        js,
        &subjects::stock_event(&sku),
        b"\x08\x96\x01garbage".to_vec(),
        &format!("{run}-msg-garbage"),
    )
    .await?;
    let burst = (0..BURST).map(|i| {
        let event = events::fact(
            format!("{run}-burst-{i}"),
            "traffic",
            Reason::Received,
            &format!("{run}-BOLT-{}", i % 8),
            "wh",
            Change::Received(Received { quantity: 100 }),
        );
        async move { events::publish(js, &event, &format!("{run}-msg-burst-{i}")).await }
    });
    futures::future::try_join_all(burst).await?;
    Ok(())
}

async fn publish_order(js: &jetstream::Context, event: &OrderEvent) -> anyhow::Result<()> {
    let id = event
        .meta
        .as_ref()
        .map(|m| m.event_id.as_str())
        .unwrap_or_default();
    events::publish_raw(
        js,
        &subjects::order_event(&event.order_id),
        event.encode_to_vec(),
        &format!("{id}-msg"),
    )
    .await
}

async fn order_consumer(js: &jetstream::Context) -> anyhow::Result<jetstream::consumer::Info> {
    let stream = js.get_stream(subjects::ORDER_EVENTS).await?;
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer("order-worker")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(consumer.info().await?.clone())
}

async fn orders(js: &jetstream::Context, run: &str, deadline: Duration) -> anyhow::Result<()> {
    let sku = format!("{run}-BOLT-0");
    let order = |n: &str, order: &str, command| OrderEvent {
        meta: Some(EventMeta {
            event_id: format!("{run}-{n}"),
            source: "traffic:checkout".into(),
            ..Default::default()
        }),
        order_id: format!("{run}-{order}"),
        command: Some(command),
    };
    let placed = |quantity, hold_seconds| {
        Command::Placed(OrderPlaced {
            lines: vec![OrderLine {
                line_id: "1".into(),
                sku: sku.clone(),
                quantity,
                location: String::new(),
            }],
            hold_seconds,
            ..Default::default()
        })
    };
    let shipped = Command::Fulfilled(OrderFulfilled {
        lines: vec![FulfilledLine {
            line_id: "1".into(),
            quantity: 1,
        }],
        last_shipment: true,
    });
    let in_order = [
        order("p-kept", "kept", placed(2, 0)), // confirmed
        order("c-kept", "kept", Command::Cancelled(OrderCancelled {})), // released
        order("p-huge", "huge", placed(1_000_000, 0)), // rejected
        // Two abandoned carts whose holds fall due seconds apart, so that the expiry metrics
        // change between two scrapes (a series that only ever held its first value has no rate).
        order("p-cart-1", "cart-1", placed(1, 1)),
        order("p-cart-2", "cart-2", placed(1, 3)),
    ];
    for event in &in_order {
        publish_order(js, event).await?;
        wait_until_caught_up(js, subjects::ORDER_EVENTS, "order-worker", deadline).await?;
    }
    // A shipment that arrives before its order is decided: NAKed until the placement is in.
    publish_order(js, &order("f-early", "early", shipped)).await?;
    let started = Instant::now();
    while order_consumer(js).await?.num_redelivered == 0 {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "the early shipment was not redelivered within {deadline:?}"
        );
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish_order(js, &order("p-early", "early", placed(1, 0))).await?;
    Ok(())
}
