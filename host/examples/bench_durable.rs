//! Durable publishing through to a Wasm handler, against the in-memory log in the same run.
//!
//! Run with `cargo run --release -p evhost --example bench_durable`. It builds the `noop`
//! test plugin (`tests/plugins/noop`) for wasm32-wasip2 first. Each run sends the same
//! workload through two buses with the plugin subscribed: one over a fresh `SqliteStore`
//! (WAL, `synchronous = FULL`, group commit; in the temporary directory, removed afterwards
//! — set `TMPDIR` to measure another disk) and one over the in-memory log. Publisher tasks
//! each `publish` single events and time every call. Throughput counts until `wait()`
//! returns: every event handled by the plugin in a fresh instance and, on the durable bus,
//! every delivery's acknowledgement committed. Each run prints a JSON line per bus; the
//! last line is one JSON object with the medians.
//!
//! - `durable_events_per_s` / `memory_events_per_s`: events per second, publish to handled.
//! - `durable_p99_ms`: p99 of one `publish` on the durable bus (it returns once stored).
//! - `durable_transactions` / `durable_writes`: commits of the store (one fsync each) and
//!   write requests (an append per publish, a commit per batch of acknowledgements) in
//!   the median run.
//! - `*_cpu_us_per_event`: CPU time of the whole process per event (Linux only), and of
//!   the store's writer thread alone; it says where the durable mode's cost goes.
//!
//! `BENCH_DURABLE_ONLY=1` runs only the durable bus (a JSON line per run, no medians), for
//! a profiler: `BENCH_DURABLE_ONLY=1 perf record -g target/release/examples/bench_durable`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fresh, median};
use evhost::store::sqlite::{SqliteStore, StoreStats};
use evhost::{AsyncBusConfig, AsyncEventBus, Event, EventBus, PluginOptions, Runtime, RuntimeConfig};
use serde_json::json;

mod common;

const PUBLISHERS: usize = 512;
const EVENTS_PER_PUBLISHER: usize = 400;
const EVENTS: usize = PUBLISHERS * EVENTS_PER_PUBLISHER;
const RUNS: usize = 5;

/// The settings of both buses. Measured here, 512 publishers against a limit of 512
/// invocations beat both 256 and 1,024 of each: fewer leave cores idle while appends wait
/// for their group commit, more only add contention. The limit stays below the runtime's
/// pool of 1,000 instances.
fn bus_config() -> AsyncBusConfig {
    AsyncBusConfig {
        max_concurrency: 512,
        subscription_concurrency: 512,
        capacity: 100_000,
        handler_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

/// The `n`th event, unkeyed so the handler may take events in any order. It is made when
/// it is published, as a producer would: its id (a time-ordered UUIDv7) then reaches the
/// store's `(source, id)` index near the index's end. Made all before the run, ids arrive
/// in random order and every insert dirties another index page, which measured at about
/// half the throughput.
fn event(n: usize) -> Event {
    Event::new("OrderPlaced", "bench", json!({ "order": n, "total": 42 }))
}

/// On-CPU time so far of the process's live threads and of the store's writer thread,
/// from `/proc/self/task/*/schedstat`; `None` where that does not exist.
#[derive(Clone, Copy)]
struct CpuTime {
    total: Duration,
    writer: Duration,
}

impl CpuTime {
    fn now() -> Option<Self> {
        let mut total = Duration::ZERO;
        let mut writer = Duration::ZERO;
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            // A thread may exit between listing and reading: skip it.
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let on_cpu = Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?);
            total += on_cpu;
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            // The kernel keeps 15 bytes of the name `evhost-store-writer`.
            if name.starts_with("evhost-store") {
                writer += on_cpu;
            }
        }
        Some(Self { total, writer })
    }

    /// Microseconds per event spent since `before`: the whole process and the writer.
    fn per_event_since(self, before: Self, events: usize) -> (f64, f64) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
        (
            us(self.total.saturating_sub(before.total)),
            us(self.writer.saturating_sub(before.writer)),
        )
    }
}

