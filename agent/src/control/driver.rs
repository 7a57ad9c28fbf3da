//! Watches the controller's desired state for this host and makes it real through the
//! reconcilers, one per kind: every `DesiredState` on the stream is applied (what changed;
//! everything at the first state of a stream and every [`RESYNC_EVERY`]) and answered with
//! an `ObservedState`. Host events (netlink) that show a managed object changed behind
//! weft's back are repaired at once and reported as drift. On any error the stream is
//! opened again after a backoff (200 ms to 5 s, with jitter); the controller then sends the
//! full state again, and applying it again changes nothing that already matches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt as _;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use weft_proto::kinds;
use weft_proto::v1::{
    DesiredState, DriftRepaired, ObservedState, ResourceObserved, ResourceStatus,
    WatchDesiredStateRequest, agent_control_service_client::AgentControlServiceClient,
};

use super::{ControlMetrics, DesiredResource, Reconciler, ResourceReport, Scope};
use crate::hostevents::{Change, HostEvent, HostEvents, Received, Subscription};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two generations only changed resources are applied; this often the last state
/// is applied again in full (every object read back), which repairs drift that no host
/// event showed (and namespaces that could not be watched).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// After host events were lost, the full resync waits this long, so that a burst of
/// losses costs one.
const RESYNC_AFTER_LOSS: Duration = Duration::from_millis(500);
/// Drift reports kept for the next report when sending fails (oldest dropped).
const DRIFT_PENDING: usize = 256;

pub struct ControlDriver {
    pub controller: crate::controller_link::ControllerLink,
    pub host_id: String,
    /// The exporter's agent instance id.
    pub instance: String,
    pub reconcilers: Vec<Arc<dyn Reconciler>>,
    /// The host's netlink listener; `None`: drift is found by the periodic resync only.
    pub events: Option<HostEvents>,
    /// Drift found by reconcilers' own watchers ([`super::DriftSignal`]).
    pub signals: Option<tokio::sync::mpsc::Receiver<super::DriftSignal>>,
    pub metrics: Arc<ControlMetrics>,
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// When `at` was, on the wall clock.
fn unix_ns_at(at: Instant) -> u64 {
    now_unix_ns().saturating_sub(at.elapsed().as_nanos() as u64)
}

/// What the driver knows between states: the last state, and the last report of every
/// resource.
#[derive(Default)]
struct Known {
    state: Option<DesiredState>,
    /// (kind, key) -> report.
    reports: BTreeMap<(String, String), ResourceObserved>,
    /// Drift found since the last report went out.
    drift: Vec<DriftRepaired>,
}

/// Host events taken in one go, at most.
const EVENT_BURST: usize = 4096;

/// `first` and every event already queued behind it (up to [`EVENT_BURST`]); true when
/// events were lost on the way (the subscriber lagged).
fn drain(sub: &mut Subscription, first: HostEvent) -> (Vec<HostEvent>, bool) {
    let mut batch = vec![first];
    while batch.len() < EVENT_BURST {
        match sub.recv().now_or_never() {
            Some(Some(Received::Event(e))) => batch.push(e),
            Some(Some(Received::Lagged { .. })) => return (batch, true),
            // Nothing queued now (or the listener went: the next recv says so).
            Some(None) | None => break,
        }
    }
    (batch, false)
}

impl ControlDriver {
    fn reconciler(&self, kind: &str) -> Option<&Arc<dyn Reconciler>> {
        self.reconcilers.iter().find(|r| r.kind() == kind)
    }

