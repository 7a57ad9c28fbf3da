//! What the agent reads back from the servers a node runs, and from the tools it runs for
//! a node: bytes it does not control, parsed here without I/O (the fuzz targets
//! `node_pg_reply`, `node_redis_info` and `node_rsync_stats` drive these functions).
//!
//! - PostgreSQL: backend messages of the simple query protocol ([`pg_header`],
//!   [`pg_message`], [`pg_reply`]) and WAL positions as text ([`lsn`]); also the two
//!   messages weft's clients send ([`pg_startup`], [`pg_query`]);
//! - Redis: the bulk string answering `INFO` ([`redis_bulk`]) and one numeric field of
//!   it ([`redis_info_field`]);
//! - rsync: `Total transferred file size` of `--stats` ([`rsync_transferred_bytes`]).

/// The largest PostgreSQL backend message accepted (length field included).
pub const PG_MAX_MESSAGE: usize = 1 << 20;
/// The largest Redis bulk string accepted.
pub const REDIS_MAX_BULK: usize = 1 << 20;

/// Bytes that are not what the protocol says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplyError(pub String);

fn bad(what: impl Into<String>) -> ReplyError {
    ReplyError(what.into())
}

/// One PostgreSQL backend message, as far as the agent cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgMessage {
    /// `R` AuthenticationOk.
    AuthOk,
    /// `R` asking for a password or another method (the node profiles trust).
    AuthRequired(u32),
    /// `E` ErrorResponse: its message field (`M`), else all its text.
    Error(String),
    /// `D` DataRow: the first column (`None`: NULL).
    Row(Option<String>),
    /// `Z` ReadyForQuery.
    Ready,
    /// Anything else (parameter status, row description, command complete, notices...).
    Other(u8),
}

/// The StartupMessage weft's clients send (protocol 3.0, user and database `postgres`:
/// node profiles trust).
pub fn pg_startup() -> Vec<u8> {
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut m = Vec::with_capacity(8 + params.len());
    m.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    m.extend_from_slice(&196_608u32.to_be_bytes());
    m.extend_from_slice(params);
    m
}

/// A simple Query message of `sql`.
pub fn pg_query(sql: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(6 + sql.len());
    q.push(b'Q');
    q.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    q
}

/// Terminate.
pub const PG_TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// The tag and body length of a backend message from its 5-byte header.
pub fn pg_header(head: &[u8; 5]) -> Result<(u8, usize), ReplyError> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=PG_MAX_MESSAGE).contains(&len) {
        return Err(bad(format!(
            "PostgreSQL message {:?} of length {len}",
            head[0] as char
        )));
    }
    Ok((head[0], len - 4))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The text of an ErrorResponse body: its `M` field, else every field's text.
fn pg_error_text(body: &[u8]) -> String {
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        let text = String::from_utf8_lossy(&tail[..end]).into_owned();
        if code == b'M' {
            return text;
        }
        fields.push(text);
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    if fields.is_empty() {
        "error without a message".into()
    } else {
        fields.join(" ")
    }
}

/// A message from its tag and body.
pub fn pg_message(tag: u8, body: &[u8]) -> Result<PgMessage, ReplyError> {
    Ok(match tag {
        b'R' => match be_u32(body, 0) {
            Some(0) => PgMessage::AuthOk,
            Some(method) => PgMessage::AuthRequired(method),
            None => return Err(bad("authentication message without its code")),
        },
        b'E' => PgMessage::Error(pg_error_text(body)),
        b'Z' => PgMessage::Ready,
        b'D' => {
            let columns = body
                .get(..2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
                .ok_or_else(|| bad("data row without its column count"))?;
            if columns < 1 {
                return Err(bad(format!("data row of {columns} columns")));
            }
            let len =
                be_u32(body, 2).ok_or_else(|| bad("data row without its first column"))? as i32;
            if len == -1 {
                PgMessage::Row(None)
            } else {
                let value = usize::try_from(len)
                    .ok()
                    .and_then(|n| body.get(6..6 + n))
                    .ok_or_else(|| {
                        bad(format!(
                            "data row column of {len} bytes in a body of {}",
                            body.len()
                        ))
                    })?;
                PgMessage::Row(Some(String::from_utf8_lossy(value).into_owned()))
            }
        }
        other => PgMessage::Other(other),
    })
}

/// What a complete simple-query exchange answered, read from `bytes` (the backend's
/// messages in order): the first column of the first row before ReadyForQuery; an
/// ErrorResponse is an error. `Ok(None)`: the query returned no row or NULL.
pub fn pg_reply(bytes: &[u8]) -> Result<Option<String>, ReplyError> {
    let mut rest = bytes;
    let mut value: Option<Option<String>> = None;
    loop {
        let head: &[u8; 5] = rest
            .get(..5)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("the reply ends before ReadyForQuery"))?;
        let (tag, len) = pg_header(head)?;
        let body = rest
            .get(5..5 + len)
            .ok_or_else(|| bad("the reply ends inside a message"))?;
        rest = &rest[5 + len..];
        match pg_message(tag, body)? {
            PgMessage::Error(e) => return Err(bad(e)),
            PgMessage::AuthRequired(m) => {
                return Err(bad(format!("authentication method {m} asked for")));
            }
            PgMessage::Row(v) if value.is_none() => value = Some(v),
            PgMessage::Ready => return Ok(value.flatten()),
            _ => {}
        }
    }
}

