//! The alerting rules shipped in deploy/prometheus: valid for Prometheus
//! (`promtool check rules`), firing when they should and not otherwise (`promtool test
//! rules` on weft-alerts.test.yml), and naming only metrics weft exposes.

mod common;
#[path = "common/promtool.rs"]
mod promtool;

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::http::{Method, StatusCode};
use common::{call, shard_state};
use weft_shards::ShardConfig;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

#[test]
fn rules_are_valid_and_their_unit_tests_pass() {
    let dir = rules_dir();
    if let Some(report) = promtool::promtool(&dir, &["check", "rules", "weft-alerts.yml"]) {
        assert!(report.contains("SUCCESS"), "{report}");
    }
    if let Some(report) = promtool::promtool(&dir, &["test", "rules", "weft-alerts.test.yml"]) {
        assert!(report.contains("SUCCESS"), "{report}");
    }
}

/// Metric names (`weft_...`) the rules use, in expressions and in the annotations that
/// point operators at other series (comments aside).
fn metric_names(rules: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("weft_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}

#[tokio::test]
async fn rules_name_only_exposed_metrics() {
    let rules = std::fs::read_to_string(rules_dir().join("weft-alerts.yml")).expect("rules");
    let names = metric_names(&rules);
    assert!(names.len() >= 10, "expressions read: {names:?}");
    // The controller's families (with a shard so that per-shard ones have series).
    let s = shard_state(ShardConfig::default());
    let (status, _, shard) = call(&s, Method::POST, "/shards", r#"{"network_id":"blue"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{shard}");
    let (_, _, text) = call(&s, Method::GET, "/metrics", "").await;
    let controller = text.as_str().expect("text").to_owned();
    // The agent's families are registered by name in its metrics module.
    let agent = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/src/metrics.rs"),
    )
    .expect("agent metrics source");
    for name in &names {
        let known = if name.starts_with("weft_agent_") {
            agent.contains(&format!("\"{name}\""))
        } else {
            controller.contains(&format!("# TYPE {name} "))
        };
        assert!(known, "the rules use {name}, which weft does not expose");
    }
}
