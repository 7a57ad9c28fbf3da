//! Requests as the application sees them, from the request/response turns of one flow.
//!
//! [`parse_request`](crate::parse_request) and [`parse_response`](crate::parse_response) look
//! at one turn at a time; a [`Session`] keeps what a flow said before, so that
//!
//! - handshakes are not requests: PostgreSQL's SSLRequest, startup and authentication;
//!   MySQL's handshake, authentication and any packet that continues a command (sequence id
//!   other than 0); AMQP's protocol header and connection/channel methods (only methods that
//!   do work count: exchange and queue methods, `Basic.Publish/Get/Consume/Cancel/Recover`,
//!   `Tx.Commit/Rollback`). Once a PostgreSQL or MySQL connection turns to TLS nothing more
//!   is counted (nothing is visible);
//! - HTTP/2 and gRPC count one request per stream: HEADERS frames opening client streams,
//!   HPACK-decoded with one dynamic table per direction kept for the whole connection; the
//!   stream's `:status` and, for gRPC, `grpc-status` (from trailers or a trailers-only
//!   response) decide its outcome. Streams interleaved in one turn count separately; the
//!   preface, SETTINGS, PING and WINDOW_UPDATE are not requests. An h2c upgrade's HTTP/1.1
//!   request is stream 1;
//! - WebSocket: the upgrade is one HTTP request (status 101); afterwards each message the
//!   client sends is a [`CallKind::Message`] named by its opcode (continuation frames belong
//!   to their message); a close with a normal code (1000, 1001) is neither an error nor a
//!   status, an abnormal close code from either side marks the turn's last message as failed;
//! - every other protocol: one request per turn, as the one-turn parsers see it.
//!
//! Bytes may be cut (the agent sees the first bytes of each turn). A turn the caller cannot
//! vouch for as complete stops the use of HPACK dynamic entries in that direction from then
//! on, since an unseen header block may have changed the table: fields that need them are
//! not decoded, rather than decoded wrong.

use std::collections::BTreeMap;

use crate::hpack::{Decoder, Header};
use crate::http::{self, H2_PREFACE};
use crate::util::{be16, be24, be32, find, label, u8_at};
use crate::{Protocol, Request, Response, parse_request, parse_response};

/// Streams of one HTTP/2 connection tracked at once; beyond it the oldest is reported as is.
const MAX_STREAMS: usize = 256;
/// Calls one turn can give at most (frames walked are bounded by the bytes anyway).
const MAX_CALLS_PER_TURN: usize = 1024;

/// What a call stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// An application request (an HTTP/2 stream, a SQL query, an AMQP method...).
    Request,
    /// A WebSocket message sent by the client.
    Message,
}

/// One application request (or message), with its outcome as far as it is visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub kind: CallKind,
    /// The request's verb and target, as [`Request`]; `None` when the request bytes were not
    /// recognised (the turn still counts for protocols counted per turn).
    pub request: Option<Request>,
    /// The outcome, as [`Response`]; `None` when no answer was recognised.
    pub response: Option<Response>,
    /// When the request began (its turn's start), in the clock of [`Turn::start_ns`].
    pub start_ns: u64,
    /// Time from the request to its answer, when both were seen.
    pub latency_ns: u64,
}

impl Call {
    /// Whether the call failed.
    pub fn error(&self) -> bool {
        self.response.as_ref().is_some_and(|r| r.error)
    }
}

/// One request/response turn: what the client sent, then what the server answered.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// The first bytes of the client's side of the turn.
    pub request: &'a [u8],
    /// Whether `request` is everything the client sent in the turn.
    pub request_complete: bool,
    /// The first bytes of the server's answer.
    pub response: &'a [u8],
    pub response_complete: bool,
    /// When the turn began (the client's first packet), in any monotonic nanoseconds.
    pub start_ns: u64,
    /// Time from the turn's start to the server's first answer.
    pub latency_ns: u64,
}

