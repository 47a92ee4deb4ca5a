//! Shopify: webhooks in (`X-Shopify-Hmac-Sha256`, topics `orders/create`, `orders/cancelled`,
//! `orders/fulfilled`, `refunds/create`), quantities out through the GraphQL Admin API's
//! `inventorySetQuantities` (compare-and-set on `changeFromQuantity`, an `@idempotent` key, up to
//! [`MAX_QUANTITIES`] per call, cost-based throttling), quantities read back with `inventoryItem
//! { inventoryLevel { quantities } }`.

use std::time::Duration;

use axum::http::HeaderMap;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_shared::settings::Secret;

use crate::{
    platform::{
        classify_status, header, transport_error, verify_base64_hmac, FactKind, InboundFact,
        ItemOutcome, Platform, PlatformError, Push, PushReport, Rejected,
    },
    shops::{Credentials, Item, PlatformKind, Shop},
};

/// Most quantities one `inventorySetQuantities` call takes (Shopify documents 250).
pub const MAX_QUANTITIES: usize = 250;

/// The mutation every push sends: one `available` quantity per item, compare-and-set, with the
/// call's idempotency key.
pub const SET_QUANTITIES: &str =
    "mutation SetAvailable($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { code field message }
  }
}";

/// The query that reads one item's `available` quantity at one location.
pub const READ_AVAILABLE: &str = "query ReadAvailable($item: ID!, $location: ID!) {
  inventoryItem(id: $item) {
    inventoryLevel(locationId: $location) {
      quantities(names: [\"available\"]) { name quantity }
    }
  }
}";

/// The webhook signature header.
pub const HEADER_HMAC: &str = "X-Shopify-Hmac-Sha256";
/// The webhook topic header.
pub const HEADER_TOPIC: &str = "X-Shopify-Topic";
/// The webhook delivery id header (the same on Shopify's retries of one delivery).
pub const HEADER_WEBHOOK_ID: &str = "X-Shopify-Webhook-Id";
/// The Admin API token header.
pub const HEADER_TOKEN: &str = "X-Shopify-Access-Token";

/// One Shopify shop.
#[derive(Debug)]
pub struct Shopify {
    shop: String,
    graphql_url: reqwest::Url,
    token: Secret,
    webhook_secret: Secret,
    client: reqwest::Client,
}

impl Shopify {
    /// The shop's client; `client` carries the timeouts.
    pub fn new(shop: &Shop, client: reqwest::Client) -> anyhow::Result<Self> {
        let Credentials::AccessToken(token) = &shop.credentials else {
            anyhow::bail!("shop {}: a Shopify shop needs an access token", shop.id);
        };
        let graphql_url = shop
            .base_url
            .join(&format!("admin/api/{}/graphql.json", shop.api_version))?;
        Ok(Self {
            shop: shop.id.clone(),
            graphql_url,
            token: token.clone(),
            webhook_secret: shop.webhook_secret.clone(),
            client,
        })
    }

    /// One GraphQL call: the `data`, the throttle status, or why not.
    async fn call(
        &self,
        query: &str,
        variables: Value,
    ) -> Result<(Value, Option<Duration>), PlatformError> {
        let response = self
            .client
            .post(self.graphql_url.clone())
            .header(HEADER_TOKEN, self.token.expose())
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(classify_status(status, response.headers()));
        }
        let body: GraphqlResponse = response.json().await.map_err(|e| {
            PlatformError::Unavailable(format!("unreadable answer: {}", e.without_url()))
        })?;
        let pause = body.extensions.as_ref().and_then(|e| e.cost.pause());
        if let Some(errors) = &body.errors {
            if errors.iter().any(|e| e.code() == Some("THROTTLED")) {
                return Err(PlatformError::Throttled {
                    retry_after: pause.unwrap_or(Duration::from_secs(1)),
                });
            }
            let first = errors
                .first()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            return Err(PlatformError::Refused(format!("GraphQL error: {first}")));
        }
        Ok((body.data.unwrap_or(Value::Null), pause))
    }
}

