//! Minimal HPACK (RFC 7541) decoder for header blocks that may be cut short.
//!
//! Decodes indexed and literal representations against the static table and a dynamic table
//! built from what was seen; Huffman strings are decoded with the canonical code of
//! Appendix B. Decoding stops at the first truncated or invalid representation; a string
//! literal cut by the end of the bytes is returned as a partial header.

use std::sync::OnceLock;

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
    /// The value was cut by the end of the bytes.
    pub partial: bool,
}

const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of symbols 0..=255 (RFC 7541 Appendix B); EOS (256) has 30 bits.
const CODE_LEN: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
];

/// Canonical Huffman decoding tables: per length, the first code and the index of its first
/// symbol in `symbols` (sorted by length, then symbol).
struct Canon {
    first_code: [u32; 31],
    count: [u32; 31],
    offset: [u32; 31],
    symbols: Vec<u16>,
}

fn canon() -> &'static Canon {
    static C: OnceLock<Canon> = OnceLock::new();
    C.get_or_init(|| {
        let len_of = |s: u16| -> u8 { CODE_LEN.get(s as usize).copied().unwrap_or(30) };
        let mut symbols: Vec<u16> = (0..=256).collect();
        symbols.sort_by_key(|&s| (len_of(s), s));
        let mut count = [0u32; 31];
        for &s in &symbols {
            if let Some(c) = count.get_mut(len_of(s) as usize) {
                *c += 1;
            }
        }
        let mut first_code = [0u32; 31];
        let mut offset = [0u32; 31];
        let (mut code, mut idx) = (0u32, 0u32);
        for len in 1..31 {
            code <<= 1;
            first_code[len] = code;
            offset[len] = idx;
            code += count[len];
            idx += count[len];
        }
        Canon {
            first_code,
            count,
            offset,
            symbols,
        }
    })
}

