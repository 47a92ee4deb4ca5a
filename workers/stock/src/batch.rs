//! Many facts per Redis round trip: the `apply_stock` calls of all in-flight events — applies and
//! the marks of events whose derived messages are stored — are coalesced
//! ([`stockflow_shared::batch::Coalescer`]) into one script call per batch, each caller awaiting
//! its own reply. Adaptive: while a flush slot is free a request goes out alone at once; while
//! every slot is busy the next batch grows.
//!
//! On Redis Cluster a script's keys must share a slot, so a batch is split by the SKU's hash tag
//! (`{<sku-token>}`, which every key of a SKU carries) into one call per tag, sent concurrently;
//! on a single server the whole batch is one call.
//!
//! A call that fails for the connection (Redis down, a timeout, a failover) fails every item in
//! it with the same error: they are NAKed and redelivered, and what the call did (if it ran)
//! is found by the dedup records. A call the server refuses for one item (a script error) would
//! otherwise fail its batch-mates with it, so its items are then sent again one by one. A script
//! error does not undo what the call wrote before it: an item the failed call had applied finds
//! its dedup record now and answers as a duplicate not yet published, so its derived messages are
//! still published (from the stored outcome) before its ack.

use std::sync::Arc;

use stockflow_shared::{
    batch::{by_group, CoalesceSettings, Coalescer},
    consume::HandleError,
    redis_conn::RedisConnection,
};

/// One item of an `apply_stock` call (see the script's header).
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// Apply one fact: its 4 keys and 13 arguments.
    Apply {
        /// dedup record, stock, policy, channels.
        keys: [String; 4],
        /// The fact's arguments, `op` first (boxed: the larger part of an item).
        args: Box<[String; 13]>,
    },
    /// Mark a dedup record published.
    Mark(String),
}

impl Item {
    /// The first key: every key of an item carries the same hash tag.
    fn first_key(&self) -> &str {
        match self {
            Self::Apply { keys, .. } => &keys[0],
            Self::Mark(key) => key,
        }
    }
}

/// An item's reply (the script's strings), or why its call failed.
pub(crate) type Reply = Result<Vec<String>, Arc<redis::RedisError>>;

/// Handle to the coalescing task; cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct Batches {
    coalescer: Coalescer<Item, Reply>,
}

/// Why an item got no reply from Redis.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// Its call failed; the same error for every item of the call.
    #[error(transparent)]
    Redis(Arc<redis::RedisError>),
    /// The coalescing task stopped (shutdown) or a batch was answered wrongly (a bug).
    #[error(transparent)]
    Coalescer(#[from] stockflow_shared::batch::CoalesceError),
}

impl BatchError {
    /// What the consume loop does with it: a script that raised on this item's own keys or
    /// arguments (a Lua error, a key of the wrong type) will raise again on every redelivery, so
    /// it is a bug to retry a few times and then dead-letter; anything else (Redis down, out of
    /// memory, busy, failing over) is transient and retried until Redis recovers.
    pub(crate) fn into_handle_error(self) -> HandleError {
        match self {
            BatchError::Redis(e) if script_raised(&e) => HandleError::Unexpected {
                reason: format!("apply_stock raised: {e}"),
            },
            other => HandleError::redis(other),
        }
    }
}

/// Redis reports an error raised inside a script with `@user_script` in its text; among those,
/// `ERR` (the script's own error) and `WRONGTYPE` (its data) recur, while `OOM`, `BUSY` and the
/// like pass.
fn script_raised(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("ERR" | "WRONGTYPE")) && e.to_string().contains("@user_script")
}

impl Batches {
    /// Starts the coalescing task on the current Tokio runtime, with batches of `shape`.
    pub(crate) fn start(
        redis: RedisConnection,
        script: redis::Script,
        shape: CoalesceSettings,
    ) -> Self {
        let script = Arc::new(script);
        let metrics = Metrics {
            seconds: metrics::histogram!("stockflow_redis_script_seconds", "script" => "apply_stock"),
            calls: metrics::counter!("stockflow_stock_batch_calls_total"),
            items: metrics::counter!("stockflow_stock_batch_items_total"),
        };
        let coalescer = Coalescer::start(shape, move |items: Vec<Item>| {
            let (redis, script, metrics) = (redis.clone(), Arc::clone(&script), metrics.clone());
            async move { flush(redis, &script, items, &metrics).await }
        });
        Self { coalescer }
    }

    /// Runs `item` in the next batch; returns its own reply.
    pub(crate) async fn run(&self, item: Item) -> Result<Vec<String>, BatchError> {
        self.coalescer
            .submit(item)
            .await?
            .map_err(BatchError::Redis)
    }
}

/// Registered once, not per call.
#[derive(Debug, Clone)]
struct Metrics {
    /// `stockflow_redis_script_seconds{script="apply_stock"}`: per call.
    seconds: metrics::Histogram,
    /// `stockflow_stock_batch_calls_total`: `apply_stock` calls.
    calls: metrics::Counter,
    /// `stockflow_stock_batch_items_total`: items in them (applies and marks).
    items: metrics::Counter,
}

