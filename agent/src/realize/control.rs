//! Watches the controller's desired state for this host and makes it real: every
//! `DesiredState` on the stream is applied ([`Realizer`]) and answered with an
//! `ObservedState` (addresses read back, link state, per-workload errors, re-address down
//! time). On any error the stream is opened again after a backoff (200 ms to 5 s, with
//! jitter); the controller then sends the full state again, and applying it again changes
//! nothing that already matches.

use std::sync::{Arc, atomic::Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};
use weft_proto::v1::{
    DesiredState, ObservedState, WatchDesiredStateRequest, WorkloadObserved,
    agent_control_service_client::AgentControlServiceClient,
};

use super::{Applied, ControlMetrics, DesiredWorkload, Realizer};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two generations only changed workloads are applied; this often the last state
/// is applied again in full (every device read back), which repairs drift (an address
/// removed by hand, a workload namespace made again).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

pub struct ControlClient {
    pub controller: String,
    pub host_id: String,
    /// The exporter's agent instance id.
    pub instance: String,
    pub realizer: Arc<Realizer>,
    pub metrics: Arc<ControlMetrics>,
}

/// Applies one desired state and builds the report of what is there afterwards.
/// Workloads that cannot even be read from the message get their error too. `full`: every
/// workload is read back and reconciled; otherwise only those whose desired addresses
/// changed since their last successful apply.
pub async fn apply_state(realizer: &Realizer, state: &DesiredState, full: bool) -> Vec<Applied> {
    let mut desired = Vec::with_capacity(state.workloads.len());
    let mut refused = Vec::new();
    for w in &state.workloads {
        if state.workloads.iter().filter(|o| o.workload == w.workload).count() > 1 {
            if !refused.iter().any(|a: &Applied| a.workload == w.workload) {
                refused.push(Applied {
                    workload: w.workload.clone(),
                    error: Some(format!("workload {:?} is listed twice in the desired state", w.workload)),
                    ..Default::default()
                });
            }
            continue;
        }
        match DesiredWorkload::try_from(w) {
            Ok(d) => desired.push(d),
            Err(e) => refused.push(Applied {
                workload: w.workload.clone(),
                error: Some(e.to_string()),
                ..Default::default()
            }),
        }
    }
    let mut applied = if full { realizer.apply(desired).await } else { realizer.apply_changed(desired).await };
    applied.extend(refused);
    applied.sort_by(|a, b| a.workload.cmp(&b.workload));
    applied
}

fn observed(a: &Applied) -> WorkloadObserved {
    WorkloadObserved {
        workload: a.workload.clone(),
        addresses: a.addresses.iter().map(ToString::to_string).collect(),
        link_up: a.link_up,
        error: a.error.clone().unwrap_or_default(),
        readdress_down_us: a.readdress_down.map_or(0, |d| d.as_micros() as u64),
    }
}

impl ControlClient {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut streamed = false;
            match self.session(&mut shutdown, &mut streamed).await {
                Ok(()) => return,
                Err(why) => {
                    self.metrics.control_connected.store(0, Relaxed);
                    if streamed {
                        backoff = BACKOFF_MIN;
                    }
                    warn!(controller = %self.controller, error = %why, retry_in = ?backoff, "desired-state stream lost");
                    let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1));
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
        let endpoint = Endpoint::from_shared(self.controller.clone())
            .map_err(|e| format!("bad controller URL {:?}: {e}", self.controller))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
        Ok(AgentControlServiceClient::new(channel))
    }

    /// One stream: `Ok` on shutdown, `Err` with the reason to reconnect. `streamed` turns
    /// true once the stream is open (the backoff starts over).
    async fn session(&self, shutdown: &mut watch::Receiver<bool>, streamed: &mut bool) -> Result<(), String> {
        let mut client = self.connect().await?;
        let req = WatchDesiredStateRequest { host_id: self.host_id.clone(), agent_instance: self.instance.clone() };
        let mut stream = client
            .watch_desired_state(req)
            .await
            .map_err(|s| format!("watch desired state: {} ({:?})", s.message(), s.code()))?
            .into_inner();
        *streamed = true;
        self.metrics.control_connected.store(1, Relaxed);
        info!(controller = %self.controller, "watching desired state");
        // The first state of a stream is applied in full (the agent may have restarted, or
        // missed generations while disconnected), then changes only, with a full resync
        // every RESYNC_EVERY.
        let mut last: Option<DesiredState> = None;
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        loop {
            let (state, full) = tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(state)) => {
                        let full = last.is_none();
                        (state, full)
                    }
                    Ok(None) => return Err("the controller ended the desired-state stream".into()),
                    Err(s) => return Err(format!("desired-state stream: {} ({:?})", s.message(), s.code())),
                },
                _ = resync.tick(), if last.is_some() => match last.take() {
                    Some(state) => (state, true),
                    None => continue,
                },
                _ = shutdown.changed() => return Ok(()),
            };
            if full {
                resync.reset();
            }
            self.metrics.desired_generation.store(state.generation, Relaxed);
            let applied = apply_state(&self.realizer, &state, full).await;
            let errors = applied.iter().filter(|a| a.error.is_some()).count() as u64;
            // Re-addressed now: a report repeated for an unchanged workload wrote nothing.
            let readdressed = applied.iter().filter(|a| a.readdress_down.is_some() && a.changes > 0).count() as u64;
            self.metrics.apply_errors_total.fetch_add(errors, Relaxed);
            self.metrics.readdress_total.fetch_add(readdressed, Relaxed);
            self.metrics.netns_connections.store(self.realizer.open_connections() as u64, Relaxed);
            for a in applied.iter().filter(|a| a.error.is_some()) {
                warn!(workload = %a.workload, generation = state.generation, error = a.error.as_deref().unwrap_or(""), "desired state not applied");
            }
            let report = ObservedState {
                host_id: self.host_id.clone(),
                agent_instance: self.instance.clone(),
                applied_generation: state.generation,
                workloads: applied.iter().map(observed).collect(),
            };
            let mut req = tonic::Request::new(report);
            req.set_timeout(REPORT_TIMEOUT);
            client
                .report_observed(req)
                .await
                .map_err(|s| format!("report observed: {} ({:?})", s.message(), s.code()))?;
            self.metrics.applied_generation.store(state.generation, Relaxed);
            last = Some(state);
        }
    }
}
