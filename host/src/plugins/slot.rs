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
//! The bus reports a failure with `handler.version()`, read right after the call
//! returns; by then a reload may have swapped in another version. So an invocation that
//! fails (returns an error, panics, or is dropped by the bus's timeout) leaves the index
//! of the version it ran in a thread-local as it ends, and the next `version()` call on
//! that thread, for that slot, takes it. This relies on the bus calling `version()` on
//! the thread and in the poll in which the handler's future completed or was dropped,
//! with no other handler call in between — which is how `bus::invoke` is written. Should
//! that ever change, `version()` falls back to the current version. A test in this
//! module pins the behaviour down through the real bus.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::bus::{EventHandler, HandlerError};
use crate::event::Event;

thread_local! {
    /// `(slot id, version index)` of the invocation that just failed on this thread.
    static FAILED_ON: Cell<Option<(u64, usize)>> = const { Cell::new(None) };
}

/// Ids distinguishing slots in [`FAILED_ON`].
static NEXT_SLOT_ID: AtomicU64 = AtomicU64::new(1);

/// A hot-swappable handler; see the module documentation.
pub(crate) struct Slot {
    id: u64,
    name: String,
    current: RwLock<Current>,
    versions: Versions,
}

#[derive(Clone)]
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
            id: NEXT_SLOT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            current: RwLock::new(Current { handler, version }),
            versions,
        })
    }

    /// Makes `handler` serve every invocation that starts from now on; returns the one it
    /// replaces (still serving the invocations already running).
    pub(crate) fn swap(&self, handler: Arc<dyn EventHandler>) -> Arc<dyn EventHandler> {
        let version = self.versions.intern(handler.version().unwrap_or_default());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, Current { handler, version }).handler
    }

    fn current(&self) -> Current {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl EventHandler for Slot {
    fn name(&self) -> &str {
        &self.name
    }

    /// The version that served the invocation that just failed on this thread, else the
    /// current one.
    fn version(&self) -> Option<&str> {
        let failed = FAILED_ON.with(|cell| match cell.get() {
            Some((slot, version)) if slot == self.id => {
                cell.set(None);
                Some(version)
            }
            _ => None,
        });
        let index = failed.unwrap_or_else(|| self.current().version);
        self.versions.get(index).filter(|v| !v.is_empty())
    }

    async fn handle(&self, event: Arc<Event>) -> Result<(), HandlerError> {
        let Current { handler, version } = self.current();
        let mut attribution = Attribution {
            slot: self.id,
            version,
            failed: true,
        };
        let result = handler.handle(event).await;
        attribution.failed = result.is_err();
        result
    }
}

/// Leaves the version of a failed invocation for [`Slot::version`]. A guard rather than a
/// statement after the call, so a panic or a timeout that drops the call leaves it too.
struct Attribution {
    slot: u64,
    version: usize,
    failed: bool,
}

impl Drop for Attribution {
    fn drop(&mut self) {
        if self.failed {
            FAILED_ON.with(|cell| cell.set(Some((self.slot, self.version))));
        }
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

        async fn handle(&self, _event: Arc<Event>) -> Result<(), HandlerError> {
            self.started.notify_one();
            self.release.notified().await;
            (self.outcome)()
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_invocation_is_reported_with_its_version() {
        let bus = AsyncEventBus::new();
        let mut errors = bus.errors().unwrap();
        let (v1, _never_released) = versioned("v1", || Ok(()));
        let slot = Slot::new("slow", v1.clone());
        let options = crate::SubscribeOptions {
            timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        };
        bus.subscribe_with("*", slot.clone(), options).unwrap();
        bus.start().await.unwrap();
        bus.publish(event()).await.unwrap();
        v1.started.notified().await;
        let (v2, _) = versioned("v2", || Ok(()));
        slot.swap(v2);
        let record = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.kind, FailureKind::Timeout);
        assert_eq!(record.handler_version.as_deref(), Some("v1"));
    }
}
