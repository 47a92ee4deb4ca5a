//! Decoding and validating a channel definition change (`ChannelEvent`). Whether its locations
//! are known needs the stock data: the stock worker and the gateway check that themselves.

use prost::Message as _;

use super::{Category, InputError};
use crate::{
    subjects,
    v1::{channel_event::Change, Channel, ChannelEvent, EventMeta},
    validate::{meta_fault, validate_channel, validate_channel_id, validate_reason},
};

/// What a valid channel event asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelChange {
    /// Create or replace the channel.
    Set(Channel),
    /// Remove it.
    Removed,
}

/// A decoded, valid channel event.
#[derive(Debug, Clone)]
pub struct ChannelCommand {
    /// Envelope.
    pub meta: EventMeta,
    /// The channel id.
    pub channel_id: String,
    /// What to do.
    pub change: ChannelChange,
}

impl ChannelCommand {
    /// Event type label for metrics: `channel_set` or `channel_removed`.
    pub fn name(&self) -> &'static str {
        match self.change {
            ChannelChange::Set(_) => "channel_set",
            ChannelChange::Removed => "channel_removed",
        }
    }
}

/// Decodes and validates `payload` received on `subject` (`channels.events.<channel-id>`).
pub fn parse(subject: &str, payload: &[u8]) -> Result<ChannelCommand, InputError> {
    let event = ChannelEvent::decode(payload).map_err(|e| {
        InputError::new(
            "unknown",
            "body",
            Category::Decode,
            format!("not a ChannelEvent: {e}"),
        )
    })?;
    check(subject, event)
}

/// Validates a decoded event as [`parse`] does (the gateway and `stockctl` call it before
/// publishing).
pub fn check(subject: &str, event: ChannelEvent) -> Result<ChannelCommand, InputError> {
    let (kind, change) = match event.change {
        Some(Change::Set(set)) => (
            "channel_set",
            ChannelChange::Set(set.channel.unwrap_or_default()),
        ),
        Some(Change::Removed(_)) => ("channel_removed", ChannelChange::Removed),
        None => {
            return Err(InputError::new(
                "unknown",
                "type",
                Category::UnknownType,
                "no change set (missing or unknown channel event type)",
            ))
        }
    };
    let bad = |field: &str, category: Category, reason: String| {
        InputError::new(kind, field, category, reason)
    };
    let meta = event.meta.unwrap_or_default();
    meta_fault(&meta).map_err(|(field, reason)| bad(field, Category::InvalidMeta, reason))?;
    validate_reason(&meta).map_err(|reason| bad("reason", Category::UnknownEnum, reason))?;
    validate_channel_id("channel_id", &event.channel_id)
        .map_err(|r| bad("channel_id", Category::InvalidChannel, r))?;
    let expected = subjects::channel_event(&event.channel_id);
    if subject != expected {
        return Err(bad(
            "subject",
            Category::SubjectMismatch,
            format!("published on {subject} but its channel belongs on {expected}"),
        ));
    }
    if let ChannelChange::Set(channel) = &change {
        if channel.id != event.channel_id {
            return Err(bad(
                "id",
                Category::InvalidChannel,
                format!(
                    "id {:?} differs from channel_id {:?}",
                    channel.id, event.channel_id
                ),
            ));
        }
        validate_channel(channel)
            .map_err(|(field, reason)| bad(&field, Category::InvalidChannel, reason))?;
    }
    Ok(ChannelCommand {
        meta,
        channel_id: event.channel_id,
        change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{AvailabilityRules, ChannelSet};

    fn set(channel: Channel) -> Vec<u8> {
        ChannelEvent {
            meta: Some(EventMeta {
                event_id: "c-1".into(),
                ..Default::default()
            }),
            channel_id: "market".into(),
            change: Some(Change::Set(ChannelSet {
                channel: Some(channel),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_channel_event_is_judged_field_by_field() {
        let good = Channel {
            id: "market".into(),
            locations: vec!["store-1".into()],
            ..Default::default()
        };
        let command = parse("channels.events.market", &set(good.clone())).expect("valid");
        assert_eq!(command.change, ChannelChange::Set(good.clone()));
        assert_eq!(command.name(), "channel_set");
        let fault = |subject: &str, bytes: Vec<u8>| {
            let e = parse(subject, &bytes).expect_err("refused");
            (e.field, e.category)
        };
        assert_eq!(
            fault("channels.events.other", set(good.clone())),
            ("subject".into(), Category::SubjectMismatch)
        );
        assert_eq!(
            fault(
                "channels.events.market",
                set(Channel {
                    id: "other".into(),
                    ..good.clone()
                })
            ),
            ("id".into(), Category::InvalidChannel)
        );
        assert_eq!(
            fault(
                "channels.events.market",
                set(Channel {
                    rules: Some(AvailabilityRules {
                        buffer: Some(-2),
                        ..Default::default()
                    }),
                    ..good
                })
            ),
            ("rules.buffer".into(), Category::InvalidChannel)
        );
    }
}
