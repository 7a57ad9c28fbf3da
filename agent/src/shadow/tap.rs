//! The tap engine: every shadow tap of this host.
//!
//! ```text
//! kernel: shadow_tap_in/out --one ring buffer (pinned)--> reader thread (parse)
//!     --bounded queue--> assembler thread (reassembly per tap) --bounded queue per sink-->
//!     sink task (TCP: ShadowHello, then ShadowFrames)
//! ```
//!
//! The ring, its reader and the assembler are shared by all taps (the kernel object has
//! one ring); they start with the first tap. Records are routed to their tap by interface
//! index. The reader waits for the assembler when its queue is full (the records wait in
//! the ring; the kernel never waits: a copy that does not fit in the ring is dropped and
//! counted, `ring_full`); the sinks' queues are never waited on: a frame that does not fit
//! is counted and its connection ends in a gap.
//!
//! # Across agent restarts
//! The tap's maps are pinned as one unit (`datapath::pins::TAP_MAPS`) and its links are
//! pinned, so the programs keep deciding, counting and copying into the ring while no
//! agent runs. A new agent reads the pinned policies back ([`TapEngine::new`]): a tap on
//! the same interface keeps its counter slot (the counters continue) and its connections'
//! decisions, and its links are taken over with one `BPF_LINK_UPDATE`. The ring is read
//! only once the first full reconcile has set the taps up again
//! ([`TapEngine::finish_adoption`]), so the copies that waited are routed to their taps;
//! a connection the previous agent had begun streaming is resumed at its next request
//! (`reassembly`), never in the middle of one. Pinned policies no tap claims are then
//! removed, with their decisions and counters, and their links' pins.
//!
//! Per tap: a counter slot in the kernel, the policy (one map value per interface; its
//! source prefixes under a generation number, so a change is still one update of the
//! policy value), its sinks and a refresher task that reads the kernel counters every
//! second, flips the policy's `active` flag at the time window's edges and when its
//! breaker pauses or resumes copying ([`super::tap_breaker`]: the sinks take nothing), and
//! signals the driver (`REFRESH`) every ~2 s while the counters change.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent_common::shadow::{
    TAP_INTERFACES, TapConn, TapConnKey, TapCounters, TapPolicy, TapSourceData, tap_active,
};
use aya::maps::{
    HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, RingBuf, lpm_trie::Key,
};
use tokio::sync::mpsc;
use weft_proto::v1::{ShadowFrame, ShadowHello};

use super::ShadowTapMetrics;
use super::reassembly::{Assembler, Event, Limits};
use super::tap_breaker::{SinkBreaker, SinkTotals};
use super::tap_policy::{TapSpec, kernel_policy, source_entries, window_active};
use super::tap_record::{self, Segment};
use super::tap_stream::{SinkTx, StreamStats, start_sink};
use crate::control::{Drift, DriftSignal, REFRESH};
use crate::datapath::{DatapathError, Hook, Order, SharedDatapath};

/// On TC egress of the node's host-side interface: what goes into the node.
pub const PROG_TAP_IN: &str = "shadow_tap_in";
/// On TC ingress: what comes out of the node.
pub const PROG_TAP_OUT: &str = "shadow_tap_out";

/// Records between the reader and the assembler.
const RECORD_QUEUE: usize = 16_384;
const POLL_MS: i32 = 100;
const TICK: Duration = Duration::from_millis(100);
const REFRESH_EVERY: Duration = Duration::from_secs(1);
const SIGNAL_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{what}: {source}")]
    Map {
        what: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("the ring buffer and the CPUs: {0}")]
    Perf(String),
    #[error("no free tap slot: at most {TAP_INTERFACES} taps per host")]
    NoSlot,
    #[error("interface {interface} is tapped for {other} already")]
    Busy { interface: String, other: String },
    #[error("starting the tap threads: {0}")]
    Thread(#[source] std::io::Error),
}

fn map_err(what: &'static str) -> impl FnOnce(aya::maps::MapError) -> TapError {
    move |e| TapError::Map {
        what,
        source: Box::new(e),
    }
}

/// Counters of the shared reader and assembler.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Records that did not decode (or of another agent version's layout).
    pub invalid: AtomicU64,
    pub records: AtomicU64,
    /// `TAIL` records: frames longer than one record holds (GSO super-packets).
    pub tails: AtomicU64,
}

