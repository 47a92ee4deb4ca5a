//! The shops file (`STOCKFLOW_CONNECTOR_SHOPS_FILE`): which shop of which platform serves which
//! stockflow channel, where its API is, which variables hold its secrets, and the mapping from
//! stockflow SKUs to the platform's ids. Secrets are read once, at start, and kept as
//! [`Secret`]s: they never print.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use stockflow_shared::settings::{ConfigError, Env, Secret};

/// The variable naming the shops file.
pub const FILE_VAR: &str = "STOCKFLOW_CONNECTOR_SHOPS_FILE";

/// The platforms a shop can be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformKind {
    /// Shopify: GraphQL Admin API out, HMAC-signed webhooks in.
    Shopify,
    /// WooCommerce: REST API v3 out, HMAC-signed webhooks in.
    Woocommerce,
}

impl PlatformKind {
    /// Its name in URLs, metrics and event ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shopify => "shopify",
            Self::Woocommerce => "woocommerce",
        }
    }
}

/// Where one stockflow SKU lives on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The stockflow SKU.
    pub sku: String,
    /// The stockflow location where a difference found on the platform (someone edited the
    /// quantity there) is booked, as an `adjusted` fact; without one it is only logged and
    /// counted, and stockflow's quantity is set over it.
    #[serde(default)]
    pub location: Option<String>,
    /// Shopify: the inventory item GID (`gid://shopify/InventoryItem/<n>`).
    #[serde(default)]
    pub inventory_item_id: Option<String>,
    /// Shopify: the location GID the channel's quantity is set at.
    #[serde(default)]
    pub location_id: Option<String>,
    /// WooCommerce: the product id (the parent product of a variation).
    #[serde(default)]
    pub product_id: Option<u64>,
    /// WooCommerce: the variation id, for a variable product's variation.
    #[serde(default)]
    pub variation_id: Option<u64>,
}

/// A shop entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    platform: PlatformKind,
    channel: String,
    base_url: String,
    #[serde(default)]
    api_version: Option<String>,
    /// Variable holding the webhook signing secret (Shopify: the app's client secret;
    /// WooCommerce: the webhook's secret).
    webhook_secret_env: String,
    /// Shopify: variable holding the Admin API access token.
    #[serde(default)]
    access_token_env: Option<String>,
    /// WooCommerce: variables holding the REST API consumer key and secret.
    #[serde(default)]
    consumer_key_env: Option<String>,
    #[serde(default)]
    consumer_secret_env: Option<String>,
    #[serde(default)]
    items: Vec<Item>,
    /// A CSV file of items (header row: the [`Item`] field names), relative to the shops file.
    #[serde(default)]
    items_csv: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    shops: Vec<Entry>,
}

/// How a shop's API is authenticated.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Shopify: `X-Shopify-Access-Token`.
    AccessToken(Secret),
    /// WooCommerce: HTTP basic auth with the consumer key and secret.
    ConsumerKey {
        /// The consumer key (`ck_…`).
        key: Secret,
        /// The consumer secret (`cs_…`).
        secret: Secret,
    },
}

/// One shop, checked.
#[derive(Debug, Clone)]
pub struct Shop {
    /// Its id: the webhook path, the consumer name, the metric label.
    pub id: String,
    /// Its platform.
    pub platform: PlatformKind,
    /// The stockflow channel it sells (its availability feed is pushed to the shop, its orders
    /// are that channel's sales).
    pub channel: String,
    /// The shop's API base URL (`https://<shop>.myshopify.com`, `https://shop.example`); may carry
    /// no credentials.
    pub base_url: reqwest::Url,
    /// Shopify API version (`2026-04` by default).
    pub api_version: String,
    /// The webhook signing secret.
    pub webhook_secret: Secret,
    /// The API credentials.
    pub credentials: Credentials,
    /// SKU → platform ids.
    pub items: HashMap<String, Item>,
}

impl Shop {
    /// The item mapped to `sku`, if any.
    pub fn item(&self, sku: &str) -> Option<&Item> {
        self.items.get(sku)
    }
}

