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

/// A node's addresses as a hand change left them: those the record knows keep their
/// gateway and shard; one added by hand has neither.
fn hand_addresses(
    rec: &NetworkRecord,
    node: &str,
    hand: &[String],
) -> Vec<wire::AddressAssignment> {
    let known = rec.addresses.get(node);
    hand.iter()
        .map(
            |cidr| match known.into_iter().flatten().find(|a| a.cidr == *cidr) {
                Some(a) => wire::AddressAssignment {
                    cidr: a.cidr.clone(),
                    gateway: a.gateway.clone(),
                    shard_id: a.shard_id.clone(),
                    allocation_seq: a.allocation_seq,
                },
                None => wire::AddressAssignment {
                    cidr: cidr.clone(),
                    ..Default::default()
                },
            },
        )
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
        restart_generation: 0,
    }
}

/// The port a replicated node serves, when its image is one weft replicates (PostgreSQL
/// by streaming replication, Redis by `REPLICAOF`): its first declared port, else the
/// server's default.
pub fn replicated_port(n: &weft_tdl::Node) -> Option<u16> {
    let image = n.image.as_deref()?;
    let default = if image.starts_with("postgres") {
        5432
    } else if image.starts_with("redis") || image.starts_with("valkey") {
        6379
    } else {
        return None;
    };
    Some(n.ports.first().copied().unwrap_or(default))
}

/// The host port a source node's replication export listens on (stable per node).
pub fn export_port(network: &str, node: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in network.bytes().chain([b'/']).chain(node.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    40_000 + (h % 20_000) as u16
}

/// Underlay addresses of the hosts that hold node `name` of `rec`'s mirrors, sorted.
fn mirror_hosts(
    rec: &NetworkRecord,
    name: &str,
    all: &BTreeMap<String, NetworkRecord>,
    underlay: &dyn Fn(&str) -> Option<IpAddr>,
) -> Vec<String> {
    let mut peers: Vec<String> = all
        .values()
        .filter(|m| {
            m.role
                == crate::record::Role::Mirror {
                    source: Some(rec.id.clone()),
                }
        })
        .filter_map(|m| m.placement.get(name))
        .filter_map(|h| underlay(h))
        .map(|a| a.to_string())
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// The host port a source node's volume export listens on (stable per node).
pub fn volume_port(network: &str, node: &str) -> u16 {
    30_000 + (export_port(network, node) - 40_000) / 2
}

/// How often a mirror's volumes are copied from its source (and at every sync asked for).
pub const VOLUME_SYNC_INTERVAL_SECONDS: u32 = 60;

/// Volume replication of node `name`: a source serves its volumes to the hosts of its
/// mirrors' copies; a mirror's copy takes them. Databases replicate by their own means.
fn volume_replication(
    rec: &NetworkRecord,
    name: &str,
    node: &weft_tdl::Node,
    all: &BTreeMap<String, NetworkRecord>,
    underlay: &dyn Fn(&str) -> Option<IpAddr>,
    spec: &mut wire::NetworkNode,
) {
    if node.volumes.is_empty() || replicated_port(node).is_some() {
        return;
    }
    match &rec.role {
        crate::record::Role::Source => {
            let peers = mirror_hosts(rec, name, all, underlay);
            if !peers.is_empty() {
                spec.volume_export = Some(wire::VolumeExport {
                    port: u32::from(volume_port(&rec.id, name)),
                    peers,
                });
            }
        }
        crate::record::Role::Mirror { source: Some(src) } => {
            if let Some(remote) = all
                .get(src)
                .and_then(|s| s.placement.get(name))
                .and_then(|h| underlay(h))
            {
                spec.volume_sync = Some(wire::VolumeSync {
                    source: std::net::SocketAddr::new(remote, volume_port(src, name)).to_string(),
                    interval_seconds: VOLUME_SYNC_INTERVAL_SECONDS,
                    generation: rec.sync_generation,
                });
            }
        }
        crate::record::Role::Mirror { source: None } | crate::record::Role::Weave { .. } => {}
    }
}

/// Replication of node `name` of `rec` (a source or a mirror of one), in its spec.
fn replication(
    rec: &NetworkRecord,
    name: &str,
    node: &weft_tdl::Node,
    all: &BTreeMap<String, NetworkRecord>,
    underlay: &dyn Fn(&str) -> Option<IpAddr>,
    spec: &mut wire::NetworkNode,
) -> Result<(), String> {
    let Some(port) = replicated_port(node) else {
        return Ok(());
    };
    match &rec.role {
        crate::record::Role::Source => {
            // Mirror hosts that hold this node's replica may connect.
            let peers = mirror_hosts(rec, name, all, underlay);
            if !peers.is_empty() {
                spec.exports.push(wire::ReplicationExport {
                    node_port: u32::from(port),
                    listen_port: u32::from(export_port(&rec.id, name)),
                    peers,
                });
            }
        }
        crate::record::Role::Mirror { source: Some(src) } => {
            let Some(source) = all.get(src) else {
                return Ok(());
            };
            let Some(host) = source.placement.get(name) else {
                return Ok(());
            };
            // Without a way to the source, the replica would start as a primary of its
            // own: refused until the source's host has an underlay address.
            let remote = underlay(host).ok_or_else(|| {
                format!(
                    "node {name:?} replicates from network {src:?} on host {host:?}, which has no underlay address (start its agent with --underlay-address)"
                )
            })?;
            spec.imports.push(wire::ReplicationImport {
                local_port: u32::from(port),
                remote: std::net::SocketAddr::new(remote, export_port(src, name)).to_string(),
            });
            if let Some(r) = spec.runtime.as_mut() {
                r.image = format!("{}+replica", r.image);
                r.env.insert("WEFT_REPLICA_HOST".into(), "127.0.0.1".into());
                r.env.insert("WEFT_REPLICA_PORT".into(), port.to_string());
            }
        }
        crate::record::Role::Mirror { source: None } | crate::record::Role::Weave { .. } => {}
    }
    Ok(())
}

/// The snapshot schedule of source networks' nodes with volumes (the controller's
/// `--volume-snapshot-interval-seconds` and `--volume-snapshot-keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// 0: only when asked (weave operations).
    pub interval_seconds: u32,
    pub keep: u32,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            interval_seconds: 300,
            keep: 12,
        }
    }
}

