//! `stockflow-demo`, the real binary, against this test's servers: it finishes, its checkouts
//! through the gateway are decided (201 and 409), and every alert and order result of the day
//! reaches its webhook receiver with a verified signature.

use std::time::Duration;

use stockflow_tests::{workspace_binary, NatsServer, RedisServer};

/// The figures of the demo's webhook summary line:
/// `Webhooks: 48 expected, 48 delivered, 48 signatures verified, 0 repeated …`.
fn webhook_figures(stdout: &str) -> (usize, usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Webhooks: "))
        .unwrap_or_else(|| panic!("no webhook summary in:\n{stdout}"));
    let figure = |label: &str| {
        line.split(", ")
            .find_map(|part| {
                part.trim_start_matches("Webhooks: ")
                    .strip_suffix(label)
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no {label:?} figure in {line:?}"))
    };
    (
        figure(" expected"),
        figure(" delivered"),
        figure(" signatures verified"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_every_alert_and_order_result_as_a_signed_webhook() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let run = tokio::process::Command::new(workspace_binary("stockflow-demo"))
        .env("STOCKFLOW_NATS_URL", nats.url())
        .env("STOCKFLOW_REDIS_URL", redis.url())
        .env("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("STOCKFLOW_KEY_PREFIX")
        .env_remove("STOCKFLOW_GATEWAY_TOKENS")
        .env_remove("STOCKFLOW_WEBHOOK_SECRET")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the demo finishes")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    // The checkouts went through the gateway and waited for their decisions.
    assert!(
        stdout.contains(" 201 confirmed ") && stdout.contains(" 409 rejected "),
        "no confirmed and rejected checkouts in:\n{stdout}"
    );

    // Every alert and order result arrived, signed with the run's secret.
    let (expected, delivered, verified) = webhook_figures(&stdout);
    assert!(expected >= 10, "too few webhooks expected: {expected}");
    assert_eq!(delivered, expected, "{stdout}");
    assert_eq!(verified, expected, "{stdout}");
    assert!(!stdout.contains("SIGNATURE REFUSED"), "{stdout}");
    for kind in [
        "low_stock",
        "out_of_stock",
        "back_in_stock",
        "order_confirmed",
        "order_rejected",
        "order_released",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(kind) && l.contains("signature ok")),
            "no verified {kind} delivery in:\n{stdout}"
        );
    }
}

/// `stockflow-demo | head -3`: the reader takes three lines and closes; the demo's next line
/// meets a closed pipe and it ends quietly with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exits_quietly_when_its_reader_goes() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let mut child = tokio::process::Command::new(workspace_binary("stockflow-demo"))
        .env("STOCKFLOW_NATS_URL", nats.url())
        .env("STOCKFLOW_REDIS_URL", redis.url())
        .env("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0")
        .env_remove("STOCKFLOW_KEY_PREFIX")
        .env_remove("STOCKFLOW_GATEWAY_TOKENS")
        .env_remove("STOCKFLOW_WEBHOOK_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the demo");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut errors = String::new();
    let (status, _) = tokio::time::timeout(Duration::from_secs(240), async {
        let read = stderr.read_to_string(&mut errors);
        let head = async {
            for _ in 0..3 {
                lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .expect("a line");
            }
            drop(lines);
            child.wait().await
        };
        tokio::join!(head, read)
    })
    .await
    .expect("the demo ends after its reader went");
    let status = status.expect("exit status");
    assert_eq!(status.code(), Some(0), "{errors}");
    assert!(
        !errors.contains("panicked") && !errors.contains("Broken pipe"),
        "{errors}"
    );
}
