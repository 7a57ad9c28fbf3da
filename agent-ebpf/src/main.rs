//! weft's TC flow observer.
//!
//! Two classifiers run on each workload's host-side interface: `flow_ingress` sees what the
//! workload sends (ingress of the host side), `flow_egress` what it receives. Both parse
//! Ethernet (with up to two 802.1Q/802.1ad tags), IPv4 or IPv6 and TCP or UDP, and keep
//! per-flow state in the LRU map `FLOWS`. Closing flows are posted to `FLOW_EVENTS`.
//!
//! HTTP/2 and AMQP connections are also copied whole to `STREAM_CHUNKS` (`stream`), so that
//! user space counts their requests exactly. The shadow tap (`tap`) copies sampled
//! connections for shadow environments.
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
mod steer;
mod stream;
mod tap;

use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::addr_of_mut;

use agent_common::{
    FlowEvent, FlowKey, FlowStats, PayloadSample,
    flow::{
        DIR_IN, DIR_OUT, FLOW_EVENT_RING_BYTES, FLOW_TABLE_ENTRIES, PAYLOAD_RING_BYTES,
        PAYLOAD_SAMPLE_BYTES, PROTO_TCP, sample, state, turn,
    },
};
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC,
    },
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};

use crate::parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Per-flow state, keyed by the workload-relative 5-tuple and interface.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// What the agent last exported of each flow (its delta baseline), written and read by
/// user space only: kept in the kernel and pinned with `FLOWS`, so an agent that restarts
/// continues each flow's deltas where the previous one stopped (agent `datapath::pins`).
/// The programs never touch it.
#[map(name = "FLOW_REPORTED")]
static FLOW_REPORTED: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(FLOW_TABLE_ENTRIES, 0);

/// Final state of flows that closed (FIN both ways, or RST).
#[map(name = "FLOW_EVENTS")]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENT_RING_BYTES, 0);

/// First payload bytes at each turn of a conversation (see `PayloadSample`).
#[map(name = "PAYLOADS")]
static PAYLOADS: RingBuf = RingBuf::with_byte_size(PAYLOAD_RING_BYTES, 0);

/// Samples that did not fit in `PAYLOADS` (per CPU), so the loss is visible.
#[map(name = "PAYLOADS_LOST")]
static PAYLOADS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

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

/// The shadow tap on TC egress of a production node's host-side interface: what goes
/// into the node (see `tap`).
#[classifier]
pub fn shadow_tap_in(ctx: TcContext) -> i32 {
    let _ = tap::tap(&ctx, true);
    TC_ACT_UNSPEC
}

/// The shadow tap on TC ingress: what comes out of the node.
#[classifier]
pub fn shadow_tap_out(ctx: TcContext) -> i32 {
    let _ = tap::tap(&ctx, false);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, dir: usize) -> Result<(), ()> {
    let pkt = parse::parse(ctx)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the context pointer is valid for the whole program run.
    let skb = unsafe { &*ctx.skb.skb };
    let key = flow_key(&pkt, skb.ifindex, dir);
    let segs = if skb.gso_segs > 1 {
        skb.gso_segs as u64
    } else {
        1
    };

    let is_tcp = pkt.proto == PROTO_TCP;
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let ack = pkt.tcp_flags & TCP_ACK != 0;

    let flags = match FLOWS.get_ptr_mut(&key) {
        Some(existing) => {
            // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
            let s = unsafe { &mut *existing };
            // A new connection reusing the 5-tuple of a closed one starts afresh.
            if !(is_tcp && syn && !ack && s.state & state::END_REPORTED != 0) {
                update(ctx, &key, s, &pkt, dir, now, segs);
                return Ok(());
            }
            0
        }
        None => {
            // Pure ACKs and FINs of a flow we do not know (it ended, or was evicted) do not
            // create an entry: it would be a phantom flow made of the connection's tail.
            if is_tcp && !syn && pkt.payload_len == 0 {
                return Ok(());
            }
            // NOEXIST: if another CPU created the entry meanwhile, keep theirs.
            BPF_NOEXIST as u64
        }
    };
    // A new flow: everything this packet does to it is applied to the value before it is
    // inserted, so that a new flow costs one hash-table operation (no lookup after the
    // insert), and what it posts is posted only once the entry exists.
    // Built in place: a returned value would be copied, and LLVM turns the copy's zeros
    // back into a byte-loop memset (see `zeroed_stats`).
    let mut slot = core::mem::MaybeUninit::<FlowStats>::uninit();
    // SAFETY: `zeroed_stats` initialises every byte of the slot.
    let fresh = unsafe { &mut *zeroed_stats(slot.as_mut_ptr()) };
    new_flow(fresh, &pkt, dir, now, segs);
    let act = track(fresh, &pkt, dir, now);
    decide_whole(ctx, fresh, &pkt, act);
    if FLOWS.insert(&key, &*fresh, flags).is_ok() {
        post(ctx, &key, fresh, &pkt, dir, now, act);
        return Ok(());
    }
    // Lost a race with another CPU inserting the same key: count on its entry.
    let existing = FLOWS.get_ptr_mut(&key).ok_or(())?;
    // SAFETY: as above.
    update(ctx, &key, unsafe { &mut *existing }, &pkt, dir, now, segs);
    Ok(())
}

