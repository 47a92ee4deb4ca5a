//! What every binary answers before it reads its configuration or connects anywhere:
//! `--help` (its commands and the environment variables it reads, with their defaults) and
//! `--version`; and how a fatal error is reported (a JSON line in JSON log mode).

use std::{io::Write as _, process::ExitCode};

use crate::{
    settings::{Env, Variable},
    telemetry::LogSettings,
};

/// A binary, as `--help` and `--version` describe it.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// The binary's name.
    pub name: &'static str,
    /// Its version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// One line on what it does.
    pub about: &'static str,
    /// Its subcommands and what each does; empty when it has none.
    pub commands: &'static [(&'static str, &'static str)],
    /// Variables set while listing, only so the reader gets past a check that would stop it
    /// early (e.g. the gateway requires tokens or `STOCKFLOW_GATEWAY_AUTH=none`).
    pub listing_env: &'static [(&'static str, &'static str)],
    /// Reads the binary's settings; run against a recording [`Env`] to list its variables.
    pub read_settings: fn(&Env),
}

/// The subcommands every worker shares (see [`crate::worker::Command`]).
pub const WORKER_COMMANDS: &[(&str, &str)] = &[
    ("(none)", "run the worker until SIGTERM or Ctrl-C"),
    ("setup", "declare streams and consumers, then exit"),
    (
        "setup --update",
        "also update streams and consumers whose configuration differs",
    ),
];

impl Program {
    /// The variables the binary reads, in the order it reads them, with their defaults.
    pub fn variables(&self) -> Vec<Variable> {
        let env = Env::recording(self.listing_env.iter().copied());
        (self.read_settings)(&env);
        env.asked()
    }

    /// The `--help` text.
    pub fn help(&self) -> String {
        let mut text = format!(
            "{} {}\n{}\n\nUsage: {}",
            self.name, self.version, self.about, self.name
        );
        if !self.commands.is_empty() {
            text.push_str(" [COMMAND]\n\nCommands:\n");
            let width = self
                .commands
                .iter()
                .map(|(c, _)| c.len())
                .max()
                .unwrap_or(0);
            for (command, about) in self.commands {
                text.push_str(&format!("  {command:<width$}  {about}\n"));
            }
        } else {
            text.push('\n');
        }
        text.push_str(
            "\nOptions:\n  -h, --help     print this help\n  -V, --version  print the version\n\n",
        );
        text.push_str(&variables_help(&self.variables()));
        text
    }

    /// What `args` (without the program name) ask for, when it is help or the version.
    pub fn answer(&self, args: &[String]) -> Option<String> {
        if args.iter().any(|a| a == "--help" || a == "-h")
            || args.first().is_some_and(|a| a == "help")
        {
            Some(self.help())
        } else if args.iter().any(|a| a == "--version" || a == "-V") {
            Some(format!("{} {}\n", self.name, self.version))
        } else {
            None
        }
    }

    /// Answers `--help` and `--version` from the process arguments and exits 0; returns
    /// otherwise. Call it first, before any configuration is read.
    pub fn answer_and_exit(&self) {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if let Some(text) = self.answer(&args) {
            // A closed pipe (`--help | head -1`) is not an error.
            std::io::stdout().write_all(text.as_bytes()).ok();
            std::process::exit(0);
        }
    }
}

/// The "Environment variables" section of a help text.
pub fn variables_help(variables: &[Variable]) -> String {
    let mut text = String::from("Environment variables (default):\n");
    let width = variables.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in variables {
        let default = v.default.as_deref().unwrap_or("(unset)");
        text.push_str(&format!("  {:<width$}  {default}\n", v.name));
    }
    text
}

/// Ends `main`: exit 0, or report the error and exit 1 — as one JSON log line when
/// `STOCKFLOW_LOG_FORMAT=json` (so a log pipeline sees why the process stopped), else as
/// `Error: …` on stderr.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    if !log_fatal_as_json(&error) {
        eprintln!("Error: {error:?}");
    }
    ExitCode::FAILURE
}

/// When `STOCKFLOW_LOG_FORMAT=json`, logs `error` as one JSON line on stderr (level `ERROR`,
/// message `fatal`, the error and its causes in `error`) and returns `true`; otherwise returns
/// `false` and the caller reports it as text.
pub fn log_fatal_as_json(error: &anyhow::Error) -> bool {
    let env = Env::process();
    if env.raw("STOCKFLOW_LOG_FORMAT").as_deref() != Some("json") {
        return false;
    }
    // The configuration itself may be what failed: then log errors only.
    let log = LogSettings::from_env(&env).unwrap_or(LogSettings {
        filter: "error".into(),
        json: true,
    });
    // A no-op when the binary already installed it.
    log.init();
    tracing::error!(error = format!("{error:#}"), "fatal");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(env: &Env) {
        let _ = env.string("STOCKFLOW_A", "a");
        let _ = env.bounded("STOCKFLOW_B", 3, 1..=9);
        let _ = env.secret("STOCKFLOW_S", "STOCKFLOW_S_FILE");
    }

    const PROGRAM: Program = Program {
        name: "thing",
        version: "1.2.3",
        about: "Does things.",
        commands: WORKER_COMMANDS,
        listing_env: &[],
        read_settings: read,
    };

    #[test]
    fn help_lists_commands_and_variables_with_defaults() {
        let help = PROGRAM.answer(&["--help".into()]).expect("help");
        assert!(help.starts_with("thing 1.2.3\n"), "{help}");
        assert!(help.contains("setup --update"), "{help}");
        for line in [
            "STOCKFLOW_A       a",
            "STOCKFLOW_B       3",
            "STOCKFLOW_S_FILE  (unset)",
        ] {
            assert!(help.contains(line), "{line} in {help}");
        }
        assert_eq!(PROGRAM.answer(&["setup".into(), "-h".into()]), Some(help));
    }

    #[test]
    fn version_and_other_arguments() {
        assert_eq!(
            PROGRAM.answer(&["--version".into()]).as_deref(),
            Some("thing 1.2.3\n")
        );
        assert_eq!(PROGRAM.answer(&[]), None);
        assert_eq!(PROGRAM.answer(&["setup".into()]), None);
    }
}
