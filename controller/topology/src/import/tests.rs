//! Import tests on real-shaped inputs: captures built frame by frame, JSON lines and Envoy
//! logs with malformed lines among the good ones.

use super::*;
use crate::observation::NetworkEndpoint;

// ---------------------------------------------------------------------------------------
// Capture builders.

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const WEB: [u8; 4] = [10, 0, 0, 2];
const REDIS: [u8; 4] = [10, 0, 0, 3];
const CLOSED: [u8; 4] = [10, 0, 0, 4];
const RESOLVER: [u8; 4] = [10, 0, 0, 53];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const RST_ACK: u8 = 0x14;

/// A classic little-endian microsecond pcap.
struct Capture {
    bytes: Vec<u8>,
    packets: u64,
}

impl Capture {
    fn new(linktype: u32) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&262_144u32.to_le_bytes());
        bytes.extend_from_slice(&linktype.to_le_bytes());
        Self { bytes, packets: 0 }
    }

    /// Appends a frame at `t_us` microseconds after 1_700_000_000 s; returns its number.
    fn frame(&mut self, t_us: u64, frame: &[u8]) -> u64 {
        let ts = 1_700_000_000_000_000 + t_us;
        self.bytes
            .extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(frame);
        self.packets += 1;
        self.packets
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp(
        &mut self,
        t_us: u64,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> u64 {
        self.frame(
            t_us,
            &ethernet(&ipv4(src, dst, 6, &tcp(sport, dport, flags, payload))),
        )
    }

    fn udp(
        &mut self,
        t_us: u64,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        payload: &[u8],
    ) -> u64 {
        self.frame(
            t_us,
            &ethernet(&ipv4(src, dst, 17, &udp(sport, dport, payload))),
        )
    }
}

const T0_NS: u64 = 1_700_000_000_000_000_000;

fn ethernet(l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(l3);
    // Minimum Ethernet frame: padding that is not payload.
    while f.len() < 60 {
        f.push(0);
    }
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(l4);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    s
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

fn dns_question(name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns_query(name: &str) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend(dns_question(name));
    m
}

fn dns_response(name: &str, address: [u8; 4]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    m.extend(dns_question(name));
    m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    m.extend_from_slice(&address);
    m
}

/// The lab in miniature: DNS names the web server, two keep-alive HTTP requests (200 then
/// 503), Redis PING and a failing command, a refused connection, and a truncated frame.
fn lab_capture() -> (Capture, u64) {
    let mut c = Capture::new(1);
    c.udp(0, CLIENT, 33_333, RESOLVER, 53, &dns_query("web.lab"));
    c.udp(
        400,
        RESOLVER,
        53,
        CLIENT,
        33_333,
        &dns_response("web.lab", WEB),
    );

    c.tcp(1_000, CLIENT, 40_000, WEB, 80, SYN, b"");
    c.tcp(1_100, WEB, 80, CLIENT, 40_000, SYN | ACK, b"");
    c.tcp(1_200, CLIENT, 40_000, WEB, 80, ACK, b"");
    c.tcp(
        2_000,
        CLIENT,
        40_000,
        WEB,
        80,
        PSH_ACK,
        b"GET /users/42 HTTP/1.1\r\nHost: web.lab\r\n\r\n",
    );
    c.tcp(2_100, WEB, 80, CLIENT, 40_000, ACK, b"");
    c.tcp(
        4_000,
        WEB,
        80,
        CLIENT,
        40_000,
        PSH_ACK,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    );
    c.tcp(4_100, WEB, 80, CLIENT, 40_000, PSH_ACK, b"0123456789");
    c.tcp(
        6_000,
        CLIENT,
        40_000,
        WEB,
        80,
        PSH_ACK,
        b"GET /health HTTP/1.1\r\nHost: web.lab\r\n\r\n",
    );
    c.tcp(
        6_500,
        WEB,
        80,
        CLIENT,
        40_000,
        PSH_ACK,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    );
    c.tcp(7_000, CLIENT, 40_000, WEB, 80, FIN_ACK, b"");
    c.tcp(7_100, WEB, 80, CLIENT, 40_000, FIN_ACK, b"");
    c.tcp(7_200, CLIENT, 40_000, WEB, 80, ACK, b"");

    c.tcp(10_000, CLIENT, 40_001, REDIS, 6379, SYN, b"");
    c.tcp(10_050, REDIS, 6379, CLIENT, 40_001, SYN | ACK, b"");
    c.tcp(10_100, CLIENT, 40_001, REDIS, 6379, ACK, b"");
    c.tcp(
        11_000,
        CLIENT,
        40_001,
        REDIS,
        6379,
        PSH_ACK,
        b"*1\r\n$4\r\nPING\r\n",
    );
    c.tcp(11_300, REDIS, 6379, CLIENT, 40_001, PSH_ACK, b"+PONG\r\n");
    c.tcp(
        12_000,
        CLIENT,
        40_001,
        REDIS,
        6379,
        PSH_ACK,
        b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n",
    );
    c.tcp(
        12_250,
        REDIS,
        6379,
        CLIENT,
        40_001,
        PSH_ACK,
        b"-ERR value is not an integer or out of range\r\n",
    );
    c.tcp(13_000, CLIENT, 40_001, REDIS, 6379, FIN_ACK, b"");
    c.tcp(13_100, REDIS, 6379, CLIENT, 40_001, FIN_ACK, b"");

    c.tcp(20_000, CLIENT, 40_002, CLOSED, 9999, SYN, b"");
    c.tcp(20_050, CLOSED, 9999, CLIENT, 40_002, RST_ACK, b"");

    // An IPv4 header cut after 10 bytes, in a record that claims to be complete.
    let mut cut = ethernet(&ipv4(CLIENT, WEB, 6, &tcp(40_000, 80, ACK, b"")));
    cut.truncate(14 + 10);
    let truncated = c.frame(21_000, &cut);
    (c, truncated)
}

#[test]
fn pcap_lab_capture_imports_turn_by_turn_like_the_kernel_program() {
    let (capture, truncated) = lab_capture();
    let report = import_bytes(Format::Pcap, &capture.bytes, &ImportOptions::default());

    assert_eq!(report.units_read, capture.packets);
    assert_eq!(
        report.errors,
        vec![ImportError {
            location: format!("packet {truncated}"),
            message: "truncated IPv4 header (10 bytes)".into(),
        }]
    );
    assert_eq!(
        report.errors[0].to_string(),
        format!("packet {truncated}: truncated IPv4 header (10 bytes)")
    );
    // DNS 1 + HTTP 2 + Redis 2 requests, and the refused connection as a flow.
    assert_eq!(report.observations.len(), 6, "{:#?}", report.observations);
    assert_eq!(report.flow_only, vec![5]);
    assert_eq!(report.requests().count(), 5);

    let o = &report.observations;
    // DNS: query then answer, 0.4 ms.
    assert_eq!(o[0].protocol, "dns");
    assert_eq!(o[0].source, NetworkEndpoint::new("10.0.0.1", 33_333));
    assert_eq!(o[0].destination, NetworkEndpoint::new("10.0.0.53", 53));
    assert_eq!(o[0].method.as_deref(), Some("A"));
    assert_eq!(o[0].path.as_deref(), Some("web.lab"));
    assert!((o[0].latency_ms - 0.4).abs() < 1e-9);
    assert!(!o[0].is_error());

    // HTTP, named from the DNS answer; keep-alive gives two requests.
    for http in &o[1..3] {
        assert_eq!(http.protocol, "http");
        assert_eq!(http.source, NetworkEndpoint::new("10.0.0.1", 40_000));
        assert_eq!(http.destination, NetworkEndpoint::new("web.lab", 80));
        assert_eq!(http.method.as_deref(), Some("GET"));
    }
    assert_eq!(o[1].timestamp_unix_ns, T0_NS + 2_000_000);
    assert_eq!(o[1].path.as_deref(), Some("/users/42"));
    assert_eq!(o[1].status_code, Some(200));
    assert!((o[1].latency_ms - 2.0).abs() < 1e-9, "{}", o[1].latency_ms);
    assert_eq!(o[1].bytes_sent, 41);
    assert_eq!(o[1].bytes_received, 39 + 10);
    assert!(!o[1].is_error());
    assert_eq!(o[2].path.as_deref(), Some("/health"));
    assert_eq!(o[2].status_code, Some(503));
    assert!((o[2].latency_ms - 0.5).abs() < 1e-9);
    assert!(o[2].is_error());

    // Redis: PING answered, INCR refused with -ERR.
    assert_eq!(o[3].protocol, "redis");
    assert_eq!(o[3].destination, NetworkEndpoint::new("10.0.0.3", 6379));
    assert_eq!(o[3].method.as_deref(), Some("PING"));
    assert!((o[3].latency_ms - 0.3).abs() < 1e-9);
    assert!(!o[3].is_error());
    assert_eq!(o[4].method.as_deref(), Some("INCR"));
    assert!((o[4].latency_ms - 0.25).abs() < 1e-9);
    assert!(o[4].error && o[4].status_code.is_none());

    // The refused connection: no turn, a reset, so a flow-level error.
    assert_eq!(o[5].destination, NetworkEndpoint::new("10.0.0.4", 9999));
    assert_eq!(
        (o[5].latency_ms, o[5].bytes_sent, o[5].method.as_deref()),
        (0.0, 0, None)
    );
    assert!(o[5].error);
}

#[test]
fn pcap_connection_already_running_takes_the_lower_port_as_server() {
    let mut c = Capture::new(1);
    // No handshake in the capture; the server's reply comes first.
    c.tcp(
        0,
        WEB,
        8081,
        CLIENT,
        51_000,
        PSH_ACK,
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    c.tcp(
        1_000,
        CLIENT,
        51_000,
        WEB,
        8081,
        PSH_ACK,
        b"GET /a HTTP/1.1\r\n\r\n",
    );
    c.tcp(
        1_700,
        WEB,
        8081,
        CLIENT,
        51_000,
        PSH_ACK,
        b"HTTP/1.1 404 Not Found\r\n\r\n",
    );
    // A pure ACK of a connection never seen does not make a flow.
    c.tcp(2_000, CLIENT, 51_001, WEB, 8081, ACK, b"");
    let report = pcap::import(&c.bytes);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.observations.len(), 1);
    let o = &report.observations[0];
    assert_eq!(o.destination, NetworkEndpoint::new("10.0.0.2", 8081));
    assert_eq!(
        o.protocol, "http",
        "recognised on a non-standard port by its payload"
    );
    assert_eq!((o.status_code, o.path.as_deref()), (Some(404), Some("/a")));
    assert!((o.latency_ms - 0.7).abs() < 1e-9);
}

#[test]
fn pcap_variants_big_endian_nanoseconds_raw_and_cooked() {
    let request = ipv4(
        CLIENT,
        WEB,
        6,
        &tcp(40_000, 80, PSH_ACK, b"GET / HTTP/1.1\r\n\r\n"),
    );
    let response = ipv4(
        WEB,
        CLIENT,
        6,
        &tcp(80, 40_000, PSH_ACK, b"HTTP/1.1 204 No Content\r\n\r\n"),
    );

    // Big-endian, nanosecond, raw IP.
    let mut be = Vec::new();
    be.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
    be.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]);
    be.extend_from_slice(&101u32.to_be_bytes());
    for (ns, frame) in [(5u32, &request), (1_234_567u32, &response)] {
        be.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        be.extend_from_slice(&ns.to_be_bytes());
        be.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        be.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        be.extend_from_slice(frame);
    }
    let report = pcap::import(&be);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.observations.len(), 1);
    assert_eq!(report.observations[0].timestamp_unix_ns, T0_NS + 5);
    assert!((report.observations[0].latency_ms - 1.234_562).abs() < 1e-9);
    assert_eq!(report.observations[0].status_code, Some(204));

    // Linux cooked v1 (tcpdump -i any) and v2.
    for (linktype, header_len, protocol_at) in [(113u32, 16usize, 14usize), (276, 20, 0)] {
        let mut c = Capture::new(linktype);
        for (t, l3) in [(0, &request), (900, &response)] {
            let mut frame = vec![0u8; header_len];
            frame[protocol_at..protocol_at + 2].copy_from_slice(&0x0800u16.to_be_bytes());
            frame.extend_from_slice(l3);
            c.frame(t, &frame);
        }
        let report = pcap::import(&c.bytes);
        assert!(
            report.errors.is_empty(),
            "linktype {linktype}: {:?}",
            report.errors
        );
        assert_eq!(report.observations.len(), 1, "linktype {linktype}");
        assert!((report.observations[0].latency_ms - 0.9).abs() < 1e-9);
    }
}

