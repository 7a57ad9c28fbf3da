//! The flow table: key, per-flow state, and the flow-end event.

/// Traffic leaving the workload (TC ingress of its host-side interface).
pub const DIR_OUT: usize = 0;
/// Traffic going to the workload (TC egress of its host-side interface).
pub const DIR_IN: usize = 1;

/// Capacity of the LRU flow map (entries). At 140 bytes per entry (44 B key + 96 B value,
/// plus the kernel's own per-element header) this is about 12 MiB of kernel memory at most.
pub const FLOW_TABLE_ENTRIES: u32 = 65_536;
/// Size of the flow-end ring buffer in bytes (a power of two, a multiple of the page size).
pub const FLOW_EVENT_RING_BYTES: u32 = 256 * 1024;
/// Size of the payload-sample ring buffer: about 20,000 samples in flight.
pub const PAYLOAD_RING_BYTES: u32 = 4 * 1024 * 1024;
/// Payload bytes copied per sample.
pub const PAYLOAD_SAMPLE_BYTES: usize = 128;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `FlowStats::state` bits.
pub mod state {
    /// The flow's first packet was seen: a TCP SYN (or SYN-ACK) or the first UDP datagram.
    /// Unset for a connection that was already running when it was first observed.
    pub const OPENED: u16 = 1 << 0;
    pub const FIN_OUT: u16 = 1 << 1;
    pub const FIN_IN: u16 = 1 << 2;
    pub const RST: u16 = 1 << 3;
    /// The flow ended (RST, or the ACK of the second FIN). The kernel posts its final
    /// state to `FLOW_EVENTS` and deletes the entry; an entry that still has this bit is
    /// one whose event did not fit in the ring (the agent's drain reports and deletes it).
    pub const END_REPORTED: u16 = 1 << 4;
    /// The first payload bytes of the direction were posted to `PAYLOADS`.
    pub const SAMPLED_OUT: u16 = 1 << 5;
    pub const SAMPLED_IN: u16 = 1 << 6;
    /// `FlowStats::mark_ns` holds the start of a handshake measurement (SYN sent by a
    /// local client, or SYN-ACK sent by a local server).
    pub const HANDSHAKE_MARK: u16 = 1 << 7;
    /// The handshake was measured, or abandoned because a request turn started first (the
    /// turn took `mark_ns` over): no new handshake mark is taken.
    pub const HANDSHAKE_DONE: u16 = 1 << 8;
    /// The second FIN (the one that made `FIN_OUT | FIN_IN`) went to the workload
    /// (`DIR_IN`); unset: it came from the workload. The ACK that answers it, sent the other
    /// way, ends the flow.
    pub const LAST_FIN_IN: u16 = 1 << 9;
    /// The connection's payload is copied whole to `STREAM_CHUNKS` (see `StreamChunk`):
    /// its client's first bytes opened HTTP/2 with prior knowledge (`PRI * HTTP/2.0`, gRPC
    /// included) or AMQP (`AMQP`), whose requests cannot be counted from a turn's first
    /// bytes. Set on the client's first payload of a connection whose SYN was seen.
    pub const WHOLE: u16 = 1 << 10;
}

/// `FlowStats::turn`: who sent the last payload of a request/response exchange.
pub mod turn {
    pub const NONE: u8 = 0;
    /// The client spoke last: a request is outstanding, `FlowStats::mark_ns` is its start.
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
}

/// Number of request-latency histogram buckets (`latency::bucket_of`). The kernel keeps no
/// histogram: user space builds it per flow from the latencies of the `RESPONSE` samples.
pub const LATENCY_BUCKETS: usize = 48;

/// A flow as seen on one workload interface. Addresses and ports are those of the workload
/// (`local`) and its peer (`remote`), so both directions of a connection share one entry.
/// IPv4 addresses use the first four bytes of the 16; the rest are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub ifindex: u32,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);

