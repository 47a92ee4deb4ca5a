//! The routes the console needs beyond the rest of the API (scope `read`): what the presented
//! token may do, a SKU's quantity on every channel, the SKU's changes live, and alerts live
//! (its ledger and past levels are [`crate::history`]'s). Plain API routes, listed in the
//! OpenAPI document like every other: the console is only their first client.
//!
//! The live routes are Server-Sent Events read by ordered consumers, the way
//! [`crate::feed`] follows `AVAILABILITY`: nothing durable is left behind, and a consumer goes
//! 30 s after its client.

use std::{convert::Infallible, pin::Pin};

use async_nats::jetstream::{
    self,
    consumer::{self, DeliverPolicy},
};
use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{sse::Event, IntoResponse, Response, Sse},
    Json,
};
use futures::{Stream, StreamExt as _};
use prost::Message as _;
use serde::Serialize;
use serde_json::json;
use stockflow_proto::{
    subjects,
    v1::{AlertKind, Levels, StockAlert, StockChanged},
};
use stockflow_shared::validate::validate_sku;

use crate::{
    auth::{Authorized, Read, Scope},
    error::ApiError,
    feed::{deliver_from, feed_unavailable, heartbeat, sequence, AvailabilityJson, Open},
    AppState,
};

/// `GET /v1/whoami`: the scope of the presented token and every scope it includes, so a client
/// shows only what the token may do.
pub(crate) async fn whoami(auth: Authorized<Read>) -> Response {
    let scope = auth.scope();
    let scopes: Vec<&str> = [Scope::Read, Scope::Write, Scope::Admin]
        .into_iter()
        .filter(|s| *s <= scope)
        .map(Scope::as_str)
        .collect();
    Json(json!({ "scope": scope.as_str(), "scopes": scopes })).into_response()
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Levels as a ledger entry or an alert shows them; incoming and unsellable units only where
/// there are some.
#[derive(Debug, Serialize)]
pub(crate) struct LevelsJson {
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
}

impl From<Option<Levels>> for LevelsJson {
    fn from(levels: Option<Levels>) -> Self {
        let l = levels.unwrap_or_default();
        Self {
            on_hand: l.on_hand,
            reserved: l.reserved,
            safety_stock: l.safety_stock,
            available: l.available,
            incoming: l.incoming,
            incoming_expected_at_ms: l.incoming_expected_at_ms,
            damaged: l.damaged,
            quality_control: l.quality_control,
            held: l.held,
        }
    }
}

/// One ledger entry (`StockChanged`) as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ChangeJson {
    sku: String,
    location: String,
    kind: String,
    cause_event_id: String,
    source: String,
    reference: String,
    channel: String,
    order_id: String,
    before: LevelsJson,
    after: LevelsJson,
    occurred_at_ms: i64,
    applied_at_ms: i64,
    /// Its sequence in its ledger stream.
    pub(crate) sequence: u64,
}

impl ChangeJson {
    fn decode(payload: &[u8], sequence: u64) -> Option<Self> {
        match StockChanged::decode(payload) {
            Ok(c) => Some(Self::new(c, sequence)),
            Err(e) => {
                tracing::warn!(sequence, error = %e, "a ledger message is not a StockChanged; skipped");
                None
            }
        }
    }

    /// The entry `c` at `sequence` of its ledger stream.
    pub(crate) fn new(c: StockChanged, sequence: u64) -> Self {
        Self {
            sku: c.sku,
            location: c.location,
            kind: c.kind,
            cause_event_id: c.cause_event_id,
            source: c.source,
            reference: c.reference,
            channel: c.channel,
            order_id: c.order_id,
            before: c.before.into(),
            after: c.after.into(),
            occurred_at_ms: c.occurred_at_ms,
            applied_at_ms: c.applied_at_ms,
            sequence,
        }
    }
}

/// One alert (`StockAlert`) as the API shows it.
#[derive(Debug, Serialize)]
struct AlertJson {
    /// `low_stock`, `out_of_stock`, `back_in_stock`, `negative_stock`, `channel_oversold`.
    kind: String,
    sku: String,
    location: String,
    cause_event_id: String,
    levels: LevelsJson,
    threshold: i64,
    raised_at_ms: i64,
    channel: String,
    offered: i64,
    sold: i64,
    sequence: u64,
}

