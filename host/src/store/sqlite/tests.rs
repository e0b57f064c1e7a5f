//! The store against real SQLite files in temporary directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio::sync::oneshot;

use super::writer::{Answer, Op, Reply};
use super::*;
use crate::event::Event;
use crate::monitor::{FailureKind, FailureRecord};
use crate::store::contract::batch;
use crate::store::{DeliveryView, EventLookup as _, EventQuery};

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("evhost-store-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> Arc<SqliteStore> {
    SqliteStore::open(dir.path(), StoreOptions::default()).unwrap()
}

fn event(n: u32) -> Arc<Event> {
    Arc::new(Event::new("UserCreated", "users", json!({ "n": n })).with_subject(format!("user-{n}")))
}

async fn append_one(store: &SqliteStore, event: &Arc<Event>, routes: &[&str]) -> Appended {
    let appended = store
        .append(batch(std::slice::from_ref(event), &[routes]))
        .await
        .unwrap();
    appended[0]
}

fn failure(subscription: &str, event: &Event, attempt: u32, message: &str) -> FailureRecord {
    FailureRecord {
        subscription: subscription.to_owned(),
        handler_version: Some("v1".into()),
        event_id: event.id.clone(),
        event_type: event.ty.clone(),
        attempt,
        kind: FailureKind::Retry,
        message: message.to_owned(),
        time: Utc::now(),
    }
}

fn ack(subscription: &str, offset: u64) -> DeliveryCommit {
    DeliveryCommit {
        subscription: subscription.into(),
        offset,
        // The store finds the event by offset.
        event: event(0),
        outcome: DeliveryOutcome::Acked,
        kv_namespace: subscription.to_owned(),
        kv_writes: Vec::new(),
        emitted: Vec::new(),
        handler_version: None,
    }
}

fn by_subscription(name: &str) -> DeadLetterFilter {
    DeadLetterFilter {
        id: None,
        subscription: Some(name.into()),
    }
}

fn retry(
    subscription: &str,
    offset: u64,
    attempt: u32,
    not_before: DateTime<Utc>,
    failure: FailureRecord,
) -> DeliveryCommit {
    DeliveryCommit {
        outcome: DeliveryOutcome::Retry {
            attempt,
            not_before,
            failure,
        },
        ..ack(subscription, offset)
    }
}

fn dead(subscription: &str, offset: u64, failure: FailureRecord) -> DeliveryCommit {
    DeliveryCommit {
        outcome: DeliveryOutcome::DeadLettered { failure },
        ..ack(subscription, offset)
    }
}

/// Blocks the writer inside a transaction until the returned sender is dropped; returns
/// once the writer is held, plus the hold's own answer.
fn hold(store: &SqliteStore) -> (mpsc::Sender<()>, oneshot::Receiver<Result<Answer, StoreError>>) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let (reply, answer) = oneshot::channel();
    store
        .send(
            Op::Hold {
                entered: entered_tx,
                release: release_rx,
            },
            Reply(reply),
        )
        .unwrap();
    entered.recv().unwrap();
    (release, answer)
}

/// Queues an append without waiting for it.
fn queue_append(
    store: &SqliteStore,
    event: Arc<Event>,
    routes: &[&str],
) -> oneshot::Receiver<Result<Answer, StoreError>> {
    let (reply, answer) = oneshot::channel();
    let op = Op::Append {
        events: vec![event],
        routes: vec![routes.iter().map(|s| Arc::from(*s)).collect()],
        checkpoint: None,
    };
    store.send(op, Reply(reply)).unwrap();
    answer
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("the store answered in time")
}

/// What the file says, counted by a connection of our own, to check the store's counters.
fn counted(path: &Path) -> (u64, u64, u64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
    (
        count("SELECT count(*) FROM events"),
        count("SELECT count(*) FROM deliveries WHERE state = 0"),
        count("SELECT count(*) FROM deliveries WHERE state = 2"),
    )
}

#[tokio::test]
async fn appended_events_stay_pending_across_a_reopen() {
    let dir = TempDir::new();
    let events: Vec<_> = (0..3).map(event).collect();
    let appended = {
        let store = open(&dir);
        store
            .append(batch(&events, &[&["a", "b"], &["a"], &[]]))
            .await
            .unwrap()
    };
    assert!(appended.iter().all(|a| !a.duplicate));
    assert_eq!(
        appended[1].offset,
        appended[0].offset + 1,
        "one batch gets consecutive offsets"
    );

    let store = open(&dir);
    let a = store.pending("a").unwrap();
    assert_eq!(
        a.iter().map(|p| (p.offset, p.event.as_ref())).collect::<Vec<_>>(),
        vec![
            (appended[0].offset, &*events[0]),
            (appended[1].offset, &*events[1])
        ],
        "in offset order, with the events as published"
    );
    assert!(a.iter().all(|p| p.attempt == 0 && p.not_before.is_none()));
    assert_eq!(store.pending("b").unwrap().len(), 1);
    assert!(store.pending("nobody").unwrap().is_empty());
    let stats = store.stats().unwrap();
    assert_eq!((stats.events, stats.pending, stats.dead_letters), (3, 3, 0));
}

