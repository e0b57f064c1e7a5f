//! [`App`]: a host assembled from its [`Config`] — store, Wasm runtime, bus, plugins
//! folder, outbox relay and HTTP API — and run under one cancellation token and one task
//! tracker. `evhost run` is `App::new(config).await?.run(shutdown_signal()).await`.
//!
//! Shutdown has three parts: *deciding* (the `shutdown` future resolves, or a critical
//! task ends on its own), *telling* (intake closes, the relay stops, the bus drains up to
//! its deadline, then the token cancels everything else) and *waiting* (the tracker
//! closes and every task finishes). A critical task — the HTTP server, the plugins folder
//! watcher, the outbox relay — that ends while the host runs makes the host log why and
//! shut down, and [`App::run`] returns an error naming it: a host never runs half-alive.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use futures::FutureExt as _;
use std::panic::AssertUnwindSafe;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{AsyncBusConfig, AsyncEventBus, EventBus};
use crate::config::Config;
use crate::http::auth::Auth;
use crate::http::tls::TlsListener;
use crate::http::{AppState, PluginCatalog};
use crate::outbox::{OutboxRelay, OutboxTarget};
use crate::plugins::{PluginFolder, PluginFolderOptions};
use crate::runtime::Runtime;
use crate::store::nats::NatsStore;
use crate::store::sqlite::{SqliteStore, StoreOptions};

