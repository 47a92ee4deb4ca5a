//! The in-progress ticker: keeps messages handled longer than a third of the consumer's ack wait
//! from being redelivered while they are handled.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use async_nats::{
    jetstream::{self, AckKind},
    Subject,
};
use tokio_util::sync::CancellationToken;

use crate::topology::TopologySettings;

/// Messages being handled, so that the slow ones are kept from being redelivered: one ticker
/// sends an in-progress ack (`+WPI`) for each message handled longer than a third of the
/// consumer's ack wait. Fast messages cost one map insert and remove, no timer and no ack.
#[derive(Debug)]
pub(super) struct InProgress {
    client: async_nats::Client,
    state: Mutex<InProgressState>,
    /// Wakes the ticker when the period changes (the ack wait is known once bound).
    period_changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct InProgressState {
    /// A third of the consumer's ack wait: both the age from which a message is touched and
    /// the period of the ticker, so a slow message is touched at least once per ack wait.
    every: Duration,
    next_id: u64,
    /// Ack subject of each message being handled, and when its handling started.
    handling: HashMap<u64, (Instant, Subject)>,
}

/// Removes its message from [`InProgress`] when handling ends (or panics).
pub(super) struct Tracked<'a> {
    in_progress: &'a InProgress,
    id: Option<u64>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.in_progress.state().handling.remove(&id);
        }
    }
}

impl InProgress {
    pub(super) fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            state: Mutex::new(InProgressState {
                every: TopologySettings::default().ack_wait / 3,
                next_id: 0,
                handling: HashMap::new(),
            }),
            period_changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InProgressState> {
        // A poisoned lock only means a task panicked while holding it: the map is intact.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the consumer's ack wait as it is on the server (bound consumers report it).
    pub(super) fn set_ack_wait(&self, ack_wait: Duration) {
        let every = (ack_wait / 3).max(Duration::from_millis(100));
        let previous = std::mem::replace(&mut self.state().every, every);
        if previous != every {
            self.period_changed.notify_one();
        }
    }

    pub(super) fn track(&self, message: &jetstream::Message) -> Tracked<'_> {
        let id = message.reply.clone().map(|reply| {
            let mut state = self.state();
            let id = state.next_id;
            state.next_id = id.wrapping_add(1);
            state.handling.insert(id, (Instant::now(), reply));
            id
        });
        Tracked {
            in_progress: self,
            id,
        }
    }

    /// Ack subjects of the messages handled for at least `every`.
    fn due(&self, now: Instant) -> Vec<Subject> {
        let state = self.state();
        state
            .handling
            .values()
            .filter(|(since, _)| now.saturating_duration_since(*since) >= state.every)
            .map(|(_, reply)| reply.clone())
            .collect()
    }

    /// Touches the slow messages once per period until `stop`.
    pub(super) async fn run(&self, worker: &'static str, stop: CancellationToken) {
        loop {
            let every = self.state().every;
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.period_changed.notified() => continue,
                () = tokio::time::sleep(every) => {}
            }
            for reply in self.due(Instant::now()) {
                if let Err(e) = self.client.publish(reply, AckKind::Progress.into()).await {
                    tracing::debug!(worker, error = %e, "in-progress ack failed");
                }
            }
        }
    }
}
