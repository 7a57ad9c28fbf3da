//! weft-shadow: what a shadow sink needs to replay production's sampled connections
//! against a shadow and compare the answers. Pure: no I/O, no clocks (times are passed in).
//!
//! - [`ClientFramer`]: cuts a client byte stream (what production received) into
//!   [`Request`]s, byte-exact (concatenating them gives the stream back), each with its
//!   endpoint name, whether it only reads, and its request id. HTTP/1.1, h2c (prior
//!   knowledge or `Upgrade: h2c`: replayed frame by frame, endpoints per stream), Redis RESP
//!   and PostgreSQL; the protocol is recognised from the first bytes.
//! - [`ServerFramer`]: cuts a server byte stream into [`Response`]s (status, error, body),
//!   told what each request expects.
//! - [`compare`]: responses as flat fields (`status`, `header.content-type`,
//!   `body.user.name`), and [`compare::Diffy`]: per endpoint and field, raw differences
//!   (production vs shadow) against noise (shadow vs a second shadow replica); a field
//!   differs when raw beats noise by Diffy's relative (20 %) and absolute (0.03 %)
//!   thresholds.
//! - [`stats::Stats`]: per-endpoint counts, latency histograms (hdrhistogram, µs, V2
//!   serialization) and Diffy results; [`replay::Replay`]: one sampled connection, its
//!   production frames and its targets' answers, paired.
//!
//! ```
//! use weft_shadow::{ClientFramer, Limits};
//! let mut c = ClientFramer::new(Limits::default());
//! let reqs = c.push(b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nDELETE /a/7 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
//! assert_eq!(reqs.len(), 2);
//! assert_eq!(reqs[0].endpoint.as_deref(), Some("GET /a"));
//! assert!(reqs[0].read_only && !reqs[1].read_only);
//! ```

pub mod compare;
pub mod h2;
pub mod http1;
pub mod postgres;
pub mod redis;
pub mod replay;
pub mod stats;

use std::collections::VecDeque;

pub use compare::Diffy;
/// The hdrhistogram this crate serializes with (V2), for readers of the reports.
pub use hdrhistogram;
pub use postgres::{PgExpect, is_read_only_sql};
pub use redis::is_read_command;
pub use replay::Replay;
pub use stats::Stats;

/// Why a stream cannot be framed (further).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("{what} over the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("not replayable: {0}")]
    Unsupported(String),
    #[error("protocol not recognised from the first bytes ({0:?})")]
    UnknownProtocol(String),
}

/// Longest key header value kept (longer ones are cut: the hash is over the first bytes).
pub const MAX_KEY_VALUE: usize = 256;

/// A header value as a request's `key_value`.
pub(crate) fn key_value(v: &str) -> String {
    let v = v.trim();
    let mut end = v.len().min(MAX_KEY_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_owned()
}

/// Size limits of framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest HTTP/1 head.
    pub max_head: usize,
    /// Largest request or response (body, RESP value, PostgreSQL message or batch, HTTP/2
    /// frame).
    pub max_message: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 64 * 1024,
            max_message: 16 * 1024 * 1024,
        }
    }
}

/// Application protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
    Redis,
    Postgres,
}

/// What a request expects as an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No answer of its own (h2 frames that open no stream, PostgreSQL password messages).
    None,
    Http1 {
        /// A HEAD request: the answer has no body.
        head: bool,
        /// The request asks to switch to h2c.
        upgrade_h2c: bool,
    },
    /// An HTTP/2 stream's answer, keyed by the stream.
    H2Stream,
    /// One RESP reply.
    Redis,
    Postgres(PgExpect),
}

