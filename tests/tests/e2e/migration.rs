//! IP shards in the lab: workloads addressed from a shard keep answering a probe while the
//! shard migrates; each workload's unreachability window is measured and printed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{Lab, eventually, skip_unless_root};

use crate::support::{self, Weft};

const NETWORK: &str = "net1";
const ECHO_PORT: u16 = 7007;
/// A probe to every known address of every workload this often.
const PROBE_EVERY: Duration = Duration::from_millis(2);

/// Replies per workload: (when, the workload address that was probed).
type Replies = Arc<Mutex<Vec<Vec<(Instant, IpAddr)>>>>;

/// Sends UDP probes from inside the prober's namespace (this thread enters it) to every
/// address in `targets[i]` and records the replies, until `stop`.
fn probe(
    netns: String,
    targets: Arc<Mutex<Vec<Vec<IpAddr>>>>,
    replies: Replies,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).context("open prober netns")?;
    // SAFETY: setns on this thread only, with a valid namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_micros(500)))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let now = Instant::now();
        let t = targets
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        for (i, addrs) in t.iter().enumerate() {
            for a in addrs {
                // The payload names the address probed: the echo may answer from another
                // of the workload's addresses (its lab address is on-link to the prober).
                let _ = sock.send_to(
                    format!("{i} {a}").as_bytes(),
                    SocketAddr::new(*a, ECHO_PORT),
                );
            }
        }
        while now.elapsed() < PROBE_EVERY {
            if let Ok((n, _from)) = sock.recv_from(&mut buf)
                && let Some((i, a)) = std::str::from_utf8(&buf[..n]).unwrap_or("").split_once(' ')
                && let (Ok(i), Ok(a)) = (i.parse::<usize>(), a.parse::<IpAddr>())
                && let Ok(mut r) = replies.lock()
                && i < r.len()
            {
                r[i].push((Instant::now(), a));
            }
        }
    }
    Ok(())
}

/// The longest time without any reply, between `from` and `to`.
fn longest_gap(replies: &[(Instant, IpAddr)], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for (t, _) in replies.iter().filter(|(t, _)| *t >= from && *t <= to) {
        gap = gap.max(t.duration_since(last));
        last = *t;
    }
    gap.max(to.saturating_duration_since(last))
}

