//! One accepted event on its way to the subscriptions it was routed to, and the piece of
//! work a lane holds for each of them. The lowest layer of the bus: it knows events and
//! reports, nothing of lanes or workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use tokio::sync::oneshot;

use crate::bus::in_flight::InFlight;
use crate::bus::{DeliveryReport, HandlerError, HandlerOutcome};
use crate::event::Event;
use crate::store::Offset;

/// One accepted event on its way to every subscription it was routed to.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) event: Arc<Event>,
    pub(super) offset: Offset,
    /// Subscriptions that have not finished with it yet.
    remaining: AtomicUsize,
    /// Present for `publish_sync`, which waits for every outcome.
    report: Option<ReportCollector>,
    /// Room it holds until it is finished: for an event a handler emitted, the emitting
    /// subscription's room for emitted events; for one pulled from a shared log, its
    /// subscription's pull window.
    room: Option<Arc<InFlight>>,
}

/// The outcomes of one event for a waiting `publish_sync`.
#[derive(Debug)]
struct ReportCollector {
    outcomes: Mutex<Vec<HandlerOutcome>>,
    done: Mutex<Option<oneshot::Sender<DeliveryReport>>>,
}

/// A delivery waiting in one subscription's queue, with that subscription's attempts.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) delivery: Arc<Delivery>,
    /// Attempts made so far (the log keeps their failures).
    pub(super) attempt: u32,
}

impl Pending {
    /// A first delivery.
    pub(super) fn new(delivery: Arc<Delivery>) -> Self {
        Self { delivery, attempt: 0 }
    }
}

impl Delivery {
    /// An event at `offset`, not yet routed: [`Delivery::route_to`] says to how many
    /// subscriptions.
    pub(super) fn new(event: Arc<Event>, offset: Offset) -> Self {
        Self {
            event,
            offset,
            remaining: AtomicUsize::new(0),
            report: None,
            room: None,
        }
    }

    /// A delivery a `publish_sync` waits for: `receiver` gets its report.
    pub(super) fn reporting(mut self) -> (Self, oneshot::Receiver<DeliveryReport>) {
        let (sender, receiver) = oneshot::channel();
        self.report = Some(ReportCollector {
            outcomes: Mutex::default(),
            done: Mutex::new(Some(sender)),
        });
        (self, receiver)
    }

    /// A delivery holding a place in `room` until it is finished.
    pub(super) fn holding(mut self, room: Arc<InFlight>) -> Self {
        self.room = Some(room);
        self
    }

    /// Sets how many subscriptions must finish with it. Called before any worker can see
    /// it.
    pub(super) fn route_to(&self, subscriptions: usize) {
        self.remaining.store(subscriptions, Ordering::Relaxed);
    }

    /// Whether a `publish_sync` waits for it (then every finish is counted out at once).
    pub(super) fn is_awaited(&self) -> bool {
        self.report.is_some()
    }

    /// One subscription finished with it, with `result`. Returns `true` when it was the
    /// last: the event is then complete, its report sent and its room freed.
    pub(super) fn finish(&self, subscription: &str, result: Result<(), HandlerError>) -> bool {
        if let Some(report) = &self.report {
            report.outcomes.lock().push(HandlerOutcome {
                subscription: subscription.to_owned(),
                error: result.err(),
            });
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        self.complete();
        true
    }

    /// Hands the collected outcomes to a waiting `publish_sync`, and frees the event's
    /// place in its room.
    pub(super) fn complete(&self) {
        if let Some(room) = &self.room {
            room.release(1);
        }
        if let Some(report) = &self.report {
            let outcomes = std::mem::take(&mut *report.outcomes.lock());
            if let Some(done) = report.done.lock().take() {
                // The publisher may have given up waiting; the outcome is then unobserved.
                let _ = done.send(DeliveryReport {
                    event_id: self.event.id.clone(),
                    duplicate: false,
                    outcomes,
                });
            }
        }
    }

    /// Tells a waiting `publish_sync` that the event was a duplicate.
    pub(super) fn complete_duplicate(&self) {
        if let Some(report) = &self.report
            && let Some(done) = report.done.lock().take()
        {
            let _ = done.send(DeliveryReport {
                event_id: self.event.id.clone(),
                duplicate: true,
                outcomes: Vec::new(),
            });
        }
    }
}