#[tokio::test]
async fn an_abandoned_store_keeps_every_answered_write() {
    // Like kill -9 as far as the file is concerned: no clean close, no checkpoint.
    let dir = TempDir::new();
    let store = open(&dir);
    let first = append_one(&store, &event(1), &["s"]).await;
    store.commit(ack("s", first.offset)).await.unwrap();
    let second = append_one(&store, &event(2), &["s"]).await;
    std::mem::forget(store);

    let store = open(&dir);
    let pending = store.pending("s").unwrap();
    assert_eq!(
        pending.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![second.offset]
    );
    let state = store.delivery_state("s", first.offset).unwrap();
    assert!(
        matches!(state, Some(DeliveryState::Handled { at: Some(_), .. })),
        "{state:?}"
    );
}

#[tokio::test]
async fn an_answered_append_is_in_the_file_and_commits_are_fsynced() {
    let dir = TempDir::new();
    let store = open(&dir);
    let e = event(1);
    let appended = append_one(&store, &e, &["s"]).await;
    // A connection of our own, not the store's: the row is committed to the file.
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let stored: String = conn
        .query_row(
            "SELECT event FROM events WHERE pos = ?1",
            [appended.offset as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(Event::from_json(stored.as_bytes()).unwrap(), *e);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    // The writer's connection is set up by `open_writer`: FULL (2) syncs the WAL on
    // every commit, so what was answered survives power loss too.
    let writer = schema::open_writer(store.path()).unwrap();
    let synchronous: i64 = writer.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
    assert_eq!(synchronous, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_transactions() {
    let dir = TempDir::new();
    let store = open(&dir);
    let before = store.stats().unwrap();
    let tasks: Vec<_> = (0..1_000)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { append_one(&store, &event(n), &["s"]).await })
        })
        .collect();
    let mut offsets = Vec::new();
    for task in tasks {
        offsets.push(within(task).await.unwrap().offset);
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 1_000, "every append got its own offset");
    let after = store.stats().unwrap();
    let transactions = after.transactions - before.transactions;
    assert_eq!(after.writes - before.writes, 1_000);
    assert!(
        transactions <= 250,
        "1,000 concurrent appends took {transactions} transactions"
    );
    assert_eq!(store.pending("s").unwrap().len(), 1_000);
}

#[tokio::test]
async fn requests_queued_during_a_commit_share_the_next_one() {
    let dir = TempDir::new();
    let store = open(&dir);
    let before = store.stats().unwrap().transactions;
    let (release, held) = hold(&store);
    let queued: Vec<_> = (0..50).map(|n| queue_append(&store, event(n), &["s"])).collect();
    drop(release);
    within(held).await.unwrap().unwrap();
    for answer in queued {
        assert!(matches!(within(answer).await.unwrap(), Ok(Answer::Appended(_))));
    }
    assert_eq!(
        store.stats().unwrap().transactions - before,
        2,
        "the hold's transaction, then one for all 50 appends"
    );
}

#[tokio::test]
async fn a_failing_request_does_not_fail_its_group() {
    let dir = TempDir::new();
    let store = open(&dir);
    let (release, held) = hold(&store);
    let before = queue_append(&store, event(1), &["s"]);
    let (reply, bad) = oneshot::channel();
    store
        .send(Op::Commits(vec![ack("s", 999_999)]), Reply(reply))
        .unwrap();
    let after = queue_append(&store, event(2), &["s"]);
    drop(release);
    within(held).await.unwrap().unwrap();
    assert!(matches!(within(before).await.unwrap(), Ok(Answer::Appended(_))));
    assert!(matches!(
        within(bad).await.unwrap(),
        Err(StoreError::UnknownOffset { offset: 999_999 })
    ));
    assert!(matches!(within(after).await.unwrap(), Ok(Answer::Appended(_))));
    assert_eq!(store.pending("s").unwrap().len(), 2);
    assert_eq!(store.stats().unwrap().events, 2);
}

#[tokio::test]
async fn publishing_the_same_source_and_id_again_is_a_duplicate() {
    let dir = TempDir::new();
    let store = open(&dir);
    let original = event(1);
    let first = append_one(&store, &original, &["s"]).await;
    assert!(!first.duplicate);

    // A producer retrying its publish: same source and id (the payload does not matter).
    let retried =
        Arc::new(Event::new("UserCreated", "users", json!({"other": true})).with_id(original.id.clone()));
    let again = append_one(&store, &retried, &["s", "t"]).await;
    assert_eq!(
        again,
        Appended {
            offset: first.offset,
            duplicate: true
        }
    );
    assert_eq!(store.pending("s").unwrap().len(), 1, "no second delivery");
    assert!(
        store.pending("t").unwrap().is_empty(),
        "no delivery for the duplicate's routes"
    );
    assert_eq!(
        store.pending("s").unwrap()[0].event,
        original,
        "the original is kept"
    );

    // The same id from another source is another event.
    let elsewhere = Arc::new(Event::new("UserCreated", "billing", json!({})).with_id(original.id.clone()));
    let other = append_one(&store, &elsewhere, &["s"]).await;
    assert!(!other.duplicate);
    assert_ne!(other.offset, first.offset);

    // A duplicate inside one batch points at its twin.
    let twin = event(7);
    let batch = store
        .append(batch(&[twin.clone(), twin], &[&["s"], &["s"]]))
        .await
        .unwrap();
    assert_eq!(
        batch[1],
        Appended {
            offset: batch[0].offset,
            duplicate: true
        }
    );
    assert_eq!(store.stats().unwrap().events, 3);
    assert_eq!(store.pending("s").unwrap().len(), 3);
}

#[tokio::test]
async fn an_ack_applies_kv_writes_and_emitted_events_exactly_once() {
    let dir = TempDir::new();
    let store = open(&dir);
    KeyValueStore::commit(&*store, "projection", vec![("stale".into(), Some(b"x".to_vec()))])
        .await
        .unwrap();
    let cause = event(1);
    let delivered = append_one(&store, &cause, &["projection"]).await;

    let emitted = Arc::new(Event::new("WelcomeMailRequested", "projection", json!({})).caused_by(&cause));
    let outcome = store
        .commit(DeliveryCommit {
            kv_writes: vec![("user:1".into(), Some(b"alice".to_vec())), ("stale".into(), None)],
            emitted: vec![(emitted.clone(), vec!["mailer".into()])],
            ..ack("projection", delivered.offset)
        })
        .await
        .unwrap();
    let CommitOutcome::Committed { emitted: appended } = outcome else {
        panic!("expected a commit, got {outcome:?}");
    };
    assert_eq!(appended.len(), 1);
    assert!(!appended[0].duplicate);
    assert_eq!(
        store.kv_get("projection", "user:1").unwrap(),
        Some(b"alice".to_vec())
    );
    assert_eq!(store.kv_get("projection", "stale").unwrap(), None);
    assert_eq!(store.kv_get("other-plugin", "user:1").unwrap(), None);
    let mailer = store.pending("mailer").unwrap();
    assert_eq!((mailer.len(), mailer[0].offset), (1, appended[0].offset));
    assert_eq!(mailer[0].event, emitted);
    assert!(store.pending("projection").unwrap().is_empty());
    let state = store.delivery_state("projection", delivered.offset).unwrap();
    assert!(
        matches!(state, Some(DeliveryState::Handled { at: Some(_), .. })),
        "{state:?}"
    );

    // A redelivery that raced the commit above: refused, and none of it applied.
    let second = store
        .commit(DeliveryCommit {
            kv_writes: vec![
                ("user:1".into(), Some(b"twice".to_vec())),
                ("user:2".into(), Some(b"bob".to_vec())),
            ],
            emitted: vec![(event(99), vec!["mailer".into()])],
            ..ack("projection", delivered.offset)
        })
        .await
        .unwrap();
    assert_eq!(second, CommitOutcome::AlreadyDone);
    assert_eq!(
        store.kv_get("projection", "user:1").unwrap(),
        Some(b"alice".to_vec())
    );
    assert_eq!(store.kv_get("projection", "user:2").unwrap(), None);
    assert_eq!(store.pending("mailer").unwrap().len(), 1);
    assert_eq!(
        store.stats().unwrap().events,
        2,
        "the refused commit's event was not stored"
    );

    drop(store);
    let store = open(&dir);
    assert_eq!(
        store.kv_get("projection", "user:1").unwrap(),
        Some(b"alice".to_vec())
    );
    assert_eq!(store.pending("mailer").unwrap().len(), 1);
}

#[tokio::test]
async fn a_retry_keeps_the_delivery_pending_and_the_dead_letter_keeps_every_failure() {
    let dir = TempDir::new();
    let store = open(&dir);
    let e = event(1);
    let offset = append_one(&store, &e, &["s"]).await.offset;
    let later =
        Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::nanoseconds(123_456_789);
    let failures = [
        failure("s", &e, 1, "database down"),
        failure("s", &e, 2, "still down"),
        FailureRecord {
            kind: FailureKind::Trap,
            ..failure("s", &e, 3, "wasm trap: unreachable")
        },
    ];

    store
        .commit(retry("s", offset, 1, later, failures[0].clone()))
        .await
        .unwrap();
    assert_eq!(
        store.delivery_state("s", offset).unwrap(),
        Some(DeliveryState::Pending {
            attempt: 1,
            not_before: Some(later)
        })
    );
    let pending = store.pending("s").unwrap();
    assert_eq!((pending[0].attempt, pending[0].not_before), (1, Some(later)));
    store
        .commit(retry("s", offset, 2, later, failures[1].clone()))
        .await
        .unwrap();
    assert_eq!(store.stats().unwrap().pending, 1);

    store
        .commit(dead("s", offset, failures[2].clone()))
        .await
        .unwrap();
    assert!(store.pending("s").unwrap().is_empty());
    let letter = store
        .dlq_list(&by_subscription("s"))
        .unwrap()
        .pop()
        .expect("dead-lettered");
    assert_eq!(store.dlq_get(letter.id).unwrap().as_ref(), Some(&letter));
    assert_eq!(letter.failures, failures, "every failure, oldest first");
    assert_eq!((letter.subscription.as_str(), letter.offset), ("s", offset));
    assert_eq!(letter.event, e);
    assert!(matches!(
        store.delivery_state("s", offset).unwrap(),
        Some(DeliveryState::DeadLettered { dead_at, dead_letter_id }) if dead_at == letter.dead_at && dead_letter_id == letter.id
    ));
    let stats = store.stats().unwrap();
    assert_eq!((stats.pending, stats.dead_letters), (0, 1));
    assert_eq!(
        store.commit(ack("s", offset)).await.unwrap(),
        CommitOutcome::AlreadyDone
    );

    // The DLQ serializes for `evhost dlq show` and the HTTP API.
    let json = serde_json::to_value(&letter).unwrap();
    assert_eq!(json["event"]["id"], e.id.as_str());
    assert_eq!(json["failures"][2]["kind"], "trap");
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_and_purged() {
    let dir = TempDir::new();
    let store = open(&dir);
    let mut offsets = Vec::new();
    for (n, sub) in [(1, "a"), (2, "a"), (3, "b")] {
        let e = event(n);
        let offset = append_one(&store, &e, &[sub]).await.offset;
        store
            .commit(dead(sub, offset, failure(sub, &e, 1, "no")))
            .await
            .unwrap();
        offsets.push((sub, offset, e));
    }
    let all = store.dlq_list(&DeadLetterFilter::default()).unwrap();
    assert_eq!(
        all.iter()
            .map(|l| (l.subscription.as_str(), l.offset))
            .collect::<Vec<_>>(),
        offsets.iter().map(|(s, o, _)| (*s, *o)).collect::<Vec<_>>()
    );
    assert_eq!(store.dlq_list(&by_subscription("a")).unwrap().len(), 2);
    let ids: Vec<u64> = all.iter().map(|l| l.id).collect();
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "ids are unique: {ids:?}");
    let not_b = DeadLetterFilter {
        id: Some(ids[0]),
        subscription: Some("b".into()),
    };
    assert!(store.dlq_list(&not_b).unwrap().is_empty(), "not b's");

    // Replay one: pending again, attempts reset, history kept.
    let (_, first, first_event) = &offsets[0];
    let one = DeadLetterFilter {
        id: Some(ids[0]),
        subscription: None,
    };
    let replayed = store.dlq_replay(&one, None).await.unwrap();
    assert_eq!(
        replayed,
        [Replayed {
            subscription: "a".into(),
            delivery: PendingDelivery {
                offset: *first,
                event: Arc::clone(first_event),
                attempt: 0,
                not_before: None
            }
        }]
    );
    let pending = store.pending("a").unwrap();
    assert_eq!(
        (pending.len(), pending[0].offset, pending[0].attempt),
        (1, *first, 0)
    );
    store
        .commit(dead("a", *first, failure("a", first_event, 1, "no, again")))
        .await
        .unwrap();
    let again = store.dlq_list(&by_subscription("a")).unwrap().remove(0);
    assert!(again.id > ids[2], "dead again: a new id");
    assert!(store.dlq_get(ids[0]).unwrap().is_none(), "the old id is gone");
    let history: Vec<_> = again.failures.into_iter().map(|f| f.message).collect();
    assert_eq!(history, ["no", "no, again"]);

    // Replay only the subscriptions asked for, then everything.
    let only_b = store
        .dlq_replay(&DeadLetterFilter::default(), Some(vec!["b".into()]))
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(
        store
            .dlq_replay(&DeadLetterFilter::default(), None)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(store.dlq_list(&DeadLetterFilter::default()).unwrap().is_empty());
    assert_eq!(store.stats().unwrap().pending, 3);

    // Purge: b's dead letter first, then the rest.
    for (sub, offset, e) in &offsets {
        store
            .commit(dead(sub, *offset, failure(sub, e, 1, "no")))
            .await
            .unwrap();
    }
    assert_eq!(store.dlq_purge(&by_subscription("b")).await.unwrap(), 1);
    assert!(store.dlq_list(&by_subscription("b")).unwrap().is_empty());
    assert_eq!(
        store.delivery_state("b", offsets[2].1).unwrap(),
        Some(DeliveryState::Purged)
    );
    assert_eq!(
        store.commit(ack("b", offsets[2].1)).await.unwrap(),
        CommitOutcome::AlreadyDone,
        "a purged delivery is never done again"
    );
    assert!(
        store
            .dlq_replay(&by_subscription("b"), None)
            .await
            .unwrap()
            .is_empty(),
        "purged is gone for good"
    );
    assert_eq!(store.dlq_purge(&DeadLetterFilter::default()).await.unwrap(), 2);
    let stats = store.stats().unwrap();
    assert_eq!((stats.pending, stats.dead_letters), (0, 0));
}

#[tokio::test]
async fn a_checkpoint_is_stored_with_its_append_or_not_at_all() {
    let dir = TempDir::new();
    let store = open(&dir);
    assert_eq!(store.checkpoint("pg").unwrap(), None);
    let e = event(1);
    store
        .append(AppendBatch {
            checkpoint: Some(("pg".into(), 42)),
            ..batch(std::slice::from_ref(&e), &[&["s"]])
        })
        .await
        .unwrap();
    assert_eq!(store.checkpoint("pg").unwrap(), Some(42));

    // An append that fails as a whole leaves the checkpoint where it was.
    let mismatched = AppendBatch {
        events: vec![event(2), e],
        routes: vec![Vec::new()],
        checkpoint: Some(("pg".into(), 43)),
    };
    assert!(matches!(
        store.append(mismatched).await,
        Err(StoreError::RoutesMismatch { .. })
    ));
    assert_eq!(store.checkpoint("pg").unwrap(), Some(42));
    assert_eq!(store.stats().unwrap().events, 1);

    // A checkpoint alone is a write too.
    store
        .append(AppendBatch {
            checkpoint: Some(("pg".into(), 44)),
            ..AppendBatch::default()
        })
        .await
        .unwrap();
    drop(store);
    assert_eq!(open(&dir).checkpoint("pg").unwrap(), Some(44));
}

#[tokio::test]
async fn a_garbage_header_is_reported_as_corrupt_naming_the_file() {
    let dir = TempDir::new();
    drop(open(&dir));
    let file = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[..100].copy_from_slice(&[0xA5; 100]);
    std::fs::write(&file, &bytes).unwrap();

    let error = SqliteStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    let StoreError::Corrupt { path, message } = &error else {
        panic!("expected Corrupt, got {error:?}");
    };
    assert_eq!(path, &file);
    assert!(message.contains("not a database"), "{message}");
    assert!(error.to_string().contains(&*file.to_string_lossy()), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "the data is left as it was");
}

#[tokio::test]
async fn a_damaged_table_is_reported_by_the_integrity_check() {
    let dir = TempDir::new();
    {
        let store = open(&dir);
        for n in 0..200 {
            append_one(&store, &event(n), &["s"]).await;
        }
    }
    let file = dir.path().join(FILE_NAME);
    let (page_size, root): (i64, i64) = {
        let conn = rusqlite::Connection::open(&file).unwrap();
        (
            conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap(),
            conn.query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap(),
        )
    };
    let mut bytes = std::fs::read(&file).unwrap();
    let start = ((root - 1) * page_size) as usize;
    bytes[start..start + page_size as usize].fill(0x5A);
    std::fs::write(&file, &bytes).unwrap();

    let error = SqliteStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt { path, .. } if *path == file),
        "expected Corrupt naming the file, got {error:?}"
    );
}

