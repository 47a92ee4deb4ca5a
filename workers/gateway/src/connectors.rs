//! Admin routes (`admin` scope) of the connector's shops: `GET /v1/connectors`, what waits for
//! each shop — the same report as `stockctl connectors status`, from the same code
//! (`connector::status`); and the shops and item mappings of the `CONNECTOR_SHOPS` and
//! `CONNECTOR_ITEMS` buckets, listed, shown, set, removed and imported from CSV through
//! `connector::config`, the code `stockctl connectors shops|items` runs (the same checks, errors
//! naming the field). A running connector follows every change without a restart. No answer
//! carries a secret: a shop names the variables that hold them.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{header::CONTENT_TYPE, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use connector::{
    config::{ConfigStore, StoreError},
    shops::{Item, ShopConfig},
};
use serde_json::{json, Value};

use crate::{
    auth::{Admin, Authorized},
    error::ApiError,
    input, AppState,
};

/// `GET /v1/connectors`: per shop, running or skipped (and why), the changed items waiting to be
/// pushed, the pushes asked again and the dead letters.
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

fn from_store(error: StoreError) -> ApiError {
    match error {
        StoreError::NoShop(_) | StoreError::NoItem { .. } => ApiError::not_found(error.to_string()),
        StoreError::Invalid(e) => ApiError::invalid(e.field, e.reason),
        StoreError::Csv(reason) => ApiError::invalid("body", reason),
        StoreError::Unreadable { .. } => {
            tracing::error!(error = %error, "a stored connector value is unreadable");
            ApiError::internal(error.to_string())
        }
        StoreError::Missing(_) | StoreError::Unavailable { .. } => {
            tracing::warn!(error = %error, "connector configuration unavailable");
            ApiError::unavailable(error.to_string())
        }
    }
}

async fn store(state: &AppState) -> Result<ConfigStore, ApiError> {
    ConfigStore::open(&state.js).await.map_err(from_store)
}

fn shop_id(id: &str) -> Result<&str, ApiError> {
    if connector::shops::is_token(id) {
        Ok(id)
    } else {
        Err(ApiError::invalid(
            "shop",
            "a shop id is 1..=64 ASCII letters, digits, '-' or '_'",
        ))
    }
}

/// The JSON object of a body, with `field` set to `value` from the path (400 when the body
/// names another).
fn object_with(body: &[u8], field: &'static str, value: &str) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    let Value::Object(map) = &mut object else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    match map.get(field) {
        None | Some(Value::Null) => {
            map.insert(field.to_owned(), Value::String(value.to_owned()));
        }
        Some(Value::String(given)) if given == value => {}
        Some(_) => {
            return Err(ApiError::invalid(
                field,
                format!("must be the {field} of the path, or left out"),
            ))
        }
    }
    Ok(object)
}

/// The shop `PUT /v1/connectors/{shop}` would store, checked (also the OpenAPI examples' check).
pub(crate) fn shop_of(id: &str, body: &[u8]) -> Result<ShopConfig, ApiError> {
    let shop: ShopConfig = input::from_value(object_with(body, "id", id)?)?;
    shop.validate()
        .map_err(|e| ApiError::invalid(e.field, e.reason))?;
    Ok(shop)
}

/// The item `PUT /v1/connectors/{shop}/items/{sku}` would store (its platform is checked when it
/// is stored).
pub(crate) fn item_of(sku: &str, body: &[u8]) -> Result<Item, ApiError> {
    input::from_value(object_with(body, "sku", sku)?)
}

/// `GET /v1/connectors/{shop}`: one shop.
pub(crate) async fn get_shop(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(shop): Path<String>,
) -> Result<Response, ApiError> {
    let shop = store(&state)
        .await?
        .shop(shop_id(&shop)?)
        .await
        .map_err(from_store)?;
    Ok(Json(shop).into_response())
}

/// `PUT /v1/connectors/{shop}`: creates or replaces a shop; a running connector starts (or
/// restarts) it.
pub(crate) async fn put_shop(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let shop = shop_of(shop_id(&id)?, &body?)?;
    let changed = store(&state)
        .await?
        .put_shop(&shop)
        .await
        .map_err(from_store)?;
    tracing::info!(shop = %shop.id, changed, "connector shop stored");
    Ok(Json(json!({ "shop": shop, "changed": changed })).into_response())
}

/// `DELETE /v1/connectors/{shop}`: removes a shop and its item mappings (204); a running
/// connector stops it and deletes its consumers.
pub(crate) async fn delete_shop(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let items = store(&state)
        .await?
        .remove_shop(shop_id(&id)?)
        .await
        .map_err(from_store)?;
    tracing::info!(shop = %id, items, "connector shop removed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/connectors/{shop}/items`: the shop's item mappings, by SKU.
pub(crate) async fn list_items(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(shop): Path<String>,
) -> Result<Response, ApiError> {
    let items = store(&state)
        .await?
        .items(shop_id(&shop)?)
        .await
        .map_err(from_store)?;
    Ok(Json(json!({ "shop": shop, "items": items })).into_response())
}

/// `POST /v1/connectors/{shop}/items` (`text/csv`): imports item mappings; the rows refused are
/// listed with their line numbers and the others imported (idempotent).
pub(crate) async fn import_items(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(shop): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let shop = shop_id(&shop)?;
    let csv = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/csv"));
    if !csv {
        return Err(ApiError::invalid(
            "Content-Type",
            "must be text/csv (a header row, then one item per line)",
        ));
    }
    let body = body?;
    let report = store(&state)
        .await?
        .import(shop, body.as_ref())
        .await
        .map_err(from_store)?;
    tracing::info!(
        %shop,
        imported = report.imported,
        unchanged = report.unchanged,
        refused = report.refused.len(),
        "connector items imported"
    );
    Ok(Json(json!({
        "shop": shop,
        "imported": report.imported,
        "unchanged": report.unchanged,
        "refused": report.refused,
    }))
    .into_response())
}

/// `PUT /v1/connectors/{shop}/items/{sku}`: maps one SKU (replacing its mapping); a running
/// connector pushes its quantity now.
pub(crate) async fn put_item(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path((shop, sku)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let shop = shop_id(&shop)?;
    let item = item_of(&sku, &body?)?;
    let changed = store(&state)
        .await?
        .put_item(shop, &item)
        .await
        .map_err(from_store)?;
    Ok(Json(json!({ "shop": shop, "item": item, "changed": changed })).into_response())
}

/// `DELETE /v1/connectors/{shop}/items/{sku}`: unmaps a SKU (204): no more pushes of it.
pub(crate) async fn delete_item(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path((shop, sku)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    store(&state)
        .await?
        .remove_item(shop_id(&shop)?, &sku)
        .await
        .map_err(from_store)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
