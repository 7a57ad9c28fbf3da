//! Links, addresses and routes: veth pairs created straight into namespaces, a bridge,
//! addresses (IPv6 with `nodad`), default routes and `tc netem`.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;
use crate::netns::Netns;

/// Where a link lives: the root namespace or a lab namespace.
#[derive(Clone, Copy, Debug)]
pub enum Place<'a> {
    Root,
    Ns(&'a Netns),
}

impl Place<'_> {
    fn netns_arg(&self) -> Option<&str> {
        match self {
            Place::Root => None,
            Place::Ns(ns) => Some(ns.name()),
        }
    }

    /// Runs `ip args...` in this place.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        if let Some(n) = self.netns_arg() {
            c.args(["-n", n]);
        }
        c.args(args);
        cmd::run(&mut c)
    }

    fn label(&self) -> &str {
        self.netns_arg().unwrap_or("root namespace")
    }
}

/// Creates a veth pair with end `a_name` in `a` and `b_name` in `b`, both brought up.
pub fn veth(a: Place<'_>, a_name: &str, b: Place<'_>, b_name: &str) -> Result<()> {
    let mut args = vec!["link", "add", a_name];
    if let Some(n) = a.netns_arg() {
        args.extend(["netns", n]);
    }
    args.extend(["type", "veth", "peer", "name", b_name]);
    if let Some(n) = b.netns_arg() {
        args.extend(["netns", n]);
    }
    Place::Root
        .ip(&args)
        .with_context(|| format!("veth {a_name}@{} <-> {b_name}@{}", a.label(), b.label()))?;
    up(a, a_name)?;
    up(b, b_name)
}

/// Sets link `dev` up.
pub fn up(at: Place<'_>, dev: &str) -> Result<()> {
    at.ip(&["link", "set", dev, "up"])
        .with_context(|| format!("set {dev} up in {}", at.label()))?;
    Ok(())
}

/// Creates bridge `name` (no STP, no multicast snooping) and brings it up.
pub fn bridge(at: Place<'_>, name: &str) -> Result<()> {
    at.ip(&[
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])
    .with_context(|| format!("create bridge {name} in {}", at.label()))?;
    up(at, name)
}

/// Sets the MTU of link `dev`.
pub fn mtu(at: Place<'_>, dev: &str, mtu: u32) -> Result<()> {
    at.ip(&["link", "set", dev, "mtu", &mtu.to_string()])
        .with_context(|| format!("set the MTU of {dev} to {mtu} in {}", at.label()))?;
    Ok(())
}

/// Enslaves `dev` to `bridge`.
pub fn enslave(at: Place<'_>, dev: &str, bridge: &str) -> Result<()> {
    at.ip(&["link", "set", dev, "master", bridge])
        .with_context(|| format!("enslave {dev} to {bridge} in {}", at.label()))?;
    Ok(())
}

/// Adds address `cidr` (IPv4 or IPv6; IPv6 gets `nodad`) to `dev`.
pub fn addr(at: Place<'_>, dev: &str, cidr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.push("nodad");
    }
    at.ip(&args)
        .with_context(|| format!("add {cidr} to {dev} in {}", at.label()))?;
    Ok(())
}

/// Adds a default route via `gateway` (IPv4 or IPv6).
pub fn default_route(at: Place<'_>, gateway: &str) -> Result<()> {
    let fam = if gateway.contains(':') { "-6" } else { "-4" };
    at.ip(&[fam, "route", "add", "default", "via", gateway])
        .with_context(|| format!("default route via {gateway} in {}", at.label()))?;
    Ok(())
}

/// Adds `tc qdisc add dev DEV root netem delay <ms>ms` inside `ns`.
pub fn netem_delay(ns: &Netns, dev: &str, delay_ms: u32) -> Result<()> {
    ns.exec(&[
        "tc",
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "netem",
        "delay",
        &format!("{delay_ms}ms"),
    ])
    .with_context(|| format!("netem delay {delay_ms}ms on {dev}"))?;
    Ok(())
}

/// Whether link `dev` exists in the root namespace.
pub fn root_link_exists(dev: &str) -> bool {
    cmd::output(Command::new("ip").args(["link", "show", "dev", dev]))
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Deletes link `dev` in the root namespace if it exists.
pub fn delete_root_link(dev: &str) {
    if root_link_exists(dev) {
        let _ = cmd::output(Command::new("ip").args(["link", "del", "dev", dev]));
    }
}
