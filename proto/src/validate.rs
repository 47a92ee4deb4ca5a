//! Limits and checks every entry point applies to input (workers, gateway, CLI), so a value is
//! judged the same wherever it arrives. Each check returns a reason that names the field.

use crate::{
    subjects::MAX_SKU_BYTES,
    v1::{AvailabilityRules, Channel, ChannelKind, EventMeta, Reason},
};

/// Largest quantity in one fact, in units.
pub const MAX_QUANTITY: i64 = 1_000_000_000;
/// Largest magnitude of a stored level (on_hand), in units. Redis scripts compute in Lua
/// doubles, exact up to 2^53 (about 9 * 10^15); a change that would take a level beyond
/// ±10^15 is refused. The scripts' prelude holds the same number.
pub const MAX_LEVEL: i64 = 1_000_000_000_000_000;
// Every integer up to 2^53 is exact in a double.
const _: () = assert!(MAX_LEVEL < 1 << 53);
/// Longest `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Longest location, in bytes.
pub const MAX_LOCATION_BYTES: usize = 64;
/// Longest `source`, in bytes.
pub const MAX_SOURCE_BYTES: usize = 128;
/// Longest `reference`, in bytes.
pub const MAX_REFERENCE_BYTES: usize = 512;

/// Checks the envelope every input event carries.
pub fn validate_meta(meta: &EventMeta) -> Result<(), String> {
    meta_fault(meta).map_err(|(_, reason)| reason)
}

/// [`validate_meta`], also naming the field at fault: `event_id`, `source` or `reference`.
pub(crate) fn meta_fault(meta: &EventMeta) -> Result<(), (&'static str, String)> {
    let id = &meta.event_id;
    if id.is_empty() {
        return Err(("event_id", "event_id is missing".into()));
    }
    if id.len() > MAX_EVENT_ID_BYTES {
        return Err((
            "event_id",
            format!(
                "event_id is {} bytes, at most {MAX_EVENT_ID_BYTES}",
                id.len()
            ),
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            "event_id",
            "event_id must be printable ASCII without spaces".into(),
        ));
    }
    if meta.source.len() > MAX_SOURCE_BYTES {
        return Err((
            "source",
            format!("source is longer than {MAX_SOURCE_BYTES} bytes"),
        ));
    }
    if meta.reference.len() > MAX_REFERENCE_BYTES {
        return Err((
            "reference",
            format!("reference is longer than {MAX_REFERENCE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The envelope's `reason` is a value of the contract's `Reason` enum. Protobuf keeps a value
/// this version does not define as a bare number; applying it under some guessed meaning would
/// file the change under the wrong reason, so it is refused (dead-lettered as `unknown_enum`).
pub fn validate_reason(meta: &EventMeta) -> Result<(), String> {
    match Reason::try_from(meta.reason) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "reason {} is not a value of stockflow.v1.Reason (0..={}) this version knows",
            meta.reason,
            Reason::OpeningBalance as i32
        )),
    }
}

/// A SKU is any non-empty UTF-8 string of at most 128 bytes without control characters (they
/// separate fields in the order records kept in Redis, and have no place in a product code).
pub fn validate_sku(sku: &str) -> Result<(), String> {
    if sku.is_empty() {
        return Err("sku is missing".into());
    }
    if sku.len() > MAX_SKU_BYTES {
        return Err(format!(
            "sku is {} bytes, at most {MAX_SKU_BYTES}",
            sku.len()
        ));
    }
    if sku.chars().any(char::is_control) {
        return Err("sku contains control characters".into());
    }
    Ok(())
}

/// A location is 1..=64 bytes without control characters.
pub fn validate_location(field: &str, location: &str) -> Result<(), String> {
    if location.is_empty() {
        return Err(format!("{field} is missing"));
    }
    if location.len() > MAX_LOCATION_BYTES {
        return Err(format!("{field} is longer than {MAX_LOCATION_BYTES} bytes"));
    }
    if location.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

/// Longest purchase-order reference, in bytes.
pub const MAX_PURCHASE_ORDER_BYTES: usize = 128;

/// A purchase-order reference is 1..=128 bytes of printable ASCII without spaces (like an
/// `event_id`): it is part of a Redis field name next to a location.
pub fn validate_purchase_order(field: &str, po: &str) -> Result<(), String> {
    if po.is_empty() {
        return Err(format!("{field} is missing"));
    }
    if po.len() > MAX_PURCHASE_ORDER_BYTES {
        return Err(format!(
            "{field} is {} bytes, at most {MAX_PURCHASE_ORDER_BYTES}",
            po.len()
        ));
    }
    if !po.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{field} must be printable ASCII without spaces"));
    }
    Ok(())
}

/// `value` is a quantity of 1..=MAX_QUANTITY.
pub fn positive(field: &str, value: i64) -> Result<(), String> {
    if (1..=MAX_QUANTITY).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field} must be 1..={MAX_QUANTITY}, got {value}"))
    }
}

