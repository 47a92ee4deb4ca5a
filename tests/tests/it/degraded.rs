//! Dependencies that go away and come back: nothing is dead-lettered, nothing is lost, the
//! worker recovers by itself.

use stockflow_proto::subjects;

use crate::world::*;

#[tokio::test]
async fn events_in_flight_when_redis_goes_down_are_retried_not_dead_lettered() {
    let mut world = World::start().await;
    let worker = world.stock_worker();
    let events: Vec<_> = (0..300)
        .map(|i| event(&format!("e{i}"), "BOLT", "wh", received(1)))
        .collect();
    let publishing = futures::future::join_all(events.iter().map(|e| world.publish(e)));
    publishing.await;
    // Stop Redis while the worker is working through them.
    world.redis.shutdown();
    world.redis.resume();
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved("BOLT", "wh").await, (300, 0));
    assert_eq!(world.ledger("BOLT").await.len(), 300);
    let letters = stockflow_tests::count(&world.js, subjects::DEAD_LETTERS, "deadletter.>").await;
    assert_eq!(letters, 0, "transient failures are never dead-lettered");
    worker.shutdown().await;
}

/// `appendfsync everysec` bounds what a crash of the *machine* loses to about a second. A crash
/// of the redis-server process alone loses what Redis had not yet written to the kernel: nothing,
/// as Redis writes the AOF before it replies — unless a busy disk made it postpone that write
/// (up to 2 s while a previous fsync runs). Measured here with a `kill -9` in the middle of a
/// stream: the loss is printed, is never a double count, and reconcile's corrections repair it.
#[tokio::test]
async fn redis_killed_with_sigkill_under_load_loses_at_most_what_reconcile_repairs() {
    const EVENTS: i64 = 2_000;
    let mut world = World::start().await;
    let worker = world.stock_worker();
    let events: Vec<_> = (0..EVENTS)
        .map(|i| event(&format!("k{i}"), "RIVET", "wh", received(1)))
        .collect();
    let (first, second) = events.split_at(events.len() / 2);
    futures::future::join_all(first.iter().map(|e| world.publish(e))).await;
    // Kill while writes are recent: within the last fsync second, not after it.
    let conn = world.redis_connection().await;
    let at_kill =
        stockflow_tests::eventually("the worker is busy", stockflow_tests::DEADLINE, || async {
            let levels =
                stockflow_shared::levels::read_levels(&mut conn.clone(), &world.keys, "RIVET")
                    .await
                    .ok()?;
            let on_hand = levels.get("wh")?.on_hand;
            (on_hand >= EVENTS / 10).then_some(on_hand)
        })
        .await;
    world.redis.stop();
    println!("killed redis-server at on_hand {at_kill} of {EVENTS}");
    world.redis.resume();
    futures::future::join_all(second.iter().map(|e| world.publish(e))).await;
    world.wait_stock_idle().await;
    assert_eq!(world.ledger("RIVET").await.len(), EVENTS as usize);
    let mut conn = world.redis_connection().await;
    let drift = stockflow_ops::reconcile::drift(&world.js, &mut conn, &world.keys)
        .await
        .expect("drift");
    assert!(drift.iter().all(|d| d.redis < d.ledger), "{drift:?}");
    let lost: i64 = drift.iter().map(|d| d.ledger - d.redis).sum();
    println!("kill -9 of redis-server lost {lost} acknowledged unit(s)");
    stockflow_ops::reconcile::publish_corrections(&world.js, &drift)
        .await
        .expect("corrections");
    world.wait_stock_idle().await;
    assert_eq!(world.on_hand_reserved("RIVET", "wh").await, (EVENTS, 0));
    assert!(
        stockflow_ops::reconcile::drift(&world.js, &mut conn, &world.keys)
            .await
            .expect("drift")
            .is_empty()
    );
    worker.shutdown().await;
}

