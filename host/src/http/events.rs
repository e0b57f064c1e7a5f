//! `POST /events`: the CloudEvents HTTP protocol binding.
//!
//! The `Content-Type` picks the mode:
//! - `application/cloudevents+json`: structured mode, the body is one event in the JSON
//!   format;
//! - `application/cloudevents-batch+json`: batch mode, the body is a JSON array of events,
//!   all accepted or none;
//! - anything else: binary mode, attributes in `ce-*` headers, the body is the data and
//!   the `Content-Type` its `datacontenttype`.
//!
//! Without `?wait=true` the answer is `202 {"accepted": [ids], "duplicates": [ids]}` once
//! the bus accepted the events (stored them, on the durable log). An event whose `source` +
//! `id` was accepted before is not published again: it is listed in `accepted` — it is
//! safely in the log — and in `duplicates`, so a client retrying a request can send it all
//! again. With it, each event is published as `publish_sync` and the answer is `200` with
//! every handler's outcome, also when a handler failed (`"ok": false`): the request did
//! what it asked — the events were accepted and delivered — and a `5xx` would invite
//! clients and proxies to re-send events that were already handled. If handling takes
//! longer than the request timeout, the answer is `504` with the same body: what finished,
//! and for each event still in progress an entry with `"ok": false` saying so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::AppState;
use super::error::ApiError;
use crate::bus::{AsyncEventBus, BusError, DeliveryReport, EventBus};
use crate::event::{Data, Event, EventError};
use crate::monitor::FailureKind;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";
/// Prefix of every CloudEvents media type; one we do not know is a format we do not speak.
const CLOUDEVENTS_PREFIX: &str = "application/cloudevents";
/// Prefix of the headers that carry attributes in binary mode.
const HEADER_PREFIX: &str = "ce-";

/// The query string of `POST /events`.
#[derive(Debug, Deserialize)]
pub(crate) struct PublishQuery {
    /// `true` (or bare `?wait`) to publish synchronously and report every outcome.
    wait: Option<String>,
}

/// `202` body: the ids of the accepted events, in request order, and of those among them
/// that had been accepted before (and were not published again).
#[derive(Debug, Serialize)]
struct Accepted {
    accepted: Vec<String>,
    duplicates: Vec<String>,
}

/// `200` body of `?wait=true` (also of its `504`, with what was known by then).
#[derive(Debug, Serialize)]
struct Delivered {
    /// True when every event was accepted and every handler succeeded.
    ok: bool,
    /// Ids of the events the bus accepted, in request order.
    accepted: Vec<String>,
    /// One entry per event of the request, in request order.
    events: Vec<EventDelivery>,
}

#[derive(Debug, Serialize)]
struct EventDelivery {
    id: String,
    /// True when the event was accepted and every handler succeeded.
    ok: bool,
    /// The event had been accepted before: not published again, no outcomes.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    /// One per subscribed handler (empty when nothing is subscribed); absent when the event
    /// was not accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcomes: Option<Vec<Outcome>>,
    /// Why the event was not accepted or not handled.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Outcome {
    /// The subscription's name: the plugin's name for a Wasm plugin.
    plugin: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<FailureKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Handles `POST /events`.
pub(crate) async fn publish(
    State(state): State<Arc<AppState>>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !state.is_accepting() {
        return Err(ApiError::from(BusError::Stopped));
    }
    if state.log_unreachable() {
        return Err(ApiError::Unavailable {
            message: "the log's server is unreachable; retry later".to_owned(),
            retry_after: Some(1),
        });
    }
    let wait = wait_requested(query)?;
    let body = body.map_err(|rejection| body_error(rejection, state.max_body_bytes))?;
    let events = parse_events(&headers, body)?;
    if wait {
        return publish_and_report(&state.bus, events, state.request_timeout).await;
    }
    let ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
    // One event is a batch of one: `publish` accepts exactly the same way.
    let appended = state.bus.publish_batch_offsets(events).await?;
    let duplicates = ids
        .iter()
        .zip(&appended)
        .filter(|(_, appended)| appended.duplicate)
        .map(|(id, _)| id.clone())
        .collect();
    let body = Accepted {
        accepted: ids,
        duplicates,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

fn wait_requested(query: Result<Query<PublishQuery>, QueryRejection>) -> Result<bool, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    match query.wait.as_deref() {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "query parameter `wait` must be `true` or `false`, got {other:?}"
        ))),
    }
}

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("the request body exceeds the limit of {limit} bytes"))
    } else {
        ApiError::BadRequest(format!(
            "could not read the request body: {}",
            rejection.body_text()
        ))
    }
}

