//! The watched plugins folder: loads every `NAME.wasm`, and keeps the bus in step with the
//! folder as files are added, replaced and removed.
//!
//! Each plugin is one bus subscription whose handler is a [`Slot`]. A reload compiles
//! the new version first (on a blocking thread, while the old one keeps serving) and then
//! swaps it into the slot; only when the subscription itself must change (other
//! patterns, concurrency limit, timeout or name) is it replaced, in one step, by
//! [`AsyncEventBus::replace_subscription`]. A file that cannot be loaded is reported and
//! leaves whatever was serving in place.
//!
//! Loads are serialized: two quick changes of one file are applied in order, never
//! overtaking one another.
//!
//! Identity: a plugin is named by its file, `NAME.wasm`, with `-` and `_` counting as one
//! character ([`same_name`]), because cargo writes the crate `user-projection` to
//! `user_projection.wasm`. The plugin is served under the name it declares, which must be
//! its file name in that sense. Two files that name one plugin (`a-b.wasm` and
//! `a_b.wasm`) conflict: the first in byte order (`a-b.wasm`) is served and the other is
//! refused, naming both, whichever arrived first. A manifest is the `.toml` of the same
//! identity, spelled either way; two of them are refused.
//!
//! Half-written files: changes are applied once the folder has been quiet for the
//! debounce period; a file (component or manifest) is then read only when it has not
//! been modified for [`SETTLE`] and its length and modification time are the same
//! before and after the read, and an empty component is ignored until something is
//! written to it. A writer that pauses longer than that mid-file can still be caught
//! half-way: a truncated component fails to compile and is reported, and the write that
//! completes it brings another event, which loads it. The same failure is reported once,
//! however many events or rescans see it. Writing to a temporary name and renaming it
//! over `NAME.wasm` or `NAME.toml` avoids the question altogether.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, DebouncedEvent, Debouncer, RecommendedCache};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::history::{PluginChange, PluginHistory};
use super::slot::Slot;
use super::{Manifest, ManifestError};
use crate::bus::{AsyncEventBus, EventBus, EventHandler, SubscriptionId};
use crate::monitor::{FailureKind, FailureRecord};
use crate::runtime::{Limits, Plugin, PluginOptions, Runtime, content_hash, name_identity, same_name};
use crate::store::KeyValueStore;

/// How long a file must have gone unmodified before it is read, so that a writer that
/// pauses mid-file (a slow copy, a download) is not caught half-way.
const SETTLE: Duration = Duration::from_millis(50);
/// How long to wait for a file that keeps changing before reading it anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// Debounced batches of file events waiting for the reloading task.
const WATCH_QUEUE: usize = 64;
/// The largest manifest (`NAME.toml`) read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// What the folder reports about one loaded plugin (`GET /plugins`; the CLI reads it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginStatus {
    /// The name the plugin gives itself.
    pub name: String,
    /// The version the author gave.
    pub version: String,
    /// The content hash of the component being served (first 16 hex digits of SHA-256).
    pub hash: String,
    /// The `.wasm` file it was loaded from.
    pub file: PathBuf,
    /// The patterns it is subscribed to.
    pub subscriptions: Vec<String>,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
    /// Per-invocation budgets.
    pub limits: Limits,
    /// Its own concurrency limit, if it has one.
    pub concurrency: Option<usize>,
    /// Events one instance serves: 1 (a fresh instance per event) unless the plugin opted
    /// into reuse.
    #[serde(default = "one")]
    pub reuse: u32,
    /// When the version being served was loaded.
    pub loaded_at: DateTime<Utc>,
    /// Times the file (or its manifest) was reloaded since it was first loaded.
    pub reloads: u64,
    /// Fuel burned by all its invocations, across versions.
    pub fuel_consumed: u64,
}

fn one() -> u32 {
    1
}

