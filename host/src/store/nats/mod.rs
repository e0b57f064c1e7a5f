//! The log on NATS JetStream, shared by several evhost processes (`evhost run --nats URL`).
//!
//! - Events: one stream (`EVHOST` by default), subjects `<prefix>.events.<partition>`
//!   (partition = a stable hash of the event's ordering key), interest retention: an
//!   event stays until every subscription's consumer acknowledged it. An event is
//!   published with `Nats-Msg-Id` derived from its `source` + `id`, so publishing it again
//!   within the duplicate window stores nothing and answers `duplicate`.
//! - Deliveries: one durable pull consumer per subscription, shared by every process that
//!   runs it ([`Feed::Shared`]): each delivery goes to one process, which marks what it
//!   holds in progress while it lives and so keeps it until done. A retry is a nak with
//!   the retry policy's delay; a dead letter is published to `<STREAM>_DLQ` with its
//!   failure history, then the delivery is terminated.
//! - Plugin key-value data: one KV bucket per plugin (`<STREAM>_kv_<plugin>`); a failed
//!   attempt's history and the relays' positions in two more.
//! - History: `<STREAM>_HISTORY`, a mirror of the event stream the server keeps for
//!   [`NatsOptions::history`], which the operator's lookups read (see `lookup`).
//!
//! What a delivery's commit guarantees here (unlike the embedded log, effects are not
//! atomic with the acknowledgement): each key-value write and each emitted event is
//! published with a message id made of the delivery and the key (or the emitted event's
//! id, itself derived from the trigger), so a handler that runs again for the same
//! delivery (its process died before the acknowledgement reached the server) re-applies
//! nothing it applied before, as long as it runs again within the duplicate window. A
//! handler run again may read the writes its earlier run applied, and a reader may see a
//! delivery's writes applied one by one.

mod dead_letters;
mod kv;
mod lookup;
mod names;
mod setup;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::Utc;
use futures::future::{BoxFuture, try_join_all};
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use parking_lot::Mutex;

use super::{
    AppendBatch, Appended, CommitOutcome, DeliveryCommit, DeliveryLedger, DeliveryOutcome, EventLog, Feed,
    PendingDelivery, Storage, StorageError,
};
use crate::event::Event;
use crate::monitor::FailureRecord;

/// The header that sends a replayed dead letter to one subscription only: every
/// subscription's consumer sees every event of the stream.
const REPLAY_TO: &str = "Evhost-Replay-To";

/// The header naming the plugin whose handler emitted an event.
const EMITTED_BY: &str = "Evhost-Emitted-By";

/// How to reach the server and shape the streams (`[nats]` in `evhost.toml`).
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The server, `nats://HOST:PORT`.
    pub url: String,
    /// The event stream's name; the dead-letter stream and buckets are named after it.
    pub stream: String,
    /// How many partitions the ordering keys are spread over. Fixed once the stream
    /// exists: a start with another count is refused.
    pub partitions: NonZeroU32,
    /// How long the server remembers a message id: a publish repeated within it is a
    /// duplicate, and a handler run again within it applies its effects once.
    pub duplicate_window: Duration,
    /// The most the event stream may hold; a full stream refuses publishes. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// How long a delivery may go unacknowledged before the server gives it to another
    /// process: longer than the longest handler timeout.
    pub ack_wait: Duration,
    /// A credentials file (`.creds`) to authenticate with.
    pub credentials: Option<PathBuf>,
    /// A token to authenticate with.
    pub token: Option<String>,
    /// How the event stream's storage is compressed; anything but `None` needs
    /// nats-server 2.10 or newer (an older server is refused at start).
    pub compression: Compression,
    /// How long the history stream keeps each event for lookups (`GET /events/{id}`);
    /// zero keeps none, and the lookups answer that they cannot.
    pub history: Duration,
}

/// How a stream's storage is compressed on the server (`[nats] compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as published.
    #[default]
    None,
    /// S2 (Snappy's successor): less disk for a little CPU. nats-server 2.10 or newer.
    S2,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::S2 => "s2",
        })
    }
}

