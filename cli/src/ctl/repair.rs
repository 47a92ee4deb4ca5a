//! `stockctl rebuild` and `stockctl reconcile`: renders what [`stockflow_ops::rebuild`] and
//! [`stockflow_ops::reconcile`] return.

use std::{io::IsTerminal as _, time::Duration};

use clap::Args;

use super::Format;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use stockflow_shared::{keys::Keys, redis_conn::RedisConnection, topology};

use super::Outcome;
use stockflow_ops::{
    rebuild,
    reconcile::{self, ChannelDrift, Drift},
};

/// How long `reconcile` waits for a worker that has something pending before it looks again.
const SETTLE: Duration = Duration::from_secs(30);

/// `stockctl rebuild` arguments.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Rebuild even while workers are consuming (they would write into Redis during the
    /// rebuild; stop them first unless you know why not).
    #[arg(long)]
    pub force: bool,
}

/// `stockctl reconcile` arguments.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Publish `adjusted` facts that bring on-hand levels back to the ledger and a channel
    /// recompute for each drifted channel quantity, wait until the stock worker applied them
    /// and compare again.
    #[arg(long)]
    pub fix: bool,
}

async fn connect(
    settings: &super::Settings,
) -> anyhow::Result<(async_nats::jetstream::Context, RedisConnection, Keys)> {
    let js = super::jetstream(settings).await?;
    let state = settings.state()?;
    let redis = state.redis.connect().await?;
    Ok((js, redis, Keys::new(state.redis.key_prefix.clone())))
}

/// Restores Redis from JetStream; refuses when Redis already holds data, and (unless `force`)
/// while a stock or order worker is consuming ([`stockflow_ops::streams::consuming`] states
/// the rule).
pub async fn rebuild(
    settings: &super::Settings,
    order_retention: Duration,
    args: &RebuildArgs,
) -> anyhow::Result<()> {
    let (js, mut redis, keys) = connect(settings).await?;
    if !args.force {
        let mut workers = topology::stock_workers(&settings.topology);
        workers.push(topology::ORDER_WORKER);
        let busy = stockflow_ops::streams::consuming(&js, &workers).await?;
        if !busy.is_empty() {
            let list: Vec<String> = busy.iter().map(ToString::to_string).collect();
            anyhow::bail!(
                "workers are consuming: {}; stop (scale to zero) the stock and order workers \
                 before a rebuild, or pass --force",
                list.join("; ")
            );
        }
    }
    let retention = rebuild::Retention {
        dedup_ttl: settings.state()?.dedup_ttl,
        orders: order_retention,
    };
    let report = rebuild::rebuild(&js, &mut redis, &keys, retention).await?;
    crate::outln!(
        "rebuilt from {} ledger entries (~{} bytes each): {} levels, {} policies, {} orders, \
         {} order lines, {} holds scheduled, {} dedup records, {} channel quantities, {} channel \
         overrides, {} known locations, {} kits",
        report.entries,
        report.bytes_per_entry,
        report.locations,
        report.policies,
        report.orders,
        report.lines,
        report.holds,
        report.dedup_records,
        report.channel_quantities,
        report.channel_overrides,
        report.known_locations,
        report.kits
    );
    Ok(())
}

/// A comparison's progress on stderr, drawn only when stderr is a terminal.
#[derive(Debug)]
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new() -> Self {
        Self(None)
    }

    fn start(&mut self, len: u64, what: &str) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {what} ({{per_sec}}, {{eta}} left)"
        )) {
            bar.set_style(style.progress_chars("=> "));
        }
        self.0 = Some(bar);
    }

    fn message(&self, message: &'static str) {
        if let Some(bar) = &self.0 {
            bar.set_message(message);
        }
    }

    fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }
}

impl reconcile::Progress for Bar {
    fn reading(&mut self, messages: u64) {
        self.start(messages, "ledger entries");
        self.message("reading the ledger");
    }

    fn read(&mut self) {
        self.inc(1);
    }

