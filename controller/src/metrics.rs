//! The controller's metrics: one `prometheus-client` registry, built when the state starts
//! ([`crate::state::AppStateBuilder::start`]) and encoded at every scrape of `/metrics` as
//! Prometheus text format 0.0.4.
//!
//! - [`Metrics`]: counters of the ingest path, registered in the registry and updated by
//!   the gRPC service.
//! - [`StateCollector`]: what is read from the topology, the history and the agent registry
//!   at scrape time (records merged, agents connected, per-dependency traffic).
//! - [`ControlCollector`]: drift reported through the control plane.
//! - the per-dependency latency histograms, written by [`Exposition::render`] after the
//!   registry from each dependency's sparse histogram.
//!
//! Nothing reaches the registry through a global.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};
use weft_topology::history::History;
use weft_topology::registry::Registry as Agents;
use weft_topology::topology::{DependencyStats, Topology};

use crate::limits::{Guard, Limits, Stream};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A counter named as text format 0.0.4 names it: the family (`# TYPE` line) and the
/// sample are both the registered name, which ends in `_total`. (prometheus-client's own
/// counter appends `_total` to the sample only, as OpenMetrics does.)
#[derive(Debug, Clone, Default)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    pub fn inc(&self) {
        self.0.inc();
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // A gauge sample is the name as registered, with no suffix.
        encoder.encode_gauge(&sample(self.get()))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The sample value of a `u64`: the text encoder writes integers as `i64` (a count past
/// `i64::MAX` is not reached).
fn sample(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Registers `metric` under `name`. prometheus-client ends every help text with a full
/// stop itself, so the one `help` has is taken off.
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// Counters of the ingest path. Records merged into the topology are counted by the
/// topology itself.
#[derive(Debug, Default)]
pub struct Metrics {
    batches: Counter,
    batches_duplicate: Counter,
    heartbeats: Counter,
    records_rejected: Counter,
    unauthenticated: Counter,
    forbidden: Counter,
}

impl Metrics {
    /// The counters, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        register(
            registry,
            "weft_controller_records_rejected_total",
            "Flow records skipped because they failed validation.",
            metrics.records_rejected.clone(),
        );
        register(
            registry,
            "weft_controller_batches_total",
            "Non-empty flow batches received, duplicates included.",
            metrics.batches.clone(),
        );
        register(
            registry,
            "weft_controller_batches_duplicate_total",
            "Flow batches ignored because their sequence was already merged.",
            metrics.batches_duplicate.clone(),
        );
        register(
            registry,
            "weft_controller_heartbeats_total",
            "Empty flow batches (heartbeats) received.",
            metrics.heartbeats.clone(),
        );
        register(
            registry,
            "weft_controller_requests_unauthenticated_total",
            "Client requests (REST and gRPC) refused for a missing or invalid token.",
            metrics.unauthenticated.clone(),
        );
        register(
            registry,
            "weft_controller_requests_forbidden_total",
            "Client requests (REST and gRPC) refused because the token's role is too low.",
            metrics.forbidden.clone(),
        );
        metrics
    }

    /// A client request refused: `forbidden` (role too low) or unauthenticated.
    pub fn auth_refused(&self, forbidden: bool) {
        if forbidden {
            self.forbidden.inc();
        } else {
            self.unauthenticated.inc();
        }
    }

    pub fn batch_merged(&self) {
        self.batches.inc();
    }

    pub fn batch_duplicate(&self) {
        self.batches.inc();
        self.batches_duplicate.inc();
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    pub fn record_rejected(&self) {
        self.records_rejected.inc();
    }

    pub fn batches_total(&self) -> u64 {
        self.batches.get()
    }

    pub fn batches_duplicate_total(&self) -> u64 {
        self.batches_duplicate.get()
    }

    pub fn heartbeats_total(&self) -> u64 {
        self.heartbeats.get()
    }

    pub fn records_rejected_total(&self) -> u64 {
        self.records_rejected.get()
    }
}

/// Escapes a label value: backslash, double quote and newline (prometheus-client writes
/// label values as they are).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// One unlabelled sample of a family; counters keep their name as it is (see [`Counter`]).
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, kind)?
        .encode_gauge(&sample(value))
}

/// Reads one counter of a dependency.
type StatFn = fn(&DependencyStats) -> u64;

