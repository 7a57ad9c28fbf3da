//! The flow programs run on crafted packets through `BPF_PROG_TEST_RUN`: no network
//! needed, only root (to load programs). Each test loads its own copy of the object, so
//! maps are private to it.

use agent_common::{
    FlowEvent, FlowKey, FlowStats, PayloadSample, StreamChunk,
    flow::{
        DIR_IN, DIR_OUT, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP, STREAM_TURN_BYTES, chunk,
        sample, state, turn,
    },
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};

use crate::{
    FLOW_OBJECT,
    attach::{PROG_EGRESS, PROG_INGRESS},
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
/// What the programs return: "no verdict", so the packet passes.
const TC_ACT_UNSPEC: u32 = u32::MAX;

const CLIENT: [u8; 4] = [198, 18, 7, 10];
const SERVER: [u8; 4] = [198, 18, 7, 11];

fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

struct Loaded {
    ebpf: Ebpf,
    flows: BpfHashMap<MapData, FlowKey, FlowStats>,
    events: RingBuf<MapData>,
    payloads: RingBuf<MapData>,
    streams: RingBuf<MapData>,
}

fn load() -> Loaded {
    let mut ebpf = Ebpf::load(FLOW_OBJECT).expect("load object");
    let flows = BpfHashMap::try_from(ebpf.take_map("FLOWS").unwrap()).unwrap();
    let events = RingBuf::try_from(ebpf.take_map("FLOW_EVENTS").unwrap()).unwrap();
    let payloads = RingBuf::try_from(ebpf.take_map("PAYLOADS").unwrap()).unwrap();
    let streams = RingBuf::try_from(ebpf.take_map("STREAM_CHUNKS").unwrap()).unwrap();
    for name in [PROG_INGRESS, PROG_EGRESS] {
        let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("verifier accepts the program");
    }
    Loaded {
        ebpf,
        flows,
        events,
        payloads,
        streams,
    }
}

impl Loaded {
    /// Runs one program on `frame`; asserts the frame passes unchanged.
    fn run(&mut self, prog: &str, frame: &[u8]) {
        let p: &mut SchedClassifier = self.ebpf.program_mut(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; frame.len() + 64];
        let res = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        assert_eq!(
            res.return_value, TC_ACT_UNSPEC,
            "observation must never decide a verdict"
        );
        assert_eq!(
            &out[..res.data_size_out as usize],
            frame,
            "packet must pass untouched"
        );
    }
    fn out(&mut self, frame: &[u8]) {
        self.run(PROG_INGRESS, frame)
    }
    fn inn(&mut self, frame: &[u8]) {
        self.run(PROG_EGRESS, frame)
    }
    fn entries(&self) -> Vec<(FlowKey, FlowStats)> {
        self.flows.iter().map(|r| r.unwrap()).collect()
    }
    fn samples(&mut self) -> Vec<PayloadSample> {
        let mut out = Vec::new();
        while let Some(item) = self.payloads.next() {
            out.push(PayloadSample::from_bytes(&item).expect("the program writes PayloadSamples"));
        }
        out
    }
    fn chunks(&mut self) -> Vec<(StreamChunk, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(item) = self.streams.next() {
            let (c, data) = StreamChunk::from_bytes(&item).expect("the program writes chunks");
            out.push((c, data.to_vec()));
        }
        out
    }
    /// The next flow-end event, if the program posted one.
    fn end_event(&mut self) -> Option<FlowEvent> {
        let item = self.events.next()?;
        Some(FlowEvent::from_bytes(&item).expect("the program writes FlowEvents"))
    }
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_seq(sport, dport, 1, flags, payload)
}

fn tcp_seq(sport: u16, dport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn frame4(src: [u8; 4], dst: [u8; 4], l4proto: u8, l4: Vec<u8>) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4(src, dst, l4proto, &l4));
    f
}

/// Client packet leaving the client workload, and server packet arriving to it.
fn c2s(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame4(CLIENT, SERVER, 6, tcp(40000, 80, flags, payload))
}
fn s2c(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame4(SERVER, CLIENT, 6, tcp(80, 40000, flags, payload))
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!("skipped: loading BPF programs needs root");
            return;
        }
    };
}

