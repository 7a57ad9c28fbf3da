//! Schemas of the responses the handlers build with `serde_json::json!` (shards, tokens,
//! networks, hosts, ...): each type here is the shape of one such builder, named in the
//! handler's `#[utoipa::path]`, and checked against what the live server sends by the
//! schemathesis test (`controller/tests/openapi_schemathesis.rs`). Responses that are a
//! library type's own serde form (a migration, a shadow, a weave, analytics results) are
//! documented as JSON objects with the fields the handler adds.
#![allow(dead_code)] // descriptions of JSON shapes: never built, only derived from

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// An IP shard (`shard_json`).
#[derive(ToSchema)]
pub struct Shard {
    #[schema(example = "shard-0001")]
    id: String,
    #[schema(example = "10.64.0.0/22")]
    cidr: String,
    #[schema(pattern = "^ipv[46]$")]
    family: String,
    prefix_len: u8,
    /// Addresses in the shard.
    size: u64,
    gateway: String,
    network_id: Option<String>,
    #[schema(pattern = "^(Available|In-Use|Migrating|Reserved)$")]
    status: String,
    resource_count: u64,
    /// RFC 3339.
    last_accessed: String,
    /// RFC 3339.
    created: String,
}

/// One page of shards, ordered by id.
#[derive(ToSchema)]
pub struct ShardPage {
    shards: Vec<Shard>,
    /// Pass as `page_token` for the next page; null on the last.
    next_page_token: Option<String>,
}

/// An address allocation (`allocation_json`).
#[derive(ToSchema)]
pub struct Allocation {
    address: String,
    /// The address with its shard's prefix length.
    cidr: String,
    gateway: String,
    /// Name it to release the address.
    seq: u64,
    shard_id: String,
    network_id: String,
    workload: String,
    host_id: String,
    /// RFC 3339.
    allocated: String,
    retiring: bool,
    releasing: bool,
}

#[derive(ToSchema)]
pub struct WorkloadAddresses {
    addresses: Vec<Allocation>,
}

#[derive(ToSchema)]
pub struct ReleasedAddresses {
    released: Vec<Allocation>,
}

/// A deallocation that moves workloads first: follow `status_url`.
#[derive(ToSchema)]
pub struct DeallocationStarted {
    migration_id: String,
    status_url: String,
    shard_id: String,
    network_id: String,
    /// Workloads to move.
    workloads: u64,
}

/// A migration: the shard manager's record plus times and counts.
#[derive(ToSchema)]
pub struct Migration {
    id: String,
    shard_id: String,
    network_id: String,
    #[schema(pattern = "^(Running|Paused|Completed|Failed)$")]
    state: String,
    /// Why it is paused or failed (empty otherwise).
    error: String,
    created_ns: u64,
    updated_ns: u64,
    finished_ns: u64,
    /// One per workload to move.
    #[schema(value_type = Vec<Object>)]
    moves: (),
    /// RFC 3339.
    created: String,
    /// RFC 3339.
    updated: String,
    /// RFC 3339, once finished.
    finished: Option<String>,
    moved: u64,
    rolled_back: u64,
    total: u64,
}

#[derive(ToSchema)]
pub struct MigrationList {
    migrations: Vec<Migration>,
}

/// Stored shard events (`follow=false`).
#[derive(ToSchema)]
pub struct ShardEventPage {
    /// CloudEvents, oldest first.
    events: Vec<CloudEvent>,
    /// The sequence to ask for next.
    next: u64,
}

/// A CloudEvent (`specversion` 1.0), as JSON.
#[derive(ToSchema)]
pub struct CloudEvent {
    #[schema(example = "1.0")]
    specversion: String,
    #[schema(example = "weft.shard.allocated")]
    r#type: String,
    source: String,
    id: String,
    /// The event's payload.
    #[schema(value_type = Object)]
    data: (),
}

