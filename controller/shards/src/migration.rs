//! Running a migration: for every workload address in the shard, a new address from
//! another shard of the network becomes the workload's desired address (its agent takes
//! the interface down, swaps the addresses, brings it up and reports), then the old one
//! is released. Moves run concurrently (bounded). A move that fails (agent offline, or
//! reporting an error) pauses the migration with the error visible, and the runner
//! retries with backoff until the agent answers; every step is persisted, so a restarted
//! controller resumes where it stopped. With `--migration-deadline`, a migration not
//! completed that long after it started fails instead: its runner stops and the moves not
//! done are rolled back, as a cancel by the operator does.

use std::time::Duration;

use agent_common::time::now_unix_ns;
use futures::StreamExt as _;

use super::model::{Allocation, MigrationState, MoveState};
use super::{Op, Reply, ShardError, ShardManager, unexpected};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub(super) async fn run(manager: &ShardManager, id: &str) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(m) = manager.migration(id) else {
            return;
        };
        if !m.is_active() {
            return;
        }
        let open: Vec<usize> = m
            .moves
            .iter()
            .enumerate()
            .filter(|(_, mv)| matches!(mv.state, MoveState::Pending | MoveState::Moving))
            .map(|(i, _)| i)
            .collect();
        let concurrency = manager.config().migration_concurrency.max(1);
        let failures: Vec<String> = futures::stream::iter(open)
            .map(|idx| async move { move_one(manager, id, idx).await.err() })
            .buffer_unordered(concurrency)
            .filter_map(|e| async move { e })
            .collect()
            .await;
        if failures.is_empty() {
            if m.state == MigrationState::Paused
                && let Err(error) = manager
                    .call(Op::Resume {
                        migration: id.to_owned(),
                    })
                    .await
            {
                tracing::warn!(migration = %id, %error, "resuming failed");
            }
            match manager
                .call(Op::Finish {
                    migration: id.to_owned(),
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(migration = %id, "migration completed");
                    return;
                }
                Err(error) => {
                    // E.g. an address allocated meanwhile; look again after a pause.
                    tracing::warn!(migration = %id, %error, "migration not finished yet");
                }
            }
        } else {
            let error = format!(
                "{} of the workloads have not moved; first: {}",
                failures.len(),
                failures[0]
            );
            tracing::warn!(migration = %id, %error, "migration paused");
            if let Err(e) = manager
                .call(Op::Pause {
                    migration: id.to_owned(),
                    error,
                })
                .await
            {
                tracing::warn!(migration = %id, error = %e, "pausing failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        if failures.is_empty() {
            backoff = BACKOFF_MIN;
        }
    }
}

/// One workload: new address desired, agent applied it, old address released.
async fn move_one(manager: &ShardManager, id: &str, idx: usize) -> Result<(), String> {
    let result = async {
        let step = match manager
            .call(Op::PrepareMove {
                migration: id.to_owned(),
                idx,
            })
            .await?
        {
            Reply::Step(step) => step,
            other => return Err(unexpected(other)),
        };
        if matches!(step.state, MoveState::Done | MoveState::Skipped) {
            return Ok(());
        }
        let timeout = manager.config().migration_timeout;
        let observed = manager
            .addresses()
            .wait_applied(&step.host_id, &step.workload, step.generation, timeout)
            .await
            .map_err(ShardError::Conflict)?;
        manager
            .call(Op::CompleteMove {
                migration: id.to_owned(),
                idx,
                down_us: observed.readdress_down_us,
            })
            .await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(error) => {
            let error = error.to_string();
            // Visible per workload in GET /migrations/{id}.
            let _ = manager
                .call(Op::MoveFailed {
                    migration: id.to_owned(),
                    idx,
                    error: error.clone(),
                })
                .await;
            Err(error)
        }
    }
}

/// Releases `rolled_back` (a new address of a failed migration's move) once its host's
/// agent has applied a desired state without it. Until then the agent may still have it
/// on the interface, so it stays held however long that takes (an agent offline, or
/// reporting an error for the workload): waiting is retried with backoff.
pub(super) async fn release_when_applied(manager: &ShardManager, rolled_back: &Allocation) {
    let (host, workload) = (&rolled_back.host_id, &rolled_back.workload);
    // The address left the host's desired state before this task started (the writer
    // updates the hub before it answers; at start the hub is rebuilt without it), so
    // any state the agent applies from this generation on no longer has it.
    let generation = manager.addresses().generation(host, workload);
    let timeout = manager.config().migration_timeout;
    let mut backoff = BACKOFF_MIN;
    while let Err(error) = manager
        .addresses()
        .wait_applied(host, workload, generation, timeout)
        .await
    {
        tracing::debug!(address = %rolled_back.address, %error, "rolled-back address still held");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let mut backoff = BACKOFF_MIN;
    loop {
        let op = Op::ReleaseRolledBack {
            address: rolled_back.address,
            seq: rolled_back.seq,
        };
        match manager.call(op).await {
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(address = %rolled_back.address, %error, "releasing a rolled-back address failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Resolves when migration `id` is past its deadline (counted from when it started, so
/// also across restarts); never without a deadline.
pub(super) async fn deadline(manager: &ShardManager, id: &str) {
    let created_ns = manager.migration(id).map(|m| m.created_ns);
    let (Some(limit), Some(created_ns)) = (manager.config().migration_deadline, created_ns) else {
        return std::future::pending().await;
    };
    let due_ns = created_ns.saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX));
    tokio::time::sleep(Duration::from_nanos(due_ns.saturating_sub(now_unix_ns()))).await;
}

/// Fails migration `id` for being past its deadline.
pub(super) async fn expire(manager: &ShardManager, id: &str) {
    let Some(limit) = manager.config().migration_deadline else {
        return;
    };
    let reason = format!(
        "deadline of {} exceeded (--migration-deadline)",
        human(limit)
    );
    match manager.fail_migration(id, &reason).await {
        Ok(m) => {
            let c = m.counts();
            tracing::warn!(migration = %id, moved = c.done, rolled_back = c.rolled_back, "{reason}; migration failed");
        }
        // Completed or cancelled just before: nothing to do.
        Err(error) => tracing::info!(migration = %id, %error, "deadline reached"),
    }
}

/// `90s`, `15m`, `2h`, `1d`, or `250ms`: the units of the duration flags.
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_read_in_the_flag_units() {
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(900)), "15m");
        assert_eq!(human(Duration::from_secs(7_200)), "2h");
        assert_eq!(human(Duration::from_secs(86_400)), "1d");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }
}
