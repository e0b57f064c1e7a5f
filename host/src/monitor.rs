//! The error monitor: one bounded stream of every handler failure.
//!
//! Failures are reported with [`ErrorMonitor::report`], which never waits: when the
//! channel is full the record is dropped and counted in [`ErrorMonitor::overflowed`], so a
//! slow consumer can never stall publishers. Consume the stream with
//! [`ErrorMonitor::errors`], or let [`ErrorMonitor::start_logging`] log it through `tracing`.

use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The capacity of the error channel unless configured otherwise.
pub const DEFAULT_CAPACITY: usize = 100;

/// The longest failure message kept, in bytes. A handler's reason, a panic or trap
/// message, the host's own error: whatever reaches the error monitor, `GET /errors`, the
/// log and the dead-letter history is cut to this size (at a character boundary, saying
/// how much was cut), so a plugin cannot fill the host's memory with its messages.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes (plus a short note of how much was cut), at a
/// character boundary.
pub(crate) fn bound_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let total = text.len();
    let end = char_floor(&text, max);
    text.truncate(end);
    text.push_str(&format!("… [{} of {total} bytes cut]", total - end));
    text
}

/// [`bound_text`] of a borrowed text: copies only what is kept.
pub(crate) fn bounded_copy(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let end = char_floor(text, max);
    format!(
        "{}… [{} of {} bytes cut]",
        &text[..end],
        text.len() - end,
        text.len()
    )
}

/// The largest character boundary of `text` at or below `index`.
fn char_floor(text: &str, index: usize) -> usize {
    let mut end = index.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// How a handler invocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler asked to be retried later (a transient failure).
    Retry,
    /// The handler refused the event for good; retrying cannot help.
    Reject,
    /// A native handler panicked.
    Panic,
    /// A Wasm handler trapped (a guest panic, `unreachable`, stack overflow…).
    Trap,
    /// A Wasm handler used up its fuel budget.
    OutOfFuel,
    /// The invocation ran past its deadline.
    Timeout,
    /// A Wasm handler tried to grow past its memory ceiling.
    MemoryLimit,
    /// A Wasm handler went over a budget the host enforces per invocation: key-value bytes
    /// or keys written, events emitted (count, bytes or causation depth), open resource
    /// handles, table elements — or the bus had no room for its emitted events in time.
    ResourceLimit,
    /// The host failed while serving the handler (not the handler's fault).
    HostError,
    /// A plugin file could not be loaded (not an invocation: the event fields are empty).
    PluginLoad,
}

impl FailureKind {
    /// Every kind, in a stable order (for metrics).
    pub const ALL: [FailureKind; 10] = [
        Self::Retry,
        Self::Reject,
        Self::Panic,
        Self::Trap,
        Self::OutOfFuel,
        Self::Timeout,
        Self::MemoryLimit,
        Self::ResourceLimit,
        Self::HostError,
        Self::PluginLoad,
    ];

    /// The kebab-case name used in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Reject => "reject",
            Self::Panic => "panic",
            Self::Trap => "trap",
            Self::OutOfFuel => "out-of-fuel",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory-limit",
            Self::ResourceLimit => "resource-limit",
            Self::HostError => "host-error",
            Self::PluginLoad => "plugin-load",
        }
    }

    /// Position in [`FailureKind::ALL`].
    pub(crate) fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|k| *k == self)
            .expect("every kind is listed in ALL")
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One handler failure, as the error monitor reports it (and the dead-letter queue keeps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The subscription that failed.
    pub subscription: String,
    /// The handler's version (a plugin's content hash), when it has one.
    pub handler_version: Option<String>,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// 1 for the first delivery, counting up with each retry.
    pub attempt: u32,
    /// How it failed.
    pub kind: FailureKind,
    /// What the handler or the host said.
    pub message: String,
    /// When the failure was observed.
    pub time: DateTime<Utc>,
}

impl fmt::Display for FailureRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed on {} {} (attempt {}): {}: {}",
            self.subscription, self.event_type, self.event_id, self.attempt, self.kind, self.message
        )
    }
}

/// The receiving end of the error monitor; see [`ErrorMonitor::errors`].
pub type ErrorStream = mpsc::Receiver<FailureRecord>;

/// A bounded, never-blocking channel of [`FailureRecord`]s with an overflow counter.
#[derive(Debug)]
pub struct ErrorMonitor {
    sender: mpsc::Sender<FailureRecord>,
    receiver: Mutex<Option<ErrorStream>>,
    reported: AtomicU64,
    overflowed: AtomicU64,
}

