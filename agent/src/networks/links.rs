//! The netlink operations of the network kinds, one request each, so that a caller can
//! run many at once on one connection (rtnetlink pipelines them).

use std::net::IpAddr;

use futures::TryStreamExt as _;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};

use super::spec::{VXLAN_PORT, VxlanSpec};
use crate::realize::Cidr;

#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct LinkError {
    pub op: String,
    pub source: rtnetlink::Error,
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError { op, source }
}

/// What the kernel says of one link, in the terms the network kinds compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
}

impl LinkState {
    pub fn of(msg: &LinkMessage) -> Self {
        let mut s = LinkState {
            index: msg.header.index,
            name: String::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            mtu: 0,
            controller: None,
            kind: None,
            vni: None,
            local: None,
        };
        for a in &msg.attributes {
            match a {
                LinkAttribute::IfName(n) => s.name = n.clone(),
                LinkAttribute::Mtu(m) => s.mtu = *m,
                LinkAttribute::Controller(c) => s.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => s.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => {
                                for x in v {
                                    match x {
                                        InfoVxlan::Id(id) => s.vni = Some(*id),
                                        InfoVxlan::Local(a) => s.local = Some(IpAddr::V4(*a)),
                                        InfoVxlan::Local6(a) => s.local = Some(IpAddr::V6(*a)),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        s
    }
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if matches!(-m.raw_code(), libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL))
}

/// The link called `name`, if there is one.
pub async fn by_name(h: &Handle, name: &str) -> Result<Option<LinkState>, LinkError> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m.as_ref().map(LinkState::of)),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(nl(format!("reading link {name}"))(e)),
    }
}

/// Deletes link `index`; gone already is fine.
pub async fn delete(h: &Handle, index: u32, name: &str) -> Result<(), LinkError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(nl(format!("deleting link {name}"))(e)),
    }
}

/// Sets up/mtu/controller of `index` as given (`None`: leave as is).
pub async fn set(
    h: &Handle,
    index: u32,
    name: &str,
    up: bool,
    mtu: Option<u32>,
    controller: Option<u32>,
) -> Result<(), LinkError> {
    let mut b = LinkUnspec::new_with_index(index);
    b = if up { b.up() } else { b.down() };
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    if let Some(c) = controller {
        b = b.controller(c);
    }
    h.link()
        .set(b.build())
        .execute()
        .await
        .map_err(nl(format!("setting link {name}")))
}

/// `IN6_ADDR_GEN_MODE_NONE` (linux/if_link.h): the kernel makes no IPv6 link-local
/// address on the link.
const IN6_ADDR_GEN_MODE_NONE: u8 = 1;

/// The attribute that turns the kernel's IPv6 link-local address off on a link
/// (`ip link set DEV addrgenmode none`). It cannot be given when a link is made (the
/// kernel refuses IFLA_AF_SPEC in RTM_NEWLINK), only set before the link comes up.
fn no_link_local() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        IN6_ADDR_GEN_MODE_NONE,
    )])])
}

/// Sets `index` up (and its MTU) in one request, with no IPv6 link-local address when
/// `link_local` is false. A link without one sends no duplicate address detection and no
/// MLD reports when it comes up: on a bridge of N ports each of those is flooded to every
/// port, which made bringing up N nodes cost O(N^2) packets (measured with `ip -batch` at
/// 1,000 nodes: 6.3 s with link-local addresses, 4.2 s without).
pub async fn set_up(
    h: &Handle,
    index: u32,
    name: &str,
    mtu: Option<u32>,
    link_local: bool,
) -> Result<(), LinkError> {
    let mut b = LinkUnspec::new_with_index(index).up();
    if let Some(m) = mtu {
        b = b.mtu(m);
    }
    let mut msg = b.build();
    if !link_local {
        msg.attributes.push(no_link_local());
    }
    h.link()
        .set(msg)
        .execute()
        .await
        .map_err(nl(format!("setting link {name} up")))
}

