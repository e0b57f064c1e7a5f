//! The contract of `InMemoryEventBus`.

use std::sync::{Arc, Mutex};

use evhost::bus::from_fn;
use evhost::{BusError, EventBus, FailureKind, HandlerError, InMemoryEventBus};

use crate::helpers::{Recorder, event};

#[tokio::test]
async fn handlers_run_before_publish_returns_in_subscription_order() {
    let bus = InMemoryEventBus::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    for name in ["first", "second", "third"] {
        let order = order.clone();
        bus.subscribe(
            "*",
            from_fn(name, move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(name);
                    Ok(())
                }
            }),
        )
        .unwrap();
    }
    bus.start().await.unwrap();
    bus.publish(event("T")).await.unwrap();
    assert_eq!(*order.lock().unwrap(), ["first", "second", "third"]);
}

#[tokio::test]
async fn the_first_error_is_returned_and_stops_the_event() {
    let bus = InMemoryEventBus::new();
    let mut errors = bus.monitor().errors().unwrap();
    let before = Recorder::named("before");
    let after = Recorder::named("after");
    bus.subscribe("*", before.clone()).unwrap();
    bus.subscribe(
        "*",
        from_fn("fails", |_| async { Err(HandlerError::retry("database down")) }),
    )
    .unwrap();
    bus.subscribe("*", after.clone()).unwrap();
    let err = bus.publish(event("T")).await.unwrap_err();
    let BusError::HandlersFailed(report) = &err else {
        panic!("unexpected {err}")
    };
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, "fails");
    assert_eq!(failures[0].1.kind(), FailureKind::Retry);
    assert!(err.to_string().contains("database down"), "{err}");
    assert_eq!(before.count(), 1);
    assert_eq!(after.count(), 0, "handlers after the failing one do not run");
    assert_eq!(errors.recv().await.unwrap().kind, FailureKind::Retry);
}

#[tokio::test]
async fn publish_sync_runs_every_handler_and_reports_each() {
    let bus = InMemoryEventBus::new();
    let after = Recorder::named("after");
    bus.subscribe(
        "*",
        from_fn("fails", |_| async { Err(HandlerError::reject("no")) }),
    )
    .unwrap();
    bus.subscribe("*", after.clone()).unwrap();
    let BusError::HandlersFailed(report) = bus.publish_sync(event("T")).await.unwrap_err() else {
        panic!("expected a handler failure")
    };
    assert_eq!(report.outcomes.len(), 2);
    assert_eq!(after.count(), 1);
}

#[tokio::test]
async fn a_panic_becomes_an_error() {
    let bus = InMemoryEventBus::new();
    bus.subscribe("*", from_fn("boom", |_| async { panic!("kaboom") }))
        .unwrap();
    let err = bus.publish(event("T")).await.unwrap_err();
    assert!(
        err.to_string().contains("panic: handler panicked: kaboom"),
        "{err}"
    );
    // The bus keeps working.
    let err = bus.publish(event("T")).await.unwrap_err();
    assert!(matches!(err, BusError::HandlersFailed(_)));
}

#[tokio::test]
async fn patterns_batches_unsubscribe_and_stop() {
    let bus = InMemoryEventBus::new();
    let users = Recorder::named("users");
    let id = bus.subscribe("User*", users.clone()).unwrap();
    bus.publish_batch(vec![
        event("UserCreated"),
        event("PaymentCreated"),
        event("UserDeleted"),
    ])
    .await
    .unwrap();
    assert_eq!(users.types(), ["UserCreated", "UserDeleted"]);
    bus.unsubscribe(id).unwrap();
    bus.publish(event("UserCreated")).await.unwrap();
    assert_eq!(users.count(), 2);
    bus.wait().await;
    let report = bus.stop().await.unwrap();
    assert_eq!(report.abandoned, 0);
    assert!(matches!(bus.publish(event("T")).await, Err(BusError::Stopped)));
    assert_eq!(bus.metrics().accepted, 4);
}

#[tokio::test]
async fn an_invalid_event_is_refused() {
    let bus = InMemoryEventBus::new();
    let mut bad = event("T");
    bad.specversion = "0.3".into();
    let err = bus.publish(bad).await.unwrap_err();
    assert!(err.to_string().contains("specversion"), "{err}");
}