#[test]
fn pcapng_enhanced_packet_blocks_with_nanosecond_resolution() {
    fn block(kind: u32, body: &[u8]) -> Vec<u8> {
        let len = (12 + body.len().div_ceil(4) * 4) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(body);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b.extend_from_slice(&len.to_le_bytes());
        b
    }
    let mut file = Vec::new();
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    file.extend(block(0x0a0d_0d0a, &shb));
    let mut idb = vec![1, 0, 0, 0, 0, 0, 4, 0];
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]); // if_tsresol = 10^-9
    file.extend(block(1, &idb));
    let frames = [
        (
            T0_NS,
            ethernet(&ipv4(
                CLIENT,
                REDIS,
                6,
                &tcp(40_001, 6379, PSH_ACK, b"*1\r\n$4\r\nPING\r\n"),
            )),
        ),
        (
            T0_NS + 150_000,
            ethernet(&ipv4(
                REDIS,
                CLIENT,
                6,
                &tcp(6379, 40_001, PSH_ACK, b"+PONG\r\n"),
            )),
        ),
    ];
    for (ts, frame) in &frames {
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*ts as u32).to_le_bytes());
        epb.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        epb.extend_from_slice(frame);
        file.extend(block(6, &epb));
    }
    // A packet block naming an interface that was never described.
    let mut bad = 3u32.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0; 16]);
    file.extend(block(6, &bad));

    let report = pcap::import(&file);
    assert_eq!(report.units_read, 3);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].location, "packet 3");
    assert_eq!(report.observations.len(), 1);
    let o = &report.observations[0];
    assert_eq!(
        (o.protocol.as_str(), o.method.as_deref()),
        ("redis", Some("PING"))
    );
    assert_eq!(o.timestamp_unix_ns, T0_NS);
    assert!((o.latency_ms - 0.15).abs() < 1e-9);
}

