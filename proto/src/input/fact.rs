//! Decoding and validating a stock fact: everything wrong with an input is found here, before
//! Redis is touched, and reported as a reason a person can act on.

use prost::Message as _;

use super::{Category, InputError};
use crate::{
    subjects,
    v1::{
        stock_event::Change, AvailabilityRules, BackorderPolicy, ChannelRulesSet, EventMeta,
        PolicySet, StockEvent, UnsellableState,
    },
    validate::{
        meta_fault, positive, validate_channel_id, validate_location, validate_purchase_order,
        validate_reason, validate_rules, validate_sku, MAX_LEVEL, MAX_QUANTITY,
    },
};

/// What a valid fact does, in the terms of the stock worker's `apply_stock` script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// on_hand += quantity.
    Received(i64),
    /// on_hand -= quantity.
    Sold(i64),
    /// on_hand += quantity.
    Returned(i64),
    /// on_hand += delta.
    Adjusted(i64),
    /// on_hand := on_hand, if it equals `expected` (when given).
    Counted {
        /// Counted units.
        on_hand: i64,
        /// Compare-and-set guard.
        expected: Option<i64>,
    },
    /// Moves `quantity` to `to`.
    Transferred {
        /// Destination location.
        to: String,
        /// Units.
        quantity: i64,
    },
    /// Sets (>= 0) or removes (< 0) policy values; `None` leaves one alone.
    PolicySet {
        /// Low-stock threshold.
        threshold: Option<i64>,
        /// Safety stock.
        safety_stock: Option<i64>,
        /// Location priority for order allocation, comma-joined ('' leaves it alone).
        location_priority: String,
        /// The backorder policy (SKU-wide); `None` leaves it alone.
        backorder: Option<Backorder>,
    },
    /// Replaces the SKU's override of `channel`'s rules (no field set: removes it).
    ChannelRules {
        /// The channel.
        channel: String,
        /// The override.
        rules: AvailabilityRules,
    },
    /// Recomputes `channel`'s quantity with rules of `rules_version` or newer.
    ChannelRecompute {
        /// The channel.
        channel: String,
        /// Oldest rules version to compute with.
        rules_version: u64,
    },
    /// A `received` against a purchase order: min(quantity, outstanding) moves from incoming to
    /// on_hand, the rest goes straight to on_hand.
    ReceivedAgainst {
        /// The purchase-order reference.
        purchase_order: String,
        /// Units.
        quantity: i64,
    },
    /// incoming += quantity, on purchase order `purchase_order` at the location.
    Expected {
        /// The purchase-order reference.
        purchase_order: String,
        /// Units.
        quantity: i64,
        /// When they are expected, ms since the Unix epoch.
        expected_at_ms: i64,
    },
    /// The purchase order's outstanding units at the location go down by `quantity` (all of
    /// them when `None`), and incoming with them.
    ExpectedCancelled {
        /// The purchase-order reference.
        purchase_order: String,
        /// Units; `None`: everything outstanding.
        quantity: Option<i64>,
    },
    /// Sellable units become `state` (`to_unsellable`), or units of `state` become sellable.
    UnsellableMoved {
        /// The unsellable state.
        state: UnsellableState,
        /// Units.
        quantity: i64,
        /// The direction: true into `state`.
        to_unsellable: bool,
    },
    /// Defines the SKU as a kit of `components` (sorted by SKU), or (none) makes it a plain SKU
    /// again.
    KitDefined {
        /// (component SKU, units per kit), sorted by SKU, each SKU once.
        components: Vec<(String, i64)>,
    },
    /// The kit's on_hand at the location becomes `buildable`, unless a computation with a
    /// higher `stamp` was applied there first.
    KitBuildable {
        /// Kits the components make.
        buildable: i64,
        /// The computation's order among the kit's computations.
        stamp: u64,
    },
}

/// Most components a kit may have.
pub const MAX_KIT_COMPONENTS: usize = 32;

/// Most units of one component in one kit.
pub const MAX_KIT_COMPONENT_QUANTITY: i64 = 10_000;

/// A kit's components as the scripts store them: `sku \x1f quantity` pairs joined by `\x1f`,
/// in the order given ('' for none). Unambiguous: a SKU holds no control characters.
pub fn encode_kit(components: &[(String, i64)]) -> String {
    let mut out = String::new();
    for (sku, quantity) in components {
        if !out.is_empty() {
            out.push('\x1f');
        }
        out.push_str(sku);
        out.push('\x1f');
        out.push_str(&quantity.to_string());
    }
    out
}

/// Reads what [`encode_kit`] wrote; `None` for a value it cannot have written.
pub fn decode_kit(text: &str) -> Option<Vec<(String, i64)>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let fields: Vec<&str> = text.split('\x1f').collect();
    if fields.len() % 2 != 0 {
        return None;
    }
    fields
        .chunks(2)
        .map(|pair| Some((pair[0].to_owned(), pair[1].parse().ok()?)))
        .collect()
}

