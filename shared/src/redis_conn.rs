//! One Redis connection type for a single server and for Redis Cluster, so every script and
//! command runs unchanged on both. Scripts touch one slot each (see [`crate::keys`]); pipelines
//! must too, since a cluster routes a whole pipeline to one node.

use redis::{
    aio::ConnectionLike,
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    Cmd, Pipeline, RedisFuture,
};

/// A cheap-to-clone, reconnecting connection to Redis or Redis Cluster.
#[derive(Clone)]
pub enum RedisConnection {
    /// One server (or a primary behind a fixed address).
    Single(redis::aio::ConnectionManager),
    /// Redis Cluster: commands go to the node that serves their key's slot, following
    /// MOVED/ASK redirections and failovers.
    Cluster(ClusterConnection),
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
            Self::Cluster(c) => futures::stream::iter(cmds)
                .map(|cmd| {
                    let mut conn = c.clone();
                    async move { cmd.query_async::<redis::Value>(&mut conn).await }
                })
                .buffered(64)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect(),
        }
    }

    /// Every key matching `pattern`, by `SCAN` (on a cluster: on every primary in turn), so
    /// the server is never blocked the way `KEYS` would block it.
    pub async fn scan_match(&mut self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            Self::Single(_) => scan_node(self, pattern, None, &mut keys).await?,
            Self::Cluster(c) => {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
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
                redis::from_redis_value(c.route_command(scan, routing).await?)?
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
            Self::Cluster(c) => c.req_packed_command(cmd),
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
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