/// How long stopping waits for the host's own tasks (HTTP connections, the watcher) once
/// the bus has drained.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// A critical task that ended: its name and how.
type Exit = (&'static str, anyhow::Result<()>);

/// The bound listen address, served as HTTP or HTTPS.
enum Bound {
    Http(TcpListener),
    Https(TlsListener),
}

/// A host, assembled and ready to serve; see the module documentation.
pub struct App {
    config: Config,
    store: Option<Arc<SqliteStore>>,
    /// The log on NATS, when `[nats]` is configured (then there is no `store`).
    nats: Option<Arc<NatsStore>>,
    runtime: Arc<Runtime>,
    bus: AsyncEventBus,
    folder: Arc<PluginFolder>,
    state: Arc<AppState>,
    listener: Option<Bound>,
    /// The outbox relay, when one is configured; taken when the app runs.
    relay: Option<OutboxRelay>,
    local_addr: SocketAddr,
    /// Plugins run on threads of their own (see [`App::new`]).
    plugin_threads: PluginThreads,
    cancel: CancellationToken,
    tasks: TaskTracker,
    exits: (mpsc::UnboundedSender<Exit>, mpsc::UnboundedReceiver<Exit>),
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("local_addr", &self.local_addr)
            .field("plugins", &self.config.plugins_dir)
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Opens the store (unless `durable` is off), starts the Wasm runtime and the bus,
    /// loads every plugin of the folder and binds the listener: everything but serving.
    ///
    /// Plugins run on a tokio runtime of their own: however busy they keep its threads,
    /// the HTTP API (health checks included) and the store keep theirs, and the OS shares
    /// the cores.
    ///
    /// # Errors
    /// When the data directory, the store, the plugins folder or the listen address
    /// cannot be used; the message names which.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        log_settings(&config);
        let auth = Auth::from_settings(&config.auth)
            .context("reading [auth]")?
            .with_secure_cookies(config.tls.is_some());
        check_exposure(&config, &auth)?;
        let tls = match &config.tls {
            Some(tls) => Some(crate::http::tls::server_config(&tls.cert, &tls.key)?),
            None => None,
        };
        if let Some(outbox) = &config.outbox {
            crate::outbox::Outbox::check_at_start(&outbox.url, &outbox.schema, outbox.install).await?;
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
        // A bare `evhost run` in an empty directory starts with an empty `./plugins` to drop
        // plugins into; a folder that was named explicitly must exist, so a typo is an error
        // rather than a host watching the wrong place.
        if config.plugins_dir == Config::default().plugins_dir && !config.plugins_dir.exists() {
            std::fs::create_dir_all(&config.plugins_dir)
                .with_context(|| format!("creating the plugins folder {}", config.plugins_dir.display()))?;
            tracing::info!(folder = %config.plugins_dir.display(), "created the plugins folder");
        }
        let runtime = Runtime::new(config.runtime_config()).context("starting the Wasm runtime")?;
        let nats = match &config.nats {
            Some(nats) => Some(open_nats(nats).await?),
            None => None,
        };
        let store = if nats.is_some() {
            None
        } else if config.durable {
            Some(open_store(&config).await?)
        } else {
            tracing::warn!("running without the durable log: a restart loses pending events");
            None
        };
        let plugin_threads = PluginThreads::start()?;
        let bus_config = AsyncBusConfig {
            executor: Some(plugin_threads.handle()),
            ..config.bus_config()
        };
        let bus = match (&nats, &store) {
            (Some(nats), _) => AsyncEventBus::with_storage(bus_config, nats.storage()),
            (None, Some(store)) => AsyncEventBus::with_storage(bus_config, store.storage()),
            (None, None) => AsyncEventBus::with_config(bus_config),
        };
        let folder = PluginFolder::open(
            PluginFolderOptions {
                dir: config.plugins_dir.clone(),
                defaults: config.plugins.clone(),
                ack_wait: config.nats.as_ref().map(|nats| nats.ack_wait),
                ..PluginFolderOptions::default()
            },
            Arc::clone(&runtime),
            bus.clone(),
        )
        .await
        .with_context(|| format!("opening the plugins folder {}", config.plugins_dir.display()))?;
        for plugin in folder.statuses() {
            tracing::info!(
                plugin = %plugin.name,
                version = %plugin.version,
                hash = %plugin.hash,
                subscriptions = ?plugin.subscriptions,
                fuel = plugin.limits.fuel,
                timeout_ms = plugin.limits.timeout.as_millis() as u64,
                memory_bytes = plugin.limits.memory_bytes,
                concurrency = plugin.concurrency,
                "plugin loaded"
            );
        }
        bus.start().await?;
        let mut state = AppState::new(
            bus.clone(),
            bus.key_value_store(),
            Arc::clone(&folder) as Arc<dyn PluginCatalog>,
        );
        state.metrics.register_collector(runtime.metrics_collector());
        if let Some(store) = &store {
            state.metrics.register_collector(store.metrics_collector());
        }
        if let Some(nats) = &nats {
            let nats = Arc::clone(nats);
            state.log_reachable = Some(Arc::new(move || nats.connected()));
        }
        let relay = config.outbox.as_ref().map(|outbox| {
            OutboxRelay::new(
                outbox.relay_config(),
                Arc::new(bus.clone()) as Arc<dyn OutboxTarget>,
            )
        });
        if let Some(relay) = &relay {
            state.metrics.register_collector(relay.metrics_collector());
        }
        state.max_body_bytes = config.max_body_bytes.get();
        state.config = Some(Arc::new(crate::config::effective(&config)));
        state.live = Arc::new(crate::http::Live::new(config.max_stream_clients.get()));
        state.request_timeout = config.request_timeout;
        state.auth = auth;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let listener = match tls {
            Some(tls) => Bound::Https(TlsListener::new(listener, tls)?),
            None => Bound::Http(listener),
        };
        Ok(Self {
            config,
            store,
            nats,
            runtime,
            bus,
            folder,
            state: Arc::new(state),
            listener: Some(listener),
            relay,
            local_addr,
            plugin_threads,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            exits: mpsc::unbounded_channel(),
        })
    }

    /// The API's base URL, `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The address the HTTP API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bus (started).
    pub fn bus(&self) -> &AsyncEventBus {
        &self.bus
    }

    /// The Wasm runtime plugins are loaded with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The plugins folder.
    pub fn folder(&self) -> &Arc<PluginFolder> {
        &self.folder
    }

    /// What the HTTP API serves.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Runs `task` as a critical part of the host: if it ends before shutdown began — with
    /// an error, a panic or neither — the host logs why and shuts down, and [`App::run`]
    /// returns an error naming `name`. The task should end when the app's token is
    /// cancelled ([`App::cancellation`]); that ending is expected.
    pub fn spawn_critical(
        &self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let exits = self.exits.0.clone();
        self.tasks.spawn(async move {
            let result = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(anyhow!("it panicked: {}", panic_message(panic.as_ref()))),
            };
            let _ = exits.send((name, result));
        });
    }

    /// The token every task of the app stops on, cancelled once the bus has drained.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Serves until `shutdown` resolves or a critical task ends; then closes intake
    /// (`POST /events` answers 503), stops the outbox relay, drains the bus up to the
    /// configured deadline, stops everything else and closes the store.
    ///
    /// # Errors
    /// When a critical task ended on its own (the error names it and says why), or the
    /// shutdown itself failed.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let relay_stop = self.cancel.child_token();
        self.spawn_http()?;
        self.spawn_watcher();
        self.spawn_relay(relay_stop.clone());
        // The recent-errors buffer is the error monitor's one consumer; it also logs each
        // record. A caller that took the stream itself consumes it instead.
        let monitor = match self.bus.errors() {
            Some(stream) => Some(self.state.errors.spawn_consumer(stream)),
            None => {
                tracing::warn!(
                    "the error monitor's stream was taken before the app ran: `GET /errors` stays empty"
                );
                None
            }
        };
        tracing::info!(
            listen = %self.local_addr,
            url = %self.url(),
            auth = self.state.auth.mode(),
            plugins = self.folder.statuses().len(),
            folder = %self.config.plugins_dir.display(),
            "evhost is ready"
        );
        self.state.set_ready(true);
        let sampler = self.state.live.spawn_sampler(self.bus.clone());

        let failed = tokio::select! {
            () = shutdown => None,
            Some((name, result)) = self.exits.1.recv() => Some(match result {
                Ok(()) => anyhow!("{name} stopped"),
                Err(error) => error.context(format!("{name} failed")),
            }),
        };
        if let Some(error) = &failed {
            tracing::error!(error = %format!("{error:#}"), "a critical task ended: shutting down");
        }
        tracing::info!(
            in_flight = self.bus.metrics().in_flight,
            drain_timeout = %humantime::format_duration(self.config.drain_timeout),
            "shutting down: refusing new events, draining"
        );
        self.state.set_accepting(false);
        self.state.live.close();
        sampler.abort();
        relay_stop.cancel();
        let report = self.bus.stop().await?;
        tracing::info!(drained = report.drained, abandoned = report.abandoned, "stopped");
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASKS_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("the host's tasks did not all stop within {TASKS_GRACE:?}");
        }
        if let Some(monitor) = monitor {
            monitor.abort();
        }
        if let Some(store) = self.store.take() {
            store.close().await;
        }
        if let Some(nats) = self.nats.take() {
            nats.close().await;
        }
        // Everything the bus ran there has finished (`stop` waited for it).
        self.plugin_threads.shut_down();
        match failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// The HTTP API, until the app's token is cancelled (it then finishes the requests in
    /// progress).
    fn spawn_http(&mut self) -> anyhow::Result<()> {
        let listener = self.listener.take().context("the app serves once")?;
        let router = crate::http::router(Arc::clone(&self.state));
        let stop = self.cancel.clone();
        self.spawn_critical("the HTTP server", async move {
            let service = router.into_make_service_with_connect_info::<crate::http::auth::Peer>();
            let until = stop.clone().cancelled_owned();
            match listener {
                Bound::Http(listener) => axum::serve(listener, service).with_graceful_shutdown(until).await,
                Bound::Https(listener) => axum::serve(listener, service).with_graceful_shutdown(until).await,
            }
            .context("serving HTTP")?;
            if stop.is_cancelled() {
                Ok(())
            } else {
                Err(anyhow!("it stopped accepting connections"))
            }
        });
        Ok(())
    }

    /// Applies changes to the plugins folder as they happen.
    fn spawn_watcher(&self) {
        let (folder, stop) = (Arc::clone(&self.folder), self.cancel.clone());
        self.spawn_critical("the plugins folder watcher", async move {
            let mut watcher = folder.watch().context("watching the plugins folder")?;
            tokio::select! {
                () = watcher.stopped() => Err(anyhow!("the OS stopped reporting changes to the folder")),
                () = stop.cancelled() => Ok(()),
            }
        });
    }

    /// Relays the outbox, if one is configured, until `stop` (shutdown) is cancelled.
    fn spawn_relay(&mut self, stop: CancellationToken) {
        let (Some(outbox), Some(relay)) = (&self.config.outbox, self.relay.take()) else {
            return;
        };
        tracing::info!(schema = %outbox.schema, relay = %outbox.relay_name, "relaying the outbox");
        self.spawn_critical("the outbox relay", async move {
            relay.run(stop.clone()).await?;
            if stop.is_cancelled() {
                Ok(())
            } else {
                Err(anyhow!("it stopped"))
            }
        });
    }
}

