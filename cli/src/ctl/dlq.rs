//! `stockctl dlq`: list, show and replay the dead letters in `DEAD_LETTERS`.
//!
//! A replay publishes the original bytes again on the original subject, with the original
//! headers, a new `Nats-Msg-Id` (`replay:DEAD_LETTERS:<seq>`) and a `Stockflow-Replayed-From`
//! header, then **deletes** the dead letter: `DEAD_LETTERS` holds what still needs attention.
//! The event keeps its `event_id`, so the worker's dedup still applies; the replayed message
//! stays in its input stream as the record of the replay. Only inputs of the streams whose
//! workers dedup by `event_id` (`STOCK_EVENTS` or its partitions `STOCK_EVENTS_<p>`,
//! `ORDER_EVENTS`) can be replayed.

use anyhow::Context as _;
use async_nats::{
    header::HeaderMap,
    jetstream::{self, message::PublishMessage, publish::PublishAck},
};
use clap::Subcommand;
use serde_json::json;
use stockflow_proto::subjects;

use crate::render;

/// Header a replayed message carries: `DEAD_LETTERS:<sequence>` of the dead letter it came from.
pub const HEADER_REPLAYED_FROM: &str = "Stockflow-Replayed-From";

/// Streams whose dead letters can be replayed.
const REPLAYABLE: &[&str] = &[subjects::STOCK_EVENTS, subjects::ORDER_EVENTS];

/// `stockctl dlq` commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every dead letter: sequence, time, original stream and subject, reason.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: its headers, and the payload decoded (escaped and hex when it does not
    /// decode).
    Show {
        /// Its sequence in DEAD_LETTERS (from `dlq list`).
        seq: u64,
    },
    /// Publish the original payload again on its original subject, then delete the dead letter.
    Replay {
        /// Its sequence in DEAD_LETTERS.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every replayable dead letter stored now.
        #[arg(long)]
        all: bool,
    },
}

/// A dead letter as stored.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Sequence in `DEAD_LETTERS`.
    pub sequence: u64,
    /// When it was stored.
    pub stored: time::OffsetDateTime,
    /// Its subject in `DEAD_LETTERS` (`deadletter.<stream>`).
    pub subject: String,
    /// Original headers plus the `Stockflow-*` ones.
    pub headers: HeaderMap,
    /// The original bytes.
    pub payload: bytes::Bytes,
}

impl DeadLetter {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    }

    /// Why it was dead-lettered.
    pub fn reason(&self) -> String {
        self.header(subjects::HEADER_DEAD_LETTER_REASON)
    }

    /// The subject it was first published on.
    pub fn original_subject(&self) -> String {
        self.header(subjects::HEADER_ORIGINAL_SUBJECT)
    }

    /// The stream it was first stored in.
    pub fn original_stream(&self) -> String {
        self.header(subjects::HEADER_ORIGINAL_STREAM)
    }

    /// Its sequence there.
    pub fn original_sequence(&self) -> String {
        self.header(subjects::HEADER_ORIGINAL_SEQUENCE)
    }
}

/// Every dead letter stored now, in order.
pub async fn list(js: &jetstream::Context) -> anyhow::Result<Vec<DeadLetter>> {
    super::stream(js, subjects::DEAD_LETTERS).await?;
    let messages = crate::read_after(js, subjects::DEAD_LETTERS, "deadletter.>", 0)
        .await
        .context("reading DEAD_LETTERS")?;
    messages
        .into_iter()
        .map(|m| {
            let info = m
                .info()
                .map_err(|e| anyhow::anyhow!("a message without JetStream metadata: {e}"))?;
            Ok(DeadLetter {
                sequence: info.stream_sequence,
                stored: info.published,
                subject: m.subject.to_string(),
                headers: m.headers.clone().unwrap_or_default(),
                payload: m.payload.clone(),
            })
        })
        .collect()
}

/// The dead letter at `sequence`.
pub async fn get(js: &jetstream::Context, sequence: u64) -> anyhow::Result<DeadLetter> {
    let stream = super::stream(js, subjects::DEAD_LETTERS).await?;
    let message = stream.get_raw_message(sequence).await.with_context(|| {
        format!("DEAD_LETTERS has no message {sequence} (replayed, or never stored?)")
    })?;
    Ok(DeadLetter {
        sequence: message.sequence,
        stored: message.time,
        subject: message.subject.to_string(),
        headers: message.headers,
        payload: message.payload,
    })
}

fn print_list(letters: &[DeadLetter], as_json: bool) {
    if as_json {
        for l in letters {
            println!(
                "{}",
                json!({
                    "sequence": l.sequence,
                    "stored_at_ms": super::tail::millis(l.stored),
                    "original_stream": l.original_stream(),
                    "original_subject": l.original_subject(),
                    "original_sequence": l.original_sequence(),
                    "reason": l.reason(),
                    "bytes": l.payload.len(),
                })
            );
        }
        return;
    }
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    let subject_width = letters
        .iter()
        .map(|l| l.original_subject().chars().count())
        .chain(["original subject".len()])
        .max()
        .unwrap_or(16);
    println!(
        "{:>8}  {:<24}  {:<14}  {:<subject_width$}  reason",
        "seq", "stored", "stream", "original subject"
    );
    for l in letters {
        println!(
            "{:>8}  {:<24}  {:<14}  {:<subject_width$}  {}",
            l.sequence,
            super::tail::timestamp(l.stored),
            l.original_stream(),
            l.original_subject(),
            l.reason()
        );
    }
    println!("{} dead letter(s)", letters.len());
}

