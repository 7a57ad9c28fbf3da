use proptest::prelude::*;

use crate::*;

/// A client piece with its bytes (ranges resolved), for comparisons across feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum C {
    Head(RequestHead),
    Body(Vec<u8>),
    End,
    Tunnel(Vec<u8>),
}

/// Feeds `stream` cut at `cuts` (sorted offsets); pieces with bytes, consecutive Body and
/// Tunnel pieces merged, and the result of the last call.
fn client(
    stream: &[u8],
    cuts: &[usize],
    max: usize,
) -> (Vec<C>, Result<(), CutError>, RequestCutter) {
    let mut c = RequestCutter::new(max);
    let mut pieces = Vec::new();
    let mut last = 0;
    let mut result = Ok(());
    for &end in cuts.iter().chain([&stream.len()]) {
        let data = &stream[last..end];
        last = end;
        let mut out = Vec::new();
        result = c.feed(data, &mut out);
        for p in out {
            let p = match p {
                ClientPiece::Head(h) => C::Head(h),
                ClientPiece::Body(r) => {
                    assert!(!r.is_empty() && r.end <= data.len());
                    C::Body(data[r].to_vec())
                }
                ClientPiece::End => C::End,
                ClientPiece::Tunnel(r) => {
                    assert!(!r.is_empty() && r.end <= data.len());
                    C::Tunnel(data[r].to_vec())
                }
            };
            match (pieces.last_mut(), p) {
                (Some(C::Body(a)), C::Body(b)) | (Some(C::Tunnel(a)), C::Tunnel(b)) => {
                    a.extend_from_slice(&b)
                }
                (_, p) => pieces.push(p),
            }
        }
        if result.is_err() {
            break;
        }
    }
    (pieces, result, c)
}

fn client_one(stream: &[u8]) -> (Vec<C>, RequestCutter) {
    let (p, r, c) = client(stream, &[], DEFAULT_MAX_HEAD);
    r.unwrap();
    (p, c)
}

/// The bytes of pieces, in order.
fn client_bytes(pieces: &[C]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pieces {
        match p {
            C::Head(h) => v.extend_from_slice(&h.bytes),
            C::Body(b) | C::Tunnel(b) => v.extend_from_slice(b),
            C::End => {}
        }
    }
    v
}

fn heads(pieces: &[C]) -> Vec<&RequestHead> {
    pieces
        .iter()
        .filter_map(|p| match p {
            C::Head(h) => Some(h),
            _ => None,
        })
        .collect()
}

#[test]
fn pipelined_gets() {
    let s = b"GET /a HTTP/1.1\r\nHost: h\r\nX-Branch: b1\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /c HTTP/1.0\r\n\r\n";
    let (p, c) = client_one(s);
    assert_eq!(p.len(), 6);
    let h = heads(&p);
    assert_eq!(
        (
            h[0].method.as_str(),
            h[0].target.as_str(),
            h[0].header("x-branch")
        ),
        ("GET", "/a", Some("b1"))
    );
    assert_eq!(h[0].headers[0], ("Host".to_string(), "h".to_string()));
    assert_eq!(h[1].target, "/b?q=1");
    assert!(h[2].head_only && !h[0].head_only);
    assert!(p.iter().skip(1).step_by(2).all(|p| *p == C::End));
    assert_eq!(client_bytes(&p), s);
    assert!(c.idle() && !c.tunnelling());
}

#[test]
fn post_content_length_split() {
    let s = b"POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello worldGET / HTTP/1.1\r\n\r\n";
    let mut c = RequestCutter::new(DEFAULT_MAX_HEAD);
    let mut out = Vec::new();
    c.feed(&s[..45], &mut out).unwrap();
    let ClientPiece::Head(h) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(h.bytes, &s[..40]);
    assert_eq!(out[1..], [ClientPiece::Body(40..45)]);
    assert!(!c.idle());
    out.clear();
    c.feed(&s[45..], &mut out).unwrap();
    assert_eq!(out[0], ClientPiece::Body(0..6));
    assert_eq!(out[1], ClientPiece::End);
    assert!(matches!(&out[2], ClientPiece::Head(h) if h.target == "/"));
    assert_eq!(out[3], ClientPiece::End);
    assert_eq!(out.len(), 4);
    assert!(c.idle());
}

