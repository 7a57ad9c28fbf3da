//! `/metrics` is valid Prometheus text format 0.0.4 and has every family the controller
//! exposed before its metrics moved to a prometheus-client registry, with the same type and
//! label names.

#[path = "common/promtool.rs"]
mod promtool;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use weft_controller::AppState;
use weft_controller::api::http::app;
use weft_topology::model::{Direction, FlowObservation, LatencyBucket, Transport, Workload};

/// Family name, type and label names of every family before the registry (from the
/// hand-written exposition of d99f9d4, controller/src/metrics.rs).
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("weft_topology_unauthorized_dependencies", "gauge", &[]),
    (
        "weft_topology_dependency_announcements_dropped_total",
        "counter",
        &[],
    ),
    (
        "weft_control_drift_total",
        "counter",
        &["host", "kind", "outcome"],
    ),
    ("weft_controller_records_ingested_total", "counter", &[]),
    ("weft_controller_records_deduplicated_total", "counter", &[]),
    ("weft_controller_records_rejected_total", "counter", &[]),
    ("weft_controller_batches_total", "counter", &[]),
    ("weft_controller_batches_duplicate_total", "counter", &[]),
    ("weft_controller_heartbeats_total", "counter", &[]),
    (
        "weft_controller_requests_unauthenticated_total",
        "counter",
        &[],
    ),
    ("weft_controller_requests_forbidden_total", "counter", &[]),
    ("weft_controller_agent_dropped_records", "gauge", &[]),
    ("weft_controller_agents_connected", "gauge", &[]),
    ("weft_controller_topology_services", "gauge", &[]),
    ("weft_controller_topology_dependencies", "gauge", &[]),
    ("weft_controller_topology_named_addresses", "gauge", &[]),
    ("weft_controller_metrics_edges_omitted", "gauge", &[]),
    ("weft_controller_limit", "gauge", &["limit"]),
    ("weft_controller_limit_hits_total", "counter", &["limit"]),
    ("weft_controller_sse_subscribers", "gauge", &["stream"]),
    ("weft_controller_http_in_flight", "gauge", &["class"]),
    ("weft_controller_http_connections", "gauge", &[]),
    ("weft_weaves", "gauge", &["active"]),
    (
        "weft_controller_agent_last_contact_age_seconds",
        "gauge",
        &["host"],
    ),
    (
        "weft_controller_agent_dropped_records_by_host",
        "gauge",
        &["host"],
    ),
    ("weft_shard_pool_addresses", "gauge", &["pool"]),
    ("weft_shard_pool_carved_addresses", "gauge", &["pool"]),
    ("weft_shard_pool_allocated_addresses", "gauge", &["pool"]),
    ("weft_shard_allocations_total", "counter", &[]),
    ("weft_shard_releases_total", "counter", &[]),
    ("weft_shard_migrations", "gauge", &["state"]),
    (
        "weft_shard_migration_duration_seconds",
        "histogram",
        &["le"],
    ),
    (
        "weft_dependency_requests_total",
        "counter",
        &["protocol", "source", "target"],
    ),
    (
        "weft_dependency_flows_total",
        "counter",
        &["protocol", "source", "target"],
    ),
    (
        "weft_dependency_errors_total",
        "counter",
        &["protocol", "source", "target"],
    ),
    (
        "weft_dependency_bytes_total",
        "counter",
        &["direction", "protocol", "source", "target"],
    ),
    // Bucket samples carry `le`; `_sum` and `_count` do not.
    (
        "weft_dependency_request_duration_seconds",
        "histogram",
        &["le", "protocol", "source", "target"],
    ),
];

