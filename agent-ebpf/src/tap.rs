//! The shadow tap: copies the packets of sampled connections to user space.
//!
//! Two classifiers on a production node's host-side interface, each after the flow
//! observer: `shadow_tap_in` on TC egress (packets going into the node: the client's
//! requests) and `shadow_tap_out` on TC ingress (packets coming out of it: the server's
//! answers). Both always return `TC_ACT_UNSPEC`: production packets are never delayed,
//! altered or dropped; the tap only reads them.
//!
//! A connection is decided once, at the client's SYN: eligible when the interface's policy
//! is active and the server port and client source are in it; sampled when
//! `decision_hash(seed, key) < threshold`. The decision stays in the LRU map `SHADOW_CONNS`;
//! connections whose SYN was not seen are never sampled (they could not be replayed).
//! While the agent pauses the tap (`tap_active::PAUSED`: its sinks take nothing) nothing
//! is eligible and a sampled connection's next packet ends its sampling.
//!
//! For a sampled connection every packet with TCP payload, and every SYN, FIN and RST,
//! goes to the ring buffer `SHADOW_COPIES` (`bpf_ringbuf_output`): a `TapRecord` header,
//! then the frame's first `TAP_CTX_CAP` bytes, built in a per-CPU scratch value
//! (`bpf_skb_load_bytes`) and output with their exact length; the payload bytes of a
//! longer frame (a GSO super-packet) follow in `TAIL` records. The ring is one for all
//! CPUs, so records leave in the order they were made (a connection's SYN before its
//! other packets), and it is pinned: copies taken while no agent reads wait in it, and a
//! full ring drops the copy and counts it (`ring_full`), never the packet.
//!
//! The connection's entry also follows whose turn it is (`CLIENT_SPOKE`, `SERVER_SPOKE`,
//! `server_end`): the client payload that starts a new turn is marked `mark::TURN`, so that
//! an agent that starts reading in the middle of a connection resumes at a request's
//! start, never in the middle of one.

use core::ffi::c_void;
use core::ptr::addr_of_mut;

use agent_common::{
    flow::{FAMILY_IPV4, PROTO_TCP},
    shadow::{
        TAP_CHUNK, TAP_CONNECTIONS, TAP_CTX_CAP, TAP_INTERFACES, TAP_MAX_TAIL_CHUNKS,
        TAP_RECORD_BYTES, TAP_RECORD_VERSION, TAP_RING_BYTES, TAP_SOURCE_PREFIXES, TAP_TAIL_CHUNK,
        TapConn, TapConnKey, TapCounters, TapPolicy, TapRecord, TapSourceData, TapTail, conn_state,
        dir, mark, record_kind, sampled, tap_active,
    },
};
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};

use crate::parse::{self, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// One policy per interface index.
#[map(name = "SHADOW_POLICY")]
static SHADOW_POLICY: HashMap<u32, TapPolicy> = HashMap::with_max_entries(TAP_INTERFACES, 0);

/// Source prefixes of the policies (`TapSourceData`: interface, policy generation, address).
#[map(name = "SHADOW_SOURCES")]
static SHADOW_SOURCES: LpmTrie<TapSourceData, u8> =
    LpmTrie::with_max_entries(TAP_SOURCE_PREFIXES, 0);

/// The decision of every connection whose client SYN was seen.
#[map(name = "SHADOW_CONNS")]
static SHADOW_CONNS: LruHashMap<TapConnKey, TapConn> =
    LruHashMap::with_max_entries(TAP_CONNECTIONS, 0);

/// Counters per policy slot.
#[map(name = "SHADOW_COUNTERS")]
static SHADOW_COUNTERS: PerCpuArray<TapCounters> = PerCpuArray::with_max_entries(TAP_INTERFACES, 0);

/// Copies of sampled packets: one ring for every CPU (pinned with the tap's other maps).
#[map(name = "SHADOW_COPIES")]
static SHADOW_COPIES: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);

/// Scratch where a record is built (a chunk does not fit on the stack).
#[map(name = "SHADOW_SCRATCH")]
static SHADOW_SCRATCH: PerCpuArray<TapTail> = PerCpuArray::with_max_entries(1, 0);

