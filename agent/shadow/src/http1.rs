//! HTTP/1.1 framing: requests of a client byte stream (Content-Length, chunked,
//! pipelining, `Expect: 100-continue`, an `Upgrade: h2c` request) and responses of a server
//! byte stream (interim 1xx, HEAD/204/304 without body, chunked, Content-Length, read until
//! close).

use crate::{BodyKind, Expect, FrameError, Limits, Request, Response};

/// Methods that only read (RFC 9110 safe methods; TRACE is left out: it echoes).
const READ_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];
/// Methods recognised when detecting HTTP/1 from a stream's first bytes.
pub(crate) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];
/// Longest chunk-size line accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// A parsed message head.
pub(crate) struct Head<'a> {
    /// Bytes of the head, its final empty line included.
    pub len: usize,
    /// Request: method, target, version; response: version, status, reason.
    pub line: [&'a str; 3],
    pub headers: Vec<(&'a str, &'a str)>,
}

impl Head<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a head at the start of `buf`: `Ok(None)` when it is not complete yet.
pub(crate) fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head<'_>>, FrameError> {
    let window = &buf[..buf.len().min(max.saturating_add(4))];
    let Some(end) = find(window, b"\r\n\r\n") else {
        if buf.len() > max {
            return Err(FrameError::TooLarge {
                what: "HTTP/1 head",
                limit: max,
            });
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| FrameError::Malformed("HTTP/1 head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(3, ' ');
    let (a, b, c) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if a.is_empty() || b.is_empty() {
        return Err(FrameError::Malformed(format!(
            "HTTP/1 start line {:?}",
            first.chars().take(80).collect::<String>()
        )));
    }
    let mut headers = Vec::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            return Err(FrameError::Malformed(format!(
                "HTTP/1 header line {:?}",
                l.chars().take(80).collect::<String>()
            )));
        };
        if n.is_empty() || n.contains(' ') {
            return Err(FrameError::Malformed(format!("HTTP/1 header name {n:?}")));
        }
        headers.push((n, v.trim()));
    }
    Ok(Some(Head {
        len: end + 4,
        line: [a, b, c],
        headers,
    }))
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    Fixed(usize),
    Chunked,
    UntilClose,
}

fn body_len(head: &Head<'_>, max: usize) -> Result<BodyLen, FrameError> {
    if let Some(te) = head.header("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or_default().trim();
        if last.eq_ignore_ascii_case("chunked") {
            return Ok(BodyLen::Chunked);
        }
        return Ok(BodyLen::UntilClose);
    }
    let mut len = None;
    for (n, v) in &head.headers {
        if n.eq_ignore_ascii_case("content-length") {
            let l: usize = v
                .trim()
                .parse()
                .map_err(|_| FrameError::Malformed(format!("Content-Length {v:?}")))?;
            if len.is_some_and(|x| x != l) {
                return Err(FrameError::Malformed("conflicting Content-Length".into()));
            }
            len = Some(l);
        }
    }
    match len {
        Some(l) if l > max => Err(FrameError::TooLarge {
            what: "HTTP/1 body",
            limit: max,
        }),
        Some(l) => Ok(BodyLen::Fixed(l)),
        None => Ok(BodyLen::Fixed(usize::MAX)),
    }
}

/// Parses a chunked body at the start of `buf`: the bytes it takes (trailers included)
/// and the decoded data (up to `keep` bytes), or `None` when it is not complete.
fn chunked(buf: &[u8], max: usize, keep: usize) -> Result<Option<(usize, Vec<u8>)>, FrameError> {
    let mut at = 0usize;
    let mut data = Vec::new();
    let mut total = 0usize;
    loop {
        let rest = buf.get(at..).unwrap_or_default();
        let Some(eol) = find(&rest[..rest.len().min(MAX_CHUNK_LINE + 2)], b"\r\n") else {
            if rest.len() > MAX_CHUNK_LINE {
                return Err(FrameError::Malformed("chunk-size line too long".into()));
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol])
            .map_err(|_| FrameError::Malformed("chunk-size line is not UTF-8".into()))?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16)
            .map_err(|_| FrameError::Malformed(format!("chunk size {hex:?}")))?;
        at += eol + 2;
        if size == 0 {
            // Trailers up to an empty line.
            loop {
                let rest = buf.get(at..).unwrap_or_default();
                let Some(eol) = find(&rest[..rest.len().min(8192)], b"\r\n") else {
                    if rest.len() > 8192 {
                        return Err(FrameError::Malformed("trailer line too long".into()));
                    }
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((at, data)));
                }
            }
        }
        total = total.saturating_add(size);
        if total > max {
            return Err(FrameError::TooLarge {
                what: "HTTP/1 chunked body",
                limit: max,
            });
        }
        let end = at.saturating_add(size);
        if buf.len() < end.saturating_add(2) {
            return Ok(None);
        }
        if buf.get(end..end + 2) != Some(b"\r\n") {
            return Err(FrameError::Malformed("chunk not followed by CRLF".into()));
        }
        let room = keep.saturating_sub(data.len());
        data.extend_from_slice(&buf[at..at + size.min(room)]);
        at = end + 2;
    }
}