/// Per-flow state that turns request/response turns into [`Call`]s.
#[derive(Debug, Clone)]
pub struct Session {
    protocol: Protocol,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    PerTurn,
    Postgres {
        encrypted: bool,
    },
    Mysql {
        encrypted: bool,
    },
    Amqp,
    H2(Box<H2>),
    WebSocket {
        upgraded: bool,
        path: Option<String>,
    },
}

impl Session {
    /// A session for a flow detected as `protocol`.
    pub fn new(protocol: Protocol) -> Self {
        let state = match protocol {
            Protocol::Postgres => State::Postgres { encrypted: false },
            Protocol::Mysql => State::Mysql { encrypted: false },
            Protocol::Amqp => State::Amqp,
            Protocol::Http2 | Protocol::Grpc => State::H2(Box::default()),
            Protocol::WebSocket => State::WebSocket {
                upgraded: false,
                path: None,
            },
            _ => State::PerTurn,
        };
        Self { protocol, state }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Takes in one turn; returns the calls it completed.
    pub fn turn(&mut self, t: &Turn<'_>) -> Vec<Call> {
        let protocol = self.protocol;
        let mut out = Vec::new();
        match &mut self.state {
            State::PerTurn => out.push(per_turn(protocol, t)),
            State::Postgres { encrypted } => {
                if *encrypted {
                    return out;
                }
                let req = parse_request(protocol, t.request);
                match req.as_ref().map(|r| r.method.as_str()) {
                    Some("SSL_REQUEST") | Some("GSSENC_REQUEST") => {
                        // 'S' / 'G': the rest of the connection is encrypted.
                        if matches!(t.response.first(), Some(b'S') | Some(b'G')) {
                            *encrypted = true;
                        }
                    }
                    Some("STARTUP") | Some("PASSWORD") => {}
                    _ => out.push(per_turn(protocol, t)),
                }
            }
            State::Mysql { encrypted } => {
                if *encrypted {
                    return out;
                }
                let seq = u8_at(t.request, 3);
                let req = parse_request(protocol, t.request);
                match req.as_ref().map(|r| r.method.as_str()) {
                    Some("SSL_REQUEST") => *encrypted = true,
                    Some("HANDSHAKE_RESPONSE") => {}
                    // Authentication exchanges and continuations of a command (LOAD DATA
                    // LOCAL contents) have sequence ids other than 0.
                    _ if seq.is_some_and(|s| s != 0) => {}
                    _ => out.push(per_turn(protocol, t)),
                }
            }
            State::Amqp => amqp_turn(t, &mut out),
            State::H2(h2) => h2.turn(protocol, t, &mut out),
            State::WebSocket { upgraded, path } => ws_turn(t, upgraded, path, &mut out),
        }
        out
    }

    /// Calls still open that have an answer (HTTP/2 streams whose status was seen but not
    /// their end); with `ended`, every open call (the flow is over).
    pub fn flush(&mut self, ended: bool) -> Vec<Call> {
        let mut out = Vec::new();
        if let State::H2(h2) = &mut self.state {
            let ids: Vec<u32> = h2
                .streams
                .iter()
                .filter(|(_, s)| ended || s.status.is_some() || s.grpc.is_some())
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(s) = h2.streams.remove(&id) {
                    out.push(s.call());
                }
            }
        }
        out
    }
}

fn per_turn(protocol: Protocol, t: &Turn<'_>) -> Call {
    Call {
        kind: CallKind::Request,
        request: parse_request(protocol, t.request),
        response: parse_response(protocol, t.response),
        start_ns: t.start_ns,
        latency_ns: t.latency_ns,
    }
}

// ---------------------------------------------------------------------------------- AMQP

/// Frames of AMQP bytes: (frame type, payload), the payload possibly cut.
fn amqp_frames(b: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut i = if b.starts_with(b"AMQP") { 8 } else { 0 };
    while let (Some(kind), Some(_channel), Some(size)) =
        (u8_at(b, i), be16(b, i + 1), be32(b, i + 3))
    {
        if !matches!(kind, 1 | 2 | 3 | 8) || size > (1 << 27) {
            break;
        }
        let start = i + 7;
        let end = start.saturating_add(size as usize);
        out.push((kind, b.get(start..end.min(b.len())).unwrap_or(&[])));
        // The frame-end octet 0xCE.
        i = end.saturating_add(1);
        if i > b.len() || out.len() >= MAX_CALLS_PER_TURN {
            break;
        }
    }
    out
}

