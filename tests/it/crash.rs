//! `kill -9` of the real binary under load: the durable log loses no accepted event and
//! applies none twice.
//!
//! Publishers keep posting batches while the host is killed and restarted on the same data
//! directory again and again. A batch whose request failed has an unknown outcome (stored
//! or not), so it is sent again after the restart: publishing is idempotent on `source` +
//! `id`, and the event ids that were stored already come back as duplicates. At the end the
//! `recorder` plugin's counters, the user projection and the saga's emitted events must look
//! exactly as if every event had been handled once by a host that never crashed.
//!
//! The event list is generated from a seed, printed at the start; set `EVHOST_CRASH_SEED` to
//! generate the same list again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use evhost::store::sqlite::{SqliteStore, StoreOptions};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::{Running, TempDir, get_text, install};
use crate::wasm;

const SOURCE: &str = "crash-test";
const USERS: usize = 700;
const PAYMENTS: usize = 500;
/// Publishers at once; each owns a share of the subjects, so one subject's events are sent
/// in order by one publisher.
const LANES: usize = 3;
const KILLS: usize = 16;

/// A tiny xorshift64* generator: the event list must be reproducible from the seed alone.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// One generated event, in the CloudEvents JSON format.
struct Generated {
    id: String,
    subject: String,
    json: Value,
}

/// The user read model the projection must end with, computed from the event list.
#[derive(Debug, Clone, PartialEq)]
struct ExpectedUser {
    name: String,
    email: String,
    phone: Option<String>,
    address: Option<Value>,
    version: u64,
    last_event_id: String,
}

/// Everything generated from the seed, and what handling it exactly once must produce.
struct Scenario {
    /// Per subject, its events in the order they must be published.
    streams: Vec<Vec<Generated>>,
    /// `user:{id}` → the read model; `None` for a user deleted at the end.
    users: BTreeMap<String, Option<ExpectedUser>>,
    /// `emitted:{type}:{payment}` keys the recorder must hold, each at 1.
    emitted: BTreeSet<String>,
}

impl Scenario {
    fn generate(rng: &mut Rng) -> Self {
        let mut next_id = 0;
        let mut event = |ty: &str, subject: &str, data: Value| {
            next_id += 1;
            let id = format!("e{next_id:05}");
            let json = json!({
                "specversion": "1.0", "id": id, "source": SOURCE, "type": ty,
                "subject": subject, "datacontenttype": "application/json", "data": data,
            });
            Generated {
                id,
                subject: subject.to_owned(),
                json,
            }
        };
        let mut streams = Vec::new();
        let mut users = BTreeMap::new();
        for u in 0..USERS {
            let id = format!("u{u}");
            let mut user = ExpectedUser {
                name: format!("User {u}"),
                email: format!("user{u}@example.com"),
                phone: rng.chance(50).then(|| format!("+1 555 {u:04}")),
                address: None,
                version: 1,
                last_event_id: String::new(),
            };
            let created = event(
                "UserCreated",
                &id,
                json!({"id": id, "name": user.name, "email": user.email, "phone": user.phone}),
            );
            user.last_event_id.clone_from(&created.id);
            let mut stream = vec![created];
            for n in 0..2 + rng.below(9) {
                let (ty, data) = match rng.below(5) {
                    0 => {
                        user.name = format!("User {u} v{n}");
                        ("UserProfileUpdated", json!({"name": user.name}))
                    }
                    1 => {
                        let address = json!({"street": null, "city": format!("City {}", rng.below(50)),
                            "postal_code": null, "country": "NL"});
                        user.address = Some(address.clone());
                        ("UserProfileUpdated", json!({"address": address}))
                    }
                    2 => {
                        user.email = format!("user{u}.{n}@example.org");
                        ("UserContactUpdated", json!({"email": user.email}))
                    }
                    3 => {
                        user.phone = Some(format!("+31 6 {u:04}{n:02}"));
                        ("UserContactUpdated", json!({"phone": user.phone}))
                    }
                    _ => {
                        user.phone = None;
                        ("UserContactUpdated", json!({"phone": null}))
                    }
                };
                let update = event(ty, &id, data);
                user.version += 1;
                user.last_event_id.clone_from(&update.id);
                stream.push(update);
            }
            let deleted = rng.chance(15);
            if deleted {
                stream.push(event("UserDeleted", &id, json!({"id": id})));
            }
            users.insert(id, (!deleted).then_some(user));
            streams.push(stream);
        }
        let mut emitted = BTreeSet::new();
        for p in 0..PAYMENTS {
            let id = format!("p{p}");
            let order = format!("o{p}");
            let items: Vec<Value> = (0..1 + rng.below(3))
                .map(|i| json!({"sku": format!("sku-{}", rng.below(100)), "quantity": 1 + i}))
                .collect();
            let created = event(
                "PaymentCreated",
                &id,
                json!({"payment_id": id, "order_id": order, "amount": 100 + rng.below(10_000),
                    "currency": "EUR", "items": items}),
            );
            emitted.insert(format!("emitted:InventoryReservationRequested:{id}"));
            let outcome = if rng.chance(70) {
                emitted.insert(format!("emitted:ShipmentRequested:{id}"));
                event(
                    "InventoryReserved",
                    &id,
                    json!({"payment_id": id, "order_id": order, "reservation_id": format!("r{p}")}),
                )
            } else {
                emitted.insert(format!("emitted:PaymentCancelled:{id}"));
                event(
                    "InventoryReservationFailed",
                    &id,
                    json!({"payment_id": id, "order_id": order, "reason": "out of stock"}),
                )
            };
            streams.push(vec![created, outcome]);
        }
        Self {
            streams,
            users,
            emitted,
        }
    }

