//! The workers under test, as child processes of the real binaries (so `kill -9` is a real
//! SIGKILL), and the faults that strike them and the servers while the workload runs.
//!
//! A worker kind is a [`Group`]: its binary, its durable consumer and its extra environment. A
//! fault strikes when a group's consumer has acknowledged the stream up to a chosen sequence, so
//! "a random moment" is a random point of progress, never a sleep.
//!
//! An outage ([`Fault::Down`] … [`Fault::Up`]) measures how fast the stock workers go meanwhile,
//! against a [`Fault::Mark`] before it: fault isolation is a rate, and whether the stock workers
//! caught up while the group was still down.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use stockflow_shared::topology::{ConsumerSpec, NOTIFY_ALERTS, ORDER_WORKER, STOCK_WORKER};
use stockflow_tests::{eventually, workspace_binary, KillOnDrop, NatsServer, RedisServer};

use super::workload::Rng;

/// A kind of worker, run as several replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Group {
    Stock,
    Orders,
    Notify,
}

impl Group {
    pub(crate) fn name(self) -> &'static str {
        self.binary()
    }

    fn binary(self) -> &'static str {
        match self {
            Self::Stock => "stock-worker",
            Self::Orders => "order-worker",
            Self::Notify => "notify-worker",
        }
    }

    /// The durable consumer whose progress times this group's faults.
    pub(crate) fn consumer(self) -> ConsumerSpec {
        match self {
            Self::Stock => STOCK_WORKER,
            Self::Orders => ORDER_WORKER,
            Self::Notify => NOTIFY_ALERTS,
        }
    }

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Stock => &[],
            // Due holds are found quickly, so the run's last holds expire soon after it.
            Self::Orders => &[("STOCKFLOW_HOLD_POLL_MILLIS", "50")],
            Self::Notify => &[],
        }
    }
}

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `kill -9` one replica of the group (now and then all of them), then start what died.
    Kill(Group),
    /// `kill -9` every replica and leave the group down until [`Fault::Up`].
    Down(Group),
    /// Start the group's replicas again.
    Up(Group),
    /// No fault: notes the stock workers' progress, the baseline of the next outage's rate.
    Mark,
    /// `kill -9` nats-server and start it again on the same port and store.
    RestartNats,
    /// SIGTERM redis-server and start it again from its AOF. A SIGTERM flushes the AOF; a
    /// `kill -9` may lose up to a second of writes (appendfsync everysec), which is repair
    /// territory for rebuild/reconcile, not for this suite.
    RestartRedis,
}

/// A fault and its moment: once `when`'s consumer has acknowledged up to `ack_floor`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strike {
    pub(crate) when: Group,
    pub(crate) ack_floor: u64,
    pub(crate) fault: Fault,
}

/// Environment variables of a group's processes, beyond the connections.
pub(crate) type GroupEnv = Vec<(String, String)>;

/// One group's outage, as the stock workers saw it (fault isolation).
#[derive(Debug, Clone)]
pub(crate) struct Outage {
    pub(crate) group: Group,
    /// How long the group was down.
    pub(crate) lasted: Duration,
    /// Stock inputs acknowledged per second from the last [`Fault::Mark`] to the outage.
    pub(crate) stock_rate_before: Option<f64>,
    /// Stock inputs acknowledged while the group was down, until they first caught up.
    pub(crate) stock_acked_during: u64,
    /// Stock inputs acknowledged per second while the group was down, until they first caught
    /// up (after that they wait for new inputs, which says nothing of their speed).
    pub(crate) stock_rate_during: f64,
    /// Whether the stock workers had acknowledged every stock input published so far when the
    /// group came back up.
    pub(crate) stock_caught_up: bool,
    /// Whether stock inputs were still waiting when the group went down: if the harness came
    /// late and they were all done already, the outage saw no stock work to measure.
    pub(crate) stock_backlog_at_start: bool,
}

/// How many faults struck.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Processes killed with SIGKILL, per group.
    pub(crate) killed: BTreeMap<Group, usize>,
    /// Kill strikes, per group.
    pub(crate) kills: BTreeMap<Group, usize>,
    pub(crate) nats_restarts: usize,
    pub(crate) redis_restarts: usize,
    /// Outages that ended.
    pub(crate) outages: Vec<Outage>,
}

