//! Sales channels: what each may sell, computed with every change and published to the feed.

use stockflow_proto::v1::{AlertKind, AvailabilityRules};
use stockflow_tests::{
    events::{channel, channel_fact, channel_set},
    eventually, DEADLINE,
};

use crate::world::*;

fn marketplace_rules() -> AvailabilityRules {
    AvailabilityRules {
        buffer: Some(2),
        max_listed: Some(10),
        end_when_below: Some(3),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_marketplace_fed_by_three_stores_follows_every_change() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let sku = "SNEAKER-42";
    for (i, store) in ["store-1", "store-2", "store-3"].iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, store, received(5)))
            .await;
    }
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "c1",
            channel(
                "market",
                &["store-1", "store-2", "store-3"],
                marketplace_rules(),
            ),
        ))
        .await;
    // Pool 15, buffer 2 -> 13, at most 10.
    world.wait_availability("market", sku, 10).await;
    world.publish(&event("s1", sku, "store-1", sold(4))).await;
    world.wait_availability("market", sku, 9).await;
    world.publish(&event("s2", sku, "store-2", sold(5))).await;
    world.wait_availability("market", sku, 4).await;
    // Pool 4 - 2 = 2, below the end-when of 3: the marketplace lists nothing.
    world.publish(&event("s3", sku, "store-3", sold(2))).await;
    world.wait_availability("market", sku, 0).await;
    world
        .publish(&event("r4", sku, "store-1", received(5)))
        .await;
    world.wait_availability("market", sku, 7).await;
    let before = world.availability("market", sku).await.expect("feed");

    // The marketplace sells 9 while offering 7: taken from its stores in priority order,
    // recorded per store, and the crossing is raised once.
    world
        .publish(&channel_fact("m1", sku, "market", sold(9)))
        .await;
    world.wait_availability("market", sku, 0).await;
    let after = world.availability("market", sku).await.expect("feed");
    assert!(after.version > before.version);
    assert_eq!(after.cause_event_id, "m1");
    let ledger = world.ledger(sku).await;
    let parts: Vec<(&str, &str, i64)> = ledger
        .iter()
        .filter(|e| e.cause_event_id == "m1")
        .map(|e| {
            (
                e.location.as_str(),
                e.channel.as_str(),
                e.before.unwrap_or_default().on_hand - e.after.unwrap_or_default().on_hand,
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![("store-1", "market", 6), ("store-3", "market", 3)],
        "store-1 had 6, store-2 none, store-3 3"
    );
    let alerts = world.alerts(sku).await;
    let oversold: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::ChannelOversold as i32)
        .collect();
    assert_eq!(oversold.len(), 1, "{alerts:?}");
    assert_eq!((oversold[0].offered, oversold[0].sold), (7, 9));
    assert_eq!(oversold[0].channel, "market");
    worker.shutdown().await;
}

/// One feed message as a live reader saw it: (subject, version, quantity, stream sequence).
type Stored = (String, u64, i64, u64);

/// Every message the feed ever stored, as a live reader saw it (the stream itself keeps only
/// the newest per subject).
struct FeedRecorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Stored>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedRecorder {
    async fn start(world: &World) -> Self {
        use futures::StreamExt as _;
        use prost::Message as _;
        let stream = world
            .js
            .get_stream(stockflow_proto::subjects::AVAILABILITY)
            .await
            .expect("feed");
        let mut messages = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: "availability.>".into(),
                ..Default::default()
            })
            .await
            .expect("reader")
            .messages()
            .await
            .expect("messages");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let info = message.info().expect("jetstream message");
                let sequence = info.stream_sequence;
                let m = stockflow_proto::v1::ChannelAvailabilityChanged::decode(
                    message.payload.as_ref(),
                )
                .expect("decodes");
                into.lock().expect("lock").push((
                    message.subject.to_string(),
                    m.version,
                    m.available_to_sell,
                    sequence,
                ));
            }
        });
        Self { seen, task }
    }

    /// Waits until it has read everything the feed stored, then returns it.
    async fn caught_up(&self, world: &World) -> Vec<Stored> {
        let mut stream = world
            .js
            .get_stream(stockflow_proto::subjects::AVAILABILITY)
            .await
            .expect("feed");
        let last = stream.info().await.expect("info").state.last_sequence;
        eventually("the feed reader to catch up", DEADLINE, || async {
            let seen = self.seen.lock().expect("lock");
            (seen.last().map(|s| s.3) >= Some(last)).then(|| seen.clone())
        })
        .await
    }
}

