//! Test harness: real `nats-server` (JetStream) and `redis-server` on free loopback ports, each
//! with its own data directory, stopped and removed on `Drop`; plus helpers that wait on
//! conditions with a deadline instead of sleeping.
//!
//! Servers start plain ([`NatsServer::start`], [`RedisServer::start`]) or with a configuration:
//! [`NatsServer::start_with`] takes a nats-server config snippet (auth, TLS, limits),
//! [`RedisServer::start_with`] ACL users, a default password and TLS. [`TestPki`] makes a private
//! CA with server and client certificates at test time (`openssl` CLI); none is committed.
//! [`NatsServer::reserved`] and [`RedisServer::reserved`] pick a port and a directory without
//! starting the server, for processes started before their servers (`resume` starts it).

pub mod cluster;
pub mod events;
pub mod platforms;

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

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct loopback ports nothing listens on now, never handed out before in this process:
/// each is held until all are picked, so the system cannot return one twice, and a port given to
/// one test is not given to another that runs beside it before the first test's server has bound
/// it (which made a cluster node answer on another test's Redis).
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::{collections::HashSet, sync::Mutex};
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    // A poisoned lock only means another test panicked while picking: the set is intact.
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let mut ports = Vec::with_capacity(n);
    // Every listener, fresh or not, stays bound until the end of the call, so the system moves on.
    let mut held = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("bound address").port();
        if given.insert(port) {
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// A unique id (e.g. a fresh `Nats-Msg-Id`) without another dependency: time, process, counter.
pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{nanos:x}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A worker running inside the test process, stopped by [`RunningWorker::shutdown`].
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorker {
    /// Spawns `run(shutdown)`, where `shutdown` resolves when [`Self::shutdown`] is called: the
    /// signature of every worker's `run(settings, shutdown)`.
    pub fn spawn<Fut>(
        run: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(run(Box::pin(async move { signal.cancelled().await })));
        Self { stop, task }
    }

    /// Graceful shutdown; waits for the worker to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("worker stops in time")
            .expect("worker task")
            .expect("worker ends cleanly");
    }
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
        // Poll interval of a wait bounded by `deadline`.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn wait_for_port(addr: SocketAddr, child: &mut Child, name: &str, log: Option<&Path>) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = log
                .and_then(|path| std::fs::read_to_string(path).ok())
                .unwrap_or_default();
            panic!("{name} exited during start-up: {status}\n{log}");
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{name} did not listen on {addr}"
        );
        // Poll interval of a wait bounded by DEADLINE.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `nats-server -js` of its own.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// The configuration file, when started with [`Self::start_with`].
    config: Option<PathBuf>,
    tls: bool,
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and its own store directory.
    pub fn start() -> Self {
        let mut server = Self::reserved();
        server.spawn();
        server
    }

    /// A server that does not run yet: its port and store directory are chosen, so a process
    /// can be pointed at it before [`Self::resume`] starts it.
    pub fn reserved() -> Self {
        Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            config: None,
            tls: false,
        }
    }

    /// Starts a stopped (or [`Self::reserved`]) server on its port and store.
    pub fn resume(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Starts a server like [`Self::start`] whose configuration file also holds `snippet`
    /// (nats-server config syntax: an `authorization { ... }` block, a `tls { ... }` block,
    /// `max_payload`, ...). A snippet with a `tls` block makes [`Self::url`] a `tls://` URL.
    pub fn start_with(snippet: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: {store:?} }}\n{snippet}\n"
            ),
        )
        .expect("write nats.conf");
        let mut server = Self {
            child: None,
            port,
            dir,
            config: Some(config),
            tls: snippet.contains("tls {") || snippet.contains("tls:"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("js");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let mut command = Command::new(server_binary("nats-server"));
        match &self.config {
            Some(config) => {
                command.arg("-c").arg(config);
            }
            None => {
                command
                    .args([
                        "-js",
                        "-a",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-sd",
                    ])
                    .arg(&store);
            }
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        wait_for_port(
            self.addr(),
            &mut child,
            "nats-server",
            Some(&self.dir.path().join("nats.log")),
        );
        self.child = Some(child);
    }

    /// `nats://127.0.0.1:<port>` (`tls://` when the server requires TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
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

/// A private certificate authority made for one test with the `openssl` CLI: a CA, a server
/// certificate for `127.0.0.1`/`localhost` and a client certificate, all in a temporary
/// directory removed on `Drop`. Nothing is ever committed.
#[derive(Debug)]
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates the CA and both certificates (EC P-256, valid for two days).
    pub fn generate() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        pki.openssl(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
             -out ca.pem -days 2 -subj /CN=stockflow-test-CA \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
        );
        std::fs::write(
            pki.dir.path().join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write leaf.ext");
        for name in ["server", "client"] {
            pki.openssl(&format!(
                "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key \
                 -out {name}.csr -subj /CN=stockflow-{name}"
            ));
            pki.openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 2 -extfile leaf.ext"
            ));
        }
        pki
    }

    /// Runs `openssl` with whitespace-separated `args` in the PKI's directory.
    fn openssl(&self, args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let output = Command::new("openssl")
            .args(&args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!("openssl not runnable ({e}): install it (`apt-get install openssl`)")
            });
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    /// The server certificate (PEM).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    /// The server key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    /// The client certificate (PEM), for mutual TLS.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    /// The client key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// A nats-server `tls { ... }` block serving this PKI's server certificate; with `verify`
    /// the server also requires a client certificate signed by the CA.
    pub fn nats_tls_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n}}\n",
            self.server_cert(),
            self.server_key(),
            self.ca()
        )
    }
}