#[test]
fn partial_head_is_held() {
    let mut c = RequestCutter::new(DEFAULT_MAX_HEAD);
    let mut out = Vec::new();
    c.feed(b"\r\nGET / HT", &mut out).unwrap();
    assert!(out.is_empty() && !c.idle());
    c.feed(b"TP/1.1\r\n\r\n", &mut out).unwrap();
    let ClientPiece::Head(h) = &out[0] else {
        panic!()
    };
    assert_eq!(h.bytes, b"\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(h.method, "GET");
    assert!(c.idle());
}

const CHUNKED: &[u8] = b"POST /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
5;name=val\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\nGET /next HTTP/1.1\r\n\r\n";

#[test]
fn chunked_with_extensions_and_trailers() {
    let (p, c) = client_one(CHUNKED);
    let head_len = CHUNKED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body_end = CHUNKED.windows(5).position(|w| w == b"2\r\n\r\n").unwrap() + 5;
    assert_eq!(p.len(), 5, "{p:?}");
    assert!(matches!(&p[0], C::Head(h) if h.bytes == CHUNKED[..head_len]));
    assert_eq!(p[1], C::Body(CHUNKED[head_len..body_end].to_vec()));
    assert_eq!(p[2], C::End);
    assert!(matches!(&p[3], C::Head(h) if h.target == "/next"));
    assert!(c.idle());
}

#[test]
fn te_and_cl_is_chunked() {
    let s = b"POST / HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    let (p, c) = client_one(s);
    assert_eq!(p[1], C::Body(b"3\r\nabc\r\n0\r\n\r\n".to_vec()));
    assert_eq!(p[2], C::End);
    assert_eq!(heads(&p).len(), 2);
    assert!(c.idle());
}

#[test]
fn content_length_rules() {
    // Identical values, as fields or a list, are one length.
    let s = b"PUT / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2, 2\r\n\r\nok";
    let (p, _) = client_one(s);
    assert_eq!(p[1..], [C::Body(b"ok".to_vec()), C::End]);
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 2, 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 0x2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ] {
        let (p, r, c) = client(bad, &[], DEFAULT_MAX_HEAD);
        assert!(
            matches!(&r, Err(CutError::Malformed(m)) if m.contains("Content-Length")),
            "{r:?}"
        );
        assert!(p.is_empty());
        // Sticky.
        assert_eq!(
            c.clone().feed(b"GET / HTTP/1.1\r\n\r\n", &mut Vec::new()),
            r
        );
        assert!(!c.idle());
    }
}

#[test]
fn request_te_not_chunked_is_malformed() {
    let (_, r, _) = client(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        &[],
        1000,
    );
    assert!(matches!(r, Err(CutError::Malformed(m)) if m.contains("Transfer-Encoding")));
}

#[test]
fn bad_chunks() {
    let long = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;{}\r\n",
        "x".repeat(1100)
    );
    for (bad, what) in [
        (long.as_bytes(), "over 1024"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "chunk size",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            "chunk size",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+1\r\nx\r\n",
            "chunk size",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy",
            "CRLF",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx",
            "CRLF",
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            "chunk size",
        ),
    ] {
        let (_, r, _) = client(bad, &[], DEFAULT_MAX_HEAD);
        assert!(
            matches!(&r, Err(CutError::Malformed(m)) if m.contains(what)),
            "{r:?} {what}"
        );
    }
    // 1024 bytes of size line are fine, and leading zeros.
    let ok = format!(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000001;{}\r\nx\r\n0\r\n\r\n",
        "e".repeat(1024 - 21)
    );
    let (p, _) = client_one(ok.as_bytes());
    assert_eq!(p.last(), Some(&C::End));
}

