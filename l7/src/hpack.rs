//! Minimal HPACK (RFC 7541) decoder for header blocks that may be cut short.
//!
//! Decodes indexed and literal representations against the static table and a dynamic table
//! built from what was seen; Huffman strings are decoded with the canonical code of
//! Appendix B. Decoding stops at the first truncated or invalid representation; a string
//! literal cut by the end of the bytes is returned as a partial header.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

/// One decoded header field. Name and value are shared with the table they come from: an
/// indexed field costs no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: Arc<str>,
    pub value: Arc<str>,
    /// The value was cut by the end of the bytes.
    pub partial: bool,
}

/// The static table's entries, shared (`Arc`) so that an indexed field clones no string.
fn static_table() -> &'static [(Arc<str>, Arc<str>)] {
    static T: OnceLock<Vec<(Arc<str>, Arc<str>)>> = OnceLock::new();
    T.get_or_init(|| {
        STATIC
            .iter()
            .map(|(n, v)| (Arc::from(*n), Arc::from(*v)))
            .collect()
    })
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
#[cfg(test)]
pub(crate) fn huffman_decode(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 8 / 5 + 1);
    huffman_decode_into(data, &mut out)?;
    Some(out)
}

/// Huffman decoding four bits at a time: a state is an internal node of the code's tree
/// (256 of them for 257 symbols), and each (state, nibble) says where the walk ends and the
/// symbol it passed, if any (codes are at least 5 bits long: at most one per nibble).
struct Fsm {
    /// Per state and nibble: (next state, symbol, `EMIT`/`FAIL` flags).
    steps: Vec<[(u8, u8, u8); 16]>,
}

const EMIT: u8 = 1;
/// The walk met EOS (which a string never contains).
const FAIL: u8 = 2;

fn fsm() -> &'static Fsm {
    static F: OnceLock<Fsm> = OnceLock::new();
    F.get_or_init(|| {
        // Children of each internal node: >= 0 another node, < 0 the leaf -(symbol + 1).
        const UNSET: i32 = i32::MIN;
        let mut nodes: Vec<[i32; 2]> = vec![[UNSET; 2]];
        let c = canon();
        for len in 1..31usize {
            for k in 0..c.count[len] {
                let code = c.first_code[len] + k;
                let sym = c.symbols[(c.offset[len] + k) as usize];
                let mut at = 0usize;
                for bit in (0..len).rev() {
                    let b = ((code >> bit) & 1) as usize;
                    if bit == 0 {
                        nodes[at][b] = -(i32::from(sym) + 1);
                    } else {
                        if nodes[at][b] == UNSET {
                            nodes.push([UNSET; 2]);
                            nodes[at][b] = (nodes.len() - 1) as i32;
                        }
                        at = nodes[at][b] as usize;
                    }
                }
            }
        }
        assert!(nodes.len() <= 256, "a state fits in a byte");
        let steps = (0..nodes.len())
            .map(|state| {
                let mut row = [(0u8, 0u8, 0u8); 16];
                for (nibble, step) in row.iter_mut().enumerate() {
                    let (mut at, mut sym, mut flags) = (state, 0u8, 0u8);
                    for bit in (0..4).rev() {
                        let child = nodes[at][(nibble >> bit) & 1];
                        if child >= 0 {
                            at = child as usize;
                        } else if child == UNSET || child == -257 {
                            flags |= FAIL;
                            break;
                        } else {
                            sym = (-child - 1) as u8;
                            flags |= EMIT;
                            at = 0;
                        }
                    }
                    *step = (at as u8, sym, flags);
                }
                row
            })
            .collect();
        Fsm { steps }
    })
}

/// Decodes a Huffman-coded string, appending to `out` (see `huffman_decode`).
fn huffman_decode_into(data: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let steps = &fsm().steps;
    let mut state = 0usize;
    for &byte in data {
        for nibble in [byte >> 4, byte & 0x0f] {
            let (next, sym, flags) = steps.get(state)?[usize::from(nibble)];
            if flags & FAIL != 0 {
                return None;
            }
            if flags & EMIT != 0 {
                out.push(sym);
            }
            state = usize::from(next);
        }
    }
    Some(())
}