enum Control {
    Add {
        ifindex: u32,
        sinks: Vec<SinkTx>,
        stats: Arc<StreamStats>,
    },
    Remove {
        ifindex: u32,
    },
}

struct Pipeline {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    control: std_mpsc::SyncSender<Control>,
    /// The ring and the assembler's queue until the reader starts
    /// ([`TapEngine::finish_adoption`]).
    unread: Option<(RingBuf<MapData>, std_mpsc::SyncSender<Segment>)>,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // The queue's sender, if the reader never started: the assembler sees it closed.
        self.unread = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What the kernel counts for a tap, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounts {
    pub seen: u64,
    pub eligible: u64,
    pub sampled: u64,
    pub copies: u64,
    pub copied_bytes: u64,
    pub lost: u64,
    pub ring_full: u64,
}

struct Tap {
    interface: String,
    ifindex: u32,
    slot: u32,
    spec: TapSpec,
    generation: u32,
    /// Inside the policy's time window.
    active: bool,
    /// Pauses copying while the sinks take nothing.
    breaker: SinkBreaker,
    sources: Vec<(u32, TapSourceData)>,
    stats: Arc<StreamStats>,
    sink_tasks: Vec<tokio::task::JoinHandle<()>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
    kernel: KernelCounts,
    /// What the Prometheus counters were last advanced to.
    exported: [u64; 7],
}

#[derive(Default)]
struct State {
    pipeline: Option<Pipeline>,
    taps: BTreeMap<String, Tap>,
    generation: u32,
    /// Policies a previous agent left in the pinned map, by interface, that no tap has
    /// claimed yet (their slots stay reserved).
    adopted: HashMap<u32, TapPolicy>,
    /// The first full reconcile is done: the ring is read as soon as there is a tap.
    ready: bool,
}

/// Every shadow tap of this host (see the module doc).
pub struct TapEngine {
    datapath: SharedDatapath,
    runtime: tokio::runtime::Handle,
    host_id: String,
    limits: Limits,
    signals: Option<mpsc::Sender<DriftSignal>>,
    metrics: Arc<ShadowTapMetrics>,
    pub pipeline_stats: Arc<PipelineStats>,
    state: Mutex<State>,
}

impl TapEngine {
    /// `runtime`: where the sink and refresher tasks run.
    pub fn new(
        datapath: SharedDatapath,
        runtime: tokio::runtime::Handle,
        host_id: &str,
        signals: Option<mpsc::Sender<DriftSignal>>,
        metrics: Arc<ShadowTapMetrics>,
    ) -> Arc<Self> {
        let adopted = adopt(&datapath);
        if !adopted.is_empty() {
            tracing::info!(
                taps = adopted.len(),
                "a previous agent's taps are pinned: their slots and decisions are kept for the taps that are still wanted"
            );
        }
        let state = State {
            generation: adopted.values().map(|p| p.generation).max().unwrap_or(0),
            // Nothing to adopt: the ring is read as soon as there is a tap.
            ready: adopted.is_empty(),
            adopted,
            ..Default::default()
        };
        Arc::new(Self {
            datapath,
            runtime,
            host_id: host_id.to_owned(),
            limits: Limits::default(),
            signals,
            metrics,
            pipeline_stats: Arc::default(),
            state: Mutex::new(state),
        })
    }

    /// After the first full reconcile: pinned policies that no tap claimed are removed
    /// (with their source prefixes, decisions and counters) and so are the link pins no
    /// tap holds; then the ring is read (the copies that waited in it are routed to the
    /// taps set up again). Later calls do nothing.
    pub fn finish_adoption(&self) {
        let mut state = self.lock();
        if state.ready {
            return;
        }
        state.ready = true;
        let stale: Vec<(u32, TapPolicy)> = state.adopted.drain().collect();
        {
            let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            for (ifindex, policy) in &stale {
                purge_interface(&mut dp, *ifindex);
                tracing::info!(
                    ifindex,
                    slot = policy.slot,
                    "removed a previous agent's tap that is no longer wanted"
                );
            }
            match dp.remove_unheld_link_pins(&[PROG_TAP_IN, PROG_TAP_OUT]) {
                Ok(0) => {}
                Ok(n) => tracing::info!(links = n, "removed a previous agent's tap links"),
                Err(e) => tracing::warn!(error = %e, "removing a previous agent's tap links"),
            }
        }
        for (_, policy) in stale {
            let _ = self.clear_counters(policy.slot);
        }
        self.start_reader(&mut state);
    }

