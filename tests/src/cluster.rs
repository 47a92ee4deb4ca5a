//! Clusters on loopback: a 3-node NATS cluster with JetStream, and a Redis Cluster of three
//! primaries with one replica each (`redis-cli --cluster create`). Nodes can be stopped and
//! started one at a time, for failover tests.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{free_ports, server_binary, wait_for_port, DEADLINE};

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct NatsNode {
    name: String,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// Three `nats-server`s with JetStream, routed to each other.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until each answers.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`Self::start`], each node's configuration also holding `snippet` (nats-server
    /// config syntax, e.g. a subject `mappings` block every node must carry alike).
    pub fn start_with(snippet: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Routes, client and monitoring ports of the three nodes, all distinct.
        let ports = free_ports(9);
        let routes: Vec<u16> = ports[..3].to_vec();
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let (port, monitor_port) = (ports[3 + 2 * i], ports[4 + 2 * i]);
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                         http: 127.0.0.1:{monitor_port}\n\
                         jetstream {{ store_dir: {store:?} }}\n\
                         cluster {{ name: stockflow, listen: 127.0.0.1:{route}, \
                         routes: [{route_list}] }}\n{snippet}\n",
                        route = routes[i],
                    ),
                )
                .expect("write nats config");
                NatsNode {
                    name,
                    port,
                    monitor_port,
                    config,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes, dir };
        for i in 0..3 {
            cluster.start_node(i);
        }
        cluster
    }

    /// Starts node `i` (again).
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return;
        }
        let log_path = self.dir.path().join(format!("{}.log", node.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut child = Command::new(server_binary("nats-server"))
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], node.port)),
            &mut child,
            "nats-server",
            Some(&log_path),
        );
        node.child = Some(child);
    }

    /// Kills node `i` (SIGKILL).
    pub fn stop_node(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Every node's URL, comma-separated (`STOCKFLOW_NATS_URL`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node named `server_name` (as in a stream's cluster info).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// Monitoring port of node `i`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].monitor_port
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}

