//! The cost of mutual TLS on the export path: flow records per second a release
//! controller merges when one agent pushes batches over plain gRPC (`--insecure`) and over
//! mutual TLS, measured alternately in the same run (3 rounds each), printed with the
//! ratio. Client and controller share the machine's CPUs, as an agent and a controller
//! would not: the ratio is the figure to read, not the absolute rates.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use weft_pki::{Kind, issue, new_ca, write};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_service_client::AgentServiceClient;

use crate::sh;

const ROUNDS: usize = 3;
/// Records per batch (the agent's default `--batch-size`).
const BATCH: usize = 2_000;
/// Each measurement stops at this many batches or after this long, whichever is first.
const MAX_BATCHES: u64 = 400;
const MAX_TIME: Duration = Duration::from_secs(8);

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, tls: bool) -> Result<(Controller, String)> {
    let bin = weft_lab::weft::target_dir()
        .join("release")
        .join("weft-controller");
    let mut c = Command::new(&bin);
    c.args([
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--log",
        "warn",
    ])
    .args(["--data-dir", ""])
    .arg("--admin-token-file")
    .arg(dir.join("admin.token"));
    if tls {
        c.arg("--tls-cert").arg(dir.join("controller.pem"));
        c.arg("--tls-key").arg(dir.join("controller.key"));
        c.arg("--client-ca").arg(dir.join("ca.pem"));
    } else {
        c.arg("--insecure");
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let grpc = line
        .trim()
        .strip_prefix("weft-controller listening grpc=")
        .and_then(|r| r.split_once(' '))
        .map(|(g, _)| g.to_owned())
        .with_context(|| format!("unexpected first line {line:?}"))?;
    Ok((Controller(child), grpc))
}

fn records(now_ns: u64, batch: u64) -> Vec<wire::FlowRecord> {
    (0..BATCH as u64)
        .map(|i| wire::FlowRecord {
            workload: "web".into(),
            interface: "wl-web".into(),
            transport: wire::Transport::Tcp as i32,
            local_ip: vec![198, 18, 0, 2],
            local_port: 40_000 + (i % 20_000) as u32,
            remote_ip: vec![198, 18, 0, 3 + (i % 8) as u8],
            remote_port: 5432,
            direction: wire::FlowDirection::Outbound as i32,
            packets_out: 10,
            packets_in: 12,
            bytes_out: 1_500 + batch,
            bytes_in: 9_000,
            first_seen_unix_ns: now_ns - 1_000_000,
            last_seen_unix_ns: now_ns,
            requests: 3,
            latency_sum_ns: 3_000_000,
            first_record: batch == 0,
            protocol: "postgres".into(),
            ..Default::default()
        })
        .collect()
}

/// Records per second one client gets merged.
async fn measure(dir: &Path, grpc: &str, tls: bool) -> Result<f64> {
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{grpc}"))?.tcp_nodelay(true);
    if tls {
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        endpoint = endpoint.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read("ca.pem")?))
                .identity(Identity::from_pem(
                    read("agent-hv1.pem")?,
                    read("agent-hv1.key")?,
                ))
                .domain_name("127.0.0.1"),
        )?;
    }
    let mut client = AgentServiceClient::new(endpoint.connect().await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let instance = format!("{:016x}", std::process::id());
    client
        .register(wire::RegisterRequest {
            host_id: "hv1".into(),
            agent_instance: instance.clone(),
            workloads: vec![wire::Workload {
                name: "web".into(),
                interface: "wl-web".into(),
                addresses: vec!["198.18.0.2".into()],
            }],
            agent_version: "bench".into(),
            underlay_address: String::new(),
        })
        .await?;
    let now_ns = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos(),
    )?;
    // Built before the clock starts: the agent's encoding is not what is measured here.
    let batches: Vec<Vec<wire::FlowRecord>> = (0..8).map(|b| records(now_ns, b)).collect();
    let (mut accepted, mut sent) = (0u64, 0u64);
    let start = Instant::now();
    while sent < MAX_BATCHES && start.elapsed() < MAX_TIME {
        let reply = client
            .push_flows(wire::FlowBatch {
                host_id: "hv1".into(),
                agent_instance: instance.clone(),
                sequence: sent + 1,
                records: batches[(sent % 8) as usize].clone(),
                dropped_records_total: 0,
            })
            .await?;
        accepted += reply.get_ref().accepted;
        sent += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        accepted == sent * BATCH as u64,
        "{accepted} of {} records accepted",
        sent * BATCH as u64
    );
    Ok(accepted as f64 / secs)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(no_build: bool) -> Result<()> {
    sh::step("TLS on the export path: release controller, plain gRPC vs mutual TLS");
    if !no_build {
        sh::run_inherit(sh::cargo().args(["build", "--release", "-p", "weft-controller"]))?;
    }
    let dir = std::env::temp_dir().join(format!("weft-bench-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ca = new_ca("bench CA", 1)?;
    write(&dir, "ca", &ca, true)?;
    write(
        &dir,
        "controller",
        &issue(
            &ca,
            &Kind::Controller {
                names: vec!["127.0.0.1".into()],
            },
            1,
        )?,
        true,
    )?;
    write(
        &dir,
        "agent-hv1",
        &issue(
            &ca,
            &Kind::Agent {
                host_id: "hv1".into(),
            },
            1,
        )?,
        true,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    let result = (|| -> Result<()> {
        for round in 1..=ROUNDS {
            for with_tls in [false, true] {
                let (_controller, grpc) = start(&dir, with_tls)?;
                let rate = rt.block_on(measure(&dir, &grpc, with_tls))?;
                println!(
                    "    round {round}: {} {:.0} records/s",
                    if with_tls { "mutual TLS" } else { "plain     " },
                    rate
                );
                if with_tls { &mut tls } else { &mut plain }.push(rate);
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    let (p, t) = (median(&mut plain), median(&mut tls));
    println!(
        "\n| export path (one agent, {BATCH}-record batches, release controller) | records/s (median of {ROUNDS}) |\n|---|---|\n| plain gRPC (`--insecure`) | {p:.0} |\n| mutual TLS | {t:.0} |\n| ratio TLS / plain | {:.3} |",
        t / p
    );
    Ok(())
}