    /// Starts the ring's reader if the pipeline is there and it has not started.
    fn start_reader(&self, state: &mut State) {
        let Some(p) = state.pipeline.as_mut() else {
            return;
        };
        let Some((ring, tx)) = p.unread.take() else {
            return;
        };
        let (stop, stats) = (p.stop.clone(), self.pipeline_stats.clone());
        match std::thread::Builder::new()
            .name("shadow-ring".into())
            .spawn(move || read_ring(ring, tx, stop, stats))
        {
            Ok(t) => p.threads.push(t),
            Err(e) => tracing::error!(error = %e, "starting the shadow ring reader"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys of the taps.
    pub fn keys(&self) -> Vec<String> {
        self.lock().taps.keys().cloned().collect()
    }

    /// The interface of a tap.
    pub fn interface_of(&self, key: &str) -> Option<(String, u32)> {
        self.lock()
            .taps
            .get(key)
            .map(|t| (t.interface.clone(), t.ifindex))
    }

    /// Loads the programs, opens the ring and starts the assembler (once); the ring's
    /// reader starts once the taps are set up ([`Self::start_reader`]).
    fn ensure_pipeline(&self, state: &mut State) -> Result<(), TapError> {
        if state.pipeline.is_some() {
            return Ok(());
        }
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        dp.load_classifier(PROG_TAP_IN)?;
        dp.load_classifier(PROG_TAP_OUT)?;
        let map = dp.take_map("SHADOW_COPIES")?;
        drop(dp);
        let ring = RingBuf::try_from(map).map_err(map_err("SHADOW_COPIES"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std_mpsc::sync_channel::<Segment>(RECORD_QUEUE);
        let (ctl_tx, ctl_rx) = std_mpsc::sync_channel::<Control>(256);
        let mut threads = Vec::new();
        let mut start = |name: String, f: Box<dyn FnOnce() + Send>| -> Result<(), TapError> {
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(f)
                    .map_err(TapError::Thread)?,
            );
            Ok(())
        };
        let (stop2, limits) = (stop.clone(), self.limits);
        start(
            "shadow-assemble".into(),
            Box::new(move || assemble(rx, ctl_rx, stop2, limits)),
        )?;
        state.pipeline = Some(Pipeline {
            stop,
            threads,
            control: ctl_tx,
            unread: Some((ring, tx)),
        });
        Ok(())
    }

    /// Makes the tap `key` real on `interface` (index `ifindex`, in the calling thread's
    /// network namespace). Returns the number of changes made.
    pub fn apply(
        self: &Arc<Self>,
        key: &str,
        interface: &str,
        ifindex: u32,
        spec: &TapSpec,
    ) -> Result<usize, TapError> {
        let mut state = self.lock();
        if let Some((other, _)) = state
            .taps
            .iter()
            .find(|(k, t)| k.as_str() != key && t.ifindex == ifindex)
        {
            return Err(TapError::Busy {
                interface: interface.to_owned(),
                other: other.clone(),
            });
        }
        if state.taps.get(key).is_some_and(|t| t.ifindex != ifindex) {
            // The node's interface was made anew: start over on the new one.
            self.remove_locked(&mut state, key);
        }
        self.ensure_pipeline(&mut state)?;
        let mut changes = 0;
        {
            let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            // Last on the hook: after the observer and after steering, whose redirected
            // (diverted, failed-over) connections a tap must not copy to the shadow again.
            for (hook, prog) in [(Hook::Egress, PROG_TAP_IN), (Hook::Ingress, PROG_TAP_OUT)] {
                if !dp.is_attached(ifindex, hook, prog) {
                    dp.attach(interface, ifindex, hook, prog, Order::Last)?;
                    changes += 1;
                }
            }
        }
        let now_active = window_active(spec.policy.window, unix_secs());
        match state.taps.get(key).map(|t| t.spec.clone()) {
            Some(old) if old == *spec => {
                // Read back: the policy may have been lost (the map is ours alone, but an
                // interface that came back has a new index; that case started over).
                return Ok(changes);
            }
            Some(old) => {
                if old.sinks != spec.sinks || old.shadow != spec.shadow {
                    let (sinks, tasks, stats) = self.start_sinks(spec);
                    let pipeline = state.pipeline.as_ref().map(|p| p.control.clone());
                    let t = state.taps.get_mut(key).ok_or(TapError::NoSlot)?;
                    for task in t.sink_tasks.drain(..) {
                        task.abort();
                    }
                    t.sink_tasks = tasks;
                    t.stats = stats.clone();
                    t.breaker = SinkBreaker::new(SinkTotals::default());
                    if let Some(ctl) = pipeline {
                        let _ = ctl.send(Control::Add {
                            ifindex,
                            sinks,
                            stats,
                        });
                    }
                }
                state.generation = state.generation.wrapping_add(1);
                let generation = state.generation;
                let t = state.taps.get_mut(key).ok_or(TapError::NoSlot)?;
                t.spec = spec.clone();
                t.active = now_active;
                self.write_policy(t, generation)?;
                changes += 1;
            }
            None => {
                let used: Vec<u32> = state.taps.values().map(|t| t.slot).collect();
                // A previous agent's tap on this interface: its slot, counters and
                // source prefixes are taken over (the counters continue).
                let adopted = state
                    .adopted
                    .remove(&ifindex)
                    .filter(|p| p.slot < TAP_INTERFACES && !used.contains(&p.slot));
                let reserved: Vec<u32> = state.adopted.values().map(|p| p.slot).collect();
                let slot = match &adopted {
                    Some(p) => p.slot,
                    None => {
                        let slot = (0..TAP_INTERFACES)
                            .find(|s| !used.contains(s) && !reserved.contains(s))
                            .ok_or(TapError::NoSlot)?;
                        self.clear_counters(slot)?;
                        slot
                    }
                };
                let sources = match &adopted {
                    Some(p) => self.pinned_sources(ifindex, p.generation),
                    None => Vec::new(),
                };
                if adopted.is_some() {
                    tracing::info!(tap = key, %interface, slot, "adopted the previous agent's tap: its counters and decisions continue");
                }
                let (sinks, sink_tasks, stats) = self.start_sinks(spec);
                if let Some(p) = &state.pipeline {
                    let _ = p.control.send(Control::Add {
                        ifindex,
                        sinks,
                        stats: stats.clone(),
                    });
                }
                state.generation = state.generation.wrapping_add(1);
                let generation = state.generation;
                let mut t = Tap {
                    interface: interface.to_owned(),
                    ifindex,
                    slot,
                    spec: spec.clone(),
                    generation: 0,
                    active: now_active,
                    breaker: SinkBreaker::new(SinkTotals::default()),
                    sources,
                    stats,
                    sink_tasks,
                    refresher: None,
                    kernel: KernelCounts::default(),
                    exported: [0; 7],
                };
                self.write_policy(&mut t, generation)?;
                t.refresher = Some(self.runtime.spawn(refresher(self.clone(), key.to_owned())));
                state.taps.insert(key.to_owned(), t);
                self.metrics.taps.set(state.taps.len() as u64);
                changes += 1;
            }
        }
        if state.ready {
            // The tap's `Add` is queued before the reader starts: its first records are
            // routed to it.
            self.start_reader(&mut state);
        }
        Ok(changes)
    }

    /// The source prefixes of `ifindex` under `generation` in the pinned trie (a previous
    /// agent's tap), so that the next policy change removes them.
    fn pinned_sources(&self, ifindex: u32, generation: u32) -> Vec<(u32, TapSourceData)> {
        let dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let Some(trie) = dp
            .map("SHADOW_SOURCES")
            .ok()
            .and_then(|m| LpmTrie::<&MapData, TapSourceData, u8>::try_from(m).ok())
        else {
            return Vec::new();
        };
        trie.keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), k.data()))
            .filter(|(_, d)| {
                d.ifindex == ifindex.to_be_bytes() && d.generation == generation.to_be_bytes()
            })
            .collect()
    }

    fn start_sinks(
        &self,
        spec: &TapSpec,
    ) -> (
        Vec<SinkTx>,
        Vec<tokio::task::JoinHandle<()>>,
        Arc<StreamStats>,
    ) {
        let stats = Arc::new(StreamStats::default());
        let hello = ShadowHello {
            shadow: spec.shadow.clone(),
            host_id: self.host_id.clone(),
        };
        let (sinks, tasks) = spec
            .sinks
            .iter()
            .map(|a| start_sink(&self.runtime, *a, hello.clone(), stats.clone()))
            .unzip();
        (sinks, tasks, stats)
    }

    /// Writes the tap's policy under a new generation of source prefixes: the new
    /// prefixes first, then the policy (the one update that switches), then the old
    /// prefixes go.
    fn write_policy(&self, t: &mut Tap, generation: u32) -> Result<(), TapError> {
        let sources = source_entries(&t.spec.policy, t.ifindex, generation);
        let policy = kernel_policy(&t.spec.policy, t.slot, generation, t.kernel_active());
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut trie: LpmTrie<&mut MapData, TapSourceData, u8> =
                LpmTrie::try_from(dp.map_mut("SHADOW_SOURCES")?)
                    .map_err(map_err("SHADOW_SOURCES"))?;
            for (len, data) in &sources {
                trie.insert(&Key::new(*len, *data), 1, 0)
                    .map_err(map_err("adding a source prefix"))?;
            }
        }
        insert_policy(&mut dp, t.ifindex, &policy)?;
        let mut trie: LpmTrie<&mut MapData, TapSourceData, u8> =
            LpmTrie::try_from(dp.map_mut("SHADOW_SOURCES")?).map_err(map_err("SHADOW_SOURCES"))?;
        for (len, data) in std::mem::replace(&mut t.sources, sources) {
            if data.generation != generation.to_be_bytes() {
                let _ = trie.remove(&Key::new(len, data));
            }
        }
        t.generation = generation;
        Ok(())
    }

