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
/// newline (`GET /client`: `argv[1]`, a space and the address its connection came from);
/// prints `ready` once listening.
const SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (sys.argv[1] + ("" if self.path != "/client" else " " + self.client_address[0]) + "\n").encode()
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
headers = dict([sys.argv[4].split(": ", 1)]) if len(sys.argv) > 4 else {}
c = http.client.HTTPConnection(host, 80, timeout=3)
n = weave = other = errors = 0
ports = set()
first_error = ""
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    n += 1
    try:
        c.request("GET", "/", headers=headers)
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

/// How the weave gets its traffic in a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// Activated: every new connection to web:80 is the weave's (the kernel steers it).
    Activate,
    /// Port 80 routed by header: the kernel steers every new connection to the request
    /// router (a process of its own), which sends requests with `X-Weft-Weave: strweave`
    /// to the weave and the others to the environment.
    ByHeader,
}

const HEADER: &str = "X-Weft-Weave: strweave";

#[test]
fn steered_connections_keep_their_side_across_agent_restarts() -> Result<()> {
    if skip_unless_root("steered_connections_keep_their_side_across_agent_restarts") {
        return Ok(());
    }
    across_restarts(Route::Activate)
}

/// The same across restarts with the weave routed by header: the request router is a
/// process of its own, which the agents leave serving and adopt, so the keep-alive
/// connection through it (requests with the header: the weave's) stays one connection
/// and no new connection (without the header: the environment's, through the router)
/// fails while no agent runs.
#[test]
fn routed_connections_keep_going_through_the_request_router_across_agent_restarts() -> Result<()> {
    if skip_unless_root(
        "routed_connections_keep_going_through_the_request_router_across_agent_restarts",
    ) {
        return Ok(());
    }
    across_restarts(Route::ByHeader)
}

/// Whether `agent` adopted the request router its predecessor left serving.
fn adopted_router(agent: &Agent) -> bool {
    agent
        .child
        .output()
        .contains("adopted the previous agent's request router")
}

