//! Write [evhost] event handlers in Rust, as WebAssembly components.
//!
//! A plugin is a `cdylib` crate that depends on this crate alone. It implements [`Handler`]
//! for a type, exports it with [`export_handler!`], and is built with
//! `cargo build --release --target wasm32-wasip2` (or `cargo component build --release`).
//! The resulting `.wasm` file goes into the host's plugins folder.
//!
//! # A complete plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greeter"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! evhost-guest = { path = "../../guest-sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use evhost_guest::serde::Deserialize;
//! use evhost_guest::{Event, Handler, HandlerError, Metadata, OutgoingEvent, kv, log};
//!
//! // The SDK re-exports serde; point the derive at it so the plugin needs no serde dependency.
//! #[derive(Deserialize)]
//! #[serde(crate = "evhost_guest::serde")]
//! struct UserCreated {
//!     id: String,
//!     name: String,
//! }
//!
//! struct Greeter;
//!
//! impl Handler for Greeter {
//!     fn metadata() -> Metadata {
//!         Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")).subscribe("UserCreated")
//!     }
//!
//!     fn handle(event: Event) -> Result<(), HandlerError> {
//!         // A payload that does not decode is rejected: retrying cannot fix it.
//!         let user: UserCreated = event.data_json()?;
//!         log::info!("greeting {}", user.name);
//!
//!         // Key-value errors are retried (or rejected when retrying cannot help).
//!         kv::set(&format!("greeted:{}", user.id), b"yes")?;
//!
//!         // Published only if this call returns `Ok`.
//!         evhost_guest::publish(
//!             OutgoingEvent::new("UserGreeted")
//!                 .subject(&user.id)
//!                 .json(&evhost_guest::serde_json::json!({ "id": user.id }))?,
//!         )?;
//!         Ok(())
//!     }
//! }
//!
//! evhost_guest::export_handler!(Greeter);
//! ```
//!
//! # What a handler can do
//!
//! - Read the event: [`Event`] gives the CloudEvents attributes, the correlation and
//!   causation ids, and decodes JSON data into any serde type with [`Event::data_json`].
//! - Fail well: [`HandlerError::retry`] for a transient problem (the host delivers the event
//!   again later), [`HandlerError::reject`] for a permanent one (no retries; the event goes
//!   to the dead-letter queue). The SDK's error types convert into [`HandlerError`] so `?`
//!   picks the sensible kind. A panic traps the instance; its message is logged first.
//! - Emit follow-up events with [`publish`]: they are published only if `handle` succeeds.
//! - Keep state between events in the plugin's own key-value store: [`kv`].
//! - Log through the host: [`log`]. Read configuration from the plugin's manifest: [`config`].
//!
//! Every call to `handle` runs in a fresh instance: statics and caches do not survive from
//! one event to the next. Only the key-value store does.
//!
//! # Serde
//!
//! [`serde`] and [`serde_json`] are re-exported. Derives in a plugin that does not depend on
//! serde itself need `#[serde(crate = "evhost_guest::serde")]`, as in the example above.
//!
//! # Testing
//!
//! The crate also compiles for the host's native target, so a plugin's pure logic can be
//! unit-tested with `cargo test`: build inputs with [`Event::new`] and its `with_*` methods and
//! inspect an [`OutgoingEvent`]'s public fields. Functions that call into the host
//! ([`publish`], [`kv`], [`log`], [`config`]) panic outside a WebAssembly instance.
//!
//! # Layout
//!
//! - [`Handler`], [`Metadata`], [`export_handler!`]: what a plugin implements and exports.
//! - [`Event`], [`ExtensionValue`], [`DataError`]: the event being handled.
//! - [`HandlerError`]: how a handler fails.
//! - [`publish`], [`OutgoingEvent`]: emitting events.
//! - [`kv`], [`log`], [`config`]: the host's other services.
//!
//! [evhost]: https://example.invalid/evhost

mod error;
mod event;
mod handler;
mod publish;

pub mod config;
pub mod kv;
pub mod log;

// The generated glue is full of `unsafe`, but lints do not fire inside the proc macro's
// output, so the workspace's `unsafe_code = "deny"` needs no exception here.
#[doc(hidden)]
pub mod bindings;

pub use error::{EncodeError, HandlerError};
pub use event::{DataError, Event, ExtensionValue};
pub use handler::{Handler, Metadata};
pub use publish::{OutgoingEvent, PublishError, publish};

pub use serde;
pub use serde_json;
pub use wit_bindgen;

/// Implementation details of the SDK's macros. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::Adapter;
}
