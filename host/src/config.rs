//! `evhost.toml`: host settings and the defaults every plugin's manifest is merged over.
//!
//! Every key is optional; a bare `evhost run` works without the file. Flags and `EVHOST_*`
//! environment variables override what the file says (see the CLI).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::{AsyncBusConfig, Backpressure};
use crate::http::auth::Scope;
use crate::plugins::Manifest;
use crate::runtime::RuntimeConfig;

/// The file `evhost run` reads from the working directory when no `--config` is given.
pub const DEFAULT_FILE: &str = "evhost.toml";

/// The prefix of the environment variables that set keys: `EVHOST_BUS__CAPACITY`.
pub const ENV_PREFIX: &str = "EVHOST_";

/// `EVHOST_*` variables that stand for command-line flags (`EVHOST_PLUGINS` is `--plugins`,
/// `EVHOST_URL` the client's `--url`, …), lower-cased without the prefix: [`Config::layered`]
/// does not read them as keys.
pub const FLAG_VARIABLES: [&str; 18] = [
    "config",
    "plugins",
    "data_dir",
    "listen",
    "log_format",
    "drain_timeout",
    "no_durable",
    "outbox",
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
        key: &'static str,
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
    pub batch_size: usize,
    /// How long to wait for a notification before reading anyway, in milliseconds.
    #[serde(default = "default_outbox_poll_ms")]
    pub poll_interval_ms: u64,
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
            poll_interval_ms: default_outbox_poll_ms(),
        }
    }

    /// The relay's settings.
    pub fn relay_config(&self) -> crate::outbox::OutboxConfig {
        let mut config = crate::outbox::OutboxConfig::new(self.url.clone());
        config.schema.clone_from(&self.schema);
        config.relay_name.clone_from(&self.relay_name);
        config.batch_size = self.batch_size;
        config.poll_interval = Duration::from_millis(self.poll_interval_ms);
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
            .field("poll_interval_ms", &self.poll_interval_ms)
            .finish_non_exhaustive()
    }
}

fn default_outbox_schema() -> String {
    crate::outbox::DEFAULT_SCHEMA.to_owned()
}

fn default_relay_name() -> String {
    "outbox".to_owned()
}

fn default_outbox_batch() -> usize {
    500
}

fn default_outbox_poll_ms() -> u64 {
    5_000
}

/// `[auth]`: who may call the HTTP API.
///
/// With no tokens the API serves only loopback addresses and answers only requests
/// addressed to a loopback name; see the README's "Securing the API".
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The tokens requests may carry (`Authorization: Bearer SECRET`).
    pub tokens: Vec<TokenSettings>,
    /// Serve `GET /metrics` without a token (for a scraper); otherwise it needs `read`.
    pub metrics_open: bool,
    /// Serve every endpoint to anyone who reaches the port, whatever the listen address:
    /// no tokens, no `Host` check.
    pub insecure_no_auth: bool,
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
    /// The HTTP listen address.
    pub listen: SocketAddr,
    /// Who may call the HTTP API.
    pub auth: AuthSettings,
    /// Serve HTTPS instead of HTTP.
    pub tls: Option<TlsSettings>,
    /// Log output format.
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight events, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long an HTTP request may take, in milliseconds; `POST /events?wait=true`
    /// answers `504` with what it knows by then.
    pub request_timeout_ms: u64,
    /// Cache compiled plugins under `data_dir/cache`.
    pub compile_cache: bool,
    /// Bus limits.
    pub bus: BusSettings,
    /// Wasm engine limits.
    pub runtime: RuntimeSettings,
    /// Defaults for every plugin (the same keys as a plugin's `NAME.toml`).
    pub plugins: Manifest,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            plugins_dir: PathBuf::from("plugins"),
            data_dir: PathBuf::from(".evhost"),
            durable: true,
            outbox: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            auth: AuthSettings::default(),
            tls: None,
            log_format: LogFormat::Text,
            drain_timeout_ms: 30_000,
            max_body_bytes: 1 << 20,
            request_timeout_ms: 30_000,
            compile_cache: true,
            bus: BusSettings::default(),
            runtime: RuntimeSettings::default(),
            plugins: Manifest::default(),
        }
    }
}

/// Invocations of one plugin at once unless configured: a few per core is all CPU-bound
/// calls can use, and it bounds what one plugin holds (4 × 64 MiB of memory by default).
pub const DEFAULT_PLUGIN_CONCURRENCY: usize = 4;

