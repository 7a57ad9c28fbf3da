//! A sparse latency histogram with exactly the buckets of the `hdrhistogram` configuration
//! weft used before (lowest discernible value 1, two significant figures: 256 sub-buckets,
//! so every value falls in a bucket at most 1/128 of it wide), keeping only the buckets
//! that hold a count.
//!
//! A dense `hdrhistogram` of that configuration is about 5 KiB once it has seen a few
//! milliseconds, whatever it holds; a dependency had four of them (request latency and
//! handshake RTT, all-time and in its minute bucket). This one is 16 bytes plus 8 bytes
//! per bucket in use. Its quantiles and maximum are the ones `hdrhistogram` gives for the
//! same values (tested against it), and two of them merge bucket by bucket.

/// Sub-buckets per bucket: `2 * 10^2` rounded up to a power of two.
const SUB_BUCKET_COUNT_MAGNITUDE: u32 = 8;
const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = SUB_BUCKET_COUNT_MAGNITUDE - 1;
const SUB_BUCKET_HALF_COUNT: u32 = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE;
const SUB_BUCKET_MASK: u64 = (1 << SUB_BUCKET_COUNT_MAGNITUDE) - 1;
const LEADING_ZERO_COUNT_BASE: u32 = 64 - SUB_BUCKET_COUNT_MAGNITUDE;

/// Bits of an entry holding the count; the bucket index takes the 16 above them.
const COUNT_BITS: u32 = 48;
/// The largest count one bucket holds (2^48 - 1, about 2.8 * 10^14): a bucket saturates
/// there, as `hdrhistogram`'s saturate at 2^64 - 1.
pub const MAX_BUCKET_COUNT: u64 = (1 << COUNT_BITS) - 1;

/// Values above this are recorded as this (an hour in microseconds, what weft recorded
/// into its `hdrhistogram`s at most); the largest bucket index is then 3,327.
pub const MAX_VALUE: u64 = 3_600_000_000;

fn bucket_for(value: u64) -> u32 {
    LEADING_ZERO_COUNT_BASE - (value | SUB_BUCKET_MASK).leading_zeros()
}

/// The bucket index of `value`, as `hdrhistogram` numbers its counts.
fn index_for(value: u64) -> u16 {
    let bucket = bucket_for(value);
    let sub_bucket = (value >> bucket) as u32;
    let index =
        ((bucket + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub_bucket - SUB_BUCKET_HALF_COUNT;
    // value <= MAX_VALUE < 2^32: bucket <= 24, index < BUCKETS.
    index as u16
}

/// The lowest value of bucket `index`.
fn value_for(index: u16) -> u64 {
    let index = u32::from(index);
    let mut bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) as i32 - 1;
    let mut sub_bucket = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
    if bucket < 0 {
        sub_bucket -= SUB_BUCKET_HALF_COUNT;
        bucket = 0;
    }
    u64::from(sub_bucket) << bucket
}

/// The highest value of the bucket holding `value`.
fn highest_equivalent(value: u64) -> u64 {
    let bucket = bucket_for(value);
    let lowest = (value >> bucket) << bucket;
    lowest.saturating_add(1 << bucket) - 1
}

fn pack(index: u16, count: u64) -> u64 {
    (u64::from(index) << COUNT_BITS) | count.min(MAX_BUCKET_COUNT)
}

fn index_of(entry: u64) -> u16 {
    (entry >> COUNT_BITS) as u16
}

fn count_of(entry: u64) -> u64 {
    entry & MAX_BUCKET_COUNT
}

/// Counts per bucket, sorted by bucket index, one `u64` each (16-bit index, 48-bit
/// count); no entry has a zero count. Empty: no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SparseHistogram {
    entries: Box<[u64]>,
}

