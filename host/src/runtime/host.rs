//! What a plugin may call: the publisher, logging, its key-value store and its config.
//!
//! All of it acts on one [`InvocationState`], which lives exactly as long as one `handle`
//! call. Key-value writes and emitted events are buffered there and applied only when the
//! call succeeds, so a failed or trapped invocation leaves nothing behind.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{config, keyvalue, logging, publisher, types};
use super::plugin::PluginShared;
use crate::event::{Data, Event, ExtensionValue};

/// Most bytes of a plugin's stderr kept per invocation (it carries panic messages).
const STDERR_CAPACITY: usize = 16 * 1024;
/// Most events one invocation may emit.
const MAX_EMITTED: usize = 1_000;
/// Most keys one `list-keys` page returns.
const KEYS_PAGE: usize = 1_000;

/// The `wasi:keyvalue` bucket resource: a plugin only ever opens its own.
#[derive(Debug)]
pub struct Bucket;

/// The store data of one invocation.
pub(crate) struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: MemoryGuard,
    pub(crate) plugin: Arc<PluginShared>,
    /// The event being handled (emitted events take their correlation from it).
    pub(crate) trigger: Option<Arc<Event>>,
    pub(crate) kv_writes: BTreeMap<String, Option<Vec<u8>>>,
    pub(crate) emitted: Vec<Event>,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) deadline: Instant,
    /// Set when the host itself failed while serving the plugin.
    pub(crate) host_error: Option<String>,
    /// A panic message the guest logged just before trapping (the guest SDK's panic hook
    /// logs it with context `panic`).
    pub(crate) panic_message: Option<String>,
}

