//! `stockctl`: the operator command line (see the crate README or `stockctl --help`).

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use stockflow_cli::ctl::{self, Cli};
use stockflow_shared::settings::{ConfigError, Env};

#[tokio::main]
async fn main() -> ExitCode {
    // `--help` ends with the environment variables, listed by the code that reads them.
    let matches = Cli::command()
        .after_help(ctl::variables_help())
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Offline, and whatever the environment holds.
    if let ctl::Command::Completion { shell } = cli.command {
        ctl::completion(shell);
        return ExitCode::SUCCESS;
    }
    let settings = match ctl::settings(Env::process(), &cli) {
        Ok(settings) => settings,
        Err(e) => {
            // A flag's value (`--nats-url`, `--redis-url`) is the command line, as a flag clap
            // refuses is: exit 2, like clap. A variable's is the environment: exit 1.
            let flag = matches!(&e, ConfigError::Invalid { var, .. } if var.starts_with("--"));
            fatal(anyhow::Error::new(e).context("invalid configuration"));
            return ExitCode::from(if flag { 2 } else { 1 });
        }
    };
    let result = async {
        settings.log.init();
        ctl::run(cli, settings).await
    }
    .await;
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            fatal(e);
            ExitCode::FAILURE
        }
    }
}

/// A log pipeline gets a JSON line; a person, one line of text.
fn fatal(error: anyhow::Error) {
    if !stockflow_shared::cli::log_fatal_as_json(&error) {
        eprintln!("stockctl: {error:#}");
    }
}
