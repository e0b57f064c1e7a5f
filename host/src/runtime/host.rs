//! What a plugin may call: the publisher, logging, its key-value store and its config.
//!
//! All of it acts on one [`InvocationState`], which lives exactly as long as one `handle`
//! call. Key-value writes and emitted events are buffered there and applied only when the
//! call succeeds, so a failed or trapped invocation leaves nothing behind.
//!
//! Everything the host holds or does for the guest is charged to the invocation, like the
//! guest's own fuel and memory: bytes and calls of key-value writes, emitted events (count,
//! bytes, causation depth), open resource handles, listing cursors and output. Going over a
//! budget traps the guest and the invocation fails as `resource-limit`; output over its
//! budget is dropped instead. Host calls that read the store are async, so the deadline
//! holds inside them and no executor thread waits on the disk.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{config, keyvalue, logging, publisher, types};
use super::plugin::{Limits, PluginShared};
use super::{MAX_HANDLES, MAX_KEY_BYTES, MAX_TABLE_ELEMENTS};
use crate::event::{Data, Event, ExtensionValue};
use crate::monitor::{MAX_MESSAGE_BYTES, bound_text, bounded_copy};

/// Most keys one `list-keys` page returns.
const KEYS_PAGE: usize = 1_000;
/// Longest line of plugin output logged as one record; longer lines are split.
const MAX_LINE_BYTES: usize = 4_096;
/// `list-keys` cursors an invocation can resume from: the most recent ones. A listing
/// goes from each page to the next, so older cursors are let go of and the host holds a
/// bounded number of keys however long the plugin lists.
const LIVE_CURSORS: usize = 64;

/// The `wasi:keyvalue` bucket resource: a plugin only ever opens its own.
#[derive(Debug)]
pub struct Bucket;

/// The store data of one instance: of one invocation, unless the plugin opted into reuse.
pub(crate) struct InvocationState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: InstanceLimits,
    pub(crate) plugin: Arc<PluginShared>,
    /// The event being handled (emitted events take their correlation from it).
    pub(crate) trigger: Option<Arc<Event>>,
    /// What the current call of `handle` has done so far.
    pub(crate) call: CallState,
    /// Cursors are numbered from 0 in the order they were handed out, for the instance's
    /// life.
    next_cursor: u64,
    pub(crate) output: PluginOutput,
    pub(crate) deadline: Instant,
}

/// What one call of `handle` has buffered and run into: a reused instance starts each
/// call with a fresh one.
#[derive(Default)]
pub(crate) struct CallState {
    pub(crate) kv_writes: BTreeMap<String, Option<Vec<u8>>>,
    /// `set` and `delete` calls so far, and the bytes they carried.
    kv_calls: usize,
    kv_bytes: usize,
    /// The most recent `list-keys` cursors with the key each resumes after.
    cursors: VecDeque<(u64, String)>,
    pub(crate) emitted: Vec<Event>,
    emitted_bytes: usize,
    /// Set when the host itself failed while serving the plugin.
    pub(crate) host_error: Option<String>,
    /// Set when the guest went over one of the host's budgets; the trap that follows is
    /// a `resource-limit` failure with this message.
    pub(crate) over_budget: Option<String>,
    /// A panic message the guest logged just before trapping (the guest SDK's panic hook
    /// logs it with context `panic`).
    pub(crate) panic_message: Option<String>,
}

impl InvocationState {
    pub(crate) fn new(plugin: Arc<PluginShared>, trigger: Option<Arc<Event>>, deadline: Instant) -> Self {
        let output = PluginOutput::new(
            Arc::clone(&plugin.name),
            trigger.as_ref().map(|event| event.id.clone()),
            plugin.limits.log_bytes,
        );
        // No preopened directories, no environment, no arguments, no network, stdin closed;
        // stdout and stderr go to the log.
        let wasi = WasiCtx::builder()
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let limits = InstanceLimits::new(plugin.limits.memory_bytes);
        Self {
            wasi,
            table,
            limits,
            plugin,
            trigger,
            call: CallState::default(),
            next_cursor: 0,
            output,
            deadline,
        }
    }