impl Drop for FeedRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Versions never repeat and only grow per (channel, SKU), in the order the feed stored them.
fn assert_published_once_in_order(seen: &[Stored]) {
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for (subject, version, _, _) in seen {
        let held = last.entry(subject).or_default();
        assert!(
            version > held,
            "{subject}: version {version} stored after {held}"
        );
        *held = *version;
    }
}

/// What `channel` (over `locations`, with `rules`) may sell of `sku`, recomputed from the levels in
/// Redis by the model, independently of the scripts.
async fn recomputed(
    world: &World,
    sku: &str,
    locations: &[&str],
    rules: &AvailabilityRules,
) -> i64 {
    let mut available = Vec::new();
    for l in locations {
        let (on_hand, reserved) = world.on_hand_reserved(sku, l).await;
        available.push(on_hand - reserved);
    }
    stockflow_shared::channels::quantity(&available, rules, None).0
}

#[tokio::test]
async fn duplicates_and_kill_9_publish_each_change_once_and_match_a_recomputation() {
    use stockflow_tests::events::returned;
    let world = World::start().await;
    let stores = ["store-1", "store-2", "store-3"];
    let skus: Vec<String> = (0..6).map(|i| format!("CH-{i}")).collect();
    let mut child = world.stock_worker_process();
    for sku in &skus {
        for store in stores.iter().chain(&["wh"]) {
            world
                .publish(&event(
                    &format!("seed-{sku}-{store}"),
                    sku,
                    store,
                    received(30),
                ))
                .await;
        }
    }
    world.wait_stock_idle().await;
    let recorder = FeedRecorder::start(&world).await;
    let web_rules = AvailabilityRules {
        percent: Some(50),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set(
            "c-market",
            channel("market", &stores, marketplace_rules()),
        ))
        .await;
    world
        .publish_channel(&channel_set(
            "c-web",
            channel("web", &["wh", "store-1"], web_rules),
        ))
        .await;
    for sku in &skus {
        world.wait_availability("market", sku, 10).await;
    }

    // A stream of sales, returns and channel sales, every one sent twice (a POS retrying), while
    // the worker is killed -9 three times.
    let mut events = Vec::new();
    for i in 0..600 {
        let sku = &skus[i % skus.len()];
        let id = format!("x{i}");
        let e = match i % 5 {
            0 => channel_fact(&id, sku, "market", sold(1)),
            1 => event(&id, sku, "wh", sold(1)),
            2 => event(&id, sku, stores[i % 3], returned(1)),
            _ => event(&id, sku, stores[i % 3], sold(1)),
        };
        events.push(e.clone());
        events.push(e);
    }
    futures::future::join_all(events.iter().map(|e| world.publish(e))).await;
    // One ledger entry per distinct fact; a worker that got far before its kill leaves less to
    // wait for, never more than there is.
    let all = 24 + events.len() as u64 / 2;
    let mut seen = 0;
    for round in 1..=3u64 {
        seen = stockflow_tests::wait_for_count(
            &world.js,
            "STOCK_CHANGES",
            "stock.changes.>",
            (seen + 100).max(24 + 120 * round).min(all),
        )
        .await;
        child.kill();
        child = world.stock_worker_process();
    }
    world.wait_stock_idle().await;
    child.kill();

    let stored = recorder.caught_up(&world).await;
    assert_published_once_in_order(&stored);
    for sku in &skus {
        for (id, locations, rules) in [
            ("market", &stores[..], marketplace_rules()),
            ("web", &["wh", "store-1"][..], web_rules),
        ] {
            let feed = world.availability(id, sku).await.expect("feed");
            assert_eq!(
                feed.available_to_sell,
                recomputed(&world, sku, locations, &rules).await,
                "{id} {sku}"
            );
        }
        // Every fact applied exactly once: 600 events over 6 SKUs, 100 each.
        let ledger = world.ledger(sku).await;
        let causes: std::collections::HashSet<_> = ledger
            .iter()
            .map(|e| (e.cause_event_id.clone(), e.location.clone()))
            .collect();
        assert_eq!(causes.len(), ledger.len(), "{sku}: a ledger entry twice");
    }
}

