//! What happens to TDL networks, as CloudEvents (`specversion` 1.0), for
//! `GET /events/networks` and `MirrorService.WatchNetworkEvents`:
//!
//! - `weft.network.created`, `weft.network.updated`, `weft.network.synced` (a mirror took
//!   its source's state), `weft.network.deleted`: from the network manager;
//! - `weft.network.drift.detected` (every drift report of a network resource, repaired,
//!   failed or kept) and `weft.network.drift.repaired` (right after it, when the agent
//!   repaired it): from the control hub's drift reports whose resource is a network's
//!   (`network-segment` key = network id, `network-node` key = `<network>/<node>`);
//! - `weft.network.drift.propagated`: a change made by hand in a source node (kept there,
//!   `data.kept` of its `detected`) taken into the source's desired state and carried to
//!   its mirrors (`data.mirrors`), from the network manager.
//!
//! Live only, from the moment of subscribing. Each source's events come in the order they
//! happened; between the two sources, in the order this subscriber received them.

use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use weft_control::{ControlEvent, DriftRepaired, kinds};
use weft_networks::NetworkEvent;

use crate::state::AppState;

/// `source` of every network event.
pub const SOURCE: &str = "/weft/controller/networks";

/// One network event.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkCloudEvent {
    pub event_type: &'static str,
    pub network: String,
    /// The network id; `<network>/<node>` for a node's drift.
    pub subject: String,
    pub id: String,
    pub time_unix_ns: u64,
    pub data: Value,
}

impl NetworkCloudEvent {
    /// The structured CloudEvent.
    pub fn to_json(&self) -> Value {
        json!({
            "specversion": "1.0",
            "type": self.event_type,
            "source": SOURCE,
            "id": self.id,
            "time": agent_common::time::rfc3339(self.time_unix_ns),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "data": self.data,
        })
    }

    fn new(event_type: &'static str, network: &str, subject: String, at: u64, data: Value) -> Self {
        Self {
            id: format!("{event_type}/{subject}@{at}"),
            event_type,
            network: network.to_owned(),
            subject,
            time_unix_ns: at,
            data,
        }
    }
}

/// A network manager event as its CloudEvent.
pub fn from_network(event: &NetworkEvent) -> NetworkCloudEvent {
    let id = event.network();
    let at = event.at_unix_ns();
    let (event_type, data) = match event {
        NetworkEvent::Created {
            role, hosts, nodes, ..
        } => (
            "weft.network.created",
            json!({ "network": id, "role": role, "hosts": hosts, "nodes": nodes }),
        ),
        NetworkEvent::Updated {
            changes, revision, ..
        } => (
            "weft.network.updated",
            json!({ "network": id, "revision": revision, "changes": changes }),
        ),
        NetworkEvent::Synced {
            source, revision, ..
        } => (
            "weft.network.synced",
            json!({ "network": id, "source": source, "revision": revision }),
        ),
        NetworkEvent::Deleted { .. } => ("weft.network.deleted", json!({ "network": id })),
        NetworkEvent::DriftPropagated {
            node,
            host,
            changes,
            mirrors,
            foreign_rules,
            ..
        } => {
            let data = json!({
                "network": id,
                "node": node,
                "host": host,
                "changes": changes,
                "mirrors": mirrors,
                "foreign_rules": foreign_rules,
            });
            return NetworkCloudEvent::new(
                "weft.network.drift.propagated",
                id,
                format!("{id}/{node}"),
                at,
                data,
            );
        }
    };
    NetworkCloudEvent::new(event_type, id, id.to_owned(), at, data)
}

/// The network and node (`None` for the segment) a resource belongs to, if it is a
/// network's.
pub fn network_of(kind: &str, key: &str) -> Option<(String, Option<String>)> {
    match kind {
        kinds::NETWORK_SEGMENT if !key.is_empty() => Some((key.to_owned(), None)),
        kinds::NETWORK_NODE => {
            let (network, node) = key.split_once('/')?;
            (!network.is_empty() && !node.is_empty())
                .then(|| (network.to_owned(), Some(node.to_owned())))
        }
        _ => None,
    }
}

