//! Streams flow records to the controller: registers, then sends batches in order, each
//! with a sequence number and under a byte budget (`--batch-max-bytes`). A batch leaves
//! the agent only when the controller acknowledged it; on a connection error the same
//! batch (same sequence) is sent again after reconnecting, and the controller ignores a
//! sequence it has already merged. A batch the controller refuses as too large (over its
//! `--grpc-max-message-size`: `OUT_OF_RANGE` or `RESOURCE_EXHAUSTED`) is split in halves
//! and sent again ([`crate::outbox`]); a single record too large alone is dropped and
//! counted. Reconnects back off exponentially (200 ms to 5 s, with jitter).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Code, transport::Channel};
use tracing::{info, warn};
use weft_proto::v1::{
    FlowBatch, RegisterRequest, Workload as WireWorkload, agent_service_client::AgentServiceClient,
};

use crate::outbox::{BATCH_OVERHEAD, Outbox, TooLarge, record_bytes};
use crate::{metrics::Metrics, queue::RecordQueue, workloads::Registry};

const HEARTBEAT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Exporter {
    pub controller: crate::controller_link::ControllerLink,
    pub host_id: String,
    pub instance: String,
    pub batch_size: usize,
    /// Encoded size a batch stays under (a record larger than it goes alone).
    pub batch_max_bytes: usize,
    pub queue: Arc<RecordQueue>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Sent at registration (`--underlay-address`).
    pub underlay_address: Option<std::net::IpAddr>,
    /// Acknowledged batches kept until the controller holds them durably
    /// (`--resend-buffer-bytes`, [`crate::outbox`]).
    pub resend_buffer_bytes: usize,
}

/// What a registration answered: the registry version announced, and the controller's
/// last merged and durable sequences of this agent instance.
struct Registered {
    version: u64,
    last: u64,
    durable: u64,
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
        let mut outbox = Outbox::with_resend_buffer(self.resend_buffer_bytes);
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
            match self.session(&mut outbox, &mut shutdown, deadline).await {
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
        let url = self.controller.url().to_owned();
        let endpoint = self.controller.endpoint()?.timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|e| {
            // Refused or unreachable: the next controller of the list, next time.
            self.controller.failed(&url);
            format!("connect to {url}: {e}")
        })?;
        Ok(AgentServiceClient::new(channel))
    }

    /// Registers; what the controller answered.
    async fn register(
        &self,
        client: &mut AgentServiceClient<Channel>,
    ) -> Result<Registered, String> {
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
            underlay_address: self
                .underlay_address
                .map(|a| a.to_string())
                .unwrap_or_default(),
        };
        let resp = client
            .register(req)
            .await
            .map_err(|s| format!("register: {}", s.message()))?
            .into_inner();
        Ok(Registered {
            version,
            last: resp.last_sequence,
            durable: resp.durable_sequence,
        })
    }

    /// After a registration: the batches the controller lost are sent again (those
    /// retained), the merged ones are dropped once durable.
    fn resume(&self, outbox: &mut Outbox, registered: &Registered) {
        let resumed = outbox.merged_up_to(registered.last);
        outbox.durable(registered.durable);
        if resumed.resent > 0 || resumed.lost > 0 {
            self.metrics.batches_resent.inc_by(resumed.resent as u64);
            self.metrics.batches_lost.inc_by(resumed.lost);
            warn!(
                controller = %self.controller,
                merged = registered.last,
                resent = resumed.resent,
                lost = resumed.lost,
                "the controller lost acknowledged batches (restarted since its last checkpoint): sending those retained again"
            );
        }
        self.metrics.batches_retained.set(outbox.retained() as u64);
    }

    async fn session(
        &self,
        outbox: &mut Outbox,
        shutdown: &mut watch::Receiver<bool>,
        deadline: Option<tokio::time::Instant>,
    ) -> Outcome {
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => return Outcome::Reconnect(e),
        };
        let registered = match self.register(&mut client).await {
            Ok(v) => v,
            Err(e) => return Outcome::Reconnect(e),
        };
        let mut announced = registered.version;
        self.resume(outbox, &registered);
        self.metrics.controller_connected.set(1);
        self.metrics.reconnects.inc();
        info!(controller = %self.controller, host_id = %self.host_id, "registered with controller");
        loop {
            let (version, _) = self.registry.snapshot();
            if version != announced {
                match self.register(&mut client).await {
                    Ok(registered) => {
                        announced = registered.version;
                        self.resume(outbox, &registered);
                    }
                    Err(e) => return Outcome::Reconnect(e),
                }
            }
            if outbox.is_empty() {
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
                let budget = self.batch_max_bytes.saturating_sub(BATCH_OVERHEAD).max(1);
                outbox.push(self.queue.take_within(self.batch_size, budget));
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return Outcome::Done;
            }
            let Some((seq, records)) = outbox.front() else {
                continue;
            };
            let batch = FlowBatch {
                host_id: self.host_id.clone(),
                agent_instance: self.instance.clone(),
                sequence: seq,
                records: records.to_vec(),
                dropped_records_total: self.metrics.records_dropped.get(),
            };
            match client.push_flows(batch).await {
                Ok(response) => {
                    let durable = response.into_inner().durable_sequence;
                    if let Some((records, evicted)) = outbox.acked(durable) {
                        self.metrics.records_sent.inc_by(records as u64);
                        self.metrics.records_unretained.inc_by(evicted);
                    }
                    self.metrics.batches_retained.set(outbox.retained() as u64);
                    self.metrics.batches_sent.inc();
                }
                Err(status)
                    if matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) =>
                {
                    self.too_large(outbox, seq, &status);
                }
                Err(status) if status.code() == Code::FailedPrecondition => {
                    // The controller restarted and forgot us: register again, resend.
                    match self.register(&mut client).await {
                        Ok(registered) => {
                            announced = registered.version;
                            self.resume(outbox, &registered);
                        }
                        Err(e) => return Outcome::Reconnect(e),
                    }
                }
                Err(status) => return Outcome::Reconnect(format!("push: {}", status.message())),
            }
        }
    }

    /// The controller refused the front batch as too large: split it, or drop its one
    /// record (counted), and say so.
    fn too_large(&self, outbox: &mut Outbox, seq: u64, status: &tonic::Status) {
        match outbox.too_large() {
            TooLarge::Split(first, second) => {
                self.metrics.batch_splits.inc();
                warn!(
                    sequence = seq,
                    records = first + second,
                    controller = %status.message(),
                    "the controller refused a batch as too large; sending it again in two halves"
                );
            }
            TooLarge::Dropped(record) => {
                self.metrics.records_too_large.inc();
                warn!(
                    sequence = seq,
                    bytes = record_bytes(&record),
                    workload = %record.workload,
                    interface = %record.interface,
                    local_port = record.local_port,
                    remote_port = record.remote_port,
                    controller = %status.message(),
                    "dropping a flow record the controller refuses as too large even alone"
                );
            }
            TooLarge::Empty => {}
        }
    }
}

/// Sends `records` through [`Exporter::run`] to the controller at `controller` and stops
/// once they are all acknowledged or dropped (tests).
#[cfg(test)]
mod tests;
