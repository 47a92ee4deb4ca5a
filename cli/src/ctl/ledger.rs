//! `stockctl ledger <sku>`: a page of a SKU's ledger, newest first, filtered by location, kind
//! and time, with the cursor of the next page; the reading is [`stockflow_ops::history`], the
//! same as the gateway's `GET /v1/skus/{sku}/ledger`.

use serde_json::{json, Value};
use stockflow_ops::history::{self, Entry, Order, Page};
use stockflow_proto::v1::Levels;

use super::{tail::timestamp, Format, Outcome};

/// `stockctl ledger`.
#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    /// The SKU.
    pub sku: String,
    /// Only this location's entries.
    #[arg(long, value_name = "LOCATION")]
    pub location: Option<String>,
    /// Only entries of this kind (received, sold, counted, ...).
    #[arg(long = "type", value_name = "KIND")]
    pub kind: Option<String>,
    /// Only entries applied at or after this time (RFC 3339, or ms since the Unix epoch).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Only entries applied at or before this time (RFC 3339, or ms since the Unix epoch).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Most entries printed (1..=1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Only entries with a lower ledger sequence (the cursor printed after a page).
    #[arg(long, value_name = "SEQ", conflicts_with = "oldest_first")]
    pub before: Option<u64>,
    /// Only entries with a higher ledger sequence.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Oldest first (the cursor of the next page then goes as --after).
    #[arg(long)]
    pub oldest_first: bool,
}

impl LedgerArgs {
    /// The query these arguments ask; a bad time names its flag.
    pub fn query(&self) -> anyhow::Result<history::Query> {
        let time = |flag: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| history::parse_time(flag, v))
                .transpose()
        };
        Ok(history::Query {
            location: self.location.clone(),
            kind: self.kind.clone(),
            from_ms: time("--from", &self.from)?,
            to_ms: time("--to", &self.to)?,
            before: self.before,
            after: self.after,
            limit: usize::from(self.limit),
            order: if self.oldest_first {
                Order::OldestFirst
            } else {
                Order::NewestFirst
            },
        })
    }
}

/// Prints a page of the ledger of `args.sku`; [`Outcome::NotFound`] when no entry matches.
pub async fn run(
    js: &async_nats::jetstream::Context,
    args: &LedgerArgs,
    format: Format,
) -> anyhow::Result<Outcome> {
    let query = args.query()?;
    let page = history::page(js, &args.sku, &query).await?;
    match format {
        Format::Json => crate::outln!("{}", to_json(&args.sku, &page)),
        Format::Table => {
            crate::out!("{}", table(&args.sku, &page));
            if let Some(next) = page.next {
                let flag = if args.oldest_first {
                    "--after"
                } else {
                    "--before"
                };
                eprintln!("more: the same command with {flag} {next}");
            }
        }
    }
    Ok(if page.items.is_empty() {
        Outcome::NotFound
    } else {
        Outcome::Done
    })
}

fn levels_json(levels: Option<&Levels>) -> Value {
    let l = levels.cloned().unwrap_or_default();
    json!({
        "on_hand": l.on_hand,
        "reserved": l.reserved,
        "safety_stock": l.safety_stock,
        "available": l.available,
    })
}

/// One entry as JSON: the fields and names of the gateway's `LedgerEntry`.
pub fn entry_json(e: &Entry) -> Value {
    let c = &e.change;
    json!({
        "sku": c.sku,
        "location": c.location,
        "kind": c.kind,
        "cause_event_id": c.cause_event_id,
        "source": c.source,
        "reference": c.reference,
        "channel": c.channel,
        "order_id": c.order_id,
        "before": levels_json(c.before.as_ref()),
        "after": levels_json(c.after.as_ref()),
        "occurred_at_ms": c.occurred_at_ms,
        "applied_at_ms": c.applied_at_ms,
        "sequence": e.sequence,
    })
}

