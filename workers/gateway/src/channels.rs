//! Sales channels (`admin` scope): their definitions listed and shown from the `CHANNELS`
//! bucket, set and removed as `ChannelEvent`s on `channels.events.<channel-id>` (the stock worker
//! applies them), and a SKU's override of a channel's rules set and cleared as a `channel_rules`
//! stock fact. Writes answer 202 once JetStream stored the event, as every other write does.

use async_nats::jetstream::kv;
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    Json,
};
use futures::TryStreamExt as _;
use serde_json::{json, Value};
use stockflow_proto::{
    input::json::{AvailabilityRulesJson, ChannelJson},
    v1::{channel_event::Change, ChannelEvent, ChannelRemoved, ChannelSet, EventMeta},
    validate::validate_channel_id,
};
use stockflow_shared::{topology, validate::validate_sku};

use crate::{
    auth::{Admin, Authorized},
    error::ApiError,
    input,
    routes::{idempotency_key, ingest},
    AppState,
};

/// 400 unless `id` (from the path) is a channel id: a subject token.
pub(crate) fn channel_id(id: &str) -> Result<&str, ApiError> {
    validate_channel_id("channel", id).map_err(|reason| ApiError::invalid("channel", reason))?;
    Ok(id)
}

/// The event id of a write: the `Idempotency-Key`, else a new one (`gw-<ms>-<random>`). A PUT
/// or DELETE sent twice without a key is stored twice and ends in the same state.
fn event_id(headers: &HeaderMap) -> Result<String, ApiError> {
    Ok(match idempotency_key(headers)? {
        Some(key) => key.to_owned(),
        None => format!(
            "gw-{}-{:016x}",
            stockflow_shared::now_ms(),
            fastrand::u64(..)
        ),
    })
}

fn meta(event_id: String) -> EventMeta {
    EventMeta {
        event_id,
        occurred_at_ms: stockflow_shared::now_ms(),
        source: "gateway".into(),
        ..Default::default()
    }
}

fn bucket_unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "the CHANNELS bucket is unavailable");
    ApiError::unavailable(format!(
        "the channel definitions ({} bucket) did not answer: {error}",
        topology::CHANNELS
    ))
}

async fn bucket(state: &AppState) -> Result<kv::Store, ApiError> {
    state
        .js
        .get_key_value(topology::CHANNELS)
        .await
        .map_err(bucket_unavailable)
}

/// The definition stored under `id`; `None` when there is none (never set, or removed).
async fn stored(store: &kv::Store, id: &str) -> Result<Option<Value>, ApiError> {
    let Some(entry) = store.entry(id).await.map_err(bucket_unavailable)? else {
        return Ok(None);
    };
    let channel = stockflow_shared::channels::defined_by(&entry).map_err(|e| {
        tracing::error!(channel = %id, error = %e, "a stored channel is unreadable");
        ApiError::internal(format!(
            "the stored definition of channel {id:?} is not a Channel: {e}; this is a bug"
        ))
    })?;
    Ok(channel.map(|c| json!(ChannelJson::from_channel(&c))))
}

/// `GET /v1/channels`: every defined channel, by id.
pub(crate) async fn list(
    _: Authorized<Admin>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let store = bucket(&state).await?;
    let mut keys: Vec<String> = store
        .keys()
        .await
        .map_err(bucket_unavailable)?
        .try_collect()
        .await
        .map_err(bucket_unavailable)?;
    keys.sort();
    let mut channels = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(channel) = stored(&store, &key).await? {
            channels.push(channel);
        }
    }
    Ok(Json(json!({ "channels": channels })).into_response())
}

/// `GET /v1/channels/{channel}`: one definition, with its `rules_version`.
pub(crate) async fn get(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = channel_id(&id)?;
    let store = bucket(&state).await?;
    match stored(&store, id).await? {
        Some(channel) => Ok(Json(channel).into_response()),
        None => Err(ApiError::not_found(format!("no channel {id:?}"))),
    }
}

/// `PUT /v1/channels/{channel}`: creates or replaces a channel (202 once the event is stored).
pub(crate) async fn put(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let id = channel_id(&id)?;
    let event_id = event_id(&headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    let (event, locations) = definition_event(id, value, event_id)?;
    let unknown = state
        .locations
        .unknown(&state.redis, &locations)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading the known locations failed");
            ApiError::unavailable("the stock store did not answer, so the locations cannot be checked; nothing was stored, retry")
        })?;
    if let Some(first) = unknown.first() {
        let index = locations.iter().position(|l| l == first).unwrap_or(0);
        return Err(ApiError::unknown_location(
            format!("locations[{index}]"),
            format!("location {first:?} has no stock recorded; a channel draws only from known locations"),
        ));
    }
    Ok(ingest(&state, &[event], false).await)
}

