//! What the payload samples tell about each flow: its application protocol (from the first
//! bytes each side sent), per request the method, path pattern, status and whether it
//! failed, grouped until the flow's next record, and the request-latency histogram (the
//! kernel keeps only the exact count and sum per flow; each `RESPONSE` sample carries its
//! request's latency). Fed by the `PAYLOADS` ring buffer.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use agent_common::{
    FlowKey, FlowStats, PayloadSample,
    flow::{DIR_OUT, PROTO_UDP, sample},
    latency,
};
use weft_l7::{Confidence, Detection, Protocol, Transport};
use weft_proto::v1::{DnsAnswer, FlowRecord, LatencyBucket, RequestGroup};

/// Distinct (method, path, status) groups kept per flow between two records; beyond it,
/// requests are counted in one group with an empty method and path.
const MAX_GROUPS_PER_FLOW: usize = 32;
/// Flows tracked at most (the kernel map holds as many).
const MAX_FLOWS: usize = agent_common::flow::FLOW_TABLE_ENTRIES as usize;
/// DNS answers kept per flow between two records.
const MAX_DNS_ANSWERS: usize = 64;

#[derive(Default)]
struct Group {
    count: u64,
    errors: u64,
    latency_sum_ns: u64,
}

#[derive(Default)]
struct FlowL7 {
    flow_first_seen_ns: u64,
    client_first: Vec<u8>,
    server_first: Vec<u8>,
    detection: Option<Detection>,
    /// The outstanding request: (method, path pattern).
    pending: Option<(String, String)>,
    groups: HashMap<(String, String, u32), Group>,
    dns: Vec<(String, IpAddr, u32)>,
    latency: Latencies,
}

/// A flow's request latencies from its `RESPONSE` samples: the histogram since the last
/// record, and what all its records carried so far (to compare with the kernel's exact
/// count and sum).
#[derive(Default)]
struct Latencies {
    /// (bucket, count) since the last record, in no particular order.
    buckets: Vec<(u8, u64)>,
    sum_ns: u64,
    reported_count: u64,
    reported_sum_ns: u64,
}

impl Latencies {
    fn add(&mut self, bucket: usize, count: u64, sum_ns: u64) {
        let b = bucket as u8;
        match self.buckets.iter_mut().find(|(x, _)| *x == b) {
            Some((_, n)) => *n += count,
            None => self.buckets.push((b, count)),
        }
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
    }

    /// Moves the histogram since the last record into `record`. On a flow's last record,
    /// requests the kernel counted (`cur.requests`, cumulative) but no sample told (the
    /// payload ring was full) are added at the mean of their latencies, which the kernel's
    /// exact sum gives, so that the flow's records add up to the kernel's count and sum.
    /// Returns how many requests were added so.
    fn take(&mut self, cur: &FlowStats, record: &mut FlowRecord) -> u64 {
        let mut unsampled = 0;
        if record.ended {
            let count: u64 = self.buckets.iter().map(|(_, n)| n).sum();
            let seen = self.reported_count + count;
            let gap = u64::from(cur.requests).saturating_sub(seen);
            if gap > 0 {
                let sum = cur
                    .latency_sum_ns
                    .saturating_sub(self.reported_sum_ns.saturating_add(self.sum_ns));
                self.add(latency::bucket_of(sum / gap), gap, sum);
                unsampled = gap;
            }
        }
        self.buckets.sort_unstable();
        record.latency = self
            .buckets
            .drain(..)
            .map(|(b, count)| {
                self.reported_count += count;
                LatencyBucket {
                    upper_bound_ns: latency::bucket_upper_ns(b.into()),
                    count,
                }
            })
            .collect();
        record.latency_sum_ns = std::mem::take(&mut self.sum_ns);
        self.reported_sum_ns = self.reported_sum_ns.saturating_add(record.latency_sum_ns);
        unsampled
    }
}

#[derive(Default)]
pub struct L7Table {
    flows: HashMap<FlowKey, FlowL7>,
}

/// Which side sent a sample: REQUEST comes from the client, RESPONSE and FIRST (a server
/// that speaks first) from the server. Returns (from_client, server_port).
fn sides(s: &PayloadSample) -> (bool, u16) {
    let from_client = s.kind == sample::REQUEST;
    let sender_is_local = s.dir as usize == DIR_OUT;
    let server_is_local = if from_client {
        !sender_is_local
    } else {
        sender_is_local
    };
    let server_port = if server_is_local {
        s.key.local_port
    } else {
        s.key.remote_port
    };
    (from_client, server_port)
}

