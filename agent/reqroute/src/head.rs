//! Message heads: reading one byte by byte (the start line checked as it arrives, so a
//! stream that is not HTTP/1 is refused at its first wrong byte) up to its empty line, and
//! parsing its header fields.

use crate::CutError;

/// Which start line a head begins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `METHOD SP target SP HTTP/1.x`, after optional empty lines.
    Request,
    /// `HTTP/1.x SP NNN [SP reason]`.
    Response,
}

/// Where the start-line check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Request: before the method (empty lines may come first).
    Lead,
    /// Request: the LF of a leading empty line.
    LeadLf,
    Method,
    TargetStart,
    Target,
    /// `HTTP/1.` and a digit: how many of those bytes were seen.
    Version(u8),
    /// Response: the SP after the version.
    VersionSp,
    /// Response: how many status digits were seen.
    Status(u8),
    Reason,
    Cr,
    Lf,
    /// The start line is complete.
    Done,
}

const VERSION: &[u8; 7] = b"HTTP/1.";

/// Whether `b` is an RFC 9110 `tchar` (token character).
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is an RFC 9110 token.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A control character that may not appear in a field value (HTAB may).
pub(crate) fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Reads one message head; holds its bytes until it is complete.
#[derive(Debug, Clone)]
pub(crate) struct HeadReader {
    kind: Kind,
    max: usize,
    buf: Vec<u8>,
    line: Line,
    /// How many bytes of `\r\n\r\n` the held bytes end with (after the start line).
    tail: u8,
}

impl HeadReader {
    pub fn new(kind: Kind, max: usize) -> Self {
        let mut r = Self {
            kind,
            max,
            buf: Vec::new(),
            line: Line::Lead,
            tail: 0,
        };
        r.reset();
        r
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.tail = 0;
        self.line = match self.kind {
            Kind::Request => Line::Lead,
            Kind::Response => Line::Version(0),
        };
    }

    /// Whether no byte of a head is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads head bytes from the start of `data`: how many it took, and whether the head
    /// is complete (then [`take`](Self::take) gives it).
    pub fn push(&mut self, data: &[u8]) -> Result<(usize, bool), CutError> {
        let mut complete = false;
        let mut taken = data.len();
        for (i, &b) in data.iter().enumerate() {
            if self.buf.len() + i + 1 > self.max {
                return Err(CutError::HeadTooLarge(self.max));
            }
            if self.line != Line::Done {
                self.line = self
                    .step(b)
                    .ok_or_else(|| self.start_line_error(&data[..=i]))?;
                if self.line == Line::Done {
                    self.tail = 2;
                }
                continue;
            }
            self.tail = match (self.tail, b) {
                (0 | 2, b'\r') => self.tail + 1,
                (1 | 3, b'\n') => self.tail + 1,
                (_, b'\r') => 1,
                _ => 0,
            };
            if self.tail == 4 {
                complete = true;
                taken = i + 1;
                break;
            }
        }
        self.buf.extend_from_slice(&data[..taken]);
        Ok((taken, complete))
    }

    /// The complete head's bytes; the reader is ready for the next head.
    pub fn take(&mut self) -> Vec<u8> {
        let bytes = std::mem::take(&mut self.buf);
        self.reset();
        bytes
    }

    /// The start-line state after byte `b`, `None` when `b` cannot come there.
    fn step(&self, b: u8) -> Option<Line> {
        Some(match self.line {
            Line::Lead if b == b'\r' => Line::LeadLf,
            Line::Lead | Line::Method if is_tchar(b) => Line::Method,
            Line::LeadLf if b == b'\n' => Line::Lead,
            Line::Method if b == b' ' => Line::TargetStart,
            Line::TargetStart | Line::Target if b > b' ' && b != 0x7f => Line::Target,
            Line::Target if b == b' ' => Line::Version(0),
            Line::Version(i) if i < 7 && b == VERSION[usize::from(i)] => Line::Version(i + 1),
            Line::Version(7) if b.is_ascii_digit() => match self.kind {
                Kind::Request => Line::Cr,
                Kind::Response => Line::VersionSp,
            },
            Line::VersionSp if b == b' ' => Line::Status(0),
            Line::Status(i) if i < 3 && b.is_ascii_digit() => Line::Status(i + 1),
            Line::Status(3) if b == b' ' => Line::Reason,
            Line::Status(3) | Line::Reason | Line::Cr if b == b'\r' => Line::Lf,
            Line::Reason if !is_ctl(b) => Line::Reason,
            Line::Lf if b == b'\n' => Line::Done,
            _ => return None,
        })
    }

