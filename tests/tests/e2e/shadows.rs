//! Shadow environments, end to end: a production network on hv1 whose `api` node runs a
//! recording HTTP server; a shadow of it (and a noise-baseline replica) on hv2. Connections
//! from production's clients are sampled in the kernel on hv1, reassembled, streamed to
//! hv2's agent and replayed into the shadow over its own connections. The recorders' logs
//! (request id and SHA-256 of the raw request bytes at both ends) show what arrived:
//!
//! - every request the shadow got is byte-identical to what production got (1 MiB bodies
//!   included), and production answered every request;
//! - the sampled share of connections is near the policy's, and whole connections are
//!   sampled (all of a connection's requests or none);
//! - synthetic load: what the sink recorded, replayed into the shadow at 4x, as sent;
//! - read-only mode: not one POST reaches the shadow, and the skipped ones are counted;
//! - key `source`: a client is always in or always out (sticky);
//! - key `header`: a user (`X-User`) is always in or always out, request by request,
//!   whichever connection carries it, and exactly the predicted requests arrive;
//! - divert at 100 %: new connections are answered by the shadow, not production;
//! - failover: production's api frozen, new connections go to the shadow until it thaws;
//! - a stopped shadow (SIGSTOP) costs production nothing: every request still answered;
//! - deleting the shadow detaches the sampler and removes the shadow's networks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use agent_common::shadow;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::weft::Controller;
use weft_lab::{Lab, eventually, skip_unless_root};

use crate::networks::{TwoHypervisors, address, exec};

const RECORDER: &str = include_str!("../../scripts/shadow_recorder.py");
const CLIENT: &str = include_str!("../../scripts/shadow_client.py");
const APP: &str = include_str!("../../scripts/shadow_app.py");
const DIFF_CLIENT: &str = include_str!("../../scripts/shadow_diff_client.py");

/// The production network: two clients and the recording API server.
fn tdl(recorder: &str) -> String {
    format!(
        "\
network: shprod
addressing:
  shards: shpool
nodes:
  c1:
    type: vm
  c2:
    type: vm
  api:
    command: python3 {recorder} 8080
    ports: [8080]
connections:
  c1 -> api:
    port: 8080
  c2 -> api:
    port: 8080
"
    )
}

/// One request as a recorder or the client logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Logged {
    id: String,
    method: String,
    sha: String,
}

/// `REQ id method sha len ...` lines of `text`, by request id.
fn parse_log(text: &str) -> BTreeMap<String, Logged> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "REQ").then_some(())?;
            let (id, method, sha) = (f.next()?, f.next()?, f.next()?);
            Some((
                id.to_owned(),
                Logged {
                    id: id.to_owned(),
                    method: method.to_owned(),
                    sha: sha.to_owned(),
                },
            ))
        })
        .collect()
}

/// Every `REQ` line of `text`, in order (repeats included).
fn parse_log_all(text: &str) -> Vec<Logged> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "REQ").then_some(())?;
            Some(Logged {
                id: f.next()?.to_owned(),
                method: f.next()?.to_owned(),
                sha: f.next()?.to_owned(),
            })
        })
        .collect()
}

/// Everything node `node` of network `net` on `hv` printed (its agent keeps the logs
/// under the lab directory).
fn node_output(lab: &Lab, hv: &str, net: &str, node: &str) -> String {
    let dir = lab
        .dir()
        .join(format!("nodes-{hv}"))
        .join(net)
        .join(node)
        .join("log");
    let mut out = String::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    out
}

/// Runs the client in `ns` against `server`: its log of what it sent, by request id.
fn run_client(
    ns: &str,
    script: &str,
    server: &str,
    connections: usize,
    tag: &str,
    flags: &[&str],
) -> Result<BTreeMap<String, Logged>> {
    let mut c = weft_lab::netns::command_in(ns, &["timeout", "120", "python3", script]);
    let n = connections.to_string();
    c.args([server, "8080", n.as_str(), tag]).args(flags);
    let out = weft_lab::cmd::run(&mut c).with_context(|| format!("client {tag} in {ns}"))?;
    let sent = parse_log(&out);
    ensure!(
        !sent.is_empty() && out.lines().all(|l| !l.starts_with("ERR")),
        "client {tag}: {out}"
    );
    Ok(sent)
}

/// The connection of request id `tag-conn-req`: `tag-conn`.
fn connection_of(id: &str) -> &str {
    id.rsplit_once('-').map_or(id, |(c, _)| c)
}

fn shadow(controller: &Controller) -> Result<Value> {
    controller.json("GET", "/shadows/shsh", None)
}

fn counter(s: &Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or(0)
}