/// One request of a client stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Exactly the bytes of the stream it came from.
    pub bytes: Vec<u8>,
    /// "GET /users/{id}", "redis GET", "postgres SELECT"; `None` for units that are no
    /// request of their own (h2 frames of a stream, PostgreSQL password messages).
    pub endpoint: Option<String>,
    /// It only reads (or only sets the session up); unknown is `false`.
    pub read_only: bool,
    /// `X-Request-Id`, when there is one.
    pub request_id: Option<String>,
    /// The value of the framer's key header ([`ClientFramer::with_key_header`]) on a
    /// request that has it (HTTP/1 and an h2 stream's opening header block); trimmed, at
    /// most [`MAX_KEY_VALUE`] bytes.
    pub key_value: Option<String>,
    pub expect: Expect,
    /// Pairs it with its response: the request's number on the connection (from 1), or
    /// [`h2::STREAM_KEY`] plus its stream id; 0 when `expect` is `None`.
    pub key: u64,
}

/// How a response body is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Http,
    Redis,
    Postgres,
}

/// One response of a server stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The [`Request::key`] it answers.
    pub key: u64,
    pub kind: BodyKind,
    /// HTTP status code, Redis reply type (`+`, `$`, `-ERR`), PostgreSQL `ok`, `N` or
    /// the SQLSTATE of the error.
    pub status: String,
    /// HTTP >= 500, a Redis error reply, a PostgreSQL ErrorResponse.
    pub error: bool,
    /// HTTP headers compared (lower-case names; transfer headers and `date` left out).
    pub headers: Vec<(String, String)>,
    /// HTTP: the body (chunked decoded); Redis: the reply; PostgreSQL: the messages.
    pub body: Vec<u8>,
}

/// Recognises the protocol of a client stream from its first bytes; `Ok(None)`: not
/// enough bytes yet.
pub fn detect(first: &[u8]) -> Result<Option<Protocol>, FrameError> {
    if first.is_empty() {
        return Ok(None);
    }
    let n = first.len().min(h2::PREFACE.len());
    if first[..n] == h2::PREFACE[..n] {
        return Ok((n == h2::PREFACE.len()).then_some(Protocol::H2c));
    }
    if first[0] == b'*' {
        return Ok(Some(Protocol::Redis));
    }
    let word_end = first
        .iter()
        .position(|c| *c == b' ' || *c == b'\r' || *c == b'\n');
    if let Some(e) = word_end {
        let word = String::from_utf8_lossy(&first[..e]).to_ascii_uppercase();
        let line_end = first.iter().position(|c| *c == b'\n');
        if http1::METHODS.contains(&word.as_str()) && first[e] == b' ' {
            // "GET key" is Redis inline too: HTTP has a version at the end of the line.
            match line_end {
                Some(l) if first[..l].windows(6).any(|w| w == b" HTTP/") => {
                    return Ok(Some(Protocol::Http1));
                }
                Some(_) => return Ok(Some(Protocol::Redis)),
                None if first.len() < 8192 => return Ok(None),
                None => return Ok(Some(Protocol::Http1)),
            }
        }
        if !word.is_empty() && word.bytes().all(|c| c.is_ascii_uppercase()) && line_end.is_some() {
            return Ok(Some(Protocol::Redis));
        }
    }
    match postgres::looks_like_client(first) {
        Some(true) => return Ok(Some(Protocol::Postgres)),
        None if word_end.is_none() && first.len() < 64 => return Ok(None),
        _ => {}
    }
    if word_end.is_none() && first.len() < 64 {
        return Ok(None);
    }
    Err(FrameError::UnknownProtocol(
        String::from_utf8_lossy(&first[..first.len().min(16)]).into_owned(),
    ))
}

enum ClientMode {
    Detecting,
    Http1 { upgrade_pending: bool },
    H2(Box<h2::Client>),
    Redis,
    Postgres(postgres::ClientState),
    Failed(FrameError),
}

/// Cuts a client byte stream into requests.
pub struct ClientFramer {
    limits: Limits,
    buf: Vec<u8>,
    mode: ClientMode,
    protocol: Option<Protocol>,
    next_key: u64,
    /// Lowercase; `None`: requests carry no `key_value`.
    key_header: Option<String>,
}

