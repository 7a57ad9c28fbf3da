//! The controller's own limits (requests, connections, streams, renders, agent record
//! rates, gRPC message sizes, `/metrics` series) and the housekeeping that goes with the
//! topology's: eviction of idle entries and one log line per limit that refused something
//! in the last interval.
//!
//! The topology's bounds (services, dependencies, names per address, timestamps) live in
//! [`weft_topology::topology::TopologyLimits`]; the HTTP layers that apply these limits
//! are in [`crate::api::limits`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Semaphore;
use weft_topology::time::now_unix_ns;
use weft_topology::topology::Limit;

use crate::state::AppState;

/// The limits the controller's flags set (see `limit_flags.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitConfig {
    /// Largest request body accepted (413 beyond).
    pub http_max_body_bytes: usize,
    /// Longest time a request may take, body included (503 beyond); streams are timed
    /// until their response starts.
    pub http_request_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub http_idle_timeout: Duration,
    /// A TLS handshake on the REST listener not done within this is closed (the
    /// connection counts against `http_max_connections` meanwhile).
    pub http_tls_handshake_timeout: Duration,
    /// Open HTTP connections at most (503 and close beyond).
    pub http_max_connections: usize,
    /// Requests served at once per class (503 with Retry-After beyond, after
    /// `http_queue_wait`).
    pub http_read_concurrency: usize,
    pub http_render_concurrency: usize,
    pub http_write_concurrency: usize,
    /// How long a request waits for a slot of its class before it is refused.
    pub http_queue_wait: Duration,
    /// Subscribers per event stream (`/events`, `/events/topology`, `/events/control`).
    pub sse_max_subscribers: usize,
    /// How long the one `dot` at a time may run, and how long a request waits for it.
    pub svg_timeout: Duration,
    /// How long a rendered SVG is served again for the same topology generation.
    pub svg_cache_ttl: Duration,
    /// Largest gRPC message the controller decodes (OUT_OF_RANGE beyond).
    pub grpc_max_message_bytes: usize,
    /// Open gRPC connections at most (closed at once beyond).
    pub grpc_max_connections: usize,
    /// Unary calls of the client and control gRPC services served at once
    /// (RESOURCE_EXHAUSTED beyond, after `grpc_queue_wait`); streams take none.
    pub grpc_concurrency: usize,
    /// How long a unary gRPC call waits for a slot before it is refused.
    pub grpc_queue_wait: Duration,
    /// Flow records per second merged from one agent (the rest of a batch is dropped and
    /// counted).
    pub agent_record_rate: u64,
    /// Records one agent may send at once above the rate.
    pub agent_record_burst: u64,
    /// Services and dependencies not seen for this long are evicted.
    pub idle_timeout: Duration,
    /// Dependencies (source, target, protocol) with series in `/metrics` (the busiest).
    pub metrics_max_edges: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            http_max_body_bytes: 1 << 20,
            http_request_timeout: Duration::from_secs(30),
            http_idle_timeout: Duration::from_secs(120),
            http_tls_handshake_timeout: Duration::from_secs(10),
            http_max_connections: 1_024,
            http_read_concurrency: 64,
            http_render_concurrency: 4,
            http_write_concurrency: 64,
            http_queue_wait: Duration::from_secs(1),
            sse_max_subscribers: 64,
            svg_timeout: Duration::from_secs(10),
            svg_cache_ttl: Duration::from_secs(10),
            grpc_max_message_bytes: 4 << 20,
            grpc_max_connections: 1_024,
            grpc_concurrency: 64,
            grpc_queue_wait: Duration::from_secs(1),
            agent_record_rate: 100_000,
            agent_record_burst: 200_000,
            idle_timeout: Duration::from_secs(3_600),
            metrics_max_edges: 500,
        }
    }
}

/// A limit of the controller itself (the topology counts its own, [`Limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    HttpBody,
    HttpTimeout,
    HttpConnections,
    HttpTlsHandshake,
    HttpRead,
    HttpRender,
    HttpWrite,
    SseSubscribers,
    SvgRender,
    ManualSnapshots,
    AgentRecordRate,
    GrpcMessageSize,
    GrpcConnections,
    GrpcConcurrency,
    MetricsEdges,
}