impl Tally {
    /// The outages of `group`.
    pub(crate) fn outages_of(&self, group: Group) -> impl Iterator<Item = &Outage> {
        self.outages.iter().filter(move |o| o.group == group)
    }
}

/// The running replicas of every group.
#[derive(Debug)]
pub(crate) struct Fleet {
    nats_url: String,
    redis_url: String,
    logs: PathBuf,
    replicas: BTreeMap<Group, Vec<Option<KillOnDrop>>>,
    /// Environment of one group's processes beyond the connections (e.g. where webhooks go).
    env: BTreeMap<Group, GroupEnv>,
}

impl Fleet {
    /// Starts `replicas` processes of each group, with the group's `env`; their output goes to
    /// `logs/<binary>-<n>.log`.
    pub(crate) fn start(
        nats_url: String,
        redis_url: String,
        logs: &Path,
        groups: &[(Group, usize, GroupEnv)],
    ) -> Self {
        let mut fleet = Self {
            nats_url,
            redis_url,
            logs: logs.to_owned(),
            replicas: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        for (group, n, env) in groups {
            fleet
                .replicas
                .insert(*group, (0..*n).map(|_| None).collect());
            fleet.env.insert(*group, env.clone());
            fleet.up(*group);
        }
        fleet
    }

    fn log(&self, group: Group, slot: usize) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}-{slot}.log", group.binary())))
            .expect("worker log file")
    }

    fn spawn(&self, group: Group, slot: usize) -> KillOnDrop {
        let log = self.log(group, slot);
        let mut command = Command::new(workspace_binary(group.binary()));
        command
            .env("STOCKFLOW_NATS_URL", &self.nats_url)
            .env("STOCKFLOW_REDIS_URL", &self.redis_url)
            .env("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0")
            .env("STOCKFLOW_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().expect("log file handle")))
            .stderr(Stdio::from(log));
        for (name, value) in group.env() {
            command.env(name, value);
        }
        for (name, value) in self.env.get(&group).into_iter().flatten() {
            command.env(name, value);
        }
        KillOnDrop(command.spawn().expect("spawn worker"))
    }

    /// Starts every replica of `group` that is not running.
    pub(crate) fn up(&mut self, group: Group) {
        let slots = self.replicas.get(&group).map_or(0, Vec::len);
        for slot in 0..slots {
            let running = self.replicas[&group][slot].is_some();
            if !running {
                let child = self.spawn(group, slot);
                if let Some(replicas) = self.replicas.get_mut(&group) {
                    replicas[slot] = Some(child);
                }
            }
        }
    }

    /// `kill -9` every replica of `group` in `slots`; returns how many died.
    fn kill_slots(&mut self, group: Group, slots: &[usize]) -> usize {
        let Some(replicas) = self.replicas.get_mut(&group) else {
            return 0;
        };
        let mut killed = 0;
        for &slot in slots {
            if let Some(mut child) = replicas[slot].take() {
                child.kill();
                killed += 1;
            }
        }
        killed
    }

    fn slots(&self, group: Group) -> usize {
        self.replicas.get(&group).map_or(0, Vec::len)
    }

    /// Applies `fault`.
    fn strike(
        &mut self,
        fault: Fault,
        nats: &mut NatsServer,
        redis: &mut RedisServer,
        rng: &mut Rng,
        tally: &mut Tally,
    ) {
        match fault {
            Fault::Kill(group) => {
                let n = self.slots(group);
                // Mostly one replica; now and then the whole group at once.
                let slots: Vec<usize> = if rng.chance(0.25) {
                    (0..n).collect()
                } else {
                    vec![rng.below(n)]
                };
                let killed = self.kill_slots(group, &slots);
                self.up(group);
                *tally.killed.entry(group).or_default() += killed;
                *tally.kills.entry(group).or_default() += 1;
            }
            Fault::Down(group) => {
                let all: Vec<usize> = (0..self.slots(group)).collect();
                let killed = self.kill_slots(group, &all);
                *tally.killed.entry(group).or_default() += killed;
            }
            Fault::Up(group) => self.up(group),
            Fault::Mark => {}
            Fault::RestartNats => {
                tokio::task::block_in_place(|| nats.restart());
                tally.nats_restarts += 1;
            }
            Fault::RestartRedis => {
                tokio::task::block_in_place(|| {
                    redis.shutdown();
                    redis.resume();
                });
                tally.redis_restarts += 1;
            }
        }
    }

    /// Runs `strikes` in order, each once its moment has come (within `deadline`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        &mut self,
        strikes: &[Strike],
        js: &jetstream::Context,
        nats: &mut NatsServer,
        redis: &mut RedisServer,
        rng: &mut Rng,
        tally: &mut Tally,
        deadline: Duration,
    ) {
        let mut down_since = BTreeMap::new();
        let mut mark = None;
        for strike in strikes {
            let spec = strike.when.consumer();
            eventually(
                &format!(
                    "{} acknowledging up to {} before {:?}",
                    spec.durable, strike.ack_floor, strike.fault
                ),
                deadline,
                || async {
                    // Unanswered while nats-server restarts: ask again.
                    let floor = ack_floor(js, spec).await?;
                    (floor >= strike.ack_floor).then_some(())
                },
            )
            .await;
            // How far the stock workers get while a group is down.
            let stock = || async {
                eventually("stock-worker's progress", deadline, || stock_progress(js)).await
            };
            match strike.fault {
                Fault::Mark => mark = Some((Instant::now(), stock().await.acked)),
                Fault::Down(group) => {
                    let now = stock().await;
                    let stock_rate_before = mark.map(|(since, acked): (Instant, u64)| {
                        now.acked.saturating_sub(acked) as f64 / since.elapsed().as_secs_f64()
                    });
                    let since = Instant::now();
                    down_since.insert(
                        group,
                        (
                            since,
                            now.acked,
                            stock_rate_before,
                            !now.caught_up,
                            tokio::spawn(first_caught_up(js.clone(), since)),
                        ),
                    );
                }
                Fault::Up(group) => {
                    if let Some((since, acked, stock_rate_before, backlog, watch)) =
                        down_since.remove(&group)
                    {
                        let now = stock().await;
                        let lasted = since.elapsed();
                        watch.abort();
                        // Once caught up the stock workers wait for new inputs, not for the
                        // group: the rate counts only the time they had work.
                        let (busy, busy_acked) = match watch.await {
                            Ok((at, acked_then)) => (at, acked_then),
                            Err(_) => (lasted, now.acked),
                        };
                        tally.outages.push(Outage {
                            group,
                            lasted,
                            stock_rate_before,
                            stock_acked_during: busy_acked.saturating_sub(acked),
                            stock_rate_during: busy_acked.saturating_sub(acked) as f64
                                / busy.as_secs_f64().max(1e-3),
                            stock_caught_up: now.caught_up,
                            stock_backlog_at_start: backlog,
                        });
                    }
                }
                _ => {}
            }
            self.strike(strike.fault, nats, redis, rng, tally);
        }
    }
}