/// The labels of one dependency, escaped.
type EdgeLabels = [(&'static str, String); 3];

fn edge_labels(
    edges: &std::collections::BTreeMap<(String, String, String), DependencyStats>,
) -> Vec<(EdgeLabels, &DependencyStats)> {
    edges
        .iter()
        .map(|((source, target, protocol), stats)| {
            let labels = [
                ("source", escape_label(source)),
                ("target", escape_label(target)),
                ("protocol", escape_label(protocol)),
            ];
            (labels, stats)
        })
        .collect()
}

/// What the controller's parts count themselves, read at every scrape.
#[derive(Debug)]
pub struct StateCollector {
    pub topology: Arc<Topology>,
    pub history: Arc<History>,
    pub agents: Arc<Agents>,
    /// An agent counts as connected while its last contact is younger than this.
    pub connected_window: Duration,
    pub limits: Arc<Limits>,
}

/// The help text of a per-dependency family: says how many edges were left out.
fn edge_help(help: &str, shown: usize, total: usize) -> String {
    if shown < total {
        format!(
            "{} Only the {shown} busiest of {total} dependencies (by requests; --metrics-max-edges); the rest are left out, see weft_controller_metrics_edges_omitted",
            help.strip_suffix('.').unwrap_or(help)
        )
    } else {
        help.strip_suffix('.').unwrap_or(help).to_owned()
    }
}

impl StateCollector {
    /// Sizes against their caps, refusals per limit, streams and slots in use.
    fn encode_limits(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let topology_limits = self.topology.limits();
        let config = &self.limits.config;
        for (name, help, value) in [
            (
                "weft_controller_topology_services",
                "Services the topology holds.",
                self.topology.service_count(),
            ),
            (
                "weft_controller_topology_dependencies",
                "Dependencies the topology holds.",
                self.topology.dependency_count(),
            ),
            (
                "weft_controller_topology_named_addresses",
                "Addresses holding names learned from the wire (SNI, Host, DNS answers, record workload fields).",
                self.topology.named_addresses(),
            ),
            (
                "weft_controller_metrics_edges_omitted",
                "Dependencies left out of the per-dependency series of the last scrape (--metrics-max-edges).",
                usize::try_from(self.limits.metrics_edges_omitted()).unwrap_or(usize::MAX),
            ),
        ] {
            single(
                e,
                name,
                MetricType::Gauge,
                help,
                u64::try_from(value).unwrap_or(u64::MAX),
            )?;
        }
        let mut family = e.encode_descriptor(
            "weft_controller_limit",
            "The configured maximum of each bounded quantity",
            None,
            MetricType::Gauge,
        )?;
        for (limit, value) in [
            ("services", topology_limits.max_services),
            ("dependencies", topology_limits.max_dependencies),
            ("names_per_address", topology_limits.max_names_per_address),
            (
                "endpoints_per_service",
                topology_limits.max_endpoints_per_service,
            ),
            ("http_body_bytes", config.http_max_body_bytes),
            ("http_connections", config.http_max_connections),
            ("http_concurrency_read", config.http_read_concurrency),
            ("http_concurrency_render", config.http_render_concurrency),
            ("http_concurrency_write", config.http_write_concurrency),
            ("sse_subscribers", config.sse_max_subscribers),
            ("grpc_message_bytes", config.grpc_max_message_bytes),
            ("grpc_connections", config.grpc_max_connections),
            ("grpc_concurrency", config.grpc_concurrency),
            (
                "agent_record_rate",
                usize::try_from(config.agent_record_rate).unwrap_or(usize::MAX),
            ),
            ("metrics_edges", config.metrics_max_edges),
        ] {
            family
                .encode_family(&[("limit", limit)])?
                .encode_gauge(&sample(u64::try_from(value).unwrap_or(u64::MAX)))?;
        }
        let mut family = e.encode_descriptor(
            "weft_controller_limit_hits_total",
            "Refusals per limit since the controller started: requests, records, observations, names or series the limit kept out",
            None,
            MetricType::Counter,
        )?;
        for (limit, value) in self.topology.limit_hits().all() {
            family
                .encode_family(&[("limit", limit.as_str())])?
                .encode_gauge(&sample(value))?;
        }
        for guard in Guard::ALL {
            family
                .encode_family(&[("limit", guard.as_str())])?
                .encode_gauge(&sample(self.limits.hits(guard)))?;
        }
        let mut family = e.encode_descriptor(
            "weft_controller_sse_subscribers",
            "Subscribers of each event stream now",
            None,
            MetricType::Gauge,
        )?;
        for stream in Stream::ALL {
            family
                .encode_family(&[("stream", stream.path())])?
                .encode_gauge(&sample(
                    u64::try_from(self.limits.subscribers(stream)).unwrap_or(u64::MAX),
                ))?;
        }
        let mut family = e.encode_descriptor(
            "weft_controller_http_in_flight",
            "HTTP requests being served now, per class (read, render, write)",
            None,
            MetricType::Gauge,
        )?;
        for (class, slots, max) in [
            ("read", &self.limits.read, config.http_read_concurrency),
            (
                "render",
                &self.limits.render,
                config.http_render_concurrency,
            ),
            ("write", &self.limits.write, config.http_write_concurrency),
        ] {
            family
                .encode_family(&[("class", class)])?
                .encode_gauge(&sample(
                    u64::try_from(max.saturating_sub(slots.available_permits()))
                        .unwrap_or(u64::MAX),
                ))?;
        }
        single(
            e,
            "weft_controller_http_connections",
            MetricType::Gauge,
            "Open HTTP connections.",
            u64::try_from(
                config
                    .http_max_connections
                    .saturating_sub(self.limits.http_connections.available_permits()),
            )
            .unwrap_or(u64::MAX),
        )
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        single(
            e,
            "weft_topology_unauthorized_dependencies",
            MetricType::Gauge,
            "Observed dependencies the allow-list does not allow (0 without an allow-list).",
            self.history.unauthorized_dependencies(),
        )?;
        single(
            e,
            "weft_topology_dependency_announcements_dropped_total",
            MetricType::Counter,
            "New dependencies whose announcement at ingest was dropped (channel full); the 5 s look at the topology publishes their events.",
            self.topology.appeared_dropped(),
        )?;
        single(
            e,
            "weft_controller_records_ingested_total",
            MetricType::Counter,
            "Flow records accepted from agents and merged into the topology.",
            self.topology.records_ingested(),
        )?;
        single(
            e,
            "weft_controller_records_deduplicated_total",
            MetricType::Counter,
            "Server-side flow records skipped because the client side reports the same connection.",
            self.topology.records_deduplicated(),
        )?;
        single(
            e,
            "weft_controller_agent_dropped_records",
            MetricType::Gauge,
            "Records the connected agents report having dropped since they started, summed.",
            self.agents.dropped_records_total(),
        )?;
        let connected = self.agents.connected(Instant::now(), self.connected_window);
        single(
            e,
            "weft_controller_agents_connected",
            MetricType::Gauge,
            "Agents heard from in the last 15 seconds.",
            u64::try_from(connected).unwrap_or(u64::MAX),
        )?;

        let (edges, total) = self
            .topology
            .top_edges(self.limits.config.metrics_max_edges);
        self.limits
            .set_metrics_edges_omitted(u64::try_from(total - edges.len()).unwrap_or(u64::MAX));
        self.encode_limits(e)?;

        let labels = edge_labels(&edges);
        let counters: [(&str, &str, StatFn); 3] = [
            (
                "weft_dependency_requests_total",
                "Requests between two services.",
                |s| s.requests,
            ),
            (
                "weft_dependency_flows_total",
                "Flows (connections) opened between two services.",
                |s| s.flows,
            ),
            (
                "weft_dependency_errors_total",
                "Errors (TCP resets) between two services.",
                |s| s.errors,
            ),
        ];
        for (name, help, value) in counters {
            let help = edge_help(help, edges.len(), total);
            let mut family = e.encode_descriptor(name, &help, None, MetricType::Counter)?;
            for (labels, stats) in &labels {
                family
                    .encode_family(labels)?
                    .encode_gauge(&sample(value(stats)))?;
            }
        }

        let mut family = e.encode_descriptor(
            "weft_dependency_bytes_total",
            &edge_help(
                "Layer-3 bytes between two services; direction is from the client's point of view.",
                edges.len(),
                total,
            ),
            None,
            MetricType::Counter,
        )?;
        for (labels, stats) in &labels {
            for (direction, value) in [
                ("sent", stats.bytes_sent),
                ("received", stats.bytes_received),
            ] {
                let [source, target, protocol] = labels.clone();
                let labels = [
                    source,
                    target,
                    protocol,
                    ("direction", direction.to_owned()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&sample(value))?;
            }
        }
        Ok(())
    }
}

/// What the control plane counts: drift the agents reported, per host, kind and outcome.
#[derive(Debug)]
pub struct ControlCollector {
    pub control: Arc<weft_control::ControlHub>,
}

impl Collector for ControlCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "weft_control_drift_total",
            "Out-of-band changes to managed objects that agents reported since the controller started, by outcome (repaired or failed).",
            None,
            MetricType::Counter,
        )?;
        for (host, kind, repaired, failed) in self.control.drift_totals() {
            for (outcome, value) in [("repaired", repaired), ("failed", failed)] {
                let labels = [
                    ("host", escape_label(&host)),
                    ("kind", escape_label(&kind)),
                    ("outcome", outcome.to_owned()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&sample(value))?;
            }
        }
        Ok(())
    }
}

/// `weft_weaves{active}`: how many weaves there are, active (every new connection of
/// their environment goes to them) or not.
#[derive(Debug)]
pub struct WeaveCollector {
    pub weaves: Arc<weft_weaves::WeaveManager>,
}

impl Collector for WeaveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "weft_weaves",
            "Weaves (environments at a point of their history, running beside them), by whether they are active",
            None,
            MetricType::Gauge,
        )?;
        let (all, active) = self.weaves.counts();
        for (label, value) in [("true", active), ("false", all - active)] {
            family
                .encode_family(&[("active", label.to_owned())])?
                .encode_gauge(&sample(value))?;
        }
        Ok(())
    }
}

