//! Where accepted events, each subscription's progress and the plugins' key-value data are
//! kept: the storage seam between the bus and a backend.
//!
//! The seam is a set of small async traits, each with one job, and a [`Storage`] that
//! bundles one backend's implementations of them:
//!
//! - [`EventLog`]: appends batches of accepted events (idempotent by `source` + `id`) and
//!   streams what is pending for a subscription.
//! - [`DeliveryLedger`]: stores how each delivery ended — acknowledged with its effects,
//!   to be retried at a time, or dead-lettered. How atomic a commit is, is part of each
//!   backend's documented contract.
//! - [`DeadLetters`]: lists, replays and purges the dead-letter queue.
//! - [`Checkpoints`]: where a relay (the outbox) left off.
//! - [`EventLookup`]: finds stored events by id, lists them and follows a correlation,
//!   each with where its deliveries stand (what `GET /events/{id}` answers). Optional: a
//!   backend that keeps no such index leaves [`Storage::lookup`] empty.
//! - [`KeyValueStore`] (a [`KeyValueReader`] plugins read through): the plugins' data,
//!   with a revision per value.
//!
//! Every error is a [`StorageError`] that says whether trying again may help.
//!
//! Three backends implement all of it:
//!
//! - [`sqlite::SqliteStore`], the embedded durable log: nothing accepted is lost, a
//!   delivery's outcome and effects commit in one transaction, a restart redelivers what
//!   was pending.
//! - [`nats::NatsStore`], NATS JetStream shared by several processes ([`Feed::Shared`]):
//!   each delivery goes to one of them; effects apply once per delivery by message id.
//! - [`MemoryLog`]: in memory, for tests and the library. It keeps no pending deliveries
//!   (the bus's queues hold them while the process lives) and does not recognise
//!   duplicates (remembering every `source` + `id` would grow without bound); the
//!   contract suites say where.

use std::fmt::Debug;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize, Serializer};

use crate::event::Event;
use crate::monitor::FailureRecord;

/// A position in the log.
pub type Offset = u64;

/// A backend could not store, read or commit. [`StorageError::is_transient`] tells a
/// failure that may pass (a busy database, an I/O error, a lost connection) from one that
/// will not (a closed store, corrupt data, a request the backend refuses).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    message: String,
    transient: bool,
}

impl StorageError {
    /// A failure that may pass if the request is made again later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: true,
        }
    }

    /// A failure that making the request again will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }

    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Events to append in one request.
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    /// The events, in order.
    pub events: Vec<Arc<Event>>,
    /// Per event, the subscriptions it must reach: one pending delivery is created for
    /// each. Empty means no deliveries for any event; otherwise one entry per event.
    pub routes: Vec<Vec<Arc<str>>>,
    /// `(relay, position)` stored in the same transaction as the events, so a relay that
    /// restarts resumes exactly after the last batch that was stored.
    pub checkpoint: Option<(String, i64)>,
}

/// What an append did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Appended {
    /// The event's position in the log. For a duplicate, the offset the original got.
    pub offset: Offset,
    /// The event's `source` + `id` had already been accepted: nothing was stored and no
    /// delivery created.
    pub duplicate: bool,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// The handler succeeded: its key-value writes and emitted events are applied.
    Acked,
    /// The handler failed and will be tried again: the delivery stays pending.
    Retry {
        /// Attempts made so far (1 after the first delivery failed).
        attempt: u32,
        /// Not to be delivered again before this.
        not_before: DateTime<Utc>,
        /// The failure, added to the delivery's history.
        failure: FailureRecord,
    },
    /// The handler failed for good: the delivery moves to the dead-letter queue.
    DeadLettered {
        /// The last failure, added to the delivery's history.
        failure: FailureRecord,
    },
}

/// The end of one delivery and its effects, committed atomically.
#[derive(Debug, Clone)]
pub struct DeliveryCommit {
    /// The subscription the event was delivered to.
    pub subscription: Arc<str>,
    /// The event's offset.
    pub offset: Offset,
    /// The event (a durable log finds it by offset; an in-memory one keeps it for the
    /// dead-letter queue).
    pub event: Arc<Event>,
    /// How the delivery ended.
    pub outcome: DeliveryOutcome,
    /// The namespace `kv_writes` go to (the plugin's name).
    pub kv_namespace: String,
    /// Key-value writes of the invocation (`None` deletes). Only with [`DeliveryOutcome::Acked`].
    pub kv_writes: Vec<(String, Option<Vec<u8>>)>,
    /// Events the handler emitted, each with the subscriptions it must reach; appended
    /// like [`EventLog::append`]. Only with [`DeliveryOutcome::Acked`].
    pub emitted: Vec<(Arc<Event>, Vec<Arc<str>>)>,
    /// The handler version that ran (a plugin's content hash), when it has one; a log
    /// that answers [`EventLookup`] keeps it with an acknowledgement.
    pub handler_version: Option<Arc<str>>,
}

