//! The Wasm runtime: one engine, one linker, and plugins loaded against them.
//!
//! A [`Runtime`] compiles components, checks that they target the `evhost:plugin/handler`
//! world, pre-links them once and hands out [`Plugin`]s. Every invocation of a plugin
//! runs in a fresh instance from the pooling allocator under fuel, an epoch-based
//! wall-clock deadline and a memory ceiling; it gets no filesystem, network, environment
//! or inherited stdio.

mod bindings;
mod host;
mod plugin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use sha2::Digest as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Cache, CacheConfig, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bus::Pattern;
use crate::store::KeyValueReader;
use bindings::{HANDLER_EXPORT, Handler, HandlerPre};
use host::InvocationState;
use plugin::PluginShared;
pub use plugin::{Limits, Plugin, PluginInfo, PluginOptions};

/// The longest key a plugin may write to its key-value store, in bytes. A longer `set` or
/// `delete` fails the invocation as `resource-limit`; a longer `get` finds nothing.
pub const MAX_KEY_BYTES: usize = 1024;
/// Resource handles (key-value buckets, WASI streams and pollables…) one invocation may
/// hold open at once; opening more fails it as `resource-limit`.
pub const MAX_HANDLES: usize = 10_000;
/// Elements a table of a plugin may grow to; growing further fails the invocation as
/// `resource-limit`.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The longest plugin name, in bytes. A name is 1 to 64 ASCII letters, digits, `-`, `_`
/// or `.`, starting with a letter or digit.
pub const MAX_NAME_BYTES: usize = 64;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances that can exist at once across all plugins (pool slots). Invocations beyond
    /// it fail with `host-error`, so keep the bus's concurrency limit below it.
    pub max_instances: u32,
    /// The largest memory limit any plugin may be given, in bytes.
    pub max_memory_bytes: usize,
    /// Wasm stack per invocation, in bytes; deeper recursion traps as a stack overflow.
    pub max_wasm_stack: usize,
    /// How often the clock is checked for deadlines (and long computations yield).
    pub epoch_tick: Duration,
    /// Where compiled code is cached on disk (created if missing), so a restart does not
    /// compile every plugin again; `None` compiles every time. Entries are keyed by the
    /// SHA-256 of the component and of every engine setting that affects code generation
    /// (target, Cranelift flags, fuel and epoch instrumentation, Wasm features), under a
    /// directory per Wasmtime version, so a stale entry is never used. Wasmtime's cache
    /// worker trims the directory in the background.
    pub cache_dir: Option<PathBuf>,
    /// The largest component accepted, in bytes (64 MiB by default: a Python or
    /// JavaScript component with its interpreter is 10–30 MB). A plugins folder checks a
    /// file's size before reading it.
    pub max_component_bytes: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 1_000,
            max_memory_bytes: 1 << 30,
            max_wasm_stack: 512 << 10,
            epoch_tick: Duration::from_millis(1),
            cache_dir: None,
            max_component_bytes: 64 << 20,
        }
    }
}

/// Why a component could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid component (or are a core module).
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    /// The component does not export the handler interface.
    #[error(
        "the component does not export `{missing}` (it exports: {}); build it against the `evhost:plugin/handler` world",
        if .found.is_empty() { "nothing".to_owned() } else { .found.join(", ") }
    )]
    MissingExport {
        /// What is missing.
        missing: &'static str,
        /// What it exports instead.
        found: Vec<String>,
    },
    /// The export exists but its functions do not match the contract.
    #[error("the component's `{HANDLER_EXPORT}` export does not match the contract: {0}")]
    Incompatible(String),
    /// The component imports something evhost does not provide.
    #[error("the component imports something evhost does not provide: {0}")]
    UnsupportedImport(String),
    /// `metadata` failed or returned something unusable.
    #[error("the plugin's metadata is unusable: {0}")]
    Metadata(String),
    /// The component declares another name than the identity the host gave it (its file
    /// name, `-` and `_` counting as one character; see [`same_name`]): a plugin's name is
    /// its key-value namespace, so no file may claim another's.
    #[error(
        "the plugin declares the name `{declared}`, but it is loaded as `{expected}`: a plugin's name is \
         its file name (`{expected}.wasm`, where `-` and `_` count as the same character); rename the \
         file or the plugin"
    )]
    NameMismatch {
        /// The name the host expects (the file name).
        expected: String,
        /// What the plugin's metadata says (cut to a readable length).
        declared: String,
    },
    /// The name the host was asked to load the plugin as is not a valid plugin name.
    #[error("invalid plugin name: {0}")]
    InvalidName(String),
    /// The component file is larger than the runtime accepts.
    #[error("the component is {size} bytes, over the limit of {max} bytes (`runtime.max_component_mb`)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A limit is outside what the runtime allows.
    #[error("invalid limit: {0}")]
    Limits(String),
}

