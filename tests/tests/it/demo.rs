//! `stockflow-demo`, the real binary, against this test's servers: it finishes, its checkouts
//! through the gateway are decided (201 and 409), every alert and order result of the day
//! reaches its webhook receiver with a verified signature, and its sales channels section shows
//! what the feed holds and what the rules allow.

use std::{collections::BTreeMap, time::Duration};

use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{AvailabilityRules, ChannelAvailabilityChanged},
};
use stockflow_tests::{count, workspace_binary, NatsServer, RedisServer};

/// The demo's SKUs, in the order it prints them.
const SKUS: [&str; 6] = [
    "TSHIRT-BLK-M",
    "TSHIRT-BLK-L",
    "HOODIE-GRY-S",
    "SNEAKER-42",
    "MUG-LOGO",
    "Café crème 250g",
];
/// The SKUs whose checkouts keep their reservation (no hold): the channels' quantities of these
/// may move after the close the demo prints.
const HELD_AFTER_THE_CLOSE: [&str; 2] = ["TSHIRT-BLK-M", "MUG-LOGO"];

/// The marketplace's rules as the demo defines them, with SNEAKER-42's override.
fn marketplace_rules(sku: &str) -> (AvailabilityRules, Option<AvailabilityRules>) {
    let rules = AvailabilityRules {
        buffer: Some(2),
        max_listed: Some(25),
        end_when_below: Some(3),
        ..Default::default()
    };
    let sneaker = AvailabilityRules {
        buffer: Some(5),
        ..Default::default()
    };
    (rules, (sku == "SNEAKER-42").then_some(sneaker))
}

/// The rows of the table under the first line that starts with `header`: per SKU, the figures
/// at the end of its line (a SKU may hold spaces, the figures do not).
fn table(stdout: &str, header: &str, figures: usize) -> (Vec<String>, BTreeMap<String, Vec<i64>>) {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(header));
    let columns: Vec<String> = lines
        .next()
        .unwrap_or_else(|| panic!("no table {header:?} in:\n{stdout}"))
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    let mut rows = BTreeMap::new();
    for line in lines.take(SKUS.len()) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let split = tokens.len().saturating_sub(figures);
        let numbers = tokens[split..]
            .iter()
            .map(|t| t.parse().unwrap_or_else(|_| panic!("{t:?} in {line:?}")))
            .collect();
        rows.insert(tokens[..split].join(" "), numbers);
    }
    (columns, rows)
}

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
    // The preorder: confirmed with nothing on hand, listed against the purchase order, filled
    // first when it arrives.
    assert!(
        stdout
            .contains("CONSOLE-X x0 from wh-east, 2 backordered (a preorder, expected 2026-12-14)"),
        "no preorder among the checkouts in:\n{stdout}"
    );
    assert!(
        stdout.contains("the web shop listing 18 (incoming less what was preordered;")
            && stdout.contains("on hand 20, reserved 2; the web shop lists 16."),
        "no preorder filled on arrival in:\n{stdout}"
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

    assert_the_channels_section(&nats, &stdout).await;
}

/// The channels at the close: every quantity the demo printed is the feed's newest (for the
/// SKUs nothing changes after the close), the demo's own recomputation from the levels agreed,
/// the marketplace listed what its rules allow of its pool, and its oversold count is the
/// alerts'.
async fn assert_the_channels_section(nats: &NatsServer, stdout: &str) {
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stockflow demo — run "))
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no run id in:\n{stdout}"));
    assert!(
        stdout.contains("All 30 equal each channel's rules applied to the levels"),
        "{stdout}"
    );
    assert!(!stdout.contains("DIFFERS"), "{stdout}");

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let feed = js
        .get_stream(subjects::AVAILABILITY)
        .await
        .expect("the AVAILABILITY stream");
    let (channels, rows) = table(stdout, "  sku                pos-", 5);
    assert_eq!(
        channels,
        [
            "pos-store-01",
            "pos-store-02",
            "pos-store-03",
            "web",
            "marketplace"
        ]
    );
    assert_eq!(rows.len(), SKUS.len(), "{stdout}");
    for sku in SKUS {
        let printed = &rows[sku];
        for (name, quantity) in channels.iter().zip(printed) {
            if HELD_AFTER_THE_CLOSE.contains(&sku) {
                continue;
            }
            let stored = feed
                .direct_get_last_for_subject(subjects::availability(&format!("{run}-{name}"), sku))
                .await
                .unwrap_or_else(|e| panic!("no {name} quantity of {sku} in the feed: {e}"));
            let newest =
                ChannelAvailabilityChanged::decode(stored.payload.as_ref()).expect("decodes");
            assert_eq!(
                newest.available_to_sell, *quantity,
                "{name} {sku}:\n{stdout}"
            );
            assert!(newest.version >= 1);
        }
    }

    // opened, pool, closed, pool, changes, sold, turned away, oversold.
    let (_, marketplace) = table(stdout, "  sku                opened", 8);
    let mut oversold = 0;
    for sku in SKUS {
        let m = &marketplace[sku];
        let (rules, override_rules) = marketplace_rules(sku);
        let allowed = |pool: i64| {
            stockflow_shared::channels::quantity(&[pool], &rules, override_rules.as_ref()).0
        };
        assert_eq!(m[0], allowed(m[1]), "opened, {sku}:\n{stdout}");
        assert_eq!(m[2], allowed(m[3]), "closed, {sku}:\n{stdout}");
        assert!(m[2] <= 25, "{sku} listed over its maximum");
        assert_eq!(m[2], rows[sku][4], "{sku}: the two tables disagree");
        assert!(m[5] > 0, "the marketplace sold no {sku}:\n{stdout}");
        oversold += m[7];
    }
    let alerts = count(&js, subjects::ALERTS, "alerts.channel_oversold.>").await;
    assert_eq!(u64::try_from(oversold).ok(), Some(alerts), "{stdout}");
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
