//! `evhost.toml`: host settings and the defaults every plugin's manifest is merged over.
//!
//! Every key is optional; a bare `evhost run` works without the file. Flags and `EVHOST_*`
//! environment variables override what the file says (see the CLI).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::{AsyncBusConfig, Backpressure};
use crate::http::auth::Scope;
use crate::plugins::{Manifest, ManifestError};
use crate::runtime::RuntimeConfig;

mod effective;

pub use effective::{Setting, Source, Sources, effective};

/// The file `evhost run` reads from the working directory when no `--config` is given.
pub const DEFAULT_FILE: &str = "evhost.toml";

/// The prefix of the environment variables that set keys: `EVHOST_BUS__CAPACITY`.
pub const ENV_PREFIX: &str = "EVHOST_";

/// `EVHOST_*` variables that stand for command-line flags (`EVHOST_PLUGINS` is `--plugins`,
/// `EVHOST_URL` the client's `--url`, …), lower-cased without the prefix: [`Config::layered`]
/// does not read them as keys.
pub const FLAG_VARIABLES: [&str; 19] = [
    "config",
    "plugins",
    "data_dir",
    "listen",
    "log_format",
    "drain_timeout",
    "no_durable",
    "outbox",
    "nats",
    "auth_tokens",
    "metrics_open",
    "insecure_no_auth",
    "tls_cert",
    "tls_key",
    "set",
    "url",
    "token",
    "token_file",
    "ca_cert",
];

/// Keys that were renamed, each with what to write instead. A file (or variable, or
/// `--set`) that still uses one is refused with that hint rather than a bare "unknown
/// field". Manifest keys match inside `[plugins]` too.
const RENAMED: [(&str, &str, &str); 7] = [
    (
        "drain_timeout_ms",
        "drain_timeout",
        ", a duration such as \"30s\"",
    ),
    (
        "request_timeout_ms",
        "request_timeout",
        ", a duration such as \"30s\"",
    ),
    (
        "outbox.poll_interval_ms",
        "outbox.poll_interval",
        ", a duration such as \"5s\"",
    ),
    (
        "bus.plugin_concurrency",
        "plugins.limits.concurrency",
        " (the default of every plugin's `limits.concurrency`)",
    ),
    (
        "limits.timeout_ms",
        "limits.timeout",
        ", a duration such as \"5s\" or \"250ms\"",
    ),
    (
        "retry.initial_backoff_ms",
        "retry.initial_backoff",
        ", a duration such as \"100ms\"",
    ),
    (
        "retry.max_backoff_ms",
        "retry.max_backoff",
        ", a duration such as \"30s\"",
    ),
];

/// If the unknown `key` (dotted) is one that was renamed, says what to use instead.
pub(crate) fn renamed_key(key: &str) -> Option<String> {
    RENAMED.iter().find_map(|(old, new, what)| {
        let parent = key.strip_suffix(old)?;
        (parent.is_empty() || parent.ends_with('.'))
            .then(|| format!("`{key}` was renamed: use `{parent}{new}`{what}"))
    })
}

/// `path`, or `evhost.toml` in the working directory if it exists.
fn file_to_read(path: Option<&Path>) -> Option<PathBuf> {
    match path {
        Some(path) => Some(path.to_owned()),
        None if Path::new(DEFAULT_FILE).exists() => Some(PathBuf::from(DEFAULT_FILE)),
        None => None,
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A figment error as one line: what is wrong, for which key.
fn layered_message(error: &figment::Error, key: &str) -> String {
    if let Some(hint) = renamed_key(key) {
        return hint;
    }
    let what = error.kind.to_string();
    if key.is_empty() {
        what
    } else {
        format!("`{key}`: {what}")
    }
}

/// Why a configuration could not be used. Messages name the file, the key and what was
/// expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key of the wrong type or an unknown key.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A value is out of range.
    #[error("{}: `{key}` {message}", path.display())]
    Invalid {
        /// The file (or `<flags>` for command-line values).
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What was expected.
        message: String,
    },
}

/// `[outbox]`: where the transactional outbox relay reads.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// The PostgreSQL URL, e.g. `postgres://app@db/orders`.
    #[serde(skip_serializing)]
    pub url: String,
    /// The schema holding the outbox table.
    #[serde(default = "default_outbox_schema")]
    pub schema: String,
    /// Names the relay's checkpoint; one relay per name.
    #[serde(default = "default_relay_name")]
    pub relay_name: String,
    /// Install the outbox schema at start when it is missing (otherwise a missing schema
    /// refuses the start, naming `evhost outbox install`).
    #[serde(default)]
    pub install: bool,
    /// Most rows relayed per transaction.
    #[serde(default = "default_outbox_batch")]
    pub batch_size: NonZeroUsize,
    /// How long to wait for a notification before reading anyway, e.g. `"5s"`.
    #[serde(default = "default_outbox_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl OutboxSettings {
    /// The defaults for everything but `url`.
    pub fn new(url: String) -> Self {
        Self {
            url,
            schema: default_outbox_schema(),
            relay_name: default_relay_name(),
            install: false,
            batch_size: default_outbox_batch(),
            poll_interval: default_outbox_poll(),
        }
    }

    /// The relay's settings.
    pub fn relay_config(&self) -> crate::outbox::OutboxConfig {
        let mut config = crate::outbox::OutboxConfig::new(self.url.clone());
        config.schema.clone_from(&self.schema);
        config.relay_name.clone_from(&self.relay_name);
        config.batch_size = self.batch_size.get();
        config.poll_interval = self.poll_interval;
        config
    }
}