/// The Shopify API version used when a shop names none: the first with mandatory compare-and-set
/// (`changeFromQuantity`) and idempotency keys on inventory mutations.
pub const DEFAULT_SHOPIFY_API_VERSION: &str = "2026-04";

fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid {
        var: FILE_VAR,
        reason,
    }
}

/// Reads and checks the shops file; errors name the variable, the file, the shop and the field.
pub fn from_env(env: &Env) -> Result<Vec<Shop>, ConfigError> {
    let Some(path) = env.path(FILE_VAR) else {
        return Err(invalid(
            "not set: name a JSON file of shops ({\"shops\": [...]})".into(),
        ));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
        var: FILE_VAR,
        path: path.clone(),
        source,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_in(&text, env, &base).map_err(|reason| invalid(format!("{}: {reason}", display(&path))))
}

/// Reads a CSV file of items (a header row naming the [`Item`] fields).
pub fn read_items_csv(path: &Path) -> Result<Vec<Item>, String> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| format!("cannot read {}: {e}", display(path)))?;
    reader
        .deserialize::<Item>()
        .enumerate()
        .map(|(i, row)| row.map_err(|e| format!("{} row {}: {e}", display(path), i + 2)))
        .collect()
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// A shop id, a channel id: what can be a NATS subject token and a URL path segment.
fn is_token(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn secret_of(env: &Env, field: &str, var: Option<&str>) -> Result<Secret, String> {
    let var = var.ok_or_else(|| format!("{field}: required for this platform"))?;
    env.raw(var)
        .map(Secret::new)
        .ok_or_else(|| format!("{field}: the variable {var} is not set"))
}

/// Parses and checks the file's text. Errors are `shop "<id>": <field>: <problem>`.
pub fn parse(text: &str, env: &Env) -> Result<Vec<Shop>, String> {
    parse_in(text, env, Path::new("."))
}

/// [`parse`], with `items_csv` paths relative to `base`.
pub fn parse_in(text: &str, env: &Env, base: &Path) -> Result<Vec<Shop>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut seen = HashSet::new();
    let mut shops = Vec::with_capacity(file.shops.len());
    for entry in file.shops {
        let id = entry.id.clone();
        let shop = check(entry, env, base).map_err(|e| format!("shop {id:?}: {e}"))?;
        if !seen.insert(shop.id.clone()) {
            return Err(format!("shop {id:?}: id: used twice"));
        }
        shops.push(shop);
    }
    Ok(shops)
}

fn check(mut entry: Entry, env: &Env, base: &Path) -> Result<Shop, String> {
    if let Some(csv) = entry.items_csv.take() {
        let items = read_items_csv(&base.join(csv)).map_err(|e| format!("items_csv: {e}"))?;
        entry.items.extend(items);
    }
    if !is_token(&entry.id) {
        return Err("id: 1-64 characters of A-Z, a-z, 0-9, '-' and '_'".into());
    }
    if !is_token(&entry.channel) {
        return Err("channel: 1-64 characters of A-Z, a-z, 0-9, '-' and '_'".into());
    }
    let base_url =
        reqwest::Url::parse(&entry.base_url).map_err(|e| format!("base_url: not a URL: {e}"))?;
    if !matches!(base_url.scheme(), "http" | "https") {
        return Err("base_url: must be http or https".into());
    }
    if !base_url.username().is_empty() || base_url.password().is_some() {
        return Err("base_url: must not carry credentials (use the *_env fields)".into());
    }
    let webhook_secret = secret_of(env, "webhook_secret_env", Some(&entry.webhook_secret_env))?;
    let credentials = match entry.platform {
        PlatformKind::Shopify => Credentials::AccessToken(secret_of(
            env,
            "access_token_env",
            entry.access_token_env.as_deref(),
        )?),
        PlatformKind::Woocommerce => Credentials::ConsumerKey {
            key: secret_of(env, "consumer_key_env", entry.consumer_key_env.as_deref())?,
            secret: secret_of(
                env,
                "consumer_secret_env",
                entry.consumer_secret_env.as_deref(),
            )?,
        },
    };
    let mut items = HashMap::with_capacity(entry.items.len());
    for item in entry.items {
        check_item(entry.platform, &item).map_err(|e| format!("items[{:?}]: {e}", item.sku))?;
        if items.insert(item.sku.clone(), item.clone()).is_some() {
            return Err(format!("items[{:?}]: sku: mapped twice", item.sku));
        }
    }
    Ok(Shop {
        id: entry.id,
        platform: entry.platform,
        channel: entry.channel,
        base_url,
        api_version: entry
            .api_version
            .unwrap_or_else(|| DEFAULT_SHOPIFY_API_VERSION.to_owned()),
        webhook_secret,
        credentials,
        items,
    })
}

