//! What the benchmarks share: a no-op handler, building test plugins, fresh stores, medians.

#![allow(dead_code, reason = "each benchmark uses a different part")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use evhost::bus::Effects;
use evhost::store::sqlite::{SqliteStore, StoreOptions};
use evhost::{Event, EventHandler, HandlerError};

/// A native handler that does nothing.
pub struct Noop;

#[evhost::async_trait]
impl EventHandler for Noop {
    fn name(&self) -> &str {
        "noop"
    }

    async fn handle(&self, _event: Arc<Event>) -> Result<Effects, HandlerError> {
        Ok(Effects::none())
    }
}

/// Builds test plugins (`tests/plugins/NAME`) for wasm32-wasip2 and returns the folder
/// holding their `.wasm` files.
pub fn build_test_plugins(names: &[&str]) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target_dir = root.join("target").join("wasm-plugins");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .current_dir(root.join("tests").join("plugins"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for name in names {
        command.args(["-p", name]);
    }
    let status = command.status().expect("running cargo");
    assert!(status.success(), "building the test plugins {names:?} failed");
    target_dir.join("wasm32-wasip2").join("release")
}

/// The median of some samples.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A fresh durable store in a temporary directory, removed on drop.
pub struct Fresh {
    pub store: Arc<SqliteStore>,
    dir: PathBuf,
}

impl Fresh {
    /// `label` names the benchmark in the directory's name.
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("evhost-{label}-{}", uuid::Uuid::new_v4()));
        let store = SqliteStore::open(&dir, StoreOptions::default()).expect("opening the store");
        Self { store, dir }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
