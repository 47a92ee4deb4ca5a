//! `stockctl connectors …`: the connector's shops (workers/connector/README.md) — check a shops
//! file as the connector reads it at start, and show what each shop has waiting.

use std::path::PathBuf;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Subcommand;
use serde_json::json;
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

async fn status(js: &jetstream::Context, format: Format) -> anyhow::Result<()> {
    let shops = connector::status::shops(js).await?;
    match format {
        Format::Json => crate::outln!("{}", json!({ "shops": shops })),
        Format::Table => {
            crate::outln!(
                "{:<20} {:>9} {:>12} {:>13}",
                "shop",
                "pending",
                "asked again",
                "dead letters"
            );
            let show = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            for s in &shops {
                crate::outln!(
                    "{:<20} {:>9} {:>12} {:>13}",
                    s.shop,
                    show(s.pending),
                    show(s.asked_again),
                    s.dead_letters
                );
            }
            if shops.is_empty() {
                crate::outln!(
                    "no connector has started yet (no consumer connector-<shop> on AVAILABILITY)"
                );
            }
        }
    }
    Ok(())
}