impl AlertJson {
    fn decode(payload: &[u8], sequence: u64) -> Option<Self> {
        let a = match StockAlert::decode(payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(sequence, error = %e, "an ALERTS message is not a StockAlert; skipped");
                return None;
            }
        };
        let kind = AlertKind::try_from(a.kind).unwrap_or(AlertKind::Unspecified);
        Some(Self {
            kind: kind
                .as_str_name()
                .trim_start_matches("ALERT_KIND_")
                .to_ascii_lowercase(),
            sku: a.sku,
            location: a.location,
            cause_event_id: a.cause_event_id,
            levels: a.levels.into(),
            threshold: a.threshold,
            raised_at_ms: a.raised_at_ms,
            channel: a.channel,
            offered: a.offered,
            sold: a.sold,
            sequence,
        })
    }
}

fn sku_param(sku: &str) -> Result<(), ApiError> {
    validate_sku(sku).map_err(|r| ApiError::invalid("sku", r))
}

/// The ledger streams and the subject a SKU's entries have in each: `STOCK_CHANGES` with
/// `stock.changes.<sku-token>`, or every `STOCK_CHANGES_<p>` with `stock.changes.*.<sku-token>`
/// (only the SKU's partition holds any).
async fn ledger_filters(
    js: &jetstream::Context,
    sku: &str,
) -> Result<Vec<(String, String)>, String> {
    let streams = stockflow_ops::rebuild::ledger_streams(js)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok(streams
        .into_iter()
        .map(|stream| {
            let partitions = if stream == subjects::STOCK_CHANGES {
                1
            } else {
                2
            };
            let filter = subjects::stock_changed_stored(sku, partitions);
            (stream, filter)
        })
        .collect())
}

/// An ordered consumer of `stream` on `filter`, from `deliver`.
async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    deliver: DeliverPolicy,
) -> Result<consumer::Consumer<consumer::pull::OrderedConfig>, String> {
    js.get_stream_no_info(stream)
        .await
        .map_err(|e| e.to_string())?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// Every message an ordered consumer has now (to its end, not waiting for more), decoded by
/// `decode`; only the last `keep` are kept.
async fn read_to_end<T>(
    mut consumer: consumer::Consumer<consumer::pull::OrderedConfig>,
    keep: usize,
    decode: impl Fn(&[u8], u64) -> Option<T>,
) -> Result<Vec<T>, String> {
    let mut items = std::collections::VecDeque::new();
    let pending = consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .num_pending;
    if pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let more = info.pending > 0;
        if let Some(item) = decode(&message.payload, info.stream_sequence) {
            if items.len() == keep {
                items.pop_front();
            }
            items.push_back(item);
        }
        if !more {
            break;
        }
    }
    Ok(items.into())
}

fn ledger_unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "the ledger is unavailable");
    ApiError::unavailable(format!("the ledger did not answer: {error}; retry"))
}

/// `GET /v1/skus/{sku}/channels`: the newest quantity of the SKU on every channel that
/// published one, by channel id.
pub(crate) async fn channels(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    sku_param(&sku)?;
    let read = async {
        // The stream keeps the newest message per subject: one per channel.
        let consumer = ordered(
            &state.js,
            subjects::AVAILABILITY,
            subjects::availability("*", &sku),
            DeliverPolicy::All,
        )
        .await?;
        read_to_end(consumer, usize::MAX, AvailabilityJson::decode).await
    };
    let mut quantities = tokio::time::timeout(state.publish_timeout, read)
        .await
        .map_err(|_| feed_unavailable("no answer in time"))?
        .map_err(feed_unavailable)?;
    quantities.sort_by(|a, b| a.channel.cmp(&b.channel));
    Ok(Json(json!({ "sku": sku, "channels": quantities })).into_response())
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// An ordered consumer's messages as SSE events named `name`, with the stream sequence as
/// `id`; an error ends it.
fn as_events<T: Serialize + 'static>(
    messages: consumer::pull::Ordered,
    name: &'static str,
    decode: fn(&[u8], u64) -> Option<T>,
) -> Events {
    Box::pin(messages.filter_map(move |message| async move {
        let message = match message {
            Ok(message) => message,
            Err(e) => return Some(Err(e.to_string())),
        };
        let sequence = message.info().ok()?.stream_sequence;
        let item = decode(&message.payload, sequence)?;
        match Event::default()
            .event(name)
            .id(sequence.to_string())
            .json_data(&item)
        {
            Ok(event) => Some(Ok(event)),
            Err(e) => {
                tracing::error!(error = %e, "an event cannot be serialised");
                None
            }
        }
    }))
}