pub fn tap(ctx: &TcContext, into_node: bool) -> Result<(), ()> {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map values stay valid for the program run (RCU); only user space writes them.
    let policy = unsafe { &*SHADOW_POLICY.get_ptr(&ifindex).ok_or(())? };
    let pkt = parse::parse(ctx)?;
    if pkt.proto != PROTO_TCP {
        return Ok(());
    }
    let key = if into_node {
        conn_key(&pkt, ifindex, pkt.src, pkt.dst, pkt.sport, pkt.dport)
    } else {
        conn_key(&pkt, ifindex, pkt.dst, pkt.src, pkt.dport, pkt.sport)
    };
    let flags = pkt.tcp_flags;
    let syn = flags & TCP_SYN != 0;
    let now = unsafe { bpf_ktime_get_ns() };
    if into_node && syn && flags & TCP_ACK == 0 {
        decide(policy, &key, now);
    }
    let conn = SHADOW_CONNS.get_ptr_mut(&key).ok_or(())?;
    // SAFETY: as above; two CPUs may update the state bits at once, which only adds bits.
    let conn = unsafe { &mut *conn };
    // The end of every connection is kept, sampled or not: a SYN that reuses the 5-tuple
    // of an ended connection is decided (and counted) afresh, where an unsampled
    // connection's 5-tuple would otherwise keep its old decision uncounted.
    if flags & TCP_RST != 0 {
        conn.state |= conn_state::RST;
    }
    if flags & TCP_FIN != 0 {
        conn.state |= if into_node {
            conn_state::FIN_CLIENT
        } else {
            conn_state::FIN_SERVER
        };
    }
    if conn.state & conn_state::SAMPLED == 0 {
        return Ok(());
    }
    if policy.active == tap_active::PAUSED {
        // Nothing reaches the sinks: the rest of this connection is not copied (its
        // stream has a hole already).
        conn.state &= !conn_state::SAMPLED;
        return Ok(());
    }
    if pkt.payload_len == 0 && flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        return Ok(());
    }
    let d = if into_node {
        dir::TO_SERVER
    } else {
        dir::TO_CLIENT
    };
    copy(ctx, policy.slot, &key, conn, &pkt, d, now);
    Ok(())
}

/// Follows whose turn it is on the connection; returns the record's `mark` bits.
#[inline(always)]
fn turn(conn: &mut TapConn, to_server: bool, payload_len: u32, seq: u32, ack: u32) -> u8 {
    if payload_len == 0 {
        return 0;
    }
    if to_server {
        let s = conn.state;
        // The server's payload so far is acknowledged whole (not pipelined behind it).
        let acked = (ack.wrapping_sub(conn.server_end) as i32) >= 0;
        let start =
            s & conn_state::CLIENT_SPOKE == 0 || (s & conn_state::SERVER_SPOKE != 0 && acked);
        conn.state = (s | conn_state::CLIENT_SPOKE) & !conn_state::SERVER_SPOKE;
        if start { mark::TURN } else { 0 }
    } else {
        let end = seq.wrapping_add(payload_len);
        if conn.state & conn_state::SERVER_SPOKE == 0
            || (end.wrapping_sub(conn.server_end) as i32) > 0
        {
            conn.server_end = end;
        }
        conn.state |= conn_state::SERVER_SPOKE;
        0
    }
}

#[inline(always)]
fn conn_key(
    pkt: &Packet,
    ifindex: u32,
    client: [u32; 4],
    server: [u32; 4],
    client_port: u16,
    server_port: u16,
) -> TapConnKey {
    // Addresses as the parser keeps them (words in packet byte order) as their bytes.
    // SAFETY: same size, every bit pattern valid; the words were read from the packet's
    // bytes in native order, so their bytes are the packet's.
    let (client, server) = unsafe {
        (
            core::mem::transmute::<[u32; 4], [u8; 16]>(client),
            core::mem::transmute::<[u32; 4], [u8; 16]>(server),
        )
    };
    TapConnKey {
        ifindex,
        client_port,
        server_port,
        family: pkt.family,
        _pad: [0; 3],
        client,
        server,
    }
}

#[inline(always)]
fn counters(slot: u32) -> Option<&'static mut TapCounters> {
    // SAFETY: per-CPU slot, only this CPU writes it during the program run.
    SHADOW_COUNTERS
        .get_ptr_mut(slot)
        .map(|p| unsafe { &mut *p })
}

