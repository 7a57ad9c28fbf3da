//! The shadow side of sampling: kind `shadow-sink` (key `<shadow>/<node>`).
//!
//! The agent listens on its underlay address (`--underlay-address`; every address without
//! it) on `listen_port` for the taps of `peers` (production hosts). A tap sends one
//! `ShadowHello`, then length-delimited `ShadowFrame`s. Each sampled connection is replayed
//! over one TCP connection per target, opened inside the target node's namespace to the
//! connection's production server address (the shadow node has production's addresses):
//! the client bytes are framed into requests ([`weft_shadow::Replay`]), requests that may
//! write are dropped in read-only mode (counted), the rest are sent, and every target's
//! answers are paired with production's and compared (Diffy, the second target as the noise
//! baseline). Results are the resource's report (`ResourceReport.shadow`); while they change
//! the sink asks the driver for a report every [`REFRESH_EVERY`] (a `REFRESH` signal).
//!
//! Everything is bounded: frames (a longer one ends the tap with an error), taps,
//! connections per sink, frames queued per connection and frame bytes queued per sink,
//! requests queued per target; what does not fit is dropped and counted, so a slow shadow
//! never makes the sink buffer without limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weft_proto::v1::{ShadowEndpointStats, ShadowFrame, ShadowHello, ShadowReport, resource::Spec};
use weft_shadow::replay::{KeySample, ReplayConfig, ReplayCounters};
use weft_shadow::{Limits, Replay, Stats};

use super::synthetic::{self, ConnectionRecorder, Load, Recording, SyntheticCounters};

use crate::control::{
    DesiredResource, Drift, DriftSignal, REFRESH, Reconciler, ResourceReport, Scope,
};
use crate::hostevents::HostEvent;
use crate::networks::{names, namespaces};

/// Largest frame (or hello) accepted from a tap; a longer one ends the tap's stream.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Taps served at once per sink; more wait in the listen backlog.
const MAX_TAPS: usize = 32;
/// Connections replayed at once per sink (all its taps); frames of more are dropped and
/// counted.
const MAX_CONNECTIONS: u64 = 256;
/// Frame bytes queued at once per sink (all its connections); a connection whose frame
/// does not fit is dropped and counted.
pub const MAX_QUEUED_BYTES: u64 = 256 * 1024 * 1024;
/// Frames queued per replayed connection; a connection whose queue is full is dropped.
const CONNECTION_QUEUE: usize = 256;
/// Requests queued per target connection; a target whose queue is full is dropped.
const TARGET_QUEUE: usize = 128;
/// Events (answers read, requests written) queued per replayed connection.
const EVENT_QUEUE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closed connection waits for the targets' last answers.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// A replayed connection without frames or answers for this long is ended.
const IDLE: Duration = Duration::from_secs(120);
/// How often a sink whose results changed asks for a report.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// Request ids kept per target (for tests and debugging).
pub const RECENT_IDS: usize = 1024;
/// Hello read within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the sink kind.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Where sinks listen (`--underlay-address`); `None`: every address.
    pub underlay: Option<IpAddr>,
    /// Prefix of node namespaces (`--node-netns-prefix`).
    pub netns_prefix: String,
    pub limits: Limits,
}

/// A sink as desired, from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub shadow: String,
    pub listen_port: u16,
    pub peers: Vec<IpAddr>,
    /// The targets' namespaces (shadow first, noise baseline second).
    pub targets: Vec<(String, String)>,
    pub read_only: bool,
    /// Synthetic load asked for (`multiplier` > 0): the recorded requests replayed into
    /// the shadow at that multiple of their rate (`synthetic`); a new `generation` starts
    /// a new run.
    pub synthetic: Option<Load>,
    /// Sampling by a request header's value (policy key `header`): only requests whose
    /// value is in the share are replayed.
    pub sample: Option<KeySample>,
}

