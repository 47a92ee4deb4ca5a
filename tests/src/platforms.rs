//! Local servers that play a platform's side as its documentation describes it, for the
//! connector's tests: a Shopify shop (GraphQL Admin API `inventorySetQuantities` with
//! compare-and-set, `@idempotent` keys and a cost budget that throttles; the `inventoryItem` read)
//! and a WooCommerce shop (REST v3 product batch endpoint with basic auth). Both can go down and
//! come back, and count what they were asked; the Shopify one can also hold its pushes (a slow
//! call in flight) until released.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
    Router,
};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{json, Value};

/// Base64 HMAC-SHA256 of `body` (what Shopify and WooCommerce put in their signature headers).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

type Answer = (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
);

fn answer(status: StatusCode, body: Value) -> Answer {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake platform");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    addr
}

/// One `inventorySetQuantities` call the fake applied: (inventory item, quantity) per item.
#[derive(Debug, Clone)]
pub struct AppliedPush {
    /// The items and the quantities set.
    pub items: Vec<(String, i64)>,
    /// The idempotency key.
    pub key: String,
    /// The reference document URI.
    pub reference: String,
    /// When the fake applied it (the moment the shop holds the new quantities).
    pub at: Instant,
}

/// The fake Shopify shop's state.
#[derive(Debug)]
pub struct ShopifyState {
    /// `available` per (inventory item GID, location GID).
    pub quantities: HashMap<(String, String), i64>,
    /// Applied calls, in order.
    pub pushes: Vec<AppliedPush>,
    /// Answers given per idempotency key (a repeat gets the first answer, applied once).
    answers: HashMap<String, Value>,
    /// `inventoryItem` reads answered.
    pub reads: u64,
    /// Calls answered `THROTTLED`.
    pub throttled: u64,
    /// Calls answered 429.
    pub too_many: u64,
    /// Quantities refused as stale.
    pub stale: u64,
    /// Calls while down.
    pub refused_while_down: u64,
    /// Whether it answers 503 to everything.
    pub down: bool,
    /// Answer the next this many calls with HTTP 429.
    pub answer_429: u64,
    /// `inventorySetQuantities` calls that waited for [`FakeShopify::hold`] to be lifted.
    pub held: u64,
    bucket: f64,
    refilled: Instant,
    /// Bucket size, points.
    pub maximum: f64,
    /// Points restored per second.
    pub restore_rate: f64,
    /// What one call costs.
    pub cost: f64,
}