impl InvocationState {
    pub(crate) fn new(plugin: Arc<PluginShared>, trigger: Option<Arc<Event>>, deadline: Instant) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopened directories, no environment, no arguments, no network, stdin closed.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = MemoryGuard::new(plugin.limits.memory_bytes);
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            plugin,
            trigger,
            kv_writes: BTreeMap::new(),
            emitted: Vec::new(),
            stderr,
            deadline,
            host_error: None,
            panic_message: None,
        }
    }

    /// Why the guest panicked, if it said so: the message its panic hook logged, or else
    /// what it wrote to stderr (where Rust's default hook puts it).
    pub(crate) fn panic_text(&self) -> String {
        match &self.panic_message {
            Some(message) => message.clone(),
            None => String::from_utf8_lossy(&self.stderr.contents()).trim().to_owned(),
        }
    }

    fn host_failure(&mut self, message: String) -> wasmtime::Error {
        self.host_error = Some(message.clone());
        wasmtime::Error::msg(message)
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Store limits that remember whether the memory ceiling was hit, so the resulting trap is
/// reported as `memory-limit` rather than a generic trap.
pub(crate) struct MemoryGuard {
    inner: StoreLimits,
    pub(crate) hit: bool,
}

impl MemoryGuard {
    fn new(memory_bytes: usize) -> Self {
        let inner = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .table_elements(100_000)
            .instances(50)
            .tables(50)
            .memories(10)
            .trap_on_grow_failure(true)
            .build();
        Self { inner, hit: false }
    }
}

impl ResourceLimiter for MemoryGuard {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.hit = true;
        }
        allowed
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl types::Host for InvocationState {}

impl publisher::Host for InvocationState {
    fn publish(&mut self, outgoing: publisher::OutgoingEvent) -> wasmtime::Result<Result<String, String>> {
        let Some(trigger) = self.trigger.clone() else {
            return Ok(Err(
                "events can only be published while handling an event".to_owned()
            ));
        };
        if self.emitted.len() >= MAX_EMITTED {
            return Ok(Err(format!(
                "an invocation may publish at most {MAX_EMITTED} events"
            )));
        }
        let mut event = Event::new(outgoing.type_, self.plugin.name.as_str(), serde_json::Value::Null);
        event.data = outgoing.data.map(Data::Binary);
        event.datacontenttype = outgoing.datacontenttype;
        event.dataschema = outgoing.dataschema;
        event.subject = outgoing.subject;
        // Decode JSON payloads so the event carries them as JSON (structured) data.
        if let Some(Data::Binary(bytes)) = &event.data
            && is_json(event.datacontenttype.as_deref())
        {
            match serde_json::from_slice(bytes) {
                Ok(value) => event.data = Some(Data::Json(value)),
                Err(e) => return Ok(Err(format!("data is declared JSON but does not parse: {e}"))),
            }
        }
        for (name, value) in outgoing.extensions {
            event.extensions.insert(name, extension_from_wit(value));
        }
        let event = event.caused_by(&trigger);
        if let Err(e) = event.validate() {
            return Ok(Err(e.to_string()));
        }
        let id = event.id.clone();
        self.emitted.push(event);
        Ok(Ok(id))
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    match content_type {
        None => true,
        Some(ct) => {
            let ct = ct.split(';').next().unwrap_or_default().trim();
            ct == "application/json" || ct.ends_with("+json") || ct == "text/json"
        }
    }
}

impl logging::Host for InvocationState {
    fn log(&mut self, level: logging::Level, context: String, message: String) -> wasmtime::Result<()> {
        if context == "panic" {
            self.panic_message = Some(message.clone());
        }
        let plugin = self.plugin.name.as_str();
        let event_id = self.trigger.as_ref().map(|e| e.id.as_str());
        match level {
            logging::Level::Trace => {
                tracing::trace!(target: "evhost::plugin", plugin, event.id = event_id, context, "{message}")
            }
            logging::Level::Debug => {
                tracing::debug!(target: "evhost::plugin", plugin, event.id = event_id, context, "{message}")
            }
            logging::Level::Info => {
                tracing::info!(target: "evhost::plugin", plugin, event.id = event_id, context, "{message}")
            }
            logging::Level::Warn => {
                tracing::warn!(target: "evhost::plugin", plugin, event.id = event_id, context, "{message}")
            }
            logging::Level::Error | logging::Level::Critical => {
                tracing::error!(target: "evhost::plugin", plugin, event.id = event_id, context, "{message}")
            }
        }
        Ok(())
    }
}

impl keyvalue::Host for InvocationState {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, keyvalue::Error>> {
        // A plugin has one store; "" and "default" both name it.
        if !(identifier.is_empty() || identifier == "default") {
            return Ok(Err(keyvalue::Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(Bucket)?))
    }
}

impl keyvalue::HostBucket for InvocationState {
    fn get(
        &mut self,
        _bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, keyvalue::Error>> {
        if let Some(pending) = self.kv_writes.get(&key) {
            return Ok(Ok(pending.clone()));
        }
        match self.plugin.kv.get(&self.plugin.name, &key) {
            Ok(value) => Ok(Ok(value)),
            Err(e) => Err(self.host_failure(format!("key-value read failed: {e}"))),
        }
    }

    fn set(
        &mut self,
        _bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), keyvalue::Error>> {
        self.kv_writes.insert(key, Some(value));
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        _bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), keyvalue::Error>> {
        self.kv_writes.insert(key, None);
        Ok(Ok(()))
    }

    fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, keyvalue::Error>> {
        Ok(keyvalue::HostBucket::get(self, bucket, key)?.map(|v| v.is_some()))
    }

    fn list_keys(
        &mut self,
        _bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<keyvalue::KeyResponse, keyvalue::Error>> {
        // Pages come from the committed store; writes of this invocation are merged into
        // the first page so a plugin sees its own keys.
        let (mut keys, cursor) = match self.plugin.kv.list_keys(&self.plugin.name, cursor, KEYS_PAGE) {
            Ok(page) => page,
            Err(e) => return Err(self.host_failure(format!("key-value listing failed: {e}"))),
        };
        keys.retain(|k| !matches!(self.kv_writes.get(k), Some(None)));
        if cursor.is_none() {
            for (key, value) in &self.kv_writes {
                if value.is_some() && !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            keys.sort();
        }
        Ok(Ok(keyvalue::KeyResponse { keys, cursor }))
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl config::Host for InvocationState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, config::Error>> {
        Ok(Ok(self.plugin.config.get(&key).cloned()))
    }

    fn get_all(&mut self) -> wasmtime::Result<Result<Vec<(String, String)>, config::Error>> {
        Ok(Ok(self
            .plugin
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()))
    }
}

/// The WIT form of an event.
pub(crate) fn event_to_wit(event: &Event) -> types::Event {
    types::Event {
        id: event.id.clone(),
        source: event.source.clone(),
        type_: event.ty.clone(),
        subject: event.subject.clone(),
        time: event
            .time
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        datacontenttype: event.datacontenttype.clone(),
        dataschema: event.dataschema.clone(),
        data: match &event.data {
            None => None,
            Some(Data::Json(value)) => Some(serde_json::to_vec(value).expect("JSON values serialize")),
            Some(Data::Binary(bytes)) => Some(bytes.clone()),
        },
        extensions: event
            .extensions
            .iter()
            .map(|(name, value)| (name.clone(), extension_to_wit(value)))
            .collect(),
    }
}

fn extension_to_wit(value: &ExtensionValue) -> types::ExtensionValue {
    match value {
        ExtensionValue::String(s) => types::ExtensionValue::String(s.clone()),
        ExtensionValue::Bool(b) => types::ExtensionValue::Boolean(*b),
        ExtensionValue::Integer(i) => types::ExtensionValue::Integer(*i),
    }
}

fn extension_from_wit(value: types::ExtensionValue) -> ExtensionValue {
    match value {
        types::ExtensionValue::String(s) => ExtensionValue::String(s),
        types::ExtensionValue::Boolean(b) => ExtensionValue::Bool(b),
        types::ExtensionValue::Integer(i) => ExtensionValue::Integer(i),
    }
}
