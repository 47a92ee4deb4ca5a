//! WooCommerce: webhooks in (`X-WC-Webhook-Signature`, topics `order.created` and
//! `order.updated`), quantities out through the REST API v3 batch endpoints
//! (`POST /wp-json/wc/v3/products/batch`, `…/products/<id>/variations/batch`, `stock_quantity`
//! with `manage_stock: true`), basic auth with the consumer key and secret. WooCommerce has no
//! compare-and-set: the newest quantity is set as it is.

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

/// Most objects one batch request takes (WooCommerce documents 100).
pub const MAX_BATCH: usize = 100;

/// The webhook signature header.
pub const HEADER_SIGNATURE: &str = "X-WC-Webhook-Signature";
/// The webhook topic header.
pub const HEADER_TOPIC: &str = "X-WC-Webhook-Topic";
/// The webhook delivery id header.
pub const HEADER_DELIVERY_ID: &str = "X-WC-Webhook-Delivery-ID";

/// Order statuses in which WooCommerce has taken the units out of stock.
const SOLD_STATUSES: [&str; 3] = ["processing", "on-hold", "completed"];
/// Order statuses in which WooCommerce has put them back.
const RETURNED_STATUSES: [&str; 2] = ["cancelled", "refunded"];

/// One WooCommerce shop.
#[derive(Debug)]
pub struct WooCommerce {
    shop: String,
    api: reqwest::Url,
    key: Secret,
    secret: Secret,
    webhook_secret: Secret,
    client: reqwest::Client,
}