impl ErrorMonitor {
    /// A monitor whose channel holds up to `capacity` unconsumed records.
    ///
    /// # Panics
    /// If `capacity` is zero.
    pub fn new(capacity: usize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity);
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            reported: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    /// Hands the record to the consumer without waiting; counts it as overflow when full.
    /// A message longer than [`MAX_MESSAGE_BYTES`] is cut to it.
    pub fn report(&self, mut record: FailureRecord) {
        self.reported.fetch_add(1, Ordering::Relaxed);
        record.message = bound_text(record.message, MAX_MESSAGE_BYTES);
        if self.sender.try_send(record).is_err() {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the stream of failure records. There is one consumer: the first call gets the
    /// stream, later calls get `None` (as does any call after [`ErrorMonitor::start_logging`]).
    pub fn errors(&self) -> Option<ErrorStream> {
        self.receiver.lock().take()
    }

    /// Logs every record through `tracing` (at `warn` for `retry`, `error` otherwise) on a
    /// background task. Returns `None` if the stream was already taken.
    pub fn start_logging(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut stream = self.errors()?;
        Some(tokio::spawn(async move {
            while let Some(record) = stream.recv().await {
                log_record(&record);
            }
        }))
    }

    /// Failures reported since the monitor was created, delivered or not.
    pub fn reported(&self) -> u64 {
        self.reported.load(Ordering::Relaxed)
    }

    /// Failures dropped because the consumer was too slow (or absent) and the channel full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// Logs a record through `tracing`: `warn` for failures a retry may fix, `error` for the rest.
pub(crate) fn log_record(record: &FailureRecord) {
    macro_rules! log_failure {
        ($level:expr) => {
            tracing::event!(
                $level,
                subscription = %record.subscription,
                version = record.handler_version.as_deref(),
                event.id = %record.event_id,
                event.r#type = %record.event_type,
                attempt = record.attempt,
                kind = %record.kind,
                "handler failed: {}", record.message
            )
        };
    }
    match record.kind {
        // Not an invocation: the event fields are empty.
        FailureKind::PluginLoad => tracing::error!(
            plugin = %record.subscription,
            version = record.handler_version.as_deref(),
            "plugin failed to load: {}", record.message
        ),
        FailureKind::Retry => log_failure!(tracing::Level::WARN),
        _ => log_failure!(tracing::Level::ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> FailureRecord {
        FailureRecord {
            subscription: "s".into(),
            handler_version: None,
            event_id: n.to_string(),
            event_type: "T".into(),
            attempt: 1,
            kind: FailureKind::Reject,
            message: "no".into(),
            time: Utc::now(),
        }
    }

    #[tokio::test]
    async fn overflow_is_counted_not_blocking() {
        let monitor = ErrorMonitor::new(3);
        for n in 0..10 {
            monitor.report(record(n));
        }
        assert_eq!(monitor.reported(), 10);
        assert_eq!(monitor.overflowed(), 7);
        let mut stream = monitor.errors().unwrap();
        for n in 0..3 {
            assert_eq!(stream.recv().await.unwrap().event_id, n.to_string());
        }
        assert!(monitor.errors().is_none(), "the stream has one consumer");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_saying_how_much() {
        assert_eq!(bound_text("short".to_owned(), 10), "short");
        let cut = bound_text("é".repeat(10), 5);
        assert_eq!(cut, "éé… [16 of 20 bytes cut]");
        assert_eq!(bounded_copy(&"é".repeat(10), 5), cut);
        let huge = bound_text("x".repeat(10 << 20), MAX_MESSAGE_BYTES);
        assert!(huge.len() < MAX_MESSAGE_BYTES + 64, "{}", huge.len());
        let monitor = ErrorMonitor::new(1);
        monitor.report(FailureRecord {
            message: "y".repeat(1 << 20),
            ..record(1)
        });
        let kept = monitor.errors().unwrap().try_recv().unwrap();
        assert!(kept.message.len() < MAX_MESSAGE_BYTES + 64);
        assert!(kept.message.ends_with("bytes cut]"), "{}", &kept.message[4000..]);
    }

    #[test]
    fn kinds_have_stable_names() {
        let names: Vec<_> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "retry",
                "reject",
                "panic",
                "trap",
                "out-of-fuel",
                "timeout",
                "memory-limit",
                "resource-limit",
                "host-error",
                "plugin-load"
            ]
        );
        for kind in FailureKind::ALL {
            assert_eq!(FailureKind::ALL[kind.index()], kind);
        }
    }
}
