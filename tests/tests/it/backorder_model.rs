//! Property test: backorders under each policy — placements (`reserve_line`), cancels
//! (`release_line`) and stock facts (`apply_stock`: receipts plain and against a purchase order,
//! sales, purchase orders expected, units moved into and out of an unsellable state, and
//! redeliveries of earlier facts) on a real Redis — agree with a plain in-memory model after
//! every step: on hand, reserved, backordered units, each line's units held and still waiting,
//! the queue in order of placement, and the decision (reserved whole, backordered, short).

use proptest::prelude::*;
use stock_worker::fact::{Fact, Op};
use stockflow_proto::input::fact::Backorder;
use stockflow_proto::v1::UnsellableState;
use stockflow_shared::keys::Keys;
use stockflow_tests::{NatsServer, RedisServer};

const LOCATION: &str = "a";
const ORDERS: [&str; 2] = ["PO-1", "PO-2"];
const DAY: i64 = 86_400_000;
const EPOCH: i64 = 1_800_000_000_000;

#[derive(Debug, Clone)]
enum Step {
    /// A stock fact at the location.
    Fact(Op),
    /// A one-line order of this many units.
    Place(i64),
    /// Cancel the n-th placement (modulo their count).
    Cancel(usize),
    /// Redeliver the n-th earlier fact (modulo their count).
    Replay(usize),
}

fn policy() -> impl Strategy<Value = Backorder> {
    prop_oneof![
        Just(Backorder::AgainstIncoming),
        (1..30i64).prop_map(Backorder::Capped),
        Just(Backorder::Unlimited),
        Just(Backorder::None),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let po = (0..ORDERS.len()).prop_map(|i| ORDERS[i].to_owned());
    prop_oneof![
        3 => (1..12i64).prop_map(|q| Step::Fact(Op::Received(q))),
        1 => (1..6i64).prop_map(|q| Step::Fact(Op::Sold(q))),
        2 => (po.clone(), 1..15i64, 1..4i64).prop_map(|(po, q, day)| Step::Fact(Op::Expected {
            purchase_order: po,
            quantity: q,
            expected_at_ms: EPOCH + day * DAY,
        })),
        2 => (po, 1..15i64).prop_map(|(po, q)| Step::Fact(Op::ReceivedAgainst {
            purchase_order: po,
            quantity: q,
        })),
        1 => (1..5i64, any::<bool>()).prop_map(|(q, into)| Step::Fact(Op::UnsellableMoved {
            state: UnsellableState::Damaged,
            quantity: q,
            to_unsellable: into,
        })),
        4 => (1..10i64).prop_map(Step::Place),
        1 => any::<usize>().prop_map(Step::Cancel),
        1 => any::<usize>().prop_map(Step::Replay),
    ]
}

/// One placed line as the model keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    held: i64,
    waiting: i64,
    released: bool,
}

#[derive(Debug, Default)]
struct Model {
    on_hand: i64,
    reserved: i64,
    damaged: i64,
    /// Purchase order -> (outstanding, expected date).
    orders: std::collections::BTreeMap<String, (i64, i64)>,
    /// Every placement, in order (the queue is the ones still waiting, in this order).
    lines: Vec<Line>,
}

/// What the model expects of a placement.
#[derive(Debug, PartialEq)]
enum Decision {
    Reserved { covered: i64, backordered: i64 },
    Short,
}

impl Model {
    fn available(&self) -> i64 {
        self.on_hand - self.reserved - self.damaged
    }

    fn incoming(&self) -> i64 {
        self.orders.values().map(|(q, _)| q).sum()
    }

    fn backordered(&self) -> i64 {
        self.lines.iter().map(|l| l.waiting).sum()
    }

    /// Fills waiting lines from what is available, strictly in order of placement.
    fn fill(&mut self) {
        for i in 0..self.lines.len() {
            if self.lines[i].waiting == 0 {
                continue;
            }
            let available = self.available();
            if available <= 0 {
                return;
            }
            let t = available.min(self.lines[i].waiting);
            self.lines[i].waiting -= t;
            self.lines[i].held += t;
            self.reserved += t;
            if self.lines[i].waiting > 0 {
                return;
            }
        }
    }