/// Client methods that do work (as opposed to connection and channel setup, flow control,
/// acknowledgements and QoS).
fn amqp_counts(class: u16, method: u16) -> bool {
    matches!(
        (class, method),
        (40, 10 | 20 | 30 | 40)
            | (50, 10 | 20 | 30 | 40 | 50)
            | (60, 20 | 30 | 40 | 70 | 100 | 110)
            | (90, 20 | 30)
    )
}

fn amqp_turn(t: &Turn<'_>, out: &mut Vec<Call>) {
    for (kind, payload) in amqp_frames(t.request) {
        if kind != 1 {
            continue;
        }
        let (Some(class), Some(method)) = (be16(payload, 0), be16(payload, 2)) else {
            continue;
        };
        if !amqp_counts(class, method) {
            continue;
        }
        // The one-frame parser reads a method frame from its header.
        let mut frame = vec![1u8, 0, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        out.push(Call {
            kind: CallKind::Request,
            request: crate::amqp::parse_request(&frame),
            response: None,
            start_ns: t.start_ns,
            latency_ns: t.latency_ns,
        });
    }
    if out.is_empty() {
        return;
    }
    // The answer: the first reply code the server sent (Channel.Close, Connection.Close,
    // Basic.Return) is the outcome of the last request, and it is one error.
    let mut response = Response {
        status: None,
        error: false,
        code: None,
    };
    for (kind, payload) in amqp_frames(t.response) {
        if kind != 1 {
            continue;
        }
        let (Some(class), Some(method)) = (be16(payload, 0), be16(payload, 2)) else {
            continue;
        };
        if matches!((class, method), (10, 50) | (20, 40) | (60, 50))
            && let Some(code) = be16(payload, 4)
        {
            response.status = Some(code);
            response.error = code >= 300;
            break;
        }
    }
    let seen_answer = !t.response.is_empty();
    let n = out.len();
    for (i, call) in out.iter_mut().enumerate() {
        if i + 1 == n {
            call.response = seen_answer.then(|| response.clone());
        } else if seen_answer {
            call.response = Some(Response {
                status: None,
                error: false,
                code: None,
            });
        }
    }
}

// ------------------------------------------------------------------------------- WebSocket

/// WebSocket frames: (fin, opcode, masked, payload (cut, unmasked when masked)).
fn ws_frames(b: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while let (Some(b0), Some(b1)) = (u8_at(b, i), u8_at(b, i + 1)) {
        let opcode = b0 & 0x0f;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) || b0 & 0x20 != 0 {
            break;
        }
        let masked = b1 & 0x80 != 0;
        let (len, mut off) = match b1 & 0x7f {
            126 => match be16(b, i + 2) {
                Some(l) => (u64::from(l), i + 4),
                None => break,
            },
            127 => match (be32(b, i + 2), be32(b, i + 6)) {
                (Some(h), Some(l)) => ((u64::from(h) << 32) | u64::from(l), i + 10),
                _ => break,
            },
            l => (u64::from(l), i + 2),
        };
        let mut mask = [0u8; 4];
        if masked {
            match b.get(off..off + 4) {
                Some(m) => mask.copy_from_slice(m),
                None => break,
            }
            off += 4;
        }
        let end = off.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        let payload: Vec<u8> = b
            .get(off..end.min(b.len()))
            .unwrap_or(&[])
            .iter()
            .enumerate()
            .map(|(k, c)| c ^ mask[k % 4])
            .collect();
        out.push((b0 & 0x80 != 0, opcode, payload));
        if end >= b.len() || out.len() >= MAX_CALLS_PER_TURN {
            break;
        }
        i = end;
    }
    out
}

fn ws_opcode_name(op: u8) -> &'static str {
    match op {
        1 => "TEXT",
        2 => "BINARY",
        8 => "CLOSE",
        9 => "PING",
        10 => "PONG",
        _ => "CONTINUATION",
    }
}

