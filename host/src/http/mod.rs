//! The HTTP API: CloudEvents ingest, health, Prometheus metrics and read-only inspection.
//!
//! Build an [`AppState`] around a running [`AsyncEventBus`], hand it to [`router`] and
//! serve the router with `axum::serve`:
//!
//! ```no_run
//! # async fn run(
//! #     bus: evhost::AsyncEventBus,
//! #     catalog: std::sync::Arc<dyn evhost::http::PluginCatalog>,
//! # ) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use evhost::http::{AppState, router};
//! use evhost::store::MemoryKv;
//!
//! let state = Arc::new(AppState::new(bus.clone(), Arc::new(MemoryKv::default()), catalog));
//! if let Some(errors) = bus.errors() {
//!     state.errors.spawn_consumer(errors);
//! }
//! state.set_ready(true); // once the plugins are loaded
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router(Arc::clone(&state))).await
//! # }
//! ```
//!
//! # Endpoints
//!
//! | | |
//! |---|---|
//! | `POST /events` | CloudEvents in structured, batch or binary mode; `202 {"accepted": [ids]}`, or with `?wait=true` `200` and every handler's outcome |
//! | `GET /healthz` | `200 {"status":"ok"}` while the process serves HTTP |
//! | `GET /readyz` | `200` once [`AppState::ready`] is set and until shutdown begins, `503` otherwise |
//! | `GET /metrics` | the [`AppState::metrics`] registry in the OpenMetrics text format |
//! | `GET /metrics/history` | the last 20 minutes of one-second samples: accepted, in flight, dead letters, and per plugin handled/s, failed/s, p50/p99 latency |
//! | `GET /stream` | Server-Sent Events: `metrics` every second, `failure`, `plugin` and `dlq` as they happen, `lagged` when the client fell behind |
//! | `GET /plugins` | the loaded plugins with their delivery counters |
//! | `GET /config` | the effective configuration: each setting's value and source (default, file, env, `--set`, flag), secrets left out |
//! | `GET /errors?limit=N` | the latest failure records, newest first |
//! | `GET /events?type=&subject=&before=&after=&limit=` | stored events, newest first (or oldest first after an offset), each with its deliveries |
//! | `GET /events/{id}[?source=S]` | one stored event and where each of its deliveries stands |
//! | `GET /events/{id}/trace` | every event of the event's correlation, each with its parent and emitting plugin |
//! | `GET /plugins/{name}/kv?prefix=&after=&limit=` | a page of a plugin's keys with their values |
//! | `GET /plugins/{name}/kv/{key}` | one value of a plugin's key-value store |
//! | `GET /plugins/{name}/history` | what happened to a plugin: loaded, swapped (old → new hash), refused (why), removed |
//! | `GET /dlq?plugin=P`, `GET /dlq/{id}` | dead letters with their event and every failure |
//! | `GET /dlq?plugin=P&after=ID&limit=N` | a page of dead letters (after the letter `ID`) |
//! | `GET /dlq/preview?ids=1,2` or `?all=true[&plugin=P]` | what a replay would run: each letter's failed version next to the loaded one |
//! | `POST /dlq/replay?id=N`, `?all=true[&plugin=P]` or body `{"ids": [..]}` | deliver dead letters again, to the plugin's current version |
//! | `DELETE /dlq?id=N`, `?plugin=P` or `?all=true` | drop dead letters |
//! | `GET /ui/` (`/` and `/ui` redirect there), `GET /ui/{file}` | the web UI, embedded in the binary |
//! | `GET`, `POST`, `DELETE /ui/session` | who the page is; a token exchanged for a session cookie; signing out |
//!
//! Who may call what is [`auth::Auth`]'s to say ([`AppState::auth`]): with no tokens only
//! requests addressed to a loopback name are served; with tokens each request carries one
//! (`Authorization: Bearer …`) with the scope its endpoint needs.
//!
//! Every error is JSON, `{"error": "..."}`. A client's mistake (`4xx`) gets a message naming
//! the problem; a failure of ours (`500`) gets a generic message and is logged in full.
//!
//! # Layout
//!
//! - `events`: `POST /events`, the CloudEvents HTTP binding.
//! - `inspect`: health, readiness, `/plugins`, `/errors` and the key-value reader.
//! - `lookup`: `/events` reads — an event, a page of them, a correlation's trace.
//! - `dlq`: the dead-letter queue's endpoints.
//! - `prometheus`: the bus's and the catalog's collectors, the request counter, rendering.
//! - `recent`: [`RecentErrors`], the ring buffer behind `/errors`.
//! - `ui`: the web UI's files and its session endpoint; `session`: the sessions behind it.
//! - `error`: the one error type every endpoint answers with.
//! - [`auth`]: who may call what; [`tls`]: the HTTPS listener.

