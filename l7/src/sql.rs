//! PostgreSQL and MySQL wire protocols.

use crate::util::{be32, cstr, is_sql_keyword, le16, le24, slice, sql_keyword, u8_at};
use crate::{Request, Response};

const PG_PROTOCOL_3: u32 = 196_608;
const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSSENC_REQUEST: u32 = 80_877_104;
const PG_CANCEL_REQUEST: u32 = 80_877_102;

/// An untyped PostgreSQL startup-phase message: (kind, length).
fn pg_startup(b: &[u8]) -> Option<(&'static str, u32)> {
    let len = be32(b, 0)?;
    let code = be32(b, 4)?;
    let kind = match code {
        PG_PROTOCOL_3 => "STARTUP",
        PG_SSL_REQUEST => "SSL_REQUEST",
        PG_GSSENC_REQUEST => "GSSENC_REQUEST",
        PG_CANCEL_REQUEST => "CANCEL_REQUEST",
        _ => return None,
    };
    let ok = match code {
        PG_PROTOCOL_3 => (9..=10_000).contains(&len),
        PG_CANCEL_REQUEST => len == 16,
        _ => len == 8,
    };
    ok.then_some((kind, len))
}

const PG_FRONTEND: &[(u8, &str)] = &[
    (b'Q', "QUERY"),
    (b'P', "PREPARE"),
    (b'B', "BIND"),
    (b'E', "EXECUTE"),
    (b'D', "DESCRIBE"),
    (b'C', "CLOSE"),
    (b'S', "SYNC"),
    (b'H', "FLUSH"),
    (b'F', "FUNCTION_CALL"),
    (b'X', "TERMINATE"),
    (b'p', "PASSWORD"),
    (b'd', "COPY_DATA"),
    (b'c', "COPY_DONE"),
    (b'f', "COPY_FAIL"),
];

fn pg_typed_len(b: &[u8]) -> Option<u32> {
    let len = be32(b, 1)?;
    (4..=(1 << 30)).contains(&len).then_some(len)
}

/// PostgreSQL client evidence: a startup-phase message, or a simple query / parse message
/// whose SQL starts with a known keyword.
pub(crate) fn pg_detect_client(b: &[u8]) -> bool {
    if let Some((kind, _)) = pg_startup(b) {
        if kind != "STARTUP" {
            return true;
        }
        // Parameters: "user\0...", or another key; require a visible key that is text.
        let (key, _) = cstr(b, 8);
        return !key.is_empty() && key.iter().all(|c| c.is_ascii_graphic());
    }
    match u8_at(b, 0) {
        Some(b'Q') if pg_typed_len(b).is_some() => {
            let (sql, done) = cstr(b, 5);
            sql_keyword(sql, done).is_some_and(|k| is_sql_keyword(&k))
        }
        Some(b'P') if pg_typed_len(b).is_some() => {
            let (name, done) = cstr(b, 5);
            done && {
                let (sql, done) = cstr(b, 5 + name.len() + 1);
                sql_keyword(sql, done).is_some_and(|k| is_sql_keyword(&k))
            }
        }
        _ => false,
    }
}

/// PostgreSQL server evidence when the client said nothing recognisable: an authentication
/// request ('R', length 8..=, known auth code).
pub(crate) fn pg_detect_server(b: &[u8]) -> bool {
    u8_at(b, 0) == Some(b'R')
        && be32(b, 1).is_some_and(|l| (8..=2048).contains(&l))
        && be32(b, 5).is_some_and(|code| code <= 12)
}

pub(crate) fn pg_parse_request(b: &[u8]) -> Option<Request> {
    if let Some((kind, _)) = pg_startup(b) {
        return Some(Request {
            method: kind.to_string(),
            path: None,
            operation: None,
        });
    }
    let t = u8_at(b, 0)?;
    let method = PG_FRONTEND.iter().find(|(c, _)| *c == t)?.1;
    pg_typed_len(b)?;
    let operation = match t {
        b'Q' => {
            let (sql, done) = cstr(b, 5);
            sql_keyword(sql, done)
        }
        b'P' => {
            let (name, done) = cstr(b, 5);
            if done {
                let (sql, done) = cstr(b, 5 + name.len() + 1);
                sql_keyword(sql, done)
            } else {
                None
            }
        }
        _ => None,
    };
    Some(Request {
        method: method.to_string(),
        path: None,
        operation,
    })
}

