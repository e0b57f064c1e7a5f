//! The one writer thread and its group commit.
//!
//! Writes arrive as [`Message`]s on a channel. The thread blocks for the first one, takes
//! every one queued behind it (up to a bound), applies them all in one transaction and
//! commits — one fsync — before answering any. While it syncs, the next group queues up,
//! so the busier the store, the more requests share a commit.
//!
//! Only this thread writes, so nothing here waits for a lock another writer holds, and the
//! in-memory subscription ids and counters cannot race.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::read::{DEAD_LETTER_ID, format_time, to_offset, to_pos};
use super::schema::{ACKED, DEAD, PENDING, PURGED, classify};
use super::{Appended, CommitOutcome, DeadLetterFilter, DeliveryCommit, DeliveryOutcome, Shared, StoreError};
use crate::event::Event;
use crate::monitor::FailureRecord;

/// The statements run once per event, as constants: the statement cache is keyed by their
/// text, so formatting them in would cost an allocation per event. The states are
/// [`PENDING`] (0) and [`ACKED`] (1).
const INSERT_PENDING: &str =
    "INSERT INTO deliveries (sub, pos, state) VALUES (?1, ?2, 0) ON CONFLICT DO NOTHING";
const ACK_PENDING: &str = "UPDATE deliveries SET state = 1, not_before = NULL, done_at = ?3, version = ?4
     WHERE sub = ?1 AND pos = ?2 AND state = 0";
const INSERT_EVENT: &str =
    "INSERT INTO events (source, id, event, correlation, emitter) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (source, id) DO NOTHING";

/// How long the writer waits for more requests before committing a group of several.
/// Measured with `bench_durable`: 1 ms instead of 200 µs put ~1.3× the writes in each
/// commit and took the writer from ~15 to ~12.5 µs of CPU per event, without raising the
/// publish p99.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// The most of the JSON buffer the writer keeps between events; typical events take a
/// few hundred bytes.
const KEPT_JSON_BYTES: usize = 64 * 1024;

/// What the store handle sends the writer.
pub(super) enum Message {
    /// A write to apply and answer.
    Request(Request),
    /// Stop after answering everything queued before this; answered when stopped.
    Shutdown(oneshot::Sender<()>),
}

/// A write and where its answer goes.
pub(super) struct Request {
    pub(super) op: Op,
    pub(super) reply: Reply,
}

/// Where an answer goes: the task awaiting it.
pub(super) struct Reply(pub(super) oneshot::Sender<Result<Answer, StoreError>>);

impl Reply {
    fn send(self, answer: Result<Answer, StoreError>) {
        // A caller that stopped waiting (a dropped future) needs no answer: its write
        // stands or not like any other.
        let _ = self.0.send(answer);
    }
}

/// One write. Events and commits travel as the caller made them: the writer serializes
/// what it stores, events into one buffer it reuses, which costs it less than freeing a
/// string per event that another thread allocated (measured with `bench_durable`).
pub(super) enum Op {
    Append {
        events: Vec<Arc<Event>>,
        routes: Vec<Vec<Arc<str>>>,
        checkpoint: Option<(String, i64)>,
    },
    /// Deliveries' commits, applied in order as one request: all or none. A failed
    /// delivery's commit carries no effects (checked by the store handle).
    Commits(Vec<DeliveryCommit>),
    Kv {
        namespace: String,
        writes: Vec<(String, Option<Vec<u8>>)>,
    },
    Replay {
        filter: DeadLetterFilter,
        /// Only dead letters of these subscriptions, if given.
        subscriptions: Option<Vec<String>>,
    },
    Purge {
        filter: DeadLetterFilter,
    },
    /// Panics in the writer, to test that callers get an error instead of hanging.
    #[cfg(test)]
    Panic,
    /// Tells `entered`, then blocks the writer inside its transaction until `release` is
    /// sent to or dropped, to test grouping and that reads do not wait for the writer.
    #[cfg(test)]
    Hold {
        entered: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
    },
}

impl Op {
    /// How much of a group's budget this write takes: its events, at least 1.
    fn weight(&self) -> usize {
        match self {
            Self::Append { events, .. } => events.len().max(1),
            Self::Commits(commits) => commits.iter().map(|c| c.emitted.len() + 1).sum(),
            _ => 1,
        }
    }
}

