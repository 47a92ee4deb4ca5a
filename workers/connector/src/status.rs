//! What waits for each shop a connector serves, read from JetStream alone (no connector needs to
//! run): `stockctl connectors status` and the gateway's `GET /v1/connectors` both call
//! [`shops`]. The shops are those of `CONNECTOR_SHOPS` and those with a consumer; for each, what
//! the connector last reported (`CONNECTOR_STATE`: running, or skipped and why, and the
//! `CONNECTOR_ITEMS` revision its mappings reached).

use async_nats::jetstream;
use futures::StreamExt as _;
use serde::Serialize;
use stockflow_proto::subjects;

/// One shop, as its consumers and dead letters show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShopStatus {
    /// The shop id (from its consumer `connector-<shop>`).
    pub shop: String,
    /// Changed items not yet pushed: pending + unacknowledged on `connector-<shop>`.
    pub pending: Option<u64>,
    /// Pushes asked again (replayed dead letters) not yet made.
    pub asked_again: Option<u64>,
    /// Its dead letters in `DEAD_LETTERS` (`deadletter.connectors.<shop>`).
    pub dead_letters: u64,
    /// Whether `CONNECTOR_SHOPS` holds it (a shop only with a consumer was removed while no
    /// connector ran, or comes from an older connector).
    pub configured: bool,
    /// What the connector last made of it: `running` or `skipped`; `None` before it saw it.
    pub state: Option<String>,
    /// Why it was skipped (names a variable, never a value).
    pub problem: Option<String>,
    /// The newest `CONNECTOR_ITEMS` revision the connector applied to its mappings: a mapping
    /// written at this revision or before is in force.
    pub items_revision: Option<u64>,
}

/// Why the status cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the connectors' status: {0:#}")]
pub struct StatusError(#[from] anyhow::Error);

async fn waiting(stream: &jetstream::stream::Stream, durable: &str) -> Option<u64> {
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0))
}

/// Every shop that has a consumer on `AVAILABILITY`, by id.
pub async fn shops(js: &jetstream::Context) -> Result<Vec<ShopStatus>, StatusError> {
    use anyhow::Context as _;
    let feed = js
        .get_stream(subjects::AVAILABILITY)
        .await
        .context("stream AVAILABILITY is not available (has `stockctl setup` run?)")?;
    let retries = js.get_stream(subjects::CONNECTOR_RETRIES).await.ok();
    let dead_letters = js
        .get_stream(subjects::DEAD_LETTERS)
        .await
        .context("stream DEAD_LETTERS is not available")?;
    let mut ids = Vec::new();
    let mut names = feed.consumer_names();
    while let Some(name) = names.next().await {
        let name = name.context("listing the consumers of AVAILABILITY")?;
        if let Some(shop) = name.strip_prefix("connector-") {
            ids.push(shop.to_owned());
        }
    }
    let store = match crate::config::ConfigStore::open(js).await {
        Ok(store) => Some(store),
        Err(crate::config::StoreError::Missing(_)) => None,
        Err(e) => return Err(anyhow::Error::new(e).into()),
    };
    let mut configured = Vec::new();
    if let Some(store) = &store {
        configured = store
            .shops()
            .await
            .context("reading CONNECTOR_SHOPS")?
            .into_iter()
            .map(|s| s.id)
            .collect();
        ids.extend(configured.iter().cloned());
    }
    ids.sort();
    ids.dedup();
    let mut shops = Vec::with_capacity(ids.len());
    for shop in ids {
        let pending = waiting(&feed, &format!("connector-{shop}")).await;
        let asked_again = match &retries {
            Some(stream) => waiting(stream, &format!("connector-{shop}-retries")).await,
            None => None,
        };
        let mut counts = dead_letters
            .info_with_subjects(format!("deadletter.connectors.{shop}"))
            .await
            .context("reading DEAD_LETTERS")?;
        let mut dead = 0u64;
        while let Some(count) = counts.next().await {
            let (_, n) = count.context("reading DEAD_LETTERS")?;
            dead += u64::try_from(n).unwrap_or(0);
        }
        let report = match &store {
            Some(store) => store
                .reported(&shop)
                .await
                .context("reading CONNECTOR_STATE")?,
            None => None,
        };
        shops.push(ShopStatus {
            configured: configured.contains(&shop),
            state: report.as_ref().map(|r| r.state.clone()),
            items_revision: report.as_ref().and_then(|r| r.items_revision),
            problem: report.and_then(|r| r.reason),
            shop,
            pending,
            asked_again,
            dead_letters: dead,
        });
    }
    Ok(shops)
}
