//! The shard manager's state in memory: every shard, allocation and migration, with the
//! indexes that make lookups one step (address -> allocation, workload -> addresses,
//! network -> shards). Only the writer mutates it, one batch at a time; each mutation
//! marks the records it changed, and [`Index::flush`] turns them into the store writes
//! of one transaction. Nothing here does I/O except [`Index::load`].
//!
//! `Index` is one type whose `impl` blocks are spread by job:
//! - this file: the type, its indexes (link/unlink), reads and events;
//! - [`slot`]: one shard's address bitmap;
//! - [`allocator`]: carving shards from the pools, allocating them to networks, picking
//!   and releasing free addresses;
//! - [`persist`]: the batch of changes, [`Index::flush`] into store writes, [`Index::load`];
//! - [`migrate`]: migration transitions (start, moves, pause/resume, finish);
//!   [`rollback`]: failing one (cancel, deadline) and releasing rolled-back addresses;
//! - [`invariants`]: [`Index::check_invariants`] (tests).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::cidr::{Family, to_u128};
use super::events::CloudEvent;
use super::model::{Allocation, Migration, MoveState, Shard, ShardConfig, ShardError};
use super::publish::AddressAssignment;

mod allocator;
mod invariants;
mod migrate;
mod persist;
mod rollback;
mod slot;

pub use persist::{
    ADDR_PREFIX, Batch, COUNTERS_KEY, Counters, EVENT_PREFIX, MIG_PREFIX, SHARD_PREFIX, StoreOp,
    event_key,
};
use slot::Slot;

/// A request to carve a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateShard {
    pub family: Family,
    pub prefix_len: u8,
    pub network_id: Option<String>,
    pub reserved: bool,
}

/// What deallocating a shard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocation {
    /// The shard was empty: it is Available now.
    Released(Shard),
    /// The shard holds addresses: a migration moves them first.
    Migrating(Migration),
}

/// The outcome of preparing one move of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveStep {
    pub host_id: String,
    pub workload: String,
    pub state: MoveState,
    /// The desired generation of the host that carries the new address (set by the
    /// writer after it updated the control hub).
    pub generation: u64,
}

#[derive(Debug)]
pub struct Index {
    pub config: Arc<ShardConfig>,
    slots: BTreeMap<String, Slot>,
    /// Shards by (family, first address); shards never overlap, so the one that may hold
    /// an address is the one with the greatest start not after it.
    by_start: BTreeMap<(Family, u128), String>,
    addrs: HashMap<IpAddr, Allocation>,
    /// (network, workload) -> addresses: releasing a workload is one lookup.
    by_workload: HashMap<(String, String), BTreeSet<IpAddr>>,
    /// (host, workload) -> addresses: the control hub's desired state.
    by_host_workload: HashMap<(String, String), BTreeSet<IpAddr>>,
    by_network: HashMap<String, BTreeSet<String>>,
    migrations: BTreeMap<String, Migration>,
    /// Last sequence of every stored event record, oldest first.
    event_chunks: std::collections::VecDeque<u64>,
    pub counters: Counters,
    /// Addresses released since the controller started (allocations are counted by the
    /// persisted `counters.alloc_seq`).
    releases: u64,
}

fn internal(e: impl std::fmt::Display) -> ShardError {
    ShardError::Internal(e.to_string())
}

impl Index {
    pub fn new(config: Arc<ShardConfig>) -> Self {
        Self {
            config,
            slots: BTreeMap::new(),
            by_start: BTreeMap::new(),
            addrs: HashMap::new(),
            by_workload: HashMap::new(),
            by_host_workload: HashMap::new(),
            by_network: HashMap::new(),
            migrations: BTreeMap::new(),
            event_chunks: std::collections::VecDeque::new(),
            counters: Counters {
                oldest_event: 1,
                ..Counters::default()
            },
            releases: 0,
        }
    }

    fn insert_slot(&mut self, shard: Shard) {
        self.by_start
            .insert((shard.family, shard.cidr.start), shard.id.clone());
        if let Some(n) = &shard.network_id {
            self.by_network
                .entry(n.clone())
                .or_default()
                .insert(shard.id.clone());
        }
        self.slots.insert(shard.id.clone(), Slot::new(shard));
    }

    /// Adds an allocation to the address and workload indexes.
    fn link(&mut self, a: Allocation) {
        self.by_workload
            .entry((a.network_id.clone(), a.workload.clone()))
            .or_default()
            .insert(a.address);
        self.by_host_workload
            .entry((a.host_id.clone(), a.workload.clone()))
            .or_default()
            .insert(a.address);
        self.addrs.insert(a.address, a);
    }

    fn unlink(&mut self, address: IpAddr) -> Option<Allocation> {
        let a = self.addrs.remove(&address)?;
        for (map, key) in [
            (
                &mut self.by_workload,
                (a.network_id.clone(), a.workload.clone()),
            ),
            (
                &mut self.by_host_workload,
                (a.host_id.clone(), a.workload.clone()),
            ),
        ] {
            if let Some(set) = map.get_mut(&key) {
                set.remove(&address);
                if set.is_empty() {
                    map.remove(&key);
                }
            }
        }
        Some(a)
    }

    // ----- reads -----

