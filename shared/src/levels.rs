//! Reading a SKU's stock levels back from Redis: what `stockctl stock`, the gateway's queries and
//! the tests see.

use std::collections::BTreeMap;

use anyhow::Context as _;

use crate::keys::Keys;

/// Levels of one location, as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocationLevels {
    /// Units present.
    pub on_hand: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// Units kept back.
    pub safety_stock: i64,
}

impl LocationLevels {
    /// `on_hand - reserved - safety_stock`, signed.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved - self.safety_stock
    }
}

/// Every location of `sku` with its levels, sorted by location.
pub async fn read_levels(
    redis: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
    sku: &str,
) -> anyhow::Result<BTreeMap<String, LocationLevels>> {
    let stock: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(keys.stock(sku))
        .query_async(redis)
        .await
        .context("reading stock levels")?;
    // Mixed values: numbers, and the `prio` list of locations.
    let policy: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.policy(sku))
        .query_async(redis)
        .await
        .context("reading stock policy")?;
    let mut out: BTreeMap<String, LocationLevels> = BTreeMap::new();
    for (field, value) in stock {
        if let Some(location) = field.strip_prefix("oh:") {
            out.entry(location.to_owned()).or_default().on_hand = value;
        } else if let Some(location) = field.strip_prefix("rs:") {
            out.entry(location.to_owned()).or_default().reserved = value;
        }
    }
    for (location, levels) in &mut out {
        levels.safety_stock = policy
            .get(&format!("ss:{location}"))
            .or_else(|| policy.get("ss"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    Ok(out)
}