/// The client's SYN: decides a new connection (a retransmitted SYN keeps the decision; a
/// SYN on the 5-tuple of a connection that ended decides afresh).
#[inline(always)]
fn decide(policy: &TapPolicy, key: &TapConnKey, now: u64) {
    if let Some(c) = SHADOW_CONNS.get_ptr(key) {
        // SAFETY: as in `tap`.
        let s = unsafe { (*c).state };
        let ended = s & conn_state::RST != 0
            || s & (conn_state::FIN_CLIENT | conn_state::FIN_SERVER)
                == (conn_state::FIN_CLIENT | conn_state::FIN_SERVER);
        if !ended {
            return;
        }
    }
    let eligible = policy.active == tap_active::ON
        && policy.port_allowed(key.server_port)
        && source_ok(policy, key);
    let take = eligible && sampled(policy.seed, policy.threshold, policy.key_kind, key);
    let fresh = TapConn {
        opened_ns: now,
        state: if take { conn_state::SAMPLED } else { 0 },
        _pad: [0; 3],
        server_end: 0,
    };
    let _ = SHADOW_CONNS.insert(key, &fresh, 0);
    if let Some(c) = counters(policy.slot) {
        c.seen += 1;
        if eligible {
            c.eligible += 1;
        }
        if take {
            c.sampled += 1;
        }
    }
}

#[inline(always)]
fn source_ok(policy: &TapPolicy, key: &TapConnKey) -> bool {
    if policy.all_sources != 0 {
        return true;
    }
    // IPv4 as `::ffff:a.b.c.d`, as user space writes the prefixes.
    let addr = if key.family == FAMILY_IPV4 {
        let c = key.client;
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, c[0], c[1], c[2], c[3],
        ]
    } else {
        key.client
    };
    let k = Key::new(
        64 + 128,
        TapSourceData {
            ifindex: key.ifindex.to_be_bytes(),
            generation: policy.generation.to_be_bytes(),
            addr,
        },
    );
    SHADOW_SOURCES.get(&k).is_some()
}

/// Posts the packet: one `FRAME` record (header + the frame's first bytes), then `TAIL`
/// records for the payload one record cannot hold.
#[inline(always)]
fn copy(
    ctx: &TcContext,
    slot: u32,
    key: &TapConnKey,
    conn: &mut TapConn,
    pkt: &Packet,
    d: u8,
    now: u64,
) {
    let Some(c) = counters(slot) else { return };
    // Sequence and acknowledgement numbers: a helper copy (no packet-pointer bounds to prove).
    let mut sa = [0u8; 8];
    // SAFETY: 8 bytes into an 8-byte stack buffer.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            pkt.l4_off + 4,
            sa.as_mut_ptr().cast(),
            8,
        )
    };
    if rc != 0 {
        return;
    }
    let tcp_seq = u32::from_be_bytes([sa[0], sa[1], sa[2], sa[3]]);
    let tcp_ack = u32::from_be_bytes([sa[4], sa[5], sa[6], sa[7]]);
    let syn = pkt.tcp_flags & TCP_SYN != 0;
    let data_seq = tcp_seq.wrapping_add(syn as u32);
    let marks = turn(
        conn,
        d == dir::TO_SERVER,
        pkt.payload_len,
        data_seq,
        tcp_ack,
    );
    let skb_len = ctx.len();
    // The payload that ends inside the frame (padding after the IP packet is not payload).
    let payload_end = pkt.payload_off + pkt.payload_len;
    let frame_len = if skb_len > TAP_CTX_CAP {
        TAP_CTX_CAP
    } else {
        skb_len
    };
    let first_len = if payload_end > frame_len {
        frame_len.saturating_sub(pkt.payload_off)
    } else {
        pkt.payload_len
    };
    let split = first_len < pkt.payload_len;
    // The record is built in the per-CPU scratch, not on the stack: the program's frame
    // (with the parsed packet and the connection key) stays within the 512-byte limit
    // together with `copy_tail`'s.
    let Some(scratch) = SHADOW_SCRATCH.get_ptr_mut(0) else {
        c.lost += 1;
        return;
    };
    // SAFETY: the per-CPU scratch value is ours for the program run.
    let hdr = unsafe { &mut (*scratch).hdr };
    *hdr = TapRecord {
        opened_ns: conn.opened_ns,
        ktime_ns: now,
        key: *key,
        seq: data_seq,
        ack: tcp_ack,
        frame_len,
        data_off: pkt.payload_off,
        data_len: first_len,
        dir: d,
        tcp_flags: if split {
            pkt.tcp_flags & !TCP_FIN
        } else {
            pkt.tcp_flags
        },
        kind: record_kind::FRAME,
        version: TAP_RECORD_VERSION,
        mark: marks,
        _pad: [0; 3],
    };
    // Masked into 1..=TAP_CHUNK so that the verifier sees a non-zero, bounded length.
    let n = ((frame_len.wrapping_sub(1)) & (TAP_CHUNK as u32 - 1)) + 1;
    // SAFETY: the per-CPU scratch value is ours for the program run; `n` bytes fit in it.
    let ok = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            0,
            addr_of_mut!((*scratch).data).cast(),
            n,
        ) == 0
    };
    if !ok {
        c.lost += 1;
        return;
    }
    if !output(c, scratch, n) {
        return;
    }
    c.copies += 1;
    c.copied_bytes += frame_len as u64;
    if !split {
        return;
    }
    copy_tail(ctx, c, scratch, pkt, first_len);
}