/// The error an epoch callback raises when an invocation passes its deadline.
#[derive(Debug, thiserror::Error)]
#[error("deadline exceeded")]
pub(crate) struct DeadlineExceeded;

/// How often the compiled-code cache was used; see [`Runtime::cache_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Components whose compiled code came from the cache.
    pub hits: usize,
    /// Components compiled and then stored in the cache.
    pub misses: usize,
}

#[derive(Debug)]
struct RuntimeCollector(Arc<Runtime>);

impl prometheus_client::collector::Collector for RuntimeCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(stats) = self.0.cache_stats() else {
            return Ok(());
        };
        let e = &mut encoder;
        crate::metrics::export::counter(
            e,
            "evhost_compile_cache_hits",
            "Plugins whose compiled code came from the on-disk cache.",
            stats.hits as u64,
        )?;
        crate::metrics::export::counter(
            e,
            "evhost_compile_cache_misses",
            "Plugins compiled and then stored in the on-disk cache.",
            stats.misses as u64,
        )
    }
}

/// Compiles, checks and links plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<InvocationState>,
    config: RuntimeConfig,
    cache: Option<Cache>,
    _epoch: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// An engine with the pooling allocator, fuel and epoch interruption, and a linker with
    /// the host interfaces plugins may import.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances)
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memory_size(config.max_memory_bytes)
            // Measured: resetting slots with madvise serializes threads; scanning the
            // pagemap and keeping a little resident does not.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(128 << 10);
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let cache = config.cache_dir.as_deref().map(open_cache).transpose()?;
        wasm.cache(cache.clone());
        let engine = Engine::new(&wasm).map_err(|e| anyhow::anyhow!("creating the Wasm engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        Handler::add_to_linker::<_, wasmtime::component::HasSelf<InvocationState>>(&mut linker, |state| {
            state
        })
        .map_err(|e| anyhow::anyhow!("linking the evhost interfaces: {e:#}"))?;
        let epoch = EpochTicker::start(engine.clone(), config.epoch_tick);
        Ok(Arc::new(Self {
            engine,
            linker,
            config,
            cache,
            _epoch: epoch,
        }))
    }

    /// The settings the runtime was made with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The engine (for compiling components elsewhere).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Hits and misses of the compiled-code cache since the runtime started, or `None`
    /// when [`RuntimeConfig::cache_dir`] is not set.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|cache| CacheStats {
            hits: cache.cache_hits(),
            misses: cache.cache_misses(),
        })
    }

    /// A collector of the runtime's metrics for a Prometheus registry: the compiled-code
    /// cache's hits and misses (when the cache is on).
    pub fn metrics_collector(self: &Arc<Self>) -> Box<dyn prometheus_client::collector::Collector> {
        Box::new(RuntimeCollector(Arc::clone(self)))
    }

    /// Compiles `bytes` (on a blocking thread), checks the world, pre-links it and reads
    /// its metadata. The plugin reads key-value data from `kv`, under its name: pass the
    /// store its bus applies effects to ([`AsyncEventBus::key_value_store`](crate::AsyncEventBus::key_value_store)),
    /// so that it reads what its earlier deliveries wrote. Its writes and emitted events
    /// are effects the bus applies (see [`EventHandler`](crate::EventHandler)).
    pub async fn load(
        self: &Arc<Self>,
        bytes: Vec<u8>,
        options: PluginOptions,
        kv: Arc<dyn KeyValueReader>,
    ) -> Result<Arc<Plugin>, LoadError> {
        if options.limits.memory_bytes > self.config.max_memory_bytes {
            return Err(LoadError::Limits(format!(
                "memory limit {} exceeds the runtime's maximum of {} bytes",
                options.limits.memory_bytes, self.config.max_memory_bytes
            )));
        }
        if bytes.len() as u64 > self.config.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len() as u64,
                max: self.config.max_component_bytes,
            });
        }
        if let Some(name) = &options.name {
            check_name(name).map_err(LoadError::InvalidName)?;
        }
        check_header(&bytes)?;
        let hash = content_hash(&bytes);
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || {
            let component = Component::new(&engine, &bytes);
            release_freed_memory();
            component
        })
        .await
        .map_err(|e| LoadError::Compile(format!("compiler task failed: {e}")))?
        .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let pre = self.link(&component)?;
        let imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();

        let mut plugin = Plugin {
            runtime: Arc::clone(self),
            shared: Arc::new(PluginShared {
                name: Arc::from(options.name.as_deref().unwrap_or_default()),
                limits: options.limits,
                config: options.config,
                kv,
                hash: Arc::from(hash.as_str()),
            }),
            pre,
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                hash,
                subscriptions: Vec::new(),
                imports,
            },
            concurrency: options.concurrency,
            retry: options.retry,
            ordered: options.ordered,
            fuel_consumed: Default::default(),
            reuse: options.reuse.unwrap_or(std::num::NonZeroU32::MIN),
            warm: Default::default(),
        };
        let metadata = plugin.call_metadata().await.map_err(LoadError::Metadata)?;
        if let Some(expected) = options.name
            && !same_name(&metadata.name, &expected)
        {
            return Err(LoadError::NameMismatch {
                expected,
                declared: crate::monitor::bound_text(metadata.name, MAX_NAME_BYTES),
            });
        }
        check_name(&metadata.name).map_err(LoadError::Metadata)?;
        if metadata.version.len() > MAX_VERSION_BYTES {
            return Err(LoadError::Metadata(format!(
                "the version is {} bytes long; at most {MAX_VERSION_BYTES} are allowed",
                metadata.version.len()
            )));
        }
        let subscriptions = options.subscriptions.unwrap_or(metadata.subscriptions);
        if subscriptions.is_empty() {
            return Err(LoadError::Metadata("it subscribes to nothing".to_owned()));
        }
        if subscriptions.len() > MAX_SUBSCRIPTIONS {
            return Err(LoadError::Metadata(format!(
                "it subscribes to {} patterns; at most {MAX_SUBSCRIPTIONS} are allowed",
                subscriptions.len()
            )));
        }
        for pattern in &subscriptions {
            if pattern.len() > MAX_PATTERN_BYTES {
                return Err(LoadError::Metadata(format!(
                    "a pattern is {} bytes long; at most {MAX_PATTERN_BYTES} are allowed",
                    pattern.len()
                )));
            }
            Pattern::parse(pattern).map_err(|e| LoadError::Metadata(e.to_string()))?;
        }
        // Invocations log and keep their key-value data under the plugin's name.
        Arc::get_mut(&mut plugin.shared)
            .expect("the metadata call has released the plugin's shared state")
            .name = Arc::from(metadata.name.as_str());
        plugin.info.name = metadata.name;
        plugin.info.version = metadata.version;
        plugin.info.subscriptions = subscriptions;
        let plugin = Arc::new(plugin);
        if plugin.reuse() > 1 {
            tokio::spawn(plugin::sweep_idle_instances(Arc::downgrade(&plugin)));
        }
        Ok(plugin)
    }

    /// Checks the component against the handler world and pre-links it.
    fn link(&self, component: &Component) -> Result<HandlerPre<InvocationState>, LoadError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if !exports.iter().any(|name| name == HANDLER_EXPORT) {
            return Err(LoadError::MissingExport {
                missing: HANDLER_EXPORT,
                found: exports,
            });
        }
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        HandlerPre::new(instance_pre).map_err(|e| LoadError::Incompatible(format!("{e:#}")))
    }
}

