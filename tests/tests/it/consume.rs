//! The shared consume loop with handlers slower than the consumer's ack wait: each message is
//! kept in progress while it is handled, and, when pulling within the window, none waits unseen
//! in the client for a free slot; so each is handled once, not again after every ack wait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream;
use stockflow_shared::{
    consume::{ConsumeSettings, Consumer, HandleError, Handled, Handler, Outcome, Pull},
    deadletter::DeadLetters,
    health::Health,
    topology::STOCK_WORKER,
};
use stockflow_tests::{eventually, DEADLINE};
use tokio_util::sync::CancellationToken;

use crate::world::World;

/// Takes `work` per message and counts how often each stream sequence was handled.
struct SlowHandler {
    work: Duration,
    handled: Mutex<HashMap<u64, usize>>,
}

impl Handler for SlowHandler {
    async fn handle(&self, message: &jetstream::Message) -> Result<Handled, HandleError> {
        // The slow work this test is about, not a wait for anything.
        tokio::time::sleep(self.work).await;
        let sequence = message
            .info()
            .map_err(|e| HandleError::malformed("test", "info", e.to_string()))?
            .stream_sequence;
        *self
            .handled
            .lock()
            .expect("lock")
            .entry(sequence)
            .or_default() += 1;
        Ok(Handled {
            event_type: "test",
            outcome: Outcome::Applied,
        })
    }
}

/// Runs the loop on the stock worker's consumer (5 s ack wait) over `n` messages and returns
/// how often each was handled.
async fn handle_slowly(pull: Pull, max_in_flight: usize, n: u64, work: Duration) -> Vec<usize> {
    let world = World::start().await;
    for i in 0..n {
        world
            .publish_raw(&format!("stock.events.SLOW-{i}"), b"slow".to_vec())
            .await;
    }
    let handler = Arc::new(SlowHandler {
        work,
        handled: Mutex::new(HashMap::new()),
    });
    let health = Health::default();
    let can_process = health.check("redis");
    can_process.set(true);
    let consumer = Consumer {
        js: world.js.clone(),
        spec: STOCK_WORKER,
        dead_letters: DeadLetters::new(world.js.clone()),
        bound: health.check("consumer"),
        can_process,
        settings: ConsumeSettings {
            max_in_flight,
            pull,
            ..ConsumeSettings::default()
        },
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(handler.clone(), shutdown.clone()));
    eventually("every message handled", DEADLINE, || async {
        let handled = handler.handled.lock().expect("lock").len() as u64;
        (handled == n).then_some(())
    })
    .await;
    world
        .wait_idle(
            stockflow_proto::subjects::STOCK_EVENTS,
            STOCK_WORKER.durable,
        )
        .await;
    // Stopping drains what the loop holds: a redelivered copy would be handled by now.
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("loop stops in time")
        .expect("loop task");
    let handled = handler.handled.lock().expect("lock").clone();
    (1..=n)
        .map(|sequence| handled.get(&sequence).copied().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn a_handler_slower_than_the_ack_wait_is_kept_in_progress() {
    // Room for every message: each waits only for its own handler, 6 s against a 5 s ack wait.
    let handled = handle_slowly(Pull::Pipelined, 8, 4, Duration::from_secs(6)).await;
    assert_eq!(handled, vec![1; 4], "times each message was handled");
}

#[tokio::test]
async fn pulling_within_the_window_leaves_no_message_waiting_unseen() {
    // Two slots for six messages of 5.5 s each: the later ones wait for a slot for longer than
    // the ack wait, so they must not be pulled before there is one.
    let handled = handle_slowly(Pull::WithinWindow, 2, 6, Duration::from_millis(5500)).await;
    assert_eq!(handled, vec![1; 6], "times each message was handled");
}
