//! `Nats-Msg-Id`s: one scheme for every publisher, so JetStream's duplicate window drops the
//! same event sent twice, whichever way it came in (gateway, `stockctl publish`, `import`,
//! reconcile, the demo) — and derived events carry ids computed from their cause, so a worker
//! that re-publishes after a crash stores nothing twice.
//!
//! An input's id is built from what the workers deduplicate on — its SKU or order and its
//! `event_id` — and nothing else: the envelope (`source`, `reference`, `occurred_at_ms`) may
//! differ between two sends of one event. A re-send after the window is caught by the workers'
//! own `event_id` record (`STOCKFLOW_DEDUP_TTL_SECONDS`); correctness never depends on this id.

use crate::subjects::encode_token;

/// A stock fact: `fact:<sku-token>:<event_id>`.
pub fn stock_fact(sku: &str, event_id: &str) -> String {
    format!("fact:{}:{event_id}", encode_token(sku))
}

/// An order command: `order:<order-token>:<event_id>`.
pub fn order_command(order_id: &str, event_id: &str) -> String {
    format!("order:{}:{event_id}", encode_token(order_id))
}

/// Ledger entry `index` (0-based, among the entries its cause wrote) of a change to `sku`:
/// `chg:<sku-token>:<cause>:<index>`.
pub fn stock_changed(sku: &str, cause: &str, index: usize) -> String {
    format!("chg:{}:{cause}:{index}", encode_token(sku))
}

/// An alert of kind `kind` (`low_stock`, ...) raised by ledger entry `index` of `cause`:
/// `alr:<sku-token>:<cause>:<index>:<kind>`.
pub fn alert(sku: &str, cause: &str, index: usize, kind: &str) -> String {
    format!("alr:{}:{cause}:{index}:{kind}", encode_token(sku))
}

/// The rejection of a stock fact (e.g. a stale count): `out:<sku-token>:<cause>`.
pub fn stock_outcome(sku: &str, cause: &str) -> String {
    format!("out:{}:{cause}", encode_token(sku))
}

/// Order result `id` of `order_id` (its decision or an end): `res:<order-token>:<id>`.
pub fn order_result(order_id: &str, id: &str) -> String {
    format!("res:{}:{id}", encode_token(order_id))
}

/// The expiry command of an order's checkout hold, published by every order-worker replica
/// that sees it due and stored once: `expire:<order-token>`.
pub fn hold_expiry(order_id: &str) -> String {
    format!("expire:{}", encode_token(order_id))
}

/// `endpoint`'s delivery of the input at `stream`/`sequence`: a redelivered input enqueues
/// nothing twice. `whk:<endpoint>:<stream>:<sequence>`.
pub fn webhook_delivery(endpoint: &str, stream: &str, sequence: u64) -> String {
    format!("whk:{endpoint}:{stream}:{sequence}")
}

/// The dead letter of the message at `stream`/`sequence`: a retried dead-lettering stores it
/// once. `dlq:<stream>:<sequence>`.
pub fn dead_letter(stream: &str, sequence: u64) -> String {
    format!("dlq:{stream}:{sequence}")
}

/// A replay of dead letter `sequence`: replaying it twice stores one message.
/// `replay:DEAD_LETTERS:<sequence>`.
pub fn replay(sequence: u64) -> String {
    format!("replay:{}:{sequence}", crate::subjects::DEAD_LETTERS)
}

/// A channel definition change: `chn:<channel-id>:<event_id>`.
pub fn channel_event(channel: &str, event_id: &str) -> String {
    format!("chn:{channel}:{event_id}")
}

/// The `event_id` of the recompute command a channel's rules of `rules_version` send to every
/// SKU: `rules:<channel-id>:<rules_version>` (its `Nats-Msg-Id` is [`stock_fact`]'s).
pub fn channel_recompute_event(channel: &str, rules_version: u64) -> String {
    format!("rules:{channel}:{rules_version}")
}

/// Version `version` of what `channel` may sell of `sku`: `ats:<channel-id>:<sku-token>:<version>`.
pub fn availability(channel: &str, sku: &str, version: u64) -> String {
    format!("ats:{channel}:{}:{version}", encode_token(sku))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_token_and_the_cause() {
        assert_eq!(stock_fact("a.b", "k-1"), "fact:~YS5i:k-1");
        assert_eq!(stock_fact("A1", "k-1"), "fact:A1:k-1");
        assert_eq!(order_command("web 1", "p-1"), "order:~d2ViIDE:p-1");
        assert_eq!(stock_changed("A1", "e-1", 1), "chg:A1:e-1:1");
        assert_eq!(alert("A1", "e-1", 0, "low_stock"), "alr:A1:e-1:0:low_stock");
        assert_eq!(stock_outcome("A1", "e-1"), "out:A1:e-1");
    }

    #[test]
    fn a_fact_and_an_order_never_share_an_id() {
        assert_ne!(stock_fact("X", "e"), order_command("X", "e"));
    }
}
