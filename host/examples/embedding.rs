//! Embedding evhost in a Rust program, three ways, each what a chapter of the book shows:
//! the async bus on the durable SQLite log, a Wasm plugin loaded from Rust, and the whole
//! host (`App`, what `evhost run` is) inside a program of your own.
//!
//! Run with `cargo run -p evhost --example embedding -- PATH/greeter.wasm` (the example
//! plugin `plugins/greeter`, built with
//! `cargo build --release --target wasm32-wasip2` in `plugins/`). Add `--serve` to keep the
//! host of the third part serving until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use evhost::bus::from_fn;
use evhost::{AsyncEventBus, Event, EventBus, HandlerError};
use serde_json::json;

// ANCHOR: durable
/// The async bus on the durable log in `dir`: an event is accepted once it is stored, and
/// a delivery not finished before a crash is delivered again when the bus starts on the
/// same directory.
async fn durable_bus(dir: &Path) -> anyhow::Result<()> {
    use evhost::AsyncBusConfig;
    use evhost::store::sqlite::{SqliteStore, StoreOptions};

    let store = SqliteStore::open(dir, StoreOptions::default())?;
    let bus = AsyncEventBus::with_storage(AsyncBusConfig::default(), store.storage());
    // A subscription's pending backlog is read in the background when it subscribes.
    bus.subscribe(
        "User*",
        from_fn("audit-log", |event| async move {
            println!("audit: {} {}", event.ty, event.id);
            Ok::<_, HandlerError>(())
        }),
    )?;
    bus.start().await?;
    let events = vec![Event::new("UserCreated", "users-service", json!({"id": "u1"})).with_subject("u1")];
    let receipts = bus.publish_batch_offsets(events.clone()).await?; // an offset per event
    let again = bus.publish_batch_offsets(events).await?; // the same source + id
    assert!(!receipts[0].duplicate && again[0].duplicate, "stored once");
    bus.wait().await;
    bus.stop().await?;
    store.close().await;
    Ok(())
}
// ANCHOR_END: durable

// ANCHOR: plugin
/// A Wasm plugin on a bus, loaded from Rust rather than from a plugins folder. Its
/// key-value writes are effects the bus commits, to the store `kv` it reads from.
async fn wasm_plugin(wasm: &Path) -> anyhow::Result<()> {
    let runtime = evhost::Runtime::new(evhost::RuntimeConfig::default())?;
    let bus = AsyncEventBus::new();
    let kv = bus.key_value_store(); // what the bus commits the plugin's writes to
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let plugin = runtime
        .load(bytes, evhost::PluginOptions::default(), kv.clone())
        .await?;
    plugin.subscribe(&bus)?;
    bus.start().await?;
    bus.publish(Event::new(
        "UserCreated",
        "users",
        json!({"id": "u1", "name": "Ada"}),
    ))
    .await?;
    bus.wait().await;
    let greeted = kv.get("greeter", "greeted:u1").await?;
    println!(
        "{} stored greeted:u1 = {:?}",
        plugin.info().name,
        greeted.map(|v| v.value)
    );
    bus.stop().await?;
    Ok(())
}
// ANCHOR_END: plugin

// ANCHOR: app
/// The whole host — store, runtime, bus, plugins folder, HTTP API — as `evhost run` has
/// it, with a task of this program's own beside it, until `shutdown` resolves.
async fn host(
    config: evhost::config::Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let app = evhost::App::new(config).await?;
    println!(
        "serving on {} with {} plugins",
        app.url(),
        app.folder().statuses().len()
    );
    let bus = app.bus().clone();
    let stop = app.cancellation();
    // A critical task: if it ends before the host stops, the host shuts down and `run`
    // returns an error naming it. It should end once the app's token is cancelled.
    app.spawn_critical("my sidecar", async move {
        bus.publish(Event::new(
            "UserCreated",
            "sidecar",
            json!({"id": "u2", "name": "Grace"}),
        ))
        .await?;
        stop.cancelled().await;
        Ok(())
    });
    app.run(shutdown).await // Err names a critical task that ended
}
// ANCHOR_END: app

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = args.iter().any(|arg| arg == "--serve");
    let wasm = args
        .iter()
        .find(|arg| !arg.starts_with("--"))
        .map(PathBuf::from)
        .context("usage: embedding PATH/greeter.wasm [--serve]")?;
    let work = std::env::temp_dir().join(format!("evhost-embedding-{}", std::process::id()));

    durable_bus(&work.join("log")).await?;
    wasm_plugin(&wasm).await?;

    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(&wasm, plugins.join("greeter.wasm"))?;
    let config = evhost::config::Config {
        plugins_dir: plugins,
        data_dir: work.join("data"),
        listen: "127.0.0.1:0".parse()?,
        ..evhost::config::Config::default()
    };
    let result = if serve {
        host(config, async { tokio::signal::ctrl_c().await.unwrap_or(()) }).await
    } else {
        host(config, tokio::time::sleep(Duration::from_secs(1))).await
    };
    std::fs::remove_dir_all(&work)?;
    result
}
