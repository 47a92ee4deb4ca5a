//! The webhook intake: `POST /webhooks/<platform>/<shop>`. The signature is checked over the raw
//! body (401 and a counter on a mismatch; the body is never logged), the webhook is translated
//! into channel sales and returns, and the answer is 200 once JetStream stored every one of them
//! (503 otherwise, and the platform retries); a line the contract refuses is skipped and counted. Their event ids derive from the platform's order,
//! line and refund ids, so a retried or re-sent webhook stores nothing twice.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use async_nats::jetstream;
use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use serde_json::json;

use crate::{
    facts::{self, PublishError},
    platform::{FactKind, Rejected},
    ShopHandle,
};

/// Every `outcome` label of `stockflow_connector_webhooks_total`.
pub const OUTCOMES: [&str; 7] = [
    "accepted",
    "missing_signature",
    "bad_signature",
    "ignored_topic",
    "malformed",
    "unmapped_line",
    "unavailable",
];

/// What the routes share.
#[derive(Debug, Clone)]
pub struct Intake {
    /// The running shops by id (`crate::live` adds and removes them as the configuration
    /// changes).
    pub shops: Shops,
    /// Where the facts go.
    pub js: jetstream::Context,
    /// Bound on storing one webhook's facts.
    pub timeout: Duration,
}

/// The running shops by id, as the intake sees them.
pub type Shops = Arc<RwLock<HashMap<String, Arc<ShopHandle>>>>;

/// The webhook routes.
pub fn router(intake: Intake) -> Router {
    Router::new()
        .route("/webhooks/{platform}/{shop}", post(receive))
        .with_state(intake)
}

fn count(shop: &str, outcome: &'static str) {
    metrics::counter!("stockflow_connector_webhooks_total", "shop" => shop.to_owned(), "outcome" => outcome)
        .increment(1);
}

type Answer = (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
);

fn answer(status: StatusCode, body: serde_json::Value) -> Answer {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn receive(
    State(intake): State<Intake>,
    Path((platform, shop_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let shop = intake
        .shops
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&shop_id)
        .filter(|s| s.shop.platform.as_str() == platform)
        .cloned();
    let Some(shop) = shop else {
        return answer(StatusCode::NOT_FOUND, json!({"error": "no such shop"}));
    };
    let platform = &shop.platform;
    if let Err(rejected) = platform.verify(&headers, &body) {
        count(&shop_id, rejected.reason());
        tracing::warn!(shop = %shop_id, reason = rejected.reason(), "webhook refused: signature");
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"error": rejected.to_string()}),
        );
    }
    let delivery = platform.delivery_id(&headers).unwrap_or_default();
    let facts = match platform.translate(&headers, &body) {
        Ok(facts) => facts,
        Err(rejected @ Rejected::IgnoredTopic(_)) => {
            count(&shop_id, rejected.reason());
            return answer(StatusCode::OK, json!({"ignored": rejected.to_string()}));
        }
        Err(rejected) => {
            count(&shop_id, rejected.reason());
            tracing::warn!(shop = %shop_id, %delivery, reason = %rejected, "webhook refused");
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"error": rejected.to_string()}),
            );
        }
    };
    let source = platform.kind().as_str();
    let mut stored = 0;
    let mut duplicates = 0;
    let mut invalid = 0;
    for fact in &facts {
        if shop.state.item(&fact.sku).is_none() {
            count(&shop_id, "unmapped_line");
            tracing::info!(shop = %shop_id, sku = %fact.sku, event_id = %fact.event_id, "order line of a SKU the shop does not map: not stockflow's");
            continue;
        }
        let value = facts::channel_fact(fact, &shop.shop.channel, source);
        match tokio::time::timeout(intake.timeout, facts::publish(&intake.js, value)).await {
            Ok(Ok(duplicate)) => {
                stored += 1;
                duplicates += usize::from(duplicate);
                if !duplicate {
                    // The platform moved its own quantity for this line already.
                    let delta = match fact.kind {
                        FactKind::Sold => -fact.quantity,
                        FactKind::Returned => fact.quantity,
                    };
                    shop.state.platform_moved(&fact.sku, delta);
                }
            }
            Ok(Err(PublishError::Invalid(reason))) => {
                // Skipped like an unmapped line: refusing the webhook would leave the lines
                // after it unstored, and the platform would retry it until it drops the
                // subscription.
                count(&shop_id, "malformed");
                invalid += 1;
                tracing::warn!(shop = %shop_id, sku = %fact.sku, event_id = %fact.event_id, %reason, "order line refused by the contract: skipped");
            }
            Ok(Err(e @ PublishError::Unavailable(_))) => {
                count(&shop_id, "unavailable");
                tracing::warn!(shop = %shop_id, error = %e, "webhook not stored; the platform will retry");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "not stored, retry"}),
                );
            }
            Err(_) => {
                count(&shop_id, "unavailable");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "not stored in time, retry"}),
                );
            }
        }
    }
    count(&shop_id, "accepted");
    tracing::debug!(shop = %shop_id, %delivery, stored, duplicates, invalid, "webhook accepted");
    answer(
        StatusCode::OK,
        json!({"stored": stored, "duplicates": duplicates, "invalid": invalid}),
    )
}
