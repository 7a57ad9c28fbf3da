//! The controller's edges: gRPC for agents, HTTP for people and Prometheus. Wire types are
//! converted into domain types here and go no further.

pub mod error;
pub mod grpc;
pub mod http;

pub use error::ApiError;
