//! The PostgreSQL outbox relay, against the real server: `TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`. Every test installs the outbox in a schema of its
//! own, dropped when the test ends, and relays into [`MemoryTarget`] — or, end to end, into
//! an `AsyncEventBus` over the SQLite log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evhost::Event;
use evhost::outbox::{Outbox, OutboxConfig, OutboxRelay, OutboxTarget};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use crate::helpers::TempDir;

/// Long enough that an event arriving within [`FAST`] cannot have been found by a poll.
const SLOW_POLL: Duration = Duration::from_secs(10);
const FAST: Duration = Duration::from_secs(2);
/// Generous bound for anything that should happen promptly; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

fn database_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A connection whose sessions show up in `pg_stat_activity` as `application_name`.
async fn connect(application_name: &str) -> Arc<Client> {
    let mut config: tokio_postgres::Config = database_url().parse().unwrap();
    config.application_name(application_name);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 is running");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Arc::new(client)
}

/// An outbox in a fresh schema, with an `orders` table standing for the application's data.
struct TestDb {
    schema: String,
    client: Arc<Client>,
}

impl TestDb {
    async fn new() -> Self {
        let schema = format!("evhost_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let client = connect(&format!("{schema}-test")).await;
        Outbox::install_schema(&client, &schema).await.unwrap();
        client
            .batch_execute(&format!("CREATE TABLE {schema}.orders (id text PRIMARY KEY)"))
            .await
            .unwrap();
        Self { schema, client }
    }

    /// A relay named after the schema, so its `application_name` is unique to this test.
    fn config(&self, batch_size: usize, poll_interval: Duration) -> OutboxConfig {
        OutboxConfig {
            schema: self.schema.clone(),
            relay_name: self.schema.clone(),
            batch_size,
            poll_interval,
            ..OutboxConfig::new(database_url())
        }
    }

    /// Commits one row on its own.
    async fn write(&self, id: &str) {
        insert_row(&self.client, &self.schema, id).await;
    }

    /// The outbox's positions, in order.
    async fn positions(&self) -> Vec<i64> {
        let sql = format!("SELECT position FROM {}.outbox ORDER BY position", self.schema);
        let rows = self.client.query(&sql, &[]).await.unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    }

    async fn execute(&self, sql: &str) {
        self.client.batch_execute(sql).await.unwrap();
    }

    /// Waits until `n` sessions of `application_name` are waiting on a lock.
    async fn wait_for_lock_waiters(&self, application_name: &str, n: i64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let waiting: i64 = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND wait_event_type = 'Lock'",
                    &[&application_name],
                )
                .await
                .unwrap()
                .get(0);
            if waiting == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting} sessions wait on a lock, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Drops the schema even when the test panics.
impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = connect("evhost-test-cleanup").await;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop test schema {}: {dropped:?}", self.schema);
        }
    }
}

async fn insert_row(client: &Client, schema: &str, id: &str) {
    client
        .execute(
            &format!(
                "INSERT INTO {schema}.outbox (id, source, type, subject, data) \
                 VALUES ($1, 'tests', 'OrderPlaced', $1, $2::text::jsonb)"
            ),
            &[&id, &json!({ "order": id }).to_string()],
        )
        .await
        .unwrap();
}

/// A failure the [`MemoryTarget`] injects into one `append_with_checkpoint` call.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Fails without storing anything, like a crash before the store's commit.
    BeforeCommit,
    /// Stores the batch and its checkpoint, then fails, like a crash right after the commit.
    AfterCommit,
    /// Never returns, so the test can kill the relay mid-batch.
    Hang,
}

#[derive(Default)]
struct Stored {
    events: Vec<Event>,
    keys: HashSet<(String, String)>,
    checkpoints: HashMap<String, i64>,
    /// Events the relay offered again though already stored: the relay should never need the
    /// target's deduplication.
    offered_again: Vec<String>,
    /// Checkpoints that would have moved backwards.
    regressions: Vec<(i64, i64)>,
}

/// The durable log's stand-in: events and checkpoints change together, under one lock, so an
/// append is atomic as the SQLite store's transaction is.
struct MemoryTarget {
    stored: Mutex<Stored>,
    faults: Mutex<HashMap<usize, Fault>>,
    appends: AtomicUsize,
    count: watch::Sender<usize>,
    hung: Notify,
}

