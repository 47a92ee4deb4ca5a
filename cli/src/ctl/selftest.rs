//! `stockctl selftest`: the Helm chart's `helm test` — a receipt for the selftest SKU, its
//! ledger entry back from the stock worker and its level in Redis, then a count that sets the
//! level back to 0.
//!
//! Both facts are opening balances (`REASON_OPENING_BALANCE`): they raise no alert, so nothing
//! reaches `ALERTS` or webhook subscribers. What a run leaves behind: the SKU [`SKU`] at 0 units
//! at location [`LOCATION`] in Redis (one SKU however often it runs), its two ledger entries
//! (the ledger is kept forever) and its inputs in the stock input stream (kept 7 days).

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use stockflow_proto::{
    subjects,
    v1::{stock_event::Change, Counted, Reason, Received, StockChanged},
};
use stockflow_shared::keys::Keys;

use crate::events;

use super::Format;

/// The SKU every selftest uses.
pub const SKU: &str = "stockflow-selftest";

/// Its location.
pub const LOCATION: &str = "selftest";

/// How long each step waits for the stock worker.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits for the ledger entry caused by `id` among the entries `ledger` receives.
async fn entry(ledger: &mut async_nats::Subscriber, id: &str) -> anyhow::Result<StockChanged> {
    let wait = async {
        while let Some(message) = ledger.next().await {
            let entry: StockChanged = prost::Message::decode(message.payload)?;
            if entry.cause_event_id == id {
                return Ok(entry);
            }
        }
        anyhow::bail!("ledger subscription ended")
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .with_context(|| {
            format!("no ledger entry for {id} within {DEADLINE:?}: is the stock worker running?")
        })?
}

/// Publishes a receipt for [`SKU`], waits for its ledger entry, checks the level Redis holds,
/// and counts the location back to 0.
pub async fn run(settings: &super::Settings, format: Format) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let client = settings.nats.connect().await?;
    let js = async_nats::jetstream::new(client.clone());
    let redis_settings = &settings.state()?.redis;
    let mut redis = redis_settings.connect().await?;
    let keys = Keys::new(redis_settings.key_prefix.clone());
    let run = events::now_ms();
    // A core subscription sees ledger entries as JetStream stores them (with partitions, on the
    // subject the servers' mapping made); it exists before the facts are published, so no
    // entry can be missed.
    let mut ledger = client
        .subscribe(subjects::stock_changed_stored(
            SKU,
            settings.topology.stock_partitions,
        ))
        .await?;

    let received = format!("selftest-{run}-received");
    let event = events::fact(
        &received,
        "stockctl:selftest",
        Reason::OpeningBalance,
        SKU,
        LOCATION,
        Change::Received(Received { quantity: 1 }),
    );
    events::publish(&js, &event, &received)
        .await
        .context("publishing the selftest receipt")?;
    let applied = entry(&mut ledger, &received).await?;
    let (before, after) = (
        applied.before.unwrap_or_default(),
        applied.after.unwrap_or_default(),
    );
    anyhow::ensure!(
        after.on_hand - before.on_hand == 1,
        "the receipt of 1 unit changed on_hand from {} to {}",
        before.on_hand,
        after.on_hand
    );
    let levels = stockflow_shared::levels::read_levels(&mut redis, &keys, SKU)
        .await
        .context("reading the selftest level from Redis")?;
    let held = levels.get(LOCATION).map(|l| l.on_hand);
    anyhow::ensure!(
        held.is_some_and(|on_hand| on_hand >= 1),
        "the ledger says {SKU} has {} at {LOCATION}, Redis holds {held:?}",
        after.on_hand
    );

    let counted = format!("selftest-{run}-counted");
    let event = events::fact(
        &counted,
        "stockctl:selftest",
        Reason::OpeningBalance,
        SKU,
        LOCATION,
        Change::Counted(Counted {
            on_hand: 0,
            expected_on_hand: None,
        }),
    );
    events::publish(&js, &event, &counted)
        .await
        .context("publishing the selftest count")?;
    entry(&mut ledger, &counted).await?;
    client.drain().await.ok();
    let on_hand = after.on_hand;
    match format {
        Format::Json => crate::outln!(
            "{}",
            serde_json::json!({
                "ok": true,
                "sku": SKU,
                "location": LOCATION,
                "event_id": received,
                "on_hand": on_hand,
                "elapsed_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
        ),
        Format::Table => crate::outln!(
            "selftest ok: {SKU} applied (on_hand {on_hand} in the ledger and in Redis), counted \
             back to 0 at {LOCATION}; no alert raised"
        ),
    }
    Ok(())
}
