//! `stockctl publish`: one stock fact or order command, from flags or JSON, judged by the
//! contract's own checks (`stockflow_proto::input`, the same the workers and the gateway apply)
//! before it is published under the one `Nats-Msg-Id` scheme (`stockflow_proto::msg_id`).

use std::{io::Read as _, path::PathBuf};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, publish::PublishAck};
use clap::{Args, Subcommand};
use serde_json::Value;
use stockflow_proto::{
    input::{json, InputError},
    v1::{
        order_event, stock_event::Change, Adjusted, Counted, EventMeta, FulfilledLine,
        OrderCancelled, OrderCommitted, OrderEvent, OrderFulfilled, OrderLine, OrderPlaced,
        PolicySet, Reason, Received, Returned, Sold, StockEvent, Transferred,
    },
};

use crate::render;

/// An input event ready to publish: the contract's [`stockflow_proto::input::Event`].
pub use stockflow_proto::input::Event as Input;

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
fresh when left out). Unknown fields are refused; a field set to null is one left out. The same
shapes as the gateway's bodies (see the gateway README), with the order's id in the object.
  received | sold | returned  sku, location, quantity (received[, purchase_order]; sold | returned:
                              channel instead of location)
  adjusted                    sku, location, delta
  counted                     sku, location, on_hand[, expected_on_hand]
  transferred                 sku, location, to_location, quantity
  policy_set                  sku[, location][, low_stock_threshold][, safety_stock][, location_priority]
                              [, backorder_policy (none | against_incoming | capped | unlimited)]
                              [, backorder_limit]
  expected                    sku, location, purchase_order, quantity, expected_at_ms
  expected_cancelled          sku, location, purchase_order[, quantity]
  unsellable_moved            sku, location, state (damaged | quality_control | held), quantity,
                              to_unsellable
  channel_rules               sku, channel, rules
  kit_defined                 sku, components: [{sku, quantity}] ([]: no longer a kit)
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
    /// policy, opening_balance, ...); left out, the fact type's natural reason.
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
        /// SKU-wide: whether order lines stock cannot cover may be confirmed as backordered.
        #[arg(long, value_enum)]
        backorder: Option<BackorderArg>,
        /// With `--backorder capped`: how many units in all may be backordered.
        #[arg(long)]
        backorder_limit: Option<i64>,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// An order command.
    Order {
        #[command(subcommand)]
        command: OrderArgs,
    },
}

/// `--reason` of an order command: the stock facts' reasons the envelope's help lists are not
/// an order's.
const ORDER_REASON_HELP: &str = "Why, recorded on the order's ledger entries; left out, each \
     entry's natural reason (reserved, released, shipped)";

