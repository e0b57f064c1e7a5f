//! Browser sessions: the web UI exchanges a bearer token once for a session cookie.
//!
//! `POST /ui/session {"token": "..."}` checks the token like any request and answers with
//! `Set-Cookie: evhost_session=ID; HttpOnly; SameSite=Strict; Path=/` (and `Secure` over
//! HTTPS). The session carries the token's name and scopes and expires after
//! [`DEFAULT_SESSION_TTL`] (`[auth] session_ttl`); `DELETE /ui/session` ends it. Sessions
//! live in memory: a restarted host asks for the token again.
//!
//! A request authenticated by the cookie that changes state must also carry
//! [`CSRF_HEADER`]: a page of another site can make a browser send the cookie (were
//! `SameSite` ever bypassed) but cannot add a custom header without a CORS preflight, which
//! this server never grants.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, header};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::auth::Scope;

/// The session cookie's name.
pub const COOKIE: &str = "evhost_session";

/// The header a cookie-authenticated request that changes state must carry (any value).
pub const CSRF_HEADER: HeaderName = HeaderName::from_static("x-evhost-csrf");

/// How long a session lasts unless configured otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);

/// Sessions kept at most; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 10_000;

/// Who a session speaks for.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The name of the token it was opened with.
    pub(crate) token: String,
    pub(crate) scopes: Vec<Scope>,
    /// When it ends; `None` for a bearer token presented directly.
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// When it ends, and cancelled when it is signed out: what it keeps open (a
    /// `GET /stream`) ends with it. `None` for a bearer token presented directly.
    pub(crate) end: Option<(Instant, CancellationToken)>,
}

impl Session {
    /// Resolves when the session ends (expired or signed out); never for a bearer token.
    pub(crate) async fn ended(self) {
        match self.end {
            Some((expires, signed_out)) => {
                tokio::select! {
                    () = tokio::time::sleep_until(expires.into()) => {}
                    () = signed_out.cancelled_owned() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// The open sessions, by the SHA-256 of their id (the id itself is only in the cookie).
pub(crate) struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<[u8; 32], (Instant, Session)>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for `token` with `scopes`; returns its id, for the cookie.
    pub(crate) fn open(&self, token: &str, scopes: &[Scope]) -> (String, Session) {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).expect("the operating system's random source");
        let id = hex::encode(id);
        let now = Instant::now();
        let session = Session {
            token: token.to_owned(),
            scopes: scopes.to_vec(),
            expires_at: Some(Utc::now() + self.ttl),
            end: Some((now + self.ttl, CancellationToken::new())),
        };
        let mut open = self.open.lock();
        open.retain(|_, (expires, _)| *expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, (expires, _))| *expires)
                .map(|(key, _)| *key)
        {
            open.remove(&oldest);
        }
        open.insert(digest(&id), (now + self.ttl, session.clone()));
        (id, session)
    }

    /// The live session `id` names.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut open = self.open.lock();
        match open.get(&key) {
            Some((expires, session)) if *expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session `id`, and what it keeps open; whether there was one.
    pub(crate) fn close(&self, id: &str) -> bool {
        let closed = self.open.lock().remove(&digest(id));
        if let Some((_, session)) = &closed
            && let Some((_, signed_out)) = &session.end
        {
            signed_out.cancel();
        }
        closed.is_some()
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Every session id in the request's `Cookie` headers. Usually one; several when another
/// service on the same host (cookies do not tell ports apart) set one of that name too.
pub(crate) fn cookies_of(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that gives the browser the session `id` for `ttl`.
pub(crate) fn set_cookie(id: &str, ttl: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        ttl.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub(crate) fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::ZERO, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_or_is_closed() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (id, session) = sessions.open("ops", &[Scope::Read]);
        assert_eq!(id.len(), 64);
        assert_eq!(session.token, "ops");
        assert_eq!(sessions.get(&id).unwrap().scopes, vec![Scope::Read]);
        assert!(sessions.get("0000").is_none());
        let (other, _) = sessions.open("ops", &[Scope::Read]);
        assert_ne!(id, other, "every session has its own id");
        let (_, signed_out) = sessions.get(&id).unwrap().end.unwrap();
        assert!(!signed_out.is_cancelled());
        assert!(sessions.close(&id));
        assert!(
            signed_out.is_cancelled(),
            "what the session keeps open ends with it"
        );
        assert!(sessions.get(&id).is_none());
        assert!(!sessions.close(&id));

        let expired = Sessions::new(Duration::ZERO);
        let (id, _) = expired.open("ops", &[Scope::Admin]);
        assert!(expired.get(&id).is_none(), "a session past its time is gone");
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_http_only_and_strict() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            "theme=dark; evhost_session=abc123; evhost_session=def"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookies_of(&headers).collect::<Vec<_>>(), ["abc123", "def"]);
        headers.clear();
        headers.append(header::COOKIE, "evhost_session=".parse().unwrap());
        assert_eq!(cookies_of(&headers).next(), None);
        let set = set_cookie("abc", Duration::from_secs(60), true);
        assert_eq!(
            set,
            "evhost_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert!(!clear_cookie(false).contains("Secure"));
    }
}