    /// Readies a reused instance's state for its next event: the call's state, the
    /// limit-hit flags and the output budget start afresh. What the guest keeps (its
    /// memory, its open handles) is the author's to manage.
    pub(crate) fn begin(&mut self, trigger: Arc<Event>, deadline: Instant) {
        self.output.begin(Some(trigger.id.clone()));
        self.trigger = Some(trigger);
        self.deadline = deadline;
        self.limits.memory_hit = false;
        self.limits.table_hit = false;
        self.call = CallState::default();
    }

    /// Why the guest panicked, if it said so: the message its panic hook logged, or else
    /// the end of what it wrote to stderr (where Rust's default hook and most language
    /// runtimes put it).
    pub(crate) fn panic_text(&self) -> String {
        match &self.call.panic_message {
            Some(message) => message.clone(),
            None => self.output.stderr_tail(),
        }
    }

    fn limits(&self) -> &Limits {
        &self.plugin.limits
    }

    fn host_failure(&mut self, message: String) -> wasmtime::Error {
        self.call.host_error = Some(message.clone());
        wasmtime::Error::msg(message)
    }

    /// Traps the guest: it went over a budget.
    fn over(&mut self, message: String) -> wasmtime::Error {
        self.call.over_budget = Some(message.clone());
        wasmtime::Error::msg(message)
    }

    /// Charges one key-value write of `bytes` to the invocation's budgets.
    fn charge_kv_write(&mut self, key: &str, bytes: usize) -> wasmtime::Result<()> {
        if key.len() > MAX_KEY_BYTES {
            return Err(self.over(format!(
                "a key-value key of {} bytes is longer than the {MAX_KEY_BYTES} allowed",
                key.len()
            )));
        }
        self.call.kv_calls += 1;
        self.call.kv_bytes = self.call.kv_bytes.saturating_add(bytes);
        let limits = *self.limits();
        if self.call.kv_calls > limits.kv_writes {
            return Err(self.over(format!(
                "more than {} key-value writes in one invocation (limit `kv_writes`)",
                limits.kv_writes
            )));
        }
        if self.call.kv_bytes > limits.kv_write_bytes {
            return Err(self.over(format!(
                "more than {} bytes of key-value writes in one invocation (limit `kv_write_bytes`)",
                limits.kv_write_bytes
            )));
        }
        Ok(())
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

/// The instance's memory and table ceilings. Growing past either traps, and the flag it
/// sets tells the trap apart: `memory-limit` or `resource-limit` rather than a plain trap.
pub(crate) struct InstanceLimits {
    memory_bytes: usize,
    pub(crate) memory_hit: bool,
    pub(crate) table_hit: bool,
}

impl InstanceLimits {
    fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            memory_hit: false,
            table_hit: false,
        }
    }
}

impl ResourceLimiter for InstanceLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes || maximum.is_some_and(|max| desired > max) {
            self.memory_hit = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_bytes);
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_hit = true;
        Err(error.context("growing memory failed"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            self.table_hit = true;
            wasmtime::bail!("a table may hold at most {MAX_TABLE_ELEMENTS} elements (growing to {desired})");
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_hit = true;
        Err(error.context("growing a table failed"))
    }

    fn instances(&self) -> usize {
        50
    }

    fn tables(&self) -> usize {
        50
    }

    fn memories(&self) -> usize {
        10
    }
}

/// Which of a plugin's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Where one invocation's output goes: the host's log, a line at a time, tagged with the
/// plugin and the event, within the invocation's `log_bytes`. Writes always succeed (a
/// plugin printing diagnostics must never trap for it); what is over the budget is
/// dropped and counted, and one warning says so when the invocation ends.
#[derive(Clone)]
pub(crate) struct PluginOutput(Arc<Mutex<OutputState>>);

