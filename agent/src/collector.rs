//! Reads the kernel flow state: the flow-end ring buffer as events arrive, and the whole
//! flow map every drain interval. Runs on its own thread (map reads are syscalls) and
//! hands records to the bounded queue; it never blocks on the controller.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::Relaxed},
};
use std::time::{Duration, Instant};

use agent_common::{
    FlowEvent, FlowKey, FlowStats, PayloadSample, StreamChunk, flow::state, wire::DecodeError,
};
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use tracing::{debug, warn};
use weft_proto::v1::FlowRecord;

use crate::{
    flows::{FastHash, FlowTracker, RecordContext, local_ip},
    l7table::L7Table,
    metrics::Metrics,
    queue::RecordQueue,
    workloads::Registry,
};

/// A flow whose FINs were both seen but whose last ACK never was (lost before the
/// interface, or a simultaneous close's ACKs both pending) is ended by the drain once it
/// has been quiet this long.
const FIN_SETTLE_NS: u64 = 1_000_000_000;
/// Invalid ring items are logged at most this often (each is counted in the metrics).
const INVALID_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the payload ring is read (the kernel posts samples without waking us): at
/// 100,000 requests/s this is about 2 MB of the 4 MiB ring.
const PAYLOAD_POLL: Duration = Duration::from_millis(50);

pub struct Collector {
    pub flows: BpfHashMap<MapData, FlowKey, FlowStats>,
    pub events: RingBuf<MapData>,
    /// Payload samples at request/response turns.
    pub payloads: RingBuf<MapData>,
    /// Samples the kernel could not post (ring full), per CPU.
    pub payloads_lost: PerCpuArray<MapData, u64>,
    /// The payload of connections copied whole (HTTP/2, AMQP).
    pub streams: RingBuf<MapData>,
    /// Chunks the kernel could not post, per CPU.
    pub streams_lost: PerCpuArray<MapData, u64>,
    pub tracker: FlowTracker,
    /// The tracker's baseline, kept in the kernel (`FLOW_REPORTED`, pinned) so that a
    /// restarted agent continues each flow's deltas (`datapath::pins`). `None`: not kept.
    pub reported: Option<BpfHashMap<MapData, FlowKey, FlowStats>>,
    pub l7: L7Table,
    pub registry: Arc<Registry>,
    pub queue: Arc<RecordQueue>,
    pub metrics: Arc<Metrics>,
    pub drain_interval: Duration,
    pub idle_timeout: Duration,
    /// When an invalid ring item was last logged, and how many were dropped since.
    pub invalid_logged_at: Option<Instant>,
    pub invalid_since_log: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC is what bpf_ktime_get_ns reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn mono_to_unix_offset() -> i128 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    unix - monotonic_ns() as i128
}

