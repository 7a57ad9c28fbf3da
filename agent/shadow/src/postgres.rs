//! PostgreSQL wire protocol (v3) framing. Client side: the untyped first messages
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), then typed messages; a
//! request is one simple `Query`, or an extended-query batch up to its `Sync`. Server side:
//! a response ends at `ReadyForQuery` (or, during startup, at a fatal `ErrorResponse`);
//! the answer to an SSLRequest is one byte.

use crate::{BodyKind, Expect, FrameError, Limits, Request, Response};

pub(crate) const SSL_REQUEST: u32 = 80_877_103;
pub(crate) const GSSENC_REQUEST: u32 = 80_877_104;
pub(crate) const CANCEL_REQUEST: u32 = 80_877_102;
pub(crate) const PROTOCOL_3: u32 = 196_608;

/// What the server is expected to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgExpect {
    /// One byte, `N` or `S` (SSLRequest / GSSENCRequest).
    Byte,
    /// Messages up to `ReadyForQuery`, or a fatal `ErrorResponse` (startup).
    UntilReady { startup: bool },
}

/// Client-side state across requests.
#[derive(Debug, Default)]
pub(crate) struct ClientState {
    /// The startup message was seen: messages are typed from now on.
    started: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

/// Whether `b` starts like a PostgreSQL client's first message; `None`: too short to say.
pub(crate) fn looks_like_client(b: &[u8]) -> Option<bool> {
    let (Some(len), Some(code)) = (be32(b, 0), be32(b, 4)) else {
        return None;
    };
    Some(
        (8..=10_000).contains(&len)
            && matches!(
                code,
                SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST | PROTOCOL_3
            ),
    )
}

/// A typed message: its type, body and the offset after it.
type Typed<'a> = (u8, &'a [u8], usize);

/// The typed message at `at`.
fn typed(buf: &[u8], at: usize, max: usize) -> Result<Option<Typed<'_>>, FrameError> {
    let (Some(&t), Some(len)) = (buf.get(at), be32(buf, at + 1)) else {
        return Ok(None);
    };
    let len = len as usize;
    if len < 4 {
        return Err(FrameError::Malformed(format!(
            "PostgreSQL message {:?} of length {len}",
            t as char
        )));
    }
    if len > max {
        return Err(FrameError::TooLarge {
            what: "PostgreSQL message",
            limit: max,
        });
    }
    let end = at + 1 + len;
    match buf.get(at + 5..end) {
        Some(body) => Ok(Some((t, body, end))),
        None => Ok(None),
    }
}

fn cstr(b: &[u8]) -> &[u8] {
    b.split(|c| *c == 0).next().unwrap_or_default()
}

