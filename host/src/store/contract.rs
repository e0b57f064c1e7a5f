//! What every backend of the storage seam must do: one check per trait, run against each
//! backend ([`MemoryLog`](super::MemoryLog) and [`SqliteStore`](super::sqlite::SqliteStore)
//! here). A backend states which of the optional clauses it honours in [`Claims`]; a
//! clause it does not honour is named where it is skipped, so every departure from the
//! durable contract is explicit.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use futures::TryStreamExt as _;
use serde_json::json;

use super::{
    AppendBatch, Appended, CommitOutcome, DeadLetterFilter, DeliveryCommit, DeliveryOutcome, KeyPage,
    KeyValueStore, Offset, PendingDelivery, Storage, Versioned,
};
use crate::event::Event;
use crate::monitor::{FailureKind, FailureRecord};

/// The optional clauses of the contract a backend honours.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claims {
    /// A second append of an event's `source` + `id` is a duplicate: stored once,
    /// answered with the original offset.
    pub(crate) idempotent_append: bool,
    /// Pending deliveries (never delivered, or waiting for a retry with their time) are
    /// kept and listed by `pending`.
    pub(crate) keeps_pending: bool,
    /// A delivery that was acknowledged, dead-lettered or purged is remembered, so a
    /// second commit of it answers `AlreadyDone` and applies nothing.
    pub(crate) remembers_finished: bool,
}

impl Claims {
    /// The durable contract: everything.
    pub(crate) const DURABLE: Claims = Claims {
        idempotent_append: true,
        keeps_pending: true,
        remembers_finished: true,
    };
    /// [`MemoryLog`](super::MemoryLog): remembering every event or finished delivery
    /// would grow without bound, and the bus's own queues hold what is pending.
    pub(crate) const MEMORY: Claims = Claims {
        idempotent_append: false,
        keeps_pending: false,
        remembers_finished: false,
    };
}

/// Every check, each on a storage of its own from `fresh`.
pub(crate) async fn check_all(fresh: impl Fn() -> Storage, claims: Claims) {
    event_log(&fresh(), claims).await;
    ledger(&fresh(), claims).await;
    dead_letters(&fresh(), claims).await;
    checkpoints(&fresh()).await;
    key_values(&*fresh().kv).await;
}

fn event(n: u32, key: &str) -> Arc<Event> {
    Arc::new(
        Event::new("T", "contract", json!({ "n": n }))
            .with_id(format!("e{n}"))
            .with_subject(key),
    )
}

/// Appends `event`, routed to `subscription`, and returns its offset.
async fn append_one(storage: &Storage, event: &Arc<Event>, subscription: &str) -> Offset {
    storage
        .log
        .append(batch(std::slice::from_ref(event), &[&[subscription]]))
        .await
        .unwrap()[0]
        .offset
}

/// `events` to append, each routed to the subscriptions of its entry in `routes`.
pub(crate) fn batch(events: &[Arc<Event>], routes: &[&[&str]]) -> AppendBatch {
    AppendBatch {
        events: events.to_vec(),
        routes: routes
            .iter()
            .map(|r| r.iter().map(|s| Arc::from(*s)).collect())
            .collect(),
        checkpoint: None,
    }
}

async fn pending(storage: &Storage, subscription: &str) -> Vec<PendingDelivery> {
    storage.log.pending(subscription).try_collect().await.unwrap()
}

fn failure(subscription: &str, event: &Event, attempt: u32, message: &str) -> FailureRecord {
    FailureRecord {
        subscription: subscription.to_owned(),
        handler_version: None,
        event_id: event.id.clone(),
        event_type: event.ty.clone(),
        attempt,
        kind: FailureKind::Retry,
        message: message.to_owned(),
        time: Utc::now(),
    }
}

fn commit(
    subscription: &str,
    offset: Offset,
    event: &Arc<Event>,
    outcome: DeliveryOutcome,
) -> DeliveryCommit {
    DeliveryCommit {
        subscription: Arc::from(subscription),
        offset,
        event: Arc::clone(event),
        outcome,
        kv_namespace: String::new(),
        kv_writes: Vec::new(),
        emitted: Vec::new(),
        handler_version: None,
    }
}

