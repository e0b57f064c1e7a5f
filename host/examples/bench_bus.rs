//! Throughput of `AsyncEventBus` with no-op native handlers, next to a naive baseline that
//! spawns one tokio task per handler call (the original Go design's approach).
//!
//! Run with `cargo run --release -p evhost --example bench_bus`. Each figure is the median
//! of several runs; the last line printed is one JSON object with every figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{Noop, median};
use evhost::{AsyncEventBus, Event, EventBus, EventHandler, SubscribeOptions};
use serde_json::json;
use tokio::sync::Notify;

mod common;

const EVENTS: usize = 1_000_000;
const BATCH: usize = 1_000;
const RUNS: usize = 5;

/// `keys == 0` leaves events unkeyed; otherwise events spread over that many ordering keys.
fn events(n: usize, keys: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let event = Event::new("OrderPlaced", "bench", json!({ "n": i }));
            if keys == 0 {
                event
            } else {
                event.with_subject(format!("order-{}", i % keys))
            }
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Publish {
    Batches,
    OneByOne,
}

/// Events per second through publish → handler on the bus.
async fn bus_run(subscribers: usize, keys: usize, publish: Publish) -> f64 {
    let bus = AsyncEventBus::new();
    for i in 0..subscribers {
        let options = SubscribeOptions {
            name: Some(format!("noop-{i}")),
            ..SubscribeOptions::default()
        };
        bus.subscribe_with("*", Arc::new(Noop), options).unwrap();
    }
    bus.start().await.unwrap();
    let mut input = events(EVENTS, keys);
    let started = Instant::now();
    match publish {
        Publish::Batches => {
            while !input.is_empty() {
                let rest = input.split_off(input.len().saturating_sub(BATCH));
                bus.publish_batch(rest).await.unwrap();
            }
        }
        Publish::OneByOne => {
            for event in input {
                bus.publish(event).await.unwrap();
            }
        }
    }
    bus.wait().await;
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64();
    let metrics = bus.metrics();
    let handled: u64 = metrics.subscriptions.iter().map(|s| s.succeeded).sum();
    assert_eq!(
        handled,
        (EVENTS * subscribers) as u64,
        "every event reached every subscriber"
    );
    bus.stop().await.unwrap();
    rate
}

/// Events per second with one `tokio::spawn` per handler call.
async fn naive_run(subscribers: usize) -> f64 {
    let handlers: Vec<Arc<dyn EventHandler>> = (0..subscribers).map(|_| Arc::new(Noop) as _).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let expected = EVENTS * subscribers;
    let input = events(EVENTS, 0);
    let started = Instant::now();
    for event in input {
        let event = Arc::new(event);
        for handler in &handlers {
            let (handler, event, done, all_done) =
                (handler.clone(), event.clone(), done.clone(), all_done.clone());
            tokio::spawn(async move {
                let _ = handler.handle(event).await;
                if done.fetch_add(1, Ordering::AcqRel) + 1 == expected {
                    all_done.notify_one();
                }
            });
        }
    }
    all_done.notified().await;
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

async fn measure<F, Fut>(label: &str, run: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = f64>,
{
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        samples.push(run().await);
    }
    let value = median(samples.clone());
    let shown: Vec<String> = samples.iter().map(|s| format!("{s:.0}")).collect();
    eprintln!(
        "{label:<44} median {value:>12.0} events/s  runs [{}]",
        shown.join(", ")
    );
    value
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("{EVENTS} events per run, {RUNS} runs, {threads} runtime threads, batches of {BATCH}");
    let async_1 = measure("async bus, 1 subscriber, batches", || {
        bus_run(1, 0, Publish::Batches)
    })
    .await;
    let async_1_keyed = measure("async bus, 1 subscriber, 1024 keys, batches", || {
        bus_run(1, 1024, Publish::Batches)
    })
    .await;
    let async_1_single = measure("async bus, 1 subscriber, publish one by one", || {
        bus_run(1, 0, Publish::OneByOne)
    })
    .await;
    let async_8 = measure("async bus, 8 subscribers, batches", || {
        bus_run(8, 0, Publish::Batches)
    })
    .await;
    let naive_1 = measure("naive spawn per call, 1 subscriber", || naive_run(1)).await;
    let naive_8 = measure("naive spawn per call, 8 subscribers", || naive_run(8)).await;
    let report = json!({
        "events_per_run": EVENTS,
        "runs": RUNS,
        "threads": threads,
        "async_bus_events_per_s": async_1.round(),
        "async_bus_keyed_events_per_s": async_1_keyed.round(),
        "async_bus_single_publish_events_per_s": async_1_single.round(),
        "async_bus_8_subscribers_events_per_s": async_8.round(),
        "naive_spawn_events_per_s": naive_1.round(),
        "naive_spawn_8_subscribers_events_per_s": naive_8.round(),
        "speedup_vs_naive": (async_1 / naive_1 * 100.0).round() / 100.0,
        "speedup_vs_naive_8_subscribers": (async_8 / naive_8 * 100.0).round() / 100.0,
    });
    println!("{report}");
}