impl SinkSpec {
    fn from_wire(s: &weft_proto::v1::ShadowSink) -> Result<Self, String> {
        let listen_port = u16::try_from(s.listen_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("listen_port {} is not a port", s.listen_port))?;
        let peers = s
            .peers
            .iter()
            .map(|p| p.parse::<IpAddr>().map_err(|e| format!("peer {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if s.targets.is_empty() {
            return Err("no targets".into());
        }
        if s.targets.len() > 2 {
            return Err(format!(
                "{} targets: a sink replays to the shadow and at most one noise baseline",
                s.targets.len()
            ));
        }
        let targets = s
            .targets
            .iter()
            .map(|t| {
                names::check("network", &t.network)?;
                names::check("node", &t.node)?;
                Ok((t.network.clone(), t.node.clone()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            shadow: s.shadow.clone(),
            listen_port,
            peers,
            targets,
            read_only: s.read_only,
            synthetic: match &s.synthetic {
                Some(l) => Load::from_wire(l)?,
                None => None,
            },
            sample: s.sample.as_ref().map(key_sample).transpose()?,
        })
    }
}

fn key_sample(k: &weft_proto::v1::ShadowKeySample) -> Result<KeySample, String> {
    weft_reqroute::HeaderRule::new(&k.header, None)
        .map_err(|e| format!("sample header {:?}: {e}", k.header))?;
    if k.share_ppm > 1_000_000 {
        return Err(format!(
            "sample share_ppm {} is more than 1000000 (100 %)",
            k.share_ppm
        ));
    }
    Ok(KeySample {
        header: k.header.to_ascii_lowercase(),
        threshold: agent_common::hash::threshold_of(k.share_ppm),
        seed: k.seed,
    })
}

/// Counters of one sink (the report's measurements).
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub requests_replayed: AtomicU64,
    pub requests_skipped_write: AtomicU64,
    /// Requests whose key was out of the share (sampling by header).
    pub requests_unsampled: AtomicU64,
    pub connections_replayed: AtomicU64,
    pub connections_failed: AtomicU64,
    pub taps_connected: AtomicU64,
    /// Taps refused: not a peer, a bad hello, another shadow's.
    pub taps_rejected: AtomicU64,
    /// Tap streams ended by a frame over [`MAX_FRAME`] or one that does not decode.
    pub frames_rejected: AtomicU64,
    /// Connections not replayed (whole or from some point): too many at once, a full
    /// queue, a capture gap.
    pub connections_dropped: AtomicU64,
    /// Target connections dropped because their request queue was full (a slow shadow).
    pub targets_dropped_slow: AtomicU64,
    /// Requests forgotten before every answer came.
    pub requests_unpaired: AtomicU64,
}

impl SinkCounters {
    fn measurements(&self) -> Vec<(String, f64)> {
        [
            ("requests_replayed", &self.requests_replayed),
            ("requests_skipped_write", &self.requests_skipped_write),
            ("requests_unsampled", &self.requests_unsampled),
            ("connections_replayed", &self.connections_replayed),
            ("connections_failed", &self.connections_failed),
            ("taps_connected", &self.taps_connected),
            ("taps_rejected", &self.taps_rejected),
            ("frames_rejected", &self.frames_rejected),
            ("connections_dropped", &self.connections_dropped),
            ("targets_dropped_slow", &self.targets_dropped_slow),
            ("requests_unpaired", &self.requests_unpaired),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.load(Relaxed) as f64))
        .collect()
    }

    fn add(&self, d: ReplayCounters) {
        self.requests_replayed
            .fetch_add(d.requests_replayed, Relaxed);
        self.requests_skipped_write
            .fetch_add(d.requests_skipped_write, Relaxed);
        self.requests_unpaired.fetch_add(d.pending_dropped, Relaxed);
        self.requests_unsampled
            .fetch_add(d.requests_unsampled, Relaxed);
    }
}

/// What a sink's tasks share.
pub struct SinkShared {
    spec: SinkSpec,
    /// What was replayed into the shadow, for synthetic load.
    pub recording: Recording,
    pub synthetic: Arc<SyntheticCounters>,
    /// The spec's `read_only`, changed in place (a policy change must not end the taps'
    /// streams): connections replayed from then on follow it.
    read_only: AtomicBool,
    /// The spec's `sample`, changed in place like `read_only`.
    sample: Mutex<Option<KeySample>>,
    target_netns: Vec<PathBuf>,
    limits: Limits,
    pub stats: Mutex<Stats>,
    pub counters: SinkCounters,
    /// The last request ids answered by each target, oldest first.
    pub recent_ids: Mutex<Vec<VecDeque<String>>>,
    /// Monotonic clock of the shadow side.
    epoch: Instant,
    /// Frame bytes queued to connections now (bounded by [`MAX_QUEUED_BYTES`]).
    queued_bytes: AtomicU64,
    /// Connections being replayed now (bounded by [`MAX_CONNECTIONS`]).
    live_connections: AtomicU64,
}

/// A frame queued to a connection's replay; its bytes count against the sink's budget
/// until it is dropped (taken or discarded).
struct Queued {
    frame: ShadowFrame,
    shared: Arc<SinkShared>,
}

impl Queued {
    /// Queues `frame` if the sink's budget has room.
    fn new(frame: ShadowFrame, shared: &Arc<SinkShared>) -> Option<Self> {
        let len = frame.data.len() as u64;
        if shared.queued_bytes.fetch_add(len, Relaxed) + len > MAX_QUEUED_BYTES {
            shared.queued_bytes.fetch_sub(len, Relaxed);
            return None;
        }
        Some(Self {
            frame,
            shared: shared.clone(),
        })
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.shared
            .queued_bytes
            .fetch_sub(self.frame.data.len() as u64, Relaxed);
    }
}

/// One live connection of a sink, released when its replay ends (or is aborted).
struct LiveSlot(Arc<SinkShared>);

impl LiveSlot {
    fn take(shared: &Arc<SinkShared>) -> Option<Self> {
        if shared.live_connections.fetch_add(1, Relaxed) >= MAX_CONNECTIONS {
            shared.live_connections.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Self(shared.clone()))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.live_connections.fetch_sub(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SinkShared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Request ids target `t` answered last (oldest first).
    pub fn recent_ids(&self, t: usize) -> Vec<String> {
        lock(&self.recent_ids)
            .get(t)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn report(&self) -> ShadowReport {
        let endpoints = lock(&self.stats)
            .report()
            .into_iter()
            .map(|e| ShadowEndpointStats {
                endpoint: e.endpoint,
                production_requests: e.production_requests,
                production_errors: e.production_errors,
                shadow_requests: e.shadow_requests,
                shadow_errors: e.shadow_errors,
                production_latency: e.production_latency,
                shadow_latency: e.shadow_latency,
                compared: e.compared,
                differing: e.differing,
                differing_fields: e.differing_fields.into_iter().collect(),
                baseline_requests: e.baseline_requests,
                baseline_errors: e.baseline_errors,
                baseline_latency: e.baseline_latency,
            })
            .collect();
        ShadowReport { endpoints }
    }

    /// A number that moves whenever the report would change.
    fn version(&self) -> u64 {
        let c = &self.counters;
        lock(&self.stats)
            .version
            .wrapping_add(c.requests_replayed.load(Relaxed))
            .wrapping_add(c.requests_skipped_write.load(Relaxed) << 8)
            .wrapping_add(c.requests_unsampled.load(Relaxed) << 12)
            .wrapping_add(c.connections_replayed.load(Relaxed) << 16)
            .wrapping_add(c.connections_failed.load(Relaxed) << 24)
            .wrapping_add(c.taps_connected.load(Relaxed) << 32)
            .wrapping_add(c.connections_dropped.load(Relaxed) << 40)
            .wrapping_add(self.synthetic.requests.load(Relaxed) << 48)
            .wrapping_add(self.synthetic.runs_finished.load(Relaxed) << 56)
    }
}

struct Sink {
    shared: Arc<SinkShared>,
    tasks: Vec<JoinHandle<()>>,
    /// The synthetic run asked for last, and its task.
    synthetic: Option<(Load, JoinHandle<()>)>,
    /// Where it listens.
    local: SocketAddr,
    /// Kept here too: a sink restarted on the same port takes it over (an aborted task
    /// drops its copy only later, and the port would still be taken).
    listener: Arc<tokio::net::TcpListener>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some((_, t)) = &self.synthetic {
            t.abort();
        }
    }
}

impl Sink {
    /// Starts the run `load` asks for when it is new (another generation, multiplier or
    /// duration); none asked: a run in progress stops. Returns the changes made.
    fn synthesize(&mut self, key: &str, load: Option<Load>) -> usize {
        match (load, &self.synthetic) {
            (Some(l), Some((now, _))) if *now == l => 0,
            (Some(l), _) => {
                if let Some((_, t)) = self.synthetic.take() {
                    t.abort();
                }
                let Some(netns) = self.shared.target_netns.first().cloned() else {
                    return 0;
                };
                let recording = self.shared.recording.snapshot();
                info!(
                    key,
                    recorded = recording.len(),
                    multiplier = l.multiplier,
                    "shadow sink: synthetic load asked for"
                );
                let task = tokio::spawn(synthetic::run(
                    l,
                    recording,
                    netns,
                    self.shared.synthetic.clone(),
                ));
                self.synthetic = Some((l, task));
                1
            }
            (None, Some(_)) => {
                if let Some((_, t)) = self.synthetic.take() {
                    t.abort();
                }
                1
            }
            (None, None) => 0,
        }
    }
}

/// The `shadow-sink` reconciler.
pub struct SinkReconciler {
    config: SinkConfig,
    signals: mpsc::Sender<DriftSignal>,
    sinks: Mutex<HashMap<String, Sink>>,
    /// The nodes' supervisor: the shadow copies' cgroup usage goes into the report
    /// (`shadow_cpu_seconds`, ... and `baseline_*`), the evidence of scaling.
    supervisor: Option<Arc<weft_noderun::Supervisor>>,
}

impl SinkReconciler {
    pub fn new(config: SinkConfig, signals: mpsc::Sender<DriftSignal>) -> Self {
        Self {
            config,
            signals,
            sinks: Mutex::new(HashMap::new()),
            supervisor: None,
        }
    }

    /// Reports the targets' cgroup usage from `supervisor` (the nodes run under it).
    pub fn with_supervisor(mut self, supervisor: Arc<weft_noderun::Supervisor>) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// The targets' cgroup usage as measurements: the shadow's copy `shadow_*`, the noise
    /// baseline's `baseline_*`.
    fn usage(&self, spec: &SinkSpec) -> Vec<(String, f64)> {
        let Some(sup) = &self.supervisor else {
            return Vec::new();
        };
        spec.targets
            .iter()
            .zip(["shadow", "baseline"])
            .filter_map(|((network, node), prefix)| {
                sup.usage(&format!("{network}/{node}"))
                    .map(|u| crate::shadow::tap_reconciler::usage_measurements(prefix, &u))
            })
            .flatten()
            .collect()
    }

    /// The shared state of sink `key`.
    #[cfg(test)]
    pub fn shared(&self, key: &str) -> Option<Arc<SinkShared>> {
        lock(&self.sinks).get(key).map(|s| s.shared.clone())
    }

    /// Where sink `key` listens.
    #[cfg(test)]
    pub fn local_addr(&self, key: &str) -> Option<SocketAddr> {
        lock(&self.sinks).get(key).map(|s| s.local)
    }

    /// A listener on `port` of the underlay address (every address without one).
    fn listen(&self, port: u16) -> Result<tokio::net::TcpListener, String> {
        let spec_port = port;
        let bind = match self.config.underlay {
            Some(a) => vec![SocketAddr::new(a, spec_port)],
            None => vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), spec_port),
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), spec_port),
            ],
        };
        let mut last = None;
        let mut listener = None;
        for b in bind {
            match std::net::TcpListener::bind(b) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(e) => last = Some(format!("listening on {b}: {e}")),
            }
        }
        let listener = listener.ok_or_else(|| last.unwrap_or_default())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        tokio::net::TcpListener::from_std(listener).map_err(|e| format!("listener: {e}"))
    }

    /// Starts sink `key`; on `previous`'s listener when it is on the same port.
    fn start(&self, key: &str, spec: SinkSpec, previous: Option<Sink>) -> Result<Sink, String> {
        let reuse = previous
            .as_ref()
            .filter(|p| p.local.port() == spec.listen_port)
            .map(|p| p.listener.clone());
        // Its tasks stop now; its listener stays open if it is taken over.
        drop(previous);
        let listener = match reuse {
            Some(l) => l,
            None => Arc::new(self.listen(spec.listen_port)?),
        };
        let local = listener
            .local_addr()
            .map_err(|e| format!("listener: {e}"))?;
        let target_netns = spec
            .targets
            .iter()
            .map(|(network, node)| {
                namespaces::path_of(&names::netns(&self.config.netns_prefix, network, node))
            })
            .collect();
        let shared = Arc::new(SinkShared {
            recording: Recording::default(),
            synthetic: Arc::default(),
            read_only: AtomicBool::new(spec.read_only),
            sample: Mutex::new(spec.sample.clone()),
            recent_ids: Mutex::new(vec![VecDeque::new(); spec.targets.len()]),
            spec,
            target_netns,
            limits: self.config.limits,
            stats: Mutex::new(Stats::default()),
            counters: SinkCounters::default(),
            epoch: Instant::now(),
            queued_bytes: AtomicU64::new(0),
            live_connections: AtomicU64::new(0),
        });
        info!(key, %local, "shadow sink listening");
        let serve = tokio::spawn(serve(listener.clone(), shared.clone()));
        let refresh = tokio::spawn(refresh(
            key.to_owned(),
            shared.clone(),
            self.signals.clone(),
        ));
        Ok(Sink {
            shared,
            synthetic: None,
            tasks: vec![serve, refresh],
            local,
            listener,
        })
    }

    fn report(&self, key: &str, sink: &Sink, changes: usize) -> ResourceReport {
        let s = &sink.shared;
        ResourceReport {
            key: key.to_owned(),
            error: None,
            measurements: s
                .counters
                .measurements()
                .into_iter()
                .chain(s.synthetic.measurements())
                .chain([(
                    "synthetic_recorded_connections".to_owned(),
                    s.recording.len() as f64,
                )])
                .chain(self.usage(&s.spec))
                .collect(),
            observed: vec![format!(
                "shadow sink {} on {} -> {}{} ({} taps connected)",
                s.spec.shadow,
                sink.local,
                s.spec
                    .targets
                    .iter()
                    .map(|(n, d)| format!("{n}/{d}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.read_only.load(Relaxed) {
                    ", read-only"
                } else {
                    ""
                },
                s.counters.taps_connected.load(Relaxed)
            )]
            .into_iter()
            .chain((0..s.spec.targets.len()).filter_map(|t| {
                let ids = s.recent_ids(t);
                let last = ids.last()?;
                Some(format!(
                    "target {t}: {} request ids answered recently, the last {last:?}",
                    ids.len()
                ))
            }))
            .collect(),
            changes,
            shadow: Some(s.report()),
            ..Default::default()
        }
    }
}

