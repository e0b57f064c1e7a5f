//! The dead-letter queue over HTTP: list, show, replay, purge.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::ApiError;
use crate::bus::{DeadLetter, DeadLetterFilter};

/// The answer of `POST /dlq/replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// Dead letters delivered again.
    pub replayed: usize,
}

/// The answer of `DELETE /dlq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// Dead letters dropped.
    pub purged: u64,
}

/// `?plugin=NAME&id=N&all=true`, and for listing `after=ID&limit=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqQuery {
    plugin: Option<String>,
    id: Option<u64>,
    #[serde(default)]
    all: bool,
    after: Option<u64>,
    limit: Option<usize>,
}

/// The body `POST /dlq/replay` may carry instead of a query: the dead letters to replay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    ids: Vec<u64>,
}

/// How many dead letters an admin action touched, for the audit log (a response
/// extension the authorization middleware reads).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditCount(pub(crate) u64);

impl DlqQuery {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            id: self.id,
            subscription: self.plugin.clone(),
        }
    }
}

fn query(query: Result<Query<DlqQuery>, QueryRejection>) -> Result<DlqQuery, ApiError> {
    query.map(|Query(query)| query).map_err(|_| {
        ApiError::BadRequest(
            "query parameters are `plugin` (a name), `id` (a number), `all=true`, and to list a page \
             `after` (a dead letter's id) and `limit`"
                .to_owned(),
        )
    })
}

/// `GET /dlq?plugin=NAME&after=ID&limit=N`: dead letters by plugin and offset; a page of
/// `limit` starts after the dead letter `after` (the last of the previous page).
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    params: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let params = query(params)?;
    let mut letters = read_dead_letters(&state, params.filter()).await?;
    if let Some(after) = params.after {
        let Some(position) = letters.iter().position(|letter| letter.id == after) else {
            return Err(ApiError::NotFound(format!(
                "no dead letter {after} to list after (replayed or purged since): start again without `after`"
            )));
        };
        letters.drain(..=position);
    }
    if let Some(limit) = params.limit {
        letters.truncate(limit);
    }
    Ok(Json(letters))
}

/// One dead letter of a replay preview: which version failed it and which would run it.
#[derive(Debug, Serialize)]
pub(crate) struct PreviewEntry {
    id: u64,
    plugin: String,
    event_id: String,
    event_type: String,
    /// The version of its last failure.
    failed_version: Option<String>,
    /// The version serving the plugin now; absent when it is not loaded (a replay leaves
    /// the letter in the queue).
    current_version: Option<String>,
    /// Whether another version than the one that failed is loaded.
    fixed_version_loaded: bool,
}

/// `GET /dlq/preview?id=N`, `?ids=1,2,3` or `?all=true[&plugin=P]`: what a replay of those
/// dead letters would run — each letter's failed version next to the version loaded now.
pub(crate) async fn preview(
    State(state): State<Arc<AppState>>,
    params: Result<Query<PreviewQuery>, QueryRejection>,
) -> Result<Json<Vec<PreviewEntry>>, ApiError> {
    let Query(params) = params.map_err(|_| {
        ApiError::BadRequest(
            "query parameters are `ids` (comma-separated numbers), `plugin` (a name) and `all=true`"
                .to_owned(),
        )
    })?;
    let ids = params.ids()?;
    if ids.is_none() && !params.all {
        return Err(ApiError::BadRequest(
            "say which dead letters to preview: `ids=1,2,3`, or `all=true` (optionally with `plugin=NAME`)"
                .to_owned(),
        ));
    }
    let filter = DeadLetterFilter {
        id: None,
        subscription: params.plugin.clone(),
    };
    let letters = read_dead_letters(&state, filter).await?;
    let entries = letters
        .into_iter()
        .filter(|letter| ids.as_ref().is_none_or(|ids| ids.contains(&letter.id)))
        .map(|letter| {
            let failed_version = letter.failures.last().and_then(|f| f.handler_version.clone());
            let current_version = state.plugins.plugin(&letter.subscription).map(|view| view.hash);
            PreviewEntry {
                id: letter.id,
                fixed_version_loaded: current_version.is_some() && current_version != failed_version,
                plugin: letter.subscription,
                event_id: letter.event.id.clone(),
                event_type: letter.event.ty.clone(),
                failed_version,
                current_version,
            }
        })
        .collect();
    Ok(Json(entries))
}

