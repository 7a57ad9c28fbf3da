//! Steering: a share of the new TCP connections to a node (the origin) really goes to
//! another node with the same addresses (the target), decided at the client's SYN and kept
//! for the connection's life (see `agent/src/steer/mod.rs` for the whole design).
//!
//! Three classifiers, each looking its interface up in its own map and leaving every
//! packet it has no entry for untouched (`TC_ACT_UNSPEC`):
//! - `steer_origin`, egress of the origin's host-side interface (what goes into the
//!   origin), after the flow observer: decides at a SYN, then sends the packets of steered
//!   connections to the target's interface (same host) or through the tunnel device.
//! - `steer_return`, ingress of the target's host-side interface (what the target sends):
//!   answers of steered connections go into the origin's interface's ingress, as if the
//!   origin had sent them (same host), or back through the tunnel (target's host).
//! - `steer_tunnel`, ingress of the host's metadata-mode VXLAN device: answers coming back
//!   to the origin's host, or connections arriving at the target's host. The device
//!   carries steering only: what no steer knows is dropped.
//!
//! Only untagged Ethernet with IPv4 or IPv6 (no extension headers) and TCP is steered.

// Connection keys and values are passed by reference: by value (which clippy prefers for
// `impl Borrow<K>`) LLVM copies the 44-byte key onto the stack at every call and the
// program exceeds BPF's 512-byte stack.
#![allow(clippy::needless_borrows_for_generic_args)]

use agent_common::steer::{
    MAX_STEERS, STEER_CONN_ENTRIES, STEER_PORT_ENTRIES, SteerConn, SteerConnKey, SteerOrigin,
    SteerPortKey, SteerReturn, SteerStats, SteerTunnel, SteerTunnelKey, THRESHOLD_ALL, Underlay,
    decision_hash, family, role,
};
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_TUNINFO_IPV6, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_tunnel_key},
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::{classifier, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};

/// Origin interfaces (index) -> how their new connections are steered.
#[map(name = "STEER_ORIGINS")]
static STEER_ORIGINS: HashMap<u32, SteerOrigin> = HashMap::with_max_entries(MAX_STEERS, 0);

/// Steered ports of the steers that do not steer every port.
#[map(name = "STEER_PORTS")]
static STEER_PORTS: HashMap<SteerPortKey, u8> = HashMap::with_max_entries(STEER_PORT_ENTRIES, 0);

/// Target interfaces (index) -> where their answers go.
#[map(name = "STEER_RETURNS")]
static STEER_RETURNS: HashMap<u32, SteerReturn> = HashMap::with_max_entries(MAX_STEERS, 0);

/// (other host, tunnel id) -> what its packets are.
#[map(name = "STEER_TUNNELS")]
static STEER_TUNNELS: HashMap<SteerTunnelKey, SteerTunnel> =
    HashMap::with_max_entries(MAX_STEERS, 0);

/// Steered connections (origin's host) and connections received (target's host).
#[map(name = "STEER_CONNS")]
static STEER_CONNS: LruHashMap<SteerConnKey, SteerConn> =
    LruHashMap::with_max_entries(STEER_CONN_ENTRIES, 0);

#[map(name = "STEER_STATS")]
static STEER_STATS: PerCpuArray<SteerStats> = PerCpuArray::with_max_entries(MAX_STEERS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const PROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Tunnel packets' TTL on the underlay.
const TUNNEL_TTL: u8 = 64;

/// What steering needs of a TCP packet.
struct Tcp {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    family: u8,
    flags: u8,
    seq: u32,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, ()> {
    // SAFETY: `ptr_at` checked that the whole `T` is inside the packet.
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<T>(ctx, offset)?) })
}

