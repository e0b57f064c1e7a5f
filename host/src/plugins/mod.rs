//! The plugins folder: manifests, loading, hot reload.
//!
//! A [`PluginFolder`] loads every `NAME.wasm` in a folder, each with the settings of its
//! optional `NAME.toml` [`Manifest`] laid over the host-wide defaults, and subscribes it
//! to the bus. [`PluginFolder::watch`] keeps it in step with the folder: a new file is
//! loaded, a changed one compiled off the hot path and swapped in atomically (invocations
//! under way finish on the old version), a removed one unsubscribed, and a broken one
//! reported while the previous version keeps serving. With
//! [`RuntimeConfig::cache_dir`](crate::RuntimeConfig::cache_dir) set, compiled code is
//! cached on disk, so a restart does not compile again.

mod folder;
mod history;
pub(crate) mod manifest;
mod slot;

pub use folder::{PluginFolder, PluginFolderOptions, PluginStatus, WatchGuard};
pub use history::{PluginChange, PluginEvent, PluginHistory};
pub use manifest::{LimitSettings, Manifest, ManifestError, RetryPolicy, RetrySettings};