/// A fake Shopify shop on a local port.
#[derive(Debug, Clone)]
pub struct FakeShopify {
    /// `http://127.0.0.1:<port>/`.
    pub url: String,
    /// The access token it accepts.
    pub token: String,
    state: Arc<Mutex<ShopifyState>>,
    /// Whether pushes wait before they are answered (see [`FakeShopify::hold`]).
    hold: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FakeShopify {
    /// A shop with a cost budget of `maximum` points restored at `restore_rate` per second,
    /// each call costing `cost`, holding `quantities` (item, location, available).
    pub async fn start(
        token: &str,
        maximum: f64,
        restore_rate: f64,
        cost: f64,
        quantities: &[(&str, &str, i64)],
    ) -> Self {
        let state = Arc::new(Mutex::new(ShopifyState {
            quantities: quantities
                .iter()
                .map(|(i, l, q)| (((*i).to_owned(), (*l).to_owned()), *q))
                .collect(),
            pushes: Vec::new(),
            answers: HashMap::new(),
            reads: 0,
            throttled: 0,
            too_many: 0,
            stale: 0,
            refused_while_down: 0,
            down: false,
            answer_429: 0,
            held: 0,
            bucket: maximum,
            refilled: Instant::now(),
            maximum,
            restore_rate,
            cost,
        }));
        let fake = Self {
            url: String::new(),
            token: token.to_owned(),
            state,
            hold: Arc::new(tokio::sync::watch::Sender::new(false)),
        };
        let app = Router::new()
            .route("/admin/api/{version}/graphql.json", post(graphql))
            .with_state(fake.clone());
        let addr = serve(app).await;
        Self {
            url: format!("http://{addr}/"),
            ..fake
        }
    }

    /// The state, to read or change (a merchant's edit, an outage).
    pub fn state(&self) -> MutexGuard<'_, ShopifyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `available` of (item, location).
    pub fn quantity(&self, item: &str, location: &str) -> Option<i64> {
        self.state()
            .quantities
            .get(&(item.to_owned(), location.to_owned()))
            .copied()
    }

    /// While `on`, every `inventorySetQuantities` call waits (counted in `held`) before it is
    /// looked at: a call in flight for as long as the test needs.
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// A new cost budget of `maximum` points restored at `restore_rate` per second, with
    /// `available` points in the bucket now (`maximum`: a shop whose app has been idle long
    /// enough; 0: one whose budget a sustained load has spent).
    pub fn set_budget(&self, maximum: f64, restore_rate: f64, available: f64) {
        let mut state = self.state();
        state.maximum = maximum;
        state.restore_rate = restore_rate;
        state.bucket = available.clamp(0.0, maximum);
        state.refilled = Instant::now();
    }

    /// Sets (item, location) as a merchant editing it in the Shopify admin (or an order) would.
    pub fn edit(&self, item: &str, location: &str, available: i64) {
        self.state()
            .quantities
            .insert((item.to_owned(), location.to_owned()), available);
    }
}

fn body_has(body: &[u8], needle: &str) -> bool {
    body.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn throttle_status(state: &ShopifyState) -> Value {
    json!({"requestedQueryCost": state.cost, "actualQueryCost": state.cost,
        "throttleStatus": {"maximumAvailable": state.maximum,
            "currentlyAvailable": state.bucket.floor(), "restoreRate": state.restore_rate}})
}

async fn graphql(
    State(fake): State<FakeShopify>,
    Path(_version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let mut hold = fake.hold.subscribe();
    if *hold.borrow_and_update() && body_has(&body, "inventorySetQuantities") {
        fake.state().held += 1;
        // The sender lives as long as `fake`: the wait ends when the hold is lifted.
        let _ = hold.wait_for(|on| !*on).await;
    }
    let mut state = fake.state();
    if state.down {
        state.refused_while_down += 1;
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"errors": "unavailable"}),
        );
    }
    if headers
        .get("X-Shopify-Access-Token")
        .and_then(|v| v.to_str().ok())
        != Some(fake.token.as_str())
    {
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
        );
    }
    if state.answer_429 > 0 {
        state.answer_429 -= 1;
        state.too_many += 1;
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"errors": "Throttled"}),
        );
    }
    let now = Instant::now();
    let elapsed = now.duration_since(state.refilled).as_secs_f64();
    state.bucket = (state.bucket + elapsed * state.restore_rate).min(state.maximum);
    state.refilled = now;
    if state.bucket < state.cost {
        state.throttled += 1;
        let cost = throttle_status(&state);
        return answer(
            StatusCode::OK,
            json!({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED",
                "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": cost}}),
        );
    }
    state.bucket -= state.cost;
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, json!({"errors": "not JSON"}));
    };
    let query = request["query"].as_str().unwrap_or_default();
    let variables = &request["variables"];
    let data = if query.contains("inventorySetQuantities") {
        match set_quantities(&mut state, query, variables) {
            Ok(data) => data,
            Err(message) => {
                return answer(StatusCode::OK, json!({"errors": [{"message": message}]}))
            }
        }
    } else if query.contains("inventoryItem(") {
        state.reads += 1;
        let key = (
            variables["item"].as_str().unwrap_or_default().to_owned(),
            variables["location"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        match state.quantities.get(&key) {
            Some(q) => json!({"inventoryItem": {"inventoryLevel": {"quantities": [
                {"name": "available", "quantity": q}]}}}),
            None => json!({"inventoryItem": {"inventoryLevel": null}}),
        }
    } else {
        return answer(
            StatusCode::OK,
            json!({"errors": [{"message": "unknown operation"}]}),
        );
    };
    let cost = throttle_status(&state);
    answer(
        StatusCode::OK,
        json!({"data": data, "extensions": {"cost": cost}}),
    )
}

/// `inventorySetQuantities` as documented for 2026-04: the idempotency key is required, every
/// quantity carries `changeFromQuantity`, at most 250 quantities, and the mutation applies
/// entirely or not at all.
fn set_quantities(
    state: &mut ShopifyState,
    query: &str,
    variables: &Value,
) -> Result<Value, String> {
    if !query.contains("@idempotent(key: $key)") {
        return Err("inventorySetQuantities requires the @idempotent directive".into());
    }
    let key = variables["key"].as_str().unwrap_or_default().to_owned();
    if key.is_empty() {
        return Err("the idempotency key is empty".into());
    }
    if let Some(previous) = state.answers.get(&key) {
        return Ok(previous.clone());
    }
    let input = &variables["input"];
    if input["name"] != "available" || input["reason"].as_str().is_none_or(str::is_empty) {
        return Err("input.name must be available and input.reason set".into());
    }
    let reference = input["referenceDocumentUri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let quantities = input["quantities"].as_array().cloned().unwrap_or_default();
    if quantities.is_empty() || quantities.len() > 250 {
        return Err(format!(
            "{} quantities: 1 to 250 per call",
            quantities.len()
        ));
    }
    let mut errors = Vec::new();
    let mut applied = Vec::new();
    for (i, q) in quantities.iter().enumerate() {
        let item = q["inventoryItemId"].as_str().unwrap_or_default().to_owned();
        let location = q["locationId"].as_str().unwrap_or_default().to_owned();
        let Some(change_from) = q.get("changeFromQuantity") else {
            return Err(format!("quantities[{i}].changeFromQuantity is required"));
        };
        let current = state
            .quantities
            .get(&(item.clone(), location.clone()))
            .copied();
        match current {
            None => errors.push(json!({"code": "ITEM_NOT_STOCKED_AT_LOCATION",
                "field": ["input", "quantities", i.to_string(), "locationId"],
                "message": "The specified inventory item is not stocked at the location."})),
            Some(current) if !change_from.is_null() && change_from.as_i64() != Some(current) => {
                state.stale += 1;
                errors.push(json!({"code": "CHANGE_FROM_QUANTITY_STALE",
                    "field": ["input", "quantities", i.to_string(), "changeFromQuantity"],
                    "message": "The specified compare quantity does not match the current quantity."}));
            }
            Some(_) => applied.push((item, location, q["quantity"].as_i64().unwrap_or_default())),
        }
    }
    let data = if errors.is_empty() {
        for (item, location, quantity) in &applied {
            state
                .quantities
                .insert((item.clone(), location.clone()), *quantity);
        }
        state.pushes.push(AppliedPush {
            items: applied.into_iter().map(|(i, _, q)| (i, q)).collect(),
            key: key.clone(),
            reference,
            at: Instant::now(),
        });
        json!({"inventorySetQuantities": {"inventoryAdjustmentGroup": {"id": format!("gid://shopify/InventoryAdjustmentGroup/{}", state.pushes.len())}, "userErrors": []}})
    } else {
        json!({"inventorySetQuantities": {"inventoryAdjustmentGroup": null, "userErrors": errors}})
    };
    state.answers.insert(key, data.clone());
    Ok(data)
}

/// The fake WooCommerce shop's state.
#[derive(Debug, Default)]
pub struct WooState {
    /// `stock_quantity` per product (or variation) id.
    pub stock: HashMap<u64, i64>,
    /// Batch requests applied, with the ids updated.
    pub batches: Vec<Vec<(u64, i64)>>,
    /// Requests refused for their credentials.
    pub unauthorized: u64,
    /// Whether it answers 503.
    pub down: bool,
}

/// A fake WooCommerce shop on a local port.
#[derive(Debug, Clone)]
pub struct FakeWoo {
    /// `http://127.0.0.1:<port>/`.
    pub url: String,
    basic: String,
    state: Arc<Mutex<WooState>>,
}

impl FakeWoo {
    /// A shop accepting consumer key `key` and secret `secret`, holding `stock`.
    pub async fn start(key: &str, secret: &str, stock: &[(u64, i64)]) -> Self {
        let fake = Self {
            url: String::new(),
            basic: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
            ),
            state: Arc::new(Mutex::new(WooState {
                stock: stock.iter().copied().collect(),
                ..WooState::default()
            })),
        };
        let app = Router::new()
            .route("/wp-json/wc/v3/products/batch", post(woo_batch))
            .route("/wp-json/wc/v3/products/{id}", get(woo_product))
            .with_state(fake.clone());
        let addr = serve(app).await;
        Self {
            url: format!("http://{addr}/"),
            ..fake
        }
    }

    /// The state.
    pub fn state(&self) -> MutexGuard<'_, WooState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `stock_quantity` of product `id`.
    pub fn stock(&self, id: u64) -> Option<i64> {
        self.state().stock.get(&id).copied()
    }

    fn check(&self, headers: &HeaderMap) -> Result<MutexGuard<'_, WooState>, Answer> {
        let mut state = self.state();
        if state.down {
            return Err(answer(StatusCode::SERVICE_UNAVAILABLE, json!({})));
        }
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(self.basic.as_str()) {
            state.unauthorized += 1;
            return Err(answer(
                StatusCode::UNAUTHORIZED,
                json!({"code": "woocommerce_rest_cannot_view", "message": "Sorry, you cannot list resources.", "data": {"status": 401}}),
            ));
        }
        Ok(state)
    }
}

