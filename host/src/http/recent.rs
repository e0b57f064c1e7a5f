//! [`RecentErrors`]: the last failures, for `GET /errors`.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::monitor::{ErrorStream, FailureRecord};

/// Keeps the last `capacity` failure records for `GET /errors` and logs each through
/// `tracing`.
///
/// It is the error monitor's consumer in a running host: the monitor's stream has one
/// consumer, so this one both logs (as
/// [`ErrorMonitor::start_logging`](crate::monitor::ErrorMonitor::start_logging) would)
/// and remembers.
#[derive(Debug)]
pub struct RecentErrors {
    capacity: usize,
    /// Oldest first; bounded by `capacity`.
    records: Mutex<VecDeque<FailureRecord>>,
    /// Each record as it arrives, for `GET /stream` (the monitor's stream keeps its one
    /// consumer: this).
    live: broadcast::Sender<FailureRecord>,
}

/// Records a stream client may fall behind by before it is told it lagged.
const LIVE_CAPACITY: usize = 1024;

impl RecentErrors {
    /// Keeps up to `capacity` records (`0` only logs).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            records: Mutex::new(VecDeque::with_capacity(capacity)),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    /// Logs `record` and keeps it, forgetting the oldest one when full.
    pub fn push(&self, record: FailureRecord) {
        crate::monitor::log_record(&record);
        if self.live.receiver_count() > 0 {
            // Never waits: a listener that falls behind is told it lagged.
            let _ = self.live.send(record.clone());
        }
        if self.capacity == 0 {
            return;
        }
        let mut records = self.records.lock();
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// Every record from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FailureRecord> {
        self.live.subscribe()
    }

    /// Up to `limit` records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<FailureRecord> {
        let records = self.records.lock();
        records.iter().rev().take(limit).cloned().collect()
    }

    /// Consumes `stream` on a background task, pushing every record, until the monitor
    /// is dropped.
    pub fn spawn_consumer(self: &Arc<Self>, mut stream: ErrorStream) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(record) = stream.recv().await {
                this.push(record);
            }
        })
    }
}