impl Reconciler for SinkReconciler {
    fn kind(&self) -> &'static str {
        weft_proto::kinds::SHADOW_SINK
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let mut reports = Vec::new();
            let mut sinks = lock(&self.sinks);
            let wanted: HashSet<&str> = desired.iter().map(|d| d.key.as_str()).collect();
            for d in desired {
                if let Scope::Only(keys) = scope
                    && !keys.contains(&d.key)
                {
                    continue;
                }
                let Spec::ShadowSink(wire) = &d.spec else {
                    reports.push(ResourceReport {
                        key: d.key.clone(),
                        error: Some("not a shadow-sink spec".into()),
                        ..Default::default()
                    });
                    continue;
                };
                let spec = match SinkSpec::from_wire(wire) {
                    Ok(s) => s,
                    Err(e) => {
                        sinks.remove(&d.key);
                        reports.push(ResourceReport {
                            key: d.key.clone(),
                            error: Some(e),
                            ..Default::default()
                        });
                        continue;
                    }
                };
                // The same sink but for read-only or sampling by header: changed in place,
                // its taps stay connected.
                let keep = sinks.get(&d.key).is_some_and(|s| {
                    SinkSpec {
                        read_only: spec.read_only,
                        synthetic: spec.synthetic,
                        sample: spec.sample.clone(),
                        ..s.shared.spec.clone()
                    } == spec
                        && s.tasks.iter().all(|t| !t.is_finished())
                });
                if keep {
                    if let Some(s) = sinks.get_mut(&d.key) {
                        let was = s.shared.read_only.swap(spec.read_only, Relaxed);
                        let sample_was =
                            std::mem::replace(&mut *lock(&s.shared.sample), spec.sample.clone());
                        let changes = usize::from(was != spec.read_only)
                            + usize::from(sample_was != spec.sample)
                            + s.synthesize(&d.key, spec.synthetic);
                        if changes > 0 {
                            info!(key = %d.key, read_only = spec.read_only, sample = ?spec.sample, "shadow sink policy changed");
                        }
                        reports.push(self.report(&d.key, s, changes));
                    }
                    continue;
                }
                // Stopped first; a new one on the same port takes its listener over.
                let previous = sinks.remove(&d.key);
                let load = spec.synthetic;
                match self.start(&d.key, spec, previous) {
                    Ok(mut s) => {
                        s.synthesize(&d.key, load);
                        reports.push(self.report(&d.key, &s, 1));
                        sinks.insert(d.key.clone(), s);
                    }
                    Err(e) => reports.push(ResourceReport {
                        key: d.key.clone(),
                        error: Some(e),
                        ..Default::default()
                    }),
                }
            }
            let gone: Vec<String> = sinks
                .keys()
                .filter(|k| match scope {
                    Scope::Only(keys) => keys.contains(k) && !wanted.contains(k.as_str()),
                    _ => !wanted.contains(k.as_str()),
                })
                .cloned()
                .collect();
            for k in gone {
                sinks.remove(&k);
                info!(key = %k, "shadow sink removed");
                reports.push(ResourceReport {
                    key: k,
                    changes: 1,
                    ..Default::default()
                });
            }
            reports
        })
    }

    fn drift(&self, _events: &[HostEvent]) -> Vec<Drift> {
        Vec::new()
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    fn managed(&self) -> Vec<String> {
        lock(&self.sinks).keys().cloned().collect()
    }
}

