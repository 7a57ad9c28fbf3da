//! Trust boundaries end to end: a lab of two hypervisors whose agents talk to the
//! controller over mutual TLS. The hv2 agent's certificate cannot be used to speak for hv1
//! (neither by the agent binary, which refuses to start, nor by a hand-made gRPC client,
//! which the controller refuses), and a client without a token cannot re-address hv1's
//! workload: its address stays on its interface.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use weft_lab::weft::{Agent, Controller, binary, ensure_agent_cert, free_port, lab_certs};
use weft_lab::{Lab, eventually, skip_unless_root};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_control_service_client::AgentControlServiceClient;

const NETWORK: &str = "guarded";

#[test]
fn another_hosts_certificate_cannot_speak_for_hv1_and_no_token_changes_nothing() -> Result<()> {
    if skip_unless_root(
        "another_hosts_certificate_cannot_speak_for_hv1_and_no_token_changes_nothing",
    ) {
        return Ok(());
    }
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("a1")
        .hypervisor("hv2")
        .workload("b1")
        .build()?;
    let x = lab.x();
    let hv1 = &lab.hypervisors()[0];
    let hv2 = &lab.hypervisors()[1];
    let ip = hv1.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{x}.128/25");
    let controller = Controller::start_with(&lab, &grpc, &http, &["--shard-pool", &pool])?;
    let url = controller.grpc_url();
    ensure!(
        url.starts_with("https://"),
        "the lab runs with mutual TLS: {url}"
    );
    let agent = Agent::start(&lab, 0, &url)?;
    let _agent2 = Agent::start(&lab, 1, &url)?;
    let logs = || {
        format!(
            "controller:\n{}\nhv1 agent:\n{}",
            controller.child.tail(20),
            agent.child.tail(20)
        )
    };

    controller
        .json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": 28, "network_id": NETWORK})),
        )
        .with_context(logs)?;
    let a: Value = controller
        .json(
            "POST",
            &format!("/networks/{NETWORK}/addresses"),
            Some(&json!({"workload": "a1", "host_id": "hv1"})),
        )
        .with_context(logs)?;
    let cidr = a["cidr"].as_str().context("cidr")?.to_owned();
    let a1 = lab.workload("a1")?;
    let has_address = || -> Result<()> {
        let out = a1.netns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"])?;
        ensure!(
            out.contains(&format!(" {cidr} ")),
            "a1 has no {cidr}: {out}"
        );
        Ok(())
    };
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        has_address,
    )
    .with_context(logs)?;

    // The agent binary will not claim hv1 with hv2's certificate.
    let (ca, cert2, key2) = ensure_agent_cert(&lab, &hv2.name)?;
    let bin = binary("weft-agent")?;
    let refused = hv2.netns.exec_timeout(
        Duration::from_secs(20),
        &[
            &bin.to_string_lossy(),
            "--host-id",
            "hv1",
            "--controller",
            &url,
            "--ca",
            &ca.to_string_lossy(),
            "--cert",
            &cert2.to_string_lossy(),
            "--key",
            &key2.to_string_lossy(),
            "--metrics-listen",
            "127.0.0.1:9465",
        ],
    );
    let err = format!(
        "{:#}",
        refused
            .err()
            .context("an agent with hv2's certificate started as hv1")?
    );
    ensure!(err.contains("is for host(s) [\"hv2\"]"), "{err}");

    // A hand-made client with hv2's certificate: refused by the controller.
    let certs = lab_certs(&lab);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (code, generation_before) = rt.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read_to_string(
                certs.join("ca.pem"),
            )?))
            .identity(Identity::from_pem(
                std::fs::read_to_string(&cert2)?,
                std::fs::read_to_string(&key2)?,
            ))
            .domain_name(ip.clone());
        let ch = Endpoint::from_shared(url.clone())?
            .tls_config(tls)?
            .connect()
            .await?;
        let before: Value = serde_json::from_str(&controller.get("/hosts/hv1/status")?)?;
        let forged = wire::ObservedState {
            host_id: "hv1".into(),
            agent_instance: "forged".into(),
            applied_generation: u64::MAX,
            controller_epoch: before["controller_epoch"].as_u64().unwrap_or(0),
            resources: vec![],
            drift: vec![],
        };
        let e = AgentControlServiceClient::new(ch)
            .report_observed(forged)
            .await
            .err()
            .context("a report for hv1 with hv2's certificate was accepted")?;
        anyhow::Ok((e.code(), before["applied_generation"].clone()))
    })?;
    ensure!(code == Code::PermissionDenied, "{code:?}");
    let after: Value = serde_json::from_str(&controller.get("/hosts/hv1/status")?)?;
    ensure!(after["applied_generation"] == generation_before, "{after}");

    // A client without a token cannot take the address away.
    let release = controller.http_url(&format!("/networks/{NETWORK}/workloads/a1/addresses"));
    let status = match controller
        .client()?
        .delete(&release)
        .timeout(Duration::from_secs(5))
        .call()
    {
        Err(ureq::Error::Status(code, _)) => code,
        Ok(r) => r.status(),
        Err(e) => return Err(e).context("DELETE without a token"),
    };
    ensure!(status == 401, "DELETE without a token answered {status}");
    std::thread::sleep(Duration::from_millis(500));
    has_address().context("after the refused DELETE")?;
    let listed = controller.json(
        "GET",
        &format!("/networks/{NETWORK}/workloads/a1/addresses"),
        None,
    )?;
    ensure!(
        listed
            .to_string()
            .contains(cidr.split('/').next().unwrap_or_default()),
        "{listed}"
    );
    Ok(())
}
