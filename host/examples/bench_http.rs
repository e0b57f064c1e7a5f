//! HTTP ingest → Wasm handler: throughput with batching, publish latency at half that load,
//! and hot-reload time of a 2 MB component.
//!
//! Run with `cargo run --release -p evhost --example bench_http`. It builds the `noop` and
//! `big` test plugins first, runs `evhost run`'s server in this process on a free loopback
//! port, and generates the load from the same machine. The last line printed is one JSON
//! object:
//!
//! - `http_events_per_s`: events/s from the first request until the plugin handled them all,
//!   with 8 concurrent clients posting batches of 100 (`application/cloudevents-batch+json`).
//!   Median of 3 runs.
//! - `publish_p50_ms` / `publish_p99_ms`: round-trip latency of one `POST /events` (a batch
//!   of 100) while posting at half that event rate, paced.
//! - `reload_ms`: median time from a changed 2 MB component being renamed into the plugins
//!   folder to `GET /plugins` showing the new version.
//! - `http_events_per_s_watched` and `watched_ratio`: the same throughput (median of 3) with
//!   8 `GET /stream` clients reading every event of the stream and an operator's page
//!   polling `/metrics/history`, `/plugins` and `/errors` every second; the ratio to the
//!   unwatched median.
//! - `lookup_events`, `event_lookup_p50_ms` / `_p99_ms`, `trace_p50_ms` / `_p99_ms`:
//!   `GET /events/{id}` of random stored events and `GET /events/{id}/trace` of random
//!   sagas (10 events each) once the log holds `lookup_events` events (1,000,000; set
//!   `BENCH_LOOKUP_EVENTS` to change it), 500 requests each, one at a time.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use evhost::config::Config;
use serde_json::{Value, json};

mod common;

const CLIENTS: usize = 8;
const BATCH: usize = 100;
const REQUESTS_PER_CLIENT: usize = 60;
const RUNS: usize = 3;
const LATENCY_SECONDS: u64 = 4;
const RELOADS: usize = 5;
const STREAM_CLIENTS: usize = 8;
const LOOKUPS: usize = 500;
/// Events per saga in the lookup log: a root and its correlated followers.
const SAGA: usize = 10;

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn batch(run: usize, client: usize, request: usize) -> String {
    let events: Vec<Value> = (0..BATCH)
        .map(|i| {
            json!({
                "specversion": "1.0",
                "id": format!("r{run}-c{client}-q{request}-{i}"),
                "source": "bench",
                "type": "OrderPlaced",
                "data": {"order": i, "total": 42}
            })
        })
        .collect();
    Value::Array(events).to_string()
}

async fn handled(http: &reqwest::Client, url: &str) -> u64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(r#"evhost_deliveries_total{plugin="noop",outcome="ok"}"#))
        .and_then(|l| l.rsplit_once(' '))
        .map_or(0, |(_, v)| v.parse::<f64>().unwrap() as u64)
}