/// The writer's answer; the variant matches the [`Op`].
#[derive(Debug)]
pub(super) enum Answer {
    Appended(Vec<Appended>),
    Commits(Vec<CommitOutcome>),
    Done,
    Count(u64),
    /// Replayed deliveries: subscription, position, event JSON.
    Replayed(Vec<(String, i64, String)>),
}

/// Changes to the counters a transaction makes, applied once it commits.
#[derive(Default)]
struct Delta {
    events: u64,
    /// The largest offset the transaction gave an event (0 for none).
    last_offset: u64,
    pending: i64,
    dead_letters: i64,
}

/// Why a group's transaction did not commit.
enum Failure {
    /// One request failed; the others may be fine on their own.
    Request(StoreError),
    /// BEGIN or COMMIT failed: nothing of the group is stored.
    Transaction(rusqlite::Error),
}

/// The writer thread's state.
pub(super) struct Writer {
    conn: Connection,
    /// The database file, for errors.
    path: PathBuf,
    /// Subscription name → id. Entries added in a transaction that rolls back would name
    /// rows that no longer exist, so a rollback clears it.
    subscriptions: HashMap<String, i64>,
    /// Handler version → id, cleared by a rollback like `subscriptions`.
    versions: HashMap<Arc<str>, i64>,
    shared: Arc<Shared>,
    max_group_events: usize,
    /// The JSON of the event being inserted; reused, so inserting allocates nothing.
    json: Vec<u8>,
}

impl Writer {
    pub(super) fn new(conn: Connection, path: PathBuf, shared: Arc<Shared>, max_group_events: usize) -> Self {
        Self {
            conn,
            path,
            subscriptions: HashMap::new(),
            versions: HashMap::new(),
            shared,
            max_group_events,
            json: Vec::new(),
        }
    }

    /// Serves requests until every sender is gone, a shutdown arrives or a request panics.
    pub(super) fn run(mut self, messages: mpsc::Receiver<Message>) {
        let mut shutdown = None;
        while shutdown.is_none() {
            let Ok(first) = messages.recv() else { break };
            let mut group = Vec::new();
            let mut weight = 0;
            let mut next = Some(first);
            let mut lingered = false;
            loop {
                while let Some(message) = next.take() {
                    match message {
                        Message::Request(request) => {
                            weight += request.op.weight();
                            group.push(request);
                        }
                        Message::Shutdown(done) => {
                            shutdown = Some(done);
                            break;
                        }
                    }
                    if weight < self.max_group_events {
                        next = messages.try_recv().ok();
                    }
                }
                // Several requests queued means load: a moment's wait lets the group grow,
                // and fewer, larger transactions cost less per write (measured: about twice
                // the writes per commit and ~10 % less CPU per event). A lone request is
                // committed at once.
                if lingered || shutdown.is_some() || group.len() < 2 || weight >= self.max_group_events {
                    break;
                }
                lingered = true;
                std::thread::sleep(LINGER);
                next = messages.try_recv().ok();
            }
            if group.is_empty() {
                continue;
            }
            if catch_unwind(AssertUnwindSafe(|| self.process(&mut group))).is_err() {
                // Returning drops the unanswered requests (their callers get
                // `WriterPanicked`), the channel (later sends fail the same way) and the
                // connection, which rolls back the open transaction.
                tracing::error!(path = %self.path.display(), "the store's writer thread panicked; writes fail until the store is reopened");
                return;
            }
        }
        // Requests queued behind a shutdown are dropped with the channel: their callers
        // get `Closed`.
        drop(messages);
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    /// Commits `group` in one transaction and answers every request in it.
    fn process(&mut self, group: &mut Vec<Request>) {
        match self.transaction(group) {
            Ok(answers) => {
                for (request, answer) in group.drain(..).zip(answers) {
                    request.reply.send(Ok(answer));
                }
            }
            Err(Failure::Request(error)) if group.len() == 1 => {
                if let Some(request) = group.pop() {
                    request.reply.send(Err(error));
                }
            }
            Err(Failure::Request(_)) => {
                // Isolate the failing request: each one again, in a transaction of its own.
                for request in std::mem::take(group) {
                    self.process(&mut vec![request]);
                }
            }
            Err(Failure::Transaction(error)) => {
                tracing::error!(error = %error, requests = group.len(), "a store transaction failed");
                let error = Arc::new(error);
                for request in group.drain(..) {
                    request
                        .reply
                        .send(Err(StoreError::Transaction(Arc::clone(&error))));
                }
            }
        }
    }

    /// Applies `group` in one transaction and commits it, or rolls everything back.
    fn transaction(&mut self, group: &[Request]) -> Result<Vec<Answer>, Failure> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(Failure::Transaction)?;
        let mut delta = Delta::default();
        let mut answers = Vec::with_capacity(group.len());
        for request in group {
            match self.apply(&request.op, &mut delta) {
                Ok(answer) => answers.push(answer),
                Err(error) => {
                    self.rollback();
                    return Err(Failure::Request(match error {
                        StoreError::Sqlite(error) => classify(&self.path, error),
                        other => other,
                    }));
                }
            }
        }
        if let Err(error) = self.conn.execute_batch("COMMIT") {
            self.rollback();
            return Err(Failure::Transaction(error));
        }
        let s = &self.shared;
        s.events.fetch_add(delta.events, Ordering::Relaxed);
        // After COMMIT: a reader of the horizon finds these events in the log.
        s.last_offset.fetch_max(delta.last_offset, Ordering::Release);
        // Two's complement: adding a negative delta as u64 subtracts it.
        s.pending.fetch_add(delta.pending as u64, Ordering::Relaxed);
        s.dead_letters
            .fetch_add(delta.dead_letters as u64, Ordering::Relaxed);
        s.record_group(group.len());
        Ok(answers)
    }

