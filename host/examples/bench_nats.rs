//! The NATS JetStream mode, publish through to a Wasm handler, against the embedded SQLite
//! log in the same run.
//!
//! Run with `cargo run --release -p evhost --example bench_nats`. It needs `nats-server`
//! (2.9 or newer) on the `PATH`: it starts one of its own on a free port, with its store in
//! the temporary directory, and stops it at the end. It builds the `noop` test plugin
//! (`tests/plugins/noop`) for wasm32-wasip2 first. Every bus has the host's default
//! settings (`evhost run` with an empty `evhost.toml`: 4 invocations of a plugin at once,
//! each in a fresh instance).
//!
//! Each mode publishes the same events from 16 publisher tasks in batches of 100 (a batch
//! is one `POST /events` for the HTTP API) and counts until every event is handled:
//!
//! - `nats_1p`: one host; the plugin's deliveries come from its durable consumer. The
//!   server keeps the event history (`[nats] history`, on by default), a mirror of the
//!   stream the lookups read; after the run, lookups are timed against it (by id, a
//!   trace, the newest page, and a type filter that matches nothing, which reads it all).
//! - `nats_1p_no_history`: the same with `history = "0s"`: what keeping the history costs.
//! - `nats_2p`: two hosts sharing the consumer, this process and a second one (this
//!   example run with `--host`); the events are published through this process. Both
//!   hosts share 2 cores here, so this measures the cost of sharing, not added capacity.
//! - `nats_ordered`: one host, the plugin `ordered` (one consumer per partition, one
//!   delivery in flight in each), events over 1,000 ordering keys.
//! - `embedded`: one host on a fresh SQLite log (`evhost run` without `--nats`).
//!
//! On NATS an event counts as handled once the server dropped it from the stream (interest
//! retention drops an event once every consumer acknowledged it), so the figure includes
//! the acknowledgements' trip to the server; the hosts' own counters are checked against
//! the number published. Every run uses a new stream. Each run prints a JSON line; the last
//! line is one JSON object with each mode's median events/s.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Fresh, median};
use evhost::config::Config;
use evhost::store::nats::{NatsOptions, NatsStore};
use evhost::store::{EventLookup as _, EventQuery};
use evhost::{AsyncEventBus, Event, EventBus, PluginOptions, Runtime, RuntimeConfig};
use serde_json::json;

mod common;

const PUBLISHERS: usize = 16;
const BATCH: usize = 100;
const EVENTS: usize = 48_000;
/// An ordered plugin has at most one delivery per partition in flight: fewer events.
const ORDERED_EVENTS: usize = 12_000;
const KEYS: usize = 1_000;
const RUNS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Nats1p,
    Nats1pNoHistory,
    Nats2p,
    NatsOrdered,
    Embedded,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Nats1p => "nats_1p",
            Self::Nats1pNoHistory => "nats_1p_no_history",
            Self::Nats2p => "nats_2p",
            Self::NatsOrdered => "nats_ordered",
            Self::Embedded => "embedded",
        }
    }

    fn events(self) -> usize {
        match self {
            Self::NatsOrdered => ORDERED_EVENTS,
            _ => EVENTS,
        }
    }
}

/// A `nats-server` with JetStream on a free port, killed on drop.
struct NatsServer {
    child: Child,
    url: String,
    store: PathBuf,
}