    fn clear_counters(&self, slot: u32) -> Result<(), TapError> {
        let n = aya::util::nr_cpus().map_err(|(w, e)| TapError::Perf(format!("{w}: {e}")))?;
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let mut arr: PerCpuArray<&mut MapData, TapCounters> =
            PerCpuArray::try_from(dp.map_mut("SHADOW_COUNTERS")?)
                .map_err(map_err("SHADOW_COUNTERS"))?;
        let zeros = PerCpuValues::try_from(vec![TapCounters::default(); n])
            .map_err(|e| TapError::Perf(format!("per-CPU values: {e}")))?;
        arr.set(slot, zeros, 0)
            .map_err(map_err("clearing counters"))
    }

    fn read_counters(&self, slot: u32) -> Result<KernelCounts, TapError> {
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let arr: PerCpuArray<&mut MapData, TapCounters> =
            PerCpuArray::try_from(dp.map_mut("SHADOW_COUNTERS")?)
                .map_err(map_err("SHADOW_COUNTERS"))?;
        let v = arr.get(&slot, 0).map_err(map_err("reading counters"))?;
        let mut k = KernelCounts::default();
        for c in v.iter() {
            k.seen += c.seen;
            k.eligible += c.eligible;
            k.sampled += c.sampled;
            k.copies += c.copies;
            k.copied_bytes += c.copied_bytes;
            k.lost += c.lost;
            k.ring_full += c.ring_full;
        }
        Ok(k)
    }