/// The IP shards, read from the shard index at scrape time: per pool and per shard how
/// many addresses there are and are free, allocations and releases, migrations by state,
/// the progress of each active one and how long finished ones took.
#[derive(Debug)]
pub struct ShardCollector {
    pub shards: weft_shards::ShardManager,
}

/// Upper bounds of the migration-duration histogram's buckets, in seconds.
const MIGRATION_BOUNDS_S: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A count as a float sample (an IPv6 pool holds more addresses than an `i64`).
fn float(value: u128) -> f64 {
    value as f64
}

impl Collector for ShardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let index = self.shards.read();
        let config = self.shards.config();
        let e = &mut encoder;

        // Per pool: its size, what is carved into shards, what is allocated.
        let mut pools: Vec<(String, u128, u128, u128)> = config
            .pools
            .iter()
            .map(|p| (p.to_string(), p.size(), 0, 0))
            .collect();
        for shard in index.shards() {
            if let Some(pool) = config
                .pools
                .iter()
                .position(|p| p.covers(&shard.cidr))
                .and_then(|i| pools.get_mut(i))
            {
                pool.2 += shard.cidr.size();
                pool.3 += u128::from(shard.resource_count);
            }
        }
        for (name, help, pick) in [
            (
                "weft_shard_pool_addresses",
                "Addresses in each pool shards are carved from (--shard-pool).",
                0usize,
            ),
            (
                "weft_shard_pool_carved_addresses",
                "Addresses of each pool already carved into shards.",
                1,
            ),
            (
                "weft_shard_pool_allocated_addresses",
                "Addresses of each pool allocated to workloads.",
                2,
            ),
        ] {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool, size, carved, allocated) in &pools {
                let value = [*size, *carved, *allocated][pick];
                family
                    .encode_family(&[("pool", escape_label(pool))])?
                    .encode_gauge(&float(value))?;
            }
        }

        // Per shard: capacity and free addresses, with its network and status.
        let shards: Vec<_> = index
            .shard_capacities()
            .map(|(shard, capacity)| {
                let labels = [
                    ("shard", escape_label(&shard.id)),
                    ("cidr", shard.cidr.to_string()),
                    (
                        "network",
                        escape_label(shard.network_id.as_deref().unwrap_or("")),
                    ),
                    ("status", shard.status.as_str().to_owned()),
                ];
                (
                    labels,
                    capacity,
                    capacity.saturating_sub(shard.resource_count),
                )
            })
            .collect();
        let mut family = e.encode_descriptor(
            "weft_shard_capacity_addresses",
            "Addresses each shard can hand out (its size less network, gateway and IPv4 broadcast addresses)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, capacity, _) in &shards {
            family
                .encode_family(labels)?
                .encode_gauge(&sample(*capacity))?;
        }
        let mut family = e.encode_descriptor(
            "weft_shard_free_addresses",
            "Addresses each shard can still hand out",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _, free) in &shards {
            family.encode_family(labels)?.encode_gauge(&sample(*free))?;
        }

        single(
            e,
            "weft_shard_allocations_total",
            MetricType::Counter,
            "Addresses allocated (migrations' included) since the store was created.",
            index.allocations_total(),
        )?;
        single(
            e,
            "weft_shard_releases_total",
            MetricType::Counter,
            "Addresses released since the controller started.",
            index.releases_total(),
        )?;

        // Migrations: how many in each state; per active one its moves and last change.
        let mut by_state = [0u64; 4];
        let mut active = Vec::new();
        for m in index.migrations() {
            let slot = match m.state {
                weft_shards::MigrationState::Running => 0,
                weft_shards::MigrationState::Paused => 1,
                weft_shards::MigrationState::Completed => 2,
                weft_shards::MigrationState::Failed => 3,
            };
            by_state[slot] += 1;
            if m.is_active() {
                active.push(m);
            }
        }
        let mut family = e.encode_descriptor(
            "weft_shard_migrations",
            "Migrations by state (running and paused ones are in progress)",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in ["running", "paused", "completed", "failed"]
            .into_iter()
            .zip(by_state)
        {
            family
                .encode_family(&[("state", state)])?
                .encode_gauge(&sample(value))?;
        }
        let mut family = e.encode_descriptor(
            "weft_shard_migration_moves",
            "Workload moves of each migration in progress, by state",
            None,
            MetricType::Gauge,
        )?;
        for m in &active {
            let c = m.counts();
            for (state, value) in [
                ("pending", c.pending),
                ("moving", c.moving),
                ("done", c.done),
                ("skipped", c.skipped),
                ("rolled_back", c.rolled_back),
            ] {
                let labels = [
                    ("migration", escape_label(&m.id)),
                    ("shard", escape_label(&m.shard_id)),
                    ("state", state.to_owned()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_gauge(&sample(u64::try_from(value).unwrap_or(u64::MAX)))?;
            }
        }
        let mut family = e.encode_descriptor(
            "weft_shard_migration_updated_timestamp_seconds",
            "When each migration in progress last changed (Unix time): a migration that stops changing is stuck",
            None,
            MetricType::Gauge,
        )?;
        for m in &active {
            let labels = [
                ("migration", escape_label(&m.id)),
                ("shard", escape_label(&m.shard_id)),
                (
                    "state",
                    if m.state == weft_shards::MigrationState::Paused {
                        "paused"
                    } else {
                        "running"
                    }
                    .to_owned(),
                ),
            ];
            family
                .encode_family(&labels)?
                .encode_gauge(&(m.updated_ns as f64 / 1e9))?;
        }
        Ok(())
    }
}

/// How long finished migrations took, a classic histogram written by hand (as the
/// latency histograms: prometheus-client writes the last bucket `le="inf"`, text format
/// 0.0.4 says `+Inf`), computed from the migrations the index keeps (it keeps every one,
/// so the counts never go down, also across restarts).
#[derive(Debug)]
struct MigrationDurations {
    shards: weft_shards::ShardManager,
}

impl MigrationDurations {
    fn write(&self, out: &mut String) {
        let seconds: Vec<f64> = self
            .shards
            .read()
            .migrations()
            .filter(|m| !m.is_active() && m.finished_ns >= m.created_ns && m.finished_ns > 0)
            .map(|m| (m.finished_ns - m.created_ns) as f64 / 1e9)
            .collect();
        let name = "weft_shard_migration_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} How long finished migrations (completed or failed) took, from creation to their end."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for bound in MIGRATION_BOUNDS_S {
            let count = seconds.iter().filter(|s| **s <= bound).count();
            let _ = writeln!(out, r#"{name}_bucket{{le="{bound}"}} {count}"#);
        }
        let _ = writeln!(out, r#"{name}_bucket{{le="+Inf"}} {}"#, seconds.len());
        let _ = writeln!(out, "{name}_sum {}", seconds.iter().sum::<f64>());
        let _ = writeln!(out, "{name}_count {}", seconds.len());
    }
}

/// Each connected agent: how long since it was last heard from, and the records it says
/// it dropped.
#[derive(Debug)]
pub struct AgentCollector {
    pub agents: Arc<Agents>,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let agents = self.agents.agents();
        let mut family = encoder.encode_descriptor(
            "weft_controller_agent_last_contact_age_seconds",
            "Seconds since each registered agent last sent a batch or heartbeat",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            let age = now.saturating_duration_since(agent.last_contact());
            family
                .encode_family(&[("host", escape_label(&agent.host_id))])?
                .encode_gauge(&age.as_secs_f64())?;
        }
        let mut family = encoder.encode_descriptor(
            "weft_controller_agent_dropped_records_by_host",
            "Records each registered agent reports having dropped since it started",
            None,
            MetricType::Gauge,
        )?;
        for agent in &agents {
            family
                .encode_family(&[("host", escape_label(&agent.host_id))])?
                .encode_gauge(&sample(agent.dropped_records_total()))?;
        }
        Ok(())
    }
}

/// Upper bounds of the latency histograms' buckets, in microseconds (0.5 ms to 10 s):
/// fixed, so the series of every agent-fed controller replica can be summed.
const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// The per-dependency request latency, a classic Prometheus histogram (cumulative `le`
/// buckets, `_sum`, `_count`), so that rates and quantiles can be aggregated across
/// dependencies and controller replicas with `histogram_quantile(sum by (le) (rate(...)))`.
/// Written by hand: the buckets come from each dependency's sparse histogram at scrape
/// time (prometheus-client's histogram observes values one by one). A bucket's count may
/// include values up to 1/128 above its bound (the sparse histogram's resolution).
#[derive(Debug)]
struct LatencyHistograms {
    topology: Arc<Topology>,
    max_edges: usize,
}

/// A bound in seconds as Prometheus writes `le` (no trailing zeros).
fn le_seconds(bound_us: u64) -> String {
    format!("{}", bound_us as f64 / 1e6)
}

impl LatencyHistograms {
    fn write(&self, out: &mut String) {
        let name = "weft_dependency_request_duration_seconds";
        let (edges, total) = self.topology.top_edges(self.max_edges);
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {name} {}.",
            edge_help("Request latency between two services.", edges.len(), total)
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let bounds: Vec<String> = LATENCY_BOUNDS_US.iter().map(|b| le_seconds(*b)).collect();
        for (labels, stats) in edge_labels(&edges) {
            let labels = labels
                .iter()
                .map(|(k, v)| format!(r#"{k}="{v}""#))
                .collect::<Vec<_>>()
                .join(",");
            let counts = stats.latency_us.cumulative_counts(&LATENCY_BOUNDS_US);
            for (le, count) in bounds.iter().zip(counts) {
                let _ = writeln!(out, r#"{name}_bucket{{{labels},le="{le}"}} {count}"#);
            }
            // Requests whose agent sent a latency sum but no buckets are counted in +Inf
            // only (they are at most +Inf), so +Inf equals `_count`.
            let count = stats.latency_count.max(stats.latency_us.len());
            let _ = writeln!(out, r#"{name}_bucket{{{labels},le="+Inf"}} {count}"#);
            let sum_seconds = stats.latency_sum_ns as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum_seconds}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}

/// Every metric of the controller: the registry and the histograms written by hand.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
    histograms: LatencyHistograms,
    migrations: MigrationDurations,
}

impl Exposition {
    /// `registry` holds every metric but the latency histograms, which are read from
    /// `topology`.
    pub fn new(
        registry: Registry,
        topology: Arc<Topology>,
        limits: Arc<Limits>,
        shards: weft_shards::ShardManager,
    ) -> Self {
        Self {
            registry,
            migrations: MigrationDurations { shards },
            histograms: LatencyHistograms {
                topology,
                max_edges: limits.config.metrics_max_edges,
            },
        }
    }

    /// The text exposition (format 0.0.4: no `# EOF`).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(4096);
        encode_registry(&mut out, &self.registry)?;
        self.histograms.write(&mut out);
        self.migrations.write(&mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AppState;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn empty_controller_exposes_its_counters_at_zero() {
        let state = AppState::default();
        let text = state.exposition.render().unwrap();
        for line in [
            "weft_controller_records_ingested_total 0",
            "weft_controller_records_rejected_total 0",
            "weft_controller_batches_total 0",
            "weft_controller_batches_duplicate_total 0",
            "weft_controller_agents_connected 0",
            "# TYPE weft_dependency_request_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