#[tokio::test]
async fn a_feed_reader_that_was_away_reads_only_the_newest_quantity_per_sku() {
    use futures::StreamExt as _;
    use prost::Message as _;
    let world = World::start().await;
    let worker = world.stock_worker();
    let skus = ["AWAY-1", "AWAY-2", "AWAY-3"];
    for sku in skus {
        world
            .publish(&event(&format!("r-{sku}"), sku, "s1", received(50)))
            .await;
    }
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "c1",
            channel("shop", &["s1"], AvailabilityRules::default()),
        ))
        .await;
    for (i, sku) in skus.iter().cycle().take(30).enumerate() {
        world
            .publish(&event(&format!("s{i}"), sku, "s1", sold(1)))
            .await;
    }
    world.wait_stock_idle().await;
    for sku in skus {
        world.wait_availability("shop", sku, 40).await;
    }
    // A connector coming back reads the channel from the start: one message per SKU.
    let stream = world
        .js
        .get_stream(stockflow_proto::subjects::AVAILABILITY)
        .await
        .expect("feed");
    let mut messages = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: stockflow_proto::subjects::channel_availability("shop"),
            ..Default::default()
        })
        .await
        .expect("reader")
        .messages()
        .await
        .expect("messages");
    let mut read = Vec::new();
    while read.len() < skus.len() {
        let message = tokio::time::timeout(DEADLINE, messages.next())
            .await
            .expect("in time")
            .expect("message")
            .expect("ok");
        let pending = message.info().expect("info").pending;
        read.push(
            stockflow_proto::v1::ChannelAvailabilityChanged::decode(message.payload.as_ref())
                .expect("decodes"),
        );
        if pending == 0 {
            break;
        }
    }
    let mut got: Vec<(String, i64, u64)> = read
        .iter()
        .map(|m| (m.sku.clone(), m.available_to_sell, m.version))
        .collect();
    got.sort();
    // Each SKU once, at its newest version (the one Redis holds) and quantity.
    let mut newest = Vec::new();
    let mut redis = world.redis_connection().await;
    for sku in skus {
        let version: u64 =
            redis::AsyncCommands::hget(&mut redis, world.keys.channels(sku), "v:shop")
                .await
                .expect("version");
        newest.push((sku.to_owned(), 40, version));
    }
    assert_eq!(got, newest);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_rule_change_reaches_every_sku_and_a_removed_channel_lists_nothing() {
    let world = World::start().await;
    let worker = world.stock_worker();
    let skus: Vec<String> = (0..40).map(|i| format!("RULE-{i}")).collect();
    for (i, sku) in skus.iter().enumerate() {
        world
            .publish(&event(&format!("r{i}"), sku, "s1", received(10 + i as i64)))
            .await;
    }
    world.wait_stock_idle().await;
    let first = AvailabilityRules {
        buffer: Some(2),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set("v1", channel("mkt", &["s1"], first)))
        .await;
    for (i, sku) in skus.iter().enumerate() {
        world.wait_availability("mkt", sku, 8 + i as i64).await;
    }
    // New rules while sales keep coming: every SKU ends computed with the newest rules.
    let second = AvailabilityRules {
        buffer: Some(5),
        max_listed: Some(20),
        ..Default::default()
    };
    world
        .publish_channel(&channel_set("v2", channel("mkt", &["s1"], second)))
        .await;
    for (i, sku) in skus.iter().enumerate() {
        world
            .publish(&event(&format!("s{i}"), sku, "s1", sold(1)))
            .await;
    }
    world.wait_stock_idle().await;
    let mut versions = std::collections::HashSet::new();
    for (i, sku) in skus.iter().enumerate() {
        let expected = (10 + i as i64 - 1 - 5).min(20);
        world.wait_availability("mkt", sku, expected).await;
        versions.insert(
            world
                .availability("mkt", sku)
                .await
                .expect("feed")
                .rules_version,
        );
    }
    assert_eq!(
        versions.len(),
        1,
        "every SKU on the newest rules: {versions:?}"
    );

    // Removing the channel lists 0 everywhere, once.
    world
        .publish_channel(&stockflow_proto::v1::ChannelEvent {
            meta: Some(stockflow_proto::v1::EventMeta {
                event_id: "rm".into(),
                ..Default::default()
            }),
            channel_id: "mkt".into(),
            change: Some(stockflow_proto::v1::channel_event::Change::Removed(
                stockflow_proto::v1::ChannelRemoved {},
            )),
        })
        .await;
    for sku in &skus {
        world.wait_availability("mkt", sku, 0).await;
    }
    // A sale afterwards no longer touches it.
    let before = world
        .availability("mkt", &skus[39])
        .await
        .expect("feed")
        .version;
    world
        .publish(&event("after", &skus[39], "s1", received(5)))
        .await;
    world.wait_stock_idle().await;
    assert_eq!(
        world
            .availability("mkt", &skus[39])
            .await
            .expect("feed")
            .version,
        before
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn bad_channel_input_is_dead_lettered_with_the_field_it_names() {
    let world = World::start().await;
    let worker = world.stock_worker();
    world.publish(&event("r1", "DL-1", "s1", received(5))).await;
    world.wait_stock_idle().await;
    world
        .publish_channel(&channel_set(
            "bad-loc",
            channel("mkt", &["s1", "nowhere"], AvailabilityRules::default()),
        ))
        .await;
    world
        .publish_channel(&channel_set(
            "bad-pct",
            channel(
                "mkt",
                &["s1"],
                AvailabilityRules {
                    percent: Some(150),
                    ..Default::default()
                },
            ),
        ))
        .await;
    world
        .publish(&channel_fact("ghost", "DL-1", "nobody", sold(1)))
        .await;
    let reasons = world.wait_dead_letter_reasons(3).await;
    for needle in ["locations[1]", "rules.percent", "\"nobody\""] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle} in {reasons:?}"
        );
    }
    // Nothing was defined, and the stock is untouched.
    assert!(world.availability("mkt", "DL-1").await.is_none());
    assert_eq!(world.on_hand_reserved("DL-1", "s1").await, (5, 0));
    worker.shutdown().await;
}

