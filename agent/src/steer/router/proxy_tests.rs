//! The request router's connection handling against scripted servers on loopback: each
//! side at its own address ([`RouterShared::fixed`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use weft_reqroute::HeaderRule;

use super::proxy::{self, ORIGIN, TARGET};
use super::{PortRules, RouterShared};

/// A fixed HTTP/1.1 server: every request is answered with `"<name> <method> <path>
/// <body bytes> <sum of body bytes>"`; the origin frames with Content-Length, the target
/// with chunked encoding (both kinds pass the router). Non-HTTP first bytes are echoed.
async fn server(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(serve_one(s, name));
        }
    });
    addr
}

async fn serve_one(mut s: TcpStream, name: &'static str) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 65536];
    loop {
        // A head.
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if !buf.is_empty() && !buf[0].is_ascii_uppercase() {
                // Not HTTP: echo.
                let _ = s.write_all(&buf).await;
                buf.clear();
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut words = head.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
        );
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < len {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        let text = format!("{name} {method} {path} {} {sum}", body.len());
        let answer = if name == "origin" {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        } else {
            let (a, b) = text.split_at(text.len() / 2);
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        };
        if s.write_all(answer.as_bytes()).await.is_err() || path.ends_with("/close") {
            return;
        }
    }
}

/// A router for one port on loopback, and the address clients connect to.
async fn router(rules: Vec<HeaderRule>) -> (SocketAddr, Arc<RouterShared>) {
    let shared = Arc::new(RouterShared::fixed(
        server("origin").await,
        server("target").await,
    ));
    let rules: Arc<PortRules> = Arc::new(RwLock::new(Arc::new(rules)));
    (listen(rules, shared.clone()).await, shared)
}

/// Serves every connection to the address it returns with `rules` and `shared`.
pub(super) async fn listen(rules: Arc<PortRules>, shared: Arc<RouterShared>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((c, _)) = l.accept().await else { return };
            let (rules, s) = (rules.clone(), shared.clone());
            tokio::spawn(async move {
                let ends = super::Ends {
                    client: c.peer_addr().unwrap(),
                    dst: addr,
                };
                let _ = proxy::serve(c, ends, rules, s).await;
            });
        }
    });
    addr
}

fn branch_rule() -> Vec<HeaderRule> {
    vec![HeaderRule::new("X-Branch", Some("w1")).unwrap()]
}

/// Reads answers off `c` until `n` bodies are complete, decoding both framings.
async fn bodies(c: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 65536];
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        if let Some((body, used)) = one_body(&buf) {
            out.push(body);
            buf.drain(..used);
            continue;
        }
        let r = tokio::time::timeout_at(deadline, c.read(&mut tmp)).await;
        match r {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&tmp[..k]),
            other => panic!(
                "answers ended after {out:?} ({other:?}), holding {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    out
}

fn one_body(buf: &[u8]) -> Option<(String, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    if let Some(len) = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap())
    }) {
        return (buf.len() >= end + len).then(|| {
            (
                String::from_utf8_lossy(&buf[end..end + len]).into_owned(),
                end + len,
            )
        });
    }
    // Chunked.
    let mut at = end;
    let mut body = Vec::new();
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size =
            usize::from_str_radix(std::str::from_utf8(&buf[at..line_end]).ok()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            return (buf.len() >= at + 2)
                .then(|| (String::from_utf8_lossy(&body).into_owned(), at + 2));
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

#[tokio::test]
async fn requests_on_one_connection_go_to_the_side_their_header_says_in_order() {
    let (addr, shared) = router(branch_rule()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // Pipelined, in one write: the answers come back in request order whichever side
    // answers (the target's, chunked, wait behind the origin's and the other way round).
    c.write_all(
        b"GET /1 HTTP/1.1\r\nHost: h\r\nX-Branch: w1\r\n\r\n\
          GET /2 HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /3 HTTP/1.1\r\nhost: h\r\nx-branch:   w1  \r\n\r\n\
          GET /4 HTTP/1.1\r\nHost: h\r\nX-Branch: w2\r\n\r\n",
    )
    .await
    .unwrap();
    let got = bodies(&mut c, 4).await;
    assert_eq!(
        got,
        [
            "target GET /1 0 0",
            "origin GET /2 0 0",
            "target GET /3 0 0",
            "origin GET /4 0 0"
        ]
    );
    // One by one on the same connection, too.
    for (i, header, side) in [
        (5, true, "target"),
        (6, false, "origin"),
        (7, true, "target"),
    ] {
        let h = if header { "X-Branch: w1\r\n" } else { "" };
        c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: h\r\n{h}\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(bodies(&mut c, 1).await, [format!("{side} GET /{i} 0 0")]);
    }
    assert_eq!(shared.requests[ORIGIN].load(Relaxed), 3);
    assert_eq!(shared.requests[TARGET].load(Relaxed), 4);
}

#[tokio::test]
async fn a_large_body_arrives_whole_on_its_side() {
    let (addr, _) = router(branch_rule()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let head = format!(
        "POST /up HTTP/1.1\r\nHost: h\r\nX-Branch: w1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(head.as_bytes()).await.unwrap();
        // In pieces, as a client would send it.
        for piece in body.chunks(10_000) {
            w.write_all(piece).await.unwrap();
        }
        w.write_all(b"POST /small HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
            .await
            .unwrap();
    };
    let mut rc = Vec::new();
    let recv = async {
        let mut tmp = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut out = Vec::new();
            let mut at = 0;
            while let Some((b, used)) = one_body(&rc[at..]) {
                out.push(b);
                at += used;
            }
            if out.len() == 2 {
                return out;
            }
            let n = tokio::time::timeout_at(deadline, r.read(&mut tmp))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed early");
            rc.extend_from_slice(&tmp[..n]);
        }
    };
    let ((), got) = tokio::join!(send, recv);
    assert_eq!(
        got,
        [
            format!("target POST /up 1048576 {sum}"),
            format!(
                "origin POST /small 3 {}",
                u64::from(b'a') + u64::from(b'b') + u64::from(b'c')
            )
        ]
    );
}

#[tokio::test]
async fn a_connection_that_is_not_http_goes_whole_to_the_origin() {
    let (addr, shared) = router(branch_rule()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let hello = b"\x16\x03\x01 not http at all";
    c.write_all(hello).await.unwrap();
    let mut got = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, hello);
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest)).await;
    assert_eq!(
        shared.requests[ORIGIN].load(Relaxed) + shared.requests[TARGET].load(Relaxed),
        0
    );
}

#[tokio::test]
async fn a_port_without_rules_is_relayed_whole_to_the_target() {
    let (addr, _) = router(Vec::new()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["target GET /a 0 0"]);
}

#[tokio::test]
async fn a_rule_change_applies_to_the_next_request_of_a_connection() {
    let shared = Arc::new(RouterShared::fixed(
        server("origin").await,
        server("target").await,
    ));
    let rules: Arc<PortRules> = Arc::new(RwLock::new(Arc::new(branch_rule())));
    let addr = listen(rules.clone(), shared).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = b"GET /x HTTP/1.1\r\nHost: h\r\nX-Canary: 1\r\n\r\n";
    c.write_all(req).await.unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["origin GET /x 0 0"]);
    *rules.write().unwrap() = Arc::new(vec![HeaderRule::new("x-canary", None).unwrap()]);
    c.write_all(req).await.unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["target GET /x 0 0"]);
}

