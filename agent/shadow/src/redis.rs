//! Redis RESP framing: commands of a client byte stream (multibulk arrays and inline
//! commands, pipelined) and replies of a server byte stream (RESP2 and RESP3 types), and a
//! reply's fields for comparison.

use crate::{BodyKind, Expect, FrameError, Limits, Request, Response};

/// Commands that only read data, or only set up the connection (they must reach the
/// shadow for the rest to make sense). Anything else counts as a write.
const READ_COMMANDS: &[&str] = &[
    "AUTH",
    "BITCOUNT",
    "BITPOS",
    "DBSIZE",
    "ECHO",
    "EXISTS",
    "GEODIST",
    "GEOHASH",
    "GEOPOS",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HELLO",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HRANDFIELD",
    "HSCAN",
    "HSTRLEN",
    "HVALS",
    "KEYS",
    "LINDEX",
    "LLEN",
    "LPOS",
    "LRANGE",
    "MGET",
    "PING",
    "PTTL",
    "RANDOMKEY",
    "SCAN",
    "SCARD",
    "SDIFF",
    "SELECT",
    "SINTER",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "SRANDMEMBER",
    "SSCAN",
    "STRLEN",
    "SUBSTR",
    "SUNION",
    "TTL",
    "TYPE",
    "XLEN",
    "XRANGE",
    "XREVRANGE",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

/// Whether `command` (upper case) only reads.
pub fn is_read_command(command: &str) -> bool {
    READ_COMMANDS.binary_search(&command).is_ok()
}

/// Deepest nesting of aggregate replies accepted.
const MAX_DEPTH: usize = 32;
/// Longest line (simple string, length, inline command) accepted.
const MAX_LINE: usize = 64 * 1024;

fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let rest = buf.get(at..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], at + i + 2))),
        None if rest.len() > MAX_LINE => Err(FrameError::TooLarge {
            what: "RESP line",
            limit: MAX_LINE,
        }),
        None => Ok(None),
    }
}

fn number(b: &[u8]) -> Result<i64, FrameError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            FrameError::Malformed(format!("RESP length {:?}", String::from_utf8_lossy(b)))
        })
}

/// One RESP value, as far as comparing needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A scalar with its type byte ('+', '-', ':', '$', ',', '#', '_', '(', '=', '!').
    Scalar(u8, Vec<u8>),
    /// An aggregate ('*', '%', '~', '>', '|') and its elements.
    Aggregate(u8, Vec<Value>),
}

