//! Traffic statistics of one dependency, and their associative merge.

use super::evidence::{Evidence, ProtocolEvidence};
use super::groups::{GroupStats, RequestGroups};
use super::histogram::SparseHistogram;
use crate::model::{Direction, FlowObservation, LatencyBucket};
use crate::observation::TrafficObservation;

/// Latencies in microseconds: a sparse histogram with the buckets of an `hdrhistogram` of
/// two significant figures (quantiles within 1 %), holding only the buckets in use: empty
/// it allocates nothing, and one value takes 8 bytes (a dense histogram took about 5 KiB,
/// and a dependency has four: latency and handshake RTT, all-time and per time bucket).
/// Latencies above an hour are recorded as an hour.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latencies(SparseHistogram);

impl Latencies {
    fn record(&mut self, value_us: u64, count: u64) {
        self.0.record_n(value_us, count);
    }

    fn add(&mut self, other: &Self) {
        self.0.add(&other.0);
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value at quantile `q` (0 when empty).
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// The values at p50, p95 and p99, in one pass (0 when empty).
    pub fn p50_p95_p99(&self) -> [u64; 3] {
        self.0.values_at_quantiles(&[0.5, 0.95, 0.99])
    }

    /// The largest value (0 when empty).
    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// How many values are at most each of `bounds_us` (ascending), as cumulative
    /// histogram buckets (see [`SparseHistogram::cumulative_counts`]).
    pub fn cumulative_counts<const N: usize>(&self, bounds_us: &[u64; N]) -> [u64; N] {
        self.0.cumulative_counts(bounds_us)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }

    pub(crate) fn histogram(&self) -> &SparseHistogram {
        &self.0
    }

    pub(crate) fn from_histogram(histogram: SparseHistogram) -> Self {
        Self(histogram)
    }
}

fn ns_to_us(ns: f64) -> u64 {
    // `as` saturates for floats out of range, which is what a histogram value wants.
    (ns / 1_000.0).round() as u64
}

/// Everything counted for one dependency (client service -> server service on one port).
/// Directional counters are from the client's point of view: "sent" is client -> server.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DependencyStats {
    /// Flows started: records with `first_record` set.
    pub flows: u64,
    pub requests: u64,
    /// Errors: TCP resets plus requests whose reply was an error.
    pub errors: u64,
    pub resets: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub payload_bytes_sent: u64,
    pub payload_bytes_received: u64,
    /// Exact sum and count of request latencies, for the mean.
    pub latency_sum_ns: u64,
    pub latency_count: u64,
    /// Request latencies in microseconds, from the records' buckets.
    pub latency_us: Latencies,
    pub handshake_rtt_sum_ns: u64,
    /// One handshake RTT per record that carries one, in microseconds.
    pub handshake_rtt_us: Latencies,
    pub ipv4: bool,
    pub ipv6: bool,
    pub first_seen_unix_ns: Option<u64>,
    pub last_seen_unix_ns: Option<u64>,
    /// Best evidence of the application protocol.
    pub protocol: ProtocolEvidence,
    pub request_groups: RequestGroups,
}

fn min_option(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_option(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.max(b)
}

/// The value recorded for every request of a latency bucket: the geometric midpoint of
/// the bucket, whose lower bound is the previous bucket's upper bound (for the first
/// bucket, its upper bound / 1.5), in microseconds.
pub(crate) fn bucket_midpoints_us(
    buckets: &[LatencyBucket],
) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut previous_upper: Option<u64> = None;
    buckets.iter().filter_map(move |bucket| {
        let upper = bucket.upper_bound_ns as f64;
        let lower = previous_upper.map_or(upper / 1.5, |previous| previous as f64);
        previous_upper = Some(bucket.upper_bound_ns);
        (bucket.count > 0).then(|| (ns_to_us((lower * upper).sqrt()), bucket.count))
    })
}