#[test]
fn head_too_large() {
    let s = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(200));
    let (p, r, _) = client(s.as_bytes(), &[], 100);
    assert_eq!(r, Err(CutError::HeadTooLarge(100)));
    assert!(p.is_empty());
    // Split too, and an endless request line.
    let (_, r, _) = client(s.as_bytes(), &[10, 50, 99, 101], 100);
    assert_eq!(r, Err(CutError::HeadTooLarge(100)));
    let (_, r, _) = client(&[b'A'; 300], &[], 100);
    assert_eq!(r, Err(CutError::HeadTooLarge(100)));
    // Exactly the limit is fine.
    let (p, r, _) = client(s.as_bytes(), &[], s.len());
    assert!(r.is_ok() && p.len() == 2);
}

#[test]
fn websocket_upgrade_tunnels() {
    let s = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n\x81\x05hello GET / HTTP/1.1\r\n\r\n";
    let (p, c) = client_one(s);
    assert!(matches!(&p[0], C::Head(h) if h.upgrade));
    assert_eq!(p[1], C::End);
    let head_len = heads(&p)[0].bytes.len();
    assert_eq!(p[2..], [C::Tunnel(s[head_len..].to_vec())]);
    assert!(c.tunnelling() && !c.idle());
    // Upgrade without Connection: upgrade is a plain request.
    let (p, c) = client_one(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert!(!heads(&p)[0].upgrade && !c.tunnelling() && heads(&p).len() == 2);
}

#[test]
fn connect_and_upgrade_with_body_tunnel_after_end() {
    let (p, c) = client_one(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03\x01");
    assert!(matches!(&p[0], C::Head(h) if h.upgrade && h.is_connect()));
    assert_eq!(p[1..], [C::End, C::Tunnel(b"\x16\x03\x01".to_vec())]);
    assert!(c.tunnelling());
    let s =
        b"POST /u HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\nContent-Length: 3\r\n\r\nabcRAW";
    let (p, _, c) = client(s, &[70, 72], DEFAULT_MAX_HEAD);
    assert_eq!(
        p[1..],
        [C::Body(b"abc".to_vec()), C::End, C::Tunnel(b"RAW".to_vec())]
    );
    assert!(c.tunnelling());
}

#[test]
fn not_http_is_malformed_early() {
    for bad in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/2\r\n",
        b"GET /\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ] {
        let (p, r, _) = client(bad, &[], DEFAULT_MAX_HEAD);
        assert!(
            matches!(&r, Err(CutError::Malformed(m)) if m.contains("request line")),
            "{bad:?} {r:?}"
        );
        assert!(p.is_empty());
    }
    // At the first wrong byte: no need to wait for more.
    let mut c = RequestCutter::new(DEFAULT_MAX_HEAD);
    assert!(c.feed(b"\x16", &mut Vec::new()).is_err());
}

#[test]
fn malformed_header_lines() {
    for (bad, what) in [
        (
            &b"GET / HTTP/1.1\r\nA: b\r\n  folded\r\n\r\n"[..],
            "folding",
        ),
        (b"GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n", "token"),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "colon"),
        (
            b"GET / HTTP/1.1\r\nA: b\nContent-Length: 5\r\n\r\n",
            "bare CR or LF",
        ),
        (b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", "control"),
    ] {
        let (_, r, _) = client(bad, &[], DEFAULT_MAX_HEAD);
        assert!(
            matches!(&r, Err(CutError::Malformed(m)) if m.contains(what)),
            "{r:?} {what}"
        );
    }
}

/// Streams exercising every client feature, for the split tests.
fn client_streams() -> Vec<Vec<u8>> {
    vec![
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n".to_vec(),
        CHUNKED.to_vec(),
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n12345HEAD / HTTP/1.1\r\nX: y\r\n\r\n"
            .to_vec(),
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x00\x01\r\n\r\nGET"
            .to_vec(),
        b"GET / HTTP/1.1\r\nA: b\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n  fold\r\n\r\n".to_vec(),
        // An error in a body: the bytes before it are passed on, whatever the feeds.
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nxyz\r\n".to_vec(),
    ]
}

#[test]
fn every_split_point_and_byte_at_a_time() {
    for s in client_streams() {
        let (whole, r, _) = client(&s, &[], DEFAULT_MAX_HEAD);
        if r.is_ok() {
            assert_eq!(client_bytes(&whole), s);
        }
        for cut in 0..=s.len() {
            let (p, r2, _) = client(&s, &[cut], DEFAULT_MAX_HEAD);
            assert_eq!((&p, &r2), (&whole, &r), "cut at {cut}");
        }
        let all: Vec<usize> = (1..s.len()).collect();
        let (p, r2, _) = client(&s, &all, DEFAULT_MAX_HEAD);
        assert_eq!((&p, &r2), (&whole, &r), "byte at a time");
    }
    // The body error: "2\r\nxy" passed on, then the error at the "z".
    let s = &client_streams()[5];
    let (p, r, _) = client(s, &[], DEFAULT_MAX_HEAD);
    assert_eq!(p[1], C::Body(b"3\r\nabc\r\n2\r\nxy".to_vec()));
    assert!(matches!(r, Err(CutError::Malformed(m)) if m.contains("CRLF")));
}

proptest! {
    #[test]
    fn random_splits_are_invariant(
        which in 0usize..6,
        mut cuts in proptest::collection::vec(0usize..200, 0..8),
    ) {
        let s = &client_streams()[which];
        cuts.iter_mut().for_each(|c| *c = (*c).min(s.len()));
        cuts.sort_unstable();
        let whole = client(s, &[], DEFAULT_MAX_HEAD);
        let split = client(s, &cuts, DEFAULT_MAX_HEAD);
        prop_assert_eq!((&whole.0, &whole.1), (&split.0, &split.1));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_pieces_are_the_stream(
        s in proptest::collection::vec(prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b' '), Just(b':'), Just(b'0'), Just(b'G'),
            any::<u8>(),
        ], 0..200),
        cut in 0usize..200,
    ) {
        let mut prefix = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        prefix.extend_from_slice(&s);
        let cut = cut.min(prefix.len());
        let (p, r, c) = client(&prefix, &[cut], 256);
        let bytes = client_bytes(&p);
        prop_assert!(prefix.starts_with(&bytes));
        if r.is_ok() && c.idle() {
            prop_assert_eq!(bytes, prefix);
        }
    }
}

