//! `stockctl channels ...` and `stockctl availability ...`: sales channels as the `CHANNELS`
//! bucket holds them, the events that set and remove them (judged by the contract's own checks
//! before they are published), a SKU's override of a channel's rules, and what a channel may
//! sell as the `AVAILABILITY` feed says.

use std::{io::Read as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, publish::PublishAck, stream::DirectGetErrorKind};
use clap::{ArgGroup, Args, Subcommand};
use futures::StreamExt as _;
use prost::Message as _;
use serde_json::{json, Value};
use stockflow_proto::{
    input::{
        self,
        json::{AvailabilityRulesJson, ChannelJson, CHANNEL_KINDS},
    },
    msg_id, subjects,
    v1::{
        channel_event, stock_event::Change, AvailabilityRules, Channel, ChannelAvailabilityChanged,
        ChannelEvent, ChannelRemoved, ChannelRulesSet, ChannelSet, StockEvent,
    },
};
use stockflow_shared::{channels::Locations, keys::Keys, topology};

use super::{
    publish::{self, EnvelopeArgs},
    Format, Outcome,
};

/// How long `channels set --wait` waits for the stock worker to store the definition.
const WAIT: Duration = Duration::from_secs(30);

/// `stockctl channels` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChannelsCommand {
    /// Every defined channel, by id (one JSON object per line with -o json).
    List,
    /// One channel's definition and its rules version.
    Show {
        /// The channel id.
        id: String,
    },
    /// Create or replace a channel, from flags or a JSON file.
    Set(SetArgs),
    /// Remove a channel: its quantities go to 0, once, and it is no longer computed.
    Remove {
        /// The channel id.
        id: String,
        /// Idempotency key. Left out, a fresh one is made: pass one to make a retry safe.
        #[arg(long, value_name = "ID")]
        event_id: Option<String>,
    },
    /// Override a channel's rules for one SKU (replacing its previous override), or --clear it.
    Rules(RulesArgs),
}

/// The availability rules given by flags.
#[derive(Debug, Clone, Args)]
pub struct RuleFlags {
    /// Units held back from the channel.
    #[arg(long, allow_negative_numbers = true)]
    pub buffer: Option<i64>,
    /// Percentage of the pool (after the buffer) the channel may list, 0..=100.
    #[arg(long, allow_negative_numbers = true)]
    pub percent: Option<i64>,
    /// Most units the channel lists.
    #[arg(long, allow_negative_numbers = true)]
    pub max_listed: Option<i64>,
    /// Below this many units the channel lists 0.
    #[arg(long, allow_negative_numbers = true)]
    pub end_when_below: Option<i64>,
    /// The backorder policy the channel sells under instead of the SKU's.
    #[arg(long, value_enum)]
    pub backorder: Option<super::publish::BackorderArg>,
    /// With `--backorder capped`: units that may be backordered in all.
    #[arg(long)]
    pub backorder_limit: Option<i64>,
}

/// `stockctl channels set` arguments.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The channel id (a subject token: ASCII letters, digits, '-' and '_').
    pub id: String,
    /// The definition as JSON (`id`, `name`, `kind`, `locations`, `rules`, `allocation`); `-`
    /// reads standard input. Its `id` may be left out.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "name", "kind", "locations", "buffer", "percent", "max_listed", "end_when_below",
        "own_reservations_only", "allocation",
    ])]
    pub file: Option<PathBuf>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// What kind of channel.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(CHANNEL_KINDS))]
    pub kind: Option<String>,
    /// The supplying locations in priority order, comma-separated; each must have had stock
    /// recorded.
    #[arg(long, value_delimiter = ',', required_unless_present = "file")]
    pub locations: Vec<String>,
    #[command(flatten)]
    pub rules: RuleFlags,
    /// Only this channel's own reservations count against it (by default every reservation
    /// does).
    #[arg(long)]
    pub own_reservations_only: bool,
    /// How a sale or an order line of the channel is taken from its locations.
    #[arg(long, value_parser = ["priority", "most_available"])]
    pub allocation: Option<String>,
    /// Wait (up to 30 s) until the stock worker stored the definition in the CHANNELS bucket.
    #[arg(long)]
    pub wait: bool,
    /// Idempotency key. Left out, a fresh one is made: pass one to make a retry safe.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
}

