//! Kits (bundles): a kit SKU is a list of components with quantities; it has no stock of its own.
//!
//! Its components live in other Redis Cluster slots, so no script can see them together. The
//! kit's levels therefore follow its components: [`KitFollower`] reads the ledger
//! (`STOCK_CHANGES`), and for every entry of a component recomputes each kit using it at that
//! location — min over components of ⌊available / quantity⌋ — and sends the result to the kit's
//! own `stock.events.<sku-token>` as a `KitBuildable`. The stock worker applies that in the kit's
//! slot like any fact, so the kit gets its ledger entries, alerts and channel quantities from the
//! same machinery as any SKU. Each computation takes a stamp from a counter in the kit's slot
//! before it reads the components; `apply_stock` applies a stamp only above the last one applied
//! at that location, so a slow, stale computation never overwrites a newer one.
//!
//! The component → kits index (`Keys::kits_of`) is written by the follower when it reads a
//! `kit_defined` entry; a member whose definition no longer names the component is removed
//! when next met.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream;
use prost::Message as _;
use stockflow_proto::{
    input::{
        fact::{decode_kit, Fact, Op},
        Category,
    },
    subjects,
    v1::{
        stock_event::Change, EventMeta, KitBuildable, Reason, Returned, Sold, StockChanged,
        StockEvent,
    },
};
use stockflow_shared::{
    consume::{Delivery, HandleError, Handled, Handler, Outcome},
    keys::Keys,
    levels::read_levels,
    redis_conn::RedisConnection,
};

/// The next stamp of a kit's computations (KEYS[1] its counter, in the kit's slot): above the
/// last one, and at least the server clock in µs — so the stamps, and the event ids built from
/// them, keep growing across a Redis that lost its data and was rebuilt (`stockctl rebuild`
/// restores no counter, and JetStream still remembers the recent ids). Exact in Lua's doubles
/// until the year 2255.
const NEXT_STAMP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
if now > next then next = now end
redis.call('SET', KEYS[1], string.format('%d', next))
return next
";

/// A kit's components: (component SKU, units per kit), sorted by SKU.
pub type Components = Vec<(String, i64)>;

/// The definition of `sku` as stored in its policy hash, or `None` when it is not a kit.
pub async fn read_kit(
    redis: &RedisConnection,
    keys: &Keys,
    sku: &str,
) -> Result<Option<Components>, HandleError> {
    let mut redis = redis.clone();
    let stored: Option<String> = redis::cmd("HGET")
        .arg(keys.policy(sku))
        .arg("kit")
        .query_async(&mut redis)
        .await
        .map_err(HandleError::redis)?;
    match stored {
        None => Ok(None),
        Some(text) => decode_kit(&text)
            .map(Some)
            .ok_or_else(|| HandleError::Unexpected {
                reason: format!("kit definition of {sku:?} is unreadable: {text:?}"),
            }),
    }
}

/// Kits `components`' levels make at each location: min over components of
/// ⌊max(available, 0) / quantity⌋ (0 where a component has no level).
pub fn buildable(
    components: &[(String, i64)],
    available: &BTreeMap<String, BTreeMap<String, i64>>,
    location: &str,
) -> i64 {
    components
        .iter()
        .map(|(sku, quantity)| {
            let units = available
                .get(sku)
                .and_then(|levels| levels.get(location))
                .copied()
                .unwrap_or(0);
            units.max(0) / quantity
        })
        .min()
        .unwrap_or(0)
}

/// Refuses a definition a kit cannot have, judged against what Redis holds now: a component
/// that is itself a kit, or a kit SKU that is a component of another kit (kits do not nest).
/// Two definitions racing each other can slip past this check; the follower then still computes
/// each kit from its components' levels.
pub async fn check_definition(
    redis: &RedisConnection,
    keys: &Keys,
    fact: &Fact,
) -> Result<(), HandleError> {
    let Op::KitDefined { components } = &fact.op else {
        return Ok(());
    };
    if components.is_empty() {
        return Ok(());
    }
    let refuse = |reason: String| {
        HandleError::malformed("kit_defined", Category::InvalidKit.as_str(), reason)
    };
    for (component, _) in components {
        if read_kit(redis, keys, component).await?.is_some() {
            return Err(refuse(format!(
                "component {component:?} is itself a kit: kits do not nest, name its components"
            )));
        }
    }
    match kits_using(redis, keys, &fact.sku).await?.first() {
        Some((kit, _)) => Err(refuse(format!(
            "{:?} is a component of kit {kit:?}: kits do not nest",
            fact.sku
        ))),
        None => Ok(()),
    }
}

