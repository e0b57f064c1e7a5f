//! The contract of `InMemoryEventBus`.

use std::sync::{Arc, Mutex};

use evhost::bus::{Effects, from_fn};
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

/// Writes `last` (the event's id) and emits `Counted` for every `Order`.
struct Counting;

#[evhost::async_trait]
impl evhost::EventHandler for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    async fn handle(&self, event: Arc<evhost::Event>) -> Result<Effects, HandlerError> {
        Ok(Effects {
            kv_namespace: String::new(),
            kv_writes: vec![("last".into(), Some(event.id.as_bytes().to_vec()))],
            emitted: vec![evhost::Event::new("Counted", "counting", serde_json::json!({})).caused_by(&event)],
            version: None,
        })
    }
}

#[tokio::test]
async fn a_handlers_effects_apply_and_its_events_are_handled_before_publish_returns() {
    let bus = InMemoryEventBus::new();
    bus.subscribe("Order", Arc::new(Counting)).unwrap();
    let counted = Recorder::named("counted");
    bus.subscribe("Counted", counted.clone()).unwrap();
    bus.start().await.unwrap();
    let order = event("Order");
    bus.publish(order.clone()).await.unwrap();
    let kv = bus.key_value_store();
    assert_eq!(
        kv.get("counting", "last").await.unwrap().map(|v| v.value),
        Some(order.id.as_bytes().to_vec()),
        "written under the subscription's name"
    );
    assert_eq!(counted.types(), ["Counted"]);
    assert_eq!(
        counted.seen.lock().unwrap()[0].causation_id(),
        Some(order.id.as_str())
    );
}

#[tokio::test]
async fn a_failed_handler_applies_nothing() {
    let bus = InMemoryEventBus::new();
    let counted = Recorder::named("counted");
    bus.subscribe("Counted", counted.clone()).unwrap();
    bus.subscribe(
        "Order",
        from_fn("refuser", |_| async { Err(HandlerError::reject("no")) }),
    )
    .unwrap();
    bus.publish(event("Order")).await.unwrap_err();
    assert_eq!(counted.count(), 0);
    assert_eq!(bus.key_value_store().get("refuser", "last").await.unwrap(), None);
}