/// A SKU's backorder policy, as a valid `PolicySet` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backorder {
    /// A line stock cannot cover is short (the default).
    None,
    /// Up to what is incoming at the location, less what is backordered there.
    AgainstIncoming,
    /// Up to this many units backordered in all.
    Capped(i64),
    /// Without a limit.
    Unlimited,
}

impl Backorder {
    /// The policy as the scripts store it (`n`, `i`, `c`, `u`) and its limit ('' for none).
    pub fn script_args(self) -> (String, String) {
        match self {
            Self::None => ("n".into(), String::new()),
            Self::AgainstIncoming => ("i".into(), String::new()),
            Self::Capped(limit) => ("c".into(), limit.to_string()),
            Self::Unlimited => ("u".into(), String::new()),
        }
    }

    /// The contract's enum value and limit of this policy.
    pub fn to_proto(self) -> (BackorderPolicy, Option<i64>) {
        match self {
            Self::None => (BackorderPolicy::None, None),
            Self::AgainstIncoming => (BackorderPolicy::AgainstIncoming, None),
            Self::Capped(limit) => (BackorderPolicy::Capped, Some(limit)),
            Self::Unlimited => (BackorderPolicy::Unlimited, None),
        }
    }

    /// The JSON name: `none`, `against_incoming`, `capped`, `unlimited`.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::AgainstIncoming => "against_incoming",
            Self::Capped(_) => "capped",
            Self::Unlimited => "unlimited",
        }
    }
}

/// The backorder policy a `PolicySet` asks for: `Ok(None)` when it leaves the policy alone, or
/// the field at fault and why.
pub fn backorder_of(set: &PolicySet) -> Result<Option<Backorder>, (&'static str, String)> {
    let limit = set.backorder_limit;
    let policy = match BackorderPolicy::try_from(set.backorder_policy) {
        Ok(BackorderPolicy::Unspecified) => None,
        Ok(BackorderPolicy::None) => Some(Backorder::None),
        Ok(BackorderPolicy::AgainstIncoming) => Some(Backorder::AgainstIncoming),
        Ok(BackorderPolicy::Capped) => match limit {
            Some(l) if (1..=MAX_QUANTITY).contains(&l) => Some(Backorder::Capped(l)),
            Some(l) => {
                return Err((
                    "backorder_limit",
                    format!("backorder_limit must be 1..={MAX_QUANTITY}, got {l}"),
                ))
            }
            None => {
                return Err((
                    "backorder_limit",
                    "backorder_policy capped needs backorder_limit".into(),
                ))
            }
        },
        Ok(BackorderPolicy::Unlimited) => Some(Backorder::Unlimited),
        Err(_) => {
            return Err((
                "backorder_policy",
                format!(
                    "backorder_policy must be one of none, against_incoming, capped, unlimited \
                     (stockflow.v1.BackorderPolicy 1..=4), got {}",
                    set.backorder_policy
                ),
            ))
        }
    };
    if limit.is_some() && !matches!(policy, Some(Backorder::Capped(_))) {
        return Err((
            "backorder_limit",
            "backorder_limit goes only with backorder_policy capped".into(),
        ));
    }
    Ok(policy)
}

/// The short name of an unsellable state, as the scripts store it (`dm`, `qc`, `hd`) — also the
/// prefix of its field in the stock hash.
pub fn state_code(state: UnsellableState) -> &'static str {
    match state {
        UnsellableState::Damaged => "dm",
        UnsellableState::QualityControl => "qc",
        UnsellableState::Held => "hd",
        UnsellableState::Unspecified => "",
    }
}

/// The JSON name of an unsellable state: `damaged`, `quality_control`, `held`.
pub fn state_name(state: UnsellableState) -> &'static str {
    match state {
        UnsellableState::Damaged => "damaged",
        UnsellableState::QualityControl => "quality_control",
        UnsellableState::Held => "held",
        UnsellableState::Unspecified => "unspecified",
    }
}

impl Op {
    /// Event type label for metrics and the script's `op` argument.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Received(_) => "received",
            Self::Sold(_) => "sold",
            Self::Returned(_) => "returned",
            Self::Adjusted(_) => "adjusted",
            Self::Counted { .. } => "counted",
            Self::Transferred { .. } => "transferred",
            Self::PolicySet { .. } => "policy_set",
            Self::ChannelRules { .. } => "channel_rules",
            Self::ChannelRecompute { .. } => "channel_recompute",
            Self::ReceivedAgainst { .. } => "received",
            Self::Expected { .. } => "expected",
            Self::ExpectedCancelled { .. } => "expected_cancelled",
            Self::UnsellableMoved { .. } => "unsellable_moved",
            Self::KitDefined { .. } => "kit_defined",
            Self::KitBuildable { .. } => "kit_buildable",
        }
    }
}

