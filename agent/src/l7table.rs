//! What the payload samples tell about each flow: its application protocol (from the first
//! bytes each side sent), per request the method, path pattern, status and whether it
//! failed, grouped until the flow's next record, and the request-latency histogram (the
//! kernel keeps only the exact count and sum per flow; each `RESPONSE` sample carries its
//! turn's latency). Fed by the `PAYLOADS` ring buffer.
//!
//! The state is kept per flow *incarnation*: a 5-tuple reused by a new connection is a new
//! flow, told apart by the kernel's `first_seen_ns`, which every sample
//! (`flow_first_seen_ns`) and every record's kernel state carry. The samples of a new
//! connection can be read before the old one's last record (the two rings are read
//! separately: a reused tuple's new samples can arrive in the same read as the old
//! connection's end), so both incarnations are kept side by side until each one's last
//! record.
//!
//! HTTP/2 and AMQP connections are copied whole by the kernel (`state::WHOLE`, the
//! `STREAM_CHUNKS` ring) and post no samples: their protocol, requests and latencies come
//! from whole turns ([`crate::stream_turns::StreamTurns`]), exactly as `weft
//! import pcap` counts them in a capture. A stream that cannot be followed from its start
//! (or past [`MAX_STREAMS`]) is followed by the first bytes of each side of its turns, as a
//! sampled flow is.

use std::collections::{HashMap, HashSet, hash_map::Entry};
use std::net::IpAddr;

use agent_common::{
    FlowKey, FlowStats, PayloadSample, StreamChunk,
    flow::{DIR_IN, DIR_OUT, PAYLOAD_SAMPLE_BYTES, PROTO_UDP, sample},
    latency,
};
use weft_l7::{Call, Confidence, Detection, Protocol, Session, Transport, Turn};
use weft_proto::v1::{DnsAnswer, FlowRecord, LatencyBucket, RequestGroup};

use crate::flows::FastHash;
use crate::stream_turns::{StreamTurns, WholeTurn};

/// Distinct (method, path, status) groups kept per flow between two records; beyond it,
/// requests are counted in one group with an empty method and path.
const MAX_GROUPS_PER_FLOW: usize = 32;
/// Flows tracked at most (the kernel map holds as many).
const MAX_FLOWS: usize = agent_common::flow::FLOW_TABLE_ENTRIES as usize;
/// DNS answers kept per flow between two records.
const MAX_DNS_ANSWERS: usize = 64;
/// Flows copied whole followed whole at once (each holds up to two sides of a turn, 32
/// KiB); beyond it a stream is followed by the first bytes of its turns.
pub const MAX_STREAMS: usize = 2048;
/// An answered turn of a flow copied whole is counted once nothing came for this long
/// (and every payload byte the kernel counted was read), rather than at the next request.
const STREAM_QUIET_NS: u64 = 500_000_000;

#[derive(Default)]
struct Group {
    count: u64,
    errors: u64,
    latency_sum_ns: u64,
}

/// A flow incarnation: its 5-tuple (and interface) and the kernel's `first_seen_ns` of it.
type FlowId = (FlowKey, u64);

#[derive(Default)]
struct FlowL7 {
    client_first: Vec<u8>,
    server_first: Vec<u8>,
    detection: Option<Detection>,
    /// The outstanding request turn's first bytes (`pending_at` set) and when it was
    /// sampled; the buffer is reused from turn to turn.
    pending: Vec<u8>,
    pending_at: Option<u64>,
    /// What the flow said before: handshakes, HTTP/2 streams and tables, WebSocket upgrade.
    session: Option<Session>,
    /// At most `MAX_GROUPS_PER_FLOW`: a short list, searched in order.
    groups: Vec<((String, String, u32), Group)>,
    dns: Vec<(String, IpAddr, u32)>,
    /// Turn latencies from the `RESPONSE` samples, or from the turns of a flow copied whole
    /// (one per request/response turn the kernel counted, whatever the session makes of the
    /// turn's requests).
    latency: Latencies,
    /// The turns of a flow the kernel copies whole.
    stream: Option<Box<StreamTurns>>,
}