/// The effective settings, after the file, the environment and the flags, as one line.
fn log_settings(config: &Config) {
    let plugin_defaults = config.plugins.plugin_options().limits;
    tracing::info!(
        listen = %config.listen,
        plugins_dir = %config.plugins_dir.display(),
        data_dir = %config.data_dir.display(),
        durable = config.durable,
        max_concurrency = config.bus.max_concurrency,
        plugin_concurrency = config.bus_config().subscription_concurrency,
        capacity = config.bus.capacity,
        backpressure = ?config.bus.backpressure,
        request_timeout = %humantime::format_duration(config.request_timeout),
        drain_timeout = %humantime::format_duration(config.drain_timeout),
        plugin_timeout = %humantime::format_duration(plugin_defaults.timeout),
        plugin_fuel = plugin_defaults.fuel,
        plugin_memory_bytes = plugin_defaults.memory_bytes,
        "settings"
    );
}

/// Refuses to serve a non-loopback address to anyone without authentication, unless the
/// operator said so; warns when tokens would cross the network in clear text.
fn check_exposure(config: &Config, auth: &Auth) -> anyhow::Result<()> {
    let loopback = config.listen.ip().is_loopback();
    if !loopback && auth.loopback_required() {
        anyhow::bail!(
            "refusing to serve {} without authentication: anyone who reaches it could publish events, \
             read plugin data and purge the dead-letter queue. Configure [auth] tokens (the book: \
             \"Securing the API\"), or pass --insecure-no-auth to serve it open",
            config.listen
        );
    }
    if config.auth.insecure_no_auth {
        tracing::warn!(
            listen = %config.listen,
            "--insecure-no-auth: every endpoint is open to whoever reaches the port"
        );
    }
    if !loopback && auth.uses_tokens() && config.tls.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "tokens cross the network in clear text: configure [tls] or put a TLS proxy in front"
        );
    }
    Ok(())
}