#[test]
fn another_programs_database_is_not_taken_over() {
    let dir = TempDir::new();
    let file = dir.path().join(FILE_NAME);
    let conn = rusqlite::Connection::open(&file).unwrap();
    conn.execute_batch("CREATE TABLE invoices (id INTEGER)").unwrap();
    drop(conn);
    let before = std::fs::read(&file).unwrap();
    let error = SqliteStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(error, StoreError::Foreign { tables: 1, .. }),
        "{error:?}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the refused file is not modified"
    );
    let conn = rusqlite::Connection::open(&file).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete", "its journal mode is left as it was");
}

#[test]
fn a_store_from_a_newer_evhost_is_refused() {
    let dir = TempDir::new();
    drop(SqliteStore::open(dir.path(), StoreOptions::default()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
    conn.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(conn);
    let error = SqliteStore::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_writer_panic_fails_requests_instead_of_hanging() {
    let dir = TempDir::new();
    let store = open(&dir);
    let e = event(1);
    append_one(&store, &e, &["s"]).await;
    let (release, held) = hold(&store);
    let (reply, panicked) = oneshot::channel();
    store.send(Op::Panic, Reply(reply)).unwrap();
    let grouped = queue_append(&store, event(2), &["s"]);
    drop(release);
    // The hold's group commits; the panic takes down the next group, the append with it.
    within(held).await.unwrap().unwrap();
    assert!(within(panicked).await.is_err());
    assert!(within(grouped).await.is_err(), "dropped, not answered");
    let error = within(store.append(batch(&[event(3)], &[&["s"]])))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::WriterPanicked), "{error:?}");
    let error = within(store.commit(ack("s", 1))).await.unwrap_err();
    assert!(matches!(error, StoreError::WriterPanicked), "{error:?}");
    let kv_write = KeyValueStore::commit(&*store, "p", vec![("k".into(), Some(vec![1]))])
        .await
        .unwrap_err();
    assert!(kv_write.message().contains("panicked"), "{kv_write}");
    assert!(!kv_write.is_transient(), "a dead writer stays dead");
    // What was committed before is intact.
    drop(store);
    let store = open(&dir);
    assert_eq!(store.pending("s").unwrap()[0].event, e);
    assert_eq!(store.stats().unwrap().events, 1);
}

#[tokio::test]
async fn a_closed_store_answers_closed() {
    let dir = TempDir::new();
    let store = open(&dir);
    let queued = queue_append(&store, event(1), &["s"]);
    within(store.close()).await;
    assert!(
        matches!(within(queued).await.unwrap(), Ok(Answer::Appended(_))),
        "queued before close: committed"
    );
    assert!(matches!(
        store.append(batch(&[event(2)], &[&["s"]])).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.dlq_purge(&DeadLetterFilter::default()).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.kv_get("p", "k"), Err(StoreError::Closed)));
    assert!(matches!(store.pending("s"), Err(StoreError::Closed)));
    let error = KeyValueStore::commit(&*store, "p", vec![("k".into(), None)])
        .await
        .unwrap_err();
    assert!(
        error.message().contains("closed") && !error.is_transient(),
        "{error}"
    );
    within(store.close()).await;
    drop(store);
    assert_eq!(open(&dir).pending("s").unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let dir = TempDir::new();
    let store = open(&dir);
    let e = event(1);
    let offset = append_one(&store, &e, &["s"]).await.offset;

    let error = store
        .append(batch(&[event(2), event(3)], &[&["s"]]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::RoutesMismatch { events: 2, routes: 1 }),
        "{error:?}"
    );

    let error = store
        .commit(DeliveryCommit {
            kv_writes: vec![("k".into(), Some(vec![1]))],
            ..retry("s", offset, 1, Utc::now(), failure("s", &e, 1, "x"))
        })
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::EffectsWithoutAck { .. }), "{error:?}");
    assert_eq!(store.kv_get("s", "k").unwrap(), None);

    let error = store.commit(ack("s", offset + 1_000)).await.unwrap_err();
    assert!(matches!(error, StoreError::UnknownOffset { .. }), "{error:?}");
    assert_eq!(store.delivery_state("s", offset + 1_000).unwrap(), None);
    assert_eq!(store.delivery_state("s", u64::MAX).unwrap(), None);
    assert_eq!(store.pending("s").unwrap().len(), 1, "untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_the_writer() {
    let dir = TempDir::new();
    let store = open(&dir);
    append_one(&store, &event(1), &["s"]).await;
    KeyValueStore::commit(&*store, "p", vec![("k".into(), Some(vec![7]))])
        .await
        .unwrap();
    let (release, held) = hold(&store);
    // The writer sits inside an open write transaction; reads still answer from the last
    // commit.
    let reader = Arc::clone(&store);
    let read = tokio::task::spawn_blocking(move || {
        (
            reader.pending("s").unwrap().len(),
            reader.kv_get("p", "k").unwrap(),
            reader.dlq_list(&DeadLetterFilter::default()).unwrap().len(),
        )
    });
    assert_eq!(within(read).await.unwrap(), (1, Some(vec![7]), 0));
    drop(release);
    within(held).await.unwrap().unwrap();
}

// ANCHOR: contract
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_the_whole_contract_of_the_storage_seam() {
    let dirs = std::sync::Mutex::new(Vec::new());
    // Every check gets a storage of its own.
    let fresh = || {
        let dir = TempDir::new();
        let store = open(&dir);
        dirs.lock().unwrap().push(dir);
        store.storage()
    };
    crate::store::contract::check_all(fresh, crate::store::contract::Claims::DURABLE).await;
}
// ANCHOR_END: contract

#[tokio::test]
async fn a_ledger_request_applies_all_of_its_commits_or_none() {
    let dir = TempDir::new();
    let store = open(&dir);
    let storage = store.storage();
    let events: Vec<_> = (0..2).map(event).collect();
    let appended = storage
        .log
        .append(batch(&events, &[&["bus"], &["bus"]]))
        .await
        .unwrap();
    let mut ack_first = ack("bus", appended[0].offset);
    ack_first.kv_writes = vec![("k".into(), Some(vec![9]))];
    let dead_second = dead("bus", appended[1].offset, failure("bus", &events[1], 1, "x"));

    // One bad commit and nothing of the request is applied.
    let error = storage
        .ledger
        .commit(&[ack_first.clone(), dead_second.clone(), ack("bus", 9_999)])
        .await
        .unwrap_err();
    assert!(
        error.message().contains("9999") && !error.is_transient(),
        "{error}"
    );
    assert_eq!(store.pending("bus").unwrap().len(), 2);
    assert_eq!(store.kv_get("bus", "k").unwrap(), None);

    let outcomes = storage.ledger.commit(&[ack_first, dead_second]).await.unwrap();
    assert!(matches!(
        outcomes.as_slice(),
        [CommitOutcome::Committed { .. }, CommitOutcome::Committed { .. }]
    ));
    assert_eq!(store.kv_get("bus", "k").unwrap(), Some(vec![9]));
}

#[tokio::test]
async fn key_values_and_their_revisions_outlive_the_process() {
    let dir = TempDir::new();
    let store = open(&dir);
    crate::store::contract::key_values(&*store).await;
    drop(store);
    let store = open(&dir);
    let value = KeyValueReader::get(&*store, "a", "j").await.unwrap().unwrap();
    assert_eq!((value.value, value.revision), (b"2".to_vec(), 1));
    let value = KeyValueReader::get(&*store, "a", "k").await.unwrap().unwrap();
    assert_eq!((value.value, value.revision), (b"6".to_vec(), 1));
}

#[tokio::test]
async fn the_counters_match_the_file() {
    let dir = TempDir::new();
    let store = open(&dir);
    let events: Vec<_> = (0..6).map(event).collect();
    let appended = store
        .append(batch(
            &events,
            &[&["a", "b"], &["a"], &["a", "a"], &[], &["b"], &["b"]],
        ))
        .await
        .unwrap();
    append_one(&store, &events[0], &["a"]).await; // duplicate
    let o = |i: usize| appended[i].offset;
    store.commit(ack("a", o(0))).await.unwrap();
    store.commit(ack("a", o(0))).await.unwrap(); // already done
    store
        .commit(retry("a", o(1), 1, Utc::now(), failure("a", &events[1], 1, "x")))
        .await
        .unwrap();
    store
        .commit(dead("b", o(4), failure("b", &events[4], 1, "x")))
        .await
        .unwrap();
    store
        .commit(dead("b", o(5), failure("b", &events[5], 1, "x")))
        .await
        .unwrap();
    store
        .commit(dead("c", o(3), failure("c", &events[3], 1, "x")))
        .await
        .unwrap(); // unrouted
    store
        .commit(retry("c", o(2), 1, Utc::now(), failure("c", &events[2], 1, "x")))
        .await
        .unwrap();
    let b5 = store
        .dlq_list(&by_subscription("b"))
        .unwrap()
        .into_iter()
        .find(|l| l.offset == o(5))
        .unwrap();
    store
        .dlq_replay(
            &DeadLetterFilter {
                id: Some(b5.id),
                subscription: None,
            },
            None,
        )
        .await
        .unwrap();
    store.dlq_purge(&by_subscription("c")).await.unwrap();

    let stats = store.stats().unwrap();
    let in_file = counted(store.path());
    assert_eq!((stats.events, stats.pending, stats.dead_letters), in_file);
    assert_eq!(in_file, (6, 5, 1));
    drop(store);
    let reopened = open(&dir).stats().unwrap();
    assert_eq!(
        (reopened.events, reopened.pending, reopened.dead_letters),
        in_file
    );
}

#[tokio::test]
async fn a_version_1_store_is_migrated_and_keeps_its_events_and_offsets() {
    let dir = TempDir::new();
    let path = dir.path().join(FILE_NAME);
    let e = event(1);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {}
             PRAGMA application_id = {}; PRAGMA user_version = 1;",
            schema::MIGRATIONS[0],
            schema::APPLICATION_ID
        ))
        .unwrap();
        conn.execute(
            "INSERT INTO events (pos, source, id, event) VALUES (7, ?1, ?2, ?3)",
            rusqlite::params![e.source, e.id, serde_json::to_string(&*e).unwrap()],
        )
        .unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.stats().unwrap().events, 1);
    let again = append_one(&store, &e, &["s"]).await;
    assert_eq!(
        again,
        Appended {
            offset: 7,
            duplicate: true
        },
        "still known, at its offset"
    );
    let next = append_one(&store, &event(2), &["s"]).await;
    assert_eq!(next.offset, 8, "offsets go on after the migrated ones");
}

