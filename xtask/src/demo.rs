//! `cargo xtask demo`: a lab with six workloads and real servers, weft-agent on the
//! hypervisor, the controller in the root namespace, ~20 s of real traffic, then the
//! topology printed and written to demo-out/ with screenshots of the web console, checked,
//! and everything removed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_lab::servers::{self, Site};
use weft_lab::topology::{Topology, edge_set};
use weft_lab::traffic;
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{Lab, eventually};

use crate::demo_console::{Console, EVENTS_READY, INFRA_READY, MAP_READY, SERVICE_READY};
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
pub const EXPECTED: &[(&str, &str)] = &[
    ("client", "web"),
    ("web", "api"),
    ("worker", "db"),
    ("worker", "cache"),
];

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
        println!(
            "    {:<7} {:<15} {:<14} netns {}",
            w.name,
            w.ipv4,
            w.ipv6,
            w.netns.name()
        );
    }
    println!("    lab dir {}", lab.dir().display());
    check_interrupted()?;

    step("demo: starting servers");
    let api = servers::nginx(
        lab.workload("api")?,
        Site::Static(vec![
            (
                "items.json".into(),
                br#"{"items":[{"id":1,"name":"weft"},{"id":2,"name":"warp"}]}"#.to_vec(),
            ),
            ("blob.bin".into(), servers::blob(64 * 1024)),
        ]),
    )?;
    println!(
        "    api:   nginx serving JSON and static content on {}",
        api.addr()
    );
    let web = servers::nginx(
        lab.workload("web")?,
        Site::Proxy {
            upstream: api.addr(),
        },
    )?;
    println!("    web:   nginx proxying to api on {}", web.addr());
    check_interrupted()?;
    let db = servers::postgres(lab.workload("db")?)?;
    println!("    db:    PostgreSQL 15 on {}", db.addr());
    let cache = servers::redis(lab.workload("cache")?)?;
    println!("    cache: Redis on {}", cache.addr());
    check_interrupted()?;

    step("demo: starting weft-controller (root namespace) and weft-agent (hv1)");
    // With a shard pool: the export's mirror at the end takes its addresses from it.
    let ip = lab.hypervisor().uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{}.128/25", lab.x());
    // Five-second buckets: the console's charts of 20 s of traffic have a few points.
    let controller = Controller::start_with(
        &lab,
        &grpc,
        &http,
        &["--shard-pool", &pool, "--bucket-width", "5s"],
    )?;
    println!(
        "    controller: gRPC {} REST {}",
        controller.grpc_addr,
        controller.http_url("")
    );
    let mut agent = Agent::start(&lab, 0, &controller.grpc_url())?;
    println!(
        "    agent: attached to {} workload interfaces",
        lab.workloads().len()
    );
    check_interrupted()?;

    step(&format!("demo: traffic for {seconds} s"));
    let client = &lab.workload("client")?.netns;
    let worker = &lab.workload("worker")?.netns;
    traffic::pgbench_init(worker, &db.ipv4).context("pgbench -i")?;
    println!("    worker -> db: pgbench -i done");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let web_url = format!("{}/items.json", web.url());
    let blob_url = format!("{}/blob.bin", web.url());
    let mut sent = Sent::default();
    let results = std::thread::scope(|s| -> Result<()> {
        let http = s.spawn(|| -> Result<u64> {
            println!("    client -> web: 10 curl requests, one connection each");
            traffic::curl_each(client, &web_url, 10, &[])?;
            println!("    client -> web: 20 requests on one keep-alive connection (64 KiB each)");
            traffic::curl_keepalive(client, &blob_url, 20, &[])?;
            let secs = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1);
            println!("    client -> web: wrk, 4 keep-alive connections, {secs} s");
            let w = traffic::wrk(client, &web_url, 4, secs)?;
            println!(
                "    client -> web: wrk done: {} requests ({:.0}/s)",
                w.requests, w.requests_per_sec
            );
            Ok(30 + w.requests)
        });
        let data = s.spawn(|| -> Result<(u64, u64)> {
            let secs = (seconds / 2).max(1);
            println!("    worker -> db: pgbench, 2 clients, {secs} s");
            let tx = traffic::pgbench_run(worker, &db.ipv4, secs, 2)?;
            println!("    worker -> db: pgbench done: {tx} transactions");
            println!("    worker -> cache: redis-benchmark rounds of 10000 SET + 10000 GET, 4 clients, until the end");
            let mut redis = 0;
            while redis == 0 || (Instant::now() < deadline && !INTERRUPTED.load(Ordering::SeqCst)) {
                traffic::redis_benchmark(worker, &cache.ipv4, 10_000, 4)?;
                redis += 20_000;
            }
            println!("    worker -> cache: redis-benchmark done: {redis} commands");
            Ok((tx, redis))
        });
        let mut last = Instant::now();
        let mut told = false;
        while !(http.is_finished() && data.is_finished()) {
            std::thread::sleep(Duration::from_millis(200));
            if !told && INTERRUPTED.load(Ordering::SeqCst) {
                told = true;
                println!("    interrupted: stopping the clients");
                // The clients run under `timeout`, in process groups of their own: stop
                // them through their namespaces.
                for ns in [client, worker] {
                    for pid in ns.pids() {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe {
                            libc::kill(pid, libc::SIGTERM);
                        }
                    }
                }
            }
            if last.elapsed() >= Duration::from_secs(3) {
                last = Instant::now();
                progress(&controller);
            }
        }
        sent.http = http
            .join()
            .map_err(|_| anyhow::anyhow!("http traffic thread panicked"))??;
        (sent.pgbench_tx, sent.redis) = data
            .join()
            .map_err(|_| anyhow::anyhow!("data traffic thread panicked"))??;
        Ok(())
    });
    check_interrupted()?;
    results?;
    if !agent.child.is_running() {
        bail!(
            "weft-agent exited during the demo; its output:\n{}",
            agent.child.tail(30)
        );
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
    if let Err(e) = &waited {
        check_interrupted()?;
        println!("    {e:#}");
    }
    // The agent drains every second: wait until the request totals stop moving.
    let mut previous = u64::MAX;
    let settled = eventually(Duration::from_secs(20), Duration::from_millis(2500), || {
        check_interrupted()?;
        let total: u64 = controller
            .topology()?
            .dependencies
            .iter()
            .map(|d| d.requests)
            .sum();
        let same = total == previous;
        previous = total;
        if same {
            Ok(())
        } else {
            bail!("request total still moving ({total})")
        }
    });
    if let Err(e) = settled {
        check_interrupted()?;
        println!("    {e:#}");
    }
    progress(&controller);
    let topology = controller.topology().context("GET /topology")?;

    step("demo: topology (GET /topology.txt)");
    let txt = controller
        .get("/topology.txt")
        .context("GET /topology.txt")?;
    println!("{txt}");
    let out_dir = root().join(out);
    write_outputs(&controller, &out_dir)?;
    print_edges(&topology);
    println!(
        "    sent: client->web {} HTTP requests (curl + wrk; web->api carries the same), \
         worker->db {} pgbench transactions (7 statements each), worker->cache {} Redis commands",
        sent.http, sent.pgbench_tx, sent.redis
    );

    check_interrupted()?;
    step("demo: the web console in headless Chromium (screenshots)");
    let console = Console::open(&controller, lab.dir())?;
    let mut shots = vec![
        console.shoot("#/map", MAP_READY, &out_dir.join("console-map.png"))?,
        console.shoot(
            "#/service/web",
            SERVICE_READY,
            &out_dir.join("console-service-web.png"),
        )?,
    ];
    check_interrupted()?;
    export_and_mirror(&controller, |_| {
        shots.push(console.shoot("#/infra", INFRA_READY, &out_dir.join("console-infra.png"))?);
        shots.push(console.shoot(
            "#/events",
            EVENTS_READY,
            &out_dir.join("console-events.png"),
        )?);
        Ok(())
    })?;
    drop(console);
    for shot in &shots {
        println!("    wrote {}", shot.display());
    }

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
        bail!(
            "the topology's dependencies differ from the traffic sent: missing {missing:?}, unexpected {extra:?}"
        )
    }
}

