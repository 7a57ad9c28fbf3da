//! Carries a [`Plan`] out on a workload's device inside its network namespace, and reads
//! the device back. Workloads are independent: one whose namespace or device is missing
//! gets an error, the others still apply.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressFlags, AddressMessage},
    link::LinkFlags,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType},
};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tracing::{info, warn};

use super::diff::{Cidr, Current, Managed, Plan, RouteOp, is_link_local, plan};
use super::{DesiredWorkload, RealizeError, netns};
use crate::config::WorkloadSpec;

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
    /// Neighbour entries for replaced addresses removed on the hypervisor side.
    pub neighbours_flushed: usize,
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
    /// Where neighbour entries of replaced addresses are flushed (the hypervisor side);
    /// `None` = the agent's own namespace.
    neighbour_netns: Option<PathBuf>,
    /// Per workload: which addresses are weft's. In memory: an agent restart forgets the
    /// addresses of earlier states (ranges of current desired addresses still count).
    managed: Mutex<HashMap<String, Managed>>,
    /// How a re-address is carried out.
    readdress_mode: ReaddressMode,
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
        let targets = specs
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
        Self {
            targets,
            neighbour_netns: None,
            managed: Mutex::new(HashMap::new()),
            readdress_mode: ReaddressMode::default(),
        }
    }

    pub fn with_readdress_mode(mut self, mode: ReaddressMode) -> Self {
        self.readdress_mode = mode;
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

    /// Applies a host's full desired state. Workloads that had managed addresses before
    /// but are absent now are emptied (level-triggered). Reports come back sorted by name.
    pub async fn apply(&self, desired: Vec<DesiredWorkload>) -> Vec<Applied> {
        let mut all: Vec<(DesiredWorkload, bool)> = desired.into_iter().map(|w| (w, true)).collect();
        let remembered: Vec<String> = self.managed().keys().cloned().collect();
        for name in remembered {
            if !all.iter().any(|(w, _)| w.name == name) {
                all.push((DesiredWorkload { name, addresses: Vec::new() }, false));
            }
        }
        let results: Vec<(Applied, bool, bool)> = futures::stream::iter(all)
            .map(|(w, asked)| async move {
                let (applied, gone) = self.apply_one(&w).await;
                (applied, gone, asked)
            })
            .buffer_unordered(PARALLEL_APPLIES)
            .collect()
            .await;
        let mut out = Vec::with_capacity(results.len());
        for (applied, gone, asked) in results {
            if !asked && gone {
                // No longer desired and its namespace or device is gone with its addresses:
                // nothing left to clean up or report.
                self.managed().remove(&applied.workload);
                continue;
            }
            out.push(applied);
        }
        out.sort_by(|a, b| a.workload.cmp(&b.workload));
        out
    }

    /// Brings one workload's device to its desired addresses and reads it back. Returns
    /// the report, and whether the workload's namespace or device does not exist.
    async fn apply_one(&self, w: &DesiredWorkload) -> (Applied, bool) {
        let mut applied = Applied { workload: w.name.clone(), ..Default::default() };
        let Some(target) = self.targets.get(&w.name) else {
            applied.error = Some(RealizeError::UnknownWorkload(w.name.clone()).to_string());
            return (applied, false);
        };
        let Some(netns_path) = target.netns.as_deref() else {
            applied.error = Some(RealizeError::NoNetns(w.name.clone()).to_string());
            return (applied, false);
        };
        let conn = match netns::connect(Some(netns_path)).await {
            Ok(c) => c,
            Err(e) => {
                let gone = matches!(&e, RealizeError::NetnsOpen { source, .. } if source.kind() == std::io::ErrorKind::NotFound);
                applied.error = Some(e.to_string());
                return (applied, gone);
            }
        };
        let h = &conn.handle;
        let index = match link_index(h, target).await {
            Ok(i) => i,
            Err(e) => {
                let gone = matches!(e, RealizeError::NoDevice { .. });
                applied.error = Some(e.to_string());
                return (applied, gone);
            }
        };
        let result = self.reconcile(h, index, w, target, &mut applied).await;
        match read_current(h, index).await {
            Ok((current, _)) => {
                if result.is_ok() {
                    let mut m = self.managed();
                    if let Some(managed) = m.get_mut(&w.name) {
                        managed.prune(&w.addresses, &current.addresses);
                    }
                }
                applied.link_up = current.link_up;
                applied.addresses =
                    current.addresses.into_iter().filter(|c| !is_link_local(&c.addr)).collect();
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
        index: u32,
        w: &DesiredWorkload,
        target: &Target,
        applied: &mut Applied,
    ) -> Result<(), RealizeError> {
        let (current, messages) = read_current(h, index).await?;
        let managed = {
            let mut m = self.managed();
            let managed = m
                .entry(w.name.clone())
                .or_insert_with(|| Managed::with_statics(target.statics.iter().copied()));
            // Learnt before acting: a half-applied state is still recognised as weft's.
            managed.learn(&w.addresses);
            managed.clone()
        };
        let plan = plan(&w.addresses, &current, &managed);
        if plan.is_empty() {
            return Ok(());
        }
        let down = if plan.readdress && self.readdress_mode == ReaddressMode::MakeBeforeBreak {
            make_before_break(h, index, &plan, &messages, &mut applied.changes).await?
        } else {
            execute(h, index, &plan, &messages, &mut applied.changes).await?
        };
        applied.readdress_down = down;
        if let Some(d) = down {
            info!(
                workload = %w.name,
                removed = ?plan.remove.iter().map(ToString::to_string).collect::<Vec<_>>(),
                added = ?plan.add.iter().map(ToString::to_string).collect::<Vec<_>>(),
                down_us = d.as_micros() as u64,
                "re-addressed"
            );
            // Old addresses: the hypervisor must stop sending to this MAC for them. New
            // ones: an entry left FAILED by traffic that arrived before the address existed
            // would hold packets back until it expires.
            let old: Vec<IpAddr> = plan.remove.iter().chain(&plan.add).map(|c| c.addr).collect();
            match flush_neighbours(self.neighbour_netns.as_deref(), &old).await {
                Ok(n) => applied.neighbours_flushed = n,
                Err(e) => warn!(workload = %w.name, error = %e, "flushing neighbours of the old address failed"),
            }
        }
        Ok(())
    }
}

async fn link_index(h: &Handle, target: &Target) -> Result<u32, RealizeError> {
    let no_device = || RealizeError::NoDevice { device: target.device.clone(), netns: target.netns_label.clone() };
    let mut links = h.link().get().match_name(target.device.clone()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) => Err(no_device()),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::ENODEV => Err(no_device()),
        Err(e) => Err(nl(format!("looking up device {:?}", target.device))(e)),
    }
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
    let oif = msg.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
    if msg.header.destination_prefix_length != 0 || table != main || msg.header.kind != RouteType::Unicast || !oif {
        return None;
    }
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
        _ => None,
    })
}

