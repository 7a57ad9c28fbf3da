//! `cargo xtask bench weaves`: what branching an environment costs (issue 14), on release
//! binaries in the namespace lab, each figure beside a baseline measured in the same run.
//!
//! - **Weave to first answer.** Environments of 3 services (nginx, PostgreSQL with a
//!   `pgbench -i -s 5` database, Redis) and of 10 nodes (the same plus a client and six
//!   more nginx). Timed: `POST /weaves` (from now) + `POST /weaves/{id}/routes` (5432) until
//!   the client's first answer on the routed port comes from the weave's PostgreSQL (its
//!   `pg_postmaster_start_time()` is after the call; asked every 2 ms on a new connection by
//!   an in-process client, `weft_lab::pgwire`, not a `psql` process whose own start-up
//!   would be timed too). Baseline in the same run: creating the
//!   same environment cold (`POST /networks` until the same query answers).
//! - **Production frozen.** During each weave creation, HTTP requests on new connections
//!   at 500/s to production's nginx (its volume is snapshotted too) and `select 1` to its
//!   PostgreSQL every 10 ms on a new connection (in-process): the longest request during
//!   creation beside the longest over as long a window before it.
//! - **Activation.** 100 activations/deactivations under 2,000 req/s (new connection per
//!   request): failed requests, p99 while switching beside p99 without switching.
//! - **Routing by request.** The same nginx under `oha` at 2,000 req/s (50 keep-alive
//!   connections, then a new connection per request): no route (the baseline), port 80
//!   routed whole to the weave (the kernel), port 80 routed by a header (the agent's request
//!   router) with requests without the header (production through the router) and with it
//!   (the weave through the router). Latency percentiles and each beside the baseline.
//! - **sync_volumes** of a 10 MiB delta in a 1 GiB volume (`POST /weaves/{id}/sync`),
//!   beside `rsync -a --delete --inplace --no-whole-file` (delta transfer, as between hosts) of the same change into a copy (what a mirror's volume
//!   replication does) and `cp -a` of the volume.
//!
//! `WEFT_BENCH_ROUNDS` (default 3). The figures go into BENCHMARKS.md between the `weaves`
//! markers. `WEFT_BENCH_WEAVES_ONLY=routing` runs the routing cases alone and prints each
//! round's new-connection p99 (BENCHMARKS.md is left as it is); `=branch` the weave-to-first-
//! answer rounds alone, printed (BENCHMARKS.md is left as it is).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::Lab;
use weft_lab::load::{self, Outcome, Plan, Sample};
use weft_lab::weft::{Agent, Controller, free_port};

use crate::bench_networks::{
    bench_rounds, call, call_json, loadavg, median, post_network, release_binaries, splice_section,
    wait_synced,
};
use crate::bench_shadows::{self, Load};
use crate::sh;

const BEGIN: &str = "<!-- weaves:begin (written by `cargo xtask bench weaves`) -->";
const END: &str = "<!-- weaves:end -->";
const POOL: &str = "wbpool";

fn env_tdl(name: &str, extra_nginx: usize) -> String {
    let mut t = format!(
        "\
network: {name}
addressing:
  shards: {POOL}
nodes:
  client:
    type: vm
  web:
    image: nginx:latest
    ports: [80]
    volumes: [data:/srv]
  db:
    image: postgres:16
    ports: [5432]
    volumes: [data:/var/lib/postgresql]
  cache:
    image: redis:7
    ports: [6379]
    volumes: [data:/var/lib/redis]
"
    );
    for i in 0..extra_nginx {
        let _ = write!(t, "  n{i}:\n    image: nginx:latest\n    ports: [80]\n");
    }
    t.push_str(
        "connections:\n  client -> web:\n    port: 80\n  client -> db:\n    port: 5432\n  client -> cache:\n    port: 6379\n",
    );
    t
}

const SYNC_TDL: &str = "\
network: wbsync
addressing:
  shards: wbpool
nodes:
  store:
    command: sleep 1000000
    volumes: [data:/data]
