//! Carries a [`Plan`] out on a workload's device inside its network namespace, and reads
//! the device back. Workloads are independent: one whose namespace or device is missing
//! gets an error, the others still apply.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tracing::{info, warn};

use super::diff::{Cidr, Current, DesiredAddress, Managed, Plan, RouteOp, is_link_local, plan};
use super::netns::NetnsConnections;
use super::{DesiredWorkload, RealizeError};
use crate::config::WorkloadSpec;
use crate::control::state::{StateError, StateFile};
use crate::hostevents::{Change, HostEvent};

/// Workloads applied at once (each holds a netlink thread while it runs).
const PARALLEL_APPLIES: usize = 8;

/// What applying one workload's desired state did and left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub workload: String,
    /// Addresses on the device afterwards (link-local ones left out).
    pub addresses: Vec<Cidr>,
    pub link_up: bool,
    pub error: Option<String>,
    /// How long the link was down for a re-address.
    pub readdress_down: Option<Duration>,
    /// Netlink writes made on the device (0 when it already matched).
    pub changes: usize,
    /// Neighbour entries of new addresses set on the hypervisor side (before the change,
    /// or after it).
    pub neighbours_set: usize,
}

#[derive(Debug, Clone)]
struct Target {
    netns: Option<PathBuf>,
    netns_label: String,
    device: String,
    statics: Vec<IpAddr>,
}

/// Applies desired addresses to the workloads of the workloads file.
pub struct Realizer {
    targets: HashMap<String, Target>,
    /// Workload names by namespace file (host events name the namespace).
    by_netns: HashMap<PathBuf, Vec<String>>,
    /// Where neighbour entries of replaced addresses are flushed (the hypervisor side);
    /// `None` = the agent's own namespace.
    neighbour_netns: Option<PathBuf>,
    /// Per workload: which addresses are weft's. In memory: an agent restart forgets the
    /// addresses of earlier states (ranges of current desired addresses still count).
    managed: Mutex<HashMap<String, Managed>>,
    /// How a re-address is carried out.
    readdress_mode: ReaddressMode,
    /// Per workload: the desired addresses of its last apply without error, and its report.
    last_applied: Mutex<HashMap<String, (Vec<DesiredAddress>, Applied)>>,
    /// One netlink connection per namespace, kept.
    conns: NetnsConnections,
    /// Hardware addresses of gateways held by the neighbour namespace, found recently.
    gateway_macs: Mutex<HashMap<IpAddr, (Instant, Vec<u8>)>>,
    /// One gateway lookup at a time: it dumps addresses on the shared connection into the
    /// neighbour namespace, and a netlink socket runs one dump at a time (EBUSY).
    gateway_lookup: tokio::sync::Mutex<()>,
    /// See [`OLD_NEIGHBOUR_GRACE`].
    old_neighbour_grace: Duration,
    /// Where `managed` is kept across restarts (`None`: memory only).
    state: Option<std::sync::Arc<StateFile>>,
    /// Per workload: when its device was last read back by an apply. Host events from
    /// before are already accounted for (most are the apply's own writes).
    read_back_at: Mutex<HashMap<String, Instant>>,
    /// One link down at a time (down-up re-addressing): taking a link down and up waits,
    /// under the kernel's RTNL lock, for RCU grace periods; several flapping at once
    /// queue behind each other's and every window grows (measured: p99 link-down 30-110
    /// ms with 8 at once). The wait for the permit is before the link goes down.
    down_window: tokio::sync::Semaphore,
}

/// How long after a re-address the hypervisor's neighbour entries of the old addresses
/// are deleted. Deleted at once, every packet still sent to an old address during a
/// burst of re-addresses would start an ARP broadcast, flooded to every port of the
/// bridge; a while later, stray traffic has stopped and the entries go quietly.
const OLD_NEIGHBOUR_GRACE: Duration = Duration::from_secs(3);

/// How long a gateway's hardware address is trusted before it is looked up again.
const GATEWAY_MAC_TTL: Duration = Duration::from_secs(10);

/// A workload's device, as the re-address steps need it.
struct Device<'a> {
    h: &'a Handle,
    index: u32,
    /// Gateways of the plan's routes whose hardware address is known.
    gateways: &'a [(IpAddr, Vec<u8>)],
    /// The hypervisor's namespace, where the new addresses are announced.
    hv: Option<&'a Handle>,
    /// The device's hardware address.
    mac: Option<&'a [u8]>,
    /// New addresses already announced to the hypervisor (before the change).
    announced: &'a [IpAddr],
    /// Held while the link is down (see `Realizer::down_window`).
    down_window: &'a tokio::sync::Semaphore,
}

impl Device<'_> {
    /// Points the hypervisor's neighbour entries of the new addresses at this device, so
    /// the first packet to them goes straight here. Best effort (the hypervisor then
    /// resolves them itself).
    async fn announce(&self, plan: &Plan, announced: &mut usize) {
        let Some(hv) = self.hv else {
            return;
        };
        let new: Vec<IpAddr> = plan
            .add
            .iter()
            .map(|c| c.addr)
            .filter(|a| !self.announced.contains(a))
            .collect();
        if new.is_empty() {
            return;
        }
        match set_neighbours(hv, &new, self.mac).await {
            Ok(n) => *announced += n,
            Err(e) => {
                warn!(error = %e, "setting the hypervisor's neighbour entries of the new addresses failed")
            }
        }
    }
}

