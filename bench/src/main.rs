#![doc = include_str!("../README.md")]

mod channels;
mod load;
mod pg;
mod procs;
mod raw;
mod report;
mod scenarios;
mod stack;
mod summary;

/// The hidden subcommand that runs the raw path as its own process.
pub(crate) const RAW_WORKER_COMMAND: &str = "raw-worker";

const USAGE: &str =
    "usage: stockflow-bench [--quick] [--runs N] [--only SCENARIO[,SCENARIO…]] [--write FILE]
  --quick        small runs (a smoke test of every scenario, about a minute)
  --runs N       runs per measurement (default 3, --quick 1)
  --only LIST    scenarios: stock, latency, scale, orders, flash, postgres, channels
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
        return raw_worker().await;
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

/// The raw path's process: servers from the same variables a worker reads.
async fn raw_worker() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let ready = var("STOCKFLOW_METRICS_ADDR")?
        .parse()
        .context("STOCKFLOW_METRICS_ADDR is not an address")?;
    raw::run(
        &var("STOCKFLOW_NATS_URL")?,
        &var("STOCKFLOW_REDIS_URL")?,
        ready,
    )
    .await
}
