//! `stockctl selftest`: the Helm chart's `helm test` — one receipt for a SKU nobody uses, and
//! its ledger entry back from the stock worker.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, Reason, Received, StockChanged},
};

use crate::events;

use super::Format;

/// Publishes one receipt for a fresh SKU and waits for its ledger entry.
pub async fn run(settings: &super::Settings, format: Format) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let client = settings.nats.connect().await?;
    let js = async_nats::jetstream::new(client.clone());
    let id = format!("selftest-{}", events::now_ms());
    let sku = format!("stockflow-selftest-{}", events::now_ms());
    // A core subscription sees ledger entries as JetStream stores them (with partitions, on the
    // subject the servers' mapping made); it exists before the receipt is published, so the
    // entry cannot be missed.
    let mut ledger = client
        .subscribe(subjects::stock_changed_stored(
            &sku,
            settings.topology.stock_partitions,
        ))
        .await?;
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
    let on_hand = entry.after.unwrap_or_default().on_hand;
    match format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({
                "ok": true,
                "sku": sku,
                "event_id": id,
                "on_hand": on_hand,
                "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
        ),
        Format::Table => crate::outln!("selftest ok: {sku} applied, on_hand {on_hand}"),
    }
    Ok(())
}
