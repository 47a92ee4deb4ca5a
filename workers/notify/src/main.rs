//! `notify-worker`: delivers derived events to webhook subscriptions. See the crate documentation.

use anyhow::Context as _;
use std::process::ExitCode;

use stockflow_shared::{
    cli::{self, Program, WORKER_COMMANDS},
    settings::Env,
    shutdown_signal,
    worker::Command,
};

const PROGRAM: Program = Program {
    name: "notify-worker",
    version: env!("CARGO_PKG_VERSION"),
    about: "Delivers derived events to webhook subscriptions.",
    commands: WORKER_COMMANDS,
    listing_env: &[],
    read_settings: |env| {
        let _ = notify_worker::Settings::from_env(env);
    },
};

fn main() -> ExitCode {
    PROGRAM.answer_and_exit();
    cli::finish(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let settings =
        notify_worker::Settings::from_env(&Env::process()).context("invalid configuration")?;
    settings.worker.service.log.init();
    match Command::from_args(PROGRAM.name)? {
        Command::Run => notify_worker::run(settings, shutdown_signal()).await,
        Command::Setup(mode) => settings.worker.setup(mode).await,
    }
}
