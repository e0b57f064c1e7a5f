//! Plugins written in Python with the SDK in `guest-sdk/python`, built by `componentize-py`,
//! run by the same host as Rust ones (`languages.rs` compares the examples across languages).

use serde_json::json;

use crate::languages::assert_failures_classified_and_contained;
use crate::wasm;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_failures_are_classified_and_contained_like_rust_ones() {
    let (_, probe) = assert_failures_classified_and_contained(wasm::PY_FAULTS, "py-faults").await;
    // The sandbox holds: no files, no environment, no sockets.
    for capability in ["file", "dir", "socket"] {
        let outcome = probe[capability].as_str().unwrap();
        assert!(outcome.starts_with("denied: "), "{capability}: {outcome}");
    }
    assert_eq!(probe["env"], json!([]), "no environment variables");
}