/// An order command given by flags.
#[derive(Debug, Subcommand)]
pub enum OrderArgs {
    /// Reserve every line, or none.
    #[command(mut_arg("reason", |a| a.help(ORDER_REASON_HELP)))]
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
    #[command(mut_arg("reason", |a| a.help(ORDER_REASON_HELP)))]
    Commit {
        /// The order id.
        #[arg(long)]
        order: String,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Release whatever the order holds.
    #[command(mut_arg("reason", |a| a.help(ORDER_REASON_HELP)))]
    Cancel {
        /// The order id.
        #[arg(long)]
        order: String,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Units shipped: on_hand and reserved both go down.
    #[command(mut_arg("reason", |a| a.help(ORDER_REASON_HELP)))]
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

/// Parses a reason name such as `damaged` or `cycle_count` (also `cycle-count` on the command
/// line).
pub fn parse_reason(name: &str) -> Result<Reason, String> {
    json::reason_from_name(&name.replace('-', "_")).ok_or_else(|| {
        format!(
            "{name:?} is not a reason; one of received, sold, returned, damaged, shrinkage, \
             correction, cycle_count, transfer, reserved, released, shipped, policy, \
             opening_balance"
        )
    })
}

/// One line for a person.
pub fn describe(input: &Input) -> String {
    match input {
        Input::Stock(e) => render::stock_event(e).text,
        Input::Order(e) => render::order_event(e).text,
    }
}

/// `publish -o json`: `{"event": {...}, "msg_id", "stream", "sequence", "duplicate"}`, the event
/// in the shape `--json` accepts.
pub fn stored_json(input: &Input, ack: &PublishAck) -> Value {
    let event = match input {
        Input::Stock(e) => render::stock_event(e).json,
        Input::Order(e) => render::order_event(e).json,
    };
    serde_json::json!({
        "event": event,
        "msg_id": input.msg_id(),
        "stream": ack.stream,
        "sequence": ack.sequence,
        "duplicate": ack.duplicate,
    })
}

/// A refusal as stockctl reports it: the reason, and the field when the reason does not name it.
pub(crate) fn refused(error: &InputError) -> anyhow::Error {
    if error.reason.contains(error.field.as_str()) {
        anyhow::anyhow!("invalid event: {}", error.reason)
    } else {
        anyhow::anyhow!("invalid event: {}: {}", error.field, error.reason)
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

impl EnvelopeArgs {
    /// The envelope these flags describe (a fresh `event_id` when none is given).
    pub(crate) fn meta(&self) -> EventMeta {
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
        ..Default::default()
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
        ..Default::default()
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
                backorder,
                backorder_limit,
                envelope,
            } => fact(
                envelope,
                sku,
                location.as_deref().unwrap_or_default(),
                Change::PolicySet(PolicySet {
                    low_stock_threshold: *threshold,
                    safety_stock: *safety_stock,
                    location_priority: priority.clone(),
                    backorder_policy: backorder.map_or(0, |b| b.policy() as i32),
                    backorder_limit: *backorder_limit,
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

/// Fills in what a JSON event leaves out (or sets to null) with stockctl's defaults: a fresh
/// `event_id`, `source` `stockctl`, a `reference` naming the event, now as `occurred_at_ms`,
/// and line ids 1, 2, ... for an order's lines without one. Values of the wrong type are left
/// for the contract to refuse.
fn with_defaults(value: &mut Value) {
    let Value::Object(map) = value else {
        return;
    };
    let absent = |map: &serde_json::Map<String, Value>, field: &str| {
        map.get(field).is_none_or(Value::is_null)
    };
    if absent(map, "event_id") {
        map.insert("event_id".into(), fresh_event_id().into());
    }
    if absent(map, "reference") {
        if let Some(Value::String(id)) = map.get("event_id") {
            let reference = format!("urn:stockflow:stockctl:{id}");
            map.insert("reference".into(), reference.into());
        }
    }
    if absent(map, "source") {
        map.insert("source".into(), "stockctl".into());
    }
    if absent(map, "occurred_at_ms") {
        map.insert("occurred_at_ms".into(), crate::events::now_ms().into());
    }
    if map.get("type").and_then(Value::as_str) == Some("order_placed") {
        if let Some(Value::Array(lines)) = map.get_mut("lines") {
            for (i, line) in lines.iter_mut().enumerate() {
                if let Value::Object(line) = line {
                    if absent(line, "line_id") {
                        line.insert("line_id".into(), (i + 1).to_string().into());
                    }
                }
            }
        }
    }
}

/// Parses one event in the JSON shape described in cli/README.md, e.g.
/// `{"type":"received","sku":"A1","location":"store-1","quantity":5,"event_id":"e1"}`. Only
/// its shape is judged here; [`Input::check`] judges its values.
pub fn input_from_json(text: &str) -> anyhow::Result<Input> {
    let mut value: Value = serde_json::from_str(text).context("the JSON does not parse")?;
    with_defaults(&mut value);
    json::event_from_value(value).map_err(|e| refused(&e))
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

/// Publishes `input` and waits until JetStream stored it (or reported it a duplicate). A
/// duplicate — JetStream already holds a message under the event's `Nats-Msg-Id`, from any
/// publisher — is read back: another change under the same `event_id` is an error, and the
/// first change stands.
pub async fn publish(js: &jetstream::Context, input: &Input) -> anyhow::Result<PublishAck> {
    publish_once(
        js,
        input.subject(),
        input.msg_id(),
        input.encode(),
        input.event_id(),
        |stored| input.same_change(stored),
    )
    .await
}

/// Publishes `payload` on `subject` under `msg_id` and waits until JetStream stored it. A
/// duplicate is read back, and one that `same_change` says is another change is an error (the
/// first one stands): the rule of [`publish`], for any input of the contract.
pub(crate) async fn publish_once(
    js: &jetstream::Context,
    subject: String,
    msg_id: String,
    payload: Vec<u8>,
    event_id: &str,
    same_change: impl FnOnce(&[u8]) -> bool,
) -> anyhow::Result<PublishAck> {
    let message = PublishMessage::build()
        .payload(payload.into())
        .message_id(msg_id);
    let ack = js
        .send_publish(subject.clone(), message)
        .await
        .with_context(|| format!("publishing on {subject}"))?
        .await
        .with_context(|| {
            format!("JetStream did not confirm storing the event on {subject}: is `stockctl setup` done?")
        })?;
    if ack.duplicate {
        let stored = js
            .get_stream_no_info(&ack.stream)
            .await
            .with_context(|| format!("reading stream {}", ack.stream))?
            .get_raw_message(ack.sequence)
            .await
            .with_context(|| {
                format!(
                    "reading the event stored before ({} sequence {})",
                    ack.stream, ack.sequence
                )
            })?;
        if !same_change(&stored.payload) {
            anyhow::bail!(
                "event_id {event_id:?} is already stored with another change ({} sequence {}); \
                 the first one stands and nothing was published",
                ack.stream,
                ack.sequence
            );
        }
    }
    Ok(ack)
}

/// `stockctl publish`.
pub async fn run(
    js: &jetstream::Context,
    args: &PublishArgs,
    format: super::Format,
) -> anyhow::Result<()> {
    let input = args.input()?;
    input.check().map_err(|e| refused(&e))?;
    let ack = publish(js, &input).await?;
    if format == super::Format::Json {
        crate::outln!("{}", stored_json(&input, &ack));
        return Ok(());
    }
    crate::outln!("published {}", describe(&input));
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

/// A backorder policy as `stockctl publish policy --backorder` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackorderArg {
    /// Lines stock cannot cover are short (the default).
    None,
    /// Up to what is incoming at the location.
    AgainstIncoming,
    /// Up to `--backorder-limit` units in all.
    Capped,
    /// Without a limit.
    Unlimited,
}

impl BackorderArg {
    /// The contract's value.
    pub(crate) fn policy(self) -> stockflow_proto::v1::BackorderPolicy {
        use stockflow_proto::v1::BackorderPolicy;
        match self {
            Self::None => BackorderPolicy::None,
            Self::AgainstIncoming => BackorderPolicy::AgainstIncoming,
            Self::Capped => BackorderPolicy::Capped,
            Self::Unlimited => BackorderPolicy::Unlimited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_commands_list_an_orders_reasons_not_the_stock_facts() {
        use clap::CommandFactory as _;
        let mut cli = crate::ctl::Cli::command();
        let order = cli
            .find_subcommand_mut("publish")
            .and_then(|p| p.find_subcommand_mut("order"))
            .expect("publish order");
        for name in ["place", "commit", "cancel", "fulfil"] {
            let help = order
                .find_subcommand_mut(name)
                .expect("an order command")
                .render_help()
                .to_string();
            assert!(
                help.contains("reserved, released, shipped"),
                "{name}: {help}"
            );
            assert!(!help.contains("cycle_count"), "{name}: {help}");
        }
    }

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
        input.check().expect("the worker accepts it");
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
        let err =
            input_from_json(r#"{"type":"adjusted","sku":"A1","location":"s1","delta":"many"}"#)
                .expect_err("not a number");
        assert!(
            format!("{err:#}").starts_with("invalid event: delta: "),
            "{err:#}"
        );
        let bad = input_from_json(
            r#"{"type":"received","sku":"A1","location":"s1","quantity":0,"event_id":"e"}"#,
        )
        .expect("well-formed JSON");
        let refusal = bad.check().expect_err("zero");
        assert_eq!(refusal.field, "quantity");
        assert!(
            refusal.reason.contains("quantity must be 1..="),
            "{refusal}"
        );
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
        assert_eq!(parse_reason("cycle-count"), Ok(Reason::CycleCount));
    }

    #[test]
    fn left_out_envelope_fields_and_line_ids_get_stockctls_defaults() {
        let input = input_from_json(
            r#"{"type":"order_placed","order_id":"O-1","source":null,
                "lines":[{"sku":"A","quantity":1},{"line_id":"x","sku":"B","quantity":2}]}"#,
        )
        .expect("valid");
        input.check().expect("the worker accepts it");
        let Input::Order(event) = &input else {
            panic!("an order command")
        };
        let meta = event.meta.clone().unwrap_or_default();
        assert!(meta.event_id.starts_with("stockctl-"), "{meta:?}");
        assert_eq!(meta.source, "stockctl");
        assert_eq!(
            meta.reference,
            format!("urn:stockflow:stockctl:{}", meta.event_id)
        );
        assert!(meta.occurred_at_ms > 0);
        let Some(order_event::Command::Placed(placed)) = &event.command else {
            panic!("a placement")
        };
        let ids: Vec<&str> = placed.lines.iter().map(|l| l.line_id.as_str()).collect();
        assert_eq!(ids, ["1", "x"]);
        assert_eq!(input.msg_id(), format!("order:O-1:{}", meta.event_id));
    }

    #[test]
    fn flags_and_json_give_one_event_one_message_id() {
        let json = input_from_json(
            r#"{"type":"received","sku":"Caf\u00e9","location":"s1","quantity":3,"event_id":"r-1"}"#,
        )
        .expect("valid");
        let flags = FactArgs::Received {
            at: AtArgs {
                sku: "Caf\u{e9}".into(),
                location: "s1".into(),
            },
            quantity: 3,
            envelope: EnvelopeArgs {
                event_id: Some("r-1".into()),
                source: "stockctl".into(),
                reason: None,
                reference: None,
            },
        }
        .input();
        assert_eq!(flags.msg_id(), json.msg_id());
        assert_eq!(json.msg_id(), "fact:~Q2Fmw6k:r-1");
        assert!(flags.same_change(&json.encode()));
    }
}
