//! Test harness: real `nats-server` (JetStream) and `redis-server` on free loopback ports, each
//! with its own data directory, stopped and removed on `Drop`; plus helpers that wait on
//! conditions with a deadline instead of sleeping.

pub mod cluster;

use std::{
    future::Future,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use futures::StreamExt as _;

/// How long a condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Finds a server binary: `$STOCKFLOW_<NAME>_BIN`, the project's `.dev/bin`, then `PATH`.
/// Panics with install instructions when it is nowhere.
pub fn server_binary(name: &str) -> PathBuf {
    let var = format!("STOCKFLOW_{}_BIN", name.replace('-', "_").to_uppercase());
    if let Ok(path) = std::env::var(&var) {
        return PathBuf::from(path);
    }
    let local = workspace_root().join(".dev/bin").join(name);
    if local.is_file() {
        return local;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    }) {
        return found;
    }
    panic!(
        "{name} not found: run the tests with `./dev test` (it installs nats-server and \
         redis-server into .dev/bin), or run `python3 scripts/bootstrap.py`, or set {var}"
    );
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A binary of this workspace, built next to the test executable (`cargo build --bins`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which \
         `./dev test` does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// `kill -9`, and reap it.
    pub fn kill(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` returns `Some`, polling every 10 ms, failing after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn wait_for_port(addr: SocketAddr, child: &mut Child, name: &str) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited during start-up: {status}");
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{name} did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `nats-server -js` of its own.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and its own store directory.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("js");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let mut child = Command::new(server_binary("nats-server"))
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        wait_for_port(self.addr(), &mut child, "nats-server");
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `redis-server` of its own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port with its own directory (AOF on, fsync every second).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(server_binary("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            &mut child,
            "redis-server",
        );
        self.child = Some(child);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL); [`Self::resume`] starts it again from its AOF.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Stops the server with SIGTERM: it flushes its AOF first, so nothing acknowledged is lost.
    pub fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            let terminated = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !terminated {
                child.kill().ok();
            }
            child.wait().ok();
        }
    }

    /// Starts a stopped server again on the same port and directory.
    pub fn resume(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// A plain connection for assertions.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads every message of `stream` whose subject matches `filter` (e.g. `stock.changes.>`), in
/// stream order.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<jetstream::Message> {
    stockflow_cli::read_after(js, stream, filter, 0)
        .await
        .unwrap_or_else(|e| panic!("reading {stream} {filter}: {e:#}"))
}

/// Number of messages in `stream` matching `filter`.
pub async fn count(js: &jetstream::Context, stream: &str, filter: &str) -> u64 {
    let stream = js.get_stream(stream).await.expect("stream exists");
    let info = stream
        .info_with_subjects(filter)
        .await
        .expect("stream info");
    let mut total = 0;
    let mut subjects = info;
    while let Some(Ok((_, n))) = subjects.next().await {
        total += n as u64;
    }
    total
}

/// Waits until `stream` holds at least `n` messages matching `filter`; returns the count.
pub async fn wait_for_count(js: &jetstream::Context, stream: &str, filter: &str, n: u64) -> u64 {
    eventually(&format!("{n} messages on {filter}"), DEADLINE, || async {
        let have = count(js, stream, filter).await;
        (have >= n).then_some(have)
    })
    .await
}