/// Counts a packet on a flow that is in the map.
#[inline(always)]
fn update(
    ctx: &TcContext,
    key: &FlowKey,
    s: &mut FlowStats,
    pkt: &Packet,
    dir: usize,
    now: u64,
    segs: u64,
) {
    add(&mut s.packets[dir], segs);
    add(&mut s.bytes[dir], pkt.l3_len as u64);
    if pkt.payload_len > 0 {
        add(&mut s.payload_bytes[dir], pkt.payload_len as u64);
    }
    s.last_seen_ns = now;
    let act = track(s, pkt, dir, now);
    decide_whole(ctx, s, pkt, act);
    post(ctx, key, s, pkt, dir, now, act);
}

/// At the client's first payload on a connection whose opening was seen: marks the flow
/// `WHOLE` when those bytes open HTTP/2 or AMQP (`stream`).
#[inline(always)]
fn decide_whole(ctx: &TcContext, s: &mut FlowStats, pkt: &Packet, act: Act) {
    if act.first_of_direction
        && act.from_client
        && pkt.proto == PROTO_TCP
        && s.state & state::OPENED != 0
        && stream::opens_whole(ctx, pkt)
    {
        s.state |= state::WHOLE;
    }
}

/// What a packet has to post once its flow's state is updated.
#[derive(Clone, Copy)]
struct Act {
    /// A `sample::*` kind, or `NO_SAMPLE`.
    sample: u8,
    first_of_direction: bool,
    /// The packet carries payload from the client.
    from_client: bool,
    latency_ns: u64,
    /// The flow closed on this packet: post its final state.
    closed: bool,
}

/// Updates the flow's TCP flags, handshake, turns and close state for this packet.
#[inline(always)]
fn track(s: &mut FlowStats, pkt: &Packet, dir: usize, now: u64) -> Act {
    let is_tcp = pkt.proto == PROTO_TCP;
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let ack = pkt.tcp_flags & TCP_ACK != 0;
    let local_is_client = s.client_is_local != 0;
    let mut act = Act {
        sample: NO_SAMPLE,
        first_of_direction: false,
        from_client: false,
        latency_ns: 0,
        closed: false,
    };
    if is_tcp {
        // Only written when it changes: most packets repeat the flags already seen.
        if s.tcp_flags[dir] & pkt.tcp_flags != pkt.tcp_flags {
            s.tcp_flags[dir] |= pkt.tcp_flags;
        }
        track_handshake(s, dir, syn, ack, local_is_client, now);
    }
    if pkt.payload_len > 0 {
        let from_client = dir == DIR_OUT && local_is_client || dir == DIR_IN && !local_is_client;
        let first_bit = if dir == DIR_OUT {
            state::SAMPLED_OUT
        } else {
            state::SAMPLED_IN
        };
        let first = s.state & first_bit == 0;
        if first {
            s.state |= first_bit;
        }
        let (kind, latency_ns) = track_turn(s, from_client, now);
        act.sample = if kind == NO_SAMPLE && first {
            sample::FIRST
        } else {
            kind
        };
        act.first_of_direction = first;
        act.from_client = from_client;
        act.latency_ns = latency_ns;
    }
    // Once both FINs were seen, pure ACKs matter too (the last one ends the flow).
    if is_tcp
        && (pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0
            || s.state & (state::FIN_OUT | state::FIN_IN) != 0)
    {
        act.closed = track_close(s, dir, pkt.tcp_flags);
    }
    act
}

