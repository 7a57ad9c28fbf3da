//! The network kinds' desired state, checked: wire types stop here.

use std::net::IpAddr;

use weft_firewall::{InboundRule, PortRange, Prefix, Protocol, Ruleset, Verdict};
use weft_proto::v1::{FirewallRule, NetworkNode, NetworkSegment, WorkloadAddresses};

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
    /// Inbound rules (default deny).
    pub firewall: Ruleset,
    /// Egress limits on `eth0` (a TDL connection's `bandwidth`).
    pub egress: Vec<weft_noderun::EgressLimit>,
    /// What runs in it: type, image, command, limits, volumes.
    pub runtime: Runtime,
    /// Replication relays to and from other hosts.
    pub relays: Vec<super::relay::RelaySpec>,
    /// Volume replication, source side: (port, peers).
    pub volume_export: Option<(u16, Vec<String>)>,
    /// Volume replication, mirror side: (source, interval, generation).
    pub volume_sync: Option<(std::net::SocketAddr, std::time::Duration, u64)>,
    pub mtu: u32,
    /// A source whose hand changes propagate: once this spec is in place, addresses and
    /// inbound rules changed by hand are kept and reported, not repaired.
    pub keep_hand_changes: bool,
    /// Copy-on-write snapshots, clone and syncs of its volumes (`super::cow`).
    pub volume_ops: VolumeOps,
}

/// A node's copy-on-write volume operations (`NetworkNode.snapshots`, `clone`,
/// `sync_from`); any of them puts the node's volumes in the volume pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VolumeOps {
    pub snapshots: Option<SnapshotPolicy>,
    pub clone: Option<CloneFrom>,
    pub sync_from: Vec<SyncFrom>,
}

