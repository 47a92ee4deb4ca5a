//! `gateway`: HTTP/JSON front door: ingest facts and orders, query stock and orders.

use std::process::ExitCode;

use stockflow_shared::{
    cli::{self, Program},
    settings::Env,
};

const PROGRAM: Program = Program {
    name: "gateway",
    version: env!("CARGO_PKG_VERSION"),
    about: "HTTP/JSON front door: ingest facts and orders, query stock and orders.",
    commands: &[],
    // Past the token check, so the variables read after it are listed too.
    listing_env: &[("STOCKFLOW_GATEWAY_AUTH", "none")],
    read_settings: |env| {
        let _ = gateway::Settings::from_env(env);
    },
};

fn main() -> ExitCode {
    PROGRAM.answer_and_exit();
    cli::finish(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        anyhow::bail!("usage: gateway (no arguments; see gateway --help)");
    }
    let settings = gateway::Settings::from_env(&Env::process())?;
    settings.service.log.init();
    gateway::start(settings, stockflow_shared::shutdown_signal())
        .await?
        .wait()
        .await
}
