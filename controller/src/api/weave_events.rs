//! What happens to weaves, as CloudEvents (`specversion` 1.0), for `GET /events/weaves`
//! and `WeaveService.WatchWeaveEvents`: `weft.weave.created`, `weft.weave.ready`,
//! `weft.weave.routed`, `weft.weave.activated`, `weft.weave.deactivated`,
//! `weft.weave.synced` (subject: the destination, a weave or the environment) and
//! `weft.weave.deleted`, from the weave manager. Live only, from the moment of
//! subscribing, in the order they happened.

use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use weft_weaves::WeaveEvent;

use crate::state::AppState;

/// `source` of every weave event.
pub const SOURCE: &str = "/weft/controller/weaves";

/// The structured CloudEvent of a weave event.
pub fn to_json(e: &WeaveEvent) -> Value {
    json!({
        "specversion": "1.0",
        "type": e.event_type,
        "source": SOURCE,
        "id": id(e),
        "time": agent_common::time::rfc3339(e.at_unix_ns),
        "subject": e.weave,
        "datacontenttype": "application/json",
        "data": e.data,
    })
}

fn id(e: &WeaveEvent) -> String {
    format!("{}/{}@{}", e.event_type, e.weave, e.at_unix_ns)
}

/// The gRPC form.
pub fn to_wire(e: &WeaveEvent) -> weft_proto::v1::CloudEvent {
    weft_proto::v1::CloudEvent {
        specversion: "1.0".into(),
        r#type: e.event_type.into(),
        source: SOURCE.into(),
        id: id(e),
        time: agent_common::time::rfc3339(e.at_unix_ns),
        subject: e.weave.clone(),
        data_json: e.data.to_string(),
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

/// Weave events from now on; `id`: only that weave's, or that environment's (its weaves'
/// and the syncs into it). Subscribes before it returns.
pub fn subscribe(
    state: &AppState,
    id: Option<String>,
) -> impl Stream<Item = WeaveEvent> + Send + use<> {
    live(state.weaves.subscribe()).filter(move |e| {
        std::future::ready(
            id.as_ref()
                .is_none_or(|i| *i == e.weave || *i == e.environment),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weave_events_are_cloudevents() {
        let e = WeaveEvent {
            event_type: "weft.weave.activated",
            weave: "shop-w1".into(),
            environment: "shop".into(),
            data: json!({ "weave": "shop-w1" }),
            at_unix_ns: 5,
        };
        let j = to_json(&e);
        assert_eq!(j["type"], "weft.weave.activated");
        assert_eq!(j["subject"], "shop-w1");
        assert_eq!(j["source"], SOURCE);
        assert_eq!(j["data"]["weave"], "shop-w1");
        let w = to_wire(&e);
        assert_eq!(w.r#type, "weft.weave.activated");
        assert_eq!(w.id, j["id"]);
    }
}
