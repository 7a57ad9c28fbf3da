//! Netlink for steering: the host's tunnel device (one metadata-mode VXLAN device, made
//! and kept by the agent), and what the programs need to know of a node (its interface's
//! MAC and addresses, read inside its namespace).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkMessageBuilder, LinkVxlan};

use crate::networks::{links, names};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Link(#[from] links::LinkError),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("node namespace {path}: {message}")]
    Namespace { path: String, message: String },
    #[error("{0}")]
    Missing(String),
}

/// The tunnel device as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelState {
    pub index: u32,
    pub up: bool,
    pub external: bool,
    pub port: Option<u16>,
}

fn tunnel_state(msg: &LinkMessage) -> TunnelState {
    let mut t = TunnelState {
        index: msg.header.index,
        up: msg
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up),
        external: false,
        port: None,
    };
    for a in &msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                if let LinkInfo::Data(InfoData::Vxlan(v)) = i {
                    for x in v {
                        match x {
                            InfoVxlan::CollectMetadata(m) => t.external = *m,
                            InfoVxlan::Port(p) => t.port = Some(*p),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    t
}

/// Makes sure the tunnel device `name` exists: metadata mode (`external`), UDP `port`,
/// no learning, up. A device of that name that is not that is replaced. Returns its index
/// and the writes made.
pub async fn ensure_tunnel(h: &Handle, name: &str, port: u16) -> Result<(u32, usize), NetError> {
    let mut changes = 0;
    let existing = match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => m.as_ref().map(tunnel_state),
        Err(rtnetlink::Error::NetlinkError(e)) if -e.raw_code() == libc::ENODEV => None,
        Err(source) => {
            return Err(NetError::Netlink {
                op: format!("reading link {name}"),
                source,
            });
        }
    };
    let existing = match existing {
        Some(t) if !t.external || t.port != Some(port) => {
            links::delete(h, t.index, name).await?;
            changes += 1;
            None
        }
        other => other,
    };
    let index = match existing {
        Some(t) => {
            if !t.up {
                links::set(h, t.index, name, true, None, None).await?;
                changes += 1;
            }
            t.index
        }
        None => {
            let msg = LinkMessageBuilder::<LinkVxlan>::new(name)
                .collect_metadata(true)
                .port(port)
                .learning(false)
                .up()
                .build();
            h.link()
                .add(msg)
                .execute()
                .await
                .map_err(|source| NetError::Netlink {
                    op: format!(
                        "creating the tunnel device {name} (vxlan external dstport {port})"
                    ),
                    source,
                })?;
            changes += 1;
            links::by_name(h, name)
                .await?
                .ok_or_else(|| {
                    NetError::Missing(format!("{name} is gone right after creating it"))
                })?
                .index
        }
    };
    Ok((index, changes))
}

/// Deletes the tunnel device if it is there; returns whether it was.
pub async fn remove_tunnel(h: &Handle, name: &str) -> Result<bool, NetError> {
    match links::by_name(h, name).await? {
        Some(l) => {
            links::delete(h, l.index, name).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// What steering needs of a node: its interface's MAC and first global IPv4 and IPv6
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIf {
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl NodeIf {
    /// The address a health check of the node connects to: IPv4 when it has one.
    pub fn check_address(&self) -> Option<std::net::IpAddr> {
        self.ipv4.map(Into::into).or(self.ipv6.map(Into::into))
    }
}

/// Reads the node's interface inside its namespace `netns`.
pub async fn node_interface(netns: &Path) -> Result<NodeIf, NetError> {
    let ns_err = |message: String| NetError::Namespace {
        path: netns.display().to_string(),
        message,
    };
    let conn = crate::realize::netns::connect(Some(netns))
        .await
        .map_err(|e| ns_err(e.to_string()))?;
    let h = &conn.handle;
    let msg = h
        .link()
        .get()
        .match_name(names::NODE_IF.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(|e| ns_err(format!("reading {}: {e}", names::NODE_IF)))?
        .ok_or_else(|| ns_err(format!("no {}", names::NODE_IF)))?;
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => {
                let mut out = [0u8; 6];
                out.copy_from_slice(m);
                Some(out)
            }
            _ => None,
        })
        .ok_or_else(|| ns_err(format!("{} has no MAC address", names::NODE_IF)))?;
    // Universe scope only: no link-local address.
    let addrs = links::addresses(h, msg.header.index).await?;
    let ipv4 = addrs.iter().find_map(|c| match c.addr {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(_) => None,
    });
    let ipv6 = addrs.iter().find_map(|c| match c.addr {
        std::net::IpAddr::V6(a) => Some(a),
        std::net::IpAddr::V4(_) => None,
    });
    Ok(NodeIf { mac, ipv4, ipv6 })
}

pub fn mac_text(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
