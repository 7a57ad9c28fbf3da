//! Names of what the network kinds make on a host, shared by the agent that makes them
//! and the TDL plan that shows them. Interface names are at most 15 bytes,
//! so they carry a hash of the network (and node) rather than the names themselves; the
//! hash is FNV-1a, stable across agent versions and restarts (the state file and a
//! restarted agent find the same devices again).

/// FNV-1a, 64 bits.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b'/');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The network's bridge on this host: `wb` + 8 hex digits.
pub fn bridge(network: &str) -> String {
    format!("wb{:08x}", fnv(&[network]) as u32)
}

/// The network's VXLAN device on this host: `wx` + 8 hex digits.
pub fn vxlan(network: &str) -> String {
    format!("wx{:08x}", fnv(&[network]) as u32)
}

/// Host end of a node's veth (a port of the network's bridge): `wn` + 12 hex digits.
pub fn host_veth(network: &str, node: &str) -> String {
    format!("wn{:012x}", fnv(&[network, node]) & 0xffff_ffff_ffff)
}

/// Host end of a request router's veth (steering's router for one origin node): `wr` +
/// 12 hex digits of the steer's key.
pub fn router_veth(steer: &str) -> String {
    format!("wr{:012x}", fnv(&["router", steer]) & 0xffff_ffff_ffff)
}

/// A request router's network namespace name: `<prefix>.router.` + 12 hex digits of the
/// steer's key. The dots cannot occur in a node namespace's name (`<prefix>-<network>-
/// <node>`: network names have none), so a network named `router` is never taken for one.
pub fn router_netns(prefix: &str, steer: &str) -> String {
    format!(
        "{prefix}.router.{:012x}",
        fnv(&["router", steer]) & 0xffff_ffff_ffff
    )
}

/// The node's own interface, inside its namespace.
pub const NODE_IF: &str = "eth0";

/// Default prefix of node namespace names (the agent's `--node-netns-prefix`).
pub const DEFAULT_NETNS_PREFIX: &str = "weft";

/// The node's network namespace name (a file under `/run/netns`):
/// `<prefix>-<network>-<node>`.
pub fn netns(prefix: &str, network: &str, node: &str) -> String {
    format!("{prefix}-{network}-{node}")
}

/// Checks a network or node name: what the TDL allows (`[a-z0-9_-]`, 1..=48), so that
/// it is safe in a file name and a resource key.
pub fn check(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 48 {
        return Err(format!("{what} name {name:?} must be 1 to 48 characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{what} name {name:?} has {c:?}; only a-z, 0-9, '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_differ() {
        for n in [
            bridge("prod"),
            vxlan("prod"),
            host_veth("prod", "web"),
            router_veth("weave/prod/web"),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
        assert_ne!(bridge("prod"), bridge("prod2"));
        assert_ne!(host_veth("prod", "web"), host_veth("prod", "db"));
        // The separator matters: ("ab", "c") is not ("a", "bc").
        assert_ne!(host_veth("ab", "c"), host_veth("a", "bc"));
        assert_eq!(bridge("prod"), bridge("prod"));
        assert_ne!(router_veth("weave/prod/web"), router_veth("weave/prod/db"));
        assert_ne!(
            router_veth("weave/prod/web")[2..],
            host_veth("weave", "prod/web")[2..]
        );
        assert!(router_netns("weft", "weave/prod/web").starts_with("weft.router."));
        // Never a node's namespace, whatever the network and node are called.
        assert!(!netns("weft", "router", "x").starts_with("weft.router."));
    }

    #[test]
    fn names_are_checked() {
        assert!(check("node", "web_1-a").is_ok());
        for bad in ["", "Web", "a/b", "a.b", &"x".repeat(49)] {
            assert!(check("node", bad).is_err(), "{bad:?}");
        }
    }
}
