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
    /// Units of order lines backordered here, waiting for stock (not part of any other level).
    pub backordered: i64,
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

/// The levels of a SKU over `locations`: every quantity summed; the expected date is the
/// earliest of any location (0 when none has one). Its [`LocationLevels::available`] is the sum
/// of the locations' (signed: a location below zero lowers it). What `stockctl stock` and the
/// gateway's `GET /v1/stock/{sku}` show as totals.
pub fn totals<'a>(locations: impl IntoIterator<Item = &'a LocationLevels>) -> LocationLevels {
    locations
        .into_iter()
        .fold(LocationLevels::default(), |sum, l| LocationLevels {
            on_hand: sum.on_hand + l.on_hand,
            reserved: sum.reserved + l.reserved,
            safety_stock: sum.safety_stock + l.safety_stock,
            incoming: sum.incoming + l.incoming,
            incoming_expected_at_ms: match (sum.incoming_expected_at_ms, l.incoming_expected_at_ms)
            {
                (0, t) | (t, 0) => t,
                (a, b) => a.min(b),
            },
            damaged: sum.damaged + l.damaged,
            quality_control: sum.quality_control + l.quality_control,
            held: sum.held + l.held,
            backordered: sum.backordered + l.backordered,
        })
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
        if !matches!(
            prefix,
            "oh" | "rs" | "in" | "et" | "dm" | "qc" | "hd" | "bo"
        ) {
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
            "bo" => &mut l.backordered,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_units_and_keep_the_earliest_date() {
        let a = LocationLevels {
            on_hand: 5,
            reserved: 2,
            safety_stock: 1,
            incoming: 10,
            incoming_expected_at_ms: 300,
            damaged: 1,
            ..Default::default()
        };
        let b = LocationLevels {
            on_hand: -1,
            incoming: 4,
            incoming_expected_at_ms: 200,
            quality_control: 2,
            held: 3,
            ..Default::default()
        };
        let none = LocationLevels {
            on_hand: 1,
            ..Default::default()
        };
        let t = totals([&a, &none, &b]);
        assert_eq!(
            t,
            LocationLevels {
                on_hand: 5,
                reserved: 2,
                safety_stock: 1,
                incoming: 14,
                incoming_expected_at_ms: 200,
                damaged: 1,
                quality_control: 2,
                held: 3,
                backordered: 0,
            }
        );
        assert_eq!(
            t.available(),
            a.available() + b.available() + none.available()
        );
        assert_eq!(totals([&none]).incoming_expected_at_ms, 0);
        assert_eq!(totals([]), LocationLevels::default());
    }
}
