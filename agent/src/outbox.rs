//! The batches taken from the queue and not yet acknowledged by the controller, in order,
//! each with its sequence (the first one's sequence plus its position).
//!
//! Only the front batch is ever in flight, so the batches behind it were never seen by
//! the controller and may be renumbered. That is what lets a batch the controller refuses
//! as too large (gRPC `OUT_OF_RANGE` / `RESOURCE_EXHAUSTED`: over its decode limit) be
//! split in two halves in its place, again and again, down to a single record, which is
//! then dropped: the same oversized batch is never sent twice.
//!
//! An acknowledged batch is not forgotten at once: the controller holds it durably only
//! once its next topology checkpoint is written (it says so in every answer,
//! `durable_sequence`). Until then the batch is *retained* (up to a byte budget,
//! `--resend-buffer-bytes`; the oldest go first when it is full, counted). A controller
//! that restarts answers the registration with the sequence its checkpoint holds, and the
//! retained batches above it go back in front of the queue with their own sequences:
//! each batch is merged exactly once.

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
    /// Acknowledged batches not yet durable at the controller, oldest first; the last
    /// one's sequence is `first_seq - 1`.
    retained: VecDeque<Vec<FlowRecord>>,
    retained_bytes: usize,
    /// What `retained` may hold, in encoded record bytes.
    max_retained_bytes: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Self::with_resend_buffer(DEFAULT_RESEND_BUFFER_BYTES)
    }
}

/// The default of `--resend-buffer-bytes`.
pub const DEFAULT_RESEND_BUFFER_BYTES: usize = 64 << 20;

fn batch_bytes(records: &[FlowRecord]) -> usize {
    records.iter().map(record_bytes).sum()
}

/// What [`Outbox::merged_up_to`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    /// Retained batches sent again (the controller lost them).
    pub resent: usize,
    /// Batches the controller lost that were no longer retained (lost for good).
    pub lost: u64,
}

impl Outbox {
    /// An outbox retaining up to `max_retained_bytes` of acknowledged batches.
    pub fn with_resend_buffer(max_retained_bytes: usize) -> Self {
        Self {
            batches: VecDeque::new(),
            first_seq: 1,
            retained: VecDeque::new(),
            retained_bytes: 0,
            max_retained_bytes,
        }
    }

    /// Acknowledged batches kept until the controller holds them durably.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// Sequence of the oldest retained batch.
    fn retained_first_seq(&self) -> u64 {
        self.first_seq - self.retained.len() as u64
    }

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

    /// The front batch was acknowledged, and the controller holds every batch up to
    /// `durable` durably: the front moves to the retained ones, and those at or below
    /// `durable` leave. Returns the front's record count, and how many retained records
    /// were dropped for room (never durable: lost if the controller restarts).
    pub fn acked(&mut self, durable: u64) -> Option<(usize, u64)> {
        let records = self.batches.pop_front()?;
        let count = records.len();
        self.retained_bytes += batch_bytes(&records);
        self.retained.push_back(records);
        self.first_seq += 1;
        self.durable(durable);
        let mut evicted = 0u64;
        while self.retained_bytes > self.max_retained_bytes {
            let Some(oldest) = self.retained.pop_front() else {
                break;
            };
            self.retained_bytes -= batch_bytes(&oldest);
            evicted += oldest.len() as u64;
        }
        Some((count, evicted))
    }

    /// The controller holds every batch up to `durable`: those retained leave.
    pub fn durable(&mut self, durable: u64) {
        while self.retained_first_seq() <= durable {
            let Some(oldest) = self.retained.pop_front() else {
                break;
            };
            self.retained_bytes -= batch_bytes(&oldest);
        }
    }

