//! The contract of `AsyncEventBus`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use evhost::bus::from_fn;
use evhost::{
    AsyncBusConfig, AsyncEventBus, Backpressure, BusError, Event, EventBus, FailureKind, HandlerError,
    SubscribeOptions,
};
use serde_json::json;

use crate::helpers::{ConcurrencyProbe, OrderChecker, Recorder, event, keyed};

async fn started(config: AsyncBusConfig) -> AsyncEventBus {
    let bus = AsyncEventBus::with_config(config);
    bus.start().await.unwrap();
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_once_accepted_and_wait_sees_every_event_handled() {
    let bus = started(AsyncBusConfig::default()).await;
    let slow = ConcurrencyProbe::new("slow", Duration::from_millis(50));
    bus.subscribe("Slow", slow.clone()).unwrap();
    for _ in 0..10 {
        bus.publish(event("Slow")).await.unwrap();
    }
    assert!(
        slow.done.load(Ordering::SeqCst) < 10,
        "publish must not wait for handlers"
    );
    bus.wait().await;
    assert_eq!(slow.done.load(Ordering::SeqCst), 10);
    assert_eq!(bus.metrics().in_flight, 0);
    assert_eq!(bus.metrics().accepted, 10);
}

#[tokio::test]
async fn exact_prefix_and_wildcard_subscriptions_get_their_events() {
    let bus = started(AsyncBusConfig::default()).await;
    let exact = Recorder::named("exact");
    let prefix = Recorder::named("prefix");
    let all = Recorder::named("all");
    bus.subscribe("UserCreated", exact.clone()).unwrap();
    bus.subscribe("User*", prefix.clone()).unwrap();
    bus.subscribe("*", all.clone()).unwrap();
    bus.publish_batch(vec![
        event("UserCreated"),
        event("UserDeleted"),
        event("PaymentCreated"),
    ])
    .await
    .unwrap();
    bus.wait().await;
    assert_eq!(exact.types(), ["UserCreated"]);
    let mut prefixed = prefix.types();
    prefixed.sort();
    assert_eq!(prefixed, ["UserCreated", "UserDeleted"]);
    assert_eq!(all.count(), 3);
}

#[tokio::test]
async fn a_bad_pattern_is_refused() {
    let bus = AsyncEventBus::new();
    let err = bus.subscribe("*User", Recorder::named("r")).unwrap_err();
    assert!(matches!(err, BusError::InvalidPattern { .. }), "{err}");
}

#[tokio::test]
async fn an_invalid_event_is_refused_naming_the_attribute() {
    let bus = started(AsyncBusConfig::default()).await;
    let mut bad = event("UserCreated");
    bad.source.clear();
    let err = bus.publish(bad).await.unwrap_err();
    assert!(err.to_string().contains("`source`"), "{err}");
    let bad = event("T").with_extension("Not-Valid", "x");
    let err = bus.publish_batch(vec![event("T"), bad]).await.unwrap_err();
    assert!(err.to_string().contains("Not-Valid"), "{err}");
    assert_eq!(
        bus.metrics().accepted,
        0,
        "a batch is accepted whole or not at all"
    );
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let bus = started(AsyncBusConfig::default()).await;
    let recorder = Recorder::named("r");
    let id = bus.subscribe("*", recorder.clone()).unwrap();
    bus.publish(event("A")).await.unwrap();
    bus.wait().await;
    bus.unsubscribe(id).unwrap();
    bus.publish(event("B")).await.unwrap();
    bus.wait().await;
    assert_eq!(recorder.types(), ["A"]);
    assert!(matches!(
        bus.unsubscribe(id),
        Err(BusError::NoSuchSubscription(_))
    ));
}

#[tokio::test]
async fn events_published_before_start_are_delivered_after_it() {
    let bus = AsyncEventBus::new();
    let recorder = Recorder::named("r");
    bus.subscribe("*", recorder.clone()).unwrap();
    bus.publish(event("Early")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(recorder.count(), 0, "nothing is delivered before start");
    bus.start().await.unwrap();
    bus.wait().await;
    assert_eq!(recorder.types(), ["Early"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_under_concurrency() {
    let bus = started(AsyncBusConfig::default()).await;
    let checker = Arc::new(OrderChecker::default());
    bus.subscribe("*", checker.clone()).unwrap();
    let keys = ["a", "b", "c", "d", "e"];
    let per_key = 1000;
    // Several concurrent publishers, each owning some keys, publish interleaved batches.
    let mut publishers = Vec::new();
    for chunk in keys.chunks(2) {
        let bus = bus.clone();
        let chunk: Vec<String> = chunk.iter().map(|k| k.to_string()).collect();
        publishers.push(tokio::spawn(async move {
            for start in (0..per_key).step_by(50) {
                let batch = (start..start + 50)
                    .flat_map(|seq| chunk.iter().map(move |key| keyed("Tick", key, seq)))
                    .collect();
                bus.publish_batch(batch).await.unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    bus.wait().await;
    let violations = checker.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        violations.first()
    );
    assert_eq!(
        checker.handled.load(Ordering::SeqCst),
        keys.len() * per_key as usize
    );
    for key in keys {
        assert_eq!(
            checker.next.lock().unwrap()[key],
            per_key,
            "key {key} saw every event"
        );
    }
    assert!(
        checker.max_parallel_keys.load(Ordering::SeqCst) > 1,
        "different keys must run in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_does_not_hold_up_other_keys() {
    let bus = started(AsyncBusConfig::default()).await;
    let fast_done = Arc::new(AtomicUsize::new(0));
    let counter = fast_done.clone();
    bus.subscribe(
        "*",
        from_fn("mixed", move |event| {
            let counter = counter.clone();
            async move {
                if event.subject.as_deref() == Some("slow") {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                } else {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        }),
    )
    .unwrap();
    bus.publish(keyed("T", "slow", 0)).await.unwrap();
    bus.publish(keyed("T", "slow", 1)).await.unwrap();
    let fast: Vec<_> = (0..100).map(|i| keyed("T", &format!("k{i}"), 0)).collect();
    bus.publish_batch(fast).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), async {
        while fast_done.load(Ordering::SeqCst) < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("other keys finish while the slow key is busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_bounds_parallelism() {
    let bus = started(AsyncBusConfig {
        max_concurrency: 4,
        ..Default::default()
    })
    .await;
    // One probe behind three subscriptions measures their combined parallelism.
    let probe = ConcurrencyProbe::new("shared", Duration::from_millis(10));
    for name in ["a", "b", "c"] {
        let options = SubscribeOptions {
            name: Some(name.into()),
            ..Default::default()
        };
        bus.subscribe_with("*", probe.clone(), options).unwrap();
    }
    bus.publish_batch((0..40).map(|_| event("T")).collect())
        .await
        .unwrap();
    bus.wait().await;
    assert_eq!(probe.done.load(Ordering::SeqCst), 120);
    assert_eq!(probe.max(), 4, "the bus-wide limit is reached and never passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_limit_bounds_parallelism() {
    let bus = started(AsyncBusConfig::default()).await;
    let limited = ConcurrencyProbe::new("limited", Duration::from_millis(10));
    let free = ConcurrencyProbe::new("free", Duration::from_millis(10));
    bus.subscribe_with(
        "*",
        limited.clone(),
        SubscribeOptions {
            concurrency: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    bus.subscribe("*", free.clone()).unwrap();
    bus.publish_batch((0..60).map(|_| event("T")).collect())
        .await
        .unwrap();
    bus.wait().await;
    assert_eq!(
        limited.max(),
        3,
        "the per-subscription limit is reached and never passed"
    );
    assert!(
        free.max() > 3,
        "the other subscription is not bound by it: {}",
        free.max()
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_times_out_and_is_reported() {
    let bus = started(AsyncBusConfig {
        handler_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let mut errors = bus.errors().unwrap();
    bus.subscribe("*", ConcurrencyProbe::new("sleepy", Duration::from_secs(60)))
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = bus.publish_sync(event("T")).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let BusError::HandlersFailed(report) = err else {
        panic!("expected a handler failure, got {err}")
    };
    assert_eq!(
        report.outcomes[0].error.as_ref().unwrap().kind(),
        FailureKind::Timeout
    );
    let record = errors.recv().await.unwrap();
    assert_eq!(record.kind, FailureKind::Timeout);
    assert_eq!(record.subscription, "sleepy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_reported_and_contained() {
    let bus = started(AsyncBusConfig::default()).await;
    let mut errors = bus.errors().unwrap();
    bus.subscribe(
        "*",
        from_fn("boom", |event| async move {
            if event.ty == "Boom" {
                panic!("exploded on {}", event.id);
            }
            Ok(())
        }),
    )
    .unwrap();
    let healthy = Recorder::named("healthy");
    bus.subscribe("*", healthy.clone()).unwrap();
    let boom = event("Boom");
    let id = boom.id.clone();
    bus.publish(boom).await.unwrap();
    bus.publish(event("Fine")).await.unwrap();
    bus.wait().await;
    let record = errors.recv().await.unwrap();
    assert_eq!(record.kind, FailureKind::Panic);
    assert_eq!(record.event_id, id);
    assert!(
        record.message.contains(&format!("exploded on {id}")),
        "{}",
        record.message
    );
    assert_eq!(healthy.types(), ["Boom", "Fine"]);
    let metrics = bus.metrics();
    let boom = metrics.subscriptions.iter().find(|s| s.name == "boom").unwrap();
    assert_eq!((boom.succeeded, boom.failed_total()), (1, 1));
}

#[tokio::test]
async fn failures_reach_the_monitor_with_every_field() {
    let bus = started(AsyncBusConfig::default()).await;
    let mut errors = bus.errors().unwrap();
    bus.subscribe(
        "Payment*",
        from_fn("payments", |event| async move {
            match event.ty.as_str() {
                "PaymentFailed" => Err(HandlerError::retry("gateway unavailable")),
                _ => Err(HandlerError::reject("unknown currency")),
            }
        }),
    )
    .unwrap();
    let first = event("PaymentFailed");
    let second = event("PaymentCreated");
    let ids = (first.id.clone(), second.id.clone());
    bus.publish_batch(vec![first, second]).await.unwrap();
    bus.wait().await;
    let mut records = [errors.recv().await.unwrap(), errors.recv().await.unwrap()];
    records.sort_by_key(|r| r.event_type.clone());
    let [created, failed] = &records[..] else {
        unreachable!()
    };
    assert_eq!(failed.event_id, ids.0);
    assert_eq!(failed.kind, FailureKind::Retry);
    assert_eq!(failed.message, "gateway unavailable");
    assert_eq!(failed.subscription, "payments");
    assert_eq!(failed.attempt, 1);
    assert_eq!(created.event_id, ids.1);
    assert_eq!(created.kind, FailureKind::Reject);
    assert!(chrono::Utc::now() >= created.time);
}

#[tokio::test]
async fn monitor_overflow_is_counted_without_blocking_publishers() {
    let bus = started(AsyncBusConfig {
        monitor_capacity: 5,
        ..Default::default()
    })
    .await;
    bus.subscribe(
        "*",
        from_fn("fails", |_| async { Err(HandlerError::reject("no")) }),
    )
    .unwrap();
    bus.publish_batch((0..25).map(|_| event("T")).collect())
        .await
        .unwrap();
    bus.wait().await;
    let metrics = bus.metrics();
    assert_eq!(metrics.failures_reported, 25);
    assert_eq!(metrics.monitor_overflow, 20);
    let mut errors = bus.errors().unwrap();
    let mut received = 0;
    while errors.try_recv().is_ok() {
        received += 1;
    }
    assert_eq!(received, 5);
}

#[tokio::test]
async fn publish_sync_returns_every_outcome() {
    let bus = started(AsyncBusConfig::default()).await;
    bus.subscribe("*", Recorder::named("ok")).unwrap();
    bus.subscribe(
        "*",
        from_fn("nope", |_| async { Err(HandlerError::reject("bad payload")) }),
    )
    .unwrap();
    let err = bus.publish_sync(event("T")).await.unwrap_err();
    assert!(err.to_string().contains("1 of 2 handlers failed"), "{err}");
    let BusError::HandlersFailed(report) = err else {
        unreachable!()
    };
    let mut outcomes: Vec<_> = report
        .outcomes
        .iter()
        .map(|o| (o.subscription.as_str(), o.error.as_ref().map(|e| e.message())))
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, [("nope", Some("bad payload")), ("ok", None)]);

    let quiet = AsyncEventBus::new();
    quiet.start().await.unwrap();
    quiet.subscribe("*", Recorder::named("ok")).unwrap();
    let report = quiet.publish_sync(event("T")).await.unwrap();
    assert_eq!(report.outcomes.len(), 1);
    assert!(report.outcomes[0].error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_in_flight_work_then_refuses() {
    let bus = started(AsyncBusConfig::default()).await;
    let probe = ConcurrencyProbe::new("p", Duration::from_millis(30));
    bus.subscribe("*", probe.clone()).unwrap();
    bus.publish_batch((0..20).map(|_| event("T")).collect())
        .await
        .unwrap();
    let report = bus.stop().await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert_eq!(report.drained, 20);
    assert_eq!(probe.done.load(Ordering::SeqCst), 20);
    let err = bus.publish(event("T")).await.unwrap_err();
    assert!(matches!(err, BusError::Stopped));
    assert_eq!(err.to_string(), "the bus is stopped and accepts no new events");
    assert!(matches!(bus.start().await, Err(BusError::Stopped)));
    assert_eq!(
        bus.stop().await.unwrap(),
        Default::default(),
        "stopping twice is harmless"
    );
}

#[tokio::test(start_paused = true)]
async fn stop_reports_what_the_deadline_abandoned() {
    let bus = started(AsyncBusConfig {
        drain_timeout: Duration::from_secs(1),
        handler_timeout: Duration::from_secs(600),
        subscription_concurrency: 2,
        ..Default::default()
    })
    .await;
    bus.subscribe("*", ConcurrencyProbe::new("stuck", Duration::from_secs(300)))
        .unwrap();
    bus.publish_batch((0..5).map(|_| event("T")).collect())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let report = bus.stop().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(report.abandoned, 5);
    assert_eq!(report.drained, 0);
    bus.wait().await; // returns: the bus is stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bus_refuses_or_waits_as_configured() {
    let refusing = started(AsyncBusConfig {
        capacity: 4,
        backpressure: Backpressure::Reject,
        ..Default::default()
    })
    .await;
    refusing
        .subscribe("*", ConcurrencyProbe::new("p", Duration::from_millis(100)))
        .unwrap();
    refusing
        .publish_batch((0..4).map(|_| event("T")).collect())
        .await
        .unwrap();
    let err = refusing.publish(event("T")).await.unwrap_err();
    assert!(matches!(err, BusError::Full { capacity: 4 }), "{err}");
    let err = refusing
        .publish_batch((0..5).map(|_| event("T")).collect())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::BatchTooLarge { len: 5, capacity: 4 }),
        "{err}"
    );

    let waiting = started(AsyncBusConfig {
        capacity: 4,
        ..Default::default()
    })
    .await;
    let probe = ConcurrencyProbe::new("p", Duration::from_millis(50));
    waiting.subscribe("*", probe.clone()).unwrap();
    waiting
        .publish_batch((0..4).map(|_| event("T")).collect())
        .await
        .unwrap();
    let before = tokio::time::Instant::now();
    waiting.publish(event("T")).await.unwrap();
    assert!(
        before.elapsed() >= Duration::from_millis(40),
        "publish waited for room"
    );
    assert!(probe.done.load(Ordering::SeqCst) >= 1);
    waiting.wait().await;
    assert_eq!(probe.done.load(Ordering::SeqCst), 5, "nothing was dropped");
}

#[tokio::test]
async fn handlers_see_the_published_event() {
    let bus = started(AsyncBusConfig::default()).await;
    let recorder = Recorder::named("r");
    bus.subscribe("*", recorder.clone()).unwrap();
    let sent = Event::new("UserCreated", "users", json!({"name": "Ada"}))
        .with_subject("u1")
        .with_correlation_id("c1");
    bus.publish(sent.clone()).await.unwrap();
    bus.wait().await;
    assert_eq!(*recorder.seen.lock().unwrap()[0], sent);
}

#[tokio::test]
async fn events_queued_for_a_subscription_removed_before_start_are_still_handled() {
    let bus = AsyncEventBus::new();
    let recorder = Recorder::named("r");
    let id = bus.subscribe("*", recorder.clone()).unwrap();
    bus.publish(event("Queued")).await.unwrap();
    bus.unsubscribe(id).unwrap();
    bus.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), bus.wait())
        .await
        .expect("nothing accepted is stranded");
    assert_eq!(recorder.types(), ["Queued"]);
}

#[tokio::test]
async fn a_replacement_keeps_the_counters_and_gets_the_new_events() {
    let bus = started(AsyncBusConfig::default()).await;
    let old = Recorder::named("plugin");
    let new = Recorder::named("plugin");
    let id = bus.subscribe("*", old.clone()).unwrap();
    bus.publish(event("Before")).await.unwrap();
    bus.wait().await;
    bus.replace_subscription(id, &["*"], new.clone(), SubscribeOptions::default())
        .unwrap();
    bus.publish(event("After")).await.unwrap();
    bus.wait().await;
    assert_eq!(
        (old.types(), new.types()),
        (vec!["Before".to_owned()], vec!["After".to_owned()])
    );
    let metrics = bus.metrics();
    assert_eq!(metrics.subscriptions.len(), 1);
    assert_eq!(
        metrics.subscriptions[0].succeeded, 2,
        "counting goes on across the replacement"
    );
}

#[tokio::test]
async fn one_subscription_over_several_patterns_orders_a_key_across_them() {
    let bus = started(AsyncBusConfig::default()).await;
    let checker = Arc::new(OrderChecker::default());
    bus.subscribe_any(
        &["Created", "Updated*"],
        checker.clone(),
        SubscribeOptions::default(),
    )
    .unwrap();
    let events = (0..200)
        .map(|seq| keyed(if seq % 2 == 0 { "Created" } else { "UpdatedName" }, "k", seq))
        .collect();
    bus.publish_batch(events).await.unwrap();
    bus.wait().await;
    assert!(checker.violations.lock().unwrap().is_empty());
    assert_eq!(checker.handled.load(Ordering::SeqCst), 200);
}
