//! HTTP/2 cleartext (h2c) framing. An h2c connection is replayed whole (its client byte
//! stream, frame by frame: the HPACK state of the server depends on every header block
//! before), so client "requests" here are frames; a frame that opens a stream carries the
//! stream's endpoint. Server frames are gathered per stream into responses.

use std::collections::HashMap;

use weft_l7::{HpackDecoder, HpackHeader};

use crate::{BodyKind, Expect, FrameError, Limits, Request, Response};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Keys of h2 streams: this plus the stream id (below it, keys are request numbers).
pub const STREAM_KEY: u64 = 1 << 40;
/// Streams answered at once per connection; more are an error.
const MAX_STREAMS: usize = 1024;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const PUSH_PROMISE: u8 = 5;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn head(buf: &[u8], at: usize, max: usize) -> Result<Option<FrameHead>, FrameError> {
    let Some(h) = buf.get(at..at + 9) else {
        return Ok(None);
    };
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    if len > max {
        return Err(FrameError::TooLarge {
            what: "HTTP/2 frame",
            limit: max,
        });
    }
    Ok(Some(FrameHead {
        len,
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    }))
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload.
fn fragment(kind: u8, flags: u8, payload: &[u8]) -> Result<&[u8], FrameError> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p
            .split_first()
            .ok_or_else(|| FrameError::Malformed("HTTP/2 padded frame without length".into()))?;
        pad = usize::from(n);
        p = rest;
    }
    let skip = match kind {
        HEADERS if flags & PRIORITY != 0 => 5,
        PUSH_PROMISE => 4,
        _ => 0,
    };
    if p.len() < skip + pad {
        return Err(FrameError::Malformed(
            "HTTP/2 frame shorter than its padding".into(),
        ));
    }
    Ok(&p[skip..p.len() - pad])
}

/// A complete header block starting at `at` (HEADERS or PUSH_PROMISE and its
/// CONTINUATIONs): its fragments joined, its flags, stream and end offset.
fn block(
    buf: &[u8],
    at: usize,
    first: &FrameHead,
    max: usize,
) -> Result<Option<(Vec<u8>, usize)>, FrameError> {
    let mut end = at + 9 + first.len;
    let Some(payload) = buf.get(at + 9..end) else {
        return Ok(None);
    };
    let mut joined = fragment(first.kind, first.flags, payload)?.to_vec();
    let mut flags = first.flags;
    while flags & END_HEADERS == 0 {
        let Some(c) = head(buf, end, max)? else {
            return Ok(None);
        };
        if c.kind != CONTINUATION || c.stream != first.stream {
            return Err(FrameError::Malformed(
                "HTTP/2 header block interrupted by another frame".into(),
            ));
        }
        let Some(p) = buf.get(end + 9..end + 9 + c.len) else {
            return Ok(None);
        };
        if joined.len() + p.len() > max {
            return Err(FrameError::TooLarge {
                what: "HTTP/2 header block",
                limit: max,
            });
        }
        joined.extend_from_slice(p);
        flags = c.flags;
        end += 9 + c.len;
    }
    Ok(Some((joined, end)))
}

fn decode(d: &mut HpackDecoder, block: &[u8]) -> Result<Vec<HpackHeader>, FrameError> {
    let mut out = Vec::new();
    if !d.decode_all(block, &mut out) {
        return Err(FrameError::Malformed("HPACK header block".into()));
    }
    Ok(out)
}

fn get<'a>(h: &'a [HpackHeader], name: &str) -> Option<&'a str> {
    h.iter().find(|x| &*x.name == name).map(|x| &*x.value)
}

/// Client side of an h2c connection.
#[derive(Default)]
pub(crate) struct Client {
    preface: bool,
    decoder: HpackDecoder,
    last_stream: u32,
}

impl Client {
    /// Tries to take one unit: the preface, one frame, or one header block.
    pub fn take(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        key_header: Option<&str>,
    ) -> Result<Option<Request>, FrameError> {
        let unit = |bytes: &[u8]| Request {
            bytes: bytes.to_vec(),
            endpoint: None,
            read_only: true,
            request_id: None,
            key_value: None,
            expect: Expect::None,
            key: 0,
        };
        if !self.preface {
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return Err(FrameError::Malformed("HTTP/2 client preface".into()));
            }
            if n < PREFACE.len() {
                return Ok(None);
            }
            self.preface = true;
            return Ok(Some(unit(PREFACE)));
        }
        let Some(h) = head(buf, 0, limits.max_message)? else {
            return Ok(None);
        };
        match h.kind {
            HEADERS => {
                let Some((block, end)) = block(buf, 0, &h, limits.max_message)? else {
                    return Ok(None);
                };
                let headers = decode(&mut self.decoder, &block)?;
                let mut r = unit(&buf[..end]);
                if h.stream > self.last_stream {
                    self.last_stream = h.stream;
                    let method = get(&headers, ":method").unwrap_or("?").to_ascii_uppercase();
                    let path = get(&headers, ":path").unwrap_or("/");
                    let path = path.split(['?', '#']).next().unwrap_or_default();
                    r.endpoint = Some(format!("{method} {}", weft_l7::path_pattern(path)));
                    r.read_only = matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
                    r.request_id =
                        get(&headers, "x-request-id").map(|v| v.chars().take(128).collect());
                    r.key_value = key_header
                        .and_then(|k| get(&headers, k))
                        .map(crate::key_value);
                    r.expect = Expect::H2Stream;
                    r.key = STREAM_KEY + u64::from(h.stream);
                }
                Ok(Some(r))
            }
            CONTINUATION => Err(FrameError::Malformed(
                "HTTP/2 CONTINUATION without a header block".into(),
            )),
            _ => match buf.get(..9 + h.len) {
                Some(b) => Ok(Some(unit(b))),
                None => Ok(None),
            },
        }
    }
}