/// `stockctl channels rules` arguments.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("override")
        .required(true)
        .multiple(true)
        .args(["buffer", "percent", "max_listed", "end_when_below", "own_reservations_only", "backorder", "clear"])
))]
pub struct RulesArgs {
    /// The channel id (it need not be defined yet).
    pub id: String,
    /// The SKU.
    pub sku: String,
    #[command(flatten)]
    pub rules: RuleFlags,
    /// Whether only the channel's own reservations count against it, for this SKU.
    #[arg(long, value_name = "true|false")]
    pub own_reservations_only: Option<bool>,
    /// Remove the SKU's override: the channel's own rules apply again.
    #[arg(long, conflicts_with_all = [
        "buffer", "percent", "max_listed", "end_when_below", "own_reservations_only", "backorder",
    ])]
    pub clear: bool,
    #[command(flatten)]
    pub envelope: EnvelopeArgs,
}

/// `stockctl availability` arguments.
#[derive(Debug, Args)]
pub struct AvailabilityArgs {
    /// The channel id.
    pub channel: String,
    /// The SKU; left out, every SKU of the channel (in the order the feed stores them).
    pub sku: Option<String>,
}

impl ChannelsCommand {
    /// Whether the command reads Redis: `set` checks its locations there.
    pub fn uses_redis(&self) -> bool {
        matches!(self, Self::Set(_))
    }
}

impl RuleFlags {
    fn rules(&self, own_reservations_only: Option<bool>) -> AvailabilityRules {
        AvailabilityRules {
            buffer: self.buffer,
            percent: self.percent,
            max_listed: self.max_listed,
            end_when_below: self.end_when_below,
            own_reservations_only,
            backorder_policy: self.backorder.map_or(0, |b| b.policy() as i32),
            backorder_limit: self.backorder_limit,
        }
    }
}

/// A fresh event id: time and process, unique per invocation.
fn fresh_event_id() -> String {
    format!(
        "stockctl-{}-{}",
        crate::events::now_ms(),
        std::process::id()
    )
}

fn meta(event_id: Option<&String>) -> stockflow_proto::v1::EventMeta {
    let event_id = event_id.cloned().unwrap_or_else(fresh_event_id);
    stockflow_proto::v1::EventMeta {
        reference: format!("urn:stockflow:stockctl:{event_id}"),
        event_id,
        occurred_at_ms: crate::events::now_ms(),
        source: "stockctl".into(),
        reason: 0,
    }
}

/// The definition `set` describes, from its flags or its file.
pub fn definition(args: &SetArgs) -> anyhow::Result<Channel> {
    if let Some(path) = &args.file {
        let mut text = String::new();
        if path.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the channel from standard input")?;
        } else {
            text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        return channel_from_json(&args.id, &text);
    }
    ChannelJson {
        id: args.id.clone(),
        name: args.name.clone().unwrap_or_default(),
        kind: args.kind.clone().unwrap_or_default(),
        locations: args.locations.clone(),
        rules: AvailabilityRulesJson::from(
            args.rules.rules(args.own_reservations_only.then_some(true)),
        ),
        allocation: args.allocation.clone().unwrap_or_default(),
        rules_version: 0,
    }
    .into_channel()
    .map_err(|e| refused(&e))
}

/// A channel definition in JSON (the gateway's shape); a missing `id` is `id`.
pub fn channel_from_json(id: &str, text: &str) -> anyhow::Result<Channel> {
    let value: Value = serde_json::from_str(text).context("the JSON does not parse")?;
    let mut parsed: ChannelJson = input::json::from_value(value).map_err(|e| refused(&e))?;
    if parsed.id.is_empty() {
        parsed.id = id.to_owned();
    }
    parsed.into_channel().map_err(|e| refused(&e))
}

/// A refusal as stockctl reports it (`publish` says it the same way).
fn refused(error: &input::InputError) -> anyhow::Error {
    if error.reason.contains(error.field.as_str()) {
        anyhow::anyhow!("invalid channel: {}", error.reason)
    } else {
        anyhow::anyhow!("invalid channel: {}: {}", error.field, error.reason)
    }
}

/// The event that sets `channel` (or removes `id` when `channel` is `None`), judged by the
/// contract's check.
pub fn channel_event(
    id: &str,
    channel: Option<Channel>,
    event_id: Option<&String>,
) -> anyhow::Result<ChannelEvent> {
    let event = ChannelEvent {
        meta: Some(meta(event_id)),
        channel_id: id.to_owned(),
        change: Some(match channel {
            Some(channel) => channel_event::Change::Set(ChannelSet {
                channel: Some(channel),
            }),
            None => channel_event::Change::Removed(ChannelRemoved {}),
        }),
    };
    input::channel::check(&subjects::channel_event(id), event.clone()).map_err(|e| refused(&e))?;
    Ok(event)
}

