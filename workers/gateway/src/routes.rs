//! The router and its handlers: ingest, order decisions, queries.

use std::time::{Duration, Instant};

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use axum::{
    body::Bytes,
    extract::{
        rejection::{BytesRejection, QueryRejection},
        MatchedPath, Path, Query, Request, State,
    },
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put, MethodRouter},
    Json, Router,
};
use futures::StreamExt as _;
use order_worker::{command::Command, read_order, Decision, LineState, ReadError, StoredOrder};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use stockflow_proto::{
    subjects,
    v1::{order_result, Allocation, OrderResult, Shortfall},
};
use stockflow_shared::{
    levels::{read_levels, LocationLevels},
    validate::{validate_location, validate_sku, MAX_EVENT_ID_BYTES},
};

use crate::{
    auth::{Authorized, Read, Scope, Write},
    error::{self, ApiError},
    input::{self, OrderAction, Outgoing},
    publish::{publish, publish_all, PublishError, Stored},
    AppState,
};

/// The routes the API serves, as (method, path template) — the OpenAPI document must list
/// exactly these (checked by a test).
pub(crate) fn api_routes() -> (Router<AppState>, Vec<(&'static str, &'static str)>) {
    let table: Vec<(&'static str, &'static str, MethodRouter<AppState>)> = vec![
        ("post", "/v1/stock/events", post(post_stock_events)),
        ("get", "/v1/stock/{sku}", get(get_stock)),
        ("get", "/v1/stock/{sku}/{location}", get(get_stock_location)),
        ("post", "/v1/orders", post(post_orders)),
        ("get", "/v1/orders/{order_id}", get(get_order)),
        ("post", "/v1/orders/{order_id}/cancel", post(post_cancel)),
        ("post", "/v1/orders/{order_id}/commit", post(post_commit)),
        ("post", "/v1/orders/{order_id}/fulfil", post(post_fulfil)),
        ("get", "/openapi.json", get(openapi)),
        ("get", "/v1/dead-letters", get(crate::admin::list)),
        ("get", "/v1/dead-letters/{seq}", get(crate::admin::get)),
        (
            "post",
            "/v1/dead-letters/{seq}/replay",
            post(crate::admin::post_replay),
        ),
        ("get", "/v1/reconcile", get(crate::admin::get_reconcile)),
        ("get", "/v1/webhooks", get(crate::admin::list_webhooks)),
        ("post", "/v1/webhooks", post(crate::admin::create_webhook)),
        ("get", "/v1/webhooks/{id}", get(crate::admin::get_webhook)),
        (
            "delete",
            "/v1/webhooks/{id}",
            delete(crate::admin::delete_webhook),
        ),
        ("get", "/v1/connectors", get(crate::connectors::list)),
        (
            "get",
            "/v1/connectors/{shop}",
            get(crate::connectors::get_shop),
        ),
        (
            "put",
            "/v1/connectors/{shop}",
            put(crate::connectors::put_shop),
        ),
        (
            "delete",
            "/v1/connectors/{shop}",
            delete(crate::connectors::delete_shop),
        ),
        (
            "get",
            "/v1/connectors/{shop}/items",
            get(crate::connectors::list_items),
        ),
        (
            "post",
            "/v1/connectors/{shop}/items",
            post(crate::connectors::import_items),
        ),
        (
            "put",
            "/v1/connectors/{shop}/items/{sku}",
            put(crate::connectors::put_item),
        ),
        (
            "delete",
            "/v1/connectors/{shop}/items/{sku}",
            delete(crate::connectors::delete_item),
        ),
        ("get", "/v1/channels", get(crate::channels::list)),
        ("get", "/v1/channels/{channel}", get(crate::channels::get)),
        ("put", "/v1/channels/{channel}", put(crate::channels::put)),
        (
            "delete",
            "/v1/channels/{channel}",
            delete(crate::channels::delete),
        ),
        (
            "put",
            "/v1/channels/{channel}/rules/{sku}",
            put(crate::channels::put_rules),
        ),
        (
            "delete",
            "/v1/channels/{channel}/rules/{sku}",
            delete(crate::channels::delete_rules),
        ),
        (
            "get",
            "/v1/channels/{channel}/availability",
            get(crate::feed::page),
        ),
        (
            "get",
            "/v1/channels/{channel}/availability/{sku}",
            get(crate::feed::get),
        ),
        (
            "get",
            "/v1/channels/{channel}/availability/stream",
            get(crate::feed::stream),
        ),
        ("get", "/v1/whoami", get(crate::console::api::whoami)),
        ("get", "/v1/skus/{sku}/ledger", get(crate::history::ledger)),
        ("get", "/v1/skus/{sku}/levels", get(crate::history::levels)),
        (
            "get",
            "/v1/skus/{sku}/channels",
            get(crate::console::api::channels),
        ),
        (
            "get",
            "/v1/skus/{sku}/stream",
            get(crate::console::api::sku_stream),
        ),
        (
            "get",
            "/v1/alerts/stream",
            get(crate::console::api::alerts_stream),
        ),
    ];
    let mut router = Router::new();
    let mut served = Vec::with_capacity(table.len());
    for (method, path, handler) in table {
        router = router.route(path, handler);
        served.push((method, path));
    }
    (router, served)
}

