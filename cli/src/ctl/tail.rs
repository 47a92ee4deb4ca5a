//! `stockctl tail <subject>`: the events of a subject, decoded, one line each, as JetStream
//! stores them — until Ctrl-C or `--count`.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use clap::Args;
use futures::StreamExt as _;
use serde_json::json;
use stockflow_proto::subjects;
use stockflow_shared::topology::{self, TopologySettings};

use crate::render;

/// `stockctl tail` arguments.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Subject, wildcards allowed: `stock.changes.>`, `alerts.>`, `stock.outcomes.>`,
    /// `orders.results.>`, `deadletter.>`, or one SKU's `stock.changes.<sku-token>`.
    pub subject: String,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// One JSON object per line instead of text (the same as `-o json`).
    #[arg(long)]
    pub json: bool,
    /// Start with the first stored event instead of the next new one.
    #[arg(long, conflicts_with = "since")]
    pub all: bool,
    /// Start after this stream sequence.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
}

/// Whether two subjects (with `*` / `>` wildcards) can match a common subject.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let mut left = a.split('.');
    let mut right = b.split('.');
    loop {
        match (left.next(), right.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The one stream of the default topology that stores `subject`.
pub fn stream_of(subject: &str) -> anyhow::Result<String> {
    stream_in(subject, &TopologySettings::default())
}

/// The one stream declared with `topology` that stores `subject` (with partitions, a stock
/// fact's or a ledger entry's stream is one partition's: `stock.events.<p>.>`,
/// `stock.changes.<p>.>`).
pub fn stream_in(subject: &str, topology: &TopologySettings) -> anyhow::Result<String> {
    let matching: Vec<String> = topology::streams(topology)
        .into_iter()
        .filter(|s| s.subjects.iter().any(|own| subjects_overlap(own, subject)))
        .map(|s| s.name)
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!(
            "no stockflow stream stores {subject:?}; try stock.changes.>, stock.outcomes.>, \
             alerts.>, orders.results.>, deadletter.>, stock.events.> or orders.events.> \
             (with partitioned stock streams, one partition's: stock.changes.<p>.>)"
        ),
        several => anyhow::bail!(
            "{subject:?} spans the streams {}: tail a subject of one of them",
            several.join(", ")
        ),
    }
}

/// Milliseconds since the Unix epoch of a JetStream timestamp.
pub fn millis(time: time::OffsetDateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `2026-11-27 07:01:02.123Z`.
pub fn timestamp(time: time::OffsetDateTime) -> String {
    let t = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// One stored message as `tail` prints it.
pub fn line(
    stream: &str,
    sequence: u64,
    subject: &str,
    stored: time::OffsetDateTime,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
    as_json: bool,
) -> String {
    // A dead letter holds the original bytes: decode them by the original subject.
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let dead_letter = subject.starts_with("deadletter.");
    let decode_subject = if dead_letter {
        header(subjects::HEADER_ORIGINAL_SUBJECT).unwrap_or_default()
    } else {
        subject.to_owned()
    };
    let decoded = render::decode(&decode_subject, payload);
    if as_json {
        let mut object = json!({
            "stream": stream,
            "sequence": sequence,
            "subject": subject,
            "stored_at_ms": millis(stored),
        });
        match decoded {
            Ok(d) => object["event"] = d.json,
            Err(e) => object["error"] = e.to_string().into(),
        }
        if dead_letter {
            object["dead_letter_reason"] = header(subjects::HEADER_DEAD_LETTER_REASON).into();
            object["original_subject"] = decode_subject.into();
        }
        return object.to_string();
    }
    let text = match decoded {
        Ok(d) => d.text,
        Err(e) => format!("{subject}: undecodable ({} bytes): {e}", payload.len()),
    };
    let prefix = format!("{} {stream} #{sequence}", timestamp(stored));
    if dead_letter {
        format!(
            "{prefix} DEAD LETTER from {decode_subject} ({}): {text}",
            header(subjects::HEADER_DEAD_LETTER_REASON).unwrap_or_default()
        )
    } else {
        format!("{prefix} {text}")
    }
}

/// Prints events of `args.subject` until Ctrl-C or `--count`.
pub async fn run(
    js: &jetstream::Context,
    args: &TailArgs,
    topology: &TopologySettings,
    format: super::Format,
) -> anyhow::Result<()> {
    let as_json = format.or_json(args.json) == super::Format::Json;
    let stream_name = stream_in(&args.subject, topology)?;
    let stream = super::stream(js, &stream_name).await?;
    let deliver_policy = match (args.all, args.since) {
        (true, _) => DeliverPolicy::All,
        (false, Some(after)) => DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        },
        (false, None) => DeliverPolicy::New,
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: args.subject.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .with_context(|| format!("subscribing to {} on {stream_name}", args.subject))?;
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("reading {}", args.subject))?;
    eprintln!("tailing {} on {stream_name} (Ctrl-C stops)", args.subject);
    let mut printed = 0u64;
    let shutdown = stockflow_shared::shutdown_signal();
    tokio::pin!(shutdown);
    while args.count.is_none_or(|n| printed < n) {
        let message = tokio::select! {
            () = &mut shutdown => break,
            next = messages.next() => match next {
                Some(message) => message.with_context(|| format!("reading {}", args.subject))?,
                None => break,
            },
        };
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("a message without JetStream metadata: {e}"))?;
        crate::outln!(
            "{}",
            line(
                &stream_name,
                info.stream_sequence,
                message.subject.as_str(),
                info.published,
                message.headers.as_ref(),
                &message.payload,
                as_json,
            )
        );
        printed += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_find_one_stream() {
        assert!(subjects_overlap("stock.changes.>", "stock.changes.A1"));
        assert!(subjects_overlap("stock.*.A1", "stock.changes.>"));
        assert!(!subjects_overlap("stock.changes.>", "stock.changes"));
        assert!(!subjects_overlap("alerts.>", "stock.changes.>"));
        assert_eq!(stream_of("stock.changes.>").expect("one"), "STOCK_CHANGES");
        assert_eq!(stream_of("alerts.low_stock.*").expect("one"), "ALERTS");
        assert!(stream_of("stock.>").is_err());
        assert!(stream_of("elsewhere").is_err());
        let partitioned = TopologySettings {
            stock_partitions: 3,
            ..TopologySettings::default()
        };
        assert_eq!(
            stream_in("stock.events.2.>", &partitioned).expect("one"),
            "STOCK_EVENTS_2"
        );
        assert!(stream_in("stock.events.>", &partitioned).is_err());
        assert_eq!(
            stream_in("stock.changes.1.>", &partitioned).expect("one"),
            "STOCK_CHANGES_1"
        );
        assert_eq!(
            stream_in("stock.outcomes.0.*", &partitioned).expect("one"),
            "STOCK_CHANGES_0"
        );
        assert!(stream_in("stock.changes.>", &partitioned).is_err());
    }

    #[test]
    fn dead_letters_are_decoded_by_their_original_subject() {
        use prost::Message as _;
        use stockflow_proto::v1::{stock_event::Change, EventMeta, Received, StockEvent};
        let event = StockEvent {
            meta: Some(EventMeta {
                event_id: "e1".into(),
                ..Default::default()
            }),
            sku: "A1".into(),
            location: "s1".into(),
            change: Some(Change::Received(Received { quantity: 0 })),
            ..Default::default()
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(subjects::HEADER_ORIGINAL_SUBJECT, "stock.events.A1");
        headers.insert(subjects::HEADER_DEAD_LETTER_REASON, "quantity must be 1..");
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let payload = event.encode_to_vec();
        let text = line(
            "DEAD_LETTERS",
            4,
            "deadletter.STOCK_EVENTS",
            at,
            Some(&headers),
            &payload,
            false,
        );
        assert_eq!(
            text,
            "1970-01-01 00:00:00.000Z DEAD_LETTERS #4 DEAD LETTER from stock.events.A1 \
             (quantity must be 1..): A1 @ s1: received 0 [event_id e1]"
        );
        let json: serde_json::Value = serde_json::from_str(&line(
            "DEAD_LETTERS",
            4,
            "deadletter.STOCK_EVENTS",
            at,
            Some(&headers),
            &payload,
            true,
        ))
        .expect("json");
        assert_eq!(json["dead_letter_reason"], "quantity must be 1..");
        assert_eq!(json["event"]["quantity"], 0);
        let garbage = line(
            "STOCK_CHANGES",
            1,
            "stock.changes.A1",
            at,
            None,
            b"\xff",
            false,
        );
        assert!(garbage.contains("undecodable (1 bytes)"), "{garbage}");
    }
}
