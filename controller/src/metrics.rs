//! Controller counters and the Prometheus text exposition (format 0.0.4) of them and of
//! the per-dependency traffic.
//!
//! The [`Metrics`] value is created at start and passed down through [`AppState`]; nothing
//! reaches it through a global.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use weft_topology::topology::DependencyStats;

use crate::state::AppState;

/// Reads one counter of a dependency.
type StatFn = fn(&DependencyStats) -> u64;

/// Counters of the ingest path. Records merged into the topology are counted by the
/// topology itself.
#[derive(Debug, Default)]
pub struct Metrics {
    batches: AtomicU64,
    batches_duplicate: AtomicU64,
    heartbeats: AtomicU64,
    records_rejected: AtomicU64,
}

impl Metrics {
    pub fn batch_merged(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn batch_duplicate(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batches_duplicate.fetch_add(1, Ordering::Relaxed);
    }

    pub fn heartbeat(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_rejected(&self) {
        self.records_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn batches_total(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub fn batches_duplicate_total(&self) -> u64 {
        self.batches_duplicate.load(Ordering::Relaxed)
    }

    pub fn heartbeats_total(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    pub fn records_rejected_total(&self) -> u64 {
        self.records_rejected.load(Ordering::Relaxed)
    }
}

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Renders every metric of the controller.
pub fn render(state: &AppState) -> String {
    let metrics = &state.metrics;
    let mut out = String::new();
    single(
        &mut out,
        "weft_topology_unauthorized_dependencies",
        "gauge",
        "Observed dependencies the allow-list does not allow (0 without an allow-list).",
        state.history.unauthorized_dependencies(),
    );
    single(
        &mut out,
        "weft_controller_records_ingested_total",
        "counter",
        "Flow records accepted from agents and merged into the topology.",
        state.topology.records_ingested(),
    );
    single(
        &mut out,
        "weft_controller_records_deduplicated_total",
        "counter",
        "Server-side flow records skipped because the client side reports the same connection.",
        state.topology.records_deduplicated(),
    );
    single(
        &mut out,
        "weft_controller_records_rejected_total",
        "counter",
        "Flow records skipped because they failed validation.",
        metrics.records_rejected_total(),
    );
    single(
        &mut out,
        "weft_controller_batches_total",
        "counter",
        "Non-empty flow batches received, duplicates included.",
        metrics.batches_total(),
    );
    single(
        &mut out,
        "weft_controller_batches_duplicate_total",
        "counter",
        "Flow batches ignored because their sequence was already merged.",
        metrics.batches_duplicate_total(),
    );
    single(
        &mut out,
        "weft_controller_heartbeats_total",
        "counter",
        "Empty flow batches (heartbeats) received.",
        metrics.heartbeats_total(),
    );
    single(
        &mut out,
        "weft_controller_agent_dropped_records",
        "gauge",
        "Records the connected agents report having dropped since they started, summed.",
        state.registry.dropped_records_total(),
    );
    single(
        &mut out,
        "weft_controller_agents_connected",
        "gauge",
        "Agents heard from in the last 15 seconds.",
        state.agents_connected(),
    );

    let edges = state.topology.stats_by_edge();
    let labels: Vec<(String, &_)> = edges
        .iter()
        .map(|((source, target, protocol), stats)| {
            let labels = format!(
                r#"source="{}",target="{}",protocol="{}""#,
                escape_label(source),
                escape_label(target),
                escape_label(protocol)
            );
            (labels, stats)
        })
        .collect();

    let counters: [(&str, &str, StatFn); 3] = [
        (
            "weft_dependency_requests_total",
            "Requests between two services.",
            |s| s.requests,
        ),
        (
            "weft_dependency_flows_total",
            "Flows (connections) opened between two services.",
            |s| s.flows,
        ),
        (
            "weft_dependency_errors_total",
            "Errors (TCP resets) between two services.",
            |s| s.errors,
        ),
    ];
    for (name, help, value) in counters {
        header(&mut out, name, "counter", help);
        for (labels, stats) in &labels {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(stats));
        }
    }

    let name = "weft_dependency_bytes_total";
    header(
        &mut out,
        name,
        "counter",
        "Layer-3 bytes between two services; direction is from the client's point of view.",
    );
    for (labels, stats) in &labels {
        let _ = writeln!(
            out,
            r#"{name}{{{labels},direction="sent"}} {}"#,
            stats.bytes_sent
        );
        let _ = writeln!(
            out,
            r#"{name}{{{labels},direction="received"}} {}"#,
            stats.bytes_received
        );
    }

    let name = "weft_dependency_request_duration_seconds";
    header(
        &mut out,
        name,
        "summary",
        "Request latency between two services.",
    );
    for (labels, stats) in &labels {
        let summary = stats.latency_summary();
        for (quantile, value_ms) in [
            ("0.5", summary.p50),
            ("0.95", summary.p95),
            ("0.99", summary.p99),
        ] {
            let _ = writeln!(
                out,
                r#"{name}{{{labels},quantile="{quantile}"}} {}"#,
                value_ms / 1_000.0
            );
        }
        let sum_seconds = stats.latency_sum_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum_seconds}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", stats.latency_count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn empty_controller_exposes_its_counters_at_zero() {
        let state = AppState::default();
        let text = render(&state);
        for line in [
            "weft_controller_records_ingested_total 0",
            "weft_controller_records_rejected_total 0",
            "weft_controller_batches_total 0",
            "weft_controller_batches_duplicate_total 0",
            "weft_controller_agents_connected 0",
            "# TYPE weft_dependency_request_duration_seconds summary",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