fn list(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How the agent moves a workload from its old address to its new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReaddressMode {
    /// As the specification describes it: interface down, address swapped, interface up.
    /// The carrier change travels through the kernel's link watcher, which batches
    /// events: in a burst of re-addresses each workload can stay unreachable for hundreds
    /// of milliseconds.
    #[default]
    DownUp,
    /// The new address and route first, then the old address removed: the interface
    /// never goes down (no carrier change), so the workload is reachable throughout.
    MakeBeforeBreak,
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> RealizeError {
    let op = op.into();
    move |source| RealizeError::Netlink { op, source }
}

impl Realizer {
    pub fn new(specs: &[WorkloadSpec]) -> Self {
        let targets: HashMap<String, Target> = specs
            .iter()
            .map(|s| {
                let t = Target {
                    netns: s.netns.as_ref().map(|n| n.path()),
                    netns_label: s.netns.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    device: s.device.clone(),
                    statics: s.addresses.clone(),
                };
                (s.name.clone(), t)
            })
            .collect();
        let mut by_netns: HashMap<PathBuf, Vec<String>> = HashMap::new();
        for (name, t) in &targets {
            if let Some(ns) = &t.netns {
                by_netns.entry(ns.clone()).or_default().push(name.clone());
            }
        }
        Self {
            targets,
            by_netns,
            neighbour_netns: None,
            managed: Mutex::new(HashMap::new()),
            readdress_mode: ReaddressMode::default(),
            last_applied: Mutex::new(HashMap::new()),
            conns: NetnsConnections::default(),
            gateway_macs: Mutex::new(HashMap::new()),
            gateway_lookup: tokio::sync::Mutex::new(()),
            old_neighbour_grace: OLD_NEIGHBOUR_GRACE,
            state: None,
            read_back_at: Mutex::default(),
            down_window: tokio::sync::Semaphore::new(1),
        }
    }

    pub fn with_readdress_mode(mut self, mode: ReaddressMode) -> Self {
        self.readdress_mode = mode;
        self
    }

    /// Keeps which addresses are weft's in `path` across restarts, starting from what it
    /// holds (its `workload-addresses` section).
    #[cfg(test)]
    pub fn with_state_file(self, path: &std::path::Path) -> Result<Self, StateError> {
        self.with_state(std::sync::Arc::new(StateFile::open(path)?))
    }

    /// Keeps which addresses are weft's in the agent's state file, starting from what it
    /// holds. Workloads it names that are not in the workloads file are dropped (this agent
    /// cannot reach them).
    pub fn with_state(mut self, file: std::sync::Arc<StateFile>) -> Result<Self, StateError> {
        let remembered = super::state::load(&file)?;
        {
            let mut managed = self.managed();
            for (name, (seen, ranges)) in remembered {
                let Some(target) = self.targets.get(&name) else {
                    warn!(workload = %name, file = %file.path().display(), "the state file names a workload that is not in the workloads file: forgotten");
                    continue;
                };
                let mut m = Managed::with_statics(target.statics.iter().copied());
                m.seen = seen;
                m.ranges = ranges;
                managed.insert(name, m);
            }
        }
        self.state = Some(file);
        Ok(self)
    }

    /// Writes `managed` to the state file (if there is one and it changed).
    /// Writes what weft manages to the state file (fsync'd) on a blocking thread: an
    /// fsync takes 10-40 ms on a VM disk, and on a runtime worker it stalled every netlink
    /// exchange of the applies in flight (a down-up re-address's link-down window grew
    /// from ~1 ms to 30-120 ms at p99). Returns when the file is written.
    async fn save_state(&self) {
        let Some(file) = self.state.clone() else {
            return;
        };
        let managed = self.managed().clone();
        let saved = tokio::task::spawn_blocking(move || super::state::save(&file, &managed)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "keeping the managed addresses failed"),
            Err(e) => warn!(error = %e, "the state file writer failed"),
        }
    }

    /// How long the hypervisor keeps neighbour entries of replaced addresses.
    pub fn with_old_neighbour_grace(mut self, grace: Duration) -> Self {
        self.old_neighbour_grace = grace;
        self
    }

    /// Flush neighbours of replaced addresses in this namespace instead of the agent's.
    pub fn with_neighbour_netns(mut self, netns: Option<PathBuf>) -> Self {
        self.neighbour_netns = netns;
        self
    }

    fn managed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Managed>> {
        self.managed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_applied(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<DesiredAddress>, Applied)>> {
        self.last_applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hardware address of `gateway` when the neighbour namespace (the hypervisor)
    /// holds it on one of its devices; `None` otherwise (the workload then resolves it
    /// itself, with ARP or NDP).
    async fn gateway_mac(&self, gateway: IpAddr) -> Option<Vec<u8>> {
        let cached = || {
            let macs = self.gateway_macs.lock().unwrap_or_else(|p| p.into_inner());
            macs.get(&gateway)
                .filter(|(at, _)| at.elapsed() < GATEWAY_MAC_TTL)
                .map(|(_, mac)| mac.clone())
        };
        if let Some(mac) = cached() {
            return Some(mac);
        }
        let _one = self.gateway_lookup.lock().await;
        // Found by the lookup this one waited for.
        if let Some(mac) = cached() {
            return Some(mac);
        }
        let found = async {
            let h = self.conns.get(self.neighbour_netns.as_deref()).await?;
            local_address_mac(&h, gateway).await
        }
        .await;
        match found {
            Ok(Some(mac)) => {
                self.gateway_macs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(gateway, (Instant::now(), mac.clone()));
                Some(mac)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(%gateway, error = %e, "looking up the gateway's hardware address failed");
                None
            }
        }
    }

    /// Workload namespaces (where the host events of the managed devices come from).
    pub fn namespaces(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self
            .targets
            .values()
            .filter_map(|t| t.netns.clone())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Workloads with addresses weft manages.
    pub fn managed_workloads(&self) -> Vec<String> {
        let m = self.managed();
        let mut names: Vec<String> = m
            .iter()
            .filter(|(_, m)| !m.seen.is_empty() || !m.ranges.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Which workloads these host events (in the order they happened) left away from what
    /// was last applied to them, and how: a desired address, or the default route via a
    /// desired gateway, gone; an address weft manages but no longer wants there; the device
    /// down or deleted. Only the net effect counts (an address removed and added again by
    /// the same burst of changes is no drift), and events from before a workload's last
    /// read-back are its own apply's (or already seen by it).
    pub fn drifted(&self, events: &[HostEvent]) -> Vec<(String, String)> {
        /// What the events say of one workload's device, last word first.
        #[derive(Default)]
        struct Net {
            addrs: HashMap<IpAddr, (bool, u8)>,
            link: Option<&'static str>,
            routes: HashMap<IpAddr, bool>,
        }
        let read_back = self.read_back_at.lock().unwrap_or_else(|p| p.into_inner());
        let mut net: HashMap<&str, Net> = HashMap::new();
        for e in events {
            let Some(ns) = &e.netns else { continue };
            for name in self.by_netns.get(ns).into_iter().flatten() {
                if read_back.get(name).is_some_and(|t| *t >= e.at) {
                    continue;
                }
                let dev = &self.targets[name].device;
                let n = net.entry(name.as_str()).or_default();
                match &e.change {
                    Change::AddrNew { addr, prefix, .. } => {
                        n.addrs.insert(*addr, (true, *prefix));
                    }
                    Change::AddrDel { addr, prefix, .. } => {
                        n.addrs.insert(*addr, (false, *prefix));
                    }
                    Change::LinkNew { name: l, up, .. } if l == dev => {
                        n.link = Some(if *up { "up" } else { "down" })
                    }
                    Change::LinkDel { name: l, .. } if l == dev => n.link = Some("deleted"),
                    Change::RouteNew {
                        prefix: 0,
                        gateway: Some(g),
                        ..
                    } => {
                        n.routes.insert(*g, true);
                    }
                    Change::RouteDel {
                        prefix: 0,
                        gateway: Some(g),
                        ..
                    } => {
                        n.routes.insert(*g, false);
                    }
                    _ => {}
                }
            }
        }
        drop(read_back);
        let last = self.last_applied();
        let managed = self.managed();
        let mut out = Vec::new();
        for (name, n) in net {
            let Some((desired, _)) = last.get(name) else {
                continue;
            };
            let dev = &self.targets[name].device;
            let mut what: Vec<String> = Vec::new();
            for (addr, (present, prefix)) in &n.addrs {
                let wanted = desired.iter().any(|d| d.cidr.addr == *addr);
                if wanted && !present {
                    what.push(format!("address {addr}/{prefix} removed from {dev}"));
                } else if !wanted && *present && managed.get(name).is_some_and(|m| m.owns(addr)) {
                    what.push(format!("address {addr}/{prefix} added to {dev}, which weft manages and does not want there"));
                }
            }
            match n.link {
                Some("down") => what.push(format!("{dev} set down")),
                Some("deleted") => what.push(format!("{dev} deleted")),
                _ => {}
            }
            for (g, present) in &n.routes {
                if !present && desired.iter().any(|d| d.gateway == Some(*g)) {
                    what.push(format!("default route via {g} removed"));
                }
            }
            what.sort();
            out.extend(what.into_iter().map(|w| (name.to_owned(), w)));
        }
        out.sort();
        out
    }

    /// Netlink connections open into namespaces (one per workload namespace touched, and
    /// the neighbour namespace).
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Applies a host's full desired state: every workload is read back from its device
    /// and brought to its desired addresses (level-triggered). Workloads that had managed
    /// addresses before but are absent now are emptied. Reports come back sorted by name.
    pub async fn apply(&self, desired: Vec<DesiredWorkload>) -> Vec<Applied> {
        self.apply_with(desired, false, true).await
    }

    /// Reads back and repairs only these workloads (drift): the others are not touched,
    /// whatever they hold.
    pub async fn repair(&self, desired: Vec<DesiredWorkload>) -> Vec<Applied> {
        self.apply_with(desired, false, false).await
    }

    /// Like [`apply`](Self::apply), but a workload whose desired addresses are the same as
    /// at its last successful apply is not touched: its last report is given again. For
    /// the stream of desired states, where one generation changes a few workloads of
    /// hundreds; a full [`apply`](Self::apply) now and then catches drift.
    pub async fn apply_changed(&self, desired: Vec<DesiredWorkload>) -> Vec<Applied> {
        self.apply_with(desired, true, true).await
    }

    /// `empty_absent`: workloads with managed addresses that `desired` does not list are
    /// emptied (a whole host state); otherwise left alone (a repair of some workloads).
    async fn apply_with(
        &self,
        desired: Vec<DesiredWorkload>,
        skip_unchanged: bool,
        empty_absent: bool,
    ) -> Vec<Applied> {
        let mut all: Vec<(DesiredWorkload, bool)> =
            desired.into_iter().map(|w| (w, true)).collect();
        let remembered: Vec<String> = if empty_absent {
            self.managed().keys().cloned().collect()
        } else {
            Vec::new()
        };
        for name in remembered {
            if !all.iter().any(|(w, _)| w.name == name) {
                all.push((
                    DesiredWorkload {
                        name,
                        addresses: Vec::new(),
                    },
                    false,
                ));
            }
        }
        let mut out = Vec::with_capacity(all.len());
        if skip_unchanged {
            let last = self.last_applied();
            all.retain(|(w, _)| match last.get(&w.name) {
                Some((addresses, applied)) if *addresses == w.addresses => {
                    // The last report again, with its re-address time (the controller may
                    // read this report for the move that caused it); nothing was written.
                    out.push(Applied {
                        changes: 0,
                        neighbours_set: 0,
                        ..applied.clone()
                    });
                    false
                }
                _ => true,
            });
        }
        // Learnt before acting, and kept: an agent that stops half-way through still
        // recognises these addresses as weft's when it starts again.
        {
            let mut m = self.managed();
            for (w, _) in &all {
                if let Some(target) = self.targets.get(&w.name) {
                    m.entry(w.name.clone())
                        .or_insert_with(|| Managed::with_statics(target.statics.iter().copied()))
                        .learn(&w.addresses);
                }
            }
        }
        self.save_state().await;
        let announced = self.preannounce(&all).await;
        let announced = &announced;
        let results: Vec<(Applied, bool, bool, Vec<DesiredAddress>)> = futures::stream::iter(all)
            .map(|(w, asked)| async move {
                let (done, n) = announced
                    .get(&w.name)
                    .map(|(a, n)| (a.as_slice(), *n))
                    .unwrap_or((&[], 0));
                let (mut applied, gone) = self.apply_one(&w, done).await;
                applied.neighbours_set += n;
                (applied, gone, asked, w.addresses)
            })
            .buffer_unordered(PARALLEL_APPLIES)
            .collect()
            .await;
        for (applied, gone, asked, addresses) in results {
            if !asked && gone {
                // No longer desired and its namespace or device is gone with its addresses:
                // nothing left to clean up or report.
                self.managed().remove(&applied.workload);
                self.last_applied().remove(&applied.workload);
                continue;
            }
            if applied.error.is_none() {
                self.last_applied()
                    .insert(applied.workload.clone(), (addresses, applied.clone()));
            } else {
                self.last_applied().remove(&applied.workload);
            }
            out.push(applied);
        }
        self.save_state().await;
        out.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }

    /// Before any workload is changed: the hypervisor's neighbour entries of every address
    /// new to a workload point at its device. Traffic that reaches a new address before
    /// the workload has it is then dropped by the workload, instead of each address
    /// starting ARP broadcasts on the bridge (every port, every second) while it waits
    /// its turn in a burst of re-addresses. Best effort, like the announce after a change.
    /// Returns, per workload, the addresses announced and how many entries were set.
    async fn preannounce(
        &self,
        workloads: &[(DesiredWorkload, bool)],
    ) -> HashMap<String, (Vec<IpAddr>, usize)> {
        let Ok(hv) = self.conns.get(self.neighbour_netns.as_deref()).await else {
            return HashMap::new();
        };
        let fresh: Vec<(String, Target, Vec<IpAddr>)> = {
            let last = self.last_applied();
            workloads
                .iter()
                .filter_map(|(w, _)| {
                    let before = last.get(&w.name).map(|(a, _)| a.as_slice()).unwrap_or(&[]);
                    let new: Vec<IpAddr> = w
                        .addresses
                        .iter()
                        .filter(|d| !before.iter().any(|b| b.cidr.addr == d.cidr.addr))
                        .map(|d| d.cidr.addr)
                        .collect();
                    let target = self.targets.get(&w.name)?;
                    (!new.is_empty() && target.netns.is_some())
                        .then(|| (w.name.clone(), target.clone(), new))
                })
                .collect()
        };
        if fresh.is_empty() {
            return HashMap::new();
        }
        futures::stream::iter(fresh)
            .map(|(name, target, new)| {
                let hv = &hv;
                async move {
                    let h = self.conns.get(target.netns.as_deref()).await.ok()?;
                    let Ok((_, Some(mac))) = link_of(&h, &target).await else {
                        return None;
                    };
                    match set_neighbours(hv, &new, Some(&mac)).await {
                        Ok(n) => Some((name, (new, n))),
                        Err(e) => {
                            warn!(device = %target.device, error = %e, "announcing new addresses to the hypervisor failed");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(PARALLEL_APPLIES)
            .filter_map(|done| async move { done })
            .collect()
            .await
    }

    /// Brings one workload's device to its desired addresses and reads it back. Returns
    /// the report, and whether the workload's namespace or device does not exist.
    async fn apply_one(&self, w: &DesiredWorkload, announced: &[IpAddr]) -> (Applied, bool) {
        let mut applied = Applied {
            workload: w.name.clone(),
            ..Default::default()
        };
        let Some(target) = self.targets.get(&w.name) else {
            applied.error = Some(RealizeError::UnknownWorkload(w.name.clone()).to_string());
            return (applied, false);
        };
        let Some(netns_path) = target.netns.as_deref() else {
            applied.error = Some(RealizeError::NoNetns(w.name.clone()).to_string());
            return (applied, false);
        };
        let h = match self.conns.get(Some(netns_path)).await {
            Ok(h) => h,
            Err(e) => {
                let gone = matches!(&e, RealizeError::NetnsOpen { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                if gone {
                    self.conns.forget(Some(netns_path));
                }
                applied.error = Some(e.to_string());
                return (applied, gone);
            }
        };
        let h = &h;
        let (index, mac) = match link_of(h, target).await {
            Ok(l) => l,
            Err(e) => {
                let gone = matches!(e, RealizeError::NoDevice { .. });
                applied.error = Some(e.to_string());
                return (applied, gone);
            }
        };
        let result = self
            .reconcile(
                h,
                (index, mac.as_deref()),
                w,
                target,
                announced,
                &mut applied,
            )
            .await;
        self.read_back_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(w.name.clone(), Instant::now());
        match read_current(h, index).await {
            Ok((current, _)) => {
                if result.is_ok() {
                    let mut m = self.managed();
                    if let Some(managed) = m.get_mut(&w.name) {
                        managed.prune(&w.addresses, &current.addresses);
                    }
                }
                applied.link_up = current.link_up;
                applied.addresses = current
                    .addresses
                    .into_iter()
                    .filter(|c| !is_link_local(&c.addr))
                    .collect();
            }
            Err(e) if result.is_ok() => applied.error = Some(format!("reading back: {e}")),
            Err(_) => {}
        }
        if let Err(e) = result {
            applied.error = Some(e.to_string());
        }
        (applied, false)
    }

    async fn reconcile(
        &self,
        h: &Handle,
        (index, mac): (u32, Option<&[u8]>),
        w: &DesiredWorkload,
        target: &Target,
        announced: &[IpAddr],
        applied: &mut Applied,
    ) -> Result<(), RealizeError> {
        let (current, messages) = read_current(h, index).await?;
        // Learnt (and kept) by `apply_with` before any workload was touched.
        let managed = self
            .managed()
            .get(&w.name)
            .cloned()
            .unwrap_or_else(|| Managed::with_statics(target.statics.iter().copied()));
        let plan = plan(&w.addresses, &current, &managed);
        if plan.is_empty() {
            return Ok(());
        }
        // The workload is told its new gateways' hardware addresses with the routes, so it
        // does not broadcast an ARP request for them (on a bridge of hundreds of ports, a
        // burst of re-addresses would flood every port hundreds of times).
        let mut gateways = Vec::new();
        for op in &plan.routes {
            if let RouteOp::Replace(g) = *op
                && let Some(gw_mac) = self.gateway_mac(g).await
            {
                gateways.push((g, gw_mac));
            }
        }
        // The hypervisor's side (its neighbour entries), when it can be reached.
        let hv = if plan.add.is_empty() && plan.remove.is_empty() {
            None
        } else {
            match self.conns.get(self.neighbour_netns.as_deref()).await {
                Ok(nh) => Some(nh),
                Err(e) => {
                    warn!(workload = %w.name, error = %e, "the hypervisor's neighbour entries cannot be updated");
                    None
                }
            }
        };
        let dev = Device {
            h,
            index,
            gateways: &gateways,
            hv: hv.as_ref(),
            mac,
            announced,
            down_window: &self.down_window,
        };
        let mut set_after = 0;
        let down = if plan.readdress && self.readdress_mode == ReaddressMode::MakeBeforeBreak {
            make_before_break(&dev, &plan, &messages, &mut applied.changes, &mut set_after).await?
        } else {
            execute(&dev, &plan, &messages, &mut applied.changes, &mut set_after).await?
        };
        applied.readdress_down = down;
        applied.neighbours_set += set_after;
        if let Some(d) = down {
            info!(
                workload = %w.name,
                removed = %list(&plan.remove),
                added = %list(&plan.add),
                down_us = d.as_micros() as u64,
                "re-addressed"
            );
        }
        // The old addresses' entries on the hypervisor go after a grace period (nothing is
        // sent to this MAC for them any more; see OLD_NEIGHBOUR_GRACE).
        if let Some(nh) = hv
            && !plan.remove.is_empty()
        {
            let old: Vec<IpAddr> = plan.remove.iter().map(|c| c.addr).collect();
            let workload = w.name.clone();
            let grace = self.old_neighbour_grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if let Err(e) = flush_neighbours(&nh, &old).await {
                    warn!(%workload, error = %e, "deleting the hypervisor's neighbour entries of the old addresses failed");
                }
            });
        }
        Ok(())
    }
}

/// The device's index and its hardware address.
async fn link_of(h: &Handle, target: &Target) -> Result<(u32, Option<Vec<u8>>), RealizeError> {
    let no_device = || RealizeError::NoDevice {
        device: target.device.clone(),
        netns: target.netns_label.clone(),
    };
    let mut links = h.link().get().match_name(target.device.clone()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok((msg.header.index, hardware_address(&msg))),
        Ok(None) => Err(no_device()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Err(no_device()),
        Err(e) => Err(nl(format!("looking up device {:?}", target.device))(e)),
    }
}

fn hardware_address(msg: &LinkMessage) -> Option<Vec<u8>> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) if mac.len() == 6 && mac.iter().any(|b| *b != 0) => {
            Some(mac.clone())
        }
        _ => None,
    })
}

fn address_of(msg: &AddressMessage) -> Option<Cidr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Cidr::new(local.or(address)?, msg.header.prefix_len)
}

fn default_gateway(msg: &RouteMessage, index: u32) -> Option<IpAddr> {
    let main = u32::from(RouteHeader::RT_TABLE_MAIN);
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    let oif = msg
        .attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    if msg.header.destination_prefix_length != 0
        || table != main
        || msg.header.kind != RouteType::Unicast
        || !oif
    {
        return None;
    }
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
        _ => None,
    })
}

async fn list_addresses(
    h: &Handle,
    index: u32,
) -> Result<Vec<(Cidr, AddressMessage)>, RealizeError> {
    let messages: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| Some((address_of(&m)?, m)))
        .collect())
}

/// The device's addresses (with their netlink messages, for deletion), link state and
/// default routes.
async fn read_current(
    h: &Handle,
    index: u32,
) -> Result<(Current, Vec<(Cidr, AddressMessage)>), RealizeError> {
    let mut current = Current::default();
    let link = h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(nl("reading the link"))?;
    current.link_up = link.is_some_and(|l| l.header.flags.contains(LinkFlags::Up));
    let messages = list_addresses(h, index).await?;
    current.addresses = messages.iter().map(|(c, _)| *c).collect();
    for family in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let routes: Vec<RouteMessage> = h
            .route()
            .get(family)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))?;
        current
            .default_gateways
            .extend(routes.iter().filter_map(|r| default_gateway(r, index)));
    }
    Ok((current, messages))
}

