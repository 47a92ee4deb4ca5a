//! What a shop is: which shop of which platform serves which stockflow channel, where its API
//! is, which variables hold its secrets ([`ShopConfig`], as the `CONNECTOR_SHOPS` bucket and the
//! shops file hold it), and the mapping from stockflow SKUs to the platform's ids ([`Item`]), with
//! the checks every writer runs (errors name the field). Secrets are read when a shop starts
//! ([`ShopConfig::resolve`]) from the variables the connector may read for shops (`crate::Secrets`:
//! `STOCKFLOW_CONNECTOR_SECRET_VARIABLES` and the shops file's; never a `STOCKFLOW_…` one) and
//! kept as [`Secret`]s: they never print, and never reach a bucket.
//!
//! The shops file (`STOCKFLOW_CONNECTOR_SHOPS_FILE`) is a seed of the buckets ([`from_env`]).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use stockflow_shared::settings::{ConfigError, Env, Secret};

/// The variable naming the shops file.
pub const FILE_VAR: &str = "STOCKFLOW_CONNECTOR_SHOPS_FILE";

/// The platforms a shop can be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The stockflow SKU.
    pub sku: String,
    /// The stockflow location where a difference found on the platform (someone edited the
    /// quantity there) is booked, as an `adjusted` fact; without one it is only logged and
    /// counted, and stockflow's quantity is set over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Shopify: the inventory item GID (`gid://shopify/InventoryItem/<n>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_item_id: Option<String>,
    /// Shopify: the location GID the channel's quantity is set at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// WooCommerce: the product id (the parent product of a variation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<u64>,
    /// WooCommerce: the variation id, for a variable product's variation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation_id: Option<u64>,
}

/// A shop as the `CONNECTOR_SHOPS` bucket, the API and the shops file hold it: everything but
/// its items and its secrets, of which only the variable NAMES are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopConfig {
    /// Its id: the webhook path, the consumer name, the metric label, the bucket key.
    pub id: String,
    /// Its platform.
    pub platform: PlatformKind,
    /// The stockflow channel it sells.
    pub channel: String,
    /// The shop's API base URL; may carry no credentials.
    pub base_url: String,
    /// Shopify API version (`YYYY-MM`); unset: [`DEFAULT_SHOPIFY_API_VERSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Variable holding the webhook signing secret (Shopify: the app's client secret;
    /// WooCommerce: the webhook's secret).
    pub webhook_secret_env: String,
    /// Shopify: variable holding the Admin API access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_env: Option<String>,
    /// WooCommerce: variable holding the REST API consumer key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_key_env: Option<String>,
    /// WooCommerce: variable holding the REST API consumer secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_secret_env: Option<String>,
}

/// A field a writer got wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field (`channel`, `inventory_item_id`, …).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid_field(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// A secret variable a shop names is not set in the connector's environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: the variable {var} is not set")]
pub struct MissingSecret {
    /// The field naming it (`access_token_env`, …).
    pub field: &'static str,
    /// The variable's name (never its value).
    pub var: String,
}

/// A secret variable a shop names is not one the connector may read: neither on
/// `STOCKFLOW_CONNECTOR_SECRET_VARIABLES` nor named by the shops file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: the variable {var} is not on {ALLOWLIST_VAR} (nor named by the shops file)")]
pub struct SecretNotAllowed {
    /// The field naming it (`access_token_env`, …).
    pub field: &'static str,
    /// The variable's name (never its value).
    pub var: String,
}

/// The variable listing the secret variables shops stored at run time may name.
pub const ALLOWLIST_VAR: &str = "STOCKFLOW_CONNECTOR_SECRET_VARIABLES";

/// What the connector's environment answers for a secret variable a shop names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretLookup {
    /// Allowed, and set to this value.
    Set(String),
    /// Allowed, but not set.
    Unset,
    /// Not a variable the connector may read for a shop.
    NotAllowed,
}

/// Names reserved for stockflow's own settings (`STOCKFLOW_NATS_PASSWORD`, …): never a shop's
/// secret, so a shop cannot have one of them sent to its platform.
pub const RESERVED_PREFIX: &str = "STOCKFLOW_";

const TOKEN_RULE: &str = "1-64 characters of A-Z, a-z, 0-9, '-' and '_'";

