//! The synchronous bus: handlers run in the publisher's task, in subscription order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use super::in_flight::InFlight;
use super::{
    BusError, DEFAULT_HANDLER_TIMEOUT, DeliveryReport, Effects, EventBus, EventHandler, HandlerError,
    HandlerOutcome, Pattern, StopReport, Subscription, SubscriptionId, failure_record, invoke, validate,
};
use crate::event::Event;
use crate::metrics::BusMetrics;
use crate::monitor::{self, ErrorMonitor, FailureKind};
use crate::store::{KeyValueStore, MemoryKv};

/// A bus that handles each event before `publish` returns.
///
/// Handlers run one after another in the order they subscribed; the first failure stops
/// the event there and is returned to the publisher (and reported to the monitor).
/// Panics are caught and returned as [`FailureKind::Panic`](crate::FailureKind::Panic).
///
/// A handler's [`Effects`] apply when it succeeds: its key-value writes go to the bus's
/// own [`MemoryKv`] ([`InMemoryEventBus::key_value_store`]), and the events it emitted are
/// handled after the event that caused them, before `publish` returns; their failures go
/// to the monitor only.
#[derive(Debug)]
pub struct InMemoryEventBus {
    kv: Arc<MemoryKv>,
    subscriptions: RwLock<Vec<Arc<Subscription>>>,
    next_id: AtomicU64,
    stopped: AtomicBool,
    accepted: AtomicU64,
    in_flight: InFlight,
    monitor: ErrorMonitor,
}

impl Default for InMemoryEventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventBus {
    /// An empty bus with an error monitor of the default capacity.
    pub fn new() -> Self {
        Self {
            kv: Arc::default(),
            subscriptions: RwLock::default(),
            next_id: AtomicU64::new(1),
            stopped: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            in_flight: InFlight::new(usize::MAX),
            monitor: ErrorMonitor::new(monitor::DEFAULT_CAPACITY),
        }
    }

    /// The error monitor every failure is reported to.
    pub fn monitor(&self) -> &ErrorMonitor {
        &self.monitor
    }

    /// The key-value data handlers' effects write: load plugins with this store.
    pub fn key_value_store(&self) -> Arc<dyn KeyValueStore> {
        Arc::clone(&self.kv) as Arc<dyn KeyValueStore>
    }

    /// Counters and latency per subscription.
    pub fn metrics(&self) -> BusMetrics {
        let subscriptions = self.subscriptions.read();
        BusMetrics {
            accepted: self.accepted.load(Ordering::Relaxed),
            in_flight: self.in_flight.get() as u64,
            running: self.in_flight.get() as u64,
            failures_reported: self.monitor.reported(),
            monitor_overflow: self.monitor.overflowed(),
            dead_letters: 0,
            store_retries: 0,
            subscriptions: subscriptions
                .iter()
                .map(|s| s.metrics.snapshot(&s.name, s.patterns_text()))
                .collect(),
        }
    }

    /// Handles `event`, then the events its handlers emitted (and theirs, in order).
    async fn deliver(&self, event: Event, stop_at_first_failure: bool) -> Result<DeliveryReport, BusError> {
        validate(&event)?;
        if self.stopped.load(Ordering::SeqCst) {
            return Err(BusError::Stopped);
        }
        // Counted as in flight so `wait` and `stop` see publishes still running.
        assert!(
            self.in_flight.try_reserve(1),
            "the in-memory bus has no capacity limit"
        );
        let _done = scopeguard(|| self.in_flight.release(1));
        let mut emitted = VecDeque::new();
        let report = self
            .deliver_one(Arc::new(event), stop_at_first_failure, &mut emitted)
            .await;
        while let Some(event) = emitted.pop_front() {
            // Not the publisher's event: its failures reach the monitor only.
            let _ = self.deliver_one(event, false, &mut emitted).await;
        }
        report.into_result()
    }

