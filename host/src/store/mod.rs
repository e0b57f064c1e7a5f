//! Where accepted events, each subscription's progress and the plugins' key-value data are
//! kept.
//!
//! The bus talks to an [`EventLog`]: it appends every batch — with the subscriptions each
//! event must reach — before acknowledging the publisher, and commits every delivery once
//! its handler finished, together with the handler's effects (key-value writes, emitted
//! events). Two logs implement it:
//!
//! - [`sqlite::SqliteStore`], the embedded durable log: nothing accepted is lost, a
//!   delivery's effects commit exactly once, and a restart redelivers what was pending.
//! - [`MemoryLog`]: the same contract in memory, for tests and for the library — nothing
//!   survives the process, and publishing is not idempotent (remembering every `source` +
//!   `id` would grow without bound).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Serialize, Serializer};

use crate::event::Event;
use crate::monitor::FailureRecord;

/// A position in the log.
pub type Offset = u64;

/// The log could not store, read or commit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct LogError(pub String);

/// Events to append in one request.
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    /// The events, in order.
    pub events: Vec<Arc<Event>>,
    /// Per event, the subscriptions it must reach: one pending delivery is created for
    /// each. Empty means no deliveries for any event; otherwise one entry per event.
    pub routes: Vec<Vec<String>>,
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
    pub emitted: Vec<(Arc<Event>, Vec<String>)>,
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

/// One entry of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// Storage behind a bus. See the [module docs](self).
pub trait EventLog: Send + Sync + Debug + 'static {
    /// Stores `batch` and a pending delivery per event and route; once the future
    /// resolves the events are accepted. One [`Appended`] per event, in order.
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, LogError>>;

    /// Finishes deliveries with their effects, each at most once, in order and atomically:
    /// all of `commits` or none. One outcome per commit.
    fn commit(&self, commits: Vec<DeliveryCommit>) -> BoxFuture<'_, Result<Vec<CommitOutcome>, LogError>>;

    /// Every pending delivery of `subscription`, in offset order.
    fn pending(&self, subscription: &str) -> Result<Vec<PendingDelivery>, LogError>;

    /// The dead letters matching `filter`, by subscription and offset.
    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, LogError>;

    /// Moves the dead letters matching `filter` whose subscription is one of
    /// `subscriptions` back to pending (attempts reset, history kept) and returns them.
    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, LogError>>;

    /// How many dead letters there are.
    fn dead_letter_count(&self) -> u64;

    /// The position `relay` stored with its last append ([`AppendBatch::checkpoint`]).
    fn checkpoint(&self, relay: &str) -> Result<Option<i64>, LogError>;

    /// Drops the dead letters matching `filter` for good; returns how many.
    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, LogError>>;

    /// The key-value data delivery commits write to: what plugins on this bus read.
    fn key_values(self: Arc<Self>) -> Arc<dyn KeyValueStore>;

    /// Whether accepted events survive the process.
    fn is_durable(&self) -> bool;
}

/// An [`EventLog`] in memory: numbers events, applies key-value writes to a [`MemoryKv`]
/// and keeps the dead-letter queue. The bus's own queues hold pending deliveries.
#[derive(Debug, Default)]
pub struct MemoryLog {
    next: AtomicU64,
    kv: Arc<MemoryKv>,
    dead: Mutex<MemoryDeadLetters>,
    /// Failure histories of deliveries being retried, by subscription and offset.
    retrying: Mutex<HashMap<DeliveryKey, Vec<FailureRecord>>>,
    /// Entries in `retrying`, read without the lock on every ack.
    retrying_len: AtomicUsize,
    checkpoints: Mutex<HashMap<String, i64>>,
}

/// A delivery: its subscription and the event's offset.
type DeliveryKey = (Arc<str>, Offset);

#[derive(Debug, Default)]
struct MemoryDeadLetters {
    last_id: u64,
    letters: BTreeMap<u64, DeadLetter>,
}