#[test]
fn tcp_exchange_is_one_flow_with_rtt_requests_and_payload() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(SYN | ACK, b""));
    l.out(&c2s(ACK, b""));
    for _ in 0..3 {
        l.out(&c2s(ACK | PSH, b"GET / HTTP/1.1\r\n\r\n")); // 18 bytes
        l.inn(&s2c(ACK, b""));
        l.inn(&s2c(ACK | PSH, &[b'x'; 100]));
        l.inn(&s2c(ACK | PSH, &[b'y'; 50])); // same turn: not a new response
    }
    let e = l.entries();
    assert_eq!(e.len(), 1, "both directions share one entry");
    let (k, s) = &e[0];
    assert_eq!(
        (k.local_port, k.remote_port, k.proto, k.family),
        (40000, 80, PROTO_TCP, FAMILY_IPV4)
    );
    assert_eq!(&k.local_addr[..4], &CLIENT);
    assert_eq!(s.client_is_local, 1);
    assert_ne!(s.state & state::OPENED, 0);
    assert_eq!(s.packets, [5, 10]);
    assert_eq!(s.payload_bytes, [54, 450]);
    assert_eq!(s.bytes[DIR_OUT], 2 * 40 + 3 * 58);
    assert_eq!(s.requests, 3, "one request per client turn");
    assert!(s.handshake_rtt_ns > 0, "SYN -> SYN-ACK measured");
    assert_eq!(
        s.state & (state::HANDSHAKE_DONE | state::HANDSHAKE_MARK),
        state::HANDSHAKE_DONE
    );
    assert!(s.latency_sum_ns > 0);
    assert_eq!(s.turn, turn::SERVER, "no request outstanding");
    assert_eq!(s.tcp_flags[DIR_OUT] & SYN, SYN);
    assert_eq!(s.tcp_flags[DIR_IN] & (SYN | ACK), SYN | ACK);
}

/// The handshake mark and the request start share one timestamp: a request that starts
/// before the handshake completes (data on the SYN) abandons the handshake measurement
/// instead of turning the request's start into a handshake RTT, and the request's latency
/// is still measured from its own start.
#[test]
fn request_before_handshake_completes_abandons_the_handshake_measurement() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b"GET / HTTP/1.1\r\n\r\n")); // data on the SYN (TCP Fast Open)
    let s = l.entries()[0].1;
    assert_eq!(s.turn, turn::CLIENT);
    assert_eq!(s.state & state::HANDSHAKE_MARK, 0);
    assert_ne!(s.state & state::HANDSHAKE_DONE, 0);
    let started = s.mark_ns;
    l.inn(&s2c(SYN | ACK, b""));
    l.out(&c2s(ACK, b""));
    l.inn(&s2c(ACK | PSH, b"HTTP/1.1 200 OK\r\n\r\n"));
    let s = l.entries()[0].1;
    assert_eq!(
        s.handshake_rtt_ns, 0,
        "abandoned, not measured from the request start"
    );
    assert_eq!(s.requests, 1);
    assert_eq!(s.latency_sum_ns, s.last_seen_ns - started);
    // A retransmitted SYN after the turn does not take the mark back.
    l.out(&c2s(SYN, b""));
    let s = l.entries()[0].1;
    assert_eq!(s.state & state::HANDSHAKE_MARK, 0);
    assert_eq!(s.handshake_rtt_ns, 0);
}

/// A new flow is one map insert with the first packet already counted: its counters,
/// flags, handshake mark and timestamps are those of that packet.
#[test]
fn first_packet_is_counted_in_the_inserted_entry() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    let (_, s) = l.entries()[0];
    assert_eq!(s.packets, [1, 0]);
    assert_eq!(s.bytes, [40, 0]);
    assert_eq!(s.payload_bytes, [0, 0]);
    assert_eq!(s.tcp_flags, [SYN, 0]);
    assert_eq!(s.first_seen_ns, s.last_seen_ns);
    assert_eq!(
        s.mark_ns, s.first_seen_ns,
        "the SYN marks the handshake start"
    );
    assert_eq!(
        s.state,
        state::OPENED | state::HANDSHAKE_MARK,
        "nothing else set"
    );
    // A first UDP datagram: counted, and its sample posted once the entry exists.
    l.out(&frame4(CLIENT, SERVER, 17, udp(40_001, 53, &[7u8; 20])));
    let e = l.entries();
    let (_, u) = e.iter().find(|(k, _)| k.proto == PROTO_UDP).unwrap();
    assert_eq!((u.packets, u.payload_bytes), ([1, 0], [20, 0]));
    assert_eq!(u.turn, turn::CLIENT);
    let samples = l.samples();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].kind, sample::REQUEST);
    assert_eq!(samples[0].flow_first_seen_ns, u.first_seen_ns);
}