impl WooCommerce {
    /// The shop's client; `client` carries the timeouts.
    pub fn new(shop: &Shop, client: reqwest::Client) -> anyhow::Result<Self> {
        let Credentials::ConsumerKey { key, secret } = &shop.credentials else {
            anyhow::bail!(
                "shop {}: a WooCommerce shop needs a consumer key and secret",
                shop.id
            );
        };
        Ok(Self {
            shop: shop.id.clone(),
            api: shop.base_url.join("wp-json/wc/v3/")?,
            key: key.clone(),
            secret: secret.clone(),
            webhook_secret: shop.webhook_secret.clone(),
            client,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, PlatformError> {
        let response = request
            .basic_auth(self.key.expose(), Some(self.secret.expose()))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(classify_status(status, response.headers()));
        }
        response.json().await.map_err(|e| {
            PlatformError::Unavailable(format!("unreadable answer: {}", e.without_url()))
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, PlatformError> {
        self.api
            .join(path)
            .map_err(|e| PlatformError::Refused(format!("bad path {path}: {e}")))
    }

    /// One batch request for `items` (all products, or all variations of one parent).
    async fn batch(
        &self,
        path: &str,
        updates: Vec<Value>,
    ) -> Result<Vec<ItemOutcome>, PlatformError> {
        let count = updates.len();
        let answer = self
            .send(
                self.client
                    .post(self.url(path)?)
                    .json(&json!({ "update": updates })),
            )
            .await?;
        let results = answer["update"].as_array().cloned().unwrap_or_default();
        Ok((0..count)
            .map(|i| match results.get(i) {
                Some(result) if result.get("error").is_some() => ItemOutcome::Refused(format!(
                    "{}: {}",
                    result["error"]["code"].as_str().unwrap_or("error"),
                    result["error"]["message"].as_str().unwrap_or_default()
                )),
                Some(_) => ItemOutcome::Set,
                None => ItemOutcome::NotApplied,
            })
            .collect())
    }
}

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    line_items: Vec<LineItem>,
}

#[derive(Debug, Deserialize)]
struct LineItem {
    id: u64,
    #[serde(default)]
    sku: String,
    quantity: i64,
}

impl Platform for WooCommerce {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Woocommerce
    }

    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejected> {
        verify_base64_hmac(
            self.webhook_secret.expose().as_bytes(),
            body,
            header(headers, HEADER_SIGNATURE),
        )
    }

    fn delivery_id(&self, headers: &HeaderMap) -> Option<String> {
        header(headers, HEADER_DELIVERY_ID).map(str::to_owned)
    }

    /// A paid order (processing, on-hold, completed) is a sale of each line; a cancelled or
    /// refunded one is a sale **and** a return of each line, with the same sale ids: if the sale
    /// was applied before, only the return changes anything; if the order never took stock
    /// (cancelled while pending), the two cancel out.
    fn translate(&self, headers: &HeaderMap, body: &[u8]) -> Result<Vec<InboundFact>, Rejected> {
        let topic = header(headers, HEADER_TOPIC).unwrap_or_default();
        if !matches!(topic, "order.created" | "order.updated") {
            return Err(Rejected::IgnoredTopic(topic.to_owned()));
        }
        let order: Order =
            serde_json::from_slice(body).map_err(|e| Rejected::Malformed(e.to_string()))?;
        let sold = SOLD_STATUSES.contains(&order.status.as_str());
        let returned = RETURNED_STATUSES.contains(&order.status.as_str());
        let mut facts = Vec::new();
        for line in order
            .line_items
            .iter()
            .filter(|l| l.quantity > 0 && !l.sku.is_empty())
        {
            let fact = |kind: FactKind| InboundFact {
                event_id: format!(
                    "woocommerce:{}:{}:{}:{}",
                    self.shop,
                    order.id,
                    line.id,
                    kind.as_str()
                ),
                kind,
                sku: line.sku.clone(),
                quantity: line.quantity,
                reference: format!("woocommerce://{}/orders/{}", self.shop, order.id),
            };
            if sold || returned {
                facts.push(fact(FactKind::Sold));
            }
            if returned {
                facts.push(fact(FactKind::Returned));
            }
        }
        Ok(facts)
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn compares(&self) -> bool {
        false
    }

    fn push<'a>(
        &'a self,
        batch: &'a [Push],
        _key: &'a str,
        _reference: &'a str,
    ) -> BoxFuture<'a, Result<PushReport, PlatformError>> {
        Box::pin(async move {
            // Products in one request, each parent's variations in one more.
            let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
            for (i, push) in batch.iter().enumerate() {
                let path = match push.item.variation_id {
                    Some(_) => format!(
                        "products/{}/variations/batch",
                        push.item.product_id.unwrap_or_default()
                    ),
                    None => "products/batch".to_owned(),
                };
                match groups.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((path, vec![i])),
                }
            }
            let mut outcomes = vec![ItemOutcome::NotApplied; batch.len()];
            for (path, members) in groups {
                let updates = members
                    .iter()
                    .map(|&i| {
                        let item = &batch[i].item;
                        json!({
                            "id": item.variation_id.or(item.product_id),
                            "stock_quantity": batch[i].quantity,
                            "manage_stock": true,
                        })
                    })
                    .collect();
                let results = self.batch(&path, updates).await?;
                for (i, outcome) in members.into_iter().zip(results) {
                    outcomes[i] = outcome;
                }
            }
            Ok(PushReport {
                outcomes,
                pause: None,
            })
        })
    }

    fn read<'a>(&'a self, item: &'a Item) -> BoxFuture<'a, Result<i64, PlatformError>> {
        Box::pin(async move {
            let product = item.product_id.unwrap_or_default();
            let path = match item.variation_id {
                Some(variation) => format!("products/{product}/variations/{variation}"),
                None => format!("products/{product}"),
            };
            let answer = self.send(self.client.get(self.url(&path)?)).await?;
            Ok(answer["stock_quantity"].as_i64().unwrap_or(0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_order_is_a_sale_and_a_return_with_the_sales_id() {
        let woo = WooCommerce {
            shop: "corner".into(),
            api: reqwest::Url::parse("http://127.0.0.1:1/wp-json/wc/v3/").expect("url"),
            key: Secret::new("ck"),
            secret: Secret::new("cs"),
            webhook_secret: Secret::new("s"),
            client: reqwest::Client::new(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_TOPIC, "order.updated".parse().expect("header"));
        let order = |status: &str| {
            json!({"id": 727, "status": status, "line_items": [{"id": 315, "sku": "A1", "quantity": 3, "product_id": 93}]})
                .to_string()
        };
        let paid = woo
            .translate(&headers, order("processing").as_bytes())
            .expect("paid");
        assert_eq!(paid.len(), 1);
        assert_eq!(paid[0].event_id, "woocommerce:corner:727:315:sold");
        let cancelled = woo
            .translate(&headers, order("cancelled").as_bytes())
            .expect("cancelled");
        assert_eq!(cancelled[0], paid[0]);
        assert_eq!(cancelled[1].event_id, "woocommerce:corner:727:315:returned");
        assert!(woo
            .translate(&headers, order("pending").as_bytes())
            .expect("pending")
            .is_empty());
    }
}