fn default_route(index: u32, gateway: IpAddr) -> RouteMessage {
    match gateway {
        IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(g)
            .output_interface(index)
            .build(),
        IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(g)
            .output_interface(index)
            .build(),
    }
}

async fn set_link(h: &Handle, index: u32, up: bool) -> Result<(), RealizeError> {
    let msg = if up {
        LinkUnspec::new_with_index(index).up().build()
    } else {
        LinkUnspec::new_with_index(index).down().build()
    };
    h.link().set(msg).execute().await.map_err(nl(if up {
        "setting the link up"
    } else {
        "setting the link down"
    }))
}

/// Re-addresses without taking the link down: new addresses, then the default routes
/// through the new gateways, then the old routes and addresses go. Returns a zero down
/// time (the link stayed up).
async fn make_before_break(
    dev: &Device<'_>,
    plan: &Plan,
    messages: &[(Cidr, AddressMessage)],
    changes: &mut usize,
    announced: &mut usize,
) -> Result<Option<Duration>, RealizeError> {
    let (h, index) = (dev.h, dev.index);
    add_addresses(h, index, &plan.add, changes).await?;
    if plan.link_up {
        set_link(h, index, true).await?;
        *changes += 1;
    }
    set_gateway_neighbours(dev, changes).await;
    replace_routes(h, index, plan, changes).await?;
    dev.announce(plan, announced).await;
    delete_routes(h, index, plan, changes).await?;
    forget_old_gateways(h, index, plan).await;
    remove_addresses(h, plan, messages, changes).await?;
    Ok(Some(Duration::ZERO))
}

