//! What the fault suite found, replayed one by one: an order placer that dies at a bad moment,
//! built with the worker's own scripts (as `crash.rs` does for stock facts), then the cancel and
//! the redelivery that follow.

use order_worker::command::{encode_lines, Line};
use stockflow_proto::v1::{
    order_event::Command, order_result::Result as Decision, OrderCancelled, OrderResult,
    ReleaseReason,
};

use crate::world::*;

const ORDER: &str = include_str!("../../../../workers/orders/lua/order.lua");
const RESERVE_LINE: &str = concat!(
    include_str!("../../../../workers/orders/lua/parts.lua"),
    include_str!("../../../../workers/orders/lua/reserve_line.lua")
);

/// A placer's steps done with the worker's scripts, publishing nothing, as if it died right after.
struct DeadPlacer<'a> {
    world: &'a World,
    order_id: &'a str,
    lines: Vec<Line>,
    redis: redis::aio::MultiplexedConnection,
}

impl<'a> DeadPlacer<'a> {
    async fn new(world: &'a World, order_id: &'a str, lines: &[(&str, &str, i64, &str)]) -> Self {
        let lines = lines
            .iter()
            .map(|(line_id, sku, quantity, location)| Line {
                line_id: (*line_id).into(),
                sku: (*sku).into(),
                quantity: *quantity,
                location: (*location).into(),
            })
            .collect();
        Self {
            world,
            order_id,
            lines,
            redis: world.redis.connection().await,
        }
    }

    /// The placement's command, as published (and redelivered).
    fn placement(&self) -> stockflow_proto::v1::OrderEvent {
        let lines: Vec<(&str, &str, i64, &str)> = self
            .lines
            .iter()
            .map(|l| {
                (
                    l.line_id.as_str(),
                    l.sku.as_str(),
                    l.quantity,
                    l.location.as_str(),
                )
            })
            .collect();
        order(
            &format!("place-{}", self.order_id),
            self.order_id,
            placed(&lines, 0),
        )
    }

    async fn order_script(&mut self, args: &[&str]) -> Vec<String> {
        let script = stockflow_shared::script(ORDER);
        let mut invocation = script.key(self.world.keys.order(self.order_id));
        for arg in args {
            invocation.arg(*arg);
        }
        invocation
            .invoke_async(&mut self.redis)
            .await
            .expect("order.lua")
    }

    /// `place` (hold 0, so the fingerprint is `0<GS><lines>`) and every line's reservation.
    async fn place_and_reserve(&mut self) {
        let encoded = encode_lines(&self.lines);
        let fingerprint = format!("0\u{1d}{encoded}");
        let begin = self
            .order_script(&["place", &fingerprint, &encoded, "0"])
            .await;
        assert_eq!(begin, ["go"]);
        for line in self.lines.clone() {
            let keys = &self.world.keys;
            let reply: Vec<String> = stockflow_shared::script(RESERVE_LINE)
                .key(keys.order_line(&line.sku, self.order_id, &line.line_id))
                .key(keys.stock(&line.sku))
                .key(keys.policy(&line.sku))
                .key(keys.channels(&line.sku))
                .arg(line.quantity)
                .arg(&line.location)
                .arg("")
                .arg(86_400)
                .arg("")
                .arg("")
                .invoke_async(&mut self.redis)
                .await
                .expect("reserve_line.lua");
            assert_eq!(reply[0], "reserved");
        }
    }

    /// `decide confirmed` (no hold); returns the script's answer.
    async fn decide_confirmed(&mut self) -> Vec<String> {
        self.order_script(&["decide", "confirmed", "0"]).await
    }
}

fn kinds(results: &[OrderResult]) -> Vec<&'static str> {
    results
        .iter()
        .map(|r| match &r.result {
            Some(Decision::Confirmed(_)) => "confirmed",
            Some(Decision::Rejected(_)) => "rejected",
            Some(Decision::Released(r)) if r.reason == ReleaseReason::Cancelled as i32 => {
                "released:cancelled"
            }
            Some(Decision::Released(_)) => "released:other",
            None => "none",
        })
        .collect()
}

