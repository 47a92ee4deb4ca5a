//! The sales channels as the workers compute with them: a live copy of the `CHANNELS` bucket
//! ([`ChannelBook`]), their encoding for the scripts ([`spec`]), and the set of known locations
//! a channel may draw from ([`Locations`]).
//!
//! The bucket is written only by the stock worker, from `CHANNEL_EVENTS`; an entry's revision is
//! the channel's `rules_version`. Scripts get the specs a worker knows and keep the newest one
//! they have seen per SKU (see `lua/prelude.lua`), so a worker whose copy lags behind another's
//! never computes with older rules than the other already used.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{
    input::fact::{encode_backorder, encode_rules},
    v1::{AllocationStrategy, Channel},
};

use crate::{keys::Keys, redis_conn::RedisConnection, topology};

const US: char = '\u{1f}';
const RS: char = '\u{1e}';
const GS: char = '\u{1d}';

/// A channel as the book holds it: defined, or removed at some rules version.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// Defined; `rules_version` is set.
    Defined(Arc<Channel>),
    /// Removed at this rules version.
    Removed(u64),
}

impl Known {
    /// Its rules version.
    pub fn rules_version(&self) -> u64 {
        match self {
            Self::Defined(c) => c.rules_version,
            Self::Removed(v) => *v,
        }
    }
}

/// The spec of `channel` as the scripts take it: `rules_version`, strategy, rules, locations,
/// then its backorder policy ([`encode_backorder`]) when it sets one (a spec without one reads
/// as before).
pub fn spec(known: &Known) -> String {
    match known {
        Known::Defined(c) => {
            let strategy = match AllocationStrategy::try_from(c.allocation) {
                Ok(AllocationStrategy::MostAvailable) => "m",
                _ => "p",
            };
            let rules = c.rules.unwrap_or_default();
            let backorder = encode_backorder(&rules);
            let mut spec = format!(
                "{}{US}{strategy}{US}{}{US}{}",
                c.rules_version,
                encode_rules(&rules),
                c.locations.join(&GS.to_string())
            );
            if !backorder.is_empty() {
                spec.push(US);
                spec.push_str(&backorder);
            }
            spec
        }
        Known::Removed(version) => format!("{version}{US}x{US}{US}{US}{US}{US}{US}"),
    }
}

/// Records of `(id, spec)` pairs, as a script's channels argument.
fn records<'a>(specs: impl Iterator<Item = (&'a str, &'a Known)>) -> String {
    let mut out = String::new();
    for (id, known) in specs {
        if !out.is_empty() {
            out.push(RS);
        }
        out.push_str(id);
        out.push(US);
        out.push_str(&spec(known));
    }
    out
}

/// What a channel may list from `available` (per location, as the channel sees it: on_hand −
/// reserved − safety − unsellable (damaged, quality control, held), signed) under `rules` with the SKU's `override_rules` applied field by
/// field: the pool is the sum of the positive availables; the buffer is taken off, then the
/// percentage (rounded down), then the maximum; below `end_when_below` it lists 0; never below 0.
/// The scripts compute the same (`channel_quantity` in `lua/prelude.lua`); this is the model
/// reconcile and the tests check them against. Returns (quantity, pool).
pub fn quantity(
    available: &[i64],
    rules: &stockflow_proto::v1::AvailabilityRules,
    override_rules: Option<&stockflow_proto::v1::AvailabilityRules>,
) -> (i64, i64) {
    let pick = |f: fn(&stockflow_proto::v1::AvailabilityRules) -> Option<i64>| {
        override_rules.and_then(f).or_else(|| f(rules))
    };
    let pool: i64 = available.iter().filter(|a| **a > 0).sum();
    let mut q = pool;
    if let Some(buffer) = pick(|r| r.buffer) {
        q -= buffer;
    }
    if let Some(percent) = pick(|r| r.percent) {
        q = (q * percent).div_euclid(100);
    }
    if let Some(max) = pick(|r| r.max_listed) {
        q = q.min(max);
    }
    if pick(|r| r.end_when_below).is_some_and(|end| q < end) {
        q = 0;
    }
    (q.max(0), pool)
}