impl NatsServer {
    fn start() -> Self {
        let store = std::env::temp_dir().join(format!("evhost-bench-nats-{}", uuid::Uuid::new_v4()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("finding a free port")
            .port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server (is it on the PATH?)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            store,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// One host: a bus over `store` with the noop plugin subscribed and started.
struct Host {
    bus: AsyncEventBus,
    nats: Option<Arc<NatsStore>>,
}

impl Host {
    async fn nats(
        runtime: &Arc<Runtime>,
        wasm: &[u8],
        url: &str,
        stream: &str,
        ordered: bool,
        history: bool,
    ) -> Self {
        let mut options = NatsOptions::new(url);
        options.stream = stream.to_owned();
        if !history {
            options.history = Duration::ZERO;
        }
        let store = Arc::new(NatsStore::open(options).await.expect("opening the NATS store"));
        let bus = AsyncEventBus::with_storage(Config::default().bus_config(), store.storage());
        Self::subscribe(runtime, wasm, bus, ordered, Some(store)).await
    }

    async fn subscribe(
        runtime: &Arc<Runtime>,
        wasm: &[u8],
        bus: AsyncEventBus,
        ordered: bool,
        nats: Option<Arc<NatsStore>>,
    ) -> Self {
        let options = PluginOptions {
            ordered,
            ..PluginOptions::default()
        };
        let plugin = runtime
            .load(wasm.to_vec(), options, bus.key_value_store())
            .await
            .expect("loading the plugin");
        plugin.subscribe(&bus).expect("subscribing the plugin");
        bus.start().await.expect("starting the bus");
        Self { bus, nats }
    }

    fn handled(&self) -> u64 {
        self.bus.metrics().subscriptions.iter().map(|s| s.succeeded).sum()
    }

    async fn stop(self) -> u64 {
        self.bus.stop().await.expect("stopping the bus");
        if let Some(nats) = &self.nats {
            nats.close().await;
        }
        self.handled()
    }
}

/// The second host of `nats_2p`: this example run with `--host URL STREAM`. It says
/// `ready` once subscribed, and when its standard input closes it stops and prints how
/// many events it handled.
struct SecondHost {
    child: Child,
}

impl SecondHost {
    fn start(url: &str, stream: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this example's path"))
            .args(["--host", url, stream])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the second host");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("reading from the second host");
        assert_eq!(line.trim(), "ready", "the second host's first line");
        Self { child }
    }

    fn stop(mut self) -> u64 {
        drop(self.child.stdin.take());
        let output = self
            .child
            .wait_with_output()
            .expect("waiting for the second host");
        assert!(output.status.success(), "the second host failed");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("the second host's count")
    }
}

/// Runs as the second host until standard input closes.
async fn second_host(url: &str, stream: &str) {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("creating the runtime");
    let wasm = std::fs::read(plugin_path()).expect("reading the noop plugin");
    let host = Host::nats(&runtime, &wasm, url, stream, false, true).await;
    println!("ready");
    std::io::stdout().flush().expect("writing to the parent");
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
        .await
        .expect("reading standard input");
    println!("{}", host.stop().await);
}

fn plugin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .join("target/wasm-plugins/wasm32-wasip2/release/noop.wasm")
}

/// The `n`th event, `order-{n}`; keyed over [`KEYS`] keys for the ordered plugin.
fn event(mode: Mode, n: usize) -> Event {
    let event =
        Event::new("OrderPlaced", "bench", json!({ "order": n, "total": 42 })).with_id(format!("order-{n}"));
    match mode {
        Mode::NatsOrdered => event.with_subject(format!("customer-{}", n % KEYS)),
        _ => event,
    }
}

/// Publishes `mode`'s events through `bus` from [`PUBLISHERS`] tasks; returns when every
/// batch is accepted.
async fn publish(bus: &AsyncEventBus, mode: Mode) {
    let per_publisher = mode.events() / PUBLISHERS;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for start in (0..per_publisher).step_by(BATCH) {
                    let batch = (start..(start + BATCH).min(per_publisher))
                        .map(|i| event(mode, p * per_publisher + i))
                        .collect();
                    bus.publish_batch(batch).await.expect("publish");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("a publisher panicked");
    }
}

/// Waits until the stream `name` holds no event: each was acknowledged by every consumer.
/// Says what the stream and its consumers hold if that stops changing for ten seconds.
async fn drained(js: &async_nats::jetstream::Context, name: &str) {
    let mut stream = js.get_stream(name).await.expect("the bench's stream");
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let messages = stream.info().await.expect("the stream's state").state.messages;
        if messages == 0 {
            return;
        }
        if messages != last {
            (last, since) = (messages, Instant::now());
        } else if since.elapsed() > Duration::from_secs(10) {
            let mut consumers = stream.consumers();
            while let Some(Ok(info)) = futures::StreamExt::next(&mut consumers).await {
                eprintln!(
                    "stuck at {messages} events in {name}: consumer {} delivered {} ack floor {} pending {} unacknowledged {} waiting pulls {}",
                    info.name,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence,
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_waiting
                );
            }
            since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One run's figures.
struct Run {
    per_s: f64,
    accepted_per_s: f64,
    /// Events each host handled.
    handled: Vec<u64>,
    /// The lookups' times, when timed.
    lookups: Option<serde_json::Value>,
}

/// Milliseconds since `started`.
fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// Times the lookups against the history of `stream`, once it holds all `events`.
async fn time_lookups(
    js: &async_nats::jetstream::Context,
    stream: &str,
    store: &NatsStore,
    events: usize,
) -> serde_json::Value {
    let mut history = js
        .get_stream(format!("{stream}_HISTORY"))
        .await
        .expect("the history");
    while history.info().await.expect("the history's state").state.messages < events as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut find = Vec::new();
    for i in 0..20 {
        let id = format!("order-{}", i * (events / 20) + 7);
        let started = Instant::now();
        let found = store.find(&id, None).await.expect("a lookup");
        find.push(ms(started));
        assert_eq!(found.len(), 1, "{id} found once");
    }
    let mut trace = Vec::new();
    for i in 0..5 {
        // As `GET /events/{id}/trace` does: the event first, then its correlation.
        let id = format!("order-{}", i * 1000 + 3);
        let started = Instant::now();
        assert_eq!(store.find(&id, None).await.expect("a lookup").len(), 1);
        let found = store.correlated(&id, 10_000).await.expect("a trace");
        trace.push(ms(started));
        assert_eq!(found.len(), 1, "a trace of one event");
    }
    let mut newest = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let page = store
            .page(EventQuery {
                limit: 50,
                ..EventQuery::default()
            })
            .await
            .expect("a page");
        newest.push(ms(started));
        assert_eq!(page.len(), 50);
    }
    let started = Instant::now();
    let none = store
        .page(EventQuery {
            event_type: Some("Nothing".to_owned()),
            limit: 50,
            ..EventQuery::default()
        })
        .await
        .expect("a page");
    let miss = ms(started);
    assert!(none.is_empty());
    let max = |times: &[f64]| times.iter().copied().fold(0.0, f64::max);
    json!({
        "history_events": events,
        "find_ms_median": (median(find.clone()) * 10.0).round() / 10.0,
        "find_ms_max": (max(&find) * 10.0).round() / 10.0,
        "trace_ms_median": (median(trace) * 10.0).round() / 10.0,
        "newest_page_50_ms_median": (median(newest) * 10.0).round() / 10.0,
        "type_filter_matching_nothing_ms": miss.round(),
    })
}

async fn run(mode: Mode, run: usize, runtime: &Arc<Runtime>, wasm: &[u8], server: &NatsServer) -> Run {
    let events = mode.events();
    if mode == Mode::Embedded {
        let fresh = Fresh::new("bench-nats");
        let bus = AsyncEventBus::with_storage(Config::default().bus_config(), fresh.store.storage());
        let host = Host::subscribe(runtime, wasm, bus, false, None).await;
        let started = Instant::now();
        publish(&host.bus, mode).await;
        let accepted = started.elapsed();
        host.bus.wait().await;
        let elapsed = started.elapsed();
        let handled = host.stop().await;
        fresh.store.close().await;
        return Run {
            per_s: events as f64 / elapsed.as_secs_f64(),
            accepted_per_s: events as f64 / accepted.as_secs_f64(),
            handled: vec![handled],
            lookups: None,
        };
    }
    let stream = format!("BENCH_{}_{run}", mode.name().to_uppercase());
    let history = mode != Mode::Nats1pNoHistory;
    let host = Host::nats(
        runtime,
        wasm,
        &server.url,
        &stream,
        mode == Mode::NatsOrdered,
        history,
    )
    .await;
    let second = (mode == Mode::Nats2p).then(|| SecondHost::start(&server.url, &stream));
    let client = async_nats::connect(&server.url)
        .await
        .expect("connecting to NATS");
    let js = async_nats::jetstream::new(client);
    let started = Instant::now();
    publish(&host.bus, mode).await;
    let accepted = started.elapsed();
    drained(&js, &stream).await;
    let elapsed = started.elapsed();
    let lookups = match (mode, &host.nats) {
        (Mode::Nats1p, Some(store)) => Some(time_lookups(&js, &stream, store, events).await),
        _ => None,
    };
    let mut handled = vec![host.stop().await];
    handled.extend(second.map(SecondHost::stop));
    for name in [stream.clone(), format!("{stream}_DLQ")] {
        js.delete_stream(&name)
            .await
            .expect("removing the bench's stream");
    }
    if history {
        js.delete_stream(format!("{stream}_HISTORY"))
            .await
            .expect("removing the bench's history");
    }
    Run {
        per_s: events as f64 / elapsed.as_secs_f64(),
        accepted_per_s: events as f64 / accepted.as_secs_f64(),
        handled,
        lookups,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, url, stream] = args.as_slice()
        && flag == "--host"
    {
        return second_host(url, stream).await;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = common::build_test_plugins(&["noop"]).join("noop.wasm");
    assert_eq!(path, plugin_path(), "where the second host finds the plugin");
    let wasm = std::fs::read(&path).expect("reading the noop plugin");
    let runtime = Runtime::new(RuntimeConfig::default()).expect("creating the runtime");
    let server = NatsServer::start();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let modes = [
        Mode::Nats1p,
        Mode::Nats1pNoHistory,
        Mode::Nats2p,
        Mode::NatsOrdered,
        Mode::Embedded,
    ];
    eprintln!(
        "{EVENTS} events per run ({ORDERED_EVENTS} ordered) from {PUBLISHERS} publishers in batches of {BATCH}, \
         {RUNS} runs, {threads} threads, nats-server at {}",
        server.url
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut lookups = Vec::new();
    // Interleaved so that a noisy moment hurts every mode alike.
    for n in 0..RUNS {
        for (mode, rates) in modes.iter().zip(&mut rates) {
            let result = run(*mode, n, &runtime, &wasm, &server).await;
            let total: u64 = result.handled.iter().sum();
            assert_eq!(
                total,
                mode.events() as u64,
                "{}: every event handled once",
                mode.name()
            );
            println!(
                "{}",
                json!({
                    "mode": mode.name(),
                    "events_per_s": result.per_s.round(),
                    "accepted_per_s": result.accepted_per_s.round(),
                    "handled_per_host": result.handled,
                    "lookups": result.lookups,
                })
            );
            rates.push(result.per_s);
            lookups.extend(result.lookups);
        }
    }
    let mut out = json!({
        "events_per_run": EVENTS,
        "ordered_events_per_run": ORDERED_EVENTS,
        "ordered_keys": KEYS,
        "runs": RUNS,
        "threads": threads,
        "handler": "noop.wasm, fresh instance per event, 4 at once per host",
        "publish": format!("{PUBLISHERS} tasks, batches of {BATCH}"),
    });
    for (mode, rates) in modes.iter().zip(rates) {
        out[format!("{}_events_per_s", mode.name())] = json!(median(rates).round());
    }
    for figure in [
        "find_ms_median",
        "trace_ms_median",
        "newest_page_50_ms_median",
        "type_filter_matching_nothing_ms",
    ] {
        let values: Vec<f64> = lookups.iter().filter_map(|run| run[figure].as_f64()).collect();
        out[format!("lookup_{figure}")] = json!((median(values) * 10.0).round() / 10.0);
    }
    println!("{out}");
}
