//! The limits' flags of `weft-controller` (flattened into its arguments): what the
//! topology keeps, how many snapshots, and the limits on requests, connections, streams,
//! renders and agents. README.md, "Operations: limits", explains each.

use std::time::Duration;

use agent_common::time::parse_duration;
use weft_topology::history::{DEFAULT_MAX_MANUAL_SNAPSHOTS, DEFAULT_MAX_SNAPSHOTS, HistoryLimits};
use weft_topology::topology::TopologyLimits;
use weft_topology::topology::limits::{
    DEFAULT_MAX_DEPENDENCIES, DEFAULT_MAX_ENDPOINTS_PER_SERVICE, DEFAULT_MAX_NAMES_PER_ADDRESS,
    DEFAULT_MAX_SERVICES,
};

use crate::limits::LimitConfig;

/// A byte size such as `4MiB`, `512KiB`, `1MB` or `65536`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 65536, 512KiB or 4MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use B, KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Services the topology holds at most; beyond, new ones are refused (peers that are
    /// not registered workloads fill at most nine tenths).
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES)]
    pub max_services: usize,
    /// Dependencies the topology holds at most (nine tenths for those not between two
    /// registered workloads).
    #[arg(long, default_value_t = DEFAULT_MAX_DEPENDENCIES)]
    pub max_dependencies: usize,
    /// Names one address may take from the wire (TLS SNI, HTTP Host, DNS answers, a
    /// record's workload field); beyond, the address names the service.
    #[arg(long, default_value_t = DEFAULT_MAX_NAMES_PER_ADDRESS)]
    pub max_names_per_address: usize,
    /// Server endpoints (address, port) kept per service.
    #[arg(long, default_value_t = DEFAULT_MAX_ENDPOINTS_PER_SERVICE)]
    pub max_endpoints_per_service: usize,
    /// Services and dependencies not seen for this long are evicted (registered workloads
    /// stay).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How far ahead of the controller's clock a record or observation may be stamped;
    /// older than --retention is refused too.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Scheduled snapshots kept (a week of one-minute snapshots by default).
    #[arg(long, default_value_t = DEFAULT_MAX_SNAPSHOTS)]
    pub max_snapshots: usize,
    /// Snapshots taken on request (POST /topology/snapshots) kept, apart from the
    /// scheduled ones.
    #[arg(long, default_value_t = DEFAULT_MAX_MANUAL_SNAPSHOTS)]
    pub max_manual_snapshots: usize,
    /// The shortest time between two snapshots taken on request by the same client
    /// (token); 429 with Retry-After sooner.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub manual_snapshot_min_interval: Duration,
    /// Largest HTTP request body (413 beyond).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub http_max_body: usize,
    /// Longest time an HTTP request may take to arrive (408) and to be answered (503).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,
    /// An HTTP connection with nothing read or written for this long is closed.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// A TLS handshake on the REST listener not done within this is closed; the
    /// connection counts against --http-max-connections until then.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub http_tls_handshake_timeout: Duration,
    /// Open HTTP connections at most (one more is answered 503 and closed).
    #[arg(long, default_value_t = LimitConfig::default().http_max_connections)]
    pub http_max_connections: usize,
    /// Cheap reads (shards, hosts, /metrics, ...) served at once.
    #[arg(long, default_value_t = LimitConfig::default().http_read_concurrency)]
    pub http_read_concurrency: usize,
    /// Topology views and analytics served at once.
    #[arg(long, default_value_t = LimitConfig::default().http_render_concurrency)]
    pub http_render_concurrency: usize,
    /// Writes served at once.
    #[arg(long, default_value_t = LimitConfig::default().http_write_concurrency)]
    pub http_write_concurrency: usize,
    /// How long a request waits for a slot of its class before a 503 with Retry-After.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub http_queue_wait: Duration,
    /// Subscribers per event stream (/events, /events/topology, /events/control).
    #[arg(long, default_value_t = LimitConfig::default().sse_max_subscribers)]
    pub sse_max_subscribers: usize,
    /// How long `dot` may run for GET /topology.svg (one at a time; a request waits as
    /// long for the one under way).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub svg_timeout: Duration,
    /// How long a rendered SVG is served again while the topology has not changed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub svg_cache_ttl: Duration,
    /// Largest gRPC message the controller decodes (agents split larger batches).
    #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
    pub grpc_max_message_size: usize,
    /// Open gRPC connections at most.
    #[arg(long, default_value_t = LimitConfig::default().grpc_max_connections)]
    pub grpc_max_connections: usize,
    /// Unary calls of TopologyService, ShardService and AgentControlService served at
    /// once (streams such as WatchEvents and WatchDesiredState take none).
    #[arg(long, default_value_t = LimitConfig::default().grpc_concurrency)]
    pub grpc_concurrency: usize,
    /// How long a unary gRPC call waits for a slot before RESOURCE_EXHAUSTED.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub grpc_queue_wait: Duration,
    /// Flow records per second merged from one agent; the rest of a batch is dropped and
    /// counted.
    #[arg(long, default_value_t = LimitConfig::default().agent_record_rate)]
    pub agent_record_rate: u64,
    /// Records an agent may send at once above its rate.
    #[arg(long, default_value_t = LimitConfig::default().agent_record_burst)]
    pub agent_record_burst: u64,
    /// Dependencies (the busiest) with per-dependency series in /metrics.
    #[arg(long, default_value_t = LimitConfig::default().metrics_max_edges)]
    pub metrics_max_edges: usize,
}

