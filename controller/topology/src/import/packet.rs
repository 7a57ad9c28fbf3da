//! Decoding of captured frames: link layer (Ethernet with 802.1Q/802.1ad tags, Linux cooked
//! v1 and v2, raw IP), IPv4/IPv6 and TCP/UDP. Lengths come from the IP header, so Ethernet
//! padding is not payload; a frame cut short by the capture's snap length keeps the lengths
//! its headers declare.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const LINKTYPE_ETHERNET: u32 = 1;
pub(crate) const LINKTYPE_RAW: u32 = 101;
pub(crate) const LINKTYPE_LINUX_SLL: u32 = 113;
pub(crate) const LINKTYPE_IPV4: u32 = 228;
pub(crate) const LINKTYPE_IPV6: u32 = 229;
pub(crate) const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Whether weft decodes this link type.
pub(crate) fn supported_linktype(linktype: u32) -> bool {
    matches!(
        linktype,
        LINKTYPE_ETHERNET
            | LINKTYPE_RAW
            | LINKTYPE_LINUX_SLL
            | LINKTYPE_IPV4
            | LINKTYPE_IPV6
            | LINKTYPE_LINUX_SLL2
    )
}

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum L4 {
    Tcp,
    Udp,
}

/// A decoded TCP segment or UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    pub l4: L4,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP).
    pub flags: u8,
    /// Payload length the headers declare.
    pub payload_len: u64,
    /// The captured part of the payload.
    pub payload: &'a [u8],
}

/// What a frame held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Segment(Segment<'a>),
    /// Not something weft imports (ARP, ICMP, a later IP fragment, ...).
    Skipped,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88A8;
const ETHERTYPE_VLAN_9100: u16 = 0x9100;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Decodes one frame. `snapped` says the capture kept fewer bytes than were on the wire,
/// which excuses headers that declare more than was captured.
pub(crate) fn decode(linktype: u32, frame: &[u8], snapped: bool) -> Result<Frame<'_>, String> {
    match linktype {
        LINKTYPE_ETHERNET => {
            if frame.len() < 14 {
                return Err(format!(
                    "{} bytes, shorter than an Ethernet header (14)",
                    frame.len()
                ));
            }
            let mut ethertype = be16(frame, 12).unwrap_or(0);
            let mut offset = 14;
            while matches!(
                ethertype,
                ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_VLAN_9100
            ) {
                ethertype = be16(frame, offset + 2)
                    .ok_or_else(|| "truncated inside an 802.1Q tag".to_string())?;
                offset += 4;
            }
            by_ethertype(ethertype, &frame[offset..], snapped)
        }
        LINKTYPE_LINUX_SLL => {
            let protocol = be16(frame, 14).ok_or_else(|| {
                format!(
                    "{} bytes, shorter than a Linux cooked header (16)",
                    frame.len()
                )
            })?;
            by_ethertype(protocol, frame.get(16..).unwrap_or_default(), snapped)
        }
        LINKTYPE_LINUX_SLL2 => {
            if frame.len() < 20 {
                return Err(format!(
                    "{} bytes, shorter than a Linux cooked v2 header (20)",
                    frame.len()
                ));
            }
            by_ethertype(be16(frame, 0).unwrap_or(0), &frame[20..], snapped)
        }
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => match frame.first().map(|b| b >> 4) {
            Some(4) => ipv4(frame, snapped),
            Some(6) => ipv6(frame, snapped),
            Some(v) => Err(format!("raw IP packet with IP version {v}")),
            None => Err("empty raw IP packet".into()),
        },
        other => Err(format!("unsupported link type {other}")),
    }
}

fn by_ethertype(ethertype: u16, l3: &[u8], snapped: bool) -> Result<Frame<'_>, String> {
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(l3, snapped),
        ETHERTYPE_IPV6 => ipv6(l3, snapped),
        _ => Ok(Frame::Skipped),
    }
}

/// `packet[..declared]`, or what was captured of it when the capture was snapped.
fn declared<'a>(
    packet: &'a [u8],
    declared: usize,
    what: &str,
    snapped: bool,
) -> Result<&'a [u8], String> {
    if declared <= packet.len() {
        Ok(&packet[..declared])
    } else if snapped {
        Ok(packet)
    } else {
        Err(format!(
            "truncated: {what} declares {declared} bytes, {} captured",
            packet.len()
        ))
    }
}

