//! The event bus: the API of the original Go design, in Rust.
//!
//! Two implementations share the [`EventBus`] trait:
//! - [`InMemoryEventBus`] runs handlers in the publisher's task, in subscription order, and
//!   returns the first failure. For tests and simple programs.
//! - [`AsyncEventBus`] accepts an event and returns; handlers run concurrently under a global
//!   and a per-subscription limit, each call under a timeout, with per-key ordering.
//!
//! Both report every failure to the [`ErrorMonitor`](crate::monitor::ErrorMonitor).

mod async_bus;
mod in_flight;
mod memory;
mod pattern;
mod retry;
mod subscription;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::event::{Event, EventError};
use crate::monitor::FailureKind;
use crate::store::StorageError;
pub use crate::store::{Appended, DeadLetter, DeadLetterFilter};

pub use async_bus::{AsyncBusConfig, AsyncEventBus, Backpressure};
pub use memory::InMemoryEventBus;
pub use pattern::Pattern;
pub use retry::RetryPolicy;
pub(crate) use subscription::{Subscription, failure_record, invoke, panic_message};

/// Per-invocation timeout unless a subscription sets its own.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// The contract shared by every bus.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync {
    /// Accepts one event. The in-memory bus also runs its handlers before returning.
    async fn publish(&self, event: Event) -> Result<(), BusError>;

    /// Accepts one event and returns once every subscribed handler has finished with it,
    /// with each handler's outcome. Any failure makes it [`BusError::HandlersFailed`].
    async fn publish_sync(&self, event: Event) -> Result<DeliveryReport, BusError>;

    /// Accepts several events at once, in order. Either all are accepted or none.
    async fn publish_batch(&self, events: Vec<Event>) -> Result<(), BusError>;

    /// Subscribes `handler` to events whose type matches `pattern`: an exact type
    /// (`UserCreated`), a prefix (`User*`) or everything (`*`).
    fn subscribe(&self, pattern: &str, handler: Arc<dyn EventHandler>) -> Result<SubscriptionId, BusError>;

    /// Removes a subscription. Events already queued for it are still handled.
    fn unsubscribe(&self, id: SubscriptionId) -> Result<(), BusError>;

    /// Starts delivering. Events published before `start` wait for it.
    async fn start(&self) -> Result<(), BusError>;

    /// Refuses new events, drains accepted ones up to the configured deadline and reports
    /// how many were drained and how many abandoned.
    async fn stop(&self) -> Result<StopReport, BusError>;

    /// Returns once every accepted event has been fully handled.
    async fn wait(&self);
}

/// An event handler: a native Rust one, or a Wasm plugin.
///
/// A handler returns its [`Effects`] — key-value writes and events to emit — instead of
/// applying them: the bus that ran it applies them with the delivery (the async bus
/// commits them with the delivery's acknowledgement, all or nothing), so a failed
/// invocation leaves nothing behind. Most native handlers have none:
///
/// ```
/// use std::sync::Arc;
/// use evhost::bus::Effects;
/// use evhost::{Event, EventHandler, HandlerError};
///
/// struct SendWelcomeMail;
///
/// #[evhost::async_trait]
/// impl EventHandler for SendWelcomeMail {
///     fn name(&self) -> &str {
///         "send-welcome-mail"
///     }
///
///     async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
///         let email = event
///             .json_data()
///             .and_then(|d| d["email"].as_str())
///             .ok_or_else(|| HandlerError::reject("UserCreated without an email"))?;
///         let _ = email; // send it; a transient outage would be HandlerError::retry(...)
///         Ok(Effects::none())
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// The name failures and metrics are reported under. Defaults to the type's name.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// A version string (Wasm plugins use their content hash).
    fn version(&self) -> Option<&str> {
        None
    }

    /// Handles one event: `Ok` with what it wants written and emitted, for the bus to
    /// apply; `Err` applies nothing.
    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError>;
}

/// What a successful invocation asks the bus to apply; see [`EventHandler`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// The key-value namespace `kv_writes` go to (a plugin's name); empty means the
    /// subscription's name.
    pub kv_namespace: String,
    /// Key-value writes in order; `None` deletes the key.
    pub kv_writes: Vec<(String, Option<Vec<u8>>)>,
    /// Events to publish, in order.
    pub emitted: Vec<Event>,
    /// The handler version that produced them (a plugin's content hash), if it has one:
    /// a durable log records it with the acknowledgement (`GET /events/{id}`).
    pub version: Option<Arc<str>>,
}

impl Effects {
    /// Nothing to write or emit.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.kv_writes.is_empty() && self.emitted.is_empty()
    }
}

impl From<()> for Effects {
    fn from((): ()) -> Self {
        Self::none()
    }
}

/// Wraps an async closure as a handler with no effects.
///
/// ```
/// use evhost::{bus::from_fn, HandlerError};
/// let handler = from_fn("audit", |event| async move {
///     println!("{} {}", event.ty, event.id);
///     Ok::<_, HandlerError>(())
/// });
/// ```
pub fn from_fn<F, Fut>(name: impl Into<String>, f: F) -> Arc<dyn EventHandler>
where
    F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(FnHandler { name: name.into(), f })
}

struct FnHandler<F> {
    name: String,
    f: F,
}

#[async_trait::async_trait]
impl<F, Fut> EventHandler for FnHandler<F>
where
    F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, event: Arc<Event>) -> Result<Effects, HandlerError> {
        (self.f)(event).await.map(Effects::from)
    }
}

