//! The one place `wit_bindgen::generate!` runs: guest bindings for the `evhost:plugin/handler`
//! world, read from `guest-sdk/wit` (a link to the workspace's `wit/`).
//!
//! The module is public only because [`export_handler!`](crate::export_handler) expands in the
//! plugin's crate and has to reach the generated export glue from there; plugin authors use
//! the SDK's own types instead.

wit_bindgen::generate!({
    path: "wit",
    world: "evhost:plugin/handler",
    // The vendored WASI interfaces have no other bindings to point at.
    generate_all,
    // `export_handler!` is the public entry point; this macro is its implementation detail.
    export_macro_name: "__export_handler_world",
    pub_export_macro: true,
    default_bindings_module: "evhost_guest::bindings",
});