#[test]
fn server_side_flow_measures_synack_to_ack() {
    root_only!();
    let mut l = load();
    // Seen on the server's interface: the client's packets arrive (egress prog).
    let to_server = |f: u8| frame4(CLIENT, SERVER, 6, tcp(40001, 5432, f, b""));
    let from_server = |f: u8| frame4(SERVER, CLIENT, 6, tcp(5432, 40001, f, b""));
    l.inn(&to_server(SYN));
    l.out(&from_server(SYN | ACK));
    l.inn(&to_server(ACK));
    let e = l.entries();
    let (k, s) = &e[0];
    assert_eq!(&k.local_addr[..4], &SERVER);
    assert_eq!(s.client_is_local, 0, "the workload is the server");
    assert!(s.handshake_rtt_ns > 0);
}

#[test]
fn closing_flow_posts_its_final_state_once() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(SYN | ACK, b""));
    l.out(&c2s(ACK | FIN, b""));
    assert!(l.end_event().is_none(), "one FIN is not the end");
    l.inn(&s2c(ACK | FIN, b""));
    assert!(l.end_event().is_none(), "the last ACK is still to come");
    // A retransmitted FIN the same way as the second one is not its answer.
    l.inn(&s2c(ACK | FIN, b""));
    assert!(l.end_event().is_none(), "not answered yet");
    l.out(&c2s(ACK, b""));
    let ev = l.end_event().expect("flow-end event");
    assert_eq!(ev.key.remote_port, 80);
    assert_eq!(
        ev.stats.packets,
        [3, 3],
        "the last ACK is in the final state"
    );
    assert!(ev.stats.state & state::END_REPORTED != 0);
    assert!(l.end_event().is_none(), "reported once");
    assert!(
        l.entries().is_empty(),
        "the entry goes with the event: the agent needs no map syscall for it"
    );
    // The ACK of a simultaneous close that comes after finds no flow and makes none.
    l.inn(&s2c(ACK, b""));
    assert!(l.entries().is_empty());
}

#[test]
fn server_closing_first_ends_on_the_clients_last_ack_seen_inbound() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(SYN | ACK, b""));
    l.inn(&s2c(ACK | FIN, b""));
    l.out(&c2s(ACK | FIN, b""));
    // An ACK the same way as the second FIN does not answer it.
    l.out(&c2s(ACK, b""));
    assert!(l.end_event().is_none());
    l.inn(&s2c(ACK, b""));
    let ev = l.end_event().expect("flow-end event");
    assert_eq!(ev.stats.packets, [3, 3]);
    assert!(l.entries().is_empty());
}

#[test]
fn reset_counts_and_ends_the_flow() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(RST | ACK, b""));
    let ev = l.end_event().expect("flow-end event");
    assert_eq!(ev.stats.resets, 1);
    assert_eq!(ev.stats.packets, [1, 1]);
    assert!(ev.stats.state & state::RST != 0);
    assert!(l.entries().is_empty(), "the entry goes with the event");
}

#[test]
fn tail_of_unknown_connection_creates_no_flow() {
    root_only!();
    let mut l = load();
    l.out(&c2s(ACK, b""));
    l.out(&c2s(ACK | FIN, b""));
    assert!(
        l.entries().is_empty(),
        "pure ACK/FIN of an unknown flow is not a flow"
    );
    l.out(&c2s(ACK | PSH, b"data"));
    let s = l.entries()[0].1;
    assert_eq!(s.state & state::OPENED, 0, "joined mid-connection");
    assert_eq!(s.client_is_local, 1, "higher port is the client");
}

