//! DNS messages (RFC 1035) over UDP and TCP: header sanity, question, answers with
//! compression pointers (bounded hops) and CNAME chains.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::util::{be16, be32, slice, u8_at};
use crate::{Request, Response};

/// Header fields.
#[derive(Debug, Clone, Copy)]
struct Header {
    qr: bool,
    opcode: u8,
    rcode: u8,
    qd: u16,
    an: u16,
    ns: u16,
    ar: u16,
}

fn header(m: &[u8]) -> Option<Header> {
    let flags = be16(m, 2)?;
    Some(Header {
        qr: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        rcode: (flags & 0x0f) as u8,
        qd: be16(m, 4)?,
        an: be16(m, 6)?,
        ns: be16(m, 8)?,
        ar: be16(m, 10)?,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum NameError {
    /// The bytes end inside the name.
    Truncated,
    /// Not a valid name (bad label type, pointer loop, too long).
    Invalid,
}

const MAX_HOPS: usize = 16;

/// Reads a possibly compressed name at `off`. Returns the presentation form (lowercase, no
/// trailing dot, "." for the root) and the offset after the name in the original position.
fn read_name(m: &[u8], off: usize) -> Result<(String, usize), NameError> {
    let mut out = String::new();
    let mut pos = off;
    let mut end_after: Option<usize> = None;
    let mut hops = 0usize;
    let mut total = 0usize;
    loop {
        let len = u8_at(m, pos).ok_or(NameError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    let after = end_after.unwrap_or(pos + 1);
                    if out.is_empty() {
                        out.push('.');
                    }
                    return Ok((out, after));
                }
                let n = usize::from(len);
                total += n + 1;
                if total > 255 {
                    return Err(NameError::Invalid);
                }
                let labelb = slice(m, pos + 1, n).ok_or(NameError::Truncated)?;
                if !out.is_empty() {
                    out.push('.');
                }
                for &c in labelb {
                    if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'*' {
                        out.push(c.to_ascii_lowercase() as char);
                    } else {
                        out.push_str(&format!("\\{c:03}"));
                    }
                }
                pos += 1 + n;
            }
            0xc0 => {
                let ptr = usize::from(be16(m, pos).ok_or(NameError::Truncated)? & 0x3fff);
                hops += 1;
                if hops > MAX_HOPS || ptr >= m.len() {
                    return Err(NameError::Invalid);
                }
                if end_after.is_none() {
                    end_after = Some(pos + 2);
                }
                pos = ptr;
            }
            _ => return Err(NameError::Invalid),
        }
    }
}

/// Strips the TCP length prefix when `tcp`.
fn message(b: &[u8], tcp: bool) -> Option<&[u8]> {
    if tcp {
        let len = usize::from(be16(b, 0)?);
        if len < 12 {
            return None;
        }
        let m = b.get(2..)?;
        m.get(..len.min(m.len()))
    } else {
        Some(b)
    }
}

/// Question of a message: (name, qtype), with the name possibly cut (`None` type then).
struct Question {
    name: String,
    qtype: Option<u16>,
}

/// A sane DNS message header + question: opcode QUERY/IQUERY/STATUS/NOTIFY/UPDATE, one
/// question whose name parses and whose class is IN/CH/HS/ANY when visible.
fn sane(m: &[u8], want_response: Option<bool>) -> Option<(Header, Option<Question>)> {
    if m.len() < 12 {
        return None;
    }
    let h = header(m)?;
    if let Some(r) = want_response
        && h.qr != r
    {
        return None;
    }
    if !matches!(h.opcode, 0 | 1 | 2 | 4 | 5) || h.qd != 1 || h.an > 256 || h.ns > 256 || h.ar > 256
    {
        return None;
    }
    if !h.qr && (h.an > 1 || h.ns > 1 || h.ar > 4 || h.rcode != 0) {
        return None;
    }
    let q = match read_name(m, 12) {
        Ok((name, after)) => {
            let qclass = be16(m, after + 2);
            if let Some(c) = qclass
                && !matches!(c & 0x7fff, 1 | 3 | 4 | 254 | 255)
            {
                return None;
            }
            if name == "." && qclass.is_none() {
                return None;
            }
            Some(Question {
                name,
                qtype: be16(m, after),
            })
        }
        // A name cut by the end of the capture: the header alone must carry the evidence.
        Err(NameError::Truncated) if m.len() >= 14 => None,
        Err(_) => return None,
    };
    Some((h, q))
}

/// Client evidence: a DNS query (UDP payload, or with a 2-byte length prefix over TCP).
pub(crate) fn detect_client(b: &[u8], tcp: bool) -> bool {
    message(b, tcp)
        .and_then(|m| sane(m, Some(false)))
        .is_some_and(|(_, q)| q.is_some())
}

/// Server evidence: a DNS response with its question.
pub(crate) fn detect_server(b: &[u8], tcp: bool) -> bool {
    message(b, tcp)
        .and_then(|m| sane(m, Some(true)))
        .is_some_and(|(_, q)| q.is_some())
}

/// Whether `b` is a TCP-framed message: the prefix matches the visible length (or exceeds
/// it, for a truncated copy) and the message inside is sane.
fn looks_tcp(b: &[u8], response: bool) -> bool {
    let Some(len) = be16(b, 0) else { return false };
    let visible = b.len().saturating_sub(2);
    let len = usize::from(len);
    (len == visible || (len > visible && b.len() >= 64))
        && message(b, true)
            .and_then(|m| sane(m, Some(response)))
            .is_some()
}

const QTYPES: &[(u16, &str)] = &[
    (1, "A"),
    (2, "NS"),
    (5, "CNAME"),
    (6, "SOA"),
    (12, "PTR"),
    (13, "HINFO"),
    (15, "MX"),
    (16, "TXT"),
    (28, "AAAA"),
    (33, "SRV"),
    (35, "NAPTR"),
    (41, "OPT"),
    (43, "DS"),
    (48, "DNSKEY"),
    (64, "SVCB"),
    (65, "HTTPS"),
    (252, "AXFR"),
    (251, "IXFR"),
    (255, "ANY"),
    (257, "CAA"),
];

fn qtype_name(t: u16) -> String {
    QTYPES
        .iter()
        .find(|(n, _)| *n == t)
        .map(|(_, s)| (*s).to_string())
        .unwrap_or_else(|| format!("TYPE{t}"))
}

const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];