impl Guard {
    pub const ALL: [Guard; 15] = [
        Guard::HttpBody,
        Guard::HttpTimeout,
        Guard::HttpConnections,
        Guard::HttpTlsHandshake,
        Guard::HttpRead,
        Guard::HttpRender,
        Guard::HttpWrite,
        Guard::SseSubscribers,
        Guard::SvgRender,
        Guard::ManualSnapshots,
        Guard::AgentRecordRate,
        Guard::GrpcMessageSize,
        Guard::GrpcConnections,
        Guard::GrpcConcurrency,
        Guard::MetricsEdges,
    ];

    /// The `limit` label of `weft_controller_limit_hits_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpBody => "http_body_bytes",
            Self::HttpTimeout => "http_request_timeout",
            Self::HttpConnections => "http_connections",
            Self::HttpTlsHandshake => "http_tls_handshake_timeout",
            Self::HttpRead => "http_concurrency_read",
            Self::HttpRender => "http_concurrency_render",
            Self::HttpWrite => "http_concurrency_write",
            Self::SseSubscribers => "sse_subscribers",
            Self::SvgRender => "svg_render",
            Self::ManualSnapshots => "manual_snapshot_interval",
            Self::AgentRecordRate => "agent_record_rate",
            Self::GrpcMessageSize => "grpc_message_bytes",
            Self::GrpcConnections => "grpc_connections",
            Self::GrpcConcurrency => "grpc_concurrency",
            Self::MetricsEdges => "metrics_edges",
        }
    }

    /// What a hit means and which flag moves the limit, for the log line.
    fn explain(self) -> &'static str {
        match self {
            Self::HttpBody => "request bodies larger than --http-max-body refused (413)",
            Self::HttpTimeout => "requests longer than --http-request-timeout answered 503",
            Self::HttpConnections => {
                "connections beyond --http-max-connections answered 503 and closed"
            }
            Self::HttpTlsHandshake => {
                "TLS handshakes longer than --http-tls-handshake-timeout closed"
            }
            Self::HttpRead => "reads beyond --http-read-concurrency answered 503",
            Self::HttpRender => {
                "renders and analytics beyond --http-render-concurrency answered 503"
            }
            Self::HttpWrite => "writes beyond --http-write-concurrency answered 503",
            Self::SseSubscribers => {
                "event stream subscribers beyond --sse-max-subscribers answered 503"
            }
            Self::SvgRender => "SVG requests that waited --svg-timeout for `dot` answered 503",
            Self::ManualSnapshots => {
                "snapshots requested by one client within --manual-snapshot-min-interval answered 429"
            }
            Self::AgentRecordRate => "flow records beyond --agent-record-rate dropped",
            Self::GrpcMessageSize => {
                "gRPC messages larger than --grpc-max-message-size refused (OUT_OF_RANGE)"
            }
            Self::GrpcConnections => "gRPC connections beyond --grpc-max-connections closed",
            Self::GrpcConcurrency => {
                "unary gRPC calls beyond --grpc-concurrency answered RESOURCE_EXHAUSTED"
            }
            Self::MetricsEdges => {
                "per-dependency series beyond --metrics-max-edges left out of /metrics"
            }
        }
    }
}

fn explain_topology(limit: Limit) -> &'static str {
    match limit {
        Limit::Services => {
            "new services refused: the topology holds --max-services (idle ones leave after --idle-timeout)"
        }
        Limit::Dependencies => {
            "new dependencies refused: the topology holds --max-dependencies (idle ones leave after --idle-timeout)"
        }
        Limit::NamesPerAddress => {
            "names (SNI, Host, DNS answers, record workload fields) beyond --max-names-per-address for one address: the address names the service instead"
        }
        Limit::EndpointsPerService => "endpoints beyond --max-endpoints-per-service not kept",
        Limit::FutureTimestamp => {
            "records and observations stamped more than --max-clock-skew ahead refused"
        }
        Limit::OldTimestamp => "records and observations older than --retention refused",
    }
}

/// Which event stream a subscriber follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Shards,
    Topology,
    Control,
    Networks,
    Shadows,
    Weaves,
}

impl Stream {
    pub const ALL: [Stream; 6] = [
        Stream::Shards,
        Stream::Topology,
        Stream::Control,
        Stream::Networks,
        Stream::Shadows,
        Stream::Weaves,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Self::Shards => "/events",
            Self::Topology => "/events/topology",
            Self::Control => "/events/control",
            Self::Networks => "/events/networks",
            Self::Shadows => "/events/shadows",
            Self::Weaves => "/events/weaves",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The last SVG rendered, for the same topology generation and query.
#[derive(Debug)]
pub struct SvgCache {
    /// One `dot` at a time.
    pub slot: Semaphore,
    entry: Mutex<Option<SvgEntry>>,
}

#[derive(Debug)]
struct SvgEntry {
    key: SvgKey,
    at: Instant,
    /// The rendering, or why it failed (a `dot` over its time is not tried again for the
    /// same topology until the entry expires).
    svg: Result<Arc<Vec<u8>>, String>,
}

/// What a rendering depends on: the topology's generation, the registry's version (names
/// of workloads) and the query (the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvgKey {
    pub generation: u64,
    pub registry: u64,
    pub query: String,
}

impl SvgCache {
    fn new() -> Self {
        Self {
            slot: Semaphore::new(1),
            entry: Mutex::new(None),
        }
    }

