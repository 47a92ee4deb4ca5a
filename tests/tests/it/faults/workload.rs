//! The workload: stock facts and order commands over many SKUs and locations, with duplicates
//! (same `event_id`, new `Nats-Msg-Id`) and malformed inputs — and the [`Book`] of what was
//! accepted, from which the expected end state is computed without asking the workers.
//!
//! Three phases, so that every expectation is deterministic although the workers process events
//! concurrently and in any order:
//!
//! 1. **trading** — opening receipts, then deltas, transfers, policies, placements (some with a
//!    one-second hold), cancels that may overtake their placement, commits, and duplicates.
//! 2. **settling** — after phase 1 is fully processed: physical counts on the *count SKUs* (the
//!    only facts those SKUs get in this phase, so a count's `expected_on_hand` is known), fulfils,
//!    cancels and commits of confirmed phase-1 orders, conflicting re-uses of `event_id`s, and
//!    late duplicates of phase-1 events.
//! 3. **closing** — deltas on every SKU (the count SKUs included, so a late duplicate of a count,
//!    were it applied again, would show), more placements, late duplicates of phases 1 and 2.
//!
//! Deltas commute and counts only land on SKUs that are quiet meanwhile, so applying the
//! accepted facts in generation order gives the one correct on_hand. Which concurrent order wins
//! a unit is not deterministic: the order part of the model is the results stream's word
//! (confirmed and not released), checked against invariants.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use prost::Message as _;
use stock_worker::fact::Op;
use stockflow_proto::{
    subjects,
    v1::{
        order_event::Command, order_result::Result as Decision, stock_event::Change, Allocation,
        FulfilledLine, OrderCancelled, OrderCommitted, OrderEvent, OrderFulfilled, OrderLine,
        OrderPlaced, OrderResult, StockEvent,
    },
};

use crate::{model::Model, world};

/// Where stock lives.
pub(crate) const LOCATIONS: [&str; 4] = ["wh", "store-1", "store-2", "web"];

/// SplitMix64: small and seedable, so a failing run's workload is replayed from its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1).max(1) as u64) as i64
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How big a run is.
#[derive(Debug, Clone)]
pub(crate) struct Scale {
    /// SKUs, of which the first `count_skus` get the settling phase's counts.
    pub(crate) skus: usize,
    pub(crate) count_skus: usize,
    /// Stock facts per phase (phase 1 adds an opening receipt per (sku, location)).
    pub(crate) facts: [usize; 3],
    /// Order placements per phase.
    pub(crate) placements: [usize; 3],
    /// Malformed inputs per phase.
    pub(crate) malformed: [usize; 3],
    /// Share of a phase's valid messages sent twice within the phase.
    pub(crate) immediate_duplicates: f64,
    /// Share of the earlier phases' valid messages sent again in a later phase.
    pub(crate) late_duplicates: f64,
    /// Processes per worker.
    pub(crate) replicas: usize,
    /// `kill -9`s per worker, per phase.
    pub(crate) kills: [usize; 3],
    /// Publishes awaiting their PubAck at once.
    pub(crate) publish_in_flight: usize,
    /// Valid input events the run must reach (the minimum in CI).
    pub(crate) min_events: usize,
    /// Bound on a phase settling, and on any one fault waiting for its moment.
    pub(crate) settle: std::time::Duration,
}

impl Scale {
    /// The CI run: the minimum of 50,000 events, bounded to a couple of minutes.
    pub(crate) fn ci() -> Self {
        Self {
            skus: 240,
            count_skus: 24,
            facts: [26_000, 8_800, 8_800],
            placements: [3_000, 900, 900],
            malformed: [90, 60, 40],
            immediate_duplicates: 0.07,
            late_duplicates: 0.06,
            replicas: 2,
            kills: [3, 2, 1],
            publish_in_flight: 2_000,
            min_events: 50_000,
            settle: std::time::Duration::from_secs(240),
        }
    }

