//! The concurrent bus.
//!
//! Each subscription owns a lane — a queue — and a small pool of worker tasks (at most its
//! concurrency limit). Publishing appends the batch to the log — with, per event, the
//! subscriptions it must reach — then queues each event on the lane of every matching
//! subscription and wakes workers. A worker claims work, takes a permit of the bus-wide
//! limit, calls the handler and commits the delivery's outcome and effects before its key
//! moves on (so the next event of a key sees the previous one's key-value writes). A
//! subscription's pending deliveries in the log are read when it subscribes: that is how
//! a restart on a durable log redelivers what was not acknowledged.
//!
//! # Layout
//!
//! In the direction the data flows; a file uses only those above it (and `Inner`):
//!
//! - `delivery`: an accepted event on its way to its subscriptions; a lane's piece of work.
//! - `lane`: a subscription's queue, which keeps each key's events in order.
//! - `routing`: the table of lanes, and which lanes each event of a batch goes to.
//! - `intake`: publishing — capacity, the append, queueing — and reading a backlog.
//! - `commit`: how a delivery ends — acknowledgements with effects, retries, dead letters.
//! - `worker`: the tasks that claim work, call handlers and hand outcomes to `commit`.
//!
//! Three loops run back into the intake: a retry puts its delivery back on its lane after
//! the backoff (`commit`); the events a handler emitted are queued once their commit
//! stored them (`commit` → `intake`); and acknowledgements wait in their worker for a
//! batch commit, handed to a task of their own when the worker blocks (`worker`).
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

mod commit;
mod config;
mod delivery;
mod intake;
mod lane;
mod routing;
mod worker;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::in_flight::InFlight;
use super::{
    BusError, DeliveryReport, EventBus, EventHandler, Pattern, StopReport, SubscribeOptions, Subscription,
    SubscriptionId, panic_message,
};
use crate::event::Event;
use crate::metrics::BusMetrics;
use crate::monitor::{ErrorMonitor, ErrorStream};
use crate::outbox::OutboxTarget;
use crate::store::{Appended, DeadLetter, DeadLetterFilter, Feed, KeyValueStore, Storage, StorageError};
pub use config::{AsyncBusConfig, Backpressure};
use lane::Lane;
use routing::Routing;

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

/// The state every layer works on.
#[derive(Debug)]
struct Inner {
    config: AsyncBusConfig,
    storage: Storage,
    routing: Routing,
    /// Subscriptions removed before `start` with events still queued.
    retired: Mutex<Vec<Arc<Lane>>>,
    state: AtomicU8,
    in_flight: InFlight,
    accepted: AtomicU64,
    /// Commits the store failed and the bus tried again.
    store_retries: AtomicU64,
    /// Workers kept runnable per subscription: about one per thread.
    runnable_target: usize,
    /// The bus-wide concurrency limit: a worker holds one permit while it calls handlers.
    permits: Arc<Semaphore>,
    monitor: ErrorMonitor,
    workers: TaskTracker,
    cancel: CancellationToken,
    /// Cancelled when `stop` begins: the bus pulls nothing more from a shared log.
    stopping: CancellationToken,
}