/// Gives the memory the compiler has freed back to the system. Compiling an interpreter's
/// component allocates a few hundred megabytes and frees them again, and glibc's allocator
/// keeps what was freed for reuse: without this, a host that compiled one Python plugin
/// went on holding ~200 MB it no longer used (`bench_polyglot`: a peak of 438 MB under load
/// against 234 MB with it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `malloc_trim` only returns free pages of the heap to the system, under the
    // allocator's own locks; it neither frees nor moves memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// Wasmtime's on-disk cache of compiled code in `dir`. Its key covers the component's
/// bytes and the engine's code-generation settings (`HashedEngineCompileEnv` in
/// wasmtime's `compile/code_builder.rs`), so one directory can serve differently
/// configured engines and Wasmtime versions without mixing their code.
fn open_cache(dir: &Path) -> anyhow::Result<Cache> {
    // Wasmtime insists on an absolute path.
    let dir = std::path::absolute(dir)
        .map_err(|e| anyhow::anyhow!("resolving the cache directory {}: {e}", dir.display()))?;
    let mut config = CacheConfig::new();
    config.with_directory(&dir);
    Cache::new(config)
        .map_err(|e| anyhow::anyhow!("opening the compiled-code cache in {}: {e:#}", dir.display()))
}

/// Longest version string a plugin may declare, in bytes.
const MAX_VERSION_BYTES: usize = 128;
/// Most subscription patterns a plugin may declare.
const MAX_SUBSCRIPTIONS: usize = 64;
/// Longest subscription pattern, in bytes.
const MAX_PATTERN_BYTES: usize = 256;

