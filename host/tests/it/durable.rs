//! `AsyncEventBus` over the durable log: real SQLite files in temporary directories, each
//! "restart" a new bus over the store reopened from the same directory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use evhost::bus::{DeadLetterFilter, Effects, RetryPolicy, from_fn};
use evhost::store::sqlite::{DeliveryState, SqliteStore};
use evhost::{
    AsyncBusConfig, AsyncEventBus, BusError, Event, EventBus, EventHandler, HandlerError, SubscribeOptions,
};
use serde_json::json;

use crate::helpers::{Recorder, TempDir, event, keyed};

fn durable_bus(store: &Arc<SqliteStore>, config: AsyncBusConfig) -> AsyncEventBus {
    AsyncEventBus::with_storage(config, store.storage())
}

fn named(name: &str) -> SubscribeOptions {
    SubscribeOptions {
        name: Some(name.into()),
        ..Default::default()
    }
}

async fn settle(bus: &AsyncEventBus) {
    tokio::time::timeout(Duration::from_secs(20), bus.wait())
        .await
        .expect("the bus settles");
}

/// Writes `count:{subject}` (a running count) and emits `Counted` for every event.
struct Counter;

#[evhost::async_trait]
impl EventHandler for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        let subject = event.subject.clone().unwrap_or_default();
        Ok(Effects {
            kv_namespace: "counter".into(),
            kv_writes: vec![(format!("last:{subject}"), Some(event.id.as_bytes().to_vec()))],
            emitted: vec![Event::new("Counted", "counter", json!({ "of": event.id })).caused_by(&event)],
            version: Some("counter-v1".into()),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_delivered_after_a_restart_and_handled_ones_are_not() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    // Subscribed but never started: the process "dies" with everything pending.
    let (bus, _) = recording_bus(&store);
    let events: Vec<Event> = (0..5).map(|i| keyed("T", &format!("k{}", i % 2), i)).collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    bus.publish_batch(events).await.unwrap();
    assert_eq!(store.stats().unwrap().pending, 5, "accepted means stored");
    drop(bus);
    store.close().await;
    drop(store);

    let (store, bus, recorder) = start_recording(&dir).await;
    let mut seen: Vec<String> = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.id.clone())
        .collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "every pending event, once");
    assert_eq!(store.stats().unwrap().pending, 0);
    bus.stop().await.unwrap();
    drop(bus);
    store.close().await;
    drop(store);

    // Everything was acknowledged: a third start delivers nothing.
    let (_store, _bus, again) = start_recording(&dir).await;
    assert_eq!(again.count(), 0, "nothing acknowledged runs again");
}

/// Opens the log in `dir`, subscribes a recorder as `r`, starts and settles.
async fn start_recording(dir: &TempDir) -> (Arc<SqliteStore>, AsyncEventBus, Arc<Recorder>) {
    let store = dir.open();
    let (bus, recorder) = recording_bus(&store);
    bus.start().await.unwrap();
    settle(&bus).await;
    (store, bus, recorder)
}

