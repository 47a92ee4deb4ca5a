//! The fault suite: a mixed workload of stock facts and orders — duplicates, late re-sends and
//! malformed inputs included — runs while worker processes are killed with `kill -9` at random
//! moments, nats-server is killed and restarted, and redis-server is restarted. The notify worker
//! delivers every alert and order result to a webhook receiver of the test; it is killed once,
//! and later kept down while the stock workers finish a phase without it. At the end the levels,
//! the ledger, the alerts, the dead letters, the order results and the webhooks received are
//! compared with a model computed from the accepted inputs alone; the figures are printed.
//!
//! `cargo test -p stockflow-tests --test it -- --nocapture faults::` shows them in full; the
//! one-line summary is printed in any case. The soak variant (five times the events, more kills)
//! runs by hand: `cargo test -p stockflow-tests --test it -- --ignored --nocapture faults::soak`.
//! `STOCKFLOW_FAULTS_SEED=<n>` replays a run's workload (the kill moments stay random).

mod check;
mod fleet;
mod regressions;
mod webhooks;
mod workload;

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt as _;
use stockflow_proto::subjects;
use stockflow_shared::topology;
use stockflow_tests::eventually;

use crate::world::World;
use fleet::{Fault, Fleet, Group, Outage, Strike, Tally};
use workload::{Outgoing, Rng, Scale, Workload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_through_kills_and_restarts_matches_the_model() {
    run(Scale::ci()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of several minutes: cargo test -p stockflow-tests --test it -- --ignored faults::soak"]
async fn soak_mixed_workload_through_kills_and_restarts() {
    run(Scale::soak()).await;
}

fn seed() -> u64 {
    std::env::var("STOCKFLOW_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The faults of each phase: `(whose progress times it, at which fraction of the phase, what)`.
fn plan(scale: &Scale, phase: usize, rng: &mut Rng) -> Vec<(Group, f64, Fault)> {
    let mut plan = Vec::new();
    for _ in 0..scale.kills[phase] {
        plan.push((
            Group::Stock,
            0.05 + rng.unit() * 0.8,
            Fault::Kill(Group::Stock),
        ));
    }
    // In the last phase the order workers also go down for a while after their kills, and come
    // back when the stock workers are well ahead; no strike waits on the order workers meanwhile.
    let orders_until = if phase == 2 { 0.3 } else { 0.85 };
    for _ in 0..scale.kills[phase] {
        let at = 0.05 + rng.unit() * (orders_until - 0.05);
        plan.push((Group::Orders, at, Fault::Kill(Group::Orders)));
    }
    match phase {
        0 => plan.push((Group::Stock, 0.3 + rng.unit() * 0.4, Fault::RestartNats)),
        1 => {
            plan.push((Group::Stock, 0.3 + rng.unit() * 0.4, Fault::RestartRedis));
            plan.push((
                Group::Stock,
                0.1 + rng.unit() * 0.7,
                Fault::Kill(Group::Notify),
            ));
        }
        _ => {
            plan.push((Group::Orders, 0.35, Fault::Down(Group::Orders)));
            plan.push((Group::Stock, 0.75, Fault::Up(Group::Orders)));
            // The notify worker goes down mid-phase and comes back only once the stock workers
            // have processed the whole phase: they must not need it.
            plan.push((Group::Stock, 0.05, Fault::Mark));
            plan.push((Group::Stock, 0.45, Fault::Down(Group::Notify)));
            plan.push((Group::Stock, 1.0, Fault::Up(Group::Notify)));
        }
    }
    plan.sort_by(|a, b| a.1.total_cmp(&b.1));
    plan
}

/// Publishes `messages` with many PubAcks in flight; a failed publish is retried with the same
/// `Nats-Msg-Id`, so one that was stored after all is not stored twice.
async fn publish_all(
    js: jetstream::Context,
    messages: Vec<Outgoing>,
    in_flight: usize,
    deadline: Duration,
) {
    futures::stream::iter(messages)
        .map(|message| publish(&js, message, deadline))
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
}

async fn publish(js: &jetstream::Context, message: Outgoing, deadline: Duration) {
    let started = Instant::now();
    loop {
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(message.msg_id.clone());
        let stored = match js.send_publish(message.subject.clone(), publish).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "{} was never stored",
            message.msg_id
        );
        // Retry pace while nats-server restarts.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until both workers have acknowledged everything published so far.
async fn settle(world: &World, deadline: Duration) {
    for spec in [Group::Stock.consumer(), Group::Orders.consumer()] {
        stockflow_cli::wait_until_caught_up(&world.js, spec.stream, spec.durable, deadline)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Runs one phase: publishes `messages` while `plan` strikes; returns once all is processed.
async fn phase(
    world: &mut World,
    fleet: &mut Fleet,
    messages: Vec<Outgoing>,
    plan: &[(Group, f64, Fault)],
    rng: &mut Rng,
    tally: &mut Tally,
    scale: &Scale,
) -> (Duration, usize) {
    let started = Instant::now();
    let orders = messages.iter().filter(|m| m.is_order()).count();
    let stock = messages.len() - orders;
    let mut starts = [0u64; 2];
    for (start, stream) in starts
        .iter_mut()
        .zip([subjects::STOCK_EVENTS, subjects::ORDER_EVENTS])
    {
        *start = stockflow_cli::last_sequence(&world.js, stream)
            .await
            .expect("stream info");
    }
    let strikes: Vec<Strike> = plan
        .iter()
        .map(|&(when, fraction, fault)| {
            let (start, n) = match when {
                Group::Stock => (starts[0], stock),
                Group::Orders => (starts[1], orders),
                Group::Notify => panic!("the notify worker's strikes are timed by stock progress"),
            };
            Strike {
                when,
                ack_floor: start + (fraction * n as f64) as u64,
                fault,
            }
        })
        .collect();
    let publisher = tokio::spawn(publish_all(
        world.js.clone(),
        messages,
        scale.publish_in_flight,
        scale.settle,
    ));
    fleet
        .run(
            &strikes,
            &world.js,
            &mut world.nats,
            &mut world.redis,
            rng,
            tally,
            scale.settle,
        )
        .await;
    publisher.await.expect("publisher task");
    settle(world, scale.settle).await;
    (started.elapsed(), stock)
}

async fn run(scale: Scale) {
    let started = Instant::now();
    let seed = seed();
    let mut rng = Rng::new(seed ^ 0x5EED);
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("faults-{seed}"));
    std::fs::create_dir_all(&logs).expect("log directory");
    let mut world = World::start().await;
    let receiver = webhooks::Receiver::start().await;
    let mut fleet = Fleet::start(
        world.nats.url(),
        world.redis.url(),
        &logs,
        &[
            (Group::Stock, scale.replicas, Vec::new()),
            (Group::Orders, scale.replicas, Vec::new()),
            // One replica is enough for the run's deliveries; a kill takes the whole group.
            (Group::Notify, 1, receiver.worker_env(&logs)),
        ],
    );
    let mut workload = Workload::new(seed, &scale);
    let mut tally = Tally::default();
    let mut phases = Vec::new();

    for number in 0..3 {
        let messages = match number {
            0 => workload.trading(),
            // Follow-ups of phase-1 orders need their decisions.
            1 => {
                let results = check::Streams::read(&world.js).await.results;
                workload.settling(&workload::outcomes(&results))
            }
            _ => workload.closing(),
        };
        let faults = plan(&scale, number, &mut rng);
        let took = phase(
            &mut world, &mut fleet, messages, &faults, &mut rng, &mut tally, &scale,
        )
        .await;
        phases.push(took);
    }
    // The last checkout holds fall due after the workload: wait for their expiry to be applied.
    let mut redis = world.redis.connection().await;
    eventually("every due hold expired", scale.settle, || async {
        let due: u64 = redis::cmd("ZCARD")
            .arg(world.keys.holds_due())
            .query_async(&mut redis.clone())
            .await
            .ok()?;
        (due == 0).then_some(())
    })
    .await;
    settle(&world, scale.settle).await;
    // Every derived event has been handed to the notify worker's consumers; an input is acked
    // once its deliveries are in the WEBHOOKS outbox.
    for spec in [
        topology::NOTIFY_ALERTS,
        topology::NOTIFY_ORDER_RESULTS,
        topology::NOTIFY_STOCK_CHANGES,
    ] {
        stockflow_cli::wait_until_caught_up(&world.js, spec.stream, spec.durable, scale.settle)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // ... and from its outbox, POSTed to the receiver.
    crate::notify::wait_deliveries_done(&world, &["faults"]).await;
    let processing = started.elapsed();

    let streams = check::Streams::read(&world.js).await;
    let levels = check::levels(&mut redis, &world.keys, &workload.skus).await;
    let deliveries = receiver.deliveries();
    let report = check::verify(&workload.book, &streams, &levels, &deliveries);
    drop(fleet);

    let sent = &workload.book.sent;
    let outcomes = workload::outcomes(&streams.results);
    let confirmed = outcomes
        .values()
        .filter(|o| o.confirmed().is_some())
        .count();
    let rejected = outcomes.values().filter(|o| o.rejected()).count();
    let released = outcomes.values().filter(|o| !o.released.is_empty()).count();
    let kills = |g: Group| tally.kills.get(&g).copied().unwrap_or(0);
    let killed = |g: Group| tally.killed.get(&g).copied().unwrap_or(0);
    let duplicate_share = sent.duplicates() as f64 / sent.events() as f64;
    let figures = format!(
        "faults: seed {seed}, {} SKUs x {} locations, {} replicas per worker\n\
         \x20 events       {} (stock facts {}, order commands {})\n\
         \x20 duplicates   {} (immediate {}, late {}) = {:.1}% of events\n\
         \x20 malformed    {} (event_id conflicts {})\n\
         \x20 counts       {} (stale {})\n\
         \x20 kills        {} {} ({} processes), {} {} ({} processes), {} {} ({} processes)\n\
         \x20 isolation    stock inputs acked/s: {}; last phase {:.0}/s\n\
         \x20 restarts     nats-server {}, redis-server {}\n\
         \x20 orders       {} placed: {confirmed} confirmed, {rejected} rejected, {released} released\n\
         \x20 streams      {} ledger entries, {} alerts, {} rejections, {} dead letters\n\
         \x20 webhooks     {} POSTs, {} distinct events ({} alerts + {} order results expected), \
         {} signatures failed\n\
         \x20 time         phases {:.1?}; processed in {:.1?} ({:.0} inputs/s), checked in {:.1?}\n\
         \x20 compared     {} (sku, location) pairs\n\
         {}\
         \x20 mismatches   {}",
        scale.skus,
        workload::LOCATIONS.len(),
        scale.replicas,
        sent.events(),
        sent.facts,
        sent.order_commands,
        sent.duplicates(),
        sent.immediate_duplicates,
        sent.late_duplicates,
        duplicate_share * 100.0,
        sent.malformed,
        sent.conflicts,
        sent.counts,
        sent.stale_counts,
        Group::Stock.name(),
        kills(Group::Stock),
        killed(Group::Stock),
        Group::Orders.name(),
        kills(Group::Orders),
        killed(Group::Orders),
        Group::Notify.name(),
        kills(Group::Notify),
        killed(Group::Notify),
        tally
            .outages
            .iter()
            .map(describe_outage)
            .collect::<Vec<_>>()
            .join("; "),
        phases[2].1 as f64 / phases[2].0.as_secs_f64(),
        tally.nats_restarts,
        tally.redis_restarts,
        workload.book.orders.len(),
        streams.ledger.len(),
        streams.alerts.len(),
        streams.rejections.len(),
        streams.dead_letters.len() + streams.webhook_dead_letters.len(),
        deliveries.posts,
        deliveries.ids.len(),
        streams.alert_ids.len(),
        streams.result_ids.len(),
        deliveries.bad_signatures.len(),
        phases.iter().map(|(took, _)| *took).collect::<Vec<_>>(),
        processing,
        (sent.events() + sent.duplicates() + sent.malformed) as f64 / processing.as_secs_f64(),
        started.elapsed() - processing,
        report.pairs,
        report.describe(),
        report.mismatches(),
    );
    println!("{figures}");
    // Straight to stderr, past the test harness' capture: CI logs always show the figures.
    writeln!(
        std::io::stderr(),
        "faults: {} events, {} duplicates, {} malformed, kills {}+{}+{}, restarts nats {} redis {}, \
         {} webhooks, {} mismatches in {:.0?} (seed {seed})",
        sent.events(),
        sent.duplicates(),
        sent.malformed,
        kills(Group::Stock),
        kills(Group::Orders),
        kills(Group::Notify),
        tally.nats_restarts,
        tally.redis_restarts,
        deliveries.ids.len(),
        report.mismatches(),
        started.elapsed(),
    )
    .ok();

    assert_eq!(
        report.mismatches(),
        0,
        "the end state differs from the model (worker logs in {}):\n{}",
        logs.display(),
        report.describe()
    );
    assert!(sent.events() >= scale.min_events, "too few events");
    assert!(duplicate_share >= 0.10, "too few duplicates");
    assert!(
        kills(Group::Stock) >= 5 && kills(Group::Orders) >= 5,
        "too few kills"
    );
    assert_eq!((tally.nats_restarts, tally.redis_restarts), (1, 1));
    assert!(
        kills(Group::Notify) >= 1 && !streams.alert_ids.is_empty(),
        "the notify worker was killed while it had alerts to deliver"
    );
    // Fault isolation: the stock workers do not wait for the notify worker. With inputs waiting
    // when it went down, they acknowledged them and caught up before it came back. Their rate
    // with and without it is reported above (`isolation`), not asserted: on two shared cores a
    // rate over a second or two measures the machine's load as much as the workers.
    let notify: Vec<&Outage> = tally.outages_of(Group::Notify).collect();
    assert_eq!(notify.len(), 1, "one outage of the notify worker");
    for outage in notify {
        assert!(
            outage.stock_caught_up,
            "the stock workers caught up while notify-worker was down: {}",
            describe_outage(outage)
        );
        assert!(
            !outage.stock_backlog_at_start || outage.stock_acked_during > 0,
            "the stock workers acknowledged nothing while notify-worker was down: {}",
            describe_outage(outage)
        );
    }
    std::fs::remove_dir_all(&logs).ok();
}

/// `<group> down <s>: <n> acked at <rate>/s (before <rate>/s), caught up`.
fn describe_outage(outage: &Outage) -> String {
    format!(
        "{} down {:.1?}: {} acked at {:.0}/s (before {}){}",
        outage.group.name(),
        outage.lasted,
        outage.stock_acked_during,
        outage.stock_rate_during,
        outage
            .stock_rate_before
            .map_or("not measured".to_owned(), |r| format!("{r:.0}/s")),
        if outage.stock_caught_up {
            ", stock caught up meanwhile"
        } else {
            ""
        }
    )
}
