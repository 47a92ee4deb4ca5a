//! Marks dedup records as published, many at a time: every mark that in-flight events request
//! while a batch is on the wire goes out together in the next pipelined request (on Redis
//! Cluster, where a pipeline must stay in one slot, as concurrent commands), so under load one
//! Redis round trip serves many events. Each caller still waits for its own mark before
//! its input is acked.

use stockflow_shared::redis_conn::RedisConnection;
use tokio::sync::{mpsc, oneshot};

/// Most marks in one pipelined request.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the batching task; cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct Marks {
    requests: mpsc::UnboundedSender<(String, Reply)>,
}

impl Marks {
    /// Starts the batching task on the current Tokio runtime.
    pub(crate) fn start(redis: RedisConnection, script: redis::Script) -> Self {
        let (requests, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(redis, script, pending));
        Self { requests }
    }

    /// Marks `dedup_key` published; returns once Redis has done so.
    pub(crate) async fn mark(&self, dedup_key: String) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.requests
            .send((dedup_key, reply))
            .map_err(|_| anyhow::anyhow!("the mark batcher has stopped"))?;
        done.await
            .map_err(|_| anyhow::anyhow!("the mark batcher dropped a request"))?
            .map_err(|e| anyhow::anyhow!("mark_published failed: {e}"))
    }
}

async fn run(
    mut redis: RedisConnection,
    script: redis::Script,
    mut pending: mpsc::UnboundedReceiver<(String, Reply)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = pending.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut result = send(&mut redis, &script, &batch).await;
        if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // Redis lost its script cache (restart): load the script and try once more.
            result = match script.prepare_invoke().load_async(&mut redis).await {
                Ok(_) => send(&mut redis, &script, &batch).await,
                Err(e) => Err(e),
            };
        }
        let outcome = result.map(|_| ()).map_err(|e| e.to_string());
        for (_, reply) in batch.drain(..) {
            // The caller may have gone (shutdown): nothing to tell it then.
            let _ = reply.send(outcome.clone());
        }
    }
}

async fn send(
    redis: &mut RedisConnection,
    script: &redis::Script,
    batch: &[(String, Reply)],
) -> redis::RedisResult<Vec<redis::Value>> {
    let cmds = batch
        .iter()
        .map(|(key, _)| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash()).arg(1).arg(key);
            cmd
        })
        .collect();
    redis.run_all(cmds).await
}
