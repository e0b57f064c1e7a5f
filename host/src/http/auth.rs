//! Who may call the API: bearer tokens with scopes, or — with no tokens — loopback only.
//!
//! Every request passes `authorize` after routing, so the route it matched decides what it
//! needs ([`Need`]). A token's secret is kept only as its SHA-256; a presented token is
//! hashed and compared with every known digest in constant time. A browser may present a
//! session cookie instead, opened with a token by `POST /ui/session` (see `session`).
//! Refusals and admin actions are logged under the `evhost::audit` target with the token's
//! name, never its secret.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::error::ApiError;
use super::session::{self, Session, Sessions};
use crate::config::{AuthSettings, MIN_SECRET_LEN, TokenSettings};

/// The client's address, for the audit log: serve the router with
/// `into_make_service_with_connect_info::<Peer>()`.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, super::tls::TlsListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, super::tls::TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The `tracing` target of refused requests and admin actions.
pub const AUDIT_TARGET: &str = "evhost::audit";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `POST /events`.
    Publish,
    /// `GET /plugins`, `/plugins/{name}/kv/{key}`, `/errors`, `/metrics`, `/dlq`, `/dlq/{id}`.
    Read,
    /// `POST /dlq/replay`, `DELETE /dlq`: what changes the host's state.
    Admin,
}

impl Scope {
    /// The scope's name in the configuration and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "publish" => Ok(Self::Publish),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown scope `{other}`: the scopes are publish, read and admin"
            )),
        }
    }
}

/// What a request needs to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health and readiness (and `/metrics` when configured open).
    Nothing,
    /// A token with this scope.
    Scope(Scope),
    /// Any known token: what no route serves (`404`, `405`) is told only to a caller
    /// that has one.
    Token,
}

/// A known token: its name, its secret's SHA-256 and its scopes.
struct Token {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

enum Mode {
    /// No tokens: only requests addressed to a loopback name are served (DNS rebinding).
    LoopbackOnly,
    /// Everything is open to anyone (`--insecure-no-auth`).
    Open,
    /// Requests carry a bearer token.
    Tokens(Vec<Token>),
}

/// The API's access policy; see the module documentation.
pub struct Auth {
    mode: Mode,
    metrics_open: bool,
    sessions: Sessions,
    secure_cookies: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens = match &self.mode {
            Mode::Tokens(tokens) => tokens.len(),
            _ => 0,
        };
        f.debug_struct("Auth")
            .field("mode", &self.mode())
            .field("tokens", &tokens)
            .field("metrics_open", &self.metrics_open)
            .finish()
    }
}

impl Default for Auth {
    /// [`Auth::loopback_only`].
    fn default() -> Self {
        Self::loopback_only()
    }
}

/// The routes a `read` token may `GET` (as registered).
const READ_ROUTES: [&str; 15] = [
    "/metrics",
    "/metrics/history",
    "/stream",
    "/config",
    "/plugins",
    "/errors",
    "/dlq",
    "/dlq/{id}",
    "/dlq/preview",
    "/events",
    "/events/{id}",
    "/events/{id}/trace",
    "/plugins/{name}/kv",
    "/plugins/{name}/kv/{*key}",
    "/plugins/{name}/history",
];

/// The routes that change state, besides the methods of [`READ_ROUTES`] that do.
const WRITE_ROUTES: [&str; 1] = ["/dlq/replay"];

impl Auth {
    /// No tokens: every endpoint is served, but only to requests addressed to `localhost`
    /// or a loopback address, so a web page cannot reach the API through DNS rebinding.
    pub fn loopback_only() -> Self {
        Self::with_mode(Mode::LoopbackOnly, false)
    }

    fn with_mode(mode: Mode, metrics_open: bool) -> Self {
        Self {
            mode,
            metrics_open,
            sessions: Sessions::new(session::DEFAULT_SESSION_TTL),
            secure_cookies: false,
        }
    }

    /// Every endpoint to anyone, whatever the `Host`.
    pub fn open() -> Self {
        Self::with_mode(Mode::Open, true)
    }

