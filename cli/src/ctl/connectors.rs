//! `stockctl connectors …`: the connector's shops (workers/connector/README.md) — the shops and
//! item mappings of the `CONNECTOR_SHOPS` / `CONNECTOR_ITEMS` buckets (listed, shown, set,
//! removed, items imported from CSV; checked by the same code the connector and the gateway
//! run), a shops file checked as the connector reads it at start, and what each shop has
//! waiting. No command prints a secret: shops name the variables that hold them.

use std::{io::Read as _, path::PathBuf};

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Args, Subcommand};
use connector::{
    config::{ConfigStore, StoreError},
    shops::{Item, PlatformKind, ShopConfig},
};
use serde_json::json;
use stockflow_shared::settings::Env;

use super::{Format, Outcome};

/// `stockctl connectors` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// Check a shops file (and the CSV item files it names) as the connector reads it at start:
    /// the secrets it names must be set in this environment (they are never printed).
    Check {
        /// The shops file (`STOCKFLOW_CONNECTOR_SHOPS_FILE`).
        file: PathBuf,
    },
    /// Per shop: running or skipped (and why), changed items waiting to be pushed, pushes asked
    /// again, dead letters, the `CONNECTOR_ITEMS` revision its mappings reached.
    Status,
    /// The shops (`CONNECTOR_SHOPS`): a running connector follows every change.
    Shops {
        /// Which.
        #[command(subcommand)]
        command: ShopsCommand,
    },
    /// The item mappings of a shop (`CONNECTOR_ITEMS`): where each SKU lives on its platform.
    Items {
        /// Which.
        #[command(subcommand)]
        command: ItemsCommand,
    },
}

/// `stockctl connectors shops` subcommands.
#[derive(Debug, Subcommand)]
pub enum ShopsCommand {
    /// Every shop, by id.
    List,
    /// One shop.
    Show {
        /// The shop id.
        shop: String,
    },
    /// Create or replace a shop. Secrets are not given here: name the variables of the
    /// connector's environment that hold them.
    Set(ShopArgs),
    /// Remove a shop and its item mappings; the connector stops it and deletes its consumers.
    Remove {
        /// The shop id.
        shop: String,
    },
}

/// `stockctl connectors shops set` arguments.
#[derive(Debug, Args)]
pub struct ShopArgs {
    /// The shop id (webhook path `/webhooks/<platform>/<id>`): ASCII letters, digits, '-', '_'.
    pub shop: String,
    /// `shopify` or `woocommerce`.
    #[arg(long, value_parser = ["shopify", "woocommerce"])]
    pub platform: String,
    /// The stockflow channel the shop sells.
    #[arg(long)]
    pub channel: String,
    /// The shop's API base URL (`https://<shop>.myshopify.com`); no credentials in it.
    #[arg(long)]
    pub base_url: String,
    /// Shopify API version (default 2026-04).
    #[arg(long)]
    pub api_version: Option<String>,
    /// NAME of the variable holding the webhook signing secret.
    #[arg(long, value_name = "VAR")]
    pub webhook_secret_env: String,
    /// Shopify: NAME of the variable holding the Admin API access token.
    #[arg(long, value_name = "VAR")]
    pub access_token_env: Option<String>,
    /// WooCommerce: NAME of the variable holding the consumer key.
    #[arg(long, value_name = "VAR")]
    pub consumer_key_env: Option<String>,
    /// WooCommerce: NAME of the variable holding the consumer secret.
    #[arg(long, value_name = "VAR")]
    pub consumer_secret_env: Option<String>,
}

/// `stockctl connectors items` subcommands.
#[derive(Debug, Subcommand)]
pub enum ItemsCommand {
    /// Every item mapping of a shop, by SKU.
    List {
        /// The shop id.
        shop: String,
    },
    /// Map one SKU (replacing its mapping): Shopify `--inventory-item-id` and `--location-id`
    /// GIDs, or WooCommerce `--product-id` (and `--variation-id`).
    Set(ItemArgs),
    /// Remove a SKU's mapping: the shop gets no more pushes of it.
    Remove {
        /// The shop id.
        shop: String,
        /// The SKU.
        sku: String,
    },
    /// Import mappings from a CSV file ('-': standard input) with a header row: `sku`,
    /// `inventory_item_id`, `location_id` (Shopify) or `product_id`, `variation_id`
    /// (WooCommerce), and optionally `location`. Idempotent; refused rows are reported with
    /// their line numbers (exit 3) and the others imported.
    Import {
        /// The shop id.
        shop: String,
        /// The CSV file.
        file: PathBuf,
    },
}