";

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn address(net: &Value, node: &str) -> Result<String> {
    let a = net["placement"][node]["addresses"][0]
        .as_str()
        .with_context(|| format!("no address for {node}"))?;
    Ok(a.split('/').next().unwrap_or(a).to_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut c = weft_lab::netns::command_in(ns, &["timeout", "10"]);
    c.args(args);
    weft_lab::cmd::run(&mut c)
}

/// The start time (unix ns) of the PostgreSQL at `db:5432`, asked from inside namespace
/// `ns` on a new connection (in-process: a `psql` process would add its own start-up).
fn postmaster_start(ns: &str, db: &str) -> Result<u64> {
    let mut c = pg_connect(ns, db)?;
    c.query("select (extract(epoch from pg_postmaster_start_time()) * 1e9)::bigint")?
        .context("no postmaster start time")?
        .trim()
        .parse()
        .context("postmaster start time")
}

fn pg_connect(ns: &str, db: &str) -> Result<weft_lab::pgwire::PgConn> {
    let addr = SocketAddr::new(db.parse()?, 5432);
    weft_lab::pgwire::connect_in(
        Path::new(&format!("/run/netns/{ns}")),
        addr,
        Duration::from_secs(5),
    )
}

/// `median (min–max)` of `v`.
fn cell(v: &[f64], digits: usize) -> String {
    let mut s = v.to_vec();
    let m = median(&mut s);
    let (lo, hi) = (
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
    );
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

fn med(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

/// Creates network `name` and waits until its PostgreSQL answers from its client: the
/// cold baseline, in seconds.
fn create_env(
    c: &Controller,
    lab: &Lab,
    name: &str,
    tdl: &str,
    nodes: usize,
) -> Result<(Value, f64)> {
    let t0 = Instant::now();
    let net = post_network(c, tdl, &format!("{name}.tdl"), &["hv1"])?;
    let client = format!("{}-{name}-client", lab.node_netns_prefix("hv1"));
    let db = address(&net, "db")?;
    while postmaster_start(&client, &db).is_err() {
        ensure!(
            t0.elapsed() < Duration::from_secs(180),
            "{name}: PostgreSQL does not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed().as_secs_f64();
    wait_synced(c, name, nodes, t0, Duration::from_secs(180))?;
    Ok((net, took))
}

fn delete_net(c: &Controller, name: &str) -> Result<()> {
    call(
        c,
        "DELETE",
        &format!("/networks/{name}"),
        None,
        Duration::from_secs(120),
    )?;
    Ok(())
}

/// The longest request of `samples` started in `[from, to)` (since the load's start),
/// in ms, and how many failed there.
fn worst(samples: &[Sample], from: Duration, to: Duration) -> (f64, usize) {
    let w: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= from && s.started < to)
        .collect();
    let max = w
        .iter()
        .map(|s| s.took.as_secs_f64() * 1e3)
        .fold(0.0, f64::max);
    let failed = w
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .count();
    (max, failed)
}

/// `select 1` on new connections every 10 ms from `ns` until `stop`: (started, took).
fn pg_pinger(
    ns: String,
    db: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, Duration, bool)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let t0 = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed)
            && t0.elapsed() < Duration::from_secs(600)
        {
            let s = Instant::now();
            // A new connection each time (as a client without a pool), in-process.
            let ok = pg_connect(&ns, &db)
                .and_then(|mut c| c.query("select 1"))
                .is_ok();
            out.push((s, s.elapsed(), ok));
            std::thread::sleep(Duration::from_millis(10));
        }
        out
    })
}

struct Branch {
    first_answer_s: Vec<f64>,
    /// When `POST /weaves` answered, then `POST .../routes` (since the call).
    created_s: Vec<f64>,
    routed_s: Vec<f64>,
    ready_s: Vec<f64>,
    cold_s: Vec<f64>,
    prod_max_during_ms: Vec<f64>,
    prod_max_before_ms: Vec<f64>,
    pg_max_during_ms: Vec<f64>,
    pg_max_before_ms: Vec<f64>,
    prod_failed: usize,
}