/// Where the folder is and how plugins in it are run.
#[derive(Debug, Clone)]
pub struct PluginFolderOptions {
    /// The folder of `NAME.wasm` files (each with an optional `NAME.toml` manifest).
    pub dir: PathBuf,
    /// Host-wide manifest settings; each plugin's own manifest is laid over them.
    pub defaults: Manifest,
    /// How long the folder must be quiet before changes are applied (100 ms by default):
    /// a file being copied in produces a burst of events, and the reload waits for it
    /// to end.
    pub debounce: Duration,
    /// On a log shared with other hosts: its ack wait, after which a delivery not yet
    /// acknowledged goes to another host. A plugin whose timeout is not below
    /// 1/[`PULL_AHEAD`](crate::store::PULL_AHEAD) of it is refused: its deliveries could
    /// wait that long taken and unstarted, and then run twice.
    pub ack_wait: Option<Duration>,
}

impl Default for PluginFolderOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("plugins"),
            defaults: Manifest::default(),
            debounce: Duration::from_millis(100),
            ack_wait: None,
        }
    }
}

/// A folder of plugins kept loaded and subscribed on a bus; see the module documentation.
pub struct PluginFolder {
    options: PluginFolderOptions,
    runtime: Arc<Runtime>,
    bus: AsyncEventBus,
    kv: Arc<dyn KeyValueStore>,
    /// Held for the whole of a (re)load: one file at a time, in the order of the changes.
    loading: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    reloads: AtomicU64,
    load_failures: AtomicU64,
    history: PluginHistory,
}

impl std::fmt::Debug for PluginFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginFolder")
            .field("dir", &self.options.dir)
            .field("plugins", &self.lock_state().entries.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Loaded plugins by the identity of their file stem ([`name_identity`]).
    entries: BTreeMap<String, Entry>,
    /// The last failure reported per file stem, so that one is reported once.
    reported: HashMap<String, String>,
}

/// The plugin files of one identity in the folder: the stems of its components and of its
/// manifests, each sorted (so the first component is the one served).
#[derive(Debug, Default, Clone)]
struct Files {
    wasm: Vec<String>,
    toml: Vec<String>,
}

/// One loaded file.
struct Entry {
    /// The stem of the file it was loaded from (`NAME` of `NAME.wasm`).
    stem: String,
    plugin: Arc<Plugin>,
    /// The effective manifest (own over defaults) it was loaded with.
    manifest: Manifest,
    slot: Arc<Slot>,
    subscription: SubscriptionId,
    file: PathBuf,
    loaded_at: DateTime<Utc>,
    reloads: u64,
    /// Replaced versions that may still be finishing invocations; their fuel moves to
    /// `retired_fuel` once nothing else holds them.
    retired: Vec<Arc<Plugin>>,
    retired_fuel: u64,
}

impl Entry {
    /// Keeps a replaced version until its last invocation is done, for its fuel. Versions
    /// already done are let go of here too, so their compiled code does not pile up.
    fn retire(&mut self, plugin: Arc<Plugin>) {
        self.fuel_consumed();
        self.retired.push(plugin);
    }

    fn fuel_consumed(&mut self) -> u64 {
        let (finished, running): (Vec<_>, Vec<_>) = self
            .retired
            .drain(..)
            .partition(|plugin| Arc::strong_count(plugin) == 1);
        self.retired = running;
        self.retired_fuel += finished.iter().map(|p| p.fuel_consumed()).sum::<u64>();
        let running: u64 = self.retired.iter().map(|p| p.fuel_consumed()).sum();
        self.retired_fuel + running + self.plugin.fuel_consumed()
    }

    fn status(&mut self) -> PluginStatus {
        let fuel_consumed = self.fuel_consumed();
        let info = self.plugin.info();
        PluginStatus {
            name: info.name.clone(),
            version: info.version.clone(),
            hash: info.hash.clone(),
            file: self.file.clone(),
            subscriptions: info.subscriptions.clone(),
            imports: info.imports.clone(),
            limits: self.plugin.limits(),
            concurrency: self.plugin.concurrency(),
            reuse: self.plugin.reuse(),
            loaded_at: self.loaded_at,
            reloads: self.reloads,
            fuel_consumed,
        }
    }
}

