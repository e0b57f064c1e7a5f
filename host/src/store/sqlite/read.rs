//! The read side: a pool of read-only connections and the queries behind the read API.
//!
//! In WAL mode a read transaction sees the last commit and takes no lock the writer
//! waits for, so reads never queue behind a group commit or its fsync.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::schema::{self, ACKED, DEAD, PENDING, PURGED};
use super::{DeadLetter, DeadLetterFilter, DeliveryState, PendingDelivery, StoreError};
use crate::event::Event;
use crate::monitor::FailureRecord;
use crate::store::{DeliveryView, EventQuery, StoredEvent};
use crate::store::{KeyPage, Versioned};

/// Read-only connections, opened on demand and kept for reuse.
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl Readers {
    /// A pool over `path`, with one connection opened now so that a file the readers cannot
    /// open fails [`super::SqliteStore::open`] rather than the first read.
    pub(super) fn open(path: PathBuf, max_idle: usize) -> Result<Self, StoreError> {
        let readers = Self {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        };
        let first = readers.connect()?;
        readers.idle.lock().push(first);
        Ok(readers)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let open_error = |source| StoreError::Open {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_error)?;
        conn.busy_timeout(schema::BUSY_TIMEOUT).map_err(open_error)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Runs `query` on an idle connection (a new one if none is idle). Errors that say the
    /// data is damaged become [`StoreError::Corrupt`] naming the file.
    pub(super) fn with<T>(
        &self,
        query: impl FnOnce(&Connection, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = query(&conn, &self.path);
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle && conn.is_autocommit() {
            idle.push(conn);
        }
        drop(idle);
        result.map_err(|error| match error {
            StoreError::Sqlite(error) => schema::classify(&self.path, error),
            other => other,
        })
    }
}

/// How timestamps are stored: RFC 3339 in UTC, exact to the nanosecond, readable in the
/// `sqlite3` shell.
pub(super) fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_time(path: &Path, what: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(path, format!("{what}: bad timestamp {text:?}: {e}")))
}

pub(super) fn parse_event(path: &Path, pos: i64, json: &str) -> Result<Arc<Event>, StoreError> {
    Event::from_json(json.as_bytes())
        .map(Arc::new)
        .map_err(|e| corrupt(path, format!("event at offset {pos}: {e}")))
}

fn parse_failure(path: &Path, sub: &str, pos: i64, json: &str) -> Result<FailureRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt(path, format!("failure of {sub} at offset {pos}: {e}")))
}

fn corrupt(path: &Path, message: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        message,
    }
}

/// A stored offset as the API reports it; rowids are positive.
pub(super) fn to_offset(pos: i64) -> u64 {
    u64::try_from(pos).unwrap_or(0)
}

/// An API offset as stored. Offsets past `i64::MAX` do not exist, and `i64::MAX` is never
/// handed out, so a lookup of one finds nothing.
pub(super) fn to_pos(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn attempt(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn checkpoint(conn: &Connection, relay: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT position FROM checkpoints WHERE relay = ?1")?
        .query_row([relay], |row| row.get(0))
        .optional()?)
}

pub(super) fn kv_get(conn: &Connection, namespace: &str, key: &str) -> Result<Option<Versioned>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value, revision FROM kv WHERE namespace = ?1 AND key = ?2")?
        .query_row([namespace, key], |row| {
            Ok(Versioned {
                value: row.get(0)?,
                revision: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            })
        })
        .optional()?)
}

