//! `notify-worker`: delivers derived events to webhook subscriptions. See the crate documentation.

use anyhow::Context as _;
use stockflow_shared::{settings::Env, shutdown_signal, worker::Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings =
        notify_worker::Settings::from_env(&Env::process()).context("invalid configuration")?;
    settings.worker.log.init();
    match Command::from_args("notify-worker")? {
        Command::Run => notify_worker::run(settings, shutdown_signal()).await,
        Command::Setup(mode) => stockflow_shared::worker::setup(&settings.worker, mode).await,
    }
}