/// Rounds of: a cold environment (baseline), a weave of it from now with 5432 routed to
/// it, timed to the first answer from the weave; production's worst request around it.
fn branch_rounds(c: &Controller, lab: &Lab, size: usize, rounds: usize) -> Result<Branch> {
    let extra = size.saturating_sub(4);
    let mut b = Branch {
        first_answer_s: Vec::new(),
        created_s: Vec::new(),
        routed_s: Vec::new(),
        ready_s: Vec::new(),
        cold_s: Vec::new(),
        prod_max_during_ms: Vec::new(),
        prod_max_before_ms: Vec::new(),
        pg_max_during_ms: Vec::new(),
        pg_max_before_ms: Vec::new(),
        prod_failed: 0,
    };
    for round in 0..rounds {
        let name = format!("wb{size}r{round}");
        sh::step(&format!(
            "weaves: {size}-node environment, round {}",
            round + 1
        ));
        let (net, cold) = create_env(c, lab, &name, &env_tdl(&name, extra), 4 + extra)?;
        b.cold_s.push(cold);
        let client = format!("{}-{name}-client", lab.node_netns_prefix("hv1"));
        let (db, web) = (address(&net, "db")?, address(&net, "web")?);
        in_ns(
            &client,
            &[
                "pgbench", "-h", &db, "-U", "postgres", "-i", "-s", "5", "-q", "postgres",
            ],
        )?;
        let web_ip: IpAddr = web.parse()?;
        let plan = Plan {
            netns: PathBuf::from(format!("/run/netns/{client}")),
            target: SocketAddr::new(web_ip, 80),
            path: "/".into(),
            rate: 500,
            threads: 4,
            duration: Duration::from_secs(300),
            max_requests: 150_000,
            timeout: Duration::from_secs(5),
        };
        let running = load::start(&plan)?;
        let t0 = running.t0;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pinger = pg_pinger(client.clone(), db.clone(), stop.clone());
        // A quiet window as long as the creation will be, then the weave.
        std::thread::sleep(Duration::from_secs(3));
        let before_from = running.t0.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        let weave = format!("{name}-w");
        let call_at = Instant::now();
        let called_ns = now_unix_ns();
        let from = running.t0.elapsed();
        call_json(
            c,
            "POST",
            "/weaves",
            Some(&json!({"environment": name, "id": weave})),
            Duration::from_secs(300),
        )?;
        b.created_s.push(call_at.elapsed().as_secs_f64());
        call_json(
            c,
            "POST",
            &format!("/weaves/{weave}/routes"),
            Some(&json!({"port": 5432})),
            Duration::from_secs(60),
        )?;
        b.routed_s.push(call_at.elapsed().as_secs_f64());
        loop {
            if postmaster_start(&client, &db).is_ok_and(|t| t > called_ns) {
                break;
            }
            ensure!(
                call_at.elapsed() < Duration::from_secs(120),
                "{weave}: no answer from the weave on 5432"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let first = call_at.elapsed();
        b.first_answer_s.push(first.as_secs_f64());
        let to = running.t0.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = running.finish()?;
        let pings = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("pinger panicked"))?;
        let (during, failed) = worst(&samples, from, to);
        let (before, failed_before) = worst(&samples, before_from, from);
        b.prod_max_during_ms.push(during);
        b.prod_max_before_ms.push(before);
        b.prod_failed += failed + failed_before;
        let pg = |lo: Instant, hi: Instant| {
            pings
                .iter()
                .filter(|(s, _, _)| *s >= lo && *s < hi)
                .map(|(_, d, _)| d.as_secs_f64() * 1e3)
                .fold(0.0, f64::max)
        };
        b.pg_max_during_ms.push(pg(call_at, call_at + first));
        b.pg_max_before_ms.push(pg(t0 + before_from, t0 + from));
        let w = call_json(
            c,
            "GET",
            &format!("/weaves/{weave}"),
            None,
            Duration::from_secs(30),
        )?;
        b.ready_s
            .push(w["ready_seconds"].as_f64().unwrap_or(f64::NAN));
        call(
            c,
            "DELETE",
            &format!("/weaves/{weave}"),
            None,
            Duration::from_secs(120),
        )?;
        delete_net(c, &name)?;
    }
    Ok(b)
}

struct Activation {
    requests: usize,
    failed: usize,
    p99_switching_ms: f64,
    p99_quiet_ms: f64,
    switch_s: f64,
}

/// One configuration of the routing measurement, keep-alive and new connections.
struct RoutingCase {
    label: &'static str,
    keep_alive: Vec<Load>,
    new_conn: Vec<Load>,
}

/// Routing by request beside no routing and routing by the kernel (see the module doc),
/// on the activation environment's weave (`wbactw`) before its activations.
fn routing(c: &Controller, client: &str, web: IpAddr, rounds: usize) -> Result<Vec<RoutingCase>> {
    sh::step("weaves: routing by request under 2,000 req/s (oha)");
    let oha = bench_shadows::oha()?;
    let url = format!("http://{web}/");
    let header = ["-H", "X-Weft-Weave: wbactw"];
    // Each case measures routing in place: it starts SETTLE after its route change (the
    // page check below then shows the route is in place).
    const SETTLE: Duration = Duration::from_millis(500);
    let route = |body: Value| -> Result<()> {
        call_json(
            c,
            "POST",
            "/weaves/wbactw/routes",
            Some(&body),
            Duration::from_secs(60),
        )?;
        std::thread::sleep(SETTLE);
        Ok(())
    };
    let unroute = |q: &str| -> Result<()> {
        call(
            c,
            "DELETE",
            &format!("/weaves/wbactw/routes/80{q}"),
            None,
            Duration::from_secs(60),
        )?;
        std::thread::sleep(SETTLE);
        Ok(())
    };
    let mut cases: Vec<RoutingCase> = [
        "no route (baseline)",
        "80 routed whole (kernel)",
        "80 by header, request without it (router -> production)",
        "80 by header, request with it (router -> weave)",
    ]
    .into_iter()
    .map(|label| RoutingCase {
        label,
        keep_alive: Vec::new(),
        new_conn: Vec::new(),
    })
    .collect();
    for round in 0..rounds {
        for (i, case) in cases.iter_mut().enumerate() {
            match i {
                1 => route(json!({"port": 80, "node": "web"}))?,
                2 => route(
                    json!({"port": 80, "node": "web", "header": "x-weft-weave", "header_value": "wbactw"}),
                )?,
                _ => {}
            }
            let extra: &[&str] = if i == 3 { &header } else { &[] };
            // Each case goes where it says (the weave's page is "weave").
            let mut curl = vec!["curl", "-sS", "--max-time", "3"];
            curl.extend_from_slice(extra);
            curl.push(&url);
            let page = in_ns(client, &curl)?;
            let to_weave = i == 1 || i == 3;
            ensure!(
                (page.trim() == "weave") == to_weave,
                "{}: the page is {page:?}",
                case.label
            );
            case.keep_alive
                .push(bench_shadows::load(client, &oha, &url, extra)?);
            let mut fresh = extra.to_vec();
            fresh.push("--disable-keepalive");
            let l = bench_shadows::load(client, &oha, &url, &fresh)?;
            eprintln!(
                "round {round} {}: new connections p99 {:.2} ms, errors {}",
                case.label, l.p99_ms, l.errors
            );
            case.new_conn.push(l);
            match i {
                1 => unroute("?node=web")?,
                3 => unroute("?node=web&header=x-weft-weave&header_value=wbactw")?,
                _ => {}
            }
        }
    }
    Ok(cases)
}

/// `WEFT_BENCH_WEAVES_ONLY=routing`: the routing cases alone.
fn routing_only() -> bool {
    std::env::var("WEFT_BENCH_WEAVES_ONLY").as_deref() == Ok("routing")
}

/// `WEFT_BENCH_WEAVES_ONLY=branch`: the weave-to-first-answer rounds alone, printed.
fn branch_only() -> bool {
    std::env::var("WEFT_BENCH_WEAVES_ONLY").as_deref() == Ok("branch")
}

/// The routing cases, then (unless [`routing_only`]) the activations.
fn activation(
    c: &Controller,
    lab: &Lab,
    rounds: usize,
) -> Result<(Option<Activation>, Vec<RoutingCase>)> {
    let name = "wbact";
    let tdl = env_tdl(name, 0);
    let (net, _) = create_env(c, lab, name, &tdl, 4)?;
    let client = format!("{}-{name}-client", lab.node_netns_prefix("hv1"));
    let web: IpAddr = address(&net, "web")?.parse()?;
    call_json(
        c,
        "POST",
        "/weaves",
        Some(&json!({"environment": name, "id": "wbactw"})),
        Duration::from_secs(300),
    )?;
    // Told apart by their pages.
    std::fs::write(
        lab.dir()
            .join("nodes-hv1/wbactw/web/volumes/data/www/index.html"),
        "weave\n",
    )
    .context("the weave's page")?;
    let routing = routing(c, &client, web, rounds)?;
    let remove = || -> Result<()> {
        call(
            c,
            "DELETE",
            "/weaves/wbactw",
            None,
            Duration::from_secs(120),
        )?;
        delete_net(c, name)
    };
    if routing_only() {
        remove()?;
        return Ok((None, routing));
    }
    sh::step("weaves: 100 activations under 2,000 req/s");
    let plan = Plan {
        netns: PathBuf::from(format!("/run/netns/{client}")),
        target: SocketAddr::new(web, 80),
        path: "/".into(),
        rate: 2000,
        threads: 8,
        duration: Duration::from_secs(300),
        max_requests: 600_000,
        timeout: Duration::from_secs(5),
    };
    let running = load::start(&plan)?;
    std::thread::sleep(Duration::from_secs(10));
    let quiet = (Duration::from_secs(1), running.t0.elapsed());
    let s0 = Instant::now();
    let from = running.t0.elapsed();
    for _ in 0..100 {
        for method in ["POST", "DELETE"] {
            call_json(
                c,
                method,
                "/weaves/wbactw/activate",
                None,
                Duration::from_secs(30),
            )?;
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let switch_s = s0.elapsed().as_secs_f64() / 200.0;
    let to = running.t0.elapsed();
    let samples = running.finish()?;
    let window = |a: Duration, b: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.started >= a && s.started < b)
            .collect()
    };
    let result = Activation {
        requests: samples.len(),
        failed: samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            .count(),
        p99_switching_ms: load::quantile(&window(from, to), 0.99).as_secs_f64() * 1e3,
        p99_quiet_ms: load::quantile(&window(quiet.0, quiet.1), 0.99).as_secs_f64() * 1e3,
        switch_s,
    };
    remove()?;
    Ok((Some(result), routing))
}

struct Sync {
    weave_s: Vec<f64>,
    rsync_s: Vec<f64>,
    cp_s: Vec<f64>,
    method: String,
}

fn run_timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    weft_lab::cmd::run(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

fn sync_rounds(c: &Controller, lab: &Lab, rounds: usize) -> Result<Sync> {
    sh::step("weaves: sync_volumes of a 10 MiB delta in a 1 GiB volume");
    let _ = create_env_plain(c, "wbsync", SYNC_TDL, 1)?;
    // The node's volume is a link to its subvolume in the agent's pool: the baselines copy
    // what it points at.
    let vol = std::fs::canonicalize(lab.dir().join("nodes-hv1/wbsync/store/volumes/data"))
        .context("the store node's volume")?;
    let big = vol.join("big.bin");
    weft_lab::cmd::run(Command::new("dd").args([
        "if=/dev/urandom",
        &format!("of={}", big.display()),
        "bs=1M",
        "count=1024",
        "status=none",
    ]))?;
    weft_lab::cmd::run(&mut Command::new("sync"))?;
    call_json(
        c,
        "POST",
        "/weaves",
        Some(&json!({"environment": "wbsync", "id": "wbsyncw"})),
        Duration::from_secs(300),
    )?;
    // Baselines: a full copy, and an rsync'ed copy kept up to date.
    let copy = lab.dir().join("wbsync-rsync");
    weft_lab::cmd::run(Command::new("cp").arg("-a").arg(&vol).arg(&copy))?;
    let mut s = Sync {
        weave_s: Vec::new(),
        rsync_s: Vec::new(),
        cp_s: Vec::new(),
        method: String::new(),
    };
    for round in 0..rounds {
        // 10 MiB written somewhere in the 1 GiB file.
        let seek = (round * 97 + 13) % 1000;
        weft_lab::cmd::run(Command::new("dd").args([
            "if=/dev/urandom",
            &format!("of={}", big.display()),
            "bs=1M",
            "count=10",
            &format!("seek={seek}"),
            "conv=notrunc",
            "status=none",
        ]))?;
        weft_lab::cmd::run(&mut Command::new("sync"))?;
        let t = Instant::now();
        let r = call_json(
            c,
            "POST",
            "/weaves/wbsyncw/sync",
            Some(&json!({"source": "wbsync", "volume": "data"})),
            Duration::from_secs(120),
        )?;
        s.weave_s.push(t.elapsed().as_secs_f64());
        s.method = r["nodes"][0]["method"].as_str().unwrap_or("?").to_owned();
        let weave_big = lab
            .dir()
            .join("nodes-hv1/wbsyncw/store/volumes/data/big.bin");
        ensure!(
            files_equal(&big, &weave_big)?,
            "the weave's volume differs from the source after sync"
        );
        s.rsync_s.push(run_timed(
            Command::new("rsync")
                .args(["-a", "--delete", "--inplace", "--no-whole-file"])
                .arg(format!("{}/", vol.display()))
                .arg(format!("{}/", copy.display())),
        )?);
        let full = lab.dir().join("wbsync-cp");
        let _ = std::fs::remove_dir_all(&full);
        s.cp_s.push(run_timed(
            Command::new("cp").arg("-a").arg(&vol).arg(&full),
        )?);
        let _ = std::fs::remove_dir_all(&full);
    }
    let _ = std::fs::remove_dir_all(&copy);
    call(
        c,
        "DELETE",
        "/weaves/wbsyncw",
        None,
        Duration::from_secs(120),
    )?;
    delete_net(c, "wbsync")?;
    Ok(s)
}

/// Whether two files have the same bytes (compared by `cmp`).
fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let st = Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .context("cmp")?;
    Ok(st.success())
}

fn create_env_plain(c: &Controller, name: &str, tdl: &str, nodes: usize) -> Result<Value> {
    let t0 = Instant::now();
    let net = post_network(c, tdl, &format!("{name}.tdl"), &["hv1"])?;
    wait_synced(c, name, nodes, t0, Duration::from_secs(120))?;
    Ok(net)
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    release_binaries("weaves", &["weft-controller", "weft-agent"])?;
    let rounds = bench_rounds();
    // SAFETY: set before any thread of this process starts (the lab and the children read them).
    unsafe {
        std::env::set_var("WEFT_LAB_PROFILE", "release");
    }
    let load_before = loadavg();
    let lab = Lab::builder().hypervisor("hv1").build()?;
    let x = lab.x();
    let ip = lab.hypervisors()[0].uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let shard_pool = format!("198.19.{x}.0/24");
    let c = Controller::start_with(&lab, &grpc, &http, &["--shard-pool", &shard_pool])?;
    let agent = Agent::start(&lab, 0, &c.grpc_url())?;
    call_json(
        &c,
        "POST",
        "/shards",
        Some(&json!({"prefix_len": 26, "network_id": POOL})),
        Duration::from_secs(10),
    )?;
    let logs = || {
        format!(
            "controller:\n{}\nagent:\n{}",
            c.child.tail(40),
            agent.child.tail(60)
        )
    };
    if routing_only() {
        activation(&c, &lab, rounds).with_context(logs)?;
        return Ok(());
    }
    let three = branch_rounds(&c, &lab, 3 + 1, rounds).with_context(logs)?;
    let ten = branch_rounds(&c, &lab, 10, rounds).with_context(logs)?;
    if branch_only() {
        for (label, b) in [("3 services", &three), ("10 nodes", &ten)] {
            println!(
                "{label}: first answer {:?} s; POST /weaves answered {:?}; routes answered {:?}; ready {:?}",
                b.first_answer_s, b.created_s, b.routed_s, b.ready_s
            );
        }
        return Ok(());
    }
    let (act, routing) = activation(&c, &lab, rounds).with_context(logs)?;
    let act = act.context("activations were not measured")?;
    let sync = sync_rounds(&c, &lab, rounds).with_context(logs)?;
    let load_after = loadavg();
    let total = started.elapsed().as_secs_f64();

    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(
        md,
        "## Weaves (issue 14)\n\n`cargo xtask bench weaves`, {rounds} rounds; load average {load_before} before, {load_after} after; {total:.0} s in all. Cells: median (min–max) over rounds.\n"
    );
    let _ = writeln!(
        md,
        "| | weave: call to first answer on the routed port (s) | of which: `POST /weaves` answered | `POST .../routes` answered | weave: all nodes ready (s) | cold: same environment made anew (s) | weave / cold |\n|---|---|---|---|---|---|---|"
    );
    for (label, b) in [("3 services (+ client)", &three), ("10 nodes", &ten)] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} | ×{:.2} |",
            cell(&b.first_answer_s, 3),
            cell(&b.created_s, 3),
            cell(&b.routed_s, 3),
            cell(&b.ready_s, 3),
            cell(&b.cold_s, 3),
            med(&b.first_answer_s) / med(&b.cold_s)
        );
    }
    let _ = writeln!(
        md,
        "\nProduction while a weave is made (nginx: new connection per request at 500/s; PostgreSQL: `select 1` every 10 ms), longest request in ms, during the creation beside an as long quiet window before it:\n\n| | nginx during | nginx before | PostgreSQL during | PostgreSQL before | failed |\n|---|---|---|---|---|---|"
    );
    for (label, b) in [("3 services", &three), ("10 nodes", &ten)] {
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(&b.prod_max_during_ms, 1),
            cell(&b.prod_max_before_ms, 1),
            cell(&b.pg_max_during_ms, 1),
            cell(&b.pg_max_before_ms, 1),
            b.prod_failed
        );
    }
    let _ = writeln!(
        md,
        "\nActivation: 100 activations and 100 deactivations under 2,000 req/s (new connection per request): {} requests, **{} failed**; p99 {:.2} ms while switching beside {:.2} ms before (×{:.2}); one switch (REST call answered) {:.1} ms on average.\n",
        act.requests,
        act.failed,
        act.p99_switching_ms,
        act.p99_quiet_ms,
        act.p99_switching_ms / act.p99_quiet_ms,
        act.switch_s * 1e3
    );
    let _ = writeln!(
        md,
        "Routing by request (`oha` at 2,000 req/s for 10 s from the client node to nginx, 50 keep-alive connections, then a new connection per request; {rounds} rounds), ms, and p99 beside the baseline's:\n\n| | keep-alive p50 | p99 | p99.9 | p99 / baseline | errors | new connection p50 | p99 | p99 / baseline | errors |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let base_ka = bench_shadows::cell(&routing[0].keep_alive, |l| l.p99_ms).0;
    let base_nc = bench_shadows::cell(&routing[0].new_conn, |l| l.p99_ms).0;
    for r in &routing {
        let ka = |f: fn(&Load) -> f64| bench_shadows::cell(&r.keep_alive, f);
        let nc = |f: fn(&Load) -> f64| bench_shadows::cell(&r.new_conn, f);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | ×{:.2} | {} | {} | {} | ×{:.2} | {} |",
            r.label,
            ka(|l| l.p50_ms).1,
            ka(|l| l.p99_ms).1,
            ka(|l| l.p999_ms).1,
            ka(|l| l.p99_ms).0 / base_ka,
            r.keep_alive.iter().map(|l| l.errors).sum::<u64>(),
            nc(|l| l.p50_ms).1,
            nc(|l| l.p99_ms).1,
            nc(|l| l.p99_ms).0 / base_nc,
            r.new_conn.iter().map(|l| l.errors).sum::<u64>(),
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "`sync_volumes` of a 10 MiB change in a 1 GiB volume (weave's method: {}), s:\n\n| weave `POST /weaves/{{id}}/sync` | `rsync -a --delete --inplace --no-whole-file` into a copy | `cp -a` of the volume | weave / rsync |\n|---|---|---|---|\n| {} | {} | {} | ×{:.2} |",
        sync.method,
        cell(&sync.weave_s, 3),
        cell(&sync.rsync_s, 3),
        cell(&sync.cp_s, 3),
        med(&sync.weave_s) / med(&sync.rsync_s)
    );
    let _ = writeln!(md, "{END}");
    println!("{md}");
    if act.failed > 0 || three.prod_failed + ten.prod_failed > 0 {
        bail!("requests failed: see the table above");
    }
    splice_section(&md, BEGIN, END, "weaves")
}