pub mod auth;
mod dlq;
mod error;
mod events;
mod inspect;
mod live;
mod lookup;
mod prometheus;
mod recent;
mod session;
#[cfg(test)]
mod tests;
pub mod tls;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::bus::AsyncEventBus;
use crate::store::KeyValueStore;

pub use dlq::{Purged, Replayed};
pub use live::{DEFAULT_STREAM_CLIENTS, HISTORY_SECONDS, Live, PluginSample, Sample};
pub use recent::RecentErrors;
pub use session::{COOKIE as SESSION_COOKIE, CSRF_HEADER, DEFAULT_SESSION_TTL};

/// Largest request body `POST /events` accepts unless configured otherwise (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// How long a request may take unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much longer than [`AppState::request_timeout`] the server lets a request run, so
/// that `?wait=true` answers its own `504` with what it knows.
const WAIT_MARGIN: Duration = Duration::from_secs(1);

/// Failure records `/errors` keeps unless configured otherwise.
pub const DEFAULT_RECENT_ERRORS: usize = 1000;

/// What the HTTP layer needs to know about the loaded plugins.
///
/// The plugins folder implements it; anything else that loads plugins can too. Calls are
/// made on request paths, so they should be cheap and must not block.
pub trait PluginCatalog: Send + Sync + 'static {
    /// Every plugin currently serving, one entry per plugin name.
    fn plugins(&self) -> Vec<PluginView>;

    /// The plugin named `name` (`-` and `_` counting as one character), if it is serving.
    /// Override it when a lookup is cheaper than listing everything.
    fn plugin(&self, name: &str) -> Option<PluginView> {
        self.plugins()
            .into_iter()
            .find(|plugin| crate::runtime::same_name(&plugin.name, name))
    }

    /// Successful reloads of changed plugin files since startup.
    fn reloads(&self) -> u64;

    /// Plugin files that failed to load (compile, validate or subscribe) since startup.
    fn load_failures(&self) -> u64;

    /// What happened to the plugin `name` (`-` and `_` counting as one), oldest first:
    /// loaded, swapped, refused, removed. A catalog that keeps no history answers nothing.
    fn history(&self, name: &str) -> Vec<PluginEvent> {
        let _ = name;
        Vec::new()
    }

    /// Every plugin change from now on, for `GET /stream`; `None` when the catalog
    /// reports none.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<PluginEvent>> {
        None
    }
}

/// One loaded plugin as `GET /plugins` shows it.
pub use crate::plugins::PluginStatus as PluginView;
pub use crate::plugins::{PluginChange, PluginEvent};

impl PluginCatalog for crate::plugins::PluginFolder {
    fn plugins(&self) -> Vec<PluginView> {
        self.statuses()
    }

    fn plugin(&self, name: &str) -> Option<PluginView> {
        self.status(name)
    }

    fn reloads(&self) -> u64 {
        crate::plugins::PluginFolder::reloads(self)
    }

    fn load_failures(&self) -> u64 {
        crate::plugins::PluginFolder::load_failures(self)
    }