/// Request: method = query type ("A", "AAAA", "TYPE99"; "QUERY" when the type is cut off),
/// path = query name. Accepts UDP messages and TCP-framed ones.
pub(crate) fn parse_request(b: &[u8]) -> Option<Request> {
    let m = if looks_tcp(b, false) {
        message(b, true)?
    } else {
        b
    };
    let (_, q) = sane(m, Some(false))?;
    let (method, path) = match q {
        Some(q) => (
            q.qtype
                .map(qtype_name)
                .unwrap_or_else(|| "QUERY".to_string()),
            Some(q.name),
        ),
        None => ("QUERY".to_string(), None),
    };
    Some(Request {
        method,
        path,
        operation: None,
    })
}

/// Response: status = rcode, error = rcode != 0, code = rcode name.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let m = if looks_tcp(b, true) {
        message(b, true)?
    } else {
        b
    };
    let (h, _) = sane(m, Some(true))?;
    let code = RCODES
        .get(usize::from(h.rcode))
        .map(|s| (*s).to_string())
        .unwrap_or_else(|| format!("RCODE{}", h.rcode));
    Some(Response {
        status: Some(u16::from(h.rcode)),
        error: h.rcode != 0,
        code: Some(code),
    })
}

/// Address records of a DNS response: `(name, address, ttl)` for every A/AAAA record in the
/// answer section, plus one entry per alias whose CNAME chain (within the answer section)
/// leads to the record's owner, with the smallest TTL along the chain. Names are lowercase
/// without the trailing dot. `tcp`: the message has a 2-byte length prefix.
///
/// Truncated messages give the records that are complete; a failed response (rcode != 0),
/// a query, or garbage give an empty list.
pub fn dns_answers(bytes: &[u8], tcp: bool) -> Vec<(String, IpAddr, u32)> {
    let mut out = Vec::new();
    let Some(m) = message(bytes, tcp) else {
        return out;
    };
    let Some(h) = header(m) else { return out };
    if !h.qr || h.rcode != 0 || h.opcode != 0 {
        return out;
    }
    let mut pos = 12usize;
    for _ in 0..h.qd.min(16) {
        let Ok((_, after)) = read_name(m, pos) else {
            return out;
        };
        pos = after + 4;
    }
    // alias -> (target, ttl)
    let mut cnames: HashMap<String, (String, u32)> = HashMap::new();
    let mut addrs: Vec<(String, IpAddr, u32)> = Vec::new();
    for _ in 0..h.an.min(256) {
        let Ok((owner, after)) = read_name(m, pos) else {
            break;
        };
        let (Some(rtype), Some(_class), Some(ttl), Some(rdlen)) = (
            be16(m, after),
            be16(m, after + 2),
            be32(m, after + 4),
            be16(m, after + 8),
        ) else {
            break;
        };
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        let rdata_at = after + 10;
        let Some(rdata) = slice(m, rdata_at, usize::from(rdlen)) else {
            break;
        };
        match (rtype, rdata.len()) {
            (1, 4) => {
                let a: [u8; 4] = rdata.try_into().unwrap_or([0; 4]);
                addrs.push((owner, IpAddr::V4(Ipv4Addr::from(a)), ttl));
            }
            (28, 16) => {
                let a: [u8; 16] = rdata.try_into().unwrap_or([0; 16]);
                addrs.push((owner, IpAddr::V6(Ipv6Addr::from(a)), ttl));
            }
            (5, _) => {
                if let Ok((target, _)) = read_name(m, rdata_at) {
                    cnames.insert(owner, (target, ttl));
                }
            }
            _ => {}
        }
        pos = rdata_at + usize::from(rdlen);
    }
    for (owner, ip, ttl) in addrs {
        // Aliases pointing (transitively) at `owner`.
        let mut frontier = vec![(owner.clone(), ttl)];
        let mut names = vec![(owner, ttl)];
        for _ in 0..MAX_HOPS {
            let mut next = Vec::new();
            for (target, t) in &frontier {
                for (alias, (to, cttl)) in &cnames {
                    if to == target && !names.iter().any(|(n, _)| n == alias) {
                        next.push((alias.clone(), (*t).min(*cttl)));
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            names.extend(next.iter().cloned());
            frontier = next;
        }
        for (name, t) in names {
            if !out
                .iter()
                .any(|(n, i, _): &(String, IpAddr, u32)| *n == name && *i == ip)
            {
                out.push((name, ip, t));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_loop_is_invalid() {
        let mut m = vec![0u8; 12];
        m.extend_from_slice(&[0xc0, 12]);
        assert_eq!(read_name(&m, 12), Err(NameError::Invalid));
    }

    #[test]
    fn root_name() {
        let mut m = vec![0u8; 12];
        m.push(0);
        assert_eq!(read_name(&m, 12), Ok((".".to_string(), 13)));
    }
}