/// A close code that means failure: protocol error, unsupported or invalid data, policy,
/// too big, missing extension, internal error and the codes never sent on the wire (1005,
/// 1006, 1015). 1000 (normal) and 1001 (going away) are not, nor application codes.
fn ws_close_is_error(code: u16) -> bool {
    matches!(code, 1002..=1003 | 1005..=1011 | 1015)
}

fn ws_turn(t: &Turn<'_>, upgraded: &mut bool, path: &mut Option<String>, out: &mut Vec<Call>) {
    if !*upgraded {
        let req = http::parse_request_h1(t.request);
        let resp = http::parse_response_h1(t.response);
        if resp.as_ref().is_some_and(|r| r.status == Some(101)) {
            *upgraded = true;
            *path = req.as_ref().and_then(|r| r.path.clone());
        }
        if req.is_some() || resp.is_some() {
            out.push(Call {
                kind: CallKind::Request,
                request: req,
                response: resp,
                start_ns: t.start_ns,
                latency_ns: t.latency_ns,
            });
            return;
        }
    }
    let mut in_message = false;
    for (fin, op, payload) in ws_frames(t.request) {
        // A continuation frame belongs to the message its first frame started.
        let counts = op != 0 || !in_message;
        if op < 8 {
            in_message = !fin;
        }
        if !counts {
            continue;
        }
        let close_code = if op == 8 { be16(&payload, 0) } else { None };
        out.push(Call {
            kind: CallKind::Message,
            request: Some(Request {
                method: ws_opcode_name(op).to_string(),
                path: path.clone(),
                operation: None,
            }),
            response: close_code.map(|c| Response {
                status: None,
                error: ws_close_is_error(c),
                code: ws_close_is_error(c).then(|| c.to_string()),
            }),
            start_ns: t.start_ns,
            latency_ns: t.latency_ns,
        });
    }
    // An abnormal close from the server fails the turn's last message.
    let server_close = ws_frames(t.response)
        .into_iter()
        .find(|(_, op, _)| *op == 8)
        .and_then(|(_, _, p)| be16(&p, 0));
    if let (Some(code), Some(last)) = (server_close, out.last_mut())
        && ws_close_is_error(code)
    {
        last.response = Some(Response {
            status: None,
            error: true,
            code: Some(code.to_string()),
        });
    }
}

// ---------------------------------------------------------------------------------- HTTP/2

#[derive(Default, Debug, Clone)]
struct H2 {
    client: Side,
    server: Side,
    streams: BTreeMap<u32, Stream>,
    /// Highest client stream id seen: a HEADERS frame on a higher odd id opens a stream.
    last_client_stream: u32,
    /// The h2c upgrade was answered: the client's HTTP/2 preface may follow.
    upgraded: bool,
}

#[derive(Default, Debug, Clone)]
struct Side {
    decoder: Decoder,
    /// A header block was not seen in full: dynamic entries are no longer trusted.
    lost: bool,
}

#[derive(Debug, Clone)]
struct Stream {
    method: Option<String>,
    path: Option<String>,
    start_ns: u64,
    answered_ns: Option<u64>,
    status: Option<u16>,
    grpc: Option<u16>,
    reset: Option<u32>,
}

/// gRPC status codes counted as errors (server-side failures), as the one-turn parser.
const GRPC_ERROR_CODES: [u16; 6] = [2, 4, 12, 13, 14, 15];

impl Stream {
    fn call(self) -> Call {
        let request = self.method.map(|method| Request {
            method,
            path: self.path,
            operation: None,
        });
        let response = if self.status.is_some() || self.grpc.is_some() || self.reset.is_some() {
            let error = self.status.is_some_and(|s| s >= 500)
                || self.grpc.is_some_and(|g| GRPC_ERROR_CODES.contains(&g))
                // A reset other than NO_ERROR (0) or CANCEL (8, the client gave up).
                || self.reset.is_some_and(|c| c != 0 && c != 8);
            Some(Response {
                status: self.status,
                error,
                code: self.grpc.map(|g| g.to_string()),
            })
        } else {
            None
        };
        Call {
            kind: CallKind::Request,
            request,
            response,
            start_ns: self.start_ns,
            latency_ns: self
                .answered_ns
                .map_or(0, |a| a.saturating_sub(self.start_ns)),
        }
    }
}