/// What `dlq show` prints.
pub fn describe(letter: &DeadLetter) -> String {
    let mut out = format!(
        "dead letter {} (stored {} on {})\n",
        letter.sequence,
        super::tail::timestamp(letter.stored),
        letter.subject
    );
    out.push_str(&format!("reason:           {}\n", letter.reason()));
    out.push_str(&format!(
        "original:         {} sequence {}, subject {}\n",
        letter.original_stream(),
        letter.original_sequence(),
        letter.original_subject()
    ));
    out.push_str("headers:\n");
    let mut headers: Vec<(String, String)> = letter
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    headers.sort();
    for (name, value) in headers {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    let bytes = letter.payload.len();
    match render::decode(&letter.original_subject(), &letter.payload) {
        Ok(decoded) => {
            out.push_str(&format!(
                "payload ({bytes} bytes), decoded as {}:\n",
                decoded.kind
            ));
            out.push_str(
                &serde_json::to_string_pretty(&decoded.json).unwrap_or_else(|e| e.to_string()),
            );
            out.push('\n');
        }
        Err(e) => {
            out.push_str(&format!("payload ({bytes} bytes) does not decode: {e}\n"));
            out.push_str(&format!(
                "escaped: \"{}\"\n",
                render::escaped(&letter.payload)
            ));
            out.push_str("hex:\n");
            for line in render::hex_lines(&letter.payload) {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out
}

/// Whether `letter` may be replayed, and if not, why.
fn replayable(letter: &DeadLetter) -> Result<(), String> {
    let stream = letter.original_stream();
    let partition = subjects::stock_events_partition_of(&stream).is_some();
    if !partition && !REPLAYABLE.contains(&stream.as_str()) {
        return Err(format!(
            "it came from {stream:?}; only inputs of {} can be replayed",
            REPLAYABLE.join(" and ")
        ));
    }
    if letter.original_subject().is_empty() {
        return Err(format!(
            "it has no {} header",
            subjects::HEADER_ORIGINAL_SUBJECT
        ));
    }
    Ok(())
}

/// Where a replay is published: the original subject, except that a fact dead-lettered from a
/// partition stream (`stock.events.<p>.<sku-token>`, as the servers' mapping stored it) goes back
/// on `stock.events.<sku-token>`, so the mapping in force now places it, whatever the number of
/// partitions is today.
fn replay_subject(letter: &DeadLetter) -> String {
    let subject = letter.original_subject();
    if subjects::stock_events_partition_of(&letter.original_stream()).is_some() {
        if let Some(token) = subjects::stock_event_token(&subject) {
            return format!("stock.events.{token}");
        }
    }
    subject
}

/// Publishes the dead letter's original bytes on the original subject, then deletes it.
pub async fn replay(js: &jetstream::Context, letter: &DeadLetter) -> anyhow::Result<PublishAck> {
    replayable(letter).map_err(|why| {
        anyhow::anyhow!("dead letter {} cannot be replayed: {why}", letter.sequence)
    })?;
    let mut headers = HeaderMap::new();
    for (name, values) in letter.headers.iter() {
        let name_text: &str = name.as_ref();
        // The dead-letter bookkeeping is dropped; the original headers go back as they were.
        if name_text.starts_with("Stockflow-Dead-Letter")
            || name_text.starts_with("Stockflow-Original-")
            || name_text.starts_with("Nats-")
        {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    let from = format!("{}:{}", subjects::DEAD_LETTERS, letter.sequence);
    headers.insert(HEADER_REPLAYED_FROM, from.as_str());
    let subject = replay_subject(letter);
    // Deterministic: a replay retried after a crash before the delete is stored once (within
    // the duplicate window; past it, the worker's event_id dedup absorbs it).
    let message = PublishMessage::build()
        .payload(letter.payload.clone())
        .headers(headers)
        .message_id(format!("replay:{from}"));
    let ack = js
        .send_publish(subject.clone(), message)
        .await
        .with_context(|| format!("publishing dead letter {} on {subject}", letter.sequence))?
        .await
        .with_context(|| format!("JetStream did not store the replay on {subject}"))?;
    let stream = super::stream(js, subjects::DEAD_LETTERS).await?;
    stream
        .delete_message(letter.sequence)
        .await
        .with_context(|| {
            format!(
                "replayed, but deleting dead letter {} failed; delete it by hand",
                letter.sequence
            )
        })?;
    Ok(ack)
}

fn print_replayed(letter: &DeadLetter, ack: &PublishAck) {
    println!(
        "replayed dead letter {} on {}: stored in {} sequence {}{}; removed from DEAD_LETTERS",
        letter.sequence,
        letter.original_subject(),
        ack.stream,
        ack.sequence,
        if ack.duplicate {
            " (duplicate of an earlier replay)"
        } else {
            ""
        }
    );
}

/// `stockctl dlq ...`.
pub async fn run(js: &jetstream::Context, command: &DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { json } => print_list(&list(js).await?, *json),
        DlqCommand::Show { seq } => print!("{}", describe(&get(js, *seq).await?)),
        DlqCommand::Replay { seq: Some(seq), .. } => {
            let letter = get(js, *seq).await?;
            let ack = replay(js, &letter).await?;
            print_replayed(&letter, &ack);
        }
        DlqCommand::Replay { seq: None, .. } => {
            // A snapshot: what the workers dead-letter again during the replay is not replayed
            // in a loop.
            let letters = list(js).await?;
            let (mut replayed, mut skipped) = (0, 0);
            for letter in &letters {
                if let Err(why) = replayable(letter) {
                    println!("skipped dead letter {}: {why}", letter.sequence);
                    skipped += 1;
                    continue;
                }
                let ack = replay(js, letter).await?;
                print_replayed(letter, &ack);
                replayed += 1;
            }
            println!("replayed {replayed}, skipped {skipped}");
        }
    }
    Ok(())
}