#[test]
fn ipv6_udp_and_vlan_tagged_packets_are_parsed() {
    root_only!();
    let mut l = load();
    let a: [u8; 16] = "fd00:7::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let b: [u8; 16] = "fd00:7::11".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut f = eth(0x86DD);
    f.extend(ipv6(a, b, 17, &udp(5353, 53, b"query")));
    l.out(&f);
    let mut v = eth(0x8100);
    v.extend_from_slice(&[0, 42, 0x08, 0x00]);
    v.extend(ipv4(CLIENT, SERVER, 6, &tcp(40002, 6379, SYN, b"")));
    l.out(&v);
    let e = l.entries();
    assert_eq!(e.len(), 2);
    let udp6 = e
        .iter()
        .find(|(k, _)| k.family == FAMILY_IPV6)
        .expect("IPv6 flow");
    assert_eq!((udp6.0.proto, udp6.0.remote_port), (PROTO_UDP, 53));
    assert_eq!(&udp6.0.local_addr, &a);
    assert_eq!(udp6.1.payload_bytes[DIR_OUT], 5);
    assert_eq!(udp6.1.client_is_local, 1);
    assert!(
        e.iter().any(|(k, _)| k.remote_port == 6379),
        "VLAN-tagged TCP parsed"
    );
}

#[test]
fn unparseable_packets_pass_untouched_and_are_not_counted() {
    root_only!();
    let mut l = load();
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0u8; 28]);
    let icmp = frame4(CLIENT, SERVER, 1, vec![8, 0, 0, 0, 0, 1, 0, 1]);
    let mut bad_ihl = frame4(CLIENT, SERVER, 6, tcp(1, 2, SYN, b""));
    bad_ihl[14] = 0x43; // IHL 3 words: invalid
    let mut truncated = c2s(SYN, b"");
    truncated.truncate(14 + 20 + 10); // TCP header cut short
    let mut fragment = c2s(SYN, b"");
    fragment[14 + 6] = 0x00;
    fragment[14 + 7] = 0x10; // fragment offset 16: no TCP header here
    let mut gre = eth(0x0800);
    gre.extend(ipv4(CLIENT, SERVER, 47, &[0u8; 24]));
    for f in [
        arp,
        icmp,
        bad_ihl,
        truncated,
        fragment,
        gre,
        vec![0u8; 14],
        vec![0u8; 60],
    ] {
        l.out(&f);
        l.inn(&f);
    }
    assert!(
        l.entries().is_empty(),
        "nothing the parser cannot read is recorded"
    );
}

#[test]
fn tuple_reused_after_close_starts_a_new_flow() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(RST, b""));
    let first = l.end_event().expect("flow-end event").stats.first_seen_ns;
    l.out(&c2s(SYN, b""));
    let s = l.entries()[0].1;
    assert!(s.first_seen_ns > first);
    assert_eq!(s.packets, [1, 0]);
    assert_eq!(s.resets, 0);
}

#[test]
fn turns_post_payload_samples_once_per_request_and_response() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(SYN | ACK, b""));
    let big = [b'z'; 300];
    for _ in 0..2 {
        l.out(&c2s(
            ACK | PSH,
            b"GET /users/42 HTTP/1.1\r\nHost: web\r\n\r\n",
        ));
        l.out(&c2s(ACK | PSH, b"more of the same request"));
        let mut resp = b"HTTP/1.1 503 Service Unavailable\r\n".to_vec();
        resp.extend_from_slice(&big);
        l.inn(&s2c(ACK | PSH, &resp));
        l.inn(&s2c(ACK | PSH, b"rest of the response"));
    }
    let s = l.samples();
    let kinds: Vec<u8> = s.iter().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        vec![
            sample::REQUEST,
            sample::RESPONSE,
            sample::REQUEST,
            sample::RESPONSE
        ]
    );
    let req = &s[0];
    assert_eq!(req.dir as usize, DIR_OUT);
    assert_eq!(req.first_of_direction, 1);
    assert_eq!(
        &req.data[..req.captured as usize],
        b"GET /users/42 HTTP/1.1\r\nHost: web\r\n\r\n"
    );
    let resp = &s[1];
    assert_eq!(resp.dir as usize, DIR_IN);
    assert_eq!(resp.captured, 128, "long payloads are cut at 128 bytes");
    assert_eq!(resp.payload_len, 34 + 300);
    assert!(resp.data.starts_with(b"HTTP/1.1 503"));
    assert!(resp.latency_ns > 0);
    assert_eq!(s[2].first_of_direction, 0);
    assert_eq!(s[0].flow_first_seen_ns, l.entries()[0].1.first_seen_ns);
}

