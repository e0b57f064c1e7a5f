//! The `evhost` command line: `run`, `publish`, `plugins list|check`, `new`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use evhost::config::{Config, ConfigError, LogFormat, Source, TlsSettings, TokenSettings};
use evhost::event::Event;
use evhost::http::{Purged, Replayed};
use evhost::plugins::PluginStatus;
use evhost::runtime::{PluginOptions, Runtime, RuntimeConfig};
use evhost::store::DeadLetter;
use evhost::store::MemoryKv;

/// evhost runs WebAssembly event handlers: it delivers each published CloudEvent to every
/// plugin subscribed to its type, in a sandbox, under limits.
#[derive(Debug, Parser)]
#[command(name = "evhost", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How the client commands reach a running host.
    #[command(flatten)]
    pub host: HostArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: load the plugins folder, watch it, serve HTTP.
    ///
    /// Settings come from evhost.toml (or --config), then EVHOST_* environment variables,
    /// then flags. With no file and no flags it serves 127.0.0.1:8080 and loads ./plugins.
    Run(RunArgs),
    /// Publish events to a running host.
    ///
    /// One event from flags (--type, --source, --data …), or many from --file (a JSON array
    /// of CloudEvents, or one CloudEvent per line); --file - reads standard input.
    Publish(PublishArgs),
    /// Inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Create a new plugin crate that builds as-is.
    New(NewArgs),
    /// Inspect and act on the dead-letter queue of a running host.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Look stored events up on a running host: where each delivery stands, and the saga
    /// an event belongs to.
    #[command(subcommand)]
    Events(crate::events::EventsCommand),
    /// Set up the PostgreSQL transactional outbox the host relays.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

/// `evhost outbox …`.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Create the outbox tables, triggers and functions unless they exist (safe to repeat,
    /// and while applications write).
    Install {
        /// The PostgreSQL URL, e.g. postgres://app@db/orders.
        url: String,
        /// The schema to hold the outbox.
        #[arg(long, default_value = evhost::outbox::DEFAULT_SCHEMA)]
        schema: String,
    },
    /// Print the SQL that `install` runs, to review or apply as a migration.
    Sql {
        /// The schema to hold the outbox.
        #[arg(long, default_value = evhost::outbox::DEFAULT_SCHEMA)]
        schema: String,
    },
}

/// `evhost outbox …`.
pub async fn outbox(command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Install { url, schema } => {
            evhost::outbox::Outbox::install_at(&url, &schema).await?;
            println!("the evhost outbox is installed in schema {schema}");
        }
        OutboxCommand::Sql { schema } => print!("{}", evhost::outbox::Outbox::schema_sql(&schema)?),
    }
    Ok(())
}

/// `evhost dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: id, plugin, event type and id, attempts, last failure.
    List {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Show one dead letter with its event and every failure.
    Show {
        /// The dead letter's id.
        id: u64,
    },
    /// Deliver dead letters again, to the plugin's current version.
    Replay {
        /// The dead letter's id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<u64>,
        /// Every dead letter (of `--plugin`, if given).
        #[arg(long)]
        all: bool,
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Drop dead letters (all of them, or `--plugin`'s).
    Purge {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
    },
}

/// How the client commands reach a running host.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    /// The host's base URL (`https://…` when it serves TLS).
    #[arg(
        long,
        global = true,
        env = "EVHOST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The API token to send (prefer EVHOST_TOKEN or --token-file: other local users can
    /// read command lines).
    #[arg(long, global = true, env = "EVHOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token (a trailing newline is ignored); wins over --token.
    #[arg(long, global = true, env = "EVHOST_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for `https://` URLs, besides the system's.
    #[arg(long, global = true, env = "EVHOST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl HostArgs {
    /// A client for the host: its base URL without a trailing `/`, the token and the CA.
    pub fn client(&self) -> anyhow::Result<HostClient> {
        let token = match (&self.token, &self.token_file) {
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?;
                let token = text.trim_end_matches(['\n', '\r']);
                if token.is_empty() {
                    bail!("the token file {} is empty", path.display());
                }
                Some(token.to_owned())
            }
            (token, None) => token.clone(),
        };
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &self.ca_cert {
            let pem =
                std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
            if certificates.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(HostClient {
            http: builder.build().context("setting up the HTTP client")?,
            base: self.url.trim_end_matches('/').to_owned(),
            token,
        })
    }
}

/// Talks to a running host with the token and trust [`HostArgs`] gave.
#[derive(Debug)]
pub struct HostClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl HostClient {
    /// A request to `path` (starting with `/`), carrying the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`, turning a failure to connect, a `401` and a `403` into messages
    /// that say what to do.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the host at {}", self.base))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let reason = body["error"].as_str().unwrap_or("no reason given");
            let hint = if status == reqwest::StatusCode::FORBIDDEN {
                if reason.contains("scope") {
                    "use a token with that scope"
                } else {
                    "reach the host by a loopback address, or configure tokens on it"
                }
            } else if self.token.is_none() {
                "pass a token with --token-file, EVHOST_TOKEN or --token"
            } else {
                "check the token"
            };
            bail!("the host refused the request ({status}): {reason}; {hint}");
        }
        Ok(response)
    }
}