    fn comparing(&mut self, skus: u64) {
        self.start(skus, "SKUs");
        self.message("comparing with Redis");
    }

    fn compared(&mut self, skus: u64) {
        self.inc(skus);
    }

    fn settling(&mut self) {
        self.start(0, "");
        if std::io::stderr().is_terminal() {
            eprintln!(
                "Redis differs from the ledger: waiting for the workers, then comparing again ..."
            );
        }
    }

    fn finished(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

/// The drift found: levels, then channel quantities.
#[derive(Debug, Clone, Default)]
struct Found {
    levels: Vec<Drift>,
    channels: Vec<ChannelDrift>,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.levels.is_empty() && self.channels.is_empty()
    }

    /// The JSON list: each entry with its `kind`, `level` or `channel`.
    fn json(&self) -> Vec<serde_json::Value> {
        let tagged = |kind: &str, mut value: serde_json::Value| {
            value["kind"] = kind.into();
            value
        };
        self.levels
            .iter()
            .map(|d| tagged("level", serde_json::to_value(d).unwrap_or_default()))
            .chain(
                self.channels
                    .iter()
                    .map(|d| tagged("channel", serde_json::to_value(d).unwrap_or_default())),
            )
            .collect()
    }
}

fn table(found: &Found) {
    if !found.levels.is_empty() {
        crate::outln!(
            "{:<24} {:<16} {:<9} {:>12} {:>12}",
            "sku",
            "location",
            "field",
            "ledger",
            "redis"
        );
    }
    for d in &found.levels {
        // A purchase order's drift names it: `purchase_order:PO-1`.
        let field = if !d.purchase_order.is_empty() {
            format!("{}:{}", d.field, d.purchase_order)
        } else if !d.kit.is_empty() {
            // A kit's drift names the ledger's definition: `kit:MUG=1 CARD=2`.
            format!("{}:{}", d.field, d.kit)
        } else {
            d.field.to_owned()
        };
        crate::outln!(
            "{:<24} {:<16} {:<9} {:>12} {:>12}",
            d.sku,
            d.location,
            field,
            d.ledger,
            d.redis
        );
    }
    if !found.channels.is_empty() {
        crate::outln!(
            "{:<24} {:<16} {:<9} {:>12} {:>12} {:>12} {:>8}",
            "sku",
            "channel",
            "kind",
            "expected",
            "feed",
            "redis",
            "version"
        );
    }
    for d in &found.channels {
        crate::outln!(
            "{:<24} {:<16} {:<9} {:>12} {:>12} {:>12} {:>8}",
            d.sku,
            d.channel,
            "channel",
            d.expected,
            d.feed,
            d.redis.map_or_else(|| "-".to_owned(), |q| q.to_string()),
            d.version
        );
    }
}

/// What `reconcile -o json` prints.
#[derive(Debug, serde::Serialize)]
struct Json<'a> {
    /// Whether Redis agrees with the ledger and the feed (after the fix, with `--fix`).
    agrees: bool,
    /// The drift found, each with its `kind` (`level` or `channel`).
    drift: Vec<serde_json::Value>,
    /// Workers that did not catch up before the second look.
    not_caught_up: &'a [String],
    /// With `--fix`: what was done and what is left.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<FixJson>,
}

/// The `fix` object of [`Json`].
#[derive(Debug, serde::Serialize)]
struct FixJson {
    /// `adjusted` corrections published.
    published: usize,
    /// Channel recomputes published.
    recomputes: usize,
    /// Drift left after they were applied (reserved drift needs `stockctl rebuild`).
    remaining: Vec<serde_json::Value>,
}

/// What `--fix` did: corrections published, and the drift left once they were applied.
struct Fixed {
    published: usize,
    recomputes: usize,
    remaining: Found,
    not_caught_up: Vec<String>,
}

