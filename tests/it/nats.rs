//! Several `evhost run --nats` processes on one NATS JetStream server, each test on a
//! `nats-server` of its own (a free port, its own store directory) so it can be killed
//! and restarted without touching anyone else's.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Running, TempDir};
use crate::wasm;

/// A `nats-server` with JetStream, killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _store: TempDir,
}

impl NatsServer {
    fn start() -> Self {
        let store = TempDir::new("nats");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Self::spawn(port, &store.0);
        Self {
            child,
            port,
            _store: store,
        }
    }

    /// `nats-server` on `port` with its store in `dir`, once it listens.
    fn spawn(port: u16, dir: &Path) -> Child {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server (is it installed? .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// `kill -9` of the server.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The server again, on the same port and store directory.
    fn restart(&mut self) {
        self.child = Self::spawn(self.port, &self._store.0);
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two hosts' directories, `{label}-a` and `{label}-b`, each with `plugins` installed
/// (and `manifests`).
fn two_dirs(label: &str, plugins: &[(&str, &str)], manifests: &[(&str, &str)]) -> (TempDir, TempDir) {
    let dirs = (
        TempDir::new(&format!("{label}-a")),
        TempDir::new(&format!("{label}-b")),
    );
    for dir in [&dirs.0, &dirs.1] {
        support::install(&dir.0, plugins, manifests);
    }
    dirs
}

/// `evhost run --nats URL` over `dir/plugins`, with `args` added.
fn start_host(dir: &Path, nats: &NatsServer, args: &[&str]) -> Running {
    let mut all = vec!["--nats", &*Box::leak(nats.url().into_boxed_str())];
    all.extend_from_slice(args);
    Running::start_in_with(dir, &all)
}

/// The value of the Prometheus sample `name` (with its labels) at `host`, 0 if absent.
async fn metric(http: &reqwest::Client, host: &Running, name: &str) -> f64 {
    let text = support::get_text(http, format!("{}/metrics", host.url)).await;
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(sample, _)| *sample == name)
        .map_or(0.0, |(_, value)| value.parse().unwrap())
}

/// Publishes `count` events with ids `{prefix}-{i}` through `host`, in batches of 100.
async fn publish(http: &reqwest::Client, host: &Running, prefix: &str, range: std::ops::Range<usize>) {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|i| {
                support::structured(
                    "OrderPlaced",
                    &format!("{prefix}-{i}"),
                    &format!("order-{i}"),
                    json!({ "n": i }),
                )
            })
            .collect();
        let response = support::post_events(
            http,
            &host.url,
            "/events",
            "application/cloudevents-batch+json",
            serde_json::to_string(&batch).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_share_a_plugins_deliveries_and_each_event_is_handled_once() {
    let nats = NatsServer::start();
    let (a_dir, b_dir) = two_dirs("nats", &[("recorder", wasm::RECORDER)], &[]);
    let a = start_host(&a_dir.0, &nats, &[]);
    let b = start_host(&b_dir.0, &nats, &[]);
    let http = support::client();
    const N: usize = 2_000;
    publish(&http, &a, "ev", 0..N / 2).await;
    publish(&http, &b, "ev", N / 2..N).await;

    let handled = r#"evhost_deliveries_total{plugin="recorder",outcome="ok"}"#;
    let done = support::eventually(Duration::from_secs(60), async || {
        metric(&http, &a, handled).await + metric(&http, &b, handled).await >= N as f64
    })
    .await;
    let (by_a, by_b) = (metric(&http, &a, handled).await, metric(&http, &b, handled).await);
    assert!(done, "handled {by_a} + {by_b} of {N}");
    assert_eq!(by_a + by_b, N as f64, "no event handled twice");
    for share in [by_a, by_b] {
        assert!(
            share >= 0.2 * N as f64,
            "each host does a fair share: {by_a} and {by_b}"
        );
    }
    // The plugin's data is one store both hosts read and write.
    for i in (0..N).step_by(97) {
        let key = format!("seen:ev-{i}");
        assert_eq!(
            support::kv(&a, "recorder", &key).await,
            Some(json!(1)),
            "{key} on a"
        );
        assert_eq!(
            support::kv(&b, "recorder", &key).await,
            Some(json!(1)),
            "{key} on b"
        );
    }

    // Publishing an accepted event again, through either host, is a duplicate.
    let again = support::structured("OrderPlaced", "ev-7", "order-7", json!({ "n": 7 }));
    let response = support::post_events(
        &http,
        &b.url,
        "/events",
        "application/cloudevents+json",
        again.to_string(),
    )
    .await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["duplicates"], json!(["ev-7"]), "{answer}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(support::kv(&a, "recorder", "seen:ev-7").await, Some(json!(1)));
    assert_eq!(
        metric(&http, &a, handled).await + metric(&http, &b, handled).await,
        N as f64,
        "the duplicate was not handled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_made_with_other_settings_refuses_the_start_naming_them() {
    let nats = NatsServer::start();
    let dir = TempDir::new("nats-mismatch");
    support::install(&dir.0, &[], &[]);
    drop(start_host(&dir.0, &nats, &[]));
    let output = support::run_command(&dir.0, &["--nats", &nats.url(), "--set", "nats.partitions=4"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the JetStream stream EVHOST does not have the settings evhost needs")
            && stderr.contains("16 partitions")
            && stderr.contains("4 partitions"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compression_on_a_server_older_than_2_10_refuses_the_start_naming_the_version() {
    let nats = NatsServer::start();
    let dir = TempDir::new("nats-compression");
    support::install(&dir.0, &[], &[]);
    let output = support::run_command(&dir.0, &["--nats", &nats.url(), "--set", "nats.compression=s2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`[nats] compression = \"s2\"` needs nats-server 2.10 or newer")
            && stderr.contains("is version \"2.9."),
        "{stderr}"
    );
    // Nothing was made on the server: the stream can still be made with other settings.
    drop(start_host(&dir.0, &nats, &["--set", "nats.partitions=4"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_whose_timeout_outlasts_a_quarter_of_the_ack_wait_is_refused() {
    let nats = NatsServer::start();
    let dir = TempDir::new("nats-timeout");
    support::install(
        &dir.0,
        &[("recorder", wasm::RECORDER), ("healthy", wasm::HEALTHY)],
        &[("healthy", "[limits]\ntimeout = \"3s\"\n")],
    );
    // An ack wait of 9 s: 2 s (the default here) passes, 3 s does not.
    let host = start_host(&dir.0, &nats, &QUICK_REDELIVERY);
    let http = support::client();
    let errors = support::get_json(&http, format!("{}/errors", host.url)).await;
    let refused = errors
        .as_array()
        .unwrap()
        .iter()
        .find(|error| error["kind"] == "plugin-load")
        .unwrap_or_else(|| panic!("the plugin is refused: {errors}"));
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("healthy")
            && message.contains("its timeout (3s) is too long for the shared log's ack wait (9s)"),
        "{message}"
    );
    let plugins = support::get_json(&http, format!("{}/plugins", host.url)).await;
    let names: Vec<&str> = plugins
        .as_array()
        .unwrap()
        .iter()
        .map(|plugin| plugin["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["recorder"]);
}

/// The failures `host` reported for `event_id`, oldest first.
async fn failures(http: &reqwest::Client, host: &Running, event_id: &str) -> Vec<Value> {
    let errors = support::get_json(http, format!("{}/errors", host.url)).await;
    errors
        .as_array()
        .unwrap_or_else(|| panic!("GET /errors: {errors}"))
        .iter()
        .filter(|record| record["event_id"] == event_id)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_wait_the_policys_delays_then_dead_letter_and_a_replay_reaches_only_that_plugin() {
    let nats = NatsServer::start();
    let retry = r#"
        [retry]
        max_attempts = 3
        initial_backoff = "800ms"
        multiplier = 2.0
        jitter = 0.0
    "#;
    let (a_dir, b_dir) = two_dirs(
        "nats-retry",
        &[
            ("returns-retry", wasm::RETURNS_RETRY),
            ("recorder", wasm::RECORDER),
        ],
        &[("returns-retry", retry)],
    );
    let a = start_host(&a_dir.0, &nats, &[]);
    let b = start_host(&b_dir.0, &nats, &[]);
    let http = support::client();
    publish(&http, &a, "failing", 0..1).await;

    // Between attempts the lookup shows a retry with its stored failures (NATS does not
    // record when the next attempt comes, and says so).
    let retrying = json_once(&http, format!("{}/events/failing-0", b.url), |shown| {
        let retry = delivery_to(shown, "returns-retry");
        retry["state"] == "pending" && retry["attempt"].as_u64().is_some_and(|n| n >= 1)
    })
    .await;
    let retry = delivery_to(&retrying, "returns-retry");
    assert_eq!(retry["failures"], retry["attempt"], "{retrying:#}");
    assert_eq!(retry["last_failure"]["message"], "downstream unavailable");
    assert_eq!(retry["unknown"], json!(["not_before"]), "{retrying:#}");

    // Three attempts, on either host, then the dead-letter queue.
    let mut attempts = Vec::new();
    let dead = support::eventually(Duration::from_secs(30), async || {
        let letters = support::get_json(&http, format!("{}/dlq", b.url)).await;
        letters.as_array().is_some_and(|letters| letters.len() == 1)
    })
    .await;
    assert!(dead, "dead-lettered after the last attempt");
    attempts.extend(failures(&http, &a, "failing-0").await);
    attempts.extend(failures(&http, &b, "failing-0").await);
    attempts.sort_by_key(|record| record["attempt"].as_u64());
    let numbers: Vec<u64> = attempts.iter().map(|r| r["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3], "{attempts:?}");
    let times: Vec<chrono::DateTime<chrono::Utc>> = attempts
        .iter()
        .map(|r| r["time"].as_str().unwrap().parse().unwrap())
        .collect();
    for (gap, wanted) in times.windows(2).zip([800, 1_600]) {
        let gap = (gap[1] - gap[0]).num_milliseconds();
        assert!(
            (wanted..wanted + 700).contains(&gap),
            "a retry came {gap} ms after the failure; the policy says {wanted} ms"
        );
    }
    let letters = support::get_json(&http, format!("{}/dlq", a.url)).await;
    let letter = &letters[0];
    assert_eq!(letter["subscription"], "returns-retry");
    assert_eq!(letter["event"]["id"], "failing-0");
    assert_eq!(letter["failures"].as_array().unwrap().len(), 3, "{letter}");
    assert_eq!(
        support::kv(&a, "recorder", "seen:failing-0").await,
        Some(json!(1))
    );

    // A replay goes to returns-retry alone: three more attempts, the history kept.
    let response = http
        .post(format!("{}/dlq/replay?all=true&plugin=returns-retry", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let again = support::eventually(Duration::from_secs(30), async || {
        let letters = support::get_json(&http, format!("{}/dlq", a.url)).await;
        letters[0]["failures"].as_array().is_some_and(|f| f.len() == 6)
    })
    .await;
    assert!(
        again,
        "replayed, failed three times more and dead-lettered with the history kept"
    );
    assert_eq!(
        support::kv(&b, "recorder", "seen:failing-0").await,
        Some(json!(1)),
        "the replay did not reach the other plugin"
    );
}

/// Every `seen:{prefix}-{i}` of the recorder at `host`, for `i` in `range`: how many
/// times each event was applied.
async fn seen_counts(
    host: &Running,
    prefix: &str,
    range: std::ops::Range<usize>,
) -> Vec<(usize, Option<Value>)> {
    use futures::StreamExt as _;
    futures::stream::iter(range)
        .map(|i| async move {
            (
                i,
                support::kv(host, "recorder", &format!("seen:{prefix}-{i}")).await,
            )
        })
        .buffered(32)
        .collect()
        .await
}

/// Whether the recorder at `host` handles `n` events within a minute.
async fn recorded_at_least(http: &reqwest::Client, host: &Running, n: u32) -> bool {
    let handled = r#"evhost_deliveries_total{plugin="recorder",outcome="ok"}"#;
    support::eventually(Duration::from_secs(60), async || {
        metric(http, host, handled).await >= f64::from(n)
    })
    .await
}

/// Waits up to `patience` until the recorder at `host` has applied each of the events
/// `{prefix}-0..n`, and asserts that it applied every one exactly once.
async fn assert_each_applied_once(host: &Running, prefix: &str, n: usize, patience: Duration) {
    let all_seen = support::eventually(patience, async || {
        seen_counts(host, prefix, 0..n)
            .await
            .iter()
            .all(|(_, seen)| seen.is_some())
    })
    .await;
    let counts = seen_counts(host, prefix, 0..n).await;
    let missing: Vec<usize> = counts
        .iter()
        .filter(|(_, seen)| seen.is_none())
        .map(|(i, _)| *i)
        .collect();
    let dead_letters = match all_seen {
        true => Value::Null,
        false => support::get_json(&support::client(), format!("{}/dlq", host.url)).await,
    };
    assert!(
        all_seen,
        "{} accepted events never applied, e.g. {:?}; dead letters: {dead_letters}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<&(usize, Option<Value>)> = counts
        .iter()
        .filter(|(_, seen)| *seen != Some(json!(1)))
        .collect();
    assert!(
        twice.is_empty(),
        "applied more than once: {:?}",
        &twice[..twice.len().min(10)]
    );
}

/// Quick redelivery: what a killed host held goes to the others after 9 s. The plugins'
/// timeout (the ack wait must outlast 4 of them) still leaves a loaded machine room to
/// run them.
const QUICK_REDELIVERY: [&str; 4] = ["--set", "nats.ack_wait=9s", "--set", "plugins.limits.timeout=2s"];

#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_mid_stream_leaves_its_deliveries_to_the_other_and_no_effect_applies_twice() {
    let nats = NatsServer::start();
    let (a_dir, b_dir) = two_dirs("nats-kill", &[("recorder", wasm::RECORDER)], &[]);
    let a = start_host(&a_dir.0, &nats, &QUICK_REDELIVERY);
    let b = start_host(&b_dir.0, &nats, &QUICK_REDELIVERY);
    let http = support::client();
    // Publish until b takes part (how soon it does depends on the machine's load, so no
    // fixed amount is sure to reach it), then a stream more, and kill b in the middle of it.
    const CHUNK: usize = 500;
    let handled_by_b = r#"evhost_deliveries_total{plugin="recorder",outcome="ok"}"#;
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while metric(&http, &b, handled_by_b).await < 200.0 {
        assert!(
            Instant::now() < deadline,
            "b takes part before it is killed ({published} events published to a)"
        );
        publish(&http, &a, "ev", published..published + CHUNK).await;
        published += CHUNK;
    }
    publish(&http, &a, "ev", published..published + 2 * CHUNK).await;
    published += 2 * CHUNK;
    b.signal("KILL");

    assert_each_applied_once(&a, "ev", published, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_the_handlers_in_flight_and_leaves_the_rest_to_the_other_host() {
    let nats = NatsServer::start();
    let (a_dir, b_dir) = two_dirs(
        "nats-term",
        &[("recorder", wasm::RECORDER)],
        &[("recorder", "[config]\nmillis = \"1000\"\n")],
    );
    // `a` takes up to 32 deliveries (4 at once, a second each) and has 2 s to drain.
    let mut flags = vec!["--set", "drain_timeout=2s"];
    flags.extend(QUICK_REDELIVERY);
    let mut a = start_host(&a_dir.0, &nats, &flags);
    let http = support::client();
    const N: usize = 30;
    publish(&http, &a, "ev", 0..N).await;
    assert!(
        recorded_at_least(&http, &a, 1).await,
        "a handles events before it is stopped"
    );
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(20)), 0, "a stops cleanly");
    let stopped = a
        .log_lines()
        .into_iter()
        .find(|line| line["message"] == "stopped")
        .expect("a logs its stop");
    assert!(
        stopped["drained"].as_u64().unwrap() >= 1,
        "the handlers in flight finished: {stopped}"
    );
    assert!(
        stopped["abandoned"].as_u64().unwrap() >= 1,
        "a had more than it could drain: {stopped}"
    );

    // What `a` took and did not finish reaches `b` after the ack wait; what `a` finished
    // is not handled again.
    let b = start_host(&b_dir.0, &nats, &flags);
    assert_each_applied_once(&b, "ev", N, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ordered_plugin_on_two_hosts_sees_each_keys_events_in_publish_order() {
    let nats = NatsServer::start();
    let (a_dir, b_dir) = two_dirs(
        "nats-order",
        &[("sequence", wasm::SEQUENCE)],
        &[("sequence", "ordered = true\n[limits]\nconcurrency = 8\n")],
    );
    let a = start_host(&a_dir.0, &nats, &[]);
    let b = start_host(&b_dir.0, &nats, &[]);
    let http = support::client();
    const KEYS: usize = 40;
    const PER_KEY: usize = 30;
    // Event i is the (i / KEYS)th of key i % KEYS; batches go alternately to each host,
    // one after the other, so publish order is i.
    let events: Vec<Value> = (0..KEYS * PER_KEY)
        .map(|i| {
            support::structured(
                "Step",
                &format!("step-{i}"),
                &format!("key-{}", i % KEYS),
                json!({ "n": i / KEYS }),
            )
        })
        .collect();
    for (index, batch) in events.chunks(50).enumerate() {
        let host = if index % 2 == 0 { &a } else { &b };
        let response = support::post_events(
            &http,
            &host.url,
            "/events",
            "application/cloudevents-batch+json",
            serde_json::to_string(batch).unwrap(),
        )
        .await;
        assert_eq!(response.status(), 202);
    }
    let expected: String = (0..PER_KEY).map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let lists = async || {
        let mut lists = Vec::new();
        for key in 0..KEYS {
            let list = support::kv(&a, "sequence", &format!("seq:key-{key}")).await;
            lists.push(
                list.and_then(|v| v.as_str().map(str::to_owned).or(Some(v.to_string())))
                    .unwrap_or_default(),
            );
        }
        lists
    };
    let complete = support::eventually(Duration::from_secs(90), async || {
        lists()
            .await
            .iter()
            .all(|list| list.split(',').count() == PER_KEY)
    })
    .await;
    let lists = lists().await;
    assert!(complete, "not every event was handled: {lists:?}");
    let out_of_order: Vec<&String> = lists.iter().filter(|list| **list != expected).collect();
    assert!(
        out_of_order.is_empty(),
        "{} keys out of order, e.g. {:?}",
        out_of_order.len(),
        out_of_order.first()
    );
    let handled = r#"evhost_deliveries_total{plugin="sequence",outcome="ok"}"#;
    let (by_a, by_b) = (metric(&http, &a, handled).await, metric(&http, &b, handled).await);
    assert_eq!(by_a + by_b, (KEYS * PER_KEY) as f64);
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both hosts took part: {by_a} and {by_b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_killed_and_restarted_mid_stream_loses_nothing_accepted_and_doubles_no_effect() {
    let mut nats = NatsServer::start();
    let (a_dir, b_dir) = two_dirs("nats-crash", &[("recorder", wasm::RECORDER)], &[]);
    let a = start_host(&a_dir.0, &nats, &QUICK_REDELIVERY);
    let b = start_host(&b_dir.0, &nats, &QUICK_REDELIVERY);
    let http = support::client();
    const N: usize = 3_000;
    const BATCH: usize = 50;
    let (mut refused, mut down) = (0, false);
    for (index, start) in (0..N).step_by(BATCH).enumerate() {
        if index == N / BATCH / 3 {
            nats.kill();
            down = true;
            let unready = support::eventually(Duration::from_secs(10), async || {
                let response = http.get(format!("{}/readyz", a.url)).send().await.unwrap();
                response.status() == 503
            })
            .await;
            assert!(unready, "/readyz answers 503 while the server is down");
        }
        // A publisher retries what was refused: the events it sends again are the same.
        let batch: Vec<Value> = (start..start + BATCH)
            .map(|i| {
                support::structured(
                    "OrderPlaced",
                    &format!("ev-{i}"),
                    &format!("order-{i}"),
                    json!({ "n": i }),
                )
            })
            .collect();
        let host = if index % 2 == 0 { &a } else { &b };
        loop {
            let response = support::post_events(
                &http,
                &host.url,
                "/events",
                "application/cloudevents-batch+json",
                serde_json::to_string(&batch).unwrap(),
            )
            .await;
            match response.status().as_u16() {
                202 => break,
                503 => {
                    refused += 1;
                    // Back after a few refusals, on the same store.
                    if down && refused >= 5 {
                        nats.restart();
                        down = false;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("publishing answered {other}: {}", response.text().await.unwrap()),
            }
        }
    }
    assert!(refused > 0, "publishes were refused while the server was down");

    assert_each_applied_once(&a, "ev", N, Duration::from_secs(120)).await;
    let ready = http.get(format!("{}/readyz", b.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once the server is back");
}

/// `GET url` once it answers 200 with JSON for which `ready` holds (the history copies
/// an event a moment after it is accepted, and deliveries end a moment later).
async fn json_once(http: &reqwest::Client, url: String, ready: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = support::eventually(Duration::from_secs(20), async || {
        let response = http.get(&url).send().await.unwrap();
        if response.status() != 200 {
            return false;
        }
        last = response.json().await.unwrap();
        ready(&last)
    })
    .await;
    assert!(found, "GET {url} never answered as expected; last: {last:#}");
    last
}

/// The delivery of `stored` (an event as `GET /events/{id}` answers it) to `plugin`.
fn delivery_to<'a>(stored: &'a Value, plugin: &str) -> &'a Value {
    stored["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|delivery| delivery["subscription"] == plugin)
        .unwrap_or_else(|| panic!("no delivery to {plugin}: {stored:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn on_nats_events_are_looked_up_in_the_history_with_each_delivery_as_far_as_the_server_knows() {
    let nats = NatsServer::start();
    let dir = TempDir::new("nats-inspect");
    support::install(
        &dir.0,
        &[
            ("healthy", wasm::HEALTHY),
            ("returns-reject", wasm::RETURNS_REJECT),
            ("payment-saga", wasm::PAYMENT_SAGA),
        ],
        &[("returns-reject", "[config]\nreason = \"nope\"\n")],
    );
    let host = start_host(&dir.0, &nats, &[]);
    let http = support::client();
    let publish_one = async |event: Value| {
        let response = support::post_events(
            &http,
            &host.url,
            "/events",
            "application/cloudevents+json",
            event.to_string(),
        )
        .await;
        assert_eq!(response.status(), 202);
    };

    // A saga: the plugin emits a request, the inventory answers, the plugin emits the next.
    publish_one(
        json!({"specversion": "1.0", "id": "pay-1", "source": "payments", "type": "PaymentCreated",
        "subject": "p1", "data": {"payment_id": "p1", "order_id": "o1", "amount": 4200, "currency": "EUR",
        "items": [{"sku": "book", "quantity": 2}]}}),
    )
    .await;
    let requested = json_once(
        &http,
        format!("{}/events?type=InventoryReservationRequested", host.url),
        |page| page["events"].as_array().is_some_and(|events| events.len() == 1),
    )
    .await;
    let requested = &requested["events"][0];
    assert_eq!(requested["emitted_by"], "payment-saga", "{requested:#}");
    let requested_id = requested["event"]["id"].as_str().unwrap().to_owned();
    publish_one(
        json!({"specversion": "1.0", "id": "inv-1", "source": "payments", "type": "InventoryReserved",
        "subject": "p1", "correlationid": "pay-1", "causationid": requested_id,
        "data": {"payment_id": "p1", "reservation_id": "r1"}}),
    )
    .await;

    // One event: what the server knows of each delivery, and what it cannot say.
    // (`returns-reject`, subscribed to every type, dead-letters each event it gets.)
    let shown = json_once(&http, format!("{}/events/pay-1", host.url), |shown| {
        shown["deliveries"].as_array().is_some_and(|all| {
            all.len() == 3
                && all.iter().all(|d| {
                    d["state"]
                        == if d["subscription"] == "returns-reject" {
                            "dead-lettered"
                        } else {
                            "acknowledged"
                        }
                })
        })
    })
    .await;
    assert_eq!(shown["event"]["type"], "PaymentCreated");
    assert_eq!(shown["emitted_by"], Value::Null, "published, not emitted");
    let saga = delivery_to(&shown, "payment-saga");
    assert_eq!(
        saga["unknown"],
        json!(["at", "version", "failures", "last_failure"]),
        "{shown:#}"
    );
    assert!(
        saga.get("version").is_none(),
        "no blank where the log cannot answer: {shown:#}"
    );

    // The trace, asked from any event of the saga: each event under its cause.
    for from in ["inv-1", "pay-1"] {
        let trace = json_once(&http, format!("{}/events/{from}/trace", host.url), |trace| {
            trace["events"].as_array().is_some_and(|events| events.len() == 4)
        })
        .await;
        support::payment_saga_nodes(&trace);
    }

    // A dead letter: the delivery names it, with its failure; the other plugin handled it.
    // Only the plugins whose patterns take the type are listed: not the saga.
    publish_one(json!({"specversion": "1.0", "id": "e-1", "source": "tests", "type": "Ping"})).await;
    let shown = json_once(&http, format!("{}/events/e-1", host.url), |shown| {
        shown["deliveries"].as_array().is_some_and(|all| {
            all.iter().any(|d| d["state"] == "dead-lettered")
                && all.iter().any(|d| d["state"] == "acknowledged")
        })
    })
    .await;
    let names: Vec<&str> = shown["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["healthy", "returns-reject"], "{shown:#}");
    let rejected = delivery_to(&shown, "returns-reject");
    assert_eq!(rejected["failures"], 1);
    assert_eq!(rejected["last_failure"]["message"], "nope");
    let letter_of_e1 = async || {
        let letters = support::get_json(&http, format!("{}/dlq?plugin=returns-reject", host.url)).await;
        let of_e1: Vec<Value> = letters
            .as_array()
            .unwrap()
            .iter()
            .filter(|letter| letter["event"]["id"] == "e-1")
            .cloned()
            .collect();
        assert_eq!(of_e1.len(), 1, "{letters:#}");
        of_e1[0].clone()
    };
    let letter = letter_of_e1().await;
    assert_eq!(rejected["dead_letter_id"], letter["id"], "{letter:#}");
    assert_eq!(delivery_to(&shown, "healthy")["state"], "acknowledged");

    // Replayed, it fails again: the delivery follows the replay to its new letter.
    let replayed = http
        .post(format!("{}/dlq/replay", host.url))
        .header("content-type", "application/json")
        .body(json!({ "ids": [letter["id"]] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 200);
    let first_letter = letter["id"].clone();
    let shown = json_once(&http, format!("{}/events/e-1", host.url), |shown| {
        let rejected = delivery_to(shown, "returns-reject");
        rejected["state"] == "dead-lettered" && rejected["dead_letter_id"] != first_letter
    })
    .await;
    let letter = letter_of_e1().await;
    assert_eq!(
        delivery_to(&shown, "returns-reject")["dead_letter_id"],
        letter["id"]
    );
    assert_eq!(delivery_to(&shown, "returns-reject")["failures"], 2, "{shown:#}");

    // Pages, newest first; a type filter; the next page carries on.
    publish(&http, &host, "look", 0..5).await;
    let page = json_once(
        &http,
        format!("{}/events?type=OrderPlaced&limit=3", host.url),
        |page| {
            page["events"].as_array().is_some_and(|events| events.len() == 3)
                && page["events"][0]["event"]["id"] == "look-4"
        },
    )
    .await;
    let ids = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&page), ["look-4", "look-3", "look-2"]);
    let next = page["next"].as_str().unwrap();
    let rest = support::get_json(&http, format!("{}/events?{next}", host.url)).await;
    assert_eq!(ids(&rest), ["look-1", "look-0"]);
    let oldest = support::get_json(&http, format!("{}/events?after=0&limit=1", host.url)).await;
    assert_eq!(ids(&oldest), ["pay-1"]);

    // Unknown ids are named; the CLI prints the same reads.
    let response = http
        .get(format!("{}/events/nope", host.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (code, out, err) = support::evhost(&["events", "show", "e-1", "--url", &host.url], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("healthy: acknowledged"), "{out}");
    assert!(out.contains("not recorded: at, version"), "{out}");

    // A plugin added later: whether it received an earlier event, the server cannot say.
    support::install(&dir.0, &[("recorder", wasm::RECORDER)], &[]);
    // (Until its consumer is made, the log holds nothing of it: that is said too.)
    json_once(&http, format!("{}/events/pay-1", host.url), |shown| {
        shown["deliveries"].as_array().is_some_and(|all| {
            all.iter().any(|d| {
                d["subscription"] == "recorder"
                    && d["state"] == "unknown"
                    && d["reason"]
                        .as_str()
                        .is_some_and(|reason| reason.contains("after the event was published"))
            })
        })
    })
    .await;

    // A host that keeps no history says so, and how to keep one.
    let plain = TempDir::new("nats-no-history");
    std::fs::create_dir_all(plain.0.join("plugins")).unwrap();
    let without = start_host(&plain.0, &nats, &["--set", "nats.history=\"0s\""]);
    for path in ["/events/e-1", "/events/e-1/trace", "/events?limit=5"] {
        let response = http.get(format!("{}{path}", without.url)).send().await.unwrap();
        assert_eq!(response.status(), 501, "{path}");
        let body: Value = response.json().await.unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("history"), "{message}");
    }

    // A host keeping the history for longer changes the stream in place, and reads it.
    let longer = TempDir::new("nats-longer-history");
    std::fs::create_dir_all(longer.0.join("plugins")).unwrap();
    let longer = start_host(&longer.0, &nats, &["--set", "nats.history=\"2h\""]);
    let shown = support::get_json(&http, format!("{}/events/pay-1", longer.url)).await;
    assert_eq!(shown["event"]["type"], "PaymentCreated", "{shown:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_nats_the_other_operator_reads_answer() {
    let nats = NatsServer::start();
    let dir = TempDir::new("nats-reads");
    support::install(
        &dir.0,
        &[
            ("healthy", wasm::HEALTHY),
            ("recorder", wasm::RECORDER),
            ("returns-reject", wasm::RETURNS_REJECT),
        ],
        &[],
    );
    let host = start_host(&dir.0, &nats, &[]);
    let http = support::client();

    // The live stream carries samples and failures while events are published.
    let stream = http.get(format!("{}/stream", host.url)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let publisher = {
        let (http, url) = (http.clone(), host.url.clone());
        tokio::spawn(async move {
            for n in 0..3 {
                let event = support::structured("OrderPlaced", &format!("r-{n}"), "order", json!({ "n": n }));
                let response = support::post_events(
                    &http,
                    &url,
                    "/events",
                    "application/cloudevents+json",
                    event.to_string(),
                )
                .await;
                assert_eq!(response.status(), 202);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let (mut handled, mut failure) = (false, false);
    let seen = crate::inspect::read_events(stream, Duration::from_secs(20), |name, data| {
        handled |= name == "metrics" && data["plugins"]["recorder"]["handled"].as_u64() > Some(0);
        failure |= name == "failure" && data["subscription"] == "returns-reject";
        handled && failure
    })
    .await;
    assert!(
        seen.is_some(),
        "a sample with the recorder's work and a failure record"
    );
    publisher.await.unwrap();

    // The read model, a page at a time.
    let mut keys = Vec::new();
    let all = support::eventually(Duration::from_secs(20), async || {
        keys.clear();
        let mut url = format!("{}/plugins/recorder/kv?prefix=seen:&limit=2", host.url);
        loop {
            let page = support::get_json(&http, url).await;
            keys.extend(
                page["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|entry| entry["key"].as_str().unwrap().to_owned()),
            );
            match page["next_after"].as_str() {
                Some(after) => {
                    url = format!(
                        "{}/plugins/recorder/kv?prefix=seen:&limit=2&after={after}",
                        host.url
                    )
                }
                None => return keys.len() == 3,
            }
        }
    })
    .await;
    assert!(all, "{keys:?}");
    assert_eq!(keys, ["seen:r-0", "seen:r-1", "seen:r-2"]);

    // The dead-letter queue, a page at a time, and a replay preview.
    let letters = json_once(&http, format!("{}/dlq", host.url), |letters| {
        letters.as_array().is_some_and(|letters| letters.len() == 3)
    })
    .await;
    let first = support::get_json(&http, format!("{}/dlq?limit=2", host.url)).await;
    assert_eq!(first.as_array().unwrap().len(), 2);
    let rest = support::get_json(
        &http,
        format!("{}/dlq?limit=2&after={}", host.url, first[1]["id"]),
    )
    .await;
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["id"], letters[2]["id"], "{letters:#}");
    let preview = support::get_json(
        &http,
        format!("{}/dlq/preview?ids={}", host.url, letters[0]["id"]),
    )
    .await;
    assert_eq!(preview[0]["fixed_version_loaded"], false, "{preview:#}");
    assert_eq!(preview[0]["failed_version"], preview[0]["current_version"]);

    let history = support::get_json(&http, format!("{}/plugins/healthy/history", host.url)).await;
    assert_eq!(history["changes"][0]["change"], "loaded");
    let config = support::get_json(&http, format!("{}/config", host.url)).await;
    let nats_url = config["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "nats.url")
        .unwrap()
        .clone();
    assert_eq!(nats_url["value"], nats.url());
    assert_eq!(nats_url["source"], "flag");
    let mut sampled = false;
    for _ in 0..100 {
        let samples = support::get_json(&http, format!("{}/metrics/history", host.url)).await;
        if samples["samples"].as_array().is_some_and(|s| !s.is_empty()) {
            sampled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sampled, "the history fills on NATS too");
}