/// Posts the payload sample and the flow-end event a packet calls for.
#[inline(always)]
fn post(
    ctx: &TcContext,
    key: &FlowKey,
    s: &FlowStats,
    pkt: &Packet,
    dir: usize,
    now: u64,
    act: Act,
) {
    // A flow copied whole posts no samples: its chunks carry the same bytes and times.
    let whole = s.state & state::WHOLE != 0;
    if act.sample != NO_SAMPLE && !whole {
        post_sample(
            ctx,
            key,
            s.first_seen_ns,
            pkt,
            dir,
            act.sample,
            act.first_of_direction,
            now,
            act.latency_ns,
        );
    }
    if whole && pkt.payload_len > 0 {
        stream::copy(
            ctx,
            key,
            s.first_seen_ns,
            pkt,
            dir as u8,
            act.from_client,
            act.first_of_direction,
            now,
        );
    }
    // The entry goes with the event: the agent makes the flow's last record from the
    // event alone. If the ring is full the entry stays, `END_REPORTED` set, for the
    // agent's drain.
    if act.closed && post_end(key, s) {
        let _ = FLOWS.remove(key);
    }
}

#[inline(always)]
fn flow_key(pkt: &Packet, ifindex: u32, dir: usize) -> FlowKey {
    let (local_addr, remote_addr, local_port, remote_port) = if dir == DIR_OUT {
        (pkt.src, pkt.dst, pkt.sport, pkt.dport)
    } else {
        (pkt.dst, pkt.src, pkt.dport, pkt.sport)
    };
    FlowKey {
        // SAFETY: [u32; 4] and [u8; 16] have the same size; every bit pattern is valid.
        local_addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(local_addr) },
        remote_addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(remote_addr) },
        ifindex,
        local_port,
        remote_port,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// Fills in (`s` zeroed) the state of a flow seen for the first time on this packet, its
/// counters included.
/// Who is the client: the sender of a SYN or of a UDP datagram; the receiver of a SYN-ACK;
/// otherwise (a connection already running) the side with the higher, ephemeral-looking
/// port.
#[inline(always)]
fn new_flow(s: &mut FlowStats, pkt: &Packet, dir: usize, now: u64, segs: u64) {
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
        let (local_port, remote_port) = if sender_is_local {
            (pkt.sport, pkt.dport)
        } else {
            (pkt.dport, pkt.sport)
        };
        (local_port > remote_port, false)
    };
    s.first_seen_ns = now;
    s.last_seen_ns = now;
    s.packets[dir] = segs;
    s.bytes[dir] = pkt.l3_len as u64;
    s.payload_bytes[dir] = pkt.payload_len as u64;
    s.client_is_local = client_is_local as u8;
    if opened {
        s.state = state::OPENED;
    }
}

/// Zeroes the `FlowStats` at `p` with twelve word stores and returns `p`. Written as
/// `FlowStats::ZERO` plus the fields, LLVM merges the zero stores into a `memset` call,
/// which on BPF is the object's byte loop (about 5 instructions per byte: ~400 per new
/// flow); volatile stores are never merged.
///
/// # Safety
/// `p` is valid for writes of a `FlowStats` and 8-aligned.
#[inline(always)]
unsafe fn zeroed_stats(p: *mut FlowStats) -> *mut FlowStats {
    const WORDS: usize = core::mem::size_of::<FlowStats>() / 8;
    const _: () = assert!(WORDS * 8 == core::mem::size_of::<FlowStats>() && WORDS == 12);
    let w = p as *mut u64;
    // SAFETY: `w` points to 12 aligned u64 words (FlowStats is 96 bytes, 8-aligned); once
    // all are written every byte is initialised, and all-zero is a valid FlowStats.
    unsafe {
        w.write_volatile(0);
        w.add(1).write_volatile(0);
        w.add(2).write_volatile(0);
        w.add(3).write_volatile(0);
        w.add(4).write_volatile(0);
        w.add(5).write_volatile(0);
        w.add(6).write_volatile(0);
        w.add(7).write_volatile(0);
        w.add(8).write_volatile(0);
        w.add(9).write_volatile(0);
        w.add(10).write_volatile(0);
        w.add(11).write_volatile(0);
    }
    p
}

