//! `stockctl publish`: one stock fact or order command, from flags or JSON, validated by the
//! workers' own parsers before it is published.

use std::{io::Read as _, path::PathBuf};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, publish::PublishAck};
use clap::{Args, Subcommand};
use prost::Message as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use stockflow_proto::{
    subjects,
    v1::{
        order_event, stock_event::Change, Adjusted, Counted, EventMeta, FulfilledLine,
        OrderCancelled, OrderCommitted, OrderEvent, OrderFulfilled, OrderLine, OrderPlaced,
        PolicySet, Reason, Received, Returned, Sold, StockEvent, Transferred,
    },
};
use stockflow_shared::consume::HandleError;

use crate::render;

/// `stockctl publish` arguments: a fact subcommand, or `--json` / `--json-file`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, after_help = JSON_HELP)]
pub struct PublishArgs {
    /// The event given by flags.
    #[command(subcommand)]
    pub event: Option<FactArgs>,
    /// The event as a JSON object with a "type" (shapes below).
    #[arg(long, value_name = "JSON", conflicts_with = "json_file")]
    pub json: Option<String>,
    /// Reads the JSON event from a file; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub json_file: Option<PathBuf>,
}

const JSON_HELP: &str = "\
JSON events: an object with a \"type\" and the proto's field names; every type takes the envelope
fields event_id, source, reason, reference and occurred_at_ms (all optional; event_id is made
fresh when left out). Unknown fields are refused.
  received | sold | returned  sku, location, quantity
  adjusted                    sku, location, delta
  counted                     sku, location, on_hand[, expected_on_hand]
  transferred                 sku, location, to_location, quantity
  policy_set                  sku[, location][, low_stock_threshold][, safety_stock][, location_priority]
  order_placed                order_id, lines: [{[line_id,] sku, quantity[, location]}][, hold_seconds]
  order_committed | order_cancelled   order_id
  order_fulfilled             order_id, lines: [{line_id, quantity}][, last_shipment]
Example:
  stockctl publish --json '{\"type\":\"received\",\"sku\":\"A1\",\"location\":\"wh\",\"quantity\":5,\"event_id\":\"rcv-1\"}'";

/// The envelope every input carries.
#[derive(Debug, Clone, Args)]
pub struct EnvelopeArgs {
    /// Idempotency key. Left out, a fresh one is made: pass one to make a retry safe.
    #[arg(long, value_name = "ID")]
    pub event_id: Option<String>,
    /// The channel reporting the change.
    #[arg(long, default_value = "stockctl")]
    pub source: String,
    /// Why (received, sold, returned, damaged, shrinkage, correction, cycle_count, transfer,
    /// policy, ...); left out, the fact type's natural reason.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<Reason>,
    /// URI of the source document (receipt, count sheet, order).
    #[arg(long)]
    pub reference: Option<String>,
}

/// Which SKU at which location.
#[derive(Debug, Clone, Args)]
pub struct AtArgs {
    /// The SKU.
    #[arg(long)]
    pub sku: String,
    /// The location.
    #[arg(long)]
    pub location: String,
}

