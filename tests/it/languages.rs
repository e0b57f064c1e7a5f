//! The example plugins written in Rust, Python and JavaScript, run over the same events:
//! the same stored bytes, the same emitted events, the same failures; and what the
//! Python and JavaScript failure tests share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use evhost::{Event, FailureKind, Limits, Plugin, PluginOptions};
use serde_json::{Value, json};

use crate::{Host, one_attempt, recorder, wasm};

fn user_event(ty: &str, subject: Option<&str>, data: Value) -> Event {
    let event = Event::new(ty, "users-service", data);
    match subject {
        Some(subject) => event.with_subject(subject),
        None => event,
    }
}

/// Runs `events` through `plugin` on a host of its own, each in a fresh instance or, with
/// `reuse`, in instances serving up to that many: the stored value of each key (raw bytes)
/// and each failed event's id with the kind of its failure.
async fn project(
    plugin: &str,
    events: &[Event],
    keys: &[&str],
    reuse: Option<u32>,
) -> (BTreeMap<String, Option<String>>, Vec<(String, FailureKind)>) {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let options = PluginOptions {
        reuse: reuse.and_then(std::num::NonZeroU32::new),
        ..one_attempt()
    };
    host.load(plugin, options).await;
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

fn payment(ty: &str, subject: &str, data: Value) -> Event {
    Event::new(ty, "payments-service", data).with_subject(subject)
}

/// An emitted event, with what ties it to the input events as indexes into them.
type Emitted = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<usize>,
    Option<usize>,
);

