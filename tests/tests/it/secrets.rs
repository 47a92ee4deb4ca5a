//! Secrets never appear in logs, metrics or error messages. The worker binaries run as child
//! processes against servers that require TLS and credentials, with every secret set and
//! `STOCKFLOW_LOG=debug`; they handle valid and malformed events, then are started again with
//! wrong credentials. Every captured log line, every error, every `/metrics` page and every dead
//! letter is searched for each secret value.

use std::{net::SocketAddr, process::Stdio};

use prost::Message as _;
use stockflow_proto::subjects;
use stockflow_tests::{
    eventually, free_port, http_get, KillOnDrop, NatsServer, RedisOptions, RedisServer, TestPki,
    DEADLINE,
};

use crate::world::*;

/// Every binary that is given secrets. When the gateway and notify-worker land, each joins with
/// one line here (and its own secrets — API tokens, webhook signing secret — in
/// [`extra_secrets`]).
const BINARIES: &[&str] = &["stock-worker", "order-worker"];

/// Secrets of binaries beyond the workers' connections, as `(variable, value)`; each is set for
/// every binary and searched for like the others.
fn extra_secrets() -> Vec<(&'static str, &'static str)> {
    vec![]
}

const REDIS_PASSWORD: &str = "redis-pw-a93f02e7";
const REDIS_ADMIN_PASSWORD: &str = "redis-admin-5d21c8";
const WRONG_REDIS_PASSWORD: &str = "redis-wrong-6b0e44";

/// How the workers authenticate to NATS in one run.
#[derive(Debug, Clone, Copy)]
enum NatsAuth {
    Password,
    Token,
    NKey,
}

/// A NATS server requiring TLS and `auth`, the variables that reach it, the secret in them,
/// and variables with a wrong secret (and that wrong value).
struct NatsSide {
    vars: Vec<(String, String)>,
    secret: String,
    wrong_vars: Vec<(String, String)>,
    wrong_secret: String,
    setting: &'static str,
    _files: tempfile::TempDir,
}

fn nats_side(auth: NatsAuth, pki: &TestPki) -> (NatsServer, NatsSide) {
    let files = tempfile::tempdir().expect("temp dir");
    let tls = pki.nats_tls_block(false);
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    match auth {
        NatsAuth::Password => (NatsServer::start_with(&format!(
                "{tls}authorization {{ users = [ {{ user: stockflow, password: \"nats-pw-5c7e1d90\" }} ] }}"
            )), NatsSide {
            vars: vec![
                pair("STOCKFLOW_NATS_USER", "stockflow"),
                pair("STOCKFLOW_NATS_PASSWORD", "nats-pw-5c7e1d90"),
            ],
            secret: "nats-pw-5c7e1d90".into(),
            wrong_vars: vec![
                pair("STOCKFLOW_NATS_USER", "stockflow"),
                pair("STOCKFLOW_NATS_PASSWORD", "nats-wrong-0a4f37"),
            ],
            wrong_secret: "nats-wrong-0a4f37".into(),
            setting: "STOCKFLOW_NATS_USER/STOCKFLOW_NATS_PASSWORD",
            _files: files,
        }),
        NatsAuth::Token => (NatsServer::start_with(&format!(
                "{tls}authorization {{ token: \"nats-token-9e33b1c4\" }}"
            )), NatsSide {
            vars: vec![pair("STOCKFLOW_NATS_TOKEN", "nats-token-9e33b1c4")],
            secret: "nats-token-9e33b1c4".into(),
            wrong_vars: vec![pair("STOCKFLOW_NATS_TOKEN", "nats-token-wrong-17d2")],
            wrong_secret: "nats-token-wrong-17d2".into(),
            setting: "STOCKFLOW_NATS_TOKEN",
            _files: files,
        }),
        NatsAuth::NKey => {
            let user = nkeys::KeyPair::new_user();
            let seed = user.seed().expect("seed");
            let wrong = nkeys::KeyPair::new_user().seed().expect("seed");
            let file = files.path().join("user.nk");
            std::fs::write(&file, &seed).expect("write seed");
            let wrong_file = files.path().join("wrong.nk");
            std::fs::write(&wrong_file, &wrong).expect("write seed");
            (NatsServer::start_with(&format!(
                    "{tls}authorization {{ users = [ {{ nkey: {} }} ] }}",
                    user.public_key()
                )), NatsSide {
                vars: vec![pair("STOCKFLOW_NATS_NKEY_FILE", &file.to_string_lossy())],
                secret: seed,
                wrong_vars: vec![pair(
                    "STOCKFLOW_NATS_NKEY_FILE",
                    &wrong_file.to_string_lossy(),
                )],
                wrong_secret: wrong,
                setting: "STOCKFLOW_NATS_NKEY",
                _files: files,
            })
        }
    }
}