/// Requests of `tag` the recorder of (`hv`, `net`) logged, once the count stops growing.
fn settled(lab: &Lab, hv: &str, net: &str, tag: &str) -> Result<BTreeMap<String, Logged>> {
    let mut last = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeMap<String, Logged> = parse_log(&node_output(lab, hv, net, "api"))
            .into_iter()
            .filter(|(id, _)| id.starts_with(&format!("{tag}-")))
            .collect();
        if got.len() == last || Instant::now() > deadline {
            return Ok(got);
        }
        last = got.len();
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn a_shadow_gets_a_sampled_share_of_production_byte_identical_and_read_only() -> Result<()> {
    if skip_unless_root("a_shadow_gets_a_sampled_share_of_production") {
        return Ok(());
    }
    let two = TwoHypervisors::start("shpool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    let recorder = lab.dir().join("shadow_recorder.py");
    let client_script = lab.dir().join("shadow_client.py");
    std::fs::write(&recorder, RECORDER)?;
    std::fs::write(&client_script, CLIENT)?;
    let client_script = client_script.display().to_string();
    let production = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        controller.json(
            "POST",
            "/networks",
            Some(&json!({
                "tdl": tdl(&recorder.display().to_string()),
                "file_name": "shprod.tdl",
                "hosts": ["hv1"],
            })),
        )
    })
    .with_context(logs)?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = controller.json("GET", "/networks/shprod/status", None)?;
        ensure!(s["in_sync"] == json!(true), "not in sync: {s}");
        Ok(())
    })
    .with_context(logs)?;
    let api = address(&production, "api")?;
    let ns = |node: &str| format!("{}-shprod-{node}", lab.node_netns_prefix("hv1"));
    // The recorder is up before anything is sampled.
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        run_client(&ns("c1"), &client_script, &api, 1, "warm", &[]).map(drop)
    })
    .with_context(logs)?;
    phase("production in sync and answering");

    // A bad policy is refused with the field named; nothing is made.
    let (code, body) = controller.send(
        "POST",
        "/shadows",
        Some(&json!({
            "id": "shsh", "production": "shprod", "hosts": ["hv2"],
            "policy": {"share_ppm": 2_000_000, "key": "connection"},
        })),
    )?;
    ensure!(
        code == 422 && body.contains("share_ppm"),
        "a share over 100% must be refused naming share_ppm: {code} {body}"
    );

    // 30 % of connections, everything replayed (not read-only), with a noise baseline.
    controller
        .json(
            "POST",
            "/shadows",
            Some(&json!({
                "id": "shsh", "production": "shprod", "nodes": ["api"], "hosts": ["hv2"],
                "policy": {"share_ppm": 300_000, "key": "connection", "ports": [8080]},
                "noise_baseline": true,
            })),
        )
        .with_context(logs)?;
    wait_sampling(controller, "shsh", &logs)?;
    phase("shadow sampling");

    // Phase 1: 240 connections (GETs, POSTs, two 1 MiB POSTs), all answered by production.
    let sent = run_client(
        &ns("c1"),
        &client_script,
        &api,
        240,
        "p1",
        &["--posts", "--big"],
    )
    .with_context(logs)?;
    let prod = settled(lab, "hv1", "shprod", "p1")?;
    ensure!(
        prod.len() == sent.len() && prod.iter().all(|(id, r)| sent.get(id) == Some(r)),
        "production must get every request as sent: {} of {}",
        prod.len(),
        sent.len()
    );
    let shadowed = settled(lab, "hv2", "shsh", "p1")?;
    let baseline = settled(lab, "hv2", "shsh-baseline", "p1")?;
    phase(&format!(
        "phase 1: {} requests sent, {} reached the shadow, {} the baseline",
        sent.len(),
        shadowed.len(),
        baseline.len()
    ));
    // Byte-identical: every request the shadow got is one production got, same bytes.
    for (id, r) in &shadowed {
        ensure!(
            sent.get(id) == Some(r),
            "shadow got {r:?}, production's client sent {:?}",
            sent.get(id)
        );
    }
    ensure!(
        shadowed.keys().eq(baseline.keys()),
        "the baseline replica must get the same requests as the shadow"
    );
    // Whole connections: a sampled connection's requests all arrive.
    let conns_sent: BTreeSet<&str> = sent.keys().map(|id| connection_of(id)).collect();
    let conns_shadowed: BTreeSet<&str> = shadowed.keys().map(|id| connection_of(id)).collect();
    for c in &conns_shadowed {
        let want = sent.keys().filter(|id| connection_of(id) == *c).count();
        let got = shadowed.keys().filter(|id| connection_of(id) == *c).count();
        ensure!(want == got, "connection {c}: {got} of its {want} requests");
    }
    // The share: 240 connections at 30 % (binomial sd 7.1): within 4 sd.
    let share = conns_shadowed.len() as f64 / conns_sent.len() as f64;
    ensure!(
        (share - 0.30).abs() <= 0.12,
        "sampled share {share:.3} of {} connections, policy 0.30",
        conns_sent.len()
    );
    ensure!(
        shadowed.values().any(|r| r.method == "POST"),
        "not read-only: sampled POSTs reach the shadow"
    );
    let s = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let s = shadow(controller)?;
        ensure!(
            counter(&s, "connections_sampled") >= conns_shadowed.len() as u64,
            "counters not reported yet: {s}"
        );
        Ok(s)
    })
    .with_context(logs)?;
    ensure!(
        counter(&s, "requests_replayed") >= shadowed.len() as u64,
        "requests_replayed below what the shadow logged: {s}"
    );
    phase("phase 1 checked");

    // Synthetic load: the sink replays what it recorded of phase 1 into the shadow (not
    // the noise baseline) at 4 times its recorded rate for 2 s; every request it sends is
    // one production got, byte for byte.
    let before = parse_log_all(&node_output(lab, "hv2", "shsh", "api")).len();
    controller
        .json(
            "POST",
            "/shadows/shsh/synthetic",
            Some(&json!({"multiplier": 4.0, "duration_seconds": 2})),
        )
        .with_context(logs)?;
    let s = eventually(Duration::from_secs(30), Duration::from_millis(500), || {
        let s = shadow(controller)?;
        ensure!(
            counter(&s, "synthetic_runs_finished") >= 1,
            "synthetic run not finished: {s}"
        );
        Ok(s)
    })
    .with_context(logs)?;
    let sent_synthetic = counter(&s, "synthetic_requests");
    ensure!(sent_synthetic > 0, "the synthetic run sent nothing: {s}");
    let after = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let all = parse_log_all(&node_output(lab, "hv2", "shsh", "api"));
        ensure!(
            all.len() as u64 >= before as u64 + sent_synthetic,
            "the shadow logged {} requests more, the run sent {sent_synthetic}",
            all.len() - before
        );
        Ok(all)
    })?;
    for r in &after[before..] {
        ensure!(
            sent.get(&r.id) == Some(r),
            "synthetic request {r:?} is not one production got"
        );
    }
    phase(&format!(
        "synthetic load: {sent_synthetic} recorded requests replayed at 4x into the shadow, each as production got it"
    ));

    // Phase 2: read-only. Not one POST reaches the shadow; the skipped ones are counted.
    controller
        .json(
            "PUT",
            "/shadows/shsh/policy",
            Some(&json!({"share_ppm": 500_000, "key": "connection", "ports": [8080], "read_only": true})),
        )
        .with_context(logs)?;
    let skipped_before = counter(&shadow(controller)?, "requests_skipped_write");
    // The policy reaches the kernel as one map update; give the publish a moment.
    std::thread::sleep(Duration::from_secs(2));
    let sent2 = run_client(&ns("c1"), &client_script, &api, 150, "p2", &["--posts"])?;
    let shadowed2 = settled(lab, "hv2", "shsh", "p2")?;
    // The read-only change reaches the sinks in place: their taps' streams stay, so the
    // share holds right after the change (150 connections at 50 %, sd 6.1: within 4 sd).
    let conns2: BTreeSet<&str> = shadowed2.keys().map(|id| connection_of(id)).collect();
    ensure!(
        (50..=100).contains(&conns2.len()),
        "read-only phase: {} of 150 connections reached the shadow, policy 50 %",
        conns2.len()
    );
    ensure!(
        shadowed2.values().all(|r| r.method == "GET"),
        "read-only: a write reached the shadow: {:?}",
        shadowed2.values().find(|r| r.method != "GET")
    );
    for (id, r) in &shadowed2 {
        ensure!(sent2.get(id) == Some(r), "{id}: not byte-identical");
    }
    let sampled_posts = sent2
        .values()
        .filter(|r| r.method == "POST")
        .filter(|r| {
            shadowed2
                .keys()
                .any(|id| connection_of(id) == connection_of(&r.id))
        })
        .count() as u64;
    let s = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let s = shadow(controller)?;
        ensure!(
            counter(&s, "requests_skipped_write") >= skipped_before + sampled_posts,
            "skipped writes not counted ({sampled_posts} sampled POSTs): {s}"
        );
        Ok(s)
    })
    .with_context(logs)?;
    phase(&format!(
        "phase 2: {} connections, {} GETs replayed, {} POSTs of sampled connections skipped (counter {})",
        conns2.len(),
        shadowed2.len(),
        sampled_posts,
        counter(&s, "requests_skipped_write")
    ));

    // Phase 3: sticky by source: each client is always in or always out. The seed is
    // picked so that the kernel's decision hash (agent-common's, as the tap computes it)
    // puts c1 in and c2 out: the test predicts which client is sampled.
    let (c1, c2) = (address(&production, "c1")?, address(&production, "c2")?);
    let in_share = |seed: u32, addr: &str| -> Result<bool> {
        let ip: std::net::Ipv4Addr = addr.parse().with_context(|| addr.to_string())?;
        let mut client = [0u8; 16];
        client[..4].copy_from_slice(&ip.octets());
        let key = shadow::TapConnKey {
            family: agent_common::flow::FAMILY_IPV4,
            client,
            ..Default::default()
        };
        Ok(shadow::sampled(
            seed,
            shadow::threshold_of(500_000),
            shadow::key_kind::SOURCE,
            &key,
        ))
    };
    let mut seed = None;
    for s in 1..1000u32 {
        if in_share(s, &c1)? && !in_share(s, &c2)? {
            seed = Some(s);
            break;
        }
    }
    let seed = seed.context("no seed puts c1 in and c2 out")?;
    controller.json(
        "PUT",
        "/shadows/shsh/policy",
        Some(&json!({"share_ppm": 500_000, "key": "source", "ports": [8080], "read_only": true, "seed": seed})),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    for (c, want_in) in [("c1", true), ("c2", false)] {
        let tag = format!("p3{c}");
        let sent3 = run_client(&ns(c), &client_script, &api, 30, &tag, &[])?;
        let got = settled(lab, "hv2", "shsh", &tag)?;
        let want = if want_in { sent3.len() } else { 0 };
        ensure!(
            got.len() == want,
            "client {c} (seed {seed}) must be always {}: {} of {} requests sampled",
            if want_in { "in" } else { "out" },
            got.len(),
            sent3.len()
        );
        phase(&format!(
            "phase 3: client {c}: {} of {}",
            got.len(),
            sent3.len()
        ));
    }

    // Phase 3h: sticky by a header: every request of a user (X-User) in the share reaches
    // the shadow and none of the others, though users share connections. The test
    // predicts the decisions with agent-common's hash, as the sinks compute them.
    const USERS: usize = 7;
    let share = agent_common::hash::threshold_of(400_000);
    let takes = |seed: u32, u: usize| {
        agent_common::hash::key_in_share(seed, share, format!("u{u}").as_bytes())
    };
    let hseed = (1..1000u32)
        .find(|&s| {
            let n = (0..USERS).filter(|&u| takes(s, u)).count();
            (2..=USERS - 2).contains(&n)
        })
        .context("no seed puts 2..=5 of 7 users in")?;
    controller.json(
        "PUT",
        "/shadows/shsh/policy",
        Some(&json!({"share_ppm": 400_000, "key": "header", "header": "X-User", "ports": [8080], "seed": hseed})),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let unsampled_before = counter(&shadow(controller)?, "requests_unsampled");
    let sent_h = run_client(
        &ns("c1"),
        &client_script,
        &api,
        24,
        "p3h",
        &["--users", "7"],
    )?;
    let want_h: BTreeSet<String> = sent_h
        .keys()
        .filter(|id| {
            // p3h-<connection>-<request>: the client's user is (3c + r) % 7.
            let mut parts = id.rsplit('-');
            let r: usize = parts
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(usize::MAX);
            let c: usize = parts
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(usize::MAX);
            takes(hseed, (3 * c + r) % USERS)
        })
        .cloned()
        .collect();
    ensure!(
        !want_h.is_empty() && want_h.len() < sent_h.len(),
        "the seed must split the requests: {} of {}",
        want_h.len(),
        sent_h.len()
    );
    let got_h = settled(lab, "hv2", "shsh", "p3h")?;
    let got_ids: BTreeSet<String> = got_h.keys().cloned().collect();
    ensure!(
        got_ids == want_h,
        "by header (seed {hseed}): the shadow got {} requests, {} predicted; missing {:?}, unexpected {:?}",
        got_ids.len(),
        want_h.len(),
        want_h.difference(&got_ids).collect::<Vec<_>>(),
        got_ids.difference(&want_h).collect::<Vec<_>>()
    );
    for (id, g) in &got_h {
        ensure!(
            sent_h[id].sha == g.sha,
            "request {id} changed on its way to the shadow"
        );
    }
    let out_h = (sent_h.len() - want_h.len()) as u64;
    let s = eventually(Duration::from_secs(20), Duration::from_millis(300), || {
        let s = shadow(controller)?;
        let n = counter(&s, "requests_unsampled") - unsampled_before;
        ensure!(
            n == out_h,
            "requests_unsampled grew by {n}, {out_h} were out: {s}"
        );
        Ok(s)
    })
    .with_context(logs)?;
    phase(&format!(
        "phase 3h: by header: {} of {} requests in (7 users, seed {hseed}), {} counted out",
        got_ids.len(),
        sent_h.len(),
        counter(&s, "requests_unsampled") - unsampled_before
    ));

    // Divert: every new connection really goes to the shadow (no copies: nothing sampled).
    controller.json(
        "PUT",
        "/shadows/shsh/policy",
        Some(
            &json!({"share_ppm": 0, "divert_ppm": 1_000_000, "key": "connection", "ports": [8080]}),
        ),
    )?;
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        let s = shadow(controller)?;
        ensure!(s["state"] == json!("sampling"), "steer not applied: {s}");
        Ok(())
    })
    .with_context(logs)?;
    std::thread::sleep(Duration::from_secs(1));
    let sent_d =
        run_client(&ns("c1"), &client_script, &api, 20, "d1", &["--posts"]).with_context(logs)?;
    let got_d = settled(lab, "hv2", "shsh", "d1")?;
    let prod_d = settled(lab, "hv1", "shprod", "d1")?;
    ensure!(
        prod_d.is_empty() && got_d.len() == sent_d.len(),
        "divert 100 %: production got {} and the shadow {} of {} requests",
        prod_d.len(),
        got_d.len(),
        sent_d.len()
    );
    for (id, r) in &got_d {
        ensure!(
            sent_d.get(id) == Some(r),
            "{id}: diverted request not as sent"
        );
    }
    let s = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let s = shadow(controller)?;
        ensure!(
            counter(&s, "connections_diverted") >= 20,
            "diverted connections not counted: {s}"
        );
        Ok(s)
    })
    .with_context(logs)?;
    phase(&format!(
        "divert 100 %: {} requests answered by the shadow, none by production (counter {})",
        got_d.len(),
        counter(&s, "connections_diverted")
    ));

    // Failover: production's api frozen (SIGSTOP: its kernel still accepts connections, the
    // probe sees no answer); new connections go to the shadow, and back once it thaws.
    controller.json(
        "PUT",
        "/shadows/shsh/policy",
        Some(&json!({
            "share_ppm": 0, "key": "connection", "ports": [8080],
            "failover": {"port": 8080, "interval_ms": 100, "failures": 3,
                         "probe": "GET /health HTTP/1.0\r\n\r\n"},
        })),
    )?;
    // Production healthy: its requests stay with it.
    std::thread::sleep(Duration::from_secs(2));
    let sent_h = run_client(&ns("c1"), &client_script, &api, 5, "h1", &[])?;
    ensure!(
        settled(lab, "hv1", "shprod", "h1")?.len() == sent_h.len(),
        "with production healthy, production answers"
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &ns("api")])
        .output()?;
    let frozen: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ensure!(!frozen.is_empty(), "no process in production's api node");
    let thaw = |pids: &[String]| {
        for p in pids {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", p])
                .status();
        }
    };
    for p in &frozen {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", p])
            .status();
    }
    let t_stop = Instant::now();
    let failed_over = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        let s = shadow(controller)?;
        ensure!(
            counter(&s, "nodes_failed_over") == 1,
            "not failed over: {s}"
        );
        Ok(())
    });
    let seen_after = t_stop.elapsed();
    let result = failed_over.and_then(|()| {
        let sent = run_client(&ns("c2"), &client_script, &api, 20, "f1", &["--posts"])?;
        let got = settled(lab, "hv2", "shsh", "f1")?;
        ensure!(
            got.len() == sent.len(),
            "failed over: the shadow answered {} of {} requests",
            got.len(),
            sent.len()
        );
        Ok(())
    });
    thaw(&frozen);
    result.with_context(logs)?;
    eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        let s = shadow(controller)?;
        ensure!(counter(&s, "nodes_failed_over") == 0, "not back: {s}");
        Ok(())
    })
    .with_context(logs)?;
    let sent_b = run_client(&ns("c2"), &client_script, &api, 10, "f2", &[])?;
    let prod_b = settled(lab, "hv1", "shprod", "f2")?;
    ensure!(
        prod_b.len() == sent_b.len() && settled(lab, "hv2", "shsh", "f2")?.is_empty(),
        "after recovery production answers again: {} of {}",
        prod_b.len(),
        sent_b.len()
    );
    phase(&format!(
        "failover: seen by the controller {:.1}s after production froze; the shadow answered, production again after it thawed",
        seen_after.as_secs_f64()
    ));
    controller.json(
        "PUT",
        "/shadows/shsh/policy",
        Some(
            &json!({"share_ppm": 500_000, "key": "connection", "ports": [8080], "read_only": true}),
        ),
    )?;

    // A stopped shadow costs production nothing: every request is still answered.
    let mut stopped = Vec::new();
    for net in ["shsh", "shsh-baseline"] {
        let name = format!("{}-{net}-api", lab.node_netns_prefix("hv2"));
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &name])
            .output()?;
        stopped.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
    }
    ensure!(!stopped.is_empty(), "no process in the shadow's api nodes");
    for p in &stopped {
        let _ = std::process::Command::new("kill")
            .args(["-STOP", p])
            .status();
    }
    let result = run_client(&ns("c2"), &client_script, &api, 60, "p4", &["--posts"]);
    for p in &stopped {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", p])
            .status();
    }
    result.context("production with its shadow stopped")?;
    phase("production unaffected by a stopped shadow");

    // Delete: the sampler leaves production's interface; the shadow's networks go.
    controller
        .json("DELETE", "/shadows/shsh", None)
        .with_context(logs)?;
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        for id in ["shsh", "shsh-baseline"] {
            let (code, _) = controller.send("GET", &format!("/networks/{id}"), None)?;
            ensure!(code == 404, "network {id} still there ({code})");
        }
        let progs = exec(
            lab.hypervisors()[0].netns.name(),
            &["bpftool", "net", "show"],
        )
        .unwrap_or_default();
        if progs.contains("shadow_") {
            bail!("a shadow program is still attached on hv1: {progs}");
        }
        Ok(())
    })
    .with_context(logs)?;
    let (code, _) = controller.send("GET", "/shadows/shsh", None)?;
    ensure!(code == 404, "GET after delete: {code}");
    phase("deleted");
    Ok(())
}

