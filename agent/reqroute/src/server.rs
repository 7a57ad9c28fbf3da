//! The server side: a server byte stream cut into responses (heads, body ranges, ends), in
//! the order of the requests announced to it; `101` and `2xx` to CONNECT start a tunnel.

use std::collections::VecDeque;
use std::ops::Range;

use crate::CutError;
use crate::body::{Body, Chunked};
use crate::head::{self, Framing, HeadReader, Kind};

/// What a server stream is cut into. Ranges index the `data` passed to that
/// [`ResponseCutter::feed`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPiece {
    /// One complete response head, as sent (its final CRLF CRLF included): a final
    /// response's, or an interim (1xx) one's (then no `End` follows it: the request still
    /// waits for its final response).
    Head(Vec<u8>),
    /// Bytes of the current response's body, as sent (chunk framing and trailers included).
    Body(Range<usize>),
    /// The final response to the oldest expected request is complete.
    End,
    /// After a `101` answer, or a `2xx` answer to CONNECT: every following byte, raw.
    Tunnel(Range<usize>),
}

/// A request announced to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    head_only: bool,
    connect: bool,
}

#[derive(Debug, Clone)]
enum State {
    /// Between responses or in a head; whether an interim (1xx) response of the current
    /// request was already cut.
    Head {
        interim: bool,
    },
    Body(Body),
    Tunnel,
}

/// Cuts a server byte stream into [`ServerPiece`]s; holds only an incomplete head.
#[derive(Debug, Clone)]
pub struct ResponseCutter {
    head: HeadReader,
    max_head: usize,
    expected: VecDeque<Expected>,
    state: State,
    error: Option<CutError>,
}

impl ResponseCutter {
    /// A cutter at the start of a stream; `max_head`: the longest response head accepted,
    /// and the longest trailer section of a chunked body.
    pub fn new(max_head: usize) -> Self {
        Self {
            head: HeadReader::new(Kind::Response, max_head),
            max_head,
            expected: VecDeque::new(),
            state: State::Head { interim: false },
            error: None,
        }
    }

    /// Announces a request sent to this server (its responses come in this order):
    /// `head_only` for HEAD ([`RequestHead::head_only`](crate::RequestHead::head_only)),
    /// `connect` for CONNECT ([`RequestHead::is_connect`](crate::RequestHead::is_connect)).
    pub fn expect(&mut self, head_only: bool, connect: bool) {
        self.expected.push_back(Expected { head_only, connect });
    }

    /// Requests announced and not completely answered (a request answered by `101` or a
    /// `2xx` to CONNECT counts as answered).
    pub fn awaiting(&self) -> usize {
        self.expected.len()
    }

    /// Cuts `data`, appending pieces to `out`; stops at an [`ServerPiece::End`]: returns how
    /// many bytes of `data` it consumed (more than zero when `data` is not empty), so the
    /// caller can keep the rest for the next response. Consumed bytes are in a piece, or
    /// held as the start of an incomplete head (returned later in a [`ServerPiece::Head`]).
    /// Bytes that arrive when no request is expected are [`CutError::Malformed`].
    ///
    /// After an error every call returns it again. The pieces appended before it (in the
    /// failing call too) stay valid, and are the same whatever the feeds: body bytes up to
    /// the first wrong one are passed on, an incomplete or wrong head never is.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<ServerPiece>) -> Result<usize, CutError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = self.cut(data, out);
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    /// The server closed its side: a body read until close is complete (`End`); a
    /// response in progress otherwise (a partial head, a body, or only interim responses so
    /// far) is [`CutError::Truncated`]; nothing in progress (or a tunnel): `Ok` with no piece.
    pub fn finish(&mut self, out: &mut Vec<ServerPiece>) -> Result<(), CutError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = match &self.state {
            State::Tunnel => Ok(()),
            State::Body(Body::UntilClose) => {
                self.end(out);
                Ok(())
            }
            State::Head { interim: false } if self.head.is_empty() => Ok(()),
            State::Head { .. } | State::Body(_) => Err(CutError::Truncated),
        };
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }

    /// Whether it switched to tunnel mode (after a `101`, or a `2xx` to CONNECT).
    pub fn tunnelling(&self) -> bool {
        matches!(self.state, State::Tunnel)
    }

    fn cut(&mut self, data: &[u8], out: &mut Vec<ServerPiece>) -> Result<usize, CutError> {
        let mut at = 0;
        while at < data.len() {
            match &mut self.state {
                State::Tunnel => {
                    out.push(ServerPiece::Tunnel(at..data.len()));
                    at = data.len();
                }
                State::Head { .. } => {
                    let Some(&expected) = self.expected.front() else {
                        return Err(CutError::Malformed("bytes before any request".into()));
                    };
                    let (n, complete) = self.head.push(&data[at..])?;
                    at += n;
                    if !complete {
                        continue;
                    }
                    let bytes = self.head.take();
                    let p = head::parse(&bytes)?;
                    let status: u16 = p.start[1].parse().unwrap_or_default();
                    out.push(ServerPiece::Head(bytes));
                    if status == 101 || (expected.connect && (200..300).contains(&status)) {
                        self.expected.pop_front();
                        self.state = State::Tunnel;
                        continue;
                    }
                    if (100..200).contains(&status) {
                        self.state = State::Head { interim: true };
                        continue;
                    }
                    let body = if expected.head_only || status == 204 || status == 304 {
                        None
                    } else {
                        match head::framing(&p.headers)? {
                            Framing::Chunked => Some(Body::Chunked(Chunked::new(self.max_head))),
                            Framing::OtherCoding | Framing::None => Some(Body::UntilClose),
                            Framing::Length(0) => None,
                            Framing::Length(n) => Some(Body::Length(n)),
                        }
                    };
                    match body {
                        Some(b) => self.state = State::Body(b),
                        None => {
                            self.end(out);
                            return Ok(at);
                        }
                    }
                }
                State::Body(body) => {
                    let (n, complete) = body.push(&data[at..]);
                    if n > 0 {
                        out.push(ServerPiece::Body(at..at + n));
                    }
                    at += n;
                    if complete? {
                        self.end(out);
                        return Ok(at);
                    }
                }
            }
        }
        Ok(at)
    }

    fn end(&mut self, out: &mut Vec<ServerPiece>) {
        out.push(ServerPiece::End);
        self.expected.pop_front();
        self.state = State::Head { interim: false };
    }
}
