//! TLS record / handshake recognition and SNI extraction on truncated prefixes.

use crate::util::{be16, be24, slice, u8_at};
use crate::{Request, Response};

/// A TLS record header: content type 20..=23, version 3.0..=3.4, length 1..=2^14 + 2048.
/// Returns (content type, length); the length is `None` when the copy ends before it.
pub(crate) fn record_header(b: &[u8]) -> Option<(u8, Option<u16>)> {
    let kind = u8_at(b, 0)?;
    let major = u8_at(b, 1)?;
    let minor = u8_at(b, 2)?;
    if !(20..=23).contains(&kind) || major != 3 || minor > 4 {
        return None;
    }
    let len = be16(b, 3);
    if len.is_some_and(|l| l == 0 || l > 16384 + 2048) {
        return None;
    }
    Some((kind, len))
}

/// Result of parsing a ClientHello prefix.
#[derive(Debug, Default)]
pub(crate) struct ClientHello {
    pub sni: Option<String>,
    /// Protocols offered in the ALPN extension ("h2", "http/1.1"), when it is complete
    /// within the bytes.
    pub alpn: Vec<String>,
}

/// Recognises a ClientHello (record type 22, handshake type 1) and extracts the SNI when the
/// server_name extension is complete within the bytes.
pub(crate) fn client_hello(b: &[u8]) -> Option<ClientHello> {
    let (kind, _) = record_header(b)?;
    if kind != 22 || u8_at(b, 5)? != 1 {
        return None;
    }
    // Handshake length (24 bits) then client_version 3.x when visible.
    if let Some(v) = u8_at(b, 9)
        && v != 3
    {
        return None;
    }
    let (sni, alpn) = extensions(b).unwrap_or_default();
    Some(ClientHello { sni, alpn })
}

/// ALPN protocol names: printable ASCII, at most 8 of them.
fn alpn_list(b: &[u8], data: usize, len: usize) -> Option<Vec<String>> {
    let list_len = usize::from(be16(b, data)?);
    let end = (data + 2).checked_add(list_len)?.min(data + len);
    slice(b, data + 2, end.checked_sub(data + 2)?)?;
    let mut out = Vec::new();
    let mut j = data + 2;
    while j < end && out.len() < 8 {
        let n = usize::from(u8_at(b, j)?);
        let name = slice(b, j + 1, n)?;
        if name.is_empty() || !name.iter().all(|c| (0x21..0x7f).contains(c)) {
            return None;
        }
        out.push(String::from_utf8_lossy(name).into_owned());
        j += 1 + n;
    }
    Some(out)
}

/// server_name_list: u16 length, then entries (type u8, name u16-prefixed).
fn server_name(b: &[u8], data: usize, len: usize) -> Option<String> {
    let list_len = usize::from(be16(b, data)?);
    let mut j = data + 2;
    let list_end = (data + 2).checked_add(list_len)?.min(data + len);
    while j + 3 <= list_end {
        let name_type = u8_at(b, j)?;
        let nlen = usize::from(be16(b, j + 1)?);
        let name = slice(b, j + 3, nlen)?;
        if name_type == 0 {
            return host_name(name);
        }
        j += 3 + nlen;
    }
    None
}

/// SNI and ALPN of a ClientHello, as far as the extensions are visible.
fn extensions(b: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let mut sni = None;
    let mut alpn = Vec::new();
    let hs_len = be24(b, 6)? as usize;
    let hs_end = 9usize.checked_add(hs_len)?;
    // client_version(2) random(32)
    let mut i = 9 + 2 + 32;
    let sid_len = usize::from(u8_at(b, i)?);
    if sid_len > 32 {
        return None;
    }
    i += 1 + sid_len;
    let cs_len = usize::from(be16(b, i)?);
    i += 2 + cs_len;
    let comp_len = usize::from(u8_at(b, i)?);
    i += 1 + comp_len;
    let ext_len = usize::from(be16(b, i)?);
    i += 2;
    let ext_end = i.checked_add(ext_len)?.min(hs_end);
    while i + 4 <= ext_end {
        let (Some(typ), Some(len)) = (be16(b, i), be16(b, i + 2)) else {
            break;
        };
        let len = usize::from(len);
        let data = i + 4;
        if typ == 0 {
            sni = server_name(b, data, len);
        } else if typ == 16 {
            alpn = alpn_list(b, data, len).unwrap_or_default();
        }
        i = data + len;
    }
    Some((sni, alpn))
}

fn host_name(name: &[u8]) -> Option<String> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
    {
        return None;
    }
    Some(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// ServerHello (record type 22, handshake type 2).
pub(crate) fn is_server_hello(b: &[u8]) -> bool {
    matches!(record_header(b), Some((22, _))) && u8_at(b, 5) == Some(2)
}

/// Any plausible TLS record that cannot be a start of a plaintext protocol: handshake,
/// alert, or application data with a consistent header.
pub(crate) fn is_record(b: &[u8]) -> bool {
    b.len() >= 5 && record_header(b).is_some()
}

pub(crate) fn parse_request(b: &[u8]) -> Option<Request> {
    let hello = client_hello(b)?;
    Some(Request {
        method: "CLIENT_HELLO".to_string(),
        path: hello.sni,
        operation: None,
    })
}

/// Plaintext alerts (TLS 1.2 and handshake failures) are visible: a fatal alert is an error
/// and its description is the status.
pub(crate) fn parse_response(b: &[u8]) -> Option<Response> {
    let (kind, len) = record_header(b)?;
    match kind {
        21 if len == Some(2) => {
            let level = u8_at(b, 5)?;
            let desc = u8_at(b, 6)?;
            Some(Response {
                status: Some(u16::from(desc)),
                error: level == 2,
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
