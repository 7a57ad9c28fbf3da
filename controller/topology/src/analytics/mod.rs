//! Pure functions over a [`TopologySnapshot`] (which may cover a time window): dependencies
//! by direction, critical services, bottlenecks and traffic patterns.

pub mod anomaly;
pub mod critical;
pub mod learned;
pub mod patterns;
pub mod scaling;
pub mod series;

use serde::{Deserialize, Serialize};

use crate::topology::{DependencyView, LatencySummary, TopologySnapshot};

pub use critical::{CriticalService, articulation_impact, critical_by_degree, critical_services};
pub use patterns::{TrafficPatterns, analyze_traffic_patterns};

/// Which dependencies of a service: those it calls, those calling it, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    Inbound,
    Outbound,
    #[default]
    Both,
}

impl std::str::FromStr for TrafficDirection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "inbound" | "in" => Ok(Self::Inbound),
            "outbound" | "out" => Ok(Self::Outbound),
            "both" => Ok(Self::Both),
            _ => Err(format!(
                "`{text}` is not a direction (inbound, outbound or both)"
            )),
        }
    }
}

/// The dependencies of `service` in `direction`, in snapshot order.
pub fn dependencies_of<'a>(
    snapshot: &'a TopologySnapshot,
    service: &str,
    direction: TrafficDirection,
) -> Vec<&'a DependencyView> {
    snapshot
        .dependencies
        .iter()
        .filter(|d| match direction {
            TrafficDirection::Outbound => d.source == service,
            TrafficDirection::Inbound => d.target == service,
            TrafficDirection::Both => d.source == service || d.target == service,
        })
        .collect()
}

/// The latency statistic a bottleneck threshold applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyStat {
    #[default]
    Avg,
    P50,
    P95,
    P99,
}

impl LatencyStat {
    pub fn of(self, summary: &LatencySummary) -> f64 {
        match self {
            Self::Avg => summary.avg,
            Self::P50 => summary.p50,
            Self::P95 => summary.p95,
            Self::P99 => summary.p99,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avg => "avg",
            Self::P50 => "p50",
            Self::P95 => "p95",
            Self::P99 => "p99",
        }
    }
}

impl std::str::FromStr for LatencyStat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "avg" | "mean" => Ok(Self::Avg),
            "p50" | "median" => Ok(Self::P50),
            "p95" => Ok(Self::P95),
            "p99" => Ok(Self::P99),
            _ => Err(format!(
                "`{text}` is not a statistic (avg, p50, p95 or p99)"
            )),
        }
    }
}

/// Dependencies whose `stat` latency is above `threshold_ms` (and that measured any),
/// slowest first.
pub fn bottlenecks(
    snapshot: &TopologySnapshot,
    threshold_ms: f64,
    stat: LatencyStat,
) -> Vec<&DependencyView> {
    let mut slow: Vec<&DependencyView> = snapshot
        .dependencies
        .iter()
        .filter(|d| d.latency_ms.count > 0 && stat.of(&d.latency_ms) > threshold_ms)
        .collect();
    slow.sort_by(|a, b| {
        stat.of(&b.latency_ms)
            .total_cmp(&stat.of(&a.latency_ms))
            .then_with(|| (&a.source, &a.target).cmp(&(&b.source, &b.target)))
    });
    slow
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_learned;