#[derive(Debug, Deserialize)]
struct GraphqlResponse {
    data: Option<Value>,
    errors: Option<Vec<GraphqlError>>,
    extensions: Option<Extensions>,
}

#[derive(Debug, Deserialize)]
struct GraphqlError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    extensions: Option<Value>,
}

impl GraphqlError {
    fn code(&self) -> Option<&str> {
        self.extensions.as_ref()?.get("code")?.as_str()
    }
}

#[derive(Debug, Deserialize)]
struct Extensions {
    cost: Cost,
}

/// `extensions.cost`: what a call cost and what is left of the shop's budget.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cost {
    #[serde(default)]
    requested_query_cost: f64,
    throttle_status: ThrottleStatus,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThrottleStatus {
    #[allow(dead_code)]
    maximum_available: f64,
    currently_available: f64,
    restore_rate: f64,
}

impl Cost {
    /// How long until the budget again covers a call like this one (none when it does now).
    fn pause(&self) -> Option<Duration> {
        let status = &self.throttle_status;
        let missing = self.requested_query_cost - status.currently_available;
        (missing > 0.0 && status.restore_rate > 0.0)
            .then(|| Duration::from_secs_f64((missing / status.restore_rate).min(60.0)))
    }
}

/// The fields of a webhook payload the connector reads.
#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    #[serde(default)]
    line_items: Vec<LineItem>,
    #[serde(default)]
    refunds: Vec<Refund>,
}

#[derive(Debug, Deserialize)]
struct LineItem {
    id: u64,
    #[serde(default)]
    sku: Option<String>,
    quantity: i64,
}

#[derive(Debug, Deserialize)]
struct Refund {
    id: u64,
    order_id: u64,
    #[serde(default)]
    refund_line_items: Vec<RefundLineItem>,
}

#[derive(Debug, Deserialize)]
struct RefundLineItem {
    id: u64,
    quantity: i64,
    #[serde(default)]
    restock_type: Option<String>,
    #[serde(default)]
    line_item: Option<LineItem>,
}

fn malformed(e: serde_json::Error) -> Rejected {
    Rejected::Malformed(e.to_string())
}

impl Shopify {
    fn sales(&self, order: &Order) -> Vec<InboundFact> {
        order
            .line_items
            .iter()
            .filter(|line| line.quantity > 0)
            .filter_map(|line| {
                let sku = line.sku.as_deref().filter(|s| !s.is_empty())?;
                Some(InboundFact {
                    event_id: format!("shopify:{}:{}:{}:sold", self.shop, order.id, line.id),
                    kind: FactKind::Sold,
                    sku: sku.to_owned(),
                    quantity: line.quantity,
                    reference: format!("shopify://{}/orders/{}", self.shop, order.id),
                })
            })
            .collect()
    }

    /// The restocked lines of a refund: a cancel with restock and a refund with restock both
    /// come as refund lines, and the same refund line has the same event id whichever webhook
    /// brings it (`orders/cancelled` carries the order's refunds, `refunds/create` the refund).
    fn returns(&self, refund: &Refund) -> Vec<InboundFact> {
        refund
            .refund_line_items
            .iter()
            .filter(|r| r.quantity > 0 && r.restock_type.as_deref() != Some("no_restock"))
            .filter_map(|r| {
                let sku = r
                    .line_item
                    .as_ref()?
                    .sku
                    .as_deref()
                    .filter(|s| !s.is_empty())?;
                Some(InboundFact {
                    event_id: format!(
                        "shopify:{}:{}:refund-line:{}:returned",
                        self.shop, refund.order_id, r.id
                    ),
                    kind: FactKind::Returned,
                    sku: sku.to_owned(),
                    quantity: r.quantity,
                    reference: format!(
                        "shopify://{}/orders/{}/refunds/{}",
                        self.shop, refund.order_id, refund.id
                    ),
                })
            })
            .collect()
    }
}

impl Platform for Shopify {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Shopify
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejected> {
        verify_base64_hmac(
            self.webhook_secret.expose().as_bytes(),
            body,
            header(headers, HEADER_HMAC),
        )
    }

