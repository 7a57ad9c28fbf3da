//! Whole-stream copies of the connections whose requests a turn's first bytes cannot count.
//!
//! An HTTP/2 connection (gRPC included) multiplexes streams whose HEADERS can sit anywhere
//! in a turn, behind DATA, PING or WINDOW_UPDATE frames, and its HPACK tables need every
//! header block; an AMQP client writes several methods (publishes, a get) in one turn. The
//! 128 bytes `PAYLOADS` takes of a turn's first packet count neither exactly. So a flow
//! whose client opens it with HTTP/2's prior-knowledge preface or AMQP's protocol header
//! (its first payload, on a connection whose SYN was seen) is marked `state::WHOLE`, and
//! from then on each of its payload packets is copied to `STREAM_CHUNKS`: the bytes of each
//! side of a turn up to `STREAM_TURN_BYTES` (what `weft import pcap` keeps of a turn), in
//! records of at most `STREAM_CHUNK_BYTES`. Every other flow pays one bit test.
//!
//! `STREAM_FLOWS` follows, per flow copied whole, which side spoke last and how much of its
//! turn was copied. A side that reaches the bound is marked `chunk::CUT` and copied no more
//! until the other side speaks. A copy that does not fit in the ring is counted in
//! `STREAM_LOST` (user space sees the hole in the sequence numbers).

use core::ffi::c_void;
use core::ptr::addr_of_mut;

use agent_common::{
    FlowKey,
    flow::{
        STREAM_CHUNK_BYTES, STREAM_FLOW_ENTRIES, STREAM_MAX_CHUNKS, STREAM_RING_BYTES,
        STREAM_TURN_BYTES, StreamChunk, StreamScratch, StreamState, chunk,
    },
};
use aya_ebpf::{
    helpers::{bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};

use crate::parse::Packet;

/// The payload of flows copied whole.
#[map(name = "STREAM_CHUNKS")]
static STREAM_CHUNKS: RingBuf = RingBuf::with_byte_size(STREAM_RING_BYTES, 0);

/// Per flow copied whole: the side that spoke last and the bytes of its turn copied.
#[map(name = "STREAM_FLOWS")]
static STREAM_FLOWS: LruHashMap<FlowKey, StreamState> =
    LruHashMap::with_max_entries(STREAM_FLOW_ENTRIES, 0);

/// Where a record is built (it does not fit on the stack).
#[map(name = "STREAM_SCRATCH")]
static STREAM_SCRATCH: PerCpuArray<StreamScratch> = PerCpuArray::with_max_entries(1, 0);

/// Records that did not fit in `STREAM_CHUNKS` (per CPU).
#[map(name = "STREAM_LOST")]
static STREAM_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether a client's first payload opens a connection to copy whole: HTTP/2 with prior
/// knowledge (`PRI * HTTP/2.0...`) or AMQP (`AMQP` and the version).
#[inline(always)]
pub fn opens_whole(ctx: &TcContext, pkt: &Packet) -> bool {
    if pkt.payload_len < 8 {
        return false;
    }
    let mut head = [0u8; 8];
    // SAFETY: 8 bytes into an 8-byte stack buffer; the packet holds at least 8 payload bytes.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            pkt.payload_off,
            head.as_mut_ptr().cast(),
            8,
        )
    };
    if rc != 0 {
        return false;
    }
    let w = u64::from_be_bytes(head);
    w == u64::from_be_bytes(*b"PRI * HT") || w >> 32 == u32::from_be_bytes(*b"AMQP") as u64
}

#[inline(always)]
fn lost() {
    if let Some(n) = STREAM_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *n += 1 };
    }
}

