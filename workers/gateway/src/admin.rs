//! Admin routes (`admin` scope): the dead letters, listed, shown and replayed through
//! `stockflow_shared::replay`, the same code `stockctl dlq` runs; the drift between Redis and
//! the ledger, from `stockflow_ops::reconcile`, the same code `stockctl reconcile` runs.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};
use stockflow_ops::Error as OpsError;
use stockflow_shared::replay::{self, DeadLetter, ReplayError};

use crate::{
    auth::{Admin, Authorized},
    error::ApiError,
    AppState,
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
