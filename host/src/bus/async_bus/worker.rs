//! Workers: the tasks that run handlers. A lane has a few long-lived workers (at most its
//! concurrency limit): each claims work from the lane, takes a permit of the bus-wide
//! limit, calls the handler and hands the outcome to settlement, then claims the next.
//!
//! A handler that finishes on its first poll keeps the worker busy; one that returns
//! `Pending` marks the worker blocked, which lets another worker start, up to the lane's
//! limit. So CPU-bound handlers get about one worker per thread and I/O-bound ones as many
//! as are allowed, without a task spawned per event. After a call that had to wait the
//! worker queues for its permit again: the semaphore is fair, so slow calls cannot keep
//! slots from other subscriptions.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::MutexGuard;
use std::task::Poll;

use futures::FutureExt as _;
use tokio::sync::OwnedSemaphorePermit;

use super::Inner;
use super::commit::{Ack, PreparedAck};
use super::delivery::Pending;
use super::lane::{Cursor, Lane, Queue};
use crate::bus::{failure_record, invoke};
use crate::monitor::FailureRecord;

/// How many quick invocations (done on their first poll) a worker makes on one bus-wide
/// permit before queueing for it again, so a busy subscription cannot starve the others.
const PERMIT_STREAK: u32 = 64;
/// Most acknowledgements of unkeyed events a worker stores in one commit. Keyed ones are
/// stored one by one, before the key moves on.
const ACK_BATCH: usize = 64;

/// What one worker holds between invocations.
#[derive(Default)]
struct WorkerState {
    cursor: Cursor,
    permit: Option<OwnedSemaphorePermit>,
    permit_uses: u32,
    /// Whether something the worker ran since it took its permit had to wait.
    waited: bool,
    /// Events this worker completed that are not yet counted out of the bus.
    finished: usize,
    /// Successful deliveries whose acknowledgement is not stored yet.
    acks: Vec<Ack>,
    /// The lane let go of the worker; it only stores its last acknowledgements.
    retired: bool,
}

impl Inner {
    /// Starts workers for the lane's ready work if the bus runs; before `start` the work
    /// waits for [`Inner::start_all_workers`].
    pub(super) fn dispatch(self: &Arc<Self>, lane: &Arc<Lane>, queue: MutexGuard<'_, Queue>) {
        if self.dispatching() {
            self.spawn_workers(lane, queue);
        }
    }

    /// Starts workers for the lane's ready work: enough to keep about one per thread
    /// running, never more than the lane's limit.
    pub(super) fn spawn_workers(self: &Arc<Self>, lane: &Arc<Lane>, mut queue: MutexGuard<'_, Queue>) {
        let wanted = queue.more_workers(self.runnable_target, lane.concurrency);
        drop(queue);
        for _ in 0..wanted {
            self.spawn(Arc::clone(self).work(Arc::clone(lane)));
        }
    }

    /// Starts the workers of every lane (at `start`, or `stop` of a bus never started).
    pub(super) fn start_all_workers(self: &Arc<Self>) {
        for lane in self.routing.snapshot().iter() {
            self.spawn_workers(lane, lane.lock());
        }
        let retired = std::mem::take(&mut *self.retired.lock());
        for lane in &retired {
            self.spawn_workers(lane, lane.lock());
        }
    }

    /// A subscription left the routing table; what is already queued for it is still
    /// handled. Before `start` there are no workers yet, so it waits for `start` with the
    /// others.
    pub(super) fn retire(self: &Arc<Self>, lane: Arc<Lane>) {
        if !self.dispatching() {
            let mut retired = self.retired.lock();
            // Checked again under the lock: `start` may have run in between.
            if !self.dispatching() {
                retired.push(lane);
                return;
            }
        }
        self.spawn_workers(&lane, lane.lock());
    }