struct OutputState {
    plugin: Arc<str>,
    event_id: Option<String>,
    /// Bytes that may still be logged.
    remaining: usize,
    budget: usize,
    dropped: usize,
    /// The unfinished line of stdout and of stderr.
    partial: [Vec<u8>; 2],
    /// The last bytes written to stderr, for a failure message.
    stderr_tail: Vec<u8>,
}

impl OutputState {
    fn new(plugin: Arc<str>, event_id: Option<String>, budget: usize) -> Self {
        Self {
            plugin,
            event_id,
            remaining: budget,
            budget,
            dropped: 0,
            partial: [Vec::new(), Vec::new()],
            stderr_tail: Vec::new(),
        }
    }
}

impl PluginOutput {
    fn new(plugin: Arc<str>, event_id: Option<String>, budget: usize) -> Self {
        Self(Arc::new(Mutex::new(OutputState::new(plugin, event_id, budget))))
    }

    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.0.lock()
    }

    fn stream(&self, stream: Stream) -> OutputHandle {
        OutputHandle {
            output: self.clone(),
            stream,
        }
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut state = self.lock();
        if stream == Stream::Stderr {
            let tail = &mut state.stderr_tail;
            tail.extend_from_slice(&bytes[bytes.len().saturating_sub(MAX_MESSAGE_BYTES)..]);
            let excess = tail.len().saturating_sub(MAX_MESSAGE_BYTES);
            tail.drain(..excess);
        }
        let kept = bytes.len().min(state.remaining);
        state.remaining -= kept;
        state.dropped += bytes.len() - kept;
        let mut rest = &bytes[..kept];
        while !rest.is_empty() {
            let index = stream as usize;
            let room = MAX_LINE_BYTES - state.partial[index].len();
            let (line_end, take) = match rest.iter().position(|b| *b == b'\n') {
                Some(newline) if newline <= room => (true, newline + 1),
                _ if rest.len() >= room => (true, room),
                _ => (false, rest.len()),
            };
            state.partial[index].extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if line_end {
                let line = std::mem::take(&mut state.partial[index]);
                state.emit(stream, &line);
            }
        }
    }

    /// One `wasi:logging` record, charged to the same budget as stdout and stderr.
    fn log(&self, level: logging::Level, context: &str, message: String) {
        let mut state = self.lock();
        let cost = context.len() + message.len();
        let kept = cost.min(state.remaining);
        state.remaining -= kept;
        state.dropped += cost - kept;
        if kept == 0 {
            return;
        }
        let message = bound_text(message, kept.min(MAX_LINE_BYTES));
        let plugin = &*state.plugin;
        let event_id = state.event_id.as_deref();
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
    }

    /// The end of what the plugin wrote to stderr, trimmed.
    fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.lock().stderr_tail)
            .trim()
            .to_owned()
    }

    /// Starts the output of another invocation of the same instance, with a full budget.
    fn begin(&self, event_id: Option<String>) {
        let mut state = self.lock();
        *state = OutputState::new(Arc::clone(&state.plugin), event_id, state.budget);
    }

    /// Logs the unfinished lines and, if output was dropped, how much.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut state.partial[stream as usize]);
            if !line.is_empty() {
                state.emit(stream, &line);
            }
        }
        if state.dropped > 0 {
            tracing::warn!(
                target: "evhost::plugin",
                plugin = &*state.plugin,
                event.id = state.event_id.as_deref(),
                dropped_bytes = state.dropped,
                "the plugin's output went over its budget of {} bytes (limit `log_bytes`); the rest was dropped",
                state.budget
            );
            state.dropped = 0;
        }
    }
}

impl OutputState {
    fn emit(&self, stream: Stream, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\n', '\r']);
        let (plugin, event_id, stream) = (&*self.plugin, self.event_id.as_deref(), stream.name());
        tracing::info!(target: "evhost::plugin", plugin, event.id = event_id, stream, "{line}");
    }
}

