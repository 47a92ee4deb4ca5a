//! `stockctl`: the operator command line (see the crate README or `stockctl --help`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use stockflow_cli::ctl::{self, Cli};
use stockflow_shared::settings::Env;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = async {
        let settings = ctl::settings(Env::process(), &cli).context("invalid configuration")?;
        settings.worker.log.init();
        ctl::run(cli, settings).await
    }
    .await;
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("stockctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
