//! Restoring the stock keys from the ledger: what `stockflow_ops::rebuild` writes, through the
//! scripts beside [`apply_stock.lua`](../lua/apply_stock.lua) (`lua/restore_*.lua`), so the
//! field names and the outcome encoding have one owner.

use std::{collections::BTreeMap, time::Duration};

use stockflow_proto::{
    input::fact::{encode_override, Backorder},
    v1::AvailabilityRules,
};
use stockflow_shared::{keys::Keys, redis_conn::RedisConnection};

/// A SKU's policy as its `policy_set` ledger entries left it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Location priority for orders (comma-separated), when one was set.
    pub priority: Option<String>,
    /// Threshold and safety stock per location; `""` is the SKU-wide default.
    pub locations: BTreeMap<String, PolicyValues>,
    /// The backorder policy, when one other than none was set last.
    pub backorder: Option<Backorder>,
}

/// The policy values of one location (or the SKU-wide default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyValues {
    /// Low-stock threshold, when one is set.
    pub threshold: Option<i64>,
    /// Safety stock, when one is set.
    pub safety_stock: Option<i64>,
}

impl Policy {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.priority.is_none()
            && self.backorder.is_none()
            && self
                .locations
                .values()
                .all(|v| v.threshold.is_none() && v.safety_stock.is_none())
    }
}

/// How an event the ledger knows ended, as its dedup record tells a late delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// It was applied.
    Applied {
        /// When, ms since the Unix epoch.
        at_ms: i64,
    },
    /// A compare-and-set count that did not match: nothing changed.
    Stale {
        /// When it was refused, ms since the Unix epoch.
        at_ms: i64,
        /// The on_hand the count expected.
        expected: i64,
        /// The on_hand it found.
        actual: i64,
    },
}

/// One channel's state of one SKU, as the ledger and the `AVAILABILITY` feed left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelState {
    /// The SKU's override of the channel's rules (its last `channel_rules` entry), when it has
    /// one that sets a field.
    pub override_rules: Option<AvailabilityRules>,
    /// The feed's newest (quantity, version), when the feed has one.
    pub published: Option<(i64, u64)>,
}

/// The restore scripts, loaded once.
#[derive(Debug, Clone)]
pub struct Restore {
    keys: Keys,
    level: redis::Script,
    policy: redis::Script,
    event: redis::Script,
    channels: redis::Script,
    model: redis::Script,
}

/// One location's incoming and unsellable units and open purchase orders, as the ledger left
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelLevels {
    /// Units incoming.
    pub incoming: i64,
    /// Unsellable units: damaged.
    pub damaged: i64,
    /// Unsellable units: quality control.
    pub quality_control: i64,
    /// Unsellable units: held.
    pub held: i64,
    /// Open purchase orders: (reference, outstanding units, expected date in ms).
    pub purchase_orders: Vec<(String, i64, i64)>,
}