    pub fn shard(&self, id: &str) -> Option<&Shard> {
        self.slots.get(id).map(|s| &s.shard)
    }

    pub fn shards(&self) -> impl Iterator<Item = &Shard> {
        self.slots.values().map(|s| &s.shard)
    }

    /// Every shard with how many addresses it can hand out (its size less the network
    /// address, the gateway and, for IPv4, the broadcast address).
    pub fn shard_capacities(&self) -> impl Iterator<Item = (&Shard, u64)> {
        self.slots.values().map(|s| (&s.shard, s.capacity()))
    }

    /// Addresses allocated since the store was created (migrations' included).
    pub fn allocations_total(&self) -> u64 {
        self.counters.alloc_seq
    }

    /// Addresses released since the controller started.
    pub fn releases_total(&self) -> u64 {
        self.releases
    }

    pub fn allocation(&self, address: IpAddr) -> Option<&Allocation> {
        self.addrs.get(&address)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.addrs.values()
    }

    /// The addresses `workload` holds (not those `releasing`: it gave them up).
    pub fn workload_addresses(&self, network: &str, workload: &str) -> Vec<Allocation> {
        self.by_workload
            .get(&(network.to_owned(), workload.to_owned()))
            .map(|set| {
                set.iter()
                    .filter_map(|a| self.addrs.get(a))
                    .filter(|a| !a.releasing)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every address rolled back and waiting for its agent before it is released.
    pub fn releasing(&self) -> Vec<Allocation> {
        self.addrs
            .values()
            .filter(|a| a.releasing)
            .cloned()
            .collect()
    }

    pub fn migration(&self, id: &str) -> Option<&Migration> {
        self.migrations.get(id)
    }

    pub fn migrations(&self) -> impl Iterator<Item = &Migration> {
        self.migrations.values()
    }

    /// Every (host, workload) holding an address.
    pub fn host_workloads(&self) -> Vec<(String, String)> {
        self.by_host_workload.keys().cloned().collect()
    }

    /// The addresses `workload` on `host` should have: all it holds except those a
    /// migration is replacing and those rolled back (`releasing`).
    pub fn desired(&self, host: &str, workload: &str) -> Vec<AddressAssignment> {
        let Some(set) = self
            .by_host_workload
            .get(&(host.to_owned(), workload.to_owned()))
        else {
            return Vec::new();
        };
        set.iter()
            .filter_map(|ip| self.addrs.get(ip))
            .filter(|a| !a.retiring && !a.releasing)
            .filter_map(|a| {
                let shard = &self.slots.get(&a.shard_id)?.shard;
                Some(AddressAssignment {
                    cidr: format!("{}/{}", a.address, shard.cidr.prefix_len),
                    gateway: shard.gateway.to_string(),
                    shard_id: shard.id.clone(),
                    allocation_seq: a.seq,
                })
            })
            .collect()
    }

    /// The shard whose prefix holds `ip`.
    fn shard_of(&self, ip: IpAddr) -> Option<&Slot> {
        let family = Family::of(ip);
        let (_, id) = self.by_start.range(..=(family, to_u128(ip))).next_back()?;
        let slot = self.slots.get(id)?;
        slot.shard.cidr.contains(ip).then_some(slot)
    }

    // ----- events -----

    fn emit(&mut self, batch: &mut Batch, kind: &str, subject: &str, data: serde_json::Value) {
        self.counters.event_seq += 1;
        batch.events.push(CloudEvent::new(
            self.counters.event_seq,
            kind,
            subject,
            batch.now_ns,
            data,
        ));
    }

    /// Another part's event, numbered into the log.
    pub(crate) fn record_foreign(&mut self, e: &crate::events::Foreign, batch: &mut Batch) {
        self.counters.event_seq += 1;
        let mut event = CloudEvent::new(
            self.counters.event_seq,
            &e.event_type,
            &e.subject,
            e.at_unix_ns,
            e.data.clone(),
        );
        event.source.clone_from(&e.source);
        batch.events.push(event);
    }

    /// `weft.shard.deallocated`, the spec's `shard.deallocated` `{shardId, networkId}`,
    /// one shape whether the shard was empty or emptied by a migration: `shard_id`, the
    /// `network_id` it left, the `migration_id` that emptied it (`null` for none) and the
    /// shard as it is now (`Available`, no network).
    fn deallocated_event(
        &mut self,
        batch: &mut Batch,
        shard_id: &str,
        network_id: &str,
        migration_id: Option<&str>,
    ) {
        let shard = self
            .slots
            .get(shard_id)
            .map(|s| serde_json::to_value(&s.shard).unwrap_or_default())
            .unwrap_or_default();
        self.emit(
            batch,
            "weft.shard.deallocated",
            &format!("shards/{shard_id}"),
            serde_json::json!({
                "shard_id": shard_id,
                "network_id": network_id,
                "migration_id": migration_id,
                "shard": shard,
            }),
        );
    }

    fn shard_event(&mut self, batch: &mut Batch, kind: &str, id: &str) {
        let data = self
            .slots
            .get(id)
            .map(|s| serde_json::to_value(&s.shard).unwrap_or_default())
            .unwrap_or_default();
        self.emit(batch, kind, &format!("shards/{id}"), data);
    }
}
