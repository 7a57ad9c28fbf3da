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
    /// Shadow sampling on a production node's host (`ShadowTap`), keyed by
    /// `<shadow id>/<node name>`.
    pub const SHADOW_TAP: &str = "shadow-tap";
    /// Replay into a shadow's nodes on their host (`ShadowSink`), keyed by
    /// `<shadow id>/<node name>`.
    pub const SHADOW_SINK: &str = "shadow-sink";
    /// New connections to a node steered to another node with its addresses (`Steer`), on
    /// the origin's host, keyed by `<owner>/<node name>`.
    pub const STEER: &str = "steer";
    /// The target side of a steer on another host (`SteerTarget`), same key.
    pub const STEER_TARGET: &str = "steer-target";

    /// The kind name of a spec case.
    pub fn of(spec: &Spec) -> &'static str {
        match spec {
            Spec::WorkloadAddresses(_) => WORKLOAD_ADDRESSES,
            Spec::NetworkSegment(_) => NETWORK_SEGMENT,
            Spec::NetworkNode(_) => NETWORK_NODE,
            Spec::ShadowTap(_) => SHADOW_TAP,
            Spec::ShadowSink(_) => SHADOW_SINK,
            Spec::Steer(_) => STEER,
            Spec::SteerTarget(_) => STEER_TARGET,
        }
    }
}
