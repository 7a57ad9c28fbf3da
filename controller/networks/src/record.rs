//! A network as the controller keeps it (`networks/<id>` in the store, JSON).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a network was defined by a user or mirrors another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    Source,
    /// Kept in sync with `source` (`None`: mirrored from a TDL, no live source).
    Mirror {
        source: Option<String>,
    },
    /// A weave: `environment` (a source network) as it was at its `revision`, beside it
    /// on the same hosts (never kept in sync with it).
    /// (`environment_revision`: the record's own `revision` is flattened beside it.)
    Weave {
        environment: String,
        environment_revision: u64,
    },
}

/// A weave node's volumes: clones of a snapshot of another node's on the same host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneFrom {
    /// `<network>/<node>`.
    pub source: String,
    /// The snapshot's id; empty: the one answering `generation` (a weave from "now",
    /// made while the snapshot is taken).
    pub snapshot: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A volume of a node replaced by another node's current state (`sync_volumes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncFrom {
    /// `<network>/<node>`, on the same host.
    pub source: String,
    /// Grows at every sync asked for.
    pub generation: u64,
}

/// One applied revision of a source network (`network-history/<id>/<revision>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub revision: u64,
    pub applied_unix_ns: u64,
    pub record: NetworkRecord,
}

/// One address of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    /// `198.18.64.5/24`.
    pub cidr: String,
    /// Empty: none.
    #[serde(default)]
    pub gateway: String,
    /// Empty: not from a shard (written in the TDL, or copied from a mirror's source).
    #[serde(default)]
    pub shard_id: String,
    #[serde(default)]
    pub allocation_seq: u64,
}

impl NodeAddress {
    /// Whether the shard manager holds it for this node (released when the node goes).
    pub fn allocated(&self) -> bool {
        !self.shard_id.is_empty()
    }
}

/// What happens to a change made by hand in a source network's nodes (their addresses
/// and inbound rules; anything else is always repaired).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceDrift {
    /// Kept in the source, reported, and carried to its mirrors: the mirrors follow the
    /// source as it is, not only as it was defined.
    #[default]
    Propagate,
    /// Put back as the definition says, and reported.
    Repair,
}

impl SourceDrift {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Propagate => "propagate",
            Self::Repair => "repair",
        }
    }
}

impl std::str::FromStr for SourceDrift {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "propagate" => Ok(Self::Propagate),
            "repair" => Ok(Self::Repair),
            other => Err(format!("source_drift {other:?} is not propagate or repair")),
        }
    }
}

/// An inbound rule as a hand change left it (the wire's `FirewallRule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandRule {
    /// Source prefixes; empty: any.
    #[serde(default)]
    pub sources: Vec<String>,
    pub protocol: String,
    /// Inclusive destination port ranges; empty: any.
    #[serde(default)]
    pub ports: Vec<(u32, u32)>,
    pub accept: bool,
}

impl HandRule {
    pub fn from_wire(r: &weft_proto::v1::FirewallRule) -> Self {
        HandRule {
            sources: r.sources.clone(),
            protocol: r.protocol.clone(),
            ports: r.ports.iter().map(|p| (p.first, p.last)).collect(),
            accept: r.accept,
        }
    }

    pub fn to_wire(&self) -> weft_proto::v1::FirewallRule {
        weft_proto::v1::FirewallRule {
            sources: self.sources.clone(),
            protocol: self.protocol.clone(),
            ports: self
                .ports
                .iter()
                .map(|(first, last)| weft_proto::v1::PortRange {
                    first: *first,
                    last: *last,
                })
                .collect(),
            accept: self.accept,
        }
    }
}

/// Changes made by hand in a source node, taken into its desired state and its mirrors'
/// (until the next definition, `PUT`, replaces them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandChanges {
    /// The host the node is on.
    pub host: String,
    /// What differed from the definition, in words.
    pub changes: Vec<String>,
    /// The node's addresses since, when they were changed by hand (`None`: as the
    /// definition and the shards say, so a migration still re-addresses the node).
    #[serde(default)]
    pub addresses: Option<Vec<String>>,
    /// The node's inbound rules since, when they were changed by hand.
    #[serde(default)]
    pub firewall: Option<Vec<HandRule>>,
    /// Rules of shapes weft does not write: kept in the source, not carried.
    #[serde(default)]
    pub foreign_rules: Vec<String>,
    pub adopted_unix_ns: u64,
}

