//! MongoDB wire protocol (OP_MSG, OP_QUERY, OP_REPLY, OP_COMPRESSED) and a BSON prefix reader.

use crate::util::{cstr, le_f64, le_i32, le32, slice, u8_at};
use crate::{Request, Response};

const OP_REPLY: u32 = 1;
const OP_QUERY: u32 = 2004;
const OP_COMPRESSED: u32 = 2012;
const OP_MSG: u32 = 2013;

/// Message header: (messageLength, responseTo, opCode).
fn header(b: &[u8]) -> Option<(u32, u32, u32)> {
    let len = le32(b, 0)?;
    let _request_id = le32(b, 4)?;
    let response_to = le32(b, 8)?;
    let op = le32(b, 12)?;
    if !(16 + 5..=48_000_000).contains(&len) {
        return None;
    }
    Some((len, response_to, op))
}

/// Client evidence: a request header (responseTo 0) with OP_MSG, OP_QUERY or OP_COMPRESSED.
pub(crate) fn detect_client(b: &[u8]) -> bool {
    match header(b) {
        Some((_, 0, OP_MSG)) => le32(b, 16).is_none_or(|flags| flags & !0x0001_0003 == 0),
        Some((_, 0, OP_QUERY)) => {
            let (coll, done) = cstr(b, 20);
            coll.iter().all(|c| c.is_ascii_graphic()) && (!done || coll.contains(&b'.'))
        }
        Some((_, 0, OP_COMPRESSED)) => true,
        _ => false,
    }
}

/// A BSON value we care about.
enum Value<'a> {
    Str(&'a [u8]),
    Double(f64),
    Int(i64),
    Other,
}

/// Iterates BSON elements of a document starting at `start` (the int32 size), calling `f`
/// with each (name, value). Stops at the end of the visible bytes.
fn elements<'a>(b: &'a [u8], start: usize, mut f: impl FnMut(&'a [u8], Value<'a>) -> bool) {
    let mut i = start + 4;
    for _ in 0..64 {
        let Some(t) = u8_at(b, i) else { return };
        if t == 0 {
            return;
        }
        let (name, done) = cstr(b, i + 1);
        if !done {
            return;
        }
        let v = i + 1 + name.len() + 1;
        let (value, size) = match t {
            0x01 => match le_f64(b, v) {
                Some(d) => (Value::Double(d), 8),
                None => return,
            },
            0x02 => {
                let Some(n) = le32(b, v) else { return };
                let n = n as usize;
                let s = slice(b, v + 4, n.saturating_sub(1));
                match s {
                    Some(s) => (Value::Str(s), 4 + n),
                    None => return,
                }
            }
            0x03 | 0x04 => match le32(b, v) {
                Some(n) => (Value::Other, n as usize),
                None => return,
            },
            0x05 => match le32(b, v) {
                Some(n) => (Value::Other, 5 + n as usize),
                None => return,
            },
            0x07 => (Value::Other, 12),
            0x08 => (Value::Int(i64::from(u8_at(b, v).unwrap_or(0))), 1),
            0x09 | 0x11 => (Value::Other, 8),
            0x12 => match slice(b, v, 8).and_then(|s| s.try_into().ok()) {
                Some(a) => (Value::Int(i64::from_le_bytes(a)), 8),
                None => return,
            },
            0x10 => match le_i32(b, v) {
                Some(n) => (Value::Int(i64::from(n)), 4),
                None => return,
            },
            0x0a | 0x7f | 0xff => (Value::Other, 0),
            0x13 => (Value::Other, 16),
            _ => return,
        };
        if !f(name, value) {
            return;
        }
        i = v.saturating_add(size);
    }
}

/// Offset of the body document: OP_MSG section kind 0, or OP_QUERY's query document.
fn body_doc(b: &[u8], op: u32) -> Option<usize> {
    match op {
        OP_MSG => {
            // flagBits(4), then sections; the kind-0 body is usually first.
            if u8_at(b, 20)? != 0 {
                return None;
            }
            Some(21)
        }
        OP_QUERY => {
            let (coll, done) = cstr(b, 20);
            if !done {
                return None;
            }
            Some(20 + coll.len() + 1 + 8)
        }
        OP_REPLY => Some(36),
        _ => None,
    }
}