    /// The cached SVG for `key` (or why rendering it failed), if younger than `ttl`.
    pub fn get(&self, key: &SvgKey, ttl: Duration) -> Option<Result<Arc<Vec<u8>>, String>> {
        let entry = self.entry.lock().unwrap_or_else(PoisonError::into_inner);
        entry
            .as_ref()
            .filter(|e| &e.key == key && e.at.elapsed() < ttl)
            .map(|e| e.svg.clone())
    }

    pub fn put(&self, key: SvgKey, svg: Result<Arc<Vec<u8>>, String>) {
        *self.entry.lock().unwrap_or_else(PoisonError::into_inner) = Some(SvgEntry {
            key,
            at: Instant::now(),
            svg,
        });
    }
}

/// Tokens of one agent's record rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits in force: the configuration, the slots (semaphores) that enforce them and
/// the count of refusals per limit.
#[derive(Debug)]
pub struct Limits {
    pub config: LimitConfig,
    hits: [AtomicU64; Guard::ALL.len()],
    pub http_connections: Arc<Semaphore>,
    pub grpc_connections: Arc<Semaphore>,
    /// Unary calls of the client and control gRPC services.
    pub grpc_calls: Arc<Semaphore>,
    pub read: Arc<Semaphore>,
    pub render: Arc<Semaphore>,
    pub write: Arc<Semaphore>,
    streams: [Arc<Semaphore>; Stream::ALL.len()],
    pub svg: SvgCache,
    agent_rates: DashMap<String, Bucket>,
    /// Dependencies left out of the last `/metrics`.
    metrics_edges_omitted: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(LimitConfig::default())
    }
}

impl Limits {
    pub fn new(config: LimitConfig) -> Self {
        let slots = |n: usize| Arc::new(Semaphore::new(n.clamp(1, Semaphore::MAX_PERMITS)));
        Self {
            config,
            hits: Default::default(),
            http_connections: slots(config.http_max_connections),
            grpc_connections: slots(config.grpc_max_connections),
            grpc_calls: slots(config.grpc_concurrency),
            read: slots(config.http_read_concurrency),
            render: slots(config.http_render_concurrency),
            write: slots(config.http_write_concurrency),
            streams: Stream::ALL.map(|_| slots(config.sse_max_subscribers)),
            svg: SvgCache::new(),
            agent_rates: DashMap::new(),
            metrics_edges_omitted: AtomicU64::new(0),
        }
    }

    pub fn hit(&self, guard: Guard) {
        self.hit_n(guard, 1);
    }

    pub fn hit_n(&self, guard: Guard, n: u64) {
        let index = Guard::ALL
            .iter()
            .position(|g| *g == guard)
            .unwrap_or_default();
        self.hits[index].fetch_add(n, Ordering::Relaxed);
    }

    pub fn hits(&self, guard: Guard) -> u64 {
        let index = Guard::ALL
            .iter()
            .position(|g| *g == guard)
            .unwrap_or_default();
        self.hits[index].load(Ordering::Relaxed)
    }

    /// The subscriber slots of an event stream.
    pub fn stream(&self, stream: Stream) -> &Arc<Semaphore> {
        &self.streams[stream.index()]
    }

    /// Subscribers following `stream` now.
    pub fn subscribers(&self, stream: Stream) -> usize {
        self.config
            .sse_max_subscribers
            .saturating_sub(self.stream(stream).available_permits())
    }

    /// How many of `records` from `host` fit its record rate now (the rest are counted
    /// as refused).
    pub fn admit_records(&self, host: &str, records: u64) -> u64 {
        let rate = self.config.agent_record_rate as f64;
        let burst = self.config.agent_record_burst.max(1) as f64;
        let now = Instant::now();
        let mut bucket = self
            .agent_rates
            .entry(host.to_owned())
            .or_insert_with(|| Bucket {
                tokens: burst,
                at: now,
            });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        let admitted = (bucket.tokens.floor() as u64).min(records);
        bucket.tokens -= admitted as f64;
        drop(bucket);
        if admitted < records {
            self.hit_n(Guard::AgentRecordRate, records - admitted);
        }
        admitted
    }

