//! weft's controller: ingests flow records from agents, holds the topology, and serves it
//! over gRPC (agents), REST and `/metrics`.
//!
//! - [`model`]: domain types, converted from the wire types at the API edge.
//! - [`registry`]: registered agents and their workloads.
//! - [`topology`]: services and dependencies built from observations.
//! - [`render`]: the topology as ASCII, Graphviz DOT or JSON.
//! - [`metrics`]: controller counters and the Prometheus text exposition.
//! - [`api`]: the gRPC agent service and the HTTP router.

pub mod analytics;
pub mod api;
pub mod compose;
pub mod control;
pub mod import;
pub mod glob;
pub mod history;
pub mod mapper;
pub mod metrics;
pub mod model;
pub mod observation;
pub mod registry;
pub mod shards;
pub mod render;
pub mod state;
pub mod store;
pub mod time;
pub mod topology;

pub use state::AppState;
