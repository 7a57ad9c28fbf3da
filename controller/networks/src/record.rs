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
}

impl NetworkRecord {
    /// Hosts the network is on, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self.placement.values().cloned().collect();
        h.sort();
        h.dedup();
        h
    }
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
