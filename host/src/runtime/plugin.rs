//! A loaded plugin: a pre-linked component that handles each event in a fresh instance,
//! or, when its author opts in, in an instance kept for a number of events.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use wasmtime::Store;

use super::bindings::{Handler, HandlerPre, types};
use super::host::{InvocationState, event_to_wit};
use super::{DeadlineExceeded, MAX_HANDLES, Runtime};
use crate::bus::{
    AsyncEventBus, BusError, Effects, EventHandler, HandlerError, SubscribeOptions, SubscriptionId,
};
use crate::event::Event;
use crate::monitor::FailureKind;
use crate::store::KeyValueReader;

/// How long past its deadline a call may run (inside a host function, say) before the
/// tokio timeout ends it. Guest code is stopped at the deadline by epoch interruption;
/// this bounds what a host call can add.
const BACKSTOP: Duration = Duration::from_millis(100);

/// How long a kept instance may sit unused before it is dropped (and its memory with it).
const IDLE_INSTANCE: Duration = Duration::from_secs(60);

/// How often a plugin's kept instances are checked for idleness: one is dropped between
/// one and one and a quarter minutes after its last event.
const IDLE_SWEEP: Duration = Duration::from_secs(15);

/// Per-invocation budgets of a plugin: what its code may compute and hold, and what the
/// host may hold or do on its behalf. Going over fuel, the deadline or the memory ceiling
/// fails the invocation as `out-of-fuel`, `timeout` or `memory-limit`; going over a host
/// budget (key-value writes, emitted events) as `resource-limit`. Output over
/// `log_bytes` is dropped, never a failure. Serializes with `timeout_ms` for the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel per invocation: roughly the number of Wasm instructions it may execute
    /// (10 billion by default, a few seconds of computation).
    pub fuel: u64,
    /// Wall-clock time per invocation, host calls included (5 s by default).
    #[serde(
        rename = "timeout_ms",
        serialize_with = "serialize_millis",
        deserialize_with = "deserialize_millis"
    )]
    pub timeout: Duration,
    /// Linear memory per instance, in bytes (64 MiB by default).
    pub memory_bytes: usize,
    /// Bytes of keys and values one invocation may hand to key-value `set`, all calls
    /// together, overwrites included (2 MiB by default). A single key is at most
    /// [`MAX_KEY_BYTES`](crate::runtime::MAX_KEY_BYTES).
    pub kv_write_bytes: usize,
    /// Key-value `set` and `delete` calls per invocation (10,000 by default).
    pub kv_writes: usize,
    /// Events one invocation may emit (100 by default).
    pub emit_events: usize,
    /// Bytes of the events one invocation emits, all together: data, type, subject and
    /// the other attributes (1 MiB by default).
    pub emit_bytes: usize,
    /// How many hops from the event that started a chain an emitted event may be: an
    /// event published from outside is at depth 0, an event emitted while handling it at
    /// 1, and so on (32 by default). Stops a cycle of plugins emitting for each other.
    pub emit_depth: u32,
    /// Bytes of output one invocation may log through `wasi:logging`, stdout and stderr
    /// together (64 KiB by default); what comes after is dropped and counted.
    pub log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            timeout: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            kv_write_bytes: 2 << 20,
            kv_writes: 10_000,
            emit_events: 100,
            emit_bytes: 1 << 20,
            emit_depth: 32,
            log_bytes: 64 << 10,
        }
    }
}

/// Operators read milliseconds, not serde's `{secs, nanos}` for a `Duration`.
fn serialize_millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

fn deserialize_millis<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