/// A counter or histogram count from a Prometheus page (0 when not exported yet).
fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// With `STOCKFLOW_REDIS_WAIT_REPLICAS=1` on a single primary with one replica: a change is
/// published only once the replica holds it; while the replica is down, changes are applied by
/// the primary but neither published nor acknowledged, and they go through once it is back.
#[tokio::test]
async fn with_the_replica_wait_a_change_is_published_only_once_a_replica_holds_it() {
    use stockflow_tests::{eventually, http_get, RedisOptions, RedisServer, DEADLINE};
    let world = World::start().await;
    let mut replica = RedisServer::start_with(RedisOptions {
        conf: format!("replicaof 127.0.0.1 {}\n", world.redis.port()),
        ..Default::default()
    });
    let replica_url = replica.url();
    let replica_levels = || async {
        let mut conn = stockflow_shared::redis_conn::RedisConnection::Single(
            redis::aio::ConnectionManager::new(
                redis::Client::open(replica_url.as_str()).expect("replica url"),
            )
            .await
            .ok()?,
        );
        stockflow_shared::levels::read_levels(&mut conn, &world.keys, "GASKET")
            .await
            .ok()
    };
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{}", stockflow_tests::free_port())
        .parse()
        .expect("address");
    let _worker = stockflow_tests::KillOnDrop(
        world
            .worker_command(
                "stock-worker",
                &[
                    ("STOCKFLOW_REDIS_WAIT_REPLICAS", "1"),
                    ("STOCKFLOW_REDIS_WAIT_TIMEOUT_MILLIS", "50"),
                    ("STOCKFLOW_METRICS_ADDR", &metrics_addr.to_string()),
                ],
            )
            .spawn()
            .expect("spawn stock-worker"),
    );
    let scrape = || async {
        http_get(metrics_addr, "/metrics")
            .await
            .map(|(_, page)| page)
    };

    world
        .publish(&event("g1", "GASKET", "wh", received(5)))
        .await;
    world.wait_on_hand("GASKET", "wh", 5).await;
    eventually("the first change published", DEADLINE, || async {
        (world.ledger("GASKET").await.len() == 1).then_some(())
    })
    .await;
    let levels = replica_levels().await.expect("replica levels");
    assert_eq!(
        levels.get("wh").map(|l| l.on_hand),
        Some(5),
        "the replica holds it"
    );
    let page = scrape().await.expect("metrics");
    assert!(metric(&page, "stockflow_redis_replica_wait_seconds_count") >= 1.0);

    replica.stop();
    world
        .publish(&event("g2", "GASKET", "wh", received(3)))
        .await;
    world.wait_on_hand("GASKET", "wh", 8).await;
    eventually(
        "waits time out while the replica is down",
        DEADLINE,
        || async {
            let page = scrape().await?;
            (metric(&page, "stockflow_redis_replica_wait_timeouts_total") >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        world.ledger("GASKET").await.len(),
        1,
        "a change no replica holds is not published"
    );

    replica.resume();
    world.wait_stock_idle().await;
    let ledger = world.ledger("GASKET").await;
    assert_eq!(ledger.len(), 2);
    assert_eq!(
        replica_levels()
            .await
            .and_then(|l| l.get("wh").map(|l| l.on_hand)),
        Some(8)
    );
}

#[tokio::test]
async fn the_worker_rebinds_after_nats_restarts() {
    let mut world = World::start().await;
    let worker = world.stock_worker();
    world
        .publish(&event("before", "NUT", "wh", received(1)))
        .await;
    world.wait_on_hand("NUT", "wh", 1).await;
    world.nats.restart();
    // The clients reconnect by themselves; publish once the server takes it.
    let after = event("after", "NUT", "wh", received(1));
    stockflow_tests::eventually(
        "publish after restart",
        stockflow_tests::DEADLINE,
        || async { world.try_publish(&after).await.then_some(()) },
    )
    .await;
    world.wait_on_hand("NUT", "wh", 2).await;
    worker.shutdown().await;
}
