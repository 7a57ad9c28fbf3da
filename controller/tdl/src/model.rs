//! The normalized network: what [`crate::parse()`] returns and the controller stores (JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network, fully merged (defaults and kinds applied), validated and normalized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// `network:`, `[a-z0-9_-]`, at most 48 characters.
    pub name: String,
    /// The VXLAN network identifier; `None`: the controller assigns one.
    pub vni: Option<u32>,
    /// An 802.1Q VLAN id, 1..=4094.
    pub vlan: Option<u16>,
    /// The nodes' interface MTU; `None`: the host's default.
    pub mtu: Option<u16>,
    pub addressing: Addressing,
    /// By name.
    pub nodes: BTreeMap<String, Node>,
    /// Canonical form, sorted by (from, to, direction).
    pub connections: Vec<Connection>,
    /// Canonical form, sorted like the connections; each names an existing connection.
    pub security: Vec<Security>,
}

/// Where the nodes' addresses come from when they give none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressing {
    /// The shard manager's network id whose shards the addresses are allocated from.
    pub shards: String,
    /// Sorted, without duplicates, never empty.
    pub families: Vec<Family>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    Vm,
    #[default]
    Container,
    Service,
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeType::Vm => "vm",
            NodeType::Container => "container",
            NodeType::Service => "service",
        })
    }
}

/// One node after merging `defaults`, its `kind` chain and its own fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    #[serde(rename = "type")]
    pub node_type: NodeType,
    pub image: Option<String>,
    /// CPUs in thousandths (`0.5` is 500).
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    /// The ports the node listens on, sorted, without duplicates.
    pub ports: Vec<u16>,
    pub command: Option<Command>,
    pub volumes: Vec<Volume>,
    /// The hypervisor to place the node on; `None`: the planner picks.
    pub host: Option<String>,
    /// Explicit addresses (with their prefix length); empty: allocated from the shards.
    pub addresses: Vec<Cidr>,
    pub env: BTreeMap<String, String>,
}

/// What a node runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// A string: run by `/bin/sh -c`.
    Shell(String),
    /// A list: program and arguments, no shell.
    Exec(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// Absolute path inside the node.
    pub path: String,
    pub size_bytes: Option<u64>,
}

