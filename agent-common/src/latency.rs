//! Request-latency buckets shared by the kernel (which counts into them) and user space
//! (which turns them into histograms). Two buckets per power of two from 1 µs to 17 s:
//! a value's bucket bounds it within ±25 %.

use crate::flow::LATENCY_BUCKETS;

const MIN_SHIFT: u32 = 10; // 1024 ns

/// Index of the most significant set bit (`v > 0`). Branches instead of a loop so that the
/// BPF verifier sees straight-line code.
#[inline(always)]
pub fn msb(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The bucket a latency in nanoseconds falls in; always `< LATENCY_BUCKETS`.
#[inline(always)]
pub fn bucket_of(ns: u64) -> usize {
    if ns < (1 << MIN_SHIFT) {
        return 0;
    }
    let m = msb(ns);
    let half = ((ns >> (m - 1)) & 1) as usize;
    let idx = ((m - MIN_SHIFT) as usize) * 2 + half;
    if idx >= LATENCY_BUCKETS {
        LATENCY_BUCKETS - 1
    } else {
        idx
    }
}

/// Lower bound (inclusive) of bucket `i` in nanoseconds; bucket 0 also holds everything
/// below 1 µs.
pub fn bucket_lower_ns(i: usize) -> u64 {
    let m = MIN_SHIFT + (i / 2) as u32;
    (1u64 << m) + ((i % 2) as u64) * (1u64 << (m - 1))
}

/// Upper bound (exclusive) of bucket `i` in nanoseconds; the last bucket also holds
/// everything above it.
pub fn bucket_upper_ns(i: usize) -> u64 {
    let m = MIN_SHIFT + (i / 2) as u32;
    bucket_lower_ns(i) + (1u64 << (m - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_within_its_bucket_bounds() {
        let mut v = 1024u64;
        while v < (1u64 << 34) {
            let b = bucket_of(v);
            assert!(
                bucket_lower_ns(b) <= v && v < bucket_upper_ns(b),
                "{v} in bucket {b}"
            );
            v = v * 9 / 8 + 1;
        }
    }

    #[test]
    fn buckets_are_contiguous_and_increasing() {
        for i in 1..LATENCY_BUCKETS {
            assert_eq!(bucket_upper_ns(i - 1), bucket_lower_ns(i));
        }
        assert_eq!(bucket_lower_ns(0), 1024);
    }

    #[test]
    fn extremes_clamp_into_first_and_last_bucket() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1023), 0);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_of(20_000_000), bucket_of(20_000_001));
        // 20 ms sits in [16.8 ms, 25.2 ms)
        let b = bucket_of(20_000_000);
        assert!(bucket_lower_ns(b) <= 20_000_000 && 20_000_000 < bucket_upper_ns(b));
    }

    #[test]
    fn msb_matches_leading_zeros() {
        for v in [1u64, 2, 3, 1023, 1024, 1 << 40, u64::MAX, 123_456_789] {
            assert_eq!(msb(v), 63 - v.leading_zeros());
        }
    }
}