impl NatsOptions {
    /// The defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "EVHOST".to_owned(),
            partitions: NonZeroU32::new(16).expect("non-zero"),
            duplicate_window: Duration::from_secs(120),
            max_bytes: None,
            ack_wait: Duration::from_secs(30),
            credentials: None,
            token: None,
            compression: Compression::None,
            history: Duration::from_secs(3600),
        }
    }
}

/// The event log, ledger, dead-letter queue and key-value data on a NATS JetStream
/// server (see the module docs).
#[derive(Debug)]
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    options: NatsOptions,
    /// The subjects' first token: the stream name in lower case.
    prefix: String,
    events: jetstream::stream::Stream,
    dead_letters: jetstream::stream::Stream,
    /// The event history lookups read, on a connection of their own, unless it is off.
    history: Option<jetstream::stream::Stream>,
    /// Lets at most [`lookup::SCANS`] lookups read the history at once.
    scans: tokio::sync::Semaphore,
    /// Where each replayed dead letter's copy is, by subscription and event (see
    /// [`NatsStore::replayed_copy`]).
    replays: jetstream::kv::Store,
    /// Each failed attempt's record, by subscription and event, until the delivery ends.
    failures: jetstream::kv::Store,
    checkpoints: jetstream::kv::Store,
    /// The plugins' buckets, by namespace, once used.
    buckets: Mutex<HashMap<String, jetstream::kv::Store>>,
    /// Deliveries pulled and not yet acknowledged, nak'd or terminated.
    in_hand: Arc<InHandMap>,
    /// Held shared while a delivery is ended, exclusively while the held ones are
    /// extended: an extension sent after a delayed nak would cancel the delay.
    ending: Arc<tokio::sync::RwLock<()>>,
    dead: AtomicU64,
}

type InHandMap = Mutex<HashMap<(Arc<str>, u64), InHand>>;

/// A delivery this process pulled.
#[derive(Debug, Clone)]
struct InHand {
    message: jetstream::Message,
    /// Delivered before or replayed: it may have a failure history to clear.
    has_history: bool,
}

impl NatsStore {
    /// Connects, checks the server and makes sure the streams and buckets are there with
    /// the settings evhost needs (refusing to start on any difference).
    ///
    /// # Errors
    /// The server cannot be reached, has JetStream off or is older than 2.9, or a stream
    /// differs from what `options` ask for; the message names which.
    pub async fn open(options: NatsOptions) -> anyhow::Result<Self> {
        let client = setup::connect(&options).await?;
        let js = jetstream::new(client.clone());
        let prefix = options.stream.to_lowercase();
        let events = setup::ensure_stream(&js, setup::events_config(&options, &prefix)).await?;
        let mut dead_letters =
            setup::ensure_stream(&js, setup::dead_letters_config(&options, &prefix)).await?;
        let history = if options.history.is_zero() {
            None
        } else {
            // Lookups read the whole history: on their own connection, so that they do not
            // queue in front of the deliveries' acknowledgements.
            let reader = jetstream::new(setup::connect(&options).await?);
            Some(setup::ensure_history(&reader, &options).await?)
        };
        let replays = kv::open_bucket(&js, &options, &format!("{}_replays", options.stream)).await?;
        let failures = kv::open_bucket(&js, &options, &format!("{}_failures", options.stream)).await?;
        let checkpoints = kv::open_bucket(&js, &options, &format!("{}_checkpoints", options.stream)).await?;
        let dead = dead_letters.info().await.map(|info| info.state.messages)?;
        let in_hand = Arc::<InHandMap>::default();
        let ending = Arc::new(tokio::sync::RwLock::new(()));
        tokio::spawn(extend_held(
            Arc::downgrade(&in_hand),
            Arc::clone(&ending),
            options.ack_wait / 3,
        ));
        Ok(Self {
            client,
            js,
            options,
            prefix,
            events,
            dead_letters,
            history,
            scans: tokio::sync::Semaphore::new(lookup::SCANS),
            replays,
            failures,
            checkpoints,
            buckets: Mutex::default(),
            in_hand,
            ending,
            dead: AtomicU64::new(dead),
        })
    }

    /// Every part of the storage seam, on this server; lookups too while the history is
    /// kept.
    pub fn storage(self: &Arc<Self>) -> Storage {
        let storage = Storage::of(Arc::clone(self));
        if self.history.is_some() {
            storage.with_lookup(Arc::clone(self) as Arc<dyn super::EventLookup>)
        } else {
            storage
        }
    }

