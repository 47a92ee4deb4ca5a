//! `stockctl`: operator commands.
//!
//! ```text
//! stockctl setup [--update]   declare streams and durable consumers (idempotent)
//! stockctl selftest           publish a receipt for a fresh SKU and wait until it is applied
//! stockctl stock <sku>        levels of a SKU per location
//! ```

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use stockflow_cli::{events, read_levels};
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, Reason, Received, StockChanged},
};
use stockflow_shared::{keys::Keys, settings::Env, topology::Mode, worker::WorkerSettings};

const USAGE: &str = "usage: stockctl setup [--update] | selftest | stock <sku>";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = WorkerSettings::from_env(&Env::process(), "stockctl", "127.0.0.1:0")
        .context("invalid configuration")?;
    settings.log.init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["setup"] => stockflow_shared::worker::setup(&settings, Mode::Verify).await,
        ["setup", "--update"] => stockflow_shared::worker::setup(&settings, Mode::Update).await,
        ["selftest"] => selftest(&settings).await,
        ["stock", sku] => stock(&settings, sku).await,
        _ => anyhow::bail!(USAGE),
    }
}

/// Publishes one receipt for a SKU nobody uses and waits for its ledger entry.
async fn selftest(settings: &WorkerSettings) -> anyhow::Result<()> {
    let client = settings.nats.connect().await?;
    let js = async_nats::jetstream::new(client);
    let id = format!("selftest-{}", events::now_ms());
    let sku = format!("stockflow-selftest-{}", events::now_ms());
    let mut ledger = client_subscription(&js, &sku).await?;
    let event = events::fact(
        &id,
        "stockctl:selftest",
        Reason::Received,
        &sku,
        "selftest",
        Change::Received(Received { quantity: 1 }),
    );
    events::publish(&js, &event, &id)
        .await
        .context("publishing the selftest event")?;
    let entry = tokio::time::timeout(Duration::from_secs(30), ledger.next())
        .await
        .context("no ledger entry within 30 s: is the stock worker running?")?
        .context("ledger subscription ended")?;
    let entry: StockChanged = prost::Message::decode(entry.payload)?;
    anyhow::ensure!(
        entry.cause_event_id == id,
        "unexpected ledger entry {entry:?}"
    );
    println!(
        "selftest ok: {sku} applied, on_hand {}",
        entry.after.unwrap_or_default().on_hand
    );
    Ok(())
}

async fn client_subscription(
    js: &async_nats::jetstream::Context,
    sku: &str,
) -> anyhow::Result<async_nats::Subscriber> {
    // A core subscription sees ledger entries as JetStream stores them.
    let client = js.client();
    Ok(client.subscribe(subjects::stock_changed(sku)).await?)
}

async fn stock(settings: &WorkerSettings, sku: &str) -> anyhow::Result<()> {
    let mut redis = settings.redis.connect().await?;
    let keys = Keys::new(settings.redis.key_prefix.clone());
    let levels = read_levels(&mut redis, &keys, sku).await?;
    if levels.is_empty() {
        println!("{sku}: no stock recorded");
        return Ok(());
    }
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>10}",
        "location", "on_hand", "reserved", "safety", "available"
    );
    for (location, l) in &levels {
        println!(
            "{location:<16} {:>10} {:>10} {:>10} {:>10}",
            l.on_hand,
            l.reserved,
            l.safety_stock,
            l.available()
        );
    }
    Ok(())
}