/// One frame: (type, flags, stream id, payload possibly cut, complete).
fn h2_frames(b: &[u8]) -> Vec<(u8, u8, u32, &[u8], bool)> {
    let mut out = Vec::new();
    let mut i = if b.starts_with(H2_PREFACE) {
        H2_PREFACE.len()
    } else {
        0
    };
    // Frames of unknown types (extensions such as ALTSVC or PRIORITY_UPDATE) are skipped by
    // their length, as RFC 9113 section 4.1 says.
    while let (Some(len), Some(kind), Some(flags), Some(stream)) =
        (be24(b, i), u8_at(b, i + 3), u8_at(b, i + 4), be32(b, i + 5))
    {
        if out.len() >= MAX_CALLS_PER_TURN {
            break;
        }
        let start = i + 9;
        let end = start.saturating_add(len as usize);
        let payload = b.get(start..end.min(b.len())).unwrap_or(&[]);
        out.push((kind, flags, stream & 0x7fff_ffff, payload, end <= b.len()));
        if end >= b.len() {
            break;
        }
        i = end;
    }
    out
}

/// The header block fragment of a HEADERS (1), PUSH_PROMISE (5) or CONTINUATION (9) frame.
fn header_block(kind: u8, flags: u8, payload: &[u8], complete: bool) -> &[u8] {
    let mut p = payload;
    let padded = matches!(kind, 1 | 5) && flags & 0x08 != 0;
    let pad = if padded {
        let n = usize::from(p.first().copied().unwrap_or(0));
        p = p.get(1..).unwrap_or(&[]);
        n
    } else {
        0
    };
    if kind == 1 && flags & 0x20 != 0 {
        p = p.get(5..).unwrap_or(&[]);
    }
    if kind == 5 {
        p = p.get(4..).unwrap_or(&[]);
    }
    if padded && complete {
        p = p.get(..p.len().saturating_sub(pad)).unwrap_or(&[]);
    }
    p
}

impl Side {
    /// Decodes one fragment; a fragment cut short (or any after a loss) leaves the dynamic
    /// table untrusted.
    fn decode(&mut self, block: &[u8], complete: bool) -> Vec<Header> {
        let mut out = Vec::new();
        if self.lost {
            self.decoder.forget_dynamic();
        }
        let whole = self.decoder.decode_all(block, &mut out);
        if !complete || !whole {
            self.lost = true;
        }
        out
    }

    /// Walks `bytes` (one direction of a turn) into events, decoding every header block in
    /// order so that the dynamic table follows the peer's.
    fn walk(&mut self, bytes: &[u8], complete: bool) -> Vec<Ev> {
        let mut out = Vec::new();
        let frames = h2_frames(bytes);
        let n = frames.len();
        for (k, (kind, flags, stream, payload, frame_complete)) in frames.into_iter().enumerate() {
            let last = k + 1 == n;
            // A frame cut by the end of the bytes, or the last one of a turn that continues.
            let whole = frame_complete && (complete || !last);
            match kind {
                0 if flags & 0x01 != 0 => out.push(Ev::End(stream)),
                1 | 5 => {
                    let block = header_block(kind, flags, payload, frame_complete);
                    let hs = self.decode(block, whole);
                    if kind == 1 {
                        out.push(Ev::Headers(stream, hs));
                        if flags & 0x01 != 0 {
                            out.push(Ev::End(stream));
                        }
                    }
                }
                9 => {
                    let hs = self.decode(payload, whole);
                    out.push(Ev::Headers(stream, hs));
                }
                3 => {
                    if let Some(code) = be32(payload, 0) {
                        out.push(Ev::Reset(stream, code));
                    }
                }
                _ => {}
            }
        }
        if !complete && n == 0 && !bytes.is_empty() {
            self.lost = true;
        }
        out
    }
}