#[test]
fn pcap_garbage_is_reported_never_panics() {
    assert_eq!(pcap::import(b"").errors[0].location, "file header");
    assert_eq!(
        pcap::import(b"hello, world, not a capture").errors[0].location,
        "file header"
    );
    let (capture, _) = lab_capture();
    // Every prefix of a valid capture: errors at most, never a panic.
    for cut in (0..capture.bytes.len()).step_by(7) {
        let report = pcap::import(&capture.bytes[..cut]);
        assert!(report.observations.len() <= 6);
    }
    // A record claiming more than the file holds stops the import with an error.
    let mut c = Capture::new(1);
    c.tcp(0, CLIENT, 1, WEB, 2, SYN, b"");
    let mut bytes = c.bytes.clone();
    bytes.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0, 1, 2,
    ]);
    let report = pcap::import(&bytes);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].location, "packet 2");
    // Unsupported link type.
    let report = pcap::import(&Capture::new(105).bytes);
    assert!(report.errors[0].message.contains("link type 105"));
}

// ---------------------------------------------------------------------------------------
// JSON lines.

#[test]
fn jsonl_accepts_the_spec_shape_the_flat_shape_and_names_bad_lines_and_fields() {
    let input = br#"{"timestamp": "2026-11-23T16:03:17.5Z", "source": {"host": "web-app", "port": 8080}, "destination": {"host": "api-gateway", "port": 443}, "protocol": "Protocol.HTTPS", "method": "POST", "path": "/api/orders", "bytes_sent": 2048, "bytes_received": 4096, "latency_ms": 125.0, "status_code": 201}
{"source_host": "user-service", "source_port": 8080, "dest_host": "postgres.db", "dest_port": 5432, "protocol": "POSTGRES", "bytes_sent": 512, "bytes_received": 8192, "latency_ms": 15.0, "timestamp": 1795449797}

{"source": {"host": "a", "port": 1}, "destination": {"host": "b", "port": 2}, "protocol": "gopher", "timestamp": 0, "bytes_sent": 0, "bytes_received": 0, "latency_ms": 1}
{"source": {"host": "a", "port": 1}, "destination": {"host": "b"}, "protocol": "http", "timestamp": 0, "bytes_sent": 0, "bytes_received": 0, "latency_ms": 1}
{"source": {"host": "a", "port": 1}, "destination": {"host": "b", "port": 2}, "protocol": "http", "timestamp": 0, "bytes_sent": "lots", "bytes_received": 0, "latency_ms": 1}
{"source": {"host": "a", "port": 1}, "destination": {"host": "b", "port": 2}, "protocol": "redis", "bytes_sent": 1, "bytes_received": 0, "latency_ms": 1}
not json at all
{"source_host": "user-service", "source_port": "8080", "dest_host": "redis.cache", "dest_port": 6379, "protocol": "redis", "latency_ms": 3.0, "timestamp": "2026-11-23T16:03:18Z", "error": true}
"#;
    let report = import_bytes(Format::Jsonl, input, &ImportOptions::default());
    assert_eq!(report.units_read, 8);
    assert_eq!(report.observations.len(), 3);
    let locations: Vec<_> = report.errors.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(
        locations,
        ["line 4", "line 5", "line 6", "line 7", "line 8"]
    );
    assert!(
        report.errors[0].message.contains("\"protocol\"")
            && report.errors[0].message.contains("gopher")
    );
    assert_eq!(
        report.errors[1].message,
        "field \"destination.port\": missing"
    );
    assert!(
        report.errors[2]
            .message
            .starts_with("field \"bytes_sent\": expected an integer")
    );
    assert_eq!(report.errors[3].message, "missing field \"timestamp\"");
    assert!(report.errors[4].message.starts_with("not valid JSON"));

    let o = &report.observations;
    assert_eq!(o[0].protocol, "postgres");
    assert_eq!(o[0].timestamp_unix_ns, 1_795_449_797_000_000_000);
    assert_eq!(o[0].destination, NetworkEndpoint::new("postgres.db", 5432));
    assert_eq!(o[1].protocol, "https");
    assert_eq!(o[1].timestamp_unix_ns, 1_795_449_797_500_000_000);
    assert_eq!(
        (
            o[1].method.as_deref(),
            o[1].path.as_deref(),
            o[1].status_code
        ),
        (Some("POST"), Some("/api/orders"), Some(201))
    );
    assert_eq!(
        (o[1].bytes_sent, o[1].bytes_received, o[1].latency_ms),
        (2048, 4096, 125.0)
    );
    assert_eq!(o[2].source, NetworkEndpoint::new("user-service", 8080));
    assert!(o[2].error && o[2].bytes_sent == 0);
}

