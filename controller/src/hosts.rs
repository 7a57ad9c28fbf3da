//! What the controller knows of the hypervisors beyond their flows: the underlay address
//! each agent gave at registration, and whether it can make networks.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use weft_control::{ControlHub, kinds};

#[derive(Debug)]
pub struct HostDirectory {
    underlays: DashMap<String, IpAddr>,
    control: Arc<ControlHub>,
}

impl HostDirectory {
    pub fn new(control: Arc<ControlHub>) -> Self {
        Self {
            underlays: DashMap::new(),
            control,
        }
    }

    /// Records `host`'s underlay address (`None`: it has none now); true when it changed
    /// (networks that span the host, and replication to and from it, follow).
    pub fn set_underlay(&self, host: &str, address: Option<IpAddr>) -> bool {
        let before = match address {
            Some(a) => self.underlays.insert(host.to_owned(), a),
            None => self.underlays.remove(host).map(|(_, a)| a),
        };
        before != address
    }
}

impl weft_networks::Hosts for HostDirectory {
    fn underlay(&self, host: &str) -> Option<IpAddr> {
        self.underlays.get(host).map(|a| *a)
    }

    fn network_hosts(&self) -> Vec<String> {
        self.control
            .hosts()
            .into_iter()
            .filter(|h| {
                let k = self.control.kinds(h);
                k.iter().any(|k| k == kinds::NETWORK_NODE)
                    && k.iter().any(|k| k == kinds::NETWORK_SEGMENT)
            })
            .collect()
    }
}