    /// The resources of `state` per known kind, and the reports of those no reconciler
    /// takes (unknown kind, a spec case this agent cannot read, a key listed twice).
    fn split(
        &self,
        state: &DesiredState,
    ) -> (
        HashMap<&'static str, Vec<DesiredResource>>,
        Vec<ResourceObserved>,
    ) {
        let mut by_kind: HashMap<&'static str, Vec<DesiredResource>> = self
            .reconcilers
            .iter()
            .map(|r| (r.kind(), Vec::new()))
            .collect();
        let mut refused = Vec::new();
        let known: Vec<&str> = self.reconcilers.iter().map(|r| r.kind()).collect();
        for r in &state.resources {
            let reject = |status: ResourceStatus, error: String| ResourceObserved {
                kind: r.kind.clone(),
                key: r.key.clone(),
                generation: r.generation,
                status: status as i32,
                error,
                ..Default::default()
            };
            let (Some(rec), Some(spec)) = (self.reconciler(&r.kind), r.spec.as_ref()) else {
                refused.push(reject(
                    ResourceStatus::Unsupported,
                    format!(
                        "this agent has no reconciler for kind {:?} (it knows {known:?})",
                        r.kind
                    ),
                ));
                continue;
            };
            if kinds::of(spec) != r.kind {
                refused.push(reject(
                    ResourceStatus::Failed,
                    format!(
                        "kind {:?} with a spec of kind {:?}",
                        r.kind,
                        kinds::of(spec)
                    ),
                ));
                continue;
            }
            let list = by_kind.entry(rec.kind()).or_default();
            if list.iter().any(|d| d.key == r.key) {
                list.retain(|d| d.key != r.key);
                refused.push(reject(
                    ResourceStatus::Failed,
                    format!("{}/{} is listed twice in the desired state", r.kind, r.key),
                ));
                continue;
            }
            list.push(DesiredResource {
                key: r.key.clone(),
                generation: r.generation,
                spec: spec.clone(),
            });
        }
        (by_kind, refused)
    }

    fn observed(kind: &str, generation: u64, r: ResourceReport) -> ResourceObserved {
        ResourceObserved {
            kind: kind.to_owned(),
            key: r.key,
            generation,
            status: if r.error.is_some() {
                ResourceStatus::Failed
            } else {
                ResourceStatus::Applied
            } as i32,
            error: r.error.unwrap_or_default(),
            measurements: r.measurements.into_iter().collect(),
            observed: r.observed,
            hand_changes: r.hand_changes,
            shadow: r.shadow,
            snapshots: r.snapshots,
            syncs: r.syncs,
        }
    }

    /// Keeps `r` as the latest report of its resource.
    fn record(known: &mut Known, kind: &str, generation: u64, r: ResourceReport) {
        let o = Self::observed(kind, generation, r);
        known.reports.insert((o.kind.clone(), o.key.clone()), o);
    }

    /// A kept hand change that is news: `r` carries hand changes other than the ones last
    /// reported for its key.
    fn newly_kept(
        reports: &BTreeMap<(String, String), ResourceObserved>,
        kind: &str,
        r: &ResourceReport,
    ) -> bool {
        let Some(h) = &r.hand_changes else {
            return false;
        };
        reports
            .get(&(kind.to_owned(), r.key.clone()))
            .and_then(|o| o.hand_changes.as_ref())
            != Some(h)
    }

    /// Records a kept hand change as drift (reported with `kept`).
    fn keep(&self, known: &mut Known, kind: &str, r: &ResourceReport, what: String, at: Instant) {
        let changes = r
            .hand_changes
            .as_ref()
            .map(|h| h.changes.join("; "))
            .unwrap_or_default();
        info!(kind, key = %r.key, %what, %changes, "hand change kept (propagated to mirrors)");
        self.metrics.drift_detected_total.inc();
        if known.drift.len() == DRIFT_PENDING {
            known.drift.remove(0);
        }
        known.drift.push(DriftRepaired {
            kind: kind.to_owned(),
            key: r.key.clone(),
            what: if changes.is_empty() {
                what
            } else {
                format!("{what}: {changes}")
            },
            detected_unix_ns: unix_ns_at(at),
            repaired_unix_ns: 0,
            error: String::new(),
            kept: true,
        });
    }