async fn woo_batch(State(fake): State<FakeWoo>, headers: HeaderMap, body: Bytes) -> Answer {
    let mut state = match fake.check(&headers) {
        Ok(state) => state,
        Err(refused) => return refused,
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"code": "rest_invalid_json"}),
        );
    };
    let updates = request["update"].as_array().cloned().unwrap_or_default();
    if updates.len() > 100 {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"code": "woocommerce_rest_request_entity_too_large"}),
        );
    }
    let mut results = Vec::new();
    let mut applied = Vec::new();
    for update in updates {
        let id = update["id"].as_u64().unwrap_or_default();
        match (state.stock.contains_key(&id), update["stock_quantity"].as_i64(), update["manage_stock"].as_bool()) {
            (true, Some(quantity), Some(true)) => {
                state.stock.insert(id, quantity);
                applied.push((id, quantity));
                results.push(json!({"id": id, "stock_quantity": quantity, "manage_stock": true}));
            }
            (false, _, _) => results.push(json!({"id": id, "error": {"code": "woocommerce_rest_product_invalid_id", "message": "Invalid ID.", "data": {"status": 400}}})),
            _ => results.push(json!({"id": id, "error": {"code": "rest_invalid_param", "message": "stock_quantity and manage_stock are required", "data": {"status": 400}}})),
        }
    }
    state.batches.push(applied);
    answer(StatusCode::OK, json!({"update": results}))
}

async fn woo_product(
    State(fake): State<FakeWoo>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Answer {
    let state = match fake.check(&headers) {
        Ok(state) => state,
        Err(refused) => return refused,
    };
    match state.stock.get(&id) {
        Some(q) => answer(
            StatusCode::OK,
            json!({"id": id, "manage_stock": true, "stock_quantity": q}),
        ),
        None => answer(
            StatusCode::NOT_FOUND,
            json!({"code": "woocommerce_rest_product_invalid_id"}),
        ),
    }
}