pub(crate) fn parse_request(b: &[u8]) -> Option<Request> {
    let (_, _, op) = header(b)?;
    if op == OP_COMPRESSED {
        return Some(Request {
            method: "compressed".to_string(),
            path: None,
            operation: None,
        });
    }
    let doc = body_doc(b, op)?;
    let mut method = None;
    let mut path = None;
    elements(b, doc, |name, value| {
        method = Some(crate::util::label(name));
        if let Value::Str(s) = value {
            path = Some(crate::util::label(s));
        }
        false
    });
    Some(Request {
        // A document whose first element has an empty name names no command.
        method: method.filter(|m| !m.is_empty())?,
        path,
        operation: None,
    })
}

/// `ok: 0` in the reply document is an error; `codeName` is reported when visible.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let (_, response_to, op) = header(b)?;
    if response_to == 0 && op != OP_COMPRESSED {
        return None;
    }
    let Some(doc) = body_doc(b, op) else {
        return Some(Response {
            status: None,
            error: false,
            code: None,
        });
    };
    let mut ok = None;
    let mut code_name = None;
    let mut code = None;
    elements(b, doc, |name, value| {
        match (name, value) {
            (b"ok", Value::Double(d)) => ok = Some(d != 0.0),
            (b"ok", Value::Int(i)) => ok = Some(i != 0),
            (b"codeName", Value::Str(s)) if !s.is_empty() => {
                code_name = Some(crate::util::label(s));
            }
            (b"code", Value::Int(i)) => code = u16::try_from(i).ok(),
            _ => {}
        }
        true
    });
    Some(Response {
        status: code,
        error: ok == Some(false),
        code: code_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OP_MSG (request) whose body document holds `elements`.
    fn op_msg(elements: &[u8]) -> Vec<u8> {
        let mut doc = ((elements.len() + 5) as u32).to_le_bytes().to_vec();
        doc.extend_from_slice(elements);
        doc.push(0);
        let mut m = ((16 + 4 + 1 + doc.len()) as u32).to_le_bytes().to_vec();
        m.extend_from_slice(&7u32.to_le_bytes()); // requestID
        m.extend_from_slice(&0u32.to_le_bytes()); // responseTo
        m.extend_from_slice(&OP_MSG.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes()); // flagBits
        m.push(0); // section kind 0: body
        m.extend(doc);
        m
    }

    /// Found by fuzzing (l7_mongo): a body document whose first element has an empty name
    /// gave a request with an empty method.
    #[test]
    fn empty_command_name_is_not_a_request() {
        // ObjectId (0x07) named "" (12 bytes of value).
        let mut e = vec![0x07, 0];
        e.extend_from_slice(&[0xaa; 12]);
        assert_eq!(parse_request(&op_msg(&e)), None);
        // The same document with a command name is a request.
        let mut e = vec![0x02];
        e.extend_from_slice(b"find\0");
        e.extend_from_slice(&6u32.to_le_bytes());
        e.extend_from_slice(b"users\0");
        let r = parse_request(&op_msg(&e)).unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_deref()),
            ("find", Some("users"))
        );
    }

    /// Found by fuzzing (l7_mongo): a reply whose `codeName` is an empty string gave an
    /// empty code; no name is no code.
    #[test]
    fn empty_code_name_is_no_code() {
        // OP_MSG reply (responseTo 7): {ok: 0.0, code: 26, codeName: ""}.
        let mut e = vec![0x01];
        e.extend_from_slice(b"ok\0");
        e.extend_from_slice(&0f64.to_le_bytes());
        e.push(0x10);
        e.extend_from_slice(b"code\0");
        e.extend_from_slice(&26i32.to_le_bytes());
        e.push(0x02);
        e.extend_from_slice(b"codeName\0");
        e.extend_from_slice(&1u32.to_le_bytes());
        e.push(0);
        let mut reply = op_msg(&e);
        reply[8..12].copy_from_slice(&7u32.to_le_bytes());
        let r = parse_response(&reply).unwrap();
        assert_eq!((r.status, r.error, r.code), (Some(26), true, None));
    }
}
