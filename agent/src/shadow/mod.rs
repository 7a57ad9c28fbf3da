//! Shadow environments: the production side, the tap (kind `shadow-tap`), and the
//! shadow side, the sink (kind `shadow-sink`, [`sink`]: replays the sampled connections
//! into the shadow and compares the answers).
//!
//! A TC program on the production node's host-side interface decides per connection, at
//! the client's SYN, whether it is sampled, and copies every packet of a sampled
//! connection to user space ([`tap`]; the kernel half is `agent-ebpf/src/tap.rs`). The
//! agent reassembles each direction by TCP sequence number ([`reassembly`]) and streams
//! the in-order bytes to the shadow hosts' sinks ([`tap_stream`]), which replay each
//! connection over their own TCP connection into the shadow.
//!
//! # Why copies, user-space reassembly and replay (not sequence translation)
//!
//! TCPCopy-style mirroring forwards the copied *packets* to the shadow and rewrites their
//! sequence numbers (learning the shadow's ISN from its SYN-ACK, swallowing its replies).
//! weft does not, because of what was measured on a 2-CPU lab machine (the shadow-mirror
//! peer benchmark run beside weft when this was decided):
//!
//! - A shadow's TCP stack resets raw copies: with production's MAC and address given to
//!   it (e2), the shadow answered 20,259 copied segments per run with 20,199 RSTs
//!   (`OutRsts`) and served **0** requests; with 10 % of flows cloned in the kernel by
//!   `bpf_clone_redirect` (e4) it was the same: 1,616 RSTs for 1,630 segments, 0 requests.
//!   Copies carry production's ISN and its acknowledgements of production's answers,
//!   which the shadow never sent. Making them acceptable means translating sequence and
//!   acknowledgement numbers of every copied segment, per connection, in the kernel or in
//!   a device in front of the shadow, and hiding the shadow's own packets (e3: when they
//!   escape they hijack production's clients: 14,449 resets per run, 0 requests answered
//!   by production).
//! - Replay over the shadow's own connection works with an **unmodified** shadow stack:
//!   the sink is an ordinary TCP client of the shadow, which sets its own ISNs, windows,
//!   retransmissions and congestion control; a slow or dead shadow slows nothing but the
//!   replay (nginx's `mirror` couples production to the shadow's pace: d, 255 req/s).
//! - Read-only filtering (HTTP GET/HEAD, Redis reads, PostgreSQL SELECT) needs the
//!   requests framed anyway, i.e. the byte stream reassembled; a packet forwarder cannot
//!   drop a write out of the middle of a stream without breaking its sequence space.
//!
//! The kernel part stays small and constant-cost per packet: one hash lookup (policy),
//! one LRU lookup (decision) and, for sampled connections only, one ring buffer output of
//! the frame (copied into a per-CPU scratch value first; GSO super-packets in chunks). Production's
//! packets are never delayed, altered or dropped: both programs return `TC_ACT_UNSPEC`.
//! And a shadow that takes nothing (its host down or unreachable) costs production no
//! copies: the tap's breaker pauses copying in the kernel until the sinks take bytes again
//! ([`tap_breaker`]).

pub mod reassembly;
pub mod sink;
pub mod synthetic;
pub mod tap;
pub mod tap_breaker;
pub mod tap_policy;
pub mod tap_reconciler;
pub mod tap_record;
pub mod tap_stream;

#[cfg(test)]
mod tap_tests;

use prometheus_client::registry::Registry;

use crate::metrics::{Counter, Gauge, register};

/// The taps' Prometheus metrics (totals over every tap of the agent).
#[derive(Default)]
pub struct ShadowTapMetrics {
    pub connections_seen: Counter,
    pub connections_eligible: Counter,
    pub connections_sampled: Counter,
    pub bytes_streamed: Counter,
    pub connections_lost: Counter,
    pub copies_lost: Counter,
    pub ring_full: Counter,
    pub sinks_connected: Gauge,
    pub taps: Gauge,
    pub pauses: Counter,
}

impl ShadowTapMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        register(
            r,
            "weft_agent_shadow_connections_seen_total",
            "New connections to tapped production nodes (client SYNs).",
            m.connections_seen.clone(),
        );
        register(
            r,
            "weft_agent_shadow_connections_eligible_total",
            "Of those, connections the sampling policy covers (active, port, source).",
            m.connections_eligible.clone(),
        );
        register(
            r,
            "weft_agent_shadow_connections_sampled_total",
            "Of those, connections sampled and copied to the shadow sinks.",
            m.connections_sampled.clone(),
        );
        register(
            r,
            "weft_agent_shadow_bytes_streamed_total",
            "Reassembled payload bytes written to shadow sinks.",
            m.bytes_streamed.clone(),
        );
        register(
            r,
            "weft_agent_shadow_connections_lost_total",
            "Sampled connections given up: a gap, a full sink queue, a sink reconnect or too many connections.",
            m.connections_lost.clone(),
        );
        register(
            r,
            "weft_agent_shadow_copies_lost_total",
            "Packet copies the kernel could not hand to user space (the ring was full, or a frame too long to copy whole).",
            m.copies_lost.clone(),
        );
        register(
            r,
            "weft_agent_shadow_ring_full_total",
            "Of those, copies dropped because the taps' ring buffer was full (no agent read it for too long, e.g. across a restart, or it read too slowly).",
            m.ring_full.clone(),
        );
        register(
            r,
            "weft_agent_shadow_sinks_connected",
            "Shadow sinks with an open stream.",
            m.sinks_connected.clone(),
        );
        register(
            r,
            "weft_agent_shadow_taps",
            "Shadow taps on this host.",
            m.taps.clone(),
        );
        register(
            r,
            "weft_agent_shadow_tap_pauses_total",
            "Times a tap stopped copying because its sinks took nothing (refused frames, no byte written); it resumes after 1 s, up to 30 s when it trips again at once.",
            m.pauses.clone(),
        );
        m
    }
}
