//! Steering (kinds `steer` and `steer-target`): the maps shared by the kernel programs in
//! `agent-ebpf/src/steer.rs` and the agent's `steer` module.
//!
//! - [`SteerOrigin`] per origin interface (the host side of the origin node's veth, whose
//!   egress carries what goes into the origin): which new connections go to the target and
//!   how to reach it.
//! - [`SteerReturn`] per target interface (the host side of the target node's veth, whose
//!   ingress carries what the target sends): where the target's answers go.
//! - [`SteerTunnel`] per (remote host, tunnel id) seen on the host's tunnel device.
//! - [`SteerConnKey`] -> [`SteerConn`]: steered connections (LRU, bounded).
//! - [`SteerStats`] per steer slot and CPU.

/// Steer slots per host (the index of `STEER_STATS`, the `steer_id` of every key).
pub const MAX_STEERS: u32 = 256;
/// Steered connections remembered per host (LRU: the least recently used goes first).
pub const STEER_CONN_ENTRIES: u32 = 65_536;
/// (steer, port) pairs of the steered ports of every steer of a host.
pub const STEER_PORT_ENTRIES: u32 = 4_096;

/// `SteerOrigin::key`: what the decision hashes.
pub mod key {
    /// The 5-tuple: each connection on its own.
    pub const CONNECTION: u8 = 0;
    /// The client's address: every connection of a client goes the same way (sticky).
    pub const SOURCE: u8 = 1;
}

/// `SteerReturn::role` and `SteerTunnel::role`.
pub mod role {
    /// Origin's host, target on this host: T's answers go into the origin's interface's
    /// ingress, as if the origin had sent them.
    pub const ORIGIN_LOCAL: u8 = 1;
    /// Origin's host, target on another: T's answers arrive through the tunnel.
    pub const ORIGIN_TUNNEL: u8 = 2;
    /// Target's host: connections arrive through the tunnel; T's answers go back through it.
    pub const TARGET: u8 = 3;
}

/// `Underlay::family`.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// A host's underlay address as `bpf_tunnel_key` holds it: the tunnel's far end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Underlay {
    /// [`family::IPV4`]: `addr[0]` in host byte order (`remote_ipv4`), the rest 0;
    /// [`family::IPV6`]: the 16 bytes in network order (`remote_ipv6`).
    pub addr: [u32; 4],
    /// [`family`]; 0: none.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Underlay>() == 20);

#[cfg(any(feature = "std", test))]
impl From<std::net::IpAddr> for Underlay {
    fn from(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(a) => Self {
                addr: [u32::from(a), 0, 0, 0],
                family: family::IPV4,
                _pad: [0; 3],
            },
            std::net::IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Self {
                    addr: [w(0), w(4), w(8), w(12)],
                    family: family::IPV6,
                    _pad: [0; 3],
                }
            }
        }
    }
}

#[cfg(any(feature = "std", test))]
impl Underlay {
    /// The address, `None` for an unknown family.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self.family {
            family::IPV4 => Some(std::net::Ipv4Addr::from(self.addr[0]).into()),
            family::IPV6 => {
                let mut o = [0u8; 16];
                for (i, w) in self.addr.iter().enumerate() {
                    o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                Some(std::net::Ipv6Addr::from(o).into())
            }
            _ => None,
        }
    }
}

/// How new connections into one origin interface are steered (key: the interface's index).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerOrigin {
    /// A connection whose hash is below this goes to the target: `share_ppm * 2^32 / 10^6`;
    /// [`THRESHOLD_ALL`] for all.
    pub threshold: u64,
    pub steer_id: u32,
    pub seed: u32,
    /// The target's interface (same host) or the tunnel device (another host).
    pub target_ifindex: u32,
    /// 0: the target is on this host.
    pub tunnel_id: u32,
    /// The target host's underlay address.
    pub tunnel_remote: Underlay,
    /// [`key`].
    pub key: u8,
    /// 1 while the origin fails its health check: every new connection is steered.
    pub failover: u8,
    /// 1: every TCP port is steered; 0: the ports in `STEER_PORTS` for `steer_id`.
    pub all_ports: u8,
    pub _pad: u8,
    /// The target's MAC (same host): steered frames are addressed to it.
    pub target_mac: [u8; 6],
    /// The origin's MAC: only frames addressed to it are looked at (a bridge also floods
    /// frames for other nodes through the origin's port).
    pub origin_mac: [u8; 6],
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<SteerOrigin>() == 64);

