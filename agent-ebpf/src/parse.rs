//! Bounds-checked packet parsing: Ethernet (+ up to two VLAN tags), IPv4/IPv6, TCP/UDP.
//! Every accessor returns `Err(())` when the packet is too short or not of a kind we
//! observe; the caller then lets the packet pass untouched.

use agent_common::flow::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP};
use aya_ebpf::programs::TcContext;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HLEN: usize = 4;

/// What the flow program needs from one packet.
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub tcp_flags: u8,
    /// Layer-3 length (IP header + payload).
    pub l3_len: u32,
    /// Transport payload length.
    pub payload_len: u32,
    /// Offset of the transport payload from the start of the frame.
    pub payload_off: u32,
    /// Offset of the transport header from the start of the frame.
    pub l4_off: u32,
}

/// A pointer to a `T` at `offset` into the packet, if the whole `T` is inside it.
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
fn u8_at(ctx: &TcContext, offset: usize) -> Result<u8, ()> {
    Ok(unsafe { *ptr_at::<u8>(ctx, offset)? })
}

#[inline(always)]
fn be16_at(ctx: &TcContext, offset: usize) -> Result<u16, ()> {
    Ok(u16::from_be(unsafe {
        core::ptr::read_unaligned(ptr_at::<u16>(ctx, offset)?)
    }))
}

#[inline(always)]
fn bytes_at<const N: usize>(ctx: &TcContext, offset: usize) -> Result<[u8; N], ()> {
    Ok(unsafe { core::ptr::read_unaligned(ptr_at::<[u8; N]>(ctx, offset)?) })
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Packet, ()> {
    let mut off = ETH_HLEN;
    let mut ethertype = be16_at(ctx, 12)?;
    // Up to two tags (802.1ad outer + 802.1Q inner), unrolled for the verifier.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, off + 2)?;
        off += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16_at(ctx, off + 2)?;
            off += VLAN_HLEN;
        }
    }
    let skb_len = ctx.len() as usize;
    if skb_len <= off {
        return Err(());
    }
    let avail = (skb_len - off) as u32;

    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, proto, l3_len, l4_off) = match ethertype {
        ETH_P_IP => {
            let vihl = u8_at(ctx, off)?;
            if vihl >> 4 != 4 {
                return Err(());
            }
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if ihl < 20 {
                return Err(());
            }
            let tot_len = be16_at(ctx, off + 2)? as u32;
            // Only the first fragment carries the transport header.
            if be16_at(ctx, off + 6)? & 0x1fff != 0 {
                return Err(());
            }
            let proto = u8_at(ctx, off + 9)?;
            let s: [u8; 4] = bytes_at(ctx, off + 12)?;
            let d: [u8; 4] = bytes_at(ctx, off + 16)?;
            src[..4].copy_from_slice(&s);
            dst[..4].copy_from_slice(&d);
            // GSO/GRO super-packets can carry tot_len 0 (BIG TCP) or a stale value:
            // trust the skb length then.
            let l3 = if tot_len == 0 || tot_len > avail {
                avail
            } else {
                tot_len
            };
            if (ihl as u32) > l3 {
                return Err(());
            }
            (FAMILY_IPV4, proto, l3, off + ihl)
        }
        ETH_P_IPV6 => {
            if u8_at(ctx, off)? >> 4 != 6 {
                return Err(());
            }
            let payload_len = be16_at(ctx, off + 4)? as u32;
            let proto = u8_at(ctx, off + 6)?;
            src = bytes_at(ctx, off + 8)?;
            dst = bytes_at(ctx, off + 24)?;
            let l3 = if payload_len == 0 || payload_len + 40 > avail {
                avail
            } else {
                payload_len + 40
            };
            (FAMILY_IPV6, proto, l3, off + 40)
        }
        _ => return Err(()),
    };
    let l4_avail = l3_len - (l4_off - off) as u32;

    let sport = be16_at(ctx, l4_off)?;
    let dport = be16_at(ctx, l4_off + 2)?;
    let (tcp_flags, hdr_len) = match proto {
        PROTO_TCP => {
            let doff = ((u8_at(ctx, l4_off + 12)? >> 4) as u32) * 4;
            if doff < 20 {
                return Err(());
            }
            (u8_at(ctx, l4_off + 13)?, doff)
        }
        PROTO_UDP => (0, 8),
        _ => return Err(()),
    };
    let payload_len = if l4_avail > hdr_len {
        l4_avail - hdr_len
    } else {
        0
    };
    Ok(Packet {
        src,
        dst,
        sport,
        dport,
        proto,
        family,
        tcp_flags,
        l3_len,
        payload_len,
        payload_off: (l4_off as u32) + hdr_len,
        l4_off: l4_off as u32,
    })
}