impl SparseHistogram {
    /// Records `count` values of `value` (clamped to [`MAX_VALUE`]).
    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let index = index_for(value.min(MAX_VALUE));
        match self.entries.binary_search_by_key(&index, |e| index_of(*e)) {
            Ok(at) => {
                let entry = &mut self.entries[at];
                *entry = pack(index, count_of(*entry).saturating_add(count));
            }
            Err(at) => {
                let mut entries = Vec::with_capacity(self.entries.len() + 1);
                entries.extend_from_slice(&self.entries[..at]);
                entries.push(pack(index, count));
                entries.extend_from_slice(&self.entries[at..]);
                self.entries = entries.into_boxed_slice();
            }
        }
    }

    /// Adds every count of `other`.
    pub fn add(&mut self, other: &Self) {
        if other.entries.is_empty() {
            return;
        }
        if self.entries.is_empty() {
            self.entries = other.entries.clone();
            return;
        }
        let (a, b) = (&self.entries, &other.entries);
        let mut merged = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let (x, y) = (index_of(a[i]), index_of(b[j]));
            if x < y {
                merged.push(a[i]);
                i += 1;
            } else if y < x {
                merged.push(b[j]);
                j += 1;
            } else {
                merged.push(pack(x, count_of(a[i]).saturating_add(count_of(b[j]))));
                i += 1;
                j += 1;
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.entries = merged.into_boxed_slice();
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| count_of(*e))
            .fold(0, u64::saturating_add)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Buckets holding a count.
    pub fn buckets(&self) -> usize {
        self.entries.len()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val::<[u64]>(&self.entries)
    }

    /// The value at quantile `q` as `hdrhistogram::Histogram::value_at_quantile` gives it:
    /// the highest value of the first bucket where the running count reaches
    /// `ceil(q * len)` (at least 1); 0 when empty.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        self.values_at_quantiles(&[q])[0]
    }

    /// [`Self::value_at_quantile`] of each of `quantiles`, in one pass when they are
    /// sorted.
    pub fn values_at_quantiles<const N: usize>(&self, quantiles: &[f64; N]) -> [u64; N] {
        let total = self.len();
        let mut out = [0u64; N];
        for (slot, q) in out.iter_mut().zip(quantiles) {
            let q = q.min(1.0);
            let target = ((q * total as f64).ceil() as u64).max(1);
            let mut running = 0u64;
            for entry in self.entries.iter() {
                running = running.saturating_add(count_of(*entry));
                if running >= target {
                    let low = value_for(index_of(*entry));
                    *slot = if q == 0.0 {
                        low
                    } else {
                        highest_equivalent(low)
                    };
                    break;
                }
            }
        }
        out
    }

    /// For each of `bounds` (ascending), how many values are at most it, as a Prometheus
    /// histogram's cumulative `le` buckets: a bucket counts toward a bound when its lowest
    /// value is at most the bound, so a count may include values up to 1/128 above the
    /// bound (the bucket's width), never leave out one below it.
    pub fn cumulative_counts<const N: usize>(&self, bounds: &[u64; N]) -> [u64; N] {
        let mut out = [0u64; N];
        let mut running = 0u64;
        let mut entries = self.entries.iter().peekable();
        for (slot, bound) in out.iter_mut().zip(bounds) {
            while let Some(entry) = entries.peek() {
                if value_for(index_of(**entry)) > *bound {
                    break;
                }
                running = running.saturating_add(count_of(**entry));
                entries.next();
            }
            *slot = running;
        }
        out
    }

    /// The largest value as `hdrhistogram` gives it: the highest value of the highest
    /// bucket holding a count (0 when empty).
    pub fn max(&self) -> u64 {
        self.entries
            .last()
            .map_or(0, |e| highest_equivalent(value_for(index_of(*e))))
    }
}

/// Buckets a value up to [`MAX_VALUE`] can fall in.
const BUCKETS: usize = 26 * 128 + 128;

/// The sum of many sparse histograms, dense while it adds (one pass per histogram, no
/// allocation per addition): the totals of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct HistogramSum {
    counts: Vec<u64>,
}

impl HistogramSum {
    pub fn add(&mut self, histogram: &SparseHistogram) {
        if histogram.entries.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for entry in histogram.entries.iter() {
            let slot = &mut self.counts[usize::from(index_of(*entry))];
            *slot = slot.saturating_add(count_of(*entry));
        }
    }

    pub fn finish(self) -> SparseHistogram {
        let entries: Vec<u64> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| pack(index as u16, *count))
            .collect();
        SparseHistogram {
            entries: entries.into_boxed_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    /// A small deterministic generator (xorshift) so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    const QUANTILES: [f64; 12] = [
        0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.99999, 1.0,
    ];

    fn check_same(sparse: &SparseHistogram, hdr: &Histogram<u64>, what: &str) {
        assert_eq!(sparse.len(), hdr.len(), "{what}: count");
        assert_eq!(sparse.max(), hdr.max(), "{what}: max");
        for q in QUANTILES {
            assert_eq!(
                sparse.value_at_quantile(q),
                hdr.value_at_quantile(q),
                "{what}: quantile {q}"
            );
        }
        assert_eq!(
            sparse.values_at_quantiles(&[0.5, 0.95, 0.99]),
            [
                hdr.value_at_quantile(0.5),
                hdr.value_at_quantile(0.95),
                hdr.value_at_quantile(0.99)
            ],
            "{what}: quantiles in one pass"
        );
        let dense_buckets = hdr.iter_recorded().count();
        assert_eq!(sparse.buckets(), dense_buckets, "{what}: buckets in use");
    }

