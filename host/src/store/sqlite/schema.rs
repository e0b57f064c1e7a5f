//! Opening the file: WAL mode, the integrity check, the schema and its migrations.
//!
//! # Schema (version 4)
//!
//! - `events(pos, source, id, event, correlation, emitter)`: the log. `pos` is the offset
//!   (the rowid; events are never deleted, so an offset is never handed out twice);
//!   `event` is the CloudEvents JSON; `(id, source)` is unique, which is what makes
//!   publishing idempotent, and its index finds an event by id. `correlation` copies the
//!   event's `correlationid` (indexed where set: a saga's events); `emitter` is the
//!   subscription whose handler emitted the event, `NULL` for a published one.
//! - `subscriptions(id, name)`: subscription names, so each delivery row stores a small
//!   integer instead of the name.
//! - `deliveries(sub, pos, state, attempt, not_before, dead_at, done_at, version)`: one
//!   row per event and subscription it must reach. `state` is 0 pending, 1 acked, 2
//!   dead-lettered, 3 purged; an acknowledgement sets `done_at` (Unix milliseconds) and
//!   `version` (a row of `versions(id, version)`: the handler version that ran). Partial indexes over pending and dead rows keep redelivery and DLQ queries
//!   proportional to what they return, not to the history.
//! - `failures(id, sub, pos, record)`: every failure of a delivery, in order, as the
//!   `FailureRecord` JSON.
//! - `kv(namespace, key, value, revision)`: the plugins' key-value data; `revision`
//!   counts the writes of the key.
//! - `checkpoints(relay, position)`: how far each outbox relay got.
//!
//! `PRAGMA application_id` marks the file as evhost's and `PRAGMA user_version` is the
//! schema version; [`MIGRATIONS`] brings an older file up to date at open.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::{Shared, StoreError};

/// `PRAGMA application_id` of an evhost store: "evhs".
pub(super) const APPLICATION_ID: i64 = 0x6576_6873;

/// Delivery states as stored.
pub(super) const PENDING: i64 = 0;
pub(super) const ACKED: i64 = 1;
pub(super) const DEAD: i64 = 2;
pub(super) const PURGED: i64 = 3;

/// How long a connection waits for a lock held by another connection (another process
/// opening the same directory, or a checkpoint) before failing.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Integrity-check messages quoted in an error; SQLite can report thousands.
const MAX_CHECK_MESSAGES: usize = 10;

/// `MIGRATIONS[n]` takes a store from schema version `n` to `n + 1`. Version 2 drops
/// `AUTOINCREMENT` from `events.pos`: it cost a write to `sqlite_sequence` per event, and
/// events are never deleted, so the next offset is always one past the largest anyway.
pub(super) const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE events (
        pos    INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        id     TEXT NOT NULL,
        event  TEXT NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX events_by_source_id ON events (source, id);

    CREATE TABLE subscriptions (
        id   INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE
    ) STRICT;

    CREATE TABLE deliveries (
        sub        INTEGER NOT NULL,
        pos        INTEGER NOT NULL,
        state      INTEGER NOT NULL CHECK (state BETWEEN 0 AND 3),
        attempt    INTEGER NOT NULL DEFAULT 0,
        not_before TEXT,
        dead_at    TEXT,
        PRIMARY KEY (sub, pos)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX deliveries_pending ON deliveries (sub, pos) WHERE state = 0;
    CREATE INDEX deliveries_dead ON deliveries (sub, pos) WHERE state = 2;

    CREATE TABLE failures (
        id     INTEGER PRIMARY KEY,
        sub    INTEGER NOT NULL,
        pos    INTEGER NOT NULL,
        record TEXT NOT NULL
    ) STRICT;
    CREATE INDEX failures_by_delivery ON failures (sub, pos);

    CREATE TABLE kv (
        namespace TEXT NOT NULL,
        key       TEXT NOT NULL,
        value     BLOB NOT NULL,
        PRIMARY KEY (namespace, key)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE checkpoints (
        relay    TEXT PRIMARY KEY,
        position INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
",
    r"
    CREATE TABLE events_v2 (
        pos    INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        id     TEXT NOT NULL,
        event  TEXT NOT NULL
    ) STRICT;
    INSERT INTO events_v2 (pos, source, id, event) SELECT pos, source, id, event FROM events;
    DROP TABLE events;
    ALTER TABLE events_v2 RENAME TO events;
    CREATE UNIQUE INDEX events_by_source_id ON events (source, id);
",
    // Version 3: a revision per key-value entry, counting its writes.
    r"
    ALTER TABLE kv ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;
",
    // Version 4: what the operator's reads need. The idempotency index puts `id` first so
    // that it also finds an event by id alone; a correlation's events are found through a
    // partial index (an event that starts a saga has no correlation and costs it nothing);
    // an emitted event names the subscription that emitted it; an acknowledgement records
    // when, and which handler version ran (interned).
    r"
    DROP INDEX events_by_source_id;
    CREATE UNIQUE INDEX events_by_id_source ON events (id, source);
    ALTER TABLE events ADD COLUMN correlation TEXT;
    ALTER TABLE events ADD COLUMN emitter INTEGER;
    UPDATE events SET correlation = json_extract(event, '$.correlationid')
        WHERE json_type(event, '$.correlationid') = 'text';
    CREATE INDEX events_by_correlation ON events (correlation) WHERE correlation IS NOT NULL;

    CREATE TABLE versions (
        id      INTEGER PRIMARY KEY,
        version TEXT NOT NULL UNIQUE
    ) STRICT;
    ALTER TABLE deliveries ADD COLUMN done_at INTEGER;
    ALTER TABLE deliveries ADD COLUMN version INTEGER;
",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Maps an error about `path` to [`StoreError::Corrupt`] when SQLite says the data is
/// damaged or not a database, and to [`StoreError::Sqlite`] otherwise.
pub(super) fn classify(path: &Path, error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            message: error.to_string(),
        },
        _ => StoreError::Sqlite(error),
    }
}

/// Opens the writer's connection: WAL, integrity check, migrations, durability settings.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let open_error = |source: rusqlite::Error| match classify(path, source) {
        StoreError::Sqlite(source) => StoreError::Open {
            path: path.to_owned(),
            source,
        },
        other => other,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // Only reads until the file is known to be ours (or new): another program's database
    // is refused untouched. The first read fails for a file that is not a database.
    check_ownership(&conn, path)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            message: format!("cannot switch to WAL mode (journal mode stays {mode})"),
        });
    }
    quick_check(&conn, path).map_err(open_error)??;
    migrate(&conn, path)?;
    // FULL: every commit fsyncs the WAL, so an answered write survives power loss, not
    // only kill -9 (see the module docs). The cache holds the hot index pages of the
    // log; `journal_size_limit` shrinks the WAL back after a burst. Checkpoints are the
    // checkpointer thread's (`checkpoint`), not the writer's.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA wal_autocheckpoint = 0;",
    )
    .map_err(open_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// `PRAGMA quick_check`: the outer error is SQLite failing to run it, the inner one what it
/// found.
fn quick_check(conn: &Connection, path: &Path) -> rusqlite::Result<Result<(), StoreError>> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let messages: Vec<String> = stmt
        .query_map([], |row| row.get(0))?
        .take(MAX_CHECK_MESSAGES)
        .collect::<rusqlite::Result<_>>()?;
    if messages.len() == 1 && messages[0] == "ok" {
        return Ok(Ok(()));
    }
    Ok(Err(StoreError::Corrupt {
        path: path.to_owned(),
        message: format!("integrity check failed: {}", messages.join("; ")),
    }))
}