    /// Lets go of the deliveries this process pulled and did not finish and sends what the
    /// client still buffers (acknowledgements are sent without waiting for an answer): a
    /// process that exits right after would otherwise leave deliveries it finished to be
    /// redelivered. What it lets go of goes to the other processes after the ack wait. It
    /// is not nak'd: nats-server 2.9.10, given a plain nak for several deliveries at once,
    /// was seen here to lose one of them (never offered again) and to offer another twice.
    pub async fn close(&self) {
        let unfinished = {
            let _ending = self.ending.write().await;
            let mut in_hand = self.in_hand.lock();
            let count = in_hand.len();
            in_hand.clear();
            count
        };
        if unfinished > 0 {
            tracing::info!(
                deliveries = unfinished,
                "the deliveries not finished here go to the other hosts after the ack wait"
            );
        }
        if let Err(error) = self.client.flush().await {
            tracing::warn!(%error, "flushing the NATS connection at close failed");
        }
    }

    /// Whether the connection to the server is up.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The subject `event` is published on.
    fn subject(&self, event: &Event) -> String {
        let key = event.ordering_key().unwrap_or(&event.id);
        let partition = names::partition(key, self.options.partitions.get());
        format!("{}.events.{partition}", self.prefix)
    }

    /// Publishes `event` (with `headers`, under `msg_id`) and returns the server's answer,
    /// to be awaited with others: a publish's timeout starts when it is awaited.
    async fn publish_event(
        &self,
        event: &Event,
        msg_id: String,
        mut headers: HeaderMap,
    ) -> Result<jetstream::context::PublishAckFuture, StorageError> {
        let payload = serde_json::to_vec(event)
            .map_err(|error| StorageError::permanent(format!("serializing event {:?}: {error}", event.id)))?;
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        self.js
            .publish_with_headers(self.subject(event), headers, Bytes::from(payload))
            .await
            .map_err(|error| StorageError::transient(format!("publishing to NATS: {error}")))
    }

