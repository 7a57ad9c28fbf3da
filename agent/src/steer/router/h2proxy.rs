//! h2c connections of a request router (HTTP/2 with prior knowledge, as gRPC speaks it):
//! each stream is routed on its own.
//!
//! ```text
//!  client --h2--> router (hyper server) --stream with a matching header--> h2 connection
//!                                                                          to the target
//!                                       --any other stream-------------->  h2 connection
//!                                                                          to the origin
//! ```
//!
//! HTTP/2 cannot be cut and relayed byte for byte as HTTP/1 is: the streams of one
//! connection share one HPACK table, one flow-control window and one stream-id space. So
//! the router ends the client's HTTP/2 connection and opens its own to each side (made
//! on first use inside that side's namespace, to the address the client asked for, and
//! made anew once the server closed it); each request is decoded, matched against the
//! port's rules and sent on the chosen side's connection, and its answer (headers, body
//! and trailers: gRPC's `grpc-status` included) comes back on the client's stream as it
//! streams in. Headers are encoded anew (HPACK), so the bytes differ from the client's
//! while the requests and answers are the same; streams run concurrently on both sides.
//! A side that cannot be reached answers its streams with 502.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::proxy::{ORIGIN, Outcome, SIDES, TARGET};
use super::{Ends, PortRules, RouterShared};

/// The client connection preface of HTTP/2 (RFC 9113 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long the first bytes may take to show whether a connection is h2c.
const PREFACE_WAIT: Duration = Duration::from_secs(1);
/// Streams a client may have open at once on its connection to the router.
const MAX_STREAMS: u32 = 256;

type Body = BoxBody<Bytes, hyper::Error>;

/// Whether `client` starts with HTTP/2's connection preface (looked at without reading
/// it). Waits for the first bytes at most [`PREFACE_WAIT`] once they began as the
/// preface; any other start is not h2c.
pub async fn starts_h2c(client: &TcpStream) -> io::Result<bool> {
    let deadline = tokio::time::Instant::now() + PREFACE_WAIT;
    let mut seen = [0u8; PREFACE.len()];
    loop {
        let n = client.peek(&mut seen).await?;
        if n == 0 || seen[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        // More of the preface is on its way (peek returns at once while data waits).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The router's HTTP/2 connection to each side, made on first use.
struct Sides {
    ends: Ends,
    shared: Arc<RouterShared>,
    senders: [tokio::sync::Mutex<Option<SendRequest<Incoming>>>; 2],
}

impl Sides {
    async fn sender(&self, side: usize) -> io::Result<SendRequest<Incoming>> {
        let mut held = self.senders[side].lock().await;
        if let Some(s) = held.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tcp = self.shared.connect(side, self.ends).await?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| {
                io::Error::other(format!("{} {}: HTTP/2: {e}", SIDES[side], self.ends.dst))
            })?;
        tokio::spawn(async move {
            // Ends when the server closes or every sender is gone.
            let _ = conn.await;
        });
        *held = Some(send.clone());
        Ok(send)
    }
}

/// Whether a request's headers satisfy one of `rules` (name in any case; the value
/// trimmed and equal, or any value for a rule without one).
pub fn matches(rules: &[weft_reqroute::HeaderRule], headers: &hyper::HeaderMap) -> bool {
    rules.iter().any(|r| {
        headers.get_all(r.name.as_str()).iter().any(|v| {
            r.value
                .as_deref()
                .is_none_or(|want| v.to_str().is_ok_and(|v| v.trim_matches(' ') == want))
        })
    })
}

fn bad_gateway(error: &io::Error) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(format!("weft request router: {error}\n")))
        .map_err(|never: Infallible| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

/// Serves one h2c client connection (`ends`: see [`super::proxy::serve`]); `rules` are
/// read at every stream.
pub async fn serve(
    client: TcpStream,
    ends: Ends,
    rules: Arc<PortRules>,
    shared: Arc<RouterShared>,
) -> io::Result<Outcome> {
    shared
        .h2c
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dst = ends.dst;
    let sides = Arc::new(Sides {
        ends,
        shared: shared.clone(),
        senders: [tokio::sync::Mutex::new(None), tokio::sync::Mutex::new(None)],
    });
    let counts = Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let service = {
        let counts = counts.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (sides, rules, counts) = (sides.clone(), rules.clone(), counts.clone());
            async move {
                let rules = super::proxy::current(&rules);
                let side = if rules.is_empty() || matches(&rules, req.headers()) {
                    TARGET
                } else {
                    ORIGIN
                };
                counts[side].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sides.shared.count_request(side);
                let mut send = match sides.sender(side).await {
                    Ok(s) => s,
                    Err(e) => return Ok::<_, Infallible>(bad_gateway(&e)),
                };
                if let Err(e) = send.ready().await {
                    return Ok(bad_gateway(&io::Error::other(format!(
                        "{} {dst}: HTTP/2: {e}",
                        SIDES[side]
                    ))));
                }
                Ok(match send.send_request(req).await {
                    Ok(resp) => resp.map(|b| b.boxed()),
                    Err(e) => bad_gateway(&io::Error::other(format!(
                        "{} {dst}: HTTP/2: {e}",
                        SIDES[side]
                    ))),
                })
            }
        })
    };
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(client), service)
        .await;
    let load = |s: usize| counts[s].load(std::sync::atomic::Ordering::Relaxed);
    served.map_err(|e| io::Error::other(format!("HTTP/2 client connection: {e}")))?;
    Ok(Outcome {
        requests: [load(ORIGIN), load(TARGET)],
        ..Outcome::default()
    })
}
