//! The address reconciler (kind `workload-addresses`): which addresses each workload's own
//! interface must have, made real with netlink, level-triggered.
//!
//! - [`diff`]: desired vs current -> a plan of address, link and route operations (pure).
//! - [`apply`]: reads a workload's device inside its network namespace and carries the
//!   plan out ([`Realizer`]); a re-address (shard migration) takes the link down for the
//!   swap and measures how long it was down.
//! - [`reconciler`]: the [`crate::control::Reconciler`] of the kind, driven by the control
//!   driver with the other kinds.
//! - [`state`]: its section of the agent state file.

pub mod apply;
pub mod diff;
pub(crate) mod netns;
pub mod reconciler;
pub mod state;

#[cfg(test)]
mod lab;

use std::net::IpAddr;
use std::path::PathBuf;

use weft_proto::v1::WorkloadAddresses;

pub use apply::{Applied, ReaddressMode, Realizer};
pub use diff::{Cidr, DesiredAddress};
pub use reconciler::AddressReconciler;

#[derive(Debug, thiserror::Error)]
pub enum RealizeError {
    #[error("opening network namespace {path}: {source}")]
    NetnsOpen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    NetnsEnter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workload {0:?} is not in this host's workloads file")]
    UnknownWorkload(String),
    #[error(
        "workload {0:?} has no `netns` in the workloads file, so its addresses cannot be applied"
    )]
    NoNetns(String),
    #[error("device {device:?} not found in network namespace {netns}")]
    NoDevice { device: String, netns: String },
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("desired state for workload {workload:?}: {message}")]
    BadDesired { workload: String, message: String },
}

/// One workload's desired addresses, checked (wire types stop here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredWorkload {
    pub name: String,
    pub addresses: Vec<DesiredAddress>,
}

impl TryFrom<&WorkloadAddresses> for DesiredWorkload {
    type Error = RealizeError;

    fn try_from(w: &WorkloadAddresses) -> Result<Self, Self::Error> {
        let bad = |message: String| RealizeError::BadDesired {
            workload: w.workload.clone(),
            message,
        };
        if w.workload.is_empty() {
            return Err(bad("empty workload name".into()));
        }
        let mut addresses: Vec<DesiredAddress> = Vec::with_capacity(w.addresses.len());
        for a in &w.addresses {
            let cidr: Cidr = a
                .cidr
                .parse()
                .map_err(|e: diff::CidrError| bad(e.to_string()))?;
            let gateway = match a.gateway.as_str() {
                "" => None,
                g => {
                    let ip: IpAddr = g.parse().map_err(|_| {
                        bad(format!("gateway {g:?} of {cidr} is not an IP address"))
                    })?;
                    if ip.is_ipv4() != cidr.addr.is_ipv4()
                        || ip.is_unspecified()
                        || ip.is_multicast()
                    {
                        return Err(bad(format!(
                            "gateway {g:?} cannot be the gateway of {cidr}"
                        )));
                    }
                    Some(ip)
                }
            };
            if addresses.iter().any(|o| o.cidr.addr == cidr.addr) {
                return Err(bad(format!("address {} is listed twice", cidr.addr)));
            }
            if let Some(g) = gateway
                && addresses.iter().any(|o| {
                    o.cidr.addr.is_ipv4() == cidr.addr.is_ipv4()
                        && o.gateway.is_some_and(|og| og != g)
                })
            {
                return Err(bad(format!(
                    "two different gateways for the family of {cidr}"
                )));
            }
            addresses.push(DesiredAddress { cidr, gateway });
        }
        Ok(Self {
            name: w.workload.clone(),
            addresses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::AddressAssignment;

    fn wire(addrs: &[(&str, &str)]) -> WorkloadAddresses {
        WorkloadAddresses {
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
        let ok = DesiredWorkload::try_from(&wire(&[
            ("198.18.128.5/22", "198.18.128.1"),
            ("fd00:80::5/64", ""),
        ]))
        .unwrap();
        assert_eq!(ok.addresses.len(), 2);
        assert_eq!(ok.addresses[1].gateway, None);
        for (bad, why) in [
            (vec![("198.18.128.5", "")], "prefix"),
            (vec![("198.18.128.5/22", "fd00::1")], "gateway"),
            (vec![("198.18.128.5/22", "nope")], "gateway"),
            (
                vec![("198.18.128.5/22", ""), ("198.18.128.5/24", "")],
                "twice",
            ),
            (
                vec![
                    ("198.18.128.5/22", "198.18.128.1"),
                    ("198.18.128.6/22", "198.18.128.2"),
                ],
                "gateways",
            ),
        ] {
            let e = DesiredWorkload::try_from(&wire(&bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("\"web\"") && e.contains(why), "{why}: {e}");
        }
    }
}