/// Whether `item` names what its platform needs.
pub fn check_item(platform: PlatformKind, item: &Item) -> Result<(), String> {
    if item.sku.is_empty() {
        return Err("sku: required".into());
    }
    match platform {
        PlatformKind::Shopify => {
            let gid = |field: &str, value: &Option<String>, kind: &str| match value {
                Some(v) if v.starts_with(&format!("gid://shopify/{kind}/")) => Ok(()),
                _ => Err(format!("{field}: a gid://shopify/{kind}/<id> is required")),
            };
            gid(
                "inventory_item_id",
                &item.inventory_item_id,
                "InventoryItem",
            )?;
            gid("location_id", &item.location_id, "Location")
        }
        PlatformKind::Woocommerce => match item.product_id {
            Some(id) if id > 0 => Ok(()),
            _ => Err("product_id: required".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_shop_and_field_and_secrets_never_print() {
        let env = Env::from_pairs([("S", "shpss_secret"), ("T", "shpat_token")]);
        let ok = r#"{"shops": [{"id": "acme", "platform": "shopify", "channel": "web",
            "base_url": "https://acme.myshopify.com", "webhook_secret_env": "S",
            "access_token_env": "T", "items": [{"sku": "A1",
            "inventory_item_id": "gid://shopify/InventoryItem/1",
            "location_id": "gid://shopify/Location/9"}]}]}"#;
        let shops = parse(ok, &env).expect("valid");
        assert_eq!(shops[0].api_version, DEFAULT_SHOPIFY_API_VERSION);
        let tmp = tempfile::tempdir().expect("dir");
        let dir = tmp.path();
        std::fs::write(
            dir.join("items.csv"),
            "sku,inventory_item_id,location_id,location\nB2,gid://shopify/InventoryItem/2,gid://shopify/Location/9,\nC3,gid://shopify/InventoryItem/3,gid://shopify/Location/9,store-1\n",
        )
        .expect("csv");
        let with_csv = ok.replace("\"items\":", "\"items_csv\": \"items.csv\", \"items\":");
        let shops = parse_in(&with_csv, &env, dir).expect("csv items");
        assert_eq!(shops[0].items.len(), 3);
        assert_eq!(shops[0].items["B2"].location, None);
        assert_eq!(shops[0].items["C3"].location.as_deref(), Some("store-1"));
        let printed = format!("{shops:?}");
        assert!(!printed.contains("shpss_secret") && !printed.contains("shpat_token"));
        for (text, expected) in [
            (ok.replace("\"T\"", "\"NOPE\""), "shop \"acme\": access_token_env: the variable NOPE is not set"),
            (ok.replace("InventoryItem/1", "Product/1"), "shop \"acme\": items[\"A1\"]: inventory_item_id: a gid://shopify/InventoryItem/<id> is required"),
            (ok.replace("\"web\"", "\"w.b\""), "shop \"acme\": channel: 1-64 characters of A-Z, a-z, 0-9, '-' and '_'"),
            (ok.replace("https://acme", "https://u:p@acme"), "shop \"acme\": base_url: must not carry credentials (use the *_env fields)"),
        ] {
            assert_eq!(parse(&text, &env).expect_err(expected), expected);
        }
    }
}
