//! One run's servers: a fresh nats-server and redis-server, clients, and the declared topology.

use async_nats::jetstream;
use stockflow_shared::topology::{self, Mode, TopologySettings};
use stockflow_tests::{NatsServer, RedisServer};

use crate::procs;

/// Fresh servers for one measurement, so no run inherits another's stream or keys.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) nats: NatsServer,
    pub(crate) redis: RedisServer,
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) conn: redis::aio::MultiplexedConnection,
    /// Pids of nats-server and redis-server, for CPU accounting.
    pub(crate) server_pids: [u32; 2],
}

impl Stack {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start();
        let redis = RedisServer::start();
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client.clone());
        topology::ensure(&js, &TopologySettings::default(), Mode::Verify).await?;
        let conn = redis.connection().await;
        let port = |url: &str| url.rsplit(':').next().unwrap_or_default().to_owned();
        let server_pids = [
            procs::pid_of("nats-server", &port(&nats.url())).unwrap_or(0),
            find_redis(&port(&redis.url())).unwrap_or(0),
        ];
        Ok(Self {
            nats,
            redis,
            client,
            js,
            conn,
            server_pids,
        })
    }

    pub(crate) fn nats_url(&self) -> String {
        self.nats.url()
    }

    pub(crate) fn redis_url(&self) -> String {
        self.redis.url()
    }
}

/// redis-server rewrites its command line to `redis-server 127.0.0.1:<port>`; the port alone
/// as an argument is the command line before that.
fn find_redis(port: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).ok()?;
            let ours =
                cmdline.contains(&format!(":{port}")) || cmdline.split('\0').any(|arg| arg == port);
            (cmdline.contains("redis-server") && ours).then_some(pid)
        })
}
