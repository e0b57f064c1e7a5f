//! Wasm invocations per second with a fresh instance per event, next to a native handler
//! and a bare-wasmtime baseline, all in one run.
//!
//! Run with `cargo run --release -p evhost --example bench_wasm`. It builds the `noop` test
//! plugin (`tests/plugins/noop`, a handler that returns `Ok` at once) for wasm32-wasip2
//! first. Each figure is the median of several runs over all cores; the last line printed is
//! one JSON object.
//!
//! - `wasm_fresh_instance_per_s`: events published in batches on an `AsyncEventBus`, each
//!   handled by the plugin in a fresh instance under fuel, deadline and memory limits.
//! - `native_per_s`: the same with a native no-op handler.
//! - `bare_wasmtime_per_s`: one task per core instantiating the same component from an
//!   `InstancePre` (same engine) and calling `handle` in a loop, nothing else.

use std::sync::Arc;
use std::time::{Duration, Instant};

use evhost::{AsyncBusConfig, AsyncEventBus, Event, EventBus, PluginOptions, Runtime, RuntimeConfig};
use serde_json::json;

mod common;

const EVENTS: usize = 200_000;
const BATCH: usize = 1_000;
const RUNS: usize = 5;

mod bare {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "evhost:plugin/handler",
        exports: { default: async },
    });
}

fn event(i: usize) -> Event {
    Event::new("OrderPlaced", "bench", json!({ "order": i, "total": 42 }))
}

/// Events per second through the bus to the plugin (`Some`) or a native no-op handler.
async fn through_bus(plugin: Option<(&Arc<Runtime>, &[u8])>) -> f64 {
    let bus = AsyncEventBus::with_config(AsyncBusConfig {
        handler_timeout: Duration::from_secs(60),
        ..Default::default()
    });
    match plugin {
        Some((runtime, bytes)) => {
            let plugin = runtime
                .load(bytes.to_vec(), PluginOptions::default(), bus.key_value_store())
                .await
                .unwrap();
            plugin.subscribe(&bus).unwrap();
        }
        None => {
            bus.subscribe("*", Arc::new(common::Noop)).unwrap();
        }
    }
    bus.start().await.unwrap();
    let mut input: Vec<Event> = (0..EVENTS).map(event).collect();
    let started = Instant::now();
    while !input.is_empty() {
        let rest = input.split_off(input.len().saturating_sub(BATCH));
        bus.publish_batch(rest).await.unwrap();
    }
    bus.wait().await;
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    let metrics = bus.metrics();
    assert_eq!(
        metrics.subscriptions[0].succeeded, EVENTS as u64,
        "every event handled"
    );
    bus.stop().await.unwrap();
    rate
}

async fn bare_wasmtime(engine: &wasmtime::Engine, bytes: &[u8]) -> f64 {
    let component = wasmtime::component::Component::new(engine, bytes).unwrap();
    let mut linker = wasmtime::component::Linker::<()>::new(engine);
    // The noop handler calls no import; stubs satisfy the linker.
    linker.define_unknown_imports_as_traps(&component).unwrap();
    let pre = bare::HandlerPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    let wit_event = bare::evhost::plugin::types::Event {
        id: "e1".into(),
        source: "bench".into(),
        type_: "OrderPlaced".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        data: Some(br#"{"order":1,"total":42}"#.to_vec()),
        extensions: Vec::new(),
    };
    let tasks = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_task = EVENTS / tasks;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (pre, engine, wit_event) = (pre.clone(), engine.clone(), wit_event.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let mut store = wasmtime::Store::new(&engine, ());
                // The engine meters fuel and checks epochs; give the baseline room for both.
                store.set_fuel(u64::MAX).unwrap();
                store.set_epoch_deadline(u64::MAX / 2);
                let instance = pre.instantiate_async(&mut store).await.unwrap();
                let result = instance
                    .evhost_plugin_event_handler()
                    .call_handle(&mut store, &wit_event)
                    .await
                    .unwrap();
                assert!(result.is_ok());
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    (per_task * tasks) as f64 / started.elapsed().as_secs_f64()
}

fn report(label: &str, samples: Vec<f64>) -> f64 {
    let value = common::median(samples.clone());
    let shown: Vec<String> = samples.iter().map(|s| format!("{s:.0}")).collect();
    eprintln!("{label:<40} median {value:>10.0}/s  runs [{}]", shown.join(", "));
    value
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let path = common::build_test_plugins(&["noop"]).join("noop.wasm");
    let bytes = std::fs::read(&path).unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "{EVENTS} events per run, {RUNS} runs, {threads} threads, component {} ({} bytes)",
        path.display(),
        bytes.len()
    );
    let mut wasm = Vec::new();
    let mut native = Vec::new();
    let mut bare = Vec::new();
    // Interleaved so that a noisy moment hurts all three alike.
    for _ in 0..RUNS {
        wasm.push(through_bus(Some((&runtime, &bytes))).await);
        native.push(through_bus(None).await);
        bare.push(bare_wasmtime(runtime.engine(), &bytes).await);
    }
    let wasm = report("evhost wasm, fresh instance per event", wasm);
    let native = report("evhost native handler", native);
    let bare = report("bare wasmtime instantiate + call", bare);
    let out = json!({
        "events_per_run": EVENTS,
        "runs": RUNS,
        "threads": threads,
        "component_bytes": bytes.len(),
        "wasm_fresh_instance_per_s": wasm.round(),
        "native_per_s": native.round(),
        "bare_wasmtime_per_s": bare.round(),
        "wasm_vs_bare": (wasm / bare * 100.0).round() / 100.0,
    });
    println!("{out}");
}
