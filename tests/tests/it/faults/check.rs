//! The end-of-run comparison: Redis levels, the ledger, alerts, rejections, dead letters and
//! order results against the [`Book`] of accepted inputs.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_nats::jetstream;
use redis::AsyncCommands as _;
use stockflow_proto::{
    subjects,
    v1::{AlertKind, OrderResult, ReleaseReason, StockAlert, StockChanged, StockEventRejected},
};
use stockflow_shared::keys::Keys;
use stockflow_tests::read_stream;

use super::{
    webhooks::Deliveries,
    workload::{outcomes, Book, OrderOutcome, LOCATIONS},
};

/// What the streams hold at the end.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) ledger: Vec<StockChanged>,
    pub(crate) rejections: Vec<StockEventRejected>,
    pub(crate) alerts: Vec<StockAlert>,
    /// `Stockflow-Original-Msg-Id` of every dead letter of an input.
    pub(crate) dead_letters: Vec<String>,
    /// Webhook deliveries given up (`deadletter.webhooks.>`): their event ids.
    pub(crate) webhook_dead_letters: Vec<String>,
    pub(crate) results: Vec<OrderResult>,
    /// The event id a webhook receiver gets for each alert and each order result: its
    /// `Nats-Msg-Id`, or `<stream>:<sequence>` without one (workers/notify/README.md).
    pub(crate) alert_ids: Vec<String>,
    pub(crate) result_ids: Vec<String>,
}

fn header(message: &jetstream::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
}

fn event_ids(messages: &[jetstream::Message], stream: &str) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            header(m, "Nats-Msg-Id").unwrap_or_else(|| {
                let sequence = m.info().map_or(0, |i| i.stream_sequence);
                format!("{stream}:{sequence}")
            })
        })
        .collect()
}

fn decode<M: prost::Message + Default>(messages: &[jetstream::Message], what: &str) -> Vec<M> {
    messages
        .iter()
        .map(|m| M::decode(m.payload.clone()).unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect()
}

impl Streams {
    pub(crate) async fn read(js: &jetstream::Context) -> Self {
        let ledger = read_stream(js, subjects::STOCK_CHANGES, "stock.changes.>").await;
        let rejections = read_stream(js, subjects::STOCK_CHANGES, "stock.outcomes.>").await;
        let alerts = read_stream(js, subjects::ALERTS, "alerts.>").await;
        let letters = read_stream(js, subjects::DEAD_LETTERS, "deadletter.>").await;
        let results = read_stream(js, subjects::ORDER_RESULTS, "orders.results.>").await;
        let (webhook_letters, letters): (Vec<_>, Vec<_>) = letters
            .into_iter()
            .partition(|m| m.subject.starts_with("deadletter.webhooks."));
        Self {
            ledger: decode(&ledger, "ledger entry"),
            rejections: decode(&rejections, "rejection"),
            alerts: decode(&alerts, "alert"),
            dead_letters: letters
                .iter()
                .map(|m| header(m, subjects::HEADER_ORIGINAL_MSG_ID).unwrap_or_default())
                .collect(),
            webhook_dead_letters: webhook_letters
                .iter()
                .map(|m| header(m, "Stockflow-Webhook-Event-Id").unwrap_or_default())
                .collect(),
            results: decode(&results, "order result"),
            alert_ids: event_ids(&alerts, subjects::ALERTS),
            result_ids: event_ids(&results, subjects::ORDER_RESULTS),
        }
    }
}

/// Problems found, by check.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) problems: BTreeMap<&'static str, Vec<String>>,
    /// Context for the reader of a failure (not counted).
    details: Vec<String>,
    /// (sku, location) pairs compared.
    pub(crate) pairs: usize,
}

impl Report {
    fn fail(&mut self, check: &'static str, problem: String) {
        self.problems.entry(check).or_default().push(problem);
    }

    /// Makes sure every check appears, with zero when it found nothing.
    fn ran(&mut self, check: &'static str) {
        self.problems.entry(check).or_default();
    }

    pub(crate) fn mismatches(&self) -> usize {
        self.problems.values().map(Vec::len).sum()
    }

    /// One line per check, with the first few problems of a failing one.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for (check, problems) in &self.problems {
            out.push_str(&format!("  {check}: {} mismatches\n", problems.len()));
            for problem in problems.iter().take(8) {
                out.push_str(&format!("      {problem}\n"));
            }
        }
        for detail in &self.details {
            out.push_str(&format!("  > {detail}\n"));
        }
        out
    }
}

