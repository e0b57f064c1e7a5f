//! The durable store: the embedded log in SQLite under the data directory.
//!
//! [`SqliteStore`] keeps everything evhost must not lose in one file, `DIR/evhost.db`:
//! accepted events, each subscription's delivery state (pending, acknowledged, dead-lettered,
//! with every failure), the plugins' key-value data and the outbox relay's checkpoints. Every
//! write that belongs together — a delivery's acknowledgement, its key-value writes and the
//! events its handler emitted — lands in one transaction, so a crash leaves either all of it
//! or none.
//!
//! # Layout
//!
//! - `schema`: opening the file, the integrity check and migrations (the schema is there),
//!   and the checkpointer thread.
//! - `writer`: the one writer thread and its group commit.
//! - `read`: the read-only connections and the queries behind the read API.
//!
//! # Group commit
//!
//! Every write ([`SqliteStore::append`], [`SqliteStore::commit`], DLQ replay and purge,
//! [`KeyValueStore::commit`], [`SqliteStore::commit_all`]) is a request to one dedicated
//! writer thread. The thread takes
//! the first queued request and every request queued behind it (up to
//! [`StoreOptions::max_group_events`]), applies them all in ONE transaction, commits once —
//! one fsync — and only then answers each request. Requests arrive while the previous group
//! is being synced, so under load many publishes share one fsync, and an idle store still
//! answers a lone publish after a single commit. When it finds several requests queued
//! (load), it waits 1 ms for more before it starts the transaction: groups two to three
//! times as large, for a fraction of the time a commit takes anyway. A request that fails (say a commit for an
//! unknown offset) does not fail the others: the group is rolled back and each request
//! is retried in a transaction of its own.
//!
//! # Durability
//!
//! The file is in WAL mode with `synchronous = FULL`: each commit appends the transaction to
//! the write-ahead log and fsyncs the log before `COMMIT` returns, and a request is answered
//! only after that. So everything a caller was told is stored survives both a `kill -9` of
//! evhost and a power loss or kernel crash (as far as the disk honours flushes).
//! `synchronous = NORMAL` would survive `kill -9` too — the WAL frames are in the OS page
//! cache, which outlives the process — but in WAL mode it syncs only at checkpoints, so the
//! last commits before a power cut could vanish after their publishers were told "accepted".
//! Group commit is what makes FULL affordable: one fsync per transaction, not per event.
//!
//! Copying the WAL back into the database file (a checkpoint) is not the writer's job:
//! SQLite's automatic checkpoint would run inside a commit and hold up every request
//! queued behind it. A checkpointer thread runs a `PASSIVE` checkpoint every 100 ms on
//! its own connection instead, which never blocks the writer or the readers.
//!
//! # Reads
//!
//! Reads go through a small pool of read-only connections. In WAL mode a reader sees the
//! last committed transaction and never waits for the writer (nor its fsync). The point
//! reads ([`SqliteStore::kv_get`], [`SqliteStore::checkpoint`],
//! [`SqliteStore::delivery_state`], [`SqliteStore::dlq_get`], [`SqliteStore::stats`]) are
//! single indexed lookups; [`SqliteStore::pending`] and [`SqliteStore::dlq_list`] return
//! as many rows as there are. These inherent methods block the calling thread; the
//! storage-seam traits the bus uses ([`EventLog`], [`DeadLetters`], [`KeyValueReader`],
//! [`Checkpoints`]) run every read on a blocking thread, and [`EventLog::pending`] reads a
//! page at a time.
//!
//! # The storage seam
//!
//! [`SqliteStore::storage`] hands the bus every part of the seam. Its contract: an append
//! is one transaction and recognises duplicates; a ledger request — every commit in it,
//! each delivery's outcome with its key-value writes and emitted events — is one
//! transaction, applied in order, all or none; a finished delivery is remembered, so a
//! second commit of it is `AlreadyDone`; a failure is transient when SQLite was busy or
//! locked, the disk failed or was full, or a transaction could not commit.

mod read;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use futures::TryStreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::Serialize;
use tokio::sync::oneshot;