/// Appends number events in order, route them, deduplicate them (if claimed) and list
/// what is pending per subscription in offset order.
pub(crate) async fn event_log(storage: &Storage, claims: Claims) {
    let (e1, e2, e3) = (event(1, "k"), event(2, "k"), event(3, "j"));
    let appended = storage
        .log
        .append(batch(
            &[e1.clone(), e2.clone(), e3.clone()],
            &[&["a"], &["a", "b"], &[]],
        ))
        .await
        .unwrap();
    assert_eq!(appended.len(), 3);
    assert!(appended.iter().all(|a| !a.duplicate));
    assert!(appended[0].offset < appended[1].offset && appended[1].offset < appended[2].offset);

    let again = storage
        .log
        .append(batch(
            &[e1.clone(), event(4, "k"), event(4, "k")],
            &[&["a"], &["a"], &["a"]],
        ))
        .await
        .unwrap();
    if claims.idempotent_append {
        assert_eq!(
            again[0],
            Appended {
                offset: appended[0].offset,
                duplicate: true
            },
            "a duplicate answers with the original offset"
        );
        assert!(!again[1].duplicate && again[1].offset > appended[2].offset);
        assert_eq!(
            again[2],
            Appended {
                duplicate: true,
                ..again[1]
            },
            "within one batch too"
        );
    } else {
        // Not claimed: every append is stored anew.
        assert!(again.iter().all(|a| !a.duplicate));
    }

    if claims.keeps_pending {
        let a: Vec<Offset> = pending(storage, "a").await.iter().map(|p| p.offset).collect();
        let mut expected = vec![appended[0].offset, appended[1].offset, again[1].offset];
        if !claims.idempotent_append {
            expected = vec![
                appended[0].offset,
                appended[1].offset,
                again[0].offset,
                again[1].offset,
                again[2].offset,
            ];
        }
        assert_eq!(a, expected, "in offset order, duplicates not delivered twice");
        let b = pending(storage, "b").await;
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].offset, b[0].attempt, b[0].not_before),
            (appended[1].offset, 0, None)
        );
        assert_eq!(b[0].event.id, e2.id);
        assert!(pending(storage, "nobody").await.is_empty());

        // Read a page at a time, in order, however many there are.
        let many: Vec<Arc<Event>> = (100..2_600).map(|n| event(n, "many")).collect();
        let routes: Vec<&[&str]> = many.iter().map(|_| &["many"][..]).collect();
        let stored = storage.log.append(batch(&many, &routes)).await.unwrap();
        let listed: Vec<Offset> = pending(storage, "many").await.iter().map(|p| p.offset).collect();
        assert_eq!(listed, stored.iter().map(|a| a.offset).collect::<Vec<_>>());
    } else {
        // Not claimed: the bus's queues hold what is pending.
        assert!(pending(storage, "a").await.is_empty());
    }
}

