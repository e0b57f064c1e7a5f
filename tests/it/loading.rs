//! Loading components: metadata, the world check, overrides and bad input.

use evhost::{LoadError, PluginOptions};

use crate::{Host, wasm};

#[tokio::test]
async fn a_component_of_another_world_is_rejected_naming_the_missing_export() {
    let host = Host::new().await;
    let err = host
        .try_load(wasm::WRONG_WORLD, PluginOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::MissingExport { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("evhost:plugin/event-handler@0.1.0"), "{message}");
    assert!(
        message.contains("greeter"),
        "names what it exports instead: {message}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_rejected() {
    let host = Host::new().await;
    let path = std::env::temp_dir().join(format!("evhost-garbage-{}.wasm", std::process::id()));
    std::fs::write(&path, b"\0asm but not really").unwrap();
    let err = host
        .try_load(path.to_str().unwrap(), PluginOptions::default())
        .await
        .unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(err, LoadError::Compile(_)), "{err}");
    assert!(
        err.to_string().starts_with("not a valid WebAssembly component"),
        "{err}"
    );
}

#[tokio::test]
async fn metadata_hash_and_imports_are_reported() {
    let host = Host::new().await;
    let plugin = host.load(wasm::USER_PROJECTION, PluginOptions::default()).await;
    let info = plugin.info();
    assert_eq!(info.name, "user-projection");
    assert!(!info.version.is_empty());
    assert_eq!(info.hash.len(), 16);
    let bytes = std::fs::read(wasm::USER_PROJECTION).unwrap();
    assert_eq!(info.hash, evhost::runtime::content_hash(&bytes));
    let mut subscriptions = info.subscriptions.clone();
    subscriptions.sort();
    assert_eq!(
        subscriptions,
        [
            "UserContactUpdated",
            "UserCreated",
            "UserDeleted",
            "UserProfileUpdated"
        ]
    );
    assert!(
        info.imports.iter().any(|i| i.starts_with("wasi:keyvalue/store")),
        "{:?}",
        info.imports
    );
}

#[tokio::test]
async fn subscriptions_can_be_overridden_and_bad_patterns_are_refused() {
    let host = Host::new().await;
    let options = PluginOptions {
        subscriptions: Some(vec!["Only*".into()]),
        ..Default::default()
    };
    let plugin = host.load(wasm::HEALTHY, options).await;
    assert_eq!(plugin.info().subscriptions, ["Only*"]);

    let options = PluginOptions {
        subscriptions: Some(vec!["*Bad".into()]),
        ..Default::default()
    };
    let err = host.try_load(wasm::HEALTHY, options).await.unwrap_err();
    assert!(matches!(err, LoadError::Metadata(_)), "{err}");
    assert!(err.to_string().contains("*Bad"), "{err}");
}

#[tokio::test]
async fn a_core_module_and_a_text_file_are_named_for_what_they_are() {
    let host = Host::new().await;
    for (bytes, expected) in [
        (
            &b"\0asm\x01\0\0\0"[..],
            "a core WebAssembly module, not a component",
        ),
        (&b"(component)"[..], "not a WebAssembly binary"),
    ] {
        let path = std::env::temp_dir().join(format!(
            "evhost-header-{}-{}.wasm",
            std::process::id(),
            bytes.len()
        ));
        std::fs::write(&path, bytes).unwrap();
        let err = host
            .try_load(path.to_str().unwrap(), PluginOptions::default())
            .await
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, LoadError::Compile(_)), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_in_memory_bus_a_plugins_effects_apply_too() {
    use evhost::{Event, EventBus, InMemoryEventBus};
    use futures::FutureExt as _;

    let host = Host::new().await;
    let bus = InMemoryEventBus::new();
    let kv = bus.key_value_store();
    let bytes = std::fs::read(wasm::USER_PROJECTION).unwrap();
    let plugin = host
        .runtime
        .load(bytes, PluginOptions::default(), kv.clone())
        .await
        .unwrap();
    bus.subscribe("User*", plugin).unwrap();
    let created = Event::new(
        "UserCreated",
        "tests",
        serde_json::json!({"id": "u1", "name": "Ada", "email": "ada@example.com"}),
    )
    .with_subject("u1");
    bus.publish(created).await.unwrap();
    let user = kv
        .get("user-projection", "user:u1")
        .now_or_never()
        .unwrap()
        .unwrap()
        .expect("the projection's write applied");
    let user: serde_json::Value = serde_json::from_slice(&user.value).unwrap();
    assert_eq!(user["name"], "Ada");
}