impl MemoryLog {
    /// Events appended so far (emitted ones included).
    pub fn appended(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    fn number(&self, n: usize) -> impl Iterator<Item = Appended> {
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        (first..first + n as u64).map(|offset| Appended {
            offset,
            duplicate: false,
        })
    }

    fn commit_one(&self, commit: DeliveryCommit) -> CommitOutcome {
        let DeliveryCommit {
            subscription,
            offset,
            event,
            outcome,
            kv_namespace,
            kv_writes,
            emitted,
        } = commit;
        match outcome {
            DeliveryOutcome::Acked => {
                self.take_history(&subscription, offset);
                if !kv_writes.is_empty() {
                    // Memory writes cannot fail.
                    let _ = self.kv.commit(&kv_namespace, kv_writes);
                }
                CommitOutcome::Committed {
                    emitted: self.number(emitted.len()).collect(),
                }
            }
            DeliveryOutcome::Retry { failure, .. } => {
                let mut retrying = lock(&self.retrying);
                retrying.entry((subscription, offset)).or_default().push(failure);
                self.retrying_len.store(retrying.len(), Ordering::Release);
                CommitOutcome::Committed { emitted: Vec::new() }
            }
            DeliveryOutcome::DeadLettered { failure } => {
                let mut failures = self.take_history(&subscription, offset);
                failures.push(failure);
                let mut dead = lock(&self.dead);
                dead.last_id += 1;
                let id = dead.last_id;
                dead.letters.insert(
                    id,
                    DeadLetter {
                        id,
                        subscription: subscription.to_string(),
                        offset,
                        event,
                        failures,
                        dead_at: Utc::now(),
                    },
                );
                CommitOutcome::Committed { emitted: Vec::new() }
            }
        }
    }

    fn take_history(&self, subscription: &Arc<str>, offset: Offset) -> Vec<FailureRecord> {
        if self.retrying_len.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut retrying = lock(&self.retrying);
        let history = retrying.remove(&(Arc::clone(subscription), offset));
        self.retrying_len.store(retrying.len(), Ordering::Release);
        history.unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLog for MemoryLog {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, LogError>> {
        if let Some((relay, position)) = batch.checkpoint {
            lock(&self.checkpoints).insert(relay, position);
        }
        let appended = self.number(batch.events.len()).collect();
        Box::pin(std::future::ready(Ok(appended)))
    }

    fn commit(&self, commits: Vec<DeliveryCommit>) -> BoxFuture<'_, Result<Vec<CommitOutcome>, LogError>> {
        let outcomes = commits
            .into_iter()
            .map(|commit| self.commit_one(commit))
            .collect();
        Box::pin(std::future::ready(Ok(outcomes)))
    }

    /// Nothing is pending across a restart in memory: the bus's queues hold it all.
    fn pending(&self, _subscription: &str) -> Result<Vec<PendingDelivery>, LogError> {
        Ok(Vec::new())
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, LogError> {
        let mut letters: Vec<DeadLetter> = lock(&self.dead)
            .letters
            .values()
            .filter(|l| filter.matches(l))
            .cloned()
            .collect();
        letters.sort_by(|a, b| (&a.subscription, a.offset).cmp(&(&b.subscription, b.offset)));
        Ok(letters)
    }

    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, LogError>> {
        let mut dead = lock(&self.dead);
        let ids: Vec<u64> = dead
            .letters
            .values()
            .filter(|l| filter.matches(l) && subscriptions.contains(&l.subscription))
            .map(|l| l.id)
            .collect();
        let mut retrying = lock(&self.retrying);
        let mut replayed = Vec::with_capacity(ids.len());
        for id in ids {
            let letter = dead.letters.remove(&id).expect("listed just now");
            // The history goes on growing if the replay fails again.
            retrying.insert(
                (Arc::from(letter.subscription.as_str()), letter.offset),
                letter.failures,
            );
            replayed.push(Replayed {
                subscription: letter.subscription,
                delivery: PendingDelivery {
                    offset: letter.offset,
                    event: letter.event,
                    attempt: 0,
                    not_before: None,
                },
            });
        }
        self.retrying_len.store(retrying.len(), Ordering::Release);
        replayed
            .sort_by(|a, b| (&a.subscription, a.delivery.offset).cmp(&(&b.subscription, b.delivery.offset)));
        Box::pin(std::future::ready(Ok(replayed)))
    }

    fn dead_letter_count(&self) -> u64 {
        lock(&self.dead).letters.len() as u64
    }

    fn checkpoint(&self, relay: &str) -> Result<Option<i64>, LogError> {
        Ok(lock(&self.checkpoints).get(relay).copied())
    }

    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, LogError>> {
        let mut dead = lock(&self.dead);
        let before = dead.letters.len();
        dead.letters.retain(|_, l| !filter.matches(l));
        let purged = (before - dead.letters.len()) as u64;
        Box::pin(std::future::ready(Ok(purged)))
    }

    fn key_values(self: Arc<Self>) -> Arc<dyn KeyValueStore> {
        Arc::clone(&self.kv) as Arc<dyn KeyValueStore>
    }

    fn is_durable(&self) -> bool {
        false
    }
}

mod kv;
pub mod sqlite;

pub use kv::{KeyPage, KeyValueReader, KeyValueStore, MemoryKv};
