//! A SKU's history over the gateway and `stockctl`: pages of its ledger through filters and
//! cursors hold exactly the entries (no gap, no repeat), its levels at a past time equal a
//! model of the facts applied by then, bad parameters answer 400 naming themselves, and the
//! CLI prints what the gateway answers. The times are those the ledger recorded (Redis time).

use std::collections::{BTreeMap, HashMap};

use reqwest::StatusCode;
use serde_json::Value;
use stockflow_proto::v1::{stock_event::Change, StockChanged};
use stockflow_tests::{
    events::{event, received, sold},
    DEADLINE,
};
use tokio_util::sync::CancellationToken;

use crate::{cli::stockctl, world::*};

const READ: &str = "history-read-token-0123456789";

/// A gateway inside the test process.
struct Gateway {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    running: gateway::Running,
}

impl Gateway {
    async fn start(world: &World) -> Self {
        let settings = gateway::Settings::from_env(&world.env(&[
            ("STOCKFLOW_HTTP_ADDR", "127.0.0.1:0"),
            ("STOCKFLOW_GATEWAY_TOKENS", &format!("read:{READ}")),
        ]))
        .expect("settings");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let running = gateway::start(settings, async move { signal.cancelled().await })
            .await
            .expect("gateway starts");
        Self {
            base: format!("http://{}", running.api_addr),
            http: reqwest::Client::new(),
            stop,
            running,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(READ)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    /// Every page of `query` (which must not hold a cursor), following `next` as `cursor`:
    /// the cause of each entry, in the order the pages gave them.
    async fn all_pages(&self, sku: &str, query: &str, cursor: &str) -> Vec<String> {
        let mut causes = Vec::new();
        let mut path = format!("/v1/skus/{sku}/ledger?{query}");
        for _ in 0..1000 {
            let page = self.ok(&path).await;
            let items = page["items"].as_array().expect("items");
            let entries = page["entries"].as_array().expect("entries");
            assert_eq!(
                items.len(),
                entries.len(),
                "entries: the same, oldest first"
            );
            causes.extend(
                items
                    .iter()
                    .map(|e| e["cause_event_id"].as_str().expect("cause").to_owned()),
            );
            match page["next"].as_u64() {
                Some(next) => {
                    assert!(!items.is_empty(), "a next page after an empty one: {page}");
                    path = format!("/v1/skus/{sku}/ledger?{query}&{cursor}={next}");
                }
                None => return causes,
            }
        }
        panic!("{query}: pages without end");
    }

    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.running.wait())
            .await
            .expect("gateway stops in time")
            .expect("gateway ends cleanly");
    }
}

/// The facts: `(event id, location, change)`; receipts and sales at two locations, with
/// another SKU's facts in between.
fn facts(sku: &str, n: usize) -> Vec<(String, String, Change)> {
    (0..n)
        .map(|i| {
            let location = if i % 3 == 0 { "store" } else { "wh" };
            let change = if i % 4 == 3 {
                sold(1)
            } else {
                received(i64::try_from(i % 5).expect("small") + 1)
            };
            (format!("{sku}-{i}"), location.to_owned(), change)
        })
        .collect()
}

fn delta(change: &Change) -> i64 {
    match change {
        Change::Received(r) => r.quantity,
        Change::Sold(s) => -s.quantity,
        other => panic!("not in the model: {other:?}"),
    }
}

/// Applies the facts through the stock worker, one at a time (so each has its own moment), and
/// returns the SKU's ledger as stored.
async fn apply(world: &World, sku: &str, facts: &[(String, String, Change)]) -> Vec<StockChanged> {
    for (i, (id, location, change)) in facts.iter().enumerate() {
        world
            .publish(&event(id, sku, location, change.clone()))
            .await;
        // Another SKU's entries between this SKU's: the filter must skip them.
        let other = format!("{sku}-OTHER");
        world
            .publish(&event(&format!("{other}-{i}"), &other, "wh", received(1)))
            .await;
        if i % 10 == 9 {
            world.wait_stock_idle().await;
        }
    }
    world.wait_stock_idle().await;
    let ledger = world.ledger(sku).await;
    assert_eq!(ledger.len(), facts.len(), "one entry per fact");
    ledger
}