    /// Cumulative counts at Prometheus-style bounds: never fewer than the exact number of
    /// values at most the bound, and more only by values within the bound's bucket
    /// (less than 1/128 above it).
    #[test]
    fn cumulative_counts_bound_the_exact_counts() {
        let bounds = [0u64, 500, 1_000, 2_500, 10_000, 250_000, 3_600_000_000];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut sparse = SparseHistogram::default();
        let mut values = Vec::new();
        for _ in 0..20_000 {
            // Log-uniform between 1 µs and about 17 s, plus exact bound values.
            let value = if rng.next().is_multiple_of(10) {
                bounds[(rng.next() % bounds.len() as u64) as usize]
            } else {
                1u64 << (rng.next() % 24) | (rng.next() % 1024)
            };
            sparse.record_n(value, 1);
            values.push(value.min(MAX_VALUE));
        }
        let counts = sparse.cumulative_counts(&bounds);
        for (bound, count) in bounds.iter().zip(counts) {
            let exact = values.iter().filter(|v| **v <= *bound).count() as u64;
            let slack = values
                .iter()
                .filter(|v| **v > *bound && **v <= highest_equivalent(*bound))
                .count() as u64;
            assert!(
                count >= exact && count <= exact + slack,
                "bound {bound}: {count} counted, {exact} exactly at most it, {slack} in its bucket above it"
            );
        }
        assert_eq!(
            counts[bounds.len() - 1],
            sparse.len(),
            "the last bound holds every value"
        );
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {counts:?}"
        );
        assert_eq!(
            SparseHistogram::default().cumulative_counts(&bounds),
            [0; 7]
        );
    }

    /// Every value from 0 to past the clamp goes in the same bucket as in hdrhistogram.
    #[test]
    fn bucket_boundaries_match_hdrhistogram() {
        let hdr = Histogram::<u64>::new(2).expect("valid precision");
        let mut value = 0u64;
        while value <= MAX_VALUE {
            let low = value_for(index_for(value));
            assert_eq!(low, hdr.lowest_equivalent(value), "lowest of {value}");
            assert_eq!(
                highest_equivalent(value),
                hdr.highest_equivalent(value),
                "highest of {value}"
            );
            value = if value < 100_000 {
                value + 1
            } else {
                value + value / 997
            };
        }
    }

    /// The same samples (log-uniform from 1 µs to past an hour, and clustered) give the same
    /// quantiles and maximum as the hdrhistogram weft used (2 significant figures,
    /// auto-resizing, values clamped to an hour), alone and after merges.
    #[test]
    fn quantiles_match_hdrhistogram_on_the_same_samples() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            let mut hdr = Histogram::<u64>::new(2).expect("valid precision");
            let mut sparse = SparseHistogram::default();
            let mut parts = vec![SparseHistogram::default(); 3];
            let samples = 1 + (rng.next() % 5_000) as usize;
            for i in 0..samples {
                let value = match round % 4 {
                    // log-uniform over 1 µs .. 2^33 µs (past the clamp)
                    0 | 1 => {
                        let exponent = rng.next() % 33;
                        (1u64 << exponent) + rng.next() % (1u64 << exponent)
                    }
                    // a cluster around 1.5 ms with a tail
                    2 => 1_400 + rng.next() % 200 + u64::from(i % 97 == 0) * 250_000,
                    // small values, where buckets are one unit wide
                    _ => rng.next() % 300,
                };
                let count = 1 + rng.next() % 4;
                let clamped = value.min(MAX_VALUE);
                hdr.record_n(clamped, count).expect("auto-resizing");
                sparse.record_n(value, count);
                parts[i % 3].record_n(value, count);
            }
            check_same(&sparse, &hdr, &format!("round {round}"));
            let mut merged = SparseHistogram::default();
            let mut sum = HistogramSum::default();
            for part in &parts {
                merged.add(part);
                sum.add(part);
            }
            assert_eq!(merged, sparse, "round {round}: merge of parts");
            assert_eq!(sum.finish(), sparse, "round {round}: dense sum of parts");
        }
    }

    #[test]
    fn empty_and_single_values() {
        let empty = SparseHistogram::default();
        assert!(empty.is_empty());
        assert_eq!(
            (empty.len(), empty.max(), empty.value_at_quantile(0.5)),
            (0, 0, 0)
        );
        assert_eq!(empty.heap_bytes(), 0);
        let mut one = SparseHistogram::default();
        one.record_n(1_633, 3);
        one.record_n(1_633, 0);
        let mut hdr = Histogram::<u64>::new(2).expect("valid precision");
        hdr.record_n(1_633, 3).expect("auto-resizing");
        check_same(&one, &hdr, "one value");
        assert_eq!(one.heap_bytes(), 8);
    }

    #[test]
    fn a_bucket_saturates_instead_of_wrapping() {
        let mut h = SparseHistogram::default();
        h.record_n(10, MAX_BUCKET_COUNT);
        h.record_n(10, 5);
        assert_eq!(h.len(), MAX_BUCKET_COUNT);
        assert_eq!(h.value_at_quantile(1.0), 10);
    }
}
