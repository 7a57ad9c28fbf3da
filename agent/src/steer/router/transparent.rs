//! The client's address kept on the router's upstream connections, so the servers behind
//! a request router see who connects to them (their logs, `pg_hba.conf`, per-client
//! limits), not their own address.
//!
//! An upstream socket is made in the server's namespace (O's or T's, [`super::sockets`])
//! and connects to the server's own address there, over `lo`. Here it also:
//! - is bound to the client's address and port (`IP_TRANSPARENT`: an address that is not
//!   the namespace's; a port `connect` picks when the client's is still taken here);
//! - carries [`MARK`] (`SO_MARK`), so its SYN does.
//!
//! And the side's namespace is prepared once per router ([`prepare_here`]):
//! - `net.ipv4.tcp_fwmark_accept = 1`: a connection the server accepts takes its SYN's
//!   mark (for IPv6 too). Packets that come in from outside carry no mark (it is
//!   cleared when they cross into the namespace), so other connections keep mark 0;
//! - `net.ipv4.tcp_tw_reuse = 1` (IPv6 too): the router closes its connection first when
//!   the client goes, so its port waits in TIME_WAIT; the default (2) reuses only
//!   loopback addresses', and one client address could then open only as many routed
//!   connections per minute as the namespace has ephemeral ports (28,232: about 470 a
//!   second, e.g. from a NAT gateway or a load balancer). Reused a second on instead;
//! - `net.ipv4.fwmark_reflect = 1` and `net.ipv6.fwmark_reflect = 1`: what the kernel
//!   sends in reply to a marked packet (the reset of a closed port, the node firewall's
//!   reset of a client its rules do not let in) carries the mark too, so it reaches the
//!   router over `lo` and its `connect` fails at once; without them the reset went out
//!   of eth0 towards the client's address and the router waited for its connect
//!   timeout (5 s). Packets without the mark are answered as before;
//! - `ip rule add fwmark MARK lookup TABLE` (IPv4 and IPv6) with `local default dev lo`
//!   in TABLE: the server's answers to the client's address are delivered in the
//!   namespace, to the router's socket, instead of going out of eth0 to the client.
//!
//! No NAT, no TPROXY rules. The node's firewall (the agent's own ruleset) judges these
//! connections as the client's: its loopback rule leaves out packets with [`MARK`]
//! ([`weft_firewall::ROUTED_MARK`]), so the node's rules see the client's address and
//! a client they do not let in gets no connection through the router either.
//! Undone by [`undo`] when the router is removed.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tokio::net::TcpSocket;

/// The mark of a router's upstream packets (and, through `tcp_fwmark_accept`, of the
/// servers' answers to them). "WF" and 1: the node firewall's own, so that its loopback
/// rule leaves these connections to the node's rules.
pub const MARK: u32 = weft_firewall::ROUTED_MARK;
/// The routing table holding `local default dev lo` for marked packets.
pub const TABLE: u32 = 0x5746;
/// The rule's priority: after the local table's (0), before main's (32766).
pub const RULE_PRIORITY: u32 = 0x5746;

const LOOPBACK_INDEX: u32 = 1;
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";
const TW_REUSE: &str = "/proc/sys/net/ipv4/tcp_tw_reuse";
const FWMARK_REFLECT: &str = "/proc/sys/net/ipv4/fwmark_reflect";
const FWMARK_REFLECT_V6: &str = "/proc/sys/net/ipv6/fwmark_reflect";

/// Prepares the calling thread's network namespace (see the module doc). Idempotent.
pub fn prepare_here() -> io::Result<()> {
    for (path, value) in [(FWMARK_ACCEPT, "1"), (TW_REUSE, "1"), (FWMARK_REFLECT, "1")] {
        std::fs::write(path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("setting {path}: {e}")))?;
    }
    // A kernel without IPv6 has no such file: its clients are IPv4 only.
    if let Err(e) = std::fs::write(FWMARK_REFLECT_V6, "1") {
        tracing::debug!(error = %e, "request router: {FWMARK_REFLECT_V6} not set");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        // The socket is made in this thread's namespace.
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        let made = routes_and_rules(&handle).await;
        task.abort();
        made
    })
}

/// `local default dev lo table TABLE` (IPv4).
fn local_default_v4() -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(TABLE)
        .output_interface(LOOPBACK_INDEX)
        .build()
}

/// `local default dev lo table TABLE` (IPv6).
fn local_default_v6() -> RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(TABLE)
        .output_interface(LOOPBACK_INDEX)
        .build()
}