/// Path of a request target without its query, absolute-form reduced to its path.
fn path_of(target: &str) -> &str {
    let t = target.split(['?', '#']).next().unwrap_or_default();
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        return rest.find('/').map_or("/", |i| &rest[i..]);
    }
    t
}

/// Tries to take one request from the start of `buf`.
pub(crate) fn take_request(
    buf: &[u8],
    limits: &Limits,
    key_header: Option<&str>,
) -> Result<Option<(Request, bool)>, FrameError> {
    // Empty lines before a request are allowed (RFC 9112 2.2); they go with it.
    let skip = buf
        .chunks(2)
        .take_while(|c| *c == b"\r\n")
        .count()
        .saturating_mul(2);
    let rest = &buf[skip..];
    let Some(head) = parse_head(rest, limits.max_head)? else {
        return Ok(None);
    };
    let [method, target, version] = head.line;
    if !version.starts_with("HTTP/1.") {
        return Err(FrameError::Malformed(format!(
            "HTTP/1 request version {:?}",
            version.chars().take(20).collect::<String>()
        )));
    }
    let body = match body_len(&head, limits.max_message)? {
        BodyLen::Fixed(usize::MAX) | BodyLen::UntilClose => 0,
        BodyLen::Fixed(n) => n,
        BodyLen::Chunked => match chunked(&rest[head.len..], limits.max_message, 0)? {
            Some((n, _)) => n,
            None => return Ok(None),
        },
    };
    let len = skip + head.len + body;
    if buf.len() < len {
        return Ok(None);
    }
    let upgrade_h2c = head.has_token("connection", "upgrade") && head.has_token("upgrade", "h2c");
    let method_u = method.to_ascii_uppercase();
    let request = Request {
        bytes: buf[..len].to_vec(),
        endpoint: Some(format!(
            "{method_u} {}",
            weft_l7::path_pattern(path_of(target))
        )),
        read_only: READ_METHODS.contains(&method_u.as_str()),
        request_id: head
            .header("x-request-id")
            .map(|v| v.chars().take(128).collect()),
        key_value: key_header
            .and_then(|k| head.header(k))
            .map(crate::key_value),
        expect: Expect::Http1 {
            head: method_u == "HEAD",
            upgrade_h2c,
        },
        key: 0,
    };
    Ok(Some((request, upgrade_h2c)))
}

/// Headers left out of comparisons: they describe the transfer, not the answer.
const UNCOMPARED: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "date",
];

/// What taking a response found.
pub(crate) enum Taken {
    Response(Response, usize),
    /// A `101 Switching Protocols` answer to an `Upgrade: h2c` request: its head's length.
    SwitchToH2(usize),
}

/// Tries to take one response (interim 1xx responses included in it) from the start of
/// `buf`; `closed`: the stream ended, so a body read until close is complete.
pub(crate) fn take_response(
    buf: &[u8],
    head_request: bool,
    upgrade_h2c: bool,
    closed: bool,
    limits: &Limits,
) -> Result<Option<Taken>, FrameError> {
    let mut at = 0usize;
    loop {
        let Some(head) = parse_head(&buf[at..], limits.max_head)? else {
            return Ok(None);
        };
        let [version, status, _] = head.line;
        if !version.starts_with("HTTP/1.") {
            return Err(FrameError::Malformed(format!(
                "HTTP/1 response version {:?}",
                version.chars().take(20).collect::<String>()
            )));
        }
        let code: u16 = status
            .parse()
            .ok()
            .filter(|c| (100..1000).contains(c))
            .ok_or_else(|| FrameError::Malformed(format!("HTTP/1 status {status:?}")))?;
        if code == 101 {
            if upgrade_h2c && head.has_token("upgrade", "h2c") {
                return Ok(Some(Taken::SwitchToH2(at + head.len)));
            }
            return Err(FrameError::Unsupported(
                "HTTP/1 connection switched to another protocol".into(),
            ));
        }
        if (100..200).contains(&code) {
            at += head.len;
            continue;
        }
        let body_start = at + head.len;
        let (len, body) = if head_request || code == 204 || code == 304 {
            (0, Vec::new())
        } else {
            match body_len(&head, limits.max_message)? {
                BodyLen::Fixed(usize::MAX) | BodyLen::UntilClose => {
                    if !closed {
                        if buf.len() - body_start > limits.max_message {
                            return Err(FrameError::TooLarge {
                                what: "HTTP/1 body",
                                limit: limits.max_message,
                            });
                        }
                        return Ok(None);
                    }
                    let n = buf.len() - body_start;
                    (n, buf[body_start..].to_vec())
                }
                BodyLen::Fixed(n) => {
                    if buf.len() < body_start + n {
                        return Ok(None);
                    }
                    (n, buf[body_start..body_start + n].to_vec())
                }
                BodyLen::Chunked => {
                    match chunked(&buf[body_start..], limits.max_message, limits.max_message)? {
                        Some(x) => x,
                        None => return Ok(None),
                    }
                }
            }
        };
        let headers = head
            .headers
            .iter()
            .filter(|(n, _)| !UNCOMPARED.iter().any(|u| n.eq_ignore_ascii_case(u)))
            .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        let response = Response {
            key: 0,
            kind: BodyKind::Http,
            status: code.to_string(),
            error: code >= 500,
            headers,
            body,
        };
        return Ok(Some(Taken::Response(response, body_start + len)));
    }
}
