//! `cargo xtask demo`: a lab with six workloads and real servers, weft-agent on the
//! hypervisor, the controller in the root namespace, ~20 s of real traffic, then the
//! topology printed and written to demo-out/, checked, and everything removed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_lab::servers::{self, Site};
use weft_lab::topology::{Topology, edge_set};
use weft_lab::traffic;
use weft_lab::weft::{Agent, Controller};
use weft_lab::{Lab, eventually};

use crate::sh::{root, step};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: removing the lab");
    }
    Ok(())
}

/// The edges the demo's traffic creates, and only those.
pub const EXPECTED: &[(&str, &str)] = &[("client", "web"), ("web", "api"), ("worker", "db"), ("worker", "cache")];

pub fn run(seconds: u64, out: &str) -> Result<()> {
    if !weft_lab::is_root() {
        bail!("the demo builds network namespaces: run it as root");
    }
    install_signal_handlers();
    let started = Instant::now();
    step("demo: building the lab (hypervisor hv1; workloads client, web, api, worker, db, cache)");
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("client")
        .workload("web")
        .workload("api")
        .workload("worker")
        .workload("db")
        .workload("cache")
        .build()
        .context("build the lab")?;
    for w in lab.workloads() {
        println!("    {:<7} {:<15} {:<14} netns {}", w.name, w.ipv4, w.ipv6, w.netns.name());
    }
    println!("    lab dir {}", lab.dir().display());
    check_interrupted()?;

    step("demo: starting servers");
    let api = servers::nginx(lab.workload("api")?, Site::Static(vec![
        ("items.json".into(), br#"{"items":[{"id":1,"name":"weft"},{"id":2,"name":"warp"}]}"#.to_vec()),
        ("blob.bin".into(), servers::blob(64 * 1024)),
    ]))?;
    println!("    api:   nginx serving JSON and static content on {}", api.addr());
    let web = servers::nginx(lab.workload("web")?, Site::Proxy { upstream: api.addr() })?;
    println!("    web:   nginx proxying to api on {}", web.addr());
    check_interrupted()?;
    let db = servers::postgres(lab.workload("db")?)?;
    println!("    db:    PostgreSQL 15 on {}", db.addr());
    let cache = servers::redis(lab.workload("cache")?)?;
    println!("    cache: Redis on {}", cache.addr());
    check_interrupted()?;

    step("demo: starting weft-controller (root namespace) and weft-agent (hv1)");
    let controller = Controller::start(&lab)?;
    println!("    controller: gRPC {} REST http://{}", controller.grpc_addr, controller.http_addr);
    let mut agent = Agent::start(&lab, 0, &controller.grpc_url())?;
    println!("    agent: attached to {} workload interfaces", lab.workloads().len());
    check_interrupted()?;

    step(&format!("demo: traffic for {seconds} s"));
    let client = &lab.workload("client")?.netns;
    let worker = &lab.workload("worker")?.netns;
    traffic::pgbench_init(worker, &db.ipv4).context("pgbench -i")?;
    println!("    worker -> db: pgbench -i done");
    let half = (seconds / 2).max(2);
    let web_url = format!("{}/items.json", web.url());
    let blob_url = format!("{}/blob.bin", web.url());
    let results = std::thread::scope(|s| -> Result<()> {
        let http = s.spawn(|| -> Result<String> {
            let mut said = String::new();
            let t = traffic::curl_each(client, &web_url, 10, &[])?;
            said.push_str(&format!("client -> web: 10 curl requests, {} bytes\n", traffic::total_download(&t)));
            let t = traffic::curl_keepalive(client, &blob_url, 20, &[])?;
            said.push_str(&format!("client -> web: 20 keep-alive requests, {} bytes\n", traffic::total_download(&t)));
            let w = traffic::wrk(client, &web_url, 4, half.saturating_sub(1).max(1))?;
            said.push_str(&format!("client -> web: wrk {} requests ({:.0}/s)\n", w.requests, w.requests_per_sec));
            Ok(said)
        });
        let data = s.spawn(|| -> Result<String> {
            let n = traffic::pgbench_run(worker, &db.ipv4, half, 2)?;
            let mut said = format!("worker -> db: pgbench {n} transactions\n");
            traffic::redis_benchmark(worker, &cache.ipv4, 20_000, 4)?;
            said.push_str("worker -> cache: redis-benchmark 20000 SET+GET\n");
            Ok(said)
        });
        println!("    client -> web: curl (new connections, then keep-alive), then wrk");
        println!("    worker -> db: pgbench; worker -> cache: redis-benchmark");
        let mut last = Instant::now();
        while !(http.is_finished() && data.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            if INTERRUPTED.load(Ordering::SeqCst) {
                println!("    interrupted: waiting for the clients to stop");
            }
            if last.elapsed() >= Duration::from_secs(3) {
                last = Instant::now();
                progress(&controller);
            }
        }
        let http = http.join().map_err(|_| anyhow::anyhow!("http traffic thread panicked"))??;
        let data = data.join().map_err(|_| anyhow::anyhow!("data traffic thread panicked"))??;
        for l in http.lines().chain(data.lines()) {
            println!("    {l}");
        }
        Ok(())
    });
    check_interrupted()?;
    results?;
    if !agent.child.is_running() {
        bail!("weft-agent exited during the demo; its output:\n{}", agent.child.tail(30));
    }

    step("demo: waiting for the controller to hold every edge");
    let expected = edge_set(EXPECTED);
    let waited = eventually(Duration::from_secs(20), Duration::from_secs(1), || {
        check_interrupted()?;
        let t = controller.topology()?;
        let edges = t.edges();
        if expected.is_subset(&edges) {
            Ok(t)
        } else {
            bail!("edges so far: {edges:?}")
        }
    });
    progress(&controller);
    let topology = match waited {
        Ok(t) => t,
        Err(e) => {
            check_interrupted()?;
            println!("    {e:#}");
            controller.topology().context("GET /topology")?
        }
    };

    step("demo: topology (GET /topology.txt)");
    let txt = controller.get("/topology.txt").context("GET /topology.txt")?;
    println!("{txt}");
    write_outputs(&controller, &root().join(out))?;
    print_edges(&topology);

    let edges: BTreeSet<String> = topology.edges();
    let elapsed = started.elapsed().as_secs();
    if edges == expected {
        step(&format!(
            "demo: OK: the dependencies are exactly {} ({elapsed} s); removing the lab",
            expected.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        Ok(())
    } else {
        let missing: Vec<_> = expected.difference(&edges).collect();
        let extra: Vec<_> = edges.difference(&expected).collect();
        bail!("the topology's dependencies differ from the traffic sent: missing {missing:?}, unexpected {extra:?}")
    }
}

fn progress(controller: &Controller) {
    match (controller.metric("records_ingested"), controller.topology()) {
        (Ok(n), Ok(t)) => println!("    ... records_ingested {n:.0}, {} dependencies so far", t.dependencies.len()),
        (Err(e), _) | (_, Err(e)) => println!("    ... controller not answering yet: {e:#}"),
    }
}

fn write_outputs(controller: &Controller, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = controller.get("/topology").context("GET /topology")?;
    let pretty = serde_json::from_str::<serde_json::Value>(&json)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(json);
    std::fs::write(dir.join("topology.json"), pretty)?;
    let dot = controller.get("/topology.dot").context("GET /topology.dot")?;
    let dot_path = dir.join("topology.dot");
    std::fs::write(&dot_path, &dot)?;
    println!("    wrote {}", dir.join("topology.json").display());
    println!("    wrote {}", dot_path.display());
    let svg = dir.join("topology.svg");
    match Command::new("dot").arg("-Tsvg").arg(&dot_path).arg("-o").arg(&svg).output() {
        Ok(o) if o.status.success() => println!("    wrote {}", svg.display()),
        Ok(o) => println!("    dot could not render the graph: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(_) => println!("    Graphviz `dot` not found: no SVG"),
    }
    Ok(())
}

fn print_edges(t: &Topology) {
    println!("    {:<16} {:<5} {:>5} {:<9} {:>6} {:>9} {:>11} {:>11}", "edge", "proto", "port", "transport", "flows", "requests", "p50 ms", "p99 ms");
    for d in &t.dependencies {
        println!(
            "    {:<16} {:<5} {:>5} {:<9} {:>6} {:>9} {:>11.3} {:>11.3}",
            format!("{}->{}", d.source, d.target),
            d.protocol,
            d.port,
            d.transport,
            d.flows,
            d.requests,
            d.latency_ms.p50,
            d.latency_ms.p99
        );
    }
}
