//! Redis RESP2/RESP3.

use crate::util::find;
use crate::{Request, Response};

/// Inline commands accepted as detection evidence (clients such as redis-cli and health
/// checks send these without RESP framing).
const INLINE: &[&str] = &[
    "PING",
    "AUTH",
    "HELLO",
    "INFO",
    "QUIT",
    "ECHO",
    "SELECT",
    "CLIENT",
    "COMMAND",
    "GET",
    "SET",
    "KEYS",
    "DBSIZE",
    "MONITOR",
    "SUBSCRIBE",
    "CONFIG",
];

/// Decimal after a type byte, up to CRLF: (value, index after CRLF).
fn number_line(b: &[u8], start: usize) -> Option<(i64, usize)> {
    let rest = b.get(start..)?;
    let end = find(rest, b"\r\n")?;
    let digits = rest.get(..end)?;
    if digits.is_empty() || digits.len() > 11 {
        return None;
    }
    let s = std::str::from_utf8(digits).ok()?;
    Some((s.parse().ok()?, start + end + 2))
}

/// First element of a RESP array of bulk strings: `*<n>\r\n$<len>\r\n<cmd>\r\n`.
/// Returns the command when it is complete within the bytes.
fn array_command(b: &[u8]) -> Option<String> {
    if b.first() != Some(&b'*') {
        return None;
    }
    let (n, i) = number_line(b, 1)?;
    if !(1..=1_000_000).contains(&n) || b.get(i) != Some(&b'$') {
        return None;
    }
    let (len, j) = number_line(b, i + 1)?;
    let len = usize::try_from(len).ok().filter(|l| (1..=64).contains(l))?;
    let cmd = b.get(j..j + len)?;
    if b.get(j + len..j + len + 2) != Some(b"\r\n".as_slice()) && b.len() > j + len {
        return None;
    }
    if !cmd
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-' || *c == b'.')
    {
        return None;
    }
    Some(String::from_utf8_lossy(cmd).to_ascii_uppercase())
}

/// Inline command: the first word of a CRLF-terminated text line.
fn inline_command(b: &[u8]) -> Option<String> {
    let end = find(b, b"\r\n").or_else(|| b.iter().position(|&c| c == b'\n'))?;
    let line = b.get(..end)?;
    let word_len = line.iter().position(|&c| c == b' ').unwrap_or(line.len());
    let word = line.get(..word_len)?;
    if word.is_empty() || word.len() > 32 || !word.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    if !line.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        return None;
    }
    Some(String::from_utf8_lossy(word).to_ascii_uppercase())
}

/// Client evidence: a RESP array whose first bulk string is a command-like word, or a known
/// inline command.
pub(crate) fn detect_client(b: &[u8]) -> bool {
    if b.first() == Some(&b'*') {
        return array_command(b).is_some_and(|c| {
            c.bytes()
                .all(|x| x.is_ascii_alphabetic() || x == b'.' || x == b'_')
        });
    }
    // Inline commands: CRLF-terminated (as redis-cli and RESP clients send them), a known
    // command, for HELLO a numeric protocol version when an argument is given, and no
    // argument for commands that take none.
    let Some(end) = find(b, b"\r\n") else {
        return false;
    };
    let Some(cmd) = inline_command(b) else {
        return false;
    };
    if !INLINE.contains(&cmd.as_str()) {
        return false;
    }
    let line = b.get(..end).unwrap_or(&[]);
    let mut words = line.split(|&c| c == b' ').filter(|w| !w.is_empty()).skip(1);
    match (cmd.as_str(), words.next()) {
        ("HELLO", Some(v)) => v.iter().all(u8::is_ascii_digit),
        ("QUIT" | "DBSIZE" | "MONITOR", Some(_)) => false,
        _ => true,
    }
}

/// Server evidence when the client said nothing: the protected-mode refusal or NOAUTH.
pub(crate) fn detect_server(b: &[u8]) -> bool {
    b.starts_with(b"-DENIED Redis") || b.starts_with(b"-NOAUTH ")
}

pub(crate) fn parse_request(b: &[u8]) -> Option<Request> {
    let method = if b.first() == Some(&b'*') {
        array_command(b)?
    } else {
        inline_command(b)?
    };
    Some(Request {
        method,
        path: None,
        operation: None,
    })
}

/// Reply type from the first byte; `-` (and RESP3 `!` bulk errors) are errors, with the error
/// kind ("ERR", "WRONGTYPE", "NOAUTH", ...) as the code.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let t = *b.first()?;
    if !b"+-:$*_,#!=(%~>|".contains(&t) {
        return None;
    }
    let line_end = find(b, b"\r\n").unwrap_or(b.len());
    let line = b.get(1..line_end)?;
    if !line
        .iter()
        .all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\t')
    {
        return None;
    }
    match t {
        b'-' => {
            let kind_len = line.iter().position(|&c| c == b' ').unwrap_or(line.len());
            let kind = line.get(..kind_len)?;
            let code = (!kind.is_empty() && kind.iter().all(|c| c.is_ascii_uppercase()))
                .then(|| String::from_utf8_lossy(kind).into_owned());
            Some(Response {
                status: None,
                error: true,
                code,
            })
        }
        b'!' => Some(Response {
            status: None,
            error: true,
            code: None,
        }),
        b':' | b'$' | b'*' | b'(' | b'%' | b'~' | b'>' | b'|' | b'=' => {
            // These carry a number on the first line (may be cut when the line is).
            let ok = line.is_empty()
                || line
                    .iter()
                    .enumerate()
                    .all(|(i, c)| c.is_ascii_digit() || (i == 0 && *c == b'-'))
                || matches!(t, b'(');
            ok.then_some(Response {
                status: None,
                error: false,
                code: None,
            })
        }
        _ => Some(Response {
            status: None,
            error: false,
            code: None,
        }),
    }
}
