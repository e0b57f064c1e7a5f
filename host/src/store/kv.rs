//! Plugin key-value stores: one namespace per plugin, so no plugin reads another's data.

use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::ops::Bound;

use futures::future::BoxFuture;

use super::{StorageError, Versioned};

/// Reading the data behind `wasi:keyvalue/store`: all a plugin needs, since its writes
/// are effects the bus applies. Every call names the namespace (the plugin) it acts on.
///
/// Reads are async: a store that reads from disk or the network does it off the async
/// executor, so a plugin reading in a loop cannot hold a tokio worker thread.
pub trait KeyValueReader: Send + Sync + Debug + 'static {
    /// The value of `key` in `namespace`, with its revision.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>>;

    /// At most `limit` keys of `namespace` in order, starting after `after` (from the
    /// first key when `None`). A page costs about its own size, wherever it starts.
    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>>;
}

/// A [`KeyValueReader`] that can be written outside a delivery (a delivery's writes go
/// through [`DeliveryLedger::commit`](super::DeliveryLedger::commit), with its
/// acknowledgement).
pub trait KeyValueStore: KeyValueReader {
    /// Applies `writes` (`None` deletes) to `namespace` at once.
    fn commit<'a>(
        &'a self,
        namespace: &'a str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// One page of [`KeyValueReader::list_keys`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys, in order.
    pub keys: Vec<String>,
    /// Whether keys follow the last one.
    pub more: bool,
}

/// A [`KeyValueStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryKv {
    namespaces: RwLock<HashMap<String, Namespace>>,
}

/// One namespace's keys, each with its value and revision.
type Namespace = BTreeMap<String, (Vec<u8>, u64)>;

impl MemoryKv {
    /// Applies `writes` to `namespace` (they cannot fail in memory).
    pub(crate) fn write(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) {
        if writes.is_empty() {
            return;
        }
        let mut namespaces = self.namespaces.write();
        let ns = namespaces.entry(namespace.to_owned()).or_default();
        for (key, value) in writes {
            match value {
                Some(value) => {
                    let revision = ns.get(&key).map_or(1, |(_, revision)| revision + 1);
                    ns.insert(key, (value, revision));
                }
                None => {
                    ns.remove(&key);
                }
            }
        }
    }
}

impl KeyValueReader for MemoryKv {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StorageError>> {
        let namespaces = self.namespaces.read();
        let value = namespaces
            .get(namespace)
            .and_then(|ns| ns.get(key))
            .map(|(value, revision)| Versioned {
                value: value.clone(),
                revision: *revision,
            });
        Box::pin(std::future::ready(Ok(value)))
    }

    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, StorageError>> {
        let namespaces = self.namespaces.read();
        let page = match namespaces.get(namespace) {
            None => KeyPage::default(),
            Some(ns) => {
                let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
                let mut keys = ns
                    .range::<str, _>((lower, Bound::Unbounded))
                    .map(|(k, _)| k.clone());
                let page: Vec<String> = keys.by_ref().take(limit).collect();
                KeyPage {
                    keys: page,
                    more: keys.next().is_some(),
                }
            }
        };
        Box::pin(std::future::ready(Ok(page)))
    }
}

impl KeyValueStore for MemoryKv {
    fn commit<'a>(
        &'a self,
        namespace: &'a str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.write(namespace, writes);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn namespaces_are_separate_pages_cover_every_key_and_revisions_grow() {
        crate::store::contract::key_values(&MemoryKv::default()).await;
    }
}
