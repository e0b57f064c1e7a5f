//! Settlement: how a delivery ends. A successful call's effects are prepared (emitted
//! events routed, room reserved for them in the emitter's budget), acknowledged in batches
//! and committed to the ledger; the events they emitted then go back to the intake. A
//! failed call is stored as a retry at a time — the delivery comes back to its lane after
//! the backoff, holding its key meanwhile — or as a dead letter. A commit the store fails
//! transiently is tried again here, by the host, without costing the handler an attempt.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures::FutureExt as _;

use super::delivery::{Delivery, Pending};
use super::lane::{Cursor, Lane};
use super::routing::{Emitted, Routes};
use super::{Inner, contained};
use crate::bus::{Effects, HandlerError, failure_record, panic_message, validate};
use crate::event::Event;
use crate::monitor::{FailureKind, FailureRecord};
use crate::store::{CommitOutcome, DeliveryCommit, DeliveryOutcome, StorageError};

/// Finished events a worker counts out of the bus at once.
const RELEASE_BATCH: usize = 64;

/// How a delivery attempt ended, once its outcome is in the log.
pub(super) enum Settled {
    /// Acknowledged or dead-lettered: the subscription is done with the event.
    Done(Result<(), HandlerError>),
    /// To be tried again after this delay.
    Retry(Duration),
}

/// A successful invocation's acknowledgement, ready to commit.
#[derive(Debug)]
pub(super) struct PreparedAck {
    commit: DeliveryCommit,
    /// The events it emitted with the lanes they are routed to, queued once stored.
    emitted: Option<Emitted>,
}

/// A delivery whose handler succeeded, waiting in its worker for the next commit.
#[derive(Debug)]
pub(super) struct Ack {
    pub(super) pending: Pending,
    pub(super) prepared: PreparedAck,
}

impl Inner {
    /// Reserves room in the lane's budget for `n` emitted events, waiting for it up to the
    /// subscription's timeout: backpressure on a handler that emits faster than the bus
    /// finishes what it emitted.
    pub(super) async fn reserve_emitted(&self, lane: &Lane, n: usize) -> Result<(), HandlerError> {
        if n == 0 || lane.emitted.try_reserve(n) {
            return Ok(());
        }
        let capacity = lane.emitted.capacity();
        let wait = lane.subscription.timeout;
        let reserved = n <= capacity
            && tokio::time::timeout(wait, lane.emitted.reserve(n, || self.cancel.is_cancelled()))
                .await
                .unwrap_or(false);
        if reserved {
            return Ok(());
        }
        Err(HandlerError::new(
            FailureKind::ResourceLimit,
            format!(
                "no room for the {n} events the handler emitted within {wait:?}: at most {capacity} events \
                 it emitted may be unfinished at once (`bus.emitted_capacity`)"
            ),
        ))
    }

    /// The acknowledgement of a successful invocation with its effects, checked and
    /// routed, ready to commit.
    pub(super) fn prepare_ack(
        &self,
        lane: &Lane,
        delivery: &Delivery,
        effects: Effects,
    ) -> Result<PreparedAck, HandlerError> {
        let Effects {
            kv_namespace,
            kv_writes,
            emitted,
            version,
        } = effects;
        for event in &emitted {
            validate(event).map_err(|e| {
                HandlerError::new(
                    FailureKind::HostError,
                    format!("the handler emitted an invalid event: {e}"),
                )
            })?;
        }
        let emitted: Vec<Arc<Event>> = emitted.into_iter().map(Arc::new).collect();
        let mut commit = delivery_commit(lane, delivery, DeliveryOutcome::Acked);
        commit.handler_version = version;
        if !kv_writes.is_empty() {
            commit.kv_namespace = if kv_namespace.is_empty() {
                lane.subscription.name.to_string()
            } else {
                kv_namespace
            };
            commit.kv_writes = kv_writes;
        }
        if emitted.is_empty() {
            return Ok(PreparedAck {
                commit,
                emitted: None,
            });
        }
        let lanes = self.routing.snapshot();
        let routes = Routes::of(&lanes, &emitted);
        let mut names = self.stored_routes(&routes, &lanes).into_iter();
        commit.emitted = emitted
            .iter()
            .map(|event| (Arc::clone(event), names.next().unwrap_or_default()))
            .collect();
        Ok(PreparedAck {
            commit,
            emitted: Some(Emitted {
                lanes,
                routes,
                events: emitted,
                room: Arc::clone(&lane.emitted),
            }),
        })
    }

