use proptest::prelude::*;

use crate::compare::{Diffy, FieldCounts, beyond_noise, fields};
use crate::replay::{Replay, ReplayConfig};
use crate::*;

fn frame_all(stream: &[u8], cuts: &[usize]) -> Vec<Request> {
    let mut c = ClientFramer::new(Limits::default());
    let mut out = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|x| x % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts.into_iter().chain([stream.len()]) {
        out.extend(c.push(&stream[at..cut]).unwrap());
        at = cut;
    }
    out
}

fn concat(rs: &[Request]) -> Vec<u8> {
    rs.iter().flat_map(|r| r.bytes.clone()).collect()
}

fn http_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(b"GET /users/42?x=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r-1\r\n\r\n");
    s.extend_from_slice(b"HEAD /index.html HTTP/1.1\r\nHost: a\r\n\r\n");
    s.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n");
    let body = vec![b'x'; 1 << 20];
    s.extend_from_slice(
        format!("POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    );
    s.extend_from_slice(&body);
    s.extend_from_slice(b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: 1\r\n\r\n");
    s.extend_from_slice(b"\r\nDELETE /users/7 HTTP/1.1\r\nHost: a\r\n\r\n");
    s
}

#[test]
fn http1_requests_reframe_byte_exact_with_endpoints_and_read_only() {
    let s = http_stream();
    let rs = frame_all(&s, &[]);
    assert_eq!(concat(&rs), s);
    let eps: Vec<_> = rs.iter().map(|r| r.endpoint.clone().unwrap()).collect();
    assert_eq!(
        eps,
        [
            "GET /users/{id}",
            "HEAD /index.html",
            "GET /a",
            "GET /b",
            "POST /upload",
            "PUT /c",
            "DELETE /users/{id}"
        ]
    );
    let ro: Vec<_> = rs.iter().map(|r| r.read_only).collect();
    assert_eq!(ro, [true, true, true, true, false, false, false]);
    assert_eq!(rs[0].request_id.as_deref(), Some("r-1"));
    assert_eq!(
        rs[4].bytes.len(),
        s.len()
            - rs.iter()
                .filter(|r| r.key != 5)
                .map(|r| r.bytes.len())
                .sum::<usize>()
    );
    let keys: Vec<_> = rs.iter().map(|r| r.key).collect();
    assert_eq!(keys, [1, 2, 3, 4, 5, 6, 7]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn http1_reframing_does_not_depend_on_where_the_stream_is_cut(cuts in proptest::collection::vec(0usize..2_000_000, 0..12)) {
        let s = http_stream();
        let rs = frame_all(&s, &cuts);
        prop_assert_eq!(rs.len(), 7);
        prop_assert_eq!(concat(&rs), s);
    }

    #[test]
    fn redis_postgres_and_h2c_reframing_does_not_depend_on_where_the_stream_is_cut(cuts in proptest::collection::vec(0usize..400, 0..10)) {
        for (s, n) in [(redis_stream(), 5), (postgres_stream(), 7), (h2c_stream(), 5)] {
            let rs = frame_all(&s, &cuts);
            prop_assert_eq!(rs.len(), n);
            prop_assert_eq!(concat(&rs), s);
        }
    }

    #[test]
    fn framers_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..600), prefix in 0usize..5) {
        let prefixes: [&[u8]; 5] = [b"", b"GET / HTTP/1.1\r\n", b"*2\r\n", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", h2::PREFACE];
        let mut c = ClientFramer::new(Limits::default());
        let mut input = prefixes[prefix].to_vec();
        input.extend_from_slice(&data);
        let _ = c.push(&input);
        for e in [Expect::Http1 { head: false, upgrade_h2c: true }, Expect::Redis, Expect::Postgres(PgExpect::UntilReady { startup: true }), Expect::Postgres(PgExpect::Byte), Expect::H2Stream] {
            let mut s = ServerFramer::new(Limits::default());
            let _ = s.expect(&Request { bytes: vec![], endpoint: None, read_only: true, request_id: None, key_value: None, expect: e, key: 1 });
            let _ = s.push(&data);
            let _ = s.finish();
            if let Ok(rs) = s.push(&data) {
                for r in rs { let _ = fields(&r); }
            }
        }
    }
}

fn respond(expect: &[Expect], stream: &[u8]) -> Vec<Response> {
    let mut s = ServerFramer::new(Limits::default());
    for (i, e) in expect.iter().enumerate() {
        s.expect(&Request {
            bytes: vec![],
            endpoint: None,
            read_only: true,
            request_id: None,
            key_value: None,
            expect: *e,
            key: i as u64 + 1,
        })
        .unwrap();
    }
    let mut out = Vec::new();
    for b in stream.chunks(7) {
        out.extend(s.push(b).unwrap());
    }
    out.extend(s.finish().unwrap());
    out
}

#[test]
fn http1_responses_head_204_304_chunked_interim_and_until_close() {
    let get = Expect::Http1 {
        head: false,
        upgrade_h2c: false,
    };
    let head = Expect::Http1 {
        head: true,
        upgrade_h2c: false,
    };
    let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello\
HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n\
HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HTTP/1.1 503 Unavailable\r\n\r\nuntil close";
    let rs = respond(&[get, head, get, get, get, get], stream);
    let st: Vec<_> = rs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(st, ["200", "200", "204", "304", "201", "503"]);
    assert_eq!(rs[0].body, b"hello");
    assert!(rs[1].body.is_empty());
    assert_eq!(rs[4].body, b"abc");
    assert_eq!(rs[5].body, b"until close");
    assert!(rs[5].error && !rs[4].error);
    assert_eq!(
        rs.iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(
        rs[0]
            .headers
            .iter()
            .any(|(n, v)| n == "content-type" && v == "text/plain")
    );
    assert!(!rs[0].headers.iter().any(|(n, _)| n == "content-length"));
}

#[test]
fn an_interim_answer_before_its_request_is_complete_waits_for_it() {
    let mut s = ServerFramer::new(Limits::default());
    assert!(s.push(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap().is_empty());
    s.expect(&Request {
        bytes: vec![],
        endpoint: None,
        read_only: false,
        request_id: None,
        key_value: None,
        expect: Expect::Http1 {
            head: false,
            upgrade_h2c: false,
        },
        key: 9,
    })
    .unwrap();
    let out = s
        .push(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    assert_eq!(
        (out.len(), out[0].key, out[0].status.as_str()),
        (1, 9, "201")
    );
}

fn redis_stream() -> Vec<u8> {
    b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\nPING\r\nhgetall h\r\n*2\r\n$6\r\nCLIENT\r\n$4\r\nINFO\r\n".to_vec()
}

#[test]
fn redis_commands_inline_and_multibulk_pipelined() {
    let s = redis_stream();
    let rs = frame_all(&s, &[5, 17, 40]);
    assert_eq!(concat(&rs), s);
    let eps: Vec<_> = rs.iter().map(|r| r.endpoint.clone().unwrap()).collect();
    assert_eq!(
        eps,
        [
            "redis GET",
            "redis SET",
            "redis PING",
            "redis HGETALL",
            "redis CLIENT INFO"
        ]
    );
    assert_eq!(
        rs.iter().map(|r| r.read_only).collect::<Vec<_>>(),
        [true, false, true, true, false]
    );
    let replies = b"$1\r\nv\r\n+OK\r\n+PONG\r\n*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n*1\r\n:2\r\n-ERR unknown\r\n";
    let out = respond(&[Expect::Redis; 5], replies);
    assert_eq!(out.len(), 5);
    assert_eq!(out[4].status, "-ERR");
    assert!(out[4].error && !out[0].error);
    let f = fields(&out[3]);
    assert!(f.contains(&("reply[3][0]".into(), ":2".into())), "{f:?}");
}

#[test]
fn redis_read_table_is_sorted_for_binary_search() {
    assert!(is_read_command("GET") && is_read_command("ZSCORE") && is_read_command("AUTH"));
    assert!(!is_read_command("SET") && !is_read_command("DEL") && !is_read_command("EVAL"));
}

fn pg_msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn postgres_stream() -> Vec<u8> {
    let mut s = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut startup = Vec::new();
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(b"user\0app\0database\0app\0\0");
    s.extend_from_slice(&(startup.len() as u32 + 4).to_be_bytes());
    s.extend_from_slice(&startup);
    s.extend(pg_msg(b'Q', b"SELECT * FROM users\0"));
    s.extend(pg_msg(
        b'Q',
        b"with x as (delete from t returning *) select * from x\0",
    ));
    s.extend(pg_msg(b'P', b"\0SELECT $1\0\0\0"));
    s.extend(pg_msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"));
    s.extend(pg_msg(b'D', b"P\0"));
    s.extend(pg_msg(b'E', b"\0\0\0\0\0"));
    s.extend(pg_msg(b'S', b""));
    s.extend(pg_msg(b'Q', b"UPDATE users SET a = 1\0"));
    s.extend(pg_msg(b'X', b""));
    s
}

#[test]
fn postgres_startup_simple_and_extended_queries() {
    let s = postgres_stream();
    let rs = frame_all(&s, &[3, 9, 30, 70]);
    assert_eq!(concat(&rs), s);
    let eps: Vec<_> = rs
        .iter()
        .map(|r| r.endpoint.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        eps,
        [
            "postgres SSLRequest",
            "postgres startup",
            "postgres SELECT",
            "postgres WITH",
            "postgres SELECT",
            "postgres UPDATE",
            ""
        ]
    );
    assert_eq!(
        rs.iter().map(|r| r.read_only).collect::<Vec<_>>(),
        [true, true, true, false, true, false, true]
    );

    let mut answer = b"N".to_vec();
    answer.extend(pg_msg(b'R', &[0, 0, 0, 0]));
    answer.extend(pg_msg(b'S', b"server_version\x0016\0"));
    answer.extend(pg_msg(b'K', &[0; 8]));
    answer.extend(pg_msg(b'Z', b"I"));
    answer.extend(pg_msg(
        b'T',
        b"\0\x01name\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
    ));
    answer.extend(pg_msg(b'D', b"\0\x01\0\0\0\x03bob"));
    answer.extend(pg_msg(b'C', b"SELECT 1\0"));
    answer.extend(pg_msg(b'Z', b"I"));
    answer.extend(pg_msg(b'E', b"SERROR\0C42P01\0Mno such table\0\0"));
    answer.extend(pg_msg(b'Z', b"I"));
    let exp: Vec<Expect> = rs
        .iter()
        .map(|r| r.expect)
        .filter(|e| *e != Expect::None)
        .take(4)
        .collect();
    let out = respond(&exp, &answer);
    assert_eq!(
        out.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["N", "ok", "ok", "42P01"]
    );
    assert!(out[3].error);
    let f = fields(&out[2]);
    assert!(f.contains(&("row[0].name".into(), "bob".into())), "{f:?}");
    assert!(
        f.contains(&("command[0]".into(), "SELECT 1".into())),
        "{f:?}"
    );
}

#[test]
fn sql_read_only_is_conservative() {
    for ok in [
        "SELECT 1",
        "  select * from t where a = 2;",
        "SHOW search_path",
        "WITH a AS (SELECT 1) SELECT * FROM a",
        "/* c */ SELECT 1",
        "(SELECT 1) UNION (SELECT 2)",
    ] {
        assert!(is_read_only_sql(ok), "{ok}");
    }
    for w in [
        "INSERT INTO t VALUES (1)",
        "SELECT * INTO t2 FROM t",
        "SELECT * FROM t FOR UPDATE",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "SELECT nextval('s')",
        "BEGIN",
        "",
        "SELECT 1; DROP TABLE t",
        "SELECT pg_advisory_lock(1)",
        "VACUUM",
    ] {
        assert!(!is_read_only_sql(w), "{w}");
    }
}

/// An HPACK literal without indexing, no Huffman.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in headers {
        b.push(0);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = payload.len();
    let mut f = vec![(l >> 16) as u8, (l >> 8) as u8, l as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn h2c_stream() -> Vec<u8> {
    let mut s = h2::PREFACE.to_vec();
    s.extend(h2_frame(4, 0, 0, &[]));
    let get = hpack(&[
        (":method", "GET"),
        (":path", "/a?q=1"),
        (":scheme", "http"),
        (":authority", "x"),
        ("x-request-id", "h2-1"),
    ]);
    s.extend(h2_frame(1, 0x5, 1, &get));
    let post = hpack(&[
        (":method", "POST"),
        (":path", "/b"),
        (":scheme", "http"),
        (":authority", "x"),
    ]);
    s.extend(h2_frame(1, 0x0, 3, &post[..10]));
    s.extend(h2_frame(9, 0x4, 3, &post[10..]));
    s.extend(h2_frame(0, 0x1, 3, b"{}"));
    s
}

#[test]
fn h2c_prior_knowledge_streams_have_endpoints_and_answers() {
    let s = h2c_stream();
    let rs = frame_all(&s, &[10, 33, 60]);
    assert_eq!(concat(&rs), s);
    let with: Vec<_> = rs.iter().filter(|r| r.endpoint.is_some()).collect();
    assert_eq!(with.len(), 2);
    assert_eq!(with[0].endpoint.as_deref(), Some("GET /a"));
    assert_eq!(with[0].request_id.as_deref(), Some("h2-1"));
    assert!(with[0].read_only && !with[1].read_only);
    assert_eq!(with[1].key, h2::STREAM_KEY + 3);

    let mut sv = ServerFramer::new(Limits::default());
    sv.h2_prior_knowledge();
    let mut a = h2_frame(4, 0, 0, &[]);
    a.extend(h2_frame(1, 0x4, 3, &hpack(&[(":status", "500")])));
    a.extend(h2_frame(
        1,
        0x4,
        1,
        &hpack(&[(":status", "200"), ("content-type", "application/json")]),
    ));
    a.extend(h2_frame(0, 0x0, 1, b"{\"a\":"));
    a.extend(h2_frame(0, 0x1, 1, b"1}"));
    a.extend(h2_frame(0, 0x1, 3, b"oops"));
    let mut out = Vec::new();
    for c in a.chunks(5) {
        out.extend(sv.push(c).unwrap());
    }
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[0].key, out[0].status.as_str(), out[0].body.as_slice()),
        (h2::STREAM_KEY + 1, "200", b"{\"a\":1}".as_slice())
    );
    assert!(out[1].error);
    assert!(fields(&out[0]).contains(&("body.a".into(), "1".into())));
}

#[test]
fn h2c_upgrade_switches_both_sides() {
    let mut s = b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n".to_vec();
    s.extend_from_slice(h2::PREFACE);
    s.extend(h2_frame(4, 0, 0, &[]));
    s.extend(h2_frame(
        1,
        0x5,
        3,
        &hpack(&[(":method", "GET"), (":path", "/next")]),
    ));
    let rs = frame_all(&s, &[20, 100]);
    assert_eq!(concat(&rs), s);
    assert_eq!(
        rs[0].expect,
        Expect::Http1 {
            head: false,
            upgrade_h2c: true
        }
    );
    assert_eq!(rs.last().unwrap().endpoint.as_deref(), Some("GET /next"));

    let mut a =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    a.extend(h2_frame(4, 0, 0, &[]));
    a.extend(h2_frame(1, 0x5, 1, &hpack(&[(":status", "200")])));
    a.extend(h2_frame(1, 0x5, 3, &hpack(&[(":status", "404")])));
    let mut sv = ServerFramer::new(Limits::default());
    for r in &rs {
        sv.expect(r).unwrap();
    }
    let out = sv.push(&a).unwrap();
    assert_eq!(
        out.iter()
            .map(|r| (r.key, r.status.as_str()))
            .collect::<Vec<_>>(),
        [(1, "200"), (h2::STREAM_KEY + 3, "404")]
    );
}

#[test]
fn detection_tells_protocols_apart() {
    assert_eq!(
        detect(b"GET / HTTP/1.1\r\n").unwrap(),
        Some(Protocol::Http1)
    );
    assert_eq!(detect(b"GET key\r\n").unwrap(), Some(Protocol::Redis));
    assert_eq!(detect(b"*1\r\n").unwrap(), Some(Protocol::Redis));
    assert_eq!(
        detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap(),
        Some(Protocol::H2c)
    );
    assert_eq!(detect(b"PRI * HT").unwrap(), None);
    assert_eq!(
        detect(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap(),
        Some(Protocol::Postgres)
    );
    assert!(
        detect(&[
            0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ])
        .is_err()
    );
}

#[test]
fn oversized_messages_are_rejected_not_buffered() {
    let limits = Limits {
        max_head: 1024,
        max_message: 4096,
    };
    let mut c = ClientFramer::new(limits);
    let e = c
        .push(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        .unwrap_err();
    assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
    assert_eq!(c.push(b"more").unwrap_err(), e);
    let mut c = ClientFramer::new(limits);
    assert!(matches!(
        c.push(&[b'A'; 1200]).unwrap_err(),
        FrameError::TooLarge { .. } | FrameError::UnknownProtocol(_)
    ));
    let mut c = ClientFramer::new(limits);
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(vec![b'a'; 2000]);
    assert!(matches!(
        c.push(&big).unwrap_err(),
        FrameError::TooLarge { .. }
    ));
}

fn json_response(body: String) -> Response {
    Response {
        key: 1,
        kind: BodyKind::Http,
        status: "200".into(),
        error: false,
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.into_bytes(),
    }
}

#[test]
fn diffy_finds_a_field_changed_in_one_percent_and_cancels_timestamps() {
    let mut d = Diffy::default();
    for i in 0..2000u64 {
        let prod = json_response(format!(
            r#"{{"user":{{"name":"ann","id":7}},"at":"{}","items":[1,2]}}"#,
            i * 3
        ));
        let name = if i % 100 == 0 { "bob" } else { "ann" };
        let shadow = json_response(format!(
            r#"{{"user":{{"name":"{name}","id":7}},"at":"{}","items":[1,2]}}"#,
            i * 3 + 1
        ));
        // The baseline is a second copy of production: only what differs between any two
        // runs (the timestamp) differs from production; the shadow's change does not.
        let base = json_response(format!(
            r#"{{"user":{{"name":"ann","id":7}},"at":"{}","items":[1,2]}}"#,
            i * 3 + 2
        ));
        d.compare("GET /u", &prod, &shadow, Some(&base));
    }
    let e = d.endpoint("GET /u").unwrap();
    let found = e.differing_fields();
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        ["body.user.name"],
        "{:?}",
        e.fields
    );
    assert_eq!(found["body.user.name"], 20);
    assert_eq!(
        e.fields["body.at"],
        FieldCounts {
            raw: 2000,
            noise: 2000
        }
    );
    assert_eq!(e.compared, 2000);
    assert!(e.differing >= 19 && e.differing <= 20, "{}", e.differing);
}

#[test]
fn diffy_thresholds_are_diffys() {
    // Relative: raw must beat noise by more than 20 % of their sum.
    assert!(!beyond_noise(
        FieldCounts {
            raw: 110,
            noise: 100
        },
        1000
    ));
    assert!(beyond_noise(
        FieldCounts {
            raw: 160,
            noise: 100
        },
        1000
    ));
    // Absolute: more than 0.03 % of the compared responses.
    assert!(!beyond_noise(FieldCounts { raw: 3, noise: 0 }, 10_000));
    assert!(beyond_noise(FieldCounts { raw: 4, noise: 0 }, 10_000));
    assert!(!beyond_noise(FieldCounts { raw: 5, noise: 5 }, 10));
}

#[test]
fn replay_pairs_answers_counts_skipped_writes_and_records_latency() {
    let mut stats = Stats::default();
    let mut r = Replay::new(ReplayConfig {
        targets: 2,
        read_only: true,
        ..Default::default()
    });
    let out = r
        .client(b"GET /a HTTP/1.1\r\nX-Request-Id: q1\r\n\r\nDELETE /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1_000_000)
        .unwrap();
    assert_eq!(out.iter().map(|o| o.key).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(r.counters.requests_skipped_write, 1);
    assert_eq!(r.counters.requests_replayed, 2);
    for o in &out {
        r.target_sent(0, o.key, 10_000_000);
        r.target_sent(1, o.key, 10_000_000);
    }
    let ans = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut prod = Vec::new();
    for _ in 0..3 {
        prod.extend_from_slice(ans);
    }
    r.production(&prod, 3_000_000, &mut stats);
    let a0 = r.target_data(
        0,
        &[ans.as_slice(), ans.as_slice()].concat(),
        15_000_000,
        &mut stats,
    );
    assert_eq!(a0.len(), 2);
    assert_eq!(a0[0].request_id.as_deref(), Some("q1"));
    assert_eq!(r.pending(), 2);
    r.target_data(
        1,
        &[
            ans.as_slice(),
            b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n".as_slice(),
        ]
        .concat(),
        16_000_000,
        &mut stats,
    );
    assert_eq!(r.pending(), 0);
    let a = stats.endpoint("GET /a").unwrap();
    assert_eq!((a.production_requests, a.shadow_requests), (1, 1));
    assert_eq!((a.baseline_requests, a.baseline_errors), (1, 0));
    assert_eq!(
        a.baseline_latency.max(),
        a.baseline_latency.highest_equivalent(6000)
    );
    let b = stats.endpoint("GET /b").unwrap();
    assert_eq!(
        (b.baseline_requests, b.baseline_errors, b.shadow_errors),
        (1, 1, 0)
    );
    assert_eq!(
        a.production_latency.max(),
        a.production_latency.highest_equivalent(2000)
    );
    assert_eq!(
        a.shadow_latency.max(),
        a.shadow_latency.highest_equivalent(5000)
    );
    let del = stats.endpoint("DELETE /a").unwrap();
    assert_eq!((del.production_requests, del.shadow_requests), (1, 0));
    let report = stats.report();
    let b = report.iter().find(|e| e.endpoint == "GET /b").unwrap();
    assert_eq!((b.compared, b.differing), (1, 0));
    assert!(!b.production_latency.is_empty());
    let mut slice = b.shadow_latency.as_slice();
    let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut slice)
        .unwrap();
    assert_eq!(h.len(), 1);
}

#[test]
fn a_request_waiting_behind_a_slow_answer_is_measured_from_that_answer() {
    // Two requests on one HTTP/1.1 connection, both sent at 10 ms (production's client
    // sent the second after production's quick answer). The shadow answers the first at
    // 30 ms and the second at 31 ms: the second took 1 ms, not 21.
    let mut stats = Stats::default();
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        ..Default::default()
    });
    let out = r
        .client(
            b"GET /slow HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
            1_000_000,
        )
        .unwrap();
    for o in &out {
        r.target_sent(0, o.key, 10_000_000);
    }
    let ans = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    r.target_data(0, ans, 30_000_000, &mut stats);
    r.target_data(0, ans, 31_000_000, &mut stats);
    let slow = stats.endpoint("GET /slow").unwrap();
    assert_eq!(
        slow.shadow_latency.max(),
        slow.shadow_latency.highest_equivalent(20_000)
    );
    let next = stats.endpoint("GET /next").unwrap();
    assert_eq!(
        next.shadow_latency.max(),
        next.shadow_latency.highest_equivalent(1_000)
    );
}

#[test]
fn replay_of_h2c_stops_at_a_writing_stream_in_read_only_mode() {
    let mut stats = Stats::default();
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        read_only: true,
        ..Default::default()
    });
    let mut s = h2::PREFACE.to_vec();
    s.extend(h2_frame(4, 0, 0, &[]));
    s.extend(h2_frame(
        1,
        0x5,
        1,
        &hpack(&[(":method", "GET"), (":path", "/a")]),
    ));
    s.extend(h2_frame(
        1,
        0x4,
        3,
        &hpack(&[(":method", "POST"), (":path", "/b")]),
    ));
    s.extend(h2_frame(0, 0x1, 3, b"x"));
    s.extend(h2_frame(
        1,
        0x5,
        5,
        &hpack(&[(":method", "GET"), (":path", "/c")]),
    ));
    let out = r.client(&s, 1).unwrap();
    let sent: Vec<u8> = out.iter().flat_map(|o| o.bytes.clone()).collect();
    assert!(s.starts_with(&sent) && sent.len() < s.len());
    assert_eq!(out.iter().filter(|o| o.endpoint.is_some()).count(), 1);
    assert_eq!(r.counters.requests_skipped_write, 2);
    assert!(!r.alive(0));
    r.production(
        &h2_frame(1, 0x5, 1, &hpack(&[(":status", "200")])),
        5,
        &mut stats,
    );
    assert_eq!(stats.endpoint("GET /a").unwrap().production_requests, 1);
}

fn key_sample(share_ppm: u32) -> crate::replay::KeySample {
    crate::replay::KeySample {
        header: "X-User".into(),
        threshold: agent_common::hash::threshold_of(share_ppm),
        seed: 11,
    }
}

/// A user the sample takes (`true`) or leaves out (`false`).
fn user(sample: &crate::replay::KeySample, inside: bool, skip: usize) -> String {
    (0..)
        .map(|i| format!("u{i}"))
        .filter(|u| sample.takes(Some(u)) == inside)
        .nth(skip)
        .unwrap()
}

#[test]
fn sampling_by_header_sends_only_the_requests_whose_key_is_in_the_share() {
    let sample = key_sample(500_000);
    let mut stats = Stats::default();
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(sample.clone()),
        ..Default::default()
    });
    // Ten users, several on one connection, one request without the header, the header's
    // name in another case and its value with spaces around it.
    let users: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let name = if i % 2 == 0 { "X-User" } else { "x-USER" };
        stream.extend(
            format!("GET /i/{i} HTTP/1.1\r\nX-Request-Id: q{i}\r\n{name}:  {u} \r\n\r\n").bytes(),
        );
        if sample.takes(Some(u)) {
            want.push(format!("q{i}"));
        }
    }
    stream.extend(b"GET /anonymous HTTP/1.1\r\nX-Request-Id: qa\r\n\r\n");
    assert!(!want.is_empty() && want.len() < users.len(), "{want:?}");
    let out = r.client(&stream, 1_000).unwrap();
    let sent: Vec<String> = out.iter().filter_map(|o| o.request_id.clone()).collect();
    assert_eq!(sent, want);
    assert_eq!(r.counters.requests_replayed, want.len() as u64);
    assert_eq!(r.counters.requests_unsampled, 11 - want.len() as u64);
    assert_eq!(r.counters.requests_skipped_write, 0);
    // The same users on another connection: the same decisions (sticky).
    let mut again = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(sample.clone()),
        ..Default::default()
    });
    let out2 = again.client(&stream, 1_000).unwrap();
    assert_eq!(
        out2.iter()
            .filter_map(|o| o.request_id.clone())
            .collect::<Vec<_>>(),
        want
    );
    // Answers pair with the requests sent, though production answered all eleven.
    let ans = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    for o in &out {
        r.target_sent(0, o.key, 2_000);
    }
    r.production(&ans.repeat(11), 3_000, &mut stats);
    let answered = r.target_data(0, &ans.repeat(want.len()), 4_000, &mut stats);
    assert_eq!(
        answered
            .iter()
            .filter_map(|a| a.request_id.clone())
            .collect::<Vec<_>>(),
        want
    );
    assert_eq!(r.pending(), 0);
    let shadowed: u64 = stats.report().iter().map(|e| e.compared).sum();
    assert_eq!(shadowed, want.len() as u64);
}

