//! A subscription's lane: its queue of deliveries and the rules that keep a key's events
//! in order. A data structure, no tasks: workers ask it for the next piece of work, the
//! intake and retries put work in.
//!
//! A queue holds unkeyed deliveries and *keys*. All deliveries of one ordering key wait in
//! that key's own FIFO; the key is handed to one worker at a time (for up to
//! [`KEY_STREAK`] deliveries in a row, then it goes to the back), so the subscription
//! sees a key's events one by one in publish order while other keys run in parallel. A
//! key can also be *held* — in the map but not ready — while one of its deliveries waits
//! for a retry: the key's later events wait behind it, other keys go on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::Arc;

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

use super::delivery::Pending;
use crate::bus::RetryPolicy;
use crate::bus::Subscription;
use crate::bus::in_flight::InFlight;
use crate::event::Event;
use crate::store::Offset;

/// How many events of one key a worker handles in a row before letting other keys in.
pub(super) const KEY_STREAK: u32 = 64;

/// A subscription with its queue.
#[derive(Debug)]
pub(super) struct Lane {
    pub(super) subscription: Subscription,
    pub(super) concurrency: usize,
    pub(super) retry: RetryPolicy,
    /// Room for the events this subscription's handler emitted and the bus has not
    /// finished (`emitted_capacity`); kept by a replacement of the same name.
    pub(super) emitted: Arc<InFlight>,
    /// Cancelled once a shared log keeps this subscription's deliveries (or gave up
    /// making them): publishes wait for it, so none is appended before the log keeps it
    /// for the subscription.
    pub(super) prepared: CancellationToken,
    /// The log's [`horizon`](crate::store::EventLog::horizon) read before the lane could
    /// be routed to: its backlog lies at or below it, every delivery routed to it above.
    pub(super) backlog_horizon: Option<Offset>,
    key_hasher: std::hash::RandomState,
    queue: Mutex<Queue>,
}

/// What a lane holds, under its lock.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Work not yet claimed by a worker.
    ready: VecDeque<Work>,
    /// Waiting deliveries per ordering key, by the key's hash. A key in this map is ready
    /// (in `ready`), claimed by exactly one worker, or held for a retry. Two keys with one
    /// hash share a FIFO: still in order, merely less parallel.
    keys: HashMap<u64, VecDeque<Pending>>,
    /// Workers alive.
    pub(super) workers: usize,
    /// Workers holding a claimed piece of work.
    pub(super) running: usize,
    /// Workers whose handler is pending (waiting on I/O or time).
    pub(super) blocked: usize,
    /// Present while the subscription's backlog is read from the log.
    loading: Option<Loading>,
}

/// A lane's state while its backlog is read from the log: the deliveries routed to it
/// meanwhile wait here, after the backlog, and the log's copy of any of them is skipped.
#[derive(Debug, Default)]
struct Loading {
    live: Vec<Pending>,
    offsets: HashSet<Offset>,
}

#[derive(Debug)]
enum Work {
    Unkeyed(Pending),
    Key(u64),
}

/// What [`Lane::hold`] did.
#[derive(Debug)]
pub(super) enum Hold {
    /// The delivery is to be requeued after its wait, with the key it holds (if keyed).
    Held(Pending, Option<u64>),
    /// Older deliveries of its key wait already: it was queued behind them.
    Queued,
}

/// What a worker holds of a lane between two calls of [`Lane::next`].
#[derive(Debug, Default)]
pub(super) struct Cursor {
    /// The key whose event the worker handles (it owns the key until it lets go).
    pub(super) claimed_key: Option<u64>,
    /// Events of `claimed_key` handled in a row.
    streak: u32,
    /// Whether the worker holds a claimed piece of work.
    running: bool,
    /// Whether the worker's current handler returned `Pending`.
    pub(super) blocked: bool,
}

impl Lane {
    /// A lane for `subscription`; `loading` if its backlog is still to be read.
    pub(super) fn new(
        subscription: Subscription,
        concurrency: usize,
        retry: RetryPolicy,
        emitted: Arc<InFlight>,
        loading: bool,
    ) -> Self {
        Self {
            subscription,
            concurrency,
            retry,
            emitted,
            prepared: CancellationToken::new(),
            backlog_horizon: None,
            key_hasher: std::hash::RandomState::new(),
            queue: Mutex::new(Queue {
                loading: loading.then(Loading::default),
                ..Queue::default()
            }),
        }
    }

