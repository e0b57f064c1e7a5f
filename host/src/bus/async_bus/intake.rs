//! Intake: how events get onto the lanes. A publish reserves room (the bus's capacity),
//! appends the batch to the log with its routes and queues a delivery on each lane it is
//! routed to. Events a handler emitted come in here too once their commit stored them,
//! holding room of their emitter's instead. A subscription's backlog — what the log
//! holds pending for it — is read here, in the background, when it subscribes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use tokio::sync::oneshot;

use super::delivery::{Delivery, Pending};
use super::lane::{Hold, Lane};
use super::routing::{Emitted, Routes};
use super::{Backpressure, Inner, contained};
use crate::bus::in_flight::InFlight;
use crate::bus::{BusError, DeliveryReport, validate};
use crate::event::Event;
use crate::store::{AppendBatch, Appended, DeliveryCommit, DeliveryOutcome, PendingDelivery, StorageError};

/// What [`Inner::accept`] hands back.
#[derive(Debug, Default)]
pub(super) struct Accepted {
    pub(super) receivers: Vec<oneshot::Receiver<DeliveryReport>>,
    pub(super) appended: Vec<Appended>,
}

impl Inner {
    /// Accepts `events`, within the capacity: one report receiver per event when
    /// `collect` is set, and where the log put each. `checkpoint` is stored with the
    /// events.
    pub(super) async fn accept(
        inner: &Arc<Self>,
        events: Vec<Event>,
        collect: bool,
        checkpoint: Option<(String, i64)>,
    ) -> Result<Accepted, BusError> {
        for event in &events {
            validate(event)?;
        }
        if events.is_empty() && checkpoint.is_none() {
            return Ok(Accepted::default());
        }
        inner.check_open()?;
        if collect && inner.shared() {
            return Err(BusError::SyncUnsupported);
        }
        let n = events.len();
        let capacity = inner.in_flight.capacity();
        if n > capacity {
            return Err(BusError::BatchTooLarge { len: n, capacity });
        } else if !inner.in_flight.try_reserve(n) {
            match inner.config.backpressure {
                Backpressure::Reject => return Err(BusError::Full { capacity }),
                Backpressure::Wait => {
                    if !inner.in_flight.reserve(n, || inner.cancel.is_cancelled()).await {
                        return Err(BusError::Stopped);
                    }
                    if let Err(stopped) = inner.check_open() {
                        inner.in_flight.release(n);
                        return Err(stopped);
                    }
                }
            }
        }
        let mut append = Box::pin(Self::append_and_queue(
            Arc::clone(inner),
            events,
            collect,
            checkpoint,
        ));
        // A log in memory answers at once. One that has to wait (for its disk, its server)
        // has the request by now, and the events may be stored whether or not anyone waits
        // for the answer: a publisher that goes away (a dropped HTTP request) must leave
        // no stored event unqueued and no capacity taken, so the append finishes on a
        // task of its own.
        if let Poll::Ready(accepted) = futures::poll!(append.as_mut()) {
            return accepted;
        }
        tokio::spawn(append)
            .await
            .map_err(|e| BusError::Storage(StorageError::permanent(format!("the append task failed: {e}"))))?
    }

    /// The rest of [`Inner::accept`] once capacity for `events` is reserved: appends them
    /// to the log and queues them.
    async fn append_and_queue(
        inner: Arc<Self>,
        events: Vec<Event>,
        collect: bool,
        checkpoint: Option<(String, i64)>,
    ) -> Result<Accepted, BusError> {
        let n = events.len();
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        if inner.shared() {
            return Self::append_shared(&inner, events, checkpoint).await;
        }
        // The routes the log stores are the lanes the events are queued on below.
        let lanes = inner.routing.snapshot();
        let routes = Routes::of(&lanes, &events);
        let batch = AppendBatch {
            routes: inner.stored_routes(&routes, &lanes),
            events: events.clone(),
            checkpoint,
        };
        let appended = match contained(|| inner.storage.log.append(batch)).await {
            Ok(appended) => appended,
            Err(error) => {
                inner.in_flight.release(n);
                return Err(error.into());
            }
        };
        let mut receivers = Vec::new();
        let mut deliveries = Vec::with_capacity(n);
        let mut duplicates = 0;
        for (index, (event, appended)) in events.into_iter().zip(&appended).enumerate() {
            let mut delivery = Delivery::new(event, appended.offset);
            if collect {
                let (reporting, receiver) = delivery.reporting();
                delivery = reporting;
                receivers.push(receiver);
            }
            if appended.duplicate {
                delivery.complete_duplicate();
                duplicates += 1;
            } else {
                deliveries.push((Arc::new(delivery), index));
            }
        }
        inner
            .accepted
            .fetch_add((n - duplicates) as u64, Ordering::Relaxed);
        let unrouted = inner.queue_routed(&lanes, &routes, deliveries);
        inner.in_flight.release(duplicates + unrouted);
        Ok(Accepted { receivers, appended })
    }

