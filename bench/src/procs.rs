//! Child processes under measurement: the worker binaries, their readiness, memory and CPU time.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use stockflow_tests::KillOnDrop;

/// A binary built next to this one (`cargo build --release -p stock-worker -p order-worker`,
/// which `just bench` runs first).
pub(crate) fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running binary")?;
    let path = exe
        .parent()
        .map(|dir| dir.join(name))
        .context("the running binary has no directory")?;
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it first (`cargo build --release -p {name}`, which `just bench` does)",
        path.display()
    );
    Ok(path)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Environment variable: a command (and its options) every worker is started under, for profiling.
pub(crate) const WRAPPER: &str = "STOCKFLOW_BENCH_WORKER_WRAPPER";

/// A worker process with its own `/readyz` listener; stopped with SIGTERM (a graceful shutdown,
/// which also lets a profiler write its output), killed if it does not exit in time.
#[derive(Debug)]
pub(crate) struct WorkerProcess {
    child: KillOnDrop,
    metrics: SocketAddr,
}

impl WorkerProcess {
    /// Starts `command` (a path and its arguments) with the stockflow environment for the given
    /// servers, and waits until `/readyz` answers 200.
    pub(crate) async fn start(
        program: &PathBuf,
        args: &[&str],
        nats_url: &str,
        redis_url: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(program, args, nats_url, redis_url, &[]).await
    }

    /// [`Self::start`] with `extra` environment variables.
    pub(crate) async fn start_with(
        program: &PathBuf,
        args: &[&str],
        nats_url: &str,
        redis_url: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        // A profiler in front of the worker, e.g. `valgrind --tool=callgrind`.
        let wrapper = std::env::var(WRAPPER).unwrap_or_default();
        let mut wrapper = wrapper.split_whitespace();
        let mut command = match wrapper.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(wrapper).arg(program);
                c
            }
            None => Command::new(program),
        };
        let child = command
            .args(args)
            .env("STOCKFLOW_NATS_URL", nats_url)
            .env("STOCKFLOW_REDIS_URL", redis_url)
            .env("STOCKFLOW_METRICS_ADDR", metrics.to_string())
            .env("STOCKFLOW_LOG", "warn")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let mut worker = Self {
            child: KillOnDrop(child),
            metrics,
        };
        worker.wait_ready().await?;
        Ok(worker)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait()? {
                anyhow::bail!("worker exited during start-up: {status}");
            }
            if ready(self.metrics) {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(120),
                "worker not ready on {} after 120 s",
                self.metrics
            );
            // Poll interval of a wait bounded above.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn memory(&self) -> Memory {
        Memory::of(self.pid())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let terminated = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let started = Instant::now();
        while terminated && started.elapsed() < Duration::from_secs(60) {
            if !matches!(self.child.0.try_wait(), Ok(None)) {
                return;
            }
            // Poll interval of a wait bounded above; Drop cannot await.
            std::thread::sleep(Duration::from_millis(20));
        }
        // KillOnDrop sends SIGKILL next.
    }
}

/// `GET /readyz` answers 200.
fn ready(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok()
        && (head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}

/// Resident memory from `/proc/<pid>/status`, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Memory {
    /// `VmRSS`: resident now.
    pub(crate) rss_mib: f64,
    /// `VmHWM`: the peak resident size so far.
    pub(crate) peak_mib: f64,
}

impl Memory {
    pub(crate) fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<f64>().ok())
                .map_or(f64::NAN, |kib| kib / 1024.0)
        };
        Self {
            rss_mib: field("VmRSS:"),
            peak_mib: field("VmHWM:"),
        }
    }
}

/// User + system CPU seconds a process has used (`/proc/<pid>/stat`, clock ticks of 10 ms).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Pid of the running `name` whose command line holds `port` (the harness does not expose its
/// children's pids; the port is unique to this run).
pub(crate) fn pid_of(name: &str, port: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let program = args.first()?;
            let is_name = program.ends_with(name.as_bytes());
            let has_port = args.contains(&port.as_bytes());
            (is_name && has_port).then_some(pid)
        })
}

/// CPU seconds of a set of processes between two instants.
#[derive(Debug, Clone)]
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<f64>,
}

impl CpuMeter {
    pub(crate) fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| cpu_seconds(*p)).collect(),
        }
    }

    /// Adds a process counted from now.
    pub(crate) fn include_from_now(&mut self, pid: u32) {
        self.pids.push(pid);
        self.start.push(cpu_seconds(pid));
    }

    /// Adds a process counted over its whole life (one started after the meter).
    pub(crate) fn include_whole_life(&mut self, pid: u32) {
        self.pids.push(pid);
        self.start.push(0.0);
    }

    /// CPU seconds each process used since `start`.
    pub(crate) fn used(&self) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(pid, start)| cpu_seconds(*pid) - start)
            .collect()
    }
}
