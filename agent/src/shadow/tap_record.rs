//! Decoding one ring buffer record of the shadow tap: a `TapRecord` header, then the
//! frame's bytes (`FRAME`) or payload bytes (`TAIL`). Pure and total: bad input is an error,
//! never a panic (fuzzed by `fuzz/fuzz_targets/shadow_tap.rs`). Depends on std and
//! agent-common only, so that the fuzz crate can include it by path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use agent_common::flow::{FAMILY_IPV4, FAMILY_IPV6};
use agent_common::shadow::{
    TAP_RECORD_BYTES, TAP_RECORD_VERSION, TapConnKey, dir, mark, record_kind,
};

/// One copied TCP segment (or part of one) of a sampled connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub key: TapConnKey,
    /// With `key`, which connection (ktime of its SYN).
    pub opened_ns: u64,
    /// When the packet crossed the interface (ktime, CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    pub to_server: bool,
    /// Sequence number of `data[0]`.
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// The client's payload that starts a turn (`mark::TURN`): where a request starts.
    pub turn: bool,
    pub data: Vec<u8>,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
#[cfg_attr(not(test), allow(dead_code))] // tests and the fuzz target
pub const TCP_ACK: u8 = 0x10;

/// Why a sample did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    Short(usize),
    /// A record of another layout (left in the pinned ring by another agent version).
    Version(u8),
    Kind(u8),
    Direction(u8),
    Family(u8),
    /// The payload range is outside the bytes that follow the header.
    Bounds {
        off: u32,
        len: u32,
        have: usize,
    },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short(n) => write!(f, "record of {n} bytes is shorter than its header"),
            Self::Version(v) => write!(
                f,
                "record of layout version {v}, this agent reads {TAP_RECORD_VERSION}"
            ),
            Self::Kind(k) => write!(f, "unknown record kind {k}"),
            Self::Direction(d) => write!(f, "unknown direction {d}"),
            Self::Family(x) => write!(f, "unknown address family {x}"),
            Self::Bounds { off, len, have } => write!(
                f,
                "payload {off}+{len} is outside the {have} bytes after the header"
            ),
        }
    }
}

impl std::error::Error for RecordError {}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn addr16(b: &[u8], off: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    a
}

/// Decodes one record (its raw bytes, which may end in alignment padding).
pub fn parse(sample: &[u8]) -> Result<Segment, RecordError> {
    if sample.len() < TAP_RECORD_BYTES {
        return Err(RecordError::Short(sample.len()));
    }
    if sample[83] != TAP_RECORD_VERSION {
        return Err(RecordError::Version(sample[83]));
    }
    // Offsets of `agent_common::shadow::TapRecord` (size asserted there).
    let key = TapConnKey {
        ifindex: u32_at(sample, 16),
        client_port: u16_at(sample, 20),
        server_port: u16_at(sample, 22),
        family: sample[24],
        _pad: [0; 3],
        client: addr16(sample, 28),
        server: addr16(sample, 44),
    };
    if key.family != FAMILY_IPV4 && key.family != FAMILY_IPV6 {
        return Err(RecordError::Family(key.family));
    }
    let frame_len = u32_at(sample, 68);
    let data_off = u32_at(sample, 72);
    let data_len = u32_at(sample, 76);
    let to_server = match sample[80] {
        dir::TO_SERVER => true,
        dir::TO_CLIENT => false,
        d => return Err(RecordError::Direction(d)),
    };
    let body = &sample[TAP_RECORD_BYTES..];
    let avail = match sample[82] {
        record_kind::FRAME => (frame_len as usize).min(body.len()),
        record_kind::TAIL => body.len(),
        k => return Err(RecordError::Kind(k)),
    };
    let start = data_off as usize;
    let end = start.checked_add(data_len as usize);
    let data = match end {
        Some(end) if end <= avail => body[start..end].to_vec(),
        _ => {
            return Err(RecordError::Bounds {
                off: data_off,
                len: data_len,
                have: avail,
            });
        }
    };
    Ok(Segment {
        key,
        opened_ns: u64_at(sample, 0),
        ktime_ns: u64_at(sample, 8),
        to_server,
        seq: u32_at(sample, 60),
        ack: u32_at(sample, 64),
        flags: sample[81],
        turn: sample[84] & mark::TURN != 0,
        data,
    })
}

/// The client and server socket addresses of a connection key.
pub fn endpoints(key: &TapConnKey) -> (SocketAddr, SocketAddr) {
    let ip = |a: &[u8; 16]| -> IpAddr {
        if key.family == FAMILY_IPV4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*a))
        }
    };
    (
        SocketAddr::new(ip(&key.client), key.client_port),
        SocketAddr::new(ip(&key.server), key.server_port),
    )
}

