//! The Redis key layout. Every key of one SKU carries the SKU's hash tag `{<sku-token>}`, so
//! each script touches a single slot and runs unchanged on Redis Cluster.

use stockflow_proto::subjects::encode_token;

/// Builds keys under one prefix (`STOCKFLOW_KEY_PREFIX`).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash of on_hand (`oh:<location>`) and reserved (`rs:<location>`) per location.
    pub fn stock(&self, sku: &str) -> String {
        format!("{}:{{{}}}:stock", self.prefix, encode_token(sku))
    }

    /// Hash of the SKU's policy: `thr`, `ss` (defaults), `thr:<location>`, `ss:<location>`.
    pub fn policy(&self, sku: &str) -> String {
        format!("{}:{{{}}}:policy", self.prefix, encode_token(sku))
    }

    /// Hash of the SKU's sales channels: `s:<channel>` the channel's rules as last applied,
    /// `o:<channel>` the SKU's override, `q:<channel>` / `v:<channel>` what the channel may sell
    /// and its version, `x:<channel>` set while an oversold alert stands, `r:<channel>:<location>`
    /// the channel's own reservations (see `lua/prelude.lua`).
    pub fn channels(&self, sku: &str) -> String {
        format!("{}:{{{}}}:ats", self.prefix, encode_token(sku))
    }

    /// Sorted set of the SKU's backordered order lines (their record keys) in order of
    /// placement; the scripts derive it from [`Self::stock`] (see `lua/prelude.lua`).
    pub fn backorders(&self, sku: &str) -> String {
        format!("{}:{{{}}}:boq", self.prefix, encode_token(sku))
    }

    /// Set of every location that has had stock recorded: what a channel may name.
    pub fn locations(&self) -> String {
        format!("{}:locations", self.prefix)
    }

    /// Reservation record of one order line, in the SKU's slot.
    pub fn order_line(&self, sku: &str, order_id: &str, line_id: &str) -> String {
        format!(
            "{}:{{{}}}:res:{}:{line_id}",
            self.prefix,
            encode_token(sku),
            encode_token(order_id)
        )
    }

    /// The order's own record, in the order's slot.
    pub fn order(&self, order_id: &str) -> String {
        format!("{}:{{o:{}}}:order", self.prefix, encode_token(order_id))
    }

    /// Schedule of checkout holds: a sorted set of order ids by due time (ms).
    pub fn holds_due(&self) -> String {
        format!("{}:{{holds}}:due", self.prefix)
    }

    /// Set of the kits that have (or had: members are checked against the kit's definition)
    /// this SKU as a component, in the component's slot.
    pub fn kits_of(&self, sku: &str) -> String {
        format!("{}:{{{}}}:kits", self.prefix, encode_token(sku))
    }

    /// Counter of a kit's buildable computations, in the kit's slot: each takes the next stamp
    /// before it reads the components.
    pub fn kit_stamp(&self, kit: &str) -> String {
        format!("{}:{{{}}}:kitgen", self.prefix, encode_token(kit))
    }

    /// Dedup record of one event of this SKU.
    pub fn event(&self, sku: &str, event_id: &str) -> String {
        format!("{}:{{{}}}:evt:{event_id}", self.prefix, encode_token(sku))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_of_a_sku_share_one_hash_tag() {
        let keys = Keys::new("sf");
        for sku in ["A1", "a.b{c}", "ünï"] {
            let tag = |key: &str| {
                let open = key.find('{').expect("has a tag");
                let close = key[open..].find('}').expect("closed") + open;
                key[open + 1..close].to_owned()
            };
            let stock = keys.stock(sku);
            assert_eq!(tag(&stock), tag(&keys.policy(sku)));
            assert_eq!(tag(&stock), tag(&keys.event(sku, "e-1")));
            assert_eq!(tag(&stock), tag(&keys.channels(sku)));
            assert!(!tag(&stock).is_empty());
        }
    }
}
