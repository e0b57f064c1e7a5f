//! The dead-letter queue over HTTP: list, show, replay, purge.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
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

/// `?plugin=NAME&id=N&all=true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqQuery {
    plugin: Option<String>,
    id: Option<u64>,
    #[serde(default)]
    all: bool,
}

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
            "query parameters are `plugin` (a name), `id` (a number) and `all=true`".to_owned(),
        )
    })
}

/// `GET /dlq?plugin=NAME`: dead letters, oldest first.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    params: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let filter = query(params)?.filter();
    Ok(Json(read_dead_letters(&state, filter).await?))
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

/// `POST /dlq/replay?id=N` or `?all=true` (optionally `&plugin=NAME`): delivers the dead
/// letters again to their plugin's current version.
pub(crate) async fn replay(
    State(state): State<Arc<AppState>>,
    params: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<Replayed>, ApiError> {
    let params = query(params)?;
    if params.id.is_none() && !params.all {
        return Err(ApiError::BadRequest(
            "say which dead letters to replay: `id=N`, or `all=true` (optionally with `plugin=NAME`)"
                .to_owned(),
        ));
    }
    let replayed = state.bus.replay_dead_letters(&params.filter()).await?;
    Ok(Json(Replayed { replayed }))
}

/// `DELETE /dlq?id=N` or `?all=true` (optionally `&plugin=NAME`): drops dead letters.
pub(crate) async fn purge(
    State(state): State<Arc<AppState>>,
    params: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<Purged>, ApiError> {
    let params = query(params)?;
    if params.id.is_none() && params.plugin.is_none() && !params.all {
        return Err(ApiError::BadRequest(
            "say which dead letters to purge: `id=N`, `plugin=NAME` or `all=true`".to_owned(),
        ));
    }
    let purged = state.bus.purge_dead_letters(&params.filter()).await?;
    Ok(Json(Purged { purged }))
}

/// Reads the queue (a durable store reads it off the async threads).
async fn read_dead_letters(state: &AppState, filter: DeadLetterFilter) -> Result<Vec<DeadLetter>, ApiError> {
    Ok(state.bus.dead_letters(&filter).await?)
}