/// How a plugin is run: its limits, config values and optional overrides.
#[derive(Debug, Clone, Default)]
pub struct PluginOptions {
    /// The name the plugin must declare. When set, the component's metadata must declare
    /// this name, `-` and `_` counting as one character ([`same_name`](super::same_name)),
    /// or the load is refused, so no component can take over another plugin's data (a
    /// plugins folder sets it to the file name). Either way the plugin is known by the name
    /// it declares: its subscription name and key-value namespace.
    pub name: Option<String>,
    /// Per-invocation budgets.
    pub limits: Limits,
    /// Values the plugin reads through `wasi:config/store`.
    pub config: BTreeMap<String, String>,
    /// Patterns to subscribe to instead of those the plugin declares.
    pub subscriptions: Option<Vec<String>>,
    /// Most concurrent invocations of this plugin (the bus's default otherwise).
    pub concurrency: Option<usize>,
    /// How its failures are retried (the bus's default otherwise).
    pub retry: Option<crate::bus::RetryPolicy>,
    /// Opt-in instance reuse: an instance serves up to this many events, one at a time,
    /// before it is dropped; `None` (the default) runs every event in a fresh instance.
    /// Whatever the plugin keeps in memory survives from one event to the next, so only a
    /// plugin written for it should set this. An instance is dropped at once after any
    /// failure (an error it returns, a trap, a limit hit), and fuel, the deadline and the
    /// host budgets are counted afresh for each event; the memory ceiling holds for the
    /// instance's whole life, since its memory never shrinks. At most `concurrency`
    /// instances are kept, each holding a slot of [`RuntimeConfig::max_instances`](crate::RuntimeConfig::max_instances),
    /// and one left unused for a minute is dropped.
    pub reuse: Option<NonZeroU32>,
    /// Per-key order across hosts: on a log shared by several hosts (NATS), each ordering
    /// key's events reach the plugin one at a time, in publish order, whichever host runs
    /// them, at the cost of parallelism (a key's partition waits while one of its events
    /// is retried). Without it the hosts share the plugin's events freely. On one host
    /// the bus keeps per-key order anyway.
    pub ordered: bool,
}

/// What a plugin says about itself, plus what the host derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// The version the author gave.
    pub version: String,
    /// The content hash of the component (first 16 hex digits of its SHA-256).
    pub hash: String,
    /// The patterns it is subscribed to.
    pub subscriptions: Vec<String>,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
}

/// The part of a plugin its invocations share.
#[derive(Debug)]
pub(crate) struct PluginShared {
    pub(crate) name: Arc<str>,
    pub(crate) limits: Limits,
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) kv: Arc<dyn KeyValueReader>,
    /// The component's content hash, named with every success's effects.
    pub(crate) hash: Arc<str>,
}

/// A loaded plugin. It is an [`EventHandler`]: subscribe it to a bus with
/// [`Plugin::subscribe`] and the bus's ordering, limits and error monitor apply to it.
pub struct Plugin {
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) pre: HandlerPre<InvocationState>,
    pub(crate) info: PluginInfo,
    pub(crate) concurrency: Option<usize>,
    pub(crate) retry: Option<crate::bus::RetryPolicy>,
    pub(crate) ordered: bool,
    /// Fuel burned by all invocations so far.
    pub(crate) fuel_consumed: std::sync::atomic::AtomicU64,
    /// Events an instance may serve (1 unless the plugin opted into reuse).
    pub(crate) reuse: NonZeroU32,
    /// Instances kept for the next event, the most recently used last.
    pub(crate) warm: parking_lot::Mutex<Vec<WarmInstance>>,
}

/// An instance that handled its last event successfully and may serve another.
pub(crate) struct WarmInstance {
    store: Store<InvocationState>,
    instance: Handler,
    served: u32,
    /// On tokio's clock, so that tests can let time pass.
    idle_since: tokio::time::Instant,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// Name, versions, subscriptions and imports.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Per-invocation budgets.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Fuel burned by every invocation so far (failed ones included).
    pub fn fuel_consumed(&self) -> u64 {
        self.fuel_consumed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Most concurrent invocations, if the plugin sets its own limit.
    pub fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }

    /// How many events one instance serves: 1 (a fresh instance per event) unless the
    /// plugin opted into reuse ([`PluginOptions::reuse`]).
    pub fn reuse(&self) -> u32 {
        self.reuse.get()
    }

    /// Instances kept between events right now (always 0 without reuse).
    pub fn warm_instances(&self) -> usize {
        self.warm.lock().len()
    }

    /// Subscribes the plugin to its patterns on `bus`, as one subscription: a plugin sees
    /// the events of one key in order whichever of its patterns they match.
    pub fn subscribe(self: &Arc<Self>, bus: &AsyncEventBus) -> Result<SubscriptionId, BusError> {
        bus.subscribe_any(
            &self.info.subscriptions,
            Arc::clone(self) as Arc<dyn EventHandler>,
            self.subscribe_options(),
        )
    }

    /// The settings [`Plugin::subscribe`] uses, for callers that subscribe a wrapper of
    /// the plugin (the plugins folder subscribes a hot-swappable slot).
    pub fn subscribe_options(&self) -> SubscribeOptions {
        SubscribeOptions {
            name: Some(self.info.name.clone()),
            concurrency: self.concurrency,
            // The plugin enforces its own deadline; the bus's is a last resort.
            timeout: Some(self.shared.limits.timeout.saturating_add(BACKSTOP * 2)),
            retry: self.retry,
            ordered: self.ordered,
        }
    }