async fn post(http: &reqwest::Client, url: &str, body: String) {
    let response = http
        .post(format!("{url}/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

async fn throughput(http: &reqwest::Client, url: &str, run: usize) -> f64 {
    let before = handled(http, url).await;
    let total = (CLIENTS * REQUESTS_PER_CLIENT * BATCH) as u64;
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let (http, url) = (http.clone(), url.to_owned());
        clients.push(tokio::spawn(async move {
            for request in 0..REQUESTS_PER_CLIENT {
                post(&http, &url, batch(run, client, request)).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    while handled(http, url).await < before + total {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Posts batches at `events_per_s` for a few seconds and returns every request's latency.
async fn latencies(http: &reqwest::Client, url: &str, events_per_s: f64) -> Vec<Duration> {
    let interval = Duration::from_secs_f64(BATCH as f64 / events_per_s);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let requests = (LATENCY_SECONDS as f64 / interval.as_secs_f64()) as usize;
    let mut pending = Vec::with_capacity(requests);
    for request in 0..requests {
        ticker.tick().await;
        let (http, url) = (http.clone(), url.to_owned());
        let body = batch(100, 0, request);
        pending.push(tokio::spawn(async move {
            let started = Instant::now();
            post(&http, &url, body).await;
            started.elapsed()
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for request in pending {
        samples.push(request.await.unwrap());
    }
    samples
}

/// A component with the same code and a custom section appended, so its hash differs.
fn variant(component: &[u8], n: usize) -> Vec<u8> {
    fn leb128(mut value: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"evhost-bench";
    let payload = n.to_le_bytes();
    let mut contents = Vec::new();
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name);
    contents.extend_from_slice(&payload);
    let mut bytes = component.to_vec();
    bytes.push(0);
    leb128(contents.len(), &mut bytes);
    bytes.extend_from_slice(&contents);
    bytes
}

async fn big_hash(http: &reqwest::Client, url: &str) -> Option<String> {
    let plugins: Value = http
        .get(format!("{url}/plugins"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    plugins
        .as_array()?
        .iter()
        .find(|p| p["name"] == "big")
        .and_then(|p| p["hash"].as_str().map(str::to_owned))
}

async fn reload_times(http: &reqwest::Client, url: &str, plugins_dir: &Path, big: &[u8]) -> Vec<Duration> {
    let target = plugins_dir.join("big.wasm");
    let staging = plugins_dir.join(".big.wasm.partial");
    let mut times = Vec::new();
    for n in 0..=RELOADS {
        let bytes = variant(big, n);
        let hash = evhost::runtime::content_hash(&bytes);
        std::fs::write(&staging, &bytes).unwrap();
        let started = Instant::now();
        std::fs::rename(&staging, &target).unwrap();
        while big_hash(http, url).await.as_deref() != Some(hash.as_str()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "reload {n} never happened"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The first load is a new plugin, not a reload.
        if n > 0 {
            times.push(started.elapsed());
        }
    }
    times
}

/// `STREAM_CLIENTS` readers of `GET /stream` and a page polling the operator's reads once
/// a second, until the returned sender is dropped.
fn watchers(http: &reqwest::Client, url: &str) -> tokio::sync::watch::Sender<()> {
    use futures::StreamExt as _;
    let (stop, stopped) = tokio::sync::watch::channel(());
    for _ in 0..STREAM_CLIENTS {
        let (http, url, mut stopped) = (http.clone(), url.to_owned(), stopped.clone());
        tokio::spawn(async move {
            let response = http.get(format!("{url}/stream")).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.bytes_stream();
            loop {
                tokio::select! {
                    chunk = body.next() => if chunk.is_none() { break },
                    _ = stopped.changed() => break,
                }
            }
        });
    }
    let (http, url, mut stopped) = (http.clone(), url.to_owned(), stopped);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    for path in ["/metrics/history", "/plugins", "/errors?limit=100"] {
                        let response = http.get(format!("{url}{path}")).send().await.unwrap();
                        assert_eq!(response.status(), 200, "{path}");
                        response.bytes().await.unwrap();
                    }
                }
                _ = stopped.changed() => break,
            }
        }
    });
    stop
}

/// Fills the log with `total` events: sagas of [`SAGA`] events (a root `l{n}` and followers
/// carrying its id as `correlationid`), posted in batches by [`CLIENTS`] clients.
async fn fill(http: &reqwest::Client, url: &str, total: usize) {
    let requests = total.div_ceil(BATCH);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, next) = (http.clone(), url.to_owned(), std::sync::Arc::clone(&next));
        clients.push(tokio::spawn(async move {
            loop {
                let request = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if request >= requests {
                    break;
                }
                let events: Vec<Value> = (request * BATCH..(request + 1) * BATCH)
                    .map(|n| {
                        let root = n - n % SAGA;
                        let mut event = json!({
                            "specversion": "1.0", "id": format!("l{n}"), "source": "bench",
                            "type": "OrderPlaced", "data": {"order": n}
                        });
                        if n != root {
                            event["correlationid"] = json!(format!("l{root}"));
                            event["causationid"] = json!(format!("l{}", n - 1));
                        }
                        event
                    })
                    .collect();
                post(&http, &url, Value::Array(events).to_string()).await;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
}

/// One-at-a-time latencies of `GET {url}{path(n)}` for `LOOKUPS` random `n` below `total`,
/// sorted.
async fn lookups(
    http: &reqwest::Client,
    url: &str,
    total: usize,
    path: impl Fn(usize) -> String,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(LOOKUPS);
    for _ in 0..LOOKUPS {
        let path = path(fastrand::usize(..total));
        let started = Instant::now();
        let response = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.bytes().await.unwrap();
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let built = common::build_test_plugins(&["noop", "big"]);
    let work = std::env::temp_dir().join(format!("evhost-bench-http-{}", std::process::id()));
    let plugins_dir = work.join("plugins");
    std::fs::create_dir_all(&plugins_dir).unwrap();
    std::fs::copy(built.join("noop.wasm"), plugins_dir.join("noop.wasm")).unwrap();
    let big = std::fs::read(built.join("big.wasm")).unwrap();

    let listen = free_port();
    let config = Config {
        plugins_dir: plugins_dir.clone(),
        data_dir: work.join("data"),
        listen,
        max_body_bytes: std::num::NonZeroUsize::new(4 << 20).expect("non-zero"),
        ..Config::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = evhost::App::new(config).await.expect("the host starts");
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let url = format!("http://{listen}");
    let http = reqwest::Client::new();
    while http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut rates = Vec::new();
    for run in 0..RUNS {
        rates.push(throughput(&http, &url, run).await);
    }
    rates.sort_by(f64::total_cmp);
    let rate = rates[rates.len() / 2];
    eprintln!("throughput runs (events/s): {rates:.0?}");

    let watching = watchers(&http, &url);
    let mut watched = Vec::new();
    for run in 0..RUNS {
        watched.push(throughput(&http, &url, RUNS + run).await);
    }
    drop(watching);
    watched.sort_by(f64::total_cmp);
    let watched_rate = watched[watched.len() / 2];
    eprintln!("throughput with {STREAM_CLIENTS} stream clients and a polling page (events/s): {watched:.0?}");

    let mut samples = latencies(&http, &url, rate / 2.0).await;
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    eprintln!(
        "latency at {:.0} events/s: {} requests, p50 {p50:.2} ms, p99 {p99:.2} ms",
        rate / 2.0,
        samples.len()
    );

    let mut reloads = reload_times(&http, &url, &plugins_dir, &big).await;
    reloads.sort();
    let reload = reloads[reloads.len() / 2].as_secs_f64() * 1000.0;
    eprintln!("reloads of a {} byte component (ms): {:.1?}", big.len(), reloads);

    let total: usize = std::env::var("BENCH_LOOKUP_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let filling = Instant::now();
    fill(&http, &url, total).await;
    eprintln!("filled the log with {total} events in {:.1?}", filling.elapsed());
    let event = lookups(&http, &url, total, |n| format!("/events/l{n}")).await;
    let trace = lookups(&http, &url, total, |n| format!("/events/l{}/trace", n - n % SAGA)).await;
    eprintln!(
        "GET /events/{{id}} p50 {:.2} ms p99 {:.2} ms; /trace p50 {:.2} ms p99 {:.2} ms",
        percentile(&event, 0.5),
        percentile(&event, 0.99),
        percentile(&trace, 0.5),
        percentile(&trace, 0.99)
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "{}",
        json!({
            "http_events_per_s": rate.round(),
            "publish_p50_ms": (p50 * 100.0).round() / 100.0,
            "publish_p99_ms": (p99 * 100.0).round() / 100.0,
            "latency_load_events_per_s": (rate / 2.0).round(),
            "reload_ms": (reload * 10.0).round() / 10.0,
            "reload_component_bytes": big.len(),
            "http_events_per_s_watched": watched_rate.round(),
            "watched_ratio": (watched_rate / rate * 100.0).round() / 100.0,
            "stream_clients": STREAM_CLIENTS,
            "lookup_events": total,
            "event_lookup_p50_ms": (percentile(&event, 0.5) * 100.0).round() / 100.0,
            "event_lookup_p99_ms": (percentile(&event, 0.99) * 100.0).round() / 100.0,
            "trace_p50_ms": (percentile(&trace, 0.5) * 100.0).round() / 100.0,
            "trace_p99_ms": (percentile(&trace, 0.99) * 100.0).round() / 100.0,
            "clients": CLIENTS,
            "batch": BATCH,
        })
    );
}
