//! Looking events up on NATS: `GET /events`, `/events/{id}` and `/events/{id}/trace`.
//!
//! The events come from the history stream, a mirror of the event stream that the server
//! keeps for [`NatsOptions::history`](super::NatsOptions::history) (the event stream
//! itself forgets an event once every subscription acknowledged it). The history has no
//! index by id or correlation — a subject per event would cost the server memory per
//! event for as long as it keeps it — so a lookup reads it through, testing each payload
//! for the id or correlation before parsing it: its time grows with the history's size.
//!
//! Where each delivery stands is worked out from what the server knows now:
//!
//! - a dead letter under `<prefix>.dlq.<subscription>.<offset>`: dead-lettered;
//! - the event gone from the event stream, or at or below the subscription consumer's
//!   ack floor: acknowledged (handled, or dead-lettered and since purged; when, and by
//!   which version, NATS does not record);
//! - above what the consumer delivered so far: pending, never attempted;
//! - delivered and not yet below the ack floor: retrying when a failure history is
//!   stored for it, else in flight (running, or handled and acknowledged out of order:
//!   the server does not say which).
//!
//! A dead letter that was replayed is a new message of the stream for its subscription
//! (`Evhost-Replay-To`); that subscription's state is read from the newest such copy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, Message};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};

use super::{EMITTED_BY, NatsStore, REPLAY_TO, names};
use crate::event::Event;
use crate::store::{
    DeadLetter, DeliveryState, DeliveryView, EventLookup, EventQuery, Offset, StorageError, StoredEvent,
};

/// The most messages one fetch of a scan asks for.
const FETCH: usize = 1000;

/// The first window a newest-first page reads back from its end; each next one doubles,
/// up to [`MAX_WINDOW`].
const FIRST_WINDOW: u64 = 256;
const MAX_WINDOW: u64 = 65_536;

/// Which messages of the history a scan parses.
#[derive(Debug, Clone, Copy)]
enum Prefilter<'a> {
    /// Every one.
    All,
    /// Those whose payload contains these bytes.
    Containing(&'a [u8]),
    /// Replayed copies only (they carry [`REPLAY_TO`]).
    Replays,
}

/// One message of the history: an event as published, or a replayed copy of one.
#[derive(Debug, Clone)]
struct Entry {
    offset: Offset,
    /// The partition its subject names.
    partition: Option<u32>,
    event: Arc<Event>,
    emitted_by: Option<String>,
    /// The one subscription a replayed copy is for.
    replay_to: Option<String>,
}

