//! The `shadow-tap` kind (key `<shadow>/<node>`): a tap on the production node's
//! host-side interface, as [`super::tap::TapEngine`] makes it.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use weft_proto::v1::resource::Spec;

use super::tap::TapEngine;
use super::tap_policy::TapSpec;
use crate::control::{DesiredResource, Drift, Reconciler, ResourceReport, Scope};
use crate::hostevents::{Change, HostEvent};
use crate::networks::names;

pub struct ShadowTapReconciler {
    pub engine: Arc<TapEngine>,
    /// The nodes' supervisor: the production node's cgroup usage goes into the report
    /// (`production_cpu_seconds`, ...), the evidence of a shadow's scaling recommendations.
    pub supervisor: Option<Arc<weft_noderun::Supervisor>>,
}

/// A node's cgroup usage as measurements named `<prefix>_cpu_seconds`, ... (the names the
/// controller's scaling reads).
pub fn usage_measurements(prefix: &str, u: &weft_noderun::Usage) -> Vec<(String, f64)> {
    let mut out = vec![
        (format!("{prefix}_cpu_seconds"), u.cpu_seconds),
        (format!("{prefix}_cpu_periods"), u.cpu_periods as f64),
        (
            format!("{prefix}_cpu_throttled_periods"),
            u.cpu_throttled_periods as f64,
        ),
        (
            format!("{prefix}_cpu_throttled_seconds"),
            u.cpu_throttled_seconds,
        ),
        (format!("{prefix}_memory_bytes"), u.memory_bytes as f64),
        (
            format!("{prefix}_memory_limit_hits"),
            u.memory_limit_hits as f64,
        ),
    ];
    if let Some(limit) = u.memory_limit_bytes {
        out.push((format!("{prefix}_memory_limit_bytes"), limit as f64));
    }
    out
}

/// The index of interface `name` in the agent's namespace.
fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

impl ShadowTapReconciler {
    fn one(&self, r: &DesiredResource) -> ResourceReport {
        let fail = |e: String| ResourceReport {
            key: r.key.clone(),
            error: Some(e),
            measurements: self.engine.measurements(&r.key).unwrap_or_default(),
            ..Default::default()
        };
        let spec = match &r.spec {
            Spec::ShadowTap(t) => match TapSpec::from_wire(&r.key, t) {
                Ok(s) => s,
                Err(e) => return fail(e),
            },
            _ => return fail("the spec is not a shadow tap".into()),
        };
        let interface = names::host_veth(&spec.network, &spec.node);
        let Some(ifindex) = ifindex_of(&interface) else {
            return fail(format!(
                "the host interface {interface} of node {}.{} does not exist (is the node made on this host?)",
                spec.network, spec.node
            ));
        };
        let usage = self
            .supervisor
            .as_ref()
            .and_then(|s| s.usage(&format!("{}/{}", spec.network, spec.node)))
            .map(|u| usage_measurements("production", &u))
            .unwrap_or_default();
        match self.engine.apply(&r.key, &interface, ifindex, &spec) {
            Ok(changes) => ResourceReport {
                key: r.key.clone(),
                measurements: {
                    let mut m = self.engine.refresh(&r.key).unwrap_or_default();
                    m.extend(usage);
                    m
                },
                observed: vec![
                    format!(
                        "tap on {interface} ({}.{}, ifindex {ifindex})",
                        spec.network, spec.node
                    ),
                    format!(
                        "share {} ppm by {}, sinks {}",
                        spec.policy.share_ppm,
                        if spec.policy.key == agent_common::shadow::key_kind::SOURCE {
                            "source"
                        } else {
                            "connection"
                        },
                        spec.sinks
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ],
                changes,
                ..Default::default()
            },
            Err(e) => fail(e.to_string()),
        }
    }
}

impl Reconciler for ShadowTapReconciler {
    fn kind(&self) -> &'static str {
        weft_proto::kinds::SHADOW_TAP
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let in_scope = |k: &str| match scope {
                Scope::Only(keys) => keys.iter().any(|x| x == k),
                _ => true,
            };
            let mut out: Vec<ResourceReport> = desired
                .iter()
                .filter(|r| in_scope(&r.key))
                .map(|r| self.one(r))
                .collect();
            for key in self.engine.keys() {
                if in_scope(&key) && !desired.iter().any(|r| r.key == key) {
                    self.engine.remove(&key);
                    out.push(ResourceReport {
                        key,
                        observed: vec!["tap removed".into()],
                        changes: 1,
                        ..Default::default()
                    });
                }
            }
            if matches!(scope, Scope::All) {
                // Every wanted tap has claimed what a previous agent left pinned: the rest
                // goes, and the ring is read from now on.
                self.engine.finish_adoption();
            }
            out
        })
    }

    /// The tapped interface went away or came back: reconcile its tap.
    fn drift(&self, events: &[HostEvent]) -> Vec<Drift> {
        let mut out: Vec<Drift> = Vec::new();
        for key in self.engine.keys() {
            let Some((name, index)) = self.engine.interface_of(&key) else {
                continue;
            };
            let hit = events.iter().any(|e| {
                e.netns.is_none()
                    && match &e.change {
                        Change::LinkDel { ifindex, .. } => *ifindex == index,
                        Change::LinkNew {
                            ifindex, name: n, ..
                        } => *n == name && *ifindex != index,
                        _ => false,
                    }
            });
            if hit && !out.iter().any(|d| d.key == key) {
                out.push(Drift {
                    key,
                    what: format!("tapped interface {name} changed"),
                });
            }
        }
        out
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn managed(&self) -> Vec<String> {
        self.engine.keys()
    }
}
