//! The address realizer as the reconciler of kind `workload-addresses` (key: workload).

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use weft_proto::kinds::WORKLOAD_ADDRESSES;
use weft_proto::v1::resource::Spec;

use super::{Applied, DesiredWorkload, Realizer};
use crate::control::{ControlMetrics, DesiredResource, Drift, Reconciler, ResourceReport, Scope};
use crate::hostevents::HostEvent;

pub struct AddressReconciler {
    pub realizer: Arc<Realizer>,
    pub metrics: Arc<ControlMetrics>,
}

fn report(a: Applied) -> ResourceReport {
    let mut observed: Vec<String> = a.addresses.iter().map(ToString::to_string).collect();
    observed.push(if a.link_up {
        "link up".into()
    } else {
        "link down".into()
    });
    ResourceReport {
        key: a.workload,
        error: a.error,
        measurements: a
            .readdress_down
            .map(|d| ("readdress_down_seconds".to_owned(), d.as_secs_f64()))
            .into_iter()
            .collect(),
        observed,
        changes: a.changes,
        ..Default::default()
    }
}

impl Reconciler for AddressReconciler {
    fn kind(&self) -> &'static str {
        WORKLOAD_ADDRESSES
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let mut workloads = Vec::with_capacity(desired.len());
            let mut refused = Vec::new();
            for r in desired {
                if let Scope::Only(keys) = scope
                    && !keys.contains(&r.key)
                {
                    continue;
                }
                let Spec::WorkloadAddresses(w) = &r.spec else {
                    refused.push(ResourceReport {
                        key: r.key.clone(),
                        error: Some("the spec is not a workload's addresses".into()),
                        ..Default::default()
                    });
                    continue;
                };
                if w.workload != r.key {
                    refused.push(ResourceReport {
                        key: r.key.clone(),
                        error: Some(format!(
                            "the resource key {:?} is not its workload {:?}",
                            r.key, w.workload
                        )),
                        ..Default::default()
                    });
                    continue;
                }
                match DesiredWorkload::try_from(w) {
                    Ok(d) => workloads.push(d),
                    Err(e) => refused.push(ResourceReport {
                        key: r.key.clone(),
                        error: Some(e.to_string()),
                        ..Default::default()
                    }),
                }
            }
            let applied = match scope {
                Scope::All => self.realizer.apply(workloads).await,
                Scope::Changed => self.realizer.apply_changed(workloads).await,
                Scope::Only(_) => self.realizer.repair(workloads).await,
            };
            self.metrics
                .netns_connections
                .set(self.realizer.open_connections() as u64);
            let mut out: Vec<ResourceReport> = applied.into_iter().map(report).collect();
            out.extend(refused);
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }

    fn drift(&self, events: &[HostEvent]) -> Vec<Drift> {
        self.realizer
            .drifted(events)
            .into_iter()
            .map(|(key, what)| Drift { key, what })
            .collect()
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        self.realizer.namespaces()
    }

    fn managed(&self) -> Vec<String> {
        self.realizer.managed_workloads()
    }
}
