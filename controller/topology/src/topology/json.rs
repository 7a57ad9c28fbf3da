//! `GET /topology` written straight from the topology's entries: the JSON of
//! [`Topology::snapshot_with`] serialized by serde, byte for byte (tested), without making
//! a [`DependencyView`](super::DependencyView) per dependency.
//!
//! Each dependency's object is written into one buffer while its entry is read (no
//! statistics copied, no per-dependency allocation); its sort key (client, server,
//! transport, port) goes into a second buffer; then the objects are copied out in key
//! order. Services are few beside dependencies and go through their serde views.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::classify::{ServiceClassifier, is_http};
use super::snapshot::{ServiceView, SnapshotStats, Totals};
use super::stats::{DependencyStats, LatencySummary};
use super::view::{self, TotalsSum};
use super::{DependencyKey, Topology, Window};
use crate::model::Transport;
use crate::registry::WorkloadDirectory;
use crate::time::{rfc3339, rfc3339_bytes};

/// Where one dependency's object and key lie in the buffers.
struct Placed {
    /// The first 16 bytes of client and server, zero-padded, big-endian: comparing them
    /// orders as comparing the names does, except on a tie (then the names decide).
    prefix: (u128, u128),
    object: Object,
    /// Client then server, raw (not escaped), in the key buffer.
    key: usize,
    client_len: usize,
    server_len: usize,
    transport: Transport,
    port: u16,
    http: bool,
}

/// A dependency's JSON object: written for this answer (a range of the objects buffer), or
/// the one kept with its statistics (all-time view), shared, not copied.
enum Object {
    Written(usize, usize),
    Kept(std::sync::Arc<[u8]>),
}

impl Object {
    fn bytes<'a>(&'a self, written: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Written(a, b) => &written[*a..*b],
            Self::Kept(k) => k,
        }
    }
}

/// The first 16 bytes of `name`, zero-padded, as a big-endian number.
fn prefix(name: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = name.len().min(16);
    b[..n].copy_from_slice(&name[..n]);
    u128::from_be_bytes(b)
}

impl Placed {
    fn client<'a>(&self, keys: &'a [u8]) -> &'a [u8] {
        &keys[self.key..self.key + self.client_len]
    }

    fn server<'a>(&self, keys: &'a [u8]) -> &'a [u8] {
        let start = self.key + self.client_len;
        &keys[start..start + self.server_len]
    }
}

/// A JSON value through serde_json, as the snapshot's derived `Serialize` writes it.
fn value(out: &mut Vec<u8>, v: &(impl Serialize + ?Sized)) {
    // Writing into a vector cannot fail, and these values (strings, numbers, plain
    // structs) always serialize.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// A JSON string as serde_json writes it: copied as it is when nothing in it needs an
/// escape (the usual case), else through serde_json.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        value(out, s);
    }
}

