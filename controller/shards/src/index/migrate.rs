//! Migration transitions: deallocating a shard (released at once when empty, otherwise a
//! migration that moves every address in it), preparing and completing each move, pause
//! and resume, and finishing (the shard leaves its network). Failing a migration is in
//! [`super::rollback`].

use super::{Batch, CreateShard, Deallocation, Index, MoveStep, internal};
use crate::cidr::{Family, to_u128};
use crate::model::{
    Migration, MigrationState, MoveState, ShardError, ShardStatus, WorkloadMove, check_name,
};

impl Index {
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
            self.deallocated_event(batch, id, network, None);
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

    /// An `Available` shard of the pool (in no network, not reserved) with room for a
    /// `family` address, the lowest id first.
    fn available_with_room(&self, family: Family) -> Option<String> {
        // Slots are ordered by id.
        self.slots
            .iter()
            .find(|(_, slot)| {
                slot.shard.family == family
                    && slot.shard.network_id.is_none()
                    && slot.shard.status == ShardStatus::Available
                    && slot.has_room()
            })
            .map(|(id, _)| id.clone())
    }

    /// Gives the workload of move `idx` its new address (from another shard of the
    /// network, else an `Available` shard of the pool allocated to the network, else a
    /// shard carved for it within policy) and retires the old one from its desired
    /// state.
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
            // An Available shard of the pool (no network, not reserved) before a new one.
            None if let Some(free) = self.available_with_room(family) => {
                self.assign_shard(&m.network_id, &free, batch)
                    .map_err(|e| {
                        ShardError::Conflict(format!(
                            "no other shard of network {} has room and available shard {free} could not be allocated to it: {e}",
                            m.network_id
                        ))
                    })?
                    .id
            }
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
        self.deallocated_event(batch, &m.shard_id, &m.network_id, Some(id));
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
}
