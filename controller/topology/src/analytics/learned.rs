//! Learned classification: a nearest-centroid classifier over per-service traffic
//! features, trained on the services whose type is known with strong evidence (a user
//! rule, a database/cache/queue protocol served, or a label from an examples file) and
//! applied to the services whose type is only a weak guess (name hint, shape, fallback).
//!
//! Features (each roughly within [0, 1]; see [`FEATURES`]): share of inbound requests over
//! HTTP-style protocols, fan-in, fan-out, HTTP fan-out (log-scaled), mean request and
//! response bytes (log-scaled) and their ratio, mean latency (log-scaled), error rate,
//! share of external peers, share of inbound requests on `/api` paths and on any path.
//! For a service without inbound HTTP the HTTP and path features are left out of its
//! distances (nothing could be seen there). The shares of database, cache and queue protocols are left out on purpose: a service
//! serving one of those is already classified by its protocol, so for the services the
//! model is applied to they are always 0, while for the training services they would
//! just repeat the label.
//!
//! Confidence is the margin `1 - d1 / d2` between the nearest centroid (distance d1)
//! and the second nearest (d2): 0 when two types are equally near, towards 1 when one is
//! much nearer. With a single trained type there is nothing to compare and confidence is
//! 0. The three nearest training services are reported as the explanation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::topology::classify::{Basis, ServiceFacts, ServiceType, is_external_host, is_http};
use crate::topology::{ServiceClassifier, TopologySnapshot};

/// Names of the feature vector's components, in order.
pub const FEATURES: [&str; N] = [
    "http_share",
    "fan_in",
    "fan_out",
    "http_fan_out",
    "request_bytes",
    "response_bytes",
    "response_request_ratio",
    "latency",
    "error_rate",
    "external_peer_share",
    "api_path_share",
    "path_share",
];

const N: usize = 12;

/// Below this confidence a learned type is reported as ambiguous.
pub const AMBIGUOUS_BELOW: f64 = 0.25;

/// A training label from an examples file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub service: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    #[serde(default, rename = "example")]
    pub examples: Vec<Example>,
}

impl Examples {
    /// Parses `[[example]] service = "x" type = "cache"` TOML; errors name the line (from
    /// the TOML parser) or the example and field.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let examples: Self =
            toml::from_str(text).map_err(|e| format!("classifier examples {origin}: {e}"))?;
        for (index, example) in examples.examples.iter().enumerate() {
            if example.service.trim().is_empty() {
                return Err(format!(
                    "classifier examples {origin}: example {}: field service: must not be empty",
                    index + 1
                ));
            }
        }
        Ok(examples)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading classifier examples {origin}: {e}"))?;
        Self::parse(&text, &origin)
    }

    fn get(&self, service: &str) -> Option<ServiceType> {
        self.examples
            .iter()
            .rev()
            .find(|e| e.service == service)
            .map(|e| e.service_type)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    pub service: String,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub distance: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub service: String,
    /// The type the rules give (the snapshot's type).
    pub rule_type: ServiceType,
    /// What decided `rule_type`.
    pub basis: Basis,
    /// Whether this service trains the model (strong evidence or an example label).
    pub training: bool,
    /// Label from the examples file, if any.
    pub example_type: Option<ServiceType>,
    /// The nearest centroid's type, for services with a weak guess.
    pub learned_type: Option<ServiceType>,
    pub confidence: Option<f64>,
    pub ambiguous: bool,
    /// The nearest training services.
    pub nearest: Vec<Neighbour>,
    pub features: BTreeMap<&'static str, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    /// Training services per type.
    pub trained_types: BTreeMap<ServiceType, usize>,
    pub features: Vec<&'static str>,
    pub services: Vec<Classification>,
}

/// Per-service traffic aggregates, read off the snapshot.
#[derive(Default)]
struct Acc {
    inbound_http: f64,
    inbound_requests: f64,
    request_bytes: f64,
    response_bytes: f64,
    latency_sum_ms: f64,
    latency_count: f64,
    errors: f64,
    callers: BTreeSet<String>,
    upstreams: BTreeSet<String>,
    http_upstreams: BTreeSet<String>,
    api_requests: f64,
    path_requests: f64,
    paths: BTreeSet<String>,
}

