//! One Redis connection type for a single server and for Redis Cluster, so every script and
//! command runs unchanged on both. Scripts touch one slot each (see [`crate::keys`]); pipelines
//! must too, since a cluster routes a whole pipeline to one node.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use redis::{
    aio::ConnectionLike,
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
    Cmd, Pipeline, RedisFuture,
};

/// A cheap-to-clone, reconnecting connection to Redis or Redis Cluster.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server (or a primary behind a fixed address).
    Single(redis::aio::ConnectionManager),
    /// Redis Cluster: commands go to the node that serves their key's slot, following
    /// MOVED/ASK redirections.
    Cluster(ClusterHandle),
}

/// A cluster connection that [`RedisConnection::refresh`] can replace for every clone at once.
///
/// The cluster client re-reads the slot map on redirections, but when a primary dies it may read
/// it before the replica is promoted, and then keeps reconnecting to the dead node: a fresh
/// connection reads the map anew (what other cluster clients do with periodic refreshes).
#[derive(Clone)]
pub struct ClusterHandle {
    conn: ClusterConnection,
    generation: u64,
    shared: Arc<ClusterShared>,
}

struct ClusterShared {
    client: ClusterClient,
    current: Mutex<(ClusterConnection, u64)>,
    generation: AtomicU64,
}

impl ClusterHandle {
    /// Connects to the cluster that `client` describes.
    pub async fn connect(client: ClusterClient) -> redis::RedisResult<Self> {
        let conn = client.get_async_connection().await?;
        Ok(Self {
            conn: conn.clone(),
            generation: 0,
            shared: Arc::new(ClusterShared {
                client,
                current: Mutex::new((conn, 0)),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The newest connection, after a refresh by any clone.
    fn current(&mut self) -> &mut ClusterConnection {
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            let current = self
                .shared
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.conn = current.0.clone();
            self.generation = current.1;
        }
        &mut self.conn
    }
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl RedisConnection {
    /// True for Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// On a cluster, replaces the connection of every clone by a new one that reads the slot
    /// map again; a single server's connection manager reconnects by itself.
    pub async fn refresh(&mut self) -> redis::RedisResult<()> {
        if let Self::Cluster(handle) = self {
            let conn = handle.shared.client.get_async_connection().await?;
            let mut current = handle
                .shared
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let generation = current.1 + 1;
            *current = (conn, generation);
            handle
                .shared
                .generation
                .store(generation, Ordering::Release);
        }
        Ok(())
    }

    /// Whether Redis serves requests now: PING; on a cluster, every slot is served
    /// (`cluster_state:ok` from any primary), since a PING of every node would fail for as long
    /// as a failed-over primary stays down.
    pub async fn is_up(&mut self) -> bool {
        match self {
            Self::Single(c) => redis::cmd("PING").query_async::<String>(c).await.is_ok(),
            Self::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                let mut info = redis::cmd("CLUSTER");
                info.arg("INFO");
                c.current()
                    .route_command(info, routing)
                    .await
                    .ok()
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .is_some_and(|text| text.contains("cluster_state:ok"))
            }
        }
    }

    /// `WAIT replicas timeout_ms` on the primary that serves `key`: how many replicas hold every
    /// write this connection sent it so far. `WAIT` counts the writes of the connection it runs
    /// on, so it goes over the same (multiplexed) connection as the writes did.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        match self {
            Self::Single(c) => wait.query_async(c).await,
            Self::Cluster(c) => {
                // Only the key's primary: a shard short of replicas must not stall the others.
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                Ok(redis::from_redis_value(
                    c.current().route_command(wait, routing).await?,
                )?)
            }
        }
    }

    /// Runs `cmds` and returns their replies in order: as one pipeline on a single server; on a
    /// cluster, where a pipeline must stay in one slot, as concurrent single commands.
    pub async fn run_all(&mut self, cmds: Vec<Cmd>) -> redis::RedisResult<Vec<redis::Value>> {
        use futures::StreamExt as _;
        match self {
            Self::Single(c) => {
                if cmds.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(c).await
            }
            Self::Cluster(c) => {
                let conn = c.current().clone();
                futures::stream::iter(cmds)
                    .map(|cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<redis::Value>(&mut conn).await }
                    })
                    .buffered(64)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Every key matching `pattern`, by `SCAN` (on a cluster: on every primary in turn), so
    /// the server is never blocked the way `KEYS` would block it.
    pub async fn scan_match(&mut self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            Self::Single(_) => scan_node(self, pattern, None, &mut keys).await?,
            Self::Cluster(c) => {
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(c.current())
                    .await?;
                let mut primaries = Vec::new();
                for line in nodes.lines() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let is_primary = fields
                        .get(2)
                        .is_some_and(|flags| flags.contains("master") && !flags.contains("fail"));
                    let address = fields.get(1).and_then(|a| a.split('@').next());
                    let Some((host, port)) = address.and_then(|a| a.rsplit_once(':')) else {
                        continue;
                    };
                    let Ok(port) = port.parse() else { continue };
                    if is_primary {
                        primaries.push((host.to_owned(), port));
                    }
                }
                for node in primaries {
                    scan_node(self, pattern, Some(node), &mut keys).await?;
                }
            }
        }
        Ok(keys)
    }
}

/// SCAN of one server; on a cluster, of the node at `node` (host, port).
async fn scan_node(
    conn: &mut RedisConnection,
    pattern: &str,
    node: Option<(String, u16)>,
    keys: &mut Vec<String>,
) -> redis::RedisResult<()> {
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000);
        let (next, found): (u64, Vec<String>) = match (&mut *conn, &node) {
            (RedisConnection::Cluster(c), Some((host, port))) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                redis::from_redis_value(c.current().route_command(scan, routing).await?)?
            }
            (conn, _) => scan.query_async(conn).await?,
        };
        keys.extend(found);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.current().req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.current().req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.conn.get_db(),
        }
    }
}