    /// Pulls the next delivery of `subscription` from `messages`, acknowledging on the way
    /// those that are not its own (a replay for another subscription) and terminating
    /// those that are not events.
    fn take(&self, subscription: &Arc<str>, message: jetstream::Message) -> Option<PendingDelivery> {
        let (offset, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(error) => {
                tracing::warn!(%error, "a JetStream message without delivery information");
                return None;
            }
        };
        let replay_to = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(REPLAY_TO))
            .map(|value| value.as_str().to_owned());
        if replay_to.as_deref().is_some_and(|to| to != &**subscription) {
            tokio::spawn(async move {
                if let Err(error) = message.ack().await {
                    tracing::warn!(%error, "acknowledging a replay for another subscription failed");
                }
            });
            return None;
        }
        let event = match Event::from_json(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(subscription = %subscription, offset, %error, "a message of the event stream is not an event; dropping it");
                tokio::spawn(async move {
                    if let Err(error) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(%error, "terminating a message that is not an event failed");
                    }
                });
                return None;
            }
        };
        let has_history = delivered > 1 || replay_to.is_some();
        self.in_hand.lock().insert(
            (Arc::clone(subscription), offset),
            InHand { message, has_history },
        );
        Some(PendingDelivery {
            offset,
            event: Arc::new(event),
            attempt: u32::try_from(delivered - 1).unwrap_or(0),
            not_before: None,
        })
    }

    /// The failure history key of `event` for `subscription`.
    fn history_key(subscription: &str, event: &Event) -> String {
        let id = names::event_msg_id(&event.source, &event.id);
        format!("{}.{}", names::encode(subscription), names::encode(&id))
    }

    /// The offset of the newest copy of `event` replayed to `subscription`, if its dead
    /// letter was replayed.
    async fn replayed_copy(&self, subscription: &str, event: &Event) -> Result<Option<u64>, StorageError> {
        let key = Self::history_key(subscription, event);
        let value = self
            .replays
            .get(&key)
            .await
            .map_err(|error| StorageError::transient(format!("reading where a replay went: {error}")))?;
        Ok(value.and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok()))
    }

    /// The failures recorded for `event` at `subscription` so far, then `failure`:
    /// stored as the new history and returned.
    async fn add_failure(
        &self,
        subscription: &str,
        event: &Event,
        failure: &FailureRecord,
    ) -> Result<Vec<FailureRecord>, StorageError> {
        let key = Self::history_key(subscription, event);
        let mut history = self.failure_history(&key).await?;
        history.push(failure.clone());
        let value = serde_json::to_vec(&history)
            .map_err(|error| StorageError::permanent(format!("serializing a failure history: {error}")))?;
        self.failures
            .put(&key, Bytes::from(value))
            .await
            .map_err(|error| StorageError::transient(format!("storing a failure history: {error}")))?;
        Ok(history)
    }

    async fn failure_history(&self, key: &str) -> Result<Vec<FailureRecord>, StorageError> {
        match self.failures.get(key).await {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).map_err(|error| {
                StorageError::permanent(format!("reading the failure history {key}: {error}"))
            }),
            Ok(None) => Ok(Vec::new()),
            Err(error) => Err(StorageError::transient(format!(
                "reading a failure history: {error}"
            ))),
        }
    }

    /// Applies one acknowledgement's effects; returns the publishes to await and, per
    /// emitted event, where its answer will be among them.
    async fn publish_effects(
        &self,
        commit: &DeliveryCommit,
        pending: &mut Vec<jetstream::context::PublishAckFuture>,
    ) -> Result<Vec<usize>, StorageError> {
        if !commit.kv_writes.is_empty() {
            let bucket = self.bucket(&commit.kv_namespace).await?;
            for (key, value) in &commit.kv_writes {
                pending
                    .push(kv::publish_write(&self.js, &bucket, commit.offset, key, value.as_deref()).await?);
            }
        }
        let mut emitted = Vec::with_capacity(commit.emitted.len());
        for (event, _) in &commit.emitted {
            let msg_id = names::event_msg_id(&event.source, &event.id);
            let mut headers = HeaderMap::new();
            headers.insert(EMITTED_BY, &*commit.subscription);
            emitted.push(pending.len());
            pending.push(self.publish_event(event, msg_id, headers).await?);
        }
        Ok(emitted)
    }

    /// Ends a delivery this process holds with `kind`. It stays held until the answer is
    /// sent: a call given up halfway (the bus stopped) leaves it held, so the server offers
    /// it again once this process lets go of it, and a call that failed can be made again.
    async fn settle(
        &self,
        key: &(Arc<str>, u64),
        message: &jetstream::Message,
        kind: AckKind,
    ) -> Result<(), StorageError> {
        let _ending = self.ending.read().await;
        if !self.in_hand.lock().contains_key(key) {
            return Ok(());
        }
        message
            .ack_with(kind)
            .await
            .map_err(|error| StorageError::transient(format!("acknowledging to NATS: {error}")))?;
        self.in_hand.lock().remove(key);
        Ok(())
    }
}

impl EventLog for NatsStore {
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<Vec<Appended>, StorageError>> {
        async move {
            let mut acks = Vec::with_capacity(batch.events.len());
            for event in &batch.events {
                let msg_id = names::event_msg_id(&event.source, &event.id);
                acks.push(self.publish_event(event, msg_id, HeaderMap::new()).await?);
            }
            let acks = try_join_all(acks.into_iter().map(IntoFuture::into_future))
                .await
                .map_err(publish_failed)?;
            if let Some((relay, position)) = batch.checkpoint {
                kv::put_checkpoint(&self.checkpoints, &relay, position).await?;
            }
            Ok(acks
                .into_iter()
                .map(|ack| Appended {
                    offset: ack.sequence,
                    duplicate: ack.duplicate,
                })
                .collect())
        }
        .boxed()
    }

    fn pending<'a>(&'a self, subscription: &'a str) -> BoxStream<'a, Result<PendingDelivery, StorageError>> {
        self.pull(subscription, false, 256)
    }