#[test]
fn server_that_speaks_first_posts_a_first_sample() {
    root_only!();
    let mut l = load();
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(SYN | ACK, b""));
    l.inn(&s2c(ACK | PSH, b"\x4a\x00\x00\x00\x0a8.0.36"));
    let s = l.samples();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].kind, sample::FIRST);
    assert_eq!(s[0].first_of_direction, 1);
    assert_eq!(s[0].captured, 11);
}

/// HTTP/2 (prior knowledge) and AMQP connections are copied whole, a side of a turn up to
/// `STREAM_TURN_BYTES`; other connections are not copied at all.
#[test]
fn http2_and_amqp_connections_are_copied_whole_and_others_not_at_all() {
    root_only!();
    let mut l = load();
    let c = |seq: u32, flags: u8, payload: &[u8]| {
        frame4(
            CLIENT,
            SERVER,
            6,
            tcp_seq(40000, 50051, seq, flags, payload),
        )
    };
    let s = |seq: u32, flags: u8, payload: &[u8]| {
        frame4(
            SERVER,
            CLIENT,
            6,
            tcp_seq(50051, 40000, seq, flags, payload),
        )
    };
    l.out(&c(1000, SYN, b""));
    l.inn(&s(5000, SYN | ACK, b""));
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
    l.out(&c(1001, ACK | PSH, &preface));
    l.inn(&s(5001, ACK | PSH, &[0, 0, 0, 4, 1, 0, 0, 0, 0])); // SETTINGS ACK
    // A client turn of five 3,500-byte packets: past the bound after four and a bit.
    let mut seq = 1001 + preface.len() as u32;
    let mut sent = Vec::new();
    for i in 0..5u8 {
        let p = vec![b'a' + i; 3500];
        l.out(&c(seq, ACK | PSH, &p));
        seq += 3500;
        sent.extend_from_slice(&p);
    }
    l.out(&c(seq, ACK | PSH, b"not copied")); // the side's bound is reached
    l.inn(&s(5010, ACK | PSH, b"answer")); // the server's turn: copied again

    let e = l.entries();
    assert_eq!(e.len(), 1);
    assert_ne!(e[0].1.state & state::WHOLE, 0, "HTTP/2 is copied whole");
    assert!(
        l.samples().is_empty(),
        "a flow copied whole posts no samples"
    );

    let chunks = l.chunks();
    let summary: Vec<(u8, u8, u32, u32, u32)> = chunks
        .iter()
        .map(|(h, _)| (h.from_client, h.flags, h.seq, h.offset, h.len))
        .collect();
    let first = 1001 + preface.len() as u32;
    let mut want = vec![
        (1, chunk::START, 1001, 0, preface.len() as u32),
        (0, chunk::START, 5001, 0, 9),
    ];
    let room = STREAM_TURN_BYTES;
    for i in 0..5u32 {
        let len = 3500.min(room - (i * 3500).min(room));
        let flags = if i == 4 { chunk::CUT } else { 0 };
        want.push((1, flags, first + i * 3500, 0, len));
    }
    want.push((0, 0, 5010, 0, 6));
    assert_eq!(summary, want);
    let client: Vec<u8> = chunks[2..7].iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(client.len(), STREAM_TURN_BYTES as usize);
    assert_eq!(&client[..], &sent[..client.len()], "the bytes as sent");
    assert_eq!(&chunks[0].1[..], &preface[..]);
    assert!(
        chunks
            .iter()
            .all(|(h, _)| h.flow_first_seen_ns == e[0].1.first_seen_ns && h.payload_len >= h.len)
    );
    // The client is the local workload: its packets leave it.
    assert!(
        chunks
            .iter()
            .all(|(h, _)| usize::from(h.dir) == if h.from_client == 1 { DIR_OUT } else { DIR_IN })
    );

    // AMQP's protocol header also; HTTP/1.1 is not copied.
    for (port, first, whole) in [
        (5672u16, &b"AMQP\x00\x00\x09\x01"[..], true),
        (8080, &b"GET / HTTP/1.1\r\n\r\n"[..], false),
    ] {
        let c = |flags: u8, payload: &[u8]| {
            frame4(CLIENT, SERVER, 6, tcp_seq(40001, port, 7, flags, payload))
        };
        l.out(&c(SYN, b""));
        l.inn(&frame4(SERVER, CLIENT, 6, tcp(port, 40001, SYN | ACK, b"")));
        l.out(&c(ACK | PSH, first));
        let got = l.chunks();
        assert_eq!(got.len(), usize::from(whole), "port {port}: {got:?}");
        let flow = l
            .entries()
            .into_iter()
            .find(|(k, _)| k.remote_port == port)
            .unwrap();
        assert_eq!(flow.1.state & state::WHOLE != 0, whole, "port {port}");
        assert_eq!(
            l.samples().is_empty(),
            whole,
            "port {port}: samples or chunks"
        );
        let mut k = flow.0;
        k._pad = [0; 2];
        let _ = l.flows.remove(&k);
    }
}