/// Leaves the URL out: it may carry a password.
impl std::fmt::Debug for OutboxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxSettings")
            .field("schema", &self.schema)
            .field("relay_name", &self.relay_name)
            .field("install", &self.install)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

fn default_outbox_schema() -> String {
    crate::outbox::DEFAULT_SCHEMA.to_owned()
}

fn default_relay_name() -> String {
    "outbox".to_owned()
}

fn default_outbox_batch() -> NonZeroUsize {
    NonZeroUsize::new(500).expect("non-zero")
}

fn default_outbox_poll() -> Duration {
    Duration::from_secs(5)
}

/// `[nats]`: keep the log on a NATS JetStream server that several evhost processes
/// share (see the book's "Several hosts", `docs/src/nats.md`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// The server, e.g. `nats://127.0.0.1:4222` (`--nats URL` sets it too).
    #[serde(default)]
    pub url: String,
    /// The event stream's name (the dead-letter stream and KV buckets are named after it).
    #[serde(default = "default_nats_stream")]
    pub stream: String,
    /// How many partitions ordering keys are spread over; fixed once the stream exists.
    #[serde(default = "default_nats_partitions")]
    pub partitions: NonZeroU32,
    /// How long the server recognises a repeated publish (and a handler run twice) as
    /// a duplicate, e.g. `"2m"`.
    #[serde(default = "default_nats_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// The most the event stream may hold, in bytes; a full stream refuses publishes
    /// (HTTP 503). Unlimited when absent.
    #[serde(default)]
    pub max_bytes: Option<NonZeroU64>,
    /// How long a delivery may stay unacknowledged before another process gets it, e.g.
    /// `"30s"`: longer than the longest plugin timeout.
    #[serde(default = "default_nats_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// A NATS credentials file (`.creds`) to authenticate with.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// A token to authenticate with.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// `"none"` (the default) or `"s2"`: compress the event stream on the server
    /// (nats-server 2.10 or newer; an older one is refused at start).
    #[serde(default)]
    pub compression: crate::store::nats::Compression,
    /// How long the server keeps each event in the history stream that `GET /events`,
    /// `/events/{id}` and `/trace` read, e.g. `"1h"`; `"0s"` keeps none (those answer 501).
    #[serde(default = "default_nats_history", with = "humantime_serde")]
    pub history: Duration,
}

impl NatsSettings {
    /// The defaults for the server at `url`.
    pub fn new(url: String) -> Self {
        Self {
            url,
            stream: default_nats_stream(),
            partitions: default_nats_partitions(),
            duplicate_window: default_nats_duplicate_window(),
            max_bytes: None,
            ack_wait: default_nats_ack_wait(),
            credentials: None,
            token: None,
            compression: crate::store::nats::Compression::None,
            history: default_nats_history(),
        }
    }

    /// The store's options.
    pub fn options(&self) -> crate::store::nats::NatsOptions {
        crate::store::nats::NatsOptions {
            url: self.url.clone(),
            stream: self.stream.clone(),
            partitions: self.partitions,
            duplicate_window: self.duplicate_window,
            max_bytes: self.max_bytes.map(NonZeroU64::get),
            ack_wait: self.ack_wait,
            credentials: self.credentials.clone(),
            token: self.token.clone(),
            compression: self.compression,
            history: self.history,
        }
    }
}

/// Leaves the token out.
impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("partitions", &self.partitions)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_bytes", &self.max_bytes)
            .field("ack_wait", &self.ack_wait)
            .field("credentials", &self.credentials)
            .field("compression", &self.compression)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl NatsSettings {
    /// Checks what can be checked without the server: `(key, what is wrong)`.
    fn validate(&self, plugins: &Manifest) -> Result<(), (&'static str, String)> {
        // Empty here may still be set by `--nats`; the start refuses it if not.
        if !self.url.is_empty() && !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
            return Err(("nats.url", "must be a NATS URL (nats://host:port)".to_owned()));
        }
        let stream_name = !self.stream.is_empty()
            && self.stream.len() <= 32
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_name {
            return Err((
                "nats.stream",
                format!("{:?} must be 1 to 32 letters, digits, `_` or `-`", self.stream),
            ));
        }
        if self.partitions.get() > 1024 {
            return Err((
                "nats.partitions",
                format!("({}) must be at most 1024", self.partitions),
            ));
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return Err(("nats.duplicate_window", "must be at least 1s".to_owned()));
        }
        if !self.history.is_zero() && self.history < Duration::from_secs(1) {
            return Err((
                "nats.history",
                "must be \"0s\" (keep no history) or at least 1s".to_owned(),
            ));
        }
        // A delivery can run again once `ack_wait` has passed (its host died before the
        // acknowledgement); its effects are applied once only while the server still
        // recognises their message ids.
        if self.duplicate_window <= self.ack_wait {
            return Err((
                "nats.duplicate_window",
                format!(
                    "({}) must be longer than `nats.ack_wait` ({}): a handler run again after the ack wait \
                     would apply its effects a second time",
                    humantime::format_duration(self.duplicate_window),
                    humantime::format_duration(self.ack_wait)
                ),
            ));
        }
        let timeout = plugins
            .limits
            .timeout
            .unwrap_or(crate::runtime::Limits::default().timeout);
        let ahead = crate::store::PULL_AHEAD;
        if !crate::store::ack_wait_covers(self.ack_wait, timeout) {
            return Err((
                "nats.ack_wait",
                format!(
                    "({}) must be longer than {ahead} × the plugins' timeout ({}): a host pulls up to {ahead} \
                     deliveries per concurrent invocation ahead, and one still waiting would go to another host",
                    humantime::format_duration(self.ack_wait),
                    humantime::format_duration(timeout)
                ),
            ));
        }
        Ok(())
    }
}