    /// The controller has merged every sequence up to `last` (it said so when the agent
    /// registered): retained batches above it (a restarted controller lost them) go back
    /// in front with their sequences; batches at or below it still queued (merged, their
    /// acknowledgement lost) move to the retained ones; the next sequence is above it.
    /// Say [`Self::durable`] next with what the registration called durable.
    pub fn merged_up_to(&mut self, last: u64) -> Resumed {
        let mut resumed = Resumed::default();
        while last < self.first_seq - 1 {
            let Some(batch) = self.retained.pop_back() else {
                // Lost by the controller and no longer retained: a gap it skips.
                resumed.lost = self.first_seq - 1 - last;
                break;
            };
            self.retained_bytes -= batch_bytes(&batch);
            self.batches.push_front(batch);
            self.first_seq -= 1;
            resumed.resent += 1;
        }
        while self.first_seq <= last && !self.batches.is_empty() {
            let _ = self.acked(0);
        }
        if self.first_seq <= last {
            // The controller knows sequences this instance never sent (cannot happen
            // with one instance id): start above them.
            self.retained.clear();
            self.retained_bytes = 0;
            self.first_seq = last + 1;
        }
        resumed
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
        outbox.acked(u64::MAX);
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((2, vec![2]))
        );
        outbox.acked(u64::MAX);
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
        outbox.acked(u64::MAX);
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((2, vec![3, 4, 5]))
        );
        outbox.acked(u64::MAX);
        assert_eq!(
            outbox.front().map(|(s, r)| (s, ports(r))),
            Some((3, vec![9]))
        );
        outbox.acked(u64::MAX);
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

    fn seqs(outbox: &Outbox) -> Option<(u64, Vec<u32>)> {
        outbox.front().map(|(s, r)| (s, ports(r)))
    }

    /// Acknowledged batches stay until durable; a controller that restarted from an older
    /// checkpoint gets the ones it lost again, with their own sequences, then new ones.
    #[test]
    fn acknowledged_batches_are_retained_until_durable_and_resent_after_a_restart() {
        let mut outbox = Outbox::default();
        for port in 1..=5 {
            outbox.push(vec![rec(port)]);
        }
        // 1..=4 acknowledged; the controller's checkpoint holds up to 2.
        for durable in [0, 1, 2, 2] {
            assert!(outbox.acked(durable).is_some());
        }
        assert_eq!(outbox.retained(), 2, "3 and 4 wait for a checkpoint");
        assert_eq!(seqs(&outbox), Some((5, vec![5])));
        // The controller was killed and restarted from the checkpoint of 2.
        let resumed = outbox.merged_up_to(2);
        assert_eq!(resumed, Resumed { resent: 2, lost: 0 });
        assert_eq!(seqs(&outbox), Some((3, vec![3])));
        outbox.durable(2);
        for (seq, port) in [(3, 3), (4, 4), (5, 5)] {
            assert_eq!(seqs(&outbox), Some((seq, vec![port])));
            outbox.acked(seq);
        }
        assert!(outbox.is_empty());
        assert_eq!(outbox.retained(), 0, "all durable");
        outbox.push(vec![rec(6)]);
        assert_eq!(seqs(&outbox), Some((6, vec![6])), "sequences go on");
    }

    /// A registration with the same controller (nothing lost) resends nothing, and a
    /// batch merged whose acknowledgement was lost is not sent again but retained.
    #[test]
    fn a_registration_with_a_live_controller_resends_nothing() {
        let mut outbox = Outbox::default();
        for port in 1..=3 {
            outbox.push(vec![rec(port)]);
        }
        outbox.acked(0);
        // Batch 2 was merged, its answer lost; the controller says merged 2, durable 1.
        assert_eq!(outbox.merged_up_to(2), Resumed::default());
        outbox.durable(1);
        assert_eq!(seqs(&outbox), Some((3, vec![3])));
        assert_eq!(outbox.retained(), 1, "2 is merged but not durable yet");
        // Then the controller restarts from a checkpoint of 1: 2 comes back.
        assert_eq!(outbox.merged_up_to(1).resent, 1);
        assert_eq!(seqs(&outbox), Some((2, vec![2])));
    }

    /// The resend buffer is bounded: the oldest retained batches go (counted), and a
    /// restarted controller that lost them is told nothing it cannot have: a gap.
    #[test]
    fn the_resend_buffer_is_bounded_and_a_gap_is_reported_lost() {
        let one = batch_bytes(&[rec(1)]);
        let mut outbox = Outbox::with_resend_buffer(2 * one);
        for port in 1..=4 {
            outbox.push(vec![rec(port)]);
        }
        let evicted: u64 = (0..4).map(|_| outbox.acked(0).unwrap().1).sum();
        assert_eq!(evicted, 2, "room for two batches");
        assert_eq!(outbox.retained(), 2);
        // A controller that remembers nothing: 3 and 4 come back, 1 and 2 are lost.
        let resumed = outbox.merged_up_to(0);
        assert_eq!(resumed, Resumed { resent: 2, lost: 2 });
        assert_eq!(seqs(&outbox), Some((3, vec![3])));
    }
}
