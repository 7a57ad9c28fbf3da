//! How the controller's domains are joined to the control plane: the shard manager's
//! desired addresses become `workload-addresses` resources on the [`ControlHub`], except
//! a network node's, which its network rewrites ([`RoutedAddresses`]). New
//! domains (networks, sampling policies, weave routes) get their adapter here, so neither
//! the domain nor the hub knows the other.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use weft_proto::v1 as wire;

use weft_control::{ControlHub, Spec, kinds};
use weft_shards::publish::{AddressAssignment, AddressPublisher, AddressesApplied};

/// The shard manager's [`AddressPublisher`] on a control hub.
#[derive(Debug, Clone)]
pub struct HubAddresses(pub Arc<ControlHub>);

impl HubAddresses {
    pub fn publisher(hub: Arc<ControlHub>) -> Arc<dyn AddressPublisher> {
        Arc::new(Self(hub))
    }
}

impl AddressPublisher for HubAddresses {
    fn publish(&self, host: &str, workload: &str, mut addresses: Vec<AddressAssignment>) -> u64 {
        if addresses.is_empty() {
            return self.0.withdraw(host, kinds::WORKLOAD_ADDRESSES, workload);
        }
        addresses.sort();
        let spec = Spec::WorkloadAddresses(wire::WorkloadAddresses {
            workload: workload.to_owned(),
            addresses: addresses
                .into_iter()
                .map(|a| wire::AddressAssignment {
                    cidr: a.cidr,
                    gateway: a.gateway,
                    shard_id: a.shard_id,
                    allocation_seq: a.allocation_seq,
                })
                .collect(),
        });
        self.0.publish(host, workload, spec)
    }

    fn generation(&self, host: &str, workload: &str) -> u64 {
        match self.0.resource(host, kinds::WORKLOAD_ADDRESSES, workload) {
            Some(r) => r.generation,
            None => self.0.generation(host),
        }
    }

    fn wait_applied<'a>(
        &'a self,
        host: &'a str,
        workload: &'a str,
        generation: u64,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<AddressesApplied, String>> {
        Box::pin(async move {
            let o = self
                .0
                .wait_applied(
                    host,
                    kinds::WORKLOAD_ADDRESSES,
                    workload,
                    generation,
                    timeout,
                )
                .await
                .map_err(|e| e.to_string())?;
            let down = o
                .measurements
                .get("readdress_down_seconds")
                .copied()
                .unwrap_or(0.0);
            Ok(AddressesApplied {
                readdress_down_us: (down * 1e6).round() as u64,
            })
        })
    }
}

/// The shard manager's publisher when networks exist: a network node's addresses go to
/// its network (which rewrites its `network-node` resource and its peers' firewalls);
/// every other workload's are `workload-addresses`.
#[derive(Debug, Clone)]
pub struct RoutedAddresses {
    pub hub: HubAddresses,
    pub networks: Arc<weft_networks::NetworkManager>,
}

impl RoutedAddresses {
    pub fn publisher(
        hub: Arc<ControlHub>,
        networks: Arc<weft_networks::NetworkManager>,
    ) -> Arc<dyn AddressPublisher> {
        Arc::new(Self {
            hub: HubAddresses(hub),
            networks,
        })
    }
}

impl AddressPublisher for RoutedAddresses {
    fn publish(&self, host: &str, workload: &str, addresses: Vec<AddressAssignment>) -> u64 {
        match self.networks.node_addresses(host, workload, &addresses) {
            Some(generation) => generation,
            None => self.hub.publish(host, workload, addresses),
        }
    }

    fn generation(&self, host: &str, workload: &str) -> u64 {
        match self.networks.node_resource(workload) {
            Some((kind, key)) => match self.hub.0.resource(host, kind, &key) {
                Some(r) => r.generation,
                None => self.hub.0.generation(host),
            },
            None => self.hub.generation(host, workload),
        }
    }

    fn wait_applied<'a>(
        &'a self,
        host: &'a str,
        workload: &'a str,
        generation: u64,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<AddressesApplied, String>> {
        match self.networks.node_resource(workload) {
            None => self.hub.wait_applied(host, workload, generation, timeout),
            Some((kind, key)) => Box::pin(async move {
                self.hub
                    .0
                    .wait_applied(host, kind, &key, generation, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                // A node's interface stays up while its address changes.
                Ok(AddressesApplied {
                    readdress_down_us: 0,
                })
            }),
        }
    }
}