fn default_nats_stream() -> String {
    "EVHOST".to_owned()
}

fn default_nats_partitions() -> NonZeroU32 {
    NonZeroU32::new(16).expect("non-zero")
}

fn default_nats_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

fn default_nats_history() -> Duration {
    Duration::from_secs(3600)
}

fn default_nats_ack_wait() -> Duration {
    Duration::from_secs(30)
}

/// `[auth]`: who may call the HTTP API.
///
/// With no tokens the API serves only loopback addresses and answers only requests
/// addressed to a loopback name; see the book's "Securing the API".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The tokens requests may carry (`Authorization: Bearer SECRET`).
    pub tokens: Vec<TokenSettings>,
    /// Serve `GET /metrics` without a token (for a scraper); otherwise it needs `read`.
    pub metrics_open: bool,
    /// Serve every endpoint to anyone who reaches the port, whatever the listen address:
    /// no tokens, no `Host` check.
    pub insecure_no_auth: bool,
    /// How long a web UI session opened with a token lasts (8 hours by default).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            metrics_open: false,
            insecure_no_auth: false,
            session_ttl: crate::http::DEFAULT_SESSION_TTL,
        }
    }
}

/// One `[[auth.tokens]]` entry: a name, where its secret is, and what it may do. Exactly
/// one of `secret`, `secret_file`, `secret_env` and `sha256` is given.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Names the token in the log (the secret never appears there).
    pub name: String,
    /// The secret itself (at least 16 characters).
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// A file holding the secret (a trailing newline is ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The secret's SHA-256 as 64 hex digits, so the configuration holds no secret.
    #[serde(default)]
    pub sha256: Option<String>,
    /// What the token may do: `publish`, `read`, `admin`.
    pub scopes: Vec<Scope>,
}

/// Leaves the secret out.
impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("name", &self.name)
            .field("secret_file", &self.secret_file)
            .field("secret_env", &self.secret_env)
            .field("sha256", &self.sha256)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The shortest secret accepted in the configuration.
pub const MIN_SECRET_LEN: usize = 16;

impl TokenSettings {
    /// Parses the `--auth-token` form `NAME:SCOPE+SCOPE:SOURCE`, where `SOURCE` is
    /// `env:VARIABLE`, `file:PATH` or `sha256:HEX` (a secret itself is not taken on the
    /// command line, where other processes can read it).
    pub fn parse_flag(spec: &str) -> Result<Self, String> {
        let form = "expected NAME:SCOPE+SCOPE:SOURCE with SOURCE env:VARIABLE, file:PATH or sha256:HEX";
        let mut parts = spec.splitn(4, ':');
        let (Some(name), Some(scopes), Some(kind), Some(value)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(form.to_owned());
        };
        let scopes = scopes
            .split('+')
            .map(|scope| scope.parse::<Scope>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut token = Self {
            name: name.to_owned(),
            secret: None,
            secret_file: None,
            secret_env: None,
            sha256: None,
            scopes,
        };
        match kind {
            "env" => token.secret_env = Some(value.to_owned()),
            "file" => token.secret_file = Some(PathBuf::from(value)),
            "sha256" => token.sha256 = Some(value.to_owned()),
            other => return Err(format!("unknown secret source `{other}`: {form}")),
        }
        Ok(token)
    }

    /// Checks what can be checked without reading files or the environment.
    fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "token name {:?} must be non-empty, without spaces or control characters",
                self.name
            ));
        }
        let sources = [
            self.secret.is_some(),
            self.secret_file.is_some(),
            self.secret_env.is_some(),
            self.sha256.is_some(),
        ];
        if sources.iter().filter(|given| **given).count() != 1 {
            return Err(format!(
                "token `{}` needs exactly one of `secret`, `secret_file`, `secret_env` and `sha256`",
                self.name
            ));
        }
        if self.scopes.is_empty() {
            return Err(format!(
                "token `{}` has no scopes: give it some of `publish`, `read`, `admin`",
                self.name
            ));
        }
        if let Some(secret) = &self.secret
            && secret.len() < MIN_SECRET_LEN
        {
            return Err(format!(
                "token `{}`: a secret must be at least {MIN_SECRET_LEN} characters",
                self.name
            ));
        }
        if let Some(digest) = &self.sha256
            && (digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(format!(
                "token `{}`: `sha256` must be 64 hex digits (e.g. the output of `sha256sum`)",
                self.name
            ));
        }
        Ok(())
    }
}