/// One run's figures.
struct Run {
    per_s: f64,
    /// Events per second until the last `publish` returned (accepted, not yet handled).
    accepted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU microseconds per event: whole process, store writer thread.
    cpu_us: Option<(f64, f64)>,
    /// The store's counters over the run; `None` in memory.
    stats: Option<StoreStats>,
}

impl Run {
    fn json(&self, mode: &str) -> serde_json::Value {
        let mut line = json!({
            "mode": mode,
            "events_per_s": self.per_s.round(),
            "accepted_per_s": self.accepted_per_s.round(),
            "publish_p50_ms": round3(self.p50_ms),
            "publish_p99_ms": round3(self.p99_ms),
            "cpu_us_per_event": self.cpu_us.map(|(total, _)| round3(total)),
        });
        if let Some(stats) = self.stats {
            line["writer_cpu_us_per_event"] = json!(self.cpu_us.map(|(_, writer)| round3(writer)));
            line["transactions"] = json!(stats.transactions);
            line["writes"] = json!(stats.writes);
            line["writes_per_transaction"] = json!(round3(writes_per_transaction(stats)));
        }
        line
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn writes_per_transaction(stats: StoreStats) -> f64 {
    stats.writes as f64 / stats.transactions.max(1) as f64
}

fn percentile_ms(sorted: &[Duration], per_mille: usize) -> f64 {
    sorted[sorted.len() * per_mille / 1000].as_secs_f64() * 1e3
}

/// The counters' change from `before` to `after` (`pending` and `dead_letters` as after).
fn delta(before: StoreStats, after: StoreStats) -> StoreStats {
    StoreStats {
        events: after.events - before.events,
        pending: after.pending,
        dead_letters: after.dead_letters,
        transactions: after.transactions - before.transactions,
        writes: after.writes - before.writes,
    }
}

/// Publishes every event on a bus over `store` (the in-memory log if `None`) with the
/// plugin subscribed, and waits until all are handled.
async fn run(runtime: &Arc<Runtime>, wasm: &[u8], store: Option<&Arc<SqliteStore>>) -> Run {
    let bus = match store {
        Some(store) => AsyncEventBus::with_storage(bus_config(), store.storage()),
        None => AsyncEventBus::with_config(bus_config()),
    };
    let plugin = runtime
        .load(wasm.to_vec(), PluginOptions::default(), bus.key_value_store())
        .await
        .expect("loading the plugin");
    plugin.subscribe(&bus).expect("subscribing the plugin");
    bus.start().await.expect("starting the bus");
    let before = store.map(|s| s.stats().expect("store stats"));
    let cpu_before = CpuTime::now();
    let started = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(EVENTS_PER_PUBLISHER);
                for i in 0..EVENTS_PER_PUBLISHER {
                    let event = event(p * EVENTS_PER_PUBLISHER + i);
                    let t = Instant::now();
                    bus.publish(event).await.expect("publish");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(EVENTS);
    for publisher in publishers {
        latencies.extend(publisher.await.expect("a publisher panicked"));
    }
    let accepted = started.elapsed();
    bus.wait().await;
    let elapsed = started.elapsed();
    let cpu_us = CpuTime::now()
        .zip(cpu_before)
        .map(|(after, before)| after.per_event_since(before, EVENTS));
    let metrics = bus.metrics();
    assert_eq!(
        metrics.subscriptions[0].succeeded, EVENTS as u64,
        "every event handled"
    );
    let stats = store.map(|s| {
        let stats = delta(before.expect("counted before"), s.stats().expect("store stats"));
        assert_eq!(stats.events, EVENTS as u64, "every event stored");
        assert_eq!(stats.pending, 0, "every delivery acknowledged in the store");
        stats
    });
    bus.stop().await.expect("stopping the bus");
    latencies.sort_unstable();
    Run {
        per_s: EVENTS as f64 / elapsed.as_secs_f64(),
        accepted_per_s: EVENTS as f64 / accepted.as_secs_f64(),
        p50_ms: percentile_ms(&latencies, 500),
        p99_ms: percentile_ms(&latencies, 990),
        cpu_us,
        stats,
    }
}

async fn durable_run(runtime: &Arc<Runtime>, wasm: &[u8]) -> Run {
    let fresh = Fresh::new("bench-durable");
    let result = run(runtime, wasm, Some(&fresh.store)).await;
    fresh.store.close().await;
    result
}

/// The median of one figure over the runs.
fn median_of(runs: &[Run], figure: impl Fn(&Run) -> f64) -> f64 {
    median(runs.iter().map(figure).collect())
}

/// The median of a CPU figure, if every run has it.
fn cpu_median(runs: &[Run], figure: impl Fn((f64, f64)) -> f64) -> Option<f64> {
    let samples: Option<Vec<f64>> = runs.iter().map(|r| r.cpu_us.map(&figure)).collect();
    samples.map(|s| round3(median(s)))
}

fn report(label: &str, runs: &[Run]) {
    let shown: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.per_s)).collect();
    eprintln!(
        "{label:<8} median {:>7.0} events/s  p99 {:>6.2} ms  runs [{}]",
        median_of(runs, |r| r.per_s),
        median_of(runs, |r| r.p99_ms),
        shown.join(", ")
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let path = common::build_test_plugins(&["noop"]).join("noop.wasm");
    let wasm = std::fs::read(&path).expect("reading the noop plugin");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("creating the runtime");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = bus_config();
    eprintln!(
        "{EVENTS} events per run from {PUBLISHERS} publishers, {RUNS} runs, {threads} runtime threads \
         + the store's writer thread, store in {}",
        std::env::temp_dir().display()
    );
    // `BENCH_DURABLE_ONLY=1` runs the durable bus alone, e.g. under a profiler.
    if std::env::var_os("BENCH_DURABLE_ONLY").is_some() {
        for _ in 0..RUNS {
            println!("{}", durable_run(&runtime, &wasm).await.json("durable"));
        }
        return;
    }
    let mut durable = Vec::with_capacity(RUNS);
    let mut memory = Vec::with_capacity(RUNS);
    // Interleaved so that a noisy moment hurts both alike.
    for _ in 0..RUNS {
        let run_durable = durable_run(&runtime, &wasm).await;
        println!("{}", run_durable.json("durable"));
        durable.push(run_durable);
        let run_memory = run(&runtime, &wasm, None).await;
        println!("{}", run_memory.json("memory"));
        memory.push(run_memory);
    }
    report("durable", &durable);
    report("memory", &memory);
    let durable_rate = median_of(&durable, |r| r.per_s);
    let memory_rate = median_of(&memory, |r| r.per_s);
    // The store's counters of the run with the median throughput.
    let stats = durable
        .iter()
        .find(|r| r.per_s == durable_rate)
        .and_then(|r| r.stats)
        .expect("the median is one of the durable runs");
    let out = json!({
        "events_per_run": EVENTS,
        "runs": RUNS,
        "threads": threads,
        "handler": "noop.wasm, fresh instance per event",
        "publish": format!("{PUBLISHERS} tasks, one event per publish, unkeyed"),
        "max_concurrency": config.max_concurrency,
        "subscription_concurrency": config.subscription_concurrency,
        "capacity": config.capacity,
        "durable_events_per_s": durable_rate.round(),
        "memory_events_per_s": memory_rate.round(),
        "durable_vs_memory": round3(durable_rate / memory_rate),
        "durable_p99_ms": round3(median_of(&durable, |r| r.p99_ms)),
        "durable_p50_ms": round3(median_of(&durable, |r| r.p50_ms)),
        "memory_p99_ms": round3(median_of(&memory, |r| r.p99_ms)),
        "durable_transactions": stats.transactions,
        "durable_writes": stats.writes,
        "durable_writes_per_transaction": round3(writes_per_transaction(stats)),
        "durable_cpu_us_per_event": cpu_median(&durable, |(total, _)| total),
        "durable_writer_cpu_us_per_event": cpu_median(&durable, |(_, writer)| writer),
        "memory_cpu_us_per_event": cpu_median(&memory, |(total, _)| total),
    });
    println!("{out}");
}