/// The events of a request, validated, in request order.
fn parse_events(headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, ApiError> {
    let content_type =
        match headers.get(header::CONTENT_TYPE) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::BadRequest("the `Content-Type` header is not valid ASCII".to_owned())
            })?),
        };
    let media_type = content_type.and_then(media_type);
    match media_type.as_deref() {
        Some(STRUCTURED) => Event::from_json(&body)
            .map(|event| vec![event])
            .map_err(|error| ApiError::BadRequest(error.to_string())),
        Some(BATCH) => parse_batch(&body),
        Some(other) if other.starts_with(CLOUDEVENTS_PREFIX) => Err(ApiError::UnsupportedMediaType(format!(
            "CloudEvents format `{other}` is not supported; send `{STRUCTURED}`, `{BATCH}` or an event in binary mode"
        ))),
        _ => parse_binary(headers, content_type, body).map(|event| vec![event]),
    }
}

/// The media type of a `Content-Type` value, without parameters, lower-cased; `None` when
/// it is not a media type.
fn media_type(content_type: &str) -> Option<String> {
    let media: mime::Mime = content_type.trim().parse().ok()?;
    Some(media.essence_str().to_ascii_lowercase())
}

/// Batch mode: every event is validated before any is published, so one bad event refuses
/// the whole batch.
fn parse_batch(body: &[u8]) -> Result<Vec<Event>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::BadRequest(format!("batch is not valid JSON: {error}")))?;
    let Value::Array(items) = value else {
        return Err(ApiError::BadRequest(format!(
            "a batch must be a JSON array of events, got {}",
            crate::event::json_kind(&value)
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            Event::from_value(item).map_err(|error| {
                ApiError::BadRequest(format!(
                    "event at index {index}: {error}; no event of the batch was accepted"
                ))
            })
        })
        .collect()
}

/// Binary mode: attributes from `ce-*` headers, data from the body.
fn parse_binary(headers: &HeaderMap, content_type: Option<&str>, body: Bytes) -> Result<Event, ApiError> {
    let mut attributes = Map::new();
    for (name, value) in headers {
        // `HeaderName` is lower-case already, so extension names arrive lower-cased.
        let Some(attribute) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        if matches!(attribute, "datacontenttype" | "data" | "data_base64") {
            return Err(ApiError::BadRequest(format!(
                "header `{name}` is not allowed in binary mode: the body is the data and `Content-Type` its datacontenttype"
            )));
        }
        let value = header_value(name.as_str(), value)?;
        if attributes
            .insert(attribute.to_owned(), Value::String(value))
            .is_some()
        {
            return Err(ApiError::BadRequest(format!(
                "header `{name}` appears more than once"
            )));
        }
    }
    let mut event = Event::from_value(Value::Object(attributes)).map_err(binary_mode_error)?;
    event.datacontenttype = content_type.map(str::to_owned);
    event.data = if body.is_empty() {
        None
    } else if content_type.is_some_and(crate::event::is_json_media_type) {
        match serde_json::from_slice(&body) {
            // Structured mode reads `"data": null` as no data; do the same here.
            Ok(Value::Null) => None,
            Ok(json) => Some(Data::Json(json)),
            Err(error) => {
                return Err(ApiError::BadRequest(format!(
                    "the body is not valid JSON although `Content-Type` is {:?}: {error}",
                    content_type.unwrap_or_default()
                )));
            }
        }
    } else {
        Some(Data::Binary(body.to_vec()))
    };
    Ok(event)
}

/// Says which header to fix: in binary mode the attributes are headers.
fn binary_mode_error(error: EventError) -> ApiError {
    ApiError::BadRequest(match error {
        EventError::Missing(attribute) => format!(
            "missing required attribute `{attribute}`: binary mode needs a `{HEADER_PREFIX}{attribute}` header \
             (or send one event as `Content-Type: {STRUCTURED}`)"
        ),
        EventError::Empty(attribute) => format!("header `{HEADER_PREFIX}{attribute}` must not be empty"),
        other => format!("binary mode (`{HEADER_PREFIX}*` headers): {other}"),
    })
}

/// A `ce-*` header value, percent-decoded as the HTTP binding requires for characters
/// outside printable ASCII.
fn header_value(name: &str, value: &HeaderValue) -> Result<String, ApiError> {
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest(format!(
            "header `{name}` contains non-ASCII bytes; percent-encode them as UTF-8"
        ))
    })?;
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| ApiError::BadRequest(format!("header `{name}` does not percent-decode to UTF-8")))
}