/// A stock fact or an order command given by flags.
#[derive(Debug, Subcommand)]
pub enum FactArgs {
    /// Goods arrived: on_hand += quantity.
    Received {
        #[command(flatten)]
        at: AtArgs,
        /// Units.
        #[arg(long)]
        quantity: i64,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Goods were sold and left: on_hand -= quantity.
    Sold {
        #[command(flatten)]
        at: AtArgs,
        /// Units.
        #[arg(long)]
        quantity: i64,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Goods came back into sellable stock: on_hand += quantity.
    Returned {
        #[command(flatten)]
        at: AtArgs,
        /// Units.
        #[arg(long)]
        quantity: i64,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// A signed correction: on_hand += delta.
    Adjusted {
        #[command(flatten)]
        at: AtArgs,
        /// Units, non-zero, may be negative.
        #[arg(long, allow_negative_numbers = true)]
        delta: i64,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// A physical count: on_hand := on-hand; with --expected-on-hand only if it still matches.
    Counted {
        #[command(flatten)]
        at: AtArgs,
        /// Units counted.
        #[arg(long)]
        on_hand: i64,
        /// The on_hand the counter saw when the count started (compare-and-set).
        #[arg(long, allow_negative_numbers = true)]
        expected_on_hand: Option<i64>,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Goods moved from --location to --to.
    Transferred {
        #[command(flatten)]
        at: AtArgs,
        /// Destination location.
        #[arg(long)]
        to: String,
        /// Units.
        #[arg(long)]
        quantity: i64,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Stock policy of one location, or the SKU-wide default without --location.
    Policy {
        /// The SKU.
        #[arg(long)]
        sku: String,
        /// The location; left out, the SKU-wide default.
        #[arg(long)]
        location: Option<String>,
        /// Low-stock threshold in units; a negative value removes it.
        #[arg(long, allow_negative_numbers = true)]
        threshold: Option<i64>,
        /// Safety stock in units; a negative value removes it.
        #[arg(long, allow_negative_numbers = true)]
        safety_stock: Option<i64>,
        /// SKU-wide order of locations for order lines without one (comma-separated).
        #[arg(long, value_delimiter = ',')]
        priority: Vec<String>,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// An order command.
    Order {
        #[command(subcommand)]
        command: OrderArgs,
    },
}

/// An order command given by flags.
#[derive(Debug, Subcommand)]
pub enum OrderArgs {
    /// Reserve every line, or none.
    Place {
        /// The order id.
        #[arg(long)]
        order: String,
        /// A line, repeatable; line ids are 1, 2, ... in the order given.
        #[arg(long = "line", value_name = "SKU:QTY[:LOCATION]", required = true, value_parser = parse_place_line)]
        lines: Vec<PlaceLine>,
        /// Checkout hold: released after this many seconds unless committed (0: no expiry).
        #[arg(long, default_value_t = 0)]
        hold_seconds: i64,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Payment is done: the hold no longer expires.
    Commit {
        /// The order id.
        #[arg(long)]
        order: String,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Release whatever the order holds.
    Cancel {
        /// The order id.
        #[arg(long)]
        order: String,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Units shipped: on_hand and reserved both go down.
    Fulfil {
        /// The order id.
        #[arg(long)]
        order: String,
        /// Units shipped for a line, repeatable.
        #[arg(long = "line", value_name = "LINE_ID:QTY", required = true, value_parser = parse_fulfil_line)]
        lines: Vec<(String, i64)>,
        /// The last shipment: whatever is still reserved is released.
        #[arg(long)]
        last_shipment: bool,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
}

/// One `--line SKU:QTY[:LOCATION]` of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceLine {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
    /// Where to reserve ('' lets the worker choose).
    pub location: String,
}

/// Parses `SKU:QTY[:LOCATION]`. The quantity is the last field that is a number, so a SKU may
/// contain `:`; a location may not (use `--json` for one that does).
pub fn parse_place_line(text: &str) -> Result<PlaceLine, String> {
    let mut parts: Vec<&str> = text.rsplitn(3, ':').collect();
    parts.reverse();
    let shape = || format!("{text:?} is not SKU:QTY[:LOCATION]");
    match parts.as_slice() {
        [sku, quantity, location] if quantity.parse::<i64>().is_ok() => Ok(PlaceLine {
            sku: (*sku).to_owned(),
            quantity: quantity.parse().map_err(|_| shape())?,
            location: (*location).to_owned(),
        }),
        _ => {
            let (sku, quantity) = text.rsplit_once(':').ok_or_else(shape)?;
            Ok(PlaceLine {
                sku: sku.to_owned(),
                quantity: quantity.parse().map_err(|_| shape())?,
                location: String::new(),
            })
        }
    }
}

/// Parses `LINE_ID:QTY`.
pub fn parse_fulfil_line(text: &str) -> Result<(String, i64), String> {
    let (line_id, quantity) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not LINE_ID:QTY"))?;
    let quantity = quantity
        .parse()
        .map_err(|_| format!("{text:?}: {quantity:?} is not a whole number"))?;
    Ok((line_id.to_owned(), quantity))
}

/// Parses a reason name such as `damaged` or `cycle_count`.
pub fn parse_reason(name: &str) -> Result<Reason, String> {
    render::reason_from_name(&name.replace('-', "_"))
        .filter(|r| *r != Reason::Unspecified)
        .ok_or_else(|| {
            format!(
                "{name:?} is not a reason; one of received, sold, returned, damaged, shrinkage, \
                 correction, cycle_count, transfer, reserved, released, shipped, policy"
            )
        })
}

/// An input event ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A stock fact.
    Stock(StockEvent),
    /// An order command.
    Order(OrderEvent),
}

impl Input {
    /// Its subject.
    pub fn subject(&self) -> String {
        match self {
            Self::Stock(e) => subjects::stock_event(&e.sku),
            Self::Order(e) => subjects::order_event(&e.order_id),
        }
    }

    /// Its `Nats-Msg-Id`: `evt:<sku-token>:<event_id>` or `ord:<order-token>:<event_id>`, so
    /// publishing the same event again within the stream's duplicate window stores it once.
    pub fn msg_id(&self) -> String {
        match self {
            Self::Stock(e) => fact_msg_id(&e.sku, &event_id(e.meta.as_ref())),
            Self::Order(e) => format!(
                "ord:{}:{}",
                subjects::encode_token(&e.order_id),
                event_id(e.meta.as_ref())
            ),
        }
    }

    /// The protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Stock(e) => e.encode_to_vec(),
            Self::Order(e) => e.encode_to_vec(),
        }
    }

    /// One line for a person.
    pub fn describe(&self) -> String {
        match self {
            Self::Stock(e) => render::stock_event(e).text,
            Self::Order(e) => render::order_event(e).text,
        }
    }

    /// Runs the worker's own parser over the encoded event: what it would dead-letter is refused
    /// here, with the same reason.
    pub fn validate(&self) -> Result<(), String> {
        let subject = self.subject();
        let bytes = self.encode();
        let checked = match self {
            Self::Stock(_) => stock_worker::fact::parse(&subject, &bytes).map(|_| ()),
            Self::Order(e) => {
                if matches!(e.command, Some(order_event::Command::HoldExpired(_))) {
                    return Err("order_hold_expired is published by the order worker itself".into());
                }
                order_worker::command::parse(&subject, &bytes).map(|_| ())
            }
        };
        checked.map_err(|e| match e {
            HandleError::Malformed { reason, .. } => reason,
            other => other.to_string(),
        })
    }
}

/// The `Nats-Msg-Id` of a stock fact.
pub fn fact_msg_id(sku: &str, event_id: &str) -> String {
    format!("evt:{}:{event_id}", subjects::encode_token(sku))
}

fn event_id(meta: Option<&EventMeta>) -> String {
    meta.map(|m| m.event_id.clone()).unwrap_or_default()
}

/// A fresh event id: time and process, unique per invocation.
fn fresh_event_id() -> String {
    format!(
        "stockctl-{}-{}",
        crate::events::now_ms(),
        std::process::id()
    )
}

impl EnvelopeArgs {
    fn meta(&self) -> EventMeta {
        let event_id = self.event_id.clone().unwrap_or_else(fresh_event_id);
        EventMeta {
            reference: self
                .reference
                .clone()
                .unwrap_or_else(|| format!("urn:stockflow:stockctl:{event_id}")),
            event_id,
            occurred_at_ms: crate::events::now_ms(),
            source: self.source.clone(),
            reason: self.reason.map(i32::from).unwrap_or_default(),
        }
    }
}

fn fact(envelope: &EnvelopeArgs, sku: &str, location: &str, change: Change) -> Input {
    Input::Stock(StockEvent {
        meta: Some(envelope.meta()),
        sku: sku.to_owned(),
        location: location.to_owned(),
        change: Some(change),
    })
}

fn order(envelope: &EnvelopeArgs, order_id: &str, command: order_event::Command) -> Input {
    Input::Order(OrderEvent {
        meta: Some(envelope.meta()),
        order_id: order_id.to_owned(),
        command: Some(command),
    })
}

fn placed(lines: Vec<OrderLine>, hold_seconds: i64) -> order_event::Command {
    order_event::Command::Placed(OrderPlaced {
        lines,
        hold_seconds,
    })
}

fn fulfilled(lines: &[(String, i64)], last_shipment: bool) -> order_event::Command {
    order_event::Command::Fulfilled(OrderFulfilled {
        lines: lines
            .iter()
            .map(|(line_id, quantity)| FulfilledLine {
                line_id: line_id.clone(),
                quantity: *quantity,
            })
            .collect(),
        last_shipment,
    })
}

impl FactArgs {
    /// The event the flags describe.
    pub fn input(&self) -> Input {
        match self {
            Self::Received {
                at,
                quantity,
                envelope,
            } => fact(
                envelope,
                &at.sku,
                &at.location,
                Change::Received(Received {
                    quantity: *quantity,
                }),
            ),
            Self::Sold {
                at,
                quantity,
                envelope,
            } => fact(
                envelope,
                &at.sku,
                &at.location,
                Change::Sold(Sold {
                    quantity: *quantity,
                }),
            ),
            Self::Returned {
                at,
                quantity,
                envelope,
            } => fact(
                envelope,
                &at.sku,
                &at.location,
                Change::Returned(Returned {
                    quantity: *quantity,
                }),
            ),
            Self::Adjusted {
                at,
                delta,
                envelope,
            } => fact(
                envelope,
                &at.sku,
                &at.location,
                Change::Adjusted(Adjusted { delta: *delta }),
            ),
            Self::Counted {
                at,
                on_hand,
                expected_on_hand,
                envelope,
            } => fact(
                envelope,
                &at.sku,
                &at.location,
                Change::Counted(Counted {
                    on_hand: *on_hand,
                    expected_on_hand: *expected_on_hand,
                }),
            ),
            Self::Transferred {
                at,
                to,
                quantity,
                envelope,
            } => fact(
                envelope,
                &at.sku,
                &at.location,
                Change::Transferred(Transferred {
                    to_location: to.clone(),
                    quantity: *quantity,
                }),
            ),
            Self::Policy {
                sku,
                location,
                threshold,
                safety_stock,
                priority,
                envelope,
            } => fact(
                envelope,
                sku,
                location.as_deref().unwrap_or_default(),
                Change::PolicySet(PolicySet {
                    low_stock_threshold: *threshold,
                    safety_stock: *safety_stock,
                    location_priority: priority.clone(),
                }),
            ),
            Self::Order { command } => match command {
                OrderArgs::Place {
                    order: id,
                    lines,
                    hold_seconds,
                    envelope,
                } => order(
                    envelope,
                    id,
                    placed(
                        lines
                            .iter()
                            .enumerate()
                            .map(|(i, l)| OrderLine {
                                line_id: (i + 1).to_string(),
                                sku: l.sku.clone(),
                                quantity: l.quantity,
                                location: l.location.clone(),
                            })
                            .collect(),
                        *hold_seconds,
                    ),
                ),
                OrderArgs::Commit {
                    order: id,
                    envelope,
                } => order(
                    envelope,
                    id,
                    order_event::Command::Committed(OrderCommitted {}),
                ),
                OrderArgs::Cancel {
                    order: id,
                    envelope,
                } => order(
                    envelope,
                    id,
                    order_event::Command::Cancelled(OrderCancelled {}),
                ),
                OrderArgs::Fulfil {
                    order: id,
                    lines,
                    last_shipment,
                    envelope,
                } => order(envelope, id, fulfilled(lines, *last_shipment)),
            },
        }
    }
}

// The JSON bodies, one per "type"; unknown fields are errors, so a misspelt optional field
// (say `expected_onhand`) cannot silently turn a compare-and-set count into an absolute one.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantityJson {
    sku: String,
    location: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustedJson {
    sku: String,
    location: String,
    delta: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountedJson {
    sku: String,
    location: String,
    on_hand: i64,
    expected_on_hand: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferredJson {
    sku: String,
    location: String,
    to_location: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyJson {
    sku: String,
    #[serde(default)]
    location: String,
    low_stock_threshold: Option<i64>,
    safety_stock: Option<i64>,
    #[serde(default)]
    location_priority: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineJson {
    line_id: Option<String>,
    sku: String,
    quantity: i64,
    #[serde(default)]
    location: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacedJson {
    order_id: String,
    lines: Vec<LineJson>,
    #[serde(default)]
    hold_seconds: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderIdJson {
    order_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FulfilledLineJson {
    line_id: String,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FulfilledJson {
    order_id: String,
    lines: Vec<FulfilledLineJson>,
    #[serde(default)]
    last_shipment: bool,
}

fn take_string(map: &mut Map<String, Value>, field: &str) -> anyhow::Result<Option<String>> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => anyhow::bail!("{field} must be a string, got {other}"),
    }
}

fn body<T: serde::de::DeserializeOwned>(kind: &str, rest: Map<String, Value>) -> anyhow::Result<T> {
    serde_json::from_value(Value::Object(rest)).with_context(|| format!("invalid {kind} event"))
}

/// Parses one event in the JSON shape described in cli/README.md, e.g.
/// `{"type":"received","sku":"A1","location":"store-1","quantity":5,"event_id":"e1"}`.
pub fn input_from_json(text: &str) -> anyhow::Result<Input> {
    let value: Value = serde_json::from_str(text).context("the JSON does not parse")?;
    let Value::Object(mut map) = value else {
        anyhow::bail!("the JSON must be an object with a \"type\"");
    };
    let kind = take_string(&mut map, "type")?.context("type is missing")?;
    let envelope = EnvelopeArgs {
        event_id: take_string(&mut map, "event_id")?,
        source: take_string(&mut map, "source")?.unwrap_or_else(|| "stockctl".into()),
        reason: take_string(&mut map, "reason")?
            .map(|r| parse_reason(&r))
            .transpose()
            .map_err(|e| anyhow::anyhow!("reason: {e}"))?,
        reference: take_string(&mut map, "reference")?,
    };
    let occurred_at_ms = match map.remove("occurred_at_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .context("occurred_at_ms must be a whole number of milliseconds")?,
        ),
    };
    let mut input = match kind.as_str() {
        "received" | "sold" | "returned" => {
            let b: QuantityJson = body(&kind, map)?;
            let change = match kind.as_str() {
                "received" => Change::Received(Received {
                    quantity: b.quantity,
                }),
                "sold" => Change::Sold(Sold {
                    quantity: b.quantity,
                }),
                _ => Change::Returned(Returned {
                    quantity: b.quantity,
                }),
            };
            fact(&envelope, &b.sku, &b.location, change)
        }
        "adjusted" => {
            let b: AdjustedJson = body(&kind, map)?;
            fact(
                &envelope,
                &b.sku,
                &b.location,
                Change::Adjusted(Adjusted { delta: b.delta }),
            )
        }
        "counted" => {
            let b: CountedJson = body(&kind, map)?;
            fact(
                &envelope,
                &b.sku,
                &b.location,
                Change::Counted(Counted {
                    on_hand: b.on_hand,
                    expected_on_hand: b.expected_on_hand,
                }),
            )
        }
        "transferred" => {
            let b: TransferredJson = body(&kind, map)?;
            fact(
                &envelope,
                &b.sku,
                &b.location,
                Change::Transferred(Transferred {
                    to_location: b.to_location,
                    quantity: b.quantity,
                }),
            )
        }
        "policy_set" => {
            let b: PolicyJson = body(&kind, map)?;
            fact(
                &envelope,
                &b.sku,
                &b.location,
                Change::PolicySet(PolicySet {
                    low_stock_threshold: b.low_stock_threshold,
                    safety_stock: b.safety_stock,
                    location_priority: b.location_priority,
                }),
            )
        }
        "order_placed" => {
            let b: PlacedJson = body(&kind, map)?;
            let lines = b
                .lines
                .into_iter()
                .enumerate()
                .map(|(i, l)| OrderLine {
                    line_id: l.line_id.unwrap_or_else(|| (i + 1).to_string()),
                    sku: l.sku,
                    quantity: l.quantity,
                    location: l.location,
                })
                .collect();
            order(&envelope, &b.order_id, placed(lines, b.hold_seconds))
        }
        "order_committed" => {
            let b: OrderIdJson = body(&kind, map)?;
            order(
                &envelope,
                &b.order_id,
                order_event::Command::Committed(OrderCommitted {}),
            )
        }
        "order_cancelled" => {
            let b: OrderIdJson = body(&kind, map)?;
            order(
                &envelope,
                &b.order_id,
                order_event::Command::Cancelled(OrderCancelled {}),
            )
        }
        "order_fulfilled" => {
            let b: FulfilledJson = body(&kind, map)?;
            let lines: Vec<(String, i64)> = b
                .lines
                .into_iter()
                .map(|l| (l.line_id, l.quantity))
                .collect();
            order(&envelope, &b.order_id, fulfilled(&lines, b.last_shipment))
        }
        other => anyhow::bail!(
            "type {other:?} is unknown; one of received, sold, returned, adjusted, counted, \
             transferred, policy_set, order_placed, order_committed, order_cancelled, \
             order_fulfilled"
        ),
    };
    if let Some(at) = occurred_at_ms {
        let meta = match &mut input {
            Input::Stock(e) => e.meta.as_mut(),
            Input::Order(e) => e.meta.as_mut(),
        };
        if let Some(meta) = meta {
            meta.occurred_at_ms = at;
        }
    }
    Ok(input)
}

impl PublishArgs {
    /// The event these arguments describe (reading `--json-file` if given).
    pub fn input(&self) -> anyhow::Result<Input> {
        if let Some(event) = &self.event {
            return Ok(event.input());
        }
        if let Some(text) = &self.json {
            return input_from_json(text);
        }
        if let Some(path) = &self.json_file {
            let mut text = String::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the JSON event from standard input")?;
            } else {
                text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
            }
            return input_from_json(&text);
        }
        anyhow::bail!(
            "nothing to publish: give a fact (e.g. `stockctl publish received --sku S --location L \
             --quantity 5`), --json or --json-file"
        )
    }
}

/// Publishes `input` and waits until JetStream stored it (or reported it a duplicate).
pub async fn publish(js: &jetstream::Context, input: &Input) -> anyhow::Result<PublishAck> {
    let subject = input.subject();
    let message = PublishMessage::build()
        .payload(input.encode().into())
        .message_id(input.msg_id());
    let ack = js
        .send_publish(subject.clone(), message)
        .await
        .with_context(|| format!("publishing on {subject}"))?
        .await
        .with_context(|| {
            format!("JetStream did not confirm storing the event on {subject}: is `stockctl setup` done?")
        })?;
    Ok(ack)
}

/// `stockctl publish`.
pub async fn run(js: &jetstream::Context, args: &PublishArgs) -> anyhow::Result<()> {
    let input = args.input()?;
    input
        .validate()
        .map_err(|reason| anyhow::anyhow!("invalid event: {reason}"))?;
    let ack = publish(js, &input).await?;
    crate::outln!("published {}", input.describe());
    crate::outln!(
        "stored: {} sequence {}, duplicate: {}",
        ack.stream,
        ack.sequence,
        if ack.duplicate {
            "yes (already stored; nothing new)"
        } else {
            "no"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lines_parse_with_and_without_location() {
        assert_eq!(
            parse_place_line("A1:2:store-1"),
            Ok(PlaceLine {
                sku: "A1".into(),
                quantity: 2,
                location: "store-1".into()
            })
        );
        assert_eq!(
            parse_place_line("A:B:3"),
            Ok(PlaceLine {
                sku: "A:B".into(),
                quantity: 3,
                location: String::new()
            })
        );
        assert!(parse_place_line("A1").is_err());
        assert!(parse_place_line("A1:x").is_err());
        assert_eq!(parse_fulfil_line("1:4"), Ok(("1".into(), 4)));
    }

    #[test]
    fn json_and_what_dlq_show_prints_agree() {
        let input = input_from_json(
            r#"{"type":"counted","sku":"A1","location":"s1","on_hand":7,"expected_on_hand":5,"event_id":"e9","reason":"cycle_count"}"#,
        )
        .expect("valid");
        input.validate().expect("the worker accepts it");
        let Input::Stock(event) = &input else {
            panic!("a stock fact")
        };
        let printed = render::stock_event(event).json.to_string();
        assert_eq!(input_from_json(&printed).expect("parses back"), input);
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = input_from_json(
            r#"{"type":"counted","sku":"A1","location":"s1","on_hand":7,"expected_onhand":5}"#,
        )
        .expect_err("misspelt");
        assert!(format!("{err:#}").contains("expected_onhand"), "{err:#}");
        let err = input_from_json(r#"{"type":"received","sku":"A1","location":"s1"}"#)
            .expect_err("no quantity");
        assert!(format!("{err:#}").contains("quantity"), "{err:#}");
        let bad = input_from_json(
            r#"{"type":"received","sku":"A1","location":"s1","quantity":0,"event_id":"e"}"#,
        )
        .expect("well-formed JSON");
        assert!(bad.validate().expect_err("zero").contains("quantity"));
    }

    #[test]
    fn only_reasons_the_contract_names_are_accepted() {
        let with = |reason: &str| {
            input_from_json(&format!(
                r#"{{"type":"sold","sku":"A1","location":"s1","quantity":1,"reason":{reason}}}"#
            ))
        };
        assert!(with(r#""damaged""#).is_ok());
        for unknown in ["99", r#""lost""#, r#""unspecified""#, r#""REASON_SOLD""#] {
            let err = with(unknown).expect_err(unknown);
            assert!(format!("{err:#}").contains("reason"), "{unknown}: {err:#}");
        }
    }
}
