//! The handler the bus holds for a plugin: a slot whose current version is swapped
//! atomically on reload.
//!
//! Each invocation clones the current version's `Arc` and runs on it, so a swap never
//! waits for, interrupts or re-runs an invocation: those that started on the old version
//! finish on it, every later one starts on the new one. The bus keeps one subscription —
//! one queue — per slot, so events waiting in it are neither dropped nor delivered twice
//! by a swap, and per-key ordering holds across it.
//!
//! # Which version failed
//!
//! The bus reports a failure with the version the error names, else with
//! `handler.version()` — read after the call, when a reload may already have swapped in
//! another version. So the slot names the version that ran on every error it returns (Wasm
//! plugins name their own hash already). A failure the handler cannot return — the bus's
//! own timeout dropping the call, or a panic — is reported with the slot's version at that
//! moment; for Wasm plugins those are last resorts, as a plugin enforces its own deadline
//! first.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::bus::{Effects, EventHandler, HandlerError};
use crate::event::Event;

/// A hot-swappable handler; see the module documentation.
pub(crate) struct Slot {
    name: String,
    current: ArcSwap<Current>,
    versions: Versions,
}

struct Current {
    handler: Arc<dyn EventHandler>,
    /// Index of the handler's version string in [`Slot::versions`].
    version: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.name)
            .field("version", &self.versions.get(self.current().version))
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// A slot named `name` serving `handler`.
    pub(crate) fn new(name: &str, handler: Arc<dyn EventHandler>) -> Arc<Self> {
        let versions = Versions::default();
        let version = versions.intern(handler.version().unwrap_or_default());
        Arc::new(Self {
            name: name.to_owned(),
            current: ArcSwap::from_pointee(Current { handler, version }),
            versions,
        })
    }

    /// Makes `handler` serve every invocation that starts from now on; returns the one it
    /// replaces (still serving the invocations already running).
    pub(crate) fn swap(&self, handler: Arc<dyn EventHandler>) -> Arc<dyn EventHandler> {
        let version = self.versions.intern(handler.version().unwrap_or_default());
        let replaced = self.current.swap(Arc::new(Current { handler, version }));
        Arc::clone(&replaced.handler)
    }

    fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }
}

#[async_trait::async_trait]
impl EventHandler for Slot {
    fn name(&self) -> &str {
        &self.name
    }

    /// The version serving new invocations.
    fn version(&self) -> Option<&str> {
        self.versions
            .get(self.current().version)
            .filter(|v| !v.is_empty())
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        let handler = Arc::clone(&self.current().handler);
        handler
            .handle(event)
            .await
            .map_err(|e| e.with_version(handler.version()))
    }
}

/// Every version string a slot has served, append-only so that `version()` can lend one
/// out for as long as the slot lives. A slot sees a handful of versions in its life, so a
/// list is plenty.
#[derive(Debug, Default)]
struct Versions {
    first: OnceLock<Box<VersionNode>>,
}

#[derive(Debug)]
struct VersionNode {
    version: String,
    next: OnceLock<Box<VersionNode>>,
}

impl Versions {
    /// The index of `version`, added if new.
    fn intern(&self, version: &str) -> usize {
        let mut link = &self.first;
        let mut index = 0;
        loop {
            let node = link.get_or_init(|| {
                Box::new(VersionNode {
                    version: version.to_owned(),
                    next: OnceLock::new(),
                })
            });
            if node.version == version {
                return index;
            }
            link = &node.next;
            index += 1;
        }
    }

    fn get(&self, index: usize) -> Option<&str> {
        let mut node = self.first.get()?;
        for _ in 0..index {
            node = node.next.get()?;
        }
        Some(&node.version)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::bus::{AsyncEventBus, EventBus};
    use crate::monitor::FailureKind;

    /// A native handler with a version that fails every event once `release` is notified.
    struct Versioned {
        version: &'static str,
        started: Arc<Notify>,
        release: Arc<Notify>,
        outcome: fn() -> Result<(), HandlerError>,
    }

    #[async_trait::async_trait]
    impl EventHandler for Versioned {
        fn version(&self) -> Option<&str> {
            Some(self.version)
        }

        async fn handle(&self, _event: Arc<Event>) -> Result<Effects, HandlerError> {
            self.started.notify_one();
            self.release.notified().await;
            (self.outcome)().map(Effects::from)
        }
    }

    fn versioned(
        version: &'static str,
        outcome: fn() -> Result<(), HandlerError>,
    ) -> (Arc<Versioned>, Arc<Notify>) {
        let handler = Arc::new(Versioned {
            version,
            started: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
            outcome,
        });
        let release = Arc::clone(&handler.release);
        (handler, release)
    }

    fn event() -> Event {
        Event::new("Tick", "test", serde_json::json!({}))
    }

    #[test]
    fn versions_are_interned_once_and_lent_for_the_slots_life() {
        let versions = Versions::default();
        assert_eq!(versions.intern("a"), 0);
        assert_eq!(versions.intern("b"), 1);
        assert_eq!(versions.intern("a"), 0);
        assert_eq!(versions.intern("c"), 2);
        assert_eq!(
            (versions.get(0), versions.get(1), versions.get(2), versions.get(3)),
            (Some("a"), Some("b"), Some("c"), None)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_is_reported_with_the_version_that_ran_even_after_a_swap() {
        let bus = AsyncEventBus::new();
        let mut errors = bus.errors().unwrap();
        let (v1, release_v1) = versioned("v1", || Err(HandlerError::retry("v1 failed")));
        let slot = Slot::new("swapped", v1.clone());
        bus.subscribe("*", slot.clone()).unwrap();
        bus.start().await.unwrap();

        bus.publish(event()).await.unwrap();
        v1.started.notified().await;
        let (v2, release_v2) = versioned("v2", || Err(HandlerError::reject("v2 failed")));
        let previous = slot.swap(v2.clone());
        assert_eq!(previous.version(), Some("v1"));
        assert_eq!(slot.version(), Some("v2"), "the slot now reports the new version");

        release_v1.notify_one();
        let record = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.message, "v1 failed");
        assert_eq!(
            record.handler_version.as_deref(),
            Some("v1"),
            "the version that ran, not the current one"
        );

        release_v2.notify_one();
        bus.publish(event()).await.unwrap();
        let record = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.kind, FailureKind::Reject);
        assert_eq!(record.handler_version.as_deref(), Some("v2"));
        bus.stop().await.unwrap();
    }
}