/// Why a handler did not handle an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    kind: FailureKind,
    message: String,
    /// The version of the handler that failed, when it differs from what
    /// [`EventHandler::version`] says by the time the failure is reported (a hot-swapped
    /// plugin).
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

impl HandlerError {
    /// A transient failure: the event may succeed if delivered again later.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Retry, message)
    }

    /// A permanent failure: delivering the event again cannot help.
    pub fn reject(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Reject, message)
    }

    /// A failure of a given kind (used by the host for traps, timeouts and the like).
    /// A message longer than [`MAX_MESSAGE_BYTES`](crate::monitor::MAX_MESSAGE_BYTES) is
    /// cut to it.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: crate::monitor::bound_text(message.into(), crate::monitor::MAX_MESSAGE_BYTES),
            version: None,
        }
    }

    /// Names the version of the handler that failed (kept if one is already set).
    pub fn with_version(mut self, version: Option<&str>) -> Self {
        if self.version.is_none() {
            self.version = version.map(str::to_owned);
        }
        self
    }

    /// How it failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// What the handler or the host said.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The version of the handler that failed, if the handler said.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
}

/// Identifies one subscription on one bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SubscriptionId(pub(crate) u64);

/// Settings for one subscription; see [`AsyncEventBus::subscribe_with`].
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Name for failures and metrics; the handler's [`EventHandler::name`] otherwise.
    pub name: Option<String>,
    /// At most this many concurrent invocations for this subscription (the bus-wide limit
    /// applies too).
    pub concurrency: Option<usize>,
    /// Per-invocation timeout; the bus default otherwise.
    pub timeout: Option<Duration>,
    /// How failures are retried; the bus default otherwise.
    pub retry: Option<RetryPolicy>,
    /// On a log shared by several processes ([`Feed::Shared`](crate::store::Feed::Shared)),
    /// keep each ordering key's events in order across all of them (see
    /// [`EventLog::pull`](crate::store::EventLog::pull)). A bus on
    /// its own log keeps per-key order anyway.
    pub ordered: bool,
}

/// One handler's outcome for one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandlerOutcome {
    /// The subscription's name.
    pub subscription: String,
    /// `None` on success.
    pub error: Option<HandlerError>,
}

/// What happened to one event: one outcome per subscription it reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryReport {
    /// The event's id.
    pub event_id: String,
    /// The event's `source` + `id` had already been accepted: it was not published again
    /// and `outcomes` is empty.
    pub duplicate: bool,
    /// One entry per matching subscription.
    pub outcomes: Vec<HandlerOutcome>,
}

impl DeliveryReport {
    /// The outcomes that are failures.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &HandlerError)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.error.as_ref().map(|e| (o.subscription.as_str(), e)))
    }

    fn into_result(self) -> Result<Self, BusError> {
        if self.failures().next().is_some() {
            Err(BusError::HandlersFailed(self))
        } else {
            Ok(self)
        }
    }
}

/// The result of [`EventBus::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StopReport {
    /// Events in flight when `stop` was called that were fully handled before the deadline.
    pub drained: u64,
    /// Events still unhandled when the deadline passed.
    pub abandoned: u64,
}

/// Why a bus refused or failed an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The event is not a valid CloudEvent.
    #[error("event {id:?} is invalid: {source}")]
    InvalidEvent {
        /// The event's id (may be empty).
        id: String,
        /// What is wrong with it.
        source: EventError,
    },
    /// A subscription pattern is malformed.
    #[error("subscription pattern {pattern:?} is invalid: {reason}")]
    InvalidPattern {
        /// The pattern given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// On a durable bus, another subscription has this name: a name identifies the
    /// deliveries stored for it.
    #[error("a subscription named {0:?} exists already")]
    NameTaken(String),
    /// No subscription has this id.
    #[error("no subscription with id {0:?}")]
    NoSuchSubscription(SubscriptionId),
    /// The bus is stopping or stopped.
    #[error("the bus is stopped and accepts no new events")]
    Stopped,
    /// The intake is full and the bus is configured to refuse rather than wait.
    #[error("the bus is full: {capacity} events are in flight; retry later")]
    Full {
        /// The configured intake capacity.
        capacity: usize,
    },
    /// A batch larger than the whole intake can never be accepted.
    #[error("a batch of {len} events exceeds the bus capacity of {capacity} events")]
    BatchTooLarge {
        /// The batch size.
        len: usize,
        /// The configured intake capacity.
        capacity: usize,
    },
    /// `publish_sync` on a log shared by several processes: the event's handlers may run
    /// in any of them, so no one process can wait for their outcomes.
    #[error("waiting for an event's handlers is not possible on a log shared by several hosts")]
    SyncUnsupported,
    /// The storage failed: the events were not accepted, or the operation did not happen.
    /// [`StorageError::is_transient`] says whether trying again may help.
    #[error("the storage failed: {0}")]
    Storage(#[from] StorageError),
    /// At least one handler failed; the report holds every outcome.
    #[error("{} of {} handlers failed for event {}: {}", .0.failures().count(), .0.outcomes.len(), .0.event_id, first_failure(.0))]
    HandlersFailed(DeliveryReport),
}

fn first_failure(report: &DeliveryReport) -> String {
    report
        .failures()
        .next()
        .map(|(subscription, error)| format!("{subscription}: {error}"))
        .unwrap_or_default()
}

fn validate(event: &Event) -> Result<(), BusError> {
    event.validate().map_err(|source| BusError::InvalidEvent {
        id: event.id.clone(),
        source,
    })
}