    /// Applies `state` (`full`: everything, else what changed) and records the reports.
    async fn apply(&self, known: &mut Known, state: &DesiredState, full: bool) {
        let (by_kind, refused) = self.split(state);
        self.metrics.unsupported_resources.set(
            refused
                .iter()
                .filter(|r| r.status == ResourceStatus::Unsupported as i32)
                .count() as u64,
        );
        let before = std::mem::take(&mut known.reports);
        for r in refused {
            known.reports.insert((r.kind.clone(), r.key.clone()), r);
        }
        let scope = if full { Scope::All } else { Scope::Changed };
        for rec in &self.reconcilers {
            let desired = by_kind.get(rec.kind()).map(Vec::as_slice).unwrap_or(&[]);
            let started = Instant::now();
            let reports = rec.reconcile(desired, scope).await;
            if !reports.is_empty() {
                debug!(
                    kind = rec.kind(),
                    resources = reports.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "reconciled"
                );
            }
            self.count(&reports);
            for r in reports {
                if let Some(e) = &r.error {
                    warn!(kind = rec.kind(), key = %r.key, generation = state.generation, error = %e, "desired state not applied");
                }
                if Self::newly_kept(&before, rec.kind(), &r) {
                    let what = if full {
                        "found at resync"
                    } else {
                        "found at apply"
                    };
                    self.keep(known, rec.kind(), &r, what.into(), Instant::now());
                }
                // A resource removed is reported at the generation that removed it.
                Self::record(
                    known,
                    rec.kind(),
                    generation_of(desired, &r.key, state.generation),
                    r,
                );
            }
        }
        let managed: usize = self.reconcilers.iter().map(|r| r.managed().len()).sum();
        self.metrics.managed_objects.set(managed as u64);
    }

    fn count(&self, reports: &[ResourceReport]) {
        let errors = reports.iter().filter(|a| a.error.is_some()).count() as u64;
        // Re-addressed now: a report repeated for an unchanged workload wrote nothing.
        let readdressed = reports
            .iter()
            .filter(|a| {
                a.changes > 0
                    && a.measurements
                        .iter()
                        .any(|(k, _)| k == "readdress_down_seconds")
            })
            .count() as u64;
        self.metrics.apply_errors_total.inc_by(errors);
        self.metrics.readdress_total.inc_by(readdressed);
    }

    /// Reads back and repairs the resources a host event says drifted; true when a report
    /// should go out.
    async fn repair(
        &self,
        known: &mut Known,
        drifted: Vec<(Arc<dyn Reconciler>, Vec<super::Drift>)>,
        at: Instant,
    ) -> bool {
        let Some(state) = known.state.clone() else {
            return false;
        };
        let (by_kind, _) = self.split(&state);
        let mut news = false;
        for (rec, drift) in drifted {
            let keys: Vec<String> = drift.iter().map(|d| d.key.clone()).collect();
            let desired = by_kind.get(rec.kind()).map(Vec::as_slice).unwrap_or(&[]);
            let reports = rec.reconcile(desired, Scope::Only(&keys)).await;
            let repaired_at = now_unix_ns();
            for r in reports {
                let what: Vec<&str> = drift
                    .iter()
                    .filter(|d| d.key == r.key)
                    .map(|d| d.what.as_str())
                    .collect();
                if r.hand_changes.is_some() && r.error.is_none() {
                    // Kept, not repaired: news when it differs from what was reported.
                    if Self::newly_kept(&known.reports, rec.kind(), &r) {
                        self.keep(known, rec.kind(), &r, what.join("; "), at);
                        news = true;
                    }
                    Self::record(
                        known,
                        rec.kind(),
                        generation_of(desired, &r.key, state.generation),
                        r,
                    );
                    continue;
                }
                if !what.is_empty() && what.iter().all(|w| *w == super::REFRESH) {
                    // Not drift: the reconciler has new counters to report.
                    let generation = generation_of(desired, &r.key, state.generation);
                    let o = Self::observed(rec.kind(), generation, r);
                    let slot = (o.kind.clone(), o.key.clone());
                    if known.reports.get(&slot) != Some(&o) {
                        known.reports.insert(slot, o);
                        news = true;
                    }
                    continue;
                }
                if r.changes == 0 && r.error.is_none() {
                    // Already as desired (the event was weft's own, or undone already).
                    debug!(kind = rec.kind(), key = %r.key, ?what, "host event, no drift");
                    continue;
                }
                self.metrics.drift_detected_total.inc();
                let error = r.error.clone().unwrap_or_default();
                if error.is_empty() {
                    self.metrics.drift_repaired_total.inc();
                    info!(kind = rec.kind(), key = %r.key, ?what, changes = r.changes, after_us = at.elapsed().as_micros() as u64, "drift repaired");
                } else {
                    self.metrics.drift_repair_failed_total.inc();
                    warn!(kind = rec.kind(), key = %r.key, ?what, %error, "drift found, repair failed");
                }
                if known.drift.len() == DRIFT_PENDING {
                    known.drift.remove(0);
                }
                known.drift.push(DriftRepaired {
                    kind: rec.kind().to_owned(),
                    key: r.key.clone(),
                    what: what.join("; "),
                    detected_unix_ns: unix_ns_at(at),
                    repaired_unix_ns: if error.is_empty() { repaired_at } else { 0 },
                    error,
                    kept: false,
                });
                Self::record(
                    known,
                    rec.kind(),
                    generation_of(desired, &r.key, state.generation),
                    r,
                );
                news = true;
            }
        }
        news
    }

