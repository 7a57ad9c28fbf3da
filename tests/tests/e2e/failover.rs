//! Two controllers on one etcd, and an agent that knows both: the writer is killed while a
//! shard migration waits for the agent; the standby takes the writer's lease, the agent
//! (whose first controller now refuses it) moves to the standby by itself, and the
//! migration the killed writer started completes there.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{Lab, eventually, skip_unless_root};
use weft_store::etcd_process::{self, EtcdCluster};

use crate::support;

const NETWORK: &str = "net1";

#[test]
fn the_standby_takes_over_and_completes_the_writers_migration() -> Result<()> {
    if skip_unless_root("the_standby_takes_over_and_completes_the_writers_migration") {
        return Ok(());
    }
    ensure!(
        etcd_process::available(),
        "etcd not found: run `cargo xtask setup`"
    );
    let lab: Lab = support::lab(&["r1", "r2"])?;
    let x = lab.x();
    let hv = lab.hypervisor();
    let etcd = EtcdCluster::start(lab.dir(), 1).map_err(|e| anyhow::anyhow!(e))?;
    let url = etcd.url();
    let ip = hv.uplink_root_addr.clone();
    let pool = format!("198.19.{x}.128/25");
    let flags = [
        "--etcd",
        url.as_str(),
        "--etcd-lease-ttl",
        "2s",
        "--standby",
        "wait",
        "--shard-pool",
        pool.as_str(),
        "--migration-timeout",
        "1s",
    ];
    let addrs = |ip: &str| -> Result<(String, String)> {
        Ok((
            format!("{ip}:{}", free_port(ip)?),
            format!("127.0.0.1:{}", free_port("127.0.0.1")?),
        ))
    };
    let (grpc_a, http_a) = addrs(&ip)?;
    let (grpc_b, http_b) = addrs(&ip)?;
    let mut a = Controller::start_with(&lab, &grpc_a, &http_a, &flags)?;
    let standby = Controller::spawn(&lab, &grpc_b, &http_b, &flags, "weft-controller-standby")?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        !standby.serving(),
        "the standby serves while the writer holds the lease"
    );
    let both = format!(
        "{},{}",
        a.grpc_url(),
        a.grpc_url().replace(&grpc_a, &grpc_b)
    );
    let mut agent = Agent::start(&lab, 0, &both)?;

    // Two workloads addressed from one shard, a second shard to move them to.
    let shard = |c: &Controller| {
        c.json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": 28, "network_id": NETWORK})),
        )
    };
    let old = shard(&a)?;
    let old_id = old["id"].as_str().context("shard id")?.to_owned();
    let mut first = Vec::new();
    for w in ["r1", "r2"] {
        let v = a.json(
            "POST",
            &format!("/networks/{NETWORK}/addresses"),
            Some(&json!({"workload": w, "host_id": hv.name, "family": "ipv4"})),
        )?;
        first.push(v["address"].as_str().context("address")?.to_owned());
    }
    let eth0 = |w: &str| -> Result<String> {
        lab.workload(w)?
            .netns
            .ip(&["-4", "-o", "addr", "show", "dev", "eth0"])
    };
    eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        for (w, address) in ["r1", "r2"].iter().zip(&first) {
            ensure!(
                eth0(w)?.contains(&format!("{address}/")),
                "{w} has no {address} yet"
            );
        }
        Ok(())
    })
    .with_context(|| format!("{}\n{}", a.child.tail(30), agent.child.tail(30)))?;
    shard(&a)?;

    // The migration waits for the agent (stopped), then the writer dies.
    agent.child.kill_hard();
    let (status, body) = a.send(
        "DELETE",
        &format!("/networks/{NETWORK}/shards/{old_id}"),
        None,
    )?;
    ensure!(status == 202, "a migration starts: {status} {body}");
    let mid = serde_json::from_str::<Value>(&body)?["migration_id"]
        .as_str()
        .context("migration id")?
        .to_owned();
    eventually(Duration::from_secs(15), Duration::from_millis(100), || {
        let m = a.json("GET", &format!("/migrations/{mid}"), None)?;
        ensure!(m["state"] == "Paused", "migration {}: {m}", m["state"]);
        Ok(())
    })?;
    a.child.kill_hard();
    let killed = Instant::now();
    let b = standby
        .ready(Duration::from_secs(20))
        .context("the standby takes over")?;
    println!(
        "standby serving {:?} after the writer's kill -9",
        killed.elapsed()
    );

    // The agent starts again knowing both; the first refuses it, the second serves.
    agent = Agent::start(&lab, 0, &both)?;
    let done = eventually(Duration::from_secs(40), Duration::from_millis(200), || {
        let m = b.json("GET", &format!("/migrations/{mid}"), None)?;
        ensure!(m["state"] == "Completed", "migration {}: {m}", m["state"]);
        Ok(m)
    })
    .with_context(|| format!("{}\n{}", b.child.tail(30), agent.child.tail(30)))?;
    for (i, w) in ["r1", "r2"].iter().enumerate() {
        let new = done["moves"]
            .as_array()
            .and_then(|moves| moves.iter().find(|m| m["workload"] == *w))
            .and_then(|m| m["new_address"].as_str())
            .with_context(|| format!("{w}'s move: {done}"))?
            .to_owned();
        eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            let out = eth0(w)?;
            ensure!(
                out.contains(&format!("{new}/")) && !out.contains(&format!("{}/", first[i])),
                "{w} eth0: {out}"
            );
            Ok(())
        })?;
    }
    ensure!(
        agent.child.output().contains("trying the next controller"),
        "the agent moved to the next controller: {}",
        agent.child.tail(30)
    );
    drop(agent);
    drop(b);
    drop(etcd);
    Ok(())
}
