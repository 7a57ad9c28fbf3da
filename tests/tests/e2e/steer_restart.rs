//! Steering across agent restarts: a weave is active (every new connection to the
//! environment's web server is routed to the weave's by the kernel), a long-lived
//! keep-alive connection and a steady stream of new connections run, and hv1's agent is
//! stopped with SIGTERM (keeping its pins) and started again, then killed with SIGKILL
//! and started again. The steering maps and links are pinned: between the agents the
//! programs keep running, and each new agent adopts the previous one's slot, so the
//! long-lived connection keeps going to the weave on the same socket, no request fails,
//! and every new connection is still the weave's, after the restarts too.
//!
//! The web servers are the test's own processes in `vm` nodes' namespaces: a node's
//! processes that the agent runs do not survive its restart (the new agent's supervisor
//! kills what is left in the node's cgroup and starts them again), which is not what
//! this test is about.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use weft_lab::load::{self, Plan};
use weft_lab::process::Child;
use weft_lab::weft::{Agent, sum_metric};
use weft_lab::{eventually, netns, skip_unless_root};

use crate::networks::{TwoHypervisors, address};
use crate::weaves::{environment, ns, page, tally, wait_running};

const TDL: &str = "\
network: strenv
addressing:
  shards: strpool
nodes:
  client:
    type: vm
  web:
    type: vm
    ports: [80]
connections:
  client -> web:
    port: 80
";

/// An HTTP/1.1 server (keep-alive) on port 80 answering every GET with `argv[1]` and a
/// newline; prints `ready` once listening.
const SERVER: &str = r#"
import http.server, sys
body = (sys.argv[1] + "\n").encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("0.0.0.0", 80), H)
s.daemon_threads = True
print("ready", flush=True)
s.serve_forever()
"#;

/// The test's web server in the namespace `ns`, answering `body`.
fn web_server(lab: &weft_lab::Lab, ns: &str, body: &str) -> Result<Child> {
    let script = lab.dir().join("steer-web-server.py");
    std::fs::write(&script, SERVER)?;
    let mut c = Child::spawn(
        netns::command_in(ns, &["python3", &script.to_string_lossy(), body]),
        lab.dir(),
        &format!("steer-web-{body}"),
    )?;
    c.wait_for_line(&["ready"], Duration::from_secs(10))?;
    Ok(c)
}

/// One HTTP/1.1 keep-alive connection: a request every `interval` seconds for `seconds`,
/// then `requests=N weave=W other=O errors=E sockets=S first_error=...` (`sockets`: the
/// local ports used; 1 when the connection never broke).
const KEEPALIVE_CLIENT: &str = r#"
import http.client, sys, time
host, seconds, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
c = http.client.HTTPConnection(host, 80, timeout=3)
n = weave = other = errors = 0
ports = set()
first_error = ""
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    n += 1
    try:
        c.request("GET", "/")
        body = c.getresponse().read()
        ports.add(c.sock.getsockname()[1])
        if body == b"weave\n":
            weave += 1
        else:
            other += 1
    except Exception as e:
        errors += 1
        first_error = first_error or f"request {n}: {e!r}"
        c.close()
    time.sleep(interval)
print(f"requests={n} weave={weave} other={other} errors={errors} sockets={len(ports)} first_error={first_error}", flush=True)
"#;

/// Parses `key=N` out of the client's summary line.
fn field(line: &str, key: &str) -> Result<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .with_context(|| format!("no {key} in {line}"))?
        .parse()
        .with_context(|| format!("{key} in {line}"))
}

/// Waits until `agent` has applied the controller's desired state.
fn applied(lab: &weft_lab::Lab, agent: &Agent) -> Result<()> {
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let g = sum_metric(&agent.metrics(lab)?, "weft_agent_applied_generation");
        ensure!(g > 0.0, "no desired state applied yet");
        Ok(())
    })
    .with_context(|| agent.child.tail(40))
}

/// Whether `agent` took steering back: the previous agent's slot adopted and the origin's
/// pinned link taken over (the log is coloured: the words, not the key=value pairs).
fn adopted_steering(agent: &Agent) -> bool {
    let log = agent.child.output();
    log.contains("adopted the previous agent's slot")
        && log
            .lines()
            .any(|l| l.contains("took over the pinned link") && l.contains("steer_origin"))
}

