//! Per-service time series read from the dependencies' time buckets: what a service
//! served (its inbound dependencies) and what it asked of others (outbound), bucket by
//! bucket, for charts of requests, errors and latency over time.

use serde::Serialize;

use super::Topology;
use super::histogram::HistogramSum;
use super::stats::{DependencyStats, Latencies, LatencySummary};

/// The most buckets one series may span.
pub const MAX_BUCKETS: usize = 1_440;

/// One direction of one bucket: the dependencies' statistics added up.
#[derive(Debug, Clone, Default)]
struct Sum {
    requests: u64,
    errors: u64,
    bytes: u64,
    flows: u64,
    latency_count: u64,
    latency_sum_ns: u64,
    latencies: HistogramSum,
}

impl Sum {
    fn add(&mut self, stats: &DependencyStats) {
        self.requests = self.requests.saturating_add(stats.requests);
        self.errors = self.errors.saturating_add(stats.errors);
        self.flows = self.flows.saturating_add(stats.flows);
        self.bytes = self
            .bytes
            .saturating_add(stats.bytes_sent.saturating_add(stats.bytes_received));
        self.latency_count = self.latency_count.saturating_add(stats.latency_count);
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(stats.latency_sum_ns);
        self.latencies.add(stats.latency_us.histogram());
    }

    fn finish(self) -> Traffic {
        let latencies = Latencies::from_histogram(self.latencies.finish());
        Traffic {
            requests: self.requests,
            errors: self.errors,
            error_rate: if self.requests == 0 {
                0.0
            } else {
                self.errors as f64 / self.requests as f64
            },
            flows: self.flows,
            bytes: self.bytes,
            latency_ms: LatencySummary::new(self.latency_count, self.latency_sum_ns, &latencies),
        }
    }
}

/// A service's traffic in one direction within one bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Traffic {
    pub requests: u64,
    pub errors: u64,
    /// Errors per request (0 without requests).
    pub error_rate: f64,
    pub flows: u64,
    /// Both directions of the connections, headers included.
    pub bytes: u64,
    pub latency_ms: LatencySummary,
}

/// One bucket of a service's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePoint {
    /// Start of the bucket, Unix ns.
    pub start_unix_ns: u64,
    /// Requests the service served: its dependencies as the server.
    pub inbound: Traffic,
    /// Requests the service made: its dependencies as the client.
    pub outbound: Traffic,
}

/// Every bucket from `first_start` to `last_start` (both bucket starts), empty ones
/// included.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSeries {
    pub width_ns: u64,
    pub points: Vec<ServicePoint>,
}

/// Why a series cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SeriesError {
    #[error("the window spans {buckets} buckets of {width_seconds} s; at most {MAX_BUCKETS}")]
    TooManyBuckets { buckets: u64, width_seconds: f64 },
    #[error("the window ends before it starts")]
    Backwards,
}

