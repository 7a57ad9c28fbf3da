//! Hand-written wire samples (from the protocol specifications) for every detector and
//! parser, including non-standard ports and truncated copies.

use std::net::{IpAddr, Ipv4Addr};

use weft_l7::{
    Confidence, Protocol, Request, Response, Transport, detect, dns_answers, parse_request,
    parse_response, path_pattern,
};

/// The kernel hands over at most this many bytes per direction / turn.
const CAP: usize = 128;

fn cap(b: &[u8]) -> &[u8] {
    &b[..b.len().min(CAP)]
}

fn tcp(port: u16, client: &[u8], server: &[u8]) -> weft_l7::Detection {
    detect(Transport::Tcp, port, cap(client), cap(server))
}

fn req(method: &str, path: Option<&str>, operation: Option<&str>) -> Request {
    Request {
        method: method.to_string(),
        path: path.map(str::to_string),
        operation: operation.map(str::to_string),
    }
}

/// PostgreSQL typed message: type byte, int32 length (including itself), body.
fn pg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// MySQL packet: 3-byte little-endian length, sequence id, payload.
fn my(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    v.push(seq);
    v.extend_from_slice(payload);
    v
}

// ---------------------------------------------------------------------------------------
// TLS

/// TLS 1.3 ClientHello with SNI "api.example.com" (145 bytes; the capture keeps 128).
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x8c, // record: handshake, legacy version 3.1, length 140
    0x01, 0x00, 0x00, 0x88, // handshake: ClientHello, length 136
    0x03, 0x03, // legacy_version TLS 1.2
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e,
    0x2f, // random
    0x00, // legacy_session_id: empty
    0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13,
    0x03, // cipher suites AES128-GCM, AES256-GCM, CHACHA20
    0x01, 0x00, // compression: null
    0x00, 0x59, // extensions length 89
    0x00, 0x00, 0x00, 0x14, 0x00, 0x12, 0x00, 0x00, 0x0f, // server_name: host_name, 15 bytes
    b'a', b'p', b'i', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm', 0x00,
    0x2b, 0x00, 0x03, 0x02, 0x03, 0x04, // supported_versions: TLS 1.3
    0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d, // supported_groups: x25519
    0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x08,
    0x04, // signature_algorithms: rsa_pss_rsae_sha256
    0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, // key_share: x25519, 32 bytes
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f,
    0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f,
];

#[test]
fn tls_client_hello_with_sni_on_443_and_8443() {
    assert_eq!(CLIENT_HELLO.len(), 145);
    for port in [443, 8443, 12345] {
        let d = tcp(port, CLIENT_HELLO, &[]);
        assert_eq!(d.protocol, Protocol::Tls, "port {port}");
        assert_eq!(d.confidence, Confidence::Payload);
        assert_eq!(d.tls_sni.as_deref(), Some("api.example.com"));
        assert_eq!(d.http_host, None);
    }
    let r = parse_request(Protocol::Tls, cap(CLIENT_HELLO)).unwrap();
    assert_eq!(r, req("CLIENT_HELLO", Some("api.example.com"), None));
}

#[test]
fn tls_truncated_before_or_inside_sni_is_tls_without_name() {
    // Cut inside the host name (the name ends at byte 80): no partial name is invented.
    for n in [10, 40, 60, 70, 79] {
        let d = detect(Transport::Tcp, 8443, &CLIENT_HELLO[..n], &[]);
        assert_eq!(d.protocol, Protocol::Tls, "cut at {n}");
        assert_eq!(d.tls_sni, None, "cut at {n}");
    }
    assert_eq!(
        detect(Transport::Tcp, 8443, &CLIENT_HELLO[..80], &[])
            .tls_sni
            .as_deref(),
        Some("api.example.com")
    );
}

#[test]
fn tls_alert_and_server_hello() {
    // Fatal handshake_failure alert (40).
    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
    let r = parse_response(Protocol::Tls, &alert).unwrap();
    assert_eq!(r.status, Some(40));
    assert!(r.error);
    // A flow whose client bytes were missed: the ServerHello still says TLS.
    let server_hello = [
        0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03,
    ];
    let d = tcp(9000, &[], &server_hello);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Tls, Confidence::Payload)
    );
}

// ---------------------------------------------------------------------------------------
// HTTP/1 and WebSocket

#[test]
fn http1_request_and_host_on_nonstandard_port() {
    let c = b"GET /api/users/42?verbose=1 HTTP/1.1\r\nHost: Shop.Internal:9999\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let d = tcp(9999, c, b"HTTP/1.1 200 OK\r\n");
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Http1, Confidence::Payload)
    );
    assert_eq!(d.http_host.as_deref(), Some("shop.internal:9999"));
    let r = parse_request(Protocol::Http1, c).unwrap();
    assert_eq!(r, req("GET", Some("/api/users/42?verbose=1"), None));
    assert_eq!(path_pattern(r.path.as_deref().unwrap()), "/api/users/{id}");
    for m in ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] {
        let line = format!("{m} /x HTTP/1.1\r\n");
        assert_eq!(
            parse_request(Protocol::Http1, line.as_bytes())
                .unwrap()
                .method,
            m
        );
        assert_eq!(tcp(1234, line.as_bytes(), &[]).protocol, Protocol::Http1);
    }
}

