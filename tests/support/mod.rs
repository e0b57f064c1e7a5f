//! Helpers for tests that drive the real `evhost` binary: build it once, run it on a free
//! port with a plugins folder of built components, read its JSON log, talk HTTP to it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Builds the binary once per test run (a no-op when it is up to date).
pub fn evhost_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root)
            .args(["build", "-p", "evhost-cli", "--bin", "evhost"])
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
        Self::spawn(run_command(dir, args), dir)
    }

    /// Starts `command` (a [`run_command`] for `dir`, adjusted) and waits until it is ready.
    pub fn spawn(mut command: Command, dir: &Path) -> Self {
        let plugins_dir = dir.join("plugins");
        let mut child = command.spawn().expect("starting evhost");
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
        running.url = ready["url"].as_str().unwrap().to_owned();
        running
    }

    /// The process id of the host.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<Value> {
        self.logs.lock().unwrap().clone()
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

/// `evhost run ARGS` on a free port, with the plugins folder `dir/plugins`, the data
/// directory `dir/data`, JSON logs on a piped stderr and nothing on stdout.
pub fn run_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(evhost_bin());
    command
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--plugins",
        ])
        .arg(dir.join("plugins"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
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

/// A plugin's value as JSON (or as a JSON string when it is not JSON); `None` when absent.
pub async fn kv(host: &Running, plugin: &str, key: &str) -> Option<Value> {
    let bytes = kv_bytes(host, plugin, key).await?;
    Some(
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    )
}

/// A plugin's value exactly as stored; `None` when absent.
pub async fn kv_bytes(host: &Running, plugin: &str, key: &str) -> Option<Vec<u8>> {
    let response = client()
        .get(format!("{}/plugins/{plugin}/kv/{key}", host.url))
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Some(response.bytes().await.unwrap().to_vec()),
        404 => None,
        other => panic!("GET {plugin} kv {key} answered {other}"),
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

/// Checks the trace of the payment saga (`PaymentCreated` pay-1 → the plugin's
/// `InventoryReservationRequested` → the published `InventoryReserved` → the plugin's
/// `ShipmentRequested`), as `GET /events/{id}/trace` answers it: each event under its
/// cause, the emitted ones naming the plugin. Returns the four nodes in that order.
pub fn payment_saga_nodes(trace: &Value) -> [Value; 4] {
    assert_eq!(trace["correlation"], "pay-1");
    assert_eq!(trace["truncated"], false);
    let events = trace["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{trace:#}");
    let node = |ty: &str| {
        events
            .iter()
            .find(|e| e["event"]["type"] == ty)
            .unwrap_or_else(|| panic!("no {ty} in {trace:#}"))
            .clone()
    };
    let nodes = [
        node("PaymentCreated"),
        node("InventoryReservationRequested"),
        node("InventoryReserved"),
        node("ShipmentRequested"),
    ];
    let [created, requested, reserved, shipment] = &nodes;
    assert_eq!(created["parent"], Value::Null);
    assert_eq!(requested["parent"], created["offset"]);
    assert_eq!(reserved["parent"], requested["offset"]);
    assert_eq!(shipment["parent"], reserved["offset"]);
    assert_eq!(requested["emitted_by"], "payment-saga");
    assert_eq!(shipment["emitted_by"], "payment-saga");
    assert_eq!(reserved["emitted_by"], Value::Null);
    nodes
}
