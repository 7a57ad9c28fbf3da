//! Two controller replicas on one etcd, and an agent that knows both: the follower serves
//! beside the leader (topology reads merged: the same answer from either, whichever one
//! took the records), then the leader is killed while a shard migration waits for the
//! agent; the follower takes the writer's lease (restarting itself as the leader), the
//! agent (whose first controller now refuses it) moves to it by itself, and the
//! migration the killed leader started completes there.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{Lab, eventually, skip_unless_root};
use weft_store::etcd_process::{self, EtcdCluster};

use crate::support;

const NETWORK: &str = "net1";

#[test]
fn the_follower_serves_then_takes_over_and_completes_the_leaders_migration() -> Result<()> {
    if skip_unless_root("the_follower_serves_then_takes_over_and_completes_the_leaders_migration") {
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
    let flags = |name: &'static str| {
        [
            "--etcd",
            url.as_str(),
            "--etcd-lease-ttl",
            "2s",
            "--replica-name",
            name,
            "--shard-pool",
            pool.as_str(),
            "--migration-timeout",
            "1s",
            // Observations posted to the leader (no agent to send them again) are in its
            // checkpoint well before it is killed.
            "--topology-checkpoint-interval",
            "300ms",
        ]
    };
    let addrs = |ip: &str| -> Result<(String, String)> {
        Ok((
            format!("{ip}:{}", free_port(ip)?),
            format!("127.0.0.1:{}", free_port("127.0.0.1")?),
        ))
    };
    let (grpc_a, http_a) = addrs(&ip)?;
    let (grpc_b, http_b) = addrs(&ip)?;
    let mut a = Controller::start_with(&lab, &grpc_a, &http_a, &flags("ctl-a"))?;
    let mut b = Controller::spawn(&lab, &grpc_b, &http_b, &flags("ctl-b"), "weft-controller-b")?
        .following(Duration::from_secs(20))
        .context("the second controller serves as a follower")?;
    // Records sent to the follower are in the leader's answer too, and the other way.
    let observe = |c: &Controller, client: &str| -> Result<()> {
        let body = json!([{
            "timestamp_unix_ns": 0,
            "source": {"host": client, "port": 40000},
            "destination": {"host": "ledger", "port": 5432},
            "protocol": "postgres",
            "bytes_sent": 100, "bytes_received": 200, "latency_ms": 2.0,
        }]);
        let (status, text) = c.send("POST", "/observations", Some(&body))?;
        ensure!(status == 200, "POST /observations: {status} {text}");
        Ok(())
    };
    observe(&a, "billing")?;
    observe(&b, "orders")?;
    let sources = |c: &Controller| -> Result<Vec<String>> {
        let t = c.json("GET", "/topology?shape=weft", None)?;
        let mut s: Vec<String> = t["dependencies"]
            .as_array()
            .context("dependencies")?
            .iter()
            .filter(|d| d["target"] == "ledger")
            .map(|d| format!("{}:{}", d["source"], d["requests"]))
            .collect();
        s.sort();
        Ok(s)
    };
    // Asked live (over HTTPS, trusting the site's CA), not read from a checkpoint.
    let replicas = |c: &Controller| -> Result<String> {
        let response = c
            .client()?
            .get(&c.http_url("/topology"))
            .set("authorization", &c.authorization())
            .call()?;
        Ok(response
            .header("weft-replicas")
            .unwrap_or_default()
            .to_owned())
    };
    let header = replicas(&a)?;
    ensure!(
        header.contains("ctl-b=live"),
        "the leader asked the follower live: {header}"
    );
    let header = replicas(&b)?;
    ensure!(
        header.contains("ctl-a=live"),
        "the follower asked the leader live: {header}"
    );
    let from_a = sources(&a)?;
    ensure!(
        from_a.len() == 2,
        "both replicas' records merged: {from_a:?}"
    );
    ensure!(
        sources(&b)? == from_a,
        "the same topology from the follower: {:?} vs {from_a:?}",
        sources(&b)?
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
    b.child
        .wait_for_line(&["weft-controller listening"], Duration::from_secs(30))
        .context("the follower takes over")?;
    println!(
        "follower serving as the leader {:?} after the leader's kill -9",
        killed.elapsed()
    );
    ensure!(
        sources(&b)? == from_a,
        "the new leader still answers both replicas' records: {:?}",
        sources(&b)?
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
