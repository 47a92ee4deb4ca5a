//! Operating sales channels with `stockctl` (the real binary): `channels set|show|list|remove`,
//! a SKU's override with `channels rules`, `availability`, and the channel state that `rebuild`
//! restores after a FLUSHALL and that `reconcile` checks (and with `--fix` repairs).

use std::collections::{BTreeMap, BTreeSet};

use redis::AsyncCommands as _;
use serde_json::Value;
use stockflow_proto::v1::AvailabilityRules;
use stockflow_tests::{
    events::{channel, channel_fact, channel_set},
    eventually, DEADLINE,
};

use crate::{
    cli::{stockctl, Ran},
    world::*,
};

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

fn json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
}

fn json_lines(ran: &Ran) -> Vec<Value> {
    ran.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Receipts of `quantity` at each of `stores`, applied.
async fn receive(world: &World, sku: &str, stores: &[&str], quantity: i64) {
    for store in stores {
        world
            .publish(&event(
                &format!("rcv-{sku}-{store}"),
                sku,
                store,
                received(quantity),
            ))
            .await;
    }
    world.wait_stock_idle().await;
}

/// Waits until the feed holds `sku`'s quantity for `channel` at `version` or newer.
async fn wait_version(
    world: &World,
    channel: &str,
    sku: &str,
    version: u64,
) -> stockflow_proto::v1::ChannelAvailabilityChanged {
    eventually(
        &format!("{channel} {sku} at version {version}"),
        DEADLINE,
        || async {
            world
                .availability(channel, sku)
                .await
                .filter(|q| q.version >= version)
        },
    )
    .await
}

#[tokio::test]
async fn channels_set_show_list_and_remove_round_trip() {
    let world = World::start().await;
    let worker = world.stock_worker();
    receive(&world, "RT-1", &["store-1", "store-2"], 6).await;

    let set = ok(
        &world,
        &[
            "-o",
            "json",
            "channels",
            "set",
            "market",
            "--name",
            "The market",
            "--kind",
            "marketplace",
            "--locations",
            "store-2,store-1",
            "--buffer",
            "2",
            "--max-listed",
            "10",
            "--allocation",
            "most_available",
            "--event-id",
            "set-market-1",
            "--wait",
        ],
    )
    .await;
    let set = json(&set);
    assert_eq!(set["change"], "set");
    assert_eq!(set["duplicate"], false);
    assert_eq!(set["msg_id"], "chn:market:set-market-1");
    let version = set["rules_version"]
        .as_u64()
        .expect("--wait gives the version");
    assert!(version >= 1, "{set}");

    let shown = json(&ok(&world, &["channels", "show", "market", "-o", "json"]).await);
    assert_eq!(shown["id"], "market");
    assert_eq!(shown["name"], "The market");
    assert_eq!(shown["kind"], "marketplace");
    assert_eq!(
        shown["locations"],
        serde_json::json!(["store-2", "store-1"])
    );
    assert_eq!(
        shown["rules"],
        serde_json::json!({"buffer": 2, "max_listed": 10})
    );
    assert_eq!(shown["allocation"], "most_available");
    assert_eq!(shown["rules_version"].as_u64(), Some(version));
    // The stock worker computed it: pool 12 - 2, at most 10.
    world.wait_availability("market", "RT-1", 10).await;

    // The same event id again is a duplicate; the same id with another change is refused.
    let again = stockctl(
        &world,
        &[
            "channels",
            "set",
            "market",
            "--locations",
            "store-1",
            "--event-id",
            "set-market-1",
        ],
    )
    .await;
    assert_eq!(again.code, 1, "{}", again.stdout);
    assert!(again.stderr.contains("already stored"), "{}", again.stderr);

    let listed = json_lines(&ok(&world, &["-o", "json", "channels", "list"]).await);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0], shown);
    let table = ok(&world, &["channels", "list"]).await;
    assert!(table.stdout.contains("market"), "{}", table.stdout);

    // Refused before anything is published, naming the field.
    let bad = stockctl(
        &world,
        &[
            "channels",
            "set",
            "web",
            "--locations",
            "store-1",
            "--percent",
            "150",
        ],
    )
    .await;
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert!(bad.stderr.contains("rules.percent"), "{}", bad.stderr);
    let unknown = stockctl(
        &world,
        &["channels", "set", "web", "--locations", "nowhere,store-1"],
    )
    .await;
    assert_eq!(unknown.code, 1, "{}", unknown.stdout);
    assert!(
        unknown.stderr.contains("locations[0]"),
        "{}",
        unknown.stderr
    );
    assert_eq!(
        stockctl(&world, &["channels", "show", "web"]).await.code,
        5,
        "nothing was published"
    );

    let removed = json(&ok(&world, &["-o", "json", "channels", "remove", "market"]).await);
    assert_eq!(removed["change"], "removed");
    assert_eq!(removed["channel"], Value::Null);
    eventually("the channel to be removed", DEADLINE, || async {
        (stockctl(&world, &["channels", "show", "market"]).await.code == 5).then_some(())
    })
    .await;
    world.wait_availability("market", "RT-1", 0).await;
    assert!(json_lines(&ok(&world, &["-o", "json", "channels", "list"]).await).is_empty());
    worker.shutdown().await;
}