#[test]
fn jsonl_reads_back_weft_serialised_observations() {
    let original = TrafficObservation {
        timestamp_unix_ns: 42,
        source: NetworkEndpoint::new("fd00::1", 5000),
        destination: NetworkEndpoint::new("db", 5432),
        protocol: "postgres".into(),
        bytes_sent: 1,
        bytes_received: 2,
        latency_ms: 3.5,
        status_code: None,
        method: Some("QUERY".into()),
        path: None,
        error: true,
    };
    let line = serde_json::to_string(&original).unwrap_or_default();
    let report = jsonl::import(line.as_bytes());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.observations, vec![original]);
}

#[test]
fn protocol_names_are_case_insensitive_with_the_spec_enum_spelling() {
    assert_eq!(normalize_protocol("HTTPS"), Some("https"));
    assert_eq!(normalize_protocol("Protocol.HTTPS"), Some("https"));
    assert_eq!(normalize_protocol("protocol.postgres"), Some("postgres"));
    assert_eq!(normalize_protocol("PostgreSQL"), Some("postgres"));
    assert_eq!(normalize_protocol("HTTP/1.1"), Some("http"));
    assert_eq!(normalize_protocol("gopher"), None);
    assert_eq!(normalize_protocol(""), None);
}

// ---------------------------------------------------------------------------------------
// Envoy.