/// One batch: one call per hash tag on a cluster, one call in all on a single server.
async fn flush(
    redis: RedisConnection,
    script: &redis::Script,
    items: Vec<Item>,
    metrics: &Metrics,
) -> Vec<Reply> {
    if !redis.is_cluster() {
        return call_or_split(redis, script, items, metrics).await;
    }
    let replies = by_group(
        &items,
        |item| hash_tag(item.first_key()),
        |indexes| {
            let redis = redis.clone();
            let group: Vec<Item> = indexes.iter().map(|&i| items[i].clone()).collect();
            async move {
                let answers = call_or_split(redis, script, group, metrics).await;
                indexes.into_iter().zip(answers).collect()
            }
        },
    )
    .await;
    // Every index belongs to exactly one group, and each group answers one reply per item
    // (`call_or_split`), so no slot stays empty; if one did, the coalescer answers its batch
    // `NoReply` rather than mismatching replies.
    replies.into_iter().flatten().collect()
}

/// The hash tag of a key (what Redis Cluster hashes), or the whole key when it has none.
fn hash_tag(key: &str) -> &str {
    key.find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &key[open + 1..close])
        })
        .unwrap_or(key)
}

/// One call for `items`; a script error (not a connection failure) sends each item again alone.
async fn call_or_split(
    mut redis: RedisConnection,
    script: &redis::Script,
    items: Vec<Item>,
    metrics: &Metrics,
) -> Vec<Reply> {
    match call(&mut redis, script, &items, metrics).await {
        Ok(replies) => replies.into_iter().map(Ok).collect(),
        Err(e) if items.len() > 1 && is_refusal(&e) => {
            let mut replies = Vec::with_capacity(items.len());
            for item in items {
                replies.push(
                    call(&mut redis, script, std::slice::from_ref(&item), metrics)
                        .await
                        .map_err(Arc::new)
                        .and_then(|mut one| one.pop().ok_or_else(|| Arc::new(wrong_shape(0, 1)))),
                );
            }
            replies
        }
        Err(e) => {
            let e = Arc::new(e);
            items.iter().map(|_| Err(Arc::clone(&e))).collect()
        }
    }
}

/// A failure of the script itself, not of getting it to the server: another item's call may
/// succeed.
fn is_refusal(e: &redis::RedisError) -> bool {
    !(e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error())
}

async fn call(
    redis: &mut RedisConnection,
    script: &redis::Script,
    items: &[Item],
    metrics: &Metrics,
) -> redis::RedisResult<Vec<Vec<String>>> {
    let mut invocation = script.prepare_invoke();
    for item in items {
        match item {
            Item::Apply { keys, args } => {
                for key in keys {
                    invocation.key(key);
                }
                for arg in args.iter() {
                    invocation.arg(arg);
                }
            }
            Item::Mark(key) => {
                invocation.key(key).arg("mark");
            }
        }
    }
    metrics.calls.increment(1);
    metrics.items.increment(items.len() as u64);
    let started = std::time::Instant::now();
    let replies: Vec<Vec<String>> = invocation.invoke_async(redis).await?;
    metrics.seconds.record(started.elapsed().as_secs_f64());
    if replies.len() != items.len() {
        return Err(wrong_shape(replies.len(), items.len()));
    }
    Ok(replies)
}

fn wrong_shape(got: usize, sent: usize) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "apply_stock answered the wrong number of replies",
        format!("{got} replies to {sent} items"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_tag_is_what_redis_cluster_hashes() {
        assert_eq!(hash_tag("sf:{A1}:stock"), "A1");
        assert_eq!(hash_tag("sf:{A1}:evt:{x}"), "A1");
        assert_eq!(hash_tag("sf:{}:x"), "sf:{}:x");
        assert_eq!(hash_tag("plain"), "plain");
    }

    #[test]
    fn a_script_that_raised_is_a_bug_and_a_server_in_trouble_is_transient() {
        // As the server sends them.
        let error = |code: &str, detail: &str| match redis::parse_redis_value(
            format!("-{code} {detail}\r\n").as_bytes(),
        ) {
            Ok(redis::Value::ServerError(e)) => redis::RedisError::from(e),
            other => panic!("not a server error: {other:?}"),
        };
        let raised = |e: redis::RedisError| {
            matches!(
                BatchError::Redis(Arc::new(e)).into_handle_error(),
                HandleError::Unexpected { .. }
            )
        };
        let at = "script: 0afd, on @user_script:1.";
        assert!(raised(error(
            "ERR",
            &format!("user_script:1: attempt to index a nil value {at}")
        )));
        assert!(raised(error(
            "WRONGTYPE",
            &format!("Operation against a key holding the wrong kind of value {at}")
        )));
        assert!(!raised(error(
            "OOM",
            &format!("command not allowed when used memory > 'maxmemory'. {at}")
        )));
        assert!(!raised(error("BUSY", "Redis is busy running a script.")));
        assert!(!raised(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
    }
}