#[tokio::test]
async fn events_are_found_by_id_with_each_deliverys_state_and_a_saga_by_its_correlation() {
    let dir = TempDir::new();
    let store = open(&dir);
    let placed = Arc::new(Event::new("OrderPlaced", "shop", json!({ "order": 1 })).with_id("o-1"));
    let placed_at = append_one(&store, &placed, &["billing", "mailer"]).await;
    // Another source reusing the id, and an unrelated event.
    let other = Arc::new(Event::new("OrderPlaced", "elsewhere", json!({})).with_id("o-1"));
    append_one(&store, &other, &[]).await;
    append_one(&store, &event(9), &["mailer"]).await;

    // billing handles it (version b1) and emits a request; mailer fails, then dies.
    let requested = Arc::new(Event::new("InvoiceRequested", "billing", json!({})).caused_by(&placed));
    let outcome = store
        .commit(DeliveryCommit {
            emitted: vec![(Arc::clone(&requested), vec!["invoicer".into()])],
            handler_version: Some("b1".into()),
            ..ack("billing", placed_at.offset)
        })
        .await
        .unwrap();
    let CommitOutcome::Committed { emitted } = outcome else {
        panic!("{outcome:?}")
    };
    let not_before = Utc::now() + chrono::Duration::minutes(5);
    store
        .commit(retry(
            "mailer",
            placed_at.offset,
            1,
            not_before,
            failure("mailer", &placed, 1, "smtp down"),
        ))
        .await
        .unwrap();
    let invoiced = Arc::new(Event::new("InvoiceSent", "invoicer", json!({})).caused_by(&requested));
    store
        .commit(DeliveryCommit {
            emitted: vec![(Arc::clone(&invoiced), Vec::new())],
            ..ack("invoicer", emitted[0].offset)
        })
        .await
        .unwrap();

    assert_eq!(
        store.find("o-1", None).await.unwrap().len(),
        2,
        "two sources share the id"
    );
    let found = store.find("o-1", Some("shop")).await.unwrap();
    assert_eq!(found.len(), 1);
    let found = &found[0];
    assert_eq!(
        (found.offset, found.event.ty.as_str()),
        (placed_at.offset, "OrderPlaced")
    );
    assert_eq!(found.emitted_by, None, "published, not emitted");
    let states: Vec<(&str, &DeliveryState)> = found
        .deliveries
        .iter()
        .map(|d| (d.subscription.as_str(), &d.state))
        .collect();
    let [
        (
            "billing",
            DeliveryState::Handled {
                at: Some(at),
                version,
            },
        ),
        (
            "mailer",
            DeliveryState::Pending {
                attempt: 1,
                not_before: Some(retry_at),
            },
        ),
    ] = states.as_slice()
    else {
        panic!("{states:?}")
    };
    assert!((Utc::now() - *at).num_seconds() < 60, "{at}");
    assert_eq!(version.as_deref(), Some("b1"));
    assert_eq!(retry_at.timestamp_millis(), not_before.timestamp_millis());
    let mailer = &found.deliveries[1];
    assert_eq!(mailer.failures, 1);
    assert_eq!(mailer.last_failure.as_ref().unwrap().message, "smtp down");

    let emitted_one = &store.find(&requested.id, None).await.unwrap()[0];
    assert_eq!(emitted_one.emitted_by.as_deref(), Some("billing"));
    assert!(matches!(
        emitted_one.deliveries[..],
        [DeliveryView { ref subscription, state: DeliveryState::Handled { version: None, .. }, .. }] if subscription == "invoicer"
    ));

    // The saga, from any of its events' correlation: the root and what followed, in order.
    let saga = store.correlated(&placed.id, 100).await.unwrap();
    let types: Vec<&str> = saga.iter().map(|e| e.event.ty.as_str()).collect();
    assert_eq!(
        types,
        ["OrderPlaced", "OrderPlaced", "InvoiceRequested", "InvoiceSent"],
        "both o-1s start it"
    );
    assert_eq!(
        store.correlated(&placed.id, 2).await.unwrap().len(),
        2,
        "the limit holds"
    );

    // Lists: newest first, by type, oldest first after an offset.
    let newest = store
        .page(EventQuery {
            limit: 2,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.event.ty.as_str()).collect::<Vec<_>>(),
        ["InvoiceSent", "InvoiceRequested"]
    );
    let older = store
        .page(EventQuery {
            before: Some(newest[1].offset),
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(older.len(), 3);
    let placed_only = store
        .page(EventQuery {
            event_type: Some("OrderPlaced".into()),
            after: Some(0),
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        placed_only
            .iter()
            .map(|e| e.event.source.as_str())
            .collect::<Vec<_>>(),
        ["shop", "elsewhere"]
    );
    let by_subject = store
        .page(EventQuery {
            subject: Some("user-9".into()),
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(by_subject.len(), 1);
}

#[tokio::test]
async fn a_version_3_store_is_migrated_and_its_sagas_are_found() {
    let dir = TempDir::new();
    let path = dir.path().join(FILE_NAME);
    let root = Event::new("OrderPlaced", "shop", json!({})).with_id("root");
    let child = Event::new("Invoiced", "billing", json!({})).caused_by(&root);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {} {} {}
             PRAGMA application_id = {}; PRAGMA user_version = 3;",
            schema::MIGRATIONS[0],
            schema::MIGRATIONS[1],
            schema::MIGRATIONS[2],
            schema::APPLICATION_ID
        ))
        .unwrap();
        for (pos, e) in [(1, &root), (2, &child)] {
            conn.execute(
                "INSERT INTO events (pos, source, id, event) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![pos, e.source, e.id, serde_json::to_string(e).unwrap()],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO subscriptions (id, name) VALUES (1, 'billing');
             INSERT INTO deliveries (sub, pos, state) VALUES (1, 1, 1);",
        )
        .unwrap();
    }
    let store = open(&dir);
    let saga = store.correlated("root", 10).await.unwrap();
    assert_eq!(saga.iter().map(|e| e.offset).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        saga[0].deliveries[0].state,
        DeliveryState::Handled {
            at: None,
            version: None
        },
        "handled before the store recorded when and by which version"
    );
    let again = append_one(&store, &Arc::new(root.clone()), &[]).await;
    assert!(again.duplicate, "the id index still makes publishing idempotent");
}

#[tokio::test]
async fn an_event_and_a_saga_are_read_through_indexes_however_long_the_log() {
    let dir = TempDir::new();
    let store = open(&dir);
    let events: Vec<Arc<Event>> = (0..100)
        .map(|n| Arc::new(event(n).as_ref().clone().with_id(format!("e{n}"))))
        .collect();
    let routes: Vec<&[&str]> = (0..100).map(|_| &["a", "b"][..]).collect();
    store.append(batch(&events, &routes)).await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
    for sql in [
        read::find_sql(),
        read::correlated_sql(),
        read::DELIVERIES.to_owned(),
    ] {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = vec![rusqlite::types::Value::Integer(1); stmt.parameter_count()];
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(params), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Scanning is fine only for the subscriptions (a handful) and a subquery's rows.
        let scans: Vec<&String> = plan
            .iter()
            .filter(|step| {
                step.starts_with("SCAN")
                    && !step.starts_with("SCAN s ")
                    && !step.starts_with("SCAN (subquery")
            })
            .collect();
        assert!(scans.is_empty(), "{sql}\n{plan:#?}");
    }
}