    fn history(&self, name: &str) -> Vec<PluginEvent> {
        crate::plugins::PluginFolder::history(self).of(name)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<PluginEvent>> {
        Some(crate::plugins::PluginFolder::history(self).subscribe())
    }
}

/// Everything the HTTP handlers share.
///
/// Build it with [`AppState::new`] and adjust the public fields before wrapping it in an
/// `Arc`; flip [`ready`](Self::ready) and [`accepting`](Self::accepting) at any time.
pub struct AppState {
    /// The bus `POST /events` publishes to and whose counters `/metrics` and `/plugins`
    /// report.
    pub bus: AsyncEventBus,
    /// The plugins' key-value stores, read by `GET /plugins/{name}/kv/{key}`.
    pub kv: Arc<dyn KeyValueStore>,
    /// The loaded plugins.
    pub plugins: Arc<dyn PluginCatalog>,
    /// Who may call what. Defaults to [`auth::Auth::loopback_only`].
    pub auth: auth::Auth,
    /// What `GET /metrics` exports: the bus's, the catalog's and the HTTP layer's
    /// collectors are registered by [`AppState::new`]; register more before wrapping the
    /// state in an `Arc`.
    pub metrics: prometheus_client::registry::Registry,
    http_metrics: prometheus::HttpMetrics,
    /// Recent failures for `GET /errors`; feed it with [`RecentErrors::spawn_consumer`].
    pub errors: Arc<RecentErrors>,
    /// Samples for `GET /metrics/history` and the feeds of `GET /stream`; start its
    /// sampler with [`Live::spawn_sampler`].
    pub live: Arc<Live>,
    /// `GET /readyz` answers `200` once this is true (set it when the plugins are loaded).
    /// Starts false.
    pub ready: AtomicBool,
    /// While false, `POST /events` answers `503` and `/readyz` reports shutting down. Starts
    /// true; clear it first thing on shutdown.
    pub accepting: AtomicBool,
    /// Largest request body accepted, in bytes; larger ones get `413`. Read once, by
    /// [`router`].
    pub max_body_bytes: usize,
    /// How long a request may take: a request still running then is answered `408`, and
    /// `POST /events?wait=true` answers `504` with what it knows a little before. Read
    /// once, by [`router`].
    pub request_timeout: Duration,
    /// Whether the log's server is reachable, for a log on a server (NATS): while it is
    /// not, `/readyz` and `POST /events` answer `503`.
    pub log_reachable: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// The effective configuration `GET /config` shows ([`crate::config::effective`]);
    /// `None` answers `404` (a host not started from a configuration).
    pub config: Option<Arc<Vec<crate::config::Setting>>>,
}

impl AppState {
    /// State with the defaults: not ready yet, accepting, a 1 MiB body limit and the last
    /// [`DEFAULT_RECENT_ERRORS`] failures kept for `/errors`.
    pub fn new(bus: AsyncEventBus, kv: Arc<dyn KeyValueStore>, plugins: Arc<dyn PluginCatalog>) -> Self {
        let mut metrics = prometheus_client::registry::Registry::default();
        metrics.register_collector(Box::new(prometheus::BusCollector(bus.clone())));
        metrics.register_collector(Box::new(prometheus::CatalogCollector(Arc::clone(&plugins))));
        let http_metrics = prometheus::HttpMetrics::default();
        http_metrics.register(&mut metrics);
        Self {
            bus,
            kv,
            plugins,
            auth: auth::Auth::default(),
            metrics,
            http_metrics,
            errors: Arc::new(RecentErrors::new(DEFAULT_RECENT_ERRORS)),
            live: Arc::new(Live::new(DEFAULT_STREAM_CLIENTS)),
            ready: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            log_reachable: None,
            config: None,
        }
    }

    /// Marks the host ready (or not) for `GET /readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Opens or closes intake: while closed, `POST /events` answers `503`.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    fn log_unreachable(&self) -> bool {
        self.log_reachable.as_ref().is_some_and(|reachable| !reachable())
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("bus", &self.bus)
            .field("kv", &self.kv)
            .field("auth", &self.auth)
            .field("errors", &self.errors)
            .field("ready", &self.ready)
            .field("accepting", &self.accepting)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The `limit` of a paged read: `default` when absent, else between 1 and `max`.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, error::ApiError> {
    match limit.unwrap_or(default) {
        limit @ 1.. if limit <= max => Ok(limit),
        _ => Err(error::ApiError::BadRequest(format!(
            "`limit` must be between 1 and {max}"
        ))),
    }
}

/// The HTTP API over `state`; serve it with `axum::serve`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_body_bytes;
    // `?wait=true` answers with what it knows before the layer gives up on it.
    let timeout = state.request_timeout + WAIT_MARGIN;
    Router::new()
        .route("/events", post(events::publish).get(lookup::list))
        .route("/events/{id}", get(lookup::show))
        .route("/events/{id}/trace", get(lookup::trace))
        .route("/healthz", get(inspect::healthz))
        .route("/readyz", get(inspect::readyz))
        .route("/metrics", get(inspect::metrics))
        .route("/metrics/history", get(live::history))
        .route("/stream", get(live::stream))
        .route("/plugins", get(inspect::plugins))
        .route("/config", get(inspect::config))
        .route("/errors", get(inspect::errors))
        .route("/dlq", get(dlq::list).delete(dlq::purge))
        .route("/dlq/replay", post(dlq::replay))
        .route("/dlq/preview", get(dlq::preview))
        .route("/dlq/{id}", get(dlq::show))
        // A catch-all, so keys may contain `/` as well as `:`.
        .route("/plugins/{name}/kv", get(inspect::kv_keys))
        .route("/plugins/{name}/history", get(inspect::plugin_history))
        .route("/plugins/{name}/kv/{*key}", get(inspect::kv_value))
        .route("/", get(ui::root))
        .route("/ui", get(ui::root))
        .route("/ui/", get(ui::index))
        .route(
            "/ui/session",
            get(ui::show_session).post(ui::sign_in).delete(ui::sign_out),
        )
        .route("/ui/{*file}", get(ui::file))
        .fallback(inspect::not_found)
        .method_not_allowed_fallback(inspect::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // After routing, so the route decides what a request needs and labels its count.
        .layer(from_fn_with_state(Arc::clone(&state), auth::authorize))
        .layer(from_fn_with_state(Arc::clone(&state), prometheus::count_requests))
        // What every response tells a browser: run no script and load nothing but the
        // host's own files, never inside a frame, never guess a media type, never send the
        // URL along.
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Sets `name: value` on every response that has no such header.
fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}