/// A page of `namespace`'s keys in order, after `after`, as
/// [`crate::store::KeyValueStore::list_keys`] defines it.
pub(super) fn kv_keys(
    conn: &Connection,
    namespace: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<KeyPage, StoreError> {
    // One key more than asked tells whether another page follows.
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1).saturating_add(1);
    let mut keys: Vec<String> = match after {
        None => conn
            .prepare_cached("SELECT key FROM kv WHERE namespace = ?1 ORDER BY key LIMIT ?2")?
            .query_map(params![namespace, fetch], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?,
        Some(after) => conn
            .prepare_cached("SELECT key FROM kv WHERE namespace = ?1 AND key > ?2 ORDER BY key LIMIT ?3")?
            .query_map(params![namespace, after, fetch], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?,
    };
    let more = keys.len() > limit;
    keys.truncate(limit);
    Ok(KeyPage { keys, more })
}

/// At most `limit` of `subscription`'s pending deliveries in offset order, after offset
/// `after` (from the first when `None`).
pub(super) fn pending(
    conn: &Connection,
    path: &Path,
    subscription: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<PendingDelivery>, StoreError> {
    // INDEXED BY: without statistics the planner would walk the subscription's whole
    // history by primary key; the partial index holds only what is pending.
    let mut stmt = conn.prepare_cached(
        "SELECT d.pos, e.event, d.attempt, d.not_before
         FROM deliveries d INDEXED BY deliveries_pending JOIN events e ON e.pos = d.pos
         WHERE d.sub = (SELECT id FROM subscriptions WHERE name = ?1) AND d.state = 0 AND d.pos > ?2
         ORDER BY d.pos LIMIT ?3",
    )?;
    let after = after.map_or(-1, to_pos);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![subscription, after, limit])?;
    let mut pending = Vec::new();
    while let Some(row) = rows.next()? {
        let pos: i64 = row.get(0)?;
        let json: String = row.get(1)?;
        let not_before: Option<String> = row.get(3)?;
        pending.push(PendingDelivery {
            offset: to_offset(pos),
            event: parse_event(path, pos, &json)?,
            attempt: attempt(row.get(2)?),
            not_before: not_before
                .map(|t| parse_time(path, "not_before", &t))
                .transpose()?,
        });
    }
    Ok(pending)
}

pub(super) fn delivery_state(
    conn: &Connection,
    path: &Path,
    subscription: &str,
    offset: u64,
) -> Result<Option<DeliveryState>, StoreError> {
    Ok(deliveries(conn, path, to_pos(offset))?
        .into_iter()
        .find(|delivery| delivery.subscription == subscription)
        .map(|delivery| delivery.state))
}

/// The deliveries of the event at `?1` with their failures' count and the last one.
/// Driven by the few subscriptions, each a primary-key read of `deliveries`: CROSS JOIN
/// keeps that order (without statistics the planner would scan every delivery for the
/// position).
pub(super) const DELIVERIES: &str = "SELECT s.name, d.state, d.attempt, d.not_before, d.dead_at, d.done_at, v.version,
                (SELECT count(*) FROM failures f WHERE f.sub = d.sub AND f.pos = d.pos),
                (SELECT f.id FROM failures f WHERE f.sub = d.sub AND f.pos = d.pos ORDER BY f.id DESC LIMIT 1),
                (SELECT f.record FROM failures f WHERE f.sub = d.sub AND f.pos = d.pos ORDER BY f.id DESC LIMIT 1)
         FROM subscriptions s CROSS JOIN deliveries d ON d.sub = s.id AND d.pos = ?1
         LEFT JOIN versions v ON v.id = d.version
         ORDER BY s.name";

/// Every delivery of the event at `pos`, by subscription name.
fn deliveries(conn: &Connection, path: &Path, pos: i64) -> Result<Vec<DeliveryView>, StoreError> {
    let mut stmt = conn.prepare_cached(DELIVERIES)?;
    let mut rows = stmt.query([pos])?;
    let mut views = Vec::new();
    while let Some(row) = rows.next()? {
        let name: String = row.get(0)?;
        let not_before: Option<String> = row.get(3)?;
        let dead_at: Option<String> = row.get(4)?;
        let done_at: Option<i64> = row.get(5)?;
        let last_id: Option<i64> = row.get(8)?;
        let last: Option<String> = row.get(9)?;
        let state = match row.get::<_, i64>(1)? {
            PENDING => DeliveryState::Pending {
                attempt: attempt(row.get(2)?),
                not_before: not_before
                    .map(|t| parse_time(path, "not_before", &t))
                    .transpose()?,
            },
            ACKED => DeliveryState::Handled {
                at: done_at.and_then(DateTime::from_timestamp_millis),
                version: row.get(6)?,
            },
            DEAD => DeliveryState::DeadLettered {
                dead_at: parse_time(path, "dead_at", dead_at.as_deref().unwrap_or_default())?,
                dead_letter_id: last_id.map_or(0, to_offset),
            },
            PURGED => DeliveryState::Purged,
            other => return Err(corrupt(path, format!("delivery state {other}"))),
        };
        views.push(DeliveryView {
            state,
            failures: attempt(row.get(7)?),
            last_failure: last
                .map(|record| parse_failure(path, &name, pos, &record))
                .transpose()?,
            subscription: name,
            unknown: Vec::new(),
        });
    }
    Ok(views)
}

/// The columns an event is read with, from `events e` joined to its emitter's name.
const EVENT_COLUMNS: &str =
    "SELECT e.pos, e.event, s.name FROM events e LEFT JOIN subscriptions s ON s.id = e.emitter";

/// Reads the events `stmt` selects (with [`EVENT_COLUMNS`]), each with its deliveries, in
/// one transaction so that they agree.
fn stored_events(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredEvent>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut found = Vec::new();
    {
        let mut stmt = tx.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        while let Some(row) = rows.next()? {
            let pos: i64 = row.get(0)?;
            let json: String = row.get(1)?;
            found.push(StoredEvent {
                offset: to_offset(pos),
                event: parse_event(path, pos, &json)?,
                emitted_by: row.get(2)?,
                deliveries: deliveries(&tx, path, pos)?,
            });
        }
    }
    tx.commit()?;
    Ok(found)
}

/// The query of [`find_events`].
pub(super) fn find_sql() -> String {
    format!("{EVENT_COLUMNS} WHERE e.id = ?1 AND (?2 IS NULL OR e.source = ?2) ORDER BY e.pos")
}

/// The query of [`correlated_events`].
pub(super) fn correlated_sql() -> String {
    format!(
        "SELECT * FROM (
            {EVENT_COLUMNS} WHERE e.correlation = ?1
            UNION {EVENT_COLUMNS} WHERE e.id = ?1 AND e.correlation IS NULL
         ) ORDER BY 1 LIMIT ?2"
    )
}

/// The events with `id` (and `source`, when given), by offset.
pub(super) fn find_events(
    conn: &Connection,
    path: &Path,
    id: &str,
    source: Option<&str>,
) -> Result<Vec<StoredEvent>, StoreError> {
    stored_events(conn, path, &find_sql(), params![id, source])
}

/// A page of events as `query` asks: by offset after `after`, else newest first before
/// `before` (or from the end). The type and subject filters read each event's JSON.
pub(super) fn list_events(
    conn: &Connection,
    path: &Path,
    query: &EventQuery,
) -> Result<Vec<StoredEvent>, StoreError> {
    let filters = "(?2 IS NULL OR json_extract(e.event, '$.type') = ?2)
         AND (?3 IS NULL OR json_extract(e.event, '$.subject') = ?3)";
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    let (sql, from) = match query.after {
        Some(after) => (
            format!("{EVENT_COLUMNS} WHERE e.pos > ?1 AND {filters} ORDER BY e.pos LIMIT ?4"),
            to_pos(after),
        ),
        None => (
            format!("{EVENT_COLUMNS} WHERE e.pos < ?1 AND {filters} ORDER BY e.pos DESC LIMIT ?4"),
            query.before.map_or(i64::MAX, to_pos),
        ),
    };
    stored_events(
        conn,
        path,
        &sql,
        params![from, query.event_type, query.subject, limit],
    )
}

/// The events of `correlation`, by offset: those carrying it and the one it is the id of.
pub(super) fn correlated_events(
    conn: &Connection,
    path: &Path,
    correlation: &str,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    stored_events(conn, path, &correlated_sql(), params![correlation, limit])
}

/// The id of the dead letter of delivery `d` (SQL over `d.sub`, `d.pos`): the id of its
/// last failure, which is the one that dead-lettered it. Unique, and new each time a
/// replayed delivery dies again.
pub(super) const DEAD_LETTER_ID: &str =
    "SELECT max(f.id) FROM failures f WHERE f.sub = d.sub AND f.pos = d.pos";

/// Dead letters matching `filter`, each with its full failure history; read in one
/// transaction so the list and the histories agree.
pub(super) fn dead_letters(
    conn: &Connection,
    path: &Path,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut letters = Vec::new();
    {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT s.name, d.sub, d.pos, e.event, d.dead_at, ({DEAD_LETTER_ID}) AS dead_id
             FROM deliveries d INDEXED BY deliveries_dead
             JOIN subscriptions s ON s.id = d.sub
             JOIN events e ON e.pos = d.pos
             WHERE d.state = 2 AND (?1 IS NULL OR s.name = ?1) AND (?2 IS NULL OR dead_id = ?2)
             ORDER BY s.name, d.pos"
        ))?;
        let mut failures_stmt =
            tx.prepare_cached("SELECT record FROM failures WHERE sub = ?1 AND pos = ?2 ORDER BY id")?;
        let mut rows = stmt.query(params![filter.subscription, filter.id.map(|id| id as i64)])?;
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let sub: i64 = row.get(1)?;
            let pos: i64 = row.get(2)?;
            let json: String = row.get(3)?;
            let dead_at: Option<String> = row.get(4)?;
            let id: Option<i64> = row.get(5)?;
            let failures = failures_stmt
                .query_map(params![sub, pos], |row| row.get::<_, String>(0))?
                .map(|record| parse_failure(path, &name, pos, &record?))
                .collect::<Result<Vec<_>, StoreError>>()?;
            letters.push(DeadLetter {
                id: id.unwrap_or_default() as u64,
                offset: to_offset(pos),
                event: parse_event(path, pos, &json)?,
                failures,
                dead_at: parse_time(path, "dead_at", dead_at.as_deref().unwrap_or_default())?,
                subscription: name,
            });
        }
    }
    tx.commit()?;
    Ok(letters)
}