/// `[tls]`: serve HTTPS with this certificate chain and private key (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The host's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The watched folder of `NAME.wasm` (+ optional `NAME.toml`) plugins.
    pub plugins_dir: PathBuf,
    /// Where evhost keeps its state: the durable log (`evhost.db`) and the compiled-code
    /// cache.
    pub data_dir: PathBuf,
    /// Keep accepted events, delivery state, dead letters and plugin key-value data in
    /// `data_dir/evhost.db` (SQLite), so nothing accepted is lost. `false` keeps it all in
    /// memory: a restart loses what was pending.
    pub durable: bool,
    /// Relay a PostgreSQL outbox table into the log (`[outbox]`).
    pub outbox: Option<OutboxSettings>,
    /// Keep the log on NATS JetStream, shared with other evhost processes (`[nats]`),
    /// instead of the embedded one.
    pub nats: Option<NatsSettings>,
    /// The HTTP listen address.
    pub listen: SocketAddr,
    /// Who may call the HTTP API.
    pub auth: AuthSettings,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsSettings>,
    /// Log output format.
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight events, e.g. `"30s"`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: NonZeroUsize,
    /// How many `GET /stream` clients (operator pages) may be connected at once; the next
    /// gets `503`.
    pub max_stream_clients: NonZeroUsize,
    /// How long an HTTP request may take, e.g. `"30s"`; `POST /events?wait=true` answers
    /// `504` with what it knows by then.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Cache compiled plugins under `data_dir/cache`.
    pub compile_cache: bool,
    /// Bus limits.
    pub bus: BusSettings,
    /// Wasm engine limits.
    pub runtime: RuntimeSettings,
    /// Defaults for every plugin (the same keys as a plugin's `NAME.toml`).
    pub plugins: Manifest,
    /// Where each setting came from, for `GET /config`: filled by [`Config::layered`],
    /// and by whoever applies flags over it ([`Sources::set`]).
    #[serde(skip)]
    pub sources: Sources,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            plugins_dir: PathBuf::from("plugins"),
            data_dir: PathBuf::from(".evhost"),
            durable: true,
            outbox: None,
            nats: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthSettings::default(),
            tls: None,
            log_format: LogFormat::Text,
            drain_timeout: Duration::from_secs(30),
            max_body_bytes: NonZeroUsize::new(1 << 20).expect("non-zero"),
            max_stream_clients: NonZeroUsize::new(crate::http::DEFAULT_STREAM_CLIENTS).expect("non-zero"),
            request_timeout: Duration::from_secs(30),
            compile_cache: true,
            bus: BusSettings::default(),
            runtime: RuntimeSettings::default(),
            plugins: Manifest::default(),
            sources: Sources::default(),
        }
    }
}

/// Invocations of one plugin at once unless `limits.concurrency` says otherwise: a few per
/// core is all CPU-bound calls can use, and it bounds what one plugin holds (4 × 64 MiB
/// of memory by default).
pub const DEFAULT_PLUGIN_CONCURRENCY: usize = 4;

/// `[bus]`: concurrency, capacity and timeouts of the event bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// Invocations running at once across all plugins (each plugin's own limit is
    /// `plugins.limits.concurrency`).
    pub max_concurrency: NonZeroUsize,
    /// Unfinished events the bus holds at most.
    pub capacity: NonZeroUsize,
    /// Unfinished events emitted by plugins the bus holds at most, on top of `capacity`.
    pub emitted_capacity: NonZeroUsize,
    /// `"wait"` (publishers wait for room) or `"reject"` (HTTP answers 503).
    pub backpressure: BackpressureSetting,
    /// Failure records buffered for the error monitor.
    pub monitor_capacity: NonZeroUsize,
}

impl Default for BusSettings {
    fn default() -> Self {
        let bus = AsyncBusConfig::default();
        let non_zero = |value: usize| NonZeroUsize::new(value).expect("the bus's defaults are non-zero");
        Self {
            max_concurrency: non_zero(bus.max_concurrency),
            capacity: non_zero(bus.capacity),
            emitted_capacity: non_zero(bus.emitted_capacity),
            backpressure: BackpressureSetting::Wait,
            monitor_capacity: non_zero(bus.monitor_capacity),
        }
    }
}

/// `bus.backpressure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackpressureSetting {
    /// Wait for room.
    Wait,
    /// Refuse at once.
    Reject,
}

/// `[runtime]`: Wasm engine limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Instances alive at once across all plugins (pool slots).
    pub max_instances: NonZeroU32,
    /// The largest memory limit a plugin may be given, in MiB.
    pub max_memory_mb: NonZeroU64,
    /// The largest plugin file accepted, in MiB: a bigger `.wasm` is refused without
    /// being read.
    pub max_component_mb: NonZeroU64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        let runtime = RuntimeConfig::default();
        let mib =
            |bytes: u64| NonZeroU64::new(bytes >> 20).expect("the engine's defaults are at least 1 MiB");
        Self {
            max_instances: NonZeroU32::new(runtime.max_instances).expect("non-zero"),
            max_memory_mb: mib(runtime.max_memory_bytes as u64),
            max_component_mb: mib(runtime.max_component_bytes),
        }
    }
}