#[derive(Default)]
struct Stream {
    status: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    error: bool,
}

/// Server side of an h2c connection.
#[derive(Default)]
pub(crate) struct Server {
    decoder: HpackDecoder,
    streams: HashMap<u32, Stream>,
}

/// gRPC statuses that are the server's failures (UNKNOWN, DEADLINE_EXCEEDED,
/// RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
const GRPC_ERRORS: [&str; 6] = ["2", "4", "8", "13", "14", "15"];

impl Server {
    /// Takes every complete frame at the start of `buf`: the bytes taken and the streams
    /// completed by them.
    pub fn take(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<(usize, Vec<Response>), FrameError> {
        let mut at = 0usize;
        let mut done = Vec::new();
        loop {
            let Some(h) = head(buf, at, limits.max_message)? else {
                return Ok((at, done));
            };
            let (end, finished) = match h.kind {
                HEADERS | PUSH_PROMISE => {
                    let Some((block, end)) = block(buf, at, &h, limits.max_message)? else {
                        return Ok((at, done));
                    };
                    // Decoded always: the dynamic table must follow every block.
                    let headers = decode(&mut self.decoder, &block)?;
                    if h.kind == PUSH_PROMISE {
                        (end, false)
                    } else {
                        let s = self.stream(h.stream)?;
                        let status = get(&headers, ":status").map(str::to_owned);
                        if let Some(g) = get(&headers, "grpc-status") {
                            s.error |= GRPC_ERRORS.contains(&g);
                            s.headers.push(("grpc-status".into(), g.to_owned()));
                        }
                        match status {
                            // Interim: the final head follows.
                            Some(st) if st.starts_with('1') => {}
                            Some(st) => {
                                s.error |= st.starts_with('5');
                                s.status = Some(st);
                                for x in &headers {
                                    if !x.name.starts_with(':')
                                        && !matches!(
                                            &*x.name,
                                            "date" | "content-length" | "grpc-status"
                                        )
                                    {
                                        s.headers.push((x.name.to_string(), x.value.to_string()));
                                    }
                                }
                            }
                            None => {}
                        }
                        (end, h.flags & END_STREAM != 0)
                    }
                }
                DATA => {
                    let Some(payload) = buf.get(at + 9..at + 9 + h.len) else {
                        return Ok((at, done));
                    };
                    let data = fragment(DATA, h.flags, payload)?;
                    let max = limits.max_message;
                    let s = self.stream(h.stream)?;
                    let room = max.saturating_sub(s.body.len());
                    s.body.extend_from_slice(&data[..data.len().min(room)]);
                    (at + 9 + h.len, h.flags & END_STREAM != 0)
                }
                RST_STREAM => {
                    if buf.len() < at + 9 + h.len {
                        return Ok((at, done));
                    }
                    let s = self.stream(h.stream)?;
                    s.error = true;
                    s.status.get_or_insert_with(|| "RST_STREAM".into());
                    (at + 9 + h.len, true)
                }
                CONTINUATION => {
                    return Err(FrameError::Malformed(
                        "HTTP/2 CONTINUATION without a header block".into(),
                    ));
                }
                _ => {
                    if buf.len() < at + 9 + h.len {
                        return Ok((at, done));
                    }
                    (at + 9 + h.len, false)
                }
            };
            at = end;
            if finished && let Some(s) = self.streams.remove(&h.stream) {
                done.push(Response {
                    key: STREAM_KEY + u64::from(h.stream),
                    kind: BodyKind::Http,
                    status: s.status.unwrap_or_else(|| "none".into()),
                    error: s.error,
                    headers: s.headers,
                    body: s.body,
                });
            }
        }
    }

    fn stream(&mut self, id: u32) -> Result<&mut Stream, FrameError> {
        if !self.streams.contains_key(&id) && self.streams.len() >= MAX_STREAMS {
            return Err(FrameError::TooLarge {
                what: "HTTP/2 open streams",
                limit: MAX_STREAMS,
            });
        }
        Ok(self.streams.entry(id).or_default())
    }
}