/// An unsigned integer as serde_json writes it (decimal digits).
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `"name":` (names here never need escapes).
fn key(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn text_field(out: &mut Vec<u8>, name: &str, v: &str) {
    key(out, name);
    string(out, v);
    out.push(b',');
}

fn number_field(out: &mut Vec<u8>, name: &str, n: u64) {
    key(out, name);
    number(out, n);
    out.push(b',');
}

fn timestamp(out: &mut Vec<u8>, name: &str, unix_ns: Option<u64>, last: bool) {
    key(out, name);
    match unix_ns {
        Some(ns) => {
            out.push(b'"');
            out.extend_from_slice(&rfc3339_bytes(ns));
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    if !last {
        out.push(b',');
    }
}

fn summary(out: &mut Vec<u8>, name: &str, s: &LatencySummary) {
    key(out, name);
    out.extend_from_slice(b"{\"count\":");
    number(out, s.count);
    for (name, v) in [
        ("avg", s.avg),
        ("p50", s.p50),
        ("p95", s.p95),
        ("p99", s.p99),
        ("max", s.max),
    ] {
        out.push(b',');
        key(out, name);
        value(out, &v);
    }
    out.extend_from_slice(b"},");
}

fn group(out: &mut Vec<u8>, method: &str, path: &str, status: u32, g: &super::groups::GroupStats) {
    out.push(b'{');
    text_field(out, "method", method);
    text_field(out, "path", path);
    number_field(out, "status", u64::from(status));
    number_field(out, "count", g.count);
    number_field(out, "errors", g.errors);
    key(out, "avg_latency_ms");
    value(out, &g.avg_latency_ms());
    out.push(b'}');
}

/// One dependency as the JSON object serde writes for its
/// [`DependencyView`](super::DependencyView).
pub(super) fn write_dependency(out: &mut Vec<u8>, key: &DependencyKey, stats: &DependencyStats) {
    out.push(b'{');
    text_field(out, "source", &key.client);
    text_field(out, "target", &key.server);
    text_field(out, "transport", key.transport.as_str());
    number_field(out, "port", u64::from(key.port));
    text_field(out, "protocol", stats.protocol.name_or(key.protocol()));
    for (name, n) in [
        ("flows", stats.flows),
        ("requests", stats.requests),
        ("errors", stats.errors),
        ("resets", stats.resets),
        ("packets_sent", stats.packets_sent),
        ("packets_received", stats.packets_received),
        ("bytes_sent", stats.bytes_sent),
        ("bytes_received", stats.bytes_received),
        ("payload_bytes_sent", stats.payload_bytes_sent),
        ("payload_bytes_received", stats.payload_bytes_received),
    ] {
        number_field(out, name, n);
    }
    summary(out, "latency_ms", &stats.latency_summary());
    summary(out, "handshake_rtt_ms", &stats.handshake_rtt_summary());
    out.extend_from_slice(match (stats.ipv4, stats.ipv6) {
        (true, true) => b"\"address_families\":[\"ipv4\",\"ipv6\"],".as_slice(),
        (true, false) => b"\"address_families\":[\"ipv4\"],",
        (false, true) => b"\"address_families\":[\"ipv6\"],",
        (false, false) => b"\"address_families\":[],",
    });
    out.extend_from_slice(b"\"request_groups\":[");
    let mut first = true;
    for ((method, path, status), g) in stats.request_groups.iter() {
        if !first {
            out.push(b',');
        }
        first = false;
        group(out, method, path, *status, g);
    }
    let other = stats.request_groups.other();
    if other.count > 0 {
        if !first {
            out.push(b',');
        }
        group(out, "other", "", 0, &other);
    }
    out.extend_from_slice(b"],");
    timestamp(out, "first_seen", stats.first_seen_unix_ns, false);
    timestamp(out, "last_seen", stats.last_seen_unix_ns, true);
    out.push(b'}');
}

/// The counts of service `name` (raw bytes of a `str`), made on first use.
fn counts_of<'k, 's>(
    shapes: &'s mut HashMap<&'k str, view::Counts>,
    name: &'k [u8],
) -> &'s mut view::Counts {
    shapes
        .entry(std::str::from_utf8(name).unwrap_or_default())
        .or_default()
}

impl Topology {
    /// The JSON of [`Self::snapshot_with`] (the body of `GET /topology`), the same bytes
    /// serde writes for that snapshot, written without building it.
    pub fn snapshot_json(
        &self,
        directory: &impl WorkloadDirectory,
        classifier: &ServiceClassifier,
        window: &Window,
        generated_at_unix_ns: u64,
        agents_connected: u64,
    ) -> Vec<u8> {
        let count = self.dependency_count();
        // The all-time view copies the objects kept with the statistics.
        let mut objects: Vec<u8> = Vec::with_capacity(if window.is_all() {
            0
        } else {
            count.saturating_mul(720)
        });
        let mut keys: Vec<u8> = Vec::with_capacity(count.saturating_mul(40));
        let mut placed: Vec<Placed> = Vec::with_capacity(count);
        let mut totals = TotalsSum::default();
        // Paths each server serves (the classifier reads them).
        let mut paths: HashMap<String, BTreeSet<String>> = HashMap::new();
        self.each_in_window_cached(window, |k, stats, cached| {
            totals.add(stats);
            let object = match cached {
                Some(json) => Object::Kept(json.clone()),
                None => {
                    let start = objects.len();
                    write_dependency(&mut objects, k, stats);
                    Object::Written(start, objects.len())
                }
            };
            let key = keys.len();
            keys.extend_from_slice(k.client.as_bytes());
            keys.extend_from_slice(k.server.as_bytes());
            placed.push(Placed {
                prefix: (prefix(k.client.as_bytes()), prefix(k.server.as_bytes())),
                object,
                key,
                client_len: k.client.len(),
                server_len: k.server.len(),
                transport: k.transport,
                port: k.port,
                http: is_http(stats.protocol.name_or(k.protocol())),
            });
            for ((_, path, _), _) in stats.request_groups.iter() {
                if path.is_empty() {
                    continue;
                }
                let served = match paths.get_mut(k.server.as_str()) {
                    Some(served) => served,
                    None => paths.entry(k.server.clone()).or_default(),
                };
                if !served.contains(path.as_str()) {
                    served.insert(path.clone());
                }
            }
        });
        placed.sort_unstable_by(|a, b| {
            // Whole names only where the prefixes tie (the client's, then the server's).
            a.prefix.0.cmp(&b.prefix.0).then_with(|| {
                a.client(&keys).cmp(b.client(&keys)).then_with(|| {
                    a.prefix.1.cmp(&b.prefix.1).then_with(|| {
                        (a.server(&keys), a.transport, a.port).cmp(&(
                            b.server(&keys),
                            b.transport,
                            b.port,
                        ))
                    })
                })
            })
        });

        // The traffic shape of each service, from the sorted keys: the dependencies of one
        // (client, server) pair are adjacent, and each pair is one upstream of the client
        // (an HTTP one if any of its dependencies speaks HTTP) and one client of the server.
        let mut shapes: HashMap<&str, view::Counts> = HashMap::new();
        let mut i = 0;
        while i < placed.len() {
            let (client, server) = (placed[i].client(&keys), placed[i].server(&keys));
            let mut http = false;
            let mut j = i;
            while j < placed.len()
                && placed[j].client(&keys) == client
                && placed[j].server(&keys) == server
            {
                http |= placed[j].http;
                j += 1;
            }
            let c = counts_of(&mut shapes, client);
            c.upstreams += 1;
            c.http_upstreams += usize::from(http);
            counts_of(&mut shapes, server).clients += 1;
            i = j;
        }

        let mut services: Vec<ServiceView> = Vec::with_capacity(if window.is_all() {
            self.service_count()
        } else {
            shapes.len()
        });
        for entry in &self.services {
            let name = entry.key().as_str();
            let counts = shapes.get(name);
            if window.is_all() || counts.is_some() {
                services.push(view::service_view_of(
                    name,
                    entry.value(),
                    counts.copied().unwrap_or_default(),
                    paths.get(name),
                    directory,
                    classifier,
                ));
            }
        }
        services.sort_unstable_by(|a, b| a.name.cmp(&b.name));

        let body_len: usize = placed
            .iter()
            .map(|p| p.object.bytes(&objects).len() + 1)
            .sum();
        let mut out = Vec::with_capacity(body_len + services.len() * 300 + 1_024);
        out.extend_from_slice(b"{\"generated_at\":");
        value(&mut out, &rfc3339(generated_at_unix_ns));
        out.extend_from_slice(b",\"services\":");
        value(&mut out, &services);
        drop(services);
        out.extend_from_slice(b",\"dependencies\":[");
        for (i, p) in placed.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p.object.bytes(&objects));
        }
        drop(objects);
        let totals: Totals = totals.finish();
        out.extend_from_slice(b"],\"totals\":");
        value(&mut out, &totals);
        out.extend_from_slice(b",\"stats\":");
        value(
            &mut out,
            &SnapshotStats {
                records_ingested: self
                    .records_ingested()
                    .saturating_add(self.observations_ingested()),
                agents_connected,
            },
        );
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Directory, observation};
    use super::super::view::dependency_view;
    use super::*;
    use crate::model::{Direction, FlowObservation, LatencyBucket, RequestGroup};

    const MINUTE: u64 = 60_000_000_000;
    /// Inside the default limits' timestamp window (none) and in distinct minute buckets.
    const T0: u64 = 1_700_000_000_000_000_000;

    /// A varied topology: registered and unknown peers, IPv4 and IPv6, UDP, several ports
    /// between one pair, HTTP and not, request groups with awkward strings and more groups
    /// than kept, latencies and handshakes, records in three minutes.
    fn varied() -> (Topology, Directory) {
        let topology = Topology::new();
        let directory = Directory::lab();
        let mut n = 0u64;
        let mut ingest = |mut o: FlowObservation, minute: u64| {
            n += 1;
            o.first_seen_unix_ns = T0 + minute * MINUTE;
            o.last_seen_unix_ns = T0 + minute * MINUTE + n * 1_000_123;
            let _ = topology.ingest(&o, &directory);
        };
        for (i, remote) in ["10.0.0.2", "192.0.2.7", "2001:db8::9", "198.51.100.3"]
            .into_iter()
            .enumerate()
        {
            for port in [5432u16, 8080, 443] {
                let mut o = observation(
                    "web",
                    Direction::Outbound,
                    ("10.0.0.1", 40_000),
                    (remote, port),
                );
                if remote.contains(':') {
                    o.local_ip = "fd00::1".parse().expect("test address");
                }
                o.packets_out = 3 + i as u64;
                o.bytes_out = 1_000 * (1 + port as u64 % 7);
                o.bytes_in = 77;
                o.requests = 2 + i as u64;
                o.latency_sum_ns = 3_123_457 * o.requests;
                o.latency = vec![
                    LatencyBucket {
                        upper_bound_ns: 1_000_000,
                        count: 1,
                    },
                    LatencyBucket {
                        upper_bound_ns: 8_000_000,
                        count: o.requests - 1,
                    },
                ];
                o.handshake_rtt_ns = (port != 443).then_some(91_234 + i as u64);
                o.resets = u32::from(port == 443);
                if port == 8080 {
                    o.l7.protocol = Some("http".into());
                    o.l7.protocol_from_payload = true;
                    o.l7.request_groups = vec![
                        RequestGroup {
                            method: "GET".into(),
                            path: "/a \"quoted\" \\ path/ünï/{id}".into(),
                            status: 200,
                            count: 2,
                            errors: 0,
                            latency_sum_ns: 2_500_001,
                        },
                        RequestGroup {
                            method: "POST".into(),
                            path: "/tab\there".into(),
                            status: 503,
                            count: 1,
                            errors: 1,
                            latency_sum_ns: 9_999_999,
                        },
                    ];
                }
                if port == 5432 {
                    o.transport = if i % 2 == 0 {
                        Transport::Udp
                    } else {
                        Transport::Tcp
                    };
                }
                ingest(o, i as u64 % 3);
            }
        }
        // More groups than one dependency keeps: the rest shows as `other`.
        for g in 0..70u32 {
            let mut o = observation(
                "web",
                Direction::Outbound,
                ("10.0.0.1", 40_001),
                ("203.0.113.5", 80),
            );
            o.requests = 1;
            o.l7.request_groups = vec![RequestGroup {
                method: "GET".into(),
                path: format!("/p{g}"),
                status: 200,
                count: 1,
                errors: 0,
                latency_sum_ns: 1_000_000 + u64::from(g),
            }];
            ingest(o, 2);
        }
        // A client known only by address calling db (inbound at db).
        let inbound = observation(
            "db",
            Direction::Inbound,
            ("10.0.0.2", 5432),
            ("192.0.2.99", 51_000),
        );
        ingest(inbound, 1);
        (topology, directory)
    }

    fn both(topology: &Topology, directory: &Directory, window: &Window) -> (String, String) {
        let classifier = ServiceClassifier::default();
        let at = T0 + 10 * MINUTE + 123_456_789;
        let built = topology.snapshot_with(directory, &classifier, window, at, 3);
        let serde = serde_json::to_string(&built).expect("serialisable");
        let streamed = topology.snapshot_json(directory, &classifier, window, at, 3);
        (serde, String::from_utf8(streamed).expect("UTF-8"))
    }

    #[test]
    fn the_streamed_json_is_serdes_json_of_the_snapshot() {
        let (topology, directory) = varied();
        assert!(topology.dependency_count() > 10, "a varied topology");
        let (serde, streamed) = both(&topology, &directory, &Window::ALL);
        assert!(
            serde.contains("\"other\""),
            "groups beyond the bound show as other"
        );
        assert!(serde.contains("\"ipv6\""));
        assert_eq!(streamed, serde);
    }

    #[test]
    fn the_kept_json_of_a_dependency_follows_every_record() {
        let (topology, directory) = varied();
        // Rendered and kept by the first request.
        let (serde, streamed) = both(&topology, &directory, &Window::ALL);
        assert_eq!(streamed, serde);
        // One more record of one dependency: its object must change, the others stay.
        let mut o = observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 40_001),
            ("203.0.113.5", 80),
        );
        o.requests = 7;
        o.first_seen_unix_ns = T0 + 2 * MINUTE;
        o.last_seen_unix_ns = T0 + 2 * MINUTE + 5;
        let _ = topology.ingest(&o, &directory);
        let (serde_after, streamed_after) = both(&topology, &directory, &Window::ALL);
        assert_ne!(serde_after, serde, "the record changed the topology");
        assert_eq!(streamed_after, serde_after);
    }

    #[test]
    fn the_streamed_json_of_a_window_is_serdes_json_of_its_snapshot() {
        let (topology, directory) = varied();
        for (since, until) in [(0u64, 0u64), (1, 1), (0, 1), (2, 2), (5, 6)] {
            let window = Window {
                since: Some(T0 + since * MINUTE),
                until: Some(T0 + until * MINUTE + MINUTE - 1),
            };
            let (serde, streamed) = both(&topology, &directory, &window);
            assert_eq!(streamed, serde, "minutes {since}..={until}");
        }
    }

    #[test]
    fn an_empty_topology_streams_as_serde_writes_it() {
        let topology = Topology::new();
        let directory = Directory::lab();
        let (serde, streamed) = both(&topology, &directory, &Window::ALL);
        assert_eq!(streamed, serde);
    }

    #[test]
    fn one_dependency_object_is_serdes() {
        let (topology, _) = varied();
        for (key, stats) in topology.dependencies_in(&Window::ALL) {
            let mut out = Vec::new();
            write_dependency(&mut out, &key, &stats);
            let serde =
                serde_json::to_string(&dependency_view(&key, &stats)).expect("serialisable");
            assert_eq!(String::from_utf8(out).expect("UTF-8"), serde);
        }
    }
}

#[cfg(test)]
mod scalar_tests {
    use super::*;

    proptest::proptest! {
        /// Prefixes that differ order as the names do (the sort relies on it).
        #[test]
        fn prefixes_order_as_names_do(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
        ) {
            let (pa, pb) = (prefix(&a), prefix(&b));
            if pa != pb {
                proptest::prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            }
        }
    }

    #[test]
    fn prefixes_of_long_shared_names_tie() {
        assert_eq!(
            prefix(b"client-0000000001-a"),
            prefix(b"client-0000000001-b")
        );
        assert!(prefix(b"a") < prefix(b"b"));
        assert!(prefix(b"a") < prefix(b"a\x01"));
    }

    #[test]
    fn numbers_and_strings_are_written_as_serde_json_writes_them() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            12_345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).expect("a number"), "{n}");
        }
        for s in [
            "",
            "plain",
            "ünï ✓",
            "a\"b",
            "back\\slash",
            "tab\t",
            "\u{1}\u{1f}\u{7f}",
            "/{id}",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).expect("a string"), "{s:?}");
        }
    }
}