// ---- server side ----

/// A server piece with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum S {
    Head(Vec<u8>),
    Body(Vec<u8>),
    End,
    Tunnel(Vec<u8>),
}

/// Feeds `stream` cut at `cuts`, calling feed again on what an End left; then `finish`
/// when `close`. Pieces (bodies merged), the first error, and the cutter.
fn server(
    stream: &[u8],
    cuts: &[usize],
    expect: &[(bool, bool)],
    close: bool,
) -> (Vec<S>, Result<(), CutError>, ResponseCutter) {
    let mut c = ResponseCutter::new(DEFAULT_MAX_HEAD);
    for &(h, k) in expect {
        c.expect(h, k);
    }
    let mut pieces = Vec::new();
    let push = |out: Vec<ServerPiece>, data: &[u8], pieces: &mut Vec<S>| {
        for p in out {
            let p = match p {
                ServerPiece::Head(h) => S::Head(h),
                ServerPiece::Body(r) => {
                    assert!(!r.is_empty() && r.end <= data.len());
                    S::Body(data[r].to_vec())
                }
                ServerPiece::End => S::End,
                ServerPiece::Tunnel(r) => {
                    assert!(!r.is_empty() && r.end <= data.len());
                    S::Tunnel(data[r].to_vec())
                }
            };
            match (pieces.last_mut(), p) {
                (Some(S::Body(a)), S::Body(b)) | (Some(S::Tunnel(a)), S::Tunnel(b)) => {
                    a.extend_from_slice(&b)
                }
                (_, p) => pieces.push(p),
            }
        }
    };
    let mut last = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        let mut data = &stream[last..end];
        last = end;
        while !data.is_empty() {
            let mut out = Vec::new();
            let r = c.feed(data, &mut out);
            push(out, data, &mut pieces);
            match r {
                Ok(n) => {
                    assert!(n > 0 && n <= data.len());
                    data = &data[n..];
                }
                Err(e) => return (pieces, Err(e), c),
            }
        }
    }
    let mut r = Ok(());
    if close {
        let mut out = Vec::new();
        r = c.finish(&mut out);
        push(out, &[], &mut pieces);
    }
    (pieces, r, c)
}

