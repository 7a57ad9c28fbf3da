//! Scaling recommendations per service, from its inbound traffic over the complete
//! time buckets of a window.
//!
//! For each service with inbound traffic: the request rate per bucket (all its inbound
//! dependencies merged) is fitted with a least-squares line; the projected rate is the
//! line `horizon` buckets past the last one; p99 latency and error rate come from the
//! last [`RECENT_BUCKETS`] buckets merged. Decisions, first match wins:
//! - fewer than `min_buckets` buckets since the service first had traffic: `hold`;
//! - p99 above the latency target: `scale_out` by p99 / target;
//! - error rate above 5 % while latency rises with the rate (correlation of per-bucket
//!   rate and p99 above 0.7: saturation): `scale_out` by 1.5;
//! - projected rate above 1.2 x the current: `scale_out` by projected / current;
//! - current rate below `idle_rps`, or projected below 0.7 x the current with p99 under
//!   half the target: `scale_in` by projected / current (0.5 when idle);
//! - otherwise `hold`.
//!
//! Factors are bounded to [0.25, 4]: they suggest a direction and a size, not a replica
//! count (weft does not know replica counts).

use std::collections::BTreeMap;

use serde::Serialize;

use super::series::{self, Series};
use crate::topology::Topology;
use crate::topology::stats::DependencyStats;

