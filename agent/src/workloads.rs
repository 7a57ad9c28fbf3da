//! Which workload each attached interface belongs to. Configured workloads come from the
//! workloads file; an interface that matches the attach patterns but is not in the file
//! becomes a workload named after the interface, with addresses learned from its traffic.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::WorkloadSpec;

/// At most this many addresses are learned per interface.
const MAX_LEARNED_ADDRESSES: usize = 16;

#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub interface: String,
    pub addresses: BTreeSet<IpAddr>,
    pub configured: bool,
}

#[derive(Default)]
struct Inner {
    configured: HashMap<String, WorkloadSpec>,
    /// Interfaces named by the agent itself (network nodes' host veths): like configured
    /// ones once attached, but not announced before (an interface the attach patterns
    /// leave out is not observed, so not a workload).
    named: HashMap<String, WorkloadSpec>,
    by_ifindex: HashMap<u32, Workload>,
    version: u64,
}

/// Shared between the interface watcher, the collector and the exporter; touched once per
/// drain or interface change, never per packet.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new(configured: Vec<WorkloadSpec>) -> Self {
        let inner = Inner {
            configured: configured
                .into_iter()
                .map(|w| (w.interface.clone(), w))
                .collect(),
            ..Default::default()
        };
        Self {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attached(&self, ifindex: u32, interface: &str) {
        let mut g = self.lock();
        let w = match g
            .configured
            .get(interface)
            .or_else(|| g.named.get(interface))
        {
            Some(spec) => Workload {
                name: spec.name.clone(),
                interface: interface.to_owned(),
                addresses: spec.addresses.iter().copied().collect(),
                configured: true,
            },
            None => Workload {
                name: interface.to_owned(),
                interface: interface.to_owned(),
                addresses: BTreeSet::new(),
                configured: false,
            },
        };
        g.by_ifindex.insert(ifindex, w);
        g.version += 1;
    }

    /// Names `interface` as if the workloads file said so (the file wins): a network
    /// node's host veth is the node's workload (`<network>.<node>`, as the controller names
    /// it) with the node's addresses, so its traffic is the node's in the topology. An
    /// interface already attached is renamed; one not attached (yet, or ever: not one of
    /// `--interfaces`) is not announced. Nothing changes (no new version) when it is named
    /// so already.
    pub fn name_interface(&self, interface: &str, name: &str, addresses: &[IpAddr]) {
        let mut g = self.lock();
        let spec = WorkloadSpec {
            name: name.to_owned(),
            interface: interface.to_owned(),
            addresses: addresses.to_vec(),
            netns: None,
            device: crate::config::DEFAULT_DEVICE.to_owned(),
        };
        if g.configured.contains_key(interface) || g.named.get(interface) == Some(&spec) {
            return;
        }
        let mut renamed = false;
        for w in g.by_ifindex.values_mut() {
            if w.interface == interface {
                w.name = spec.name.clone();
                w.addresses = spec.addresses.iter().copied().collect();
                w.configured = true;
                renamed = true;
            }
        }
        g.named.insert(interface.to_owned(), spec);
        if renamed {
            g.version += 1;
        }
    }

    /// Undoes [`Registry::name_interface`] (the node is removed): an interface still
    /// attached goes back to its own name and learns its addresses again.
    pub fn unname_interface(&self, interface: &str) {
        let mut g = self.lock();
        if g.named.remove(interface).is_none() || g.configured.contains_key(interface) {
            return;
        }
        let mut renamed = false;
        for w in g.by_ifindex.values_mut() {
            if w.interface == interface {
                w.name = interface.to_owned();
                w.addresses.clear();
                w.configured = false;
                renamed = true;
            }
        }
        if renamed {
            g.version += 1;
        }
    }

    pub fn detached(&self, ifindex: u32) {
        let mut g = self.lock();
        if g.by_ifindex.remove(&ifindex).is_some() {
            g.version += 1;
        }
    }

    /// Records a local address seen on an unconfigured interface.
    pub fn learn(&self, ifindex: u32, addr: IpAddr) {
        let mut g = self.lock();
        let changed = match g.by_ifindex.get_mut(&ifindex) {
            Some(w) if !w.configured && w.addresses.len() < MAX_LEARNED_ADDRESSES => {
                w.addresses.insert(addr)
            }
            _ => false,
        };
        if changed {
            g.version += 1;
        }
    }

    /// (workload name, interface name) of an ifindex.
    pub fn names(&self) -> HashMap<u32, (String, String)> {
        self.lock()
            .by_ifindex
            .iter()
            .map(|(i, w)| (*i, (w.name.clone(), w.interface.clone())))
            .collect()
    }

    /// Unconfigured interfaces (whose addresses are learned).
    pub fn learning(&self) -> Vec<u32> {
        self.lock()
            .by_ifindex
            .iter()
            .filter(|(_, w)| !w.configured)
            .map(|(i, _)| *i)
            .collect()
    }

    /// All workloads and the version of this list (it changes whenever the list does).
    pub fn snapshot(&self) -> (u64, Vec<Workload>) {
        let g = self.lock();
        let mut v: Vec<Workload> = g.by_ifindex.values().cloned().collect();
        // Configured workloads whose interface does not exist yet are still announced, so
        // the controller can name their addresses.
        for spec in g.configured.values() {
            if !v.iter().any(|w| w.interface == spec.interface) {
                v.push(Workload {
                    name: spec.name.clone(),
                    interface: spec.interface.clone(),
                    addresses: spec.addresses.iter().copied().collect(),
                    configured: true,
                });
            }
        }
        v.sort_by(|a, b| a.interface.cmp(&b.interface));
        (g.version, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_interface_takes_its_name_and_unknown_one_learns() {
        let r = Registry::new(vec![WorkloadSpec {
            name: "web".into(),
            interface: "wl-web".into(),
            addresses: vec!["198.18.1.11".parse().unwrap()],
            netns: None,
            device: crate::config::DEFAULT_DEVICE.into(),
        }]);
        let (v0, list) = r.snapshot();
        assert_eq!(
            list.len(),
            1,
            "configured workloads are announced before they attach"
        );
        r.attached(3, "wl-web");
        r.attached(4, "tap9");
        assert_eq!(r.names()[&3].0, "web");
        assert_eq!(r.names()[&4].0, "tap9");
        r.learn(4, "198.18.1.50".parse().unwrap());
        r.learn(3, "198.18.1.99".parse().unwrap()); // configured: not learned
        let (v1, list) = r.snapshot();
        assert!(v1 > v0);
        let web = list.iter().find(|w| w.name == "web").unwrap();
        assert_eq!(web.addresses.len(), 1);
        let tap = list.iter().find(|w| w.name == "tap9").unwrap();
        assert!(tap.addresses.contains(&"198.18.1.50".parse().unwrap()));
        assert_eq!(r.learning(), vec![4]);
        r.detached(4);
        assert_eq!(r.snapshot().1.len(), 1);
    }

    #[test]
    fn a_network_node_interface_is_named_after_the_node() {
        let r = Registry::new(vec![]);
        // Attached before the node reconciler names it: renamed in place.
        r.attached(7, "wn0123456789ab");
        assert_eq!(r.names()[&7].0, "wn0123456789ab");
        let ip: IpAddr = "198.19.0.130".parse().unwrap();
        r.name_interface("wn0123456789ab", "shop.web", &[ip]);
        let (v1, list) = r.snapshot();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "shop.web");
        assert_eq!(list[0].addresses, BTreeSet::from([ip]));
        assert!(r.learning().is_empty(), "a named node does not learn");
        // Named again the same way: no new version (no re-registration each reconcile).
        r.name_interface("wn0123456789ab", "shop.web", &[ip]);
        assert_eq!(r.snapshot().0, v1);
        // Named before it is attached: not announced until it is (an interface left out
        // by the attach patterns is no workload), then attached under the node's name.
        let v2 = r.snapshot().0;
        r.name_interface("wnffffffffffff", "shop.db", &[]);
        assert_eq!(r.snapshot().0, v2);
        assert_eq!(r.snapshot().1.len(), 1);
        r.attached(8, "wnffffffffffff");
        assert_eq!(r.names()[&8].0, "shop.db");
        // The workloads file wins over the agent's own naming.
        let f = Registry::new(vec![WorkloadSpec {
            name: "from-file".into(),
            interface: "wn1".into(),
            addresses: vec![],
            netns: None,
            device: "eth0".into(),
        }]);
        f.name_interface("wn1", "shop.x", &[ip]);
        f.attached(9, "wn1");
        assert_eq!(f.names()[&9].0, "from-file");
        f.unname_interface("wn1");
        assert_eq!(f.names()[&9].0, "from-file");
        // The node removed: the interface is itself again.
        r.unname_interface("wn0123456789ab");
        assert_eq!(r.names()[&7].0, "wn0123456789ab");
        assert_eq!(r.learning(), vec![7]);
        assert!(r.snapshot().0 > v1);
    }
}