    /// The hand-run soak: five times the events, more kills.
    pub(crate) fn soak() -> Self {
        Self {
            skus: 600,
            count_skus: 60,
            facts: [130_000, 45_000, 45_000],
            placements: [15_000, 4_500, 4_500],
            malformed: [300, 200, 150],
            kills: [10, 6, 4],
            min_events: 250_000,
            settle: std::time::Duration::from_secs(1_800),
            ..Self::ci()
        }
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) payload: Bytes,
    pub(crate) msg_id: String,
    /// Position in the phase's publication order, in `[0, 1.1)`.
    at: f64,
}

impl Outgoing {
    pub(crate) fn is_order(&self) -> bool {
        self.subject.starts_with("orders.")
    }
}

/// Counts of what was sent.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sent {
    /// Valid stock facts, each `event_id` once.
    pub(crate) facts: usize,
    /// Valid order commands, each once.
    pub(crate) order_commands: usize,
    /// Copies with the same `event_id` and a new `Nats-Msg-Id`, within the same phase.
    pub(crate) immediate_duplicates: usize,
    /// Copies sent in a later phase, after the original was processed.
    pub(crate) late_duplicates: usize,
    /// Inputs that must be dead-lettered (conflicting re-uses of an `event_id` included).
    pub(crate) malformed: usize,
    pub(crate) conflicts: usize,
    pub(crate) counts: usize,
    pub(crate) stale_counts: usize,
}

impl Sent {
    pub(crate) fn events(&self) -> usize {
        self.facts + self.order_commands
    }
    pub(crate) fn duplicates(&self) -> usize {
        self.immediate_duplicates + self.late_duplicates
    }
}

/// What one order was sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct OrderPlan {
    pub(crate) lines: Vec<OrderLine>,
    pub(crate) hold_seconds: i64,
    pub(crate) cancel_sent: bool,
    pub(crate) commit_sent: bool,
    /// Units shipped per line id, and whether it was the last shipment.
    pub(crate) fulfilment: Option<(BTreeMap<String, i64>, bool)>,
    /// Where the decision put each line (known once a fulfilment was planned).
    pub(crate) allocations: Vec<Allocation>,
    /// The phase it was placed in.
    pub(crate) phase: usize,
}

impl OrderPlan {
    /// The fulfilment ships every line whole or is the last one: the order must end released.
    pub(crate) fn fulfilment_ends_it(&self) -> bool {
        self.fulfilment.as_ref().is_some_and(|(shipped, last)| {
            *last
                || self
                    .lines
                    .iter()
                    .all(|l| shipped.get(&l.line_id) == Some(&l.quantity))
        })
    }

    /// Units shipped from line `line_id`.
    pub(crate) fn shipped(&self, line_id: &str) -> i64 {
        self.fulfilment
            .as_ref()
            .and_then(|(shipped, _)| shipped.get(line_id).copied())
            .unwrap_or(0)
    }
}

/// The ground truth: what was accepted, and what each accepted input must leave behind.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// Stock model per SKU (facts applied in generation order).
    pub(crate) models: BTreeMap<String, Model>,
    /// Units shipped by fulfilments, per (sku, location).
    pub(crate) shipped: HashMap<(String, String), i64>,
    /// Ledger entries each accepted stock fact must have, by `event_id`.
    pub(crate) entries: HashMap<String, usize>,
    /// Counts whose `expected_on_hand` is wrong: one `StockEventRejected` each, no ledger entry.
    pub(crate) stale: HashSet<String>,
    /// Every order, by id.
    pub(crate) orders: BTreeMap<String, OrderPlan>,
    /// `Nats-Msg-Id` of every input that must be dead-lettered, with what is wrong with it.
    pub(crate) malformed: HashMap<String, &'static str>,
    pub(crate) sent: Sent,
}