/// What one direction's frames say about streams.
enum Ev {
    Headers(u32, Vec<Header>),
    End(u32),
    Reset(u32, u32),
}

fn header<'a>(hs: &'a [Header], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|h| &*h.name == name && !h.partial)
        .map(|h| &*h.value)
}

impl H2 {
    fn open(&mut self, id: u32, start_ns: u64, out: &mut Vec<Call>) -> &mut Stream {
        if !self.streams.contains_key(&id) && self.streams.len() >= MAX_STREAMS {
            // Bounded: the oldest stream is reported as it stands.
            if let Some((_, oldest)) = self.streams.pop_first() {
                out.push(oldest.call());
            }
        }
        self.streams.entry(id).or_insert(Stream {
            method: None,
            path: None,
            start_ns,
            answered_ns: None,
            status: None,
            grpc: None,
            reset: None,
        })
    }

    fn turn(&mut self, protocol: Protocol, t: &Turn<'_>, out: &mut Vec<Call>) {
        let _ = protocol;
        let answered_ns = t.start_ns.saturating_add(t.latency_ns);
        let mut request = t.request;
        let mut response = t.response;

        // h2c upgrade: the HTTP/1.1 request is stream 1, answered in HTTP/2 after the 101.
        if !self.upgraded
            && self.last_client_stream == 0
            && let Some(r) = http::parse_request_h1(request)
        {
            self.last_client_stream = 1;
            let s = self.open(1, t.start_ns, out);
            s.method = Some(r.method);
            s.path = r.path;
            request = match find(request, b"\r\n\r\n") {
                Some(n) => request.get(n + 4..).unwrap_or(&[]),
                None => &[],
            };
        }
        if let Some((101, _)) = http::status_line(response) {
            self.upgraded = true;
            response = match find(response, b"\r\n\r\n") {
                Some(n) => response.get(n + 4..).unwrap_or(&[]),
                None => &[],
            };
        }

        // Client side: new streams, resets.
        for ev in self.client.walk(request, t.request_complete) {
            match ev {
                Ev::Headers(id, hs) => {
                    if id == 0 || id % 2 == 0 {
                        continue;
                    }
                    let new = id > self.last_client_stream;
                    if !new && !self.streams.contains_key(&id) {
                        continue; // trailers of a stream already reported
                    }
                    if new {
                        self.last_client_stream = id;
                    }
                    let s = self.open(id, t.start_ns, out);
                    if let Some(m) = header(&hs, ":method")
                        && !m.is_empty()
                        && m.bytes().all(|c| c.is_ascii_uppercase())
                    {
                        s.method = Some(m.to_string());
                    }
                    if let Some(p) = hs.iter().find(|h| &*h.name == ":path") {
                        s.path = Some(label(p.value.as_bytes()));
                    }
                }
                Ev::Reset(id, code) => {
                    if let Some(mut s) = self.streams.remove(&id) {
                        s.reset = Some(code);
                        out.push(s.call());
                    }
                }
                Ev::End(_) => {}
            }
        }

        // Server side: statuses, trailers, ends and resets.
        for ev in self.server.walk(response, t.response_complete) {
            match ev {
                Ev::Headers(id, hs) => {
                    let Some(s) = self.streams.get_mut(&id) else {
                        continue;
                    };
                    if let Some(status) = header(&hs, ":status").and_then(|v| v.parse::<u16>().ok())
                        && (200..=599).contains(&status)
                    {
                        s.status = Some(status);
                        s.answered_ns.get_or_insert(answered_ns);
                    }
                    if let Some(g) = header(&hs, "grpc-status").and_then(|v| v.parse::<u16>().ok())
                    {
                        s.grpc = Some(g);
                        s.answered_ns.get_or_insert(answered_ns);
                    }
                }
                Ev::Reset(id, code) => {
                    if let Some(mut s) = self.streams.remove(&id) {
                        s.reset = Some(code);
                        s.answered_ns.get_or_insert(answered_ns);
                        out.push(s.call());
                    }
                }
                Ev::End(id) => {
                    if let Some(s) = self.streams.remove(&id) {
                        out.push(s.call());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
