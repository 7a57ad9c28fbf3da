use agent_common::{
    FlowKey,
    flow::{DIR_IN, DIR_OUT, FAMILY_IPV4, PROTO_TCP},
};

use super::*;

const CLIENT_ISN: u32 = u32::MAX - 10; // the client's sequence numbers wrap
const SERVER_ISN: u32 = 9_000;

fn chunk(from_client: bool, seq: u32, ts_ns: u64, data: &[u8]) -> StreamChunk {
    StreamChunk {
        key: FlowKey {
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
            ..Default::default()
        },
        from_client: from_client as u8,
        flags: 0,
        dir: if from_client { DIR_OUT } else { DIR_IN } as u8,
        _pad: 0,
        flow_first_seen_ns: 1,
        ts_ns,
        seq,
        payload_len: data.len() as u32,
        offset: 0,
        len: data.len() as u32,
    }
}

/// Feeds chunks built by `chunk`, each with its own bytes.
struct Feed {
    s: StreamTurns,
    out: Vec<WholeTurn>,
}

impl Feed {
    fn new() -> Self {
        let mut first = chunk(true, CLIENT_ISN, 0, b"x");
        first.flags = chunk::START;
        Self {
            s: StreamTurns::start(&first).expect("a start"),
            out: Vec::new(),
        }
    }
    fn push(&mut self, c: StreamChunk, data: &[u8]) {
        self.s.push(&c, data, &mut self.out);
    }
    fn client(&mut self, seq: u32, ts: u64, data: &[u8]) {
        self.push(chunk(true, seq, ts, data), data);
    }
    fn server(&mut self, seq: u32, ts: u64, data: &[u8]) {
        self.push(chunk(false, seq, ts, data), data);
    }
}

fn turn(req: &[u8], resp: &[u8], start_ns: u64, latency_ns: u64) -> WholeTurn {
    WholeTurn {
        request: req.to_vec(),
        request_complete: true,
        response: resp.to_vec(),
        response_complete: true,
        start_ns,
        latency_ns,
    }
}

#[test]
fn a_stream_is_followed_only_from_the_clients_first_bytes() {
    let mut c = chunk(true, 1, 0, b"PRI ");
    assert!(StreamTurns::start(&c).is_none(), "not marked as the start");
    c.flags = chunk::START;
    assert!(StreamTurns::start(&c).is_some());
    c.from_client = 0;
    assert!(StreamTurns::start(&c).is_none(), "the server's start");
    c.from_client = 1;
    c.offset = 4;
    c.payload_len = 8;
    assert!(
        StreamTurns::start(&c).is_none(),
        "a later chunk of the packet"
    );
}

#[test]
fn turns_are_whole_and_handed_out_when_the_next_one_starts() {
    let mut f = Feed::new();
    let mut seq = CLIENT_ISN;
    for part in [&b"preface"[..], b" and settings"] {
        f.client(seq, 100, part);
        seq = seq.wrapping_add(part.len() as u32);
    }
    f.server(SERVER_ISN, 150, b"settings");
    f.server(SERVER_ISN + 8, 160, b" ack");
    assert!(f.out.is_empty(), "the answer may go on");
    f.client(seq, 300, b"headers");
    assert_eq!(
        f.out,
        [turn(b"preface and settings", b"settings ack", 100, 50)]
    );
    f.server(SERVER_ISN + 12, 340, b"status");
    f.s.finish(&mut f.out);
    assert_eq!(f.out[1], turn(b"headers", b"status", 300, 40));
    // A turn the server never answered is not one (as in an import).
    let mut g = Feed::new();
    g.client(CLIENT_ISN, 1, b"lonely");
    g.s.finish(&mut g.out);
    assert!(g.out.is_empty());
}

#[test]
fn retransmitted_bytes_are_taken_once() {
    let mut f = Feed::new();
    f.client(CLIENT_ISN, 10, b"abcdef");
    f.client(CLIENT_ISN, 11, b"abcdef"); // a retransmission
    f.client(CLIENT_ISN.wrapping_add(3), 12, b"defghi"); // overlapping
    f.server(SERVER_ISN, 20, b"ok");
    f.server(SERVER_ISN, 21, b"ok");
    f.s.finish(&mut f.out);
    assert_eq!(f.out, [turn(b"abcdefghi", b"ok", 10, 10)]);
    assert_eq!(f.s.stats().duplicates, 2);
    assert_eq!(f.s.stats().holes, 0);
}

