//! The agent's metrics: one `prometheus-client` registry, built in `main` and passed to
//! whatever has metrics ([`Metrics::new`], [`crate::control::ControlMetrics::new`], the host
//! events' collector), then served at `/metrics` ([`app`]) as Prometheus text format 0.0.4.
//! Counters and gauges are relaxed atomics: no lock on any path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A gauge of a count or size.
pub type Gauge = prometheus_client::metrics::gauge::Gauge<u64, AtomicU64>;
/// A gauge of a measurement.
pub type GaugeF64 = prometheus_client::metrics::gauge::Gauge<f64, AtomicU64>;

/// A counter named as text format 0.0.4 names it: the family (`# TYPE` line) and the
/// sample are both the registered name, which ends in `_total`. (prometheus-client's own
/// counter appends `_total` to the sample only, as OpenMetrics does.)
#[derive(Debug, Clone, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn inc_by(&self, v: u64) {
        self.0.inc_by(v);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }

    /// Sets the count to a total kept elsewhere (the kernel's), which only grows.
    pub fn set_total(&self, total: u64) {
        self.0.inner().store(total, Relaxed);
    }
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // A gauge sample is the name as registered, with no suffix. The text encoder
        // writes integers as i64 (a count past i64::MAX is not reached).
        encoder.encode_gauge(&i64::try_from(self.get()).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Registers `metric` under `name`. prometheus-client ends every help text with a full
/// stop itself, so the one `help` has is taken off.
pub fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// The text exposition of `registry` (format 0.0.4: no `# EOF`).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(4096);
    encode_registry(&mut out, registry)?;
    Ok(out)
}

/// The `/metrics` endpoint.
pub fn app(registry: Arc<Registry>) -> axum::Router {
    use axum::http::{StatusCode, header::CONTENT_TYPE as HEADER};
    use axum::response::IntoResponse as _;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                match render(&registry) {
                    Ok(text) => ([(HEADER, CONTENT_TYPE)], text).into_response(),
                    Err(_) => {
                        tracing::error!("encoding the metrics failed");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }),
    )
}

/// Counters and gauges of the flow path.
#[derive(Default)]
pub struct Metrics {
    pub records_sent: Counter,
    pub records_dropped: Counter,
    pub records_queued: Gauge,
    pub batches_sent: Counter,
    pub send_errors: Counter,
    pub reconnects: Counter,
    pub controller_connected: Gauge,
    pub flow_map_entries: Gauge,
    pub flow_map_capacity: Gauge,
    pub flow_events: Counter,
    pub flows_evicted_unreported: Counter,
    pub baseline_write_errors: Counter,
    pub drains: Counter,
    pub drain_seconds_last: GaugeF64,
    pub interfaces_attached: Gauge,
    pub attach_errors: Counter,
    pub payload_samples: Counter,
    pub payload_samples_lost: Counter,
    pub stream_chunks: Counter,
    pub stream_chunks_lost: Counter,
    pub streams_followed: Gauge,
    pub streams_partial: Counter,
    pub stream_holes: Counter,
    pub latency_unsampled_requests: Counter,
    pub batch_splits: Counter,
    pub records_too_large: Counter,
    pub ring_items_invalid: Counter,
    pub batches_retained: Gauge,
    pub batches_resent: Counter,
    pub batches_lost: Counter,
    pub records_unretained: Counter,
}

