//! Plugins written in JavaScript with the SDK in `guest-sdk/js`, built by
//! `componentize-js`, run by the same host as Rust ones (`languages.rs` compares the
//! examples across languages).

use std::time::Duration;

use evhost::bus::RetryPolicy;
use evhost::{Event, FailureKind, Limits, PluginOptions};
use serde_json::{Value, json};

use crate::{Host, wasm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_failures_are_classified_and_contained_like_rust_ones() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let options = PluginOptions {
        limits: Limits {
            fuel: 2_000_000_000,
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
        retry: Some(RetryPolicy::no_retries()),
        ..PluginOptions::default()
    };
    let plugin = host.load(wasm::JS_FAULTS, options).await;
    // No way out: `fetch` exists in the engine, but nothing is imported to carry it.
    let imports = &plugin.info().imports;
    assert!(
        !imports.iter().any(|i| i.starts_with("wasi:http")
            || i.starts_with("wasi:sockets")
            || i.starts_with("wasi:filesystem")),
        "{imports:?}"
    );
    let cases = [
        ("Retry", FailureKind::Retry, "not yet"),
        ("Reject", FailureKind::Reject, "never"),
        ("Raise", FailureKind::Trap, ""),
        ("Loop", FailureKind::OutOfFuel, ""),
        ("Hog", FailureKind::MemoryLimit, ""),
    ];
    for (ty, expected, message) in cases {
        let event = Event::new(ty, "tests", Value::Null);
        host.publish_and_wait(vec![event.clone()]).await;
        let record = errors.recv().await.unwrap();
        assert_eq!(
            (record.event_id.as_str(), record.kind),
            (event.id.as_str(), expected),
            "{ty}: {record}"
        );
        assert!(record.message.contains(message), "{ty}: {record}");
    }

    // Still serving; no node globals.
    host.publish_and_wait(vec![Event::new("Probe", "tests", Value::Null)])
        .await;
    let probe = host
        .kv_json("js-faults", "probe")
        .expect("the probe ran after every failure");
    assert_eq!(
        probe,
        json!({"fetch": "function", "process": "undefined", "require": "undefined", "eval": "allowed: 2"}),
    );
    assert!(errors.try_recv().is_err(), "the probe did not fail");
}
