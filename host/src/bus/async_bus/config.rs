//! The settings of an [`AsyncEventBus`](super::AsyncEventBus).

use std::time::Duration;

use crate::bus::{DEFAULT_HANDLER_TIMEOUT, RetryPolicy};
use crate::monitor;

/// What `publish` does when the bus already holds `capacity` unfinished events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait until enough events finish.
    #[default]
    Wait,
    /// Fail at once with [`BusError::Full`](crate::BusError::Full).
    Reject,
}

/// Settings of an [`AsyncEventBus`](crate::AsyncEventBus).
#[derive(Debug, Clone)]
pub struct AsyncBusConfig {
    /// Handler invocations running at once across all subscriptions.
    pub max_concurrency: usize,
    /// Default limit of concurrent invocations per subscription (never above
    /// `max_concurrency`); [`SubscribeOptions::concurrency`](crate::SubscribeOptions::concurrency) overrides it.
    pub subscription_concurrency: usize,
    /// Default per-invocation timeout.
    pub handler_timeout: Duration,
    /// Accepted events not yet fully handled that the bus holds at most. This bounds memory.
    pub capacity: usize,
    /// Events each subscription's handler emitted that the bus holds unfinished at most,
    /// on top of `capacity` (they may not wait for room publishers hold). A handler whose
    /// emitted events do not fit waits for room, up to its timeout, and then fails as
    /// `resource-limit` (and is retried): a handler feeding itself cannot grow the bus
    /// without bound, and uses up only its own room, not other handlers'.
    pub emitted_capacity: usize,
    /// What publishing does when `capacity` is reached.
    pub backpressure: Backpressure,
    /// Unconsumed failure records the error monitor keeps before counting overflow.
    pub monitor_capacity: usize,
    /// How long [`EventBus::stop`](crate::EventBus::stop) waits for in-flight events.
    pub drain_timeout: Duration,
    /// Default retry policy ([`SubscribeOptions::retry`](crate::SubscribeOptions::retry) overrides it). The default makes
    /// one attempt: a failure is dead-lettered at once.
    pub retry: RetryPolicy,
    /// The tokio runtime handlers run on (the bus's workers and retry timers); the runtime
    /// the bus is used from when `None`. `evhost run` gives plugins a runtime of their own,
    /// so that however busy they keep its threads, the HTTP API and the store keep theirs.
    pub executor: Option<tokio::runtime::Handle>,
}

impl Default for AsyncBusConfig {
    fn default() -> Self {
        Self {
            max_concurrency: 256,
            // Well below the bus-wide limit: one slow subscription cannot take every slot.
            subscription_concurrency: 32,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            capacity: 100_000,
            emitted_capacity: 1_000,
            backpressure: Backpressure::Wait,
            monitor_capacity: monitor::DEFAULT_CAPACITY,
            drain_timeout: Duration::from_secs(30),
            retry: RetryPolicy::no_retries(),
            executor: None,
        }
    }
}