/// The kits whose definition names `component` now; stale index members are removed.
async fn kits_using(
    redis: &RedisConnection,
    keys: &Keys,
    component: &str,
) -> Result<Vec<(String, Components)>, HandleError> {
    let mut conn = redis.clone();
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.kits_of(component))
        .query_async(&mut conn)
        .await
        .map_err(HandleError::redis)?;
    let mut kits = Vec::new();
    for kit in members {
        match read_kit(redis, keys, &kit).await? {
            Some(components) if components.iter().any(|(c, _)| c == component) => {
                kits.push((kit, components))
            }
            _ => {
                let _: i64 = redis::cmd("SREM")
                    .arg(keys.kits_of(component))
                    .arg(&kit)
                    .query_async(&mut conn)
                    .await
                    .map_err(HandleError::redis)?;
            }
        }
    }
    Ok(kits)
}

/// The id of a component's share of a kit sale or return: `<event_id>/k<n>`, n the component's
/// 1-based position (components sorted by SKU). Deterministic, so a redelivery sends the same.
pub fn component_event_id(event_id: &str, index: usize) -> String {
    format!("{event_id}/k{}", index + 1)
}

/// Sends a sale or return of a kit as one sale or return of each component (quantity × units
/// per kit, same location or channel, same envelope), and waits until JetStream stored them all.
/// Each component applies its own exactly once, so a redelivery sends them again harmlessly.
pub async fn expand_fact(
    js: &jetstream::Context,
    fact: &Fact,
    components: &[(String, i64)],
) -> Result<(), HandleError> {
    let (quantity, sold) = match fact.op {
        Op::Sold(q) => (q, true),
        Op::Returned(q) => (q, false),
        _ => {
            return Err(HandleError::malformed(
                fact.op.name(),
                Category::InvalidKit.as_str(),
                format!(
                "{:?} is a kit: it has no stock of its own to be {}; change its components' stock",
                fact.sku,
                fact.op.name()
            ),
            ))
        }
    };
    if component_event_id(&fact.meta.event_id, components.len()).len()
        > stockflow_proto::validate::MAX_EVENT_ID_BYTES
    {
        return Err(HandleError::malformed(
            fact.op.name(),
            Category::InvalidMeta.as_str(),
            format!(
                "a sale or return of kit {:?} needs an event_id short enough to derive its components' ids (`<event_id>/k<n>`, at most {} bytes)",
                fact.sku,
                stockflow_proto::validate::MAX_EVENT_ID_BYTES
            ),
        ));
    }
    let mut acks = Vec::with_capacity(components.len());
    for (index, (component, per_kit)) in components.iter().enumerate() {
        let units = quantity * per_kit;
        let event_id = component_event_id(&fact.meta.event_id, index);
        let event = StockEvent {
            meta: Some(EventMeta {
                event_id: event_id.clone(),
                ..fact.meta.clone()
            }),
            sku: component.clone(),
            location: fact.location.clone(),
            channel: fact.channel.clone(),
            change: Some(if sold {
                Change::Sold(Sold { quantity: units })
            } else {
                Change::Returned(Returned { quantity: units })
            }),
            ..Default::default()
        };
        acks.push(crate::send_fact(js, &event).await?);
    }
    for ack in acks {
        ack.await.map_err(HandleError::nats)?;
    }
    Ok(())
}

/// Follows the ledger and keeps every kit's levels current with its components'.
#[derive(Debug, Clone)]
pub struct KitFollower {
    js: jetstream::Context,
    redis: RedisConnection,
    keys: Keys,
    /// `NEXT_STAMP`, hashed once.
    next_stamp: redis::Script,
}

impl KitFollower {
    /// A follower on these connections and keys.
    pub fn new(js: jetstream::Context, redis: RedisConnection, keys: Keys) -> Self {
        Self {
            js,
            redis,
            keys,
            next_stamp: redis::Script::new(NEXT_STAMP),
        }
    }