impl ClientFramer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            mode: ClientMode::Detecting,
            protocol: None,
            next_key: 1,
            key_header: None,
        }
    }

    /// Requests carry the value of header `name` (any case) as their `key_value`.
    pub fn with_key_header(mut self, name: &str) -> Self {
        self.key_header = Some(name.to_ascii_lowercase());
        self
    }

    /// The protocol, once recognised (h2c after an upgrade stays [`Protocol::Http1`]:
    /// the server side switches when it answers 101).
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Bytes received and not yet part of a request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends `data` and returns the requests it completes, in order. After an error,
    /// every call returns it again.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Request>, FrameError> {
        if let ClientMode::Failed(e) = &self.mode {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(data);
        let out = self.frame();
        if let Err(e) = &out {
            self.mode = ClientMode::Failed(e.clone());
            self.buf = Vec::new();
        }
        out
    }

    fn frame(&mut self) -> Result<Vec<Request>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            let rest = &self.buf[at..];
            if rest.is_empty() {
                break;
            }
            let taken = match &mut self.mode {
                ClientMode::Failed(e) => return Err(e.clone()),
                ClientMode::Detecting => {
                    let Some(p) = detect(rest)? else { break };
                    self.protocol = Some(p);
                    self.mode = match p {
                        Protocol::Http1 => ClientMode::Http1 {
                            upgrade_pending: false,
                        },
                        Protocol::H2c => ClientMode::H2(Box::default()),
                        Protocol::Redis => ClientMode::Redis,
                        Protocol::Postgres => ClientMode::Postgres(Default::default()),
                    };
                    continue;
                }
                ClientMode::Http1 { upgrade_pending } => {
                    if *upgrade_pending {
                        let n = rest.len().min(h2::PREFACE.len());
                        if rest[..n] == h2::PREFACE[..n] {
                            if n < h2::PREFACE.len() {
                                break;
                            }
                            self.mode = ClientMode::H2(Box::default());
                            continue;
                        }
                        *upgrade_pending = false;
                    }
                    match http1::take_request(rest, &self.limits, self.key_header.as_deref())? {
                        Some((r, upgrade)) => {
                            *upgrade_pending = upgrade;
                            Some(r)
                        }
                        None => None,
                    }
                }
                ClientMode::H2(c) => c.take(rest, &self.limits, self.key_header.as_deref())?,
                ClientMode::Redis => redis::take_request(rest, &self.limits)?,
                ClientMode::Postgres(s) => postgres::take_request(rest, s, &self.limits)?,
            };
            let Some(mut r) = taken else { break };
            at += r.bytes.len();
            if !matches!(r.expect, Expect::None | Expect::H2Stream) {
                r.key = self.next_key;
                self.next_key += 1;
            }
            out.push(r);
        }
        self.buf.drain(..at);
        if self.buf.len() > self.limits.max_message.saturating_add(self.limits.max_head) {
            return Err(FrameError::TooLarge {
                what: "unframed client bytes",
                limit: self.limits.max_message,
            });
        }
        Ok(out)
    }
}

enum ServerMode {
    Serial,
    H2 {
        server: Box<h2::Server>,
        /// The key of the HTTP/1 request whose answer is stream 1 (an upgrade).
        upgraded: Option<u64>,
    },
    Failed(FrameError),
}

/// Cuts a server byte stream into responses. Told each request's [`Expect`] (and key),
/// in order, with [`ServerFramer::expect`]; bytes that come before their request is
/// announced wait for it (HTTP/2 frames name their stream).
pub struct ServerFramer {
    limits: Limits,
    buf: Vec<u8>,
    pending: VecDeque<(u64, Expect)>,
    mode: ServerMode,
    /// Pending expectations kept at most (a server far behind its requests).
    max_pending: usize,
}