    fn new_store(&self, trigger: Option<Arc<Event>>) -> Store<InvocationState> {
        let deadline = self.deadline();
        let state = InvocationState::new(Arc::clone(&self.shared), trigger, deadline);
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|state| &mut state.limits);
        // Check the clock on every epoch tick: trap once past the deadline, otherwise yield
        // so a long computation does not hog the executor thread.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        self.refuel(&mut store);
        store
    }

    /// A full fuel budget and the next epoch check, for a new invocation.
    fn refuel(&self, store: &mut Store<InvocationState>) {
        store
            .set_fuel(self.shared.limits.fuel)
            .expect("the engine meters fuel");
        store.set_epoch_deadline(1);
    }

    /// The deadline of an invocation starting now (a timeout too long to add is as good
    /// as none: a day is further than any deadline).
    fn deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.shared.limits.timeout)
            .unwrap_or_else(|| now + Duration::from_secs(86_400))
    }

    /// The most recently used kept instance, readied for `event`, if there is one.
    fn take_warm(&self, event: &Arc<Event>) -> Option<WarmInstance> {
        if self.reuse == NonZeroU32::MIN {
            return None;
        }
        let mut warm = self.warm.lock().pop()?;
        warm.store.data_mut().begin(Arc::clone(event), self.deadline());
        self.refuel(&mut warm.store);
        Some(warm)
    }

    /// Drops the kept instances left unused for [`IDLE_INSTANCE`] (outside the lock:
    /// dropping an instance frees its memory). The least recently used are first.
    fn drop_idle(&self) {
        let stale: Vec<WarmInstance> = {
            let mut pool = self.warm.lock();
            let idle = pool
                .iter()
                .take_while(|warm| warm.idle_since.elapsed() >= IDLE_INSTANCE)
                .count();
            pool.drain(..idle).collect()
        };
        drop(stale);
    }

    /// Calls the plugin's `metadata` export in a fresh instance.
    pub(crate) async fn call_metadata(&self) -> Result<types::Metadata, String> {
        let mut store = self.new_store(None);
        let timeout = self.shared.limits.timeout.saturating_add(BACKSTOP);
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .evhost_plugin_event_handler()
                .call_metadata(&mut store)
                .await
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(format!("`metadata` did not return within {timeout:?}")),
            Ok(Ok(metadata)) => Ok(metadata),
            Ok(Err(error)) => {
                let (kind, message) = classify(&error, store.data());
                Err(format!("`metadata` failed ({kind}): {message}"))
            }
        };
        store.data().output.finish();
        result
    }

    /// One invocation in a fresh instance (or a kept one, when the plugin opted into
    /// reuse); effects are returned only on success.
    async fn invoke(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        let wit_event = event_to_wit(&event);
        let (mut store, kept) = match self.take_warm(&event) {
            Some(warm) => (warm.store, Some((warm.instance, warm.served))),
            None => (self.new_store(Some(event)), None),
        };
        let timeout = self.shared.limits.timeout;
        let call = async {
            // Instantiating runs the component's start functions: a trap or the deadline
            // there is the plugin's failure like one in `handle`.
            let (instance, served) = match kept {
                Some(kept) => kept,
                None => (self.pre.instantiate_async(&mut store).await?, 0),
            };
            let result = instance
                .evhost_plugin_event_handler()
                .call_handle(&mut store, &wit_event)
                .await?;
            Ok::<_, wasmtime::Error>((result, instance, served + 1))
        };
        let outcome = tokio::time::timeout(timeout.saturating_add(BACKSTOP), call).await;
        if let Ok(remaining) = store.get_fuel() {
            let burned = self.shared.limits.fuel.saturating_sub(remaining);
            self.fuel_consumed
                .fetch_add(burned, std::sync::atomic::Ordering::Relaxed);
        }
        store.data().output.finish();
        let result = match outcome {
            Err(_) => {
                return Err(HandlerError::new(
                    FailureKind::Timeout,
                    format!("no result within {timeout:?} (stopped inside a host call)"),
                ));
            }
            Ok(result) => result,
        };
        // Only an instance that succeeded is kept: after any failure it is dropped here.
        match result {
            Ok((Ok(()), instance, served)) => {
                let state = store.data_mut();
                let effects = Effects {
                    kv_namespace: self.shared.name.to_string(),
                    kv_writes: std::mem::take(&mut state.call.kv_writes).into_iter().collect(),
                    emitted: std::mem::take(&mut state.call.emitted),
                    version: Some(Arc::clone(&self.shared.hash)),
                };
                if served < self.reuse.get() {
                    self.warm.lock().push(WarmInstance {
                        store,
                        instance,
                        served,
                        idle_since: tokio::time::Instant::now(),
                    });
                }
                Ok(effects)
            }
            Ok((Err(types::HandlerError::Retry(reason)), ..)) => Err(HandlerError::retry(reason)),
            Ok((Err(types::HandlerError::Reject(reason)), ..)) => Err(HandlerError::reject(reason)),
            Err(error) => {
                let (kind, message) = classify(&error, store.data());
                Err(HandlerError::new(kind, message))
            }
        }
    }
}

