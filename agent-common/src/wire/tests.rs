//! Round trips, the repr(C) layout, and arbitrary bytes against the decoders.

use proptest::prelude::*;

use super::*;
use crate::flow::{DIR_IN, DIR_OUT};

fn key_strategy() -> impl Strategy<Value = FlowKey> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<[u8; 2]>(),
    )
        .prop_map(|(v6, udp, mut local, mut remote, ifindex, lp, rp, pad)| {
            if !v6 {
                local[4..].fill(0);
                remote[4..].fill(0);
            }
            FlowKey {
                local_addr: local,
                remote_addr: remote,
                ifindex,
                local_port: lp,
                remote_port: rp,
                proto: if udp { PROTO_UDP } else { PROTO_TCP },
                family: if v6 { FAMILY_IPV6 } else { FAMILY_IPV4 },
                _pad: pad,
            }
        })
}

fn stats_strategy() -> impl Strategy<Value = FlowStats> {
    (
        proptest::collection::vec(any::<u64>(), 10),
        any::<(u32, u32, u16, [u8; 2])>(),
        (0u8..=1, 0u8..=2, any::<u16>()),
    )
        .prop_map(
            |(n, (requests, rtt, resets, tcp_flags), (local, turn, st))| FlowStats {
                first_seen_ns: n[0],
                last_seen_ns: n[1],
                packets: [n[2], n[3]],
                bytes: [n[4], n[5]],
                payload_bytes: [n[6], n[7]],
                mark_ns: n[8],
                latency_sum_ns: n[9],
                requests,
                handshake_rtt_ns: rtt,
                resets,
                state: st & STATE_BITS,
                tcp_flags,
                client_is_local: local,
                turn,
            },
        )
}

fn event_strategy() -> impl Strategy<Value = FlowEvent> {
    (key_strategy(), stats_strategy(), 0u8..3, any::<[u8; 4]>()).prop_map(
        |(key, mut stats, how, pad)| {
            stats.state |= state::END_REPORTED
                | match how {
                    0 => state::RST,
                    1 => state::FIN_OUT | state::FIN_IN,
                    _ => state::RST | state::FIN_IN,
                };
            FlowEvent {
                key,
                _pad: pad,
                stats,
            }
        },
    )
}

fn sample_strategy() -> impl Strategy<Value = PayloadSample> {
    (
        key_strategy(),
        (0u8..=2, 0u8..=1, 0u8..=1),
        any::<(u64, u64, u64)>(),
        proptest::collection::vec(any::<u8>(), 0..=PAYLOAD_SAMPLE_BYTES),
        any::<u32>(),
        any::<u8>(),
    )
        .prop_map(
            |(
                key,
                (kind, dir, first),
                (flow_first_seen_ns, ts_ns, latency_ns),
                payload,
                extra,
                fill,
            )| {
                let mut data = [fill; PAYLOAD_SAMPLE_BYTES];
                data[..payload.len()].copy_from_slice(&payload);
                PayloadSample {
                    key,
                    kind,
                    dir,
                    captured: payload.len() as u16,
                    flow_first_seen_ns,
                    ts_ns,
                    latency_ns,
                    payload_len: (payload.len() as u32).saturating_add(extra % 100_000),
                    first_of_direction: first,
                    _pad: [0; 3],
                    data,
                }
            },
        )
}