/// The API: routes, body limit, request metrics, and every error as JSON (404 for an unknown
/// route, 405, 414, and whatever else the framework refuses by itself).
pub fn router(state: AppState, body_limit: usize) -> Router {
    let (routes, served) = api_routes();
    register_request_counters(&served);
    routes
        .merge(crate::console::router())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(error::limit_uri))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Registers `stockflow_http_requests_total` at 0 for every served route with each success
/// status its OpenAPI operation documents, so dashboards see 0 rather than no series; other
/// statuses appear with their first request.
fn register_request_counters(served: &[(&'static str, &'static str)]) {
    let Ok(document) = serde_json::from_str::<serde_json::Value>(crate::openapi::DOCUMENT) else {
        return; // The document is checked to be JSON by the tests.
    };
    for (method, path) in served {
        let responses = &document["paths"][*path][*method]["responses"];
        for status in responses
            .as_object()
            .into_iter()
            .flat_map(|r| r.keys())
            .filter(|s| s.starts_with('2'))
        {
            metrics::counter!(
                "stockflow_http_requests_total",
                "route" => *path,
                "status" => status.clone()
            )
            .increment(0);
        }
    }
}

/// Counts and times requests by route template (never the raw path: it holds SKUs and ids).
async fn track(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched
        .as_ref()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::counter!(
        "stockflow_http_requests_total",
        "route" => route.clone(),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("stockflow_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT,
    )
}

/// The `Idempotency-Key` header: 1..=128 bytes of printable ASCII without spaces, like an
/// `event_id` — also when every batch item carries its own id and the key names none.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    const FIELD: &str = "Idempotency-Key";
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(
                FIELD,
                "Idempotency-Key must be printable ASCII without spaces",
            )
        })?;
    if key.is_empty() || key.len() > MAX_EVENT_ID_BYTES {
        return Err(ApiError::invalid(
            FIELD,
            format!(
                "Idempotency-Key is {} bytes, it must be 1..={MAX_EVENT_ID_BYTES}",
                key.len()
            ),
        ));
    }
    Ok(Some(key))
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "dependency unavailable");
    ApiError::unavailable(format!(
        "not stored, retry with the same idempotency key: {error}"
    ))
}

/// Parses a body that is one item or a batch, validating every item before anything is sent.
fn parse_items<T>(
    state: &AppState,
    body: &[u8],
    build: impl Fn(serde_json::Value, Option<usize>) -> Result<T, ApiError>,
) -> Result<(Vec<T>, bool), ApiError> {
    let (values, batch) = input::one_or_many(body)?;
    if batch && values.is_empty() {
        return Err(ApiError::invalid("body", "the batch is empty"));
    }
    if values.len() > state.max_batch {
        return Err(ApiError::invalid(
            "body",
            format!("a batch holds at most {} events", state.max_batch),
        ));
    }
    let items = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let index = batch.then_some(i);
            build(value, index).map_err(|e| if batch { e.at_index(i) } else { e })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((items, batch))
}

/// What the stock worker's dedup record says about a fact's `event_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// No record (never applied, or longer ago than the dedup TTL), or Redis did not answer.
    Unknown,
    /// Applied with the same change.
    Same,
}