/// What a delivery commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The outcome and its effects are stored.
    Committed {
        /// Per emitted event, its offset and whether it was a duplicate.
        emitted: Vec<Appended>,
    },
    /// The delivery had already been acknowledged, dead-lettered or purged (a redelivery
    /// raced a commit that did land): nothing of this commit was applied.
    AlreadyDone,
}

/// A delivery waiting for its handler: what the bus redelivers after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDelivery {
    /// The event's offset.
    pub offset: Offset,
    /// The event.
    pub event: Arc<Event>,
    /// Failed attempts so far (0 for an event never delivered, or replayed from the DLQ).
    pub attempt: u32,
    /// Not to be delivered before this (set by a retry).
    pub not_before: Option<DateTime<Utc>>,
}

/// One entry of the dead-letter queue (`GET /dlq`; the CLI reads it back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Identifies the dead letter (`evhost dlq show ID`). A delivery replayed and
    /// dead-lettered again gets a new id.
    pub id: u64,
    /// The subscription (plugin) that gave up on the event.
    pub subscription: String,
    /// The event's offset.
    pub offset: Offset,
    /// The event.
    #[serde(serialize_with = "serialize_event")]
    pub event: Arc<Event>,
    /// Every failure of every attempt, oldest first (across replays too).
    pub failures: Vec<FailureRecord>,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

fn serialize_event<S: Serializer>(event: &Arc<Event>, serializer: S) -> Result<S::Ok, S::Error> {
    event.as_ref().serialize(serializer)
}

/// Which dead letters an operation applies to; the default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this one.
    pub id: Option<u64>,
    /// Only this subscription's.
    pub subscription: Option<String>,
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.id.is_none_or(|id| id == letter.id)
            && self
                .subscription
                .as_ref()
                .is_none_or(|name| *name == letter.subscription)
    }
}

/// A dead letter moved back to pending by a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    /// Its subscription.
    pub subscription: String,
    /// The delivery to make again.
    pub delivery: PendingDelivery,
}

/// A value of the key-value store with the revision of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// Grows with every write of the key (1 for its first); a key deleted and written
    /// again starts over.
    pub revision: u64,
}

/// Where accepted events are kept.
pub trait EventLog: Send + Sync + Debug + 'static {
    /// Stores `batch` — its events, a pending delivery per event and route, and its
    /// checkpoint — and resolves once they are accepted: one [`Appended`] per event, in
    /// order. A backend that recognises duplicates (by `source` + `id`) stores them once
    /// and marks the later ones `duplicate`; dropping the future does not withdraw the
    /// request.
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>>;

    /// The deliveries pending for `subscription` — never delivered, or waiting for a
    /// retry — in offset order, read a page at a time as the stream is polled.
    fn pending<'a>(&'a self, subscription: &'a str) -> BoxStream<'a, Result<PendingDelivery, StorageError>>;

    /// The offset of the last event the log has stored, read without I/O, or `None` when
    /// the log keeps no such mark. A subscription installed after reading it finds every
    /// delivery routed to it *above* it (those appends commit later), so its backlog is what
    /// lies at or below: the bus reads no further, and a delivery routed to the lane while
    /// its backlog loads is never queued twice.
    fn horizon(&self) -> Option<Offset> {
        None
    }

    /// Whether [`AppendBatch::routes`] is of use: a log that creates pending deliveries
    /// from them wants them; one that does not (it keeps no deliveries, or its
    /// subscribers read the log themselves) lets the bus skip naming them.
    fn wants_routes(&self) -> bool {
        true
    }

    /// What a [`Feed::Shared`] log's subscriber reads: [`EventLog::pending`], taken from
    /// the log about `batch` at a time — what a process has taken is not offered to the
    /// others until it finishes it or dies. With `ordered`, each ordering key's events come
    /// one at a time, in order, across every process sharing the log. A log that keeps
    /// order per key anyway (every [`Feed::Local`] log, with the bus's lanes) answers
    /// `pending`.
    fn pull<'a>(
        &'a self,
        subscription: &'a str,
        ordered: bool,
        batch: usize,
    ) -> BoxStream<'a, Result<PendingDelivery, StorageError>> {
        let _ = (ordered, batch);
        self.pending(subscription)
    }

    /// Makes `subscription`'s deliveries exist in the log before the bus starts taking
    /// events, so that every event appended from then on is kept for it (`ordered`: as
    /// [`EventLog::pull`] reads them). A [`Feed::Shared`] log whose per-subscriber
    /// state is made when first read needs this; the others have nothing to do.
    fn prepare<'a>(
        &'a self,
        subscription: &'a str,
        ordered: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let _ = (subscription, ordered);
        futures::future::ready(Ok(())).boxed()
    }

    /// How this log's deliveries reach the bus.
    fn feed(&self) -> Feed {
        Feed::Local
    }
}

