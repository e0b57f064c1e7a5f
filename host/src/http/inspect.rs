//! Read-only endpoints: health, readiness, metrics, plugins, recent errors and the plugins'
//! key-value stores.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::ApiError;
use super::{AppState, PluginView, prometheus};
use crate::monitor::FailureRecord;
use crate::store::Versioned;

/// Records `/errors` returns when the client gives no `limit`.
const DEFAULT_ERRORS_LIMIT: usize = 100;

/// `GET /healthz`: the process is up and serving HTTP.
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: ready once the plugins are loaded, and no longer once shutdown began, so
/// a load balancer stops sending events before intake closes.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (status, text) = if !state.is_accepting() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !state.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else if state.log_unreachable() {
        (StatusCode::SERVICE_UNAVAILABLE, "the log's server is unreachable")
    } else {
        (StatusCode::OK, "ready")
    };
    (status, Json(json!({ "status": text }))).into_response()
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = prometheus::render(&state.metrics);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

/// One entry of `GET /plugins`: the plugin and its delivery counters.
#[derive(Debug, Serialize)]
pub(crate) struct PluginEntry {
    #[serde(flatten)]
    plugin: PluginView,
    counters: Counters,
}

/// A plugin's deliveries since it was subscribed.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Counters {
    succeeded: u64,
    /// Failed invocations by kind; kinds that never happened are left out.
    failed: BTreeMap<&'static str, u64>,
    /// Invocations timed (successful and failed).
    latency_count: u64,
    /// Their total duration.
    latency_sum_seconds: f64,
}

/// `GET /plugins`: every loaded plugin joined with the bus's counters for its subscription.
pub(crate) async fn plugins(State(state): State<Arc<AppState>>) -> Json<Vec<PluginEntry>> {
    let metrics = state.bus.metrics();
    let entries = state
        .plugins
        .plugins()
        .into_iter()
        .map(|plugin| {
            let mut counters = Counters::default();
            // Subscription names need not be unique: add up every one carrying the name.
            for subscription in metrics.subscriptions.iter().filter(|s| s.name == plugin.name) {
                counters.succeeded += subscription.succeeded;
                for (kind, count) in &subscription.failed {
                    *counters.failed.entry(kind.as_str()).or_default() += count;
                }
                counters.latency_count += subscription.latency.count();
                counters.latency_sum_seconds += subscription.latency.sum_seconds;
            }
            PluginEntry { plugin, counters }
        })
        .collect();
    Json(entries)
}

/// The query string of `GET /errors`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorsQuery {
    /// At most this many records (100 by default).
    limit: Option<usize>,
}

/// `GET /errors?limit=N`: the latest failure records, newest first.
pub(crate) async fn errors(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ErrorsQuery>, QueryRejection>,
) -> Result<Json<Vec<FailureRecord>>, ApiError> {
    let Query(query) = query.map_err(|_| {
        ApiError::BadRequest("query parameter `limit` must be a non-negative integer".to_owned())
    })?;
    let limit = query.limit.unwrap_or(DEFAULT_ERRORS_LIMIT);
    Ok(Json(state.errors.recent(limit)))
}

/// `GET /plugins/{name}/kv/{*key}`: one value of a plugin's store, as stored. JSON values
/// are served as `application/json` so they display as such; anything else as bytes.
pub(crate) async fn kv_value(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((plugin, key)) = path.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    // Either spelling of the name finds the plugin; its data is under the name it declares.
    let Some(plugin) = state.plugins.plugin(&plugin).map(|view| view.name) else {
        return Err(ApiError::NotFound(format!(
            "no plugin named {plugin:?} is loaded"
        )));
    };
    // A durable store reads on a blocking thread of its own.
    let value = state.kv.get(&plugin, &key).await.map_err(|error| {
        ApiError::Internal(
            anyhow::Error::new(error).context(format!("reading key {key:?} of plugin {plugin:?}")),
        )
    })?;
    let Some(Versioned { value, revision }) = value else {
        return Err(ApiError::NotFound(format!(
            "plugin {plugin:?} has no key {key:?}"
        )));
    };
    let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    // The revision counts the key's writes: a reader can tell a changed value.
    let etag = HeaderValue::from_str(&format!("\"{revision}\"")).expect("digits are a valid header value");
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::ETAG, etag),
        ],
        Body::from(value),
    )
        .into_response())
}

/// Any path no route matches.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}", uri.path()))
}

/// A known path with a method it does not serve (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not support {method}", uri.path()))
}
