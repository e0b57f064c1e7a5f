//! Plugin key-value stores: one namespace per plugin, so no plugin reads another's data.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::RwLock;

use super::LogError;

/// Storage behind `wasi:keyvalue/store`. Every call names the namespace (the plugin) it
/// acts on; writes of one invocation arrive together through [`KeyValueStore::commit`], so
/// an invocation that fails leaves nothing behind.
pub trait KeyValueStore: Send + Sync + Debug + 'static {
    /// The value of `key` in `namespace`.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, LogError>;

    /// Applies `writes` (`None` deletes) to `namespace` at once.
    fn commit(&self, namespace: &str, writes: Vec<(String, Option<Vec<u8>>)>) -> Result<(), LogError>;

    /// Keys of `namespace` in order, starting after `cursor` (an index), at most `limit`.
    /// Returns the keys and the cursor for the next page, if any.
    fn list_keys(
        &self,
        namespace: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<u64>), LogError>;
}

/// A [`KeyValueStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryKv {
    namespaces: RwLock<HashMap<String, BTreeMap<String, Vec<u8>>>>,
}

impl KeyValueStore for MemoryKv {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        Ok(namespaces.get(namespace).and_then(|ns| ns.get(key)).cloned())
    }

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

    fn list_keys(
        &self,
        namespace: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<u64>), LogError> {
        let namespaces = self.namespaces.read().unwrap_or_else(|e| e.into_inner());
        let Some(ns) = namespaces.get(namespace) else {
            return Ok((Vec::new(), None));
        };
        let start = cursor.unwrap_or(0) as usize;
        let keys: Vec<String> = ns.keys().skip(start).take(limit).cloned().collect();
        let next = (start + keys.len() < ns.len()).then_some((start + keys.len()) as u64);
        Ok((keys, next))
    }
}

/// What every [`KeyValueStore`] must do, checked against `kv` (which starts empty).
#[cfg(test)]
pub(crate) fn check_contract(kv: &dyn KeyValueStore) {
    kv.commit(
        "a",
        vec![
            ("k".into(), Some(b"1".to_vec())),
            ("j".into(), Some(b"2".to_vec())),
        ],
    )
    .unwrap();
    kv.commit("a", Vec::new()).unwrap();
    assert_eq!(kv.get("a", "k").unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv.get("b", "k").unwrap(), None, "another namespace sees nothing");
    let (first, next) = kv.list_keys("a", None, 1).unwrap();
    assert_eq!((first, next), (vec!["j".to_owned()], Some(1)));
    let (second, next) = kv.list_keys("a", next, 1).unwrap();
    assert_eq!((second, next), (vec!["k".to_owned()], None));
    assert_eq!(
        kv.list_keys("a", None, 10).unwrap(),
        (vec!["j".to_owned(), "k".to_owned()], None)
    );
    assert_eq!(kv.list_keys("none", None, 10).unwrap(), (Vec::new(), None));
    kv.commit("a", vec![("k".into(), None)]).unwrap();
    assert_eq!(kv.get("a", "k").unwrap(), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_separate_and_pages_cover_every_key() {
        check_contract(&MemoryKv::default());
    }
}