/// Parses one value at `at`: the value and the offset after it, or `None` when the
/// bytes end first.
pub(crate) fn value(
    buf: &[u8],
    at: usize,
    max: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, FrameError> {
    if depth > MAX_DEPTH {
        return Err(FrameError::Malformed("RESP nested too deep".into()));
    }
    let Some(&t) = buf.get(at) else {
        return Ok(None);
    };
    let Some((l, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match t {
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {
            Ok(Some((Value::Scalar(t, l.to_vec()), next)))
        }
        b'$' | b'=' | b'!' => {
            let n = number(l)?;
            if n < 0 {
                return Ok(Some((Value::Scalar(t, Vec::new()), next)));
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max {
                return Err(FrameError::TooLarge {
                    what: "RESP bulk string",
                    limit: max,
                });
            }
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if buf.get(end..end + 2) != Some(b"\r\n") {
                return Err(FrameError::Malformed(
                    "RESP bulk string without CRLF".into(),
                ));
            }
            Ok(Some((Value::Scalar(t, buf[next..end].to_vec()), end + 2)))
        }
        b'*' | b'%' | b'~' | b'>' | b'|' => {
            let n = number(l)?;
            if n < 0 {
                return Ok(Some((Value::Aggregate(t, Vec::new()), next)));
            }
            let per = if matches!(t, b'%' | b'|') { 2 } else { 1 };
            let n = usize::try_from(n).unwrap_or(usize::MAX).saturating_mul(per);
            if n > max / 3 {
                return Err(FrameError::TooLarge {
                    what: "RESP aggregate",
                    limit: max / 3,
                });
            }
            let mut items = Vec::with_capacity(n.min(1024));
            let mut at = next;
            for _ in 0..n {
                let Some((v, after)) = value(buf, at, max, depth + 1)? else {
                    return Ok(None);
                };
                items.push(v);
                at = after;
            }
            if t == b'|' {
                // An attribute comes before the reply it describes.
                let Some((v, after)) = value(buf, at, max, depth + 1)? else {
                    return Ok(None);
                };
                return Ok(Some((v, after)));
            }
            Ok(Some((Value::Aggregate(t, items), at)))
        }
        other => Err(FrameError::Malformed(format!(
            "RESP type byte 0x{other:02x}"
        ))),
    }
}

/// Tries to take one command from the start of `buf`.
pub(crate) fn take_request(buf: &[u8], limits: &Limits) -> Result<Option<Request>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (name, args, len) = if first == b'*' {
        let Some((v, len)) = value(buf, 0, limits.max_message, 0)? else {
            return Ok(None);
        };
        let Value::Aggregate(_, items) = v else {
            return Err(FrameError::Malformed("RESP command is not an array".into()));
        };
        let mut words = items.into_iter().map(|i| match i {
            Value::Scalar(_, b) => String::from_utf8_lossy(&b).into_owned(),
            Value::Aggregate(..) => String::new(),
        });
        let name = words.next().unwrap_or_default();
        let args: Vec<String> = words.take(2).collect();
        (name, args, len)
    } else {
        let Some((l, len)) = line(buf, 0)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(l);
        let mut words = text.split_ascii_whitespace().map(str::to_owned);
        let name = words.next().unwrap_or_default();
        let args: Vec<String> = words.take(2).collect();
        (name, args, len)
    };
    let name = name.to_ascii_uppercase();
    if name.is_empty() {
        // An empty inline line: redis ignores it and answers nothing.
        return Ok(Some(Request {
            bytes: buf[..len].to_vec(),
            endpoint: None,
            read_only: true,
            request_id: None,
            key_value: None,
            expect: Expect::None,
            key: 0,
        }));
    }
    if matches!(
        name.as_str(),
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR"
    ) {
        return Err(FrameError::Unsupported(format!(
            "redis {name}: replies are pushed, not one per command"
        )));
    }
    // A command's sub-command names the endpoint when it has one ("redis CLIENT SETNAME").
    let endpoint = if matches!(
        name.as_str(),
        "CLIENT" | "CONFIG" | "CLUSTER" | "COMMAND" | "OBJECT" | "MEMORY" | "SCRIPT" | "XINFO"
    ) {
        let sub = args
            .first()
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        let sub: String = sub
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(24)
            .collect();
        format!("redis {name} {sub}")
    } else {
        let n: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(24)
            .collect();
        format!("redis {n}")
    };
    Ok(Some(Request {
        bytes: buf[..len].to_vec(),
        endpoint: Some(endpoint),
        read_only: is_read_command(&name),
        request_id: None,
        key_value: None,
        expect: Expect::Redis,
        key: 0,
    }))
}

/// Tries to take one reply from the start of `buf`.
pub(crate) fn take_response(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(Response, usize)>, FrameError> {
    let Some((v, len)) = value(buf, 0, limits.max_message, 0)? else {
        return Ok(None);
    };
    let (status, error) = match &v {
        Value::Scalar(b'-', e) | Value::Scalar(b'!', e) => {
            let kind = e
                .split(|c| *c == b' ')
                .next()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            (
                format!("-{}", kind.chars().take(32).collect::<String>()),
                true,
            )
        }
        Value::Scalar(t, _) | Value::Aggregate(t, _) => ((*t as char).to_string(), false),
    };
    Ok(Some((
        Response {
            key: 0,
            kind: BodyKind::Redis,
            status,
            error,
            headers: Vec::new(),
            body: buf[..len].to_vec(),
        },
        len,
    )))
}

/// The fields of a reply for comparison: `reply` for a scalar, `reply[0]`, `reply[1][2]`
/// for elements of aggregates; values carry their type byte.
pub(crate) fn fields(body: &[u8], max_fields: usize, out: &mut Vec<(String, String)>) {
    let Ok(Some((v, _))) = value(body, 0, body.len(), 0) else {
        out.push(("reply".into(), crate::compare::digest(body)));
        return;
    };
    fn walk(v: &Value, path: &mut String, max: usize, out: &mut Vec<(String, String)>) {
        if out.len() >= max {
            return;
        }
        match v {
            Value::Scalar(t, b) => {
                let mut s = String::with_capacity(b.len() + 1);
                s.push(*t as char);
                s.push_str(&crate::compare::short(b));
                out.push((path.clone(), s));
            }
            Value::Aggregate(_, items) => {
                if items.is_empty() {
                    out.push((path.clone(), "[]".into()));
                }
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, path, max, out);
                    path.truncate(len);
                }
            }
        }
    }
    walk(&v, &mut "reply".to_owned(), max_fields, out);
}