    /// Recomputes `kit` at `locations` (every location its components or itself have when
    /// `None`) and sends each result to the kit as a `KitBuildable`.
    async fn recompute(&self, kit: &str, locations: Option<&[&str]>) -> Result<(), HandleError> {
        let mut conn = self.redis.clone();
        // The stamp is taken before the components are read: a higher stamp read them later.
        let stamp: u64 = self
            .next_stamp
            .key(self.keys.kit_stamp(kit))
            .invoke_async(&mut conn)
            .await
            .map_err(HandleError::redis)?;
        let Some(components) = read_kit(&self.redis, &self.keys, kit).await? else {
            return Ok(());
        };
        let mut available = BTreeMap::new();
        let mut everywhere = BTreeSet::new();
        for (component, _) in &components {
            let levels = read_levels(&mut conn, &self.keys, component)
                .await
                .map_err(HandleError::redis)?;
            everywhere.extend(levels.keys().cloned());
            available.insert(
                component.clone(),
                levels
                    .into_iter()
                    .map(|(location, l)| (location, l.available()))
                    .collect::<BTreeMap<_, _>>(),
            );
        }
        let locations: Vec<String> = match locations {
            Some(given) => given.iter().map(|l| (*l).to_owned()).collect(),
            None => {
                let own = read_levels(&mut conn, &self.keys, kit)
                    .await
                    .map_err(HandleError::redis)?;
                everywhere.extend(own.into_keys());
                everywhere.into_iter().collect()
            }
        };
        let mut acks = Vec::with_capacity(locations.len());
        for (index, location) in locations.iter().enumerate() {
            let event_id = format!("kit:{stamp}:{index}");
            let event = StockEvent {
                meta: Some(EventMeta {
                    event_id: event_id.clone(),
                    source: "stockflow:kits".into(),
                    reason: Reason::CycleCount.into(),
                    ..Default::default()
                }),
                sku: kit.to_owned(),
                location: location.clone(),
                change: Some(Change::KitBuildable(KitBuildable {
                    buildable: buildable(&components, &available, location),
                    stamp,
                })),
                ..Default::default()
            };
            acks.push(crate::send_fact(&self.js, &event).await?);
        }
        for ack in acks {
            ack.await.map_err(HandleError::nats)?;
        }
        Ok(())
    }
}

impl Handler for KitFollower {
    fn event_types(&self) -> &'static [&'static str] {
        &["kit_defined", "component_changed", "not_a_component"]
    }

    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandleError> {
        // Most entries are of SKUs no kit uses: read, nothing to do.
        let skipped = Ok(Handled {
            event_type: "not_a_component",
            outcome: Outcome::Applied,
        });
        // Rejections (`stock.outcomes.*`) change no level.
        if subjects::stock_changed_token(delivery.subject()).is_none() {
            return skipped;
        }
        let Ok(entry) = StockChanged::decode(delivery.payload()) else {
            // Not ours to judge: the ledger is written by the workers only.
            return skipped;
        };
        match entry.kind.as_str() {
            "kit_defined" => {
                let components = entry.kit.map(|k| k.components).unwrap_or_default();
                if components.is_empty() {
                    return skipped;
                }
                let mut conn = self.redis.clone();
                for component in &components {
                    let _: i64 = redis::cmd("SADD")
                        .arg(self.keys.kits_of(&component.sku))
                        .arg(&entry.sku)
                        .query_async(&mut conn)
                        .await
                        .map_err(HandleError::redis)?;
                }
                self.recompute(&entry.sku, None).await?;
                return Ok(Handled {
                    event_type: "kit_defined",
                    outcome: Outcome::Applied,
                });
            }
            // A kit's own entries; entries with no location change no level anywhere.
            "kit_buildable" | "channel_rules" => return skipped,
            _ if entry.location.is_empty() => return skipped,
            _ => {
                let kits = kits_using(&self.redis, &self.keys, &entry.sku).await?;
                if kits.is_empty() {
                    return skipped;
                }
                for (kit, _) in kits {
                    self.recompute(&kit, Some(&[entry.location.as_str()]))
                        .await?;
                }
            }
        }
        Ok(Handled {
            event_type: "component_changed",
            outcome: Outcome::Applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kit_is_as_many_as_its_scarcest_component_makes() {
        let components = vec![("BOX".to_owned(), 1), ("MUG".to_owned(), 2)];
        let mut available = BTreeMap::new();
        available.insert(
            "BOX".to_owned(),
            BTreeMap::from([("wh".to_owned(), 10), ("st".to_owned(), -3)]),
        );
        available.insert("MUG".to_owned(), BTreeMap::from([("wh".to_owned(), 7)]));
        assert_eq!(buildable(&components, &available, "wh"), 3);
        // Below zero is none; a component missing at a location makes none there.
        assert_eq!(buildable(&components, &available, "st"), 0);
        assert_eq!(buildable(&components, &available, "elsewhere"), 0);
    }
}
