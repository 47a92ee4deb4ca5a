//! `stockctl`, the real binary run as a child process against this test's servers: bulk import
//! (idempotent on 10,000 rows), invalid rows, publish, the stock table, tail, and the
//! dead-letter commands.

use std::{collections::BTreeMap, path::Path, process::Stdio, time::Duration};

use async_nats::HeaderMap;
use redis::AsyncCommands as _;
use stockflow_proto::subjects;
use stockflow_tests::{count, eventually, workspace_binary, DEADLINE};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::world::*;

/// What a `stockctl` run left behind.
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ran {
    /// The number after `label` at the start of a summary line (`  applied   10000`).
    pub(crate) fn figure(&self, label: &str) -> usize {
        self.stdout
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some(label))
                    .then(|| words.next().and_then(|n| n.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no {label} figure in:\n{}", self.stdout))
    }
}

fn command(world: &World, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(workspace_binary("stockctl"));
    command
        .args(args)
        .env("STOCKFLOW_NATS_URL", world.nats.url())
        .env("STOCKFLOW_REDIS_URL", world.redis.url())
        .env("STOCKFLOW_LOG", "warn")
        .env(
            "STOCKFLOW_STOCK_PARTITIONS",
            world.topology.stock_partitions.to_string(),
        )
        .env_remove("STOCKFLOW_KEY_PREFIX")
        .kill_on_drop(true);
    command
}

async fn stockctl_with_stdin(world: &World, args: &[&str], stdin: Option<&[u8]>) -> Ran {
    let mut command = command(world, args);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn stockctl");
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use tokio::io::AsyncWriteExt as _;
        pipe.write_all(bytes).await.expect("write stdin");
    }
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("stockctl {args:?} did not finish"))
        .expect("stockctl output");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub(crate) async fn stockctl(world: &World, args: &[&str]) -> Ran {
    stockctl_with_stdin(world, args, None).await
}

/// `stockctl` that must succeed.
async fn ok(world: &World, args: &[&str]) -> Ran {
    let ran = stockctl(world, args).await;
    assert_eq!(
        ran.code, 0,
        "stockctl {args:?} failed:\n{}\n{}",
        ran.stdout, ran.stderr
    );
    ran
}

/// Every Redis hash of the given SKUs (stock and policy), to compare states.
async fn snapshot(world: &World, skus: &[String]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut redis = world.redis.connection().await;
    let mut out = BTreeMap::new();
    for sku in skus {
        for key in [world.keys.stock(sku), world.keys.policy(sku)] {
            let hash: BTreeMap<String, String> = redis.hgetall(&key).await.expect("hgetall");
            out.insert(key, hash);
        }
    }
    out
}

/// sku, location, on_hand, threshold, safety_stock.
type SheetRow = (String, String, i64, Option<i64>, Option<i64>);

/// A 10,000-row sheet: 2,500 SKUs at 4 locations; every third row sets a threshold, every
/// fifth a safety stock.
fn big_sheet(path: &Path) -> Vec<SheetRow> {
    let rows: Vec<_> = (0..10_000i64)
        .map(|i| {
            (
                format!("IMP-{:05}", i / 4),
                format!("loc-{}", i % 4),
                (i * 7) % 500,
                (i % 3 == 0).then_some(i % 10),
                (i % 5 == 0).then_some(i % 4),
            )
        })
        .collect();
    let mut text = String::from("sku,location,on_hand,threshold,safety_stock\n");
    for (sku, location, on_hand, threshold, safety) in &rows {
        let opt = |v: &Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        text.push_str(&format!(
            "{sku},{location},{on_hand},{},{}\n",
            opt(threshold),
            opt(safety)
        ));
    }
    std::fs::write(path, text).expect("write csv");
    rows
}