/// Reads the stock worker's dedup record of each stock fact before anything is published: an
/// `event_id` the worker applied with another change is a 409 naming the item, and nothing of
/// the request is stored. This covers re-posts after JetStream's duplicate window; within it
/// the PubAck's duplicate is compared too ([`publish`]). Without Redis the check is skipped:
/// writes do not need Redis, and the worker dead-letters such a conflict.
async fn check_dedup(
    state: &AppState,
    events: &[Outgoing],
    batch: bool,
) -> Result<Vec<Seen>, ApiError> {
    let lookups = events.iter().map(|event| async move {
        let Some(dedup) = &event.dedup else {
            return Ok(Seen::Unknown);
        };
        let mut redis = state.redis.clone();
        let mut command = redis::cmd("HGET");
        command
            .arg(state.keys.event(&dedup.sku, &event.event_id))
            .arg("f");
        let read = command.query_async::<Option<String>>(&mut redis);
        let stored = match tokio::time::timeout(state.publish_timeout, read).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading a dedup record failed; the worker will judge");
                None
            }
            Err(_) => {
                tracing::warn!("reading a dedup record timed out; the worker will judge");
                None
            }
        };
        match stored.as_deref() {
            None => Ok(Seen::Unknown),
            // '*': restored by `stockctl rebuild`, which keeps no content: cannot compare.
            Some("*") => Ok(Seen::Unknown),
            Some(f) if f == dedup.fingerprint => Ok(Seen::Same),
            Some(_) => Err(event.event_id.clone()),
        }
    });
    let seen = futures::future::join_all(lookups).await;
    let mut result = Vec::with_capacity(seen.len());
    for (i, item) in seen.into_iter().enumerate() {
        match item {
            Ok(seen) => result.push(seen),
            Err(event_id) => {
                let mut error = ApiError::conflict(format!(
                    "event_id {event_id:?} was already applied with another change; the first \
                     one stands and nothing was stored"
                ));
                error.field = Some("event_id".into());
                return Err(if batch { error.at_index(i) } else { error });
            }
        }
    }
    Ok(result)
}

/// 202 when every event is stored; 409 when an `event_id` is already stored with another
/// change; 503 (listing what was stored) when any is not stored for want of JetStream.
pub(crate) async fn ingest(state: &AppState, events: &[Outgoing], batch: bool) -> Response {
    let seen = match check_dedup(state, events, batch).await {
        Ok(seen) => seen,
        Err(conflict) => return conflict.into_response(),
    };
    let results: Vec<Result<Stored, PublishError>> =
        publish_all(&state.js, events, state.publish_timeout)
            .await
            .into_iter()
            .zip(&seen)
            .map(|(result, seen)| {
                result.map(|mut stored| {
                    stored.duplicate |= *seen == Seen::Same;
                    stored
                })
            })
            .collect();
    if !batch {
        return match results.into_iter().next() {
            Some(Ok(stored)) => (StatusCode::ACCEPTED, Json(stored)).into_response(),
            Some(Err(e @ PublishError::Conflict { .. })) => {
                let mut error = ApiError::conflict(e.to_string());
                error.field = Some("event_id".into());
                error.into_response()
            }
            Some(Err(e)) => unavailable(e).into_response(),
            None => ApiError::invalid("body", "no event").into_response(),
        };
    }
    let unavailable_any = results
        .iter()
        .any(|r| matches!(r, Err(PublishError::Unavailable(_))));
    let conflict_any = results
        .iter()
        .any(|r| matches!(r, Err(PublishError::Conflict { .. })));
    let items: Vec<serde_json::Value> = results
        .into_iter()
        .zip(events)
        .map(|(result, event)| match result {
            Ok(stored) => json!({"stored": true, "event_id": stored.event_id, "duplicate": stored.duplicate, "stream": stored.stream, "seq": stored.seq}),
            Err(error @ PublishError::Conflict { .. }) => json!({"stored": false, "event_id": event.event_id, "error": "conflict", "message": error.to_string()}),
            Err(error) => json!({"stored": false, "event_id": event.event_id, "error": "unavailable", "message": error.to_string()}),
        })
        .collect();
    if unavailable_any {
        tracing::warn!("part of a batch was not stored");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": "unavailable",
                "message": "some events were not stored; re-post the batch with the same ids",
                "events": items,
            })),
        )
            .into_response()
    } else if conflict_any {
        (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "conflict",
                "message": "some event ids are already stored with another change; the other events are stored",
                "events": items,
            })),
        )
            .into_response()
    } else {
        (StatusCode::ACCEPTED, Json(json!({ "events": items }))).into_response()
    }
}

