//! Counting accepted-but-unfinished events, with waiting for "none left" and for room.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The number of events in flight, bounded by a capacity.
#[derive(Debug)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    capacity: usize,
    /// Woken when the count drops to zero.
    idle: Notify,
    /// Woken when room frees up, but only while someone waits for it (`room_waiters`), so
    /// finishing an event costs no lock in the common case.
    room: Notify,
    room_waiters: AtomicUsize,
}

impl InFlight {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            capacity,
            idle: Notify::new(),
            room: Notify::new(),
            room_waiters: AtomicUsize::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Reserves room for `n` events if there is some.
    pub(crate) fn try_reserve(&self, n: usize) -> bool {
        self.count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
                (current + n <= self.capacity).then_some(current + n)
            })
            .is_ok()
    }

    /// Counts `n` events in regardless of the capacity.
    pub(crate) fn force_reserve(&self, n: usize) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }

    /// Reserves room for `n ≤ capacity` events, waiting for it. Returns without a
    /// reservation (`false`) once `give_up()` is true (checked on every wake-up).
    pub(crate) async fn reserve(&self, n: usize, give_up: impl Fn() -> bool) -> bool {
        debug_assert!(n <= self.capacity);
        loop {
            if self.try_reserve(n) {
                return true;
            }
            if give_up() {
                return false;
            }
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.room_waiters.fetch_add(1, Ordering::SeqCst);
            // Re-check after registering, so a release in between is not missed.
            let reserved = self.try_reserve(n);
            if !reserved {
                room.await;
            }
            self.room_waiters.fetch_sub(1, Ordering::SeqCst);
            if reserved {
                return true;
            }
        }
    }

    /// Marks `n` events finished.
    pub(crate) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.count.fetch_sub(n, Ordering::SeqCst);
        if before == n {
            self.idle.notify_waiters();
        }
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Wakes every waiter so they can re-check their give-up condition.
    pub(crate) fn wake_all(&self) {
        self.idle.notify_waiters();
        self.room.notify_waiters();
    }

    /// Returns once the count is zero or `give_up()` is true (checked on every wake-up).
    pub(crate) async fn idle(&self, give_up: impl Fn() -> bool) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.get() == 0 || give_up() {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reserve_waits_for_room_and_idle_for_zero() {
        let in_flight = Arc::new(InFlight::new(2));
        assert!(in_flight.try_reserve(2));
        assert!(!in_flight.try_reserve(1));
        let waiter = tokio::spawn({
            let in_flight = Arc::clone(&in_flight);
            async move { in_flight.reserve(1, || false).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no room yet");
        in_flight.release(1);
        assert!(waiter.await.unwrap());
        assert_eq!(in_flight.get(), 2);

        let idle = tokio::spawn({
            let in_flight = Arc::clone(&in_flight);
            async move { in_flight.idle(|| false).await }
        });
        in_flight.release(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!idle.is_finished(), "one event still in flight");
        in_flight.release(1);
        idle.await.unwrap();
    }
}