#[tokio::test]
async fn importing_the_same_10000_rows_twice_changes_nothing_the_second_time() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("stock.csv");
    let rows = big_sheet(&file);
    let file = file.to_str().expect("utf-8 path");

    let first = ok(&world, &["import", file, "--wait"]).await;
    assert_eq!(first.figure("applied"), 10_000, "{}", first.stdout);
    assert_eq!(first.figure("unchanged"), 0);
    assert_eq!(first.figure("invalid"), 0);
    assert!(
        !first.stderr.contains("events ("),
        "no progress bar when stderr is not a terminal: {}",
        first.stderr
    );

    // Redis holds exactly the file.
    let mut redis = world.redis.connection().await;
    for (sku, location, on_hand, threshold, safety) in &rows {
        let oh: Option<i64> = redis
            .hget(world.keys.stock(sku), format!("oh:{location}"))
            .await
            .expect("hget");
        assert_eq!(oh, Some(*on_hand), "{sku}@{location}");
        let policy: (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(world.keys.policy(sku))
            .arg(format!("thr:{location}"))
            .arg(format!("ss:{location}"))
            .query_async(&mut redis)
            .await
            .expect("hmget");
        assert_eq!(policy, (*threshold, *safety), "{sku}@{location} policy");
    }
    let with_policy = rows
        .iter()
        .filter(|r| r.3.is_some() || r.4.is_some())
        .count() as u64;
    let ledger = count(&world.js, subjects::STOCK_CHANGES, "stock.changes.>").await;
    assert_eq!(
        ledger,
        10_000 + with_policy,
        "one entry per count and per policy"
    );

    let skus: Vec<String> = (0..2_500).map(|i| format!("IMP-{i:05}")).collect();
    let before = snapshot(&world, &skus).await;
    let inputs_before = stockflow_cli::last_sequence(&world.js, subjects::STOCK_EVENTS)
        .await
        .expect("seq");

    let second = ok(&world, &["import", file, "--wait"]).await;
    assert_eq!(second.figure("applied"), 0, "{}", second.stdout);
    assert_eq!(second.figure("unchanged"), 10_000);
    assert_eq!(second.figure("invalid"), 0);
    assert_eq!(snapshot(&world, &skus).await, before, "levels identical");
    assert_eq!(
        count(&world.js, subjects::STOCK_CHANGES, "stock.changes.>").await,
        ledger,
        "no new ledger entries"
    );
    assert_eq!(
        stockflow_cli::last_sequence(&world.js, subjects::STOCK_EVENTS)
            .await
            .expect("seq"),
        inputs_before,
        "rows already as in the file are not even published"
    );

    // A sale after the import: the same file again must not reset it. The row is published
    // (its level differs) and the worker absorbs it as a duplicate of the first import.
    ok(
        &world,
        &[
            "publish",
            "sold",
            "--sku",
            "IMP-00001",
            "--location",
            "loc-1",
            "--quantity",
            "3",
        ],
    )
    .await;
    let sold_to = rows[5].2 - 3;
    world.wait_on_hand("IMP-00001", "loc-1", sold_to).await;
    let ledger = count(&world.js, subjects::STOCK_CHANGES, "stock.changes.>").await;
    let third = ok(&world, &["import", file, "--wait"]).await;
    assert_eq!(third.figure("applied"), 0, "{}", third.stdout);
    assert_eq!(third.figure("unchanged"), 10_000);
    assert!(
        third
            .stdout
            .contains("(9999 already as in the file, 1 already imported)"),
        "{}",
        third.stdout
    );
    assert_eq!(
        world.on_hand_reserved("IMP-00001", "loc-1").await.0,
        sold_to
    );
    assert_eq!(
        count(&world.js, subjects::STOCK_CHANGES, "stock.changes.>").await,
        ledger
    );
    worker.shutdown().await;
}

/// A sheet of `n` rows, one location each: every row sets a level above 0 (back in stock
/// from nothing) and a threshold above it (low stock).
fn alerting_sheet(path: &Path, prefix: &str, n: usize) {
    let mut text = String::from("sku,location,on_hand,threshold\n");
    for i in 0..n {
        text.push_str(&format!("{prefix}-{i:03},wh,{},50\n", i + 1));
    }
    std::fs::write(path, text).expect("write csv");
}