/// Runs the plan; returns how long the link was down when re-addressing.
async fn execute(
    dev: &Device<'_>,
    plan: &Plan,
    messages: &[(Cidr, AddressMessage)],
    changes: &mut usize,
    announced: &mut usize,
) -> Result<Option<Duration>, RealizeError> {
    let (h, index) = (dev.h, dev.index);
    let mut down_since = None;
    let mut restore = Vec::new();
    let down_window = if plan.readdress {
        dev.down_window.acquire().await.ok()
    } else {
        None
    };
    let t_down = Instant::now();
    if plan.readdress {
        set_link(h, index, false).await?;
        down_since = Some(Instant::now());
        *changes += 1;
        // Taking a link down drops all its IPv6 addresses (keep_addr_on_down = 0, the
        // default): whatever was there and stays wanted is put back before it comes up.
        // Looked at only when there is such an address: every step here is time the
        // workload cannot be reached.
        let kept_v6: Vec<Cidr> = messages
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| {
                c.addr.is_ipv6()
                    && !plan.remove.contains(c)
                    && !plan.add.contains(c)
                    && !is_link_local(&c.addr)
            })
            .collect();
        if !kept_v6.is_empty() {
            let now = list_addresses(h, index).await?;
            restore = kept_v6
                .into_iter()
                .filter(|c| !now.iter().any(|(n, _)| n == c))
                .collect();
        }
    } else {
        // Routes go before the addresses they leave through (the kernel drops an IPv4
        // route whose gateway became unreachable itself: already gone counts as done).
        // With the link down the kernel has removed the device's routes already: their
        // deletion waits until the link is up again.
        delete_routes(h, index, plan, changes).await?;
    }
    let t_removing = Instant::now();
    remove_addresses(h, plan, messages, changes).await?;
    let t_adding = Instant::now();
    let adds: Vec<Cidr> = plan.add.iter().chain(&restore).copied().collect();
    add_addresses(h, index, &adds, changes).await?;
    let t_up = Instant::now();
    let mut down = None;
    if plan.link_up {
        set_link(h, index, true).await?;
        down = down_since.map(|t| t.elapsed());
        *changes += 1;
    }
    drop(down_window);
    if let Some(since) = down_since {
        tracing::debug!(
            set_down_us = since.duration_since(t_down).as_micros() as u64,
            down_to_remove_us = t_removing.duration_since(since).as_micros() as u64,
            remove_us = t_adding.duration_since(t_removing).as_micros() as u64,
            add_us = t_up.duration_since(t_adding).as_micros() as u64,
            up_us = t_up.elapsed().as_micros() as u64,
            "down-up steps"
        );
    }
    // After the link is up: taking it down flushes the device's neighbour entries.
    set_gateway_neighbours(dev, changes).await;
    replace_routes(h, index, plan, changes).await?;
    dev.announce(plan, announced).await;
    if plan.readdress {
        delete_routes(h, index, plan, changes).await?;
    }
    Ok(down)
}