/// Asks for a report every [`REFRESH_EVERY`] while the sink's results change.
async fn refresh(key: String, shared: Arc<SinkShared>, signals: mpsc::Sender<DriftSignal>) {
    let mut last = shared.version();
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = shared.version();
        if now == last {
            continue;
        }
        last = now;
        // A signal that does not fit is left to the periodic resync.
        let _ = signals.try_send(DriftSignal {
            kind: weft_proto::kinds::SHADOW_SINK,
            drift: Drift {
                key: key.clone(),
                what: REFRESH.into(),
            },
            at: Instant::now(),
        });
    }
}

fn allowed(peers: &[IpAddr], from: IpAddr) -> bool {
    let from = match from {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(from, IpAddr::V4),
        v4 => v4,
    };
    peers.contains(&from)
}

async fn serve(listener: Arc<tokio::net::TcpListener>, shared: Arc<SinkShared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TAPS));
    // The taps' tasks: aborted with this task (a sink removed or changed ends its taps'
    // streams, and the taps reconnect to what replaces it).
    let mut taps = tokio::task::JoinSet::new();
    loop {
        while taps.try_join_next().is_some() {}
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "shadow sink: accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !allowed(&shared.spec.peers, from.ip()) {
            shared.counters.taps_rejected.fetch_add(1, Relaxed);
            debug!(%from, "shadow sink: connection from a host that is not a peer, closed");
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        taps.spawn(async move {
            let _slot = slot;
            shared.counters.taps_connected.fetch_add(1, Relaxed);
            if let Err(e) = tap(stream, &shared).await {
                warn!(%from, error = %e, "shadow sink: tap stream ended");
            }
            shared.counters.taps_connected.fetch_sub(1, Relaxed);
        });
    }
}

