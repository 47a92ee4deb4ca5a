//! A worker killed with half-applied batches in flight: facts applied in Redis (many per
//! `apply_stock` call), some of their derived messages stored, none of their inputs acked. The
//! redelivered batches change nothing twice and lose nothing.

use std::collections::HashSet;

use stockflow_proto::subjects;
use stockflow_shared::topology;
use stockflow_tests::{eventually, DEADLINE};

use crate::world::*;

#[tokio::test]
async fn a_worker_killed_with_half_applied_batches_in_flight_loses_nothing_and_counts_nothing_twice(
) {
    let world = World::start().await;
    let (n, skus) = (600, 5);
    let sku = |i: usize| format!("BATCH-{}", i % skus);
    // Receipts and sales interleaved, several per SKU in every batch.
    let events: Vec<_> = (0..n)
        .map(|i| {
            let change = if i % 3 == 2 { sold(1) } else { received(2) };
            event(&format!("b{i}"), &sku(i), "store", change)
        })
        .collect();
    // The worker checks the topology as it starts: let it start and settle first.
    let mut child = world.stock_worker_process();
    world
        .publish(&event("warm-up", "WARM", "store", received(1)))
        .await;
    world.wait_stock_idle().await;
    let spec = topology::stock_workers(&world.topology)[0];
    let acked = |world: &World| {
        let js = world.js.clone();
        async move {
            js.get_stream(spec.stream)
                .await
                .expect("input stream")
                .consumer_info(spec.durable)
                .await
                .expect("consumer info")
                .ack_floor
                .stream_sequence
        }
    };
    let floor = acked(&world).await;

    // The ledger refuses every entry while the worker runs (its subjects are taken away; the
    // alerts stream still stores): each fact is applied in Redis, some alerts are stored, no
    // ledger entry is, so no input is acked.
    let ledger = world
        .js
        .get_stream(subjects::STOCK_CHANGES)
        .await
        .expect("ledger stream");
    let original = ledger.get_info().await.expect("ledger info").config;
    let mut held = original.clone();
    held.subjects = vec!["stock.changes-held-by-test".into()];
    world.js.update_stream(&held).await.expect("ledger held");
    futures::future::join_all(events.iter().map(|e| world.publish(e))).await;

    let mut redis = world.redis_connection().await;
    let pattern = format!("{}:*:evt:*", world.keys.prefix());
    let applied = eventually("more than a batch applied in Redis", DEADLINE, || {
        let (mut redis, pattern) = (redis.clone(), pattern.clone());
        async move {
            let found = redis.scan_match(&pattern).await.expect("scan").len();
            (found > 128).then_some(found)
        }
    })
    .await;
    assert_eq!(
        acked(&world).await,
        floor,
        "nothing acked while the ledger is held"
    );
    child.kill();
    assert_eq!(acked(&world).await, floor, "nothing acked before the kill");
    let mut alerts_before = 0;
    for s in 0..skus {
        alerts_before += world.alerts(&sku(s)).await.len();
    }
    assert!(
        alerts_before > 0,
        "some derived messages were stored before the kill"
    );
    assert!(applied <= n);
    // What batching did here (not asserted: it depends on how fast Redis answers).
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .expect("info");
    let calls = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum::<u64>();
    eprintln!("{applied} facts applied before the kill; {calls} script calls in all");

    // The ledger is back; a new worker gets every input again.
    world
        .js
        .update_stream(&original)
        .await
        .expect("ledger restored");
    let mut child = world.stock_worker_process();
    world.wait_stock_idle().await;
    child.kill();

    for s in 0..skus {
        let sku = sku(s);
        let mine: Vec<_> = (0..n).filter(|i| i % skus == s).collect();
        let expected: i64 = mine.iter().map(|i| if i % 3 == 2 { -1 } else { 2 }).sum();
        assert_eq!(
            world.on_hand_reserved(&sku, "store").await,
            (expected, 0),
            "{sku}: every fact applied once"
        );
        let entries = world.ledger(&sku).await;
        let causes: HashSet<_> = entries.iter().map(|e| e.cause_event_id.clone()).collect();
        assert_eq!(causes.len(), entries.len(), "{sku}: a ledger entry twice");
        assert_eq!(
            entries.len(),
            mine.len(),
            "{sku}: one ledger entry per fact"
        );
        let alerts = world.alerts(&sku).await;
        let raised: HashSet<_> = alerts
            .iter()
            .map(|a| (a.cause_event_id.clone(), a.kind, a.location.clone()))
            .collect();
        assert_eq!(raised.len(), alerts.len(), "{sku}: an alert raised twice");
    }
    // Every fact has its dedup record, marked published once its ledger entry was stored.
    let mut conn = world.redis.connection().await;
    let records = redis.scan_match(&pattern).await.expect("scan");
    assert_eq!(records.len(), n + 1, "one dedup record per fact");
    for key in records {
        let published: Option<String> = redis::AsyncCommands::hget(&mut conn, &key, "p")
            .await
            .expect("hget");
        assert_eq!(published.as_deref(), Some("1"), "{key} marked published");
    }
}
