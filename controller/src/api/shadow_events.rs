//! What happens to shadows, as CloudEvents (`specversion` 1.0), for `GET /events/shadows`
//! and `ShadowService.WatchShadowEvents`: `weft.shadow.created`,
//! `weft.shadow.policy.changed`, `weft.shadow.degraded` (a tap or sink failed, or a host
//! has no underlay address: `data.error` says which) and `weft.shadow.deleted`, from the
//! shadow manager. Live only, from the moment of subscribing, in the order they happened.

use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use weft_shadows::ShadowEvent;

use crate::state::AppState;

/// `source` of every shadow event.
pub const SOURCE: &str = "/weft/controller/shadows";

/// One shadow event.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowCloudEvent {
    pub event_type: &'static str,
    /// The shadow id (also the subject).
    pub shadow: String,
    pub id: String,
    pub time_unix_ns: u64,
    pub data: Value,
}

impl ShadowCloudEvent {
    /// The structured CloudEvent.
    pub fn to_json(&self) -> Value {
        json!({
            "specversion": "1.0",
            "type": self.event_type,
            "source": SOURCE,
            "id": self.id,
            "time": agent_common::time::rfc3339(self.time_unix_ns),
            "subject": self.shadow,
            "datacontenttype": "application/json",
            "data": self.data,
        })
    }

    /// The gRPC form.
    pub fn to_wire(&self) -> weft_proto::v1::CloudEvent {
        weft_proto::v1::CloudEvent {
            specversion: "1.0".into(),
            r#type: self.event_type.into(),
            source: SOURCE.into(),
            id: self.id.clone(),
            time: agent_common::time::rfc3339(self.time_unix_ns),
            subject: self.shadow.clone(),
            data_json: self.data.to_string(),
        }
    }
}

/// A shadow manager event as its CloudEvent.
pub fn from_shadow(event: &ShadowEvent) -> ShadowCloudEvent {
    let id = event.shadow();
    let at = event.at_unix_ns();
    let (event_type, data) = match event {
        ShadowEvent::Created {
            production,
            networks,
            nodes,
            hosts,
            policy,
            ..
        } => (
            "weft.shadow.created",
            json!({
                "shadow": id,
                "production": production,
                "networks": networks,
                "nodes": nodes,
                "hosts": hosts,
                "policy": policy,
            }),
        ),
        ShadowEvent::PolicyChanged {
            policy, revision, ..
        } => (
            "weft.shadow.policy.changed",
            json!({ "shadow": id, "policy": policy, "revision": revision }),
        ),
        ShadowEvent::Degraded { error, .. } => (
            "weft.shadow.degraded",
            json!({ "shadow": id, "error": error }),
        ),
        ShadowEvent::Deleted { .. } => ("weft.shadow.deleted", json!({ "shadow": id })),
        ShadowEvent::SyntheticAsked {
            multiplier,
            duration_seconds,
            generation,
            ..
        } => (
            "weft.shadow.synthetic.asked",
            json!({
                "shadow": id,
                "multiplier": multiplier,
                "duration_seconds": duration_seconds,
                "generation": generation,
            }),
        ),
        ShadowEvent::ScalingRecommended { view, .. } => (
            "weft.shadow.scaling.recommended",
            json!({ "shadow": id, "recommendation": view }),
        ),
        ShadowEvent::ScalingApplied { view, .. } => (
            "weft.shadow.scaling.applied",
            json!({ "shadow": id, "recommendation": view }),
        ),
        ShadowEvent::Failover {
            node,
            active,
            switch_seconds,
            ..
        } => (
            if *active {
                "weft.shadow.failover.activated"
            } else {
                "weft.shadow.failover.recovered"
            },
            json!({ "shadow": id, "node": node, "switch_seconds": switch_seconds }),
        ),
    };
    let id_suffix = match event {
        ShadowEvent::Failover { node, .. } => format!("/{node}"),
        ShadowEvent::ScalingRecommended { view, .. } | ShadowEvent::ScalingApplied { view, .. } => {
            format!("/{}/{}", view.node, view.resource)
        }
        _ => String::new(),
    };
    ShadowCloudEvent {
        id: format!("{event_type}/{id}{id_suffix}@{at}"),
        event_type,
        shadow: id.to_owned(),
        time_unix_ns: at,
        data,
    }
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

/// Shadow events from now on, of `shadow` only when given. Subscribes before it returns:
/// nothing that happens after the call is missed.
pub fn subscribe(
    state: &AppState,
    shadow: Option<String>,
) -> impl Stream<Item = ShadowCloudEvent> + Send + use<> {
    live(state.shadows.subscribe())
        .map(|e| from_shadow(&e))
        .filter(move |e| std::future::ready(shadow.as_ref().is_none_or(|s| *s == e.shadow)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cloudevents_named_after_what_happened() {
        let e = from_shadow(&ShadowEvent::Degraded {
            id: "shop-shadow".into(),
            error: "host hv3 has no underlay address".into(),
            at_unix_ns: 1_000,
        });
        let j = e.to_json();
        assert_eq!(j["type"], "weft.shadow.degraded");
        assert_eq!(j["subject"], "shop-shadow");
        assert_eq!(j["source"], SOURCE);
        assert_eq!(j["data"]["error"], "host hv3 has no underlay address");
        let w = e.to_wire();
        assert_eq!(w.r#type, "weft.shadow.degraded");
        assert!(w.data_json.contains("hv3"));
        let p = from_shadow(&ShadowEvent::PolicyChanged {
            id: "s".into(),
            policy: Default::default(),
            revision: 2,
            at_unix_ns: 5,
        });
        assert_eq!(p.event_type, "weft.shadow.policy.changed");
        assert_eq!(p.data["revision"], 2);
        assert_ne!(p.id, e.id);
        let failover = |node: &str, active| {
            from_shadow(&ShadowEvent::Failover {
                id: "s".into(),
                node: node.into(),
                active,
                switch_seconds: Some(0.31),
                at_unix_ns: 7,
            })
        };
        let (a, b, r) = (
            failover("web", true),
            failover("db", true),
            failover("web", false),
        );
        assert_eq!(a.event_type, "weft.shadow.failover.activated");
        assert_eq!(r.event_type, "weft.shadow.failover.recovered");
        assert_eq!(a.data["node"], "web");
        assert_eq!(a.data["switch_seconds"], 0.31);
        // Two nodes switching at the same instant are two events.
        assert_ne!(a.id, b.id);
    }
}
