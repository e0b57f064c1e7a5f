//! The concurrent bus.
//!
//! Each subscription owns a queue and a small pool of worker tasks (at most its
//! concurrency limit). Publishing appends the batch to the [`EventLog`] — with, per event,
//! the subscriptions it must reach — then pushes each event onto the queue of every
//! matching subscription and wakes workers. A worker pops work, takes a permit of the
//! bus-wide limit, calls the handler and commits the delivery's outcome and effects to the
//! log before it moves on (so the next event of a key sees the previous one's key-value
//! writes). A subscription's pending deliveries in the log are queued when it subscribes:
//! that is how a restart on a durable log redelivers what was not acknowledged.
//!
//! Isolation: a subscription runs at most its concurrency limit of invocations, and a
//! worker queues for its bus-wide permit again after every call that had to wait, so a
//! slow subscription cannot hold every slot. Events a handler emits take room from its
//! own subscription's `emitted_capacity`, so a handler feeding itself is held back alone.
//! A panic in the bus's own work or in the log fails the delivery, never the worker.
//!
//! Ordering: a queue holds unkeyed events and *keys*. All events with one ordering key wait
//! in that key's own FIFO; the key is handed to one worker at a time, so a subscription
//! sees a key's events one by one in publish order while other keys run in parallel.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::Poll;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RetryPolicy;
use super::in_flight::InFlight;
use super::{
    BusError, DEFAULT_HANDLER_TIMEOUT, DeliveryReport, Effects, EventBus, EventHandler, HandlerError,
    HandlerOutcome, Pattern, StopReport, SubscribeOptions, Subscription, SubscriptionId, failure_record,
    invoke, panic_message, validate,
};
use crate::event::Event;
use crate::metrics::BusMetrics;
use crate::monitor::{self, ErrorMonitor, ErrorStream, FailureKind, FailureRecord};
use crate::outbox::OutboxTarget;
use crate::store::{
    AppendBatch, Appended, CommitOutcome, DeadLetter, DeadLetterFilter, DeliveryCommit, DeliveryOutcome,
    KeyValueStore, Offset, PendingDelivery, Storage, StorageError,
};

/// How many events of one key a worker handles in a row before letting other keys in.
const KEY_STREAK: u32 = 64;
/// Finished events a worker counts out of the bus at once.
const RELEASE_BATCH: usize = 64;
/// How many quick invocations (done on their first poll) a worker makes on one bus-wide
/// permit before queueing for it again, so a busy subscription cannot starve the others.
/// After a call that had to wait the worker always queues again: the semaphore is fair,
/// so slow calls cannot keep slots from other subscriptions.
const PERMIT_STREAK: u32 = 64;
/// Most acknowledgements of unkeyed events a worker stores in one commit. Keyed ones are
/// stored one by one, before the key moves on.
const ACK_BATCH: usize = 64;

/// What `publish` does when the bus already holds `capacity` unfinished events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait until enough events finish.
    #[default]
    Wait,
    /// Fail at once with [`BusError::Full`].
    Reject,
}

/// Settings of an [`AsyncEventBus`].
#[derive(Debug, Clone)]
pub struct AsyncBusConfig {
    /// Handler invocations running at once across all subscriptions.
    pub max_concurrency: usize,
    /// Default limit of concurrent invocations per subscription (never above
    /// `max_concurrency`); [`SubscribeOptions::concurrency`] overrides it.
    pub subscription_concurrency: usize,
    /// Default per-invocation timeout.
    pub handler_timeout: Duration,
    /// Accepted events not yet fully handled that the bus holds at most. This bounds memory.
    pub capacity: usize,
    /// Events each subscription's handler emitted that the bus holds unfinished at most,
    /// on top of `capacity` (they may not wait for room publishers hold). A handler whose
    /// emitted events do not fit waits for room, up to its timeout, and then fails as
    /// `resource-limit` (and is retried): a handler feeding itself cannot grow the bus
    /// without bound, and uses up only its own room, not other handlers'.
    pub emitted_capacity: usize,
    /// What publishing does when `capacity` is reached.
    pub backpressure: Backpressure,
    /// Unconsumed failure records the error monitor keeps before counting overflow.
    pub monitor_capacity: usize,
    /// How long [`EventBus::stop`] waits for in-flight events.
    pub drain_timeout: Duration,
    /// Default retry policy ([`SubscribeOptions::retry`] overrides it). The default makes
    /// one attempt: a failure is dead-lettered at once.
    pub retry: RetryPolicy,
    /// The tokio runtime handlers run on (the bus's workers and retry timers); the runtime
    /// the bus is used from when `None`. `evhost run` gives plugins a runtime of their own,
    /// so that however busy they keep its threads, the HTTP API and the store keep theirs.
    pub executor: Option<tokio::runtime::Handle>,
}

impl Default for AsyncBusConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 256,
            // Well below the bus-wide limit: one slow subscription cannot take every slot.
            subscription_concurrency: 32,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            capacity: 100_000,
            emitted_capacity: 1_000,
            backpressure: Backpressure::Wait,
            monitor_capacity: monitor::DEFAULT_CAPACITY,
            drain_timeout: Duration::from_secs(30),
            retry: RetryPolicy::no_retries(),
            executor: None,
        }
    }
}

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const STOPPED: u8 = 3;

/// A bus whose `publish` returns once the event is accepted; handlers run concurrently.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), evhost::BusError> {
/// use evhost::{AsyncEventBus, Event, EventBus, HandlerError, bus::from_fn};
///
/// let bus = AsyncEventBus::new();
/// bus.subscribe("User*", from_fn("audit", |event| async move {
///     println!("{}", event.ty);
///     Ok::<_, HandlerError>(())
/// }))?;
/// bus.start().await?;
/// bus.publish(Event::new("UserCreated", "users", serde_json::json!({"id": "u1"}))).await?;
/// bus.wait().await;
/// bus.stop().await?;
/// # Ok(()) }
/// ```
///
/// Cloning gives another handle to the same bus. When the last handle is dropped the
/// workers stop; call [`EventBus::stop`] first to drain.
#[derive(Debug, Clone)]
pub struct AsyncEventBus {
    inner: Arc<Inner>,
    _stop_workers_on_drop: Arc<tokio_util::sync::DropGuard>,
}

