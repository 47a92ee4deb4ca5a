//! Property test: the `apply_stock` script, run on a real Redis, agrees with a plain in-memory
//! model on levels, ledger records and alert crossings — including replays of earlier events.

use std::collections::HashMap;

use proptest::prelude::*;
use stock_worker::{
    fact::{Fact, Op},
    Applied,
};
use stockflow_proto::v1::AlertKind;
use stockflow_shared::{keys::Keys, outcome::Verdict};

use stockflow_tests::{NatsServer, RedisServer};

const LOCATIONS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Step {
    Apply(Op, usize),
    /// Replay the n-th earlier step (modulo their count).
    Replay(usize),
}

fn op() -> impl Strategy<Value = (Op, usize)> {
    let loc = 0..LOCATIONS.len();
    prop_oneof![
        (1..20i64, loc.clone()).prop_map(|(q, l)| (Op::Received(q), l)),
        (1..20i64, loc.clone()).prop_map(|(q, l)| (Op::Sold(q), l)),
        (1..5i64, loc.clone()).prop_map(|(q, l)| (Op::Returned(q), l)),
        (-10..10i64, loc.clone())
            .prop_filter("non-zero", |(d, _)| *d != 0)
            .prop_map(|(d, l)| (Op::Adjusted(d), l)),
        (0..30i64, prop::option::of(0..30i64), loc.clone()).prop_map(|(oh, expected, l)| (
            Op::Counted {
                on_hand: oh,
                expected
            },
            l
        )),
        (1..10i64, loc.clone()).prop_map(|(q, l)| (
            Op::Transferred {
                to: LOCATIONS[1 - l].into(),
                quantity: q
            },
            l
        )),
        (
            prop::option::of(-1..15i64),
            prop::option::of(-1..5i64),
            0..=LOCATIONS.len()
        )
            .prop_filter("sets something", |(t, s, _)| t.is_some() || s.is_some())
            .prop_map(|(t, s, l)| (
                Op::PolicySet {
                    threshold: t,
                    safety_stock: s,
                    location_priority: String::new(),
                    backorder: None,
                },
                l
            )),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![4 => op().prop_map(|(o, l)| Step::Apply(o, l)), 1 => any::<usize>().prop_map(Step::Replay)]
}

/// Levels and policy of one SKU, applied one fact at a time (also the fault suite's model of
/// on_hand).
#[derive(Debug, Default, Clone)]
pub(crate) struct Model {
    on_hand: HashMap<String, i64>,
    threshold: HashMap<String, i64>,
    safety: HashMap<String, i64>,
}

impl Model {
    fn policy(map: &HashMap<String, i64>, loc: &str) -> Option<i64> {
        map.get(&format!(":{loc}")).or_else(|| map.get("")).copied()
    }
    /// on_hand at `loc`.
    pub(crate) fn on_hand(&self, loc: &str) -> i64 {
        self.levels(loc).0
    }
    fn levels(&self, loc: &str) -> (i64, i64) {
        let oh = self.on_hand.get(loc).copied().unwrap_or(0);
        (oh, oh - Self::policy(&self.safety, loc).unwrap_or(0))
    }
    /// Applies `op` at `loc`; returns (location, on_hand after, alerts) per change, or None when
    /// a stale count changed nothing.
    pub(crate) fn apply(
        &mut self,
        op: &Op,
        loc: &str,
    ) -> Option<Vec<(String, i64, Vec<AlertKind>)>> {
        let known: Vec<String> = {
            let mut k: Vec<String> = self.on_hand.keys().cloned().collect();
            k.sort();
            k
        };
        let mut touched: Vec<String> = vec![];
        let before_model = self.clone();
        match op {
            Op::Received(q) | Op::Returned(q) | Op::Adjusted(q) => {
                *self.on_hand.entry(loc.into()).or_default() += q;
                touched.push(loc.into());
            }
            Op::Sold(q) => {
                *self.on_hand.entry(loc.into()).or_default() -= q;
                touched.push(loc.into());
            }
            Op::Counted { on_hand, expected } => {
                if expected.is_some_and(|e| e != self.levels(loc).0) {
                    return None;
                }
                self.on_hand.insert(loc.into(), *on_hand);
                touched.push(loc.into());
            }
            Op::Transferred { to, quantity } => {
                *self.on_hand.entry(loc.into()).or_default() -= quantity;
                touched.push(loc.into());
                *self.on_hand.entry(to.clone()).or_default() += quantity;
                touched.push(to.clone());
            }
            Op::PolicySet {
                threshold,
                safety_stock,
                ..
            } => {
                let key = if loc.is_empty() {
                    String::new()
                } else {
                    format!(":{loc}")
                };
                for (map, value) in [
                    (&mut self.threshold, threshold),
                    (&mut self.safety, safety_stock),
                ] {
                    match value {
                        Some(v) if *v < 0 => {
                            map.remove(&key);
                        }
                        Some(v) => {
                            map.insert(key.clone(), *v);
                        }
                        None => {}
                    }
                }
                touched = if loc.is_empty() {
                    known
                } else {
                    vec![loc.into()]
                };
                if touched.is_empty() {
                    return Some(vec![(String::new(), 0, vec![])]);
                }
            }
            Op::ChannelRules { .. }
            | Op::ChannelRecompute { .. }
            | Op::ReceivedAgainst { .. }
            | Op::Expected { .. }
            | Op::ExpectedCancelled { .. }
            | Op::UnsellableMoved { .. }
            | Op::KitDefined { .. }
            | Op::KitBuildable { .. } => {
                unreachable!("the model generates no channel, incoming, unsellable or kit changes")
            }
        }
        Some(
            touched
                .into_iter()
                .map(|l| {
                    // A transfer's second leg starts where the first left the model.
                    let (b_oh, b_av) = before_model.levels(&l);
                    let (a_oh, a_av) = self.levels(&l);
                    let thr = Self::policy(&self.threshold, &l);
                    let mut alerts = vec![];
                    if thr.is_some_and(|t| b_av > t && a_av <= t) {
                        alerts.push(AlertKind::LowStock);
                    }
                    if b_av > 0 && a_av <= 0 {
                        alerts.push(AlertKind::OutOfStock);
                    }
                    if b_av <= 0 && a_av > 0 {
                        alerts.push(AlertKind::BackInStock);
                    }
                    if b_oh >= 0 && a_oh < 0 {
                        alerts.push(AlertKind::NegativeStock);
                    }
                    (l, a_oh, alerts)
                })
                .collect(),
        )
    }
}

#[test]
fn apply_stock_agrees_with_an_in_memory_model() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let handler = runtime.block_on(async {
        let conn = stockflow_shared::connect::RedisSettings::local(&redis.url(), "sf")
            .connect()
            .await
            .expect("redis");
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let book = stockflow_tests::channel_book(&js).await;
        stock_worker::StockHandler::with(conn, js, Keys::new("sf"), 3600, book)
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in prop::collection::vec(step(), 1..40))| {
        let sku = format!("PROP-{}", case.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut model = Model::default();
        let mut history: Vec<Fact> = vec![];
        runtime.block_on(async {
            for step in &steps {
                let (fact, replay) = match step {
                    Step::Apply(op, l) => {
                        let location = LOCATIONS.get(*l).copied().unwrap_or("");
                        let fact = Fact {
                            meta: stockflow_proto::v1::EventMeta { event_id: format!("e{}", history.len()), ..Default::default() },
                            sku: sku.clone(),
                            location: location.to_owned(),
                            channel: String::new(),
                            op: op.clone(),
                        };
                        history.push(fact.clone());
                        (fact, false)
                    }
                    Step::Replay(n) if !history.is_empty() => (history[n % history.len()].clone(), true),
                    Step::Replay(_) => continue,
                };
                let applied = handler.apply(&fact).await.expect("script runs");
                if replay {
                    prop_assert!(matches!(applied, Applied::Seen { .. }), "replay must be absorbed");
                    continue;
                }
                let Applied::New(outcome) = applied else {
                    prop_assert!(false, "first delivery must apply: {applied:?}");
                    unreachable!()
                };
                match model.apply(&fact.op, &fact.location) {
                    None => {
                        let stale = matches!(outcome.verdict, Verdict::StaleCount { .. });
                        prop_assert!(stale, "expected a stale count");
                    }
                    Some(expected) => {
                        prop_assert_eq!(&outcome.verdict, &Verdict::Applied);
                        let got: Vec<_> = outcome
                            .changes
                            .iter()
                            .map(|c| (c.location.clone(), c.after.on_hand, c.alerts.clone()))
                            .collect();
                        prop_assert_eq!(got, expected, "step {:?}", fact.op);
                        for c in &outcome.changes {
                            prop_assert_eq!(c.after.available, c.after.on_hand - c.after.reserved - c.after.safety_stock);
                        }
                    }
                }
            }
            Ok(())
        })?;
    });
}
