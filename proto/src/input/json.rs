//! The JSON shapes of the input (serde) and their translation into the contract's protobuf
//! events. One shape per input, used by the gateway's HTTP bodies and by `stockctl publish`:
//!
//! - a stock fact is a [`StockFactJson`]: a `type` (`received`, `sold`, `returned`, `adjusted`,
//!   `counted`, `transferred`, `policy_set`, `channel_rules`, `expected`, `expected_cancelled`,
//!   `unsellable_moved`) and only that type's own fields;
//! - an order placement is a [`PlaceOrderJson`], a fulfilment a [`FulfilJson`], a cancel or a
//!   commit only the envelope ([`MetaJson`]); the gateway takes the order id from the path;
//! - stockctl's one-object form ([`event_from_value`]) adds `order_placed`,
//!   `order_committed`, `order_cancelled` and `order_fulfilled` types carrying their `order_id`.
//!
//! Every shape takes the envelope fields `event_id`, `source`, `reason`, `reference` and
//! `occurred_at_ms`, refuses unknown fields, and treats a member set to `null` as one left out,
//! at every depth. Faults name the field by its path (`quantity`, `lines[1].sku`).
//!
//! The envelope fields are written out in each shape rather than `#[serde(flatten)]`ed from
//! [`MetaJson`]: serde ignores `deny_unknown_fields` on a struct that flattens another.

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::Value;

use super::{order, Category, Event, InputError};
use crate::v1::{
    order_event, stock_event::Change, Adjusted, AllocationStrategy, AvailabilityRules, Channel,
    ChannelKind, ChannelRulesSet, Counted, EventMeta, Expected, ExpectedCancelled, FulfilledLine,
    KitComponent, KitDefined, OrderCancelled, OrderCommitted, OrderEvent, OrderFulfilled,
    OrderLine, OrderPlaced, PolicySet, Reason, Received, Returned, Sold, StockEvent, Transferred,
    UnsellableMoved,
};

/// The stock fact types, as JSON names them.
pub const FACT_TYPES: [&str; 12] = [
    "received",
    "sold",
    "returned",
    "adjusted",
    "counted",
    "transferred",
    "policy_set",
    "channel_rules",
    "expected",
    "expected_cancelled",
    "unsellable_moved",
    "kit_defined",
];

/// The unsellable states, as JSON names them (`stockflow.v1.UnsellableState`).
pub const UNSELLABLE_STATES: [&str; 3] = ["damaged", "quality_control", "held"];

fn unsellable_state(name: &str) -> Result<crate::v1::UnsellableState, InputError> {
    use crate::v1::UnsellableState;
    Ok(match name {
        "damaged" => UnsellableState::Damaged,
        "quality_control" => UnsellableState::QualityControl,
        "held" => UnsellableState::Held,
        other => {
            return Err(InputError::new(
                "unsellable_moved",
                "state",
                Category::UnknownEnum,
                format!(
                    "state {other:?} is not one of {}",
                    UNSELLABLE_STATES.join(", ")
                ),
            ))
        }
    })
}

/// The backorder policies, as JSON names them (`stockflow.v1.BackorderPolicy`).
pub const BACKORDER_POLICIES: [&str; 4] = ["none", "against_incoming", "capped", "unlimited"];

fn backorder_policy(name: &str) -> Result<crate::v1::BackorderPolicy, InputError> {
    use crate::v1::BackorderPolicy;
    Ok(match name {
        "none" => BackorderPolicy::None,
        "against_incoming" => BackorderPolicy::AgainstIncoming,
        "capped" => BackorderPolicy::Capped,
        "unlimited" => BackorderPolicy::Unlimited,
        other => {
            return Err(InputError::new(
                "policy_set",
                "backorder_policy",
                Category::UnknownEnum,
                format!(
                    "backorder_policy {other:?} is not one of {}",
                    BACKORDER_POLICIES.join(", ")
                ),
            ))
        }
    })
}

/// Availability rules in JSON (see `stockflow.v1.AvailabilityRules`); an absent field does not
/// apply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityRulesJson {
    /// Units held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<i64>,
    /// Percentage of the pool, 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Most units listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_listed: Option<i64>,
    /// Lists 0 below this many units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_when_below: Option<i64>,
    /// Only the channel's own reservations count against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_reservations_only: Option<bool>,
    /// The backorder policy the channel sells under instead of the SKU's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backorder_policy: Option<BackorderPolicyJson>,
    /// With `backorder_policy` `capped`: units that may be backordered in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backorder_limit: Option<i64>,
}

/// A backorder policy in JSON (see `stockflow.v1.BackorderPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackorderPolicyJson {
    /// Nothing beyond stock.
    None,
    /// Up to what is incoming.
    AgainstIncoming,
    /// Up to a cap.
    Capped,
    /// Without a limit.
    Unlimited,
}

impl BackorderPolicyJson {
    fn to_proto(self) -> crate::v1::BackorderPolicy {
        use crate::v1::BackorderPolicy;
        match self {
            Self::None => BackorderPolicy::None,
            Self::AgainstIncoming => BackorderPolicy::AgainstIncoming,
            Self::Capped => BackorderPolicy::Capped,
            Self::Unlimited => BackorderPolicy::Unlimited,
        }
    }