#[inline(always)]
fn try_parse(ctx: &TcContext) -> Result<Tcp, ()> {
    let eth_dst: [u8; 6] = read(ctx, 0)?;
    let eth_src: [u8; 6] = read(ctx, 6)?;
    let ethertype = u16::from_be(read::<u16>(ctx, 12)?);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, l4) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = read(ctx, ETH_HLEN)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(());
            }
            // Not a later fragment (it has no TCP header).
            if u16::from_be(read::<u16>(ctx, ETH_HLEN + 6)?) & 0x1fff != 0 {
                return Err(());
            }
            if read::<u8>(ctx, ETH_HLEN + 9)? != PROTO_TCP {
                return Err(());
            }
            let s: [u8; 4] = read(ctx, ETH_HLEN + 12)?;
            let d: [u8; 4] = read(ctx, ETH_HLEN + 16)?;
            src[..4].copy_from_slice(&s);
            dst[..4].copy_from_slice(&d);
            (4u8, ETH_HLEN + ihl)
        }
        ETH_P_IPV6 => {
            if read::<u8>(ctx, ETH_HLEN)? >> 4 != 6 || read::<u8>(ctx, ETH_HLEN + 6)? != PROTO_TCP {
                return Err(());
            }
            src = read(ctx, ETH_HLEN + 8)?;
            dst = read(ctx, ETH_HLEN + 24)?;
            (6u8, ETH_HLEN + 40)
        }
        _ => return Err(()),
    };
    // One read of the header's first 14 bytes: the verifier keeps one bound for them.
    let h: TcpHead = read(ctx, l4)?;
    Ok(Tcp {
        src,
        dst,
        sport: u16::from_be(h.sport),
        dport: u16::from_be(h.dport),
        family,
        flags: h.flags,
        seq: u32::from_be(h.seq),
        eth_dst,
        eth_src,
    })
}

/// The first 14 bytes of a TCP header (network byte order).
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
}

/// The connection of a packet from the client (`to_server`) or from the server.
#[inline(always)]
fn conn_key(p: &Tcp, steer_id: u32, to_server: bool) -> SteerConnKey {
    let (client, server, client_port, server_port) = if to_server {
        (p.src, p.dst, p.sport, p.dport)
    } else {
        (p.dst, p.src, p.dport, p.sport)
    };
    SteerConnKey {
        client,
        server,
        client_port,
        server_port,
        steer_id,
        family: p.family,
        proto: PROTO_TCP,
        _pad: [0; 2],
    }
}

/// The steer's counters on this CPU.
#[inline(always)]
fn stats(steer_id: u32) -> Option<*mut SteerStats> {
    STEER_STATS.get_ptr_mut(steer_id)
}

#[inline(always)]
fn count(st: Option<*mut SteerStats>, f: impl FnOnce(&mut SteerStats)) {
    if let Some(p) = st {
        // SAFETY: a per-CPU slot: only this CPU writes it during the program run.
        f(unsafe { &mut *p });
    }
}

#[inline(always)]
fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: Option<&[u8; 6]>) -> Result<(), ()> {
    ctx.store(0, dst, 0).map_err(|_| ())?;
    if let Some(s) = src {
        ctx.store(6, s, 0).map_err(|_| ())?;
    }
    Ok(())
}

#[inline(always)]
fn tunnel_to(ctx: &TcContext, remote: &Underlay, tunnel_id: u32) -> Result<(), ()> {
    // SAFETY: an all-zero bpf_tunnel_key is valid (plain integers and unions of them).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = tunnel_id;
    let flags = if remote.family == family::IPV6 {
        key.__bindgen_anon_1.remote_ipv6 = remote.addr;
        BPF_F_TUNINFO_IPV6 as u64
    } else {
        key.__bindgen_anon_1.remote_ipv4 = remote.addr[0];
        0
    };
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: the key lives on the stack for the call; its size is the struct's.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            flags,
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}