/// `[bus]`: concurrency, capacity and timeouts of the event bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// Invocations running at once across all plugins.
    pub max_concurrency: usize,
    /// Default per-plugin limit (a plugin's `limits.concurrency` overrides it). A plugin
    /// cannot do I/O, so its calls use the CPU: more instances at once than cores add
    /// memory (up to `memory_mb` each), not throughput.
    pub plugin_concurrency: usize,
    /// Unfinished events the bus holds at most.
    pub capacity: usize,
    /// Unfinished events emitted by plugins the bus holds at most, on top of `capacity`.
    pub emitted_capacity: usize,
    /// `"wait"` (publishers wait for room) or `"reject"` (HTTP answers 503).
    pub backpressure: BackpressureSetting,
    /// Failure records buffered for the error monitor.
    pub monitor_capacity: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        let bus = AsyncBusConfig::default();
        Self {
            max_concurrency: bus.max_concurrency,
            plugin_concurrency: DEFAULT_PLUGIN_CONCURRENCY,
            capacity: bus.capacity,
            emitted_capacity: bus.emitted_capacity,
            backpressure: BackpressureSetting::Wait,
            monitor_capacity: bus.monitor_capacity,
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
    pub max_instances: u32,
    /// The largest memory limit a plugin may be given, in MiB.
    pub max_memory_mb: u64,
    /// The largest plugin file accepted, in MiB: a bigger `.wasm` is refused without
    /// being read.
    pub max_component_mb: u64,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        let runtime = RuntimeConfig::default();
        Self {
            max_instances: runtime.max_instances,
            max_memory_mb: (runtime.max_memory_bytes >> 20) as u64,
            max_component_mb: runtime.max_component_bytes >> 20,
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
        if let Some(file) = &file {
            // Read first: a missing or unreadable file is an error, not an empty layer.
            figment = figment.merge(Toml::string(&read_file(file)?));
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
        let config: Self = figment.extract().map_err(|error| {
            let key = error.path.join(".");
            let key = key.strip_prefix("default.").unwrap_or(&key).to_owned();
            ConfigError::Parse {
                path: source_of(&key),
                message: layered_message(&error, &key),
            }
        })?;
        config.validate(Path::new("")).map_err(|error| match error {
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: source_of(key),
                key,
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// Parses the TOML `text`; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message: message.to_owned(),
        };
        // (key, value, least, most): the upper bounds keep durations and sizes far from
        // overflowing what the host computes with them.
        let ranges: [(&'static str, u64, u64, u64); 12] = [
            ("drain_timeout_ms", self.drain_timeout_ms, 1, 86_400_000),
            ("request_timeout_ms", self.request_timeout_ms, 1, 3_600_000),
            ("max_body_bytes", self.max_body_bytes as u64, 1, 1 << 30),
            (
                "bus.max_concurrency",
                self.bus.max_concurrency as u64,
                1,
                1_000_000,
            ),
            (
                "bus.plugin_concurrency",
                self.bus.plugin_concurrency as u64,
                1,
                1_000_000,
            ),
            ("bus.capacity", self.bus.capacity as u64, 1, 100_000_000),
            (
                "bus.emitted_capacity",
                self.bus.emitted_capacity as u64,
                1,
                100_000_000,
            ),
            (
                "bus.monitor_capacity",
                self.bus.monitor_capacity as u64,
                1,
                1_000_000,
            ),
            (
                "runtime.max_instances",
                u64::from(self.runtime.max_instances),
                1,
                1_000_000,
            ),
            // A 32-bit linear memory addresses 4 GiB.
            ("runtime.max_memory_mb", self.runtime.max_memory_mb, 1, 4096),
            ("runtime.max_component_mb", self.runtime.max_component_mb, 1, 4096),
            (
                "outbox.poll_interval_ms",
                self.outbox.as_ref().map_or(1, |o| o.poll_interval_ms),
                1,
                86_400_000,
            ),
        ];
        for (key, value, least, most) in ranges {
            if value < least {
                return Err(invalid(key, &format!("must be at least {least}")));
            }
            if value > most {
                return Err(invalid(key, &format!("({value}) must be at most {most}")));
            }
        }
        if let Some(outbox) = &self.outbox {
            if outbox.batch_size == 0 {
                return Err(invalid("outbox.batch_size", "must be at least 1"));
            }
            if !outbox.url.starts_with("postgres://") && !outbox.url.starts_with("postgresql://") {
                return Err(invalid(
                    "outbox.url",
                    "must be a PostgreSQL URL (postgres://user@host/database)",
                ));
            }
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
        if u64::from(self.runtime.max_instances) < self.bus.max_concurrency as u64 {
            return Err(invalid(
                "runtime.max_instances",
                &format!(
                    "must be at least bus.max_concurrency ({}): every running invocation needs an instance",
                    self.bus.max_concurrency
                ),
            ));
        }
        self.plugins.validate().map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            key: "plugins",
            message: e.to_string(),
        })
    }

    /// The bus settings as the bus takes them.
    pub fn bus_config(&self) -> AsyncBusConfig {
        AsyncBusConfig {
            max_concurrency: self.bus.max_concurrency,
            subscription_concurrency: self.bus.plugin_concurrency.min(self.bus.max_concurrency),
            capacity: self.bus.capacity,
            emitted_capacity: self.bus.emitted_capacity,
            backpressure: match self.bus.backpressure {
                BackpressureSetting::Wait => Backpressure::Wait,
                BackpressureSetting::Reject => Backpressure::Reject,
            },
            monitor_capacity: self.bus.monitor_capacity,
            drain_timeout: self.drain_timeout(),
            ..AsyncBusConfig::default()
        }
    }

    /// The engine settings as the runtime takes them.
    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            max_instances: self.runtime.max_instances,
            max_memory_bytes: (self.runtime.max_memory_mb << 20) as usize,
            cache_dir: self.compile_cache.then(|| self.data_dir.join("cache")),
            max_component_bytes: self.runtime.max_component_mb << 20,
            ..RuntimeConfig::default()
        }
    }

    /// [`Config::drain_timeout_ms`] as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// [`Config::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
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
            drain_timeout_ms = 5000
            [bus]
            max_concurrency = 64
            backpressure = "reject"
            [runtime]
            max_instances = 128
            [plugins.limits]
            timeout_ms = 2000
            "#,
        )
        .unwrap();
        assert_eq!(config.plugins_dir, PathBuf::from("handlers"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.bus_config().backpressure, Backpressure::Reject);
        assert_eq!(config.bus_config().max_concurrency, 64);
        assert_eq!(config.drain_timeout(), Duration::from_secs(5));
        assert_eq!(config.plugins.limits.timeout_ms, Some(2000));
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
            "#,
        )
        .unwrap();
        assert!(!config.durable);
        let relay = config.outbox.unwrap().relay_config();
        assert_eq!(
            (relay.url.as_str(), relay.schema.as_str(), relay.batch_size),
            ("postgres://app@db/orders", "evhost", 50)
        );
        assert_eq!(relay.poll_interval, Duration::from_secs(5));

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
        assert_eq!(err, "evhost.toml: `bus.capacity` must be at least 1");

        let err = parse("[bus]\nbackpressure = \"drop\"").unwrap_err().to_string();
        assert!(err.contains("backpressure") && err.contains("wait"), "{err}");

        let err = parse("[runtime]\nmax_instances = 10").unwrap_err().to_string();
        assert!(err.contains("runtime.max_instances"), "{err}");

        let err = parse("drain_timeout_ms = 18446744073709551615")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`drain_timeout_ms` (18446744073709551615) must be at most"),
            "{err}"
        );
        let err = parse("[runtime]\nmax_memory_mb = 17592186044416")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`runtime.max_memory_mb`") && err.contains("at most 4096"),
            "{err}"
        );
        let err = parse("[plugins.retry]\nmax_backoff_ms = 9000000000000000")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry.max_backoff_ms") && err.contains("a week"),
            "{err}"
        );
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
                "[bus]\ncapacity = 11\n[plugins.limits]\ntimeout_ms = 1500\n",
            )?;
            let config = Config::layered(None, &[]).unwrap();
            assert_eq!(
                (config.bus.capacity, config.plugins.limits.timeout_ms),
                (11, Some(1500))
            );

            jail.set_env("EVHOST_BUS__CAPACITY", 22);
            jail.set_env("EVHOST_PLUGINS__LIMITS__TIMEOUT_MS", 2500);
            jail.set_env("EVHOST_MAX_BODY_BYTES", 4096);
            // Variables of flags are not keys: `EVHOST_PLUGINS` is `--plugins`.
            jail.set_env("EVHOST_PLUGINS", "elsewhere");
            jail.set_env("EVHOST_URL", "http://127.0.0.1:9");
            let config = Config::layered(None, &[]).unwrap();
            assert_eq!(
                (config.bus.capacity, config.plugins.limits.timeout_ms),
                (22, Some(2500))
            );
            assert_eq!(config.max_body_bytes, 4096);

            let config = Config::layered(
                None,
                &["bus.capacity=33".to_owned(), "log_format=json".to_owned()],
            )
            .unwrap();
            assert_eq!(config.bus.capacity, 33);
            assert_eq!(config.log_format, LogFormat::Json);

            jail.set_env("EVHOST_BUS__CAPACITY", 0);
            let err = Config::layered(None, &[]).unwrap_err().to_string();
            assert_eq!(err, "EVHOST_BUS__CAPACITY: `bus.capacity` must be at least 1");
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
            Ok(())
        });
    }
}