/// Commits a retry (kept with its time), an acknowledgement with its effects (applied,
/// emitted events appended and routed), refuses effects on a failure, and (if claimed)
/// answers a second commit of a finished delivery with `AlreadyDone`.
pub(crate) async fn ledger(storage: &Storage, claims: Claims) {
    let x = event(10, "x");
    let offset = append_one(storage, &x, "s").await;
    let not_before = Utc::now() + TimeDelta::seconds(60);
    let retry = DeliveryOutcome::Retry {
        attempt: 1,
        not_before,
        failure: failure("s", &x, 1, "later"),
    };
    let outcomes = storage
        .ledger
        .commit(&[commit("s", offset, &x, retry)])
        .await
        .unwrap();
    assert_eq!(outcomes, [CommitOutcome::Committed { emitted: Vec::new() }]);
    if claims.keeps_pending {
        let waiting = pending(storage, "s").await;
        assert_eq!(waiting.len(), 1);
        assert_eq!((waiting[0].attempt, waiting[0].not_before), (1, Some(not_before)));
    }

    // Effects come only with an acknowledgement, and a refused request applies nothing.
    let mut refused = commit(
        "s",
        offset,
        &x,
        DeliveryOutcome::DeadLettered {
            failure: failure("s", &x, 2, "no"),
        },
    );
    refused.kv_namespace = "p".into();
    refused.kv_writes = vec![("refused".into(), Some(b"1".to_vec()))];
    let error = storage.ledger.commit(&[refused]).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert_eq!(storage.kv.get("p", "refused").await.unwrap(), None);

    let y = event(11, "y");
    let mut ack = commit("s", offset, &x, DeliveryOutcome::Acked);
    ack.kv_namespace = "p".into();
    ack.kv_writes = vec![
        ("k".into(), Some(b"v1".to_vec())),
        ("k".into(), Some(b"v2".to_vec())),
        ("gone".into(), None),
    ];
    ack.emitted = vec![(Arc::clone(&y), vec![Arc::from("t")])];
    let outcomes = storage.ledger.commit(&[ack.clone()]).await.unwrap();
    let [CommitOutcome::Committed { emitted }] = &outcomes[..] else {
        panic!("committed: {outcomes:?}");
    };
    assert_eq!(emitted.len(), 1);
    assert!(emitted[0].offset > offset && !emitted[0].duplicate);
    let value = storage.kv.get("p", "k").await.unwrap().unwrap();
    assert_eq!(value.value, b"v2", "writes apply in order");
    if claims.keeps_pending {
        assert!(pending(storage, "s").await.is_empty(), "acknowledged");
        let routed = pending(storage, "t").await;
        assert_eq!(routed.len(), 1);
        assert_eq!(
            (routed[0].offset, &routed[0].event.id),
            (emitted[0].offset, &y.id)
        );
    }

    let mut twice = ack;
    twice.kv_writes = vec![("twice".into(), Some(b"1".to_vec()))];
    twice.emitted.clear();
    let outcomes = storage.ledger.commit(&[twice]).await.unwrap();
    if claims.remembers_finished {
        assert_eq!(outcomes, [CommitOutcome::AlreadyDone]);
        assert_eq!(
            storage.kv.get("p", "twice").await.unwrap(),
            None,
            "nothing of it applied"
        );
    } else {
        // Not claimed: the bus never commits a delivery twice while the process lives.
        assert!(matches!(outcomes[..], [CommitOutcome::Committed { .. }]));
    }
}

/// Dead-letters with the whole failure history, lists by filter, replays to pending with
/// the attempts reset and the history kept, dead-letters again under a new id, purges.
pub(crate) async fn dead_letters(storage: &Storage, claims: Claims) {
    let z = event(20, "z");
    let offset = append_one(storage, &z, "d").await;
    let by_subscription = |name: &str| DeadLetterFilter {
        id: None,
        subscription: Some(name.to_owned()),
    };
    let letters_of = async |name: &str| storage.dead_letters.list(by_subscription(name)).await.unwrap();
    let before = storage.dead_letters.count();
    let retry = DeliveryOutcome::Retry {
        attempt: 1,
        not_before: Utc::now(),
        failure: failure("d", &z, 1, "first"),
    };
    let dead = DeliveryOutcome::DeadLettered {
        failure: failure("d", &z, 2, "second"),
    };
    storage
        .ledger
        .commit(&[commit("d", offset, &z, retry), commit("d", offset, &z, dead)])
        .await
        .unwrap();
    assert_eq!(storage.dead_letters.count(), before + 1);
    let letters = letters_of("d").await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!((letter.subscription.as_str(), letter.offset), ("d", offset));
    assert_eq!(letter.event.id, z.id);
    let messages: Vec<&str> = letter.failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(messages, ["first", "second"]);
    assert!(letters_of("other").await.is_empty());
    let by_id = DeadLetterFilter {
        id: Some(letter.id),
        subscription: None,
    };
    assert_eq!(storage.dead_letters.list(by_id.clone()).await.unwrap(), letters);

    let nothing = storage
        .dead_letters
        .replay(by_id.clone(), vec!["other".into()])
        .await
        .unwrap();
    assert!(nothing.is_empty(), "only the subscriptions named are replayed");
    let replayed = storage
        .dead_letters
        .replay(by_id, vec!["d".into()])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].subscription, "d");
    assert_eq!(
        (replayed[0].delivery.offset, replayed[0].delivery.attempt),
        (offset, 0)
    );
    assert!(letters_of("d").await.is_empty());
    if claims.keeps_pending {
        let waiting = pending(storage, "d").await;
        assert_eq!(
            (waiting.len(), waiting[0].attempt),
            (1, 0),
            "pending again, attempts reset"
        );
    }

    let again = DeliveryOutcome::DeadLettered {
        failure: failure("d", &z, 1, "third"),
    };
    storage
        .ledger
        .commit(&[commit("d", offset, &z, again)])
        .await
        .unwrap();
    let letters = letters_of("d").await;
    let messages: Vec<&str> = letters[0].failures.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(
        messages,
        ["first", "second", "third"],
        "the history is kept across replays"
    );
    assert_ne!(letters[0].id, letter.id, "a dead letter again gets a new id");

    assert_eq!(storage.dead_letters.purge(by_subscription("d")).await.unwrap(), 1);
    assert!(letters_of("d").await.is_empty());
    assert_eq!(storage.dead_letters.count(), before);
    if claims.remembers_finished {
        let late = commit("d", offset, &z, DeliveryOutcome::Acked);
        let outcomes = storage.ledger.commit(&[late]).await.unwrap();
        assert_eq!(outcomes, [CommitOutcome::AlreadyDone], "purged is final");
    }
}