#[derive(Debug)]
struct Inner {
    config: AsyncBusConfig,
    storage: Storage,
    /// Copy-on-write, so publishing reads it without holding a lock while routing.
    lanes: RwLock<Arc<[Arc<Lane>]>>,
    /// Subscriptions removed before `start` with events still queued.
    retired: Mutex<Vec<Arc<Lane>>>,
    next_id: AtomicU64,
    state: AtomicU8,
    in_flight: InFlight,
    accepted: AtomicU64,
    /// Commits the store failed and the bus tried again.
    store_retries: AtomicU64,
    /// Workers kept runnable per subscription: about one per thread.
    runnable_target: usize,
    key_hasher: std::hash::RandomState,
    /// The bus-wide concurrency limit: a worker holds one permit while it calls handlers.
    permits: Arc<Semaphore>,
    monitor: ErrorMonitor,
    workers: TaskTracker,
    cancel: CancellationToken,
}

/// A subscription with its queue.
#[derive(Debug)]
struct Lane {
    subscription: Subscription,
    concurrency: usize,
    retry: RetryPolicy,
    /// Room for the events this subscription's handler emitted and the bus has not
    /// finished (`emitted_capacity`); kept by a replacement of the same name.
    emitted: Arc<InFlight>,
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Work not yet claimed by a worker.
    ready: VecDeque<Work>,
    /// Waiting events per ordering key, by the key's hash. A key in this map is either in
    /// `ready` (its FIFO is non-empty) or claimed by exactly one worker. Two keys with one
    /// hash share a FIFO: still in order, merely less parallel.
    keys: HashMap<u64, VecDeque<Pending>>,
    /// Workers alive.
    workers: usize,
    /// Workers holding a claimed piece of work.
    running: usize,
    /// Workers whose handler is pending (waiting on I/O or time).
    blocked: usize,
    /// Present while the subscription's backlog is read from the log.
    loading: Option<Loading>,
}

/// A lane's state while its backlog is read from the log: the events routed to it
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

/// A delivery waiting in one subscription's queue, with that subscription's attempts.
#[derive(Debug)]
struct Pending {
    delivery: Arc<Delivery>,
    /// Attempts made so far (the log keeps their failures).
    attempt: u32,
}

impl Pending {
    fn new(delivery: Arc<Delivery>) -> Self {
        Self { delivery, attempt: 0 }
    }
}

/// How a delivery attempt ended, once its outcome is in the log.
enum Settled {
    /// Acknowledged or dead-lettered: the subscription is done with the event.
    Done(Result<(), HandlerError>),
    /// To be tried again after this delay.
    Retry(Duration),
}

/// A successful invocation's acknowledgement, ready to commit.
#[derive(Debug)]
struct PreparedAck {
    commit: DeliveryCommit,
    /// The events it emitted with the lanes they are routed to, queued once stored.
    emitted: Option<Emitted>,
}

/// Events a handler emitted, with the routing table and routes they were routed by and
/// the room reserved for them.
#[derive(Debug)]
struct Emitted {
    lanes: Arc<[Arc<Lane>]>,
    routes: Routes,
    events: Vec<Arc<Event>>,
    room: Arc<InFlight>,
}

/// Per event of a batch, the lanes (indices into one routing table) it goes to: matched
/// once, for the routes the log stores and for queueing.
#[derive(Debug, Default)]
struct Routes {
    /// Where each event's lanes end in `lanes`.
    ends: Vec<u32>,
    lanes: Vec<u32>,
}

impl Routes {
    fn of(lanes: &[Arc<Lane>], events: &[Arc<Event>]) -> Self {
        let mut routes = Routes {
            ends: Vec::with_capacity(events.len()),
            lanes: Vec::with_capacity(events.len()),
        };
        for event in events {
            for (index, lane) in lanes.iter().enumerate() {
                if lane.subscription.matches(&event.ty) {
                    routes.lanes.push(index as u32);
                }
            }
            routes.ends.push(routes.lanes.len() as u32);
        }
        routes
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn get(&self, event: usize) -> &[u32] {
        let start = if event == 0 {
            0
        } else {
            self.ends[event - 1] as usize
        };
        &self.lanes[start..self.ends[event] as usize]
    }
}

/// A delivery whose handler succeeded, waiting in its worker for the next commit.
#[derive(Debug)]
struct Ack {
    pending: Pending,
    prepared: PreparedAck,
}

/// One accepted event on its way to every matching subscription.
#[derive(Debug)]
struct Delivery {
    event: Arc<Event>,
    offset: Offset,
    /// Subscriptions that have not finished with it yet.
    remaining: AtomicUsize,
    /// Present for `publish_sync`, which waits for every outcome.
    report: Option<ReportCollector>,
    /// For an event a handler emitted: the emitting subscription's room for emitted events,
    /// which it holds until it is finished.
    emitted_by: Option<Arc<InFlight>>,
}

/// What `Inner::accept` hands back.
#[derive(Debug, Default)]
struct Accepted {
    receivers: Vec<oneshot::Receiver<DeliveryReport>>,
    appended: Vec<Appended>,
}

#[derive(Debug)]
struct ReportCollector {
    outcomes: Mutex<Vec<HandlerOutcome>>,
    done: Mutex<Option<oneshot::Sender<DeliveryReport>>>,
}

impl Default for AsyncEventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl AsyncEventBus {
    /// A bus with the default settings and an in-memory log.
    pub fn new() -> Self {
        Self::with_config(AsyncBusConfig::default())
    }