    fn of(value: i32) -> Option<Self> {
        use crate::v1::BackorderPolicy;
        match BackorderPolicy::try_from(value).ok()? {
            BackorderPolicy::None => Some(Self::None),
            BackorderPolicy::AgainstIncoming => Some(Self::AgainstIncoming),
            BackorderPolicy::Capped => Some(Self::Capped),
            BackorderPolicy::Unlimited => Some(Self::Unlimited),
            BackorderPolicy::Unspecified => None,
        }
    }
}

impl From<AvailabilityRulesJson> for AvailabilityRules {
    fn from(r: AvailabilityRulesJson) -> Self {
        Self {
            buffer: r.buffer,
            percent: r.percent,
            max_listed: r.max_listed,
            end_when_below: r.end_when_below,
            own_reservations_only: r.own_reservations_only,
            backorder_policy: r.backorder_policy.map_or(0, |p| p.to_proto().into()),
            backorder_limit: r.backorder_limit,
        }
    }
}

impl From<AvailabilityRules> for AvailabilityRulesJson {
    fn from(r: AvailabilityRules) -> Self {
        Self {
            buffer: r.buffer,
            percent: r.percent,
            max_listed: r.max_listed,
            end_when_below: r.end_when_below,
            own_reservations_only: r.own_reservations_only,
            backorder_policy: BackorderPolicyJson::of(r.backorder_policy),
            backorder_limit: r.backorder_limit,
        }
    }
}

/// A channel definition in JSON: `kind` is `pos`, `web`, `marketplace`, `wholesale` or
/// `other`; `allocation` is `priority` (default) or `most_available`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelJson {
    /// The channel id (the gateway takes it from the path when absent).
    #[serde(default)]
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// What kind of channel.
    #[serde(default)]
    pub kind: String,
    /// Supplying locations, in priority order.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Availability rules.
    #[serde(default)]
    pub rules: AvailabilityRulesJson,
    /// Allocation strategy.
    #[serde(default)]
    pub allocation: String,
    /// Set by stockflow (ignored on input): the rules version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rules_version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The JSON names of the channel kinds.
pub const CHANNEL_KINDS: [&str; 5] = ["pos", "web", "marketplace", "wholesale", "other"];

impl ChannelJson {
    /// The protobuf definition; an unknown `kind` or `allocation` names its field.
    pub fn into_channel(self) -> Result<Channel, InputError> {
        let kind = match self.kind.as_str() {
            "" => ChannelKind::Unspecified,
            name => {
                ChannelKind::from_str_name(&format!("CHANNEL_KIND_{}", name.to_ascii_uppercase()))
                    .filter(|k| *k != ChannelKind::Unspecified)
                    .ok_or_else(|| {
                        InputError::new(
                            "channel_set",
                            "kind",
                            Category::InvalidChannel,
                            format!("kind {name:?} is not one of {}", CHANNEL_KINDS.join(", ")),
                        )
                    })?
            }
        };
        let allocation = match self.allocation.as_str() {
            "" | "priority" => AllocationStrategy::Priority,
            "most_available" => AllocationStrategy::MostAvailable,
            other => {
                return Err(InputError::new(
                    "channel_set",
                    "allocation",
                    Category::InvalidChannel,
                    format!("allocation {other:?} is not one of priority, most_available"),
                ))
            }
        };
        Ok(Channel {
            id: self.id,
            name: self.name,
            kind: kind.into(),
            locations: self.locations,
            rules: Some(self.rules.into()),
            allocation: allocation.into(),
            rules_version: 0,
        })
    }

    /// The JSON form of a stored definition.
    pub fn from_channel(channel: &Channel) -> Self {
        let kind = ChannelKind::try_from(channel.kind).unwrap_or_default();
        Self {
            id: channel.id.clone(),
            name: channel.name.clone(),
            kind: match kind {
                ChannelKind::Unspecified => String::new(),
                k => k
                    .as_str_name()
                    .trim_start_matches("CHANNEL_KIND_")
                    .to_ascii_lowercase(),
            },
            locations: channel.locations.clone(),
            rules: channel.rules.unwrap_or_default().into(),
            allocation: match AllocationStrategy::try_from(channel.allocation) {
                Ok(AllocationStrategy::MostAvailable) => "most_available".into(),
                _ => "priority".into(),
            },
            rules_version: channel.rules_version,
        }
    }
}

/// The order command types of [`event_from_value`].
pub const ORDER_TYPES: [&str; 4] = [
    "order_placed",
    "order_committed",
    "order_cancelled",
    "order_fulfilled",
];

/// Parses one JSON value into `T`, naming the field at fault. A field set to `null` is the
/// same as a field left out, for every field at every depth: one rule for nulls.
pub fn from_value<T: DeserializeOwned>(mut value: Value) -> Result<T, InputError> {
    drop_nulls(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // Unknown and missing fields are named inside serde's message, not in the path.
        let field = match quoted_field(&inner) {
            Some(f) if path == "." => f,
            // An unknown field is already the last segment of the path; a missing one is not.
            Some(f) if path.ends_with(&f) => path,
            Some(f) => format!("{path}.{f}"),
            None if path == "." => "body".into(),
            None => path,
        };
        InputError::json(field, inner)
    })
}

