//! `stockctl`, the operator command line: its arguments, its settings, and one module per
//! command.

pub mod channels;
pub mod connectors;
pub mod dlq;
pub mod import;
pub mod kits;
pub mod ledger;
pub mod publish;
pub mod repair;
pub mod selftest;
pub mod stock;
pub mod tail;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::{Parser, Subcommand};
use std::time::Duration;
use stockflow_shared::{
    connect::{NatsSettings, RedisSettings},
    settings::{ConfigError, Env},
    telemetry::LogSettings,
    topology::{self, Mode, TopologySettings},
    worker,
};

/// Operate stockflow: streams, facts, bulk imports, levels, derived events, dead letters.
///
/// Connection settings come from the same environment variables as the workers
/// (STOCKFLOW_NATS_URL, STOCKFLOW_REDIS_URL, STOCKFLOW_KEY_PREFIX, ...; see docs/operations.md).
#[derive(Debug, Parser)]
#[command(name = "stockctl", version)]
pub struct Cli {
    /// NATS server URL(s), comma-separated; overrides STOCKFLOW_NATS_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Redis URL; overrides STOCKFLOW_REDIS_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// How results are printed: a table for people, or JSON for programs (the schema of each
    /// command is in the crate README).
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table
    )]
    pub output: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How a command prints its result (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text and tables for people.
    Table,
    /// JSON for programs: one object per command (one per line for `tail` and `dlq list`).
    Json,
}

