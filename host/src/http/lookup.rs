//! Finding stored events: `GET /events`, `GET /events/{id}` and `GET /events/{id}/trace`,
//! each event with where its deliveries stand.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use crate::store::{DeliveryState, DeliveryView, EventLookup, EventQuery, Offset, StoredEvent};

/// Events `GET /events` returns when the client gives no `limit`.
const DEFAULT_LIMIT: usize = 50;

/// The most events one page of `GET /events` holds.
const MAX_LIMIT: usize = 1000;

/// The most events a trace holds; a larger correlation is cut, and says so.
pub(crate) const MAX_TRACE: usize = 10_000;

/// `?type=T&subject=S&after=N&before=N&limit=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    subject: Option<String>,
    after: Option<Offset>,
    before: Option<Offset>,
    limit: Option<usize>,
}

/// One page of `GET /events`.
#[derive(Debug, Serialize)]
pub(crate) struct EventPage {
    events: Vec<StoredEvent>,
    /// The query string of the next page, when the page is full.
    next: Option<String>,
}

/// `GET /events`: the newest events first (before `before`, when given), or the oldest
/// after `after`; optionally of one type and subject.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(params) = params.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "{}; the parameters are `type`, `subject`, `after` and `before` (offsets) and `limit` (at most {MAX_LIMIT})",
            rejection.body_text()
        ))
    })?;
    if params.after.is_some() && params.before.is_some() {
        return Err(ApiError::BadRequest(
            "give `after` (oldest first) or `before` (newest first), not both".to_owned(),
        ));
    }
    let limit = super::page_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let query = EventQuery {
        event_type: params.event_type,
        subject: params.subject,
        after: params.after,
        before: params.before,
        limit,
    };
    let lookup = lookup(&state)?;
    let mut events = lookup
        .page(query.clone())
        .await
        .map_err(|error| ApiError::storage(error, "listing events"))?;
    routed(&state, &*lookup, &mut events);
    let next = (events.len() == limit)
        .then(|| events.last())
        .flatten()
        .map(|last| next_page(&query, last.offset));
    Ok(Json(EventPage { events, next }))
}

/// The query string of the page after one ending at `offset`.
fn next_page(query: &EventQuery, offset: Offset) -> String {
    let mut next = form_urlencoded::Serializer::new(String::new());
    if let Some(event_type) = &query.event_type {
        next.append_pair("type", event_type);
    }
    if let Some(subject) = &query.subject {
        next.append_pair("subject", subject);
    }
    let direction = if query.after.is_some() { "after" } else { "before" };
    next.append_pair(direction, &offset.to_string());
    next.append_pair("limit", &query.limit.to_string());
    next.finish()
}

/// `?source=S`, to pick one of several events sharing an id.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceQuery {
    source: Option<String>,
}

/// `GET /events/{id}`: the event and where each of its deliveries stands.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<SourceQuery>, QueryRejection>,
) -> Result<Json<StoredEvent>, ApiError> {
    let lookup = lookup(&state)?;
    let mut found = find_one(&*lookup, id, params).await?;
    routed(&state, &*lookup, std::slice::from_mut(&mut found));
    Ok(Json(found))
}

/// One event of a trace, with the event of the trace that caused it.
#[derive(Debug, Serialize)]
pub(crate) struct TraceNode {
    #[serde(flatten)]
    event: StoredEvent,
    /// The offset of the event whose handler emitted this one (its `causationid`), when
    /// that event is in the trace.
    parent: Option<Offset>,
}

/// The answer of `GET /events/{id}/trace`.
#[derive(Debug, Serialize)]
pub(crate) struct Trace {
    /// The correlation followed: the event's `correlationid`, or its id when it has none
    /// (it started the saga).
    correlation: String,
    /// Every event of the correlation by offset; each names its parent.
    events: Vec<TraceNode>,
    /// Whether the correlation holds more events than a trace returns.
    truncated: bool,
}