/// Differential analysis on real traffic: production and the shadow run the same JSON app
/// (ten endpoints, a timestamp and a random id in every answer: noise); in the shadow
/// alone, `/e3` changes a field in 1 % of its answers, `/e5` works 30 % longer (measured
/// here: +10 % work is +4 % of the median latency, +15 % is +5 %, both significant at
/// p < 1e-11 but close to `analysis::MIN_SLOWDOWN`, 3 %; the test keeps a margin) and `/e7`
/// fails 0.5 % of its requests. Every connection is sampled; the sinks compare the shadow
/// with its noise baseline. The three differences are found; no other endpoint has a
/// differing field, and the noise fields (`ts`, `request_id`) are never reported.
#[test]
fn differences_injected_in_the_shadow_are_found_and_its_noise_is_not() -> Result<()> {
    if skip_unless_root("differences_injected_in_the_shadow_are_found") {
        return Ok(());
    }
    let two = TwoHypervisors::start("shdpool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let app = lab.dir().join("shadow_app.py");
    let client = lab.dir().join("shadow_diff_client.py");
    std::fs::write(&app, APP)?;
    std::fs::write(&client, DIFF_CLIENT)?;
    let tdl = format!(
        "\
network: shdp
addressing:
  shards: shdpool
nodes:
  c1:
    type: vm
  api:
    command: python3 {} 8080 --field e3:1 --slow e5:30 --errors e7:0.5 --inject-in -shd-api
    ports: [8080]
connections:
  c1 -> api:
    port: 8080
",
        app.display()
    );
    let production = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        controller.json(
            "POST",
            "/networks",
            Some(&json!({"tdl": tdl, "file_name": "shdp.tdl", "hosts": ["hv1"]})),
        )
    })
    .with_context(logs)?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = controller.json("GET", "/networks/shdp/status", None)?;
        ensure!(s["in_sync"] == json!(true), "not in sync: {s}");
        Ok(())
    })
    .with_context(logs)?;
    let api = address(&production, "api")?;
    let c1 = format!("{}-shdp-c1", lab.node_netns_prefix("hv1"));
    let client = client.display().to_string();
    let drive = |requests: usize, conns: usize| -> Result<String> {
        let (r, c) = (requests.to_string(), conns.to_string());
        let mut cmd = weft_lab::netns::command_in(
            &c1,
            &["timeout", "300", "python3", &client, &api, "8080", &r, &c],
        );
        weft_lab::cmd::run(&mut cmd)
    };
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        drive(10, 1).map(drop)
    })
    .with_context(logs)?;
    controller
        .json(
            "POST",
            "/shadows",
            Some(&json!({
                "id": "shd", "production": "shdp", "nodes": ["api"], "hosts": ["hv2"],
                "policy": {"share_ppm": 1_000_000, "key": "connection", "ports": [8080]},
                "noise_baseline": true,
            })),
        )
        .with_context(logs)?;
    wait_sampling(controller, "shd", &logs)?;
    std::thread::sleep(Duration::from_secs(2));
    for (hv, net) in [("hv1", "shdp"), ("hv2", "shd"), ("hv2", "shd-baseline")] {
        let out = node_output(lab, hv, net, "api");
        eprintln!(
            "{net}/api: {}",
            out.lines()
                .find(|l| l.starts_with("namespace"))
                .unwrap_or("(no namespace line)")
        );
    }
    // 30,000 requests, 3,000 per endpoint, over 300 connections.
    let out = drive(30_000, 300).with_context(logs)?;
    ensure!(out.contains("DONE"), "client: {out}");
    let s = eventually(Duration::from_secs(60), Duration::from_secs(1), || {
        let s = shadow_of(controller, "shd")?;
        let compared: u64 = s["analysis"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["compared"].as_u64().unwrap_or(0))
            .sum();
        ensure!(
            compared >= 29_000,
            "{compared} answers compared so far: {s}"
        );
        Ok(s)
    })
    .with_context(logs)?;
    let endpoints: Vec<&Value> = s["analysis"].as_array().into_iter().flatten().collect();
    let of = |e: &str| {
        endpoints
            .iter()
            .find(|a| {
                a["endpoint"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("/{e}")))
            })
            .copied()
    };
    let mut missed = Vec::new();
    for e in 0..10 {
        let name = format!("e{e}");
        let a = of(&name).with_context(|| format!("no analysis of /{name}: {s}"))?;
        let fields: Vec<&String> = a["differing_fields"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        eprintln!(
            "/{name}: compared {} differing {} fields {fields:?} p50 {:.3} vs {:.3} p99 {:.2} vs {:.2} ms (p {:.2e}, slower {}), errors {:.4} vs {:.4} (p {:.2e})",
            a["compared"],
            a["differing"],
            a["shadow_p50_ms"].as_f64().unwrap_or(0.0),
            a["reference_p50_ms"].as_f64().unwrap_or(0.0),
            a["shadow_p99_ms"].as_f64().unwrap_or(0.0),
            a["reference_p99_ms"].as_f64().unwrap_or(0.0),
            a["latency_p_value"].as_f64().unwrap_or(1.0),
            a["shadow_slower"],
            a["shadow_error_rate"].as_f64().unwrap_or(0.0),
            a["reference_error_rate"].as_f64().unwrap_or(0.0),
            a["error_p_value"].as_f64().unwrap_or(1.0),
        );
        ensure!(
            a["reference"] == json!("baseline"),
            "/{name} must be compared with the noise baseline: {a}"
        );
        ensure!(
            !fields
                .iter()
                .any(|f| f.contains("ts") || f.contains("request_id")),
            "/{name}: noise reported as a difference: {fields:?}"
        );
        match e {
            3 if !fields
                .iter()
                .any(|f| f.contains("items") && f.contains("name")) =>
            {
                missed.push(format!("/e3's changed field not found: {a}"))
            }
            5 if a["shadow_slower"] != json!(true) => {
                missed.push(format!("/e5's +30 % work not found: {a}"))
            }
            7 if a["shadow_errs_more"] != json!(true) => {
                missed.push(format!("/e7's errors not found: {a}"))
            }
            _ => {}
        }
    }
    ensure!(missed.is_empty(), "{}", missed.join("\n"));
    let false_fields = (0..10)
        .filter(|e| *e != 3)
        .filter(|e| {
            of(&format!("e{e}")).is_some_and(|a| {
                a["differing_fields"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty())
            })
        })
        .count();
    ensure!(
        false_fields <= 1,
        "{false_fields} endpoints without an injected field change report one: {s}"
    );
    let slower_wrongly = [0, 1, 2, 4, 6, 8, 9]
        .iter()
        .filter(|e| of(&format!("e{e}")).is_some_and(|a| a["shadow_slower"] == json!(true)))
        .count();
    ensure!(
        slower_wrongly <= 1,
        "{slower_wrongly} endpoints wrongly slower: {s}"
    );
    controller.json("DELETE", "/shadows/shd", None)?;
    Ok(())
}