    /// Applies a fact; false when the script refuses it (an unsellable move beyond what is free).
    fn fact(&mut self, op: &Op) -> bool {
        match op {
            Op::Received(q) => self.on_hand += q,
            Op::Sold(q) => self.on_hand -= q,
            Op::Expected {
                purchase_order,
                quantity,
                expected_at_ms,
            } => {
                let o = self.orders.entry(purchase_order.clone()).or_default();
                *o = (o.0 + quantity, *expected_at_ms);
            }
            Op::ReceivedAgainst {
                purchase_order,
                quantity,
            } => {
                let (out, at) = self.orders.remove(purchase_order).unwrap_or_default();
                let left = out - quantity.min(&out);
                if left > 0 {
                    self.orders.insert(purchase_order.clone(), (left, at));
                }
                self.on_hand += quantity;
            }
            Op::UnsellableMoved {
                quantity,
                to_unsellable,
                ..
            } => {
                if *to_unsellable {
                    if *quantity > self.on_hand - self.reserved - self.damaged {
                        return false;
                    }
                    self.damaged += quantity;
                } else {
                    if *quantity > self.damaged {
                        return false;
                    }
                    self.damaged -= quantity;
                }
            }
            other => unreachable!("not generated: {other:?}"),
        }
        self.fill();
        true
    }

    fn place(&mut self, policy: Backorder, quantity: i64) -> Decision {
        let available = self.available().max(0);
        if available >= quantity {
            self.reserved += quantity;
            self.lines.push(Line {
                held: quantity,
                waiting: 0,
                released: false,
            });
            return Decision::Reserved {
                covered: quantity,
                backordered: 0,
            };
        }
        let need = quantity - available;
        let allowance = match policy {
            Backorder::None => 0,
            Backorder::AgainstIncoming => (self.incoming() - self.backordered()).max(0),
            Backorder::Capped(limit) => (limit - self.backordered()).max(0),
            Backorder::Unlimited => i64::MAX,
        };
        if need > allowance {
            // A short line leaves no record that holds anything.
            self.lines.push(Line {
                held: 0,
                waiting: 0,
                released: true,
            });
            return Decision::Short;
        }
        self.reserved += available;
        self.lines.push(Line {
            held: available,
            waiting: need,
            released: false,
        });
        Decision::Reserved {
            covered: available,
            backordered: need,
        }
    }

    fn cancel(&mut self, i: usize) {
        let line = &mut self.lines[i];
        if line.released {
            return;
        }
        self.reserved -= line.held;
        line.held = 0;
        line.waiting = 0;
        line.released = true;
        self.fill();
    }
}

fn scripts() -> (redis::Script, redis::Script) {
    let parts = include_str!("../../../workers/orders/lua/parts.lua");
    (
        stockflow_shared::script(&format!(
            "{parts}\n{}",
            include_str!("../../../workers/orders/lua/reserve_line.lua")
        )),
        stockflow_shared::script(&format!(
            "{parts}\n{}",
            include_str!("../../../workers/orders/lua/release_line.lua")
        )),
    )
}