    /// Runs the handlers of one event, applying each one's effects as it succeeds and
    /// queueing the events it emitted on `emitted`.
    async fn deliver_one(
        &self,
        event: Arc<Event>,
        stop_at_first_failure: bool,
        emitted: &mut VecDeque<Arc<Event>>,
    ) -> DeliveryReport {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let matching: Vec<_> = self
            .subscriptions
            .read()
            .iter()
            .filter(|s| s.matches(&event.ty))
            .cloned()
            .collect();
        let mut outcomes = Vec::with_capacity(matching.len());
        for subscription in matching {
            let error = match invoke(&subscription, &event, 1, &self.monitor).await {
                Ok(effects) => self.apply(&subscription, &event, effects, emitted).err(),
                Err(record) => Some(HandlerError::new(record.kind, record.message)),
            };
            let failed = error.is_some();
            outcomes.push(HandlerOutcome {
                subscription: subscription.name.to_string(),
                error,
            });
            if failed && stop_at_first_failure {
                break;
            }
        }
        DeliveryReport {
            event_id: event.id.clone(),
            duplicate: false,
            outcomes,
        }
    }

    /// Applies a successful handler's effects: writes its key-value data and queues the
    /// events it emitted. An invalid emitted event fails the invocation, with nothing
    /// applied.
    fn apply(
        &self,
        subscription: &Subscription,
        event: &Event,
        effects: Effects,
        emitted: &mut VecDeque<Arc<Event>>,
    ) -> Result<(), HandlerError> {
        let Effects {
            kv_namespace,
            kv_writes,
            emitted: events,
            version: _,
        } = effects;
        if let Some(invalid) = events.iter().find_map(|e| e.validate().err()) {
            let error = HandlerError::new(
                FailureKind::HostError,
                format!("the handler emitted an invalid event: {invalid}"),
            );
            failure_record(subscription, event, 1, &error, &self.monitor);
            return Err(error);
        }
        let namespace = if kv_namespace.is_empty() {
            subscription.name.to_string()
        } else {
            kv_namespace
        };
        self.kv.write(&namespace, kv_writes);
        emitted.extend(events.into_iter().map(Arc::new));
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventBus for InMemoryEventBus {
    async fn publish(&self, event: Event) -> Result<(), BusError> {
        self.deliver(event, true).await.map(drop)
    }

    /// Runs every handler, even after one failed, and reports each outcome.
    async fn publish_sync(&self, event: Event) -> Result<DeliveryReport, BusError> {
        self.deliver(event, false).await
    }

    /// Validates every event first, then publishes them in order, stopping at the first
    /// failure (later events of the batch are then not handled).
    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), BusError> {
        for event in &events {
            validate(event)?;
        }
        for event in events {
            self.publish(event).await?;
        }
        Ok(())
    }

    fn subscribe(&self, pattern: &str, handler: Arc<dyn EventHandler>) -> Result<SubscriptionId, BusError> {
        let pattern = Pattern::parse(pattern)?;
        let id = SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let subscription = Subscription {
            id,
            name: Arc::from(handler.name()),
            patterns: vec![pattern],
            handler,
            timeout: DEFAULT_HANDLER_TIMEOUT,
            ordered: false,
            metrics: Default::default(),
        };
        self.subscriptions.write().push(Arc::new(subscription));
        Ok(id)
    }

    fn unsubscribe(&self, id: SubscriptionId) -> Result<(), BusError> {
        let mut subscriptions = self.subscriptions.write();
        let before = subscriptions.len();
        subscriptions.retain(|s| s.id != id);
        if subscriptions.len() == before {
            return Err(BusError::NoSuchSubscription(id));
        }
        Ok(())
    }

    /// Nothing to start: handlers run in the publisher's task.
    async fn start(&self) -> Result<(), BusError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(BusError::Stopped);
        }
        Ok(())
    }

    /// Refuses new events and waits for publishes still running.
    async fn stop(&self) -> Result<StopReport, BusError> {
        self.stopped.store(true, Ordering::SeqCst);
        let drained = self.in_flight.get() as u64;
        self.in_flight.idle(|| false).await;
        Ok(StopReport {
            drained,
            abandoned: 0,
        })
    }

    async fn wait(&self) {
        self.in_flight.idle(|| false).await;
    }
}

/// Runs `f` when dropped, so a cancelled publish still counts itself out.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