    pub fn set_metrics_edges_omitted(&self, omitted: u64) {
        self.metrics_edges_omitted.store(omitted, Ordering::Relaxed);
        if omitted > 0 {
            self.hit(Guard::MetricsEdges);
        }
    }

    pub fn metrics_edges_omitted(&self) -> u64 {
        self.metrics_edges_omitted.load(Ordering::Relaxed)
    }
}

/// Whole seconds to put in `Retry-After` (at least 1).
pub fn retry_after_secs(d: Duration) -> u64 {
    let rounded_up = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    rounded_up.max(1)
}

/// How often the limits are looked at for the log.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Evicts idle services and dependencies every quarter of the idle timeout (1 s to 60 s),
/// and every [`LOG_INTERVAL`] writes one line per limit that refused anything since the
/// last look, until `stop` resolves.
pub async fn housekeeping(state: AppState, stop: impl std::future::Future<Output = ()>) {
    let idle = state.limits.config.idle_timeout;
    let sweep_every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut sweep = tokio::time::interval(sweep_every);
    let mut log = tokio::time::interval(LOG_INTERVAL);
    let mut seen = LimitLog::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = sweep.tick() => {
                // A pass over every entry: off the runtime's workers.
                let (topology, registry) = (state.topology.clone(), state.registry.clone());
                let evicted = tokio::task::spawn_blocking(move || {
                    topology.evict_idle(now_unix_ns(), idle, registry.as_ref())
                })
                .await;
                let Ok(evicted) = evicted else {
                    tracing::error!("evicting idle services and dependencies panicked");
                    continue;
                };
                if evicted.services + evicted.dependencies > 0 {
                    tracing::info!(
                        services = evicted.services,
                        dependencies = evicted.dependencies,
                        names = evicted.names,
                        idle = ?idle,
                        "evicted idle services and dependencies"
                    );
                }
            }
            _ = log.tick() => seen.log(&state),
        }
    }
}

/// The counts last logged, per limit.
#[derive(Debug, Default)]
pub struct LimitLog {
    topology: [u64; Limit::ALL.len()],
    guards: [u64; Guard::ALL.len()],
}

impl LimitLog {
    /// One warning per limit whose count grew since the last call.
    pub fn log(&mut self, state: &AppState) {
        let topology = state.topology.limits();
        for (i, (limit, total)) in state.topology.limit_hits().all().into_iter().enumerate() {
            let new = total.saturating_sub(self.topology[i]);
            self.topology[i] = total;
            if new == 0 {
                continue;
            }
            let max = match limit {
                Limit::Services => topology.max_services,
                Limit::Dependencies => topology.max_dependencies,
                Limit::NamesPerAddress => topology.max_names_per_address,
                Limit::EndpointsPerService => topology.max_endpoints_per_service,
                Limit::FutureTimestamp | Limit::OldTimestamp => 0,
            };
            tracing::warn!(
                limit = limit.as_str(),
                refused = new,
                total,
                max,
                services = state.topology.service_count(),
                dependencies = state.topology.dependency_count(),
                "limit reached: {}",
                explain_topology(limit)
            );
        }
        for (i, guard) in Guard::ALL.into_iter().enumerate() {
            let total = state.limits.hits(guard);
            let new = total.saturating_sub(self.guards[i]);
            self.guards[i] = total;
            if new > 0 {
                tracing::warn!(
                    limit = guard.as_str(),
                    refused = new,
                    total,
                    "limit reached: {}",
                    guard.explain()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_gets_its_burst_then_its_rate() {
        let limits = Limits::new(LimitConfig {
            agent_record_rate: 1_000,
            agent_record_burst: 500,
            ..LimitConfig::default()
        });
        assert_eq!(limits.admit_records("h1", 400), 400);
        assert_eq!(
            limits.admit_records("h1", 400),
            100,
            "the rest of the burst"
        );
        assert_eq!(limits.hits(Guard::AgentRecordRate), 300);
        assert_eq!(limits.admit_records("h2", 10), 10, "per agent");
        std::thread::sleep(Duration::from_millis(50));
        let later = limits.admit_records("h1", 1_000);
        assert!((40..=200).contains(&later), "about 50 ms of rate: {later}");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2_500)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