#[test]
fn http1_status_codes() {
    let r = parse_response(
        Protocol::Http1,
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(
        r,
        Some(Response {
            status: Some(503),
            error: true,
            code: None
        })
    );
    let r = parse_response(Protocol::Http1, b"HTTP/1.0 404 Not Found\r\n").unwrap();
    assert_eq!((r.status, r.error), (Some(404), false));
    // Cut right after the code.
    let r = parse_response(Protocol::Http1, b"HTTP/1.1 500").unwrap();
    assert_eq!((r.status, r.error), (Some(500), true));
    assert_eq!(parse_response(Protocol::Http1, b"HTTP/1.1 5"), None);
    assert_eq!(
        parse_response(Protocol::Http1, b"SSH-2.0-OpenSSH_9.6\r\n"),
        None
    );
}

#[test]
fn http1_truncated_request_gives_partial_path() {
    let c = b"GET /very/long/path/with/segments/that/goes/on HTTP/1.1\r\n";
    let r = parse_request(Protocol::Http1, &c[..20]).unwrap();
    assert_eq!(r, req("GET", Some("/very/long/path/"), None));
    let d = detect(Transport::Tcp, 7000, &c[..20], &[]);
    assert_eq!(d.protocol, Protocol::Http1);
    // A Host header cut mid-value is not reported.
    let c = b"GET / HTTP/1.1\r\nHost: api.exam";
    let d = detect(Transport::Tcp, 7000, c, &[]);
    assert_eq!((d.protocol, d.http_host), (Protocol::Http1, None));
}

#[test]
fn websocket_upgrade_by_request_or_by_101() {
    let c = b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let s =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let d = tcp(8081, c, s);
    assert_eq!(
        (d.protocol, d.http_host.as_deref()),
        (Protocol::WebSocket, Some("ws.example.com"))
    );
    // Upgrade header cut off in the client copy: the server's 101 decides.
    let d = tcp(8081, &c[..45], s);
    assert_eq!(d.protocol, Protocol::WebSocket);
    assert_eq!(
        tcp(8081, &c[..45], b"HTTP/1.1 200 OK\r\n").protocol,
        Protocol::Http1
    );
    // Frames after the upgrade: masked client text frame, server close 1011.
    let r = parse_request(
        Protocol::WebSocket,
        &[0x81, 0x85, 1, 2, 3, 4, 0x69, 0x67, 0x6f, 0x68, 0x6e],
    );
    assert_eq!(r.unwrap().method, "TEXT");
    let r = parse_response(Protocol::WebSocket, &[0x88, 0x02, 0x03, 0xf3]).unwrap();
    assert_eq!((r.status, r.error), (Some(1011), true));
    let r = parse_response(Protocol::WebSocket, &[0x88, 0x02, 0x03, 0xe8]).unwrap();
    assert_eq!((r.status, r.error), (Some(1000), false));
}

// ---------------------------------------------------------------------------------------
// HTTP/2 and gRPC

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// HPACK literal without indexing, indexed name.
fn lit(name_index: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![name_index, value.len() as u8];
    v.extend_from_slice(value);
    v
}

fn grpc_request() -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.extend(lit(0x04, b"/helloworld.Greeter/SayHello")); // :path
    block.push(0x41); // :authority, incremental indexing
    block.push(15);
    block.extend_from_slice(b"localhost:50051");
    block.extend([0x5f, 16]); // content-type, incremental indexing
    block.extend_from_slice(b"application/grpc");
    let mut v = PREFACE.to_vec();
    v.extend(h2_frame(4, 0, 0, &[0x00, 0x04, 0x00, 0x40, 0x00, 0x00])); // SETTINGS window
    v.extend(h2_frame(1, 0x04, 1, &block)); // HEADERS, END_HEADERS
    v
}

#[test]
fn grpc_detected_on_nonstandard_port_with_path() {
    let c = grpc_request();
    let d = tcp(7443, &c, &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Grpc, Confidence::Payload)
    );
    assert_eq!(d.http_host.as_deref(), Some("localhost:50051"));
    let r = parse_request(Protocol::Grpc, cap(&c)).unwrap();
    assert_eq!(r, req("POST", Some("/helloworld.Greeter/SayHello"), None));
    // Copy cut before content-type: the :path shape still says gRPC.
    let cut = c.iter().position(|&b| b == 0x5f).unwrap();
    assert_eq!(tcp(7443, &c[..cut], &[]).protocol, Protocol::Grpc);
}