/// `ledger -o json`: `{"sku", "items": [LedgerEntry, ...], "next": seq or null}`, items in the
/// page's order.
pub fn to_json(sku: &str, page: &Page) -> Value {
    json!({
        "sku": sku,
        "items": page.items.iter().map(entry_json).collect::<Vec<_>>(),
        "next": page.next,
    })
}

fn applied_at(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_or_else(|_| ms.to_string(), timestamp)
}

/// The table `stockctl ledger` prints: one row per entry, in the page's order.
pub fn table(sku: &str, page: &Page) -> String {
    if page.items.is_empty() {
        return format!("{sku}: no ledger entry matches\n");
    }
    let width = |f: fn(&Entry) -> usize, title: &str| {
        page.items
            .iter()
            .map(f)
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let lw = width(|e| e.change.location.chars().count(), "location");
    let kw = width(|e| e.change.kind.len(), "kind");
    let mut out = format!(
        "{:>10}  {:<24}  {:<lw$}  {:<kw$}  {:>10}  {:>10}  {:>10}  {:>10}  cause\n",
        "sequence", "applied_at", "location", "kind", "on_hand", "Δ", "reserved", "available"
    );
    for e in &page.items {
        let c = &e.change;
        let (before, after) = (c.before.unwrap_or_default(), c.after.unwrap_or_default());
        out.push_str(&format!(
            "{:>10}  {:<24}  {:<lw$}  {:<kw$}  {:>10}  {:>+10}  {:>10}  {:>10}  {}\n",
            e.sequence,
            applied_at(c.applied_at_ms),
            c.location,
            c.kind,
            after.on_hand,
            after.on_hand - before.on_hand,
            after.reserved,
            after.available,
            c.cause_event_id,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use stockflow_proto::v1::StockChanged;

    use super::*;
    use crate::ctl::{Cli, Command};

    fn args(line: &[&str]) -> LedgerArgs {
        match Cli::try_parse_from(line).expect("parses").command {
            Command::Ledger(args) => args,
            other => panic!("not ledger: {other:?}"),
        }
    }

    #[test]
    fn flags_become_a_query_and_a_bad_time_names_its_flag() {
        let q = args(&[
            "stockctl",
            "ledger",
            "A1",
            "--location",
            "wh",
            "--type",
            "sold",
            "--from",
            "2026-12-01T00:00:00Z",
            "--limit",
            "1000",
            "--before",
            "9",
        ])
        .query()
        .expect("valid");
        assert_eq!(q.location.as_deref(), Some("wh"));
        assert_eq!(q.kind.as_deref(), Some("sold"));
        assert_eq!(q.from_ms, Some(1_796_083_200_000));
        assert_eq!((q.limit, q.before), (1000, Some(9)));
        let err = args(&["stockctl", "ledger", "A1", "--to", "soon"])
            .query()
            .expect_err("bad time");
        assert!(err.to_string().starts_with("--to:"), "{err}");
        assert!(Cli::try_parse_from(["stockctl", "ledger", "A1", "--limit", "1001"]).is_err());
    }

    #[test]
    fn rows_in_the_page_order() {
        let entry = |sequence, on_hand| Entry {
            sequence,
            change: StockChanged {
                sku: "A1".into(),
                location: "wh".into(),
                kind: "received".into(),
                after: Some(Levels {
                    on_hand,
                    available: on_hand,
                    ..Default::default()
                }),
                applied_at_ms: 1_700_000_000_000,
                ..Default::default()
            },
        };
        let page = Page {
            items: vec![entry(7, 5), entry(3, 2)],
            next: Some(3),
        };
        let text = table("A1", &page);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[1][0], "7");
        assert_eq!(rows[1][3], "wh");
        assert_eq!(rows[2][0], "3");
        assert_eq!(rows[2][6], "+2");
        let json = to_json("A1", &page);
        assert_eq!(json["items"][0]["sequence"], 7);
        assert_eq!(json["next"], 3);
        assert_eq!(
            table("A1", &Page::default()),
            "A1: no ledger entry matches\n"
        );
    }
}
