//! The network kinds: TDL networks made real on this host.
//!
//! - `network-segment` (key: network id): the network's bridge and, when the network
//!   spans other hosts, one VXLAN device on it (one VNI per network) whose flood list is
//!   the other hosts' underlay addresses.
//! - `network-node` (key: `<network>/<node>`): a named network namespace
//!   (`<prefix>-<network>-<node>` under `/run/netns`) with `eth0`, the peer of a veth
//!   whose host end is a port of the network's bridge, and the node's addresses and
//!   default routes.
//!
//! Everything is netlink, many requests in flight at once; namespaces are made by worker
//! threads ([`namespaces`]). The segment reconciler is registered before the node
//! reconciler, so a node's bridge exists when the node is made.
//!
//! Parts of a node spec this agent cannot make yet (firewall, egress limits, what runs in
//! the node) make the node's report FAILED with a message naming them: never silently
//! ignored.

pub mod cow;
pub mod links;
pub use agent_common::netnames as names;
pub mod lag;
pub mod namespaces;
mod node;
pub mod relay;
mod segment;
pub mod spec;
pub mod volumes;

#[cfg(test)]
mod lab;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rtnetlink::Handle;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::control::state::{Section, StateError, StateFile};
use crate::realize::netns::NetnsConnections;

pub use node::NodeReconciler;
pub use segment::SegmentReconciler;

/// Settings of the network kinds.
#[derive(Debug, Clone)]
pub struct NetworksConfig {
    /// Prefix of the node namespaces' names (`--node-netns-prefix`).
    pub netns_prefix: String,
    /// Namespaces made at once.
    pub workers: usize,
    /// Netlink requests in flight at once.
    pub in_flight: usize,
}

impl Default for NetworksConfig {
    fn default() -> Self {
        Self {
            netns_prefix: "weft".into(),
            workers: 4,
            in_flight: 64,
        }
    }
}

/// A managed segment: the names it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SegmentObjects {
    bridge: String,
    vxlan: Option<String>,
}

/// A managed node: the names it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeObjects {
    netns: PathBuf,
    host_veth: String,
}

/// What both network reconcilers share: the agent-namespace netlink connection, the
/// connections into node namespaces, and which objects are weft's.
pub struct Networks {
    config: NetworksConfig,
    host: Handle,
    /// Keeps the connection of `host` running (stopped on drop).
    _host_conn: crate::realize::netns::NetnsHandle,
    conns: NetnsConnections,
    segments: Mutex<BTreeMap<String, SegmentObjects>>,
    nodes: Mutex<BTreeMap<String, NodeObjects>>,
    state: Option<Arc<StateFile>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Networks {
    /// Must be called on the runtime (the netlink connection runs on it). `host_netns`:
    /// the namespace where bridges and the nodes' host-side veths go (a netns file);
    /// `None` is the agent's own.
    pub async fn new(
        config: NetworksConfig,
        state: Option<Arc<StateFile>>,
        host_netns: Option<&std::path::Path>,
    ) -> Result<Arc<Self>, NetworksError> {
        let host_conn = crate::realize::netns::connect(host_netns)
            .await
            .map_err(|e| NetworksError::Netlink(std::io::Error::other(e.to_string())))?;
        let read = |kind: &str| -> Result<BTreeMap<String, serde_json::Value>, StateError> {
            Ok(state
                .as_ref()
                .and_then(|s| s.section(kind))
                .map(|s| s.objects)
                .unwrap_or_default())
        };
        let mut segments = BTreeMap::new();
        for (k, v) in read(weft_proto::kinds::NETWORK_SEGMENT)? {
            let o: SegmentObjects = serde_json::from_value(v).map_err(|e| {
                NetworksError::State(format!("network-segment {k:?} in the state file: {e}"))
            })?;
            segments.insert(k, o);
        }
        let mut nodes = BTreeMap::new();
        for (k, v) in read(weft_proto::kinds::NETWORK_NODE)? {
            let o: NodeObjects = serde_json::from_value(v).map_err(|e| {
                NetworksError::State(format!("network-node {k:?} in the state file: {e}"))
            })?;
            nodes.insert(k, o);
        }
        if let Err(e) = namespaces::prepare_dir() {
            warn!("{e}; node namespaces may not be visible outside the agent");
        }
        Ok(Arc::new(Self {
            config,
            host: host_conn.handle.clone(),
            _host_conn: host_conn,
            conns: NetnsConnections::default(),
            segments: Mutex::new(segments),
            nodes: Mutex::new(nodes),
            state,
        }))
    }

    async fn save(&self, kind: &'static str) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let objects: BTreeMap<String, serde_json::Value> =
            if kind == weft_proto::kinds::NETWORK_SEGMENT {
                lock(&self.segments)
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
                    .collect()
            } else {
                lock(&self.nodes)
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
                    .collect()
            };
        let section = Section {
            version: 1,
            objects,
        };
        match tokio::task::spawn_blocking(move || state.save(kind, section)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("{e}"),
            Err(e) => warn!("saving the state file: {e}"),
        }
    }

    /// Node namespaces weft manages now.
    pub fn node_namespaces(&self) -> Vec<PathBuf> {
        lock(&self.nodes)
            .values()
            .map(|n| n.netns.clone())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("opening rtnetlink: {0}")]
    Netlink(std::io::Error),
    #[error(transparent)]
    StateFile(#[from] StateError),
    #[error("{0}; fix or remove the state file")]
    State(String),
}