    /// A bus with the given settings and an in-memory log.
    pub fn with_config(config: AsyncBusConfig) -> Self {
        Self::with_storage(config, Storage::memory())
    }

    /// A bus that keeps accepted events, deliveries' outcomes, dead letters and the
    /// plugins' key-value data in `storage` (e.g. [`SqliteStore::storage`](crate::store::sqlite::SqliteStore::storage)).
    ///
    /// # Panics
    /// If `max_concurrency`, `subscription_concurrency`, `capacity`, `emitted_capacity` or
    /// `monitor_capacity` is zero.
    pub fn with_storage(config: AsyncBusConfig, storage: Storage) -> Self {
        assert!(config.max_concurrency > 0, "max_concurrency must be at least 1");
        assert!(
            config.subscription_concurrency > 0,
            "subscription_concurrency must be at least 1"
        );
        assert!(config.capacity > 0, "capacity must be at least 1");
        assert!(config.emitted_capacity > 0, "emitted_capacity must be at least 1");
        let cancel = CancellationToken::new();
        let inner = Inner {
            storage,
            lanes: RwLock::new(Arc::from(Vec::new())),
            retired: Mutex::default(),
            next_id: AtomicU64::new(1),
            state: AtomicU8::new(CREATED),
            in_flight: InFlight::new(config.capacity),
            accepted: AtomicU64::new(0),
            store_retries: AtomicU64::new(0),
            runnable_target: std::thread::available_parallelism().map_or(2, |n| n.get()),
            key_hasher: std::hash::RandomState::new(),
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            monitor: ErrorMonitor::new(config.monitor_capacity),
            workers: TaskTracker::new(),
            cancel: cancel.clone(),
            config,
        };
        Self {
            inner: Arc::new(inner),
            _stop_workers_on_drop: Arc::new(cancel.drop_guard()),
        }
    }

    /// The bus's settings.
    pub fn config(&self) -> &AsyncBusConfig {
        &self.inner.config
    }

    /// The error monitor every failure is reported to.
    pub fn monitor(&self) -> &ErrorMonitor {
        &self.inner.monitor
    }

    /// Takes the stream of failure records (once; see [`ErrorMonitor::errors`]).
    pub fn errors(&self) -> Option<ErrorStream> {
        self.inner.monitor.errors()
    }

    /// Logs every failure through `tracing` on a background task.
    pub fn start_error_monitor(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.monitor.start_logging()
    }

    /// Counters and latency per subscription.
    pub fn metrics(&self) -> BusMetrics {
        let inner = &self.inner;
        BusMetrics {
            accepted: inner.accepted.load(Ordering::Relaxed),
            in_flight: inner.in_flight.get() as u64,
            running: inner.lanes().iter().map(|lane| lane.lock().running as u64).sum(),
            failures_reported: inner.monitor.reported(),
            monitor_overflow: inner.monitor.overflowed(),
            dead_letters: inner.storage.dead_letters.count(),
            store_retries: inner.store_retries.load(Ordering::Relaxed),
            subscriptions: inner
                .lanes()
                .iter()
                .map(|lane| {
                    let s = &lane.subscription;
                    s.metrics.snapshot(&s.name, s.patterns_text())
                })
                .collect(),
        }
    }

