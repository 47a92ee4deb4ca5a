//! `stockctl connectors …`: the connector's shops (workers/connector/README.md) — check a shops
//! file as the connector reads it at start, and show what each shop has waiting.

use std::path::PathBuf;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Subcommand;
use futures::StreamExt as _;
use serde_json::json;
use stockflow_proto::subjects;
use stockflow_shared::settings::Env;

use super::Format;

/// `stockctl connectors` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// Check a shops file (and the CSV item files it names) as the connector reads it at start:
    /// the secrets it names must be set in this environment (they are never printed).
    Check {
        /// The shops file (`STOCKFLOW_CONNECTOR_SHOPS_FILE`).
        file: PathBuf,
    },
    /// Per shop: changed items waiting to be pushed, pushes asked again, dead letters.
    Status,
}

/// Runs a `connectors` subcommand.
pub async fn run(
    settings: &super::Settings,
    command: &ConnectorsCommand,
    format: Format,
) -> anyhow::Result<()> {
    match command {
        ConnectorsCommand::Check { file } => check(file, format),
        ConnectorsCommand::Status => {
            let js = super::jetstream(settings).await?;
            status(&js, format).await
        }
    }
}

fn check(file: &std::path::Path, format: Format) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let base = file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let shops = connector::shops::parse_in(&text, &Env::process(), &base)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", file.display()))?;
    let rows: Vec<serde_json::Value> = shops
        .iter()
        .map(|shop| {
            json!({
                "shop": shop.id,
                "platform": shop.platform.as_str(),
                "channel": shop.channel,
                "base_url": shop.base_url.as_str(),
                "items": shop.items.len(),
                "items_booking_edits": shop.items.values().filter(|i| i.location.is_some()).count(),
            })
        })
        .collect();
    match format {
        Format::Json => crate::outln!("{}", json!({ "shops": rows })),
        Format::Table => {
            crate::outln!(
                "{:<20} {:<12} {:<16} {:>7}  base url",
                "shop",
                "platform",
                "channel",
                "items"
            );
            for shop in &shops {
                crate::outln!(
                    "{:<20} {:<12} {:<16} {:>7}  {}",
                    shop.id,
                    shop.platform.as_str(),
                    shop.channel,
                    shop.items.len(),
                    shop.base_url
                );
            }
            crate::outln!(
                "{} shop(s): the connector will accept this file",
                shops.len()
            );
        }
    }
    Ok(())
}

/// Waiting messages of one consumer: not yet delivered + delivered, not acknowledged.
async fn waiting(stream: &jetstream::stream::Stream, durable: &str) -> Option<u64> {
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(durable).await.ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0))
}

async fn status(js: &jetstream::Context, format: Format) -> anyhow::Result<()> {
    let feed = js
        .get_stream(subjects::AVAILABILITY)
        .await
        .context("stream AVAILABILITY is not available (has `stockctl setup` run?)")?;
    let retries = js.get_stream(subjects::CONNECTOR_RETRIES).await.ok();
    let dead_letters = js
        .get_stream(subjects::DEAD_LETTERS)
        .await
        .context("stream DEAD_LETTERS is not available")?;
    let mut shops = Vec::new();
    let mut names = feed.consumer_names();
    while let Some(name) = names.next().await {
        let name = name.context("listing the consumers of AVAILABILITY")?;
        if let Some(shop) = name.strip_prefix("connector-") {
            shops.push(shop.to_owned());
        }
    }
    shops.sort();
    let mut rows = Vec::new();
    for shop in &shops {
        let pending = waiting(&feed, &format!("connector-{shop}")).await;
        let asked = match &retries {
            Some(stream) => waiting(stream, &format!("connector-{shop}-retries")).await,
            None => None,
        };
        let subject = format!("deadletter.connectors.{shop}");
        let mut counts = dead_letters
            .info_with_subjects(&subject)
            .await
            .context("reading DEAD_LETTERS")?;
        let mut dead = 0u64;
        while let Some(Ok((_, n))) = counts.next().await {
            dead += n as u64;
        }
        rows.push((shop.clone(), pending, asked, dead));
    }
    match format {
        Format::Json => {
            let shops: Vec<_> = rows
                .iter()
                .map(|(shop, pending, asked, dead)| {
                    json!({"shop": shop, "pending": pending, "asked_again": asked, "dead_letters": dead})
                })
                .collect();
            crate::outln!("{}", json!({ "shops": shops }));
        }
        Format::Table => {
            crate::outln!(
                "{:<20} {:>9} {:>12} {:>13}",
                "shop",
                "pending",
                "asked again",
                "dead letters"
            );
            let show = |n: &Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            for (shop, pending, asked, dead) in &rows {
                crate::outln!(
                    "{:<20} {:>9} {:>12} {:>13}",
                    shop,
                    show(pending),
                    show(asked),
                    dead
                );
            }
            if rows.is_empty() {
                crate::outln!(
                    "no connector has started yet (no consumer connector-<shop> on AVAILABILITY)"
                );
            }
        }
    }
    Ok(())
}