/// Why a tap's stream ended early.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message of {len} bytes, over the limit of {limit}")]
    TooLarge { len: u64, limit: usize },
    #[error("a length prefix that is not a varint")]
    BadLength,
    #[error("{what} does not decode: {error}")]
    Decode {
        what: &'static str,
        error: prost::DecodeError,
    },
    #[error("hello for shadow {got:?}, this sink is {want:?}")]
    WrongShadow { got: String, want: String },
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
}

/// Reads one length-delimited message: `None` at a clean end of the stream.
pub async fn read_delimited<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Vec<u8>>, TapError> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let b = match r.read_u8().await {
            Ok(b) => b,
            Err(e) if i == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if len > limit as u64 {
                return Err(TapError::TooLarge { len, limit });
            }
            let mut buf = vec![0u8; len as usize];
            r.read_exact(&mut buf).await?;
            return Ok(Some(buf));
        }
    }
    Err(TapError::BadLength)
}

/// A connection being replayed: where its frames go. Dropped with its tap's task, it
/// aborts the replay, unless detached (after its close, or when the tap's stream ended).
struct Live {
    frames: mpsc::Sender<Queued>,
    task: Option<JoinHandle<()>>,
}

impl Live {
    /// Lets the replay finish what it has queued on its own.
    fn detach(mut self) {
        self.task.take();
    }

