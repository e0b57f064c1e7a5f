//! Plugins written in JavaScript with the SDK in `guest-sdk/js`, built by
//! `componentize-js`, run by the same host as Rust ones (`languages.rs` compares the
//! examples across languages).

use serde_json::json;

use crate::languages::assert_failures_classified_and_contained;
use crate::wasm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_failures_are_classified_and_contained_like_rust_ones() {
    let (plugin, probe) = assert_failures_classified_and_contained(wasm::JS_FAULTS, "js-faults").await;
    // No way out: `fetch` exists in the engine, but nothing is imported to carry it.
    let imports = &plugin.info().imports;
    assert!(
        !imports.iter().any(|i| i.starts_with("wasi:http")
            || i.starts_with("wasi:sockets")
            || i.starts_with("wasi:filesystem")),
        "{imports:?}"
    );
    assert_eq!(
        probe,
        json!({"fetch": "function", "process": "undefined", "require": "undefined", "eval": "allowed: 2"}),
        "no node globals"
    );
}
