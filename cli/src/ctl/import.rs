//! `stockctl import <csv>`: reads the file, runs [`stockflow_ops::import`] (which describes
//! what an import does and why re-running it changes nothing), shows a progress bar, and prints
//! the summary.

use std::{fmt, io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stockflow_ops::import::{self, Options, Summary};
use stockflow_shared::keys::Keys;

use super::{Format, Outcome};

/// `stockctl import` arguments.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file. Its header row names the columns: sku, location, on_hand, and optionally
    /// threshold (the low-stock threshold) and safety_stock. An empty optional cell leaves
    /// that setting alone.
    pub file: PathBuf,
    /// Wait until the stock worker has applied every published row, then count what changed.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
    /// Publishes awaiting JetStream's acknowledgement at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub in_flight: u64,
    /// How many invalid rows the summary lists.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub show_invalid: usize,
    /// The `source` recorded in the events.
    #[arg(long, default_value = "stockctl:import")]
    pub source: String,
    /// An initial load: set the levels as opening balances (reason `opening_balance`),
    /// recorded in the ledger but raising no low/out-of/back-in-stock alerts, so nothing
    /// floods the alert stream and its webhook subscribers. It waits (as --wait) until every
    /// row is applied, then has each SKU's sales-channel quantities computed once.
    #[arg(long)]
    pub initial_load: bool,
}

/// What `import -o json` prints: the summary's counts and invalid rows, with the file.
#[derive(Debug, serde::Serialize)]
struct Json<'a> {
    /// The file, as named on the command line.
    file: &'a str,
    /// Whether it was imported as an initial load.
    initial_load: bool,
    /// What became of its rows.
    #[serde(flatten)]
    summary: &'a Summary,
}

/// The summary `stockctl import` prints: counts per fate, then the first `show_invalid` invalid
/// rows by line.
#[derive(Debug, Clone, Copy)]
pub struct Rendered<'a> {
    /// The file, as named on the command line.
    pub file: &'a str,
    /// What became of its rows.
    pub summary: &'a Summary,
    /// How many invalid rows to list.
    pub show_invalid: usize,
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            file,
            summary,
            show_invalid,
        } = *self;
        writeln!(f, "import {file}: {} rows", summary.rows)?;
        if summary.waited {
            writeln!(f, "  applied    {:>9}", summary.applied)?;
        } else {
            writeln!(
                f,
                "  published  {:>9}  (not waited for: the stock worker applies them; --wait counts what changed)",
                summary.published
            )?;
        }
        writeln!(
            f,
            "  unchanged  {:>9}  ({} already as in the file, {} already imported)",
            summary.unchanged(),
            summary.unchanged_as_in_file,
            summary.unchanged_duplicate
        )?;
        writeln!(f, "  invalid    {:>9}", summary.invalid.len())?;
        if !summary.invalid.is_empty() {
            let shown = summary.invalid.len().min(show_invalid);
            if shown < summary.invalid.len() {
                writeln!(
                    f,
                    "invalid rows (first {shown} of {}):",
                    summary.invalid.len()
                )?;
            } else {
                writeln!(f, "invalid rows:")?;
            }
            for row in &summary.invalid[..shown] {
                writeln!(f, "  line {}: {}", row.line, row.reason)?;
            }
            if shown < summary.invalid.len() {
                writeln!(f, "  ... and {} more", summary.invalid.len() - shown)?;
            }
        }
        Ok(())
    }
}

/// A bar of `len` rows on stderr with `message` before it; hidden unless stderr is a terminal.
fn progress(len: u64, message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

/// The progress of an import in rows, drawn by [`progress`]: publishing, then applying.
#[derive(Debug)]
struct Bar(Option<ProgressBar>);

impl Bar {
    fn clear(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

impl import::Progress for Bar {
    fn publishing(&mut self, rows: u64) {
        self.clear();
        self.0 = Some(progress(rows, "publishing"));
    }

    fn stored(&mut self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }

    fn published(&mut self) {
        self.clear();
    }

    fn waiting(&mut self, rows: usize) {
        self.clear();
        self.0 = Some(progress(rows as u64, "applying"));
    }

    fn applied(&mut self, rows: usize) {
        if let Some(bar) = &self.0 {
            bar.set_position(rows as u64);
        }
    }

    fn waited(&mut self) {
        self.clear();
    }
}

/// `stockctl import`.
pub async fn run(
    settings: &super::Settings,
    args: &ImportArgs,
    format: Format,
) -> anyhow::Result<Outcome> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let sheet = import::read_sheet(&bytes).with_context(|| format!("{}", args.file.display()))?;
    let redis_settings = &settings.state()?.redis;
    let mut redis = redis_settings.connect().await?;
    let keys = Keys::new(redis_settings.key_prefix.clone());
    let client = settings.nats.connect().await?;
    let js = async_nats::jetstream::new(client.clone());
    let options = Options {
        source: args.source.clone(),
        in_flight: usize::try_from(args.in_flight).unwrap_or(256),
        wait: (args.wait || args.initial_load).then(|| Duration::from_secs(args.timeout)),
        initial_load: args.initial_load,
    };
    let summary = import::import(
        &js,
        &mut redis,
        &keys,
        &settings.topology,
        &sheet,
        &options,
        &mut Bar(None),
    )
    .await;
    client.drain().await.ok();
    let summary = summary?;
    let file = args.file.display().to_string();
    match format {
        Format::Table => crate::out!(
            "{}",
            Rendered {
                file: &file,
                summary: &summary,
                show_invalid: args.show_invalid,
            }
        ),
        Format::Json => crate::outln!(
            "{}",
            serde_json::to_string_pretty(&Json {
                file: &file,
                initial_load: args.initial_load,
                summary: &summary,
            })?
        ),
    }
    Ok(if summary.invalid.is_empty() {
        Outcome::Done
    } else {
        Outcome::SomeRefused
    })
}
