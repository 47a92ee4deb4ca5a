//! Shops and item mappings kept durably in NATS KV: the `CONNECTOR_SHOPS` bucket (one key per
//! shop, its [`ShopConfig`] as JSON) and the `CONNECTOR_ITEMS` bucket (one key per shop and SKU,
//! [`item_key`], its [`Item`] as JSON). `stockctl connectors shops|items …`, the gateway's
//! `/v1/connectors/{shop}…` routes and the shops-file seed write them through [`ConfigStore`],
//! which checks every value first (errors name the field); the connector watches both
//! (`crate::live`). Secrets are never stored: a shop names the variables that hold them.
//!
//! The connector reports each shop it was configured with in `CONNECTOR_STATE`
//! ([`ShopReport`]): running, or skipped and why.

use std::collections::HashMap;

use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use stockflow_shared::topology;

use crate::shops::{check_item, read_items, InvalidField, Item, RefusedRow, ShopConfig};

/// The shops bucket.
pub const SHOPS: &str = topology::CONNECTOR_SHOPS;
/// The item mappings bucket.
pub const ITEMS: &str = topology::CONNECTOR_ITEMS;
/// The bucket of what the connector made of each shop.
pub const STATE: &str = topology::CONNECTOR_STATE;

/// The key of `sku`'s mapping in `shop`: `<shop>.<sku>` when the SKU is made of letters,
/// digits, `-` and `_`, else `<shop>.=<base64url of the SKU>` (a key allows only
/// `[-/_=.a-zA-Z0-9]`). The value holds the SKU itself; the key is only its address.
pub fn item_key(shop: &str, sku: &str) -> String {
    if crate::shops::is_token(sku) {
        format!("{shop}.{sku}")
    } else {
        format!(
            "{shop}.={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sku.as_bytes())
        )
    }
}

/// The shop an item key belongs to.
pub fn shop_of_item_key(key: &str) -> Option<&str> {
    key.split_once('.').map(|(shop, _)| shop)
}

/// Why a configuration operation failed: the variant says what the caller can do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A bucket was never declared: run `stockctl setup` or start a worker.
    #[error("the key-value bucket {0} does not exist: `stockctl setup` (or any worker's start) declares it")]
    Missing(&'static str),
    /// No such shop.
    #[error("no connector shop {0:?}")]
    NoShop(String),
    /// The shop maps no such SKU.
    #[error("shop {shop:?} maps no SKU {sku:?}")]
    NoItem {
        /// The shop.
        shop: String,
        /// The SKU.
        sku: String,
    },
    /// A value is wrong; the field says which.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// A CSV text whose header cannot be read.
    #[error("the CSV cannot be read: {0}")]
    Csv(String),
    /// A stored value is not readable (written by hand?).
    #[error("the stored value {key:?} of bucket {bucket} is not readable: {reason}")]
    Unreadable {
        /// Its bucket.
        bucket: &'static str,
        /// Its key.
        key: String,
        /// The parse error.
        reason: String,
    },
    /// JetStream refused or did not answer: try again later.
    #[error("{action}: {source}")]
    Unavailable {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: async_nats::Error,
    },
}

fn unavailable<E: Into<async_nats::Error>>(
    action: impl Into<String>,
) -> impl FnOnce(E) -> StoreError {
    let action = action.into();
    move |e| StoreError::Unavailable {
        action,
        source: e.into(),
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Rows written (new or changed mappings).
    pub imported: usize,
    /// Rows that were stored already, as they are.
    pub unchanged: usize,
    /// Rows refused, with their line numbers; the others were imported.
    pub refused: Vec<RefusedRow>,
}

/// What the connector made of a shop (`CONNECTOR_STATE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopReport {
    /// `running` or `skipped`.
    pub state: String,
    /// Why it was skipped (a field and the NAME of a variable; never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The newest `CONNECTOR_ITEMS` revision the connector has applied to its mappings (the
    /// bucket's stream sequence): a writer that reads its write's revision can wait for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_revision: Option<u64>,
}

/// The connector's configuration buckets.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    /// `CONNECTOR_SHOPS`.
    pub shops: kv::Store,
    /// `CONNECTOR_ITEMS`.
    pub items: kv::Store,
    /// `CONNECTOR_STATE`.
    pub state: kv::Store,
}

async fn open_bucket(
    js: &jetstream::Context,
    bucket: &'static str,
) -> Result<kv::Store, StoreError> {
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
            return Err(StoreError::Missing(bucket))
        }
        Err(e) => return Err(unavailable(format!("looking up bucket {bucket}"))(e)),
    }
    js.get_key_value(bucket)
        .await
        .map_err(unavailable(format!("opening bucket {bucket}")))
}