/// Waits for `child` to exit; returns whether it succeeded.
async fn wait_exit(child: &mut KillOnDrop) -> bool {
    eventually("the process exits", DEADLINE, || {
        let status = child.0.try_wait().ok().flatten();
        async move { status.map(|s| s.success()) }
    })
    .await
}

/// A binary with the world's connection variables, `vars` on top, debug logs into `log`.
fn spawn(
    world: &World,
    binary: &str,
    vars: &[(String, String)],
    metrics: SocketAddr,
    log: &std::path::Path,
) -> KillOnDrop {
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    let metrics = metrics.to_string();
    let mut command = world.worker_command(
        binary,
        &[
            ("STOCKFLOW_LOG", "debug"),
            ("STOCKFLOW_METRICS_ADDR", metrics.as_str()),
        ],
    );
    command
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .envs(extra_secrets())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    KillOnDrop(command.spawn().expect("spawn worker"))
}

async fn secrets_stay_out_of_logs_metrics_and_errors(auth: NatsAuth) {
    let pki = TestPki::generate();
    let (nats_server, nats) = nats_side(auth, &pki);
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some(&pki),
        conf: format!("user stockflow on >{REDIS_PASSWORD} ~sf:* &* +@all -@dangerous\n"),
        default_password: Some(REDIS_ADMIN_PASSWORD.into()),
    });
    let ca = pki.ca().to_string_lossy().into_owned();
    let mut connection: Vec<(&str, &str)> = nats
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    connection.extend([
        ("STOCKFLOW_NATS_TLS_CA_FILE", ca.as_str()),
        ("STOCKFLOW_REDIS_USERNAME", "stockflow"),
        ("STOCKFLOW_REDIS_PASSWORD", REDIS_PASSWORD),
        ("STOCKFLOW_REDIS_TLS_CA_FILE", ca.as_str()),
    ]);
    let world = World::start_on(nats_server, redis, &connection).await;
    let logs = tempfile::tempdir().expect("temp dir");
    // Everything a person or a scraper could read, searched at the end.
    let mut exposed: Vec<(String, String)> = Vec::new();

    // The binaries at work: ready, then valid and malformed events of each kind.
    let mut running = Vec::new();
    for binary in BINARIES {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = logs.path().join(format!("{binary}.log"));
        let child = spawn(&world, binary, &[], metrics, &log);
        eventually(&format!("{binary} ready"), DEADLINE, || async {
            http_get(metrics, "/readyz")
                .await
                .filter(|(status, _)| *status == 200)
        })
        .await;
        running.push((*binary, child, metrics, log));
    }
    world
        .publish(&event("s1", "VAULT", "wh", received(5)))
        .await;
    world.publish(&event("s2", "VAULT", "wh", sold(2))).await;
    world
        .publish_raw(
            &subjects::stock_event("VAULT"),
            b"\xff not protobuf".to_vec(),
        )
        .await;
    // The order is decided against the stock: wait until it is there.
    world.wait_on_hand("VAULT", "wh", 3).await;
    world
        .publish_order(&order(
            "o1",
            "order-1",
            placed(&[("1", "VAULT", 1, "wh")], 0),
        ))
        .await;
    let no_lines = order("o2", "order-2", placed(&[], 0));
    world
        .publish_raw(&subjects::order_event("order-2"), no_lines.encode_to_vec())
        .await;
    for (stream, durable) in [
        (subjects::STOCK_EVENTS, "stock-worker"),
        (subjects::ORDER_EVENTS, "order-worker"),
    ] {
        if let Err(e) =
            stockflow_cli::wait_until_caught_up(&world.js, stream, durable, DEADLINE).await
        {
            // The workers' own account of the wait: a stuck worker and a slow one log differently.
            let logs: String = running
                .iter()
                .map(|(binary, _, _, log)| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    format!(
                        "--- {binary} (last 40 lines)\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("{e:#}\n{logs}");
        }
    }
    assert_eq!(
        world.on_hand_reserved("VAULT", "wh").await,
        (3, 1),
        "the workers did their work over TLS with credentials"
    );
    let letters =
        stockflow_tests::read_stream(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters.len(), 2, "both malformed inputs are dead-lettered");
    for letter in &letters {
        exposed.push((
            "dead letter headers".into(),
            format!("{:?}", letter.headers),
        ));
    }

    for (binary, mut child, metrics, log) in running {
        let (status, page) = http_get(metrics, "/metrics").await.expect("metrics answer");
        assert_eq!(status, 200);
        assert!(page.contains("stockflow_events_total"), "{binary}: {page}");
        exposed.push((format!("{binary} /metrics"), page));
        let terminated = std::process::Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(terminated, "SIGTERM sent");
        assert!(wait_exit(&mut child).await, "{binary} stops cleanly");
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("nats connected"), "{binary} logged: {text}");
        assert!(text.contains("DEBUG"), "{binary} logged at debug: {text}");
        exposed.push((format!("{binary} log"), text));
    }

    // Wrong credentials: each binary stops with an error naming the setting.
    let redis_wrong = [(
        "STOCKFLOW_REDIS_PASSWORD".to_owned(),
        WRONG_REDIS_PASSWORD.to_owned(),
    )];
    for binary in BINARIES {
        for (case, vars, setting) in [
            ("nats", &nats.wrong_vars[..], nats.setting),
            (
                "redis",
                &redis_wrong[..],
                "STOCKFLOW_REDIS_USERNAME/STOCKFLOW_REDIS_PASSWORD",
            ),
        ] {
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let log = logs.path().join(format!("{binary}-{case}.log"));
            let mut child = spawn(&world, binary, vars, metrics, &log);
            assert!(
                !wait_exit(&mut child).await,
                "{binary} refuses to run ({case})"
            );
            let text = std::fs::read_to_string(&log).expect("log");
            assert!(
                text.contains(setting),
                "{binary} ({case}) names {setting}: {text}"
            );
            exposed.push((format!("{binary} log with a wrong {case} secret"), text));
        }
    }
    // The settings themselves, as a panic or a debug log would print them.
    let settings = stock_worker::Settings::from_env(&world.env(&[])).expect("settings");
    exposed.push(("settings".into(), format!("{settings:?}")));

    let mut secrets = vec![
        nats.secret.as_str(),
        nats.wrong_secret.as_str(),
        REDIS_PASSWORD,
        WRONG_REDIS_PASSWORD,
        REDIS_ADMIN_PASSWORD,
    ];
    secrets.extend(extra_secrets().into_iter().map(|(_, v)| v));
    for (what, text) in &exposed {
        for secret in &secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{what} shows a secret ({auth:?}): {line}");
            }
        }
    }
}

#[tokio::test]
async fn secrets_stay_out_of_logs_metrics_and_errors_with_nats_password() {
    secrets_stay_out_of_logs_metrics_and_errors(NatsAuth::Password).await;
}

#[tokio::test]
async fn secrets_stay_out_of_logs_metrics_and_errors_with_nats_token() {
    secrets_stay_out_of_logs_metrics_and_errors(NatsAuth::Token).await;
}

#[tokio::test]
async fn secrets_stay_out_of_logs_metrics_and_errors_with_nats_nkey() {
    secrets_stay_out_of_logs_metrics_and_errors(NatsAuth::NKey).await;
}
