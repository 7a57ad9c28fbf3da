//! A weave as the controller keeps it (`weaves/<id>` in the store, JSON).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One route: new connections to `port` of the environment's node `node` go to the
/// weave's copy of it; with a `header`, only the HTTP/1.1 requests that carry it (equal to
/// `header_value`; empty: any value) do, the others go to the environment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WeaveRoute {
    pub node: String,
    pub port: u16,
    /// Empty: the whole port (every connection).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header_value: String,
}

impl WeaveRoute {
    /// A route of the whole port.
    pub fn port(node: &str, port: u16) -> Self {
        Self {
            node: node.to_owned(),
            port,
            header: String::new(),
            header_value: String::new(),
        }
    }

    pub fn by_request(&self) -> bool {
        !self.header.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeaveRecord {
    /// Also its network's id.
    pub id: String,
    /// The source network it branches from.
    pub environment: String,
    /// The point of history asked for; 0: the time it was made.
    pub at_unix_ns: u64,
    /// The environment's revision it was made from, and when that revision was applied.
    pub environment_revision: u64,
    pub revision_applied_unix_ns: u64,
    pub created_unix_ns: u64,
    /// Node -> the environment's snapshot its volumes were cloned from.
    pub snapshots: BTreeMap<String, String>,
    /// Node -> host (the host of the environment's node of that name).
    pub placement: BTreeMap<String, String>,
    pub routes: BTreeSet<WeaveRoute>,
    /// Every new connection to the environment's nodes goes to the weave.
    pub active: bool,
    /// Deactivated: its steers stay (connections in flight are not reset), steering
    /// nothing new, until a route or an activation.
    #[serde(default)]
    pub paused: bool,
    /// Environment nodes whose steer this weave holds (from its first route or
    /// activation of the node until the weave is deleted).
    pub steered: BTreeSet<String>,
    /// From the create call to every node applied (0: not yet).
    pub ready_seconds: f64,
    /// Why it is degraded (empty: it is not).
    #[serde(default)]
    pub error: String,
}

impl WeaveRecord {
    /// The ports routed to the weave's copy of `node` (whole or by request), sorted.
    pub fn ports_of(&self, node: &str) -> Vec<u32> {
        let mut ports: Vec<u32> = self
            .routes
            .iter()
            .filter(|r| r.node == node)
            .map(|r| u32::from(r.port))
            .collect();
        ports.dedup();
        ports
    }

    /// The routes of `node` by request: (port, header, value).
    pub fn request_rules_of(&self, node: &str) -> Vec<(u16, String, String)> {
        self.routes
            .iter()
            .filter(|r| r.node == node && r.by_request())
            .map(|r| (r.port, r.header.clone(), r.header_value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_s_routed_ports_are_its_routes_only() {
        let r = |node: &str, port| WeaveRoute::port(node, port);
        let h = |node: &str, port, value: &str| WeaveRoute {
            header: "x-branch".into(),
            header_value: value.into(),
            ..WeaveRoute::port(node, port)
        };
        let w = WeaveRecord {
            id: "shop-w1".into(),
            environment: "shop".into(),
            at_unix_ns: 0,
            environment_revision: 1,
            revision_applied_unix_ns: 1,
            created_unix_ns: 1,
            snapshots: BTreeMap::new(),
            placement: BTreeMap::new(),
            routes: [
                r("web", 443),
                r("db", 5432),
                h("web", 80, "b"),
                h("web", 80, "a"),
            ]
            .into(),
            active: false,
            paused: false,
            steered: BTreeSet::new(),
            ready_seconds: 0.0,
            error: String::new(),
        };
        assert_eq!(w.ports_of("web"), [80, 443]);
        assert_eq!(w.ports_of("db"), [5432]);
        assert!(w.ports_of("tool").is_empty());
        assert_eq!(
            w.request_rules_of("web"),
            [
                (80, "x-branch".to_string(), "a".to_string()),
                (80, "x-branch".to_string(), "b".to_string())
            ]
        );
        assert!(w.request_rules_of("db").is_empty());
        // Kept as JSON and read back the same.
        let again: WeaveRecord = serde_json::from_slice(&serde_json::to_vec(&w).unwrap()).unwrap();
        assert_eq!(again, w);
    }
}