/// The first keyword of a statement (upper case), comments and parentheses skipped.
fn keyword(sql: &str) -> String {
    let mut s = sql.trim_start();
    loop {
        if let Some(r) = s.strip_prefix("--") {
            s = r.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = s.strip_prefix("/*") {
            s = r.split_once("*/").map_or("", |(_, r)| r).trim_start();
        } else if let Some(r) = s.strip_prefix('(') {
            s = r.trim_start();
        } else {
            break;
        }
    }
    s.split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Words that make a statement write (or lock, or have effects) wherever they appear.
const WRITE_WORDS: [&str; 16] = [
    "INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE", "GRANT",
    "REVOKE", "COPY", "CALL", "DO", "LOCK", "INTO", "NEXTVAL",
];

/// Whether `sql` only reads: one or more statements each starting with SELECT, SHOW,
/// VALUES, TABLE or WITH, none with a data-modifying word anywhere (outside nothing: the
/// check is on every word, conservatively), no `FOR UPDATE/SHARE` and no set-returning
/// side-effect functions that are known. Unknown is a write.
pub fn is_read_only_sql(sql: &str) -> bool {
    let upper = sql.to_ascii_uppercase();
    let words: Vec<&str> = upper
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return false;
    }
    if words.iter().any(|w| WRITE_WORDS.contains(w))
        || words
            .windows(2)
            .any(|w| w[0] == "FOR" && matches!(w[1], "UPDATE" | "SHARE" | "NO" | "KEY"))
        || upper.contains("SETVAL")
        || upper.contains("PG_ADVISORY")
        || upper.contains("SET_CONFIG")
        || upper.contains("PG_TERMINATE")
        || upper.contains("PG_CANCEL")
    {
        return false;
    }
    upper.split(';').filter(|s| !s.trim().is_empty()).all(|s| {
        matches!(
            keyword(s).as_str(),
            "SELECT" | "SHOW" | "VALUES" | "TABLE" | "WITH"
        )
    })
}

/// Tries to take one request from the start of `buf`.
pub(crate) fn take_request(
    buf: &[u8],
    state: &mut ClientState,
    limits: &Limits,
) -> Result<Option<Request>, FrameError> {
    if !state.started {
        let Some(len) = be32(buf, 0) else {
            return Ok(None);
        };
        let len = len as usize;
        if !(8..=10_000).contains(&len) {
            return Err(FrameError::Malformed(format!(
                "PostgreSQL startup packet of length {len}"
            )));
        }
        let Some(code) = be32(buf, 4) else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        let bytes = buf[..len].to_vec();
        let session = |endpoint: &str, expect| Request {
            bytes: bytes.clone(),
            endpoint: Some(endpoint.to_owned()),
            read_only: true,
            request_id: None,
            key_value: None,
            expect,
            key: 0,
        };
        return match code {
            SSL_REQUEST | GSSENC_REQUEST => Ok(Some(session(
                "postgres SSLRequest",
                Expect::Postgres(PgExpect::Byte),
            ))),
            CANCEL_REQUEST => Err(FrameError::Unsupported(
                "PostgreSQL CancelRequest: it names a production backend".into(),
            )),
            PROTOCOL_3 => {
                state.started = true;
                Ok(Some(session(
                    "postgres startup",
                    Expect::Postgres(PgExpect::UntilReady { startup: true }),
                )))
            }
            other => Err(FrameError::Unsupported(format!(
                "PostgreSQL protocol version {}.{}",
                other >> 16,
                other & 0xffff
            ))),
        };
    }
    let Some((t, body, end)) = typed(buf, 0, limits.max_message)? else {
        return Ok(None);
    };
    let one = |endpoint: Option<String>, read_only: bool, expect: Expect| Request {
        bytes: buf[..end].to_vec(),
        endpoint,
        read_only,
        request_id: None,
        key_value: None,
        expect,
        key: 0,
    };
    match t {
        b'Q' => {
            let sql = String::from_utf8_lossy(cstr(body));
            let k = keyword(&sql);
            let k = if k.is_empty() { "QUERY".into() } else { k };
            Ok(Some(one(
                Some(format!(
                    "postgres {}",
                    k.chars().take(24).collect::<String>()
                )),
                is_read_only_sql(&sql),
                Expect::Postgres(PgExpect::UntilReady { startup: false }),
            )))
        }
        // Password, SASL responses: part of the startup's answer.
        b'p' => Ok(Some(one(None, true, Expect::None))),
        // Terminate: no answer.
        b'X' => Ok(Some(one(None, true, Expect::None))),
        // COPY FROM STDIN data: only ever follows a COPY, which is a write.
        b'd' | b'c' | b'f' => Ok(Some(one(None, false, Expect::None))),
        b'P' | b'B' | b'D' | b'E' | b'H' | b'C' | b'S' | b'F' => {
            // An extended-query batch: messages up to and including Sync.
            let mut at = 0usize;
            let mut parsed: Vec<String> = Vec::new();
            let mut read_only = true;
            let mut first_keyword = None;
            loop {
                let Some((t, body, end)) = typed(buf, at, limits.max_message)? else {
                    return Ok(None);
                };
                if end > limits.max_message {
                    return Err(FrameError::TooLarge {
                        what: "PostgreSQL extended-query batch",
                        limit: limits.max_message,
                    });
                }
                match t {
                    b'P' => {
                        let name = String::from_utf8_lossy(cstr(body)).into_owned();
                        let rest = body.get(name.len() + 1..).unwrap_or_default();
                        let sql = String::from_utf8_lossy(cstr(rest)).into_owned();
                        read_only &= is_read_only_sql(&sql);
                        if first_keyword.is_none() {
                            first_keyword = Some(keyword(&sql));
                        }
                        parsed.push(name);
                    }
                    b'B' => {
                        // Bind names its portal, then its statement: one parsed here.
                        let portal = cstr(body);
                        let rest = body.get(portal.len() + 1..).unwrap_or_default();
                        let stmt = String::from_utf8_lossy(cstr(rest)).into_owned();
                        read_only &= parsed.contains(&stmt);
                    }
                    b'D' | b'E' | b'H' | b'C' => {
                        // Close removes prepared state: a write to the session, harmless
                        // to data, but a later Bind would then differ: keep it exact.
                    }
                    b'S' => {
                        let k = first_keyword
                            .filter(|k| !k.is_empty())
                            .unwrap_or_else(|| "EXECUTE".into());
                        return Ok(Some(Request {
                            bytes: buf[..end].to_vec(),
                            endpoint: Some(format!(
                                "postgres {}",
                                k.chars().take(24).collect::<String>()
                            )),
                            read_only: read_only && !parsed.is_empty(),
                            request_id: None,
                            key_value: None,
                            expect: Expect::Postgres(PgExpect::UntilReady { startup: false }),
                            key: 0,
                        }));
                    }
                    // Function call: a write, conservatively.
                    b'F' => read_only = false,
                    other => {
                        return Err(FrameError::Malformed(format!(
                            "PostgreSQL message {:?} inside an extended-query batch",
                            other as char
                        )));
                    }
                }
                at = end;
            }
        }
        other => Err(FrameError::Malformed(format!(
            "PostgreSQL frontend message type 0x{other:02x}"
        ))),
    }
}

/// Tries to take one response from the start of `buf`.
pub(crate) fn take_response(
    buf: &[u8],
    expect: PgExpect,
    limits: &Limits,
) -> Result<Option<(Response, usize)>, FrameError> {
    let mk = |status: String, error: bool, len: usize| Response {
        key: 0,
        kind: BodyKind::Postgres,
        status,
        error,
        headers: Vec::new(),
        body: buf[..len].to_vec(),
    };
    let startup = match expect {
        PgExpect::Byte => {
            return match buf.first() {
                None => Ok(None),
                Some(b'N') => Ok(Some((mk("N".into(), false, 1), 1))),
                Some(b'S') => Err(FrameError::Unsupported(
                    "PostgreSQL connection switched to TLS".into(),
                )),
                // A server that does not know the request answers an ErrorResponse.
                Some(b'E') => match typed(buf, 0, limits.max_message)? {
                    Some((_, body, end)) => Ok(Some((mk(sqlstate(body), true, end), end))),
                    None => Ok(None),
                },
                Some(other) => Err(FrameError::Malformed(format!(
                    "PostgreSQL answer 0x{other:02x} to an SSLRequest"
                ))),
            };
        }
        PgExpect::UntilReady { startup } => startup,
    };
    let mut at = 0usize;
    let mut error: Option<String> = None;
    loop {
        let Some((t, body, end)) = typed(buf, at, limits.max_message)? else {
            if at > limits.max_message {
                return Err(FrameError::TooLarge {
                    what: "PostgreSQL response",
                    limit: limits.max_message,
                });
            }
            return Ok(None);
        };
        at = end;
        match t {
            b'Z' => {
                let status = error.clone().unwrap_or_else(|| "ok".into());
                return Ok(Some((mk(status, error.is_some(), at), at)));
            }
            b'E' => {
                error.get_or_insert_with(|| sqlstate(body));
                if startup {
                    // Fatal during startup: the server closes the connection.
                    let status = error.clone().unwrap_or_default();
                    return Ok(Some((mk(status, true, at), at)));
                }
            }
            _ => {}
        }
    }
}

/// The SQLSTATE of an ErrorResponse body (`C` field).
fn sqlstate(body: &[u8]) -> String {
    let mut at = 0usize;
    while let Some(&code) = body.get(at) {
        if code == 0 {
            break;
        }
        let value = cstr(body.get(at + 1..).unwrap_or_default());
        if code == b'C' {
            return String::from_utf8_lossy(value).chars().take(8).collect();
        }
        at += 1 + value.len() + 1;
    }
    "error".into()
}

/// The fields of a response for comparison: `command` tags, `columns`, `row[i].<column>`
/// values, `error` codes; messages that vary by connection (BackendKeyData, ParameterStatus,
/// authentication) are left out.
pub(crate) fn fields(body: &[u8], max_fields: usize, out: &mut Vec<(String, String)>) {
    let mut at = 0usize;
    let mut columns: Vec<String> = Vec::new();
    let mut row = 0usize;
    let mut commands = 0usize;
    while out.len() < max_fields {
        let Ok(Some((t, b, end))) = typed(body, at, body.len()) else {
            break;
        };
        at = end;
        match t {
            b'T' => {
                columns.clear();
                let n = b.get(..2).map_or(0, |x| u16::from_be_bytes([x[0], x[1]])) as usize;
                let mut p = 2usize;
                for _ in 0..n {
                    let name = cstr(b.get(p..).unwrap_or_default());
                    columns.push(String::from_utf8_lossy(name).into_owned());
                    p += name.len() + 1 + 18;
                }
                out.push(("columns".into(), columns.join(",")));
            }
            b'D' => {
                let n = b.get(..2).map_or(0, |x| u16::from_be_bytes([x[0], x[1]])) as usize;
                let mut p = 2usize;
                for i in 0..n {
                    let Some(len) = be32(b, p) else { break };
                    p += 4;
                    let col = columns.get(i).cloned().unwrap_or_else(|| i.to_string());
                    let v = if len == u32::MAX {
                        "NULL".to_owned()
                    } else {
                        let v = b.get(p..p + len as usize).unwrap_or_default();
                        p += len as usize;
                        crate::compare::short(v)
                    };
                    out.push((format!("row[{row}].{col}"), v));
                }
                row += 1;
            }
            b'C' => {
                out.push((
                    format!("command[{commands}]"),
                    String::from_utf8_lossy(cstr(b)).into_owned(),
                ));
                commands += 1;
            }
            b'E' => out.push(("error".into(), sqlstate(b))),
            b'I' => out.push(("empty".into(), String::new())),
            _ => {}
        }
    }
}