/// Creates bridge `name`, up.
pub async fn add_bridge(h: &Handle, name: &str, mtu: u32) -> Result<(), LinkError> {
    h.link()
        .add(LinkBridge::new(name).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(nl(format!("creating bridge {name}")))
}

/// Creates VXLAN device `name` as `v` says, a port of `bridge`, up.
pub async fn add_vxlan(
    h: &Handle,
    name: &str,
    v: &VxlanSpec,
    mtu: u32,
    bridge: u32,
) -> Result<(), LinkError> {
    let b = LinkVxlan::new(name, v.vni).port(VXLAN_PORT).learning(true);
    let b = match v.local {
        IpAddr::V4(a) => b.local(a),
        IpAddr::V6(a) => b.local6(a),
    };
    h.link()
        .add(b.mtu(mtu).controller(bridge).up().build())
        .execute()
        .await
        .map_err(nl(format!("creating VXLAN device {name} (vni {})", v.vni)))
}

/// Creates the veth `host` (a port of `bridge`, up, without an IPv6 link-local address: a
/// bridge port needs none) whose peer is [`super::names::NODE_IF`] inside the namespace
/// of `netns_fd`. Two requests: the link is made down, then set up with its address
/// generation off (see [`set_up`]).
pub async fn add_node_veth(
    h: &Handle,
    host: &str,
    netns_fd: std::os::fd::RawFd,
    mtu: u32,
    bridge: u32,
) -> Result<(), LinkError> {
    add_veth(h, host, netns_fd, mtu, Some(bridge)).await
}

/// [`add_node_veth`], the host end a port of `bridge` or of none.
pub async fn add_veth(
    h: &Handle,
    host: &str,
    netns_fd: std::os::fd::RawFd,
    mtu: u32,
    bridge: Option<u32>,
) -> Result<(), LinkError> {
    // Not up here: the kernel opens the peer before the pair is linked, and a veth
    // without its peer refuses to open (ENOTCONN); the caller sets it up.
    let peer = LinkUnspec::new_with_name(super::names::NODE_IF)
        .mtu(mtu)
        .setns_by_fd(netns_fd)
        .build();
    let mut b = LinkVeth::new(host, super::names::NODE_IF).mtu(mtu);
    if let Some(bridge) = bridge {
        b = b.controller(bridge);
    }
    let mut msg = b.build();
    for a in &mut msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(v)) = i {
                    *v = InfoVeth::Peer(peer.clone());
                }
            }
        }
    }
    debug_assert!(
        msg.attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkInfo(i)
        if i.iter().any(|x| matches!(x, LinkInfo::Kind(InfoKind::Veth)))))
    );
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl(format!("creating veth {host}")))?;
    let mut up = LinkUnspec::new_with_name(host).up().build();
    up.attributes.push(no_link_local());
    h.link()
        .set(up)
        .execute()
        .await
        .map_err(nl(format!("setting veth {host} up")))
}

async fn request_ack(
    h: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
    op: String,
) -> Result<(), LinkError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut answers = h.clone().request(req).map_err(nl(op.clone()))?;
    while let Some(m) = futures::StreamExt::next(&mut answers).await {
        if let NetlinkPayload::Error(e) = m.payload
            && e.code.is_some()
        {
            return Err(nl(op)(rtnetlink::Error::NetlinkError(e)));
        }
    }
    Ok(())
}

