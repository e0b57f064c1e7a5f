//! The transactional outbox relay from PostgreSQL.
//!
//! An application that changes its own data and must announce the change cannot publish to
//! evhost inside its database transaction: the publish might succeed and the transaction roll
//! back, or the reverse. Instead it inserts the event into an outbox table in the *same*
//! transaction, and the [`OutboxRelay`] carries committed rows into evhost, in commit order,
//! exactly once.
//!
//! ```sql
//! BEGIN;
//! UPDATE accounts SET balance = balance - 10 WHERE id = 'a-1';
//! INSERT INTO evhost.outbox (id, source, type, subject, data)
//! VALUES ('debit-981', 'accounts', 'AccountDebited', 'a-1', '{"amount": 10}');
//! COMMIT;
//! ```
//!
//! From Rust, [`Outbox::write`] does that insert for an [`Event`].
//!
//! # The schema
//!
//! [`Outbox::install_schema`] creates it (idempotently; [`Outbox::schema_sql`] returns the SQL,
//! which is also `host/src/outbox/schema.sql`, runnable as `psql -v schema=evhost -f schema.sql`).
//! In schema `evhost` by default:
//!
//! - `outbox(position bigint primary key, id text not null, source text not null, type text
//!   not null, subject text, time timestamptz not null default now(), datacontenttype text,
//!   dataschema text, data jsonb, extensions jsonb not null default '{}', created_at timestamptz
//!   not null default now(), unique(source, id))`. One row is one CloudEvent: `data` is its JSON
//!   payload, `extensions` a JSON object of extension attributes. CHECK constraints refuse, at
//!   insert time, empty `id`/`source`/`type`, a `time` outside years 1–9999, and extensions
//!   that are not lower-case alphanumeric names with string, boolean or 32-bit integer values.
//!   Applications leave `position` out.
//! - `outbox_position(n bigint not null)`: the last position handed out, in one row (a
//!   `singleton` key column keeps it to one).
//! - A `BEFORE INSERT` row trigger setting `position` from
//!   `UPDATE outbox_position SET n = n + 1 RETURNING n`.
//! - An `AFTER INSERT` statement trigger doing `pg_notify('<schema>_outbox', '')`.
//! - `outbox_rejected(relay, position, error, rejected_at)`: rows a relay could not relay (see
//!   below).
//!
//! # Commit order
//!
//! The position trigger's `UPDATE` locks the counter row, and PostgreSQL holds row locks until
//! the transaction ends. A second transaction inserting into the outbox waits on that lock until
//! the first commits or rolls back, then increments the value the first left. So:
//!
//! - positions are handed out in commit order, and a transaction's rows are consecutive;
//! - a rolled-back transaction leaves no gap: its increment rolls back with it;
//! - when the relay sees a committed row at position `p`, every transaction holding a position
//!   below `p` has already committed (it released the lock by committing, and a commit is
//!   visible before its locks are released) or rolled back. Reading
//!   `position > checkpoint ORDER BY position` therefore never skips a row that commits later.
//!
//! The cost: transactions that write to the outbox serialize from their first outbox insert
//! until they commit, so their commits cannot share an fsync. Keep that window short — insert
//! the events last, just before `COMMIT` — and expect outbox-writing transactions to run at
//! about one per commit latency. Measured with pgbench on a 2-core machine (PostgreSQL 15,
//! local disk, `fsync` and `synchronous_commit` on), one insert per transaction: 1,190 tx/s
//! with 1 client and 1,300 with 8, where the same insert into a plain table reached 1,640 and
//! 4,380. Several events in one transaction cost little more than one. Under `REPEATABLE READ` or
//! `SERIALIZABLE`, a writer that waited on the lock fails with a serialization failure (SQLSTATE
//! `40001`) once the other commits, and must retry, as such applications already do.
//!
//! # Exactly once
//!
//! The relay keeps no state of its own. Its checkpoint — the last position relayed — lives in
//! the [`OutboxTarget`], which stores each batch of events *and* the new checkpoint in one
//! transaction. After a crash at any point, the relay resumes from the stored checkpoint: a
//! batch is either stored with its checkpoint, and not read again, or stored not at all, and
//! read again. The target also skips events whose `(source, id)` it already holds, so an event
//! that reached evhost another way (or a relay run under a second name) is not stored twice.
//!
//! # Waking up
//!
//! The relay `LISTEN`s before its first read. `NOTIFY` is delivered only when the inserting
//! transaction commits, so a notification means there is something new to read. Notifications
//! are lost while the relay is disconnected; every (re)connection therefore starts with a read,
//! and a poll every [`OutboxConfig::poll_interval`] covers anything else (a disabled trigger,
//! rows copied in with triggers off).
//!
//! # Malformed rows
//!
//! The CHECK constraints keep almost every invalid event out of the table, failing the
//! producer's own transaction. A row that still cannot become an [`Event`] — say a JSON number
//! beyond a 64-bit float in `data`, or constraints dropped by hand — must neither stop the relay
//! (every later event would wait on a producer's bug) nor vanish. The relay logs it at error
//! level with its position, records it in `outbox_rejected` with the reason (idempotently, so
//! a crash makes no second record), and moves the checkpoint past it. The row stays in the
//! outbox. To relay it after fixing it, delete and re-insert it in one statement, which gives
//! it a new position:
//!
//! ```sql
//! BEGIN;
//! WITH old AS (DELETE FROM evhost.outbox WHERE position = 42 RETURNING *)
//! INSERT INTO evhost.outbox (id, source, type, subject, time, datacontenttype, dataschema, data, extensions)
//! SELECT id, source, type, subject, time, datacontenttype, dataschema, '{"fixed": true}', extensions FROM old;
//! DELETE FROM evhost.outbox_rejected WHERE position = 42;
//! COMMIT;
//! ```
//!
//! # Operating it
//!
//! The relay never deletes from the outbox. Rows at or below every relay's checkpoint can be
//! deleted at any time; keep them as long as you may want to relay them again under a new
//! relay name. Run one relay per relay name and target.

mod relay;
mod row;
mod schema;

use futures::future::BoxFuture;

use crate::event::Event;

pub use relay::{OutboxConfig, OutboxRelay};
pub use schema::{DEFAULT_SCHEMA, Outbox};

/// Where an [`OutboxRelay`] puts events: the durable log, in evhost.
///
/// The relay's exactly-once guarantee rests on [`append_with_checkpoint`](Self::append_with_checkpoint)
/// being atomic.
pub trait OutboxTarget: Send + Sync + 'static {
    /// The position `relay` last relayed, or `None` before its first batch (the relay then
    /// starts at the beginning of the outbox).
    fn checkpoint<'a>(&'a self, relay: &'a str) -> BoxFuture<'a, anyhow::Result<Option<i64>>>;

    /// Stores `events` and sets the relay's checkpoint to `position`, atomically; events whose
    /// (source, id) is already stored are skipped.
    ///
    /// `events` are in commit order and may be empty (every row of the batch was rejected), in
    /// which case only the checkpoint moves. On error nothing must have changed, or everything:
    /// the relay re-reads the checkpoint before going on.
    fn append_with_checkpoint<'a>(
        &'a self,
        events: Vec<Event>,
        relay: &'a str,
        position: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}