impl MemoryTarget {
    fn new() -> Arc<Self> {
        Self::with_faults([])
    }

    /// Faults keyed by the 1-based number of the `append_with_checkpoint` call they hit.
    fn with_faults(faults: impl IntoIterator<Item = (usize, Fault)>) -> Arc<Self> {
        Arc::new(Self {
            stored: Mutex::default(),
            faults: Mutex::new(faults.into_iter().collect()),
            appends: AtomicUsize::new(0),
            count: watch::channel(0).0,
            hung: Notify::new(),
        })
    }

    fn ids(&self) -> Vec<String> {
        self.stored
            .lock()
            .unwrap()
            .events
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    fn events(&self) -> Vec<Event> {
        self.stored.lock().unwrap().events.clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) {
        let mut count = self.count.subscribe();
        let arrived = tokio::time::timeout(within, count.wait_for(|&count| count >= n)).await;
        assert!(
            arrived.is_ok(),
            "{} of {n} events arrived within {within:?}: {:?}",
            *self.count.borrow(),
            self.ids()
        );
    }

    /// Nothing stored twice, nothing offered twice, the checkpoint never moved back.
    fn assert_clean(&self) {
        let (offered_again, regressions) = {
            let stored = self.stored.lock().unwrap();
            (stored.offered_again.clone(), stored.regressions.clone())
        };
        assert_eq!(offered_again, Vec::<String>::new(), "events offered again");
        assert_eq!(regressions, Vec::new(), "checkpoint moved backwards");
    }
}

impl OutboxTarget for MemoryTarget {
    fn checkpoint(&self, relay: &str) -> BoxFuture<'_, anyhow::Result<Option<i64>>> {
        let checkpoint = self.stored.lock().unwrap().checkpoints.get(relay).copied();
        Box::pin(async move { Ok(checkpoint) })
    }

    fn append_with_checkpoint<'a>(
        &'a self,
        events: Vec<Event>,
        relay: &'a str,
        position: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        let call = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
        let fault = self.faults.lock().unwrap().remove(&call);
        Box::pin(async move {
            // A real store awaits its writer; give an abort the chance to land here.
            tokio::task::yield_now().await;
            match fault {
                Some(Fault::BeforeCommit) => anyhow::bail!("injected failure before commit (call {call})"),
                Some(Fault::Hang) => {
                    self.hung.notify_one();
                    futures::future::pending::<()>().await;
                }
                _ => {}
            }
            {
                let mut stored = self.stored.lock().unwrap();
                for event in events {
                    if stored.keys.insert((event.source.clone(), event.id.clone())) {
                        stored.events.push(event);
                    } else {
                        stored.offered_again.push(event.id);
                    }
                }
                if let Some(previous) = stored.checkpoints.insert(relay.to_owned(), position)
                    && previous > position
                {
                    stored.regressions.push((previous, position));
                }
                self.count.send_replace(stored.events.len());
            }
            if let Some(Fault::AfterCommit) = fault {
                anyhow::bail!("injected failure after commit (call {call})");
            }
            Ok(())
        })
    }
}

/// A relay running in its own task.
struct Running {
    task: JoinHandle<anyhow::Result<()>>,
    shutdown: CancellationToken,
}

impl Running {
    fn start(config: OutboxConfig, target: Arc<dyn OutboxTarget>) -> Self {
        let shutdown = CancellationToken::new();
        let relay = OutboxRelay::new(config, target);
        let task = tokio::spawn(relay.run(shutdown.clone()));
        Self { task, shutdown }
    }

    /// Graceful shutdown: `run` returns `Ok` promptly.
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the relay stops promptly on shutdown");
        result.unwrap().unwrap();
    }

    /// Like `kill -9`: the task is dropped wherever it is.
    async fn kill(self) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
    }
}

/// One application transaction on its own connection, opened with some of its own data.
struct AppTx {
    name: String,
    client: Arc<Client>,
}

