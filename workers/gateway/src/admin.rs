//! Admin routes (`admin` scope): the dead letters, listed, shown and replayed through
//! `stockflow_shared::replay`, the same code `stockctl dlq` runs; the drift between Redis and
//! the ledger, from `stockflow_ops::reconcile`, the same code `stockctl reconcile` runs; and the
//! webhook subscriptions of the `WEBHOOK_SUBSCRIPTIONS` bucket (`notify_worker::registry`),
//! listed, created, shown and deleted. A subscription's secret is write-only: answers say only whether
//! one is set, and nothing here logs a URL or a secret.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use notify_worker::{
    registry::{Registry, RegistryError, Stored},
    subscriptions::valid_id,
};
use serde_json::{json, Map, Value};
use stockflow_ops::Error as OpsError;
use stockflow_shared::replay::{self, DeadLetter, ReplayError};

use crate::{
    auth::{Admin, Authorized},
    error::ApiError,
    input, AppState,
};

/// Dead letters per page unless `?limit=` says otherwise.
const DEFAULT_PAGE: usize = 100;

fn from_replay(error: ReplayError) -> ApiError {
    match error {
        ReplayError::NotFound(_) => ApiError::not_found(error.to_string()),
        ReplayError::Refused { .. } => ApiError::conflict(error.to_string()),
        ReplayError::Unavailable(_) => {
            tracing::warn!(error = %error, "dead letters unavailable");
            ApiError::unavailable(error.to_string())
        }
    }
}

fn summary(letter: &DeadLetter) -> Map<String, Value> {
    let plan = letter.plan();
    let original_sequence = letter.original_sequence().parse::<u64>().ok();
    let fields = json!({
        "sequence": letter.sequence,
        "stored_at_ms": letter.stored_at_ms(),
        "subject": letter.subject,
        "original_stream": letter.original_stream(),
        "original_subject": letter.original_subject(),
        "original_sequence": original_sequence,
        "reason": letter.reason(),
        "bytes": letter.payload.len(),
        "replayable": plan.is_ok(),
        "kind": plan.as_ref().ok().map(|t| t.kind.as_str()),
        "refusal": plan.as_ref().err().map(ToString::to_string),
    });
    match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn sequence(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid("seq", format!("seq {text:?} is not a sequence number")))
}

/// `GET /v1/dead-letters?after=<seq>&limit=<n>`: dead letters stored after `after` (default
/// 0), at most `limit` (default 100, at most 1000), oldest first; `next_after` continues.
pub(crate) async fn list(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let (mut after, mut limit) = (0, DEFAULT_PAGE);
    for (name, value) in &query {
        match name.as_str() {
            "after" => {
                after = value.parse().map_err(|_| {
                    ApiError::invalid("after", format!("after {value:?} is not a sequence number"))
                })?;
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=replay::MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("limit must be 1..={}, got {value:?}", replay::MAX_PAGE),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown parameter {other:?}; use after and limit"),
                ))
            }
        }
    }
    let page = replay::list(&state.js, after, limit)
        .await
        .map_err(from_replay)?;
    let letters: Vec<Value> = page
        .letters
        .iter()
        .map(|l| Value::Object(summary(l)))
        .collect();
    Ok(Json(json!({"dead_letters": letters, "next_after": page.next_after})).into_response())
}

/// `GET /v1/dead-letters/{seq}`: one dead letter with its headers and payload.
pub(crate) async fn get(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    let letter = replay::get(&state.js, sequence(&seq)?)
        .await
        .map_err(from_replay)?;
    let mut body = summary(&letter);
    let mut headers = Map::new();
    for (name, values) in letter.headers.iter() {
        let values: Vec<Value> = values.iter().map(|v| v.as_str().into()).collect();
        headers.insert(name.to_string(), Value::Array(values));
    }
    body.insert("headers".into(), Value::Object(headers));
    let hex: String = letter.payload.iter().map(|b| format!("{b:02x}")).collect();
    body.insert("payload_hex".into(), hex.into());
    // Webhook deliveries hold the JSON body they POST; inputs are protobuf.
    let as_json = serde_json::from_slice::<Value>(&letter.payload).ok();
    body.insert("payload_json".into(), as_json.unwrap_or(Value::Null));
    Ok(Json(Value::Object(body)).into_response())
}

/// `POST /v1/dead-letters/{seq}/replay`: publishes it again where it came from and removes it.
pub(crate) async fn post_replay(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    let done = replay::replay_sequence(&state.js, sequence(&seq)?)
        .await
        .map_err(from_replay)?;
    tracing::info!(
        sequence = done.sequence,
        kind = done.kind.as_str(),
        subject = %done.subject,
        duplicate = done.duplicate,
        "dead letter replayed"
    );
    Ok((
        StatusCode::OK,
        Json(json!({
            "sequence": done.sequence,
            "kind": done.kind.as_str(),
            "subject": done.subject,
            "stream": done.stream,
            "seq": done.stream_sequence,
            "duplicate": done.duplicate,
            "removed": true,
        })),
    )
        .into_response())
}

