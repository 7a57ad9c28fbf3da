//! Bounds-checked byte readers. Every accessor returns `None` past the end of the input.

pub(crate) fn u8_at(b: &[u8], i: usize) -> Option<u8> {
    b.get(i).copied()
}

pub(crate) fn slice(b: &[u8], start: usize, len: usize) -> Option<&[u8]> {
    b.get(start..start.checked_add(len)?)
}

pub(crate) fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(slice(b, i, 2)?.try_into().ok()?))
}

pub(crate) fn be24(b: &[u8], i: usize) -> Option<u32> {
    let s = slice(b, i, 3)?;
    Some(u32::from_be_bytes([0, *s.first()?, *s.get(1)?, *s.get(2)?]))
}

pub(crate) fn be32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(slice(b, i, 4)?.try_into().ok()?))
}

pub(crate) fn le24(b: &[u8], i: usize) -> Option<u32> {
    let s = slice(b, i, 3)?;
    Some(u32::from_le_bytes([*s.first()?, *s.get(1)?, *s.get(2)?, 0]))
}

pub(crate) fn le16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(slice(b, i, 2)?.try_into().ok()?))
}

pub(crate) fn le32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(slice(b, i, 4)?.try_into().ok()?))
}

pub(crate) fn le_i32(b: &[u8], i: usize) -> Option<i32> {
    Some(i32::from_le_bytes(slice(b, i, 4)?.try_into().ok()?))
}

pub(crate) fn le_f64(b: &[u8], i: usize) -> Option<f64> {
    Some(f64::from_le_bytes(slice(b, i, 8)?.try_into().ok()?))
}

/// Position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// NUL-terminated string starting at `i`: (bytes before the NUL, whether the NUL was seen).
pub(crate) fn cstr(b: &[u8], i: usize) -> (&[u8], bool) {
    let rest = b.get(i..).unwrap_or(&[]);
    match rest.iter().position(|&c| c == 0) {
        Some(n) => (rest.get(..n).unwrap_or(&[]), true),
        None => (rest, false),
    }
}

/// Lossy UTF-8 with control characters replaced, for labels built from wire bytes.
pub(crate) fn label(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// First SQL keyword of a statement: skips whitespace, `--` and `/* */` comments and opening
/// parentheses; returns the upper-cased alphabetic run (at most 32 letters). `complete`: the
/// statement ends with the bytes (otherwise a keyword running into the end may be cut).
pub(crate) fn sql_keyword(b: &[u8], complete: bool) -> Option<String> {
    let mut i = 0usize;
    loop {
        match b.get(i) {
            Some(c) if c.is_ascii_whitespace() || *c == b'(' || *c == b';' => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => {
                while let Some(&c) = b.get(i) {
                    i += 1;
                    if c == b'\n' {
                        break;
                    }
                }
            }
            Some(b'/') if b.get(i + 1) == Some(&b'*') => {
                let rest = b.get(i + 2..)?;
                i = i + 2 + find(rest, b"*/")? + 2;
            }
            _ => break,
        }
    }
    let rest = b.get(i..)?;
    let n = rest.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    if n == 0 || n > 32 {
        return None;
    }
    // A keyword cut by the end of the bytes may be incomplete: only accept it when a
    // delimiter follows.
    if n == rest.len() && !complete {
        return None;
    }
    Some(String::from_utf8_lossy(rest.get(..n)?).to_ascii_uppercase())
}

/// Statement kinds accepted as evidence that bytes are SQL (for payload detection).
pub(crate) const SQL_KEYWORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "WITH",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET",
    "SHOW",
    "CREATE",
    "DROP",
    "ALTER",
    "TRUNCATE",
    "EXPLAIN",
    "COPY",
    "VALUES",
    "CALL",
    "DO",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "START",
    "DISCARD",
    "RESET",
    "GRANT",
    "REVOKE",
    "LOCK",
    "VACUUM",
    "ANALYZE",
    "FETCH",
    "DECLARE",
    "CLOSE",
    "SAVEPOINT",
    "RELEASE",
    "USE",
    "REPLACE",
    "DESCRIBE",
    "DESC",
    "KILL",
    "FLUSH",
    "LOAD",
    "REINDEX",
    "CLUSTER",
    "COMMENT",
    "REFRESH",
    "MERGE",
    "TABLE",
    "ABORT",
    "END",
    "OPTIMIZE",
];

pub(crate) fn is_sql_keyword(k: &str) -> bool {
    SQL_KEYWORDS.contains(&k)
}