impl DependencyStats {
    /// Adds one observation. `observation.direction` tells which side reported it, and so
    /// which of its directional counters is "sent" from the client's point of view.
    pub fn record(&mut self, observation: &FlowObservation) {
        let o = observation;
        let (
            packets_sent,
            packets_received,
            bytes_sent,
            bytes_received,
            payload_sent,
            payload_received,
        ) = match o.direction {
            Direction::Outbound => (
                o.packets_out,
                o.packets_in,
                o.bytes_out,
                o.bytes_in,
                o.payload_bytes_out,
                o.payload_bytes_in,
            ),
            Direction::Inbound => (
                o.packets_in,
                o.packets_out,
                o.bytes_in,
                o.bytes_out,
                o.payload_bytes_in,
                o.payload_bytes_out,
            ),
        };
        // Recorded in place rather than merged from a one-record value: this is the ingest
        // hot path and a fresh pair of histograms per record would allocate.
        let add = |total: &mut u64, value: u64| *total = total.saturating_add(value);
        add(&mut self.flows, u64::from(o.first_record));
        add(&mut self.requests, o.requests);
        add(&mut self.errors, u64::from(o.resets));
        for group in &o.l7.request_groups {
            add(&mut self.errors, group.errors);
            self.request_groups.add_ref(
                &group.method,
                &group.path,
                group.status,
                GroupStats {
                    count: group.count,
                    errors: group.errors,
                    latency_sum_ns: group.latency_sum_ns,
                },
            );
        }
        if let Some(protocol) = o.app_protocol() {
            let evidence = if o.l7.protocol_from_payload {
                Evidence::Payload
            } else {
                Evidence::Port
            };
            self.protocol.offer(evidence, protocol);
        }
        add(&mut self.resets, u64::from(o.resets));
        add(&mut self.packets_sent, packets_sent);
        add(&mut self.packets_received, packets_received);
        add(&mut self.bytes_sent, bytes_sent);
        add(&mut self.bytes_received, bytes_received);
        add(&mut self.payload_bytes_sent, payload_sent);
        add(&mut self.payload_bytes_received, payload_received);
        add(&mut self.latency_sum_ns, o.latency_sum_ns);
        let bucketed: u64 = o
            .latency
            .iter()
            .map(|b| b.count)
            .fold(0, u64::saturating_add);
        let latency_count = if bucketed > 0 {
            bucketed
        } else if o.latency_sum_ns > 0 {
            o.requests
        } else {
            0
        };
        add(&mut self.latency_count, latency_count);
        for (value_us, count) in bucket_midpoints_us(&o.latency) {
            self.latency_us.record(value_us, count);
        }
        if let Some(rtt_ns) = o.handshake_rtt_ns {
            add(&mut self.handshake_rtt_sum_ns, rtt_ns);
            self.handshake_rtt_us.record(ns_to_us(rtt_ns as f64), 1);
        }
        self.ipv4 |= o.remote_ip.is_ipv4();
        self.ipv6 |= o.remote_ip.is_ipv6();
        self.first_seen_unix_ns = min_option(
            self.first_seen_unix_ns,
            Some(o.first_seen_unix_ns).filter(|ns| *ns > 0),
        );
        self.last_seen_unix_ns = max_option(
            self.last_seen_unix_ns,
            Some(o.last_seen_unix_ns).filter(|ns| *ns > 0),
        );
    }

    /// Folds `other` into `self`. Associative and commutative: counters add (saturating),
    /// histograms add bucket by bucket, flags OR, first seen takes the minimum and last
    /// seen the maximum.
    pub fn merge(&mut self, other: &Self) {
        self.flows = self.flows.saturating_add(other.flows);
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.resets = self.resets.saturating_add(other.resets);
        self.packets_sent = self.packets_sent.saturating_add(other.packets_sent);
        self.packets_received = self.packets_received.saturating_add(other.packets_received);
        self.bytes_sent = self.bytes_sent.saturating_add(other.bytes_sent);
        self.bytes_received = self.bytes_received.saturating_add(other.bytes_received);
        self.payload_bytes_sent = self
            .payload_bytes_sent
            .saturating_add(other.payload_bytes_sent);
        self.payload_bytes_received = self
            .payload_bytes_received
            .saturating_add(other.payload_bytes_received);
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(other.latency_sum_ns);
        self.latency_count = self.latency_count.saturating_add(other.latency_count);
        self.latency_us.add(&other.latency_us);
        self.handshake_rtt_sum_ns = self
            .handshake_rtt_sum_ns
            .saturating_add(other.handshake_rtt_sum_ns);
        self.handshake_rtt_us.add(&other.handshake_rtt_us);
        self.ipv4 |= other.ipv4;
        self.ipv6 |= other.ipv6;
        self.first_seen_unix_ns = min_option(self.first_seen_unix_ns, other.first_seen_unix_ns);
        self.last_seen_unix_ns = max_option(self.last_seen_unix_ns, other.last_seen_unix_ns);
        self.protocol.merge(&other.protocol);
        self.request_groups.merge(&other.request_groups);
    }

