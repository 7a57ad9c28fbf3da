//! The agent's own counters and their Prometheus text rendering. Created once at start and
//! passed down; updated with relaxed atomics (no lock on any path).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub records_sent: AtomicU64,
    pub records_dropped: AtomicU64,
    pub records_queued: AtomicU64,
    pub batches_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub reconnects: AtomicU64,
    pub controller_connected: AtomicU64,
    pub flow_map_entries: AtomicU64,
    pub flow_map_capacity: AtomicU64,
    pub flow_events: AtomicU64,
    pub flows_evicted_unreported: AtomicU64,
    pub drains: AtomicU64,
    pub drain_seconds_last: AtomicU64, // f64 bits
    pub interfaces_attached: AtomicU64,
    pub attach_errors: AtomicU64,
    pub payload_samples: AtomicU64,
    pub payload_samples_lost: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        line("weft_agent_records_sent_total", "counter", "Flow records acknowledged by the controller.", g(&self.records_sent));
        line("weft_agent_records_dropped_total", "counter", "Flow records dropped because the send queue was full.", g(&self.records_dropped));
        line("weft_agent_records_queued", "gauge", "Flow records waiting to be sent.", g(&self.records_queued));
        line("weft_agent_batches_sent_total", "counter", "Batches acknowledged by the controller.", g(&self.batches_sent));
        line("weft_agent_send_errors_total", "counter", "Failed attempts to send a batch or register.", g(&self.send_errors));
        line("weft_agent_controller_reconnects_total", "counter", "Connections (re)established to the controller.", g(&self.reconnects));
        line("weft_agent_controller_connected", "gauge", "1 while registered with the controller.", g(&self.controller_connected));
        line("weft_agent_flow_map_entries", "gauge", "Entries in the kernel flow map at the last drain.", g(&self.flow_map_entries));
        line("weft_agent_flow_map_capacity", "gauge", "Capacity of the kernel flow map.", g(&self.flow_map_capacity));
        line("weft_agent_flow_end_events_total", "counter", "Flow-end events read from the ring buffer.", g(&self.flow_events));
        line("weft_agent_flows_evicted_unreported_total", "counter", "Flows evicted from the LRU map before their last record.", g(&self.flows_evicted_unreported));
        line("weft_agent_drains_total", "counter", "Full reads of the flow map.", g(&self.drains));
        line("weft_agent_drain_duration_seconds", "gauge", "Duration of the last full read of the flow map.", f64::from_bits(self.drain_seconds_last.load(Relaxed)).to_string());
        line("weft_agent_interfaces_attached", "gauge", "Workload interfaces with the flow programs attached.", g(&self.interfaces_attached));
        line("weft_agent_attach_errors_total", "counter", "Failed attempts to attach to an interface.", g(&self.attach_errors));
        line("weft_agent_payload_samples_total", "counter", "Payload samples (request/response starts) read from the kernel.", g(&self.payload_samples));
        line("weft_agent_payload_samples_lost_total", "counter", "Payload samples the kernel dropped because the ring buffer was full.", g(&self.payload_samples_lost));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_types() {
        let m = Metrics::default();
        m.records_dropped.store(7, Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE weft_agent_records_dropped_total counter\nweft_agent_records_dropped_total 7\n"));
        assert!(text.contains("weft_agent_flow_map_entries 0"));
    }
}
