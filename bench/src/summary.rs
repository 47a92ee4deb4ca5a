//! Runs the chosen scenarios and assembles the report: machine, versions, command, tables,
//! ratios and targets.

use std::{fmt::Write as _, process::Command};

use crate::{
    pg,
    report::Table,
    scenarios::{self, Config, Results},
};

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text).trim().to_owned()
        })
        .unwrap_or_else(|_| format!("{program}: not found"))
}

fn machine() -> String {
    let lscpu = output("lscpu", &[]);
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(String::new, |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "- CPU: {} — {} CPUs ({} threads per core), {}\n- memory: {memory}\n- kernel: {}\n\
         - load average when the run started: {}",
        field("Model name:"),
        field("CPU(s):"),
        field("Thread(s) per core:"),
        field("Architecture:"),
        output("uname", &["-sr"]),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn versions(pg: Option<&pg::Postgres>) -> String {
    let nats = stockflow_tests::server_binary("nats-server");
    let redis = stockflow_tests::server_binary("redis-server");
    format!(
        "- {}\n- nats-server {}\n- {}\n- {}\n- {}",
        output("rustc", &["--version"]),
        output(&nats.to_string_lossy(), &["--version"]).trim_start_matches("nats-server: "),
        output(&redis.to_string_lossy(), &["--version"]),
        pg.map_or_else(|| "PostgreSQL: not run".into(), pg::Postgres::version),
        "stockflow: this commit, release build (`cargo build --release`)",
    )
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn show(value: Option<f64>, decimals: usize, unit: &str) -> String {
    value.map_or_else(
        || "not measured".into(),
        |v| format!("{v:.decimals$}{unit}"),
    )
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "–",
    }
}

fn targets(results: &Results) -> Table {
    let mut table = Table::new(
        "Ratios and targets",
        &["what", "measured", "target", "status"],
    );
    let stock_raw = ratio(results.stock_max, results.raw_max);
    table.row(vec![
        "one stock-worker / raw path, throughput".into(),
        show(stock_raw, 2, "×"),
        "≥ 0.9×".into(),
        met(stock_raw.map(|r| r >= 0.9)).into(),
    ]);
    let stock_pg = ratio(results.stock_max, results.pg_facts_best);
    table.row(vec![
        "one stock-worker / PostgreSQL best, stock facts".into(),
        show(stock_pg, 1, "×"),
        "–".into(),
        "–".into(),
    ]);
    table.row(vec![
        "p99 end to end at 10,000 events/s".into(),
        show(results.p99_at_10k, 2, " ms"),
        "≤ 25 ms".into(),
        met(results.p99_at_10k.map(|p| p <= 25.0)).into(),
    ]);
    table.row(vec![
        "fact → channel quantity read from the feed, p99 at 10,000 facts/s".into(),
        show(results.channel_p99_at_10k, 2, " ms"),
        "–".into(),
        "–".into(),
    ]);
    let flash_pg = ratio(results.flash, results.pg_flash_best);
    table.row(vec![
        "flash sale: order-worker / PostgreSQL best".into(),
        show(flash_pg, 1, "×"),
        "≥ 10×, zero oversell".into(),
        met(flash_pg.map(|r| r >= 10.0 && results.flash_oversold == Some(false))).into(),
    ]);
    table.row(vec![
        "oversold units (flash sale)".into(),
        match results.flash_oversold {
            Some(false) => "none".into(),
            Some(true) => "**some**".into(),
            None => "not measured".into(),
        },
        "none".into(),
        met(results.flash_oversold.map(|o| !o)).into(),
    ]);
    table.row(vec![
        "highest worker peak RSS under load".into(),
        show(results.peak_rss_mib, 1, " MiB"),
        "≤ 64 MiB".into(),
        met(results.peak_rss_mib.map(|m| m <= 64.0)).into(),
    ]);
    table
}

fn memory_table(results: &Results) -> Table {
    let mut table = Table::new(
        "Memory: resident set of each worker process",
        &[
            "process",
            "idle (VmRSS after start)",
            "peak under load (VmHWM)",
        ],
    );
    table.note = "MiB, from /proc/<pid>/status, over every run of the scenarios above.".into();
    for (worker, idle, peak) in &results.memory {
        table.row(vec![worker.clone(), idle.show(1), peak.show(1)]);
    }
    table
}

/// Runs what `config` selects; returns the markdown report.
pub(crate) async fn run(config: &Config, args: &[String]) -> anyhow::Result<String> {
    let machine = machine();
    let mut results = Results::default();
    let needs_pg = config.wants("postgres") || config.wants("flash");
    let pg = if needs_pg {
        Some(pg::Postgres::start()?)
    } else {
        None
    };
    if config.wants("stock") {
        eprintln!("stock facts: throughput");
        scenarios::stock_throughput(config, &mut results).await?;
    }
    if config.wants("latency") {
        eprintln!("stock facts: latency");
        scenarios::latency(config, &mut results).await?;
    }
    if config.wants("scale") {
        eprintln!("stock facts: 1, 2, 4 processes");
        scenarios::scale(config, &mut results).await?;
    }
    if config.wants("orders") {
        eprintln!("orders");
        scenarios::orders(config, &mut results).await?;
    }
    if let (true, Some(pg)) = (config.wants("postgres"), pg.as_ref()) {
        eprintln!("PostgreSQL baseline: stock facts");
        scenarios::postgres_facts(config, &mut results, pg).await?;
    }
    if config.wants("flash") {
        eprintln!("flash sale");
        scenarios::flash_sale(config, &mut results, pg.as_ref()).await?;
    }
    if config.wants("channels") {
        eprintln!("channels: propagation");
        crate::channels::propagation(config, &mut results).await?;
        eprintln!("channels: a rule change over every SKU");
        crate::channels::rule_change(config, &mut results).await?;
    }
    let mut out = String::new();
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "Generated by `just bench{}{}` (each measurement: {} run{}, median with min–max in \
         parentheses).\n",
        if args.is_empty() { "" } else { " " },
        args.join(" "),
        config.runs,
        if config.runs == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "### Machine\n\n{machine}\n");
    let _ = writeln!(out, "### Versions\n\n{}\n", versions(pg.as_ref()));
    out.push_str(&targets(&results).markdown());
    for table in &results.tables {
        out.push('\n');
        out.push_str(&table.markdown());
    }
    out.push('\n');
    out.push_str(&memory_table(&results).markdown());
    Ok(out)
}