/// One node of a [`RedisCluster`].
#[derive(Debug)]
struct RedisNode {
    port: u16,
    /// Cluster bus port: its own free port, since the default (port + 10000) may be taken.
    bus_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Six `redis-server`s in cluster mode: three primaries, one replica each.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every slot is served.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Client and cluster-bus ports of the six nodes, all distinct.
        let ports = free_ports(12);
        let nodes = (0..6)
            .map(|i| {
                let node_dir = dir.path().join(format!("r{i}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                RedisNode {
                    port: ports[2 * i],
                    bus_port: ports[2 * i + 1],
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self { nodes, _dir: dir };
        for i in 0..6 {
            cluster.start_node(i);
        }
        let mut create = Command::new(server_binary("redis-cli"));
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until_ok();
        cluster
    }

    /// Starts node `i` (again, from its own directory: it rejoins with its identity).
    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return;
        }
        let mut child = Command::new(server_binary("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &node.port.to_string()])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            // A replica that was down may still be promoted (tests that promote a stale one).
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-port", &node.bus_port.to_string()])
            .args(["--cluster-config-file", "nodes.conf"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(&node.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], node.port)),
            &mut child,
            "redis-server",
            None,
        );
        node.child = Some(child);
    }

    /// Kills node `i` (SIGKILL).
    pub fn stop_node(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Stops node `i` with SIGTERM: it keeps on disk everything it had applied.
    pub fn shut_down_node(&mut self, i: usize) {
        crate::terminate(&mut self.nodes[i].child);
    }

    /// Every node's URL, comma-separated (`STOCKFLOW_REDIS_URL` in cluster mode).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// URL of node `i` alone: a plain connection to it, bypassing the cluster's routing.
    pub fn node_url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Index of the replica of primary `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let port = self.nodes[primary].port;
        let primary_id = self
            .cli(port, &["CLUSTER", "MYID"])
            .map(|s| s.trim().to_owned())
            .expect("node id");
        let nodes = self
            .cli(port, &["CLUSTER", "NODES"])
            .expect("cluster nodes");
        // Lines read `<id> <host:port@bus> <flags> <primary id> ...`.
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 3 && f[2].contains("slave") && f[3] == primary_id)
            .find_map(|f| {
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                self.nodes.iter().position(|n| n.port == port)
            })
            .unwrap_or_else(|| panic!("no replica of node {primary}"))
    }

    /// Waits until every live replica has applied everything its primary sent it.
    pub fn wait_until_replicated(&self) {
        let started = Instant::now();
        let offset = |port: u16, field: &str| -> Option<u64> {
            self.cli(port, &["INFO", "replication"])?
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
        };
        loop {
            let synced = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = self
                    .cli(n.port, &["INFO", "replication"])
                    .unwrap_or_default();
                if info.contains("role:master") {
                    return true;
                }
                // A replica's own offset against the one its primary reached.
                let primary_port = info
                    .lines()
                    .find_map(|l| l.strip_prefix("master_port:"))
                    .and_then(|p| p.trim().parse::<u16>().ok());
                match (primary_port, offset(n.port, "slave_repl_offset:")) {
                    (Some(p), Some(mine)) => offset(p, "master_repl_offset:") == Some(mine),
                    _ => false,
                }
            });
            if synced {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "replicas did not catch up");
            // Poll interval of a wait bounded by DEADLINE.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new(server_binary("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Index of the node that is primary for `key`'s slot now.
    pub fn primary_for(&self, key: &str) -> usize {
        self.find_primary_for(key)
            .unwrap_or_else(|| panic!("no primary serves {key}"))
    }

    /// Kills the primary of `key`'s slot and waits until its replica has taken over and every
    /// slot is served again; returns the killed node's index.
    pub fn fail_over(&mut self, key: &str) -> usize {
        let old = self.primary_for(key);
        self.stop_node(old);
        self.wait_taken_over(key, old);
        old
    }

    /// Kills `key`'s primary, then starts its replica `stale`, which was down while the primary
    /// took writes, and waits until it has taken over: every write since `stale` went down is
    /// gone. The old primary then rejoins as its replica, discarding them. Returns the old
    /// primary's index.
    pub fn promote_stale_replica(&mut self, key: &str, stale: usize) -> usize {
        let old = self.primary_for(key);
        self.stop_node(old);
        self.start_node(stale);
        self.wait_taken_over(key, old);
        self.start_node(old);
        self.wait_until_ok();
        old
    }

    /// Waits until a node other than `old` serves `key` and every slot is served.
    fn wait_taken_over(&self, key: &str, old: usize) {
        let started = Instant::now();
        while self.find_primary_for(key).is_none_or(|now| now == old) {
            assert!(started.elapsed() < DEADLINE, "no replica took over {key}");
            // Poll interval of a wait bounded by DEADLINE.
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok();
    }

    fn find_primary_for(&self, key: &str) -> Option<usize> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot: u16 = self
            .cli(live.port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())?;
        let nodes = self.cli(live.port, &["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())?;
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// Waits until every live node reports `cluster_state:ok` with all slots served, and every
    /// live replica is in sync with its primary (a replica that never synced refuses to take
    /// over: `cluster-replica-validity-factor`).
    pub fn wait_until_ok(&self) {
        let started = Instant::now();
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let serving = self.cli(n.port, &["CLUSTER", "INFO"]).is_some_and(|info| {
                    info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                });
                let synced = self
                    .cli(n.port, &["INFO", "replication"])
                    .is_some_and(|info| {
                        info.contains("role:master") || info.contains("master_link_status:up")
                    });
                serving && synced
            });
            if ok {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "Redis Cluster did not become ok"
            );
            // Poll interval of a wait bounded by DEADLINE.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i);
        }
    }
}

/// Kills a node's process (SIGKILL) and reaps it, if it runs.
fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        child.kill().ok();
        child.wait().ok();
    }
}