    /// Which reconcilers a burst of host events concerns, with what drifted.
    fn drifted(&self, events: &[HostEvent]) -> Vec<(Arc<dyn Reconciler>, Vec<super::Drift>)> {
        self.reconcilers
            .iter()
            .filter_map(|r| {
                let d = r.drift(events);
                (!d.is_empty()).then(|| (r.clone(), d))
            })
            .collect()
    }

    /// The reconcilers a burst of drift signals concerns, with what drifted (one entry
    /// per key, the latest).
    fn signalled(
        &self,
        batch: Vec<super::DriftSignal>,
    ) -> Vec<(Arc<dyn Reconciler>, Vec<super::Drift>)> {
        let mut out: Vec<(Arc<dyn Reconciler>, Vec<super::Drift>)> = Vec::new();
        for s in batch {
            let Some(rec) = self.reconciler(s.kind) else {
                continue;
            };
            match out.iter_mut().find(|(r, _)| r.kind() == s.kind) {
                Some((_, list)) => {
                    list.retain(|d| d.key != s.drift.key);
                    list.push(s.drift);
                }
                None => out.push((rec.clone(), vec![s.drift])),
            }
        }
        out
    }

    /// Starts watching every namespace a reconciler needs (again: a namespace made again
    /// is watched anew). Namespaces that do not exist yet are tried at the next resync.
    async fn watch_namespaces(&self) {
        let Some(events) = &self.events else { return };
        let mut wanted = std::collections::HashSet::new();
        for rec in &self.reconcilers {
            for ns in rec.namespaces() {
                if let Err(e) = events.watch_netns(&ns).await {
                    debug!(netns = %ns.display(), error = %e, "not watching namespace (yet)");
                }
                wanted.insert(ns);
            }
        }
        // A watch holds a socket in its namespace, which keeps the namespace alive: the
        // namespaces of removed resources are let go (and sockets kept for a watch).
        events.retain_adopted(|p| wanted.contains(p));
        for ns in events.watched() {
            if !wanted.contains(&ns) {
                events.unwatch_netns(&ns);
            }
        }
    }