/// What became of one event of a `?wait=true` request.
enum Published {
    /// Accepted and delivered; the report says how each handler did.
    Delivered(DeliveryReport),
    /// The bus refused it (or gave it up while stopping).
    Refused(ApiError),
    /// Not published: an earlier event with the same subject was refused (publishing it
    /// anyway would break the subject's order), or the request timed out before its turn.
    Held(String),
    /// Still being published or handled when the request timed out.
    Unknown(String),
}

/// Where one event of a `?wait=true` request stands while its chain runs.
enum Slot {
    Waiting,
    Publishing,
    Done(Published),
}

/// The events' slots, shared by the chains so that a request that times out still knows
/// what finished.
type Slots = parking_lot::Mutex<Vec<Slot>>;

/// `?wait=true`: publishes each event with `publish_sync` and reports every outcome.
///
/// Events sharing a subject go one after another, each once the previous one was handled,
/// so the subject's order holds; different subjects (and events without one) run
/// concurrently, so the request takes about as long as its longest subject chain. If that
/// takes longer than `budget`, the answer is `504` with what is known by then: the events
/// still in progress carry on in the bus (accepting an event finishes even when its
/// publisher gives up), and re-sending them with the same `source` and `id` is safe.
async fn publish_and_report(
    bus: &AsyncEventBus,
    events: Vec<Event>,
    budget: Duration,
) -> Result<Response, ApiError> {
    let ids: Vec<String> = events.iter().map(|event| event.id.clone()).collect();
    let slots: Slots = parking_lot::Mutex::new((0..ids.len()).map(|_| Slot::Waiting).collect());
    let chains = chains_by_subject(events);
    let all = futures::future::join_all(chains.into_iter().map(|chain| publish_chain(bus, chain, &slots)));
    let timed_out = tokio::time::timeout(budget, all).await.is_err();
    let results: Vec<Published> = slots
        .into_inner()
        .into_iter()
        .map(|slot| match slot {
            Slot::Done(published) => published,
            Slot::Waiting => Published::Held(format!(
                "not published: the request timed out after {} ms before its turn",
                budget.as_millis()
            )),
            Slot::Publishing => Published::Unknown(format!(
                "still being published or handled when the request timed out after {} ms; it may have been \
                 accepted, and re-sending it with the same source and id is safe",
                budget.as_millis()
            )),
        })
        .collect();
    if timed_out {
        return Ok((StatusCode::GATEWAY_TIMEOUT, Json(delivered(ids, results))).into_response());
    }

    // Nothing accepted: answer as an ordinary publish would, so the client retries it all.
    if !results.iter().any(|r| matches!(r, Published::Delivered(_))) {
        let refusal = results.into_iter().find_map(|r| match r {
            Published::Refused(error) => Some(error),
            _ => None,
        });
        return match refusal {
            Some(error) => Err(error),
            // An empty batch: nothing to do, nothing failed.
            None => Ok(Json(Delivered {
                ok: true,
                accepted: Vec::new(),
                events: Vec::new(),
            })
            .into_response()),
        };
    }
    Ok(Json(delivered(ids, results)).into_response())
}

