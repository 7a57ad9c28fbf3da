//! Exactly once across a `kill -9`: the controller answers every push with the sequence its
//! last topology checkpoint holds (`durable_sequence`); after a restart, a registration
//! answers with the sequence read back from that checkpoint, a batch at or below it is
//! ignored and the ones above it (which an agent kept, not yet durable) are merged: each
//! record counted once.

use std::time::{Duration, Instant};

use serde_json::Value;
use tonic::transport::Channel;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_proto::v1::{
    FlowBatch, FlowDirection, FlowRecord, PushFlowsResponse, RegisterRequest, Transport, Workload,
};

#[path = "common/alloc_http.rs"]
mod alloc_http;
use alloc_http::{Conn, Http, start_with_grpc};

const INSTANCE: &str = "agent-instance-1";

async fn connect(grpc: &str) -> AgentServiceClient<Channel> {
    AgentServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect")
}

fn register_request() -> RegisterRequest {
    let workload = |name: &str, address: &str| Workload {
        name: name.into(),
        interface: format!("veth-{name}"),
        addresses: vec![address.into()],
    };
    RegisterRequest {
        host_id: "hv1".into(),
        agent_instance: INSTANCE.into(),
        workloads: vec![workload("web", "198.18.0.1"), workload("db", "198.18.0.2")],
        agent_version: "test".into(),
        underlay_address: String::new(),
    }
}

/// A batch of one new web -> db connection with `requests` requests.
fn batch(sequence: u64, requests: u64) -> FlowBatch {
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("64-bit nanoseconds");
    let record = FlowRecord {
        workload: "web".into(),
        interface: "veth-web".into(),
        transport: Transport::Tcp as i32,
        local_ip: vec![198, 18, 0, 1],
        local_port: 40_000 + u32::try_from(sequence).expect("small"),
        remote_ip: vec![198, 18, 0, 2],
        remote_port: 5432,
        direction: FlowDirection::Outbound as i32,
        requests,
        bytes_out: 100,
        bytes_in: 200,
        first_record: true,
        first_seen_unix_ns: now - 1_000_000,
        last_seen_unix_ns: now,
        ..Default::default()
    };
    FlowBatch {
        host_id: "hv1".into(),
        agent_instance: INSTANCE.into(),
        sequence,
        records: vec![record],
        dropped_records_total: 0,
    }
}

/// Kills the controller when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn push(client: &mut AgentServiceClient<Channel>, b: FlowBatch) -> PushFlowsResponse {
    client.push_flows(b).await.expect("push").into_inner()
}

fn web_db_requests(http: &Http) -> u64 {
    let (status, body) = Conn::open(&http.addr, &http.token)
        .expect("connect")
        .request("GET", "/topology?shape=weft", "")
        .expect("GET /topology");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["source"] == "web" && d["target"] == "db")
        .map(|d| d["requests"].as_u64().expect("requests"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_acknowledged_after_the_last_checkpoint_are_merged_once_after_a_kill_9() {
    let dir = std::env::temp_dir().join(format!(
        "weft-resend-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let flags = ["--topology-checkpoint-interval", "300ms"];
    let (child, _, grpc) = start_with_grpc(&dir, &flags);
    let mut child = Killed(child);
    let mut client = connect(&grpc).await;
    let registered = client
        .register(register_request())
        .await
        .expect("register")
        .into_inner();
    assert_eq!(
        (registered.last_sequence, registered.durable_sequence),
        (0, 0)
    );

    // Batches 1 and 2 (3 + 5 requests): acknowledged, then durable once a checkpoint ran.
    let first = push(&mut client, batch(1, 3)).await;
    assert_eq!(first.accepted, 1);
    push(&mut client, batch(2, 5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // An empty batch is a heartbeat: it answers the durable sequence too.
        let beat = push(
            &mut client,
            FlowBatch {
                records: Vec::new(),
                ..batch(0, 0)
            },
        )
        .await;
        if beat.durable_sequence >= 2 {
            assert_eq!(beat.durable_sequence, 2, "nothing above 2 was merged");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint made batch 2 durable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Batch 3 (7 requests) is acknowledged; the controller dies before (almost surely)
    // a checkpoint holds it.
    let third = push(&mut client, batch(3, 7)).await;
    assert_eq!(third.accepted, 1);
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reap");
    drop(client);

    let (child, http, grpc) = start_with_grpc(&dir, &flags);
    let _child = Killed(child);
    let mut client = connect(&grpc).await;
    let registered = client
        .register(register_request())
        .await
        .expect("register again")
        .into_inner();
    let last = registered.last_sequence;
    assert!(
        (2..=3).contains(&last),
        "the checkpoint held batch 2 (and 3 if one ran before the kill): {last}"
    );
    assert_eq!(
        registered.durable_sequence, last,
        "what a restarted controller read back is durable"
    );
    // The agent sends again everything it kept above `last`; a batch at or below it is
    // ignored.
    let again = push(&mut client, batch(2, 5)).await;
    assert_eq!(again.accepted, 0, "batch 2 was read back: not merged twice");
    for sequence in last + 1..=3 {
        assert_eq!(push(&mut client, batch(sequence, 7)).await.accepted, 1);
    }
    assert_eq!(
        web_db_requests(&http),
        3 + 5 + 7,
        "every request once after kill -9 and resend"
    );
    drop(_child);
    let _ = std::fs::remove_dir_all(&dir);
}
