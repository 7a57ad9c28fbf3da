//! The batches taken from the queue and not yet acknowledged by the controller, in order,
//! each with its sequence (the first one's sequence plus its position).
//!
//! Only the front batch is ever in flight, so the batches behind it were never seen by
//! the controller and may be renumbered. That is what lets a batch the controller refuses
//! as too large (gRPC `OUT_OF_RANGE` / `RESOURCE_EXHAUSTED`: over its decode limit) be
//! split in two halves in its place, again and again, down to a single record, which is
//! then dropped: the same oversized batch is never sent twice.

use std::collections::VecDeque;

use prost::Message as _;
use weft_proto::v1::FlowRecord;

/// Bytes a record adds to an encoded `FlowBatch`: the record, its field tag and length.
pub fn record_bytes(record: &FlowRecord) -> usize {
    let len = record.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Room kept in a batch for its other fields (host id, instance, sequence, counters).
pub const BATCH_OVERHEAD: usize = 512;

/// What [`Outbox::too_large`] did with the front batch.
#[derive(Debug, PartialEq)]
pub enum TooLarge {
    /// Split in two batches of these many records, in its place.
    Split(usize, usize),
    /// A single record, too large even alone: dropped.
    Dropped(Box<FlowRecord>),
    /// Nothing was waiting.
    Empty,
}

#[derive(Debug)]
pub struct Outbox {
    batches: VecDeque<Vec<FlowRecord>>,
    /// Sequence of the front batch.
    first_seq: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            batches: VecDeque::new(),
            first_seq: 1,
        }
    }
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batch to send now, with its sequence.
    pub fn front(&self) -> Option<(u64, &[FlowRecord])> {
        self.batches
            .front()
            .map(|records| (self.first_seq, records.as_slice()))
    }

    /// Adds a batch behind the others.
    pub fn push(&mut self, records: Vec<FlowRecord>) {
        self.batches.push_back(records);
    }

    /// The front batch was acknowledged: it leaves.
    pub fn acked(&mut self) -> Option<Vec<FlowRecord>> {
        let records = self.batches.pop_front()?;
        self.first_seq += 1;
        Some(records)
    }

    /// The controller has merged every sequence up to `last` (it said so when the agent
    /// registered): batches at or below it leave (their acknowledgement was lost), and
    /// the next sequence is above it.
    pub fn merged_up_to(&mut self, last: u64) {
        while self.first_seq <= last && self.acked().is_some() {}
        self.first_seq = self.first_seq.max(last.saturating_add(1));
    }

    /// The controller refused the front batch as too large: splits it in halves in its
    /// place (the batches behind it are renumbered), or drops it if it is one record. The
    /// front's sequence was never merged, so it is used again.
    pub fn too_large(&mut self) -> TooLarge {
        let Some(mut records) = self.batches.pop_front() else {
            return TooLarge::Empty;
        };
        match records.len() {
            0 => TooLarge::Empty,
            1 => TooLarge::Dropped(Box::new(records.remove(0))),
            n => {
                let second = records.split_off(n / 2);
                let sizes = (records.len(), second.len());
                self.batches.push_front(second);
                self.batches.push_front(records);
                TooLarge::Split(sizes.0, sizes.1)
            }
        }
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

    fn ports(records: &[FlowRecord]) -> Vec<u32> {
        records.iter().map(|r| r.local_port).collect()
    }

    #[test]
    fn sequences_follow_the_front_and_acks_advance_them() {
        let mut outbox = Outbox::default();
        outbox.push(vec![rec(1)]);
        outbox.push(vec![rec(2)]);
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((1, vec![1]))
        );
        outbox.acked();
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((2, vec![2]))
        );
        outbox.acked();
        assert!(outbox.is_empty());
        outbox.push(vec![]);
        assert_eq!(outbox.front().map(|(s, _)| s), Some(3));
    }

    #[test]
    fn a_refused_batch_is_halved_until_one_record_which_is_dropped() {
        let mut outbox = Outbox::default();
        outbox.push((1..=5).map(rec).collect());
        outbox.push(vec![rec(9)]);
        assert_eq!(outbox.too_large(), TooLarge::Split(2, 3));
        // The halves take the front's sequence and the next; the batch behind moves.
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((1, vec![1, 2]))
        );
        assert_eq!(outbox.too_large(), TooLarge::Split(1, 1));
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((1, vec![1]))
        );
        assert_eq!(outbox.too_large(), TooLarge::Dropped(Box::new(rec(1))));
        // The dropped record's sequence was never merged: the next batch takes it.
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((1, vec![2]))
        );
        outbox.acked();
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((2, vec![3, 4, 5]))
        );
        outbox.acked();
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((3, vec![9]))
        );
        outbox.acked();
        assert_eq!(outbox.too_large(), TooLarge::Empty);
    }

    #[test]
    fn halving_ends_for_any_batch_and_never_resends_the_same_one() {
        for n in 1..=64usize {
            let mut outbox = Outbox::default();
            outbox.push((0..n as u32).map(rec).collect());
            // Every record too large: each batch is halved until single records drop.
            let mut sent: Vec<Vec<u32>> = Vec::new();
            let mut dropped = 0;
            for _ in 0..4 * n {
                let Some((_, records)) = outbox.front() else {
                    break;
                };
                let batch = ports(records);
                assert!(!sent.contains(&batch), "{batch:?} sent twice");
                sent.push(batch);
                match outbox.too_large() {
                    TooLarge::Dropped(_) => dropped += 1,
                    TooLarge::Split(..) => {}
                    TooLarge::Empty => unreachable!("a batch was waiting"),
                }
            }
            assert!(outbox.is_empty(), "n = {n}");
            assert_eq!(dropped, n);
            assert!(sent.len() < 2 * n, "n = {n}: {} sends", sent.len());
        }
    }

    #[test]
    fn batches_already_merged_leave_on_registration() {
        let mut outbox = Outbox::default();
        outbox.push(vec![rec(1)]);
        outbox.push(vec![rec(2)]);
        outbox.merged_up_to(1);
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((2, vec![2]))
        );
        outbox.merged_up_to(7);
        assert!(outbox.is_empty());
        outbox.push(vec![rec(3)]);
        assert_eq!(outbox.front().map(|(s, _)| s), Some(8));
    }

    #[test]
    fn record_bytes_add_up_to_the_encoded_batch() {
        let records: Vec<FlowRecord> = (0..10)
            .map(|i| FlowRecord {
                workload: "w".repeat(i * 50),
                local_port: i as u32,
                ..Default::default()
            })
            .collect();
        let batch = weft_proto::v1::FlowBatch {
            records: records.clone(),
            ..Default::default()
        };
        assert_eq!(
            records.iter().map(record_bytes).sum::<usize>(),
            batch.encoded_len()
        );
    }
}