/// Longest channel id, in bytes.
pub const MAX_CHANNEL_ID_BYTES: usize = 64;
/// Most locations one channel draws from.
pub const MAX_CHANNEL_LOCATIONS: usize = 32;
/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_BYTES: usize = 128;

/// A channel id is a subject token: 1..=64 bytes of ASCII letters, digits, `-` and `_`.
pub fn validate_channel_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is missing"));
    }
    if id.len() > MAX_CHANNEL_ID_BYTES {
        return Err(format!(
            "{field} is longer than {MAX_CHANNEL_ID_BYTES} bytes"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{field} {id:?} is not a subject token: use ASCII letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Availability rules: every quantity 0..=MAX_QUANTITY, the percentage 0..=100. A fault names
/// its field under `prefix` (`rules.buffer`).
pub fn validate_rules(prefix: &str, rules: &AvailabilityRules) -> Result<(), (String, String)> {
    for (name, value) in [
        ("buffer", rules.buffer),
        ("max_listed", rules.max_listed),
        ("end_when_below", rules.end_when_below),
    ] {
        if let Some(v) = value {
            if !(0..=MAX_QUANTITY).contains(&v) {
                let field = format!("{prefix}.{name}");
                return Err((
                    field.clone(),
                    format!("{field} must be 0..={MAX_QUANTITY}, got {v}"),
                ));
            }
        }
    }
    if let Some(p) = rules.percent {
        if !(0..=100).contains(&p) {
            let field = format!("{prefix}.percent");
            return Err((field.clone(), format!("{field} must be 0..=100, got {p}")));
        }
    }
    // The channel's backorder policy, as a `PolicySet`'s is judged.
    let set = crate::v1::PolicySet {
        backorder_policy: rules.backorder_policy,
        backorder_limit: rules.backorder_limit,
        ..Default::default()
    };
    crate::input::fact::backorder_of(&set)
        .map_err(|(field, reason)| (format!("{prefix}.{field}"), format!("{prefix}.{reason}")))?;
    Ok(())
}

/// A channel definition as a producer sends it: its id, name, kind, locations (1..=32, distinct,
/// no `,`) and rules. Whether its locations are known is checked where the stock data is (the
/// stock worker, the gateway). A fault names its field (`locations[2]`, `rules.percent`).
pub fn validate_channel(channel: &Channel) -> Result<(), (String, String)> {
    validate_channel_id("id", &channel.id).map_err(|r| ("id".to_owned(), r))?;
    if channel.name.len() > MAX_CHANNEL_NAME_BYTES || channel.name.chars().any(char::is_control) {
        return Err((
            "name".into(),
            format!(
                "name must be at most {MAX_CHANNEL_NAME_BYTES} bytes without control characters"
            ),
        ));
    }
    if ChannelKind::try_from(channel.kind).is_err() {
        return Err((
            "kind".into(),
            format!(
                "kind {} is not a value of stockflow.v1.ChannelKind",
                channel.kind
            ),
        ));
    }
    if crate::v1::AllocationStrategy::try_from(channel.allocation).is_err() {
        return Err((
            "allocation".into(),
            format!(
                "allocation {} is not a value of stockflow.v1.AllocationStrategy",
                channel.allocation
            ),
        ));
    }
    if channel.locations.is_empty() || channel.locations.len() > MAX_CHANNEL_LOCATIONS {
        return Err((
            "locations".into(),
            format!(
                "locations must list 1..={MAX_CHANNEL_LOCATIONS} locations, got {}",
                channel.locations.len()
            ),
        ));
    }
    for (i, location) in channel.locations.iter().enumerate() {
        let field = format!("locations[{i}]");
        validate_location(&field, location).map_err(|r| (field.clone(), r))?;
        if location.contains(',') {
            return Err((field.clone(), format!("{field} cannot contain ','")));
        }
        if channel.locations[..i].contains(location) {
            return Err((
                field.clone(),
                format!("{field} {location:?} is listed twice"),
            ));
        }
    }
    validate_rules("rules", &channel.rules.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_faults_name_their_field() {
        let good = Channel {
            id: "market-1".into(),
            name: "Marketplace".into(),
            kind: ChannelKind::Marketplace.into(),
            locations: vec!["store-1".into(), "store-2".into()],
            rules: Some(AvailabilityRules {
                buffer: Some(2),
                percent: Some(100),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_channel(&good).is_ok());
        let cases: [(Channel, &str); 6] = [
            (
                Channel {
                    id: "a.b".into(),
                    ..good.clone()
                },
                "id",
            ),
            (
                Channel {
                    locations: vec![],
                    ..good.clone()
                },
                "locations",
            ),
            (
                Channel {
                    locations: vec!["s".into(), "s".into()],
                    ..good.clone()
                },
                "locations[1]",
            ),
            (
                Channel {
                    rules: Some(AvailabilityRules {
                        buffer: Some(-1),
                        ..Default::default()
                    }),
                    ..good.clone()
                },
                "rules.buffer",
            ),
            (
                Channel {
                    rules: Some(AvailabilityRules {
                        percent: Some(101),
                        ..Default::default()
                    }),
                    ..good.clone()
                },
                "rules.percent",
            ),
            (
                Channel {
                    kind: 99,
                    ..good.clone()
                },
                "kind",
            ),
        ];
        for (channel, field) in cases {
            let (at, reason) = validate_channel(&channel).expect_err(field);
            assert_eq!(at, field, "{reason}");
            assert!(
                reason.contains(field.split('[').next().unwrap_or(field)),
                "{reason}"
            );
        }
    }

    #[test]
    fn reasons_the_contract_does_not_define_are_refused() {
        let meta = |reason| EventMeta {
            reason,
            ..Default::default()
        };
        assert!(validate_reason(&meta(0)).is_ok());
        assert!(validate_reason(&meta(Reason::Policy as i32)).is_ok());
        assert!(validate_reason(&meta(Reason::OpeningBalance as i32)).is_ok());
        for unknown in [14, 99, -1] {
            let err = validate_reason(&meta(unknown)).expect_err("unknown");
            assert!(err.starts_with(&format!("reason {unknown} ")), "{err}");
        }
    }

    #[test]
    fn envelope_faults_name_their_field() {
        let meta = |event_id: &str, source: &str, reference: &str| EventMeta {
            event_id: event_id.into(),
            source: source.into(),
            reference: reference.into(),
            ..Default::default()
        };
        assert!(meta_fault(&meta("e-1", "pos", "")).is_ok());
        let long = "x".repeat(MAX_REFERENCE_BYTES + 1);
        for (meta, field) in [
            (meta("", "", ""), "event_id"),
            (meta("a b", "", ""), "event_id"),
            (
                meta(&"e".repeat(MAX_EVENT_ID_BYTES + 1), "", ""),
                "event_id",
            ),
            (meta("e", &long, ""), "source"),
            (meta("e", "", &long), "reference"),
        ] {
            let (at, reason) = meta_fault(&meta).expect_err(field);
            assert_eq!(at, field, "{reason}");
            assert!(reason.starts_with(field), "{reason}");
            assert_eq!(validate_meta(&meta), Err(reason));
        }
    }
}
