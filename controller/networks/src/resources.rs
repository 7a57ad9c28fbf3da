//! A network record -> the resources each of its hosts must have (pure).

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_control::{ResourceKey, Spec, kinds};
use weft_proto::v1 as wire;
use weft_tdl::{Command, Direction};

use crate::record::{NetworkRecord, node_key};

/// What one host must have of one network.
pub type HostResources = BTreeMap<ResourceKey, Spec>;

/// The addresses of `node` as host prefixes (`/32`, `/128`).
fn host_prefixes(rec: &NetworkRecord, node: &str) -> Vec<String> {
    rec.addresses
        .get(node)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let ip: IpAddr = a.cidr.split('/').next()?.parse().ok()?;
            Some(match ip {
                IpAddr::V4(_) => format!("{ip}/32"),
                IpAddr::V6(_) => format!("{ip}/128"),
            })
        })
        .collect()
}

/// The inbound rules of `node`: the TDL's firewall semantics with the source nodes'
/// addresses. A rule whose source has no address yet matches nothing and is left out.
fn firewall(rec: &NetworkRecord, node: &str) -> Vec<wire::FirewallRule> {
    weft_tdl::firewall(&rec.network, node)
        .into_iter()
        .filter_map(|r| {
            let sources = host_prefixes(rec, &r.source);
            if sources.is_empty() {
                return None;
            }
            let tcp_udp = matches!(
                r.protocol,
                weft_tdl::Protocol::Tcp | weft_tdl::Protocol::Udp
            );
            Some(wire::FirewallRule {
                sources,
                protocol: r.protocol.to_string(),
                ports: if tcp_udp {
                    r.ports
                        .iter()
                        .map(|p| wire::PortRange {
                            first: u32::from(*p),
                            last: u32::from(*p),
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                accept: matches!(r.verdict, weft_tdl::Verdict::Allow),
            })
        })
        .collect()
}

/// The bandwidth limits of connections `node` sends on.
fn egress(rec: &NetworkRecord, node: &str) -> Vec<wire::EgressLimit> {
    let mut out = Vec::new();
    for c in &rec.network.connections {
        let Some(bps) = c.bandwidth_bps else { continue };
        let peer = if c.from == node {
            &c.to
        } else if c.to == node && c.direction == Direction::Both {
            &c.from
        } else {
            continue;
        };
        let destinations = host_prefixes(rec, peer);
        if !destinations.is_empty() {
            out.push(wire::EgressLimit {
                destinations,
                bits_per_second: bps,
            });
        }
    }
    out
}

fn runtime(n: &weft_tdl::Node) -> wire::NodeRuntime {
    wire::NodeRuntime {
        r#type: n.node_type.to_string(),
        image: n.image.clone().unwrap_or_default(),
        command: match &n.command {
            None => Vec::new(),
            Some(Command::Shell(s)) => vec![s.clone()],
            Some(Command::Exec(v)) => v.clone(),
        },
        cpu_millis: n.cpu_millis.unwrap_or(0),
        memory_bytes: n.memory_bytes.unwrap_or(0),
        volumes: n
            .volumes
            .iter()
            .map(|v| wire::NodeVolume {
                name: v.name.clone(),
                path: v.path.clone(),
                size_bytes: v.size_bytes.unwrap_or(0),
            })
            .collect(),
        env: n.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ports: n.ports.iter().map(|p| u32::from(*p)).collect(),
    }
}

/// Every host's resources of `rec`. `underlay`: a host's underlay address; a network on
/// more than one host needs every one of them (the error names the host without).
pub fn by_host(
    rec: &NetworkRecord,
    underlay: &dyn Fn(&str) -> Option<IpAddr>,
) -> Result<BTreeMap<String, HostResources>, String> {
    let hosts = rec.hosts();
    let spans = hosts.len() > 1;
    let mut underlays = BTreeMap::new();
    if spans {
        for h in &hosts {
            let u = underlay(h).ok_or_else(|| {
                format!(
                    "host {h:?} has no underlay address (start its agent with --underlay-address): network {:?} spans {} hosts",
                    rec.id,
                    hosts.len()
                )
            })?;
            underlays.insert(h.clone(), u);
        }
    }
    let mut out: BTreeMap<String, HostResources> = BTreeMap::new();
    for h in &hosts {
        let (vni, local, peers) = if spans {
            (
                rec.vni,
                underlays[h].to_string(),
                underlays
                    .iter()
                    .filter(|(o, _)| *o != h)
                    .map(|(_, a)| a.to_string())
                    .collect(),
            )
        } else {
            (0, String::new(), Vec::new())
        };
        out.entry(h.clone()).or_default().insert(
            ResourceKey::new(kinds::NETWORK_SEGMENT, &rec.id),
            Spec::NetworkSegment(wire::NetworkSegment {
                network: rec.id.clone(),
                vni,
                local,
                peers,
                mtu: rec.network.mtu.map_or(0, u32::from),
            }),
        );
    }
    for (name, n) in &rec.network.nodes {
        let Some(h) = rec.placement.get(name) else {
            continue;
        };
        let addresses = rec
            .addresses
            .get(name)
            .into_iter()
            .flatten()
            .map(|a| wire::AddressAssignment {
                cidr: a.cidr.clone(),
                gateway: a.gateway.clone(),
                shard_id: a.shard_id.clone(),
                allocation_seq: a.allocation_seq,
            })
            .collect();
        out.entry(h.clone()).or_default().insert(
            ResourceKey::new(kinds::NETWORK_NODE, &node_key(&rec.id, name)),
            Spec::NetworkNode(wire::NetworkNode {
                network: rec.id.clone(),
                node: name.clone(),
                addresses,
                firewall: firewall(rec, name),
                egress_limits: egress(rec, name),
                runtime: Some(runtime(n)),
            }),
        );
    }
    Ok(out)
}
