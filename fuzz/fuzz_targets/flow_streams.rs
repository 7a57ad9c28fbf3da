//! The flow observer's whole-stream copies on untrusted bytes: `STREAM_CHUNKS` items decoded
//! (`StreamChunk::from_bytes`) and turned into request/response turns
//! (`agent/src/stream_turns.rs`, included by path), which go to an HTTP/2 or AMQP session
//! as the agent's L7 table feeds them. Chunks are also built from the input to reach the
//! turn builder's corners (retransmissions, holes, cuts, wrapping sequence numbers, turns
//! settled while quiet). The bytes a turn keeps stay within its bound.
#![no_main]

use agent_common::{
    FlowKey, StreamChunk,
    flow::{FAMILY_IPV4, PROTO_TCP, chunk},
};
use libfuzzer_sys::fuzz_target;
use weft_l7::{Protocol, Session};

#[allow(dead_code)]
#[path = "../../agent/src/stream_turns.rs"]
mod stream_turns;

use stream_turns::{HEAD_BYTES, StreamTurns, TURN_BYTES, WholeTurn};

fn feed(session: &mut Session, turns: &mut Vec<WholeTurn>) {
    for t in turns.drain(..) {
        assert!(t.request.len() <= TURN_BYTES && t.response.len() <= TURN_BYTES);
        let _ = session.turn(&t.as_turn());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let protocol = if mode & 2 == 0 {
        Protocol::Grpc
    } else {
        Protocol::Amqp
    };
    let mut session = Session::new(protocol);
    let mut stream: Option<StreamTurns> = None;
    let mut turns = Vec::new();
    if mode & 1 == 0 {
        // Length-prefixed raw ring items.
        let mut b = rest;
        while b.len() >= 2 {
            let n = usize::from(u16::from_le_bytes([b[0], b[1]])).min(b.len() - 2);
            let item = &b[2..2 + n];
            b = &b[2 + n..];
            if let Ok((c, bytes)) = StreamChunk::from_bytes(item) {
                assert_eq!(bytes.len(), c.len as usize);
                // A stream not seen from its start is followed by its heads, as the agent
                // does.
                let s = stream.get_or_insert_with(|| {
                    StreamTurns::start(&c).unwrap_or_else(StreamTurns::heads)
                });
                s.push(&c, bytes, &mut turns);
                assert!(s.held() <= 2 * if s.is_whole() { TURN_BYTES } else { HEAD_BYTES });
                feed(&mut session, &mut turns);
            }
        }
    } else {
        // Chunks built from the input: 6 bytes each (side and flags, sequence step, length,
        // time step), their bytes taken from what follows.
        let (headers, payload) = rest.split_at(rest.len() / 2);
        let mut payload = payload;
        let mut seq = [u32::MAX - 300, 7u32];
        // Payload per side as the kernel counts it (every packet, retransmissions included).
        let mut kernel_bytes = [0u64; 2];
        let mut now = 0u64;
        for (i, h) in headers.chunks_exact(6).enumerate() {
            let from_client = i == 0 || h[0] & 1 == 1;
            let side = usize::from(!from_client);
            let len = usize::from(u16::from_le_bytes([h[2], h[3]]) % 600 + 1).min(payload.len());
            if len == 0 {
                break;
            }
            let (bytes, more) = payload.split_at(len);
            payload = more;
            // Steps back (retransmissions) and forward (holes), mostly in order.
            let step = i32::from(h[1] as i8);
            let at = if h[0] & 2 != 0 {
                seq[side].wrapping_add_signed(step)
            } else {
                seq[side]
            };
            let cut = h[0] & 4 != 0;
            now += u64::from(h[4]) * 1_000_000;
            let c = StreamChunk {
                key: FlowKey {
                    proto: PROTO_TCP,
                    family: FAMILY_IPV4,
                    ..Default::default()
                },
                from_client: from_client as u8,
                flags: if i == 0 { chunk::START } else { 0 } | if cut { chunk::CUT } else { 0 },
                dir: from_client as u8,
                _pad: 0,
                flow_first_seen_ns: 1,
                ts_ns: now,
                seq: at,
                payload_len: len as u32 + if cut { u32::from(h[5]) } else { 0 },
                offset: 0,
                len: len as u32,
            };
            seq[side] = at.wrapping_add(c.payload_len);
            kernel_bytes[side] += u64::from(c.payload_len);
            let s = match stream.as_mut() {
                Some(s) => s,
                None => match StreamTurns::start(&c) {
                    Some(s) => stream.insert(s),
                    None => return,
                },
            };
            s.push(&c, bytes, &mut turns);
            if h[5] & 0x80 != 0 {
                s.settle_if_quiet(now + 1_000_000, 500_000, kernel_bytes, &mut turns);
            }
            assert!(s.held() <= 2 * TURN_BYTES);
            feed(&mut session, &mut turns);
        }
    }
    if let Some(s) = stream.as_mut() {
        s.finish(&mut turns);
        feed(&mut session, &mut turns);
    }
    let _ = session.flush(true);
});