impl Restore {
    /// The scripts, for keys under `keys`' prefix.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            level: stockflow_shared::script(include_str!("../lua/restore_level.lua")),
            policy: stockflow_shared::script(include_str!("../lua/restore_policy.lua")),
            event: stockflow_shared::script(include_str!("../lua/restore_event.lua")),
            channels: stockflow_shared::script(include_str!("../lua/restore_channels.lua")),
            model: stockflow_shared::script(include_str!("../lua/restore_model.lua")),
        }
    }

    /// Sets the on-hand and reserved units of (`sku`, `location`); `None` leaves a field as it is.
    pub async fn level(
        &self,
        redis: &RedisConnection,
        sku: &str,
        location: &str,
        on_hand: Option<i64>,
        reserved: Option<i64>,
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        self.level
            .key(self.keys.stock(sku))
            .arg(location)
            .arg(optional(on_hand))
            .arg(optional(reserved))
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }

    /// Sets the incoming and unsellable units and the open purchase orders of (`sku`,
    /// `location`).
    pub async fn model(
        &self,
        redis: &RedisConnection,
        sku: &str,
        location: &str,
        levels: &ModelLevels,
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        let mut invocation = self.model.key(self.keys.stock(sku));
        invocation
            .arg(location)
            .arg(levels.incoming)
            .arg(levels.damaged)
            .arg(levels.quality_control)
            .arg(levels.held);
        for (reference, outstanding, expected_at_ms) in &levels.purchase_orders {
            invocation
                .arg(reference)
                .arg(outstanding)
                .arg(expected_at_ms);
        }
        invocation.invoke_async::<i64>(&mut redis).await.map(drop)
    }

    /// Writes `sku`'s policy.
    pub async fn policy(
        &self,
        redis: &RedisConnection,
        sku: &str,
        policy: &Policy,
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        let mut invocation = self.policy.key(self.keys.policy(sku));
        invocation.arg(policy.priority.as_deref().unwrap_or_default());
        let (backorder, limit) = policy
            .backorder
            .map(Backorder::script_args)
            .unwrap_or_default();
        invocation.arg(backorder).arg(limit);
        for (location, values) in &policy.locations {
            invocation
                .arg(location)
                .arg(optional(values.threshold))
                .arg(optional(values.safety_stock));
        }
        invocation.invoke_async::<i64>(&mut redis).await.map(drop)
    }

    /// Writes kit `sku`'s definition (as `kit_defined` in apply_stock.lua stores it) and notes
    /// the kit in each component's index, where the kit follower looks it up.
    pub async fn kit(
        &self,
        redis: &RedisConnection,
        sku: &str,
        components: &[(String, i64)],
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        redis::cmd("HSET")
            .arg(self.keys.policy(sku))
            .arg("kit")
            .arg(stockflow_proto::input::fact::encode_kit(components))
            .query_async::<i64>(&mut redis)
            .await?;
        for (component, _) in components {
            redis::cmd("SADD")
                .arg(self.keys.kits_of(component))
                .arg(sku)
                .query_async::<i64>(&mut redis)
                .await?;
        }
        Ok(())
    }

    /// Writes the dedup record of `sku`'s event `event_id`, to expire after `left`.
    pub async fn event(
        &self,
        redis: &RedisConnection,
        sku: &str,
        event_id: &str,
        outcome: EventOutcome,
        left: Duration,
    ) -> redis::RedisResult<()> {
        let (at_ms, result, expected, actual) = match outcome {
            EventOutcome::Applied { at_ms } => (at_ms, "applied", None, None),
            EventOutcome::Stale {
                at_ms,
                expected,
                actual,
            } => (at_ms, "stale", Some(expected), Some(actual)),
        };
        let mut redis = redis.clone();
        self.event
            .key(self.keys.event(sku, event_id))
            .arg(at_ms)
            .arg(result)
            .arg(optional(expected))
            .arg(optional(actual))
            .arg(millis(left))
            .invoke_async::<i64>(&mut redis)
            .await
            .map(drop)
    }

    /// Writes `sku`'s channel state: each channel's override (`o:`), quantity (`q:`) and
    /// version (`v:`), in one call on the SKU's channels hash.
    pub async fn channels(
        &self,
        redis: &RedisConnection,
        sku: &str,
        channels: &BTreeMap<String, ChannelState>,
    ) -> redis::RedisResult<()> {
        let mut redis = redis.clone();
        let mut invocation = self.channels.key(self.keys.channels(sku));
        for (channel, state) in channels {
            let (quantity, version) = match state.published {
                Some((q, v)) => (q.to_string(), v.to_string()),
                None => (String::new(), String::new()),
            };
            invocation
                .arg(channel)
                .arg(
                    state
                        .override_rules
                        .as_ref()
                        .map(encode_override)
                        .unwrap_or_default(),
                )
                .arg(quantity)
                .arg(version);
        }
        invocation.invoke_async::<i64>(&mut redis).await.map(drop)
    }
}

/// A script argument that may be absent: the number, or `''`.
fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// Whole milliseconds of `d`, at least 1 (`PEXPIRE` with 0 would delete the key at once).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}
