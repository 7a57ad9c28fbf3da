//! One client connection of a request router.
//!
//! ```text
//!  client --read--> requests: RequestCutter, a side per request (rules), write to that
//!                   side's upstream; each request's expectation, in order --channel-->
//!  responses: for each expectation, read that side's upstream through its
//!             ResponseCutter up to the response's end, write to the client
//! ```
//!
//! Responses go back in the order of the requests whichever side answers: a response
//! from one side waits in its socket while an earlier one of the other side is not
//! complete. Bodies stream through (nothing but an incomplete head is held). Upstream
//! connections are made on first use, one per side, and made anew when the server
//! closed the previous one. A request that asks to leave HTTP/1 (WebSocket, h2c, CONNECT)
//! pins the connection to its side: from then on both directions are copied raw. A
//! connection that starts with HTTP/2's preface (h2c) is routed stream by stream
//! ([`super::h2proxy`]); one that starts with a TLS ClientHello goes whole to the side
//! its server name says ([`super::tls`]); one whose first bytes are none of these goes
//! whole to the origin.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use weft_reqroute::{ClientPiece, RequestCutter, ResponseCutter, ServerPiece};

use super::{Ends, PortRules, RouterShared};

/// The production node (index 0) and the branch's copy (index 1).
pub const ORIGIN: usize = 0;
pub const TARGET: usize = 1;
pub const SIDES: [&str; 2] = ["origin", "target"];

const READ_BUF: usize = 64 * 1024;
/// Requests sent and not yet answered per connection; the client is not read further
/// until one is answered.
const PIPELINE: usize = 64;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the response half must do next.
enum Next {
    /// Read one response of `side`.
    Response {
        side: usize,
        head_only: bool,
        connect: bool,
        /// The request ends the connection (`Connection: close`, HTTP/1.0 without
        /// keep-alive): after its answer the client's connection is closed.
        last: bool,
        /// That side's upstream was (re)connected for this request.
        reader: Option<OwnedReadHalf>,
    },
    /// The request's side could not be reached: a 502 answer in its place, and the end.
    Unreachable { side: usize, error: String },
    /// Copy `side` raw to the client until it ends (a connection that is not HTTP/1).
    Raw {
        side: usize,
        reader: Option<OwnedReadHalf>,
    },
}

/// How a connection ended, for the counters and the log.
#[derive(Debug, Default)]
pub struct Outcome {
    pub requests: [u64; 2],
    /// Its first bytes were no HTTP/1 request: it went whole to the origin.
    pub not_http: bool,
    /// It was TLS: it went whole to this side, by its server name.
    pub tls: Option<usize>,
}

/// Upstream sides' state shared by both halves: the response half marks a side closed
/// when its server ended the connection, the request half then connects anew.
struct Closed([AtomicBool; 2]);

/// Serves one client connection (`ends`: who made it, to the origin's address and port,
/// which the target has too). `rules`: the port's, read at every
/// request; empty: every request goes to the target (a port routed whole: a connection
/// that starts so is relayed whole there).
pub async fn serve(
    client: TcpStream,
    ends: Ends,
    rules: Arc<PortRules>,
    shared: Arc<RouterShared>,
) -> io::Result<Outcome> {
    client.set_nodelay(true)?;
    if current(&rules).is_empty() {
        let mut up = shared.connect(TARGET, ends).await?;
        let mut client = client;
        tokio::io::copy_bidirectional(&mut client, &mut up).await?;
        return Ok(Outcome::default());
    }
    if let super::tls::Start::Tls { server_name } = super::tls::client_hello(&client).await? {
        // Whole, by its server name (the ClientHello is still unread: both sides of the
        // relay get the client's bytes as they are).
        let side = super::tls::side_for(&current(&rules), server_name.as_deref());
        let mut up = shared.connect(side, ends).await?;
        let mut client = client;
        tokio::io::copy_bidirectional(&mut client, &mut up).await?;
        return Ok(Outcome {
            tls: Some(side),
            ..Outcome::default()
        });
    }
    if super::h2proxy::starts_h2c(&client).await? {
        return super::h2proxy::serve(client, ends, rules, shared).await;
    }
    let (client_r, client_w) = client.into_split();
    let (tx, rx) = mpsc::channel(PIPELINE);
    let closed = Arc::new(Closed([AtomicBool::new(false), AtomicBool::new(false)]));
    let requests = requests(client_r, ends, &rules, &shared, tx, &closed);
    let responses = responses(client_w, rx, &closed);
    let (req, resp) = tokio::join!(requests, responses);
    resp?;
    req
}

