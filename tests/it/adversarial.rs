//! Misbehaving plugins are stopped with the right failure kind, within their limits, while
//! a healthy plugin on the same events keeps handling every one of them.

use std::time::{Duration, Instant};

use evhost::{BusError, Event, EventBus, FailureKind, FailureRecord, Limits, PluginOptions};
use serde_json::json;

use crate::{Host, recorder, wasm};

fn limits(f: impl FnOnce(&mut Limits)) -> PluginOptions {
    let mut options = PluginOptions::default();
    f(&mut options.limits);
    options
}

/// Only the clock limits it: fuel would otherwise stop a loop first.
fn unmetered(timeout: Duration) -> PluginOptions {
    limits(|l| {
        l.timeout = timeout;
        l.fuel = u64::MAX;
    })
}

fn poke(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new("Poke", "tests", json!({ "n": i })))
        .collect()
}

/// Publishes one event that only `plugin` handles and returns its failure and how long it took.
async fn single_failure(path: &str, options: PluginOptions) -> (FailureRecord, Duration, String) {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let plugin = host.load(path, options).await;
    let started = Instant::now();
    let err = host.bus.publish_sync(poke(1).remove(0)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, BusError::HandlersFailed(_)), "{err}");
    let record = errors.recv().await.unwrap();
    (record, elapsed, plugin.info().hash.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_adversary_is_stopped_while_a_healthy_plugin_handles_everything() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let healthy = host.load(wasm::HEALTHY, PluginOptions::default()).await;
    let adversaries = [
        (
            wasm::LOOP_FOREVER,
            unmetered(Duration::from_millis(200)),
            FailureKind::Timeout,
        ),
        (
            wasm::BURN_FUEL,
            limits(|l| l.fuel = 20_000_000),
            FailureKind::OutOfFuel,
        ),
        (
            wasm::GROW_MEMORY,
            limits(|l| l.memory_bytes = 16 << 20),
            FailureKind::MemoryLimit,
        ),
        (wasm::STACK_OVERFLOW, PluginOptions::default(), FailureKind::Trap),
        (wasm::PANICS, PluginOptions::default(), FailureKind::Trap),
        (wasm::RETURNS_RETRY, PluginOptions::default(), FailureKind::Retry),
        (
            wasm::RETURNS_REJECT,
            PluginOptions::default(),
            FailureKind::Reject,
        ),
        (wasm::EMIT_THEN_TRAP, PluginOptions::default(), FailureKind::Trap),
    ];
    let mut expected = std::collections::BTreeMap::new();
    for (path, options, kind) in adversaries {
        let plugin = host.load(path, options).await;
        expected.insert(plugin.info().name.clone(), kind);
    }
    let events = poke(6);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    host.publish_and_wait(events).await;

    let mut seen = std::collections::BTreeMap::<String, Vec<FailureKind>>::new();
    while let Ok(record) = errors.try_recv() {
        seen.entry(record.subscription).or_default().push(record.kind);
    }
    for (name, kind) in &expected {
        assert_eq!(seen.get(name), Some(&vec![*kind; 6]), "{name}: {seen:?}");
    }
    assert!(
        !seen.contains_key(&healthy.info().name),
        "the healthy plugin never failed"
    );
    for id in ids {
        assert!(
            host.kv_json("healthy", &format!("seen:{id}")).is_some(),
            "the healthy plugin handled {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_near_its_deadline() {
    let timeout = Duration::from_millis(300);
    let (record, elapsed, _) = single_failure(wasm::LOOP_FOREVER, unmetered(timeout)).await;
    assert_eq!(record.kind, FailureKind::Timeout, "{record}");
    assert!(elapsed >= timeout, "stopped early: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_millis(150),
        "stopped late: {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_exhaustion_is_named_and_deterministic() {
    let (record, _, _) = single_failure(wasm::BURN_FUEL, limits(|l| l.fuel = 10_000_000)).await;
    assert_eq!(record.kind, FailureKind::OutOfFuel);
    assert!(record.message.contains("10000000"), "{}", record.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_growth_hits_the_ceiling() {
    let (record, _, _) = single_failure(wasm::GROW_MEMORY, limits(|l| l.memory_bytes = 8 << 20)).await;
    assert_eq!(record.kind, FailureKind::MemoryLimit);
    assert!(
        record.message.contains(&(8u64 << 20).to_string()),
        "{}",
        record.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_overflow_is_a_trap() {
    let (record, _, _) = single_failure(wasm::STACK_OVERFLOW, PluginOptions::default()).await;
    assert_eq!(record.kind, FailureKind::Trap);
    assert!(record.message.contains("stack overflow"), "{}", record.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_is_captured_with_its_message() {
    let (record, _, hash) = single_failure(wasm::PANICS, PluginOptions::default()).await;
    assert_eq!(record.kind, FailureKind::Trap);
    assert!(
        record.message.contains("the plugin gave up on event"),
        "the panic message is in the record: {}",
        record.message
    );
    assert_eq!(record.handler_version.as_deref(), Some(hash.as_str()));
    assert_eq!(record.subscription, "panics");
    assert_eq!(record.event_type, "Poke");
    assert_eq!(record.attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_reject_carry_the_plugins_reason() {
    let (retry, _, _) = single_failure(wasm::RETURNS_RETRY, PluginOptions::default()).await;
    assert_eq!(retry.kind, FailureKind::Retry);
    assert_eq!(retry.message, "downstream unavailable");
    let (reject, _, _) = single_failure(wasm::RETURNS_REJECT, PluginOptions::default()).await;
    assert_eq!(reject.kind, FailureKind::Reject);
    assert_eq!(reject.message, "malformed payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invocation_emits_nothing_and_writes_nothing() {
    let host = Host::new().await;
    let emitted = recorder(&host.bus, "Emitted*");
    host.load(wasm::EMIT_THEN_TRAP, PluginOptions::default()).await;
    host.publish_and_wait(poke(3)).await;
    assert!(
        emitted.lock().unwrap().is_empty(),
        "no event of a trapped invocation appears"
    );
    assert_eq!(
        host.kv_json("emit-then-trap", "written"),
        None,
        "no write of a trapped invocation lands"
    );
    let metrics = host.bus.metrics();
    let plugin = metrics
        .subscriptions
        .iter()
        .find(|s| s.name == "emit-then-trap")
        .unwrap();
    assert_eq!(plugin.failed_total(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_and_environment_are_out_of_reach() {
    let (record, _, _) = single_failure(wasm::OPEN_FILE, PluginOptions::default()).await;
    assert_eq!(record.kind, FailureKind::Reject, "{record}");
    assert!(record.message.starts_with("denied:"), "{}", record.message);
    assert!(record.message.contains("/etc/hostname"), "{}", record.message);
    assert!(record.message.contains("no environment"), "{}", record.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_values_reach_the_plugin() {
    let mut options = PluginOptions::default();
    options
        .config
        .insert("reason".into(), "configured by the manifest".into());
    let (record, _, _) = single_failure(wasm::RETURNS_REJECT, options).await;
    assert_eq!(record.message, "configured by the manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_emitting_for_itself_stops_at_the_causation_depth_limit() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let chain = recorder(&host.bus, "Amplified");
    let mut options = PluginOptions::default();
    options.config.insert("count".into(), "1".into());
    options.limits.emit_depth = 5;
    host.load(wasm::AMPLIFIER, options).await;
    host.publish_and_wait(vec![Event::new("Attack", "tests", json!({}))])
        .await;
    let mut depths: Vec<u32> = chain
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.causation_depth())
        .collect();
    // The recorder takes each hop concurrently with the plugin, which may already have
    // emitted the next one: the order it records them in is not the chain's.
    depths.sort_unstable();
    assert_eq!(depths, [1, 2, 3, 4, 5], "one event per hop, up to the limit");
    let record = errors.recv().await.unwrap();
    assert_eq!(record.kind, FailureKind::ResourceLimit, "{record}");
    assert!(record.message.contains("`emit_depth`"), "{}", record.message);
    assert!(record.message.contains("6 hops"), "{}", record.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_keys_merges_the_invocations_writes_with_the_stored_keys_page_by_page() {
    let host = Host::new().await;
    let mut options = PluginOptions::default();
    options.config.insert("keys".into(), "1500".into());
    let mut errors = host.bus.errors().unwrap();
    host.load(wasm::KV_LISTER, options).await;
    // Keys of `a` are stored; those of `b` sort between them and are only buffered
    // while the second event lists.
    host.publish_and_wait(vec![Event::new("Attack", "tests", json!({})).with_subject("a")])
        .await;
    assert_eq!(host.kv_bytes("kv-lister", "count").as_deref(), Some(&b"1500"[..]));
    host.publish_and_wait(vec![Event::new("Attack", "tests", json!({})).with_subject("b")])
        .await;
    assert!(
        errors.try_recv().is_err(),
        "every listing was complete and in order"
    );
    assert_eq!(
        host.kv_bytes("kv-lister", "count").as_deref(),
        Some(&b"3001"[..]),
        "1,500 stored keys, `count` and 1,500 buffered keys"
    );
}
