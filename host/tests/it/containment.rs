//! What one handler (or a faulty log) may do to the bus: a panic in the bus's own calls is
//! contained and reported, an extreme retry policy saturates instead of panicking, and a
//! handler that feeds itself can hold only its own room for emitted events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use evhost::bus::{Effects, RetryPolicy, from_fn};
use evhost::store::sqlite::DeliveryState;
use evhost::store::{CommitOutcome, DeliveryCommit, DeliveryLedger, MemoryLog, Storage, StorageError};
use evhost::{
    AsyncBusConfig, AsyncEventBus, BusError, Event, EventBus, EventHandler, FailureKind, HandlerError,
    SubscribeOptions,
};
use futures::future::BoxFuture;
use serde_json::json;

use crate::helpers::{TempDir, event};

/// A ledger that panics when asked to store anything about a `Doomed` event (a bug in a
/// storage backend), and fails the first `transient_failures` other requests with a
/// transient error (a busy disk), in front of a memory log.
#[derive(Debug, Default)]
struct FaultyLedger {
    inner: Arc<MemoryLog>,
    transient_failures: AtomicU32,
    requests: AtomicU32,
}

impl DeliveryLedger for FaultyLedger {
    fn commit<'a>(
        &'a self,
        commits: &'a [DeliveryCommit],
    ) -> BoxFuture<'a, Result<Vec<CommitOutcome>, StorageError>> {
        if commits.iter().any(|c| c.event.ty == "Doomed") {
            panic!("the log cannot store this");
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Box::pin(async { Err(StorageError::transient("the disk is busy")) });
        }
        self.inner.commit(commits)
    }
}

fn faulty(transient_failures: u32) -> (Storage, Arc<FaultyLedger>) {
    let log = Arc::new(MemoryLog::default());
    let ledger = Arc::new(FaultyLedger {
        inner: Arc::clone(&log),
        transient_failures: AtomicU32::new(transient_failures),
        requests: AtomicU32::new(0),
    });
    let storage = Storage {
        ledger: Arc::clone(&ledger) as Arc<dyn DeliveryLedger>,
        ..Storage::of(log)
    };
    (storage, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_log_fails_the_delivery_and_leaves_nothing_in_flight() {
    let bus = AsyncEventBus::with_storage(AsyncBusConfig::default(), faulty(0).0);
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
        failures[0].2.contains(
            "the store could not commit the delivery: the storage panicked: the log cannot store this"
        ),
        "{failures:?}"
    );
    assert_eq!(
        (failures[1].0.as_str(), failures[1].1),
        ("refuser", FailureKind::Reject)
    );
    // The store's failure is the host's: only the refuser's own reaches the monitor.
    assert_eq!(errors.recv().await.unwrap().kind, FailureKind::Reject);
    assert!(errors.try_recv().is_err());

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
    let bus = AsyncEventBus::with_storage(config.clone(), store.storage());
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
    let bus = AsyncEventBus::with_storage(config, store.storage());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_for_a_while_costs_the_handler_no_attempt() {
    let (storage, ledger) = faulty(3);
    let bus = AsyncEventBus::with_storage(
        AsyncBusConfig {
            retry: RetryPolicy {
                max_attempts: 2,
                ..RetryPolicy::default()
            },
            ..AsyncBusConfig::default()
        },
        storage,
    );
    let mut errors = bus.errors().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&runs);
    bus.subscribe(
        "*",
        from_fn("once", move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
    )
    .unwrap();
    bus.start().await.unwrap();
    let report = bus.publish_sync(event("T")).await.unwrap();
    assert!(report.failures().next().is_none(), "handled: {report:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(
        ledger.requests.load(Ordering::SeqCst),
        4,
        "three failed commits, then one that held"
    );
    assert_eq!(bus.metrics().store_retries, 3);
    assert!(
        errors.try_recv().is_err(),
        "the store's failures are not the handler's"
    );
    bus.stop().await.unwrap();
}