fn across_restarts(route: Route) -> Result<()> {
    let keep = ["--keep-pins-on-exit"];
    let mut two = TwoHypervisors::start_all("strpool", &[], &keep, &[], &[])?;
    let url = two.controller.grpc_url();
    let env = environment(&two.controller, "strenv", TDL, &|| two.logs())?;
    let web: std::net::IpAddr = address(&env, "web")?.parse()?;
    let client_address = address(&env, "client")?;
    let client = ns(&two.lab, "strenv", "client");
    let _prod = web_server(&two.lab, &ns(&two.lab, "strenv", "web"), "prod")?;
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        ensure!(page(&client, &web.to_string())? == "prod", "prod page");
        Ok(())
    })
    .with_context(|| two.logs())?;

    // A weave of the environment, its page changed, given web:80's traffic (all of it, or
    // the requests with the header).
    let (code, body) = two.controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "strenv", "id": "strweave"})),
    )?;
    ensure!(code == 201, "create weave: {code} {body}\n{}", two.logs());
    wait_running(&two.controller, "strweave", &|| two.logs())?;
    let _weave = web_server(&two.lab, &ns(&two.lab, "strweave", "web"), "weave")?;
    let (code, body) = match route {
        Route::Activate => two
            .controller
            .send("POST", "/weaves/strweave/activate", None)?,
        Route::ByHeader => two.controller.send(
            "POST",
            "/weaves/strweave/routes",
            Some(&json!({"port": 80, "node": "web", "header": "X-Weft-Weave", "header_value": "strweave"})),
        )?,
    };
    ensure!(code == 200, "{route:?}: {code} {body}");
    let with_header = || -> Result<String> {
        Ok(crate::networks::exec(
            &client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "-H",
                HEADER,
                &format!("http://{web}/"),
            ],
        )?
        .trim()
        .to_owned())
    };
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        match route {
            Route::Activate => ensure!(
                page(&client, &web.to_string())? == "weave",
                "not routed yet"
            ),
            Route::ByHeader => {
                ensure!(with_header()? == "weave", "not routed by header yet");
                ensure!(
                    page(&client, &web.to_string())? == "prod",
                    "without the header: not the environment's"
                );
            }
        }
        Ok(())
    })
    .with_context(|| two.logs())?;
    // Both servers behind the request router see the client's address, not their own.
    let servers_see_the_client = || -> Result<()> {
        let who = |header: Option<&str>| -> Result<String> {
            let url = format!("http://{web}/client");
            let mut args = vec!["curl", "-sS", "--max-time", "3"];
            if let Some(h) = header {
                args.extend(["-H", h]);
            }
            args.push(&url);
            Ok(crate::networks::exec(&client, &args)?.trim().to_owned())
        };
        let (weave_saw, prod_saw) = (who(Some(HEADER))?, who(None)?);
        ensure!(
            weave_saw == format!("weave {client_address}")
                && prod_saw == format!("prod {client_address}"),
            "the servers behind the router saw {weave_saw:?} and {prod_saw:?}, not the client {client_address}"
        );
        Ok(())
    };
    if route == Route::ByHeader {
        servers_see_the_client().with_context(|| two.logs())?;
    }

    // The traffic: one keep-alive connection (10 requests a second for 40 s; with the
    // header when routed by it) and new connections (100 a second) until stopped.
    let script = two.lab.dir().join("steer-keepalive-client.py");
    std::fs::write(&script, KEEPALIVE_CLIENT)?;
    let mut args = vec![
        "python3".to_string(),
        script.to_string_lossy().into_owned(),
        web.to_string(),
        "40".into(),
        "0.1".into(),
    ];
    if route == Route::ByHeader {
        args.push(HEADER.into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut keepalive = Child::spawn(
        netns::command_in(&client, &args),
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
    let router_after_term = adopted_router(&two.agents[0]);
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
    println!("keep-alive client ({route:?}): {line}");
    let samples = running.finish()?;
    let (prod, weave, failed) = tally(&samples);
    println!(
        "new connections ({route:?}): {} requests, {weave} answered by the weave, {prod} by the environment, {} failed",
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
    // New connections: the weave's when activated, the environment's (through the
    // router) when routed by header; none failed.
    let (want, wrong) = match route {
        Route::Activate => (weave, prod),
        Route::ByHeader => (prod, weave),
    };
    ensure!(
        failed.is_empty() && wrong == 0,
        "{} of {} new connections failed, {wrong} went to the wrong side; the first failures: {:?}\n{}",
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
        want > 1000 && late > 100,
        "too few requests: {want} answered by their side, {late} after the last restart"
    );
    // Both new agents adopted the slots and took the links over (not made anew), and
    // the request router, when there is one.
    ensure!(
        adopted_after_term && adopted_steering(&two.agents[0]),
        "steering was not adopted (after SIGTERM: {adopted_after_term}):\n{}",
        two.agents[0].child.tail(40)
    );
    if route == Route::ByHeader {
        ensure!(
            router_after_term && adopted_router(&two.agents[0]),
            "the request router was not adopted (after SIGTERM: {router_after_term}):\n{}",
            two.agents[0].child.tail(40)
        );
        // A router process that dies is started again by the agent (as drift).
        let prefix = format!("/run/netns/{}.router.", two.lab.node_netns_prefix("hv1"));
        // The pids of the router processes serving this lab's namespaces, one per line.
        let router_pids = || -> Result<String> {
            let out = std::process::Command::new("pgrep")
                .args(["-f", &format!("request-router .*--netns {prefix}")])
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let router_pid = || -> Result<String> {
            let pids = router_pids()?;
            ensure!(
                !pids.is_empty() && !pids.contains('\n'),
                "one router process: {pids:?}"
            );
            Ok(pids)
        };
        let old = router_pid()?;
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &old])
            .status()?;
        ensure!(killed.success(), "kill -KILL {old}");
        eventually(Duration::from_secs(20), Duration::from_millis(200), || {
            let now = router_pid()?;
            ensure!(now != old, "still {old}");
            ensure!(with_header()? == "weave", "not routed by header again");
            ensure!(
                page(&client, &web.to_string())? == "prod",
                "without the header: not the environment's"
            );
            Ok(())
        })
        .with_context(|| two.agents[0].child.tail(40))?;
        ensure!(
            two.agents[0]
                .child
                .output()
                .contains("the request router does not answer"),
            "the agent did not log the router's end"
        );
        // The router started again keeps the client's address too.
        servers_see_the_client().with_context(|| two.agents[0].child.tail(40))?;

        // The route removed while no agent runs: the next agent sweeps the router the
        // last one left (its process and namespace) and what it gave the two servers'
        // namespaces (the fwmark rule and its table's route).
        let has_rule = |node_ns: &str| -> Result<bool> {
            Ok(crate::networks::exec(node_ns, &["ip", "rule", "show"])?.contains("0x57460001"))
        };
        let sides = [
            ns(&two.lab, "strenv", "web"),
            ns(&two.lab, "strweave", "web"),
        ];
        for side in &sides {
            ensure!(has_rule(side)?, "{side}: no fwmark rule while routed");
        }
        two.agents[0]
            .child
            .terminate(Duration::from_secs(15))
            .context("SIGTERM")?;
        let (code, body) = two.controller.send(
            "DELETE",
            "/weaves/strweave/routes/80?node=web&header=x-weft-weave&header_value=strweave",
            None,
        )?;
        ensure!(code == 200, "remove the route by header: {code} {body}");
        two.agents[0] = Agent::start_with(&two.lab, 0, &url, &keep)?;
        eventually(Duration::from_secs(30), Duration::from_millis(200), || {
            let left = router_pids()?;
            ensure!(left.is_empty(), "the router process is still there: {left}");
            for side in &sides {
                ensure!(!has_rule(side)?, "{side}: the swept router's rule stayed");
            }
            Ok(())
        })
        .with_context(|| two.agents[0].child.tail(40))?;
        ensure!(
            two.agents[0]
                .child
                .output()
                .contains("removed a request router namespace no steer uses"),
            "the new agent did not sweep the router:\n{}",
            two.agents[0].child.tail(40)
        );
    }
    Ok(())
}
