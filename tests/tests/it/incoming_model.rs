//! Property test: incoming stock (purchase orders) and unsellable units, applied by the
//! `apply_stock` script on a real Redis, agree with a plain in-memory model — levels after every
//! fact, the purchase order each entry records, refusals, and redeliveries of earlier facts (an
//! applied one absorbed, a refused one refused again).

use std::collections::BTreeMap;

use proptest::prelude::*;
use stock_worker::{
    fact::{Fact, Op},
    Applied,
};
use stockflow_proto::v1::UnsellableState;
use stockflow_shared::{
    keys::Keys,
    levels::{read_levels, LocationLevels},
    outcome::PurchaseOrder,
};
use stockflow_tests::{NatsServer, RedisServer};

const LOCATIONS: [&str; 2] = ["a", "b"];
const ORDERS: [&str; 2] = ["PO-1", "PO-2"];
const STATES: [UnsellableState; 3] = [
    UnsellableState::Damaged,
    UnsellableState::QualityControl,
    UnsellableState::Held,
];

#[derive(Debug, Clone)]
enum Step {
    Apply(Op, usize),
    /// Replay the n-th earlier step (modulo their count).
    Replay(usize),
}

fn op() -> impl Strategy<Value = (Op, usize)> {
    let loc = 0..LOCATIONS.len();
    let po = (0..ORDERS.len()).prop_map(|i| ORDERS[i].to_owned());
    prop_oneof![
        (1..20i64, loc.clone()).prop_map(|(q, l)| (Op::Received(q), l)),
        (1..15i64, loc.clone()).prop_map(|(q, l)| (Op::Sold(q), l)),
        (0..30i64, loc.clone()).prop_map(|(oh, l)| (
            Op::Counted {
                on_hand: oh,
                expected: None
            },
            l
        )),
        (po.clone(), 1..20i64, 1..5i64, loc.clone()).prop_map(|(po, q, day, l)| (
            Op::Expected {
                purchase_order: po,
                quantity: q,
                expected_at_ms: 1_800_000_000_000 + day * 86_400_000,
            },
            l
        )),
        (po.clone(), 1..25i64, loc.clone()).prop_map(|(po, q, l)| (
            Op::ReceivedAgainst {
                purchase_order: po,
                quantity: q
            },
            l
        )),
        (po, prop::option::of(1..10i64), loc.clone()).prop_map(|(po, q, l)| (
            Op::ExpectedCancelled {
                purchase_order: po,
                quantity: q
            },
            l
        )),
        (0..STATES.len(), 1..8i64, any::<bool>(), loc).prop_map(|(s, q, into, l)| (
            Op::UnsellableMoved {
                state: STATES[s],
                quantity: q,
                to_unsellable: into,
            },
            l
        )),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![5 => op().prop_map(|(o, l)| Step::Apply(o, l)), 1 => any::<usize>().prop_map(Step::Replay)]
}

/// One location as the model keeps it.
#[derive(Debug, Default, Clone)]
struct Location {
    on_hand: i64,
    /// Purchase order -> (outstanding, expected date).
    orders: BTreeMap<String, (i64, i64)>,
    unsellable: [i64; 3],
}

impl Location {
    fn levels(&self) -> LocationLevels {
        let incoming = self.orders.values().map(|(q, _)| q).sum();
        let earliest = self.orders.values().map(|(_, at)| *at).min().unwrap_or(0);
        LocationLevels {
            on_hand: self.on_hand,
            reserved: 0,
            safety_stock: 0,
            incoming,
            incoming_expected_at_ms: earliest,
            damaged: self.unsellable[0],
            quality_control: self.unsellable[1],
            held: self.unsellable[2],
            backordered: 0,
        }
    }
}

/// What the model expects of one fact.
#[derive(Debug, PartialEq)]
enum Expect {
    /// Applied: the location's levels after it, and the purchase order it recorded.
    Applied(LocationLevels, Option<PurchaseOrder>),
    /// Refused: an unsellable move beyond what there was.
    Refused,
}

#[derive(Debug, Default)]
struct Model {
    locations: BTreeMap<String, Location>,
}

impl Model {
    fn apply(&mut self, op: &Op, loc: &str) -> Expect {
        let l = self.locations.entry(loc.to_owned()).or_default();
        let mut order = None;
        match op {
            Op::Received(q) => l.on_hand += q,
            Op::Sold(q) => l.on_hand -= q,
            Op::Counted { on_hand, .. } => l.on_hand = *on_hand,
            Op::Expected {
                purchase_order,
                quantity,
                expected_at_ms,
            } => {
                let o = l.orders.entry(purchase_order.clone()).or_default();
                *o = (o.0 + quantity, *expected_at_ms);
                order = Some((purchase_order.clone(), *o));
            }
            Op::ReceivedAgainst {
                purchase_order,
                quantity,
            } => {
                let (out, at) = l.orders.remove(purchase_order).unwrap_or_default();
                let left = out - quantity.min(&out);
                l.on_hand += quantity;
                let kept = (left, if left > 0 { at } else { 0 });
                if left > 0 {
                    l.orders.insert(purchase_order.clone(), kept);
                }
                order = Some((purchase_order.clone(), kept));
            }
            Op::ExpectedCancelled {
                purchase_order,
                quantity,
            } => {
                let (out, at) = l.orders.remove(purchase_order).unwrap_or_default();
                let left = out - quantity.unwrap_or(out).min(out);
                let kept = (left, if left > 0 { at } else { 0 });
                if left > 0 {
                    l.orders.insert(purchase_order.clone(), kept);
                }
                order = Some((purchase_order.clone(), kept));
            }
            Op::UnsellableMoved {
                state,
                quantity,
                to_unsellable,
            } => {
                let i = STATES.iter().position(|s| s == state).expect("a state");
                if *to_unsellable {
                    let free = l.on_hand - l.unsellable.iter().sum::<i64>();
                    if *quantity > free {
                        return Expect::Refused;
                    }
                    l.unsellable[i] += quantity;
                } else {
                    if *quantity > l.unsellable[i] {
                        return Expect::Refused;
                    }
                    l.unsellable[i] -= quantity;
                }
            }
            other => unreachable!("not generated: {other:?}"),
        }
        Expect::Applied(
            l.levels(),
            order.map(|(reference, (outstanding, expected_at_ms))| PurchaseOrder {
                reference,
                outstanding,
                expected_at_ms,
            }),
        )
    }
}

fn stored(levels: &stockflow_proto::v1::Levels) -> LocationLevels {
    LocationLevels {
        on_hand: levels.on_hand,
        reserved: levels.reserved,
        safety_stock: levels.safety_stock,
        incoming: levels.incoming,
        incoming_expected_at_ms: levels.incoming_expected_at_ms,
        damaged: levels.damaged,
        quality_control: levels.quality_control,
        held: levels.held,
        backordered: 0,
    }
}

#[test]
fn incoming_and_unsellable_units_agree_with_an_in_memory_model() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let (handler, conn) = runtime.block_on(async {
        let conn = stockflow_shared::connect::RedisSettings::local(&redis.url(), "sf")
            .connect()
            .await
            .expect("redis");
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let book = stockflow_tests::channel_book(&js).await;
        (
            stock_worker::StockHandler::with(conn, js, Keys::new("sf"), 3600, book),
            redis.connection().await,
        )
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in prop::collection::vec(step(), 1..40))| {
        let sku = format!("INC-{}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut model = Model::default();
        let mut history: Vec<(Fact, bool)> = vec![];
        runtime.block_on(async {
            for step in &steps {
                let (fact, replay, index) = match step {
                    Step::Apply(op, l) => {
                        let fact = Fact {
                            meta: stockflow_proto::v1::EventMeta { event_id: format!("e{}", history.len()), ..Default::default() },
                            sku: sku.clone(),
                            location: LOCATIONS[*l].to_owned(),
                            channel: String::new(),
                            op: op.clone(),
                        };
                        (fact, None, history.len())
                    }
                    // A redelivery of an earlier fact: an applied one is absorbed, a refused one
                    // is refused again (its dedup record remembers the refusal), whatever the
                    // levels are now.
                    Step::Replay(n) if !history.is_empty() => {
                        let index = n % history.len();
                        let (fact, applied) = history[index].clone();
                        (fact, Some(applied), index)
                    }
                    Step::Replay(_) => continue,
                };
                let applied = handler.apply(&fact).await.expect("script runs");
                match replay {
                    Some(true) => {
                        prop_assert!(matches!(applied, Applied::Seen { .. }), "replay must be absorbed: {applied:?}");
                        continue;
                    }
                    Some(false) => {
                        prop_assert!(matches!(applied, Applied::Insufficient { .. }), "a refusal is remembered: {applied:?}");
                        continue;
                    }
                    None => {}
                }
                let expected = model.apply(&fact.op, &fact.location);
                let got = match &applied {
                    Applied::New(outcome) => {
                        prop_assert_eq!(outcome.changes.len(), 1, "{:?}", fact.op);
                        let c = &outcome.changes[0];
                        prop_assert_eq!(
                            c.after.available,
                            c.after.on_hand - c.after.damaged - c.after.quality_control - c.after.held,
                            "available leaves unsellable units out"
                        );
                        Expect::Applied(stored(&c.after), c.purchase_order.clone())
                    }
                    Applied::Insufficient { .. } => Expect::Refused,
                    other => {
                        prop_assert!(false, "unexpected answer {:?}", other);
                        unreachable!()
                    }
                };
                prop_assert_eq!(&got, &expected, "step {:?} at {}", fact.op, fact.location);
                prop_assert_eq!(index, history.len(), "only a new fact is judged");
                history.push((fact, matches!(expected, Expect::Applied(..))));
            }
            // What Redis holds equals the model, location by location.
            let held = read_levels(&mut conn.clone(), &Keys::new("sf"), &sku).await.expect("levels");
            for (location, l) in &model.locations {
                let got = held.get(location).copied().unwrap_or_default();
                prop_assert_eq!(got, l.levels(), "{} held", location);
            }
            Ok(())
        })?;
    });
}