async fn routes_and_rules(handle: &Handle) -> io::Result<()> {
    let nl = |what: &str| {
        let what = what.to_owned();
        move |e: rtnetlink::Error| io::Error::other(format!("{what}: {e}"))
    };
    handle
        .route()
        .add(local_default_v4())
        .replace()
        .execute()
        .await
        .map_err(nl("local default dev lo (IPv4)"))?;
    // A namespace without IPv6 (disabled) has IPv4 only: that is enough for its clients.
    if let Err(e) = handle
        .route()
        .add(local_default_v6())
        .replace()
        .execute()
        .await
    {
        tracing::debug!(error = %e, "request router: no IPv6 local route for client addresses");
    }
    for v6 in [false, true] {
        if !ours(handle, v6).await?.is_empty() {
            continue;
        }
        let add = handle
            .rule()
            .add()
            .fw_mark(MARK)
            .table_id(TABLE)
            .priority(RULE_PRIORITY)
            .action(RuleAction::ToTable);
        let added = if v6 {
            add.v6().execute().await
        } else {
            add.v4().execute().await
        };
        match added {
            Ok(()) => {}
            Err(e) if v6 => {
                tracing::debug!(error = %e, "request router: no IPv6 rule for client addresses")
            }
            Err(e) => return Err(nl("fwmark rule (IPv4)")(e)),
        }
    }
    Ok(())
}

/// This module's rules (by mark and priority) of one family.
async fn ours(handle: &Handle, v6: bool) -> io::Result<Vec<RuleMessage>> {
    let version = if v6 { IpVersion::V6 } else { IpVersion::V4 };
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(|e| io::Error::other(format!("listing rules: {e}")))?;
    Ok(rules
        .into_iter()
        .filter(|r| {
            r.attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::FwMark(m) if *m == MARK))
                && r.attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Priority(p) if *p == RULE_PRIORITY))
        })
        .collect())
}

/// Removes what [`prepare_here`] made in `netns` (its rules and its table's routes; the
/// sysctls stay: `tcp_fwmark_accept` and `fwmark_reflect` change nothing without the
/// mark, and
/// `tcp_tw_reuse = 1` only lets the namespace's own connections reuse TIME_WAIT ports a
/// second on, as it did while routed). Gone already is fine.
pub async fn undo(netns: &Path) -> io::Result<usize> {
    if !crate::networks::namespaces::is_mounted(netns) {
        return Ok(0);
    }
    let conn = crate::realize::netns::connect(Some(netns))
        .await
        .map_err(|e| io::Error::other(format!("netlink in {}: {e}", netns.display())))?;
    let handle = &conn.handle;
    let mut removed = 0;
    for v6 in [false, true] {
        for r in ours(handle, v6).await.unwrap_or_default() {
            if handle.rule().del(r).execute().await.is_ok() {
                removed += 1;
            }
        }
    }
    for route in [local_default_v4(), local_default_v6()] {
        if handle.route().del(route).execute().await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn set_int(fd: i32, level: i32, option: i32, value: i32, name: &str) -> io::Result<()> {
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{name}: {e}")))
    }
}

/// Gives `socket` [`MARK`]: the node's firewall judges its connection by its source
/// address, not as loopback. Every upstream connection carries it, also those that leave
/// from the server's own address (a client address that cannot be kept): the node's
/// rules then judge them as the node's own, and by default do not let them in.
pub fn mark(socket: &TcpSocket) -> io::Result<()> {
    set_int(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_MARK,
        MARK as i32,
        "SO_MARK",
    )
}

/// Makes `socket` (not connected yet, [`mark`]ed) leave from `client`: transparent, bound
/// to the client's address and, with `own_port`, its port, so the server sees the
/// client's address and port as they were. The client's port is also why a routed
/// connection cannot collide with one the client made straight to the server before the
/// route (still open here): the client's kernel never gives two of its connections to
/// one server the same port. Without `own_port` (or when that port cannot be bound) the
/// port is left to `connect` (`IP_BIND_ADDRESS_NO_PORT`: one unique for the four-tuple).
pub fn bind_as(socket: &TcpSocket, client: SocketAddr, own_port: bool) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    if client.is_ipv6() {
        set_int(
            fd,
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            1,
            "IPV6_TRANSPARENT",
        )?;
    } else {
        set_int(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1, "IP_TRANSPARENT")?;
    }
    if own_port && client.port() != 0 {
        // The router's earlier connections from this port may still be in TIME_WAIT
        // here: `connect` decides (reusing them a second on, `tcp_tw_reuse`).
        socket.set_reuseaddr(true)?;
        if socket.bind(client).is_ok() {
            return Ok(());
        }
    }
    set_int(
        fd,
        libc::SOL_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
        "IP_BIND_ADDRESS_NO_PORT",
    )?;
    let ip = client.ip();
    socket
        .bind(SocketAddr::new(ip, 0))
        .map_err(|e| io::Error::new(e.kind(), format!("binding to {ip}: {e}")))
}