    /// Subscribes with explicit settings (name, concurrency limit, timeout).
    pub fn subscribe_with(
        &self,
        pattern: &str,
        handler: Arc<dyn EventHandler>,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, BusError> {
        self.subscribe_any(&[pattern], handler, options)
    }

    /// One subscription to events matching any of `patterns`. Its events are ordered per
    /// key across all the patterns, which separate subscriptions would not be.
    pub fn subscribe_any(
        &self,
        patterns: &[impl AsRef<str>],
        handler: Arc<dyn EventHandler>,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, BusError> {
        self.install(None, patterns, handler, options)
    }

    /// Replaces subscription `old` with a new one in a single step: every event is routed
    /// to exactly one of the two — those accepted before to `old`, whose queued events are
    /// still handled, those accepted after to the new one. (An `unsubscribe` followed by a
    /// `subscribe` would lose the events accepted in between; the other order would
    /// deliver them twice.) Per-key ordering does not carry over from one to the other.
    pub fn replace_subscription(
        &self,
        old: SubscriptionId,
        patterns: &[impl AsRef<str>],
        handler: Arc<dyn EventHandler>,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, BusError> {
        self.install(Some(old), patterns, handler, options)
    }

    /// Adds a subscription, removing `replacing` under the same lock.
    fn install(
        &self,
        replacing: Option<SubscriptionId>,
        patterns: &[impl AsRef<str>],
        handler: Arc<dyn EventHandler>,
        options: SubscribeOptions,
    ) -> Result<SubscriptionId, BusError> {
        let inner = &self.inner;
        let patterns = Pattern::parse_all(patterns)?;
        let id = SubscriptionId(inner.next_id.fetch_add(1, Ordering::Relaxed));
        let concurrency = options
            .concurrency
            .unwrap_or(inner.config.subscription_concurrency)
            .clamp(1, inner.config.max_concurrency);
        let name = options.name.unwrap_or_else(|| handler.name().to_owned());
        let timeout = options.timeout.unwrap_or(inner.config.handler_timeout);
        let retry = options.retry.unwrap_or(inner.config.retry);
        let name: Arc<str> = Arc::from(name);
        let lane = inner.edit_lanes(replacing, |replaced, others| {
            let same_name = replaced.is_some_and(|old| old.subscription.name == name);
            // A name is a subscription's identity: its deliveries, their outcomes and its
            // dead letters are stored under it.
            if others.iter().any(|other| other.subscription.name == name) {
                return Err(BusError::NameTaken(name.to_string()));
            }
            // A replacement of the same name keeps counting where the old one left off, so
            // metrics do not restart at every plugin reload.
            let (metrics, emitted) = match replaced {
                Some(old) if same_name => (Arc::clone(&old.subscription.metrics), Arc::clone(&old.emitted)),
                _ => (
                    Arc::default(),
                    Arc::new(InFlight::new(inner.config.emitted_capacity)),
                ),
            };
            let lane = Arc::new(Lane {
                subscription: Subscription {
                    id,
                    name,
                    patterns,
                    handler,
                    timeout,
                    metrics,
                },
                concurrency,
                retry,
                emitted,
                // What the log holds for this name is read after the lane is installed,
                // with no lock held; events routed to the lane meanwhile wait until it is
                // queued, so a key's old events come before its new ones. A replacement of
                // the same name leaves them to the old lane, which has them queued already.
                queue: Mutex::new(Queue {
                    loading: (!same_name).then(Loading::default),
                    ..Queue::default()
                }),
            });
            Ok(Some(lane))
        })?;
        if let Some(lane) = lane {
            if lane.lock().loading.is_some() {
                inner.load_backlog(lane);
            } else if inner.state.load(Ordering::SeqCst) != CREATED {
                inner.spawn_workers(&lane, lane.lock());
            }
        }
        Ok(id)
    }

    /// The dead letters matching `filter`, by subscription and offset.
    pub async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, BusError> {
        Ok(self.inner.storage.dead_letters.list(filter.clone()).await?)
    }

    /// Delivers the matching dead letters again, each to the current handler of its
    /// subscription, with a fresh set of attempts (the failure history is kept and grows if
    /// they fail again). Returns how many were replayed; those whose subscription does not
    /// exist now stay in the queue.
    pub async fn replay_dead_letters(&self, filter: &DeadLetterFilter) -> Result<usize, BusError> {
        let inner = &self.inner;
        inner.check_open()?;
        let lanes = inner.lanes();
        let names = lanes.iter().map(|l| l.subscription.name.to_string()).collect();
        let replayed = inner.storage.dead_letters.replay(filter.clone(), names).await?;
        let count = replayed.len();
        let dispatching = inner.state.load(Ordering::SeqCst) != CREATED;
        for replayed in replayed {
            // Listed by the log because its lane exists; if that lane went away meanwhile,
            // the delivery stays pending in the log for the next subscriber of the name.
            if let Some(lane) = lanes
                .iter()
                .find(|l| *l.subscription.name == replayed.subscription)
            {
                let pending = inner.pending_delivery(replayed.delivery);
                inner.enqueue(lane, vec![pending], dispatching);
            }
        }
        Ok(count)
    }

    /// Drops the matching dead letters for good; returns how many.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64, BusError> {
        Ok(self.inner.storage.dead_letters.purge(filter.clone()).await?)
    }

    /// The key-value data plugins on this bus read, and their delivery commits write:
    /// load plugins with this store.
    pub fn key_value_store(&self) -> Arc<dyn KeyValueStore> {
        Arc::clone(&self.inner.storage.kv)
    }

    /// Where the bus keeps what it accepts.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Publishes `events` like [`EventBus::publish_batch`] and says, per event, where it
    /// is in the log and whether it was a duplicate: an event whose `source` + `id` a
    /// durable log already accepted is not published again.
    pub async fn publish_batch_offsets(&self, events: Vec<Event>) -> Result<Vec<Appended>, BusError> {
        Inner::accept(&self.inner, events, false, None)
            .await
            .map(|accepted| accepted.appended)
    }

    async fn accept(
        &self,
        events: Vec<Event>,
        collect: bool,
    ) -> Result<Vec<oneshot::Receiver<DeliveryReport>>, BusError> {
        Inner::accept(&self.inner, events, collect, None)
            .await
            .map(|accepted| accepted.receivers)
    }
}

/// The outbox relay appends into the bus: each batch is stored with the relay's position
/// in one append, then queued like any publish.
impl OutboxTarget for AsyncEventBus {
    fn checkpoint<'a>(&'a self, relay: &'a str) -> BoxFuture<'a, anyhow::Result<Option<i64>>> {
        Box::pin(async move { Ok(self.inner.storage.checkpoints.checkpoint(relay).await?) })
    }

    fn append_with_checkpoint<'a>(
        &'a self,
        events: Vec<Event>,
        relay: &'a str,
        position: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            Inner::accept(&self.inner, events, false, Some((relay.to_owned(), position))).await?;
            Ok(())
        })
    }
}