impl FlowL7 {
    /// Takes the first payload bytes of a side for protocol detection (`data` is the start
    /// of that side's first payload), and detects again when they are new.
    fn saw_first(
        &mut self,
        from_client: bool,
        data: &[u8],
        transport: Transport,
        server_port: u16,
    ) {
        let head = &data[..data.len().min(PAYLOAD_SAMPLE_BYTES)];
        let mut redetect = false;
        if from_client && self.client_first.is_empty() && !head.is_empty() {
            self.client_first = head.to_vec();
            redetect = true;
        }
        if !from_client && self.server_first.is_empty() && !head.is_empty() {
            self.server_first = head.to_vec();
            redetect = true;
        }
        let settled = self
            .detection
            .as_ref()
            .is_some_and(|d| d.confidence == Confidence::Payload);
        if redetect && !settled || self.detection.is_none() {
            let d = weft_l7::detect(
                transport,
                server_port,
                &self.client_first,
                &self.server_first,
            );
            // Keep the names learned earlier if this look no longer sees them.
            let (sni, alpn, host) = self
                .detection
                .as_ref()
                .map(|o| (o.tls_sni.clone(), o.tls_alpn.clone(), o.http_host.clone()))
                .unwrap_or_default();
            self.detection = Some(Detection {
                tls_sni: d.tls_sni.clone().or(sni),
                tls_alpn: if d.tls_alpn.is_empty() {
                    alpn
                } else {
                    d.tls_alpn.clone()
                },
                http_host: d.http_host.clone().or(host),
                ..d
            });
        }
    }

    /// Counts the requests of whole turns of the stream, and their latencies (a turn with
    /// no request is the rest of an answer already counted).
    fn count_turns(&mut self, turns: Vec<WholeTurn>) {
        if turns.is_empty() {
            return;
        }
        for t in turns.iter().filter(|t| !t.request.is_empty()) {
            self.latency
                .add(latency::bucket_of(t.latency_ns), 1, t.latency_ns);
        }
        let protocol = self
            .detection
            .as_ref()
            .map_or(Protocol::Tcp, |d| d.protocol);
        let session = self.session.get_or_insert_with(|| Session::new(protocol));
        let protocol = session.protocol();
        let calls: Vec<Call> = turns
            .iter()
            .flat_map(|t| session.turn(&t.as_turn()))
            .collect();
        for call in calls {
            self.add(protocol, call);
        }
    }

    /// Counts one request (or WebSocket message) in its (method, path, status) group.
    fn add(&mut self, protocol: Protocol, call: Call) {
        let error = call.error();
        let (method, path) = match call.request {
            Some(r) => {
                let method = match r.operation {
                    Some(op) if !op.is_empty() => op,
                    _ => r.method,
                };
                let path = match (protocol, r.path) {
                    (
                        Protocol::Http1 | Protocol::Http2 | Protocol::Grpc | Protocol::WebSocket,
                        Some(p),
                    ) => weft_l7::path_pattern(&p),
                    (_, Some(p)) => p.chars().take(128).collect(),
                    (_, None) => String::new(),
                };
                (method, path)
            }
            None => (String::new(), String::new()),
        };
        // HTTP-like statuses label the group; other codes (DNS rcode, MySQL error numbers)
        // only mark the error.
        let labelled = matches!(
            protocol,
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc | Protocol::WebSocket
        );
        let status = match (&call.response, labelled) {
            (Some(r), true) => u32::from(r.status.unwrap_or(0)),
            _ => 0,
        };
        let mut key = (method, path, status);
        let position = |groups: &[(_, Group)], key: &_| groups.iter().position(|(k, _)| k == key);
        if self.groups.len() >= MAX_GROUPS_PER_FLOW && position(&self.groups, &key).is_none() {
            key = (String::new(), String::new(), 0);
        }
        let at = position(&self.groups, &key).unwrap_or_else(|| {
            self.groups.push((key, Group::default()));
            self.groups.len() - 1
        });
        let g = &mut self.groups[at].1;
        g.count += 1;
        g.errors += u64::from(error);
        // A sample's latency is whatever the ring said: saturate, never overflow.
        g.latency_sum_ns = g.latency_sum_ns.saturating_add(call.latency_ns);
    }
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
            let sum = cur
                .latency_sum_ns
                .saturating_sub(self.reported_sum_ns.saturating_add(self.sum_ns));
            // None when nothing is missing.
            if let Some(mean) = sum.checked_div(gap) {
                self.add(latency::bucket_of(mean), gap, sum);
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
    flows: HashMap<FlowId, FlowL7, FastHash>,
    /// Flows whose stream is followed whole.
    streams: usize,
    /// The kernel's clock at the collector's last read (`tick`).
    now_ns: u64,
    stream_counts: StreamCounts,
}

/// What became of the streams copied whole, since the agent started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamCounts {
    /// Chunks taken in.
    pub chunks: u64,
    /// Streams followed by the first bytes of their turns (not seen from their start, or
    /// past `MAX_STREAMS`).
    pub partial: u64,
    /// Holes in a stream (copies lost): the turn's side was parsed up to the hole.
    pub holes: u64,
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