pub use super::{
    AppendBatch, Appended, CommitOutcome, DeadLetter, DeadLetterFilter, DeliveryCommit, DeliveryOutcome,
    DeliveryState, PendingDelivery, Replayed,
};
use super::{
    Checkpoints, DeadLetters, DeliveryLedger, EventLog, EventLookup, EventQuery, KeyPage, KeyValueReader,
    KeyValueStore, Offset, Storage, StorageError, StoredEvent, Versioned,
};
use read::Readers;
use writer::{Answer, Message, Op, Reply, Request, Writer};

/// The file a store keeps everything in, inside its directory.
pub const FILE_NAME: &str = "evhost.db";

/// Settings of a [`SqliteStore`]; [`StoreOptions::default`] suits evhost.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most events (appended or emitted) one transaction takes before it commits.
    /// Bounds how long the first request of a group waits for the others to be applied;
    /// the default is 4,096 (about 15 ms of work for the writer).
    pub max_group_events: usize,
    /// Read-only connections kept open between reads. More readers than this may be open
    /// at once; the extra ones are closed after their read.
    pub idle_readers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_group_events: 4_096,
            idle_readers: 4,
        }
    }
}

/// Counts for metrics; see [`SqliteStore::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StoreStats {
    /// Events stored (duplicates not counted).
    pub events: u64,
    /// Deliveries waiting for their handler, retries included.
    pub pending: u64,
    /// Deliveries in the dead-letter queue.
    pub dead_letters: u64,
    /// Transactions the writer committed since the store was opened: one fsync each.
    /// Under load far fewer than `writes`.
    pub transactions: u64,
    /// Write requests answered since the store was opened.
    pub writes: u64,
}

/// Why the store could not open, read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite could not open or set up the file.
    #[error("cannot open the store {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is damaged or is not a SQLite database. Nothing was discarded: move the
    /// file away (or restore a backup) to start over.
    #[error("the store {} is corrupt: {message}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite or the integrity check found.
        message: String,
    },
    /// The file is a SQLite database, but not an evhost store.
    #[error("{} is not an evhost store (application_id {application_id:#x}, {tables} tables)", path.display())]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// The file's `PRAGMA application_id`.
        application_id: i64,
        /// Tables already in it.
        tables: i64,
    },
    /// The store was written by a newer evhost.
    #[error("the store {} has schema version {found}; this evhost reads up to {supported}", path.display())]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// Its `PRAGMA user_version`.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store's writer thread")]
    Spawn(#[source] std::io::Error),
    /// A query failed.
    #[error("store query failed")]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction this request was grouped into could not commit (BEGIN or COMMIT
    /// failed: disk full, I/O error). Its writes are not visible; after an I/O error
    /// during the sync they may still turn up after a restart, so retrying is the answer:
    /// appends are idempotent, and a delivery commit that did land answers `AlreadyDone`.
    #[error("the store's transaction failed to commit")]
    Transaction(#[source] Arc<rusqlite::Error>),
    /// `routes` must be empty or have one entry per event.
    #[error("an append of {events} events came with {routes} route lists")]
    RoutesMismatch {
        /// Events in the batch.
        events: usize,
        /// Route lists in the batch.
        routes: usize,
    },
    /// Only an acknowledged delivery may carry key-value writes or emitted events.
    #[error("the commit of {subscription} at offset {offset} is not an ack but carries effects")]
    EffectsWithoutAck {
        /// The delivery's subscription.
        subscription: String,
        /// The delivery's offset.
        offset: u64,
    },
    /// No event has this offset.
    #[error("no event has offset {offset}")]
    UnknownOffset {
        /// The offset asked for.
        offset: u64,
    },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The writer thread panicked. Nothing it had not answered was committed; reopen the
    /// store to go on.
    #[error("the store's writer thread panicked")]
    WriterPanicked,
    /// A bug in the store.
    #[error("internal store error: {0}")]
    Internal(String),
}

/// State shared by the store handle and its writer thread.
#[derive(Debug, Default)]
struct Shared {
    /// Set by [`SqliteStore::close`] before it tells the writer: tells a request that was
    /// dropped unanswered by a closing writer from one dropped by a panicking writer.
    closing: AtomicBool,
    events: AtomicU64,
    pending: AtomicU64,
    dead_letters: AtomicU64,
    /// The offset of the last event committed (0 for none): [`EventLog::horizon`].
    last_offset: AtomicU64,
    writes: AtomicU64,
    /// Transactions by how many write requests they committed, per [`GROUP_SIZE_BUCKETS`]
    /// bucket plus one for larger groups; together, every transaction committed.
    group_sizes: [AtomicU64; GROUP_SIZE_BUCKETS.len() + 1],
}

/// Upper bounds of the buckets of `evhost_store_group_size` (write requests per commit).
pub const GROUP_SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

impl Shared {
    /// Counts a committed transaction of `size` write requests.
    fn record_group(&self, size: usize) {
        let bucket = GROUP_SIZE_BUCKETS
            .iter()
            .position(|bound| size as f64 <= *bound)
            .unwrap_or(GROUP_SIZE_BUCKETS.len());
        self.group_sizes[bucket].fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(size as u64, Ordering::Relaxed);
    }

    /// Transactions committed per group-size bucket.
    fn group_counts(&self) -> Vec<u64> {
        self.group_sizes
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }
}

/// The store's statistics at scrape time: register it with
/// [`SqliteStore::metrics_collector`].
#[derive(Debug)]
struct StoreCollector(Arc<Shared>);

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> fmt::Result {
        use crate::metrics::export::{counter, gauge, histogram};
        let s = &self.0;
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        // Each read once, so one scrape agrees with itself as far as the writer allows.
        let writes = load(&s.writes);
        let counts = s.group_counts();
        let transactions = counts.iter().sum();
        let e = &mut encoder;
        counter(
            e,
            "evhost_store_writes",
            "Write requests the store committed (appends, delivery outcomes, checkpoints).",
            writes,
        )?;
        counter(
            e,
            "evhost_store_transactions",
            "Transactions the store committed, one fsync each; under load far fewer than writes.",
            transactions,
        )?;
        let sum = writes as f64;
        histogram(
            e,
            "evhost_store_group_size",
            "Write requests per committed transaction (group commit).",
            &GROUP_SIZE_BUCKETS,
            sum,
            &counts,
        )?;
        gauge(
            e,
            "evhost_store_events",
            "Events in the durable log.",
            load(&s.events),
        )?;
        gauge(
            e,
            "evhost_store_pending_deliveries",
            "Deliveries in the durable log waiting for their handler, retries included.",
            load(&s.pending),
        )
    }
}