#[test]
fn envoy_default_text_format_and_json_lines() {
    let input = br#"[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 "10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" "tcp://10.0.2.1:80"
[2016-04-15T20:17:01.000Z] "GET /users/7 HTTP/1.1" 503 UH 0 19 1 - "-" "curl/8.0" "id-2" "users.internal:8080" "-"
[2016-04-15T20:17:02.000Z] "GET / HTTP/1.1" abc - 0 0 1 - "-" "curl" "id" "x" "-"
{"start_time":"2016-04-15T20:17:03.000Z","method":"GET","path":"/orders","protocol":"HTTP/1.1","response_code":200,"response_flags":"-","bytes_received":10,"bytes_sent":2000,"duration":12,"upstream_host":"10.0.3.4:9000","upstream_cluster":"orders","downstream_remote_address":"10.0.0.9:41000","authority":"orders.svc"}
{"method":"GET","path":"/no-time"}
[2016-04-15T20:17:04.000Z] "GET / HTTP/1.1" 200 - 0 0 1 - "-" "unterminated
"#;
    let report = import_bytes(Format::Envoy, input, &ImportOptions::default());
    assert_eq!(report.units_read, 6);
    let locations: Vec<_> = report.errors.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(locations, ["line 3", "line 5", "line 6"]);
    assert!(report.errors[0].message.contains("RESPONSE_CODE"));
    assert!(report.errors[1].message.contains("start_time"));
    assert_eq!(report.observations.len(), 3);

    let o = &report.observations;
    assert_eq!(o[0].timestamp_unix_ns, 1_460_751_420_310_000_000);
    assert_eq!(o[0].source, NetworkEndpoint::new("10.0.35.28", 0));
    assert_eq!(o[0].destination, NetworkEndpoint::new("10.0.2.1", 80));
    assert_eq!(o[0].protocol, "http2");
    assert_eq!(
        (o[0].bytes_sent, o[0].bytes_received, o[0].latency_ms),
        (154, 0, 226.0)
    );
    assert_eq!(
        (o[0].method.as_deref(), o[0].status_code),
        (Some("POST"), Some(204))
    );
    assert!(!o[0].is_error());

    assert_eq!(
        o[1].source,
        NetworkEndpoint::new(envoy::UNKNOWN_DOWNSTREAM, 0)
    );
    assert_eq!(
        o[1].destination,
        NetworkEndpoint::new("users.internal", 8080)
    );
    assert!(o[1].error && o[1].status_code == Some(503));

    assert_eq!(o[2].source, NetworkEndpoint::new("10.0.0.9", 41_000));
    assert_eq!(o[2].destination, NetworkEndpoint::new("orders", 9000));
    assert_eq!(
        (o[2].bytes_sent, o[2].bytes_received, o[2].latency_ms),
        (10, 2000, 12.0)
    );

    let named = import_bytes(
        Format::Envoy,
        input,
        &ImportOptions {
            source: Some("frontend".into()),
        },
    );
    assert!(
        named
            .observations
            .iter()
            .all(|o| o.source.host == "frontend")
    );
}

#[test]
fn pcap_with_random_corruption_never_panics() {
    let (capture, _) = lab_capture();
    // xorshift: deterministic, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2_000 {
        let mut bytes = capture.bytes.clone();
        for _ in 0..(next() % 8 + 1) {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        let report = pcap::import(&bytes);
        // Every record takes at least its 16-byte header.
        assert!(report.units_read as usize <= bytes.len() / 16 + 1);
        for o in &report.observations {
            assert!(o.latency_ms >= 0.0 && o.latency_ms.is_finite());
        }
    }
}

/// Found by fuzzing (import_envoy): a control character in a log line's path reached the
/// observation (and from there the ASCII map on an operator's terminal).
#[test]
fn envoy_control_characters_in_labels_become_replacement_characters() {
    let input = b"[2016-04-15T20:17:01.000Z] \"GET \x02users/7\x1b[2J HTTP/1.1\" 503 UH 0 19 1 - \"-\" \"curl/8.0\" \"id-2\" \"users\x07.internal:8080\" \"-\"\n";
    let report = import_bytes(Format::Envoy, input, &ImportOptions::default());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let o = &report.observations[0];
    assert_eq!(o.path.as_deref(), Some("\u{fffd}users/7\u{fffd}[2J"));
    assert_eq!(
        o.destination,
        NetworkEndpoint::new("users\u{fffd}.internal", 8080)
    );
}

