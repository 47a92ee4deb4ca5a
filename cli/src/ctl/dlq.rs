//! `stockctl dlq`: list, show and replay the dead letters in `DEAD_LETTERS`.
//!
//! Reading and replaying live in `stockflow_shared::replay`, shared with the gateway's admin
//! routes: a replay publishes the original bytes again on the original subject, with the
//! original headers, a `Nats-Msg-Id` of `replay:DEAD_LETTERS:<seq>` and a
//! `Stockflow-Replayed-From` header, then **deletes** the dead letter. Stock facts, order
//! commands and webhook deliveries (`WEBHOOKS`) are replayed; entries of the streams the workers
//! derive (ledger, alerts, order results) are refused with the reason.

use clap::Subcommand;
use serde_json::{json, Value};
use stockflow_shared::replay::{self, ReplayError, Replayed};

pub use stockflow_shared::replay::{get, replay, DeadLetter, HEADER_REPLAYED_FROM};

use crate::render;

use super::Format;

/// `stockctl dlq` commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every dead letter: sequence, time, original stream and subject, reason.
    List {
        /// One JSON object per line instead of a table (the same as `-o json`).
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
    ///
    /// Replays stock facts, order commands and webhook deliveries (to `webhooks.<endpoint>`, with
    /// the same X-Stockflow-Event-Id, so receivers still deduplicate). Entries of the ledger,
    /// alerts and order results are refused: republishing them would duplicate them. The dead
    /// letter is deleted only once its replay is stored; a replay retried after a failed delete
    /// stores nothing new within the target stream's duplicate window.
    Replay {
        /// Its sequence in DEAD_LETTERS.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        seq: Option<u64>,
        /// Every replayable dead letter stored now.
        #[arg(long)]
        all: bool,
    },
}

/// Every dead letter stored now, in order.
pub async fn list(js: &async_nats::jetstream::Context) -> Result<Vec<DeadLetter>, ReplayError> {
    replay::list_all(js).await
}

/// The original stream sequence as a number; `null` when the header is missing or not a number.
fn original_sequence(letter: &DeadLetter) -> Value {
    letter
        .original_sequence()
        .parse::<u64>()
        .map_or(Value::Null, Value::from)
}

/// One line of `dlq list -o json`: `{"sequence", "stored_at_ms", "original_stream",
/// "original_subject", "original_sequence", "reason", "bytes", "replayable"}`.
pub fn list_json(letter: &DeadLetter) -> Value {
    json!({
        "sequence": letter.sequence,
        "stored_at_ms": letter.stored_at_ms(),
        "original_stream": letter.original_stream(),
        "original_subject": letter.original_subject(),
        "original_sequence": original_sequence(letter),
        "reason": letter.reason(),
        "bytes": letter.payload.len(),
        "replayable": letter.plan().is_ok(),
    })
}

/// `dlq show -o json`: what [`list_json`] says, plus `subject`, `headers` (name → list of
/// values), `refusal` (why a replay is refused, else `null`), and the payload: `payload_type`
/// and `payload` (decoded, in the shape `publish --json` accepts) when it decodes, else
/// `decode_error` and `payload_hex`.
pub fn show_json(letter: &DeadLetter) -> Value {
    let mut object = list_json(letter);
    object["subject"] = letter.subject.clone().into();
    let mut headers = serde_json::Map::new();
    for (name, values) in letter.headers.iter() {
        let values: Vec<Value> = values.iter().map(|v| v.as_str().into()).collect();
        headers.insert(name.to_string(), values.into());
    }
    object["headers"] = headers.into();
    object["refusal"] = letter
        .plan()
        .err()
        .map_or(Value::Null, |why| why.to_string().into());
    match render::decode(&letter.original_subject(), &letter.payload) {
        Ok(decoded) => {
            object["payload_type"] = decoded.kind.into();
            object["payload"] = decoded.json;
        }
        Err(e) => {
            object["decode_error"] = e.to_string().into();
            object["payload_hex"] = render::hex_lines(&letter.payload).concat().into();
        }
    }
    object
}

fn print_list(letters: &[DeadLetter], format: Format) {
    if format == Format::Json {
        for l in letters {
            crate::outln!("{}", list_json(l));
        }
        return;
    }
    if letters.is_empty() {
        crate::outln!("no dead letters");
        return;
    }
    let subject_width = letters
        .iter()
        .map(|l| l.original_subject().chars().count())
        .chain(["original subject".len()])
        .max()
        .unwrap_or(16);
    crate::outln!(
        "{:>8}  {:<24}  {:<14}  {:<subject_width$}  reason",
        "seq",
        "stored",
        "stream",
        "original subject"
    );
    for l in letters {
        crate::outln!(
            "{:>8}  {:<24}  {:<14}  {:<subject_width$}  {}",
            l.sequence,
            super::tail::timestamp(l.stored),
            l.original_stream(),
            l.original_subject(),
            l.reason()
        );
    }
    crate::outln!("{} dead letter(s)", letters.len());
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

/// One line of `dlq replay -o json`: `{"sequence", "replayed": true, "kind", "subject",
/// "stream", "stream_sequence", "duplicate"}`.
pub fn replayed_json(done: &Replayed) -> Value {
    json!({
        "sequence": done.sequence,
        "replayed": true,
        "kind": done.kind.as_str(),
        "subject": done.subject,
        "stream": done.stream,
        "stream_sequence": done.stream_sequence,
        "duplicate": done.duplicate,
    })
}

fn print_replayed(done: &Replayed, format: Format) {
    if format == Format::Json {
        crate::outln!("{}", replayed_json(done));
        return;
    }
    crate::outln!(
        "replayed dead letter {} ({}) on {}: stored in {} sequence {}{}; removed from DEAD_LETTERS",
        done.sequence,
        done.kind.as_str(),
        done.subject,
        done.stream,
        done.stream_sequence,
        if done.duplicate {
            " (duplicate of an earlier replay)"
        } else {
            ""
        }
    );
}

/// `stockctl dlq ...`.
pub async fn run(
    js: &async_nats::jetstream::Context,
    command: &DlqCommand,
    format: Format,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { json } => print_list(&list(js).await?, format.or_json(*json)),
        DlqCommand::Show { seq } => {
            let letter = get(js, *seq).await?;
            match format {
                Format::Json => crate::outln!("{}", show_json(&letter)),
                Format::Table => crate::out!("{}", describe(&letter)),
            }
        }
        DlqCommand::Replay { seq: Some(seq), .. } => {
            print_replayed(&replay::replay_sequence(js, *seq).await?, format);
        }
        DlqCommand::Replay { seq: None, .. } => {
            // A snapshot: what the workers dead-letter again during the replay is not replayed
            // in a loop.
            let letters = list(js).await?;
            let (mut replayed, mut skipped) = (0, 0);
            for letter in &letters {
                if let Err(why) = letter.plan() {
                    match format {
                        Format::Json => crate::outln!(
                            "{}",
                            json!({
                                "sequence": letter.sequence,
                                "replayed": false,
                                "refusal": why.to_string(),
                            })
                        ),
                        Format::Table => {
                            crate::outln!("skipped dead letter {}: {why}", letter.sequence);
                        }
                    }
                    skipped += 1;
                    continue;
                }
                print_replayed(&replay(js, letter).await?, format);
                replayed += 1;
            }
            if format == Format::Table {
                crate::outln!("replayed {replayed}, skipped {skipped}");
            }
        }
    }
    Ok(())
}