    /// A worker: claims work from the lane and calls the handler until nothing is ready.
    async fn work(self: Arc<Self>, lane: Arc<Lane>) {
        let mut worker = WorkerState::default();
        loop {
            if self.cancel.is_cancelled() {
                self.release_finished(&mut worker.finished);
                return;
            }
            // A key's acknowledgement is stored before the key moves on: its next event
            // reads what this one wrote, and a restart must not find them out of order.
            if worker.cursor.claimed_key.is_some()
                && !worker.acks.is_empty()
                && !self.flush_acks(&lane, &mut worker).await
            {
                return;
            }
            let next = lane.next(&mut worker.cursor);
            worker.retired = next.is_none();
            if !worker.acks.is_empty()
                && (next.is_none() || worker.acks.len() >= ACK_BATCH)
                && !self.flush_acks(&lane, &mut worker).await
            {
                return;
            }
            let Some(mut pending) = next else {
                self.release_finished(&mut worker.finished);
                return;
            };
            let waited = std::mem::take(&mut worker.waited);
            if worker.permit.is_none() || worker.permit_uses >= PERMIT_STREAK || waited {
                drop(worker.permit.take());
                self.release_finished(&mut worker.finished);
                tokio::select! {
                    acquired = Arc::clone(&self.permits).acquire_owned() => {
                        worker.permit = Some(acquired.expect("the bus never closes its semaphore"));
                    }
                    () = self.cancel.cancelled() => return,
                }
                worker.permit_uses = 0;
            }
            worker.permit_uses += 1;
            // The handler's own panics are caught by `invoke`; these are the bus's.
            let attempt = AssertUnwindSafe(self.attempt(&lane, &mut pending)).catch_unwind();
            let Some(attempted) = self.blocking(&lane, &mut worker, attempt).await else {
                return;
            };
            let attempted = match attempted {
                Ok(attempted) => attempted,
                Err(panic) => Err(self.bus_panicked(&lane, &pending, &*panic)),
            };
            match attempted {
                Ok(prepared) => worker.acks.push(Ack { pending, prepared }),
                Err(failure) => {
                    let recorded = self.record_failure_contained(&lane, &pending, failure);
                    let Some(settled) = self.blocking(&lane, &mut worker, recorded).await else {
                        return;
                    };
                    self.settle(&lane, pending, settled, &mut worker.cursor, &mut worker.finished);
                }
            }
        }
    }

    /// Runs `work` for the worker. If it does not finish at once, the worker counts as
    /// blocked (another may start on the lane's ready work) and hands its buffered
    /// acknowledgements to a task of their own, so they do not wait for a slow handler.
    /// `None` when the bus was cancelled meanwhile.
    async fn blocking<T>(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        worker: &mut WorkerState,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        if let Poll::Ready(output) = futures::poll!(work.as_mut()) {
            return Some(output);
        }
        worker.waited = true;
        self.release_finished(&mut worker.finished);
        // A worker the lane already let go of (it found nothing more to do) is not counted.
        if !worker.retired && !std::mem::replace(&mut worker.cursor.blocked, true) {
            let mut queue = lane.lock();
            queue.blocked += 1;
            self.spawn_workers(lane, queue);
        }
        if !worker.acks.is_empty() {
            let (inner, lane, acks) = (
                Arc::clone(self),
                Arc::clone(lane),
                std::mem::take(&mut worker.acks),
            );
            self.spawn(async move {
                let (mut cursor, mut finished) = (Cursor::default(), 0);
                let stored = inner.commit_acks(acks).await;
                inner.settle_acks(&lane, stored, &mut cursor, &mut finished);
                inner.release_finished(&mut finished);
            });
        }
        tokio::select! {
            output = &mut work => Some(output),
            () = self.cancel.cancelled() => None,
        }
    }

    /// Stores the worker's buffered acknowledgements in one commit and finishes them.
    /// `false` when the bus was cancelled meanwhile.
    async fn flush_acks(self: &Arc<Self>, lane: &Arc<Lane>, worker: &mut WorkerState) -> bool {
        let acks = std::mem::take(&mut worker.acks);
        let Some(stored) = self.blocking(lane, worker, self.commit_acks(acks)).await else {
            return false;
        };
        self.settle_acks(lane, stored, &mut worker.cursor, &mut worker.finished);
        true
    }

    /// Calls the handler once and prepares the acknowledgement of its effects, with room
    /// reserved for the events it emitted.
    async fn attempt(&self, lane: &Lane, pending: &mut Pending) -> Result<PreparedAck, FailureRecord> {
        pending.attempt += 1;
        let (subscription, event) = (&lane.subscription, &pending.delivery.event);
        let effects = invoke(subscription, event, pending.attempt, &self.monitor).await?;
        let emitted = effects.emitted.len();
        let prepared = match self.reserve_emitted(lane, emitted).await {
            Ok(()) => self
                .prepare_ack(lane, &pending.delivery, effects)
                .inspect_err(|_| {
                    lane.emitted.release(emitted);
                }),
            Err(error) => Err(error),
        };
        prepared.map_err(|error| failure_record(subscription, event, pending.attempt, &error, &self.monitor))
    }
}