#[test]
fn sampling_by_header_decides_an_h2c_connection_at_its_first_stream() {
    let sample = key_sample(500_000);
    let (inside, outside) = (user(&sample, true, 0), user(&sample, false, 0));
    let stream = |first: &str, second: &str| {
        let mut s = h2::PREFACE.to_vec();
        s.extend(h2_frame(4, 0, 0, &[]));
        for (id, u) in [(1, first), (3, second)] {
            s.extend(h2_frame(
                1,
                0x5,
                id,
                &hpack(&[(":method", "GET"), (":path", "/a"), ("x-user", u)]),
            ));
        }
        s
    };
    // In by its first stream: everything goes, the preface first, whatever the second
    // stream's key (streams of one h2 connection cannot be cut apart).
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(sample.clone()),
        ..Default::default()
    });
    let s = stream(&inside, &outside);
    let mut sent = Vec::new();
    for piece in s.chunks(7) {
        sent.extend(
            r.client(piece, 1)
                .unwrap()
                .into_iter()
                .flat_map(|o| o.bytes),
        );
    }
    assert_eq!(sent, s);
    assert_eq!(
        (r.counters.requests_replayed, r.counters.requests_unsampled),
        (2, 0)
    );
    // Out by its first stream: nothing at all, not even the preface.
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(sample),
        ..Default::default()
    });
    let out = r.client(&stream(&outside, &inside), 1).unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(
        (r.counters.requests_replayed, r.counters.requests_unsampled),
        (0, 2)
    );
    assert!(!r.alive(0));
}

