//! [`MemoryLog`]: the storage seam in memory, for tests and the library.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use chrono::Utc;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::{
    AppendBatch, Appended, Checkpoints, CommitOutcome, DeadLetter, DeadLetterFilter, DeadLetters,
    DeliveryCommit, DeliveryLedger, DeliveryOutcome, EventLog, KeyPage, KeyValueReader, KeyValueStore,
    MemoryKv, Offset, PendingDelivery, Replayed, StorageError, Versioned,
};
use crate::monitor::FailureRecord;

/// Every part of the storage seam in memory: numbers events, applies key-value writes to
/// a [`MemoryKv`], keeps the dead-letter queue and the relays' checkpoints. Nothing
/// survives the process.
///
/// It departs from the durable contract where that would cost memory without bound or
/// time on every event: it keeps no pending deliveries ([`EventLog::pending`] is empty:
/// the bus's own queues hold them while the process lives) and does not recognise
/// duplicates (no [`Appended::duplicate`]). A commit applies at once, all of it.
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

    fn commit_one(&self, commit: &DeliveryCommit) -> CommitOutcome {
        let DeliveryCommit {
            subscription,
            offset,
            event,
            outcome,
            kv_namespace,
            kv_writes,
            emitted,
            handler_version: _,
        } = commit;
        match outcome {
            DeliveryOutcome::Acked => {
                self.take_history(subscription, *offset);
                if !kv_writes.is_empty() {
                    self.kv.write(kv_namespace, kv_writes.clone());
                }
                CommitOutcome::Committed {
                    emitted: self.number(emitted.len()).collect(),
                }
            }
            DeliveryOutcome::Retry { failure, .. } => {
                let mut retrying = lock(&self.retrying);
                retrying
                    .entry((Arc::clone(subscription), *offset))
                    .or_default()
                    .push(failure.clone());
                self.retrying_len.store(retrying.len(), Ordering::Release);
                CommitOutcome::Committed { emitted: Vec::new() }
            }
            DeliveryOutcome::DeadLettered { failure } => {
                let mut failures = self.take_history(subscription, *offset);
                failures.push(failure.clone());
                let mut dead = lock(&self.dead);
                dead.last_id += 1;
                let id = dead.last_id;
                dead.letters.insert(
                    id,
                    DeadLetter {
                        id,
                        subscription: subscription.to_string(),
                        offset: *offset,
                        event: Arc::clone(event),
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

fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

impl EventLog for MemoryLog {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>> {
        if let Some((relay, position)) = batch.checkpoint {
            lock(&self.checkpoints).insert(relay, position);
        }
        let appended = self.number(batch.events.len()).collect();
        Box::pin(std::future::ready(Ok(appended)))
    }

    /// Nothing is pending across a restart in memory: the bus's queues hold it all.
    fn pending<'a>(&'a self, _subscription: &'a str) -> BoxStream<'a, Result<PendingDelivery, StorageError>> {
        Box::pin(futures::stream::empty())
    }

    /// It keeps no deliveries.
    fn wants_routes(&self) -> bool {
        false
    }
}

impl DeliveryLedger for MemoryLog {
    /// Applies every commit at once, in order; a request with effects on a failure is
    /// refused whole.
    fn commit<'a>(
        &'a self,
        commits: &'a [DeliveryCommit],
    ) -> BoxFuture<'a, Result<Vec<CommitOutcome>, StorageError>> {
        let with_effects = commits.iter().find(|c| {
            !(matches!(c.outcome, DeliveryOutcome::Acked) || c.kv_writes.is_empty() && c.emitted.is_empty())
        });
        if let Some(refused) = with_effects {
            return Box::pin(std::future::ready(Err(StorageError::permanent(format!(
                "the commit of {} at offset {} is not an ack but carries effects",
                refused.subscription, refused.offset
            )))));
        }
        let outcomes = commits.iter().map(|commit| self.commit_one(commit)).collect();
        Box::pin(std::future::ready(Ok(outcomes)))
    }
}

impl DeadLetters for MemoryLog {
    fn list(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>, StorageError>> {
        let mut letters: Vec<DeadLetter> = lock(&self.dead)
            .letters
            .values()
            .filter(|l| filter.matches(l))
            .cloned()
            .collect();
        letters.sort_by(|a, b| (&a.subscription, a.offset).cmp(&(&b.subscription, b.offset)));
        Box::pin(std::future::ready(Ok(letters)))
    }

    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StorageError>> {
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

    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, StorageError>> {
        let mut dead = lock(&self.dead);
        let before = dead.letters.len();
        dead.letters.retain(|_, l| !filter.matches(l));
        let purged = (before - dead.letters.len()) as u64;
        Box::pin(std::future::ready(Ok(purged)))
    }

    fn count(&self) -> u64 {
        lock(&self.dead).letters.len() as u64
    }
}

impl Checkpoints for MemoryLog {
    fn checkpoint<'a>(&'a self, relay: &'a str) -> BoxFuture<'a, Result<Option<i64>, StorageError>> {
        Box::pin(std::future::ready(Ok(lock(&self.checkpoints)
            .get(relay)
            .copied())))
    }
}

impl KeyValueReader for MemoryLog {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        self.kv.get(namespace, key)
    }

    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        self.kv.list_keys(namespace, after, limit)
    }
}

impl KeyValueStore for MemoryLog {
    fn commit<'a>(
        &'a self,
        namespace: &'a str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.kv.commit(namespace, writes)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Storage, contract};

    #[tokio::test]
    async fn the_memory_log_keeps_the_contract_it_claims() {
        contract::check_all(Storage::memory, contract::Claims::MEMORY).await;
    }
}
