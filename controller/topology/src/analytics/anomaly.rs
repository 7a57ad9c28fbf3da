//! Anomaly detection per dependency: the latest complete time bucket against the
//! baseline of the buckets before it, with robust statistics.
//!
//! For request rate, error rate and p99 latency, the score is the robust z-score
//! `(current - median) / (1.4826 * MAD)` over the baseline buckets. A perfectly steady
//! baseline has a MAD of 0, which would make any change infinite, so the scale has a
//! floor per metric: rate `max(10 % of the median, sqrt(median))` requests per bucket
//! (Poisson noise), error rate 2 percentage points, p99 `max(10 % of the median, 1 ms)`.
//! A metric is scored only with at least `min_baseline` baseline buckets carrying it, and
//! error rate and p99 only when the current bucket has at least [`MIN_REQUESTS`]
//! requests. A dependency with traffic now and none in a baseline where the topology saw
//! traffic in at least `min_baseline` buckets is reported as `new_dependency`.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use super::series::{self, Series};
use crate::history::EventBus;
use crate::time::rfc3339;
use crate::topology::Topology;
use crate::topology::stats::DependencyStats;

/// Requests the current bucket needs before its error rate or p99 is judged.
pub const MIN_REQUESTS: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnomalyConfig {
    /// |robust z| above this is an anomaly.
    pub threshold: f64,
    /// Baseline buckets a metric needs before it is scored.
    pub min_baseline: usize,
    /// Buckets read at most (baseline plus the current one).
    pub max_buckets: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            threshold: 4.0,
            min_baseline: 5,
            max_buckets: 61,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Requests per second.
    RequestRate,
    /// Errors per request.
    ErrorRate,
    /// p99 request latency, milliseconds.
    P99LatencyMs,
    /// Traffic now, none in the baseline.
    NewDependency,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    pub source: String,
    pub target: String,
    pub protocol: String,
    pub port: u16,
    pub metric: Metric,
    pub current: f64,
    /// Median of the baseline buckets.
    pub baseline: f64,
    /// Median absolute deviation of the baseline buckets.
    pub baseline_mad: f64,
    pub baseline_buckets: usize,
    /// Robust z-score (`null` for a new dependency).
    pub score: Option<f64>,
    /// "up" or "down".
    pub direction: &'static str,
    /// Start of the bucket judged, RFC 3339.
    pub bucket: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyReport {
    pub threshold: f64,
    pub min_baseline: usize,
    pub bucket_seconds: f64,
    /// Start of the bucket judged (the latest complete one), RFC 3339.
    pub current_bucket: Option<String>,
    /// Start of the first baseline bucket, RFC 3339.
    pub baseline_since: Option<String>,
    pub baseline_buckets: usize,
    /// Sorted by score, highest first; new dependencies last.
    pub anomalies: Vec<Anomaly>,
}

fn rate_scale(median: f64) -> f64 {
    (0.1 * median).max(median.max(1.0).sqrt())
}

fn error_scale(_: f64) -> f64 {
    0.02
}

fn latency_scale(median: f64) -> f64 {
    (0.1 * median).max(1.0)
}

fn error_rate(stats: &DependencyStats) -> f64 {
    if stats.requests == 0 {
        0.0
    } else {
        stats.errors as f64 / stats.requests as f64
    }
}

/// Detects anomalies in the latest complete bucket before `now_unix_ns`, with the
/// buckets from `since_unix_ns` as baseline.
pub fn detect(
    topology: &Topology,
    since_unix_ns: u64,
    now_unix_ns: u64,
    config: &AnomalyConfig,
) -> AnomalyReport {
    let series = series::complete_buckets(topology, since_unix_ns, now_unix_ns, config.max_buckets);
    detect_in(&series, config)
}

/// [`detect`] over a series already read: the last bucket is the current one.
pub fn detect_in(series: &Series, config: &AnomalyConfig) -> AnomalyReport {
    let mut report = AnomalyReport {
        threshold: config.threshold,
        min_baseline: config.min_baseline,
        bucket_seconds: series.width_seconds(),
        current_bucket: series.starts.last().map(|s| rfc3339(*s)),
        baseline_since: series.starts.first().map(|s| rfc3339(*s)),
        baseline_buckets: series.starts.len().saturating_sub(1),
        anomalies: Vec::new(),
    };
    let Some(current_index) = series.starts.len().checked_sub(1) else {
        return report;
    };
    let observed_buckets = (0..current_index)
        .filter(|i| series.any_traffic(*i))
        .count();
    let width_s = series.width_seconds();
    let bucket = rfc3339(series.starts[current_index]);
    for (key, points) in &series.dependencies {
        let Some(current) = points[current_index].as_ref().filter(|s| s.requests > 0) else {
            continue;
        };
        let baseline = &points[..current_index];
        let protocol = current.protocol.name_or(key.protocol()).to_owned();
        let anomaly = |metric, current: f64, values: &[f64], scale: fn(f64) -> f64| {
            let median = series::median(values);
            let mad = series::mad(values);
            let score = (current - median) / (1.4826 * mad).max(scale(median));
            (score.abs() > config.threshold).then(|| Anomaly {
                source: key.client.clone(),
                target: key.server.clone(),
                protocol: protocol.clone(),
                port: key.port,
                metric,
                current,
                baseline: median,
                baseline_mad: mad,
                baseline_buckets: values.len(),
                score: Some(score),
                direction: if score > 0.0 { "up" } else { "down" },
                bucket: bucket.clone(),
            })
        };
        let Some(first_seen) = baseline
            .iter()
            .position(|p| p.as_ref().is_some_and(|s| s.requests > 0))
        else {
            if observed_buckets >= config.min_baseline {
                report.anomalies.push(Anomaly {
                    source: key.client.clone(),
                    target: key.server.clone(),
                    protocol,
                    port: key.port,
                    metric: Metric::NewDependency,
                    current: current.requests as f64 / width_s,
                    baseline: 0.0,
                    baseline_mad: 0.0,
                    baseline_buckets: observed_buckets,
                    score: None,
                    direction: "up",
                    bucket: bucket.clone(),
                });
            }
            continue;
        };
        // Rate: every bucket since the dependency first appeared, silent ones as 0.
        let rates: Vec<f64> = baseline[first_seen..]
            .iter()
            .map(|p| p.as_ref().map_or(0.0, |s| s.requests as f64))
            .collect();
        if rates.len() >= config.min_baseline
            && let Some(mut a) = anomaly(
                Metric::RequestRate,
                current.requests as f64,
                &rates,
                rate_scale,
            )
        {
            a.current /= width_s;
            a.baseline /= width_s;
            a.baseline_mad /= width_s;
            report.anomalies.push(a);
        }
        if current.requests < MIN_REQUESTS {
            continue;
        }
        let busy: Vec<&DependencyStats> = baseline
            .iter()
            .flatten()
            .filter(|s| s.requests >= MIN_REQUESTS)
            .collect();
        let errors: Vec<f64> = busy.iter().map(|s| error_rate(s)).collect();
        if errors.len() >= config.min_baseline
            && let Some(a) = anomaly(Metric::ErrorRate, error_rate(current), &errors, error_scale)
        {
            report.anomalies.push(a);
        }
        let p99s: Vec<f64> = busy
            .iter()
            .filter(|s| s.latency_count > 0)
            .map(|s| s.latency_summary().p99)
            .collect();
        if current.latency_count > 0
            && p99s.len() >= config.min_baseline
            && let Some(a) = anomaly(
                Metric::P99LatencyMs,
                current.latency_summary().p99,
                &p99s,
                latency_scale,
            )
        {
            report.anomalies.push(a);
        }
    }
    report.anomalies.sort_by(|a, b| {
        let score = |x: &Anomaly| x.score.map_or(f64::NEG_INFINITY, f64::abs);
        score(b)
            .total_cmp(&score(a))
            .then_with(|| (&a.source, &a.target, a.metric).cmp(&(&b.source, &b.target, b.metric)))
    });
    report
}

/// (source, target, port, metric, bucket) of an anomaly published.
type Published = (String, String, u16, Metric, String);

/// Publishes each anomaly once as a `weft.topology.anomaly` event. Meant for a periodic
/// check; remembers what it published (per dependency, metric and bucket).
#[derive(Debug, Default)]
pub struct AnomalyWatch {
    published: Mutex<BTreeSet<Published>>,
}

impl AnomalyWatch {
    /// Publishes the anomalies of `report` not published before; returns how many.
    pub fn publish(&self, report: &AnomalyReport, events: &EventBus) -> usize {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut count = 0;
        for a in &report.anomalies {
            let key = (
                a.source.clone(),
                a.target.clone(),
                a.port,
                a.metric,
                a.bucket.clone(),
            );
            if published.insert(key) {
                let data = serde_json::to_value(a).unwrap_or_default();
                events.publish("weft.topology.anomaly", a.bucket.clone(), data);
                count += 1;
            }
        }
        // Keep the memory bounded: buckets older than the report's are not seen again.
        if published.len() > 10_000
            && let Some(oldest) = report.baseline_since.as_ref()
        {
            published.retain(|k| &k.4 >= oldest);
        }
        count
    }
}