impl Inner {
    /// Accepts `events`, within the capacity: one report receiver per event when
    /// `collect` is set, and where the log put each. `checkpoint` is stored with the
    /// events.
    async fn accept(
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
        // The routes the log stores are the lanes the events are queued on below.
        let lanes = inner.lanes();
        let routes = Routes::of(&lanes, &events);
        let batch = AppendBatch {
            routes: inner.route_names(&lanes, &routes),
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
            let (report, receiver) = if collect {
                let (sender, receiver) = oneshot::channel();
                let collector = ReportCollector {
                    outcomes: Mutex::default(),
                    done: Mutex::new(Some(sender)),
                };
                (Some(collector), Some(receiver))
            } else {
                (None, None)
            };
            receivers.extend(receiver);
            let delivery = Delivery {
                event,
                offset: appended.offset,
                remaining: AtomicUsize::new(0),
                report,
                emitted_by: None,
            };
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
        let unrouted = inner.dispatch(&lanes, &routes, deliveries);
        inner.in_flight.release(duplicates + unrouted);
        Ok(Accepted { receivers, appended })
    }

    /// Per event, the names of the lanes `routes` sends it to, for a log that creates the
    /// deliveries from them; none for one that does not want them.
    fn route_names(&self, lanes: &[Arc<Lane>], routes: &Routes) -> Vec<Vec<String>> {
        if !self.storage.log.wants_routes() {
            return Vec::new();
        }
        (0..routes.len())
            .map(|i| {
                routes
                    .get(i)
                    .iter()
                    .map(|&lane| lanes[lane as usize].subscription.name.to_string())
                    .collect()
            })
            .collect()
    }

    /// Queues each delivery — with the index of its event in `routes` — on the lanes its
    /// route names. Returns how many go nowhere: they are complete at once and the caller
    /// counts them out.
    fn dispatch(
        self: &Arc<Self>,
        lanes: &[Arc<Lane>],
        routes: &Routes,
        deliveries: Vec<(Arc<Delivery>, usize)>,
    ) -> usize {
        let mut per_lane: Vec<Vec<Pending>> = lanes.iter().map(|_| Vec::new()).collect();
        let mut unrouted = 0;
        for (delivery, index) in deliveries {
            let route = routes.get(index);
            for &lane in route {
                per_lane[lane as usize].push(Pending::new(Arc::clone(&delivery)));
            }
            // Set before any worker can see the delivery: queues are filled below.
            delivery.remaining.store(route.len(), Ordering::Relaxed);
            if route.is_empty() {
                delivery.complete();
                unrouted += 1;
            }
        }
        let dispatching = self.state.load(Ordering::SeqCst) != CREATED;
        for (lane, deliveries) in lanes.iter().zip(per_lane) {
            if !deliveries.is_empty() {
                self.enqueue(lane, deliveries, dispatching);
            }
        }
        unrouted
    }

    /// Queues the events a handler emitted, once their commit stored them. Their room was
    /// reserved before the commit; duplicates and unrouted events give theirs back.
    fn dispatch_emitted(self: &Arc<Self>, emitted: Emitted, appended: &[Appended]) {
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
                let delivery = Arc::new(Delivery {
                    event,
                    offset: appended.offset,
                    remaining: AtomicUsize::new(0),
                    report: None,
                    emitted_by: Some(Arc::clone(&room)),
                });
                (delivery, index)
            })
            .collect();
        room.release(reserved - deliveries.len());
        // Not bounded by `capacity`: a handler waiting for room its own event occupies
        // would wait forever. The emitter's room bounds them instead.
        self.in_flight.force_reserve(deliveries.len());
        self.accepted
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        let unrouted = self.dispatch(&lanes, &routes, deliveries);
        self.in_flight.release(unrouted);
        room.release(unrouted);
    }

    /// A delivery the log holds (pending after a restart, or replayed), counted in.
    fn pending_delivery(&self, stored: PendingDelivery) -> Pending {
        self.in_flight.force_reserve(1);
        Pending {
            delivery: Arc::new(Delivery {
                event: stored.event,
                offset: stored.offset,
                remaining: AtomicUsize::new(1),
                report: None,
                emitted_by: None,
            }),
            attempt: stored.attempt,
        }
    }

    /// Reads what the log holds pending for `lane`'s subscription on a task of its own —
    /// no lock held, a page at a time — and queues it in offset order, each not before its
    /// `not_before`; then queues what was routed to the lane meanwhile and opens it.
    /// Until then the bus counts one event in flight, so `wait` waits for the backlog.
    fn load_backlog(self: &Arc<Self>, lane: Arc<Lane>) {
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
            let mut queue = lane.lock();
            let live = queue
                .loading
                .take()
                .map(|loading| loading.live)
                .unwrap_or_default();
            self.push(&mut queue, live);
            if self.state.load(Ordering::SeqCst) != CREATED {
                self.spawn_workers(&lane, queue);
            }
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
            let mut queue = lane.lock();
            let live = queue.loading.take().map(|loading| loading.live).unwrap_or_default();
            inner.push(&mut queue, live);
            if inner.state.load(Ordering::SeqCst) != CREATED {
                inner.spawn_workers(&lane, queue);
            } else {
                drop(queue);
            }
            inner.in_flight.release(1);
        });
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
            // Routed to the lane after it was installed: it waits with the live events.
            let live = lane
                .lock()
                .loading
                .as_ref()
                .is_some_and(|loading| loading.offsets.contains(&stored.offset));
            if live {
                continue;
            }
            loaded += 1;
            let delay = stored
                .not_before
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .filter(|d| !d.is_zero());
            let pending = self.pending_delivery(stored);
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
        let mut queue = lane.lock();
        self.push(&mut queue, deliveries);
        if self.state.load(Ordering::SeqCst) != CREATED {
            self.spawn_workers(lane, queue);
        }
    }

    /// Queues `pending` after `delay`, holding its key meanwhile (unless older events of
    /// the key are already waiting: it goes behind them).
    fn hold(self: &Arc<Self>, lane: &Arc<Lane>, pending: Pending, delay: Duration) {
        let key = pending
            .delivery
            .event
            .ordering_key()
            .map(|key| self.key_hasher.hash_one(key));
        if let Some(key) = key {
            let mut queue = lane.lock();
            if let Some(waiting) = queue.keys.get_mut(&key) {
                waiting.push_back(pending);
                return;
            }
            queue.keys.insert(key, VecDeque::new());
        }
        self.retry_later(lane, pending, key, delay);
    }

    /// Edits the routing table under its lock: removes the lane of `remove` (which must
    /// exist) and adds the lane `make` builds, given the removed one. The removed lane is
    /// retired, so what is queued for it is still handled.
    fn edit_lanes(
        self: &Arc<Self>,
        remove: Option<SubscriptionId>,
        make: impl FnOnce(Option<&Lane>, &[Arc<Lane>]) -> Result<Option<Arc<Lane>>, BusError>,
    ) -> Result<Option<Arc<Lane>>, BusError> {
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        let removed = match remove {
            None => None,
            Some(id) => Some(
                lanes
                    .iter()
                    .find(|lane| lane.subscription.id == id)
                    .cloned()
                    .ok_or(BusError::NoSuchSubscription(id))?,
            ),
        };
        let mut updated: Vec<_> = lanes
            .iter()
            .filter(|lane| Some(lane.subscription.id) != remove)
            .cloned()
            .collect();
        let added = make(removed.as_deref(), &updated)?;
        updated.extend(added.clone());
        *lanes = Arc::from(updated);
        drop(lanes);
        if let Some(old) = removed {
            self.retire(old);
        }
        Ok(added)
    }

    /// Spawns bus work (a worker, a retry timer, a commit) on the handlers' runtime.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match &self.config.executor {
            Some(executor) => drop(self.workers.spawn_on(task, executor)),
            None => drop(self.workers.spawn(task)),
        }
    }

    fn lanes(&self) -> Arc<[Arc<Lane>]> {
        Arc::clone(&self.lanes.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn check_open(&self) -> Result<(), BusError> {
        match self.state.load(Ordering::SeqCst) {
            CREATED | RUNNING => Ok(()),
            _ => Err(BusError::Stopped),
        }
    }

    /// Queues deliveries on the lane (behind its backlog while that is being read) and,
    /// if `spawn`, starts workers for them.
    fn enqueue(self: &Arc<Self>, lane: &Arc<Lane>, deliveries: Vec<Pending>, spawn: bool) {
        let mut queue = lane.lock();
        if let Some(loading) = &mut queue.loading {
            loading
                .offsets
                .extend(deliveries.iter().map(|p| p.delivery.offset));
            loading.live.extend(deliveries);
            return;
        }
        self.push(&mut queue, deliveries);
        if spawn {
            self.spawn_workers(lane, queue);
        }
    }

    /// Puts deliveries in the queue: unkeyed ones ready, keyed ones behind their key.
    fn push(&self, queue: &mut Queue, deliveries: Vec<Pending>) {
        for pending in deliveries {
            match pending.delivery.event.ordering_key() {
                None => queue.ready.push_back(Work::Unkeyed(pending)),
                Some(key) => {
                    let key = self.key_hasher.hash_one(key);
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

    /// Starts workers for the ready work: enough to keep `runnable_target` of them running
    /// (workers waiting on a pending handler do not count), never more than the lane's limit.
    fn spawn_workers(self: &Arc<Self>, lane: &Arc<Lane>, mut queue: MutexGuard<'_, Queue>) {
        let runnable = queue.workers - queue.blocked;
        let wanted = queue
            .ready
            .len()
            .min(self.runnable_target.saturating_sub(runnable))
            .min(lane.concurrency.saturating_sub(queue.workers));
        queue.workers += wanted;
        drop(queue);
        for _ in 0..wanted {
            self.spawn(Arc::clone(self).work(Arc::clone(lane)));
        }
    }

    /// A worker: claims work from the lane and calls the handler until nothing is ready.
    ///
    /// A handler that finishes on its first poll keeps the worker busy; one that returns
    /// `Pending` marks the worker blocked, which lets another worker start, up to the
    /// lane's limit. So CPU-bound handlers get about one worker per thread and I/O-bound
    /// ones as many as are allowed, without a task spawned per event.
    async fn work(self: Arc<Self>, lane: Arc<Lane>) {
        let mut worker = WorkerState::default();
        loop {
            if self.cancel.is_cancelled() {
                self.release_finished(&mut worker);
                return;
            }
            // A key's acknowledgement is stored before the key moves on: its next event
            // reads what this one wrote, and a restart must not find them out of order.
            if worker.claimed_key.is_some()
                && !worker.acks.is_empty()
                && !self.flush_acks(&lane, &mut worker).await
            {
                return;
            }
            let next = lane.next(&mut worker);
            worker.retired = next.is_none();
            if !worker.acks.is_empty()
                && (next.is_none() || worker.acks.len() >= ACK_BATCH)
                && !self.flush_acks(&lane, &mut worker).await
            {
                return;
            }
            let Some(mut pending) = next else {
                self.release_finished(&mut worker);
                return;
            };
            let waited = std::mem::take(&mut worker.waited);
            if worker.permit.is_none() || worker.permit_uses >= PERMIT_STREAK || waited {
                drop(worker.permit.take());
                self.release_finished(&mut worker);
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
                Err(panic) => {
                    let error = HandlerError::new(
                        FailureKind::HostError,
                        format!("evhost panicked running the delivery: {}", panic_message(&*panic)),
                    );
                    Err(failure_record(
                        &lane.subscription,
                        &pending.delivery.event,
                        pending.attempt,
                        &error,
                        &self.monitor,
                    ))
                }
            };
            match attempted {
                Ok(prepared) => worker.acks.push(Ack { pending, prepared }),
                Err(failure) => {
                    let recorded = self.record_failure_contained(&lane, &pending, failure);
                    let Some(settled) = self.blocking(&lane, &mut worker, recorded).await else {
                        return;
                    };
                    self.settle(&lane, pending, settled, &mut worker);
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
        self.release_finished(worker);
        // A worker the lane already let go of (it found nothing more to do) is not counted.
        if !worker.retired && !std::mem::replace(&mut worker.blocked, true) {
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
                let mut detached = WorkerState::default();
                let stored = inner.commit_acks(acks).await;
                inner.settle_acks(&lane, stored, &mut detached).await;
                inner.release_finished(&mut detached);
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
        self.settle_acks(lane, stored, worker).await;
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

    /// Reserves room in the lane's budget for `n` emitted events, waiting for it up to the
    /// subscription's timeout: backpressure on a handler that emits faster than the bus
    /// finishes what it emitted.
    async fn reserve_emitted(&self, lane: &Lane, n: usize) -> Result<(), HandlerError> {
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

    /// [`Inner::record_failure`], with a panic in it ending the delivery here (the log
    /// still holds it pending: a restart delivers it again) rather than the worker.
    async fn record_failure_contained(
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
        let delay = lane.retry.backoff(pending.attempt, rand_unit());
        let outcome = if retry {
            let not_before = saturating_after(delay);
            DeliveryOutcome::Retry {
                attempt: pending.attempt,
                not_before,
                failure,
            }
        } else {
            DeliveryOutcome::DeadLettered { failure }
        };
        let commit = self.delivery_commit(lane, delivery, outcome);
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
        if retry {
            Settled::Retry(delay)
        } else {
            Settled::Done(Err(error))
        }
    }

    /// The acknowledgement of a successful invocation with its effects, checked and
    /// routed, ready to commit.
    fn prepare_ack(
        &self,
        lane: &Lane,
        delivery: &Delivery,
        effects: Effects,
    ) -> Result<PreparedAck, HandlerError> {
        let Effects {
            kv_namespace,
            kv_writes,
            emitted,
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
        let mut commit = self.delivery_commit(lane, delivery, DeliveryOutcome::Acked);
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
        let lanes = self.lanes();
        let routes = Routes::of(&lanes, &emitted);
        let mut names = self.route_names(&lanes, &routes).into_iter();
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
    async fn commit_acks(self: &Arc<Self>, acks: Vec<Ack>) -> Vec<(Pending, Result<(), StorageError>)> {
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
                        (CommitOutcome::Committed { emitted: appended }, Some(emitted)) => {
                            self.dispatch_emitted(emitted, &appended);
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
    /// for good).
    async fn settle_acks(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        stored: Vec<(Pending, Result<(), StorageError>)>,
        worker: &mut WorkerState,
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
            self.settle(lane, pending, Settled::Done(result), worker);
        }
    }

    /// Finishes `pending`, or puts it back for its retry.
    fn settle(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        pending: Pending,
        settled: Settled,
        worker: &mut WorkerState,
    ) {
        match settled {
            Settled::Done(result) => self.finish(lane, &pending.delivery, result, worker),
            Settled::Retry(delay) => {
                // The key stays claimed by the retry, not by this worker: later events of
                // the key wait, other keys go on.
                let key = if pending.delivery.event.ordering_key().is_some() {
                    worker.claimed_key.take()
                } else {
                    None
                };
                self.retry_later(lane, pending, key, delay);
            }
        }
    }

    fn delivery_commit(&self, lane: &Lane, delivery: &Delivery, outcome: DeliveryOutcome) -> DeliveryCommit {
        DeliveryCommit {
            subscription: Arc::clone(&lane.subscription.name),
            offset: delivery.offset,
            event: Arc::clone(&delivery.event),
            outcome,
            kv_namespace: String::new(),
            kv_writes: Vec::new(),
            emitted: Vec::new(),
        }
    }

    /// Puts `pending` back on the lane after `delay`. Until then its key (if any) stays
    /// in the lane's map without being ready, which holds the key's later events.
    fn retry_later(self: &Arc<Self>, lane: &Arc<Lane>, pending: Pending, key: Option<u64>, delay: Duration) {
        let (inner, lane) = (Arc::clone(self), Arc::clone(lane));
        self.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = inner.cancel.cancelled() => return,
            }
            let mut queue = lane.lock();
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
            if inner.state.load(Ordering::SeqCst) != CREATED {
                inner.spawn_workers(&lane, queue);
            }
        });
    }

    fn finish(
        &self,
        lane: &Lane,
        delivery: &Delivery,
        result: Result<(), HandlerError>,
        worker: &mut WorkerState,
    ) {
        if let Some(report) = &delivery.report {
            report
                .outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(HandlerOutcome {
                    subscription: lane.subscription.name.to_string(),
                    error: result.err(),
                });
        }
        if delivery.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            delivery.complete();
            if let Some(room) = &delivery.emitted_by {
                room.release(1);
            }
            worker.finished += 1;
            if worker.finished >= RELEASE_BATCH || delivery.report.is_some() {
                self.release_finished(worker);
            }
        }
    }

    /// Counts the worker's finished events out of the bus (batched: one shared atomic
    /// update per batch instead of per event).
    fn release_finished(&self, worker: &mut WorkerState) {
        self.in_flight.release(std::mem::take(&mut worker.finished));
    }

    fn start_all_workers(self: &Arc<Self>) {
        for lane in self.lanes().iter() {
            self.spawn_workers(lane, lane.lock());
        }
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        for lane in &retired {
            self.spawn_workers(lane, lane.lock());
        }
    }

    /// A subscription left the routing table; what is already queued for it is still
    /// handled. Before `start` there are no workers yet, so it waits for `start` with the
    /// others.
    fn retire(self: &Arc<Self>, lane: Arc<Lane>) {
        if self.state.load(Ordering::SeqCst) == CREATED {
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            // Checked again under the lock: `start` may have run in between.
            if self.state.load(Ordering::SeqCst) == CREATED {
                retired.push(lane);
                return;
            }
        }
        self.spawn_workers(&lane, lane.lock());
    }
}

/// What one worker holds between invocations.
#[derive(Default)]
struct WorkerState {
    permit: Option<OwnedSemaphorePermit>,
    permit_uses: u32,
    /// The key whose event the worker handles (it owns the key until it lets go).
    claimed_key: Option<u64>,
    /// Events of `claimed_key` handled in a row.
    streak: u32,
    /// Whether the worker holds a claimed piece of work.
    running: bool,
    /// Whether the worker's current handler returned `Pending`.
    blocked: bool,
    /// Whether something the worker ran since it took its permit had to wait.
    waited: bool,
    /// Events this worker completed that are not yet counted out of the bus.
    finished: usize,
    /// Successful deliveries whose acknowledgement is not stored yet.
    acks: Vec<Ack>,
    /// The lane let go of the worker; it only stores its last acknowledgements.
    retired: bool,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets go of what the worker just finished (keeping its key for a streak) and claims
    /// the next piece of work. `None` retires the worker.
    fn next(&self, worker: &mut WorkerState) -> Option<Pending> {
        let mut queue = self.lock();
        if std::mem::take(&mut worker.blocked) {
            queue.blocked -= 1;
        }
        if let Some(key) = worker.claimed_key.take() {
            let waiting = queue.keys.get_mut(&key).expect("a claimed key stays in the map");
            match waiting.pop_front() {
                None => {
                    queue.keys.remove(&key);
                }
                Some(delivery) if worker.streak < KEY_STREAK => {
                    worker.streak += 1;
                    worker.claimed_key = Some(key);
                    return Some(delivery);
                }
                Some(delivery) => {
                    waiting.push_front(delivery);
                    queue.ready.push_back(Work::Key(key));
                }
            }
        }
        if std::mem::take(&mut worker.running) {
            queue.running -= 1;
        }
        worker.streak = 0;
        let delivery = match queue.ready.pop_front() {
            None => {
                queue.workers -= 1;
                return None;
            }
            Some(Work::Unkeyed(pending)) => pending,
            Some(Work::Key(key)) => {
                worker.claimed_key = Some(key);
                queue
                    .keys
                    .get_mut(&key)
                    .and_then(VecDeque::pop_front)
                    .expect("a ready key has a waiting event")
            }
        };
        queue.running += 1;
        worker.running = true;
        Some(delivery)
    }
}

impl Delivery {
    /// Hands the collected outcomes to a waiting `publish_sync`.
    fn complete(&self) {
        if let Some(report) = &self.report {
            let outcomes = std::mem::take(&mut *report.outcomes.lock().unwrap_or_else(|e| e.into_inner()));
            if let Some(done) = report.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                // The publisher may have given up waiting; the outcome is then unobserved.
                let _ = done.send(DeliveryReport {
                    event_id: self.event.id.clone(),
                    duplicate: false,
                    outcomes,
                });
            }
        }
    }

    /// Tells a waiting `publish_sync` that the event was a duplicate.
    fn complete_duplicate(&self) {
        if let Some(report) = &self.report
            && let Some(done) = report.done.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            let _ = done.send(DeliveryReport {
                event_id: self.event.id.clone(),
                duplicate: true,
                outcomes: Vec::new(),
            });
        }
    }
}

#[async_trait::async_trait]
impl EventBus for AsyncEventBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        self.accept(vec![event], false).await.map(drop)
    }

    async fn publish_sync(&self, event: Event) -> Result<DeliveryReport, BusError> {
        let receiver = self
            .accept(vec![event], true)
            .await?
            .pop()
            .expect("one receiver per event");
        // The sender is dropped without a report only when the bus abandoned the event.
        let report = receiver.await.map_err(|_| BusError::Stopped)?;
        report.into_result()
    }

    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), BusError> {
        self.accept(events, false).await.map(drop)
    }

    fn subscribe(&self, pattern: &str, handler: Arc<dyn EventHandler>) -> Result<SubscriptionId, BusError> {
        self.subscribe_with(pattern, handler, SubscribeOptions::default())
    }

    fn unsubscribe(&self, id: SubscriptionId) -> Result<(), BusError> {
        self.inner.edit_lanes(Some(id), |_, _| Ok(None)).map(drop)
    }

    async fn start(&self) -> Result<(), BusError> {
        match self
            .inner
            .state
            .compare_exchange(CREATED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => {
                self.inner.start_all_workers();
                Ok(())
            }
            Err(RUNNING) => Ok(()),
            Err(_) => Err(BusError::Stopped),
        }
    }

    /// Refuses new events at once, then waits up to
    /// [`drain_timeout`](AsyncBusConfig::drain_timeout) for accepted events; what is left
    /// then is abandoned (and counted). A bus that was never started is started so that
    /// what it accepted is handled. Stopping twice is harmless.
    async fn stop(&self) -> Result<StopReport, BusError> {
        let inner = &self.inner;
        let previous = inner.state.swap(STOPPING, Ordering::SeqCst);
        if previous == STOPPED || previous == STOPPING {
            inner.state.store(previous, Ordering::SeqCst);
            return Ok(StopReport::default());
        }
        if previous == CREATED {
            inner.start_all_workers();
        }
        let at_stop = inner.in_flight.get() as u64;
        let drained_in_time =
            tokio::time::timeout(inner.config.drain_timeout, inner.in_flight.idle(|| false))
                .await
                .is_ok();
        let abandoned = if drained_in_time {
            0
        } else {
            inner.in_flight.get() as u64
        };
        inner.cancel.cancel();
        inner.workers.close();
        inner.workers.wait().await;
        inner.state.store(STOPPED, Ordering::SeqCst);
        inner.in_flight.wake_all();
        if abandoned > 0 {
            tracing::warn!(abandoned, "bus stopped with events still unhandled");
        }
        Ok(StopReport {
            drained: at_stop.saturating_sub(abandoned),
            abandoned,
        })
    }

    /// Returns once every accepted event is fully handled, or the bus has stopped.
    async fn wait(&self) {
        let inner = &self.inner;
        inner
            .in_flight
            .idle(|| inner.state.load(Ordering::SeqCst) == STOPPED)
            .await;
    }
}

/// Makes a call into the storage with a panic — in the call or in the future it returns
/// — turned into a (permanent) [`StorageError`]: a faulty backend must not take down a
/// worker, and the events it holds, with it.
async fn contained<'a, T>(
    call: impl FnOnce() -> BoxFuture<'a, Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let panicked = |panic: Box<dyn std::any::Any + Send>| {
        StorageError::permanent(format!("the storage panicked: {}", panic_message(&*panic)))
    };
    let future = std::panic::catch_unwind(AssertUnwindSafe(call)).map_err(panicked)?;
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(panicked(panic)))
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

/// A uniform sample from `0.0..1.0` for backoff jitter (not for anything that needs
/// unpredictability).
fn rand_unit() -> f64 {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = std::hash::RandomState::new().hash_one((seed, std::time::SystemTime::now()));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