impl Metrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        register(
            r,
            "weft_agent_records_sent_total",
            "Flow records acknowledged by the controller.",
            m.records_sent.clone(),
        );
        register(
            r,
            "weft_agent_records_dropped_total",
            "Flow records dropped because the send queue was full.",
            m.records_dropped.clone(),
        );
        register(
            r,
            "weft_agent_records_queued",
            "Flow records waiting to be sent.",
            m.records_queued.clone(),
        );
        register(
            r,
            "weft_agent_batches_sent_total",
            "Batches acknowledged by the controller.",
            m.batches_sent.clone(),
        );
        register(
            r,
            "weft_agent_send_errors_total",
            "Failed attempts to send a batch or register.",
            m.send_errors.clone(),
        );
        register(
            r,
            "weft_agent_controller_reconnects_total",
            "Connections (re)established to the controller.",
            m.reconnects.clone(),
        );
        register(
            r,
            "weft_agent_controller_connected",
            "1 while registered with the controller.",
            m.controller_connected.clone(),
        );
        register(
            r,
            "weft_agent_flow_map_entries",
            "Entries in the kernel flow map at the last drain.",
            m.flow_map_entries.clone(),
        );
        register(
            r,
            "weft_agent_flow_map_capacity",
            "Capacity of the kernel flow map.",
            m.flow_map_capacity.clone(),
        );
        register(
            r,
            "weft_agent_flow_end_events_total",
            "Flow-end events read from the ring buffer.",
            m.flow_events.clone(),
        );
        register(
            r,
            "weft_agent_flows_evicted_unreported_total",
            "Flows evicted from the LRU map before their last record.",
            m.flows_evicted_unreported.clone(),
        );
        register(
            r,
            "weft_agent_flow_baseline_write_errors_total",
            "Writes of a flow's export baseline to the pinned FLOW_REPORTED map that failed (that flow may be exported twice after a restart).",
            m.baseline_write_errors.clone(),
        );
        register(
            r,
            "weft_agent_drains_total",
            "Full reads of the flow map.",
            m.drains.clone(),
        );
        register(
            r,
            "weft_agent_drain_duration_seconds",
            "Duration of the last full read of the flow map.",
            m.drain_seconds_last.clone(),
        );
        register(
            r,
            "weft_agent_interfaces_attached",
            "Workload interfaces with the flow programs attached.",
            m.interfaces_attached.clone(),
        );
        register(
            r,
            "weft_agent_attach_errors_total",
            "Failed attempts to attach to an interface.",
            m.attach_errors.clone(),
        );
        register(
            r,
            "weft_agent_payload_samples_total",
            "Payload samples (request/response starts) read from the kernel.",
            m.payload_samples.clone(),
        );
        register(
            r,
            "weft_agent_batch_splits_total",
            "Batches the controller refused as too large, split in two and sent again.",
            m.batch_splits.clone(),
        );
        register(
            r,
            "weft_agent_batches_retained",
            "Acknowledged batches kept until the controller holds them durably (its next topology checkpoint).",
            m.batches_retained.clone(),
        );
        register(
            r,
            "weft_agent_batches_resent_total",
            "Acknowledged batches sent again because the controller restarted and had lost them.",
            m.batches_resent.clone(),
        );
        register(
            r,
            "weft_agent_batches_lost_total",
            "Acknowledged batches a restarted controller had lost and the agent no longer kept (--resend-buffer-bytes too small).",
            m.batches_lost.clone(),
        );
        register(
            r,
            "weft_agent_records_unretained_total",
            "Acknowledged flow records dropped from the resend buffer before the controller held them durably (--resend-buffer-bytes full).",
            m.records_unretained.clone(),
        );
        register(
            r,
            "weft_agent_records_too_large_total",
            "Flow records dropped because the controller refuses them as too large even alone.",
            m.records_too_large.clone(),
        );
        register(
            r,
            "weft_agent_payload_samples_lost_total",
            "Payload samples the kernel dropped because the ring buffer was full.",
            m.payload_samples_lost.clone(),
        );
        register(
            r,
            "weft_agent_stream_chunks_total",
            "Chunks of connections copied whole (HTTP/2, gRPC, AMQP: their requests are counted from whole turns) read from the kernel.",
            m.stream_chunks.clone(),
        );
        register(
            r,
            "weft_agent_stream_chunks_lost_total",
            "Chunks of connections copied whole that the kernel dropped because the ring buffer was full (the turn is parsed up to the hole).",
            m.stream_chunks_lost.clone(),
        );
        register(
            r,
            "weft_agent_streams_followed",
            "Connections copied whole whose turns are being rebuilt now.",
            m.streams_followed.clone(),
        );
        register(
            r,
            "weft_agent_streams_partial_total",
            "Connections copied whole followed by the first 128 bytes of each side of their turns only (their start was not seen, or 2,048 were followed whole already): their counts are those of a sampled flow.",
            m.streams_partial.clone(),
        );
        register(
            r,
            "weft_agent_stream_holes_total",
            "Holes in the sequence numbers of connections copied whole (copies lost).",
            m.stream_holes.clone(),
        );
        register(
            r,
            "weft_agent_latency_unsampled_requests_total",
            "Requests the kernel counted whose latency no payload sample told (samples lost): put in their flow's last record at the mean of the missing latencies (from the kernel's exact sum).",
            m.latency_unsampled_requests.clone(),
        );
        register(
            r,
            "weft_agent_ring_items_invalid_total",
            "Ring-buffer items dropped because they did not decode (short, or a value the kernel program never writes).",
            m.ring_items_invalid.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests;
