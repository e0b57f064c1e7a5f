//! Plugins written in Python with the SDK in `guest-sdk/python`, built by `componentize-py`,
//! run by the same host as Rust ones (`languages.rs` compares the examples across languages).

use std::time::Duration;

use evhost::bus::RetryPolicy;
use evhost::{Event, FailureKind, Limits, PluginOptions};
use serde_json::{Value, json};

use crate::{Host, wasm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_failures_are_classified_and_contained_like_rust_ones() {
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
    host.load(wasm::PY_FAULTS, options).await;
    let cases = [
        ("Retry", FailureKind::Retry),
        ("Reject", FailureKind::Reject),
        ("Raise", FailureKind::Trap),
        ("Loop", FailureKind::OutOfFuel),
        ("Hog", FailureKind::MemoryLimit),
    ];
    for (ty, expected) in cases {
        let event = Event::new(ty, "tests", Value::Null);
        host.publish_and_wait(vec![event.clone()]).await;
        let record = errors.recv().await.unwrap();
        assert_eq!(
            (record.event_id.as_str(), record.kind),
            (event.id.as_str(), expected),
            "{ty}: {record}"
        );
    }

    // Still serving, and the sandbox holds: no files, no environment, no sockets.
    host.publish_and_wait(vec![Event::new("Probe", "tests", Value::Null)])
        .await;
    let probe = host
        .kv_json("py-faults", "probe")
        .expect("the probe ran after every failure");
    for capability in ["file", "dir", "socket"] {
        let outcome = probe[capability].as_str().unwrap();
        assert!(outcome.starts_with("denied: "), "{capability}: {outcome}");
    }
    assert_eq!(probe["env"], json!([]), "no environment variables");
    assert!(errors.try_recv().is_err(), "the probe did not fail");
}
