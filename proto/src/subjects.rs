//! Stream names, subjects, and the reversible encoding of a SKU into one subject token.
//!
//! A SKU made only of ASCII letters, digits, `-` and `_` is its own token. Any other SKU (dots,
//! spaces, `*`, `>`, non-ASCII, ...) becomes `~` followed by the unpadded base64url encoding of its
//! UTF-8 bytes. `~` is not in the verbatim alphabet, so decoding is unambiguous, and every token is
//! also safe inside a Redis hash tag (no `{` or `}`).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

/// Stock facts, subject `stock.events.<sku-token>`.
pub const STOCK_EVENTS: &str = "STOCK_EVENTS";
/// The ledger (`stock.changes.<sku-token>`) and rejections (`stock.outcomes.<sku-token>`); in a
/// partitioned deployment, `STOCK_CHANGES_<p>` (see [`stock_changes_partition`]).
pub const STOCK_CHANGES: &str = "STOCK_CHANGES";
/// Stock alerts, `alerts.<kind>.<sku-token>`.
pub const ALERTS: &str = "ALERTS";
/// Malformed inputs, `deadletter.<source stream>`.
pub const DEAD_LETTERS: &str = "DEAD_LETTERS";
/// Order commands, `orders.events.<order-token>`.
pub const ORDER_EVENTS: &str = "ORDER_EVENTS";
/// Order decisions, `orders.results.<order-token>`.
pub const ORDER_RESULTS: &str = "ORDER_RESULTS";
/// Webhook deliveries waiting for their endpoint, `webhooks.<endpoint-id>` (see [`webhook`]):
/// notify-worker's durable outbox, one subject per endpoint, so an endpoint that is down holds
/// only its own deliveries.
pub const WEBHOOKS: &str = "WEBHOOKS";

/// Sales channel definition changes, `channels.events.<channel-id>`.
pub const CHANNEL_EVENTS: &str = "CHANNEL_EVENTS";
/// What each channel may sell, `availability.<channel-id>.<sku-token>`: the last message per
/// subject only, so a reader that was away catches up with the newest quantity of every SKU.
pub const AVAILABILITY: &str = "AVAILABILITY";
/// Pushes an operator asked a connector to make again (a replayed connector dead letter),
/// `connectors.retry.<shop-id>.<sku-token>` (see [`connector_retry`]): the connector pushes the
/// SKU's newest channel quantity to that shop.
pub const CONNECTOR_RETRIES: &str = "CONNECTOR_RETRIES";
/// Header of a connector's dead letter: the shop whose push failed.
pub const HEADER_CONNECTOR_DL_SHOP: &str = "Stockflow-Connector-Shop";

/// Longest SKU, in bytes.
pub const MAX_SKU_BYTES: usize = 128;

/// Header naming why a message was dead-lettered.
pub const HEADER_DEAD_LETTER_REASON: &str = "Stockflow-Dead-Letter-Reason";
/// Header: subject the dead-lettered message was published on.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Stockflow-Original-Subject";
/// Header: stream the dead-lettered message was stored in.
pub const HEADER_ORIGINAL_STREAM: &str = "Stockflow-Original-Stream";
/// Header: its sequence in that stream.
pub const HEADER_ORIGINAL_SEQUENCE: &str = "Stockflow-Original-Sequence";
/// Header on a dead letter whose payload was clipped to fit within the server's `max_payload`
/// next to these headers: the original payload's size in bytes.
pub const HEADER_PAYLOAD_TRUNCATED: &str = "Stockflow-Payload-Truncated";
/// Header: its original `Nats-Msg-Id`.
pub const HEADER_ORIGINAL_MSG_ID: &str = "Stockflow-Original-Msg-Id";
/// Header on a failed webhook delivery's dead letter: the subscription id.
pub const HEADER_WEBHOOK_DL_ENDPOINT: &str = "Stockflow-Webhook-Endpoint";
/// Header on a failed webhook delivery's dead letter: how many times the delivery was taken up
/// (POSTs, and redeliveries while its endpoint was paused).
pub const HEADER_WEBHOOK_DL_ATTEMPTS: &str = "Stockflow-Webhook-Attempts";
/// Header on a failed webhook delivery's dead letter: the event id the receiver would have seen.
pub const HEADER_WEBHOOK_DL_EVENT_ID: &str = "Stockflow-Webhook-Event-Id";