const PG_BACKEND: &[u8] = b"RSKZTDCEN123ntsIGHWdcAV";

/// Walks backend messages; an ErrorResponse anywhere in the visible bytes is an error, and
/// its SQLSTATE (field 'C') is reported when visible.
pub(crate) fn pg_parse_response(b: &[u8]) -> Option<Response> {
    // Single-byte answers to SSLRequest / GSSENCRequest.
    if b.len() == 1 && matches!(b.first(), Some(b'S') | Some(b'N') | Some(b'G')) {
        return Some(Response {
            status: None,
            error: false,
            code: None,
        });
    }
    let mut i = 0usize;
    let mut seen = false;
    while let Some(t) = u8_at(b, i) {
        if !PG_BACKEND.contains(&t) {
            break;
        }
        let Some(len) = be32(b, i + 1).filter(|l| (4..=(1 << 30)).contains(l)) else {
            break;
        };
        seen = true;
        if t == b'E' {
            return Some(Response {
                status: None,
                error: true,
                code: pg_sqlstate(b, i + 5),
            });
        }
        i = i.saturating_add(1 + len as usize);
    }
    seen.then_some(Response {
        status: None,
        error: false,
        code: None,
    })
}

/// Finds the 'C' (SQLSTATE) field among ErrorResponse fields starting at `i`.
fn pg_sqlstate(b: &[u8], mut i: usize) -> Option<String> {
    for _ in 0..32 {
        let f = u8_at(b, i)?;
        if f == 0 {
            return None;
        }
        let (val, done) = cstr(b, i + 1);
        if f == b'C' {
            return (done && val.len() == 5 && val.iter().all(u8::is_ascii_alphanumeric))
                .then(|| String::from_utf8_lossy(val).into_owned());
        }
        if !done {
            return None;
        }
        i += 1 + val.len() + 1;
    }
    None
}

/// MySQL packet header: (payload length, sequence id).
fn my_header(b: &[u8]) -> Option<(u32, u8)> {
    let len = le24(b, 0)?;
    let seq = u8_at(b, 3)?;
    (len > 0).then_some((len, seq))
}

/// MySQL server greeting (HandshakeV10): seq 0, protocol 10, a version like "8.0.36\0";
/// or an early ERR packet (e.g. "Host ... is not allowed to connect").
pub(crate) fn mysql_detect_server(b: &[u8]) -> bool {
    let Some((len, seq)) = my_header(b) else {
        return false;
    };
    if seq != 0 || len > 1024 {
        return false;
    }
    match u8_at(b, 4) {
        Some(10) => {
            // Version such as "8.0.36" or "5.5.5-10.11.6-MariaDB", possibly cut.
            let (ver, _) = cstr(b, 5);
            ver.first().is_some_and(u8::is_ascii_digit)
                && ver.get(1).is_none_or(|c| c.is_ascii_digit() || *c == b'.')
                && ver.iter().all(|c| c.is_ascii_graphic())
                && ver.len() <= 64
        }
        Some(0xff) => {
            le16(b, 5).is_some_and(|code| (1000..=5000).contains(&code))
                && len >= 3
                && slice(b, 7, 1)
                    .is_some_and(|c| c.iter().all(|&x| x.is_ascii_graphic() || x == b' '))
        }
        _ => false,
    }
}

/// MySQL client evidence mid-connection: a COM_QUERY (seq 0) with a known SQL keyword.
pub(crate) fn mysql_detect_client(b: &[u8]) -> bool {
    let Some((len, seq)) = my_header(b) else {
        return false;
    };
    seq == 0
        && u8_at(b, 4) == Some(0x03)
        && len >= 2
        && mysql_statement(b, len)
            .and_then(|(s, done)| sql_keyword(s, done))
            .is_some_and(|k| is_sql_keyword(&k))
}