#[test]
fn plain_http2_and_preface_prefix() {
    let mut block = vec![0x82, 0x87, 0x84]; // GET https /
    block.push(0x41);
    block.push(11);
    block.extend_from_slice(b"example.org");
    let mut c = PREFACE.to_vec();
    c.extend(h2_frame(4, 0, 0, &[]));
    c.extend(h2_frame(1, 0x05, 1, &block));
    let d = tcp(8080, &c, &[]);
    assert_eq!(
        (d.protocol, d.http_host.as_deref()),
        (Protocol::Http2, Some("example.org"))
    );
    assert_eq!(
        parse_request(Protocol::Http2, &c).unwrap(),
        req("GET", Some("/"), None)
    );
    // Only the start of the preface was captured.
    assert_eq!(tcp(8080, &PREFACE[..10], &[]).protocol, Protocol::Http2);
    // On the gRPC port, HTTP/2 whose gRPC headers were cut off is gRPC.
    assert_eq!(tcp(50051, &PREFACE[..10], &[]).protocol, Protocol::Grpc);
}

#[test]
fn grpc_status_in_response_headers() {
    let mut headers = vec![0x88, 0x5f, 16]; // :status 200, content-type
    headers.extend_from_slice(b"application/grpc");
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend([2, b'1', b'4']);
    let mut s = h2_frame(1, 0x04, 1, &headers);
    s.extend(h2_frame(1, 0x05, 1, &trailers));
    let r = parse_response(Protocol::Grpc, &s).unwrap();
    assert_eq!(
        r,
        Response {
            status: Some(200),
            error: true,
            code: Some("14".into())
        }
    );
    // HTTP/2 500 without gRPC.
    let r = parse_response(Protocol::Http2, &h2_frame(1, 0x05, 1, &[0x8e])).unwrap();
    assert_eq!((r.status, r.error), (Some(500), true));
    // A server SETTINGS frame plus gRPC response headers identify the flow from the server.
    let mut srv = h2_frame(4, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]);
    srv.extend(h2_frame(1, 0x04, 1, &headers));
    assert_eq!(tcp(6000, &[], &srv).protocol, Protocol::Grpc);
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// StartupMessage v3.0: user=postgres database=app.
const PG_STARTUP: &[u8] = &[
    0x00, 0x00, 0x00, 0x24, // length 36
    0x00, 0x03, 0x00, 0x00, // protocol 3.0 (196608)
    b'u', b's', b'e', b'r', 0, b'p', b'o', b's', b't', b'g', b'r', b'e', b's', 0, b'd', b'a', b't',
    b'a', b'b', b'a', b's', b'e', 0, b'a', b'p', b'p', 0, 0,
];

#[test]
fn postgres_startup_ssl_and_auth() {
    assert_eq!(PG_STARTUP.len(), 36);
    let d = tcp(6543, PG_STARTUP, &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Postgres, Confidence::Payload)
    );
    assert_eq!(
        parse_request(Protocol::Postgres, PG_STARTUP)
            .unwrap()
            .method,
        "STARTUP"
    );
    let ssl = [0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f];
    assert_eq!(tcp(6543, &ssl, b"S").protocol, Protocol::Postgres);
    assert_eq!(
        parse_request(Protocol::Postgres, &ssl).unwrap().method,
        "SSL_REQUEST"
    );
    // Server side only: AuthenticationSASL request.
    let auth = pg(b'R', &[0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', 0]);
    assert_eq!(tcp(6543, &[], &auth).protocol, Protocol::Postgres);
}

#[test]
fn postgres_query_and_error_response() {
    let q = pg(b'Q', b"SELECT * FROM users WHERE id = 1\0");
    assert_eq!(q[..5], [b'Q', 0, 0, 0, 37]);
    // A flow seen mid-connection on a non-standard port.
    assert_eq!(tcp(15432, &q, &[]).protocol, Protocol::Postgres);
    assert_eq!(
        parse_request(Protocol::Postgres, &q).unwrap(),
        req("QUERY", None, Some("SELECT"))
    );
    let mut p = pg(b'P', b"\0  insert into t values ($1)\0\0\0");
    p.extend(pg(b'B', b"\0\0\0\0\0\0\0\0"));
    assert_eq!(
        parse_request(Protocol::Postgres, &p).unwrap(),
        req("PREPARE", None, Some("INSERT"))
    );

    let err = pg(
        b'E',
        b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0",
    );
    let r = parse_response(Protocol::Postgres, &err).unwrap();
    assert_eq!(
        r,
        Response {
            status: None,
            error: true,
            code: Some("42P01".into())
        }
    );
    // ParseComplete then ErrorResponse: still an error.
    let mut s = pg(b'1', b"");
    s.extend(&err);
    assert!(parse_response(Protocol::Postgres, &s).unwrap().error);
    // RowDescription ... CommandComplete, ReadyForQuery: fine.
    let mut ok = pg(b'C', b"SELECT 1\0");
    ok.extend(pg(b'Z', b"I"));
    assert!(!parse_response(Protocol::Postgres, &ok).unwrap().error);
    // ErrorResponse cut before the SQLSTATE: still an error, code unknown.
    assert_eq!(
        parse_response(Protocol::Postgres, &err[..9]).unwrap(),
        Response {
            status: None,
            error: true,
            code: None
        }
    );
}

// ---------------------------------------------------------------------------------------
// MySQL

/// MySQL 8.0.36 HandshakeV10 greeting (caching_sha2_password).
const MYSQL_GREETING: &[u8] = &[
    0x4b, 0x00, 0x00, 0x00, // payload length 75, sequence 0
    0x0a, // protocol 10
    b'8', b'.', b'0', b'.', b'3', b'6', 0x00, // server version
    0x0c, 0x00, 0x00, 0x00, // connection id 12
    0x3a, 0x1f, 0x6b, 0x2d, 0x11, 0x48, 0x05, 0x79, 0x00, // auth-plugin-data part 1, filler
    0xff, 0xff, 0xff, 0x02, 0x00, 0xff,
    0xdf, // capabilities (low), charset, status, capabilities (high)
    0x15, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, // auth data length, reserved
    0x0e, 0x4f, 0x25, 0x52, 0x1b, 0x5a, 0x66, 0x60, 0x29, 0x0d, 0x68, 0x63, 0x1c,
    0x00, // part 2
    b'c', b'a', b'c', b'h', b'i', b'n', b'g', b'_', b's', b'h', b'a', b'2', b'_', b'p', b'a', b's',
    b's', b'w', b'o', b'r', b'd', 0x00,
];

#[test]
fn mysql_greeting_on_3307_and_truncated() {
    assert_eq!(MYSQL_GREETING.len(), 79);
    let d = tcp(3307, &[], MYSQL_GREETING);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Mysql, Confidence::Payload)
    );
    assert_eq!(
        tcp(3307, &[], &MYSQL_GREETING[..8]).protocol,
        Protocol::Mysql
    );
    assert!(
        !parse_response(Protocol::Mysql, MYSQL_GREETING)
            .unwrap()
            .error
    );
}