/// A drift report as network events: `detected`, then `repaired` when it was; nothing
/// when the resource is not a network's.
pub fn from_drift(d: &DriftRepaired) -> Vec<NetworkCloudEvent> {
    let Some((network, node)) = network_of(&d.resource.kind, &d.resource.key) else {
        return Vec::new();
    };
    let subject = match &node {
        Some(n) => format!("{network}/{n}"),
        None => network.clone(),
    };
    let data = json!({
        "network": network,
        "node": node,
        "host": d.host,
        "kind": d.resource.kind,
        "key": d.resource.key,
        "what": d.what,
        "detected_unix_ns": d.detected_unix_ns,
        "repaired_unix_ns": (d.repaired_unix_ns != 0).then_some(d.repaired_unix_ns),
        "error": (!d.error.is_empty()).then_some(d.error.as_str()),
        "kept": d.kept,
    });
    let mut out = vec![NetworkCloudEvent::new(
        "weft.network.drift.detected",
        &network,
        subject.clone(),
        d.detected_unix_ns,
        data.clone(),
    )];
    if d.error.is_empty() && d.repaired_unix_ns != 0 {
        out.push(NetworkCloudEvent::new(
            "weft.network.drift.repaired",
            &network,
            subject,
            d.repaired_unix_ns,
            data,
        ));
    }
    out
}

/// A broadcast receiver as a stream; a lagging subscriber skips what it missed.
fn live<T: Clone + Send + 'static>(receiver: broadcast::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

/// Network events from now on, of `network` only when given. Subscribes before it
/// returns: nothing that happens after the call is missed.
pub fn subscribe(
    state: &AppState,
    network: Option<String>,
) -> impl Stream<Item = NetworkCloudEvent> + Send + use<> {
    let lifecycle = live(state.networks.subscribe()).map(|e| vec![from_network(&e)]);
    let drift = live(state.control.subscribe()).map(|e| match e {
        ControlEvent::Drift(d) => from_drift(&d),
        ControlEvent::Unsupported { .. } => Vec::new(),
    });
    futures::stream::select(lifecycle, drift)
        .flat_map(futures::stream::iter)
        .filter(move |e| {
            let keep = network.as_ref().is_none_or(|n| *n == e.network);
            std::future::ready(keep)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_control::ResourceKey;

    fn drift(kind: &str, key: &str, repaired: u64, error: &str) -> DriftRepaired {
        DriftRepaired {
            host: "hv1".into(),
            resource: ResourceKey::new(kind, key),
            what: "veth down".into(),
            detected_unix_ns: 10,
            repaired_unix_ns: repaired,
            error: error.into(),
            kept: false,
        }
    }

    #[test]
    fn drift_of_network_resources_becomes_detected_then_repaired() {
        let e = from_drift(&drift(kinds::NETWORK_NODE, "shop/web", 20, ""));
        let types: Vec<_> = e.iter().map(|e| e.event_type).collect();
        assert_eq!(
            types,
            ["weft.network.drift.detected", "weft.network.drift.repaired"]
        );
        assert_eq!(e[0].subject, "shop/web");
        assert_eq!(e[0].data["node"], "web");
        assert_eq!(e[1].time_unix_ns, 20);
        assert_ne!(e[0].id, e[1].id);

        let failed = from_drift(&drift(kinds::NETWORK_SEGMENT, "shop", 0, "no bridge"));
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].network, "shop");
        assert_eq!(failed[0].data["node"], Value::Null);
        assert_eq!(failed[0].data["error"], "no bridge");

        assert!(from_drift(&drift(kinds::WORKLOAD_ADDRESSES, "shop/web", 20, "")).is_empty());
        assert!(from_drift(&drift(kinds::NETWORK_NODE, "shop", 20, "")).is_empty());
        assert!(from_drift(&drift(kinds::NETWORK_NODE, "/web", 20, "")).is_empty());
    }
}