    /// Without `ordered`, pulls from the subscription's one durable consumer, shared by
    /// every process. With it, from one durable consumer per partition, each letting one
    /// delivery out at a time (`max_ack_pending` 1): a key's events never overtake each
    /// other, in one process or across several, and a retried event holds its partition
    /// until it is done.
    fn pull<'a>(
        &'a self,
        subscription: &'a str,
        ordered: bool,
        batch: usize,
    ) -> BoxStream<'a, Result<PendingDelivery, StorageError>> {
        let name: Arc<str> = Arc::from(subscription);
        let consumers = self
            .consumers(subscription, ordered)
            .into_iter()
            .map(|config| self.pull_from(Arc::clone(&name), config, batch));
        futures::stream::select_all(consumers).boxed()
    }

    /// Makes (or checks) the subscription's consumers: the stream keeps an event only for
    /// the consumers that exist when it is published.
    fn prepare<'a>(
        &'a self,
        subscription: &'a str,
        ordered: bool,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            for config in self.consumers(subscription, ordered) {
                setup::ensure_consumer(&self.events, config).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn wants_routes(&self) -> bool {
        false
    }

    fn feed(&self) -> Feed {
        Feed::Shared
    }
}

impl NatsStore {
    /// The durable consumers `subscription` reads from: one, or one per partition if
    /// `ordered`.
    fn consumers(&self, subscription: &str, ordered: bool) -> Vec<jetstream::consumer::pull::Config> {
        let durable = names::encode(subscription);
        if !ordered {
            return vec![setup::consumer_config(
                &self.options,
                &self.prefix,
                &durable,
                None,
            )];
        }
        // `=P` never occurs in an encoded name (`=` is followed by two hex digits there).
        (0..self.options.partitions.get())
            .map(|partition| {
                let durable = format!("{durable}=P{partition}");
                setup::consumer_config(&self.options, &self.prefix, &durable, Some(partition))
            })
            .collect()
    }