    fn start_line_error(&self, upto: &[u8]) -> CutError {
        let mut seen = self.buf.clone();
        seen.extend_from_slice(upto);
        let start = seen.len().saturating_sub(64);
        let what = match self.kind {
            Kind::Request => "request line (METHOD SP target SP HTTP/1.x)",
            Kind::Response => "status line (HTTP/1.x SP NNN)",
        };
        CutError::Malformed(format!(
            "not an HTTP/1 {what}: {:?}",
            String::from_utf8_lossy(&seen[start..])
        ))
    }
}

/// A parsed head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// The start line's three parts: method, target, version (request) or version, status
    /// code, reason (response; the reason may be empty).
    pub start: [String; 3],
    /// Header fields: names as sent, values trimmed of spaces and tabs.
    pub headers: Vec<(String, String)>,
}

/// Parses a complete head (as [`HeadReader`] read it: its start line is already checked).
pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed, CutError> {
    let mut lead = 0;
    while bytes[lead..].starts_with(b"\r\n") {
        lead += 2;
    }
    let content = &bytes[lead..bytes.len() - 4];
    let mut lines = Lines(content);
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(3, |&b| b == b' ');
    let mut part = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let start = [part(), part(), part()];
    let mut headers = Vec::new();
    for l in lines {
        if l.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(malformed("obsolete line folding in header line", l));
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Err(malformed("header line without a colon", l));
        };
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        if !is_token(name) {
            return Err(malformed("header name is not a token", name));
        }
        if value.contains(&b'\r') || value.contains(&b'\n') {
            return Err(malformed("bare CR or LF in header line", l));
        }
        if value.iter().any(|&b| is_ctl(b)) {
            return Err(malformed("control character in header value", l));
        }
        headers.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(trim_ws(value)).into_owned(),
        ));
    }
    Ok(Parsed { start, headers })
}

fn malformed(what: &str, bytes: &[u8]) -> CutError {
    let shown = &bytes[..bytes.len().min(80)];
    CutError::Malformed(format!("{what}: {:?}", String::from_utf8_lossy(shown)))
}

/// `b` without its leading and trailing optional whitespace (SP and HTAB).
fn trim_ws(b: &[u8]) -> &[u8] {
    let ws = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().take_while(|c| ws(c)).count();
    let end = b.len() - b[start..].iter().rev().take_while(|c| ws(c)).count();
    &b[start..end]
}

/// Lines of a head, split at CRLF.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let l = &self.0[..i];
                self.0 = &self.0[i + 2..];
                Some(l)
            }
            None => Some(std::mem::take(&mut self.0)),
        }
    }
}

/// Values of every `name` field (case-insensitive), split at commas, trimmed, empty list
/// elements left out (RFC 9110 5.6.1).
pub(crate) fn list<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Transfer-Encoding` whose last coding is `chunked`.
    Chunked,
    /// `Transfer-Encoding` present, last coding not `chunked`.
    OtherCoding,
    /// `Content-Length` (without `Transfer-Encoding`).
    Length(u64),
    /// Neither header.
    None,
}

/// The framing headers (RFC 9112 6.3): `Transfer-Encoding` wins over `Content-Length`;
/// several `Content-Length` values must all be the same number.
pub(crate) fn framing(headers: &[(String, String)]) -> Result<Framing, CutError> {
    if headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        let last = list(headers, "transfer-encoding").last();
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::OtherCoding,
        });
    }
    let mut len = None;
    for (n, v) in headers {
        if !n.eq_ignore_ascii_case("content-length") {
            continue;
        }
        for t in v.split(',').map(str::trim) {
            let l = (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    CutError::Malformed(format!("Content-Length {v:?} is not a number"))
                })?;
            if len.is_some_and(|x| x != l) {
                return Err(CutError::Malformed(format!(
                    "differing Content-Length values ({} and {l})",
                    len.unwrap_or_default()
                )));
            }
            len = Some(l);
        }
    }
    Ok(len.map_or(Framing::None, Framing::Length))
}