#[test]
fn mysql_query_and_err_packet() {
    let q = my(0, b"\x03select name from users where id = 7");
    assert_eq!(
        parse_request(Protocol::Mysql, &q).unwrap(),
        req("QUERY", None, Some("SELECT"))
    );
    assert_eq!(tcp(13306, &q, &[]).protocol, Protocol::Mysql);
    assert_eq!(
        parse_request(Protocol::Mysql, &my(0, b"\x0e"))
            .unwrap()
            .method,
        "PING"
    );
    let err = my(1, b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist");
    let r = parse_response(Protocol::Mysql, &err).unwrap();
    assert_eq!(
        r,
        Response {
            status: Some(1146),
            error: true,
            code: Some("42S02".into())
        }
    );
    let ok = my(1, &[0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00]);
    assert!(!parse_response(Protocol::Mysql, &ok).unwrap().error);
}

// ---------------------------------------------------------------------------------------
// Redis

#[test]
fn redis_ping_and_error_on_nonstandard_port() {
    let ping = b"*1\r\n$4\r\nPING\r\n";
    let d = tcp(7777, ping, b"+PONG\r\n");
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Redis, Confidence::Payload)
    );
    assert_eq!(parse_request(Protocol::Redis, ping).unwrap().method, "PING");
    let set = b"*3\r\n$3\r\nset\r\n$5\r\nuser1\r\n$5\r\nalice\r\n";
    assert_eq!(parse_request(Protocol::Redis, set).unwrap().method, "SET");
    assert_eq!(tcp(7777, b"PING\r\n", &[]).protocol, Protocol::Redis);

    let r = parse_response(
        Protocol::Redis,
        b"-ERR unknown command 'FOO', with args beginning with: \r\n",
    )
    .unwrap();
    assert_eq!(
        r,
        Response {
            status: None,
            error: true,
            code: Some("ERR".into())
        }
    );
    let r = parse_response(Protocol::Redis, b"-WRONGTYPE Operation against a key").unwrap();
    assert_eq!(r.code.as_deref(), Some("WRONGTYPE"));
    for ok in [
        &b"+OK\r\n"[..],
        b":42\r\n",
        b"$5\r\nalice\r\n",
        b"$-1\r\n",
        b"*2\r\n$1\r\na\r\n",
    ] {
        assert!(!parse_response(Protocol::Redis, ok).unwrap().error);
    }
    assert_eq!(
        parse_response(Protocol::Redis, b"HTTP/1.1 200 OK\r\n"),
        None
    );
}

// ---------------------------------------------------------------------------------------
// MongoDB