impl HandChanges {
    /// Whether `self` and `other` leave the node alike (when and why aside).
    pub fn same_state(&self, other: &HandChanges) -> bool {
        self.addresses == other.addresses
            && self.firewall == other.firewall
            && self.foreign_rules == other.foreign_rules
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    #[serde(flatten)]
    pub role: Role,
    /// The TDL as submitted (for a mirror of a source network: the source's, renamed).
    pub tdl: String,
    pub file_name: String,
    pub network: weft_tdl::Network,
    /// Node -> host.
    pub placement: BTreeMap<String, String>,
    pub vni: u32,
    /// Node -> its addresses.
    pub addresses: BTreeMap<String, Vec<NodeAddress>>,
    pub created_unix_ns: u64,
    /// Grows at every change of the record.
    pub revision: u64,
    /// When a mirror last took its source's state (0: never).
    #[serde(default)]
    pub synced_unix_ns: u64,
    /// A mirror: how often each node was restarted because its source's restarted.
    #[serde(default)]
    pub restarts: BTreeMap<String, u64>,
    /// A mirror: grows at every volume copy asked for (`POST /networks/{id}/sync`).
    #[serde(default)]
    pub sync_generation: u64,
    /// A source: what happens to changes made by hand in its nodes.
    #[serde(default)]
    pub source_drift: SourceDrift,
    /// Hand changes in force, by node (a mirror's are copied from its source).
    #[serde(default)]
    pub hand_changes: BTreeMap<String, HandChanges>,
    /// A source: grows at every snapshot of its nodes' volumes asked for (not a revision).
    #[serde(default)]
    pub snapshot_generation: u64,
    /// A source: weave -> node -> the snapshot it was made from (kept by the agents
    /// whatever `keep` says, until the weave goes).
    #[serde(default)]
    pub pins: BTreeMap<String, BTreeMap<String, String>>,
    /// A weave: node -> where its volumes were cloned from.
    #[serde(default)]
    pub clones: BTreeMap<String, CloneFrom>,
    /// Node -> volume -> the node whose state replaces it (`sync_volumes`).
    #[serde(default)]
    pub sync_from: BTreeMap<String, BTreeMap<String, SyncFrom>>,
}

impl NetworkRecord {
    /// The snapshots of `node` pinned by weaves, sorted.
    pub fn pinned(&self, node: &str) -> Vec<String> {
        let set: std::collections::BTreeSet<&String> =
            self.pins.values().filter_map(|m| m.get(node)).collect();
        set.into_iter().cloned().collect()
    }

    /// Nodes that have volumes, sorted.
    pub fn nodes_with_volumes(&self) -> Vec<String> {
        self.network
            .nodes
            .iter()
            .filter(|(_, n)| !n.volumes.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Hosts the network is on, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self.placement.values().cloned().collect();
        h.sort();
        h.dedup();
        h
    }
}

/// The store key of a source's revision: `network-history/<id>/<revision, 20 digits>`
/// (sorted by revision).
pub fn history_key(network: &str, revision: u64) -> String {
    format!("{}{revision:020}", history_prefix(network))
}

/// The store prefix of a source's revisions.
pub fn history_prefix(network: &str) -> String {
    format!("network-history/{network}/")
}

/// The shard manager's name for a node's addresses: `<network>.<node>` (TDL names have
/// no `.`, so the split is unambiguous; shard workload names allow it).
pub fn node_workload(network: &str, node: &str) -> String {
    format!("{network}.{node}")
}

/// The inverse of [`node_workload`].
pub fn split_node_workload(workload: &str) -> Option<(&str, &str)> {
    workload.split_once('.')
}

/// A node's resource key on its host: `<network>/<node>`.
pub fn node_key(network: &str, node: &str) -> String {
    format!("{network}/{node}")
}