#[tokio::test]
async fn a_reservation_a_cancel_released_before_the_ledger_had_it_is_recorded_by_the_redelivery() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("r", "DRUM", "wh", received(5))).await;
    world.wait_on_hand("DRUM", "wh", 5).await;
    // The placer reserved the line and died before recording it in the ledger.
    let mut placer = DeadPlacer::new(&world, "o-1", &[("1", "DRUM", 2, "wh")]).await;
    placer.place_and_reserve().await;
    assert_eq!(world.on_hand_reserved("DRUM", "wh").await, (5, 2));
    let orders = world.order_worker();
    world
        .publish_order(&order(
            "cancel-1",
            "o-1",
            Command::Cancelled(OrderCancelled {}),
        ))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(world.on_hand_reserved("DRUM", "wh").await, (5, 0));
    // The placement is redelivered.
    world.publish_order(&placer.placement()).await;
    world.wait_orders_idle().await;

    let ledger = world.ledger("DRUM").await;
    let mut kinds_seen: Vec<&str> = ledger.iter().map(|e| e.kind.as_str()).collect();
    kinds_seen.sort_unstable();
    assert_eq!(
        kinds_seen,
        ["received", "released", "reserved"],
        "the reservation is on the ledger, once"
    );
    let reserved: i64 = ledger
        .iter()
        .map(|e| e.after.unwrap_or_default().reserved - e.before.unwrap_or_default().reserved)
        .sum();
    assert_eq!(reserved, 0, "the ledger adds up to what Redis holds");
    assert_eq!(kinds(&world.order_results().await), ["released:cancelled"]);
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_order_whose_placer_died_before_reporting_is_reported_by_the_redelivery() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("r", "DRUM", "wh", received(5))).await;
    world.wait_on_hand("DRUM", "wh", 5).await;
    let orders = world.order_worker();

    // Cancelled before its placement: the placer saw the cancel, marked the order and died.
    world
        .publish_order(&order(
            "cancel-early",
            "early",
            Command::Cancelled(OrderCancelled {}),
        ))
        .await;
    world.wait_orders_idle().await;
    let mut early = DeadPlacer::new(&world, "early", &[("1", "DRUM", 1, "wh")]).await;
    let encoded = encode_lines(&early.lines);
    let begin = early
        .order_script(&["place", &format!("0\u{1d}{encoded}"), &encoded, "0"])
        .await;
    assert_eq!(begin, ["cancelled"]);

    // Cancelled while placing: the cancel released the line; the placer decided, saw the cancel
    // and died before reporting.
    let mut late = DeadPlacer::new(&world, "late", &[("1", "DRUM", 2, "wh")]).await;
    late.place_and_reserve().await;
    world
        .publish_order(&order(
            "cancel-late",
            "late",
            Command::Cancelled(OrderCancelled {}),
        ))
        .await;
    world.wait_orders_idle().await;
    assert_eq!(late.decide_confirmed().await, ["cancelled"]);

    // Both placements are redelivered.
    world.publish_order(&early.placement()).await;
    world.publish_order(&late.placement()).await;
    world.wait_orders_idle().await;
    let results = world.order_results().await;
    for order_id in ["early", "late"] {
        let of_order: Vec<OrderResult> = results
            .iter()
            .filter(|r| r.order_id == order_id)
            .cloned()
            .collect();
        assert_eq!(kinds(&of_order), ["released:cancelled"], "{order_id}");
    }
    assert_eq!(world.on_hand_reserved("DRUM", "wh").await, (5, 0));
    orders.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn a_confirmation_whose_placer_died_is_reported_before_the_release() {
    let world = World::start().await;
    let stock = world.stock_worker();
    world.publish(&event("r", "DRUM", "wh", received(5))).await;
    world.wait_on_hand("DRUM", "wh", 5).await;
    // The placer confirmed the order and died before reporting it.
    let mut placer = DeadPlacer::new(&world, "o-1", &[("1", "DRUM", 2, "")]).await;
    placer.place_and_reserve().await;
    assert_eq!(placer.decide_confirmed().await, ["ok"]);
    let orders = world.order_worker();
    // A cancel (or an expiry) ends the order before the placement is redelivered.
    world
        .publish_order(&order(
            "cancel-1",
            "o-1",
            Command::Cancelled(OrderCancelled {}),
        ))
        .await;
    world.wait_orders_idle().await;
    world.publish_order(&placer.placement()).await;
    world.wait_orders_idle().await;

    let results = world.order_results().await;
    assert_eq!(kinds(&results), ["confirmed", "released:cancelled"]);
    let Some(Decision::Confirmed(confirmed)) = &results[0].result else {
        unreachable!("checked above")
    };
    assert_eq!(confirmed.lines.len(), 1);
    let line = &confirmed.lines[0];
    assert_eq!(
        (
            line.line_id.as_str(),
            line.sku.as_str(),
            line.location.as_str(),
            line.quantity
        ),
        ("1", "DRUM", "wh", 2),
        "rebuilt from the line record"
    );
    assert_eq!(world.on_hand_reserved("DRUM", "wh").await, (5, 0));
    orders.shutdown().await;
    stock.shutdown().await;
}
