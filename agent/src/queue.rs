//! The bounded queue of flow records between the collector and the exporter. When it is
//! full the oldest records are dropped and counted: the collector never waits for the
//! controller.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use weft_proto::v1::FlowRecord;

use crate::metrics::Metrics;

pub struct RecordQueue {
    records: Mutex<VecDeque<FlowRecord>>,
    capacity: usize,
    ready: Notify,
    metrics: Arc<Metrics>,
}

impl RecordQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            records: Mutex::new(VecDeque::with_capacity(capacity.min(65_536))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<FlowRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records, dropping the oldest beyond capacity.
    pub fn push(&self, batch: Vec<FlowRecord>) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.lock();
        q.extend(batch);
        let over = q.len().saturating_sub(self.capacity);
        if over > 0 {
            q.drain(..over);
            self.metrics.records_dropped.inc_by(over as u64);
        }
        self.metrics.records_queued.set(q.len() as u64);
        drop(q);
        self.ready.notify_one();
    }

    /// Takes up to `max` records from the front.
    #[cfg(test)]
    pub fn take(&self, max: usize) -> Vec<FlowRecord> {
        self.take_within(max, usize::MAX)
    }

    /// Takes up to `max` records from the front whose encoded size adds up to at most
    /// `max_bytes` ([`crate::outbox::record_bytes`]); the first record is taken whatever
    /// its size (alone, so that a record too large for the controller is dropped alone).
    pub fn take_within(&self, max: usize, max_bytes: usize) -> Vec<FlowRecord> {
        let mut q = self.lock();
        let mut bytes = 0usize;
        let mut n = 0;
        for record in q.iter().take(max) {
            let size = crate::outbox::record_bytes(record);
            if n > 0 && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            n += 1;
        }
        let out: Vec<FlowRecord> = q.drain(..n).collect();
        self.metrics.records_queued.set(q.len() as u64);
        out
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits until records are pushed (or returns at once if some are queued).
    pub async fn wait(&self) {
        if self.len() > 0 {
            return;
        }
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(port: u32) -> FlowRecord {
        FlowRecord {
            local_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let m = Arc::new(Metrics::default());
        let q = RecordQueue::new(3, m.clone());
        q.push((1..=5).map(rec).collect());
        assert_eq!(m.records_dropped.get(), 2);
        let got: Vec<u32> = q.take(10).iter().map(|r| r.local_port).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn take_within_stays_under_the_byte_budget_but_takes_a_large_record_alone() {
        let q = RecordQueue::new(100, Arc::new(Metrics::default()));
        let sized = |port: u32, bytes: usize| FlowRecord {
            local_port: port,
            workload: "w".repeat(bytes),
            ..Default::default()
        };
        q.push(vec![
            sized(1, 100),
            sized(2, 100),
            sized(3, 100),
            sized(4, 5_000),
            sized(5, 10),
        ]);
        let one = crate::outbox::record_bytes(&sized(1, 100));
        let got = q.take_within(10, 2 * one + 1);
        assert_eq!(
            got.iter().map(|r| r.local_port).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let got = q.take_within(10, 2 * one + 1);
        assert_eq!(
            got.iter().map(|r| r.local_port).collect::<Vec<_>>(),
            vec![3]
        );
        let got = q.take_within(10, 2 * one + 1);
        assert_eq!(
            got.iter().map(|r| r.local_port).collect::<Vec<_>>(),
            vec![4],
            "alone"
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn take_is_bounded_and_in_order() {
        let q = RecordQueue::new(100, Arc::new(Metrics::default()));
        q.push((1..=10).map(rec).collect());
        assert_eq!(
            q.take(4).iter().map(|r| r.local_port).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(q.len(), 6);
    }
}