/// The embedded durable log: events, delivery state, dead letters, plugin key-value data
/// and relay checkpoints in one SQLite file. See the [module docs](self) for the design.
///
/// ```no_run
/// # async fn demo() -> Result<(), evhost::store::sqlite::StoreError> {
/// use std::sync::Arc;
/// use evhost::Event;
/// use evhost::store::sqlite::{AppendBatch, SqliteStore, StoreOptions};
///
/// let store = SqliteStore::open(".evhost".as_ref(), StoreOptions::default())?;
/// let event = Arc::new(Event::new("UserCreated", "users", serde_json::json!({"id": 1})));
/// let appended = store
///     .append(AppendBatch {
///         events: vec![event],
///         routes: vec![vec!["welcome-mail".into()]],
///         checkpoint: None,
///     })
///     .await?;
/// assert_eq!(store.pending("welcome-mail")?.len(), 1);
/// # let _ = appended;
/// # Ok(())
/// # }
/// ```
pub struct SqliteStore {
    path: PathBuf,
    /// `None` only while dropping: dropping it is what stops the writer.
    sender: Option<mpsc::Sender<Message>>,
    writer: Option<JoinHandle<()>>,
    /// Dropping the sender stops the checkpointer thread.
    checkpointer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    readers: Arc<Readers>,
    shared: Arc<Shared>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens `dir/evhost.db`, creating the directory and the file if needed: switches it
    /// to WAL mode, runs `PRAGMA quick_check`, migrates the schema and starts the writer
    /// thread.
    ///
    /// Corrupt or unreadable data is [`StoreError::Corrupt`] naming the file and what is
    /// wrong; it is never discarded. The integrity check reads the whole file, so this
    /// blocks: from async code call it in `spawn_blocking`.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let conn = schema::open_writer(&path)?;
        let shared = Arc::new(Shared::default());
        schema::load_counts(&conn, &shared).map_err(|e| schema::classify(&path, e))?;
        let readers = Arc::new(Readers::open(path.clone(), options.idle_readers)?);
        let (sender, receiver) = mpsc::channel();
        let writer = Writer::new(
            conn,
            path.clone(),
            Arc::clone(&shared),
            options.max_group_events.max(1),
        );
        let writer = std::thread::Builder::new()
            .name("evhost-store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(StoreError::Spawn)?;
        let (stop, stopped) = mpsc::channel();
        let file = path.clone();
        let checkpointer = std::thread::Builder::new()
            .name("evhost-store-checkpointer".into())
            .spawn(move || schema::checkpoint(&file, &stopped))
            .map_err(StoreError::Spawn)?;
        Ok(Arc::new(Self {
            path,
            sender: Some(sender),
            writer: Some(writer),
            checkpointer: Some((stop, checkpointer)),
            readers,
            shared,
        }))
    }

