//! Property tests: payload samples decoded from arbitrary bytes, fed to the L7 table.

use std::collections::HashMap;
use std::str::FromStr;

use agent_common::flow::{FAMILY_IPV4, PAYLOAD_SAMPLE_BYTES, PROTO_TCP};
use proptest::prelude::*;

use super::*;

/// Payload starts that reach the parsers, then arbitrary bytes.
const SEEDS: &[&[u8]] = &[
    b"",
    b"GET /users/42 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\n",
    b"*1\r\n$4\r\nPING\r\n",
    b"-ERR unknown\r\n",
    b"\x1a\x2b\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x01a\x00\x00\x01\x00\x01\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"Q\x00\x00\x00\x0dSELECT 1\x00",
];

/// A ring item: a sample's layout with fields drawn mostly from what the kernel writes
/// (a few flows, kinds, directions, lengths), sometimes from what it never writes.
fn item() -> impl Strategy<Value = Vec<u8>> {
    (
        (
            0u16..4,
            prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP), any::<u8>()],
        ),
        (0u8..4, 0u8..3, any::<u8>()),
        (
            0..SEEDS.len(),
            proptest::collection::vec(any::<u8>(), 0..PAYLOAD_SAMPLE_BYTES),
        ),
        (0u16..140, any::<u32>(), any::<u64>()),
    )
        .prop_map(
            |((port, proto), (kind, dir, first), (seed, tail), (captured, extra, latency_ns))| {
                let mut data = SEEDS[seed].to_vec();
                data.extend(tail);
                data.truncate(PAYLOAD_SAMPLE_BYTES);
                let mut buf = [0u8; PAYLOAD_SAMPLE_BYTES];
                buf[..data.len()].copy_from_slice(&data);
                let captured = if captured < 130 {
                    data.len() as u16
                } else {
                    captured
                };
                PayloadSample {
                    key: FlowKey {
                        local_port: 40000 + port,
                        remote_port: [80, 53, 6379, 9999][usize::from(port)],
                        proto,
                        family: FAMILY_IPV4,
                        ifindex: 3,
                        ..Default::default()
                    },
                    kind,
                    dir,
                    captured,
                    flow_first_seen_ns: 7,
                    ts_ns: 1,
                    latency_ns,
                    payload_len: u32::from(captured).saturating_add(extra % 3),
                    first_of_direction: first % 3,
                    _pad: [0; 3],
                    data: buf,
                }
                .to_bytes()
                .to_vec()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
    ))]

    /// Items that decode are observed without panicking; the flow's record then counts
    /// every response once for protocols counted per turn (handshakes, HTTP/2 streams,
    /// AMQP methods and WebSocket messages are counted by their own rules), in at most
    /// MAX_GROUPS_PER_FLOW + 1 groups with bounded labels.
    #[test]
    fn decoded_samples_fill_consistent_records(items in proptest::collection::vec(item(), 1..40)) {
        let mut t = L7Table::default();
        let mut responses: HashMap<FlowKey, (u64, u64)> = HashMap::new();
        for b in &items {
            let Ok(s) = PayloadSample::from_bytes(b) else { continue };
            prop_assert!(s.payload().len() <= usize::from(s.captured));
            t.observe(&s);
            let (n, sum) = responses.entry(s.key).or_default();
            if s.kind == sample::RESPONSE {
                *n += 1;
                *sum = sum.saturating_add(s.latency_ns);
            }
        }
        prop_assert_eq!(t.len(), responses.len());
        for (key, (n, sum)) in responses {
            let mut r = FlowRecord { ended: true, ..Default::default() };
            let cur = FlowStats { first_seen_ns: 7, requests: n as u32, latency_sum_ns: sum, ..FlowStats::ZERO };
            prop_assert_eq!(t.fill(&key, &cur, &mut r), 0, "every request was sampled");
            prop_assert_eq!(r.latency.iter().map(|b| b.count).sum::<u64>(), n);
            prop_assert_eq!(r.latency_sum_ns, sum);
            prop_assert!(weft_l7::Protocol::from_str(&r.protocol).is_ok(), "{}", r.protocol);
            prop_assert!(r.request_groups.len() <= MAX_GROUPS_PER_FLOW + 1);
            let per_turn = !matches!(
                weft_l7::Protocol::from_str(&r.protocol),
                Ok(weft_l7::Protocol::Postgres
                    | weft_l7::Protocol::Mysql
                    | weft_l7::Protocol::Amqp
                    | weft_l7::Protocol::Http2
                    | weft_l7::Protocol::Grpc
                    | weft_l7::Protocol::WebSocket)
            );
            if per_turn {
                prop_assert_eq!(r.request_groups.iter().map(|g| g.count).sum::<u64>(), n);
            }
            for g in &r.request_groups {
                prop_assert!(g.count >= 1 && g.errors <= g.count);
                prop_assert!(g.path.chars().count() <= 128, "{}", g.path);
            }
            prop_assert!(r.dns_answers.len() <= MAX_DNS_ANSWERS);
            prop_assert!(r.dns_answers.iter().all(|a| matches!(a.ip.len(), 4 | 16)));
        }
        prop_assert_eq!(t.len(), 0, "ended flows are forgotten");
    }
}
