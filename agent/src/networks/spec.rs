//! The network kinds' desired state, checked: wire types stop here.

use std::net::IpAddr;

use weft_proto::v1::{NetworkNode, NetworkSegment, WorkloadAddresses};

use super::names;
use crate::realize::{DesiredAddress, DesiredWorkload};

/// Default MTU of a network.
pub const DEFAULT_MTU: u32 = 1500;
/// The VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// One network on this host: its bridge, and its VXLAN device when it spans hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSpec {
    pub network: String,
    pub vxlan: Option<VxlanSpec>,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub local: IpAddr,
    /// Sorted, without duplicates.
    pub peers: Vec<IpAddr>,
}

/// One node on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub network: String,
    pub node: String,
    pub addresses: Vec<DesiredAddress>,
    pub mtu: u32,
    /// What the node spec asks that this agent cannot do yet: reported, never ignored.
    pub unsupported: Vec<String>,
}

fn ip(field: &str, text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{field} {text:?} is not an IP address"))
}

impl TryFrom<&NetworkSegment> for SegmentSpec {
    type Error = String;

    fn try_from(s: &NetworkSegment) -> Result<Self, String> {
        names::check("network", &s.network)?;
        let mtu = match s.mtu {
            0 => DEFAULT_MTU,
            m @ 576..=9000 => m,
            m => return Err(format!("mtu {m} is outside 576..=9000")),
        };
        let vxlan = match s.vni {
            0 => None,
            vni @ 1..=0x00ff_ffff => {
                let local = ip("local", &s.local)?;
                let mut peers = Vec::with_capacity(s.peers.len());
                for p in &s.peers {
                    let p = ip("peer", p)?;
                    if p.is_ipv4() != local.is_ipv4() {
                        return Err(format!(
                            "peer {p} is not of the family of the local address {local}"
                        ));
                    }
                    if p == local {
                        return Err(format!("peer {p} is this host's own underlay address"));
                    }
                    peers.push(p);
                }
                peers.sort();
                peers.dedup();
                Some(VxlanSpec { vni, local, peers })
            }
            vni => return Err(format!("vni {vni} is outside 1..=16777215")),
        };
        Ok(Self {
            network: s.network.clone(),
            vxlan,
            mtu,
        })
    }
}

impl NodeSpec {
    /// Checks `n`; `mtu` is its network segment's on this host.
    pub fn from_wire(n: &NetworkNode, mtu: u32) -> Result<Self, String> {
        names::check("network", &n.network)?;
        names::check("node", &n.node)?;
        let addresses = DesiredWorkload::try_from(&WorkloadAddresses {
            workload: format!("{}/{}", n.network, n.node),
            addresses: n.addresses.clone(),
        })
        .map_err(|e| e.to_string())?
        .addresses;
        let mut unsupported = Vec::new();
        if !n.firewall.is_empty() {
            unsupported.push(format!("{} firewall rules", n.firewall.len()));
        }
        if !n.egress_limits.is_empty() {
            unsupported.push(format!("{} egress limits", n.egress_limits.len()));
        }
        if let Some(r) = &n.runtime {
            if !r.command.is_empty() || !r.image.is_empty() {
                unsupported.push("a command or image to run".into());
            }
            if r.cpu_millis > 0 || r.memory_bytes > 0 {
                unsupported.push("cpu/memory limits".into());
            }
            if !r.volumes.is_empty() {
                unsupported.push("volumes".into());
            }
        }
        Ok(Self {
            network: n.network.clone(),
            node: n.node.clone(),
            addresses,
            mtu,
            unsupported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(vni: u32, local: &str, peers: &[&str]) -> NetworkSegment {
        NetworkSegment {
            network: "prod".into(),
            vni,
            local: local.into(),
            peers: peers.iter().map(|p| (*p).into()).collect(),
            mtu: 0,
        }
    }

    #[test]
    fn segments_are_checked() {
        let s = SegmentSpec::try_from(&seg(
            100,
            "198.19.0.65",
            &["198.19.0.67", "198.19.0.66", "198.19.0.66"],
        ))
        .unwrap();
        let v = s.vxlan.unwrap();
        assert_eq!(v.peers.len(), 2);
        assert!(v.peers[0] < v.peers[1]);
        assert_eq!(s.mtu, DEFAULT_MTU);
        assert!(SegmentSpec::try_from(&seg(0, "", &[])).unwrap().vxlan.is_none());
        for (bad, why) in [
            (seg(1 << 24, "198.19.0.65", &[]), "vni"),
            (seg(5, "nope", &[]), "local"),
            (seg(5, "198.19.0.65", &["fd00::1"]), "family"),
            (seg(5, "198.19.0.65", &["198.19.0.65"]), "own"),
        ] {
            let e = SegmentSpec::try_from(&bad).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn node_parts_this_agent_cannot_do_are_named() {
        let n = NetworkNode {
            network: "prod".into(),
            node: "web".into(),
            egress_limits: vec![Default::default()],
            ..Default::default()
        };
        let s = NodeSpec::from_wire(&n, 1500).unwrap();
        assert_eq!(s.unsupported, vec!["1 egress limits".to_string()]);
        let bad = NetworkNode {
            node: "Web".into(),
            ..n
        };
        assert!(NodeSpec::from_wire(&bad, 1500).unwrap_err().contains("Web"));
    }
}