impl Inner {
    /// Spawns bus work (a worker, a retry timer, a commit, a backlog read) on the
    /// handlers' runtime.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match &self.config.executor {
            Some(executor) => drop(self.workers.spawn_on(task, executor)),
            None => drop(self.workers.spawn(task)),
        }
    }

    /// Whether workers run: `start` was called. Before it, queued work waits for
    /// [`Inner::start_all_workers`].
    fn dispatching(&self) -> bool {
        self.state.load(Ordering::SeqCst) != CREATED
    }

    /// Has a shared log make (or check) every lane's deliveries before the bus starts, so
    /// that a log that cannot keep them (its settings differ from what the bus needs)
    /// fails `start` rather than a feeder later. Each feeder makes its lane's too, and
    /// publishes wait for that.
    async fn prepare_feeds(&self) -> Result<(), StorageError> {
        if !self.shared() {
            return Ok(());
        }
        for lane in self.routing.snapshot().iter() {
            let subscription = &lane.subscription;
            contained(|| self.storage.log.prepare(&subscription.name, subscription.ordered)).await?;
        }
        Ok(())
    }

    /// Whether the log is shared by several processes and feeds every delivery
    /// ([`Feed::Shared`]).
    fn shared(&self) -> bool {
        self.storage.log.feed() == Feed::Shared
    }

    fn check_open(&self) -> Result<(), BusError> {
        match self.state.load(Ordering::SeqCst) {
            CREATED | RUNNING => Ok(()),
            _ => Err(BusError::Stopped),
        }
    }
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
            routing: Routing::default(),
            retired: Mutex::default(),
            state: AtomicU8::new(CREATED),
            in_flight: InFlight::new(config.capacity),
            accepted: AtomicU64::new(0),
            store_retries: AtomicU64::new(0),
            runnable_target: std::thread::available_parallelism().map_or(2, |n| n.get()),
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            monitor: ErrorMonitor::new(config.monitor_capacity),
            workers: TaskTracker::new(),
            cancel: cancel.clone(),
            stopping: CancellationToken::new(),
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
            running: inner
                .routing
                .snapshot()
                .iter()
                .map(|lane| lane.lock().running as u64)
                .sum(),
            failures_reported: inner.monitor.reported(),
            monitor_overflow: inner.monitor.overflowed(),
            dead_letters: inner.storage.dead_letters.count(),
            store_retries: inner.store_retries.load(Ordering::Relaxed),
            subscriptions: inner
                .routing
                .snapshot()
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
        let id = inner.routing.next_id();
        let concurrency = options
            .concurrency
            .unwrap_or(inner.config.subscription_concurrency)
            .clamp(1, inner.config.max_concurrency);
        let name = options.name.unwrap_or_else(|| handler.name().to_owned());
        let timeout = options.timeout.unwrap_or(inner.config.handler_timeout);
        let retry = options.retry.unwrap_or(inner.config.retry);
        let name: Arc<str> = Arc::from(name);
        let edited = inner.routing.edit(replacing, |replaced, others| {
            let same_name = replaced.is_some_and(|old| old.subscription.name == name);
            // A name is a subscription's identity: its deliveries, their outcomes and its
            // dead letters are stored under it.
            if others.iter().any(|other| other.subscription.name == name) {
                return Err(BusError::NameTaken(name.to_string()));
            }
            // A replacement of the same name keeps counting where the old one left off, so
            // metrics do not restart at every plugin reload, and keeps its room for
            // emitted events.
            let (metrics, emitted) = match replaced {
                Some(old) if same_name => (Arc::clone(&old.subscription.metrics), Arc::clone(&old.emitted)),
                _ => (
                    Arc::default(),
                    Arc::new(InFlight::new(inner.config.emitted_capacity)),
                ),
            };
            let subscription = Subscription {
                id,
                name,
                patterns,
                handler,
                timeout,
                ordered: options.ordered,
                metrics,
            };
            // What the log holds for this name is read once the lane is installed, with
            // no lock held; events routed to the lane meanwhile wait until it is queued,
            // so a key's old events come before its new ones. A replacement of the same
            // name leaves them to the old lane, which has them queued already.
            // A shared log feeds every lane itself.
            let loading = !same_name && !inner.shared();
            let mut lane = Lane::new(subscription, concurrency, retry, emitted, loading);
            // Read before the lane is routable: whatever is routed to it comes above.
            if loading {
                lane.backlog_horizon = inner.storage.log.horizon();
            }
            Ok(Some(Arc::new(lane)))
        })?;
        if let Some(old) = edited.removed {
            inner.retire(old);
        }
        if let Some(lane) = edited.added {
            if inner.shared() {
                inner.feed(Arc::clone(&lane));
                inner.dispatch(&lane, lane.lock());
            } else if lane.is_loading() {
                inner.load_backlog(lane);
            } else {
                inner.dispatch(&lane, lane.lock());
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
        let lanes = inner.routing.snapshot();
        let names = lanes.iter().map(|l| l.subscription.name.to_string()).collect();
        let replayed = inner.storage.dead_letters.replay(filter.clone(), names).await?;
        let count = replayed.len();
        // A shared log delivers them itself.
        for replayed in replayed.into_iter().filter(|_| !inner.shared()) {
            // Listed by the log because its lane exists; if that lane went away meanwhile,
            // the delivery stays pending in the log for the next subscriber of the name.
            if let Some(lane) = lanes
                .iter()
                .find(|l| *l.subscription.name == replayed.subscription)
            {
                let pending = inner.pending_delivery(replayed.delivery, None);
                inner.enqueue(lane, vec![pending]);
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

    /// The names of the subscriptions an event of type `ty` goes to now.
    pub fn subscribers_of(&self, ty: &str) -> Vec<Arc<str>> {
        self.inner
            .routing
            .snapshot()
            .iter()
            .filter(|lane| lane.subscription.matches(ty))
            .map(|lane| Arc::clone(&lane.subscription.name))
            .collect()
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
        let edited = self.inner.routing.edit(Some(id), |_, _| Ok(None))?;
        if let Some(old) = edited.removed {
            self.inner.retire(old);
        }
        Ok(())
    }

    async fn start(&self) -> Result<(), BusError> {
        if self.inner.state.load(Ordering::SeqCst) == CREATED {
            self.inner.prepare_feeds().await?;
        }
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
        inner.stopping.cancel();
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
pub(super) async fn contained<'a, T>(
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
