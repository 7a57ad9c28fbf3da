//! What changed between two networks (`weft tdl diff`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Connection, Network, Node};

/// One difference. Connections and security entries are identified by their canonical key
/// (`a <-> b`, `a -> b`): turning `a -> b` into `a <-> b` is a removal and an addition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A network-level field: `network`, `vni`, `vlan`, `mtu`, `addressing.shards`,
    /// `addressing.families`; values as written in TDL, `-` for none.
    Network {
        field: String,
        old: String,
        new: String,
    },
    NodeAdded {
        node: String,
    },
    NodeRemoved {
        node: String,
    },
    /// The names of the fields that differ (`type`, `image`, `cpu`, ...).
    NodeChanged {
        node: String,
        fields: Vec<String>,
    },
    ConnectionAdded {
        connection: String,
    },
    ConnectionRemoved {
        connection: String,
    },
    ConnectionChanged {
        connection: String,
        fields: Vec<String>,
    },
    /// A firewall rule added to the security entry `security` (created if need be).
    RuleAdded {
        security: String,
        rule: String,
    },
    RuleRemoved {
        security: String,
        rule: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Network { field, old, new } => write!(f, "~ {field}: {old} -> {new}"),
            Change::NodeAdded { node } => write!(f, "+ node {node}"),
            Change::NodeRemoved { node } => write!(f, "- node {node}"),
            Change::NodeChanged { node, fields } => {
                write!(f, "~ node {node}: {}", fields.join(", "))
            }
            Change::ConnectionAdded { connection } => write!(f, "+ connection {connection}"),
            Change::ConnectionRemoved { connection } => write!(f, "- connection {connection}"),
            Change::ConnectionChanged { connection, fields } => {
                write!(f, "~ connection {connection}: {}", fields.join(", "))
            }
            Change::RuleAdded { security, rule } => write!(f, "+ rule {security}: {rule}"),
            Change::RuleRemoved { security, rule } => write!(f, "- rule {security}: {rule}"),
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn node_fields(a: &Node, b: &Node) -> Vec<String> {
    let mut f = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            f.push(name.to_owned());
        }
    };
    check("type", a.node_type != b.node_type);
    check("image", a.image != b.image);
    check("cpu", a.cpu_millis != b.cpu_millis);
    check("memory", a.memory_bytes != b.memory_bytes);
    check("ports", a.ports != b.ports);
    check("command", a.command != b.command);
    check("volumes", a.volumes != b.volumes);
    check("host", a.host != b.host);
    check("addresses", a.addresses != b.addresses);
    check("env", a.env != b.env);
    f
}

fn connection_fields(a: &Connection, b: &Connection) -> Vec<String> {
    let mut f = Vec::new();
    if a.protocol != b.protocol {
        f.push("protocol".to_owned());
    }
    if a.ports != b.ports {
        f.push("ports".to_owned());
    }
    if a.bandwidth_bps != b.bandwidth_bps {
        f.push("bandwidth".to_owned());
    }
    f
}

/// The changes that turn `old` into `new`, in a stable order: network fields, nodes,
/// connections, rules (each sorted by name or key).
pub fn diff(old: &Network, new: &Network) -> Vec<Change> {
    let mut out = Vec::new();
    let mut net = |field: &str, o: String, n: String| {
        if o != n {
            out.push(Change::Network {
                field: field.to_owned(),
                old: o,
                new: n,
            });
        }
    };
    net("network", old.name.clone(), new.name.clone());
    net("vni", opt(&old.vni), opt(&new.vni));
    net("vlan", opt(&old.vlan), opt(&new.vlan));
    net("mtu", opt(&old.mtu), opt(&new.mtu));
    net(
        "addressing.shards",
        old.addressing.shards.clone(),
        new.addressing.shards.clone(),
    );
    let fams = |n: &Network| {
        let v: Vec<String> = n
            .addressing
            .families
            .iter()
            .map(|f| f.to_string())
            .collect();
        format!("[{}]", v.join(", "))
    };
    net("addressing.families", fams(old), fams(new));

    for (name, n) in &new.nodes {
        match old.nodes.get(name) {
            None => out.push(Change::NodeAdded { node: name.clone() }),
            Some(o) => {
                let fields = node_fields(o, n);
                if !fields.is_empty() {
                    out.push(Change::NodeChanged {
                        node: name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for name in old.nodes.keys().filter(|n| !new.nodes.contains_key(*n)) {
        out.push(Change::NodeRemoved { node: name.clone() });
    }

    let olds: BTreeMap<String, &Connection> =
        old.connections.iter().map(|c| (c.key(), c)).collect();
    let news: BTreeMap<String, &Connection> =
        new.connections.iter().map(|c| (c.key(), c)).collect();
    for (k, c) in &news {
        match olds.get(k) {
            None => out.push(Change::ConnectionAdded {
                connection: k.clone(),
            }),
            Some(o) => {
                let fields = connection_fields(o, c);
                if !fields.is_empty() {
                    out.push(Change::ConnectionChanged {
                        connection: k.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for k in olds.keys().filter(|k| !news.contains_key(*k)) {
        out.push(Change::ConnectionRemoved {
            connection: k.clone(),
        });
    }

    let rules = |n: &Network| -> BTreeSet<(String, String)> {
        n.security
            .iter()
            .flat_map(|s| s.rules.iter().map(move |r| (s.key(), r.to_string())))
            .collect()
    };
    let (ro, rn) = (rules(old), rules(new));
    for (security, rule) in rn.difference(&ro) {
        out.push(Change::RuleAdded {
            security: security.clone(),
            rule: rule.clone(),
        });
    }
    for (security, rule) in ro.difference(&rn) {
        out.push(Change::RuleRemoved {
            security: security.clone(),
            rule: rule.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn reports_each_kind_of_change() {
        let a = parse(
            "a.tdl",
            "network: n\nvni: 10\nnodes:\n  web: {image: nginx, cpu: 1}\n  db: {}\n  old: {}\nconnections:\n  web -> db: {port: 5432}\n  web -> old: {}\nsecurity:\n  web -> db: {firewall_rule: allow_tcp_5432}\n",
        )
        .unwrap();
        let b = parse(
            "b.tdl",
            "network: n\nvni: 11\nnodes:\n  web: {image: nginx, cpu: 2, memory: 1GiB}\n  db: {}\n  new: {}\nconnections:\n  web -> db: {port: 5433, bandwidth: 1gbit}\n  web <-> new: {}\nsecurity:\n  web -> db: {firewall_rule: [allow_tcp_5433, deny_tcp_22]}\n",
        )
        .unwrap();
        let shown: Vec<String> = diff(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "~ vni: 10 -> 11",
                "+ node new",
                "~ node web: cpu, memory",
                "- node old",
                "+ connection new <-> web",
                "~ connection web -> db: ports, bandwidth",
                "- connection web -> old",
                "+ rule web -> db: allow_tcp_5433",
                "+ rule web -> db: deny_tcp_22",
                "- rule web -> db: allow_tcp_5432",
            ]
        );
        assert!(diff(&a, &a).is_empty());
        assert!(diff(&b, &b).is_empty());
    }
}
