//! The controller's key-value store: one [`Store`] trait (get, put, delete, prefix scan,
//! compare-and-swap, multi-key transaction) so the embedded back end ([`redb_store::RedbStore`], one file) and the
//! etcd one (`etcd_store::EtcdStore`, feature `etcd`) are interchangeable; [`MemoryStore`] for tests and `--data-dir ""`.
//! Every acknowledged write is durable (the redb back end commits with fsync).

#[cfg(feature = "etcd")]
pub mod etcd_process;
#[cfg(feature = "etcd")]
pub mod etcd_store;
pub mod prefixed;
#[cfg(feature = "redb")]
pub mod redb_store;

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

#[cfg(feature = "etcd")]
pub use etcd_store::{EtcdConfig, EtcdStore};
pub use prefixed::PrefixedStore;
#[cfg(feature = "redb")]
pub use redb_store::RedbStore;

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// One comparison of a transaction: the key's current value must equal the expected one
/// (`None` = absent).
pub type Compare<'a> = (&'a str, Option<&'a [u8]>);
/// One write of a transaction: put the value, or delete the key for `None`.
pub type Op<'a> = (&'a str, Option<&'a [u8]>);

pub trait Store: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// Whether the key existed.
    fn delete(&self, key: &str) -> Result<bool, StoreError>;
    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Writes `new` (or deletes, for `None`) only if the current value equals `expected`
    /// (`None` = absent). Returns whether it swapped.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Atomic multi-key transaction (etcd's `Txn` with only a success branch): when every
    /// compare holds, every op is applied, atomically and durably; otherwise nothing is
    /// written. Returns whether the ops were applied.
    fn txn(&self, compares: &[Compare<'_>], ops: &[Op<'_>]) -> Result<bool, StoreError>;
    /// Up to `limit` (key, value) pairs whose key starts with `prefix` and is `>= start`,
    /// in key order.
    fn scan_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// An in-memory store: nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-written.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.map().insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.map().remove(key).is_some())
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .map()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut map = self.map();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match new {
            Some(value) => map.insert(key.to_owned(), value.to_vec()),
            None => map.remove(key),
        };
        Ok(true)
    }

    fn txn(&self, compares: &[Compare<'_>], ops: &[Op<'_>]) -> Result<bool, StoreError> {
        let mut map = self.map();
        if compares
            .iter()
            .any(|(k, expected)| map.get(*k).map(Vec::as_slice) != *expected)
        {
            return Ok(false);
        }
        for (k, v) in ops {
            match v {
                Some(value) => map.insert((*k).to_owned(), value.to_vec()),
                None => map.remove(*k),
            };
        }
        Ok(true)
    }

    fn scan_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let from = if start > prefix { start } else { prefix };
        Ok(self
            .map()
            .range(from.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests;