/// Reads every (sku, location)'s (on_hand, reserved) from Redis.
pub(crate) async fn levels(
    redis: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    skus: &[String],
) -> BTreeMap<(String, String), (i64, i64)> {
    let mut out = BTreeMap::new();
    for sku in skus {
        let fields: HashMap<String, i64> = redis.hgetall(keys.stock(sku)).await.expect("hgetall");
        for (field, value) in fields {
            let (kind, location) = field.split_once(':').expect("field is <kind>:<location>");
            let entry = out
                .entry((sku.clone(), location.to_owned()))
                .or_insert((0, 0));
            match kind {
                "oh" => entry.0 = value,
                "rs" => entry.1 = value,
                other => panic!("unknown stock field {other}"),
            }
        }
    }
    out
}

/// Ledger entries of order steps have causes `<order>/<line>/<step>[/<event>]`.
fn order_step(cause: &str) -> Option<(&str, &str, &str)> {
    let mut parts = cause.splitn(4, '/');
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// The expected (on_hand, reserved) of every (sku, location).
fn model_levels(
    book: &Book,
    outcomes: &BTreeMap<String, OrderOutcome>,
) -> BTreeMap<(String, String), (i64, i64)> {
    let mut out = BTreeMap::new();
    for (sku, model) in &book.models {
        for location in LOCATIONS {
            let shipped = book
                .shipped
                .get(&(sku.clone(), location.to_owned()))
                .copied()
                .unwrap_or(0);
            out.insert(
                (sku.clone(), location.to_owned()),
                (model.on_hand(location) - shipped, 0),
            );
        }
    }
    // Reserved: what confirmed orders that were not released still hold.
    for (order_id, outcome) in outcomes {
        let (Some(confirmed), true) = (outcome.confirmed(), outcome.holding()) else {
            continue;
        };
        let plan = book.orders.get(order_id);
        for allocation in &confirmed.lines {
            let shipped = plan.map_or(0, |p| p.shipped(&allocation.line_id));
            out.entry((allocation.sku.clone(), allocation.location.clone()))
                .or_insert((0, 0))
                .1 += allocation.quantity - shipped;
        }
    }
    out
}

/// Compares everything; every check is listed in the report, with its problems.
pub(crate) fn verify(
    book: &Book,
    streams: &Streams,
    actual: &BTreeMap<(String, String), (i64, i64)>,
    deliveries: &Deliveries,
) -> Report {
    let mut report = Report::default();
    let outcomes = outcomes(&streams.results);

    // 1. Levels equal the model.
    let expected = model_levels(book, &outcomes);
    report.ran("levels equal the model");
    let pairs: HashSet<&(String, String)> = expected.keys().chain(actual.keys()).collect();
    report.pairs = pairs.len();
    for pair in pairs {
        let want = expected.get(pair).copied().unwrap_or((0, 0));
        let have = actual.get(pair).copied().unwrap_or((0, 0));
        if want != have {
            report.fail(
                "levels equal the model",
                format!(
                    "{}@{}: (on_hand, reserved) is {have:?}, model {want:?}",
                    pair.0, pair.1
                ),
            );
        }
    }

    // 2. The ledger: each accepted fact has exactly its entries; order steps at most one each;
    //    and the entries add up to the final levels.
    report.ran("one ledger entry per change");
    let mut per_cause: HashMap<&str, usize> = HashMap::new();
    for entry in &streams.ledger {
        *per_cause.entry(entry.cause_event_id.as_str()).or_default() += 1;
    }
    for (cause, want) in &book.entries {
        let have = per_cause.get(cause.as_str()).copied().unwrap_or(0);
        if have != *want {
            report.fail(
                "one ledger entry per change",
                format!("{cause}: {have} entries, expected {want}"),
            );
        }
    }
    for (cause, have) in &per_cause {
        if order_step(cause).is_some() {
            if *have > 1 {
                report.fail(
                    "one ledger entry per change",
                    format!("order step {cause}: {have} entries"),
                );
            }
        } else if !book.entries.contains_key(*cause) {
            report.fail(
                "one ledger entry per change",
                format!("{cause}: {have} entries for no accepted input"),
            );
        }
    }
    report.ran("ledger adds up to the levels");
    let mut sums: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for entry in &streams.ledger {
        let (Some(before), Some(after)) = (entry.before, entry.after) else {
            report.fail(
                "ledger adds up to the levels",
                format!("{}: entry without levels", entry.cause_event_id),
            );
            continue;
        };
        if entry.location.is_empty() {
            continue; // a policy recorded before the SKU had stock anywhere
        }
        let sum = sums
            .entry((entry.sku.clone(), entry.location.clone()))
            .or_default();
        sum.0 += after.on_hand - before.on_hand;
        sum.1 += after.reserved - before.reserved;
    }
    let pairs: HashSet<&(String, String)> = sums.keys().chain(actual.keys()).collect();
    for pair in pairs {
        let sum = sums.get(pair).copied().unwrap_or((0, 0));
        let have = actual.get(pair).copied().unwrap_or((0, 0));
        if sum != have {
            report.fail(
                "ledger adds up to the levels",
                format!(
                    "{}@{}: ledger sums to {sum:?}, Redis {have:?}",
                    pair.0, pair.1
                ),
            );
        }
    }

    // 3. Reservations never made available negative.
    report.ran("no reservation made available negative");
    for entry in streams.ledger.iter().filter(|e| e.kind == "reserved") {
        let available = entry.after.map_or(0, |a| a.available);
        if available < 0 {
            report.fail(
                "no reservation made available negative",
                format!("{}: available {available}", entry.cause_event_id),
            );
        }
    }

    // 4. Alerts: one per crossing, none without one.
    check_alerts(&mut report, streams);

    // 5. Stale counts: one rejection each, nothing else rejected.
    report.ran("one rejection per stale count");
    let mut rejected: HashMap<&str, usize> = HashMap::new();
    for r in &streams.rejections {
        *rejected.entry(r.event_id.as_str()).or_default() += 1;
    }
    for id in &book.stale {
        if rejected.get(id.as_str()) != Some(&1) {
            report.fail(
                "one rejection per stale count",
                format!("{id}: {:?} rejections", rejected.get(id.as_str())),
            );
        }
    }
    for (id, n) in &rejected {
        if !book.stale.contains(*id) {
            report.fail(
                "one rejection per stale count",
                format!("{id}: rejected {n} times but its count was not stale"),
            );
        }
    }

    // 6. Every malformed input is dead-lettered once; nothing else is.
    report.ran("malformed inputs dead-lettered once");
    let mut letters: HashMap<&str, usize> = HashMap::new();
    for id in &streams.dead_letters {
        *letters.entry(id.as_str()).or_default() += 1;
    }
    for (id, what) in &book.malformed {
        if letters.get(id.as_str()) != Some(&1) {
            report.fail(
                "malformed inputs dead-lettered once",
                format!(
                    "{what} ({id}): {} dead letters",
                    letters.get(id.as_str()).unwrap_or(&0)
                ),
            );
        }
    }
    for (id, n) in &letters {
        if !book.malformed.contains_key(*id) {
            report.fail(
                "malformed inputs dead-lettered once",
                format!("valid input {id:?} dead-lettered {n} times"),
            );
        }
    }

    // 7. Orders.
    check_orders(&mut report, book, &outcomes, streams);

    // 8. Webhooks.
    check_webhooks(&mut report, streams, deliveries);
    report
}

/// Every alert and every order result reached the receiver at least once, signed; none was
/// given up (the receiver answers every POST with 204).
fn check_webhooks(report: &mut Report, streams: &Streams, deliveries: &Deliveries) {
    const DELIVERED: &str = "webhooks delivered at least once";
    const SIGNED: &str = "webhook signatures verify";
    report.ran(DELIVERED);
    report.ran(SIGNED);
    for (what, ids) in [
        ("alert", &streams.alert_ids),
        ("order result", &streams.result_ids),
    ] {
        for id in ids {
            if !deliveries.ids.contains(id) {
                report.fail(DELIVERED, format!("{what} {id}: never delivered"));
            }
        }
    }
    let known: HashSet<&String> = streams
        .alert_ids
        .iter()
        .chain(&streams.result_ids)
        .collect();
    for id in &deliveries.ids {
        if !known.contains(id) {
            report.fail(DELIVERED, format!("{id:?}: delivered, but no such event"));
        }
    }
    for id in &streams.webhook_dead_letters {
        report.fail(DELIVERED, format!("{id}: dead-lettered"));
    }
    for problem in &deliveries.bad_signatures {
        report.fail(SIGNED, problem.clone());
    }
}

fn check_alerts(report: &mut Report, streams: &Streams) {
    const CHECK: &str = "one alert per crossing";
    report.ran(CHECK);
    // Crossings without a threshold follow from the ledger's before/after alone.
    let mut expected: HashSet<(&str, &str, AlertKind)> = HashSet::new();
    let mut entries: HashMap<(&str, &str), &StockChanged> = HashMap::new();
    for entry in &streams.ledger {
        let (Some(b), Some(a)) = (entry.before, entry.after) else {
            continue;
        };
        let key = (entry.cause_event_id.as_str(), entry.location.as_str());
        entries.insert(key, entry);
        if b.available > 0 && a.available <= 0 {
            expected.insert((key.0, key.1, AlertKind::OutOfStock));
        }
        if b.available <= 0 && a.available > 0 {
            expected.insert((key.0, key.1, AlertKind::BackInStock));
        }
        if b.on_hand >= 0 && a.on_hand < 0 {
            expected.insert((key.0, key.1, AlertKind::NegativeStock));
        }
    }
    let mut seen: HashMap<(&str, &str, AlertKind), usize> = HashMap::new();
    for alert in &streams.alerts {
        let kind = AlertKind::try_from(alert.kind).unwrap_or(AlertKind::Unspecified);
        let key = (alert.cause_event_id.as_str(), alert.location.as_str(), kind);
        *seen.entry(key).or_default() += 1;
        if kind == AlertKind::LowStock {
            // The threshold is in the alert: the entry must cross it.
            let crossed = entries.get(&(key.0, key.1)).is_some_and(|e| {
                let (b, a) = (e.before.unwrap_or_default(), e.after.unwrap_or_default());
                b.available > alert.threshold && a.available <= alert.threshold
            });
            if !crossed {
                report.fail(
                    CHECK,
                    format!("low_stock for {}@{} crosses nothing", key.0, key.1),
                );
            }
        } else if !expected.contains(&key) {
            report.fail(
                CHECK,
                format!("{kind:?} for {}@{} crosses nothing", key.0, key.1),
            );
        }
    }
    for (key, n) in &seen {
        if *n > 1 {
            report.fail(
                CHECK,
                format!("{:?} for {}@{} raised {n} times", key.2, key.0, key.1),
            );
        }
    }
    for key in &expected {
        if !seen.contains_key(key) {
            report.fail(
                CHECK,
                format!("{:?} for {}@{} never raised", key.2, key.0, key.1),
            );
        }
    }
}

fn check_orders(
    report: &mut Report,
    book: &Book,
    outcomes: &BTreeMap<String, OrderOutcome>,
    streams: &Streams,
) {
    const DECISIONS: &str = "one decision per order";
    const RELEASES: &str = "releases as commanded";
    const STEPS: &str = "ledger matches each confirmed order";
    report.ran(DECISIONS);
    report.ran(RELEASES);
    report.ran(STEPS);
    let steps: HashMap<&str, &StockChanged> = streams
        .ledger
        .iter()
        .filter(|e| order_step(&e.cause_event_id).is_some())
        .map(|e| (e.cause_event_id.as_str(), e))
        .collect();
    let none = OrderOutcome::default();
    let mut steps_of: HashMap<&str, Vec<String>> = HashMap::new();
    for e in streams.ledger.iter() {
        if let Some((order_id, line_id, step)) = order_step(&e.cause_event_id) {
            steps_of
                .entry(order_id)
                .or_default()
                .push(format!("{line_id}:{step}@{}", e.location));
        }
    }
    let mut failures: Vec<&str> = Vec::new();
    for (order_id, plan) in &book.orders {
        let outcome = outcomes.get(order_id).unwrap_or(&none);
        let before = report.mismatches();
        let decisions = outcome.decisions.len();
        if decisions > 1 || outcome.released.len() > 1 {
            report.fail(
                DECISIONS,
                format!(
                    "{order_id}: {decisions} decisions, {} releases",
                    outcome.released.len()
                ),
            );
        }
        if decisions == 0 && !(plan.cancel_sent && outcome.released.len() == 1) {
            report.fail(DECISIONS, format!("{order_id}: no decision"));
        }
        let released = outcome.released.first().copied();
        let must_release = match outcome.confirmed() {
            None => plan.cancel_sent && decisions == 0,
            Some(c) => {
                plan.cancel_sent
                    || plan.fulfilment_ends_it()
                    || (c.expires_at_ms > 0 && !plan.commit_sent)
            }
        };
        let may_release =
            must_release || (outcome.confirmed().is_some_and(|c| c.expires_at_ms > 0));
        if must_release && released.is_none() {
            report.fail(RELEASES, format!("{order_id}: never released"));
        }
        if released.is_some() && !may_release {
            report.fail(
                RELEASES,
                format!("{order_id}: released unasked ({released:?})"),
            );
        }
        if plan.fulfilment_ends_it()
            && released.is_some_and(|r| r != ReleaseReason::FulfilledRemainder as i32)
        {
            report.fail(
                RELEASES,
                format!("{order_id}: fulfilled but released as {released:?}"),
            );
        }
        // Every confirmed line was reserved once, where the decision says, within availability;
        // what a release gave back is in the ledger once too.
        let allocations = outcome.confirmed().map(|c| c.lines.as_slice());
        for allocation in allocations.unwrap_or_default() {
            let cause = format!("{order_id}/{}/reserve", allocation.line_id);
            match steps.get(cause.as_str()) {
                Some(e) if e.kind == "reserved" && e.location == allocation.location => {
                    let after = e.after.unwrap_or_default();
                    let before = e.before.unwrap_or_default();
                    if before.available < allocation.quantity || after.available < 0 {
                        report.fail(
                            STEPS,
                            format!("{cause}: confirmed beyond availability ({before:?})"),
                        );
                    }
                }
                other => report.fail(
                    STEPS,
                    format!(
                        "{cause}: reserve entry {:?}",
                        other.map(|e| (&e.kind, &e.location))
                    ),
                ),
            }
            let left = allocation.quantity - plan.shipped(&allocation.line_id);
            let release = format!("{order_id}/{}/release", allocation.line_id);
            let has_release = steps.contains_key(release.as_str());
            if released.is_some() && left > 0 && !has_release {
                report.fail(STEPS, format!("{release}: missing"));
            }
            if released.is_none() && has_release {
                report.fail(
                    STEPS,
                    format!("{release}: released although the order holds"),
                );
            }
        }
        if report.mismatches() > before {
            failures.push(order_id.as_str());
        }
    }
    for order_id in outcomes.keys() {
        if !book.orders.contains_key(order_id) {
            report.fail(DECISIONS, format!("{order_id}: a result for no order sent"));
        }
    }
    // A line given back was taken first, on the record.
    for cause in steps.keys() {
        if let Some((order_id, line_id, "release")) = order_step(cause) {
            let reserve = format!("{order_id}/{line_id}/reserve");
            if !steps.contains_key(reserve.as_str()) {
                report.fail(STEPS, format!("{cause}: released, but no reserve entry"));
                failures.push(order_id);
            }
        }
    }
    // Each fulfilment ships each of its lines once.
    let mut ships: HashMap<(&str, &str), usize> = HashMap::new();
    for cause in steps.keys() {
        if let Some((order_id, line_id, "ship")) = order_step(cause) {
            *ships.entry((order_id, line_id)).or_default() += 1;
        }
    }
    for (order_id, plan) in &book.orders {
        if let Some((shipped, _)) = &plan.fulfilment {
            for line_id in shipped.keys() {
                let n = ships.remove(&(order_id.as_str(), line_id.as_str()));
                if n != Some(1) {
                    report.fail(STEPS, format!("{order_id}/{line_id}: {n:?} shipments"));
                }
            }
        }
    }
    for ((order_id, line_id), n) in ships {
        report.fail(
            STEPS,
            format!("{order_id}/{line_id}: {n} shipments never sent"),
        );
    }
    // What a failing order was sent and what came of it, for the reader of a failure.
    for order_id in failures.into_iter().take(8) {
        let plan = &book.orders[order_id];
        let outcome = outcomes.get(order_id).unwrap_or(&none);
        let decisions: Vec<&str> = outcome
            .decisions
            .iter()
            .map(|d| match d {
                stockflow_proto::v1::order_result::Result::Confirmed(_) => "confirmed",
                stockflow_proto::v1::order_result::Result::Rejected(_) => "rejected",
                stockflow_proto::v1::order_result::Result::Released(_) => "released",
            })
            .collect();
        report.details.push(format!(
            "{order_id}: phase {}, {} lines, hold {}s, cancel {}, commit {}, fulfil {:?}; \
                 results {decisions:?} released {:?}; ledger steps {:?}",
            plan.phase,
            plan.lines.len(),
            plan.hold_seconds,
            plan.cancel_sent,
            plan.commit_sent,
            plan.fulfilment,
            outcome.released,
            steps_of.get(order_id),
        ));
    }
}
