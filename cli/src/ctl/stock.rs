//! `stockctl stock <sku>`: a SKU's levels per location as a table, with totals, or as JSON;
//! with `--at <time>`, the levels at that time from the ledger ([`stockflow_ops::history`]).

use std::collections::BTreeMap;

use serde_json::{json, Value};
use stockflow_shared::{
    keys::Keys,
    levels::{read_levels, LocationLevels},
};

use super::{Format, Outcome};

/// Prints the levels of `sku`; [`Outcome::NotFound`] when no stock is recorded for it.
pub async fn run(settings: &super::Settings, sku: &str, format: Format) -> anyhow::Result<Outcome> {
    let redis_settings = &settings.state()?.redis;
    let mut redis = redis_settings.connect().await?;
    let keys = Keys::new(redis_settings.key_prefix.clone());
    let levels = read_levels(&mut redis, &keys, sku).await?;
    // A kit's on_hand is what its components make: say so above its levels.
    let kit: Option<String> = redis::cmd("HGET")
        .arg(keys.policy(sku))
        .arg("kit")
        .query_async(&mut redis)
        .await?;
    let kit = kit
        .as_deref()
        .and_then(stockflow_proto::input::fact::decode_kit);
    match format {
        Format::Json => {
            let mut json = to_json(sku, &levels);
            if let Some(components) = &kit {
                json["kit"] = components
                    .iter()
                    .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
                    .collect::<Vec<_>>()
                    .into();
            }
            crate::outln!("{json}")
        }
        Format::Table if levels.is_empty() => eprintln!("{sku}: no stock recorded"),
        Format::Table => {
            if let Some(components) = &kit {
                crate::outln!(
                    "{} (on_hand: kits its components make)",
                    super::kits::kit_line(sku, components)
                );
            }
            crate::out!("{}", table(sku, &levels))
        }
    }
    Ok(if levels.is_empty() {
        Outcome::NotFound
    } else {
        Outcome::Done
    })
}

/// Prints the levels of `sku` at time `at` from the ledger: each location's levels after its
/// newest entry applied at or before `at`; a location with no entry by then is not listed.
/// [`Outcome::NotFound`] when no location had an entry by then.
pub async fn run_at(
    js: &async_nats::jetstream::Context,
    sku: &str,
    at: &str,
    format: Format,
) -> anyhow::Result<Outcome> {
    let at_ms = stockflow_ops::history::parse_time("--at", at)?;
    let levels: BTreeMap<String, LocationLevels> =
        stockflow_ops::history::levels_at(js, sku, at_ms, None)
            .await?
            .into_iter()
            .map(|(location, entry)| {
                let after = entry.change.after.unwrap_or_default();
                let levels = LocationLevels {
                    on_hand: after.on_hand,
                    reserved: after.reserved,
                    safety_stock: after.safety_stock,
                    incoming: after.incoming,
                    incoming_expected_at_ms: after.incoming_expected_at_ms,
                    damaged: after.damaged,
                    quality_control: after.quality_control,
                    held: after.held,
                    // Ledger levels do not carry the units waiting for stock.
                    backordered: 0,
                };
                (location, levels)
            })
            .collect();
    match format {
        Format::Json => {
            let mut json = to_json(sku, &levels);
            json["at_ms"] = at_ms.into();
            crate::outln!("{json}");
        }
        Format::Table if levels.is_empty() => eprintln!("{sku}: no stock recorded at {at}"),
        Format::Table => {
            eprintln!("at {at} (from the ledger)");
            crate::out!("{}", table(sku, &levels));
        }
    }
    Ok(if levels.is_empty() {
        Outcome::NotFound
    } else {
        Outcome::Done
    })
}

/// The sum of every location's levels.
fn total(levels: &BTreeMap<String, LocationLevels>) -> LocationLevels {
    stockflow_shared::levels::totals(levels.values())
}

fn levels_json(l: &LocationLevels) -> Value {
    let mut json = json!({
        "on_hand": l.on_hand,
        "reserved": l.reserved,
        "safety_stock": l.safety_stock,
        "available": l.available(),
    });
    // Incoming and unsellable units only where there are some.
    for (name, value) in [
        ("incoming", l.incoming),
        ("incoming_expected_at_ms", l.incoming_expected_at_ms),
        ("damaged", l.damaged),
        ("quality_control", l.quality_control),
        ("held", l.held),
        ("backordered", l.backordered),
    ] {
        if value != 0 {
            json[name] = value.into();
        }
    }
    json
}

/// Whether any location has incoming or unsellable units: the table shows their columns then.
fn has_more(levels: &BTreeMap<String, LocationLevels>) -> bool {
    levels
        .values()
        .any(|l| l.incoming != 0 || l.unsellable() != 0)
}