#[tokio::test]
async fn channel_rules_change_one_skus_quantity_and_availability_reads_the_feed() {
    let world = World::start().await;
    let worker = world.stock_worker();
    receive(&world, "AV-A", &["wh"], 10).await;
    receive(&world, "AV-B", &["wh"], 10).await;
    ok(
        &world,
        &[
            "channels",
            "set",
            "web",
            "--kind",
            "web",
            "--locations",
            "wh",
        ],
    )
    .await;
    world.wait_availability("web", "AV-A", 10).await;
    world.wait_availability("web", "AV-B", 10).await;
    let b_before = world.availability("web", "AV-B").await.expect("feed");

    let rules = json(
        &ok(
            &world,
            &[
                "channels", "rules", "web", "AV-A", "--buffer", "3", "-o", "json",
            ],
        )
        .await,
    );
    assert_eq!(rules["event"]["type"], "channel_rules");
    world.wait_availability("web", "AV-A", 7).await;
    world.wait_stock_idle().await;
    assert_eq!(
        world.availability("web", "AV-B").await.expect("feed"),
        b_before,
        "the other SKU is untouched"
    );

    let one = json(&ok(&world, &["-o", "json", "availability", "web", "AV-A"]).await);
    let a = world.availability("web", "AV-A").await.expect("feed");
    assert_eq!(one["channel"], "web");
    assert_eq!(one["sku"], "AV-A");
    assert_eq!(one["available_to_sell"], 7);
    assert_eq!(one["previous"], 10);
    assert_eq!(one["pool"], 10);
    assert_eq!(one["version"].as_u64(), Some(a.version));
    let all = json_lines(&ok(&world, &["availability", "web", "-o", "json"]).await);
    let listed: BTreeMap<&str, i64> = all
        .iter()
        .map(|q| {
            (
                q["sku"].as_str().expect("sku"),
                q["available_to_sell"].as_i64().expect("a number"),
            )
        })
        .collect();
    assert_eq!(listed, BTreeMap::from([("AV-A", 7), ("AV-B", 10)]));
    let table = ok(&world, &["availability", "web"]).await;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["AV-A", "7"])),
        "{}",
        table.stdout
    );

    assert_eq!(
        stockctl(&world, &["availability", "web", "AV-C"])
            .await
            .code,
        5
    );
    assert_eq!(stockctl(&world, &["availability", "nothing"]).await.code, 5);

    ok(&world, &["channels", "rules", "web", "AV-A", "--clear"]).await;
    world.wait_availability("web", "AV-A", 10).await;
    worker.shutdown().await;
}

/// What `market` may sell of `sku`, as the model computes it from the levels in Redis.
async fn modelled(
    world: &World,
    sku: &str,
    stores: &[&str],
    rules: &AvailabilityRules,
    override_rules: Option<&AvailabilityRules>,
) -> i64 {
    let mut available = Vec::new();
    for store in stores {
        let (on_hand, reserved) = world.on_hand_reserved(sku, store).await;
        available.push(on_hand - reserved);
    }
    stockflow_shared::channels::quantity(&available, rules, override_rules).0
}

