//! The workers under test, as child processes of the real binaries (so `kill -9` is a real
//! SIGKILL), and the faults that strike them and the servers while the workload runs.
//!
//! A worker kind is a [`Group`]: its binary, its durable consumer and its extra environment. A
//! fault strikes when a group's consumer has acknowledged the stream up to a chosen sequence, so
//! "a random moment" is a random point of progress, never a sleep.
//!
//! Adding the notify worker is one more [`Group`] variant (binary `notify-worker`, consumer
//! `notify-worker`, env pointing at a webhook receiver the test runs) and two strikes in the plan:
//! [`Fault::Down`] then [`Fault::Up`] of that group — the stock group keeps its own kills meanwhile.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use stockflow_shared::topology::{ConsumerSpec, ORDER_WORKER, STOCK_WORKER};
use stockflow_tests::{eventually, workspace_binary, KillOnDrop, NatsServer, RedisServer};

use super::workload::Rng;

/// A kind of worker, run as several replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Group {
    Stock,
    Orders,
}

impl Group {
    pub(crate) fn name(self) -> &'static str {
        self.binary()
    }

    fn binary(self) -> &'static str {
        match self {
            Self::Stock => "stock-worker",
            Self::Orders => "order-worker",
        }
    }

    /// The durable consumer whose progress times this group's faults.
    pub(crate) fn consumer(self) -> ConsumerSpec {
        match self {
            Self::Stock => STOCK_WORKER,
            Self::Orders => ORDER_WORKER,
        }
    }

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Stock => &[],
            // Due holds are found quickly, so the run's last holds expire soon after it.
            Self::Orders => &[("STOCKFLOW_HOLD_POLL_MILLIS", "50")],
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

/// How many faults struck.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Processes killed with SIGKILL, per group.
    pub(crate) killed: BTreeMap<Group, usize>,
    /// Kill strikes, per group.
    pub(crate) kills: BTreeMap<Group, usize>,
    pub(crate) nats_restarts: usize,
    pub(crate) redis_restarts: usize,
    pub(crate) outages: usize,
    /// Stock inputs acknowledged per second while a group was down (fault isolation).
    pub(crate) stock_rate_during_outages: Vec<(Group, f64)>,
}

/// The running replicas of every group.
#[derive(Debug)]
pub(crate) struct Fleet {
    nats_url: String,
    redis_url: String,
    logs: PathBuf,
    replicas: BTreeMap<Group, Vec<Option<KillOnDrop>>>,
}

impl Fleet {
    /// Starts `replicas` processes of each group; their output goes to `logs/<binary>-<n>.log`.
    pub(crate) fn start(
        nats_url: String,
        redis_url: String,
        logs: &Path,
        groups: &[(Group, usize)],
    ) -> Self {
        let mut fleet = Self {
            nats_url,
            redis_url,
            logs: logs.to_owned(),
            replicas: BTreeMap::new(),
        };
        for &(group, n) in groups {
            fleet.replicas.insert(group, (0..n).map(|_| None).collect());
            fleet.up(group);
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
                tally.outages += 1;
            }
            Fault::Up(group) => self.up(group),
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
            let stock_floor = || async {
                eventually("stock-worker's ack floor", deadline, || {
                    ack_floor(js, STOCK_WORKER)
                })
                .await
            };
            match strike.fault {
                Fault::Down(group) => {
                    down_since.insert(group, (Instant::now(), stock_floor().await));
                }
                Fault::Up(group) => {
                    if let Some((since, floor)) = down_since.remove(&group) {
                        let done = stock_floor().await.saturating_sub(floor);
                        let rate = done as f64 / since.elapsed().as_secs_f64();
                        tally.stock_rate_during_outages.push((group, rate));
                    }
                }
                _ => {}
            }
            self.strike(strike.fault, nats, redis, rng, tally);
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