fn addresses_of(c: &Controller, workload: &str) -> Result<Vec<Value>> {
    let v = c.json(
        "GET",
        &format!("/networks/{NETWORK}/workloads/{workload}/addresses"),
        None,
    )?;
    Ok(v.get("addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

/// A /28 shard of the network, carved from the lab's own pool 198.19.X.128/25.
fn create_shard(c: &Controller) -> Result<Value> {
    c.json(
        "POST",
        "/shards",
        Some(&json!({"prefix_len": 28, "network_id": NETWORK})),
    )
}

#[test]
fn workloads_keep_answering_while_their_shard_migrates() -> Result<()> {
    if skip_unless_root("workloads_keep_answering_while_their_shard_migrates") {
        return Ok(());
    }
    migrate_and_measure("down-up")
}

#[test]
fn make_before_break_migration_keeps_workloads_reachable() -> Result<()> {
    if skip_unless_root("make_before_break_migration_keeps_workloads_reachable") {
        return Ok(());
    }
    migrate_and_measure("make-before-break")
}

/// Four workloads addressed from a shard, probed while it migrates; the agent re-addresses
/// them in `readdress_mode`.
fn migrate_and_measure(readdress_mode: &str) -> Result<()> {
    const MOVERS: [&str; 4] = ["m1", "m2", "m3", "m4"];
    // The echo ignores send errors: while its link is down for the re-address there is no
    // route back, and an echo that died there would look like an unreachable workload.
    let mut names = vec!["prober"];
    names.extend(MOVERS);
    let lab: Lab = support::lab(&names)?;
    let x = lab.x();
    let hv = lab.hypervisor();
    // The hypervisor routes between the lab subnet and the shard subnets on one bridge;
    // as a router on a shared segment it sends no ICMP redirects (they would make the
    // prober cache a direct route to an address before the workload has it).
    for key in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.br0.send_redirects=0",
    ] {
        hv.netns.exec(&["sysctl", "-q", "-w", key])?;
    }
    for m in MOVERS {
        let w = lab.workload(m)?;
        let script = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',{ECHO_PORT}))\n\
             while True:\n  d,a=s.recvfrom(64)\n  try:\n    s.sendto(d,a)\n  except OSError:\n    pass\n"
        );
        // Kept alive by the lab: everything in the namespace dies with it.
        std::mem::forget(w.netns.spawn(
            &w.dir,
            &format!("echo-{m}"),
            &["python3", "-c", &script],
        )?);
    }
    let ip = hv.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{x}.128/25");
    let controller = Controller::start_with(
        &lab,
        &grpc,
        &http,
        &["--shard-pool", &pool, "--migration-timeout", "10s"],
    )?;
    let agent = Agent::start_with(
        &lab,
        0,
        &controller.grpc_url(),
        &["--readdress-mode", readdress_mode],
    )?;
    let weft = Weft { controller, agent };
    let c = &weft.controller;

    let old = create_shard(c).with_context(|| weft.logs())?;
    let old_id = old["id"].as_str().context("shard id")?.to_owned();
    let old_gw = old["gateway"].as_str().context("gateway")?.to_owned();
    let old_prefix = old["prefix_len"].as_u64().context("prefix_len")?;
    hv.netns.ip(&[
        "addr",
        "add",
        &format!("{old_gw}/{old_prefix}"),
        "dev",
        "br0",
    ])?;
    let mut first: Vec<IpAddr> = Vec::new();
    for m in MOVERS {
        let a = c.json(
            "POST",
            &format!("/networks/{NETWORK}/addresses"),
            Some(&json!({"workload": m, "host_id": hv.name, "family": "ipv4"})),
        )?;
        first.push(a["address"].as_str().context("address")?.parse()?);
    }
    // The second shard exists only now, so the first four came from the old one.
    let new = create_shard(c)?;
    let new_gw = new["gateway"].as_str().context("gateway")?.to_owned();
    hv.netns.ip(&[
        "addr",
        "add",
        &format!("{new_gw}/{}", new["prefix_len"]),
        "dev",
        "br0",
    ])?;

    // The agents put the addresses on the workloads' eth0.
    for (m, a) in MOVERS.iter().zip(&first) {
        let w = lab.workload(m)?;
        eventually(Duration::from_secs(15), Duration::from_millis(100), || {
            let out = w.netns.ip(&["-4", "addr", "show", "dev", "eth0"])?;
            ensure!(out.contains(&format!("{a}/")), "{m} has no {a} yet: {out}");
            Ok(())
        })
        .with_context(|| weft.logs())?;
    }

    let targets = Arc::new(Mutex::new(
        first.iter().map(|a| vec![*a]).collect::<Vec<_>>(),
    ));
    let replies: Replies = Arc::new(Mutex::new(vec![Vec::new(); MOVERS.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (t, r, s) = (targets.clone(), replies.clone(), stop.clone());
        let ns = lab.workload("prober")?.netns.name().to_owned();
        std::thread::spawn(move || probe(ns, t, r, s))
    };
    let stop_guard = scopeguard(stop.clone());
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let r = replies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        ensure!(
            r.iter().all(|v| !v.is_empty()),
            "not every workload answers yet"
        );
        Ok(())
    })
    .with_context(|| weft.logs())?;

    let started = Instant::now();
    let (status, body) = c.send(
        "DELETE",
        &format!("/networks/{NETWORK}/shards/{old_id}"),
        None,
    )?;
    ensure!(
        status == 202,
        "deallocating a shard in use starts a migration: {status} {body}"
    );
    let migration: Value = serde_json::from_str(&body)?;
    let mid = migration["migration_id"]
        .as_str()
        .or(migration["id"].as_str())
        .context("migration id")?
        .to_owned();
    let done = eventually(Duration::from_secs(30), Duration::from_millis(20), || {
        // Follow the new addresses as soon as the controller hands them out.
        for (i, m) in MOVERS.iter().enumerate() {
            for a in addresses_of(c, m)? {
                if let Some(ip) = a["address"].as_str().and_then(|s| s.parse::<IpAddr>().ok())
                    && let Ok(mut t) = targets.lock()
                    && !t[i].contains(&ip)
                {
                    t[i].push(ip);
                }
            }
        }
        let m = c.json("GET", &format!("/migrations/{mid}"), None)?;
        ensure!(m["state"] == "Completed", "migration {}: {m}", m["state"]);
        Ok(m)
    })
    .with_context(|| weft.logs())?;
    let finished = Instant::now();
    // Probe until every workload answered at its new address (or 10 s): a workload that
    // took long to come back shows as a long window instead of a missing reply.
    let new_addresses: Vec<IpAddr> = done["moves"]
        .as_array()
        .context("moves")?
        .iter()
        .filter_map(|m| m["new_address"].as_str()?.parse().ok())
        .collect();
    // The last poll may have raced the end of the migration: probe every new address.
    for m in done["moves"].as_array().context("moves")? {
        let (Some(w), Some(a)) = (
            m["workload"].as_str(),
            m["new_address"]
                .as_str()
                .and_then(|a| a.parse::<IpAddr>().ok()),
        ) else {
            continue;
        };
        if let Some(i) = MOVERS.iter().position(|x| *x == w)
            && let Ok(mut t) = targets.lock()
            && !t[i].contains(&a)
        {
            t[i].push(a);
        }
    }
    let _ = eventually(Duration::from_secs(10), Duration::from_millis(10), || {
        let r = replies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        ensure!(
            new_addresses
                .iter()
                .all(|a| r.iter().flatten().any(|(t, x)| x == a && *t > started)),
            "not every new address answered yet"
        );
        Ok(())
    });
    let answered = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    drop(stop_guard);
    prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;

    let old_shard = c.json("GET", &format!("/shards/{old_id}"), None)?;
    assert_eq!(old_shard["status"], "Available", "{old_shard}");
    assert_eq!(old_shard["resource_count"], 0, "{old_shard}");
    assert!(old_shard["network_id"].is_null(), "{old_shard}");

    let replies = replies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let mut report = HashMap::new();
    for (i, m) in MOVERS.iter().enumerate() {
        let now: Vec<IpAddr> = addresses_of(c, m)?
            .iter()
            .filter_map(|a| a["address"].as_str()?.parse().ok())
            .collect();
        assert_eq!(now.len(), 1, "{m} holds exactly its new address: {now:?}");
        assert_ne!(now[0], first[i], "{m} was re-addressed");
        let answered_new = replies[i].iter().any(|(t, a)| *a == now[0] && *t > started);
        if !answered_new {
            let w = lab.workload(m)?;
            bail!(
                "{}",
                format!(
                    "{m} does not answer at its new address {}; probed: {:?}\n{m} addresses: {}\n{m} routes: {}\nhypervisor neighbours: {}\nhypervisor routes: {}",
                    now[0],
                    targets.lock().map(|t| t[i].clone()).unwrap_or_default(),
                    w.netns
                        .ip(&["addr", "show", "dev", "eth0"])
                        .unwrap_or_default(),
                    w.netns.ip(&["route"]).unwrap_or_default(),
                    hv.netns.ip(&["neigh"]).unwrap_or_default(),
                    hv.netns.ip(&["route"]).unwrap_or_default(),
                ) + &format!(
                    "\nprober neighbours: {}\nprober route to it: {}",
                    lab.workload("prober")?
                        .netns
                        .ip(&["neigh"])
                        .unwrap_or_default(),
                    lab.workload("prober")?
                        .netns
                        .ip(&["route", "get", &now[0].to_string()])
                        .unwrap_or_default(),
                )
            );
        }
        let gap = longest_gap(&replies[i], started, answered);
        report.insert(m.to_string(), gap);
    }
    let moves = done["moves"].as_array().cloned().unwrap_or_default();
    eprintln!(
        "{readdress_mode}: migration of {} workloads took {:?}; unreachability per workload: {:?}; agent-reported link-down (us): {:?}",
        MOVERS.len(),
        finished - started,
        report,
        moves
            .iter()
            .map(|m| m["down_us"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    );
    for (m, gap) in &report {
        assert!(
            *gap < Duration::from_secs(2),
            "{m} was unreachable for {gap:?}"
        );
    }
    Ok(())
}

/// Sets `flag` when dropped, so the prober stops also when the test fails.
fn scopeguard(flag: Arc<AtomicBool>) -> impl Drop {
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    Guard(flag)
}

/// An agent killed before a migration and started again during it (same state file, as a
/// restarted service would be) finishes the move: the workload ends with only its new
/// address. The old one is recognised as weft's from the kept state, although the desired
/// state the restarted agent receives no longer names it.
#[test]
fn agent_restarted_during_a_migration_removes_the_old_address() -> Result<()> {
    if skip_unless_root("agent_restarted_during_a_migration_removes_the_old_address") {
        return Ok(());
    }
    let lab: Lab = support::lab(&["r1"])?;
    let x = lab.x();
    let hv = lab.hypervisor();
    let ip = hv.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{x}.128/25");
    let controller = Controller::start_with(
        &lab,
        &grpc,
        &http,
        &["--shard-pool", &pool, "--migration-timeout", "1s"],
    )?;
    let mut weft = Weft {
        agent: Agent::start(&lab, 0, &controller.grpc_url())?,
        controller,
    };
    let c = &weft.controller;
    let old = create_shard(c)?;
    let old_id = old["id"].as_str().context("shard id")?.to_owned();
    let a = c.json(
        "POST",
        &format!("/networks/{NETWORK}/addresses"),
        Some(&json!({"workload": "r1", "host_id": hv.name, "family": "ipv4"})),
    )?;
    let first = a["address"].as_str().context("address")?.to_owned();
    let r1 = lab.workload("r1")?;
    let eth0 = || r1.netns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    eventually(Duration::from_secs(15), Duration::from_millis(100), || {
        ensure!(
            eth0()?.contains(&format!("{first}/")),
            "r1 has no {first} yet"
        );
        Ok(())
    })
    .with_context(|| weft.logs())?;
    create_shard(c)?;

    weft.agent.child.kill_hard();
    let (status, body) = c.send(
        "DELETE",
        &format!("/networks/{NETWORK}/shards/{old_id}"),
        None,
    )?;
    ensure!(
        status == 202,
        "deallocating a shard in use starts a migration: {status} {body}"
    );
    let mid = serde_json::from_str::<Value>(&body)?["migration_id"]
        .as_str()
        .context("migration id")?
        .to_owned();
    // With the agent gone the move cannot complete: the migration waits, visibly.
    let waiting = eventually(Duration::from_secs(15), Duration::from_millis(100), || {
        let m = c.json("GET", &format!("/migrations/{mid}"), None)?;
        ensure!(m["state"] == "Paused", "migration {}: {m}", m["state"]);
        Ok(m)
    })
    .with_context(|| weft.logs())?;
    assert!(
        !waiting["error"].as_str().unwrap_or("").is_empty(),
        "a paused migration says why: {waiting}"
    );
    assert!(
        eth0()?.contains(&format!("{first}/")),
        "nothing changed on the workload yet"
    );

    weft.agent = Agent::start(&lab, 0, &weft.controller.grpc_url())?;
    let c = &weft.controller;
    let done = eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        let m = c.json("GET", &format!("/migrations/{mid}"), None)?;
        ensure!(m["state"] == "Completed", "migration {}: {m}", m["state"]);
        Ok(m)
    })
    .with_context(|| weft.logs())?;
    let new = done["moves"][0]["new_address"]
        .as_str()
        .context("new address")?
        .to_owned();
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        let out = eth0()?;
        ensure!(
            out.contains(&format!("{new}/")) && !out.contains(&format!("{first}/")),
            "r1 eth0: {out}"
        );
        Ok(())
    })
    .with_context(|| weft.logs())?;
    Ok(())
}
