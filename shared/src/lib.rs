#![doc = include_str!("../README.md")]

pub mod batch;
pub mod channels;
pub mod cli;
pub mod connect;
pub mod consume;
pub mod deadletter;
pub mod health;
pub mod keys;
pub mod ledger;
pub mod levels;
pub mod outcome;
pub mod redis_conn;
pub mod replay;
pub mod replication;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod topology;
pub mod validate;
pub mod worker;

/// Helpers prepended to every Lua script (key layout, outcome encoding, alert crossings).
pub const LUA_PRELUDE: &str = include_str!("lua/prelude.lua");

/// A script made of the shared prelude and `body`, loaded once and run by SHA (`EVALSHA`, with a
/// fallback to `EVAL` after a Redis restart).
pub fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{LUA_PRELUDE}\n{body}"))
}

pub use shutdown::shutdown_signal;

/// Wall-clock milliseconds since the Unix epoch, the unit of every `*_ms` field.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
