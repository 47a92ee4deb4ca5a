//! Coalesced script calls: every order and line script call of the worker goes through one
//! [`Coalescer`], so the messages in flight share Redis round trips.
//!
//! Each script is loaded as the body of a function run once per item (`lua/batch.lua`): a batch
//! of calls is one script call per script and slot — on a single server every item of a script
//! shares one call, on Redis Cluster the items of one slot do (one SKU's lines, one order's
//! steps), the slots' calls running concurrently. Within a call the items run one after the
//! other, each exactly as a call of its own would, in stream order (the sequence of the input
//! that asked, then the line's position): a flash sale's reservations of one SKU are decided in
//! one atomic step, first come, first served. The coalescer is adaptive: an idle worker sends
//! each call alone, at once.

use std::sync::Arc;

use redis::cluster_routing::Slot;
use stockflow_shared::{
    batch::{by_group, CoalesceError, CoalesceSettings, Coalescer},
    consume::HandleError,
    redis_conn::RedisConnection,
};

use crate::replies::Reply;

/// Wraps a script as the `step` of `lua/batch.lua`. The line scripts start with
/// `lua/parts.lua`, outside the function (helpers, like the shared prelude).
macro_rules! batched {
    ($($helper:literal),* ; $body:literal) => {
        stockflow_shared::script(concat!(
            $(include_str!($helper),)*
            "local function step(KEYS, ARGV)\n",
            include_str!($body),
            "\nend\n",
            include_str!("../lua/batch.lua")
        ))
    };
}

/// One of the worker's scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ScriptKind {
    /// `lua/order.lua`: the order's own record and its state machine.
    Order,
    /// `lua/reserve_line.lua`: reserves one line, once.
    Reserve,
    /// `lua/release_line.lua`: gives back what one line holds, once.
    Release,
    /// `lua/ship_line.lua`: ships units of one line, once per fulfilment.
    Ship,
}

impl ScriptKind {
    /// The `stockflow_redis_script_seconds` label.
    fn label(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Reserve | Self::Release | Self::Ship => "order_line",
        }
    }
}

/// The worker's scripts, loaded once, each run per item of a batch.
#[derive(Debug)]
struct Scripts {
    order: redis::Script,
    reserve: redis::Script,
    release: redis::Script,
    ship: redis::Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            order: batched!(; "../lua/order.lua"),
            reserve: batched!("../lua/parts.lua"; "../lua/reserve_line.lua"),
            release: batched!("../lua/parts.lua"; "../lua/release_line.lua"),
            ship: batched!("../lua/parts.lua"; "../lua/ship_line.lua"),
        }
    }

    fn get(&self, kind: ScriptKind) -> &redis::Script {
        match kind {
            ScriptKind::Order => &self.order,
            ScriptKind::Reserve => &self.reserve,
            ScriptKind::Release => &self.release,
            ScriptKind::Ship => &self.ship,
        }
    }
}

/// One script call: the keys and arguments its script's header names.
#[derive(Debug)]
pub(crate) struct Call {
    /// Which script.
    pub(crate) script: ScriptKind,
    /// Its KEYS, all in one slot (the first decides the slot).
    pub(crate) keys: Vec<String>,
    /// Its ARGV.
    pub(crate) args: Vec<String>,
    /// Where it runs among the calls of its batch with the same script and slot: the stream
    /// sequence of the input that asked, then the line's position in its order.
    pub(crate) rank: (u64, usize),
}

/// Why a call has no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// The script call holding it failed (connection, timeout, …): retry later.
    #[error("the script call failed: {0}")]
    Redis(Arc<redis::RedisError>),
    /// The script raised an error for this item (its own call would have failed the same way).
    #[error("the script failed: {0}")]
    Step(String),
    /// The coalescer stopped (shutdown) or lost the batch.
    #[error(transparent)]
    Coalesce(#[from] CoalesceError),
}

type Answer = Result<Vec<String>, CallError>;

/// The first field of an item's reply when its step raised an error (`lua/batch.lua`).
const STEP_ERROR: &str = "__step_error";

/// Handle to the worker's coalesced script calls; cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct Calls {
    coalescer: Coalescer<Call, Answer>,
}

impl Calls {
    /// Starts the coalescing task (on the current Tokio runtime).
    pub(crate) fn start(redis: RedisConnection, settings: CoalesceSettings) -> Self {
        let scripts = Arc::new(Scripts::load());
        let coalescer = Coalescer::start(settings, move |batch| {
            flush(redis.clone(), Arc::clone(&scripts), batch)
        });
        Self { coalescer }
    }

    /// Runs `call` (with whatever else is waiting) and decodes its reply.
    pub(crate) async fn run<R: Reply>(&self, call: Call) -> Result<R, HandleError> {
        let reply = self
            .coalescer
            .submit(call)
            .await
            .map_err(CallError::from)
            .and_then(|answer| answer)
            .map_err(|e| match e {
                // A script that raises is a bug: bounded retries, then a dead letter.
                CallError::Step(reason) => HandleError::Unexpected {
                    reason: format!("an order script failed: {reason}"),
                },
                other => HandleError::redis(other),
            })?;
        Ok(R::decode(reply)?)
    }
}

/// Runs a batch: one script call per script and slot (every item of a script on a single
/// server), concurrently; answers in the batch's order.
async fn flush(redis: RedisConnection, scripts: Arc<Scripts>, batch: Vec<Call>) -> Vec<Answer> {
    let cluster = redis.is_cluster();
    let group = |call: &Call| {
        let slot = cluster.then(|| Slot::for_key(call.keys.first().map_or("", String::as_str)));
        (call.script, slot)
    };
    let batch = &batch;
    let answers = by_group(batch, group, |mut members| {
        members.sort_by_key(|&index| batch[index].rank);
        let mut redis = redis.clone();
        let scripts = Arc::clone(&scripts);
        async move {
            // A group exists only once a call was put in it.
            let kind = batch[members[0]].script;
            let mut invocation = scripts.get(kind).prepare_invoke();
            for &index in &members {
                let call = &batch[index];
                invocation.arg(call.keys.len()).arg(call.args.len());
                for key in &call.keys {
                    invocation.key(key);
                }
                for arg in &call.args {
                    invocation.arg(arg);
                }
            }
            let started = std::time::Instant::now();
            let replies = invocation
                .invoke_async::<Vec<redis::Value>>(&mut redis)
                .await;
            metrics::histogram!("stockflow_redis_script_seconds", "script" => kind.label())
                .record(started.elapsed().as_secs_f64());
            let answers: Vec<Answer> = match replies {
                Ok(replies) if replies.len() == members.len() => replies
                    .into_iter()
                    .map(
                        |reply| match redis::from_redis_value::<Vec<String>>(reply) {
                            Ok(fields)
                                if fields.first().map(String::as_str) == Some(STEP_ERROR) =>
                            {
                                Err(CallError::Step(fields.get(1).cloned().unwrap_or_default()))
                            }
                            Ok(fields) => Ok(fields),
                            Err(e) => Err(CallError::Step(e.to_string())),
                        },
                    )
                    .collect(),
                Ok(replies) => {
                    let reason =
                        format!("{} replies to a batch of {}", replies.len(), members.len());
                    vec![Err(CallError::Step(reason)); members.len()]
                }
                Err(e) => vec![Err(CallError::Redis(Arc::new(e))); members.len()],
            };
            members.into_iter().zip(answers).collect::<Vec<_>>()
        }
    })
    .await;
    answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Err(CallError::Coalesce(CoalesceError::NoReply))))
        .collect()
}