    /// Marks session cookies `Secure`, for a host served over HTTPS.
    #[must_use]
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// The policy `[auth]` describes, reading secrets from their files and variables.
    ///
    /// # Errors
    /// When a secret file or variable cannot be read or holds a secret too short; the
    /// message names the token.
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Self> {
        if settings.insecure_no_auth {
            return Ok(Self::open());
        }
        if settings.tokens.is_empty() {
            return Ok(Self::loopback_only());
        }
        let tokens = settings
            .tokens
            .iter()
            .map(|token| {
                Ok(Token {
                    name: token.name.clone(),
                    digest: digest_of(token).with_context(|| format!("auth token `{}`", token.name))?,
                    scopes: token.scopes.clone(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut auth = Self::with_mode(Mode::Tokens(tokens), settings.metrics_open);
        auth.sessions = Sessions::new(settings.session_ttl);
        Ok(auth)
    }

    /// `tokens`, `loopback-only` or `open`, for the log.
    pub fn mode(&self) -> &'static str {
        match self.mode {
            Mode::Tokens(_) => "tokens",
            Mode::LoopbackOnly => "loopback-only",
            Mode::Open => "open",
        }
    }

    /// Whether requests must carry tokens.
    pub fn uses_tokens(&self) -> bool {
        matches!(self.mode, Mode::Tokens(_))
    }

    /// Whether only loopback addresses may be served (no tokens and not opened).
    pub fn loopback_required(&self) -> bool {
        matches!(self.mode, Mode::LoopbackOnly)
    }

    /// What a request for the route `path` (as registered, e.g. `/dlq/{id}`; `None` when
    /// no route matched) with `method` needs.
    pub fn need(&self, method: &Method, path: Option<&str>) -> Need {
        let read = matches!(*method, Method::GET | Method::HEAD);
        match path {
            // The UI's files hold no data; its session endpoint checks what it is given.
            Some("/healthz" | "/readyz" | "/" | "/ui" | "/ui/" | "/ui/{*file}" | "/ui/session") => {
                Need::Nothing
            }
            Some("/metrics") if self.metrics_open => Need::Nothing,
            Some(route) if read && READ_ROUTES.contains(&route) => Need::Scope(Scope::Read),
            Some("/events") if method == Method::POST => Need::Scope(Scope::Publish),
            Some("/dlq/replay") if method == Method::POST => Need::Scope(Scope::Admin),
            Some("/dlq") if method == Method::DELETE => Need::Scope(Scope::Admin),
            // A known route asked with another method: the `405` is told to any token.
            None => Need::Token,
            Some(route) if READ_ROUTES.contains(&route) || WRITE_ROUTES.contains(&route) => Need::Token,
            // A route added to the router without an entry here: admin-only until it gets one.
            Some(_) => Need::Scope(Scope::Admin),
        }
    }

    /// Admits a request needing `need`, returning who it speaks for: the token it carried
    /// (as a session without an end), or the browser session of its cookie.
    fn admit(
        &self,
        method: &Method,
        headers: &HeaderMap,
        uri: &Uri,
        need: Need,
    ) -> Result<Option<Session>, Refusal> {
        match &self.mode {
            Mode::Open => Ok(None),
            _ if need == Need::Nothing => Ok(None),
            Mode::LoopbackOnly => match addressed_host(headers, uri) {
                Some(host) if !is_loopback_name(&host) => Err(Refusal::ForeignHost(host)),
                _ => Ok(None),
            },
            Mode::Tokens(_) => {
                let session = self.credentials(method, headers)?;
                match need {
                    Need::Scope(scope) if !session.scopes.contains(&scope) => Err(Refusal::LacksScope {
                        token: session.token,
                        scope,
                    }),
                    _ => Ok(Some(session)),
                }
            }
        }
    }

    /// Who a request speaks for: its bearer token (as a session without an end), or else
    /// the session of its cookie — which, on a request that changes state, counts only
    /// with [`session::CSRF_HEADER`].
    fn credentials(&self, method: &Method, headers: &HeaderMap) -> Result<Session, Refusal> {
        if headers.contains_key(header::AUTHORIZATION) {
            let presented = bearer(headers)?;
            let token = self.token(presented).ok_or(Refusal::UnknownToken)?;
            return Ok(Session {
                token: token.name.clone(),
                scopes: token.scopes.clone(),
                expires_at: None,
                end: None,
            });
        }
        let mut ids = session::cookies_of(headers).peekable();
        if ids.peek().is_none() {
            return Err(Refusal::MissingToken);
        }
        let session = ids
            .find_map(|id| self.sessions.get(id))
            .ok_or(Refusal::SessionEnded)?;
        if !matches!(*method, Method::GET | Method::HEAD) && !headers.contains_key(session::CSRF_HEADER) {
            return Err(Refusal::MissingCsrfHeader);
        }
        Ok(session)
    }

    /// The token whose secret is `presented`. Every digest is compared, whichever matches.
    fn token(&self, presented: &str) -> Option<&Token> {
        let Mode::Tokens(tokens) = &self.mode else {
            return None;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        found
    }

    /// The session a browser's request belongs to, or the token it carries, as a session;
    /// `None` when it has neither, or with no tokens configured.
    pub(crate) fn session_of(&self, headers: &HeaderMap) -> Option<Session> {
        self.credentials(&Method::GET, headers).ok()
    }

    /// Opens a session for the token whose secret is `presented`: its id (for the cookie)
    /// and the session. `None` when no token has that secret (or none are configured).
    pub(crate) fn sign_in(&self, presented: &str) -> Option<(String, Session)> {
        let token = self.token(presented)?;
        Some(self.sessions.open(&token.name, &token.scopes))
    }

    /// Ends the sessions of a request's cookies; whether there was one.
    pub(crate) fn sign_out(&self, headers: &HeaderMap) -> bool {
        // Every one, not only the first.
        let mut closed = false;
        for id in session::cookies_of(headers) {
            closed |= self.sessions.close(id);
        }
        closed
    }

    /// The `Set-Cookie` value for a session `id`.
    pub(crate) fn session_cookie(&self, id: &str) -> String {
        session::set_cookie(id, self.sessions.ttl(), self.secure_cookies)
    }

    /// The `Set-Cookie` value that clears the session cookie.
    pub(crate) fn cleared_cookie(&self) -> String {
        session::clear_cookie(self.secure_cookies)
    }
}

/// The digest a token's secret is compared by.
fn digest_of(token: &TokenSettings) -> anyhow::Result<[u8; 32]> {
    if let Some(hex_digest) = &token.sha256 {
        let mut digest = [0; 32];
        hex::decode_to_slice(hex_digest, &mut digest).context("`sha256` is not 64 hex digits")?;
        return Ok(digest);
    }
    let secret = if let Some(secret) = &token.secret {
        secret.clone()
    } else if let Some(path) = &token.secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret file {}", path.display()))?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else if let Some(variable) = &token.secret_env {
        std::env::var(variable)
            .with_context(|| format!("reading the secret from the environment variable {variable}"))?
    } else {
        bail!("no secret given");
    };
    if secret.len() < MIN_SECRET_LEN {
        bail!("the secret must be at least {MIN_SECRET_LEN} characters");
    }
    Ok(Sha256::digest(secret.as_bytes()).into())
}

/// The bearer token of `Authorization`.
fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::MissingToken)?;
    if values.next().is_some() {
        return Err(Refusal::Malformed);
    }
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains([' ', '\t']) {
        return Err(Refusal::Malformed);
    }
    Ok(token)
}

/// The host name a request is addressed to, without the port: `Host`, or the URI's
/// authority (HTTP/2). `None` when the request names none (no browser sends such a
/// request).
fn addressed_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let authority = match headers.get(header::HOST) {
        Some(value) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        None => uri.authority()?.as_str().to_owned(),
    };
    let host = match authority.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split(']').next().unwrap_or_default().to_owned(),
        None => authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(host, _)| host)
            .to_owned(),
    };
    Some(host)
}