/// Publishes `event` on its subject under its message id. A duplicate with another change is an
/// error: the first one stands.
async fn publish_channel_event(
    js: &jetstream::Context,
    event: &ChannelEvent,
) -> anyhow::Result<PublishAck> {
    let subject = subjects::channel_event(&event.channel_id);
    let event_id = event
        .meta
        .as_ref()
        .map(|m| m.event_id.as_str())
        .unwrap_or("");
    super::publish::publish_once(
        js,
        subject,
        msg_id::channel_event(&event.channel_id, event_id),
        event.encode_to_vec(),
        event_id,
        |stored| {
            ChannelEvent::decode(stored)
                .is_ok_and(|s| s.channel_id == event.channel_id && s.change == event.change)
        },
    )
    .await
}

/// The `CHANNELS` bucket.
async fn bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    js.get_key_value(topology::CHANNELS).await.with_context(|| {
        format!(
            "bucket {} is not available (has `stockctl setup` run?)",
            topology::CHANNELS
        )
    })
}

/// `id` as the bucket holds it (its rules version set), `None` when it is not defined.
async fn stored(store: &kv::Store, id: &str) -> anyhow::Result<Option<Channel>> {
    let Some(entry) = store
        .entry(id)
        .await
        .with_context(|| format!("reading channel {id:?}"))?
    else {
        return Ok(None);
    };
    stockflow_shared::channels::defined_by(&entry)
        .with_context(|| format!("channel {id:?} in the bucket is not a Channel"))
}

/// Every defined channel, by id.
async fn defined(store: &kv::Store) -> anyhow::Result<Vec<Channel>> {
    let mut ids = Vec::new();
    let mut keys = store.keys().await.context("listing the channels")?;
    while let Some(key) = keys.next().await {
        ids.push(key.context("listing the channels")?);
    }
    ids.sort();
    let mut out = Vec::new();
    for id in ids {
        out.extend(stored(store, &id).await?);
    }
    Ok(out)
}

/// Waits until the bucket holds `channel` as defined (the stock worker applied it); its rules
/// version.
async fn wait_stored(store: &kv::Store, channel: &Channel) -> anyhow::Result<u64> {
    let want = Channel {
        rules_version: 0,
        ..channel.clone()
    };
    let mut watch = store
        .watch_with_history(&channel.id)
        .await
        .context("watching the CHANNELS bucket")?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let entry = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(entry)) => entry.context("watching the CHANNELS bucket")?,
            Ok(None) => anyhow::bail!("the watch of the CHANNELS bucket ended"),
            Err(_) => anyhow::bail!(
                "channel {:?} was published but the stock worker has not stored it within {}s \
                 (is it running? `stockctl dlq list` shows a refused definition)",
                channel.id,
                WAIT.as_secs()
            ),
        };
        if entry.operation == kv::Operation::Put
            && Channel::decode(entry.value.as_ref()).is_ok_and(|c| c == want)
        {
            return Ok(entry.revision);
        }
    }
}

/// A channel's JSON: the shape `set --file` takes, with its `rules_version`.
fn channel_json(channel: &Channel) -> Value {
    let mut value = serde_json::to_value(ChannelJson::from_channel(channel)).unwrap_or_default();
    value["rules_version"] = channel.rules_version.into();
    value
}