/// Per-flow state kept by the kernel program. Counters are cumulative since the entry was
/// created; the agent computes deltas. Timestamps are `CLOCK_MONOTONIC` nanoseconds.
///
/// 96 bytes, so that key and value take 140 bytes per flow. What need not be per flow in
/// the kernel is not here: the request-latency histogram is built in user space from the
/// `RESPONSE` payload samples (each carries its request's latency), reconciled with the
/// exact `requests` and `latency_sum_ns` kept here when samples were lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowStats {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Indexed by `DIR_OUT` / `DIR_IN`. GSO packets count as their segment count.
    pub packets: [u64; 2],
    /// Layer-3 bytes (IP header included).
    pub bytes: [u64; 2],
    /// Transport payload bytes.
    pub payload_bytes: [u64; 2],
    /// One timestamp for two uses: while `state::HANDSHAKE_MARK` is set, the start of the
    /// handshake measurement; while `turn` is `turn::CLIENT`, when the outstanding request
    /// started (first payload byte of the client's turn). A turn that starts before the
    /// handshake completes takes it over and abandons the handshake measurement.
    pub mark_ns: u64,
    /// Sum of completed request latencies (exact, every request).
    pub latency_sum_ns: u64,
    /// Completed request/response turns (exact, every request).
    pub requests: u32,
    /// SYN to SYN-ACK (local client) or SYN-ACK to ACK (local server), saturating at
    /// `u32::MAX` (4.3 s); 0 until measured, at least 1 once measured.
    pub handshake_rtt_ns: u32,
    /// TCP RST packets seen (either direction), wrapping.
    pub resets: u16,
    /// `state::*` bits.
    pub state: u16,
    /// TCP flags seen, OR-ed, per direction.
    pub tcp_flags: [u8; 2],
    /// 1 when the workload is the client (opened the connection).
    pub client_is_local: u8,
    /// A `turn::*` value.
    pub turn: u8,
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 96);
/// Bytes per flow-map entry as the map declares them (key + value).
pub const FLOW_ENTRY_BYTES: usize =
    core::mem::size_of::<FlowKey>() + core::mem::size_of::<FlowStats>();
const _: () = assert!(FLOW_ENTRY_BYTES <= 144);

impl FlowStats {
    pub const ZERO: FlowStats = FlowStats {
        first_seen_ns: 0,
        last_seen_ns: 0,
        packets: [0; 2],
        bytes: [0; 2],
        payload_bytes: [0; 2],
        mark_ns: 0,
        latency_sum_ns: 0,
        requests: 0,
        handshake_rtt_ns: 0,
        resets: 0,
        state: 0,
        tcp_flags: [0; 2],
        client_is_local: 0,
        turn: turn::NONE,
    };
}

/// Posted to the flow-end ring buffer when a flow closes (RST, or the ACK of the second FIN):
/// the flow's final state. The kernel deletes the flow's entry once the event is posted, so
/// a short connection costs the agent no map syscall: its last record is made from this.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub _pad: [u8; 4],
    pub stats: FlowStats,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 144);

/// `PayloadSample::kind`.
pub mod sample {
    /// The first payload of a direction that does not start or answer a request (a server
    /// that speaks first, e.g. a MySQL greeting).
    pub const FIRST: u8 = 0;
    /// The client starts a request turn.
    pub const REQUEST: u8 = 1;
    /// The server's first payload answering the outstanding request; `latency_ns` is set.
    pub const RESPONSE: u8 = 2;
}