/// The log on NATS JetStream: connected, its streams made or checked.
async fn open_nats(settings: &crate::config::NatsSettings) -> anyhow::Result<Arc<NatsStore>> {
    if settings.url.is_empty() {
        anyhow::bail!("[nats] has no `url`: give the server's URL there or with `--nats nats://HOST:PORT`");
    }
    let store = NatsStore::open(settings.options())
        .await
        .context("opening the log on NATS JetStream")?;
    tracing::info!(
        url = %settings.url,
        stream = %settings.stream,
        partitions = settings.partitions.get(),
        dead_letters = crate::store::DeadLetters::count(&store),
        "log on NATS JetStream opened"
    );
    Ok(Arc::new(store))
}

/// The durable log in the data directory, opened (with its integrity check) off the
/// async threads.
async fn open_store(config: &Config) -> anyhow::Result<Arc<SqliteStore>> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&dir, StoreOptions::default()))
        .await
        .context("opening the durable log")??;
    let stats = store.stats()?;
    tracing::info!(
        path = %store.path().display(),
        events = stats.events,
        pending = stats.pending,
        dead_letters = stats.dead_letters,
        "durable log opened"
    );
    Ok(store)
}

/// The runtime plugins run on, let go of without waiting for its threads when dropped:
/// a runtime dropped on an async thread (a failed [`App::new`], an app dropped unrun)
/// would panic otherwise.
struct PluginThreads(Option<tokio::runtime::Runtime>);

