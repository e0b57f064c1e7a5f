//! The in-memory dead-letter queue: events a subscription gave up on, with every failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::Event;
use crate::monitor::FailureRecord;

/// An event a subscription could not handle: rejected, or failed on every attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Identifies the dead letter in this queue.
    pub id: u64,
    /// The subscription (plugin) that gave up.
    pub subscription: String,
    /// The event's position in the log.
    pub offset: u64,
    /// The event.
    pub event: Arc<Event>,
    /// Every failed attempt, oldest first.
    pub failures: Vec<FailureRecord>,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// Which dead letters an operation applies to; the default is all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this one.
    pub id: Option<u64>,
    /// Only this subscription's.
    pub subscription: Option<String>,
}

impl DeadLetterFilter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        self.id.is_none_or(|id| id == letter.id)
            && self
                .subscription
                .as_ref()
                .is_none_or(|name| *name == letter.subscription)
    }
}

/// Dead letters in memory, in the order they died. Nothing is dropped: an in-memory bus
/// keeps every dead letter until it is replayed or purged.
#[derive(Debug, Default)]
pub(crate) struct DeadLetterQueue {
    letters: Mutex<(u64, BTreeMap<u64, DeadLetter>)>,
}

impl DeadLetterQueue {
    pub(crate) fn push(
        &self,
        subscription: String,
        offset: u64,
        event: Arc<Event>,
        failures: Vec<FailureRecord>,
    ) {
        let mut letters = self.letters.lock().unwrap_or_else(|e| e.into_inner());
        letters.0 += 1;
        let id = letters.0;
        letters.1.insert(
            id,
            DeadLetter {
                id,
                subscription,
                offset,
                event,
                failures,
                dead_at: Utc::now(),
            },
        );
    }

    pub(crate) fn list(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        let letters = self.letters.lock().unwrap_or_else(|e| e.into_inner());
        letters
            .1
            .values()
            .filter(|l| filter.matches(l))
            .cloned()
            .collect()
    }

    /// Removes and returns the matching dead letters.
    pub(crate) fn take(&self, filter: &DeadLetterFilter) -> Vec<DeadLetter> {
        let mut letters = self.letters.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<u64> = letters
            .1
            .values()
            .filter(|l| filter.matches(l))
            .map(|l| l.id)
            .collect();
        ids.iter().filter_map(|id| letters.1.remove(id)).collect()
    }

    /// Puts back dead letters that could not be replayed, under their old ids.
    pub(crate) fn restore(&self, restored: Vec<DeadLetter>) {
        let mut letters = self.letters.lock().unwrap_or_else(|e| e.into_inner());
        for letter in restored {
            letters.1.insert(letter.id, letter);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.letters.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }
}