    /// Removes the tap `key`: programs detached, policy, prefixes, decisions and counters
    /// cleared, sinks stopped. Returns whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        let mut state = self.lock();
        self.remove_locked(&mut state, key)
    }

    fn remove_locked(&self, state: &mut State, key: &str) -> bool {
        let Some(mut t) = state.taps.remove(key) else {
            return false;
        };
        if let Some(r) = t.refresher.take() {
            r.abort();
        }
        {
            let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            dp.detach(t.ifindex, Hook::Egress, PROG_TAP_IN);
            dp.detach(t.ifindex, Hook::Ingress, PROG_TAP_OUT);
            purge_interface(&mut dp, t.ifindex);
        }
        if let Some(p) = &state.pipeline {
            let _ = p.control.send(Control::Remove { ifindex: t.ifindex });
        }
        // The sink tasks end when the assembler drops their queues (after the closes).
        let _ = self.clear_counters(t.slot);
        self.metrics.taps.set(state.taps.len() as u64);
        self.metrics.sinks_connected.set(
            state
                .taps
                .values()
                .map(|t| t.stats.sinks_connected.load(Relaxed))
                .sum(),
        );
        true
    }

    /// Removes every tap and stops the reader and the assembler.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        let keys: Vec<String> = state.taps.keys().cloned().collect();
        for k in keys {
            self.remove_locked(&mut state, &k);
        }
        state.pipeline = None;
    }

    /// At an exit that keeps the pins: the taps stay in the kernel (links, policies,
    /// decisions, counters; the links are let go of with the datapath's other pinned
    /// links), copies keep going into the ring for the next agent. Here the reader and the
    /// assembler stop (what the assembler holds is closed to the sinks) and the sinks get
    /// what is queued for them, within `grace`.
    pub fn shutdown_keeping_pins(&self, grace: Duration) {
        let mut state = self.lock();
        let mut tasks = Vec::new();
        for t in state.taps.values_mut() {
            if let Some(r) = t.refresher.take() {
                r.abort();
            }
            tasks.append(&mut t.sink_tasks);
        }
        // The assembler closes every connection to the sinks and drops their queues.
        state.pipeline = None;
        state.taps.clear();
        drop(state);
        let deadline = Instant::now() + grace;
        while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in tasks {
            t.abort();
        }
    }

    /// Reads the kernel counters of `key`, flips the policy at the window's edges and
    /// when the breaker pauses or resumes copying, and advances the Prometheus counters.
    /// Returns the tap's measurements.
    pub fn refresh(&self, key: &str) -> Option<Vec<(String, f64)>> {
        let mut state = self.lock();
        let slot = state.taps.get(key)?.slot;
        let counts = self.read_counters(slot).ok();
        let t = state.taps.get_mut(key)?;
        if let Some(c) = counts {
            t.kernel = c;
        }
        let before = t.kernel_active();
        t.active = window_active(t.spec.policy.window, unix_secs());
        let was_paused = t.breaker.paused();
        let paused = t.breaker.observe(Instant::now(), t.stats.totals());
        if paused != was_paused {
            if paused {
                tracing::warn!(
                    tap = key,
                    pauses = t.breaker.pauses,
                    "shadow tap paused: its sinks take nothing (refused frames, no byte written)"
                );
                self.metrics.pauses.inc();
            } else {
                tracing::info!(tap = key, "shadow tap resumes copying");
            }
        }
        let now_active = t.kernel_active();
        if now_active != before {
            let policy = kernel_policy(&t.spec.policy, t.slot, t.generation, now_active);
            let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = insert_policy(&mut dp, t.ifindex, &policy) {
                tracing::warn!(tap = key, error = %e, "updating the shadow policy (time window, breaker)");
            }
        }
        let now = [
            t.kernel.seen,
            t.kernel.eligible,
            t.kernel.sampled,
            t.stats.bytes_streamed.load(Relaxed),
            t.stats.connections_lost.load(Relaxed),
            t.kernel.lost,
            t.kernel.ring_full,
        ];
        let m = &self.metrics;
        for (i, c) in [
            &m.connections_seen,
            &m.connections_eligible,
            &m.connections_sampled,
            &m.bytes_streamed,
            &m.connections_lost,
            &m.copies_lost,
            &m.ring_full,
        ]
        .into_iter()
        .enumerate()
        {
            c.inc_by(now[i].saturating_sub(t.exported[i]));
        }
        t.exported = now;
        let measurements = measurements_of(t);
        self.metrics.sinks_connected.set(
            state
                .taps
                .values()
                .map(|t| t.stats.sinks_connected.load(Relaxed))
                .sum(),
        );
        Some(measurements)
    }

    /// The last measurements of `key` (without reading the kernel).
    pub fn measurements(&self, key: &str) -> Option<Vec<(String, f64)>> {
        self.lock().taps.get(key).map(measurements_of)
    }

    fn signal(&self, key: &str) {
        if let Some(tx) = &self.signals {
            let _ = tx.try_send(DriftSignal {
                kind: weft_proto::kinds::SHADOW_TAP,
                drift: Drift {
                    key: key.to_owned(),
                    what: REFRESH.into(),
                },
                at: Instant::now(),
            });
        }
    }
}