/// Outputs the record in `scratch` (header and `n` bytes) to the ring; a full ring is
/// counted. Returns whether it went out.
#[inline(always)]
fn output(c: &mut TapCounters, scratch: *mut TapTail, n: u32) -> bool {
    // Masked again into 1..=TAP_CHUNK: the verifier checks the size against the value's.
    let size = TAP_RECORD_BYTES as u64 + (((n - 1) & (TAP_CHUNK as u32 - 1)) + 1) as u64;
    // SAFETY: the map is a ring buffer; `scratch` is a map value of at least `size` bytes.
    let rc = unsafe {
        bpf_ringbuf_output(
            &SHADOW_COPIES as *const _ as *mut c_void,
            scratch.cast(),
            size,
            0,
        )
    };
    if rc != 0 {
        c.lost += 1;
        c.ring_full += 1;
        return false;
    }
    true
}

/// `scratch` holds the frame record just posted: the tail records' header but for the
/// fields set here.
#[inline(never)]
fn copy_tail(ctx: &TcContext, c: &mut TapCounters, scratch: *mut TapTail, pkt: &Packet, done: u32) {
    // SAFETY: the per-CPU scratch value is ours for the program run.
    let first_seq = unsafe { (*scratch).hdr.seq };
    let mut done = done;
    for _ in 0..TAP_MAX_TAIL_CHUNKS {
        if done >= pkt.payload_len {
            return;
        }
        let rest = pkt.payload_len - done;
        let n = if rest > TAP_TAIL_CHUNK as u32 {
            TAP_TAIL_CHUNK as u32
        } else {
            rest
        };
        // Masked into 1..=TAP_TAIL_CHUNK so that the verifier sees a non-zero, bounded length.
        let n = ((n - 1) & (TAP_TAIL_CHUNK as u32 - 1)) + 1;
        let last = done + n >= pkt.payload_len;
        // SAFETY: the per-CPU scratch value is ours for the program run.
        unsafe {
            let t = &mut *scratch;
            t.hdr.kind = record_kind::TAIL;
            t.hdr.frame_len = 0;
            t.hdr.data_off = 0;
            t.hdr.data_len = n;
            t.hdr.mark = 0;
            t.hdr.seq = first_seq.wrapping_add(done);
            t.hdr.tcp_flags = if last {
                pkt.tcp_flags & !TCP_SYN
            } else {
                pkt.tcp_flags & !(TCP_SYN | TCP_FIN)
            };
            if bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                pkt.payload_off + done,
                addr_of_mut!(t.data).cast(),
                n,
            ) != 0
            {
                c.lost += 1;
                return;
            }
        }
        if !output(c, scratch, n) {
            return;
        }
        c.copies += 1;
        c.copied_bytes += n as u64;
        done += n;
    }
    // Longer than the tail records can hold: the rest is lost (user space sees a gap).
    if done < pkt.payload_len {
        c.lost += 1;
    }
}