/// The same for JSON lines, whose strings may escape any control character.
#[test]
fn jsonl_control_characters_in_labels_become_replacement_characters() {
    let input = br#"{"source_host": "a\u0000b", "source_port": 40000, "dest_host": "db", "dest_port": 5432, "protocol": "postgres", "method": "QUERY\n", "path": "\u001b]0;x\u0007"}"#;
    let report = import_bytes(Format::Jsonl, input, &ImportOptions::default());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let o = &report.observations[0];
    assert_eq!(o.source.host, "a\u{fffd}b");
    assert_eq!(o.method.as_deref(), Some("QUERY\u{fffd}"));
    assert_eq!(o.path.as_deref(), Some("\u{fffd}]0;x\u{fffd}"));
}

/// Found by fuzzing (import_envoy): an upstream host of `:04` (no host) gave an observation
/// with an empty destination host, which the topology refuses; the line is an error now.
/// Empty X-Forwarded-For entries are skipped.
#[test]
fn envoy_addresses_without_a_host_are_errors() {
    let line = |upstream: &str, xff: &str| {
        format!(
            "[2016-04-15T20:17:00.310Z] \"POST /l HTTP/2\" 204 - 154 0 226 100 \"{xff}\" \"nsq2http\" \"id\" \"locations\" \"{upstream}\"\n"
        )
    };
    let input = [
        line(":04", "10.0.35.28"),
        line("tcp://[]:80", "-"),
        line("10.0.2.1:80", ", 10.0.0.9"),
    ]
    .concat();
    let report = import_bytes(Format::Envoy, input.as_bytes(), &ImportOptions::default());
    let errors: Vec<(&str, &str)> = report
        .errors
        .iter()
        .map(|e| (e.location.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            ("line 1", "field upstream_host: \":04\" has no host"),
            ("line 2", "field upstream_host: \"tcp://[]:80\" has no host"),
        ]
    );
    assert_eq!(report.observations.len(), 1);
    assert_eq!(
        report.observations[0].source,
        NetworkEndpoint::new("10.0.0.9", 0)
    );
    assert_eq!(
        report.observations[0].destination,
        NetworkEndpoint::new("10.0.2.1", 80)
    );
}

/// Found by reading the fuzz targets' invariant (an imported observation is one the
/// topology takes): a host over 253 bytes or a method/path over 256 was imported and then
/// refused by the topology. The importers apply the topology's own checks, and the line is
/// an error naming its field; the other lines are imported.
#[test]
fn jsonl_lines_the_topology_would_refuse_are_errors_naming_the_field() {
    let long_host = "h".repeat(crate::topology::MAX_NAME_BYTES + 1);
    let long_path = format!("/{}", "p".repeat(crate::topology::MAX_LABEL_BYTES));
    // 251 bytes and two control characters: 257 bytes once they are U+FFFD.
    let grows = format!(
        "{}\u{7}\u{7}",
        "g".repeat(crate::topology::MAX_NAME_BYTES - 2)
    );
    let flat = |source: &str, dest: &str, path: &str| {
        format!(
            r#"{{"source_host": "{source}", "source_port": 1, "dest_host": "{dest}", "dest_port": 80, "protocol": "http", "path": "{path}"}}"#
        )
    };
    let nested = format!(
        r#"{{"timestamp_unix_ns": 5, "source": {{"host": "a", "port": 1}}, "destination": {{"host": "{long_host}", "port": 2}}, "protocol": "tcp", "bytes_sent": 0, "bytes_received": 0, "latency_ms": 0}}"#
    );
    let input = [
        flat("web", "api", "/ok"),
        flat(&long_host, "api", "/"),
        flat("web", &long_host, "/"),
        flat("web", "api", &long_path),
        nested,
        flat("web", &grows.replace('\u{7}', "\\u0007"), "/"),
    ]
    .join("\n");
    let report = import_bytes(Format::Jsonl, input.as_bytes(), &ImportOptions::default());
    let errors: Vec<(&str, &str)> = report
        .errors
        .iter()
        .map(|e| (e.location.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                "line 2",
                "field \"source_host\": 254 bytes is longer than the 253 accepted"
            ),
            (
                "line 3",
                "field \"dest_host\": 254 bytes is longer than the 253 accepted"
            ),
            (
                "line 4",
                "field \"path\": 257 bytes is longer than the 256 accepted"
            ),
            (
                "line 5",
                "field \"destination.host\": 254 bytes is longer than the 253 accepted"
            ),
            (
                "line 6",
                "field \"dest_host\": 257 bytes is longer than the 253 accepted"
            ),
        ]
    );
    assert_eq!(report.observations.len(), 1);
    assert_eq!(report.units_read, 6);
    let mapper = crate::mapper::TopologyMapper::new();
    assert!(mapper.observe_traffic(&report.observations[0]).is_ok());
}