/// How far ahead a bus pulls from a [`Feed::Shared`] log: a subscription asks for this
/// many times its concurrency at a time ([`EventLog::pull`]'s `batch`). A delivery sent
/// ahead may wait for as many handler runs before it starts, so a log that hands
/// unacknowledged deliveries to another process after a while must wait longer than this
/// many handler timeouts.
pub const PULL_AHEAD: u32 = 4;

/// Whether a shared log's `ack_wait` outlasts what a delivery of a subscription whose
/// handler may take `timeout` can spend taken but unfinished: [`PULL_AHEAD`] handler runs.
pub fn ack_wait_covers(ack_wait: std::time::Duration, timeout: std::time::Duration) -> bool {
    ack_wait > timeout * PULL_AHEAD
}

/// How a log's deliveries reach the bus's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The bus queues what it appends (and what handlers emit) itself and retries failed
    /// deliveries itself; [`EventLog::pending`] is read once, when a subscription starts,
    /// for what an earlier run left.
    Local,
    /// Every delivery comes from [`EventLog::pending`], which does not end while the log
    /// is open: the log is shared by several processes and hands each delivery to one of
    /// them, including each event it holds for a subscription whatever its type (the bus
    /// acknowledges those its patterns do not match without a call). The bus queues
    /// nothing it appends or a handler emits, leaves a retry to the log (which redelivers
    /// a [`DeliveryOutcome::Retry`] at its time, to any process) and pulls only what its
    /// subscription has room to work on.
    Shared,
}

/// Where each delivery's outcome is stored.
pub trait DeliveryLedger: Send + Sync + Debug + 'static {
    /// Finishes deliveries, in order, each at most once: a delivery already acknowledged,
    /// dead-lettered or purged answers [`CommitOutcome::AlreadyDone`] and nothing of its
    /// commit applies. An acknowledgement carries the handler's effects. One outcome per
    /// commit. How much of a request is applied together (one delivery and its effects,
    /// the whole request, ...) is each backend's documented contract.
    fn commit<'a>(
        &'a self,
        commits: &'a [DeliveryCommit],
    ) -> BoxFuture<'a, Result<Vec<CommitOutcome>, StorageError>>;
}

/// The dead-letter queue.
pub trait DeadLetters: Send + Sync + Debug + 'static {
    /// The dead letters matching `filter`, by subscription and offset, each with its
    /// failure history.
    fn list(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>, StorageError>>;

    /// Moves the dead letters matching `filter` whose subscription is one of
    /// `subscriptions` back to pending (attempts reset, history kept) and returns them.
    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StorageError>>;

    /// Drops the dead letters matching `filter` for good; returns how many.
    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, StorageError>>;

    /// How many dead letters there are (for metrics: answered without I/O).
    fn count(&self) -> u64;
}

/// Where relays (the outbox) left off. A relay's position is written with the batch it
/// relayed ([`AppendBatch::checkpoint`]).
pub trait Checkpoints: Send + Sync + Debug + 'static {
    /// The position `relay` stored with its last append, if any.
    fn checkpoint<'a>(&'a self, relay: &'a str) -> BoxFuture<'a, Result<Option<i64>, StorageError>>;
}

/// Where one delivery of a stored event stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Waiting for its first delivery (`attempt` 0) or for a retry.
    Pending {
        /// Failed attempts so far.
        attempt: u32,
        /// Not to be delivered before this (set by a retry).
        not_before: Option<DateTime<Utc>>,
    },
    /// Handled; its effects are committed.
    Handled {
        /// When. Absent for deliveries handled before the log recorded it.
        at: Option<DateTime<Utc>>,
        /// The handler version that ran. Absent when the handler has none, or the
        /// delivery was handled before the log recorded it.
        version: Option<String>,
    },
    /// In the dead-letter queue.
    DeadLettered {
        /// When it got there.
        dead_at: DateTime<Utc>,
        /// Its id in the dead-letter queue (`GET /dlq/{id}`).
        dead_letter_id: u64,
    },
    /// Removed from the dead-letter queue by a purge; never delivered again.
    Purged,
    /// Acknowledged, on a log that does not record how (NATS): handled, or dead-lettered
    /// and since purged. When, and by which version, it cannot say.
    Acknowledged,
    /// Given to a handler and not known to be done: NATS records a subscription's
    /// acknowledgements only up to its ack floor, so a delivery above it may be running,
    /// waiting for a retry whose failure is not stored yet, or handled already.
    InFlight,
    /// The log cannot tell where it stands; `reason` says why.
    Unknown {
        /// Why not.
        reason: String,
    },
}