/// The bytes of a record as the kernel writes it: its memory (repr(C), no implicit padding).
fn memory<T: Copy, const N: usize>(v: &T) -> [u8; N] {
    assert_eq!(core::mem::size_of::<T>(), N);
    // SAFETY: T is one of the repr(C) records whose size asserts prove it has no implicit
    // padding, so every byte is initialised; N equals its size.
    unsafe { core::mem::transmute_copy::<T, [u8; N]>(v) }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
    ))]

    #[test]
    fn to_bytes_is_the_kernel_layout(k in key_strategy(), ev in event_strategy(), s in sample_strategy()) {
        prop_assert_eq!(k.to_bytes(), memory::<_, { FlowKey::SIZE }>(&k));
        prop_assert_eq!(ev.stats.to_bytes(), memory::<_, { FlowStats::SIZE }>(&ev.stats));
        prop_assert_eq!(ev.to_bytes(), memory::<_, { FlowEvent::SIZE }>(&ev));
        prop_assert_eq!(s.to_bytes(), memory::<_, { PayloadSample::SIZE }>(&s));
    }

    #[test]
    fn valid_records_round_trip(k in key_strategy(), ev in event_strategy(), s in sample_strategy(), tail in bytes(64)) {
        prop_assert_eq!(FlowKey::from_bytes(&k.to_bytes()), Ok(k));
        prop_assert_eq!(FlowStats::from_bytes(&ev.stats.to_bytes()), Ok(ev.stats));
        // Ring items may be longer than the record (alignment); the rest is ignored.
        let mut item = ev.to_bytes().to_vec();
        item.extend_from_slice(&tail);
        let back = FlowEvent::from_bytes(&item).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.to_bytes(), ev.to_bytes());
        let mut item = s.to_bytes().to_vec();
        item.extend_from_slice(&tail);
        let back = PayloadSample::from_bytes(&item).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back.to_bytes(), s.to_bytes());
        prop_assert_eq!(back.payload(), &s.data[..usize::from(s.captured)]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decode_only_valid_records(b in bytes(300)) {
        match FlowKey::from_bytes(&b) {
            Ok(k) => {
                prop_assert!(k.validate().is_ok());
                prop_assert_eq!(&k.to_bytes()[..], &b[..FlowKey::SIZE]);
            }
            Err(DecodeError::Short { need, got, .. }) => prop_assert!(got == b.len() && got < need),
            Err(DecodeError::Invalid { .. }) => prop_assert!(b.len() >= FlowKey::SIZE),
        }
        if let Ok(s) = FlowStats::from_bytes(&b) {
            prop_assert!(s.client_is_local <= 1 && s.turn <= turn::SERVER);
            prop_assert_eq!(s.state & !STATE_BITS, 0);
            prop_assert_eq!(&s.to_bytes()[..], &b[..FlowStats::SIZE]);
        }
        if let Ok(ev) = FlowEvent::from_bytes(&b) {
            prop_assert!(ev.key.validate().is_ok() && ev.stats.validate().is_ok());
            prop_assert!(ev.stats.state & state::END_REPORTED != 0);
            prop_assert_eq!(&ev.to_bytes()[..], &b[..FlowEvent::SIZE]);
        }
        if let Ok(s) = PayloadSample::from_bytes(&b) {
            prop_assert!(s.kind <= sample::RESPONSE);
            prop_assert!(usize::from(s.dir) == DIR_OUT || usize::from(s.dir) == DIR_IN);
            prop_assert!(s.payload().len() <= PAYLOAD_SAMPLE_BYTES);
            prop_assert!(s.payload().len() as u64 <= u64::from(s.payload_len));
            prop_assert_eq!(&s.to_bytes()[..], &b[..PayloadSample::SIZE]);
        }
        if let Ok((c, data)) = StreamChunk::from_bytes(&b) {
            prop_assert_eq!(data.len(), c.len as usize);
            prop_assert!(data.len() <= STREAM_CHUNK_BYTES);
            prop_assert!(u64::from(c.offset) + u64::from(c.len) <= u64::from(c.payload_len));
            prop_assert_eq!(&c.to_bytes()[..], &b[..StreamChunk::SIZE]);
        }
    }

    /// Bytes that are a valid record with one byte changed: decoding either fails or gives
    /// back exactly those bytes (nothing is silently repaired or dropped).
    #[test]
    fn a_flipped_byte_is_refused_or_kept(s in sample_strategy(), ev in event_strategy(), at in any::<prop::sample::Index>(), v in any::<u8>()) {
        let mut b = s.to_bytes();
        let i = at.index(b.len());
        b[i] = v;
        if let Ok(d) = PayloadSample::from_bytes(&b) {
            prop_assert_eq!(d.to_bytes(), b);
        }
        let mut b = ev.to_bytes();
        let i = at.index(b.len());
        b[i] = v;
        if let Ok(d) = FlowEvent::from_bytes(&b) {
            prop_assert_eq!(d.to_bytes(), b);
        }
    }
}

fn valid_sample() -> PayloadSample {
    let mut key = FlowKey {
        ifindex: 3,
        local_port: 40000,
        remote_port: 80,
        proto: PROTO_TCP,
        family: FAMILY_IPV4,
        ..Default::default()
    };
    key.local_addr[..4].copy_from_slice(&[198, 18, 0, 11]);
    key.remote_addr[..4].copy_from_slice(&[198, 18, 0, 12]);
    let mut data = [0u8; PAYLOAD_SAMPLE_BYTES];
    data[..4].copy_from_slice(b"GET ");
    PayloadSample {
        key,
        kind: sample::REQUEST,
        dir: DIR_OUT as u8,
        captured: 4,
        flow_first_seen_ns: 1,
        ts_ns: 2,
        latency_ns: 0,
        payload_len: 4,
        first_of_direction: 1,
        _pad: [0; 3],
        data,
    }
}

fn refused(mut edit: impl FnMut(&mut PayloadSample)) -> DecodeError {
    let mut s = valid_sample();
    edit(&mut s);
    PayloadSample::from_bytes(&s.to_bytes()).expect_err("refused")
}

#[test]
fn short_items_name_the_record_and_both_lengths() {
    let b = valid_sample().to_bytes();
    let e = PayloadSample::from_bytes(&b[..207]).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Short {
            record: "PayloadSample",
            need: 208,
            got: 207
        }
    );
    assert_eq!(
        e.to_string(),
        "PayloadSample: 207 bytes, the record has 208"
    );
    assert!(matches!(
        FlowEvent::from_bytes(&[]),
        Err(DecodeError::Short {
            need: 144,
            got: 0,
            ..
        })
    ));
}