/// `evhost run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (default: ./evhost.toml if present).
    #[arg(long, short, env = "EVHOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// The watched plugins folder.
    #[arg(long, env = "EVHOST_PLUGINS")]
    pub plugins: Option<PathBuf>,
    /// Where evhost keeps its state.
    #[arg(long, env = "EVHOST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The HTTP listen address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "EVHOST_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Log format.
    #[arg(long, env = "EVHOST_LOG_FORMAT", value_parser = parse_log_format)]
    pub log_format: Option<LogFormat>,
    /// How long shutdown waits for in-flight events, e.g. 30s or 2m (the key
    /// `drain_timeout`).
    #[arg(long, env = "EVHOST_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
    /// Keep everything in memory instead of the durable log in the data directory: a
    /// restart loses what was pending, the dead-letter queue and plugin key-value data.
    #[arg(long, env = "EVHOST_NO_DURABLE")]
    pub no_durable: bool,
    /// Set any key of evhost.toml, e.g. --set bus.capacity=5000 or
    /// --set plugins.limits.timeout=2s (a TOML value; repeat it for several). Wins over
    /// the file and EVHOST_SECTION__KEY variables; the dedicated flags win over it.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Relay the transactional outbox of this PostgreSQL database into the log, e.g.
    /// postgres://app@db/orders (schema and batching in evhost.toml's `[outbox]`).
    #[arg(long, env = "EVHOST_OUTBOX")]
    pub outbox: Option<String>,
    /// Keep the log on this NATS JetStream server, shared with every evhost process that
    /// uses it, e.g. nats://127.0.0.1:4222 (stream and partitions in evhost.toml's
    /// `[nats]`).
    #[arg(long, env = "EVHOST_NATS")]
    pub nats: Option<String>,
    /// An API token, added to those of `[auth]`: NAME:SCOPE+SCOPE:SOURCE with SOURCE
    /// env:VARIABLE, file:PATH or sha256:HEX, e.g. ci:publish+read:env:CI_TOKEN. Repeat
    /// it (or separate with commas in EVHOST_AUTH_TOKENS) for several.
    #[arg(long = "auth-token", env = "EVHOST_AUTH_TOKENS", value_delimiter = ',', value_parser = TokenSettings::parse_flag)]
    pub auth_tokens: Vec<TokenSettings>,
    /// Serve GET /metrics without a token, for a scraper.
    #[arg(long, env = "EVHOST_METRICS_OPEN")]
    pub metrics_open: bool,
    /// Serve every endpoint to whoever reaches the port, without tokens, on any address.
    #[arg(long, env = "EVHOST_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "EVHOST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "EVHOST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// `evhost publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Events to publish: a JSON array of CloudEvents or one per line (NDJSON); `-` is stdin.
    #[arg(long, short, conflicts_with_all = ["ty", "data", "subject", "id"])]
    pub file: Option<PathBuf>,
    /// Event type of a single event.
    #[arg(long = "type", short = 't', required_unless_present = "file")]
    pub ty: Option<String>,
    /// Source of a single event.
    #[arg(long, short, default_value = "evhost-cli")]
    pub source: String,
    /// Subject (ordering key) of a single event.
    #[arg(long)]
    pub subject: Option<String>,
    /// Id of a single event (generated if absent).
    #[arg(long)]
    pub id: Option<String>,
    /// JSON data of a single event.
    #[arg(long, short)]
    pub data: Option<String>,
    /// Wait until every handler finished and print their outcomes.
    #[arg(long)]
    pub wait: bool,
}