/// Groups events by subject, keeping request order within each group, and gives every
/// event without a subject a group of its own. Each entry carries its request index.
fn chains_by_subject(events: Vec<Event>) -> Vec<Vec<(usize, Event)>> {
    let mut chains: Vec<Vec<(usize, Event)>> = Vec::new();
    let mut chain_of_subject: HashMap<String, usize> = HashMap::new();
    for (index, event) in events.into_iter().enumerate() {
        let chain = match &event.subject {
            Some(subject) => *chain_of_subject.entry(subject.clone()).or_insert_with(|| {
                chains.push(Vec::new());
                chains.len() - 1
            }),
            None => {
                chains.push(Vec::new());
                chains.len() - 1
            }
        };
        chains[chain].push((index, event));
    }
    chains
}

/// Publishes one subject's events one after another, recording each outcome in `slots`
/// as it comes. After a refusal the rest are held back rather than handled out of order.
async fn publish_chain(bus: &AsyncEventBus, chain: Vec<(usize, Event)>, slots: &Slots) {
    let set = |index: usize, slot: Slot| {
        slots.lock()[index] = slot;
    };
    let mut refused: Option<String> = None;
    for (index, event) in chain {
        let result = if let Some(earlier) = &refused {
            Published::Held(format!(
                "not published: the earlier event {earlier:?} with the same subject was not accepted"
            ))
        } else {
            set(index, Slot::Publishing);
            let id = event.id.clone();
            match bus.publish_sync(event).await {
                Ok(report) | Err(BusError::HandlersFailed(report)) => Published::Delivered(report),
                Err(error) => {
                    refused = Some(id);
                    Published::Refused(error.into())
                }
            }
        };
        set(index, Slot::Done(result));
    }
}

/// The `200` body: one entry per event, in request order.
fn delivered(ids: Vec<String>, results: Vec<Published>) -> Delivered {
    let mut accepted = Vec::new();
    let events: Vec<EventDelivery> = ids
        .into_iter()
        .zip(results)
        .map(|(id, result)| match result {
            Published::Delivered(report) => {
                accepted.push(id.clone());
                let outcomes: Vec<Outcome> = report
                    .outcomes
                    .into_iter()
                    .map(|outcome| Outcome {
                        plugin: outcome.subscription,
                        ok: outcome.error.is_none(),
                        kind: outcome.error.as_ref().map(|e| e.kind()),
                        message: outcome.error.map(|e| e.message().to_owned()),
                    })
                    .collect();
                EventDelivery {
                    id,
                    ok: outcomes.iter().all(|o| o.ok),
                    duplicate: report.duplicate,
                    outcomes: Some(outcomes),
                    error: None,
                }
            }
            Published::Refused(error) => EventDelivery {
                id,
                ok: false,
                duplicate: false,
                outcomes: None,
                // `into_parts` logs an internal error and keeps its detail from the client.
                error: Some(error.into_parts().1),
            },
            Published::Held(message) | Published::Unknown(message) => EventDelivery {
                id,
                ok: false,
                duplicate: false,
                outcomes: None,
                error: Some(message),
            },
        })
        .collect();
    Delivered {
        ok: events.iter().all(|e| e.ok),
        accepted,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_ignore_parameters_and_case() {
        assert_eq!(
            media_type("Application/CloudEvents+JSON; charset=utf-8").as_deref(),
            Some(STRUCTURED)
        );
        assert_eq!(media_type("not a media type"), None);
    }
}