#[tokio::test]
async fn an_initial_load_records_the_levels_without_alerts() {
    use stockflow_proto::v1::Reason;
    let world = World::start().await;
    let worker = world.stock_worker();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("opening.csv");
    alerting_sheet(&file, "OPEN", 200);
    let file = file.to_str().expect("utf-8 path");

    let ran = ok(
        &world,
        &["import", file, "--wait", "--initial-load", "-o", "json"],
    )
    .await;
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON summary");
    assert_eq!(summary["applied"], 200, "{}", ran.stdout);
    assert_eq!(summary["initial_load"], true);
    assert_eq!(summary["invalid"], serde_json::json!([]));
    assert_eq!(world.on_hand_reserved("OPEN-042", "wh").await, (43, 0));
    let ledger = world.ledger("OPEN-042").await;
    assert!(!ledger.is_empty());
    assert!(
        ledger
            .iter()
            .all(|e| e.reason == Reason::OpeningBalance as i32),
        "{ledger:?}"
    );
    assert_eq!(
        count(&world.js, subjects::STOCK_CHANGES, "stock.changes.>").await,
        400,
        "a count and a policy per row, in the ledger"
    );
    assert_eq!(
        count(&world.js, subjects::ALERTS, "alerts.>").await,
        0,
        "an initial load raises no alert"
    );

    // The same kind of sheet as an ordinary import: every row crosses the thresholds.
    let other = dir.path().join("counts.csv");
    alerting_sheet(&other, "CNT", 20);
    let ran = ok(
        &world,
        &["import", other.to_str().expect("utf-8"), "--wait"],
    )
    .await;
    assert_eq!(ran.figure("applied"), 20, "{}", ran.stdout);
    assert!(
        count(&world.js, subjects::ALERTS, "alerts.>").await >= 20,
        "an ordinary import raises its alerts"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn selftest_raises_no_alert_and_leaves_its_sku_at_zero() {
    use stockflow_cli::ctl::selftest::{LOCATION, SKU};
    let world = World::start().await;
    let worker = world.stock_worker();
    for _ in 0..2 {
        let ran = ok(&world, &["selftest"]).await;
        assert!(ran.stdout.contains("selftest ok"), "{}", ran.stdout);
        assert_eq!(world.on_hand_reserved(SKU, LOCATION).await, (0, 0));
    }
    assert_eq!(count(&world.js, subjects::ALERTS, "alerts.>").await, 0);
    assert_eq!(world.ledger(SKU).await.len(), 4, "two entries per run");
    let mut redis = world.redis.connection().await;
    let keys: Vec<String> = redis
        .keys(format!("{}:*:stock", world.keys.prefix()))
        .await
        .expect("keys");
    assert_eq!(
        keys,
        vec![world.keys.stock(SKU)],
        "one SKU, however often it runs"
    );
    let reconciled = stockctl(&world, &["reconcile"]).await;
    assert_eq!(reconciled.code, 0, "{}", reconciled.stdout);
    worker.shutdown().await;
}

#[tokio::test]
async fn invalid_rows_are_listed_with_their_line_and_reason() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("counts.csv");
    std::fs::write(
        &file,
        "sku,location,on_hand,safety_stock\n\
         OK-1,s1,5,\n\
         BAD-1,s1,-2,\n\
         ,s1,3,\n\
         OK-2,s1,7,1\n\
         BAD-2,s1,4,many\n\
         OK-1,s1,6,\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf-8 path");
    let ran = stockctl(&world, &["import", file]).await;
    assert_eq!(
        ran.code, 3,
        "some rows refused:\n{}{}",
        ran.stdout, ran.stderr
    );
    assert_eq!(ran.figure("published"), 2, "{}", ran.stdout);
    assert_eq!(ran.figure("invalid"), 4);
    for expected in [
        "line 3: on_hand must be 0..=1000000000, got -2",
        "line 4: sku is missing",
        "line 6: safety_stock \"many\" is not a whole number",
        "line 7: sku \"OK-1\" at location \"s1\" is already on line 2",
    ] {
        assert!(
            ran.stdout.contains(expected),
            "{expected:?} in\n{}",
            ran.stdout
        );
    }
    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await,
        3,
        "two counts and one policy, nothing for the invalid rows"
    );

    let limited = stockctl(&world, &["import", file, "--show-invalid", "1"]).await;
    assert!(
        limited.stdout.contains("invalid rows (first 1 of 4):"),
        "{}",
        limited.stdout
    );
    assert!(limited.stdout.contains("... and 3 more"));

    let headless = dir.path().join("headless.csv");
    std::fs::write(&headless, "sku,location\nA,b\n").expect("write");
    let ran = stockctl(&world, &["import", headless.to_str().expect("utf-8")]).await;
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("no on_hand column"), "{}", ran.stderr);
}