impl VolumeOps {
    /// Whether the node's volumes live in the pool.
    pub fn any(&self) -> bool {
        self.snapshots.is_some() || self.clone.is_some() || !self.sync_from.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPolicy {
    /// `None`: only when asked (`generation`).
    pub interval: Option<std::time::Duration>,
    /// Scheduled snapshots kept (at most [`super::cow::retention::MAX_KEEP`]).
    pub keep: u32,
    pub generation: u64,
    pub pinned: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloneFrom {
    pub network: String,
    pub node: String,
    /// Empty: the snapshot answering `generation` (taken by the clone if need be).
    pub snapshot: String,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncFrom {
    pub volume: String,
    pub network: String,
    pub node: String,
    pub generation: u64,
}

/// `"<network>/<node>"` checked; `field` names it in errors.
fn node_ref(field: &str, text: &str) -> Result<(String, String), String> {
    let Some((network, node)) = text.split_once('/') else {
        return Err(format!("{field} {text:?} is not \"<network>/<node>\""));
    };
    names::check("network", network).map_err(|e| format!("{field} {text:?}: {e}"))?;
    names::check("node", node).map_err(|e| format!("{field} {text:?}: {e}"))?;
    Ok((network.to_owned(), node.to_owned()))
}

fn snapshot_id(field: &str, id: &str) -> Result<(), String> {
    super::cow::retention::id_ms(id)
        .map(|_| ())
        .ok_or_else(|| format!("{field} {id:?} is not a snapshot id (\"s-<unix ms>\")"))
}

/// Checks the volume operations of node `network/node` whose volumes are `volumes`.
fn volume_ops(n: &NetworkNode, volumes: &[weft_noderun::Volume]) -> Result<VolumeOps, String> {
    use super::cow::retention::MAX_KEEP;
    let this = (n.network.clone(), n.node.clone());
    let snapshots = match &n.snapshots {
        None => None,
        Some(p) => {
            if p.keep > MAX_KEEP {
                return Err(format!("snapshots.keep {} is more than {MAX_KEEP}", p.keep));
            }
            if p.interval_seconds > 0 && p.keep == 0 {
                return Err(format!(
                    "snapshots.keep 0 with snapshots.interval_seconds {}: every scheduled snapshot would be removed at once",
                    p.interval_seconds
                ));
            }
            if p.pinned.len() > MAX_KEEP as usize {
                return Err(format!(
                    "snapshots.pinned has {} ids, more than {MAX_KEEP}",
                    p.pinned.len()
                ));
            }
            for id in &p.pinned {
                snapshot_id("snapshots.pinned id", id)?;
            }
            Some(SnapshotPolicy {
                interval: (p.interval_seconds > 0)
                    .then(|| std::time::Duration::from_secs(u64::from(p.interval_seconds))),
                keep: p.keep,
                generation: p.generation,
                pinned: p.pinned.clone(),
            })
        }
    };
    let clone = match &n.clone {
        None => None,
        Some(c) => {
            let (network, node) = node_ref("clone.source", &c.source)?;
            if (network.clone(), node.clone()) == this {
                return Err(format!("clone.source {:?} is the node itself", c.source));
            }
            if c.snapshot.is_empty() {
                if c.generation == 0 {
                    return Err(
                        "clone: neither a snapshot id nor a snapshot generation (clone.snapshot, clone.generation)".into(),
                    );
                }
            } else {
                snapshot_id("clone.snapshot", &c.snapshot)?;
            }
            Some(CloneFrom {
                network,
                node,
                snapshot: c.snapshot.clone(),
                generation: c.generation,
            })
        }
    };
    let mut sync_from: Vec<SyncFrom> = Vec::with_capacity(n.sync_from.len());
    for (i, s) in n.sync_from.iter().enumerate() {
        let field = format!("sync_from[{i}]");
        names::check("volume", &s.volume).map_err(|e| format!("{field}.volume: {e}"))?;
        if !volumes.iter().any(|v| v.name == s.volume) {
            return Err(format!(
                "{field}.volume {:?} is not a volume of the node",
                s.volume
            ));
        }
        if sync_from.iter().any(|o| o.volume == s.volume) {
            return Err(format!("{field}.volume {:?} is synced twice", s.volume));
        }
        let (network, node) = node_ref(&format!("{field}.source"), &s.source)?;
        if (network.clone(), node.clone()) == this {
            return Err(format!("{field}.source {:?} is the node itself", s.source));
        }
        sync_from.push(SyncFrom {
            volume: s.volume.clone(),
            network,
            node,
            generation: s.generation,
        });
    }
    Ok(VolumeOps {
        snapshots,
        clone,
        sync_from,
    })
}

/// What runs in a node (the parts of [`weft_noderun::NodeRun`] the spec gives).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Runtime {
    pub node_type: String,
    pub image: String,
    pub command: Vec<String>,
    pub env: std::collections::BTreeMap<String, String>,
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub volumes: Vec<weft_noderun::Volume>,
    pub ports: Vec<u16>,
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
        let mut rules = Vec::with_capacity(n.firewall.len());
        for (i, r) in n.firewall.iter().enumerate() {
            rules.push(inbound_rule(r).map_err(|e| format!("firewall rule {}: {e}", i + 1))?);
        }
        let mut egress = Vec::with_capacity(n.egress_limits.len());
        for (i, l) in n.egress_limits.iter().enumerate() {
            if l.bits_per_second == 0 {
                return Err(format!("egress limit {}: 0 bits per second", i + 1));
            }
            for d in &l.destinations {
                d.parse::<Prefix>()
                    .map_err(|e| format!("egress limit {}: destination {d:?}: {e}", i + 1))?;
            }
            egress.push(weft_noderun::EgressLimit {
                destinations: l.destinations.clone(),
                bits_per_second: l.bits_per_second,
            });
        }
        let runtime = match &n.runtime {
            None => Runtime::default(),
            Some(r) => {
                let mut ports = Vec::with_capacity(r.ports.len());
                for p in &r.ports {
                    ports.push(
                        u16::try_from(*p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| format!("port {p} is outside 1..=65535"))?,
                    );
                }
                let mut volumes = Vec::with_capacity(r.volumes.len());
                for v in &r.volumes {
                    names::check("volume", &v.name)?;
                    if !v.path.starts_with('/') {
                        return Err(format!(
                            "volume {:?}: path {:?} is not absolute",
                            v.name, v.path
                        ));
                    }
                    volumes.push(weft_noderun::Volume {
                        name: v.name.clone(),
                        path: v.path.clone(),
                        size_bytes: v.size_bytes,
                    });
                }
                let mut env: std::collections::BTreeMap<String, String> =
                    r.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if r.restart_generation > 0 {
                    // Part of what runs: a new value restarts it.
                    env.insert(
                        "WEFT_RESTART_GENERATION".into(),
                        r.restart_generation.to_string(),
                    );
                }
                Runtime {
                    node_type: r.r#type.clone(),
                    image: r.image.clone(),
                    command: r.command.clone(),
                    env,
                    cpu_millis: r.cpu_millis,
                    memory_bytes: r.memory_bytes,
                    volumes,
                    ports,
                }
            }
        };
        let volume_ops = volume_ops(n, &runtime.volumes)?;
        Ok(Self {
            network: n.network.clone(),
            node: n.node.clone(),
            addresses,
            firewall: Ruleset { rules },
            egress,
            runtime,
            relays: relays(n)?,
            volume_export: match &n.volume_export {
                None => None,
                Some(e) => {
                    for p in &e.peers {
                        ip("volume export peer", p)?;
                    }
                    Some((port("volume export port", e.port)?, e.peers.clone()))
                }
            },
            volume_sync: match &n.volume_sync {
                None => None,
                Some(v) => Some((
                    v.source.parse().map_err(|_| {
                        format!("volume sync source {:?} is not an address:port", v.source)
                    })?,
                    std::time::Duration::from_secs(u64::from(v.interval_seconds.max(1))),
                    v.generation,
                )),
            },
            mtu,
            keep_hand_changes: n.keep_hand_changes,
            volume_ops,
        })
    }
}

/// `rules` as the wire says them (the inverse of the checks of [`NodeSpec::from_wire`]).
pub fn wire_rules(rules: &Ruleset) -> Vec<FirewallRule> {
    rules
        .rules
        .iter()
        .map(|r| FirewallRule {
            sources: r.sources.iter().map(ToString::to_string).collect(),
            protocol: match r.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Icmp => "icmp",
                Protocol::Any => "any",
            }
            .into(),
            ports: r
                .ports
                .iter()
                .map(|p| weft_proto::v1::PortRange {
                    first: u32::from(p.start),
                    last: u32::from(p.end),
                })
                .collect(),
            accept: r.verdict == Verdict::Accept,
        })
        .collect()
}

fn port(what: &str, p: u32) -> Result<u16, String> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{what} {p} is outside 1..=65535"))
}