/// Names what stopped a call: the host, a host budget, the deadline, the memory or table
/// ceiling, fuel, the guest exiting, or a trap (with the guest's panic message when it
/// printed one). What wasmtime reports without a trap code is the host's fault.
fn classify(error: &wasmtime::Error, state: &InvocationState) -> (FailureKind, String) {
    if let Some(message) = &state.call.host_error {
        return (FailureKind::HostError, message.clone());
    }
    if let Some(message) = &state.call.over_budget {
        return (FailureKind::ResourceLimit, message.clone());
    }
    if error.downcast_ref::<DeadlineExceeded>().is_some() {
        return (
            FailureKind::Timeout,
            format!("no result within {:?}", state.plugin.limits.timeout),
        );
    }
    if state.limits.memory_hit {
        return (
            FailureKind::MemoryLimit,
            format!(
                "memory limit of {} bytes reached",
                state.plugin.limits.memory_bytes
            ),
        );
    }
    if state.limits.table_hit {
        return (
            FailureKind::ResourceLimit,
            format!("a table grew past its limit: {error:#}"),
        );
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return (
            FailureKind::Trap,
            format!(
                "the plugin exited with code {} instead of returning a result",
                exit.0
            ),
        );
    }
    if error
        .downcast_ref::<wasmtime::component::ResourceTableError>()
        .is_some()
    {
        return (
            FailureKind::ResourceLimit,
            format!("more than {MAX_HANDLES} resource handles open at once: {error:#}"),
        );
    }
    let text = format!("{error:#}");
    // Wasmtime's caps on the handles a component holds and on the instances, tables and
    // memories it creates have no error type of their own.
    if text.contains("cannot allocate another handle") || text.contains("resource limit exceeded") {
        return (FailureKind::ResourceLimit, text);
    }
    let stderr = state.panic_text();
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => (
            FailureKind::OutOfFuel,
            format!("fuel budget of {} exhausted", state.plugin.limits.fuel),
        ),
        Some(wasmtime::Trap::Interrupt) => (FailureKind::Timeout, "interrupted".to_owned()),
        Some(wasmtime::Trap::StackOverflow) => (
            FailureKind::Trap,
            "stack overflow: the call stack was exhausted".to_owned(),
        ),
        Some(trap) if stderr.is_empty() => (FailureKind::Trap, trap.to_string()),
        Some(trap) => (FailureKind::Trap, format!("{trap}: {stderr}")),
        None => (FailureKind::HostError, text),
    }
}

#[async_trait::async_trait]
impl EventHandler for Plugin {
    fn name(&self) -> &str {
        &self.info.name
    }

    fn version(&self) -> Option<&str> {
        Some(&self.info.hash)
    }

    /// One invocation in a fresh instance; its key-value writes and emitted events are
    /// returned (on success only) for the bus to apply with the delivery.
    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        // One span per invocation: the plugin's own log lines and the host's nest in it.
        let span = tracing::info_span!(
            "invocation",
            plugin = %self.info.name,
            version = %self.info.hash,
            event.id = %event.id,
            event.r#type = %event.ty,
            outcome = tracing::field::Empty,
        );
        let result = self
            .invoke(event)
            .instrument(span.clone())
            .await
            .map_err(|e| e.with_version(Some(&self.info.hash)));
        span.record(
            "outcome",
            match &result {
                Ok(_) => "ok",
                Err(e) => e.kind().as_str(),
            },
        );
        if let Ok(effects) = &result
            && !effects.emitted.is_empty()
        {
            let types: Vec<&str> = effects.emitted.iter().map(|e| e.ty.as_str()).collect();
            span.in_scope(|| tracing::info!(emitted = ?types, "plugin published events"));
        }
        result
    }
}

/// Drops `plugin`'s idle kept instances every [`IDLE_SWEEP`], for as long as it exists, so
/// a plugin that has gone quiet does not hold instances and their memory.
pub(crate) async fn sweep_idle_instances(plugin: std::sync::Weak<Plugin>) {
    let mut every = tokio::time::interval(IDLE_SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(plugin) = plugin.upgrade() else {
            return;
        };
        plugin.drop_idle();
    }
}