async fn post_stock_events(
    auth: Authorized<Write>,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let key = idempotency_key(&headers)?;
    let (events, batch) = parse_items(&state, &body, |value, index| {
        input::stock_fact(value, key, index)
    })?;
    // A channel's rules are admin changes, whichever route carries them.
    if events.iter().any(|e| e.event.is_channel_rules()) {
        auth.require(Scope::Admin, "a channel_rules fact")?;
    }
    if events.iter().any(|e| e.event.is_kit_defined()) {
        auth.require(Scope::Admin, "a kit_defined fact")?;
    }
    Ok(ingest(&state, &events, batch).await)
}

/// `?wait=2s` / `500ms` / `2` (seconds).
#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

fn parse_wait(text: &str, max: Duration) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::invalid(
            "wait",
            format!("wait {text:?} is not a duration like 2s or 500ms"),
        )
    };
    let (number, unit_ms) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1000)
    } else {
        (text, 1000)
    };
    let value: u64 = number.trim().parse().map_err(|_| bad())?;
    let wait = Duration::from_millis(value.checked_mul(unit_ms).ok_or_else(bad)?);
    if wait > max {
        return Err(ApiError::invalid(
            "wait",
            format!(
                "wait is at most {}s (STOCKFLOW_GATEWAY_MAX_WAIT_SECONDS)",
                max.as_secs()
            ),
        ));
    }
    Ok(wait)
}

async fn post_orders(
    _: Authorized<Write>,
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let body = body?;
    let key = idempotency_key(&headers)?;
    let wait = query
        .wait
        .as_deref()
        .map(|w| parse_wait(w, state.max_wait))
        .transpose()?;
    let (placements, batch) = parse_items(&state, &body, |value, index| {
        input::placement(value, key, index)
    })?;
    match (wait, batch) {
        (Some(_), true) => Err(ApiError::invalid(
            "wait",
            "wait applies to one order, not a batch",
        )),
        (Some(wait), false) => {
            let Some((event, command)) = placements.into_iter().next() else {
                return Err(ApiError::invalid("body", "no order"));
            };
            place_and_wait(&state, event, command, wait).await
        }
        (None, _) => {
            let events: Vec<Outgoing> = placements.into_iter().map(|(e, _)| e).collect();
            Ok(ingest(&state, &events, batch).await)
        }
    }
}

#[derive(Debug, Serialize)]
struct AllocationJson {
    line_id: String,
    sku: String,
    location: String,
    quantity: i64,
    /// The kit and the order's own line a component part belongs to (absent for a plain line).
    #[serde(skip_serializing_if = "String::is_empty")]
    kit_sku: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    kit_line_id: String,
    /// Only on a backordered line: every other allocation reads as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    backordered: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backorder_expected_at_ms: Option<i64>,
}

impl From<Allocation> for AllocationJson {
    fn from(a: Allocation) -> Self {
        Self {
            line_id: a.line_id,
            sku: a.sku,
            location: a.location,
            quantity: a.quantity,
            kit_sku: a.kit_sku,
            kit_line_id: a.kit_line_id,
            backordered: (a.backordered > 0).then_some(a.backordered),
            backorder_expected_at_ms: (a.backorder_expected_at_ms > 0)
                .then_some(a.backorder_expected_at_ms),
        }
    }
}

#[derive(Debug, Serialize)]
struct ShortfallJson {
    line_id: String,
    sku: String,
    requested: i64,
    available: i64,
}

impl From<Shortfall> for ShortfallJson {
    fn from(s: Shortfall) -> Self {
        Self {
            line_id: s.line_id,
            sku: s.sku,
            requested: s.requested,
            available: s.available,
        }
    }
}

fn confirmed(
    stored: &Stored,
    order_id: &str,
    status: &str,
    allocations: Vec<Allocation>,
    expires_at_ms: i64,
) -> Response {
    let allocations: Vec<AllocationJson> = allocations.into_iter().map(Into::into).collect();
    (
        StatusCode::CREATED,
        Json(json!({
            "order_id": order_id,
            "event_id": stored.event_id,
            "duplicate": stored.duplicate,
            "decision": "confirmed",
            "status": status,
            "allocations": allocations,
            "expires_at_ms": expires_at_ms,
        })),
    )
        .into_response()
}

