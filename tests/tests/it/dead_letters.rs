//! Dead letters of every kind, stored the way the workers store them (`DeadLetters::store` on
//! the message as consumed), for the replay tests of `stockctl dlq` and the gateway's admin
//! routes.

use async_nats::{jetstream, HeaderMap};
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::subjects;
use stockflow_shared::deadletter::{DeadLetters, Route};

use crate::world::*;

/// One dead letter of each kind, by sequence in `DEAD_LETTERS`.
pub(crate) struct Letters {
    /// A valid stock fact: `received` `quantity` of `sku` at `wh`.
    pub(crate) stock: u64,
    pub(crate) sku: String,
    pub(crate) quantity: i64,
    /// A valid order placement for `order_id`.
    pub(crate) order: u64,
    pub(crate) order_id: String,
    /// notify-worker's outbox message for endpoint `endpoint`, with `event_id` and `body`.
    pub(crate) webhook: u64,
    pub(crate) endpoint: String,
    pub(crate) event_id: String,
    pub(crate) body: serde_json::Value,
    /// An alert notify-worker could not read: an entry of a derived stream.
    pub(crate) derived: u64,
}

/// Stores `payload` in its stream, reads it back as a consumer gets it, dead-letters it with
/// `reason` (and `route`), and removes the original so no worker handles it: what is left is
/// the dead letter alone, as after a worker gave up on it. Returns its `DEAD_LETTERS` sequence.
async fn dead_letter(
    world: &World,
    stream: &str,
    subject: &str,
    mut headers: HeaderMap,
    payload: Vec<u8>,
    reason: &str,
    route: Route,
) -> u64 {
    headers.insert("Nats-Msg-Id", stockflow_tests::unique_id().as_str());
    let ack = world
        .js
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert_eq!(ack.stream, stream);
    let source = world.js.get_stream(stream).await.expect("stream");
    let start = if stream == subjects::WEBHOOKS {
        // A work queue takes only consumers that start at its beginning; the fixture's webhook
        // subjects hold one message at a time there.
        jetstream::consumer::DeliverPolicy::All
    } else {
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: ack.sequence,
        }
    };
    let message = peek(world, stream, subject, start)
        .await
        .into_iter()
        .next()
        .expect("the message just stored");
    DeadLetters::new(world.js.clone())
        .store_with(&message, reason, route)
        .await
        .expect("dead letter stored");
    source
        .delete_message(ack.sequence)
        .await
        .expect("original removed");
    stockflow_cli::last_sequence(&world.js, subjects::DEAD_LETTERS)
        .await
        .expect("sequence")
}

/// Stores one dead letter of each kind, before any worker runs; `tag` keeps names apart.
pub(crate) async fn store_each_kind(world: &World, tag: &str) -> Letters {
    let sku = format!("DL-{tag}");
    let quantity = 7;
    let fact = event(&format!("{tag}-rcv"), &sku, "wh", received(quantity));
    let stock = dead_letter(
        world,
        subjects::STOCK_EVENTS,
        &subjects::stock_event(&sku),
        HeaderMap::new(),
        fact.encode_to_vec(),
        "the handler panicked 5 times",
        Route::default(),
    )
    .await;

    let order_id = format!("web-{tag}");
    let placement = order(
        &format!("{tag}-place"),
        &order_id,
        placed(&[("1", &sku, 2, "")], 0),
    );
    let order = dead_letter(
        world,
        subjects::ORDER_EVENTS,
        &subjects::order_event(&order_id),
        HeaderMap::new(),
        placement.encode_to_vec(),
        "the handler panicked 5 times",
        Route::default(),
    )
    .await;

    let endpoint = format!("erp{tag}");
    let event_id = format!("chg:{sku}:{tag}-rcv:0");
    let body = serde_json::json!({"type": "stock_changed", "event_id": event_id, "sku": sku});
    let mut headers = HeaderMap::new();
    headers.insert("X-Stockflow-Event-Id", event_id.as_str());
    headers.insert("X-Stockflow-Event-Type", "stock_changed");
    headers.insert("Stockflow-Webhook-Source", "STOCK_CHANGES:1");
    let webhook = dead_letter(
        world,
        subjects::WEBHOOKS,
        &subjects::webhook(&endpoint),
        headers,
        serde_json::to_vec(&body).expect("json"),
        &format!("webhook {endpoint}: HTTP 410 (refused for good)"),
        // As notify-worker files them: under the endpoint, with its attempt records.
        Route {
            subject: Some(format!("deadletter.webhooks.{endpoint}")),
            message_id: None,
            headers: vec![
                ("Stockflow-Webhook-Endpoint", endpoint.clone()),
                ("Stockflow-Webhook-Attempts", "3".into()),
                ("Stockflow-Webhook-Event-Id", event_id.clone()),
            ],
        },
    )
    .await;

    let derived = dead_letter(
        world,
        subjects::ALERTS,
        &format!("alerts.low_stock.{sku}"),
        HeaderMap::new(),
        b"\x01 not a StockAlert".to_vec(),
        "not a StockAlert",
        Route::default(),
    )
    .await;
    Letters {
        stock,
        sku,
        quantity,
        order,
        order_id,
        webhook,
        endpoint,
        event_id,
        body,
        derived,
    }
}