/// The backorder policy a channel sells a SKU under, as the scripts store it (`n`, `i`, `c`,
/// `u`) with its cap: the SKU's override of the channel's rules, else the channel's rules, else
/// the SKU's policy hash (`bo`, `bol`) — `channel_backorder_policy` in `lua/prelude.lua`.
pub fn channel_backorder(
    rules: &stockflow_proto::v1::AvailabilityRules,
    override_rules: Option<&stockflow_proto::v1::AvailabilityRules>,
    policy: &std::collections::BTreeMap<String, String>,
) -> (String, i64) {
    let own = override_rules
        .map(encode_backorder)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| encode_backorder(rules));
    if let Some(kind) = own.get(..1) {
        return (kind.to_owned(), own[1..].parse().unwrap_or(0));
    }
    (
        policy.get("bo").cloned().unwrap_or_else(|| "n".to_owned()),
        policy.get("bol").and_then(|v| v.parse().ok()).unwrap_or(0),
    )
}

/// What a backorder policy (`kind` as [`channel_backorder`] gives it, and its cap) lets a
/// channel list beyond stock (a preorder listing), as the scripts compute it
/// (`channel_backorders` in `lua/prelude.lua`) from the SKU's stock hash (`in:<l>`, `bo:<l>`)
/// over the channel's `locations`.
pub fn beyond_stock(
    locations: &[String],
    (kind, limit): (&str, i64),
    stock: &std::collections::BTreeMap<String, i64>,
) -> i64 {
    let field = |name: String| stock.get(&name).copied().unwrap_or(0);
    match kind {
        "u" => UNLIMITED_BACKORDER_LISTED,
        "c" => {
            let total: i64 = stock
                .iter()
                .filter(|(k, _)| k.starts_with("bo:"))
                .map(|(_, v)| *v)
                .sum();
            (limit - total).max(0)
        }
        "i" => locations
            .iter()
            .map(|l| (field(format!("in:{l}")) - field(format!("bo:{l}"))).max(0))
            .sum(),
        _ => 0,
    }
}

/// What a channel lists beyond stock under an unlimited backorder policy (within its maximum
/// listed); the scripts' `UNLIMITED_BACKORDER_LISTED`.
pub const UNLIMITED_BACKORDER_LISTED: i64 = 1_000_000;

/// `quantity` (what stock lets the channel list) with what the backorder policy adds beyond
/// stock, capped again by the maximum listed, as the scripts add it.
pub fn with_backorders(
    quantity: i64,
    beyond: i64,
    rules: &stockflow_proto::v1::AvailabilityRules,
    override_rules: Option<&stockflow_proto::v1::AvailabilityRules>,
) -> i64 {
    if beyond <= 0 {
        return quantity;
    }
    let max = override_rules
        .and_then(|r| r.max_listed)
        .or(rules.max_listed);
    let q = quantity + beyond;
    max.map_or(q, |m| q.min(m))
}

#[derive(Debug, Default)]
struct Book {
    channels: HashMap<String, Known>,
}

impl Book {
    /// Keeps `known` for `id` unless what is held is as new.
    fn apply(&mut self, id: &str, known: Known) {
        match self.channels.get(id) {
            Some(held) if held.rules_version() >= known.rules_version() => {}
            _ => {
                self.channels.insert(id.to_owned(), known);
            }
        }
    }
}

fn keep(book: &RwLock<Book>, updated: &tokio::sync::Notify, entry: &kv::Entry) {
    if let Some(known) = known_of(entry) {
        book.write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&entry.key, known);
        updated.notify_waiters();
    }
}