/// `localhost` or a loopback address.
fn is_loopback_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a request that would change the host's state and that a browser says comes
/// from a page of another origin (`Sec-Fetch-Site`, or an `Origin` other than the address
/// the request was sent to): a web page a user visits must not be able to replay or purge
/// dead letters, or publish, through the user's browser — loopback-only hosts included,
/// which a page reaches as easily as any. Reads are left alone (the browser keeps their
/// answers from the page), and so are clients that send neither header (the CLI, curl,
/// SDKs).
fn cross_site(method: &Method, headers: &HeaderMap, uri: &Uri) -> Result<(), Refusal> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let text = |name: &HeaderName| {
        headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    // `none`: the user typed or bookmarked the URL, no page asked for it.
    if let Some(site) = text(&SEC_FETCH_SITE)
        && !matches!(site.as_str(), "same-origin" | "none")
    {
        return Err(Refusal::CrossSite(format!("Sec-Fetch-Site: {site}")));
    }
    let Some(origin) = text(&header::ORIGIN) else {
        return Ok(());
    };
    // The page's origin must be the address the request was sent to: scheme aside (one
    // listener serves one), the same host and port.
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let addressed =
        text(&header::HOST).or_else(|| uri.authority().map(|authority| authority.as_str().to_owned()));
    match (authority, addressed) {
        (Some(authority), Some(addressed)) if authority.eq_ignore_ascii_case(&addressed) => Ok(()),
        _ => Err(Refusal::CrossSite(format!("Origin: {origin}"))),
    }
}

