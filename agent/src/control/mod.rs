//! The control plane, agent side: one driver ([`driver::ControlDriver`]) for every kind of
//! desired state, and one [`Reconciler`] per kind that makes its resources real.
//!
//! ```text
//! controller --DesiredState stream--> driver --per kind--> Reconciler::reconcile
//!      ^                                |  ^                       |
//!      +------ ObservedState report ----+  +-- hostevents (netlink) -> Reconciler::drift
//! ```
//!
//! The driver applies what changed between two states, everything at the first state of a
//! stream and every [`driver::RESYNC_EVERY`], and what a host event says was changed behind
//! weft's back (drift) at once. Resources of a kind no reconciler knows are reported
//! `UNSUPPORTED`. A new kind is a new `Resource.spec` case on the wire and a new reconciler
//! registered in `main.rs`; nothing else changes.

pub mod driver;
pub mod state;

use std::path::PathBuf;

use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use weft_proto::v1::resource::Spec;

use crate::hostevents::HostEvent;
use crate::metrics::{Counter, Gauge, register};

/// One resource of the reconciler's kind, as desired.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredResource {
    pub key: String,
    /// The host generation at which its spec last changed.
    pub generation: u64,
    pub spec: Spec,
}

/// What reconciling one resource did and left.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceReport {
    pub key: String,
    /// Why it is not as desired; `None` when it is.
    pub error: Option<String>,
    /// Base units in the names (`readdress_down_seconds`).
    pub measurements: Vec<(String, f64)>,
    /// What is there now, in the kind's own words.
    pub observed: Vec<String>,
    /// Writes made to bring it about (0: it already matched).
    pub changes: usize,
    /// A network node whose hand changes are kept: what it has where that differs from
    /// its spec (drift kept, not repaired).
    pub hand_changes: Option<weft_proto::v1::NodeHandChanges>,
    /// A shadow sink: its comparison of production and shadow so far.
    pub shadow: Option<weft_proto::v1::ShadowReport>,
    /// A network node: its volume snapshots, oldest first.
    pub snapshots: Vec<weft_proto::v1::VolumeSnapshot>,
    /// A network node: the last volume sync done per volume.
    pub syncs: Vec<weft_proto::v1::VolumeSyncDone>,
}

/// Which resources a reconcile must look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every resource read back and repaired; objects weft manages that no resource wants
    /// any more are removed.
    All,
    /// Only resources whose spec changed since their last successful apply (and removed
    /// ones); the others are reported as last time.
    Changed,
    /// These keys, read back and repaired (drift).
    Only(&'a [String]),
}

/// Something a host event says changed under a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub key: String,
    pub what: String,
}

/// Drift a reconciler found by its own means rather than in the host's netlink events
/// (the node firewalls' nftables events): the driver repairs it as it repairs drift found
/// by [`Reconciler::drift`].
#[derive(Debug, Clone)]
pub struct DriftSignal {
    pub kind: &'static str,
    pub drift: Drift,
    /// When the change was seen.
    pub at: std::time::Instant,
}

/// The `what` of a [`DriftSignal`] that is not drift: the reconciler has new counters or
/// findings for the key (a shadow's), and the driver reconciles the key with
/// `Scope::Only` and reports it if its report changed. Nothing is counted as drift.
pub const REFRESH: &str = "refresh";

/// Capacity of the drift signal channel; a signal that does not fit is counted and left
/// to the periodic resync.
pub const DRIFT_SIGNALS: usize = 1024;

/// Makes one kind of resource real on this host.
///
/// Implementations read the current state of what they manage, compute a plan with a pure
/// function (today's address `diff::plan`), apply it, and remember which objects are weft's
/// (kept in the agent's state file, one section per kind) so that objects of resources no
/// longer desired are removed, also after a restart.
pub trait Reconciler: Send + Sync {
    /// The kind's name on the wire (`weft_proto::kinds`).
    fn kind(&self) -> &'static str;

    /// Brings `desired` (every resource of this kind for this host) about, as `scope` says.
    /// Reports every resource looked at, and objects removed because no resource wants
    /// them any more (under their key).
    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>>;

    /// Whether `events` (a burst, in the order they happened) left something this
    /// reconciler manages away from what it last applied; only their net effect counts.
    /// Cheap: answered from memory; the reconcile that follows reads back.
    fn drift(&self, events: &[HostEvent]) -> Vec<Drift>;

    /// Network namespaces whose host events this reconciler needs.
    fn namespaces(&self) -> Vec<PathBuf>;

    /// Keys of the objects weft manages for this kind now.
    fn managed(&self) -> Vec<String>;
}

/// Counters and gauges of the control path (created at start, registered in the agent's
/// registry and passed down like `Metrics`).
#[derive(Default)]
pub struct ControlMetrics {
    pub desired_generation: Gauge,
    pub applied_generation: Gauge,
    pub readdress_total: Counter,
    pub apply_errors_total: Counter,
    pub control_connected: Gauge,
    pub netns_connections: Gauge,
    pub unsupported_resources: Gauge,
    pub managed_objects: Gauge,
    pub drift_detected_total: Counter,
    pub drift_repaired_total: Counter,
    pub drift_repair_failed_total: Counter,
    pub host_events_total: Counter,
    pub host_event_resyncs_total: Counter,
}

impl ControlMetrics {
    /// The metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        register(
            r,
            "weft_agent_desired_generation",
            "Generation of the last desired state received from the controller.",
            m.desired_generation.clone(),
        );
        register(
            r,
            "weft_agent_applied_generation",
            "Generation of the last desired state applied and reported.",
            m.applied_generation.clone(),
        );
        register(
            r,
            "weft_agent_readdress_total",
            "Workload interfaces re-addressed.",
            m.readdress_total.clone(),
        );
        register(
            r,
            "weft_agent_apply_errors_total",
            "Resources whose desired state could not be applied.",
            m.apply_errors_total.clone(),
        );
        register(
            r,
            "weft_agent_control_connected",
            "1 while the desired-state stream from the controller is open.",
            m.control_connected.clone(),
        );
        register(
            r,
            "weft_agent_netns_connections",
            "Netlink connections kept open into workload (and neighbour) namespaces.",
            m.netns_connections.clone(),
        );
        register(
            r,
            "weft_agent_unsupported_resources",
            "Resources of the last desired state of a kind this agent has no reconciler for.",
            m.unsupported_resources.clone(),
        );
        register(
            r,
            "weft_agent_managed_objects",
            "Objects weft manages on this host (all kinds; kept in the state file).",
            m.managed_objects.clone(),
        );
        register(
            r,
            "weft_agent_drift_detected_total",
            "Out-of-band changes to managed objects found by host events and confirmed by a read-back.",
            m.drift_detected_total.clone(),
        );
        register(
            r,
            "weft_agent_drift_repaired_total",
            "Drifted resources brought back to their desired state.",
            m.drift_repaired_total.clone(),
        );
        register(
            r,
            "weft_agent_drift_repair_failed_total",
            "Drifted resources whose repair failed.",
            m.drift_repair_failed_total.clone(),
        );
        // Not `weft_agent_host_events_total`: that is the listener's (`hostevents`), and one
        // name can be one family only.
        register(
            r,
            "weft_agent_control_host_events_total",
            "Netlink host events seen by the control driver.",
            m.host_events_total.clone(),
        );
        register(
            r,
            "weft_agent_host_event_resyncs_total",
            "Full resyncs because host events were lost (overrun or lag).",
            m.host_event_resyncs_total.clone(),
        );
        m
    }
}