impl Tap {
    /// The kernel policy's `active` value: the time window, then the breaker.
    fn kernel_active(&self) -> u8 {
        if !self.active {
            tap_active::OFF
        } else if self.breaker.paused() {
            tap_active::PAUSED
        } else {
            tap_active::ON
        }
    }
}

fn insert_policy(
    dp: &mut crate::datapath::Datapath,
    ifindex: u32,
    policy: &TapPolicy,
) -> Result<(), TapError> {
    let mut policies: BpfHashMap<&mut MapData, u32, TapPolicy> =
        BpfHashMap::try_from(dp.map_mut("SHADOW_POLICY")?).map_err(map_err("SHADOW_POLICY"))?;
    policies
        .insert(ifindex, policy, 0)
        .map_err(map_err("writing the policy"))
}

fn measurements_of(t: &Tap) -> Vec<(String, f64)> {
    let s = &t.stats;
    [
        ("connections_seen", t.kernel.seen),
        ("connections_eligible", t.kernel.eligible),
        ("connections_sampled", t.kernel.sampled),
        ("bytes_streamed", s.bytes_streamed.load(Relaxed)),
        ("connections_lost", s.connections_lost.load(Relaxed)),
        ("sinks_connected", s.sinks_connected.load(Relaxed)),
        ("copies_lost", t.kernel.lost),
        ("copies_ring_full", t.kernel.ring_full),
        ("frames_refused", s.frames_refused.load(Relaxed)),
        ("paused", u64::from(t.breaker.paused())),
        ("pauses", t.breaker.pauses),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v as f64))
    .collect()
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Nanoseconds of CLOCK_MONOTONIC (the clock of `bpf_ktime_get_ns`).
pub fn ktime_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Every second: the kernel counters, the window, and a REFRESH signal every ~2 s while
/// the measurements change.
async fn refresher(engine: Arc<TapEngine>, key: String) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    let mut last_sent: Option<Vec<(String, f64)>> = None;
    let mut last_at = Instant::now() - SIGNAL_EVERY;
    loop {
        tick.tick().await;
        let Some(m) = engine.refresh(&key) else {
            return;
        };
        if last_sent.as_ref() != Some(&m) && last_at.elapsed() >= SIGNAL_EVERY {
            engine.signal(&key);
            last_sent = Some(m);
            last_at = Instant::now();
        }
    }
}

