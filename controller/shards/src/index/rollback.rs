//! Ending a migration that will not complete (cancelled by the operator, or past its
//! deadline): every move that has not completed is rolled back, the shard returns to its
//! network, and the migration is Failed.
//!
//! Rolling a move back never hands an address out: the old address was never released
//! (it was only `retiring`), so it is desired again under its own allocation sequence.
//! The new address (if still held under the sequence the move allocated, so a later
//! holder of it is never touched) is not released yet but `releasing`: no longer desired,
//! still not allocatable, because the agent may have it on the interface until it applies
//! the rollback. The manager releases it once the agent reported that
//! ([`Index::release_rolled_back`]); until then two workloads can never share it.

use std::net::IpAddr;

use super::{Batch, Index, internal};
use crate::model::{Migration, MigrationState, MoveState, ShardError, ShardStatus};

impl Index {
    /// Whether `address` is allocated under sequence `seq`.
    fn holds(&self, address: IpAddr, seq: u64) -> bool {
        self.addrs.get(&address).is_some_and(|a| a.seq == seq)
    }

    /// Fails the active migration `id` with `reason`: rolls back every move in flight
    /// (their new addresses become `releasing`), puts the shard back In-Use in its
    /// network (new allocations from it are allowed again) and emits
    /// `weft.shard.migration.failed`. Completed and failed migrations
    /// are refused (409), unknown ones are 404.
    pub fn fail_migration(
        &mut self,
        id: &str,
        reason: &str,
        batch: &mut Batch,
    ) -> Result<Migration, ShardError> {
        let m = self.migrations.get(id).cloned().ok_or_else(|| {
            ShardError::NotFound(format!(
                "migration {id} does not exist; list them with GET /migrations"
            ))
        })?;
        match m.state {
            MigrationState::Running | MigrationState::Paused => {}
            MigrationState::Completed => {
                return Err(ShardError::Conflict(format!(
                    "migration {id} already completed: every workload moved and shard {} left network {}; \
                     there is nothing to cancel (allocate the shard again with POST /networks/{}/shards/{})",
                    m.shard_id, m.network_id, m.network_id, m.shard_id
                )));
            }
            MigrationState::Failed => {
                return Err(ShardError::Conflict(format!(
                    "migration {id} already failed ({}); there is nothing to cancel",
                    m.error
                )));
            }
        }
        let mut moves = m.moves.clone();
        let mut releasing = 0usize;
        for mv in &mut moves {
            if mv.state != MoveState::Moving {
                continue;
            }
            let old_held = self.holds(mv.old_address, mv.old_seq);
            let new_held = mv.new_address.filter(|new| self.holds(*new, mv.new_seq));
            match (old_held, new_held) {
                (false, Some(_)) => {
                    // The old address was released meanwhile: the new one is all the
                    // workload has, so it keeps it; the move is as good as done.
                    mv.state = MoveState::Done;
                }
                (_, new) => {
                    if let Some(new) = new {
                        self.hold_for_release(new, batch);
                        releasing += 1;
                    }
                    if old_held && let Some(old) = self.addrs.get_mut(&mv.old_address) {
                        old.retiring = false;
                        batch.dirty_addrs.insert(mv.old_address);
                        batch
                            .touched
                            .insert((old.host_id.clone(), old.workload.clone()));
                    }
                    mv.state = MoveState::RolledBack;
                }
            }
        }
        let slot = self
            .slots
            .get_mut(&m.shard_id)
            .ok_or_else(|| internal(format!("shard {} of {id} vanished", m.shard_id)))?;
        // Still allocated to its network, so In-Use, even when no address is left in it
        // (as a shard created for a network is): deallocating it again releases it at once.
        if slot.shard.status == ShardStatus::Migrating {
            slot.shard.status = ShardStatus::InUse;
            batch.dirty_shards.insert(m.shard_id.clone());
        }
        let shard_status = slot.shard.status;
        let error = match m.state {
            MigrationState::Paused if !m.error.is_empty() => {
                format!("{reason} (it was paused: {})", m.error)
            }
            _ => reason.to_owned(),
        };
        let failed = {
            let stored = self
                .migrations
                .get_mut(id)
                .ok_or_else(|| internal("migration vanished"))?;
            stored.moves = moves;
            stored.state = MigrationState::Failed;
            stored.error = error.clone();
            stored.updated_ns = batch.now_ns;
            stored.finished_ns = batch.now_ns;
            stored.clone()
        };
        batch.dirty_migrations.insert(id.to_owned());
        let counts = failed.counts();
        self.emit(
            batch,
            "weft.shard.migration.failed",
            &format!("migrations/{id}"),
            serde_json::json!({"migration_id": id, "shard_id": m.shard_id, "network_id": m.network_id,
                "reason": error, "workloads": failed.moves.len(), "moved": counts.done,
                "rolled_back": counts.rolled_back, "not_started": counts.pending,
                "skipped": counts.skipped, "releasing": releasing,
                "shard_status": shard_status.as_str(),
                "duration_ms": (batch.now_ns.saturating_sub(failed.created_ns)) / 1_000_000}),
        );
        Ok(failed)
    }

    /// Takes the rolled-back new `address` out of its workload's desired state without
    /// freeing it (see the module comment).
    fn hold_for_release(&mut self, address: IpAddr, batch: &mut Batch) {
        if let Some(a) = self.addrs.get_mut(&address) {
            a.releasing = true;
            a.retiring = false;
            batch.dirty_addrs.insert(address);
            batch
                .touched
                .insert((a.host_id.clone(), a.workload.clone()));
        }
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
}
