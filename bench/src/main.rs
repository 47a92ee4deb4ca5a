#![doc = include_str!("../README.md")]

mod channels;
mod connectors;
mod history;
mod load;
mod pg;
mod procs;
mod raw;
mod report;
mod scenarios;
mod stack;
mod summary;

/// The hidden subcommand that runs a raw path as its own process: `raw-worker` (per message) or
/// `raw-worker --batched` (shape from `STOCKFLOW_BENCH_RAW_BATCHES` and
/// `STOCKFLOW_BENCH_RAW_BATCH_SIZE`).
pub(crate) const RAW_WORKER_COMMAND: &str = "raw-worker";

/// The flag of [`RAW_WORKER_COMMAND`] that selects the batched raw path.
pub(crate) const BATCHED_FLAG: &str = "--batched";

const USAGE: &str =
    "usage: stockflow-bench [--quick] [--runs N] [--only SCENARIO[,SCENARIO…]] [--write FILE]
  --quick        small runs (a smoke test of every scenario)
  --runs N       runs per measurement (default 3, --quick 1; the backlog runs once)
  --only LIST    scenarios: stock, raw, latency, backlog, scale, orders, flash, postgres, channels,
                 history, connectors
  --write FILE   replace the results block of FILE (e.g. BENCHMARKS.md) with the report";

/// Command-line options.
#[derive(Debug)]
struct Options {
    config: scenarios::Config,
    write: Option<std::path::PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut config = if quick {
        scenarios::Config::quick()
    } else {
        scenarios::Config::full()
    };
    let mut write = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => {}
            "--runs" => {
                let runs: usize = value("--runs")?.parse()?;
                anyhow::ensure!(runs >= 1, "--runs must be at least 1");
                config.runs = runs;
            }
            "--only" => {
                config.only = value("--only")?.split(',').map(str::to_owned).collect();
                if let Some(unknown) = config
                    .only
                    .iter()
                    .find(|s| !scenarios::SCENARIOS.contains(&s.as_str()))
                {
                    anyhow::bail!("unknown scenario {unknown:?}\n{USAGE}");
                }
            }
            "--write" => write = Some(value("--write")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Options { config, write })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(RAW_WORKER_COMMAND) {
        return raw_worker(args.get(1).map(String::as_str)).await;
    }
    let options = parse(&args)?;
    let markdown = summary::run(&options.config, &args).await?;
    println!("{markdown}");
    if let Some(path) = options.write {
        report::write_block(&path, &markdown)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// A raw path's process: servers from the same variables a worker reads.
async fn raw_worker(flag: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let ready = var("STOCKFLOW_METRICS_ADDR")?
        .parse()
        .context("STOCKFLOW_METRICS_ADDR is not an address")?;
    let (nats, redis) = (var("STOCKFLOW_NATS_URL")?, var("STOCKFLOW_REDIS_URL")?);
    match flag {
        None => raw::run(&nats, &redis, ready).await,
        Some(BATCHED_FLAG) => raw::run_batched(&nats, &redis, ready, raw::Shape::from_env()?).await,
        Some(other) => anyhow::bail!("{RAW_WORKER_COMMAND}: unknown argument {other:?}"),
    }
}