/// A program of the C reference (bench/flow-reference, the flow-overhead harness's
/// `tc_flow.c` and `tc_count.c`), built with clang and loaded, for benchmarks that compare
/// weft with it in the same run.
fn c_reference(file: &str, prog: &str) -> Ebpf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bench/flow-reference")
        .join(file);
    let out = std::env::temp_dir().join(format!(
        "weft-flow-reference-{}-{file}.o",
        std::process::id()
    ));
    let status = std::process::Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf"])
        .arg(format!(
            "-I/usr/include/{}-linux-gnu",
            std::env::consts::ARCH
        ))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("clang builds the C reference (`cargo xtask setup` installs it)");
    assert!(status.success(), "clang failed on {}", src.display());
    let object = std::fs::read(&out).expect("the built object");
    let _ = std::fs::remove_file(&out);
    let mut ebpf = Ebpf::load(&object).expect("load the C reference");
    let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    p.load().expect("verifier accepts the C reference");
    ebpf
}

/// Kernel-measured run time of `prog` on `frame` (`BPF_PROG_TEST_RUN`), ns per run.
fn ns_per_run(ebpf: &mut Ebpf, prog: &str, frame: &[u8], repeat: u32) -> f64 {
    let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let res = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .expect("test run");
    res.duration.as_nanos() as f64
}