/// Whether two plugin names name the same plugin: equal, with `-` and `_` counting as one
/// character. cargo writes the crate `user-projection` to `user_projection.wasm`, so a file
/// name and the name its plugin declares may differ in just that way.
pub fn same_name(a: &str, b: &str) -> bool {
    name_identity(a) == name_identity(b)
}

/// The form of a plugin name that [`same_name`] compares: `_` read as `-`. Two names with
/// the same identity name one plugin.
pub fn name_identity(name: &str) -> String {
    name.replace('_', "-")
}

/// Checks a plugin name: 1 to [`MAX_NAME_BYTES`] ASCII letters, digits, `-`, `_` or `.`,
/// starting with a letter or digit. Names are key-value namespaces, URL path segments and
/// metric labels.
pub fn check_name(name: &str) -> Result<(), String> {
    let shown = || crate::monitor::bounded_copy(name, MAX_NAME_BYTES);
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the name `{}` is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            shown(),
            name.len()
        ));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if !name.as_bytes()[0].is_ascii_alphanumeric() || !name.bytes().all(allowed) {
        return Err(format!(
            "the name `{}` may hold only ASCII letters, digits, `-`, `_` and `.`, and must start with a \
             letter or digit",
            shown()
        ));
    }
    Ok(())
}

/// Tells the common wrong files apart before the compiler sees them, so the error says
/// what the file is rather than what a parser expected.
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::Compile(
            "not a WebAssembly binary (it does not start with the `\\0asm` magic bytes)".to_owned(),
        ));
    }
    if bytes[4..8] == CORE_MODULE {
        return Err(LoadError::Compile(
            "this is a core WebAssembly module, not a component: build the plugin with \
             `cargo build --target wasm32-wasip2` or `cargo component build`"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The first 16 hex digits of the SHA-256 of a component.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Advances the engine's epoch on a background thread until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("evhost-epoch".to_owned())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