    /// Commits `acks` in one request and queues the events they emitted; each comes back
    /// with whether it is stored, or the store's failure.
    pub(super) async fn commit_acks(
        self: &Arc<Self>,
        acks: Vec<Ack>,
    ) -> Vec<(Pending, Result<(), StorageError>)> {
        let (commits, rest): (Vec<_>, Vec<_>) = acks
            .into_iter()
            .map(|Ack { pending, prepared }| (prepared.commit, (pending, prepared.emitted)))
            .unzip();
        match self.commit_to_store(&commits).await {
            Ok(outcomes) => rest
                .into_iter()
                .zip(outcomes)
                .map(|((pending, emitted), outcome)| {
                    match (outcome, emitted) {
                        // A shared log hands them to whichever process pulls them.
                        (CommitOutcome::Committed { emitted: appended }, Some(emitted)) if !self.shared() => {
                            self.queue_emitted(emitted, &appended);
                        }
                        // `AlreadyDone`: its effects are in the log already (a redelivery).
                        (_, Some(emitted)) => emitted.room.release(emitted.events.len()),
                        (_, None) => {}
                    }
                    (pending, Ok(()))
                })
                .collect(),
            Err(error) => rest
                .into_iter()
                .map(|(pending, emitted)| {
                    if let Some(emitted) = emitted {
                        emitted.room.release(emitted.events.len());
                    }
                    (pending, Err(error.clone()))
                })
                .collect(),
        }
    }