fn log_scaled(value: f64, full: f64) -> f64 {
    ((1.0 + value.max(0.0)).ln() / (1.0 + full).ln()).min(1.5)
}

/// The facts the rule classifier sees, rebuilt from a snapshot the same way the
/// snapshot builder builds them.
fn facts(snapshot: &TopologySnapshot, accs: &BTreeMap<String, Acc>) -> Vec<ServiceFacts> {
    snapshot
        .services
        .iter()
        .map(|s| {
            let acc = accs.get(&s.name);
            ServiceFacts {
                name: s.name.clone(),
                registered: s.host.is_some(),
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.port, e.protocol.clone()))
                    .collect(),
                clients: acc.map_or(0, |a| a.callers.len()),
                http_upstreams: acc.map_or(0, |a| a.http_upstreams.len()),
                upstreams: acc.map_or(0, |a| a.upstreams.len()),
                paths: acc.map_or_else(Vec::new, |a| a.paths.iter().cloned().collect()),
            }
        })
        .collect()
}

fn accumulate(snapshot: &TopologySnapshot) -> BTreeMap<String, Acc> {
    let mut accs: BTreeMap<String, Acc> = BTreeMap::new();
    for d in &snapshot.dependencies {
        let client = accs.entry(d.source.clone()).or_default();
        client.upstreams.insert(d.target.clone());
        if is_http(&d.protocol) {
            client.http_upstreams.insert(d.target.clone());
        }
        let server = accs.entry(d.target.clone()).or_default();
        let requests = d.requests as f64;
        server.callers.insert(d.source.clone());
        if is_http(&d.protocol) {
            server.inbound_http += requests;
        }
        server.inbound_requests += requests;
        server.request_bytes += d.bytes_sent as f64;
        server.response_bytes += d.bytes_received as f64;
        server.latency_sum_ms += d.latency_ms.avg * d.latency_ms.count as f64;
        server.latency_count += d.latency_ms.count as f64;
        server.errors += d.errors as f64;
        for g in &d.request_groups {
            if g.path.is_empty() {
                continue;
            }
            server.paths.insert(g.path.clone());
            server.path_requests += g.count as f64;
            if g.path == "/api" || g.path.starts_with("/api/") {
                server.api_requests += g.count as f64;
            }
        }
    }
    accs
}

fn feature_vector(acc: &Acc) -> [f64; N] {
    let per = |x: f64, n: f64| if n > 0.0 { x / n } else { 0.0 };
    let requests = acc.inbound_requests;
    let mut v = [0.0; N];
    v[0] = per(acc.inbound_http, requests);
    v[1] = log_scaled(acc.callers.len() as f64, 100.0);
    v[2] = log_scaled(acc.upstreams.len() as f64, 100.0);
    v[3] = log_scaled(acc.http_upstreams.len() as f64, 100.0);
    let request_bytes = per(acc.request_bytes, requests);
    let response_bytes = per(acc.response_bytes, requests);
    v[4] = log_scaled(request_bytes, 1e6);
    v[5] = log_scaled(response_bytes, 1e6);
    v[6] = (((response_bytes + 1.0) / (request_bytes + 1.0)).ln() / 1000_f64.ln()).clamp(-1.0, 1.0);
    v[7] = log_scaled(per(acc.latency_sum_ms, acc.latency_count), 10_000.0);
    v[8] = per(acc.errors, requests);
    let peers: BTreeSet<&String> = acc.callers.iter().chain(&acc.upstreams).collect();
    let external = peers.iter().filter(|p| is_external_host(p)).count();
    v[9] = per(external as f64, peers.len() as f64);
    v[10] = per(acc.api_requests, requests);
    v[11] = per(acc.path_requests, requests);
    v
}