/// The model: each location's on hand after every fact whose entry was applied at or before
/// `at`; a location with none is absent.
fn model_at(
    ledger: &[StockChanged],
    facts: &HashMap<&str, (&str, &Change)>,
    at: i64,
) -> BTreeMap<String, i64> {
    let mut on_hand = BTreeMap::new();
    for entry in ledger.iter().filter(|e| e.applied_at_ms <= at) {
        let (location, change) = facts[entry.cause_event_id.as_str()];
        *on_hand.entry(location.to_owned()).or_insert(0) += delta(change);
    }
    on_hand
}

fn on_hand_by_location(levels: &Value) -> BTreeMap<String, i64> {
    levels["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .map(|l| {
            (
                l["location"].as_str().expect("location").to_owned(),
                l["on_hand"].as_i64().expect("on_hand"),
            )
        })
        .collect()
}

fn causes(ledger: &[StockChanged], keep: impl Fn(&StockChanged) -> bool) -> Vec<String> {
    ledger
        .iter()
        .filter(|e| keep(e))
        .map(|e| e.cause_event_id.clone())
        .collect()
}

fn reversed(mut v: Vec<String>) -> Vec<String> {
    v.reverse();
    v
}

#[tokio::test]
async fn pages_and_past_levels_hold_exactly_the_ledger() {
    let world = World::start().await;
    let _stock = world.stock_worker();
    let gw = Gateway::start(&world).await;
    let sku = "HIST-1";
    let facts = facts(sku, 45);
    let ledger = apply(&world, sku, &facts).await;
    let by_id: HashMap<&str, (&str, &Change)> = facts
        .iter()
        .map(|(id, l, c)| (id.as_str(), (l.as_str(), c)))
        .collect();
    let all = causes(&ledger, |_| true);

    // Every entry once, newest first by default, oldest first on request, across page sizes.
    for limit in [1, 7, 45, 1000] {
        assert_eq!(
            gw.all_pages(sku, &format!("limit={limit}"), "before").await,
            reversed(all.clone()),
            "newest first, limit {limit}"
        );
    }
    assert_eq!(
        gw.all_pages(sku, "limit=6&order=oldest", "after").await,
        all
    );

    // Filters, paged.
    let store_receipts = causes(&ledger, |e| e.location == "store" && e.kind == "received");
    assert!(store_receipts.len() > 5);
    assert_eq!(
        gw.all_pages(sku, "location=store&type=received&limit=4", "before")
            .await,
        reversed(store_receipts.clone())
    );
    let (from, to) = (ledger[10].applied_at_ms, ledger[33].applied_at_ms);
    let in_range = causes(&ledger, |e| (from..=to).contains(&e.applied_at_ms));
    assert!(in_range.len() >= 24, "at least entries 10..=33");
    for (query, cursor, want) in [
        (
            format!("from={from}&to={to}&limit=5"),
            "before",
            reversed(in_range.clone()),
        ),
        (
            format!("from={from}&to={to}&limit=5&order=oldest"),
            "after",
            in_range.clone(),
        ),
        (
            format!("to={to}&type=sold&limit=2"),
            "before",
            reversed(causes(&ledger, |e| {
                e.applied_at_ms <= to && e.kind == "sold"
            })),
        ),
        (
            format!("from={from}&location=wh&limit=3&order=oldest"),
            "after",
            causes(&ledger, |e| e.applied_at_ms >= from && e.location == "wh"),
        ),
    ] {
        assert_eq!(gw.all_pages(sku, &query, cursor).await, want, "{query}");
    }
    // RFC 3339 means the same instant as ms.
    let rfc = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(from) * 1_000_000)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let by_ms = gw
        .ok(&format!("/v1/skus/{sku}/ledger?from={from}&limit=1000"))
        .await;
    let by_rfc = gw
        .ok(&format!("/v1/skus/{sku}/ledger?from={rfc}&limit=1000"))
        .await;
    assert_eq!(by_ms["items"], by_rfc["items"]);
    // The first shape still answers: `entries` oldest first, the newest `limit`.
    let first_shape = gw.ok(&format!("/v1/skus/{sku}/ledger?limit=3")).await;
    let entries: Vec<&str> = first_shape["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["cause_event_id"].as_str().expect("cause"))
        .collect();
    assert_eq!(entries, all[all.len() - 3..]);

    // Levels at a past time equal the model, at every moment the ledger recorded, just before
    // the first (nothing yet) and now.
    let mut moments: Vec<i64> = ledger.iter().map(|e| e.applied_at_ms).collect();
    moments.dedup();
    moments.push(ledger[0].applied_at_ms - 1);
    for at in moments {
        let want = model_at(&ledger, &by_id, at);
        let levels = gw.ok(&format!("/v1/skus/{sku}/levels?at={at}")).await;
        assert_eq!(on_hand_by_location(&levels), want, "at {at}");
        let wh = gw
            .ok(&format!("/v1/skus/{sku}/levels?at={at}&location=wh"))
            .await;
        let want_wh: BTreeMap<_, _> = want.into_iter().filter(|(l, _)| l == "wh").collect();
        assert_eq!(on_hand_by_location(&wh), want_wh, "wh at {at}");
    }
    let now = gw
        .ok(&format!("/v1/skus/{sku}/levels?at=2999-01-01T00:00:00Z"))
        .await;
    for (location, on_hand) in on_hand_by_location(&now) {
        assert_eq!(
            world.on_hand_reserved(sku, &location).await.0,
            on_hand,
            "{location} now"
        );
    }

    // Bad parameters answer 400 naming the parameter.
    for (path, field) in [
        ("ledger?limit=0", "limit"),
        ("ledger?limit=1001", "limit"),
        ("ledger?from=yesterday", "from"),
        ("ledger?to=-1", "to"),
        ("ledger?from=20&to=10", "from"),
        ("ledger?before=x", "before"),
        ("ledger?after=1.5", "after"),
        ("ledger?order=up", "order"),
        ("ledger?location=", "location"),
        ("ledger?colour=red", "colour"),
        ("levels", "at"),
        ("levels?at=soon", "at"),
        ("levels?at=1&location=", "location"),
        ("levels?at=1&when=now", "when"),
    ] {
        let (status, body) = gw.get(&format!("/v1/skus/{sku}/{path}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    // An unknown SKU has no history.
    let none = gw.ok("/v1/skus/NOBODY/ledger").await;
    assert_eq!(
        (none["items"].as_array().map(Vec::len), &none["next"]),
        (Some(0), &Value::Null)
    );
    let none = gw.ok("/v1/skus/NOBODY/levels?at=1").await;
    assert_eq!(none["locations"], serde_json::json!([]));

    // The CLI prints what the gateway answers.
    let query = format!("location=store&type=received&from={from}&limit=3");
    let page = gw.ok(&format!("/v1/skus/{sku}/ledger?{query}")).await;
    let ran = stockctl(
        &world,
        &[
            "ledger",
            sku,
            "--location",
            "store",
            "--type",
            "received",
            "--from",
            &rfc,
            "--limit",
            "3",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let printed: Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(printed["items"], page["items"]);
    assert_eq!(printed["next"], page["next"]);
    let table = stockctl(&world, &["ledger", sku, "--limit", "2"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let newest = &all[all.len() - 1];
    assert!(table.stdout.contains(newest.as_str()), "{}", table.stdout);
    assert!(table.stderr.contains("--before"), "{}", table.stderr);
    let at = ledger[20].applied_at_ms;
    let levels = gw.ok(&format!("/v1/skus/{sku}/levels?at={at}")).await;
    let ran = stockctl(
        &world,
        &["stock", sku, "--at", &at.to_string(), "-o", "json"],
    )
    .await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    let printed: Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(on_hand_by_location(&printed), on_hand_by_location(&levels));
    assert_eq!(printed["at_ms"], at);
    let bad = stockctl(&world, &["ledger", sku, "--to", "soon"]).await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--to"), "{}", bad.stderr);
    let bad = stockctl(&world, &["stock", sku, "--at", "soon"]).await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--at"), "{}", bad.stderr);

    gw.shutdown().await;
}

#[tokio::test]
async fn a_partitioned_ledger_pages_the_same() {
    let world = World::start_partitioned(4).await;
    let _stock = world.stock_worker();
    let gw = Gateway::start(&world).await;
    let sku = "HIST-P";
    let facts = facts(sku, 14);
    let ledger = apply(&world, sku, &facts).await;
    let by_id: HashMap<&str, (&str, &Change)> = facts
        .iter()
        .map(|(id, l, c)| (id.as_str(), (l.as_str(), c)))
        .collect();
    let all = causes(&ledger, |_| true);
    assert_eq!(
        gw.all_pages(sku, "limit=3", "before").await,
        reversed(all.clone())
    );
    assert_eq!(
        gw.all_pages(sku, "limit=4&order=oldest", "after").await,
        all
    );
    let at = ledger[6].applied_at_ms;
    let levels = gw.ok(&format!("/v1/skus/{sku}/levels?at={at}")).await;
    assert_eq!(on_hand_by_location(&levels), model_at(&ledger, &by_id, at));
    gw.shutdown().await;
}
