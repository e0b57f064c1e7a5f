//! Looking events up on NATS: `GET /events`, `/events/{id}` and `/events/{id}/trace`.
//!
//! The events come from the history stream, a mirror of the event stream that the server
//! keeps for [`NatsOptions::history`](super::NatsOptions::history) (the event stream
//! itself forgets an event once every subscription acknowledged it). The history has no
//! index by id or correlation — a subject per event would cost the server memory per
//! event for as long as it keeps it — so a lookup reads it through, testing each payload
//! for the id or correlation before parsing it: its time grows with the history's size.
//! Lookups read on a connection of their own, at most [`SCANS`] at once and each for at
//! most [`SCAN_TIMEOUT`], so they do not hold up the deliveries' acknowledgements.
//!
//! Where each delivery stands is worked out from what the server knows now (see
//! [`Seen`]): the subscription consumer's ack floor and what it delivered, whether the
//! event stream still holds the event, the failure history stored while a delivery is
//! retried, the dead letter under `<prefix>.dlq.<subscription>.<offset>`, and, for a
//! replayed dead letter, the offset of its copy (kept in `<STREAM>_replays`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, Message};
use futures::future::{BoxFuture, try_join_all};
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};

use super::{EMITTED_BY, NatsStore, REPLAY_TO, names, unless_missing};
use crate::event::Event;
use crate::store::{
    DeadLetter, DeliveryState, DeliveryView, EventLookup, EventQuery, Offset, StorageError, StoredEvent,
};

/// The most messages one fetch of a scan asks for.
const FETCH: usize = 1000;

/// How many scans of the history may run at once; more wait.
pub(super) const SCANS: usize = 2;

/// The longest a scan may read the history.
const SCAN_TIMEOUT: Duration = Duration::from_secs(30);

/// The first window a newest-first page reads back from its end; each next one doubles,
/// up to [`MAX_WINDOW`].
const FIRST_WINDOW: u64 = 256;
const MAX_WINDOW: u64 = 65_536;

/// The fields of a delivery NATS keeps no record of once it is acknowledged.
const NOT_KEPT: [&str; 4] = ["at", "version", "failures", "last_failure"];

/// One event of the history, as published (replayed copies are not listed).
#[derive(Debug, Clone)]
struct Entry {
    offset: Offset,
    /// The partition its subject names.
    partition: Option<u32>,
    /// When the server stored it.
    published: async_nats::datetime::DateTime,
    event: Arc<Event>,
    emitted_by: Option<String>,
}

/// A subscription's consumer as the server reports it.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Every delivery at or below it is acknowledged.
    ack_floor: u64,
    /// The newest event it delivered.
    delivered: u64,
    /// When the consumer was made: it never received an event the stream had dropped
    /// before.
    created: async_nats::datetime::DateTime,
}

/// What the server's figures say of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Acknowledged (or terminated): gone from the event stream, or at or below the ack
    /// floor.
    Ended,
    /// Not delivered yet.
    Waiting,
    /// Delivered, and not known to be done: acknowledgements above the ack floor are not
    /// reported.
    Delivered,
}

impl Seen {
    /// The delivery of the event at `offset`, which the event stream `still_held` or not,
    /// by a consumer at `progress`.
    fn of(offset: Offset, still_held: bool, progress: Progress) -> Self {
        if !still_held || offset <= progress.ack_floor {
            Self::Ended
        } else if offset > progress.delivered {
            Self::Waiting
        } else {
            Self::Delivered
        }
    }
}

/// What the server knows of every subscription, read once per lookup.
#[derive(Debug, Default)]
struct Consumers {
    /// The subscriptions with a consumer, by name.
    subscriptions: Vec<String>,
    /// The progress of each consumer, by durable name.
    progress: HashMap<String, Progress>,
}

impl Consumers {
    /// The consumer `subscription` reads an event of `partition` from: its partition's
    /// when it is ordered, else its one.
    fn of(&self, subscription: &str, partition: Option<u32>) -> Option<Progress> {
        let durable = names::encode(subscription);
        partition
            .and_then(|partition| self.progress.get(&format!("{durable}=P{partition}")))
            .or_else(|| self.progress.get(&durable))
            .copied()
    }
}

impl NatsStore {
    fn history(&self) -> Result<&jetstream::stream::Stream, StorageError> {
        self.history
            .as_ref()
            .ok_or_else(|| StorageError::permanent("this host keeps no event history on NATS"))
    }