/// A bus over `store` with a recorder subscribed to everything as `r`, not started yet.
fn recording_bus(store: &Arc<SqliteStore>) -> (AsyncEventBus, Arc<Recorder>) {
    let bus = durable_bus(store, AsyncBusConfig::default());
    let recorder = Recorder::named("r");
    bus.subscribe_with("*", recorder.clone(), named("r")).unwrap();
    (bus, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_pending_events_come_back_in_order_before_new_ones() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let (bus, _) = recording_bus(&store);
    let old: Vec<Event> = (0..20).map(|i| keyed("T", "k", i)).collect();
    bus.publish_batch(old.clone()).await.unwrap();
    drop(bus);

    let (bus, recorder) = recording_bus(&store);
    let new: Vec<Event> = (20..40).map(|i| keyed("T", "k", i)).collect();
    bus.publish_batch(new.clone()).await.unwrap();
    bus.start().await.unwrap();
    settle(&bus).await;
    let seen: Vec<String> = recorder
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.id.clone())
        .collect();
    let expected: Vec<String> = old.iter().chain(&new).map(|e| e.id.clone()).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_commit_with_the_acknowledgement() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let bus = durable_bus(&store, AsyncBusConfig::default());
    bus.subscribe_with("Order*", Arc::new(Counter), named("counter"))
        .unwrap();
    let follower = Recorder::named("follower");
    bus.subscribe_with("Counted", follower.clone(), named("follower"))
        .unwrap();
    bus.start().await.unwrap();
    let placed = keyed("OrderPlaced", "o1", 1);
    let appended = bus.publish_batch_offsets(vec![placed.clone()]).await.unwrap();
    settle(&bus).await;

    assert_eq!(
        store.kv_get("counter", "last:o1").unwrap(),
        Some(placed.id.as_bytes().to_vec()),
        "the key-value write is stored"
    );
    assert_eq!(
        bus.key_value_store()
            .get("counter", "last:o1")
            .await
            .unwrap()
            .map(|v| v.value),
        Some(placed.id.as_bytes().to_vec()),
        "and is what plugins on this bus read"
    );
    let counted = follower.seen.lock().unwrap().clone();
    assert_eq!(counted.len(), 1, "the emitted event was delivered");
    assert_eq!(counted[0].json_data(), Some(&json!({ "of": placed.id })));
    let state = store.delivery_state("counter", appended[0].offset).unwrap();
    assert!(
        matches!(&state, Some(DeliveryState::Handled { at: Some(_), version: Some(v) }) if v == "counter-v1"),
        "the acknowledgement records when and by which version: {state:?}"
    );
    assert_eq!(
        store.stats().unwrap().events,
        2,
        "the emitted event is in the log"
    );
    assert_eq!(store.stats().unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_an_accepted_event_again_is_a_no_op_that_says_so() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let (bus, recorder) = recording_bus(&store);
    bus.start().await.unwrap();
    let first = event("T");
    let fresh = event("T");
    let once = bus.publish_batch_offsets(vec![first.clone()]).await.unwrap();
    let twice = bus
        .publish_batch_offsets(vec![first.clone(), fresh.clone()])
        .await
        .unwrap();
    assert!(!once[0].duplicate);
    assert!(twice[0].duplicate, "already accepted");
    assert_eq!(twice[0].offset, once[0].offset, "it names the original");
    assert!(!twice[1].duplicate, "the rest of the batch is published");
    let report = bus.publish_sync(first.clone()).await.unwrap();
    assert!(report.duplicate && report.outcomes.is_empty());
    settle(&bus).await;
    assert_eq!(recorder.count(), 2, "each event handled once");
    assert_eq!(bus.metrics().accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_their_history_across_a_restart_and_replay_to_a_fixed_handler() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let config = || AsyncBusConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.0,
        },
        ..Default::default()
    };
    let bus = durable_bus(&store, config());
    bus.subscribe_with(
        "*",
        from_fn("p", |_| async { Err(HandlerError::retry("database down")) }),
        named("p"),
    )
    .unwrap();
    bus.start().await.unwrap();
    let sent = [event("T"), event("T")];
    bus.publish_batch(sent.to_vec()).await.unwrap();
    settle(&bus).await;
    bus.stop().await.unwrap();
    drop(bus);
    store.close().await;
    drop(store);

    let store = dir.open();
    let bus = durable_bus(&store, config());
    let fixed = Arc::new(AtomicU32::new(0));
    let counter = fixed.clone();
    bus.subscribe_with(
        "*",
        from_fn("p", move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
        named("p"),
    )
    .unwrap();
    bus.start().await.unwrap();
    let letters = bus.dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 2, "the queue survived the restart");
    for letter in &letters {
        let attempts: Vec<u32> = letter.failures.iter().map(|f| f.attempt).collect();
        assert_eq!(attempts, [1, 2, 3], "the whole history");
        assert!(letter.failures.iter().all(|f| f.message == "database down"));
    }
    assert_eq!(bus.metrics().dead_letters, 2);

    let one = DeadLetterFilter {
        id: Some(letters[0].id),
        ..Default::default()
    };
    assert_eq!(bus.replay_dead_letters(&one).await.unwrap(), 1);
    settle(&bus).await;
    assert_eq!(fixed.load(Ordering::SeqCst), 1);
    assert_eq!(
        bus.replay_dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap(),
        1
    );
    settle(&bus).await;
    assert_eq!(fixed.load(Ordering::SeqCst), 2, "the queue drained");
    assert_eq!(store.stats().unwrap().dead_letters, 0);
    assert_eq!(store.stats().unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_at_a_crash_is_not_delivered_before_its_time() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let backoff = Duration::from_millis(800);
    let config = || AsyncBusConfig {
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: backoff,
            max_backoff: backoff,
            multiplier: 1.0,
            jitter: 0.0,
        },
        ..Default::default()
    };
    let bus = durable_bus(&store, config());
    let failed = Arc::new(tokio::sync::Notify::new());
    let notify = failed.clone();
    bus.subscribe_with(
        "*",
        from_fn("p", move |_| {
            notify.notify_one();
            async { Err(HandlerError::retry("not yet")) }
        }),
        named("p"),
    )
    .unwrap();
    bus.start().await.unwrap();
    bus.publish(event("T")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), failed.notified())
        .await
        .unwrap();
    // The retry is stored before the worker lets go; wait for it to land, then "crash".
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let pending = store.pending("p").unwrap();
        if pending.first().is_some_and(|p| p.attempt == 1) {
            break pending;
        }
        assert!(std::time::Instant::now() < deadline, "the retry was stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let not_before = pending[0].not_before.expect("a retry has a time");
    drop(bus);

    let bus = durable_bus(&store, config());
    let handled_at = Arc::new(Mutex::new(None));
    let at = handled_at.clone();
    bus.subscribe_with(
        "*",
        from_fn("p", move |_| {
            *at.lock().unwrap() = Some(Utc::now());
            async { Ok(()) }
        }),
        named("p"),
    )
    .unwrap();
    bus.start().await.unwrap();
    settle(&bus).await;
    let handled_at = handled_at.lock().unwrap().expect("delivered after the restart");
    assert!(
        handled_at >= not_before,
        "delivered at {handled_at}, before its retry time {not_before}"
    );
}

