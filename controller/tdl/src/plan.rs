//! What realizing a network would create on which host (`weft tdl plan`).

use agent_common::netnames;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::firewall::firewall;
use crate::model::{Cidr, Command, Network, NodeType};
use crate::units::{format_bits, format_bytes, format_cpu};

/// The plan of a network over the hosts that get at least one of its nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub network: String,
    /// The network's VNI; `None`: the controller assigns one.
    pub vni: Option<u32>,
    /// The shard manager network the addresses of nodes without `addresses` come from.
    pub shards: String,
    /// Sorted by host id.
    pub hosts: Vec<HostPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    /// The network's bridge on this host.
    pub bridge: String,
    /// Only when the network spans more than one host.
    pub vxlan: Option<VxlanPlan>,
    /// Sorted by node name.
    pub nodes: Vec<NodePlan>,
    /// tc limits on this host's node interfaces, sorted.
    pub bandwidth: Vec<BandwidthPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanPlan {
    pub device: String,
    pub vni: Option<u32>,
    /// The other hosts of the network (the VXLAN's remote endpoints).
    pub peers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub node: String,
    pub node_type: NodeType,
    /// Whether the node gave `host` (otherwise the planner placed it).
    pub pinned: bool,
    pub namespace: String,
    /// The host end of the veth, attached to the bridge.
    pub veth_host: String,
    /// The end inside the namespace.
    pub veth_node: String,
    /// Explicit addresses; empty: allocated from the shards.
    pub addresses: Vec<Cidr>,
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    /// The number of inbound rules ([`crate::firewall()`]), before the final default deny.
    pub inbound_rules: usize,
    pub command: Option<Command>,
}

/// A rate limit on what `node` sends to `peer`, on `device` (the node's interface).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BandwidthPlan {
    pub node: String,
    pub peer: String,
    pub device: String,
    pub bits_per_second: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no hosts to place the network on; give at least one hypervisor")]
    NoHosts,
    /// (node, host) pairs.
    #[error("{}", unknown_hosts(.0, .1))]
    UnknownHosts(Vec<(String, String)>, Vec<String>),
}

fn unknown_hosts(pairs: &[(String, String)], hosts: &[String]) -> String {
    let each: Vec<String> = pairs
        .iter()
        .map(|(n, h)| format!("node {n:?} asks for host {h:?}"))
        .collect();
    format!(
        "{}, which is not among the hosts ({}); fix host: or add the host",
        each.join(", "),
        hosts.join(", ")
    )
}

