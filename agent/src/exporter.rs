//! Streams flow records to the controller: registers, then sends batches in order, each
//! with a sequence number. A batch leaves the agent only when the controller acknowledged
//! it; on any error the same batch (same sequence) is sent again after reconnecting, and
//! the controller ignores a sequence it has already merged. Reconnects back off
//! exponentially (200 ms to 5 s, with jitter).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Code, transport::Channel};
use tracing::{info, warn};
use weft_proto::v1::{
    FlowBatch, FlowRecord, RegisterRequest, Workload as WireWorkload,
    agent_service_client::AgentServiceClient,
};

use crate::{metrics::Metrics, queue::RecordQueue, workloads::Registry};

const HEARTBEAT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Exporter {
    pub controller: crate::controller_link::ControllerLink,
    pub host_id: String,
    pub instance: String,
    pub batch_size: usize,
    pub queue: Arc<RecordQueue>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

enum Outcome {
    /// The connection failed; reconnect after a backoff.
    Reconnect(String),
    /// Shutting down and the queue is flushed (or the grace period is over).
    Done,
}

impl Exporter {
    /// Runs until `shutdown` turns true and the queue is empty, or `grace` after it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let mut pending: Option<(u64, Vec<FlowRecord>)> = None;
        let mut next_seq = 1u64;
        let mut backoff = BACKOFF_MIN;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + grace);
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                warn!(
                    queued = self.queue.len(),
                    "shutdown grace period over; unsent records are lost"
                );
                return;
            }
            match self
                .session(&mut pending, &mut next_seq, &mut shutdown, deadline)
                .await
            {
                Outcome::Done => return,
                Outcome::Reconnect(why) => {
                    self.metrics.controller_connected.set(0);
                    self.metrics.send_errors.inc();
                    warn!(controller = %self.controller, error = %why, retry_in = ?backoff, "controller unreachable");
                    let jitter = Duration::from_millis(
                        rand::random::<u64>() % (backoff.as_millis() as u64 / 4 + 1),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff + jitter) => {}
                        _ = shutdown.changed(), if deadline.is_none() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            if self.metrics.controller_connected.get() == 1 {
                backoff = BACKOFF_MIN;
            }
        }
    }

    async fn connect(&self) -> Result<AgentServiceClient<Channel>, String> {
        let endpoint = self.controller.endpoint()?.timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(AgentServiceClient::new(channel))
    }

    /// Registers and returns the registry version announced and the controller's last
    /// merged sequence for this agent instance.
    async fn register(
        &self,
        client: &mut AgentServiceClient<Channel>,
    ) -> Result<(u64, u64), String> {
        let (version, workloads) = self.registry.snapshot();
        let req = RegisterRequest {
            host_id: self.host_id.clone(),
            agent_instance: self.instance.clone(),
            workloads: workloads
                .into_iter()
                .map(|w| WireWorkload {
                    name: w.name,
                    interface: w.interface,
                    addresses: w.addresses.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let resp = client
            .register(req)
            .await
            .map_err(|s| format!("register: {}", s.message()))?;
        Ok((version, resp.into_inner().last_sequence))
    }

    async fn session(
        &self,
        pending: &mut Option<(u64, Vec<FlowRecord>)>,
        next_seq: &mut u64,
        shutdown: &mut watch::Receiver<bool>,
        deadline: Option<tokio::time::Instant>,
    ) -> Outcome {
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => return Outcome::Reconnect(e),
        };
        let (mut announced, last) = match self.register(&mut client).await {
            Ok(v) => v,
            Err(e) => return Outcome::Reconnect(e),
        };
        if pending.as_ref().is_some_and(|(seq, _)| *seq <= last) {
            // Merged before the acknowledgement was lost.
            *pending = None;
        }
        self.metrics.controller_connected.set(1);
        self.metrics.reconnects.inc();
        info!(controller = %self.controller, host_id = %self.host_id, "registered with controller");
        loop {
            let (version, _) = self.registry.snapshot();
            if version != announced {
                match self.register(&mut client).await {
                    Ok((v, _)) => announced = v,
                    Err(e) => return Outcome::Reconnect(e),
                }
            }
            if pending.is_none() {
                let stopping = *shutdown.borrow();
                if stopping && self.queue.len() == 0 {
                    return Outcome::Done;
                }
                if !stopping {
                    tokio::select! {
                        _ = self.queue.wait() => {}
                        _ = tokio::time::sleep(HEARTBEAT) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                let records = self.queue.take(self.batch_size);
                *pending = Some((*next_seq, records));
                *next_seq += 1;
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Outcome::Done;
            }
            let Some((seq, records)) = pending.as_ref() else {
                continue;
            };
            let batch = FlowBatch {
                host_id: self.host_id.clone(),
                agent_instance: self.instance.clone(),
                sequence: *seq,
                records: records.clone(),
                dropped_records_total: self.metrics.records_dropped.get(),
            };
            match client.push_flows(batch).await {
                Ok(_) => {
                    self.metrics.records_sent.inc_by(records.len() as u64);
                    self.metrics.batches_sent.inc();
                    *pending = None;
                }
                Err(status) if status.code() == Code::FailedPrecondition => {
                    // The controller restarted and forgot us: register again, resend.
                    match self.register(&mut client).await {
                        Ok((v, _)) => announced = v,
                        Err(e) => return Outcome::Reconnect(e),
                    }
                }
                Err(status) => return Outcome::Reconnect(format!("push: {}", status.message())),
            }
        }
    }
}
