//! Opt-in instance reuse: an instance serves up to `reuse` events one at a time, is dropped
//! after any failure, and every event gets the full fuel and deadline.

use std::num::NonZeroU32;
use std::time::Duration;

use evhost::{Event, EventBus, FailureKind, PluginOptions};
use serde_json::json;

use crate::{Host, one_attempt, wasm};

const PLUGIN: &str = "warm-counter";

/// One attempt per event; instances serve up to `reuse` events (`None`: fresh ones).
fn options(reuse: Option<u32>) -> PluginOptions {
    PluginOptions {
        reuse: reuse.and_then(NonZeroU32::new),
        ..one_attempt()
    }
}

/// Events of `types` on one key, so they are handled one after the other.
fn sequence(types: &[&str], data: serde_json::Value) -> Vec<Event> {
    types
        .iter()
        .map(|ty| Event::new(*ty, "tests", data.clone()).with_subject("one-key"))
        .collect()
}

/// For each event, how many events its instance had served when it handled it (`None`
/// when it failed: a failed invocation's writes are not applied).
fn served(host: &Host, events: &[Event]) -> Vec<Option<u64>> {
    events
        .iter()
        .map(|event| {
            host.kv_bytes(PLUGIN, &format!("served:{}", event.id))
                .map(|bytes| String::from_utf8(bytes).unwrap().parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reuse_every_event_gets_a_fresh_instance() {
    let host = Host::new().await;
    let plugin = host.load(wasm::WARM_COUNTER, options(None)).await;
    assert_eq!(plugin.reuse(), 1);
    let events = sequence(&["Tick"; 5], json!(null));
    host.publish_and_wait(events.clone()).await;
    assert_eq!(served(&host, &events), vec![Some(1); 5]);
    assert_eq!(plugin.warm_instances(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_up_to_reuse_events_then_a_fresh_one_follows() {
    let host = Host::new().await;
    let plugin = host.load(wasm::WARM_COUNTER, options(Some(3))).await;
    assert_eq!(plugin.reuse(), 3);
    let events = sequence(&["Tick"; 7], json!(null));
    host.publish_and_wait(events.clone()).await;
    let counts = [1, 2, 3, 1, 2, 3, 1].map(Some);
    assert_eq!(served(&host, &events), counts);
    assert_eq!(
        plugin.warm_instances(),
        1,
        "the instance that served one event is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_drops_the_instance() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let plugin = host.load(wasm::WARM_COUNTER, options(Some(100))).await;
    let events = sequence(
        &["Tick", "Tick", "Reject", "Tick", "Panic", "Tick", "Tick"],
        json!(null),
    );
    host.publish_and_wait(events.clone()).await;
    // The rejecting instance had served 3 and the panicking one 2; each was dropped, so the
    // event after each failure starts again at 1.
    let counts = [Some(1), Some(2), None, Some(1), None, Some(1), Some(2)];
    assert_eq!(served(&host, &events), counts);
    let mut failures = Vec::new();
    for _ in 0..2 {
        let record = tokio::time::timeout(Duration::from_secs(10), errors.recv())
            .await
            .expect("both failures reach the monitor")
            .unwrap();
        failures.push((record.event_id, record.kind));
    }
    assert_eq!(
        failures,
        [
            (events[2].id.clone(), FailureKind::Reject),
            (events[4].id.clone(), FailureKind::Trap),
        ]
    );
    assert_eq!(plugin.warm_instances(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_is_counted_afresh_for_each_event() {
    let host = Host::new().await;
    // What one `Burn` costs in a fresh instance.
    let probe = host.try_load(wasm::WARM_COUNTER, options(None)).await.unwrap();
    let subscription = probe.subscribe(&host.bus).unwrap();
    host.publish_and_wait(sequence(&["Burn"], json!(2_000))).await;
    let cost = probe.fuel_consumed();
    assert!(cost > 1_000_000, "a burn costs fuel ({cost})");
    host.bus.unsubscribe(subscription).unwrap();

    // A budget for one and a half of them: three in a row on one instance all succeed.
    let mut reusing = options(Some(10));
    reusing.limits.fuel = cost * 3 / 2;
    let plugin = host.load(wasm::WARM_COUNTER, reusing).await;
    let events = sequence(&["Burn"; 3], json!(2_000));
    host.publish_and_wait(events.clone()).await;
    assert_eq!(served(&host, &events), [1, 2, 3].map(Some));
    assert!(plugin.fuel_consumed() > cost * 2, "three burns were paid for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_is_counted_afresh_for_each_event() {
    let host = Host::new().await;
    let mut reusing = options(Some(10));
    reusing.limits.timeout = Duration::from_millis(1_500);
    host.load(wasm::WARM_COUNTER, reusing).await;
    // 3 × 600 ms on one instance: past one timeout together, well within it each.
    let events = sequence(&["Work"; 3], json!(600));
    host.publish_and_wait(events.clone()).await;
    assert_eq!(served(&host, &events), [1, 2, 3].map(Some));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_in_the_plugins_manifest_takes_effect() {
    let dir = crate::support::TempDir::new("reuse-folder");
    std::fs::copy(wasm::WARM_COUNTER, dir.0.join("warm-counter.wasm")).unwrap();
    std::fs::write(dir.0.join("warm-counter.toml"), "reuse = 2\n").unwrap();
    let host = Host::with_plugins(&dir.0).await;
    let status = host.app.folder().status(PLUGIN).expect("loaded from the folder");
    assert_eq!(status.reuse, 2);
    let events = sequence(&["Tick"; 5], json!(null));
    host.publish_and_wait(events.clone()).await;
    assert_eq!(served(&host, &events), [1, 2, 1, 2, 1].map(Some));
}

#[tokio::test]
async fn a_kept_instance_left_unused_for_a_minute_is_dropped() {
    let host = Host::new().await;
    let plugin = host.load(wasm::WARM_COUNTER, options(Some(10))).await;
    host.publish_and_wait(sequence(&["Tick"], json!(null))).await;
    assert_eq!(plugin.warm_instances(), 1);
    // Tokio's clock, paused, runs ahead to each timer while nothing else is to be done.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(plugin.warm_instances(), 1, "kept while unused for under a minute");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        plugin.warm_instances(),
        0,
        "dropped once unused for over a minute"
    );
    tokio::time::resume();
    // The next event starts a fresh instance.
    let events = sequence(&["Tick"], json!(null));
    host.publish_and_wait(events.clone()).await;
    assert_eq!(served(&host, &events), [Some(1)]);
}