pub(super) fn current(rules: &PortRules) -> Arc<Vec<weft_reqroute::HeaderRule>> {
    rules.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The request half.
async fn requests(
    mut client: OwnedReadHalf,
    ends: Ends,
    rules: &PortRules,
    shared: &RouterShared,
    tx: mpsc::Sender<Next>,
    closed: &Closed,
) -> io::Result<Outcome> {
    let mut out = Outcome::default();
    let mut cutter = RequestCutter::new(weft_reqroute::DEFAULT_MAX_HEAD);
    let mut writers: [Option<OwnedWriteHalf>; 2] = [None, None];
    let mut side = ORIGIN;
    // What was read before the first request head was complete: sent to the origin as
    // it is if the stream turns out not to be HTTP/1.
    let mut before_first: Option<Vec<u8>> = Some(Vec::new());
    let mut buf = vec![0u8; READ_BUF];
    let mut pieces = Vec::new();
    let mut tunnel_announced = false;
    let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the response half ended");
    loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let data = &buf[..n];
        if let Some(b) = &mut before_first {
            b.extend_from_slice(data);
        }
        pieces.clear();
        if let Err(e) = cutter.feed(data, &mut pieces) {
            let Some(first) = before_first.take() else {
                // Mid-connection: what was answered stays answered; the rest is closed.
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            };
            // Not HTTP/1 from the start: the whole connection goes to the origin.
            out.not_http = true;
            let (reader, mut writer) = shared.connect(ORIGIN, ends).await?.into_split();
            tx.send(Next::Raw {
                side: ORIGIN,
                reader: Some(reader),
            })
            .await
            .map_err(|_| gone())?;
            writer.write_all(&first).await?;
            tokio::io::copy(&mut client, &mut writer).await?;
            writer.shutdown().await?;
            return Ok(out);
        }
        for p in pieces.drain(..) {
            match p {
                ClientPiece::Head(h) => {
                    before_first = None;
                    let rules = current(rules);
                    side = if rules.is_empty() || rules.iter().any(|r| r.matches(&h)) {
                        TARGET
                    } else {
                        ORIGIN
                    };
                    let mut reader = None;
                    if writers[side].is_none() || closed.0[side].swap(false, Relaxed) {
                        let (r, w) = match shared.connect(side, ends).await {
                            Ok(s) => s.into_split(),
                            Err(e) => {
                                // Answered in its turn, then the connection ends.
                                let error = e.to_string();
                                let _ = tx.send(Next::Unreachable { side, error }).await;
                                return Err(e);
                            }
                        };
                        writers[side] = Some(w);
                        reader = Some(r);
                    }
                    // Announced before it is sent: its answer can only come after, and
                    // the response half takes it as solicited.
                    tx.send(Next::Response {
                        side,
                        head_only: h.head_only,
                        connect: h.is_connect(),
                        last: ends_connection(&h.bytes),
                        reader,
                    })
                    .await
                    .map_err(|_| gone())?;
                    let w = writers[side].as_mut().ok_or_else(gone)?;
                    w.write_all(&h.bytes).await?;
                    out.requests[side] += 1;
                    shared.count_request(side);
                }
                ClientPiece::Body(r) | ClientPiece::Tunnel(r) => {
                    let w = writers[side].as_mut().ok_or_else(gone)?;
                    w.write_all(&data[r]).await?;
                }
                ClientPiece::End => {}
            }
        }
        if cutter.tunnelling() && !tunnel_announced {
            // After an upgrade or CONNECT request the client's bytes are no HTTP/1 any
            // more, whatever the answer: once that answer is through, the response half
            // copies the side raw too (a 101 makes it do so at once).
            tunnel_announced = true;
            tx.send(Next::Raw { side, reader: None })
                .await
                .map_err(|_| gone())?;
        }
    }
    // The client is done sending: so are the upstreams (their answers still come back).
    for w in writers.iter_mut().flatten() {
        let _ = w.shutdown().await;
    }
    Ok(out)
}