    fn finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn tap(stream: tokio::net::TcpStream, shared: &Arc<SinkShared>) -> Result<(), TapError> {
    let _ = stream.set_nodelay(true);
    let mut r = tokio::io::BufReader::with_capacity(256 * 1024, stream);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_delimited(&mut r, MAX_FRAME))
        .await
        .map_err(|_| TapError::HelloTimeout(HELLO_TIMEOUT))?;
    let hello = match hello {
        Ok(Some(h)) => ShadowHello::decode(h.as_slice()).map_err(|error| TapError::Decode {
            what: "ShadowHello",
            error,
        }),
        Ok(None) => return Ok(()),
        Err(e) => Err(e),
    };
    let hello = match hello {
        Ok(h) if h.shadow == shared.spec.shadow => h,
        Ok(h) => {
            shared.counters.taps_rejected.fetch_add(1, Relaxed);
            return Err(TapError::WrongShadow {
                got: h.shadow,
                want: shared.spec.shadow.clone(),
            });
        }
        Err(e) => {
            shared.counters.taps_rejected.fetch_add(1, Relaxed);
            return Err(e);
        }
    };
    info!(shadow = %hello.shadow, host = %hello.host_id, "shadow sink: tap connected");
    let mut live: HashMap<u64, Live> = HashMap::new();
    // Connections given up on: their later frames are ignored (bounded; cleared when full).
    let mut abandoned: HashSet<u64> = HashSet::new();
    let result = loop {
        let frame = match read_delimited(&mut r, MAX_FRAME).await {
            Ok(Some(b)) => match ShadowFrame::decode(b.as_slice()) {
                Ok(f) => f,
                Err(error) => {
                    shared.counters.frames_rejected.fetch_add(1, Relaxed);
                    break Err(TapError::Decode {
                        what: "ShadowFrame",
                        error,
                    });
                }
            },
            Ok(None) => break Ok(()),
            Err(e) => {
                if matches!(e, TapError::TooLarge { .. } | TapError::BadLength) {
                    shared.counters.frames_rejected.fetch_add(1, Relaxed);
                }
                break Err(e);
            }
        };
        let id = frame.connection;
        live.retain(|_, l| !l.finished());
        if abandoned.contains(&id) {
            if frame.close {
                abandoned.remove(&id);
            }
            continue;
        }
        if frame.open && !live.contains_key(&id) {
            let Some(slot) = LiveSlot::take(shared) else {
                shared.counters.connections_dropped.fetch_add(1, Relaxed);
                remember(&mut abandoned, id, frame.close);
                continue;
            };
            let server: SocketAddr = match frame.server.parse() {
                Ok(s) => s,
                Err(_) => {
                    warn!(server = %frame.server, "shadow sink: sampled connection with a bad server address");
                    shared.counters.connections_failed.fetch_add(1, Relaxed);
                    remember(&mut abandoned, id, frame.close);
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
            let task = tokio::spawn(replay_connection(shared.clone(), server, rx, slot));
            live.insert(
                id,
                Live {
                    frames: tx,
                    task: Some(task),
                },
            );
        }
        let close = frame.close;
        let Some(l) = live.get(&id) else {
            // Frames of a connection whose opening was not seen: nothing to replay.
            continue;
        };
        let Some(queued) = Queued::new(frame, shared) else {
            // The sink holds as much as it may: this connection is given up.
            // Dropped: its replay is aborted.
            live.remove(&id);
            shared.counters.connections_dropped.fetch_add(1, Relaxed);
            remember(&mut abandoned, id, close);
            continue;
        };
        match l.frames.try_send(queued) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Its replay is too far behind: give it up.
                // Dropped: its replay is aborted.
                live.remove(&id);
                shared.counters.connections_dropped.fetch_add(1, Relaxed);
                remember(&mut abandoned, id, close);
                continue;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Its replay ended on its own (and counted why): the rest is dropped.
                live.remove(&id);
                remember(&mut abandoned, id, close);
                continue;
            }
        }
        if close && let Some(l) = live.remove(&id) {
            // The task finishes on its own after the close frame.
            l.detach();
        }
    };
    // Connections of this tap that are still open end with it: their close frames will
    // not come. Each finishes what it has queued first.
    for (_, l) in live.drain() {
        l.detach();
    }
    result
}

