//! [`RecentErrors`]: the last failures, for `GET /errors`.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

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
}

impl RecentErrors {
    /// Keeps up to `capacity` records (`0` only logs).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            records: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Logs `record` and keeps it, forgetting the oldest one when full.
    pub fn push(&self, record: FailureRecord) {
        crate::monitor::log_record(&record);
        if self.capacity == 0 {
            return;
        }
        let mut records = self.records.lock();
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
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