impl Collector {
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let mut next_drain = Instant::now() + self.drain_interval;
        while !stop.load(Relaxed) {
            // Short polls: samples and flow ends are posted without wakeups (the kernel
            // wakes us only when a ring fills up), and a stop request is seen quickly.
            let timeout = next_drain
                .saturating_duration_since(Instant::now())
                .min(PAYLOAD_POLL);
            self.wait_for_events(timeout);
            self.collect();
            if Instant::now() >= next_drain {
                self.drain();
                next_drain = Instant::now() + self.drain_interval;
            }
        }
        // Last look before the agent exits: everything observed so far goes out.
        self.collect();
        self.drain();
    }

    /// Reads what the rings hold and makes the last record of every flow that ended. The
    /// flow-end events are read first: every payload sample and chunk of an ended flow was
    /// posted before its end, so reading those next gives each ended flow all of its own.
    fn collect(&mut self) {
        let ended = self.read_events();
        self.read_payloads();
        self.read_streams();
        self.l7.tick(monotonic_ns());
        self.finalise(ended);
    }

    fn wait_for_events(&self, timeout: Duration) {
        let mut pfds = [
            libc::pollfd {
                fd: self.events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.payloads.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.streams.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: valid pollfds, as many as said.
        unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                timeout.as_millis() as libc::c_int,
            )
        };
    }

    /// Reads payload samples; bounded per call so flow-end events are not starved.
    fn read_payloads(&mut self) {
        for _ in 0..100_000 {
            let Some(decoded) = self
                .payloads
                .next()
                .map(|item| PayloadSample::from_bytes(&item))
            else {
                break;
            };
            match decoded {
                Ok(s) => {
                    self.metrics.payload_samples.inc();
                    self.l7.observe(&s);
                }
                Err(e) => self.invalid_item(&e),
            }
        }
    }

    /// Reads the chunks of connections copied whole; bounded per call like the samples.
    fn read_streams(&mut self) {
        for _ in 0..100_000 {
            let Some(item) = self.streams.next() else {
                break;
            };
            match StreamChunk::from_bytes(&item) {
                Ok((c, data)) => self.l7.observe_chunk(&c, data),
                Err(e) => {
                    drop(item);
                    self.invalid_item(&e);
                }
            }
        }
    }

    /// The final state of the flows that ended since the last read (the kernel deleted
    /// their entries when it posted these).
    fn read_events(&mut self) -> Vec<(FlowKey, FlowStats)> {
        let mut ended = Vec::new();
        // The item borrows the ring: decode it (a copy) before anything else.
        while let Some(decoded) = self.events.next().map(|item| FlowEvent::from_bytes(&item)) {
            match decoded {
                Ok(ev) => {
                    self.metrics.flow_events.inc();
                    ended.push((ev.key, ev.stats));
                }
                Err(e) => self.invalid_item(&e),
            }
        }
        ended
    }

    /// A ring-buffer item that is not a record (short, or a value the kernel program never
    /// writes: the two sides disagree on the layout): counted and dropped.
    /// Logged at most once per `INVALID_LOG_EVERY` (a layout mismatch makes every item
    /// invalid: one line per item would flood the log); the metric counts each.
    fn invalid_item(&mut self, e: &DecodeError) {
        self.metrics.ring_items_invalid.inc();
        self.invalid_since_log += 1;
        let now = Instant::now();
        if self
            .invalid_logged_at
            .is_none_or(|t| now.duration_since(t) >= INVALID_LOG_EVERY)
        {
            warn!(error = %e, items = self.invalid_since_log, "ring buffer items dropped");
            self.invalid_logged_at = Some(now);
            self.invalid_since_log = 0;
        }
    }

    fn context_offset() -> i128 {
        mono_to_unix_offset()
    }

    /// Sends the last record of each ended flow, from its final state.
    fn finalise(&mut self, ended: Vec<(FlowKey, FlowStats)>) {
        if ended.is_empty() {
            return;
        }
        let names = self.registry.names();
        let offset = Self::context_offset();
        // Sized up front: grown from empty, thousands of records per read were copied
        // several times over (a fifth of the collector's time on short connections).
        let mut out = Vec::with_capacity(ended.len());
        for (key, stats) in &ended {
            if let Some(r) = self.record(&names, offset, key, stats, true) {
                out.push(r);
            }
        }
        self.queue.push(out);
    }

    fn record(
        &mut self,
        names: &HashMap<u32, (String, String)>,
        offset: i128,
        key: &FlowKey,
        stats: &FlowStats,
        ended: bool,
    ) -> Option<FlowRecord> {
        let (workload, interface) = match names.get(&key.ifindex) {
            Some((w, i)) => (w.as_str(), i.as_str()),
            // The interface went away before we read its last flows.
            None => ("unknown", "unknown"),
        };
        let ctx = RecordContext {
            workload,
            interface,
            mono_to_unix_offset_ns: offset,
        };
        // FLOW_REPORTED holds a baseline of this key only if the tracker does (it was
        // written with it, or read back from it): a short connection that started and ended
        // between two drains costs no map write or delete there.
        let had_baseline = self.tracker.knows(key);
        let mut record = self.tracker.update(key, stats, ended, &ctx)?;
        if !ended || had_baseline {
            self.keep_baseline(key, stats, ended);
        }
        let unsampled = self.l7.fill(key, stats, &mut record);
        self.metrics.latency_unsampled_requests.inc_by(unsampled);
        Some(record)
    }

    /// Writes what a record just reported of `key` to `FLOW_REPORTED` (deletes it for an
    /// ended flow). Written as the record is made, before the controller has it: a kill -9
    /// loses unacknowledged records rather than sending them twice (`datapath::pins`).
    fn keep_baseline(&mut self, key: &FlowKey, stats: &FlowStats, ended: bool) {
        let Some(reported) = &mut self.reported else {
            return;
        };
        let done = if ended {
            match reported.remove(key) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                other => other,
            }
        } else {
            reported.insert(key, stats, 0)
        };
        if let Err(e) = done {
            self.metrics.baseline_write_errors.inc();
            debug!(error = %e, "FLOW_REPORTED not updated");
        }
    }

    /// Reads every flow, reports what changed, ends idle flows.
    fn drain(&mut self) {
        let started = Instant::now();
        let names = self.registry.names();
        let learning: HashSet<u32> = self.registry.learning().into_iter().collect();
        let offset = Self::context_offset();
        let now_mono = monotonic_ns();
        self.l7.tick(now_mono);
        let idle_ns = self.idle_timeout.as_nanos() as u64;
        let mut live = HashSet::with_hasher(FastHash::default());
        // The L7 table's flows are incarnations (key, first_seen_ns): those in the map
        // (ended flows were finalised just before, by `collect`).
        let mut live_l7: HashSet<(FlowKey, u64), FastHash> = HashSet::default();
        let mut entries = Vec::new();
        for item in self.flows.iter() {
            match item {
                Ok((k, s)) => entries.push((k, s)),
                Err(e) => {
                    // The entry vanished between get_next_key and lookup (LRU eviction).
                    debug!(error = %e, "flow map entry vanished during drain");
                }
            }
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut remove = Vec::new();
        for (key, stats) in &entries {
            live.insert(*key);
            live_l7.insert((*key, stats.first_seen_ns));
            if learning.contains(&key.ifindex) {
                self.registry.learn(key.ifindex, local_ip(key));
            }
            let quiet_ns = now_mono.saturating_sub(stats.last_seen_ns);
            let fins = state::FIN_OUT | state::FIN_IN;
            // END_REPORTED still in the map: its event did not fit in the ring.
            let ended = quiet_ns > idle_ns
                || stats.state & state::END_REPORTED != 0
                || (stats.state & fins == fins && quiet_ns > FIN_SETTLE_NS);
            if let Some(r) = self.record(&names, offset, key, stats, ended) {
                out.push(r);
            }
            if ended {
                remove.push(*key);
            }
        }
        for key in &remove {
            let _ = self.flows.remove(key);
        }
        let evicted = self.tracker.retain_live(&live);
        if let Some(reported) = &mut self.reported {
            for key in &evicted {
                let _ = reported.remove(key);
            }
        }
        let evicted = evicted.len();
        self.l7.retain_live(&live_l7);
        if let Ok(lost) = self.payloads_lost.get(&0, 0) {
            self.metrics
                .payload_samples_lost
                .set_total(lost.iter().sum());
        }
        if let Ok(lost) = self.streams_lost.get(&0, 0) {
            self.metrics.stream_chunks_lost.set_total(lost.iter().sum());
        }
        let counts = self.l7.stream_counts();
        self.metrics.stream_chunks.set_total(counts.chunks);
        self.metrics.streams_partial.set_total(counts.partial);
        self.metrics.stream_holes.set_total(counts.holes);
        self.metrics.streams_followed.set(self.l7.streams() as u64);
        self.metrics.flows_evicted_unreported.inc_by(evicted as u64);
        self.metrics
            .flow_map_entries
            .set((entries.len() - remove.len()) as u64);
        self.metrics.drains.inc();
        self.metrics
            .drain_seconds_last
            .set(started.elapsed().as_secs_f64());
        self.queue.push(out);
    }
}
