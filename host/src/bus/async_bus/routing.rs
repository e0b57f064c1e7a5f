//! The routing table — which lanes exist — and the routes of a batch: which lanes each
//! event goes to. Matched once per batch, the routes serve both the log (which stores
//! them) and the intake (which queues the deliveries).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::delivery::{Delivery, Pending};
use super::lane::Lane;
use crate::bus::in_flight::InFlight;
use crate::bus::{BusError, SubscriptionId};
use crate::event::Event;

/// The lanes of a bus. Copy-on-write: publishing reads the current table without taking
/// any lock; edits are serialized by `edits` and swap in a new table.
#[derive(Debug)]
pub(super) struct Routing {
    lanes: ArcSwap<Vec<Arc<Lane>>>,
    edits: Mutex<()>,
    next_id: AtomicU64,
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            lanes: ArcSwap::from_pointee(Vec::new()),
            edits: Mutex::new(()),
            next_id: AtomicU64::new(1),
        }
    }
}

impl Routing {
    /// The lanes now.
    pub(super) fn snapshot(&self) -> Arc<Vec<Arc<Lane>>> {
        self.lanes.load_full()
    }

    /// A new subscription id.
    pub(super) fn next_id(&self) -> SubscriptionId {
        SubscriptionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Edits the table in one step, one edit at a time: removes the lane of `remove` (which
    /// must exist) and adds the lane `make` builds, given the removed one and the others.
    /// No I/O happens under the lock: `make` only builds the lane.
    pub(super) fn edit(
        &self,
        remove: Option<SubscriptionId>,
        make: impl FnOnce(Option<&Lane>, &[Arc<Lane>]) -> Result<Option<Arc<Lane>>, BusError>,
    ) -> Result<Edited, BusError> {
        let _one_at_a_time = self.edits.lock();
        let lanes = self.lanes.load();
        let removed = match remove {
            None => None,
            Some(id) => Some(
                lanes
                    .iter()
                    .find(|lane| lane.subscription.id == id)
                    .cloned()
                    .ok_or(BusError::NoSuchSubscription(id))?,
            ),
        };
        let mut updated: Vec<_> = lanes
            .iter()
            .filter(|lane| Some(lane.subscription.id) != remove)
            .cloned()
            .collect();
        let added = make(removed.as_deref(), &updated)?;
        updated.extend(added.clone());
        self.lanes.store(Arc::new(updated));
        Ok(Edited { added, removed })
    }
}

/// What [`Routing::edit`] changed.
#[derive(Debug)]
pub(super) struct Edited {
    pub(super) added: Option<Arc<Lane>>,
    pub(super) removed: Option<Arc<Lane>>,
}

/// Events a handler emitted, with the snapshot of the table and the routes they were
/// routed by and the room reserved for them in their emitter's budget: what settlement
/// hands back to the intake once their commit stored them.
#[derive(Debug)]
pub(super) struct Emitted {
    pub(super) lanes: Arc<Vec<Arc<Lane>>>,
    pub(super) routes: Routes,
    pub(super) events: Vec<Arc<Event>>,
    pub(super) room: Arc<InFlight>,
}

/// Per event of a batch, the lanes (indices into one snapshot of the table) it goes to.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// Where each event's lanes end in `lanes`.
    ends: Vec<u32>,
    lanes: Vec<u32>,
}

impl Routes {
    /// Matches every event against every lane of `lanes`.
    pub(super) fn of(lanes: &[Arc<Lane>], events: &[Arc<Event>]) -> Self {
        let mut routes = Routes {
            ends: Vec::with_capacity(events.len()),
            lanes: Vec::with_capacity(events.len()),
        };
        for event in events {
            for (index, lane) in lanes.iter().enumerate() {
                if lane.subscription.matches(&event.ty) {
                    routes.lanes.push(index as u32);
                }
            }
            routes.ends.push(routes.lanes.len() as u32);
        }
        routes
    }

    /// How many events.
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The lanes event `event` goes to.
    pub(super) fn get(&self, event: usize) -> &[u32] {
        let start = if event == 0 {
            0
        } else {
            self.ends[event - 1] as usize
        };
        &self.lanes[start..self.ends[event] as usize]
    }

    /// Per event, the names of the subscriptions it goes to (what a log stores).
    pub(super) fn names(&self, lanes: &[Arc<Lane>]) -> Vec<Vec<Arc<str>>> {
        (0..self.len())
            .map(|event| {
                self.get(event)
                    .iter()
                    .map(|&lane| Arc::clone(&lanes[lane as usize].subscription.name))
                    .collect()
            })
            .collect()
    }

