//! The shared consume loop with test handlers. With handlers slower than the consumer's ack wait:
//! each message is kept in progress while it is handled, and, when pulling within the window, none
//! waits unseen in the client for a free slot; so each is handled once, not again after every ack
//! wait. A handler answered unexpectedly has its input retried a few times, then dead-lettered. A
//! handler reading a stock partition stream sees subjects as producers published them.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use stockflow_proto::subjects::{self, HEADER_DEAD_LETTER_REASON, HEADER_ORIGINAL_SUBJECT};
use stockflow_shared::{
    consume::{ConsumeSettings, Consumer, Delivery, HandleError, Handled, Handler, Outcome, Pull},
    deadletter::DeadLetters,
    health::Health,
    topology::{self, ConsumerSpec, STOCK_WORKER},
};
use stockflow_tests::{eventually, DEADLINE};
use tokio_util::sync::CancellationToken;

use crate::{malformed::dead_letters_counted, world::World};

/// A loop on `spec` in `world`, with Redis reported up.
fn consumer(world: &World, spec: ConsumerSpec, settings: ConsumeSettings) -> Consumer {
    let health = Health::default();
    let can_process = health.check("redis");
    can_process.set(true);
    Consumer {
        js: world.js.clone(),
        spec,
        dead_letters: DeadLetters::new(world.js.clone()),
        bound: health.check("consumer"),
        can_process,
        settings,
    }
}

/// Takes `work` per message and counts how often each stream sequence was handled.
struct SlowHandler {
    work: Duration,
    handled: Mutex<HashMap<u64, usize>>,
}

impl Handler for SlowHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        // The slow work this test is about, not a wait for anything.
        tokio::time::sleep(self.work).await;
        let sequence = delivery
            .message()
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
    let consumer = consumer(
        &world,
        STOCK_WORKER,
        ConsumeSettings {
            max_in_flight,
            pull,
            ..ConsumeSettings::default()
        },
    );
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

/// Answers the payload `odd` with an unexpected reply, as a script of the wrong shape would,
/// noting on which delivery; accepts everything else.
#[derive(Default)]
struct OddReplies {
    odd_deliveries: Mutex<Vec<i64>>,
    accepted: AtomicUsize,
}

impl Handler for OddReplies {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        if delivery.payload() == b"odd" {
            let delivered = delivery.message().info().map_or(0, |info| info.delivered);
            self.odd_deliveries.lock().expect("lock").push(delivered);
            return Err(HandleError::Unexpected {
                reason: "apply_stock answered [\"odd\"]".into(),
            });
        }
        self.accepted.fetch_add(1, Ordering::SeqCst);
        Ok(Handled {
            event_type: "test",
            outcome: Outcome::Applied,
        })
    }
}

#[tokio::test]
async fn an_unexpected_reply_is_retried_a_few_times_then_dead_lettered() {
    let world = World::start().await;
    let counted_before = dead_letters_counted(STOCK_WORKER.durable, "unexpected");
    let odd = subjects::stock_event("ODD");
    world.publish_raw(&odd, b"odd".to_vec()).await;
    for i in 0..2 {
        world
            .publish_raw(
                &subjects::stock_event("FINE"),
                format!("ok{i}").into_bytes(),
            )
            .await;
    }
    let handler = Arc::new(OddReplies::default());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        consumer(&world, STOCK_WORKER, ConsumeSettings::default())
            .run(handler.clone(), shutdown.clone()),
    );
    // Idle once the odd input is terminated: it is not retried forever.
    world.wait_stock_idle().await;

    assert_eq!(handler.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(
        *handler.odd_deliveries.lock().expect("lock"),
        vec![1, 2, 3, 4, 5],
        "NAKed four times, dead-lettered on the fifth delivery"
    );
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters.len(), 1, "only the odd input");
    let headers = letters[0].headers.as_ref().expect("headers");
    let reason = headers.get(HEADER_DEAD_LETTER_REASON).expect("reason");
    assert_eq!(
        reason.as_str(),
        "unexpected reply on delivery 5: apply_stock answered [\"odd\"]"
    );
    assert_eq!(
        headers
            .get(HEADER_ORIGINAL_SUBJECT)
            .expect("subject")
            .as_str(),
        odd
    );
    assert_eq!(&letters[0].payload[..], b"odd");
    // Counted right after the terminate that made the consumer idle.
    let counted = eventually("the dead letter counted", DEADLINE, || async {
        let counted = dead_letters_counted(STOCK_WORKER.durable, "unexpected") - counted_before;
        (counted > 0).then_some(counted)
    })
    .await;
    assert_eq!(counted, 1, "counted once, in its own category");
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, running)
        .await
        .expect("loop stops in time")
        .expect("loop task");
}

/// Notes the subject each message was handed over with, next to the one it was stored on.
#[derive(Default)]
struct SubjectsSeen(Mutex<Vec<(String, String)>>);

impl Handler for SubjectsSeen {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        let stored = delivery.message().subject.to_string();
        let seen = delivery.subject().to_owned();
        self.0.lock().expect("lock").push((seen, stored));
        Ok(Handled {
            event_type: "test",
            outcome: Outcome::Applied,
        })
    }
}

#[tokio::test]
async fn a_handler_of_a_partition_stream_sees_the_subject_as_published() {
    let world = World::start_partitioned(2).await;
    let skus = ["PART-A", "PART-B", "PART-C", "PART-D", "part.e"];
    for sku in skus {
        world
            .publish_raw(&subjects::stock_event(sku), b"x".to_vec())
            .await;
    }
    let handler = Arc::new(SubjectsSeen::default());
    let shutdown = CancellationToken::new();
    let loops: Vec<_> = topology::stock_workers(&world.topology)
        .into_iter()
        .map(|spec| {
            tokio::spawn(
                consumer(&world, spec, ConsumeSettings::default())
                    .run(handler.clone(), shutdown.clone()),
            )
        })
        .collect();
    assert_eq!(loops.len(), 2, "one loop per partition");
    let mut seen = eventually("every fact handled", DEADLINE, || async {
        let seen = handler.0.lock().expect("lock").clone();
        (seen.len() >= skus.len()).then_some(seen)
    })
    .await;
    seen.sort();
    let mut expected: Vec<String> = skus.iter().map(|sku| subjects::stock_event(sku)).collect();
    expected.sort();
    assert_eq!(
        seen.iter()
            .map(|(seen, _)| seen.clone())
            .collect::<Vec<_>>(),
        expected
    );
    for (seen, stored) in &seen {
        // Stored as `stock.events.<p>.<sku-token>`, handed over as published.
        let token = seen.strip_prefix("stock.events.").expect("a fact subject");
        let partition = stored
            .strip_prefix("stock.events.")
            .and_then(|rest| rest.strip_suffix(&format!(".{token}")))
            .unwrap_or_else(|| panic!("{stored} is not a partitioned form of {seen}"));
        assert!(
            partition == "0" || partition == "1",
            "{stored}: partition {partition}"
        );
    }
    shutdown.cancel();
    for running in loops {
        tokio::time::timeout(DEADLINE, running)
            .await
            .expect("loop stops in time")
            .expect("loop task");
    }
}
