//! weft's TC flow observer.
//!
//! Two classifiers run on each workload's host-side interface: `flow_ingress` sees what the
//! workload sends (ingress of the host side), `flow_egress` what it receives. Both parse
//! Ethernet (with up to two 802.1Q/802.1ad tags), IPv4 or IPv6 and TCP or UDP, and keep
//! per-flow state in the LRU map `FLOWS`. Closing flows are posted to `FLOW_EVENTS`.
//!
//! Observation never drops or delays a packet: every path returns `TC_ACT_UNSPEC`, which
//! lets the next program on the hook decide and otherwise passes the packet unchanged.
#![no_std]
#![no_main]
// Atomic add on map values: the bpf target's core has no AtomicU64::fetch_add, but LLVM
// lowers the intrinsic to BPF's `lock xadd` (supported by every kernel with BPF).
#![allow(internal_features)]
#![feature(core_intrinsics, adt_const_params)]

mod parse;

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    FlowEvent, FlowKey, FlowStats,
    flow::{
        DIR_IN, DIR_OUT, FLOW_EVENT_RING_BYTES, FLOW_TABLE_ENTRIES, PROTO_TCP, state, turn,
    },
    latency,
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{LruHashMap, RingBuf},
    programs::TcContext,
};

use crate::parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Per-flow state, keyed by the workload-relative 5-tuple and interface.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// Final state of flows that closed (FIN both ways, or RST).
#[map(name = "FLOW_EVENTS")]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENT_RING_BYTES, 0);

#[classifier]
pub fn flow_ingress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx, DIR_OUT);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn flow_egress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx, DIR_IN);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: usize) -> Result<(), ()> {
    let pkt = parse::parse(ctx)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the context pointer is valid for the whole program run.
    let skb = unsafe { &*ctx.skb.skb };
    let key = flow_key(&pkt, skb.ifindex, dir);

    let is_tcp = pkt.proto == PROTO_TCP;
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let ack = pkt.tcp_flags & TCP_ACK != 0;

    let existing = FLOWS.get_ptr_mut(&key);
    // A new connection reusing the 5-tuple of a closed one starts afresh.
    let reused = match existing {
        Some(s) => is_tcp && syn && !ack && unsafe { (*s).state } & state::END_REPORTED != 0,
        None => false,
    };
    let stats = match existing {
        Some(s) if !reused => s,
        _ => {
            // Pure ACKs and FINs of a flow we do not know (it ended, or was evicted) do not
            // create an entry: it would be a phantom flow made of the connection's tail.
            if is_tcp && !syn && pkt.payload_len == 0 {
                return Ok(());
            }
            let fresh = new_flow(&pkt, dir, now);
            // NOEXIST: if another CPU created the entry meanwhile, keep theirs.
            let flags = if reused { 0 } else { BPF_NOEXIST as u64 };
            let _ = FLOWS.insert(&key, &fresh, flags);
            FLOWS.get_ptr_mut(&key).ok_or(())?
        }
    };
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    let s = unsafe { &mut *stats };

    let segs = if skb.gso_segs > 1 { skb.gso_segs as u64 } else { 1 };
    add(&mut s.packets[dir], segs);
    add(&mut s.bytes[dir], pkt.l3_len as u64);
    add(&mut s.payload_bytes[dir], pkt.payload_len as u64);
    s.last_seen_ns = now;

    let local_is_client = s.client_is_local != 0;
    if is_tcp {
        s.tcp_flags[dir] |= pkt.tcp_flags;
        track_handshake(s, dir, syn, ack, local_is_client, now);
    }
    if pkt.payload_len > 0 {
        track_turn(s, dir == DIR_OUT && local_is_client || dir == DIR_IN && !local_is_client, now);
    }
    if is_tcp && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        track_close(&key, s, dir, pkt.tcp_flags);
    }
    Ok(())
}

