//! The per-connection decision hash the kernel programs (shadow taps, steering) and user
//! space (the agent's estimates, tests) compute alike: murmur3's block mixing and
//! finalizer over 32-bit words, seeded, and a share in millionths as a threshold on it.

/// A threshold at or above which every hash falls below: 2^32.
pub const THRESHOLD_ALL: u64 = 1 << 32;

/// `share_ppm` (millionths) as a threshold on a 32-bit hash: a connection whose hash is
/// below it is taken. 1,000,000 and above take everything, 0 nothing.
pub const fn threshold_of(share_ppm: u32) -> u64 {
    if share_ppm >= 1_000_000 {
        THRESHOLD_ALL
    } else {
        ((share_ppm as u64) << 32) / 1_000_000
    }
}

/// One word into the hash (murmur3's block step).
#[inline(always)]
pub const fn mix(h: u32, w: u32) -> u32 {
    let mut k = w.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    let h = (h ^ k).rotate_left(13);
    h.wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// murmur3's finalizer.
#[inline(always)]
pub const fn finish(h: u32) -> u32 {
    let mut h = h;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// murmur3_32 of `data` with `seed`: the hash of a user key taken from a request (an HTTP
/// header's value), so that one value is always in or always out of a share, on every
/// host and across restarts.
pub const fn bytes(seed: u32, data: &[u8]) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i + 4 <= data.len() {
        let w = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        h = mix(h, w);
        i += 4;
    }
    let rest = data.len() - i;
    if rest > 0 {
        let mut k: u32 = 0;
        let mut j = rest;
        while j > 0 {
            j -= 1;
            k = (k << 8) | data[i + j] as u32;
        }
        k = k.wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15);
        k = k.wrapping_mul(0x1b87_3593);
        h ^= k;
    }
    finish(h ^ data.len() as u32)
}

/// Whether a key whose hash is `bytes(seed, value)` is in a share of `threshold`
/// ([`threshold_of`]).
pub const fn key_in_share(seed: u32, threshold: u64, value: &[u8]) -> bool {
    (bytes(seed, value) as u64) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_scale_to_the_hash_range() {
        assert_eq!(threshold_of(0), 0);
        assert_eq!(threshold_of(1_000_000), THRESHOLD_ALL);
        assert_eq!(threshold_of(2_000_000), THRESHOLD_ALL);
        assert_eq!(threshold_of(500_000), 1 << 31);
    }

    #[test]
    fn the_hash_is_murmur3s() {
        // murmur3_32's published test vectors: the empty input with seed 1, and the bytes
        // 21 43 65 87 (one little-endian word) with seed 0.
        assert_eq!(finish(1), 0x514e_28b7);
        assert_eq!(finish(mix(0, 0x8765_4321) ^ 4), 0xf55b_516b);
    }

    #[test]
    fn bytes_is_murmur3_32() {
        // Published murmur3_32 vectors (seed, input, hash): every tail length is covered.
        for (seed, input, want) in [
            (0, &b""[..], 0),
            (1, &b""[..], 0x514e_28b7),
            (0, &b"test"[..], 0xba6b_d213),
            (0x9747_b28c, &b"a"[..], 0x7fa0_9ea6),
            (0x9747_b28c, &b"ab"[..], 0x7487_5592),
            (0x9747_b28c, &b"abc"[..], 0xc84a_62dd),
            (0x9747_b28c, &b"abcd"[..], 0xf047_8627),
            (
                0,
                &b"The quick brown fox jumps over the lazy dog"[..],
                0x2e4f_f723,
            ),
        ] {
            assert_eq!(bytes(seed, input), want, "{input:?} seed {seed:#x}");
        }
    }

    #[test]
    fn a_key_is_in_or_out_by_its_hash() {
        let t = threshold_of(300_000);
        let inside = (0..10_000)
            .filter(|i| key_in_share(7, t, format!("user-{i}").as_bytes()))
            .count();
        // 30 % of 10,000 keys, within 4 standard deviations (sqrt(2100) ~ 46).
        assert!((2_816..=3_184).contains(&inside), "{inside}");
        assert!(!key_in_share(7, 0, b"x") && key_in_share(7, THRESHOLD_ALL, b"x"));
    }
}