async fn add_addresses(
    h: &Handle,
    index: u32,
    cidrs: &[Cidr],
    changes: &mut usize,
) -> Result<(), RealizeError> {
    for cidr in cidrs {
        let mut req = h.address().add(index, cidr.addr, cidr.prefix);
        if cidr.addr.is_ipv6() {
            // The controller hands each address to one workload: duplicate address
            // detection would only keep it tentative (unusable) for a second or more.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(nl(format!("adding {cidr}")))?;
        *changes += 1;
    }
    Ok(())
}

async fn remove_addresses(
    h: &Handle,
    plan: &Plan,
    messages: &[(Cidr, AddressMessage)],
    changes: &mut usize,
) -> Result<(), RealizeError> {
    for cidr in &plan.remove {
        if let Some((_, msg)) = messages.iter().find(|(c, _)| c == cidr) {
            match h.address().del(msg.clone()).execute().await {
                Ok(()) => *changes += 1,
                // Gone already (IPv6 addresses go with the link when it is taken down).
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EADDRNOTAVAIL => {}
                Err(e) => return Err(nl(format!("removing {cidr}"))(e)),
            }
        }
    }
    Ok(())
}

async fn replace_routes(
    h: &Handle,
    index: u32,
    plan: &Plan,
    changes: &mut usize,
) -> Result<(), RealizeError> {
    for op in &plan.routes {
        if let RouteOp::Replace(g) = *op {
            h.route()
                .add(default_route(index, g))
                .replace()
                .execute()
                .await
                .map_err(nl(format!("setting the default route via {g}")))?;
            *changes += 1;
        }
    }
    Ok(())
}

/// Deletes the plan's default routes; one already gone counts as done.
async fn delete_routes(
    h: &Handle,
    index: u32,
    plan: &Plan,
    changes: &mut usize,
) -> Result<(), RealizeError> {
    for op in &plan.routes {
        if let RouteOp::Delete(g) = *op {
            match h.route().del(default_route(index, g)).execute().await {
                Ok(()) => *changes += 1,
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ESRCH => {}
                Err(e) => return Err(nl(format!("removing the default route via {g}"))(e)),
            }
        }
    }
    Ok(())
}

/// Tells the workload the hardware addresses of its gateways (entries that age like any
/// learnt one: the kernel confirms them again when they go stale). Best effort: a
/// workload that cannot be told (the kernel's neighbour table is full, say) resolves the
/// gateway itself.
async fn set_gateway_neighbours(dev: &Device<'_>, changes: &mut usize) {
    for (g, mac) in dev.gateways {
        let set = dev
            .h
            .neighbours()
            .add(dev.index, *g)
            .link_local_address(mac)
            .state(NeighbourState::Reachable)
            .replace()
            .execute()
            .await;
        match set {
            Ok(()) => *changes += 1,
            Err(e) => {
                warn!(gateway = %g, error = %e, "setting the workload's neighbour entry of its gateway failed")
            }
        }
    }
}

/// Deletes the workload's neighbour entries of gateways its routes no longer use (when
/// the link stays up; taking it down flushed them already). Best effort, like
/// [`set_gateway_neighbours`].
async fn forget_old_gateways(h: &Handle, index: u32, plan: &Plan) {
    for op in &plan.routes {
        if let RouteOp::Delete(g) = *op
            && let Err(e) = delete_neighbour(h, neighbour_key(index, g), g).await
        {
            warn!(gateway = %g, error = %e, "deleting the workload's neighbour entry of its old gateway failed");
        }
    }
}

/// Deletes the entry `key` (of `addr`); one that is not there counts as done. Returns
/// whether there was one.
async fn delete_neighbour(
    h: &Handle,
    key: NeighbourMessage,
    addr: IpAddr,
) -> Result<bool, RealizeError> {
    match h.neighbours().del(key).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENOENT => Ok(false),
        Err(e) => Err(nl(format!("deleting the neighbour entry of {addr}"))(e)),
    }
}

