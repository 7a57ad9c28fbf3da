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
}