/// What the saga `plugin` did with `events` on a host of its own: each state key's stored
/// bytes, the events it emitted (sorted) and each failed event's index with its kind.
async fn run_saga(
    plugin: &str,
    events: &[Event],
    keys: &[&str],
) -> (Vec<Option<Vec<u8>>>, Vec<Emitted>, Vec<(usize, FailureKind)>) {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let seen = recorder(&host.bus, "*");
    host.load(plugin, one_attempt()).await;
    host.publish_and_wait(events.to_vec()).await;
    let index = |id: Option<&str>| id.and_then(|id| events.iter().position(|e| e.id == id));
    let states = keys
        .iter()
        .map(|key| host.kv_bytes("payment-saga", key))
        .collect();
    let mut emitted: Vec<Emitted> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|event| event.source == "payment-saga")
        .map(|event| {
            (
                event.ty.clone(),
                event.subject.clone(),
                event.datacontenttype.clone(),
                format!("{:?}", event.data),
                index(event.correlation_id()),
                index(event.causation_id()),
            )
        })
        .collect();
    emitted.sort();
    let mut failures = Vec::new();
    while let Ok(record) = errors.try_recv() {
        failures.push((index(Some(&record.event_id)).unwrap(), record.kind));
    }
    failures.sort_by_key(|(index, _)| *index);
    (states, emitted, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_projection_keeps_the_same_read_model_in_rust_python_and_javascript() {
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

    let (rust, rust_failures) = project(wasm::USER_PROJECTION, &events, &keys, None).await;

    let present: Vec<&String> = rust.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k).collect();
    assert_eq!(
        present,
        ["user:u1", "user:u2", "user:u3", "user:u8"],
        "the Rust read model: {rust:#?}"
    );
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
    // The projection keeps nothing in memory, so reusing instances (dropped after each
    // failure) must not change what it stores or how it fails.
    for (language, plugin, reuse) in [
        ("Python", wasm::PY_USER_PROJECTION, None),
        ("JavaScript", wasm::JS_USER_PROJECTION, None),
        ("Rust with reuse", wasm::USER_PROJECTION, Some(1_000)),
        ("Python with reuse", wasm::PY_USER_PROJECTION, Some(1_000)),
        ("JavaScript with reuse", wasm::JS_USER_PROJECTION, Some(1_000)),
    ] {
        let (read_model, failures) = project(plugin, &events, &keys, reuse).await;
        for key in keys {
            assert_eq!(
                read_model[key], rust[key],
                "{key}: the same bytes from {language} and Rust"
            );
        }
        assert_eq!(
            kinds(&failures),
            expected,
            "{language} fails the same events the same way"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_saga_stores_and_emits_the_same_in_rust_python_and_javascript() {
    let items =
        json!([{"sku": "bücher \"x\"", "quantity": 2, "colour": "red"}, {"sku": "pen", "quantity": 1}]);
    let created = |subject: &str| json!({"payment_id": subject, "order_id": format!("o-{subject}"), "amount": 4200, "currency": "€", "items": items});
    let events = vec![
        // The happy path, a late duplicate, then contradictory news.
        payment("PaymentCreated", "p1", created("p1")),
        payment(
            "InventoryReserved",
            "p1",
            json!({"reservation_id": "r1", "extra": true}),
        ),
        payment("InventoryReserved", "p1", json!({})),
        payment("InventoryReservationFailed", "p1", json!({"reason": "late"})),
        // The compensation, then a reservation after it.
        payment("PaymentCreated", "p2", created("p2")),
        payment(
            "InventoryReservationFailed",
            "p2",
            json!({"reason": "out of stock\n"}),
        ),
        payment("InventoryReservationFailed", "p2", json!({})),
        payment("InventoryReserved", "p2", json!({"reservation_id": null})),
        // Joining late, with and without an order id.
        payment("InventoryReserved", "p3", json!({"order_id": "o-3"})),
        payment("InventoryReservationFailed", "p4", json!({})),
        // Bad payloads: conflicting ids, a negative quantity, a missing field, not JSON.
        payment(
            "PaymentCreated",
            "p5",
            json!({"payment_id": "x", "order_id": "o", "amount": 1, "currency": "EUR", "items": []}),
        ),
        payment(
            "PaymentCreated",
            "p6",
            json!({"order_id": "o", "amount": 1, "currency": "EUR", "items": [{"sku": "a", "quantity": -1}]}),
        ),
        payment(
            "PaymentCreated",
            "p7",
            json!({"order_id": "o", "amount": 1, "items": []}),
        ),
        payment("PaymentCreated", "p8", json!("a string")),
        // A duplicate creation with a new id is ignored.
        payment("PaymentCreated", "p9", created("p9")),
        payment(
            "PaymentCreated",
            "p9",
            json!({"order_id": "other", "amount": 1, "currency": "USD", "items": []}),
        ),
    ];
    let keys: Vec<String> = (1..=9).map(|n| format!("saga:p{n}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();

    let (rust_states, rust_emitted, rust_failures) = run_saga(wasm::PAYMENT_SAGA, &events, &keys).await;

    let stored: Vec<&str> = keys
        .iter()
        .zip(&rust_states)
        .filter(|(_, s)| s.is_some())
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        stored,
        ["saga:p1", "saga:p2", "saga:p3", "saga:p9"],
        "the Rust saga's state"
    );
    assert_eq!(rust_emitted.len(), 6, "{rust_emitted:#?}");
    assert_eq!(
        rust_failures,
        [3, 7, 9, 10, 11, 12, 13].map(|i| (i, FailureKind::Reject)),
        "the Rust saga's failures"
    );
    for (language, plugin) in [
        ("Python", wasm::PY_PAYMENT_SAGA),
        ("JavaScript", wasm::JS_PAYMENT_SAGA),
    ] {
        let (states, emitted, failures) = run_saga(plugin, &events, &keys).await;
        for ((key, rust), other) in keys.iter().zip(&rust_states).zip(&states) {
            assert_eq!(
                other.as_deref().map(String::from_utf8_lossy),
                rust.as_deref().map(String::from_utf8_lossy),
                "{key}: the same bytes from {language} and Rust"
            );
        }
        assert_eq!(emitted, rust_emitted, "{language} emits the same events");
        assert_eq!(failures, rust_failures, "{language} fails the same events");
    }
}

/// Loads the `faults` test plugin at `path` (one attempt, tight budgets), has it fail each
/// way (retry, reject, an uncaught exception, an endless loop, unbounded allocation) and
/// checks each failure's kind as a Rust plugin's would be; then has it run its `Probe`,
/// which only a plugin still serving can, and returns what that stored under `probe`.
pub(crate) async fn assert_failures_classified_and_contained(path: &str, name: &str) -> (Arc<Plugin>, Value) {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let options = PluginOptions {
        limits: Limits {
            fuel: 2_000_000_000,
            // Far above what 2e9 fuel takes, so an endless loop runs out of fuel, not time.
            timeout: Duration::from_secs(60),
            memory_bytes: 64 << 20,
            ..Limits::default()
        },
        ..one_attempt()
    };
    let plugin = host.load(path, options).await;
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
    host.publish_and_wait(vec![Event::new("Probe", "tests", Value::Null)])
        .await;
    let probe = host
        .kv_json(name, "probe")
        .expect("the probe ran after every failure");
    assert!(errors.try_recv().is_err(), "the probe did not fail");
    (plugin, probe)
}

/// The cases of the `sdk-faults` plugins, each an event type they know.
const SDK_CASES: [&str; 6] = [
    "PublishInvalid",
    "CorruptJson",
    "EncodeFailure",
    "TextJson",
    "PublishNoData",
    "ConfigMissing",
];

/// Runs every case of [`SDK_CASES`] through one language's `sdk-faults`, each on its own:
/// per case, the outcome (`ok` or the failure's kind), what it stored and what it emitted.
async fn sdk_outcomes(plugin: &str) -> BTreeMap<&'static str, Value> {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let emitted = recorder(&host.bus, "Empty");
    host.load(plugin, one_attempt()).await;
    let mut outcomes = BTreeMap::new();
    for case in SDK_CASES {
        let mut event = Event::new(case, "tests", json!({"a": 1}));
        if case == "TextJson" {
            event.datacontenttype = Some("text/json".to_owned());
        }
        host.publish_and_wait(vec![event]).await;
        let outcome = match errors.try_recv() {
            Ok(record) => record.kind.as_str().to_owned(),
            Err(_) => "ok".to_owned(),
        };
        let stored: BTreeMap<&str, Value> = ["corrupt", "unencodable", "text-json", "config-missing"]
            .into_iter()
            .filter_map(|key| {
                let bytes = host.kv_bytes("sdk-faults", key)?;
                Some((key, json!(String::from_utf8_lossy(&bytes))))
            })
            .collect();
        let events: Vec<Value> = std::mem::take(&mut *emitted.lock().unwrap())
            .iter()
            .map(|event| json!({"type": event.ty, "datacontenttype": event.datacontenttype, "data": event.data.is_some()}))
            .collect();
        outcomes.insert(
            case,
            json!({"outcome": outcome, "stored": stored, "emitted": events}),
        );
    }
    outcomes
}

/// One failure taxonomy, Rust's: the same case fails the same way — or succeeds with the
/// same effects — whichever SDK the plugin is written with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_sdks_fail_or_succeed_alike_case_by_case() {
    let rust = sdk_outcomes(wasm::SDK_FAULTS).await;
    let expected = |case: &str| rust[case]["outcome"].as_str().unwrap().to_owned();
    // The reference: what Rust's `?` makes of each.
    assert_eq!(expected("PublishInvalid"), "reject", "{rust:#?}");
    assert_eq!(expected("CorruptJson"), "reject", "{rust:#?}");
    assert_eq!(expected("EncodeFailure"), "reject", "{rust:#?}");
    assert_eq!(rust["TextJson"]["stored"]["text-json"], r#"{"a":1}"#, "{rust:#?}");
    assert_eq!(
        rust["PublishNoData"]["emitted"],
        json!([{"type": "Empty", "datacontenttype": null, "data": false}])
    );
    assert_eq!(rust["ConfigMissing"]["stored"]["config-missing"], "none");
    // A failed case keeps nothing, not even a write made before it failed.
    assert_eq!(rust["CorruptJson"]["stored"], json!({}), "{rust:#?}");

    for (language, plugin) in [
        ("Python", wasm::PY_SDK_FAULTS),
        ("JavaScript", wasm::JS_SDK_FAULTS),
    ] {
        let outcomes = sdk_outcomes(plugin).await;
        for case in SDK_CASES {
            assert_eq!(outcomes[case], rust[case], "{case} in {language} as in Rust");
        }
    }
}

/// A value `kv.set` cannot take is a mistake in the plugin, not data: it traps, and stores
/// nothing (Python's `bytes(5)` would have stored five NUL bytes, and JavaScript's store
/// error was retried as if the host had failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_kv_set_cannot_take_traps_in_python_and_javascript() {
    for plugin in [wasm::PY_SDK_FAULTS, wasm::JS_SDK_FAULTS] {
        let host = Host::new().await;
        let mut errors = host.bus.errors().unwrap();
        host.load(plugin, one_attempt()).await;
        host.publish_and_wait(vec![Event::new("KvSetBadValue", "tests", Value::Null)])
            .await;
        let record = errors.try_recv().expect("the bad value failed the event");
        assert_eq!(record.kind, FailureKind::Trap, "{plugin}: {record}");
        assert!(host.kv_bytes("sdk-faults", "bad").is_none());
    }
}