/// Removes every object member whose value is `null`, at any depth.
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `unknown field `foo`, expected ...` -> `foo`.
fn quoted_field(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("missing field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// The `event_id` of a body that must carry its own: the one rule when nothing else (a header,
/// a default) can give it.
pub fn required_event_id(event_id: Option<String>) -> Result<String, InputError> {
    event_id.ok_or_else(|| {
        InputError::new(
            "unknown",
            "event_id",
            Category::InvalidMeta,
            "event_id is missing",
        )
    })
}

/// The envelope fields every JSON event may carry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaJson {
    /// Idempotency key; the gateway's `Idempotency-Key` header may give it instead.
    #[serde(default)]
    pub event_id: Option<String>,
    /// The reporting channel, e.g. `pos:store-12`.
    #[serde(default)]
    pub source: String,
    /// Why, e.g. `damaged` (the proto `Reason` without its prefix, any case).
    #[serde(default)]
    pub reason: Option<String>,
    /// URI of the source document.
    #[serde(default)]
    pub reference: String,
    /// When it happened at the source, ms since the Unix epoch.
    #[serde(default)]
    pub occurred_at_ms: i64,
}

/// The envelope of a JSON struct that carries the envelope fields inline (serde's `flatten`
/// would defeat `deny_unknown_fields`).
macro_rules! meta_of {
    ($json:expr) => {
        MetaJson {
            event_id: $json.event_id,
            source: $json.source,
            reason: $json.reason,
            reference: $json.reference,
            occurred_at_ms: $json.occurred_at_ms,
        }
    };
}

/// A reason by its JSON name: `damaged`, `cycle_count` (any case); not `unspecified`.
pub fn reason_from_name(name: &str) -> Option<Reason> {
    Reason::from_str_name(&format!("REASON_{}", name.to_ascii_uppercase()))
        .filter(|r| *r != Reason::Unspecified)
}

impl MetaJson {
    /// The protobuf envelope, with `event_id` as its id.
    pub fn into_meta(self, event_id: String) -> Result<EventMeta, InputError> {
        let reason = match self.reason.as_deref() {
            None | Some("") => Reason::Unspecified,
            Some(name) => reason_from_name(name).ok_or_else(|| {
                InputError::new(
                    "unknown",
                    "reason",
                    Category::UnknownEnum,
                    format!("reason {name:?} is not one of received, sold, returned, damaged, shrinkage, correction, cycle_count, transfer, reserved, released, shipped, policy, opening_balance"),
                )
            })?,
        };
        Ok(EventMeta {
            event_id,
            occurred_at_ms: self.occurred_at_ms,
            source: self.source,
            reason: reason.into(),
            reference: self.reference,
        })
    }
}

/// A stock fact in JSON. `type` picks the fact; only its own fields may be set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockFactJson {
    /// One of [`FACT_TYPES`].
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The SKU.
    #[serde(default)]
    pub sku: String,
    /// The location ('' only for a SKU-wide `policy_set`).
    #[serde(default)]
    pub location: String,
    /// Units: `received`, `sold`, `returned`, `transferred`.
    #[serde(default)]
    pub quantity: Option<i64>,
    /// Signed units: `adjusted`.
    #[serde(default)]
    pub delta: Option<i64>,
    /// Units counted: `counted`.
    #[serde(default)]
    pub on_hand: Option<i64>,
    /// Compare-and-set guard of a `counted`.
    #[serde(default)]
    pub expected_on_hand: Option<i64>,
    /// Destination of a `transferred`.
    #[serde(default)]
    pub to_location: Option<String>,
    /// `policy_set`: units; negative removes it.
    #[serde(default)]
    pub low_stock_threshold: Option<i64>,
    /// `policy_set`: units; negative removes it.
    #[serde(default)]
    pub safety_stock: Option<i64>,
    /// `policy_set`, SKU-wide: the order of locations for order lines without one.
    #[serde(default)]
    pub location_priority: Option<Vec<String>>,
    /// `sold` / `returned` from a sales channel instead of a location; the channel of a
    /// `channel_rules`.
    #[serde(default)]
    pub channel: Option<String>,
    /// `channel_rules`: the SKU's override of the channel's rules.
    #[serde(default)]
    pub rules: Option<AvailabilityRulesJson>,
    /// `expected`, `expected_cancelled`; a `received` against a purchase order.
    #[serde(default)]
    pub purchase_order: Option<String>,
    /// `expected`: when, ms since the Unix epoch.
    #[serde(default)]
    pub expected_at_ms: Option<i64>,
    /// `unsellable_moved`: `damaged`, `quality_control` or `held`.
    #[serde(default)]
    pub state: Option<String>,
    /// `unsellable_moved`: true moves sellable units into `state`, false back out of it.
    #[serde(default)]
    pub to_unsellable: Option<bool>,
    /// `kit_defined`: the kit's components (empty: no longer a kit).
    #[serde(default)]
    pub components: Option<Vec<KitComponentJson>>,
    /// `policy_set`, SKU-wide: `none`, `against_incoming`, `capped` or `unlimited`.
    #[serde(default)]
    pub backorder_policy: Option<String>,
    /// `policy_set` with `backorder_policy` `capped`: units that may be backordered in all.
    #[serde(default)]
    pub backorder_limit: Option<i64>,
    /// Envelope: idempotency key.
    #[serde(default)]
    pub event_id: Option<String>,
    /// Envelope: the reporting channel.
    #[serde(default)]
    pub source: String,
    /// Envelope: why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Envelope: URI of the source document.
    #[serde(default)]
    pub reference: String,
    /// Envelope: when, ms since the Unix epoch.
    #[serde(default)]
    pub occurred_at_ms: i64,
}

