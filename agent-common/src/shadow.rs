//! Shadow sampling, production side: the kernel tap's policy, its per-connection decision,
//! its counters and the record it copies to user space for every packet of a sampled
//! connection.
//!
//! The decision hash ([`decision_hash`]) lives here so that the kernel program and the
//! agent (which predicts decisions, e.g. in tests) compute it from the same code.

/// Capacity of the tap's LRU map of connections (decisions).
pub const TAP_CONNECTIONS: u32 = 65_536;
/// Interfaces with a tap policy at once (policy map, counter slots).
pub const TAP_INTERFACES: u32 = 64;
/// Source prefixes over all taps (LPM trie entries).
pub const TAP_SOURCE_PREFIXES: u32 = 4096;
/// Bytes of the server-port bitmap (one bit per port).
pub const PORT_BITMAP_BYTES: usize = 8192;

/// Bytes of the ring buffer the copies leave the kernel through (`SHADOW_COPIES`, one for
/// every CPU and every tap; pinned, so copies taken while no agent runs wait in it). A
/// power of two and a multiple of the page size.
pub const TAP_RING_BYTES: u32 = 16 << 20;
/// Bytes one record carries after its header: a frame's first bytes (`FRAME`) or a
/// later part of its payload (`TAIL`). The kernel builds a record in a per-CPU scratch
/// value (at most 32 KiB) and outputs it with its exact length. A power of two.
pub const TAP_CHUNK: usize = 16_384;
/// The largest frame prefix of a `FRAME` record.
pub const TAP_CTX_CAP: u32 = TAP_CHUNK as u32;
/// Bytes of a frame past [`TAP_CTX_CAP`] go in tail records of at most this many bytes.
pub const TAP_TAIL_CHUNK: usize = TAP_CHUNK;
/// Tail records per packet at most (frames up to `TAP_CTX_CAP + 8 * 16384` bytes, 144
/// KiB, are copied whole; beyond, the rest is counted lost and user space sees a gap).
pub const TAP_MAX_TAIL_CHUNKS: u32 = 8;
/// `TapRecord::version` of this layout: a record of another layout (left in the pinned
/// ring by an agent of another version) is not decoded.
pub const TAP_RECORD_VERSION: u8 = 1;

/// `TapPolicy::key_kind`.
pub mod key_kind {
    /// The 5-tuple: each connection on its own.
    pub const CONNECTION: u8 = 0;
    /// The client's address: a client is always in or always out (sticky).
    pub const SOURCE: u8 = 1;
}

/// `TapRecord::dir`.
pub mod dir {
    /// Client -> server: what production received (TC egress of its host-side interface).
    pub const TO_SERVER: u8 = 1;
    /// Server -> client: what production answered (TC ingress of its host-side interface).
    pub const TO_CLIENT: u8 = 2;
}

/// `TapRecord::kind`.
pub mod record_kind {
    /// Header, then the frame's first `frame_len` bytes (from the Ethernet header on).
    pub const FRAME: u8 = 1;
    /// Header, then `data_len` payload bytes of a frame longer than `TAP_CTX_CAP`.
    pub const TAIL: u8 = 2;
}

/// `TapRecord::mark` bits.
pub mod mark {
    /// The client's first payload on the connection, or its first after the server sent
    /// payload that this segment acknowledges whole: where a request starts in a
    /// request/response protocol. A reader that starts in the middle of a connection (a
    /// restarted agent) resumes there.
    pub const TURN: u8 = 1 << 0;
}

/// `TapConn::state` bits.
pub mod conn_state {
    pub const SAMPLED: u8 = 1 << 0;
    pub const FIN_CLIENT: u8 = 1 << 1;
    pub const FIN_SERVER: u8 = 1 << 2;
    pub const RST: u8 = 1 << 3;
    /// The client sent payload.
    pub const CLIENT_SPOKE: u8 = 1 << 4;
    /// The server sent payload since the client last did.
    pub const SERVER_SPOKE: u8 = 1 << 5;
}