    fn delivery_id(&self, headers: &HeaderMap) -> Option<String> {
        header(headers, HEADER_WEBHOOK_ID).map(str::to_owned)
    }

    fn translate(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<InboundFact>, Rejected> {
        let topic = header(headers, HEADER_TOPIC).unwrap_or_default();
        match topic {
            "orders/create" => {
                let order: Order = serde_json::from_slice(body).map_err(malformed)?;
                Ok(self.sales(&order))
            }
            "orders/cancelled" => {
                let order: Order = serde_json::from_slice(body).map_err(malformed)?;
                Ok(order.refunds.iter().flat_map(|r| self.returns(r)).collect())
            }
            "refunds/create" => {
                let refund: Refund = serde_json::from_slice(body).map_err(malformed)?;
                Ok(self.returns(&refund))
            }
            // A fulfilment ships what was already sold: the channel's quantity does not move.
            "orders/fulfilled" => Ok(Vec::new()),
            other => Err(Rejected::IgnoredTopic(other.to_owned())),
        }
    }

    fn max_batch(&self) -> usize {
        MAX_QUANTITIES
    }

    fn compares(&self) -> bool {
        true
    }

    fn push<'a>(
        &'a self,
        batch: &'a [Push],
        key: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<PushReport, PlatformError>> {
        Box::pin(async move {
            let variables = set_quantities_variables(batch, key, reference);
            let (data, pause) = self.call(SET_QUANTITIES, variables).await?;
            let errors: Vec<UserError> =
                serde_json::from_value(data["inventorySetQuantities"]["userErrors"].clone())
                    .unwrap_or_default();
            Ok(PushReport {
                outcomes: outcomes(batch.len(), &errors),
                pause,
            })
        })
    }

    fn read<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<i64, PlatformError>> {
        Box::pin(async move {
            let variables = json!({
                "item": item.inventory_item_id,
                "location": item.location_id,
            });
            let (data, _) = self.call(READ_AVAILABLE, variables).await?;
            data["inventoryItem"]["inventoryLevel"]["quantities"]
                .as_array()
                .and_then(|q| q.iter().find(|q| q["name"] == "available"))
                .and_then(|q| q["quantity"].as_i64())
                .ok_or_else(|| {
                    PlatformError::Refused(
                        "the item is not stocked at the location (no available quantity)".into(),
                    )
                })
        })
    }
}

/// The variables of [`SET_QUANTITIES`] for `batch`.
pub fn set_quantities_variables(batch: &[Push], key: &str, reference: &str) -> Value {
    let quantities: Vec<Value> = batch
        .iter()
        .map(|p| {
            json!({
                "inventoryItemId": p.item.inventory_item_id,
                "locationId": p.item.location_id,
                "quantity": p.quantity,
                "changeFromQuantity": p.expected,
            })
        })
        .collect();
    json!({
        "key": key,
        "input": {
            "name": "available",
            "reason": "correction",
            "referenceDocumentUri": reference,
            "quantities": quantities,
        }
    })
}

#[derive(Debug, Deserialize)]
struct UserError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    field: Option<Vec<String>>,
    #[serde(default)]
    message: String,
}

impl UserError {
    /// The index of the quantity it is about (`["input", "quantities", "<i>", …]`).
    fn index(&self) -> Option<usize> {
        let field = self.field.as_ref()?;
        let at = field.iter().position(|f| f == "quantities")?;
        field.get(at + 1)?.parse().ok()
    }
}

