//! A store seen through a key prefix: every key read or written is `prefix + key`, and
//! scans answer keys without it. Gives each controller replica its own part of a shared
//! store (its topology checkpoint under `replicas/<name>/`) with the code that writes it
//! unchanged.

use std::sync::Arc;

use crate::{Compare, Op, Store, StoreError};

#[derive(Debug, Clone)]
pub struct PrefixedStore {
    inner: Arc<dyn Store>,
    prefix: String,
}

impl PrefixedStore {
    pub fn new(inner: Arc<dyn Store>, prefix: impl Into<String>) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, entries: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        entries
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(self.prefix.as_str())?.to_owned(), v)))
            .collect()
    }
}

impl Store for PrefixedStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(&self.key(key))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(&self.key(key), value)
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(&self.key(key))
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.strip(self.inner.scan_prefix(&self.key(prefix))?))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.inner.compare_and_swap(&self.key(key), expected, new)
    }

    fn txn(&self, compares: &[Compare<'_>], ops: &[Op<'_>]) -> Result<bool, StoreError> {
        let compare_keys: Vec<String> = compares.iter().map(|(k, _)| self.key(k)).collect();
        let op_keys: Vec<String> = ops.iter().map(|(k, _)| self.key(k)).collect();
        let compares: Vec<Compare<'_>> = compare_keys
            .iter()
            .zip(compares)
            .map(|(k, (_, v))| (k.as_str(), *v))
            .collect();
        let ops: Vec<Op<'_>> = op_keys
            .iter()
            .zip(ops)
            .map(|(k, (_, v))| (k.as_str(), *v))
            .collect();
        self.inner.txn(&compares, &ops)
    }

    fn scan_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.strip(
            self.inner
                .scan_from(&self.key(prefix), &self.key(start), limit)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn two_prefixes_of_one_store_do_not_see_each_other() {
        let shared: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let a = PrefixedStore::new(shared.clone(), "replicas/a/");
        let b = PrefixedStore::new(shared.clone(), "replicas/b/");
        a.put("k/1", b"a1").unwrap();
        assert!(
            b.txn(
                &[("k/1", None)],
                &[("k/1", Some(b"b1")), ("k/2", Some(b"b2"))]
            )
            .unwrap()
        );
        assert_eq!(a.get("k/1").unwrap().as_deref(), Some(&b"a1"[..]));
        assert_eq!(
            b.scan_prefix("k/").unwrap(),
            vec![
                ("k/1".to_owned(), b"b1".to_vec()),
                ("k/2".to_owned(), b"b2".to_vec())
            ]
        );
        assert_eq!(b.scan_from("k/", "k/2", 10).unwrap().len(), 1);
        assert_eq!(shared.scan_prefix("replicas/").unwrap().len(), 3);
        assert!(a.delete("k/1").unwrap());
        assert!(a.scan_prefix("").unwrap().is_empty());
    }
}
