//! weft's controller: the composition root. It ingests flow records from agents into the
//! topology ([`weft_topology`]), keeps state in a store ([`weft_store`]), hands desired
//! state to agents, and serves everything over gRPC, REST and `/metrics`.
//!
//! - [`api`]: the gRPC agent service and the HTTP router; wire types become domain types
//!   here ([`api::convert`]) and go no further.
//! - `control`: desired state per host and the agents' control streams.
//! - `shards`: IP shards of the networks and their migrations.
//! - [`export`]: a TDL of the registered workloads and the traffic seen between them.
//! - [`events`]: events that fire by themselves (new dependencies at ingest, the
//!   anomaly watch) and the one event log of `GET /events`.
//! - [`state`]: the shared application state the API serves.
//! - [`metrics`]: the metrics registry (built when the state starts) and its exposition.
//! - [`limits`]: the controller's limits on requests, connections, streams, renders and
//!   agents, and the housekeeping (eviction, one log line per limit reached).

pub mod api;
pub mod auth;
pub mod auth_flags;
pub mod checkpoint;
pub mod compose;
pub mod events;
pub mod export;
pub mod flows;
pub mod hosts;
pub mod limit_flags;
pub mod limits;
pub mod metrics;
pub mod replicas;
pub mod replicas_grpc;
pub mod shard_flags;
pub mod state;
pub mod store_flags;

pub use state::AppState;