/// (key size, value size, max entries, memlock bytes) of this process's maps, from
/// /proc/self/fdinfo: what the kernel accounts for each map, its own headers included.
fn map_memlock() -> Vec<(u64, u64, u64, u64)> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(k), Some(v), Some(n), Some(m)) = (
            field("key_size:"),
            field("value_size:"),
            field("max_entries:"),
            field("memlock:"),
        ) {
            out.push((k, v, n, m));
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Kernel-measured run time per packet (`BPF_PROG_TEST_RUN`), weft's ingress program
/// against the C reference flow observer and bare counter in the same run, printed as
/// `RESULT` lines for `cargo xtask bench`: a TCP data packet of an established flow, a UDP
/// datagram of a known flow (repeated 1M times, 5 rounds interleaved between the programs,
/// median), a new connection's SYN (20,000 distinct flows, one run each, the programs
/// alternating), the one-run timing baseline, and the flow map's bytes per entry.
#[test]
#[ignore = "benchmark, run by `cargo xtask bench`"]
fn bench_run_time_per_packet() {
    root_only!();
    let mut l = load();
    let mut flow_c = c_reference("tc_flow.c", "afo_flow");
    let mut count_c = c_reference("tc_count.c", "afo_count");
    l.out(&c2s(SYN, b""));
    l.inn(&s2c(SYN | ACK, b""));
    l.out(&c2s(ACK, b""));
    let data = c2s(ACK | PSH, &[b'x'; 100]);
    l.out(&data);
    let datagram = frame4(CLIENT, SERVER, 17, udp(40_001, 53, &[0u8; 64]));
    l.out(&datagram);
    // The C flow table learns the same two flows first.
    ns_per_run(&mut flow_c, "afo_flow", &data, 1);
    ns_per_run(&mut flow_c, "afo_flow", &datagram, 1);

    const ROUNDS: usize = 5;
    const REPEAT: u32 = 1_000_000;
    let mut rounds = |frame: &[u8]| {
        let (mut w, mut c, mut n) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            w.push(ns_per_run(&mut l.ebpf, PROG_INGRESS, frame, REPEAT));
            c.push(ns_per_run(&mut flow_c, "afo_flow", frame, REPEAT));
            n.push(ns_per_run(&mut count_c, "afo_count", frame, REPEAT));
        }
        (median(w), median(c), median(n))
    };
    let (tcp_w, tcp_c, tcp_n) = rounds(&data);
    let (udp_w, udp_c, udp_n) = rounds(&datagram);

    let flows = 20_000u32;
    let (mut syn_w, mut syn_c, mut one_w, mut one_c, mut one_n) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for i in 0..flows {
        let syn = frame4(
            CLIENT,
            [198, 18, 8, (i % 200) as u8],
            6,
            tcp(10_000 + (i / 200) as u16, 443, SYN, b""),
        );
        syn_w += ns_per_run(&mut l.ebpf, PROG_INGRESS, &syn, 1);
        syn_c += ns_per_run(&mut flow_c, "afo_flow", &syn, 1);
        // Single runs carry the kernel's per-call timer overhead; the same data packet run
        // once at a time, and the bare counter, show how much of the SYN figure that is.
        one_w += ns_per_run(&mut l.ebpf, PROG_INGRESS, &data, 1);
        one_c += ns_per_run(&mut flow_c, "afo_flow", &data, 1);
        one_n += ns_per_run(&mut count_c, "afo_count", &data, 1);
    }
    let f = f64::from(flows);
    assert_eq!(
        l.entries().len(),
        flows as usize + 2,
        "every SYN made a flow"
    );

    // The cost of copying a connection whole: request/response turns of 100 B each way on
    // an HTTP/2 connection (copied whole) and on an HTTP/1.1 one (samples only), one run
    // per packet, the two connections interleaved; the rings are read as the agent would.
    let conn = |port: u16, first: &[u8]| {
        let c = move |seq: u32, flags: u8, p: &[u8]| {
            frame4(CLIENT, SERVER, 6, tcp_seq(41_000, port, seq, flags, p))
        };
        let sv = move |seq: u32, flags: u8, p: &[u8]| {
            frame4(SERVER, CLIENT, 6, tcp_seq(port, 41_000, seq, flags, p))
        };
        let setup = vec![
            (true, c(1, SYN, b"")),
            (false, sv(1, SYN | ACK, b"")),
            (true, c(2, ACK | PSH, first)),
            (false, sv(2, ACK | PSH, &[0, 0, 0, 4, 1, 0, 0, 0, 0])),
        ];
        let req = c(2 + first.len() as u32, ACK | PSH, &[b'q'; 100]);
        let resp = sv(11, ACK | PSH, &[b'r'; 100]);
        (setup, req, resp)
    };
    let turns = [
        conn(50_051, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        conn(8_080, b"GET / HTTP/1.1\r\n\r\n"),
    ];
    for (setup, _, _) in &turns {
        for (out, frame) in setup {
            l.run(if *out { PROG_INGRESS } else { PROG_EGRESS }, frame);
        }
    }
    let whole_state = |l: &Loaded, port: u16| {
        l.entries()
            .iter()
            .find(|(k, _)| k.remote_port == port)
            .map(|(_, s)| s.state & state::WHOLE != 0)
    };
    assert_eq!(whole_state(&l, 50_051), Some(true));
    assert_eq!(whole_state(&l, 8_080), Some(false));
    let mut turn_ns = [0.0f64; 2];
    let mut chunks = 0usize;
    for i in 0..flows {
        for (t, (_, req, resp)) in turns.iter().enumerate() {
            turn_ns[t] += ns_per_run(&mut l.ebpf, PROG_INGRESS, req, 1);
            turn_ns[t] += ns_per_run(&mut l.ebpf, PROG_EGRESS, resp, 1);
        }
        if i % 1_000 == 999 {
            chunks += l.chunks().len();
            let _ = l.samples();
        }
    }
    chunks += l.chunks().len();
    assert_eq!(
        chunks,
        2 * flows as usize + 2,
        "every payload of the HTTP/2 turns was copied"
    );
    let per_packet = 2.0 * f;
    let r = |key: &str, v: f64, what: &str| println!("RESULT {key} {v:.1} ns {what}");
    let rep = "repeat 1,000,000, median of 5 rounds interleaved with the C programs";
    r(
        "bpf_tcp_data_ns",
        tcp_w,
        &format!("weft: TCP data packet (100 B payload) of an established flow, {rep}"),
    );
    r(
        "bpf_ref_tcp_data_ns",
        tcp_c,
        &format!("C flow reference: the same packet, {rep}"),
    );
    r(
        "bpf_count_tcp_data_ns",
        tcp_n,
        &format!("C bare counter: the same packet, {rep}"),
    );
    r(
        "bpf_udp_ns",
        udp_w,
        &format!("weft: UDP datagram (64 B payload) of a known flow, {rep}"),
    );
    r(
        "bpf_ref_udp_ns",
        udp_c,
        &format!("C flow reference: the same datagram, {rep}"),
    );
    r(
        "bpf_count_udp_ns",
        udp_n,
        &format!("C bare counter: the same datagram, {rep}"),
    );
    r(
        "bpf_new_syn_ns",
        syn_w / f,
        &format!("weft: SYN of a new connection, mean of {flows} distinct flows, one run each"),
    );
    r(
        "bpf_ref_new_syn_ns",
        syn_c / f,
        "C flow reference: the same SYNs, alternating with weft's",
    );
    r(
        "bpf_single_run_data_ns",
        one_w / f,
        &format!(
            "weft: the established-flow data packet run once at a time ({flows} runs): the one-run timing baseline for the SYN figure"
        ),
    );
    r(
        "bpf_ref_single_run_data_ns",
        one_c / f,
        "C flow reference: the same, one run at a time",
    );
    r(
        "bpf_count_single_run_ns",
        one_n / f,
        "C bare counter: the same packet one run at a time (the timer overhead of a single run)",
    );
    r(
        "bpf_whole_turn_ns",
        turn_ns[0] / per_packet,
        &format!(
            "weft: a packet of an HTTP/2 connection copied whole (request/response turns of 100 B each way, {flows} turns, one run per packet)"
        ),
    );
    r(
        "bpf_sampled_turn_ns",
        turn_ns[1] / per_packet,
        "weft: the same turns on an HTTP/1.1 connection (payload samples only), interleaved with the HTTP/2 one",
    );

    let maps = map_memlock();
    let weft_kv = (FlowKey::SIZE + FlowStats::SIZE) as u64;
    let find = |k: u64, v: u64| {
        maps.iter()
            .find(|m| (m.0, m.1) == (k, v) && m.2 >= 1024)
            .map(|m| m.3 as f64 / m.2 as f64)
    };
    println!(
        "RESULT flow_entry_bytes {weft_kv} B weft: flow-map key + value ({} + {} B)",
        FlowKey::SIZE,
        FlowStats::SIZE
    );
    println!("RESULT ref_flow_entry_bytes 80 B C flow reference: key + value (40 + 40 B)");
    if let Some(b) = find(FlowKey::SIZE as u64, FlowStats::SIZE as u64) {
        println!(
            "RESULT flow_slot_kernel_bytes {b:.1} B weft: the flow map's memlock / max_entries (kernel's accounting, element headers and LRU lists included)"
        );
    }
    if let Some(b) = find(40, 40) {
        println!("RESULT ref_flow_slot_kernel_bytes {b:.1} B C flow reference: the same");
    }
}