async fn list_addresses(h: &Handle, index: u32) -> Result<Vec<(Cidr, AddressMessage)>, RealizeError> {
    let messages: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    Ok(messages.into_iter().filter_map(|m| Some((address_of(&m)?, m))).collect())
}

/// The device's addresses (with their netlink messages, for deletion), link state and
/// default routes.
async fn read_current(h: &Handle, index: u32) -> Result<(Current, Vec<(Cidr, AddressMessage)>), RealizeError> {
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
    for family in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
        let routes: Vec<RouteMessage> =
            h.route().get(family).execute().try_collect().await.map_err(nl("listing routes"))?;
        current.default_gateways.extend(routes.iter().filter_map(|r| default_gateway(r, index)));
    }
    Ok((current, messages))
}

fn default_route(index: u32, gateway: IpAddr) -> RouteMessage {
    match gateway {
        IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(g).output_interface(index).build(),
        IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(g).output_interface(index).build(),
    }
}

async fn set_link(h: &Handle, index: u32, up: bool) -> Result<(), RealizeError> {
    let msg = if up {
        LinkUnspec::new_with_index(index).up().build()
    } else {
        LinkUnspec::new_with_index(index).down().build()
    };
    h.link().set(msg).execute().await.map_err(nl(if up { "setting the link up" } else { "setting the link down" }))
}

