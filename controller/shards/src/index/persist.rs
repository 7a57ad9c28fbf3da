//! Persistence: the store records of the index (keys and counters), the [`Batch`] of
//! changes one writer batch made, [`Index::flush`] (those changes as the writes of one
//! store transaction, with the batch's events and event retention) and [`Index::load`]
//! (the index rebuilt from the store at start).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_store::{Store, StoreError};

use super::{Index, internal};
use crate::events::CloudEvent;
use crate::model::{Allocation, Migration, Shard, ShardConfig, ShardError};

pub const SHARD_PREFIX: &str = "shards/shard/";
pub const ADDR_PREFIX: &str = "shards/addr/";
pub const MIG_PREFIX: &str = "shards/mig/";
pub const EVENT_PREFIX: &str = "shards/event/";
pub const COUNTERS_KEY: &str = "shards/meta/counters";

pub fn event_key(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:020}")
}

/// One write of a store transaction: put (Some) or delete (None).
pub type StoreOp = (String, Option<Vec<u8>>);

/// Counters persisted with every batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_shard: u64,
    pub alloc_seq: u64,
    pub event_seq: u64,
    pub next_migration: u64,
    /// The oldest event still stored (events before it were dropped by retention).
    pub oldest_event: u64,
}

/// Effects of a batch of mutations, turned into one store transaction by [`Index::flush`].
#[derive(Debug, Default)]
pub struct Batch {
    pub now_ns: u64,
    pub(super) dirty_shards: BTreeSet<String>,
    pub(super) dirty_addrs: BTreeSet<IpAddr>,
    pub(super) dirty_migrations: BTreeSet<String>,
    pub events: Vec<CloudEvent>,
    /// (host, workload) whose desired addresses changed.
    pub touched: BTreeSet<(String, String)>,
}

impl Batch {
    pub fn new(now_ns: u64) -> Self {
        Self {
            now_ns,
            ..Self::default()
        }
    }
}

impl Index {
    /// Rebuilds the index from the store.
    pub fn load(store: &dyn Store, config: Arc<ShardConfig>) -> Result<Self, StoreError> {
        let bad =
            |key: &str, e: serde_json::Error| StoreError(format!("{key}: unreadable record: {e}"));
        let mut index = Self::new(config);
        if let Some(raw) = store.get(COUNTERS_KEY)? {
            index.counters = serde_json::from_slice(&raw).map_err(|e| bad(COUNTERS_KEY, e))?;
        }
        for (key, raw) in store.scan_prefix(SHARD_PREFIX)? {
            let shard: Shard = serde_json::from_slice(&raw).map_err(|e| bad(&key, e))?;
            index.insert_slot(shard);
        }
        for (key, raw) in store.scan_prefix(ADDR_PREFIX)? {
            let mut a: Allocation = serde_json::from_slice(&raw).map_err(|e| bad(&key, e))?;
            let slot = index
                .slots
                .get_mut(&a.shard_id)
                .ok_or_else(|| StoreError(format!("{key}: shard {} does not exist", a.shard_id)))?;
            a.prefix_len = slot.shard.cidr.prefix_len;
            let offset = slot.offset_of(a.address);
            slot.set(offset, true);
            slot.cursor = slot.cursor.max(offset + 1);
            index.link(a);
        }
        for (key, _) in store.scan_prefix(EVENT_PREFIX)? {
            let last = key[EVENT_PREFIX.len()..]
                .parse()
                .map_err(|_| StoreError(format!("{key}: not an event record key")))?;
            index.event_chunks.push_back(last);
        }
        for (key, raw) in store.scan_prefix(MIG_PREFIX)? {
            let m: Migration = serde_json::from_slice(&raw).map_err(|e| bad(&key, e))?;
            index.migrations.insert(m.id.clone(), m);
        }
        Ok(index)
    }
    /// The store writes of everything `batch` changed, plus the counters and the events
    /// (and deletions of events beyond the retention).
    pub fn flush(&mut self, batch: &mut Batch) -> Result<Vec<StoreOp>, ShardError> {
        let mut ops = Vec::new();
        let json = |v: &dyn erased::Json| v.to_json().map_err(internal);
        for id in std::mem::take(&mut batch.dirty_shards) {
            let value = match self.slots.get(&id) {
                Some(s) => Some(json(&s.shard)?),
                None => None,
            };
            ops.push((format!("{SHARD_PREFIX}{id}"), value));
        }
        for ip in std::mem::take(&mut batch.dirty_addrs) {
            let value = match self.addrs.get(&ip) {
                Some(a) => Some(json(a)?),
                None => None,
            };
            ops.push((format!("{ADDR_PREFIX}{ip}"), value));
        }
        for id in std::mem::take(&mut batch.dirty_migrations) {
            let value = match self.migrations.get(&id) {
                Some(m) => Some(json(m)?),
                None => None,
            };
            ops.push((format!("{MIG_PREFIX}{id}"), value));
        }
        if ops.is_empty() && batch.events.is_empty() {
            return Ok(ops);
        }
        // The batch's events in one record, keyed by its last sequence: a reader from
        // sequence N scans from N and the first record it meets holds N.
        if let Some(last) = batch.events.last().map(|e| e.sequence) {
            ops.push((event_key(last), Some(json(&batch.events)?)));
            self.event_chunks.push_back(last);
        }
        // Retention: drop whole records once all their events are older than it.
        let keep_from = self
            .counters
            .event_seq
            .saturating_sub(self.config.event_retention)
            + 1;
        while let Some(&oldest) = self.event_chunks.front() {
            if oldest >= keep_from {
                break;
            }
            ops.push((event_key(oldest), None));
            self.event_chunks.pop_front();
            self.counters.oldest_event = oldest + 1;
        }
        ops.push((COUNTERS_KEY.to_owned(), Some(json(&self.counters)?)));
        Ok(ops)
    }
}

/// Serialising the record types through one function.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(self)
        }
    }
}