/// Handshake RTT: SYN out to SYN-ACK in when the workload is the client; SYN-ACK out to
/// the client's ACK in when it is the server. Both measure the path beyond the host. The
/// mark shares `mark_ns` with the request turns: it is taken only while no request is
/// outstanding, and a request that starts first abandons it (`track_turn`).
#[inline(always)]
fn track_handshake(
    s: &mut FlowStats,
    dir: usize,
    syn: bool,
    ack: bool,
    local_is_client: bool,
    now: u64,
) {
    if s.state & state::HANDSHAKE_DONE != 0 {
        return;
    }
    if dir == DIR_OUT {
        let starts = (local_is_client && syn && !ack) || (!local_is_client && syn && ack);
        if starts && s.turn != turn::CLIENT {
            s.mark_ns = now;
            s.state |= state::HANDSHAKE_MARK;
        }
    } else if s.state & state::HANDSHAKE_MARK != 0 {
        let done = if local_is_client {
            syn && ack
        } else {
            ack && !syn
        };
        if done {
            let rtt = now - s.mark_ns;
            s.handshake_rtt_ns = if rtt >= u32::MAX as u64 {
                u32::MAX
            } else if rtt == 0 {
                1
            } else {
                rtt as u32
            };
            s.state = (s.state & !state::HANDSHAKE_MARK) | state::HANDSHAKE_DONE;
        }
    }
}

const NO_SAMPLE: u8 = 0xff;

/// Request/response turns: the first payload byte of a client turn starts a request; the
/// first payload byte of the server's reply completes it. Returns the sample kind this
/// packet starts (or `NO_SAMPLE`) and, for a response, the request's latency. The latency
/// histogram is user space's, from the `RESPONSE` samples; the kernel keeps the exact count
/// and sum.
#[inline(always)]
fn track_turn(s: &mut FlowStats, from_client: bool, now: u64) -> (u8, u64) {
    if from_client {
        if s.turn != turn::CLIENT {
            s.turn = turn::CLIENT;
            // The request takes `mark_ns` over: a handshake still being measured is
            // abandoned, not corrupted.
            s.mark_ns = now;
            s.state = (s.state & !state::HANDSHAKE_MARK) | state::HANDSHAKE_DONE;
            return (sample::REQUEST, 0);
        }
        (NO_SAMPLE, 0)
    } else {
        let mut out = (NO_SAMPLE, 0);
        if s.turn == turn::CLIENT {
            let lat = now - s.mark_ns;
            s.requests += 1;
            s.latency_sum_ns += lat;
            out = (sample::RESPONSE, lat);
        }
        s.turn = turn::SERVER;
        out
    }
}