/// The key of `addr`'s entry on device `ifindex` (for a get or a delete).
fn neighbour_key(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(addr);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    msg
}

/// The hypervisor's neighbour entries (ARP / NDP cache) of a workload's new addresses, in
/// its namespace, set to the workload's hardware address `mac` (packets held by an entry
/// still resolving are sent at once); deleted instead when `mac` is not known. Each
/// address is looked up where it lives (the route's output device, then that one entry),
/// never by listing the table: the kernel's neighbour table is shared by every namespace
/// of the host. Permanent and no-ARP entries are configuration, not cache: left alone.
/// Returns the entries changed.
async fn set_neighbours(
    h: &Handle,
    new: &[IpAddr],
    mac: Option<&[u8]>,
) -> Result<usize, RealizeError> {
    let Some(mac) = mac else {
        return flush_neighbours(h, new).await;
    };
    let mut changed = 0;
    for &addr in new {
        // Only where the address is on a link of this namespace (behind a gateway it has
        // no entry here).
        let Some((oif, true)) = route_device(h, addr).await? else {
            continue;
        };
        if neighbour_entry(h, oif, addr).await?.is_some_and(|e| {
            matches!(
                e.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            )
        }) {
            continue;
        }
        h.neighbours()
            .add(oif, addr)
            .link_local_address(mac)
            .state(NeighbourState::Reachable)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("setting the neighbour entry of {addr}")))?;
        changed += 1;
    }
    Ok(changed)
}