/// `evhost plugins …`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List the plugins a running host serves.
    List,
    /// Print one value of a plugin's key-value store (its read model) from a running host,
    /// or with --list its keys and values.
    Kv {
        /// The plugin's name.
        plugin: String,
        /// The key, e.g. `user:u1`.
        #[arg(required_unless_present = "list", conflicts_with = "list")]
        key: Option<String>,
        /// List the keys (in order) with their values instead.
        #[arg(long)]
        list: bool,
        /// With --list: only keys starting with this.
        #[arg(long, requires = "list")]
        prefix: Option<String>,
        /// With --list: at most this many keys.
        #[arg(long, requires = "list", default_value_t = 100)]
        limit: usize,
    },
    /// What happened to a plugin on a running host: loaded, swapped (old → new hash),
    /// refused (why), removed, with times.
    History {
        /// The plugin's name (a refused file's stem works too).
        plugin: String,
    },
    /// Check a component offline: its world, metadata, subscriptions and imports.
    Check {
        /// The `.wasm` file.
        file: PathBuf,
    },
    /// Run one event through a component offline, as the host would, and print the
    /// outcome (ok, or the failure's kind and reason), the key-value writes and the events
    /// it emitted; its logs go to stderr. Exits 1 when the plugin fails the event. Compiled
    /// code is cached in ~/.cache/evhost (or $XDG_CACHE_HOME/evhost).
    Call {
        /// The `.wasm` file (Rust, Python or JavaScript: any component of the handler world).
        file: PathBuf,
        /// A CloudEvent in the JSON format (`-` reads standard input).
        #[arg(long, value_name = "FILE")]
        event: PathBuf,
        /// A value in the plugin's key-value store before the call, as text (repeatable),
        /// e.g. `--kv 'user:u1={"name":"Ada"}'`.
        #[arg(long = "kv", value_name = "KEY=VALUE")]
        kv: Vec<String>,
        /// A value the plugin reads through `wasi:config`, as `[config]` in its manifest
        /// would give it (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
}

/// `evhost new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name (also the crate and folder name), e.g. `order-projection`.
    pub name: String,
    /// The language to write the plugin in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
    /// Where to create the folder (default: the current directory).
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// The guest SDKs: `guest-sdk` of an evhost source tree. A Rust plugin depends on the
    /// crate there (by default the source tree this binary was built from); a Python,
    /// JavaScript or TypeScript plugin on the package in its `python/` or `js/` (by
    /// default the one this binary carries, written to
    /// ~/.local/share/evhost/sdk/VERSION).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// What `evhost new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate built with `cargo build --target wasm32-wasip2`.
    Rust,
    /// An `app.py` built with `componentize-py`.
    Python,
    /// An `app.js` bundled with esbuild and built with `componentize-js`.
    Js,
    /// An `app.ts`, type-checked with `tsc`, bundled with esbuild and built with
    /// `componentize-js`.
    Ts,
}

impl RunArgs {
    /// The configuration file with flags and environment applied over it.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::layered(self.config.as_deref(), &self.set)?;
        let flag = |name: &str| {
            Source::Flag(format!(
                "--{name} (or EVHOST_{})",
                name.replace('-', "_").to_ascii_uppercase()
            ))
        };
        if let Some(plugins) = &self.plugins {
            config.plugins_dir.clone_from(plugins);
            config.sources.set("plugins_dir", flag("plugins"));
        }
        if let Some(data_dir) = &self.data_dir {
            config.data_dir.clone_from(data_dir);
            config.sources.set("data_dir", flag("data-dir"));
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
            config.sources.set("listen", flag("listen"));
        }
        if self.no_durable {
            config.durable = false;
            config.sources.set("durable", flag("no-durable"));
        }
        if let Some(url) = &self.outbox {
            match &mut config.outbox {
                Some(outbox) => outbox.url.clone_from(url),
                None => config.outbox = Some(evhost::config::OutboxSettings::new(url.clone())),
            }
            config.sources.set("outbox.url", flag("outbox"));
        }
        if let Some(url) = &self.nats {
            match &mut config.nats {
                Some(nats) => nats.url.clone_from(url),
                None => config.nats = Some(evhost::config::NatsSettings::new(url.clone())),
            }
            config.sources.set("nats.url", flag("nats"));
        }
        if !self.auth_tokens.is_empty() {
            config.auth.tokens.extend(self.auth_tokens.iter().cloned());
            config.sources.set(
                "auth.tokens",
                Source::Flag("--auth-token (or EVHOST_AUTH_TOKENS)".into()),
            );
        }
        if self.metrics_open {
            config.auth.metrics_open = true;
            config.sources.set("auth.metrics_open", flag("metrics-open"));
        }
        if self.insecure_no_auth {
            config.auth.insecure_no_auth = true;
            config
                .sources
                .set("auth.insecure_no_auth", flag("insecure-no-auth"));
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
            });
            config.sources.set("tls", flag("tls-cert"));
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
            config.sources.set("log_format", flag("log-format"));
        }
        if let Some(timeout) = self.drain_timeout {
            config.drain_timeout = timeout;
            config.sources.set("drain_timeout", flag("drain-timeout"));
        }
        config.validate(Path::new("<flags>"))?;
        Ok(config)
    }
}

