//! One test's clusters, clients and in-process workers.

use std::{collections::HashMap, time::Duration};

use async_nats::{jetstream, HeaderMap};
use prost::Message as _;
use stockflow_proto::{
    subjects,
    v1::{OrderEvent, StockEvent},
};
use stockflow_shared::{keys::Keys, redis_conn::RedisConnection, settings::Env, topology};
use stockflow_tests::{
    cluster::{NatsCluster, RedisCluster},
    eventually, RunningWorker, DEADLINE,
};

/// Each world runs nine servers: two at a time are what a 2-core machine carries.
static WORLDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub(crate) struct ClusterWorld {
    _turn: tokio::sync::SemaphorePermit<'static>,
    pub(crate) nats: NatsCluster,
    pub(crate) redis: RedisCluster,
    pub(crate) js: jetstream::Context,
    pub(crate) keys: Keys,
    /// The topology the workers declare (`STOCKFLOW_STOCK_PARTITIONS`).
    pub(crate) topology: topology::TopologySettings,
}

impl ClusterWorld {
    pub(crate) async fn start() -> Self {
        Self::start_partitioned(1).await
    }

    /// A world whose stock input has `partitions` partitions: with more than one, every NATS
    /// node carries the partition mapping.
    pub(crate) async fn start_partitioned(partitions: usize) -> Self {
        let turn = WORLDS.acquire().await.expect("semaphore open");
        let nats = if partitions > 1 {
            NatsCluster::start_with(&subjects::stock_mappings(partitions))
        } else {
            NatsCluster::start()
        };
        let redis = RedisCluster::start();
        let urls: Vec<async_nats::ServerAddr> = nats
            .urls()
            .split(',')
            .map(|u| u.parse().expect("server address"))
            .collect();
        let client = async_nats::connect(urls).await.expect("connect nats");
        let js = jetstream::new(client);
        let settings = topology::TopologySettings {
            replicas: 3,
            ack_wait: Duration::from_secs(2),
            stock_partitions: partitions,
        };
        // The cluster elects its JetStream meta leader after start: retry until it has one.
        eventually("JetStream cluster ready", DEADLINE, || async {
            topology::ensure(&js, &settings, topology::Mode::Verify)
                .await
                .ok()
        })
        .await;
        Self {
            _turn: turn,
            nats,
            redis,
            js,
            keys: Keys::new("sf"),
            topology: settings,
        }
    }

    pub(crate) fn env(&self) -> Env {
        self.env_with(&[])
    }

    /// The workers' environment plus `extra`.
    pub(crate) fn env_with(&self, extra: &[(&str, &str)]) -> Env {
        let extra = extra.iter().map(|(k, v)| (*k, (*v).to_owned()));
        let map: HashMap<String, String> = [
            ("STOCKFLOW_NATS_URL", self.nats.urls()),
            ("STOCKFLOW_REDIS_URL", self.redis.urls()),
            ("STOCKFLOW_REDIS_CLUSTER", "true".into()),
            ("STOCKFLOW_STREAM_REPLICAS", "3".into()),
            // The least accepted; the consumers above are declared with 2 s before any worker
            // starts, and a worker takes the ack wait in force on the server.
            ("STOCKFLOW_ACK_WAIT_SECONDS", "5".into()),
            ("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0".into()),
            ("STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS", "10".into()),
            ("STOCKFLOW_HOLD_POLL_MILLIS", "20".into()),
            (
                "STOCKFLOW_STOCK_PARTITIONS",
                self.topology.stock_partitions.to_string(),
            ),
            (
                "STOCKFLOW_LOG",
                std::env::var("STOCKFLOW_TEST_LOG").unwrap_or_else(|_| "warn,redis=error".into()),
            ),
        ]
        .into_iter()
        .chain(extra)
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Env::from_fn(move |name| map.get(name).cloned())
    }

    pub(crate) fn stock_worker(&self) -> RunningWorker {
        self.stock_worker_with(&[])
    }

    pub(crate) fn stock_worker_with(&self, extra: &[(&str, &str)]) -> RunningWorker {
        let settings = stock_worker::Settings::from_env(&self.env_with(extra)).expect("settings");
        settings.worker.service.log.init();
        RunningWorker::spawn(|shutdown| stock_worker::run(settings, shutdown))
    }

    pub(crate) fn order_worker(&self) -> RunningWorker {
        self.order_worker_with(&[])
    }

    pub(crate) fn order_worker_with(&self, extra: &[(&str, &str)]) -> RunningWorker {
        let settings = order_worker::Settings::from_env(&self.env_with(extra)).expect("settings");
        RunningWorker::spawn(|shutdown| order_worker::run(settings, shutdown))
    }

    /// A cluster-aware connection, as the workers use.
    pub(crate) async fn redis_connection(&self) -> RedisConnection {
        stockflow_shared::connect::RedisSettings::from_env(&self.env())
            .expect("redis settings")
            .connect()
            .await
            .expect("connect to the Redis Cluster")
    }

    /// Publishes with a fresh message id, retrying while the cluster fails over.
    pub(crate) async fn publish_raw(&self, subject: &str, payload: Vec<u8>) {
        let msg_id = stockflow_tests::unique_id();
        eventually(&format!("publish to {subject}"), DEADLINE, || async {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            let ack = self
                .js
                .publish_with_headers(subject.to_owned(), headers, payload.clone().into())
                .await
                .ok()?;
            ack.await.ok()
        })
        .await;
    }

    pub(crate) async fn publish(&self, event: &StockEvent) {
        self.publish_raw(&subjects::stock_event(&event.sku), event.encode_to_vec())
            .await;
    }

    pub(crate) async fn publish_order(&self, event: &OrderEvent) {
        self.publish_raw(
            &subjects::order_event(&event.order_id),
            event.encode_to_vec(),
        )
        .await;
    }

    pub(crate) async fn wait_idle(&self, stream: &str, durable: &str) {
        eventually(&format!("{durable} caught up"), DEADLINE, || async {
            // Short inner waits: during a failover the consumer may be briefly unreachable.
            stockflow_cli::wait_until_caught_up(&self.js, stream, durable, Duration::from_secs(5))
                .await
                .ok()
        })
        .await;
    }

    pub(crate) async fn wait_stock_idle(&self) {
        for spec in topology::stock_workers(&self.topology) {
            self.wait_idle(spec.stream, spec.durable).await;
        }
    }

    pub(crate) async fn wait_orders_idle(&self) {
        self.wait_idle(subjects::ORDER_EVENTS, "order-worker").await;
    }

    /// (on_hand, reserved) of (sku, location).
    pub(crate) async fn on_hand_reserved(&self, sku: &str, location: &str) -> (i64, i64) {
        let mut conn = self.redis_connection().await;
        let levels = stockflow_shared::levels::read_levels(&mut conn, &self.keys, sku)
            .await
            .expect("levels");
        levels
            .get(location)
            .map(|l| (l.on_hand, l.reserved))
            .unwrap_or_default()
    }

    /// Every message of `stream` matching `filter`, decoded as `T`.
    pub(crate) async fn read<T: prost::Message + Default>(
        &self,
        stream: &str,
        filter: &str,
    ) -> Vec<T> {
        stockflow_cli::read_after(&self.js, stream, filter, 0)
            .await
            .expect("read stream")
            .iter()
            .map(|m| T::decode(m.payload.clone()).expect("decode"))
            .collect()
    }
}

pub(crate) use stockflow_tests::events::{event, order, placed, received};
