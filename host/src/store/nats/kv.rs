//! Key-value data in JetStream KV buckets: the plugins' (one bucket per plugin, shared by
//! every process) and the relays' positions.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt as _, TryStreamExt as _};

use super::{NatsOptions, NatsStore, names, setup};
use crate::store::{Checkpoints, KeyPage, KeyValueReader, KeyValueStore, StorageError, Versioned};

/// The bucket `bucket`, its stream made first if missing (see [`setup::bucket_config`]).
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    options: &NatsOptions,
    bucket: &str,
) -> anyhow::Result<kv::Store> {
    setup::ensure_stream(js, setup::bucket_config(options, bucket)).await?;
    Ok(js.get_key_value(bucket).await?)
}

/// Publishes one write of a delivery at `offset` to `bucket`: under a message id made of
/// the delivery and the key, so the same delivery writing the key again (its handler run
/// twice) is stored once.
pub(super) async fn publish_write(
    js: &jetstream::Context,
    bucket: &kv::Store,
    offset: u64,
    key: &str,
    value: Option<&[u8]>,
) -> Result<jetstream::context::PublishAckFuture, StorageError> {
    let encoded = names::encode(key);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("{offset}:{encoded}").as_str());
    let payload = match value {
        Some(value) => Bytes::copy_from_slice(value),
        None => {
            headers.insert("KV-Operation", "DEL");
            Bytes::new()
        }
    };
    js.publish_with_headers(format!("{}{encoded}", bucket.prefix), headers, payload)
        .await
        .map_err(|error| {
            StorageError::transient(format!("writing to the KV bucket {}: {error}", bucket.name))
        })
}

/// Stores `relay`'s position.
pub(super) async fn put_checkpoint(
    store: &kv::Store,
    relay: &str,
    position: i64,
) -> Result<(), StorageError> {
    store
        .put(names::encode(relay), Bytes::from(position.to_string()))
        .await
        .map(drop)
        .map_err(|error| StorageError::transient(format!("storing the position of relay {relay}: {error}")))
}

impl NatsStore {
    /// The bucket of `namespace`, made if missing.
    pub(super) async fn bucket(&self, namespace: &str) -> Result<kv::Store, StorageError> {
        if let Some(store) = self.buckets.lock().get(namespace) {
            return Ok(store.clone());
        }
        // Opened with no lock held; two first uses at once both make sure it exists,
        // which is harmless.
        let name = names::bucket(&self.options.stream, namespace);
        let store = open_bucket(&self.js, &self.options, &name)
            .await
            .map_err(|error| StorageError::transient(format!("opening the KV bucket {name}: {error:#}")))?;
        self.buckets.lock().insert(namespace.to_owned(), store.clone());
        Ok(store)
    }
}

impl KeyValueReader for NatsStore {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        async move {
            let bucket = self.bucket(namespace).await?;
            let entry = bucket.entry(names::encode(key)).await.map_err(|error| {
                StorageError::transient(format!("reading the KV bucket {}: {error}", bucket.name))
            })?;
            Ok(entry
                .filter(|entry| entry.operation == kv::Operation::Put)
                .map(|entry| Versioned {
                    value: entry.value.to_vec(),
                    revision: entry.revision,
                }))
        }
        .boxed()
    }

    /// Reads every key of the bucket (JetStream KV has no ordered range read).
    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        async move {
            let bucket = self.bucket(namespace).await?;
            let failed = |error: &dyn std::fmt::Display| {
                StorageError::transient(format!("listing the KV bucket {}: {error}", bucket.name))
            };
            let encoded: Vec<String> = bucket
                .keys()
                .await
                .map_err(|e| failed(&e))?
                .try_collect()
                .await
                .map_err(|e| failed(&e))?;
            let mut keys: Vec<String> = encoded
                .iter()
                .filter_map(|key| names::decode(key))
                .filter(|key| after.is_none_or(|after| key.as_str() > after))
                .collect();
            keys.sort();
            let more = keys.len() > limit;
            keys.truncate(limit);
            Ok(KeyPage { keys, more })
        }
        .boxed()
    }
}

impl KeyValueStore for NatsStore {
    fn commit<'a>(
        &'a self,
        namespace: &'a str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let bucket = self.bucket(namespace).await?;
            for (key, value) in writes {
                let key = names::encode(&key);
                let written = match value {
                    Some(value) => bucket
                        .put(&key, Bytes::from(value))
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    None => bucket.delete(&key).await.map_err(|e| e.to_string()),
                };
                written.map_err(|error| {
                    StorageError::transient(format!("writing the KV bucket {}: {error}", bucket.name))
                })?;
            }
            Ok(())
        }
        .boxed()
    }
}

impl Checkpoints for NatsStore {
    fn checkpoint<'a>(&'a self, relay: &'a str) -> BoxFuture<'a, Result<Option<i64>, StorageError>> {
        async move {
            let value = self
                .checkpoints
                .get(names::encode(relay))
                .await
                .map_err(|error| {
                    StorageError::transient(format!("reading the position of relay {relay}: {error}"))
                })?;
            value
                .map(|bytes| {
                    std::str::from_utf8(&bytes)
                        .ok()
                        .and_then(|text| text.parse().ok())
                        .ok_or_else(|| {
                            StorageError::permanent(format!("the position of relay {relay} is not a number"))
                        })
                })
                .transpose()
        }
        .boxed()
    }
}
