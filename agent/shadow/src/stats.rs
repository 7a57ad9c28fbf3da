//! Per-endpoint statistics of a shadow: requests and errors on both sides, latency
//! histograms (µs) and the Diffy comparison. Bounded: at most `max_endpoints` endpoints,
//! the rest counted under [`OTHER`].

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};

use crate::Response;
use crate::compare::{Diffy, Outcome};

/// Endpoint of requests beyond the endpoint limit.
pub const OTHER: &str = "(other)";
/// Highest latency recorded, µs (larger values are recorded as this).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// One endpoint's counts.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub production_requests: u64,
    pub production_errors: u64,
    pub shadow_requests: u64,
    pub shadow_errors: u64,
    pub production_latency: Histogram<u64>,
    pub shadow_latency: Histogram<u64>,
    /// The noise baseline (the second target), measured as the shadow is.
    pub baseline_requests: u64,
    pub baseline_errors: u64,
    pub baseline_latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, sigfig <= 5): cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            production_requests: 0,
            production_errors: 0,
            shadow_requests: 0,
            shadow_errors: 0,
            production_latency: histogram(),
            shadow_latency: histogram(),
            baseline_requests: 0,
            baseline_errors: 0,
            baseline_latency: histogram(),
        }
    }
}

/// What a sink reports for one endpoint (the wire's `ShadowEndpointStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointReport {
    pub endpoint: String,
    pub production_requests: u64,
    pub production_errors: u64,
    pub shadow_requests: u64,
    pub shadow_errors: u64,
    /// hdrhistogram V2 serialization, µs; empty when nothing was recorded.
    pub production_latency: Vec<u8>,
    pub shadow_latency: Vec<u8>,
    pub compared: u64,
    pub differing: u64,
    pub differing_fields: BTreeMap<String, u64>,
    pub baseline_requests: u64,
    pub baseline_errors: u64,
    pub baseline_latency: Vec<u8>,
}

/// A shadow's statistics.
#[derive(Debug, Clone)]
pub struct Stats {
    pub max_endpoints: usize,
    endpoints: BTreeMap<String, EndpointStats>,
    pub diffy: Diffy,
    /// Grows at every change (a report is due when it moved).
    pub version: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            max_endpoints: 256,
            endpoints: BTreeMap::new(),
            diffy: Diffy::default(),
            version: 0,
        }
    }
}

fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

fn serialize(h: &Histogram<u64>) -> Vec<u8> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    match V2Serializer::new().serialize(h, &mut out) {
        Ok(_) => out,
        Err(_) => Vec::new(),
    }
}

impl Stats {
    /// The name `endpoint` is counted under (itself, or [`OTHER`] past the limit).
    pub fn endpoint_name(&self, endpoint: &str) -> String {
        if self.endpoints.contains_key(endpoint) || self.endpoints.len() < self.max_endpoints {
            endpoint.to_owned()
        } else {
            OTHER.to_owned()
        }
    }

    fn entry(&mut self, endpoint: &str) -> &mut EndpointStats {
        let name = self.endpoint_name(endpoint);
        self.version += 1;
        self.endpoints.entry(name).or_default()
    }

    /// Production answered a request of `endpoint`.
    pub fn production(&mut self, endpoint: &str, error: bool, latency_us: Option<u64>) {
        let e = self.entry(endpoint);
        e.production_requests += 1;
        e.production_errors += u64::from(error);
        if let Some(us) = latency_us {
            record(&mut e.production_latency, us);
        }
    }

    /// The shadow answered a replayed request of `endpoint`.
    pub fn shadow(&mut self, endpoint: &str, error: bool, latency_us: Option<u64>) {
        let e = self.entry(endpoint);
        e.shadow_requests += 1;
        e.shadow_errors += u64::from(error);
        if let Some(us) = latency_us {
            record(&mut e.shadow_latency, us);
        }
    }

    /// The noise baseline answered a replayed request of `endpoint`.
    pub fn baseline(&mut self, endpoint: &str, error: bool, latency_us: Option<u64>) {
        let e = self.entry(endpoint);
        e.baseline_requests += 1;
        e.baseline_errors += u64::from(error);
        if let Some(us) = latency_us {
            record(&mut e.baseline_latency, us);
        }
    }

    /// Compares the answers to one request (Diffy).
    pub fn compare(
        &mut self,
        endpoint: &str,
        production: &Response,
        shadow: &Response,
        baseline: Option<&Response>,
    ) -> Outcome {
        let name = self.endpoint_name(endpoint);
        self.version += 1;
        self.endpoints.entry(name.clone()).or_default();
        self.diffy.compare(&name, production, shadow, baseline)
    }

    pub fn endpoint(&self, endpoint: &str) -> Option<&EndpointStats> {
        self.endpoints.get(endpoint)
    }

    /// Every endpoint's report, by name.
    pub fn report(&self) -> Vec<EndpointReport> {
        self.endpoints
            .iter()
            .map(|(name, e)| {
                let d = self.diffy.endpoint(name);
                EndpointReport {
                    endpoint: name.clone(),
                    production_requests: e.production_requests,
                    production_errors: e.production_errors,
                    shadow_requests: e.shadow_requests,
                    shadow_errors: e.shadow_errors,
                    production_latency: serialize(&e.production_latency),
                    shadow_latency: serialize(&e.shadow_latency),
                    compared: d.map_or(0, |d| d.compared),
                    differing: d.map_or(0, |d| d.differing),
                    differing_fields: d.map(|d| d.differing_fields()).unwrap_or_default(),
                    baseline_requests: e.baseline_requests,
                    baseline_errors: e.baseline_errors,
                    baseline_latency: serialize(&e.baseline_latency),
                }
            })
            .collect()
    }
}
