//! The `weft.v1` wire types and gRPC stubs. Wire types stop at the API edge: the agent and
//! the controller convert them into their own domain types with `TryFrom`.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}

/// Resource kinds of the control path (`weft.v1.Resource.kind`): one name per `spec` case,
/// shared by the controller that publishes them and the agents that reconcile them.
pub mod kinds {
    use super::v1::resource::Spec;

    /// A workload's addresses (`WorkloadAddresses`), keyed by workload name.
    pub const WORKLOAD_ADDRESSES: &str = "workload-addresses";
    /// A network's bridge and VXLAN device on a host (`NetworkSegment`), keyed by network id.
    pub const NETWORK_SEGMENT: &str = "network-segment";
    /// A node of a network (`NetworkNode`), keyed by `<network id>/<node name>`.
    pub const NETWORK_NODE: &str = "network-node";

    /// The kind name of a spec case.
    pub fn of(spec: &Spec) -> &'static str {
        match spec {
            Spec::WorkloadAddresses(_) => WORKLOAD_ADDRESSES,
            Spec::NetworkSegment(_) => NETWORK_SEGMENT,
            Spec::NetworkNode(_) => NETWORK_NODE,
        }
    }
}