fn shadow_of(controller: &Controller, id: &str) -> Result<Value> {
    controller.json("GET", &format!("/shadows/{id}"), None)
}

/// Waits until shadow `id` is `sampling`.
fn wait_sampling(controller: &Controller, id: &str, logs: &dyn Fn() -> String) -> Result<()> {
    eventually(Duration::from_secs(90), Duration::from_millis(500), || {
        let s = shadow_of(controller, id)?;
        ensure!(s["state"] == json!("sampling"), "not sampling yet: {s}");
        Ok(())
    })
    .with_context(logs)
}

/// The CPU limit of the cgroup of the processes in namespace `ns`: cgroup v2's `cpu.max`
/// ("15000 100000"), or v1's quota and period in the same form.
fn cpu_limit_in(ns: &str) -> Result<(Vec<String>, String)> {
    let pids = weft_lab::cmd::run(std::process::Command::new("ip").args(["netns", "pids", ns]))?;
    let pids: Vec<String> = pids.split_whitespace().map(str::to_owned).collect();
    let pid = pids
        .first()
        .with_context(|| format!("no process in {ns}"))?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    for line in cg.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let path = path.trim_start_matches('/');
        if ctrls.is_empty() {
            let max = std::fs::read_to_string(format!("/sys/fs/cgroup/{path}/cpu.max"))?;
            return Ok((pids, max.trim().to_owned()));
        }
        if ctrls.split(',').any(|c| c == "cpu") {
            let base = format!("/sys/fs/cgroup/{ctrls}/{path}");
            let q = std::fs::read_to_string(format!("{base}/cpu.cfs_quota_us"))?;
            let p = std::fs::read_to_string(format!("{base}/cpu.cfs_period_us"))?;
            return Ok((pids, format!("{} {}", q.trim(), p.trim())));
        }
    }
    bail!("no cpu cgroup for pid {pid}: {cg}")
}