    /// Takes in one payload sample. A sample of a new flow on a reused 5-tuple starts that
    /// flow's own state: the old flow's stays until its last record.
    pub fn observe(&mut self, s: &PayloadSample) {
        let id = (s.key, s.flow_first_seen_ns);
        let full = self.flows.len() >= MAX_FLOWS;
        let f = match self.flows.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => return,
            Entry::Vacant(e) => e.insert(FlowL7::default()),
        };
        let data = s.payload();
        let (from_client, server_port) = sides(s);
        let transport = if s.key.proto == PROTO_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        };

        f.saw_first(from_client, data, transport, server_port);
        let protocol = f.detection.as_ref().map_or(Protocol::Tcp, |d| d.protocol);

        match s.kind {
            sample::REQUEST => {
                f.pending.clear();
                f.pending.extend_from_slice(data);
                f.pending_at = Some(s.ts_ns);
            }
            sample::RESPONSE => {
                if protocol == Protocol::Dns && f.dns.len() < MAX_DNS_ANSWERS {
                    let tcp = transport == Transport::Tcp;
                    for a in weft_l7::dns_answers(data, tcp) {
                        if f.dns.len() < MAX_DNS_ANSWERS {
                            f.dns.push(a);
                        }
                    }
                }
                let (request, start_ns) = match f.pending_at.take() {
                    Some(at) => (&f.pending[..], at),
                    None => (&[][..], s.ts_ns.saturating_sub(s.latency_ns)),
                };
                if f.session.as_ref().map(Session::protocol) != Some(protocol) {
                    f.session = Some(Session::new(protocol));
                }
                let calls = f.session.as_mut().map_or_else(Vec::new, |session| {
                    // The kernel samples the first bytes of a turn: never the whole of it.
                    session.turn(&Turn {
                        request,
                        request_complete: false,
                        response: data,
                        response_complete: false,
                        start_ns,
                        latency_ns: s.latency_ns,
                    })
                });
                for call in calls {
                    f.add(protocol, call);
                }
                f.latency
                    .add(latency::bucket_of(s.latency_ns), 1, s.latency_ns);
            }
            _ => {}
        }
    }

    /// Moves what is known of the flow `key` whose kernel state is `cur` into its record
    /// (request groups, latency histogram and DNS answers since the last record); forgets
    /// the flow when the record is its last. Only the samples of that incarnation of the
    /// 5-tuple (`cur.first_seen_ns`) are used. Returns the requests whose latency no
    /// payload sample told (see `Latencies::take`).
    pub fn fill(&mut self, key: &FlowKey, cur: &FlowStats, record: &mut FlowRecord) -> u64 {
        let id = (*key, cur.first_seen_ns);
        let Some(f) = self.flows.get_mut(&id) else {
            // No sample of this flow was read (all lost, or the table was full): only its
            // last record carries its latencies, from the kernel's count and sum.
            return Latencies::default().take(cur, record);
        };
        // The stream's last turn (the flow ended), or one answered a while ago: its latency
        // goes in this record.
        if let Some(stream) = f.stream.as_mut() {
            let mut turns = Vec::new();
            if record.ended {
                stream.finish(&mut turns);
            } else {
                let (client, server) = if cur.client_is_local == 1 {
                    (DIR_OUT, DIR_IN)
                } else {
                    (DIR_IN, DIR_OUT)
                };
                let kernel_bytes = [cur.payload_bytes[client], cur.payload_bytes[server]];
                stream.settle_if_quiet(self.now_ns, STREAM_QUIET_NS, kernel_bytes, &mut turns);
            }
            f.count_turns(turns);
        }
        let unsampled = f.latency.take(cur, record);
        // HTTP/2 streams answered since (and, at the flow's end, every open one).
        if let Some(session) = f.session.as_mut() {
            let protocol = session.protocol();
            for call in session.flush(record.ended) {
                f.add(protocol, call);
            }
        }
        if let Some(d) = &f.detection {
            record.protocol = d.protocol.as_str().to_owned();
            record.protocol_from_payload = d.confidence == Confidence::Payload;
            record.server_name = d
                .tls_sni
                .clone()
                .or_else(|| d.http_host.clone())
                .unwrap_or_default();
            record.tls_sni = d.tls_sni.clone().unwrap_or_default();
            record.tls_alpn = d.tls_alpn.clone();
        }
        record.request_groups = f
            .groups
            .drain(..)
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
        if record.ended
            && let Some(f) = self.flows.remove(&id)
        {
            self.streams -= usize::from(f.stream.as_ref().is_some_and(|s| s.is_whole()));
        }
        unsampled
    }

    /// Takes in one chunk of a flow copied whole and its bytes (`STREAM_CHUNKS`).
    pub fn observe_chunk(&mut self, c: &StreamChunk, data: &[u8]) {
        self.stream_counts.chunks += 1;
        let id = (c.key, c.flow_first_seen_ns);
        let full = self.flows.len() >= MAX_FLOWS;
        let f = match self.flows.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => return,
            Entry::Vacant(e) => e.insert(FlowL7::default()),
        };
        let from_client = c.from_client == 1;
        if c.offset == 0 {
            let sender_is_local = usize::from(c.dir) == DIR_OUT;
            let server_is_local = sender_is_local != from_client;
            let server_port = if server_is_local {
                c.key.local_port
            } else {
                c.key.remote_port
            };
            f.saw_first(from_client, data, Transport::Tcp, server_port);
        }
        let stream = match f.stream.as_mut() {
            Some(s) => s,
            None => {
                let st = match StreamTurns::start(c) {
                    Some(st) if self.streams < MAX_STREAMS => {
                        self.streams += 1;
                        st
                    }
                    _ => {
                        self.stream_counts.partial += 1;
                        StreamTurns::heads()
                    }
                };
                f.stream.insert(Box::new(st))
            }
        };
        let holes = stream.stats().holes;
        let mut turns = Vec::new();
        stream.push(c, data, &mut turns);
        self.stream_counts.holes += stream.stats().holes - holes;
        f.count_turns(turns);
    }

    /// The kernel's clock (CLOCK_MONOTONIC) now: when a quiet stream's turn is counted.
    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
    }

    pub fn stream_counts(&self) -> StreamCounts {
        self.stream_counts
    }

    /// Flows whose stream is followed now.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Forgets flows that will have no further record: `live` holds each flow still in the
    /// kernel map or waiting for its last record, with its `first_seen_ns`.
    pub fn retain_live<S: std::hash::BuildHasher>(&mut self, live: &HashSet<FlowId, S>) {
        let streams = &mut self.streams;
        self.flows.retain(|id, f| {
            let keep = live.contains(id);
            if !keep && f.stream.as_ref().is_some_and(|s| s.is_whole()) {
                *streams -= 1;
            }
            keep
        });
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::flow::{DIR_IN, FAMILY_IPV4, PAYLOAD_SAMPLE_BYTES, PROTO_TCP, chunk};

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

    /// The kernel's state of the flow of generation 7 (the samples' own).
    fn kernel(requests: u32, latency_sum_ns: u64) -> FlowStats {
        FlowStats {
            requests,
            latency_sum_ns,
            ..at(7)
        }
    }

    /// One HTTP request/response turn of the flow of generation `first_seen_ns`.
    fn exchange_of(t: &mut L7Table, k: FlowKey, first_seen_ns: u64, latency_ns: u64) {
        let mut req = sample(
            k,
            sample::REQUEST,
            DIR_OUT,
            b"GET / HTTP/1.1\r\n\r\n",
            0,
            false,
        );
        req.flow_first_seen_ns = first_seen_ns;
        t.observe(&req);
        let mut resp = sample(
            k,
            sample::RESPONSE,
            DIR_IN,
            b"HTTP/1.1 200 OK\r\n\r\n",
            latency_ns,
            false,
        );
        resp.flow_first_seen_ns = first_seen_ns;
        t.observe(&resp);
    }

    fn exchange(t: &mut L7Table, k: FlowKey, latency_ns: u64) {
        exchange_of(t, k, 7, latency_ns);
    }

    fn counts(r: &FlowRecord) -> Vec<(u64, u64)> {
        r.latency
            .iter()
            .map(|b| (b.upper_bound_ns, b.count))
            .collect()
    }

    fn requests(r: &FlowRecord) -> u64 {
        r.request_groups.iter().map(|g| g.count).sum()
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
        assert_eq!(requests(&r), 3, "the session counted the same requests");
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

    /// The double count of flow-cost's first version: a new connection on the same 5-tuple
    /// whose samples are read before the old connection's last record replaced the old
    /// flow's state, so that record found nothing reported and "filled in" every request of
    /// the old flow again (5 latencies for 3 requests here).
    #[test]
    fn a_reused_tuple_read_before_the_old_flows_last_record_counts_each_request_once() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        exchange(&mut t, k, 1_000_000);
        exchange(&mut t, k, 1_000_000);
        let mut first = record(false);
        assert_eq!(t.fill(&k, &kernel(2, 2_000_000), &mut first), 0);
        assert_eq!(first.latency.iter().map(|b| b.count).sum::<u64>(), 2);
        exchange(&mut t, k, 1_000_000);
        // The old connection has closed (its end not yet made a record); a new one on the same
        // tuple already made a request, and its samples are read first.
        exchange_of(&mut t, k, 99, 5_000_000);
        let mut last = record(true);
        assert_eq!(
            t.fill(&k, &kernel(3, 3_000_000), &mut last),
            0,
            "every request of the old flow was sampled"
        );
        let ms1 = latency::bucket_upper_ns(latency::bucket_of(1_000_000));
        assert_eq!(
            counts(&last),
            vec![(ms1, 1)],
            "only the third request is new"
        );
        assert_eq!(last.latency_sum_ns, 1_000_000);
        assert_eq!(requests(&first) + requests(&last), 3);
        // The new flow's own records carry its request, once.
        let new = FlowStats {
            requests: 1,
            latency_sum_ns: 5_000_000,
            ..at(99)
        };
        let mut r = record(true);
        assert_eq!(t.fill(&k, &new, &mut r), 0);
        let ms5 = latency::bucket_upper_ns(latency::bucket_of(5_000_000));
        assert_eq!(counts(&r), vec![(ms5, 1)]);
        assert_eq!((requests(&r), r.protocol.as_str()), (1, "http"));
        assert_eq!(t.len(), 0);
    }

    /// A flow whose last record is still to come (its end event settling) keeps its state
    /// while a new flow holds the tuple in the kernel map; stale incarnations go.
    #[test]
    fn retain_live_keeps_each_incarnation_by_its_first_seen_time() {
        let k = key(40000, 80, PROTO_TCP);
        let mut t = L7Table::default();
        exchange_of(&mut t, k, 7, 1_000_000);
        exchange_of(&mut t, k, 99, 1_000_000);
        exchange_of(&mut t, k, 5, 1_000_000);
        t.retain_live(&[(k, 7), (k, 99)].into_iter().collect::<HashSet<_>>());
        assert_eq!(t.len(), 2);
        let mut r = record(true);
        assert_eq!(t.fill(&k, &kernel(1, 1_000_000), &mut r), 0);
        assert_eq!(requests(&r), 1);
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
    fn reused_tuple_keeps_each_incarnation_apart() {
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
        assert_eq!(r.protocol, "http", "the old flow keeps what it said");
        let mut r = record(false);
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

    /// psql's SSLRequest, startup and password exchange are not requests: only the query.
    #[test]
    fn postgres_handshake_is_not_counted() {
        let k = key(40000, 5432, PROTO_TCP);
        let mut t = L7Table::default();
        let mut startup = vec![0, 0, 0, 0x17, 0, 3, 0, 0];
        startup.extend_from_slice(b"user\0postgres\0\0");
        let mut pw = vec![b'p', 0, 0, 0, 0x10];
        pw.extend_from_slice(b"SCRAM-SHA-256\0");
        let mut q = vec![b'Q', 0, 0, 0, 13];
        q.extend_from_slice(b"select 1\0");
        let sasl = [b'R', 0, 0, 0, 0x17, 0, 0, 0, 10];
        let turns: [(&[u8], &[u8]); 4] = [
            (&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], b"N"),
            (&startup, &sasl),
            (&pw, &[b'R', 0, 0, 0, 8, 0, 0, 0, 0]),
            (&q, b"E\0\0\0\x10C42P01\0\0"),
        ];
        for (i, (req, resp)) in turns.iter().enumerate() {
            t.observe(&sample(k, sample::REQUEST, DIR_OUT, req, 0, i == 0));
            t.observe(&sample(k, sample::RESPONSE, DIR_IN, resp, 5, i == 0));
        }
        let mut r = record(true);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.protocol, "postgres");
        assert_eq!(r.request_groups.len(), 1, "{:?}", r.request_groups);
        let g = &r.request_groups[0];
        assert_eq!((g.method.as_str(), g.count, g.errors), ("SELECT", 1, 1));
    }

    /// Two HTTP/2 streams in one sampled turn count as two requests, each with its status.
    #[test]
    fn http2_streams_in_one_turn_count_separately() {
        let k = key(40000, 8080, PROTO_TCP);
        let frame = h2_frame;
        let mut c = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        c.extend(frame(4, 0, 0, &[]));
        c.extend(frame(1, 5, 1, &[0x82, 0x86, 0x84]));
        c.extend(frame(1, 5, 3, &[0x82, 0x86, 0x85]));
        let mut sv = frame(4, 0, 0, &[]);
        sv.extend(frame(1, 5, 1, &[0x88]));
        sv.extend(frame(1, 5, 3, &[0x8e]));
        let mut t = L7Table::default();
        t.observe(&sample(k, sample::REQUEST, DIR_OUT, &c, 0, true));
        t.observe(&sample(k, sample::RESPONSE, DIR_IN, &sv, 5, true));
        let mut r = record(true);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.protocol, "http2");
        assert_eq!(
            groups(&r),
            [("GET", "/", 200, 1, 0), ("GET", "/index.html", 500, 1, 1)]
        );
    }

    /// The SNI and ALPN of a ClientHello go into the flow's record, in their own fields.
    #[test]
    fn tls_sni_and_alpn_are_kept_per_flow() {
        let k = key(40000, 8443, PROTO_TCP);
        let mut ext = Vec::new();
        let name = b"api.weft.test";
        ext.extend([
            0,
            0,
            0,
            (name.len() + 5) as u8,
            0,
            (name.len() + 3) as u8,
            0,
            0,
        ]);
        ext.push(name.len() as u8);
        ext.extend_from_slice(name);
        ext.extend([0, 16, 0, 14, 0, 12, 2, b'h', b'2', 8]);
        ext.extend_from_slice(b"http/1.1");
        let mut body = vec![3, 3];
        body.extend([0u8; 32]);
        body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![1, 0];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut hello = vec![22, 3, 1];
        hello.extend((hs.len() as u16).to_be_bytes());
        hello.extend(hs);
        assert!(hello.len() <= 128, "within the kernel's sample");
        let mut t = L7Table::default();
        t.observe(&sample(k, sample::REQUEST, DIR_OUT, &hello, 0, true));
        let mut r = record(false);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(r.protocol, "tls");
        assert_eq!(r.tls_sni, "api.weft.test");
        assert_eq!(r.tls_alpn, ["h2", "http/1.1"]);
        assert_eq!(r.server_name, "api.weft.test");
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

    fn h2_frame(kind: u8, flags: u8, stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, payload.len() as u8, kind, flags, 0, 0, 0, stream];
        v.extend_from_slice(payload);
        v
    }

    /// A chunk of flow `k` (generation 7, the local workload is the client), its bytes
    /// following at `seq`.
    fn chunk_of(k: FlowKey, from_client: bool, seq: u32, ts_ns: u64, data: &[u8]) -> StreamChunk {
        StreamChunk {
            key: k,
            from_client: from_client as u8,
            flags: 0,
            dir: if from_client { DIR_OUT } else { DIR_IN } as u8,
            _pad: 0,
            flow_first_seen_ns: 7,
            ts_ns,
            seq,
            payload_len: data.len() as u32,
            offset: 0,
            len: data.len() as u32,
        }
    }

    fn groups(r: &FlowRecord) -> Vec<(&str, &str, u32, u64, u64)> {
        r.request_groups
            .iter()
            .map(|g| {
                (
                    g.method.as_str(),
                    g.path.as_str(),
                    g.status,
                    g.count,
                    g.errors,
                )
            })
            .collect()
    }

    /// An HTTP/2 turn whose first packet is a PING: the sample sees no HEADERS, the whole
    /// stream sees both streams of the turn.
    #[test]
    fn a_flow_copied_whole_counts_the_streams_its_samples_cannot_see() {
        let preface = {
            let mut v = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            v.extend(h2_frame(4, 0, 0, &[]));
            v
        };
        let ping = h2_frame(6, 0, 0, &[0; 8]);
        let get_a = h2_frame(1, 5, 1, &[0x82, 0x86, 0x84]);
        let get_b = h2_frame(1, 5, 3, &[0x82, 0x86, 0x85]);
        let settings = h2_frame(4, 0, 0, &[]);
        let mut answers = h2_frame(1, 5, 1, &[0x88]);
        answers.extend(h2_frame(1, 5, 3, &[0x8e]));

        // Sampled: what the kernel posts of a flow not copied whole. Copied whole: chunks
        // only (the kernel posts no samples of such a flow).
        let run = |whole: bool| {
            let k = key(40000, 8080, PROTO_TCP);
            let mut t = L7Table::default();
            if !whole {
                let mut sample_of = |kind, dir, data: &[u8], first| {
                    t.observe(&sample(k, kind, dir, data, 5, first));
                };
                sample_of(sample::REQUEST, DIR_OUT, &preface, true);
                sample_of(sample::RESPONSE, DIR_IN, &settings, true);
                sample_of(sample::REQUEST, DIR_OUT, &ping, false);
                sample_of(sample::RESPONSE, DIR_IN, &answers, false);
            } else {
                let (mut c, mut sv) = (1000u32, 5000u32);
                let mut client = |t: &mut L7Table, ts, data: &[u8], start: bool| {
                    let mut ch = chunk_of(k, true, c, ts, data);
                    ch.flags = if start { chunk::START } else { 0 };
                    t.observe_chunk(&ch, data);
                    c += data.len() as u32;
                };
                client(&mut t, 10, &preface, true);
                let mut ch = chunk_of(k, false, sv, 20, &settings);
                ch.flags = chunk::START;
                t.observe_chunk(&ch, &settings);
                sv += settings.len() as u32;
                client(&mut t, 30, &ping, false);
                client(&mut t, 31, &get_a, false);
                client(&mut t, 32, &get_b, false);
                t.observe_chunk(&chunk_of(k, false, sv, 40, &answers), &answers);
                assert_eq!(t.streams(), 1);
            }
            let mut r = record(true);
            t.fill(&k, &at(7), &mut r);
            assert_eq!(t.streams(), 0, "the ended flow is forgotten");
            r
        };
        let sampled = run(false);
        assert_eq!(requests(&sampled), 0, "{:?}", groups(&sampled));
        let r = run(true);
        assert_eq!(r.protocol, "http2");
        assert_eq!(
            groups(&r),
            [("GET", "/", 200, 1, 0), ("GET", "/index.html", 500, 1, 1)]
        );
        // The latencies come from the turns: 10 ns each (chunk times 10 -> 20, 30 -> 40).
        assert_eq!(r.latency.iter().map(|b| b.count).sum::<u64>(), 2);
        assert_eq!(r.latency_sum_ns, 20);
    }

    /// A stream whose start this agent did not see (it began before it ran) is counted from
    /// the first bytes of its turns, as a sampled flow is.
    #[test]
    fn a_stream_not_seen_from_its_start_is_counted_from_the_heads_of_its_turns() {
        let k = key(40000, 8080, PROTO_TCP);
        let mut t = L7Table::default();
        let mut get = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        get.extend_from_slice(&[b'x'; 500]); // longer than a head
        t.observe_chunk(&chunk_of(k, true, 77, 1, &get), &get);
        assert_eq!(t.stream_counts().partial, 1);
        assert_eq!(t.streams(), 0, "not followed whole");
        let ok = b"HTTP/1.1 200 OK\r\n\r\n";
        t.observe_chunk(&chunk_of(k, false, 9, 6, ok), ok);
        let mut r = record(true);
        t.fill(&k, &at(7), &mut r);
        assert_eq!(groups(&r), [("GET", "/", 200, 1, 0)]);
        assert_eq!(r.latency_sum_ns, 5);
    }

    /// A long-lived connection's answered turn is counted once it has been quiet and every
    /// payload byte the kernel counted was read, not only at the next request.
    #[test]
    fn a_quiet_answered_turn_is_counted_before_the_next_request() {
        // The local workload is the server here: the client's bytes come in.
        let k = key(8080, 40000, PROTO_TCP);
        let mut t = L7Table::default();
        let mut c = |from_client: bool, seq: u32, ts: u64, data: &[u8], start: bool| {
            let mut ch = chunk_of(k, from_client, seq, ts, data);
            ch.dir = if from_client { DIR_IN } else { DIR_OUT } as u8;
            ch.flags = if start { chunk::START } else { 0 };
            t.observe_chunk(&ch, data);
        };
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend(h2_frame(1, 5, 1, &[0x82, 0x86, 0x84]));
        let answer = h2_frame(1, 5, 1, &[0x88]);
        c(true, 1, 1_000, &preface, true);
        c(false, 1, 2_000, &answer, true);
        let kernel = |client: usize, server: usize| FlowStats {
            client_is_local: 0,
            payload_bytes: [server as u64, client as u64], // [DIR_OUT, DIR_IN]
            ..at(7)
        };
        t.tick(2_000 + STREAM_QUIET_NS);
        let mut r = record(false);
        t.fill(&k, &kernel(preface.len(), answer.len() + 1), &mut r);
        assert_eq!(requests(&r), 0, "the kernel counted a byte not read yet");
        let mut r = record(false);
        t.fill(&k, &kernel(preface.len(), answer.len()), &mut r);
        assert_eq!(groups(&r), [("GET", "/", 200, 1, 0)]);
        assert_eq!(r.latency_sum_ns, 1_000);
    }
}
