//! weft-reqroute: the request router's HTTP/1 cutting. The first byte picks where the rest
//! is cut in two feeds, the second which requests the server side expects; the request
//! cutter and the response cutter each run over the rest, in one feed and in two: pieces are
//! in bounds, their bytes concatenated are exactly the bytes consumed (nothing lost, nothing
//! added), and the cut does not change what comes out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_reqroute::{
    ClientPiece, CutError, RequestCutter, RequestHead, ResponseCutter, ServerPiece,
};

const MAX_HEAD: usize = 1024;

/// A piece with its bytes; consecutive body (tunnel) pieces merged.
#[derive(Debug, PartialEq, Eq)]
enum P {
    ReqHead(Box<RequestHead>),
    Head(Vec<u8>),
    Body(Vec<u8>),
    End,
    Tunnel(Vec<u8>),
}

fn add(pieces: &mut Vec<P>, p: P) {
    match (pieces.last_mut(), p) {
        (Some(P::Body(a)), P::Body(b)) | (Some(P::Tunnel(a)), P::Tunnel(b)) => a.extend(b),
        (_, p) => pieces.push(p),
    }
}

fn range(data: &[u8], r: std::ops::Range<usize>) -> Vec<u8> {
    assert!(
        r.start < r.end && r.end <= data.len(),
        "{r:?} of {}",
        data.len()
    );
    data[r].to_vec()
}

fn bytes(pieces: &[P]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in pieces {
        match p {
            P::ReqHead(h) => v.extend_from_slice(&h.bytes),
            P::Head(b) | P::Body(b) | P::Tunnel(b) => v.extend_from_slice(b),
            P::End => {}
        }
    }
    v
}

/// The request cutter over `parts`: pieces, result, and whether every byte fed is in a piece.
fn client(parts: &[&[u8]]) -> (Vec<P>, Result<(), CutError>, bool) {
    let mut c = RequestCutter::new(MAX_HEAD);
    let mut pieces = Vec::new();
    for data in parts {
        let mut out = Vec::new();
        let r = c.feed(data, &mut out);
        for p in out {
            add(
                &mut pieces,
                match p {
                    ClientPiece::Head(h) => {
                        assert!(h.bytes.len() <= MAX_HEAD && h.bytes.ends_with(b"\r\n\r\n"));
                        P::ReqHead(Box::new(h))
                    }
                    ClientPiece::Body(r) => P::Body(range(data, r)),
                    ClientPiece::End => P::End,
                    ClientPiece::Tunnel(r) => P::Tunnel(range(data, r)),
                },
            );
        }
        if let Err(e) = r {
            // Sticky.
            assert_eq!(
                c.feed(b"GET / HTTP/1.1\r\n\r\n", &mut Vec::new()),
                Err(e.clone())
            );
            return (pieces, Err(e), false);
        }
    }
    let all = c.idle() || c.tunnelling();
    (pieces, Ok(()), all)
}

/// The response cutter over `parts`, expecting `expect`, then closed: pieces, result.
fn server(parts: &[&[u8]], expect: &[(bool, bool)]) -> (Vec<P>, Result<(), CutError>) {
    let mut c = ResponseCutter::new(MAX_HEAD);
    for &(head_only, connect) in expect {
        c.expect(head_only, connect);
    }
    let mut pieces = Vec::new();
    let mut ends = 0;
    let mut result = Ok(());
    'feeds: for part in parts {
        let mut data = *part;
        while !data.is_empty() {
            let mut out = Vec::new();
            let r = c.feed(data, &mut out);
            for p in out {
                add(
                    &mut pieces,
                    match p {
                        ServerPiece::Head(h) => {
                            assert!(h.len() <= MAX_HEAD && h.ends_with(b"\r\n\r\n"));
                            P::Head(h)
                        }
                        ServerPiece::Body(r) => P::Body(range(data, r)),
                        ServerPiece::End => {
                            ends += 1;
                            P::End
                        }
                        ServerPiece::Tunnel(r) => P::Tunnel(range(data, r)),
                    },
                );
            }
            match r {
                Ok(n) => {
                    assert!(n > 0 && n <= data.len());
                    data = &data[n..];
                }
                Err(e) => {
                    result = Err(e);
                    break 'feeds;
                }
            }
        }
    }
    if result.is_ok() {
        let mut out = Vec::new();
        result = c.finish(&mut out);
        for p in out {
            assert_eq!(p, ServerPiece::End);
            ends += 1;
            add(&mut pieces, P::End);
        }
    }
    let tunnel = usize::from(c.tunnelling());
    assert_eq!(ends + tunnel + c.awaiting(), expect.len());
    (pieces, result)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[cut, flags], stream)) = data.split_first_chunk::<2>() else {
        return;
    };
    let cut = usize::from(cut) * stream.len() / 255;
    let halves: [&[u8]; 2] = [&stream[..cut], &stream[cut..]];

    let (whole, r, all) = client(&[stream]);
    let (split, r2, all2) = client(&halves);
    assert_eq!((&whole, &r, all), (&split, &r2, all2));
    let b = bytes(&whole);
    assert!(stream.starts_with(&b));
    if all {
        assert_eq!(b, stream);
    }

    // Up to 3 requests: HEAD or not, CONNECT or not.
    let expect: Vec<(bool, bool)> = (0..flags & 3)
        .map(|i| (flags >> (2 + 2 * i) & 1 == 1, flags >> (3 + 2 * i) & 1 == 1))
        .collect();
    let (whole, r) = server(&[stream], &expect);
    let (split, r2) = server(&halves, &expect);
    assert_eq!((&whole, &r), (&split, &r2));
    let b = bytes(&whole);
    assert!(stream.starts_with(&b));
    if r.is_ok() {
        assert_eq!(b, stream);
    }
});