    fn report(&self, known: &mut Known) -> Option<ObservedState> {
        let state = known.state.as_ref()?;
        Some(ObservedState {
            host_id: self.host_id.clone(),
            agent_instance: self.instance.clone(),
            applied_generation: state.generation,
            controller_epoch: state.controller_epoch,
            resources: known.reports.values().cloned().collect(),
            drift: std::mem::take(&mut known.drift),
        })
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut signals = self.signals.take();
        let mut backoff = BACKOFF_MIN;
        let mut known = Known::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut streamed = false;
            match self
                .session(&mut known, &mut shutdown, &mut streamed, &mut signals)
                .await
            {
                Ok(()) => return,
                Err(why) => {
                    self.metrics.control_connected.set(0);
                    if streamed {
                        backoff = BACKOFF_MIN;
                    }
                    warn!(controller = %self.controller, error = %why, retry_in = ?backoff, "desired-state stream lost");
                    let jitter = Duration::from_millis(
                        rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn connect(&self) -> Result<AgentControlServiceClient<Channel>, String> {
        // No request timeout on the channel: the desired-state stream stays open for as
        // long as the agent runs; keep-alives find a dead controller instead.
        let url = self.controller.url().to_owned();
        let endpoint = self.controller.endpoint()?.keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|e| {
            // Refused or unreachable: the next controller of the list, next time.
            self.controller.failed(&url);
            format!("connect to {url}: {e}")
        })?;
        Ok(AgentControlServiceClient::new(channel))
    }

    /// One stream: `Ok` on shutdown, `Err` with the reason to reconnect. `streamed` turns
    /// true once the stream is open (the backoff starts over).
    async fn session(
        &self,
        known: &mut Known,
        shutdown: &mut watch::Receiver<bool>,
        streamed: &mut bool,
        signals: &mut Option<tokio::sync::mpsc::Receiver<super::DriftSignal>>,
    ) -> Result<(), String> {
        let url = self.controller.url().to_owned();
        let mut client = self.connect().await?;
        let req = WatchDesiredStateRequest {
            host_id: self.host_id.clone(),
            agent_instance: self.instance.clone(),
            kinds: self
                .reconcilers
                .iter()
                .map(|r| r.kind().to_owned())
                .collect(),
        };
        let mut stream = client
            .watch_desired_state(req)
            .await
            .map_err(|s| {
                // A follower replica: the leader (another controller of the list) serves
                // desired state; the flow records stay where they are.
                if s.code() == tonic::Code::Unavailable && s.message().contains("follower replica")
                {
                    self.controller.failed(&url);
                }
                format!("watch desired state: {} ({:?})", s.message(), s.code())
            })?
            .into_inner();
        *streamed = true;
        self.metrics.control_connected.set(1);
        info!(controller = %self.controller, "watching desired state");
        let mut events: Option<Subscription> = self.events.as_ref().map(HostEvents::subscribe);
        self.watch_namespaces().await;
        // The first state of a stream is applied in full (the agent may have restarted, or
        // missed generations while disconnected), then changes only, with a full resync
        // every RESYNC_EVERY, and repairs when host events show drift.
        let mut first = true;
        // A full resync owed because host events were lost (overrun, lag, a namespace gone).
        let mut resync_due: Option<tokio::time::Instant> = None;
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        loop {
            enum Next {
                Apply(DesiredState, bool),
                Repair(Vec<(Arc<dyn Reconciler>, Vec<super::Drift>)>, Instant),
                Nothing,
            }
            let next = tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(mut state)) => {
                        // Level-triggered: of the states already here, only the newest
                        // matters (a burst of changes is applied once, not one by one).
                        let mut skipped = 0u64;
                        while let Some(Ok(Some(newer))) = stream.message().now_or_never() {
                            state = newer;
                            skipped += 1;
                        }
                        if skipped > 0 {
                            debug!(skipped, generation = state.generation, "older desired states skipped");
                        }
                        let full = std::mem::take(&mut first)
                            || known.state.as_ref().is_none_or(|s| s.controller_epoch != state.controller_epoch);
                        Next::Apply(state, full)
                    }
                    Ok(None) => return Err("the controller ended the desired-state stream".into()),
                    Err(s) => return Err(format!("desired-state stream: {} ({:?})", s.message(), s.code())),
                },
                _ = tokio::time::sleep_until(resync_due.unwrap_or_else(tokio::time::Instant::now)), if resync_due.is_some() => {
                    resync_due = None;
                    self.metrics.host_event_resyncs_total.inc();
                    self.watch_namespaces().await;
                    match known.state.clone() {
                        Some(state) => Next::Apply(state, true),
                        None => Next::Nothing,
                    }
                }
                _ = resync.tick(), if !first => match known.state.clone() {
                    Some(state) => {
                        self.watch_namespaces().await;
                        Next::Apply(state, true)
                    }
                    None => Next::Nothing,
                },
                ev = async { events.as_mut().expect("guarded").recv().await }, if events.is_some() && !first => match ev {
                    Some(Received::Event(ev)) => {
                        // The whole burst at once: only its net effect can be drift.
                        let (batch, lost) = drain(events.as_mut().expect("guarded"), ev);
                        self.metrics.host_events_total.inc_by(batch.len() as u64);
                        let resync = lost || batch.iter().any(|e| matches!(e.change, Change::Overrun | Change::NetnsGone));
                        if resync {
                            // Once, a moment later: losses come in bursts.
                            resync_due.get_or_insert_with(|| tokio::time::Instant::now() + RESYNC_AFTER_LOSS);
                        }
                        let drifted = self.drifted(&batch);
                        if drifted.is_empty() { Next::Nothing } else { Next::Repair(drifted, batch[0].at) }
                    }
                    Some(Received::Lagged { missed }) => {
                        warn!(missed, "host events lost: full resync");
                        resync_due.get_or_insert_with(|| tokio::time::Instant::now() + RESYNC_AFTER_LOSS);
                        Next::Nothing
                    }
                    None => {
                        warn!("the host event listener stopped: drift is repaired at the periodic resync only");
                        events = None;
                        Next::Nothing
                    }
                },
                sig = async { signals.as_mut().expect("guarded").recv().await }, if signals.is_some() && !first => match sig {
                    Some(first_signal) => {
                        let at = first_signal.at;
                        let mut batch = vec![first_signal];
                        while batch.len() < EVENT_BURST {
                            match signals.as_mut().expect("guarded").try_recv() {
                                Ok(s) => batch.push(s),
                                Err(_) => break,
                            }
                        }
                        let drifted = self.signalled(batch);
                        if drifted.is_empty() { Next::Nothing } else { Next::Repair(drifted, at) }
                    }
                    None => {
                        *signals = None;
                        Next::Nothing
                    }
                },
                _ = shutdown.changed() => return Ok(()),
            };
            match next {
                Next::Nothing => continue,
                Next::Apply(state, full) => {
                    if full {
                        resync.reset();
                        resync_due = None;
                    }
                    self.metrics.desired_generation.set(state.generation);
                    let started = Instant::now();
                    self.apply(known, &state, full).await;
                    // Namespaces made (or removed) by this apply.
                    self.watch_namespaces().await;
                    debug!(
                        generation = state.generation,
                        full,
                        took_us = started.elapsed().as_micros() as u64,
                        "applied"
                    );
                    known.state = Some(state);
                }
                Next::Repair(drifted, at) => {
                    if !self.repair(known, drifted, at).await {
                        continue;
                    }
                }
            }
            let Some(report) = self.report(known) else {
                continue;
            };
            let generation = report.applied_generation;
            let drift = report.drift.clone();
            let mut req = tonic::Request::new(report);
            req.set_timeout(REPORT_TIMEOUT);
            if let Err(s) = client.report_observed(req).await {
                // Keep the drift for the next report.
                known.drift.splice(0..0, drift);
                known.drift.truncate(DRIFT_PENDING);
                if s.code() == tonic::Code::FailedPrecondition {
                    // Another controller epoch: its state is on the way (or a new stream).
                    warn!(error = %s.message(), "report refused");
                    continue;
                }
                return Err(format!("report observed: {} ({:?})", s.message(), s.code()));
            }
            self.metrics.applied_generation.set(generation);
            debug!(generation, "reported");
        }
    }
}

/// The generation at which resource `key`'s spec last changed; `host` (the host's
/// generation) for one no longer desired: a removal is reported at the generation that
/// removed it.
fn generation_of(desired: &[DesiredResource], key: &str, host: u64) -> u64 {
    desired
        .iter()
        .find(|d| d.key == key)
        .map_or(host, |d| d.generation)
}
