//! Property tests: kernel flow state decoded from arbitrary bytes, turned into records.

use agent_common::flow::{FAMILY_IPV6, state};
use agent_common::wire::DecodeError;
use proptest::prelude::*;

use super::*;

/// A key and two reads of its state, decoded from bytes: mostly valid layouts with random
/// counters, sometimes values the kernel never writes.
fn reads() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>)> {
    let key = (
        prop_oneof![Just(FAMILY_IPV4), Just(FAMILY_IPV6), any::<u8>()],
        prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), any::<u8>()],
        any::<[u8; 16]>(),
        any::<(u32, u16, u16)>(),
    )
        .prop_map(|(family, proto, mut addr, (ifindex, lp, rp))| {
            if family == FAMILY_IPV4 {
                addr[4..].fill(0);
            }
            FlowKey {
                local_addr: addr,
                remote_addr: addr,
                ifindex,
                local_port: lp,
                remote_port: rp,
                proto,
                family,
                _pad: [0; 2],
            }
            .to_bytes()
            .to_vec()
        });
    let stats = proptest::collection::vec(any::<u8>(), FlowStats::SIZE..FlowStats::SIZE + 8)
        .prop_map(|mut b| {
            // client_is_local, turn, state: mostly in range.
            b[94] %= 3;
            b[95] %= 4;
            // state (u16 at 90, native order): bits 0-8 are defined.
            let st = u16::from_ne_bytes([b[90], b[91]]);
            let st = if st & 0xf000 == 0xf000 {
                st
            } else {
                st & 0x01ff
            };
            b[90..92].copy_from_slice(&st.to_ne_bytes());
            b
        });
    (key, stats.clone(), stats)
}

fn ctx() -> RecordContext<'static> {
    RecordContext {
        workload: "w",
        interface: "wl-w",
        mono_to_unix_offset_ns: -5,
    }
}

fn check_record(r: &FlowRecord, key: &FlowKey, p: &FlowStats, cur: &FlowStats) {
    let ip_len = if key.family == FAMILY_IPV4 { 4 } else { 16 };
    assert_eq!((r.local_ip.len(), r.remote_ip.len()), (ip_len, ip_len));
    assert_ne!(
        r.transport,
        Transport::Unspecified as i32,
        "a decoded key is TCP or UDP"
    );
    assert!(r.packets_out <= cur.packets[DIR_OUT] && r.packets_in <= cur.packets[DIR_IN]);
    assert!(r.bytes_out <= cur.bytes[DIR_OUT] && r.bytes_in <= cur.bytes[DIR_IN]);
    assert_eq!(
        r.packets_out,
        cur.packets[DIR_OUT].saturating_sub(p.packets[DIR_OUT])
    );
    assert_eq!(r.requests, u64::from(cur.requests.wrapping_sub(p.requests)));
    // Latencies are the L7 table's (from payload samples), not the kernel state's.
    assert_eq!(r.latency_sum_ns, 0);
    assert!(r.latency.is_empty());
    assert_eq!(r.opened, r.first_record && cur.state & state::OPENED != 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
    ))]

    /// Whatever the bytes, decoding either refuses them or gives a key and state whose
    /// records keep their invariants; a second identical read reports nothing, a changed
    /// one reports the deltas, and an ended flow is forgotten.
    #[test]
    fn decoded_state_gives_consistent_records((k, s1, s2) in reads(), ended in any::<bool>()) {
        let key = match FlowKey::from_bytes(&k) {
            Ok(key) => key,
            Err(e) => {
                prop_assert!(matches!(e, DecodeError::Invalid { .. }), "{e}");
                return Ok(());
            }
        };
        let (Ok(first), Ok(mut second)) = (FlowStats::from_bytes(&s1), FlowStats::from_bytes(&s2)) else {
            return Ok(());
        };
        second.first_seen_ns = first.first_seen_ns;
        let mut t = FlowTracker::default();
        let r = t.update(&key, &first, false, &ctx()).expect("a first read is reported");
        prop_assert!(r.first_record && !r.ended);
        check_record(&r, &key, &FlowStats::ZERO, &first);
        prop_assert!(t.update(&key, &first, false, &ctx()).is_none());
        match t.update(&key, &second, ended, &ctx()) {
            Some(r) => {
                prop_assert!(!r.first_record);
                prop_assert_eq!(r.ended, ended);
                check_record(&r, &key, &first, &second);
            }
            None => prop_assert!(
                !ended && second.packets == first.packets && second.requests == first.requests
            ),
        }
        prop_assert_eq!(t.len(), usize::from(!ended));
    }
}