    /// Every part of the storage seam, from this store.
    pub fn storage(self: &Arc<Self>) -> Storage {
        Storage::of(Arc::clone(self)).with_lookup(Arc::clone(self) as Arc<dyn EventLookup>)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `batch.events`, creates a pending delivery per event and routed
    /// subscription, and stores `batch.checkpoint`, all in one transaction. Resolves once
    /// that transaction is committed (durable), with one [`Appended`] per event.
    ///
    /// Idempotent: an event whose `source` + `id` was already accepted (earlier, or
    /// earlier in the same batch) is not stored again and gets no deliveries; its entry is
    /// `duplicate` and carries the original offset. Dropping the future does not withdraw
    /// the request: it may still be stored, and publishing it again is then a duplicate.
    pub async fn append(&self, batch: AppendBatch) -> Result<Vec<Appended>, StoreError> {
        let AppendBatch {
            events,
            routes,
            checkpoint,
        } = batch;
        if !routes.is_empty() && routes.len() != events.len() {
            return Err(StoreError::RoutesMismatch {
                events: events.len(),
                routes: routes.len(),
            });
        }
        if events.is_empty() && checkpoint.is_none() {
            return Ok(Vec::new());
        }
        let op = Op::Append {
            events,
            routes,
            checkpoint,
        };
        match self.submit(op).await? {
            Answer::Appended(appended) => Ok(appended),
            other => Err(unexpected(&other)),
        }
    }

    /// The position `relay` stored with its last append, if any.
    pub fn checkpoint(&self, relay: &str) -> Result<Option<i64>, StoreError> {
        self.read(|conn, _| read::checkpoint(conn, relay))
    }

    /// Finishes a delivery: its new state, the key-value writes and the emitted events
    /// (appended with their routes, idempotently), all in one transaction. Resolves after
    /// the commit.
    ///
    /// Exactly once: if the delivery is already acknowledged, dead-lettered or purged, the
    /// answer is [`CommitOutcome::AlreadyDone`] and nothing is applied. A delivery the
    /// store never created (an event appended without routes) is created by its first
    /// commit. Effects with a failure outcome are refused
    /// ([`StoreError::EffectsWithoutAck`]): a failed invocation must leave nothing behind.
    pub async fn commit(&self, commit: DeliveryCommit) -> Result<CommitOutcome, StoreError> {
        let mut outcomes = self.commit_all(vec![commit]).await?;
        outcomes
            .pop()
            .ok_or_else(|| StoreError::Internal("a commit without an outcome".into()))
    }

    /// [`SqliteStore::commit`] for several deliveries in one request, applied in order and
    /// all or none (a failing one fails them all). One answer per commit.
    pub async fn commit_all(&self, commits: Vec<DeliveryCommit>) -> Result<Vec<CommitOutcome>, StoreError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        commits.iter().try_for_each(check_effects)?;
        match self.submit(Op::Commits(commits)).await? {
            Answer::Commits(outcomes) => Ok(outcomes),
            other => Err(unexpected(&other)),
        }
    }