/// Why `name` cannot be a shop's secret variable, if it cannot.
pub fn check_secret_var(name: &str) -> Result<(), &'static str> {
    if !is_env_name(name) {
        return Err("the NAME of an environment variable (A-Z, 0-9, '_'; not starting with a digit), not a secret");
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(
            "a STOCKFLOW_ variable is one of stockflow's own settings, never a shop's secret",
        );
    }
    Ok(())
}

/// Whether `name` is an environment variable's name as deployments spell them: upper-case
/// letters, digits and `_`, not starting with a digit. Upper case only, so that a secret pasted
/// where its variable's name belongs (`shpat_…`, `ck_…`, hex) is refused instead of being stored
/// — and then shown and logged as a name.
pub(crate) fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `version` is a Shopify API version: `YYYY-MM`, or `unstable`.
fn is_api_version(version: &str) -> bool {
    version == "unstable"
        || (version.len() == 7
            && version.as_bytes()[4] == b'-'
            && version
                .bytes()
                .enumerate()
                .all(|(i, b)| i == 4 || b.is_ascii_digit()))
}

impl ShopConfig {
    /// The checks every writer runs (stockctl, the gateway, the shops file, the connector when
    /// it reads the bucket); the error names the field.
    pub fn validate(&self) -> Result<(), InvalidField> {
        self.url().map(|_| ())
    }

    /// The checked base URL.
    fn url(&self) -> Result<reqwest::Url, InvalidField> {
        if !is_token(&self.id) {
            return Err(invalid_field("id", TOKEN_RULE));
        }
        if !is_token(&self.channel) {
            return Err(invalid_field("channel", TOKEN_RULE));
        }
        let base_url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| invalid_field("base_url", format!("not a URL: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(invalid_field("base_url", "must be http or https"));
        }
        if !base_url.username().is_empty() || base_url.password().is_some() {
            return Err(invalid_field(
                "base_url",
                "must not carry credentials (use the *_env fields)",
            ));
        }
        // A query or fragment may hold credentials too (WooCommerce's query-string auth,
        // `?consumer_key=ck_…&consumer_secret=cs_…`), and the URL is stored, shown and logged.
        if base_url.query().is_some() || base_url.fragment().is_some() {
            return Err(invalid_field(
                "base_url",
                "must have no query or fragment (credentials go in the *_env fields)",
            ));
        }
        if let Some(version) = &self.api_version {
            if !is_api_version(version) {
                return Err(invalid_field(
                    "api_version",
                    "a Shopify API version: YYYY-MM (e.g. 2026-04) or unstable",
                ));
            }
        }
        for (field, var) in self.secret_vars_given() {
            check_secret_var(var).map_err(|reason| invalid_field(field, reason))?;
        }
        let (required, foreign): (&[_], &[_]) = match self.platform {
            PlatformKind::Shopify => (
                &[("access_token_env", self.access_token_env.is_some())],
                &[
                    ("consumer_key_env", self.consumer_key_env.is_some()),
                    ("consumer_secret_env", self.consumer_secret_env.is_some()),
                ],
            ),
            PlatformKind::Woocommerce => (
                &[
                    ("consumer_key_env", self.consumer_key_env.is_some()),
                    ("consumer_secret_env", self.consumer_secret_env.is_some()),
                ],
                &[("access_token_env", self.access_token_env.is_some())],
            ),
        };
        if let Some((field, _)) = required.iter().find(|(_, set)| !set) {
            return Err(invalid_field(field, "required for this platform"));
        }
        if let Some((field, _)) = foreign.iter().find(|(_, set)| *set) {
            return Err(invalid_field(field, "not a field of this platform"));
        }
        Ok(base_url)
    }

    /// (field, variable name) of every secret variable it names.
    fn secret_vars_given(&self) -> Vec<(&'static str, &str)> {
        let mut vars = vec![("webhook_secret_env", self.webhook_secret_env.as_str())];
        for (field, var) in [
            ("access_token_env", &self.access_token_env),
            ("consumer_key_env", &self.consumer_key_env),
            ("consumer_secret_env", &self.consumer_secret_env),
        ] {
            if let Some(var) = var {
                vars.push((field, var.as_str()));
            }
        }
        vars
    }

    /// The names of the variables holding its secrets.
    pub fn secret_vars(&self) -> Vec<String> {
        self.secret_vars_given()
            .into_iter()
            .map(|(_, var)| var.to_owned())
            .collect()
    }

    /// The shop with its secrets read through `lookup` (the connector's environment), and no
    /// items yet. A configuration that does not [`validate`](Self::validate) is reported as its
    /// invalid field; a variable `lookup` does not allow, or that is not set, by its field and
    /// name.
    pub fn resolve(&self, lookup: &dyn Fn(&str) -> SecretLookup) -> Result<Shop, ResolveError> {
        let base_url = self.url()?;
        let secret = |field: &'static str, var: Option<&str>| -> Result<Secret, ResolveError> {
            let var = var.ok_or_else(|| invalid_field(field, "required for this platform"))?;
            match lookup(var) {
                SecretLookup::Set(value) => Ok(Secret::new(value)),
                SecretLookup::Unset => Err(ResolveError::Missing(MissingSecret {
                    field,
                    var: var.to_owned(),
                })),
                SecretLookup::NotAllowed => Err(ResolveError::NotAllowed(SecretNotAllowed {
                    field,
                    var: var.to_owned(),
                })),
            }
        };
        let webhook_secret = secret("webhook_secret_env", Some(&self.webhook_secret_env))?;
        let credentials = match self.platform {
            PlatformKind::Shopify => Credentials::AccessToken(secret(
                "access_token_env",
                self.access_token_env.as_deref(),
            )?),
            PlatformKind::Woocommerce => Credentials::ConsumerKey {
                key: secret("consumer_key_env", self.consumer_key_env.as_deref())?,
                secret: secret("consumer_secret_env", self.consumer_secret_env.as_deref())?,
            },
        };
        Ok(Shop {
            id: self.id.clone(),
            platform: self.platform,
            channel: self.channel.clone(),
            base_url,
            api_version: self
                .api_version
                .clone()
                .unwrap_or_else(|| DEFAULT_SHOPIFY_API_VERSION.to_owned()),
            webhook_secret,
            credentials,
            items: HashMap::new(),
            config: self.clone(),
        })
    }
}

