//! The exporter against a real tonic server whose decode limit is small: a batch over it
//! is split in halves until it fits, a record too large alone is dropped and counted, and
//! every other record arrives exactly once, in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use weft_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use weft_proto::v1::{FlowBatch, FlowRecord, PushFlowsResponse, RegisterRequest, RegisterResponse};

use super::Exporter;
use crate::metrics::Metrics;
use crate::queue::RecordQueue;
use crate::workloads::Registry;

/// (sequence, local ports of the records) of each batch merged.
type Batches = Arc<Mutex<Vec<(u64, Vec<u32>)>>>;

/// What the fake controller merged.
#[derive(Default, Clone)]
struct Merged(Batches);

#[tonic::async_trait]
impl AgentService for Merged {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let last = self
            .0
            .lock()
            .unwrap()
            .last()
            .map_or(0, |(sequence, _)| *sequence);
        Ok(Response::new(RegisterResponse {
            controller_instance: "fake".into(),
            last_sequence: last,
            durable_sequence: last,
        }))
    }

    async fn push_flows(
        &self,
        request: Request<FlowBatch>,
    ) -> Result<Response<PushFlowsResponse>, Status> {
        let batch = request.into_inner();
        if batch.records.is_empty() {
            return Ok(Response::new(PushFlowsResponse {
                accepted: 0,
                durable_sequence: 0,
            }));
        }
        let mut merged = self.0.lock().unwrap();
        if merged.last().is_some_and(|(s, _)| *s >= batch.sequence) {
            return Err(Status::failed_precondition(format!(
                "sequence {} is not after {:?}",
                batch.sequence,
                merged.last()
            )));
        }
        let ports: Vec<u32> = batch.records.iter().map(|r| r.local_port).collect();
        merged.push((batch.sequence, ports));
        Ok(Response::new(PushFlowsResponse {
            accepted: batch.records.len() as u64,
            durable_sequence: batch.sequence,
        }))
    }
}

/// A record of about `bytes` encoded bytes.
fn record(port: u32, bytes: usize) -> FlowRecord {
    FlowRecord {
        local_port: port,
        workload: "w".repeat(bytes),
        ..Default::default()
    }
}

async fn export(
    limit: usize,
    batch_max_bytes: usize,
    records: Vec<FlowRecord>,
) -> (Merged, Arc<Metrics>) {
    let merged = Merged::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(merged.clone()).max_decoding_message_size(limit))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let metrics = Arc::new(Metrics::default());
    let queue = Arc::new(RecordQueue::new(10_000, metrics.clone()));
    queue.push(records);
    let exporter = Exporter {
        controller: crate::controller_link::ControllerLink::plain(&format!("http://{addr}")),
        host_id: "hv-test".into(),
        instance: "i-test".into(),
        batch_size: 2_000,
        batch_max_bytes,
        queue: queue.clone(),
        registry: Arc::new(Registry::new(Vec::new())),
        metrics: metrics.clone(),
        underlay_address: None,
        resend_buffer_bytes: 1 << 20,
    };
    // Stopping from the start: the exporter sends what is queued, then returns.
    let (_tx, rx) = tokio::sync::watch::channel(true);
    tokio::time::timeout(
        Duration::from_secs(30),
        exporter.run(rx, Duration::from_secs(20)),
    )
    .await
    .expect("the exporter finished: no batch was resent forever");
    assert_eq!(queue.len(), 0);
    (merged, metrics)
}

#[tokio::test]
async fn a_batch_over_the_controllers_limit_is_split_and_a_record_too_large_alone_dropped() {
    // 100 records of ~300 bytes (~31 KB) and one of 20 KB, against an 8 KiB limit.
    let mut records: Vec<FlowRecord> = (0..50).map(|i| record(i, 300)).collect();
    records.push(record(999, 20_000));
    records.extend((50..100).map(|i| record(i, 300)));
    let (merged, metrics) = export(8 * 1024, 1 << 20, records).await;

    let merged = merged.0.lock().unwrap().clone();
    let ports: Vec<u32> = merged.iter().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(
        ports,
        (0..100).collect::<Vec<u32>>(),
        "each once, in order, 999 dropped"
    );
    let sequences: Vec<u64> = merged.iter().map(|(s, _)| *s).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert_eq!(metrics.records_too_large.get(), 1);
    assert!(
        metrics.batch_splits.get() >= 4,
        "{}",
        metrics.batch_splits.get()
    );
    assert_eq!(metrics.records_sent.get(), 100);
}

#[tokio::test]
async fn batches_under_the_byte_budget_need_no_split() {
    let records: Vec<FlowRecord> = (0..100).map(|i| record(i, 300)).collect();
    let (merged, metrics) = export(8 * 1024, 6 * 1024, records).await;
    let merged = merged.0.lock().unwrap().clone();
    assert!(merged.len() >= 5, "{} batches", merged.len());
    assert_eq!(metrics.batch_splits.get(), 0);
    assert_eq!(metrics.records_too_large.get(), 0);
    assert_eq!(merged.iter().map(|(_, p)| p.len()).sum::<usize>(), 100);
}
