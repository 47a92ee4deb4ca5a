//! The partitioned stock input and ledger (`STOCKFLOW_STOCK_PARTITIONS=3`): a nats-server with the
//! three partition mappings, three `STOCK_EVENTS_<p>` streams with a `stock-worker` consumer each,
//! one worker process reading all three, and three `STOCK_CHANGES_<p>` ledger streams with a
//! `notify-worker` consumer each.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_nats::HeaderMap;
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{
        stock_event::Change, Counted, EventMeta, Received, Sold, StockChanged, StockEvent,
        StockEventRejected,
    },
};
use stockflow_shared::topology::{self, Mode, TopologyError, TopologySettings};
use stockflow_tests::{count, read_stream};

use crate::world::World;

const PARTITIONS: usize = 3;

fn fact(event_id: &str, sku: &str, change: Change) -> StockEvent {
    StockEvent {
        meta: Some(EventMeta {
            event_id: event_id.to_owned(),
            source: "test:partitions".into(),
            ..Default::default()
        }),
        sku: sku.to_owned(),
        location: "wh".into(),
        change: Some(change),
        ..Default::default()
    }
}

/// Publishes on the producers' subject `stock.events.<sku-token>` with `msg_id`; whether
/// JetStream reported it a duplicate, and the stream it landed in.
async fn publish(world: &World, event: &StockEvent, msg_id: &str) -> (bool, String) {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    let ack = world
        .js
        .publish_with_headers(
            subjects::stock_event(&event.sku),
            headers,
            event.encode_to_vec().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    (ack.duplicate, ack.stream)
}

/// One partition's consumer deleted: the worker serving `/readyz` at `addr` turns not ready and
/// names that partition's check; `setup` declares the consumer again and the worker re-binds by
/// itself.
async fn consumer_gone_and_back(
    world: &World,
    addr: std::net::SocketAddr,
    stream: &str,
    durable: &str,
) {
    world
        .js
        .get_stream(stream)
        .await
        .expect("partition")
        .delete_consumer(durable)
        .await
        .expect("deleted");
    let check = format!("consumer_{stream}");
    stockflow_tests::eventually("not ready", stockflow_tests::DEADLINE, || async {
        stockflow_tests::http_get(addr, "/readyz")
            .await
            .filter(|(status, body)| *status == 503 && body.contains(&check))
    })
    .await;
    topology::ensure(&world.js, &world.topology, Mode::Verify)
        .await
        .expect("declared again");
    stockflow_tests::eventually("ready again", stockflow_tests::DEADLINE, || async {
        stockflow_tests::http_get(addr, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
}

/// A subscriptions file in `dir` sending every `stock_changed` to `receiver`; its path.
fn ledger_subscription(dir: &tempfile::TempDir, receiver: &crate::notify::Receiver) -> String {
    crate::notify::subscriptions_file(
        dir,
        serde_json::json!([{"id": "ledger", "url": receiver.url, "events": ["stock_changed"]}]),
    )
}

#[tokio::test]
async fn each_sku_lives_in_one_partition_and_levels_match_the_model() {
    let world = World::start_partitioned(PARTITIONS).await;
    let stock_streams: Vec<String> = (0..PARTITIONS)
        .map(subjects::stock_events_partition)
        .collect();
    assert!(
        world.js.get_stream(subjects::STOCK_EVENTS).await.is_err(),
        "no unpartitioned STOCK_EVENTS next to the partitions"
    );
    for (p, name) in stock_streams.iter().enumerate() {
        let mut stream = world.js.get_stream(name).await.expect("partition stream");
        let info = stream.info().await.expect("info");
        assert_eq!(info.config.subjects, vec![format!("stock.events.{p}.*")]);
        stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("stock-worker")
            .await
            .expect("a stock-worker consumer per partition");
    }
    let worker = world.stock_worker();

    // 60 SKUs (one needs the encoded token), three facts each.
    let mut skus: Vec<String> = (0..59).map(|i| format!("P-{i}")).collect();
    skus.push("odd sku.with dots".into());
    let mut model: HashMap<String, i64> = HashMap::new();
    let mut events = 0u64;
    for (i, sku) in skus.iter().enumerate() {
        let steps = [
            (
                format!("e{i}-r1"),
                Change::Received(Received { quantity: 20 }),
                20,
            ),
            (
                format!("e{i}-s1"),
                Change::Sold(Sold {
                    quantity: 1 + (i as i64 % 5),
                }),
                -(1 + (i as i64 % 5)),
            ),
            (
                format!("e{i}-r2"),
                Change::Received(Received {
                    quantity: i as i64 + 1,
                }),
                i as i64 + 1,
            ),
        ];
        for (id, change, delta) in steps {
            let (duplicate, _) = publish(&world, &fact(&id, sku, change), &id).await;
            assert!(!duplicate);
            *model.entry(sku.clone()).or_default() += delta;
            events += 1;
        }
    }
    // Duplicates: the same Nats-Msg-Id is dropped by the partition's stream, which is the same
    // stream for the same SKU; the same event_id under a new message id is stored again and
    // absorbed by the worker.
    for (i, sku) in skus.iter().enumerate().step_by(7) {
        let id = format!("e{i}-r1");
        let again = fact(&id, sku, Change::Received(Received { quantity: 20 }));
        let (duplicate, stream) = publish(&world, &again, &id).await;
        assert!(duplicate, "{sku}: same Nats-Msg-Id, same partition");
        assert!(stock_streams.contains(&stream), "{stream}");
        let (duplicate, _) = publish(&world, &again, &format!("{id}-resent")).await;
        assert!(!duplicate);
    }
    // Stale counts: refused, each with a rejection on `stock.outcomes.<sku-token>`.
    let mut stale = 0u64;
    for (i, sku) in skus.iter().enumerate().step_by(11) {
        let id = format!("e{i}-stale");
        let count = Change::Counted(Counted {
            on_hand: 1,
            expected_on_hand: Some(999_999),
        });
        publish(&world, &fact(&id, sku, count), &id).await;
        stale += 1;
    }

    world.wait_stock_idle().await;

    // Where each SKU's facts are: exactly one partition, on `stock.events.<p>.<sku-token>`.
    let mut partitions_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut per_partition = vec![0u64; PARTITIONS];
    for (p, name) in stock_streams.iter().enumerate() {
        for message in read_stream(&world.js, name, &format!("stock.events.{p}.*")).await {
            let event = StockEvent::decode(message.payload.clone()).expect("a fact");
            assert_eq!(
                message.subject.as_str(),
                format!("stock.events.{p}.{}", subjects::encode_token(&event.sku))
            );
            partitions_of.entry(event.sku).or_default().insert(p);
            per_partition[p] += 1;
        }
    }
    assert_eq!(partitions_of.len(), skus.len());
    for (sku, partitions) in &partitions_of {
        assert_eq!(partitions.len(), 1, "{sku} is in partitions {partitions:?}");
    }
    assert!(
        per_partition.iter().all(|n| *n > 0),
        "every partition gets facts: {per_partition:?}"
    );
    println!("facts per partition: {per_partition:?}");
    let letters = stockflow_cli::ctl::dlq::list(&world.js)
        .await
        .expect("list");
    assert!(letters.is_empty(), "{letters:?}");

    for sku in &skus {
        assert_eq!(
            world.on_hand_reserved(sku, "wh").await.0,
            model[sku],
            "{sku}"
        );
    }
    // The ledger: no unpartitioned STOCK_CHANGES; each SKU's entries and rejections all in the
    // ledger partition with its input partition's index, on `stock.<kind>.<p>.<sku-token>`.
    assert!(
        world.js.get_stream(subjects::STOCK_CHANGES).await.is_err(),
        "no unpartitioned STOCK_CHANGES next to the partitions"
    );
    let mut ledger_partitions_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let (mut entries, mut rejections) = (0u64, 0u64);
    for p in 0..PARTITIONS {
        let name = subjects::stock_changes_partition(p);
        let mut stream = world.js.get_stream(&name).await.expect("ledger partition");
        let info = stream.info().await.expect("info");
        assert_eq!(
            info.config.subjects,
            vec![
                format!("stock.changes.{p}.*"),
                format!("stock.outcomes.{p}.*")
            ]
        );
        stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("notify-worker")
            .await
            .expect("a notify-worker consumer per ledger partition");
        for message in read_stream(&world.js, &name, "stock.changes.>").await {
            let entry = StockChanged::decode(message.payload.clone()).expect("a ledger entry");
            assert_eq!(
                message.subject.as_str(),
                format!("stock.changes.{p}.{}", subjects::encode_token(&entry.sku))
            );
            ledger_partitions_of.entry(entry.sku).or_default().insert(p);
            entries += 1;
        }
        for message in read_stream(&world.js, &name, "stock.outcomes.>").await {
            let rejected =
                StockEventRejected::decode(message.payload.clone()).expect("a rejection");
            assert_eq!(
                message.subject.as_str(),
                format!(
                    "stock.outcomes.{p}.{}",
                    subjects::encode_token(&rejected.sku)
                )
            );
            assert_eq!(
                partitions_of[&rejected.sku],
                BTreeSet::from([p]),
                "{}",
                rejected.sku
            );
            rejections += 1;
        }
    }
    assert_eq!(
        ledger_partitions_of, partitions_of,
        "a SKU's ledger partition has its input partition's index"
    );
    assert_eq!(entries, events, "one ledger entry per distinct event");
    assert_eq!(rejections, stale, "one rejection per stale count");
    worker.shutdown().await;

    // Redis lost: `stockctl rebuild` restores every level from the three ledger partitions, and
    // `reconcile` finds nothing to correct.
    let mut conn = world.redis.connection().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let rebuilt = crate::cli::stockctl(&world, &["rebuild"]).await;
    assert_eq!(rebuilt.code, 0, "{}\n{}", rebuilt.stdout, rebuilt.stderr);
    for sku in &skus {
        assert_eq!(
            world.on_hand_reserved(sku, "wh").await.0,
            model[sku],
            "{sku} rebuilt"
        );
    }
    let reconciled = crate::cli::stockctl(&world, &["reconcile"]).await;
    assert_eq!(
        reconciled.code, 0,
        "{}\n{}",
        reconciled.stdout, reconciled.stderr
    );
}

#[tokio::test]
async fn the_notify_worker_delivers_ledger_entries_from_every_partition() {
    use crate::notify::{fast, notify_worker, Receiver};
    let world = World::start_partitioned(PARTITIONS).await;
    let receiver = Receiver::start(&[], std::time::Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = ledger_subscription(&dir, &receiver);
    let stock = world.stock_worker();
    let notify = notify_worker(&world, &fast(&file, &[]));

    let skus: Vec<String> = (0..30).map(|i| format!("N-{i}")).collect();
    for (i, sku) in skus.iter().enumerate() {
        let id = format!("n{i}");
        publish(
            &world,
            &fact(&id, sku, Change::Received(Received { quantity: 5 })),
            &id,
        )
        .await;
    }
    world.wait_stock_idle().await;
    let mut used = 0;
    for spec in topology::notify_stock_changes(&world.topology) {
        world.wait_idle(spec.stream, spec.durable).await;
        if count(&world.js, spec.stream, "stock.changes.>").await > 0 {
            used += 1;
        }
    }
    assert_eq!(used, PARTITIONS, "every ledger partition holds entries");
    let received = stockflow_tests::eventually(
        "a webhook per ledger entry",
        stockflow_tests::DEADLINE,
        || async {
            let received = receiver.received();
            (received.len() >= skus.len()).then_some(received)
        },
    )
    .await;
    receiver.assert_signatures_verified();
    let delivered: BTreeSet<String> = received
        .iter()
        .map(|r| {
            assert_eq!(r.event_type, "stock_changed");
            let sku = r.body["data"]["sku"].as_str().expect("sku").to_owned();
            // The producers' subject, not the partition the mapping stored it in.
            assert_eq!(r.body["subject"], subjects::stock_changed(&sku));
            sku
        })
        .collect();
    assert_eq!(delivered, skus.iter().cloned().collect::<BTreeSet<_>>());
    // Delivery is at-least-once: count distinct event ids, one per ledger entry.
    let ids: BTreeSet<&str> = received.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), skus.len(), "one event id per ledger entry");
    notify.shutdown().await;
    stock.shutdown().await;
}

#[tokio::test]
async fn import_waits_on_every_partition_and_a_replayed_dead_letter_lands_again() {
    let world = World::start_partitioned(PARTITIONS).await;
    let worker = world.stock_worker();

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("count.csv");
    let rows: Vec<(String, i64)> = (0..40).map(|i| (format!("IMP-{i}"), 100 + i)).collect();
    let mut csv = String::from("sku,location,on_hand\n");
    for (sku, on_hand) in &rows {
        csv.push_str(&format!("{sku},wh,{on_hand}\n"));
    }
    std::fs::write(&file, csv).expect("write csv");
    let file = file.to_str().expect("utf-8 path");
    let ran = crate::cli::stockctl(&world, &["import", file, "--wait"]).await;
    assert_eq!(ran.code, 0, "{}\n{}", ran.stdout, ran.stderr);
    assert_eq!(ran.figure("applied"), rows.len(), "{}", ran.stdout);
    // Read at once, no waiting: `--wait` returned only after every partition was applied.
    for (sku, on_hand) in &rows {
        assert_eq!(world.on_hand_reserved(sku, "wh").await.0, *on_hand, "{sku}");
    }
    let used: BTreeSet<String> = {
        let mut used = BTreeSet::new();
        for p in 0..PARTITIONS {
            let name = subjects::stock_events_partition(p);
            if stockflow_cli::last_sequence(&world.js, &name)
                .await
                .expect("partition")
                > 0
            {
                used.insert(name);
            }
        }
        used
    };
    assert!(
        used.len() > 1,
        "the import spread over partitions: {used:?}"
    );
    // The chart's `helm test`: a receipt on the SKU's subject, its ledger entry back.
    let selftest = crate::cli::stockctl(&world, &["selftest"]).await;
    assert_eq!(selftest.code, 0, "{}\n{}", selftest.stdout, selftest.stderr);
    assert!(
        selftest.stdout.contains("selftest ok"),
        "{}",
        selftest.stdout
    );

    // A malformed fact is dead-lettered from its partition with the mapped subject; replayed,
    // it goes through the mapping again and lands in the same partition, on its SKU's subject
    // (the worker refuses it for what it is, not for a subject mismatch).
    let bad = fact("bad-1", "IMP-3", Change::Received(Received { quantity: 0 }));
    let (_, stream) = publish(&world, &bad, "bad-1").await;
    world.wait_stock_idle().await;
    let letters = stockflow_cli::ctl::dlq::list(&world.js)
        .await
        .expect("list");
    let [letter] = letters.as_slice() else {
        panic!("one dead letter: {letters:?}");
    };
    assert_eq!(letter.original_stream(), stream);
    assert_eq!(letter.subject, subjects::dead_letter(&stream));
    let partition = subjects::stock_events_partition_of(&stream).expect("a partition");
    assert_eq!(
        letter.original_subject(),
        format!("stock.events.{partition}.IMP-3")
    );
    let ack = stockflow_cli::ctl::dlq::replay(&world.js, letter)
        .await
        .expect("replayed");
    assert_eq!(ack.stream, stream, "the replay lands in the same partition");
    world.wait_stock_idle().await;
    let letters = stockflow_cli::ctl::dlq::list(&world.js)
        .await
        .expect("list");
    let [again] = letters.as_slice() else {
        panic!("dead-lettered again: {letters:?}");
    };
    let reason = again
        .headers
        .get(subjects::HEADER_DEAD_LETTER_REASON)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(
        reason.contains("quantity") && !reason.contains("published on"),
        "{reason}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_first_setup_that_stopped_half_way_is_completed() {
    let nats = stockflow_tests::NatsServer::start_with(&subjects::stock_mappings(4));
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let two = TopologySettings {
        stock_partitions: 2,
        ..TopologySettings::default()
    };
    let four = TopologySettings {
        stock_partitions: 4,
        ..TopologySettings::default()
    };
    topology::ensure(&js, &two, Mode::Verify)
        .await
        .expect("two");
    // No fact stored yet: the missing partitions are created.
    topology::ensure(&js, &four, Mode::Verify)
        .await
        .expect("completed to four");
    assert!(js
        .get_stream(subjects::stock_events_partition(3))
        .await
        .is_ok());
    // Going back would leave STOCK_EVENTS_2 and _3 behind: refused even while empty.
    let err = topology::ensure(&js, &two, Mode::Update)
        .await
        .expect_err("fewer partitions");
    assert!(matches!(err, TopologyError::Partitions { .. }), "{err}");
}

#[tokio::test]
async fn setup_refuses_another_number_of_partitions_in_every_mode() {
    let world = World::start_partitioned(PARTITIONS).await;
    // A deployment that has stored facts.
    publish(
        &world,
        &fact("f-1", "A", Change::Received(Received { quantity: 1 })),
        "f-1",
    )
    .await;
    for partitions in [1, 2, 4] {
        // 4 would only add STOCK_EVENTS_3, but the servers' mapping and so every SKU's
        // partition change with the number: refused like the others.
        let settings = TopologySettings {
            stock_partitions: partitions,
            ..TopologySettings::default()
        };
        for mode in [Mode::Verify, Mode::Update] {
            let err = topology::ensure(&world.js, &settings, mode)
                .await
                .expect_err("another layout");
            assert!(matches!(err, TopologyError::Partitions { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("STOCKFLOW_STOCK_PARTITIONS"), "{text}");
            assert!(text.contains("STOCK_EVENTS_2"), "{text}");
        }
    }
    // Nothing was created or removed by the refused attempts.
    assert!(world.js.get_stream(subjects::STOCK_EVENTS).await.is_err());
    assert!(world
        .js
        .get_stream(subjects::stock_events_partition(3))
        .await
        .is_err());
    topology::ensure(&world.js, &world.topology, Mode::Verify)
        .await
        .expect("the declared layout still verifies");
}

#[tokio::test]
async fn without_the_servers_mapping_a_fact_is_refused_not_stored_unread() {
    // Partition streams declared, but the server lacks the mapping: no stream takes the
    // producers' subject, so the publish fails instead of storing where no worker reads.
    let nats = stockflow_tests::NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let settings = TopologySettings {
        stock_partitions: 2,
        ..TopologySettings::default()
    };
    topology::ensure(&js, &settings, Mode::Verify)
        .await
        .expect("declared");
    let event = fact("e-1", "A1", Change::Received(Received { quantity: 1 }));
    let stored = match js
        .publish(subjects::stock_event("A1"), event.encode_to_vec().into())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!stored, "a fact was acknowledged without a stream for it");
    for p in 0..2 {
        assert_eq!(
            stockflow_cli::last_sequence(&js, &subjects::stock_events_partition(p))
                .await
                .expect("partition"),
            0
        );
    }
}

#[tokio::test]
async fn readiness_names_each_partition_and_the_gauges_carry_its_stream() {
    let world = World::start_partitioned(PARTITIONS).await;
    let port = stockflow_tests::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let addr_text = addr.to_string();
    let _worker = stockflow_tests::KillOnDrop(
        world
            .worker_command(
                "stock-worker",
                &[("STOCKFLOW_METRICS_ADDR", addr_text.as_str())],
            )
            .spawn()
            .expect("spawn stock-worker"),
    );
    let ready = || async {
        stockflow_tests::http_get(addr, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    };
    stockflow_tests::eventually("ready", stockflow_tests::DEADLINE, ready).await;
    let metrics = stockflow_tests::eventually("gauges", stockflow_tests::DEADLINE, || async {
        stockflow_tests::http_get(addr, "/metrics")
            .await
            .map(|(_, body)| body)
            .filter(|body| body.contains("STOCK_EVENTS_2"))
    })
    .await;
    for p in 0..PARTITIONS {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("stockflow_ready{") && l.contains(&format!("\"STOCK_EVENTS_{p}\""))
            })
            .unwrap_or_else(|| panic!("no stockflow_ready for partition {p}:\n{metrics}"));
        assert!(line.ends_with(" 1"), "{line}");
    }

    consumer_gone_and_back(
        &world,
        addr,
        &subjects::stock_events_partition(1),
        "stock-worker",
    )
    .await;
}

#[tokio::test]
async fn setup_refuses_another_number_of_partitions_once_the_ledger_holds_entries() {
    let nats = stockflow_tests::NatsServer::start_with(&subjects::stock_mappings(3));
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    let three = TopologySettings {
        stock_partitions: 3,
        ..TopologySettings::default()
    };
    topology::ensure(&js, &three, Mode::Verify)
        .await
        .expect("three");
    // No fact in the input, but one ledger entry (its input since removed, say): the ledger is
    // kept forever, so its layout is as fixed as the input's.
    let ack = js
        .publish(subjects::stock_changed("A1"), "entry".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    assert!(
        subjects::stock_changes_partition_of(&ack.stream).is_some(),
        "{}",
        ack.stream
    );
    let four = TopologySettings {
        stock_partitions: 4,
        ..TopologySettings::default()
    };
    for mode in [Mode::Verify, Mode::Update] {
        let err = topology::ensure(&js, &four, mode)
            .await
            .expect_err("another ledger layout");
        assert!(matches!(err, TopologyError::Partitions { .. }), "{err}");
        assert!(err.to_string().contains("STOCK_CHANGES_2"), "{err}");
    }
    // Nothing was created: both layouts are checked before any stream is.
    for missing in [
        subjects::stock_events_partition(3),
        subjects::stock_changes_partition(3),
    ] {
        assert!(js.get_stream(&missing).await.is_err(), "{missing}");
    }
    topology::ensure(&js, &three, Mode::Verify)
        .await
        .expect("the declared layout still verifies");
}

#[tokio::test]
async fn the_notify_worker_is_ready_per_ledger_partition() {
    use crate::notify::{Receiver, SECRET};
    let world = World::start_partitioned(PARTITIONS).await;
    let receiver = Receiver::start(&[], std::time::Duration::ZERO).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = ledger_subscription(&dir, &receiver);
    let port = stockflow_tests::free_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let addr_text = addr.to_string();
    let _worker = stockflow_tests::KillOnDrop(
        world
            .worker_command(
                "notify-worker",
                &[
                    ("STOCKFLOW_METRICS_ADDR", addr_text.as_str()),
                    ("STOCKFLOW_WEBHOOKS_FILE", file.as_str()),
                    ("STOCKFLOW_WEBHOOK_SECRET", SECRET),
                ],
            )
            .spawn()
            .expect("spawn notify-worker"),
    );
    let ready = || async {
        stockflow_tests::http_get(addr, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    };
    stockflow_tests::eventually("ready", stockflow_tests::DEADLINE, ready).await;

    consumer_gone_and_back(
        &world,
        addr,
        &subjects::stock_changes_partition(1),
        "notify-worker",
    )
    .await;
}
