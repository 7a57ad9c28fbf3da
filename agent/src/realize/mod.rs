//! The control path on the agent: the controller's desired state (which addresses each
//! workload's own interface must have) made real with netlink, level-triggered.
//!
//! - [`diff`]: desired vs current -> a plan of address, link and route operations (pure).
//! - [`apply`]: reads a workload's device inside its network namespace and carries the
//!   plan out ([`Realizer`]); a re-address (shard migration) takes the link down for the
//!   swap and measures how long it was down.
//! - [`control`]: the client that watches the controller's `DesiredState` stream, applies
//!   every generation and reports what it observes afterwards.

pub mod apply;
pub mod control;
pub mod diff;
mod netns;
pub mod state;

#[cfg(test)]
mod lab;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use weft_proto::v1::WorkloadDesired;

pub use apply::{Applied, ReaddressMode, Realizer};
pub use control::ControlClient;
pub use diff::{Cidr, DesiredAddress};

#[derive(Debug, thiserror::Error)]
pub enum RealizeError {
    #[error("opening network namespace {path}: {source}")]
    NetnsOpen { path: PathBuf, source: std::io::Error },
    #[error("entering network namespace {path}: {source}")]
    NetnsEnter { path: PathBuf, source: std::io::Error },
    #[error("workload {0:?} is not in this host's workloads file")]
    UnknownWorkload(String),
    #[error("workload {0:?} has no `netns` in the workloads file, so its addresses cannot be applied")]
    NoNetns(String),
    #[error("device {device:?} not found in network namespace {netns}")]
    NoDevice { device: String, netns: String },
    #[error("{op}: {source}")]
    Netlink { op: String, source: rtnetlink::Error },
    #[error("desired state for workload {workload:?}: {message}")]
    BadDesired { workload: String, message: String },
}

/// One workload's desired addresses, checked (wire types stop here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredWorkload {
    pub name: String,
    pub addresses: Vec<DesiredAddress>,
}

impl TryFrom<&WorkloadDesired> for DesiredWorkload {
    type Error = RealizeError;

    fn try_from(w: &WorkloadDesired) -> Result<Self, Self::Error> {
        let bad = |message: String| RealizeError::BadDesired { workload: w.workload.clone(), message };
        if w.workload.is_empty() {
            return Err(bad("empty workload name".into()));
        }
        let mut addresses: Vec<DesiredAddress> = Vec::with_capacity(w.addresses.len());
        for a in &w.addresses {
            let cidr: Cidr = a.cidr.parse().map_err(|e: diff::CidrError| bad(e.to_string()))?;
            let gateway = match a.gateway.as_str() {
                "" => None,
                g => {
                    let ip: IpAddr =
                        g.parse().map_err(|_| bad(format!("gateway {g:?} of {cidr} is not an IP address")))?;
                    if ip.is_ipv4() != cidr.addr.is_ipv4() || ip.is_unspecified() || ip.is_multicast() {
                        return Err(bad(format!("gateway {g:?} cannot be the gateway of {cidr}")));
                    }
                    Some(ip)
                }
            };
            if addresses.iter().any(|o| o.cidr.addr == cidr.addr) {
                return Err(bad(format!("address {} is listed twice", cidr.addr)));
            }
            if let Some(g) = gateway
                && addresses.iter().any(|o| {
                    o.cidr.addr.is_ipv4() == cidr.addr.is_ipv4() && o.gateway.is_some_and(|og| og != g)
                })
            {
                return Err(bad(format!("two different gateways for the family of {cidr}")));
            }
            addresses.push(DesiredAddress { cidr, gateway });
        }
        Ok(Self { name: w.workload.clone(), addresses })
    }
}

/// Counters of the control path (created at start, passed down like `Metrics`).
#[derive(Default)]
pub struct ControlMetrics {
    pub desired_generation: AtomicU64,
    pub applied_generation: AtomicU64,
    pub readdress_total: AtomicU64,
    pub apply_errors_total: AtomicU64,
    pub control_connected: AtomicU64,
    pub netns_connections: AtomicU64,
}

impl ControlMetrics {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        let mut line = |name: &str, kind: &str, help: &str, a: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", a.load(Relaxed));
        };
        line("weft_agent_desired_generation", "gauge", "Generation of the last desired state received from the controller.", &self.desired_generation);
        line("weft_agent_applied_generation", "gauge", "Generation of the last desired state applied and reported.", &self.applied_generation);
        line("weft_agent_readdress_total", "counter", "Workload interfaces re-addressed (address swapped with the link down).", &self.readdress_total);
        line("weft_agent_apply_errors_total", "counter", "Workloads whose desired state could not be applied.", &self.apply_errors_total);
        line("weft_agent_control_connected", "gauge", "1 while the desired-state stream from the controller is open.", &self.control_connected);
        line("weft_agent_netns_connections", "gauge", "Netlink connections kept open into workload (and neighbour) namespaces.", &self.netns_connections);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::AddressAssignment;

    fn wire(addrs: &[(&str, &str)]) -> WorkloadDesired {
        WorkloadDesired {
            workload: "web".into(),
            addresses: addrs
                .iter()
                .map(|(c, g)| AddressAssignment {
                    cidr: (*c).into(),
                    gateway: (*g).into(),
                    shard_id: "s1".into(),
                    allocation_seq: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn desired_workload_from_wire_checks_every_field() {
        let ok = DesiredWorkload::try_from(&wire(&[("198.18.128.5/22", "198.18.128.1"), ("fd00:80::5/64", "")])).unwrap();
        assert_eq!(ok.addresses.len(), 2);
        assert_eq!(ok.addresses[1].gateway, None);
        for (bad, why) in [
            (vec![("198.18.128.5", "")], "prefix"),
            (vec![("198.18.128.5/22", "fd00::1")], "gateway"),
            (vec![("198.18.128.5/22", "nope")], "gateway"),
            (vec![("198.18.128.5/22", ""), ("198.18.128.5/24", "")], "twice"),
            (vec![("198.18.128.5/22", "198.18.128.1"), ("198.18.128.6/22", "198.18.128.2")], "gateways"),
        ] {
            let e = DesiredWorkload::try_from(&wire(&bad)).unwrap_err().to_string();
            assert!(e.contains("\"web\"") && e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn renders_control_metrics() {
        let m = ControlMetrics::default();
        m.applied_generation.store(4, Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE weft_agent_applied_generation gauge\nweft_agent_applied_generation 4\n"));
        assert!(text.contains("weft_agent_readdress_total 0"));
    }
}
