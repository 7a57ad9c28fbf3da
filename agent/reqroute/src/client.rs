//! The client side: a client byte stream cut into requests (head, body ranges, end) and,
//! after an upgrade or CONNECT request, a raw tunnel.

use std::ops::Range;

use crate::CutError;
use crate::body::{Body, Chunked};
use crate::head::{self, Framing, HeadReader, Kind};

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Exactly the head's bytes as sent: leading empty lines, request line, header lines
    /// and the final empty line (CRLF CRLF included).
    pub bytes: Vec<u8>,
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target, as sent (non-UTF-8 bytes replaced by U+FFFD here; `bytes` has
    /// them as sent).
    pub target: String,
    /// Header fields in order: names as sent, values trimmed of spaces and tabs.
    pub headers: Vec<(String, String)>,
    /// The request asks to leave HTTP/1 (an `Upgrade` header with `Connection: upgrade`,
    /// e.g. WebSocket or h2c) or is CONNECT.
    pub upgrade: bool,
    /// The method is HEAD (its response has no body).
    pub head_only: bool,
}

impl RequestHead {
    /// The value of the first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a CONNECT request.
    pub fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }
}

/// What a client stream is cut into. Ranges index the `data` passed to that
/// [`RequestCutter::feed`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPiece {
    /// A request starts (its head's bytes are [`RequestHead::bytes`]).
    Head(RequestHead),
    /// Bytes of the current request's body, as sent (chunk framing and trailers included).
    Body(Range<usize>),
    /// The current request is complete (every `Head` gets one, upgrade and CONNECT
    /// requests included: their `Tunnel` pieces come after it).
    End,
    /// After an upgrade or CONNECT request: every following byte, raw.
    Tunnel(Range<usize>),
}

#[derive(Debug, Clone)]
enum State {
    /// Between requests or in a head.
    Head,
    /// In a body; whether the request was an upgrade one.
    Body(Body, bool),
    Tunnel,
}

/// Cuts a client byte stream into [`ClientPiece`]s; holds only an incomplete head.
#[derive(Debug, Clone)]
pub struct RequestCutter {
    head: HeadReader,
    max_head: usize,
    state: State,
    error: Option<CutError>,
}

impl RequestCutter {
    /// A cutter at the start of a stream; `max_head`: the longest request head accepted
    /// (leading empty lines included), and the longest trailer section of a chunked body.
    pub fn new(max_head: usize) -> Self {
        Self {
            head: HeadReader::new(Kind::Request, max_head),
            max_head,
            state: State::Head,
            error: None,
        }
    }

    /// Cuts `data` (the next bytes of the client stream); appends pieces to `out` in stream
    /// order. Every byte of `data` is either in a piece or held as the start of an
    /// incomplete head (returned later inside a [`ClientPiece::Head`]). No piece has an
    /// empty range.
    ///
    /// After an error every call returns it again. The pieces appended before it (in the
    /// failing call too) stay valid, and are the same whatever the feeds: body bytes up to
    /// the first wrong one are passed on, an incomplete or wrong head never is.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<ClientPiece>) -> Result<(), CutError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.cut(data, out);
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    /// Whether the stream is at a request boundary (no partial head, no body in progress,
    /// not tunnelling, no error).
    pub fn idle(&self) -> bool {
        matches!(self.state, State::Head) && self.head.is_empty() && self.error.is_none()
    }

    /// Whether it switched to tunnel mode (after an upgrade or CONNECT request).
    pub fn tunnelling(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    fn cut(&mut self, data: &[u8], out: &mut Vec<ClientPiece>) -> Result<(), CutError> {
        let mut at = 0;
        while at < data.len() {
            match &mut self.state {
                State::Tunnel => {
                    out.push(ClientPiece::Tunnel(at..data.len()));
                    at = data.len();
                }
                State::Head => {
                    let (n, complete) = self.head.push(&data[at..])?;
                    at += n;
                    if !complete {
                        continue;
                    }
                    let head = request(self.head.take())?;
                    let upgrade = head.upgrade;
                    let body = match head::framing(&head.headers)? {
                        Framing::Chunked => Some(Body::Chunked(Chunked::new(self.max_head))),
                        Framing::OtherCoding => {
                            return Err(CutError::Malformed(format!(
                                "request Transfer-Encoding {:?} does not end in chunked",
                                head.header("transfer-encoding").unwrap_or_default()
                            )));
                        }
                        Framing::Length(0) | Framing::None => None,
                        Framing::Length(n) => Some(Body::Length(n)),
                    };
                    out.push(ClientPiece::Head(head));
                    match body {
                        Some(b) => self.state = State::Body(b, upgrade),
                        None => self.end(upgrade, out),
                    }
                }
                State::Body(body, upgrade) => {
                    let upgrade = *upgrade;
                    let (n, complete) = body.push(&data[at..]);
                    if n > 0 {
                        out.push(ClientPiece::Body(at..at + n));
                    }
                    at += n;
                    if complete? {
                        self.end(upgrade, out);
                    }
                }
            }
        }
        Ok(())
    }

    fn end(&mut self, upgrade: bool, out: &mut Vec<ClientPiece>) {
        out.push(ClientPiece::End);
        self.state = if upgrade { State::Tunnel } else { State::Head };
    }
}

/// A complete request head.
fn request(bytes: Vec<u8>) -> Result<RequestHead, CutError> {
    let p = head::parse(&bytes)?;
    let [method, target, _version] = p.start;
    let connection_upgrade =
        head::list(&p.headers, "connection").any(|t| t.eq_ignore_ascii_case("upgrade"));
    let has_upgrade = head::list(&p.headers, "upgrade").next().is_some();
    Ok(RequestHead {
        upgrade: method == "CONNECT" || (connection_upgrade && has_upgrade),
        head_only: method == "HEAD",
        bytes,
        method,
        target,
        headers: p.headers,
    })
}