/// `?ids=1,2,3&plugin=NAME&all=true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewQuery {
    ids: Option<String>,
    plugin: Option<String>,
    #[serde(default)]
    all: bool,
}

impl PreviewQuery {
    fn ids(&self) -> Result<Option<Vec<u64>>, ApiError> {
        self.ids
            .as_deref()
            .map(|ids| {
                ids.split(',')
                    .map(|id| {
                        id.trim().parse().map_err(|_| {
                            ApiError::BadRequest(format!(
                                "`ids` holds {id:?}, which is not a dead letter's id"
                            ))
                        })
                    })
                    .collect()
            })
            .transpose()
    }
}

/// `GET /dlq/{id}`: one dead letter with its failure history.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<DeadLetter>, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::BadRequest("a dead letter's id is a number".to_owned()))?;
    let filter = DeadLetterFilter {
        id: Some(id),
        ..Default::default()
    };
    read_dead_letters(&state, filter)
        .await?
        .pop()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no dead letter with id {id}")))
}

/// `POST /dlq/replay?id=N` or `?all=true` (optionally `&plugin=NAME`), or with a JSON
/// body `{"ids": [N, …]}`: delivers the dead letters again to their plugin's current
/// version.
pub(crate) async fn replay(
    State(state): State<Arc<AppState>>,
    params: Result<Query<DlqQuery>, QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let body = (!body.is_empty())
        .then(|| serde_json::from_slice::<ReplayBody>(&body))
        .transpose()
        .map_err(|error| ApiError::BadRequest(format!("the body is {{\"ids\": [N, …]}}: {error}")))?;
    let replayed = match body {
        Some(ReplayBody { ids }) => {
            if params.id.is_some() || params.all || params.plugin.is_some() {
                return Err(ApiError::BadRequest(
                    "name the dead letters in the body or in the query, not both".to_owned(),
                ));
            }
            let mut replayed = 0;
            for id in ids {
                let filter = DeadLetterFilter {
                    id: Some(id),
                    subscription: None,
                };
                replayed += state.bus.replay_dead_letters(&filter).await?;
            }
            replayed
        }
        None if params.id.is_none() && !params.all => {
            return Err(ApiError::BadRequest(
                "say which dead letters to replay: `id=N`, `all=true` (optionally with `plugin=NAME`), \
                 or a body {\"ids\": [N, …]}"
                    .to_owned(),
            ));
        }
        None => state.bus.replay_dead_letters(&params.filter()).await?,
    };
    let mut response = Json(Replayed { replayed }).into_response();
    response.extensions_mut().insert(AuditCount(replayed as u64));
    Ok(response)
}

/// `DELETE /dlq?id=N` or `?all=true` (optionally `&plugin=NAME`): drops dead letters.
pub(crate) async fn purge(
    State(state): State<Arc<AppState>>,
    params: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    if params.id.is_none() && params.plugin.is_none() && !params.all {
        return Err(ApiError::BadRequest(
            "say which dead letters to purge: `id=N`, `plugin=NAME` or `all=true`".to_owned(),
        ));
    }
    let purged = state.bus.purge_dead_letters(&params.filter()).await?;
    let mut response = Json(Purged { purged }).into_response();
    response.extensions_mut().insert(AuditCount(purged));
    Ok(response)
}

/// Reads the queue (a durable store reads it off the async threads).
async fn read_dead_letters(state: &AppState, filter: DeadLetterFilter) -> Result<Vec<DeadLetter>, ApiError> {
    Ok(state.bus.dead_letters(&filter).await?)
}
