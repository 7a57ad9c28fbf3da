//! The request router's h2c half against HTTP/2 servers on loopback (hyper): streams of
//! one client connection routed one by one, answers with their trailers (gRPC's status),
//! and a side that cannot be reached.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use weft_reqroute::HeaderRule;

use super::proxy::{ORIGIN, TARGET};
use super::{PortRules, RouterShared};

type Frames =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// An h2c server answering `"<name> <method> <path> <request body bytes>"` with the
/// trailer `grpc-status` 0, or 13 for a path ending in `/fail`.
async fn h2_server(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let (parts, body) = req.into_parts();
                        let n = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let text = format!("{name} {} {} {n}", parts.method, parts.uri.path());
                        let mut trailers = hyper::HeaderMap::new();
                        let status = if parts.uri.path().ends_with("/fail") {
                            "13"
                        } else {
                            "0"
                        };
                        trailers.insert("grpc-status", status.parse().unwrap());
                        let frames = vec![
                            Ok(Frame::data(Bytes::from(text))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        let body: Frames = StreamBody::new(futures::stream::iter(frames));
                        Ok::<_, Infallible>(Response::new(body))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    addr
}

/// A router for one port on loopback between `origin` and `target`.
async fn router(
    origin: SocketAddr,
    target: SocketAddr,
    rules: Vec<HeaderRule>,
) -> (SocketAddr, Arc<RouterShared>) {
    let shared = Arc::new(RouterShared::fixed(origin, target));
    let rules: Arc<PortRules> = Arc::new(RwLock::new(Arc::new(rules)));
    (
        super::proxy_tests::listen(rules, shared.clone()).await,
        shared,
    )
}

/// One h2c client connection to `addr`.
async fn client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Status, body and `grpc-status` trailer of one request.
async fn call(
    send: &hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    header: Option<(&str, &str)>,
    body: &'static [u8],
) -> (u16, String, Option<String>) {
    let mut b = Request::builder()
        .method(if body.is_empty() { "GET" } else { "POST" })
        .uri(format!("http://svc{path}"));
    if let Some((n, v)) = header {
        b = b.header(n, v);
    }
    let mut send = send.clone();
    send.ready().await.unwrap();
    let resp = send
        .send_request(b.body(Full::new(Bytes::from_static(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.unwrap();
    let trailer = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailer,
    )
}

#[tokio::test]
async fn h2c_streams_of_one_connection_go_each_to_its_side_with_their_trailers() {
    let (origin, target) = (h2_server("origin").await, h2_server("target").await);
    let rules = vec![HeaderRule::new("X-Branch", Some("w1")).unwrap()];
    let (addr, shared) = router(origin, target, rules).await;
    let send = client(addr).await;
    // Twelve streams at once on one connection: every third carries the header (in
    // another case), one the header with another value.
    let calls = (0..12).map(|i| {
        let send = &send;
        async move {
            let header = match i % 3 {
                0 => Some(("x-BRANCH", "w1")),
                1 => Some(("X-Branch", "w2")),
                _ => None,
            };
            let path = if i == 6 {
                "/call/fail".to_owned()
            } else {
                format!("/call/{i}")
            };
            (
                i,
                call(send, &path, header, if i == 9 { b"hello" } else { b"" }).await,
            )
        }
    });
    for (i, (status, body, trailer)) in futures::future::join_all(calls).await {
        assert_eq!(status, 200, "stream {i}: {body}");
        let side = if i % 3 == 0 { "target" } else { "origin" };
        assert!(
            body.starts_with(side),
            "stream {i} must reach the {side}: {body}"
        );
        if i == 9 {
            assert!(
                body.ends_with("POST /call/9 5"),
                "the request body goes along: {body}"
            );
        }
        let want = if i == 6 { "13" } else { "0" };
        assert_eq!(
            trailer.as_deref(),
            Some(want),
            "stream {i}: trailers come back"
        );
    }
    assert_eq!(shared.requests[TARGET].load(Relaxed), 4);
    assert_eq!(shared.requests[ORIGIN].load(Relaxed), 8);
    assert_eq!(shared.h2c.load(Relaxed), 1, "one h2c connection");
    // A later stream on the same connection reuses the router's connection to its side.
    let (_, body, _) = call(&send, "/after", Some(("x-branch", "w1")), b"").await;
    assert!(body.starts_with("target"), "{body}");
}

#[tokio::test]
async fn an_h2c_stream_to_a_side_that_cannot_be_reached_is_a_502_and_the_others_go_on() {
    let origin = h2_server("origin").await;
    // A port nobody listens on.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let rules = vec![HeaderRule::new("X-Branch", None).unwrap()];
    let (addr, _) = router(origin, gone, rules).await;
    let send = client(addr).await;
    let (status, body, _) = call(&send, "/a", Some(("x-branch", "anything")), b"").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("target"), "the answer names the side: {body}");
    let (status, body, trailer) = call(&send, "/b", None, b"").await;
    assert_eq!((status, trailer.as_deref()), (200, Some("0")), "{body}");
    assert!(body.starts_with("origin"), "{body}");
}

#[tokio::test]
async fn http1_still_goes_through_the_http1_half_next_to_h2c() {
    // The same router serves HTTP/1.1 on another connection: the preface decides.
    let (origin, target) = (h2_server("origin").await, h2_server("target").await);
    let (addr, shared) = router(
        origin,
        target,
        vec![HeaderRule::new("X-Branch", None).unwrap()],
    )
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // An h2-only server answers an HTTP/1 request with its own preface and GOAWAY (or
    // closes): either way not an h2 stream of the router's, and nothing was counted as one.
    let mut buf = vec![0u8; 1024];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await;
    assert_eq!(shared.requests[TARGET].load(Relaxed), 0);
    assert_eq!(shared.h2c.load(Relaxed), 0, "HTTP/1 is not h2c");
    assert_eq!(
        shared.requests[ORIGIN].load(Relaxed),
        1,
        "one HTTP/1 request, to the origin"
    );
}
