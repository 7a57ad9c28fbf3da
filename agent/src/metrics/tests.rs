use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use super::*;
use crate::control::ControlMetrics;
use crate::hostevents::{self, HostEvents, StatsCollector};

#[test]
fn renders_counters_with_types() {
    let mut registry = Registry::default();
    let m = Metrics::new(&mut registry);
    m.records_dropped.inc_by(7);
    let text = render(&registry).unwrap();
    assert!(text.contains(
        "# TYPE weft_agent_records_dropped_total counter\nweft_agent_records_dropped_total 7\n"
    ));
    assert!(text.contains("weft_agent_flow_map_entries 0"));
}

/// Family name and type of every family `/metrics` had before the registry (the
/// hand-written `Metrics::render`, `ControlMetrics::render` and `hostevents::Stats::render`
/// of d99f9d4). None has labels.
const FAMILIES: &[(&str, &str)] = &[
    ("weft_agent_records_sent_total", "counter"),
    ("weft_agent_records_dropped_total", "counter"),
    ("weft_agent_records_queued", "gauge"),
    ("weft_agent_batches_sent_total", "counter"),
    ("weft_agent_send_errors_total", "counter"),
    ("weft_agent_controller_reconnects_total", "counter"),
    ("weft_agent_controller_connected", "gauge"),
    ("weft_agent_flow_map_entries", "gauge"),
    ("weft_agent_flow_map_capacity", "gauge"),
    ("weft_agent_flow_end_events_total", "counter"),
    ("weft_agent_flows_evicted_unreported_total", "counter"),
    ("weft_agent_flow_baseline_write_errors_total", "counter"),
    ("weft_agent_drains_total", "counter"),
    ("weft_agent_drain_duration_seconds", "gauge"),
    ("weft_agent_interfaces_attached", "gauge"),
    ("weft_agent_attach_errors_total", "counter"),
    ("weft_agent_payload_samples_total", "counter"),
    ("weft_agent_batch_splits_total", "counter"),
    ("weft_agent_records_too_large_total", "counter"),
    ("weft_agent_payload_samples_lost_total", "counter"),
    ("weft_agent_stream_chunks_total", "counter"),
    ("weft_agent_stream_chunks_lost_total", "counter"),
    ("weft_agent_streams_followed", "gauge"),
    ("weft_agent_streams_partial_total", "counter"),
    ("weft_agent_stream_holes_total", "counter"),
    ("weft_agent_desired_generation", "gauge"),
    ("weft_agent_applied_generation", "gauge"),
    ("weft_agent_readdress_total", "counter"),
    ("weft_agent_apply_errors_total", "counter"),
    ("weft_agent_control_connected", "gauge"),
    ("weft_agent_netns_connections", "gauge"),
    ("weft_agent_unsupported_resources", "gauge"),
    ("weft_agent_managed_objects", "gauge"),
    ("weft_agent_drift_detected_total", "counter"),
    ("weft_agent_drift_repaired_total", "counter"),
    ("weft_agent_drift_repair_failed_total", "counter"),
    // Was written twice, by the control driver and by the listener (two families of one
    // name, which a strict parser refuses): the listener keeps it.
    ("weft_agent_host_events_total", "counter"),
    ("weft_agent_host_event_resyncs_total", "counter"),
    ("weft_agent_host_event_overruns_total", "counter"),
    ("weft_agent_host_events_lagged_total", "counter"),
    ("weft_agent_host_events_undecodable_total", "counter"),
    ("weft_agent_host_events_namespaces", "gauge"),
];

/// Added since: the control driver's count of host events (renamed by the registry), and
/// the ring-buffer items that did not decode.
const ADDED: &[(&str, &str)] = &[
    ("weft_agent_control_host_events_total", "counter"),
    ("weft_agent_ring_items_invalid_total", "counter"),
    ("weft_agent_latency_unsampled_requests_total", "counter"),
    ("weft_agent_batches_retained", "gauge"),
    ("weft_agent_batches_resent_total", "counter"),
    ("weft_agent_batches_lost_total", "counter"),
    ("weft_agent_records_unretained_total", "counter"),
];