fn relays(n: &NetworkNode) -> Result<Vec<super::relay::RelaySpec>, String> {
    use super::relay::RelaySpec;
    let mut out = Vec::new();
    for e in &n.exports {
        let mut peers = Vec::with_capacity(e.peers.len());
        for p in &e.peers {
            peers.push(ip("replication export peer", p)?);
        }
        if peers.is_empty() {
            return Err("a replication export with no peer".into());
        }
        out.push(RelaySpec::Export {
            node_port: port("replication export node_port", e.node_port)?,
            listen_port: port("replication export listen_port", e.listen_port)?,
            peers,
        });
    }
    for i in &n.imports {
        let remote: std::net::SocketAddr = i.remote.parse().map_err(|_| {
            format!(
                "replication import remote {:?} is not an address:port",
                i.remote
            )
        })?;
        out.push(RelaySpec::Import {
            local_port: port("replication import local_port", i.local_port)?,
            remote,
        });
    }
    Ok(out)
}

fn inbound_rule(r: &FirewallRule) -> Result<InboundRule, String> {
    let protocol = match r.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        "any" | "" => Protocol::Any,
        p => return Err(format!("protocol {p:?} is not tcp, udp, icmp or any")),
    };
    let mut sources = Vec::with_capacity(r.sources.len());
    for s in &r.sources {
        sources.push(
            s.parse::<Prefix>()
                .map_err(|e| format!("source {s:?}: {e}"))?,
        );
    }
    let mut ports = Vec::with_capacity(r.ports.len());
    for p in &r.ports {
        let port = |v: u32| {
            u16::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("port {v} is outside 1..=65535"))
        };
        ports.push(PortRange {
            start: port(p.first)?,
            end: port(p.last)?,
        });
    }
    let rule = InboundRule {
        sources,
        protocol,
        ports,
        verdict: if r.accept {
            Verdict::Accept
        } else {
            Verdict::Drop
        },
    };
    rule.validate().map_err(|e| e.to_string())?;
    Ok(rule)
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
        assert!(
            SegmentSpec::try_from(&seg(0, "", &[]))
                .unwrap()
                .vxlan
                .is_none()
        );
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
    fn firewall_rules_are_checked() {
        use weft_proto::v1::PortRange as WirePorts;
        let rule = |proto: &str, src: &str, first: u32, last: u32| FirewallRule {
            sources: vec![src.into()],
            protocol: proto.into(),
            ports: vec![WirePorts { first, last }],
            accept: true,
        };
        let n = |r: FirewallRule| NetworkNode {
            network: "prod".into(),
            node: "db".into(),
            firewall: vec![r],
            ..Default::default()
        };
        let s = NodeSpec::from_wire(&n(rule("tcp", "198.18.64.5/32", 5432, 5432)), 1500).unwrap();
        assert_eq!(s.firewall.rules.len(), 1);
        assert_eq!(s.firewall.rules[0].ports, vec![PortRange::single(5432)]);
        for (bad, why) in [
            (rule("sctp", "198.18.64.5/32", 1, 1), "protocol"),
            (rule("tcp", "198.18.64.5/33", 1, 1), "source"),
            (rule("tcp", "198.18.64.5/32", 0, 1), "port 0"),
            (rule("tcp", "198.18.64.5/32", 1, 70000), "port 70000"),
            (rule("tcp", "198.18.64.5/32", 9, 1), "reversed"),
            (rule("icmp", "198.18.64.5/32", 1, 1), "only for tcp"),
        ] {
            let e = NodeSpec::from_wire(&n(bad), 1500).unwrap_err();
            assert!(
                e.contains("firewall rule 1") && e.contains(why),
                "{why}: {e}"
            );
        }
    }

    #[test]
    fn rules_reported_as_kept_read_back_as_the_same_rules() {
        use weft_proto::v1::PortRange as WirePorts;
        let wire = vec![
            FirewallRule {
                sources: vec!["198.18.64.5/32".into(), "fd00::/64".into()],
                protocol: "tcp".into(),
                ports: vec![WirePorts {
                    first: 80,
                    last: 90,
                }],
                accept: true,
            },
            FirewallRule {
                sources: vec!["0.0.0.0/0".into()],
                protocol: "icmp".into(),
                ports: vec![],
                accept: false,
            },
            FirewallRule {
                sources: vec![],
                protocol: "any".into(),
                ports: vec![],
                accept: true,
            },
        ];
        let n = NetworkNode {
            network: "prod".into(),
            node: "db".into(),
            firewall: wire.clone(),
            keep_hand_changes: true,
            ..Default::default()
        };
        let s = NodeSpec::from_wire(&n, 1500).unwrap();
        assert!(s.keep_hand_changes);
        assert_eq!(wire_rules(&s.firewall), wire);
    }

    #[test]
    fn runtime_and_egress_are_checked() {
        let n = NetworkNode {
            network: "prod".into(),
            node: "web".into(),
            egress_limits: vec![weft_proto::v1::EgressLimit {
                destinations: vec!["198.18.64.9/32".into()],
                bits_per_second: 10_000_000,
            }],
            runtime: Some(weft_proto::v1::NodeRuntime {
                image: "nginx:latest".into(),
                ports: vec![8080],
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = NodeSpec::from_wire(&n, 1500).unwrap();
        assert_eq!(s.egress.len(), 1);
        assert_eq!(s.runtime.ports, vec![8080]);
        let mut bad = n.clone();
        bad.egress_limits[0].destinations = vec!["nope".into()];
        assert!(
            NodeSpec::from_wire(&bad, 1500)
                .unwrap_err()
                .contains("destination")
        );
        let mut bad = n.clone();
        bad.runtime.as_mut().unwrap().ports = vec![70000];
        assert!(
            NodeSpec::from_wire(&bad, 1500)
                .unwrap_err()
                .contains("70000")
        );
        let bad = NetworkNode {
            node: "Web".into(),
            ..n
        };
        assert!(NodeSpec::from_wire(&bad, 1500).unwrap_err().contains("Web"));
    }

    fn weave_node() -> NetworkNode {
        NetworkNode {
            network: "w1".into(),
            node: "db".into(),
            runtime: Some(weft_proto::v1::NodeRuntime {
                command: vec!["sleep infinity".into()],
                volumes: vec![weft_proto::v1::NodeVolume {
                    name: "data".into(),
                    path: "/var/lib/data".into(),
                    size_bytes: 0,
                }],
                ..Default::default()
            }),
            snapshots: Some(weft_proto::v1::VolumeSnapshots {
                interval_seconds: 60,
                keep: 5,
                generation: 2,
                pinned: vec!["s-1764990000123".into()],
            }),
            clone: Some(weft_proto::v1::VolumeClone {
                source: "prod/db".into(),
                snapshot: "s-1764990000123".into(),
                generation: 0,
            }),
            sync_from: vec![weft_proto::v1::VolumeSyncFrom {
                volume: "data".into(),
                source: "prod/db".into(),
                generation: 1,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn volume_operations_are_checked_and_errors_name_the_field() {
        let s = NodeSpec::from_wire(&weave_node(), 1500).unwrap();
        let ops = &s.volume_ops;
        assert!(ops.any());
        let p = ops.snapshots.as_ref().unwrap();
        assert_eq!(p.interval, Some(std::time::Duration::from_secs(60)));
        assert_eq!((p.keep, p.generation), (5, 2));
        let c = ops.clone.as_ref().unwrap();
        assert_eq!((c.network.as_str(), c.node.as_str()), ("prod", "db"));
        assert_eq!(ops.sync_from[0].volume, "data");
        // A clone by generation: no id yet.
        let mut by_generation = weave_node();
        let c = by_generation.clone.as_mut().unwrap();
        c.snapshot = String::new();
        c.generation = 7;
        let s = NodeSpec::from_wire(&by_generation, 1500).unwrap();
        let c = s.volume_ops.clone.as_ref().unwrap();
        assert_eq!((c.snapshot.as_str(), c.generation), ("", 7));
        assert!(
            !NodeSpec::from_wire(
                &NetworkNode {
                    network: "prod".into(),
                    node: "db".into(),
                    ..Default::default()
                },
                1500
            )
            .unwrap()
            .volume_ops
            .any()
        );
        type Edit = fn(&mut NetworkNode);
        let cases: [(Edit, &str); 14] = [
            (
                |n| n.clone.as_mut().unwrap().snapshot = String::new(),
                "neither a snapshot id nor a snapshot generation",
            ),
            (
                |n| n.clone.as_mut().unwrap().source = "prod".into(),
                "clone.source \"prod\" is not",
            ),
            (
                |n| n.clone.as_mut().unwrap().source = "prod/DB".into(),
                "clone.source \"prod/DB\"",
            ),
            (
                |n| n.clone.as_mut().unwrap().source = "/db".into(),
                "clone.source",
            ),
            (
                |n| n.clone.as_mut().unwrap().source = "w1/db".into(),
                "the node itself",
            ),
            (
                |n| n.clone.as_mut().unwrap().snapshot = "latest".into(),
                "clone.snapshot",
            ),
            (
                |n| n.sync_from[0].volume = String::new(),
                "sync_from[0].volume",
            ),
            (
                |n| n.sync_from[0].volume = "logs".into(),
                "not a volume of the node",
            ),
            (
                |n| n.sync_from[0].source = "prod/db/x".into(),
                "sync_from[0].source",
            ),
            (
                |n| {
                    let again = n.sync_from[0].clone();
                    n.sync_from.push(again);
                },
                "sync_from[1].volume \"data\" is synced twice",
            ),
            (
                |n| n.snapshots.as_mut().unwrap().keep = 1001,
                "snapshots.keep 1001 is more than 1000",
            ),
            (
                |n| n.snapshots.as_mut().unwrap().keep = 0,
                "snapshots.keep 0",
            ),
            (
                |n| n.snapshots.as_mut().unwrap().pinned = vec!["s-x".into()],
                "snapshots.pinned id",
            ),
            (
                |n| {
                    n.snapshots.as_mut().unwrap().pinned = vec!["s-1".into(); 1001];
                },
                "snapshots.pinned has 1001",
            ),
        ];
        for (edit, why) in cases {
            let mut n = weave_node();
            edit(&mut n);
            let e = NodeSpec::from_wire(&n, 1500).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        // keep 0 is fine when only asked (no interval).
        let mut n = weave_node();
        let p = n.snapshots.as_mut().unwrap();
        p.keep = 0;
        p.interval_seconds = 0;
        assert_eq!(
            NodeSpec::from_wire(&n, 1500)
                .unwrap()
                .volume_ops
                .snapshots
                .unwrap()
                .interval,
            None
        );
    }
}