/// The first bytes of a payload at a turn of the conversation, for user space to detect
/// the application protocol and read method, path, status or error. Posted at most twice
/// per request (request start, response start), never per packet; not posted for a flow
/// copied whole (`state::WHOLE`), whose chunks carry all of it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadSample {
    pub key: FlowKey,
    /// A `sample::*` value.
    pub kind: u8,
    /// `DIR_OUT` or `DIR_IN`.
    pub dir: u8,
    /// Bytes of `data` that are valid.
    pub captured: u16,
    /// Identifies the flow generation (a reused 5-tuple has another value).
    pub flow_first_seen_ns: u64,
    pub ts_ns: u64,
    /// For `RESPONSE`: time since the request started.
    pub latency_ns: u64,
    /// Payload length of the packet (may exceed `captured`).
    pub payload_len: u32,
    /// 1 when this is the first payload seen in its direction.
    pub first_of_direction: u8,
    pub _pad: [u8; 3],
    pub data: [u8; PAYLOAD_SAMPLE_BYTES],
}
const _: () = assert!(core::mem::size_of::<PayloadSample>() == 208);

/// Payload bytes of one side of a request/response turn copied at most, for a flow copied
/// whole (`state::WHOLE`): the bytes `weft import pcap` keeps of a turn, so that the live
/// counts and those of a capture come from the same bytes.
pub const STREAM_TURN_BYTES: u32 = 16 * 1024;
/// Data bytes per `STREAM_CHUNKS` record at most (a power of two).
pub const STREAM_CHUNK_BYTES: usize = 4096;
/// Records per packet at most: enough for a whole side of a turn.
pub const STREAM_MAX_CHUNKS: u32 = STREAM_TURN_BYTES / STREAM_CHUNK_BYTES as u32;
const _: () =
    assert!(STREAM_MAX_CHUNKS as usize * STREAM_CHUNK_BYTES == STREAM_TURN_BYTES as usize);
/// Size of the stream-copy ring buffer.
pub const STREAM_RING_BYTES: u32 = 4 * 1024 * 1024;
/// Connections copied whole that the kernel follows at once (`STREAM_FLOWS`, LRU).
pub const STREAM_FLOW_ENTRIES: u32 = 16_384;

/// `StreamChunk::flags` bits.
pub mod chunk {
    /// The chunk starts its direction's first payload: the stream starts here.
    pub const START: u8 = 1 << 0;
    /// Bytes of this side of the turn after this chunk may not be copied: the packet was
    /// longer than what was left of [`STREAM_TURN_BYTES`](super::STREAM_TURN_BYTES), or the
    /// side reached it. The side is not whole; its next bytes in the stream are not a gap.
    pub const CUT: u8 = 1 << 1;
    pub const ALL: u8 = START | CUT;
}

/// A piece of a packet of a flow copied whole (`state::WHOLE`), posted to `STREAM_CHUNKS`
/// and followed there by `len` payload bytes: the packet's payload from `offset`. A packet
/// gives one chunk per [`STREAM_CHUNK_BYTES`] copied, in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamChunk {
    pub key: FlowKey,
    /// 1 when the client sent the packet.
    pub from_client: u8,
    /// `chunk::*` bits.
    pub flags: u8,
    /// `DIR_OUT` or `DIR_IN`.
    pub dir: u8,
    pub _pad: u8,
    /// Identifies the flow generation, as `PayloadSample::flow_first_seen_ns`.
    pub flow_first_seen_ns: u64,
    pub ts_ns: u64,
    /// TCP sequence number of the chunk's first byte.
    pub seq: u32,
    /// Payload length of the packet.
    pub payload_len: u32,
    /// Where the chunk's bytes start in the packet's payload.
    pub offset: u32,
    /// Bytes that follow the header.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<StreamChunk>() == 80);

/// Where the kernel builds a `STREAM_CHUNKS` record (per-CPU: it does not fit the stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamScratch {
    pub hdr: StreamChunk,
    pub data: [u8; STREAM_CHUNK_BYTES],
}

/// What the kernel keeps of a flow copied whole (`STREAM_FLOWS`): which side spoke last
/// and how many bytes of its turn were copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamState {
    pub flow_first_seen_ns: u64,
    pub copied: u32,
    /// 0 before any payload, 1 the client, 2 the server.
    pub side: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<StreamState>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), no implicit padding (checked by the size asserts),
    // every bit pattern valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::PayloadSample {}
    unsafe impl aya::Pod for super::StreamState {}
}
