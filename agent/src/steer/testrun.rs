//! The steering programs on crafted packets through `BPF_PROG_TEST_RUN` (root only, no
//! network): the decision at the SYN, its keeping for the connection's life, and the
//! rewrites. A test run's packet is on the loopback device (index 1), so the maps are
//! keyed by index 1; a redirect is returned (`TC_ACT_REDIRECT`), not carried out.

use agent_common::steer::{
    SteerConn, SteerConnKey, SteerOrigin, SteerPortKey, SteerReturn, THRESHOLD_ALL, role,
    threshold_of,
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};

use super::{PROG_ORIGIN, PROG_RETURN, PROG_TUNNEL};
use crate::FLOW_OBJECT;
use crate::testns::require_root;

const UNSPEC: u32 = u32::MAX;
const REDIRECT: u32 = 7;
const SHOT: u32 = 2;
const LO: u32 = 1;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

const CLIENT: [u8; 4] = [198, 18, 9, 20];
const SERVER: [u8; 4] = [198, 18, 9, 10];
const MC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const MO: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const MC2: [u8; 6] = [0x02, 0, 0, 0, 0, 0xcc];

/// An Ethernet + IPv4 + TCP frame (checksums are not looked at).
fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: u8,
    seq: u32,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len: u16 = 20 + 20 + 6;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(b"hello\n");
    f
}

fn to_server(port: u16, flags: u8, seq: u32) -> Vec<u8> {
    frame(MC, MO, (CLIENT, port), (SERVER, 80), flags, seq)
}

struct Loaded(Ebpf);

impl Loaded {
    fn new() -> Self {
        let mut ebpf = Ebpf::load(FLOW_OBJECT).expect("object");
        for p in [PROG_ORIGIN, PROG_RETURN, PROG_TUNNEL] {
            let c: &mut SchedClassifier = ebpf.program_mut(p).unwrap().try_into().unwrap();
            c.load().expect("verifier accepts the program");
        }
        Self(ebpf)
    }

