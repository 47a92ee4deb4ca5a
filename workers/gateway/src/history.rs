//! A SKU's history (scope `read`): a page of its ledger, filtered and with cursors, and its
//! levels at a past time. The reading is [`stockflow_ops::history`], shared with `stockctl`;
//! this module parses the parameters (a bad one answers 400 naming it) and shapes the answer.

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use serde_json::json;
use stockflow_ops::history::{self, Order};
use stockflow_shared::validate::{validate_location, validate_sku};

use crate::{
    auth::{Authorized, Read},
    console::api::{ChangeJson, LevelsJson},
    error::ApiError,
    feed::sequence,
    AppState,
};

fn sku_param(sku: &str) -> Result<(), ApiError> {
    validate_sku(sku).map_err(|r| ApiError::invalid("sku", r))
}

fn time_param(name: &str, value: &str) -> Result<i64, ApiError> {
    history::parse_time(name, value).map_err(|e| ApiError::invalid(e.name, e.reason))
}

/// `type`: 1..=128 bytes without control characters (a fact type's name).
fn kind_param(value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "type",
            "type must be 1 to 128 bytes without control characters",
        ));
    }
    Ok(value.to_owned())
}

/// `location`: as a fact names it.
fn location_param(value: &str) -> Result<String, ApiError> {
    validate_location("location", value).map_err(|r| ApiError::invalid("location", r))?;
    Ok(value.to_owned())
}

/// The query of `GET /v1/skus/{sku}/ledger`.
fn ledger_query(params: &[(String, String)]) -> Result<history::Query, ApiError> {
    let mut query = history::Query::default();
    for (name, value) in params {
        match name.as_str() {
            "location" => query.location = Some(location_param(value)?),
            "type" => query.kind = Some(kind_param(value)?),
            "from" => query.from_ms = Some(time_param("from", value)?),
            "to" => query.to_ms = Some(time_param("to", value)?),
            "before" => query.before = Some(sequence("before", value)?),
            "after" => query.after = Some(sequence("after", value)?),
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=history::MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("limit must be 1..={}, got {value:?}", history::MAX_LIMIT),
                        )
                    })?;
            }
            "order" => {
                query.order = match value.as_str() {
                    "newest" => Order::NewestFirst,
                    "oldest" => Order::OldestFirst,
                    _ => {
                        return Err(ApiError::invalid(
                            "order",
                            format!("order must be newest or oldest, got {value:?}"),
                        ))
                    }
                }
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!(
                        "unknown parameter {other:?}; use location, type, from, to, before, \
                         after, limit, order"
                    ),
                ))
            }
        }
    }
    if let (Some(from), Some(to)) = (query.from_ms, query.to_ms) {
        if from > to {
            return Err(ApiError::invalid("from", "from is after to"));
        }
    }
    Ok(query)
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "the ledger is unavailable");
    ApiError::unavailable(format!("the ledger did not answer: {error}; retry"))
}

/// `GET /v1/skus/{sku}/ledger`: a page of the SKU's ledger, newest first unless
/// `order=oldest`, filtered by `location`, `type`, `from`, `to` and the `before` / `after`
/// cursors. `items` in the page's order, `next` the cursor of the next page (or null), and
/// `entries` the same entries oldest first (the answer's first shape).
pub(crate) async fn ledger(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(sku): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    sku_param(&sku)?;
    let query = ledger_query(&params)?;
    let page = tokio::time::timeout(
        state.publish_timeout,
        history::page(&state.js, &sku, &query),
    )
    .await
    .map_err(|_| unavailable("no answer in time"))?
    .map_err(|e| unavailable(format!("{e:#}")))?;
    let items: Vec<ChangeJson> = page
        .items
        .into_iter()
        .map(|e| ChangeJson::new(e.change, e.sequence))
        .collect();
    let mut entries: Vec<&ChangeJson> = items.iter().collect();
    entries.sort_by_key(|e| e.sequence);
    Ok(Json(json!({
        "sku": sku,
        "items": items,
        "next": page.next,
        "entries": entries,
    }))
    .into_response())
}

/// A location's levels at a past time, and the entry they come from.
#[derive(Debug, Serialize)]
struct LevelsAtJson {
    location: String,
    #[serde(flatten)]
    levels: LevelsJson,
    /// The newest entry applied at or before the time: its sequence, kind and time.
    sequence: u64,
    kind: String,
    applied_at_ms: i64,
}

/// `GET /v1/skus/{sku}/levels?at=<time>[&location=<l>]`: the SKU's levels at `at` per
/// location, from the newest ledger entry applied at or before it; a location with no entry
/// by then is absent.
pub(crate) async fn levels(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(sku): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    sku_param(&sku)?;
    let (mut at, mut location) = (None, None);
    for (name, value) in &params {
        match name.as_str() {
            "at" => at = Some(time_param("at", value)?),
            "location" => location = Some(location_param(value)?),
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown parameter {other:?}; use at, location"),
                ))
            }
        }
    }
    let at = at.ok_or_else(|| ApiError::invalid("at", "at is required (RFC 3339 or ms)"))?;
    let read = history::levels_at(&state.js, &sku, at, location.as_deref());
    let found = tokio::time::timeout(state.publish_timeout, read)
        .await
        .map_err(|_| unavailable("no answer in time"))?
        .map_err(|e| unavailable(format!("{e:#}")))?;
    let locations: Vec<LevelsAtJson> = found
        .into_values()
        .map(|e| LevelsAtJson {
            location: e.change.location,
            levels: e.change.after.into(),
            sequence: e.sequence,
            kind: e.change.kind,
            applied_at_ms: e.change.applied_at_ms,
        })
        .collect();
    Ok(Json(json!({ "sku": sku, "at_ms": at, "locations": locations })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_ledger_names_the_parameter_it_refuses() {
        let ok = ledger_query(&q(&[
            ("location", "wh"),
            ("type", "sold"),
            ("from", "2026-12-01T00:00:00Z"),
            ("to", "1800000000000"),
            ("before", "90"),
            ("limit", "1000"),
            ("order", "oldest"),
        ]))
        .expect("valid");
        assert_eq!(ok.limit, 1000);
        assert_eq!(ok.order, Order::OldestFirst);
        assert_eq!(ok.before, Some(90));
        assert_eq!(ledger_query(&[]).expect("defaults").limit, 50);
        for (name, value) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "x"),
            ("from", "yesterday"),
            ("to", "-1"),
            ("before", "x"),
            ("after", "-3"),
            ("order", "up"),
            ("location", ""),
            ("color", "red"),
        ] {
            let err = ledger_query(&q(&[(name, value)])).expect_err(value);
            assert_eq!(err.field.as_deref(), Some(name), "{name}={value}");
        }
        let err = ledger_query(&q(&[("from", "20"), ("to", "10")])).expect_err("range");
        assert_eq!(err.field.as_deref(), Some("from"));
    }
}