/// Deletes the neighbour entries of `addresses` (see [`set_neighbours`]).
async fn flush_neighbours(h: &Handle, addresses: &[IpAddr]) -> Result<usize, RealizeError> {
    let mut flushed = 0;
    for &addr in addresses {
        let Some((oif, _)) = route_device(h, addr).await? else {
            continue;
        };
        let Some(entry) = neighbour_entry(h, oif, addr).await? else {
            continue;
        };
        if matches!(
            entry.header.state,
            NeighbourState::Permanent | NeighbourState::Noarp
        ) {
            continue;
        }
        if delete_neighbour(h, entry, addr).await? {
            flushed += 1;
        }
    }
    Ok(flushed)
}

fn family_of(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Sends one (non-dump) request; returns its answer, `None` when the kernel says `missing`.
async fn request_one(
    h: &Handle,
    msg: RouteNetlinkMessage,
    missing: &[i32],
    op: &str,
) -> Result<Option<RouteNetlinkMessage>, RealizeError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST;
    let mut answers = h.clone().request(req).map_err(nl(op))?;
    let mut found = None;
    while let Some(m) = answers.next().await {
        match m.payload {
            NetlinkPayload::InnerMessage(inner) => found = Some(inner),
            NetlinkPayload::Error(e) if missing.contains(&-e.raw_code()) => return Ok(None),
            NetlinkPayload::Error(e) => return Err(nl(op)(rtnetlink::Error::NetlinkError(e))),
            _ => {}
        }
    }
    Ok(found)
}