#[test]
fn steered_connections_keep_their_side_across_agent_restarts() -> Result<()> {
    if skip_unless_root("steered_connections_keep_their_side_across_agent_restarts") {
        return Ok(());
    }
    let keep = ["--keep-pins-on-exit"];
    let mut two = TwoHypervisors::start_all("strpool", &[], &keep, &[], &[])?;
    let url = two.controller.grpc_url();
    let env = environment(&two.controller, "strenv", TDL, &|| two.logs())?;
    let web: std::net::IpAddr = address(&env, "web")?.parse()?;
    let client = ns(&two.lab, "strenv", "client");
    let _prod = web_server(&two.lab, &ns(&two.lab, "strenv", "web"), "prod")?;
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        ensure!(page(&client, &web.to_string())? == "prod", "prod page");
        Ok(())
    })
    .with_context(|| two.logs())?;

    // A weave of the environment, its page changed, activated: every new connection to
    // web:80 from the environment's client is the weave's.
    let (code, body) = two.controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "strenv", "id": "strweave"})),
    )?;
    ensure!(code == 201, "create weave: {code} {body}\n{}", two.logs());
    wait_running(&two.controller, "strweave", &|| two.logs())?;
    let _weave = web_server(&two.lab, &ns(&two.lab, "strweave", "web"), "weave")?;
    let (code, body) = two
        .controller
        .send("POST", "/weaves/strweave/activate", None)?;
    ensure!(code == 200, "activate: {code} {body}");
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        ensure!(
            page(&client, &web.to_string())? == "weave",
            "not routed yet"
        );
        Ok(())
    })
    .with_context(|| two.logs())?;

    // The traffic: one keep-alive connection (10 requests a second for 40 s) and new
    // connections (100 a second) until stopped.
    let script = two.lab.dir().join("steer-keepalive-client.py");
    std::fs::write(&script, KEEPALIVE_CLIENT)?;
    let mut keepalive = Child::spawn(
        netns::command_in(
            &client,
            &[
                "python3",
                &script.to_string_lossy(),
                &web.to_string(),
                "40",
                "0.1",
            ],
        ),
        two.lab.dir(),
        "steer-keepalive-client",
    )?;
    keepalive.wait_for_line(&["ready"], Duration::from_secs(10))?;
    let plan = Plan {
        netns: PathBuf::from(format!("/run/netns/{client}")),
        target: SocketAddr::new(web, 80),
        path: "/".into(),
        rate: 100,
        threads: 4,
        duration: Duration::from_secs(90),
        max_requests: 20_000,
        timeout: Duration::from_secs(5),
    };
    let running = load::start(&plan)?;
    let t0 = running.t0;
    std::thread::sleep(Duration::from_secs(3));

    // SIGTERM with the pins kept; one second without an agent; a new one.
    two.agents[0]
        .child
        .terminate(Duration::from_secs(15))
        .context("SIGTERM")?;
    std::thread::sleep(Duration::from_secs(1));
    two.agents[0] = Agent::start_with(&two.lab, 0, &url, &keep)?;
    applied(&two.lab, &two.agents[0])?;
    let adopted_after_term = adopted_steering(&two.agents[0]);
    std::thread::sleep(Duration::from_secs(3));

    // SIGKILL; one second without an agent; a new one.
    two.agents[0].child.kill_hard();
    std::thread::sleep(Duration::from_secs(1));
    two.agents[0] = Agent::start_with(&two.lab, 0, &url, &keep)?;
    applied(&two.lab, &two.agents[0])?;
    let restarted = Instant::now();
    std::thread::sleep(Duration::from_secs(3));

    // The keep-alive connection: every request answered by the weave, on one socket.
    let line = keepalive.wait_for_line(&["requests="], Duration::from_secs(60))?;
    println!("keep-alive client: {line}");
    let samples = running.finish()?;
    let (prod, weave, failed) = tally(&samples);
    println!(
        "new connections: {} requests, {weave} answered by the weave, {prod} by the environment, {} failed",
        samples.len(),
        failed.len()
    );
    ensure!(
        field(&line, "errors")? == 0 && field(&line, "other")? == 0,
        "the long-lived steered connection broke or changed side: {line}\n{}",
        two.logs()
    );
    ensure!(
        field(&line, "sockets")? == 1 && field(&line, "weave")? >= 200,
        "the long-lived connection was not one connection answered by the weave: {line}"
    );
    ensure!(
        failed.is_empty() && prod == 0,
        "{} of {} new connections failed, {prod} were the environment's; the first failures: {:?}\n{}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)],
        two.logs()
    );
    // New connections after the second restart are still steered (decided by the new
    // agent's programs in the taken-over links).
    let after = restarted.duration_since(t0);
    let late = samples.iter().filter(|s| s.started > after).count();
    ensure!(
        weave > 1000 && late > 100,
        "too few requests: {weave} answered, {late} after the last restart"
    );
    // Both new agents adopted the slots and took the links over (not made anew).
    ensure!(
        adopted_after_term && adopted_steering(&two.agents[0]),
        "steering was not adopted (after SIGTERM: {adopted_after_term}):\n{}",
        two.agents[0].child.tail(40)
    );
    Ok(())
}
