//! What one handler (or a faulty log) may do to the bus: a panic in the bus's own calls is
//! contained and reported, an extreme retry policy saturates instead of panicking, and a
//! handler that feeds itself can hold only its own room for emitted events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use evhost::bus::{Effects, RetryPolicy, from_fn};
use evhost::store::sqlite::DeliveryState;
use evhost::store::{
    AppendBatch, Appended, CommitOutcome, DeadLetter, DeadLetterFilter, DeliveryCommit, EventLog,
    KeyValueStore, LogError, MemoryLog, PendingDelivery, Replayed,
};
use evhost::{
    AsyncBusConfig, AsyncEventBus, BusError, Event, EventBus, EventHandler, FailureKind, HandlerError,
    SubscribeOptions,
};
use futures::future::BoxFuture;
use serde_json::json;

use crate::helpers::{TempDir, event};

/// A log that panics when asked to store anything about a `Doomed` event: a bug in a
/// storage backend.
#[derive(Debug, Default)]
struct PanickingLog {
    inner: MemoryLog,
}

impl EventLog for PanickingLog {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, LogError>> {
        self.inner.append(batch)
    }

    fn commit(&self, commits: Vec<DeliveryCommit>) -> BoxFuture<'_, Result<Vec<CommitOutcome>, LogError>> {
        if commits.iter().any(|c| c.event.ty == "Doomed") {
            panic!("the log cannot store this");
        }
        self.inner.commit(commits)
    }

    fn pending(&self, subscription: &str) -> Result<Vec<PendingDelivery>, LogError> {
        self.inner.pending(subscription)
    }

    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, LogError> {
        self.inner.dead_letters(filter)
    }

    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, LogError>> {
        self.inner.replay(filter, subscriptions)
    }

    fn dead_letter_count(&self) -> u64 {
        self.inner.dead_letter_count()
    }

    fn checkpoint(&self, relay: &str) -> Result<Option<i64>, LogError> {
        self.inner.checkpoint(relay)
    }

    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, LogError>> {
        self.inner.purge(filter)
    }

    fn key_values(self: Arc<Self>) -> Arc<dyn KeyValueStore> {
        Arc::new(MemoryLog::default()).key_values()
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_log_fails_the_delivery_and_leaves_nothing_in_flight() {
    let bus = AsyncEventBus::with_log(AsyncBusConfig::default(), Arc::new(PanickingLog::default()));
    let mut errors = bus.errors().unwrap();
    bus.subscribe(
        "*",
        from_fn("refuser", |_| async { Err(HandlerError::reject("no")) }),
    )
    .unwrap();
    let handled = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&handled);
    bus.subscribe(
        "*",
        from_fn("neighbour", move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .unwrap();
    bus.start().await.unwrap();
    // The refuser's dead letter cannot be stored; the neighbour's acknowledgement neither.
    let err = bus.publish_sync(event("Doomed")).await.unwrap_err();
    let BusError::HandlersFailed(report) = err else {
        panic!("expected the failures, got {err}");
    };
    let mut failures: Vec<_> = report
        .failures()
        .map(|(name, error)| (name.to_owned(), error.kind(), error.message().to_owned()))
        .collect();
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(failures[0].0, "neighbour");
    assert_eq!(failures[0].1, FailureKind::HostError);
    assert!(
        failures[0]
            .2
            .contains("the event log panicked: the log cannot store this"),
        "{failures:?}"
    );
    assert_eq!(
        (failures[1].0.as_str(), failures[1].1),
        ("refuser", FailureKind::Reject)
    );
    let mut kinds = vec![
        errors.recv().await.unwrap().kind,
        errors.recv().await.unwrap().kind,
    ];
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, [FailureKind::HostError, FailureKind::Reject]);

    // The bus goes on: more events are handled, and none stays in flight.
    for _ in 0..10 {
        bus.publish(event("T")).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), bus.wait())
        .await
        .expect("nothing is left in flight");
    assert_eq!(handled.load(Ordering::SeqCst), 11);
    assert_eq!(bus.metrics().in_flight, 0);
    let report = bus.stop().await.unwrap();
    assert_eq!(report.abandoned, 0);
}