/// The `ChannelEvent` a PUT body asks for, judged by the contract's checks, and its locations
/// (whether they are known is the caller's to check).
fn definition_event(
    id: &str,
    value: Value,
    event_id: String,
) -> Result<(input::Outgoing, Vec<String>), ApiError> {
    let mut definition: ChannelJson = input::from_value(value)?;
    if definition.id.is_empty() {
        definition.id = id.to_owned();
    } else if definition.id != id {
        return Err(ApiError::invalid(
            "id",
            format!(
                "id {:?} differs from the channel of the path {id:?}",
                definition.id
            ),
        ));
    }
    let channel = definition.into_channel()?;
    let locations = channel.locations.clone();
    let event = input::channel_event(ChannelEvent {
        meta: Some(meta(event_id)),
        channel_id: id.to_owned(),
        change: Some(Change::Set(ChannelSet {
            channel: Some(channel),
        })),
    })?;
    Ok((event, locations))
}

/// The OpenAPI document's PUT example of a channel, judged as a request is.
#[cfg(test)]
pub(crate) fn check_example(id: &str, value: Value) -> Result<(), ApiError> {
    definition_event(id, value, "example".into()).map(drop)
}

/// The OpenAPI document's PUT example of a SKU's rules, judged as a request is.
#[cfg(test)]
pub(crate) fn check_rules_example(channel: &str, sku: &str, value: Value) -> Result<(), ApiError> {
    let rules: AvailabilityRulesJson = input::from_value(value)?;
    rules_fact(channel, sku, rules, "example").map(drop)
}

/// `DELETE /v1/channels/{channel}`: removes a channel (202; 404 when it is not defined).
pub(crate) async fn delete(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = channel_id(&id)?.to_owned();
    let event_id = event_id(&headers)?;
    let store = bucket(&state).await?;
    if stored(&store, &id).await?.is_none() {
        return Err(ApiError::not_found(format!("no channel {id:?}")));
    }
    let event = input::channel_event(ChannelEvent {
        meta: Some(meta(event_id)),
        channel_id: id,
        change: Some(Change::Removed(ChannelRemoved {})),
    })?;
    Ok(ingest(&state, &[event], false).await)
}

/// A `channel_rules` fact for `sku`: `rules` overrides `channel`'s rules field by field; rules
/// with no field set clear the override. The body is the rules, so a fault names its field
/// without the fact's `rules.` prefix.
fn rules_fact(
    channel: &str,
    sku: &str,
    rules: AvailabilityRulesJson,
    event_id: &str,
) -> Result<input::Outgoing, ApiError> {
    let fact = json!({
        "type": "channel_rules",
        "sku": sku,
        "channel": channel,
        "rules": rules,
        "source": "gateway",
    });
    input::stock_fact(fact, Some(event_id), None).map_err(|mut e| {
        if let Some(field) = e.field.as_deref().and_then(|f| f.strip_prefix("rules.")) {
            e.field = Some(field.to_owned());
        }
        e
    })
}

/// `PUT /v1/channels/{channel}/rules/{sku}`: overrides the channel's rules for one SKU.
pub(crate) async fn put_rules(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path((channel, sku)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let channel = channel_id(&channel)?;
    validate_sku(&sku).map_err(|r| ApiError::invalid("sku", r))?;
    let event_id = event_id(&headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not JSON: {e}")))?;
    let rules: AvailabilityRulesJson = input::from_value(value)?;
    let fact = rules_fact(channel, &sku, rules, &event_id)?;
    Ok(ingest(&state, &[fact], false).await)
}

/// `DELETE /v1/channels/{channel}/rules/{sku}`: clears the SKU's override.
pub(crate) async fn delete_rules(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    Path((channel, sku)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = channel_id(&channel)?;
    validate_sku(&sku).map_err(|r| ApiError::invalid("sku", r))?;
    let event_id = event_id(&headers)?;
    let fact = rules_fact(channel, &sku, AvailabilityRulesJson::default(), &event_id)?;
    Ok(ingest(&state, &[fact], false).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_fault_names_the_field_of_the_body() {
        let rules = AvailabilityRulesJson {
            percent: Some(101),
            ..Default::default()
        };
        let err = rules_fact("market", "SKU-1", rules, "k-1").expect_err("percent");
        assert_eq!(err.field.as_deref(), Some("percent"), "{err:?}");
        let err = rules_fact("a.b", "SKU-1", AvailabilityRulesJson::default(), "k-1")
            .expect_err("not a token");
        assert_eq!(err.field.as_deref(), Some("channel"), "{err:?}");
        let ok = rules_fact("market", "SKU-1", AvailabilityRulesJson::default(), "k-1")
            .expect("clearing is valid");
        assert!(ok.event.is_channel_rules());
    }
}