/// OP_MSG { find: "users", $db: "app" }.
const MONGO_FIND: &[u8] = &[
    0x37, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xdd, 0x07, 0x00,
    0x00, // length 55, requestID 42, responseTo 0, opCode 2013
    0x00, 0x00, 0x00, 0x00, 0x00, // flagBits, section kind 0
    0x22, 0x00, 0x00, 0x00, // document length 34
    0x02, b'f', b'i', b'n', b'd', 0x00, 0x06, 0x00, 0x00, 0x00, b'u', b's', b'e', b'r', b's',
    0x00, // "find": "users"
    0x02, b'$', b'd', b'b', 0x00, 0x04, 0x00, 0x00, 0x00, b'a', b'p', b'p',
    0x00, // "$db": "app"
    0x00,
];

/// OP_MSG reply { ok: 0.0, errmsg: "ns not found", code: 26, codeName: "NamespaceNotFound" }.
const MONGO_ERROR_REPLY: &[u8] = &[
    0x69, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, 0xdd, 0x07, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x54, 0x00, 0x00, 0x00, 0x01, 0x6f, 0x6b, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x65, 0x72, 0x72, 0x6d, 0x73, 0x67, 0x00, 0x0d, 0x00, 0x00,
    0x00, 0x6e, 0x73, 0x20, 0x6e, 0x6f, 0x74, 0x20, 0x66, 0x6f, 0x75, 0x6e, 0x64, 0x00, 0x10, 0x63,
    0x6f, 0x64, 0x65, 0x00, 0x1a, 0x00, 0x00, 0x00, 0x02, 0x63, 0x6f, 0x64, 0x65, 0x4e, 0x61, 0x6d,
    0x65, 0x00, 0x12, 0x00, 0x00, 0x00, 0x4e, 0x61, 0x6d, 0x65, 0x73, 0x70, 0x61, 0x63, 0x65, 0x4e,
    0x6f, 0x74, 0x46, 0x6f, 0x75, 0x6e, 0x64, 0x00, 0x00,
];

#[test]
fn mongodb_op_msg_command_and_error() {
    assert_eq!(MONGO_FIND.len(), 55);
    let d = tcp(27018, MONGO_FIND, &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Mongodb, Confidence::Payload)
    );
    assert_eq!(
        parse_request(Protocol::Mongodb, MONGO_FIND).unwrap(),
        req("find", Some("users"), None)
    );
    let r = parse_response(Protocol::Mongodb, MONGO_ERROR_REPLY).unwrap();
    assert_eq!(
        r,
        Response {
            status: Some(26),
            error: true,
            code: Some("NamespaceNotFound".into())
        }
    );
    // Cut after `ok: 0.0`: the error is already visible.
    let r = parse_response(Protocol::Mongodb, &MONGO_ERROR_REPLY[..40]).unwrap();
    assert!(r.error);
    assert_eq!(r.code, None);
}

// ---------------------------------------------------------------------------------------
// Kafka

/// ApiVersions v3 request (flexible header v2), client id "adminclient-1".
const KAFKA_API_VERSIONS: &[u8] = &[
    0x00, 0x00, 0x00, 0x31, // size 49
    0x00, 0x12, 0x00, 0x03, // api_key 18 (ApiVersions), api_version 3
    0x00, 0x00, 0x00, 0x01, // correlation_id 1
    0x00, 0x0d, b'a', b'd', b'm', b'i', b'n', b'c', b'l', b'i', b'e', b'n', b't', b'-', b'1',
    0x00, // tagged fields
    0x12, b'a', b'p', b'a', b'c', b'h', b'e', b'-', b'k', b'a', b'f', b'k', b'a', b'-', b'j', b'a',
    b'v', b'a', // client_software_name (compact string)
    0x06, b'3', b'.', b'6', b'.', b'0', // client_software_version
    0x00,
];

#[test]
fn kafka_api_versions_on_nonstandard_port() {
    assert_eq!(KAFKA_API_VERSIONS.len(), 53);
    let d = tcp(19092, KAFKA_API_VERSIONS, &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Kafka, Confidence::Payload)
    );
    assert_eq!(
        parse_request(Protocol::Kafka, KAFKA_API_VERSIONS)
            .unwrap()
            .method,
        "ApiVersions"
    );
    let mut produce = KAFKA_API_VERSIONS.to_vec();
    produce[5] = 0; // api_key 0
    assert_eq!(
        parse_request(Protocol::Kafka, &produce).unwrap().method,
        "Produce"
    );
    let mut bad = KAFKA_API_VERSIONS.to_vec();
    bad[5] = 200;
    assert_eq!(parse_request(Protocol::Kafka, &bad), None);
}

// ---------------------------------------------------------------------------------------
// AMQP

