//! The control path, controller side: the desired state of every host (which addresses
//! each of its workloads should have), streamed to its agent whenever it changes, and what
//! the agent reports back. Level-triggered: a reconnecting agent receives the full current
//! state; applying it twice changes nothing.
//!
//! Nothing here talks to sockets; [`grpc`] exposes it as `weft.v1.AgentControlService`.

pub mod grpc;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

/// One address a workload should have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddressAssignment {
    /// `198.18.128.5/22`.
    pub cidr: String,
    /// Default gateway for the family; empty for none.
    pub gateway: String,
    pub shard_id: String,
    pub allocation_seq: u64,
}

/// The desired state of one host: workload name -> addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDesired {
    pub generation: u64,
    pub workloads: BTreeMap<String, Vec<AddressAssignment>>,
}

/// What an agent reported for one workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadObserved {
    pub addresses: Vec<String>,
    pub link_up: bool,
    /// Empty when the desired state was applied.
    pub error: String,
    pub readdress_down_us: u64,
}

/// The last report of one host.
#[derive(Debug, Clone, Default)]
pub struct HostObserved {
    pub applied_generation: u64,
    pub workloads: BTreeMap<String, WorkloadObserved>,
    pub reported_at: Option<Instant>,
}

#[derive(Debug)]
struct Host {
    desired: watch::Sender<HostDesired>,
    observed: watch::Sender<HostObserved>,
    /// Serialises changes to this host's desired state.
    edit: Mutex<()>,
}

impl Host {
    fn new() -> Self {
        Self {
            desired: watch::channel(HostDesired::default()).0,
            observed: watch::channel(HostObserved::default()).0,
            edit: Mutex::new(()),
        }
    }
}

/// Why waiting for an agent ended without success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("host {host}: no report of generation {generation} within {timeout:?} (agent offline?)")]
    Timeout { host: String, generation: u64, timeout: Duration },
    #[error("host {host}: workload {workload}: {error}")]
    Failed { host: String, workload: String, error: String },
}

/// Desired and observed state of every host.
#[derive(Debug, Default)]
pub struct ControlHub {
    hosts: DashMap<String, std::sync::Arc<Host>>,
}

impl ControlHub {
    fn host(&self, host_id: &str) -> std::sync::Arc<Host> {
        self.hosts.entry(host_id.to_owned()).or_insert_with(|| std::sync::Arc::new(Host::new())).clone()
    }

    /// Changes the addresses of one workload (an empty list removes them); returns the
    /// new generation, or the current one when nothing changed.
    pub fn set_workload(&self, host_id: &str, workload: &str, mut addresses: Vec<AddressAssignment>) -> u64 {
        addresses.sort();
        let host = self.host(host_id);
        let _guard = host.edit.lock().unwrap_or_else(|p| p.into_inner());
        let mut generation = host.desired.borrow().generation;
        host.desired.send_if_modified(|d| {
            let current = d.workloads.get(workload);
            let unchanged = match current {
                Some(c) => *c == addresses,
                None => addresses.is_empty(),
            };
            if unchanged {
                return false;
            }
            if addresses.is_empty() {
                d.workloads.remove(workload);
            } else {
                d.workloads.insert(workload.to_owned(), addresses.clone());
            }
            d.generation += 1;
            generation = d.generation;
            true
        });
        generation
    }

    pub fn desired(&self, host_id: &str) -> HostDesired {
        self.host(host_id).desired.borrow().clone()
    }

    /// A receiver that sees the current desired state at once and every change after.
    pub fn watch(&self, host_id: &str) -> watch::Receiver<HostDesired> {
        let rx = self.host(host_id).desired.subscribe();
        rx
    }

    pub fn report(&self, host_id: &str, observed: HostObserved) {
        self.host(host_id).observed.send_replace(observed);
    }

    pub fn observed(&self, host_id: &str) -> HostObserved {
        self.host(host_id).observed.borrow().clone()
    }