/// `text` or `json`.
fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("`{other}` is not a log format: use text or json")),
    }
}

/// Sets up `tracing`: level from `RUST_LOG` (default `info`), text or JSON lines on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `evhost publish`.
pub async fn publish(host: &HostArgs, args: PublishArgs) -> anyhow::Result<()> {
    let client = host.client()?;
    let path = if args.wait { "/events?wait=true" } else { "/events" };
    let (content_type, body) = match &args.file {
        Some(path) => ("application/cloudevents-batch+json", read_events(path)?),
        None => {
            let data = match &args.data {
                Some(text) => serde_json::from_str(text).context("--data is not valid JSON")?,
                None => Value::Null,
            };
            let ty = args.ty.clone().expect("clap requires --type without --file");
            let mut event = Event::new(ty, args.source.clone(), data);
            if let Some(subject) = &args.subject {
                event.subject = Some(subject.clone());
            }
            if let Some(id) = &args.id {
                event.id.clone_from(id);
            }
            event.validate()?;
            ("application/cloudevents+json", serde_json::to_vec(&event)?)
        }
    };
    let request = client
        .request(reqwest::Method::POST, path)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    let response = client.send(request).await?;
    let status = response.status();
    let text = response.text().await?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if !status.is_success() {
        bail!("the host answered {status}: {pretty}");
    }
    println!("{pretty}");
    Ok(())
}

/// The bytes of the file `path`, or of standard input when it is `-`.
fn read_file_or_stdin(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        Ok(bytes)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Reads a JSON array of events or NDJSON into the body of a batch request, checking every
/// event first so a mistake is reported with its line.
fn read_events(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = String::from_utf8(read_file_or_stdin(path)?).context("the events are not UTF-8 text")?;
    let events: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON array", path.display()))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for (n, event) in events.iter().enumerate() {
        Event::from_value(event.clone()).with_context(|| format!("event {} of {}", n + 1, path.display()))?;
    }
    if events.is_empty() {
        bail!("{} holds no events", path.display());
    }
    Ok(serde_json::to_vec(&events)?)
}

/// `evhost plugins list`.
pub async fn list_plugins(host: &HostArgs) -> anyhow::Result<()> {
    let client = host.client()?;
    let response = client
        .send(client.request(reqwest::Method::GET, "/plugins"))
        .await?;
    let plugins: Vec<PluginStatus> = answer(response).await?;
    if plugins.is_empty() {
        println!("no plugins loaded");
    }
    for plugin in plugins {
        println!(
            "{}  {}  {}  {}",
            plugin.name,
            plugin.version,
            plugin.hash,
            plugin.subscriptions.join(",")
        );
    }
    Ok(())
}

/// `evhost dlq …`.
pub async fn dlq(host: &HostArgs, command: DlqCommand) -> anyhow::Result<()> {
    let client = host.client()?;
    let request = match &command {
        DlqCommand::List { plugin, .. } => {
            let mut request = client.request(reqwest::Method::GET, "/dlq");
            if let Some(plugin) = plugin {
                request = request.query(&[("plugin", plugin)]);
            }
            request
        }
        DlqCommand::Show { id, .. } => client.request(reqwest::Method::GET, &format!("/dlq/{id}")),
        DlqCommand::Replay { id, all, plugin, .. } => {
            let mut request = client.request(reqwest::Method::POST, "/dlq/replay");
            if let Some(id) = id {
                request = request.query(&[("id", id)]);
            }
            if *all {
                request = request.query(&[("all", "true")]);
            }
            if let Some(plugin) = plugin {
                request = request.query(&[("plugin", plugin)]);
            }
            request
        }
        DlqCommand::Purge { plugin, .. } => {
            let request = client.request(reqwest::Method::DELETE, "/dlq");
            match plugin {
                Some(plugin) => request.query(&[("plugin", plugin)]),
                None => request.query(&[("all", "true")]),
            }
        }
    };
    let response = client.send(request).await?;
    match command {
        DlqCommand::List { .. } => {
            let letters: Vec<DeadLetter> = answer(response).await?;
            if letters.is_empty() {
                println!("the dead-letter queue is empty");
            }
            for letter in letters {
                let last = letter.failures.last();
                println!(
                    "{}  {}  {} {}  {} attempts  {}: {}",
                    letter.id,
                    letter.subscription,
                    letter.event.ty,
                    letter.event.id,
                    letter.failures.len(),
                    last.map_or("?", |failure| failure.kind.as_str()),
                    last.map_or("", |failure| failure.message.as_str())
                );
            }
        }
        DlqCommand::Show { .. } => {
            let letter: DeadLetter = answer(response).await?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
        }
        DlqCommand::Replay { .. } => {
            let Replayed { replayed } = answer(response).await?;
            println!("replayed {replayed}");
        }
        DlqCommand::Purge { .. } => {
            let Purged { purged } = answer(response).await?;
            println!("purged {purged}");
        }
    }
    Ok(())
}

