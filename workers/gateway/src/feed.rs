//! What each channel may sell (`read` scope), from the `AVAILABILITY` stream, which keeps the
//! newest `ChannelAvailabilityChanged` per `availability.<channel-id>.<sku-token>`: one SKU's
//! newest quantity (a direct get), a page of a channel's current quantities in stream order (an
//! ordered consumer from `after + 1`), and the same followed live as Server-Sent Events.
//!
//! Because the stream keeps only the newest message per SKU, reading a channel from any
//! sequence yields each SKU changed since then once, at its newest version: a client that was
//! away resumes from the last sequence it saw without gaps and without going back in versions.

use std::{convert::Infallible, time::Duration};

use async_nats::jetstream::{
    consumer::{self, DeliverPolicy},
    stream::DirectGetErrorKind,
};
use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use serde::Serialize;
use serde_json::json;
use stockflow_proto::{subjects, v1::ChannelAvailabilityChanged};
use stockflow_shared::validate::validate_sku;

use crate::{
    auth::{Authorized, Read},
    channels::channel_id,
    error::ApiError,
    AppState,
};

/// Quantities per page unless `?limit=` says otherwise.
const DEFAULT_PAGE: usize = 100;
/// Most quantities per page.
const MAX_PAGE: usize = 1000;
/// The SSE event name of a quantity.
const EVENT: &str = "availability";

/// One quantity as the API shows it: the feed's message and its stream sequence.
#[derive(Debug, Serialize)]
pub(crate) struct AvailabilityJson {
    pub(crate) channel: String,
    sku: String,
    available_to_sell: i64,
    version: u64,
    previous: i64,
    cause_event_id: String,
    changed_at_ms: i64,
    rules_version: u64,
    pool: i64,
    sequence: u64,
}

impl AvailabilityJson {
    fn new(message: ChannelAvailabilityChanged, sequence: u64) -> Self {
        Self {
            channel: message.channel,
            sku: message.sku,
            available_to_sell: message.available_to_sell,
            version: message.version,
            previous: message.previous,
            cause_event_id: message.cause_event_id,
            changed_at_ms: message.changed_at_ms,
            rules_version: message.rules_version,
            pool: message.pool,
            sequence,
        }
    }

    /// Decodes a stored message; `None` (logged) for one stockflow never wrote.
    pub(crate) fn decode(payload: &[u8], sequence: u64) -> Option<Self> {
        match ChannelAvailabilityChanged::decode(payload) {
            Ok(message) => Some(Self::new(message, sequence)),
            Err(e) => {
                tracing::warn!(sequence, error = %e, "an AVAILABILITY message is not a ChannelAvailabilityChanged; skipped");
                None
            }
        }
    }
}

pub(crate) fn feed_unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "the AVAILABILITY stream is unavailable");
    ApiError::unavailable(format!(
        "the availability feed did not answer: {error}; retry"
    ))
}

/// `GET /v1/channels/{channel}/availability/{sku}`: the newest quantity (404 when the channel
/// never published one for the SKU).
pub(crate) async fn get(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path((channel, sku)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let channel = channel_id(&channel)?;
    validate_sku(&sku).map_err(|r| ApiError::invalid("sku", r))?;
    let read = async {
        state
            .js
            .get_stream_no_info(subjects::AVAILABILITY)
            .await
            .map_err(|e| e.to_string())?
            .direct_get_last_for_subject(subjects::availability(channel, &sku))
            .await
            .map(Some)
            .or_else(|e| match e.kind() {
                DirectGetErrorKind::NotFound => Ok(None),
                _ => Err(e.to_string()),
            })
    };
    let stored = tokio::time::timeout(state.publish_timeout, read)
        .await
        .map_err(|_| feed_unavailable("no answer in time"))?
        .map_err(feed_unavailable)?;
    let found = stored.and_then(|m| AvailabilityJson::decode(m.payload.as_ref(), m.sequence));
    match found {
        Some(quantity) => Ok(Json(quantity).into_response()),
        None => Err(ApiError::not_found(format!(
            "channel {channel:?} has published no quantity of sku {sku:?}"
        ))),
    }
}

/// `after` from a query or a header: a stream sequence, 0 for "from the start".
pub(crate) fn sequence(field: &str, text: &str) -> Result<u64, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::invalid(field, format!("{field} {text:?} is not a sequence number")))
}

/// `?after=` and `?limit=` of a page; `?after=` of a stream.
fn query_params(
    query: &[(String, String)],
    allowed: &[&str],
) -> Result<(Option<u64>, usize), ApiError> {
    let (mut after, mut limit) = (None, DEFAULT_PAGE);
    for (name, value) in query {
        match name.as_str() {
            "after" => after = Some(sequence("after", value)?),
            "limit" if allowed.contains(&"limit") => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("limit must be 1..={MAX_PAGE}, got {value:?}"),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown parameter {other:?}; use {}", allowed.join(" and ")),
                ))
            }
        }
    }
    Ok((after, limit))
}

/// Where an ordered read of a channel starts: after `after`, or at the stream's start.
pub(crate) fn deliver_from(after: u64) -> DeliverPolicy {
    match after {
        0 => DeliverPolicy::All,
        n => DeliverPolicy::ByStartSequence {
            start_sequence: n.saturating_add(1),
        },
    }
}

