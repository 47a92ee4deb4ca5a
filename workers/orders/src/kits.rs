//! Order lines of kits: a line whose SKU is a kit is reserved as its components. Placement
//! expands it into one line per component (`<line_id>/<n>`, n the component's 1-based position,
//! components sorted by SKU; quantity × units per kit), and the saga reserves those like any
//! lines — all or nothing, compensated across slots. Cancel, expiry and fulfilment then act on
//! the component lines; the decision's allocations name the kit and its line.

use std::collections::BTreeMap;

use stockflow_proto::{
    input::{fact::decode_kit, Category},
    validate::MAX_LOCATION_BYTES,
};
use stockflow_shared::consume::HandleError;

use crate::{
    command::{decode_lines, Line, MAX_LINE_QUANTITY},
    OrderHandler,
};

/// The kit line each component line was expanded from: component line id → (kit SKU, the
/// order's own line id).
pub type KitLines = BTreeMap<String, (String, String)>;

/// The id of component `index` (0-based) of kit line `line_id`: `<line_id>/<index + 1>`.
pub fn component_line_id(line_id: &str, index: usize) -> String {
    format!("{line_id}/{}", index + 1)
}

impl OrderHandler {
    /// The lines to reserve for `lines`: each kit line replaced by its component lines. A
    /// redelivery takes a kit line's components from the order's record, as the first delivery
    /// expanded them, even if the kit was redefined since.
    pub(crate) async fn expand_kits(
        &self,
        order_id: &str,
        lines: &[Line],
    ) -> Result<(Vec<Line>, KitLines), HandleError> {
        // The order's record and every line's definition, read concurrently: one round trip
        // on the multiplexed connection (on Redis Cluster, each to its own node).
        let record = async {
            let mut redis = self.redis.clone();
            redis::cmd("HGET")
                .arg(self.keys.order(order_id))
                .arg("lines")
                .query_async::<Option<String>>(&mut redis)
                .await
        };
        let definitions = futures::future::try_join_all(lines.iter().map(|line| {
            let mut redis = self.redis.clone();
            let key = self.keys.policy(&line.sku);
            async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("kit")
                    .query_async::<Option<String>>(&mut redis)
                    .await
            }
        }));
        let (recorded, definitions) = futures::future::try_join(record, definitions)
            .await
            .map_err(HandleError::redis)?;
        let recorded = recorded.map(|text| decode_lines(&text)).unwrap_or_default();
        let refuse = |reason: String| {
            HandleError::malformed("order_placed", Category::InvalidLines.as_str(), reason)
        };
        let mut expanded = Vec::with_capacity(lines.len());
        let mut kits = KitLines::new();
        for (line, definition) in lines.iter().zip(definitions) {
            let prefix = format!("{}/", line.line_id);
            let earlier: Vec<&Line> = if recorded.iter().any(|r| r.line_id == line.line_id) {
                Vec::new()
            } else {
                recorded
                    .iter()
                    .filter(|r| r.line_id.starts_with(&prefix))
                    .collect()
            };
            if !earlier.is_empty() {
                for component in earlier {
                    kits.insert(
                        component.line_id.clone(),
                        (line.sku.clone(), line.line_id.clone()),
                    );
                    expanded.push(component.clone());
                }
                continue;
            }
            let Some(definition) = definition else {
                expanded.push(line.clone());
                continue;
            };
            let components = decode_kit(&definition).ok_or_else(|| HandleError::Unexpected {
                reason: format!("kit definition of {:?} is unreadable", line.sku),
            })?;
            for (index, (component, per_kit)) in components.iter().enumerate() {
                let line_id = component_line_id(&line.line_id, index);
                if line_id.len() > MAX_LOCATION_BYTES {
                    return Err(refuse(format!(
                        "line {:?} is kit {:?}: its component lines `{line_id}` need a line_id \
                         of at most {} bytes",
                        line.line_id,
                        line.sku,
                        MAX_LOCATION_BYTES - 3
                    )));
                }
                let quantity = line.quantity * per_kit;
                if quantity > MAX_LINE_QUANTITY {
                    return Err(refuse(format!(
                        "line {:?}: {} kits of {:?} need {quantity} units of {component:?}, \
                         more than {MAX_LINE_QUANTITY} in one line",
                        line.line_id, line.quantity, line.sku
                    )));
                }
                kits.insert(line_id.clone(), (line.sku.clone(), line.line_id.clone()));
                expanded.push(Line {
                    line_id,
                    sku: component.clone(),
                    quantity,
                    location: line.location.clone(),
                });
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for line in &expanded {
            if !ids.insert(line.line_id.as_str()) {
                return Err(refuse(format!(
                    "line_id {:?} is also the id of a kit line's component (`<line_id>/<n>`): \
                     rename the line",
                    line.line_id
                )));
            }
        }
        Ok((expanded, kits))
    }
}