#[test]
fn values_the_kernel_never_writes_are_refused() {
    let field = |e: DecodeError| match e {
        DecodeError::Invalid { field, .. } => field,
        DecodeError::Short { .. } => "short",
    };
    assert_eq!(field(refused(|s| s.captured = 129)), "captured");
    assert_eq!(
        field(refused(|s| {
            s.captured = 10;
            s.payload_len = 9;
        })),
        "captured"
    );
    assert_eq!(field(refused(|s| s.kind = 3)), "kind");
    assert_eq!(field(refused(|s| s.dir = 2)), "dir");
    assert_eq!(
        field(refused(|s| s.first_of_direction = 7)),
        "first_of_direction"
    );
    assert_eq!(field(refused(|s| s.key.family = 0)), "family");
    assert_eq!(field(refused(|s| s.key.proto = 1)), "proto");
    assert_eq!(field(refused(|s| s.key.remote_addr[9] = 1)), "remote_addr");
    let e = refused(|s| s.key.family = 5);
    assert_eq!(
        e.to_string(),
        "FlowKey: field family is 5, which the kernel program never writes"
    );
}

#[test]
fn flow_events_must_be_closed_and_reported() {
    let s = valid_sample();
    let mut stats = FlowStats::ZERO;
    stats.state = state::END_REPORTED | state::RST;
    let ev = FlowEvent {
        key: s.key,
        _pad: [0; 4],
        stats,
    };
    assert!(FlowEvent::from_bytes(&ev.to_bytes()).is_ok());
    for st in [
        state::RST,
        state::END_REPORTED | state::FIN_OUT,
        state::END_REPORTED | state::OPENED,
    ] {
        let mut e = ev;
        e.stats.state = st;
        assert!(
            FlowEvent::from_bytes(&e.to_bytes()).is_err(),
            "state {st:#x}"
        );
    }
    let mut e = ev;
    e.stats.turn = 3;
    assert!(matches!(
        FlowEvent::from_bytes(&e.to_bytes()),
        Err(DecodeError::Invalid { field: "turn", .. })
    ));
    e.stats.turn = turn::CLIENT;
    e.stats.state |= 1 << 12;
    assert!(matches!(
        FlowEvent::from_bytes(&e.to_bytes()),
        Err(DecodeError::Invalid { field: "state", .. })
    ));
}

fn valid_chunk() -> (StreamChunk, Vec<u8>) {
    let s = valid_sample();
    let data = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let c = StreamChunk {
        key: s.key,
        from_client: 1,
        flags: chunk::START,
        dir: DIR_OUT as u8,
        _pad: 0,
        flow_first_seen_ns: 1,
        ts_ns: 2,
        seq: u32::MAX - 3,
        payload_len: 100,
        offset: 0,
        len: data.len() as u32,
    };
    (c, data)
}

fn chunk_item(c: &StreamChunk, data: &[u8]) -> Vec<u8> {
    let mut item = c.to_bytes().to_vec();
    item.extend_from_slice(data);
    item
}

#[test]
fn a_stream_chunk_gives_back_its_header_and_exactly_its_bytes() {
    let (c, data) = valid_chunk();
    let mut item = chunk_item(&c, &data);
    // Ring items are padded to 8 bytes: what follows the chunk's bytes is not its.
    item.extend_from_slice(&[0xee; 7]);
    let (back, bytes) = StreamChunk::from_bytes(&item).unwrap();
    assert_eq!(back, c);
    assert_eq!(bytes, &data[..]);
}

#[test]
fn stream_chunks_the_kernel_never_writes_are_refused() {
    let (c, data) = valid_chunk();
    let field = |edit: &dyn Fn(&mut StreamChunk), data: &[u8]| {
        let mut c = c;
        edit(&mut c);
        match StreamChunk::from_bytes(&chunk_item(&c, data)) {
            Err(DecodeError::Invalid { field, .. }) => field,
            Err(DecodeError::Short { .. }) => "short",
            Ok(_) => "accepted",
        }
    };
    assert_eq!(field(&|c| c.key.proto = PROTO_UDP, &data), "key.proto");
    assert_eq!(field(&|c| c.from_client = 2, &data), "from_client");
    assert_eq!(field(&|c| c.flags = 1 << 5, &data), "flags");
    assert_eq!(field(&|c| c.dir = 2, &data), "dir");
    assert_eq!(field(&|c| c.len = 0, &[]), "len");
    assert_eq!(
        field(&|c| c.len = STREAM_CHUNK_BYTES as u32 + 1, &data),
        "len"
    );
    assert_eq!(field(&|c| c.offset = 90, &data), "offset");
    assert_eq!(field(&|c| c.offset = u32::MAX, &data), "offset");
    // The header promises more bytes than the item holds.
    assert_eq!(field(&|c| c.len = 30, &data), "short");
    assert_eq!(field(&|_| {}, &data), "accepted");
}