/// The exported network's name (and its shard network's).
const EXPORTED: &str = "demo";
/// Its mirror.
const MIRROR: &str = "demodr";

/// `weft tdl export` of what ran (GET /tdl/export), printed; mirrored onto hv1 as written
/// (POST /networks/mirror), its status printed once in sync, `in_sync` called; then
/// deleted.
fn export_and_mirror(
    controller: &Controller,
    in_sync: impl FnOnce(&Controller) -> Result<()>,
) -> Result<()> {
    step("demo: weft tdl export (GET /tdl/export?network=demo&addresses=false)");
    let answer = controller
        .json(
            "GET",
            &format!("/tdl/export?network={EXPORTED}&addresses=false&format=json"),
            None,
        )
        .context("GET /tdl/export")?;
    let tdl = answer["tdl"]
        .as_str()
        .context("the export has no tdl")?
        .to_owned();
    for line in tdl.lines() {
        println!("    {line}");
    }
    for l in answer["left_out"].as_array().into_iter().flatten() {
        println!("    left out: {}", l.as_str().unwrap_or_default());
    }
    step(&format!(
        "demo: the export mirrored as network {MIRROR} on hv1 (POST /networks/mirror)"
    ));
    controller
        .json(
            "POST",
            "/shards",
            Some(&serde_json::json!({"prefix_len": 27, "network_id": EXPORTED})),
        )
        .context("POST /shards")?;
    controller
        .json(
            "POST",
            "/networks/mirror",
            Some(
                &serde_json::json!({"tdl": tdl, "file_name": format!("{EXPORTED}.tdl"),
                                     "destination": MIRROR, "hosts": ["hv1"]}),
            ),
        )
        .context("POST /networks/mirror")?;
    let status = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        check_interrupted()?;
        let s = controller.json("GET", &format!("/networks/{MIRROR}/status"), None)?;
        if s["in_sync"] == serde_json::json!(true) {
            Ok(s)
        } else {
            bail!("{MIRROR} not in sync: {s}")
        }
    })
    .with_context(|| format!("the mirror of the export did not come about:\n{tdl}"))?;
    println!("    GET /networks/{MIRROR}/status: in sync");
    for h in status["hosts"].as_array().into_iter().flatten() {
        for r in h["resources"].as_array().into_iter().flatten() {
            let observed: Vec<&str> = r["observed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str())
                .filter(|o| !o.starts_with("netns "))
                .collect();
            println!(
                "    {:<7} {:<22} {}",
                h["host"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default(),
                observed.join(", ")
            );
        }
    }
    in_sync(controller)?;
    controller
        .json("DELETE", &format!("/networks/{MIRROR}"), None)
        .context("DELETE the mirror")?;
    Ok(())
}

/// What the demo's clients reported sending.
#[derive(Default)]
struct Sent {
    http: u64,
    pgbench_tx: u64,
    redis: u64,
}

fn progress(controller: &Controller) {
    match (controller.metric("records_ingested"), controller.topology()) {
        (Ok(n), Ok(t)) => println!(
            "    ... records_ingested {n:.0}, {} dependencies so far",
            t.dependencies.len()
        ),
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
    let dot = controller
        .get("/topology.dot")
        .context("GET /topology.dot")?;
    let dot_path = dir.join("topology.dot");
    std::fs::write(&dot_path, &dot)?;
    println!("    wrote {}", dir.join("topology.json").display());
    println!("    wrote {}", dot_path.display());
    let svg = dir.join("topology.svg");
    match Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_path)
        .arg("-o")
        .arg(&svg)
        .output()
    {
        Ok(o) if o.status.success() => println!("    wrote {}", svg.display()),
        Ok(o) => println!(
            "    dot could not render the graph: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(_) => println!("    Graphviz `dot` not found: no SVG"),
    }
    Ok(())
}

fn print_edges(t: &Topology) {
    println!(
        "    {:<16} {:<8} {:>5} {:<9} {:>6} {:>9} {:>11} {:>11}",
        "edge", "proto", "port", "transport", "flows", "requests", "p50 ms", "p99 ms"
    );
    for d in &t.dependencies {
        println!(
            "    {:<16} {:<8} {:>5} {:<9} {:>6} {:>9} {:>11.3} {:>11.3}",
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