/// An interface address with its prefix length (host bits allowed: `10.0.0.5/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((a, p)) = s.split_once('/') else {
            return Err(format!(
                "{s:?} has no prefix length; write an address and its prefix, e.g. 10.0.0.5/24 or fd00::5/64"
            ));
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            format!("{a:?} is not an IPv4 or IPv6 address; write e.g. 10.0.0.5/24 or fd00::5/64")
        })?;
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix: u8 = match p.parse() {
            Ok(v) if v <= max && p.bytes().all(|b| b.is_ascii_digit()) => v,
            _ => {
                return Err(format!(
                    "prefix length {p:?} of {s:?} is not a number from 0 to {max}"
                ));
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `<->` (both ends may initiate) or `->` (only `from` initiates, to `to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Both,
    Forward,
}

impl Direction {
    pub fn arrow(self) -> &'static str {
        match self {
            Direction::Both => "<->",
            Direction::Forward => "->",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl Protocol {
    /// Whether the protocol has ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        })
    }
}

/// A connection in canonical form: for [`Direction::Both`], `from < to`; for
/// [`Direction::Forward`], `from` is the initiator (`b <- a` is stored as `a -> b`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub from: String,
    pub to: String,
    pub direction: Direction,
    pub protocol: Protocol,
    /// Destination ports on the target side(s), sorted, without duplicates; empty: the
    /// target's own `ports`, or every port if it lists none (tcp/udp only).
    pub ports: Vec<u16>,
    pub bandwidth_bps: Option<u64>,
}

impl Connection {
    /// `a <-> b` or `a -> b`: the key as [`crate::format()`] writes it.
    pub fn key(&self) -> String {
        pair_key(&self.from, &self.to, self.direction)
    }

    /// (initiator, target) pairs.
    pub fn flows(&self) -> Vec<(&str, &str)> {
        flows(&self.from, &self.to, self.direction)
    }
}

/// Security rules for (one direction of) a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    pub from: String,
    pub to: String,
    pub direction: Direction,
    /// Sorted, without duplicates, never empty.
    pub rules: Vec<FirewallRule>,
}

impl Security {
    pub fn key(&self) -> String {
        pair_key(&self.from, &self.to, self.direction)
    }

    pub fn flows(&self) -> Vec<(&str, &str)> {
        flows(&self.from, &self.to, self.direction)
    }
}

pub(crate) fn pair_key(from: &str, to: &str, d: Direction) -> String {
    format!("{from} {} {to}", d.arrow())
}

fn flows<'a>(from: &'a str, to: &'a str, d: Direction) -> Vec<(&'a str, &'a str)> {
    match d {
        Direction::Both => vec![(from, to), (to, from)],
        Direction::Forward => vec![(from, to)],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Sorted first: denies are evaluated before allows.
    Deny,
    Allow,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// `allow_tcp_5432`, `allow_udp_53`, `allow_tcp` (every TCP port), `allow_icmp`,
/// `allow_all`, `deny_...` likewise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FirewallRule {
    pub verdict: Verdict,
    /// [`Protocol::Any`] is written `all`.
    pub protocol: Protocol,
    /// Only for tcp and udp; `None`: every port.
    pub port: Option<u16>,
}

impl fmt::Display for FirewallRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Any => "all".to_owned(),
            p => p.to_string(),
        };
        write!(f, "{}_{proto}", self.verdict)?;
        if let Some(p) = self.port {
            write!(f, "_{p}")?;
        }
        Ok(())
    }
}

impl FromStr for FirewallRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "write allow_ or deny_ followed by tcp_<port>, udp_<port>, tcp, udp, icmp or all (e.g. allow_tcp_5432, deny_all)";
        let mut parts = s.split('_');
        let verdict = match parts.next() {
            Some("allow") => Verdict::Allow,
            Some("deny") => Verdict::Deny,
            _ => {
                return Err(format!(
                    "firewall_rule {s:?} does not start with allow_ or deny_; {hint}"
                ));
            }
        };
        let protocol = match parts.next() {
            Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some("icmp") => Protocol::Icmp,
            Some("all" | "any") => Protocol::Any,
            Some(p) => {
                return Err(format!(
                    "firewall_rule {s:?}: unknown protocol {p:?}; {hint}"
                ));
            }
            None => return Err(format!("firewall_rule {s:?} names no protocol; {hint}")),
        };
        let port = match parts.next() {
            None => None,
            Some(_) if !protocol.has_ports() => {
                return Err(format!(
                    "firewall_rule {s:?}: {protocol} has no ports; write {verdict}_{} alone",
                    if protocol == Protocol::Any {
                        "all"
                    } else {
                        "icmp"
                    }
                ));
            }
            Some(p) => match p.parse::<u32>() {
                Ok(v @ 1..=65535) if p.bytes().all(|b| b.is_ascii_digit()) => Some(v as u16),
                _ => {
                    return Err(format!(
                        "firewall_rule {s:?}: port {p:?} is not a number from 1 to 65535; {hint}"
                    ));
                }
            },
        };
        if parts.next().is_some() {
            return Err(format!("firewall_rule {s:?} has too many parts; {hint}"));
        }
        Ok(FirewallRule {
            verdict,
            protocol,
            port,
        })
    }
}

impl Serialize for FirewallRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FirewallRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firewall_rules_parse_and_print() {
        for s in [
            "allow_tcp_5432",
            "allow_udp_53",
            "allow_icmp",
            "allow_all",
            "deny_tcp_22",
            "deny_all",
            "allow_tcp",
        ] {
            let r: FirewallRule = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(
            "allow_any".parse::<FirewallRule>().unwrap().to_string(),
            "allow_all"
        );
        for bad in [
            "permit_all",
            "allow",
            "allow_sctp_1",
            "allow_tcp_0",
            "allow_tcp_65536",
            "allow_icmp_8",
            "allow_tcp_22_x",
            "allow_tcp_+22",
            "",
        ] {
            assert!(bad.parse::<FirewallRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.5/24".parse().unwrap();
        assert_eq!(c.family(), Family::Ipv4);
        assert_eq!(c.to_string(), "10.0.0.5/24");
        assert_eq!("fd00::5/64".parse::<Cidr>().unwrap().family(), Family::Ipv6);
        for bad in [
            "10.0.0.5",
            "10.0.0.5/33",
            "fd00::/129",
            "10.0.0/24",
            "x/1",
            "10.0.0.1/+1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
