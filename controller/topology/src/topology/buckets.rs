//! Time-bucketed statistics of one dependency: an all-time total plus fixed-width buckets
//! kept for a bounded retention, so a window query merges the buckets in range.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::stats::DependencyStats;

/// Width and retention of the buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketConfig {
    pub width: Duration,
    pub retention: Duration,
}

impl Default for BucketConfig {
    fn default() -> Self {
        Self {
            width: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3_600),
        }
    }
}

impl BucketConfig {
    fn width_ns(&self) -> u64 {
        u64::try_from(self.width.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn retention_ns(&self) -> u64 {
        u64::try_from(self.retention.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A time window, Unix nanoseconds, both ends inclusive; `None` is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub since: Option<u64>,
    pub until: Option<u64>,
}

impl Window {
    pub const ALL: Self = Self {
        since: None,
        until: None,
    };

    pub fn is_all(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }
}

#[derive(Debug, Clone, Default)]
pub struct BucketedStats {
    /// The all-time total; `None` while everything recorded is in one bucket, which is
    /// then the total (a dependency seen within one bucket keeps one copy of its
    /// statistics, and its first record fills one).
    total: Option<DependencyStats>,
    /// When it was last recorded into, on the topology's clock (eviction of idle ones).
    pub touched_unix_ns: u64,
    /// (bucket start, stats), sorted by start.
    buckets: VecDeque<(u64, DependencyStats)>,
    /// When each bucket (same index) was last recorded into, on the topology's clock: a
    /// checkpoint writes the buckets changed since the last one.
    bucket_touched: VecDeque<u64>,
    /// The all-time statistics as `GET /topology` writes them, kept until the next
    /// record: a request writes every dependency, and between two requests few change.
    json: OnceLock<Arc<[u8]>>,
}

impl BucketedStats {
    /// Its parts as a checkpoint keeps them: the total (when it differs from the one
    /// bucket), when it was last recorded into, and the buckets.
    pub(crate) fn parts(
        &self,
    ) -> (
        Option<&DependencyStats>,
        u64,
        &VecDeque<(u64, DependencyStats)>,
    ) {
        (self.total.as_ref(), self.touched_unix_ns, &self.buckets)
    }

    /// Made again from [`Self::parts`] (each bucket touched at `touched_unix_ns`); the
    /// buckets sorted by start, one per start.
    pub(crate) fn from_parts(
        total: Option<DependencyStats>,
        touched_unix_ns: u64,
        buckets: VecDeque<(u64, DependencyStats)>,
    ) -> Self {
        let mut buckets = Vec::from(buckets);
        buckets.sort_by_key(|(start, _)| *start);
        buckets.dedup_by_key(|(start, _)| *start);
        let buckets = VecDeque::from(buckets);
        Self {
            total,
            touched_unix_ns,
            bucket_touched: buckets.iter().map(|_| touched_unix_ns).collect(),
            buckets,
            json: OnceLock::new(),
        }
    }

    /// Adds a bucket read back from a checkpoint (touched at the dependency's
    /// `touched_unix_ns`); one already there is kept.
    pub(crate) fn restore_bucket(&mut self, start: u64, stats: DependencyStats) {
        let position = self.buckets.partition_point(|(s, _)| *s < start);
        if self.buckets.get(position).is_some_and(|(s, _)| *s == start) {
            return;
        }
        self.json.take();
        self.buckets.insert(position, (start, stats));
        self.bucket_touched.insert(position, self.touched_unix_ns);
    }

    /// Folds `other` (the same dependency as another controller replica saw it) into this
    /// one: totals merge, buckets of the same start merge, the others are added.
    /// Associative and commutative, as [`DependencyStats::merge`] is.
    pub(crate) fn merge(&mut self, other: &Self) {
        self.json.take();
        let mut total = self.total().clone();
        total.merge(other.total());
        for ((start, stats), touched) in other.buckets.iter().zip(&other.bucket_touched) {
            let position = self.buckets.partition_point(|(s, _)| s < start);
            if self.buckets.get(position).is_some_and(|(s, _)| s == start) {
                self.buckets[position].1.merge(stats);
                self.bucket_touched[position] = self.bucket_touched[position].max(*touched);
            } else {
                self.buckets.insert(position, (*start, stats.clone()));
                self.bucket_touched.insert(position, *touched);
            }
        }
        self.total = Some(total);
        self.touched_unix_ns = self.touched_unix_ns.max(other.touched_unix_ns);
    }

    /// Every kept bucket: (start, stats, when it was last recorded into), oldest first.
    pub(crate) fn buckets_touched(&self) -> impl Iterator<Item = (u64, &DependencyStats, u64)> {
        self.buckets
            .iter()
            .zip(&self.bucket_touched)
            .map(|((start, stats), touched)| (*start, stats, *touched))
    }

    /// The start of the oldest bucket kept.
    pub(crate) fn oldest_bucket(&self) -> Option<u64> {
        self.buckets.front().map(|(start, _)| *start)
    }

    /// Records into the total and into the bucket holding `at_unix_ns`, dropping buckets
    /// older than the retention before the newest; `now_unix_ns` (the topology's clock) is
    /// when the dependency and that bucket were last touched.
    pub fn record(
        &mut self,
        config: &BucketConfig,
        at_unix_ns: u64,
        now_unix_ns: u64,
        apply: impl Fn(&mut DependencyStats),
    ) {
        self.json.take();
        self.touched_unix_ns = now_unix_ns;
        let width = config.width_ns();
        let start = at_unix_ns - at_unix_ns % width;
        let position = self.buckets.iter().rposition(|(s, _)| *s <= start);
        let same_bucket = matches!(position, Some(i) if self.buckets[i].0 == start);
        if self.total.is_none() && !self.buckets.is_empty() && !same_bucket {
            // A second bucket: the one bucket stops being the total.
            self.total = Some(self.buckets[0].1.clone());
        }
        if let Some(total) = &mut self.total {
            apply(total);
        }
        match position {
            Some(i) if same_bucket => {
                apply(&mut self.buckets[i].1);
                self.bucket_touched[i] = now_unix_ns;
            }
            _ => {
                let mut stats = DependencyStats::default();
                apply(&mut stats);
                let index = position.map_or(0, |i| i + 1);
                // A deque grows by doubling from four; most dependencies have a bucket or
                // two, so the first few grow one at a time.
                if self.buckets.len() == self.buckets.capacity() && self.buckets.len() < 4 {
                    self.buckets.reserve_exact(1);
                    self.bucket_touched.reserve_exact(1);
                }
                self.buckets.insert(index, (start, stats));
                self.bucket_touched.insert(index, now_unix_ns);
            }
        }
        let newest = self.buckets.back().map_or(0, |(s, _)| *s);
        let oldest_kept = newest.saturating_sub(config.retention_ns());
        while self.buckets.front().is_some_and(|(s, _)| *s < oldest_kept) {
            self.buckets.pop_front();
            self.bucket_touched.pop_front();
        }
    }

    /// The stats within `window` (the total when it is open at both ends); `None` when
    /// nothing falls in it. A bucket counts when it overlaps the window.
    pub fn in_window(&self, config: &BucketConfig, window: &Window) -> Option<DependencyStats> {
        if window.is_all() {
            return Some(self.total().clone());
        }
        let since = window.since.unwrap_or(0);
        let until = window.until.unwrap_or(u64::MAX);
        let mut merged: Option<DependencyStats> = None;
        for (start, stats) in &self.buckets {
            if start.saturating_add(config.width_ns()) > since && *start <= until {
                match &mut merged {
                    Some(m) => m.merge(stats),
                    None => merged = Some(stats.clone()),
                }
            }
        }
        merged
    }

    /// The all-time statistics as `write` renders them, rendered once per change.
    pub fn total_json(&self, write: impl FnOnce(&DependencyStats, &mut Vec<u8>)) -> &Arc<[u8]> {
        self.json.get_or_init(|| {
            let mut out = Vec::with_capacity(768);
            write(self.total(), &mut out);
            Arc::from(out)
        })
    }

    /// The all-time statistics.
    pub fn total(&self) -> &DependencyStats {
        static EMPTY: OnceLock<DependencyStats> = OnceLock::new();
        match (&self.total, self.buckets.front()) {
            (Some(total), _) => total,
            (None, Some((_, only))) => only,
            (None, None) => EMPTY.get_or_init(DependencyStats::default),
        }
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Every kept bucket whose start is in `first_start..=last_start`, oldest first.
    pub fn buckets_between(
        &self,
        first_start: u64,
        last_start: u64,
    ) -> impl Iterator<Item = (u64, &DependencyStats)> {
        self.buckets
            .iter()
            .filter(move |(start, _)| (first_start..=last_start).contains(start))
            .map(|(start, stats)| (*start, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    fn one_request(stats: &mut DependencyStats) {
        stats.requests += 1;
    }

    #[test]
    fn a_window_merges_only_the_buckets_in_range() {
        let config = BucketConfig::default();
        let mut b = BucketedStats::default();
        for minute in [10, 10, 11, 13] {
            b.record(&config, minute * MIN + 5, 0, one_request);
        }
        assert_eq!(b.total().requests, 4);
        assert_eq!(b.bucket_count(), 3);
        let w = |since: u64, until: u64| Window {
            since: Some(since * MIN),
            until: Some(until * MIN),
        };
        assert_eq!(
            b.in_window(&config, &w(10, 10)).map(|s| s.requests),
            Some(2)
        );
        assert_eq!(
            b.in_window(&config, &w(11, 13)).map(|s| s.requests),
            Some(2)
        );
        assert!(b.in_window(&config, &w(12, 12)).is_none());
        assert_eq!(
            b.in_window(&config, &Window::ALL).map(|s| s.requests),
            Some(4)
        );
    }

    #[test]
    fn one_bucket_is_the_total_until_a_second_one_and_the_total_stays_exact() {
        let config = BucketConfig {
            width: Duration::from_secs(60),
            retention: Duration::from_secs(120),
        };
        let mut b = BucketedStats::default();
        assert_eq!(b.total().requests, 0);
        b.record(&config, 10 * MIN, 0, one_request);
        b.record(&config, 10 * MIN + 7, 0, one_request);
        assert!(b.total.is_none(), "one bucket: no second copy");
        assert_eq!(b.total().requests, 2);
        b.record(&config, 9 * MIN, 0, one_request);
        assert!(
            b.total.is_some(),
            "a second bucket, even an older one, splits them"
        );
        assert_eq!(b.total().requests, 3);
        for minute in 11..20 {
            b.record(&config, minute * MIN, 0, one_request);
        }
        assert_eq!(b.bucket_count(), 3, "minutes 17, 18, 19");
        assert_eq!(
            b.total().requests,
            12,
            "the total keeps what retention dropped"
        );
        let w = Window {
            since: Some(9 * MIN),
            until: Some(19 * MIN),
        };
        assert_eq!(b.in_window(&config, &w).map(|s| s.requests), Some(3));
    }

    #[test]
    fn out_of_order_records_land_in_their_bucket() {
        let config = BucketConfig::default();
        let mut b = BucketedStats::default();
        b.record(&config, 12 * MIN, 0, one_request);
        b.record(&config, 10 * MIN, 0, one_request);
        b.record(&config, 11 * MIN, 0, one_request);
        let starts: Vec<u64> = b.buckets.iter().map(|(s, _)| s / MIN).collect();
        assert_eq!(starts, vec![10, 11, 12]);
    }

    #[test]
    fn buckets_older_than_the_retention_are_dropped_but_the_total_keeps_them() {
        let config = BucketConfig {
            width: Duration::from_secs(60),
            retention: Duration::from_secs(120),
        };
        let mut b = BucketedStats::default();
        for minute in 0..10 {
            b.record(&config, minute * MIN, 0, one_request);
        }
        assert_eq!(b.bucket_count(), 3, "minutes 7, 8, 9");
        assert_eq!(b.total().requests, 10);
    }
}
