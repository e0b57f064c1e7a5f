//! The plugins folder: initial load, hot reload under load, broken files, removal,
//! manifests, name clashes and the compiled-code cache.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evhost::plugins::{PluginFolder, PluginFolderOptions};
use evhost::runtime::content_hash;
use evhost::{AsyncEventBus, Event, EventBus, FailureKind, FailureRecord, Runtime, RuntimeConfig};
use futures::FutureExt as _;
use serde_json::json;

use crate::{Host, wasm};

/// How long a change may take to be applied before a test fails. Generous: the machine
/// may be busy compiling while the tests run.
const PATIENCE: Duration = Duration::from_secs(20);

/// A folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        Self::under(&std::env::temp_dir(), label)
    }

    /// Under cargo's scratch directory for integration tests, for files that may outlive
    /// the test: wasmtime's cache worker writes its statistics in the background.
    fn in_target(label: &str) -> Self {
        Self::under(Path::new(env!("CARGO_TARGET_TMPDIR")), label)
    }

    fn under(base: &Path, label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("evhost-folder-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    fn copy(&self, wasm: &str, file: &str) {
        std::fs::copy(wasm, self.path(file)).unwrap_or_else(|e| panic!("copying {wasm}: {e}"));
    }

    fn write(&self, file: &str, contents: impl AsRef<[u8]>) {
        std::fs::write(self.path(file), contents).unwrap();
    }

    /// Writes `file` at once, by renaming a finished temporary file over it, so that the
    /// folder never sees it half-written.
    fn replace(&self, file: &str, contents: impl AsRef<[u8]>) {
        let temporary = self.path(&format!(".{file}.tmp"));
        std::fs::write(&temporary, contents).unwrap();
        std::fs::rename(temporary, self.path(file)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A host with a plugins folder and every failure record collected.
struct Fixture {
    host: Host,
    dir: TempDir,
    folder: Arc<PluginFolder>,
    records: Arc<Mutex<Vec<FailureRecord>>>,
}

impl Fixture {
    /// Opens the folder after `prepare` has put files into it.
    async fn open(label: &str, prepare: impl FnOnce(&TempDir)) -> Self {
        let dir = TempDir::new(label);
        prepare(&dir);
        // The host loads the folder's plugins as `evhost run` does; the records of what
        // it found wait in the monitor's stream until taken.
        let host = Host::with_plugins(&dir.0).await;
        let records = collect_records(&host.bus);
        let folder = Arc::clone(host.app.folder());
        Self {
            host,
            dir,
            folder,
            records,
        }
    }

    fn hash(&self, name: &str) -> Option<String> {
        self.folder.status(name).map(|status| status.hash)
    }

    /// Records of `kind` reported so far.
    fn records(&self, kind: FailureKind) -> Vec<FailureRecord> {
        let records = self.records.lock().unwrap();
        records.iter().filter(|r| r.kind == kind).cloned().collect()
    }

    /// Waits for a `plugin-load` record about `file` whose message `matches`.
    async fn load_failure(&self, file: &str, matches: impl Fn(&str) -> bool) -> FailureRecord {
        let find = || {
            self.records(FailureKind::PluginLoad)
                .into_iter()
                .find(|r| r.subscription == file && matches(&r.message))
        };
        eventually(&format!("a plugin-load failure for {file}"), || find().is_some()).await;
        find().unwrap()
    }

    fn seen(&self, plugin: &str, key: &str) -> bool {
        self.host.kv_bytes(plugin, key).is_some()
    }

    /// Publishes one `Tick` and waits until the bus has handled it.
    async fn tick(&self) -> String {
        let event = tick();
        let id = event.id.clone();
        self.host.publish_and_wait(vec![event]).await;
        id
    }
}

async fn open_folder(dir: &TempDir, runtime: Arc<Runtime>, bus: &AsyncEventBus) -> Arc<PluginFolder> {
    let options = PluginFolderOptions {
        dir: dir.0.clone(),
        ..PluginFolderOptions::default()
    };
    PluginFolder::open(options, runtime, bus.clone()).await.unwrap()
}

fn collect_records(bus: &AsyncEventBus) -> Arc<Mutex<Vec<FailureRecord>>> {
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut stream = bus.errors().expect("the stream is not taken yet");
    let sink = Arc::clone(&records);
    tokio::spawn(async move {
        while let Some(record) = stream.recv().await {
            sink.lock().unwrap().push(record);
        }
    });
    records
}

fn tick() -> Event {
    Event::new("Tick", "folder-test", json!({}))
}

/// Polls `check` until it holds; fails the test after [`PATIENCE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn file_hash(path: &str) -> String {
    content_hash(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plugin_in_the_folder_is_loaded_and_a_broken_one_reported() {
    let fixture = Fixture::open("initial", |dir| {
        dir.copy(wasm::HEALTHY, "healthy.wasm");
        dir.copy(wasm::USER_PROJECTION, "user-projection.wasm");
        dir.write("garbage.wasm", b"\0asm, or so it claims");
        dir.write("notes.txt", "not a plugin");
    })
    .await;
    let folder = &fixture.folder;

    let names: Vec<String> = folder.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["healthy", "user-projection"]);
    let healthy = folder.status("healthy").unwrap();
    assert_eq!(healthy.hash, file_hash(wasm::HEALTHY));
    assert_eq!(healthy.file, fixture.dir.path("healthy.wasm"));
    assert_eq!(healthy.subscriptions, ["*"]);
    assert_eq!(healthy.limits, evhost::Limits::default());
    assert_eq!(healthy.reloads, 0);
    assert_eq!(folder.reloads(), 0, "initial loads are not reloads");
    assert_eq!(folder.load_failures(), 1);

    let failure = fixture.load_failure("garbage.wasm", |_| true).await;
    assert!(failure.message.contains("garbage.wasm"), "{}", failure.message);
    assert!(
        failure.message.contains("not a valid WebAssembly component"),
        "{}",
        failure.message
    );
    assert_eq!((failure.event_id.as_str(), failure.event_type.as_str()), ("", ""));
    let again = folder.sync_file(&fixture.dir.path("garbage.wasm")).await;
    assert!(again.is_err(), "still broken");
    assert_eq!(folder.load_failures(), 1, "the same failure is reported once");

    let id = fixture.tick().await;
    assert!(fixture.seen("healthy", &format!("seen:{id}")));
    assert!(folder.status("healthy").unwrap().fuel_consumed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_folder_is_an_error() {
    let host = Host::new().await;
    let options = PluginFolderOptions {
        dir: PathBuf::from("/nonexistent/evhost/plugins"),
        ..PluginFolderOptions::default()
    };
    let error = PluginFolder::open(options, host.runtime.clone(), host.bus.clone())
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("/nonexistent/evhost/plugins"),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_is_served_without_a_restart() {
    let fixture = Fixture::open("new-file", |_| {}).await;
    let _watching = fixture.folder.watch().unwrap();
    assert!(fixture.folder.statuses().is_empty());

    fixture.dir.copy(wasm::HEALTHY, "healthy.wasm");
    eventually("healthy to be loaded", || fixture.hash("healthy").is_some()).await;
    assert_eq!(fixture.folder.reloads(), 1);
    let id = fixture.tick().await;
    assert!(fixture.seen("healthy", &format!("seen:{id}")));
}

/// Publishes batches of `Tick`s until stopped, counting them.
struct Load {
    published: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(bus: &AsyncEventBus) -> Self {
        let published = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (bus, published, stop) = (bus.clone(), Arc::clone(&published), Arc::clone(&stop));
            async move {
                let mut ids = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let batch: Vec<Event> = (0..10).map(|_| tick()).collect();
                    ids.extend(batch.iter().map(|e| e.id.clone()));
                    bus.publish_batch(batch).await.unwrap();
                    published.store(ids.len(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                ids
            }
        });
        Self {
            published,
            stop,
            task,
        }
    }

    fn published(&self) -> usize {
        self.published.load(Ordering::Relaxed)
    }

    /// Keeps publishing until `more` further events went out, then stops; returns every id.
    async fn finish_after(self, more: usize) -> Vec<String> {
        let target = self.published() + more;
        eventually("more events to be published", || self.published() >= target).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Replaces `healthy` by `healthy-v2` while events keep coming, and checks that every
/// event was handled exactly once, by exactly one of the two versions.
async fn replace_under_load(fixture: &Fixture) {
    let v1 = file_hash(wasm::HEALTHY);
    let v2 = file_hash(wasm::HEALTHY_V2);
    assert_eq!(fixture.hash("healthy"), Some(v1.clone()));
    let _watching = fixture.folder.watch().unwrap();

    let load = Load::start(&fixture.host.bus);
    eventually("the first version to handle events", || {
        load.published() >= 100
            && fixture
                .host
                .kv
                .list_keys("healthy", None, 1)
                .now_or_never()
                .expect("the in-memory store answers at once")
                .is_ok_and(|page| !page.keys.is_empty())
    })
    .await;
    // Copied over the file in place, as a deploy script would.
    fixture.dir.copy(wasm::HEALTHY_V2, "healthy.wasm");
    eventually("the second version to be swapped in", || {
        fixture.hash("healthy") == Some(v2.clone())
    })
    .await;
    let ids = load.finish_after(100).await;
    tokio::time::timeout(PATIENCE, fixture.host.bus.wait())
        .await
        .unwrap();

    let (mut by_v1, mut by_v2) = (0, 0);
    for id in &ids {
        let old = fixture.seen("healthy", &format!("seen:{id}"));
        let new = fixture.seen("healthy", &format!("seen-v2:{id}"));
        assert!(old != new, "event {id}: handled by v1: {old}, by v2: {new}");
        by_v1 += usize::from(old);
        by_v2 += usize::from(new);
    }
    assert!(
        by_v1 > 0 && by_v2 > 0,
        "both versions served: {by_v1} and {by_v2}"
    );
    let failures: Vec<_> = {
        let records = fixture.records.lock().unwrap();
        records
            .iter()
            .filter(|r| r.kind != FailureKind::PluginLoad)
            .cloned()
            .collect()
    };
    assert!(failures.is_empty(), "no invocation failed: {failures:?}");
    assert_eq!(fixture.folder.status("healthy").unwrap().reloads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_handles_every_event_exactly_once_under_load() {
    // With the subscription pinned by the manifest, both versions share one subscription
    // and the new version is swapped into it.
    let fixture = Fixture::open("swap", |dir| {
        dir.copy(wasm::HEALTHY, "healthy.wasm");
        dir.write("healthy.toml", "subscriptions = [\"Tick*\"]\n");
    })
    .await;
    let before = fixture.host.bus.metrics().subscriptions;
    assert_eq!(before.len(), 1);
    replace_under_load(&fixture).await;
    let after = fixture.host.bus.metrics().subscriptions;
    assert_eq!(after.len(), 1, "the same subscription served both versions");
    let handled: u64 = after[0].succeeded;
    let published = fixture.host.bus.metrics().accepted;
    assert_eq!(handled, published, "one invocation per event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_plugin_with_new_subscriptions_handles_every_event_exactly_once_under_load() {
    // healthy subscribes to `*`, healthy-v2 to `Tick*`: the subscription is replaced too.
    let fixture = Fixture::open("resubscribe", |dir| dir.copy(wasm::HEALTHY, "healthy.wasm")).await;
    replace_under_load(&fixture).await;
    let status = fixture.folder.status("healthy").unwrap();
    assert_eq!(status.subscriptions, ["Tick*"]);
    assert_eq!(status.version, "2.0.0");
    assert_eq!(
        fixture.host.bus.metrics().subscriptions.len(),
        1,
        "the old subscription is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_rejected_and_the_previous_version_keeps_serving() {
    let fixture = Fixture::open("broken", |dir| dir.copy(wasm::HEALTHY, "healthy.wasm")).await;
    let v1 = file_hash(wasm::HEALTHY);
    let _watching = fixture.folder.watch().unwrap();

    fixture
        .dir
        .write("healthy.wasm", b"this is not WebAssembly at all");
    let garbage = fixture.load_failure("healthy.wasm", |_| true).await;
    assert!(
        garbage.message.contains("not a valid WebAssembly component"),
        "{}",
        garbage.message
    );
    assert!(
        garbage.message.contains(&format!("version {v1} keeps serving")),
        "{}",
        garbage.message
    );
    let id = fixture.tick().await;
    assert!(
        fixture.seen("healthy", &format!("seen:{id}")),
        "the old version still serves"
    );

    let bytes = std::fs::read(wasm::HEALTHY_V2).unwrap();
    fixture.dir.write("healthy.wasm", &bytes[..bytes.len() / 2]);
    // The same broken file is reported once, so the next record is about the new one.
    let truncated = fixture
        .load_failure("healthy.wasm", |message| message != garbage.message)
        .await;
    assert!(
        truncated
            .message
            .contains("healthy.wasm: not a valid WebAssembly component"),
        "{}",
        truncated.message
    );
    assert_eq!(fixture.hash("healthy"), Some(v1.clone()));
    let id = fixture.tick().await;
    assert!(
        fixture.seen("healthy", &format!("seen:{id}")),
        "the old version still serves"
    );

    // A good file after the broken ones is loaded as usual.
    fixture.dir.copy(wasm::HEALTHY_V2, "healthy.wasm");
    eventually("the fixed file to load", || {
        fixture.hash("healthy") == Some(file_hash(wasm::HEALTHY_V2))
    })
    .await;
    let id = fixture.tick().await;
    assert!(fixture.seen("healthy", &format!("seen-v2:{id}")));
    assert!(fixture.folder.load_failures() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_file_stops_its_deliveries() {
    let fixture = Fixture::open("remove", |dir| {
        dir.copy(wasm::HEALTHY, "healthy.wasm");
        dir.copy(wasm::NOOP, "noop.wasm");
    })
    .await;
    let _watching = fixture.folder.watch().unwrap();
    let id = fixture.tick().await;
    assert!(fixture.seen("healthy", &format!("seen:{id}")));

    std::fs::remove_file(fixture.dir.path("healthy.wasm")).unwrap();
    eventually("healthy to be unloaded", || {
        fixture.folder.status("healthy").is_none()
    })
    .await;
    let id = fixture.tick().await;
    assert!(
        !fixture.seen("healthy", &format!("seen:{id}")),
        "no longer delivered"
    );
    let names: Vec<_> = fixture
        .host
        .bus
        .metrics()
        .subscriptions
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["noop"]);
    assert!(
        fixture.folder.status("noop").is_some(),
        "the other plugin is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_change_takes_effect_and_a_bad_manifest_is_refused() {
    let fixture = Fixture::open("manifest", |dir| {
        dir.copy(wasm::RETURNS_REJECT, "returns-reject.wasm");
        dir.write("returns-reject.toml", "[config]\nreason = \"first reason\"\n");
    })
    .await;
    let hash = file_hash(wasm::RETURNS_REJECT);
    let _watching = fixture.folder.watch().unwrap();
    let rejections = |fixture: &Fixture| fixture.records(FailureKind::Reject);

    fixture.tick().await;
    eventually("the first rejection", || !rejections(&fixture).is_empty()).await;
    let first = rejections(&fixture).remove(0);
    assert_eq!(first.message, "first reason");
    assert_eq!(first.subscription, "returns-reject");
    assert_eq!(first.handler_version.as_deref(), Some(hash.as_str()));

    fixture.dir.replace(
        "returns-reject.toml",
        "[config]\nreason = \"second reason\"\n[limits]\ntimeout = \"1500ms\"\n",
    );
    eventually("the manifest change to apply", || {
        fixture.folder.status("returns-reject").unwrap().limits.timeout == Duration::from_millis(1500)
    })
    .await;
    let status = fixture.folder.status("returns-reject").unwrap();
    assert_eq!(status.reloads, 1);
    assert_eq!(status.hash, hash, "same component, new settings");
    fixture.tick().await;
    eventually("the second rejection", || rejections(&fixture).len() >= 2).await;
    assert_eq!(rejections(&fixture)[1].message, "second reason");

    fixture
        .dir
        .replace("returns-reject.toml", "[limits]\ntimeout = \"0s\"\n");
    let refused = fixture
        .load_failure("returns-reject.wasm", |m| m.contains("longer than 0"))
        .await;
    assert!(
        refused.message.contains("returns-reject.toml"),
        "names the file: {}",
        refused.message
    );
    assert!(
        refused.message.contains("`limits.timeout`"),
        "names the key: {}",
        refused.message
    );
    assert!(
        refused.message.contains("must be longer than 0"),
        "says what is expected: {}",
        refused.message
    );
    fixture.tick().await;
    eventually("the third rejection", || rejections(&fixture).len() >= 3).await;
    assert_eq!(
        rejections(&fixture)[2].message,
        "second reason",
        "the previous settings still apply"
    );

    fixture
        .dir
        .replace("returns-reject.toml", "[limits]\ntimeout = 5\n");
    let refused = fixture
        .load_failure("returns-reject.wasm", |m| m.contains("invalid type"))
        .await;
    assert!(
        refused.message.contains("`limits.timeout`"),
        "names the key: {}",
        refused.message
    );
    assert!(
        refused.message.contains("line 2"),
        "names the line: {}",
        refused.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_file_is_not_reloaded() {
    let fixture = Fixture::open("unchanged", |dir| {
        dir.copy(wasm::HEALTHY, "healthy.wasm");
        dir.write("healthy.toml", "[limits]\nfuel = 1000000000\n");
    })
    .await;
    let loaded_at = fixture.folder.status("healthy").unwrap().loaded_at;
    // Rewritten with the same bytes, as `touch` or a redeploy of the same build would.
    fixture.dir.copy(wasm::HEALTHY, "healthy.wasm");
    fixture.dir.write("healthy.toml", "[limits]\nfuel = 1000000000\n");
    fixture
        .folder
        .sync_file(&fixture.dir.path("healthy.wasm"))
        .await
        .unwrap();
    fixture
        .folder
        .sync_file(&fixture.dir.path("healthy.toml"))
        .await
        .unwrap();
    let status = fixture.folder.status("healthy").unwrap();
    assert_eq!((status.reloads, status.loaded_at), (0, loaded_at));
    assert_eq!(fixture.folder.reloads(), 0);

    fixture.dir.write("healthy.toml", "[limits]\nfuel = 2000000000\n");
    fixture
        .folder
        .sync_file(&fixture.dir.path("healthy.wasm"))
        .await
        .unwrap();
    let status = fixture.folder.status("healthy").unwrap();
    assert_eq!((status.reloads, status.limits.fuel), (1, 2_000_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_declaring_another_plugins_name_is_refused_and_never_sees_its_data() {
    let fixture = Fixture::open("thief", |dir| {
        dir.copy(wasm::HEALTHY, "healthy.wasm");
        dir.copy(wasm::HEALTHY_V2, "healthy-next.wasm");
    })
    .await;
    let id = fixture.tick().await;
    assert!(fixture.seen("healthy", &format!("seen:{id}")));
    let refused = fixture.load_failure("healthy-next.wasm", |_| true).await;
    assert!(
        refused
            .message
            .contains("declares the name `healthy`, but it is loaded as `healthy-next`"),
        "{}",
        refused.message
    );
    assert_eq!(fixture.host.bus.metrics().subscriptions.len(), 1);

    // Even with the owner gone, the impostor does not get the owner's name or data.
    std::fs::remove_file(fixture.dir.path("healthy.wasm")).unwrap();
    fixture
        .folder
        .sync_file(&fixture.dir.path("healthy.wasm"))
        .await
        .unwrap();
    let again = fixture
        .folder
        .sync_file(&fixture.dir.path("healthy-next.wasm"))
        .await;
    assert!(again.is_err(), "still refused");
    assert!(fixture.folder.statuses().is_empty(), "nothing serves");
    assert!(fixture.host.bus.metrics().subscriptions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_cached_across_restarts() {
    let plugins = TempDir::new("cached-plugins");
    plugins.copy(wasm::HEALTHY, "healthy.wasm");
    plugins.copy(wasm::USER_PROJECTION, "user-projection.wasm");
    plugins.copy(wasm::PAYMENT_SAGA, "payment-saga.wasm");
    let cache = TempDir::in_target("cache");
    let start = || {
        Runtime::new(RuntimeConfig {
            max_instances: 16,
            cache_dir: Some(cache.0.clone()),
            ..RuntimeConfig::default()
        })
        .unwrap()
    };

    let cold = start();
    let folder = open_folder(&plugins, Arc::clone(&cold), &AsyncEventBus::new()).await;
    assert_eq!(folder.statuses().len(), 3);
    let stats = cold.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (0, 3), "compiled and stored");
    drop(folder);

    let warm = start();
    let folder = open_folder(&plugins, Arc::clone(&warm), &AsyncEventBus::new()).await;
    assert_eq!(folder.statuses().len(), 3);
    let stats = warm.cache_stats().unwrap();
    assert_eq!(
        (stats.hits, stats.misses),
        (3, 0),
        "every component came from the cache"
    );
    assert!(Path::new(&cache.0).read_dir().unwrap().next().is_some());
}

/// A `UserCreated` for the user projection.
fn user_created(id: &str) -> Event {
    Event::new(
        "UserCreated",
        "folder-test",
        json!({"id": id, "name": "Ada", "email": "ada@example.com"}),
    )
    .with_subject(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_as_cargo_writes_it_is_served_under_the_name_its_plugin_declares() {
    // cargo writes the crate `user-projection` to `user_projection.wasm`; its manifest is
    // spelled after the plugin's name.
    let fixture = Fixture::open("cargo-name", |dir| {
        dir.copy(wasm::USER_PROJECTION, "user_projection.wasm");
        dir.write("user-projection.toml", "[limits]\nfuel = 1500000000\n");
    })
    .await;
    let status = fixture
        .folder
        .status("user-projection")
        .expect("served as user-projection");
    assert_eq!(status.name, "user-projection");
    assert_eq!(status.file, fixture.dir.path("user_projection.wasm"));
    assert_eq!(status.limits.fuel, 1_500_000_000, "its manifest applies");
    assert_eq!(
        fixture.folder.status("user_projection").map(|s| s.name),
        Some("user-projection".to_owned()),
        "either spelling finds it"
    );
    let names: Vec<String> = fixture.folder.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["user-projection"]);

    fixture.host.publish_and_wait(vec![user_created("u1")]).await;
    assert_eq!(
        fixture.host.kv_json("user-projection", "user:u1").unwrap()["name"],
        "Ada",
        "its data is under the name it declares"
    );
    assert!(fixture.host.kv_bytes("user_projection", "user:u1").is_none());
    let metrics = fixture.host.bus.metrics();
    assert_eq!(metrics.subscriptions.len(), 1);
    assert_eq!(metrics.subscriptions[0].name, "user-projection");
    assert!(fixture.records(FailureKind::PluginLoad).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_naming_one_plugin_serve_the_first_in_byte_order_and_refuse_the_other() {
    // Present at start: the first in byte order (`-` before `_`) is served.
    let fixture = Fixture::open("name-conflict", |dir| {
        dir.copy(wasm::USER_PROJECTION, "user_projection.wasm");
        dir.copy(wasm::USER_PROJECTION, "user-projection.wasm");
    })
    .await;
    let served = |fixture: &Fixture| fixture.folder.status("user-projection").map(|s| s.file);
    assert_eq!(served(&fixture), Some(fixture.dir.path("user-projection.wasm")));
    let refused = fixture
        .load_failure("user_projection.wasm", |m| m.contains("both name the plugin"))
        .await;
    assert!(
        refused
            .message
            .contains("user_projection.wasm and user-projection.wasm both name the plugin `user-projection`")
            && refused.message.contains("user-projection.wasm is served"),
        "{}",
        refused.message
    );
    assert_eq!(fixture.host.bus.metrics().subscriptions.len(), 1);
    let again = fixture
        .folder
        .sync_file(&fixture.dir.path("user_projection.wasm"))
        .await;
    assert!(again.is_err(), "the other file stays refused");
    assert_eq!(
        fixture.records(FailureKind::PluginLoad).len(),
        1,
        "the same conflict is reported once"
    );

    // The served file goes: the other one takes over, and nothing is in conflict.
    std::fs::remove_file(fixture.dir.path("user-projection.wasm")).unwrap();
    fixture
        .folder
        .sync_file(&fixture.dir.path("user-projection.wasm"))
        .await
        .unwrap();
    assert_eq!(served(&fixture), Some(fixture.dir.path("user_projection.wasm")));

    // Arriving second makes no difference: the first in byte order is served.
    fixture.dir.copy(wasm::USER_PROJECTION, "user-projection.wasm");
    fixture
        .folder
        .sync_file(&fixture.dir.path("user-projection.wasm"))
        .await
        .unwrap();
    assert_eq!(served(&fixture), Some(fixture.dir.path("user-projection.wasm")));
    assert_eq!(fixture.folder.statuses().len(), 1);
    assert_eq!(fixture.host.bus.metrics().subscriptions.len(), 1);
    fixture.host.publish_and_wait(vec![user_created("u2")]).await;
    assert!(fixture.host.kv_json("user-projection", "user:u2").is_some());

    // Two manifests of one plugin are refused too, naming both; the version served stays.
    fixture
        .dir
        .write("user-projection.toml", "[limits]\nfuel = 1000000000\n");
    fixture
        .dir
        .write("user_projection.toml", "[limits]\nfuel = 2000000000\n");
    let error = fixture
        .folder
        .sync_file(&fixture.dir.path("user_projection.toml"))
        .await
        .unwrap_err();
    assert!(
        format!("{error:#}").contains("user-projection.toml and user_projection.toml are both manifests"),
        "{error:#}"
    );
    assert_eq!(served(&fixture), Some(fixture.dir.path("user-projection.wasm")));
}
