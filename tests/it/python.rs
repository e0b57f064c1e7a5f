//! Plugins written in Python with the SDK in `guest-sdk/python`, built by `componentize-py`,
//! run by the same host as Rust ones.

use std::collections::BTreeMap;
use std::time::Duration;

use evhost::bus::RetryPolicy;
use evhost::{Event, FailureKind, Limits, PluginOptions};
use serde_json::{Value, json};

use crate::{Host, wasm};

fn user_event(ty: &str, subject: Option<&str>, data: Value) -> Event {
    let event = Event::new(ty, "users-service", data);
    match subject {
        Some(subject) => event.with_subject(subject),
        None => event,
    }
}

/// One attempt per event, so a `retry` is recorded once and dead-lettered at once.
fn one_attempt() -> PluginOptions {
    PluginOptions {
        retry: Some(RetryPolicy::no_retries()),
        ..PluginOptions::default()
    }
}

/// Runs `events` through `plugin` on a host of its own: the stored value of each key
/// (raw bytes) and each failed event's id with the kind of its failure.
async fn project(
    plugin: &str,
    events: &[Event],
    keys: &[&str],
) -> (BTreeMap<String, Option<String>>, Vec<(String, FailureKind)>) {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    host.load(plugin, one_attempt()).await;
    host.publish_and_wait(events.to_vec()).await;
    let stored = keys
        .iter()
        .map(|key| {
            let value = host.kv_bytes("user-projection", key);
            (
                key.to_string(),
                value.map(|bytes| String::from_utf8(bytes).unwrap()),
            )
        })
        .collect();
    let mut failures = Vec::new();
    while let Ok(record) = errors.try_recv() {
        failures.push((record.event_id, record.kind));
    }
    failures.sort_by(|a, b| a.0.cmp(&b.0));
    (stored, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_user_projection_keeps_the_same_read_model_as_the_rust_one() {
    let address = json!({"street": "1 Main St", "city": "Zürich", "floor": 3});
    let events = vec![
        // Created, updated, an address with an unknown field, escapes and non-ASCII text.
        user_event(
            "UserCreated",
            Some("u1"),
            json!({"id": "u1", "name": "Ada", "email": "ada@example.com", "address": address}),
        ),
        user_event(
            "UserProfileUpdated",
            Some("u1"),
            json!({"name": "Ada \"L\"\n\t\u{1} ☃"}),
        ),
        user_event("UserContactUpdated", Some("u1"), json!({"phone": "+41 1"})),
        user_event("UserProfileUpdated", Some("u1"), json!({"address": null})),
        // Deleted, then created again.
        user_event(
            "UserCreated",
            Some("u2"),
            json!({"id": "u2", "name": "Alan", "email": "alan@example.com", "phone": "1"}),
        ),
        user_event("UserDeleted", Some("u2"), Value::Null),
        user_event(
            "UserCreated",
            Some("u2"),
            json!({"name": "Alan T", "email": "alan@bletchley.uk"}),
        ),
        // Clearing a value; updates that change nothing are rejected.
        user_event(
            "UserCreated",
            Some("u3"),
            json!({"name": "Grace", "email": "grace@navy.mil", "phone": "2"}),
        ),
        user_event(
            "UserContactUpdated",
            Some("u3"),
            json!({"email": "grace@cobol.org", "phone": null}),
        ),
        user_event("UserProfileUpdated", Some("u3"), json!({"name": null})),
        user_event("UserContactUpdated", Some("u3"), json!({"fax": "3"})),
        // An update before the creation: retry.
        user_event("UserProfileUpdated", Some("u4"), json!({"name": "Nobody"})),
        // Conflicting ids, a wrong type, no id at all: reject.
        user_event(
            "UserCreated",
            Some("u5"),
            json!({"id": "other", "name": "X", "email": "x@y"}),
        ),
        user_event("UserCreated", Some("u6"), json!({"name": 5, "email": "x@y"})),
        user_event("UserCreated", None, json!({"name": "Anon", "email": "a@b"})),
        // Deleted through `data.id`.
        user_event(
            "UserCreated",
            Some("u7"),
            json!({"name": "李小龙 🐉", "email": "bruce@example.com"}),
        ),
        user_event("UserDeleted", Some("u7"), json!({"id": "u7"})),
        // The id only in the data (no subject, so no order with other events).
        user_event(
            "UserCreated",
            None,
            json!({"id": "u8", "name": "Barbara", "email": "b@l.com"}),
        ),
    ];
    let keys = [
        "user:u1", "user:u2", "user:u3", "user:u4", "user:u5", "user:u6", "user:u7", "user:u8",
    ];

    let (rust, rust_failures) = project(wasm::USER_PROJECTION, &events, &keys).await;
    let (python, python_failures) = project(wasm::PY_USER_PROJECTION, &events, &keys).await;

    let present: Vec<&String> = rust.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k).collect();
    assert_eq!(
        present,
        ["user:u1", "user:u2", "user:u3", "user:u8"],
        "the Rust read model: {rust:#?}"
    );
    for key in keys {
        assert_eq!(
            python[key], rust[key],
            "{key}: the same bytes from Python and Rust"
        );
    }
    let kinds = |failures: &[(String, FailureKind)]| -> Vec<(usize, FailureKind)> {
        failures
            .iter()
            .map(|(id, kind)| (events.iter().position(|e| &e.id == id).unwrap(), *kind))
            .collect()
    };
    let mut expected = vec![
        (9, FailureKind::Reject),
        (10, FailureKind::Reject),
        (11, FailureKind::Retry),
        (12, FailureKind::Reject),
        (13, FailureKind::Reject),
        (14, FailureKind::Reject),
    ];
    expected.sort_by(|a, b| events[a.0].id.cmp(&events[b.0].id));
    assert_eq!(kinds(&rust_failures), expected, "the Rust plugin's failures");
    assert_eq!(
        kinds(&python_failures),
        expected,
        "the Python plugin fails the same events the same way"
    );
}

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
        ..one_attempt()
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
