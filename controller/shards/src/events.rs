//! Shard events, CloudEvents-shaped (`specversion` 1.0), each with a sequence that grows
//! by one per event and is stored with it, so a consumer resumes from the last one it saw.

use std::sync::Arc;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::ShardManager;

/// `source` of every shard event.
pub const SOURCE: &str = "/weft/controller/shards";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    /// `weft.shard.created`, `weft.shard.deleted`, `weft.shard.allocated`,
    /// `weft.shard.deallocated`,
    /// `weft.shard.migration.started|paused|resumed|completed|failed`,
    /// `weft.address.allocated`, `weft.address.released`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    /// The sequence, as a string (CloudEvents ids are strings).
    pub id: String,
    /// RFC 3339.
    pub time: String,
    pub subject: String,
    pub datacontenttype: String,
    /// Extension attribute: the sequence as a number.
    pub sequence: u64,
    pub data: serde_json::Value,
}

/// An event of another part of the controller for the shard manager's log
/// ([`ShardManager::record_events`]): everything but the sequence, which the log gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Foreign {
    pub event_type: String,
    /// `source` of the CloudEvent (e.g. `/weft/controller/topology`).
    pub source: String,
    pub subject: String,
    /// When it happened, Unix ns (the `time` attribute).
    pub at_unix_ns: u64,
    pub data: serde_json::Value,
}

impl CloudEvent {
    pub fn new(
        sequence: u64,
        kind: &str,
        subject: &str,
        now_ns: u64,
        data: serde_json::Value,
    ) -> Self {
        Self {
            specversion: "1.0".into(),
            event_type: kind.into(),
            source: SOURCE.into(),
            id: sequence.to_string(),
            time: agent_common::time::rfc3339(now_ns),
            subject: subject.into(),
            datacontenttype: "application/json".into(),
            sequence,
            data,
        }
    }
}

/// Events from sequence `from` on: the stored ones first, then live ones as they are
/// committed. A consumer that falls behind the live channel re-reads from the store, so
/// it sees every event still retained, in order, without gaps or repeats.
pub fn stream_from(
    manager: ShardManager,
    from: u64,
) -> impl Stream<Item = Arc<CloudEvent>> + Send + 'static {
    // Subscribe before reading the store, so nothing committed in between is missed.
    let rx = manager.subscribe();
    let state = (
        manager,
        rx,
        from.max(1),
        std::collections::VecDeque::<Arc<CloudEvent>>::new(),
    );
    futures::stream::unfold(
        state,
        |(manager, mut rx, mut next, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((e, (manager, rx, next, pending)));
                }
                match manager.stored_events(next, 512) {
                    Ok(events) if !events.is_empty() => {
                        next = events.last().map_or(next, |e| e.sequence + 1);
                        pending.extend(events.into_iter().map(Arc::new));
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "reading stored shard events failed; ending the stream");
                        return None;
                    }
                }
                // Caught up with the store: follow the live channel.
                loop {
                    match rx.recv().await {
                        Ok(e) if e.sequence < next => {}
                        Ok(e) if e.sequence == next => {
                            next += 1;
                            pending.push_back(e);
                            break;
                        }
                        // A gap (events committed before we subscribed, or retention moved
                        // past `next`): read the store again.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
                if pending.is_empty() {
                    // Read the store again after a gap; if retention dropped `next`, skip to
                    // the oldest retained event.
                    let oldest = manager.oldest_event();
                    if next < oldest {
                        next = oldest;
                    }
                }
            }
        },
    )
}