/// Whether `new` can be served by the subscription `old` has.
fn same_subscription(old: &Plugin, new: &Plugin) -> bool {
    let (a, b) = (old.subscribe_options(), new.subscribe_options());
    old.info().subscriptions == new.info().subscriptions
        && (a.name, a.concurrency, a.timeout) == (b.name, b.concurrency, b.timeout)
}

/// What reading and compiling a file produced.
enum Prepared {
    Gone,
    Empty,
    /// Same bytes and manifest as the version being served.
    Unchanged,
    Compiled {
        plugin: Arc<Plugin>,
        manifest: Box<Manifest>,
    },
}

impl PluginFolder {
    /// Loads every `NAME.wasm` in the folder (a `NAME.toml` beside it is its manifest,
    /// laid over the defaults) and subscribes it to `bus`. A file that fails to load is
    /// logged, reported to the bus's monitor as a
    /// [`PluginLoad`](FailureKind::PluginLoad) failure and skipped.
    ///
    /// A plugin's name is its file name (`-` and `_` counting as one character): a
    /// component whose metadata declares another name is refused, so no file can take
    /// over another plugin's key-value data. Of two files naming one plugin, the first in
    /// byte order is loaded and the other refused (see the module documentation). A file
    /// larger than the runtime's
    /// [`max_component_bytes`](crate::RuntimeConfig::max_component_bytes) is refused
    /// without being read.
    ///
    /// # Errors
    /// When the folder itself cannot be read, or `options.defaults` is invalid (see
    /// [`Manifest::validate`]); never because of a plugin file.
    pub async fn open(
        options: PluginFolderOptions,
        runtime: Arc<Runtime>,
        bus: AsyncEventBus,
    ) -> anyhow::Result<Arc<Self>> {
        // Plugins read what the bus's delivery commits write.
        let kv = bus.key_value_store();
        options
            .defaults
            .validate()
            .context("the default plugin settings are invalid")?;
        let folder = Arc::new(Self {
            options,
            runtime,
            bus,
            kv,
            loading: tokio::sync::Mutex::new(()),
            state: Mutex::default(),
            reloads: AtomicU64::new(0),
            history: PluginHistory::default(),
            load_failures: AtomicU64::new(0),
        });
        let loading = folder.loading.lock().await;
        let groups = folder.scan().await?;
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Compile in parallel (each compile is a blocking task), install in name order.
        // Owned values in the stream keep this future `Send` (borrowed ones trip the
        // compiler's higher-ranked lifetime check when the future is spawned).
        let prepared: Vec<_> = futures::stream::iter(groups)
            .filter(|(_, files)| std::future::ready(!files.wasm.is_empty()))
            .map(|(identity, files)| {
                let folder = Arc::clone(&folder);
                async move {
                    let result = folder.prepare(&identity, &files).await;
                    (identity, files, result)
                }
            })
            .buffered(parallelism)
            .collect()
            .await;
        for (identity, files, result) in prepared {
            let outcome = result.and_then(|prepared| folder.apply(&identity, &files.wasm[0], prepared, true));
            folder.settle_reports(&identity, &files, outcome.as_ref().err());
        }
        let state = folder.lock_state();
        tracing::info!(
            dir = %folder.options.dir.display(),
            loaded = state.entries.len(),
            failed = folder.load_failures(),
            "plugins folder opened"
        );
        drop(state);
        drop(loading);
        Ok(folder)
    }