fn ipv4(packet: &[u8], snapped: bool) -> Result<Frame<'_>, String> {
    if packet.len() < 20 {
        return Err(format!("truncated IPv4 header ({} bytes)", packet.len()));
    }
    let version = packet[0] >> 4;
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if version != 4 || ihl < 20 {
        return Err(format!(
            "bad IPv4 header (version {version}, header length {ihl})"
        ));
    }
    let total = usize::from(be16(packet, 2).unwrap_or(0));
    if total < ihl {
        return Err(format!(
            "IPv4 total length {total} is shorter than its header ({ihl})"
        ));
    }
    if packet.len() < ihl {
        return Err(format!(
            "truncated IPv4 options ({} of {ihl} bytes)",
            packet.len()
        ));
    }
    let packet = declared(packet, total, "the IPv4 header", snapped)?;
    let fragment = be16(packet, 6).unwrap_or(0);
    if fragment & 0x1fff != 0 || fragment & 0x2000 != 0 {
        // Fragments: the kernel program does not reassemble them either.
        return Ok(Frame::Skipped);
    }
    let src = IpAddr::V4(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ));
    transport(
        packet[9],
        src,
        dst,
        &packet[ihl..],
        (total - ihl) as u64,
        snapped,
    )
}

fn ipv6(packet: &[u8], snapped: bool) -> Result<Frame<'_>, String> {
    if packet.len() < 40 {
        return Err(format!("truncated IPv6 header ({} bytes)", packet.len()));
    }
    if packet[0] >> 4 != 6 {
        return Err(format!("bad IPv6 header (version {})", packet[0] >> 4));
    }
    let payload_len = usize::from(be16(packet, 4).unwrap_or(0));
    let packet = declared(packet, 40 + payload_len, "the IPv6 header", snapped)?;
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&packet[8..24]);
    let src = IpAddr::V6(Ipv6Addr::from(octets));
    octets.copy_from_slice(&packet[24..40]);
    let dst = IpAddr::V6(Ipv6Addr::from(octets));
    let mut next = packet[6];
    let mut offset = 40;
    // Extension headers: hop-by-hop, routing, destination options, fragment, AH.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 | 51 => {
                let (Some(&nh), Some(&len)) = (packet.get(offset), packet.get(offset + 1)) else {
                    return Err("truncated IPv6 extension header".into());
                };
                let size = if next == 51 {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                next = nh;
                offset += size;
            }
            44 => {
                let Some(&nh) = packet.get(offset) else {
                    return Err("truncated IPv6 fragment header".into());
                };
                let fragment = be16(packet, offset + 2).unwrap_or(0);
                if fragment & 0xfff9 != 0 {
                    return Ok(Frame::Skipped);
                }
                next = nh;
                offset += 8;
            }
            _ => break,
        }
    }
    let Some(rest) = packet.get(offset..) else {
        return Err("IPv6 extension headers run past the packet".into());
    };
    let declared_l4 = (40 + payload_len).saturating_sub(offset) as u64;
    transport(next, src, dst, rest, declared_l4, snapped)
}

fn transport<'a>(
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: &'a [u8],
    declared_len: u64,
    snapped: bool,
) -> Result<Frame<'a>, String> {
    match protocol {
        6 => {
            if l4.len() < 20 {
                return Err(format!("truncated TCP header ({} bytes)", l4.len()));
            }
            let header = usize::from(l4[12] >> 4) * 4;
            if header < 20 {
                return Err(format!("bad TCP data offset {header}"));
            }
            if l4.len() < header && !snapped {
                return Err(format!(
                    "truncated TCP options ({} of {header} bytes)",
                    l4.len()
                ));
            }
            Ok(Frame::Segment(Segment {
                l4: L4::Tcp,
                src,
                dst,
                sport: be16(l4, 0).unwrap_or(0),
                dport: be16(l4, 2).unwrap_or(0),
                flags: l4[13],
                payload_len: declared_len.saturating_sub(header as u64),
                payload: l4.get(header..).unwrap_or_default(),
            }))
        }
        17 => {
            if l4.len() < 8 {
                return Err(format!("truncated UDP header ({} bytes)", l4.len()));
            }
            let udp_len = usize::from(be16(l4, 4).unwrap_or(0));
            if udp_len < 8 || udp_len as u64 > declared_len {
                return Err(format!(
                    "UDP length {udp_len} does not fit the IP payload ({declared_len} bytes)"
                ));
            }
            let payload = &l4[8..udp_len.min(l4.len())];
            Ok(Frame::Segment(Segment {
                l4: L4::Udp,
                src,
                dst,
                sport: be16(l4, 0).unwrap_or(0),
                dport: be16(l4, 2).unwrap_or(0),
                flags: 0,
                payload_len: (udp_len - 8) as u64,
                payload,
            }))
        }
        _ => Ok(Frame::Skipped),
    }
}