impl ServerFramer {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            pending: VecDeque::new(),
            mode: ServerMode::Serial,
            max_pending: 4096,
        }
    }

    /// Announces a request sent to this server.
    pub fn expect(&mut self, r: &Request) -> Result<(), FrameError> {
        match r.expect {
            Expect::None => Ok(()),
            Expect::H2Stream => {
                if let ServerMode::Serial = self.mode
                    && self.pending.is_empty()
                {
                    self.mode = ServerMode::H2 {
                        server: Box::default(),
                        upgraded: None,
                    };
                }
                Ok(())
            }
            e => {
                if self.pending.len() >= self.max_pending {
                    return Err(FrameError::TooLarge {
                        what: "requests awaiting an answer",
                        limit: self.max_pending,
                    });
                }
                self.pending.push_back((r.key, e));
                Ok(())
            }
        }
    }

    /// The connection speaks HTTP/2 with prior knowledge (the client's preface was seen):
    /// server frames are read as HTTP/2 from the start.
    pub fn h2_prior_knowledge(&mut self) {
        if let ServerMode::Serial = self.mode {
            self.mode = ServerMode::H2 {
                server: Box::default(),
                upgraded: None,
            };
        }
    }

    /// Requests announced and not answered yet.
    pub fn awaiting(&self) -> usize {
        self.pending.len()
    }

    /// Appends `data`; returns the responses it completes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Response>, FrameError> {
        self.push_inner(data, false)
    }

    /// The stream ended: a body read until close is complete.
    pub fn finish(&mut self) -> Result<Vec<Response>, FrameError> {
        self.push_inner(&[], true)
    }

    fn push_inner(&mut self, data: &[u8], closed: bool) -> Result<Vec<Response>, FrameError> {
        if let ServerMode::Failed(e) = &self.mode {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(data);
        let out = self.frame(closed);
        if let Err(e) = &out {
            self.mode = ServerMode::Failed(e.clone());
            self.buf = Vec::new();
        }
        out
    }

    fn frame(&mut self, closed: bool) -> Result<Vec<Response>, FrameError> {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            let rest = &self.buf[at..];
            if rest.is_empty() {
                break;
            }
            match &mut self.mode {
                ServerMode::Failed(e) => return Err(e.clone()),
                ServerMode::H2 { server, upgraded } => {
                    let (n, responses) = server.take(rest, &self.limits)?;
                    at += n;
                    for mut r in responses {
                        if r.key == h2::STREAM_KEY + 1
                            && let Some(k) = upgraded.take()
                        {
                            r.key = k;
                        }
                        out.push(r);
                    }
                    break;
                }
                ServerMode::Serial => {
                    // Nothing expected yet: the request is still being received (an
                    // interim `100 Continue` comes before the body it asks for); the
                    // bytes wait, within the limit checked below.
                    let Some(&(key, expect)) = self.pending.front() else {
                        break;
                    };
                    let taken = match expect {
                        Expect::Http1 { head, upgrade_h2c } => {
                            match http1::take_response(
                                rest,
                                head,
                                upgrade_h2c,
                                closed,
                                &self.limits,
                            )? {
                                Some(http1::Taken::Response(r, n)) => Some((r, n)),
                                Some(http1::Taken::SwitchToH2(n)) => {
                                    self.pending.pop_front();
                                    at += n;
                                    self.mode = ServerMode::H2 {
                                        server: Box::default(),
                                        upgraded: Some(key),
                                    };
                                    continue;
                                }
                                None => None,
                            }
                        }
                        Expect::Redis => redis::take_response(rest, &self.limits)?,
                        Expect::Postgres(p) => postgres::take_response(rest, p, &self.limits)?,
                        Expect::None | Expect::H2Stream => None,
                    };
                    let Some((mut r, n)) = taken else { break };
                    self.pending.pop_front();
                    r.key = key;
                    at += n;
                    out.push(r);
                }
            }
        }
        self.buf.drain(..at);
        if self.buf.len() > self.limits.max_message.saturating_add(self.limits.max_head) {
            return Err(FrameError::TooLarge {
                what: "unframed server bytes",
                limit: self.limits.max_message,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