/// `stockctl connectors items set` arguments.
#[derive(Debug, Args)]
pub struct ItemArgs {
    /// The shop id.
    pub shop: String,
    /// The stockflow SKU.
    pub sku: String,
    /// Shopify: `gid://shopify/InventoryItem/<id>`.
    #[arg(long)]
    pub inventory_item_id: Option<String>,
    /// Shopify: `gid://shopify/Location/<id>`.
    #[arg(long)]
    pub location_id: Option<String>,
    /// WooCommerce: the product id (the parent of a variation).
    #[arg(long)]
    pub product_id: Option<u64>,
    /// WooCommerce: the variation id.
    #[arg(long)]
    pub variation_id: Option<u64>,
    /// The stockflow location where a quantity edited on the platform is booked.
    #[arg(long)]
    pub location: Option<String>,
}

/// Runs a `connectors` subcommand.
pub async fn run(
    settings: &super::Settings,
    command: &ConnectorsCommand,
    format: Format,
) -> anyhow::Result<Outcome> {
    match command {
        ConnectorsCommand::Check { file } => check(file, format).map(|()| Outcome::Done),
        ConnectorsCommand::Status => {
            let js = super::jetstream(settings).await?;
            status(&js, format).await.map(|()| Outcome::Done)
        }
        ConnectorsCommand::Shops { command } => {
            let store = store(settings).await?;
            found(shops(&store, command, format).await)
        }
        ConnectorsCommand::Items { command } => {
            let store = store(settings).await?;
            found(items(&store, command, format).await)
        }
    }
}

async fn store(settings: &super::Settings) -> anyhow::Result<ConfigStore> {
    let js = super::jetstream(settings).await?;
    Ok(ConfigStore::open(&js).await?)
}

/// A shop or item that does not exist is exit 5, a refused value an error naming its field.
fn found(result: Result<Outcome, StoreError>) -> anyhow::Result<Outcome> {
    match result {
        Ok(outcome) => Ok(outcome),
        Err(e @ (StoreError::NoShop(_) | StoreError::NoItem { .. })) => {
            eprintln!("{e}");
            Ok(Outcome::NotFound)
        }
        Err(StoreError::Invalid(e)) => Err(anyhow::anyhow!("refused: {e}")),
        Err(e) => Err(e.into()),
    }
}

fn shop_json(shop: &ShopConfig) -> serde_json::Value {
    serde_json::to_value(shop).unwrap_or_default()
}

async fn shops(
    store: &ConfigStore,
    command: &ShopsCommand,
    format: Format,
) -> Result<Outcome, StoreError> {
    match command {
        ShopsCommand::List => {
            let shops = store.shops().await?;
            match format {
                Format::Json => crate::outln!(
                    "{}",
                    json!({ "shops": shops.iter().map(shop_json).collect::<Vec<_>>() })
                ),
                Format::Table => {
                    crate::outln!(
                        "{:<20} {:<12} {:<16} base url",
                        "shop",
                        "platform",
                        "channel"
                    );
                    for shop in &shops {
                        crate::outln!(
                            "{:<20} {:<12} {:<16} {}",
                            shop.id,
                            shop.platform.as_str(),
                            shop.channel,
                            shop.base_url
                        );
                    }
                    if shops.is_empty() {
                        crate::outln!("no shop (stockctl connectors shops set …)");
                    }
                }
            }
        }
        ShopsCommand::Show { shop } => {
            let shop = store.shop(shop).await?;
            match format {
                Format::Json => crate::outln!("{}", shop_json(&shop)),
                Format::Table => {
                    let text = serde_json::to_string_pretty(&shop).unwrap_or_default();
                    crate::outln!("{text}");
                }
            }
        }
        ShopsCommand::Set(args) => {
            let platform = match args.platform.as_str() {
                "woocommerce" => PlatformKind::Woocommerce,
                _ => PlatformKind::Shopify,
            };
            let shop = ShopConfig {
                id: args.shop.clone(),
                platform,
                channel: args.channel.clone(),
                base_url: args.base_url.clone(),
                api_version: args.api_version.clone(),
                webhook_secret_env: args.webhook_secret_env.clone(),
                access_token_env: args.access_token_env.clone(),
                consumer_key_env: args.consumer_key_env.clone(),
                consumer_secret_env: args.consumer_secret_env.clone(),
            };
            let changed = store.put_shop(&shop).await?;
            match format {
                Format::Json => {
                    crate::outln!("{}", json!({ "shop": shop_json(&shop), "changed": changed }));
                }
                Format::Table if changed => crate::outln!(
                    "shop {} stored; a running connector starts (or restarts) it; secrets come from {}",
                    shop.id,
                    shop.secret_vars().join(", ")
                ),
                Format::Table => crate::outln!("shop {} stored already, unchanged", shop.id),
            }
        }
        ShopsCommand::Remove { shop } => {
            let items = store.remove_shop(shop).await?;
            match format {
                Format::Json => {
                    crate::outln!("{}", json!({ "shop": shop, "removed": true, "items_removed": items }));
                }
                Format::Table => crate::outln!(
                    "shop {shop} removed with its {items} item mapping(s); a running connector stops it"
                ),
            }
        }
    }
    Ok(Outcome::Done)
}