/// The host's answer as the server's own type, or its error message.
pub(crate) async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<T> {
    let status = response.status();
    if !status.is_success() {
        let body: Value = response.json().await.unwrap_or(Value::Null);
        bail!(
            "the host answered {status}: {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    response.json().await.context("reading the host's answer")
}

/// Every byte but the URL path's unreserved characters percent-encoded: a key is an
/// arbitrary string (`count:x?y`, `#`, `%25`, `a/b` all reach the host as they are).
pub(crate) fn path_segment(text: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b':');
    percent_encoding::utf8_percent_encode(text, RESERVED).to_string()
}

/// `evhost plugins history NAME`: one change per line, oldest first.
pub async fn plugin_history(host: &HostArgs, plugin: &str) -> anyhow::Result<()> {
    let client = host.client()?;
    let path = format!("/plugins/{}/history", path_segment(plugin));
    let response = client.send(client.request(reqwest::Method::GET, &path)).await?;
    let history: Value = answer(response).await?;
    match history["serving"].as_str() {
        Some(hash) => println!("{} serves {hash}", history["plugin"].as_str().unwrap_or(plugin)),
        None => println!("{} is not loaded", history["plugin"].as_str().unwrap_or(plugin)),
    }
    let changes: Vec<evhost::http::PluginEvent> =
        serde_json::from_value(history["changes"].clone()).context("reading the host's answer")?;
    for event in changes {
        let what = match event.change {
            evhost::http::PluginChange::Loaded { hash, version } => {
                format!("loaded {hash} (version {version})")
            }
            evhost::http::PluginChange::Swapped { from, to, version } => {
                format!("swapped {from} → {to} (version {version})")
            }
            evhost::http::PluginChange::Refused { reason } => format!("refused: {reason}"),
            evhost::http::PluginChange::Removed => "removed: its file is gone".to_owned(),
        };
        println!(
            "{}  {what}",
            event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    Ok(())
}

/// `evhost plugins kv NAME --list`: every page of the plugin's keys (of `prefix`), up
/// to `limit` keys, one per line with its value.
pub async fn list_kv(
    host: &HostArgs,
    plugin: &str,
    prefix: Option<&str>,
    limit: usize,
) -> anyhow::Result<()> {
    let client = host.client()?;
    let path = format!("/plugins/{}/kv", path_segment(plugin));
    let mut after: Option<String> = None;
    let mut listed = 0;
    while listed < limit {
        let mut query = vec![("limit", (limit - listed).min(1000).to_string())];
        query.extend(prefix.map(|prefix| ("prefix", prefix.to_owned())));
        query.extend(after.take().map(|after| ("after", after)));
        let response = client
            .send(client.request(reqwest::Method::GET, &path).query(&query))
            .await?;
        let page: Value = answer(response).await?;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for entry in &entries {
            let value = match (&entry["json"], &entry["base64"]) {
                (Value::Null, Value::String(bytes)) => format!("(base64) {bytes}"),
                (json, _) => json.to_string(),
            };
            println!("{}  {value}", entry["key"].as_str().unwrap_or_default());
        }
        listed += entries.len();
        match page["next_after"].as_str() {
            Some(next) if !entries.is_empty() => after = Some(next.to_owned()),
            _ => break,
        }
    }
    if listed == 0 {
        println!("no keys");
    }
    Ok(())
}

/// `evhost plugins kv`.
pub async fn read_kv(host: &HostArgs, plugin: &str, key: &str) -> anyhow::Result<()> {
    let client = host.client()?;
    let path = format!("/plugins/{}/kv/{}", path_segment(plugin), path_segment(key));
    let response = client.send(client.request(reqwest::Method::GET, &path)).await?;
    let status = response.status();
    let body = response.bytes().await?;
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(value) => serde_json::to_string_pretty(&value)?,
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    if !status.is_success() {
        bail!("the host answered {status}: {text}");
    }
    println!("{text}");
    Ok(())
}

/// `evhost plugins check`: loads the component in a throwaway runtime.
pub async fn check_plugin(file: &Path) -> anyhow::Result<()> {
    let config = RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    };
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if size > config.max_component_bytes {
        bail!(
            "{} is {size} bytes, over the limit of {} bytes a host accepts (`runtime.max_component_mb`)",
            file.display(),
            config.max_component_bytes
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = Runtime::new(config)?;
    let plugin = runtime
        .load(bytes, PluginOptions::default(), Arc::new(MemoryKv::default()))
        .await
        .with_context(|| format!("{} is not a usable evhost plugin", file.display()))?;
    let info = plugin.info();
    println!("{}: ok", file.display());
    let stem = file.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default();
    if !evhost::runtime::same_name(&stem, &info.name) {
        println!(
            "note:          a plugins folder serves it only as {}.wasm or {}.wasm (a plugin's name is its file \
             name, `-` and `_` counting as the same character)",
            info.name,
            info.name.replace('-', "_")
        );
    }
    println!("name:          {}", info.name);
    println!("version:       {}", info.version);
    println!("hash:          {}", info.hash);
    println!("subscriptions: {}", info.subscriptions.join(", "));
    println!("imports:");
    for import in &info.imports {
        println!("  {import}");
    }
    Ok(())
}

/// `KEY=VALUE`, naming `flag` when it is not.
fn key_value(flag: &str, item: &str) -> anyhow::Result<(String, String)> {
    item.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .with_context(|| format!("`{flag} {item}` is not KEY=VALUE"))
}

/// What `evhost plugins call` prints: one invocation and what it would have done.
#[derive(Debug, serde::Serialize)]
struct CallReport {
    plugin: String,
    version: String,
    hash: String,
    /// `ok`, or the failure's kind (`retry`, `reject`, `trap`, `out-of-fuel`, …).
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// What the call wrote, in order; applied by a host only when the outcome is `ok`.
    kv_writes: Vec<Value>,
    /// What the call emitted, as the host would publish it.
    emitted: Vec<Value>,
}

/// `evhost plugins call`: one event through a component in a throwaway runtime, with an
/// in-memory store holding `kv` and the manifest values `config`.
pub async fn call_plugin(file: &Path, event: &Path, kv: &[String], config: &[String]) -> anyhow::Result<()> {
    use evhost::EventHandler as _;
    use evhost::store::KeyValueStore as _;

    init_logging(LogFormat::Text);
    let event =
        Event::from_json(&read_file_or_stdin(event)?).context("the event is not a valid CloudEvent")?;
    let values = kv
        .iter()
        .map(|item| key_value("--kv", item))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = PluginOptions {
        config: config
            .iter()
            .map(|item| key_value("--config", item))
            .collect::<anyhow::Result<_>>()?,
        ..PluginOptions::default()
    };
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Compiled code is cached as `evhost run` caches it, so calling an interpreter's
    // component again takes a fraction of a second instead of ten.
    let cache_dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("evhost"));
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir,
        ..RuntimeConfig::default()
    })?;
    let store = Arc::new(MemoryKv::default());
    let plugin = runtime
        .load(bytes, options, Arc::clone(&store) as _)
        .await
        .with_context(|| format!("{} is not a usable evhost plugin", file.display()))?;
    let info = plugin.info().clone();
    let writes = values
        .into_iter()
        .map(|(key, value)| (key, Some(value.into_bytes())))
        .collect();
    store.commit(&info.name, writes).await?;

    let outcome = plugin.handle(Arc::new(event)).await;
    let shown = |bytes: &[u8]| match serde_json::from_slice::<Value>(bytes) {
        Ok(json) => json,
        Err(_) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
    };
    let (effects, failure) = match outcome {
        Ok(effects) => (effects, None),
        Err(error) => (evhost::bus::Effects::none(), Some(error)),
    };
    let report = CallReport {
        plugin: info.name,
        version: info.version,
        hash: info.hash,
        outcome: failure
            .as_ref()
            .map_or("ok", |error| error.kind().as_str())
            .to_owned(),
        reason: failure.as_ref().map(|error| error.message().to_owned()),
        kv_writes: effects
            .kv_writes
            .iter()
            .map(|(key, value)| match value {
                Some(value) => serde_json::json!({"key": key, "value": shown(value)}),
                None => serde_json::json!({"key": key, "deleted": true}),
            })
            .collect(),
        emitted: effects.emitted.iter().map(Event::to_json).collect(),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    match failure {
        None => Ok(()),
        Some(error) => bail!(
            "the plugin failed the event: {}: {}",
            error.kind().as_str(),
            error.message()
        ),
    }
}

/// `evhost new`: writes `NAME/Cargo.toml`, `NAME/src/lib.rs` and `NAME/.gitignore` for
/// Rust; `NAME/app.py`, `NAME/test_app.py` and `NAME/requirements.txt` (the SDK package,
/// componentize-py and pytest) for Python; `NAME/app.js` (or `.ts`), its test and
/// `NAME/package.json` (the SDK package, esbuild and componentize-js) for JavaScript and
/// TypeScript.
pub fn new_plugin(args: &NewArgs) -> anyhow::Result<PathBuf> {
    let name = args.name.as_str();
    let valid = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` is not a valid plugin name: use lower-case letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let dir = args.path.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    // The SDK package a Python or JavaScript plugin depends on, by absolute path.
    let package = |sdk: crate::sdk::Sdk| -> anyhow::Result<PathBuf> {
        let package = match &args.sdk {
            Some(tree) => tree.join(sdk.folder()),
            None => crate::sdk::install(sdk, &crate::sdk::default_root()?)?,
        };
        package
            .canonicalize()
            .with_context(|| format!("the {sdk:?} SDK is not at {}", package.display()))
    };
    let write = |file: &str, contents: String| -> anyhow::Result<()> {
        let path = dir.join(file);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    };
    let fill = |template: &str| template.replace("@NAME@", name);
    match args.lang {
        Lang::Python => {
            let package = package(crate::sdk::Sdk::Python)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write("app.py", fill(include_str!("../templates/python/app.py.in")))?;
            write(
                "test_app.py",
                fill(include_str!("../templates/python/test_app.py.in")),
            )?;
            write(
                "requirements.txt",
                include_str!("../templates/python/requirements.txt.in").replace("@SDK@", &file_url(&package)),
            )?;
            write(".gitignore", "*.wasm\n__pycache__/\n.venv/\n".to_owned())?;
        }
        Lang::Js | Lang::Ts => {
            let package = package(crate::sdk::Sdk::Js)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let fill =
                |template: &str| fill(template).replace("@SDK@", &format!("file:{}", package.display()));
            if args.lang == Lang::Js {
                write("app.js", fill(include_str!("../templates/js/app.js.in")))?;
                write(
                    "app.test.js",
                    fill(include_str!("../templates/js/app.test.js.in")),
                )?;
                write(
                    "package.json",
                    fill(include_str!("../templates/js/package.json.in")),
                )?;
            } else {
                write("app.ts", fill(include_str!("../templates/ts/app.ts.in")))?;
                write(
                    "app.test.ts",
                    fill(include_str!("../templates/ts/app.test.ts.in")),
                )?;
                write(
                    "package.json",
                    fill(include_str!("../templates/ts/package.json.in")),
                )?;
                write(
                    "tsconfig.json",
                    fill(include_str!("../templates/ts/tsconfig.json.in")),
                )?;
            }
            write(".gitignore", "*.wasm\nnode_modules/\ndist/\n".to_owned())?;
        }
        Lang::Rust => {
            let sdk = match &args.sdk {
                Some(sdk) => sdk.clone(),
                None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk"),
            };
            let sdk = sdk.canonicalize().with_context(|| {
                format!(
                    "the Rust guest SDK is not at {} (pass --sdk with the guest-sdk folder of evhost's source tree)",
                    sdk.display()
                )
            })?;
            std::fs::create_dir_all(dir.join("src"))
                .with_context(|| format!("creating {}", dir.display()))?;
            let sdk_path = sdk.display().to_string().replace('\\', "/");
            let fill = |template: &str| {
                fill(template)
                    .replace("@SDK_PATH@", &sdk_path)
                    .replace("@CRATE_NAME@", &name.replace('-', "_"))
            };
            write(
                "Cargo.toml",
                fill(include_str!("../templates/rust/Cargo.toml.in")),
            )?;
            write("src/lib.rs", fill(include_str!("../templates/rust/lib.rs.in")))?;
            write(".gitignore", "/target\n".to_owned())?;
        }
    }
    Ok(dir)
}

/// `path` (absolute) as a `file://` URL, as pip takes a local package in a requirements
/// file: every byte outside the unreserved set and `/` percent-encoded.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for byte in path.display().to_string().bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// What to run after `evhost new` made `dir`: the build and install commands, each
/// runnable as printed from the directory `evhost new` ran in, and what they need first.
pub fn next_steps(args: &NewArgs, dir: &Path) -> String {
    let quote = |path: &Path| {
        let text = path.display().to_string();
        shlex::try_quote(&text).map_or(text.clone(), |quoted| quoted.into_owned())
    };
    let name = args.name.as_str();
    let (needs, build, built) = match args.lang {
        Lang::Rust => (
            "the wasm32-wasip2 target (rustup target add wasm32-wasip2)".to_owned(),
            format!(
                "cargo build --manifest-path {} --release --target wasm32-wasip2",
                quote(&dir.join("Cargo.toml"))
            ),
            // cargo names the file after the crate, `-` written as `_`; the host serves it
            // under the name the plugin declares all the same.
            dir.join("target/wasm32-wasip2/release")
                .join(format!("{}.wasm", name.replace('-', "_"))),
        ),
        Lang::Python => (
            "python3 with venv: it makes `.venv` and installs componentize-py, pytest and the evhost \
             package there (requirements.txt)"
                .to_owned(),
            format!(
                "(cd {} && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt && \
                 VIRTUAL_ENV=\"$PWD/.venv\" .venv/bin/componentize-py -w handler componentize app -o {name}.wasm)",
                quote(dir)
            ),
            dir.join(format!("{name}.wasm")),
        ),
        Lang::Js | Lang::Ts => (
            format!(
                "node 20 with npm (npm install fetches the pinned {}esbuild and componentize-js)",
                if args.lang == Lang::Ts { "TypeScript, " } else { "" }
            ),
            format!(
                "npm --prefix {0} install && npm --prefix {0} run build",
                quote(dir)
            ),
            dir.join(format!("{name}.wasm")),
        ),
    };
    let test = match args.lang {
        Lang::Rust => String::new(),
        Lang::Python => format!("test it:    (cd {} && .venv/bin/pytest)\n", quote(dir)),
        Lang::Js | Lang::Ts => format!("test it:    npm --prefix {} test\n", quote(dir)),
    };
    format!(
        "created {}\n\
         build it:   {build}\n\
         {test}\
         install it: mkdir -p plugins && cp {} plugins/\n\
         \n\
         The build needs {needs}. `evhost run` watches ./plugins by default (--plugins DIR for \
         another folder) and serves the plugin as `{name}` within a second of the copy.\n",
        dir.display(),
        quote(&built),
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Every command and every flag of `evhost` is in the book's CLI reference.
    #[test]
    fn the_cli_reference_names_every_command_and_flag() {
        let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/running/cli.md");
        let reference = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        let mut missing = Vec::new();
        let mut commands = vec![("evhost".to_owned(), Cli::command())];
        while let Some((path, command)) = commands.pop() {
            if !reference.contains(&path) {
                missing.push(format!("the command `{path}`"));
            }
            for arg in command.get_arguments() {
                if let Some(long) = arg.get_long()
                    && !["help", "version"].contains(&long)
                    && !reference.contains(&format!("--{long}"))
                {
                    missing.push(format!("`--{long}` of `{path}`"));
                }
            }
            for sub in command.get_subcommands().filter(|sub| sub.get_name() != "help") {
                commands.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
        }
        assert!(
            missing.is_empty(),
            "{} does not mention:\n  {}",
            page.display(),
            missing.join("\n  ")
        );
    }

    /// `evhost new` prints commands that work from where it ran: a crate's file is what
    /// cargo writes (`-` as `_`), installed as it is.
    #[test]
    fn new_prints_the_build_and_install_commands_for_the_file_cargo_writes() {
        let args = NewArgs {
            name: "order-projection".to_owned(),
            lang: Lang::Rust,
            path: PathBuf::from("."),
            sdk: None,
        };
        let steps = next_steps(&args, Path::new("./order-projection"));
        assert!(steps.contains(
            "build it:   cargo build --manifest-path ./order-projection/Cargo.toml --release --target wasm32-wasip2\n"
        ), "{steps}");
        assert!(steps.contains(
            "install it: mkdir -p plugins && cp ./order-projection/target/wasm32-wasip2/release/order_projection.wasm plugins/\n"
        ), "{steps}");
        let spaced = next_steps(
            &NewArgs {
                lang: Lang::Js,
                ..args
            },
            Path::new("my plugins/order-projection"),
        );
        assert!(
            spaced.contains("npm --prefix 'my plugins/order-projection' install && npm --prefix 'my plugins/order-projection' run build"),
            "paths are quoted for the shell: {spaced}"
        );
    }
}