/// A steered server port of a steer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SteerPortKey {
    pub steer_id: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SteerPortKey>() == 8);

/// Where the answers leaving a target interface go (key: the target interface's index).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerReturn {
    pub steer_id: u32,
    /// [`role::ORIGIN_LOCAL`]: the origin's interface; [`role::TARGET`]: the tunnel device.
    pub ifindex: u32,
    pub role: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<SteerReturn>() == 16);

/// Key of [`SteerTunnel`]: what `bpf_skb_get_tunnel_key` says of a packet from the tunnel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SteerTunnelKey {
    /// The other host's underlay address (the outer source of what arrives).
    pub remote: Underlay,
    pub tunnel_id: u32,
}
const _: () = assert!(core::mem::size_of::<SteerTunnelKey>() == 24);

/// What a packet from the tunnel is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerTunnel {
    pub steer_id: u32,
    /// [`role::ORIGIN_TUNNEL`]: the origin's interface (answers enter it);
    /// [`role::TARGET`]: the target's interface (connections go into it).
    pub ifindex: u32,
    pub role: u8,
    pub _pad: u8,
    /// [`role::TARGET`]: the target's MAC.
    pub mac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SteerTunnel>() == 16);

/// A connection as the client opened it. IPv4 addresses use the first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SteerConnKey {
    pub client: [u8; 16],
    pub server: [u8; 16],
    /// Host byte order.
    pub client_port: u16,
    pub server_port: u16,
    pub steer_id: u32,
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SteerConnKey>() == 44);

/// A steered connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerConn {
    /// Origin's host: the client's (or its gateway's) MAC, from the SYN.
    pub client_mac: [u8; 6],
    /// Origin's host: the origin's MAC (the SYN's destination).
    pub origin_mac: [u8; 6],
    /// The client's initial sequence number: a retransmitted SYN keeps the decision, a
    /// new connection reusing the 5-tuple is decided afresh.
    pub isn: u32,
    /// Target's host: the tunnel id and the origin host's underlay address.
    pub tunnel_id: u32,
    pub remote: Underlay,
    /// When the connection was recorded (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SteerConn>() == 48);

/// Counters of one steer slot (per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SteerStats {
    /// Client SYNs to a steered port that were decided.
    pub connections_seen: u64,
    /// Of those, steered to the target.
    pub connections_steered: u64,
    /// Packets sent towards the target (redirected or tunnelled).
    pub packets_to_target: u64,
    /// The target's answers delivered as the origin's.
    pub packets_from_target: u64,
    /// Target's host: connections recorded from the tunnel.
    pub connections_received: u64,
    /// Packets of the tunnel dropped: no steered connection for them (evicted, or the
    /// origin's agent restarted).
    pub dropped_unknown: u64,
}
const _: () = assert!(core::mem::size_of::<SteerStats>() == 48);

impl SteerStats {
    /// Sum of two per-CPU values.
    pub fn add(&mut self, o: &SteerStats) {
        self.connections_seen += o.connections_seen;
        self.connections_steered += o.connections_steered;
        self.packets_to_target += o.packets_to_target;
        self.packets_from_target += o.packets_from_target;
        self.connections_received += o.connections_received;
        self.dropped_unknown += o.dropped_unknown;
    }
}

pub use crate::hash::{THRESHOLD_ALL, finish, mix, threshold_of};