impl Config {
    /// Reads `path`, or `evhost.toml` in the working directory if it exists, or returns
    /// the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match file_to_read(path) {
            Some(path) => Self::parse(&read_file(&path)?, &path),
            None => Ok(Self::default()),
        }
    }

    /// The settings `evhost run` uses: the file (`path`, or `evhost.toml` in the working
    /// directory if it exists), then every `EVHOST_KEY` / `EVHOST_SECTION__KEY` environment
    /// variable (`EVHOST_BUS__CAPACITY=5` sets `bus.capacity`), then each `KEY=VALUE` of
    /// `overrides` (the `--set` flags, e.g. `plugins.limits.timeout_ms=2000`), later ones
    /// winning. Values are TOML values (a bare word is a string). Variables that name
    /// command-line flags ([`FLAG_VARIABLES`]) are left to the flags.
    ///
    /// # Errors
    /// An unreadable file, a value of the wrong type or out of range, or an unknown key;
    /// the message names the key and where the value came from.
    pub fn layered(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        use figment::Figment;
        use figment::providers::{Env, Format as _, Toml};

        let file = file_to_read(path);
        let mut figment = Figment::new();
        let mut sources = Sources::default();
        if let Some(file) = &file {
            // Read first: a missing or unreadable file is an error, not an empty layer.
            let text = read_file(file)?;
            // A file TOML cannot parse is reported by the extraction below.
            if let Ok(table) = text.parse::<toml::Table>() {
                sources.set_table("", &table, &Source::File(file.display().to_string()));
            }
            figment = figment.merge(Toml::string(&text));
        }
        for (variable, _) in std::env::vars_os() {
            let Some(key) = variable.to_str().and_then(|v| v.strip_prefix(ENV_PREFIX)) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if !FLAG_VARIABLES.contains(&key.as_str()) {
                sources.set(
                    key.replace("__", "."),
                    Source::Env(variable.to_string_lossy().into_owned()),
                );
            }
        }
        let env = Env::prefixed(ENV_PREFIX).ignore(&FLAG_VARIABLES).split("__");
        figment = figment.merge(env);
        let mut set_keys = Vec::new();
        for item in overrides {
            let Some((key, value)) = item.split_once('=') else {
                return Err(ConfigError::Parse {
                    path: PathBuf::from("--set"),
                    message: format!("`{item}` is not KEY=VALUE (e.g. bus.capacity=5000)"),
                });
            };
            let key = key.trim();
            let value: figment::value::Value = value.parse().unwrap_or_else(|never| match never {});
            figment = figment.merge((key, value));
            set_keys.push(key.to_owned());
            sources.set(key, Source::Set(key.to_owned()));
        }
        // Which layer set `key` last: a message names it.
        let source_of = |key: &str| -> PathBuf {
            if set_keys.iter().any(|set| set == key) {
                return PathBuf::from(format!("--set {key}"));
            }
            let variable = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"));
            if std::env::var_os(&variable).is_some() {
                return PathBuf::from(variable);
            }
            file.clone().unwrap_or_else(|| PathBuf::from("<defaults>"))
        };
        let mut config: Self = figment.extract().map_err(|error| {
            let mut key = error.path.join(".");
            if let figment::error::Kind::UnknownField(field, _) = &error.kind
                && !key.ends_with(field.as_str())
            {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            let key = key.strip_prefix("default.").unwrap_or(&key).to_owned();
            ConfigError::Parse {
                path: source_of(&key),
                message: layered_message(&error, &key),
            }
        })?;
        config.validate(Path::new("")).map_err(|error| match error {
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: source_of(&key),
                key,
                message,
            },
            other => other,
        })?;
        config.sources = sources;
        Ok(config)
    }

    /// Parses the TOML `text`; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Self =
            crate::plugins::manifest::deserialize_toml(text).map_err(|message| ConfigError::Parse {
                path: origin.to_owned(),
                message,
            })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        // (key, value, most): zero is ruled out by the types; the upper bounds keep sizes
        // far from overflowing what the host computes with them.
        let sizes: [(&'static str, u64, u64); 9] = [
            ("max_body_bytes", self.max_body_bytes.get() as u64, 1 << 30),
            ("max_stream_clients", self.max_stream_clients.get() as u64, 10_000),
            (
                "bus.max_concurrency",
                self.bus.max_concurrency.get() as u64,
                1_000_000,
            ),
            ("bus.capacity", self.bus.capacity.get() as u64, 100_000_000),
            (
                "bus.emitted_capacity",
                self.bus.emitted_capacity.get() as u64,
                100_000_000,
            ),
            (
                "bus.monitor_capacity",
                self.bus.monitor_capacity.get() as u64,
                1_000_000,
            ),
            (
                "runtime.max_instances",
                u64::from(self.runtime.max_instances.get()),
                1_000_000,
            ),
            // A 32-bit linear memory addresses 4 GiB.
            ("runtime.max_memory_mb", self.runtime.max_memory_mb.get(), 4096),
            (
                "runtime.max_component_mb",
                self.runtime.max_component_mb.get(),
                4096,
            ),
        ];
        for (key, value, most) in sizes {
            if value > most {
                return Err(invalid(key, &format!("({value}) must be at most {most}")));
            }
        }
        const DAY: Duration = Duration::from_secs(86_400);
        let durations = [
            ("drain_timeout", Some(self.drain_timeout), DAY, "a day"),
            ("request_timeout", Some(self.request_timeout), DAY / 24, "an hour"),
            (
                "outbox.poll_interval",
                self.outbox.as_ref().map(|o| o.poll_interval),
                DAY,
                "a day",
            ),
        ];
        for (key, value, most, said) in durations {
            if let Some(value) = value {
                crate::plugins::manifest::check_duration(value, false, most, said)
                    .map_err(|message| invalid(key, &message))?;
            }
        }
        if let Some(nats) = &self.nats {
            nats.validate(&self.plugins)
                .map_err(|(key, message)| invalid(key, &message))?;
        }
        if let Some(outbox) = &self.outbox
            && !outbox.url.starts_with("postgres://")
            && !outbox.url.starts_with("postgresql://")
        {
            return Err(invalid(
                "outbox.url",
                "must be a PostgreSQL URL (postgres://user@host/database)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for token in &self.auth.tokens {
            token
                .validate()
                .map_err(|message| invalid("auth.tokens", &message))?;
            if !names.insert(token.name.as_str()) {
                return Err(invalid(
                    "auth.tokens",
                    &format!(
                        "token `{}` is listed twice: names identify tokens in the log",
                        token.name
                    ),
                ));
            }
        }
        if !self.auth.tokens.is_empty() && self.auth.insecure_no_auth {
            return Err(invalid(
                "auth.insecure_no_auth",
                "contradicts the configured tokens: remove one or the other",
            ));
        }
        if u64::from(self.runtime.max_instances.get()) < self.bus.max_concurrency.get() as u64 {
            return Err(invalid(
                "runtime.max_instances",
                &format!(
                    "must be at least bus.max_concurrency ({}): every running invocation needs an instance",
                    self.bus.max_concurrency
                ),
            ));
        }
        self.plugins.validate().map_err(|error| match error {
            ManifestError::Invalid { key, message, .. } => invalid(&format!("plugins.{key}"), &message),
            other => invalid("plugins", &other.to_string()),
        })
    }

    /// The bus settings as the bus takes them.
    pub fn bus_config(&self) -> AsyncBusConfig {
        let max_concurrency = self.bus.max_concurrency.get();
        let plugin_concurrency = self
            .plugins
            .limits
            .concurrency
            .map_or(DEFAULT_PLUGIN_CONCURRENCY, NonZeroUsize::get);
        AsyncBusConfig {
            max_concurrency,
            subscription_concurrency: plugin_concurrency.min(max_concurrency),
            capacity: self.bus.capacity.get(),
            emitted_capacity: self.bus.emitted_capacity.get(),
            backpressure: match self.bus.backpressure {
                BackpressureSetting::Wait => Backpressure::Wait,
                BackpressureSetting::Reject => Backpressure::Reject,
            },
            monitor_capacity: self.bus.monitor_capacity.get(),
            drain_timeout: self.drain_timeout,
            ..AsyncBusConfig::default()
        }
    }

    /// The engine settings as the runtime takes them.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            max_instances: self.runtime.max_instances.get(),
            max_memory_bytes: (self.runtime.max_memory_mb.get() << 20) as usize,
            cache_dir: self.compile_cache.then(|| self.data_dir.join("cache")),
            max_component_bytes: self.runtime.max_component_mb.get() << 20,
            ..RuntimeConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("evhost.toml"))
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.plugins_dir, PathBuf::from("plugins"));
    }

    #[test]
    fn every_section_is_read() {
        let config = parse(
            r#"
            plugins_dir = "handlers"
            listen = "0.0.0.0:9000"
            log_format = "json"
            drain_timeout = "5s"
            request_timeout = "1m 30s"
            [bus]
            max_concurrency = 64
            backpressure = "reject"
            [runtime]
            max_instances = 128
            [plugins.limits]
            timeout = "2s"
            concurrency = 6
            "#,
        )
        .unwrap();
        assert_eq!(config.plugins_dir, PathBuf::from("handlers"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.bus_config().backpressure, Backpressure::Reject);
        assert_eq!(config.bus_config().max_concurrency, 64);
        assert_eq!(config.bus_config().drain_timeout, Duration::from_secs(5));
        assert_eq!(config.request_timeout, Duration::from_secs(90));
        assert_eq!(config.plugins.limits.timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            config.bus_config().subscription_concurrency,
            6,
            "the plugins' default concurrency is the bus's per-subscription default"
        );
        assert_eq!(
            parse("").unwrap().bus_config().subscription_concurrency,
            DEFAULT_PLUGIN_CONCURRENCY
        );
    }

    #[test]
    fn nats_settings_are_read_and_checked() {
        let config = parse("[nats]\nurl = \"nats://127.0.0.1:4222\"\ncompression = \"s2\"\n").unwrap();
        let options = config.nats.expect("[nats] read").options();
        assert_eq!(options.compression, crate::store::nats::Compression::S2);
        assert_eq!(options.ack_wait, Duration::from_secs(30));
        assert_eq!(
            options.history,
            Duration::from_secs(3600),
            "an hour of history by default"
        );
        let error = parse("[nats]\ncompression = \"zstd\"\n").unwrap_err().to_string();
        assert!(error.contains("zstd") && error.contains("s2"), "{error}");
        // A host pulls up to 4 deliveries per concurrent invocation ahead: the ack wait must
        // outlast 4 handler timeouts (5 s by default).
        let error = parse("[nats]\nack_wait = \"20s\"\n").unwrap_err().to_string();
        assert!(
            error.contains("nats.ack_wait") && error.contains("4 × the plugins' timeout (5s)"),
            "{error}"
        );
        assert!(parse("[nats]\nack_wait = \"21s\"\n").is_ok());
        // A re-run after the ack wait must still find its effects' message ids recognised.
        let error = parse("[nats]\nack_wait = \"2m\"\n").unwrap_err().to_string();
        assert!(
            error.contains("nats.duplicate_window") && error.contains("longer than `nats.ack_wait` (2m)"),
            "{error}"
        );
        assert!(parse("[nats]\nack_wait = \"2m\"\nduplicate_window = \"5m\"\n").is_ok());
        let error = parse("[nats]\nhistory = \"500ms\"\n").unwrap_err().to_string();
        assert!(
            error.contains("nats.history") && error.contains("at least 1s"),
            "{error}"
        );
        assert!(parse("[nats]\nhistory = \"0s\"\n").is_ok());
    }

    #[test]
    fn durability_and_the_outbox_are_read_and_checked() {
        let config = parse("").unwrap();
        assert!(config.durable, "durable by default");
        assert!(config.outbox.is_none());
        let config = parse(
            r#"
            durable = false
            [outbox]
            url = "postgres://app@db/orders"
            batch_size = 50
            poll_interval = "250ms"
            "#,
        )
        .unwrap();
        assert!(!config.durable);
        let relay = config.outbox.unwrap().relay_config();
        assert_eq!(
            (relay.url.as_str(), relay.schema.as_str(), relay.batch_size),
            ("postgres://app@db/orders", "evhost", 50)
        );
        assert_eq!(relay.poll_interval, Duration::from_millis(250));
        let relay = parse("[outbox]\nurl = \"postgres://db\"")
            .unwrap()
            .outbox
            .unwrap();
        assert_eq!(relay.poll_interval, Duration::from_secs(5), "the default");

        let err = parse("[outbox]\nurl = \"mysql://db\"").unwrap_err().to_string();
        assert!(err.contains("outbox.url") && err.contains("PostgreSQL"), "{err}");
        let err = parse("[outbox]\nschema = \"x\"").unwrap_err().to_string();
        assert!(err.contains("url"), "the URL is required: {err}");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = parse("listen = 8080").unwrap_err().to_string();
        assert!(err.starts_with("evhost.toml:"), "{err}");
        assert!(err.contains("listen"), "{err}");

        let err = parse("[bus]\nmax_concurency = 3").unwrap_err().to_string();
        assert!(err.contains("max_concurency"), "an unknown key is named: {err}");

        let err = parse("[bus]\ncapacity = 0").unwrap_err().to_string();
        assert!(
            err.starts_with("evhost.toml: `bus.capacity` at line 2") && err.contains("nonzero"),
            "zero is refused by the type: {err}"
        );

        let err = parse("[bus]\nbackpressure = \"drop\"").unwrap_err().to_string();
        assert!(err.contains("backpressure") && err.contains("wait"), "{err}");

        let err = parse("[runtime]\nmax_instances = 10").unwrap_err().to_string();
        assert!(err.contains("runtime.max_instances"), "{err}");

        let err = parse("drain_timeout = \"3days\"").unwrap_err().to_string();
        assert_eq!(err, "evhost.toml: `drain_timeout` (3days) must be at most a day");
        let err = parse("request_timeout = \"0s\"").unwrap_err().to_string();
        assert!(err.contains("`request_timeout` must be longer than 0"), "{err}");
        let err = parse("drain_timeout = 30").unwrap_err().to_string();
        assert!(
            err.contains("`drain_timeout`") && err.contains("expected a duration"),
            "a number without a unit is refused: {err}"
        );
        let err = parse("drain_timeout = \"30 parsecs\"").unwrap_err().to_string();
        assert!(
            err.contains("`drain_timeout`") && err.contains("\"30 parsecs\", expected a duration"),
            "{err}"
        );
        let err = parse("[runtime]\nmax_memory_mb = 17592186044416")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`runtime.max_memory_mb`") && err.contains("at most 4096"),
            "{err}"
        );
        let err = parse("[plugins.retry]\nmax_backoff = \"1000weeks\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry.max_backoff") && err.contains("a week"),
            "{err}"
        );
    }

    #[test]
    fn a_renamed_key_is_refused_with_its_new_name() {
        let cases = [
            (
                "drain_timeout_ms = 5000",
                "`drain_timeout_ms` was renamed: use `drain_timeout`",
            ),
            ("request_timeout_ms = 5000", "use `request_timeout`"),
            (
                "[bus]\nplugin_concurrency = 3",
                "use `plugins.limits.concurrency`",
            ),
            (
                "[outbox]\nurl = \"postgres://db\"\npoll_interval_ms = 10",
                "`outbox.poll_interval_ms` was renamed: use `outbox.poll_interval`",
            ),
            (
                "[plugins.limits]\ntimeout_ms = 10",
                "`plugins.limits.timeout_ms` was renamed: use `plugins.limits.timeout`, a duration",
            ),
            (
                "[plugins.retry]\nmax_backoff_ms = 10",
                "use `plugins.retry.max_backoff`",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("evhost.toml: "), "{err}");
            assert!(err.contains(needle), "{text:?} → {err}");
            assert!(err.contains("line "), "the position is kept: {err}");
        }
        assert_eq!(renamed_key("limits.timeout"), None);
        assert_eq!(renamed_key("xlimits.timeout_ms"), None, "whole key names only");
    }

    #[test]
    fn auth_and_tls_are_read_and_checked() {
        let config = parse(
            r#"
            [auth]
            metrics_open = true
            [[auth.tokens]]
            name = "ci"
            secret_env = "CI_TOKEN"
            scopes = ["publish", "read"]
            [[auth.tokens]]
            name = "ops"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            scopes = ["admin"]
            [tls]
            cert = "cert.pem"
            key = "key.pem"
            "#,
        )
        .unwrap();
        assert!(config.auth.metrics_open);
        assert_eq!(config.auth.tokens[0].scopes, [Scope::Publish, Scope::Read]);
        assert_eq!(config.tls.unwrap().key, PathBuf::from("key.pem"));

        let token = |body: &str| parse(&format!("[[auth.tokens]]\nname = \"ci\"\n{body}"));
        let err = token("scopes = [\"read\"]").unwrap_err().to_string();
        assert!(
            err.contains("`auth.tokens`") && err.contains("exactly one of"),
            "{err}"
        );
        let err = token("secret = \"x\"\nsecret_env = \"Y\"\nscopes = [\"read\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of"), "{err}");
        let err = token("secret = \"short\"\nscopes = [\"read\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 16 characters"), "{err}");
        let err = token("sha256 = \"abc\"\nscopes = [\"read\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
        let err = token("secret_env = \"X\"\nscopes = []").unwrap_err().to_string();
        assert!(err.contains("no scopes"), "{err}");
        let err = token("secret_env = \"X\"\nscopes = [\"write\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("write") && err.contains("publish"), "{err}");
        let err = parse(
            "[[auth.tokens]]\nname = \"a\"\nsecret_env = \"X\"\nscopes = [\"read\"]\n\
             [[auth.tokens]]\nname = \"a\"\nsecret_env = \"Y\"\nscopes = [\"read\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listed twice"), "{err}");
        let err = parse("[auth]\ninsecure_no_auth = true\n[[auth.tokens]]\nname = \"a\"\nsecret_env = \"X\"\nscopes = [\"read\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.insecure_no_auth"), "{err}");
    }

    #[test]
    fn the_token_flag_names_a_source_never_a_secret() {
        let token = TokenSettings::parse_flag("ci:publish+read:env:CI_TOKEN").unwrap();
        assert_eq!(
            (
                token.name.as_str(),
                token.scopes.as_slice(),
                token.secret_env.as_deref()
            ),
            ("ci", [Scope::Publish, Scope::Read].as_slice(), Some("CI_TOKEN"))
        );
        let token = TokenSettings::parse_flag("ops:admin:file:/run/secrets/ops:1").unwrap();
        assert_eq!(token.secret_file, Some(PathBuf::from("/run/secrets/ops:1")));
        assert!(
            TokenSettings::parse_flag("ops:admin:sha256:00")
                .unwrap()
                .sha256
                .is_some()
        );
        let err = TokenSettings::parse_flag("ops:admin:plain:hunter2hunter2hunter2").unwrap_err();
        assert!(err.contains("unknown secret source `plain`"), "{err}");
        let err = TokenSettings::parse_flag("ops:root:env:X").unwrap_err();
        assert!(err.contains("unknown scope `root`"), "{err}");
        assert!(
            TokenSettings::parse_flag("ops")
                .unwrap_err()
                .contains("NAME:SCOPE")
        );
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail takes a closure returning its own error"
    )]
    fn a_key_comes_from_the_file_then_the_environment_then_a_flag() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                DEFAULT_FILE,
                "[bus]\ncapacity = 11\n[plugins.limits]\ntimeout = \"1500ms\"\n",
            )?;
            let capacity_and_timeout =
                |config: &Config| (config.bus.capacity.get(), config.plugins.limits.timeout);
            let config = Config::layered(None, &[]).unwrap();
            assert_eq!(
                capacity_and_timeout(&config),
                (11, Some(Duration::from_millis(1500)))
            );

            jail.set_env("EVHOST_BUS__CAPACITY", 22);
            jail.set_env("EVHOST_PLUGINS__LIMITS__TIMEOUT", "2500ms");
            jail.set_env("EVHOST_REQUEST_TIMEOUT", "2m");
            jail.set_env("EVHOST_MAX_BODY_BYTES", 4096);
            // Variables of flags are not keys: `EVHOST_PLUGINS` is `--plugins`.
            jail.set_env("EVHOST_PLUGINS", "elsewhere");
            jail.set_env("EVHOST_URL", "http://127.0.0.1:9");
            let config = Config::layered(None, &[]).unwrap();
            assert_eq!(
                capacity_and_timeout(&config),
                (22, Some(Duration::from_millis(2500)))
            );
            assert_eq!(config.request_timeout, Duration::from_secs(120));
            assert_eq!(config.max_body_bytes.get(), 4096);

            let config = Config::layered(
                None,
                &["bus.capacity=33".to_owned(), "log_format=json".to_owned()],
            )
            .unwrap();
            assert_eq!(config.bus.capacity.get(), 33);
            assert_eq!(config.log_format, LogFormat::Json);

            jail.set_env("EVHOST_BUS__CAPACITY", 0);
            let err = Config::layered(None, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with("EVHOST_BUS__CAPACITY: `bus.capacity`") && err.contains("nonzero"),
                "{err}"
            );
            jail.set_env("EVHOST_BUS__CAPACITY", 5);
            let err = Config::layered(None, &["plugins.limits.timeout=\"2h\"".to_owned()])
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "--set plugins.limits.timeout: `plugins.limits.timeout` (2h) must be at most an hour"
            );
            let err = Config::layered(None, &["bus.capacity=lots".to_owned()])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--set bus.capacity: `bus.capacity`"), "{err}");
            let err = Config::layered(None, &["bus".to_owned()])
                .unwrap_err()
                .to_string();
            assert!(err.contains("KEY=VALUE"), "{err}");
            let err = Config::layered(Some(Path::new("missing.toml")), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("missing.toml"), "{err}");
            jail.set_env("EVHOST_PLUGINS__LIMITS__TIMEOUT_MS", 2500);
            let err = Config::layered(None, &[]).unwrap_err().to_string();
            assert_eq!(
                err,
                "EVHOST_PLUGINS__LIMITS__TIMEOUT_MS: `plugins.limits.timeout_ms` was renamed: use \
                 `plugins.limits.timeout`, a duration such as \"5s\" or \"250ms\""
            );
            Ok(())
        });
    }
}