/// Families with no series in a controller without shards and migrations (checked with
/// them in metrics_shards.rs).
const WITHOUT_SERIES_HERE: &[&str] = &[
    "weft_shard_capacity_addresses",
    "weft_shard_free_addresses",
    "weft_shard_migration_moves",
    "weft_shard_migration_updated_timestamp_seconds",
];

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
                && [format!("{family_name}_sum"), format!("{family_name}_count")].contains(&name))
            || (family.kind == "histogram"
                && [
                    format!("{family_name}_bucket"),
                    format!("{family_name}_sum"),
                    format!("{family_name}_count"),
                ]
                .contains(&name));
        if !named || family.kind.is_empty() {
            return Err(at(&format!("sample outside its family {family_name}")));
        }
        value
            .parse::<f64>()
            .map_err(|_| at("value is not a number"))?;
        let mut names: Vec<String> = labels;
        names.sort();
        if name == family_name || name == format!("{family_name}_bucket") {
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

fn observation() -> FlowObservation {
    FlowObservation {
        workload: Some("web".into()),
        interface: "veth-web".into(),
        transport: Transport::Tcp,
        local_ip: "10.0.0.1".parse().expect("test address"),
        local_port: 41_000,
        remote_ip: "10.0.0.2".parse().expect("test address"),
        remote_port: 5432,
        direction: Direction::Outbound,
        packets_out: 5,
        packets_in: 4,
        bytes_out: 500,
        bytes_in: 700,
        payload_bytes_out: 200,
        payload_bytes_in: 400,
        first_seen_unix_ns: 1_700_000_000_000_000_000,
        last_seen_unix_ns: 1_700_000_001_000_000_000,
        tcp_flags_out: 0x12,
        tcp_flags_in: 0x12,
        handshake_rtt_ns: Some(100_000),
        requests: 2,
        latency_sum_ns: 3_000_000,
        latency: vec![LatencyBucket {
            upper_bound_ns: 2_000_000,
            count: 2,
        }],
        first_record: true,
        opened: true,
        ended: false,
        resets: 1,
        l7: Default::default(),
    }
}

#[tokio::test]
async fn metrics_parse_and_keep_every_family() {
    let state = AppState::default();
    let now = Instant::now();
    // A service name that needs escaping in a label value.
    let web = Workload {
        name: "web \"blue\"\\1".into(),
        interface: "veth-web".into(),
        addresses: vec!["10.0.0.1".parse().expect("test address")],
    };
    let db = Workload {
        name: "db".into(),
        interface: "veth-db".into(),
        addresses: vec!["10.0.0.2".parse().expect("test address")],
    };
    state.registry.register("host-a", "i-a", vec![web], now);
    state.registry.register("host-b", "i-b", vec![db], now);
    let mut flow = observation();
    flow.workload = Some("web \"blue\"\\1".into());
    state.topology.ingest(&flow, state.registry.as_ref());
    state.metrics.batch_merged();
    state.metrics.heartbeat();
    state.control.drift(vec![weft_control::DriftRepaired {
        host: "host-a".into(),
        resource: weft_control::ResourceKey::new(weft_control::kinds::WORKLOAD_ADDRESSES, "web"),
        what: "address removed".into(),
        detected_unix_ns: 1,
        repaired_unix_ns: 2,
        error: String::new(),
        kept: false,
    }]);

    let response = app(state)
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible router");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");

    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    promtool::promtool_check_metrics(&text);
    for (name, kind, labels) in FAMILIES {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        assert_eq!(family.kind, *kind, "{name}");
        assert!(family.help, "{name}: no HELP");
        assert!(family.samples > 0, "{name}: no sample in\n{text}");
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        assert_eq!(family.label_names, BTreeSet::from([labels]), "{name}");
    }
    for name in WITHOUT_SERIES_HERE {
        let family = families
            .get(*name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        assert!(family.help && family.samples == 0, "{name}");
    }
    assert_eq!(
        families.len(),
        FAMILIES.len() + WITHOUT_SERIES_HERE.len(),
        "families added or removed: {:?}",
        families.keys()
    );
    assert!(
        text.contains(r#"source="web \"blue\"\\1""#),
        "label value not escaped in\n{text}"
    );
    assert!(
        text.lines().any(|l| l == "weft_controller_batches_total 1"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            == "# HELP weft_controller_heartbeats_total Empty flow batches (heartbeats) received."),
        "{text}"
    );
}

#[tokio::test]
async fn per_dependency_series_are_capped_to_the_busiest_and_say_what_was_left_out() {
    let state = AppState::builder()
        .limits(weft_controller::limits::LimitConfig {
            metrics_max_edges: 2,
            ..Default::default()
        })
        .start(std::sync::Arc::new(weft_store::MemoryStore::default()))
        .expect("state");
    for server in 0..10u8 {
        let mut flow = observation();
        flow.remote_ip = format!("198.18.0.{server}").parse().expect("address");
        flow.requests = u64::from(server);
        state.topology.ingest(&flow, state.registry.as_ref());
    }
    let response = app(state)
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible router");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    promtool::promtool_check_metrics(&text);
    assert_eq!(
        families["weft_dependency_requests_total"].samples, 2,
        "{text}"
    );
    assert_eq!(
        families["weft_dependency_request_duration_seconds"].samples,
        2 * (15 + 2),
        "{text}"
    );
    assert!(
        text.contains("weft_controller_metrics_edges_omitted 8"),
        "{text}"
    );
    assert!(
        text.contains("Only the 2 busiest of 10 dependencies"),
        "the HELP says what was left out:\n{text}"
    );
    assert!(text.contains(r#"target="198.18.0.9:5432""#), "{text}");
    assert!(!text.contains(r#"target="198.18.0.1:5432""#), "{text}");
}