/// The ring: decode every record in order and hand it to the assembler, waiting while
/// its queue is full (the kernel's records wait in the ring meanwhile).
fn read_ring(
    mut ring: RingBuf<MapData>,
    tx: std_mpsc::SyncSender<Segment>,
    stop: Arc<AtomicBool>,
    stats: Arc<PipelineStats>,
) {
    let fd = ring.as_raw_fd();
    while !stop.load(Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
        while let Some(item) = ring.next() {
            stats.records.fetch_add(1, Relaxed);
            if item.get(82) == Some(&agent_common::shadow::record_kind::TAIL) {
                stats.tails.fetch_add(1, Relaxed);
            }
            let parsed = tap_record::parse(&item);
            // Consumed: the ring's space is free again.
            drop(item);
            match parsed {
                Ok(seg) => {
                    if tx.send(seg).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    stats.invalid.fetch_add(1, Relaxed);
                }
            }
            if stop.load(Relaxed) {
                return;
            }
        }
    }
}

/// The policies a previous agent left in the pinned map, by interface.
fn adopt(datapath: &SharedDatapath) -> HashMap<u32, TapPolicy> {
    let dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
    if dp.pins().is_none() {
        return HashMap::new();
    }
    let policies = dp
        .map("SHADOW_POLICY")
        .map_err(|e| e.to_string())
        .and_then(|m| {
            BpfHashMap::<&MapData, u32, TapPolicy>::try_from(m).map_err(|e| e.to_string())
        });
    match policies {
        Ok(p) => p.iter().filter_map(Result::ok).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the pinned tap policies: the taps start afresh");
            HashMap::new()
        }
    }
}

/// Removes what the kernel holds for the tap of `ifindex`: its policy, its source
/// prefixes (every generation) and its connections' decisions.
fn purge_interface(dp: &mut crate::datapath::Datapath, ifindex: u32) {
    if let Ok(m) = dp.map_mut("SHADOW_POLICY")
        && let Ok(mut policies) = BpfHashMap::<&mut MapData, u32, TapPolicy>::try_from(m)
    {
        let _ = policies.remove(&ifindex);
    }
    if let Ok(m) = dp.map_mut("SHADOW_SOURCES")
        && let Ok(mut trie) = LpmTrie::<&mut MapData, TapSourceData, u8>::try_from(m)
    {
        let mine: Vec<Key<TapSourceData>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data().ifindex == ifindex.to_be_bytes())
            .collect();
        for k in mine {
            let _ = trie.remove(&k);
        }
    }
    if let Ok(m) = dp.map_mut("SHADOW_CONNS")
        && let Ok(mut conns) = BpfHashMap::<&mut MapData, TapConnKey, TapConn>::try_from(m)
    {
        let mine: Vec<TapConnKey> = conns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.ifindex == ifindex)
            .collect();
        for k in mine {
            let _ = conns.remove(&k);
        }
    }
}

