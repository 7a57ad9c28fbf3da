//! The shard manager's state in memory: every shard, allocation and migration, with the
//! indexes that make lookups one step (address -> allocation, workload -> addresses,
//! network -> shards). Only the writer mutates it, one batch at a time; each mutation
//! marks the records it changed, and [`Index::flush`] turns them into the store writes
//! of one transaction. Nothing here does I/O except [`Index::load`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weft_store::{Store, StoreError};

use super::cidr::{Cidr, Family, to_u128};
use super::events::CloudEvent;
use super::model::{
    Allocation, Migration, MigrationState, MoveState, Shard, ShardConfig, ShardError, ShardStatus,
    WorkloadMove, check_name, prefix_bounds,
};
use super::publish::AddressAssignment;

mod rollback;

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

#[derive(Debug, Clone)]
struct Slot {
    shard: Shard,
    /// One bit per address offset.
    used: Vec<u64>,
    /// Where the next search for a free address starts (round robin, so a released
    /// address is not handed out again at once).
    cursor: u64,
}

impl Slot {
    fn new(shard: Shard) -> Self {
        let size = shard.cidr.size();
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(0);
        Self {
            shard,
            used: vec![0; words],
            cursor: 0,
        }
    }

    fn size(&self) -> u64 {
        u64::try_from(self.shard.cidr.size()).unwrap_or(u64::MAX)
    }

    /// Usable offsets: not the network address (0), not the gateway (1), and for IPv4 not
    /// the broadcast address (the last).
    fn usable(&self) -> (u64, u64) {
        let last = match self.shard.family {
            Family::Ipv4 => self.size() - 2,
            Family::Ipv6 => self.size() - 1,
        };
        (2, last)
    }

    fn capacity(&self) -> u64 {
        let (first, last) = self.usable();
        last + 1 - first
    }

    fn has_room(&self) -> bool {
        self.shard.resource_count < self.capacity()
    }

    fn is_set(&self, offset: u64) -> bool {
        let (w, b) = (offset / 64, offset % 64);
        self.used
            .get(usize::try_from(w).unwrap_or(usize::MAX))
            .is_some_and(|word| word & (1 << b) != 0)
    }

    fn set(&mut self, offset: u64, value: bool) {
        let (w, b) = (offset / 64, offset % 64);
        if let Some(word) = self.used.get_mut(usize::try_from(w).unwrap_or(usize::MAX)) {
            if value {
                *word |= 1 << b;
            } else {
                *word &= !(1 << b);
            }
        }
    }

    /// A free usable offset, searching from the cursor.
    fn find_free(&self) -> Option<u64> {
        let (first, last) = self.usable();
        let span = last + 1 - first;
        let start = self.cursor.clamp(first, last);
        (0..span)
            .map(|i| first + (start - first + i) % span)
            .find(|o| !self.is_set(*o))
    }

    fn offset_of(&self, ip: IpAddr) -> u64 {
        u64::try_from(to_u128(ip) - self.shard.cidr.start).unwrap_or(u64::MAX)
    }
}

