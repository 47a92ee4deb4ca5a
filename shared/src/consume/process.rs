//! One message: dispatch it to the handler (catching a panic), then carry out what the
//! [`policy`](super::policy) decides: ack, NAK with a delay, or dead-letter and terminate.

use std::{panic::AssertUnwindSafe, time::Duration};

use async_nats::jetstream::{self, AckKind};
use futures::FutureExt as _;

use super::{
    handler::{Delivery, Dependency, Handler},
    policy::{self, Action, DeadLetter, Retry, Source},
    run::Loop,
};

impl<H: Handler> Loop<H> {
    /// Handles `message` and acks, NAKs or dead-letters it.
    pub(super) async fn process(&self, message: jetstream::Message) {
        let worker = self.worker();
        let delivery = Delivery::new(message, self.consumer.spec.stream);
        let tracked = self.in_progress.track(delivery.message());
        let handled = AssertUnwindSafe(self.handler.handle(&delivery))
            .catch_unwind()
            .await;
        drop(tracked);
        let message = delivery.into_message();
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let action = match handled {
            Ok(result) => policy::decide(result, delivered),
            Err(panic) => {
                let what = policy::panic_text(panic.as_ref());
                self.metrics.panicked();
                tracing::error!(worker, deliveries = delivered, panic = %what, subject = %message.subject, "handler panicked");
                policy::after_panic(&what, delivered)
            }
        };
        match action {
            Action::Ack(handled) => {
                if let Err(e) = message.ack().await {
                    // Not acked means redelivered, and the handler is idempotent.
                    tracing::warn!(worker, error = %e, "ack failed");
                }
                let stored = message.info().ok().map(|info| info.published);
                self.metrics.handled(handled, stored);
            }
            Action::Retry { delay, cause } => {
                match cause {
                    Retry::NotYet(reason) => {
                        tracing::debug!(worker, %reason, "not yet applicable; retrying later");
                        self.metrics.transient(None);
                    }
                    Retry::Transient { dependency, source } => {
                        tracing::warn!(worker, dependency = dependency.as_str(), error = %format!("{source:#}"), "transient failure; retrying");
                        self.metrics.transient(Some(dependency));
                    }
                    Retry::Asked(reason) => {
                        tracing::debug!(worker, %reason, delay_seconds = delay.as_secs_f64(), "retrying later, as the handler asked");
                    }
                    Retry::Panicked => {}
                    Retry::Unexpected(reason) => {
                        tracing::warn!(worker, deliveries = delivered, %reason, subject = %message.subject, "unexpected reply; retrying, then dead-lettering");
                    }
                }
                self.nak(&message, delay).await;
            }
            Action::DeadLetter(letter) => self.dead_letter(&message, letter, delivered).await,
        }
    }

    /// Stores `message` in `DEAD_LETTERS`, then terminates it; NAKs it when it cannot be stored.
    async fn dead_letter(&self, message: &jetstream::Message, letter: DeadLetter, delivered: i64) {
        let worker = self.worker();
        let DeadLetter {
            event_type,
            category,
            reason,
            source,
        } = letter;
        match source {
            Source::Input | Source::Panic => {
                tracing::warn!(worker, event_type, %reason, subject = %message.subject, "dead-lettering malformed input");
            }
            Source::Unexpected => {
                tracing::error!(worker, event_type, %reason, subject = %message.subject, "dead-lettering an input that keeps getting unexpected replies (a bug)");
            }
        }
        match self.consumer.dead_letters.store(message, &reason).await {
            Ok(()) => {
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(worker, error = %e, "terminate failed");
                }
                self.metrics.dead_lettered(event_type, category);
            }
            Err(e) => {
                tracing::warn!(worker, error = %e, "dead letter not stored; will retry");
                self.metrics.transient(Some(Dependency::Nats));
                self.nak(message, policy::nak_delay(None, delivered)).await;
            }
        }
    }

    /// NAKs `message` to come back after `delay`.
    async fn nak(&self, message: &jetstream::Message, delay: Duration) {
        if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(worker = self.worker(), error = %e, "nak failed; redelivery after ack_wait");
        }
    }
}