    /// The deliveries of the durable consumer `config` describes, made or checked first;
    /// pulling starts again by itself after the connection or the consumer failed.
    fn pull_from(
        &self,
        name: Arc<str>,
        config: jetstream::consumer::pull::Config,
        batch: usize,
    ) -> BoxStream<'_, Result<PendingDelivery, StorageError>> {
        futures::stream::unfold(None::<jetstream::consumer::pull::Stream>, move |mut messages| {
            let (name, config) = (Arc::clone(&name), config.clone());
            async move {
                loop {
                    let stream = match &mut messages {
                        Some(stream) => stream,
                        None => match self.messages(config.clone(), batch).await {
                            Ok(stream) => messages.insert(stream),
                            Err(error) if error.is_transient() => {
                                tracing::warn!(subscription = %name, %error, "cannot pull from NATS yet; trying again");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                            Err(error) => return Some((Err(error), None)),
                        },
                    };
                    match stream.next().await {
                        Some(Ok(message)) => {
                            if let Some(delivery) = self.take(&name, message) {
                                return Some((Ok(delivery), messages));
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(subscription = %name, %error, "pulling from NATS failed; pulling again");
                            messages = None;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        None => messages = None,
                    }
                }
            }
        })
        .boxed()
    }

    /// The durable consumer `config` describes, made or checked, and a stream of its
    /// messages.
    async fn messages(
        &self,
        config: jetstream::consumer::pull::Config,
        batch: usize,
    ) -> Result<jetstream::consumer::pull::Stream, StorageError> {
        let durable = config.durable_name.clone().unwrap_or_default();
        let consumer = setup::ensure_consumer(&self.events, config).await?;
        consumer
            .stream()
            .max_messages_per_batch(batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|error| StorageError::transient(format!("pulling from the consumer {durable}: {error}")))
    }
}

impl DeliveryLedger for NatsStore {
    /// Effects of every acknowledgement of the request are published together and awaited;
    /// only then are the deliveries acknowledged. A request that fails leaves every
    /// delivery of it unacknowledged; made again, it re-publishes under the same message
    /// ids, which the server stores once.
    fn commit<'a>(
        &'a self,
        commits: &'a [DeliveryCommit],
    ) -> BoxFuture<'a, Result<Vec<CommitOutcome>, StorageError>> {
        async move {
            let mut publishes = Vec::new();
            let mut settle = Vec::with_capacity(commits.len());
            let mut emitted_at = Vec::with_capacity(commits.len());
            for commit in commits {
                let key = (Arc::clone(&commit.subscription), commit.offset);
                let held = self.in_hand.lock().get(&key).cloned();
                let Some(held) = held else {
                    settle.push(None);
                    emitted_at.push(Vec::new());
                    continue;
                };
                let kind = match &commit.outcome {
                    DeliveryOutcome::Acked => {
                        emitted_at.push(self.publish_effects(commit, &mut publishes).await?);
                        AckKind::Ack
                    }
                    DeliveryOutcome::Retry {
                        not_before, failure, ..
                    } => {
                        self.add_failure(&commit.subscription, &commit.event, failure)
                            .await?;
                        emitted_at.push(Vec::new());
                        let delay = (*not_before - Utc::now()).to_std().unwrap_or_default();
                        AckKind::Nak(Some(delay))
                    }
                    DeliveryOutcome::DeadLettered { failure } => {
                        let failures = self
                            .add_failure(&commit.subscription, &commit.event, failure)
                            .await?;
                        let delivered = held.message.info().map_or(0, |info| info.delivered);
                        publishes.push(self.publish_dead_letter(commit, failures, delivered).await?);
                        emitted_at.push(Vec::new());
                        AckKind::Term
                    }
                };
                settle.push(Some((key, kind, held)));
            }
            let answers = try_join_all(publishes.into_iter().map(IntoFuture::into_future))
                .await
                .map_err(publish_failed)?;
            let mut outcomes = Vec::with_capacity(commits.len());
            for ((commit, settle), emitted_at) in commits.iter().zip(settle).zip(emitted_at) {
                let Some((key, kind, held)) = settle else {
                    outcomes.push(CommitOutcome::AlreadyDone);
                    continue;
                };
                let ended = !matches!(kind, AckKind::Nak(_));
                if matches!(kind, AckKind::Term) {
                    self.dead.fetch_add(1, Ordering::Relaxed);
                }
                self.settle(&key, &held.message, kind).await?;
                if ended && held.has_history {
                    let history = Self::history_key(&commit.subscription, &commit.event);
                    if let Err(error) = self.failures.delete(&history).await {
                        tracing::warn!(%error, "clearing a finished delivery's failure history failed");
                    }
                }
                outcomes.push(CommitOutcome::Committed {
                    emitted: emitted_at
                        .into_iter()
                        .map(|at| Appended {
                            offset: answers[at].sequence,
                            duplicate: answers[at].duplicate,
                        })
                        .collect(),
                });
            }
            Ok(outcomes)
        }
        .boxed()
    }
}

/// The message a stream answered, `None` if it holds no such message.
fn unless_missing(
    answer: Result<jetstream::message::StreamMessage, jetstream::stream::RawMessageError>,
    stream: &str,
) -> Result<Option<jetstream::message::StreamMessage>, StorageError> {
    match answer {
        Ok(message) => Ok(Some(message)),
        Err(error)
            if matches!(
                error.kind(),
                jetstream::stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(StorageError::transient(format!("reading {stream}: {error}"))),
    }
}

/// A publish the server did not confirm: it may or may not be stored, so the request
/// is to be made again whole (message ids make that safe).
fn publish_failed(error: impl std::fmt::Display) -> StorageError {
    StorageError::transient(format!("NATS did not confirm a publish: {error}"))
}

/// Keeps the deliveries this process holds its own while it lives: every `every` (a
/// third of the ack wait), each is marked in progress, which restarts its ack wait. A
/// delivery may wait in a lane behind others longer than the ack wait; without this the
/// server would give it to another process meanwhile and it would run twice. Once the
/// process dies the marks stop, and the others get its deliveries after the ack wait;
/// once the store is dropped, this ends.
async fn extend_held(
    in_hand: std::sync::Weak<InHandMap>,
    ending: Arc<tokio::sync::RwLock<()>>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(in_hand) = in_hand.upgrade() else { return };
        // No delivery ends while the marks go out: one sent after a delayed nak would
        // cancel the delay.
        let _ending = ending.write().await;
        let held: Vec<_> = in_hand.lock().values().map(|held| held.message.clone()).collect();
        drop(in_hand);
        for message in held {
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::warn!(%error, "marking a delivery in progress failed");
            }
        }
    }
}