    /// Appends to a shared log, which hands each event to whichever process pulls it:
    /// nothing is queued here, and the room the events took is given back at once.
    async fn append_shared(
        inner: &Arc<Self>,
        events: Vec<Arc<Event>>,
        checkpoint: Option<(String, i64)>,
    ) -> Result<Accepted, BusError> {
        let n = events.len();
        if let Err(error) = inner.prepared().await {
            inner.in_flight.release(n);
            return Err(error.into());
        }
        let batch = AppendBatch {
            events,
            routes: Vec::new(),
            checkpoint,
        };
        let appended = contained(|| inner.storage.log.append(batch)).await;
        inner.in_flight.release(n);
        let appended = appended?;
        let new = appended.iter().filter(|appended| !appended.duplicate).count();
        inner.accepted.fetch_add(new as u64, Ordering::Relaxed);
        Ok(Accepted {
            receivers: Vec::new(),
            appended,
        })
    }

    /// Waits until the shared log keeps every installed subscription's deliveries: an
    /// event appended before that would not reach a subscription that just subscribed.
    /// Gives up after a while with a transient error (the log is unreachable).
    async fn prepared(&self) -> Result<(), StorageError> {
        const PATIENCE: Duration = Duration::from_secs(10);
        for lane in self.routing.snapshot().iter() {
            if lane.prepared.is_cancelled() {
                continue;
            }
            if tokio::time::timeout(PATIENCE, lane.prepared.cancelled())
                .await
                .is_err()
            {
                return Err(StorageError::transient(format!(
                    "the log does not keep deliveries for the subscription {:?} yet",
                    lane.subscription.name
                )));
            }
        }
        Ok(())
    }

    /// The subscription names `routes` give each event, as the log stores them: none for
    /// a log that does not want them.
    pub(super) fn stored_routes(&self, routes: &Routes, lanes: &[Arc<Lane>]) -> Vec<Vec<Arc<str>>> {
        if self.storage.log.wants_routes() {
            routes.names(lanes)
        } else {
            Vec::new()
        }
    }

    /// Queues each delivery on the lanes its route names and starts workers for them.
    /// Returns how many go nowhere: they are complete at once and the caller counts them
    /// out.
    fn queue_routed(
        self: &Arc<Self>,
        lanes: &[Arc<Lane>],
        routes: &Routes,
        deliveries: Vec<(Arc<Delivery>, usize)>,
    ) -> usize {
        let (per_lane, nowhere) = routes.sort(lanes.len(), deliveries);
        for delivery in &nowhere {
            delivery.complete();
        }
        for (lane, deliveries) in lanes.iter().zip(per_lane) {
            if !deliveries.is_empty() {
                self.enqueue(lane, deliveries);
            }
        }
        nowhere.len()
    }

    /// Queues deliveries on the lane (behind its backlog while that is being read) and
    /// starts workers for them.
    pub(super) fn enqueue(self: &Arc<Self>, lane: &Arc<Lane>, deliveries: Vec<Pending>) {
        if let Some(queue) = lane.enqueue(deliveries) {
            self.dispatch(lane, queue);
        }
    }

    /// Queues the events a handler emitted, once their commit stored them. Their room was
    /// reserved before the commit; a duplicate gives its place back at once, the others
    /// when they are finished.
    pub(super) fn queue_emitted(self: &Arc<Self>, emitted: Emitted, appended: &[Appended]) {
        let Emitted {
            lanes,
            routes,
            events,
            room,
        } = emitted;
        let reserved = events.len();
        let deliveries: Vec<(Arc<Delivery>, usize)> = events
            .into_iter()
            .zip(appended)
            .enumerate()
            .filter(|(_, (_, appended))| !appended.duplicate)
            .map(|(index, (event, appended))| {
                let delivery = Delivery::new(event, appended.offset).holding(Arc::clone(&room));
                (Arc::new(delivery), index)
            })
            .collect();
        room.release(reserved - deliveries.len());
        // Not bounded by `capacity`: a handler waiting for room its own event occupies
        // would wait forever. The emitter's room bounds them instead.
        self.in_flight.force_reserve(deliveries.len());
        self.accepted
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        let unrouted = self.queue_routed(&lanes, &routes, deliveries);
        self.in_flight.release(unrouted);
    }

