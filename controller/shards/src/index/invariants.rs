//! Invariants of the index, checked by the tests after every operation.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::Index;
use crate::model::{MigrationState, MoveState, Shard, ShardStatus};

impl Index {
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