#[test]
fn amqp_header_and_methods() {
    let d = tcp(5673, b"AMQP\x00\x00\x09\x01", &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Amqp, Confidence::Payload)
    );
    // Basic.Publish on channel 1 to the default exchange, routing key "orders".
    let publish = [
        0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x3c, 0x00, 0x28, 0x00, 0x00, 0x00, 0x06,
        b'o', b'r', b'd', b'e', b'r', b's', 0x00, 0xce,
    ];
    assert_eq!(
        parse_request(Protocol::Amqp, &publish).unwrap(),
        req("Basic.Publish", Some("orders"), None)
    );
    // Channel.Close 404 NOT_FOUND.
    let close = [
        0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x14, 0x00, 0x28, 0x01, 0x94, 0x09, b'N',
        b'O', b'T', b'_', b'F', b'O', b'U', b'N', b'D',
    ];
    let r = parse_response(Protocol::Amqp, &close).unwrap();
    assert_eq!((r.status, r.error), (Some(404), true));
}

// ---------------------------------------------------------------------------------------
// DNS

/// Query: id 0x1a2b, RD, one question www.example.com A IN.
const DNS_QUERY: &[u8] = &[
    0x1a, 0x2b, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // header
    0x03, b'w', b'w', b'w', 0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm',
    0x00, // www.example.com
    0x00, 0x01, 0x00, 0x01, // A IN
];

/// Response: www.example.com CNAME web.example.com (TTL 300), web.example.com A
/// 93.184.216.34 (TTL 60), with compression pointers.
const DNS_RESPONSE: &[u8] = &[
    0x1a, 0x2b, 0x81, 0x80, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x00, // header, 2 answers
    0x03, b'w', b'w', b'w', 0x07, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0x03, b'c', b'o', b'm',
    0x00, 0x00, 0x01, 0x00, 0x01, // question (offset 12; "example" at 16)
    0xc0, 0x0c, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01, 0x2c, 0x00,
    0x06, // -> www, CNAME, TTL 300
    0x03, b'w', b'e', b'b', 0xc0, 0x10, // web + pointer to example.com (label at offset 45)
    0xc0, 0x2d, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3c, 0x00,
    0x04, // -> web, A, TTL 60
    93, 184, 216, 34,
];

#[test]
fn dns_query_and_response_udp_and_tcp() {
    let d = detect(Transport::Udp, 5353, DNS_QUERY, DNS_RESPONSE);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Dns, Confidence::Payload)
    );
    assert_eq!(
        detect(Transport::Udp, 10053, &[], DNS_RESPONSE).protocol,
        Protocol::Dns
    );
    assert_eq!(
        parse_request(Protocol::Dns, DNS_QUERY).unwrap(),
        req("A", Some("www.example.com"), None)
    );
    let r = parse_response(Protocol::Dns, DNS_RESPONSE).unwrap();
    assert_eq!(
        r,
        Response {
            status: Some(0),
            error: false,
            code: Some("NOERROR".into())
        }
    );
    let mut nx = DNS_RESPONSE.to_vec();
    nx[3] = 0x83;
    let r = parse_response(Protocol::Dns, &nx).unwrap();
    assert_eq!(
        r,
        Response {
            status: Some(3),
            error: true,
            code: Some("NXDOMAIN".into())
        }
    );

    let mut tq = (DNS_QUERY.len() as u16).to_be_bytes().to_vec();
    tq.extend_from_slice(DNS_QUERY);
    let d = tcp(8053, &tq, &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Dns, Confidence::Payload)
    );
    assert_eq!(
        parse_request(Protocol::Dns, &tq).unwrap().path.as_deref(),
        Some("www.example.com")
    );
}

#[test]
fn dns_answers_follow_cname_chain() {
    let ip = IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34));
    let mut a = dns_answers(DNS_RESPONSE, false);
    a.sort();
    assert_eq!(
        a,
        vec![
            ("web.example.com".to_string(), ip, 60),
            ("www.example.com".to_string(), ip, 60)
        ]
    );
    let mut t = (DNS_RESPONSE.len() as u16).to_be_bytes().to_vec();
    t.extend_from_slice(DNS_RESPONSE);
    assert_eq!(dns_answers(&t, true).len(), 2);
    // Cut inside the A record: nothing invented, no panic.
    assert!(dns_answers(&DNS_RESPONSE[..DNS_RESPONSE.len() - 1], false).is_empty());
    // NXDOMAIN and queries give nothing.
    let mut nx = DNS_RESPONSE.to_vec();
    nx[3] = 0x83;
    assert!(dns_answers(&nx, false).is_empty());
    assert!(dns_answers(DNS_QUERY, false).is_empty());
}