/// The rules in one line: `buffer 2, max_listed 10` (`-` for none).
fn rules_text(rules: &AvailabilityRules) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("buffer", rules.buffer),
        ("percent", rules.percent),
        ("max_listed", rules.max_listed),
        ("end_when_below", rules.end_when_below),
    ] {
        if let Some(v) = value {
            parts.push(format!("{name} {v}"));
        }
    }
    if let Some(own) = rules.own_reservations_only {
        parts.push(format!("own_reservations_only {own}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `channels show` as text.
pub fn show_text(channel: &Channel) -> String {
    let json = ChannelJson::from_channel(channel);
    let rows = [
        ("id", json.id.clone()),
        ("name", json.name.clone()),
        ("kind", json.kind.clone()),
        ("locations", json.locations.join(", ")),
        ("rules", rules_text(&channel.rules.unwrap_or_default())),
        ("allocation", json.allocation.clone()),
        ("rules_version", channel.rules_version.to_string()),
    ];
    rows.iter()
        .map(|(name, value)| format!("{name:<14} {value}\n"))
        .collect()
}

/// `channels list` as a table.
pub fn list_table(channels: &[Channel]) -> String {
    let width = channels
        .iter()
        .map(|c| c.id.chars().count())
        .chain(["id".len()])
        .max()
        .unwrap_or(2);
    let mut out = format!(
        "{:<width$}  {:<12}  {:<14}  {:>13}  {:<32}  rules\n",
        "id", "kind", "allocation", "rules_version", "locations"
    );
    for c in channels {
        let json = ChannelJson::from_channel(c);
        out.push_str(&format!(
            "{:<width$}  {:<12}  {:<14}  {:>13}  {:<32}  {}\n",
            json.id,
            if json.kind.is_empty() {
                "-"
            } else {
                &json.kind
            },
            json.allocation,
            c.rules_version,
            json.locations.join(","),
            rules_text(&c.rules.unwrap_or_default())
        ));
    }
    out
}

/// `stockctl channels ...`.
pub async fn run(
    settings: &super::Settings,
    command: &ChannelsCommand,
    format: Format,
) -> anyhow::Result<Outcome> {
    let js = super::jetstream(settings).await?;
    match command {
        ChannelsCommand::List => {
            let channels = defined(&bucket(&js).await?).await?;
            match format {
                Format::Json => {
                    for c in &channels {
                        crate::outln!("{}", channel_json(c));
                    }
                }
                Format::Table => crate::out!("{}", list_table(&channels)),
            }
        }
        ChannelsCommand::Show { id } => {
            let Some(channel) = stored(&bucket(&js).await?, id).await? else {
                eprintln!("{id}: no such channel");
                return Ok(Outcome::NotFound);
            };
            match format {
                Format::Json => crate::outln!("{}", channel_json(&channel)),
                Format::Table => crate::out!("{}", show_text(&channel)),
            }
        }
        ChannelsCommand::Set(args) => {
            let channel = definition(args)?;
            let event = channel_event(&args.id, Some(channel.clone()), args.event_id.as_ref())?;
            let state = settings.state()?;
            let redis = state.redis.connect().await?;
            let unknown = Locations::new(&Keys::new(state.redis.key_prefix.clone()))
                .unknown(&redis, &channel.locations)
                .await
                .context("reading the known locations from Redis")?;
            if let Some(first) = unknown.first() {
                let index = channel
                    .locations
                    .iter()
                    .position(|l| l == first)
                    .unwrap_or_default();
                anyhow::bail!(
                    "invalid channel: locations[{index}] {first:?} has no stock recorded anywhere \
                     (receive or count stock there first)"
                );
            }
            let ack = publish_channel_event(&js, &event).await?;
            let rules_version = if args.wait {
                Some(wait_stored(&bucket(&js).await?, &channel).await?)
            } else {
                None
            };
            print_published(&event, Some(&channel), &ack, rules_version, format);
        }
        ChannelsCommand::Remove { id, event_id } => {
            let event = channel_event(id, None, event_id.as_ref())?;
            let ack = publish_channel_event(&js, &event).await?;
            print_published(&event, None, &ack, None, format);
        }
        ChannelsCommand::Rules(args) => {
            let rules = if args.clear {
                AvailabilityRules::default()
            } else {
                args.rules.rules(args.own_reservations_only)
            };
            let fact = publish::Input::Stock(StockEvent {
                meta: Some(args.envelope.meta()),
                sku: args.sku.clone(),
                change: Some(Change::ChannelRules(ChannelRulesSet {
                    channel: args.id.clone(),
                    rules: Some(rules),
                })),
                ..Default::default()
            });
            fact.check().map_err(|e| publish::refused(&e))?;
            let ack = publish::publish(&js, &fact).await?;
            if format == Format::Json {
                crate::outln!("{}", publish::stored_json(&fact, &ack));
            } else {
                crate::outln!("published {}", publish::describe(&fact));
                crate::outln!(
                    "stored: {} sequence {}, duplicate: {}",
                    ack.stream,
                    ack.sequence,
                    if ack.duplicate { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(Outcome::Done)
}

/// What `set` and `remove` print.
fn print_published(
    event: &ChannelEvent,
    channel: Option<&Channel>,
    ack: &PublishAck,
    rules_version: Option<u64>,
    format: Format,
) {
    let event_id = event
        .meta
        .as_ref()
        .map(|m| m.event_id.as_str())
        .unwrap_or("");
    match format {
        Format::Json => crate::outln!(
            "{}",
            json!({
                "channel_id": event.channel_id,
                "change": if channel.is_some() { "set" } else { "removed" },
                "channel": channel.map(channel_json),
                "event_id": event_id,
                "msg_id": msg_id::channel_event(&event.channel_id, event_id),
                "stream": ack.stream,
                "sequence": ack.sequence,
                "duplicate": ack.duplicate,
                "rules_version": rules_version,
            })
        ),
        Format::Table => {
            let what = if channel.is_some() { "set" } else { "removal" };
            crate::outln!(
                "published channel {what} of {} (event_id {event_id})",
                event.channel_id
            );
            crate::outln!(
                "stored: {} sequence {}, duplicate: {}",
                ack.stream,
                ack.sequence,
                if ack.duplicate { "yes" } else { "no" }
            );
            if let Some(version) = rules_version {
                crate::outln!("applied: rules version {version}");
            }
        }
    }
}

/// `availability -o json`, one quantity: the feed's message and its stream sequence.
pub fn availability_json(q: &ChannelAvailabilityChanged, sequence: u64) -> Value {
    json!({
        "channel": q.channel,
        "sku": q.sku,
        "available_to_sell": q.available_to_sell,
        "version": q.version,
        "previous": q.previous,
        "pool": q.pool,
        "rules_version": q.rules_version,
        "cause_event_id": q.cause_event_id,
        "changed_at_ms": q.changed_at_ms,
        "sequence": sequence,
    })
}

/// `availability` of every SKU as a table.
pub fn availability_table(rows: &[ChannelAvailabilityChanged]) -> String {
    let width = rows
        .iter()
        .map(|q| q.sku.chars().count())
        .chain(["sku".len()])
        .max()
        .unwrap_or(3);
    let mut out = format!(
        "{:<width$}  {:>17}  {:>8}  {:>8}  {:>8}  cause\n",
        "sku", "available_to_sell", "version", "previous", "pool"
    );
    for q in rows {
        out.push_str(&format!(
            "{:<width$}  {:>17}  {:>8}  {:>8}  {:>8}  {}\n",
            q.sku, q.available_to_sell, q.version, q.previous, q.pool, q.cause_event_id
        ));
    }
    out
}

/// `stockctl availability <channel> [<sku>]`: the newest quantity of one SKU (a direct get), or
/// of every SKU of the channel (the feed read from its start). [`Outcome::NotFound`] when the
/// feed holds nothing for it.
pub async fn availability(
    settings: &super::Settings,
    args: &AvailabilityArgs,
    format: Format,
) -> anyhow::Result<Outcome> {
    stockflow_proto::validate::validate_channel_id("channel", &args.channel)
        .map_err(|reason| anyhow::anyhow!("invalid channel: {reason}"))?;
    let js = super::jetstream(settings).await?;
    let stream = super::stream(&js, subjects::AVAILABILITY).await?;
    if let Some(sku) = &args.sku {
        let message = match stream
            .direct_get_last_for_subject(subjects::availability(&args.channel, sku))
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                eprintln!("{}: no quantity published for {sku}", args.channel);
                return Ok(Outcome::NotFound);
            }
            Err(e) => {
                return Err(e).context(format!(
                    "reading {} from {}",
                    subjects::availability(&args.channel, sku),
                    subjects::AVAILABILITY
                ))
            }
        };
        let q = ChannelAvailabilityChanged::decode(message.payload.as_ref())
            .context("the feed's message is not a ChannelAvailabilityChanged")?;
        match format {
            Format::Json => crate::outln!("{}", availability_json(&q, message.sequence)),
            Format::Table => crate::out!("{}", availability_table(std::slice::from_ref(&q))),
        }
        return Ok(Outcome::Done);
    }
    let messages = crate::read_after(
        &js,
        subjects::AVAILABILITY,
        &subjects::channel_availability(&args.channel),
        0,
    )
    .await?;
    if messages.is_empty() {
        eprintln!("{}: no quantity published", args.channel);
        return Ok(Outcome::NotFound);
    }
    let mut rows = Vec::with_capacity(messages.len());
    for message in &messages {
        let q =
            ChannelAvailabilityChanged::decode(message.payload.as_ref()).with_context(|| {
                format!(
                    "the feed's message on {} is not a ChannelAvailabilityChanged",
                    message.subject
                )
            })?;
        if format == Format::Json {
            let sequence = message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or_default();
            crate::outln!("{}", availability_json(&q, sequence));
        }
        rows.push(q);
    }
    if format == Format::Table {
        crate::out!("{}", availability_table(&rows));
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<crate::ctl::Cli, clap::Error> {
        crate::ctl::Cli::try_parse_from(args)
    }

    fn set_args(args: &[&str]) -> SetArgs {
        let mut all = vec!["stockctl", "channels", "set"];
        all.extend_from_slice(args);
        match parse(&all).expect("parses").command {
            crate::ctl::Command::Channels {
                command: ChannelsCommand::Set(set),
            } => set,
            other => panic!("not a set: {other:?}"),
        }
    }

    #[test]
    fn flags_describe_a_channel_the_contract_judges() {
        let args = set_args(&[
            "market",
            "--kind",
            "marketplace",
            "--locations",
            "s1,s2",
            "--buffer",
            "2",
            "--max-listed",
            "10",
            "--own-reservations-only",
            "--allocation",
            "most_available",
        ]);
        let channel = definition(&args).expect("valid");
        assert_eq!(channel.locations, ["s1", "s2"]);
        let rules = channel.rules.unwrap_or_default();
        assert_eq!(
            (rules.buffer, rules.max_listed, rules.own_reservations_only),
            (Some(2), Some(10), Some(true))
        );
        assert!(channel_event("market", Some(channel), None).is_ok());

        let bad = definition(&set_args(&["m", "--locations", "s1", "--percent", "150"]))
            .expect("well-formed");
        let err = channel_event("m", Some(bad), None).expect_err("refused");
        assert!(err.to_string().contains("rules.percent"), "{err}");
        let err = channel_event("not a token", None, None).expect_err("refused");
        assert!(err.to_string().contains("channel_id"), "{err}");
    }

    #[test]
    fn a_file_takes_the_gateways_shape_and_the_id_from_the_command_line() {
        let channel = channel_from_json(
            "web",
            r#"{"kind":"web","locations":["wh"],"rules":{"percent":50},"allocation":null}"#,
        )
        .expect("valid");
        assert_eq!(channel.id, "web");
        assert_eq!(channel.rules.unwrap_or_default().percent, Some(50));
        let err = channel_from_json("web", r#"{"locations":["wh"],"rule":{}}"#)
            .expect_err("unknown field");
        assert!(format!("{err:#}").contains("rule"), "{err:#}");
        assert!(
            parse(&["stockctl", "channels", "set", "w", "--file", "f", "--buffer", "1"]).is_err()
        );
        assert!(
            parse(&["stockctl", "channels", "set", "w"]).is_err(),
            "locations"
        );
    }

    #[test]
    fn rules_need_a_rule_or_clear_and_not_both() {
        assert!(parse(&["stockctl", "channels", "rules", "m", "A1"]).is_err());
        assert!(parse(&["stockctl", "channels", "rules", "m", "A1", "--clear"]).is_ok());
        assert!(
            parse(&["stockctl", "channels", "rules", "m", "A1", "--buffer", "1", "--clear"])
                .is_err()
        );
        assert!(parse(&[
            "stockctl",
            "channels",
            "rules",
            "m",
            "A1",
            "--own-reservations-only",
            "false"
        ])
        .is_ok());
    }

    #[test]
    fn text_forms() {
        let channel = Channel {
            id: "market".into(),
            kind: stockflow_proto::v1::ChannelKind::Marketplace.into(),
            locations: vec!["s1".into(), "s2".into()],
            rules: Some(AvailabilityRules {
                buffer: Some(2),
                ..Default::default()
            }),
            rules_version: 7,
            ..Default::default()
        };
        let text = show_text(&channel);
        assert!(text.contains("rules          buffer 2\n"), "{text}");
        assert!(text.contains("rules_version  7\n"), "{text}");
        let json = channel_json(&channel);
        assert_eq!(json["rules_version"], 7);
        assert_eq!(json["kind"], "marketplace");
        let table = list_table(&[channel]);
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(
            row[..5],
            ["market", "marketplace", "priority", "7", "s1,s2"]
        );
    }
}