/// Predictive scaling under real pressure: the shadow's copy of `api` needs four times
/// production's CPU per request (injected in the shadow alone) under a 100m limit, so the
/// kernel throttles it; the sink reports its cgroup's counters, the controller recommends
/// 200m (x1.5, rounded up to 100 millis) with the throttling as evidence, and with `autoscale` applies it: production's
/// definition changes, the shadow follows as its mirror, and both cgroups' `cpu.max` change
/// in place (the same processes, not restarted).
#[test]
fn autoscale_raises_the_cpu_limit_of_a_throttled_shadow_and_of_production() -> Result<()> {
    if skip_unless_root("autoscale_raises_the_cpu_limit") {
        return Ok(());
    }
    let two = TwoHypervisors::start("shscpool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let app = lab.dir().join("shadow_app.py");
    let client = lab.dir().join("shadow_diff_client.py");
    std::fs::write(&app, APP)?;
    std::fs::write(&client, DIFF_CLIENT)?;
    let tdl = format!(
        "\
network: shsc
addressing:
  shards: shscpool
nodes:
  c1:
    type: vm
  api:
    command: python3 {} 8080 --burn 2 --heavier 300 --inject-in -shscs-api
    ports: [8080]
    cpu: 100m
connections:
  c1 -> api:
    port: 8080
",
        app.display()
    );
    let production = crate::weaves::environment(controller, "shsc", &tdl, &logs)?;
    let api = address(&production, "api")?;
    let c1 = format!("{}-shsc-c1", lab.node_netns_prefix("hv1"));
    let prod_api = format!("{}-shsc-api", lab.node_netns_prefix("hv1"));
    let shadow_api = format!("{}-shscs-api", lab.node_netns_prefix("hv2"));
    let client = client.display().to_string();
    let drive = |requests: usize, conns: usize| {
        let (r, c) = (requests.to_string(), conns.to_string());
        weft_lab::netns::command_in(
            &c1,
            &["timeout", "120", "python3", &client, &api, "8080", &r, &c],
        )
    };
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        weft_lab::cmd::run(&mut drive(10, 1)).map(drop)
    })
    .with_context(logs)?;
    controller
        .json(
            "POST",
            "/shadows",
            Some(&json!({
                "id": "shscs", "production": "shsc", "nodes": ["api"], "hosts": ["hv2"],
                "policy": {"share_ppm": 1_000_000, "key": "connection", "ports": [8080], "autoscale": true},
            })),
        )
        .with_context(logs)?;
    wait_sampling(controller, "shscs", &logs)?;
    let (prod_pids, prod_before) = cpu_limit_in(&prod_api)?;
    let (shadow_pids, shadow_before) =
        eventually(Duration::from_secs(30), Duration::from_millis(300), || {
            cpu_limit_in(&shadow_api)
        })
        .with_context(logs)?;
    ensure!(
        prod_before == "10000 100000" && shadow_before == "10000 100000",
        "a 100m limit is a 10 ms quota per 100 ms: production {prod_before:?}, shadow {shadow_before:?}"
    );
    // Production runs at its own limit (2 ms of CPU per request: about 50 requests/s); the
    // shadow gets the same requests and needs 8 ms for each.
    let mut load = drive(3000, 30)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("client")?;
    let applied = eventually(Duration::from_secs(90), Duration::from_secs(1), || {
        let s = shadow_of(controller, "shscs")?;
        let r = s["scaling"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["resource"] == json!("cpu") && r["node"] == json!("api"))
            .cloned()
            .with_context(|| format!("no CPU recommendation yet: {}", s["scaling"]))?;
        ensure!(r["applied"] == json!(true), "not applied yet: {r}");
        Ok(r)
    });
    let _ = load.kill();
    let _ = load.wait();
    let applied = applied.with_context(logs)?;
    eprintln!("scaling: {applied}");
    ensure!(
        applied["current"] == json!(100) && applied["recommended"] == json!(200),
        "100m raised by the step of 1.5 and rounded up to 100 millis is 200m: {applied}"
    );
    let throttled = applied["evidence"]["shadow_cpu_throttled_ratio"]
        .as_f64()
        .unwrap_or(0.0);
    ensure!(
        throttled >= 0.25,
        "the evidence is the shadow's throttling: {applied}"
    );
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        let (p, prod) = cpu_limit_in(&prod_api)?;
        let (s, shadow) = cpu_limit_in(&shadow_api)?;
        ensure!(
            prod == "20000 100000" && shadow == "20000 100000",
            "cpu.max: production {prod:?}, shadow {shadow:?}"
        );
        ensure!(
            p == prod_pids && s == shadow_pids,
            "the limits change in place: production's pids {prod_pids:?} -> {p:?}, the shadow's {shadow_pids:?} -> {s:?}"
        );
        Ok(())
    })
    .with_context(logs)?;
    let net = controller.json("GET", "/networks/shsc", None)?;
    let tdl_now = net["tdl"].as_str().unwrap_or_default();
    ensure!(
        tdl_now.contains("cpu: 0.2") && !tdl_now.contains("cpu: 0.1"),
        "production's definition has the new limit: {tdl_now}"
    );
    controller.json("DELETE", "/shadows/shscs", None)?;
    Ok(())
}