#[test]
fn dns_answers_aaaa_and_pointer_loop() {
    // Response for v6.example AAAA 2001:db8::1, TTL 120.
    let mut m = vec![0x00, 0x07, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
    m.extend([
        2, b'v', b'6', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 28, 0, 1,
    ]);
    m.extend([0xc0, 0x0c, 0, 28, 0, 1, 0, 0, 0, 120, 0, 16]);
    m.extend([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let a = dns_answers(&m, false);
    assert_eq!(
        a,
        vec![(
            "v6.example".to_string(),
            "2001:db8::1".parse().unwrap(),
            120
        )]
    );
    // Answer owner is a pointer to itself: bounded, no answers, no hang.
    let mut l = m.clone();
    let owner = 12 + 16;
    l[owner] = 0xc0;
    l[owner + 1] = owner as u8;
    assert!(dns_answers(&l, false).is_empty());
}

// ---------------------------------------------------------------------------------------
// Ports and fallbacks

#[test]
fn port_fallback_and_plain_transport() {
    let cases = [
        (80, Protocol::Http1),
        (8080, Protocol::Http1),
        (8000, Protocol::Http1),
        (443, Protocol::Tls),
        (5432, Protocol::Postgres),
        (3306, Protocol::Mysql),
        (27017, Protocol::Mongodb),
        (6379, Protocol::Redis),
        (9092, Protocol::Kafka),
        (5672, Protocol::Amqp),
        (53, Protocol::Dns),
        (50051, Protocol::Grpc),
    ];
    for (port, p) in cases {
        let d = detect(Transport::Tcp, port, &[], &[]);
        assert_eq!(
            (d.protocol, d.confidence),
            (p, Confidence::Port),
            "port {port}"
        );
    }
    assert_eq!(
        detect(Transport::Udp, 53, b"\x01\x02", &[]).protocol,
        Protocol::Dns
    );
    let d = detect(Transport::Tcp, 4000, b"\x00\x01binary-stuff", b"???");
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Tcp, Confidence::Fallback)
    );
    let d = detect(Transport::Udp, 4000, b"hello", &[]);
    assert_eq!(
        (d.protocol, d.confidence),
        (Protocol::Udp, Confidence::Fallback)
    );
    // Payload beats the port: Redis spoken on 5432, HTTP on 443.
    assert_eq!(
        tcp(5432, b"*1\r\n$4\r\nPING\r\n", &[]).protocol,
        Protocol::Redis
    );
    assert_eq!(
        tcp(443, b"GET / HTTP/1.1\r\n", &[]).protocol,
        Protocol::Http1
    );
}

#[test]
fn protocol_names_round_trip() {
    for p in Protocol::ALL {
        assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        assert_eq!(p.to_string(), p.as_str());
    }
    assert_eq!("HTTP".parse::<Protocol>(), Ok(Protocol::Http1));
    assert_eq!("postgresql".parse::<Protocol>(), Ok(Protocol::Postgres));
    assert!("smtp".parse::<Protocol>().is_err());
}

// ---------------------------------------------------------------------------------------
// Path patterns

#[test]
fn path_patterns() {
    let cases = [
        (
            "/users/123/orders/9f8e7d6c-1111-2222-3333-444455556666?x=1",
            "/users/{id}/orders/{id}",
        ),
        ("/", "/"),
        ("", "/"),
        ("?q=1", "/"),
        ("/api/v1/items", "/api/v1/items"),
        ("/api/v2/items/", "/api/v2/items/"),
        ("/blobs/5d41402abc4b2a76b9719d911017c592", "/blobs/{id}"),
        ("/commits/deadbeef1", "/commits/{id}"),
        ("/words/abcdefab", "/words/abcdefab"),
        ("/t/eyJhbGciOiJIUzI1NiJ9x2", "/t/{id}"),
        ("/docs/release-notes-2024-v2", "/docs/release-notes-2024-v2"),
        ("/svc/my_service_v2_canary", "/svc/my_service_v2_canary"),
        ("/s/averyverylongtoken1", "/s/{id}"),
        ("/q/hello%20world%20again", "/q/hello%20world%20again"),
        ("/Users/42#frag", "/Users/{id}"),
        ("http://proxy.example:8080/a/77?z", "/a/{id}"),
        ("/a//b", "/a//b"),
    ];
    for (input, want) in cases {
        assert_eq!(path_pattern(input), want, "{input}");
    }
    let long = format!("/{}", "segment/".repeat(40));
    let p = path_pattern(&long);
    assert_eq!(p.len(), 128);
    assert!(long.starts_with(&p));
    // Multi-byte characters are cut on a boundary.
    let p = path_pattern(&format!("/{}", "é".repeat(100)));
    assert!(p.len() <= 128 && p.starts_with("/é"));
}

// ---------------------------------------------------------------------------------------
// Every prefix of every sample: no panic, and parsers keep answering on the prefix.

#[test]
fn every_prefix_of_every_sample_is_safe() {
    let samples: Vec<(Protocol, Vec<u8>)> = vec![
        (Protocol::Tls, CLIENT_HELLO.to_vec()),
        (Protocol::Grpc, grpc_request()),
        (Protocol::Postgres, PG_STARTUP.to_vec()),
        (Protocol::Mysql, MYSQL_GREETING.to_vec()),
        (Protocol::Mongodb, MONGO_FIND.to_vec()),
        (Protocol::Mongodb, MONGO_ERROR_REPLY.to_vec()),
        (Protocol::Kafka, KAFKA_API_VERSIONS.to_vec()),
        (Protocol::Dns, DNS_QUERY.to_vec()),
        (Protocol::Dns, DNS_RESPONSE.to_vec()),
        (Protocol::Redis, b"*1\r\n$4\r\nPING\r\n".to_vec()),
        (
            Protocol::Http1,
            b"GET /a/b HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        ),
    ];
    for (p, s) in &samples {
        for n in 0..=s.len() {
            let b = &s[..n];
            for t in [Transport::Tcp, Transport::Udp] {
                let _ = detect(t, 1, b, b);
            }
            for q in Protocol::ALL {
                let _ = parse_request(q, b);
                let _ = parse_response(q, b);
            }
            let _ = dns_answers(b, false);
            let _ = dns_answers(b, true);
            let _ = p;
        }
    }
    // Prefixes long enough to hold the signature keep the verdict.
    let g = grpc_request();
    for n in 30..g.len() {
        assert!(
            matches!(
                tcp(7000, &g[..n], &[]).protocol,
                Protocol::Http2 | Protocol::Grpc
            ),
            "{n}"
        );
    }
    for n in 8..KAFKA_API_VERSIONS.len() {
        let want = if n < 14 {
            Protocol::Tcp
        } else {
            Protocol::Kafka
        };
        assert_eq!(
            tcp(7000, &KAFKA_API_VERSIONS[..n], &[]).protocol,
            want,
            "{n}"
        );
    }
    for n in 16..=MONGO_FIND.len() {
        assert_eq!(
            tcp(7000, &MONGO_FIND[..n], &[]).protocol,
            Protocol::Mongodb,
            "{n}"
        );
    }
    for n in 9..=PG_STARTUP.len() {
        assert_eq!(
            tcp(7000, &PG_STARTUP[..n], &[]).protocol,
            Protocol::Postgres,
            "{n}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Things that must not be mistaken for a known protocol.

#[test]
fn unrelated_protocols_stay_plain_tcp() {
    let cases: [(&[u8], &[u8]); 6] = [
        (
            b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
        ),
        (
            b"EHLO client.example\r\n",
            b"220 mail.example ESMTP Postfix\r\n",
        ),
        (b"", b"+OK POP3 server ready\r\n"),
        (b"a001 LOGIN user pass\r\n", b"* OK IMAP4rev1 ready\r\n"),
        (
            &[
                0x00, 0x01, 0x02, 0x03, 0xfe, 0xff, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80,
            ],
            b"",
        ),
        (b"hello world, this is not a protocol\n", b""),
    ];
    for (c, s) in cases {
        let d = tcp(4444, c, s);
        assert_eq!(
            (d.protocol, d.confidence),
            (Protocol::Tcp, Confidence::Fallback),
            "{:?}",
            String::from_utf8_lossy(c)
        );
    }
    // Inline commands need CRLF; HELLO needs a numeric protocol version.
    assert_eq!(tcp(4444, b"HELLO 3\r\n", &[]).protocol, Protocol::Redis);
    assert_eq!(tcp(4444, b"HELLO there\r\n", &[]).protocol, Protocol::Tcp);
    assert_eq!(tcp(4444, b"PING\n", &[]).protocol, Protocol::Tcp);
    // "GET key" is a Redis inline command, not HTTP/0.9.
    assert_eq!(tcp(4444, b"GET user:1\r\n", &[]).protocol, Protocol::Redis);
    // A random UDP datagram is not DNS.
    assert_eq!(
        detect(Transport::Udp, 4444, b"\x12\x34\x56\x78garbage", &[]).protocol,
        Protocol::Udp
    );
}

#[test]
fn mongodb_legacy_op_query_hello() {
    // OP_QUERY admin.$cmd { isMaster: 1 } as sent by drivers before OP_MSG is negotiated.
    let mut doc = vec![0x10];
    doc.extend_from_slice(b"isMaster\0");
    doc.extend_from_slice(&1i32.to_le_bytes());
    doc.push(0);
    let mut bson = ((doc.len() + 4) as i32).to_le_bytes().to_vec();
    bson.extend(doc);
    let mut body = 0i32.to_le_bytes().to_vec(); // flags
    body.extend_from_slice(b"admin.$cmd\0");
    body.extend_from_slice(&0i32.to_le_bytes()); // numberToSkip
    body.extend_from_slice(&(-1i32).to_le_bytes()); // numberToReturn
    body.extend(bson);
    let mut m = ((16 + body.len()) as i32).to_le_bytes().to_vec();
    m.extend_from_slice(&1i32.to_le_bytes()); // requestID
    m.extend_from_slice(&0i32.to_le_bytes()); // responseTo
    m.extend_from_slice(&2004i32.to_le_bytes()); // OP_QUERY
    m.extend(body);
    assert_eq!(tcp(40000, &m, &[]).protocol, Protocol::Mongodb);
    assert_eq!(
        parse_request(Protocol::Mongodb, &m).unwrap(),
        req("isMaster", None, None)
    );
}