/// How to start a [`RedisServer`] that is not the default.
#[derive(Debug, Default)]
pub struct RedisOptions<'a> {
    /// Extra `redis.conf` lines, e.g. `user app on >secret ~sf:* +@all`.
    pub conf: String,
    /// Serve TLS only (no plaintext port), with this PKI's server certificate; URLs become
    /// `rediss://`. Client certificates are optional unless `conf` says `tls-auth-clients yes`.
    pub tls: Option<&'a TestPki>,
    /// Password of the `default` user (`requirepass`); [`RedisServer::connection`] uses it.
    pub default_password: Option<String>,
}

/// A `redis-server` of its own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// `redis.conf` lines beyond the defaults.
    conf: String,
    /// CA the server certificate is signed by, when serving TLS.
    tls_ca: Option<PathBuf>,
    default_password: Option<String>,
}

impl RedisServer {
    /// Starts a server on a free port with its own directory (AOF on, fsync every second).
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server like [`Self::start`] with ACL users, a default password or TLS.
    pub fn start_with(options: RedisOptions<'_>) -> Self {
        let mut server = Self::reserved_with(options);
        server.spawn();
        server
    }

    /// A server that does not run yet: its port and directory are chosen, so a process can be
    /// pointed at it before [`Self::resume`] starts it.
    pub fn reserved() -> Self {
        Self::reserved_with(RedisOptions::default())
    }

    fn reserved_with(options: RedisOptions<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut conf = String::new();
        if let Some(pki) = options.tls {
            conf.push_str(&format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients optional\n",
                pki.server_cert().display(),
                pki.server_key().display(),
                pki.ca().display()
            ));
        }
        if let Some(password) = &options.default_password {
            conf.push_str(&format!("requirepass {password}\n"));
        }
        conf.push_str(&options.conf);
        Self {
            child: None,
            port,
            dir,
            conf,
            tls_ca: options.tls.map(TestPki::ca),
            default_password: options.default_password,
        }
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("redis.conf");
        std::fs::write(&config, &self.conf).expect("write redis.conf");
        let mut command = Command::new(server_binary("redis-server"));
        command.arg(&config);
        if self.tls_ca.is_none() {
            command.args(["--port", &self.port.to_string()]);
        }
        let mut child = command
            .args(["--bind", "127.0.0.1"])
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
            None,
        );
        self.child = Some(child);
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` when serving TLS), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
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
        terminate(&mut self.child);
    }

    /// Starts a stopped server again on the same port and directory.
    pub fn resume(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Settings that reach this server as its `default` user (TLS and password applied).
    pub fn admin_settings(&self) -> stockflow_shared::connect::RedisSettings {
        let mut settings = stockflow_shared::connect::RedisSettings::local(&self.url(), "sf");
        settings.password = self
            .default_password
            .as_deref()
            .map(stockflow_shared::settings::Secret::new);
        settings.tls.ca_file = self.tls_ca.clone();
        settings
    }

    /// A plain connection for assertions, as the `default` user. Its timeouts are generous: the
    /// client's defaults (about a second) are shorter than a connect can take on 2 busy cores.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let patient = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(20)))
            .set_response_timeout(Some(Duration::from_secs(20)));
        self.admin_settings()
            .client()
            .expect("redis client")
            .get_multiplexed_async_connection_with_config(&patient)
            .await
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET path` over HTTP/1.1 on `addr`: the status and the body, or `None` when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
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

/// Stops a server with SIGTERM (SIGKILL when that cannot be sent) and reaps it, if it runs: a
/// redis-server writes and fsyncs its AOF on the way out.
pub fn terminate(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
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

/// The channel book a stock or order handler driven directly needs, on a server that may have
/// no topology yet: the `CHANNELS` bucket is created as `setup` declares it.
pub async fn channel_book(js: &jetstream::Context) -> stockflow_shared::channels::ChannelBook {
    if js
        .get_key_value(stockflow_shared::topology::CHANNELS)
        .await
        .is_err()
    {
        let config = stockflow_shared::topology::buckets(&Default::default())
            .into_iter()
            .find(|b| b.bucket == stockflow_shared::topology::CHANNELS)
            .expect("CHANNELS is declared");
        js.create_key_value(config).await.expect("CHANNELS bucket");
    }
    stockflow_shared::channels::ChannelBook::start(js)
        .await
        .expect("channel book")
}