/// `Sec-Fetch-Site`, which browsers send with every request: whether the page that made it
/// shares the target's origin.
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Why a request is refused.
#[derive(Debug)]
enum Refusal {
    MissingToken,
    Malformed,
    UnknownToken,
    LacksScope {
        token: String,
        scope: Scope,
    },
    ForeignHost(String),
    /// The header that showed a browser sent it from another origin.
    CrossSite(String),
    /// A session cookie that names no open session (expired, signed out, or from before a
    /// restart).
    SessionEnded,
    /// A state-changing request authenticated only by its session cookie, without the
    /// header that proves a page of the host sent it.
    MissingCsrfHeader,
}

impl Refusal {
    fn token(&self) -> Option<&str> {
        match self {
            Self::LacksScope { token, .. } => Some(token),
            _ => None,
        }
    }

    fn into_error(self, method: &Method, path: &str, need: Need) -> ApiError {
        let wanted = match need {
            Need::Scope(scope) => format!("a token with the `{scope}` scope"),
            _ => "a token".to_owned(),
        };
        match self {
            Self::MissingToken => ApiError::Unauthorized(format!(
                "`{method} {path}` needs {wanted}: send `Authorization: Bearer TOKEN`"
            )),
            Self::Malformed => ApiError::Unauthorized(
                "the Authorization header is malformed: expected `Bearer TOKEN`".to_owned(),
            ),
            Self::UnknownToken => {
                ApiError::Unauthorized("the bearer token is not one this host accepts".to_owned())
            }
            Self::SessionEnded => ApiError::Unauthorized(
                "the session has ended (expired, signed out, or the host restarted): sign in again"
                    .to_owned(),
            ),
            Self::MissingCsrfHeader => ApiError::Forbidden(format!(
                "`{method} {path}` changes the host's state: with a session cookie it needs the `{}` header",
                session::CSRF_HEADER
            )),
            Self::LacksScope { token, scope } => ApiError::Forbidden(format!(
                "token `{token}` lacks the `{scope}` scope that `{method} {path}` needs"
            )),
            Self::CrossSite(header) => {
                let header: String = header.chars().take(200).collect();
                ApiError::Forbidden(format!(
                    "`{method} {path}` changes the host's state and was sent by a page of another origin \
                     ({header}): only the host's own pages and clients outside a browser may"
                ))
            }
            Self::ForeignHost(host) => {
                let host: String = host.chars().take(100).collect();
                ApiError::Forbidden(format!(
                    "requests addressed to {host:?} are refused: with no tokens configured, evhost answers only \
                     requests addressed to localhost or a loopback address (configure [auth] tokens to serve others)"
                ))
            }
        }
    }
}

