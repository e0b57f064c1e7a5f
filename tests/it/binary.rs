//! The real `evhost` binary, driven over HTTP with a real client.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Running, TempDir, client, eventually, evhost, evhost_bin, get_json, get_text, install, kv, post_events,
    run_command, structured,
};
use crate::wasm;

/// Replaces `target` with a copy of `source` the way deployment tools do: written beside
/// it, then renamed over it.
fn replace_atomically(source: &str, target: &Path) {
    let name = target.file_name().unwrap().to_string_lossy();
    let staging = target.with_file_name(format!(".{name}.tmp"));
    std::fs::copy(source, &staging).unwrap();
    std::fs::rename(&staging, target).unwrap();
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
    // The acknowledgements commit in the background: read once they have.
    let settled = eventually(Duration::from_secs(10), async || {
        let text = get_text(&http, format!("{}/metrics", host.url)).await;
        parse_prometheus(&text).contains(&("evhost_store_pending_deliveries".to_owned(), 0.0))
    })
    .await;
    assert!(settled, "every delivery acknowledged");
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
    // The durable store's statistics: every write committed, in fewer or as many
    // transactions (one fsync each), each counted once in the group-size histogram.
    let writes = value("evhost_store_writes_total");
    let transactions = value("evhost_store_transactions_total");
    assert!(writes >= 8.0, "the append and the acknowledgements: {writes}");
    assert!(
        transactions >= 1.0 && transactions <= writes,
        "{transactions} of {writes}"
    );
    assert_eq!(value("evhost_store_group_size_count"), transactions);
    assert_eq!(value("evhost_store_group_size_sum"), writes);
    assert_eq!(
        value(r#"evhost_store_group_size_bucket{le="+Inf"}"#),
        transactions
    );
    assert_eq!(value("evhost_store_events"), 7.0);
    assert_eq!(value("evhost_store_pending_deliveries"), 0.0);
    assert_eq!(
        value(r#"evhost_http_requests_total{route="/events",method="POST",status="200"}"#),
        1.0
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text");
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
    let manifest = "[limits]\ntimeout = \"300ms\"\nfuel = 9223372036854775807\nconcurrency = 1\n[retry]\nmax_attempts = 1\n";
    let mut host = Running::start(
        &[("loop-forever", wasm::LOOP_FOREVER)],
        &[("loop-forever", manifest)],
    );
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

/// Waits until the host serves `plugin`, sends it one `Hello` event `h1` and checks that the
/// plugin stored `stored` under `seen:h1` (a scaffold stores the event's type).
async fn assert_serves_and_handles(host: &Running, plugin: &str, stored: Value) {
    let http = client();
    // Loading compiles the component: 10–15 s for a Python or JavaScript interpreter on an
    // idle machine, several times that beside the rest of the suite on two cores.
    assert!(
        eventually(Duration::from_secs(120), async || {
            get_json(&http, format!("{}/plugins", host.url))
                .await
                .as_array()
                .is_some_and(|plugins| plugins.iter().any(|p| p["name"] == plugin))
        })
        .await,
        "{plugin} is served"
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
    assert_eq!(
        kv(host, plugin, "seen:h1").await,
        Some(stored),
        "{plugin} handled the event"
    );
}

/// What `evhost new` printed: the plugin's folder and the commands to build and install it.
struct Scaffold {
    dir: std::path::PathBuf,
    build: String,
    test: Option<String>,
    install: String,
}

impl Scaffold {
    /// Runs `evhost new NAME --lang LANG --path WORK`.
    fn new(work: &Path, name: &str, lang: &str) -> Self {
        let output = Command::new(evhost_bin())
            .args(["new", name, "--lang", lang, "--path"])
            .arg(work)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = |label: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(label))
                .unwrap_or_else(|| panic!("no `{label}` line in {stdout:?}"))
                .trim()
                .to_owned()
        };
        Self {
            dir: work.join(name),
            build: line("build it:"),
            test: stdout
                .lines()
                .find_map(|line| line.strip_prefix("test it:"))
                .map(|line| line.trim().to_owned()),
            install: line("install it:"),
        }
    }

    /// Runs the printed test command as a user would, in the directory `evhost new` ran in.
    fn test(&self) {
        let test = self.test.as_deref().expect("a `test it:` line");
        let output = Command::new("sh")
            .arg("-c")
            .arg(test)
            .current_dir(self.dir.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the scaffold's tests pass as printed: `{test}`\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs the printed build command as a user would, in the directory `evhost new` ran
    /// in, with `path` put first on the `PATH`.
    fn build(&self, path: Option<&Path>) {
        let mut paths: Vec<std::path::PathBuf> = path.into_iter().map(Path::to_owned).collect();
        paths.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.build)
            .current_dir(self.dir.parent().unwrap())
            .env("PATH", std::env::join_paths(paths).unwrap());
        // The test's own cargo settings are not the user's.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" {
                command.env_remove(key.as_ref());
            }
        }
        let status = command.status().unwrap();
        assert!(
            status.success(),
            "the scaffold builds as printed: `{}`",
            self.build
        );
    }

    /// Runs the printed install command where the host was started, so its `plugins/` is
    /// the host's plugins folder.
    fn install(&self, host: &Running) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(&self.install)
            .current_dir(host.plugins.parent().unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "the plugin installs as printed: `{}`",
            self.install
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_python_plugin_builds_tests_and_installs_with_the_printed_commands() {
    let work = TempDir::new("new-python");
    let scaffold = Scaffold::new(&work.0, "py-demo", "python");
    // It depends on the SDK package, which it does not copy.
    assert!(!scaffold.dir.join("evhost").exists() && !scaffold.dir.join("wit").exists());
    let requirements = std::fs::read_to_string(scaffold.dir.join("requirements.txt")).unwrap();
    assert!(requirements.contains("componentize-py==0.25.1"), "{requirements}");
    assert!(requirements.contains("evhost @ file:///"), "{requirements}");
    // The build makes `.venv` and installs componentize-py and pytest into it (from pip's
    // cache, which the tests' own install of the same pins filled).
    scaffold.build(None);
    scaffold.test();

    let host = Running::start(&[], &[]);
    scaffold.install(&host);
    assert_serves_and_handles(&host, "py-demo", json!("Hello")).await;
}

/// The JavaScript toolchain pins of the tests, by package.
fn toolchain_pins() -> serde_json::Map<String, Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("js-toolchain/package.json");
    let manifest: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    manifest["dependencies"].as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_javascript_plugin_builds_tests_and_installs_with_the_printed_commands() {
    let work = TempDir::new("new-js");
    let scaffold = Scaffold::new(&work.0, "js-demo", "js");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(scaffold.dir.join("package.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["devDependencies"].as_object().unwrap(),
        &toolchain_pins(),
        "the scaffold pins the toolchain the tests build with"
    );
    assert!(
        manifest["dependencies"]["evhost"]
            .as_str()
            .unwrap()
            .starts_with("file:/"),
        "{manifest}"
    );
    // `npm install` fetches the pinned esbuild and componentize-js (from npm's cache,
    // which the tests' own install of the same pins filled).
    scaffold.build(None);
    scaffold.test();

    let host = Running::start(&[], &[]);
    scaffold.install(&host);
    assert_serves_and_handles(&host, "js-demo", json!("Hello")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_typescript_plugin_type_checks_builds_tests_and_installs_with_the_printed_commands() {
    let work = TempDir::new("new-ts");
    let scaffold = Scaffold::new(&work.0, "ts-demo", "ts");
    assert!(scaffold.dir.join("app.ts").exists() && scaffold.dir.join("tsconfig.json").exists());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(scaffold.dir.join("package.json")).unwrap()).unwrap();
    for (package, version) in toolchain_pins() {
        assert_eq!(manifest["devDependencies"][&package], version, "{package}");
    }
    scaffold.build(None);
    scaffold.test();
    // The build type-checks: a type error in the handler fails it, naming the line.
    let app = std::fs::read_to_string(scaffold.dir.join("app.ts")).unwrap();
    std::fs::write(
        scaffold.dir.join("app.ts"),
        app.replace("kv.setJson(`greeted:", "kv.set(42, `greeted:"),
    )
    .unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(&scaffold.build)
        .current_dir(&work.0)
        .output()
        .unwrap();
    assert!(!output.status.success(), "a type error fails the build");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("app.ts("),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    std::fs::write(scaffold.dir.join("app.ts"), app).unwrap();
    scaffold.build(None);

    let host = Running::start(&[], &[]);
    scaffold.install(&host);
    assert_serves_and_handles(&host, "ts-demo", json!("Hello")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaffolded_rust_plugin_builds_and_installs_with_the_printed_commands() {
    let work = TempDir::new("new");
    let scaffold = Scaffold::new(&work.0, "demo-handler", "rust");
    assert!(
        scaffold.build.starts_with("cargo build --manifest-path "),
        "{}",
        scaffold.build
    );
    // cargo writes `demo_handler.wasm`, which is installed as it is.
    assert!(
        scaffold.install.contains("/demo_handler.wasm plugins/"),
        "{}",
        scaffold.install
    );
    // The crate's target folder is the one the test plugins were built in, so the SDK's
    // dependencies are not compiled again.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::os::unix::fs::symlink(root.join("target/wasm-plugins"), scaffold.dir.join("target")).unwrap();
    scaffold.build(None);

    let host = Running::start(&[], &[]);
    scaffold.install(&host);
    assert_serves_and_handles(&host, "demo-handler", json!("Hello")).await;
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

    // Keys are arbitrary strings: the CLI encodes what a URL path would misread.
    let odd_ids = ["x?y", "a#b", "p%25q", "s/t", "sp ace", "ü"];
    let batch: Vec<Value> = odd_ids
        .iter()
        .map(|id| structured("Ping", id, "odd", json!({})))
        .collect();
    let (code, _, err) = evhost(
        &["publish", "--url", url, "--file", "-"],
        &Value::from(batch).to_string(),
    );
    assert_eq!(code, 0, "{err}");
    for id in odd_ids {
        let key = format!("seen:{id}");
        assert!(
            eventually(Duration::from_secs(10), async || evhost(
                &["plugins", "kv", "healthy", &key, "--url", url],
                ""
            )
            .0 == 0)
            .await,
            "`evhost plugins kv healthy {key}` finds the key"
        );
    }
    for missing in ["seen:x", "seen:a", "seen:p%q", "seen:s"] {
        let (code, _, err) = evhost(&["plugins", "kv", "healthy", missing, "--url", url], "");
        assert_eq!(code, 1, "{missing} is another key");
        assert!(err.contains("404"), "{err}");
    }

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

#[test]
fn a_nested_key_can_be_set_in_the_file_the_environment_or_a_flag() {
    let dir = TempDir::new("layers");
    install(&dir.0, &[], &[]);
    let file = dir.0.join("evhost.toml");
    std::fs::write(&file, "[plugins.limits]\ntimeout = \"2500ms\"\n").unwrap();
    let config = file.to_str().unwrap();
    // The start logs the effective settings in one line.
    let setting = |host: &mut Running, name: &str| -> String {
        let line = host.wait_for_log(|line| line["message"] == "settings", Duration::from_secs(5));
        line[name].as_str().unwrap().to_owned()
    };
    let timeout_of = |host: &mut Running| setting(host, "plugin_timeout");
    // The file.
    let mut host = Running::start_in_with(&dir.0, &["--config", config]);
    assert_eq!(timeout_of(&mut host), "2s 500ms");
    drop(host);
    // The environment wins over the file.
    let mut command = run_command(&dir.0, &["--config", config]);
    command.env("EVHOST_PLUGINS__LIMITS__TIMEOUT", "3500ms");
    let mut host = Running::spawn(command, &dir.0);
    assert_eq!(timeout_of(&mut host), "3s 500ms");
    drop(host);
    // A flag wins over both.
    let mut command = run_command(
        &dir.0,
        &["--config", config, "--set", "plugins.limits.timeout=4500ms"],
    );
    command.env("EVHOST_PLUGINS__LIMITS__TIMEOUT", "3500ms");
    let mut host = Running::spawn(command, &dir.0);
    assert_eq!(timeout_of(&mut host), "4s 500ms");
    drop(host);
    // A setting has one name, one unit: the key `drain_timeout`, its variable and its flag
    // all take a duration.
    std::fs::write(&file, "drain_timeout = \"9s\"\n").unwrap();
    let drain_timeout_of = |host: &mut Running| setting(host, "drain_timeout");
    let mut host = Running::start_in_with(&dir.0, &["--config", config]);
    assert_eq!(drain_timeout_of(&mut host), "9s");
    drop(host);
    let mut command = run_command(&dir.0, &["--config", config]);
    command.env("EVHOST_DRAIN_TIMEOUT", "1m 30s");
    let mut host = Running::spawn(command, &dir.0);
    assert_eq!(drain_timeout_of(&mut host), "1m 30s");
    drop(host);
    let mut host = Running::start_in_with(&dir.0, &["--config", config, "--drain-timeout", "250ms"]);
    assert_eq!(drain_timeout_of(&mut host), "250ms");
    drop(host);
    let output = run_command(&dir.0, &["--drain-timeout", "30"]).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'--drain-timeout <DRAIN_TIMEOUT>'") && err.contains("time unit needed"),
        "a number without a unit is refused: {err}"
    );
    // A key from before the rename names its new name.
    std::fs::write(&file, "drain_timeout_ms = 5000\n").unwrap();
    let output = run_command(&dir.0, &["--config", config]).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`drain_timeout_ms` was renamed: use `drain_timeout`, a duration such as \"30s\""),
        "{err}"
    );
    std::fs::write(&file, "[plugins.limits]\ntimeout = \"2500ms\"\n").unwrap();

    // A bad value is refused naming the key and where it came from.
    let mut command = run_command(&dir.0, &["--config", config]);
    command.env("EVHOST_BUS__CAPACITY", "0");
    let output = command.output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("EVHOST_BUS__CAPACITY: `bus.capacity`") && err.contains("nonzero"),
        "{err}"
    );
    let output = run_command(&dir.0, &["--config", config, "--set", "bus.capacity=lots"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--set bus.capacity") && err.contains("`bus.capacity`"),
        "{err}"
    );
    let output = run_command(&dir.0, &["--set", "bus.capacty=5"]).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("capacty"), "an unknown key is named: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let manifest = "[limits]\ntimeout = \"20s\"\nfuel = 9223372036854775807\nconcurrency = 1\n";
    let mut host = Running::start(
        &[("loop-forever", wasm::LOOP_FOREVER)],
        &[("loop-forever", manifest)],
    );
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
    let manifest = "[retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n";
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_that_runs_out_of_time_answers_504_with_what_it_knows() {
    let dir = TempDir::new("request-timeout");
    install(
        &dir.0,
        &[("healthy", wasm::HEALTHY), ("slow-calls", wasm::SLOW_CALLS)],
        &[("slow-calls", "[config]\nmillis = \"2500\"\n")],
    );
    let config = dir.0.join("evhost.toml");
    std::fs::write(&config, "request_timeout = \"600ms\"\n").unwrap();
    let host = Running::start_in_with(&dir.0, &["--config", config.to_str().unwrap()]);
    let http = client();

    // `slow` holds its subject's chain past the timeout; `next` waits behind it on the same
    // subject; `quick` (another subject) is handled at once.
    let batch = json!([
        structured("Attack", "slow", "s1", json!({})),
        structured("Attack", "next", "s1", json!({})),
        structured("Ping", "quick", "s2", json!({})),
    ]);
    let started = Instant::now();
    let response = post_events(
        &http,
        &host.url,
        "/events?wait=true",
        "application/cloudevents-batch+json",
        batch.to_string(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(took < Duration::from_millis(2_000), "answered after {took:?}");
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["accepted"], json!(["quick"]), "{report}");
    let events = report["events"].as_array().unwrap();
    assert_eq!(events[0]["id"], "slow");
    assert_eq!(events[0]["ok"], false);
    let unknown = events[0]["error"].as_str().unwrap();
    assert!(
        unknown.contains("still being published or handled") && unknown.contains("600 ms"),
        "{unknown}"
    );
    assert_eq!(events[1]["id"], "next");
    assert!(
        events[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("not published: the request timed out"),
        "{report}"
    );
    assert_eq!(events[2]["id"], "quick");
    assert_eq!(events[2]["ok"], true, "{report}");
    assert_eq!(events[2]["outcomes"][0]["plugin"], "healthy");

    // The event in progress was accepted and finishes; sending it again is a duplicate.
    assert!(
        eventually(Duration::from_secs(10), async || {
            let metrics = get_text(&http, format!("{}/metrics", host.url)).await;
            metrics.contains(r#"evhost_deliveries_total{plugin="slow-calls",outcome="ok"} 1"#)
        })
        .await,
        "the slow plugin handled the event after the answer"
    );
    let again = post_events(
        &http,
        &host.url,
        "/events",
        "application/cloudevents+json",
        structured("Attack", "slow", "s1", json!({})).to_string(),
    )
    .await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.json::<Value>().await.unwrap()["duplicates"],
        json!(["slow"])
    );
    // The one held back was never published.
    assert!(kv(&host, "healthy", "seen:next").await.is_none());
}

#[test]
fn evhost_run_refuses_a_missing_plugins_folder_with_an_error_naming_it() {
    let dir = TempDir::new("missing-folder");
    let missing = dir.0.join("no-such-plugins");
    let data = dir.0.join("data");
    let (code, _, stderr) = evhost(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--plugins",
            missing.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 1, "a clean error, not a panic: {stderr}");
    assert!(
        stderr.contains("opening the plugins folder") && stderr.contains("no-such-plugins"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_evhost_run_in_an_empty_directory_serves_what_is_dropped_into_plugins() {
    let dir = TempDir::new("bare");
    let mut command = Command::new(evhost_bin());
    command
        .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .current_dir(&dir.0)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let host = Running::spawn(command, &dir.0);
    assert!(dir.0.join("plugins").is_dir(), "./plugins was made");
    assert!(
        dir.0.join(".evhost/evhost.db").exists(),
        "the durable log is in ./.evhost"
    );
    std::fs::copy(wasm::HEALTHY, dir.0.join("plugins/healthy.wasm")).unwrap();
    assert_serves_and_handles(&host, "healthy", json!(true)).await;
}