    /// The queue's lock: `std`'s futex mutex rather than `parking_lot`'s, the one such
    /// place in the host — every publish and every worker takes it, and measured with
    /// `bench_bus` here `parking_lot` cost 8–15 % of single-publish and keyed throughput.
    pub(super) fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hash a delivery's ordering key is queued under, if it has one.
    pub(super) fn key_of(&self, event: &Event) -> Option<u64> {
        event.ordering_key().map(|key| self.key_hasher.hash_one(key))
    }

    /// Queues deliveries — behind the backlog while that is being read. Returns the queue
    /// when the deliveries are ready for workers (`None` while loading).
    pub(super) fn enqueue(&self, deliveries: Vec<Pending>) -> Option<MutexGuard<'_, Queue>> {
        let mut queue = self.lock();
        if let Some(loading) = &mut queue.loading {
            loading
                .offsets
                .extend(deliveries.iter().map(|p| p.delivery.offset));
            loading.live.extend(deliveries);
            return None;
        }
        self.push(&mut queue, deliveries);
        Some(queue)
    }

    /// Queues part of the backlog while loading (bypassing the wait for the backlog).
    pub(super) fn enqueue_backlog(&self, deliveries: Vec<Pending>) -> MutexGuard<'_, Queue> {
        let mut queue = self.lock();
        self.push(&mut queue, deliveries);
        queue
    }

    /// Whether a delivery at `offset` was routed to the lane while its backlog loads (so
    /// the log's copy of it is skipped).
    pub(super) fn routed_while_loading(&self, offset: Offset) -> bool {
        self.lock()
            .loading
            .as_ref()
            .is_some_and(|loading| loading.offsets.contains(&offset))
    }

    /// Whether the backlog is still being read.
    pub(super) fn is_loading(&self) -> bool {
        self.lock().loading.is_some()
    }

    /// The backlog is in: queues what was routed meanwhile, behind it, and opens the lane.
    pub(super) fn finish_loading(&self) -> MutexGuard<'_, Queue> {
        let mut queue = self.lock();
        let live = queue
            .loading
            .take()
            .map(|loading| loading.live)
            .unwrap_or_default();
        self.push(&mut queue, live);
        queue
    }

    fn push(&self, queue: &mut Queue, deliveries: Vec<Pending>) {
        for pending in deliveries {
            match self.key_of(&pending.delivery.event) {
                None => queue.ready.push_back(Work::Unkeyed(pending)),
                Some(key) => {
                    if let Some(waiting) = queue.keys.get_mut(&key) {
                        waiting.push_back(pending);
                    } else {
                        queue.keys.insert(key, VecDeque::from([pending]));
                        queue.ready.push_back(Work::Key(key));
                    }
                }
            }
        }
    }

    /// Holds the key of `pending` for it, to be handed back with [`Lane::requeue`] after a
    /// delay — unless older deliveries of the key are already waiting: it is then queued
    /// behind them.
    pub(super) fn hold(&self, pending: Pending) -> Hold {
        let Some(key) = self.key_of(&pending.delivery.event) else {
            return Hold::Held(pending, None);
        };
        let mut queue = self.lock();
        if let Some(waiting) = queue.keys.get_mut(&key) {
            waiting.push_back(pending);
            return Hold::Queued;
        }
        queue.keys.insert(key, VecDeque::new());
        Hold::Held(pending, Some(key))
    }

    /// Puts `pending` back at the front, after a wait: on its `key` (which the wait held)
    /// or, unkeyed, ahead of the ready work.
    pub(super) fn requeue(&self, pending: Pending, key: Option<u64>) -> MutexGuard<'_, Queue> {
        let mut queue = self.lock();
        match key {
            Some(key) => {
                queue
                    .keys
                    .get_mut(&key)
                    .expect("a key waiting for a retry stays in the map")
                    .push_front(pending);
                queue.ready.push_front(Work::Key(key));
            }
            None => queue.ready.push_front(Work::Unkeyed(pending)),
        }
        queue
    }

    /// Lets go of what the worker just finished (keeping its key for a streak) and claims
    /// the next piece of work. `None` retires the worker (the lane counts it out).
    pub(super) fn next(&self, cursor: &mut Cursor) -> Option<Pending> {
        let mut queue = self.lock();
        if std::mem::take(&mut cursor.blocked) {
            queue.blocked -= 1;
        }
        if let Some(key) = cursor.claimed_key.take() {
            let waiting = queue.keys.get_mut(&key).expect("a claimed key stays in the map");
            match waiting.pop_front() {
                None => {
                    queue.keys.remove(&key);
                }
                Some(delivery) if cursor.streak < KEY_STREAK => {
                    cursor.streak += 1;
                    cursor.claimed_key = Some(key);
                    return Some(delivery);
                }
                Some(delivery) => {
                    waiting.push_front(delivery);
                    queue.ready.push_back(Work::Key(key));
                }
            }
        }
        if std::mem::take(&mut cursor.running) {
            queue.running -= 1;
        }
        cursor.streak = 0;
        let delivery = match queue.ready.pop_front() {
            None => {
                queue.workers -= 1;
                return None;
            }
            Some(Work::Unkeyed(pending)) => pending,
            Some(Work::Key(key)) => {
                cursor.claimed_key = Some(key);
                queue
                    .keys
                    .get_mut(&key)
                    .and_then(VecDeque::pop_front)
                    .expect("a ready key has a waiting event")
            }
        };
        queue.running += 1;
        cursor.running = true;
        Some(delivery)
    }
}