#[tokio::test]
async fn rebuild_restores_channel_state_and_reconcile_checks_it() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let stores = ["store-1", "store-2", "store-3"];
    receive(&world, "RB-X", &stores, 5).await;
    receive(&world, "RB-Y", &stores, 4).await;
    let rules = AvailabilityRules {
        buffer: Some(2),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set("c-market", channel("market", &stores, rules)))
        .await;
    world.wait_availability("market", "RB-X", 13).await;
    world.wait_availability("market", "RB-Y", 10).await;
    ok(
        &world,
        &["channels", "rules", "market", "RB-Y", "--percent", "50"],
    )
    .await;
    // (12 - 2) * 50%.
    world.wait_availability("market", "RB-Y", 5).await;
    world
        .publish(&event("pos-1", "RB-X", "store-1", sold(3)))
        .await;
    world
        .publish(&channel_fact("m-1", "RB-Y", "market", sold(2)))
        .await;
    world.wait_stock_idle().await;
    let half = AvailabilityRules {
        percent: Some(50),
        ..Default::default()
    };
    for (sku, override_rules) in [("RB-X", None), ("RB-Y", Some(&half))] {
        let expected = modelled(&world, sku, &stores, &rules, override_rules).await;
        world.wait_availability("market", sku, expected).await;
    }
    let reconciled = json(&ok(&world, &["-o", "json", "reconcile"]).await);
    assert_eq!(reconciled["agrees"], true, "{reconciled}");
    assert_eq!(reconciled["drift"], serde_json::json!([]));
    worker.shutdown().await;

    // Redis is lost; rebuild brings the channel state back from the ledger and the feed.
    let mut conn = world.redis.connection().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let rebuilt = ok(&world, &["rebuild"]).await;
    assert!(
        rebuilt
            .stdout
            .contains("2 channel quantities, 1 channel overrides, 3 known locations"),
        "{}",
        rebuilt.stdout
    );
    let mut feed = BTreeMap::new();
    for sku in ["RB-X", "RB-Y"] {
        let q = world.availability("market", sku).await.expect("feed");
        let hash: BTreeMap<String, String> = conn
            .hgetall(world.keys.channels(sku))
            .await
            .expect("hgetall");
        assert_eq!(
            (hash.get("q:market"), hash.get("v:market")),
            (
                Some(&q.available_to_sell.to_string()),
                Some(&q.version.to_string())
            ),
            "{sku}: {hash:?}"
        );
        assert!(!hash.contains_key("s:market"), "specs are the workers'");
        assert_eq!(
            hash.contains_key("o:market"),
            sku == "RB-Y",
            "{sku}: {hash:?}"
        );
        feed.insert(sku, q);
    }
    let known: BTreeSet<String> = conn
        .smembers(world.keys.locations())
        .await
        .expect("smembers");
    assert_eq!(
        known,
        stores
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    );

    // Work goes on: the next change publishes version + 1 with the quantity the rules give.
    let worker = world.stock_worker();
    for (i, sku) in ["RB-X", "RB-Y"].into_iter().enumerate() {
        world
            .publish(&event(&format!("pos-after-{i}"), sku, "store-2", sold(1)))
            .await;
        let override_rules = (sku == "RB-Y").then_some(&half);
        world.wait_stock_idle().await;
        let expected = modelled(&world, sku, &stores, &rules, override_rules).await;
        let after = wait_version(&world, "market", sku, feed[sku].version + 1).await;
        assert_eq!(after.version, feed[sku].version + 1, "{sku}");
        assert_eq!(after.available_to_sell, expected, "{sku}");
        assert_eq!(after.previous, feed[sku].available_to_sell, "{sku}");
    }
    let reconciled = json(&ok(&world, &["-o", "json", "reconcile"]).await);
    assert_eq!(reconciled["agrees"], true, "{reconciled}");

    // A channel quantity edited in Redis is drift of kind channel; --fix recomputes it.
    let before = world.availability("market", "RB-X").await.expect("feed");
    let _: () = conn
        .hset(world.keys.channels("RB-X"), "q:market", 99)
        .await
        .expect("hset");
    let drifted = stockctl(&world, &["-o", "json", "reconcile"]).await;
    assert_eq!(drifted.code, 4, "{}\n{}", drifted.stdout, drifted.stderr);
    let drifted = json(&drifted);
    assert_eq!(drifted["agrees"], false);
    assert_eq!(
        drifted["drift"],
        serde_json::json!([{
            "kind": "channel",
            "sku": "RB-X",
            "channel": "market",
            "expected": before.available_to_sell,
            "feed": before.available_to_sell,
            "version": before.version,
            "redis": 99,
        }])
    );
    let table = stockctl(&world, &["reconcile"]).await;
    assert_eq!(table.code, 4);
    assert!(
        table.stdout.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq(["RB-X", "market", "channel"])),
        "{}",
        table.stdout
    );
    let fixed = json(&ok(&world, &["-o", "json", "reconcile", "--fix"]).await);
    assert_eq!(fixed["agrees"], true, "{fixed}");
    assert_eq!(fixed["fix"]["recomputes"], 1);
    assert_eq!(fixed["fix"]["remaining"], serde_json::json!([]));
    let after = world.availability("market", "RB-X").await.expect("feed");
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.available_to_sell, before.available_to_sell);
    // The fix forgot the drifted number: the recompute starts afresh.
    assert_eq!(after.previous, 0);
    let held: i64 = conn
        .hget(world.keys.channels("RB-X"), "q:market")
        .await
        .expect("hget");
    assert_eq!(held, before.available_to_sell);

    // Redis lost its last writes (a failover, a kill before the AOF fsync): its version fell
    // below the feed's, so its next quantities are older than what the feed holds and are not
    // published. Reconcile sees the feed behind; --fix publishes the right quantity, newer.
    let stale = world.availability("market", "RB-Y").await.expect("feed");
    let _: () = conn
        .hset(world.keys.channels("RB-Y"), "v:market", 1)
        .await
        .expect("hset");
    world
        .publish(&event("pos-lost", "RB-Y", "store-2", sold(2)))
        .await;
    world.wait_stock_idle().await;
    let expected = modelled(&world, "RB-Y", &stores, &rules, Some(&half)).await;
    assert_eq!(
        world
            .availability("market", "RB-Y")
            .await
            .expect("feed")
            .version,
        stale.version,
        "an older version is not published over a newer one"
    );
    assert_ne!(
        expected, stale.available_to_sell,
        "the sale changes the quantity"
    );
    let fixed = json(&ok(&world, &["-o", "json", "reconcile", "--fix"]).await);
    assert_eq!(fixed["agrees"], true, "{fixed}");
    let repaired = world.availability("market", "RB-Y").await.expect("feed");
    assert!(repaired.version > stale.version, "{repaired:?}");
    assert_eq!(repaired.available_to_sell, expected);
    worker.shutdown().await;
}