/// Order decisions as the results stream tells them.
#[derive(Debug, Default, Clone)]
pub(crate) struct OrderOutcome {
    /// Every `Confirmed` / `Rejected` (more than one is a bug).
    pub(crate) decisions: Vec<Decision>,
    /// Every release reason (more than one is a bug).
    pub(crate) released: Vec<i32>,
}

impl OrderOutcome {
    pub(crate) fn confirmed(&self) -> Option<&stockflow_proto::v1::OrderConfirmed> {
        self.decisions.iter().find_map(|d| match d {
            Decision::Confirmed(c) => Some(c),
            _ => None,
        })
    }
    pub(crate) fn rejected(&self) -> bool {
        self.decisions
            .iter()
            .any(|d| matches!(d, Decision::Rejected(_)))
    }
    /// Confirmed and not released: it holds stock now.
    pub(crate) fn holding(&self) -> bool {
        self.confirmed().is_some() && self.released.is_empty()
    }
}

/// Groups results by order.
pub(crate) fn outcomes(results: &[OrderResult]) -> BTreeMap<String, OrderOutcome> {
    let mut out: BTreeMap<String, OrderOutcome> = BTreeMap::new();
    for result in results {
        let entry = out.entry(result.order_id.clone()).or_default();
        match &result.result {
            Some(Decision::Released(r)) => entry.released.push(r.reason),
            Some(decision) => entry.decisions.push(decision.clone()),
            None => {}
        }
    }
    out
}

/// Generates the phases and keeps the book.
#[derive(Debug)]
pub(crate) struct Workload {
    rng: Rng,
    scale: Scale,
    pub(crate) skus: Vec<String>,
    next: u64,
    pub(crate) book: Book,
    /// Valid messages of finished phases: material for late duplicates.
    earlier: Vec<Outgoing>,
    /// Accepted facts (not policies or counts), for conflicting re-uses of their ids; only the
    /// first `settled_facts` belong to finished phases, whose dedup records surely exist.
    conflictable: Vec<StockEvent>,
    settled_facts: usize,
    /// The settling phase's counts: all re-sent late in the closing phase.
    counts: Vec<Outgoing>,
}

fn op_of(change: &Change) -> Op {
    match change {
        Change::Received(c) => Op::Received(c.quantity),
        Change::Sold(c) => Op::Sold(c.quantity),
        Change::Returned(c) => Op::Returned(c.quantity),
        Change::Adjusted(c) => Op::Adjusted(c.delta),
        Change::Counted(c) => Op::Counted {
            on_hand: c.on_hand,
            expected: c.expected_on_hand,
        },
        Change::Transferred(c) => Op::Transferred {
            to: c.to_location.clone(),
            quantity: c.quantity,
        },
        Change::PolicySet(c) => Op::PolicySet {
            threshold: c.low_stock_threshold,
            safety_stock: c.safety_stock,
            location_priority: c.location_priority.join(","),
            backorder: None,
        },
        Change::ChannelRules(_)
        | Change::ChannelRecompute(_)
        | Change::Expected(_)
        | Change::ExpectedCancelled(_)
        | Change::UnsellableMoved(_)
        | Change::KitDefined(_)
        | Change::KitBuildable(_) => {
            unreachable!("the workload sends no channel, incoming, unsellable or kit changes")
        }
    }
}