    /// A delivery the log holds (pending after a restart, replayed, or pulled from a
    /// shared log, then holding a place in `room`), counted in.
    pub(super) fn pending_delivery(&self, stored: PendingDelivery, room: Option<&Arc<InFlight>>) -> Pending {
        self.in_flight.force_reserve(1);
        let mut delivery = Delivery::new(stored.event, stored.offset);
        if let Some(room) = room {
            delivery = delivery.holding(Arc::clone(room));
        }
        delivery.route_to(1);
        Pending {
            delivery: Arc::new(delivery),
            attempt: stored.attempt,
        }
    }

    /// Reads what the log holds pending for `lane`'s subscription on a task of its own —
    /// no lock held, a page at a time — and queues it in offset order, each not before its
    /// `not_before`; then queues what was routed to the lane meanwhile and opens it.
    /// Until then the bus counts one event in flight, so `wait` waits for the backlog.
    pub(super) fn load_backlog(self: &Arc<Self>, lane: Arc<Lane>) {
        // A log that keeps nothing pending (in memory) says so at once: the lane opens
        // now, with no task.
        let nothing = matches!(
            self.storage
                .log
                .pending(&lane.subscription.name)
                .next()
                .now_or_never(),
            Some(None)
        );
        if nothing {
            self.dispatch(&lane, lane.finish_loading());
            return;
        }
        self.in_flight.force_reserve(1);
        let inner = Arc::clone(self);
        self.spawn(async move {
            let name = &lane.subscription.name;
            match inner.queue_backlog(&lane).await {
                Ok(0) => {}
                Ok(loaded) => tracing::info!(subscription = %name, pending = loaded, "queued the deliveries the log holds"),
                // What is left stays pending in the log: a restart delivers it.
                Err(error) => tracing::error!(subscription = %name, %error, "reading the deliveries the log holds failed"),
            }
            // Every queued delivery holds room of its own by now. The loader's stand-in
            // goes first: were it released after the workers start, a `stop` that a handled
            // delivery prompts could count it as an abandoned event.
            inner.in_flight.release(1);
            inner.dispatch(&lane, lane.finish_loading());
        });
    }

    /// Pulls `lane`'s deliveries from a shared log on a task of its own, for as long as
    /// the lane is installed and the bus is not stopping, and queues them. It pulls only
    /// while fewer than [`feed_window`] of them are unfinished: what it has not pulled
    /// stays with the log for the other processes, and what it pulled but could not
    /// finish (the bus stopped, the process died) the log redelivers after its ack wait.
    pub(super) fn feed(self: &Arc<Self>, lane: Arc<Lane>) {
        let inner = Arc::clone(self);
        self.spawn(async move {
            let window = Arc::new(InFlight::new(feed_window(lane.concurrency)));
            let name = &lane.subscription.name;
            inner.prepare(&lane).await;
            let mut stream = inner
                .storage
                .log
                .pull(name, lane.subscription.ordered, pull_batch(lane.concurrency));
            let installed = |inner: &Self| inner.routing.snapshot().iter().any(|l| Arc::ptr_eq(l, &lane));
            while installed(&inner) {
                let reserved = tokio::select! {
                    reserved = window.reserve(1, || inner.stopping.is_cancelled()) => reserved,
                    () = inner.stopping.cancelled() => false,
                };
                // An idle log answers nothing: waiting for it must not hold up `stop`.
                let next = match reserved {
                    true => tokio::select! {
                        next = stream.next() => next,
                        () = inner.stopping.cancelled() => None,
                    },
                    false => None,
                };
                let stored = match next {
                    Some(Ok(stored)) => stored,
                    Some(Err(error)) => {
                        window.release(1);
                        tracing::error!(subscription = %name, %error, "pulling deliveries from the log failed");
                        if !error.is_transient() {
                            break;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = inner.stopping.cancelled() => break,
                        }
                        continue;
                    }
                    None => break,
                };
                if lane.subscription.matches(&stored.event.ty) {
                    let pending = inner.pending_delivery(stored, Some(&window));
                    inner.enqueue(&lane, vec![pending]);
                } else {
                    inner.skip(&lane, stored).await;
                    window.release(1);
                }
            }
        });
    }

