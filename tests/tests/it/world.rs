//! One test's world: its own servers, clients, and the workers it starts.

use async_nats::{jetstream, HeaderMap};
use prost::Message as _;
use std::process::Command;

use redis::AsyncCommands as _;
use stockflow_proto::{subjects, v1::StockEvent};
use stockflow_shared::{keys::Keys, settings::Env, topology};
pub(crate) use stockflow_tests::RunningWorker;
use stockflow_tests::{eventually, NatsServer, RedisServer, DEADLINE};

pub(crate) struct World {
    pub(crate) nats: NatsServer,
    pub(crate) redis: RedisServer,
    pub(crate) js: jetstream::Context,
    pub(crate) keys: Keys,
    /// The topology declared for this world (`STOCKFLOW_STOCK_PARTITIONS` from its environment).
    pub(crate) topology: topology::TopologySettings,
    /// How a worker of this world reaches its servers: URLs, and credentials and TLS files when
    /// the servers require them.
    connection_env: Vec<(String, String)>,
}

impl World {
    pub(crate) async fn start() -> Self {
        Self::start_on(NatsServer::start(), RedisServer::start(), &[]).await
    }

    /// A world whose stock input has `partitions` partition streams: its NATS server carries
    /// the partition mapping, and every worker and `stockctl` it starts is told the number.
    pub(crate) async fn start_partitioned(partitions: usize) -> Self {
        let nats = NatsServer::start_with(&subjects::stock_mappings(partitions));
        let partitions = partitions.to_string();
        Self::start_on(
            nats,
            RedisServer::start(),
            &[("STOCKFLOW_STOCK_PARTITIONS", partitions.as_str())],
        )
        .await
    }