/// One of the streams of a [`PluginOutput`], as WASI sees it.
pub(crate) struct OutputHandle {
    output: PluginOutput,
    stream: Stream,
}

impl IsTerminal for OutputHandle {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputHandle {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.output.stream(self.stream))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.output.stream(self.stream))
    }
}

#[async_trait::async_trait]
impl Pollable for OutputHandle {
    async fn ready(&mut self) {}
}

impl OutputStream for OutputHandle {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always room: what is over the budget is dropped, not refused.
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for OutputHandle {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
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
        // Charged before anything is checked or copied: a refused event cost the host too.
        self.call.emitted_bytes = self.call.emitted_bytes.saturating_add(outgoing_size(&outgoing));
        let limits = *self.limits();
        if self.call.emitted.len() >= limits.emit_events {
            return Err(self.over(format!(
                "more than {} emitted events in one invocation (limit `emit_events`)",
                limits.emit_events
            )));
        }
        if self.call.emitted_bytes > limits.emit_bytes {
            return Err(self.over(format!(
                "more than {} bytes of emitted events in one invocation (limit `emit_bytes`)",
                limits.emit_bytes
            )));
        }
        let depth = trigger.causation_depth().saturating_add(1);
        if depth > limits.emit_depth {
            return Err(self.over(format!(
                "an emitted event would be {depth} hops from the event that started its chain; \
                 at most {} are allowed (limit `emit_depth`): is there a cycle of plugins emitting \
                 for each other?",
                limits.emit_depth
            )));
        }
        let mut event = Event::new(outgoing.type_, &*self.plugin.name, serde_json::Value::Null);
        event.id = emitted_id(&self.plugin.name, &trigger, self.call.emitted.len());
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
            return Ok(Err(bound_text(e.to_string(), MAX_MESSAGE_BYTES)));
        }
        let id = event.id.clone();
        self.call.emitted.push(event);
        Ok(Ok(id))
    }
}

/// The id of the `index`th event `plugin` emits handling `trigger`: the same whenever the
/// handler runs for that event, so a run repeated after a crash emits the same events and
/// a log that recognises duplicates (by `source` + `id`) stores them once.
fn emitted_id(plugin: &str, trigger: &Event, index: usize) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6576_686f_7374_2f65_6d69_7474_6564_0001);
    let name = format!("{plugin}\n{}\n{}\n{index}", trigger.source, trigger.id);
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// What an outgoing event costs the host to hold: its bytes, roughly as stored.
fn outgoing_size(event: &publisher::OutgoingEvent) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let extensions: usize = event
        .extensions
        .iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    types::ExtensionValue::String(s) => s.len(),
                    types::ExtensionValue::Boolean(_) | types::ExtensionValue::Integer(_) => 8,
                }
        })
        .sum();
    event.type_.len()
        + text(&event.subject)
        + text(&event.datacontenttype)
        + text(&event.dataschema)
        + event.data.as_ref().map_or(0, Vec::len)
        + extensions
}

/// Data without a content type is JSON (the CloudEvents JSON format's default).
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(crate::event::is_json_media_type)
}

impl logging::Host for InvocationState {
    fn log(&mut self, level: logging::Level, context: String, message: String) -> wasmtime::Result<()> {
        if context == "panic" {
            self.call.panic_message = Some(bounded_copy(&message, MAX_MESSAGE_BYTES));
        }
        self.output.log(level, &context, message);
        Ok(())
    }
}

impl keyvalue::Host for InvocationState {
    fn open(&mut self, identifier: String) -> wasmtime::Result<Result<Resource<Bucket>, keyvalue::Error>> {
        // A plugin has one store; "" and "default" both name it.
        if !(identifier.is_empty() || identifier == "default") {
            return Ok(Err(keyvalue::Error::NoSuchStore));
        }
        match self.table.push(Bucket) {
            Ok(bucket) => Ok(Ok(bucket)),
            Err(_) => Err(self.over(format!("more than {MAX_HANDLES} resource handles open at once"))),
        }
    }
}