    /// Adds one request of the library API / importers. `protocol` is the caller's
    /// declared protocol (already validated); `timestamp_unix_ns` is when it happened.
    pub fn record_request(
        &mut self,
        o: &TrafficObservation,
        evidence: Evidence,
        protocol: &str,
        timestamp_unix_ns: u64,
        ipv6: Option<bool>,
    ) {
        let add = |total: &mut u64, value: u64| *total = total.saturating_add(value);
        let error = o.is_error();
        let latency_ns = (o.latency_ms * 1_000_000.0).round() as u64;
        add(&mut self.requests, 1);
        add(&mut self.errors, u64::from(error));
        add(&mut self.bytes_sent, o.bytes_sent);
        add(&mut self.bytes_received, o.bytes_received);
        add(&mut self.payload_bytes_sent, o.bytes_sent);
        add(&mut self.payload_bytes_received, o.bytes_received);
        add(&mut self.latency_sum_ns, latency_ns);
        add(&mut self.latency_count, 1);
        self.latency_us.record(ns_to_us(latency_ns as f64), 1);
        match ipv6 {
            Some(true) => self.ipv6 = true,
            Some(false) => self.ipv4 = true,
            None => {}
        }
        self.protocol.offer(evidence, protocol);
        if o.method.is_some() || o.path.is_some() || o.status_code.is_some() {
            self.request_groups.add_ref(
                o.method.as_deref().unwrap_or_default(),
                o.path.as_deref().unwrap_or_default(),
                o.status_code.map_or(0, u32::from),
                GroupStats {
                    count: 1,
                    errors: u64::from(error),
                    latency_sum_ns: latency_ns,
                },
            );
        }
        let seen = Some(timestamp_unix_ns).filter(|ns| *ns > 0);
        self.first_seen_unix_ns = min_option(self.first_seen_unix_ns, seen);
        self.last_seen_unix_ns = max_option(self.last_seen_unix_ns, seen);
    }
}

/// Request-latency style summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub avg: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl LatencySummary {
    /// `count` and `sum_ns` are exact; quantiles and max come from the histogram (µs).
    pub fn new(count: u64, sum_ns: u64, histogram: &Latencies) -> Self {
        if count == 0 {
            return Self::default();
        }
        let us_to_ms = |us: u64| us as f64 / 1_000.0;
        // Empty: every quantile and the maximum are 0.
        let [p50, p95, p99] = histogram.p50_p95_p99();
        Self {
            count,
            avg: sum_ns as f64 / count as f64 / 1_000_000.0,
            p50: us_to_ms(p50),
            p95: us_to_ms(p95),
            p99: us_to_ms(p99),
            max: us_to_ms(histogram.max()),
        }
    }
}

impl DependencyStats {
    pub fn latency_summary(&self) -> LatencySummary {
        LatencySummary::new(self.latency_count, self.latency_sum_ns, &self.latency_us)
    }

    pub fn handshake_rtt_summary(&self) -> LatencySummary {
        LatencySummary::new(
            self.handshake_rtt_us.len(),
            self.handshake_rtt_sum_ns,
            &self.handshake_rtt_us,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bucket_lower_bound_is_upper_over_one_and_a_half() {
        let buckets = [LatencyBucket {
            upper_bound_ns: 1_500_000,
            count: 3,
        }];
        let points: Vec<_> = bucket_midpoints_us(&buckets).collect();
        // sqrt(1.0 ms * 1.5 ms) = 1.2247 ms
        assert_eq!(points, vec![(1_225, 3)]);
    }

    #[test]
    fn later_buckets_start_at_the_previous_upper_bound() {
        let buckets = [
            LatencyBucket {
                upper_bound_ns: 1_000_000,
                count: 0,
            },
            LatencyBucket {
                upper_bound_ns: 4_000_000,
                count: 2,
            },
        ];
        let points: Vec<_> = bucket_midpoints_us(&buckets).collect();
        assert_eq!(points, vec![(2_000, 2)], "empty buckets record nothing");
    }

    #[test]
    fn empty_summary_is_all_zero() {
        let stats = DependencyStats::default();
        assert_eq!(stats.latency_summary(), LatencySummary::default());
        assert_eq!(stats.handshake_rtt_summary(), LatencySummary::default());
    }
}