fn remember(set: &mut HashSet<u64>, id: u64, closed: bool) {
    if closed {
        return;
    }
    if set.len() >= 4 * MAX_CONNECTIONS as usize {
        set.clear();
    }
    set.insert(id);
}

/// Requests queued for a target connection's writer: (key, bytes).
type Requests = mpsc::Sender<(u64, Vec<u8>)>;

/// What a target connection's tasks report.
enum Event {
    Sent {
        t: usize,
        key: u64,
        at: u64,
    },
    /// `at`: when the reader got it (not when the connection's loop looks at it: the two
    /// targets' answers share that loop, and its order must not bias their latencies).
    Data {
        t: usize,
        data: Vec<u8>,
        at: u64,
    },
    Closed {
        t: usize,
    },
    Failed {
        t: usize,
        error: String,
    },
}

pub(super) async fn connect(
    netns: PathBuf,
    server: SocketAddr,
) -> Result<tokio::net::TcpStream, String> {
    let s = crate::hostevents::in_netns(&netns, move || {
        let s = std::net::TcpStream::connect_timeout(&server, CONNECT_TIMEOUT)?;
        s.set_nonblocking(true)?;
        let _ = s.set_nodelay(true);
        Ok::<_, std::io::Error>(s)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{server} in {}: {e}", netns.display()))?;
    tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
}

/// One target connection: a writer task fed by a bounded queue, a reader task; both report
/// into `events`.
fn target_tasks(
    t: usize,
    stream: tokio::net::TcpStream,
    shared: Arc<SinkShared>,
    events: mpsc::Sender<Event>,
) -> (Requests, [JoinHandle<()>; 2]) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<(u64, Vec<u8>)>(TARGET_QUEUE);
    let ev = events.clone();
    let shared_r = shared.clone();
    let writer = tokio::spawn(async move {
        while let Some((key, bytes)) = rx.recv().await {
            if key != 0 {
                let at = shared.now_ns();
                if ev.send(Event::Sent { t, key, at }).await.is_err() {
                    return;
                }
            }
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = ev
                        .send(Event::Failed {
                            t,
                            error: format!("writing: {e}"),
                        })
                        .await;
                    return;
                }
                Err(_) => {
                    let _ = ev
                        .send(Event::Failed {
                            t,
                            error: format!("a write took over {WRITE_TIMEOUT:?}"),
                        })
                        .await;
                    return;
                }
            }
        }
        // Everything sent: half-close, as the client did.
        let _ = wr.shutdown().await;
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = events.send(Event::Closed { t }).await;
                    return;
                }
                Ok(n) => {
                    if events
                        .send(Event::Data {
                            t,
                            at: shared_r.now_ns(),
                            data: buf[..n].to_vec(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = events
                        .send(Event::Failed {
                            t,
                            error: format!("reading: {e}"),
                        })
                        .await;
                    return;
                }
            }
        }
    });
    (tx, [writer, reader])
}

