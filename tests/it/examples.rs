//! The example plugins, end to end on the bus.

use std::sync::Arc;

use evhost::{Event, EventBus, FailureKind, PluginOptions};
use serde_json::{Value, json};

use crate::{Host, recorder, wasm};

fn user_event(ty: &str, user: &str, data: Value) -> Event {
    Event::new(ty, "users-service", data).with_subject(user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_projection_keeps_the_read_model() {
    let host = Host::new().await;
    host.load(wasm::USER_PROJECTION, PluginOptions::default()).await;
    let created = user_event(
        "UserCreated",
        "u1",
        json!({"id": "u1", "name": "Ada", "email": "ada@example.com"}),
    );
    let renamed = user_event("UserProfileUpdated", "u1", json!({"name": "Ada Lovelace"}));
    let contact = user_event(
        "UserContactUpdated",
        "u1",
        json!({"email": "ada@analytical.engine", "phone": "+44 1"}),
    );
    let other = user_event(
        "UserCreated",
        "u2",
        json!({"id": "u2", "name": "Alan", "email": "alan@example.com"}),
    );
    host.publish_and_wait(vec![created, renamed, contact.clone(), other])
        .await;

    let user = host
        .kv_json("user-projection", "user:u1")
        .expect("u1 is projected");
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["email"], "ada@analytical.engine");
    assert_eq!(user["phone"], "+44 1");
    assert_eq!(user["last_event_id"], contact.id.as_str());
    assert_eq!(
        host.kv_json("user-projection", "user:u2").unwrap()["name"],
        "Alan"
    );

    // The same event delivered again leaves the same state.
    host.publish_and_wait(vec![contact]).await;
    assert_eq!(host.kv_json("user-projection", "user:u1").unwrap(), user);

    host.publish_and_wait(vec![user_event("UserDeleted", "u1", Value::Null)])
        .await;
    assert_eq!(host.kv_json("user-projection", "user:u1"), None);
    assert!(host.kv_json("user-projection", "user:u2").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_projection_rejects_a_malformed_payload() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    host.load(wasm::USER_PROJECTION, PluginOptions::default()).await;
    host.publish_and_wait(vec![user_event("UserCreated", "u9", json!({"name": 5}))])
        .await;
    let record = errors.recv().await.unwrap();
    assert_eq!(record.kind, FailureKind::Reject, "{record}");
    assert_eq!(host.kv_json("user-projection", "user:u9"), None);
}

fn payment(ty: &str, data: Value) -> Event {
    Event::new(ty, "payments-service", data).with_subject("p1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeter_of_the_rust_walkthrough_stores_and_emits_what_the_book_says() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    let emitted = recorder(&host.bus, "UserGreeted");
    host.load(wasm::GREETER, PluginOptions::default()).await;
    let created = user_event("UserCreated", "u1", json!({"id": "u1", "name": "Ada"}));
    host.publish_and_wait(vec![created.clone()]).await;
    assert_eq!(
        host.kv_bytes("greeter", "greeted:u1").as_deref(),
        Some(&b"yes"[..])
    );
    let greeted = find(&emitted, "UserGreeted");
    assert_eq!(greeted.subject.as_deref(), Some("u1"));
    assert_eq!(greeted.causation_id(), Some(created.id.as_str()));

    // Data that does not decode is rejected, and nothing is stored or emitted.
    host.publish_and_wait(vec![user_event("UserCreated", "u2", json!({"id": "u2"}))])
        .await;
    let record = errors.recv().await.unwrap();
    assert_eq!(record.kind, FailureKind::Reject, "{record}");
    assert!(host.kv_bytes("greeter", "greeted:u2").is_none());
    assert_eq!(emitted.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_saga_requests_inventory_then_shipment_with_correlation() {
    let host = Host::new().await;
    let emitted = recorder(&host.bus, "*");
    host.load(wasm::PAYMENT_SAGA, PluginOptions::default()).await;
    let created = payment(
        "PaymentCreated",
        json!({
            "payment_id": "p1", "order_id": "o1", "amount": 4200, "currency": "EUR",
            "items": [{"sku": "book", "quantity": 2}]
        }),
    );
    host.publish_and_wait(vec![created.clone()]).await;
    let requested = find(&emitted, "InventoryReservationRequested");
    assert_eq!(requested.source, "payment-saga");
    assert_eq!(requested.subject.as_deref(), Some("p1"));
    assert_eq!(requested.correlation_id(), Some(created.id.as_str()));
    assert_eq!(requested.causation_id(), Some(created.id.as_str()));
    let data = requested.json_data().unwrap();
    assert_eq!(data["order_id"], "o1");
    assert_eq!(data["items"][0]["sku"], "book");

    let reserved = payment(
        "InventoryReserved",
        json!({"payment_id": "p1", "reservation_id": "r1"}),
    )
    .caused_by(&requested);
    host.publish_and_wait(vec![reserved.clone()]).await;
    let shipment = find(&emitted, "ShipmentRequested");
    assert_eq!(
        shipment.correlation_id(),
        Some(created.id.as_str()),
        "one flow, one correlation id"
    );
    assert_eq!(shipment.causation_id(), Some(reserved.id.as_str()));
    assert_eq!(shipment.json_data().unwrap()["reservation_id"], "r1");
    assert!(
        emitted.lock().unwrap().iter().all(|e| e.ty != "PaymentCancelled"),
        "no compensation on the happy path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_saga_compensates_a_failed_reservation() {
    let host = Host::new().await;
    let emitted = recorder(&host.bus, "*");
    host.load(wasm::PAYMENT_SAGA, PluginOptions::default()).await;
    let created = payment(
        "PaymentCreated",
        json!({
            "payment_id": "p1", "order_id": "o1", "amount": 990, "currency": "EUR",
            "items": [{"sku": "pen", "quantity": 1}]
        }),
    );
    host.publish_and_wait(vec![created.clone()]).await;
    let failed = payment(
        "InventoryReservationFailed",
        json!({"payment_id": "p1", "reason": "out of stock"}),
    )
    .caused_by(&find(&emitted, "InventoryReservationRequested"));
    host.publish_and_wait(vec![failed.clone()]).await;
    let cancelled = find(&emitted, "PaymentCancelled");
    assert_eq!(cancelled.causation_id(), Some(failed.id.as_str()));
    assert_eq!(cancelled.correlation_id(), Some(created.id.as_str()));
    let data = cancelled.json_data().unwrap();
    assert_eq!(
        (data["amount"].as_i64(), data["currency"].as_str()),
        (Some(990), Some("EUR"))
    );
    assert!(
        emitted
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.ty != "ShipmentRequested")
    );
}

fn find(events: &std::sync::Mutex<Vec<Arc<Event>>>, ty: &str) -> Event {
    let events = events.lock().unwrap();
    let found: Vec<_> = events.iter().filter(|e| e.ty == ty).collect();
    assert_eq!(found.len(), 1, "exactly one {ty}, got {}", found.len());
    (**found[0]).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_created_versions_upcasts_v1_and_rejects_unknown_versions() {
    let host = Host::new().await;
    let mut errors = host.bus.errors().unwrap();
    host.load(wasm::USER_CREATED_VERSIONS, PluginOptions::default())
        .await;
    let v1 = Event::new(
        "UserCreated",
        "users",
        json!({"id": "u1", "name": "Grace Brewster Hopper", "email": "grace@navy.mil"}),
    )
    .with_dataschema("https://schemas.example/user-created/v1");
    let v2 = Event::new(
        "UserCreated",
        "users",
        json!({"id": "u2", "first_name": "Alan", "last_name": "Turing", "email": "alan@example.com"}),
    )
    .with_dataschema("https://schemas.example/user-created/v2");
    let v7 = Event::new(
        "UserCreated",
        "users",
        json!({"id": "u3", "name": "X", "email": "x@y"}),
    )
    .with_dataschema("https://schemas.example/user-created/v7");
    host.publish_and_wait(vec![v1, v2, v7]).await;

    let grace = host.kv_json("user-created-versions", "user:u1").unwrap();
    assert_eq!(
        grace,
        json!({"id": "u1", "first_name": "Grace", "last_name": "Brewster Hopper", "email": "grace@navy.mil"})
    );
    let alan = host.kv_json("user-created-versions", "user:u2").unwrap();
    assert_eq!(alan["last_name"], "Turing");
    assert_eq!(host.kv_json("user-created-versions", "user:u3"), None);
    let record = errors.recv().await.unwrap();
    assert_eq!(record.kind, FailureKind::Reject);
    assert!(
        record.message.contains("v7"),
        "the reason names the version: {}",
        record.message
    );
    let _ = host.bus.stop().await;
}

/// The pinned cargo-component, installed under `target/` the first time (about five
/// minutes), so that the book's second way of building a plugin cannot rot.
const CARGO_COMPONENT_VERSION: &str = "0.21.1";

fn cargo_with_component(root: &std::path::Path) -> std::process::Command {
    let install = root.join(format!("target/cargo-component-{CARGO_COMPONENT_VERSION}"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let clean = |command: &mut std::process::Command| {
        // The outer build's settings must not reach this one.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" || key == "RUSTFLAGS" {
                command.env_remove(key.as_ref());
            }
        }
    };
    if !install.join("bin/cargo-component").exists() {
        let mut command = std::process::Command::new(&cargo);
        clean(&mut command);
        let status = command
            .args([
                "install",
                "cargo-component",
                "--locked",
                "--version",
                CARGO_COMPONENT_VERSION,
                "--root",
            ])
            .arg(&install)
            .status()
            .expect("running cargo install");
        assert!(
            status.success(),
            "installing cargo-component {CARGO_COMPONENT_VERSION} failed"
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![install.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let mut command = std::process::Command::new(cargo);
    clean(&mut command);
    command.env("PATH", std::env::join_paths(paths).unwrap());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_built_with_cargo_component_is_served() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = root.join("target/cargo-component-build");
    let output = cargo_with_component(root)
        .current_dir(root.join("plugins"))
        .args([
            "component",
            "build",
            "--release",
            "-p",
            "user-projection",
            "--target-dir",
        ])
        .arg(&target)
        .output()
        .expect("running cargo component build");
    assert!(
        output.status.success(),
        "cargo component build failed (it needs `rustup target add wasm32-wasip1`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let wasm = target.join("wasm32-wasip1/release/user_projection.wasm");

    // Dropped into a plugins folder as cargo wrote it, it serves as `user-projection`.
    let plugins = crate::support::TempDir::new("cargo-component");
    std::fs::copy(&wasm, plugins.0.join("user_projection.wasm")).unwrap();
    let host = Host::with_plugins(&plugins.0).await;
    let names: Vec<String> = host.app.folder().statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["user-projection"]);
    host.publish_and_wait(vec![user_event(
        "UserCreated",
        "u1",
        json!({"id": "u1", "name": "Ada", "email": "ada@example.com"}),
    )])
    .await;
    assert_eq!(host.kv_json("user-projection", "user:u1").unwrap()["name"], "Ada");
}