/// The response half.
async fn responses(
    mut client: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Next>,
    closed: &Closed,
) -> io::Result<()> {
    let mut readers: [Option<OwnedReadHalf>; 2] = [None, None];
    let mut cutters = [
        ResponseCutter::new(weft_reqroute::DEFAULT_MAX_HEAD),
        ResponseCutter::new(weft_reqroute::DEFAULT_MAX_HEAD),
    ];
    // Bytes read from a side after the end of the response that was wanted.
    let mut leftover: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; READ_BUF];
    let mut pieces = Vec::new();
    loop {
        // Between answers: the next request, or an upstream that speaks unasked (its
        // server closing an idle connection: the next request to it connects anew; bytes
        // with no request, such as a 408, go to the client as they are).
        let next = tokio::select! {
            biased;
            n = rx.recv() => match n {
                Some(n) => n,
                None => break,
            },
            side = idle_event(&readers) => {
                let r = readers[side].as_mut().ok_or_else(no_upstream)?;
                match r.try_read(&mut buf) {
                    Ok(0) => {
                        closed.0[side].store(true, Relaxed);
                        readers[side] = None;
                    }
                    Ok(n) => client.write_all(&buf[..n]).await?,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        closed.0[side].store(true, Relaxed);
                        readers[side] = None;
                    }
                }
                continue;
            }
        };
        let (side, head_only, connect, mut last, reader) = match next {
            Next::Raw { side, reader } => {
                if let Some(r) = reader {
                    readers[side] = Some(r);
                }
                client
                    .write_all(&std::mem::take(&mut leftover[side]))
                    .await?;
                let r = readers[side].as_mut().ok_or_else(no_upstream)?;
                tokio::io::copy(r, &mut client).await?;
                client.shutdown().await?;
                return Ok(());
            }
            Next::Unreachable { side, error } => {
                let body = format!(
                    "weft request router: the {} is unreachable: {error}\n",
                    SIDES[side]
                );
                let answer = format!(
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(answer.as_bytes()).await?;
                break;
            }
            Next::Response {
                side,
                head_only,
                connect,
                last,
                reader,
            } => (side, head_only, connect, last, reader),
        };
        if let Some(r) = reader {
            // A new connection to that side: nothing of the old one is owed any more.
            readers[side] = Some(r);
            cutters[side] = ResponseCutter::new(weft_reqroute::DEFAULT_MAX_HEAD);
            leftover[side].clear();
        }
        cutters[side].expect(head_only, connect);
        loop {
            let data: Vec<u8>;
            let bytes: &[u8] = if leftover[side].is_empty() {
                let r = readers[side].as_mut().ok_or_else(no_upstream)?;
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    closed.0[side].store(true, Relaxed);
                    pieces.clear();
                    cutters[side]
                        .finish(&mut pieces)
                        .map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()))?;
                    if !pieces.iter().any(|p| matches!(p, ServerPiece::End)) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the {} closed before answering", SIDES[side]),
                        ));
                    }
                    break;
                }
                &buf[..n]
            } else {
                data = std::mem::take(&mut leftover[side]);
                &data
            };
            pieces.clear();
            let used = cutters[side]
                .feed(bytes, &mut pieces)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let mut done = false;
            let mut tunnel = false;
            for p in pieces.drain(..) {
                match p {
                    ServerPiece::Head(h) => {
                        // A final answer that ends the connection ends the client's too.
                        last |= final_status(&h) && ends_connection(&h);
                        client.write_all(&h).await?
                    }
                    ServerPiece::Body(r) => client.write_all(&bytes[r]).await?,
                    ServerPiece::Tunnel(r) => {
                        client.write_all(&bytes[r]).await?;
                        tunnel = true;
                    }
                    ServerPiece::End => done = true,
                }
            }
            if used < bytes.len() {
                leftover[side] = bytes[used..].to_vec();
            }
            if tunnel || cutters[side].tunnelling() {
                // Upgraded (101) or CONNECT: the connection is that side's from now on.
                let r = readers[side].as_mut().ok_or_else(no_upstream)?;
                tokio::io::copy(r, &mut client).await?;
                client.shutdown().await?;
                return Ok(());
            }
            if done {
                break;
            }
        }
        if last {
            // As the server would have: the client sees the connection end after it.
            break;
        }
    }
    client.shutdown().await?;
    Ok(())
}

/// Whether an HTTP/1 message head (request or response) ends its connection: a
/// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
pub(super) fn ends_connection(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let http10 = first.starts_with("HTTP/1.0") || first.ends_with("HTTP/1.0");
    let tokens: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    tokens.iter().any(|t| t == "close") || (http10 && !tokens.iter().any(|t| t == "keep-alive"))
}

/// Whether a response head is a final answer (not an interim 1xx).
pub(super) fn final_status(head: &[u8]) -> bool {
    head.get(9).is_some_and(|c| *c != b'1')
}

/// Which upstream became readable (never, with none).
async fn idle_event(readers: &[Option<OwnedReadHalf>; 2]) -> usize {
    match (&readers[ORIGIN], &readers[TARGET]) {
        (Some(a), Some(b)) => tokio::select! {
            _ = a.readable() => ORIGIN,
            _ = b.readable() => TARGET,
        },
        (Some(a), None) => {
            let _ = a.readable().await;
            ORIGIN
        }
        (None, Some(b)) => {
            let _ = b.readable().await;
            TARGET
        }
        (None, None) => std::future::pending().await,
    }
}

fn no_upstream() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "no upstream connection")
}
