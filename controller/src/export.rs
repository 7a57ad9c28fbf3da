//! A TDL from what really runs (`GET /tdl/export`, `weft tdl export`):
//!
//! - a node per workload the agents registered (on the hosts asked for), on its agent's
//!   host, with its registered addresses (host prefixes) and the ports it was seen serving;
//! - a connection `client -> server` per pair of those workloads weft saw talking, with
//!   the protocol (tcp/udp) and the server ports of that traffic;
//! - a security entry per connection allowing exactly the observed (protocol, port)s.
//!
//! Node names follow the TDL's rule: a workload name that does not (`Web.Prod`) is
//! lowercased, other characters become `-`, and a clash gets `-2`, `-3`, ... Dependencies
//! on services that are not exported workloads, a workload's dependency on itself and
//! addresses claimed twice are left out, and listed as such.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weft_tdl::{
    Addressing, Cidr, Connection, Direction, Family, FirewallRule, Network, Node, Protocol,
    Security, Verdict,
};
use weft_topology::model::Workload;
use weft_topology::topology::TopologySnapshot;

/// The network name when none is asked for.
pub const DEFAULT_NAME: &str = "exported";

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The network's name (`network:`).
    pub name: String,
    /// Give the nodes their registered addresses (else they are allocated from the shards
    /// when the TDL is applied).
    pub addresses: bool,
}

/// One exported node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportedNode {
    pub workload: String,
    pub host: String,
}

#[derive(Debug, Clone)]
pub struct Export {
    pub network: Network,
    /// The canonical text (`weft_tdl::format`): it parses back to `network`.
    pub tdl: String,
    /// Node name -> the workload it is.
    pub nodes: BTreeMap<String, ExportedNode>,
    /// What was seen but is not in the TDL, and why.
    pub left_out: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The network name breaks the TDL's rule.
    #[error("network name: {0}")]
    Name(String),
    /// No registered workload to make a node of.
    #[error("{0}")]
    NoWorkloads(String),
    /// The TDL built does not parse back (a bug: the message says where).
    #[error("the exported TDL does not parse back: {0}")]
    Internal(String),
}

/// `workload` as a TDL name: lowercase `a-z 0-9 _ -`, starting with a letter or digit, at
/// most [`weft_tdl::MAX_NAME`] characters.
pub fn node_name(workload: &str) -> String {
    let mut s: String = workload
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        s.insert(0, 'n');
    }
    s.chars().take(weft_tdl::MAX_NAME).collect()
}

/// `base`, or `base-2`, `base-3`, ... (shortened to fit), whichever is not in `taken`.
fn unique(base: String, taken: &BTreeSet<String>) -> String {
    if !taken.contains(&base) {
        return base;
    }
    (2..)
        .map(|i| {
            let suffix = format!("-{i}");
            let keep = weft_tdl::MAX_NAME - suffix.len();
            let head: String = base.chars().take(keep).collect();
            format!("{head}{suffix}")
        })
        .find(|n| !taken.contains(n))
        .unwrap_or(base)
}

fn host_prefix(ip: IpAddr) -> Cidr {
    Cidr {
        addr: ip,
        prefix: if ip.is_ipv4() { 32 } else { 128 },
    }
}

