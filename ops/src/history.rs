//! A SKU's history from its ledger: pages of its entries (filtered by location, kind and time,
//! with sequence cursors) and its levels at a past time, read without scanning the stream.
//!
//! JetStream indexes a stream by subject, and each SKU's entries have their own subject
//! (`stock.changes.<sku-token>`, or `stock.changes.<p>.<sku-token>` in partition `p`'s stream):
//! an ordered consumer filtered on that subject and started at a sequence skips every other
//! SKU's entries inside the server. Newest-first pages read backwards in windows of stream
//! sequences that grow eightfold until the page is full or the SKU's first entry is reached,
//! so a page costs about the entries it holds, not the stream's length.
//!
//! Times are the entries' `applied_at_ms` (Redis server time). Within one SKU the ledger is in
//! the order the changes were applied, so `applied_at_ms` does not decrease along it: where a
//! time range starts and ends is found by a binary search over the SKU's entries (one
//! subject-indexed lookup per step), and reading stops at the first entry outside it. The
//! stream's own timestamps (NATS server time) are not used, so the two servers' clocks need not
//! agree.

use std::{collections::BTreeMap, ops::ControlFlow};

use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{self, DeliverPolicy},
    stream::LastRawMessageErrorKind,
};
use futures::StreamExt as _;
use prost::Message as _;
use stockflow_proto::{subjects, v1::StockChanged};

use crate::Error;

/// Most entries one page holds.
pub const MAX_LIMIT: usize = 1000;

/// Stream sequences the first backward window spans; each next one spans eight times more.
const FIRST_WINDOW: u64 = 4096;

/// One ledger entry and its sequence in its ledger stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its sequence in its ledger stream (`STOCK_CHANGES` or `STOCK_CHANGES_<p>`): the cursor.
    pub sequence: u64,
    /// The change itself.
    pub change: StockChanged,
}

/// In which order a page lists entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first (the default); `next` goes as `before`.
    #[default]
    NewestFirst,
    /// Oldest first; `next` goes as `after`.
    OldestFirst,
}

/// What a page of a SKU's ledger holds: the entries that match every filter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only this location's entries.
    pub location: Option<String>,
    /// Only entries of this kind (`received`, `sold`, ...).
    pub kind: Option<String>,
    /// Only entries applied at or after this time, ms since the Unix epoch.
    pub from_ms: Option<i64>,
    /// Only entries applied at or before this time, ms since the Unix epoch.
    pub to_ms: Option<i64>,
    /// Only entries with a sequence below this one.
    pub before: Option<u64>,
    /// Only entries with a sequence above this one.
    pub after: Option<u64>,
    /// Most entries answered, 1..=[`MAX_LIMIT`].
    pub limit: usize,
    /// Newest or oldest first.
    pub order: Order,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            location: None,
            kind: None,
            from_ms: None,
            to_ms: None,
            before: None,
            after: None,
            limit: 50,
            order: Order::NewestFirst,
        }
    }
}

impl Query {
    fn matches(&self, change: &StockChanged) -> bool {
        self.location.as_ref().is_none_or(|l| *l == change.location)
            && self.kind.as_ref().is_none_or(|k| *k == change.kind)
            && self.from_ms.is_none_or(|t| change.applied_at_ms >= t)
            && self.to_ms.is_none_or(|t| change.applied_at_ms <= t)
    }
}

/// A page of a SKU's ledger.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The entries, in the query's order.
    pub items: Vec<Entry>,
    /// The cursor of the next page (`before` newest first, `after` oldest first): the last
    /// item's sequence; `None` when no entry matching the query is left.
    pub next: Option<u64>,
}

/// Why a parameter was refused: its name and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct BadParameter {
    /// The parameter, as the caller named it (`from`, `to`, `at`, ...).
    pub name: String,
    /// What is wrong with its value.
    pub reason: String,
}