/// Features a service without HTTP traffic cannot show: HTTP share and path shares.
const HTTP_ONLY: [usize; 3] = [0, 10, 11];

/// Euclidean distance from `query` over the features it can show: without inbound HTTP
/// (no L7 requests seen) the HTTP and path features are missing data, not zeros.
fn distance(query: &[f64; N], other: &[f64; N]) -> f64 {
    let http = query[0] > 0.0;
    query
        .iter()
        .zip(other)
        .enumerate()
        .filter(|(i, _)| http || !HTTP_ONLY.contains(i))
        .map(|(_, (x, y))| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Classifies every service of `snapshot` that serves something: rule type and basis,
/// and for weak guesses the learned type with its confidence and nearest examples.
pub fn classify(
    snapshot: &TopologySnapshot,
    rules: &ServiceClassifier,
    examples: &Examples,
) -> ClassificationReport {
    let accs = accumulate(snapshot);
    let empty = Acc::default();
    struct Row {
        facts: ServiceFacts,
        rule_type: ServiceType,
        basis: Basis,
        example: Option<ServiceType>,
        label: Option<ServiceType>,
        features: [f64; N],
    }
    let rows: Vec<Row> = facts(snapshot, &accs)
        .into_iter()
        .filter(|f| accs.get(&f.name).is_some_and(|a| a.inbound_requests > 0.0))
        .map(|f| {
            let (rule_type, basis) = rules.classify_explained(&f);
            let example = examples.get(&f.name);
            let label = example.or_else(|| basis.is_strong().then_some(rule_type));
            let features = feature_vector(accs.get(&f.name).unwrap_or(&empty));
            Row {
                facts: f,
                rule_type,
                basis,
                example,
                label,
                features,
            }
        })
        .collect();

    let mut sums: BTreeMap<ServiceType, ([f64; N], usize)> = BTreeMap::new();
    for row in &rows {
        if let Some(label) = row.label {
            let (sum, n) = sums.entry(label).or_insert(([0.0; N], 0));
            for (s, x) in sum.iter_mut().zip(&row.features) {
                *s += x;
            }
            *n += 1;
        }
    }
    let centroids: Vec<(ServiceType, [f64; N])> = sums
        .iter()
        .map(|(kind, (sum, n))| (*kind, sum.map(|s| s / *n as f64)))
        .collect();

    let services = rows
        .iter()
        .map(|row| {
            let training = row.label.is_some();
            let mut out = Classification {
                service: row.facts.name.clone(),
                rule_type: row.rule_type,
                basis: row.basis,
                training,
                example_type: row.example,
                learned_type: None,
                confidence: None,
                ambiguous: false,
                nearest: Vec::new(),
                features: FEATURES.iter().copied().zip(row.features).collect(),
            };
            if training || centroids.is_empty() {
                return out;
            }
            let mut by_centroid: Vec<(f64, ServiceType)> = centroids
                .iter()
                .map(|(kind, c)| (distance(&row.features, c), *kind))
                .collect();
            by_centroid.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let confidence = match by_centroid.get(1) {
                Some((d2, _)) if *d2 > 0.0 => 1.0 - by_centroid[0].0 / d2,
                Some(_) => 0.0,
                None => 0.0,
            };
            let mut nearest: Vec<Neighbour> = rows
                .iter()
                .filter_map(|other| {
                    Some(Neighbour {
                        service: other.facts.name.clone(),
                        service_type: other.label?,
                        distance: distance(&row.features, &other.features),
                    })
                })
                .collect();
            nearest.sort_by(|a, b| a.distance.total_cmp(&b.distance));
            nearest.truncate(3);
            out.learned_type = Some(by_centroid[0].1);
            out.confidence = Some(confidence);
            out.ambiguous = confidence < AMBIGUOUS_BELOW;
            out.nearest = nearest;
            out
        })
        .collect();
    ClassificationReport {
        trained_types: sums.iter().map(|(k, (_, n))| (*k, *n)).collect(),
        features: FEATURES.to_vec(),
        services,
    }
}
