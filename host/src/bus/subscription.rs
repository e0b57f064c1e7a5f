//! What both buses know about a subscription, and how one handler call is made.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::{Effects, EventHandler, HandlerError, Pattern, SubscriptionId};
use crate::event::Event;
use crate::metrics::SubscriptionMetrics;
use crate::monitor::{ErrorMonitor, FailureKind, FailureRecord};

/// One handler subscribed to one or more patterns.
pub(crate) struct Subscription {
    pub(crate) id: SubscriptionId,
    pub(crate) name: Arc<str>,
    pub(crate) patterns: Vec<Pattern>,
    pub(crate) handler: Arc<dyn EventHandler>,
    pub(crate) timeout: Duration,
    /// Pulled from a shared log in per-key order ([`SubscribeOptions::ordered`](super::SubscribeOptions::ordered)).
    pub(crate) ordered: bool,
    /// Shared with a replacement of the same name (see `AsyncEventBus::replace_subscription`).
    pub(crate) metrics: Arc<SubscriptionMetrics>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("patterns", &self.patterns)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn matches(&self, ty: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(ty))
    }

    /// The patterns, comma-separated.
    pub(crate) fn patterns_text(&self) -> String {
        let texts: Vec<String> = self.patterns.iter().map(Pattern::to_string).collect();
        texts.join(",")
    }
}

/// Calls the handler once: under the subscription's timeout, with panics caught, the
/// outcome recorded in the metrics and any failure reported to the monitor (and returned).
pub(crate) async fn invoke(
    subscription: &Subscription,
    event: &Arc<Event>,
    attempt: u32,
    monitor: &ErrorMonitor,
) -> Result<Effects, FailureRecord> {
    let started = Instant::now();
    let handler = &subscription.handler;
    let call = std::panic::catch_unwind(AssertUnwindSafe(|| -> BoxFuture<'_, _> {
        handler.handle(Arc::clone(event))
    }));
    let result = match call {
        Err(panic) => Err(panicked(panic)),
        Ok(future) => {
            let mut future = AssertUnwindSafe(future).catch_unwind();
            // Most handlers finish on the first poll; only a pending one pays for a timer.
            let outcome = match futures::poll!(&mut future) {
                Poll::Ready(outcome) => Ok(outcome),
                Poll::Pending => {
                    let remaining = subscription.timeout.saturating_sub(started.elapsed());
                    tokio::time::timeout(remaining, future).await
                }
            };
            match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(panicked(panic)),
                Err(_) => Err(HandlerError::new(
                    FailureKind::Timeout,
                    format!("no result within {:?}", subscription.timeout),
                )),
            }
        }
    };
    subscription
        .metrics
        .record(started.elapsed(), result.as_ref().err().map(HandlerError::kind));
    result.map_err(|error| failure_record(subscription, event, attempt, &error, monitor))
}

/// Reports `error` of `subscription` for `event` to the monitor and returns the record.
pub(crate) fn failure_record(
    subscription: &Subscription,
    event: &Event,
    attempt: u32,
    error: &HandlerError,
    monitor: &ErrorMonitor,
) -> FailureRecord {
    // A hot-swapped handler names the version that ran; otherwise ask the handler.
    let version = error.version().or_else(|| subscription.handler.version());
    let record = FailureRecord {
        subscription: subscription.name.to_string(),
        handler_version: version.map(str::to_owned),
        event_id: event.id.clone(),
        event_type: event.ty.clone(),
        attempt,
        kind: error.kind(),
        message: error.message().to_owned(),
        time: chrono::Utc::now(),
    };
    monitor.report(record.clone());
    record
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> HandlerError {
    HandlerError::new(
        FailureKind::Panic,
        format!("handler panicked: {}", panic_message(&*panic)),
    )
}

/// What a panic said, when it said it with a string.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}