fn parse<T: serde::de::DeserializeOwned>(
    bucket: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Unreadable {
        bucket,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn to_json<T: Serialize>(
    bucket: &'static str,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Unreadable {
        bucket,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

async fn keys(store: &kv::Store, bucket: &str) -> Result<Vec<String>, StoreError> {
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(unavailable(format!("listing bucket {bucket}")))?
        .try_collect()
        .await
        .map_err(unavailable(format!("listing bucket {bucket}")))?;
    keys.sort();
    Ok(keys)
}

impl ConfigStore {
    /// Opens the buckets; [`StoreError::Missing`] when one was never declared.
    pub async fn open(js: &jetstream::Context) -> Result<Self, StoreError> {
        Ok(Self {
            shops: open_bucket(js, SHOPS).await?,
            items: open_bucket(js, ITEMS).await?,
            state: open_bucket(js, STATE).await?,
        })
    }

    /// Every shop, by id.
    pub async fn shops(&self) -> Result<Vec<ShopConfig>, StoreError> {
        let mut all = Vec::new();
        for key in keys(&self.shops, SHOPS).await? {
            // Removed between the listing and the read: not listed.
            if let Some(shop) = self.find_shop(&key).await? {
                all.push(shop);
            }
        }
        Ok(all)
    }

    async fn find_shop(&self, id: &str) -> Result<Option<ShopConfig>, StoreError> {
        if !crate::shops::is_token(id) {
            return Ok(None);
        }
        let bytes = self
            .shops
            .get(id)
            .await
            .map_err(unavailable(format!("reading {id} in bucket {SHOPS}")))?;
        bytes.map(|b| parse(SHOPS, id, &b)).transpose()
    }

    /// The shop `id`.
    pub async fn shop(&self, id: &str) -> Result<ShopConfig, StoreError> {
        self.find_shop(id)
            .await?
            .ok_or_else(|| StoreError::NoShop(id.to_owned()))
    }

    /// Checks and stores `shop` (new or replacing); `true` when the stored value changed. A shop
    /// whose platform changes keeps no items of the other platform: they are refused at the next
    /// change, so the platform of a shop with items cannot change.
    pub async fn put_shop(&self, shop: &ShopConfig) -> Result<bool, StoreError> {
        shop.validate()?;
        let old = self.find_shop(&shop.id).await?;
        if old.as_ref() == Some(shop) {
            return Ok(false);
        }
        if let Some(old) = old.filter(|old| old.platform != shop.platform) {
            if !self.item_keys(&shop.id).await?.is_empty() {
                return Err(InvalidField {
                    field: "platform",
                    reason: format!(
                        "shop {:?} is a {} shop with item mappings: remove them first",
                        shop.id,
                        old.platform.as_str()
                    ),
                }
                .into());
            }
        }
        let value = to_json(SHOPS, &shop.id, shop)?;
        self.shops
            .put(&shop.id, value.into())
            .await
            .map_err(unavailable(format!(
                "storing {} in bucket {SHOPS}",
                shop.id
            )))?;
        Ok(true)
    }

    /// Removes the shop `id` and its item mappings; returns how many mappings went with it.
    pub async fn remove_shop(&self, id: &str) -> Result<usize, StoreError> {
        self.shop(id).await?;
        let keys = self.item_keys(id).await?;
        for key in &keys {
            self.items
                .delete(key)
                .await
                .map_err(unavailable(format!("deleting {key} in bucket {ITEMS}")))?;
        }
        self.shops
            .delete(id)
            .await
            .map_err(unavailable(format!("deleting {id} in bucket {SHOPS}")))?;
        Ok(keys.len())
    }

    async fn item_keys(&self, shop: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{shop}.");
        Ok(keys(&self.items, ITEMS)
            .await?
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect())
    }

    /// The item mappings of `shop`, by SKU.
    pub async fn items(&self, shop: &str) -> Result<Vec<Item>, StoreError> {
        self.shop(shop).await?;
        let mut all = Vec::new();
        for key in self.item_keys(shop).await? {
            if let Some(item) = self.find_item(&key).await? {
                all.push(item);
            }
        }
        all.sort_by(|a, b| a.sku.cmp(&b.sku));
        Ok(all)
    }

    async fn find_item(&self, key: &str) -> Result<Option<Item>, StoreError> {
        let bytes = self
            .items
            .get(key)
            .await
            .map_err(unavailable(format!("reading {key} in bucket {ITEMS}")))?;
        bytes.map(|b| parse(ITEMS, key, &b)).transpose()
    }

    /// The newest revision of `CONNECTOR_ITEMS` (its stream's last sequence): every write to it
    /// has a revision no higher.
    pub async fn items_revision(&self) -> Result<u64, StoreError> {
        let status = self
            .items
            .status()
            .await
            .map_err(unavailable(format!("reading the status of bucket {ITEMS}")))?;
        Ok(status.info.state.last_sequence)
    }

    /// Every item mapping of every shop, by shop: what the connector starts with.
    pub async fn all_items(&self) -> Result<HashMap<String, HashMap<String, Item>>, StoreError> {
        let mut all: HashMap<String, HashMap<String, Item>> = HashMap::new();
        for key in keys(&self.items, ITEMS).await? {
            let Some(shop) = shop_of_item_key(&key) else {
                continue;
            };
            if let Some(item) = self.find_item(&key).await? {
                all.entry(shop.to_owned())
                    .or_default()
                    .insert(item.sku.clone(), item);
            }
        }
        Ok(all)
    }

    /// Checks `item` against the shop's platform and stores it; `true` when the stored value
    /// changed.
    pub async fn put_item(&self, shop: &str, item: &Item) -> Result<bool, StoreError> {
        let config = self.shop(shop).await?;
        check_item(config.platform, item)?;
        self.write_item(shop, item).await
    }

    async fn write_item(&self, shop: &str, item: &Item) -> Result<bool, StoreError> {
        let key = item_key(shop, &item.sku);
        if self.find_item(&key).await?.as_ref() == Some(item) {
            return Ok(false);
        }
        let value = to_json(ITEMS, &key, item)?;
        self.items
            .put(&key, value.into())
            .await
            .map_err(unavailable(format!("storing {key} in bucket {ITEMS}")))?;
        Ok(true)
    }

    /// Removes the mapping of `sku` in `shop`.
    pub async fn remove_item(&self, shop: &str, sku: &str) -> Result<(), StoreError> {
        let key = item_key(shop, sku);
        if self.find_item(&key).await?.is_none() {
            self.shop(shop).await?;
            return Err(StoreError::NoItem {
                shop: shop.to_owned(),
                sku: sku.to_owned(),
            });
        }
        self.items
            .delete(&key)
            .await
            .map_err(unavailable(format!("deleting {key} in bucket {ITEMS}")))
    }

    /// Imports CSV rows (the columns of the shops file's `items_csv`) into `shop`: each good row
    /// is stored (a row stored already as it is is left alone, so importing a file twice changes
    /// nothing), each bad one reported with its line number.
    pub async fn import(
        &self,
        shop: &str,
        csv: impl std::io::Read,
    ) -> Result<ImportReport, StoreError> {
        let config = self.shop(shop).await?;
        let (items, refused) = read_items(csv, config.platform).map_err(StoreError::Csv)?;
        let mut report = ImportReport {
            refused,
            ..ImportReport::default()
        };
        for item in &items {
            if self.write_item(shop, item).await? {
                report.imported += 1;
            } else {
                report.unchanged += 1;
            }
        }
        Ok(report)
    }

    /// Records what the connector made of `shop`.
    pub async fn report(&self, shop: &str, report: &ShopReport) -> Result<(), StoreError> {
        let value = to_json(STATE, shop, report)?;
        self.state
            .put(shop, value.into())
            .await
            .map(|_| ())
            .map_err(unavailable(format!("storing {shop} in bucket {STATE}")))
    }

    /// Forgets the report of a removed shop.
    pub async fn forget(&self, shop: &str) -> Result<(), StoreError> {
        self.state
            .delete(shop)
            .await
            .map_err(unavailable(format!("deleting {shop} in bucket {STATE}")))
    }

    /// What the connector made of `shop`, if it reported.
    pub async fn reported(&self, shop: &str) -> Result<Option<ShopReport>, StoreError> {
        let bytes = self
            .state
            .get(shop)
            .await
            .map_err(unavailable(format!("reading {shop} in bucket {STATE}")))?;
        bytes.map(|b| parse(STATE, shop, &b)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_are_valid_keys_and_name_their_shop() {
        assert_eq!(item_key("acme", "TEE-M_1"), "acme.TEE-M_1");
        let odd = item_key("acme", "tee/m é.1");
        assert!(odd.starts_with("acme.="), "{odd}");
        assert!(odd[5..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)));
        assert_eq!(shop_of_item_key(&odd), Some("acme"));
        assert_ne!(item_key("acme", "a.b"), item_key("acme", "a-b"));
    }
}