/// `GET /v1/channels/{channel}/availability?after=<seq>&limit=<n>`: the channel's current
/// quantities stored after `after`, in stream order; `next_after` continues (null at the end).
pub(crate) async fn page(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(channel): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let channel = channel_id(&channel)?;
    let (after, limit) = query_params(&query, &["after", "limit"])?;
    let read = async {
        let stream = state
            .js
            .get_stream_no_info(subjects::AVAILABILITY)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::channel_availability(channel),
                deliver_policy: deliver_from(after.unwrap_or(0)),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // Ephemeral; removed after the page rather than left to expire.
        let name = consumer.cached_info().name.clone();
        let mut items = Vec::new();
        let mut more = consumer.cached_info().num_pending > 0;
        if more {
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while items.len() < limit && more {
                let Some(message) = messages.next().await else {
                    break;
                };
                let message = message.map_err(|e| e.to_string())?;
                let info = message.info().map_err(|e| e.to_string())?;
                more = info.pending > 0;
                let sequence = info.stream_sequence;
                items.extend(AvailabilityJson::decode(&message.payload, sequence));
            }
        }
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "removing a page's consumer failed; it expires by itself");
        }
        Ok::<_, String>((items, more))
    };
    let (items, more) = tokio::time::timeout(state.publish_timeout, read)
        .await
        .map_err(|_| feed_unavailable("no answer in time"))?
        .map_err(feed_unavailable)?;
    let next_after = if more {
        items.last().map(|i| i.sequence)
    } else {
        None
    };
    Ok(Json(json!({ "items": items, "next_after": next_after })).into_response())
}

/// Counts an open stream in `stockflow_sse_clients` while it lives.
pub(crate) struct Open;

impl Open {
    pub(crate) fn new() -> Self {
        metrics::gauge!("stockflow_sse_clients").increment(1.0);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("stockflow_sse_clients").decrement(1.0);
    }
}

/// `GET /v1/channels/{channel}/availability/stream`: Server-Sent Events, one `availability`
/// event per quantity with its stream sequence as `id`, from after `Last-Event-ID` (or
/// `?after=`; the header wins, as a browser's reconnection sends it) or from the start, then
/// live; a heartbeat comment when there is nothing to say. Ends when the client goes away, when
/// the feed fails (the client resumes with `Last-Event-ID`), and at shutdown.
pub(crate) async fn stream(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let channel = channel_id(&channel)?.to_owned();
    let (after, _) = query_params(&query, &["after"])?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(sequence(
            "Last-Event-ID",
            value.to_str().map_err(|_| {
                ApiError::invalid("Last-Event-ID", "Last-Event-ID is not a sequence number")
            })?,
        )?),
        None => None,
    };
    let after = last_event_id.or(after).unwrap_or(0);
    let open = async {
        state
            .js
            .get_stream_no_info(subjects::AVAILABILITY)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::channel_availability(&channel),
                deliver_policy: deliver_from(after),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .messages()
            .await
            .map_err(|e| e.to_string())
    };
    let messages = tokio::time::timeout(state.publish_timeout, open)
        .await
        .map_err(|_| feed_unavailable("no answer in time"))?
        .map_err(feed_unavailable)?;
    let events = events(messages, channel)
        .take_until(state.shutdown.clone().cancelled_owned())
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events)
        .keep_alive(heartbeat(state.sse_heartbeat))
        .into_response())
}

pub(crate) fn heartbeat(every: Duration) -> KeepAlive {
    KeepAlive::new().interval(every).text("heartbeat")
}

/// The feed's messages as SSE events, until the feed fails; counted while open.
fn events(
    messages: consumer::pull::Ordered,
    channel: String,
) -> impl Stream<Item = Event> + Send + 'static {
    let open = Open::new();
    futures::stream::unfold((messages, open), move |(mut messages, open)| {
        let channel = channel.clone();
        async move {
            loop {
                let message = match messages.next().await? {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "an availability stream lost its feed; the client resumes with Last-Event-ID");
                        return None;
                    }
                };
                let Ok(info) = message.info() else { continue };
                let sequence = info.stream_sequence;
                let Some(quantity) = AvailabilityJson::decode(&message.payload, sequence) else {
                    continue;
                };
                let event = Event::default()
                    .event(EVENT)
                    .id(sequence.to_string())
                    .json_data(&quantity);
                match event {
                    Ok(event) => return Some((event, (messages, open))),
                    Err(e) => {
                        tracing::error!(error = %e, "an availability event cannot be serialised");
                        continue;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_streams_take_only_their_parameters() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            query_params(
                &q(&[("after", "7"), ("limit", "1000")]),
                &["after", "limit"]
            ),
            Ok((Some(7), 1000))
        );
        assert_eq!(query_params(&[], &["after", "limit"]), Ok((None, 100)));
        let err = query_params(&q(&[("limit", "1001")]), &["after", "limit"]).expect_err("big");
        assert_eq!(err.field.as_deref(), Some("limit"));
        let err = query_params(&q(&[("limit", "5")]), &["after"]).expect_err("no limit");
        assert_eq!(err.field.as_deref(), Some("limit"));
        let err = query_params(&q(&[("after", "-1")]), &["after"]).expect_err("negative");
        assert_eq!(err.field.as_deref(), Some("after"));
        assert_eq!(deliver_from(0), DeliverPolicy::All);
        assert_eq!(
            deliver_from(41),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
    }
}
