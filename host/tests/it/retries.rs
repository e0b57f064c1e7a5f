//! Retries with backoff, the dead-letter queue and replay on `AsyncEventBus`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evhost::bus::{DeadLetterFilter, RetryPolicy, from_fn};
use evhost::{AsyncBusConfig, AsyncEventBus, EventBus, FailureKind, HandlerError, SubscribeOptions};
use tokio::time::Instant;

use crate::helpers::{event, keyed};

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        multiplier: 2.0,
        jitter: 0.0,
    }
}

async fn bus_with_retries(max_attempts: u32) -> AsyncEventBus {
    let bus = AsyncEventBus::with_config(AsyncBusConfig {
        retry: policy(max_attempts),
        ..Default::default()
    });
    bus.start().await.unwrap();
    bus
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_of_the_policy() {
    let bus = bus_with_retries(5).await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    bus.subscribe(
        "*",
        from_fn("flaky", move |_| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(Instant::now());
                if seen.len() < 4 {
                    Err(HandlerError::retry("not yet"))
                } else {
                    Ok(())
                }
            }
        }),
    )
    .unwrap();
    let report = bus.publish_sync(event("T")).await.unwrap();
    assert!(report.outcomes[0].error.is_none(), "the fourth attempt succeeded");
    let attempts = attempts.lock().unwrap();
    let gaps: Vec<u128> = attempts.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert_eq!(gaps, [100, 200, 300], "100 ms doubling, capped at 300 ms");
    assert_eq!(bus.metrics().dead_letters, 0);
}

#[tokio::test(start_paused = true)]
async fn the_last_failure_goes_to_the_dead_letter_queue_with_its_history() {
    let bus = bus_with_retries(3).await;
    let mut errors = bus.errors().unwrap();
    bus.subscribe(
        "*",
        from_fn("down", |_| async { Err(HandlerError::retry("database down")) }),
    )
    .unwrap();
    let sent = event("T");
    let err = bus.publish_sync(sent.clone()).await.unwrap_err();
    assert!(err.to_string().contains("database down"), "{err}");
    let letters = bus.dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.subscription, "down");
    assert_eq!(letter.event.id, sent.id);
    let attempts: Vec<u32> = letter.failures.iter().map(|f| f.attempt).collect();
    assert_eq!(attempts, [1, 2, 3], "every attempt is in the history");
    for attempt in 1..=3 {
        assert_eq!(
            errors.recv().await.unwrap().attempt,
            attempt,
            "each attempt reached the monitor"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn reject_skips_the_retries() {
    let bus = bus_with_retries(5).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    bus.subscribe(
        "*",
        from_fn("strict", move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::reject("malformed")) }
        }),
    )
    .unwrap();
    bus.publish(event("T")).await.unwrap();
    bus.wait().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let letters = bus.dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(letters[0].failures[0].kind, FailureKind::Reject);
}

#[tokio::test(start_paused = true)]
async fn a_retrying_event_holds_its_key_but_not_the_others() {
    let bus = bus_with_retries(3).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let failed_once = Arc::new(AtomicU32::new(0));
    let (log, failed) = (order.clone(), failed_once.clone());
    bus.subscribe(
        "*",
        from_fn("ordered", move |event| {
            let (log, failed) = (log.clone(), failed.clone());
            async move {
                let label = format!(
                    "{}{}",
                    event.subject.as_deref().unwrap(),
                    event.json_data().unwrap()["seq"]
                );
                if label == "a0" && failed.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(HandlerError::retry("first try fails"));
                }
                log.lock().unwrap().push(label);
                Ok(())
            }
        }),
    )
    .unwrap();
    bus.publish_batch(vec![
        keyed("T", "a", 0),
        keyed("T", "a", 1),
        keyed("T", "b", 0),
        keyed("T", "b", 1),
    ])
    .await
    .unwrap();
    bus.wait().await;
    let order = order.lock().unwrap().clone();
    let position = |label: &str| order.iter().position(|l| l == label).unwrap();
    assert!(
        position("a0") < position("a1"),
        "key a stays in order across the retry: {order:?}"
    );
    assert!(
        position("b1") < position("a0"),
        "key b did not wait for a's backoff: {order:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn replay_delivers_dead_letters_to_the_current_handler_and_purge_drops_them() {
    let bus = bus_with_retries(1).await;
    let broken = bus
        .subscribe_with(
            "*",
            from_fn("projection", |_| async { Err(HandlerError::retry("bug")) }),
            SubscribeOptions::default(),
        )
        .unwrap();
    bus.publish_batch(vec![event("A"), event("B"), event("C")])
        .await
        .unwrap();
    bus.wait().await;
    assert_eq!(bus.metrics().dead_letters, 3);

    // The fixed version takes over the subscription, then the queue is replayed.
    let handled = Arc::new(AtomicU32::new(0));
    let counter = handled.clone();
    bus.replace_subscription(
        broken,
        &["*"],
        from_fn("projection", move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        }),
        SubscribeOptions::default(),
    )
    .unwrap();
    let first = bus.dead_letters(&DeadLetterFilter::default()).await.unwrap()[0].id;
    let one = DeadLetterFilter {
        id: Some(first),
        ..Default::default()
    };
    assert_eq!(bus.replay_dead_letters(&one).await.unwrap(), 1);
    bus.wait().await;
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    assert_eq!(bus.metrics().dead_letters, 2);

    let all = DeadLetterFilter {
        subscription: Some("projection".into()),
        ..Default::default()
    };
    assert_eq!(bus.replay_dead_letters(&all).await.unwrap(), 2);
    bus.wait().await;
    assert_eq!(handled.load(Ordering::SeqCst), 3, "the queue drained");

    bus.subscribe(
        "*",
        from_fn("other", |_| async { Err(HandlerError::reject("no")) }),
    )
    .unwrap();
    bus.publish(event("D")).await.unwrap();
    bus.wait().await;
    assert_eq!(
        bus.purge_dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap(),
        1
    );
    assert_eq!(bus.metrics().dead_letters, 0);
}