/// `GET /events/{id}/trace`: every event of the event's correlation, each with its
/// parent (the event that caused it), the plugin that emitted it and its deliveries.
pub(crate) async fn trace(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<SourceQuery>, QueryRejection>,
) -> Result<Json<Trace>, ApiError> {
    let lookup = lookup(&state)?;
    let event = find_one(&*lookup, id, params).await?;
    let correlation = event.event.correlation_id().unwrap_or(&event.event.id).to_owned();
    let mut events = lookup
        .correlated(&correlation, MAX_TRACE + 1)
        .await
        .map_err(|error| ApiError::storage(error, "reading a trace"))?;
    let truncated = events.len() > MAX_TRACE;
    events.truncate(MAX_TRACE);
    routed(&state, &*lookup, &mut events);
    Ok(Json(Trace {
        correlation,
        events: with_parents(events),
        truncated,
    }))
}

/// Names each event's parent: the event of the trace whose id its `causationid` is (an
/// emitted event's source is its handler's, so the id alone decides; the earliest wins).
fn with_parents(events: Vec<StoredEvent>) -> Vec<TraceNode> {
    let mut by_id: HashMap<&str, Offset> = HashMap::new();
    for stored in &events {
        by_id.entry(stored.event.id.as_str()).or_insert(stored.offset);
    }
    let parents: Vec<Option<Offset>> = events
        .iter()
        .map(|stored| {
            stored
                .event
                .causation_id()
                .and_then(|cause| by_id.get(cause).copied())
                .filter(|parent| *parent != stored.offset)
        })
        .collect();
    events
        .into_iter()
        .zip(parents)
        .map(|(event, parent)| TraceNode { event, parent })
        .collect()
}

/// Keeps, of a log that does not store routes, the deliveries of the subscriptions each
/// event's type goes to now; one the log knows nothing of is listed as unknown.
fn routed(state: &AppState, lookup: &dyn EventLookup, events: &mut [StoredEvent]) {
    if lookup.routes_known() {
        return;
    }
    for stored in events {
        let subscribers = state.bus.subscribers_of(&stored.event.ty);
        stored
            .deliveries
            .retain(|delivery| subscribers.iter().any(|name| **name == *delivery.subscription));
        for name in subscribers {
            if !stored
                .deliveries
                .iter()
                .any(|delivery| *delivery.subscription == *name)
            {
                stored.deliveries.push(DeliveryView {
                    subscription: name.to_string(),
                    state: DeliveryState::Unknown {
                        reason: "the log holds nothing of this subscription's deliveries".to_owned(),
                    },
                    failures: 0,
                    last_failure: None,
                    unknown: Vec::new(),
                });
            }
        }
        stored
            .deliveries
            .sort_by(|a, b| a.subscription.cmp(&b.subscription));
    }
}

/// The one event `id` (and `?source=`) names: `404` if none, `409` listing the sources if
/// several share the id and no source was given.
async fn find_one(
    lookup: &dyn EventLookup,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<SourceQuery>, QueryRejection>,
) -> Result<StoredEvent, ApiError> {
    let Path(id) = id.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let Query(params) =
        params.map_err(|_| ApiError::BadRequest("the only query parameter is `source`".to_owned()))?;
    let mut found = lookup
        .find(&id, params.source.as_deref())
        .await
        .map_err(|error| ApiError::storage(error, "looking an event up"))?;
    match found.len() {
        0 => Err(ApiError::NotFound(match params.source {
            Some(source) => format!("no event with id {id:?} and source {source:?}"),
            None => format!("no event with id {id:?}"),
        })),
        1 => Ok(found.remove(0)),
        n => {
            let sources: Vec<&str> = found.iter().map(|stored| stored.event.source.as_str()).collect();
            Err(ApiError::Conflict(format!(
                "{n} events have id {id:?}; name one with `?source=`: {sources:?}"
            )))
        }
    }
}

/// The log's lookup, or `501` naming why there is none.
fn lookup(state: &AppState) -> Result<Arc<dyn EventLookup>, ApiError> {
    state.bus.storage().lookup.clone().ok_or_else(|| {
        ApiError::NotImplemented(
            "this host's event log keeps no events to look up: on NATS JetStream the history is off \
             (`[nats] history = \"0s\"`; set a duration to keep one), and the in-memory log keeps none; \
             the embedded log (`evhost run` without `--nats`) always answers"
                .to_owned(),
        )
    })
}