    /// The history's first and last sequence (`(1, 0)` when it is empty).
    async fn history_bounds(&self) -> Result<(u64, u64), StorageError> {
        let state = self
            .history()?
            .get_info()
            .await
            .map_err(|error| StorageError::transient(format!("reading the event history: {error}")))?
            .state;
        Ok((state.first_sequence.max(1), state.last_sequence))
    }

    /// The events of the history from `start` to `end` (not replayed copies) whose
    /// payload contains `needle` (a cheap test before parsing), for which `accept` holds;
    /// stops after `max`. Waits for a turn (at most [`SCANS`] run at once) and gives up
    /// after [`SCAN_TIMEOUT`].
    async fn scan(
        &self,
        start: u64,
        end: u64,
        needle: Option<&[u8]>,
        accept: &mut (dyn FnMut(&Entry) -> bool + Send),
        max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if start > end || max == 0 {
            return Ok(Vec::new());
        }
        let _turn = self
            .scans
            .acquire()
            .await
            .map_err(|_| StorageError::permanent("the store is closed"))?;
        let history = self.history()?;
        let failed = |error: &dyn std::fmt::Display| {
            StorageError::transient(format!("reading the event history: {error}"))
        };
        let consumer = history
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: SCAN_TIMEOUT,
                memory_storage: true,
                ..pull::Config::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let finder = needle.map(memchr::memmem::Finder::new);
        let mut entries = Vec::new();
        let read = async {
            let mut remaining = consumer.cached_info().num_pending;
            'fetching: while remaining > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(FETCH)
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await
                    .map_err(|e| failed(&e))?;
                let mut fetched = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| failed(&e))?;
                    fetched += 1;
                    let info = message.info().map_err(|e| failed(&e))?;
                    let (offset, published) = (info.stream_sequence, info.published);
                    remaining = info.pending;
                    if offset > end {
                        break 'fetching;
                    }
                    if finder
                        .as_ref()
                        .is_some_and(|finder| finder.find(&message.payload).is_none())
                    {
                        continue;
                    }
                    if let Some(entry) = Self::entry(offset, published, &message)
                        && accept(&entry)
                    {
                        entries.push(entry);
                        if entries.len() >= max {
                            break 'fetching;
                        }
                    }
                }
                if fetched == 0 {
                    break;
                }
            }
            Ok::<_, StorageError>(())
        };
        let read = tokio::time::timeout(SCAN_TIMEOUT, read).await.unwrap_or_else(|_| {
            Err(StorageError::transient(format!(
                "reading the event history took longer than {}s; a shorter `[nats] history` keeps lookups quick",
                SCAN_TIMEOUT.as_secs()
            )))
        });
        let name = consumer.cached_info().name.clone();
        if let Err(error) = history.delete_consumer(&name).await {
            tracing::debug!(%error, "removing a lookup's consumer failed; the server drops it once idle");
        }
        read.map(|()| entries)
    }

    /// The event `message` holds; `None` for a replayed copy or a message that is not an
    /// event.
    fn entry(offset: Offset, published: async_nats::datetime::DateTime, message: &Message) -> Option<Entry> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        if header(REPLAY_TO).is_some() {
            return None;
        }
        let event = Event::from_json(&message.payload).ok()?;
        Some(Entry {
            offset,
            partition: message.subject.rsplit('.').next().and_then(|p| p.parse().ok()),
            published,
            event: Arc::new(event),
            emitted_by: header(EMITTED_BY),
        })
    }

    /// Every subscription's consumer on the event stream and its progress.
    async fn consumer_progress(&self) -> Result<Consumers, StorageError> {
        let infos: Vec<_> = self.events.consumers().try_collect().await.map_err(|error| {
            StorageError::transient(format!("listing the subscriptions' consumers: {error}"))
        })?;
        let mut consumers = Consumers::default();
        for info in infos {
            let Some(durable) = info.config.durable_name.clone() else {
                continue;
            };
            let encoded = durable
                .split_once("=P")
                .map_or(durable.as_str(), |(name, _)| name);
            let Some(subscription) = names::decode(encoded) else {
                continue;
            };
            if !consumers.subscriptions.contains(&subscription) {
                consumers.subscriptions.push(subscription);
            }
            consumers.progress.insert(
                durable,
                Progress {
                    ack_floor: info.ack_floor.stream_sequence,
                    delivered: info.delivered.stream_sequence,
                    created: info.created,
                },
            );
        }
        consumers.subscriptions.sort();
        Ok(consumers)
    }

    /// Whether the event stream still holds the event at `offset` (some subscription has
    /// not acknowledged it).
    async fn still_held(&self, offset: Offset) -> Result<bool, StorageError> {
        let message = unless_missing(self.events.get_raw_message(offset).await, "the event stream")?;
        Ok(message.is_some())
    }

    /// The dead letter of `subscription`'s delivery of the event at `offset`, with its id.
    async fn dead_letter_of(
        &self,
        subscription: &str,
        offset: Offset,
    ) -> Result<Option<DeadLetter>, StorageError> {
        let subject = self.dead_letter_subject(subscription, offset);
        let found = self.dead_letters.get_last_raw_message_by_subject(&subject).await;
        unless_missing(found, "the dead-letter stream")?
            .map(Self::dead_letter)
            .transpose()
    }

    /// Where `subscription`'s delivery of `entry` stands: of its newest replayed copy
    /// when the dead letter was replayed.
    async fn delivery(
        &self,
        subscription: &str,
        entry: &Entry,
        consumers: &Consumers,
        held: &HashMap<Offset, bool>,
    ) -> Result<DeliveryView, StorageError> {
        let mut view = DeliveryView {
            subscription: subscription.to_owned(),
            state: DeliveryState::InFlight,
            failures: 0,
            last_failure: None,
            unknown: Vec::new(),
        };
        let Some(progress) = consumers.of(subscription, entry.partition) else {
            view.state = DeliveryState::Unknown {
                reason: "the subscription has no consumer on the server".to_owned(),
            };
            return Ok(view);
        };
        let mut offset = entry.offset;
        let mut seen = Seen::of(offset, held.get(&offset).copied().unwrap_or(false), progress);
        if seen == Seen::Ended
            && let Some(copy) = self.replayed_copy(subscription, &entry.event).await?
            && copy > offset
        {
            offset = copy;
            seen = Seen::of(copy, self.still_held(copy).await?, progress);
        }
        match seen {
            Seen::Ended => {
                if let Some(letter) = self.dead_letter_of(subscription, offset).await? {
                    view.state = DeliveryState::DeadLettered {
                        dead_at: letter.dead_at,
                        dead_letter_id: letter.id,
                    };
                    view.failures = u32::try_from(letter.failures.len()).unwrap_or(u32::MAX);
                    view.last_failure = letter.failures.last().cloned();
                } else if offset == entry.offset && progress.created > entry.published {
                    view.state = DeliveryState::Unknown {
                        reason: "the subscription was made after the event was published; the server does \
                                 not record whether it received it"
                            .to_owned(),
                    };
                } else {
                    view.state = DeliveryState::Acknowledged;
                    view.unknown = NOT_KEPT.map(str::to_owned).to_vec();
                }
            }
            Seen::Waiting => {
                view.state = DeliveryState::Pending {
                    attempt: 0,
                    not_before: None,
                };
            }
            Seen::Delivered => {
                let failures = self
                    .failure_history(&Self::history_key(subscription, &entry.event))
                    .await?;
                if failures.is_empty() {
                    view.unknown = ["attempt", "failures", "last_failure"]
                        .map(str::to_owned)
                        .to_vec();
                } else {
                    let attempt = u32::try_from(failures.len()).unwrap_or(u32::MAX);
                    view.state = DeliveryState::Pending {
                        attempt,
                        not_before: None,
                    };
                    view.failures = attempt;
                    view.last_failure = failures.last().cloned();
                    view.unknown = vec!["not_before".to_owned()];
                }
            }
        }
        Ok(view)
    }

    /// `entries` as stored events, each with a delivery per subscription that has a
    /// consumer (read concurrently).
    async fn stored(&self, entries: Vec<Entry>) -> Result<Vec<StoredEvent>, StorageError> {
        let consumers = self.consumer_progress().await?;
        let held: HashMap<Offset, bool> = try_join_all(entries.iter().map(|entry| async move {
            Ok::<_, StorageError>((entry.offset, self.still_held(entry.offset).await?))
        }))
        .await?
        .into_iter()
        .collect();
        try_join_all(entries.into_iter().map(|entry| {
            let (consumers, held) = (&consumers, &held);
            async move {
                let deliveries = try_join_all(
                    consumers
                        .subscriptions
                        .iter()
                        .map(|subscription| self.delivery(subscription, &entry, consumers, held)),
                )
                .await?;
                Ok(StoredEvent {
                    offset: entry.offset,
                    event: entry.event,
                    emitted_by: entry.emitted_by,
                    deliveries,
                })
            }
        }))
        .await
    }

    /// A page of events newest first, ending before `before` (or at the end).
    async fn newest_first(
        &self,
        before: Option<Offset>,
        accept: &mut (dyn FnMut(&Entry) -> bool + Send),
        limit: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let (first, last) = self.history_bounds().await?;
        let mut end = before.map_or(last, |before| before.saturating_sub(1).min(last));
        let mut window = FIRST_WINDOW.max(limit as u64 * 2);
        let mut page = Vec::new();
        while page.len() < limit && end >= first {
            let start = end.saturating_sub(window - 1).max(first);
            let mut found = self.scan(start, end, None, accept, usize::MAX).await?;
            found.reverse();
            page.extend(found.into_iter().take(limit - page.len()));
            if start == first {
                break;
            }
            end = start - 1;
            window = (window * 2).min(MAX_WINDOW);
        }
        Ok(page)
    }
}

