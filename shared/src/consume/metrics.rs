//! The loop's metric handles, registered once per loop (or once per label set, on first use):
//! registering builds the labelled key and looks it up in the registry, which per message showed
//! up in the worker's profile.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Mutex, OnceLock},
};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::OwnedSemaphorePermit;

use super::handler::{Dependency, Handled};

/// Counters by a label set, each registered on its first use.
#[derive(Debug)]
struct Counters<K> {
    registered: Mutex<HashMap<K, Counter>>,
}

impl<K: Eq + Hash + Copy> Counters<K> {
    fn new() -> Self {
        Self {
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// Adds one to the counter of `key`, registered by `register` the first time.
    fn increment(&self, key: K, register: impl FnOnce(K) -> Counter) {
        self.add(key, 1, register);
    }

    /// Registers the counter of `key` (at 0 when new) without counting anything.
    fn register(&self, key: K, register: impl FnOnce(K) -> Counter) {
        self.add(key, 0, register);
    }

    fn add(&self, key: K, n: u64, register: impl FnOnce(K) -> Counter) {
        // A poisoned lock only means another task panicked while holding it: the map is intact.
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        registered
            .entry(key)
            .or_insert_with(|| register(key))
            .increment(n);
    }
}

/// The metrics of one consume loop.
#[derive(Debug)]
pub(super) struct LoopMetrics {
    /// The `worker` label: the durable consumer's name.
    worker: &'static str,
    /// `stockflow_messages_in_flight`.
    in_flight: Gauge,
    /// `stockflow_event_latency_seconds`: from storing to acking.
    latency: Histogram,
    /// `stockflow_events_total` by (type, outcome), dead-lettered inputs included.
    events: Counters<(&'static str, &'static str)>,
    /// `stockflow_dead_letters_total` by category.
    dead_letters: Counters<&'static str>,
    /// `stockflow_transient_failures_total` by kind.
    transient: Counters<&'static str>,
    /// `stockflow_handler_panics_total`, registered at the first panic.
    panics: OnceLock<Counter>,
}

impl LoopMetrics {
    /// The loop's metrics; the counters whose label sets are known in advance (retries by
    /// kind, panics) are registered at 0 now, so dashboards and alerts see a series from the
    /// start instead of none until the first increment.
    pub(super) fn new(worker: &'static str, event_types: &[&'static str]) -> Self {
        let transient = Counters::new();
        for kind in [Some(Dependency::Redis), Some(Dependency::Nats), None] {
            transient.register(transient_kind(kind), |kind| {
                metrics::counter!("stockflow_transient_failures_total", "worker" => worker, "kind" => kind)
            });
        }
        let panics = OnceLock::new();
        panics
            .get_or_init(|| metrics::counter!("stockflow_handler_panics_total", "worker" => worker))
            .increment(0);
        let this = Self {
            worker,
            in_flight: metrics::gauge!("stockflow_messages_in_flight", "worker" => worker),
            latency: metrics::histogram!("stockflow_event_latency_seconds", "worker" => worker),
            events: Counters::new(),
            dead_letters: Counters::new(),
            transient,
            panics,
        };
        // Every type by every outcome, and every dead-letter category of the input contract
        // (a handler's own categories, such as `event_id_conflict`, appear on first use).
        for event_type in event_types {
            for outcome in OUTCOMES {
                this.register_event(event_type, outcome);
            }
        }
        for category in stockflow_proto::input::Category::ALL {
            let category = category.as_str();
            if category == stockflow_proto::input::Category::InvalidJson.as_str() {
                continue; // JSON input only: never a dead letter.
            }
            this.dead_letters.register(category, |category| {
                metrics::counter!("stockflow_dead_letters_total", "worker" => worker, "reason" => category)
            });
        }
        this
    }

    fn register_event(&self, event_type: &'static str, outcome: &'static str) {
        let worker = self.worker;
        self.events.register((event_type, outcome), |(event_type, outcome)| {
            metrics::counter!("stockflow_events_total", "worker" => worker, "type" => event_type, "outcome" => outcome)
        });
    }

    /// Counts a message in flight until the returned guard is dropped, which also frees `slot`:
    /// however its task ends (finished, panicked, aborted at the end of the drain), the gauge and
    /// the loop's count of free slots are given back.
    pub(super) fn in_flight(&self, slot: OwnedSemaphorePermit) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight {
            gauge: self.in_flight.clone(),
            _slot: slot,
        }
    }

    /// An acked message: its outcome, and its latency from storing to now.
    pub(super) fn handled(&self, handled: Handled, stored: Option<time::OffsetDateTime>) {
        self.event(handled.event_type, handled.outcome.as_str());
        if let Some(stored) = stored {
            let seconds = (time::OffsetDateTime::now_utc() - stored)
                .as_seconds_f64()
                .max(0.0);
            self.latency.record(seconds);
        }
    }

    /// A dead-lettered input.
    pub(super) fn dead_lettered(&self, event_type: &'static str, category: &'static str) {
        self.event(event_type, "dead_lettered");
        let worker = self.worker;
        self.dead_letters.increment(category, |category| {
            metrics::counter!("stockflow_dead_letters_total", "worker" => worker, "reason" => category)
        });
    }

    /// A retry after a failed dependency (`Some`) or an input that arrived early (`None`).
    pub(super) fn transient(&self, dependency: Option<Dependency>) {
        let kind = transient_kind(dependency);
        let worker = self.worker;
        self.transient.increment(kind, |kind| {
            metrics::counter!("stockflow_transient_failures_total", "worker" => worker, "kind" => kind)
        });
    }

    /// A handler panic.
    pub(super) fn panicked(&self) {
        let worker = self.worker;
        self.panics
            .get_or_init(|| metrics::counter!("stockflow_handler_panics_total", "worker" => worker))
            .increment(1);
    }

    fn event(&self, event_type: &'static str, outcome: &'static str) {
        let worker = self.worker;
        self.events
            .increment((event_type, outcome), |(event_type, outcome)| {
                metrics::counter!("stockflow_events_total", "worker" => worker, "type" => event_type, "outcome" => outcome)
            });
    }
}

/// The `outcome` labels of `stockflow_events_total`.
const OUTCOMES: [&str; 4] = ["applied", "duplicate", "stale", "dead_lettered"];

/// The `kind` label of a retry: the dependency that failed, or `not_yet` for an input that
/// arrived early.
fn transient_kind(dependency: Option<Dependency>) -> &'static str {
    dependency.map_or("not_yet", Dependency::as_str)
}

/// One message in flight: decrements `stockflow_messages_in_flight` and frees its slot on drop.
#[derive(Debug)]
pub(super) struct InFlight {
    gauge: Gauge,
    /// Held for as long as the message is.
    _slot: OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}
