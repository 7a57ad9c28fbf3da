//! The HTTP and gRPC edges' limits, as layers around the routers and wrappers around the
//! listeners (the limits themselves and their counts are in [`crate::limits`]):
//!
//! - connections: at most `--http-max-connections` (`--grpc-max-connections`) open; one
//!   more is answered 503 (closed, for gRPC) at once. An HTTP connection with no byte
//!   read or written for `--http-idle-timeout` is closed.
//! - request bodies: at most `--http-max-body` bytes (413), read within
//!   `--http-request-timeout` (408).
//! - time: a request's handler runs at most `--http-request-timeout` (503); event streams
//!   are timed until their response starts.
//! - concurrency per class: cheap reads, renders and analytics, writes; a request waits
//!   `--http-queue-wait` for a slot of its class, then gets 503 with `Retry-After`.
//! - event streams: at most `--sse-max-subscribers` per stream (503 with `Retry-After`).
//! - the SVG rendering: one `dot` at a time, cached per topology generation.
//!
//! Every refusal is a problem+json body ([`ApiError`]) and counts in
//! `weft_controller_limit_hits_total{limit=...}`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use weft_topology::render;
use weft_topology::topology::Window;

use super::error::{ApiError, PROBLEM_JSON};
use crate::limits::{Guard, Limits, Stream, SvgKey};
use crate::state::AppState;

/// The layers, around every route of `router` (outermost first: body, time, slots).
pub fn apply(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router
        .layer(middleware::from_fn_with_state(state.clone(), slots))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), body_limit))
        // The extractors' own limit (axum's default is 2 MB); bodies reach them buffered.
        .layer(DefaultBodyLimit::max(
            state.limits.config.http_max_body_bytes,
        ))
}

/// What a request is, for its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `/healthz`: never refused.
    Exempt,
    Read,
    /// Views of the whole topology and analytics: cost grows with the topology.
    Render,
    Write,
    /// A server-sent event stream.
    Stream(Stream),
}

/// The class of a request.
pub fn class(method: &Method, path: &str, query: Option<&str>) -> Class {
    if path == "/healthz" {
        return Class::Exempt;
    }
    let read = matches!(*method, Method::GET | Method::HEAD);
    if read {
        let stream = Stream::ALL.into_iter().find(|s| s.path() == path);
        if let Some(stream) = stream {
            let follow = !query
                .unwrap_or_default()
                .split('&')
                .any(|kv| matches!(kv, "follow=false" | "follow=0"));
            return if follow {
                Class::Stream(stream)
            } else {
                Class::Read
            };
        }
    }
    let render = path.starts_with("/analytics/")
        || path == "/topology"
        || path.starts_with("/topology.")
        || path == "/topology/diff"
        || path == "/topology/violations"
        || path == "/tdl/export"
        || path == "/services"
        || path.starts_with("/services/");
    if render {
        Class::Render
    } else if read {
        Class::Read
    } else {
        Class::Write
    }
}