/// Volumes of node `name`: a source's snapshot schedule (with the snapshots weaves pin),
/// a weave's clone, and the syncs asked for.
fn volumes(rec: &NetworkRecord, name: &str, policy: SnapshotPolicy, spec: &mut wire::NetworkNode) {
    let has_volumes = rec
        .network
        .nodes
        .get(name)
        .is_some_and(|n| !n.volumes.is_empty());
    if !has_volumes {
        return;
    }
    if rec.role == crate::record::Role::Source {
        spec.snapshots = Some(wire::VolumeSnapshots {
            interval_seconds: policy.interval_seconds,
            keep: policy.keep,
            generation: rec.snapshot_generation,
            pinned: rec.pinned(name),
        });
    }
    if let Some(c) = rec.clones.get(name) {
        spec.clone = Some(wire::VolumeClone {
            source: c.source.clone(),
            snapshot: c.snapshot.clone(),
            generation: c.generation,
        });
    }
    spec.sync_from = rec
        .sync_from
        .get(name)
        .into_iter()
        .flatten()
        .map(|(volume, f)| wire::VolumeSyncFrom {
            volume: volume.clone(),
            source: f.source.clone(),
            generation: f.generation,
        })
        .collect();
}

/// Every host's resources of `rec`. `underlay`: a host's underlay address; a network on
/// more than one host needs every one of them (the error names the host without).
/// `all`: every network (a source's exports and a mirror's imports name each other).
pub fn by_host(
    rec: &NetworkRecord,
    all: &BTreeMap<String, NetworkRecord>,
    underlay: &dyn Fn(&str) -> Option<IpAddr>,
    snapshots: SnapshotPolicy,
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
        let hand = rec.hand_changes.get(name);
        let mut spec = wire::NetworkNode {
            network: rec.id.clone(),
            node: name.clone(),
            addresses: match hand.and_then(|h| h.addresses.as_deref()) {
                Some(h) => hand_addresses(rec, name, h),
                None => rec
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
                    .collect(),
            },
            firewall: match hand.and_then(|h| h.firewall.as_deref()) {
                Some(h) => h.iter().map(crate::record::HandRule::to_wire).collect(),
                None => firewall(rec, name),
            },
            keep_hand_changes: rec.role == crate::record::Role::Source
                && rec.source_drift == crate::record::SourceDrift::Propagate,
            egress_limits: egress(rec, name),
            runtime: Some(wire::NodeRuntime {
                restart_generation: rec.restarts.get(name).copied().unwrap_or(0),
                ..runtime(n)
            }),
            ..Default::default()
        };
        replication(rec, name, n, all, underlay, &mut spec)?;
        volume_replication(rec, name, n, all, underlay, &mut spec);
        volumes(rec, name, snapshots, &mut spec);
        out.entry(h.clone()).or_default().insert(
            ResourceKey::new(kinds::NETWORK_NODE, &node_key(&rec.id, name)),
            Spec::NetworkNode(spec),
        );
    }
    Ok(out)
}