#[inline(always)]
fn flow_key(pkt: &Packet, ifindex: u32, dir: usize) -> FlowKey {
    let (local_addr, remote_addr, local_port, remote_port) = if dir == DIR_OUT {
        (pkt.src, pkt.dst, pkt.sport, pkt.dport)
    } else {
        (pkt.dst, pkt.src, pkt.dport, pkt.sport)
    };
    FlowKey {
        local_addr,
        remote_addr,
        ifindex,
        local_port,
        remote_port,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// Who is the client of a flow seen for the first time on this packet: the sender of a SYN
/// or of a UDP datagram; the receiver of a SYN-ACK; otherwise (a connection already
/// running) the side with the higher, ephemeral-looking port.
#[inline(always)]
fn new_flow(pkt: &Packet, dir: usize, now: u64) -> FlowStats {
    let sender_is_local = dir == DIR_OUT;
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let ack = pkt.tcp_flags & TCP_ACK != 0;
    let (client_is_local, opened) = if pkt.proto != PROTO_TCP {
        (sender_is_local, true)
    } else if syn && !ack {
        (sender_is_local, true)
    } else if syn && ack {
        (!sender_is_local, true)
    } else {
        let (local_port, remote_port) =
            if sender_is_local { (pkt.sport, pkt.dport) } else { (pkt.dport, pkt.sport) };
        (local_port > remote_port, false)
    };
    let mut s = FlowStats::ZERO;
    s.first_seen_ns = now;
    s.client_is_local = client_is_local as u8;
    if opened {
        s.state = state::OPENED;
    }
    s
}

/// Handshake RTT: SYN out to SYN-ACK in when the workload is the client; SYN-ACK out to
/// the client's ACK in when it is the server. Both measure the path beyond the host.
#[inline(always)]
fn track_handshake(s: &mut FlowStats, dir: usize, syn: bool, ack: bool, local_is_client: bool, now: u64) {
    if s.handshake_rtt_ns != 0 {
        return;
    }
    if dir == DIR_OUT {
        if (local_is_client && syn && !ack) || (!local_is_client && syn && ack) {
            s.handshake_mark_ns = now;
        }
    } else if s.handshake_mark_ns != 0 {
        let done = if local_is_client { syn && ack } else { ack && !syn };
        if done {
            s.handshake_rtt_ns = now - s.handshake_mark_ns;
        }
    }
}

/// Request/response turns: the first payload byte of a client turn starts a request; the
/// first payload byte of the server's reply completes it.
#[inline(always)]
fn track_turn(s: &mut FlowStats, from_client: bool, now: u64) {
    if from_client {
        if s.turn != turn::CLIENT {
            s.turn = turn::CLIENT;
            s.turn_start_ns = now;
        }
    } else {
        if s.turn == turn::CLIENT {
            let lat = now - s.turn_start_ns;
            s.requests += 1;
            s.latency_sum_ns += lat;
            let b = latency::bucket_of(lat);
            if let Some(slot) = s.latency_hist.get_mut(b) {
                *slot = slot.wrapping_add(1);
            }
        }
        s.turn = turn::SERVER;
    }
}

#[inline(always)]
fn track_close(key: &FlowKey, s: &mut FlowStats, dir: usize, flags: u8) {
    if flags & TCP_RST != 0 {
        s.resets += 1;
        s.state |= state::RST;
    }
    if flags & TCP_FIN != 0 {
        s.state |= if dir == DIR_OUT { state::FIN_OUT } else { state::FIN_IN };
    }
    let closed = s.state & state::RST != 0
        || s.state & (state::FIN_OUT | state::FIN_IN) == (state::FIN_OUT | state::FIN_IN);
    if closed && s.state & state::END_REPORTED == 0 {
        s.state |= state::END_REPORTED;
        if let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) {
            // SAFETY: the reservation is exactly one FlowEvent, exclusively ours.
            unsafe {
                let ev = entry.as_mut_ptr();
                (*ev).key = *key;
                (*ev)._pad = [0; 4];
                core::ptr::copy_nonoverlapping(s as *const FlowStats, &mut (*ev).stats, 1);
            }
            entry.submit(0);
        }
        // A full ring loses only the early notice: the agent's periodic drain still reads
        // the entry from the map.
    }
}

/// Atomic add: a flow's two directions can be handled on two CPUs at once.
#[inline(always)]
fn add(counter: &mut u64, v: u64) {
    // SAFETY: the counter lives in a map value, aligned and valid for the program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