/// The hash of a connection for the decision: of the client address only
/// ([`key::SOURCE`]) or of the whole 5-tuple ([`key::CONNECTION`]).
#[inline(always)]
pub fn decision_hash(k: &SteerConnKey, key_kind: u8, seed: u32) -> u32 {
    let w = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let mut h = seed;
    h = mix(h, w(&k.client, 0));
    h = mix(h, w(&k.client, 4));
    h = mix(h, w(&k.client, 8));
    h = mix(h, w(&k.client, 12));
    if key_kind != key::SOURCE {
        h = mix(h, w(&k.server, 0));
        h = mix(h, w(&k.server, 4));
        h = mix(h, w(&k.server, 8));
        h = mix(h, w(&k.server, 12));
        h = mix(h, (k.client_port as u32) << 16 | k.server_port as u32);
        h = mix(h, k.proto as u32);
    }
    finish(h)
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::Underlay {}
    unsafe impl aya::Pod for super::SteerOrigin {}
    unsafe impl aya::Pod for super::SteerPortKey {}
    unsafe impl aya::Pod for super::SteerReturn {}
    unsafe impl aya::Pod for super::SteerTunnelKey {}
    unsafe impl aya::Pod for super::SteerTunnel {}
    unsafe impl aya::Pod for super::SteerConnKey {}
    unsafe impl aya::Pod for super::SteerConn {}
    unsafe impl aya::Pod for super::SteerStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_underlay_address_is_kept_as_the_tunnel_key_holds_it() {
        use std::net::IpAddr;
        let v4: IpAddr = "198.18.82.1".parse().unwrap();
        let u = Underlay::from(v4);
        // remote_ipv4: host byte order.
        assert_eq!(u.addr, [0xc612_5201, 0, 0, 0]);
        assert_eq!(u.family, family::IPV4);
        assert_eq!(u.ip(), Some(v4));
        let v6: IpAddr = "fd00:82::2".parse().unwrap();
        let u = Underlay::from(v6);
        // remote_ipv6: the bytes in network order.
        let bytes: Vec<u8> = u.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes[..4], [0xfd, 0x00, 0x00, 0x82]);
        assert_eq!(bytes[15], 2);
        assert_eq!(u.family, family::IPV6);
        assert_eq!(u.ip(), Some(v6));
        // Same bits, other family: another key.
        let same_bits = Underlay {
            family: family::IPV6,
            ..Underlay::from(v4)
        };
        assert_ne!(same_bits, Underlay::from(v4));
        assert_eq!(Underlay::default().ip(), None);
    }

    #[test]
    fn threshold_scales_share_to_the_hash_range() {
        assert_eq!(threshold_of(0), 0);
        assert_eq!(threshold_of(1_000_000), THRESHOLD_ALL);
        assert_eq!(threshold_of(2_000_000), THRESHOLD_ALL);
        assert_eq!(threshold_of(500_000), 1 << 31);
    }

    fn conn(client: u8, port: u16) -> SteerConnKey {
        let mut k = SteerConnKey {
            client_port: port,
            server_port: 80,
            family: 4,
            proto: 6,
            ..Default::default()
        };
        k.client[..4].copy_from_slice(&[198, 18, 0, client]);
        k.server[..4].copy_from_slice(&[198, 18, 0, 1]);
        k
    }

    #[test]
    fn a_share_of_connections_falls_below_the_threshold() {
        let t = threshold_of(250_000);
        let n = 20_000u32;
        let below = (0..n)
            .filter(|i| {
                let k = conn((i % 200) as u8, 10_000 + (i / 200) as u16);
                (decision_hash(&k, key::CONNECTION, 7) as u64) < t
            })
            .count() as f64;
        let share = below / n as f64;
        assert!((share - 0.25).abs() < 0.02, "{share}");
    }

    #[test]
    fn source_key_ignores_the_ports() {
        let a = decision_hash(&conn(9, 40_000), key::SOURCE, 3);
        let b = decision_hash(&conn(9, 40_001), key::SOURCE, 3);
        assert_eq!(a, b);
        let c = decision_hash(&conn(9, 40_000), key::CONNECTION, 3);
        let d = decision_hash(&conn(9, 40_001), key::CONNECTION, 3);
        assert_ne!(c, d);
        // The seed changes the split.
        assert_ne!(
            decision_hash(&conn(9, 40_000), key::SOURCE, 3),
            decision_hash(&conn(9, 40_000), key::SOURCE, 4)
        );
    }
}