    /// Sorts deliveries — each with the index of its event — onto the lanes of
    /// `lanes_len` their routes name, setting how many subscriptions each must reach.
    /// Returns the deliveries per lane and those that go nowhere (complete at once).
    pub(super) fn sort(
        &self,
        lanes_len: usize,
        deliveries: Vec<(Arc<Delivery>, usize)>,
    ) -> (Vec<Vec<Pending>>, Vec<Arc<Delivery>>) {
        let mut per_lane: Vec<Vec<Pending>> = (0..lanes_len).map(|_| Vec::new()).collect();
        let mut nowhere = Vec::new();
        for (delivery, event) in deliveries {
            let route = self.get(event);
            // Set before any worker can see the delivery: queues are filled by the caller.
            delivery.route_to(route.len());
            for &lane in route {
                per_lane[lane as usize].push(Pending::new(Arc::clone(&delivery)));
            }
            if route.is_empty() {
                nowhere.push(delivery);
            }
        }
        (per_lane, nowhere)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::bus::{Pattern, RetryPolicy, Subscription, from_fn};

    fn lane(routing: &Routing, name: &str, patterns: &[&str]) -> Arc<Lane> {
        let subscription = Subscription {
            id: routing.next_id(),
            name: Arc::from(name),
            patterns: Pattern::parse_all(patterns).unwrap(),
            handler: from_fn(name, |_| async { Ok(()) }),
            timeout: Duration::from_secs(1),
            ordered: false,
            metrics: Arc::default(),
        };
        Arc::new(Lane::new(
            subscription,
            1,
            RetryPolicy::default(),
            Arc::new(InFlight::new(1)),
            false,
        ))
    }

    fn names(routing: &Routing) -> Vec<String> {
        routing
            .snapshot()
            .iter()
            .map(|l| l.subscription.name.to_string())
            .collect()
    }

    #[test]
    fn subscribe_replace_and_unsubscribe_edit_the_table_in_one_step() {
        let routing = Routing::default();
        let a = lane(&routing, "a", &["User*"]);
        let a_id = a.subscription.id;
        let edited = routing.edit(None, |_, _| Ok(Some(a))).unwrap();
        assert!(edited.added.is_some() && edited.removed.is_none());
        let b = lane(&routing, "b", &["*"]);
        routing.edit(None, |_, _| Ok(Some(b))).unwrap();
        assert_eq!(names(&routing), ["a", "b"]);

        // Replacing hands the old lane to `make` and takes it out in the same step.
        let a2 = lane(&routing, "a", &["Order*"]);
        let removed = routing
            .edit(Some(a_id), |old, others| {
                assert_eq!(old.unwrap().subscription.name.as_ref(), "a");
                assert_eq!(others.len(), 1, "the others, without the old one");
                Ok(Some(a2))
            })
            .unwrap()
            .removed;
        assert_eq!(removed.unwrap().subscription.id, a_id);
        assert_eq!(names(&routing), ["b", "a"]);

        // A refusal leaves the table as it was.
        let refused = routing.edit(None, |_, _| Err(BusError::NameTaken("x".into())));
        assert!(matches!(refused, Err(BusError::NameTaken(_))));
        assert_eq!(names(&routing), ["b", "a"]);
        let missing = routing.edit(Some(SubscriptionId(999)), |_, _| Ok(None));
        assert!(matches!(missing, Err(BusError::NoSuchSubscription(_))));

        let b_id = routing.snapshot()[0].subscription.id;
        let edited = routing.edit(Some(b_id), |_, _| Ok(None)).unwrap();
        assert!(edited.added.is_none() && edited.removed.is_some());
        assert_eq!(names(&routing), ["a"]);
    }

    #[test]
    fn each_event_is_routed_to_every_matching_lane_and_sorted_onto_them() {
        let routing = Routing::default();
        for (name, patterns) in [
            ("users", &["User*"][..]),
            ("all", &["*"]),
            ("orders", &["OrderPlaced"]),
        ] {
            let lane = lane(&routing, name, patterns);
            routing.edit(None, |_, _| Ok(Some(lane))).unwrap();
        }
        let lanes = routing.snapshot();
        let events: Vec<Arc<Event>> = ["UserCreated", "OrderPlaced", "Other"]
            .iter()
            .map(|ty| Arc::new(Event::new(*ty, "test", json!({}))))
            .collect();
        let routes = Routes::of(&lanes, &events);
        assert_eq!(
            (routes.get(0), routes.get(1), routes.get(2)),
            (&[0, 1][..], &[1, 2][..], &[1][..])
        );
        assert_eq!(routes.names(&lanes)[1], [Arc::from("all"), Arc::from("orders")]);

        let nowhere = Arc::new(Event::new("Other", "test", json!({})));
        let none = Routes::of(&lanes[..1], std::slice::from_ref(&nowhere));
        assert!(none.get(0).is_empty());

        let deliveries: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (Arc::new(Delivery::new(Arc::clone(e), i as u64)), i))
            .collect();
        let (per_lane, unrouted) = routes.sort(lanes.len(), deliveries);
        let offsets: Vec<Vec<u64>> = per_lane
            .iter()
            .map(|l| l.iter().map(|p| p.delivery.offset).collect())
            .collect();
        assert_eq!(offsets, [vec![0], vec![0, 1, 2], vec![1]]);
        assert!(unrouted.is_empty());
        let (_, unrouted) = none.sort(1, vec![(Arc::new(Delivery::new(nowhere, 9)), 0)]);
        assert_eq!(unrouted.len(), 1);
    }
}
