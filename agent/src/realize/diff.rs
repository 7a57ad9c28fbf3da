//! The pure part of the realizer: what a device should look like (desired addresses and
//! gateways), what it looks like (read over netlink), and the operations that turn one
//! into the other. Nothing here touches a socket.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// An interface address with its prefix length, e.g. `198.18.128.5/22` (the shared
/// [`agent_common::net::IfAddr`]; its parse error names the text).
pub use agent_common::net::{IfAddr as Cidr, ParseError as CidrError};

/// Link-local addresses belong to the kernel and the workload: never touched.
pub fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// One address the controller wants on a device, with the default gateway of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DesiredAddress {
    pub cidr: Cidr,
    pub gateway: Option<IpAddr>,
}

/// What the device holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub addresses: Vec<Cidr>,
    pub link_up: bool,
    /// Gateways of the default routes (main table) through the device.
    pub default_gateways: Vec<IpAddr>,
}

/// Which addresses on a device are weft's to change. Everything else (link-local, the
/// workloads file's static addresses, anything outside the ranges the controller ever
/// sent) is left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Managed {
    /// Addresses that appeared in a desired state.
    pub seen: BTreeSet<IpAddr>,
    /// Shard ranges: the networks of desired addresses (`198.18.128.5/22` -> `198.18.128.0/22`).
    pub ranges: BTreeSet<Cidr>,
    /// Static addresses from the workloads file.
    pub statics: BTreeSet<IpAddr>,
}