#[test]
fn backorders_agree_with_an_in_memory_model_under_every_policy() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let keys = Keys::new("sf");
    let (handler, conn) = runtime.block_on(async {
        let conn = stockflow_shared::connect::RedisSettings::local(&redis.url(), "sf")
            .connect()
            .await
            .expect("redis");
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let book = stockflow_tests::channel_book(&js).await;
        (
            stock_worker::StockHandler::with(conn, js, keys.clone(), 3600, book),
            redis.connection().await,
        )
    });
    let (reserve, release) = scripts();
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(policy in policy(), steps in prop::collection::vec(step(), 1..40))| {
        let sku = format!("BO-{}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut model = Model::default();
        let mut facts: Vec<(Fact, bool)> = vec![];
        let mut conn = conn.clone();
        let fact = |n: usize, location: &str, op: Op| Fact {
            meta: stockflow_proto::v1::EventMeta { event_id: format!("e{n}"), ..Default::default() },
            sku: sku.clone(),
            location: location.to_owned(),
            channel: String::new(),
            op,
        };
        runtime.block_on(async {
            let set = fact(usize::MAX, "", Op::PolicySet {
                threshold: None,
                safety_stock: None,
                location_priority: String::new(),
                backorder: Some(policy),
            });
            handler.apply(&set).await.expect("policy");
            for (n, step) in steps.iter().enumerate() {
                match step {
                    Step::Fact(op) => {
                        let f = fact(n, LOCATION, op.clone());
                        let applied = handler.apply(&f).await.expect("script runs");
                        let expected = model.fact(op);
                        prop_assert_eq!(
                            matches!(applied, stock_worker::Applied::New(_)),
                            expected,
                            "{:?}: {:?}", op, applied
                        );
                        facts.push((f, expected));
                    }
                    Step::Replay(i) if !facts.is_empty() => {
                        let (f, _) = &facts[i % facts.len()];
                        let applied = handler.apply(f).await.expect("script runs");
                        prop_assert!(
                            !matches!(applied, stock_worker::Applied::New(_)),
                            "a redelivery changes nothing: {:?}", applied
                        );
                    }
                    Step::Replay(_) => {}
                    Step::Place(quantity) => {
                        let i = model.lines.len();
                        let expected = model.place(policy, *quantity);
                        let order_id = format!("o{i}");
                        let reply: Vec<String> = reserve
                            .key(keys.order_line(&sku, &order_id, "1"))
                            .key(keys.stock(&sku))
                            .key(keys.policy(&sku))
                            .key(keys.channels(&sku))
                            .arg(quantity)
                            .arg(LOCATION)
                            .arg("")
                            .arg(3600)
                            .arg("")
                            .arg("")
                            .arg((i as u64 + 1) * 128)
                            .arg(&order_id)
                            .arg("1")
                            .invoke_async(&mut conn)
                            .await
                            .expect("reserve_line");
                        let got = match reply[0].as_str() {
                            "reserved" => Decision::Reserved {
                                covered: quantity - reply[3].parse::<i64>().expect("backordered"),
                                backordered: reply[3].parse().expect("backordered"),
                            },
                            _ => Decision::Short,
                        };
                        prop_assert_eq!(got, expected, "placing {} under {:?}", quantity, policy);
                    }
                    Step::Cancel(i) if !model.lines.is_empty() => {
                        let i = i % model.lines.len();
                        model.cancel(i);
                        let _: Vec<String> = release
                            .key(keys.order_line(&sku, &format!("o{i}"), "1"))
                            .key(keys.stock(&sku))
                            .key(keys.policy(&sku))
                            .key(keys.channels(&sku))
                            .arg(3600)
                            .arg("")
                            .invoke_async(&mut conn)
                            .await
                            .expect("release_line");
                    }
                    Step::Cancel(_) => {}
                }
                // Redis equals the model: levels, backordered units, the queue and every line.
                let stock: std::collections::BTreeMap<String, i64> =
                    redis::AsyncCommands::hgetall(&mut conn, keys.stock(&sku)).await.expect("stock");
                let field = |name: &str| stock.get(&format!("{name}:{LOCATION}")).copied().unwrap_or(0);
                prop_assert_eq!(
                    (field("oh"), field("rs"), field("dm"), field("bo")),
                    (model.on_hand, model.reserved, model.damaged, model.backordered()),
                    "after {:?}", step
                );
                let queue: Vec<String> =
                    redis::AsyncCommands::zrange(&mut conn, keys.backorders(&sku), 0, -1).await.expect("queue");
                let waiting: Vec<String> = model
                    .lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.waiting > 0)
                    .map(|(i, _)| keys.order_line(&sku, &format!("o{i}"), "1"))
                    .collect();
                prop_assert_eq!(queue, waiting, "the queue, in order of placement");
                for (i, line) in model.lines.iter().enumerate() {
                    let record: (Option<String>, Option<i64>) = redis::AsyncCommands::hmget(
                        &mut conn,
                        keys.order_line(&sku, &format!("o{i}"), "1"),
                        &["parts", "bo"],
                    )
                    .await
                    .expect("line record");
                    if line.released {
                        continue;
                    }
                    let held: i64 = record
                        .0
                        .unwrap_or_default()
                        .split('\u{1e}')
                        .filter_map(|p| p.split('\u{1f}').nth(1).and_then(|q| q.parse::<i64>().ok()))
                        .sum();
                    prop_assert_eq!((held, record.1.unwrap_or(0)), (line.held, line.waiting), "line o{}", i);
                }
            }
            Ok(())
        })?;
    });
}
