//! The allocator: carving shards from the pools (aligned, never overlapping another shard
//! or a reserved range), allocating shards to networks within the per-network limit,
//! creating and deleting them, and picking a free address of a network's shards (and
//! releasing it).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::{Batch, CreateShard, Index, Slot, internal};
use crate::cidr::{Cidr, Family};
use crate::model::{Allocation, Shard, ShardError, ShardStatus, check_name, prefix_bounds};

impl Index {
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

    pub(super) fn slot(&self, id: &str) -> Result<&Slot, ShardError> {
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

    pub(super) fn remove_from_network(&mut self, network: &str, id: &str) {
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

    // ----- addresses -----

    /// Allocates in `shard_id` (which must have room).
    pub(super) fn allocate_in(
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
    pub(super) fn shard_with_room(
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

    pub(super) fn release(&mut self, address: IpAddr, batch: &mut Batch) -> Option<Allocation> {
        let a = self.unlink(address)?;
        self.releases += 1;
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
}
