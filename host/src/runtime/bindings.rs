//! The one place `bindgen!` runs: host bindings for the `evhost:plugin/handler` world.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "evhost:plugin/handler",
        // Reads of the key-value store may wait on the disk: async, so the deadline holds
        // inside them and no executor thread waits.
        imports: {
            "wasi:keyvalue/store.[method]bucket.get": async | trappable,
            "wasi:keyvalue/store.[method]bucket.exists": async | trappable,
            "wasi:keyvalue/store.[method]bucket.list-keys": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "wasi:keyvalue/store.bucket": crate::runtime::host::Bucket,
        },
    });
}

pub(crate) use generated::evhost::plugin::{publisher, types};
pub(crate) use generated::wasi::config::store as config;
pub(crate) use generated::wasi::keyvalue::store as keyvalue;
pub(crate) use generated::wasi::logging::logging;
pub(crate) use generated::{Handler, HandlerPre};

/// The export every plugin must have, as the component model names it.
pub(crate) const HANDLER_EXPORT: &str = "evhost:plugin/event-handler@0.1.0";