impl keyvalue::HostBucket for InvocationState {
    async fn get(
        &mut self,
        _bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, keyvalue::Error>> {
        if let Some(pending) = self.call.kv_writes.get(&key) {
            return Ok(Ok(pending.clone()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Ok(Ok(None));
        }
        match self.plugin.kv.get(&self.plugin.name, &key).await {
            Ok(value) => Ok(Ok(value.map(|versioned| versioned.value))),
            Err(e) => Err(self.host_failure(format!("key-value read failed: {e}"))),
        }
    }

    fn set(
        &mut self,
        _bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), keyvalue::Error>> {
        self.charge_kv_write(&key, key.len() + value.len())?;
        self.call.kv_writes.insert(key, Some(value));
        Ok(Ok(()))
    }

    fn delete(
        &mut self,
        _bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), keyvalue::Error>> {
        self.charge_kv_write(&key, key.len())?;
        self.call.kv_writes.insert(key, None);
        Ok(Ok(()))
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, keyvalue::Error>> {
        Ok(keyvalue::HostBucket::get(self, bucket, key)
            .await?
            .map(|v| v.is_some()))
    }

    /// A page of the committed keys with this invocation's writes merged in, in key order.
    /// A cursor names the key the next page starts after, so every page costs about its
    /// own size however far into the store it is.
    async fn list_keys(
        &mut self,
        _bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<keyvalue::KeyResponse, keyvalue::Error>> {
        let after = match cursor {
            None => None,
            Some(cursor) => match self.call.cursors.iter().find(|(id, _)| *id == cursor) {
                Some((_, after)) => Some(after.clone()),
                None => {
                    return Ok(Err(keyvalue::Error::Other(format!(
                        "unknown or expired cursor {cursor}: only the last {LIVE_CURSORS} can be resumed"
                    ))));
                }
            },
        };
        let page = match self
            .plugin
            .kv
            .list_keys(&self.plugin.name, after.as_deref(), KEYS_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => return Err(self.host_failure(format!("key-value listing failed: {e}"))),
        };
        // The committed page covers the keys up to its last one (all of them when nothing
        // follows); the buffered writes in the same range are merged in.
        let upper = match (page.more, page.keys.last()) {
            (true, Some(last)) => Bound::Included(last.as_str()),
            _ => Bound::Unbounded,
        };
        let lower = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut buffered = self.call.kv_writes.range::<str, _>((lower, upper)).peekable();
        let mut committed = page.keys.iter().peekable();
        let mut keys = Vec::new();
        let mut truncated = false;
        loop {
            let next = match (committed.peek(), buffered.peek()) {
                (None, None) => break,
                (Some(c), Some((b, _))) if c.as_str() == b.as_str() => {
                    committed.next();
                    buffered.next().map(|(k, v)| (k, v.is_some()))
                }
                (Some(c), Some((b, _))) if c.as_str() > b.as_str() => {
                    buffered.next().map(|(k, v)| (k, v.is_some()))
                }
                (Some(_), _) => committed.next().map(|k| (k, true)),
                (None, Some(_)) => buffered.next().map(|(k, v)| (k, v.is_some())),
            };
            let Some((key, present)) = next else { break };
            if !present {
                continue;
            }
            if keys.len() == KEYS_PAGE {
                truncated = true;
                break;
            }
            keys.push(key.clone());
        }
        let resume_after = if truncated {
            keys.last().cloned()
        } else if page.more {
            page.keys.last().cloned()
        } else {
            None
        };
        let cursor = resume_after.map(|key| {
            if self.call.cursors.len() == LIVE_CURSORS {
                self.call.cursors.pop_front();
            }
            let id = self.next_cursor;
            self.next_cursor += 1;
            self.call.cursors.push_back((id, key));
            id
        });
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