    /// Every pending delivery of `subscription` in offset order, with its event, failed
    /// attempts and `not_before`: what the bus redelivers after a restart. Returns the
    /// whole backlog and blocks: the bus reads it a page at a time through
    /// [`EventLog::pending`].
    pub fn pending(&self, subscription: &str) -> Result<Vec<PendingDelivery>, StoreError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|p: &PendingDelivery| p.offset);
            let page =
                self.read(|conn, path| read::pending(conn, path, subscription, after, PENDING_PAGE))?;
            let last = page.len() < PENDING_PAGE;
            all.extend(page);
            if last {
                return Ok(all);
            }
        }
    }

    /// Where the delivery of the event at `offset` to `subscription` stands; `None` if
    /// there is no such delivery.
    pub fn delivery_state(
        &self,
        subscription: &str,
        offset: u64,
    ) -> Result<Option<DeliveryState>, StoreError> {
        self.read(|conn, path| read::delivery_state(conn, path, subscription, offset))
    }

    /// The value of `key` in `namespace` (a plugin's name).
    pub fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|conn, _| read::kv_get(conn, namespace, key))
            .map(|found| found.map(|versioned| versioned.value))
    }

    /// At most `limit` keys of `namespace` in order, after `after`.
    pub fn kv_keys(&self, namespace: &str, after: Option<&str>, limit: usize) -> Result<KeyPage, StoreError> {
        self.read(|conn, _| read::kv_keys(conn, namespace, after, limit))
    }

    /// The dead letters matching `filter`, ordered by subscription and offset, each with
    /// its full failure history. Returns all of them: call it from `spawn_blocking` when
    /// the queue may be large.
    pub fn dlq_list(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(|conn, path| read::dead_letters(conn, path, filter))
    }

    /// The dead letter with this id.
    pub fn dlq_get(&self, id: u64) -> Result<Option<DeadLetter>, StoreError> {
        let filter = DeadLetterFilter {
            id: Some(id),
            subscription: None,
        };
        Ok(self.dlq_list(&filter)?.into_iter().next())
    }

    /// Moves the dead letters matching `filter` — and, if `subscriptions` is given, of
    /// one of those subscriptions — back to pending, with the attempt count reset and the
    /// failure history kept, so the bus delivers them again. Returns them, ordered by
    /// subscription and offset.
    pub async fn dlq_replay(
        &self,
        filter: &DeadLetterFilter,
        subscriptions: Option<Vec<String>>,
    ) -> Result<Vec<Replayed>, StoreError> {
        let op = Op::Replay {
            filter: filter.clone(),
            subscriptions,
        };
        let Answer::Replayed(rows) = self.submit(op).await? else {
            return Err(StoreError::Internal(
                "the writer answered a replay wrongly".into(),
            ));
        };
        rows.into_iter()
            .map(|(subscription, pos, json)| {
                Ok(Replayed {
                    subscription,
                    delivery: PendingDelivery {
                        offset: read::to_offset(pos),
                        event: read::parse_event(&self.path, pos, &json)?,
                        attempt: 0,
                        not_before: None,
                    },
                })
            })
            .collect()
    }

    /// Removes the dead letters matching `filter` for good: their deliveries become
    /// purged (never delivered again) and their failure history is deleted. Returns how
    /// many.
    pub async fn dlq_purge(&self, filter: &DeadLetterFilter) -> Result<u64, StoreError> {
        let op = Op::Purge {
            filter: filter.clone(),
        };
        match self.submit(op).await? {
            Answer::Count(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// A collector of the store's statistics for a Prometheus registry (what `/metrics`
    /// exports as `evhost_store_*`).
    pub fn metrics_collector(&self) -> Box<dyn prometheus_client::collector::Collector> {
        Box::new(StoreCollector(Arc::clone(&self.shared)))
    }

    /// Counts for metrics. Kept in memory by the writer (counted once at open), so this
    /// costs nothing.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let s = &self.shared;
        Ok(StoreStats {
            events: s.events.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
            dead_letters: s.dead_letters.load(Ordering::Relaxed),
            transactions: s.group_counts().iter().sum(),
            writes: s.writes.load(Ordering::Relaxed),
        })
    }

    /// Stops the writer once the requests queued before this call are committed and
    /// answered. Later writes and reads fail with [`StoreError::Closed`]. The file is
    /// closed when the last handle is dropped.
    pub async fn close(&self) {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (done, stopped) = oneshot::channel();
        if let Some(sender) = &self.sender
            && sender.send(Message::Shutdown(done)).is_ok()
        {
            // An error means the writer is already gone (it panicked): closed either way.
            let _ = stopped.await;
        }
    }

    fn read<T>(
        &self,
        query: impl FnOnce(&rusqlite::Connection, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.readers.with(query)
    }

    /// [`SqliteStore::read`] on a blocking thread, for async callers.
    async fn read_off_thread<T: Send + 'static>(
        &self,
        query: impl FnOnce(&rusqlite::Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.with(query))
            .await
            .map_err(|e| StoreError::Internal(format!("a read task failed: {e}")))?
    }

    /// Queues `op` for the writer.
    fn send(&self, op: Op, reply: Reply) -> Result<(), StoreError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let sender = self.sender.as_ref().ok_or(StoreError::Closed)?;
        sender
            .send(Message::Request(Request { op, reply }))
            .map_err(|_| self.stopped())
    }

    /// Hands `op` to the writer and waits, without blocking the thread, for its answer.
    async fn submit(&self, op: Op) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(op, Reply(reply))?;
        answer.await.map_err(|_| self.stopped())?
    }

    /// Why the writer dropped a request unanswered or refused it: it closed, or it died.
    fn stopped(&self) -> StoreError {
        if self.shared.closing.load(Ordering::Acquire) {
            StoreError::Closed
        } else {
            StoreError::WriterPanicked
        }
    }
}

