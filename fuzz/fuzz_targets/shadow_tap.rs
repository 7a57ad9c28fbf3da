//! The shadow tap's user-space half on untrusted bytes: ring buffer records decoded
//! (`tap_record::parse`) and fed to the TCP reassembler, plus segments built from the
//! input to reach reassembly's corners (reordering, overlaps, wraps, FIN/RST, bounds).
//! The agent is a binary crate: its two modules are included by path (they depend on std
//! and agent-common only).
#![no_main]

use libfuzzer_sys::fuzz_target;

// `reassembly` names `super::tap_record`: both at the crate root, as in the agent's
// `shadow` module.
#[allow(dead_code)]
#[path = "../../agent/src/shadow/reassembly.rs"]
mod reassembly;
#[allow(dead_code)]
#[path = "../../agent/src/shadow/tap_record.rs"]
mod tap_record;

use reassembly::{Assembler, Event, Limits};
use tap_record::Segment;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        conn_bytes: 4096,
        total_bytes: 16 * 1024,
        connections: 8,
        hole_ns: 1_000,
        idle_ns: 100_000,
        window: 1 << 20,
    };
    let mut asm = Assembler::new(limits);
    let mut out = Vec::new();
    let mut seen = (0, std::collections::HashSet::new());
    if mode & 1 == 0 {
        // Length-prefixed raw samples.
        let mut b = rest;
        while b.len() >= 2 {
            let n = usize::from(u16::from_le_bytes([b[0], b[1]])).min(b.len() - 2);
            let sample = &b[2..2 + n];
            b = &b[2 + n..];
            if let Ok(seg) = tap_record::parse(sample) {
                // A decoded record encodes back to something that decodes the same.
                let kind = agent_common::shadow::record_kind::TAIL;
                assert_eq!(
                    tap_record::parse(&tap_record::encode(&seg, kind)).as_ref(),
                    Ok(&seg)
                );
                asm.push(seg, &mut out);
            }
            check(&asm, &limits, &out, &mut seen);
        }
    } else {
        // Segments of two connections: 8 bytes each (conn, dir, flags, seq delta, len).
        let base = u32::MAX - 5000;
        for (i, c) in rest.chunks_exact(8).enumerate() {
            let mut seg = Segment {
                key: tap_record::key_of(
                    std::net::SocketAddr::from(([198, 18, 0, 2], 1000 + u16::from(c[0] & 1))),
                    std::net::SocketAddr::from(([198, 18, 0, 1], 80)),
                ),
                opened_ns: u64::from(c[0] >> 6),
                ktime_ns: i as u64 * 100,
                to_server: c[1] & 1 == 0,
                seq: base.wrapping_add(u32::from(u16::from_le_bytes([c[3], c[4]]))),
                ack: 0,
                flags: c[2],
                turn: c[1] & 2 != 0,
                data: Vec::new(),
            };
            let len = usize::from(u16::from_le_bytes([c[5], c[6]]) % 3000);
            let start = seg.seq.wrapping_sub(base) as usize;
            seg.data = (0..len).map(|j| (start + j) as u8).collect();
            asm.push(seg, &mut out);
            if c[7] & 0x80 != 0 {
                asm.tick(i as u64 * 100 + u64::from(c[7]) * 50, &mut out);
            }
            check(&asm, &limits, &out, &mut seen);
        }
        // Delivered bytes are the stream's own, in order, once: byte values were made
        // from sequence numbers, so each byte of a direction is the previous one + 1.
        let mut last: std::collections::HashMap<(u64, bool), u8> = Default::default();
        for e in &out {
            if let Event::Data {
                conn,
                to_server,
                data,
                ..
            } = e
            {
                let Some(&first) = data.first() else {
                    continue;
                };
                if let Some(prev) = last.get(&(*conn, *to_server)) {
                    assert_eq!(first, prev.wrapping_add(1), "bytes out of order");
                }
                assert!(
                    data.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
                    "bytes out of order"
                );
                last.insert((*conn, *to_server), data[data.len() - 1]);
            }
        }
    }
    asm.tick(u64::MAX / 2, &mut out);
    assert_eq!(asm.connections(), 0);
    assert_eq!(asm.held(), 0);
});

/// Checks the bounds, and that every connection opens (once) before any other event of
/// it, over the events added since the last check.
fn check(
    asm: &Assembler,
    limits: &Limits,
    out: &[Event],
    seen: &mut (usize, std::collections::HashSet<u64>),
) {
    assert!(asm.held() <= limits.total_bytes, "{} held", asm.held());
    assert!(asm.connections() <= limits.connections);
    let stats = asm.stats();
    assert!(stats.closed <= stats.opened);
    for e in &out[seen.0..] {
        match e {
            Event::Open { conn, .. } => assert!(seen.1.insert(*conn), "opened twice"),
            Event::Data { conn, .. } | Event::Gap { conn, .. } | Event::Close { conn } => {
                assert!(seen.1.contains(conn), "event before open")
            }
        }
    }
    seen.0 = out.len();
}
