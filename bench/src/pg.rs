//! The PostgreSQL baseline: what one would otherwise build — one central database, one
//! transaction per event with a row lock: record the event id (dedup), lock the stock row, apply
//! the change (or, for a reservation, take it only if available covers it), append a ledger row.
//!
//! The server is a throw-away cluster (`initdb` in a temp dir, a free port), run as `nobody` when
//! this process is root (PostgreSQL refuses to run as root). `synchronous_commit = off` gives it
//! the durability of the other side (Redis AOF fsync every second, JetStream's periodic sync).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio_postgres::NoTls;

use crate::procs::free_port;

/// A PostgreSQL cluster of its own, stopped and removed on `Drop`.
#[derive(Debug)]
pub(crate) struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`, or `initdb` on `PATH`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        })
        .context(
            "PostgreSQL not found: run `python3 scripts/bootstrap.py --with postgresql` \
             (`just bench` does) or `apt-get install postgresql`",
        )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn id_of(user: &str, flag: &str) -> anyhow::Result<u32> {
    let out = Command::new("id").args([flag, user]).output()?;
    anyhow::ensure!(out.status.success(), "no user {user}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

impl Postgres {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir()?;
        let run_as = is_root().then(|| "nobody".to_owned());
        if let Some(user) = &run_as {
            std::os::unix::fs::chown(
                dir.path(),
                Some(id_of(user, "-u")?),
                Some(id_of(user, "-g")?),
            )
            .context("giving the PostgreSQL directory to nobody")?;
        }
        let data = dir.path().join("data");
        let port = free_port()?;
        let server = Self {
            bin,
            data,
            run_as,
            port,
            _dir: dir,
        };
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data.as_os_str(),
                "-U".as_ref(),
                "bench".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        )?;
        let socket_dir = server
            .data
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=64 \
             -c shared_buffers=256MB -c synchronous_commit=off",
            socket_dir.display()
        );
        let log = socket_dir.join("postgres.log");
        server.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                server.data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        )?;
        Ok(server)
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = command
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {tool}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=bench dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// `postgres --version`.
    pub(crate) fn version(&self) -> String {
        Command::new(self.bin.join("postgres"))
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.clone();
        let _ = self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        );
    }
}

/// What one baseline transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A stock fact: `on_hand += quantity`, always applied.
    Fact,
    /// An order line: `reserved += quantity` only if `on_hand - reserved >= quantity`.
    Reserve,
}

/// One event for the baseline: dedup id, SKU, quantity.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) sku: String,
    pub(crate) quantity: i64,
}

/// Result of one baseline run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    pub(crate) per_second: f64,
    pub(crate) applied: u64,
}

/// Fresh tables with `on_hand` for every SKU at `wh`.
pub(crate) async fn prepare(pg: &Postgres, skus: &[String], on_hand: i64) -> anyhow::Result<()> {
    let client = pg.connect().await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS stock, dedup, ledger;
             CREATE TABLE stock (sku text, location text, on_hand bigint NOT NULL,
                                 reserved bigint NOT NULL, PRIMARY KEY (sku, location));
             CREATE TABLE dedup (event_id text PRIMARY KEY);
             CREATE TABLE ledger (id bigserial PRIMARY KEY, sku text NOT NULL,
                                  location text NOT NULL, cause text NOT NULL,
                                  kind text NOT NULL, before_on_hand bigint NOT NULL,
                                  after_on_hand bigint NOT NULL, before_reserved bigint NOT NULL,
                                  after_reserved bigint NOT NULL);",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO stock VALUES ($1, 'wh', $2, 0)")
        .await?;
    for sku in skus {
        client.execute(&insert, &[sku, &on_hand]).await?;
    }
    Ok(())
}

/// Runs `events` through `pool` connections, each taking the next event when its transaction
/// commits (closed loop, `pool` transactions in flight).
pub(crate) async fn run(
    pg: &Postgres,
    kind: Kind,
    events: Arc<Vec<Event>>,
    pool: usize,
) -> anyhow::Result<Outcome> {
    let mut clients = Vec::with_capacity(pool);
    for _ in 0..pool {
        clients.push(pg.connect().await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let applied = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let (events, next, applied) = (events.clone(), next.clone(), applied.clone());
        tasks.spawn(async move {
            let statements = Statements::prepare(&client).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(event) = events.get(i) else {
                    return anyhow::Ok(());
                };
                if transaction(&mut client, &statements, kind, event).await? {
                    applied.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed().max(Duration::from_millis(1));
    Ok(Outcome {
        per_second: events.len() as f64 / elapsed.as_secs_f64(),
        applied: applied.load(Ordering::Relaxed),
    })
}

/// The statements of a transaction, prepared once per connection (as a connection pool's
/// statement cache would).
#[derive(Debug)]
struct Statements {
    dedup: tokio_postgres::Statement,
    lock: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    ledger: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &tokio_postgres::Client) -> anyhow::Result<Self> {
        Ok(Self {
            dedup: client
                .prepare("INSERT INTO dedup VALUES ($1) ON CONFLICT DO NOTHING")
                .await?,
            lock: client
                .prepare(
                    "SELECT on_hand, reserved FROM stock WHERE sku = $1 AND location = 'wh' \
                     FOR UPDATE",
                )
                .await?,
            update: client
                .prepare(
                    "UPDATE stock SET on_hand = $2, reserved = $3 \
                     WHERE sku = $1 AND location = 'wh'",
                )
                .await?,
            ledger: client
                .prepare(
                    "INSERT INTO ledger (sku, location, cause, kind, before_on_hand, \
                     after_on_hand, before_reserved, after_reserved) \
                     VALUES ($1, 'wh', $2, $3, $4, $5, $6, $7)",
                )
                .await?,
        })
    }
}

/// One event as one transaction; true when it changed the stock.
async fn transaction(
    client: &mut tokio_postgres::Client,
    statements: &Statements,
    kind: Kind,
    event: &Event,
) -> anyhow::Result<bool> {
    let tx = client.transaction().await?;
    let fresh = tx.execute(&statements.dedup, &[&event.id]).await?;
    if fresh == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    let row = tx.query_one(&statements.lock, &[&event.sku]).await?;
    let (on_hand, reserved): (i64, i64) = (row.get(0), row.get(1));
    let (after_on_hand, after_reserved, label) = match kind {
        Kind::Fact => (on_hand + event.quantity, reserved, "received"),
        Kind::Reserve if on_hand - reserved >= event.quantity => {
            (on_hand, reserved + event.quantity, "reserved")
        }
        Kind::Reserve => {
            // Rejected: the dedup row still records the decision.
            tx.commit().await?;
            return Ok(false);
        }
    };
    tx.execute(
        &statements.update,
        &[&event.sku, &after_on_hand, &after_reserved],
    )
    .await?;
    tx.execute(
        &statements.ledger,
        &[
            &event.sku,
            &event.id,
            &label,
            &on_hand,
            &after_on_hand,
            &reserved,
            &after_reserved,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// `(on_hand, reserved)` of `sku` after a run, to check that nothing was oversold.
pub(crate) async fn levels(pg: &Postgres, sku: &str) -> anyhow::Result<(i64, i64)> {
    let client = pg.connect().await?;
    let row = client
        .query_one(
            "SELECT on_hand, reserved FROM stock WHERE sku = $1 AND location = 'wh'",
            &[&sku],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
