//! Flow-level protocol detection from the first client and server bytes.

use crate::{
    Confidence, Detection, Protocol, Transport, amqp, dns, http, kafka, mongo, redis, sql, tls,
};

fn found(protocol: Protocol) -> Detection {
    Detection {
        protocol,
        confidence: Confidence::Payload,
        tls_sni: None,
        tls_alpn: Vec::new(),
        http_host: None,
    }
}

/// Detects the application protocol of a flow.
///
/// `client_first` / `server_first`: the first bytes (up to 128, possibly empty) sent by the
/// client and by the server. `server_port` is used only when no payload signature matches
/// (confidence [`Confidence::Port`]); otherwise the flow is plain TCP/UDP
/// ([`Confidence::Fallback`]).
///
/// Signatures, client side first: HTTP/2 preface (gRPC when `application/grpc`, a `grpc-*`
/// header or a `/pkg.Service/Method` path is visible in either direction), HTTP/1 request line
/// (WebSocket on `Upgrade: websocket` or a `101` with it; HTTP/2 on an accepted h2c upgrade),
/// TLS ClientHello (with SNI) or TLS record, AMQP header, PostgreSQL startup/SSL/query,
/// Redis RESP array or inline command, MongoDB header, Kafka request header, DNS over TCP,
/// MySQL COM_QUERY; then server side: MySQL greeting, HTTP/1 status line, HTTP/2 SETTINGS,
/// TLS ServerHello, PostgreSQL authentication request, Redis refusals. UDP: DNS query or
/// response. HTTP/2 on port 50051 without visible gRPC evidence is reported as gRPC.
pub fn detect(
    transport: Transport,
    server_port: u16,
    client_first: &[u8],
    server_first: &[u8],
) -> Detection {
    let by_payload = match transport {
        Transport::Udp => detect_udp(client_first, server_first),
        Transport::Tcp => detect_tcp(client_first, server_first),
    };
    if let Some(mut d) = by_payload {
        // HTTP/2 whose gRPC evidence was cut off: the gRPC port decides.
        if d.protocol == Protocol::Http2 && transport == Transport::Tcp && server_port == 50051 {
            d.protocol = Protocol::Grpc;
        }
        return d;
    }
    let port_protocol = match (transport, server_port) {
        (Transport::Tcp, 80 | 8080 | 8000) => Some(Protocol::Http1),
        (Transport::Tcp, 443) => Some(Protocol::Tls),
        (Transport::Tcp, 5432) => Some(Protocol::Postgres),
        (Transport::Tcp, 3306) => Some(Protocol::Mysql),
        (Transport::Tcp, 27017) => Some(Protocol::Mongodb),
        (Transport::Tcp, 6379) => Some(Protocol::Redis),
        (Transport::Tcp, 9092) => Some(Protocol::Kafka),
        (Transport::Tcp, 5672) => Some(Protocol::Amqp),
        (Transport::Tcp, 50051) => Some(Protocol::Grpc),
        (_, 53) => Some(Protocol::Dns),
        _ => None,
    };
    match port_protocol {
        Some(protocol) => Detection {
            protocol,
            confidence: Confidence::Port,
            tls_sni: None,
            tls_alpn: Vec::new(),
            http_host: None,
        },
        None => Detection {
            protocol: match transport {
                Transport::Tcp => Protocol::Tcp,
                Transport::Udp => Protocol::Udp,
            },
            confidence: Confidence::Fallback,
            tls_sni: None,
            tls_alpn: Vec::new(),
            http_host: None,
        },
    }
}

fn detect_udp(client: &[u8], server: &[u8]) -> Option<Detection> {
    (dns::detect_client(client, false) || dns::detect_server(server, false))
        .then(|| found(Protocol::Dns))
}

fn detect_tcp(client: &[u8], server: &[u8]) -> Option<Detection> {
    if !client.is_empty()
        && let Some(d) = detect_tcp_client(client, server)
    {
        return Some(d);
    }
    detect_tcp_server(server)
}

fn detect_http2(client: &[u8], server: &[u8]) -> Detection {
    let grpc = http::h2_is_grpc(client) || http::h2_is_grpc(server);
    let mut d = found(if grpc {
        Protocol::Grpc
    } else {
        Protocol::Http2
    });
    d.http_host = http::h2_authority(client);
    d
}

fn detect_tcp_client(client: &[u8], server: &[u8]) -> Option<Detection> {
    // HTTP/2 prior knowledge (the preface, or a prefix of it when the copy is very short).
    let n = client.len().min(http::H2_PREFACE.len());
    if n >= 4 && client.get(..n) == http::H2_PREFACE.get(..n) {
        return Some(detect_http2(client, server));
    }
    if let Some(head) = http::request_head(client) {
        let server_status = http::status_line(server);
        let ws = http::is_websocket_upgrade(head.headers)
            || server_status.is_some_and(|(s, h)| s == 101 && http::is_websocket_upgrade(h));
        let h2c =
            http::is_h2c_upgrade(head.headers) && server_status.is_some_and(|(s, _)| s == 101);
        let protocol = if ws {
            Protocol::WebSocket
        } else if h2c {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let mut d = found(protocol);
        d.http_host = http::host_of(head.headers);
        return Some(d);
    }
    if let Some(hello) = tls::client_hello(client) {
        let mut d = found(Protocol::Tls);
        d.tls_sni = hello.sni;
        d.tls_alpn = hello.alpn;
        return Some(d);
    }
    if tls::is_record(client) && (server.is_empty() || tls::is_record(server)) {
        return Some(found(Protocol::Tls));
    }
    if amqp::detect_client(client) {
        return Some(found(Protocol::Amqp));
    }
    if sql::pg_detect_client(client) {
        return Some(found(Protocol::Postgres));
    }
    if redis::detect_client(client) {
        return Some(found(Protocol::Redis));
    }
    if mongo::detect_client(client) {
        return Some(found(Protocol::Mongodb));
    }
    if kafka::detect_client(client) {
        return Some(found(Protocol::Kafka));
    }
    if dns::detect_client(client, true) {
        return Some(found(Protocol::Dns));
    }
    if sql::mysql_detect_client(client) {
        return Some(found(Protocol::Mysql));
    }
    None
}

fn detect_tcp_server(server: &[u8]) -> Option<Detection> {
    if sql::mysql_detect_server(server) {
        return Some(found(Protocol::Mysql));
    }
    if http::status_line(server).is_some() {
        return Some(found(Protocol::Http1));
    }
    if http::is_h2_settings_start(server) {
        return Some(detect_http2(&[], server));
    }
    if tls::is_server_hello(server) {
        return Some(found(Protocol::Tls));
    }
    if sql::pg_detect_server(server) {
        return Some(found(Protocol::Postgres));
    }
    if redis::detect_server(server) {
        return Some(found(Protocol::Redis));
    }
    if dns::detect_server(server, true) {
        return Some(found(Protocol::Dns));
    }
    None
}
