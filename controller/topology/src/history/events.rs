//! Topology events, CloudEvents-shaped, broadcast to subscribers and kept in a bounded ring.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for late readers.
pub const RING_CAPACITY: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologyEvent {
    pub specversion: &'static str,
    /// Monotonic per process.
    pub id: String,
    pub source: &'static str,
    /// `weft.topology.dependency.appeared` or `weft.topology.dependency.unauthorized`.
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub time: String,
    pub data: serde_json::Value,
}

#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<TopologyEvent>,
    ring: Mutex<VecDeque<TopologyEvent>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        let (sender, _) = broadcast::channel(RING_CAPACITY);
        Self {
            sender,
            ring: Mutex::new(VecDeque::new()),
            next_id: Default::default(),
        }
    }
}

impl EventBus {
    pub fn publish(&self, event_type: &'static str, time: String, data: serde_json::Value) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let event = TopologyEvent {
            specversion: "1.0",
            id: id.to_string(),
            source: "weft-controller/topology",
            event_type,
            time,
            data,
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.len() == RING_CAPACITY {
                ring.pop_front();
            }
            ring.push_back(event.clone());
        }
        // No subscriber is not an error: the ring keeps the event.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TopologyEvent> {
        self.sender.subscribe()
    }

    pub fn recent(&self) -> Vec<TopologyEvent> {
        self.ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