impl Format {
    /// `self`, or JSON when a command's own `--json` flag (kept as an alias) is given.
    pub fn or_json(self, json: bool) -> Self {
        if json {
            Self::Json
        } else {
            self
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Declare every stream and durable consumer (idempotent; the Helm chart's hook runs it).
    Setup {
        /// Apply the declared configuration to streams and consumers that differ.
        #[arg(long)]
        update: bool,
    },
    /// Publish a receipt for a fresh SKU and wait until the stock worker applied it.
    Selftest,
    /// Publish one stock fact or order command, from flags or JSON.
    Publish(publish::PublishArgs),
    /// Import initial stock or counts from a CSV file (sku,location,on_hand[,threshold,safety_stock]).
    Import(import::ImportArgs),
    /// Levels of a SKU per location, with totals (now, from Redis; or at a past time, from the
    /// ledger).
    Stock {
        /// The SKU.
        sku: String,
        /// The levels at this time (RFC 3339, or ms since the Unix epoch), from the ledger: a
        /// location with no entry by then is not listed.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// A page of a SKU's ledger, newest first: filter by location, kind and time.
    Ledger(ledger::LedgerArgs),
    /// Print the events of a subject as they are stored (e.g. `stock.changes.>`, `alerts.>`).
    Tail(tail::TailArgs),
    /// List, show and replay dead letters.
    Dlq {
        /// Which.
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Sales channels: list, show, set and remove them; override a channel's rules for a SKU.
    Channels {
        /// Which.
        #[command(subcommand)]
        command: channels::ChannelsCommand,
    },
    /// What a channel may sell: one SKU's newest quantity, or every SKU of the channel.
    Availability(channels::AvailabilityArgs),
    /// Kits (bundles): set a kit's components, remove it, show what its components make.
    Kits {
        /// Which.
        #[command(subcommand)]
        command: kits::KitsCommand,
    },
    /// Shops of the connector (Shopify, WooCommerce): shops and item mappings, CSV import, check
    /// a shops file, show what waits.
    Connectors {
        /// Which.
        #[command(subcommand)]
        command: connectors::ConnectorsCommand,
    },
    /// Rebuild every Redis key from JetStream (workers stopped, Redis empty).
    Rebuild(repair::RebuildArgs),
    /// Compare Redis with the ledger; exit 4 when they differ (with --fix: when drift is left).
    Reconcile(repair::ReconcileArgs),
    /// Print a shell completion script, e.g. `stockctl completion bash > /etc/bash_completion.d/stockctl`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What `stockctl` reads from its environment: what its commands use of the workers' settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// NATS connection (`--nats-url` overrides `STOCKFLOW_NATS_URL`).
    pub nats: NatsSettings,
    /// Logging (`warn` unless `STOCKFLOW_LOG` asks for more).
    pub log: LogSettings,
    /// Streams and consumers, as the workers declare them.
    pub topology: TopologySettings,
    /// Read only for the commands that use Redis ([`Command::uses_redis`]).
    state: Option<State>,
}

/// The settings of the commands that read or write Redis.
#[derive(Debug, Clone)]
pub struct State {
    /// Redis connection and key prefix (`--redis-url` overrides `STOCKFLOW_REDIS_URL`).
    pub redis: RedisSettings,
    /// How long the workers remember an `event_id` (`rebuild` restores dedup records for it).
    pub dedup_ttl: Duration,
    /// How long the order worker keeps a final order's record (`rebuild` restores it for what
    /// is left of that time).
    pub order_retention: Duration,
}

impl Settings {
    /// The Redis settings; read for every command that [uses Redis](Command::uses_redis).
    pub fn state(&self) -> anyhow::Result<&State> {
        self.state
            .as_ref()
            .context("this command was started without its Redis settings (a bug in stockctl)")
    }
}

impl Command {
    /// Whether the command reads or writes Redis: only those read (and check) its settings,
    /// so a bad `STOCKFLOW_REDIS_URL` does not stop `tail`, `dlq`, `publish` or `setup`.
    pub fn uses_redis(&self) -> bool {
        matches!(
            self,
            Self::Selftest
                | Self::Import(_)
                | Self::Stock { at: None, .. }
                | Self::Rebuild(_)
                | Self::Reconcile(_)
        ) || matches!(self, Self::Channels { command } if command.uses_redis())
            || matches!(self, Self::Kits { command } if command.uses_redis())
    }
}

/// What `stockctl` reads from its environment: the workers' connections, key prefix, topology
/// and retention settings, with the command line's URL overrides applied.
pub fn settings(env: Env, cli: &Cli) -> Result<Settings, ConfigError> {
    let nats_url = cli.nats_url.clone();
    let redis_url = cli.redis_url.clone();
    let layered = Env::from_fn(move |name| match name {
        "STOCKFLOW_NATS_URL" if nats_url.is_some() => nats_url.clone(),
        "STOCKFLOW_REDIS_URL" if redis_url.is_some() => redis_url.clone(),
        // Results go to stdout; only warnings and errors are logged unless asked for.
        "STOCKFLOW_LOG" => env.raw(name).or_else(|| Some("warn".into())),
        _ => env.raw(name),
    });
    read(&layered, cli.command.uses_redis()).map_err(|e| match e {
        ConfigError::Invalid { var, reason }
            if var == "STOCKFLOW_NATS_URL" && cli.nats_url.is_some() =>
        {
            ConfigError::Invalid {
                var: "--nats-url",
                reason,
            }
        }
        ConfigError::Invalid { var, reason }
            if var == "STOCKFLOW_REDIS_URL" && cli.redis_url.is_some() =>
        {
            ConfigError::Invalid {
                var: "--redis-url",
                reason,
            }
        }
        other => other,
    })
}

/// Reads [`Settings`] from `env` as it is; the Redis part only `with_redis`.
fn read(env: &Env, with_redis: bool) -> Result<Settings, ConfigError> {
    let nats = NatsSettings::from_env(env, "stockctl")?;
    let state = if with_redis {
        let redis = RedisSettings::from_env(env)?;
        let dedup_ttl = worker::dedup_ttl_from_env(env)?;
        Some(State {
            order_retention: order_worker::order_retention(env, dedup_ttl)?,
            redis,
            dedup_ttl,
        })
    } else {
        None
    };
    Ok(Settings {
        nats,
        log: LogSettings::from_env(env)?,
        topology: worker::topology_from_env(env)?,
        state,
    })
}

/// Prints `shell`'s completion script for `stockctl`; needs no settings or server.
pub fn completion(shell: clap_complete::Shell) {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "stockctl", &mut script);
    crate::out!("{}", String::from_utf8_lossy(&script));
}

/// The "Environment variables" section of `stockctl --help`: what [`settings`] reads.
pub fn variables_help() -> String {
    let env = Env::recording([]);
    let _ = read(&env, true);
    let mut variables = env.asked();
    // `settings` lowers the log default: results go to stdout.
    for v in &mut variables {
        if v.name == "STOCKFLOW_LOG" {
            v.default = Some("warn".into());
        }
    }
    stockflow_shared::cli::variables_help(&variables)
}

/// Connects to NATS and returns a JetStream context.
async fn jetstream(settings: &Settings) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(settings.nats.connect().await?))
}

/// Runs one command; what it prints goes to stdout, progress and logs to stderr.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<Outcome> {
    let format = cli.output;
    match cli.command {
        Command::Setup { update } => {
            let mode = if update { Mode::Update } else { Mode::Verify };
            let report = worker::setup(&settings.nats, &settings.topology, mode).await?;
            print_setup(&report, mode, format);
        }
        Command::Selftest => selftest::run(&settings, format).await?,
        Command::Publish(args) => {
            publish::run(&jetstream(&settings).await?, &args, format).await?;
        }
        Command::Import(args) => return import::run(&settings, &args, format).await,
        Command::Stock { sku, at: None } => return stock::run(&settings, &sku, format).await,
        Command::Stock { sku, at: Some(at) } => {
            return stock::run_at(&jetstream(&settings).await?, &sku, &at, format).await
        }
        Command::Ledger(args) => {
            return ledger::run(&jetstream(&settings).await?, &args, format).await
        }
        Command::Tail(args) => {
            tail::run(
                &jetstream(&settings).await?,
                &args,
                &settings.topology,
                format,
            )
            .await?;
        }
        Command::Dlq { command } => {
            dlq::run(&jetstream(&settings).await?, &command, format).await?;
        }
        Command::Channels { command } => return channels::run(&settings, &command, format).await,
        Command::Availability(args) => {
            return channels::availability(&settings, &args, format).await
        }
        Command::Kits { command } => return kits::run(&settings, &command, format).await,
        Command::Connectors { command } => {
            return connectors::run(&settings, &command, format).await
        }
        Command::Rebuild(args) => {
            repair::rebuild(&settings, settings.state()?.order_retention, &args).await?;
        }
        Command::Reconcile(args) => return repair::reconcile(&settings, &args, format).await,
        Command::Completion { shell } => completion(shell),
    }
    Ok(Outcome::Done)
}

/// What `setup` prints: one line per object created or updated, or `setup_json`.
fn print_setup(report: &topology::Report, mode: Mode, format: Format) {
    match format {
        Format::Json => crate::outln!("{}", setup_json(report, mode)),
        Format::Table => {
            for object in &report.objects {
                if object.action != topology::Action::Unchanged {
                    crate::outln!(
                        "{} {} {}",
                        object.action.as_str(),
                        object.kind.as_str(),
                        object.name
                    );
                }
            }
            crate::outln!("streams and consumers are in place");
        }
    }
}

/// `setup -o json`: the mode, and every declared object with what was done to it.
pub fn setup_json(report: &topology::Report, mode: Mode) -> serde_json::Value {
    let objects: Vec<serde_json::Value> = report
        .objects
        .iter()
        .map(|o| {
            serde_json::json!({
                "kind": o.kind.as_str(),
                "name": o.name,
                "action": o.action.as_str(),
            })
        })
        .collect();
    serde_json::json!({
        "mode": match mode {
            Mode::Verify => "verify",
            Mode::Update => "update",
        },
        "created": report.count(topology::Action::Created),
        "updated": report.count(topology::Action::Updated),
        "unchanged": report.count(topology::Action::Unchanged),
        "objects": objects,
    })
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done (exit 0).
    Done,
    /// Done, but some input was refused, e.g. invalid CSV rows (exit 3).
    SomeRefused,
    /// Redis and the ledger differ (exit 4).
    Drift,
    /// What was asked for does not exist, e.g. a SKU with no stock recorded (exit 5).
    NotFound,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::SomeRefused => 3,
            Self::Drift => 4,
            Self::NotFound => 5,
        }
    }
}

