//! A fake agent on the hub itself, for tests of the domains that publish through it (no
//! sockets, no dataplane): it "applies" every resource of the kinds it knows at once and
//! reports the rest as not understood, as a real agent does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::{ControlHub, HostObserved, ResourceObserved, ResourceStatus, Spec};

/// How a fake agent behaves.
#[derive(Debug, Clone)]
pub struct FakeAgent {
    /// Kinds it has a reconciler for; `None`: every kind.
    pub kinds: Option<BTreeSet<String>>,
    /// Reported as `readdress_down_seconds` for address resources.
    pub readdress_down_us: u64,
    /// Waited after each change before reporting (an agent that is slow to apply).
    pub delay: std::time::Duration,
    /// Every known resource fails with this error (an agent that cannot apply anything).
    pub fail: Option<String>,
    /// Reported as the measurements of every `shadow-tap` (its counters).
    pub tap_measurements: BTreeMap<String, f64>,
    /// Reported as the measurements of every `shadow-sink`.
    pub sink_measurements: BTreeMap<String, f64>,
    /// Reported as every `shadow-sink`'s comparison of production and shadow.
    pub sink_report: Option<weft_proto::v1::ShadowReport>,
    /// Reported as the measurements of every `steer` (its counters, failover state).
    pub steer_measurements: BTreeMap<String, f64>,
    /// Answers network nodes' volume snapshots and syncs as an agent with volumes does: a
    /// snapshot for each `snapshots.generation` asked for, a sync done for each
    /// `sync_from` generation; what it (or a test) reported before is kept.
    pub volumes: bool,
}

impl Default for FakeAgent {
    fn default() -> Self {
        Self {
            kinds: None,
            readdress_down_us: 300,
            delay: std::time::Duration::ZERO,
            fail: None,
            tap_measurements: BTreeMap::new(),
            sink_measurements: BTreeMap::new(),
            sink_report: None,
            steer_measurements: BTreeMap::new(),
            volumes: false,
        }
    }
}

impl FakeAgent {
    /// The report of one desired state.
    pub fn observe(&self, hub: &ControlHub, host: &str) -> HostObserved {
        let desired = hub.desired(host);
        let before = hub.observed(host);
        let resources = desired
            .resources
            .iter()
            .map(|(rk, r)| {
                let known = self.kinds.as_ref().is_none_or(|k| k.contains(&rk.kind));
                let mut o = ResourceObserved {
                    generation: r.generation,
                    ..Default::default()
                };
                if !known {
                    o.status = ResourceStatus::Unsupported;
                    o.error = format!("no reconciler for kind {:?}", rk.kind);
                } else if let Some(error) = &self.fail {
                    o.status = ResourceStatus::Failed;
                    o.error = error.clone();
                } else {
                    match &r.spec {
                        Spec::WorkloadAddresses(w) => {
                            o.observed = w.addresses.iter().map(|a| a.cidr.clone()).collect();
                            o.measurements.insert(
                                "readdress_down_seconds".into(),
                                self.readdress_down_us as f64 / 1e6,
                            );
                        }
                        Spec::NetworkNode(n) => {
                            o.observed = vec!["applied".into()];
                            if self.volumes {
                                let prev = before.resources.get(rk);
                                (o.snapshots, o.syncs) = volumes(n, prev);
                            }
                        }
                        Spec::NetworkSegment(_) | Spec::SteerTarget(_) => {
                            o.observed = vec!["applied".into()];
                        }
                        Spec::Steer(_) => {
                            o.observed = vec!["applied".into()];
                            o.measurements = self.steer_measurements.clone();
                        }
                        Spec::ShadowTap(_) => {
                            o.observed = vec!["applied".into()];
                            o.measurements = self.tap_measurements.clone();
                        }
                        Spec::ShadowSink(_) => {
                            o.observed = vec!["applied".into()];
                            o.measurements = self.sink_measurements.clone();
                            o.shadow = self.sink_report.clone();
                        }
                    }
                }
                (rk.clone(), o)
            })
            .collect();
        HostObserved {
            epoch: desired.epoch,
            applied_generation: desired.generation,
            resources,
            reported_at: Some(Instant::now()),
        }
    }

    /// Runs on `host` until the returned handle is aborted: reports every desired state.
    pub fn spawn(self, hub: Arc<ControlHub>, host: &str) -> tokio::task::JoinHandle<()> {
        let host = host.to_owned();
        if let Some(k) = &self.kinds {
            hub.announce(&host, k.iter().cloned().collect());
        }
        tokio::spawn(async move {
            let mut rx = hub.watch(&host);
            loop {
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                rx.borrow_and_update();
                hub.report(&host, self.observe(&hub, &host));
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// A node's snapshots and syncs after applying `n`, given its last report.
fn volumes(
    n: &weft_proto::v1::NetworkNode,
    prev: Option<&ResourceObserved>,
) -> (
    Vec<weft_proto::v1::VolumeSnapshot>,
    Vec<weft_proto::v1::VolumeSyncDone>,
) {
    let mut snapshots = prev.map(|p| p.snapshots.clone()).unwrap_or_default();
    let mut syncs = prev.map(|p| p.syncs.clone()).unwrap_or_default();
    if let Some(s) = &n.snapshots
        && s.generation > 0
        && !snapshots.iter().any(|x| x.generation == s.generation)
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        snapshots.push(weft_proto::v1::VolumeSnapshot {
            id: format!("s-{now}-{}", s.generation),
            taken_unix_ns: now,
            generation: s.generation,
            volumes: n
                .runtime
                .iter()
                .flat_map(|r| r.volumes.iter().map(|v| v.name.clone()))
                .collect(),
            method: "copy".into(),
            took_seconds: 0.01,
        });
    }
    for f in &n.sync_from {
        if !syncs
            .iter()
            .any(|d| d.volume == f.volume && d.generation >= f.generation)
        {
            syncs.retain(|d| d.volume != f.volume);
            syncs.push(weft_proto::v1::VolumeSyncDone {
                volume: f.volume.clone(),
                generation: f.generation,
                took_seconds: 0.02,
                method: "copy".into(),
            });
        }
    }
    (snapshots, syncs)
}