/// Decodes a Huffman-coded string. `None` on invalid codes or an embedded EOS. Padding (up
/// to 7 one-bits) is accepted; a string cut mid-way decodes what is complete.
pub(crate) fn huffman_decode(data: &[u8]) -> Option<Vec<u8>> {
    let c = canon();
    let mut out = Vec::with_capacity(data.len() * 8 / 5 + 1);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in data {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return None;
            }
            let first = c.first_code[len];
            if code >= first && code - first < c.count[len] {
                let sym = *c.symbols.get((c.offset[len] + code - first) as usize)?;
                if sym == 256 {
                    return None;
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    Some(out)
}

/// Integer with an N-bit prefix (RFC 7541 5.1). Returns (value, bytes consumed).
fn read_int(b: &[u8], prefix_bits: u32) -> Option<(u64, usize)> {
    let mask = (1u16 << prefix_bits) as u8 - 1;
    let first = *b.first()? & mask;
    if first < mask {
        return Some((u64::from(first), 1));
    }
    let mut v = u64::from(mask);
    let mut shift = 0u32;
    for (i, &byte) in b.iter().enumerate().skip(1) {
        if shift > 28 {
            return None;
        }
        v += u64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// A string literal: (text, consumed, complete).
fn read_string(b: &[u8]) -> Option<(String, usize, bool)> {
    let huff = *b.first()? & 0x80 != 0;
    let (len, n) = read_int(b, 7)?;
    let len = usize::try_from(len).ok()?;
    let avail = b.len().checked_sub(n)?;
    let complete = len <= avail;
    let take = len.min(avail);
    let raw = b.get(n..n + take)?;
    let bytes = if huff {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Some((
        String::from_utf8_lossy(&bytes).into_owned(),
        n + take,
        complete,
    ))
}

/// HPACK decoding state for one direction of a connection.
#[derive(Default, Clone, Debug)]
pub struct Decoder {
    dynamic: Vec<(String, String)>,
}

impl Decoder {
    fn entry(&self, index: u64) -> Option<(String, String)> {
        let i = usize::try_from(index).ok()?;
        if i == 0 {
            return None;
        }
        if let Some((n, v)) = STATIC.get(i - 1) {
            return Some(((*n).to_string(), (*v).to_string()));
        }
        self.dynamic.get(i - 1 - STATIC.len()).cloned()
    }

    fn insert(&mut self, name: &str, value: &str) {
        self.dynamic
            .insert(0, (name.to_string(), value.to_string()));
        // Keep within the default 4096-byte table size (entry size = name + value + 32).
        let mut size = 0usize;
        let mut keep = 0usize;
        for (n, v) in &self.dynamic {
            size += n.len() + v.len() + 32;
            if size > 4096 {
                break;
            }
            keep += 1;
        }
        self.dynamic.truncate(keep);
    }

    /// Forgets the dynamic table: entries can no longer be trusted (a header block was not
    /// seen), and fields that refer to them stop decoding rather than decode wrong.
    pub(crate) fn forget_dynamic(&mut self) {
        self.dynamic.clear();
    }

    /// As [`Decoder::decode`]; returns whether the whole block was decoded.
    pub fn decode_all(&mut self, block: &[u8], out: &mut Vec<Header>) -> bool {
        let before = out.len();
        let used = self.decode_inner(block, out);
        used >= block.len() && out[before..].iter().all(|h| !h.partial)
    }

    /// Decodes a header block fragment, appending to `out`. Stops quietly at the first
    /// truncated or invalid representation.
    pub(crate) fn decode(&mut self, block: &[u8], out: &mut Vec<Header>) {
        self.decode_inner(block, out);
    }

    /// Decodes; returns how many bytes were consumed.
    fn decode_inner(&mut self, block: &[u8], out: &mut Vec<Header>) -> usize {
        let mut i = 0usize;
        while let Some(&first) = block.get(i) {
            let rest = match block.get(i..) {
                Some(r) => r,
                None => return i,
            };
            if first & 0x80 != 0 {
                // Indexed header field.
                let Some((idx, n)) = read_int(rest, 7) else {
                    return i;
                };
                let Some((name, value)) = self.entry(idx) else {
                    return i;
                };
                out.push(Header {
                    name,
                    value,
                    partial: false,
                });
                i += n;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update.
                let Some((size, n)) = read_int(rest, 5) else {
                    return i;
                };
                if size == 0 {
                    self.dynamic.clear();
                }
                i += n;
            } else {
                let (prefix, incremental) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let Some((idx, mut n)) = read_int(rest, prefix) else {
                    return i;
                };
                let name = if idx == 0 {
                    let Some((name, used, complete)) = read_string(rest.get(n..).unwrap_or(&[]))
                    else {
                        return i;
                    };
                    if !complete {
                        return i;
                    }
                    n += used;
                    name
                } else {
                    match self.entry(idx) {
                        Some((name, _)) => name,
                        None => return i,
                    }
                };
                let Some((value, used, complete)) = read_string(rest.get(n..).unwrap_or(&[]))
                else {
                    return i;
                };
                n += used;
                if !complete {
                    out.push(Header {
                        name,
                        value,
                        partial: true,
                    });
                    return i;
                }
                if incremental {
                    self.insert(&name, &value);
                }
                out.push(Header {
                    name,
                    value,
                    partial: false,
                });
                i += n;
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_rfc7541_vectors() {
        // RFC 7541 C.4.1: "www.example.com".
        let enc = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_decode(&enc).unwrap(), b"www.example.com");
        // RFC 7541 C.4.2: "no-cache".
        let enc = [0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
        assert_eq!(huffman_decode(&enc).unwrap(), b"no-cache");
        // RFC 7541 C.6.1: "302".
        assert_eq!(huffman_decode(&[0x64, 0x02]).unwrap(), b"302");
    }

    #[test]
    fn decodes_rfc7541_c4_request() {
        // C.4.1 first request with Huffman coding.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(&block, &mut out);
        let pairs: Vec<(&str, &str)> = out
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
        );
        // C.4.2: the second request refers to the dynamic entry 62 (:authority).
        let block2 = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let mut out2 = Vec::new();
        d.decode(&block2, &mut out2);
        assert_eq!(out2[3].value, "www.example.com");
        assert_eq!(
            (out2[4].name.as_str(), out2[4].value.as_str()),
            ("cache-control", "no-cache")
        );
    }

    #[test]
    fn truncated_literal_is_partial() {
        // :path literal without indexing, name index 4, raw value "/abcdef" cut after 3 bytes.
        let block = [0x04, 0x07, b'/', b'a', b'b'];
        let mut out = Vec::new();
        Decoder::default().decode(&block, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, "/ab");
        assert!(out[0].partial);
    }
}

/// Huffman encoder (tests only): canonical codes rebuilt from the code lengths.
#[cfg(test)]
pub(crate) fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut syms: Vec<u16> = (0..=256).collect();
    let len_of = |s: u16| CODE_LEN.get(s as usize).copied().unwrap_or(30);
    syms.sort_by_key(|&s| (len_of(s), s));
    let mut codes = [(0u32, 0u8); 257];
    let (mut code, mut prev) = (0u32, 0u8);
    for (i, &s) in syms.iter().enumerate() {
        let l = len_of(s);
        if i > 0 {
            code = (code + 1) << (l - prev);
        } else {
            code <<= l;
        }
        prev = l;
        codes[s as usize] = (code, l);
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &c in s {
        let (code, l) = codes[c as usize];
        acc = (acc << l) | u64::from(code);
        bits += u32::from(l);
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    if bits > 0 {
        // Pad with the most significant bits of EOS (all ones).
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod huffman_props {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoder_matches_rfc_vector() {
        assert_eq!(
            huffman_encode(b"www.example.com"),
            [
                0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff
            ]
        );
    }

    proptest! {
        #[test]
        fn huffman_round_trip(s in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(huffman_decode(&huffman_encode(&s)).unwrap(), s);
        }

        #[test]
        fn decoder_never_panics(block in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let mut d = Decoder::default();
            d.decode(&block, &mut out);
            d.decode(&block, &mut out);
            let _ = huffman_decode(&block);
        }
    }
}