#[tokio::test]
async fn a_side_that_closed_an_idle_connection_is_connected_anew() {
    let (addr, shared) = router(branch_rule()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    // The origin closes after answering ".../close" (as a server whose keep-alive timed
    // out); the client's connection stays, and its next request reaches the origin again.
    c.write_all(b"GET /a/close HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["origin GET /a/close 0 0"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.write_all(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["origin GET /b 0 0"]);
    assert_eq!(shared.requests[ORIGIN].load(Relaxed), 2);
}

#[tokio::test]
async fn an_upgrade_keeps_the_connection_on_its_side_raw() {
    // The target answers the upgrade request like any other (200: declined); from then on
    // the client's bytes are no HTTP/1 to the router and go raw to the target, whose
    // answers come back raw.
    let (addr, shared) = router(branch_rule()).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nX-Branch: w1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["target GET /ws 0 0"]);
    // No header, yet the target answers: the connection is the target's now.
    c.write_all(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(bodies(&mut c, 1).await, ["target GET /after 0 0"]);
    assert_eq!(shared.requests[ORIGIN].load(Relaxed), 0);
}

#[tokio::test]
async fn a_request_that_ends_its_connection_ends_it_after_its_answer() {
    // `Connection: close` (what a client sends when it makes a connection per request):
    // after the answer the client sees the connection end, as it would from the server.
    let (addr, _) = router(branch_rule()).await;
    for header in ["", "X-Branch: w1\r\n"] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET /c HTTP/1.1\r\nHost: h\r\n{header}Connection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut all))
            .await
            .expect("the connection ends after the answer")
            .unwrap();
        let (body, used) = one_body(&all).expect("a whole answer");
        assert_eq!(used, all.len());
        let side = if header.is_empty() {
            "origin"
        } else {
            "target"
        };
        assert_eq!(body, format!("{side} GET /c 0 0"));
    }
}

#[test]
fn which_heads_end_their_connection() {
    use super::proxy::{ends_connection, final_status};
    assert!(ends_connection(
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"
    ));
    assert!(ends_connection(
        b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\n\r\n"
    ));
    assert!(ends_connection(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n"));
    assert!(!ends_connection(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    ));
    assert!(!ends_connection(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert!(!ends_connection(
        b"HTTP/1.1 200 OK\r\nX-Connection: close\r\n\r\n"
    ));
    assert!(final_status(b"HTTP/1.1 200 OK\r\n\r\n"));
    assert!(!final_status(b"HTTP/1.1 100 Continue\r\n\r\n"));
}

#[tokio::test]
async fn an_unreachable_side_is_a_502_in_its_turn() {
    // The target refuses (nothing listens there): the origin's answer before it comes
    // first, then a 502 naming the target, then the end of the connection.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let shared = Arc::new(RouterShared::fixed(server("origin").await, nowhere));
    let rules: Arc<PortRules> = Arc::new(RwLock::new(Arc::new(branch_rule())));
    let addr = listen(rules, shared).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\nX-Branch: w1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut all))
        .await
        .expect("the connection ends")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    let (first, used) = one_body(&all).unwrap();
    assert_eq!(first, "origin GET /1 0 0");
    let rest = String::from_utf8_lossy(&all[used..]);
    assert!(rest.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
    assert!(rest.contains("the target is unreachable"), "{text}");
}