/// A time as `from`, `to` or `at` take it: RFC 3339 (`2026-12-07T10:00:00Z`) or ms since the
/// Unix epoch; ms since the Unix epoch.
pub fn parse_time(name: &str, value: &str) -> Result<i64, BadParameter> {
    let bad = |reason: String| BadParameter {
        name: name.to_owned(),
        reason,
    };
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse()
            .map_err(|_| bad(format!("{value:?} is too large for ms since the epoch")));
    }
    let time = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
        bad(format!(
            "{value:?} is neither RFC 3339 (2026-12-07T10:00:00Z) nor ms since the epoch: {e}"
        ))
    })?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
        .ok()
        .filter(|ms| *ms >= 0)
        .ok_or_else(|| bad(format!("{value:?} is before 1970 or too far ahead")))
}

/// A page of `sku`'s ledger answering `query`. An unknown SKU has an empty page.
pub async fn page(js: &jetstream::Context, sku: &str, query: &Query) -> Result<Page, Error> {
    let limit = query.limit.clamp(1, MAX_LIMIT);
    let Some(ledger) = SkuLedger::find(js, sku).await? else {
        return Ok(Page::default());
    };
    let mut lo = ledger
        .first
        .max(query.after.map_or(0, |a| a.saturating_add(1)));
    let mut hi = ledger
        .last
        .min(query.before.map_or(u64::MAX, |b| b.saturating_sub(1)));
    if let Some(to) = query.to_ms {
        hi = hi.min(ledger.last_at_or_before(to).await?);
    }
    if let (Some(from), Order::OldestFirst) = (query.from_ms, query.order) {
        lo = lo.max(ledger.first_at_or_after(from).await?);
    }
    let mut items = Vec::new();
    if lo <= hi {
        let mut take = |entry: Entry| {
            let outside = match query.order {
                Order::NewestFirst => query
                    .from_ms
                    .is_some_and(|t| entry.change.applied_at_ms < t),
                Order::OldestFirst => query.to_ms.is_some_and(|t| entry.change.applied_at_ms > t),
            };
            if outside {
                return ControlFlow::Break(());
            }
            if query.matches(&entry.change) {
                items.push(entry);
                if items.len() > limit {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        };
        match query.order {
            Order::NewestFirst => ledger.backward(lo, hi, &mut take).await?,
            Order::OldestFirst => ledger.forward(lo, hi, &mut take).await?,
        }
    }
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| e.sequence)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The levels of `sku` at time `at_ms` (ms since the Unix epoch), by location: for each location
/// (or only `location`), the newest entry applied at or before `at_ms`, whose `after` levels
/// are the location's levels at that time. A location whose first entry came after `at_ms` is
/// absent: nothing was recorded there yet.
pub async fn levels_at(
    js: &jetstream::Context,
    sku: &str,
    at_ms: i64,
    location: Option<&str>,
) -> Result<BTreeMap<String, Entry>, Error> {
    let mut newest = BTreeMap::new();
    let Some(ledger) = SkuLedger::find(js, sku).await? else {
        return Ok(newest);
    };
    let hi = ledger.last.min(ledger.last_at_or_before(at_ms).await?);
    if hi < ledger.first {
        return Ok(newest);
    }
    match location {
        // One location: the first match reading backwards.
        Some(location) => {
            ledger
                .backward(ledger.first, hi, &mut |entry: Entry| {
                    if entry.change.applied_at_ms <= at_ms && entry.change.location == location {
                        newest.insert(entry.change.location.clone(), entry);
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                })
                .await?;
        }
        // Every location: any entry may be a location's first, so read up to `at` once.
        None => {
            ledger
                .forward(ledger.first, hi, &mut |entry: Entry| {
                    if entry.change.applied_at_ms > at_ms {
                        return ControlFlow::Break(());
                    }
                    newest.insert(entry.change.location.clone(), entry);
                    ControlFlow::Continue(())
                })
                .await?;
        }
    }
    Ok(newest)
}

/// Where one SKU's entries are: its ledger stream, their subject there, and the sequences of
/// its first and last entry.
struct SkuLedger {
    stream: jetstream::stream::Stream<()>,
    subject: String,
    first: u64,
    last: u64,
}

impl SkuLedger {
    /// The SKU's entries in `STOCK_CHANGES`, or in the one `STOCK_CHANGES_<p>` that holds them
    /// (each partition is asked for the SKU's last entry); `None` when the SKU has none.
    async fn find(js: &jetstream::Context, sku: &str) -> Result<Option<Self>, Error> {
        let token = subjects::encode_token(sku);
        let candidates = crate::rebuild::ledger_streams(js)
            .await?
            .into_iter()
            .map(|name| {
                let subject = match subjects::stock_changes_partition_of(&name) {
                    Some(p) => format!("stock.changes.{p}.{token}"),
                    None => subjects::stock_changed(sku),
                };
                async move {
                    let stream = js
                        .get_stream_no_info(&name)
                        .await
                        .with_context(|| format!("opening stream {name}"))?;
                    let last = match stream.get_last_raw_message_by_subject(&subject).await {
                        Ok(message) => message.sequence,
                        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                            return Ok(None)
                        }
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("reading the last entry of {subject} in {name}")))
                        }
                    };
                    let first = stream
                        .get_first_raw_message_by_subject(&subject, 1)
                        .await
                        .with_context(|| format!("reading the first entry of {subject} in {name}"))?
                        .sequence;
                    Ok::<_, anyhow::Error>(Some(Self {
                        stream,
                        subject,
                        first,
                        last,
                    }))
                }
            });
        let found = futures::future::try_join_all(candidates).await?;
        Ok(found.into_iter().flatten().next())
    }

    /// An ordered consumer of the SKU's entries from `start`.
    async fn consumer(
        &self,
        deliver: DeliverPolicy,
    ) -> anyhow::Result<consumer::Consumer<consumer::pull::OrderedConfig>> {
        self.stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .with_context(|| format!("reading {} from the ledger", self.subject))
    }

    /// Calls `visit` with each entry from sequence `lo` to `hi` (both included), oldest first,
    /// until it breaks.
    async fn forward(
        &self,
        lo: u64,
        hi: u64,
        visit: &mut impl FnMut(Entry) -> ControlFlow<()>,
    ) -> anyhow::Result<()> {
        self.read(
            DeliverPolicy::ByStartSequence { start_sequence: lo },
            |entry| {
                if entry.sequence > hi {
                    return ControlFlow::Break(());
                }
                visit(entry)
            },
        )
        .await
    }

    /// Calls `visit` with each entry from sequence `hi` down to `lo` (both included), newest
    /// first, until it breaks: windows of sequences, each eight times wider than the last.
    async fn backward(
        &self,
        lo: u64,
        hi: u64,
        visit: &mut impl FnMut(Entry) -> ControlFlow<()>,
    ) -> anyhow::Result<()> {
        let mut end = hi;
        let mut width = FIRST_WINDOW;
        loop {
            let start = end.saturating_sub(width - 1).max(lo);
            let mut window = Vec::new();
            self.forward(start, end, &mut |entry| {
                window.push(entry);
                ControlFlow::Continue(())
            })
            .await?;
            for entry in window.into_iter().rev() {
                if visit(entry).is_break() {
                    return Ok(());
                }
            }
            if start <= lo {
                return Ok(());
            }
            end = start - 1;
            width = width.saturating_mul(8);
        }
    }

    /// The SKU's entries from `deliver` on (those stored now, not waiting for more), until
    /// `visit` breaks.
    async fn read(
        &self,
        deliver: DeliverPolicy,
        mut visit: impl FnMut(Entry) -> ControlFlow<()>,
    ) -> anyhow::Result<()> {
        let mut consumer = self.consumer(deliver).await?;
        let pending = consumer
            .info()
            .await
            .context("asking the ledger what is pending")?
            .num_pending;
        if pending == 0 {
            return Ok(());
        }
        let mut messages = consumer.messages().await.context("reading the ledger")?;
        while let Some(message) = messages.next().await {
            let message = message.context("reading the ledger")?;
            let info = message
                .info()
                .map_err(|e| anyhow::anyhow!("a ledger message without its metadata: {e}"))?;
            let (sequence, more) = (info.stream_sequence, info.pending > 0);
            match StockChanged::decode(message.payload.as_ref()) {
                Ok(change) => {
                    if visit(Entry { sequence, change }).is_break() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(sequence, error = %e, "a ledger message is not a StockChanged; skipped");
                }
            }
            if !more {
                break;
            }
        }
        Ok(())
    }

    /// The SKU's first entry at or after sequence `from` (one request: the stream's subject
    /// index finds it); `None` past its last.
    async fn next_from(&self, from: u64) -> anyhow::Result<Option<Entry>> {
        match self
            .stream
            .get_first_raw_message_by_subject(&self.subject, from)
            .await
        {
            Ok(message) => {
                let change = StockChanged::decode(message.payload.as_ref()).with_context(|| {
                    format!("ledger entry {} is not a StockChanged", message.sequence)
                })?;
                Ok(Some(Entry {
                    sequence: message.sequence,
                    change,
                }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("reading {} from sequence {from}", self.subject))),
        }
    }

    /// The sequence of the SKU's first entry whose `applied_at_ms` satisfies `after`, a
    /// predicate that, once true along the ledger, stays true (`applied_at_ms` does not decrease
    /// along a SKU's ledger): a binary search over sequences, one request per step (about 20
    /// over a million entries). `None` when no entry satisfies it.
    async fn first_where(&self, after: impl Fn(i64) -> bool) -> anyhow::Result<Option<u64>> {
        let Some(last) = self.next_from(self.last).await? else {
            return Ok(None);
        };
        if !after(last.change.applied_at_ms) {
            return Ok(None);
        }
        // The smallest sequence m whose next entry satisfies `after`; `found` is that entry.
        let (mut lo, mut hi, mut found) = (self.first, last.sequence, last.sequence);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.next_from(mid).await? {
                Some(e) if after(e.change.applied_at_ms) => (hi, found) = (mid, e.sequence),
                // Every sequence up to this entry's has it as its next: none satisfies.
                Some(e) => lo = e.sequence + 1,
                None => anyhow::bail!("the ledger of {} ended before its last entry", self.subject),
            }
        }
        Ok(Some(found))
    }

    /// The sequence of the SKU's last entry applied at or before `t` (below its first when
    /// there is none).
    async fn last_at_or_before(&self, t: i64) -> anyhow::Result<u64> {
        Ok(self
            .first_where(|applied| applied > t)
            .await?
            .map_or(self.last, |s| s.saturating_sub(1)))
    }

    /// The sequence of the SKU's first entry applied at or after `t` (past its last when there
    /// is none).
    async fn first_at_or_after(&self, t: i64) -> anyhow::Result<u64> {
        Ok(self
            .first_where(|applied| applied >= t)
            .await?
            .unwrap_or(self.last.saturating_add(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ms() {
        assert_eq!(parse_time("at", "1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("at", "2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("at", "2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        for bad in [
            "",
            "yesterday",
            "-5",
            "2023-11-14",
            "99999999999999999999999",
        ] {
            let err = parse_time("from", bad).expect_err(bad);
            assert_eq!(err.name, "from");
        }
    }

    #[test]
    fn a_query_filters_on_every_field_it_sets() {
        let change = StockChanged {
            location: "wh".into(),
            kind: "sold".into(),
            applied_at_ms: 100,
            ..Default::default()
        };
        assert!(Query::default().matches(&change));
        let q = |f: fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            q.matches(&change)
        };
        assert!(q(|q| q.location = Some("wh".into())));
        assert!(!q(|q| q.location = Some("store".into())));
        assert!(q(|q| q.kind = Some("sold".into())));
        assert!(!q(|q| q.kind = Some("received".into())));
        assert!(q(|q| q.from_ms = Some(100)));
        assert!(!q(|q| q.from_ms = Some(101)));
        assert!(q(|q| q.to_ms = Some(100)));
        assert!(!q(|q| q.to_ms = Some(99)));
    }
}
