//! The effective inbound rules of a node (see the crate docs, "Firewall semantics").

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Network, Protocol, Verdict};

/// One inbound rule of a node: traffic from `source` (a node of the network) with
/// `protocol` to one of `ports` (empty: every port, and always empty for icmp and any).
/// Rules are evaluated in order (denies first); what matches none is dropped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InboundRule {
    pub verdict: Verdict,
    pub source: String,
    pub protocol: Protocol,
    pub ports: Vec<u16>,
}

impl fmt::Display for InboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} from {}", self.verdict, self.protocol, self.source)?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            write!(f, " to port {}", ports.join(","))?;
        }
        Ok(())
    }
}

/// The inbound rules of `node` (empty for a node that is not in the network, or that no
/// connection targets: everything inbound is denied). Denies come first, then allows; for
/// one (verdict, source, protocol) the ports are merged into one rule.
pub fn firewall(net: &Network, node: &str) -> Vec<InboundRule> {
    let Some(target) = net.nodes.get(node) else {
        return Vec::new();
    };
    // (verdict, source, protocol) -> ports, `None` meaning every port.
    let mut acc: BTreeMap<(Verdict, String, Protocol), Option<Vec<u16>>> = BTreeMap::new();
    let mut add = |verdict, source: &str, protocol: Protocol, ports: Option<Vec<u16>>| {
        let entry = acc
            .entry((verdict, source.to_owned(), protocol))
            .or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), ports) {
            (Some(have), Some(more)) => have.extend(more),
            _ => *entry = None,
        }
    };
    for c in &net.connections {
        for (from, to) in c.flows() {
            if to != node {
                continue;
            }
            let ports = if !c.protocol.has_ports() {
                None
            } else if !c.ports.is_empty() {
                Some(c.ports.clone())
            } else if !target.ports.is_empty() {
                Some(target.ports.clone())
            } else {
                None
            };
            add(Verdict::Allow, from, c.protocol, ports);
        }
    }
    for s in &net.security {
        for (from, to) in s.flows() {
            if to != node {
                continue;
            }
            for r in &s.rules {
                add(r.verdict, from, r.protocol, r.port.map(|p| vec![p]));
            }
        }
    }
    acc.into_iter()
        .map(|((verdict, source, protocol), ports)| {
            let mut ports = ports.unwrap_or_default();
            ports.sort_unstable();
            ports.dedup();
            InboundRule {
                verdict,
                source,
                protocol,
                ports,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn rules(text: &str, node: &str) -> Vec<String> {
        let net = parse("t.tdl", text).unwrap_or_else(|e| panic!("{e}"));
        firewall(&net, node)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const BASE: &str =
        "network: n\nnodes:\n  web: {ports: [80, 443]}\n  db: {ports: [5432]}\n  cache: {}\n";

    #[test]
    fn spec_example_allows_both_ways_on_the_port() {
        let t = format!(
            "{BASE}connections:\n  web <-> db:\n    port: 5432\nsecurity:\n  web <-> db:\n    firewall_rule: allow_tcp_5432\n"
        );
        assert_eq!(rules(&t, "db"), ["allow tcp from web to port 5432"]);
        assert_eq!(rules(&t, "web"), ["allow tcp from db to port 5432"]);
        assert!(
            rules(&t, "cache").is_empty(),
            "default deny: nothing targets cache"
        );
        assert!(rules(&t, "nope").is_empty());
    }

    #[test]
    fn one_way_allows_the_target_only() {
        let t =
            format!("{BASE}connections:\n  web -> db: {{}}\n  cache <- web: {{protocol: udp}}\n");
        // No port given: the target's own ports; cache lists none: every udp port.
        assert_eq!(rules(&t, "db"), ["allow tcp from web to port 5432"]);
        assert_eq!(rules(&t, "cache"), ["allow udp from web"]);
        assert!(rules(&t, "web").is_empty());
    }

    #[test]
    fn deny_comes_first_and_allow_adds() {
        let t = format!(
            "{BASE}connections:\n  web <-> db: {{protocol: any}}\nsecurity:\n  web -> db:\n    firewall_rule: [deny_tcp_22, allow_udp_53, deny_tcp_23]\n"
        );
        let net = parse("t.tdl", &t).unwrap();
        let db = firewall(&net, "db");
        assert_eq!(
            db.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "deny tcp from web to port 22,23",
                "allow udp from web to port 53",
                "allow any from web"
            ]
        );
        assert_eq!(db[0].verdict, Verdict::Deny);
        // The rule names web -> db only: db -> web is the connection's allow alone.
        assert_eq!(rules(&t, "web"), ["allow any from db"]);
    }

    #[test]
    fn a_port_list_and_an_all_ports_rule_merge_to_all_ports() {
        let t = format!(
            "{BASE}connections:\n  web -> db: {{ports: [5432, 5433]}}\nsecurity:\n  web -> db:\n    firewall_rule: [allow_tcp, allow_icmp, deny_all]\n"
        );
        assert_eq!(
            rules(&t, "db"),
            [
                "deny any from web",
                "allow tcp from web",
                "allow icmp from web"
            ]
        );
    }
}
