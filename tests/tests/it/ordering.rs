//! Why the workers may process facts of one SKU concurrently and in any order, and where that
//! stops being true. Every fact but a count is a delta: deltas commute, so any order of
//! delivery (redeliveries, several workers, a NATS or Redis failover) ends in the same levels.
//! A count sets a value, so it does not commute with the deltas around it: a count carries the
//! `expected_on_hand` it was taken against, and is refused as stale when the level moved since.

use proptest::prelude::*;
use stock_worker::{
    fact::{Fact, Op},
    Applied, StockHandler,
};
use stockflow_proto::v1::EventMeta;
use stockflow_shared::{keys::Keys, outcome::Verdict};
use stockflow_tests::{NatsServer, RedisServer};

fn delta() -> impl Strategy<Value = (Op, &'static str)> {
    let loc = prop_oneof![Just("a"), Just("b")];
    prop_oneof![
        (1..20i64, loc.clone()).prop_map(|(q, l)| (Op::Received(q), l)),
        (1..20i64, loc.clone()).prop_map(|(q, l)| (Op::Sold(q), l)),
        (1..5i64, loc.clone()).prop_map(|(q, l)| (Op::Returned(q), l)),
        (-9..10i64, loc.clone())
            .prop_filter("non-zero", |(d, _)| *d != 0)
            .prop_map(|(d, l)| (Op::Adjusted(d), l)),
        (1..10i64, loc).prop_map(|(q, l)| {
            let to = if l == "a" { "b" } else { "a" };
            (
                Op::Transferred {
                    to: to.into(),
                    quantity: q,
                },
                l,
            )
        }),
    ]
}

fn fact(sku: &str, id: usize, op: &Op, location: &str) -> Fact {
    Fact {
        meta: EventMeta {
            event_id: format!("e{id}"),
            ..Default::default()
        },
        sku: sku.to_owned(),
        location: location.to_owned(),
        channel: String::new(),
        op: op.clone(),
    }
}

struct Bench {
    runtime: tokio::runtime::Runtime,
    handler: StockHandler,
    keys: Keys,
    redis: stockflow_shared::redis_conn::RedisConnection,
    _servers: (RedisServer, NatsServer),
}

impl Bench {
    fn start() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (redis_server, nats) = (RedisServer::start(), NatsServer::start());
        let (handler, redis) = runtime.block_on(async {
            let conn = stockflow_shared::connect::RedisSettings::local(&redis_server.url(), "sf")
                .connect()
                .await
                .expect("redis");
            let client = async_nats::connect(nats.url()).await.expect("nats");
            let js = async_nats::jetstream::new(client);
            let book = stockflow_tests::channel_book(&js).await;
            let handler = StockHandler::with(conn.clone(), js, Keys::new("sf"), 3600, book);
            (handler, conn)
        });
        Self {
            runtime,
            handler,
            keys: Keys::new("sf"),
            redis,
            _servers: (redis_server, nats),
        }
    }

    fn apply(&self, fact: &Fact) -> Applied {
        self.runtime
            .block_on(self.handler.apply(fact))
            .expect("script runs")
    }

    fn on_hand(&self, sku: &str) -> (i64, i64) {
        let mut conn = self.redis.clone();
        let levels = self
            .runtime
            .block_on(stockflow_shared::levels::read_levels(
                &mut conn, &self.keys, sku,
            ))
            .expect("levels");
        let get = |l: &str| levels.get(l).map(|x| x.on_hand).unwrap_or(0);
        (get("a"), get("b"))
    }
}

#[test]
fn deltas_in_any_order_end_in_the_same_levels() {
    let bench = Bench::start();
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let orders = prop::collection::vec(delta(), 1..30)
        .prop_flat_map(|facts| (Just(facts.clone()), Just(facts).prop_shuffle()));
    proptest!(config, |((in_order, shuffled) in orders)| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (first, second) = (format!("ORD-{n}"), format!("SHUF-{n}"));
        for (i, (op, l)) in in_order.iter().enumerate() {
            bench.apply(&fact(&first, i, op, l));
        }
        for (i, (op, l)) in shuffled.iter().enumerate() {
            bench.apply(&fact(&second, i, op, l));
        }
        prop_assert_eq!(bench.on_hand(&first), bench.on_hand(&second));
    });
}

#[test]
fn a_count_is_the_one_fact_that_depends_on_order_and_expected_on_hand_guards_it() {
    let bench = Bench::start();
    let count = |expected| Op::Counted {
        on_hand: 10,
        expected,
    };
    // Unguarded: the sale and the count give different levels in the two orders.
    for (sku, first_count) in [("UNGUARDED-1", true), ("UNGUARDED-2", false)] {
        bench.apply(&fact(sku, 0, &Op::Received(12), "a"));
        let (c, s) = (count(None), Op::Sold(2));
        let (x, y) = if first_count { (&c, &s) } else { (&s, &c) };
        bench.apply(&fact(sku, 1, x, "a"));
        bench.apply(&fact(sku, 2, y, "a"));
    }
    assert_eq!(bench.on_hand("UNGUARDED-1").0, 8, "count, then sale");
    assert_eq!(
        bench.on_hand("UNGUARDED-2").0,
        10,
        "sale, then count: the sale is lost"
    );

    // Guarded: the count taken against 12 is refused once the sale moved the level.
    let sku = "GUARDED";
    bench.apply(&fact(sku, 0, &Op::Received(12), "a"));
    bench.apply(&fact(sku, 1, &Op::Sold(2), "a"));
    let Applied::New(outcome) = bench.apply(&fact(sku, 2, &count(Some(12)), "a")) else {
        panic!("a first delivery applies");
    };
    assert_eq!(
        outcome.verdict,
        Verdict::StaleCount {
            expected: 12,
            actual: 10
        }
    );
    assert_eq!(bench.on_hand(sku).0, 10, "the sale is kept");
}