/// `text` as it appears inside the JSON of an event: quoted and escaped.
fn json_needle(text: &str) -> Vec<u8> {
    serde_json::to_vec(text).unwrap_or_else(|_| text.as_bytes().to_vec())
}

/// `entries` without an event published again after the duplicate window (the server
/// stored it twice): the first of each `source` + `id`.
fn first_of_each(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|entry| seen.insert((entry.event.source.clone(), entry.event.id.clone())))
        .collect()
}

impl EventLookup for NatsStore {
    fn find<'a>(
        &'a self,
        id: &'a str,
        source: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StorageError>> {
        async move {
            let (first, last) = self.history_bounds().await?;
            let needle = json_needle(id);
            let mut accept = |entry: &Entry| {
                entry.event.id == id && source.is_none_or(|source| entry.event.source == source)
            };
            let entries = self
                .scan(first, last, Some(&needle), &mut accept, usize::MAX)
                .await?;
            self.stored(first_of_each(entries)).await
        }
        .boxed()
    }

    fn page(&self, query: EventQuery) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>> {
        async move {
            let mut accept = |entry: &Entry| {
                query.event_type.as_ref().is_none_or(|ty| *ty == entry.event.ty)
                    && query
                        .subject
                        .as_ref()
                        .is_none_or(|subject| Some(subject.as_str()) == entry.event.subject.as_deref())
            };
            let entries = match query.after {
                Some(after) => {
                    let Some(start) = after.checked_add(1) else {
                        return Ok(Vec::new());
                    };
                    let (first, last) = self.history_bounds().await?;
                    self.scan(start.max(first), last, None, &mut accept, query.limit)
                        .await?
                }
                None => self.newest_first(query.before, &mut accept, query.limit).await?,
            };
            self.stored(entries).await
        }
        .boxed()
    }

