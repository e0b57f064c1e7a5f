//! The one error type of the HTTP API.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bus::BusError;
use crate::store::StorageError;

/// Seconds a client is told to wait when the bus is full.
const RETRY_AFTER_FULL_SECS: u32 = 1;

/// Every way a request can fail. Client mistakes carry a message written for the client;
/// [`ApiError::Internal`] is logged when it becomes a response and the client only learns
/// that something went wrong on our side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request is malformed: bad JSON, a missing or invalid attribute, a bad parameter.
    #[error("{0}")]
    BadRequest(String),
    /// No token, a malformed or an unknown one.
    #[error("{0}")]
    Unauthorized(String),
    /// A known token without the scope the endpoint needs, or a request addressed to a
    /// name the host does not serve.
    #[error("{0}")]
    Forbidden(String),
    /// No such route, plugin or key.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body, or the batch, is larger than we take.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A CloudEvents format other than JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request is ambiguous as asked (several events share an id).
    #[error("{0}")]
    Conflict(String),
    /// The log in use cannot answer this endpoint; the message says why.
    #[error("{0}")]
    NotImplemented(String),
    /// Not accepting right now: shutting down, or full.
    #[error("{message}")]
    Unavailable {
        /// What the client reads.
        message: String,
        /// When set, a `Retry-After` header in seconds: trying again soon can succeed.
        retry_after: Option<u32>,
    },
    /// Our fault. The detail goes to the log, not to the client.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    /// The status, the message the client may see, and the `Retry-After` seconds. Logs
    /// internal errors, so call it once per error.
    pub(crate) fn into_parts(self) -> (StatusCode, String, Option<u32>) {
        match self {
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, message, None),
            Self::Unauthorized(message) => (StatusCode::UNAUTHORIZED, message, None),
            Self::Forbidden(message) => (StatusCode::FORBIDDEN, message, None),
            Self::NotFound(message) => (StatusCode::NOT_FOUND, message, None),
            Self::MethodNotAllowed(message) => (StatusCode::METHOD_NOT_ALLOWED, message, None),
            Self::PayloadTooLarge(message) => (StatusCode::PAYLOAD_TOO_LARGE, message, None),
            Self::UnsupportedMediaType(message) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, message, None),
            Self::Conflict(message) => (StatusCode::CONFLICT, message, None),
            Self::NotImplemented(message) => (StatusCode::NOT_IMPLEMENTED, message, None),
            Self::Unavailable { message, retry_after } => {
                (StatusCode::SERVICE_UNAVAILABLE, message, retry_after)
            }
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "HTTP request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error; the host's log has the details".to_owned(),
                    None,
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, retry_after) = self.into_parts();
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl ApiError {
    /// A store failure while `doing` something: `503` with `Retry-After` when trying
    /// again may work (the log's server unreachable, its disk busy), else ours to fix.
    pub(crate) fn storage(error: StorageError, doing: &str) -> Self {
        if error.is_transient() {
            Self::Unavailable {
                message: format!("the event log is unavailable ({}); retry later", error.message()),
                retry_after: Some(1),
            }
        } else {
            Self::Internal(anyhow::Error::new(error).context(doing.to_owned()))
        }
    }
}

impl From<BusError> for ApiError {
    fn from(error: BusError) -> Self {
        match error {
            BusError::InvalidEvent { id, source } => Self::BadRequest(format!("event {id:?}: {source}")),
            BusError::Stopped => Self::Unavailable {
                message: "evhost is shutting down and accepts no new events".to_owned(),
                retry_after: None,
            },
            BusError::Full { capacity } => Self::Unavailable {
                message: format!("evhost is at capacity ({capacity} events in flight); retry later"),
                retry_after: Some(RETRY_AFTER_FULL_SECS),
            },
            BusError::BatchTooLarge { len, capacity } => Self::PayloadTooLarge(format!(
                "a batch of {len} events exceeds the bus capacity of {capacity} events; split it"
            )),
            BusError::SyncUnsupported => Self::BadRequest(
                "`wait=true` is not available when hosts share a NATS JetStream log: the event's \
                 handlers may run on any of them"
                    .to_owned(),
            ),
            // Nothing of the request was accepted, and trying again may work: the client
            // retries safely.
            BusError::Storage(error) if error.is_transient() => Self::storage(error, "publishing to the bus"),
            // The log failing, or a bus error the ingest path cannot cause: ours to fix.
            other => Self::Internal(anyhow::Error::new(other).context("publishing to the bus")),
        }
    }
}