/// Serves merged event sources: first a `ready` event (every consumer exists: what happens
/// from now on is sent), then the events until one source fails, the client goes away, or
/// shutdown; counted in `stockflow_sse_clients` while open.
fn serve(state: &AppState, sources: Vec<Events>, what: &'static str) -> Response {
    let open = Open::new();
    let ready = futures::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let live = futures::stream::select_all(sources)
        .take_while(move |item| {
            let go_on = match item {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, what, "a live stream lost its feed; the client reconnects");
                    false
                }
            };
            async move { go_on }
        })
        .filter_map(|item| async move { item.ok() });
    let events = ready
        .chain(live.map(Ok))
        .map(move |event: Result<Event, Infallible>| {
            let _open = &open;
            event
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(events)
        .keep_alive(heartbeat(state.sse_heartbeat))
        .into_response()
}

/// `GET /v1/skus/{sku}/stream`: the SKU's changes from now on as Server-Sent Events: a `ready`
/// event once it follows them, then a `change` per ledger entry (the location's levels before
/// and after) and an `availability` per channel quantity. A client opens it before reading the
/// current state, so nothing falls between the two.
pub(crate) async fn sku_stream(
    _: Authorized<Read>,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    sku_param(&sku)?;
    let open = async {
        let mut sources: Vec<Events> = Vec::new();
        for (stream, filter) in ledger_filters(&state.js, &sku).await? {
            let messages = ordered(&state.js, &stream, filter, DeliverPolicy::New)
                .await?
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            sources.push(as_events(messages, "change", ChangeJson::decode));
        }
        let messages = ordered(
            &state.js,
            subjects::AVAILABILITY,
            subjects::availability("*", &sku),
            DeliverPolicy::New,
        )
        .await?
        .messages()
        .await
        .map_err(|e| e.to_string())?;
        sources.push(as_events(
            messages,
            "availability",
            AvailabilityJson::decode,
        ));
        Ok::<_, String>(sources)
    };
    let sources = tokio::time::timeout(state.publish_timeout, open)
        .await
        .map_err(|_| ledger_unavailable("no answer in time"))?
        .map_err(ledger_unavailable)?;
    Ok(serve(&state, sources, "sku"))
}

/// `GET /v1/alerts/stream`: alerts as Server-Sent Events, `event: alert`, `id:` its sequence in
/// `ALERTS`. Starts after `Last-Event-ID` (or `?after=`; the header wins), or — without either —
/// with the newest alert of each kind for each SKU; then live.
pub(crate) async fn alerts_stream(
    _: Authorized<Read>,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut after = None;
    for (name, value) in &query {
        match name.as_str() {
            "after" => after = Some(sequence("after", value)?),
            other => {
                return Err(ApiError::invalid(
                    other,
                    format!("unknown parameter {other:?}; use after"),
                ))
            }
        }
    }
    if let Some(value) = headers.get("last-event-id") {
        let text = value.to_str().map_err(|_| {
            ApiError::invalid("Last-Event-ID", "Last-Event-ID is not a sequence number")
        })?;
        after = Some(sequence("Last-Event-ID", text)?);
    }
    let deliver = after.map_or(DeliverPolicy::LastPerSubject, deliver_from);
    let open = async {
        ordered(&state.js, subjects::ALERTS, "alerts.>".to_owned(), deliver)
            .await?
            .messages()
            .await
            .map_err(|e| e.to_string())
    };
    let messages = tokio::time::timeout(state.publish_timeout, open)
        .await
        .map_err(|_| alerts_unavailable("no answer in time"))?
        .map_err(alerts_unavailable)?;
    Ok(serve(
        &state,
        vec![as_events(messages, "alert", AlertJson::decode)],
        "alerts",
    ))
}

fn alerts_unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %error, "the ALERTS stream is unavailable");
    ApiError::unavailable(format!("the alerts did not answer: {error}; retry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_named_as_their_subjects_are() {
        let alert = StockAlert {
            kind: AlertKind::OutOfStock as i32,
            sku: "MUG".into(),
            ..Default::default()
        };
        let json = AlertJson::decode(&alert.encode_to_vec(), 7).expect("decodes");
        assert_eq!(json.kind, "out_of_stock");
        assert_eq!(json.sequence, 7);
    }
}