/// The middleware: admits or refuses each request and audits refusals and admin actions.
pub(crate) async fn authorize(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let need = state.auth.need(&method, route.as_deref());
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|ConnectInfo(Peer(addr))| addr.to_string());
    let admitted = cross_site(&method, request.headers(), request.uri())
        .and_then(|()| state.auth.admit(&method, request.headers(), request.uri(), need));
    let session = match admitted {
        Ok(session) => session,
        Err(refusal) => {
            let token = refusal.token().map(str::to_owned);
            let error = refusal.into_error(&method, &path, need);
            tracing::warn!(
                target: AUDIT_TARGET,
                token = token.as_deref().unwrap_or("-"),
                method = %method,
                path = %path,
                peer = peer.as_deref().unwrap_or("-"),
                reason = %error,
                "request refused"
            );
            return error.into_response();
        }
    };
    let token = session.as_ref().map(|session| session.token.clone());
    // What the request keeps open (a stream) ends with a browser session.
    if let Some(session) = session.filter(|session| session.end.is_some()) {
        request.extensions_mut().insert(session);
    }
    if need != Need::Scope(Scope::Admin) {
        return next.run(request).await;
    }
    let action = match request.uri().query() {
        Some(query) => format!("{method} {path}?{query}"),
        None => format!("{method} {path}"),
    };
    let response = next.run(request).await;
    let count = response
        .extensions()
        .get::<super::dlq::AuditCount>()
        .map(|count| count.0);
    tracing::info!(
        target: AUDIT_TARGET,
        token = token.as_deref().unwrap_or("-"),
        action = %action,
        peer = peer.as_deref().unwrap_or("-"),
        status = response.status().as_u16(),
        count,
        "admin action"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn token(name: &str, secret: &str, scopes: &[Scope]) -> TokenSettings {
        TokenSettings {
            name: name.to_owned(),
            secret: Some(secret.to_owned()),
            secret_file: None,
            secret_env: None,
            sha256: None,
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn a_route_without_an_entry_is_admin_only() {
        let auth = Auth::loopback_only();
        assert_eq!(
            auth.need(&Method::POST, Some("/some/new/{route}")),
            Need::Scope(Scope::Admin)
        );
        assert_eq!(
            auth.need(&Method::GET, None),
            Need::Token,
            "no route: 404 to any token"
        );
        assert_eq!(
            auth.need(&Method::PUT, Some("/events")),
            Need::Token,
            "405 to any token"
        );
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            "abc"
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc")])).unwrap(),
            "abc"
        );
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearer a b", "abc"] {
            assert!(
                matches!(
                    bearer(&headers(&[("authorization", bad)])),
                    Err(Refusal::Malformed)
                ),
                "{bad}"
            );
        }
        let two = headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]);
        assert!(matches!(bearer(&two), Err(Refusal::Malformed)));
        assert!(matches!(bearer(&HeaderMap::new()), Err(Refusal::MissingToken)));
    }

    #[test]
    fn only_loopback_names_count_as_loopback() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
        ] {
            assert!(is_loopback_name(host), "{host}");
        }
        for host in [
            "example.com",
            "localhost.example.com",
            "10.0.0.1",
            "0.0.0.0",
            "",
            "evil.localhost",
        ] {
            assert!(!is_loopback_name(host), "{host}");
        }
        let uri = Uri::from_static("/events");
        let host = |value| addressed_host(&headers(&[("host", value)]), &uri);
        assert_eq!(host("localhost:8080").as_deref(), Some("localhost"));
        assert_eq!(host("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(host("example.com").as_deref(), Some("example.com"));
        assert_eq!(addressed_host(&HeaderMap::new(), &uri), None);
    }

    #[test]
    fn a_token_is_known_by_its_secret_or_its_digest() {
        let secret = "s3cret-s3cret-s3cret";
        let mut hashed = token("hashed", "", &[Scope::Read]);
        hashed.secret = None;
        hashed.sha256 = Some(hex::encode(Sha256::digest(b"another-secret-of-length")));
        let auth = Auth::from_settings(&AuthSettings {
            tokens: vec![token("ci", secret, &[Scope::Publish]), hashed],
            ..AuthSettings::default()
        })
        .unwrap();
        let uri = Uri::from_static("/events");
        let publish = Need::Scope(Scope::Publish);
        let with = |value: &str| headers(&[("authorization", value)]);
        assert_eq!(
            auth.admit(&Method::POST, &with(&format!("Bearer {secret}")), &uri, publish)
                .unwrap()
                .map(|session| session.token)
                .as_deref(),
            Some("ci")
        );
        assert!(matches!(
            auth.admit(&Method::POST, &with("Bearer s3cret-s3cret-s3creT"), &uri, publish),
            Err(Refusal::UnknownToken)
        ));
        let read = Need::Scope(Scope::Read);
        assert_eq!(
            auth.admit(
                &Method::POST,
                &with("Bearer another-secret-of-length"),
                &uri,
                read
            )
            .unwrap()
            .map(|session| session.token)
            .as_deref(),
            Some("hashed")
        );
        assert!(matches!(
            auth.admit(
                &Method::POST,
                &with("Bearer another-secret-of-length"),
                &uri,
                publish
            ),
            Err(Refusal::LacksScope {
                scope: Scope::Publish,
                ..
            })
        ));
        assert!(
            auth.admit(&Method::GET, &HeaderMap::new(), &uri, Need::Nothing)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_session_cookie_speaks_for_its_token_and_changes_state_only_with_the_csrf_header() {
        let auth = Auth::from_settings(&AuthSettings {
            tokens: vec![
                token("viewer", "viewer-secret-viewer", &[Scope::Read]),
                token("ops", "ops-secret-ops-secret", &[Scope::Read, Scope::Admin]),
            ],
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(auth.sign_in("not-a-known-secret-at-all").is_none());
        let (viewer, session) = auth.sign_in("viewer-secret-viewer").unwrap();
        assert_eq!(session.token, "viewer");
        let (ops, _) = auth.sign_in("ops-secret-ops-secret").unwrap();
        let uri = Uri::from_static("/dlq/replay");
        let cookie = |id: &str| format!("evhost_session={id}");
        let read = Need::Scope(Scope::Read);
        let admin = Need::Scope(Scope::Admin);

        let viewing = headers(&[("cookie", &cookie(&viewer))]);
        assert_eq!(
            auth.admit(&Method::GET, &viewing, &uri, read)
                .unwrap()
                .map(|session| session.token)
                .as_deref(),
            Some("viewer")
        );
        let replaying = headers(&[("cookie", &cookie(&viewer)), ("x-evhost-csrf", "1")]);
        assert!(
            matches!(
                auth.admit(&Method::POST, &replaying, &uri, admin),
                Err(Refusal::LacksScope {
                    scope: Scope::Admin,
                    ..
                })
            ),
            "a read-only session cannot act"
        );

        let without_header = headers(&[("cookie", &cookie(&ops))]);
        assert!(matches!(
            auth.admit(&Method::POST, &without_header, &uri, admin),
            Err(Refusal::MissingCsrfHeader)
        ));
        let with_header = headers(&[("cookie", &cookie(&ops)), ("x-evhost-csrf", "1")]);
        assert_eq!(
            auth.admit(&Method::POST, &with_header, &uri, admin)
                .unwrap()
                .map(|session| session.token)
                .as_deref(),
            Some("ops")
        );

        assert!(auth.sign_out(&with_header));
        assert!(matches!(
            auth.admit(&Method::POST, &with_header, &uri, admin),
            Err(Refusal::SessionEnded)
        ));
        let forged = headers(&[("cookie", "evhost_session=00ff")]);
        assert!(matches!(
            auth.admit(&Method::GET, &forged, &uri, read),
            Err(Refusal::SessionEnded)
        ));
        assert!(
            Auth::loopback_only().sign_in("viewer-secret-viewer").is_none(),
            "no tokens, no sessions"
        );
    }

    #[test]
    fn a_short_or_unreadable_secret_is_refused_naming_the_token() {
        let settings = |token| AuthSettings {
            tokens: vec![token],
            ..AuthSettings::default()
        };
        let mut from_env = token("ops", "", &[Scope::Admin]);
        from_env.secret = None;
        from_env.secret_env = Some("EVHOST_TEST_SURELY_UNSET_VARIABLE".to_owned());
        let error = format!("{:#}", Auth::from_settings(&settings(from_env)).unwrap_err());
        assert!(
            error.contains("`ops`") && error.contains("EVHOST_TEST_SURELY_UNSET_VARIABLE"),
            "{error}"
        );
        let mut from_file = token("ops", "", &[Scope::Admin]);
        from_file.secret = None;
        from_file.secret_file = Some("/nonexistent/evhost-secret".into());
        let error = format!("{:#}", Auth::from_settings(&settings(from_file)).unwrap_err());
        assert!(error.contains("/nonexistent/evhost-secret"), "{error}");
    }
}