/// Looks a stream up, saying what to do when it is missing.
async fn stream(js: &jetstream::Context, name: &str) -> anyhow::Result<jetstream::stream::Stream> {
    js.get_stream(name)
        .await
        .with_context(|| format!("stream {name} is not available (has `stockctl setup` run?)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_helm_chart_invocations_still_parse() {
        for args in [
            &["stockctl", "setup"][..],
            &["stockctl", "setup", "--update"],
            &["stockctl", "selftest"],
            &["stockctl", "stock", "A1"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn url_overrides_win_and_bad_ones_name_the_flag() {
        let env = Env::from_pairs([("STOCKFLOW_NATS_URL", "nats://elsewhere:4222")]);
        let cli = Cli::try_parse_from(["stockctl", "--nats-url", "nats://127.0.0.1:5", "selftest"])
            .expect("parses");
        let s = settings(env, &cli).expect("valid");
        assert_eq!(s.nats.urls, vec!["nats://127.0.0.1:5".to_owned()]);
        assert_eq!(s.log.filter, "warn");
        assert_eq!(
            s.state().expect("selftest uses Redis").order_retention,
            order_worker::DEFAULT_ORDER_RETENTION
        );
        // A command that does not use Redis does not read, or refuse, its settings.
        let cli = Cli::try_parse_from(["stockctl", "--redis-url", "http://x", "dlq", "list"])
            .expect("parses");
        let s = settings(Env::from_pairs([]), &cli).expect("Redis is not read");
        assert!(s.state().is_err());
        let cli = Cli::try_parse_from(["stockctl", "--redis-url", "http://x", "selftest"])
            .expect("parses");
        let env = Env::from_pairs([]);
        let err = settings(env, &cli).expect_err("not redis");
        assert!(err.to_string().starts_with("--redis-url:"), "{err}");
    }

    #[test]
    fn only_the_settings_a_command_uses_are_read() {
        let help = variables_help();
        for used in [
            "STOCKFLOW_NATS_URL",
            "STOCKFLOW_REDIS_URL",
            "STOCKFLOW_KEY_PREFIX",
            "STOCKFLOW_STOCK_PARTITIONS",
            "STOCKFLOW_DEDUP_TTL_SECONDS",
            "STOCKFLOW_ORDER_RETENTION_SECONDS",
        ] {
            assert!(help.contains(used), "{used} in {help}");
        }
        for unused in [
            "STOCKFLOW_MAX_IN_FLIGHT",
            "STOCKFLOW_METRICS_ADDR",
            "STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS",
            "STOCKFLOW_STARTUP_TIMEOUT_SECONDS",
            "STOCKFLOW_REDIS_WAIT_REPLICAS",
        ] {
            assert!(!help.contains(unused), "{unused} in {help}");
        }
        let cli = Cli::try_parse_from(["stockctl", "selftest"]).expect("parses");
        let env = Env::from_pairs([("STOCKFLOW_MAX_IN_FLIGHT", "lots")]);
        assert!(
            settings(env, &cli).is_ok(),
            "an unused setting is not checked"
        );
    }
}
