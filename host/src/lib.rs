//! evhost: an event-handler host whose handlers are WebAssembly components.
//!
//! Applications publish CloudEvents; evhost delivers each to every subscribed handler,
//! concurrently, per-key ordered, with every failure reported to one error monitor, then
//! retried or dead-lettered. On the durable log an event is accepted once stored, and a
//! handler's effects commit exactly once with its delivery.
//! This crate is the library: native Rust handlers on an embedded bus, and the parts the
//! `evhost` binary (the crate `evhost-cli`) assembles into a host.
//!
//! # Layout
//!
//! - [`event`]: the CloudEvents 1.0 [`Event`], its JSON format and validation.
//! - [`bus`]: the [`EventBus`] trait, [`InMemoryEventBus`] and [`AsyncEventBus`].
//! - [`monitor`]: the [`ErrorMonitor`] and the [`FailureRecord`]s it carries.
//! - [`metrics`]: counters and latency histograms per subscription.
//! - [`runtime`]: Wasm plugins: the engine, limits, linking and failure classification.
//! - [`plugins`]: the watched plugins folder: manifests, hot reload.
//! - [`http`]: the HTTP API.
//! - [`config`]: `evhost.toml`, its environment variables and validation.
//! - [`app`]: [`App`], a host assembled from its config and run under one cancellation
//!   token: what `evhost run` is.
//! - [`outbox`]: the transactional outbox relay from PostgreSQL.
//! - [`store`]: the [`EventLog`](store::EventLog) the bus keeps accepted events in, and
//!   the plugins' [`KeyValueStore`](store::KeyValueStore): the storage seam, with
//!   [`store::sqlite`] (the embedded durable log), [`store::nats`] (a log shared by several
//!   hosts) and the in-memory backend.

pub mod app;
pub mod bus;
pub mod config;
pub mod event;
pub mod http;
pub mod metrics;
pub mod monitor;
pub mod outbox;
pub mod plugins;
pub mod runtime;
pub mod store;

pub use app::App;
pub use async_trait::async_trait;
pub use bus::{
    AsyncBusConfig, AsyncEventBus, Backpressure, BusError, DeliveryReport, EventBus, EventHandler,
    HandlerError, InMemoryEventBus, StopReport, SubscribeOptions, SubscriptionId,
};
pub use event::{Event, EventError};
pub use monitor::{ErrorMonitor, FailureKind, FailureRecord};
pub use runtime::{Limits, LoadError, Plugin, PluginInfo, PluginOptions, Runtime, RuntimeConfig};
