//! Shadow sampling across agent restarts: production's `api` on hv1 is sampled at 100 %
//! into a shadow on hv2 while two clients keep sending (one new connection per request,
//! and one keep-alive connection), and hv1's agent is stopped with SIGTERM (keeping its
//! pins) and started again, then killed with SIGKILL and started again. The tap's links
//! and maps are pinned: between the agents the programs keep deciding and copying into
//! the pinned ring, and each new agent adopts the tap (its counter slot, its links) and
//! streams what waited in the ring. So:
//!
//! - production answers every request (the taps never touch its packets);
//! - the shadow gets every request sent while no agent ran and after the new agent was
//!   up, each exactly once and byte-identical, the keep-alive connection's too (a new
//!   agent resumes it at a request's start); the only requests that may miss the shadow
//!   are the few in flight while an agent was stopping (read from the ring by it, not
//!   streamed yet), and none ever arrives twice or cut;
//! - the tap's kernel counters continue (`connections_sampled` counts every connection
//!   since the tap was made) and no copy was dropped from the ring.
//!
//! The recorders are the test's own processes in `vm` nodes' namespaces: a node's
//! processes that the agent runs do not survive its restart (see `steer_restart`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use weft_lab::process::Child;
use weft_lab::weft::{Agent, Controller, sum_metric};
use weft_lab::{Lab, eventually, netns, skip_unless_root};

use crate::networks::{TwoHypervisors, address};

const RECORDER: &str = include_str!("../../scripts/shadow_recorder.py");

const TDL: &str = "\
network: trprod
addressing:
  shards: trpool
nodes:
  c1:
    type: vm
  api:
    type: vm
    ports: [8080]
connections:
  c1 -> api:
    port: 8080
";

/// `client.py SERVER PORT TAG MODE INTERVAL STOPFILE`: GET requests with a unique
/// X-Request-Id every INTERVAL seconds until STOPFILE exists (at most 90 s); MODE `new`:
/// one connection per request, `keep`: one keep-alive connection (a new one after an
/// error). One line per request: `REQ id GET sha256 length unix_time ok`; at the end
/// `DONE requests=N failed=F`.
const CLIENT: &str = r#"
import hashlib, json, os, socket, sys, time
server, port, tag, mode, interval, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]

def read_response(f):
    status = f.readline()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    return status, f.read(length)

print("ready", flush=True)
end = time.monotonic() + 90
n = failed = 0
s = f = None
while time.monotonic() < end and not os.path.exists(stop):
    rid = f"{tag}-{n}"
    raw = (f"GET /items?r={rid} HTTP/1.1\r\nHost: shadow-lab\r\nX-Request-Id: {rid}\r\n"
           f"Content-Length: 0\r\n\r\n").encode()
    t = time.time()
    ok = False
    try:
        if s is None:
            s = socket.create_connection((server, port), timeout=5)
            s.settimeout(5)
            f = s.makefile("rb")
        s.sendall(raw)
        status, body = read_response(f)
        ok = status.startswith(b"HTTP/1.1 200") and json.loads(body)["id"] == rid
    except (OSError, ValueError) as e:
        print(f"ERR {rid}: {e!r}", flush=True)
        if s is not None:
            s.close()
        s = None
    if mode == "new" and s is not None:
        s.close()
        s = None
    failed += 0 if ok else 1
    print(f"REQ {rid} GET {hashlib.sha256(raw).hexdigest()} {len(raw)} {t:.3f} {ok}", flush=True)
    n += 1
    time.sleep(interval)
print(f"DONE requests={n} failed={failed}", flush=True)
"#;

/// A request as the client sent it.
#[derive(Debug, Clone)]
struct Sent {
    sha: String,
    at: f64,
}