/// Property test: the channel quantity the scripts compute, on a real Redis, equals the model's
/// (`shared::channels::quantity`) for random levels, safety stocks, rules and SKU overrides —
/// after every fact, including channel sales taken across locations.
#[test]
fn the_scripts_apply_the_rules_as_the_model_does() {
    use proptest::prelude::*;
    use stock_worker::{
        fact::{Fact, Op},
        Applied,
    };
    use stockflow_tests::{NatsServer, RedisServer};

    const LOCATIONS: [&str; 3] = ["a", "b", "c"];
    let rules = || {
        (
            prop::option::of(0..8i64),
            prop::option::of(0..=100i64),
            prop::option::of(0..40i64),
            prop::option::of(0..6i64),
        )
            .prop_map(
                |(buffer, percent, max_listed, end_when_below)| AvailabilityRules {
                    buffer,
                    percent,
                    max_listed,
                    end_when_below,
                    own_reservations_only: None,
                    ..AvailabilityRules::default()
                },
            )
    };
    let op = prop_oneof![
        (1..20i64, 0..3usize).prop_map(|(q, l)| (Op::Received(q), l)),
        (1..20i64, 0..3usize).prop_map(|(q, l)| (Op::Sold(q), l)),
        (0..6i64, 0..3usize).prop_map(|(s, l)| (
            Op::PolicySet {
                threshold: None,
                safety_stock: Some(s),
                location_priority: String::new(),
                backorder: None,
            },
            l
        )),
        // A channel sale: location usize::MAX stands for "the channel".
        (1..15i64).prop_map(|q| (Op::Sold(q), usize::MAX)),
    ];

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let (handler, kv, book, conn) = runtime.block_on(async {
        let conn = stockflow_shared::connect::RedisSettings::local(&redis.url(), "sf")
            .connect()
            .await
            .expect("redis");
        let client = async_nats::connect(nats.url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let book = stockflow_tests::channel_book(&js).await;
        let kv = js
            .get_key_value(stockflow_shared::topology::CHANNELS)
            .await
            .expect("bucket");
        let handler = stock_worker::StockHandler::with(
            conn.clone(),
            js,
            stockflow_shared::keys::Keys::new("sf"),
            3600,
            book.clone(),
        );
        (handler, kv, book, conn)
    });
    let keys = stockflow_shared::keys::Keys::new("sf");
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        channel_rules in rules(),
        override_rules in prop::option::of(rules()),
        most_available in any::<bool>(),
        steps in prop::collection::vec(op, 1..25),
    )| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sku = format!("PROP-CH-{n}");
        let id = format!("ch-{n}");
        runtime.block_on(async {
            // Every location has stock before the channel exists, as a real setup has.
            let mut steps: Vec<(Op, usize)> = steps.clone();
            for l in 0..3 {
                steps.insert(0, (Op::Received(1), l));
            }
            let mut definition = channel(&id, &LOCATIONS, channel_rules);
            if most_available {
                definition.allocation = stockflow_proto::v1::AllocationStrategy::MostAvailable.into();
            }
            let revision = kv
                .put(&id, prost::Message::encode_to_vec(&definition).into())
                .await
                .expect("put");
            book.at_least(&id, revision, DEADLINE).await.expect("book").expect("known");
            let mut facts = Vec::new();
            if let Some(o) = override_rules {
                facts.push(Fact {
                    meta: Default::default(),
                    sku: sku.clone(),
                    location: String::new(),
                    channel: id.clone(),
                    op: Op::ChannelRules { channel: id.clone(), rules: o },
                });
            }
            for (op, l) in steps {
                let (location, channel) = match LOCATIONS.get(l) {
                    Some(location) => (location.to_string(), String::new()),
                    None => (String::new(), id.clone()),
                };
                facts.push(Fact { meta: Default::default(), sku: sku.clone(), location, channel, op });
            }
            let mut on_hand = [0i64; 3];
            let mut safety = [0i64; 3];
            for (i, mut fact) in facts.into_iter().enumerate() {
                fact.meta.event_id = format!("e{i}");
                let applied = handler.apply(&fact).await.expect("script runs");
                let Applied::New(outcome) = applied else {
                    prop_assert!(false, "must apply: {applied:?}");
                    unreachable!()
                };
                for c in &outcome.changes {
                    if let Some(l) = LOCATIONS.iter().position(|x| *x == c.location) {
                        on_hand[l] = c.after.on_hand;
                        safety[l] = c.after.safety_stock;
                    }
                }
                let available: Vec<i64> = (0..3).map(|l| on_hand[l] - safety[l]).collect();
                let (expected, pool) = stockflow_shared::channels::quantity(
                    &available,
                    &channel_rules,
                    override_rules.as_ref(),
                );
                let mut redis = conn.clone();
                let stored: Option<i64> = redis::AsyncCommands::hget(
                    &mut redis,
                    keys.channels(&sku),
                    format!("q:{id}"),
                )
                .await
                .expect("hget");
                prop_assert_eq!(stored, Some(expected), "after {:?} (pool {})", fact.op, pool);
                if let Some(change) = outcome.channels.iter().find(|c| c.channel == id) {
                    prop_assert_eq!(change.after, expected);
                    prop_assert_eq!(change.pool, pool);
                }
            }
            Ok(())
        })?;
    });
}
