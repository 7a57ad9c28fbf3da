//! The `weft.v1` wire types and gRPC stubs. Wire types stop at the API edge: the agent and
//! the controller convert them into their own domain types with `TryFrom`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
