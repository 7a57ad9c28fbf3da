//! HTTP/1.x, WebSocket and HTTP/2 (+ gRPC) parsing on truncated prefixes.

use crate::hpack::{Decoder, Header};
use crate::util::{be24, be32, find, label, u8_at};
use crate::{Request, Response};

const METHODS: &[&str] = &[
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "HEAD",
    "OPTIONS",
    "PATCH",
    "CONNECT",
    "TRACE",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
];

/// The HTTP/2 client connection preface.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A parsed HTTP/1 request line: method, target (possibly cut), and the header section.
pub(crate) struct RequestHead<'a> {
    pub method: &'a str,
    pub target: &'a [u8],
    /// Bytes after the request line (header lines), empty when the line is cut.
    pub headers: &'a [u8],
}

/// Recognises an HTTP/1 request line (`METHOD SP target SP HTTP/1.x CRLF`) on a prefix.
/// A line cut by the end of the bytes is accepted when what is visible is consistent.
pub(crate) fn request_head(b: &[u8]) -> Option<RequestHead<'_>> {
    let sp = b.iter().take(12).position(|&c| c == b' ')?;
    let method = std::str::from_utf8(b.get(..sp)?).ok()?;
    if !METHODS.contains(&method) {
        return None;
    }
    let rest = b.get(sp + 1..)?;
    let line_end = find(rest, b"\r\n").or_else(|| rest.iter().position(|&c| c == b'\n'));
    let line = match line_end {
        Some(n) => rest.get(..n)?,
        None => rest,
    };
    let (target, version) = match line.iter().position(|&c| c == b' ') {
        Some(n) => (line.get(..n)?, Some(line.get(n + 1..)?)),
        None => (line, None),
    };
    if target.iter().any(|&c| !(0x21..0x7f).contains(&c)) {
        return None;
    }
    match target.first() {
        Some(b'/') | Some(b'*') => {}
        Some(c) if method == "CONNECT" || c.is_ascii_alphabetic() => {}
        None if line_end.is_none() => {}
        _ => return None,
    }
    match (version, line_end) {
        (Some(v), Some(_)) => {
            if !(v.starts_with(b"HTTP/1.") && v.len() == 8) {
                return None;
            }
        }
        (Some(v), None) => {
            let want = b"HTTP/1.";
            let n = v.len().min(want.len());
            if v.get(..n)? != want.get(..n)? {
                return None;
            }
        }
        // A complete line without a version (HTTP/0.9) is too weak to call.
        (None, Some(_)) => return None,
        (None, None) => {}
    }
    let headers = match line_end {
        Some(n) => {
            let skip = if rest.get(n) == Some(&b'\r') { 2 } else { 1 };
            rest.get(n + skip..).unwrap_or(&[])
        }
        None => &[],
    };
    Some(RequestHead {
        method,
        target,
        headers,
    })
}

/// Status line `HTTP/1.x NNN`: (status, header bytes after the line).
pub(crate) fn status_line(b: &[u8]) -> Option<(u16, &[u8])> {
    if !b.starts_with(b"HTTP/1.") {
        return None;
    }
    if !matches!(u8_at(b, 7)?, b'0' | b'1') || u8_at(b, 8)? != b' ' {
        return None;
    }
    let digits = b.get(9..12)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if let Some(c) = u8_at(b, 12)
        && c != b' '
        && c != b'\r'
        && c != b'\n'
    {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
    if !(100..=599).contains(&status) {
        return None;
    }
    let headers = match find(b, b"\r\n") {
        Some(n) => b.get(n + 2..).unwrap_or(&[]),
        None => &[],
    };
    Some((status, headers))
}

/// Value of header `name` (case-insensitive) when its line is complete (ends with CRLF).
pub(crate) fn header_value<'a>(headers: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let mut rest = headers;
    loop {
        let end = find(rest, b"\r\n")?;
        let line = rest.get(..end)?;
        if line.is_empty() {
            return None;
        }
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            let n = line.get(..colon)?;
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                let v = line.get(colon + 1..)?;
                return Some(v.trim_ascii());
            }
        }
        rest = rest.get(end + 2..)?;
    }
}

/// Whether a header value is a comma-separated list containing `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&c| c == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

pub(crate) fn host_of(headers: &[u8]) -> Option<String> {
    let v = header_value(headers, "host")?;
    if v.is_empty() || v.iter().any(|c| !(0x21..0x7f).contains(c)) {
        return None;
    }
    Some(String::from_utf8_lossy(v).to_ascii_lowercase())
}

pub(crate) fn is_websocket_upgrade(headers: &[u8]) -> bool {
    header_value(headers, "upgrade").is_some_and(|v| has_token(v, "websocket"))
}

pub(crate) fn is_h2c_upgrade(headers: &[u8]) -> bool {
    header_value(headers, "upgrade").is_some_and(|v| has_token(v, "h2c"))
}

