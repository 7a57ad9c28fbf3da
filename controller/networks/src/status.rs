//! Desired against applied, per host, of one network (as OVN's nb_cfg/hv_cfg).

use serde::Serialize;
use weft_control::{ControlHub, ResourceKey, ResourceStatus};

use crate::record::{NetworkRecord, Role};

#[derive(Debug, Clone, Serialize)]
pub struct NetworkStatus {
    pub network: String,
    /// `source` or `mirror`.
    pub role: &'static str,
    /// The mirror's source network, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub revision: u64,
    pub vni: u32,
    /// Every host applied every resource of this network.
    pub in_sync: bool,
    /// A mirror: when it last took its source's state (unix ns; 0: never).
    pub last_sync_unix_ns: u64,
    pub hosts: Vec<HostNetworkStatus>,
    /// A source: what happens to changes made by hand in its nodes (`propagate`,
    /// `repair`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_drift: Option<&'static str>,
    /// Hand changes in force, by node (a mirror's are its source's).
    pub hand_changes: std::collections::BTreeMap<String, crate::record::HandChanges>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostNetworkStatus {
    pub host: String,
    /// The host generation that carries this network's current resources.
    pub desired_generation: u64,
    /// The generation the host's agent last reported as processed.
    pub applied_generation: u64,
    pub applied: bool,
    pub resources: Vec<ResourceStatusView>,
    /// Drift found and repaired (or not) on this network's resources, oldest first.
    pub drift: Vec<DriftView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceStatusView {
    pub kind: String,
    pub key: String,
    /// `applied`, `pending`, `failed`, `unsupported`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub observed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftView {
    pub kind: String,
    pub key: String,
    pub what: String,
    pub detected_unix_ns: u64,
    /// 0: the repair failed (`error` says why), or the change was kept.
    pub repaired_unix_ns: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Kept and propagated to the mirrors, not repaired.
    pub kept: bool,
}

pub(crate) fn of(
    rec: &NetworkRecord,
    hub: &ControlHub,
    owns: impl Fn(&ResourceKey) -> bool,
) -> NetworkStatus {
    let mut hosts = Vec::new();
    for host in rec.hosts() {
        let Some(st) = hub.status(&host) else {
            continue;
        };
        let mine: Vec<_> = st.resources.iter().filter(|r| owns(&r.resource)).collect();
        let desired_generation = mine
            .iter()
            .filter_map(|r| r.desired_generation)
            .max()
            .unwrap_or(0);
        let resources: Vec<ResourceStatusView> = mine
            .iter()
            .filter(|r| r.desired_generation.is_some())
            .map(|r| {
                let (state, error, observed) = match &r.observed {
                    _ if r.applied() => (
                        "applied",
                        String::new(),
                        r.observed
                            .as_ref()
                            .map(|o| o.observed.clone())
                            .unwrap_or_default(),
                    ),
                    Some(o) if o.status == ResourceStatus::Failed => {
                        ("failed", o.error.clone(), o.observed.clone())
                    }
                    Some(o) if o.status == ResourceStatus::Unsupported => {
                        ("unsupported", o.error.clone(), Vec::new())
                    }
                    Some(o) => ("pending", String::new(), o.observed.clone()),
                    None => ("pending", String::new(), Vec::new()),
                };
                ResourceStatusView {
                    kind: r.resource.kind.clone(),
                    key: r.resource.key.clone(),
                    state,
                    error,
                    observed,
                }
            })
            .collect();
        let applied = resources.iter().all(|r| r.state == "applied");
        let drift = st
            .drift
            .iter()
            .filter(|d| owns(&d.resource))
            .map(|d| DriftView {
                kind: d.resource.kind.clone(),
                key: d.resource.key.clone(),
                what: d.what.clone(),
                detected_unix_ns: d.detected_unix_ns,
                repaired_unix_ns: d.repaired_unix_ns,
                error: d.error.clone(),
                kept: d.kept,
            })
            .collect();
        hosts.push(HostNetworkStatus {
            host,
            desired_generation,
            applied_generation: st.applied_generation,
            applied,
            resources,
            drift,
        });
    }
    let (role, source) = match &rec.role {
        Role::Source => ("source", None),
        Role::Mirror { source } => ("mirror", source.clone()),
        Role::Weave { environment, .. } => ("weave", Some(environment.clone())),
    };
    NetworkStatus {
        network: rec.id.clone(),
        role,
        source,
        revision: rec.revision,
        vni: rec.vni,
        in_sync: hosts.iter().all(|h| h.applied),
        last_sync_unix_ns: rec.synced_unix_ns,
        hosts,
        source_drift: (rec.role == Role::Source).then(|| rec.source_drift.as_str()),
        hand_changes: rec.hand_changes.clone(),
    }
}
