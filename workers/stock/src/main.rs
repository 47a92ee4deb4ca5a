//! `stock-worker`: applies stock facts. See the crate documentation.

use anyhow::Context as _;
use std::process::ExitCode;

use stockflow_shared::{
    cli::{self, Program, WORKER_COMMANDS},
    settings::Env,
    shutdown_signal,
    worker::Command,
};

const PROGRAM: Program = Program {
    name: "stock-worker",
    version: env!("CARGO_PKG_VERSION"),
    about: "Applies stock facts (receipts, sales, counts, adjustments) to Redis levels and publishes changes and alerts.",
    commands: WORKER_COMMANDS,
    listing_env: &[],
    read_settings: |env| {
        let _ = stock_worker::Settings::from_env(env);
    },
};

fn main() -> ExitCode {
    PROGRAM.answer_and_exit();
    cli::finish(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let settings =
        stock_worker::Settings::from_env(&Env::process()).context("invalid configuration")?;
    settings.worker.service.log.init();
    match Command::from_args(PROGRAM.name)? {
        Command::Run => stock_worker::run(settings, shutdown_signal()).await,
        Command::Setup(mode) => settings.worker.setup(mode).await,
    }
}