impl LimitArgs {
    /// The topology's bounds; records and observations older than `retention` are refused.
    pub fn topology(&self, retention: Duration) -> Result<TopologyLimits, String> {
        if self.max_services < 2 {
            return Err("--max-services must be at least 2 (a client and a server)".into());
        }
        if self.max_dependencies == 0 {
            return Err("--max-dependencies must be at least 1".into());
        }
        Ok(TopologyLimits {
            max_services: self.max_services,
            max_dependencies: self.max_dependencies,
            max_names_per_address: self.max_names_per_address,
            max_endpoints_per_service: self.max_endpoints_per_service,
            max_future: Some(self.max_clock_skew),
            max_age: Some(retention),
        })
    }

    pub fn history(&self) -> Result<HistoryLimits, String> {
        if self.max_snapshots == 0 {
            return Err("--max-snapshots must be at least 1".into());
        }
        Ok(HistoryLimits {
            max_snapshots: self.max_snapshots,
            max_manual_snapshots: self.max_manual_snapshots,
            manual_min_interval: self.manual_snapshot_min_interval,
        })
    }

    pub fn config(&self) -> Result<LimitConfig, String> {
        let at_least_one = [
            ("--http-max-body", self.http_max_body),
            ("--http-max-connections", self.http_max_connections),
            ("--http-read-concurrency", self.http_read_concurrency),
            ("--http-render-concurrency", self.http_render_concurrency),
            ("--http-write-concurrency", self.http_write_concurrency),
            ("--sse-max-subscribers", self.sse_max_subscribers),
            ("--grpc-max-message-size", self.grpc_max_message_size),
            ("--grpc-max-connections", self.grpc_max_connections),
            ("--grpc-concurrency", self.grpc_concurrency),
        ];
        if let Some((flag, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{flag} must be at least 1"));
        }
        if self.agent_record_rate == 0 {
            return Err("--agent-record-rate must be at least 1".into());
        }
        for (flag, d) in [
            ("--http-request-timeout", self.http_request_timeout),
            ("--http-idle-timeout", self.http_idle_timeout),
            (
                "--http-tls-handshake-timeout",
                self.http_tls_handshake_timeout,
            ),
            ("--svg-timeout", self.svg_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be more than 0"));
            }
        }
        Ok(LimitConfig {
            http_max_body_bytes: self.http_max_body,
            http_request_timeout: self.http_request_timeout,
            http_idle_timeout: self.http_idle_timeout,
            http_tls_handshake_timeout: self.http_tls_handshake_timeout,
            http_max_connections: self.http_max_connections,
            http_read_concurrency: self.http_read_concurrency,
            http_render_concurrency: self.http_render_concurrency,
            http_write_concurrency: self.http_write_concurrency,
            http_queue_wait: self.http_queue_wait,
            sse_max_subscribers: self.sse_max_subscribers,
            svg_timeout: self.svg_timeout,
            svg_cache_ttl: self.svg_cache_ttl,
            grpc_max_message_bytes: self.grpc_max_message_size,
            grpc_max_connections: self.grpc_max_connections,
            grpc_concurrency: self.grpc_concurrency,
            grpc_queue_wait: self.grpc_queue_wait,
            agent_record_rate: self.agent_record_rate,
            agent_record_burst: self.agent_record_burst.max(self.agent_record_rate),
            idle_timeout: self.idle_timeout,
            metrics_max_edges: self.metrics_max_edges,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_refuse_overflow() {
        assert_eq!(parse_bytes("65536"), Ok(65_536));
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("1MB"), Ok(1_000_000));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert!(parse_bytes("4 parsecs").unwrap_err().contains("unit"));
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(
            parse_bytes("18446744073709551615GiB")
                .unwrap_err()
                .contains("too large")
        );
    }
}