fn h(s: &[u8]) -> S {
    S::Head(s.to_vec())
}

fn b(s: &[u8]) -> S {
    S::Body(s.to_vec())
}

#[test]
fn continue_then_ok() {
    let s = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    let (p, r, c) = server(s, &[], &[(false, false)], false);
    r.unwrap();
    assert_eq!(
        p,
        [
            h(b"HTTP/1.1 100 Continue\r\n\r\n"),
            h(b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"),
            h(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
            b(b"hi"),
            S::End
        ]
    );
    assert_eq!(c.awaiting(), 0);
    // Only the interim answer so far: still awaited, and a close then is a truncation.
    let (p, r, c) = server(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        &[],
        &[(false, false)],
        true,
    );
    assert_eq!(p.len(), 1);
    assert_eq!(r, Err(CutError::Truncated));
    assert_eq!(c.awaiting(), 1);
}

#[test]
fn head_204_304_have_no_body() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx";
    let (p, r, c) = server(
        s,
        &[],
        &[
            (true, false),
            (false, false),
            (false, false),
            (false, false),
        ],
        false,
    );
    r.unwrap();
    let ends = p.iter().filter(|p| **p == S::End).count();
    assert_eq!(ends, 4, "{p:?}");
    assert_eq!(p[0], h(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"));
    assert_eq!(p[1], S::End);
    assert_eq!(
        p[6..],
        [
            h(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"),
            b(b"x"),
            S::End
        ]
    );
    assert_eq!(c.awaiting(), 0);
}

#[test]
fn chunked_response_with_trailers() {
    let body = b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nExpires: never\r\n\r\n";
    let mut s = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    s.extend_from_slice(body);
    let (p, r, _) = server(&s, &[], &[(false, false)], false);
    r.unwrap();
    assert_eq!(p[1..], [b(body), S::End]);
}

#[test]
fn read_until_close() {
    let s = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, until the end";
    let (p, r, c) = server(s, &[50], &[(false, false)], true);
    r.unwrap();
    assert_eq!(p[1..], [b(b"all of it, until the end"), S::End]);
    assert_eq!(c.awaiting(), 0);
    // A transfer coding other than chunked is read until close too.
    let (p, r, _) = server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz",
        &[],
        &[(false, false)],
        true,
    );
    r.unwrap();
    assert_eq!(p[1..], [b(b"zz"), S::End]);
}

#[test]
fn finish_mid_body_is_truncated() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
    let (p, r, c) = server(s, &[], &[(false, false)], true);
    assert_eq!(p[1..], [b(b"abc")]);
    assert_eq!(r, Err(CutError::Truncated));
    assert_eq!(c.awaiting(), 1);
    let (_, r, _) = server(
        b"HTTP/1.1 200 OK\r\nContent-Le",
        &[],
        &[(false, false)],
        true,
    );
    assert_eq!(r, Err(CutError::Truncated));
    // Nothing in progress: fine, no piece.
    let (p, r, c) = server(b"", &[], &[(false, false)], true);
    assert!(r.is_ok() && p.is_empty() && c.awaiting() == 1);
}

#[test]
fn switching_protocols_tunnels() {
    let s = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi";
    let (p, r, c) = server(s, &[], &[(false, false)], true);
    r.unwrap();
    assert_eq!(p, [h(&s[..s.len() - 4]), S::Tunnel(b"\x81\x02hi".to_vec())]);
    assert!(c.tunnelling());
    assert_eq!(c.awaiting(), 0);
    // CONNECT: 2xx tunnels (its Content-Length ignored), other answers are framed.
    let (p, _, c) = server(
        b"HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\n\r\n\x16\x03",
        &[],
        &[(false, true)],
        false,
    );
    assert_eq!(p[1..], [S::Tunnel(b"\x16\x03".to_vec())]);
    assert!(c.tunnelling());
    let (p, _, c) = server(
        b"HTTP/1.1 407 Auth\r\nContent-Length: 1\r\n\r\nx",
        &[],
        &[(false, true)],
        false,
    );
    assert_eq!(p[1..], [b(b"x"), S::End]);
    assert!(!c.tunnelling());
}

#[test]
fn feed_stops_at_end() {
    let first = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    let second = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
    let mut s = first.to_vec();
    s.extend_from_slice(second);
    let mut c = ResponseCutter::new(DEFAULT_MAX_HEAD);
    c.expect(false, false);
    c.expect(false, false);
    assert_eq!(c.awaiting(), 2);
    let mut out = Vec::new();
    let n = c.feed(&s, &mut out).unwrap();
    assert_eq!(n, first.len());
    assert_eq!(
        out,
        [
            ServerPiece::Head(first[..first.len() - 3].to_vec()),
            ServerPiece::Body(38..41),
            ServerPiece::End
        ]
    );
    assert_eq!(c.awaiting(), 1);
    out.clear();
    assert_eq!(c.feed(&s[n..], &mut out).unwrap(), second.len());
    assert_eq!(out, [ServerPiece::Head(second.to_vec()), ServerPiece::End]);
    assert_eq!(c.awaiting(), 0);
    assert_eq!(c.feed(&[], &mut out), Ok(0));
}

#[test]
fn bytes_with_nothing_expected() {
    let (p, r, _) = server(b"HTTP/1.1 200 OK\r\n\r\n", &[], &[], false);
    assert!(p.is_empty());
    assert_eq!(
        r,
        Err(CutError::Malformed("bytes before any request".into()))
    );
    // After the only answer too.
    let (p, r, c) = server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nX",
        &[],
        &[(false, false)],
        false,
    );
    assert_eq!(p.len(), 2);
    assert_eq!(
        r,
        Err(CutError::Malformed("bytes before any request".into()))
    );
    // Sticky.
    assert_eq!(c.clone().finish(&mut Vec::new()), r);
}

#[test]
fn malformed_responses() {
    for (bad, what) in [
        (&b"HTTP/2 200\r\n\r\n"[..], "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "status line"),
        (b"<html>", "status line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
            "chunk size",
        ),
    ] {
        let (_, r, _) = server(bad, &[], &[(false, false)], false);
        assert!(
            matches!(&r, Err(CutError::Malformed(m)) if m.contains(what)),
            "{r:?} {what}"
        );
    }
    // No reason phrase, not even its space: fine.
    let (p, r, _) = server(b"HTTP/1.1 204\r\n\r\n", &[], &[(false, false)], false);
    assert!(r.is_ok() && p.len() == 2);
    let mut c = ResponseCutter::new(50);
    c.expect(false, false);
    let r = c.feed(
        format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "y".repeat(60)).as_bytes(),
        &mut Vec::new(),
    );
    assert_eq!(r, Err(CutError::HeadTooLarge(50)));
}

/// Requests announced: (head_only, connect).
type Expected = Vec<(bool, bool)>;

fn server_streams() -> Vec<(Vec<u8>, Expected)> {
    let mut a = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n".to_vec();
    a.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nuntil close");
    let b = b"HTTP/1.1 101 Switching\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n\r\n".to_vec();
    vec![
        (
            a,
            vec![
                (false, false),
                (true, false),
                (false, false),
                (false, false),
            ],
        ),
        (b, vec![(false, false), (false, false)]),
    ]
}

#[test]
fn server_every_split_point() {
    for (s, expect) in server_streams() {
        let (whole, r, _) = server(&s, &[], &expect, true);
        r.unwrap();
        let mut bytes = Vec::new();
        for p in &whole {
            match p {
                S::Head(b) | S::Body(b) | S::Tunnel(b) => bytes.extend_from_slice(b),
                S::End => {}
            }
        }
        assert_eq!(bytes, s);
        for cut in 0..=s.len() {
            let (p, r, _) = server(&s, &[cut], &expect, true);
            assert_eq!((&p, &r), (&whole, &Ok(())), "cut at {cut}");
        }
        let all: Vec<usize> = (1..s.len()).collect();
        let (p, r, _) = server(&s, &all, &expect, true);
        assert_eq!((&p, &r), (&whole, &Ok(())), "byte at a time");
    }
}

// ---- rules ----

fn req(s: &[u8]) -> RequestHead {
    let (p, _) = client_one(s);
    heads(&p)[0].clone()
}

#[test]
fn rules_match() {
    let r = HeaderRule::new("X-Branch", Some("feature-1")).unwrap();
    assert!(r.matches(&req(b"GET / HTTP/1.1\r\nx-bRANCH:   feature-1  \r\n\r\n")));
    assert!(!r.matches(&req(b"GET / HTTP/1.1\r\nX-Branch: Feature-1\r\n\r\n")));
    assert!(!r.matches(&req(b"GET / HTTP/1.1\r\nX-Branch: feature-10\r\n\r\n")));
    assert!(!r.matches(&req(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")));
    // Any field of that name counts.
    assert!(r.matches(&req(
        b"GET / HTTP/1.1\r\nX-Branch: main\r\nX-Branch: feature-1\r\n\r\n"
    )));
    let present = HeaderRule::new("x-shadow", None).unwrap();
    assert!(present.matches(&req(b"GET / HTTP/1.1\r\nX-Shadow:\r\n\r\n")));
    assert!(!present.matches(&req(b"GET / HTTP/1.1\r\nX-Shadowed: 1\r\n\r\n")));
    let spaced = HeaderRule::new("Cookie", Some(" a=1; b=2 ")).unwrap();
    assert_eq!(spaced.value.as_deref(), Some("a=1; b=2"));
    assert!(spaced.matches(&req(b"GET / HTTP/1.1\r\ncookie: a=1; b=2\r\n\r\n")));
}

#[test]
fn rules_rejected() {
    for (name, value, what) in [
        ("", None, "header name: empty"),
        ("X Branch", None, "not a token"),
        ("X-Branch:", None, "not a token"),
        ("Ü", None, "not a token"),
        (&*"x".repeat(129), None, "over the limit of 128"),
        ("X", Some("a\r\nInjected: 1"), "CR or LF"),
        ("X", Some("tab\there"), "not visible ASCII"),
        ("X", Some("é"), "not visible ASCII"),
        ("X", Some(&*"v".repeat(1025)), "over the limit of 1024"),
    ] {
        let e = HeaderRule::new(name, value).unwrap_err();
        assert!(e.contains(what), "{e} / {what}");
    }
    assert!(HeaderRule::new(&"x".repeat(128), Some(&"v".repeat(1024))).is_ok());
    assert!(HeaderRule::new("!#$%&'*+-.^_`|~09az", Some("")).is_ok());
}