/// A decoded, valid stock fact.
#[derive(Debug, Clone)]
pub struct Fact {
    /// Envelope.
    pub meta: EventMeta,
    /// SKU.
    pub sku: String,
    /// Location ('' for a SKU-wide policy, a channel's rules, and a channel sale or return).
    pub location: String,
    /// The sales channel a sale or return came from ('' when it names a location); the
    /// channel of a `ChannelRules` or `ChannelRecompute`.
    pub channel: String,
    /// The change.
    pub op: Op,
}

fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl Fact {
    /// The policy change of a `policy_set`, as the contract states it (for the ledger).
    pub fn policy(&self) -> Option<PolicySet> {
        match &self.op {
            Op::PolicySet {
                threshold,
                safety_stock,
                location_priority,
                backorder,
            } => {
                let (policy, limit) =
                    backorder.map_or((BackorderPolicy::Unspecified, None), |b| b.to_proto());
                Some(PolicySet {
                    low_stock_threshold: *threshold,
                    safety_stock: *safety_stock,
                    location_priority: location_priority
                        .split(',')
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    backorder_policy: policy.into(),
                    backorder_limit: limit,
                })
            }
            _ => None,
        }
    }

    /// The override of a `channel_rules`, as the contract states it (for the ledger).
    pub fn channel_rules(&self) -> Option<ChannelRulesSet> {
        match &self.op {
            Op::ChannelRules { channel, rules } => Some(ChannelRulesSet {
                channel: channel.clone(),
                rules: Some(*rules),
            }),
            _ => None,
        }
    }

    /// The definition of a `kit_defined`, as the contract states it (for the ledger).
    pub fn kit(&self) -> Option<crate::v1::KitDefined> {
        match &self.op {
            Op::KitDefined { components } => Some(crate::v1::KitDefined {
                components: components
                    .iter()
                    .map(|(sku, quantity)| crate::v1::KitComponent {
                        sku: sku.clone(),
                        quantity: *quantity,
                    })
                    .collect(),
            }),
            _ => None,
        }
    }

    /// The purchase order a `received`, `expected` or `expected_cancelled` names ('' for none).
    pub fn purchase_order(&self) -> &str {
        match &self.op {
            Op::ReceivedAgainst { purchase_order, .. }
            | Op::Expected { purchase_order, .. }
            | Op::ExpectedCancelled { purchase_order, .. } => purchase_order,
            _ => "",
        }
    }

    /// The change as the stock worker's script takes it, after the location: quantity,
    /// expected, destination, threshold, safety stock, location priority. The newer facts use
    /// the same slots: a purchase order rides in the second (`expected`), an expected date or an
    /// unsellable move's direction (`in` / `out`) in the third, an unsellable state's code in
    /// the second.
    pub fn script_args(&self) -> [String; 6] {
        let none = String::new;
        match &self.op {
            Op::Received(q) | Op::Sold(q) | Op::Returned(q) | Op::Adjusted(q) => {
                [q.to_string(), none(), none(), none(), none(), none()]
            }
            Op::Counted { on_hand, expected } => [
                on_hand.to_string(),
                optional(*expected),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::Transferred { to, quantity } => [
                quantity.to_string(),
                none(),
                to.clone(),
                none(),
                none(),
                none(),
            ],
            Op::PolicySet {
                threshold,
                safety_stock,
                location_priority,
                backorder,
            } => {
                // The backorder policy rides in the slots a policy has no other use for.
                let (policy, limit) = backorder.map(Backorder::script_args).unwrap_or_default();
                [
                    policy,
                    limit,
                    none(),
                    optional(*threshold),
                    optional(*safety_stock),
                    location_priority.clone(),
                ]
            }
            Op::ChannelRules { channel, rules } => [
                channel.clone(),
                encode_override(rules),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::ChannelRecompute {
                channel,
                rules_version,
            } => [
                channel.clone(),
                rules_version.to_string(),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::ReceivedAgainst {
                purchase_order,
                quantity,
            } => [
                quantity.to_string(),
                purchase_order.clone(),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::Expected {
                purchase_order,
                quantity,
                expected_at_ms,
            } => [
                quantity.to_string(),
                purchase_order.clone(),
                expected_at_ms.to_string(),
                none(),
                none(),
                none(),
            ],
            Op::ExpectedCancelled {
                purchase_order,
                quantity,
            } => [
                optional(*quantity),
                purchase_order.clone(),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::UnsellableMoved {
                state,
                quantity,
                to_unsellable,
            } => [
                quantity.to_string(),
                state_code(*state).to_owned(),
                if *to_unsellable { "in" } else { "out" }.to_owned(),
                none(),
                none(),
                none(),
            ],
            Op::KitDefined { components } => [
                components.len().to_string(),
                encode_kit(components),
                none(),
                none(),
                none(),
                none(),
            ],
            Op::KitBuildable { buildable, stamp } => [
                buildable.to_string(),
                stamp.to_string(),
                none(),
                none(),
                none(),
                none(),
            ],
        }
    }

    /// What the event does, as compared between two deliveries of one `event_id`: the same id
    /// with a different change is a conflict, not a duplicate. The stock worker stores it in its
    /// dedup record (field `f`), and the gateway compares a new post with it. `args` are
    /// [`Self::script_args`], passed in so they are built once per event.
    pub fn fingerprint(&self, args: &[String; 6]) -> String {
        let [a, b, c, d, e, f] = args;
        let fingerprint = format!(
            "{}|{}|{a}|{b}|{c}|{d}|{e}|{f}",
            self.op.name(),
            self.location
        );
        // Facts without a channel keep the fingerprint their dedup records already hold.
        if self.channel.is_empty() || !matches!(self.op, Op::Sold(_) | Op::Returned(_)) {
            fingerprint
        } else {
            format!("{fingerprint}|ch={}", self.channel)
        }
    }
}

/// A channel's backorder policy as the scripts take it: '' (follows the SKU's), `n`, `i`,
/// `u`, or `c<limit>`.
pub fn encode_backorder(rules: &AvailabilityRules) -> String {
    match BackorderPolicy::try_from(rules.backorder_policy) {
        Ok(BackorderPolicy::None) => "n".into(),
        Ok(BackorderPolicy::AgainstIncoming) => "i".into(),
        Ok(BackorderPolicy::Capped) => format!("c{}", rules.backorder_limit.unwrap_or(0)),
        Ok(BackorderPolicy::Unlimited) => "u".into(),
        Ok(BackorderPolicy::Unspecified) | Err(_) => String::new(),
    }
}

/// A SKU's override of a channel's rules as `apply_stock.lua` stores it: the rules as
/// [`encode_rules`] gives them, then the backorder policy ([`encode_backorder`]) as a sixth
/// field when the override sets one (so every override without one reads as before).
pub fn encode_override(rules: &AvailabilityRules) -> String {
    let backorder = encode_backorder(rules);
    if backorder.is_empty() {
        encode_rules(rules)
    } else {
        format!("{}\x1f{backorder}", encode_rules(rules))
    }
}

/// Availability rules as the scripts take them: buffer, percent, max_listed, end_when_below,
/// own_reservations_only ('1' / '0'), separated by `\x1f`, '' where absent.
pub fn encode_rules(rules: &AvailabilityRules) -> String {
    let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let own = match rules.own_reservations_only {
        Some(true) => "1",
        Some(false) => "0",
        None => "",
    };
    format!(
        "{}\x1f{}\x1f{}\x1f{}\x1f{own}",
        opt(rules.buffer),
        opt(rules.percent),
        opt(rules.max_listed),
        opt(rules.end_when_below)
    )
}

/// Decodes and validates `payload` received on `subject` from the unpartitioned `STOCK_EVENTS`:
/// the subject must be `stock.events.<sku-token>` of the event's own SKU.
pub fn parse(subject: &str, payload: &[u8]) -> Result<Fact, InputError> {
    parse_from(subject, payload)
}

fn parse_from(subject: &str, payload: &[u8]) -> Result<Fact, InputError> {
    let event = StockEvent::decode(payload).map_err(|e| {
        InputError::new(
            "unknown",
            "body",
            Category::Decode,
            format!("not a StockEvent: {e}"),
        )
    })?;
    let Some(change) = event.change else {
        return Err(InputError::new(
            "unknown",
            "type",
            Category::UnknownType,
            "no change set (missing or unknown fact type)",
        ));
    };
    let op = match change {
        Change::Received(c) if !event.purchase_order.is_empty() => Op::ReceivedAgainst {
            purchase_order: event.purchase_order.clone(),
            quantity: c.quantity,
        },
        Change::Received(c) => Op::Received(c.quantity),
        Change::Expected(c) => Op::Expected {
            purchase_order: c.purchase_order,
            quantity: c.quantity,
            expected_at_ms: c.expected_at_ms,
        },
        Change::ExpectedCancelled(c) => Op::ExpectedCancelled {
            purchase_order: c.purchase_order,
            quantity: c.quantity,
        },
        Change::UnsellableMoved(c) => Op::UnsellableMoved {
            // An unknown value is refused below, never applied under a guessed state.
            state: UnsellableState::try_from(c.state).unwrap_or(UnsellableState::Unspecified),
            quantity: c.quantity,
            to_unsellable: c.to_unsellable,
        },
        Change::Sold(c) => Op::Sold(c.quantity),
        Change::Returned(c) => Op::Returned(c.quantity),
        Change::Adjusted(c) => Op::Adjusted(c.delta),
        Change::Counted(c) => Op::Counted {
            on_hand: c.on_hand,
            expected: c.expected_on_hand,
        },
        Change::Transferred(c) => Op::Transferred {
            to: c.to_location,
            quantity: c.quantity,
        },
        Change::PolicySet(c) => Op::PolicySet {
            backorder: backorder_of(&c).map_err(|(field, reason)| {
                let category = if field == "backorder_policy" {
                    Category::UnknownEnum
                } else {
                    Category::InvalidQuantity
                };
                InputError::new("policy_set", field, category, reason)
            })?,
            threshold: c.low_stock_threshold,
            safety_stock: c.safety_stock,
            location_priority: c.location_priority.join(","),
        },
        Change::ChannelRules(c) => Op::ChannelRules {
            channel: c.channel,
            rules: c.rules.unwrap_or_default(),
        },
        Change::ChannelRecompute(c) => Op::ChannelRecompute {
            channel: c.channel,
            rules_version: c.rules_version,
        },
        Change::KitDefined(c) => {
            let mut components: Vec<(String, i64)> = c
                .components
                .into_iter()
                .map(|c| (c.sku, c.quantity))
                .collect();
            components.sort();
            Op::KitDefined { components }
        }
        Change::KitBuildable(c) => Op::KitBuildable {
            buildable: c.buildable,
            stamp: c.stamp,
        },
    };
    let kind = op.name();
    let bad = |field: &str, category: Category, reason: String| {
        InputError::new(kind, field, category, reason)
    };

    let meta = event.meta.unwrap_or_default();
    meta_fault(&meta).map_err(|(field, reason)| bad(field, Category::InvalidMeta, reason))?;
    validate_reason(&meta).map_err(|reason| bad("reason", Category::UnknownEnum, reason))?;
    validate_sku(&event.sku).map_err(|reason| bad("sku", Category::InvalidSku, reason))?;
    let expected_subject = subjects::stock_event(&event.sku);
    if subject != expected_subject {
        return Err(bad(
            "subject",
            Category::SubjectMismatch,
            format!("published on {subject} but its sku belongs on {expected_subject}"),
        ));
    }
    // The channel these ops are about travels in the op itself; a sale or return may name
    // its channel instead of a location.
    let channel = match &op {
        Op::ChannelRules { channel, .. } | Op::ChannelRecompute { channel, .. } => {
            if !event.channel.is_empty() && event.channel != *channel {
                return Err(bad(
                    "channel",
                    Category::InvalidChannel,
                    format!(
                        "channel {:?} differs from the {kind}'s channel {channel:?}",
                        event.channel
                    ),
                ));
            }
            channel.clone()
        }
        _ => event.channel.clone(),
    };
    let by_channel = !channel.is_empty();
    if by_channel {
        validate_channel_id("channel", &channel)
            .map_err(|r| bad("channel", Category::InvalidChannel, r))?;
    }
    let location_optional = match &op {
        Op::PolicySet { .. } => event.location.is_empty(),
        Op::ChannelRules { .. } | Op::ChannelRecompute { .. } | Op::KitDefined { .. } => {
            if !event.location.is_empty() {
                return Err(bad(
                    "location",
                    Category::InvalidLocation,
                    format!("{kind} is SKU-wide: leave location empty"),
                ));
            }
            true
        }
        Op::Sold(_) | Op::Returned(_) if by_channel => {
            if !event.location.is_empty() {
                return Err(bad(
                    "location",
                    Category::InvalidLocation,
                    "name a location or a channel, not both".into(),
                ));
            }
            true
        }
        _ if by_channel => {
            return Err(bad(
                "channel",
                Category::InvalidChannel,
                format!("only sold and returned may name a channel, not {kind}"),
            ))
        }
        _ => false,
    };
    if !location_optional {
        validate_location("location", &event.location)
            .map_err(|r| bad("location", Category::InvalidLocation, r))?;
    }
    if let Op::Transferred { to, .. } = &op {
        // Not a quantity problem: its own category, so a channel sending these is easy to spot.
        if *to == event.location {
            return Err(bad(
                "to_location",
                Category::SameLocation,
                "to_location equals location: a transfer moves units between two locations".into(),
            ));
        }
    }
    if !event.purchase_order.is_empty() && !matches!(op, Op::ReceivedAgainst { .. }) {
        return Err(bad(
            "purchase_order",
            Category::InvalidPurchaseOrder,
            format!("only received names a purchase order this way, not {kind}"),
        ));
    }
    if let Op::ReceivedAgainst { purchase_order, .. }
    | Op::Expected { purchase_order, .. }
    | Op::ExpectedCancelled { purchase_order, .. } = &op
    {
        validate_purchase_order("purchase_order", purchase_order)
            .map_err(|r| bad("purchase_order", Category::InvalidPurchaseOrder, r))?;
    }
    if let Op::UnsellableMoved { state, .. } = &op {
        if *state == UnsellableState::Unspecified {
            return Err(bad(
                "state",
                Category::UnknownEnum,
                "state must be one of damaged, quality_control, held (stockflow.v1.UnsellableState 1..=3)".into(),
            ));
        }
    }
    if let Op::ChannelRules { rules, .. } = &op {
        validate_rules("rules", rules).map_err(|(field, reason)| {
            InputError::new(kind, field, Category::InvalidChannel, reason)
        })?;
    }
    if let Op::KitDefined { components } = &op {
        validate_kit(&event.sku, components)
            .map_err(|(field, reason)| bad(field, Category::InvalidKit, reason))?;
    }
    validate_op(&op, &event.location)
        .map_err(|(field, reason)| bad(field, Category::InvalidQuantity, reason))?;
    Ok(Fact {
        meta,
        sku: event.sku,
        location: event.location,
        channel,
        op,
    })
}

/// A kit's components (sorted by SKU): each a valid SKU other than the kit's, once, with
/// 1..=[`MAX_KIT_COMPONENT_QUANTITY`] units; at most [`MAX_KIT_COMPONENTS`]. Whether a
/// component is itself a kit is judged by the stock worker, which can read it.
fn validate_kit(kit: &str, components: &[(String, i64)]) -> Result<(), (&'static str, String)> {
    if components.len() > MAX_KIT_COMPONENTS {
        return Err((
            "components",
            format!(
                "a kit has at most {MAX_KIT_COMPONENTS} components, got {}",
                components.len()
            ),
        ));
    }
    for (index, (sku, quantity)) in components.iter().enumerate() {
        validate_sku(sku).map_err(|r| ("components.sku", format!("components[{index}]: {r}")))?;
        if sku == kit {
            return Err((
                "components.sku",
                format!("kit {kit:?} cannot be a component of itself"),
            ));
        }
        if index > 0 && components[index - 1].0 == *sku {
            return Err((
                "components.sku",
                format!("component {sku:?} appears twice: give its total quantity once"),
            ));
        }
        if !(1..=MAX_KIT_COMPONENT_QUANTITY).contains(quantity) {
            return Err((
                "components.quantity",
                format!(
                    "component {sku:?}: quantity must be 1..={MAX_KIT_COMPONENT_QUANTITY}, got {quantity}"
                ),
            ));
        }
    }
    Ok(())
}

/// The change's own values; a fault names its field (`type` when no one field is at fault).
fn validate_op(op: &Op, location: &str) -> Result<(), (&'static str, String)> {
    let at = |field: &'static str| move |reason: String| (field, reason);
    match op {
        Op::Received(q)
        | Op::Sold(q)
        | Op::Returned(q)
        | Op::ReceivedAgainst { quantity: q, .. }
        | Op::UnsellableMoved { quantity: q, .. } => {
            positive("quantity", *q).map_err(at("quantity"))
        }
        Op::Expected {
            quantity,
            expected_at_ms,
            ..
        } => {
            positive("quantity", *quantity).map_err(at("quantity"))?;
            if *expected_at_ms <= 0 {
                return Err((
                    "expected_at_ms",
                    format!(
                        "expected_at_ms must be a time after the Unix epoch in ms, got {expected_at_ms}"
                    ),
                ));
            }
            Ok(())
        }
        Op::ExpectedCancelled { quantity, .. } => match quantity {
            Some(q) => positive("quantity", *q).map_err(at("quantity")),
            None => Ok(()),
        },
        Op::Adjusted(delta) => {
            // unsigned_abs: `abs` of i64::MIN overflows.
            if *delta == 0 || delta.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
                Err((
                    "delta",
                    format!("delta must be non-zero within ±{MAX_QUANTITY}, got {delta}"),
                ))
            } else {
                Ok(())
            }
        }
        Op::Counted { on_hand, expected } => {
            if !(0..=MAX_QUANTITY).contains(on_hand) {
                return Err((
                    "on_hand",
                    format!("on_hand must be 0..={MAX_QUANTITY}, got {on_hand}"),
                ));
            }
            match expected {
                Some(e) if e.unsigned_abs() > MAX_LEVEL.unsigned_abs() => Err((
                    "expected_on_hand",
                    format!("expected_on_hand {e} is out of range"),
                )),
                _ => Ok(()),
            }
        }
        Op::Transferred { to, quantity } => {
            positive("quantity", *quantity).map_err(at("quantity"))?;
            validate_location("to_location", to).map_err(at("to_location"))
        }
        Op::PolicySet {
            threshold,
            safety_stock,
            location_priority,
            backorder,
        } => {
            if threshold.is_none()
                && safety_stock.is_none()
                && location_priority.is_empty()
                && backorder.is_none()
            {
                return Err((
                    "type",
                    "policy_set sets none of low_stock_threshold, safety_stock, \
                     location_priority, backorder_policy"
                        .into(),
                ));
            }
            if backorder.is_some() && !location.is_empty() {
                return Err((
                    "backorder_policy",
                    "backorder_policy is SKU-wide: leave location empty".into(),
                ));
            }
            if !location_priority.is_empty() {
                let fault = at("location_priority");
                if !location.is_empty() {
                    return Err(fault(
                        "location_priority is SKU-wide: leave location empty".into(),
                    ));
                }
                let locations: Vec<&str> = location_priority.split(',').collect();
                if locations.len() > 32 {
                    return Err(fault(
                        "location_priority lists more than 32 locations".into(),
                    ));
                }
                for l in locations {
                    validate_location("location_priority", l).map_err(fault)?;
                    if l.contains(',') {
                        return Err(fault("location_priority entries cannot contain ','".into()));
                    }
                }
            }
            for (field, value) in [
                ("low_stock_threshold", threshold),
                ("safety_stock", safety_stock),
            ] {
                if let Some(v) = value {
                    if *v > MAX_QUANTITY {
                        return Err((
                            field,
                            format!("{field} must be at most {MAX_QUANTITY}, got {v}"),
                        ));
                    }
                }
            }
            Ok(())
        }
        Op::ChannelRules { .. } | Op::KitDefined { .. } => Ok(()),
        Op::KitBuildable { buildable, stamp } => {
            if !(0..=MAX_QUANTITY).contains(buildable) {
                return Err((
                    "buildable",
                    format!("buildable must be 0..={MAX_QUANTITY}, got {buildable}"),
                ));
            }
            if *stamp == 0 {
                return Err(("stamp", "stamp must be at least 1".into()));
            }
            Ok(())
        }
        Op::ChannelRecompute { rules_version, .. } => {
            if *rules_version == 0 {
                Err(("rules_version", "rules_version must be at least 1".into()))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::v1::{Adjusted, Counted, Received, Transferred};

    fn event(change: Change) -> Vec<u8> {
        StockEvent {
            meta: Some(EventMeta {
                event_id: "e1".into(),
                ..Default::default()
            }),
            sku: "A".into(),
            location: "wh".into(),
            change: Some(change),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_sale_names_a_location_or_a_channel() {
        use crate::v1::Sold;
        let sale = |location: &str, channel: &str| {
            let mut e = StockEvent::decode(&event(Change::Sold(Sold { quantity: 2 }))[..])
                .expect("decodes");
            e.location = location.into();
            e.channel = channel.into();
            e.encode_to_vec()
        };
        let fact = parse("stock.events.A", &sale("", "market")).expect("channel sale");
        assert_eq!(
            (fact.location.as_str(), fact.channel.as_str()),
            ("", "market")
        );
        let plain = parse("stock.events.A", &sale("wh", "")).expect("location sale");
        assert_ne!(
            fact.fingerprint(&fact.script_args()),
            plain.fingerprint(&plain.script_args())
        );
        assert_eq!(plain.fingerprint(&plain.script_args()), "sold|wh|2|||||");
        for (location, channel, field, category) in [
            ("wh", "market", "location", Category::InvalidLocation),
            ("", "a.b", "channel", Category::InvalidChannel),
            ("", "", "location", Category::InvalidLocation),
        ] {
            assert_eq!(
                fault(parse("stock.events.A", &sale(location, channel))),
                (field.to_owned(), category),
                "{location:?} {channel:?}"
            );
        }
        let mut received =
            StockEvent::decode(&event(Change::Received(Received { quantity: 1 }))[..])
                .expect("decodes");
        received.channel = "market".into();
        assert_eq!(
            fault(parse("stock.events.A", &received.encode_to_vec())),
            ("channel".to_owned(), Category::InvalidChannel)
        );
    }

    #[test]
    fn channel_rules_are_checked_field_by_field() {
        let rules = |rules: AvailabilityRules| {
            let mut e = StockEvent::decode(
                &event(Change::ChannelRules(ChannelRulesSet {
                    channel: "market".into(),
                    rules: Some(rules),
                }))[..],
            )
            .expect("decodes");
            e.location = String::new();
            e.encode_to_vec()
        };
        let ok = parse(
            "stock.events.A",
            &rules(AvailabilityRules {
                buffer: Some(3),
                ..Default::default()
            }),
        )
        .expect("valid");
        assert_eq!(ok.script_args()[1], "3\x1f\x1f\x1f\x1f");
        assert_eq!(
            fault(parse(
                "stock.events.A",
                &rules(AvailabilityRules {
                    percent: Some(120),
                    ..Default::default()
                })
            )),
            ("rules.percent".to_owned(), Category::InvalidChannel)
        );
    }

    #[test]
    fn a_backorder_policy_is_sku_wide_and_capped_goes_with_its_limit_only() {
        let set = |policy: i32, limit: Option<i64>, location: &str| {
            let mut e = StockEvent::decode(
                &event(Change::PolicySet(PolicySet {
                    backorder_policy: policy,
                    backorder_limit: limit,
                    ..PolicySet::default()
                }))[..],
            )
            .expect("decodes");
            e.location = location.into();
            e.encode_to_vec()
        };
        let capped = BackorderPolicy::Capped as i32;
        for (bytes, field, category) in [
            (
                set(capped, None, ""),
                "backorder_limit",
                Category::InvalidQuantity,
            ),
            (
                set(capped, Some(0), ""),
                "backorder_limit",
                Category::InvalidQuantity,
            ),
            (
                set(BackorderPolicy::Unlimited as i32, Some(3), ""),
                "backorder_limit",
                Category::InvalidQuantity,
            ),
            (set(9, None, ""), "backorder_policy", Category::UnknownEnum),
            (
                set(capped, Some(3), "wh"),
                "backorder_policy",
                Category::InvalidQuantity,
            ),
        ] {
            assert_eq!(
                fault(parse("stock.events.A", &bytes)),
                (field.to_owned(), category)
            );
        }
        let fact = parse("stock.events.A", &set(capped, Some(3), "")).expect("valid");
        assert_eq!(fact.script_args()[..2], ["c".to_owned(), "3".to_owned()]);
        let policy = fact.policy().expect("a policy");
        assert_eq!(
            (policy.backorder_policy, policy.backorder_limit),
            (capped, Some(3))
        );
        let none = parse(
            "stock.events.A",
            &set(BackorderPolicy::None as i32, None, ""),
        );
        assert_eq!(none.expect("valid").script_args()[0], "n");
    }

    fn fault(result: Result<Fact, InputError>) -> (String, Category) {
        match result {
            Err(e) => (e.field, e.category),
            Ok(fact) => panic!("refusal expected: {fact:?}"),
        }
    }

    /// A partition stream's subject reaches the parser with its partition taken out (the
    /// consume loop's `Delivery::subject`), so one form is checked: the SKU's own subject.
    #[test]
    fn facts_must_be_on_their_skus_subject() {
        let fact = event(Change::Received(Received { quantity: 1 }));
        assert!(parse("stock.events.A", &fact).is_ok());
        for subject in ["stock.events.B", "stock.events.2.A"] {
            assert_eq!(
                fault(parse(subject, &fact)).1,
                Category::SubjectMismatch,
                "{subject}"
            );
        }
    }

    #[test]
    fn unknown_reasons_and_same_location_transfers_have_their_own_categories() {
        let mut unknown =
            StockEvent::decode(&event(Change::Received(Received { quantity: 1 }))[..])
                .expect("decodes");
        unknown.meta.as_mut().expect("meta").reason = 99;
        assert_eq!(
            fault(parse("stock.events.A", &unknown.encode_to_vec())),
            ("reason".into(), Category::UnknownEnum)
        );
        let same = event(Change::Transferred(Transferred {
            to_location: "wh".into(),
            quantity: 1,
        }));
        assert_eq!(
            fault(parse("stock.events.A", &same)),
            ("to_location".into(), Category::SameLocation)
        );
    }

    #[test]
    fn extreme_integers_are_malformed_not_a_panic() {
        for (change, field) in [
            (Change::Adjusted(Adjusted { delta: i64::MIN }), "delta"),
            (
                Change::Counted(Counted {
                    on_hand: 1,
                    expected_on_hand: Some(i64::MIN),
                }),
                "expected_on_hand",
            ),
        ] {
            assert_eq!(
                fault(parse("stock.events.A", &event(change))),
                (field.into(), Category::InvalidQuantity)
            );
        }
    }

    #[test]
    fn every_fault_names_its_field_and_category() {
        let policy = |threshold, priority: &[&str], location: &str| {
            let mut e = StockEvent::decode(
                &event(Change::PolicySet(PolicySet {
                    low_stock_threshold: threshold,
                    safety_stock: None,
                    location_priority: priority.iter().map(|s| s.to_string()).collect(),
                    ..PolicySet::default()
                }))[..],
            )
            .expect("decodes");
            e.location = location.into();
            e.encode_to_vec()
        };
        let cases: [(Vec<u8>, &str, Category); 9] = [
            (b"\xff\xff".to_vec(), "body", Category::Decode),
            (
                StockEvent::default().encode_to_vec(),
                "type",
                Category::UnknownType,
            ),
            (
                event(Change::Received(Received { quantity: 0 })),
                "quantity",
                Category::InvalidQuantity,
            ),
            (
                event(Change::Counted(Counted {
                    on_hand: -1,
                    expected_on_hand: None,
                })),
                "on_hand",
                Category::InvalidQuantity,
            ),
            (
                event(Change::Transferred(Transferred {
                    to_location: String::new(),
                    quantity: 1,
                })),
                "to_location",
                Category::InvalidQuantity,
            ),
            (policy(None, &[], "wh"), "type", Category::InvalidQuantity),
            (
                policy(None, &["a"], "wh"),
                "location_priority",
                Category::InvalidQuantity,
            ),
            (
                policy(Some(MAX_QUANTITY + 1), &[], "wh"),
                "low_stock_threshold",
                Category::InvalidQuantity,
            ),
            (
                policy(Some(1), &[], "w\u{7}"),
                "location",
                Category::InvalidLocation,
            ),
        ];
        for (bytes, field, category) in cases {
            assert_eq!(
                fault(parse("stock.events.A", &bytes)),
                (field.to_owned(), category),
                "{field}"
            );
        }
        assert!(parse("stock.events.A", &policy(Some(3), &[], "")).is_ok());
    }
}