/// The client's `REQ` lines by request id.
fn sent_by(out: &str) -> BTreeMap<String, Sent> {
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 7 && f[0] == "REQ").then(|| {
                (
                    f[1].to_owned(),
                    Sent {
                        sha: f[3].to_owned(),
                        at: f[5].parse().unwrap_or(0.0),
                    },
                )
            })
        })
        .collect()
}

/// Every `REQ id method sha` a recorder logged, in order (repeats included). The
/// recorder's threads print concurrently and Python writes a line's text and its newline
/// separately, so two records may share a line: each `REQ ` starts one.
fn recorded(out: &str) -> Vec<(String, String)> {
    out.match_indices("REQ ")
        .filter_map(|(at, _)| {
            let f: Vec<&str> = out[at..].split_whitespace().take(4).collect();
            (f.len() == 4).then(|| (f[1].to_owned(), f[3].to_owned()))
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The test's recorder in namespace `ns` (once the namespace exists).
fn recorder(lab: &Lab, ns: &str, label: &str) -> Result<Child> {
    let script = lab.dir().join("tap-restart-recorder.py");
    std::fs::write(&script, RECORDER)?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        ensure!(
            Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} not made yet"
        );
        Ok(())
    })?;
    let mut c = Child::spawn(
        netns::command_in(ns, &["python3", &script.to_string_lossy(), "8080"]),
        lab.dir(),
        label,
    )?;
    c.wait_for_line(&["listening on"], Duration::from_secs(10))?;
    Ok(c)
}

fn shadow(controller: &Controller) -> Result<Value> {
    controller.json("GET", "/shadows/trsh", None)
}

fn counter(s: &Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or(0)
}

/// Waits until `agent` has applied the controller's desired state.
fn applied(lab: &Lab, agent: &Agent) -> Result<()> {
    eventually(Duration::from_secs(60), Duration::from_millis(100), || {
        let g = sum_metric(&agent.metrics(lab)?, "weft_agent_applied_generation");
        ensure!(g > 0.0, "no desired state applied yet");
        Ok(())
    })
    .with_context(|| agent.child.tail(40))
}

/// Whether `agent` took the tap back: adopted (slot and counters) and both links taken
/// over, not made anew (the log is coloured: the words, not the key=value pairs).
fn adopted_tap(agent: &Agent) -> bool {
    let log = agent.child.output();
    log.contains("adopted the previous agent's tap")
        && ["shadow_tap_in", "shadow_tap_out"].iter().all(|p| {
            log.lines()
                .any(|l| l.contains("took over the pinned link") && l.contains(p))
        })
}