    /// Has the shared log keep `lane`'s deliveries, trying again while it is unreachable,
    /// then lets publishes through. A permanent error is logged: the feeder then reports
    /// it again as it pulls.
    async fn prepare(&self, lane: &Lane) {
        let subscription = &lane.subscription;
        loop {
            match contained(|| self.storage.log.prepare(&subscription.name, subscription.ordered)).await {
                Ok(()) => break,
                Err(error) if error.is_transient() && !self.stopping.is_cancelled() => {
                    tracing::warn!(subscription = %subscription.name, %error, "the log cannot keep the subscription's deliveries yet; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.stopping.cancelled() => break,
                    }
                }
                Err(error) => {
                    tracing::error!(subscription = %subscription.name, %error, "the log cannot keep the subscription's deliveries");
                    break;
                }
            }
        }
        lane.prepared.cancel();
    }

    /// Acknowledges a delivery of a shared log that the subscription's patterns do not
    /// match: the log holds every event for every subscription.
    async fn skip(&self, lane: &Lane, stored: PendingDelivery) {
        let commit = DeliveryCommit {
            subscription: Arc::clone(&lane.subscription.name),
            offset: stored.offset,
            event: stored.event,
            outcome: DeliveryOutcome::Acked,
            kv_namespace: String::new(),
            kv_writes: Vec::new(),
            emitted: Vec::new(),
            handler_version: None,
        };
        if let Err(error) = contained(|| self.storage.ledger.commit(std::slice::from_ref(&commit))).await {
            // Not acknowledged: the log offers it again after its ack wait.
            tracing::warn!(subscription = %lane.subscription.name, offset = commit.offset, %error, "acknowledging an event the subscription does not match failed");
        }
    }

    /// Queues the lane's backlog, page by page; returns how many deliveries it queued.
    async fn queue_backlog(self: &Arc<Self>, lane: &Arc<Lane>) -> Result<usize, StorageError> {
        const BATCH: usize = 1_000;
        let mut stream = self.storage.log.pending(&lane.subscription.name);
        let (mut loaded, mut ready) = (0, Vec::new());
        loop {
            let stored = tokio::select! {
                stored = stream.try_next() => stored?,
                () = self.cancel.cancelled() => None,
            };
            let Some(stored) = stored else { break };
            // Appended after the lane was installed: routed to it live, not backlog. The
            // log reads in offset order, so nothing further is backlog either.
            if lane
                .backlog_horizon
                .is_some_and(|horizon| stored.offset > horizon)
            {
                break;
            }
            // Routed to the lane after it was installed: it waits with the live events.
            if lane.routed_while_loading(stored.offset) {
                continue;
            }
            loaded += 1;
            let delay = stored
                .not_before
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .filter(|d| !d.is_zero());
            let pending = self.pending_delivery(stored, None);
            match delay {
                None => ready.push(pending),
                Some(delay) => {
                    self.queue_loaded(lane, std::mem::take(&mut ready));
                    self.hold(lane, pending, delay);
                }
            }
            if ready.len() >= BATCH {
                self.queue_loaded(lane, std::mem::take(&mut ready));
            }
        }
        self.queue_loaded(lane, ready);
        Ok(loaded)
    }

    /// Queues part of a backlog while the lane is still loading, and starts workers on it.
    fn queue_loaded(self: &Arc<Self>, lane: &Arc<Lane>, deliveries: Vec<Pending>) {
        if deliveries.is_empty() {
            return;
        }
        self.dispatch(lane, lane.enqueue_backlog(deliveries));
    }

    /// Queues `pending` after `delay`, holding its key meanwhile (unless older events of
    /// the key are already waiting: it goes behind them).
    fn hold(self: &Arc<Self>, lane: &Arc<Lane>, pending: Pending, delay: Duration) {
        if let Hold::Held(pending, key) = lane.hold(pending) {
            self.retry_later(lane, pending, key, delay);
        }
    }
}

/// How many deliveries a process pulls from a shared log for a subscription before the
/// first of them is finished: enough to keep its workers busy between pulls, few enough
/// that the other processes get the rest.
fn feed_window(concurrency: usize) -> usize {
    (concurrency * 8).clamp(32, 1024)
}

/// How many deliveries the log is asked for at a time: [`PULL_AHEAD`](crate::store::PULL_AHEAD)
/// × the lane's concurrency. What it sent and the feeder has not taken yet waits for room
/// in the window, at most `PULL_AHEAD` handler runs (`bench_nats`: batches of 4 ×
/// concurrency measured ~20 % faster than 2 × and ~1.8× faster than 1 ×).
fn pull_batch(concurrency: usize) -> usize {
    crate::store::PULL_AHEAD as usize * concurrency
}