#[test]
fn sampling_by_header_holds_at_most_a_head_of_frames_before_the_first_stream() {
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(key_sample(1_000_000)),
        limits: Limits {
            max_head: 1024,
            ..Limits::default()
        },
        ..Default::default()
    });
    let mut s = h2::PREFACE.to_vec();
    for _ in 0..200 {
        s.extend(h2_frame(6, 0, 0, &[0; 8])); // PINGs, no stream opened
    }
    assert!(r.client(&s, 1).unwrap().is_empty());
    assert!(
        !r.alive(0),
        "out once more than max_head bytes wait for a decision"
    );
    let later = h2_frame(
        1,
        0x5,
        1,
        &hpack(&[(":method", "GET"), (":path", "/a"), ("x-user", "u")]),
    );
    assert!(r.client(&later, 2).unwrap().is_empty());
    assert_eq!(r.counters.requests_unsampled, 1);
}

#[test]
fn sampling_by_header_leaves_out_protocols_without_headers() {
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(key_sample(1_000_000)),
        ..Default::default()
    });
    let out = r
        .client(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n", 1)
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(r.counters.requests_unsampled, 2);
    // A whole share still takes every HTTP/1 request that has the header, and only those.
    let mut r = Replay::new(ReplayConfig {
        targets: 1,
        sample: Some(key_sample(1_000_000)),
        ..Default::default()
    });
    let out = r
        .client(
            b"GET / HTTP/1.1\r\nX-User: a\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            1,
        )
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(r.counters.requests_unsampled, 1);
}

