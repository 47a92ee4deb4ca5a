//! Builders of the events and levels tests publish and expect, shared by every test binary.

use stockflow_proto::v1::{stock_event::Change, EventMeta, Levels, StockEvent};

/// A stock event with an envelope; its source is `test:harness`, its reference `urn:test:<id>`.
pub fn event(id: &str, sku: &str, location: &str, change: Change) -> StockEvent {
    StockEvent {
        meta: Some(EventMeta {
            event_id: id.to_owned(),
            occurred_at_ms: 1_700_000_000_000,
            source: "test:harness".into(),
            reason: 0,
            reference: format!("urn:test:{id}"),
        }),
        sku: sku.to_owned(),
        location: location.to_owned(),
        change: Some(change),
        ..Default::default()
    }
}

/// One builder per kind of change.
pub fn received(q: i64) -> Change {
    Change::Received(stockflow_proto::v1::Received { quantity: q })
}
pub fn sold(q: i64) -> Change {
    Change::Sold(stockflow_proto::v1::Sold { quantity: q })
}
pub fn returned(q: i64) -> Change {
    Change::Returned(stockflow_proto::v1::Returned { quantity: q })
}
pub fn adjusted(delta: i64) -> Change {
    Change::Adjusted(stockflow_proto::v1::Adjusted { delta })
}
pub fn counted(on_hand: i64, expected: Option<i64>) -> Change {
    Change::Counted(stockflow_proto::v1::Counted {
        on_hand,
        expected_on_hand: expected,
    })
}
pub fn transferred(to: &str, quantity: i64) -> Change {
    Change::Transferred(stockflow_proto::v1::Transferred {
        to_location: to.to_owned(),
        quantity,
    })
}
pub fn policy(threshold: Option<i64>, safety_stock: Option<i64>) -> Change {
    Change::PolicySet(stockflow_proto::v1::PolicySet {
        low_stock_threshold: threshold,
        safety_stock,
        location_priority: vec![],
        ..Default::default()
    })
}

/// Levels as the gateway and `stockctl stock` report them.
pub fn levels(on_hand: i64, reserved: i64, safety_stock: i64) -> Levels {
    Levels {
        on_hand,
        reserved,
        safety_stock,
        available: on_hand - reserved - safety_stock,
        ..Default::default()
    }
}

/// An order command with an envelope.
pub fn order(
    id: &str,
    order_id: &str,
    command: stockflow_proto::v1::order_event::Command,
) -> stockflow_proto::v1::OrderEvent {
    stockflow_proto::v1::OrderEvent {
        meta: Some(EventMeta {
            event_id: id.to_owned(),
            source: "test:checkout".into(),
            ..Default::default()
        }),
        order_id: order_id.to_owned(),
        command: Some(command),
    }
}

/// A placement of `(line_id, sku, quantity, location)` lines.
pub fn placed(
    lines: &[(&str, &str, i64, &str)],
    hold_seconds: i64,
) -> stockflow_proto::v1::order_event::Command {
    stockflow_proto::v1::order_event::Command::Placed(stockflow_proto::v1::OrderPlaced {
        lines: lines
            .iter()
            .map(
                |(line_id, sku, quantity, location)| stockflow_proto::v1::OrderLine {
                    line_id: (*line_id).into(),
                    sku: (*sku).into(),
                    quantity: *quantity,
                    location: (*location).into(),
                },
            )
            .collect(),
        hold_seconds,
        ..Default::default()
    })
}

/// A channel definition: `locations` in priority order, `rules` as given.
pub fn channel(
    id: &str,
    locations: &[&str],
    rules: stockflow_proto::v1::AvailabilityRules,
) -> stockflow_proto::v1::Channel {
    stockflow_proto::v1::Channel {
        id: id.to_owned(),
        name: id.to_owned(),
        kind: stockflow_proto::v1::ChannelKind::Marketplace.into(),
        locations: locations.iter().map(|l| (*l).to_owned()).collect(),
        rules: Some(rules),
        ..Default::default()
    }
}

/// The event that sets `channel`.
pub fn channel_set(
    event_id: &str,
    channel: stockflow_proto::v1::Channel,
) -> stockflow_proto::v1::ChannelEvent {
    use stockflow_proto::v1::{channel_event, ChannelEvent, ChannelSet};
    ChannelEvent {
        meta: Some(EventMeta {
            event_id: event_id.to_owned(),
            source: "test:harness".into(),
            ..Default::default()
        }),
        channel_id: channel.id.clone(),
        change: Some(channel_event::Change::Set(ChannelSet {
            channel: Some(channel),
        })),
    }
}

/// A sale (or, with `returned`, a return) that names its channel instead of a location.
pub fn channel_fact(id: &str, sku: &str, channel: &str, change: Change) -> StockEvent {
    StockEvent {
        channel: channel.to_owned(),
        ..event(id, sku, "", change)
    }
}

/// A kit definition of `(component sku, units per kit)` (none: no longer a kit).
pub fn kit(components: &[(&str, i64)]) -> Change {
    Change::KitDefined(stockflow_proto::v1::KitDefined {
        components: components
            .iter()
            .map(|(sku, quantity)| stockflow_proto::v1::KitComponent {
                sku: (*sku).to_owned(),
                quantity: *quantity,
            })
            .collect(),
    })
}
