//! The dead-letter queue as a stream, `<STREAM>_DLQ`: one message per dead letter, its id
//! the message's sequence, its subject `<prefix>.dlq.<subscription>.<offset>` (so the
//! letter of one delivery is found by subject).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::StreamMessage};
use bytes::Bytes;
use chrono::Utc;
use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::{NatsStore, REPLAY_TO, names, unless_missing};
use crate::monitor::FailureRecord;
use crate::store::{
    DeadLetter, DeadLetterFilter, DeadLetters, DeliveryCommit, PendingDelivery, Replayed, StorageError,
};

impl NatsStore {
    /// Publishes `commit`'s event as a dead letter of its subscription with `failures`;
    /// `delivered` (the server's attempt count) makes its message id unique per attempt.
    pub(super) async fn publish_dead_letter(
        &self,
        commit: &DeliveryCommit,
        failures: Vec<FailureRecord>,
        delivered: i64,
    ) -> Result<jetstream::context::PublishAckFuture, StorageError> {
        let letter = DeadLetter {
            id: 0,
            subscription: commit.subscription.to_string(),
            offset: commit.offset,
            event: Arc::clone(&commit.event),
            failures,
            dead_at: Utc::now(),
        };
        let payload = serde_json::to_vec(&letter)
            .map_err(|error| StorageError::permanent(format!("serializing a dead letter: {error}")))?;
        let mut headers = HeaderMap::new();
        let msg_id = format!(
            "dlq:{}:{}:{delivered}",
            names::encode(&commit.subscription),
            commit.offset
        );
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let subject = self.dead_letter_subject(&commit.subscription, commit.offset);
        self.js
            .publish_with_headers(subject, headers, Bytes::from(payload))
            .await
            .map_err(|error| StorageError::transient(format!("publishing a dead letter to NATS: {error}")))
    }

    /// The subject of the dead letter of `subscription`'s delivery of the event at `offset`.
    pub(super) fn dead_letter_subject(&self, subscription: &str, offset: u64) -> String {
        format!("{}.dlq.{}.{offset}", self.prefix, names::encode(subscription))
    }

    /// The dead letters `filter` selects, read from the stream one by one.
    async fn read_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StorageError> {
        let failed = |error: &dyn std::fmt::Display| {
            StorageError::transient(format!("reading the dead-letter stream: {error}"))
        };
        let state = self.dead_letters.get_info().await.map_err(|e| failed(&e))?.state;
        self.dead.store(state.messages, Ordering::Relaxed);
        let sequences = match filter.id {
            Some(id) => id..=id,
            None => state.first_sequence..=state.last_sequence,
        };
        let mut letters = Vec::new();
        for sequence in sequences {
            if state.messages == 0 {
                break;
            }
            let found = self.dead_letters.get_raw_message(sequence).await;
            let Some(message) = unless_missing(found, "the dead-letter stream")? else {
                continue;
            };
            let letter = Self::dead_letter(message)?;
            if filter
                .subscription
                .as_ref()
                .is_none_or(|name| *name == letter.subscription)
            {
                letters.push(letter);
            }
        }
        letters.sort_by(|a, b| (&a.subscription, a.offset).cmp(&(&b.subscription, b.offset)));
        Ok(letters)
    }

    /// The dead letter `message` holds, its id the message's sequence.
    pub(super) fn dead_letter(message: StreamMessage) -> Result<DeadLetter, StorageError> {
        let mut letter: DeadLetter = serde_json::from_slice(&message.payload).map_err(|error| {
            StorageError::permanent(format!(
                "dead letter {} cannot be read: {error}",
                message.sequence
            ))
        })?;
        letter.id = message.sequence;
        Ok(letter)
    }

    async fn delete_dead_letter(&self, id: u64) -> Result<(), StorageError> {
        self.dead_letters
            .delete_message(id)
            .await
            .map_err(|error| StorageError::transient(format!("deleting dead letter {id}: {error}")))?;
        // Other processes change the count too; `list` reads it back from the server.
        let _ = self
            .dead
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        Ok(())
    }
}

impl DeadLetters for NatsStore {
    fn list(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<Vec<DeadLetter>, StorageError>> {
        async move { self.read_dead_letters(&filter).await }.boxed()
    }

    /// Publishes each letter's event again, for its subscription only (the others'
    /// consumers acknowledge it unhandled), with its failure history kept for the next
    /// failures, then deletes the letter.
    fn replay(
        &self,
        filter: DeadLetterFilter,
        subscriptions: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Replayed>, StorageError>> {
        async move {
            let letters = self.read_dead_letters(&filter).await?;
            let mut replayed = Vec::new();
            for letter in letters
                .into_iter()
                .filter(|letter| subscriptions.contains(&letter.subscription))
            {
                let history = Self::history_key(&letter.subscription, &letter.event);
                let failures = serde_json::to_vec(&letter.failures).map_err(|error| {
                    StorageError::permanent(format!("serializing a failure history: {error}"))
                })?;
                self.failures
                    .put(&history, Bytes::from(failures))
                    .await
                    .map_err(|error| {
                        StorageError::transient(format!("storing a failure history: {error}"))
                    })?;
                let mut headers = HeaderMap::new();
                headers.insert(REPLAY_TO, letter.subscription.as_str());
                let ack = self
                    .publish_event(&letter.event, format!("replay:{}", letter.id), headers)
                    .await?
                    .await
                    .map_err(|error| {
                        StorageError::transient(format!("NATS did not confirm a replay: {error}"))
                    })?;
                // Where the copy is, for the lookups: the letter's delivery goes on there.
                self.replays
                    .put(&history, Bytes::from(ack.sequence.to_string()))
                    .await
                    .map_err(|error| {
                        StorageError::transient(format!("storing where a replay went: {error}"))
                    })?;
                self.delete_dead_letter(letter.id).await?;
                replayed.push(Replayed {
                    subscription: letter.subscription,
                    delivery: PendingDelivery {
                        offset: ack.sequence,
                        event: letter.event,
                        attempt: 0,
                        not_before: None,
                    },
                });
            }
            Ok(replayed)
        }
        .boxed()
    }

    fn purge(&self, filter: DeadLetterFilter) -> BoxFuture<'_, Result<u64, StorageError>> {
        async move {
            let letters = self.read_dead_letters(&filter).await?;
            for letter in &letters {
                self.delete_dead_letter(letter.id).await?;
            }
            Ok(letters.len() as u64)
        }
        .boxed()
    }

    fn count(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }
}