/// Why a shop cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Its configuration is invalid (written by hand into the bucket?).
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// A secret variable it names is not set.
    #[error(transparent)]
    Missing(#[from] MissingSecret),
    /// A secret variable it names is not one the connector may read.
    #[error(transparent)]
    NotAllowed(#[from] SecretNotAllowed),
}

/// A shop entry as written in the file: a [`ShopConfig`] and its items.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    id: String,
    platform: PlatformKind,
    channel: String,
    base_url: String,
    #[serde(default)]
    api_version: Option<String>,
    webhook_secret_env: String,
    #[serde(default)]
    access_token_env: Option<String>,
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

/// One shop, checked, with its secrets.
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
    /// SKU → platform ids, as the shops file lists them (the running connector reads the
    /// `CONNECTOR_ITEMS` bucket instead: see `crate::live`).
    pub items: HashMap<String, Item>,
    /// What it was made from (no secrets).
    pub config: ShopConfig,
}

impl Shop {
    /// The item mapped to `sku` in [`Shop::items`], if any.
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

/// Reads and checks the shops file named by `STOCKFLOW_CONNECTOR_SHOPS_FILE`, if set; errors
/// name the variable, the file, the shop and the field.
pub fn from_env(env: &Env) -> Result<Option<Vec<Shop>>, ConfigError> {
    let Some(path) = env.path(FILE_VAR) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
        var: FILE_VAR,
        path: path.clone(),
        source,
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_in(&text, env, &base)
        .map(Some)
        .map_err(|reason| invalid(format!("{}: {reason}", display(&path))))
}

/// One row of an items CSV file that was refused: its line number and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedRow {
    /// The line in the file (the header is line 1).
    pub line: u64,
    /// The SKU of the row, when it could be read.
    pub sku: Option<String>,
    /// Why (a field and its problem, or a CSV error).
    pub reason: String,
}