/// One component of a kit in JSON.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KitComponentJson {
    /// The component's SKU.
    #[serde(default)]
    pub sku: String,
    /// Units of it in one kit.
    #[serde(default)]
    pub quantity: i64,
}

fn require(value: Option<i64>, field: &str, kind: &str) -> Result<i64, InputError> {
    value.ok_or_else(|| InputError::json(field, format!("{field} is required for type {kind}")))
}

impl StockFactJson {
    /// The names of the type-specific fields that are set.
    fn set_fields(&self) -> Vec<&'static str> {
        [
            ("quantity", self.quantity.is_some()),
            ("delta", self.delta.is_some()),
            ("on_hand", self.on_hand.is_some()),
            ("expected_on_hand", self.expected_on_hand.is_some()),
            ("to_location", self.to_location.is_some()),
            ("low_stock_threshold", self.low_stock_threshold.is_some()),
            ("safety_stock", self.safety_stock.is_some()),
            ("location_priority", self.location_priority.is_some()),
            ("channel", self.channel.is_some()),
            ("rules", self.rules.is_some()),
            ("purchase_order", self.purchase_order.is_some()),
            ("expected_at_ms", self.expected_at_ms.is_some()),
            ("state", self.state.is_some()),
            ("to_unsellable", self.to_unsellable.is_some()),
            ("components", self.components.is_some()),
            ("backorder_policy", self.backorder_policy.is_some()),
            ("backorder_limit", self.backorder_limit.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    fn change(&self) -> Result<Change, InputError> {
        let kind = self.kind.as_str();
        let allowed: &[&str] = match kind {
            "received" => &["quantity", "purchase_order"],
            "expected" => &["purchase_order", "quantity", "expected_at_ms"],
            "expected_cancelled" => &["purchase_order", "quantity"],
            "unsellable_moved" => &["state", "quantity", "to_unsellable"],
            "sold" | "returned" => &["quantity", "channel"],
            "channel_rules" => &["channel", "rules"],
            "adjusted" => &["delta"],
            "counted" => &["on_hand", "expected_on_hand"],
            "transferred" => &["to_location", "quantity"],
            "policy_set" => &[
                "low_stock_threshold",
                "safety_stock",
                "location_priority",
                "backorder_policy",
                "backorder_limit",
            ],
            "kit_defined" => &["components"],
            "" => {
                return Err(InputError::new(
                    "unknown",
                    "type",
                    Category::UnknownType,
                    "type is missing",
                ))
            }
            other => {
                return Err(InputError::new(
                    "unknown",
                    "type",
                    Category::UnknownType,
                    format!("type {other:?} is not one of {}", FACT_TYPES.join(", ")),
                ))
            }
        };
        if let Some(field) = self.set_fields().into_iter().find(|f| !allowed.contains(f)) {
            return Err(InputError::json(
                field,
                format!("{field} does not apply to type {kind}"),
            ));
        }
        Ok(match kind {
            "received" => Change::Received(Received {
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "sold" => Change::Sold(Sold {
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "returned" => Change::Returned(Returned {
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "adjusted" => Change::Adjusted(Adjusted {
                delta: require(self.delta, "delta", kind)?,
            }),
            "counted" => Change::Counted(Counted {
                on_hand: require(self.on_hand, "on_hand", kind)?,
                expected_on_hand: self.expected_on_hand,
            }),
            "transferred" => Change::Transferred(Transferred {
                to_location: self.to_location.clone().ok_or_else(|| {
                    InputError::json(
                        "to_location",
                        "to_location is required for type transferred",
                    )
                })?,
                quantity: require(self.quantity, "quantity", kind)?,
            }),
            "expected" => Change::Expected(Expected {
                purchase_order: self.purchase_order(kind)?,
                quantity: require(self.quantity, "quantity", kind)?,
                expected_at_ms: require(self.expected_at_ms, "expected_at_ms", kind)?,
            }),
            "expected_cancelled" => Change::ExpectedCancelled(ExpectedCancelled {
                purchase_order: self.purchase_order(kind)?,
                quantity: self.quantity,
            }),
            "unsellable_moved" => Change::UnsellableMoved(UnsellableMoved {
                state: unsellable_state(self.state.as_deref().ok_or_else(|| {
                    InputError::json("state", "state is required for type unsellable_moved")
                })?)?
                .into(),
                quantity: require(self.quantity, "quantity", kind)?,
                to_unsellable: self.to_unsellable.ok_or_else(|| {
                    InputError::json(
                        "to_unsellable",
                        "to_unsellable is required for type unsellable_moved",
                    )
                })?,
            }),
            "channel_rules" => Change::ChannelRules(ChannelRulesSet {
                channel: self.channel.clone().ok_or_else(|| {
                    InputError::json("channel", "channel is required for type channel_rules")
                })?,
                rules: Some(self.rules.unwrap_or_default().into()),
            }),
            "kit_defined" => Change::KitDefined(KitDefined {
                components: self
                    .components
                    .clone()
                    .ok_or_else(|| {
                        InputError::json(
                            "components",
                            "components is required for type kit_defined (empty: no longer a kit)",
                        )
                    })?
                    .into_iter()
                    .map(|c| KitComponent {
                        sku: c.sku,
                        quantity: c.quantity,
                    })
                    .collect(),
            }),
            _ => Change::PolicySet(PolicySet {
                low_stock_threshold: self.low_stock_threshold,
                safety_stock: self.safety_stock,
                location_priority: self.location_priority.clone().unwrap_or_default(),
                backorder_policy: match self.backorder_policy.as_deref() {
                    Some(name) => backorder_policy(name)?.into(),
                    None => 0,
                },
                backorder_limit: self.backorder_limit,
            }),
        })
    }

    fn purchase_order(&self, kind: &str) -> Result<String, InputError> {
        self.purchase_order.clone().ok_or_else(|| {
            InputError::json(
                "purchase_order",
                format!("purchase_order is required for type {kind}"),
            )
        })
    }

    /// The protobuf fact. `event_id` picks the id from the body's own (`None` when it has
    /// none): the gateway weighs its `Idempotency-Key` header there. The fact's values are
    /// not judged yet: [`super::fact::parse`] does that, as the worker will.
    pub fn into_event<E: From<InputError>>(
        mut self,
        event_id: impl FnOnce(Option<String>) -> Result<String, E>,
    ) -> Result<StockEvent, E> {
        let change = self.change()?;
        let event_id = event_id(self.event_id.take())?;
        // A channel_rules carries its channel in the change itself.
        let channel = match change {
            Change::ChannelRules(_) => String::new(),
            _ => self.channel.take().unwrap_or_default(),
        };
        // A received names its purchase order in the envelope; the other facts in the change.
        let purchase_order = match change {
            Change::Received(_) => self.purchase_order.take().unwrap_or_default(),
            _ => String::new(),
        };
        Ok(StockEvent {
            meta: Some(meta_of!(self).into_meta(event_id)?),
            sku: self.sku,
            location: self.location,
            channel,
            purchase_order,
            change: Some(change),
        })
    }
}

/// An order placement in JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderJson {
    /// The order id.
    #[serde(default)]
    pub order_id: String,
    /// The lines, 1..=100.
    #[serde(default)]
    pub lines: Vec<OrderLineJson>,
    /// Checkout hold, seconds (0: none).
    #[serde(default)]
    pub hold_seconds: i64,
    /// The sales channel the order comes from ('' for none).
    #[serde(default)]
    pub channel: String,
    /// Envelope: idempotency key.
    #[serde(default)]
    pub event_id: Option<String>,
    /// Envelope: the reporting channel.
    #[serde(default)]
    pub source: String,
    /// Envelope: why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Envelope: URI of the source document.
    #[serde(default)]
    pub reference: String,
    /// Envelope: when, ms since the Unix epoch.
    #[serde(default)]
    pub occurred_at_ms: i64,
}

/// One line of a placement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLineJson {
    /// Unique within the order.
    #[serde(default)]
    pub line_id: String,
    /// The SKU.
    #[serde(default)]
    pub sku: String,
    /// Units.
    #[serde(default)]
    pub quantity: i64,
    /// Where to reserve ('' lets the worker choose).
    #[serde(default)]
    pub location: String,
}

impl PlaceOrderJson {
    /// The protobuf placement; `event_id` as in [`StockFactJson::into_event`]. The lines are
    /// judged here already, so a fault names the line's position (`lines[1].quantity`).
    pub fn into_event<E: From<InputError>>(
        mut self,
        event_id: impl FnOnce(Option<String>) -> Result<String, E>,
    ) -> Result<OrderEvent, E> {
        let event_id = event_id(self.event_id.take())?;
        let lines: Vec<order::Line> = std::mem::take(&mut self.lines)
            .into_iter()
            .map(|l| order::Line {
                line_id: l.line_id,
                sku: l.sku,
                quantity: l.quantity,
                location: l.location,
            })
            .collect();
        order::check_lines(&lines)?;
        order::check_channel(&self.channel)?;
        let command = order_event::Command::Placed(OrderPlaced {
            lines: lines
                .into_iter()
                .map(|l| OrderLine {
                    line_id: l.line_id,
                    sku: l.sku,
                    quantity: l.quantity,
                    location: l.location,
                })
                .collect(),
            hold_seconds: self.hold_seconds,
            channel: std::mem::take(&mut self.channel),
        });
        Ok(OrderEvent {
            meta: Some(meta_of!(self).into_meta(event_id)?),
            order_id: self.order_id,
            command: Some(command),
        })
    }
}

/// A fulfilment in JSON.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FulfilJson {
    /// Units shipped per line.
    #[serde(default)]
    pub lines: Vec<FulfilledLineJson>,
    /// The last shipment: whatever is still reserved is released.
    #[serde(default)]
    pub last_shipment: bool,
    /// Envelope: idempotency key.
    #[serde(default)]
    pub event_id: Option<String>,
    /// Envelope: the reporting channel.
    #[serde(default)]
    pub source: String,
    /// Envelope: why.
    #[serde(default)]
    pub reason: Option<String>,
    /// Envelope: URI of the source document.
    #[serde(default)]
    pub reference: String,
    /// Envelope: when, ms since the Unix epoch.
    #[serde(default)]
    pub occurred_at_ms: i64,
}

/// One line of a fulfilment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FulfilledLineJson {
    /// The order's line.
    #[serde(default)]
    pub line_id: String,
    /// Units shipped.
    #[serde(default)]
    pub quantity: i64,
}

/// The commands on an existing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAction {
    /// Release whatever the order holds.
    Cancel,
    /// Payment done: the hold no longer expires.
    Commit,
    /// Units shipped.
    Fulfil,
}

/// A cancel, commit or fulfilment of `order_id` from its JSON body (`{}` for cancel and
/// commit); `event_id` as in [`StockFactJson::into_event`]. A fulfilment names its shipped
/// lines, or is the last shipment.
pub fn order_action<E: From<InputError>>(
    order_id: String,
    action: OrderAction,
    body: Value,
    event_id: impl FnOnce(Option<String>) -> Result<String, E>,
) -> Result<OrderEvent, E> {
    let (command, meta_json) = match action {
        OrderAction::Cancel | OrderAction::Commit => {
            let meta_json: MetaJson = from_value(body)?;
            let command = if action == OrderAction::Cancel {
                order_event::Command::Cancelled(OrderCancelled {})
            } else {
                order_event::Command::Committed(OrderCommitted {})
            };
            (command, meta_json)
        }
        OrderAction::Fulfil => {
            let json: FulfilJson = from_value(body)?;
            if json.lines.is_empty() && !json.last_shipment {
                return Err(InputError::new(
                    "order_fulfilled",
                    "lines",
                    Category::InvalidLines,
                    "lines is empty: name the shipped lines, or set last_shipment",
                )
                .into());
            }
            let shipped: Vec<(String, i64)> = json
                .lines
                .into_iter()
                .map(|l| (l.line_id, l.quantity))
                .collect();
            order::check_fulfilled_lines(&shipped)?;
            let command = order_event::Command::Fulfilled(OrderFulfilled {
                lines: shipped
                    .into_iter()
                    .map(|(line_id, quantity)| FulfilledLine { line_id, quantity })
                    .collect(),
                last_shipment: json.last_shipment,
            });
            (command, meta_of!(json))
        }
    };
    let mut meta_json = meta_json;
    let event_id = event_id(meta_json.event_id.take())?;
    Ok(OrderEvent {
        meta: Some(meta_json.into_meta(event_id)?),
        order_id,
        command: Some(command),
    })
}

/// Parses stockctl's one-object form: a stock fact ([`StockFactJson`]), or an order command
/// whose `type` is one of [`ORDER_TYPES`] and which carries its `order_id` beside the body the
/// gateway takes for it. The body must carry its `event_id`. The event's values are not judged
/// yet: [`Event::check`] does that.
pub fn event_from_value(value: Value) -> Result<Event, InputError> {
    let Value::Object(mut map) = value else {
        return Err(InputError::json(
            "body",
            "the JSON must be an object with a \"type\"",
        ));
    };
    let kind = match map.get("type") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => {
            return Err(InputError::json(
                "type",
                format!("type must be a string, got {other}"),
            ))
        }
    };
    let action = match kind.as_str() {
        "order_placed" => {
            map.remove("type");
            let json: PlaceOrderJson = from_value(Value::Object(map))?;
            return json.into_event(required_event_id).map(Event::Order);
        }
        "order_committed" => OrderAction::Commit,
        "order_cancelled" => OrderAction::Cancel,
        "order_fulfilled" => OrderAction::Fulfil,
        kind if FACT_TYPES.contains(&kind) => {
            let json: StockFactJson = from_value(Value::Object(map))?;
            return json.into_event(required_event_id).map(Event::Stock);
        }
        "" => {
            return Err(InputError::new(
                "unknown",
                "type",
                Category::UnknownType,
                "type is missing",
            ))
        }
        other => {
            return Err(InputError::new(
                "unknown",
                "type",
                Category::UnknownType,
                format!(
                    "type {other:?} is not one of {}, {}",
                    FACT_TYPES.join(", "),
                    ORDER_TYPES.join(", ")
                ),
            ))
        }
    };
    map.remove("type");
    let order_id = match map.remove("order_id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(id)) => id,
        Some(other) => {
            return Err(InputError::json(
                "order_id",
                format!("order_id must be a string, got {other}"),
            ))
        }
    };
    order_action(order_id, action, Value::Object(map), required_event_id).map(Event::Order)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::input::fact;

    /// A fact from the body, judged as the worker judges it; the key stands in for a header.
    fn judged(value: Value, key: Option<&str>) -> Result<fact::Fact, InputError> {
        let event = from_value::<StockFactJson>(value)?.into_event(|id: Option<String>| {
            id.or(key.map(str::to_owned))
                .ok_or_else(|| InputError::json("event_id", "event_id is missing"))
        })?;
        Event::Stock(event.clone()).check()?;
        fact::parse(
            &crate::subjects::stock_event(&event.sku),
            &Event::Stock(event).encode(),
        )
    }

    #[test]
    fn a_backorder_policy_in_json() {
        let body = |v: Value| {
            let mut v = v;
            v["type"] = "policy_set".into();
            v["sku"] = "A".into();
            v["event_id"] = "e1".into();
            v
        };
        let capped = judged(
            body(json!({"backorder_policy": "capped", "backorder_limit": 20})),
            None,
        )
        .expect("capped");
        assert_eq!(capped.script_args()[..2], ["c", "20"]);
        let incoming = judged(body(json!({"backorder_policy": "against_incoming"})), None)
            .expect("against incoming");
        assert_eq!(incoming.script_args()[0], "i");
        for (value, field, category) in [
            (
                json!({"backorder_policy": "sometimes"}),
                "backorder_policy",
                Category::UnknownEnum,
            ),
            (
                json!({"backorder_policy": "capped"}),
                "backorder_limit",
                Category::InvalidQuantity,
            ),
            (
                json!({"backorder_policy": "unlimited", "location": "wh"}),
                "backorder_policy",
                Category::InvalidQuantity,
            ),
        ] {
            let error = judged(body(value), None).expect_err(field);
            assert_eq!((error.field.as_str(), error.category), (field, category));
        }
    }

    #[test]
    fn purchase_orders_and_unsellable_moves_in_json() {
        let body = |v: Value| {
            let mut v = v;
            v["sku"] = "A".into();
            v["location"] = "wh".into();
            v["event_id"] = "e1".into();
            v
        };
        let po = judged(
            body(json!({"type": "expected", "purchase_order": "PO-1", "quantity": 5, "expected_at_ms": 9})),
            None,
        )
        .expect("expected");
        assert_eq!(
            po.op,
            fact::Op::Expected {
                purchase_order: "PO-1".into(),
                quantity: 5,
                expected_at_ms: 9
            }
        );
        let receipt = judged(
            body(json!({"type": "received", "purchase_order": "PO-1", "quantity": 2})),
            None,
        )
        .expect("receipt");
        assert_eq!(receipt.purchase_order(), "PO-1");
        assert_eq!(
            receipt.fingerprint(&receipt.script_args()),
            "received|wh|2|PO-1||||"
        );
        let plain = judged(body(json!({"type": "received", "quantity": 2})), None).expect("plain");
        assert_eq!(
            plain.fingerprint(&plain.script_args()),
            "received|wh|2|||||"
        );
        let cancel = judged(
            body(json!({"type": "expected_cancelled", "purchase_order": "PO-1"})),
            None,
        )
        .expect("cancel");
        assert_eq!(cancel.script_args()[0], "");
        let moved = judged(
            body(json!({"type": "unsellable_moved", "state": "quality_control", "quantity": 1, "to_unsellable": true})),
            None,
        )
        .expect("moved");
        assert_eq!(moved.script_args()[..3], ["1", "qc", "in"]);
        for (value, field, category) in [
            (
                json!({"type": "expected", "purchase_order": "PO 1", "quantity": 5, "expected_at_ms": 9}),
                "purchase_order",
                Category::InvalidPurchaseOrder,
            ),
            (
                json!({"type": "expected", "purchase_order": "PO-1", "quantity": 5, "expected_at_ms": 0}),
                "expected_at_ms",
                Category::InvalidQuantity,
            ),
            (
                json!({"type": "expected", "purchase_order": "PO-1", "quantity": 5}),
                "expected_at_ms",
                Category::InvalidJson,
            ),
            (
                json!({"type": "sold", "purchase_order": "PO-1", "quantity": 5}),
                "purchase_order",
                Category::InvalidJson,
            ),
            (
                json!({"type": "unsellable_moved", "state": "lost", "quantity": 1, "to_unsellable": true}),
                "state",
                Category::UnknownEnum,
            ),
            (
                json!({"type": "unsellable_moved", "state": "held", "quantity": 1}),
                "to_unsellable",
                Category::InvalidJson,
            ),
        ] {
            let error = judged(body(value), None).expect_err(field);
            assert_eq!((error.field.as_str(), error.category), (field, category));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": 0}),
                "quantity",
            ),
            (
                json!({"type": "received", "sku": "", "location": "wh", "quantity": 1}),
                "sku",
            ),
            (
                json!({"type": "received", "sku": "A", "quantity": 1}),
                "location",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh"}),
                "quantity",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": 1, "delta": 2}),
                "delta",
            ),
            (
                json!({"type": "gifted", "sku": "A", "location": "wh"}),
                "type",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": "x"}),
                "quantity",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "wh", "quantity": 1, "colour": "red"}),
                "colour",
            ),
            (
                json!({"type": "adjusted", "sku": "A", "location": "wh", "delta": 0}),
                "delta",
            ),
            (
                json!({"type": "transferred", "sku": "A", "location": "wh", "to_location": "wh", "quantity": 1}),
                "to_location",
            ),
            (
                json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1, "reason": "lost"}),
                "reason",
            ),
            (
                json!({"type": "policy_set", "sku": "A", "location": "wh"}),
                "type",
            ),
            (json!({"sku": "A", "location": "wh", "quantity": 1}), "type"),
        ];
        for (body, field) in cases {
            let err = judged(body.clone(), Some("k")).expect_err(&body.to_string());
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
        let err = judged(
            json!({"type": "sold", "sku": "A", "location": "wh", "quantity": 1}),
            None,
        )
        .expect_err("no id");
        assert_eq!(err.field, "event_id");
    }

    #[test]
    fn null_is_absent_for_every_field() {
        let ok = judged(
            json!({"type": "received", "sku": "A", "location": "wh", "quantity": 5,
                   "event_id": null, "source": null, "reason": null, "reference": null,
                   "occurred_at_ms": null, "delta": null}),
            Some("k-null"),
        )
        .expect("nulls are absent");
        assert_eq!(ok.meta.event_id, "k-null");
        let err = judged(
            json!({"type": "received", "sku": null, "location": "wh", "quantity": 1}),
            Some("k"),
        )
        .expect_err("a required field set to null is missing");
        assert_eq!(err.field, "sku");
    }

    #[test]
    fn reasons_are_the_contracts_names_in_any_case() {
        assert_eq!(reason_from_name("cycle_count"), Some(Reason::CycleCount));
        assert_eq!(reason_from_name("DAMAGED"), Some(Reason::Damaged));
        for refused in ["unspecified", "REASON_SOLD", "cycle-count", "lost"] {
            assert_eq!(reason_from_name(refused), None, "{refused}");
        }
    }

    #[test]
    fn placements_name_the_line_at_fault() {
        let place = |body: Value| {
            from_value::<PlaceOrderJson>(body)?
                .into_event(|_: Option<String>| Ok::<_, InputError>("p-1".to_owned()))
                .and_then(|e| {
                    Event::Order(e.clone()).check()?;
                    Ok(e)
                })
        };
        let placed = place(
            json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "A", "quantity": 2}]}),
        )
        .expect("valid");
        assert_eq!(placed.order_id, "o-1");
        let from_channel = place(json!({"order_id": "o-1", "channel": "web-shop",
            "lines": [{"line_id": "1", "sku": "A", "quantity": 2}]}))
        .expect("a channel order");
        assert!(matches!(
            from_channel.command,
            Some(order_event::Command::Placed(OrderPlaced { ref channel, .. })) if channel == "web-shop"
        ));
        for (body, field) in [
            (json!({"order_id": "o-1", "lines": []}), "lines"),
            (
                json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "A", "quantity": 0}]}),
                "lines[0].quantity",
            ),
            (
                json!({"order_id": "o-1", "lines": [
                    {"line_id": "1", "sku": "A", "quantity": 1},
                    {"line_id": "2", "sku": "B\u{7}", "quantity": 1}]}),
                "lines[1].sku",
            ),
            (
                json!({"order_id": "o 1", "lines": [{"line_id": "1", "sku": "A", "quantity": 1}]}),
                "order_id",
            ),
            (
                json!({"order_id": "o-1", "lines": [{"line_id": "1", "sku": "A", "quantity": 1, "colour": 1}]}),
                "lines[0].colour",
            ),
            (
                json!({"order_id": "o-1", "channel": "web.shop", "lines": [{"line_id": "1", "sku": "A", "quantity": 1}]}),
                "channel",
            ),
        ] {
            let err = place(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
        assert_eq!(
            place(json!({"order_id": "o-1", "lines": []}))
                .expect_err("no lines")
                .reason,
            "an order has 1..=100 lines, got 0"
        );
    }

    #[test]
    fn a_fulfilment_names_its_lines_or_is_the_last() {
        let fulfil = |body: Value| {
            order_action(
                "o-1".into(),
                OrderAction::Fulfil,
                body,
                |_: Option<String>| Ok::<_, InputError>("f-1".to_owned()),
            )
        };
        let err = fulfil(json!({})).expect_err("nothing shipped");
        assert_eq!(err.field, "lines");
        assert!(fulfil(json!({"last_shipment": true})).is_ok());
        let err = fulfil(
            json!({"lines": [{"line_id": "1", "quantity": 1}, {"line_id": "2", "quantity": 0}]}),
        )
        .expect_err("zero shipped");
        assert_eq!(err.field, "lines[1].quantity");
        let err = fulfil(json!({"lines": [{"line_id": "1", "quantity": 1}], "order_id": "o-1"}))
            .expect_err("the order id is the path's");
        assert_eq!(err.field, "order_id");
    }

    #[test]
    fn the_one_object_form_carries_facts_and_order_commands() {
        let fact = event_from_value(
            json!({"type": "counted", "sku": "A1", "location": "s1", "on_hand": 7, "event_id": "e9"}),
        )
        .expect("a fact");
        assert_eq!(fact.msg_id(), "fact:A1:e9");
        fact.check().expect("valid");
        let cancel = event_from_value(
            json!({"type": "order_cancelled", "order_id": "O-1", "event_id": "cx-1"}),
        )
        .expect("a cancel");
        assert_eq!(cancel.subject(), "orders.events.O-1");
        assert_eq!(cancel.msg_id(), "order:O-1:cx-1");
        let Event::Order(e) = &cancel else {
            panic!("an order command")
        };
        assert_eq!(
            e.command,
            Some(order_event::Command::Cancelled(OrderCancelled {}))
        );
        let placed = event_from_value(
            json!({"type": "order_placed", "order_id": "O-2", "event_id": "p",
            "lines": [{"line_id": "1", "sku": "A", "quantity": 1}]}),
        )
        .expect("a placement");
        placed.check().expect("valid");
        for (body, field) in [
            (
                json!({"type": "order_shipped", "order_id": "O-1", "event_id": "e"}),
                "type",
            ),
            (
                json!({"type": "order_cancelled", "order_id": 7, "event_id": "e"}),
                "order_id",
            ),
            (
                json!({"type": "order_cancelled", "order_id": "O-1", "event_id": "e", "lines": []}),
                "lines",
            ),
            (
                json!({"type": "received", "sku": "A", "location": "s", "quantity": 1}),
                "event_id",
            ),
            (json!([1]), "body"),
        ] {
            let err = event_from_value(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.field, field, "{body}: {err:?}");
        }
        let no_id = event_from_value(json!({"type": "order_cancelled", "event_id": "e"}))
            .expect("well-formed");
        assert_eq!(no_id.check().expect_err("no order id").field, "order_id");
    }
}