/// The TDL of the workloads of `agents` (host id, workloads) and of the traffic between
/// them in `snapshot`.
pub fn export(
    req: &ExportRequest,
    agents: &[(String, Vec<Workload>)],
    snapshot: &TopologySnapshot,
) -> Result<Export, ExportError> {
    weft_tdl::check_name(&req.name).map_err(ExportError::Name)?;
    let mut left_out = Vec::new();
    // Workload -> node name; nodes in host then workload order.
    let mut by_workload: BTreeMap<String, String> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut exported: BTreeMap<String, ExportedNode> = BTreeMap::new();
    let mut used_addresses: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut families = BTreeSet::new();
    for (host, workloads) in agents {
        let mut workloads: Vec<&Workload> = workloads.iter().collect();
        workloads.sort_by(|a, b| a.name.cmp(&b.name));
        for w in workloads {
            if by_workload.contains_key(&w.name) {
                left_out.push(format!(
                    "workload {:?} on host {host:?}: another host registered a workload of that name",
                    w.name
                ));
                continue;
            }
            let taken: BTreeSet<String> = nodes.keys().cloned().collect();
            let name = unique(node_name(&w.name), &taken);
            let mut node = Node {
                host: Some(host.clone()),
                ..Node::default()
            };
            if req.addresses {
                for ip in &w.addresses {
                    if let Some(other) = used_addresses.get(ip) {
                        left_out.push(format!(
                            "address {ip} of workload {:?}: workload {other:?} has it too",
                            w.name
                        ));
                        continue;
                    }
                    used_addresses.insert(*ip, w.name.clone());
                    let cidr = host_prefix(*ip);
                    families.insert(cidr.family());
                    node.addresses.push(cidr);
                }
                node.addresses.sort();
            }
            by_workload.insert(w.name.clone(), name.clone());
            exported.insert(
                name.clone(),
                ExportedNode {
                    workload: w.name.clone(),
                    host: host.clone(),
                },
            );
            nodes.insert(name, node);
        }
    }
    if nodes.is_empty() {
        return Err(ExportError::NoWorkloads(
            "no registered workloads to export: the agents of these hosts registered none".into(),
        ));
    }

    // (client node, server node) -> {(protocol, port)}.
    let mut pairs: BTreeMap<(String, String), BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    for d in &snapshot.dependencies {
        let protocol = match d.transport.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                left_out.push(format!(
                    "{} -> {} port {}: transport {other:?} is neither tcp nor udp",
                    d.source, d.target, d.port
                ));
                continue;
            }
        };
        let (Some(from), Some(to)) = (by_workload.get(&d.source), by_workload.get(&d.target))
        else {
            left_out.push(format!(
                "{} -> {} {}/{}: {} is not an exported workload",
                d.source,
                d.target,
                d.transport,
                d.port,
                if by_workload.contains_key(&d.source) {
                    &d.target
                } else {
                    &d.source
                }
            ));
            continue;
        };
        if from == to {
            left_out.push(format!(
                "{} -> {} {}/{}: a workload's traffic to itself needs no connection",
                d.source, d.target, d.transport, d.port
            ));
            continue;
        }
        if d.port == 0 {
            left_out.push(format!(
                "{} -> {} {}: port 0",
                d.source, d.target, d.transport
            ));
            continue;
        }
        pairs
            .entry((from.clone(), to.clone()))
            .or_default()
            .insert((protocol, d.port));
        if let Some(node) = nodes.get_mut(to)
            && !node.ports.contains(&d.port)
        {
            node.ports.push(d.port);
            node.ports.sort_unstable();
        }
    }

    let mut connections = Vec::new();
    let mut security = Vec::new();
    for ((from, to), seen) in pairs {
        // The connection carries the protocol most of the ports are of (tcp on a tie);
        // the security entry allows every (protocol, port) seen, the others included.
        let tcp = seen.iter().filter(|(p, _)| *p == Protocol::Tcp).count();
        let protocol = if tcp * 2 >= seen.len() {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let ports: Vec<u16> = seen
            .iter()
            .filter(|(p, _)| *p == protocol)
            .map(|(_, port)| *port)
            .collect();
        let rules: Vec<FirewallRule> = seen
            .iter()
            .map(|(p, port)| FirewallRule {
                verdict: Verdict::Allow,
                protocol: *p,
                port: Some(*port),
            })
            .collect();
        connections.push(Connection {
            from: from.clone(),
            to: to.clone(),
            direction: Direction::Forward,
            protocol,
            ports,
            bandwidth_bps: None,
        });
        security.push(Security {
            from,
            to,
            direction: Direction::Forward,
            rules,
        });
    }
    if families.is_empty() {
        families.insert(Family::Ipv4);
    }
    let network = Network {
        name: req.name.clone(),
        vni: None,
        vlan: None,
        mtu: None,
        addressing: Addressing {
            shards: req.name.clone(),
            families: families.into_iter().collect(),
        },
        nodes,
        connections,
        security,
    };
    let tdl = weft_tdl::format(&network);
    // What is handed out must be a TDL: parsed back, it is the same network.
    let parsed = weft_tdl::parse(&format!("{}.tdl", req.name), &tdl)
        .map_err(|e| ExportError::Internal(e.to_string()))?;
    if parsed != network {
        return Err(ExportError::Internal(format!(
            "network {:?} reads back differently",
            req.name
        )));
    }
    Ok(Export {
        network: parsed,
        tdl,
        nodes: exported,
        left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_tdl_rule() {
        assert_eq!(node_name("web"), "web");
        assert_eq!(node_name("Web.Prod"), "web-prod");
        assert_eq!(node_name("_cache"), "n_cache");
        assert_eq!(node_name(&"x".repeat(100)).len(), weft_tdl::MAX_NAME);
        for n in ["Web.Prod", "_cache", "ä", "-"] {
            assert!(weft_tdl::check_name(&node_name(n)).is_ok(), "{n}");
        }
        let taken: BTreeSet<String> = ["web".to_string(), "web-2".to_string()].into();
        assert_eq!(unique("web".into(), &taken), "web-3");
        let long = "y".repeat(weft_tdl::MAX_NAME);
        let taken: BTreeSet<String> = [long.clone()].into();
        let u = unique(long, &taken);
        assert!(u.ends_with("-2") && u.len() == weft_tdl::MAX_NAME, "{u}");
    }
}