struct TapOut {
    asm: Assembler,
    sinks: Vec<SinkTx>,
    stats: Arc<StreamStats>,
    refused: u64,
}

/// The assembler thread: reassembles every tap's connections and offers the frames to
/// the tap's sinks.
fn assemble(
    rx: std_mpsc::Receiver<Segment>,
    control: std_mpsc::Receiver<Control>,
    stop: Arc<AtomicBool>,
    limits: Limits,
) {
    // ktime -> unix time.
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let offset = unix_now.saturating_sub(ktime_now());
    let mut taps: HashMap<u32, TapOut> = HashMap::new();
    let mut events = Vec::new();
    let mut last_tick = Instant::now();
    let apply_control = |taps: &mut HashMap<u32, TapOut>, events: &mut Vec<Event>| {
        while let Ok(c) = control.try_recv() {
            match c {
                Control::Add {
                    ifindex,
                    sinks,
                    stats,
                } => {
                    let mut fresh = TapOut {
                        asm: Assembler::new(limits),
                        sinks,
                        stats,
                        refused: 0,
                    };
                    // Its clock: the records read from now on count their time from here.
                    fresh.asm.tick(ktime_now(), events);
                    if let Some(mut old) = taps.insert(ifindex, fresh) {
                        old.asm.close_all(events);
                        emit(&mut old, events, offset);
                    }
                }
                Control::Remove { ifindex } => {
                    if let Some(mut old) = taps.remove(&ifindex) {
                        old.asm.close_all(events);
                        emit(&mut old, events, offset);
                    }
                }
            }
        }
    };
    while !stop.load(Relaxed) {
        apply_control(&mut taps, &mut events);
        let first = match rx.recv_timeout(TICK) {
            Ok(s) => Some(s),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = 0;
        let mut next = first;
        while let Some(seg) = next {
            let ifindex = seg.key.ifindex;
            if !taps.contains_key(&ifindex) {
                // The tap's Add may be behind its first record.
                apply_control(&mut taps, &mut events);
            }
            if let Some(t) = taps.get_mut(&ifindex) {
                t.asm.push(seg, &mut events);
                emit(t, &mut events, offset);
            }
            batch += 1;
            next = if batch < 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let now = ktime_now();
            for t in taps.values_mut() {
                t.asm.tick(now, &mut events);
                emit(t, &mut events, offset);
            }
        }
    }
    for t in taps.values_mut() {
        t.asm.close_all(&mut events);
        emit(t, &mut events, offset);
    }
}

fn emit(t: &mut TapOut, events: &mut Vec<Event>, offset: u64) {
    let refused = t.asm.stats().refused;
    for _ in t.refused..refused {
        t.stats.lost_anonymous();
    }
    t.refused = refused;
    for e in events.drain(..) {
        let frame = match e {
            Event::Open {
                conn,
                client,
                server,
                at_ns,
            } => {
                t.stats.connections_streamed.fetch_add(1, Relaxed);
                ShadowFrame {
                    connection: conn,
                    open: true,
                    client: client.to_string(),
                    server: server.to_string(),
                    at_unix_ns: at_ns + offset,
                    ..Default::default()
                }
            }
            Event::Data {
                conn,
                to_server,
                data,
                at_ns,
            } => ShadowFrame {
                connection: conn,
                direction: if to_server { 1 } else { 2 },
                data,
                at_unix_ns: at_ns + offset,
                ..Default::default()
            },
            Event::Gap { conn, to_server } => {
                t.stats.lost(conn);
                ShadowFrame {
                    connection: conn,
                    direction: if to_server { 1 } else { 2 },
                    gap: true,
                    close: true,
                    ..Default::default()
                }
            }
            Event::Close { conn } => ShadowFrame {
                connection: conn,
                close: true,
                ..Default::default()
            },
        };
        let frame = Arc::new(frame);
        for s in &mut t.sinks {
            s.offer(&frame, &t.stats);
        }
    }
}
