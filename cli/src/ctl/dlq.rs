//! `stockctl dlq`: list, show and replay the dead letters in `DEAD_LETTERS`.
//!
//! Reading and replaying live in `stockflow_shared::replay`, shared with the gateway's admin
//! routes: a replay publishes the original bytes again on the original subject, with the
//! original headers, a `Nats-Msg-Id` of `replay:DEAD_LETTERS:<seq>` and a
//! `Stockflow-Replayed-From` header, then **deletes** the dead letter. Stock facts, order
//! commands and webhook deliveries (`WEBHOOKS`) are replayed; entries of the streams the workers
//! derive (ledger, alerts, order results) are refused with the reason.

use clap::Subcommand;
use serde_json::json;
use stockflow_shared::replay::{self, ReplayError, Replayed};

pub use stockflow_shared::replay::{get, replay, DeadLetter, HEADER_REPLAYED_FROM};

use crate::render;

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

fn print_list(letters: &[DeadLetter], as_json: bool) {
    if as_json {
        for l in letters {
            crate::outln!(
                "{}",
                json!({
                    "sequence": l.sequence,
                    "stored_at_ms": l.stored_at_ms(),
                    "original_stream": l.original_stream(),
                    "original_subject": l.original_subject(),
                    "original_sequence": l.original_sequence(),
                    "reason": l.reason(),
                    "bytes": l.payload.len(),
                    "replayable": l.plan().is_ok(),
                })
            );
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

fn print_replayed(done: &Replayed) {
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
pub async fn run(js: &async_nats::jetstream::Context, command: &DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { json } => print_list(&list(js).await?, *json),
        DlqCommand::Show { seq } => crate::out!("{}", describe(&get(js, *seq).await?)),
        DlqCommand::Replay { seq: Some(seq), .. } => {
            print_replayed(&replay::replay_sequence(js, *seq).await?);
        }
        DlqCommand::Replay { seq: None, .. } => {
            // A snapshot: what the workers dead-letter again during the replay is not replayed
            // in a loop.
            let letters = list(js).await?;
            let (mut replayed, mut skipped) = (0, 0);
            for letter in &letters {
                if let Err(why) = letter.plan() {
                    crate::outln!("skipped dead letter {}: {why}", letter.sequence);
                    skipped += 1;
                    continue;
                }
                print_replayed(&replay(js, letter).await?);
                replayed += 1;
            }
            crate::outln!("replayed {replayed}, skipped {skipped}");
        }
    }
    Ok(())
}