impl Drop for SqliteStore {
    /// Lets the writer finish what is queued, then waits for it (at most one group
    /// commit), so the file is consistent and closed when the store is gone.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            // A panicked writer was already reported to the requests it dropped.
            let _ = writer.join();
        }
        if let Some((stop, checkpointer)) = self.checkpointer.take() {
            drop(stop);
            let _ = checkpointer.join();
        }
    }
}

/// Refuses effects on a failed delivery: a failed invocation must leave nothing behind.
fn check_effects(commit: &DeliveryCommit) -> Result<(), StoreError> {
    let has_effects = !commit.kv_writes.is_empty() || !commit.emitted.is_empty();
    if has_effects && !matches!(commit.outcome, DeliveryOutcome::Acked) {
        return Err(StoreError::EffectsWithoutAck {
            subscription: commit.subscription.to_string(),
            offset: commit.offset,
        });
    }
    Ok(())
}

/// The writer answered with the wrong kind of answer: a bug, reported rather than panicking
/// in the caller.
fn unexpected(answer: &Answer) -> StoreError {
    StoreError::Internal(format!("the writer answered {answer:?}"))
}

/// `error` with its sources, in one message.
fn error_chain(error: &dyn StdError) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Which store failures may pass: a busy or locked database, an I/O error, a transaction
/// that could not commit. A closed store, corrupt data, a refused request or a dead
/// writer will not.
impl From<StoreError> for StorageError {
    fn from(error: StoreError) -> Self {
        let transient = match &error {
            StoreError::Transaction(_) => true,
            StoreError::Sqlite(error) => matches!(
                error.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::DatabaseBusy
                        | rusqlite::ErrorCode::DatabaseLocked
                        | rusqlite::ErrorCode::SystemIoFailure
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::OutOfMemory
                )
            ),
            _ => false,
        };
        let message = error_chain(&error);
        if transient {
            StorageError::transient(message)
        } else {
            StorageError::permanent(message)
        }
    }
}

/// Deliveries read from the log per page of [`EventLog::pending`].
const PENDING_PAGE: usize = 1_000;

/// The durable event log. An append is one transaction: events, their deliveries and the
/// checkpoint land together; duplicates (by `source` + `id`) are recognised.
impl EventLog for SqliteStore {
    fn horizon(&self) -> Option<Offset> {
        Some(self.shared.last_offset.load(Ordering::Acquire))
    }

    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>> {
        Box::pin(async move { Ok(SqliteStore::append(self, batch).await?) })
    }