/// Every message stored on `webhooks.<endpoint>`.
pub(crate) async fn outbox(world: &World, endpoint: &str) -> Vec<jetstream::Message> {
    peek(
        world,
        subjects::WEBHOOKS,
        &subjects::webhook(endpoint),
        jetstream::consumer::DeliverPolicy::All,
    )
    .await
}

/// The messages of `stream` on `subject` from `start`, delivered and left unacknowledged to a
/// consumer that is removed again: readable on the `WEBHOOKS` work queue too, which takes no
/// ordered consumer, and gone before a notify-worker declares its own on the subject (a work
/// queue takes one consumer per subject).
async fn peek(
    world: &World,
    stream: &str,
    subject: &str,
    start: jetstream::consumer::DeliverPolicy,
) -> Vec<jetstream::Message> {
    let source = world.js.get_stream(stream).await.expect("stream");
    let mut consumer = source
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: subject.to_owned(),
            deliver_policy: start,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.info().await.expect("consumer info").num_pending;
    let mut messages = Vec::new();
    if pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(usize::try_from(pending).expect("a count"))
            .expires(std::time::Duration::from_secs(5))
            .messages()
            .await
            .expect("messages");
        while let Some(message) = batch.next().await {
            messages.push(message.expect("a message"));
        }
    }
    let name = consumer.cached_info().name.clone();
    source
        .delete_consumer(&name)
        .await
        .expect("consumer removed");
    messages
}

/// Checks that `message` is the replay of dead letter `seq`: the body and event id of the
/// original, no dead-letter bookkeeping.
pub(crate) fn assert_replayed_delivery(message: &jetstream::Message, letters: &Letters, seq: u64) {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    assert_eq!(
        header("X-Stockflow-Event-Id").as_deref(),
        Some(letters.event_id.as_str()),
        "the receiver can deduplicate"
    );
    assert_eq!(
        header("X-Stockflow-Event-Type").as_deref(),
        Some("stock_changed")
    );
    assert_eq!(
        header("Stockflow-Webhook-Source").as_deref(),
        Some("STOCK_CHANGES:1"),
        "the delivery's own headers are kept"
    );
    assert_eq!(
        header("Nats-Msg-Id"),
        Some(format!("replay:DEAD_LETTERS:{seq}"))
    );
    for gone in [
        subjects::HEADER_DEAD_LETTER_REASON,
        subjects::HEADER_ORIGINAL_STREAM,
        subjects::HEADER_ORIGINAL_MSG_ID,
        "Stockflow-Webhook-Endpoint",
        "Stockflow-Webhook-Attempts",
        "Stockflow-Webhook-Event-Id",
    ] {
        assert!(header(gone).is_none(), "{gone} is dead-letter bookkeeping");
    }
    let body: serde_json::Value = serde_json::from_slice(&message.payload).expect("json body");
    assert_eq!(body, letters.body);
}

/// Decisions published for `order_id`.
pub(crate) async fn decisions_for(world: &World, order_id: &str) -> usize {
    world
        .order_results()
        .await
        .iter()
        .filter(|r| {
            r.order_id == order_id
                && matches!(
                    r.result,
                    Some(
                        stockflow_proto::v1::order_result::Result::Confirmed(_)
                            | stockflow_proto::v1::order_result::Result::Rejected(_)
                    )
                )
        })
        .count()
}
