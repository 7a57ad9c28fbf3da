//! The embedded store: one redb file (`weft.redb`), one table of string keys and byte
//! values. Each write is its own transaction, committed durably before it returns.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::{Compare, Op, Store, StoreError};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("weft");

fn err(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) `weft.redb` in `dir`, creating the directory.
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("creating {}: {e}", dir.display())))?;
        Self::open(&dir.join("weft.redb"))
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("opening {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(TABLE).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    fn write<R>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let result = {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            f(&mut table)?
        };
        tx.commit().map_err(err)?;
        Ok(result)
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TABLE).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|v| v.value().to_vec()))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.write(|t| t.insert(key, value).map(|_| ()).map_err(err))
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|t| t.remove(key).map(|old| old.is_some()).map_err(err))
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TABLE).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.write(|t| {
            let current = t.get(key).map_err(err)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(value) => {
                    t.insert(key, value).map_err(err)?;
                }
                None => {
                    t.remove(key).map_err(err)?;
                }
            }
            Ok(true)
        })
    }

    fn txn(&self, compares: &[Compare<'_>], ops: &[Op<'_>]) -> Result<bool, StoreError> {
        // One write transaction: compares and ops see the same snapshot, and nothing is
        // committed (the transaction is dropped, i.e. aborted) when a compare fails.
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut table = tx.open_table(TABLE).map_err(err)?;
            for (key, expected) in compares {
                let current = table.get(*key).map_err(err)?;
                if current.as_ref().map(|v| v.value()) != *expected {
                    return Ok(false);
                }
            }
            for (key, value) in ops {
                match value {
                    Some(value) => {
                        table.insert(*key, *value).map_err(err)?;
                    }
                    None => {
                        table.remove(*key).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn scan_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let from = if start > prefix { start } else { prefix };
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TABLE).map_err(err)?;
        let mut out = Vec::new();
        for entry in table.range(from..).map_err(err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }
}