/// A WAL position as PostgreSQL prints it (`0/3000148`: two 32-bit hex halves) -> bytes.
pub fn lsn(text: &str) -> Result<u64, ReplyError> {
    let wrong = || bad(format!("LSN {text:?}"));
    let (hi, lo) = text.trim().split_once('/').ok_or_else(wrong)?;
    let half = |s: &str| {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(wrong());
        }
        u32::from_str_radix(s, 16).map_err(|_| wrong())
    };
    Ok(u64::from(half(hi)?) << 32 | u64::from(half(lo)?))
}

/// The length of a RESP bulk string from its first line (`$123`, CRLF or not); a Redis
/// error line (`-ERR ...`) is an error with its text.
pub fn redis_bulk_len(first_line: &[u8]) -> Result<usize, ReplyError> {
    let line = String::from_utf8_lossy(first_line);
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(e) = line.strip_prefix('-') {
        return Err(bad(format!("Redis answered an error: {e}")));
    }
    line.strip_prefix('$')
        .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n <= REDIS_MAX_BULK)
        .ok_or_else(|| bad(format!("Redis answered {line:?}, not a bulk string")))
}

/// The body of the bulk string that `bytes` starts with (`$N\r\n` then N bytes).
pub fn redis_bulk(bytes: &[u8]) -> Result<&[u8], ReplyError> {
    let eol = bytes
        .iter()
        .position(|&c| c == b'\n')
        .ok_or_else(|| bad("Redis answer without a complete first line"))?;
    let len = redis_bulk_len(&bytes[..eol])?;
    bytes
        .get(eol + 1..eol + 1 + len)
        .ok_or_else(|| bad(format!("Redis bulk string of {len} bytes cut short")))
}

/// Numeric field `field` of an `INFO` body (`field:123` lines).
pub fn redis_info_field(body: &[u8], field: &str) -> Result<u64, ReplyError> {
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .ok_or_else(|| bad(format!("no {field} in the INFO answer")))?;
    line.trim()
        .parse()
        .map_err(|_| bad(format!("{field} is {:?}, not a count", line.trim())))
}