/// `TapPolicy::active` values.
pub mod tap_active {
    /// Outside the time window: new connections are not eligible (they are still counted);
    /// sampled connections are still copied.
    pub const OFF: u8 = 0;
    pub const ON: u8 = 1;
    /// The tap's sinks take nothing (the agent's breaker): new connections are not
    /// eligible, and a sampled connection's next packet ends its sampling (not copied).
    pub const PAUSED: u8 = 2;
}

/// A connection to the production node, seen on its host-side interface. IPv4 addresses
/// use the first four bytes of the 16; the rest are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TapConnKey {
    pub ifindex: u32,
    /// Host byte order.
    pub client_port: u16,
    pub server_port: u16,
    /// `flow::FAMILY_IPV4` or `flow::FAMILY_IPV6`.
    pub family: u8,
    pub _pad: [u8; 3],
    pub client: [u8; 16],
    pub server: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TapConnKey>() == 44);

/// The decision made at the client's SYN, kept for the connection's lifetime.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TapConn {
    /// ktime of the SYN: with the key, the connection's identity (a 5-tuple is reused).
    pub opened_ns: u64,
    /// `conn_state` bits.
    pub state: u8,
    pub _pad: [u8; 3],
    /// Sequence number after the server's last payload byte seen (for `mark::TURN`).
    pub server_end: u32,
}
const _: () = assert!(core::mem::size_of::<TapConn>() == 16);

/// One interface's sampling policy: the whole of it is one map value, so a change is one
/// map update.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapPolicy {
    /// A connection is sampled when `decision_hash(..) < threshold` (0..=2^32).
    pub threshold: u64,
    pub seed: u32,
    /// Source prefixes of this policy are `TapSourceData.generation == generation`.
    pub generation: u32,
    /// Index into the counters array.
    pub slot: u32,
    /// `tap_active`: `ON`, or nothing is eligible (connections are still counted).
    pub active: u8,
    /// `key_kind`.
    pub key_kind: u8,
    /// 1: every server port; else `ports`.
    pub all_ports: u8,
    /// 1: every source; else the LPM trie.
    pub all_sources: u8,
    /// Bit `p & 7` of byte `p >> 3`: server port `p` is sampled.
    pub ports: [u8; PORT_BITMAP_BYTES],
}
const _: () = assert!(core::mem::size_of::<TapPolicy>() == 24 + PORT_BITMAP_BYTES);

impl TapPolicy {
    pub const INACTIVE: Self = Self {
        threshold: 0,
        seed: 0,
        generation: 0,
        slot: 0,
        active: 0,
        key_kind: key_kind::CONNECTION,
        all_ports: 1,
        all_sources: 1,
        ports: [0; PORT_BITMAP_BYTES],
    };

    pub fn port_allowed(&self, port: u16) -> bool {
        self.all_ports != 0 || self.ports[(port >> 3) as usize] & (1 << (port & 7)) != 0
    }

    pub fn allow_port(&mut self, port: u16) {
        self.ports[(port >> 3) as usize] |= 1 << (port & 7);
    }
}

/// The data of an LPM trie key of the tap's source prefixes: `prefix_len` counts from the
/// first bit of `ifindex`, so it is 64 + the address prefix (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TapSourceData {
    pub ifindex: [u8; 4],
    pub generation: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TapSourceData>() == 24);

/// Per interface (slot) and CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TapCounters {
    /// Client SYNs of new connections seen.
    pub seen: u64,
    /// Of those, in the policy (active, port, source).
    pub eligible: u64,
    /// Of those, sampled.
    pub sampled: u64,
    /// Records copied to user space.
    pub copies: u64,
    /// Frame and payload bytes copied.
    pub copied_bytes: u64,
    /// Copies not handed to user space: the ring was full, or a frame was too long to copy
    /// whole.
    pub lost: u64,
    /// Of `lost`, records that did not fit in the ring (no agent read it for too long, or
    /// one read it too slowly).
    pub ring_full: u64,
}
const _: () = assert!(core::mem::size_of::<TapCounters>() == 56);