impl Topology {
    /// Whether `name` is a service the topology knows.
    pub fn has_service(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// The series of `service` over the buckets holding `since_unix_ns` through
    /// `until_unix_ns`. A dependency of the service with itself counts both ways.
    pub fn service_series(
        &self,
        service: &str,
        since_unix_ns: u64,
        until_unix_ns: u64,
    ) -> Result<ServiceSeries, SeriesError> {
        if until_unix_ns < since_unix_ns {
            return Err(SeriesError::Backwards);
        }
        let width_ns = u64::try_from(self.buckets.width.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let first = since_unix_ns - since_unix_ns % width_ns;
        let last = until_unix_ns - until_unix_ns % width_ns;
        let count = (last - first) / width_ns + 1;
        if count > MAX_BUCKETS as u64 {
            return Err(SeriesError::TooManyBuckets {
                buckets: count,
                width_seconds: width_ns as f64 / 1e9,
            });
        }
        let count = count as usize;
        let mut inbound = vec![Sum::default(); count];
        let mut outbound = vec![Sum::default(); count];
        for entry in &self.dependencies {
            let key = entry.key();
            let (is_server, is_client) = (key.server == service, key.client == service);
            if !is_server && !is_client {
                continue;
            }
            for (start, stats) in entry.value().buckets_between(first, last) {
                let index = ((start - first) / width_ns) as usize;
                if is_server {
                    inbound[index].add(stats);
                }
                if is_client {
                    outbound[index].add(stats);
                }
            }
        }
        let points = inbound
            .into_iter()
            .zip(outbound)
            .enumerate()
            .map(|(i, (inbound, outbound))| ServicePoint {
                start_unix_ns: first + i as u64 * width_ns,
                inbound: inbound.finish(),
                outbound: outbound.finish(),
            })
            .collect();
        Ok(ServiceSeries { width_ns, points })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Directory, observation};
    use super::*;
    use crate::model::{Direction, LatencyBucket};

    const S: u64 = 1_000_000_000;
    /// A minute boundary.
    const T0: u64 = 1_700_000_040 * S;

    fn web_to_db(at: u64, requests: u64, resets: u32, latency_ns: u64) -> FlowObservation {
        let mut o = observation(
            "web",
            Direction::Outbound,
            ("10.0.0.1", 40_000),
            ("10.0.0.2", 5432),
        );
        o.first_seen_unix_ns = at - S;
        o.last_seen_unix_ns = at;
        o.requests = requests;
        o.resets = resets;
        o.bytes_out = 100;
        o.bytes_in = 300;
        o.latency_sum_ns = latency_ns * requests;
        o.latency = vec![LatencyBucket {
            upper_bound_ns: latency_ns,
            count: requests,
        }];
        o
    }

    use crate::model::FlowObservation;

    fn topology() -> Topology {
        let topology = Topology::with_config(
            super::super::BucketConfig::default(),
            super::super::TopologyLimits::unbounded(),
        );
        let directory = Directory::lab();
        for o in [
            web_to_db(T0 + 5 * S, 10, 1, 1_000_000),
            web_to_db(T0 + 65 * S, 4, 0, 10_000_000),
            web_to_db(T0 + 185 * S, 2, 0, 1_000_000),
        ] {
            assert_eq!(
                topology.ingest(&o, &directory),
                super::super::Ingested::Counted
            );
        }
        topology
    }

    #[test]
    fn each_bucket_adds_up_the_server_side_and_the_client_side_with_empty_buckets_kept() {
        let topology = topology();
        let db = topology
            .service_series("db", T0 + 30 * S, T0 + 190 * S)
            .expect("series");
        assert_eq!(db.width_ns, 60 * S);
        let starts: Vec<u64> = db.points.iter().map(|p| p.start_unix_ns).collect();
        assert_eq!(starts, vec![T0, T0 + 60 * S, T0 + 120 * S, T0 + 180 * S]);
        let served: Vec<u64> = db.points.iter().map(|p| p.inbound.requests).collect();
        assert_eq!(served, vec![10, 4, 0, 2]);
        assert!(db.points.iter().all(|p| p.outbound.requests == 0));
        assert_eq!(db.points[0].inbound.errors, 1);
        assert!((db.points[0].inbound.error_rate - 0.1).abs() < 1e-9);
        assert_eq!(db.points[0].inbound.bytes, 400);
        let p50 = |i: usize| db.points[i].inbound.latency_ms.p50;
        assert!(p50(0) < 2.0 && p50(1) > 5.0, "{} {}", p50(0), p50(1));
        assert_eq!(db.points[2].inbound.latency_ms, LatencySummary::default());

        let web = topology
            .service_series("web", T0, T0 + 60 * S)
            .expect("series");
        let made: Vec<u64> = web.points.iter().map(|p| p.outbound.requests).collect();
        assert_eq!(made, vec![10, 4]);
        assert!(web.points.iter().all(|p| p.inbound.requests == 0));
    }

    #[test]
    fn unknown_services_windows_too_wide_and_backwards_are_told_apart() {
        let topology = topology();
        assert!(topology.has_service("db") && !topology.has_service("nope"));
        let nope = topology
            .service_series("nope", T0, T0 + 60 * S)
            .expect("series");
        assert!(nope.points.iter().all(|p| p.inbound.requests == 0));
        assert_eq!(
            topology.service_series("db", T0, T0 + 2 * 24 * 3_600 * S),
            Err(SeriesError::TooManyBuckets {
                buckets: 2 * 24 * 60 + 1,
                width_seconds: 60.0
            })
        );
        assert_eq!(
            topology.service_series("db", T0 + S, T0),
            Err(SeriesError::Backwards)
        );
    }
}
