//! `evhost run`: the bus, the watched plugins folder and the HTTP API, with graceful shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;

use crate::bus::{AsyncBusConfig, AsyncEventBus, EventBus};
use crate::config::Config;
use crate::http::{AppState, PluginCatalog};
use crate::outbox::{OutboxRelay, OutboxTarget};
use crate::plugins::{PluginFolder, PluginFolderOptions};
use crate::runtime::Runtime;
use crate::store::sqlite::{SqliteStore, StoreOptions};
use tokio_util::sync::CancellationToken;

/// Runs the host until `shutdown` resolves, then stops intake (HTTP answers 503), drains
/// in-flight events up to the configured deadline and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let runtime = Runtime::new(config.runtime_config()).context("starting the Wasm runtime")?;
    let store = if config.durable {
        let dir = config.data_dir.clone();
        // Opening runs the integrity check over the whole file.
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
        Some(store)
    } else {
        tracing::warn!("running without the durable log: a restart loses pending events");
        None
    };
    // Plugins run on threads of their own: however busy they keep them, the HTTP API
    // (health checks included) and the store keep theirs, and the OS shares the cores.
    // A plugin's call can hold a thread for milliseconds without yielding (a bulk memory
    // copy, a host call), so work handed in from outside (a newly queued plugin's worker,
    // a finished read) is taken from the shared queue at every tick, not every 61st:
    // measured, the default let a healthy plugin wait 0.4–0.8 s behind one copying 8 MiB
    // buffers.
    let plugin_threads = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .global_queue_interval(1)
        .event_interval(8)
        .thread_name("evhost-plugins")
        .enable_all()
        .build()
        .context("starting the plugins' runtime")?;
    let bus_config = AsyncBusConfig {
        executor: Some(plugin_threads.handle().clone()),
        ..config.bus_config()
    };
    let bus = match &store {
        Some(store) => AsyncEventBus::with_storage(bus_config, store.storage()),
        None => AsyncEventBus::with_config(bus_config),
    };
    let kv = bus.key_value_store();

    let folder = PluginFolder::open(
        PluginFolderOptions {
            dir: config.plugins_dir.clone(),
            defaults: config.plugins.clone(),
            ..PluginFolderOptions::default()
        },
        runtime,
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
    let _watcher = folder.watch().context("watching the plugins folder")?;
    bus.start().await?;
    let stop_relay = CancellationToken::new();
    let relay = config.outbox.as_ref().map(|outbox| {
        let relay = OutboxRelay::new(
            outbox.relay_config(),
            Arc::new(bus.clone()) as Arc<dyn OutboxTarget>,
        );
        tracing::info!(schema = %outbox.schema, relay = %outbox.relay_name, "relaying the outbox");
        let stop = stop_relay.clone();
        tokio::spawn(async move {
            if let Err(error) = relay.run(stop).await {
                tracing::error!(error = %format!("{error:#}"), "the outbox relay stopped");
            }
        })
    });

    let mut state = AppState::new(
        bus.clone(),
        Arc::clone(&kv),
        Arc::clone(&folder) as Arc<dyn PluginCatalog>,
    );
    state.max_body_bytes = config.max_body_bytes;
    let state = Arc::new(state);
    // The recent-errors buffer is the error monitor's one consumer; it also logs each record.
    let monitor = state
        .errors
        .spawn_consumer(bus.errors().expect("a new bus has its error stream"));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        plugins = folder.statuses().len(),
        folder = %config.plugins_dir.display(),
        "evhost is ready"
    );
    state.set_ready(true);

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, crate::http::router(Arc::clone(&state)))
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .into_future(),
    );

    shutdown.await;
    tracing::info!(
        in_flight = bus.metrics().in_flight,
        drain_timeout_ms = config.drain_timeout_ms,
        "shutting down: refusing new events, draining"
    );
    state.set_accepting(false);
    stop_relay.cancel();
    if let Some(relay) = relay
        && let Err(error) = relay.await
    {
        tracing::error!(%error, "the outbox relay task failed");
    }
    let report = bus.stop().await?;
    tracing::info!(drained = report.drained, abandoned = report.abandoned, "stopped");
    let _ = stop_http.send(());
    server.await.context("the HTTP server task failed")??;
    monitor.abort();
    if let Some(store) = store {
        store.close().await;
    }
    // Everything the bus ran there has finished (`stop` waited for it).
    plugin_threads.shutdown_background();
    Ok(())
}