/// Effects of a batch of mutations, turned into one store transaction by [`Index::flush`].
#[derive(Debug, Default)]
pub struct Batch {
    pub now_ns: u64,
    dirty_shards: BTreeSet<String>,
    dirty_addrs: BTreeSet<IpAddr>,
    dirty_migrations: BTreeSet<String>,
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
        }
    }

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

    fn shard_event(&mut self, batch: &mut Batch, kind: &str, id: &str) {
        let data = self
            .slots
            .get(id)
            .map(|s| serde_json::to_value(&s.shard).unwrap_or_default())
            .unwrap_or_default();
        self.emit(batch, kind, &format!("shards/{id}"), data);
    }

    // ----- shards -----

    fn network_shard_count(&self, network: &str) -> usize {
        self.by_network.get(network).map_or(0, BTreeSet::len)
    }

    fn check_network_room(&self, network: &str) -> Result<(), ShardError> {
        let count = self.network_shard_count(network);
        if count >= self.config.max_shards_per_network {
            return Err(ShardError::Conflict(format!(
                "network {network} already holds {count} shards, the maximum \
                 (--max-shards-per-network {}); deallocate one of its shards first or raise the limit",
                self.config.max_shards_per_network
            )));
        }
        Ok(())
    }

    /// The first aligned free position of a `prefix_len` shard in the pools.
    fn carve(&self, family: Family, prefix_len: u8) -> Option<Cidr> {
        let size = Cidr::new(family, 0, prefix_len).size();
        for pool in self
            .config
            .pools
            .iter()
            .filter(|p| p.family == family && p.prefix_len <= prefix_len)
        {
            let mut candidate = pool.start;
            while let Some(end) = candidate
                .checked_add(size - 1)
                .filter(|end| *end <= pool.last())
            {
                let cidr = Cidr::new(family, candidate, prefix_len);
                // The shard with the greatest start not after `end` is the only one
                // that may overlap (shards never overlap each other).
                let blocker = self
                    .by_start
                    .range(..=(family, end))
                    .next_back()
                    .and_then(|(_, id)| self.slots.get(id))
                    .map(|s| s.shard.cidr)
                    .filter(|c| c.overlaps(&cidr))
                    .or_else(|| {
                        self.config
                            .reserved
                            .iter()
                            .find(|r| r.overlaps(&cidr))
                            .copied()
                    });
                match blocker {
                    None => return Some(cidr),
                    Some(b) => {
                        // Next aligned position after the blocker.
                        let Some(next) = b.last().checked_add(1) else {
                            break;
                        };
                        candidate = next.div_ceil(size).saturating_mul(size);
                    }
                }
            }
        }
        None
    }

    pub fn create_shard(
        &mut self,
        req: &CreateShard,
        batch: &mut Batch,
    ) -> Result<Shard, ShardError> {
        let (min, max) = prefix_bounds(req.family);
        if !(min..=max).contains(&req.prefix_len) {
            return Err(ShardError::invalid(
                "prefix_len",
                format!(
                    "/{} is outside the {} shard sizes /{min} ({} addresses) to /{max} ({} addresses)",
                    req.prefix_len,
                    req.family.as_str(),
                    Cidr::new(req.family, 0, min).size(),
                    Cidr::new(req.family, 0, max).size(),
                ),
            ));
        }
        if let Some(n) = &req.network_id {
            check_name("network_id", n)?;
            if req.reserved {
                return Err(ShardError::invalid(
                    "network_id",
                    "a reserved shard cannot belong to a network",
                ));
            }
            self.check_network_room(n)?;
        }
        let cidr = self.carve(req.family, req.prefix_len).ok_or_else(|| {
            ShardError::Conflict(format!(
                "no free /{} is left in the {} pools ({}); delete unused shards, ask for a smaller size, \
                 or add a pool with --shard-pool",
                req.prefix_len,
                req.family.as_str(),
                self.config
                    .pools
                    .iter()
                    .filter(|p| p.family == req.family)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ))
        })?;
        self.counters.next_shard += 1;
        let id = format!("shard-{:06}", self.counters.next_shard);
        let status = if req.reserved {
            ShardStatus::Reserved
        } else if req.network_id.is_some() {
            ShardStatus::InUse
        } else {
            ShardStatus::Available
        };
        let shard = Shard {
            id: id.clone(),
            cidr,
            family: req.family,
            network_id: req.network_id.clone(),
            status,
            resource_count: 0,
            last_accessed_ns: batch.now_ns,
            created_ns: batch.now_ns,
            gateway: cidr.nth(1),
        };
        self.insert_slot(shard.clone());
        batch.dirty_shards.insert(id.clone());
        self.shard_event(batch, "weft.shard.created", &id);
        if req.network_id.is_some() {
            self.shard_event(batch, "weft.shard.allocated", &id);
        }
        Ok(shard)
    }

    fn slot(&self, id: &str) -> Result<&Slot, ShardError> {
        self.slots.get(id).ok_or_else(|| {
            ShardError::NotFound(format!(
                "shard {id} does not exist; list the shards with GET /shards"
            ))
        })
    }

    pub fn delete_shard(&mut self, id: &str, batch: &mut Batch) -> Result<Shard, ShardError> {
        let shard = self.slot(id)?.shard.clone();
        if shard.status == ShardStatus::Migrating {
            let mid = self
                .migrations
                .values()
                .find(|m| m.shard_id == id && m.is_active())
                .map_or("?", |m| m.id.as_str());
            return Err(ShardError::Conflict(format!(
                "shard {id} is migrating; wait until its migration completes (GET /migrations/{mid}) and delete it then"
            )));
        }
        if shard.resource_count > 0 {
            return Err(ShardError::Conflict(format!(
                "shard {id} is in use by {} addresses; deallocate it from its network first \
                 (DELETE /networks/{}/shards/{id} migrates them), or release the addresses",
                shard.resource_count,
                shard.network_id.as_deref().unwrap_or("-"),
            )));
        }
        self.shard_event(batch, "weft.shard.deleted", id);
        self.slots.remove(id);
        self.by_start.remove(&(shard.family, shard.cidr.start));
        if let Some(n) = &shard.network_id {
            self.remove_from_network(n, id);
        }
        batch.dirty_shards.insert(id.to_owned());
        Ok(shard)
    }

    fn remove_from_network(&mut self, network: &str, id: &str) {
        if let Some(set) = self.by_network.get_mut(network) {
            set.remove(id);
            if set.is_empty() {
                self.by_network.remove(network);
            }
        }
    }

    pub fn assign_shard(
        &mut self,
        network: &str,
        id: &str,
        batch: &mut Batch,
    ) -> Result<Shard, ShardError> {
        check_name("network_id", network)?;
        let shard = self.slot(id)?.shard.clone();
        match (&shard.network_id, shard.status) {
            (_, ShardStatus::Reserved) => {
                return Err(ShardError::Conflict(format!(
                    "shard {id} is reserved and cannot be allocated to a network; create another shard with POST /shards"
                )));
            }
            (Some(n), _) if n == network => return Ok(shard),
            (Some(other), _) => {
                return Err(ShardError::Conflict(format!(
                    "shard {id} belongs to network {other}; deallocate it there first \
                     (DELETE /networks/{other}/shards/{id})"
                )));
            }
            (None, ShardStatus::Migrating) => {
                return Err(ShardError::Conflict(format!(
                    "shard {id} is migrating; wait for its migration to complete"
                )));
            }
            (None, _) => {}
        }
        self.check_network_room(network)?;
        let slot = self
            .slots
            .get_mut(id)
            .ok_or_else(|| internal("shard vanished"))?;
        slot.shard.network_id = Some(network.to_owned());
        slot.shard.status = ShardStatus::InUse;
        let shard = slot.shard.clone();
        self.by_network
            .entry(network.to_owned())
            .or_default()
            .insert(id.to_owned());
        batch.dirty_shards.insert(id.to_owned());
        self.shard_event(batch, "weft.shard.allocated", id);
        Ok(shard)
    }

    pub fn deallocate_shard(
        &mut self,
        network: &str,
        id: &str,
        batch: &mut Batch,
    ) -> Result<Deallocation, ShardError> {
        check_name("network_id", network)?;
        let shard = self.slot(id)?.shard.clone();
        match &shard.network_id {
            Some(n) if n == network => {}
            Some(other) => {
                return Err(ShardError::Conflict(format!(
                    "shard {id} belongs to network {other}, not {network}; use DELETE /networks/{other}/shards/{id}"
                )));
            }
            None => {
                return Err(ShardError::Conflict(format!(
                    "shard {id} is not allocated to any network; nothing to deallocate"
                )));
            }
        }
        if shard.status == ShardStatus::Migrating {
            let active = self
                .migrations
                .values()
                .find(|m| m.shard_id == id && m.is_active())
                .cloned();
            return active
                .map(Deallocation::Migrating)
                .ok_or_else(|| internal("migrating shard without a migration"));
        }
        if shard.resource_count == 0 {
            let slot = self
                .slots
                .get_mut(id)
                .ok_or_else(|| internal("shard vanished"))?;
            slot.shard.network_id = None;
            slot.shard.status = ShardStatus::Available;
            let shard = slot.shard.clone();
            self.remove_from_network(network, id);
            batch.dirty_shards.insert(id.to_owned());
            self.shard_event(batch, "weft.shard.deallocated", id);
            return Ok(Deallocation::Released(shard));
        }
        // In use: every address in it moves to another shard of the network.
        // The shard's own bitmap says which addresses to look up (no scan of every
        // allocation).
        let slot = self.slot(id)?;
        let mut moves: Vec<WorkloadMove> = (0..slot.size())
            .filter(|o| slot.is_set(*o))
            .filter_map(|o| self.addrs.get(&slot.shard.cidr.nth(u128::from(o))))
            // A releasing address belongs to no workload any more: it is released once
            // its agent has dropped it, and the migration finishes after that.
            .filter(|a| !a.releasing)
            .map(|a| WorkloadMove {
                workload: a.workload.clone(),
                host_id: a.host_id.clone(),
                old_address: a.address,
                old_seq: a.seq,
                new_address: None,
                new_seq: 0,
                state: MoveState::Pending,
                error: String::new(),
                down_us: 0,
            })
            .collect();
        moves.sort_by_key(|m| to_u128(m.old_address));
        self.counters.next_migration += 1;
        let mid = format!("mig-{:06}", self.counters.next_migration);
        let migration = Migration {
            id: mid.clone(),
            shard_id: id.to_owned(),
            network_id: network.to_owned(),
            state: MigrationState::Running,
            error: String::new(),
            created_ns: batch.now_ns,
            updated_ns: batch.now_ns,
            finished_ns: 0,
            moves,
        };
        if let Some(slot) = self.slots.get_mut(id) {
            slot.shard.status = ShardStatus::Migrating;
        }
        batch.dirty_shards.insert(id.to_owned());
        self.migrations.insert(mid.clone(), migration.clone());
        batch.dirty_migrations.insert(mid.clone());
        self.emit(
            batch,
            "weft.shard.migration.started",
            &format!("migrations/{mid}"),
            serde_json::json!({"migration_id": mid, "shard_id": id, "network_id": network, "workloads": migration.moves.len()}),
        );
        Ok(Deallocation::Migrating(migration))
    }

    // ----- addresses -----

    /// Allocates in `shard_id` (which must have room).
    fn allocate_in(
        &mut self,
        shard_id: &str,
        network: &str,
        workload: &str,
        host: &str,
        batch: &mut Batch,
    ) -> Result<Allocation, ShardError> {
        let slot = self
            .slots
            .get_mut(shard_id)
            .ok_or_else(|| internal("shard vanished"))?;
        let offset = slot
            .find_free()
            .ok_or_else(|| internal("full shard chosen"))?;
        slot.set(offset, true);
        slot.cursor = offset + 1;
        slot.shard.resource_count += 1;
        slot.shard.last_accessed_ns = batch.now_ns;
        let address = slot.shard.cidr.nth(u128::from(offset));
        self.counters.alloc_seq += 1;
        let a = Allocation {
            address,
            shard_id: shard_id.to_owned(),
            network_id: network.to_owned(),
            workload: workload.to_owned(),
            host_id: host.to_owned(),
            seq: self.counters.alloc_seq,
            allocated_ns: batch.now_ns,
            retiring: false,
            releasing: false,
            prefix_len: slot.shard.cidr.prefix_len,
        };
        self.link(a.clone());
        batch.dirty_shards.insert(shard_id.to_owned());
        batch.dirty_addrs.insert(address);
        batch.touched.insert((host.to_owned(), workload.to_owned()));
        self.emit(
            batch,
            "weft.address.allocated",
            &format!("networks/{network}/addresses/{address}"),
            serde_json::to_value(&a).unwrap_or_default(),
        );
        Ok(a)
    }

    /// A shard of `network` with room for a `family` address, other than `except`.
    fn shard_with_room(
        &self,
        network: &str,
        family: Family,
        except: Option<&str>,
    ) -> Option<String> {
        self.by_network.get(network)?.iter().find_map(|id| {
            let slot = self.slots.get(id)?;
            (slot.shard.family == family
                && slot.shard.status == ShardStatus::InUse
                && Some(id.as_str()) != except
                && slot.has_room())
            .then(|| id.clone())
        })
    }

    pub fn allocate_address(
        &mut self,
        network: &str,
        workload: &str,
        host: &str,
        family: Family,
        batch: &mut Batch,
    ) -> Result<Allocation, ShardError> {
        check_name("network_id", network)?;
        check_name("workload", workload)?;
        check_name("host_id", host)?;
        let shard_id = self.shard_with_room(network, family, None).ok_or_else(|| {
            ShardError::Conflict(format!(
                "network {network} has no {} shard with a free address; give it one with \
                 POST /shards {{\"network_id\":\"{network}\",\"family\":\"{}\"}} or POST /networks/{network}/shards/{{shard_id}}",
                family.as_str(),
                family.as_str(),
            ))
        })?;
        self.allocate_in(&shard_id, network, workload, host, batch)
    }

    fn release(&mut self, address: IpAddr, batch: &mut Batch) -> Option<Allocation> {
        let a = self.unlink(address)?;
        if let Some(slot) = self.slots.get_mut(&a.shard_id) {
            let offset = slot.offset_of(address);
            slot.set(offset, false);
            slot.shard.resource_count = slot.shard.resource_count.saturating_sub(1);
            slot.shard.last_accessed_ns = batch.now_ns;
        }
        batch.dirty_shards.insert(a.shard_id.clone());
        batch.dirty_addrs.insert(address);
        batch
            .touched
            .insert((a.host_id.clone(), a.workload.clone()));
        self.emit(
            batch,
            "weft.address.released",
            &format!("networks/{}/addresses/{address}", a.network_id),
            serde_json::to_value(&a).unwrap_or_default(),
        );
        Some(a)
    }

    pub fn release_address(
        &mut self,
        network: &str,
        address: IpAddr,
        seq: u64,
        batch: &mut Batch,
    ) -> Result<Allocation, ShardError> {
        check_name("network_id", network)?;
        let a = self
            .addrs
            .get(&address)
            .filter(|a| a.network_id == network)
            .ok_or_else(|| {
                ShardError::NotFound(format!(
                    "address {address} is not allocated in network {network}; nothing to release"
                ))
            })?;
        if a.seq != seq {
            let why = if seq < a.seq {
                "an earlier holder of this address"
            } else {
                "no allocation of it yet"
            };
            return Err(ShardError::Conflict(format!(
                "address {address} is held by allocation seq {} (workload {}); seq {seq} names {why}, so the \
                 release is refused; release with the current seq",
                a.seq, a.workload
            )));
        }
        if a.releasing {
            return Err(ShardError::Conflict(format!(
                "address {address} (seq {seq}) was rolled back by a failed migration and is released \
                 by the controller itself once the agent of host {} has dropped it; nothing to release",
                a.host_id
            )));
        }
        self.release(address, batch)
            .ok_or_else(|| internal("allocation vanished"))
    }

    pub fn release_workload(
        &mut self,
        network: &str,
        workload: &str,
        batch: &mut Batch,
    ) -> Result<Vec<Allocation>, ShardError> {
        check_name("network_id", network)?;
        check_name("workload", workload)?;
        let addresses = self
            .by_workload
            .get(&(network.to_owned(), workload.to_owned()))
            .cloned()
            .unwrap_or_default();
        // A releasing address stays held: its agent may still have it on the interface
        // (releasing the workload does not wait for the agent either).
        let addresses: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|a| self.addrs.get(a).is_some_and(|a| !a.releasing))
            .collect();
        Ok(addresses
            .into_iter()
            .filter_map(|a| self.release(a, batch))
            .collect())
    }

    /// Releases `address` rolled back by a failed migration, once its agent has applied
    /// the rollback; only if it is still releasing under `seq` (never a later holder).
    /// Whether it was released.
    pub fn release_rolled_back(&mut self, address: IpAddr, seq: u64, batch: &mut Batch) -> bool {
        let still = self
            .addrs
            .get(&address)
            .is_some_and(|a| a.seq == seq && a.releasing);
        still && self.release(address, batch).is_some()
    }

    // ----- migrations -----

    fn active_migration(&self, id: &str) -> Result<&Migration, ShardError> {
        let m = self
            .migrations
            .get(id)
            .ok_or_else(|| ShardError::NotFound(format!("migration {id} does not exist")))?;
        if !m.is_active() {
            return Err(ShardError::Conflict(format!(
                "migration {id} is {:?}",
                m.state
            )));
        }
        Ok(m)
    }

    fn the_move(&self, id: &str, idx: usize) -> Result<(Migration, WorkloadMove), ShardError> {
        let m = self.active_migration(id)?;
        let mv = m
            .moves
            .get(idx)
            .cloned()
            .ok_or_else(|| internal("no such move"))?;
        Ok((m.clone(), mv))
    }

    fn set_move(&mut self, id: &str, idx: usize, mv: WorkloadMove, batch: &mut Batch) {
        if let Some(m) = self.migrations.get_mut(id) {
            if let Some(slot) = m.moves.get_mut(idx) {
                *slot = mv;
            }
            m.updated_ns = batch.now_ns;
            batch.dirty_migrations.insert(id.to_owned());
        }
    }

    /// Gives the workload of move `idx` its new address (from another shard of the
    /// network, or a shard carved for it within policy) and retires the old one from its
    /// desired state.
    pub fn prepare_move(
        &mut self,
        id: &str,
        idx: usize,
        batch: &mut Batch,
    ) -> Result<MoveStep, ShardError> {
        let (m, mut mv) = self.the_move(id, idx)?;
        let step = |mv: &WorkloadMove| MoveStep {
            host_id: mv.host_id.clone(),
            workload: mv.workload.clone(),
            state: mv.state,
            generation: 0,
        };
        if mv.state != MoveState::Pending {
            return Ok(step(&mv));
        }
        let still_held = self
            .addrs
            .get(&mv.old_address)
            .is_some_and(|a| a.seq == mv.old_seq);
        if !still_held {
            mv.state = MoveState::Skipped;
            self.set_move(id, idx, mv.clone(), batch);
            return Ok(step(&mv));
        }
        let family = Family::of(mv.old_address);
        let target = match self.shard_with_room(&m.network_id, family, Some(&m.shard_id)) {
            Some(t) => t,
            None => {
                let prefix_len = self.slot(&m.shard_id)?.shard.cidr.prefix_len;
                let req = CreateShard {
                    family,
                    prefix_len,
                    network_id: Some(m.network_id.clone()),
                    reserved: false,
                };
                self.create_shard(&req, batch)
                    .map_err(|e| {
                        ShardError::Conflict(format!(
                            "no other shard of network {} has room and none could be carved: {e}",
                            m.network_id
                        ))
                    })?
                    .id
            }
        };
        let new = self.allocate_in(&target, &m.network_id, &mv.workload, &mv.host_id, batch)?;
        if let Some(old) = self.addrs.get_mut(&mv.old_address) {
            old.retiring = true;
            batch.dirty_addrs.insert(mv.old_address);
        }
        mv.new_address = Some(new.address);
        mv.new_seq = new.seq;
        mv.state = MoveState::Moving;
        mv.error.clear();
        self.set_move(id, idx, mv.clone(), batch);
        Ok(step(&mv))
    }

    /// The agent applied the new address: releases the old one.
    pub fn complete_move(
        &mut self,
        id: &str,
        idx: usize,
        down_us: u64,
        batch: &mut Batch,
    ) -> Result<(), ShardError> {
        let (_, mut mv) = self.the_move(id, idx)?;
        if mv.state != MoveState::Moving {
            return Ok(());
        }
        if self
            .addrs
            .get(&mv.old_address)
            .is_some_and(|a| a.seq == mv.old_seq)
        {
            self.release(mv.old_address, batch);
        }
        mv.state = MoveState::Done;
        mv.down_us = down_us;
        mv.error.clear();
        self.set_move(id, idx, mv, batch);
        Ok(())
    }

    /// Records why move `idx` has not finished (visible in GET /migrations/{id}).
    pub fn move_failed(
        &mut self,
        id: &str,
        idx: usize,
        error: &str,
        batch: &mut Batch,
    ) -> Result<(), ShardError> {
        let (_, mut mv) = self.the_move(id, idx)?;
        if mv.error != error {
            mv.error = error.to_owned();
            self.set_move(id, idx, mv, batch);
        }
        Ok(())
    }

    pub fn pause_migration(
        &mut self,
        id: &str,
        error: &str,
        batch: &mut Batch,
    ) -> Result<(), ShardError> {
        let m = self.active_migration(id)?.clone();
        if m.state == MigrationState::Paused && m.error == error {
            return Ok(());
        }
        let was_running = m.state == MigrationState::Running;
        if let Some(m) = self.migrations.get_mut(id) {
            m.state = MigrationState::Paused;
            m.error = error.to_owned();
            m.updated_ns = batch.now_ns;
        }
        batch.dirty_migrations.insert(id.to_owned());
        if was_running {
            self.emit(
                batch,
                "weft.shard.migration.paused",
                &format!("migrations/{id}"),
                serde_json::json!({"migration_id": id, "shard_id": m.shard_id, "network_id": m.network_id, "error": error}),
            );
        }
        Ok(())
    }

    pub fn resume_migration(&mut self, id: &str, batch: &mut Batch) -> Result<(), ShardError> {
        let m = self.active_migration(id)?.clone();
        if m.state != MigrationState::Paused {
            return Ok(());
        }
        if let Some(m) = self.migrations.get_mut(id) {
            m.state = MigrationState::Running;
            m.error.clear();
            m.updated_ns = batch.now_ns;
        }
        batch.dirty_migrations.insert(id.to_owned());
        self.emit(
            batch,
            "weft.shard.migration.resumed",
            &format!("migrations/{id}"),
            serde_json::json!({"migration_id": id, "shard_id": m.shard_id, "network_id": m.network_id}),
        );
        Ok(())
    }

    /// Every move done: the shard leaves its network and is Available again.
    pub fn finish_migration(
        &mut self,
        id: &str,
        batch: &mut Batch,
    ) -> Result<Migration, ShardError> {
        let m = self.active_migration(id)?.clone();
        if let Some(mv) = m
            .moves
            .iter()
            .find(|mv| !matches!(mv.state, MoveState::Done | MoveState::Skipped))
        {
            return Err(ShardError::Conflict(format!(
                "workload {} has not moved yet",
                mv.workload
            )));
        }
        let count = self.slot(&m.shard_id)?.shard.resource_count;
        if count > 0 {
            // Also addresses rolled back by an earlier failed migration, until their
            // agents have dropped them.
            return Err(ShardError::Conflict(format!(
                "shard {} still holds {count} addresses",
                m.shard_id
            )));
        }
        if let Some(slot) = self.slots.get_mut(&m.shard_id) {
            slot.shard.network_id = None;
            slot.shard.status = ShardStatus::Available;
        }
        self.remove_from_network(&m.network_id, &m.shard_id);
        batch.dirty_shards.insert(m.shard_id.clone());
        let finished = {
            let stored = self
                .migrations
                .get_mut(id)
                .ok_or_else(|| internal("migration vanished"))?;
            stored.state = MigrationState::Completed;
            stored.error.clear();
            stored.updated_ns = batch.now_ns;
            stored.finished_ns = batch.now_ns;
            stored.clone()
        };
        batch.dirty_migrations.insert(id.to_owned());
        let mut deallocated = self.slot(&m.shard_id)?.shard.clone();
        deallocated.network_id = Some(m.network_id.clone());
        self.emit(
            batch,
            "weft.shard.deallocated",
            &format!("shards/{}", m.shard_id),
            serde_json::json!({"shard_id": m.shard_id, "network_id": m.network_id, "migration_id": id}),
        );
        let moved = finished
            .moves
            .iter()
            .filter(|mv| mv.state == MoveState::Done)
            .count();
        let max_down = finished
            .moves
            .iter()
            .map(|mv| mv.down_us)
            .max()
            .unwrap_or(0);
        self.emit(
            batch,
            "weft.shard.migration.completed",
            &format!("migrations/{id}"),
            serde_json::json!({"migration_id": id, "shard_id": m.shard_id, "network_id": m.network_id,
                "moved": moved, "max_down_us": max_down,
                "duration_ms": (batch.now_ns.saturating_sub(finished.created_ns)) / 1_000_000}),
        );
        Ok(finished)
    }

    // ----- persistence -----

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

    /// Checks every invariant (tests): no address in two places, no overlapping shards,
    /// counts match, indexes agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        let shards: Vec<&Shard> = self.shards().collect();
        for (i, a) in shards.iter().enumerate() {
            for b in &shards[i + 1..] {
                if a.cidr.overlaps(&b.cidr) {
                    return Err(format!("{} {} overlaps {} {}", a.id, a.cidr, b.id, b.cidr));
                }
            }
            if let Some(r) = self.config.reserved.iter().find(|r| r.overlaps(&a.cidr)) {
                return Err(format!("{} {} overlaps reserved {r}", a.id, a.cidr));
            }
            if !self.config.pools.iter().any(|p| p.covers(&a.cidr)) {
                return Err(format!("{} {} is outside every pool", a.id, a.cidr));
            }
        }
        let mut per_shard: HashMap<&str, u64> = HashMap::new();
        for (ip, a) in &self.addrs {
            let slot = self
                .shard_of(*ip)
                .ok_or_else(|| format!("{ip} is in no shard"))?;
            if slot.shard.id != a.shard_id {
                return Err(format!(
                    "{ip} recorded in {} but lies in {}",
                    a.shard_id, slot.shard.id
                ));
            }
            if !slot.is_set(slot.offset_of(*ip)) {
                return Err(format!("{ip} allocated but its bit is clear"));
            }
            let off = slot.offset_of(*ip);
            let (first, last) = slot.usable();
            if off < first || off > last {
                return Err(format!("{ip} is a network, gateway or broadcast address"));
            }
            if slot.shard.network_id.as_deref() != Some(&a.network_id) {
                return Err(format!(
                    "{ip} of network {} is in shard {} of {:?}",
                    a.network_id, slot.shard.id, slot.shard.network_id
                ));
            }
            *per_shard.entry(&a.shard_id).or_default() += 1;
            if !self
                .by_workload
                .get(&(a.network_id.clone(), a.workload.clone()))
                .is_some_and(|s| s.contains(ip))
            {
                return Err(format!("{ip} missing from its workload index"));
            }
        }
        for s in self.slots.values() {
            let bits: u64 = s.used.iter().map(|w| u64::from(w.count_ones())).sum();
            let count = per_shard.get(s.shard.id.as_str()).copied().unwrap_or(0);
            if bits != count || s.shard.resource_count != count {
                return Err(format!(
                    "{}: {bits} bits, resource_count {}, {count} allocations",
                    s.shard.id, s.shard.resource_count
                ));
            }
            let in_net = s.shard.network_id.as_ref().is_some_and(|n| {
                self.by_network
                    .get(n)
                    .is_some_and(|set| set.contains(&s.shard.id))
            });
            if s.shard.network_id.is_some() != in_net {
                return Err(format!("{} network index disagrees", s.shard.id));
            }
        }
        self.check_migrations()?;
        let indexed: usize = self.by_workload.values().map(BTreeSet::len).sum();
        if indexed != self.addrs.len() {
            return Err(format!(
                "workload index holds {indexed}, {} allocations",
                self.addrs.len()
            ));
        }
        for (n, set) in &self.by_network {
            if set.len() > self.config.max_shards_per_network {
                return Err(format!("network {n} holds {} shards", set.len()));
            }
        }
        Ok(())
    }
}