/// A small deterministic generator (SplitMix64) for simulated traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// One run of an endpoint's answer: noise every run has (a timestamp, a request id, the
/// order of a list, a cache flag) and, for the shadow's code, an injected change.
fn simulated(rng: &mut Rng, user: u64, changed: bool) -> Response {
    let mut items = ["a", "b", "c"];
    for i in (1..items.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
    let cache = if rng.chance(0.5) { "hit" } else { "miss" };
    let name = if changed { "Bob" } else { "bob" };
    json_response(format!(
        r#"{{"user":{{"id":{user},"name":"{name}","plan":"pro"}},"at":{},"request":"{:x}","tags":["{}","{}","{}"],"cache":"{cache}","count":3}}"#,
        rng.next() % 1_000_000_000,
        rng.next(),
        items[0],
        items[1],
        items[2]
    ))
}

#[test]
fn diffy_recall_and_false_fields_over_ten_noisy_endpoints() {
    let mut rng = Rng(7);
    let mut d = Diffy::default();
    let endpoints: Vec<String> = (0..10).map(|i| format!("GET /e{i}")).collect();
    for e in &endpoints {
        for n in 0..3000u64 {
            // The shadow changes `user.name` in 1 % of its answers; the noise baseline is a
            // second copy of production, with production's noise and not the change.
            let changed = n % 100 == 42;
            let prod = simulated(&mut rng, n, false);
            let shadow = simulated(&mut rng, n, changed);
            let base = simulated(&mut rng, n, false);
            d.compare(e, &prod, &shadow, Some(&base));
        }
    }
    let mut found = 0;
    let mut false_fields = 0;
    for e in &endpoints {
        let diff = d.endpoint(e).expect("compared").differing_fields();
        found += usize::from(diff.contains_key("body.user.name"));
        false_fields += diff.keys().filter(|k| *k != "body.user.name").count();
    }
    assert_eq!(found, 10, "recall of the injected field");
    assert!(
        false_fields <= 1,
        "{false_fields} false fields over 10 endpoints"
    );
}