/// Per item: any user error makes the whole call a no-op (Shopify applies a mutation entirely or
/// not at all); the items it names are stale or refused, the others are pushed again.
fn outcomes(len: usize, errors: &[UserError]) -> Vec<ItemOutcome> {
    if errors.is_empty() {
        return vec![ItemOutcome::Set; len];
    }
    let mut outcomes = vec![ItemOutcome::NotApplied; len];
    for error in errors {
        let outcome = if error.code.as_deref() == Some("CHANGE_FROM_QUANTITY_STALE") {
            ItemOutcome::Stale
        } else {
            ItemOutcome::Refused(format!(
                "{}: {}",
                error.code.as_deref().unwrap_or("ERROR"),
                error.message
            ))
        };
        match error.index().filter(|i| *i < len) {
            Some(i) => outcomes[i] = outcome,
            // An error about the whole input: every item is refused with it.
            None => outcomes.iter_mut().for_each(|o| *o = outcome.clone()),
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shopify() -> Shopify {
        Shopify {
            shop: "acme".into(),
            graphql_url: reqwest::Url::parse("http://127.0.0.1:1/admin/api/2026-04/graphql.json")
                .expect("url"),
            token: Secret::new("t"),
            webhook_secret: Secret::new("s"),
            client: reqwest::Client::new(),
        }
    }

    fn headers(topic: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_TOPIC, topic.parse().expect("header"));
        headers
    }

    #[test]
    fn an_order_and_its_cancel_or_refund_become_channel_sales_and_returns_with_stable_ids() {
        let shop = shopify();
        let order = json!({"id": 820982911946154508u64, "line_items": [
            {"id": 466157049, "sku": "A1", "quantity": 2},
            {"id": 466157050, "sku": null, "quantity": 1}]});
        let facts = shop
            .translate(&headers("orders/create"), order.to_string().as_bytes())
            .expect("order");
        assert_eq!(facts.len(), 1, "a line without SKU is not stockflow's");
        assert_eq!(
            facts[0].event_id,
            "shopify:acme:820982911946154508:466157049:sold"
        );
        assert_eq!((facts[0].kind, facts[0].quantity), (FactKind::Sold, 2));

        let refund = json!({"id": 509562969, "order_id": 820982911946154508u64,
            "refund_line_items": [
                {"id": 104689539, "quantity": 1, "restock_type": "return",
                 "line_item": {"id": 466157049, "sku": "A1", "quantity": 2}},
                {"id": 104689540, "quantity": 1, "restock_type": "no_restock",
                 "line_item": {"id": 466157049, "sku": "A1", "quantity": 2}}]});
        let returned = shop
            .translate(&headers("refunds/create"), refund.to_string().as_bytes())
            .expect("refund");
        let cancelled = json!({"id": 820982911946154508u64, "line_items": [], "refunds": [refund]});
        let by_cancel = shop
            .translate(
                &headers("orders/cancelled"),
                cancelled.to_string().as_bytes(),
            )
            .expect("cancel");
        assert_eq!(
            returned, by_cancel,
            "one refund line, one id, whichever webhook brings it"
        );
        assert_eq!(returned.len(), 1, "no_restock gives nothing back");
        assert_eq!(returned[0].kind, FactKind::Returned);
        assert!(shop
            .translate(&headers("orders/fulfilled"), b"{}")
            .expect("ok")
            .is_empty());
        assert_eq!(
            shop.translate(&headers("products/update"), b"{}"),
            Err(Rejected::IgnoredTopic("products/update".into()))
        );
    }

    #[test]
    fn user_errors_map_to_items() {
        let errors: Vec<UserError> = serde_json::from_value(json!([
            {"code": "CHANGE_FROM_QUANTITY_STALE", "field": ["input", "quantities", "1", "changeFromQuantity"], "message": "stale"}
        ]))
        .expect("errors");
        assert_eq!(
            outcomes(3, &errors),
            vec![
                ItemOutcome::NotApplied,
                ItemOutcome::Stale,
                ItemOutcome::NotApplied
            ]
        );
        assert_eq!(outcomes(2, &[]), vec![ItemOutcome::Set, ItemOutcome::Set]);
    }

    #[test]
    fn the_cost_budget_sets_the_pause() {
        let cost: Cost = serde_json::from_value(json!({"requestedQueryCost": 10.0,
            "throttleStatus": {"maximumAvailable": 100.0, "currentlyAvailable": 4.0, "restoreRate": 50.0}}))
        .expect("cost");
        assert_eq!(cost.pause(), Some(Duration::from_secs_f64(6.0 / 50.0)));
    }
}