    /// Waits until the host's agent reports a generation >= `generation`; fails if the
    /// report carries an error for `workload`, or after `timeout`.
    pub async fn wait_applied(
        &self,
        host_id: &str,
        generation: u64,
        workload: &str,
        timeout: Duration,
    ) -> Result<WorkloadObserved, WaitError> {
        let mut rx = self.host(host_id).observed.subscribe();
        let wait = async {
            loop {
                {
                    let o = rx.borrow_and_update();
                    if o.applied_generation >= generation {
                        let w = o.workloads.get(workload).cloned().unwrap_or_default();
                        if !w.error.is_empty() {
                            return Err(WaitError::Failed {
                                host: host_id.to_owned(),
                                workload: workload.to_owned(),
                                error: w.error,
                            });
                        }
                        return Ok(w);
                    }
                }
                if rx.changed().await.is_err() {
                    // The hub lives as long as the controller: a closed channel means
                    // shutdown; treat it as a timeout.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(Err(WaitError::Timeout {
            host: host_id.to_owned(),
            generation,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(cidr: &str) -> AddressAssignment {
        AddressAssignment { cidr: cidr.into(), gateway: String::new(), shard_id: "s1".into(), allocation_seq: 1 }
    }

    #[test]
    fn generation_moves_only_on_change() {
        let hub = ControlHub::default();
        assert_eq!(hub.set_workload("hv1", "web", vec![addr("198.18.128.5/22")]), 1);
        assert_eq!(hub.set_workload("hv1", "web", vec![addr("198.18.128.5/22")]), 1, "same state");
        assert_eq!(hub.set_workload("hv1", "db", vec![addr("198.18.128.6/22")]), 2);
        assert_eq!(hub.set_workload("hv1", "db", vec![]), 3);
        assert_eq!(hub.set_workload("hv1", "ghost", vec![]), 3, "removing nothing");
        let d = hub.desired("hv1");
        assert_eq!(d.workloads.len(), 1);
        assert_eq!(hub.desired("hv2").generation, 0);
    }

    #[tokio::test]
    async fn watcher_sees_current_state_then_changes() {
        let hub = ControlHub::default();
        hub.set_workload("hv1", "web", vec![addr("198.18.128.5/22")]);
        let mut rx = hub.watch("hv1");
        assert_eq!(rx.borrow_and_update().generation, 1);
        hub.set_workload("hv1", "web", vec![addr("198.18.132.5/22")]);
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().workloads["web"][0].cidr, "198.18.132.5/22");
    }

    #[tokio::test]
    async fn wait_applied_returns_report_error_or_times_out() {
        let hub = std::sync::Arc::new(ControlHub::default());
        let g = hub.set_workload("hv1", "web", vec![addr("198.18.128.5/22")]);
        let err = hub.wait_applied("hv1", g, "web", Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, WaitError::Timeout { .. }), "{err}");

        let h = hub.clone();
        let waiter = tokio::spawn(async move { h.wait_applied("hv1", g, "web", Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        let mut workloads = BTreeMap::new();
        workloads.insert(
            "web".to_owned(),
            WorkloadObserved { addresses: vec!["198.18.128.5/22".into()], link_up: true, error: String::new(), readdress_down_us: 300 },
        );
        hub.report("hv1", HostObserved { applied_generation: g, workloads, reported_at: Some(Instant::now()) });
        let w = waiter.await.unwrap().unwrap();
        assert_eq!(w.readdress_down_us, 300);

        let g2 = hub.set_workload("hv1", "web", vec![addr("198.18.132.5/22")]);
        let mut workloads = BTreeMap::new();
        workloads.insert("web".to_owned(), WorkloadObserved { error: "no netns".into(), ..Default::default() });
        hub.report("hv1", HostObserved { applied_generation: g2, workloads, reported_at: None });
        let err = hub.wait_applied("hv1", g2, "web", Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err, WaitError::Failed { host: "hv1".into(), workload: "web".into(), error: "no netns".into() });
    }
}