/// Keeps `permit` until the response body is dropped (the client went away, or the body
/// ended).
fn hold(response: Response, permit: OwnedSemaphorePermit) -> Response {
    let (parts, body) = response.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

async fn slots(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = &state.limits;
    let config = &limits.config;
    let class = class(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let (guard, slots, flag, max) = match class {
        Class::Exempt => return next.run(request).await,
        Class::Stream(stream) => {
            let Ok(permit) = limits.stream(stream).clone().try_acquire_owned() else {
                limits.hit(Guard::SseSubscribers);
                return ApiError::Unavailable {
                    message: format!(
                        "{} subscribers already follow {} (--sse-max-subscribers)",
                        config.sse_max_subscribers,
                        stream.path()
                    ),
                    retry_after: Duration::from_secs(5),
                }
                .into_response();
            };
            return hold(next.run(request).await, permit);
        }
        Class::Read => (
            Guard::HttpRead,
            &limits.read,
            "--http-read-concurrency",
            config.http_read_concurrency,
        ),
        Class::Render => (
            Guard::HttpRender,
            &limits.render,
            "--http-render-concurrency",
            config.http_render_concurrency,
        ),
        Class::Write => (
            Guard::HttpWrite,
            &limits.write,
            "--http-write-concurrency",
            config.http_write_concurrency,
        ),
    };
    let permit = tokio::time::timeout(config.http_queue_wait, slots.clone().acquire_owned()).await;
    let Ok(Ok(permit)) = permit else {
        limits.hit(guard);
        return ApiError::Unavailable {
            message: format!(
                "{max} requests of this kind are being served and none finished within {:?} ({flag})",
                config.http_queue_wait
            ),
            retry_after: Duration::from_secs(1),
        }
        .into_response();
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

async fn request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.limits.config.http_request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            state.limits.hit(Guard::HttpTimeout);
            ApiError::Unavailable {
                message: format!("the request took longer than {limit:?} (--http-request-timeout)"),
                retry_after: Duration::from_secs(5),
            }
            .into_response()
        }
    }
}

/// Reads the body (at most the limit, within the request timeout) before anything else
/// runs, so that a slow or large upload holds no slot and reaches no handler.
async fn body_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limits = &state.limits;
    let max = limits.config.http_max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        limits.hit(Guard::HttpBody);
        return ApiError::TooLarge { limit: max }.into_response();
    }
    if declared == Some(0) || (declared.is_none() && !has_body(&request)) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let timeout = limits.config.http_request_timeout;
    let read = tokio::time::timeout(timeout, http_body_util::Limited::new(body, max).collect());
    match read.await {
        Err(_) => {
            limits.hit(Guard::HttpTimeout);
            ApiError::BodyTimeout(format!(
                "the request body did not arrive within {timeout:?} (--http-request-timeout)"
            ))
            .into_response()
        }
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            limits.hit(Guard::HttpBody);
            ApiError::TooLarge { limit: max }.into_response()
        }
        Ok(Err(error)) => ApiError::BadBody(format!("reading it failed: {error}")).into_response(),
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
    }
}

/// A request without `Content-Length` has a body when it is chunked.
fn has_body(request: &Request) -> bool {
    request.headers().contains_key(header::TRANSFER_ENCODING)
}

/// `GET /topology.svg`: the cached rendering for this topology generation, registry
/// version and query, else one `dot` at a time (a request waits `--svg-timeout` for the
/// one under way, then gets 503), cached for `--svg-cache-ttl`.
pub async fn render_svg(
    state: &AppState,
    window: &Window,
    query: String,
) -> Result<Arc<Vec<u8>>, ApiError> {
    let limits = &state.limits;
    let config = &limits.config;
    let key = SvgKey {
        generation: state.topology.generation(),
        registry: state.registry.version(),
        query,
    };
    let cached = |limits: &Limits| {
        limits.svg.get(&key, config.svg_cache_ttl).map(|svg| {
            svg.map_err(|message| {
                limits.hit(Guard::SvgRender);
                ApiError::Unavailable {
                    message,
                    retry_after: config.svg_cache_ttl,
                }
            })
        })
    };
    if let Some(svg) = cached(limits) {
        return svg;
    }
    let Ok(Ok(permit)) = tokio::time::timeout(config.svg_timeout, limits.svg.slot.acquire()).await
    else {
        limits.hit(Guard::SvgRender);
        return Err(ApiError::Unavailable {
            message: format!(
                "another SVG rendering has been running for {:?} (--svg-timeout); fetch /topology.dot and render it elsewhere, or try again",
                config.svg_timeout
            ),
            retry_after: config.svg_timeout,
        });
    };
    // Rendered (or failed) by the request we waited for?
    if let Some(svg) = cached(limits) {
        return svg;
    }
    let dot = render::dot(&state.snapshot_in(window));
    let svg = match super::views::run_dot("dot", &dot, config.svg_timeout).await {
        Ok(svg) => Arc::new(svg),
        Err(ApiError::Unavailable {
            message,
            retry_after,
        }) => {
            // Too slow for this topology: not tried again until it changes or the entry
            // expires.
            limits.hit(Guard::SvgRender);
            limits.svg.put(key, Err(message.clone()));
            return Err(ApiError::Unavailable {
                message,
                retry_after,
            });
        }
        Err(error) => return Err(error),
    };
    limits.svg.put(key, Ok(svg.clone()));
    drop(permit);
    Ok(svg)
}

