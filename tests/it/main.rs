//! Integration tests that load real components, built from source by `build.rs`.

mod adversarial;
mod auth;
mod binary;
mod call;
mod conformance;
mod crash;
mod docs;
mod durability;
mod examples;
mod folder;
mod inspect;
mod js;
mod languages;
mod loading;
mod nats;
mod python;
mod quickstart;
mod reuse;
mod sdks;
#[path = "../support/mod.rs"]
#[allow(dead_code, reason = "each test binary uses some of the helpers")]
mod support;
mod ui;

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use evhost::config::{BusSettings, Config, RuntimeSettings};
use evhost::plugins::{LimitSettings, Manifest};
use evhost::store::KeyValueStore;
use evhost::{AsyncEventBus, Event, EventBus, Plugin, PluginOptions, Runtime};
use futures::FutureExt as _;

/// Paths of the built `.wasm` files, one constant per plugin crate.
#[allow(dead_code, reason = "not every test uses every plugin")]
mod wasm {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// A host as `evhost run` assembles it (an [`App`](evhost::App), not serving), without
/// the durable log, over a plugins folder of its own; tests load plugins into it directly
/// or through the folder.
struct Host {
    app: evhost::App,
    bus: AsyncEventBus,
    runtime: Arc<Runtime>,
    kv: Arc<dyn KeyValueStore>,
    _dir: support::TempDir,
}

impl Host {
    /// A host whose plugins folder is empty.
    async fn new() -> Self {
        let dir = support::TempDir::new("host");
        let plugins = dir.0.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        Self::assemble(dir, plugins).await
    }

    /// A host over the plugins folder `plugins`, whose plugins it loads at once.
    async fn with_plugins(plugins: &std::path::Path) -> Self {
        Self::assemble(support::TempDir::new("host"), plugins.to_owned()).await
    }

    async fn assemble(dir: support::TempDir, plugins_dir: std::path::PathBuf) -> Self {
        let config = Config {
            plugins_dir,
            data_dir: dir.0.join("data"),
            durable: false,
            compile_cache: false,
            listen: "127.0.0.1:0".parse().unwrap(),
            bus: BusSettings {
                max_concurrency: NonZeroUsize::new(32).unwrap(),
                ..BusSettings::default()
            },
            runtime: RuntimeSettings {
                max_instances: NonZeroU32::new(64).unwrap(),
                ..RuntimeSettings::default()
            },
            plugins: Manifest {
                limits: LimitSettings {
                    concurrency: NonZeroUsize::new(32),
                    ..LimitSettings::default()
                },
                ..Manifest::default()
            },
            ..Config::default()
        };
        let app = evhost::App::new(config).await.expect("the host starts");
        Self {
            bus: app.bus().clone(),
            runtime: Arc::clone(app.runtime()),
            kv: app.bus().key_value_store(),
            app,
            _dir: dir,
        }
    }

    async fn try_load(&self, path: &str, options: PluginOptions) -> Result<Arc<Plugin>, evhost::LoadError> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        self.runtime.load(bytes, options, self.kv.clone()).await
    }

    /// Loads the plugin and subscribes it to the bus.
    async fn load(&self, path: &str, options: PluginOptions) -> Arc<Plugin> {
        let plugin = self.try_load(path, options).await.unwrap();
        plugin.subscribe(&self.bus).unwrap();
        plugin
    }

    fn kv_json(&self, plugin: &str, key: &str) -> Option<serde_json::Value> {
        self.kv_bytes(plugin, key)
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    /// A value of the in-memory store (whose reads are ready at once).
    fn kv_bytes(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        self.kv
            .get(plugin, key)
            .now_or_never()
            .expect("the in-memory store answers at once")
            .unwrap()
            .map(|versioned| versioned.value)
    }

    async fn publish_and_wait(&self, events: Vec<Event>) {
        self.bus.publish_batch(events).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.bus.wait())
            .await
            .expect("every event handled within a minute");
    }
}

/// One attempt per event, so a `retry` is recorded once and dead-lettered at once.
fn one_attempt() -> PluginOptions {
    PluginOptions {
        retry: Some(evhost::bus::RetryPolicy::no_retries()),
        ..PluginOptions::default()
    }
}

/// Records every event published on a bus, for asserting on emitted events.
fn recorder(bus: &AsyncEventBus, pattern: &str) -> Arc<std::sync::Mutex<Vec<Arc<Event>>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    bus.subscribe(
        pattern,
        evhost::bus::from_fn("recorder", move |event| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(event);
                Ok(())
            }
        }),
    )
    .unwrap();
    seen
}
