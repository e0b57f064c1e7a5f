//! Plugins written in JavaScript with the SDK in `guest-sdk/js`, built by
//! `componentize-js`, run by the same host as Rust ones (`languages.rs` compares the
//! examples across languages).

use std::time::Duration;

use evhost::{Event, FailureKind};
use serde_json::{Value, json};

use crate::languages::assert_failures_classified_and_contained;
use crate::{Host, one_attempt, wasm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_failures_are_classified_and_contained_like_rust_ones() {
    let (plugin, probe) = assert_failures_classified_and_contained(wasm::JS_FAULTS, "js-faults").await;
    // No way out: `fetch` exists in the engine, but nothing is imported to carry it. (The
    // stdio the build keeps imports `wasi:filesystem` too; the host preopens nothing.)
    let imports = &plugin.info().imports;
    assert!(
        !imports
            .iter()
            .any(|i| i.starts_with("wasi:http") || i.starts_with("wasi:sockets")),
        "{imports:?}"
    );
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:cli/stdout")),
        "console output is kept: {imports:?}"
    );
    assert_eq!(
        probe,
        json!({"fetch": "function", "process": "undefined", "require": "denied: Error", "eval": "allowed: 2"}),
        "no node globals"
    );
}

/// An `async` handler's promise decides the event: a `Retry`, a `Reject` or any other
/// error after an `await` fails it as the same throw before the `await` does, and what it
/// wrote after the `await` is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_javascript_handler_fails_or_succeeds_by_its_promise() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    host.load(wasm::JS_FAULTS, one_attempt()).await;
    let cases = [
        ("LaterRetry", FailureKind::Retry, "not yet, after an await"),
        ("LaterReject", FailureKind::Reject, "never, after an await"),
        ("LaterRaise", FailureKind::Trap, ""),
    ];
    for (ty, expected, message) in cases {
        let event = Event::new(ty, "tests", Value::Null);
        host.publish_and_wait(vec![event.clone()]).await;
        // The event is handled: a failure reaches the monitor at once, or never.
        let record = tokio::time::timeout(Duration::from_secs(10), errors.recv())
            .await
            .unwrap_or_else(|_| panic!("{ty} after an await was acknowledged as a success"))
            .unwrap();
        assert_eq!(
            (record.event_id.as_str(), record.kind),
            (event.id.as_str(), expected),
            "{ty}: {record}"
        );
        assert!(record.message.contains(message), "{ty}: {record}");
    }
    host.publish_and_wait(vec![Event::new("LaterWrite", "tests", Value::Null)])
        .await;
    assert_eq!(
        host.kv_bytes("js-faults", "later").as_deref(),
        Some(&b"written after an await"[..])
    );
    assert!(
        errors.try_recv().is_err(),
        "the write after an await did not fail"
    );
}