/// The outer source and VNI of a packet from the tunnel device. The helper fails when
/// the flag does not match the outer header's family: IPv4 is asked first, then IPv6.
#[inline(always)]
fn tunnel_from(ctx: &TcContext) -> Result<SteerTunnelKey, ()> {
    // SAFETY: zeroed is a valid bpf_tunnel_key; the helper fills at most its size.
    let mut tk: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: the key lives on the stack for the call; its size is the struct's.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut tk, size, 0) } == 0 {
        return Ok(SteerTunnelKey {
            remote: Underlay {
                // SAFETY: without BPF_F_TUNINFO_IPV6 the helper wrote the IPv4 member.
                addr: [unsafe { tk.__bindgen_anon_1.remote_ipv4 }, 0, 0, 0],
                family: family::IPV4,
                _pad: [0; 3],
            },
            tunnel_id: tk.tunnel_id,
        });
    }
    // SAFETY: as above.
    let rc =
        unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut tk, size, BPF_F_TUNINFO_IPV6 as u64) };
    if rc != 0 {
        return Err(());
    }
    Ok(SteerTunnelKey {
        remote: Underlay {
            // SAFETY: with BPF_F_TUNINFO_IPV6 the helper wrote the IPv6 member.
            addr: unsafe { tk.__bindgen_anon_1.remote_ipv6 },
            family: family::IPV6,
            _pad: [0; 3],
        },
        tunnel_id: tk.tunnel_id,
    })
}

#[inline(always)]
fn redirect(ifindex: u32, flags: u64) -> i32 {
    // SAFETY: a plain helper call; an unknown index makes the packet drop at the redirect.
    unsafe { bpf_redirect(ifindex, flags) as i32 }
}