/// Reads CSV items (a header row naming the [`Item`] fields: `sku`, `inventory_item_id`,
/// `location_id`, `product_id`, `variation_id`, `location`) and checks each row for `platform`:
/// the rows that are good, and those refused with their line numbers. Only a missing or
/// unreadable header refuses the whole text.
pub fn read_items(
    reader: impl std::io::Read,
    platform: PlatformKind,
) -> Result<(Vec<Item>, Vec<RefusedRow>), String> {
    let mut reader = csv::Reader::from_reader(reader);
    let headers = reader
        .headers()
        .map_err(|e| format!("the header row cannot be read: {e}"))?
        .clone();
    let mut good: Vec<Item> = Vec::new();
    let mut refused = Vec::new();
    let mut seen = HashMap::new();
    for row in reader.records() {
        let (line, record) = match row {
            Ok(record) => (record.position().map_or(0, csv::Position::line), record),
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                refused.push(RefusedRow {
                    line,
                    sku: None,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let item: Item = match record.deserialize(Some(&headers)) {
            Ok(item) => item,
            Err(e) => {
                refused.push(RefusedRow {
                    line,
                    sku: record.get(0).map(str::to_owned),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Err(e) = check_item(platform, &item) {
            refused.push(RefusedRow {
                line,
                sku: Some(item.sku.clone()),
                reason: e.to_string(),
            });
            continue;
        }
        if let Some(first) = seen.insert(item.sku.clone(), line) {
            refused.push(RefusedRow {
                line,
                sku: Some(item.sku.clone()),
                reason: format!("sku: mapped already on line {first}"),
            });
            continue;
        }
        good.push(item);
    }
    Ok((good, refused))
}

/// Reads a CSV file of items (a header row naming the [`Item`] fields), unchecked.
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
pub fn is_token(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
    let config = ShopConfig {
        id: entry.id,
        platform: entry.platform,
        channel: entry.channel,
        base_url: entry.base_url,
        api_version: entry.api_version,
        webhook_secret_env: entry.webhook_secret_env,
        access_token_env: entry.access_token_env,
        consumer_key_env: entry.consumer_key_env,
        consumer_secret_env: entry.consumer_secret_env,
    };
    // The shops file is the deployment's own: every variable it names may be read.
    let mut shop = config
        .resolve(&|var| env.raw(var).map_or(SecretLookup::Unset, SecretLookup::Set))
        .map_err(|e| e.to_string())?;
    let mut items = HashMap::with_capacity(entry.items.len());
    for item in entry.items {
        check_item(config.platform, &item).map_err(|e| format!("items[{:?}]: {e}", item.sku))?;
        if items.insert(item.sku.clone(), item.clone()).is_some() {
            return Err(format!("items[{:?}]: sku: mapped twice", item.sku));
        }
    }
    shop.items = items;
    Ok(shop)
}

/// Whether `value` is `gid://shopify/<kind>/<number>`.
fn is_gid(value: &str, kind: &str) -> bool {
    value
        .strip_prefix("gid://shopify/")
        .and_then(|rest| rest.strip_prefix(kind))
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|id| {
            !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Whether `item` names what its platform needs, and only that; the error names the field.
pub fn check_item(platform: PlatformKind, item: &Item) -> Result<(), InvalidField> {
    if item.sku.is_empty() {
        return Err(invalid_field("sku", "required"));
    }
    stockflow_proto::validate::validate_sku(&item.sku).map_err(|e| invalid_field("sku", e))?;
    if let Some(location) = &item.location {
        stockflow_proto::validate::validate_location("location", location)
            .map_err(|e| invalid_field("location", e))?;
    }
    match platform {
        PlatformKind::Shopify => {
            let gid = |field: &'static str, value: &Option<String>, kind: &str| match value {
                Some(v) if is_gid(v, kind) => Ok(()),
                _ => Err(invalid_field(
                    field,
                    format!("a gid://shopify/{kind}/<id> is required"),
                )),
            };
            gid(
                "inventory_item_id",
                &item.inventory_item_id,
                "InventoryItem",
            )?;
            gid("location_id", &item.location_id, "Location")?;
            if item.product_id.is_some() {
                return Err(invalid_field("product_id", "not a field of Shopify items"));
            }
            if item.variation_id.is_some() {
                return Err(invalid_field(
                    "variation_id",
                    "not a field of Shopify items",
                ));
            }
            Ok(())
        }
        PlatformKind::Woocommerce => {
            match item.product_id {
                Some(id) if id > 0 => {}
                _ => return Err(invalid_field("product_id", "required")),
            }
            if item.variation_id == Some(0) {
                return Err(invalid_field(
                    "variation_id",
                    "a variation id is a positive number",
                ));
            }
            if item.inventory_item_id.is_some() {
                return Err(invalid_field(
                    "inventory_item_id",
                    "not a field of WooCommerce items",
                ));
            }
            if item.location_id.is_some() {
                return Err(invalid_field(
                    "location_id",
                    "not a field of WooCommerce items",
                ));
            }
            Ok(())
        }
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

    #[test]
    fn a_shop_in_the_bucket_is_checked_field_by_field() {
        let shop = ShopConfig {
            id: "acme".into(),
            platform: PlatformKind::Shopify,
            channel: "web".into(),
            base_url: "https://acme.myshopify.com".into(),
            api_version: Some("2026-04".into()),
            webhook_secret_env: "ACME_SECRET".into(),
            access_token_env: Some("ACME_TOKEN".into()),
            consumer_key_env: None,
            consumer_secret_env: None,
        };
        shop.validate().expect("valid");
        let field = |change: fn(&mut ShopConfig)| {
            let mut bad = shop.clone();
            change(&mut bad);
            bad.validate().expect_err("refused").field
        };
        // A secret pasted where its variable's name belongs.
        assert_eq!(
            field(|s| s.access_token_env = Some("shpat_0123abcd".into())),
            "access_token_env"
        );
        assert_eq!(field(|s| s.access_token_env = None), "access_token_env");
        // stockflow's own settings are never a shop's secret.
        assert_eq!(
            field(|s| s.access_token_env = Some("STOCKFLOW_NATS_PASSWORD".into())),
            "access_token_env"
        );
        assert_eq!(
            field(|s| s.webhook_secret_env = "STOCKFLOW_GATEWAY_TOKENS".into()),
            "webhook_secret_env"
        );
        // Credentials in a query (WooCommerce's query-string auth) or a fragment.
        assert_eq!(
            field(|s| s.base_url =
                "https://shop.example/?consumer_key=ck_1&consumer_secret=cs_2".into()),
            "base_url"
        );
        assert_eq!(
            field(|s| s.base_url = "https://shop.example/#cs_2".into()),
            "base_url"
        );
        assert_eq!(
            field(|s| s.base_url = "https://shop.example/?".into()),
            "base_url"
        );
        assert_eq!(
            field(|s| s.consumer_key_env = Some("KEY".into())),
            "consumer_key_env"
        );
        assert_eq!(
            field(|s| s.api_version = Some("2026-4".into())),
            "api_version"
        );
        assert_eq!(field(|s| s.id = "a.b".into()), "id");
        let missing = shop
            .resolve(&|var| match var {
                "ACME_SECRET" => SecretLookup::Set("s".to_owned()),
                _ => SecretLookup::Unset,
            })
            .expect_err("no token");
        assert_eq!(
            missing.to_string(),
            "access_token_env: the variable ACME_TOKEN is not set"
        );
        let refused = shop
            .resolve(&|var| match var {
                "ACME_SECRET" => SecretLookup::Set("s".to_owned()),
                _ => SecretLookup::NotAllowed,
            })
            .expect_err("not allowed");
        assert_eq!(
            refused.to_string(),
            "access_token_env: the variable ACME_TOKEN is not on STOCKFLOW_CONNECTOR_SECRET_VARIABLES (nor named by the shops file)"
        );
        let woo = |item: &str| -> Item { serde_json::from_str(item).expect("item") };
        assert_eq!(
            check_item(
                PlatformKind::Woocommerce,
                &woo(r#"{"sku": "A", "product_id": 3, "location_id": "gid://shopify/Location/1"}"#)
            )
            .expect_err("foreign field")
            .field,
            "location_id"
        );
        assert_eq!(
            check_item(PlatformKind::Shopify, &woo(r#"{"sku": "A", "inventory_item_id": "gid://shopify/InventoryItem/12a", "location_id": "gid://shopify/Location/1"}"#))
                .expect_err("not a number")
                .field,
            "inventory_item_id"
        );
        let (good, refused) = read_items(
            "sku,product_id,variation_id\nA,3,\nB,,\nA,4,5\n".as_bytes(),
            PlatformKind::Woocommerce,
        )
        .expect("header");
        assert_eq!(good.len(), 1);
        assert_eq!(
            refused
                .iter()
                .map(|r| (r.line, r.reason.split(':').next().unwrap_or_default()))
                .collect::<Vec<_>>(),
            [(3, "product_id"), (4, "sku")]
        );
    }
}