    fn event_ids(&self) -> Vec<String> {
        self.streams.iter().flatten().map(|e| e.id.clone()).collect()
    }

    /// Interleaves the subjects' streams at random, keeping each one's order, and splits the
    /// result into `LANES` publishers' batches: a subject always goes to the same lane.
    fn into_lanes(self, rng: &mut Rng) -> Vec<Vec<Batch>> {
        let mut streams: Vec<std::vec::IntoIter<Generated>> =
            self.streams.into_iter().map(Vec::into_iter).collect();
        let mut lanes: Vec<Vec<Generated>> = (0..LANES).map(|_| Vec::new()).collect();
        while !streams.is_empty() {
            let pick = rng.below(streams.len());
            match streams[pick].next() {
                Some(event) => {
                    let lane = lane_of(&event.subject);
                    lanes[lane].push(event);
                }
                None => {
                    streams.swap_remove(pick);
                }
            }
        }
        lanes
            .into_iter()
            .map(|events| {
                let mut batches = Vec::new();
                let mut events = events.into_iter().peekable();
                while events.peek().is_some() {
                    let size = 10 + rng.below(40);
                    let batch: Vec<Generated> = events.by_ref().take(size).collect();
                    batches.push(Batch {
                        ids: batch.iter().map(|e| e.id.clone()).collect(),
                        body: Value::Array(batch.into_iter().map(|e| e.json).collect()).to_string(),
                    });
                }
                batches
            })
            .collect()
    }
}

fn lane_of(subject: &str) -> usize {
    subject.bytes().map(usize::from).sum::<usize>() % LANES
}

/// One request's worth of events.
struct Batch {
    ids: Vec<String>,
    body: String,
}

/// What the publishers saw.
#[derive(Default)]
struct Counts {
    /// Events answered 202, counted once each.
    accepted: AtomicU64,
    /// Event ids a re-sent batch got back as duplicates (stored by a request that failed).
    duplicates: AtomicU64,
    /// Requests that failed with no answer (connection refused or reset by a kill).
    failed_requests: AtomicU64,
    /// Requests answered 503 (the host was not accepting).
    unavailable: AtomicU64,
    /// Batches sent more than once.
    resent_batches: AtomicU64,
}

