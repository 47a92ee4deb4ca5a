//! What an operator meets first: `--help` and `--version` of every binary (answered without
//! configuration or a connection), and logs fit for files and log collectors.

use std::{
    io::ErrorKind,
    net::TcpListener,
    process::{Command, Stdio},
};

use stockflow_tests::{eventually, workspace_binary, DEADLINE};

use crate::world::World;

/// The binaries and a variable each one's help must list besides the connection ones.
const BINARIES: &[(&str, &str)] = &[
    ("stock-worker", "STOCKFLOW_DEDUP_TTL_SECONDS"),
    ("order-worker", "STOCKFLOW_ORDER_RETENTION_SECONDS"),
    ("notify-worker", "STOCKFLOW_WEBHOOKS_FILE"),
    ("gateway", "STOCKFLOW_GATEWAY_TOKENS"),
    ("stockctl", "STOCKFLOW_KEY_PREFIX"),
    ("stockflow-demo", "STOCKFLOW_KEY_PREFIX"),
];

/// Runs `binary args` with no configuration but servers that would count a connection.
fn run_unconfigured(
    binary: &str,
    args: &[&str],
    nats: &TcpListener,
    redis: &TcpListener,
) -> (i32, String, String) {
    let port = |l: &TcpListener| l.local_addr().expect("bound").port();
    let output = Command::new(workspace_binary(binary))
        .args(args)
        .env_clear()
        .env(
            "STOCKFLOW_NATS_URL",
            format!("nats://127.0.0.1:{}", port(nats)),
        )
        .env(
            "STOCKFLOW_REDIS_URL",
            format!("redis://127.0.0.1:{}", port(redis)),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn no_connection(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what} connected: {other:?}"),
    }
}

#[test]
fn every_binary_answers_help_and_version_without_config_or_connection() {
    let nats = TcpListener::bind("127.0.0.1:0").expect("bind");
    let redis = TcpListener::bind("127.0.0.1:0").expect("bind");
    nats.set_nonblocking(true).expect("nonblocking");
    redis.set_nonblocking(true).expect("nonblocking");
    let version = env!("CARGO_PKG_VERSION");
    for (binary, own_variable) in BINARIES {
        let (code, stdout, stderr) = run_unconfigured(binary, &["--version"], &nats, &redis);
        assert_eq!(code, 0, "{binary} --version: {stderr}");
        assert_eq!(
            stdout.trim_end(),
            format!("{binary} {version}"),
            "{binary} --version"
        );

        let (code, help, stderr) = run_unconfigured(binary, &["--help"], &nats, &redis);
        assert_eq!(code, 0, "{binary} --help: {stderr}");
        assert!(help.contains(binary), "{binary} --help names it:\n{help}");
        for variable in ["STOCKFLOW_NATS_URL", own_variable] {
            assert!(
                help.contains(variable),
                "{binary} --help lists {variable}:\n{help}"
            );
        }
        // With its default, not the value this process was given.
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with("STOCKFLOW_NATS_URL")
                    && l.ends_with("nats://127.0.0.1:4222")),
            "{binary} --help shows the default URL:\n{help}"
        );
        no_connection(&nats, binary);
        no_connection(&redis, binary);
    }
    for worker in ["stock-worker", "order-worker", "notify-worker"] {
        let (_, help, _) = run_unconfigured(worker, &["--help"], &nats, &redis);
        assert!(
            help.contains("setup --update"),
            "{worker} --help lists its commands:\n{help}"
        );
        let (code, _, stderr) = run_unconfigured(worker, &["setup", "--help"], &nats, &redis);
        assert_eq!(code, 0, "{worker} setup --help: {stderr}");
    }
    // A worker's own variables with their defaults, next to the shared ones.
    let (_, help, _) = run_unconfigured("notify-worker", &["--help"], &nats, &redis);
    assert!(
        help.lines().any(|l| {
            l.trim_start()
                .starts_with("STOCKFLOW_WEBHOOK_RETRY_HORIZON_SECONDS")
                && l.ends_with(" 86400")
        }),
        "{help}"
    );
    let (_, help, _) = run_unconfigured("stockflow-demo", &["--help"], &nats, &redis);
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("STOCKFLOW_LOG ") && l.ends_with(" error")),
        "the demo's own log default:\n{help}"
    );
    let (_, help, _) = run_unconfigured("stockctl", &["--help"], &nats, &redis);
    assert!(
        help.contains("tail") && help.contains("completion"),
        "{help}"
    );
    for (shell, marker) in [
        ("bash", "_stockctl()"),
        ("zsh", "#compdef stockctl"),
        ("fish", "complete -c stockctl"),
    ] {
        let (code, script, stderr) =
            run_unconfigured("stockctl", &["completion", shell], &nats, &redis);
        assert_eq!(code, 0, "completion {shell}: {stderr}");
        assert!(
            script.contains(marker) && script.contains("reconcile"),
            "completion {shell}:\n{script}"
        );
    }
    no_connection(&nats, "help of subcommands and completion");
    no_connection(&redis, "help of subcommands and completion");
}

#[test]
fn a_fatal_start_up_error_is_a_json_line_in_json_mode() {
    let output = Command::new(workspace_binary("stock-worker"))
        .env_clear()
        .env("STOCKFLOW_LOG_FORMAT", "json")
        .env("STOCKFLOW_MAX_IN_FLIGHT", "lots")
        .output()
        .expect("run stock-worker");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "ERROR", "{line}");
    let error = line["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("STOCKFLOW_MAX_IN_FLIGHT"), "{line}");
}

#[test]
fn a_fatal_stockctl_error_is_a_json_line_in_json_mode() {
    for (args, code) in [
        // The configuration fails: before logging is set up (a refused flag value: exit 2).
        (&["--nats-url", "not a url", "dlq", "list"][..], 2),
        // A server does not answer: after.
        (&["--redis-url", "redis://127.0.0.1:1", "stock", "A"], 1),
    ] {
        let output = Command::new(workspace_binary("stockctl"))
            .args(args)
            .env_clear()
            .env("STOCKFLOW_LOG_FORMAT", "json")
            .output()
            .expect("run stockctl");
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        for line in stderr.lines() {
            let _: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: not a JSON line ({e}): {line}"));
        }
        let line: serde_json::Value = serde_json::from_str(last).expect("a JSON line");
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(line["fields"]["message"], "fatal", "{line}");
        let error = line["fields"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(args[0]) || error.contains("Redis"), "{line}");
    }
}

#[tokio::test]
async fn logs_in_a_file_are_plain_and_name_the_server_once() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("stock-worker.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = stockflow_tests::KillOnDrop(
        world
            .worker_command("stock-worker", &[("STOCKFLOW_LOG", "info")])
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn stock-worker"),
    );
    let text = eventually("the worker logs its consumer", DEADLINE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("nats connected").then_some(text) }
    })
    .await;
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escape codes in a file:\n{text}"
    );
    let address = format!("127.0.0.1:{}", world.nats.port());
    let connected: Vec<&str> = text.lines().filter(|l| l.contains("connected")).collect();
    assert_eq!(connected.len(), 1, "one line per connection event:\n{text}");
    assert!(connected[0].contains(&address), "{}", connected[0]);
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.contains("starting")
            && first.contains(env!("CARGO_PKG_VERSION"))
            && first.contains(&address),
        "the first line names the version and the server: {first}"
    );
    child.kill();
}
