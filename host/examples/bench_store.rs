//! Throughput and latency of the durable store (`evhost::store::sqlite::SqliteStore`):
//! every figure is for writes that are committed and fsynced (`synchronous = FULL`)
//! before they are answered, sharing fsyncs through group commit.
//!
//! - `appends_per_s`: many concurrent publishers, each appending one event at a time
//!   (routed to one subscription) and waiting for it to be durable.
//! - `batch_appends_events_per_s`: a few publishers appending batches of events.
//! - `commit_p99_ms` / `commits_per_s`: concurrent delivery commits, each an ack with one
//!   key-value write and one emitted event, as a handler's effects are committed.
//!
//! Run with `cargo run --release -p evhost --example bench_store`. Each figure is the
//! median of 3 runs on a fresh store in the temporary directory (set `TMPDIR` to measure
//! another disk); the last line printed is one JSON object with every figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Fresh, median};
use evhost::Event;
use evhost::store::sqlite::{AppendBatch, DeliveryCommit, DeliveryOutcome, StoreStats};
use serde_json::json;

mod common;

const RUNS: usize = 3;
const SINGLE_EVENTS: usize = 200_000;
const SINGLE_PUBLISHERS: usize = 512;
const BATCH_EVENTS: usize = 500_000;
const BATCH_SIZE: usize = 100;
const BATCH_PUBLISHERS: usize = 8;
const COMMITS: usize = 50_000;
const COMMITTERS: usize = 256;

fn events(n: usize) -> Vec<Arc<Event>> {
    (0..n)
        .map(|i| {
            Arc::new(
                Event::new(
                    "OrderPlaced",
                    "bench",
                    json!({ "order": i, "customer": format!("c-{}", i % 1000), "amount": 12.5 }),
                )
                .with_subject(format!("order-{i}")),
            )
        })
        .collect()
}

/// One run's figures.
struct Run {
    per_s: f64,
    p99_ms: f64,
    events_per_transaction: f64,
}

fn p99(mut latencies: Vec<Duration>) -> f64 {
    latencies.sort_unstable();
    latencies[latencies.len() * 99 / 100].as_secs_f64() * 1e3
}

fn per_transaction(before: StoreStats, after: StoreStats) -> f64 {
    (after.events - before.events) as f64 / (after.transactions - before.transactions).max(1) as f64
}