/// Buckets merged for the "current" latency and error rate.
pub const RECENT_BUCKETS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingConfig {
    pub latency_target_ms: f64,
    /// Buckets ahead the projection looks.
    pub horizon: usize,
    /// Buckets needed before anything but `hold`.
    pub min_buckets: usize,
    /// Below this many requests per second a service is idle.
    pub idle_rps: f64,
    pub max_buckets: usize,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            latency_target_ms: 100.0,
            horizon: 15,
            min_buckets: 5,
            idle_rps: 0.1,
            max_buckets: 60,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    ScaleOut,
    ScaleIn,
    Hold,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub service: String,
    pub action: Action,
    /// Suggested capacity multiplier (1 for hold), within [0.25, 4].
    pub factor: f64,
    pub reason: String,
    /// Fitted rate at the last bucket, requests per second.
    pub current_rps: f64,
    /// Fitted rate `horizon` buckets later, requests per second (never below 0).
    pub projected_rps: f64,
    /// Slope of the fit, requests per second per bucket.
    pub trend_rps_per_bucket: f64,
    pub p99_latency_ms: f64,
    pub error_rate: f64,
    /// Correlation of per-bucket rate and p99 (latency rising with load).
    pub rate_latency_correlation: f64,
    pub buckets: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingReport {
    pub latency_target_ms: f64,
    pub bucket_seconds: f64,
    pub horizon_buckets: usize,
    /// Sorted: scale_out first, then scale_in, then hold; by name within.
    pub services: Vec<Recommendation>,
}

fn bound(factor: f64) -> f64 {
    if factor.is_finite() {
        factor.clamp(0.25, 4.0)
    } else {
        4.0
    }
}

/// Recommendations from the complete buckets between `since_unix_ns` and `now_unix_ns`.
pub fn recommend(
    topology: &Topology,
    since_unix_ns: u64,
    now_unix_ns: u64,
    config: &ScalingConfig,
) -> ScalingReport {
    let series = series::complete_buckets(topology, since_unix_ns, now_unix_ns, config.max_buckets);
    recommend_in(&series, config)
}

pub fn recommend_in(series: &Series, config: &ScalingConfig) -> ScalingReport {
    let n = series.starts.len();
    let width_s = series.width_seconds();
    // Inbound stats per service per bucket.
    let mut inbound: BTreeMap<&str, Vec<DependencyStats>> = BTreeMap::new();
    for (key, points) in &series.dependencies {
        let merged = inbound
            .entry(key.server.as_str())
            .or_insert_with(|| vec![DependencyStats::default(); n]);
        for (into, point) in merged.iter_mut().zip(points) {
            if let Some(stats) = point {
                into.merge(stats);
            }
        }
    }
    let mut services: Vec<Recommendation> = inbound
        .into_iter()
        .filter_map(|(service, buckets)| {
            let first = buckets.iter().position(|s| s.requests > 0)?;
            Some(judge(service, &buckets[first..], width_s, config))
        })
        .collect();
    let rank = |a: Action| match a {
        Action::ScaleOut => 0,
        Action::ScaleIn => 1,
        Action::Hold => 2,
    };
    services.sort_by(|a, b| {
        rank(a.action)
            .cmp(&rank(b.action))
            .then_with(|| a.service.cmp(&b.service))
    });
    ScalingReport {
        latency_target_ms: config.latency_target_ms,
        bucket_seconds: width_s,
        horizon_buckets: config.horizon,
        services,
    }
}

fn judge(
    service: &str,
    buckets: &[DependencyStats],
    width_s: f64,
    config: &ScalingConfig,
) -> Recommendation {
    let rates: Vec<f64> = buckets
        .iter()
        .map(|s| s.requests as f64 / width_s)
        .collect();
    let (intercept, slope) = series::linear_fit(&rates);
    let last = rates.len().saturating_sub(1) as f64;
    let current = (intercept + slope * last).max(0.0);
    let projected = (intercept + slope * (last + config.horizon as f64)).max(0.0);
    let mut recent = DependencyStats::default();
    for stats in buckets.iter().rev().take(RECENT_BUCKETS) {
        recent.merge(stats);
    }
    let p99 = recent.latency_summary().p99;
    let error_rate = if recent.requests == 0 {
        0.0
    } else {
        recent.errors as f64 / recent.requests as f64
    };
    let (latency_rates, p99s): (Vec<f64>, Vec<f64>) = buckets
        .iter()
        .zip(&rates)
        .filter(|(s, _)| s.latency_count > 0)
        .map(|(s, r)| (*r, s.latency_summary().p99))
        .unzip();
    let correlation = series::correlation(&latency_rates, &p99s);
    let growth = if current > 0.0 {
        projected / current
    } else if projected > 0.0 {
        f64::INFINITY
    } else {
        1.0
    };
    let target = config.latency_target_ms;
    let (action, factor, reason) = if buckets.len() < config.min_buckets {
        (
            Action::Hold,
            1.0,
            format!(
                "only {} buckets of traffic (needs {})",
                buckets.len(),
                config.min_buckets
            ),
        )
    } else if p99 > target {
        (
            Action::ScaleOut,
            bound((p99 / target).max(growth)),
            format!("p99 latency {p99:.1} ms is above the {target} ms target"),
        )
    } else if error_rate > 0.05 && correlation > 0.7 {
        (
            Action::ScaleOut,
            bound(1.5_f64.max(growth)),
            format!(
                "error rate {:.1} % with latency rising with load (correlation {correlation:.2})",
                error_rate * 100.0
            ),
        )
    } else if growth > 1.2 {
        (
            Action::ScaleOut,
            bound(growth),
            format!(
                "request rate rising: {current:.2}/s now, {projected:.2}/s projected in {} buckets",
                config.horizon
            ),
        )
    } else if current < config.idle_rps {
        (
            Action::ScaleIn,
            0.5,
            format!(
                "idle: {current:.3} requests/s (below {}/s)",
                config.idle_rps
            ),
        )
    } else if growth < 0.7 && p99 < target / 2.0 {
        (
            Action::ScaleIn,
            bound(growth),
            format!(
                "request rate falling: {current:.2}/s now, {projected:.2}/s projected, p99 {p99:.1} ms well under target"
            ),
        )
    } else {
        (
            Action::Hold,
            1.0,
            format!("steady: {current:.2}/s, p99 {p99:.1} ms within the {target} ms target"),
        )
    };
    Recommendation {
        service: service.to_owned(),
        action,
        factor,
        reason,
        current_rps: current,
        projected_rps: projected,
        trend_rps_per_bucket: slope,
        p99_latency_ms: p99,
        error_rate,
        rate_latency_correlation: correlation,
        buckets: buckets.len(),
    }
}