/// Places the nodes of `net` on `hosts` and lists what each host would create. A node with
/// `host` goes there; the others, in name order, each go to the host with the fewest nodes
/// so far (ties: the first host in sorted order), so the same inputs give the same plan.
/// Names are the agent's ([`agent_common::netnames`]): `wb`/`wx` + a hash of the network
/// for the bridge and the VXLAN device, `wn` + a hash of network and node for a veth's
/// host end; the node end is `eth0` inside the node's namespace `weft-<network>-<node>`.
pub fn plan(net: &Network, hosts: &[String]) -> Result<Plan, PlanError> {
    let sorted: Vec<String> = hosts
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if sorted.is_empty() {
        return Err(PlanError::NoHosts);
    }
    let mut load: BTreeMap<&str, usize> = sorted.iter().map(|h| (h.as_str(), 0)).collect();
    let mut placed: BTreeMap<&str, &str> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, n) in &net.nodes {
        if let Some(h) = &n.host {
            match load.get_mut(h.as_str()) {
                Some(l) => {
                    *l += 1;
                    placed.insert(name, h);
                }
                None => unknown.push((name.clone(), h.clone())),
            }
        }
    }
    if !unknown.is_empty() {
        return Err(PlanError::UnknownHosts(unknown, sorted));
    }
    for name in net.nodes.keys() {
        if placed.contains_key(name.as_str()) {
            continue;
        }
        let (h, l) = load
            .iter_mut()
            .min_by_key(|(h, l)| (**l, **h))
            .expect("hosts is not empty");
        *l += 1;
        placed.insert(name, h);
    }
    let used: BTreeSet<&str> = placed.values().copied().collect();
    let bridge = netnames::bridge(&net.name);
    let vxlan_dev = netnames::vxlan(&net.name);
    let veth = |node: &str| netnames::host_veth(&net.name, node);
    let mut out = Vec::new();
    for host in &used {
        let mut nodes = Vec::new();
        let mut bandwidth = Vec::new();
        for (name, n) in net
            .nodes
            .iter()
            .filter(|(name, _)| placed.get(name.as_str()) == Some(host))
        {
            nodes.push(NodePlan {
                node: name.clone(),
                node_type: n.node_type,
                pinned: n.host.is_some(),
                namespace: netnames::netns(netnames::DEFAULT_NETNS_PREFIX, &net.name, name),
                veth_host: veth(name),
                veth_node: "eth0".to_owned(),
                addresses: n.addresses.clone(),
                cpu_millis: n.cpu_millis,
                memory_bytes: n.memory_bytes,
                inbound_rules: firewall(net, name).len(),
                command: n.command.clone(),
            });
            for c in &net.connections {
                let Some(bps) = c.bandwidth_bps else { continue };
                for (from, to) in c.flows() {
                    if from == name {
                        bandwidth.push(BandwidthPlan {
                            node: from.to_owned(),
                            peer: to.to_owned(),
                            device: "eth0".to_owned(),
                            bits_per_second: bps,
                        });
                    }
                }
            }
        }
        bandwidth.sort();
        let vxlan = (used.len() > 1).then(|| VxlanPlan {
            device: vxlan_dev.clone(),
            vni: net.vni,
            peers: used
                .iter()
                .filter(|h| *h != host)
                .map(|h| h.to_string())
                .collect(),
        });
        out.push(HostPlan {
            host: host.to_string(),
            bridge: bridge.clone(),
            vxlan,
            nodes,
            bandwidth,
        });
    }
    Ok(Plan {
        network: net.name.clone(),
        vni: net.vni,
        shards: net.addressing.shards.clone(),
        hosts: out,
    })
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: usize = self.hosts.iter().map(|h| h.nodes.len()).sum();
        write!(
            f,
            "network {}: {nodes} node(s) on {} host(s)",
            self.network,
            self.hosts.len()
        )?;
        if self.hosts.len() > 1 {
            match self.vni {
                Some(v) => write!(f, ", VXLAN vni {v}")?,
                None => write!(f, ", VXLAN (vni assigned by the controller)")?,
            }
        }
        writeln!(f)?;
        for h in &self.hosts {
            writeln!(f, "host {}:", h.host)?;
            writeln!(f, "  bridge {}", h.bridge)?;
            if let Some(v) = &h.vxlan {
                let vni = v.vni.map_or_else(
                    || "assigned by the controller".to_owned(),
                    |v| v.to_string(),
                );
                writeln!(
                    f,
                    "  vxlan {} (vni {vni}) to {}",
                    v.device,
                    v.peers.join(", ")
                )?;
            }
            for n in &h.nodes {
                let addrs = if n.addresses.is_empty() {
                    format!("addresses from shards of {}", self.shards)
                } else {
                    n.addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                write!(
                    f,
                    "  node {} ({}{}): netns {}, veth {} <-> {}, {addrs}",
                    n.node,
                    n.node_type,
                    if n.pinned { ", pinned" } else { "" },
                    n.namespace,
                    n.veth_host,
                    n.veth_node
                )?;
                if let Some(c) = n.cpu_millis {
                    write!(f, ", cpu {}", format_cpu(c))?;
                }
                if let Some(m) = n.memory_bytes {
                    write!(f, ", memory {}", format_bytes(m))?;
                }
                writeln!(f, ", {} inbound rule(s) + default deny", n.inbound_rules)?;
            }
            for b in &h.bandwidth {
                writeln!(
                    f,
                    "  limit {} -> {}: {} on {}",
                    b.node,
                    b.peer,
                    format_bits(b.bits_per_second),
                    b.device
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    const NET: &str = "network: shop\nvni: 42\nnodes:\n  a: {}\n  b: {}\n  c: {host: hv2}\n  d: {}\nconnections:\n  a <-> c: {port: 80, bandwidth: 100mbit}\n  d -> a: {}\n";

    #[test]
    fn pinned_nodes_stay_and_the_rest_are_balanced() {
        let net = parse("p.tdl", NET).unwrap();
        let p = plan(&net, &hosts(&["hv2", "hv1"])).unwrap();
        let on: Vec<(String, Vec<String>)> = p
            .hosts
            .iter()
            .map(|h| {
                (
                    h.host.clone(),
                    h.nodes.iter().map(|n| n.node.clone()).collect(),
                )
            })
            .collect();
        // c is pinned to hv2; a -> hv1 (fewest), b -> hv1 (hv1 1, hv2 1: first), d -> hv2.
        assert_eq!(
            on,
            [
                ("hv1".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
                ("hv2".to_owned(), vec!["c".to_owned(), "d".to_owned()])
            ]
        );
        let hv1 = &p.hosts[0];
        assert_eq!(hv1.vxlan.as_ref().unwrap().peers, ["hv2"]);
        assert_eq!(hv1.vxlan.as_ref().unwrap().vni, Some(42));
        assert!(hv1.bridge.len() <= 15 && hv1.nodes[0].veth_host.len() <= 15);
        assert_eq!(hv1.bandwidth.len(), 1, "a sends to c at 100mbit");
        assert_eq!(hv1.bandwidth[0].bits_per_second, 100_000_000);
        // a is targeted by c (port 80) and d (a's ports: none, so every tcp port).
        assert_eq!(hv1.nodes[0].inbound_rules, 2);
        assert_eq!(
            p,
            plan(&net, &hosts(&["hv1", "hv2", "hv1"])).unwrap(),
            "deterministic"
        );
        let shown = p.to_string();
        assert!(shown.contains("VXLAN vni 42"), "{shown}");
        assert!(shown.contains("node c (container, pinned)"), "{shown}");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
    }

    #[test]
    fn one_host_has_no_vxlan_and_unknown_hosts_are_errors() {
        let net = parse("p.tdl", "network: n\nnodes:\n  a: {}\n  b: {}\n").unwrap();
        let p = plan(&net, &hosts(&["hv1", "hv9"])).unwrap();
        assert_eq!(p.hosts.len(), 2);
        let p = plan(&net, &hosts(&["only"])).unwrap();
        assert_eq!(p.hosts.len(), 1);
        assert!(p.hosts[0].vxlan.is_none());
        assert_eq!(plan(&net, &[]), Err(PlanError::NoHosts));
        let net = parse("p.tdl", NET).unwrap();
        let e = plan(&net, &hosts(&["hv1"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node \"c\" asks for host \"hv2\", which is not among the hosts (hv1); fix host: or add the host"
        );
    }
}