impl Queue {
    /// How many more workers to start for the ready work — enough to keep `runnable` of
    /// them running (workers waiting on a pending handler do not count), never more than
    /// `limit` in all — counted in as started.
    pub(super) fn more_workers(&mut self, runnable: usize, limit: usize) -> usize {
        let running = self.workers - self.blocked;
        let wanted = self
            .ready
            .len()
            .min(runnable.saturating_sub(running))
            .min(limit.saturating_sub(self.workers));
        self.workers += wanted;
        wanted
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::super::delivery::Delivery;
    use super::*;
    use crate::bus::{Pattern, SubscriptionId, from_fn};

    /// A subscription `s` to every event, whose handler does nothing.
    pub(in crate::bus::async_bus) fn subscription() -> Subscription {
        Subscription {
            id: SubscriptionId(1),
            name: Arc::from("s"),
            patterns: vec![Pattern::parse("*").unwrap()],
            handler: from_fn("s", |_| async { Ok(()) }),
            timeout: Duration::from_secs(1),
            ordered: false,
            metrics: Arc::default(),
        }
    }

    fn lane(loading: bool) -> Lane {
        Lane::new(
            subscription(),
            4,
            RetryPolicy::default(),
            Arc::new(InFlight::new(10)),
            loading,
        )
    }

    fn pending(offset: Offset, key: Option<&str>) -> Pending {
        let mut event = Event::new("T", "test", json!({ "n": offset }));
        event.subject = key.map(str::to_owned);
        Pending::new(Arc::new(Delivery::new(Arc::new(event), offset)))
    }

    /// Claims work until the lane has none, finishing each piece at once.
    fn drain(lane: &Lane, cursor: &mut Cursor) -> Vec<Offset> {
        lane.lock().workers += 1;
        let mut order = Vec::new();
        while let Some(pending) = lane.next(cursor) {
            order.push(pending.delivery.offset);
        }
        order
    }

    #[test]
    fn a_keys_deliveries_come_in_order_and_one_worker_holds_the_key() {
        let lane = lane(false);
        let work = vec![
            pending(1, Some("a")),
            pending(2, Some("b")),
            pending(3, Some("a")),
            pending(4, None),
            pending(5, Some("a")),
        ];
        drop(lane.enqueue(work));
        let (mut first, mut second) = (Cursor::default(), Cursor::default());
        lane.lock().workers += 2;
        let one = lane.next(&mut first).unwrap();
        let two = lane.next(&mut second).unwrap();
        assert_eq!((one.delivery.offset, two.delivery.offset), (1, 2));
        // The first worker keeps key `a` while it has events: 3, then 5.
        assert_eq!(lane.next(&mut first).unwrap().delivery.offset, 3);
        assert_eq!(
            lane.next(&mut second).unwrap().delivery.offset,
            4,
            "b is done; the unkeyed one"
        );
        assert_eq!(lane.next(&mut first).unwrap().delivery.offset, 5);
        assert!(lane.next(&mut first).is_none() && lane.next(&mut second).is_none());
        let queue = lane.lock();
        assert_eq!((queue.workers, queue.running), (0, 0), "both workers retired");
    }

    #[test]
    fn a_key_is_handed_on_after_its_streak_so_other_keys_get_their_turn() {
        let lane = lane(false);
        let n = u64::from(KEY_STREAK) + 2;
        let mut work: Vec<Pending> = (0..n).map(|i| pending(i, Some("busy"))).collect();
        work.push(pending(1_000, Some("other")));
        drop(lane.enqueue(work));
        let order = drain(&lane, &mut Cursor::default());
        let other = order.iter().position(|o| *o == 1_000).unwrap();
        assert_eq!(other, KEY_STREAK as usize + 1, "after one streak: {order:?}");
        let busy: Vec<Offset> = order.iter().copied().filter(|o| *o != 1_000).collect();
        assert_eq!(busy, (0..n).collect::<Vec<_>>(), "the key's order is kept");
    }

    #[test]
    fn a_held_key_keeps_its_later_events_waiting_until_its_retry_returns() {
        let lane = lane(false);
        drop(lane.enqueue(vec![pending(1, Some("a")), pending(2, Some("b"))]));
        let mut cursor = Cursor::default();
        lane.lock().workers += 1;
        let first = lane.next(&mut cursor).unwrap();
        assert_eq!(first.delivery.offset, 1);
        // Its handler failed: the key stays claimed by the retry, not by the worker.
        let key = cursor.claimed_key.take();
        drop(lane.enqueue(vec![pending(3, Some("a"))]));
        let rest: Vec<Offset> = std::iter::from_fn(|| lane.next(&mut cursor))
            .map(|p| p.delivery.offset)
            .collect();
        assert_eq!(rest, [2], "a's later event waits behind its retry");
        drop(lane.requeue(first, key));
        assert_eq!(drain(&lane, &mut Cursor::default()), [1, 3]);
    }

    #[test]
    fn a_stored_retry_holds_its_key_and_one_behind_older_events_waits_its_turn() {
        let lane = lane(false);
        let Hold::Held(first, key) = lane.hold(pending(1, Some("a"))) else {
            panic!("nothing of a waits yet");
        };
        assert!(key.is_some());
        drop(lane.enqueue(vec![pending(2, Some("a")), pending(3, Some("b"))]));
        assert!(
            matches!(lane.hold(pending(4, Some("a"))), Hold::Queued),
            "behind 2"
        );
        assert_eq!(drain(&lane, &mut Cursor::default()), [3], "a waits for its retry");
        drop(lane.requeue(first, key));
        assert_eq!(drain(&lane, &mut Cursor::default()), [1, 2, 4]);
        assert!(
            matches!(lane.hold(pending(9, None)), Hold::Held(_, None)),
            "an unkeyed one holds nothing"
        );
    }

    #[test]
    fn while_the_backlog_loads_routed_deliveries_wait_behind_it_and_are_known() {
        let lane = lane(true);
        assert!(lane.is_loading());
        assert!(lane.enqueue(vec![pending(7, Some("a"))]).is_none(), "waits");
        assert!(lane.routed_while_loading(7) && !lane.routed_while_loading(3));
        drop(lane.enqueue_backlog(vec![pending(3, Some("a")), pending(4, Some("a"))]));
        drop(lane.finish_loading());
        assert!(!lane.is_loading());
        assert_eq!(drain(&lane, &mut Cursor::default()), [3, 4, 7]);
    }

    #[test]
    fn workers_are_started_for_ready_work_up_to_the_runnable_target_and_the_limit() {
        let lane = lane(false);
        let mut queue = lane.enqueue((0..10).map(|i| pending(i, None)).collect()).unwrap();
        assert_eq!(queue.more_workers(2, 4), 2, "two runnable");
        assert_eq!(queue.more_workers(2, 4), 0, "already two running");
        queue.blocked = 2;
        assert_eq!(queue.more_workers(2, 4), 2, "two more while two wait");
        queue.blocked = 4;
        assert_eq!(queue.more_workers(2, 4), 0, "never more than the limit");
        assert_eq!(queue.workers, 4);
    }
}