pub(crate) fn parse_request_h1(b: &[u8]) -> Option<Request> {
    if b.starts_with(b"PRI * HTTP/2") {
        return None;
    }
    let head = request_head(b)?;
    Some(Request {
        method: head.method.to_string(),
        path: if head.target.is_empty() {
            None
        } else {
            Some(label(head.target))
        },
        operation: None,
    })
}

pub(crate) fn parse_response_h1(b: &[u8]) -> Option<Response> {
    let (status, _) = status_line(b)?;
    Some(Response {
        status: Some(status),
        error: status >= 500,
        code: None,
    })
}

const WS_OPCODES: [(u8, &str); 6] = [
    (0, "CONTINUATION"),
    (1, "TEXT"),
    (2, "BINARY"),
    (8, "CLOSE"),
    (9, "PING"),
    (10, "PONG"),
];

/// WebSocket frame header: (opcode name, masked, payload offset).
fn ws_frame(b: &[u8]) -> Option<(&'static str, bool, usize)> {
    let b0 = u8_at(b, 0)?;
    let b1 = u8_at(b, 1)?;
    // RSV1 is set by permessage-deflate; RSV2/RSV3 have no common use.
    if b0 & 0x30 != 0 {
        return None;
    }
    let name = WS_OPCODES.iter().find(|(op, _)| *op == b0 & 0x0f)?.1;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    let mut off = 2 + match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if masked {
        off += 4;
    }
    Some((name, masked, off))
}

pub(crate) fn parse_ws_frame_request(b: &[u8]) -> Option<Request> {
    let (name, masked, _) = ws_frame(b)?;
    if !masked {
        return None; // client frames are always masked (RFC 6455 5.1)
    }
    Some(Request {
        method: name.to_string(),
        path: None,
        operation: None,
    })
}

pub(crate) fn parse_ws_frame_response(b: &[u8]) -> Option<Response> {
    let (name, masked, off) = ws_frame(b)?;
    if masked {
        return None; // server frames are never masked
    }
    if name == "CLOSE" {
        let code = crate::util::be16(b, off);
        // 1000 normal, 1001 going away; 1011 internal error and up are server failures.
        let error = code.is_some_and(|c| c >= 1011 || c == 1002 || c == 1006);
        return Some(Response {
            status: code,
            error,
            code: None,
        });
    }
    Some(Response {
        status: None,
        error: false,
        code: None,
    })
}

/// One HTTP/2 frame, possibly with a truncated payload.
pub(crate) struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub payload: &'a [u8],
    /// The whole payload is within the bytes.
    pub complete: bool,
}

/// Frames in `b` (after an optional client preface). Stops at the first implausible header;
/// the last frame's payload may be cut.
pub(crate) fn frames(b: &[u8]) -> Vec<Frame<'_>> {
    let mut out = Vec::new();
    let mut i = if b.starts_with(H2_PREFACE) {
        H2_PREFACE.len()
    } else {
        0
    };
    while let (Some(len), Some(kind), Some(flags), Some(_stream)) =
        (be24(b, i), u8_at(b, i + 3), u8_at(b, i + 4), be32(b, i + 5))
    {
        if kind > 9 || len > (1 << 24) {
            break;
        }
        let start = i + 9;
        let end = start.saturating_add(len as usize);
        let payload = b.get(start..end.min(b.len())).unwrap_or(&[]);
        out.push(Frame {
            kind,
            flags,
            payload,
            complete: end <= b.len(),
        });
        if end > b.len() {
            break;
        }
        i = end;
    }
    out
}

/// Whether bytes start with a plausible server-side HTTP/2 SETTINGS frame.
pub(crate) fn is_h2_settings_start(b: &[u8]) -> bool {
    match (be24(b, 0), u8_at(b, 3), u8_at(b, 4), be32(b, 5)) {
        (Some(len), Some(4), Some(0), Some(0)) => len % 6 == 0 && len <= 6 * 16,
        _ => false,
    }
}

/// Decoded header fields of all HEADERS/CONTINUATION frames in `b`.
pub(crate) fn h2_headers(b: &[u8]) -> Vec<Header> {
    let mut dec = Decoder::default();
    let mut out = Vec::new();
    for f in frames(b) {
        let block = match f.kind {
            1 => {
                let mut p = f.payload;
                if f.flags & 0x08 != 0 {
                    // Padded: the pad length byte, then the block, then padding (which only
                    // matters when the frame is complete; HPACK stops at garbage anyway).
                    let pad = usize::from(p.first().copied().unwrap_or(0));
                    p = p.get(1..).unwrap_or(&[]);
                    if f.complete {
                        p = p.get(..p.len().saturating_sub(pad)).unwrap_or(&[]);
                    }
                }
                if f.flags & 0x20 != 0 {
                    p = p.get(5..).unwrap_or(&[]);
                }
                p
            }
            9 => f.payload,
            _ => continue,
        };
        dec.decode(block, &mut out);
    }
    out
}

fn find_header<'a>(hs: &'a [Header], name: &str) -> Option<&'a Header> {
    hs.iter().find(|h| &*h.name == name)
}