/// Publishes the corrections of `drift`, waits until the stock worker applied them, and
/// compares again.
async fn fix(
    settings: &super::Settings,
    js: &async_nats::jetstream::Context,
    redis: &mut RedisConnection,
    keys: &Keys,
    drift: &Found,
) -> anyhow::Result<Fixed> {
    let published = reconcile::publish_corrections(js, &drift.levels).await?;
    let recomputes = reconcile::publish_recomputes(js, redis, keys, &drift.channels).await?;
    let mut not_caught_up = Vec::new();
    if published + recomputes > 0 {
        if let Err(e) =
            stockflow_ops::streams::wait_until_stock_caught_up(js, &settings.topology, SETTLE).await
        {
            not_caught_up.push(format!("{e:#}"));
        }
    }
    let (levels, channels) = reconcile::all_drift_with(js, redis, keys, &mut Bar::new()).await?;
    Ok(Fixed {
        published,
        recomputes,
        remaining: Found { levels, channels },
        not_caught_up,
    })
}

/// Compares Redis with the ledger (and channel quantities with the feed) and prints the drift;
/// with `--fix` publishes corrections, waits for them and says what it fixed and what is left.
/// Exit 4 while drift is left.
pub async fn reconcile(
    settings: &super::Settings,
    args: &ReconcileArgs,
    format: Format,
) -> anyhow::Result<Outcome> {
    let (js, mut redis, keys) = connect(settings).await?;
    let report = reconcile::settled_drift(
        &js,
        &mut redis,
        &keys,
        &settings.topology,
        SETTLE,
        &mut Bar::new(),
    )
    .await?;
    for e in &report.not_caught_up {
        eprintln!("stockctl: {e}; comparing anyway");
    }
    let drift = Found {
        levels: report.drift,
        channels: report.channels,
    };
    let fixed = if args.fix && !drift.is_empty() {
        let fixed = fix(settings, &js, &mut redis, &keys, &drift).await?;
        for e in &fixed.not_caught_up {
            eprintln!("stockctl: {e}; comparing anyway");
        }
        Some(fixed)
    } else {
        None
    };
    let left = fixed.as_ref().map_or(&drift, |f| &f.remaining);
    let outcome = if left.is_empty() {
        Outcome::Done
    } else {
        Outcome::Drift
    };
    if format == Format::Json {
        let json = Json {
            agrees: left.is_empty(),
            drift: drift.json(),
            not_caught_up: &report.not_caught_up,
            fix: fixed.as_ref().map(|f| FixJson {
                published: f.published,
                recomputes: f.recomputes,
                remaining: f.remaining.json(),
            }),
        };
        crate::outln!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(outcome);
    }
    if drift.is_empty() {
        crate::outln!("Redis agrees with the ledger");
        return Ok(outcome);
    }
    table(&drift);
    if let Some(fixed) = fixed {
        let on_hand = drift.levels.iter().filter(|d| d.field == "on_hand").count();
        crate::outln!(
            "published {} correction(s) for {on_hand} on-hand drift(s)",
            fixed.published
        );
        if fixed.recomputes > 0 {
            crate::outln!(
                "published {} channel recompute(s) for {} channel drift(s)",
                fixed.recomputes,
                drift.channels.len()
            );
        }
        if fixed.remaining.is_empty() {
            crate::outln!("fixed: Redis agrees with the ledger");
            return Ok(outcome);
        }
        crate::outln!("left after the fix:");
        table(&fixed.remaining);
        if fixed.remaining.levels.iter().any(|d| d.field == "on_hand")
            || !fixed.remaining.channels.is_empty()
        {
            crate::outln!(
                "on-hand or channel drift is left: the stock worker has not applied the \
                 corrections (is it running?); run `stockctl reconcile` again once it has"
            );
        }
        if fixed.remaining.levels.iter().any(|d| d.field == "reserved") {
            crate::outln!("reserved drift has no stock fact that repairs it: `stockctl rebuild`");
        }
        if fixed
            .remaining
            .levels
            .iter()
            .any(|d| !matches!(d.field, "on_hand" | "reserved"))
        {
            crate::outln!(
                "incoming, unsellable or purchase-order drift has no stock fact that repairs it: \
                 `stockctl rebuild`"
            );
        }
    }
    Ok(outcome)
}