/// Encodes an identifier (SKU, order id) as one subject token.
pub fn encode_token(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        id.to_owned()
    } else {
        format!("~{}", URL_SAFE_NO_PAD.encode(id.as_bytes()))
    }
}

/// Decodes a token made by [`encode_token`]; `None` if it is not one.
pub fn decode_token(token: &str) -> Option<String> {
    match token.strip_prefix('~') {
        Some(encoded) => {
            let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
            let id = String::from_utf8(bytes).ok()?;
            // A verbatim-able id is never encoded: keeps one token per id.
            (encode_token(&id) == token).then_some(id)
        }
        None => (!token.is_empty() && encode_token(token) == token).then(|| token.to_owned()),
    }
}

/// `stock.events.<sku-token>`.
pub fn stock_event(sku: &str) -> String {
    format!("stock.events.{}", encode_token(sku))
}

/// `stock.events.<sku-token>` from a token read off another subject (see [`stock_event_token`]).
pub fn stock_event_of_token(token: &str) -> String {
    format!("stock.events.{token}")
}

/// The SKU token of a stock-fact subject: `stock.events.<sku-token>` as producers publish it, or
/// `stock.events.<partition>.<sku-token>` once the servers' partition mapping has rewritten it
/// (partitioned deployments, see `STOCKFLOW_STOCK_PARTITIONS`). `None` for anything else.
pub fn stock_event_token(subject: &str) -> Option<&str> {
    token_after(subject, "stock.events.")
}

/// The SKU token of a ledger subject: `stock.changes.<sku-token>`, or
/// `stock.changes.<partition>.<sku-token>` as the servers' mapping stores it in a partitioned
/// deployment. `None` for anything else.
pub fn stock_changed_token(subject: &str) -> Option<&str> {
    token_after(subject, "stock.changes.")
}

/// The SKU token of a rejection subject: `stock.outcomes.<sku-token>`, or
/// `stock.outcomes.<partition>.<sku-token>`. `None` for anything else.
pub fn stock_outcome_token(subject: &str) -> Option<&str> {
    token_after(subject, "stock.outcomes.")
}

/// A stock subject as producers publish it: `stock.<kind>.<partition>.<sku-token>` becomes
/// `stock.<kind>.<sku-token>`; any other subject is returned unchanged. Keeps what readers show
/// (webhook bodies) the same whether or not the deployment is partitioned.
pub fn unpartitioned(subject: &str) -> std::borrow::Cow<'_, str> {
    for prefix in ["stock.events.", "stock.changes.", "stock.outcomes."] {
        if let Some(rest) = subject.strip_prefix(prefix) {
            if let (Some(token), true) = (token_after(subject, prefix), rest.contains('.')) {
                return format!("{prefix}{token}").into();
            }
        }
    }
    subject.into()
}

/// `<prefix><sku-token>` or `<prefix><partition>.<sku-token>`: the token.
fn token_after<'a>(subject: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = subject.strip_prefix(prefix)?;
    match rest.split_once('.') {
        None => (!rest.is_empty()).then_some(rest),
        Some((partition, token))
            if !partition.is_empty()
                && partition.bytes().all(|b| b.is_ascii_digit())
                && !token.is_empty()
                && !token.contains('.') =>
        {
            Some(token)
        }
        Some(_) => None,
    }
}

/// The input stream of stock partition `partition`: `STOCK_EVENTS_<partition>`, holding
/// `stock.events.<partition>.*`.
pub fn stock_events_partition(partition: usize) -> String {
    format!("{STOCK_EVENTS}_{partition}")
}

/// The subjects stream `STOCK_EVENTS_<partition>` holds: `stock.events.<partition>.*`.
pub fn stock_events_partition_subject(partition: usize) -> String {
    format!("stock.events.{partition}.*")
}