#[tokio::test]
async fn publish_validates_stores_once_and_stock_shows_the_levels() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let args = [
        "publish",
        "received",
        "--sku",
        "PUB-1",
        "--location",
        "store-1",
        "--quantity",
        "5",
        "--event-id",
        "pub-e1",
    ];
    let first = ok(&world, &args).await;
    assert!(
        first.stdout.contains("PUB-1 @ store-1: received 5"),
        "{}",
        first.stdout
    );
    assert!(first
        .stdout
        .contains("stored: STOCK_EVENTS sequence 1, duplicate: no"));
    let again = ok(&world, &args).await;
    assert!(
        again.stdout.contains("sequence 1, duplicate: yes"),
        "{}",
        again.stdout
    );
    world.wait_on_hand("PUB-1", "store-1", 5).await;

    // JSON from standard input, in the shape `dlq show` prints.
    let json = br#"{"type":"policy_set","sku":"PUB-1","location":"store-1","safety_stock":2,"event_id":"pub-p1"}"#;
    let ran = stockctl_with_stdin(&world, &["publish", "--json-file", "-"], Some(json)).await;
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    ok(
        &world,
        &[
            "publish",
            "--json",
            r#"{"type":"received","sku":"PUB-1","location":"wh","quantity":10,"event_id":"pub-e2"}"#,
        ],
    )
    .await;
    world.wait_stock_idle().await;

    let table = ok(&world, &["stock", "PUB-1"]).await.stdout;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.contains(&vec![
            "location",
            "on_hand",
            "reserved",
            "safety_stock",
            "available"
        ]),
        "{table}"
    );
    assert!(
        rows.contains(&vec!["store-1", "5", "0", "2", "3"]),
        "{table}"
    );
    assert!(rows.contains(&vec!["wh", "10", "0", "0", "10"]), "{table}");
    assert!(
        rows.contains(&vec!["total", "15", "0", "2", "13"]),
        "{table}"
    );

    // Refused before publishing, with the worker's own reason.
    let stored = count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await;
    let bad = stockctl(
        &world,
        &[
            "publish",
            "sold",
            "--sku",
            "PUB-1",
            "--location",
            "store-1",
            "--quantity",
            "0",
        ],
    )
    .await;
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("quantity must be 1..="),
        "{}",
        bad.stderr
    );
    let misspelt = stockctl(
        &world,
        &[
            "publish",
            "--json",
            r#"{"type":"counted","sku":"PUB-1","location":"store-1","on_hand":1,"expected_onhand":5}"#,
        ],
    )
    .await;
    assert_eq!(misspelt.code, 1);
    assert!(
        misspelt.stderr.contains("expected_onhand"),
        "{}",
        misspelt.stderr
    );
    assert_eq!(
        count(&world.js, subjects::STOCK_EVENTS, "stock.events.>").await,
        stored,
        "nothing invalid was published"
    );

    // An order from flags reaches ORDER_EVENTS.
    let order = ok(
        &world,
        &[
            "publish",
            "order",
            "place",
            "--order",
            "O-1",
            "--line",
            "PUB-1:2:store-1",
        ],
    )
    .await;
    let empty = stockctl(
        &world,
        &[
            "publish",
            "--json",
            r#"{"type":"order_placed","order_id":"O-2","lines":[]}"#,
        ],
    )
    .await;
    assert_eq!(empty.code, 1);
    assert!(
        empty.stderr.contains("an order has 1..=100 lines"),
        "{}",
        empty.stderr
    );
    let cancel = ok(
        &world,
        &[
            "publish",
            "--json",
            r#"{"type":"order_cancelled","order_id":"O-1","event_id":"cx-1"}"#,
        ],
    )
    .await;
    assert!(
        cancel
            .stdout
            .contains("order O-1: cancelled [event_id cx-1"),
        "{}",
        cancel.stdout
    );
    assert!(
        order.stdout.contains("stored: ORDER_EVENTS"),
        "{}",
        order.stdout
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn tail_prints_stored_and_new_events_decoded() {
    let world = World::start().await;
    let worker = world.stock_worker();
    world
        .publish(&event("t1", "TAIL-1", "s1", received(4)))
        .await;
    // Applied before the sale: the lines below show the ledger in the order facts are applied.
    world.wait_on_hand("TAIL-1", "s1", 4).await;
    world.publish(&event("t2", "TAIL-1", "s1", sold(1))).await;
    world.wait_stock_idle().await;

    let text = ok(
        &world,
        &["tail", "stock.changes.>", "--all", "--count", "2"],
    )
    .await;
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", text.stdout);
    assert!(
        lines[0].contains("TAIL-1 @ s1: received on_hand 0→4") && lines[0].contains("cause t1"),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains("sold on_hand 4→3"), "{}", lines[1]);

    let json = ok(
        &world,
        &["tail", "stock.changes.>", "--all", "--count", "2", "--json"],
    )
    .await;
    let events: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events[1]["event"]["type"], "stock_changed");
    assert_eq!(events[1]["event"]["after"]["on_hand"], 3);
    assert_eq!(events[1]["sequence"], 2);

    // Live: only what is stored after it started.
    let mut child = command(&world, &["tail", "alerts.>", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = tokio::time::timeout(DEADLINE, stderr.next_line())
        .await
        .expect("tail starts")
        .expect("read stderr");
    assert!(
        started
            .as_deref()
            .is_some_and(|l| l.starts_with("tailing alerts.>")),
        "{started:?}"
    );
    world.publish(&event("t3", "TAIL-1", "s1", sold(3))).await;
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("tail stops after one event")
        .expect("output");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains("TAIL-1 @ s1: ALERT out_of_stock: available 0") && out.contains("cause t3"),
        "{out}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_replayed() {
    let world = World::start().await;
    let worker = world.stock_worker();

    // 1. Undecodable bytes: replay re-publishes exactly them on the original subject.
    let garbage = b"\xff\xfe not protobuf".to_vec();
    let subject = subjects::stock_event("DLQ-1");
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "garbage-1");
    headers.insert("X-Channel", "pos-7");
    world
        .js
        .publish_with_headers(subject.clone(), headers, garbage.clone().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    stockflow_tests::wait_for_count(&world.js, subjects::DEAD_LETTERS, "deadletter.>", 1).await;

    let list = ok(&world, &["dlq", "list"]).await.stdout;
    let row = list
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("seq 1 listed:\n{list}"));
    assert!(row.contains("STOCK_EVENTS"), "{row}");
    assert!(row.contains(&subject), "{row}");
    assert!(row.contains("not a StockEvent"), "{row}");

    let show = ok(&world, &["dlq", "show", "1"]).await.stdout;
    assert!(show.contains("does not decode"), "{show}");
    assert!(show.contains("X-Channel: pos-7"), "{show}");
    assert!(
        show.contains("Stockflow-Original-Msg-Id: garbage-1"),
        "{show}"
    );
    assert!(
        show.contains(r#"escaped: "\xff\xfe not protobuf""#),
        "{show}"
    );
    assert!(show.contains("fffe206e6f74"), "{show}");

    let inputs = stockflow_cli::last_sequence(&world.js, subjects::STOCK_EVENTS)
        .await
        .expect("seq");
    let replay = ok(&world, &["dlq", "replay", "1"]).await.stdout;
    assert!(replay.contains("replayed dead letter 1"), "{replay}");
    let stream = world
        .js
        .get_stream(subjects::STOCK_EVENTS)
        .await
        .expect("stream");
    let replayed = stream
        .get_raw_message(inputs + 1)
        .await
        .expect("the replay is stored");
    assert_eq!(replayed.subject.as_str(), subject);
    assert_eq!(
        replayed.payload.as_ref(),
        garbage.as_slice(),
        "the same bytes"
    );
    let header = |name: &str| replayed.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("X-Channel").as_deref(), Some("pos-7"));
    assert_eq!(
        header("Nats-Msg-Id").as_deref(),
        Some("replay:DEAD_LETTERS:1")
    );
    assert_eq!(
        header("Stockflow-Replayed-From").as_deref(),
        Some("DEAD_LETTERS:1")
    );
    assert!(header(subjects::HEADER_DEAD_LETTER_REASON).is_none());
    let dead = world
        .js
        .get_stream(subjects::DEAD_LETTERS)
        .await
        .expect("stream");
    assert!(
        dead.get_raw_message(1).await.is_err(),
        "removed from DEAD_LETTERS"
    );
    // Still garbage: the worker dead-letters it again, as a new entry.
    eventually("the replay dead-lettered again", DEADLINE, || async {
        dead.get_raw_message(2).await.ok()
    })
    .await;

    // 2. An event_id conflict can succeed once the first use is forgotten (its dedup record
    //    expired; deleted here instead of waiting a day).
    world
        .publish(&event("c1", "DLQ-2", "s1", received(5)))
        .await;
    world.wait_on_hand("DLQ-2", "s1", 5).await;
    world
        .publish(&event("c1", "DLQ-2", "s1", received(7)))
        .await;
    stockflow_tests::wait_for_count(&world.js, subjects::DEAD_LETTERS, "deadletter.>", 2).await;
    world.wait_stock_idle().await;
    let list = ok(&world, &["dlq", "list", "--json"]).await.stdout;
    let conflict: serde_json::Value = list
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .find(|l| {
            l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("already used"))
        })
        .unwrap_or_else(|| panic!("the conflict is listed:\n{list}"));
    let seq = conflict["sequence"].as_u64().expect("sequence").to_string();
    let show = ok(&world, &["dlq", "show", &seq]).await.stdout;
    assert!(show.contains("decoded as received"), "{show}");
    assert!(show.contains("\"quantity\": 7"), "{show}");

    let mut redis = world.redis.connection().await;
    let _: () = redis
        .del(world.keys.event("DLQ-2", "c1"))
        .await
        .expect("del");
    ok(&world, &["dlq", "replay", &seq]).await;
    world.wait_on_hand("DLQ-2", "s1", 12).await;
    let list = ok(&world, &["dlq", "list", "--json"]).await.stdout;
    let sequences: Vec<String> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["sequence"].to_string()
        })
        .collect();
    assert!(!sequences.contains(&seq), "replayed, so removed: {list}");

    // `replay --all` replays what came from an input stream and leaves the rest alone.
    let mut foreign = HeaderMap::new();
    foreign.insert(subjects::HEADER_ORIGINAL_STREAM, subjects::ALERTS);
    foreign.insert(subjects::HEADER_ORIGINAL_SUBJECT, "alerts.low_stock.X");
    foreign.insert(subjects::HEADER_DEAD_LETTER_REASON, "undeliverable");
    world
        .js
        .publish_with_headers(subjects::dead_letter(subjects::ALERTS), foreign, "x".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let dead_before = stockflow_cli::last_sequence(&world.js, subjects::DEAD_LETTERS)
        .await
        .expect("seq");
    let all = ok(&world, &["dlq", "replay", "--all"]).await.stdout;
    assert!(all.contains("replayed 1, skipped 1"), "{all}");
    assert!(all.contains("which the workers derive"), "{all}");
    assert!(
        dead.get_raw_message(dead_before).await.is_ok(),
        "the skipped one stays"
    );
    // The garbage, replayed once more, is dead-lettered once more.
    eventually("the garbage dead-lettered again", DEADLINE, || async {
        dead.get_raw_message(dead_before + 1).await.ok()
    })
    .await;

    // Unknown sequence: a clear error.
    let missing = stockctl(&world, &["dlq", "show", "999"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("DEAD_LETTERS has no message 999"),
        "{}",
        missing.stderr
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn connection_errors_are_clear() {
    let world = World::start().await;
    // A flag value stockctl refuses is a bad command line: exit 2, as for a flag clap refuses.
    for bad in ["not a url", "garbage", "http://127.0.0.1:4222"] {
        let ran = stockctl(&world, &["--nats-url", bad, "dlq", "list"]).await;
        assert_eq!(ran.code, 2, "--nats-url {bad}: {}", ran.stderr);
        assert!(ran.stderr.contains("--nats-url"), "{}", ran.stderr);
    }
    let ran = stockctl(
        &world,
        &["--redis-url", "redis://u:s3cret@127.0.0.1:1", "stock", "A"],
    )
    .await;
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("connecting to Redis"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("s3cret"), "{}", ran.stderr);
    assert_eq!(
        ran.stderr.matches("Connection refused").count(),
        1,
        "the cause once: {}",
        ran.stderr
    );
}

/// Each failure reads once, in one sentence that says what to check, without secrets.
#[tokio::test]
async fn connection_errors_print_each_cause_once_and_what_to_check() {
    let world = World::start().await;
    let nowhere = stockflow_tests::NatsServer::reserved();
    let ran = stockctl(&world, &["--nats-url", &nowhere.url(), "dlq", "list"]).await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_eq!(
        ran.stderr.matches("Connection refused").count(),
        1,
        "the cause once: {}",
        ran.stderr
    );
    assert!(ran.stderr.contains(&nowhere.url()), "{}", ran.stderr);
    assert!(ran.stderr.contains("check that"), "{}", ran.stderr);
    assert!(!ran.stderr.contains("credentials"), "{}", ran.stderr);

    let ran = stockctl(&world, &["--redis-url", "http://u:s3cret@x", "stock", "A"]).await;
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(ran.stderr.contains("--redis-url"), "{}", ran.stderr);
    assert!(ran.stderr.contains("redis://host:6379"), "{}", ran.stderr);
    assert!(
        !ran.stderr.contains("InvalidClientConfig"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("s3cret"), "{}", ran.stderr);

    // A Redis URL at the NATS port: the reply is not Redis', said once, not the parser's bytes.
    let at_nats = format!("redis://127.0.0.1:{}", world.nats.port());
    let ran = stockctl(&world, &["--redis-url", &at_nats, "stock", "A"]).await;
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    assert_eq!(
        ran.stderr.matches("not Redis'").count(),
        1,
        "said once: {}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("Unexpected"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
}

/// `import --wait --timeout N` gives up after N seconds and says N, not what was left of it.
#[tokio::test]
async fn an_import_wait_that_times_out_prints_the_timeout_as_given() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sheet.csv");
    std::fs::write(&file, "sku,location,on_hand\nT-1,wh,5\n").expect("write the sheet");
    let file = file.to_str().expect("utf-8 path");
    // No stock worker runs: the wait cannot end before the timeout.
    let ran = stockctl(&world, &["import", file, "--wait", "--timeout", "2"]).await;
    assert_eq!(ran.code, 1, "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("within 2s "), "{}", ran.stderr);
    assert!(ran.stderr.contains("running?"), "{}", ran.stderr);
}

#[tokio::test]
async fn every_kind_of_dead_letter_is_replayed_by_stockctl_or_refused_with_its_reason() {
    let world = World::start().await;
    let letters = crate::dead_letters::store_each_kind(&world, "cli").await;
    let stock_worker = world.stock_worker();
    let order_worker = world.order_worker();

    let list = ok(&world, &["dlq", "list", "--json"]).await.stdout;
    let replayable: BTreeMap<u64, bool> = list
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            (
                v["sequence"].as_u64().expect("sequence"),
                v["replayable"].as_bool().expect("replayable"),
            )
        })
        .collect();
    assert_eq!(
        replayable,
        BTreeMap::from([
            (letters.stock, true),
            (letters.order, true),
            (letters.webhook, true),
            (letters.derived, false),
        ])
    );
    let show = ok(&world, &["dlq", "show", &letters.webhook.to_string()])
        .await
        .stdout;
    assert!(show.contains("decoded as webhook_delivery"), "{show}");

    // A stock fact: an earlier replay stored it but died before removing the dead letter; the
    // replay now is answered as its duplicate, and the fact is applied once.
    let stock = stockflow_shared::replay::get(&world.js, letters.stock)
        .await
        .expect("dead letter");
    let first = stockflow_shared::replay::republish(&world.js, &stock)
        .await
        .expect("republished");
    assert!(!first.duplicate);
    let replay = ok(&world, &["dlq", "replay", &letters.stock.to_string()])
        .await
        .stdout;
    assert!(replay.contains("(stock_fact)"), "{replay}");
    assert!(
        replay.contains("duplicate of an earlier replay"),
        "{replay}"
    );
    world.wait_stock_idle().await;
    assert_eq!(
        world.on_hand_reserved(&letters.sku, "wh").await,
        (letters.quantity, 0)
    );
    assert_eq!(world.ledger(&letters.sku).await.len(), 1, "applied once");
    assert_eq!(
        count(
            &world.js,
            subjects::STOCK_EVENTS,
            &subjects::stock_event(&letters.sku)
        )
        .await,
        1,
        "stored once"
    );
    // Replayed, so removed: a third replay finds nothing and says so.
    let again = stockctl(&world, &["dlq", "replay", &letters.stock.to_string()]).await;
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("replayed, or never stored"),
        "{}",
        again.stderr
    );

    // An order placement: decided once.
    ok(&world, &["dlq", "replay", &letters.order.to_string()]).await;
    world.wait_orders_idle().await;
    eventually("the replayed order decided", DEADLINE, || async {
        (crate::dead_letters::decisions_for(&world, &letters.order_id).await == 1).then_some(())
    })
    .await;

    // A webhook delivery: back in the endpoint's outbox with its event id.
    let replay = ok(&world, &["dlq", "replay", &letters.webhook.to_string()])
        .await
        .stdout;
    assert!(
        replay.contains(&subjects::webhook(&letters.endpoint)),
        "{replay}"
    );
    let outbox = crate::dead_letters::outbox(&world, &letters.endpoint).await;
    let [delivery] = outbox.as_slice() else {
        panic!("one delivery in the outbox: {}", outbox.len());
    };
    crate::dead_letters::assert_replayed_delivery(delivery, &letters, letters.webhook);

    // An entry of a derived stream: refused, with the reason, and kept.
    let refused = stockctl(&world, &["dlq", "replay", &letters.derived.to_string()]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("ALERTS, which the workers derive")
            && refused.stderr.contains("second copy"),
        "{}",
        refused.stderr
    );
    let left = ok(&world, &["dlq", "list", "--json"]).await.stdout;
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(
        left.contains(&format!("\"sequence\":{}", letters.derived)),
        "{left}"
    );
    stock_worker.shutdown().await;
    order_worker.shutdown().await;
}

/// Waits for `child` to exit on its own and returns its status and stderr.
async fn exit_of(mut child: tokio::process::Child, what: &str) -> (i32, String) {
    let mut stderr = child.stderr.take().expect("stderr piped");
    let mut text = String::new();
    let (status, _) = tokio::time::timeout(DEADLINE, async {
        use tokio::io::AsyncReadExt as _;
        let read = stderr.read_to_string(&mut text);
        tokio::join!(child.wait(), read)
    })
    .await
    .unwrap_or_else(|_| panic!("{what} did not exit after its reader went"));
    (status.expect("status").code().unwrap_or(-1), text)
}

#[tokio::test]
async fn tail_and_dlq_list_exit_quietly_when_the_reader_goes() {
    let world = World::start().await;
    let worker = world.stock_worker();
    world
        .publish(&event("p1", "PIPE-1", "s1", received(5)))
        .await;
    world.wait_on_hand("PIPE-1", "s1", 5).await;

    // `stockctl tail … | head -1`: the reader takes one line and closes; the next event's line
    // meets a closed pipe.
    let mut child = command(&world, &["tail", "stock.changes.>", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(DEADLINE, stdout.next_line())
        .await
        .expect("tail prints the stored event")
        .expect("read stdout");
    assert!(first.is_some_and(|l| l.contains("PIPE-1")));
    drop(stdout);
    world.publish(&event("p2", "PIPE-1", "s1", sold(1))).await;
    let (code, stderr) = exit_of(child, "tail").await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );

    // `stockctl dlq list | head -1` with a reader gone before the first line.
    let mut child = command(&world, &["dlq", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dlq list");
    drop(child.stdout.take());
    let (code, stderr) = exit_of(child, "dlq list").await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    worker.shutdown().await;
}

/// `stockctl -o json …` that must succeed, parsed.
async fn json_of(world: &World, args: &[&str]) -> serde_json::Value {
    let mut with_output = vec!["-o", "json"];
    with_output.extend_from_slice(args);
    let ran = ok(world, &with_output).await;
    serde_json::from_str(ran.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stockctl {args:?}: not one JSON document ({e}):\n{}",
            ran.stdout
        )
    })
}

#[tokio::test]
async fn every_command_prints_json_with_numbers_as_numbers() {
    let world = World::start().await;
    let worker = world.stock_worker();

    // setup: every declared object, and what was done to it (all there already).
    let setup = json_of(&world, &["setup"]).await;
    assert_eq!(setup["mode"], "verify", "{setup}");
    assert_eq!(setup["created"], 0, "{setup}");
    assert_eq!(setup["updated"], 0, "{setup}");
    let objects = setup["objects"].as_array().expect("objects");
    assert_eq!(setup["unchanged"].as_u64(), Some(objects.len() as u64));
    assert!(
        objects.iter().any(|o| o["kind"] == "stream"
            && o["name"] == subjects::ORDER_EVENTS
            && o["action"] == "unchanged"),
        "{setup}"
    );
    assert!(objects.iter().any(|o| o["kind"] == "consumer"), "{setup}");
    let update = json_of(&world, &["setup", "--update"]).await;
    assert_eq!(update["mode"], "update", "{update}");

    // publish: what was stored, and where.
    let args = [
        "publish",
        "received",
        "--sku",
        "JSON-1",
        "--location",
        "s1",
        "--quantity",
        "5",
        "--event-id",
        "json-e1",
    ];
    let first = json_of(&world, &args).await;
    assert!(
        first["stream"]
            .as_str()
            .is_some_and(|s| s.starts_with("STOCK_EVENTS")),
        "{first}"
    );
    assert!(
        first["sequence"].as_u64().is_some_and(|s| s >= 1),
        "{first}"
    );
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(first["event"]["type"], "received", "{first}");
    assert_eq!(first["event"]["quantity"], 5, "{first}");
    assert_eq!(first["event"]["event_id"], "json-e1", "{first}");
    assert!(
        first["msg_id"]
            .as_str()
            .is_some_and(|m| m.ends_with(":json-e1")),
        "{first}"
    );
    let again = json_of(&world, &args).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["sequence"], first["sequence"], "{again}");
    world.wait_on_hand("JSON-1", "s1", 5).await;

    // stock: levels per location and the totals, as numbers.
    let stock = json_of(&world, &["stock", "JSON-1"]).await;
    assert_eq!(stock["sku"], "JSON-1", "{stock}");
    assert_eq!(
        stock["locations"],
        serde_json::json!([{"location": "s1", "on_hand": 5, "reserved": 0, "safety_stock": 0, "available": 5}]),
        "{stock}"
    );
    assert_eq!(stock["total"]["available"], 5, "{stock}");

    // selftest: its SKU and the level after the receipt.
    let selftest = json_of(&world, &["selftest"]).await;
    assert_eq!(selftest["ok"], true, "{selftest}");
    assert_eq!(selftest["on_hand"], 1, "{selftest}");
    assert!(selftest["elapsed_ms"].is_u64(), "{selftest}");
    assert_eq!(selftest["sku"], "stockflow-selftest", "{selftest}");

    // dlq list and show: the original sequence is a number.
    world
        .publish(&event("json-bad", "JSON-2", "s1", received(0)))
        .await;
    stockflow_tests::wait_for_count(&world.js, subjects::DEAD_LETTERS, "deadletter.>", 1).await;
    for list in [
        ok(&world, &["-o", "json", "dlq", "list"]).await.stdout,
        ok(&world, &["dlq", "list", "--json"]).await.stdout,
    ] {
        let lines: Vec<serde_json::Value> = list
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 1, "{list}");
        let letter = &lines[0];
        assert_eq!(letter["sequence"], 1, "{letter}");
        assert!(
            letter["original_sequence"].as_u64().is_some_and(|s| s >= 1),
            "{letter}"
        );
        assert!(letter["stored_at_ms"].is_i64(), "{letter}");
        assert!(letter["bytes"].is_u64(), "{letter}");
        assert_eq!(letter["replayable"], true, "{letter}");
        assert!(letter["original_stream"]
            .as_str()
            .is_some_and(|s| s.starts_with("STOCK_EVENTS")));
    }
    let show = json_of(&world, &["dlq", "show", "1"]).await;
    assert!(show["original_sequence"].is_u64(), "{show}");
    assert_eq!(show["payload_type"], "received", "{show}");
    assert_eq!(show["payload"]["quantity"], 0, "{show}");
    assert_eq!(show["payload"]["event_id"], "json-bad", "{show}");
    assert!(show["headers"].is_object(), "{show}");
    assert_eq!(show["refusal"], serde_json::Value::Null, "{show}");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_sku_without_stock_is_not_found() {
    let world = World::start().await;
    let table = stockctl(&world, &["stock", "NOPE"]).await;
    assert_eq!(table.code, 5, "{}{}", table.stdout, table.stderr);
    assert!(
        table.stderr.contains("NOPE: no stock recorded"),
        "{}",
        table.stderr
    );
    let json = stockctl(&world, &["stock", "NOPE", "-o", "json"]).await;
    assert_eq!(json.code, 5, "{}{}", json.stdout, json.stderr);
    let json: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("JSON");
    assert_eq!(json["sku"], "NOPE");
    assert_eq!(json["locations"], serde_json::json!([]));
    assert_eq!(json["total"]["on_hand"], 0);
}
