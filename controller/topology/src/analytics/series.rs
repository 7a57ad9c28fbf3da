//! Per-bucket time series of dependencies, read from the topology's time buckets: the
//! input of anomaly detection and scaling recommendations.
//!
//! Each bucket is read with one [`Topology::dependencies_in`] call over exactly that
//! bucket's span, so the cost is (buckets asked for) x (dependencies); callers bound the
//! number of buckets (an hour of one-minute buckets by default).

use std::collections::BTreeMap;

use crate::topology::stats::DependencyStats;
use crate::topology::{DependencyKey, Topology, Window};

/// Bucket starts (Unix ns) and, per dependency, its stats in each bucket (`None`: no
/// traffic in that bucket).
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub width_ns: u64,
    /// Start of every bucket, oldest first.
    pub starts: Vec<u64>,
    pub dependencies: BTreeMap<DependencyKey, Vec<Option<DependencyStats>>>,
}

impl Series {
    /// Whether any dependency had traffic in bucket `index`.
    pub fn any_traffic(&self, index: usize) -> bool {
        self.dependencies
            .values()
            .any(|points| points[index].as_ref().is_some_and(|s| s.requests > 0))
    }

    pub fn width_seconds(&self) -> f64 {
        self.width_ns as f64 / 1e9
    }
}

/// The start of the bucket holding `at_unix_ns`.
pub fn bucket_start(width_ns: u64, at_unix_ns: u64) -> u64 {
    at_unix_ns - at_unix_ns % width_ns.max(1)
}

/// The complete buckets from the one holding `since_unix_ns` up to (not including) the
/// bucket holding `now_unix_ns`, at most `max_buckets` (the newest kept).
pub fn complete_buckets(
    topology: &Topology,
    since_unix_ns: u64,
    now_unix_ns: u64,
    max_buckets: usize,
) -> Series {
    let width_ns = u64::try_from(topology.bucket_config().width.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let end = bucket_start(width_ns, now_unix_ns);
    let mut first = bucket_start(width_ns, since_unix_ns.min(end));
    let count = usize::try_from((end - first) / width_ns).unwrap_or(usize::MAX);
    if count > max_buckets {
        first = end - width_ns * max_buckets as u64;
    }
    let starts: Vec<u64> = (first..end).step_by(width_ns as usize).collect();
    let mut series = Series {
        width_ns,
        starts: starts.clone(),
        dependencies: BTreeMap::new(),
    };
    for (index, start) in starts.iter().enumerate() {
        let window = Window {
            since: Some(*start),
            until: Some(start + width_ns - 1),
        };
        for (key, stats) in topology.dependencies_in(&window) {
            let points = series
                .dependencies
                .entry(key)
                .or_insert_with(|| vec![None; starts.len()]);
            points[index] = Some(stats);
        }
    }
    series
}

/// Median of `values` (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Median absolute deviation from the median.
pub fn mad(values: &[f64]) -> f64 {
    let m = median(values);
    let deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    median(&deviations)
}

/// Least-squares line through (`i`, `values[i]`): (intercept, slope per step).
pub fn linear_fit(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.len() < 2 {
        return (values.first().copied().unwrap_or(0.0), 0.0);
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = values.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in values.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    let slope = if sxx == 0.0 { 0.0 } else { sxy / sxx };
    (mean_y - slope * mean_x, slope)
}

/// Pearson correlation (0 when either side is constant).
pub fn correlation(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return 0.0;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (xs[i] - mx, ys[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(mad(&[1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0]), 1.0);
        let (a, b) = linear_fit(&[1.0, 3.0, 5.0, 7.0]);
        assert!((a - 1.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9);
        assert!((correlation(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-9);
        assert_eq!(correlation(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), 0.0);
    }
}