/// Refuses a file that is not an evhost store (nor a brand-new, empty one) or that a newer
/// evhost wrote, without writing to it.
fn check_ownership(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let application_id = pragma(conn, path, "application_id")?;
    let version = pragma(conn, path, "user_version")?;
    if application_id != APPLICATION_ID {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
            .map_err(|e| classify(path, e))?;
        // A brand-new file has no id and nothing in it; anything else belongs to someone else.
        if application_id != 0 || version != 0 || tables != 0 {
            return Err(StoreError::Foreign {
                path: path.to_owned(),
                application_id,
                tables,
            });
        }
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn pragma(conn: &Connection, path: &Path, name: &str) -> Result<i64, StoreError> {
    conn.pragma_query_value(None, name, |row| row.get(0))
        .map_err(|e| classify(path, e))
}

/// Brings the schema of a file [`check_ownership`] accepted to [`SCHEMA_VERSION`].
fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let version = pragma(conn, path, "user_version")?;
    for (from, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let to = from as i64 + 1;
        // One transaction per step: a crash mid-migration leaves the previous version.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             {sql}
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {to};
             COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            classify(path, e)
        })?;
    }
    Ok(())
}

/// Counts what [`super::StoreStats`] reports, once at open; the writer keeps them up to date.
pub(super) fn load_counts(conn: &Connection, shared: &Shared) -> rusqlite::Result<()> {
    let count = |sql: &str| -> rusqlite::Result<u64> {
        let n: i64 = conn.query_row(sql, [], |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    shared
        .events
        .store(count("SELECT count(*) FROM events")?, Ordering::Relaxed);
    shared.pending.store(
        count(&format!(
            "SELECT count(*) FROM deliveries WHERE state = {PENDING}"
        ))?,
        Ordering::Relaxed,
    );
    shared.dead_letters.store(
        count(&format!("SELECT count(*) FROM deliveries WHERE state = {DEAD}"))?,
        Ordering::Relaxed,
    );
    shared.last_offset.store(
        count("SELECT coalesce(max(pos), 0) FROM events")?,
        Ordering::Relaxed,
    );
    Ok(())
}

/// How often the checkpointer copies the WAL into the database file.
pub(super) const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// The checkpointer thread: every [`CHECKPOINT_INTERVAL`] a `PASSIVE` checkpoint copies
/// what the WAL holds into the database file, on its own connection, so the writer never
/// stops committing to do it (SQLite's automatic checkpoint would run inside a commit).
/// `PASSIVE` never waits for the writer or the readers; what it cannot copy yet is copied
/// next time. Returns once `stop` is dropped.
pub(super) fn checkpoint(path: &Path, stop: &std::sync::mpsc::Receiver<()>) {
    let conn = match Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "the store's checkpointer cannot open the file; the WAL will grow");
            return;
        }
    };
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(path = %path.display(), %error, "a WAL checkpoint failed; trying again");
        }
    }
}