#[tokio::test]
async fn a_durable_bus_refuses_two_subscriptions_of_one_name() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let bus = durable_bus(&store, AsyncBusConfig::default());
    let id = bus.subscribe_with("A", Recorder::named("r"), named("r")).unwrap();
    let error = bus
        .subscribe_with("B", Recorder::named("r"), named("r"))
        .unwrap_err();
    assert!(
        matches!(error, BusError::NameTaken(ref name) if name == "r"),
        "{error}"
    );
    // Replacing it under its own name is what a plugin reload does.
    bus.replace_subscription(id, &["B"], Recorder::named("r"), named("r"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_goes_away_mid_append_leaves_nothing_unqueued() {
    let dir = TempDir::new("durable");
    let store = dir.open();
    let (bus, recorder) = recording_bus(&store);
    bus.start().await.unwrap();
    for _ in 0..20 {
        // Polled until the append is with the log, then dropped: a client that hung up.
        let _ = futures::poll!(Box::pin(bus.publish(event("T"))));
    }
    settle(&bus).await;
    assert_eq!(
        recorder.count() as u64,
        store.stats().unwrap().events,
        "every stored event was handled"
    );
    assert_eq!(bus.stop().await.unwrap().abandoned, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_go_on_while_a_subscription_with_a_large_backlog_subscribes() {
    const BACKLOG: usize = 100_000;
    let dir = TempDir::new("backlog");
    let store = dir.open();
    // A plugin that was away while 100,000 events were accepted for it.
    let storage = store.storage();
    for chunk in 0..BACKLOG / 5_000 {
        let events: Vec<Arc<Event>> = (0..5_000)
            .map(|i| {
                Arc::new(keyed(
                    "Backlog",
                    &format!("k{}", i % 100),
                    (chunk * 5_000 + i) as u64,
                ))
            })
            .collect();
        let routes = vec![vec![Arc::from("away")]; events.len()];
        storage
            .log
            .append(evhost::store::AppendBatch {
                events,
                routes,
                checkpoint: None,
            })
            .await
            .unwrap();
    }
    let bus = durable_bus(&store, AsyncBusConfig::default());
    let others = Recorder::named("others");
    bus.subscribe_with("Live", others.clone(), named("others"))
        .unwrap();
    bus.start().await.unwrap();

    let publisher = tokio::spawn({
        let bus = bus.clone();
        async move {
            let mut slowest = Duration::ZERO;
            for i in 0..200 {
                let started = std::time::Instant::now();
                bus.publish(keyed("Live", "live", i)).await.unwrap();
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slowest
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let away = Recorder::named("away");
    let subscribing = std::time::Instant::now();
    bus.subscribe_with("Backlog", away.clone(), named("away"))
        .unwrap();
    let subscribe_took = subscribing.elapsed();
    let slowest = publisher.await.unwrap();
    eprintln!("subscribe took {subscribe_took:?}; the slowest publish meanwhile {slowest:?}");
    assert!(
        subscribe_took < Duration::from_millis(100),
        "subscribe took {subscribe_took:?}"
    );
    assert!(slowest < Duration::from_millis(500), "a publish took {slowest:?}");

    tokio::time::timeout(Duration::from_secs(120), bus.wait())
        .await
        .expect("the backlog is handled");
    assert_eq!(away.count(), BACKLOG, "every event of the backlog, once");
    assert_eq!(others.count(), 200);
    // Each key's events in the order they were accepted.
    let seen = away.seen.lock().unwrap();
    let mut last = std::collections::HashMap::new();
    for event in seen.iter() {
        let seq = event.json_data().unwrap()["seq"].as_u64().unwrap();
        let previous = last.insert(event.subject.clone(), seq);
        assert!(
            previous.is_none_or(|p| p < seq),
            "out of order: {previous:?} then {seq}"
        );
    }
}

/// The embedded log, with its `append` answering only once the backlog read it released
/// has yielded a delivery: the moment between an append's commit and its publisher queueing
/// the events, which a subscription loading its backlog must not mistake for backlog.
#[derive(Debug)]
struct HeldLog {
    inner: Arc<SqliteStore>,
    appended: tokio::sync::Notify,
    read: tokio::sync::Notify,
}

impl evhost::store::EventLog for HeldLog {
    fn append(
        &self,
        batch: evhost::store::AppendBatch,
    ) -> futures::future::BoxFuture<'_, Result<Vec<evhost::store::Appended>, evhost::store::StorageError>>
    {
        Box::pin(async move {
            let appended = evhost::store::EventLog::append(&*self.inner, batch).await;
            self.appended.notify_one();
            self.read.notified().await;
            appended
        })
    }

    fn pending<'a>(
        &'a self,
        subscription: &'a str,
    ) -> futures::stream::BoxStream<'a, Result<evhost::store::PendingDelivery, evhost::store::StorageError>>
    {
        use futures::StreamExt as _;
        futures::stream::once(self.appended.notified())
            .flat_map(move |()| evhost::store::EventLog::pending(&*self.inner, subscription))
            .inspect(|_| self.read.notify_one())
            .boxed()
    }

    fn horizon(&self) -> Option<evhost::store::Offset> {
        evhost::store::EventLog::horizon(&*self.inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_while_a_subscription_loads_its_backlog_is_handled_once() {
    let dir = TempDir::new("backlog-race");
    let store = dir.open();
    let log = Arc::new(HeldLog {
        inner: Arc::clone(&store),
        appended: tokio::sync::Notify::new(),
        read: tokio::sync::Notify::new(),
    });
    let storage = evhost::store::Storage {
        log: log as Arc<dyn evhost::store::EventLog>,
        ..store.storage()
    };
    let bus = AsyncEventBus::with_storage(AsyncBusConfig::default(), storage);
    bus.start().await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    // Its backlog read waits for the append below, and the append for that read.
    bus.subscribe_with(
        "*",
        from_fn("late", move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, HandlerError>(()) }
        }),
        named("late"),
    )
    .unwrap();
    bus.publish(event("T")).await.unwrap();
    // A second copy would hold a place in the bus too: `wait` waits for it.
    settle(&bus).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "queued once: live, not again as backlog"
    );
    let report = bus.stop().await.unwrap();
    assert_eq!(report.abandoned, 0);
}
