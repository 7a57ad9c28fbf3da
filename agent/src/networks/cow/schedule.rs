//! Scheduled snapshots: one timer task per node whose spec has `interval_seconds > 0`.
//! Each snapshot taken is followed by a `REFRESH` drift signal for the node, so that the
//! driver reconciles that node alone (`Scope::Only`) and reports its new snapshot list to
//! the controller without waiting for a spec change (one report per snapshot, at most
//! one snapshot per interval per node: bounded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use weft_proto::kinds::NETWORK_NODE;

use super::Store;
use crate::control::{Drift, DriftSignal, REFRESH};
use crate::networks::spec::SnapshotPolicy;

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    interval: Duration,
    policy: SnapshotPolicy,
    volumes: Vec<String>,
}

struct Task {
    plan: Plan,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for Task {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The timers, by node key.
#[derive(Default)]
pub struct Schedules {
    tasks: Mutex<HashMap<String, Task>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Schedules {
    /// Makes node `network/node`'s timer match `policy` (no timer without an interval); a
    /// changed plan restarts it. Must be called on the runtime.
    pub fn ensure(
        &self,
        store: &Arc<Store>,
        network: &str,
        node: &str,
        policy: Option<&SnapshotPolicy>,
        volumes: &[String],
        signals: &mpsc::Sender<DriftSignal>,
    ) {
        let key = format!("{network}/{node}");
        let plan = policy.and_then(|p| {
            Some(Plan {
                interval: p.interval?,
                policy: p.clone(),
                volumes: volumes.to_vec(),
            })
        });
        let mut tasks = lock(&self.tasks);
        let Some(plan) = plan else {
            tasks.remove(&key);
            return;
        };
        if let Some(t) = tasks.get(&key)
            && t.plan == plan
            && !t.handle.is_finished()
        {
            return;
        }
        let handle = tokio::spawn(run(
            store.clone(),
            network.to_owned(),
            node.to_owned(),
            plan.clone(),
            signals.clone(),
        ));
        tasks.insert(key, Task { plan, handle });
    }

    pub fn remove(&self, key: &str) {
        lock(&self.tasks).remove(key);
    }

    /// Nodes with a timer now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.tasks).len()
    }
}

async fn run(
    store: Arc<Store>,
    network: String,
    node: String,
    plan: Plan,
    signals: mpsc::Sender<DriftSignal>,
) {
    let key = format!("{network}/{node}");
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + plan.interval, plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (s, n, net, p) = (store.clone(), node.clone(), network.clone(), plan.clone());
        let r =
            tokio::task::spawn_blocking(move || s.snapshot(&net, &n, &p.volumes, &p.policy)).await;
        match r {
            Ok(Ok(m)) => {
                tracing::debug!(key = %key, id = %m.id, took_ms = m.took_seconds * 1e3, "scheduled snapshot");
                let signal = DriftSignal {
                    kind: NETWORK_NODE,
                    drift: Drift {
                        key: key.clone(),
                        what: REFRESH.into(),
                    },
                    at: std::time::Instant::now(),
                };
                if signals.try_send(signal).is_err() {
                    tracing::debug!(key = %key, "snapshot report left to the resync (signal channel full)");
                }
            }
            Ok(Err(e)) => tracing::warn!(key = %key, error = %e, "scheduled snapshot failed"),
            Err(e) => tracing::warn!(key = %key, error = %e, "scheduled snapshot task failed"),
        }
    }
}
