//! `connector`: connects stockflow channels to Shopify and WooCommerce shops. See the crate
//! documentation.

use anyhow::Context as _;
use std::process::ExitCode;

use stockflow_shared::{
    cli::{self, Program, WORKER_COMMANDS},
    settings::Env,
    shutdown_signal,
    worker::Command,
};

const PROGRAM: Program = Program {
    name: "connector",
    version: env!("CARGO_PKG_VERSION"),
    about: "Connects stockflow channels to Shopify and WooCommerce shops.",
    commands: WORKER_COMMANDS,
    listing_env: &[],
    read_settings: |env| {
        let _ = connector::Settings::from_env(env);
    },
};

fn main() -> ExitCode {
    PROGRAM.answer_and_exit();
    cli::finish(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let settings =
        connector::Settings::from_env(&Env::process()).context("invalid configuration")?;
    settings.worker.service.log.init();
    match Command::from_args(PROGRAM.name)? {
        Command::Run => connector::run(settings, shutdown_signal()).await,
        Command::Setup(mode) => settings.worker.setup(mode).await,
    }
}
