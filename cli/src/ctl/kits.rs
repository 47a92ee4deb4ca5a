//! `stockctl kits ...`: define a kit (a bundle of components), remove it, and show it with what
//! its components make at each location.

use serde_json::json;
use stockflow_proto::{
    input::fact::decode_kit,
    v1::{stock_event::Change, KitComponent, KitDefined, StockEvent},
};
use stockflow_shared::{keys::Keys, levels::read_levels};

use super::{
    publish::{self, EnvelopeArgs},
    Format, Outcome,
};

/// `stockctl kits` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KitsCommand {
    /// Make a SKU a kit of components, or replace its components.
    Set {
        /// The kit's SKU.
        kit: String,
        /// Its components, each `<sku>=<units per kit>`, e.g. `MUG-1=1 CARD=2`.
        #[arg(required = true, value_parser = parse_component)]
        components: Vec<(String, i64)>,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// Make a kit a plain SKU again: its levels go to 0.
    Remove {
        /// The kit's SKU.
        kit: String,
        #[command(flatten)]
        envelope: EnvelopeArgs,
    },
    /// A kit's components and how many kits they make at each location.
    Show {
        /// The kit's SKU.
        kit: String,
    },
}

impl KitsCommand {
    /// Whether the command reads Redis: `show` does.
    pub fn uses_redis(&self) -> bool {
        matches!(self, Self::Show { .. })
    }
}

/// `<sku>=<units>`.
fn parse_component(text: &str) -> Result<(String, i64), String> {
    let (sku, units) = text
        .rsplit_once('=')
        .ok_or_else(|| format!("{text:?}: give a component as <sku>=<units per kit>"))?;
    let units = units
        .parse()
        .map_err(|_| format!("{text:?}: units per kit must be a whole number"))?;
    Ok((sku.to_owned(), units))
}

/// Runs a `kits` subcommand.
pub async fn run(
    settings: &super::Settings,
    command: &KitsCommand,
    format: Format,
) -> anyhow::Result<Outcome> {
    let (kit, components, envelope) = match command {
        KitsCommand::Show { kit } => return show(settings, kit, format).await,
        KitsCommand::Set {
            kit,
            components,
            envelope,
        } => (kit, components.as_slice(), envelope),
        KitsCommand::Remove { kit, envelope } => (kit, &[][..], envelope),
    };
    let fact = publish::Input::Stock(StockEvent {
        meta: Some(envelope.meta()),
        sku: kit.clone(),
        change: Some(Change::KitDefined(KitDefined {
            components: components
                .iter()
                .map(|(sku, quantity)| KitComponent {
                    sku: sku.clone(),
                    quantity: *quantity,
                })
                .collect(),
        })),
        ..Default::default()
    });
    // Judged by the contract before it is published: a bad definition never reaches the stream.
    fact.check().map_err(|e| publish::refused(&e))?;
    let js = super::jetstream(settings).await?;
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
    Ok(Outcome::Done)
}

async fn show(settings: &super::Settings, kit: &str, format: Format) -> anyhow::Result<Outcome> {
    let redis_settings = &settings.state()?.redis;
    let mut redis = redis_settings.connect().await?;
    let keys = Keys::new(redis_settings.key_prefix.clone());
    let stored: Option<String> = redis::cmd("HGET")
        .arg(keys.policy(kit))
        .arg("kit")
        .query_async(&mut redis)
        .await?;
    let Some(components) = stored.as_deref().and_then(decode_kit) else {
        eprintln!("{kit}: not a kit");
        return Ok(Outcome::NotFound);
    };
    let levels = read_levels(&mut redis, &keys, kit).await?;
    match format {
        Format::Json => crate::outln!(
            "{}",
            json!({
                "sku": kit,
                "components": components.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
                "buildable": levels.iter().map(|(location, l)| json!({"location": location, "on_hand": l.on_hand, "available": l.available()})).collect::<Vec<_>>(),
            })
        ),
        Format::Table => {
            crate::outln!("{}", kit_line(kit, &components));
            crate::outln!("{:<24} {:>10} {:>10}", "location", "buildable", "available");
            for (location, l) in &levels {
                crate::outln!("{location:<24} {:>10} {:>10}", l.on_hand, l.available());
            }
        }
    }
    Ok(Outcome::Done)
}

/// `GIFT-BOX is a kit of 1 × MUG + 2 × CARD`.
pub fn kit_line(kit: &str, components: &[(String, i64)]) -> String {
    let parts: Vec<String> = components
        .iter()
        .map(|(sku, quantity)| format!("{quantity} × {sku}"))
        .collect();
    format!("{kit} is a kit of {}", parts.join(" + "))
}