/// Sends `batches` in order, each until it is answered 202, to whichever host `url` names.
async fn publish(
    http: reqwest::Client,
    url: watch::Receiver<String>,
    batches: Vec<Batch>,
    counts: Arc<Counts>,
) {
    for batch in batches {
        let mut sent_before = false;
        loop {
            if sent_before {
                // Give a killed host time to come back rather than spin on a dead port.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let target = url.borrow().clone();
            let answer = http
                .post(format!("{target}/events"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(batch.body.clone())
                .send()
                .await;
            let resent = sent_before;
            sent_before = true;
            if resent {
                counts.resent_batches.fetch_add(1, Ordering::Relaxed);
            }
            let response = match answer {
                Ok(response) => response,
                Err(_) => {
                    // Maybe stored, maybe not: only sending it again tells.
                    counts.failed_requests.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match response.status().as_u16() {
                202 => {}
                503 => {
                    counts.unavailable.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                status => panic!(
                    "a valid batch was answered {status}: {}",
                    response.text().await.unwrap_or_default()
                ),
            }
            let Ok(body) = response.json::<Value>().await else {
                // The answer was cut off: the events may or may not be stored.
                counts.failed_requests.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            assert_eq!(
                body["accepted"],
                json!(batch.ids),
                "every event is accepted, in order"
            );
            let duplicates = body["duplicates"].as_array().unwrap().len() as u64;
            assert!(
                resent || duplicates == 0,
                "events sent for the first time were reported as duplicates: {body}"
            );
            counts
                .accepted
                .fetch_add(batch.ids.len() as u64, Ordering::Relaxed);
            counts.duplicates.fetch_add(duplicates, Ordering::Relaxed);
            break;
        }
    }
}

/// The recorder's counter under `key`, through the running host's HTTP API.
async fn counter(http: &reqwest::Client, host: &Running, key: &str) -> Option<u64> {
    let response = http
        .get(format!("{}/plugins/recorder/kv/{key}", host.url))
        .send()
        .await
        .unwrap();
    match response.status().as_u16() {
        200 => Some(response.text().await.unwrap().parse().unwrap()),
        404 => None,
        other => panic!("GET kv answered {other}"),
    }
}

/// Every key of `namespace` with its value, read from the store of a stopped host.
fn read_namespace(store: &SqliteStore, namespace: &str) -> BTreeMap<String, Vec<u8>> {
    let mut entries = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.kv_keys(namespace, after.as_deref(), 1000).unwrap();
        for key in &page.keys {
            let value = store.kv_get(namespace, key).unwrap().unwrap();
            entries.insert(key.clone(), value);
        }
        if !page.more {
            return entries;
        }
        after = page.keys.last().cloned();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let seed = std::env::var("EVHOST_CRASH_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |seed| seed.parse().expect("EVHOST_CRASH_SEED is a number"),
    );
    println!("crash test seed: {seed} (EVHOST_CRASH_SEED={seed} repeats the event list)");
    let mut rng = Rng::new(seed);
    let scenario = Scenario::generate(&mut rng);
    let ids = scenario.event_ids();
    let users = scenario.users.clone();
    let emitted = scenario.emitted.clone();
    let lanes = scenario.into_lanes(&mut rng);
    let total = ids.len() as u64;

    let dir = TempDir::new("crash");
    install(
        &dir.0,
        &[
            ("user-projection", wasm::USER_PROJECTION),
            ("payment-saga", wasm::PAYMENT_SAGA),
            ("recorder", wasm::RECORDER),
        ],
        &[],
    );
    let mut host = Running::start_in(&dir.0);
    let (url_tx, url_rx) = watch::channel(host.url.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    let publishers: Vec<_> = lanes
        .into_iter()
        .map(|batches| {
            tokio::spawn(publish(
                http.clone(),
                url_rx.clone(),
                batches,
                Arc::clone(&counts),
            ))
        })
        .collect();

    // Kill at random moments: some right after a restart (while the backlog of the last
    // crash is being redelivered), most once the load has moved on by a random amount.
    let (mut kills, mut restarts, mut pending_at_restarts) = (0, 0, 0);
    for k in 0..KILLS {
        if rng.chance(30) {
            tokio::time::sleep(Duration::from_millis(rng.below(30) as u64)).await;
        } else {
            let target = total * (k as u64 + 1) / (KILLS as u64 + 2) + rng.below(100) as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while counts.accepted.load(Ordering::Relaxed) < target && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(rng.below(100) as u64)).await;
        }
        host.signal("KILL");
        host.wait_exit(Duration::from_secs(10));
        kills += 1;
        host = Running::start_in(&dir.0);
        restarts += 1;
        let opened = host.wait_for_log(|l| l["message"] == "durable log opened", Duration::from_secs(1));
        pending_at_restarts += opened["pending"].as_u64().unwrap();
        url_tx.send(host.url.clone()).unwrap();
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let published_at = started.elapsed();

    // Wait until the recorder has counted every event and every emitted saga step. A key
    // never disappears once written, so each round resumes at the first one still missing.
    let mut missing: Vec<String> = ids
        .iter()
        .map(|id| format!("seen:{id}"))
        .chain(emitted.iter().cloned())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for key in missing {
            if !still.is_empty() || counter(&http, &host, &key).await.is_none() {
                still.push(key);
            }
        }
        missing = still;
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    if !missing.is_empty() {
        let dlq = get_text(&http, format!("{}/dlq", host.url)).await;
        let errors = get_text(&http, format!("{}/errors", host.url)).await;
        panic!(
            "{} events or saga steps were never handled, e.g. {:?}\ndead letters: {dlq}\nerrors: {errors}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
    let dead_letters: Value = http
        .get(format!("{}/dlq", host.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead_letters, json!([]), "no delivery failed for good");
    let handled_at = started.elapsed();
    host.signal("TERM");
    assert_eq!(
        host.wait_exit(Duration::from_secs(30)),
        0,
        "a graceful stop exits 0"
    );
    drop(host);

    let store = SqliteStore::open(&dir.0.join("data"), StoreOptions::default()).unwrap();
    let recorder = read_namespace(&store, "recorder");
    let count = |key: &str| -> Option<u64> {
        recorder
            .get(key)
            .map(|value| String::from_utf8_lossy(value).parse().unwrap())
    };
    // a) Every published event was handled exactly once.
    for id in &ids {
        assert_eq!(count(&format!("seen:{id}")), Some(1), "event {id} handled once");
    }
    // ... and so was every event the saga emitted (they are the only other `seen:` keys).
    let seen: Vec<(&String, &Vec<u8>)> = recorder.iter().filter(|(k, _)| k.starts_with("seen:")).collect();
    assert_eq!(
        seen.len(),
        ids.len() + emitted.len(),
        "one `seen:` per published and per emitted event"
    );
    for (key, value) in seen {
        assert_eq!(value.as_slice(), b"1", "{key} handled once");
    }
    // c) Every saga step emitted its event exactly once, and nothing else was emitted.
    let emitted_seen: BTreeSet<String> = recorder
        .keys()
        .filter(|k| k.starts_with("emitted:"))
        .cloned()
        .collect();
    assert_eq!(
        emitted_seen, emitted,
        "the saga emitted exactly the expected events"
    );
    for key in &emitted {
        assert_eq!(count(key), Some(1), "{key} emitted once");
    }
    // b) The projection equals the one computed from the event list; `version` counts the
    // events applied, so an event applied twice would show.
    let projection = read_namespace(&store, "user-projection");
    let expected_keys: BTreeSet<String> = users
        .iter()
        .filter(|(_, user)| user.is_some())
        .map(|(id, _)| format!("user:{id}"))
        .collect();
    let keys: BTreeSet<String> = projection.keys().cloned().collect();
    assert_eq!(
        keys, expected_keys,
        "deleted users have no key, all others have one"
    );
    for (id, expected) in users.iter().filter_map(|(id, user)| Some((id, user.as_ref()?))) {
        let stored: Value = serde_json::from_slice(&projection[&format!("user:{id}")]).unwrap();
        let actual = ExpectedUser {
            name: stored["name"].as_str().unwrap().to_owned(),
            email: stored["email"].as_str().unwrap().to_owned(),
            phone: stored["phone"].as_str().map(str::to_owned),
            address: Some(stored["address"].clone()).filter(|a| !a.is_null()),
            version: stored["version"].as_u64().unwrap(),
            last_event_id: stored["last_event_id"].as_str().unwrap().to_owned(),
        };
        assert_eq!(&actual, expected, "read model of {id}");
    }
    drop(store);

    println!(
        "crash test: {total} events generated, {} accepted, {} duplicates reported on re-send \
         ({} batches re-sent, {} requests failed, {} answered 503), {kills} kills, \
         {restarts} restarts ({pending_at_restarts} deliveries pending at restarts), \
         {} emitted events; published in {published_at:.1?}, handled in {handled_at:.1?}, \
         verified in {:.1?}",
        counts.accepted.load(Ordering::Relaxed),
        counts.duplicates.load(Ordering::Relaxed),
        counts.resent_batches.load(Ordering::Relaxed),
        counts.failed_requests.load(Ordering::Relaxed),
        counts.unavailable.load(Ordering::Relaxed),
        emitted.len(),
        started.elapsed(),
    );
    assert!(kills >= 10 && restarts == kills);
    assert!(
        pending_at_restarts > 0,
        "no kill left a delivery pending, so nothing was redelivered: the test proved nothing"
    );
}