    /// Runs `prog` on `f`: its verdict and the packet as it left.
    fn run(&mut self, prog: &str, f: &[u8]) -> (u32, Vec<u8>) {
        let p: &mut SchedClassifier = self.0.program_mut(prog).unwrap().try_into().unwrap();
        let mut out = vec![0u8; f.len() + 64];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn map<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> BpfHashMap<&mut MapData, K, V> {
        BpfHashMap::try_from(self.0.map_mut(name).unwrap()).unwrap()
    }

    fn origin(&mut self, o: SteerOrigin) {
        self.map::<u32, SteerOrigin>("STEER_ORIGINS")
            .insert(LO, o, 0)
            .unwrap();
    }

    fn conn(&mut self, port: u16) -> Option<SteerConn> {
        let k = key(port);
        self.map::<SteerConnKey, SteerConn>("STEER_CONNS")
            .get(&k, 0)
            .ok()
    }
}

fn key(port: u16) -> SteerConnKey {
    let mut k = SteerConnKey {
        client_port: port,
        server_port: 80,
        steer_id: 3,
        family: 4,
        proto: 6,
        ..Default::default()
    };
    k.client[..4].copy_from_slice(&CLIENT);
    k.server[..4].copy_from_slice(&SERVER);
    k
}

fn origin(share_ppm: u32) -> SteerOrigin {
    SteerOrigin {
        threshold: threshold_of(share_ppm),
        steer_id: 3,
        target_ifindex: 42,
        all_ports: 1,
        target_mac: MT,
        origin_mac: MO,
        ..Default::default()
    }
}

#[test]
fn the_decision_is_taken_at_the_syn_and_kept_for_the_connection() {
    require_root!();
    let mut l = Loaded::new();
    // No entry for the interface: everything passes untouched.
    let syn = to_server(40_000, SYN, 1000);
    assert_eq!(l.run(PROG_ORIGIN, &syn), (UNSPEC, syn.clone()));

    // Share 0: the SYN passes, nothing is remembered.
    l.origin(origin(0));
    assert_eq!(l.run(PROG_ORIGIN, &syn).0, UNSPEC);
    assert!(l.conn(40_000).is_none());

    // 100 %: redirected to the target's MAC; the client's and the origin's MACs kept.
    l.origin(origin(1_000_000));
    let (v, out) = l.run(PROG_ORIGIN, &syn);
    assert_eq!(v, REDIRECT);
    assert_eq!(out[..6], MT);
    assert_eq!(out[6..], syn[6..], "only the destination MAC changes");
    let c = l.conn(40_000).expect("steered connection remembered");
    assert_eq!((c.client_mac, c.origin_mac, c.isn), (MC, MO, 1000));

    // Back to 0: the steered connection stays steered, retransmitted SYN included; a
    // connection of the origin (not remembered) stays with the origin.
    l.origin(origin(0));
    assert_eq!(
        l.run(PROG_ORIGIN, &to_server(40_000, ACK, 1001)).0,
        REDIRECT
    );
    assert_eq!(l.run(PROG_ORIGIN, &syn).0, REDIRECT, "retransmitted SYN");
    assert_eq!(l.run(PROG_ORIGIN, &to_server(40_001, ACK, 7)).0, UNSPEC);

    // A new connection reusing the 5-tuple (another ISN) is decided afresh.
    assert_eq!(l.run(PROG_ORIGIN, &to_server(40_000, SYN, 9_999)).0, UNSPEC);
    assert!(l.conn(40_000).is_none());
    assert_eq!(
        l.run(PROG_ORIGIN, &to_server(40_000, ACK, 10_000)).0,
        UNSPEC
    );

    // Failover: every new connection, whatever the share.
    l.origin(SteerOrigin {
        failover: 1,
        ..origin(0)
    });
    assert_eq!(l.run(PROG_ORIGIN, &to_server(40_002, SYN, 5)).0, REDIRECT);

    // Only the steered ports.
    l.origin(SteerOrigin {
        all_ports: 0,
        ..origin(1_000_000)
    });
    assert_eq!(l.run(PROG_ORIGIN, &to_server(40_003, SYN, 5)).0, UNSPEC);
    l.map::<SteerPortKey, u8>("STEER_PORTS")
        .insert(
            SteerPortKey {
                steer_id: 3,
                port: 80,
                _pad: [0; 2],
            },
            1,
            0,
        )
        .unwrap();
    assert_eq!(l.run(PROG_ORIGIN, &to_server(40_003, SYN, 5)).0, REDIRECT);

    // A frame for another node (flooded by the bridge through the origin's port):
    // untouched.
    let other = frame(MC, MC2, (CLIENT, 40_004), (SERVER, 80), SYN, 5);
    assert_eq!(l.run(PROG_ORIGIN, &other), (UNSPEC, other.clone()));

    // Not TCP (an ARP frame here): untouched.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&MC);
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(l.run(PROG_ORIGIN, &arp), (UNSPEC, arp.clone()));
}

#[test]
fn the_share_splits_new_connections_as_the_hash_says() {
    require_root!();
    let mut l = Loaded::new();
    l.origin(origin(300_000));
    let n = 2000u16;
    let steered = (0..n)
        .filter(|i| l.run(PROG_ORIGIN, &to_server(20_000 + i, SYN, 1)).0 == REDIRECT)
        .count();
    let share = steered as f64 / f64::from(n);
    assert!((share - 0.3).abs() < 0.04, "{share}");
    assert_eq!(origin(1_000_000).threshold, THRESHOLD_ALL);
}

#[test]
fn the_targets_answers_leave_as_the_origins_and_the_rest_passes() {
    require_root!();
    let mut l = Loaded::new();
    l.origin(origin(1_000_000));
    assert_eq!(l.run(PROG_ORIGIN, &to_server(41_000, SYN, 1)).0, REDIRECT);
    l.map::<u32, SteerReturn>("STEER_RETURNS")
        .insert(
            LO,
            SteerReturn {
                steer_id: 3,
                ifindex: 7,
                role: role::ORIGIN_LOCAL,
                _pad: [0; 7],
            },
            0,
        )
        .unwrap();
    // T answers to the client's copy's MAC: rewritten to come from Mo to Mc.
    let answer = frame(MT, MC2, (SERVER, 80), (CLIENT, 41_000), SYN | ACK, 77);
    let (v, out) = l.run(PROG_RETURN, &answer);
    assert_eq!(v, REDIRECT);
    assert_eq!(out[..6], MC);
    assert_eq!(out[6..12], MO);
    assert_eq!(out[12..], answer[12..]);
    // T's own traffic (no steered connection) goes on untouched.
    let own = frame(MT, MC2, (SERVER, 80), (CLIENT, 41_001), ACK, 5);
    assert_eq!(l.run(PROG_RETURN, &own), (UNSPEC, own.clone()));
    // The tunnel device drops what did not come through a tunnel.
    assert_eq!(l.run(PROG_TUNNEL, &answer).0, SHOT);
}

/// Per-packet cost of the programs, measured by the kernel over many runs of one packet
/// (`BPF_PROG_TEST_RUN` with `repeat`; the figure includes the test harness's own skb
/// handling, the same for every program, so compare them with each other).
#[test]
fn per_packet_cost() {
    require_root!();
    let mut l = Loaded::new();
    let cost = |l: &mut Loaded, prog: &str, f: &[u8]| {
        let p: &mut SchedClassifier = l.0.program_mut(prog).unwrap().try_into().unwrap();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(f),
                repeat: 100_000,
                ..Default::default()
            })
            .expect("test run");
        r.duration
    };
    // No steer on the interface: one map lookup.
    let data = to_server(42_000, ACK, 2);
    let idle = cost(&mut l, PROG_ORIGIN, &data);
    l.origin(origin(0));
    // A packet of a connection the origin serves (share 0, not remembered).
    let origins = cost(&mut l, PROG_ORIGIN, &data);
    l.origin(origin(1_000_000));
    assert_eq!(l.run(PROG_ORIGIN, &to_server(42_000, SYN, 1)).0, REDIRECT);
    // A packet of a steered connection (looked up, rewritten, redirected).
    let steered = cost(&mut l, PROG_ORIGIN, &data);
    // A SYN decided afresh each time (share 0: hashed, counted, not remembered).
    l.origin(origin(0));
    let syn = to_server(42_001, SYN, 1);
    let decide = cost(&mut l, PROG_ORIGIN, &syn);
    eprintln!(
        "steer_origin per packet: no steer {idle:?}, origin's connection {origins:?}, steered {steered:?}, SYN decided {decide:?}"
    );
    assert!(
        steered < std::time::Duration::from_micros(20),
        "{steered:?}"
    );
}