/// The stock workers' progress, from their consumer.
#[derive(Debug, Clone, Copy)]
struct StockProgress {
    /// Inputs acknowledged, up to an offset (rates are differences). Unlike the ack floor, this
    /// does not stand still while a killed replica's inputs wait for their redelivery.
    acked: u64,
    /// Nothing published is left undelivered or unacknowledged.
    caught_up: bool,
}

async fn stock_progress(js: &jetstream::Context) -> Option<StockProgress> {
    let stream = js.get_stream(STOCK_WORKER.stream).await.ok()?;
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(STOCK_WORKER.durable).await.ok()?;
    let info = consumer.info().await.ok()?;
    // Every input up to the last delivered one is either acknowledged or pending its ack.
    let acked = info
        .delivered
        .stream_sequence
        .saturating_sub(info.num_ack_pending as u64);
    Some(StockProgress {
        acked,
        caught_up: info.num_pending == 0 && info.num_ack_pending == 0,
    })
}

/// How long after `since` the stock workers first had nothing left to do, and how far they had
/// acknowledged then; polled until the task is aborted.
async fn first_caught_up(js: jetstream::Context, since: Instant) -> (Duration, u64) {
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        if let Some(progress) = stock_progress(&js).await {
            if progress.caught_up {
                return (since.elapsed(), progress.acked);
            }
        }
    }
}

/// The consumer's ack floor (every message up to it is acknowledged).
pub(crate) async fn ack_floor(js: &jetstream::Context, spec: ConsumerSpec) -> Option<u64> {
    let stream = js.get_stream(spec.stream).await.ok()?;
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer(spec.durable).await.ok()?;
    let info = consumer.info().await.ok()?;
    Some(info.ack_floor.stream_sequence)
}