#[test]
fn a_hole_ends_what_a_side_keeps_of_its_turn() {
    let mut f = Feed::new();
    f.client(CLIENT_ISN, 10, b"abc");
    f.client(CLIENT_ISN.wrapping_add(6), 11, b"ghi"); // def lost
    f.client(CLIENT_ISN.wrapping_add(9), 12, b"jkl");
    f.server(SERVER_ISN, 20, b"ok");
    f.client(CLIENT_ISN.wrapping_add(12), 30, b"next");
    assert_eq!(
        f.out,
        [WholeTurn {
            request_complete: false,
            ..turn(b"abc", b"ok", 10, 10)
        }]
    );
    assert_eq!(f.s.stats().holes, 1);
    // The next turn is whole again.
    f.server(SERVER_ISN + 2, 40, b"fine");
    f.s.finish(&mut f.out);
    assert_eq!(f.out[1], turn(b"next", b"fine", 30, 10));
}

#[test]
fn a_side_cut_by_the_kernel_is_incomplete_and_its_next_bytes_are_no_hole() {
    let mut f = Feed::new();
    // A 10-byte packet of which the kernel copied 4 and cut.
    let mut c = chunk(true, CLIENT_ISN, 10, b"abcd");
    c.payload_len = 10;
    c.flags = chunk::CUT;
    f.push(c, b"abcd");
    // A further packet of the same turn was not copied at all (seq + 10 .. + 20).
    f.server(SERVER_ISN, 20, b"ok");
    f.client(CLIENT_ISN.wrapping_add(20), 30, b"next");
    f.server(SERVER_ISN + 2, 40, b"fine");
    f.s.finish(&mut f.out);
    assert_eq!(
        f.out,
        [
            WholeTurn {
                request_complete: false,
                ..turn(b"abcd", b"ok", 10, 10)
            },
            turn(b"next", b"fine", 30, 10)
        ]
    );
    assert_eq!(f.s.stats().holes, 0);
}

#[test]
fn each_side_keeps_at_most_the_turn_bound() {
    let mut f = Feed::new();
    let big = vec![7u8; TURN_BYTES - 10];
    f.client(CLIENT_ISN, 10, &big);
    f.client(CLIENT_ISN.wrapping_add(big.len() as u32), 11, &[8u8; 20]);
    assert_eq!(f.s.held(), TURN_BYTES);
    f.server(SERVER_ISN, 20, b"ok");
    f.s.finish(&mut f.out);
    assert_eq!(f.out[0].request.len(), TURN_BYTES);
    assert!(!f.out[0].request_complete);
    assert_eq!(&f.out[0].request[TURN_BYTES - 10..], &[8u8; 10]);
}

#[test]
fn an_answered_turn_is_handed_out_once_the_flow_is_quiet() {
    let mut f = Feed::new();
    f.client(CLIENT_ISN, 1_000, b"call");
    f.s.settle_if_quiet(10_000_000_000, 1_000, [4, 0], &mut f.out);
    assert!(f.out.is_empty(), "not answered yet");
    f.server(SERVER_ISN, 2_000, b"answer");
    f.s.settle_if_quiet(2_500, 1_000, [4, 6], &mut f.out);
    assert!(f.out.is_empty(), "not quiet for long enough");
    f.s.settle_if_quiet(5_000, 1_000, [4, 9], &mut f.out);
    assert!(
        f.out.is_empty(),
        "the kernel counted bytes not taken in yet"
    );
    // A retransmission counts in both.
    f.server(SERVER_ISN, 2_100, b"answer");
    f.s.settle_if_quiet(5_000, 1_000, [4, 12], &mut f.out);
    assert_eq!(f.out, [turn(b"call", b"answer", 1_000, 1_000)]);
    // More of the server's bytes: a turn with no request, handed out with the next one.
    f.server(SERVER_ISN + 6, 6_000, b" more");
    f.client(CLIENT_ISN + 4, 7_000, b"again");
    assert_eq!(f.out[1], turn(b"", b" more", 6_000, 0));
}

#[test]
fn a_stream_followed_by_its_heads_keeps_the_first_bytes_of_each_side_never_complete() {
    let mut s = StreamTurns::heads();
    assert!(!s.is_whole());
    let mut out = Vec::new();
    let long = vec![b'a'; 300];
    // Any chunk starts it, not only the client's first.
    s.push(&chunk(true, 50, 1, &long), &long, &mut out);
    s.push(&chunk(false, 9, 3, b"ok"), b"ok", &mut out);
    s.finish(&mut out);
    assert_eq!(
        out,
        [WholeTurn {
            request: long[..HEAD_BYTES].to_vec(),
            request_complete: false,
            response: b"ok".to_vec(),
            response_complete: false,
            start_ns: 1,
            latency_ns: 2,
        }]
    );
}