/// A connection key from socket addresses (the inverse of [`endpoints`]; `ifindex` 0).
#[cfg_attr(not(test), allow(dead_code))] // tests and the fuzz target
pub fn key_of(client: SocketAddr, server: SocketAddr) -> TapConnKey {
    let bytes = |a: IpAddr| -> [u8; 16] {
        match a {
            IpAddr::V4(v) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v.octets());
                b
            }
            IpAddr::V6(v) => v.octets(),
        }
    };
    TapConnKey {
        ifindex: 0,
        client_port: client.port(),
        server_port: server.port(),
        family: if client.is_ipv4() {
            FAMILY_IPV4
        } else {
            FAMILY_IPV6
        },
        _pad: [0; 3],
        client: bytes(client.ip()),
        server: bytes(server.ip()),
    }
}

/// Encodes a record as the kernel lays it out (tests and the fuzz target's seeds).
#[cfg_attr(not(test), allow(dead_code))] // tests and the fuzz target
pub fn encode(seg: &Segment, kind: u8) -> Vec<u8> {
    let mut b = vec![0u8; TAP_RECORD_BYTES];
    b[0..8].copy_from_slice(&seg.opened_ns.to_ne_bytes());
    b[8..16].copy_from_slice(&seg.ktime_ns.to_ne_bytes());
    b[16..20].copy_from_slice(&seg.key.ifindex.to_ne_bytes());
    b[20..22].copy_from_slice(&seg.key.client_port.to_ne_bytes());
    b[22..24].copy_from_slice(&seg.key.server_port.to_ne_bytes());
    b[24] = seg.key.family;
    b[28..44].copy_from_slice(&seg.key.client);
    b[44..60].copy_from_slice(&seg.key.server);
    b[60..64].copy_from_slice(&seg.seq.to_ne_bytes());
    b[64..68].copy_from_slice(&seg.ack.to_ne_bytes());
    let len = seg.data.len() as u32;
    // A FRAME carries a fake 54-byte header before the payload, as a frame would.
    let (frame_len, off) = if kind == record_kind::FRAME {
        (54 + len, 54u32)
    } else {
        (0, 0)
    };
    b[68..72].copy_from_slice(&frame_len.to_ne_bytes());
    b[72..76].copy_from_slice(&off.to_ne_bytes());
    b[76..80].copy_from_slice(&len.to_ne_bytes());
    b[80] = if seg.to_server {
        dir::TO_SERVER
    } else {
        dir::TO_CLIENT
    };
    b[81] = seg.flags;
    b[82] = kind;
    b[83] = TAP_RECORD_VERSION;
    b[84] = if seg.turn { mark::TURN } else { 0 };
    if kind == record_kind::FRAME {
        b.extend(std::iter::repeat_n(0u8, 54));
    }
    b.extend_from_slice(&seg.data);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> Segment {
        Segment {
            key: key_of(
                "198.18.0.2:40000".parse().unwrap(),
                "198.18.0.1:80".parse().unwrap(),
            ),
            opened_ns: 11,
            ktime_ns: 12,
            to_server: true,
            seq: 1000,
            ack: 7,
            flags: TCP_ACK,
            turn: true,
            data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        }
    }

    #[test]
    fn frame_and_tail_records_round_trip() {
        for kind in [record_kind::FRAME, record_kind::TAIL] {
            assert_eq!(parse(&encode(&seg(), kind)).unwrap(), seg());
        }
        let (c, s) = endpoints(&seg().key);
        assert_eq!(c.to_string(), "198.18.0.2:40000");
        assert_eq!(s.to_string(), "198.18.0.1:80");
    }

    #[test]
    fn bad_records_are_errors() {
        let good = encode(&seg(), record_kind::FRAME);
        assert!(matches!(parse(&good[..40]), Err(RecordError::Short(40))));
        let mut b = good.clone();
        b[83] = 0;
        assert_eq!(parse(&b), Err(RecordError::Version(0)));
        let mut b = good.clone();
        b[82] = 9;
        assert_eq!(parse(&b), Err(RecordError::Kind(9)));
        let mut b = good.clone();
        b[80] = 0;
        assert_eq!(parse(&b), Err(RecordError::Direction(0)));
        let mut b = good.clone();
        b[76..80].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse(&b), Err(RecordError::Bounds { .. })));
        let mut b = good;
        b[72..76].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse(&b), Err(RecordError::Bounds { .. })));
    }
}