/// Copies this packet's payload (of a flow marked `state::WHOLE`) to `STREAM_CHUNKS`, as
/// far as its side's turn has room. `start`: the packet is its direction's first payload.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn copy(
    ctx: &TcContext,
    key: &FlowKey,
    first_seen_ns: u64,
    pkt: &Packet,
    dir: u8,
    from_client: bool,
    start: bool,
    now: u64,
) {
    let side = if from_client { 1u8 } else { 2u8 };
    let st = match STREAM_FLOWS.get_ptr_mut(key) {
        // SAFETY: a map value pointer stays valid for the program run (RCU).
        Some(p) if unsafe { (*p).flow_first_seen_ns } == first_seen_ns => p,
        _ => {
            let fresh = StreamState {
                flow_first_seen_ns: first_seen_ns,
                copied: 0,
                side: 0,
                _pad: [0; 3],
            };
            if STREAM_FLOWS.insert(key, &fresh, 0).is_err() {
                lost();
                return;
            }
            match STREAM_FLOWS.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    lost();
                    return;
                }
            }
        }
    };
    // SAFETY: as above. A flow's two directions can run on two CPUs at once; each one's
    // turns alternate, so they do not race on a side change in practice, and a race costs
    // at most a cut copy, which user space sees.
    let st = unsafe { &mut *st };
    if st.side != side {
        st.side = side;
        st.copied = 0;
    }
    let room = STREAM_TURN_BYTES.saturating_sub(st.copied);
    if room == 0 {
        return;
    }
    let n = if pkt.payload_len > room {
        room
    } else {
        pkt.payload_len
    };
    st.copied += n;
    let cut = n < pkt.payload_len || st.copied >= STREAM_TURN_BYTES;

    // The TCP sequence number: a helper copy (no packet-pointer bounds to prove).
    let mut sb = [0u8; 4];
    // SAFETY: 4 bytes into a 4-byte stack buffer.
    if unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            pkt.l4_off + 4,
            sb.as_mut_ptr().cast(),
            4,
        )
    } != 0
    {
        lost();
        return;
    }
    let Some(scratch) = STREAM_SCRATCH.get_ptr_mut(0) else {
        lost();
        return;
    };
    // SAFETY: the per-CPU scratch value is ours for the program run; fields are written in
    // place (a whole-struct store would go through the stack).
    unsafe {
        let h = addr_of_mut!((*scratch).hdr);
        addr_of_mut!((*h).key).write(*key);
        addr_of_mut!((*h).from_client).write(from_client as u8);
        addr_of_mut!((*h).flags).write(if start { chunk::START } else { 0 });
        addr_of_mut!((*h).dir).write(dir);
        addr_of_mut!((*h)._pad).write(0);
        addr_of_mut!((*h).flow_first_seen_ns).write(first_seen_ns);
        addr_of_mut!((*h).ts_ns).write(now);
        addr_of_mut!((*h).seq).write(u32::from_be_bytes(sb));
        addr_of_mut!((*h).payload_len).write(pkt.payload_len);
        addr_of_mut!((*h).offset).write(0);
        addr_of_mut!((*h).len).write(0);
    }
    copy_chunks(ctx, scratch, pkt.payload_off, n, cut);
}

/// Posts `n` payload bytes from `payload_off` as chunk records; the header in `scratch`
/// holds the packet's fields. The last record carries `chunk::CUT` when `cut`.
#[inline(never)]
fn copy_chunks(ctx: &TcContext, scratch: *mut StreamScratch, payload_off: u32, n: u32, cut: bool) {
    // SAFETY: the per-CPU scratch value is ours for the program run.
    let first_seq = unsafe { (*scratch).hdr.seq };
    let mut done = 0u32;
    for _ in 0..STREAM_MAX_CHUNKS {
        if done >= n {
            return;
        }
        let rest = n - done;
        let len = if rest > STREAM_CHUNK_BYTES as u32 {
            STREAM_CHUNK_BYTES as u32
        } else {
            rest
        };
        // Masked into 1..=STREAM_CHUNK_BYTES so that the verifier sees a non-zero, bounded
        // length.
        let len = ((len - 1) & (STREAM_CHUNK_BYTES as u32 - 1)) + 1;
        let last = done + len >= n;
        // SAFETY: the per-CPU scratch value is ours; `len` bytes fit in its data.
        unsafe {
            let h = &mut (*scratch).hdr;
            if done > 0 {
                h.flags &= !chunk::START;
            }
            if last && cut {
                h.flags |= chunk::CUT;
            }
            h.offset = done;
            h.len = len;
            h.seq = first_seq.wrapping_add(done);
            if bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                payload_off + done,
                addr_of_mut!((*scratch).data).cast(),
                len,
            ) != 0
            {
                lost();
                return;
            }
        }
        let size = core::mem::size_of::<StreamChunk>() as u64
            + (((len - 1) & (STREAM_CHUNK_BYTES as u32 - 1)) + 1) as u64;
        // SAFETY: the map is a ring buffer; `scratch` is a map value of at least `size` bytes.
        let rc = unsafe {
            bpf_ringbuf_output(
                &STREAM_CHUNKS as *const _ as *mut c_void,
                scratch.cast(),
                size,
                crate::wakeup_flags(&STREAM_CHUNKS, STREAM_RING_BYTES as u64 / 4),
            )
        };
        if rc != 0 {
            lost();
            return;
        }
        done += len;
    }
}
