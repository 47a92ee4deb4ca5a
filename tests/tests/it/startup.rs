//! Every binary waits for its servers: started before NATS and Redis it is alive, reports
//! not-ready naming what it waits for, logs that once (not per try) and serves once they are
//! up; a server restarted right after a worker's start does not end it; a start-up deadline
//! ends the wait with an error naming the setting; a configuration error still ends it at once.
//! The binaries run as child processes, as an orchestrator runs them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{AlertKind, StockAlert},
};
use stockflow_tests::{
    eventually, free_ports, http_get, workspace_binary, KillOnDrop, NatsServer, RedisServer,
    DEADLINE,
};

use crate::world::*;

/// Accepts connections on a port and closes each at once, counting them: a server that is
/// there but never answers, so a test sees how often a process tried.
struct Silent {
    tries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the reserved port");
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        });
        Self { tries, task }
    }

    /// Waits until the process tried `n` times.
    async fn wait_tries(&self, n: usize, what: &str) {
        eventually(&format!("{n} tries to reach {what}"), DEADLINE, || {
            let tries = self.tries.load(Ordering::Relaxed);
            async move { (tries >= n).then_some(()) }
        })
        .await;
    }

    /// Stops listening (the port is free again once the task is gone).
    async fn close(self) {
        self.task.abort();
        let _aborted = self.task.await;
    }
}

/// A binary under test: its process, where it serves `/readyz`, and its log file.
struct Process {
    child: KillOnDrop,
    metrics: SocketAddr,
    log: PathBuf,
    http_port: u16,
    started: Instant,
}