impl Index {
    /// Migrations and shard states agree: a shard is Migrating exactly while one active
    /// migration empties it, and an address is retiring only while an active migration
    /// moves it (so a cancelled or finished migration leaves none behind).
    fn check_migrations(&self) -> Result<(), String> {
        let mut active: HashMap<&str, &str> = HashMap::new();
        let mut moving: BTreeSet<(IpAddr, u64)> = BTreeSet::new();
        for m in self.migrations.values().filter(|m| m.is_active()) {
            if let Some(other) = active.insert(&m.shard_id, &m.id) {
                return Err(format!("{} and {other} both migrate {}", m.id, m.shard_id));
            }
            moving.extend(
                m.moves
                    .iter()
                    .filter(|mv| mv.state == MoveState::Moving)
                    .map(|mv| (mv.old_address, mv.old_seq)),
            );
        }
        for m in self.migrations.values().filter(|m| !m.is_active()) {
            if let Some(mv) = m
                .moves
                .iter()
                .find(|mv| matches!(mv.state, MoveState::Moving))
            {
                return Err(format!(
                    "{} is {:?} with {} moving",
                    m.id, m.state, mv.workload
                ));
            }
        }
        for s in self.slots.values() {
            let migrating = s.shard.status == ShardStatus::Migrating;
            if migrating != active.contains_key(s.shard.id.as_str()) {
                return Err(format!(
                    "{} is {} but {} active migration",
                    s.shard.id,
                    s.shard.status.as_str(),
                    if migrating { "has no" } else { "has an" }
                ));
            }
        }
        for a in self.addrs.values().filter(|a| a.retiring) {
            if !moving.contains(&(a.address, a.seq)) {
                return Err(format!(
                    "{} (seq {}) is retiring but no active migration moves it",
                    a.address, a.seq
                ));
            }
        }
        self.check_releasing()
    }

    /// An address is releasing exactly when it is the new address of a rolled-back move,
    /// still held under the sequence that move allocated: a rollback never leaves the
    /// new address desired, and nothing else holds an address back. (Releasing addresses
    /// count in their shard like any other: the bit and `resource_count` checks cover
    /// them, so none of them can be handed out.)
    fn check_releasing(&self) -> Result<(), String> {
        let rolled_back: BTreeSet<(IpAddr, u64)> = self
            .migrations
            .values()
            .filter(|m| m.state == MigrationState::Failed)
            .flat_map(|m| &m.moves)
            .filter(|mv| mv.state == MoveState::RolledBack)
            .filter_map(|mv| mv.new_address.map(|new| (new, mv.new_seq)))
            .collect();
        for a in self.addrs.values() {
            let rolled = rolled_back.contains(&(a.address, a.seq));
            if a.releasing != rolled {
                return Err(format!(
                    "{} (seq {}) is {}releasing but {} rolled back",
                    a.address,
                    a.seq,
                    if a.releasing { "" } else { "not " },
                    if rolled { "was" } else { "was not" }
                ));
            }
            if a.releasing && a.retiring {
                return Err(format!("{} is both retiring and releasing", a.address));
            }
        }
        Ok(())
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
