//! weft-shadow's Replay: the bytes split into client, production and target pieces by a
//! control byte each, fed in that order; pairing, comparison and stats never panic, and
//! what is sent is a piece of the client stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_shadow::replay::{KeySample, Replay, ReplayConfig};
use weft_shadow::{Limits, Stats};

fuzz_target!(|data: &[u8]| {
    let mut stats = Stats::default();
    let mut r = Replay::new(ReplayConfig {
        targets: 2,
        read_only: data.first().is_some_and(|b| b & 1 == 1),
        limits: Limits {
            max_head: 4096,
            max_message: 64 * 1024,
        },
        max_pending: 8,
        // Bit 1: sampling by a header's value, half of the keys.
        sample: data.first().is_some_and(|b| b & 2 == 2).then(|| KeySample {
            header: "x-user".into(),
            threshold: 1 << 31,
            seed: 1,
        }),
    });
    let mut client = Vec::new();
    let mut sent = Vec::new();
    let mut at = 1u64;
    let mut rest = data.get(1..).unwrap_or_default();
    while let Some((&ctl, tail)) = rest.split_first() {
        let n = usize::from(ctl >> 3).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        at += 1000;
        match ctl & 7 {
            0 | 1 => {
                client.extend_from_slice(piece);
                match r.client(piece, at) {
                    Ok(out) => {
                        for o in out {
                            r.target_sent(0, o.key, at);
                            r.target_sent(1, o.key, at);
                            sent.extend_from_slice(&o.bytes);
                        }
                    }
                    Err(_) => return,
                }
            }
            2 => r.production(piece, at, &mut stats),
            3 => {
                r.target_data(0, piece, at, &mut stats);
            }
            4 => {
                r.target_data(1, piece, at, &mut stats);
            }
            5 => r.production_closed(at, &mut stats),
            6 => {
                r.target_closed(usize::from(ctl >> 7), at, &mut stats);
            }
            _ => r.target_failed(usize::from(ctl >> 7), &mut stats),
        }
        assert!(r.pending() <= 8);
    }
    // Sent requests are whole requests of the client stream, in order (some skipped).
    assert!(sent.len() <= client.len());
    let _ = stats.report();
});