/// Invisible characters (a right-to-left override, a zero-width space) are replaced like
/// control characters: two names that print alike are not two services.
#[test]
fn jsonl_invisible_characters_become_replacement_characters() {
    let input = br#"{"source_host": "web\u202e", "source_port": 1, "dest_host": "a\u200bpi", "dest_port": 80, "protocol": "http"}"#;
    let report = import_bytes(Format::Jsonl, input, &ImportOptions::default());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let o = &report.observations[0];
    assert_eq!(o.source.host, "web\u{fffd}");
    assert_eq!(o.destination.host, "a\u{fffd}pi");
}

/// The same for Envoy logs, with the field named as the log names it; a source name given
/// by the caller rescues a line whose X-Forwarded-For address was too long.
#[test]
fn envoy_lines_the_topology_would_refuse_are_errors_naming_the_field() {
    let long = "x".repeat(crate::topology::MAX_NAME_BYTES + 1);
    let line = |path: &str, xff: &str, upstream: &str| {
        format!(
            "[2016-04-15T20:17:00.310Z] \"GET {path} HTTP/1.1\" 200 - 0 10 3 2 \"{xff}\" \"curl\" \"id\" \"{upstream}\" \"10.0.2.1:80\"\n"
        )
    };
    let json = format!(
        r#"{{"start_time": "2016-04-15T20:17:00.310Z", "method": "GET", "path": "/", "protocol": "HTTP/1.1", "response_code": 200, "upstream_host": "10.0.2.1:80", "upstream_cluster": "{long}", "downstream_remote_address": "10.0.0.1:5000"}}"#
    );
    let long_path = format!("/{}", "p".repeat(crate::topology::MAX_LABEL_BYTES));
    let input = [
        line("/ok", "10.0.0.9", "users"),
        line(&long_path, "10.0.0.9", "users"),
        line("/", &long, "users"),
        json + "\n",
    ]
    .concat();
    let report = import_bytes(Format::Envoy, input.as_bytes(), &ImportOptions::default());
    let errors: Vec<(&str, &str)> = report
        .errors
        .iter()
        .map(|e| (e.location.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                "line 2",
                "field path: 257 bytes is longer than the 256 accepted"
            ),
            (
                "line 3",
                "field X-Forwarded-For: 254 bytes is longer than the 253 accepted"
            ),
            (
                "line 4",
                "field upstream_cluster: 254 bytes is longer than the 253 accepted"
            ),
        ]
    );
    assert_eq!(report.observations.len(), 1);
    let named = ImportOptions {
        source: Some("edge".into()),
    };
    let rescued = import_bytes(Format::Envoy, input.as_bytes(), &named);
    let lines: Vec<&str> = rescued.errors.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(lines, ["line 2", "line 4"]);
    let too_long_name = ImportOptions { source: Some(long) };
    let refused = import_bytes(Format::Envoy, input.as_bytes(), &too_long_name);
    assert!(
        refused.errors.iter().any(|e| e.location == "line 1"
            && e.message
                .starts_with("field source (the caller's name): 254 bytes")),
        "{:?}",
        refused.errors
    );
}