/// The device the namespace would send to `addr` through (a route lookup, as `ip route get`),
/// and whether `addr` is on that device's link (no gateway in between).
async fn route_device(h: &Handle, addr: IpAddr) -> Result<Option<(u32, bool)>, RealizeError> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(addr);
    msg.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    msg.attributes.push(RouteAttribute::Destination(match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }));
    let op = format!("looking up the route to {addr}");
    let missing = [
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::ENOENT,
        libc::ESRCH,
    ];
    Ok(
        match request_one(h, RouteNetlinkMessage::GetRoute(msg), &missing, &op).await? {
            Some(RouteNetlinkMessage::NewRoute(r)) => {
                let on_link = !r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Gateway(_)));
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some((*i, on_link)),
                    _ => None,
                })
            }
            _ => None,
        },
    )
}

/// The hardware address of the device that holds `addr` as one of its own addresses.
async fn local_address_mac(h: &Handle, addr: IpAddr) -> Result<Option<Vec<u8>>, RealizeError> {
    let mut addrs = h.address().get().set_address_filter(addr).execute();
    let mut index = None;
    while let Some(m) = addrs
        .try_next()
        .await
        .map_err(nl(format!("looking for {addr} among the addresses")))?
    {
        if address_of(&m).is_some_and(|c| c.addr == addr) {
            index = Some(m.header.index);
            break;
        }
    }
    let Some(index) = index else {
        return Ok(None);
    };
    let link = h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .map_err(nl("reading the gateway's device"))?;
    Ok(link.as_ref().and_then(hardware_address))
}

/// The neighbour entry for `addr` on device `ifindex`, if there is one.
async fn neighbour_entry(
    h: &Handle,
    ifindex: u32,
    addr: IpAddr,
) -> Result<Option<NeighbourMessage>, RealizeError> {
    let msg = neighbour_key(ifindex, addr);
    let op = format!("looking up the neighbour entry of {addr}");
    Ok(
        match request_one(
            h,
            RouteNetlinkMessage::GetNeighbour(msg),
            &[libc::ENOENT],
            &op,
        )
        .await?
        {
            Some(RouteNetlinkMessage::NewNeighbour(n)) => Some(n),
            _ => None,
        },
    )
}

#[cfg(test)]
pub(super) async fn read_current_for_tests(h: &Handle, index: u32) -> Current {
    read_current(h, index).await.expect("reading the device").0
}
