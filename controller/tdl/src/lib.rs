//! weft's Topology Definition Language (TDL): a network of nodes, the connections between
//! them and the security rules that refine those connections, written in YAML.
//!
//! - [`parse()`]: text to a validated, merged, normalized [`Network`] (serde, so the controller
//!   stores it as JSON), or **every** error of the file ([`Errors`]), sorted by position,
//!   each `file:line:column: what is wrong; how to fix it`.
//! - [`format()`]: the canonical text of a network (`weft tdl fmt`); it parses back to the
//!   same [`Network`].
//! - [`diff()`]: what changed between two networks (`weft tdl diff`).
//! - [`plan()`]: which host gets which node, and what each host would create (`weft tdl plan`).
//! - [`firewall()`]: the effective inbound rules of one node, for the agents' nftables.
//!
//! The language itself (every key, defaults, units) is documented for users in this
//! crate's `README.md`.
//!
//! # Firewall semantics
//!
//! - Inbound traffic to every node is **denied by default**. Outbound is not filtered.
//! - A connection `a -> b` allows its protocol and destination ports from `a` to `b`;
//!   `a <-> b` allows them from `a` to `b` and from `b` to `a`. Replies of allowed flows
//!   are allowed (the agents use connection tracking).
//! - The destination ports are the connection's `port`/`ports`; a tcp/udp connection that
//!   gives none uses the target's own `ports`, and if the target lists none, every port of
//!   the protocol. `icmp` and `any` have no ports.
//! - `security` entries refine a connection, in the direction(s) their key names (which
//!   must be direction(s) of an existing connection): `allow_<proto>[_<port>]` adds an
//!   allow from the initiator to the target, `deny_<proto>[_<port>]` adds a deny. **Deny
//!   wins**: the agents evaluate every deny before any allow ([`firewall()`] returns the
//!   denies first), so `deny_tcp_22` on an `any` connection blocks ssh and nothing else,
//!   and `deny_all` closes the direction whatever else is allowed.
//!
//! # Why saphyr-parser
//!
//! The YAML is read with `saphyr-parser`, the maintained successor of yaml-rust (the
//! saphyr project, YAML 1.2, pure Rust), through its event stream rather than a loader:
//! each event carries its position, so every node *and every mapping key* keeps its line
//! and column; duplicate keys, which loaders silently collapse, stay visible; nesting depth
//! is bounded while the tree is built (no recursion on input); and aliases are refused
//! before they could expand. `serde_yaml` is unmaintained and loses positions after
//! deserialization; `marked-yaml` keeps positions but, on a duplicate key, either keeps one
//! silently or stops loading at the first (a hard error), where TDL reports each and goes on
//! to find the file's other errors.

mod diff;
mod firewall;
mod format;
mod model;
mod parse;
mod plan;
mod units;
mod yaml;

use std::fmt;

pub use diff::{Change, diff};
pub use firewall::{InboundRule, firewall};
pub use format::format;
pub use model::{
    Addressing, Cidr, Command, Connection, Direction, Family, FirewallRule, Network, Node,
    NodeType, Protocol, Security, Verdict, Volume,
};
pub use parse::{MAX_BYTES, MAX_NAME, check_name};
pub use plan::{BandwidthPlan, HostPlan, NodePlan, Plan, PlanError, VxlanPlan, plan};
pub use units::{format_bits, format_bytes, format_cpu, parse_bits, parse_bytes, parse_cpu};
pub use yaml::MAX_DEPTH;

/// One problem in a TDL file: `file:line:column: message` (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in a file, sorted by position; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    pub fn iter(&self) -> std::slice::Iter<'_, Error> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses and validates the TDL `text` read from `file_name` (used in the errors only):
/// defaults and kinds are merged into the nodes, connections and security entries are put
/// in canonical form, ports sorted, sizes in bytes, rates in bits per second.
pub fn parse(file_name: &str, text: &str) -> Result<Network, Errors> {
    parse::parse(file_name, text)
}
