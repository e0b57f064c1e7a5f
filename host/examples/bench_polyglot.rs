//! The same trivial handler written in Rust, Python and JavaScript, one fresh instance per
//! event, through the bus on every core.
//!
//! Run with `cargo run --release -p evhost --example bench_polyglot` after the tests'
//! build has made the components (`cargo test -p evhost-tests --no-run` builds the Python
//! and JavaScript `noop` test plugins into `target/wasm-plugins/{python,js}/` with the
//! pinned componentize-py and componentize-js); the Rust one is built here. For each
//! language it prints one JSON line per run, and on its last line one JSON object:
//!
//! - `rust_per_s`, `python_per_s`, `js_per_s`: handled events per second (median of the
//!   runs), each in a fresh instance;
//! - `*_reuse_per_s`: the same with instance reuse opted into (`reuse = 1000`), each
//!   instance serving up to 1,000 events;
//! - `*_compile_ms`: loading the plugin with an empty cache (compiling it), once;
//! - `*_cached_load_ms`: loading it again from the on-disk cache, as a restart does;
//! - `*_rss_mb_per_instance`: the host's peak resident memory during the runs above what
//!   it held before, divided by the invocations in flight;
//! - `*_rss_mb_peak`: the host's peak resident memory during those runs, all of it (the
//!   compiler's leftovers and any language benchmarked before included: run one language
//!   alone to see what a host serving only it holds);
//! - `*_component_mb`: the component's size.
//!
//! Naming languages (`-- python js`) runs only those. With `--cached` the compiled code of
//! the previous benchmark run is used and nothing is compiled in the process, as after a
//! restart: `*_compile_ms` is left out and `*_rss_mb_peak` is what a host serving only
//! that plugin holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::median;
use evhost::{AsyncBusConfig, AsyncEventBus, Event, EventBus, PluginOptions, Runtime, RuntimeConfig};
use serde_json::{Value, json};

mod common;

const RUNS: usize = 3;
/// Invocations in flight at once: a few per core keeps every core busy.
const CONCURRENCY: usize = 8;
/// Events one instance serves when reuse is on.
const REUSE: u32 = 1_000;

/// The resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

struct Language {
    name: &'static str,
    wasm: PathBuf,
    /// Events per run with a fresh instance per event, and with reuse.
    events: usize,
    reuse_events: usize,
}

/// Handled events per second over `events` unkeyed events, and the peak RSS seen.
async fn run(runtime: &Arc<Runtime>, wasm: &[u8], events: usize, reuse: Option<u32>) -> (f64, u64) {
    let bus = AsyncEventBus::with_config(AsyncBusConfig {
        max_concurrency: CONCURRENCY,
        subscription_concurrency: CONCURRENCY,
        handler_timeout: Duration::from_secs(60),
        ..AsyncBusConfig::default()
    });
    let plugin = runtime
        .load(
            wasm.to_vec(),
            PluginOptions {
                reuse: reuse.and_then(std::num::NonZeroU32::new),
                ..PluginOptions::default()
            },
            bus.key_value_store(),
        )
        .await
        .expect("loading the plugin");
    plugin.subscribe(&bus).expect("subscribing");
    bus.start().await.expect("starting the bus");
    let peak = Arc::new(AtomicU64::new(rss()));
    let sampling = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let batch: Vec<Event> = (0..events)
        .map(|n| Event::new("Tick", "bench", json!({ "n": n })))
        .collect();
    bus.publish_batch(batch).await.expect("publishing");
    bus.wait().await;
    let elapsed = started.elapsed();
    sampling.abort();
    let metrics = bus.metrics();
    assert_eq!(
        metrics.subscriptions[0].succeeded, events as u64,
        "every event handled"
    );
    bus.stop().await.expect("stopping the bus");
    (
        events as f64 / elapsed.as_secs_f64(),
        peak.load(Ordering::Relaxed),
    )
}

/// How long loading the plugin takes (compiling it, or reading it from the cache), in ms.
async fn load_ms(runtime: &Arc<Runtime>, wasm: &[u8]) -> f64 {
    let bus = AsyncEventBus::with_config(AsyncBusConfig::default());
    let started = Instant::now();
    runtime
        .load(wasm.to_vec(), PluginOptions::default(), bus.key_value_store())
        .await
        .expect("loading the plugin");
    started.elapsed().as_secs_f64() * 1e3
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let built = root.join("target").join("wasm-plugins");
    let languages = [
        Language {
            name: "rust",
            wasm: common::build_test_plugins(&["noop"]).join("noop.wasm"),
            events: 50_000,
            reuse_events: 100_000,
        },
        Language {
            name: "python",
            wasm: built.join("python").join("noop.wasm"),
            events: 4_000,
            reuse_events: 20_000,
        },
        Language {
            name: "js",
            wasm: built.join("js").join("noop.wasm"),
            events: 3_000,
            reuse_events: 30_000,
        },
    ];
    // Each run loads the plugin anew; the on-disk cache keeps that from compiling it again.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cached = args.iter().any(|arg| arg == "--cached");
    let only: Vec<&String> = args.iter().filter(|arg| !arg.starts_with("--")).collect();
    let cache = root.join("target").join("bench-polyglot-cache");
    if !cached {
        let _ = std::fs::remove_dir_all(&cache);
    }
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(cache),
        ..RuntimeConfig::default()
    })
    .expect("creating the runtime");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut summary = json!({
        "runs": RUNS,
        "threads": threads,
        "concurrency": CONCURRENCY,
        "handler": "noop",
    });
    for language in languages
        .iter()
        .filter(|language| only.is_empty() || only.iter().any(|name| *name == language.name))
    {
        let wasm = std::fs::read(&language.wasm).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo test -p evhost-tests --no-run` first to build the Python and JavaScript plugins)",
                language.wasm.display()
            )
        });
        let name = language.name;
        if !cached {
            let compile_ms = load_ms(&runtime, &wasm).await;
            summary[format!("{name}_compile_ms")] = Value::from(compile_ms.round());
        }
        let cached_load_ms = load_ms(&runtime, &wasm).await;
        let before = rss();
        let mut rates = Vec::new();
        let mut peak = before;
        for _ in 0..RUNS {
            let (rate, run_peak) = run(&runtime, &wasm, language.events, None).await;
            println!(
                "{}",
                json!({"language": language.name, "events": language.events, "per_s": rate.round()})
            );
            rates.push(rate);
            peak = peak.max(run_peak);
        }
        let mut reuse_rates = Vec::new();
        for _ in 0..RUNS {
            let (rate, _) = run(&runtime, &wasm, language.reuse_events, Some(REUSE)).await;
            println!(
                "{}",
                json!({"language": language.name, "events": language.reuse_events, "reuse": REUSE, "per_s": rate.round()})
            );
            reuse_rates.push(rate);
        }
        let per_instance = peak.saturating_sub(before) as f64 / CONCURRENCY as f64 / (1 << 20) as f64;
        summary[format!("{name}_per_s")] = Value::from(median(rates).round());
        summary[format!("{name}_reuse_per_s")] = Value::from(median(reuse_rates).round());
        summary[format!("{name}_cached_load_ms")] = Value::from(cached_load_ms.round());
        summary[format!("{name}_rss_mb_per_instance")] = Value::from(round(per_instance, 1));
        summary[format!("{name}_rss_mb_peak")] = Value::from(peak >> 20);
        summary[format!("{name}_component_mb")] = Value::from(round(wasm.len() as f64 / (1 << 20) as f64, 1));
    }
    summary["rss_mb"] = Value::from(rss() >> 20);
    println!("{summary}");
}