/// A client token (never its secret, but once: see [`NewToken`]).
#[derive(ToSchema)]
pub struct Token {
    id: String,
    name: String,
    #[schema(pattern = "^(read|operate|admin)$")]
    role: String,
    /// RFC 3339.
    created: String,
    /// RFC 3339, or null for a token that does not expire.
    expires: Option<String>,
    expired: bool,
}

/// A token just made: its secret is shown this once.
#[derive(ToSchema)]
pub struct NewToken {
    id: String,
    name: String,
    role: String,
    created: String,
    expires: Option<String>,
    expired: bool,
    /// The bearer token (`weft_...`).
    token: String,
}

#[derive(ToSchema)]
pub struct TokenList {
    tokens: Vec<Token>,
}

/// `POST /tokens`.
#[derive(ToSchema)]
pub struct CreateToken {
    #[schema(example = "ci")]
    name: String,
    #[schema(pattern = "^(read|operate|admin)$")]
    role: String,
    /// A duration such as `30d`, `12h` or `90m`; absent or null: never expires.
    #[schema(example = "30d")]
    expires_in: Option<String>,
}

/// A network in a list (`summary`).
#[derive(ToSchema)]
pub struct NetworkSummary {
    network_id: String,
    #[schema(pattern = "^(source|mirror|weave)$")]
    role: String,
    /// A mirror's source network, a weave's environment.
    source: Option<String>,
    vni: u32,
    hosts: Vec<String>,
    /// Number of nodes.
    nodes: u64,
    revision: u64,
    /// RFC 3339.
    created: String,
    /// A source network's `propagate` or `repair`; null otherwise.
    source_drift: Option<String>,
}

/// Where a node runs.
#[derive(ToSchema)]
pub struct NodePlacement {
    host: Option<String>,
    addresses: Vec<String>,
    namespace: String,
}

/// A network with its placement and TDL (`detail`).
#[derive(ToSchema)]
pub struct NetworkDetail {
    network_id: String,
    role: String,
    source: Option<String>,
    vni: u32,
    hosts: Vec<String>,
    nodes: u64,
    revision: u64,
    created: String,
    source_drift: Option<String>,
    placement: BTreeMap<String, NodePlacement>,
    /// The network's TDL as weft formats it.
    tdl: String,
    /// `PUT` only: what the update changed.
    #[schema(value_type = Option<Object>)]
    changes: Option<()>,
}

#[derive(ToSchema)]
pub struct NetworkList {
    networks: Vec<NetworkSummary>,
}

/// One applied revision of a source network.
#[derive(ToSchema)]
pub struct NetworkRevision {
    revision: u64,
    applied_unix_ns: u64,
    /// RFC 3339.
    applied: String,
    tdl: String,
}

#[derive(ToSchema)]
pub struct NetworkHistory {
    network_id: String,
    history: Vec<NetworkRevision>,
}

/// A volume snapshot (`weft.v1.VolumeSnapshot`'s field names).
#[derive(ToSchema)]
pub struct VolumeSnapshot {
    id: String,
    taken_unix_ns: u64,
    taken: String,
    generation: u64,
    volumes: Vec<String>,
    method: String,
    took_seconds: f64,
}

/// Every node's snapshots, oldest first.
#[derive(ToSchema)]
pub struct NetworkSnapshots {
    network_id: String,
    snapshots: BTreeMap<String, Vec<VolumeSnapshot>>,
}

/// The snapshot just taken of each node.
#[derive(ToSchema)]
pub struct SnapshotsTaken {
    network_id: String,
    snapshots: BTreeMap<String, VolumeSnapshot>,
}

#[derive(ToSchema)]
pub struct NetworkSynced {
    network_id: String,
    /// What was copied to or from each mirror.
    #[schema(value_type = Object)]
    mirrors: (),
}

/// `GET /tdl/export?format=json`.
#[derive(ToSchema)]
pub struct TdlExport {
    network: String,
    tdl: String,
    /// Which workload each node is.
    #[schema(value_type = Object)]
    nodes: (),
    connections: u64,
    /// What was left out, and why.
    #[schema(value_type = Vec<Object>)]
    left_out: (),
}

