//! Admin route (`admin` scope) of the connector's shops: `GET /v1/connectors`, what waits for
//! each shop — the same report as `stockctl connectors status`, from the same code
//! (`connector::status`).

use axum::{
    extract::State,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{
    auth::{Admin, Authorized},
    error::ApiError,
    AppState,
};

/// `GET /v1/connectors`: per shop, the changed items waiting to be pushed, the pushes asked
/// again and the dead letters.
pub(crate) async fn list(
    _: Authorized<Admin>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let shops = connector::status::shops(&state.js).await.map_err(|e| {
        tracing::warn!(error = %e, "connector status unavailable");
        ApiError::unavailable(e.to_string())
    })?;
    Ok(Json(json!({ "shops": shops })).into_response())
}