/// The partition a `STOCK_EVENTS_<p>` stream name stands for; `None` for any other name
/// (including the unpartitioned `STOCK_EVENTS`).
pub fn stock_events_partition_of(stream: &str) -> Option<usize> {
    let digits = stream.strip_prefix(STOCK_EVENTS)?.strip_prefix('_')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The ledger stream of stock partition `partition`: `STOCK_CHANGES_<partition>`, holding
/// `stock.changes.<partition>.*` and `stock.outcomes.<partition>.*`.
pub fn stock_changes_partition(partition: usize) -> String {
    format!("{STOCK_CHANGES}_{partition}")
}

/// The subjects stream `STOCK_CHANGES_<partition>` holds: `stock.changes.<partition>.*` and
/// `stock.outcomes.<partition>.*`.
pub fn stock_changes_partition_subjects(partition: usize) -> [String; 2] {
    [
        format!("stock.changes.{partition}.*"),
        format!("stock.outcomes.{partition}.*"),
    ]
}

/// The partition a `STOCK_CHANGES_<p>` stream name stands for; `None` for any other name
/// (including the unpartitioned `STOCK_CHANGES`).
pub fn stock_changes_partition_of(stream: &str) -> Option<usize> {
    let digits = stream.strip_prefix(STOCK_CHANGES)?.strip_prefix('_')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The nats-server configuration that routes `stock.events.<sku-token>`,
/// `stock.changes.<sku-token>` and `stock.outcomes.<sku-token>` to one of `partitions`
/// partitions. NATS's deterministic partitioning hashes only the SKU token (the wildcard), so a
/// SKU's facts, ledger entries and rejections all land in partitions with the same index.
pub fn stock_mappings(partitions: usize) -> String {
    let map = |kind: &str| {
        format!(
            "\"stock.{kind}.*\": \"stock.{kind}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}\""
        )
    };
    format!(
        "mappings = {{ {}, {}, {} }}",
        map("events"),
        map("changes"),
        map("outcomes")
    )
}

/// `stock.changes.<sku-token>`.
pub fn stock_changed(sku: &str) -> String {
    format!("stock.changes.{}", encode_token(sku))
}

/// The subject a SKU's ledger entries are stored on, as a subscriber or a stream filter sees it:
/// `stock.changes.<sku-token>`, or `stock.changes.*.<sku-token>` with `partitions` > 1 (the
/// servers' mapping inserts the partition before JetStream or a subscriber sees it).
pub fn stock_changed_stored(sku: &str, partitions: usize) -> String {
    if partitions <= 1 {
        stock_changed(sku)
    } else {
        format!("stock.changes.*.{}", encode_token(sku))
    }
}

/// `stock.outcomes.<sku-token>`.
pub fn stock_outcome(sku: &str) -> String {
    format!("stock.outcomes.{}", encode_token(sku))
}

/// `alerts.<kind>.<sku-token>`, kind being `low_stock`, `out_of_stock`, ...
pub fn alert(kind: &str, sku: &str) -> String {
    format!("alerts.{kind}.{}", encode_token(sku))
}

/// `deadletter.<stream>`.
pub fn dead_letter(stream: &str) -> String {
    format!("deadletter.{stream}")
}

/// `orders.events.<order-token>`.
pub fn order_event(order_id: &str) -> String {
    format!("orders.events.{}", encode_token(order_id))
}

/// `webhooks.<endpoint-id>`: the outbox subject of one webhook endpoint. Endpoint ids are
/// validated as subject tokens when subscriptions are read.
pub fn webhook(endpoint: &str) -> String {
    format!("webhooks.{endpoint}")
}

/// `orders.results.<order-token>`.
pub fn order_result(order_id: &str) -> String {
    format!("orders.results.{}", encode_token(order_id))
}

/// `channels.events.<channel-id>`. Channel ids are subject tokens (checked by
/// `validate::validate_channel_id`).
pub fn channel_event(channel: &str) -> String {
    format!("channels.events.{channel}")
}

/// `availability.<channel-id>.<sku-token>`.
pub fn availability(channel: &str, sku: &str) -> String {
    format!("availability.{channel}.{}", encode_token(sku))
}

/// `availability.<channel-id>.>`: every SKU of one channel.
pub fn channel_availability(channel: &str) -> String {
    format!("availability.{channel}.>")
}

/// `connectors.retry.<shop-id>.<sku-token>`: push the newest quantity of the SKU to the shop
/// again. Shop ids are subject tokens (checked when the connector reads its shops).
pub fn connector_retry(shop: &str, sku_token: &str) -> String {
    format!("connectors.retry.{shop}.{sku_token}")
}

/// The channel id and SKU token of an availability subject; `None` for anything else.
pub fn availability_parts(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("availability.")?;
    let (channel, token) = rest.split_once('.')?;
    (!channel.is_empty() && !token.is_empty() && !token.contains('.')).then_some((channel, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_skus_are_verbatim() {
        assert_eq!(encode_token("TSHIRT-RED_M"), "TSHIRT-RED_M");
        assert_eq!(stock_event("A1"), "stock.events.A1");
    }

    #[test]
    fn unsafe_skus_are_encoded_reversibly() {
        for sku in [
            "a.b",
            "with space",
            "*",
            ">",
            "ünï",
            "~x",
            "a{b}c",
            "x\u{1F600}",
        ] {
            let token = encode_token(sku);
            assert!(token.starts_with('~'), "{sku} -> {token}");
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)));
            assert_eq!(decode_token(&token).as_deref(), Some(sku));
        }
    }

    #[test]
    fn stock_subjects_yield_their_token_with_or_without_a_partition() {
        assert_eq!(stock_event_token("stock.events.A1"), Some("A1"));
        assert_eq!(stock_event_token("stock.events.12.~YS5i"), Some("~YS5i"));
        for foreign in [
            "stock.events.",
            "stock.events.x.A1",
            "stock.events.1.",
            "stock.events.1.a.b",
            "stock.changes.A1",
        ] {
            assert_eq!(stock_event_token(foreign), None, "{foreign}");
        }
        assert_eq!(stock_events_partition(3), "STOCK_EVENTS_3");
        assert_eq!(stock_events_partition_of("STOCK_EVENTS_3"), Some(3));
        assert_eq!(stock_events_partition_of("STOCK_EVENTS"), None);
        assert_eq!(stock_events_partition_of("STOCK_EVENTS_"), None);
        assert_eq!(stock_events_partition_of("STOCK_EVENTS_x"), None);
        assert_eq!(
            stock_mappings(4),
            concat!(
                r#"mappings = { "stock.events.*": "stock.events.{{partition(4,1)}}.{{wildcard(1)}}", "#,
                r#""stock.changes.*": "stock.changes.{{partition(4,1)}}.{{wildcard(1)}}", "#,
                r#""stock.outcomes.*": "stock.outcomes.{{partition(4,1)}}.{{wildcard(1)}}" }"#
            )
        );
    }

    #[test]
    fn ledger_subjects_yield_their_token_with_or_without_a_partition() {
        assert_eq!(stock_changed_token("stock.changes.A1"), Some("A1"));
        assert_eq!(stock_changed_token("stock.changes.2.~YS5i"), Some("~YS5i"));
        assert_eq!(stock_outcome_token("stock.outcomes.0.A1"), Some("A1"));
        assert_eq!(stock_changed_token("stock.outcomes.0.A1"), None);
        assert_eq!(stock_changed_token("stock.changes.x.A1"), None);
        assert_eq!(unpartitioned("stock.changes.2.A1"), "stock.changes.A1");
        assert_eq!(unpartitioned("stock.outcomes.0.A1"), "stock.outcomes.A1");
        assert_eq!(unpartitioned("stock.events.11.A1"), "stock.events.A1");
        assert_eq!(unpartitioned("stock.changes.A1"), "stock.changes.A1");
        assert_eq!(unpartitioned("alerts.low_stock.A1"), "alerts.low_stock.A1");
        assert_eq!(stock_changed_stored("a.b", 1), "stock.changes.~YS5i");
        assert_eq!(stock_changed_stored("a.b", 4), "stock.changes.*.~YS5i");
        assert_eq!(stock_changes_partition(3), "STOCK_CHANGES_3");
        assert_eq!(stock_changes_partition_of("STOCK_CHANGES_3"), Some(3));
        assert_eq!(stock_changes_partition_of("STOCK_CHANGES"), None);
        assert_eq!(stock_changes_partition_of("STOCK_EVENTS_3"), None);
    }

    #[test]
    fn foreign_tokens_do_not_decode() {
        assert_eq!(decode_token(""), None);
        assert_eq!(decode_token("a.b"), None);
        assert_eq!(decode_token("~!!"), None);
        // "abc" must be verbatim, so its encoded form is not a valid token.
        assert_eq!(
            decode_token(&format!("~{}", URL_SAFE_NO_PAD.encode("abc"))),
            None
        );
    }
}
