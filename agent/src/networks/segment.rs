//! The reconciler of kind `network-segment`: a network's bridge and VXLAN device.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use weft_proto::kinds::NETWORK_SEGMENT;
use weft_proto::v1::resource::Spec;

use super::links::{self, LinkError};
use super::spec::SegmentSpec;
use super::{Networks, SegmentObjects, lock, names};
use crate::control::{DesiredResource, Drift, Reconciler, ResourceReport, Scope};
use crate::hostevents::{Change, HostEvent};

pub struct SegmentReconciler {
    pub networks: Arc<Networks>,
}

impl Networks {
    /// Brings one segment about; returns what is there now and how many writes it took.
    async fn ensure_segment(&self, s: &SegmentSpec) -> Result<(Vec<String>, usize), LinkError> {
        let h = &self.host;
        let bridge_name = names::bridge(&s.network);
        let vxlan_name = names::vxlan(&s.network);
        // Known before the first write: a failure half-way still leaves it removable.
        lock(&self.segments).insert(
            s.network.clone(),
            SegmentObjects {
                bridge: bridge_name.clone(),
                vxlan: s.vxlan.as_ref().map(|_| vxlan_name.clone()),
            },
        );
        let mut changes = 0;
        let bridge = match links::by_name(h, &bridge_name).await? {
            Some(l) => {
                if !l.up || l.mtu != s.mtu {
                    links::set(h, l.index, &bridge_name, true, Some(s.mtu), None).await?;
                    changes += 1;
                }
                l.index
            }
            None => {
                links::add_bridge(h, &bridge_name, s.mtu).await?;
                changes += 1;
                created(h, &bridge_name).await?
            }
        };
        let mut observed = vec![format!("bridge {bridge_name} up mtu {}", s.mtu)];
        let existing = links::by_name(h, &vxlan_name).await?;
        match &s.vxlan {
            None => {
                if let Some(l) = existing {
                    links::delete(h, l.index, &vxlan_name).await?;
                    changes += 1;
                }
            }
            Some(v) => {
                let existing = match existing {
                    Some(l) if l.vni != Some(v.vni) || l.local != Some(v.local) => {
                        links::delete(h, l.index, &vxlan_name).await?;
                        changes += 1;
                        None
                    }
                    other => other,
                };
                let index = match existing {
                    Some(l) => {
                        if !l.up || l.mtu != s.mtu || l.controller != Some(bridge) {
                            links::set(h, l.index, &vxlan_name, true, Some(s.mtu), Some(bridge))
                                .await?;
                            changes += 1;
                        }
                        l.index
                    }
                    None => {
                        links::add_vxlan(h, &vxlan_name, v, s.mtu, bridge).await?;
                        changes += 1;
                        created(h, &vxlan_name).await?
                    }
                };
                let have = links::flood_peers(h, index).await?;
                for p in v.peers.iter().filter(|p| !have.contains(p)) {
                    links::add_flood_peer(h, index, *p).await?;
                    changes += 1;
                }
                for p in have.iter().filter(|p| !v.peers.contains(p)) {
                    links::del_flood_peer(h, index, *p).await?;
                    changes += 1;
                }
                let peers: Vec<String> = v.peers.iter().map(ToString::to_string).collect();
                observed.push(format!(
                    "vxlan {vxlan_name} vni {} local {} peers [{}]",
                    v.vni,
                    v.local,
                    peers.join(", ")
                ));
            }
        }
        Ok((observed, changes))
    }

    async fn remove_segment(&self, key: &str, o: &SegmentObjects) -> Result<usize, LinkError> {
        let mut changes = 0;
        for name in o.vxlan.iter().chain(std::iter::once(&o.bridge)) {
            if let Some(l) = links::by_name(&self.host, name).await? {
                links::delete(&self.host, l.index, name).await?;
                changes += 1;
            }
        }
        lock(&self.segments).remove(key);
        Ok(changes)
    }
}

/// The index of a link just created.
pub(super) async fn created(h: &rtnetlink::Handle, name: &str) -> Result<u32, LinkError> {
    match links::by_name(h, name).await? {
        Some(l) => Ok(l.index),
        None => Err(LinkError {
            op: format!("reading link {name} after creating it"),
            source: rtnetlink::Error::RequestFailed,
        }),
    }
}

impl Reconciler for SegmentReconciler {
    fn kind(&self) -> &'static str {
        NETWORK_SEGMENT
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let net = &self.networks;
            let mut out = Vec::new();
            for r in desired {
                if let Scope::Only(keys) = scope
                    && !keys.contains(&r.key)
                {
                    continue;
                }
                let spec = match &r.spec {
                    Spec::NetworkSegment(s) if s.network == r.key => SegmentSpec::try_from(s),
                    Spec::NetworkSegment(s) => Err(format!(
                        "the resource key {:?} is not its network {:?}",
                        r.key, s.network
                    )),
                    _ => Err("the spec is not a network segment".into()),
                };
                let report = match spec {
                    Err(e) => ResourceReport {
                        key: r.key.clone(),
                        error: Some(e),
                        ..Default::default()
                    },
                    Ok(s) => match net.ensure_segment(&s).await {
                        Ok((observed, changes)) => ResourceReport {
                            key: r.key.clone(),
                            observed,
                            changes,
                            ..Default::default()
                        },
                        Err(e) => ResourceReport {
                            key: r.key.clone(),
                            error: Some(e.to_string()),
                            ..Default::default()
                        },
                    },
                };
                out.push(report);
            }
            if !matches!(scope, Scope::Only(_)) {
                let gone: Vec<(String, SegmentObjects)> = lock(&net.segments)
                    .iter()
                    .filter(|(k, _)| !desired.iter().any(|r| &r.key == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (key, o) in gone {
                    let report = match net.remove_segment(&key, &o).await {
                        Ok(changes) => ResourceReport {
                            key,
                            changes,
                            observed: vec!["removed".into()],
                            ..Default::default()
                        },
                        Err(e) => ResourceReport {
                            key,
                            error: Some(format!("removing: {e}")),
                            ..Default::default()
                        },
                    };
                    out.push(report);
                }
            }
            net.save(NETWORK_SEGMENT).await;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }

    fn drift(&self, events: &[HostEvent]) -> Vec<Drift> {
        let segments = lock(&self.networks.segments);
        let mut out: Vec<Drift> = Vec::new();
        for e in events.iter().filter(|e| e.netns.is_none()) {
            let (name, what) = match &e.change {
                Change::LinkDel { name, .. } => (name, format!("{name} deleted")),
                Change::LinkNew {
                    name, up: false, ..
                } => (name, format!("{name} set down")),
                _ => continue,
            };
            for (key, o) in segments.iter() {
                if &o.bridge == name || o.vxlan.as_ref() == Some(name) {
                    out.retain(|d| &d.key != key);
                    out.push(Drift {
                        key: key.clone(),
                        what: what.clone(),
                    });
                }
            }
        }
        out
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn managed(&self) -> Vec<String> {
        lock(&self.networks.segments).keys().cloned().collect()
    }
}