fn rejected(stored: &Stored, order_id: &str, shortfalls: Vec<Shortfall>) -> Response {
    let shortfalls: Vec<ShortfallJson> = shortfalls.into_iter().map(Into::into).collect();
    (
        StatusCode::CONFLICT,
        Json(json!({
            "error": "rejected",
            "message": format!("order {order_id:?} is rejected: not enough stock for every line"),
            "order_id": order_id,
            "event_id": stored.event_id,
            "duplicate": stored.duplicate,
            "decision": "rejected",
            "status": "rejected",
            "shortfalls": shortfalls,
        })),
    )
        .into_response()
}

fn from_record(stored: &Stored, order: StoredOrder) -> Option<Response> {
    match order.decision()? {
        Decision::Confirmed => Some(confirmed(
            stored,
            &order.order_id,
            order.status.as_str(),
            order.allocations(),
            order.expires_at_ms,
        )),
        Decision::Rejected => Some(rejected(stored, &order.order_id, order.shortfalls())),
    }
}

/// Publishes a placement and waits up to `wait` for its decision. The subscription to the
/// order's results exists before the publish, so a decision made right after it is not missed;
/// a decision made before (a re-post of a decided order) is read from the worker's records.
async fn place_and_wait(
    state: &AppState,
    event: Outgoing,
    command: order_worker::command::OrderCommand,
    wait: Duration,
) -> Result<Response, ApiError> {
    let order_id = command.order_id.clone();
    let Command::Placed {
        lines,
        hold_seconds,
    } = &command.command
    else {
        return Err(ApiError::invalid("body", "not a placement"));
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut results = state
        .nats
        .subscribe(subjects::order_result(&order_id))
        .await
        .map_err(unavailable)?;
    let seen = check_dedup(state, std::slice::from_ref(&event), false).await?;
    let mut stored = match publish(&state.js, &event, state.publish_timeout).await {
        Ok(stored) => stored,
        Err(e @ PublishError::Conflict { .. }) => {
            let mut error = ApiError::conflict(e.to_string());
            error.field = Some("event_id".into());
            return Err(error);
        }
        Err(e) => return Err(unavailable(e)),
    };
    stored.duplicate |= seen.first() == Some(&Seen::Same);
    let mut redis = state.redis.clone();
    match read_order(&mut redis, &state.keys, &order_id).await {
        Ok(Some(order)) if order.placed_otherwise(lines, *hold_seconds, &command.channel) => {
            return Err(ApiError::conflict(format!(
                "order {order_id:?} was already placed with other lines, another hold or from another channel"
            )));
        }
        Ok(Some(order)) => {
            if let Some(response) = from_record(&stored, order) {
                return Ok(response);
            }
        }
        Ok(None) => {}
        Err(e @ ReadError::Unreadable { .. }) => return Err(unreadable(&e)),
        // The decision may still come in on the subscription.
        Err(e) => tracing::warn!(error = %e, "reading the order record failed"),
    }
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, results.next()).await {
        let Ok(result) = OrderResult::decode(message.payload) else {
            continue;
        };
        match result.result {
            Some(order_result::Result::Confirmed(c)) => {
                return Ok(confirmed(
                    &stored,
                    &order_id,
                    "confirmed",
                    c.lines,
                    c.expires_at_ms,
                ))
            }
            Some(order_result::Result::Rejected(r)) => {
                return Ok(rejected(&stored, &order_id, r.short_lines))
            }
            // A release is not the decision this request waits for.
            Some(order_result::Result::Released(_)) | None => {}
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "order_id": order_id,
            "event_id": stored.event_id,
            "duplicate": stored.duplicate,
            "stream": stored.stream,
            "seq": stored.seq,
            "status": "pending",
        })),
    )
        .into_response())
}

async fn order_action(
    state: AppState,
    order_id: String,
    action: OrderAction,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let key = idempotency_key(&headers)?;
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?
    };
    let event = input::order_action(order_id.clone(), action, value, key)?;
    if !order_known(&state, &order_id).await? {
        return Err(ApiError::not_found(format!(
            "no order {order_id:?}: it was never placed, or it ended longer ago than its \
             retention; nothing was stored"
        )));
    }
    Ok(ingest(&state, &[event], false).await)
}