    /// Commits to the store, one outcome per commit. A failure that may pass is the
    /// host's problem, not the handler's: it is logged, counted and tried again with
    /// backoff (10 ms doubling to 5 s) until it succeeds, fails for good or the bus stops.
    async fn commit_to_store(&self, commits: &[DeliveryCommit]) -> Result<Vec<CommitOutcome>, StorageError> {
        let mut delay = Duration::from_millis(10);
        loop {
            let committed = contained(|| self.storage.ledger.commit(commits))
                .await
                .and_then(|outcomes| {
                    if outcomes.len() == commits.len() {
                        Ok(outcomes)
                    } else {
                        Err(StorageError::permanent(format!(
                            "the store answered {} commits with {} outcomes",
                            commits.len(),
                            outcomes.len()
                        )))
                    }
                });
            match committed {
                Err(error) if error.is_transient() && !self.cancel.is_cancelled() => {
                    self.store_retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, retry_in = ?delay, commits = commits.len(), "the store failed to commit; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.cancel.cancelled() => return Err(error),
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Finishes acknowledgements once `commit_acks` stored them (or the store failed them
    /// for good). `cursor` and `finished` are those of the worker that made them.
    pub(super) fn settle_acks(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        stored: Vec<(Pending, Result<(), StorageError>)>,
        cursor: &mut Cursor,
        finished: &mut usize,
    ) {
        for (pending, result) in stored {
            let result = result.map_err(|error| {
                // The store failed for good: the host's failure, so it spends none of the
                // handler's attempts and is not reported as the handler's. The log still
                // holds the delivery pending: a restart delivers it again.
                tracing::error!(
                    subscription = %lane.subscription.name,
                    offset = pending.delivery.offset,
                    %error,
                    "storing a delivery's acknowledgement failed; it stays pending in the log"
                );
                HandlerError::new(
                    FailureKind::HostError,
                    format!("the store could not commit the delivery: {error}"),
                )
            });
            self.settle(lane, pending, Settled::Done(result), cursor, finished);
        }
    }

    /// [`Inner::record_failure`], with a panic in it ending the delivery here (the log
    /// still holds it pending: a restart delivers it again) rather than the worker.
    pub(super) async fn record_failure_contained(
        &self,
        lane: &Lane,
        pending: &Pending,
        failure: FailureRecord,
    ) -> Settled {
        let error = HandlerError::new(failure.kind, failure.message.clone());
        match AssertUnwindSafe(self.record_failure(lane, pending, failure))
            .catch_unwind()
            .await
        {
            Ok(settled) => settled,
            Err(panic) => {
                tracing::error!(
                    subscription = %lane.subscription.name,
                    offset = pending.delivery.offset,
                    "evhost panicked storing a failed delivery: {}",
                    panic_message(&*panic)
                );
                Settled::Done(Err(error))
            }
        }
    }

    /// Stores a failed attempt: as a retry if the policy allows another, else as a dead
    /// letter.
    async fn record_failure(&self, lane: &Lane, pending: &Pending, failure: FailureRecord) -> Settled {
        let delivery = &pending.delivery;
        let error = HandlerError::new(failure.kind, failure.message.clone());
        let retry = failure.kind != FailureKind::Reject && pending.attempt < lane.retry.max_attempts;
        let delay = lane.retry.backoff(pending.attempt, fastrand::f64());
        let outcome = if retry {
            DeliveryOutcome::Retry {
                attempt: pending.attempt,
                not_before: saturating_after(delay),
                failure,
            }
        } else {
            DeliveryOutcome::DeadLettered { failure }
        };
        let commit = delivery_commit(lane, delivery, outcome);
        match self.commit_to_store(&[commit]).await.as_deref() {
            Ok([CommitOutcome::Committed { .. }]) => {}
            // Another delivery of the event (a replay racing a restart's redelivery)
            // finished it first.
            Ok(_) => return Settled::Done(Err(error)),
            Err(store_error) => {
                // The log still has the delivery pending: a restart delivers it again.
                tracing::error!(
                    subscription = %lane.subscription.name,
                    offset = delivery.offset,
                    error = %store_error,
                    "storing a failed delivery's outcome failed"
                );
            }
        }
        // A shared log redelivers a retry itself, to whichever process pulls it then.
        if retry && !self.shared() {
            Settled::Retry(delay)
        } else {
            Settled::Done(Err(error))
        }
    }

    /// Reports a panic of the bus's own work on a delivery as a failure of it.
    pub(super) fn bus_panicked(
        &self,
        lane: &Lane,
        pending: &Pending,
        panic: &(dyn std::any::Any + Send),
    ) -> FailureRecord {
        let error = HandlerError::new(
            FailureKind::HostError,
            format!("evhost panicked running the delivery: {}", panic_message(panic)),
        );
        failure_record(
            &lane.subscription,
            &pending.delivery.event,
            pending.attempt,
            &error,
            &self.monitor,
        )
    }

    /// Finishes `pending` — counting a completed event in `finished`, which goes out of
    /// the bus in batches — or puts it back for its retry, taking its key from `cursor`.
    pub(super) fn settle(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        pending: Pending,
        settled: Settled,
        cursor: &mut Cursor,
        finished: &mut usize,
    ) {
        match settled {
            Settled::Done(result) => {
                if pending.delivery.finish(&lane.subscription.name, result) {
                    *finished += 1;
                    if *finished >= RELEASE_BATCH || pending.delivery.is_awaited() {
                        self.release_finished(finished);
                    }
                }
            }
            Settled::Retry(delay) => {
                // The key stays claimed by the retry, not by this worker: later events of
                // the key wait, other keys go on.
                let key = if pending.delivery.event.ordering_key().is_some() {
                    cursor.claimed_key.take()
                } else {
                    None
                };
                self.retry_later(lane, pending, key, delay);
            }
        }
    }

    /// Puts `pending` back on the lane after `delay`. Until then its key (if any) stays
    /// in the lane's map without being ready, which holds the key's later events.
    pub(super) fn retry_later(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        pending: Pending,
        key: Option<u64>,
        delay: Duration,
    ) {
        let (inner, lane) = (Arc::clone(self), Arc::clone(lane));
        self.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = inner.cancel.cancelled() => return,
            }
            inner.dispatch(&lane, lane.requeue(pending, key));
        });
    }

    /// Counts a worker's finished events out of the bus (batched: one shared atomic update
    /// per batch instead of per event).
    pub(super) fn release_finished(&self, finished: &mut usize) {
        self.in_flight.release(std::mem::take(finished));
    }
}

fn delivery_commit(lane: &Lane, delivery: &Delivery, outcome: DeliveryOutcome) -> DeliveryCommit {
    DeliveryCommit {
        subscription: Arc::clone(&lane.subscription.name),
        offset: delivery.offset,
        event: Arc::clone(&delivery.event),
        outcome,
        kv_namespace: String::new(),
        kv_writes: Vec::new(),
        emitted: Vec::new(),
        handler_version: None,
    }
}

/// Now plus `delay`, or the end of the year 9999 when that is further: the latest time
/// RFC 3339 writes with a four-digit year, which every store reads back.
fn saturating_after(delay: Duration) -> chrono::DateTime<Utc> {
    let latest = chrono::DateTime::<Utc>::from_timestamp(253_402_300_799, 0).expect("9999-12-31T23:59:59Z");
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|delay| Utc::now().checked_add_signed(delay))
        .map_or(latest, |time| time.min(latest))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::bus::{AsyncEventBus, EventBus as _, RetryPolicy};

    /// A bus that is not started (no workers run) and a lane of it.
    fn bus_and_lane() -> (AsyncEventBus, Arc<Lane>) {
        let bus = AsyncEventBus::new();
        let room = Arc::new(crate::bus::in_flight::InFlight::new(10));
        let lane = Arc::new(Lane::new(
            super::super::lane::tests::subscription(),
            1,
            RetryPolicy::default(),
            room,
            false,
        ));
        (bus, lane)
    }

    fn pending(inner: &Inner, key: &str) -> Pending {
        inner.in_flight.force_reserve(1);
        let event = Event::new("T", "test", json!({})).with_subject(key);
        let delivery = Delivery::new(Arc::new(event), 1);
        delivery.route_to(1);
        Pending::new(Arc::new(delivery))
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_holds_its_key_until_the_backoff_has_passed() {
        let (bus, lane) = bus_and_lane();
        let inner = &bus.inner;
        drop(lane.enqueue(vec![pending(inner, "k"), pending(inner, "k")]));
        lane.lock().workers += 1;
        let mut cursor = Cursor::default();
        let first = lane.next(&mut cursor).unwrap();
        let mut finished = 0;
        inner.settle(
            &lane,
            first,
            Settled::Retry(Duration::from_millis(100)),
            &mut cursor,
            &mut finished,
        );
        assert!(
            cursor.claimed_key.is_none(),
            "the retry took the key from the worker"
        );
        assert!(lane.next(&mut cursor).is_none(), "the key's next event waits");
        tokio::time::sleep(Duration::from_millis(99)).await;
        lane.lock().workers += 1;
        assert!(lane.next(&mut cursor).is_none(), "not before the backoff");
        tokio::time::sleep(Duration::from_millis(2)).await;
        lane.lock().workers += 1;
        let again = lane.next(&mut cursor).expect("back on its key after the backoff");
        assert_eq!(
            again.attempt, 0,
            "attempts are counted by the worker that retries it"
        );
        assert_eq!(finished, 0);
        bus.stop().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_delivery_is_counted_out_of_the_bus_in_batches() {
        let (bus, lane) = bus_and_lane();
        let inner = &bus.inner;
        let mut cursor = Cursor::default();
        let mut finished = 0;
        for _ in 0..3 {
            let one = pending(inner, "k");
            inner.settle(&lane, one, Settled::Done(Ok(())), &mut cursor, &mut finished);
        }
        assert_eq!(
            (finished, inner.in_flight.get()),
            (3, 3),
            "counted, not yet released"
        );
        inner.release_finished(&mut finished);
        assert_eq!((finished, inner.in_flight.get()), (0, 0));
        for _ in 0..RELEASE_BATCH {
            let one = pending(inner, "k");
            inner.settle(&lane, one, Settled::Done(Ok(())), &mut cursor, &mut finished);
        }
        assert_eq!(
            (finished, inner.in_flight.get()),
            (0, 0),
            "a full batch goes out at once"
        );
        bus.stop().await.unwrap();
    }
}