/// A host's control state in a list.
#[derive(ToSchema)]
pub struct HostSummary {
    host_id: String,
    controller_epoch: u64,
    desired_generation: u64,
    applied_generation: u64,
    in_sync: bool,
    reported_seconds_ago: Option<f64>,
    kinds: Vec<String>,
    /// Number of resources.
    resources: u64,
    drift_repaired: u64,
}

#[derive(ToSchema)]
pub struct HostList {
    hosts: Vec<HostSummary>,
}

/// A host's control state with its resources and drift.
#[derive(ToSchema)]
pub struct HostStatus {
    host_id: String,
    controller_epoch: u64,
    desired_generation: u64,
    applied_generation: u64,
    in_sync: bool,
    reported_seconds_ago: Option<f64>,
    kinds: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    resources: (),
    #[schema(value_type = Vec<Object>)]
    drift: (),
    drift_repaired: u64,
}

/// A service's dependencies.
#[derive(ToSchema)]
pub struct ServiceDependencies {
    service: String,
    #[schema(pattern = "^(inbound|outbound|both)$")]
    direction: String,
    #[schema(value_type = Vec<Object>)]
    dependencies: (),
}

/// The flows reported last, most recent first.
#[derive(ToSchema)]
pub struct Flows {
    #[schema(value_type = Vec<Object>)]
    flows: (),
    /// How many flows the controller keeps.
    capacity: u64,
}

/// Dependencies slower than the threshold.
#[derive(ToSchema)]
pub struct Bottlenecks {
    threshold_ms: f64,
    stat: String,
    #[schema(value_type = Vec<Object>)]
    dependencies: (),
}

/// Dependencies outside the allow-list.
#[derive(ToSchema)]
pub struct Violations {
    allow_list_configured: bool,
    #[schema(value_type = Vec<Object>)]
    violations: (),
}

/// A shadow and its state now (the shadow manager's `ShadowInfo`).
#[derive(ToSchema)]
pub struct Shadow {
    id: String,
    production: String,
    nodes: Vec<String>,
    hosts: Vec<String>,
    #[schema(value_type = Object)]
    policy: (),
    networks: Vec<String>,
    #[schema(pattern = "^(provisioning|sampling|degraded)$")]
    state: String,
    error: String,
    created_unix_ns: u64,
    #[schema(value_type = Object)]
    counters: (),
    #[schema(value_type = Vec<Object>)]
    analysis: (),
    noise_baseline: bool,
    revision: u64,
    /// Sampled node -> its sink's host and port.
    #[schema(value_type = Object)]
    sinks: (),
    /// The synthetic load asked for last.
    #[schema(value_type = Option<Object>)]
    synthetic: (),
    #[schema(value_type = Vec<Object>)]
    scaling: (),
}

#[derive(ToSchema)]
pub struct ShadowList {
    shadows: Vec<Shadow>,
}

/// A weave's route: port 0 is every port (the weave is active). With `header`, only the
/// HTTP/1.1 requests carrying it (equal to `header_value`; absent: any value) are routed.
#[derive(ToSchema)]
pub struct WeaveRoute {
    node: String,
    port: u32,
    header: Option<String>,
    header_value: Option<String>,
}

/// A weave and its state now (the weave manager's `WeaveInfo`).
#[derive(ToSchema)]
pub struct Weave {
    id: String,
    environment: String,
    at_unix_ns: u64,
    environment_revision: u64,
    revision_applied_unix_ns: u64,
    created_unix_ns: u64,
    #[schema(pattern = "^(provisioning|running|degraded)$")]
    state: String,
    error: String,
    snapshots: BTreeMap<String, String>,
    routes: Vec<WeaveRoute>,
    active: bool,
    placement: BTreeMap<String, String>,
    ready_seconds: f64,
}

#[derive(ToSchema)]
pub struct WeaveList {
    weaves: Vec<Weave>,
}