impl AppTx {
    async fn begin(db: &TestDb, application_name: &str, name: String) -> Self {
        let client = connect(application_name).await;
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO {}.orders (id) VALUES ('{name}'); SELECT txid_current();",
                db.schema
            ))
            .await
            .unwrap();
        Self { name, client }
    }

    /// Starts inserting `rows` outbox rows, one statement each, in a task of its own: it waits
    /// while another transaction holds the position counter. Yields the ids in insert order.
    fn insert(&self, schema: &str, rows: usize) -> JoinHandle<(String, Vec<String>)> {
        let (client, schema, name) = (Arc::clone(&self.client), schema.to_owned(), self.name.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for row in 0..rows {
                let id = format!("{name}/{row}");
                insert_row(&client, &schema, &id).await;
                ids.push(id);
            }
            (name, ids)
        })
    }

    async fn end(&self, commit: bool) {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        self.client.batch_execute(sql).await.unwrap();
    }
}

/// Opens `txs.len()` transactions in order, then lets them all insert into the outbox at once:
/// they queue on the position counter. Whichever finishes inserting holds the counter and is
/// ended next — committed unless `rollback(name)` — so the order of the ends, recorded here, is
/// the commit order. Returns the committed ids in that order.
async fn contend(db: &TestDb, txs: &[(String, usize)], rollback: impl Fn(&str) -> bool) -> Vec<String> {
    let application_name = format!("{}-writers", db.schema);
    let mut open = HashMap::new();
    for (name, _) in txs {
        open.insert(
            name.clone(),
            AppTx::begin(db, &application_name, name.clone()).await,
        );
    }
    let mut inserting: FuturesUnordered<_> = txs
        .iter()
        .map(|(name, rows)| open[name].insert(&db.schema, *rows))
        .collect();
    let mut committed = Vec::new();
    while let Some(inserted) = inserting.next().await {
        let (name, ids) = inserted.unwrap();
        let commit = !rollback(&name);
        open[&name].end(commit).await;
        if commit {
            committed.extend(ids);
        }
    }
    committed
}