/// `tasks` tasks take work items `0..total` from a shared counter and time each one.
async fn drive<F, Fut>(tasks: usize, total: usize, work: F) -> (Duration, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (next, work) = (Arc::clone(&next), Arc::clone(&work));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    let t = Instant::now();
                    work(i).await;
                    latencies.push(t.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for handle in handles {
        latencies.extend(handle.await.expect("a publisher panicked"));
    }
    (started.elapsed(), latencies)
}

/// `publishers` appending `total` events, `per_request` events at a time.
async fn append_run(total: usize, per_request: usize, publishers: usize) -> Run {
    let fresh = Fresh::new("bench-store");
    let input = Arc::new(events(total));
    let before = fresh.store.stats().unwrap();
    let store = Arc::clone(&fresh.store);
    let (elapsed, latencies) = drive(publishers, total / per_request, move |i| {
        let store = Arc::clone(&store);
        let events = input[i * per_request..(i + 1) * per_request].to_vec();
        async move {
            let batch = AppendBatch {
                routes: vec![vec![Arc::from("projection")]; events.len()],
                events,
                checkpoint: None,
            };
            store.append(batch).await.expect("append");
        }
    })
    .await;
    let after = fresh.store.stats().unwrap();
    assert_eq!(after.events, total as u64);
    Run {
        per_s: total as f64 / elapsed.as_secs_f64(),
        p99_ms: p99(latencies),
        events_per_transaction: per_transaction(before, after),
    }
}

async fn delivery_commits() -> Run {
    let fresh = Fresh::new("bench-store");
    let input = events(COMMITS);
    let mut offsets = Vec::with_capacity(COMMITS);
    for chunk in input.chunks(1_000) {
        let batch = AppendBatch {
            routes: vec![vec![Arc::from("projection")]; chunk.len()],
            events: chunk.to_vec(),
            checkpoint: None,
        };
        offsets.extend(
            fresh
                .store
                .append(batch)
                .await
                .unwrap()
                .into_iter()
                .map(|a| a.offset),
        );
    }
    let emitted = Arc::new(events(COMMITS));
    let offsets = Arc::new(offsets);
    let store = Arc::clone(&fresh.store);
    let before = store.stats().unwrap();
    let version: Arc<str> = Arc::from("8d53dee065694865");
    let (elapsed, latencies) = drive(COMMITTERS, COMMITS, move |i| {
        let (store, offsets, emitted) = (Arc::clone(&store), Arc::clone(&offsets), Arc::clone(&emitted));
        let version = Arc::clone(&version);
        async move {
            let commit = DeliveryCommit {
                subscription: "projection".into(),
                offset: offsets[i],
                // The store finds the delivered event by offset; this one is not read.
                event: Arc::clone(&emitted[i]),
                outcome: DeliveryOutcome::Acked,
                kv_namespace: "projection".into(),
                kv_writes: vec![(format!("order:{i}"), Some(b"placed".to_vec()))],
                emitted: vec![(Arc::clone(&emitted[i]), vec!["mailer".into()])],
                // As a Wasm plugin's acknowledgement carries it.
                handler_version: Some(Arc::clone(&version)),
            };
            store.commit(commit).await.expect("commit");
        }
    })
    .await;
    let after = fresh.store.stats().unwrap();
    assert_eq!(
        after.pending, COMMITS as u64,
        "every ack done, every emitted event pending"
    );
    Run {
        per_s: COMMITS as f64 / elapsed.as_secs_f64(),
        p99_ms: p99(latencies),
        events_per_transaction: (after.writes - before.writes) as f64
            / (after.transactions - before.transactions).max(1) as f64,
    }
}

async fn measure<F, Fut>(label: &str, unit: &str, run: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Run>,
{
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        runs.push(run().await);
    }
    let rate = median(runs.iter().map(|r| r.per_s).collect());
    let p99 = median(runs.iter().map(|r| r.p99_ms).collect());
    let grouped = median(runs.iter().map(|r| r.events_per_transaction).collect());
    let shown: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.per_s)).collect();
    eprintln!(
        "{label:<52} median {rate:>9.0} {unit}/s  p99 {p99:>6.2} ms  {grouped:>7.1} per transaction  runs [{}]",
        shown.join(", ")
    );
    (rate, p99, grouped)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "{RUNS} runs each, {threads} runtime threads + the writer thread, store in {}",
        std::env::temp_dir().display()
    );
    let (appends, append_p99, append_group) = measure(
        &format!("{SINGLE_PUBLISHERS} publishers x single-event appends"),
        "events",
        || append_run(SINGLE_EVENTS, 1, SINGLE_PUBLISHERS),
    )
    .await;
    let (batch, batch_p99, _) = measure(
        &format!("{BATCH_PUBLISHERS} publishers x batches of {BATCH_SIZE}"),
        "events",
        || append_run(BATCH_EVENTS, BATCH_SIZE, BATCH_PUBLISHERS),
    )
    .await;
    let (commits, commit_p99, commit_group) = measure(
        &format!("{COMMITTERS} committers x ack + kv write + emitted event"),
        "commits",
        delivery_commits,
    )
    .await;
    let report = json!({
        "runs": RUNS,
        "threads": threads,
        "appends_per_s": appends.round(),
        "append_p99_ms": (append_p99 * 100.0).round() / 100.0,
        "append_events_per_transaction": append_group.round(),
        "batch_appends_events_per_s": batch.round(),
        "batch_append_p99_ms": (batch_p99 * 100.0).round() / 100.0,
        "commits_per_s": commits.round(),
        "commit_p99_ms": (commit_p99 * 100.0).round() / 100.0,
        "commits_per_transaction": commit_group.round(),
    });
    println!("{report}");
}