/// `Total transferred file size: 1,234 bytes` of rsync's `--stats` output, in bytes
/// (thousands separators `,` `.` `'` ignored).
pub fn rsync_transferred_bytes(stdout: &[u8]) -> Result<u64, ReplyError> {
    const LINE: &str = "Total transferred file size: ";
    let text = String::from_utf8_lossy(stdout);
    let value = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(LINE))
        .ok_or_else(|| bad("rsync printed no transferred size"))?;
    let number = value.trim().strip_suffix("bytes").unwrap_or(value).trim();
    let digits: String = number
        .chars()
        .filter(|c| !matches!(c, ',' | '.' | '\''))
        .collect();
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad(format!("rsync's transferred size {number:?}")));
    }
    digits
        .parse()
        .map_err(|_| bad(format!("rsync's transferred size {number:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn row(value: Option<&[u8]>) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        match value {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        msg(b'D', &b)
    }

    #[test]
    fn a_simple_query_reply_gives_its_first_value() {
        let mut r = msg(b'T', b"\0\x01pg_current_wal_lsn\0....");
        r.extend(row(Some(b"0/3000148")));
        r.extend(row(Some(b"second row")));
        r.extend(msg(b'C', b"SELECT 1\0"));
        r.extend(msg(b'Z', b"I"));
        assert_eq!(pg_reply(&r).unwrap().as_deref(), Some("0/3000148"));
        // NULL (a primary's pg_last_wal_replay_lsn) and no row at all.
        let mut null = row(None);
        null.extend(msg(b'Z', b"I"));
        assert_eq!(pg_reply(&null).unwrap(), None);
        assert_eq!(pg_reply(&msg(b'Z', b"I")).unwrap(), None);
    }

    #[test]
    fn errors_cut_replies_and_lies_are_refused() {
        let mut e = msg(b'E', b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0\0");
        e.extend(msg(b'Z', b"I"));
        assert_eq!(pg_reply(&e).unwrap_err().0, "relation \"x\" does not exist");
        assert!(pg_reply(&msg(b'R', &3u32.to_be_bytes())).is_err());
        assert!(pg_reply(&row(Some(b"0/1"))).is_err(), "no ReadyForQuery");
        let mut cut = row(Some(b"0/1"));
        cut.truncate(cut.len() - 1);
        assert!(pg_reply(&cut).is_err());
        // A column longer than its message, a negative length other than NULL, no columns.
        let mut lie = 1i16.to_be_bytes().to_vec();
        lie.extend_from_slice(&100i32.to_be_bytes());
        lie.extend_from_slice(b"short");
        assert!(pg_message(b'D', &lie).is_err());
        let mut neg = 1i16.to_be_bytes().to_vec();
        neg.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(pg_message(b'D', &neg).is_err());
        assert!(pg_message(b'D', &0i16.to_be_bytes()).is_err());
        assert!(pg_message(b'R', b"\0\0").is_err());
        // Lengths below the header's own 4 bytes or beyond the bound.
        assert!(pg_header(&[b'Z', 0, 0, 0, 3]).is_err());
        assert!(pg_header(&[b'Z', 0, 0x10, 0, 1]).is_err());
        assert_eq!(pg_header(&[b'Z', 0, 0, 0, 5]).unwrap(), (b'Z', 1));
        assert_eq!(pg_message(b'R', &[0, 0, 0, 0]).unwrap(), PgMessage::AuthOk);
    }

    #[test]
    fn lsns_parse_to_byte_positions() {
        assert_eq!(lsn("0/3000148").unwrap(), 0x0300_0148);
        assert_eq!(lsn("1/0").unwrap(), 1 << 32);
        assert_eq!(lsn(" FFFFFFFF/FFFFFFFF\n").unwrap(), u64::MAX);
        for wrong in [
            "nope",
            "0/zz",
            "/1",
            "1/",
            "100000000/0",
            "0/100000000",
            "+1/2",
            "1/-2",
        ] {
            assert!(lsn(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn redis_info_fields_are_read_from_the_bulk_answer() {
        let body = "# Replication\r\nrole:master\r\nmaster_repl_offset:4242\r\n";
        let answer = format!("${}\r\n{body}\r\n", body.len());
        let got = redis_bulk(answer.as_bytes()).unwrap();
        assert_eq!(got, body.as_bytes());
        assert_eq!(redis_info_field(got, "master_repl_offset").unwrap(), 4242);
        assert!(redis_info_field(got, "slave_repl_offset").is_err());
        // A field whose name is a prefix of another is not taken for it.
        assert!(redis_info_field(b"master_repl_offset_x:1\r\n", "master_repl_offset").is_err());
        assert!(redis_info_field(b"master_repl_offset:-1\r\n", "master_repl_offset").is_err());
        assert!(
            redis_bulk_len(b"-NOAUTH Authentication required.\r\n")
                .unwrap_err()
                .0
                .contains("NOAUTH")
        );
        assert!(redis_bulk_len(b"$-1\r\n").is_err());
        assert!(redis_bulk_len(b"$99999999\r\n").is_err());
        assert!(redis_bulk(b"$10\r\nshort").is_err());
        assert!(redis_bulk(b"$10").is_err());
    }

    #[test]
    fn rsync_stats_give_the_bytes_transferred() {
        let out = b"Number of files: 3 (reg: 2, dir: 1)\n\
                    Total file size: 2,345 bytes\n\
                    Total transferred file size: 1,234 bytes\n";
        assert_eq!(rsync_transferred_bytes(out).unwrap(), 1234);
        assert_eq!(
            rsync_transferred_bytes(b"Total transferred file size: 0 bytes\n").unwrap(),
            0
        );
        assert!(rsync_transferred_bytes(b"Total file size: 1 bytes\n").is_err());
        assert!(rsync_transferred_bytes(b"Total transferred file size: 1.2K bytes\n").is_err());
        assert!(
            rsync_transferred_bytes(b"Total transferred file size: 99999999999999999999999 bytes")
                .is_err()
        );
    }
}