    /// A page of 1,000 deliveries at a time, each read on a blocking thread.
    fn pending<'a>(&'a self, subscription: &'a str) -> BoxStream<'a, Result<PendingDelivery, StorageError>> {
        let pages = futures::stream::try_unfold(Some(None), move |after: Option<Option<u64>>| async move {
            let Some(after) = after else {
                return Ok(None);
            };
            let name = subscription.to_owned();
            let page = self
                .read_off_thread(move |conn, path| read::pending(conn, path, &name, after, PENDING_PAGE))
                .await?;
            let next = (page.len() == PENDING_PAGE).then(|| page.last().map(|p| p.offset));
            Ok::<_, StorageError>(Some((futures::stream::iter(page.into_iter().map(Ok)), next)))
        });
        Box::pin(pages.try_flatten())
    }
}

/// A delivery's outcome, its key-value writes and the events it emitted commit in one
/// transaction — all of a request's commits together — so a crash leaves all of it or
/// none.
impl DeliveryLedger for SqliteStore {
    fn commit<'a>(
        &'a self,
        commits: &'a [DeliveryCommit],
    ) -> BoxFuture<'a, Result<Vec<CommitOutcome>, StorageError>> {
        Box::pin(async move { Ok(self.commit_all(commits.to_vec()).await?) })
    }
}

impl DeadLetters for SqliteStore {
    fn list(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>, StorageError>> {
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, path| read::dead_letters(conn, path, &filter))
                .await?)
        })
    }

    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StorageError>> {
        Box::pin(async move { Ok(self.dlq_replay(&filter, Some(subscriptions)).await?) })
    }

    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move { Ok(self.dlq_purge(&filter).await?) })
    }

    fn count(&self) -> u64 {
        self.shared.dead_letters.load(Ordering::Relaxed)
    }
}

impl Checkpoints for SqliteStore {
    fn checkpoint<'a>(&'a self, relay: &'a str) -> BoxFuture<'a, Result<Option<i64>, StorageError>> {
        let relay = relay.to_owned();
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, _| read::checkpoint(conn, &relay))
                .await?)
        })
    }
}

/// Plugins' key-value data in the store, read on blocking threads. The bus commits an
/// invocation's writes with its delivery ([`DeliveryLedger::commit`]);
/// [`KeyValueStore::commit`] is a transaction of its own, for writes outside a delivery.
impl KeyValueReader for SqliteStore {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, _| read::kv_get(conn, &namespace, &key))
                .await?)
        })
    }

    /// Pages by key (`key > after`), so a page costs one index range scan wherever it
    /// starts.
    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        let (namespace, after) = (namespace.to_owned(), after.map(str::to_owned));
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, _| read::kv_keys(conn, &namespace, after.as_deref(), limit))
                .await?)
        })
    }
}

impl KeyValueStore for SqliteStore {
    fn commit<'a>(
        &'a self,
        namespace: &'a str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            let op = Op::Kv {
                namespace: namespace.to_owned(),
                writes,
            };
            match self.submit(op).await? {
                Answer::Done => Ok(()),
                other => Err(unexpected(&other).into()),
            }
        })
    }
}

/// Finds events by `(id, source)` (the idempotency index, id first) and a correlation by
/// its partial index; a delivery's state is a primary-key read per subscription.
impl EventLookup for SqliteStore {
    fn find<'a>(
        &'a self,
        id: &'a str,
        source: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StorageError>> {
        let (id, source) = (id.to_owned(), source.map(str::to_owned));
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, path| read::find_events(conn, path, &id, source.as_deref()))
                .await?)
        })
    }

    fn page(&self, query: EventQuery) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>> {
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, path| read::list_events(conn, path, &query))
                .await?)
        })
    }

    fn correlated<'a>(
        &'a self,
        correlation: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StorageError>> {
        let correlation = correlation.to_owned();
        Box::pin(async move {
            Ok(self
                .read_off_thread(move |conn, path| read::correlated_events(conn, path, &correlation, limit))
                .await?)
        })
    }
}