    fn correlated<'a>(
        &'a self,
        correlation: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, StorageError>> {
        async move {
            let (first, last) = self.history_bounds().await?;
            let needle = json_needle(correlation);
            let mut accept = |entry: &Entry| {
                entry.event.correlation_id() == Some(correlation) || entry.event.id == correlation
            };
            let mut entries = self
                .scan(first, last, Some(&needle), &mut accept, usize::MAX)
                .await?;
            entries = first_of_each(entries);
            entries.truncate(limit);
            self.stored(entries).await
        }
        .boxed()
    }

    fn routes_known(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_placed_by_the_consumers_ack_floor_and_what_it_delivered() {
        let progress = Progress {
            ack_floor: 10,
            delivered: 15,
            created: async_nats::datetime::DateTime::UNIX_EPOCH,
        };
        assert_eq!(Seen::of(9, true, progress), Seen::Ended);
        assert_eq!(
            Seen::of(10, true, progress),
            Seen::Ended,
            "the floor itself is acknowledged"
        );
        assert_eq!(Seen::of(11, true, progress), Seen::Delivered);
        assert_eq!(
            Seen::of(15, true, progress),
            Seen::Delivered,
            "the newest delivered"
        );
        assert_eq!(Seen::of(16, true, progress), Seen::Waiting);
        assert_eq!(
            Seen::of(12, false, progress),
            Seen::Ended,
            "gone from the stream: every subscription acknowledged it"
        );
    }

    #[test]
    fn a_needle_is_the_text_as_json_writes_it() {
        assert_eq!(json_needle("pay-1"), b"\"pay-1\"");
        assert_eq!(json_needle("a\"b"), b"\"a\\\"b\"");
    }
}
