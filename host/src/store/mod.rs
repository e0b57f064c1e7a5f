//! Where accepted events and each subscription's progress are kept.
//!
//! The bus talks to an [`EventLog`]: it appends every batch before acknowledging the
//! publisher, and acknowledges every delivery once its handler finished. [`MemoryLog`]
//! only numbers events — nothing survives the process, which is what in-memory mode
//! promises; a durable log (SQLite, NATS JetStream) implements the same trait.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;

use crate::event::Event;

/// A position in the log; events of one append get consecutive offsets.
pub type Offset = u64;

/// The log could not store or acknowledge.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LogError(pub String);

/// Storage behind a bus.
pub trait EventLog: Send + Sync + Debug + 'static {
    /// Stores `events`; once the future resolves they are accepted. Returns the offset of
    /// the first one.
    fn append<'a>(&'a self, events: &'a [Arc<Event>]) -> BoxFuture<'a, Result<Offset, LogError>>;

    /// Records that `subscription` is finished with the event at `offset`.
    fn ack(&self, subscription: &str, offset: Offset);
}

/// An [`EventLog`] that only numbers events: the bus's own queues hold them while in
/// flight, and nothing is kept after they are handled.
#[derive(Debug, Default)]
pub struct MemoryLog {
    next: AtomicU64,
}

impl MemoryLog {
    /// Events appended so far.
    pub fn appended(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

impl EventLog for MemoryLog {
    fn append<'a>(&'a self, events: &'a [Arc<Event>]) -> BoxFuture<'a, Result<Offset, LogError>> {
        let first = self.next.fetch_add(events.len() as u64, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(first)))
    }

    /// Nothing to record: progress only matters to a log that outlives the process.
    fn ack(&self, _subscription: &str, _offset: Offset) {}
}

mod kv;
pub mod sqlite;

pub use kv::{KeyValueStore, MemoryKv};