    /// Starts applying changes to the folder as they happen (watched with `notify`,
    /// debounced by [`PluginFolderOptions::debounce`]), after a rescan that catches what
    /// changed since [`PluginFolder::open`]. Watching stops when the guard is dropped.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    /// When the OS refuses to watch the folder.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<WatchGuard> {
        let dir = &self.options.dir;
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<DebounceEventResult>(WATCH_QUEUE);
        // The debouncer calls this on its own thread, where blocking is fine (and makes a
        // burst of changes wait rather than be dropped).
        let mut debouncer = notify_debouncer_full::new_debouncer(self.options.debounce, None, move |batch| {
            let _ = sender.blocking_send(batch);
        })
        .context("starting the plugins folder watcher")?;
        debouncer
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let folder = Arc::clone(self);
        let task = tokio::spawn(async move {
            folder.rescan().await;
            loop {
                let batch = tokio::select! {
                    () = stop.cancelled() => break,
                    batch = receiver.recv() => match batch {
                        Some(batch) => batch,
                        None => break,
                    },
                };
                folder.apply_batch(batch).await;
            }
            tracing::debug!(dir = %folder.options.dir.display(), "stopped watching the plugins folder");
        });
        tracing::info!(dir = %dir.display(), "watching the plugins folder");
        Ok(WatchGuard {
            _debouncer: debouncer,
            _stop: cancel.drop_guard(),
            task,
        })
    }

    /// Every loaded plugin, sorted by name.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let mut statuses: Vec<_> = self
            .lock_state()
            .entries
            .values_mut()
            .map(Entry::status)
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// The plugin called `name` (`-` and `_` counting as one character), if loaded.
    pub fn status(&self, name: &str) -> Option<PluginStatus> {
        self.lock_state()
            .entries
            .get_mut(&name_identity(name))
            .map(Entry::status)
    }

    /// What happened to each plugin: loaded, swapped, refused, removed.
    pub fn history(&self) -> &PluginHistory {
        &self.history
    }

    /// Successful reloads of changed plugin files since startup.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Load failures reported since the folder was opened. A file that keeps failing the
    /// same way (seen again by another event or a rescan) counts once.
    pub fn load_failures(&self) -> u64 {
        self.load_failures.load(Ordering::Relaxed)
    }

    /// Brings one plugin in line with the folder — what the watcher does on a change:
    /// (re)loads its `NAME.wasm` if it exists (unless neither it nor its manifest changed),
    /// unsubscribes the plugin if it is gone. Only the file stem of `wasm_path` matters,
    /// so the path of the plugin's `NAME.toml` works too, and so does either spelling of
    /// the name (`-` or `_`).
    ///
    /// # Errors
    /// When the file could not be loaded, or another file names the same plugin and was
    /// preferred (see the module documentation); this is already logged and reported to
    /// the monitor, and the version loaded before (if any) keeps serving.
    pub async fn sync_file(&self, wasm_path: &Path) -> anyhow::Result<()> {
        let stem = plugin_stem(wasm_path)
            .with_context(|| format!("{} does not name a plugin file", wasm_path.display()))?;
        let identity = name_identity(&stem);
        let _loading = self.loading.lock().await;
        let files = self.scan().await?.remove(&identity).unwrap_or_default();
        let outcome = self.sync(&identity, &files).await;
        match outcome {
            Ok(()) if files.wasm.contains(&stem) && files.wasm[0] != stem => {
                Err(conflict(&stem, &files.wasm[0], &identity))
            }
            outcome => outcome,
        }
    }

    /// Loads, reloads or unloads the plugin `identity` to match `files`, and reports what
    /// could not be loaded. Called with `loading` held.
    async fn sync(&self, identity: &str, files: &Files) -> anyhow::Result<()> {
        let Some(stem) = files.wasm.first() else {
            self.unload(identity);
            self.settle_reports(identity, files, None);
            return Ok(());
        };
        let outcome = match self.prepare(identity, files).await {
            Ok(prepared) => self.apply(identity, stem, prepared, false),
            Err(error) => Err(error),
        };
        self.settle_reports(identity, files, outcome.as_ref().err());
        outcome
    }

    /// After a sync of `identity`: reports the failure of the file served (if `error`) and
    /// every other file of the identity as a conflict, and forgets what was reported of
    /// files that are gone.
    fn settle_reports(&self, identity: &str, files: &Files, error: Option<&anyhow::Error>) {
        self.lock_state()
            .reported
            .retain(|stem, _| name_identity(stem) != identity || files.wasm.contains(stem));
        let Some((served, others)) = files.wasm.split_first() else {
            return;
        };
        if let Some(error) = error {
            self.reject(served, error);
        }
        for other in others {
            self.reject(other, &conflict(other, served, identity));
        }
    }

    /// Reads the plugin's files and compiles its component (the first of `files.wasm`),
    /// unless nothing changed.
    async fn prepare(&self, identity: &str, files: &Files) -> anyhow::Result<Prepared> {
        let stem = files.wasm.first().map_or(identity, String::as_str);
        let file = self.wasm_path(stem);
        let max = self.runtime.config().max_component_bytes;
        let bytes = match read_settled(&file, max, "`runtime.max_component_mb`")
            .await
            .with_context(|| format!("reading {}", file.display()))?
        {
            None => return Ok(Prepared::Gone),
            Some(bytes) if bytes.is_empty() => return Ok(Prepared::Empty),
            Some(bytes) => bytes,
        };
        let load = async {
            let manifest = self.manifest(identity, &files.toml).await?;
            let hash = content_hash(&bytes);
            let unchanged = self.lock_state().entries.get(identity).is_some_and(|entry| {
                entry.stem == stem && entry.plugin.info().hash == hash && entry.manifest == manifest
            });
            if unchanged {
                return Ok::<_, anyhow::Error>(Prepared::Unchanged);
            }
            // The file name is the plugin's identity; the metadata must agree (`-` and `_`
            // counting as one), and the plugin is served under the name it declares.
            let options = PluginOptions {
                name: Some(stem.to_owned()),
                ..manifest.plugin_options()
            };
            let plugin = self
                .runtime
                .load(bytes, options, Arc::clone(&self.kv) as _)
                .await?;
            Ok(Prepared::Compiled {
                plugin,
                manifest: Box::new(manifest),
            })
        };
        load.await.with_context(|| format!("loading {}", file.display()))
    }

    /// The plugin's effective manifest: its `NAME.toml` (the one of `tomls`, the manifest
    /// stems of its identity), if any, over the defaults.
    async fn manifest(&self, identity: &str, tomls: &[String]) -> anyhow::Result<Manifest> {
        let stem = match tomls {
            [] => identity,
            [stem] => stem,
            [first, second, ..] => anyhow::bail!(
                "{first}.toml and {second}.toml are both manifests of the plugin `{identity}` (`-` and `_` \
                 count as the same character in a plugin's name): keep one"
            ),
        };
        let path = self.options.dir.join(format!("{stem}.toml"));
        // Settled like the component: a manifest caught between being truncated and
        // written would otherwise pass for an empty one, i.e. the defaults.
        let own = match read_settled(&path, MAX_MANIFEST_BYTES, "a manifest's 1 MiB").await {
            Ok(Some(bytes)) => {
                let text = String::from_utf8(bytes).map_err(|e| ManifestError::Parse {
                    path: path.clone(),
                    message: format!("not UTF-8 text: {e}"),
                })?;
                Manifest::parse(&text, &path)?
            }
            Ok(None) => Manifest::default(),
            Err(source) => return Err(ManifestError::Io { path, source }.into()),
        };
        let manifest = own.over(&self.options.defaults);
        let ahead = crate::store::PULL_AHEAD;
        let timeout = manifest.plugin_options().limits.timeout;
        if let Some(ack_wait) = self.options.ack_wait
            && !crate::store::ack_wait_covers(ack_wait, timeout)
        {
            anyhow::bail!(
                "its timeout ({}) is too long for the shared log's ack wait ({}): `[nats] ack_wait` must exceed \
                 {ahead} × the timeout, or the timeout in {} must be shorter",
                humantime::format_duration(timeout),
                humantime::format_duration(ack_wait),
                path.display()
            );
        }
        Ok(manifest)
    }

    /// Puts what [`PluginFolder::prepare`] produced from the file `stem` into service as
    /// the plugin `identity`.
    fn apply(&self, identity: &str, stem: &str, prepared: Prepared, initial: bool) -> anyhow::Result<()> {
        match prepared {
            Prepared::Gone => {
                self.unload(identity);
                Ok(())
            }
            Prepared::Empty => {
                tracing::debug!(file = %self.wasm_path(stem).display(), "ignoring an empty file (still being written?)");
                Ok(())
            }
            Prepared::Unchanged => {
                tracing::debug!(file = %self.wasm_path(stem).display(), "plugin unchanged, not reloaded");
                // Back to the version being served: a failure seen in between is over.
                self.lock_state().reported.remove(stem);
                Ok(())
            }
            Prepared::Compiled { plugin, manifest } => {
                self.install(identity, stem, plugin, *manifest, initial)
            }
        }
    }

    /// Subscribes a newly compiled plugin, or swaps it in for the version its identity
    /// served.
    fn install(
        &self,
        identity: &str,
        stem: &str,
        plugin: Arc<Plugin>,
        manifest: Manifest,
        initial: bool,
    ) -> anyhow::Result<()> {
        debug_assert!(
            same_name(identity, &plugin.info().name),
            "the runtime checked the name"
        );
        let file = self.wasm_path(stem);
        let name = plugin.info().name.clone();
        let mut state = self.lock_state();
        let state = &mut *state;
        state.reported.remove(stem);
        let handler = Arc::clone(&plugin) as Arc<dyn EventHandler>;
        let patterns = plugin.info().subscriptions.clone();
        let now = Utc::now();
        match state.entries.get_mut(identity) {
            Some(entry) if same_subscription(&entry.plugin, &plugin) => {
                entry.slot.swap(handler);
                let old = std::mem::replace(&mut entry.plugin, Arc::clone(&plugin));
                tracing::info!(plugin = %name, file = %file.display(), from = %old.info().hash, to = %plugin.info().hash, "plugin reloaded");
                self.history.record(&name, swapped(&old, &plugin));
                entry.retire(old);
                entry.manifest = manifest;
                entry.loaded_at = now;
                entry.reloads += 1;
                (entry.stem, entry.file) = (stem.to_owned(), file);
            }
            Some(entry) => {
                let slot = Slot::new(&name, handler);
                let subscription = self
                    .bus
                    .replace_subscription(
                        entry.subscription,
                        &patterns,
                        Arc::clone(&slot) as Arc<dyn EventHandler>,
                        plugin.subscribe_options(),
                    )
                    .with_context(|| format!("loading {}: subscribing it", file.display()))?;
                let old = std::mem::replace(&mut entry.plugin, Arc::clone(&plugin));
                tracing::info!(
                    plugin = %name, file = %file.display(), from = %old.info().hash, to = %plugin.info().hash,
                    subscriptions = ?patterns, "plugin reloaded with a new subscription"
                );
                self.history.record(&name, swapped(&old, &plugin));
                entry.retire(old);
                entry.slot = slot;
                entry.subscription = subscription;
                entry.manifest = manifest;
                entry.loaded_at = now;
                entry.reloads += 1;
                (entry.stem, entry.file) = (stem.to_owned(), file);
            }
            None => {
                let slot = Slot::new(&name, handler);
                let subscription = self
                    .bus
                    .subscribe_any(
                        &patterns,
                        Arc::clone(&slot) as Arc<dyn EventHandler>,
                        plugin.subscribe_options(),
                    )
                    .with_context(|| format!("loading {}: subscribing it", file.display()))?;
                tracing::info!(
                    plugin = %name, file = %file.display(), hash = %plugin.info().hash,
                    subscriptions = ?patterns, "plugin loaded"
                );
                self.history.record(
                    &name,
                    PluginChange::Loaded {
                        hash: plugin.info().hash.clone(),
                        version: plugin.info().version.clone(),
                    },
                );
                state.entries.insert(
                    identity.to_owned(),
                    Entry {
                        stem: stem.to_owned(),
                        plugin,
                        manifest,
                        slot,
                        subscription,
                        file,
                        loaded_at: now,
                        reloads: 0,
                        retired: Vec::new(),
                        retired_fuel: 0,
                    },
                );
            }
        }
        if !initial {
            self.reloads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Unsubscribes the plugin of a removed file.
    fn unload(&self, identity: &str) {
        let mut state = self.lock_state();
        let Some(entry) = state.entries.remove(identity) else {
            return;
        };
        let name = entry.plugin.info().name.clone();
        // Events already queued for it are still handled; none are routed to it from now.
        if let Err(error) = self.bus.unsubscribe(entry.subscription) {
            tracing::warn!(plugin = %name, "unsubscribing a removed plugin: {error}");
        }
        tracing::info!(plugin = %name, file = %entry.file.display(), "plugin unloaded: its file was removed");
        drop(state);
        self.history.record(&name, PluginChange::Removed);
    }

    /// Logs a file that could not be loaded and reports it to the monitor — once: the
    /// same failure again (the same file still broken, seen by another event or a
    /// rescan) is only logged at debug level.
    fn reject(&self, stem: &str, error: &anyhow::Error) {
        let file = self.wasm_path(stem);
        let message = {
            let mut state = self.lock_state();
            let message = match state.entries.get(&name_identity(stem)) {
                Some(entry) => format!("{error:#} (version {} keeps serving)", entry.plugin.info().hash),
                None => format!("{error:#}"),
            };
            if state.reported.get(stem) == Some(&message) {
                tracing::debug!(file = %file.display(), "plugin still rejected: {message}");
                return;
            }
            state.reported.insert(stem.to_owned(), message.clone());
            message
        };
        self.load_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(file = %file.display(), "plugin rejected: {message}");
        self.history.record(
            stem,
            PluginChange::Refused {
                reason: message.clone(),
            },
        );
        self.bus.monitor().report(FailureRecord {
            subscription: format!("{stem}.wasm"),
            handler_version: None,
            event_id: String::new(),
            event_type: String::new(),
            attempt: 1,
            kind: FailureKind::PluginLoad,
            message,
            time: Utc::now(),
        });
    }

    /// Applies one debounced batch of file events.
    async fn apply_batch(&self, batch: DebounceEventResult) {
        let events = match batch {
            Ok(events) => events,
            Err(errors) => {
                for error in errors {
                    tracing::warn!(dir = %self.options.dir.display(), "watching the plugins folder: {error}");
                }
                // Events may have been lost with the errors.
                return self.rescan().await;
            }
        };
        if events.iter().any(|event| event.need_rescan()) {
            return self.rescan().await;
        }
        let identities: BTreeSet<String> = changed_stems(&events)
            .iter()
            .map(|stem| name_identity(stem))
            .collect();
        for identity in identities {
            let _loading = self.loading.lock().await;
            let files = match self.scan().await {
                Ok(mut groups) => groups.remove(&identity).unwrap_or_default(),
                Err(error) => {
                    tracing::error!("{error:#}");
                    return;
                }
            };
            // A failure is already reported; the other plugins still get their turn.
            let _ = self.sync(&identity, &files).await;
        }
    }

    /// Syncs every plugin in the folder and every plugin loaded.
    async fn rescan(&self) {
        let _loading = self.loading.lock().await;
        let mut groups = match self.scan().await {
            Ok(groups) => groups,
            Err(error) => {
                tracing::error!("rescanning the plugins folder: {error:#}");
                return;
            }
        };
        let loaded: Vec<String> = self.lock_state().entries.keys().cloned().collect();
        for identity in loaded {
            groups.entry(identity).or_default();
        }
        for (identity, files) in groups {
            let _ = self.sync(&identity, &files).await;
        }
    }

    /// The plugin files in the folder (`.wasm` and `.toml`) by identity.
    async fn scan(&self) -> anyhow::Result<BTreeMap<String, Files>> {
        let dir = &self.options.dir;
        let context = || format!("reading the plugins folder {}", dir.display());
        let mut entries = tokio::fs::read_dir(dir).await.with_context(context)?;
        let mut groups = BTreeMap::<String, Files>::new();
        while let Some(entry) = entries.next_entry().await.with_context(context)? {
            let path = entry.path();
            let Some(stem) = plugin_stem(&path) else { continue };
            let files = groups.entry(name_identity(&stem));
            match path.extension().and_then(|ext| ext.to_str()) {
                Some("wasm") => files.or_default().wasm.push(stem),
                Some("toml") => files.or_default().toml.push(stem),
                _ => {}
            }
        }
        for files in groups.values_mut() {
            files.wasm.sort();
            files.toml.sort();
        }
        Ok(groups)
    }

    fn wasm_path(&self, stem: &str) -> PathBuf {
        self.options.dir.join(format!("{stem}.wasm"))
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }
}

/// Stops watching the folder when dropped; see [`PluginFolder::watch`]. A reload already
/// under way is finished first.
pub struct WatchGuard {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    _stop: DropGuard,
    task: tokio::task::JoinHandle<()>,
}

impl WatchGuard {
    /// Returns if the watcher stops while its guard lives: the OS stopped reporting
    /// changes (or applying them panicked). The folder is then no longer followed.
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchGuard").finish_non_exhaustive()
    }
}