/// Whether a command for `order_id` may be published: the order worker has its record, or
/// `ORDER_EVENTS` holds a message for it (a placement not decided yet — a command that
/// overtakes it is still the worker's to order). Neither: the order does not exist, and a
/// command would only leave a record of a command.
async fn order_known(state: &AppState, order_id: &str) -> Result<bool, ApiError> {
    let mut redis = state.redis.clone();
    let redis_failed = match read_order(&mut redis, &state.keys, order_id).await {
        Ok(Some(_)) => return Ok(true),
        Ok(None) => false,
        Err(e @ ReadError::Unreadable { .. }) => return Err(unreadable(&e)),
        Err(e) => {
            tracing::warn!(error = %e, "reading the order record failed; asking JetStream");
            true
        }
    };
    let last = async {
        state
            .js
            .get_stream_no_info(subjects::ORDER_EVENTS)
            .await
            .map_err(|e| e.to_string())?
            .get_last_raw_message_by_subject(&subjects::order_event(order_id))
            .await
            .map(|_| true)
            .or_else(|e| match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(false),
                _ => Err(e.to_string()),
            })
    };
    match tokio::time::timeout(state.publish_timeout, last).await {
        Ok(Ok(true)) => Ok(true),
        // A running order may outlive its placement in the stream: only Redis can say no.
        Ok(Ok(false)) if redis_failed => Err(ApiError::unavailable(
            "the stock store did not answer, so whether the order exists is unknown; retry",
        )),
        Ok(Ok(false)) => Ok(false),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable("JetStream did not answer in time")),
    }
}

/// A record no version of the workers writes: a bug to fix, not a condition to retry.
fn unreadable(error: &ReadError) -> ApiError {
    tracing::error!(error = %error, "an order record cannot be interpreted");
    ApiError::internal(format!("{error}; this is a bug, a retry will not help"))
}

async fn post_cancel(
    _: Authorized<Write>,
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    order_action(state, order_id, OrderAction::Cancel, headers, body).await
}

async fn post_commit(
    _: Authorized<Write>,
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    order_action(state, order_id, OrderAction::Commit, headers, body).await
}

async fn post_fulfil(
    _: Authorized<Write>,
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    order_action(state, order_id, OrderAction::Fulfil, headers, body).await
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A location's levels; incoming and unsellable units only where there are some.
#[derive(Debug, Default, Serialize)]
struct LevelsJson {
    on_hand: i64,
    reserved: i64,
    safety_stock: i64,
    available: i64,
    #[serde(skip_serializing_if = "is_zero")]
    incoming: i64,
    #[serde(skip_serializing_if = "is_zero")]
    incoming_expected_at_ms: i64,
    #[serde(skip_serializing_if = "is_zero")]
    damaged: i64,
    #[serde(skip_serializing_if = "is_zero")]
    quality_control: i64,
    #[serde(skip_serializing_if = "is_zero")]
    held: i64,
    /// Units of order lines waiting here for stock (backorders, preorders).
    #[serde(skip_serializing_if = "is_zero")]
    backordered: i64,
}

impl From<&LocationLevels> for LevelsJson {
    fn from(l: &LocationLevels) -> Self {
        Self {
            on_hand: l.on_hand,
            reserved: l.reserved,
            safety_stock: l.safety_stock,
            available: l.available(),
            incoming: l.incoming,
            incoming_expected_at_ms: l.incoming_expected_at_ms,
            damaged: l.damaged,
            quality_control: l.quality_control,
            held: l.held,
            backordered: l.backordered,
        }
    }
}

#[derive(Debug, Serialize)]
struct LocationJson {
    location: String,
    #[serde(flatten)]
    levels: LevelsJson,
}

/// One line of `GET /v1/orders/{order_id}`.
#[derive(Debug, Serialize)]
struct LineJson<'a> {
    line_id: &'a str,
    sku: &'a str,
    quantity: i64,
    /// As placed; '' when the worker chose.
    requested_location: &'a str,
    state: &'static str,
    /// Where it is (or was) held.
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shipped: Option<i64>,
    /// Most any candidate location had, for a short line.
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<i64>,
}