/// Re-addresses without taking the link down: new addresses, then the default routes
/// through the new gateways, then the old routes and addresses go. Returns a zero down
/// time (the link stayed up).
async fn make_before_break(
    h: &Handle,
    index: u32,
    plan: &Plan,
    messages: &[(Cidr, AddressMessage)],
    changes: &mut usize,
) -> Result<Option<Duration>, RealizeError> {
    add_addresses(h, index, &plan.add, changes).await?;
    if plan.link_up {
        set_link(h, index, true).await?;
        *changes += 1;
    }
    replace_routes(h, index, plan, changes).await?;
    delete_routes(h, index, plan, changes).await?;
    remove_addresses(h, plan, messages, changes).await?;
    Ok(Some(Duration::ZERO))
}

/// Runs the plan; returns how long the link was down when re-addressing.
async fn execute(
    h: &Handle,
    index: u32,
    plan: &Plan,
    messages: &[(Cidr, AddressMessage)],
    changes: &mut usize,
) -> Result<Option<Duration>, RealizeError> {
    let mut down_since = None;
    let mut restore = Vec::new();
    if plan.readdress {
        set_link(h, index, false).await?;
        down_since = Some(Instant::now());
        *changes += 1;
        // Taking a link down drops all its IPv6 addresses (keep_addr_on_down = 0, the
        // default): whatever was there and stays wanted is put back before it comes up.
        let now = list_addresses(h, index).await?;
        restore = messages
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| {
                !plan.remove.contains(c)
                    && !plan.add.contains(c)
                    && !is_link_local(&c.addr)
                    && !now.iter().any(|(n, _)| n == c)
            })
            .collect();
    }
    // Routes go before the addresses they leave through (the kernel drops an IPv4 route
    // whose gateway became unreachable itself: already gone counts as done).
    delete_routes(h, index, plan, changes).await?;
    remove_addresses(h, plan, messages, changes).await?;
    let adds: Vec<Cidr> = plan.add.iter().chain(&restore).copied().collect();
    add_addresses(h, index, &adds, changes).await?;
    let mut down = None;
    if plan.link_up {
        set_link(h, index, true).await?;
        down = down_since.map(|t| t.elapsed());
        *changes += 1;
    }
    replace_routes(h, index, plan, changes).await?;
    Ok(down)
}

async fn add_addresses(h: &Handle, index: u32, cidrs: &[Cidr], changes: &mut usize) -> Result<(), RealizeError> {
    for cidr in cidrs {
        let mut req = h.address().add(index, cidr.addr, cidr.prefix);
        if cidr.addr.is_ipv6() {
            // The controller hands each address to one workload: duplicate address
            // detection would only keep it tentative (unusable) for a second or more.
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
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
            h.address().del(msg.clone()).execute().await.map_err(nl(format!("removing {cidr}")))?;
            *changes += 1;
        }
    }
    Ok(())
}

async fn replace_routes(h: &Handle, index: u32, plan: &Plan, changes: &mut usize) -> Result<(), RealizeError> {
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
async fn delete_routes(h: &Handle, index: u32, plan: &Plan, changes: &mut usize) -> Result<(), RealizeError> {
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

/// Deletes neighbour entries (ARP / NDP cache) for `addresses` in a namespace, so the
/// hypervisor side does not keep sending to the MAC an old address had. Permanent and
/// no-ARP entries are configuration, not cache: left alone.
async fn flush_neighbours(netns: Option<&Path>, addresses: &[IpAddr]) -> Result<usize, RealizeError> {
    if addresses.is_empty() {
        return Ok(0);
    }
    let conn = netns::connect(netns).await?;
    let h = &conn.handle;
    let entries: Vec<_> =
        h.neighbours().get().execute().try_collect().await.map_err(nl("listing neighbours"))?;
    let mut flushed = 0;
    for e in entries {
        if matches!(e.header.state, NeighbourState::Permanent | NeighbourState::Noarp) {
            continue;
        }
        let dst = e.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        if dst.is_some_and(|d| addresses.contains(&d)) {
            h.neighbours().del(e).execute().await.map_err(nl("deleting a neighbour entry"))?;
            flushed += 1;
        }
    }
    Ok(flushed)
}

#[cfg(test)]
pub(super) async fn read_current_for_tests(h: &Handle, index: u32) -> Current {
    read_current(h, index).await.expect("reading the device").0
}
