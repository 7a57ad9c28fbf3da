//! weft's node firewall (issue 11, items 2 and 4): an nftables table inside each node's
//! network namespace, written, read back and watched over nf_tables' own netlink
//! interface.
//!
//! # What is in the kernel
//!
//! One table, `inet weft`, with one chain:
//!
//! ```text
//! table inet weft {
//!     chain input {
//!         type filter hook input priority 0; policy drop;
//!         ct state established,related accept      # replies to the node's own traffic
//!         iif "lo" meta mark != 0x57460001 accept  # loopback (but see ROUTED_MARK)
//!         icmpv6 type 133-136 accept               # router/neighbour discovery: IPv6 works
//!         ...the ruleset's rules, in order (first match wins)...
//!         meta mark 0x57460001 meta l4proto tcp reject with tcp reset  # see ROUTED_MARK
//!     }
//! }
//! ```
//!
//! The built-in rules come first so that no user `drop` rule can cut the replies to the
//! node's outbound connections, loopback, or IPv6 neighbour discovery; everything no rule
//! accepts is dropped by the chain's policy, but for a relay's routed connection, which
//! the last rule refuses with a reset so that the relay answers its client at once. Outbound and forwarded traffic are not
//! touched (there are no output or forward chains). An [`InboundRule`] with several
//! sources and ports becomes one kernel rule per (source, port range) pair, in order;
//! `Icmp` without a source becomes an ICMP rule for IPv4 and an ICMPv6 rule for IPv6.
//! Each kernel rule carries an nftables comment naming the rule it comes from.
//!
//! # Operations
//!
//! - [`apply`] / [`NamespaceFirewall::apply`]: read the table; if it differs from the
//!   ruleset, rebuild it in **one** nf_tables batch (add table, add chain with its policy,
//!   flush the chain, add every rule; or delete and recreate the table when something
//!   foreign is in it), conditional on the generation id it read
//!   (`NFNL_BATCH_GENID`), so a concurrent change makes it read and try again. Applying
//!   the ruleset the table already holds writes nothing (no events, same rule handles).
//! - [`read`] / [`NamespaceFirewall::read`] and [`drift`]: the table decoded back into
//!   rule kinds and compared exactly; a dumped rule counts as ours only if re-encoding
//!   what it decodes to gives exactly the kernel's expressions.
//! - [`Watcher`]: nf_tables events of the namespace as they arrive. Events caused by our
//!   own batches carry our socket's netlink port id and are marked [`Event::own`], so a
//!   repair does not trigger another one.
//! - [`NamespaceFirewall`] keeps one socket per namespace: the `setns` thread runs once,
//!   when it is opened.
//!
//! # Limits
//!
//! - `read` looks at the table's flags, chains and rules, not at sets, maps, objects or
//!   flowtables someone might add to `inet weft` (they cannot hook traffic by themselves;
//!   a rule using one is foreign and reported).
//! - When something foreign is in the table (another chain, our chain with another hook),
//!   `apply` deletes and recreates the table in its one batch; otherwise it keeps the base
//!   chain and flushes and refills it, which is what a repair normally does.
//! - Several sources times several port ranges give that many kernel rules (no anonymous
//!   sets): fine for node rulesets of tens of rules.
//!
//! # Why hand-written nfnetlink
//!
//! The messages are written with this crate's own few hundred lines over a plain
//! `NETLINK_NETFILTER` socket (`libc` only), not with `rustables`, `nf_tables` or
//! `netlink-bindings`. They would add a dependency tree for a handful of message types,
//! and `apply`/`read` need things they make awkward or leave out: the batch's generation
//! id, our socket's port id (to tell our own events apart), acks for every message of a
//! batch mapped back to the rule that failed, and an exact decoding of dumped
//! expressions (every attribute of `meta`, `ct`, `payload`, `cmp`, `bitwise`, `range` and
//! `immediate`) to compare with. No libnftnl, and the `nft` binary is never run (the tests
//! use it only to inject drift and to cross-check).

mod error;
mod expr;
mod firewall;
mod model;
mod netns;
mod nl;
mod watch;

use std::path::Path;

pub use error::{Error, Result};
pub use expr::{Atom, Family, RuleKind, same_rules};
pub use firewall::{
    ApplyReport, BaseChain, CHAIN, LiveRules, NamespaceFirewall, NamespaceSockets, Observed,
    ObservedChain, ObservedRule, ObservedTable, TABLE, decode_rule, drift,
};
pub use model::{InboundRule, ParseError, PortRange, Prefix, Protocol, Ruleset, Verdict};
pub use watch::{Event, EventKind, Watcher};

/// The mark (`SO_MARK`) of the connections a relay in the node's namespace makes on a
/// client's behalf, from the client's address: the agent's request router
/// (`IP_TRANSPARENT`). Such a connection arrives over `lo`, but the built-in loopback
/// rule does not take it: the node's rules judge it by the client's address, as they
/// would judge the client's own connection. Without this the router would let any
/// client reach a routed port, whatever the node's rules say. One the rules do not
/// accept is refused with a TCP reset (the last built-in rule), not dropped: the router
/// then fails its client at once instead of after its connect timeout (the namespace
/// needs `net.ipv4.fwmark_reflect=1` and `net.ipv6.fwmark_reflect=1` for the reset to
/// carry the mark, and so reach the router over `lo`). "WF" and 1.
pub const ROUTED_MARK: u32 = 0x5746_0001;

/// Makes table `inet weft` in `netns` (a namespace file; `None`: the current namespace)
/// exactly `ruleset`. Opens a socket for this one call: keep a [`NamespaceFirewall`] to
/// apply repeatedly.
pub fn apply(netns: Option<&Path>, ruleset: &Ruleset) -> Result<ApplyReport> {
    NamespaceFirewall::open(netns)?.apply(ruleset)
}

/// What is in table `inet weft` in `netns` now.
pub fn read(netns: Option<&Path>) -> Result<Observed> {
    NamespaceFirewall::open(netns)?.read()
}