impl<'a> From<&'a order_worker::StoredLine> for LineJson<'a> {
    fn from(l: &'a order_worker::StoredLine) -> Self {
        let (state, location, shipped, available) = match &l.state {
            LineState::Pending => ("pending", None, None, None),
            LineState::Reserved { location, shipped } => {
                ("reserved", Some(location.as_str()), Some(*shipped), None)
            }
            LineState::Short { available } => ("short", None, None, Some(*available)),
            LineState::Released { location, shipped } => {
                ("released", location.as_deref(), Some(*shipped), None)
            }
        };
        Self {
            line_id: &l.line.line_id,
            sku: &l.line.sku,
            quantity: l.line.quantity,
            requested_location: &l.line.location,
            state,
            location,
            shipped,
            available,
        }
    }
}

fn read_order_failed(e: ReadError) -> ApiError {
    match e {
        ReadError::Unreadable { .. } => unreadable(&e),
        ReadError::Redis(e) => read_failed(e.into()),
    }
}

fn read_failed(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %format!("{e:#}"), "reading from Redis failed");
    ApiError::unavailable("the stock store did not answer; retry")
}

async fn get_stock(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    validate_sku(&sku).map_err(|r| ApiError::invalid("sku", r))?;
    let mut redis = state.redis.clone();
    let levels = read_levels(&mut redis, &state.keys, &sku)
        .await
        .map_err(read_failed)?;
    if levels.is_empty() {
        return Err(ApiError::not_found(format!(
            "no stock recorded for sku {sku:?}"
        )));
    }
    let totals = LevelsJson::from(&stockflow_shared::levels::totals(levels.values()));
    let locations: Vec<LocationJson> = levels
        .iter()
        .map(|(location, l)| LocationJson {
            location: location.clone(),
            levels: l.into(),
        })
        .collect();
    let mut body = json!({"sku": sku, "locations": locations, "totals": totals});
    // A kit's on_hand is what its components make: name them.
    let kit: Option<String> = redis::cmd("HGET")
        .arg(state.keys.policy(&sku))
        .arg("kit")
        .query_async(&mut redis)
        .await
        .map_err(|e| read_failed(e.into()))?;
    if let Some(components) = kit
        .as_deref()
        .and_then(stockflow_proto::input::fact::decode_kit)
    {
        body["kit"] = components
            .iter()
            .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
            .collect::<Vec<_>>()
            .into();
    }
    Ok(Json(body).into_response())
}

async fn get_stock_location(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path((sku, location)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_sku(&sku).map_err(|r| ApiError::invalid("sku", r))?;
    validate_location("location", &location).map_err(|r| ApiError::invalid("location", r))?;
    let mut redis = state.redis.clone();
    let levels = read_levels(&mut redis, &state.keys, &sku)
        .await
        .map_err(read_failed)?;
    let Some(l) = levels.get(&location) else {
        return Err(ApiError::not_found(format!(
            "no stock recorded for sku {sku:?} at {location:?}"
        )));
    };
    let mut body = json!({"sku": sku, "location": location});
    if let (Some(body), Ok(serde_json::Value::Object(levels))) = (
        body.as_object_mut(),
        serde_json::to_value(LevelsJson::from(l)),
    ) {
        body.extend(levels);
    }
    Ok(Json(body).into_response())
}

async fn get_order(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Response, ApiError> {
    let mut redis = state.redis.clone();
    let Some(order) = read_order(&mut redis, &state.keys, &order_id)
        .await
        .map_err(read_order_failed)?
    else {
        return Err(ApiError::not_found(format!("no order {order_id:?}")));
    };
    let lines: Vec<LineJson<'_>> = order.lines.iter().map(Into::into).collect();
    let decision = order.decision().map(|d| match d {
        Decision::Confirmed => "confirmed",
        Decision::Rejected => "rejected",
    });
    let allocations: Vec<AllocationJson> = if decision == Some("confirmed") {
        order.allocations().into_iter().map(Into::into).collect()
    } else {
        Vec::new()
    };
    let shortfalls: Vec<ShortfallJson> = order.shortfalls().into_iter().map(Into::into).collect();
    Ok(Json(json!({
        "order_id": order.order_id,
        "status": order.status.as_str(),
        "decision": decision,
        "hold_seconds": order.hold_seconds,
        "expires_at_ms": order.expires_at_ms,
        "committed": order.committed,
        "lines": lines,
        "allocations": allocations,
        "shortfalls": shortfalls,
    }))
    .into_response())
}
