use super::*;
use crate::hpack::huffman_encode;

fn turn<'a>(request: &'a [u8], response: &'a [u8]) -> Turn<'a> {
    Turn {
        request,
        request_complete: true,
        response,
        response_complete: true,
        start_ns: 1_000,
        latency_ns: 10,
    }
}

fn method(c: &Call) -> &str {
    c.request.as_ref().map_or("", |r| r.method.as_str())
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend([kind, flags]);
    v.extend(stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A literal with incremental indexing, name from the static table, Huffman value.
fn lit_indexed(name_index: u8, value: &str) -> Vec<u8> {
    let enc = huffman_encode(value.as_bytes());
    let mut v = vec![0x40 | name_index, 0x80 | enc.len() as u8];
    v.extend(enc);
    v
}

#[test]
fn postgres_ssl_refused_then_startup_and_password_are_not_requests() {
    let mut s = Session::new(Protocol::Postgres);
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert!(s.turn(&turn(&ssl, b"N")).is_empty());
    let mut startup = vec![0, 0, 0, 0x17, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0postgres\0\0");
    let sasl = [b'R', 0, 0, 0, 0x17, 0, 0, 0, 10];
    assert!(s.turn(&turn(&startup, &sasl)).is_empty());
    let mut pw = vec![b'p', 0, 0, 0, 0x10];
    pw.extend_from_slice(b"SCRAM-SHA-256\0");
    assert!(s.turn(&turn(&pw, &sasl)).is_empty());
    let mut q = vec![b'Q', 0, 0, 0, 13];
    q.extend_from_slice(b"select 1\0");
    let calls = s.turn(&turn(&q, b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I"));
    assert_eq!(calls.len(), 1);
    assert_eq!(method(&calls[0]), "QUERY");
    assert_eq!(
        calls[0].request.as_ref().unwrap().operation.as_deref(),
        Some("SELECT")
    );
}

#[test]
fn postgres_after_tls_accepted_counts_nothing() {
    let mut s = Session::new(Protocol::Postgres);
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    assert!(s.turn(&turn(&ssl, b"S")).is_empty());
    assert!(
        s.turn(&turn(b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x03"))
            .is_empty()
    );
    assert!(
        s.turn(&turn(b"\x17\x03\x03\x00\x10", b"\x17\x03\x03"))
            .is_empty()
    );
}

#[test]
fn mysql_auth_switch_and_continuations_are_not_requests() {
    let mut s = Session::new(Protocol::Mysql);
    // HandshakeResponse41 (seq 1) answered by an auth switch request (seq 2).
    let mut hr = vec![40, 0, 0, 1, 0x8d, 0xa6, 0x0f, 0];
    hr.extend_from_slice(&[0u8; 36]);
    assert!(s.turn(&turn(&hr, b"\x05\0\0\x02\xfeabc")).is_empty());
    // The client's auth switch response (seq 3) answered by OK (seq 4).
    assert!(
        s.turn(&turn(b"\x03\0\0\x03xyz", b"\x07\0\0\x04\0\0\0\x02\0\0\0"))
            .is_empty()
    );
    let calls = s.turn(&turn(b"\x09\0\0\0\x03select 1", b"\x01\0\0\x01\x01"));
    assert_eq!(calls.len(), 1);
    assert_eq!(method(&calls[0]), "QUERY");
    let err = s.turn(&turn(
        b"\x09\0\0\0\x03select x",
        b"\x17\0\0\x01\xff\x7a\x04#42S22Unknown",
    ));
    assert!(err[0].error());
}

fn amqp_method(class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend(method.to_be_bytes());
    payload.extend_from_slice(args);
    let mut v = vec![1, 0, 1];
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend(payload);
    v.push(0xce);
    v
}

#[test]
fn amqp_setup_is_not_counted_and_a_channel_close_is_one_error() {
    let mut s = Session::new(Protocol::Amqp);
    assert!(
        s.turn(&turn(b"AMQP\0\0\x09\x01", &amqp_method(10, 10, &[0, 9])))
            .is_empty()
    );
    let mut setup = amqp_method(10, 31, &[0; 8]);
    setup.extend(amqp_method(10, 40, b"\x01/\0\0"));
    assert!(s.turn(&turn(&setup, &amqp_method(10, 41, &[0]))).is_empty());
    assert!(
        s.turn(&turn(
            &amqp_method(20, 10, &[0]),
            &amqp_method(20, 11, &[0, 0, 0, 0])
        ))
        .is_empty()
    );
    // Two publishes (method, header, body) and a get in one turn.
    let mut work = Vec::new();
    for _ in 0..2 {
        work.extend(amqp_method(60, 40, b"\0\0\0\x04jobs\0"));
        work.extend([2, 0, 1, 0, 0, 0, 2, 0, 0, 0xce]);
        work.extend([3, 0, 1, 0, 0, 0, 1, b'x', 0xce]);
    }
    work.extend(amqp_method(60, 70, b"\0\0\x04jobs\x01"));
    let calls = s.turn(&turn(&work, &amqp_method(60, 72, b"\0")));
    let names: Vec<_> = calls.iter().map(method).collect();
    assert_eq!(names, ["Basic.Publish", "Basic.Publish", "Basic.Get"]);
    assert!(calls.iter().all(|c| !c.error()));
    // A passive declare of a missing queue: the broker closes the channel with 404.
    let calls = s.turn(&turn(
        &amqp_method(50, 10, b"\0\0\x07missing\x01\0\0\0\0"),
        &amqp_method(20, 40, b"\x01\x94\x09NOT_FOUND\0\x32\0\x0a"),
    ));
    assert_eq!(calls.len(), 1);
    assert!(calls[0].error());
    assert_eq!(calls[0].response.as_ref().unwrap().status, Some(404));
    // The client's CloseOk and Connection.Close are not requests, so no second error.
    let mut bye = amqp_method(20, 41, &[]);
    bye.extend(amqp_method(10, 50, b"\0\xc8\x02OK\0\0\0\0"));
    assert!(s.turn(&turn(&bye, &amqp_method(10, 51, &[]))).is_empty());
}

#[test]
fn h2_streams_count_one_per_stream_across_turns_with_the_dynamic_table() {
    let mut s = Session::new(Protocol::Grpc);
    // Request 1 inserts :path and content-type into the client's dynamic table.
    let mut block1 = vec![0x83, 0x86];
    block1.extend(lit_indexed(4, "/demo.Echo/Say"));
    block1.extend(lit_indexed(31, "application/grpc"));
    let mut c = H2_PREFACE.to_vec();
    c.extend(frame(4, 0, 0, &[]));
    c.extend(frame(1, 0x04, 1, &block1));
    c.extend(frame(0, 0x01, 1, &[0, 0, 0, 0, 0]));
    // The server: SETTINGS, then :status 200 (static), trailers grpc-status 0.
    let mut sv = frame(4, 0, 0, &[]);
    sv.extend(frame(1, 0x04, 1, &[0x88]));
    let mut trailer = vec![0x40];
    trailer.extend_from_slice(b"\x0bgrpc-status\x010");
    sv.extend(frame(1, 0x05, 1, &trailer));
    let calls = s.turn(&turn(&c, &sv));
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].request.as_ref().unwrap().path.as_deref(),
        Some("/demo.Echo/Say")
    );
    assert!(!calls[0].error());
    // Streams 3 and 5 in one turn, both referring to dynamic entries (63: :path after
    // content-type at 62). Stream 5's answer is trailers-only with grpc-status 13 (the
    // server's dynamic entry 62 is grpc-status: 0 from the first trailers, so it spells it
    // out again).
    let mut c = frame(1, 0x04, 3, &[0x83, 0x86, 0xbf, 0xbe]);
    c.extend(frame(1, 0x04, 5, &[0x83, 0x86, 0xbf, 0xbe]));
    let mut sv = frame(1, 0x04, 3, &[0x88]);
    sv.extend(frame(1, 0x05, 3, &[0xbe]));
    let mut fail = vec![0x88, 0x40];
    fail.extend_from_slice(b"\x0bgrpc-status\x0213");
    sv.extend(frame(1, 0x05, 5, &fail));
    let calls = s.turn(&turn(&c, &sv));
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert_eq!(
            c.request.as_ref().unwrap().path.as_deref(),
            Some("/demo.Echo/Say")
        );
        assert_eq!(c.response.as_ref().unwrap().status, Some(200));
    }
    assert!(!calls[0].error());
    assert!(calls[1].error());
    assert_eq!(
        calls[1].response.as_ref().unwrap().code.as_deref(),
        Some("13")
    );
}

#[test]
fn h2_settings_and_ping_are_not_requests_and_answered_streams_flush() {
    let mut s = Session::new(Protocol::Http2);
    let mut c = H2_PREFACE.to_vec();
    c.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    c.extend(frame(6, 0, 0, &[0; 8]));
    assert!(s.turn(&turn(&c, &frame(4, 1, 0, &[]))).is_empty());
    // A GET answered with headers only, its DATA not seen yet.
    let calls = s.turn(&turn(
        &frame(1, 0x05, 1, &[0x82, 0x87, 0x84]),
        &frame(1, 0x04, 1, &[0x8d]),
    ));
    assert!(calls.is_empty());
    let flushed = s.flush(false);
    assert_eq!(flushed.len(), 1);
    assert_eq!(flushed[0].response.as_ref().unwrap().status, Some(404));
    assert!(!flushed[0].error());
    // An unanswered stream stays until the flow ends.
    assert!(
        s.turn(&turn(
            &frame(1, 0x05, 3, &[0x82, 0x87, 0x84]),
            &frame(6, 1, 0, &[0; 8])
        ))
        .is_empty()
    );
    assert!(s.flush(false).is_empty());
    assert_eq!(s.flush(true).len(), 1);
}

#[test]
fn h2_cut_turns_stop_trusting_the_dynamic_table() {
    let mut s = Session::new(Protocol::Http2);
    let mut block = vec![0x82, 0x86];
    block.extend(lit_indexed(4, "/first"));
    let c = frame(1, 0x05, 1, &block);
    let sv = frame(1, 0x05, 1, &[0x88]);
    let t = Turn {
        request_complete: false,
        ..turn(&c, &sv)
    };
    assert_eq!(s.turn(&t).len(), 1);
    // Entry 62 may have been replaced by an unseen block: no path rather than a wrong one.
    let c = frame(1, 0x05, 3, &[0x82, 0x86, 0xbe]);
    let calls = s.turn(&turn(&c, &frame(1, 0x05, 3, &[0x88])));
    assert_eq!(calls.len(), 1);
    assert_eq!(method(&calls[0]), "GET");
    assert_eq!(calls[0].request.as_ref().unwrap().path, None);
}

#[test]
fn h2c_upgrade_request_is_stream_one() {
    let mut s = Session::new(Protocol::Http2);
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
    let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n".to_vec();
    resp.extend(frame(4, 0, 0, &[]));
    resp.extend(frame(1, 0x05, 1, &[0x88]));
    let calls = s.turn(&turn(req, &resp));
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].request.as_ref().unwrap().path.as_deref(),
        Some("/x")
    );
    assert_eq!(calls[0].response.as_ref().unwrap().status, Some(200));
}

fn ws_client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut v = vec![b0, 0x80 | payload.len() as u8];
    v.extend(mask);
    v.extend(payload.iter().enumerate().map(|(i, c)| c ^ mask[i % 4]));
    v
}

#[test]
fn websocket_upgrade_then_messages_and_close_codes() {
    let mut s = Session::new(Protocol::WebSocket);
    let calls = s.turn(&turn(
        b"GET /chat HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ));
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].kind, CallKind::Request);
    assert_eq!(calls[0].response.as_ref().unwrap().status, Some(101));
    // A text message in two fragments and a ping in one turn: two messages.
    let mut c = ws_client_frame(0x01, b"hel");
    c.extend(ws_client_frame(0x80, b"lo"));
    c.extend(ws_client_frame(0x89, b""));
    let calls = s.turn(&turn(&c, b"\x81\x05hello\x8a\x00"));
    let names: Vec<_> = calls.iter().map(method).collect();
    assert_eq!(names, ["TEXT", "PING"]);
    assert!(calls.iter().all(|c| c.kind == CallKind::Message));
    assert_eq!(
        calls[0].request.as_ref().unwrap().path.as_deref(),
        Some("/chat")
    );
    // A normal close is neither an error nor a status.
    let calls = s.turn(&turn(
        &ws_client_frame(0x88, &[0x03, 0xe8]),
        b"\x88\x02\x03\xe8",
    ));
    assert_eq!(calls.len(), 1);
    assert!(!calls[0].error());
    assert!(
        calls[0]
            .response
            .as_ref()
            .is_none_or(|r| r.status.is_none())
    );
    // The server closing with 1011 (internal error) fails the turn's message.
    let calls = s.turn(&turn(&ws_client_frame(0x81, b"x"), b"\x88\x02\x03\xf3"));
    assert!(calls[0].error());
}

proptest::proptest! {
    #[test]
    fn sessions_never_panic(
        turns in proptest::collection::vec(
            (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
             proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
             proptest::prelude::any::<bool>()),
            0..8),
        p in 0usize..Protocol::ALL.len(),
    ) {
        let mut s = Session::new(Protocol::ALL[p]);
        for (req, resp, complete) in &turns {
            let t = Turn {
                request: req,
                request_complete: *complete,
                response: resp,
                response_complete: *complete,
                start_ns: u64::MAX,
                latency_ns: u64::MAX,
            };
            let calls = s.turn(&t);
            proptest::prop_assert!(calls.len() <= MAX_CALLS_PER_TURN + MAX_STREAMS);
        }
        s.flush(true);
    }
}