/// Commits a last row: once it has arrived, so has everything committed before it.
async fn sentinel(db: &TestDb, target: &MemoryTarget, expected: &mut Vec<String>) {
    db.write("sentinel").await;
    expected.push("sentinel".to_owned());
    target.wait_for(expected.len(), PATIENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_arrive_exactly_once_in_commit_order() {
    let db = TestDb::new().await;
    let target = MemoryTarget::new();
    let relay = Running::start(db.config(2, SLOW_POLL), target.clone());
    let writers = format!("{}-writers", db.schema);

    // t0..t4 start in this order and write their own data.
    let mut txs = Vec::new();
    for i in 0..5 {
        txs.push(AppTx::begin(&db, &writers, format!("t{i}")).await);
    }
    // t3 inserts first and so holds the counter; the others queue behind it.
    let (_, t3_ids) = txs[3].insert(&db.schema, 2).await.unwrap();
    let mut waiting: FuturesUnordered<_> = [0, 1, 2, 4]
        .iter()
        .map(|&i| txs[i].insert(&db.schema, i + 1))
        .collect();
    db.wait_for_lock_waiters(&writers, 4).await;
    txs[3].end(true).await;
    let mut expected = t3_ids;
    let mut commit_order = vec!["t3".to_owned()];
    // The rest end in whatever order the counter admits them; t1 and t4 roll back after holding
    // it, while others wait.
    while let Some(inserted) = waiting.next().await {
        let (name, ids) = inserted.unwrap();
        let commit = name != "t1" && name != "t4";
        let tx = txs.iter().find(|tx| tx.name == name).unwrap();
        tx.end(commit).await;
        if commit {
            commit_order.push(name);
            expected.extend(ids);
        }
    }
    assert_eq!(commit_order.len(), 3, "{commit_order:?}");

    sentinel(&db, &target, &mut expected).await;
    assert_eq!(
        target.ids(),
        expected,
        "committed rows in commit order {commit_order:?}"
    );
    target.assert_clean();

    // A rolled-back transaction leaves no gap: positions are 1..=n, in commit order.
    assert_eq!(
        db.positions().await,
        (1..=expected.len() as i64).collect::<Vec<_>>()
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_resumes_without_dropping_or_duplicating_a_row() {
    let db = TestDb::new().await;
    // Crashes on both sides of the store's commit, then a hang to kill the relay in.
    let target = MemoryTarget::with_faults([
        (2, Fault::BeforeCommit),
        (4, Fault::AfterCommit),
        (5, Fault::BeforeCommit),
        (9, Fault::Hang),
    ]);
    let config = db.config(3, SLOW_POLL);
    let relay = Running::start(config.clone(), target.clone());

    let round = |r: usize| -> Vec<(String, usize)> {
        (0..4).map(|i| (format!("r{r}t{i}"), 1 + (r + i) % 3)).collect()
    };
    let rollback = |name: &str| name.ends_with("t1") || name == "r2t3" || name == "r5t0";
    let mut expected = Vec::new();
    for r in 0..8 {
        expected.extend(contend(&db, &round(r), rollback).await);
    }
    tokio::time::timeout(PATIENCE, target.hung.notified())
        .await
        .expect("the relay reached the hanging append");
    relay.kill().await;
    let before_restart = target.ids().len();
    assert!(
        before_restart < expected.len(),
        "the relay was killed with rows still to relay"
    );

    // Rows keep committing while no relay runs.
    for r in 8..12 {
        expected.extend(contend(&db, &round(r), rollback).await);
    }
    let relay = Running::start(config, target.clone());
    sentinel(&db, &target, &mut expected).await;
    assert_eq!(target.ids(), expected);
    target.assert_clean();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_delivers_a_committed_row_long_before_the_poll_interval() {
    let db = TestDb::new().await;
    let target = MemoryTarget::new();
    let relay = Running::start(db.config(100, SLOW_POLL), target.clone());
    db.write("warm-up").await;
    target.wait_for(1, PATIENCE).await;

    for n in 2..=4 {
        // Let the relay settle into waiting, so only a notification can wake it early.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let event = Event::new("OrderPlaced", "shop", json!({"order": n, "lines": [1, 2]}))
            .with_subject(format!("order-{n}"))
            .with_dataschema("https://schemas.example/order/v1")
            .with_correlation_id("flow-1")
            .with_extension("priority", 3)
            .with_extension("traced", true);
        let started = Instant::now();
        Outbox::write(&*db.client, &db.schema, &event).await.unwrap();
        target.wait_for(n, FAST).await;
        assert!(started.elapsed() < FAST);

        // Every attribute survives the trip; the time is kept to the microsecond.
        let mut expected = event;
        let micros = expected.time.unwrap().timestamp_micros();
        expected.time = chrono::DateTime::from_timestamp_micros(micros);
        assert_eq!(target.events().last(), Some(&expected));
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_relays_rows_whose_notifications_were_lost() {
    let db = TestDb::new().await;
    // Rows committed before the relay starts, and no notifications at all.
    db.write("early-1").await;
    db.write("early-2").await;
    db.execute(&format!(
        "ALTER TABLE {}.outbox DISABLE TRIGGER outbox_notify",
        db.schema
    ))
    .await;
    let target = MemoryTarget::new();
    let relay = Running::start(db.config(100, Duration::from_millis(300)), target.clone());
    target.wait_for(2, PATIENCE).await;

    db.write("silent-1").await;
    db.write("silent-2").await;
    target.wait_for(4, PATIENCE).await;
    assert_eq!(target.ids(), ["early-1", "early-2", "silent-1", "silent-2"]);
    target.assert_clean();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_loses_its_connection_reconnects_and_catches_up() {
    let db = TestDb::new().await;
    let target = MemoryTarget::new();
    let relay = Running::start(db.config(100, SLOW_POLL), target.clone());
    db.write("before").await;
    target.wait_for(1, PATIENCE).await;

    let relay_session = format!("evhost-outbox-{}", db.schema);
    let terminated: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1) AS t",
            &[&relay_session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1);
    // Committed while the relay is disconnected: nobody hears these notifications.
    db.write("while-away-1").await;
    db.write("while-away-2").await;
    // The reconnection's first read finds them, well before the 10 s poll would.
    target.wait_for(3, Duration::from_secs(5)).await;
    assert_eq!(target.ids(), ["before", "while-away-1", "while-away-2"]);
    assert!(!relay.task.is_finished());
    target.assert_clean();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_row_is_recorded_as_rejected_and_does_not_block_the_relay() {
    let db = TestDb::new().await;
    // The batch holding the bad row fails once, so it is read and rejected twice.
    let target = MemoryTarget::with_faults([(1, Fault::BeforeCommit)]);
    let relay = Running::start(db.config(100, SLOW_POLL), target.clone());
    let schema = &db.schema;

    // What the schema's constraints let through but no JSON parser evhost uses can hold.
    let huge = format!("1{}", "0".repeat(400));
    db.execute(&format!(
        "BEGIN;
         INSERT INTO {schema}.outbox (id, source, type) VALUES ('good-1', 'tests', 'OrderPlaced');
         INSERT INTO {schema}.outbox (id, source, type, data) VALUES ('bad', 'tests', 'OrderPlaced', '{{\"n\": {huge}}}');
         INSERT INTO {schema}.outbox (id, source, type) VALUES ('good-2', 'tests', 'OrderPlaced');
         COMMIT;"
    ))
    .await;
    target.wait_for(2, PATIENCE).await;
    assert_eq!(target.ids(), ["good-1", "good-2"]);

    let rejected = db
        .client
        .query(
            &format!("SELECT relay, position, error FROM {schema}.outbox_rejected"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rejected.len(), 1, "recorded once though read twice");
    assert_eq!(rejected[0].get::<_, String>(0), *schema);
    assert_eq!(rejected[0].get::<_, i64>(1), 2);
    let error: String = rejected[0].get(2);
    assert!(error.contains("column `data`"), "{error}");
    let still_there: i64 = db
        .client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.outbox WHERE position = 2"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(still_there, 1, "the row stays in the outbox");

    // Fixed and re-queued as the module docs describe, it is relayed after the others.
    db.execute(&format!(
        "BEGIN;
         WITH old AS (DELETE FROM {schema}.outbox WHERE position = 2 RETURNING *)
         INSERT INTO {schema}.outbox (id, source, type, subject, time, datacontenttype, dataschema, data, extensions)
         SELECT id, source, type, subject, time, datacontenttype, dataschema, '{{\"n\": 1}}', extensions FROM old;
         DELETE FROM {schema}.outbox_rejected WHERE position = 2;
         COMMIT;"
    ))
    .await;
    target.wait_for(3, PATIENCE).await;
    assert_eq!(target.ids(), ["good-1", "good-2", "bad"]);
    assert_eq!(target.events()[2].json_data(), Some(&json!({"n": 1})));

    // Most malformed events never get in: the producer's own transaction fails.
    let refused = [
        format!(
            "INSERT INTO {schema}.outbox (id, source, type, extensions) VALUES ('x', 'tests', 'T', '{{\"Bad-Name\": 1}}')"
        ),
        format!("INSERT INTO {schema}.outbox (id, source, type) VALUES ('', 'tests', 'T')"),
        format!(
            "INSERT INTO {schema}.outbox (id, source, type, time) VALUES ('x', 'tests', 'T', 'infinity')"
        ),
    ];
    for insert in refused {
        let err = db.client.batch_execute(&insert).await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{insert}: {err}");
    }
    target.assert_clean();
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_outbox_stops_the_relay_with_an_explanation() {
    let db = TestDb::new().await;
    let config = OutboxConfig {
        schema: format!("{}_absent", db.schema),
        ..db.config(10, SLOW_POLL)
    };
    let relay = OutboxRelay::new(config, MemoryTarget::new());
    let result = tokio::time::timeout(PATIENCE, relay.run(CancellationToken::new()))
        .await
        .expect("a missing schema is not retried");
    let message = format!("{:#}", result.unwrap_err());
    assert!(message.contains("not installed"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_past_the_outbox_is_refused_rather_than_skipping_rows() {
    let db = TestDb::new().await;
    db.write("first").await;
    let target = MemoryTarget::new();
    target
        .stored
        .lock()
        .unwrap()
        .checkpoints
        .insert(db.schema.clone(), 1000);
    let relay = OutboxRelay::new(db.config(10, SLOW_POLL), target.clone());
    let result = tokio::time::timeout(PATIENCE, relay.run(CancellationToken::new()))
        .await
        .expect("a checkpoint past the outbox is not retried");
    let message = format!("{:#}", result.unwrap_err());
    assert!(message.contains("past the last position"), "{message}");
    assert!(target.ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_the_schema_is_idempotent_and_safe_to_race() {
    let db = TestDb::new().await;
    db.write("kept").await;
    Outbox::install_schema(&db.client, &db.schema).await.unwrap();
    let count: i64 = db
        .client
        .query_one(&format!("SELECT count(*) FROM {}.outbox", db.schema), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);

    // Two processes installing a fresh schema at once.
    let fresh = TestDb {
        schema: format!("{}_b", db.schema),
        client: connect("evhost-test-install").await,
    };
    let other = connect("evhost-test-install").await;
    let (a, b) = tokio::join!(
        Outbox::install_schema(&fresh.client, &fresh.schema),
        Outbox::install_schema(&other, &fresh.schema)
    );
    a.unwrap();
    b.unwrap();
    fresh.write("one").await;
    fresh.write("two").await;
    assert_eq!(fresh.positions().await, [1, 2]);
}

/// Records the ids it handles, in order (one invocation at a time: the order of the log).
struct IdRecorder {
    ids: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

#[evhost::async_trait]
impl evhost::EventHandler for IdRecorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn handle(&self, event: Arc<Event>) -> Result<evhost::bus::Effects, evhost::HandlerError> {
        let mut ids = self.ids.lock().unwrap();
        ids.push(event.id.clone());
        self.count.send_replace(ids.len());
        Ok(evhost::bus::Effects::none())
    }
}

impl IdRecorder {
    async fn wait_for(&self, n: usize) {
        let mut count = self.count.subscribe();
        let arrived = tokio::time::timeout(PATIENCE, count.wait_for(|&count| count >= n)).await;
        assert!(arrived.is_ok(), "{} of {n} events handled", *self.count.borrow());
    }
}

/// A bus over the SQLite log in `dir`, with the recorder subscribed one at a time.
async fn durable_bus(
    dir: &TempDir,
    recorder: Arc<IdRecorder>,
) -> (evhost::AsyncEventBus, Arc<evhost::store::sqlite::SqliteStore>) {
    use evhost::EventBus as _;
    let store = dir.open();
    let bus = evhost::AsyncEventBus::with_storage(Default::default(), store.storage());
    let options = evhost::SubscribeOptions {
        name: Some("recorder".into()),
        concurrency: Some(1),
        ..Default::default()
    };
    bus.subscribe_with("*", recorder, options).unwrap();
    bus.start().await.unwrap();
    (bus, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_into_the_durable_bus_every_committed_row_is_handled_once_in_commit_order() {
    let db = TestDb::new().await;
    let dir = TempDir::new("outbox-bus");
    let recorder = Arc::new(IdRecorder {
        ids: Mutex::default(),
        count: watch::channel(0).0,
    });
    let (bus, store) = durable_bus(&dir, recorder.clone()).await;
    let config = db.config(3, SLOW_POLL);
    let relay = Running::start(config.clone(), Arc::new(bus.clone()));

    let round = |r: usize| -> Vec<(String, usize)> {
        (0..4).map(|i| (format!("r{r}t{i}"), 1 + (r + i) % 3)).collect()
    };
    let rollback = |name: &str| name.ends_with("t1") || name == "r2t3";
    let mut expected = Vec::new();
    for r in 0..4 {
        expected.extend(contend(&db, &round(r), rollback).await);
    }
    // Killed wherever it is: between batches, or with an append in flight.
    relay.kill().await;
    for r in 4..8 {
        expected.extend(contend(&db, &round(r), rollback).await);
    }
    // The whole host goes down and comes back on the same directory.
    use evhost::EventBus as _;
    bus.stop().await.unwrap();
    drop(bus);
    store.close().await;
    drop(store);
    let (bus, store) = durable_bus(&dir, recorder.clone()).await;
    let relay = Running::start(config, Arc::new(bus.clone()));
    db.write("sentinel").await;
    expected.push("sentinel".to_owned());
    recorder.wait_for(expected.len()).await;
    bus.wait().await;
    assert_eq!(
        *recorder.ids.lock().unwrap(),
        expected,
        "exactly the committed rows, in commit order"
    );
    let last: i64 = db
        .client
        .query_one(&format!("SELECT max(position) FROM {}.outbox", db.schema), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        store.checkpoint(&db.schema).unwrap(),
        Some(last),
        "the checkpoint is the last row"
    );
    relay.stop().await;
    bus.stop().await.unwrap();
    drop(bus);
    store.close().await;
}
