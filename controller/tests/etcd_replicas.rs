//! Two controller replicas on one etcd, both serving: the leader (the writer's lease) and
//! a follower. Each holds the flow records its own agents sent; a topology query on
//! either merges both and gets the same answer; what only the leader serves is
//! forwarded there by the follower, and an agent's desired-state stream is refused by
//! it. The leader killed (`kill -9`), the follower takes the lease, restarts itself as the
//! leader on the same ports, and still answers the whole topology: its own records (its
//! checkpoint) and the dead leader's (from that one's last checkpoint).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::Value;
use tonic::transport::Channel;
use weft_proto::v1::agent_control_service_client::AgentControlServiceClient;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_proto::v1::{
    FlowBatch, FlowDirection, FlowRecord, RegisterRequest, Transport, WatchDesiredStateRequest,
    Workload,
};
use weft_store::etcd_process::{self, EtcdCluster};

#[path = "common/alloc_http.rs"]
mod alloc_http;
use alloc_http::{Conn, Http};

/// A controller process, killed when the test ends, and the lines it prints.
struct Replica {
    child: Child,
    lines: Receiver<String>,
    grpc: String,
    http: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(etcd: &str, name: &str, dir: &std::path::Path) -> Self {
        let port = |_: ()| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port()
        };
        let grpc = format!("127.0.0.1:{}", port(()));
        let http = format!("127.0.0.1:{}", port(()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
            .args(["--grpc-listen", &grpc, "--http-listen", &http])
            .args(["--log", "warn", "--insecure", "--etcd", etcd])
            .args(["--etcd-lease-ttl", "2s", "--replica-name", name])
            .args(["--topology-checkpoint-interval", "300ms", "--data-dir"])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weft-controller");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            grpc,
            http,
        }
    }

    /// Waits for a line starting with `weft-controller <what>`.
    fn announces(&self, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `weft-controller {what}` line within {within:?}"));
            if line.starts_with(&format!("weft-controller {what} ")) {
                return;
            }
        }
    }
}

fn now_ns() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("64-bit")
}

/// An agent on `host` (with workload `client` at `client_ip`) that sends one batch of one
/// connection `client` -> db (198.18.9.9:5432) with `requests` requests.
async fn agent_sends(grpc: &str, host: &str, client: &str, client_ip: [u8; 4], requests: u64) {
    let mut c = AgentServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let ip = std::net::Ipv4Addr::from(client_ip).to_string();
    c.register(RegisterRequest {
        host_id: host.into(),
        agent_instance: format!("{host}-1"),
        workloads: vec![Workload {
            name: client.into(),
            interface: format!("veth-{client}"),
            addresses: vec![ip],
        }],
        agent_version: "test".into(),
        underlay_address: String::new(),
    })
    .await
    .expect("register");
    let now = now_ns();
    let record = FlowRecord {
        workload: client.into(),
        interface: format!("veth-{client}"),
        transport: Transport::Tcp as i32,
        local_ip: client_ip.to_vec(),
        local_port: 40_000,
        remote_ip: vec![198, 18, 9, 9],
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
    let answer = c
        .push_flows(FlowBatch {
            host_id: host.into(),
            agent_instance: format!("{host}-1"),
            sequence: 1,
            records: vec![record],
            dropped_records_total: 0,
        })
        .await
        .expect("push")
        .into_inner();
    assert_eq!(answer.accepted, 1);
}

/// (source, requests) of every dependency to port 5432, and the `weft-replicas` header.
fn topology(http: &Http) -> (Vec<(String, u64)>, String) {
    let mut conn = Conn::open(&http.addr, &http.token).expect("connect");
    let (status, body) = conn
        .request("GET", "/topology?shape=weft", "")
        .expect("GET /topology");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let mut deps: Vec<(String, u64)> = v["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|d| {
            (
                d["source"].as_str().unwrap_or_default().to_owned(),
                d["requests"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    deps.sort();
    (deps, String::new())
}

/// One request on a fresh connection, off the async runtime's threads.
async fn request(
    http: &Http,
    method: &'static str,
    path: &'static str,
    body: &'static str,
) -> (u16, String) {
    let http = http.clone();
    tokio::task::spawn_blocking(move || {
        Conn::open(&http.addr, &http.token)
            .expect("connect")
            .request(method, path, body)
            .expect("request")
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_replicas_serve_and_answer_the_same_merged_topology_and_the_follower_takes_over() {
    if !etcd_process::available() {
        eprintln!("etcd not found; skipped (cargo xtask setup installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "weft-replicas-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let cluster = EtcdCluster::start(&dir, 1).expect("etcd");
    let etcd = cluster.url();
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    let a = Replica::start(&etcd, "ctl-a", &dir_a);
    a.announces("listening", Duration::from_secs(30));
    let b = Replica::start(&etcd, "ctl-b", &dir_b);
    b.announces("following", Duration::from_secs(30));
    let token = std::fs::read_to_string(dir_a.join("admin.token"))
        .expect("the leader's admin token")
        .trim()
        .to_owned();
    let http_a = Http {
        addr: a.http.clone(),
        token: token.clone(),
    };
    let http_b = Http {
        addr: b.http.clone(),
        token: token.clone(),
    };

    // Each replica gets its own agent's records.
    agent_sends(&a.grpc, "hv1", "web", [198, 18, 1, 1], 3).await;
    agent_sends(&b.grpc, "hv2", "api", [198, 18, 1, 2], 5).await;
    let want = vec![("api".to_owned(), 5), ("web".to_owned(), 3)];
    let ask = |http: Http| tokio::task::spawn_blocking(move || topology(&http).0);
    let from_a = ask(http_a.clone()).await.expect("ask a");
    let from_b = ask(http_b.clone()).await.expect("ask b");
    assert_eq!(from_a, want, "the leader merges the follower's records");
    assert_eq!(from_b, from_a, "the same answer whichever replica is asked");

    // The follower sends writes to the leader, and refuses desired state.
    let (status, _) = request(
        &http_b,
        "POST",
        "/shards",
        r#"{"prefix_len": 28, "network_id": "blue"}"#,
    )
    .await;
    assert_eq!(status, 201, "a follower forwards what the leader serves");
    let (status, body) = request(&http_a, "GET", "/shards", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"blue\""),
        "the leader made the shard: {body}"
    );
    let mut control = AgentControlServiceClient::<Channel>::connect(format!("http://{}", b.grpc))
        .await
        .expect("connect");
    let refused = control
        .watch_desired_state(WatchDesiredStateRequest {
            host_id: "hv2".into(),
            agent_instance: "hv2-1".into(),
            kinds: Vec::new(),
        })
        .await
        .expect_err("a follower serves no desired state");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(
        refused.message().contains("follower replica"),
        "{refused:?}"
    );

    // Both checkpoints written, then the leader dies.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    drop(a);
    let killed = Instant::now();
    let b_lines = &b.lines;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = b_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the follower restarts as the leader within 30 s");
        if line.starts_with("weft-controller listening ") {
            break;
        }
    }
    eprintln!(
        "follower became the leader {:?} after the kill",
        killed.elapsed()
    );
    let merged = ask(http_b.clone()).await.expect("ask b");
    assert_eq!(
        merged, want,
        "the new leader answers its own records and the dead leader's last checkpoint"
    );
    // It now serves what only a leader serves.
    let (status, body) = request(
        &http_b,
        "POST",
        "/shards",
        r#"{"prefix_len": 28, "network_id": "blue"}"#,
    )
    .await;
    assert!(status == 201 || status == 200, "{status} {body}");
    drop(b);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