/// A DNS answer whose name the topology would refuse (escaped bytes: 4 labels of 60 `!`
/// are 963 characters) does not name the address: the HTTP server stays `10.0.0.2`.
#[test]
fn pcap_dns_names_too_long_for_the_topology_do_not_name_addresses() {
    let long = vec!["!".repeat(60); 4].join(".");
    let mut c = Capture::new(1);
    c.udp(0, CLIENT, 33_333, RESOLVER, 53, &dns_query(&long));
    c.udp(400, RESOLVER, 53, CLIENT, 33_333, &dns_response(&long, WEB));
    c.udp(500, CLIENT, 33_334, RESOLVER, 53, &dns_query("web.lab"));
    c.udp(
        600,
        RESOLVER,
        53,
        CLIENT,
        33_334,
        &dns_response("web.lab", REDIS),
    );
    c.tcp(
        1_000,
        CLIENT,
        40_000,
        WEB,
        80,
        PSH_ACK,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    c.tcp(
        2_000,
        WEB,
        80,
        CLIENT,
        40_000,
        PSH_ACK,
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    c.tcp(
        3_000,
        CLIENT,
        40_001,
        REDIS,
        6379,
        PSH_ACK,
        b"*1\r\n$4\r\nPING\r\n",
    );
    c.tcp(4_000, REDIS, 6379, CLIENT, 40_001, PSH_ACK, b"+PONG\r\n");
    let report = pcap::import(&c.bytes);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let http = report
        .observations
        .iter()
        .find(|o| o.protocol == "http")
        .expect("the HTTP request");
    assert_eq!(http.destination.host, "10.0.0.2");
    let redis = report
        .observations
        .iter()
        .find(|o| o.protocol == "redis")
        .expect("the Redis command");
    assert_eq!(redis.destination.host, "web.lab");
    let mapper = crate::mapper::TopologyMapper::new();
    for o in &report.observations {
        mapper.observe_traffic(o).expect("the topology takes it");
    }
}

/// Captures of real clients and servers (l7/fixtures/capture.sh says what each client did):
/// requests are counted as the application made them, not per request/response turn.
mod real_clients {
    use super::super::pcap;
    use crate::observation::TrafficObservation;

    fn fixture(name: &str) -> Vec<TrafficObservation> {
        let path = format!(
            "{}/../../l7/fixtures/{name}.pcap",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let report = pcap::import(&bytes);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        report.requests().cloned().collect()
    }

    fn methods(obs: &[TrafficObservation]) -> Vec<String> {
        obs.iter()
            .map(|o| o.method.clone().unwrap_or_default())
            .collect()
    }

    fn errors(obs: &[TrafficObservation]) -> usize {
        obs.iter().filter(|o| o.error).count()
    }

    #[test]
    fn psql_handshake_and_scram_are_not_requests() {
        // psql -f with three statements, the second on a missing table.
        let obs = fixture("pg");
        assert!(obs.iter().all(|o| o.protocol == "postgres"), "{obs:?}");
        assert_eq!(methods(&obs), ["QUERY", "QUERY", "QUERY"], "{obs:?}");
        assert_eq!(errors(&obs), 1, "{obs:?}");
        assert!(obs[1].error, "the second query failed: {obs:?}");
    }

    #[test]
    fn mariadb_handshake_and_auth_are_not_requests() {
        // mariadb -e "select 1; select * from mysql.nope; select 2;"; COM_QUIT has no answer.
        let obs = fixture("mysql");
        assert!(obs.iter().all(|o| o.protocol == "mysql"), "{obs:?}");
        assert_eq!(methods(&obs), ["QUERY", "QUERY", "QUERY"], "{obs:?}");
        assert_eq!(errors(&obs), 1, "{obs:?}");
    }

    #[test]
    fn amqp_counts_work_methods_and_one_error_per_channel_close() {
        // pika: queue_declare, 3 publishes, 2 gets, a passive declare of a missing queue
        // (Channel.Close 404); connection and channel setup and close are not requests.
        let obs = fixture("amqp");
        assert!(obs.iter().all(|o| o.protocol == "amqp"), "{obs:?}");
        assert_eq!(
            methods(&obs),
            [
                "Queue.Declare",
                "Basic.Publish",
                "Basic.Publish",
                "Basic.Publish",
                "Basic.Get",
                "Basic.Get",
                "Queue.Declare"
            ],
            "{obs:?}"
        );
        assert_eq!(errors(&obs), 1, "{obs:?}");
        assert!(obs[6].error, "{obs:?}");
        let total: u64 = obs.iter().map(|o| o.bytes_sent).sum();
        assert!(total > 0);
    }

    #[test]
    fn grpc_counts_streams_and_grpc_status_from_trailers() {
        // grpcio: Say, Say, Fail (UNKNOWN, trailers-only) on one channel.
        let obs = fixture("grpc");
        assert!(obs.iter().all(|o| o.protocol == "grpc"), "{obs:?}");
        let paths: Vec<_> = obs
            .iter()
            .map(|o| o.path.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            paths,
            ["/demo.Echo/Say", "/demo.Echo/Say", "/demo.Echo/Fail"],
            "{obs:?}"
        );
        assert!(obs.iter().all(|o| o.status_code == Some(200)), "{obs:?}");
        assert_eq!(errors(&obs), 1, "{obs:?}");
        assert!(obs[2].error, "{obs:?}");
    }

    #[test]
    fn h2_streams_interleaved_in_one_turn_count_separately() {
        // nghttp -n: preface, SETTINGS, PRIORITY frames and three HEADERS in one packet,
        // answered after a SETTINGS turn (the server is gRPC: grpc-status 2 on each).
        let obs = fixture("h2");
        let paths: Vec<_> = obs
            .iter()
            .map(|o| o.path.clone().unwrap_or_default())
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c"], "{obs:?}");
        assert_eq!(methods(&obs), ["GET", "GET", "GET"], "{obs:?}");
        assert!(obs.iter().all(|o| o.status_code == Some(200)), "{obs:?}");
        assert_eq!(errors(&obs), 3, "grpc-status 2 on every stream: {obs:?}");
    }

    #[test]
    fn websocket_upgrade_is_one_request_then_messages() {
        // websockets: upgrade, 3 text messages (echoed), a ping, a normal close.
        let obs = fixture("ws");
        assert!(obs.iter().all(|o| o.protocol == "websocket"), "{obs:?}");
        assert_eq!(
            methods(&obs),
            ["GET", "TEXT", "TEXT", "TEXT", "PING", "CLOSE"],
            "{obs:?}"
        );
        assert_eq!(obs[0].status_code, Some(101), "{obs:?}");
        assert!(
            obs[1..].iter().all(|o| o.status_code.is_none()),
            "a close 1000 is not a status: {obs:?}"
        );
        assert_eq!(errors(&obs), 0, "{obs:?}");
    }
}