    /// A world on servers that require credentials or TLS: `connection_env` holds the
    /// `STOCKFLOW_*` variables that reach them, and the test's own NATS client is built from
    /// them through the same code as the workers'.
    pub(crate) async fn start_on(
        nats: NatsServer,
        redis: RedisServer,
        connection_env: &[(&str, &str)],
    ) -> Self {
        let mut env: Vec<(String, String)> = vec![
            ("STOCKFLOW_NATS_URL".into(), nats.url()),
            ("STOCKFLOW_REDIS_URL".into(), redis.url()),
        ];
        env.extend(
            connection_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let settings = stockflow_shared::connect::NatsSettings::from_env(&env_of(&env), "test")
            .expect("test connection settings");
        let client = settings.connect().await.expect("connect nats");
        let js = jetstream::new(client);
        // A short ack wait, so a killed worker's messages come back well within the test's
        // deadline, but not below the least the workers accept (`STOCKFLOW_ACK_WAIT_SECONDS`):
        // with 2 s a starved worker's in-progress acks came too late, messages it was handling
        // or had prefetched were redelivered in a storm, and their growing NAK back-off (by
        // delivery count) outlasted the 30 s deadline.
        let topology = topology::TopologySettings {
            ack_wait: std::time::Duration::from_secs(5),
            stock_partitions: env
                .iter()
                .find(|(k, _)| k == "STOCKFLOW_STOCK_PARTITIONS")
                .map_or(1, |(_, v)| v.parse().expect("a number of partitions")),
            ..Default::default()
        };
        topology::ensure(&js, &topology, topology::Mode::Verify)
            .await
            .expect("topology");
        Self {
            nats,
            redis,
            js,
            keys: Keys::new("sf"),
            topology,
            connection_env: env,
        }
    }

    /// Environment for a worker of this world.
    pub(crate) fn env(&self, extra: &[(&str, &str)]) -> Env {
        let mut pairs = self.connection_env.clone();
        pairs.extend([
            ("STOCKFLOW_METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("STOCKFLOW_SHUTDOWN_TIMEOUT_SECONDS".into(), "10".into()),
            ("STOCKFLOW_LOG".into(), "warn".into()),
        ]);
        pairs.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        env_of(&pairs)
    }

    /// A worker binary as a child process, with this world's connection variables and `extra`
    /// (later values win).
    pub(crate) fn worker_command(&self, binary: &str, extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new(stockflow_tests::workspace_binary(binary));
        command
            .envs(self.connection_env.iter().map(|(k, v)| (k, v)))
            .env("STOCKFLOW_METRICS_ADDR", "127.0.0.1:0")
            .env("STOCKFLOW_LOG", "warn")
            .envs(extra.iter().copied());
        command
    }

    pub(crate) fn stock_worker(&self) -> RunningWorker {
        self.stock_worker_with(&[])
    }

    pub(crate) fn stock_worker_with(&self, extra: &[(&str, &str)]) -> RunningWorker {
        let settings = stock_worker::Settings::from_env(&self.env(extra)).expect("settings");
        settings.worker.service.log.init();
        RunningWorker::spawn(|shutdown| stock_worker::run(settings, shutdown))
    }

    pub(crate) fn order_worker(&self) -> RunningWorker {
        self.order_worker_with(&[])
    }

    /// An order worker with `extra` variables (later values win).
    pub(crate) fn order_worker_with(&self, extra: &[(&str, &str)]) -> RunningWorker {
        let mut vars = vec![("STOCKFLOW_HOLD_POLL_MILLIS", "20")];
        vars.extend_from_slice(extra);
        let settings = order_worker::Settings::from_env(&self.env(&vars)).expect("settings");
        RunningWorker::spawn(|shutdown| order_worker::run(settings, shutdown))
    }

    /// The order-worker binary as a child process (for kill -9).
    pub(crate) fn order_worker_process(&self) -> stockflow_tests::KillOnDrop {
        stockflow_tests::KillOnDrop(
            self.worker_command("order-worker", &[])
                .spawn()
                .expect("spawn order-worker"),
        )
    }

    /// Publishes an order command with a fresh `Nats-Msg-Id`.
    pub(crate) async fn publish_order(&self, event: &stockflow_proto::v1::OrderEvent) {
        self.publish_raw(
            &subjects::order_event(&event.order_id),
            event.encode_to_vec(),
        )
        .await;
    }

    pub(crate) async fn wait_orders_idle(&self) {
        self.wait_idle(subjects::ORDER_EVENTS, "order-worker").await;
    }

    /// Every order result, decoded.
    pub(crate) async fn order_results(&self) -> Vec<stockflow_proto::v1::OrderResult> {
        stockflow_tests::read_stream(&self.js, subjects::ORDER_RESULTS, "orders.results.>")
            .await
            .iter()
            .map(|m| {
                stockflow_proto::v1::OrderResult::decode(m.payload.clone()).expect("order result")
            })
            .collect()
    }

    /// The stock-worker binary as a child process (for kill -9).
    pub(crate) fn stock_worker_process(&self) -> stockflow_tests::KillOnDrop {
        stockflow_tests::KillOnDrop(
            self.worker_command("stock-worker", &[])
                .spawn()
                .expect("spawn stock-worker"),
        )
    }

    /// Publishes `event` on its SKU's subject with a fresh `Nats-Msg-Id`; waits for the PubAck.
    pub(crate) async fn publish(&self, event: &StockEvent) {
        self.publish_raw(&subjects::stock_event(&event.sku), event.encode_to_vec())
            .await;
    }

    /// Like [`Self::publish`], but reports failure instead of panicking (servers restarting).
    pub(crate) async fn try_publish(&self, event: &StockEvent) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", stockflow_tests::unique_id().as_str());
        let subject = subjects::stock_event(&event.sku);
        match self
            .js
            .publish_with_headers(subject, headers, event.encode_to_vec().into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    }

    pub(crate) async fn publish_raw(&self, subject: &str, payload: Vec<u8>) {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", stockflow_tests::unique_id().as_str());
        self.js
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// Waits until the durable consumer `durable` has acknowledged everything in its stream:
    /// every input was handled (applied, absorbed as a duplicate, or dead-lettered).
    pub(crate) async fn wait_idle(&self, stream: &str, durable: &str) {
        stockflow_cli::wait_until_caught_up(&self.js, stream, durable, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    pub(crate) async fn wait_stock_idle(&self) {
        for spec in topology::stock_workers(&self.topology) {
            self.wait_idle(spec.stream, spec.durable).await;
        }
    }

    /// `FLUSHALL`, then `stockctl rebuild` with its default retention (a day of dedup records,
    /// the order worker's retention): Redis lost and restored from JetStream.
    pub(crate) async fn flush_and_rebuild(
        &self,
        conn: &mut stockflow_shared::redis_conn::RedisConnection,
    ) -> stockflow_ops::rebuild::RebuildReport {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(conn)
            .await
            .expect("flush");
        let retention = stockflow_ops::rebuild::Retention {
            dedup_ttl: std::time::Duration::from_secs(86_400),
            orders: order_worker::DEFAULT_ORDER_RETENTION,
        };
        stockflow_ops::rebuild::rebuild(&self.js, conn, &self.keys, retention)
            .await
            .expect("rebuild")
    }

    /// The dead letters' reasons, in stream order, once there are at least `n`.
    pub(crate) async fn wait_dead_letter_reasons(&self, n: usize) -> Vec<String> {
        eventually(&format!("{n} dead letters"), DEADLINE, || async {
            let reasons = self.dead_letter_reasons().await;
            (reasons.len() >= n).then_some(reasons)
        })
        .await
    }

    /// Every dead letter's reason, in stream order.
    pub(crate) async fn dead_letter_reasons(&self) -> Vec<String> {
        stockflow_tests::read_stream(&self.js, subjects::DEAD_LETTERS, "deadletter.>")
            .await
            .iter()
            .map(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(subjects::HEADER_DEAD_LETTER_REASON))
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The connection type the workers and `stockctl` use.
    pub(crate) async fn redis_connection(&self) -> stockflow_shared::redis_conn::RedisConnection {
        let client = redis::Client::open(self.redis.url()).expect("redis url");
        stockflow_shared::redis_conn::RedisConnection::Single(
            redis::aio::ConnectionManager::new(client)
                .await
                .expect("connect to test redis"),
        )
    }

    /// Current levels of (sku, location), without safety stock.
    pub(crate) async fn on_hand_reserved(&self, sku: &str, location: &str) -> (i64, i64) {
        let mut conn = self.redis.connection().await;
        let (oh, rs): (Option<i64>, Option<i64>) = conn
            .hmget(
                self.keys.stock(sku),
                &[format!("oh:{location}"), format!("rs:{location}")],
            )
            .await
            .expect("hget");
        (oh.unwrap_or(0), rs.unwrap_or(0))
    }

    /// Waits until `sku` at `location` has `on_hand`.
    pub(crate) async fn wait_on_hand(&self, sku: &str, location: &str, on_hand: i64) {
        eventually(
            &format!("{sku}@{location} on_hand {on_hand}"),
            DEADLINE,
            || async { (self.on_hand_reserved(sku, location).await.0 == on_hand).then_some(()) },
        )
        .await;
    }

    /// Ledger entries of `sku`, in order (a SKU's entries are all in one ledger partition).
    pub(crate) async fn ledger(&self, sku: &str) -> Vec<stockflow_proto::v1::StockChanged> {
        let filter = subjects::stock_changed_stored(sku, self.topology.stock_partitions);
        let mut messages = Vec::new();
        for stream in topology::ledger_streams(&self.topology) {
            messages.extend(stockflow_tests::read_stream(&self.js, stream, &filter).await);
        }
        messages
            .iter()
            .map(|m| {
                stockflow_proto::v1::StockChanged::decode(m.payload.clone()).expect("ledger entry")
            })
            .collect()
    }

    pub(crate) async fn alerts(&self, sku: &str) -> Vec<stockflow_proto::v1::StockAlert> {
        stockflow_tests::read_stream(
            &self.js,
            subjects::ALERTS,
            &format!("alerts.*.{}", subjects::encode_token(sku)),
        )
        .await
        .iter()
        .map(|m| stockflow_proto::v1::StockAlert::decode(m.payload.clone()).expect("alert"))
        .collect()
    }
}

/// An `Env` over `(name, value)` pairs.
fn env_of(pairs: &[(String, String)]) -> Env {
    let map: std::collections::HashMap<String, String> = pairs.iter().cloned().collect();
    Env::from_fn(move |name| map.get(name).cloned())
}

pub(crate) use stockflow_tests::events::*;

impl World {
    /// Publishes a channel definition change and waits for its PubAck.
    pub(crate) async fn publish_channel(&self, event: &stockflow_proto::v1::ChannelEvent) {
        self.js
            .publish(
                subjects::channel_event(&event.channel_id),
                event.encode_to_vec().into(),
            )
            .await
            .expect("publish")
            .await
            .expect("puback");
    }

    /// The newest `ChannelAvailabilityChanged` of (`channel`, `sku`) in the feed.
    pub(crate) async fn availability(
        &self,
        channel: &str,
        sku: &str,
    ) -> Option<stockflow_proto::v1::ChannelAvailabilityChanged> {
        let stream = self.js.get_stream(subjects::AVAILABILITY).await.ok()?;
        let stored = stream
            .direct_get_last_for_subject(subjects::availability(channel, sku))
            .await
            .ok()?;
        stockflow_proto::v1::ChannelAvailabilityChanged::decode(stored.payload.as_ref()).ok()
    }

    /// Waits until the feed says `channel` may sell `quantity` of `sku`.
    pub(crate) async fn wait_availability(&self, channel: &str, sku: &str, quantity: i64) {
        eventually(
            &format!("{channel} to offer {quantity} of {sku}"),
            DEADLINE,
            || async {
                self.availability(channel, sku)
                    .await
                    .filter(|a| a.available_to_sell == quantity)
            },
        )
        .await;
    }
}
