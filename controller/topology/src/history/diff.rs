//! What changed between two topology snapshots.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::topology::{DependencyView, TopologySnapshot};

/// When a latency or error-rate change counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiffThresholds {
    /// Relative change of p99 or mean latency, e.g. 0.5 = 50 %.
    pub latency_ratio: f64,
    /// Absolute change of the error rate, e.g. 0.05 = 5 points.
    pub error_rate: f64,
}

impl Default for DiffThresholds {
    fn default() -> Self {
        Self {
            latency_ratio: 0.5,
            error_rate: 0.05,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeRef {
    pub source: String,
    pub target: String,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeChange {
    pub source: String,
    pub target: String,
    pub protocol: String,
    pub avg_latency_ms: (f64, f64),
    pub p99_latency_ms: (f64, f64),
    pub error_rate: (f64, f64),
    /// Which of `latency` and `errors` crossed its threshold.
    pub reasons: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologyDiff {
    pub from: String,
    pub to: String,
    pub appeared: Vec<EdgeRef>,
    pub vanished: Vec<EdgeRef>,
    pub changed: Vec<EdgeChange>,
}

fn by_edge(snapshot: &TopologySnapshot) -> BTreeMap<(String, String, String), &DependencyView> {
    snapshot
        .dependencies
        .iter()
        .map(|d| ((d.source.clone(), d.target.clone(), d.protocol.clone()), d))
        .collect()
}

fn relative_change(before: f64, after: f64) -> f64 {
    if before <= 0.0 {
        if after > 0.0 { f64::INFINITY } else { 0.0 }
    } else {
        (after - before).abs() / before
    }
}

pub fn diff(from: &TopologySnapshot, to: &TopologySnapshot, t: DiffThresholds) -> TopologyDiff {
    let before = by_edge(from);
    let after = by_edge(to);
    let edge = |(s, t, p): &(String, String, String)| EdgeRef {
        source: s.clone(),
        target: t.clone(),
        protocol: p.clone(),
    };
    let appeared = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .map(edge)
        .collect();
    let vanished = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .map(edge)
        .collect();
    let mut changed = Vec::new();
    for (key, a) in &before {
        let Some(b) = after.get(key) else { continue };
        let mut reasons = Vec::new();
        let measured = a.latency_ms.count > 0 && b.latency_ms.count > 0;
        if measured
            && (relative_change(a.latency_ms.p99, b.latency_ms.p99) > t.latency_ratio
                || relative_change(a.latency_ms.avg, b.latency_ms.avg) > t.latency_ratio)
        {
            reasons.push("latency");
        }
        if (a.error_rate() - b.error_rate()).abs() > t.error_rate {
            reasons.push("errors");
        }
        if !reasons.is_empty() {
            changed.push(EdgeChange {
                source: key.0.clone(),
                target: key.1.clone(),
                protocol: key.2.clone(),
                avg_latency_ms: (a.latency_ms.avg, b.latency_ms.avg),
                p99_latency_ms: (a.latency_ms.p99, b.latency_ms.p99),
                error_rate: (a.error_rate(), b.error_rate()),
                reasons,
            });
        }
    }
    TopologyDiff {
        from: from.generated_at.clone(),
        to: to.generated_at.clone(),
        appeared,
        vanished,
        changed,
    }
}