/// Keeps `book` current from `watch` for as long as a [`ChannelBook`] holds it. A watch that
/// failed is not polled again (the client library does not allow it): a new one starts after
/// the last revision seen.
async fn follow(
    book: std::sync::Weak<RwLock<Book>>,
    updated: Arc<tokio::sync::Notify>,
    kv: kv::Store,
    mut watch: kv::Watch,
    mut last: u64,
) {
    loop {
        match watch.next().await {
            Some(Ok(entry)) => {
                let Some(book) = book.upgrade() else { return };
                last = last.max(entry.revision);
                keep(&book, &updated, &entry);
            }
            Some(Err(e)) => {
                // The client re-subscribes by itself across reconnects: an error here is mostly
                // the connection closing at shutdown, so it is told once, quietly.
                tracing::debug!(error = %e, "watching the CHANNELS bucket; watching anew");
                let mut told = false;
                watch = loop {
                    if book.strong_count() == 0 {
                        return;
                    }
                    match kv.watch_all_from_revision(last + 1).await {
                        Ok(watch) => break watch,
                        Err(e) => {
                            if !std::mem::replace(&mut told, true) {
                                tracing::warn!(error = %e, "watching the CHANNELS bucket; trying again every second");
                            }
                            // Back-off between attempts while NATS is away.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
            }
            None => return,
        }
    }
}

/// The last entry of `id` in the bucket, a deletion included (`kv::Store::entry` answers `None`
/// for a deleted key, which would hide the rules version of a removal). `None`: never written.
pub async fn last_entry(store: &kv::Store, id: &str) -> anyhow::Result<Option<kv::Entry>> {
    let mut history = store.history(id).await?;
    let mut last = None;
    while let Some(entry) = history.next().await {
        last = Some(entry?);
    }
    Ok(last)
}

/// A live copy of the `CHANNELS` bucket, shared by every handler of a worker.
#[derive(Debug, Clone)]
pub struct ChannelBook {
    book: Arc<RwLock<Book>>,
    kv: kv::Store,
    updated: Arc<tokio::sync::Notify>,
}

/// The channel a bucket entry defines, its `rules_version` the entry's revision; `None` for a
/// removal. The one reader of the bucket's values: the workers, the gateway, `stockctl` and
/// reconcile all read a channel through it.
pub fn defined_by(entry: &kv::Entry) -> Result<Option<Channel>, prost::DecodeError> {
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    let mut channel = Channel::decode(entry.value.as_ref())?;
    channel.rules_version = entry.revision;
    Ok(Some(channel))
}

/// Decodes a bucket entry; `None` for a value that is not a channel (never written by stockflow).
fn known_of(entry: &kv::Entry) -> Option<Known> {
    match defined_by(entry) {
        Ok(Some(channel)) => Some(Known::Defined(Arc::new(channel))),
        Ok(None) => Some(Known::Removed(entry.revision)),
        Err(_) => None,
    }
}

impl ChannelBook {
    /// Reads the bucket and follows it from then on (until the process ends).
    pub async fn start(js: &jetstream::Context) -> anyhow::Result<Self> {
        let kv = js.get_key_value(topology::CHANNELS).await?;
        let mut stream = js.get_stream(format!("KV_{}", topology::CHANNELS)).await?;
        // Everything after this sequence is watched; everything up to it is read now.
        let start = stream.info().await?.state.last_sequence;
        let book = Arc::new(RwLock::new(Book::default()));
        let this = Self {
            book,
            kv,
            updated: Arc::new(tokio::sync::Notify::new()),
        };
        if start > 0 {
            let mut keys = this.kv.keys().await?;
            while let Some(key) = keys.next().await {
                let key = key?;
                this.fetch(&key).await?;
            }
        }
        let watch = this.kv.watch_all_from_revision(start + 1).await?;
        tokio::spawn(follow(
            Arc::downgrade(&this.book),
            this.updated.clone(),
            this.kv.clone(),
            watch,
            start,
        ));
        Ok(this)
    }

    fn keep(&self, entry: &kv::Entry) {
        keep(&self.book, &self.updated, entry);
    }

    /// Reads `id` from the bucket itself and keeps it.
    async fn fetch(&self, id: &str) -> anyhow::Result<Option<Known>> {
        if let Some(entry) = last_entry(&self.kv, id).await? {
            self.keep(&entry);
        }
        Ok(self.get(id))
    }

    /// What the book holds of `id`.
    pub fn get(&self, id: &str) -> Option<Known> {
        self.book
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .channels
            .get(id)
            .cloned()
    }

    /// Every defined channel, by id.
    pub fn defined(&self) -> Vec<Arc<Channel>> {
        let book = self.book.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Arc<Channel>> = book
            .channels
            .values()
            .filter_map(|k| match k {
                Known::Defined(c) => Some(c.clone()),
                Known::Removed(_) => None,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// `id` as the book holds it, read from the bucket when the book does not know it yet (a
    /// channel created a moment ago). `None`: it was never defined.
    pub async fn lookup(&self, id: &str) -> anyhow::Result<Option<Known>> {
        match self.get(id) {
            Some(known) => Ok(Some(known)),
            None => self.fetch(id).await,
        }
    }

    /// `id` at `rules_version` or newer: waits up to `wait` for the watch to bring it, then reads
    /// the bucket. `None` when even the bucket holds an older version (the caller retries later).
    pub async fn at_least(
        &self,
        id: &str,
        rules_version: u64,
        wait: Duration,
    ) -> anyhow::Result<Option<Known>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let updated = self.updated.notified();
            if let Some(known) = self.get(id).filter(|k| k.rules_version() >= rules_version) {
                return Ok(Some(known));
            }
            if tokio::time::timeout_at(deadline, updated).await.is_err() {
                return Ok(self
                    .fetch(id)
                    .await?
                    .filter(|k| k.rules_version() >= rules_version));
            }
        }
    }

    /// The script argument for a change at `locations`: every channel the book knows, removed
    /// ones as removed, and `named` (a channel the input names, as looked up) in place of the
    /// book's. All of them, not only those drawing from `locations` now: a SKU may hold an older
    /// spec of a channel that did (it drew from there before its rules changed, or it was removed
    /// since), and only the newer spec passed along keeps the script from computing with it.
    pub fn specs_for(&self, named: Option<(&str, &Known)>) -> String {
        let book = self.book.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<(&str, &Known)> = book
            .channels
            .iter()
            .filter(|(id, _)| named.is_none_or(|(n, _)| n != id.as_str()))
            .map(|(id, known)| (id.as_str(), known))
            .collect();
        ids.sort_by_key(|(id, _)| *id);
        ids.extend(named);
        records(ids.into_iter())
    }
}

/// The locations that have had stock recorded: the ones a channel may name. Kept in one Redis
/// set ([`Keys::locations`]), added to by the stock worker as it applies facts.
#[derive(Debug, Clone)]
pub struct Locations {
    key: String,
    /// Added already by this process: most facts name a location it has seen.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl Locations {
    /// The set under `keys`.
    pub fn new(keys: &Keys) -> Self {
        Self {
            key: keys.locations(),
            seen: Arc::default(),
        }
    }

    /// Adds `locations` to the set (once per process per location).
    pub async fn note(
        &self,
        redis: &RedisConnection,
        locations: impl IntoIterator<Item = &str>,
    ) -> redis::RedisResult<()> {
        let new: Vec<String> = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            locations
                .into_iter()
                .filter(|l| !l.is_empty() && !seen.contains(*l))
                .map(str::to_owned)
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let mut redis = redis.clone();
        redis::cmd("SADD")
            .arg(&self.key)
            .arg(&new)
            .query_async::<()>(&mut redis)
            .await?;
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(new);
        Ok(())
    }

    /// Those of `locations` that are not in the set, in their order.
    pub async fn unknown(
        &self,
        redis: &RedisConnection,
        locations: &[String],
    ) -> redis::RedisResult<Vec<String>> {
        if locations.is_empty() {
            return Ok(Vec::new());
        }
        let mut redis = redis.clone();
        let member: Vec<bool> = redis::cmd("SMISMEMBER")
            .arg(&self.key)
            .arg(locations)
            .query_async(&mut redis)
            .await?;
        Ok(locations
            .iter()
            .zip(member)
            .filter(|(_, known)| !known)
            .map(|(l, _)| l.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use stockflow_proto::v1::AvailabilityRules;

    use super::*;

    #[test]
    fn specs_carry_version_strategy_rules_and_locations() {
        let channel = Channel {
            id: "m".into(),
            locations: vec!["a".into(), "b".into()],
            rules: Some(AvailabilityRules {
                buffer: Some(2),
                max_listed: Some(10),
                ..Default::default()
            }),
            allocation: AllocationStrategy::MostAvailable.into(),
            rules_version: 7,
            ..Default::default()
        };
        assert_eq!(
            spec(&Known::Defined(Arc::new(channel))),
            "7\u{1f}m\u{1f}2\u{1f}\u{1f}10\u{1f}\u{1f}\u{1f}a\u{1d}b"
        );
        assert_eq!(spec(&Known::Removed(9)).split(US).count(), 8);
    }

    #[test]
    fn rules_apply_buffer_percent_max_then_end_when() {
        let rules = AvailabilityRules {
            buffer: Some(2),
            max_listed: Some(10),
            end_when_below: Some(3),
            ..Default::default()
        };
        assert_eq!(quantity(&[5, 5, 5], &rules, None), (10, 15));
        assert_eq!(quantity(&[5, -3, 0], &rules, None), (3, 5));
        assert_eq!(quantity(&[4], &rules, None), (0, 4));
        let half = AvailabilityRules {
            percent: Some(50),
            ..Default::default()
        };
        assert_eq!(quantity(&[7], &half, None), (3, 7));
        assert_eq!(
            quantity(&[12], &rules, Some(&half)),
            (5, 12),
            "field by field"
        );
        assert_eq!(
            quantity(
                &[1],
                &AvailabilityRules {
                    buffer: Some(5),
                    percent: Some(50),
                    ..Default::default()
                },
                None
            ),
            (0, 1)
        );
    }

    #[test]
    fn a_book_keeps_the_newest_version() {
        let mut book = Book::default();
        let at = |v| {
            Known::Defined(Arc::new(Channel {
                rules_version: v,
                ..Default::default()
            }))
        };
        book.apply("m", at(5));
        book.apply("m", at(3));
        assert_eq!(book.channels["m"].rules_version(), 5);
        book.apply("m", Known::Removed(6));
        assert_eq!(book.channels["m"], Known::Removed(6));
    }
}
