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
    /// Units expected on open purchase orders (not on hand, not available).
    pub incoming: i64,
    /// The earliest expected date of those purchase orders, ms since the Unix epoch (0: none).
    pub incoming_expected_at_ms: i64,
    /// Unsellable units: damaged.
    pub damaged: i64,
    /// Unsellable units: waiting for quality control.
    pub quality_control: i64,
    /// Unsellable units: held.
    pub held: i64,
}

impl LocationLevels {
    /// `on_hand - reserved - safety_stock - unsellable`, signed.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved - self.safety_stock - self.unsellable()
    }

    /// Units on hand that may not be sold: damaged + quality control + held.
    pub fn unsellable(&self) -> i64 {
        self.damaged + self.quality_control + self.held
    }
}

/// One purchase order still outstanding at one location, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPurchaseOrder {
    /// Location.
    pub location: String,
    /// The purchase-order reference.
    pub reference: String,
    /// Units still expected.
    pub outstanding: i64,
    /// Expected date, ms since the Unix epoch.
    pub expected_at_ms: i64,
}

/// The open purchase orders in a stock hash (`po:<location>\x1f<po>`, `pd:…`), sorted by
/// (location, reference).
pub fn purchase_orders(stock: &BTreeMap<String, i64>) -> Vec<OpenPurchaseOrder> {
    let mut out = Vec::new();
    for (field, outstanding) in stock {
        let Some(rest) = field.strip_prefix("po:") else {
            continue;
        };
        let Some((location, reference)) = rest.split_once('\u{1f}') else {
            continue;
        };
        out.push(OpenPurchaseOrder {
            location: location.to_owned(),
            reference: reference.to_owned(),
            outstanding: *outstanding,
            expected_at_ms: stock.get(&format!("pd:{rest}")).copied().unwrap_or(0),
        });
    }
    out
}

/// Reads the level fields of a stock hash into `out`, by location: `oh:`, `rs:`, `in:`, `et:`,
/// `dm:`, `qc:`, `hd:` (purchase orders are left to [`purchase_orders`]).
pub fn fold_stock_hash(stock: &BTreeMap<String, i64>, out: &mut BTreeMap<String, LocationLevels>) {
    for (field, value) in stock {
        let Some((prefix, location)) = field.split_once(':') else {
            continue;
        };
        if !matches!(prefix, "oh" | "rs" | "in" | "et" | "dm" | "qc" | "hd") {
            continue;
        }
        let l = out.entry(location.to_owned()).or_default();
        let slot = match prefix {
            "oh" => &mut l.on_hand,
            "rs" => &mut l.reserved,
            "in" => &mut l.incoming,
            "et" => &mut l.incoming_expected_at_ms,
            "dm" => &mut l.damaged,
            "qc" => &mut l.quality_control,
            _ => &mut l.held,
        };
        *slot = *value;
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
    fold_stock_hash(&stock, &mut out);
    for (location, levels) in &mut out {
        levels.safety_stock = policy
            .get(&format!("ss:{location}"))
            .or_else(|| policy.get("ss"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    Ok(out)
}
