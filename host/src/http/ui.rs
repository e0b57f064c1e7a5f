//! The web UI: its files, embedded in the binary, and its session endpoint.
//!
//! `GET /ui` serves a single page written as plain ES modules (`host/ui/`), with uPlot
//! vendored for the charts; nothing is fetched from elsewhere, so it works air-gapped. The
//! page is a client of the API like any other: every figure it shows comes from an
//! endpoint documented in the book.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{AUDIT_TARGET, Scope};
use super::error::ApiError;
use super::session::{CSRF_HEADER, Session};

/// An embedded file: its path under `/ui/`, its media type and its bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $media_type:expr) => {
        Asset {
            path: $path,
            media_type: $media_type,
            bytes: include_bytes!(concat!("../../ui/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the UI.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("live.js", JS),
    asset!("pages/overview.js", JS),
    asset!("pages/plugins.js", JS),
    asset!("pages/errors.js", JS),
    asset!("pages/dlq.js", JS),
    asset!("pages/events.js", JS),
    asset!("pages/kv.js", JS),
    asset!("pages/config.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uPlot.iife.min.js", JS),
    asset!("vendor/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/LICENSE-uPlot.txt", "text/plain; charset=utf-8"),
];

/// `GET /ui`: the page lives at `/ui/`, so that its relative links resolve under it.
pub(crate) async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`: the page.
pub(crate) async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{*file}`: one of the page's files.
pub(crate) async fn file(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(path: &str) -> Response {
    match ASSETS.iter().find(|asset| asset.path == path) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(asset.media_type)),
                // Revalidated on each load: a new binary serves new files at once.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            asset.bytes,
        )
            .into_response(),
        None => ApiError::NotFound(format!("the UI has no file `{}`", truncate(path))).into_response(),
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(100).collect()
}

/// What `/ui/session` answers: how the host is protected and what the caller may do.
#[derive(Debug, Serialize)]
pub(crate) struct SessionView {
    /// `tokens`, `loopback-only` or `open`.
    pub(crate) mode: &'static str,
    /// The token the session speaks for; `null` without tokens.
    pub(crate) token: Option<String>,
    pub(crate) scopes: Vec<Scope>,
    /// When the session ends; `null` without one.
    pub(crate) expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl SessionView {
    fn of(state: &AppState, session: Option<Session>) -> Self {
        let mode = state.auth.mode();
        match session {
            Some(session) => Self {
                mode,
                token: Some(session.token),
                scopes: session.scopes,
                expires_at: session.expires_at,
            },
            // No tokens: whoever reaches the page may do everything the API allows.
            None => Self {
                mode,
                token: None,
                scopes: vec![Scope::Publish, Scope::Read, Scope::Admin],
                expires_at: None,
            },
        }
    }
}

/// `GET /ui/session`: who the caller is. With tokens configured and no live session, the
/// answer names no token and no scopes: the page asks for a token.
pub(crate) async fn show_session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Json<SessionView> {
    if !state.auth.uses_tokens() {
        return Json(SessionView::of(&state, None));
    }
    Json(match state.auth.session_of(&headers) {
        Some(session) => SessionView::of(&state, Some(session)),
        None => SessionView {
            mode: state.auth.mode(),
            token: None,
            scopes: Vec::new(),
            expires_at: None,
        },
    })
}

/// The body of `POST /ui/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    token: String,
}

/// Refuses a sign-in or sign-out without the header only the host's page sends, so that
/// no other page can sign a browser in (to a session of its choosing) or out.
fn from_the_page(headers: &HeaderMap) -> Result<(), ApiError> {
    if headers.contains_key(CSRF_HEADER) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "signing in or out needs the `{CSRF_HEADER}` header the UI sends"
        )))
    }
}

/// `POST /ui/session {"token": "..."}`: exchanges a token for a session cookie, ending
/// the session the request's cookie held, if any.
pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(error) = from_the_page(&headers) {
        return error.into_response();
    }
    if !state.auth.uses_tokens() {
        // Nothing to exchange: the page works without a session.
        return Json(SessionView::of(&state, None)).into_response();
    }
    let Json(SignIn { token }) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::BadRequest(format!(
                "expected a JSON body {{\"token\": \"...\"}}: {}",
                rejection.body_text()
            ))
            .into_response();
        }
    };
    let Some((id, session)) = state.auth.sign_in(token.trim()) else {
        tracing::warn!(target: AUDIT_TARGET, "UI sign-in refused: unknown token");
        return ApiError::Unauthorized("the token is not one this host accepts".to_owned()).into_response();
    };
    state.auth.sign_out(&headers);
    tracing::info!(target: AUDIT_TARGET, token = %session.token, "UI session opened");
    let cookie = state.auth.session_cookie(&id);
    (
        [(header::SET_COOKIE, cookie)],
        Json(SessionView::of(&state, Some(session))),
    )
        .into_response()
}

/// `DELETE /ui/session`: ends the session and clears its cookie.
pub(crate) async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(error) = from_the_page(&headers) {
        return error.into_response();
    }
    if let Some(session) = state.auth.session_of(&headers)
        && state.auth.sign_out(&headers)
    {
        tracing::info!(target: AUDIT_TARGET, token = %session.token, "UI session closed");
    }
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, state.auth.cleared_cookie())],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let imported = |text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|line| line.trim().strip_prefix("import "))
                .filter_map(|rest| rest.split(['"', '\'']).nth(1).map(str::to_owned))
                .collect()
        };
        for asset in ASSETS
            .iter()
            .filter(|asset| asset.path.ends_with(".js") && !asset.path.starts_with("vendor/"))
        {
            let dir = asset.path.rsplit_once('/').map_or("", |(dir, _)| dir);
            for import in imported(std::str::from_utf8(asset.bytes).unwrap()) {
                let mut parts: Vec<&str> = dir.split('/').filter(|part| !part.is_empty()).collect();
                for part in import.split('/') {
                    match part {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        part => parts.push(part),
                    }
                }
                let resolved = parts.join("/");
                assert!(
                    ASSETS.iter().any(|asset| asset.path == resolved),
                    "{} imports {import} ({resolved}), which is not embedded",
                    asset.path
                );
            }
        }
    }

    #[test]
    fn the_page_holds_no_inline_script_or_style_and_loads_nothing_from_elsewhere() {
        let index = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for script in index.split("<script").skip(1) {
            let tag = script.split('>').next().unwrap();
            assert!(tag.contains("src="), "inline script in index.html: <script{tag}>");
        }
        assert!(!index.contains("<style"), "inline style in index.html");
        assert!(!index.contains(" style="), "a style attribute in index.html");
        for asset in ASSETS
            .iter()
            .filter(|asset| !asset.path.starts_with("vendor/") && !asset.path.ends_with(".svg"))
        {
            let text = std::str::from_utf8(asset.bytes).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{} names another site",
                asset.path
            );
            assert!(
                !text.contains("innerHTML")
                    && !text.contains("outerHTML")
                    && !text.contains("insertAdjacentHTML"),
                "{} writes HTML",
                asset.path
            );
        }
    }
}