#[tokio::test]
async fn metrics_endpoint_parses_and_keeps_every_family() {
    // Built as `main` builds it.
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let control = ControlMetrics::new(&mut registry);
    let events = HostEvents::start(hostevents::Config::default()).expect("a netlink listener");
    registry.register_collector(Box::new(StatsCollector(events)));
    metrics.drain_seconds_last.set(0.0125);
    control.desired_generation.set(1 << 40);

    let response = app(Arc::new(registry))
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();

    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in FAMILIES.iter().chain(ADDED) {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        assert_eq!(family.kind, *kind, "{name}");
        assert!(family.help, "{name}: no HELP");
        assert_eq!(family.samples, 1, "{name}");
        assert_eq!(
            family.label_names,
            BTreeSet::from([Vec::<String>::new()]),
            "{name}"
        );
    }
    assert_eq!(
        families.len(),
        FAMILIES.len() + ADDED.len(),
        "families added or removed: {:?}",
        families.keys()
    );
    assert!(
        text.lines()
            .any(|l| l == "weft_agent_drain_duration_seconds 0.0125"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "weft_agent_desired_generation 1099511627776"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l == "# HELP weft_agent_records_queued Flow records waiting to be sent."),
        "{text}"
    );
}

/// One family as parsed: its type and the label names of each of its samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: bool,
    label_names: BTreeSet<Vec<String>>,
    samples: usize,
}

/// Parses `text` as format 0.0.4, strictly: each family has `# HELP` then `# TYPE` once,
/// before its samples; a sample is named as its family (a summary's also `_sum` and
/// `_count`); label values are quoted with `\\`, `\"` and `\n` escapes; values are numbers;
/// no OpenMetrics `# EOF`.
fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if line == "# EOF" {
            return Err(at("OpenMetrics EOF in a 0.0.4 exposition"));
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text"))?;
            if families.contains_key(name) {
                return Err(at("family declared twice"));
            }
            families.insert(
                name.to_owned(),
                Family {
                    help: true,
                    ..Family::default()
                },
            );
            current = Some(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type"))?;
            if current.as_deref() != Some(name) {
                return Err(at("TYPE not right after its HELP"));
            }
            let family = families
                .get_mut(name)
                .ok_or_else(|| at("TYPE of no family"))?;
            if !family.kind.is_empty() {
                return Err(at("second TYPE"));
            }
            if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind) {
                return Err(at("not a 0.0.4 type"));
            }
            family.kind = kind.to_owned();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("unexpected line"));
        }
        let (name, labels, value) = sample(line).map_err(|e| at(&e))?;
        let family_name = current
            .clone()
            .ok_or_else(|| at("sample before any family"))?;
        let family = families
            .get_mut(&family_name)
            .ok_or_else(|| at("no family"))?;
        let named = name == family_name
            || (family.kind == "summary"
                && [format!("{family_name}_sum"), format!("{family_name}_count")].contains(&name));
        if !named || family.kind.is_empty() {
            return Err(at(&format!("sample outside its family {family_name}")));
        }
        value
            .parse::<f64>()
            .map_err(|_| at("value is not a number"))?;
        let mut names: Vec<String> = labels;
        names.sort();
        if name == family_name {
            family.label_names.insert(names);
        }
        family.samples += 1;
    }
    Ok(families)
}

/// (name, label names, value) of a sample line.
fn sample(line: &str) -> Result<(String, Vec<String>, String), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            let mut key_end = start;
            for (i, c) in chars.by_ref() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                if !(c.is_ascii_alphanumeric() || c == '_') {
                    return Err("bad label name".into());
                }
            }
            labels.push(inner[start..key_end].to_owned());
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' | '"' | 'n' => {}
                        _ => return Err("bad escape".into()),
                    },
                    '"' => break,
                    '\n' => return Err("raw newline in a label value".into()),
                    _ => {}
                }
            }
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => continue,
                (i, '}') => {
                    rest = &inner[i + 1..];
                    break;
                }
                _ => return Err("expected , or }".into()),
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    if value.is_empty() || value.contains(' ') {
        return Err("bad value".into());
    }
    Ok((name.to_owned(), labels, value.to_owned()))
}
