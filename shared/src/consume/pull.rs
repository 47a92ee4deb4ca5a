//! The pull abstraction: how a bound consumer delivers messages, as [`Pull`] says.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use tokio::sync::Semaphore;

use super::run::ConsumeSettings;

/// How the loop pulls messages from its consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// One continuous pull that asks for the next batch while the current one is handled: the
    /// fastest, for handlers that take milliseconds. While every slot is busy, the messages of
    /// the next batch wait in the client unseen, and come back after the ack wait.
    Pipelined,
    /// Each pull asks for no more messages than there are free slots, so every delivered message
    /// starts at once and is kept in progress: for handlers that may take longer than the ack
    /// wait (webhooks), at the cost of one round trip per batch.
    WithinWindow,
}

/// What a bound consumer delivers from, as [`Pull`] says.
pub(super) enum Messages {
    Pipelined(jetstream::consumer::pull::Stream),
    WithinWindow {
        /// Boxed: its cached info would make every `Messages` four times as large.
        consumer: Box<PullConsumer>,
        max: usize,
        batch: Option<jetstream::consumer::pull::Batch>,
    },
}

impl Messages {
    /// The next message; the caller holds one free slot for it. `Err` carries the cause of
    /// ending the subscription (the restart metric's label).
    pub(super) async fn next(
        &mut self,
        permits: &Semaphore,
    ) -> Option<Result<jetstream::Message, (&'static str, async_nats::Error)>> {
        match self {
            Self::Pipelined(stream) => Some(stream.next().await?.map_err(|e| {
                let cause = match e.kind() {
                    jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                        "missing_heartbeat"
                    }
                    jetstream::consumer::pull::MessagesErrorKind::ConsumerDeleted => {
                        "consumer_deleted"
                    }
                    _ => "pull_error",
                };
                (cause, e.into())
            })),
            Self::WithinWindow {
                consumer,
                max,
                batch,
            } => loop {
                if let Some(current) = batch.as_mut() {
                    match current.next().await {
                        Some(Ok(message)) => return Some(Ok(message)),
                        Some(Err(e)) => return Some(Err(("pull_error", e))),
                        // Filled or expired: ask again for what is free now.
                        None => *batch = None,
                    }
                }
                // Only the pump takes slots, so the free ones stay free for this batch. No idle
                // heartbeats: a pull that fails to be renewed every few seconds ends the binding.
                let room = (1 + permits.available_permits()).min(*max);
                match consumer
                    .batch()
                    .max_messages(room)
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await
                {
                    Ok(next) => *batch = Some(next),
                    Err(e) => return Some(Err(("pull_error", e.into()))),
                }
            },
        }
    }
}

/// Binds `durable` on `stream` and subscribes as `settings.pull` says.
pub(super) async fn bind(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    settings: &ConsumeSettings,
) -> anyhow::Result<(PullConsumer, Messages)> {
    let stream = js.get_stream(stream).await?;
    let consumer: PullConsumer = stream
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let messages = match settings.pull {
        Pull::Pipelined => Messages::Pipelined(
            consumer
                .stream()
                .max_messages_per_batch(settings.max_in_flight)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await?,
        ),
        Pull::WithinWindow => Messages::WithinWindow {
            consumer: Box::new(consumer.clone()),
            max: settings.max_in_flight,
            batch: None,
        },
    };
    Ok((consumer, messages))
}
