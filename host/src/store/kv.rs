//! Plugin key-value stores: one namespace per plugin, so no plugin reads another's data.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::ops::Bound;
use std::sync::RwLock;

use futures::future::BoxFuture;

use super::LogError;

/// Reading the data behind `wasi:keyvalue/store`: all a plugin needs, since its writes
/// are effects the bus applies. Every call names the namespace (the plugin) it acts on.
///
/// Reads are async: a store that reads from disk does it off the async executor, so a
/// plugin reading in a loop cannot hold a tokio worker thread.
pub trait KeyValueReader: Send + Sync + Debug + 'static {
    /// The value of `key` in `namespace`.
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, LogError>>;

    /// At most `limit` keys of `namespace` in order, starting after `after` (from the
    /// first key when `None`). A page costs about its own size, wherever it starts.
    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, LogError>>;
}

/// A [`KeyValueReader`] that can be written outside a delivery. The writes of one
/// invocation arrive together through [`KeyValueStore::commit`], so an invocation that
/// fails leaves nothing behind.
pub trait KeyValueStore: KeyValueReader {
    /// Applies `writes` (`None` deletes) to `namespace` at once.
    fn commit(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) -> Result<(), LogError>;
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
    namespaces: RwLock<HashMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl KeyValueReader for MemoryKv {
    fn get<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, LogError>> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let value = namespaces.get(namespace).and_then(|ns| ns.get(key)).cloned();
        Box::pin(std::future::ready(Ok(value)))
    }

    fn list_keys<'a>(
        &'a self,
        namespace: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<KeyPage, LogError>> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
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
    fn commit(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) -> Result<(), LogError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut namespaces = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        let ns = namespaces.entry(namespace.to_owned()).or_default();
        for (key, value) in writes {
            match value {
                Some(value) => ns.insert(key, value),
                None => ns.remove(&key),
            };
        }
        Ok(())
    }
}

/// What every [`KeyValueStore`] must do, checked against `kv` (which starts empty).
#[cfg(test)]
pub(crate) async fn check_contract(kv: &dyn KeyValueStore) {
    kv.commit(
        "a",
        vec![
            ("k".into(), Some(b"1".to_vec())),
            ("j".into(), Some(b"2".to_vec())),
            ("l".into(), Some(b"3".to_vec())),
        ],
    )
    .unwrap();
    kv.commit("a", Vec::new()).unwrap();
    assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        kv.get("b", "k").await.unwrap(),
        None,
        "another namespace sees nothing"
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
    kv.commit("a", vec![("k".into(), None)]).unwrap();
    assert_eq!(kv.get("a", "k").await.unwrap(), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn namespaces_are_separate_and_pages_cover_every_key() {
        check_contract(&MemoryKv::default()).await;
    }
}