/// An accepted connection holding one of the connection slots, closed when idle for too
/// long (if `idle` is set).
pub struct LimitedIo {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl LimitedIo {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, idle: Option<Duration>) -> Self {
        Self {
            stream,
            _permit: permit,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    fn touch(&mut self) {
        if let Some((idle, sleep)) = &mut self.idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + *idle);
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.idle {
            Some((_, sleep)) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than --http-idle-timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for LimitedIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// How long an accept error (e.g. out of file descriptors) pauses accepting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Refusals being written at once, at most; beyond, a connection is just closed.
const REFUSALS_IN_FLIGHT: usize = 64;
/// Handshaken TLS connections waiting for the server to take them.
const TLS_READY_QUEUE: usize = 64;

/// A connection of the REST listener: plain (`--insecure`) or TLS, over [`LimitedIo`]
/// (which holds the connection's slot and its idle timer).
pub enum RestIo {
    Plain(LimitedIo),
    Tls(Box<tokio_rustls::server::TlsStream<LimitedIo>>),
}

impl AsyncRead for RestIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RestIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_flush(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts TCP connections within `--http-max-connections`: each comes with its slot.
struct Acceptor {
    listener: TcpListener,
    limits: Arc<Limits>,
    refusals: Arc<Semaphore>,
    /// Answer a connection over the limit with a plain-HTTP 503 (else just close it:
    /// a TLS client would not read it).
    refuse_in_http: bool,
}

impl Acceptor {
    async fn next(&mut self) -> (TcpStream, OwnedSemaphorePermit, SocketAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // An answer goes out as soon as it is written: with Nagle, the second TLS
            // record of a response (or a body after its headers) waited for the client's
            // delayed ACK, 40 ms per request on a kept-alive connection (measured).
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "setting TCP_NODELAY failed");
            }
            match self.limits.http_connections.clone().try_acquire_owned() {
                Ok(permit) => return (stream, permit, addr),
                Err(_) => {
                    self.limits.hit(Guard::HttpConnections);
                    if self.refuse_in_http {
                        self.refuse(stream);
                    }
                }
            }
        }
    }

    /// Answers 503 (problem+json, `Retry-After`) on a connection over the limit, then
    /// closes it.
    fn refuse(&self, stream: TcpStream) {
        let max = self.limits.config.http_max_connections;
        let body = format!(
            r#"{{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the controller has {max} HTTP connections open (--http-max-connections)"}}"#
        );
        answer_and_close(
            &self.refusals,
            stream,
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {PROBLEM_JSON}\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
    }
}

/// Writes `response` and closes; what the client sent is read and dropped for a moment so
/// that the close is not a reset that loses the answer. At most [`REFUSALS_IN_FLIGHT`] at
/// once (beyond, the connection is just closed).
fn answer_and_close(refusals: &Arc<Semaphore>, mut stream: TcpStream, response: String) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// The HTTP listener with a bound on open connections and, with TLS, on the time a
/// handshake may take. A TLS connection holds its slot from the TCP accept on, so slow
/// handshakes count against `--http-max-connections`; each runs in its own task (a slow
/// one delays no other) and is closed after `--http-tls-handshake-timeout`.
pub struct LimitedListener {
    local: SocketAddr,
    mode: Mode,
}

enum Mode {
    Plain(Acceptor),
    /// Connections whose handshake is done, from [`tls_accept_loop`] (stopped when this
    /// listener is dropped).
    Tls(tokio::sync::mpsc::Receiver<(RestIo, SocketAddr)>),
}

impl LimitedListener {
    /// Plain HTTP (`--insecure`).
    pub fn new(listener: TcpListener, limits: Arc<Limits>) -> Self {
        Self::with_tls(listener, limits, None)
    }

    /// HTTPS with `tls`, or plain HTTP without.
    pub fn with_tls(
        listener: TcpListener,
        limits: Arc<Limits>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let acceptor = Acceptor {
            listener,
            limits,
            refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
            refuse_in_http: tls.is_none(),
        };
        let mode = match tls {
            None => Mode::Plain(acceptor),
            Some(config) => {
                let (ready, accepted) = tokio::sync::mpsc::channel(TLS_READY_QUEUE);
                tokio::spawn(tls_accept_loop(acceptor, config, ready));
                Mode::Tls(accepted)
            }
        };
        Self { local, mode }
    }
}

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Accepts connections and runs each one's handshake in its own task, bounded in time;
/// hands the handshaken ones to the server. Ends when the server drops its listener.
async fn tls_accept_loop(
    mut acceptor: Acceptor,
    config: Arc<rustls::ServerConfig>,
    ready: tokio::sync::mpsc::Sender<(RestIo, SocketAddr)>,
) {
    let tls = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (stream, permit, addr) = tokio::select! {
            () = ready.closed() => return,
            accepted = acceptor.next() => accepted,
        };
        let limits = acceptor.limits.clone();
        let refusals = acceptor.refusals.clone();
        let tls = tls.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let timeout = limits.config.http_tls_handshake_timeout;
            let idle = Some(limits.config.http_idle_timeout);
            let handshake = async {
                let mut first = [0u8; 1];
                let n = stream.peek(&mut first).await?;
                if n == 1 && first[0] != TLS_HANDSHAKE_RECORD {
                    return Ok::<_, io::Error>(Err(stream));
                }
                let io = LimitedIo::new(stream, permit, idle);
                tls.accept(io).await.map(Ok)
            };
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(Ok(io))) => {
                    let _ = ready.send((RestIo::Tls(Box::new(io)), addr)).await;
                }
                Ok(Ok(Err(plain))) => {
                    tracing::debug!(%addr, "plain HTTP on the HTTPS listener");
                    let body = r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"this listener speaks HTTPS: use https:// (and the CA of the controller's certificate)"}"#;
                    answer_and_close(
                        &refusals,
                        plain,
                        format!(
                            "HTTP/1.1 400 Bad Request\r\ncontent-type: {PROBLEM_JSON}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        ),
                    );
                }
                Ok(Err(error)) => tracing::debug!(%addr, %error, "TLS handshake failed"),
                Err(_) => {
                    limits.hit(Guard::HttpTlsHandshake);
                    tracing::debug!(%addr, ?timeout, "TLS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = RestIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match &mut self.mode {
            Mode::Plain(acceptor) => {
                let (stream, permit, addr) = acceptor.next().await;
                let idle = Some(acceptor.limits.config.http_idle_timeout);
                (RestIo::Plain(LimitedIo::new(stream, permit, idle)), addr)
            }
            Mode::Tls(accepted) => match accepted.recv().await {
                Some(connection) => connection,
                // The accept loop ended (it only does when this listener is dropped).
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The gRPC connections, at most `--grpc-max-connections` open (one more is closed at
/// once), with TCP_NODELAY.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: Arc<Limits>,
) -> impl futures::Stream<Item = io::Result<LimitedIo>> {
    futures::stream::unfold((listener, limits), |(listener, limits)| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "accepting a gRPC connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "setting TCP_NODELAY failed");
            }
            match limits.grpc_connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    return Some((Ok(LimitedIo::new(stream, permit, None)), (listener, limits)));
                }
                Err(_) => limits.hit(Guard::GrpcConnections),
            }
        }
    })
}

/// gRPC methods that stream their answer: they hold no unary slot (a follower would
/// otherwise keep one for as long as it follows).
pub const GRPC_STREAMS: [&str; 5] = [
    "/weft.v1.ShardService/WatchEvents",
    "/weft.v1.AgentControlService/WatchDesiredState",
    "/weft.v1.MirrorService/WatchNetworkEvents",
    "/weft.v1.ShadowService/WatchShadowEvents",
    "/weft.v1.WeaveService/WatchWeaveEvents",
];

/// Whether a gRPC call takes a unary slot: the client services (TopologyService,
/// ShardService, MirrorService, ShadowService, WeaveService) and the control service's reports; not streams, not the agents'
/// `AgentService` (bounded by `--agent-record-rate`, and whose RESOURCE_EXHAUSTED means
/// "split the batch").
pub fn grpc_call_is_limited(path: &str) -> bool {
    !GRPC_STREAMS.contains(&path)
        && [
            "/weft.v1.TopologyService/",
            "/weft.v1.ShardService/",
            "/weft.v1.MirrorService/",
            "/weft.v1.ShadowService/",
            "/weft.v1.WeaveService/",
            "/weft.v1.AgentControlService/",
        ]
        .iter()
        .any(|service| path.starts_with(service))
}

/// Marks a response as a refusal by [`GrpcConcurrency`] (not a message-size refusal).
#[derive(Debug, Clone, Copy)]
struct RefusedForConcurrency;

/// At most `--grpc-concurrency` unary calls at once ([`grpc_call_is_limited`]); a call
/// waits `--grpc-queue-wait` for a slot, then gets RESOURCE_EXHAUSTED. Placed inside the
/// token check: a call without the right token takes no slot.
#[derive(Debug, Clone)]
pub struct GrpcConcurrency {
    limits: Arc<Limits>,
}

impl GrpcConcurrency {
    pub fn layer(limits: Arc<Limits>) -> Self {
        Self { limits }
    }
}

impl<S> tower::Layer<S> for GrpcConcurrency {
    type Service = GrpcConcurrencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcConcurrencyService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcConcurrencyService<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcConcurrencyService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        if !grpc_call_is_limited(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The ready service goes with the call; a clone stays for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Box::pin(async move {
            let config = &limits.config;
            let slot = tokio::time::timeout(
                config.grpc_queue_wait,
                limits.grpc_calls.clone().acquire_owned(),
            )
            .await;
            let Ok(Ok(permit)) = slot else {
                limits.hit(Guard::GrpcConcurrency);
                let mut response = tonic::Status::resource_exhausted(format!(
                    "{} calls are being served and none finished within {:?} (--grpc-concurrency); retry later",
                    config.grpc_concurrency, config.grpc_queue_wait
                ))
                .into_http::<R>();
                response.extensions_mut().insert(RefusedForConcurrency);
                return Ok(response);
            };
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}

/// Counts the gRPC calls refused because a message was larger than the decode limit
/// (`OUT_OF_RANGE`, or `RESOURCE_EXHAUSTED` when the buffer could not grow).
#[derive(Debug, Clone)]
pub struct CountOversized {
    limits: Arc<Limits>,
}

impl CountOversized {
    pub fn layer(limits: Arc<Limits>) -> Self {
        Self { limits }
    }
}

impl<S> tower::Layer<S> for CountOversized {
    type Service = CountOversizedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountOversizedService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CountOversizedService<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for CountOversizedService<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let call = self.inner.call(request);
        let limits = self.limits.clone();
        Box::pin(async move {
            let result = call.await;
            if let Ok(response) = &result
                && response
                    .extensions()
                    .get::<RefusedForConcurrency>()
                    .is_none()
            {
                let status = response.headers().get("grpc-status");
                let code = |c: tonic::Code| {
                    status.is_some_and(|v| v.as_bytes() == (c as i32).to_string().as_bytes())
                };
                if code(tonic::Code::OutOfRange) || code(tonic::Code::ResourceExhausted) {
                    limits.hit(Guard::GrpcMessageSize);
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_fall_into_their_class() {
        let get = Method::GET;
        assert_eq!(class(&get, "/healthz", None), Class::Exempt);
        assert_eq!(class(&get, "/topology.svg", None), Class::Render);
        assert_eq!(class(&get, "/topology", Some("since=1h")), Class::Render);
        assert_eq!(class(&get, "/analytics/critical", None), Class::Render);
        assert_eq!(
            class(&Method::POST, "/analytics/classification", None),
            Class::Render
        );
        assert_eq!(
            class(&get, "/services/web/dependencies", None),
            Class::Render
        );
        assert_eq!(class(&get, "/topology/snapshots", None), Class::Read);
        assert_eq!(class(&get, "/shards", None), Class::Read);
        assert_eq!(class(&get, "/metrics", None), Class::Read);
        assert_eq!(class(&Method::POST, "/observations", None), Class::Write);
        assert_eq!(
            class(&Method::PUT, "/policy/allowed-dependencies", None),
            Class::Write
        );
        assert_eq!(
            class(&get, "/events/topology", None),
            Class::Stream(Stream::Topology)
        );
        assert_eq!(
            class(&get, "/events/networks", Some("network=shop")),
            Class::Stream(Stream::Networks)
        );
        assert_eq!(
            class(&get, "/events/shadows", Some("shadow=shop-shadow")),
            Class::Stream(Stream::Shadows)
        );
        assert_eq!(
            class(&get, "/events/weaves", Some("weave=shop-w1")),
            Class::Stream(Stream::Weaves)
        );
        assert_eq!(class(&get, "/shadows", None), Class::Read);
        assert_eq!(class(&Method::PUT, "/shadows/s/policy", None), Class::Write);
        assert_eq!(class(&get, "/tdl/export", None), Class::Render);
        assert_eq!(
            class(&get, "/events", Some("from=3")),
            Class::Stream(Stream::Shards)
        );
        assert_eq!(
            class(&get, "/events", Some("follow=false&from=1")),
            Class::Read
        );
    }

    /// Every streaming method of the proto is in [`GRPC_STREAMS`] (a new one would
    /// otherwise hold a unary slot for as long as it streams).
    #[test]
    fn every_streaming_rpc_is_exempt_from_the_unary_slots() {
        let proto = include_str!("../../../proto/proto/weft.proto");
        let mut service = "";
        let mut streams = Vec::new();
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.trim_end_matches('{').trim();
            }
            if let Some(rest) = line.strip_prefix("rpc ")
                && line.contains("returns (stream ")
            {
                let method = rest.split('(').next().unwrap_or_default().trim();
                streams.push(format!("/weft.v1.{service}/{method}"));
            }
        }
        assert!(!streams.is_empty());
        for path in &streams {
            assert!(GRPC_STREAMS.contains(&path.as_str()), "{path} streams");
            assert!(!grpc_call_is_limited(path), "{path}");
        }
        assert!(grpc_call_is_limited("/weft.v1.ShardService/ListShards"));
        assert!(grpc_call_is_limited("/weft.v1.MirrorService/CreateNetwork"));
        assert!(grpc_call_is_limited("/weft.v1.ShadowService/CreateShadow"));
        assert!(grpc_call_is_limited("/weft.v1.WeaveService/CreateWeave"));
        assert!(grpc_call_is_limited("/weft.v1.TopologyService/GetTopology"));
        assert!(grpc_call_is_limited(
            "/weft.v1.AgentControlService/ReportObserved"
        ));
        assert!(!grpc_call_is_limited("/weft.v1.AgentService/PushFlows"));
    }
}
