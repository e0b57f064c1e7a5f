//! The real `evhost` binary, driven over HTTP with a real client.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::wasm;

/// Builds the binary once per test run (a no-op when it is up to date).
pub fn evhost_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root)
            .args(["build", "-p", "evhost", "--bin", "evhost"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the evhost binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("debug/evhost")
    })
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("evhost-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `evhost run` with its log lines.
pub struct Running {
    child: Child,
    pub url: String,
    logs: Arc<Mutex<Vec<Value>>>,
    pub plugins: PathBuf,
    /// The folder `start` made for this run; `None` when the caller owns it (`start_in`).
    _dir: Option<TempDir>,
}

impl Running {
    /// Starts the host on a free port with `plugins` (name, built `.wasm`) copied into its
    /// plugins folder, and `manifests` (name, TOML text) written beside them.
    pub fn start(plugins: &[(&str, &str)], manifests: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("run");
        install(&dir.0, plugins, manifests);
        let mut running = Self::start_in(&dir.0);
        running._dir = Some(dir);
        running
    }

    /// Starts the host on a free port with the plugins folder `dir/plugins` and the data
    /// directory `dir/data` as they are, and leaves both behind: a host started again on
    /// the same `dir` continues from the same durable log.
    pub fn start_in(dir: &Path) -> Self {
        Self::start_in_with(dir, &[])
    }

    /// [`Running::start_in`] with more arguments for `evhost run`.
    pub fn start_in_with(dir: &Path, args: &[&str]) -> Self {
        let plugins_dir = dir.join("plugins");
        let mut child = Command::new(evhost_bin())
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--plugins",
            ])
            .arg(&plugins_dir)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting evhost");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "raw": line }));
                sink.lock().unwrap().push(value);
            }
        });
        let mut running = Self {
            child,
            url: String::new(),
            logs,
            plugins: plugins_dir,
            _dir: None,
        };
        let ready = running.wait_for_log(
            |line| line["message"] == "evhost is ready",
            Duration::from_secs(60),
        );
        running.url = format!("http://{}", ready["listen"].as_str().unwrap());
        running
    }

    /// Waits for a log line matching `pred` and returns it.
    pub fn wait_for_log(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.logs.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "evhost exited with {status}; log: {:#?}",
                    self.logs.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no such log line; log: {:#?}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "evhost did not exit in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fills `dir/plugins` for [`Running::start_in`]: `plugins` (name, built `.wasm`) copied in,
/// `manifests` (name, TOML text) written beside them.
pub fn install(dir: &Path, plugins: &[(&str, &str)], manifests: &[(&str, &str)]) {
    let plugins_dir = dir.join("plugins");
    std::fs::create_dir_all(&plugins_dir).unwrap();
    for (name, path) in plugins {
        std::fs::copy(path, plugins_dir.join(format!("{name}.wasm"))).unwrap();
    }
    for (name, text) in manifests {
        std::fs::write(plugins_dir.join(format!("{name}.toml")), text).unwrap();
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn kv(host: &Running, plugin: &str, key: &str) -> Option<Value> {
    let response = client()
        .get(format!("{}/plugins/{plugin}/kv/{key}", host.url))
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => {
            let bytes = response.bytes().await.unwrap();
            Some(
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
            )
        }
        404 => None,
        other => panic!("GET kv answered {other}"),
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// GETs `url` and parses the JSON answer.
pub async fn get_json(http: &reqwest::Client, url: String) -> Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// GETs `url` as text.
pub async fn get_text(http: &reqwest::Client, url: String) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Replaces `target` with a copy of `source` the way deployment tools do: written beside
/// it, then renamed over it.
fn replace_atomically(source: &str, target: &Path) {
    let name = target.file_name().unwrap().to_string_lossy();
    let staging = target.with_file_name(format!(".{name}.tmp"));
    std::fs::copy(source, &staging).unwrap();
    std::fs::rename(&staging, target).unwrap();
}

/// POSTs `body` to `url` + `path` with the content type, expecting an answer.
pub async fn post_events(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    http.post(format!("{url}{path}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

pub fn structured(ty: &str, id: &str, subject: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "tests", "type": ty, "subject": subject, "data": data})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_in_all_three_modes_and_reads_the_projection() {
    let host = Running::start(&[("user-projection", wasm::USER_PROJECTION)], &[]);
    let http = client();
    // Structured mode.
    let response = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents+json",
        structured(
            "UserCreated",
            "e1",
            "u1",
            json!({"id": "u1", "name": "Ada", "email": "ada@example.com"}),
        )
        .to_string(),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["accepted"], json!(["e1"]));
    // Batch mode.
    let batch = json!([
        structured("UserProfileUpdated", "e2", "u1", json!({"name": "Ada Lovelace"})),
        structured(
            "UserCreated",
            "e3",
            "u2",
            json!({"id": "u2", "name": "Alan", "email": "a@t.uk"})
        ),
    ]);
    let response = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents-batch+json",
        batch.to_string(),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.json::<Value>().await.unwrap()["accepted"],
        json!(["e2", "e3"])
    );
    // Binary mode, waiting for the handlers.
    let response = http
        .post(format!("{}/events?wait=true", host.url))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "e4")
        .header("ce-source", "tests")
        .header("ce-type", "UserContactUpdated")
        .header("ce-subject", "u1")
        .body(json!({"phone": "+44 1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body.to_string().contains("user-projection"), "{body}");

    assert!(
        eventually(Duration::from_secs(10), async || {
            kv(&host, "user-projection", "user:u1")
                .await
                .is_some_and(|u| u["phone"] == "+44 1")
        })
        .await
    );
    let user = kv(&host, "user-projection", "user:u1").await.unwrap();
    assert_eq!(user["name"], "Ada Lovelace");
    // e3 (u2) was accepted in an earlier request than e4 but runs under another key, so it
    // may still be in flight: wait for it rather than assume it.
    assert!(
        eventually(Duration::from_secs(10), async || {
            kv(&host, "user-projection", "user:u2")
                .await
                .is_some_and(|u| u["name"] == "Alan")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let host = Running::start(&[], &[]);
    let http = client();
    let post = |content_type: &'static str, body: String| {
        http.post(format!("{}/events", host.url))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = post("application/cloudevents+json", "{not json".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error = response.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("JSON"), "{error}");

    let missing = json!({"specversion": "1.0", "id": "x", "type": "T"});
    let response = post("application/cloudevents+json", missing.to_string())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error = response.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("`source`"), "{error}");

    let huge = format!("\"{}\"", "x".repeat(2 << 20));
    let response = post("application/json", huge).await.unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_come_and_go_with_their_files() {
    let host = Running::start(&[], &[]);
    let http = client();
    // Dropped in: served without a restart.
    std::fs::copy(wasm::HEALTHY, host.plugins.join("healthy.wasm")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let plugins: Value = get_json(&http, format!("{}/plugins", host.url)).await;
            plugins.as_array().unwrap().iter().any(|p| p["name"] == "healthy")
        })
        .await,
        "the new plugin was loaded"
    );
    let send = |id: String| {
        http.post(format!("{}/events", host.url))
            .header("content-type", "application/cloudevents+json")
            .body(structured("Ping", &id, "k", json!({})).to_string())
            .send()
    };
    assert_eq!(send("first".into()).await.unwrap().status(), 202);
    assert!(
        eventually(Duration::from_secs(10), async || kv(
            &host,
            "healthy",
            "seen:first"
        )
        .await
        .is_some())
        .await
    );

    // A broken file is rejected; the loaded version keeps serving.
    std::fs::write(host.plugins.join("healthy.wasm"), b"\0asm\x01\0\0\0garbage").unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let errors: Value = get_json(&http, format!("{}/errors", host.url)).await;
            errors.to_string().contains("plugin-load")
        })
        .await,
        "the broken file is reported on the monitor"
    );
    assert_eq!(send("second".into()).await.unwrap().status(), 202);
    assert!(
        eventually(Duration::from_secs(10), async || kv(
            &host,
            "healthy",
            "seen:second"
        )
        .await
        .is_some())
        .await
    );

    // Removed: deliveries stop.
    std::fs::remove_file(host.plugins.join("healthy.wasm")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            let plugins: Value = get_json(&http, format!("{}/plugins", host.url)).await;
            plugins.as_array().unwrap().is_empty()
        })
        .await
    );
    let response = post_events(
        &http,
        &host.url,
        "/events?wait=true",
        "application/cloudevents+json",
        structured("Ping", "third", "k", json!({})).to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        report["events"][0]["outcomes"],
        json!([]),
        "no plugin got it: {report}"
    );
    let metrics = get_text(&http, format!("{}/metrics", host.url)).await;
    assert!(metrics.contains("evhost_events_accepted_total 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_sent() {
    let host = Running::start(
        &[
            ("healthy", wasm::HEALTHY),
            ("returns-reject", wasm::RETURNS_REJECT),
        ],
        &[],
    );
    let http = client();
    let batch: Vec<Value> = (0..7)
        .map(|i| structured("Tick", &format!("m{i}"), "k", json!({})))
        .collect();
    let response = post_events(
        &http,
        &host.url,
        "/events?wait=true",
        "application/cloudevents-batch+json",
        Value::Array(batch).to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let text = get_text(&http, format!("{}/metrics", host.url)).await;
    let samples = parse_prometheus(&text);
    let value = |name: &str| -> f64 {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .1
    };
    assert_eq!(value("evhost_events_accepted_total"), 7.0);
    assert_eq!(
        value(r#"evhost_deliveries_total{plugin="healthy",outcome="ok"}"#),
        7.0
    );
    assert_eq!(
        value(r#"evhost_deliveries_total{plugin="returns-reject",outcome="reject"}"#),
        7.0
    );
    assert_eq!(
        value(r#"evhost_handler_duration_seconds_count{plugin="healthy"}"#),
        7.0
    );
    assert!(value(r#"evhost_fuel_consumed_total{plugin="healthy"}"#) > 0.0);
}

/// Every sample line as (name with labels, value); panics on a malformed line.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("malformed line {line:?}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let bare = name.split('{').next().unwrap();
            assert!(
                bare.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            (name.to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_events_and_refuses_new_ones() {
    // A plugin that takes 300 ms per event, one at a time.
    let manifest = "[limits]\ntimeout_ms = 300\nfuel = 9223372036854775807\nconcurrency = 1\n[retry]\nmax_attempts = 1\n";
    let mut host = Running::start(&[("slow", wasm::LOOP_FOREVER)], &[("slow", manifest)]);
    let http = client();
    let batch: Vec<Value> = (0..4)
        .map(|i| structured("Work", &format!("w{i}"), "k", json!({})))
        .collect();
    let response = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents-batch+json",
        Value::Array(batch).to_string(),
    )
    .await;
    assert_eq!(response.status(), 202);
    host.signal("TERM");
    host.wait_for_log(
        |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("shutting down"))
        },
        Duration::from_secs(10),
    );
    let refused = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents+json",
        structured("Work", "late", "k", json!({})).to_string(),
    )
    .await;
    assert_eq!(refused.status(), 503, "new events are refused while draining");
    assert_eq!(host.wait_exit(Duration::from_secs(30)), 0);
    let stopped = host.wait_for_log(|l| l["message"] == "stopped", Duration::from_secs(1));
    assert_eq!(stopped["abandoned"], 0);
    assert!(stopped["drained"].as_u64().unwrap() >= 1, "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_plugin_builds_and_is_served() {
    let work = TempDir::new("new");
    let status = Command::new(evhost_bin())
        .args(["new", "demo-handler", "--path"])
        .arg(&work.0)
        .status()
        .unwrap();
    assert!(status.success());
    let crate_dir = work.0.join("demo-handler");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&crate_dir)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(root.join("target/wasm-plugins"))
        .status()
        .unwrap();
    assert!(status.success(), "the scaffolded plugin builds as-is");
    let built = root.join("target/wasm-plugins/wasm32-wasip2/release/demo_handler.wasm");

    let host = Running::start(&[], &[]);
    std::fs::copy(&built, host.plugins.join("demo-handler.wasm")).unwrap();
    let http = client();
    assert!(
        eventually(Duration::from_secs(10), async || {
            get_json(&http, format!("{}/plugins", host.url))
                .await
                .as_array()
                .is_some_and(|plugins| plugins.iter().any(|p| p["name"] == "demo-handler"))
        })
        .await,
        "the scaffolded plugin is loaded"
    );
    let response = post_events(
        &http,
        &host.url,
        "/events?wait=true",
        "application/cloudevents+json",
        structured("Hello", "h1", "k", json!({})).to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        kv(&host, "demo-handler", "seen:h1").await.is_some(),
        "the scaffolded plugin handled the event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_replaced_under_load_handles_every_event_exactly_once() {
    let host = Running::start(&[("healthy", wasm::HEALTHY)], &[]);
    let http = client();
    let publisher = {
        let (http, url) = (http.clone(), host.url.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::SeqCst) || n < 200 {
                let batch: Vec<Value> = (0..10)
                    .map(|i| {
                        structured(
                            "Tick",
                            &format!("t{}", n + i),
                            &format!("k{}", (n + i) % 7),
                            json!({}),
                        )
                    })
                    .collect();
                let response = http
                    .post(format!("{url}/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(Value::Array(batch).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                ids.extend((n..n + 10).map(|i| format!("t{i}")));
                n += 10;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ids
        });
        (stop, task)
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Replace the file the way deployment tools do: write beside it, then rename over it.
    replace_atomically(wasm::HEALTHY_V2, &host.plugins.join("healthy.wasm"));
    assert!(
        eventually(Duration::from_secs(20), async || {
            let plugins: Value = get_json(&http, format!("{}/plugins", host.url)).await;
            plugins[0]["version"] == "2.0.0"
        })
        .await,
        "the new version is served"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    publisher.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let ids = publisher.1.await.unwrap();

    let expected = ids.len() as f64;
    assert!(
        eventually(Duration::from_secs(30), async || {
            let text = get_text(&http, format!("{}/metrics", host.url)).await;
            parse_prometheus(&text).iter().any(|(name, value)| {
                name == r#"evhost_deliveries_total{plugin="healthy",outcome="ok"}"# && *value == expected
            })
        })
        .await,
        "every accepted event was handled"
    );
    let (mut old, mut new) = (0, 0);
    for id in &ids {
        let v1 = kv(&host, "healthy", &format!("seen:{id}")).await.is_some();
        let v2 = kv(&host, "healthy", &format!("seen-v2:{id}")).await.is_some();
        assert!(
            v1 ^ v2,
            "{id} handled exactly once by exactly one version (v1 {v1}, v2 {v2})"
        );
        if v1 { old += 1 } else { new += 1 }
    }
    assert!(old > 0 && new > 0, "both versions served: {old} old, {new} new");
}

/// Runs `evhost ARGS` with `stdin`, returning (exit code, stdout, stderr).
pub fn evhost(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(evhost_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_lists_and_checks() {
    let host = Running::start(&[("healthy", wasm::HEALTHY)], &[]);
    let url = host.url.as_str();

    let (code, out, err) = evhost(
        &[
            "publish",
            "--url",
            url,
            "--type",
            "Ping",
            "--source",
            "cli",
            "--id",
            "c1",
            "--data",
            r#"{"a": 1}"#,
            "--wait",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ok\": true"), "{out}");

    let ndjson = [
        structured("Ping", "n1", "k", json!({})).to_string(),
        structured("Ping", "n2", "k", json!({})).to_string(),
    ]
    .join("\n");
    let (code, out, err) = evhost(&["publish", "--url", url, "--file", "-"], &ndjson);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n1") && out.contains("n2"), "{out}");
    for id in ["c1", "n1", "n2"] {
        assert!(
            eventually(Duration::from_secs(10), async || kv(
                &host,
                "healthy",
                &format!("seen:{id}")
            )
            .await
            .is_some())
            .await,
            "{id} handled"
        );
    }

    let (code, out, _) = evhost(&["plugins", "list", "--url", url], "");
    assert_eq!(code, 0);
    assert!(out.starts_with("healthy  0.1.0  "), "{out}");

    let (code, out, err) = evhost(&["plugins", "check", wasm::HEALTHY], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name:          healthy"), "{out}");
    assert!(out.contains("wasi:keyvalue/store@0.2.0-draft"), "{out}");

    let (code, _, err) = evhost(&["plugins", "check", wasm::WRONG_WORLD], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("does not export `evhost:plugin/event-handler@0.1.0`"),
        "{err}"
    );

    let (code, _, err) = evhost(&["publish", "--url", url, "--type", "X", "--data", "{bad"], "");
    assert_eq!(code, 1);
    assert!(err.contains("--data is not valid JSON"), "{err}");

    let (code, _, err) = evhost(
        &["publish", "--url", url, "--file", "-"],
        "{\"specversion\": \"1.0\"}",
    );
    assert_eq!(code, 1);
    assert!(err.contains("event 1") && err.contains("`id`"), "{err}");
}

#[test]
fn a_bad_config_file_names_the_file_and_key_and_exits_non_zero() {
    let dir = TempDir::new("config");
    let file = dir.0.join("evhost.toml");
    std::fs::write(&file, "[bus]\ncapacity = \"lots\"\n").unwrap();
    let (code, _, err) = evhost(&["run", "--config", file.to_str().unwrap()], "");
    assert_eq!(code, 1);
    assert!(err.contains("evhost.toml") && err.contains("capacity"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let manifest = "[limits]\ntimeout_ms = 20000\nfuel = 9223372036854775807\nconcurrency = 1\n";
    let mut host = Running::start(&[("slow", wasm::LOOP_FOREVER)], &[("slow", manifest)]);
    let response = client()
        .post(format!("{}/events", host.url))
        .header("content-type", "application/cloudevents+json")
        .body(structured("Work", "w", "k", json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    host.signal("TERM");
    host.wait_for_log(
        |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("shutting down"))
        },
        Duration::from_secs(10),
    );
    let started = Instant::now();
    host.signal("INT");
    assert_eq!(host.wait_exit(Duration::from_secs(10)), 130);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "did not wait for the 20 s handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_to_a_fixed_version() {
    let manifest = "[retry]\nmax_attempts = 3\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\n";
    let host = Running::start(
        &[("returns-retry", wasm::RETURNS_RETRY)],
        &[("returns-retry", manifest)],
    );
    let http = client();
    let batch: Vec<Value> = (0..3)
        .map(|i| structured("Order", &format!("d{i}"), &format!("k{i}"), json!({})))
        .collect();
    let response = post_events(
        &http,
        &host.url,
        "/events?wait=true",
        "application/cloudevents-batch+json",
        Value::Array(batch).to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let letters: Value = get_json(&http, format!("{}/dlq", host.url)).await;
    let letters = letters.as_array().unwrap().clone();
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter["subscription"], "returns-retry");
        let attempts: Vec<u64> = letter["failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 2, 3], "the whole history: {letter}");
    }

    let (code, out, err) = evhost(&["dlq", "list", "--url", &host.url], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("3 attempts  retry: downstream unavailable"), "{out}");
    let first = letters[0]["id"].as_u64().unwrap();
    let (code, out, _) = evhost(&["dlq", "show", &first.to_string(), "--url", &host.url], "");
    assert_eq!(code, 0);
    assert!(out.contains("\"failures\""), "{out}");

    // Fix the plugin by swapping in a new version, then drain the queue.
    replace_atomically(
        wasm::RETURNS_RETRY_FIXED,
        &host.plugins.join("returns-retry.wasm"),
    );
    assert!(
        eventually(Duration::from_secs(20), async || {
            let plugins: Value = get_json(&http, format!("{}/plugins", host.url)).await;
            plugins[0]["version"] == "2.0.0"
        })
        .await
    );
    let (code, out, err) = evhost(&["dlq", "replay", "--all", "--url", &host.url], "");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "replayed 3");
    for i in 0..3 {
        assert!(
            eventually(Duration::from_secs(10), async || kv(
                &host,
                "returns-retry",
                &format!("handled:d{i}")
            )
            .await
            .is_some())
            .await,
            "d{i} was handled by the fixed version"
        );
    }
    let (code, out, _) = evhost(&["dlq", "list", "--url", &host.url], "");
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "the dead-letter queue is empty");

    let response = http.delete(format!("{}/dlq", host.url)).send().await.unwrap();
    assert_eq!(response.status(), 400, "purging everything must be explicit");
}