impl L7Table {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.flows.len()
    }

    /// Takes in one payload sample.
    pub fn observe(&mut self, s: &PayloadSample) {
        if !self.flows.contains_key(&s.key) && self.flows.len() >= MAX_FLOWS {
            return;
        }
        let f = self.flows.entry(s.key).or_default();
        if f.flow_first_seen_ns != s.flow_first_seen_ns {
            // A new flow on a reused 5-tuple.
            *f = FlowL7 {
                flow_first_seen_ns: s.flow_first_seen_ns,
                ..Default::default()
            };
        }
        let data = s.payload();
        let n = data.len();
        let (from_client, server_port) = sides(s);
        let transport = if s.key.proto == PROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        };

        let mut redetect = false;
        if from_client && f.client_first.is_empty() && n > 0 {
            f.client_first = data.to_vec();
            redetect = true;
        }
        if !from_client && f.server_first.is_empty() && n > 0 {
            f.server_first = data.to_vec();
            redetect = true;
        }
        let settled = f
            .detection
            .as_ref()
            .is_some_and(|d| d.confidence == Confidence::Payload);
        if redetect && !settled || f.detection.is_none() {
            let d = weft_l7::detect(transport, server_port, &f.client_first, &f.server_first);
            // Keep the names learned earlier if this look no longer sees them.
            let (sni, host) = f
                .detection
                .as_ref()
                .map(|o| (o.tls_sni.clone(), o.http_host.clone()))
                .unwrap_or_default();
            f.detection = Some(Detection {
                tls_sni: d.tls_sni.clone().or(sni),
                http_host: d.http_host.clone().or(host),
                ..d
            });
        }
        let protocol = f.detection.as_ref().map_or(Protocol::Tcp, |d| d.protocol);

        match s.kind {
            sample::REQUEST => {
                f.pending = Some(match weft_l7::parse_request(protocol, data) {
                    Some(r) => {
                        let method = match r.operation {
                            Some(op) if !op.is_empty() => op,
                            _ => r.method,
                        };
                        let path = match (protocol, r.path) {
                            (
                                Protocol::Http1
                                | Protocol::Http2
                                | Protocol::Grpc
                                | Protocol::WebSocket,
                                Some(p),
                            ) => weft_l7::path_pattern(&p),
                            (_, Some(p)) => p.chars().take(128).collect(),
                            (_, None) => String::new(),
                        };
                        (method, path)
                    }
                    None => (String::new(), String::new()),
                });
            }
            sample::RESPONSE => {
                let resp = weft_l7::parse_response(protocol, data);
                let (status, error) = resp.as_ref().map_or((0, false), |r| {
                    // HTTP-like statuses label the group; other codes (DNS rcode, MySQL
                    // error numbers) only mark the error.
                    let labelled = matches!(
                        protocol,
                        Protocol::Http1 | Protocol::Http2 | Protocol::Grpc | Protocol::WebSocket
                    );
                    (
                        if labelled {
                            r.status.unwrap_or(0) as u32
                        } else {
                            0
                        },
                        r.error,
                    )
                });
                if protocol == Protocol::Dns && f.dns.len() < MAX_DNS_ANSWERS {
                    let tcp = transport == Transport::Tcp;
                    for a in weft_l7::dns_answers(data, tcp) {
                        if f.dns.len() < MAX_DNS_ANSWERS {
                            f.dns.push(a);
                        }
                    }
                }
                let (method, path) = f.pending.take().unwrap_or_default();
                let mut key = (method, path, status);
                if !f.groups.contains_key(&key) && f.groups.len() >= MAX_GROUPS_PER_FLOW {
                    key = (String::new(), String::new(), 0);
                }
                let g = f.groups.entry(key).or_default();
                g.count += 1;
                g.errors += error as u64;
                // A sample's latency is whatever the ring said: saturate, never overflow.
                g.latency_sum_ns = g.latency_sum_ns.saturating_add(s.latency_ns);
                f.latency
                    .add(latency::bucket_of(s.latency_ns), 1, s.latency_ns);
            }
            _ => {}
        }
    }

    /// Moves what is known of `key` into its record (request groups, latency histogram and
    /// DNS answers since the last record); forgets the flow when the record is its last.
    /// `cur` is the kernel's state of the flow the record was made from. Returns the
    /// requests whose latency no payload sample told (see `Latencies::take`).
    pub fn fill(&mut self, key: &FlowKey, cur: &FlowStats, record: &mut FlowRecord) -> u64 {
        let Some(f) = self
            .flows
            .get_mut(key)
            .filter(|f| f.flow_first_seen_ns == cur.first_seen_ns)
        else {
            // No sample of this flow was read (all lost, or the table was full): only its
            // last record carries its latencies, from the kernel's count and sum.
            return Latencies::default().take(cur, record);
        };
        let unsampled = f.latency.take(cur, record);
        if let Some(d) = &f.detection {
            record.protocol = d.protocol.as_str().to_owned();
            record.protocol_from_payload = d.confidence == Confidence::Payload;
            record.server_name = d
                .tls_sni
                .clone()
                .or_else(|| d.http_host.clone())
                .unwrap_or_default();
        }
        record.request_groups = f
            .groups
            .drain()
            .map(|((method, path, status), g)| RequestGroup {
                method,
                path,
                status,
                count: g.count,
                errors: g.errors,
                latency_sum_ns: g.latency_sum_ns,
            })
            .collect();
        record
            .request_groups
            .sort_by(|a, b| (&a.method, &a.path, a.status).cmp(&(&b.method, &b.path, b.status)));
        record.dns_answers = f
            .dns
            .drain(..)
            .map(|(name, ip, ttl)| DnsAnswer {
                name,
                ip: match ip {
                    IpAddr::V4(v) => v.octets().to_vec(),
                    IpAddr::V6(v) => v.octets().to_vec(),
                },
                ttl_seconds: ttl,
            })
            .collect();
        if record.ended {
            self.flows.remove(key);
        }
        unsampled
    }

    /// Forgets flows no longer in the kernel map.
    pub fn retain_live(&mut self, live: &HashSet<FlowKey>) {
        self.flows.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::flow::{DIR_IN, FAMILY_IPV4, PAYLOAD_SAMPLE_BYTES, PROTO_TCP};

    fn key(local_port: u16, remote_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            local_port,
            remote_port,
            proto,
            family: FAMILY_IPV4,
            ifindex: 3,
            ..Default::default()
        }
    }

    fn sample(
        k: FlowKey,
        kind: u8,
        dir: usize,
        data: &[u8],
        latency_ns: u64,
        first: bool,
    ) -> PayloadSample {
        let mut buf = [0u8; PAYLOAD_SAMPLE_BYTES];
        let n = data.len().min(PAYLOAD_SAMPLE_BYTES);
        buf[..n].copy_from_slice(&data[..n]);
        PayloadSample {
            key: k,
            kind,
            dir: dir as u8,
            captured: n as u16,
            flow_first_seen_ns: 7,
            ts_ns: 0,
            latency_ns,
            payload_len: data.len() as u32,
            first_of_direction: first as u8,
            _pad: [0; 3],
            data: buf,
        }
    }

    /// The kernel's state of the flow of generation `first_seen_ns`, no request counted.
    fn at(first_seen_ns: u64) -> FlowStats {
        FlowStats {
            first_seen_ns,
            ..FlowStats::ZERO
        }
    }

    fn kernel(requests: u32, latency_sum_ns: u64) -> FlowStats {
        FlowStats {
            first_seen_ns: 7,
            requests,
            latency_sum_ns,
            ..FlowStats::ZERO
        }
    }

    fn exchange(t: &mut L7Table, k: FlowKey, latency_ns: u64) {
        t.observe(&sample(
            k,
            sample::REQUEST,
            DIR_OUT,
            b"GET / HTTP/1.1\r\n\r\n",
            0,
            false,
        ));
        t.observe(&sample(
            k,
            sample::RESPONSE,
            DIR_IN,
            b"HTTP/1.1 200 OK\r\n\r\n",
            latency_ns,
            false,
        ));
    }

    fn counts(r: &FlowRecord) -> Vec<(u64, u64)> {
        r.latency
            .iter()
            .map(|b| (b.upper_bound_ns, b.count))
            .collect()
    }

    #[test]
    fn latency_histogram_is_built_from_response_samples() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        for lat in [1_000_000, 1_010_000, 20_000_000] {
            exchange(&mut t, k, lat);
        }
        let mut r = record(false);
        assert_eq!(t.fill(&k, &kernel(3, 22_010_000), &mut r), 0);
        let ms1 = latency::bucket_upper_ns(latency::bucket_of(1_000_000));
        let ms20 = latency::bucket_upper_ns(latency::bucket_of(20_000_000));
        assert_eq!(counts(&r), vec![(ms1, 2), (ms20, 1)], "sorted by bound");
        assert_eq!(r.latency_sum_ns, 22_010_000);
        // Moved into one record only.
        let mut again = record(false);
        t.fill(&k, &kernel(3, 22_010_000), &mut again);
        assert!(again.latency.is_empty() && again.latency_sum_ns == 0);
    }

    #[test]
    fn requests_without_a_sample_are_added_at_their_mean_on_the_last_record() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        exchange(&mut t, k, 1_000_000);
        exchange(&mut t, k, 1_000_000);
        // The kernel counted 4 requests (sum 20 ms): two samples were lost.
        let mut r = record(false);
        assert_eq!(t.fill(&k, &kernel(4, 20_000_000), &mut r), 0);
        assert_eq!(r.latency.iter().map(|b| b.count).sum::<u64>(), 2);
        assert_eq!(
            r.latency_sum_ns, 2_000_000,
            "sum and count agree per record"
        );
        let mut last = record(true);
        assert_eq!(t.fill(&k, &kernel(4, 20_000_000), &mut last), 2);
        let ms9 = latency::bucket_upper_ns(latency::bucket_of(9_000_000));
        assert_eq!(counts(&last), vec![(ms9, 2)]);
        assert_eq!(last.latency_sum_ns, 18_000_000);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_flow_without_samples_gets_its_latencies_from_the_kernel_on_its_last_record() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        let mut r = record(false);
        assert_eq!(t.fill(&k, &kernel(3, 3_000_000), &mut r), 0);
        assert!(r.latency.is_empty() && r.latency_sum_ns == 0);
        let mut last = record(true);
        assert_eq!(t.fill(&k, &kernel(3, 3_000_000), &mut last), 3);
        let ms1 = latency::bucket_upper_ns(latency::bucket_of(1_000_000));
        assert_eq!(counts(&last), vec![(ms1, 3)]);
        assert_eq!(last.latency_sum_ns, 3_000_000);
    }

    fn record(ended: bool) -> FlowRecord {
        FlowRecord {
            ended,
            ..Default::default()
        }
    }

    #[test]
    fn http_on_a_nonstandard_port_is_detected_and_requests_grouped() {
        let k = key(40000, 9999, PROTO_TCP); // local client
        let mut t = L7Table::default();
        for (i, status) in [(1, "200 OK"), (2, "200 OK"), (3, "503 Service Unavailable")] {
            let req = format!("GET /users/{i} HTTP/1.1\r\nHost: api.internal\r\n\r\n");
            t.observe(&sample(
                k,
                sample::REQUEST,
                DIR_OUT,
                req.as_bytes(),
                0,
                i == 1,
            ));
            let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            t.observe(&sample(
                k,
                sample::RESPONSE,
                DIR_IN,
                resp.as_bytes(),
                1_000_000,
                i == 1,
            ));
        }
        let mut r = record(false);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.protocol, "http");
        assert!(r.protocol_from_payload, "found from payload on port 9999");
        assert_eq!(r.server_name, "api.internal");
        assert_eq!(r.request_groups.len(), 2);
        let ok = r.request_groups.iter().find(|g| g.status == 200).unwrap();
        assert_eq!(
            (ok.method.as_str(), ok.path.as_str(), ok.count, ok.errors),
            ("GET", "/users/{id}", 2, 0)
        );
        assert_eq!(ok.latency_sum_ns, 2_000_000);
        let bad = r.request_groups.iter().find(|g| g.status == 503).unwrap();
        assert_eq!((bad.count, bad.errors), (1, 1));
        // Groups move into one record only.
        let mut again = record(false);
        t.fill(&k, &at(7), &mut again);
        assert!(again.request_groups.is_empty());
        assert_eq!(again.protocol, "http");
    }

    #[test]
    fn redis_errors_count_on_the_server_side_view() {
        let k = key(6380, 51000, PROTO_TCP); // local server on a non-standard port
        let mut t = L7Table::default();
        t.observe(&sample(
            k,
            sample::REQUEST,
            DIR_IN,
            b"*1\r\n$4\r\nPING\r\n",
            0,
            true,
        ));
        t.observe(&sample(
            k,
            sample::RESPONSE,
            DIR_OUT,
            b"+PONG\r\n",
            10,
            true,
        ));
        t.observe(&sample(
            k,
            sample::REQUEST,
            DIR_IN,
            b"*2\r\n$4\r\nINCR\r\n$1\r\nx\r\n",
            0,
            false,
        ));
        t.observe(&sample(
            k,
            sample::RESPONSE,
            DIR_OUT,
            b"-WRONGTYPE Operation against a key\r\n",
            10,
            false,
        ));
        let mut r = record(true);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.protocol, "redis");
        let errors: u64 = r.request_groups.iter().map(|g| g.errors).sum();
        assert_eq!(errors, 1);
        assert!(
            r.request_groups
                .iter()
                .any(|g| g.method == "INCR" && g.errors == 1)
        );
        assert_eq!(t.len(), 0, "an ended flow is forgotten");
    }

    #[test]
    fn reused_tuple_resets_what_was_learned() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        t.observe(&sample(
            k,
            sample::REQUEST,
            DIR_OUT,
            b"GET / HTTP/1.1\r\n\r\n",
            0,
            true,
        ));
        let mut s = sample(
            k,
            sample::REQUEST,
            DIR_OUT,
            b"*1\r\n$4\r\nPING\r\n",
            0,
            true,
        );
        s.flow_first_seen_ns = 99;
        t.observe(&s);
        let mut r = record(false);
        t.fill(&k, &at(7), &mut r);
        assert!(r.protocol.is_empty(), "the old generation is gone");
        t.fill(&k, &at(99), &mut r);
        assert_eq!(r.protocol, "redis");
    }

    #[test]
    fn group_count_is_bounded() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        for i in 0..100 {
            let req = format!("GET /p{i}x HTTP/1.1\r\n\r\n");
            t.observe(&sample(
                k,
                sample::REQUEST,
                DIR_OUT,
                req.as_bytes(),
                0,
                i == 0,
            ));
            t.observe(&sample(
                k,
                sample::RESPONSE,
                DIR_IN,
                b"HTTP/1.1 200 OK\r\n\r\n",
                1,
                i == 0,
            ));
        }
        let mut r = record(false);
        t.fill(&k, &at(7), &mut r);
        assert!(r.request_groups.len() <= MAX_GROUPS_PER_FLOW + 1);
        assert_eq!(r.request_groups.iter().map(|g| g.count).sum::<u64>(), 100);
    }

    #[test]
    fn server_speaking_first_is_detected_from_its_greeting() {
        let k = key(40000, 3307, PROTO_TCP);
        let mut t = L7Table::default();
        let mut greeting = vec![0x4a, 0, 0, 0, 0x0a];
        greeting.extend_from_slice(b"8.0.36\0");
        greeting.extend_from_slice(&[0u8; 40]);
        t.observe(&sample(k, sample::FIRST, DIR_IN, &greeting, 0, true));
        let mut r = record(false);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.protocol, "mysql");
    }

    /// Found by the property tests: two responses whose latencies add past u64::MAX
    /// overflowed the group's sum (a panic in debug builds, a wrapped sum in release).
    #[test]
    fn latency_sums_saturate_instead_of_overflowing() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        for _ in 0..2 {
            t.observe(&sample(
                k,
                sample::REQUEST,
                DIR_OUT,
                b"GET / HTTP/1.1\r\n",
                0,
                false,
            ));
            t.observe(&sample(
                k,
                sample::RESPONSE,
                DIR_IN,
                b"HTTP/1.1 200 OK\r\n",
                u64::MAX - 1,
                false,
            ));
        }
        let mut r = record(false);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.request_groups.len(), 1);
        assert_eq!(r.request_groups[0].count, 2);
        assert_eq!(r.request_groups[0].latency_sum_ns, u64::MAX);
    }
}