/// The bit-at-a-time canonical decoder the table is checked against (tests only).
#[cfg(test)]
fn huffman_decode_bits(data: &[u8]) -> Option<Vec<u8>> {
    let c = canon();
    let mut out = Vec::new();
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

/// A string literal: (text, consumed, complete). `scratch` is where a Huffman string is
/// decoded (kept by the decoder, so that no buffer is allocated per string).
fn read_string(b: &[u8], scratch: &mut Vec<u8>) -> Option<(Arc<str>, usize, bool)> {
    let huff = *b.first()? & 0x80 != 0;
    let (len, n) = read_int(b, 7)?;
    let len = usize::try_from(len).ok()?;
    let avail = b.len().checked_sub(n)?;
    let complete = len <= avail;
    let take = len.min(avail);
    let raw = b.get(n..n + take)?;
    let bytes = if huff {
        scratch.clear();
        huffman_decode_into(raw, scratch)?;
        &scratch[..]
    } else {
        raw
    };
    // Valid UTF-8 (almost every header) is checked by the fast validator and copied once.
    let text: Arc<str> = match std::str::from_utf8(bytes) {
        Ok(t) => Arc::from(t),
        Err(_) => Arc::from(String::from_utf8_lossy(bytes)),
    };
    Some((text, n + take, complete))
}

/// The default table size (RFC 7541 4.2); an entry's size is name + value + 32.
const TABLE_BYTES: usize = 4096;

/// HPACK decoding state for one direction of a connection.
#[derive(Default, Clone, Debug)]
pub struct Decoder {
    /// Newest first.
    dynamic: VecDeque<(Arc<str>, Arc<str>)>,
    /// Size of `dynamic` by the RFC's accounting.
    size: usize,
    scratch: Vec<u8>,
}

impl Decoder {
    fn entry(&self, index: u64) -> Option<(Arc<str>, Arc<str>)> {
        let i = usize::try_from(index).ok()?;
        if i == 0 {
            return None;
        }
        if let Some((n, v)) = static_table().get(i - 1) {
            return Some((n.clone(), v.clone()));
        }
        self.dynamic.get(i - 1 - STATIC.len()).cloned()
    }

    fn insert(&mut self, name: &Arc<str>, value: &Arc<str>) {
        let size = name.len() + value.len() + 32;
        // Evict the oldest until the new entry fits; one larger than the table empties it.
        while self.size + size > TABLE_BYTES {
            let Some((n, v)) = self.dynamic.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
        if size <= TABLE_BYTES {
            self.dynamic.push_front((name.clone(), value.clone()));
            self.size += size;
        }
    }

    /// Forgets the dynamic table: entries can no longer be trusted (a header block was not
    /// seen), and fields that refer to them stop decoding rather than decode wrong.
    pub(crate) fn forget_dynamic(&mut self) {
        self.dynamic.clear();
        self.size = 0;
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
                    self.forget_dynamic();
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
                    let Some((name, used, complete)) =
                        read_string(rest.get(n..).unwrap_or(&[]), &mut self.scratch)
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
                let Some((value, used, complete)) =
                    read_string(rest.get(n..).unwrap_or(&[]), &mut self.scratch)
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
        let pairs: Vec<(&str, &str)> = out.iter().map(|h| (&*h.name, &*h.value)).collect();
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
        assert_eq!(&*out2[3].value, "www.example.com");
        assert_eq!(
            (&*out2[4].name, &*out2[4].value),
            ("cache-control", "no-cache")
        );
    }

    /// The dynamic table keeps the newest entries within 4,096 bytes (name + value + 32
    /// each): the oldest are evicted, and an entry larger than the table empties it.
    #[test]
    fn the_dynamic_table_evicts_the_oldest_beyond_its_size() {
        // Literal with incremental indexing, new name "x-N", a 100-byte value: 135 bytes.
        let literal = |i: u8| {
            let mut b = vec![0x40, 3, b'x', b'-', b'0' + i, 100];
            b.extend_from_slice(&[b'a' + i; 100]);
            b
        };
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for i in 0..31 {
            d.decode(&literal(i % 10), &mut out);
        }
        // 30 entries fit (4,050 bytes); the 31st evicted the first.
        assert_eq!(d.dynamic.len(), 30);
        assert_eq!(d.size, 30 * 135);
        let indexed = |d: &mut Decoder, index: u8| {
            let mut out = Vec::new();
            d.decode(&[0x80 | index], &mut out);
            out.first().map(|h| h.name.to_string())
        };
        assert_eq!(
            indexed(&mut d, 62).as_deref(),
            Some("x-0"),
            "the newest (31st)"
        );
        assert_eq!(
            indexed(&mut d, 91).as_deref(),
            Some("x-1"),
            "the oldest kept (2nd)"
        );
        assert_eq!(indexed(&mut d, 92), None, "the 1st was evicted");
        // An entry larger than the table empties it and is not kept.
        // Value length 4,200 as a 7-bit-prefix integer: 127, then 4,073 in 7-bit groups.
        let rest = 4_200u32 - 127;
        let mut big = vec![
            0x40,
            1,
            b'y',
            0x7f,
            (rest & 0x7f) as u8 | 0x80,
            (rest >> 7) as u8,
        ];
        big.extend(std::iter::repeat_n(b'z', 4_200));
        d.decode(&big, &mut out);
        assert_eq!((d.dynamic.len(), d.size), (0, 0));
    }

    #[test]
    fn truncated_literal_is_partial() {
        // :path literal without indexing, name index 4, raw value "/abcdef" cut after 3 bytes.
        let block = [0x04, 0x07, b'/', b'a', b'b'];
        let mut out = Vec::new();
        Decoder::default().decode(&block, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].value, "/ab");
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

        /// The four-bits-at-a-time table decodes exactly as the bit-at-a-time canonical
        /// decoder, valid input or not (EOS inside, any padding, cut anywhere).
        #[test]
        fn table_decoder_matches_the_bit_decoder(b in proptest::collection::vec(any::<u8>(), 0..64), eos in any::<bool>()) {
            let mut b = b;
            if eos {
                b.extend_from_slice(&[0xff; 4]);
            }
            prop_assert_eq!(huffman_decode(&b), huffman_decode_bits(&b));
            let enc = huffman_encode(&b);
            prop_assert_eq!(huffman_decode(&enc), huffman_decode_bits(&enc));
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
