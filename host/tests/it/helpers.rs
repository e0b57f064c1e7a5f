//! Handlers that record what they see, for asserting on behaviour.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use evhost::bus::Effects;
use evhost::{Event, EventHandler, HandlerError};
use serde_json::json;

/// Records every event it handles, in order.
#[derive(Default)]
pub struct Recorder {
    pub name: String,
    pub seen: Mutex<Vec<Arc<Event>>>,
}

impl Recorder {
    pub fn named(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            seen: Mutex::default(),
        })
    }

    pub fn types(&self) -> Vec<String> {
        self.seen.lock().unwrap().iter().map(|e| e.ty.clone()).collect()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

#[evhost::async_trait]
impl EventHandler for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        self.seen.lock().unwrap().push(event);
        Ok(Effects::none())
    }
}

/// Measures how many invocations overlap, holding each for `hold`.
pub struct ConcurrencyProbe {
    pub name: String,
    pub hold: Duration,
    current: AtomicUsize,
    pub max: AtomicUsize,
    pub done: AtomicUsize,
}

impl ConcurrencyProbe {
    pub fn new(name: &str, hold: Duration) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            hold,
            current: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

#[evhost::async_trait]
impl EventHandler for ConcurrencyProbe {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, _event: Arc<Event>) -> Result<Effects, HandlerError> {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.hold).await;
        self.current.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(Effects::none())
    }
}

/// Checks per-key ordering: each event carries `seq` (its position within its key);
/// records violations and the overlap of distinct keys.
#[derive(Default)]
pub struct OrderChecker {
    pub next: Mutex<HashMap<String, u64>>,
    pub running_per_key: Mutex<HashMap<String, usize>>,
    pub violations: Mutex<Vec<String>>,
    running_keys: AtomicUsize,
    pub max_parallel_keys: AtomicUsize,
    pub handled: AtomicUsize,
}

#[evhost::async_trait]
impl EventHandler for OrderChecker {
    fn name(&self) -> &str {
        "order-checker"
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        let key = event.subject.clone().expect("keyed events");
        let seq = event.json_data().unwrap()["seq"].as_u64().unwrap();
        {
            let mut running = self.running_per_key.lock().unwrap();
            let count = running.entry(key.clone()).or_default();
            *count += 1;
            if *count > 1 {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("key {key} ran twice at once"));
            }
        }
        let parallel = self.running_keys.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_parallel_keys.fetch_max(parallel, Ordering::SeqCst);
        {
            let mut next = self.next.lock().unwrap();
            let expected = next.entry(key.clone()).or_default();
            if seq != *expected {
                self.violations
                    .lock()
                    .unwrap()
                    .push(format!("key {key}: got seq {seq}, expected {expected}"));
            }
            *expected = seq + 1;
        }
        // Vary the timing so later events would overtake earlier ones if allowed to.
        match seq % 3 {
            0 => tokio::task::yield_now().await,
            1 => tokio::time::sleep(Duration::from_micros(50)).await,
            _ => {}
        }
        self.running_keys.fetch_sub(1, Ordering::SeqCst);
        *self.running_per_key.lock().unwrap().get_mut(&key).unwrap() -= 1;
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(Effects::none())
    }
}

pub fn event(ty: &str) -> Event {
    Event::new(ty, "tests", json!({}))
}

pub fn keyed(ty: &str, key: &str, seq: u64) -> Event {
    Event::new(ty, "tests", json!({ "seq": seq })).with_subject(key)
}

/// A directory removed when the test ends.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("evhost-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    /// The durable log in this directory.
    pub fn open(&self) -> Arc<evhost::store::sqlite::SqliteStore> {
        evhost::store::sqlite::SqliteStore::open(&self.0, Default::default()).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