impl Process {
    /// Starts `binary` against `nats_url` and `redis_url` with `extra` variables, logging at info.
    fn spawn(
        binary: &str,
        nats_url: &str,
        redis_url: &str,
        extra: &[(&str, &str)],
        dir: &Path,
    ) -> Self {
        let [metrics_port, http_port] = free_ports(2)[..] else {
            unreachable!("two ports asked for")
        };
        let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let log = dir.join(format!("{binary}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let webhooks = dir.join("webhooks.json");
        std::fs::write(&webhooks, r#"{"subscriptions": []}"#).expect("write subscriptions");
        let mut command = Command::new(workspace_binary(binary));
        command
            .env("STOCKFLOW_NATS_URL", nats_url)
            .env("STOCKFLOW_REDIS_URL", redis_url)
            .env("STOCKFLOW_METRICS_ADDR", metrics.to_string())
            .env("STOCKFLOW_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("STOCKFLOW_GATEWAY_AUTH", "none")
            .env("STOCKFLOW_WEBHOOKS_FILE", &webhooks)
            .env("STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS", "10")
            .env("STOCKFLOW_LOG", "info")
            .envs(extra.iter().copied())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let started = Instant::now();
        Self {
            child: KillOnDrop(command.spawn().expect("spawn the binary")),
            metrics,
            log,
            http_port,
            started,
        }
    }

    /// The gateway's API (`STOCKFLOW_HTTP_ADDR`).
    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `text`.
    fn logged(&self, text: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(text)).count()
    }

    async fn wait_logged(&self, text: &str) {
        eventually(&format!("a log line with {text:?}"), DEADLINE, || {
            let found = self.logged(text) > 0;
            async move { found.then_some(()) }
        })
        .await;
    }

    /// `/readyz` answers `status`; returns its body.
    async fn wait_readyz(&self, status: u16) -> String {
        eventually(&format!("/readyz answers {status}"), DEADLINE, || async {
            http_get(self.metrics, "/readyz")
                .await
                .filter(|(s, _)| *s == status)
                .map(|(_, body)| body)
        })
        .await
    }

    fn assert_running(&mut self) {
        let status = self.child.0.try_wait().expect("process status");
        assert!(
            status.is_none(),
            "the process ended ({status:?}): {}",
            self.log_text()
        );
    }

    /// Waits for the process to end; returns whether it succeeded.
    async fn wait_exit(&mut self) -> bool {
        let child = &mut self.child;
        eventually("the process exits", DEADLINE, || {
            let status = child.0.try_wait().ok().flatten();
            async move { status.map(|s| s.success()) }
        })
        .await
    }
}

/// `binary` started before NATS and Redis: alive and not ready while it tries, with one log
/// line per server it waits for; then it does its work.
async fn waits_for_its_servers(binary: &str) {
    let uses_redis = binary != "notify-worker";
    let mut nats = NatsServer::reserved();
    let mut redis = RedisServer::reserved();
    let dir = tempfile::tempdir().expect("temp dir");
    let nats_silent = Silent::on(nats.port()).await;
    let mut process = Process::spawn(binary, &nats.url(), &redis.url(), &[], dir.path());

    let body = process.wait_readyz(503).await;
    assert!(
        body.contains("nats"),
        "{binary}: /readyz names nats: {body}"
    );
    let (status, _) = http_get(process.metrics, "/healthz")
        .await
        .expect("/healthz answers");
    assert_eq!(status, 200, "{binary} is alive while it waits");
    nats_silent.wait_tries(3, "nats").await;
    process.assert_running();
    nats_silent.close().await;

    if uses_redis {
        // NATS first, Redis later: the wait moves on to Redis.
        let redis_silent = Silent::on(redis.port()).await;
        nats.resume();
        process.wait_logged("waiting for redis").await;
        redis_silent.wait_tries(3, "redis").await;
        let body = process.wait_readyz(503).await;
        assert!(
            body.contains("redis"),
            "{binary}: /readyz names redis: {body}"
        );
        assert!(
            !body.contains("nats"),
            "{binary}: nats answered, /readyz no longer names it: {body}"
        );
        process.assert_running();
        redis_silent.close().await;
        redis.resume();
    } else {
        nats.resume();
    }
    process.wait_readyz(200).await;
    assert_eq!(
        process.logged("waiting for nats"),
        1,
        "{binary} logs its wait once, not per try: {}",
        process.log_text()
    );
    if uses_redis {
        assert_eq!(
            process.logged("waiting for redis"),
            1,
            "{binary}: {}",
            process.log_text()
        );
    }

    // Now it serves.
    let mut world = World::start_on(nats, redis, &[]).await;
    match binary {
        "stock-worker" => {
            world
                .publish(&event("w1", "LATE-SKU", "wh", received(4)))
                .await;
            world.wait_on_hand("LATE-SKU", "wh", 4).await;
        }
        "order-worker" => {
            world
                .publish_order(&order(
                    "o1",
                    "late-order",
                    placed(&[("1", "NO-STOCK", 1, "")], 0),
                ))
                .await;
            world.wait_orders_idle().await;
            assert_eq!(world.order_results().await.len(), 1, "the order is decided");
        }
        "notify-worker" => {
            let alert = StockAlert {
                kind: AlertKind::LowStock.into(),
                sku: "LATE-SKU".into(),
                location: "wh".into(),
                cause_event_id: "c1".into(),
                levels: Some(levels(3, 0, 0)),
                threshold: 5,
                raised_at_ms: 1_700_000_000_000,
                ..Default::default()
            };
            world
                .publish_raw(
                    &subjects::alert("low_stock", &alert.sku),
                    alert.encode_to_vec(),
                )
                .await;
            world.wait_idle(subjects::ALERTS, "notify-worker").await;
        }
        "gateway" => {
            let response = reqwest::Client::new()
                .post(format!("{}/v1/stock/events", process.api()))
                .header("Idempotency-Key", "late-1")
                .json(&serde_json::json!({
                    "type": "received", "sku": "LATE-SKU", "location": "wh",
                    "quantity": 3, "source": "test"
                }))
                .send()
                .await
                .expect("the API answers");
            assert_eq!(response.status().as_u16(), 202, "the fact is accepted");
            stockflow_tests::wait_for_count(&world.js, subjects::STOCK_EVENTS, "stock.events.>", 1)
                .await;
            // NATS gone after the start: writes 503, not ready, reads from Redis still answer.
            world.nats.stop();
            let http = reqwest::Client::new();
            let write = http
                .post(format!("{}/v1/stock/events", process.api()))
                .header("Idempotency-Key", "late-2")
                .json(&serde_json::json!({
                    "type": "received", "sku": "LATE-SKU", "location": "wh",
                    "quantity": 1, "source": "test"
                }))
                .send()
                .await
                .expect("the API answers");
            assert_eq!(write.status().as_u16(), 503, "a write without NATS");
            let body = process.wait_readyz(503).await;
            assert!(body.contains("nats"), "/readyz names nats: {body}");
            let read = http
                .get(format!("{}/v1/stock/NEVER-STOCKED", process.api()))
                .send()
                .await
                .expect("the API answers");
            assert_eq!(
                read.status().as_u16(),
                404,
                "a read needs only Redis: it answers (here: nothing recorded), not 503"
            );
        }
        other => unreachable!("no such binary {other}"),
    }
    process.assert_running();
}

#[tokio::test]
async fn a_stock_worker_started_before_its_servers_waits_then_applies_facts() {
    waits_for_its_servers("stock-worker").await;
}

#[tokio::test]
async fn an_order_worker_started_before_its_servers_waits_then_decides_orders() {
    waits_for_its_servers("order-worker").await;
}

#[tokio::test]
async fn a_notify_worker_started_before_nats_waits_then_consumes_alerts() {
    waits_for_its_servers("notify-worker").await;
}

#[tokio::test]
async fn a_gateway_started_before_its_servers_waits_then_accepts_facts() {
    waits_for_its_servers("gateway").await;
}

/// Which server is restarted right after the worker's start.
#[derive(Debug, Clone, Copy)]
enum Restarted {
    Nats,
    Redis,
}

/// A stock worker whose server restarts as soon as it has connected keeps running and applies
/// facts afterwards.
async fn keeps_going_after_a_restart(server: Restarted) {
    let mut world = World::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    if let Restarted::Redis = server {
        // Stopped as the worker starts (before it, so the worker cannot have connected yet).
        world.redis.stop();
    }
    let mut process = Process::spawn(
        "stock-worker",
        &world.nats.url(),
        &world.redis.url(),
        &[],
        dir.path(),
    );
    match server {
        Restarted::Nats => {
            // Right after its start, while it connects to NATS (a connection cut in its
            // handshake used to end the process) ...
            world.nats.restart();
            // ... and once it has connected, while it checks the topology and connects to Redis.
            process.wait_logged("nats connected").await;
            world.nats.restart();
        }
        Restarted::Redis => {
            // Back once the worker has tried it (a single try used to end the process).
            process.wait_logged("waiting for redis").await;
            process.assert_running();
            world.redis.resume();
        }
    }
    process.wait_readyz(200).await;
    let fact = event("r1", "RESTART-SKU", "wh", received(6));
    eventually("the fact is stored", DEADLINE, || async {
        world.try_publish(&fact).await.then_some(())
    })
    .await;
    world.wait_on_hand("RESTART-SKU", "wh", 6).await;
    process.assert_running();
}

#[tokio::test]
async fn a_worker_keeps_going_when_nats_restarts_right_after_its_start() {
    keeps_going_after_a_restart(Restarted::Nats).await;
}

#[tokio::test]
async fn a_worker_keeps_going_when_redis_restarts_right_after_its_start() {
    keeps_going_after_a_restart(Restarted::Redis).await;
}

const BINARIES: [&str; 4] = ["stock-worker", "order-worker", "notify-worker", "gateway"];

#[tokio::test]
async fn a_start_up_deadline_ends_the_wait_with_an_error_naming_the_setting() {
    // Nothing will ever listen there.
    let nats = NatsServer::reserved();
    let redis = RedisServer::reserved();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut processes: Vec<(&str, Process)> = BINARIES
        .iter()
        .map(|binary| {
            let own = dir.path().join(binary);
            std::fs::create_dir_all(&own).expect("dir");
            let process = Process::spawn(
                binary,
                &nats.url(),
                &redis.url(),
                &[("STOCKFLOW_STARTUP_TIMEOUT_SECONDS", "2")],
                &own,
            );
            (*binary, process)
        })
        .collect();
    for (binary, process) in &mut processes {
        assert!(!process.wait_exit().await, "{binary} exits with an error");
        assert!(
            process.started.elapsed() >= Duration::from_secs(2),
            "{binary} waited for the deadline"
        );
        let text = process.log_text();
        assert!(
            text.contains("STOCKFLOW_STARTUP_TIMEOUT_SECONDS"),
            "{binary} names the setting: {text}"
        );
        assert!(
            text.contains(&format!("nats at {}", nats.url())),
            "{binary} names the server: {text}"
        );
        // The cause, once per line (the client's error holds its source, which a `{:#}` chain
        // used to print again); the real one, not the try the deadline cut short.
        assert!(text.contains("Connection refused"), "{binary}: {text}");
        for line in text.lines() {
            assert!(
                line.matches("Connection refused").count() <= 1,
                "{binary} prints the cause once: {line}"
            );
        }
        assert!(
            !text.contains("credentials:") && !text.contains("no credentials)"),
            "{binary} mentions credentials only when some are set: {text}"
        );
    }
}

/// The counters whose label sets are known are there at 0 before anything happened, and every
/// binary that serves `/metrics` says which build it is.
#[tokio::test]
async fn a_fresh_binary_exports_its_counters_at_zero_and_its_build() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let build = format!(
        "stockflow_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let expected: [(&str, &[&str]); 4] = [
        (
            "stock-worker",
            &[
                "stockflow_alerts_total{kind=\"low_stock\"} 0",
                "stockflow_alerts_total{kind=\"negative_stock\"} 0",
                "stockflow_transient_failures_total{worker=\"stock-worker\",kind=\"redis\"} 0",
                "stockflow_handler_panics_total{worker=\"stock-worker\"} 0",
                "stockflow_derived_published_total{kind=\"stock_changed\"} 0",
                "stockflow_events_total{worker=\"stock-worker\",type=\"sold\",outcome=\"applied\"} 0",
                "stockflow_events_total{worker=\"stock-worker\",type=\"channel_set\",outcome=\"dead_lettered\"} 0",
                "stockflow_dead_letters_total{worker=\"stock-worker\",reason=\"decode\"} 0",
                "stockflow_dead_letters_total{worker=\"stock-worker\",reason=\"unknown_channel\"} 0",
                "stockflow_alerts_total{kind=\"channel_oversold\"} 0",
            ],
        ),
        (
            "order-worker",
            &[
                "stockflow_reservations_total{outcome=\"confirmed\"} 0",
                "stockflow_reservations_total{outcome=\"rejected\"} 0",
                "stockflow_reservations_total{outcome=\"released\"} 0",
                "stockflow_holds_expired_total 0",
                "stockflow_transient_failures_total{worker=\"order-worker\",kind=\"not_yet\"} 0",
                "stockflow_events_total{worker=\"order-worker\",type=\"order_placed\",outcome=\"duplicate\"} 0",
                "stockflow_dead_letters_total{worker=\"order-worker\",reason=\"invalid_lines\"} 0",
            ],
        ),
        (
            "notify-worker",
            &[
                "stockflow_transient_failures_total{worker=\"notify-worker\",kind=\"nats\"} 0",
                "stockflow_events_total{worker=\"notify-worker\",type=\"channel_availability\",outcome=\"applied\"} 0",
            ],
        ),
        (
            "gateway",
            &[
                "stockflow_http_requests_total{route=\"/v1/stock/events\",status=\"202\"} 0",
                "stockflow_http_requests_total{route=\"/v1/channels/{channel}/availability/{sku}\",status=\"200\"} 0",
            ],
        ),
    ];
    for (binary, series) in expected {
        let own = dir.path().join(binary);
        std::fs::create_dir_all(&own).expect("dir");
        let mut process = Process::spawn(binary, &nats.url(), &redis.url(), &[], &own);
        process.wait_readyz(200).await;
        // Ready may come before every consume loop registered its counters: wait for them.
        let wanted: Vec<&str> = series.iter().copied().chain([build.as_str()]).collect();
        let what = format!("{binary} exports {wanted:?} before any input");
        eventually(&what, DEADLINE, || async {
            let (status, page) = http_get(process.metrics, "/metrics").await?;
            let lines: Vec<&str> = page.lines().collect();
            (status == 200 && wanted.iter().all(|w| lines.contains(w))).then_some(())
        })
        .await;
        process.assert_running();
    }
}

#[tokio::test]
async fn wrong_credentials_end_the_start_at_once_instead_of_waiting() {
    let nats = NatsServer::start_with("authorization { token: \"right-token-5e1f9a\" }");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut processes: Vec<(&str, Process)> = BINARIES
        .iter()
        .map(|binary| {
            let own = dir.path().join(binary);
            std::fs::create_dir_all(&own).expect("dir");
            let process = Process::spawn(
                binary,
                &nats.url(),
                &redis.url(),
                &[("STOCKFLOW_NATS_TOKEN", "wrong-token-77c2d0")],
                &own,
            );
            (*binary, process)
        })
        .collect();
    for (binary, process) in &mut processes {
        // No deadline is set: only a configuration error ends the start.
        assert!(!process.wait_exit().await, "{binary} refuses to run");
        let text = process.log_text();
        assert!(
            text.contains("STOCKFLOW_NATS_TOKEN"),
            "{binary} names the setting: {text}"
        );
        assert_eq!(
            process.logged("waiting for"),
            0,
            "{binary} does not wait: {text}"
        );
    }
}