impl Managed {
    pub fn with_statics(statics: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            statics: statics.into_iter().collect(),
            ..Default::default()
        }
    }

    pub fn owns(&self, ip: &IpAddr) -> bool {
        !is_link_local(ip)
            && !self.statics.contains(ip)
            && (self.seen.contains(ip) || self.ranges.iter().any(|r| r.contains(ip)))
    }

    /// Adds what a desired state names (before planning against it).
    pub fn learn(&mut self, desired: &[DesiredAddress]) {
        for d in desired {
            self.seen.insert(d.cidr.addr);
            self.ranges.insert(d.cidr.network());
        }
    }

    /// After a successful apply: forget what is neither desired nor still on the device,
    /// so the memory stays as small as the device.
    pub fn prune(&mut self, desired: &[DesiredAddress], present: &[Cidr]) {
        let keep_ip = |ip: &IpAddr| {
            desired.iter().any(|d| d.cidr.addr == *ip) || present.iter().any(|c| c.addr == *ip)
        };
        self.seen.retain(keep_ip);
        self.ranges.retain(|r| {
            desired
                .iter()
                .any(|d| d.cidr.prefix == r.prefix && r.contains(&d.cidr.addr))
                || present
                    .iter()
                    .any(|c| r.contains(&c.addr) && !self.statics.contains(&c.addr))
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// Add or replace the default route of the gateway's family.
    Replace(IpAddr),
    /// Remove the default route through this gateway.
    Delete(IpAddr),
}

/// The netlink operations that bring a device to its desired state, in order: link down
/// (if re-addressing), route deletions, address removals, additions, link up, route
/// replacements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<Cidr>,
    pub add: Vec<Cidr>,
    pub routes: Vec<RouteOp>,
    /// Set the link up (it is down, or re-addressing takes it down).
    pub link_up: bool,
    /// An address is replaced by another: the link goes down for the swap.
    pub readdress: bool,
}

impl Plan {
    /// Netlink writes this plan makes on the device (a re-address counts down and up).
    pub fn changes(&self) -> usize {
        self.remove.len()
            + self.add.len()
            + self.routes.len()
            + usize::from(self.link_up)
            + usize::from(self.readdress)
    }

    pub fn is_empty(&self) -> bool {
        self.changes() == 0
    }
}

/// Desired vs current. `managed` must already have learnt `desired`.
pub fn plan(desired: &[DesiredAddress], current: &Current, managed: &Managed) -> Plan {
    let wanted: BTreeSet<Cidr> = desired.iter().map(|d| d.cidr).collect();
    let remove: Vec<Cidr> = current
        .addresses
        .iter()
        .filter(|c| !wanted.contains(c) && managed.owns(&c.addr))
        .copied()
        .collect();
    let add: Vec<Cidr> = wanted
        .iter()
        .filter(|w| !current.addresses.contains(w))
        .copied()
        .collect();
    let readdress = !remove.is_empty() && !add.is_empty();

    let mut routes = Vec::new();
    for v4 in [true, false] {
        let family = |ip: &IpAddr| ip.is_ipv4() == v4;
        let gateway = desired
            .iter()
            .filter(|d| family(&d.cidr.addr))
            .find_map(|d| d.gateway);
        match gateway {
            // Taking the link down drops its routes: re-addressing always sets it again.
            Some(g) if readdress || !current.default_gateways.contains(&g) => {
                routes.push(RouteOp::Replace(g));
            }
            Some(_) => {}
            None => routes.extend(
                current
                    .default_gateways
                    .iter()
                    .filter(|g| family(g) && managed.ranges.iter().any(|r| r.contains(g)))
                    .map(|g| RouteOp::Delete(*g)),
            ),
        }
    }
    Plan {
        remove,
        add,
        routes,
        link_up: !current.link_up || readdress,
        readdress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn d(cidr: &str, gw: Option<&str>) -> DesiredAddress {
        DesiredAddress {
            cidr: c(cidr),
            gateway: gw.map(ip),
        }
    }
    fn managed_for(desired: &[DesiredAddress]) -> Managed {
        let mut m = Managed::with_statics([ip("198.18.128.200")]);
        m.learn(desired);
        m
    }

    #[test]
    fn fresh_device_gets_addresses_link_up_and_gateway() {
        let want = [
            d("198.18.128.5/22", Some("198.18.128.1")),
            d("fd00:80::5/64", None),
        ];
        let cur = Current {
            addresses: vec![c("fe80::1/64")],
            link_up: false,
            default_gateways: vec![],
        };
        let p = plan(&want, &cur, &managed_for(&want));
        assert_eq!(p.add, vec![c("198.18.128.5/22"), c("fd00:80::5/64")]);
        assert!(p.remove.is_empty(), "link-local stays");
        assert!(p.link_up && !p.readdress);
        assert_eq!(p.routes, vec![RouteOp::Replace(ip("198.18.128.1"))]);
    }

    #[test]
    fn same_state_again_plans_nothing() {
        let want = [d("198.18.128.5/22", Some("198.18.128.1"))];
        let cur = Current {
            addresses: vec![
                c("198.18.128.5/22"),
                c("198.18.128.200/22"),
                c("fe80::1/64"),
            ],
            link_up: true,
            default_gateways: vec![ip("198.18.128.1")],
        };
        let p = plan(&want, &cur, &managed_for(&want));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.changes(), 0);
    }

    #[test]
    fn unmanaged_static_and_link_local_addresses_are_left_alone() {
        let want = [d("198.18.128.5/22", None)];
        let cur = Current {
            addresses: vec![
                c("198.18.128.200/22"), // static in the workloads file, inside the shard
                c("198.19.7.7/24"),     // outside every range the controller sent
                c("169.254.1.1/16"),
                c("fe80::1/64"),
                c("198.18.129.9/22"), // inside the shard range, not desired: weft's
            ],
            link_up: true,
            default_gateways: vec![ip("198.19.7.1")],
        };
        let p = plan(&want, &cur, &managed_for(&want));
        assert_eq!(p.remove, vec![c("198.18.129.9/22")]);
        assert_eq!(p.add, vec![c("198.18.128.5/22")]);
        assert!(
            p.routes.is_empty(),
            "a default route outside weft's ranges stays: {p:?}"
        );
    }

    #[test]
    fn migration_to_another_shard_is_a_readdress_with_route_replaced() {
        let before = [d("198.18.128.5/22", Some("198.18.128.1"))];
        let mut m = managed_for(&before);
        let after = [d("198.18.132.9/22", Some("198.18.132.1"))];
        m.learn(&after);
        let cur = Current {
            addresses: vec![c("198.18.128.5/22")],
            link_up: true,
            default_gateways: vec![ip("198.18.128.1")],
        };
        let p = plan(&after, &cur, &m);
        assert!(p.readdress && p.link_up);
        assert_eq!(p.remove, vec![c("198.18.128.5/22")]);
        assert_eq!(p.add, vec![c("198.18.132.9/22")]);
        assert_eq!(p.routes, vec![RouteOp::Replace(ip("198.18.132.1"))]);
        assert_eq!(p.changes(), 5);
    }

    #[test]
    fn readdress_sets_the_route_even_if_the_gateway_is_unchanged() {
        let before = [d("198.18.128.5/22", Some("198.18.128.1"))];
        let after = [d("198.18.128.6/22", Some("198.18.128.1"))];
        let mut m = managed_for(&before);
        m.learn(&after);
        let cur = Current {
            addresses: vec![c("198.18.128.5/22")],
            link_up: true,
            default_gateways: vec![ip("198.18.128.1")],
        };
        let p = plan(&after, &cur, &m);
        assert!(p.readdress);
        assert_eq!(p.routes, vec![RouteOp::Replace(ip("198.18.128.1"))]);
    }

    #[test]
    fn emptied_desired_state_removes_managed_addresses_and_their_route() {
        let before = [d("198.18.128.5/22", Some("198.18.128.1"))];
        let m = managed_for(&before);
        let cur = Current {
            addresses: vec![c("198.18.128.5/22"), c("198.18.128.200/22")],
            link_up: true,
            default_gateways: vec![ip("198.18.128.1")],
        };
        let p = plan(&[], &cur, &m);
        assert_eq!(p.remove, vec![c("198.18.128.5/22")]);
        assert!(p.add.is_empty() && !p.readdress && !p.link_up);
        assert_eq!(p.routes, vec![RouteOp::Delete(ip("198.18.128.1"))]);
    }

    #[test]
    fn prefix_change_replaces_the_address() {
        let want = [d("198.18.128.5/24", None)];
        let mut m = managed_for(&[d("198.18.128.5/22", None)]);
        m.learn(&want);
        let cur = Current {
            addresses: vec![c("198.18.128.5/22")],
            link_up: true,
            default_gateways: vec![],
        };
        let p = plan(&want, &cur, &m);
        assert_eq!(
            (p.remove.clone(), p.add.clone()),
            (vec![c("198.18.128.5/22")], vec![c("198.18.128.5/24")])
        );
    }

    #[test]
    fn prune_forgets_old_shards_once_their_addresses_are_gone() {
        let before = [d("198.18.128.5/22", None)];
        let after = [d("198.18.132.9/22", None)];
        let mut m = managed_for(&before);
        m.learn(&after);
        m.prune(&after, &[c("198.18.128.5/22"), c("198.18.132.9/22")]);
        assert!(m.owns(&ip("198.18.128.5")), "still present: still weft's");
        m.prune(&after, &[c("198.18.132.9/22"), c("198.18.128.200/22")]);
        assert!(!m.owns(&ip("198.18.128.5")));
        assert_eq!(m.ranges.len(), 1);
        assert!(m.owns(&ip("198.18.133.1")));
    }
}