/// A relay's position is stored with its batch, and the latest one is read back.
pub(crate) async fn checkpoints(storage: &Storage) {
    assert_eq!(storage.checkpoints.checkpoint("relay").await.unwrap(), None);
    for (n, position) in [(30, 5), (31, 9)] {
        let mut batch = batch(&[event(n, "r")], &[&[]]);
        batch.checkpoint = Some(("relay".into(), position));
        storage.log.append(batch).await.unwrap();
    }
    assert_eq!(storage.checkpoints.checkpoint("relay").await.unwrap(), Some(9));
    let only = AppendBatch {
        checkpoint: Some(("other".into(), 3)),
        ..AppendBatch::default()
    };
    storage.log.append(only).await.unwrap();
    assert_eq!(storage.checkpoints.checkpoint("other").await.unwrap(), Some(3));
    assert_eq!(storage.checkpoints.checkpoint("relay").await.unwrap(), Some(9));
}

/// Namespaces are separate, pages cover every key in order, and a value's revision grows
/// with every write of its key.
pub(crate) async fn key_values(kv: &dyn KeyValueStore) {
    let write = |key: &str, value: Option<&[u8]>| (key.to_owned(), value.map(<[u8]>::to_vec));
    kv.commit(
        "a",
        vec![
            write("k", Some(b"1")),
            write("j", Some(b"2")),
            write("l", Some(b"3")),
        ],
    )
    .await
    .unwrap();
    kv.commit("a", Vec::new()).await.unwrap();
    let versioned = |value: &[u8], revision| {
        Some(Versioned {
            value: value.to_vec(),
            revision,
        })
    };
    assert_eq!(kv.get("a", "k").await.unwrap(), versioned(b"1", 1));
    assert_eq!(
        kv.get("b", "k").await.unwrap(),
        None,
        "another namespace sees nothing"
    );
    kv.commit("a", vec![write("k", Some(b"4")), write("k", Some(b"5"))])
        .await
        .unwrap();
    assert_eq!(
        kv.get("a", "k").await.unwrap(),
        versioned(b"5", 3),
        "one revision per write"
    );

    let page = |keys: &[&str], more| KeyPage {
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        more,
    };
    assert_eq!(kv.list_keys("a", None, 1).await.unwrap(), page(&["j"], true));
    assert_eq!(kv.list_keys("a", Some("j"), 1).await.unwrap(), page(&["k"], true));
    assert_eq!(
        kv.list_keys("a", Some("k"), 1).await.unwrap(),
        page(&["l"], false)
    );
    assert_eq!(
        kv.list_keys("a", Some("jj"), 5).await.unwrap(),
        page(&["k", "l"], false)
    );
    assert_eq!(
        kv.list_keys("a", None, 10).await.unwrap(),
        page(&["j", "k", "l"], false)
    );
    assert_eq!(kv.list_keys("a", Some("l"), 10).await.unwrap(), page(&[], false));
    assert_eq!(kv.list_keys("none", None, 10).await.unwrap(), page(&[], false));

    kv.commit("a", vec![write("k", None)]).await.unwrap();
    assert_eq!(kv.get("a", "k").await.unwrap(), None);
    kv.commit("a", vec![write("k", Some(b"6"))]).await.unwrap();
    assert_eq!(
        kv.get("a", "k").await.unwrap(),
        versioned(b"6", 1),
        "a deleted key starts over"
    );
}