/// Aborts a connection's target tasks when it ends.
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn replay_connection(
    shared: Arc<SinkShared>,
    server: SocketAddr,
    mut frames: mpsc::Receiver<Queued>,
    _slot: LiveSlot,
) {
    let n = shared.target_netns.len();
    let mut replay = Replay::new(ReplayConfig {
        targets: n,
        read_only: shared.read_only.load(Relaxed),
        limits: shared.limits,
        sample: lock(&shared.sample).clone(),
        ..Default::default()
    });
    let (ev_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let connects = futures::future::join_all(
        shared
            .target_netns
            .iter()
            .map(|ns| connect(ns.clone(), server)),
    )
    .await;
    let mut writers: Vec<Option<Requests>> = Vec::with_capacity(n);
    let mut guard = TaskGuard(Vec::new());
    for (t, c) in connects.into_iter().enumerate() {
        match c {
            Ok(stream) => {
                let (tx, tasks) = target_tasks(t, stream, shared.clone(), ev_tx.clone());
                guard.0.extend(tasks);
                writers.push(Some(tx));
            }
            Err(e) => {
                warn!(target = t, error = %e, "shadow sink: target unreachable");
                let mut st = lock(&shared.stats);
                replay.target_failed(t, &mut st);
                writers.push(None);
            }
        }
    }
    drop(ev_tx);
    if writers.first().is_none_or(Option::is_none) {
        shared.counters.connections_failed.fetch_add(1, Relaxed);
        return;
    }
    shared.counters.connections_replayed.fetch_add(1, Relaxed);
    let mut recorder = ConnectionRecorder::new(server);
    let mut turn = false;
    let mut reported = ReplayCounters::default();
    let mut closing: Option<tokio::time::Instant> = None;
    let mut frames_open = true;
    let mut gapped = false;
    loop {
        let deadline = closing.unwrap_or_else(|| tokio::time::Instant::now() + IDLE);
        tokio::select! {
            f = frames.recv(), if frames_open => match f {
                Some(queued) => {
                    let f = &queued.frame;
                    if gapped {
                        // After a gap: frames are drained and dropped until the close.
                        if f.close {
                            frames_open = false;
                        }
                        continue;
                    }
                    if f.gap {
                        // What follows cannot be replayed faithfully: what was sent before
                        // is still delivered and answered; nothing more is sent, and
                        // production's answers are no longer paired.
                        debug!(connection = f.connection, "shadow sink: capture gap, replay stopped");
                        shared.counters.connections_dropped.fetch_add(1, Relaxed);
                        gapped = true;
                        frames_open = !f.close;
                        replay.production_closed(f.at_unix_ns, &mut lock(&shared.stats));
                        closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                        for w in &mut writers {
                            *w = None;
                        }
                        continue;
                    }
                    match f.direction {
                        1 if !f.data.is_empty() => {
                            match replay.client(&f.data, f.at_unix_ns) {
                                Ok(out) => {
                                    for o in out {
                                        if let Some(id) = &o.request_id {
                                            debug!(request_id = %id, endpoint = ?o.endpoint, "shadow sink: replaying");
                                        }
                                        // The targets take turns being sent to first, so
                                        // that neither is always the second to get the
                                        // CPU (their latencies are compared).
                                        turn = !turn;
                                        let n_targets = writers.len();
                                        for i in 0..n_targets {
                                            let t = if turn { i } else { n_targets - 1 - i };
                                            let w = &mut writers[t];
                                            let Some(tx) = w else { continue };
                                            if !replay.alive(t) {
                                                *w = None;
                                                continue;
                                            }
                                            if t == 0 {
                                                recorder.sent(f.at_unix_ns, &o.bytes);
                                            }
                                            if tx.try_send((o.key, o.bytes.clone())).is_err() {
                                                warn!(target = t, "shadow sink: target too slow, its replay dropped");
                                                shared.counters.targets_dropped_slow.fetch_add(1, Relaxed);
                                                *w = None;
                                                replay.target_failed(t, &mut lock(&shared.stats));
                                            }
                                        }
                                    }
                                }
                                Err(e) => {
                                    debug!(error = %e, "shadow sink: client stream cannot be framed, replay stopped");
                                    shared.counters.connections_failed.fetch_add(1, Relaxed);
                                    break;
                                }
                            }
                        }
                        2 if !f.data.is_empty() => replay.production(&f.data, f.at_unix_ns, &mut lock(&shared.stats)),
                        _ => {}
                    }
                    if f.close {
                        replay.production_closed(f.at_unix_ns, &mut lock(&shared.stats));
                        frames_open = false;
                        closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                        // Nothing more to send: the writers half-close once drained.
                        for w in &mut writers {
                            *w = None;
                        }
                    }
                }
                None => {
                    // The tap went away without a close.
                    frames_open = false;
                    closing = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                    for w in &mut writers {
                        *w = None;
                    }
                }
            },
            e = events.recv() => match e {
                Some(Event::Sent { t, key, at }) => replay.target_sent(t, key, at),
                Some(Event::Data { t, data, at }) => {
                    let answered = replay.target_data(t, &data, at, &mut lock(&shared.stats));
                    record_ids(&shared, t, answered.into_iter().filter_map(|a| a.request_id));
                }
                Some(Event::Closed { t }) => {
                    let now = shared.now_ns();
                    let answered = replay.target_closed(t, now, &mut lock(&shared.stats));
                    record_ids(&shared, t, answered.into_iter().filter_map(|a| a.request_id));
                }
                Some(Event::Failed { t, error }) => {
                    debug!(target = t, %error, "shadow sink: target connection failed");
                    replay.target_failed(t, &mut lock(&shared.stats));
                }
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
        let c = replay.counters;
        shared.counters.add(ReplayCounters {
            requests_replayed: c.requests_replayed - reported.requests_replayed,
            requests_skipped_write: c.requests_skipped_write - reported.requests_skipped_write,
            pending_dropped: c.pending_dropped - reported.pending_dropped,
            requests_unsampled: c.requests_unsampled - reported.requests_unsampled,
        });
        reported = c;
        if (!frames_open || gapped) && replay.pending() == 0 {
            break;
        }
    }
    let c = replay.counters;
    shared.counters.add(ReplayCounters {
        requests_replayed: c.requests_replayed - reported.requests_replayed,
        requests_skipped_write: c.requests_skipped_write - reported.requests_skipped_write,
        pending_dropped: c.pending_dropped - reported.pending_dropped,
        requests_unsampled: c.requests_unsampled - reported.requests_unsampled,
    });
    shared
        .counters
        .requests_unpaired
        .fetch_add(replay.pending() as u64, Relaxed);
    drop(guard);
    if let Some(c) = recorder.finish() {
        shared.recording.push(c);
    }
}

fn record_ids(shared: &SinkShared, t: usize, ids: impl Iterator<Item = String>) {
    let mut ring = lock(&shared.recent_ids);
    let Some(q) = ring.get_mut(t) else { return };
    for id in ids {
        debug!(target = t, request_id = %id, "shadow sink: answered");
        if q.len() >= RECENT_IDS {
            q.pop_front();
        }
        q.push_back(id);
    }
}

#[cfg(test)]
mod tests;