impl Workload {
    pub(crate) fn new(seed: u64, scale: &Scale) -> Self {
        // A few SKUs are not subject tokens as they are (a dot), so their base64 form is used.
        let skus = (0..scale.skus)
            .map(|i| {
                if i % 20 == 7 {
                    format!("sku.{i:04}")
                } else {
                    format!("SKU-{i:04}")
                }
            })
            .collect();
        Self {
            rng: Rng::new(seed),
            scale: scale.clone(),
            skus,
            next: 0,
            book: Book::default(),
            earlier: Vec::new(),
            conflictable: Vec::new(),
            settled_facts: 0,
            counts: Vec::new(),
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn count_sku(&self, sku: &str) -> bool {
        self.skus[..self.scale.count_skus].iter().any(|s| s == sku)
    }

    fn message(&mut self, subject: String, payload: Vec<u8>, at: f64) -> Outgoing {
        Outgoing {
            subject,
            payload: payload.into(),
            msg_id: self.id("m"),
            at,
        }
    }

    /// Records an accepted fact in the model and returns its message.
    fn fact(&mut self, sku: &str, location: &str, change: Change, at: f64) -> Outgoing {
        let id = self.id("f");
        let event = world::event(&id, sku, location, change);
        let op = event.change.as_ref().map(op_of).expect("a change");
        let model = self.book.models.entry(sku.to_owned()).or_default();
        match model.apply(&op, location) {
            Some(changes) => {
                self.book.entries.insert(id.clone(), changes.len());
            }
            None => {
                self.book.stale.insert(id.clone());
                self.book.sent.stale_counts += 1;
            }
        }
        if matches!(op, Op::Counted { .. }) {
            self.book.sent.counts += 1;
        } else if !matches!(op, Op::PolicySet { .. }) {
            self.conflictable.push(event.clone());
        }
        self.book.sent.facts += 1;
        self.message(subjects::stock_event(sku), event.encode_to_vec(), at)
    }

    fn other_location(&mut self, location: &str) -> &'static str {
        loop {
            let to = *self.rng.pick(&LOCATIONS);
            if to != location {
                return to;
            }
        }
    }

    /// A delta, a transfer or a per-location policy; drifts slowly down so that stock runs out,
    /// comes back, and sometimes goes negative.
    fn random_change(&mut self, location: &str) -> Change {
        let r = self.rng.below(100);
        let rng = &mut self.rng;
        match r {
            0..=9 => world::received(rng.between(5, 20)),
            10..=57 => world::sold(rng.between(1, 6)),
            58..=67 => world::returned(rng.between(1, 3)),
            68..=77 => {
                let delta = rng.between(1, 5);
                world::adjusted(if rng.chance(0.5) { delta } else { -delta })
            }
            78..=95 => {
                let quantity = rng.between(1, 5);
                let to = self.other_location(location);
                world::transferred(to, quantity)
            }
            _ => {
                let threshold = rng.chance(0.7).then(|| rng.between(-1, 12));
                let safety = (threshold.is_none() || rng.chance(0.3)).then(|| rng.between(-1, 4));
                world::policy(threshold, safety)
            }
        }
    }

    fn random_fact(&mut self, skus: &[String], at: f64) -> Outgoing {
        let sku = self.rng.pick(skus).clone();
        let location = *self.rng.pick(&LOCATIONS);
        let change = self.random_change(location);
        self.fact(&sku, location, change, at)
    }

    /// A SKU-wide policy (every location has stock by then: one ledger entry per location).
    fn sku_wide_policy(&mut self, sku: &str, at: f64) -> Outgoing {
        let mut change = world::policy(Some(self.rng.between(0, 10)), None);
        if self.rng.chance(0.5) {
            if let Change::PolicySet(p) = &mut change {
                let mut order = LOCATIONS.to_vec();
                for i in (1..order.len()).rev() {
                    order.swap(i, self.rng.below(i + 1));
                }
                p.location_priority = order[..2].iter().map(|l| (*l).to_owned()).collect();
            }
        }
        self.fact(sku, "", change, at)
    }

    fn order_message(&mut self, event: &OrderEvent, at: f64) -> Outgoing {
        self.book.sent.order_commands += 1;
        self.message(
            subjects::order_event(&event.order_id),
            event.encode_to_vec(),
            at,
        )
    }

    /// A placement of 1–3 lines, some at a named location, some with a one-second hold; with a
    /// cancel (possibly overtaking it) or a commit now and then.
    fn placement(&mut self, phase: usize, at: f64, out: &mut Vec<Outgoing>) {
        let order_id = self.id("o");
        let lines: Vec<OrderLine> = (1..=self.rng.between(1, 3))
            .map(|n| OrderLine {
                line_id: n.to_string(),
                sku: self.rng.pick(&self.skus).clone(),
                quantity: self.rng.between(1, 4),
                location: if self.rng.chance(0.5) {
                    String::new()
                } else {
                    (*self.rng.pick(&LOCATIONS)).to_owned()
                },
            })
            .collect();
        let hold_seconds = if self.rng.chance(0.15) { 1 } else { 0 };
        let id = self.id("c");
        let event = world::order(
            &id,
            &order_id,
            Command::Placed(OrderPlaced {
                lines: lines.clone(),
                hold_seconds,
                ..Default::default()
            }),
        );
        let message = self.order_message(&event, at);
        out.push(message);
        let mut plan = OrderPlan {
            lines,
            hold_seconds,
            phase,
            ..OrderPlan::default()
        };
        if self.rng.chance(0.08) {
            // Sometimes published just before the placement: the cancel overtakes it.
            let when = at + self.rng.unit() * 0.01 - 0.003;
            let id = self.id("c");
            let cancel = world::order(&id, &order_id, Command::Cancelled(OrderCancelled {}));
            let message = self.order_message(&cancel, when);
            out.push(message);
            plan.cancel_sent = true;
        } else if hold_seconds > 0 && self.rng.chance(0.4) {
            let when = at + self.rng.unit() * 0.01;
            let id = self.id("c");
            let commit = world::order(&id, &order_id, Command::Committed(OrderCommitted {}));
            let message = self.order_message(&commit, when);
            out.push(message);
            plan.commit_sent = true;
        }
        self.book.orders.insert(order_id, plan);
    }

    fn malformed(&mut self, what: &'static str, subject: String, payload: Vec<u8>) -> Outgoing {
        let at = self.rng.unit();
        let message = self.message(subject, payload, at);
        self.book.malformed.insert(message.msg_id.clone(), what);
        self.book.sent.malformed += 1;
        message
    }

    /// One malformed input of a random class, on either stream.
    fn random_malformed(&mut self) -> Outgoing {
        let sku = self.rng.pick(&self.skus).clone();
        let id = self.id("bad");
        let stock = |change: Change| world::event(&id, &sku, "wh", change);
        let subject = subjects::stock_event(&sku);
        match self.rng.below(12) {
            0 => self.malformed(
                "garbage",
                subject,
                b"\xff\xff\xff not a StockEvent".to_vec(),
            ),
            1 => {
                let mut event = stock(world::received(1));
                event.meta.as_mut().expect("meta").event_id.clear();
                self.malformed("no event_id", subject, event.encode_to_vec())
            }
            2 => self.malformed("zero", subject, stock(world::received(0)).encode_to_vec()),
            3 => self.malformed("negative", subject, stock(world::sold(-3)).encode_to_vec()),
            4 => {
                let event = world::event(&id, &sku, &"L".repeat(65), world::received(1));
                self.malformed("long location", subject, event.encode_to_vec())
            }
            5 => {
                let other = subjects::stock_event("SOMEWHERE-ELSE");
                self.malformed(
                    "wrong subject",
                    other,
                    stock(world::sold(1)).encode_to_vec(),
                )
            }
            6 => {
                let mut event = stock(world::received(1));
                event.change = None;
                self.malformed("no change", subject, event.encode_to_vec())
            }
            7 => {
                let event = stock(world::transferred("wh", 2));
                self.malformed("self transfer", subject, event.encode_to_vec())
            }
            8 => {
                let subject = subjects::order_event(&id);
                self.malformed("garbage order", subject, b"\x0a\xff\xff".to_vec())
            }
            9 => {
                let event = world::order(&id, &id, world::placed(&[], 0));
                let subject = subjects::order_event(&id);
                self.malformed("no lines", subject, event.encode_to_vec())
            }
            10 => {
                let event = world::order(&id, &id, world::placed(&[("1", &sku, 0, "")], 0));
                let subject = subjects::order_event(&id);
                self.malformed("zero line", subject, event.encode_to_vec())
            }
            _ => {
                let event = world::order(&id, &id, world::placed(&[("1", &sku, 1, "")], -1));
                let subject = subjects::order_event(&id);
                self.malformed("negative hold", subject, event.encode_to_vec())
            }
        }
    }

    /// An earlier fact's `event_id` with a different quantity: a conflict, dead-lettered.
    fn conflict(&mut self) -> Option<Outgoing> {
        if self.settled_facts == 0 {
            return None;
        }
        let mut event = self
            .rng
            .pick(&self.conflictable[..self.settled_facts])
            .clone();
        let bump = |q: &mut i64| *q += 1;
        match event.change.as_mut()? {
            Change::Received(c) => bump(&mut c.quantity),
            Change::Sold(c) => bump(&mut c.quantity),
            Change::Returned(c) => bump(&mut c.quantity),
            Change::Adjusted(c) => c.delta = if c.delta == -1 { -2 } else { c.delta + 1 },
            Change::Transferred(c) => bump(&mut c.quantity),
            Change::Counted(c) => bump(&mut c.on_hand),
            Change::PolicySet(_)
            | Change::ChannelRules(_)
            | Change::ChannelRecompute(_)
            | Change::Expected(_)
            | Change::ExpectedCancelled(_)
            | Change::UnsellableMoved(_)
            | Change::KitDefined(_)
            | Change::KitBuildable(_) => return None,
        }
        self.book.sent.conflicts += 1;
        Some(self.malformed(
            "event_id conflict",
            subjects::stock_event(&event.sku),
            event.encode_to_vec(),
        ))
    }

    /// Copies of a share of `messages` with new `Nats-Msg-Id`s, a little later in the phase.
    fn immediate_duplicates(&mut self, messages: &[Outgoing]) -> Vec<Outgoing> {
        let n = (messages.len() as f64 * self.scale.immediate_duplicates) as usize;
        (0..n)
            .map(|_| {
                let original = self.rng.pick(messages).clone();
                let at = original.at + self.rng.unit() * 0.08;
                self.book.sent.immediate_duplicates += 1;
                Outgoing {
                    msg_id: self.id("m"),
                    at,
                    ..original
                }
            })
            .collect()
    }

    /// Copies of earlier phases' messages, re-sent long after they were processed.
    fn late_duplicates(&mut self, n: usize) -> Vec<Outgoing> {
        if self.earlier.is_empty() {
            return Vec::new();
        }
        (0..n)
            .map(|_| {
                let original = self.rng.pick(&self.earlier).clone();
                self.book.sent.late_duplicates += 1;
                Outgoing {
                    msg_id: self.id("m"),
                    at: self.rng.unit(),
                    ..original
                }
            })
            .collect()
    }

    /// Orders the phase's messages for publication and keeps the valid ones for later phases.
    fn finish(&mut self, valid: Vec<Outgoing>, mut extra: Vec<Outgoing>) -> Vec<Outgoing> {
        let mut all = self.immediate_duplicates(&valid);
        all.append(&mut extra);
        self.earlier.extend(valid.iter().cloned());
        self.settled_facts = self.conflictable.len();
        all.extend(valid);
        all.sort_by(|a, b| a.at.total_cmp(&b.at));
        all
    }

    /// Phase 1: opening receipts and policies, then trading.
    pub(crate) fn trading(&mut self) -> Vec<Outgoing> {
        let mut valid = Vec::new();
        let skus = self.skus.clone();
        for sku in &skus {
            for location in LOCATIONS {
                let at = self.rng.unit() * 0.02;
                let quantity = self.rng.between(15, 45);
                let message = self.fact(sku, location, world::received(quantity), at);
                valid.push(message);
            }
        }
        for _ in 0..self.scale.facts[0] {
            let at = 0.02 + self.rng.unit() * 0.98;
            let message = self.random_fact(&skus, at);
            valid.push(message);
        }
        for _ in 0..self.scale.placements[0] {
            let at = 0.02 + self.rng.unit() * 0.98;
            self.placement(1, at, &mut valid);
        }
        let malformed = (0..self.scale.malformed[0])
            .map(|_| self.random_malformed())
            .collect();
        self.finish(valid, malformed)
    }

    /// Phase 2: counts on the count SKUs, follow-ups of decided phase-1 orders, conflicts and late
    /// duplicates, more trading on the other SKUs.
    pub(crate) fn settling(&mut self, decided: &BTreeMap<String, OrderOutcome>) -> Vec<Outgoing> {
        let mut valid = Vec::new();
        let mut extra = Vec::new();
        let count_skus: Vec<String> = self.skus[..self.scale.count_skus].to_vec();
        let trading_skus: Vec<String> = self.skus[self.scale.count_skus..].to_vec();
        for sku in &count_skus {
            for location in LOCATIONS {
                let at = self.rng.unit();
                let on_hand = self.book.models[sku].on_hand(location);
                let counted = self.rng.between(0, 40);
                let change = match self.rng.below(20) {
                    0..=10 => world::counted(counted, None),
                    11..=15 => world::counted(counted, Some(on_hand)),
                    // A stale expectation: rejected, changes nothing.
                    _ => world::counted(counted, Some(on_hand + 7)),
                };
                let message = self.fact(sku, location, change, at);
                self.counts.push(message.clone());
                valid.push(message);
            }
        }
        for _ in 0..self.scale.facts[1] {
            let at = self.rng.unit();
            let message = self.random_fact(&trading_skus, at);
            valid.push(message);
        }
        for sku in trading_skus.iter().step_by(9) {
            let at = self.rng.unit();
            let message = self.sku_wide_policy(sku, at);
            valid.push(message);
        }
        for _ in 0..self.scale.placements[1] {
            let at = self.rng.unit();
            self.placement(2, at, &mut valid);
        }
        self.follow_ups(decided, &mut valid, &mut extra);
        for _ in 0..self.scale.malformed[1] / 2 {
            extra.extend(self.conflict());
        }
        for _ in 0..self.scale.malformed[1] / 2 {
            let message = self.random_malformed();
            extra.push(message);
        }
        let late = (self.earlier.len() as f64 * self.scale.late_duplicates) as usize;
        extra.extend(self.late_duplicates(late));
        self.finish(valid, extra)
    }

    /// Fulfils, cancels and commits for phase-1 orders whose decision is known; a fulfil of a
    /// rejected order and a conflicting placement, which must be dead-lettered.
    fn follow_ups(
        &mut self,
        decided: &BTreeMap<String, OrderOutcome>,
        valid: &mut Vec<Outgoing>,
        extra: &mut Vec<Outgoing>,
    ) {
        let ids: Vec<String> = self
            .book
            .orders
            .iter()
            .filter(|(_, plan)| plan.phase == 1 && !plan.cancel_sent && plan.hold_seconds == 0)
            .map(|(id, _)| id.clone())
            .collect();
        for order_id in ids {
            let Some(outcome) = decided.get(&order_id) else {
                continue;
            };
            let at = self.rng.unit();
            let plan = self.book.orders[&order_id].clone();
            let roll = self.rng.below(100);
            if let (Some(confirmed), true) = (outcome.confirmed(), outcome.holding()) {
                let ships_from_count_sku = plan.lines.iter().any(|l| self.count_sku(&l.sku));
                let id = self.id("c");
                let command = match roll {
                    0..=29 if !ships_from_count_sku => {
                        let mut shipped = BTreeMap::new();
                        for line in &plan.lines {
                            if self.rng.chance(0.75) {
                                let units = self.rng.between(1, line.quantity);
                                shipped.insert(line.line_id.clone(), units);
                            }
                        }
                        if shipped.is_empty() {
                            continue;
                        }
                        let last = self.rng.chance(0.5);
                        for a in &confirmed.lines {
                            let units = shipped.get(&a.line_id).copied().unwrap_or(0);
                            *self
                                .book
                                .shipped
                                .entry((a.sku.clone(), a.location.clone()))
                                .or_default() += units;
                        }
                        let lines = shipped
                            .iter()
                            .map(|(line_id, quantity)| FulfilledLine {
                                line_id: line_id.clone(),
                                quantity: *quantity,
                            })
                            .collect();
                        let entry = self.book.orders.get_mut(&order_id).expect("planned");
                        entry.fulfilment = Some((shipped, last));
                        entry.allocations = confirmed.lines.clone();
                        Command::Fulfilled(OrderFulfilled {
                            lines,
                            last_shipment: last,
                        })
                    }
                    30..=44 => {
                        self.book
                            .orders
                            .get_mut(&order_id)
                            .expect("planned")
                            .cancel_sent = true;
                        Command::Cancelled(OrderCancelled {})
                    }
                    45..=54 => {
                        self.book
                            .orders
                            .get_mut(&order_id)
                            .expect("planned")
                            .commit_sent = true;
                        Command::Committed(OrderCommitted {})
                    }
                    _ => continue,
                };
                let event = world::order(&id, &order_id, command);
                let message = self.order_message(&event, at);
                valid.push(message);
            } else if outcome.rejected() && roll < 4 {
                let id = self.id("bad");
                let event = world::order(
                    &id,
                    &order_id,
                    Command::Fulfilled(OrderFulfilled {
                        lines: vec![FulfilledLine {
                            line_id: "1".into(),
                            quantity: 1,
                        }],
                        last_shipment: true,
                    }),
                );
                let subject = subjects::order_event(&order_id);
                let message =
                    self.malformed("fulfil a rejected order", subject, event.encode_to_vec());
                extra.push(message);
            } else if roll >= 97 {
                let mut lines = plan.lines.clone();
                lines[0].quantity += 1;
                let id = self.id("bad");
                let event = world::order(
                    &id,
                    &order_id,
                    Command::Placed(OrderPlaced {
                        lines,
                        hold_seconds: plan.hold_seconds,
                        ..Default::default()
                    }),
                );
                let subject = subjects::order_event(&order_id);
                let message =
                    self.malformed("conflicting placement", subject, event.encode_to_vec());
                extra.push(message);
            }
        }
    }

    /// Phase 3: trading on every SKU, every count re-sent, late duplicates of both phases.
    pub(crate) fn closing(&mut self) -> Vec<Outgoing> {
        let mut valid = Vec::new();
        let skus = self.skus.clone();
        for _ in 0..self.scale.facts[2] {
            let at = self.rng.unit();
            let message = self.random_fact(&skus, at);
            valid.push(message);
        }
        for sku in skus.iter().skip(4).step_by(11) {
            let at = self.rng.unit();
            let message = self.sku_wide_policy(sku, at);
            valid.push(message);
        }
        for _ in 0..self.scale.placements[2] {
            let at = self.rng.unit();
            self.placement(3, at, &mut valid);
        }
        // A count applied twice would reset on_hand under the deltas of this phase.
        let mut extra: Vec<Outgoing> = self
            .counts
            .clone()
            .into_iter()
            .map(|original| Outgoing {
                msg_id: self.id("m"),
                at: self.rng.unit(),
                ..original
            })
            .collect();
        self.book.sent.late_duplicates += extra.len();
        let malformed: Vec<Outgoing> = (0..self.scale.malformed[2])
            .map(|_| self.random_malformed())
            .collect();
        extra.extend(malformed);
        extra.extend(self.conflict());
        let late = (self.earlier.len() as f64 * self.scale.late_duplicates / 2.0) as usize;
        extra.extend(self.late_duplicates(late));
        self.finish(valid, extra)
    }
}