fn from_registry(error: RegistryError) -> ApiError {
    match error {
        RegistryError::NotFound(_) => ApiError::not_found(error.to_string()),
        RegistryError::Exists(_) => ApiError::conflict(error.to_string()),
        RegistryError::Unreadable { .. } => {
            tracing::error!(error = %error, "a stored webhook subscription is unreadable");
            ApiError::internal(error.to_string())
        }
        RegistryError::Missing | RegistryError::Unavailable { .. } => {
            tracing::warn!(error = %error, "webhook subscriptions unavailable");
            ApiError::unavailable(error.to_string())
        }
    }
}

/// A subscription as answers show it: every field but the secret, and whether one is set.
fn webhook_view(stored: &Stored) -> Value {
    let mut view = json!({
        "id": stored.id,
        "url": stored.url,
        "events": stored.events,
        "secret_set": stored.secret.is_some(),
    });
    if let Value::Object(map) = &mut view {
        if let Some(skus) = &stored.skus {
            map.insert("skus".into(), json!(skus));
        }
        if let Some(channels) = &stored.channels {
            map.insert("channels".into(), json!(channels));
        }
        if let Some(locations) = &stored.locations {
            map.insert("locations".into(), json!(locations));
        }
    }
    view
}

fn webhook_id(id: &str) -> Result<&str, ApiError> {
    if valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::invalid(
            "id",
            "a webhook id is 1..=64 ASCII letters, digits, '-' or '_'",
        ))
    }
}

/// `GET /v1/webhooks`: the subscriptions of the bucket, by id (those of notify-worker's
/// `STOCKFLOW_WEBHOOKS_FILE` are not listed).
pub(crate) async fn list_webhooks(
    _: Authorized<Admin>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let registry = Registry::open(&state.js).await.map_err(from_registry)?;
    let all = registry.list().await.map_err(from_registry)?;
    let views: Vec<Value> = all.iter().map(webhook_view).collect();
    Ok(Json(json!({ "webhooks": views })).into_response())
}

/// `POST /v1/webhooks`: stores a new subscription (201), 409 when its id is taken; notify-worker
/// starts delivering to it without a restart.
pub(crate) async fn create_webhook(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    let stored: Stored = input::from_value(value).map_err(|e| {
        // Never echo what was sent as a secret, even when it is not a string.
        if e.field.as_deref() == Some("secret") {
            ApiError::invalid("secret", "must be a string of 16..=1024 bytes")
        } else {
            e
        }
    })?;
    stored
        .validate()
        .map_err(|e| ApiError::invalid(e.field, e.reason))?;
    let registry = Registry::open(&state.js).await.map_err(from_registry)?;
    registry.create(&stored).await.map_err(from_registry)?;
    tracing::info!(id = %stored.id, "webhook subscription created");
    Ok((StatusCode::CREATED, Json(webhook_view(&stored))).into_response())
}

/// `GET /v1/webhooks/{id}`: one subscription.
pub(crate) async fn get_webhook(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = webhook_id(&id)?;
    let registry = Registry::open(&state.js).await.map_err(from_registry)?;
    let stored = registry.get(id).await.map_err(from_registry)?;
    Ok(Json(webhook_view(&stored)).into_response())
}

/// `DELETE /v1/webhooks/{id}`: deletes a subscription (204); notify-worker stops its deliveries
/// and removes its consumer and the deliveries still queued for it.
pub(crate) async fn delete_webhook(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = webhook_id(&id)?;
    let registry = Registry::open(&state.js).await.map_err(from_registry)?;
    registry.delete(id).await.map_err(from_registry)?;
    tracing::info!(%id, "webhook subscription deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/reconcile`: the levels on which Redis and the ledger disagree, read-only (nothing is
/// fixed; `stockctl reconcile --fix` or `stockctl rebuild` does). It reads the whole ledger.
pub(crate) async fn get_reconcile(
    _: Authorized<Admin>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let mut redis = state.redis.clone();
    let drift = stockflow_ops::reconcile::drift(&state.js, &mut redis, &state.keys)
        .await
        .map_err(|error| match error {
            OpsError::NoLedger => ApiError::unavailable(error.to_string()),
            OpsError::Unavailable(_) => {
                tracing::warn!(error = %format!("{error:#}"), "reconcile unavailable");
                ApiError::unavailable(format!("comparing Redis with the ledger: {error:#}"))
            }
            // Only a rebuild refuses a full Redis.
            OpsError::NotEmpty => ApiError::internal(error.to_string()),
        })?;
    Ok(Json(json!({"agrees": drift.is_empty(), "drift": drift})).into_response())
}