    fn rollback(&mut self) {
        // A failed COMMIT may already have rolled back; ROLLBACK would then fail.
        if !self.conn.is_autocommit()
            && let Err(error) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %error, "rolling back a store transaction failed");
        }
        self.subscriptions.clear();
        self.versions.clear();
    }

    fn apply(&mut self, op: &Op, delta: &mut Delta) -> Result<Answer, StoreError> {
        match op {
            Op::Append {
                events,
                routes,
                checkpoint,
            } => {
                let mut appended = Vec::with_capacity(events.len());
                for (i, event) in events.iter().enumerate() {
                    let routes = routes.get(i).map(Vec::as_slice).unwrap_or_default();
                    appended.push(self.insert_event(event, routes, None, delta)?);
                }
                if let Some((relay, position)) = checkpoint {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO checkpoints (relay, position) VALUES (?1, ?2)
                             ON CONFLICT (relay) DO UPDATE SET position = excluded.position",
                        )?
                        .execute(params![relay, position])?;
                }
                Ok(Answer::Appended(appended))
            }
            Op::Commits(commits) => commits
                .iter()
                .map(|commit| self.commit(commit, delta))
                .collect::<Result<_, _>>()
                .map(Answer::Commits),
            Op::Kv { namespace, writes } => {
                self.kv_writes(namespace, writes)?;
                Ok(Answer::Done)
            }
            Op::Replay {
                filter,
                subscriptions,
            } => {
                let mut replayed = Vec::new();
                for (sub, name, pos) in self.dead_letters(filter)? {
                    if subscriptions.as_ref().is_some_and(|names| !names.contains(&name)) {
                        continue;
                    }
                    self.conn
                        .prepare_cached(&format!(
                            "UPDATE deliveries SET state = {PENDING}, attempt = 0, not_before = NULL, dead_at = NULL
                             WHERE sub = ?1 AND pos = ?2"
                        ))?
                        .execute(params![sub, pos])?;
                    let json: String = self
                        .conn
                        .prepare_cached("SELECT event FROM events WHERE pos = ?1")?
                        .query_row([pos], |row| row.get(0))?;
                    replayed.push((name, pos, json));
                }
                delta.pending += replayed.len() as i64;
                delta.dead_letters -= replayed.len() as i64;
                Ok(Answer::Replayed(replayed))
            }
            Op::Purge { filter } => {
                let letters = self.dead_letters(filter)?;
                for (sub, _, pos) in &letters {
                    self.conn
                        .prepare_cached("DELETE FROM failures WHERE sub = ?1 AND pos = ?2")?
                        .execute(params![sub, pos])?;
                    self.conn
                        .prepare_cached(&format!(
                            "UPDATE deliveries SET state = {PURGED} WHERE sub = ?1 AND pos = ?2"
                        ))?
                        .execute(params![sub, pos])?;
                }
                delta.dead_letters -= letters.len() as i64;
                Ok(Answer::Count(letters.len() as u64))
            }
            #[cfg(test)]
            Op::Panic => panic!("writer panic requested by a test"),
            #[cfg(test)]
            Op::Hold { entered, release } => {
                let _ = entered.send(());
                let _ = release.recv();
                Ok(Answer::Done)
            }
        }
    }

    /// Stores `event` unless its `(source, id)` is known, with a pending delivery per
    /// route; `emitter` is the subscription whose handler emitted it.
    fn insert_event(
        &mut self,
        e: &Event,
        routes: &[Arc<str>],
        emitter: Option<i64>,
        delta: &mut Delta,
    ) -> Result<Appended, StoreError> {
        self.json.clear();
        // One large event must not keep its buffer's size for the writer's lifetime.
        self.json.shrink_to(KEPT_JSON_BYTES);
        serde_json::to_writer(&mut self.json, e).expect("an event always serializes to JSON");
        // serde_json writes UTF-8 only; stored as TEXT, as JSON is.
        let json = std::str::from_utf8(&self.json).expect("serde_json writes UTF-8");
        let inserted = self.conn.prepare_cached(INSERT_EVENT)?.execute(params![
            e.source,
            e.id,
            json,
            e.correlation_id(),
            emitter
        ])?;
        if inserted == 0 {
            let original: i64 = self
                .conn
                .prepare_cached("SELECT pos FROM events WHERE source = ?1 AND id = ?2")?
                .query_row(params![e.source, e.id], |row| row.get(0))?;
            return Ok(Appended {
                offset: to_offset(original),
                duplicate: true,
            });
        }
        let pos = self.conn.last_insert_rowid();
        delta.events += 1;
        delta.last_offset = delta.last_offset.max(to_offset(pos));
        for route in routes {
            let sub = self.subscription_id(route)?;
            // DO NOTHING: a subscription listed twice still gets one delivery.
            let created = self
                .conn
                .prepare_cached(INSERT_PENDING)?
                .execute(params![sub, pos])?;
            delta.pending += created as i64;
        }
        Ok(Appended {
            offset: to_offset(pos),
            duplicate: false,
        })
    }

    /// The dead deliveries matching `filter`: subscription id and name, position.
    fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT d.sub, s.name, d.pos
             FROM deliveries d INDEXED BY deliveries_dead JOIN subscriptions s ON s.id = d.sub
             WHERE d.state = {DEAD} AND (?1 IS NULL OR s.name = ?1)
               AND (?2 IS NULL OR ({DEAD_LETTER_ID}) = ?2)
             ORDER BY s.name, d.pos"
        ))?;
        let rows = stmt
            .query_map(
                params![filter.subscription, filter.id.map(|id| id as i64)],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn subscription_id(&mut self, name: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.subscriptions.get(name) {
            return Ok(*id);
        }
        self.conn
            .prepare_cached("INSERT INTO subscriptions (name) VALUES (?1) ON CONFLICT (name) DO NOTHING")?
            .execute([name])?;
        let id: i64 = self
            .conn
            .prepare_cached("SELECT id FROM subscriptions WHERE name = ?1")?
            .query_row([name], |row| row.get(0))?;
        self.subscriptions.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The id of the handler version `version`, added if new.
    fn version_id(&mut self, version: &Arc<str>) -> Result<i64, StoreError> {
        if let Some(id) = self.versions.get(version) {
            return Ok(*id);
        }
        self.conn
            .prepare_cached("INSERT INTO versions (version) VALUES (?1) ON CONFLICT (version) DO NOTHING")?
            .execute([&**version])?;
        let id: i64 = self
            .conn
            .prepare_cached("SELECT id FROM versions WHERE version = ?1")?
            .query_row([&**version], |row| row.get(0))?;
        self.versions.insert(Arc::clone(version), id);
        Ok(id)
    }

    fn commit(&mut self, commit: &DeliveryCommit, delta: &mut Delta) -> Result<CommitOutcome, StoreError> {
        let sub = self.subscription_id(&commit.subscription)?;
        let pos = to_pos(commit.offset);
        let mut done = None;
        if let DeliveryOutcome::Acked = commit.outcome {
            let version = commit
                .handler_version
                .as_ref()
                .map(|version| self.version_id(version))
                .transpose()?;
            done = Some((Utc::now().timestamp_millis(), version));
            // The common case in one statement: a pending delivery acknowledged.
            let acked = self.conn.prepare_cached(ACK_PENDING)?.execute(params![
                sub,
                pos,
                done.map(|d| d.0),
                version
            ])?;
            if acked == 1 {
                delta.pending -= 1;
                return self.apply_effects(commit, delta);
            }
        }
        let state: Option<i64> = self
            .conn
            .prepare_cached("SELECT state FROM deliveries WHERE sub = ?1 AND pos = ?2")?
            .query_row(params![sub, pos], |row| row.get(0))
            .optional()?;
        let existed = match state {
            Some(PENDING) => true,
            // Acked, dead-lettered or purged: a redelivery lost the race to a commit that
            // landed. Applying anything now would apply its effects twice.
            Some(_) => return Ok(CommitOutcome::AlreadyDone),
            None => {
                let known = self
                    .conn
                    .prepare_cached("SELECT 1 FROM events WHERE pos = ?1")?
                    .query_row([pos], |_| Ok(()))
                    .optional()?
                    .is_some();
                if !known {
                    return Err(StoreError::UnknownOffset {
                        offset: commit.offset,
                    });
                }
                false
            }
        };
        let upsert = |state: i64, attempt: u32, not_before: Option<&str>, dead_at: Option<&str>| {
            self.conn
                .prepare_cached(
                    "INSERT INTO deliveries (sub, pos, state, attempt, not_before, dead_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (sub, pos) DO UPDATE SET state = excluded.state,
                        attempt = excluded.attempt, not_before = excluded.not_before,
                        dead_at = excluded.dead_at",
                )?
                .execute(params![sub, pos, state, attempt, not_before, dead_at])
        };
        let was_pending = i64::from(existed);
        let outcome = match &commit.outcome {
            DeliveryOutcome::Acked => {
                let (done_at, version) = done.unwrap_or_default();
                self.conn
                    .prepare_cached(&format!(
                        "INSERT INTO deliveries (sub, pos, state, done_at, version) VALUES (?1, ?2, {ACKED}, ?3, ?4)
                         ON CONFLICT (sub, pos) DO UPDATE SET state = {ACKED}, not_before = NULL,
                            done_at = excluded.done_at, version = excluded.version"
                    ))?
                    .execute(params![sub, pos, done_at, version])?;
                delta.pending -= was_pending;
                self.apply_effects(commit, delta)?
            }
            DeliveryOutcome::Retry {
                attempt,
                not_before,
                failure,
            } => {
                upsert(PENDING, *attempt, Some(&format_time(*not_before)), None)?;
                self.insert_failure(sub, pos, failure)?;
                delta.pending += 1 - was_pending;
                CommitOutcome::Committed { emitted: Vec::new() }
            }
            DeliveryOutcome::DeadLettered { failure } => {
                upsert(DEAD, failure.attempt, None, Some(&format_time(Utc::now())))?;
                self.insert_failure(sub, pos, failure)?;
                delta.pending -= was_pending;
                delta.dead_letters += 1;
                CommitOutcome::Committed { emitted: Vec::new() }
            }
        };
        Ok(outcome)
    }

    /// The key-value writes and emitted events of an acknowledged delivery.
    fn apply_effects(
        &mut self,
        commit: &DeliveryCommit,
        delta: &mut Delta,
    ) -> Result<CommitOutcome, StoreError> {
        self.kv_writes(&commit.kv_namespace, &commit.kv_writes)?;
        let mut emitted = Vec::with_capacity(commit.emitted.len());
        if !commit.emitted.is_empty() {
            let emitter = self.subscription_id(&commit.subscription)?;
            for (event, routes) in &commit.emitted {
                emitted.push(self.insert_event(event, routes, Some(emitter), delta)?);
            }
        }
        Ok(CommitOutcome::Committed { emitted })
    }

    fn insert_failure(&self, sub: i64, pos: i64, failure: &FailureRecord) -> Result<(), StoreError> {
        let record = serde_json::to_string(failure).expect("a failure record always serializes to JSON");
        self.conn
            .prepare_cached("INSERT INTO failures (sub, pos, record) VALUES (?1, ?2, ?3)")?
            .execute(params![sub, pos, record])?;
        Ok(())
    }

    fn kv_writes(&self, namespace: &str, writes: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        for (key, value) in writes {
            match value {
                Some(value) => self
                    .conn
                    .prepare_cached(
                        "INSERT INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT (namespace, key)
                         DO UPDATE SET value = excluded.value, revision = kv.revision + 1",
                    )?
                    .execute(params![namespace, key, value])?,
                None => self
                    .conn
                    .prepare_cached("DELETE FROM kv WHERE namespace = ?1 AND key = ?2")?
                    .execute(params![namespace, key])?,
            };
        }
        Ok(())
    }
}