fn flood_entry(index: u32, peer: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    // The VXLAN device's own table, not the bridge's it is a port of (which refuses an
    // all-zero address).
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLocalAddress(vec![0; 6]));
    m.attributes
        .push(NeighbourAttribute::Destination(match peer {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m
}

/// Adds `peer` to the flood list of VXLAN device `index` (`bridge fdb append 00:00:00:00:00:00
/// dev ... dst PEER`).
pub async fn add_flood_peer(h: &Handle, index: u32, peer: IpAddr) -> Result<(), LinkError> {
    request_ack(
        h,
        RouteNetlinkMessage::NewNeighbour(flood_entry(index, peer)),
        NLM_F_CREATE | NLM_F_APPEND,
        format!("adding VXLAN flood peer {peer}"),
    )
    .await
}

pub async fn del_flood_peer(h: &Handle, index: u32, peer: IpAddr) -> Result<(), LinkError> {
    request_ack(
        h,
        RouteNetlinkMessage::DelNeighbour(flood_entry(index, peer)),
        0,
        format!("removing VXLAN flood peer {peer}"),
    )
    .await
}

/// The flood list (all-zero MAC entries) of VXLAN device `index`.
pub async fn flood_peers(h: &Handle, index: u32) -> Result<Vec<IpAddr>, LinkError> {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let op = "reading the VXLAN flood list".to_string();
    let mut answers = h.clone().request(req).map_err(nl(op.clone()))?;
    let mut out = Vec::new();
    while let Some(msg) = futures::StreamExt::next(&mut answers).await {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                if n.header.ifindex == index =>
            {
                let zero = n.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::LinkLocalAddress(l) if l.iter().all(|b| *b == 0))
                });
                if !zero {
                    continue;
                }
                for a in &n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            out.push(IpAddr::V4(*ip));
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                            out.push(IpAddr::V6(*ip));
                        }
                        // Bridge-family entries carry the address without its family.
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            if let Ok(a) = <[u8; 4]>::try_from(b.as_slice()) {
                                out.push(IpAddr::from(a));
                            } else if let Ok(a) = <[u8; 16]>::try_from(b.as_slice()) {
                                out.push(IpAddr::from(a));
                            }
                        }
                        _ => {}
                    }
                }
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(nl(op)(rtnetlink::Error::NetlinkError(e)));
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Global addresses on link `index` (link-local ones are the kernel's).
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<Cidr>, LinkError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("reading addresses"))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.index != index || m.header.scope != AddressScope::Universe {
            continue;
        }
        let addr = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(addr) = addr {
            out.push(Cidr {
                addr,
                prefix: m.header.prefix_len,
            });
        }
    }
    out.sort_by_key(|c| (c.addr, c.prefix));
    Ok(out)
}

/// Adds `c` to interface `index`. IPv6 without duplicate address detection: a node's
/// addresses come from its network's shards, one node each (a mirror's copy has the same
/// address on a segment of its own), and detection would only keep the address
/// tentative, unusable, for a second or more after the node is reported ready.
pub async fn add_address(h: &Handle, index: u32, c: Cidr) -> Result<(), LinkError> {
    let mut req = h.address().add(index, c.addr, c.prefix);
    if c.addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::EEXIST => Ok(()),
        Err(e) => Err(nl(format!("adding address {c}"))(e)),
    }
}

pub async fn del_address(h: &Handle, index: u32, c: Cidr) -> Result<(), LinkError> {
    let mut m = AddressMessage::default();
    m.header.family = match c.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.index = index;
    m.header.prefix_len = c.prefix;
    m.attributes.push(AddressAttribute::Local(c.addr));
    m.attributes.push(AddressAttribute::Address(c.addr));
    match h.address().del(m).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(e) => Err(nl(format!("removing address {c}"))(e)),
    }
}

/// The default gateways of the main table through link `index`.
pub async fn default_gateways(h: &Handle, index: u32) -> Result<Vec<IpAddr>, LinkError> {
    let mut out = Vec::new();
    for v in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let routes: Vec<RouteMessage> = h
            .route()
            .get(match v {
                rtnetlink::IpVersion::V4 => {
                    rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
                }
                rtnetlink::IpVersion::V6 => {
                    rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
                }
            })
            .execute()
            .try_collect()
            .await
            .map_err(nl("reading routes"))?;
        for r in routes {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif != Some(index) {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Gateway(g) = a {
                    match g {
                        rtnetlink::packet_route::route::RouteAddress::Inet(ip) => {
                            out.push(IpAddr::V4(*ip));
                        }
                        rtnetlink::packet_route::route::RouteAddress::Inet6(ip) => {
                            out.push(IpAddr::V6(*ip));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sets the default route of `gateway`'s family to go through `gateway` on `index`.
pub async fn replace_default_route(
    h: &Handle,
    index: u32,
    gateway: IpAddr,
) -> Result<(), LinkError> {
    let msg = match gateway {
        IpAddr::V4(g) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .gateway(g)
            .output_interface(index)
            .build(),
        IpAddr::V6(g) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .gateway(g)
            .output_interface(index)
            .build(),
    };
    h.route()
        .add(msg)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("setting the default route via {gateway}")))
}