fn item_row(item: &Item) -> String {
    let ids = match (&item.inventory_item_id, item.product_id) {
        (Some(inventory), _) => format!(
            "{inventory} @ {}",
            item.location_id.as_deref().unwrap_or("-")
        ),
        (None, Some(product)) => match item.variation_id {
            Some(variation) => format!("product {product} variation {variation}"),
            None => format!("product {product}"),
        },
        (None, None) => "-".to_owned(),
    };
    format!(
        "{:<24} {:<16} {ids}",
        item.sku,
        item.location.as_deref().unwrap_or("-")
    )
}

async fn items(
    store: &ConfigStore,
    command: &ItemsCommand,
    format: Format,
) -> Result<Outcome, StoreError> {
    match command {
        ItemsCommand::List { shop } => {
            let items = store.items(shop).await?;
            match format {
                Format::Json => crate::outln!("{}", json!({ "shop": shop, "items": items })),
                Format::Table => {
                    crate::outln!("{:<24} {:<16} platform ids", "sku", "location");
                    for item in &items {
                        crate::outln!("{}", item_row(item));
                    }
                    crate::outln!("{} item(s)", items.len());
                }
            }
        }
        ItemsCommand::Set(args) => {
            let item = Item {
                sku: args.sku.clone(),
                location: args.location.clone(),
                inventory_item_id: args.inventory_item_id.clone(),
                location_id: args.location_id.clone(),
                product_id: args.product_id,
                variation_id: args.variation_id,
            };
            let changed = store.put_item(&args.shop, &item).await?;
            match format {
                Format::Json => crate::outln!(
                    "{}",
                    json!({ "shop": args.shop, "item": item, "changed": changed })
                ),
                Format::Table if changed => crate::outln!(
                    "{} mapped in shop {}; a running connector pushes its quantity now",
                    item.sku,
                    args.shop
                ),
                Format::Table => {
                    crate::outln!("{} mapped already, unchanged", item.sku);
                }
            }
        }
        ItemsCommand::Remove { shop, sku } => {
            store.remove_item(shop, sku).await?;
            match format {
                Format::Json => {
                    crate::outln!("{}", json!({ "shop": shop, "sku": sku, "removed": true }));
                }
                Format::Table => {
                    crate::outln!("{sku} unmapped in shop {shop}: no more pushes of it");
                }
            }
        }
        ItemsCommand::Import { shop, file } => {
            let mut text = Vec::new();
            let read = if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut text)
            } else {
                std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut text))
            };
            read.map_err(|e| StoreError::Csv(format!("cannot read {}: {e}", file.display())))?;
            let report = store.import(shop, text.as_slice()).await?;
            match format {
                Format::Json => crate::outln!("{}", json!({ "shop": shop, "report": report })),
                Format::Table => {
                    for row in &report.refused {
                        crate::outln!(
                            "line {}: refused{}: {}",
                            row.line,
                            row.sku
                                .as_deref()
                                .map(|s| format!(" ({s})"))
                                .unwrap_or_default(),
                            row.reason
                        );
                    }
                    crate::outln!(
                        "{} imported, {} unchanged, {} refused",
                        report.imported,
                        report.unchanged,
                        report.refused.len()
                    );
                }
            }
            if !report.refused.is_empty() {
                return Ok(Outcome::SomeRefused);
            }
        }
    }
    Ok(Outcome::Done)
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
                "{:<20} {:<10} {:>9} {:>12} {:>13} {:>14}",
                "shop",
                "state",
                "pending",
                "asked again",
                "dead letters",
                "items revision"
            );
            let show = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            for s in &shops {
                let state = match (&s.state, s.configured) {
                    (_, false) => "removed",
                    (Some(state), true) => state.as_str(),
                    (None, true) => "not seen",
                };
                crate::outln!(
                    "{:<20} {:<10} {:>9} {:>12} {:>13} {:>14}",
                    s.shop,
                    state,
                    show(s.pending),
                    show(s.asked_again),
                    s.dead_letters,
                    show(s.items_revision)
                );
            }
            for s in &shops {
                if let Some(problem) = &s.problem {
                    crate::outln!("{}: skipped: {problem}", s.shop);
                }
            }
            if shops.is_empty() {
                crate::outln!(
                    "no shop configured (stockctl connectors shops set …) and no connector consumer"
                );
            }
        }
    }
    Ok(())
}