/// The stems of the plugin files (`.wasm` or `.toml`) a batch of events touched. Our own
/// reads show up as open/close events; only a close after writing counts.
fn changed_stems(events: &[DebouncedEvent]) -> BTreeSet<String> {
    events
        .iter()
        .filter(|event| match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        })
        .flat_map(|event| event.paths.iter())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm" || ext == "toml"))
        .filter_map(|path| plugin_stem(path))
        .collect()
}

/// Why the file `stem` is not loaded: `served` names the same plugin and comes first.
fn conflict(stem: &str, served: &str, identity: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{stem}.wasm and {served}.wasm both name the plugin `{identity}` (`-` and `_` count as the same \
         character in a plugin's name): {served}.wasm is served and {stem}.wasm is not loaded; remove one"
    )
}

/// `NAME` of `dir/NAME.wasm`.
fn plugin_stem(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty() && !stem.starts_with('.')).then(|| stem.to_owned())
}

/// Reads a file once it has stopped changing: not modified for [`SETTLE`], and the same
/// length and modification time before and after the read. A file that keeps changing
/// is read anyway after [`SETTLE_LIMIT`] (and most likely refused as truncated; the next
/// change event loads it). `None` if there is no such file. A file over `max` bytes is
/// refused (naming the limit `limit`) before any of it is read, and never more than
/// `max` bytes are read, even of a file growing meanwhile.
async fn read_settled(path: &Path, max: u64, limit: &str) -> std::io::Result<Option<Vec<u8>>> {
    let too_large = |size: u64| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the file is {size} bytes, over the limit of {max} bytes ({limit})"),
        )
    };
    let started = Instant::now();
    loop {
        let Some(before) = metadata(path).await? else {
            return Ok(None);
        };
        if before.len() > max {
            return Err(too_large(before.len()));
        }
        let patient = started.elapsed() < SETTLE_LIMIT;
        // A modification time in the future (clock skew) counts as settled.
        let age = before.modified()?.elapsed().unwrap_or(SETTLE);
        if age < SETTLE && patient {
            tokio::time::sleep(SETTLE - age).await;
            continue;
        }
        if before.len() == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut bytes = Vec::with_capacity(usize::try_from(before.len()).unwrap_or(0));
        (&mut file).take(max + 1).read_to_end(&mut bytes).await?;
        if bytes.len() as u64 > max {
            return Err(too_large(bytes.len() as u64));
        }
        let Some(after) = metadata(path).await? else {
            return Ok(None);
        };
        let settled = bytes.len() as u64 == before.len()
            && after.len() == before.len()
            && after.modified()? == before.modified()?;
        if settled || !patient {
            return Ok(Some(bytes));
        }
        tokio::time::sleep(SETTLE).await;
    }
}

async fn metadata(path: &Path) -> std::io::Result<Option<std::fs::Metadata>> {
    match tokio::fs::metadata(path).await {
        Ok(metadata) => Ok(Some(metadata)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The history entry of `new` replacing `old`.
fn swapped(old: &Plugin, new: &Plugin) -> PluginChange {
    PluginChange::Swapped {
        from: old.info().hash.clone(),
        to: new.info().hash.clone(),
        version: new.info().version.clone(),
    }
}