/// Copies the first payload bytes of this packet to `PAYLOADS`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn post_sample(
    ctx: &TcContext,
    key: &FlowKey,
    flow_first_seen_ns: u64,
    pkt: &Packet,
    dir: usize,
    kind: u8,
    first: bool,
    now: u64,
    latency_ns: u64,
) {
    let Some(mut entry) = PAYLOADS.reserve::<PayloadSample>(0) else {
        if let Some(lost) = PAYLOADS_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe { *lost += 1 };
        }
        return;
    };
    // Only the bytes inside the packet are copied; the verifier needs a constant bound.
    let avail = pkt.payload_len as usize;
    let n = if avail > PAYLOAD_SAMPLE_BYTES {
        PAYLOAD_SAMPLE_BYTES
    } else {
        avail
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: the reservation is exactly one PayloadSample, exclusively ours until submit;
    // fields are written through raw pointers (the memory is uninitialised).
    unsafe {
        addr_of_mut!((*ev).key).write(*key);
        addr_of_mut!((*ev).kind).write(kind);
        addr_of_mut!((*ev).dir).write(dir as u8);
        addr_of_mut!((*ev).flow_first_seen_ns).write(flow_first_seen_ns);
        addr_of_mut!((*ev).ts_ns).write(now);
        addr_of_mut!((*ev).latency_ns).write(latency_ns);
        addr_of_mut!((*ev).payload_len).write(pkt.payload_len);
        addr_of_mut!((*ev).first_of_direction).write(first as u8);
        // Byte by byte: a 3-byte array store would be a call to the byte-loop memset.
        let pad = addr_of_mut!((*ev)._pad) as *mut u8;
        pad.write_volatile(0);
        pad.add(1).write_volatile(0);
        pad.add(2).write_volatile(0);
    }
    let mut copied = 0u16;
    if n > 0 {
        // Masked into 1..=128 so that the verifier sees a non-zero, bounded length.
        let len = ((n as u32 - 1) & (PAYLOAD_SAMPLE_BYTES as u32 - 1)) + 1;
        // SAFETY: `len` bytes fit in `data`; the destination is reserved ring memory.
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                pkt.payload_off,
                addr_of_mut!((*ev).data).cast(),
                len,
            )
        };
        if rc == 0 {
            copied = len as u16;
        }
    }
    // SAFETY: as above.
    unsafe { addr_of_mut!((*ev).captured).write(copied) };
    // No wakeup per sample (that would cost an interrupt per request): the agent reads
    // this ring on a short timer, and is woken only when a burst fills a quarter of it.
    entry.submit(wakeup_flags(&PAYLOADS, PAYLOAD_RING_BYTES as u64 / 4));
}

/// Submit flags for a ring the agent reads on a short timer: no wakeup per item (one per
/// short connection would cost the agent a context switch each), except once `wake_at`
/// bytes wait, so that a burst is read before the ring fills.
#[inline(always)]
pub(crate) fn wakeup_flags(ring: &RingBuf, wake_at: u64) -> u64 {
    if ring.query(BPF_RB_AVAIL_DATA as u64) >= wake_at {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Records FIN and RST; returns whether the flow ended on this packet (its end is to be
/// posted, once): on a RST, or on the ACK that answers the second FIN (sent the other way
/// than that FIN), so that the final state includes the connection's last packet. In a
/// simultaneous close the second of the two final ACKs finds no entry and is not counted.
#[inline(always)]
fn track_close(s: &mut FlowStats, dir: usize, flags: u8) -> bool {
    const BOTH_FINS: u16 = state::FIN_OUT | state::FIN_IN;
    if s.state & state::END_REPORTED != 0 {
        return false;
    }
    if flags & TCP_RST != 0 {
        s.resets = s.resets.wrapping_add(1);
        s.state |= state::RST | state::END_REPORTED;
        return true;
    }
    let had_both = s.state & BOTH_FINS == BOTH_FINS;
    if flags & TCP_FIN != 0 {
        s.state |= if dir == DIR_OUT {
            state::FIN_OUT
        } else {
            state::FIN_IN
        };
        if !had_both && s.state & BOTH_FINS == BOTH_FINS && dir == DIR_IN {
            s.state |= state::LAST_FIN_IN;
        }
        return false;
    }
    let last_fin_dir = if s.state & state::LAST_FIN_IN != 0 {
        DIR_IN
    } else {
        DIR_OUT
    };
    if had_both && flags & TCP_ACK != 0 && dir != last_fin_dir {
        s.state |= state::END_REPORTED;
        return true;
    }
    false
}

/// Posts a closed flow's final state to `FLOW_EVENTS`; false when the ring is full.
#[inline(always)]
fn post_end(key: &FlowKey, s: &FlowStats) -> bool {
    if let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) {
        // SAFETY: the reservation is exactly one FlowEvent, exclusively ours.
        unsafe {
            let ev = entry.as_mut_ptr();
            addr_of_mut!((*ev).key).write(*key);
            addr_of_mut!((*ev)._pad).write([0; 4]);
            core::ptr::copy_nonoverlapping(s as *const FlowStats, addr_of_mut!((*ev).stats), 1);
        }
        // The agent reads this ring every 50 ms: no wakeup per flow (one per short
        // connection), only once a quarter of the ring waits.
        entry.submit(wakeup_flags(&FLOW_EVENTS, FLOW_EVENT_RING_BYTES as u64 / 4));
        return true;
    }
    false
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