/// A subscription's consumer as the server reports it.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Every delivery at or below it is acknowledged.
    ack_floor: u64,
    /// The newest event it delivered.
    delivered: u64,
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
        let mut history = self.history()?.clone();
        let state = history
            .info()
            .await
            .map_err(|error| StorageError::transient(format!("reading the event history: {error}")))?
            .state
            .clone();
        Ok((state.first_sequence.max(1), state.last_sequence))
    }

    /// The history's messages from `start` to `end` that `prefilter` lets through (a
    /// cheap test before parsing), parsed, for which `accept` holds; stops after `max`.
    async fn scan(
        &self,
        start: u64,
        end: u64,
        prefilter: Prefilter<'_>,
        accept: &mut (dyn FnMut(&Entry) -> bool + Send),
        max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut entries = Vec::new();
        if start > end || max == 0 {
            return Ok(entries);
        }
        let failed = |error: &dyn std::fmt::Display| {
            StorageError::transient(format!("reading the event history: {error}"))
        };
        let history = self.history()?;
        let consumer = history
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..pull::Config::default()
            })
            .await
            .map_err(|e| failed(&e))?;
        let finder = match prefilter {
            Prefilter::Containing(needle) => Some(memchr::memmem::Finder::new(needle)),
            Prefilter::All | Prefilter::Replays => None,
        };
        let mut remaining = consumer.cached_info().num_pending;
        let read = async {
            'fetching: while remaining > 0 {
                let mut batch = consumer
                    .fetch()
                    .max_messages(FETCH)
                    .messages()
                    .await
                    .map_err(|e| failed(&e))?;
                let mut fetched = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| failed(&e))?;
                    fetched += 1;
                    let info = message.info().map_err(|e| failed(&e))?;
                    let offset = info.stream_sequence;
                    remaining = info.pending;
                    if offset > end {
                        break 'fetching;
                    }
                    let skip = match (&finder, prefilter) {
                        (Some(finder), _) => finder.find(&message.payload).is_none(),
                        (None, Prefilter::Replays) => message
                            .headers
                            .as_ref()
                            .is_none_or(|headers| headers.get(REPLAY_TO).is_none()),
                        (None, _) => false,
                    };
                    if skip {
                        continue;
                    }
                    if let Some(entry) = Self::entry(offset, &message)
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
        }
        .await;
        let name = consumer.cached_info().name.clone();
        if let Err(error) = history.delete_consumer(&name).await {
            tracing::debug!(%error, "removing a lookup's consumer failed; the server drops it once idle");
        }
        read.map(|()| entries)
    }

    /// The event `message` holds, `None` if it holds none.
    fn entry(offset: Offset, message: &Message) -> Option<Entry> {
        let event = Event::from_json(&message.payload).ok()?;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        Some(Entry {
            offset,
            partition: message.subject.rsplit('.').next().and_then(|p| p.parse().ok()),
            event: Arc::new(event),
            emitted_by: header(EMITTED_BY),
            replay_to: header(REPLAY_TO),
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
                },
            );
        }
        consumers.subscriptions.sort();
        Ok(consumers)
    }

    /// Whether the event stream still holds the event at `offset` (some subscription has
    /// not acknowledged it).
    async fn still_pending(&self, offset: Offset) -> Result<bool, StorageError> {
        match self.events.get_raw_message(offset).await {
            Ok(_) => Ok(true),
            Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(false),
            Err(error) => Err(StorageError::transient(format!(
                "reading the event stream: {error}"
            ))),
        }
    }

    /// The dead letter of `subscription`'s delivery of the event at `offset`, with its id.
    async fn dead_letter_of(
        &self,
        subscription: &str,
        offset: Offset,
    ) -> Result<Option<DeadLetter>, StorageError> {
        let subject = self.dead_letter_subject(subscription, offset);
        match self.dead_letters.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let mut letter: DeadLetter = serde_json::from_slice(&message.payload).map_err(|error| {
                    StorageError::permanent(format!(
                        "dead letter {} cannot be read: {error}",
                        message.sequence
                    ))
                })?;
                letter.id = message.sequence;
                Ok(Some(letter))
            }
            Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(error) => Err(StorageError::transient(format!(
                "reading the dead-letter stream: {error}"
            ))),
        }
    }

    /// Where `subscription`'s delivery of `copy` (the event, or its replay for it) stands.
    async fn delivery(
        &self,
        subscription: &str,
        copy: &Entry,
        consumers: &Consumers,
    ) -> Result<DeliveryView, StorageError> {
        let mut view = DeliveryView {
            subscription: subscription.to_owned(),
            state: DeliveryState::InFlight,
            failures: 0,
            last_failure: None,
            unknown: Vec::new(),
        };
        let Some(progress) = consumers.of(subscription, copy.partition) else {
            view.state = DeliveryState::Unknown {
                reason: "the subscription has no consumer on the server".to_owned(),
            };
            return Ok(view);
        };
        let pending = self.still_pending(copy.offset).await?;
        if !pending || copy.offset <= progress.ack_floor {
            if let Some(letter) = self.dead_letter_of(subscription, copy.offset).await? {
                view.state = DeliveryState::DeadLettered {
                    dead_at: letter.dead_at,
                    dead_letter_id: letter.id,
                };
                view.failures = u32::try_from(letter.failures.len()).unwrap_or(u32::MAX);
                view.last_failure = letter.failures.last().cloned();
            } else {
                view.state = DeliveryState::Acknowledged;
                view.unknown = vec!["at".to_owned(), "version".to_owned()];
            }
        } else if copy.offset > progress.delivered {
            view.state = DeliveryState::Pending {
                attempt: 0,
                not_before: None,
            };
        } else {
            let failures = self
                .failure_history(&Self::history_key(subscription, &copy.event))
                .await?;
            if failures.is_empty() {
                view.unknown = vec!["attempt".to_owned()];
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
        Ok(view)
    }

    /// `entries` (events and replayed copies) as stored events: each event (not a copy)
    /// with a delivery per subscription, read from its newest copy for that subscription.
    async fn stored(&self, entries: Vec<Entry>) -> Result<Vec<StoredEvent>, StorageError> {
        let consumers = self.consumer_progress().await?;
        let (copies, events): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|entry| entry.replay_to.is_some());
        let mut stored = Vec::with_capacity(events.len());
        for entry in events {
            let mut deliveries = Vec::with_capacity(consumers.subscriptions.len());
            for subscription in &consumers.subscriptions {
                let copy = copies
                    .iter()
                    .filter(|copy| {
                        copy.replay_to.as_deref() == Some(subscription.as_str())
                            && copy.event.id == entry.event.id
                            && copy.event.source == entry.event.source
                    })
                    .max_by_key(|copy| copy.offset)
                    .unwrap_or(&entry);
                deliveries.push(self.delivery(subscription, copy, &consumers).await?);
            }
            stored.push(StoredEvent {
                offset: entry.offset,
                event: entry.event,
                emitted_by: entry.emitted_by,
                deliveries,
            });
        }
        Ok(stored)
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
            let mut found = self.scan(start, end, Prefilter::All, accept, usize::MAX).await?;
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
                .scan(
                    first,
                    last,
                    Prefilter::Containing(&needle),
                    &mut accept,
                    usize::MAX,
                )
                .await?;
            let mut found = self.stored(first_of_each(entries)).await?;
            found.sort_by_key(|stored| stored.offset);
            Ok(found)
        }
        .boxed()
    }

    fn page(&self, query: EventQuery) -> BoxFuture<'_, Result<Vec<StoredEvent>, StorageError>> {
        async move {
            let mut accept = |entry: &Entry| {
                entry.replay_to.is_none()
                    && query.event_type.as_ref().is_none_or(|ty| *ty == entry.event.ty)
                    && query
                        .subject
                        .as_ref()
                        .is_none_or(|subject| Some(subject.as_str()) == entry.event.subject.as_deref())
            };
            let entries = match query.after {
                Some(after) => {
                    let (first, last) = self.history_bounds().await?;
                    self.scan(
                        (after + 1).max(first),
                        last,
                        Prefilter::All,
                        &mut accept,
                        query.limit,
                    )
                    .await?
                }
                None => self.newest_first(query.before, &mut accept, query.limit).await?,
            };
            let copies = self.replays_of(&entries).await?;
            let mut stored = self.stored(entries.into_iter().chain(copies).collect()).await?;
            if query.after.is_none() {
                stored.sort_by_key(|stored| std::cmp::Reverse(stored.offset));
            }
            Ok(stored)
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
            let entries = self
                .scan(
                    first,
                    last,
                    Prefilter::Containing(&needle),
                    &mut accept,
                    usize::MAX,
                )
                .await?;
            let mut entries = first_of_each(entries);
            // Keep the first `limit` events with their copies.
            let mut events = 0;
            entries.retain(|entry| {
                if entry.replay_to.is_some() {
                    return true;
                }
                events += 1;
                events <= limit
            });
            self.stored(entries).await
        }
        .boxed()
    }

    fn routes_known(&self) -> bool {
        false
    }
}

impl NatsStore {
    /// The replayed copies of `events`, read from the history after the first of them.
    async fn replays_of(&self, events: &[Entry]) -> Result<Vec<Entry>, StorageError> {
        let Some(start) = events.iter().map(|entry| entry.offset + 1).min() else {
            return Ok(Vec::new());
        };
        let (_, last) = self.history_bounds().await?;
        let wanted: std::collections::HashSet<(&str, &str)> = events
            .iter()
            .map(|entry| (entry.event.source.as_str(), entry.event.id.as_str()))
            .collect();
        let mut accept =
            |copy: &Entry| wanted.contains(&(copy.event.source.as_str(), copy.event.id.as_str()));
        self.scan(start, last, Prefilter::Replays, &mut accept, usize::MAX)
            .await
    }
}

/// `entries` without an event published again after the duplicate window (the server
/// stored it twice): the first of each `source` + `id`, and every replayed copy.
fn first_of_each(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|entry| {
            entry.replay_to.is_some() || seen.insert((entry.event.source.clone(), entry.event.id.clone()))
        })
        .collect()
}