/// An initial load leaves the channels to its end: each SKU's quantity of every channel is
/// published once, computed from all its rows, not once per row.
#[tokio::test]
async fn an_initial_load_publishes_each_skus_channel_quantity_once() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let stores = ["store-1", "store-2"];
    // The stores exist (a channel may only draw from a location with stock).
    receive(&world, "SEED", &stores, 1).await;
    let rules = AvailabilityRules {
        buffer: Some(1),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set("c-load", channel("market", &stores, rules)))
        .await;
    world.wait_availability("market", "SEED", 1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("opening.csv");
    let mut text = String::from("sku,location,on_hand\n");
    for i in 0..20 {
        for (n, store) in stores.iter().enumerate() {
            text.push_str(&format!("LOAD-{i:02},{store},{}\n", i + n + 1));
        }
    }
    std::fs::write(&file, text).expect("write csv");
    let ran = ok(
        &world,
        &[
            "import",
            file.to_str().expect("utf-8"),
            "--initial-load",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(json(&ran)["applied"], 40, "{}", ran.stdout);
    for i in 0..20i64 {
        let sku = format!("LOAD-{i:02}");
        // Rows of (i + 1) and (i + 2), buffer 1.
        let expected = (i + 1) + (i + 2) - 1;
        let feed = world.availability("market", &sku).await.expect("computed");
        assert_eq!(
            (feed.available_to_sell, feed.version),
            (expected, 1),
            "{sku}: one quantity, from both rows"
        );
    }
    worker.shutdown().await;
}