/// Statement text of a COM_QUERY / COM_STMT_PREPARE packet: (visible text, complete).
fn mysql_statement(b: &[u8], len: u32) -> Option<(&[u8], bool)> {
    let end = 4usize.checked_add(len as usize)?;
    let complete = b.len() >= end;
    Some((b.get(5..end.min(b.len()))?, complete))
}

const MYSQL_COMMANDS: &[(u8, &str)] = &[
    (0x01, "QUIT"),
    (0x02, "INIT_DB"),
    (0x03, "QUERY"),
    (0x04, "FIELD_LIST"),
    (0x05, "CREATE_DB"),
    (0x06, "DROP_DB"),
    (0x07, "REFRESH"),
    (0x08, "SHUTDOWN"),
    (0x09, "STATISTICS"),
    (0x0a, "PROCESS_INFO"),
    (0x0c, "PROCESS_KILL"),
    (0x0d, "DEBUG"),
    (0x0e, "PING"),
    (0x11, "CHANGE_USER"),
    (0x12, "BINLOG_DUMP"),
    (0x16, "STMT_PREPARE"),
    (0x17, "STMT_EXECUTE"),
    (0x18, "STMT_SEND_LONG_DATA"),
    (0x19, "STMT_CLOSE"),
    (0x1a, "STMT_RESET"),
    (0x1b, "SET_OPTION"),
    (0x1c, "STMT_FETCH"),
    (0x1e, "BINLOG_DUMP_GTID"),
    (0x1f, "RESET_CONNECTION"),
];

pub(crate) fn mysql_parse_request(b: &[u8]) -> Option<Request> {
    let (len, seq) = my_header(b)?;
    if seq == 1 && len >= 32 {
        // HandshakeResponse41 / SSLRequest: capability flags with CLIENT_PROTOCOL_41 (0x200).
        let caps = le16(b, 4)?;
        if caps & 0x0200 != 0 {
            let method = if len == 32 {
                "SSL_REQUEST"
            } else {
                "HANDSHAKE_RESPONSE"
            };
            return Some(Request {
                method: method.to_string(),
                path: None,
                operation: None,
            });
        }
        return None;
    }
    if seq != 0 {
        return None;
    }
    let cmd = u8_at(b, 4)?;
    let method = MYSQL_COMMANDS.iter().find(|(c, _)| *c == cmd)?.1;
    let operation = match cmd {
        0x03 | 0x16 => mysql_statement(b, len).and_then(|(s, done)| sql_keyword(s, done)),
        _ => None,
    };
    let path = match cmd {
        // COM_INIT_DB carries the schema name.
        0x02 => {
            let name = b.get(5..(4 + len as usize).min(b.len()))?;
            (!name.is_empty()).then(|| crate::util::label(name))
        }
        _ => None,
    };
    Some(Request {
        method: method.to_string(),
        path,
        operation,
    })
}

/// First packet of a MySQL response: ERR (0xff) is an error with its number as the status and
/// the SQLSTATE as the code; OK (0x00), EOF (0xfe), a greeting or a result-set header are not.
pub(crate) fn mysql_parse_response(b: &[u8]) -> Option<Response> {
    let (len, _seq) = my_header(b)?;
    if len > (1 << 24) - 1 {
        return None;
    }
    match u8_at(b, 4)? {
        0xff => {
            let errno = le16(b, 5);
            let code = if u8_at(b, 7) == Some(b'#') {
                slice(b, 8, 5)
                    .filter(|s| s.iter().all(u8::is_ascii_alphanumeric))
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            } else {
                None
            };
            Some(Response {
                status: errno,
                error: true,
                code,
            })
        }
        _ => Some(Response {
            status: None,
            error: false,
            code: None,
        }),
    }
}