#[test]
fn shadow_sampling_continues_across_agent_restarts() -> Result<()> {
    if skip_unless_root("shadow_sampling_continues_across_agent_restarts") {
        return Ok(());
    }
    let keep = ["--keep-pins-on-exit"];
    let mut two = TwoHypervisors::start_all("trpool", &[], &keep, &[], &[])?;
    let url = two.controller.grpc_url();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    let production = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        two.controller.json(
            "POST",
            "/networks",
            Some(&json!({"tdl": TDL, "file_name": "trprod.tdl", "hosts": ["hv1"]})),
        )
    })
    .with_context(|| two.logs())?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = two
            .controller
            .json("GET", "/networks/trprod/status", None)?;
        ensure!(s["in_sync"] == json!(true), "not in sync: {s}");
        Ok(())
    })
    .with_context(|| two.logs())?;
    let api = address(&production, "api")?;
    let prefixes = [
        ("hv1", two.lab.node_netns_prefix("hv1")),
        ("hv2", two.lab.node_netns_prefix("hv2")),
    ];
    let ns = |hv: &str, net: &str, node: &str| {
        let p = prefixes
            .iter()
            .find(|(h, _)| *h == hv)
            .map_or("", |(_, p)| p);
        format!("{p}-{net}-{node}")
    };
    let dir = two.lab.dir().to_path_buf();
    let prod_rec = recorder(&two.lab, &ns("hv1", "trprod", "api"), "tr-prod-api")?;

    two.controller
        .json(
            "POST",
            "/shadows",
            Some(&json!({
                "id": "trsh", "production": "trprod", "nodes": ["api"], "hosts": ["hv2"],
                "policy": {"share_ppm": 1_000_000, "key": "connection", "ports": [8080]},
            })),
        )
        .with_context(|| two.logs())?;
    eventually(Duration::from_secs(90), Duration::from_millis(300), || {
        let s = shadow(&two.controller)?;
        ensure!(s["state"] == json!("sampling"), "not sampling yet: {s}");
        Ok(())
    })
    .with_context(|| two.logs())?;
    let shadow_rec = recorder(&two.lab, &ns("hv2", "trsh", "api"), "tr-shadow-api")?;
    phase("production and its shadow up, sampling 100 %");

    // The traffic: 25 new connections a second, and a keep-alive connection with 10
    // requests a second, until told to stop.
    let script = dir.join("tap-restart-client.py");
    std::fs::write(&script, CLIENT)?;
    let stop = dir.join("tap-restart-stop");
    let client = |tag: &str, mode: &str, interval: &str| -> Result<Child> {
        let mut c = Child::spawn(
            netns::command_in(
                &ns("hv1", "trprod", "c1"),
                &[
                    "python3",
                    &script.to_string_lossy(),
                    &api,
                    "8080",
                    tag,
                    mode,
                    interval,
                    &stop.to_string_lossy(),
                ],
            ),
            &dir,
            &format!("tap-restart-{tag}"),
        )?;
        c.wait_for_line(&["ready"], Duration::from_secs(10))?;
        Ok(c)
    };
    let mut fresh = client("n", "new", "0.04")?;
    let mut kept = client("k", "keep", "0.1")?;
    // Sampled and streamed before anything is stopped.
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let got = recorded(&shadow_rec.output());
        ensure!(
            got.iter().any(|(id, _)| id.starts_with("n-"))
                && got.iter().any(|(id, _)| id.starts_with("k-")),
            "the shadow got nothing yet"
        );
        Ok(())
    })
    .with_context(|| two.logs())?;
    std::thread::sleep(Duration::from_secs(2));
    let sampled_before = eventually(Duration::from_secs(10), Duration::from_millis(300), || {
        let n = counter(&shadow(&two.controller)?, "connections_sampled");
        ensure!(n > 0, "no sampled connections reported yet");
        Ok(n)
    })?;

    // Windows in which requests may miss the shadow: from the stop signal until the old
    // agent is gone (what it had read from the ring but not streamed).
    let mut stopping: Vec<(f64, f64)> = Vec::new();
    let mut adopted = Vec::new();

    // SIGTERM with the pins kept; a second without an agent; a new one.
    let signal = now();
    two.agents[0]
        .child
        .terminate(Duration::from_secs(15))
        .context("SIGTERM")?;
    stopping.push((signal, now()));
    std::thread::sleep(Duration::from_secs(1));
    two.agents[0] = Agent::start_with(&two.lab, 0, &url, &keep)?;
    applied(&two.lab, &two.agents[0])?;
    adopted.push(adopted_tap(&two.agents[0]));
    phase("SIGTERM, restarted");
    std::thread::sleep(Duration::from_secs(3));

    // SIGKILL; a second without an agent; a new one.
    let signal = now();
    two.agents[0].child.kill_hard();
    stopping.push((signal - 0.5, now()));
    std::thread::sleep(Duration::from_secs(1));
    two.agents[0] = Agent::start_with(&two.lab, 0, &url, &keep)?;
    applied(&two.lab, &two.agents[0])?;
    adopted.push(adopted_tap(&two.agents[0]));
    phase("SIGKILL, restarted");
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&stop, b"")?;
    let mut sent = BTreeMap::new();
    for (c, name) in [(&mut fresh, "new connections"), (&mut kept, "keep-alive")] {
        let done = c.wait_for_line(&["DONE"], Duration::from_secs(20))?;
        let out = c.output();
        println!("{name}: {}", done.trim());
        ensure!(
            done.contains("failed=0") && !out.contains("ERR"),
            "production failed requests ({name}): {done}\n{}",
            out.lines()
                .filter(|l| l.starts_with("ERR"))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
        sent.extend(sent_by(&out));
    }
    let prod: BTreeMap<String, String> = recorded(&prod_rec.output()).into_iter().collect();
    ensure!(
        sent.iter().all(|(id, s)| prod.get(id) == Some(&s.sha)),
        "production must get every request as sent: {} of {}",
        sent.keys().filter(|id| prod.contains_key(*id)).count(),
        sent.len()
    );

    // What the shadow got, once it stops growing.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let now_got: Vec<(String, String)> = recorded(&shadow_rec.output())
            .into_iter()
            .filter(|(id, _)| sent.contains_key(id))
            .collect();
        let settled = now_got.len() == got.len();
        got = now_got;
        if settled {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, sha) in &got {
        *times.entry(id.as_str()).or_default() += 1;
        ensure!(
            sent.get(id).is_some_and(|s| &s.sha == sha),
            "{id}: the shadow's bytes are not production's"
        );
    }
    let twice: Vec<&&str> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    ensure!(twice.is_empty(), "requests replayed twice: {twice:?}");
    let in_window = |at: f64| stopping.iter().any(|(a, b)| at >= *a && at <= *b);
    let missing: Vec<(&String, f64)> = sent
        .iter()
        .filter(|(id, _)| !times.contains_key(id.as_str()))
        .map(|(id, s)| (id, s.at))
        .collect();
    let (excused, unexcused): (Vec<_>, Vec<_>) =
        missing.into_iter().partition(|(_, at)| in_window(*at));
    phase(&format!(
        "{} requests sent, {} reached the shadow once each, {} missed it while an agent was stopping {excused:?}",
        sent.len(),
        times.len(),
        excused.len()
    ));
    ensure!(
        unexcused.is_empty(),
        "{} requests sent while no agent ran or while one was up did not reach the shadow (stop windows {stopping:?}): {:?}",
        unexcused.len(),
        &unexcused[..unexcused.len().min(10)]
    );
    let during_gaps = sent
        .values()
        .filter(|s| {
            stopping
                .iter()
                .any(|(_, gone)| s.at > *gone && s.at < gone + 1.0)
        })
        .count();
    ensure!(
        during_gaps >= 20,
        "only {during_gaps} requests were sent while no agent ran"
    );

    // The kernel's counters continued: every connection since the tap was made is
    // counted (at zero after a restart they would count a few seconds' only).
    let conns = sent.keys().filter(|id| id.starts_with("n-")).count() as u64;
    let s = eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let s = shadow(&two.controller)?;
        ensure!(
            counter(&s, "connections_sampled") >= sampled_before.max(conns),
            "connections_sampled {} after the restarts, {sampled_before} before, {conns} connections sent: {s}",
            counter(&s, "connections_sampled")
        );
        Ok(s)
    })
    .with_context(|| two.logs())?;
    let metrics = two.agents[0].metrics(&two.lab)?;
    ensure!(
        sum_metric(&metrics, "weft_agent_shadow_ring_full_total") == 0.0
            && sum_metric(&metrics, "weft_agent_shadow_copies_lost_total") == 0.0,
        "copies were dropped from the ring"
    );
    ensure!(
        adopted.iter().all(|a| *a),
        "the tap was not adopted (after SIGTERM, after SIGKILL: {adopted:?}):\n{}",
        two.agents[0].child.tail(40)
    );
    phase(&format!(
        "counters continued: {} connections sampled ({sampled_before} before the restarts)",
        counter(&s, "connections_sampled")
    ));
    Ok(())
}