/// One subscription's delivery of a stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryView {
    /// The subscription (plugin).
    pub subscription: String,
    /// Where it stands.
    #[serde(flatten)]
    pub state: DeliveryState,
    /// Failed attempts recorded, across replays.
    pub failures: u32,
    /// The latest of them.
    pub last_failure: Option<FailureRecord>,
    /// The fields of this delivery the log cannot answer (NATS keeps no record of when a
    /// delivery was handled, for instance); empty when it answers all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

/// A stored event and where each of its deliveries stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Its position in the log.
    pub offset: Offset,
    /// The event as stored.
    #[serde(serialize_with = "serialize_event")]
    pub event: Arc<Event>,
    /// The plugin whose handler emitted it; `None` for an event published to the log.
    pub emitted_by: Option<String>,
    /// One entry per subscription it was routed to, by name.
    pub deliveries: Vec<DeliveryView>,
}

/// Which events [`EventLookup::page`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events of this `type`.
    pub event_type: Option<String>,
    /// Only events with this `subject`.
    pub subject: Option<String>,
    /// Oldest first, starting after this offset; without it (and without `before`),
    /// newest first from the end of the log.
    pub after: Option<Offset>,
    /// Newest first, starting before this offset.
    pub before: Option<Offset>,
    /// At most this many.
    pub limit: usize,
}

/// Finding stored events: what the operator's reads (`GET /events`, `/events/{id}`,
/// `/events/{id}/trace`) ask of a log.
pub trait EventLookup: Send + Sync + Debug + 'static {
    /// The events with this `id` (of this `source` when given): one normally, several
    /// when sources reuse an id.
    fn find<'a>(
        &'a self,
        id: &'a str,
        source: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StorageError>>;

    /// A page of events matching `query`, in the order it asks for.
    fn page(&self, query: EventQuery) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>>;

    /// Every event of the correlation `correlation`, in offset order: the events whose
    /// `correlationid` is `correlation`, and the event with that id which started it.
    /// At most `limit`.
    fn correlated<'a>(
        &'a self,
        correlation: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StorageError>>;

    /// Whether each event's deliveries are those it was routed to. A log that does not
    /// store routes (NATS: every subscription's consumer sees every event, and the bus
    /// skips those its patterns do not match) answers a delivery per subscription, and
    /// the caller keeps those of the subscriptions that take the event's type.
    fn routes_known(&self) -> bool {
        true
    }
}

/// One backend's parts of the storage seam.
#[derive(Debug, Clone)]
pub struct Storage {
    /// The accepted events.
    pub log: Arc<dyn EventLog>,
    /// The deliveries' outcomes.
    pub ledger: Arc<dyn DeliveryLedger>,
    /// The dead-letter queue.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// The relays' positions.
    pub checkpoints: Arc<dyn Checkpoints>,
    /// The plugins' key-value data.
    pub kv: Arc<dyn KeyValueStore>,
    /// Looking events up, when the backend keeps what it needs; `None` otherwise.
    pub lookup: Option<Arc<dyn EventLookup>>,
}

impl Storage {
    /// Every part from one backend that implements them all.
    pub fn of<B>(backend: Arc<B>) -> Self
    where
        B: EventLog + DeliveryLedger + DeadLetters + Checkpoints + KeyValueStore,
    {
        Self {
            log: Arc::clone(&backend) as Arc<dyn EventLog>,
            ledger: Arc::clone(&backend) as Arc<dyn DeliveryLedger>,
            dead_letters: Arc::clone(&backend) as Arc<dyn DeadLetters>,
            checkpoints: Arc::clone(&backend) as Arc<dyn Checkpoints>,
            kv: backend as Arc<dyn KeyValueStore>,
            lookup: None,
        }
    }

    /// These parts, and `lookup` to find events by.
    pub fn with_lookup(mut self, lookup: Arc<dyn EventLookup>) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// A fresh [`MemoryLog`].
    pub fn memory() -> Self {
        Self::of(Arc::new(MemoryLog::default()))
    }
}

#[cfg(test)]
pub(crate) mod contract;
mod kv;
mod memory;
pub mod nats;
pub mod sqlite;

pub use kv::{KeyPage, KeyValueReader, KeyValueStore, MemoryKv};
pub use memory::MemoryLog;
