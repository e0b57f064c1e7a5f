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
use super::{AppState, PluginEvent, PluginView, prometheus};
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
    let plugin = namespace(&state, &plugin)?;
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

/// Keys `GET /plugins/{name}/kv` returns when the client gives no `limit`.
const DEFAULT_KEYS_LIMIT: usize = 50;

/// The most keys one page holds.
const MAX_KEYS_LIMIT: usize = 1000;

/// `?prefix=P&after=K&limit=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeysQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// One key of `GET /plugins/{name}/kv` with its value: `json` when the value is JSON,
/// else `base64` of its bytes.
#[derive(Debug, Serialize)]
pub(crate) struct KeyEntry {
    key: String,
    revision: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    json: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base64: Option<String>,
}

/// One page of `GET /plugins/{name}/kv`.
#[derive(Debug, Serialize)]
pub(crate) struct KeysPage {
    entries: Vec<KeyEntry>,
    /// The `after` of the next page, when there is one.
    next_after: Option<String>,
}

/// `GET /plugins/{name}/kv?prefix=P&after=K&limit=N`: a page of the plugin's keys in
/// order, with their values; only keys starting with `prefix`, after `after`.
pub(crate) async fn kv_keys(
    State(state): State<Arc<AppState>>,
    plugin: Result<Path<String>, PathRejection>,
    params: Result<Query<KeysQuery>, QueryRejection>,
) -> Result<Json<KeysPage>, ApiError> {
    let Path(plugin) = plugin.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let Query(params) = params.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "{}; the parameters are `prefix`, `after` (a key) and `limit` (at most {MAX_KEYS_LIMIT})",
            rejection.body_text()
        ))
    })?;
    let limit = super::page_limit(params.limit, DEFAULT_KEYS_LIMIT, MAX_KEYS_LIMIT)?;
    let namespace = namespace(&state, &plugin)?;
    let prefix = params.prefix.unwrap_or_default();
    let read_error = |error| {
        ApiError::Internal(
            anyhow::Error::new(error).context(format!("listing the keys of plugin {namespace:?}")),
        )
    };
    let mut keys = Vec::new();
    // Keys come after `after`; the prefix itself is a key too, so without `after` it is
    // looked up first and the listing starts after it.
    let after = match params.after {
        Some(after) if after >= prefix => after,
        _ => {
            if !prefix.is_empty()
                && state
                    .kv
                    .get(&namespace, &prefix)
                    .await
                    .map_err(read_error)?
                    .is_some()
            {
                keys.push(prefix.clone());
            }
            prefix.clone()
        }
    };
    let page = state
        .kv
        .list_keys(
            &namespace,
            (!after.is_empty()).then_some(after.as_str()),
            limit + 1 - keys.len(),
        )
        .await
        .map_err(read_error)?;
    let past_prefix = page.keys.iter().any(|key| !key.starts_with(&prefix));
    keys.extend(page.keys.into_iter().take_while(|key| key.starts_with(&prefix)));
    let more = keys.len() > limit || (page.more && !past_prefix);
    keys.truncate(limit);
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        // A key deleted since it was listed is left out.
        let Some(Versioned { value, revision }) = state.kv.get(&namespace, &key).await.map_err(read_error)?
        else {
            continue;
        };
        let (json, base64) = match serde_json::from_slice(&value) {
            Ok(json) => (Some(json), None),
            Err(_) => (
                None,
                Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &value,
                )),
            ),
        };
        entries.push(KeyEntry {
            key,
            revision,
            json,
            base64,
        });
    }
    let next_after = more
        .then(|| entries.last().map(|entry| entry.key.clone()))
        .flatten();
    Ok(Json(KeysPage { entries, next_after }))
}

/// The namespace of the plugin `plugin` names (either spelling finds it; its data is
/// under the name it declares), or `404`.
fn namespace(state: &AppState, plugin: &str) -> Result<String, ApiError> {
    state
        .plugins
        .plugin(plugin)
        .map(|view| view.name)
        .ok_or_else(|| ApiError::NotFound(format!("no plugin named {plugin:?} is loaded")))
}

/// The answer of `GET /config`.
#[derive(Debug, Serialize)]
pub(crate) struct ConfigView {
    settings: Arc<Vec<crate::config::Setting>>,
}

/// `GET /config`: the effective configuration, each setting with its source.
pub(crate) async fn config(State(state): State<Arc<AppState>>) -> Result<Json<ConfigView>, ApiError> {
    let settings = state
        .config
        .clone()
        .ok_or_else(|| ApiError::NotFound("this host was not started from a configuration".to_owned()))?;
    Ok(Json(ConfigView { settings }))
}

/// The answer of `GET /plugins/{name}/history`.
#[derive(Debug, Serialize)]
pub(crate) struct PluginHistoryView {
    plugin: String,
    /// The hash serving now; absent when the plugin is not loaded (removed, or refused
    /// before it ever loaded).
    serving: Option<String>,
    /// Oldest first; the latest [`crate::plugins::PluginHistory`] keeps.
    changes: Vec<PluginEvent>,
}

/// `GET /plugins/{name}/history`: what happened to a plugin, oldest first. Answers for a
/// plugin no longer loaded too (removed, or refused), as long as its changes are kept.
pub(crate) async fn plugin_history(
    State(state): State<Arc<AppState>>,
    plugin: Result<Path<String>, PathRejection>,
) -> Result<Json<PluginHistoryView>, ApiError> {
    let Path(plugin) = plugin.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let serving = state.plugins.plugin(&plugin);
    let changes = state.plugins.history(&plugin);
    if serving.is_none() && changes.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no plugin named {plugin:?} is loaded or has a history"
        )));
    }
    Ok(Json(PluginHistoryView {
        plugin: serving.as_ref().map_or(plugin, |view| view.name.clone()),
        serving: serving.map(|view| view.hash),
        changes,
    }))
}

/// Any path no route matches.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no endpoint {method} {}", uri.path()))
}

/// A known path with a method it does not serve (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not support {method}", uri.path()))
}