impl PluginThreads {
    /// A plugin's call can hold a thread for milliseconds without yielding (a bulk memory
    /// copy, a host call), so work handed in from outside (a newly queued plugin's worker,
    /// a finished read) is taken from the shared queue at every tick, not every 61st:
    /// measured, the default let a healthy plugin wait 0.4–0.8 s behind one copying 8 MiB
    /// buffers.
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .global_queue_interval(1)
            .event_interval(8)
            .thread_name("evhost-plugins")
            .enable_all()
            .build()
            .context("starting the plugins' runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the plugins' runtime runs until the app is done")
            .handle()
            .clone()
    }

    fn shut_down(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for PluginThreads {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Drop for App {
    /// An app dropped without [`App::run`] (a test, a failed start) stops its tasks; its
    /// plugins' threads are let go of without waiting for them.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn new_app() -> (App, Scratch) {
        let dir = Scratch(std::env::temp_dir().join(format!("evhost-app-test-{}", uuid::Uuid::new_v4())));
        let plugins_dir = dir.0.join("plugins");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        let config = Config {
            plugins_dir,
            data_dir: dir.0.join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        (App::new(config).await.unwrap(), dir)
    }

    async fn healthz(addr: SocketAddr) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: evhost\r\nconnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dying_http_listener_shuts_the_host_down_with_an_error_naming_it() {
        let (app, _dir) = new_app().await;
        let addr = app.local_addr();
        let bus = app.bus().clone();
        // Stands in for the listener's task dying: the host cannot tell the difference.
        let (die, died) = tokio::sync::oneshot::channel::<()>();
        app.spawn_critical("the HTTP listener", async move {
            let _ = died.await;
            Err(anyhow!("accepting connections failed: too many open files"))
        });
        let running = tokio::spawn(app.run(std::future::pending()));
        // Serving until then.
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match healthz(addr).await {
                    Ok(answer) => break answer,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        die.send(()).unwrap();
        let error = tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .expect("the host shuts down on its own")
            .unwrap()
            .expect_err("a host that lost a critical task ends with an error");
        let message = format!("{error:#}");
        assert!(message.contains("the HTTP listener failed"), "{message}");
        assert!(message.contains("too many open files"), "{message}");
        assert!(healthz(addr).await.is_err(), "nothing serves any more");
        assert!(matches!(
            bus.publish(crate::event::Event::new("Late", "tests", serde_json::json!({})))
                .await,
            Err(crate::bus::BusError::Stopped)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_critical_task_that_panics_or_just_returns_shuts_the_host_down() {
        let (app, _dir) = new_app().await;
        app.spawn_critical("the panicking task", async { panic!("it broke") });
        let error = tokio::time::timeout(Duration::from_secs(30), app.run(std::future::pending()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "the panicking task failed: it panicked: it broke"
        );

        let (app, _dir) = new_app().await;
        app.spawn_critical("the quiet task", async { Ok(()) });
        let error = tokio::time::timeout(Duration::from_secs(30), app.run(std::future::pending()))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(format!("{error:#}"), "the quiet task stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutting_down_ends_the_critical_tasks_without_an_error() {
        let (app, _dir) = new_app().await;
        let stop = app.cancellation();
        app.spawn_critical("a task that stops when told", async move {
            stop.cancelled().await;
            Ok(())
        });
        let addr = app.local_addr();
        let (shutdown, requested) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async {
            let _ = requested.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), running)
            .await
            .unwrap()
            .unwrap()
            .expect("a requested shutdown is no failure");
        assert!(healthz(addr).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_app_whose_error_stream_was_taken_still_runs_and_stops() {
        let (app, _dir) = new_app().await;
        let _records = app.bus().errors().expect("not taken yet");
        tokio::time::timeout(Duration::from_secs(30), app.run(async {}))
            .await
            .unwrap()
            .expect("runs and stops without the stream");
    }
}
