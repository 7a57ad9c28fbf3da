//! The controller's edges: gRPC for agents, HTTP for people and Prometheus. Wire types are
//! converted into domain types here and go no further.

pub mod analytics_routes;
pub mod console;
pub mod control_routes;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod grpc_topology;
pub mod history_routes;
pub mod http;
pub mod limits;
pub mod network_events;
pub mod networks_grpc;
pub mod networks_routes;
pub mod observations;
pub mod openapi;
pub mod problem;
pub mod query;
pub mod replica_routes;
pub mod shadow_events;
pub mod shadows_grpc;
pub mod shadows_routes;
pub mod shards_grpc;
pub mod shards_routes;
pub mod sse;
pub mod timeseries_routes;
pub mod token_routes;
pub mod views;
pub mod weave_events;
pub mod weaves_grpc;
pub mod weaves_routes;

pub use error::ApiError;