/// `stock -o json`: `{"sku", "locations": [{"location", "on_hand", "reserved", "safety_stock",
/// "available"}], "total": {"on_hand", ...}}`; no locations when no stock is recorded. A
/// location with incoming or unsellable units also has `incoming`, `incoming_expected_at_ms`,
/// `damaged`, `quality_control`, `held` (each only when not 0).
pub fn to_json(sku: &str, levels: &BTreeMap<String, LocationLevels>) -> Value {
    let locations: Vec<Value> = levels
        .iter()
        .map(|(location, l)| {
            let mut row = levels_json(l);
            row["location"] = location.as_str().into();
            row
        })
        .collect();
    json!({
        "sku": sku,
        "locations": locations,
        "total": levels_json(&total(levels)),
    })
}

/// The table `stockctl stock` prints: one row per location, then the totals.
pub fn table(sku: &str, levels: &BTreeMap<String, LocationLevels>) -> String {
    if levels.is_empty() {
        return format!("{sku}: no stock recorded\n");
    }
    let total = total(levels);
    let width = levels
        .keys()
        .map(|l| l.chars().count())
        .chain(["location".len(), "total".len()])
        .max()
        .unwrap_or(8);
    // Incoming and unsellable columns only when some location has such units, so the usual
    // table stays as it was.
    let more = has_more(levels);
    let row = |name: &str, l: &LocationLevels| {
        let mut line = format!(
            "{name:<width$}  {:>12}  {:>12}  {:>12}  {:>12}",
            l.on_hand,
            l.reserved,
            l.safety_stock,
            l.available()
        );
        if more {
            line.push_str(&format!(
                "  {:>12}  {:>12}  {:>12}  {:>12}",
                l.incoming, l.damaged, l.quality_control, l.held
            ));
        }
        line.push('\n');
        line
    };
    let mut out = format!("{sku}\n");
    out.push_str(&format!(
        "{:<width$}  {:>12}  {:>12}  {:>12}  {:>12}",
        "location", "on_hand", "reserved", "safety_stock", "available"
    ));
    if more {
        out.push_str(&format!(
            "  {:>12}  {:>12}  {:>12}  {:>12}",
            "incoming", "damaged", "quality_ctrl", "held"
        ));
    }
    out.push('\n');
    for (location, l) in levels {
        out.push_str(&row(location, l));
    }
    let columns = if more { 8 } else { 4 };
    out.push_str(&format!("{}\n", "-".repeat(width + columns * 14)));
    out.push_str(&row("total", &total));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_totals() {
        let levels = BTreeMap::from([
            (
                "store-1".to_owned(),
                LocationLevels {
                    on_hand: 10,
                    reserved: 2,
                    safety_stock: 1,
                    ..Default::default()
                },
            ),
            (
                "wh".to_owned(),
                LocationLevels {
                    on_hand: 5,
                    reserved: 0,
                    safety_stock: 0,
                    ..Default::default()
                },
            ),
        ]);
        let text = table("A1", &levels);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1],
            [
                "location",
                "on_hand",
                "reserved",
                "safety_stock",
                "available"
            ]
        );
        assert_eq!(lines[2], ["store-1", "10", "2", "1", "7"]);
        assert_eq!(lines[5], ["total", "15", "2", "1", "12"]);
        assert_eq!(table("B", &BTreeMap::new()), "B: no stock recorded\n");
        let json = to_json("A1", &levels);
        assert_eq!(json["locations"][0]["location"], "store-1");
        assert_eq!(json["locations"][0]["available"], 7);
        assert_eq!(json["total"]["on_hand"], 15);
        assert_eq!(to_json("B", &BTreeMap::new())["locations"], json!([]));
    }

    #[test]
    fn incoming_and_unsellable_columns_appear_when_there_are_some() {
        let levels = BTreeMap::from([(
            "wh".to_owned(),
            LocationLevels {
                on_hand: 10,
                incoming: 6,
                incoming_expected_at_ms: 1_700_000_000_000,
                damaged: 2,
                ..Default::default()
            },
        )]);
        let text = table("A1", &levels);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[1][5..],
            ["incoming", "damaged", "quality_ctrl", "held"]
        );
        assert_eq!(lines[2], ["wh", "10", "0", "0", "8", "6", "2", "0", "0"]);
        let json = to_json("A1", &levels);
        assert_eq!(json["locations"][0]["available"], 8);
        assert_eq!(json["locations"][0]["damaged"], 2);
        assert_eq!(json["total"]["incoming"], 6);
        assert!(json["locations"][0].get("held").is_none());
    }
}
