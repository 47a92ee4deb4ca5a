//! The consume loop, written once: pull, dispatch to a [`Handler`], then ack, NAK with back-off,
//! or dead-letter and terminate — with metrics, a stall watchdog and a bounded, graceful shutdown.
//!
//! The loop never ends on a stream error: a failed pull, missed heartbeats, a deleted consumer or
//! a quietly stalled subscription all lead to re-binding the consumer after a back-off.
//!
//! By concern: `handler` (the API a worker implements), `run` (binding, feeding tasks, the stall
//! watchdog, the drain), `pull` (how messages are pulled), `process` (one message), `policy`
//! (what becomes of it: ack, NAK after how long, or dead-letter), `metrics` and `progress` (the
//! in-progress ticker).

mod handler;
mod metrics;
mod policy;
mod process;
mod progress;
mod pull;
mod run;

pub use handler::{Delivery, Dependency, HandleError, Handled, Handler, Outcome};
pub(crate) use policy::backoff;
pub use pull::Pull;
pub use run::{ConsumeSettings, Consumer};