/// Retries a quarter of a million years from now.
fn forever() -> RetryPolicy {
    let far = Duration::from_millis(9_000_000_000_000_000);
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: far,
        max_backoff: far,
        multiplier: 2.0,
        jitter: 0.2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_further_away_than_time_goes_neither_panics_nor_hangs_across_a_restart() {
    let dir = TempDir::new("forever");
    let config = AsyncBusConfig {
        drain_timeout: Duration::from_millis(200),
        retry: forever(),
        ..AsyncBusConfig::default()
    };
    let options = SubscribeOptions {
        name: Some("later".into()),
        ..Default::default()
    };
    let store = dir.open();
    let bus = AsyncEventBus::with_log(config.clone(), Arc::clone(&store) as Arc<dyn EventLog>);
    let mut errors = bus.errors().unwrap();
    let failing = || from_fn("later", |_| async { Err(HandlerError::retry("not now")) });
    bus.subscribe_with("*", failing(), options.clone()).unwrap();
    bus.start().await.unwrap();
    let appended = bus.publish_batch_offsets(vec![event("T")]).await.unwrap();
    assert_eq!(errors.recv().await.unwrap().kind, FailureKind::Retry);
    // The retry waits; stopping gives up on it after the drain timeout.
    let report = bus.stop().await.unwrap();
    assert_eq!(report.abandoned, 1);
    let state = store.delivery_state("later", appended[0].offset).unwrap();
    let Some(DeliveryState::Pending {
        attempt: 1,
        not_before: Some(not_before),
    }) = state
    else {
        panic!("the retry is stored: {state:?}");
    };
    assert_eq!(not_before.to_rfc3339(), "9999-12-31T23:59:59+00:00", "saturated");
    drop(bus);
    drop(store);

    // After a restart the stored retry keeps its time: it is held, not run, not a panic.
    let store = dir.open();
    let bus = AsyncEventBus::with_log(config, Arc::clone(&store) as Arc<dyn EventLog>);
    bus.subscribe_with("*", failing(), options).unwrap();
    bus.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bus.metrics().in_flight, 1);
    assert_eq!(bus.stop().await.unwrap().abandoned, 1);
}

/// Emits `fan_out` events of type `emits` for every event.
struct Amplifier {
    fan_out: usize,
    emits: &'static str,
}

#[evhost::async_trait]
impl EventHandler for Amplifier {
    fn name(&self) -> &str {
        "amplifier"
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        let emitted = (0..self.fan_out)
            .map(|_| Event::new(self.emits, "amplifier", json!({})).caused_by(&event))
            .collect();
        Ok(Effects {
            emitted,
            ..Effects::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_feeding_itself_holds_only_its_own_room_for_emitted_events() {
    let bus = AsyncEventBus::with_config(AsyncBusConfig {
        emitted_capacity: 100,
        drain_timeout: Duration::from_millis(100),
        ..AsyncBusConfig::default()
    });
    let mut errors = bus.errors().unwrap();
    let options = |name: &str| SubscribeOptions {
        name: Some(name.into()),
        timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    // It subscribes to what it emits, ten for one.
    let amplifier = Amplifier {
        fan_out: 10,
        emits: "Amp",
    };
    bus.subscribe_any(&["Start", "Amp"], Arc::new(amplifier), options("amplifier"))
        .unwrap();
    // A well-behaved neighbour that emits one event per `Order`.
    let saga = Amplifier {
        fan_out: 1,
        emits: "Shipped",
    };
    bus.subscribe_any(&["Order"], Arc::new(saga), options("saga"))
        .unwrap();
    bus.start().await.unwrap();
    bus.publish(event("Start")).await.unwrap();
    let mut peak = 0;
    for _ in 0..40 {
        peak = peak.max(bus.metrics().in_flight);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peak <= 101, "{peak} events in flight");
    let mut kinds = Vec::new();
    while let Ok(record) = errors.try_recv() {
        kinds.push((record.subscription, record.kind));
    }
    assert!(
        kinds.contains(&("amplifier".to_owned(), FailureKind::ResourceLimit)),
        "{kinds:?}"
    );
    // The neighbour's emitted events have room of their own: it never waits or fails.
    for _ in 0..300 {
        let report = bus.publish_sync(event("Order")).await.unwrap();
        assert!(report.failures().next().is_none());
    }
    bus.stop().await.unwrap();
}