/// What precedes the copied bytes of one record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TapRecord {
    pub opened_ns: u64,
    pub ktime_ns: u64,
    pub key: TapConnKey,
    /// Sequence number of the first payload byte of this record (a SYN's own sequence
    /// number is `seq - 1`).
    pub seq: u32,
    pub ack: u32,
    /// Bytes of the frame that follow the header (`FRAME`); 0 for `TAIL`.
    pub frame_len: u32,
    /// Offset of the payload in the bytes that follow the header.
    pub data_off: u32,
    /// Payload bytes of this record.
    pub data_len: u32,
    /// `dir`.
    pub dir: u8,
    /// TCP flags (a split frame's FIN is on its last record only).
    pub tcp_flags: u8,
    /// `record_kind`.
    pub kind: u8,
    /// [`TAP_RECORD_VERSION`].
    pub version: u8,
    /// `mark` bits.
    pub mark: u8,
    pub _pad: [u8; 3],
}
pub const TAP_RECORD_BYTES: usize = 88;
const _: () = assert!(core::mem::size_of::<TapRecord>() == TAP_RECORD_BYTES);

/// Per-CPU scratch of the kernel program: a tail record being built.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TapTail {
    pub hdr: TapRecord,
    pub data: [u8; TAP_TAIL_CHUNK],
}
const _: () = assert!(core::mem::size_of::<TapTail>() == TAP_RECORD_BYTES + TAP_TAIL_CHUNK);

pub use crate::hash::threshold_of;
use crate::hash::{finish, mix};

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

/// The decision hash (murmur3's mixing over 32-bit words): of the client's address for
/// `key_kind::SOURCE`, of the 5-tuple otherwise. The interface is not part of it.
#[inline(always)]
pub const fn decision_hash(seed: u32, kind: u8, key: &TapConnKey) -> u32 {
    let mut h = seed;
    h = mix(h, key.family as u32);
    h = mix(h, word(&key.client, 0));
    h = mix(h, word(&key.client, 1));
    h = mix(h, word(&key.client, 2));
    h = mix(h, word(&key.client, 3));
    let len = if kind == key_kind::SOURCE {
        5
    } else {
        h = mix(h, word(&key.server, 0));
        h = mix(h, word(&key.server, 1));
        h = mix(h, word(&key.server, 2));
        h = mix(h, word(&key.server, 3));
        h = mix(h, ((key.client_port as u32) << 16) | key.server_port as u32);
        10
    };
    finish(h ^ (len * 4))
}

/// Whether a connection the policy finds eligible is sampled.
#[inline(always)]
pub const fn sampled(policy_seed: u32, threshold: u64, kind: u8, key: &TapConnKey) -> bool {
    (decision_hash(policy_seed, kind, key) as u64) < threshold
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain old data, `#[repr(C)]`, no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for super::TapConnKey {}
    unsafe impl aya::Pod for super::TapConn {}
    unsafe impl aya::Pod for super::TapPolicy {}
    unsafe impl aya::Pod for super::TapSourceData {}
    unsafe impl aya::Pod for super::TapCounters {}
    unsafe impl aya::Pod for super::TapRecord {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_scales_millionths_to_the_hash_range() {
        assert_eq!(threshold_of(0), 0);
        assert_eq!(threshold_of(1_000_000), 1 << 32);
        assert_eq!(threshold_of(2_000_000), 1 << 32);
        assert_eq!(threshold_of(500_000), 1 << 31);
    }

    #[test]
    fn hash_spreads_ports_evenly_enough() {
        let mut key = TapConnKey {
            family: 4,
            client: [198, 18, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            server: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            server_port: 80,
            ..Default::default()
        };
        let t = threshold_of(100_000);
        let mut n = 0;
        for p in 0..20_000u16 {
            key.client_port = 30_000 + p;
            n += sampled(7, t, key_kind::CONNECTION, &key) as u32;
        }
        // 10 % of 20,000: 2,000, sd 42.
        assert!((1800..2200).contains(&n), "{n}");
        // The source key ignores ports.
        let first = sampled(7, t, key_kind::SOURCE, &key);
        key.client_port = 1;
        assert_eq!(sampled(7, t, key_kind::SOURCE, &key), first);
    }

    #[test]
    fn port_bitmap() {
        let mut p = TapPolicy::INACTIVE;
        p.all_ports = 0;
        p.allow_port(80);
        p.allow_port(65535);
        assert!(p.port_allowed(80) && p.port_allowed(65535));
        assert!(!p.port_allowed(81) && !p.port_allowed(0));
    }
}