/// Whether a `:path` looks like a gRPC method: `/package.Service/Method`.
pub(crate) fn is_grpc_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    let (Some(service), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    let last = service.rsplit('.').next().unwrap_or("");
    ident(service)
        && ident(method)
        && !method.contains('.')
        && last.starts_with(|c: char| c.is_ascii_uppercase())
        && method.starts_with(|c: char| c.is_ascii_uppercase())
}

/// gRPC evidence in HTTP/2 bytes (either direction): a `content-type: application/grpc*`,
/// a `grpc-*` header, a gRPC-shaped `:path`, or the literal string in the raw bytes.
pub(crate) fn h2_is_grpc(b: &[u8]) -> bool {
    if find(b, b"application/grpc").is_some() {
        return true;
    }
    h2_headers(b).iter().any(|h| {
        (&*h.name == "content-type" && h.value.starts_with("application/grpc"))
            || h.name.starts_with("grpc-")
            || (&*h.name == ":path" && !h.partial && is_grpc_path(&h.value))
    })
}

/// `:authority` of the first request headers, when complete.
pub(crate) fn h2_authority(b: &[u8]) -> Option<String> {
    let hs = h2_headers(b);
    let h = find_header(&hs, ":authority").or_else(|| find_header(&hs, "host"))?;
    if h.partial || h.value.is_empty() || !h.value.bytes().all(|c| (0x21..0x7f).contains(&c)) {
        return None;
    }
    Some(h.value.to_ascii_lowercase())
}

pub(crate) fn parse_request_h2(b: &[u8]) -> Option<Request> {
    let hs = h2_headers(b);
    let method = find_header(&hs, ":method").filter(|h| !h.partial)?;
    if method.value.is_empty() || !method.value.bytes().all(|c| c.is_ascii_uppercase()) {
        return None;
    }
    let path = find_header(&hs, ":path").map(|h| label(h.value.as_bytes()));
    Some(Request {
        method: method.value.to_string(),
        path,
        operation: None,
    })
}

/// gRPC status codes counted as errors (server-side failures).
const GRPC_ERROR_CODES: [u16; 6] = [2, 4, 12, 13, 14, 15];

pub(crate) fn parse_response_h2(b: &[u8]) -> Option<Response> {
    let hs = h2_headers(b);
    let status = find_header(&hs, ":status")
        .filter(|h| !h.partial)
        .and_then(|h| h.value.parse::<u16>().ok())
        .filter(|s| (100..=599).contains(s));
    let grpc = find_header(&hs, "grpc-status")
        .filter(|h| !h.partial)
        .and_then(|h| h.value.parse::<u16>().ok());
    if status.is_none() && grpc.is_none() {
        return None;
    }
    let error =
        status.is_some_and(|s| s >= 500) || grpc.is_some_and(|g| GRPC_ERROR_CODES.contains(&g));
    Some(Response {
        status,
        error,
        code: grpc.map(|g| g.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::huffman_encode;

    fn huff_lit(name_index: u8, value: &str) -> Vec<u8> {
        let enc = huffman_encode(value.as_bytes());
        assert!(enc.len() < 127);
        let mut v = vec![name_index, 0x80 | enc.len() as u8];
        v.extend(enc);
        v
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        v.extend([kind, flags, 0, 0, 0, 1]);
        v.extend_from_slice(payload);
        v
    }

    /// grpc-go style: every string Huffman-coded, so "application/grpc" never appears raw.
    #[test]
    fn grpc_with_huffman_strings() {
        let mut block = vec![0x83, 0x86];
        block.extend(huff_lit(0x44, "/grpc.health.v1.Health/Check"));
        block.extend(huff_lit(0x41, "health.svc:9000"));
        let mut c = H2_PREFACE.to_vec();
        c.extend(frame(4, 0, &[]));
        c.extend(frame(1, 0x04, &block));
        assert!(find(&c, b"/grpc.health").is_none());
        assert!(h2_is_grpc(&c));
        assert_eq!(h2_authority(&c).as_deref(), Some("health.svc:9000"));
        let r = parse_request_h2(&c).unwrap();
        assert_eq!(r.path.as_deref(), Some("/grpc.health.v1.Health/Check"));

        // Only content-type (Huffman) as evidence, REST-like path.
        let mut block = vec![0x83, 0x86, 0x84];
        block.extend(huff_lit(0x5f, "application/grpc+proto"));
        let mut c = H2_PREFACE.to_vec();
        c.extend(frame(1, 0x04, &block));
        assert!(h2_is_grpc(&c));

        // Plain HTTP/2 GET: not gRPC.
        let mut c = H2_PREFACE.to_vec();
        c.extend(frame(1, 0x05, &[0x82, 0x87, 0x84]));
        assert!(!h2_is_grpc(&c));
    }

    #[test]
    fn grpc_path_shapes() {
        assert!(is_grpc_path("/helloworld.Greeter/SayHello"));
        assert!(is_grpc_path("/Greeter/SayHello"));
        assert!(!is_grpc_path("/api/users"));
        assert!(!is_grpc_path("/index.html"));
        assert!(!is_grpc_path("/pkg.Service/Method/extra"));
    }
}