/// Egress of an origin's host-side interface: what goes into the origin.
#[classifier]
pub fn steer_origin(ctx: TcContext) -> i32 {
    try_origin(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_origin(ctx: &TcContext) -> Result<i32, ()> {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let cfg = match unsafe { STEER_ORIGINS.get(ifindex) } {
        Some(c) => *c,
        None => return Ok(TC_ACT_UNSPEC),
    };
    let p = try_parse(ctx)?;
    // Frames the bridge floods through the origin's port for other nodes are not its.
    if p.eth_dst != cfg.origin_mac {
        return Ok(TC_ACT_UNSPEC);
    }
    if cfg.all_ports == 0 {
        let pk = SteerPortKey {
            steer_id: cfg.steer_id,
            port: p.dport,
            _pad: [0; 2],
        };
        if unsafe { STEER_PORTS.get(pk) }.is_none() {
            return Ok(TC_ACT_UNSPEC);
        }
    }
    let key = conn_key(&p, cfg.steer_id, true);
    let existing = STEER_CONNS.get_ptr(&key);
    let syn = p.flags & TCP_SYN != 0 && p.flags & TCP_ACK == 0;
    if syn {
        // A retransmitted SYN of a steered connection stays steered; any other SYN (a new
        // connection, also one reusing the 5-tuple) is decided now.
        let kept = match existing {
            Some(e) => unsafe { (*e).isn == p.seq },
            None => false,
        };
        if !kept {
            let hash = decision_hash(&key, cfg.key, cfg.seed) as u64;
            let steer = cfg.failover != 0 || cfg.threshold >= THRESHOLD_ALL || hash < cfg.threshold;
            count(stats(cfg.steer_id), |s| {
                s.connections_seen += 1;
                if steer {
                    s.connections_steered += 1;
                }
            });
            if !steer {
                if existing.is_some() {
                    let _ = STEER_CONNS.remove(&key);
                }
                return Ok(TC_ACT_UNSPEC);
            }
            let conn = SteerConn {
                client_mac: p.eth_src,
                origin_mac: p.eth_dst,
                isn: p.seq,
                remote: Underlay {
                    addr: [0; 4],
                    family: 0,
                    _pad: [0; 3],
                },
                tunnel_id: 0,
                created_ns: unsafe { bpf_ktime_get_ns() },
            };
            STEER_CONNS.insert(&key, &conn, 0).map_err(|_| ())?;
        }
    } else if existing.is_none() {
        return Ok(TC_ACT_UNSPEC);
    }
    count(stats(cfg.steer_id), |s| s.packets_to_target += 1);
    if cfg.tunnel_id == 0 {
        set_macs(ctx, &cfg.target_mac, None)?;
    } else {
        tunnel_to(ctx, &cfg.tunnel_remote, cfg.tunnel_id)?;
    }
    Ok(redirect(cfg.target_ifindex, 0))
}

/// Ingress of a target's host-side interface: what the target sends.
#[classifier]
pub fn steer_return(ctx: TcContext) -> i32 {
    try_return(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn try_return(ctx: &TcContext) -> Result<i32, ()> {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let r = match unsafe { STEER_RETURNS.get(ifindex) } {
        Some(r) => *r,
        None => return Ok(TC_ACT_UNSPEC),
    };
    let p = try_parse(ctx)?;
    let key = conn_key(&p, r.steer_id, false);
    // The target's own traffic (not of a steered connection) goes on as usual.
    let conn = match unsafe { STEER_CONNS.get(&key) } {
        Some(c) => *c,
        None => return Ok(TC_ACT_UNSPEC),
    };
    count(stats(r.steer_id), |s| s.packets_from_target += 1);
    if r.role == role::ORIGIN_LOCAL {
        set_macs(ctx, &conn.client_mac, Some(&conn.origin_mac))?;
        Ok(redirect(r.ifindex, BPF_F_INGRESS as u64))
    } else {
        tunnel_to(ctx, &conn.remote, conn.tunnel_id)?;
        Ok(redirect(r.ifindex, 0))
    }
}

/// Ingress of the host's tunnel device.
#[classifier]
pub fn steer_tunnel(ctx: TcContext) -> i32 {
    try_tunnel(&ctx).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn try_tunnel(ctx: &TcContext) -> Result<i32, ()> {
    let tkey = tunnel_from(ctx)?;
    let t = match unsafe { STEER_TUNNELS.get(&tkey) } {
        Some(t) => *t,
        None => return Err(()),
    };
    let st = stats(t.steer_id);
    let Ok(p) = try_parse(ctx) else {
        count(st, |s| s.dropped_unknown += 1);
        return Err(());
    };
    if t.role == role::ORIGIN_TUNNEL {
        // The target's answer: to the client, as the origin's.
        let key = conn_key(&p, t.steer_id, false);
        let conn = match unsafe { STEER_CONNS.get(&key) } {
            Some(c) => *c,
            None => {
                count(st, |s| s.dropped_unknown += 1);
                return Err(());
            }
        };
        count(st, |s| s.packets_from_target += 1);
        set_macs(ctx, &conn.client_mac, Some(&conn.origin_mac))?;
        return Ok(redirect(t.ifindex, BPF_F_INGRESS as u64));
    }
    if t.role != role::TARGET {
        return Err(());
    }
    // A steered connection's packet: remembered (for the answers) and into the target.
    let key = conn_key(&p, t.steer_id, true);
    let syn = p.flags & TCP_SYN != 0 && p.flags & TCP_ACK == 0;
    let known = match STEER_CONNS.get_ptr(&key) {
        Some(c) => !syn || unsafe { (*c).isn == p.seq && (*c).remote == tkey.remote },
        None => false,
    };
    if !known {
        let conn = SteerConn {
            client_mac: p.eth_src,
            origin_mac: p.eth_dst,
            isn: p.seq,
            remote: tkey.remote,
            tunnel_id: tkey.tunnel_id,
            created_ns: unsafe { bpf_ktime_get_ns() },
        };
        STEER_CONNS.insert(&key, &conn, 0).map_err(|_| ())?;
        count(st, |s| s.connections_received += 1);
    }
    count(st, |s| s.packets_to_target += 1);
    set_macs(ctx, &t.mac, None)?;
    Ok(redirect(t.ifindex, 0))
}
