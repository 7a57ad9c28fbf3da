//! `cargo xtask bench shadows`: what shadow sampling costs production (issue 13), on
//! release binaries in the namespace lab, beside nginx's own `mirror` in the same run.
//!
//! Production network `shbench` on hv1: a `client` node (the load generator), `web` (Debian's
//! nginx, the production server), `db` (PostgreSQL, the app's database), and for the peer:
//! `px0` (nginx reverse proxy to `web`, no mirror), `px10` (the same with `mirror` of 10 % of
//! requests, `split_clients` on `$request_id`, as nginx users do it) and `mshd` (the nginx
//! mirror's shadow). The weft shadow of `web` is placed on hv2 (its own copy of the network,
//! with the production addresses), sampling 10 % of connections.
//!
//! Load: `oha -z 10s -q 2000 -c 50 --latency-correction -w` from the client node (fixed
//! rate, latency from the scheduled send time, so queueing behind a stalled connection
//! counts), as the shared shadow-mirror bench measured nginx's mirror. Configurations,
//! interleaved in every round:
//!
//! - `a`: oha -> web, no shadow;  `px0`: oha -> px0 (proxy, no mirror);  `px10`: oha -> px10;
//! - `w10`: oha -> web with the weft shadow sampling 10 %;
//! - `w10-stop`: the same with the shadow's server stopped (SIGSTOP);
//! - `w10-down`: the same with hv2's underlay link down (the sink unreachable).
//!
//! Ratios: weft = `w10` / `a`, nginx = `px10` / `px0`, from the medians over rounds. Then,
//! once: the sampled share over 20,000 new connections (keep-alive off) from the taps'
//! counters, and read-only mode over 100,000 mixed GET/POST requests (POSTs in the shadow's
//! access log must be 0).
//!
//! `WEFT_BENCH_ROUNDS` (default 3). The figures go into BENCHMARKS.md between the
//! `shadows` markers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::Lab;
use weft_lab::weft::{Agent, Controller, free_port};

use crate::bench_networks::{
    bench_rounds, call, call_json, loadavg, median, post_network, release_binaries, splice_section,
    status, synced,
};
use crate::sh;

const BEGIN: &str = "<!-- shadows:begin (written by `cargo xtask bench shadows`) -->";
const END: &str = "<!-- shadows:end -->";
const POOL: &str = "shbenchpool";
const PROD: &str = "shbench";
const SHADOW: &str = "shbenchsh";
const OHA_VERSION: &str = "1.16.0";
const RATE: u32 = 2000;
const SECONDS: u32 = 10;
const CONNECTIONS: u32 = 50;
/// 10 % in millionths.
const SHARE_PPM: u64 = 100_000;

/// The production network; `{px}` is the proxies' command (their config is written once the
/// addresses are known, and they wait for it).
fn tdl(px0: &str, px10: &str) -> String {
    format!(
        "\
network: {PROD}
addressing:
  shards: {POOL}
nodes:
  client:
    type: vm
  web:
    image: nginx:latest
    ports: [80]
  db:
    image: postgres:16
    ports: [5432]
  mshd:
    image: nginx:latest
    ports: [80]
  px0:
    command: {px0}
    ports: [8080]
  px10:
    command: {px10}
    ports: [8080]
connections:
  client -> web:
    port: 80
  client -> px0:
    port: 8080
  client -> px10:
    port: 8080
  px0 -> web:
    port: 80
  px10 -> web:
    port: 80
  px10 -> mshd:
    port: 80
  web -> db:
    port: 5432
"
    )
}

/// A proxy node's command: waits (bounded) for its config, then runs nginx on it.
fn proxy_command(conf: &Path) -> String {
    let c = conf.display();
    format!(
        "sh -c 'for i in $(seq 600); do [ -f {c} ] && break; sleep 0.1; done; exec nginx -e stderr -c {c}'"
    )
}

/// nginx as a reverse proxy to `web` with keep-alive upstreams; with `mirror`, 10 % of
/// requests also go to `shadow` (the way the shared shadow-mirror bench set it up).
fn proxy_conf(dir: &Path, web: &str, shadow: &str, mirror: bool) -> String {
    let d = dir.display();
    let mirror_line = if mirror { "mirror /__mirror;" } else { "" };
    format!(
        "user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  split_clients \"${{request_id}}\" $sample {{ 10% 1; * 0; }}
  upstream prod {{ server {web}:80; keepalive 64; }}
  upstream shadow {{ server {shadow}:80; keepalive 64; }}
  server {{
    listen 8080;
    location / {{
      {mirror_line}
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_pass http://prod;
    }}
    location = /__mirror {{
      internal;
      if ($sample = 0) {{ return 204; }}
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_pass http://shadow$request_uri;
    }}
  }}
}}
"
    )
}

/// oha from PATH or `target/tools/bin`, installed there from crates.io when missing.
pub(crate) fn oha() -> Result<PathBuf> {
    let tools = sh::root().join("target/tools");
    let local = tools.join("bin/oha");
    if local.is_file() {
        return Ok(local);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v oha"]).output()
        && out.status.success()
    {
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    sh::step(&format!(
        "installing oha {OHA_VERSION} from crates.io (the load generator)"
    ));
    sh::run_inherit(sh::cargo().args([
        "install",
        "--locked",
        "oha",
        "--version",
        OHA_VERSION,
        "--root",
        &tools.display().to_string(),
    ]))?;
    ensure!(
        local.is_file(),
        "oha not found at {} after install",
        local.display()
    );
    Ok(local)
}

/// One oha run's figures.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Load {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) ok_per_second: f64,
    pub(crate) errors: u64,
}

/// Runs oha in namespace `ns` against `url` at the fixed rate; `extra` flags appended.
///
/// The namespace is set to reuse its TIME_WAIT ports (`tcp_tw_reuse=1`), as a load
/// generator's host is. Without it, a run of new connections (about half of them closed by
/// the client first, each then in TIME_WAIT for 60 s) leaves some 10,000 such ports to the
/// next run, whose `connect()` then walks them: in the weaves benchmark that was most of a
/// CPU in `__inet_hash_connect`, oha fell behind its schedule and its latency-corrected
/// p99 of the second and third run in a row reached 0.5-7 s (not SYN retransmits: packet
/// captures showed none).
pub(crate) fn load(ns: &str, oha: &Path, url: &str, extra: &[&str]) -> Result<Load> {
    weft_lab::cmd::run(&mut weft_lab::netns::command_in(
        ns,
        &["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"],
    ))
    .with_context(|| format!("tcp_tw_reuse in {ns}"))?;
    let oha = oha.display().to_string();
    let (secs, rate, conns) = (
        format!("{SECONDS}s"),
        RATE.to_string(),
        CONNECTIONS.to_string(),
    );
    let mut c = weft_lab::netns::command_in(
        ns,
        &[
            "timeout",
            "60",
            &oha,
            "-z",
            &secs,
            "-q",
            &rate,
            "-c",
            &conns,
            "--latency-correction",
            "-w",
            "--no-tui",
            "--output-format",
            "json",
        ],
    );
    c.args(extra).arg(url);
    let out = weft_lab::cmd::run(&mut c).with_context(|| format!("oha -> {url}"))?;
    parse_oha(&out).with_context(|| format!("oha's output: {}", clip(&out)))
}

fn clip(s: &str) -> String {
    s.chars().take(400).collect()
}

/// oha's `--output-format json`: latencies in seconds.
fn parse_oha(text: &str) -> Result<Load> {
    let v: Value = serde_json::from_str(text.trim()).context("not JSON")?;
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().map(|s| s * 1e3);
    let codes = v["statusCodeDistribution"]
        .as_object()
        .context("no statusCodeDistribution")?;
    let ok: u64 = codes
        .iter()
        .filter(|(code, _)| code.starts_with('2'))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let not_ok: u64 = codes
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().map(|n| n.as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    let total_s = v["summary"]["total"].as_f64().context("no summary.total")?;
    Ok(Load {
        p50_ms: pct("p50").context("no p50")?,
        p99_ms: pct("p99").context("no p99")?,
        p999_ms: pct("p99.9").context("no p99.9")?,
        ok_per_second: ok as f64 / total_s.max(1e-9),
        errors: errors + not_ok,
    })
}

/// Median (min–max) of `f` over `runs`.
pub(crate) fn cell(runs: &[Load], f: impl Fn(&Load) -> f64) -> (f64, String) {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    let m = median(&mut v);
    let (lo, hi) = (
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
    );
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    (m, format!("{} ({}–{})", fmt(m), fmt(lo), fmt(hi)))
}

fn address(net: &Value, node: &str) -> Result<String> {
    let a = net["placement"][node]["addresses"][0]
        .as_str()
        .with_context(|| format!("no address for {node}"))?;
    Ok(a.split('/').next().unwrap_or(a).to_owned())
}

fn shadow_info(c: &Controller) -> Result<Value> {
    call_json(
        c,
        "GET",
        &format!("/shadows/{SHADOW}"),
        None,
        Duration::from_secs(10),
    )
}

fn counter(s: &Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap_or(0)
}

/// Creates the weft shadow of `web` on hv2 and waits until it samples.
fn create_shadow(c: &Controller, policy: &Value) -> Result<Duration> {
    let t0 = Instant::now();
    call_json(
        c,
        "POST",
        "/shadows",
        Some(&json!({
            "id": SHADOW, "production": PROD, "nodes": ["web"], "hosts": ["hv2"],
            "policy": policy,
        })),
        Duration::from_secs(60),
    )?;
    loop {
        let s = shadow_info(c)?;
        if s["state"] == json!("sampling") {
            return Ok(t0.elapsed());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "shadow not sampling after 120 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn delete_shadow(c: &Controller) -> Result<()> {
    call_json(
        c,
        "DELETE",
        &format!("/shadows/{SHADOW}"),
        None,
        Duration::from_secs(60),
    )?;
    let t0 = Instant::now();
    loop {
        let (code, _) = call(
            c,
            "GET",
            &format!("/networks/{SHADOW}"),
            None,
            Duration::from_secs(10),
        )?;
        if code == 404 {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "shadow network still there"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Processes in network namespace `ns`.
fn pids_in(ns: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn signal(pids: &[String], sig: &str) {
    for p in pids {
        let _ = Command::new("kill").args([sig, p]).status();
    }
}

/// Lines of the shadow web node's nginx access log that start a `method` request.
fn shadow_requests(lab: &Lab, method: &str) -> usize {
    let log = lab
        .dir()
        .join("nodes-hv2")
        .join(SHADOW)
        .join("web")
        .join("log")
        .join("nginx-access.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("\"{method} ")))
        .count()
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    release_binaries("shadows", &["weft-controller", "weft-agent", "weft-cli"])?;
    let oha = oha()?;
    let rounds = bench_rounds();
    // SAFETY: set before any thread of this process starts (the lab and the children read them).
    unsafe {
        std::env::set_var("WEFT_LAB_PROFILE", "release");
    }
    let load_before = loadavg();
    let lab = Lab::builder().hypervisor("hv1").hypervisor("hv2").build()?;
    let x = lab.x();
    let ip = lab.hypervisors()[0].uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let shard_pool = format!("198.19.{x}.128/25");
    let c = Controller::start_with(&lab, &grpc, &http, &["--shard-pool", &shard_pool])?;
    let agents = [
        Agent::start(&lab, 0, &c.grpc_url())?,
        Agent::start(&lab, 1, &c.grpc_url())?,
    ];
    // Times the production host's taps paused (their sinks took nothing).
    let pauses = || -> Result<f64> {
        Ok(weft_lab::weft::sum_metric(
            &agents[0].metrics(&lab)?,
            "weft_agent_shadow_tap_pauses_total",
        ))
    };
    call_json(
        &c,
        "POST",
        "/shards",
        Some(&json!({"prefix_len": 27, "network_id": POOL})),
        Duration::from_secs(10),
    )?;
    let (conf0, conf10) = (lab.dir().join("px0.conf"), lab.dir().join("px10.conf"));
    let text = tdl(&proxy_command(&conf0), &proxy_command(&conf10));
    let net = post_network(&c, &text, "shbench.tdl", &["hv1"])?;
    let (web, mshd) = (address(&net, "web")?, address(&net, "mshd")?);
    for (path, name, mirror) in [(&conf0, "px0", false), (&conf10, "px10", true)] {
        let dir = lab.dir().join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(path, proxy_conf(&dir, &web, &mshd, mirror))?;
    }
    let t0 = Instant::now();
    while !synced(&status(&c, PROD)?, 6) {
        ensure!(
            t0.elapsed() < Duration::from_secs(120),
            "production not in sync after 120 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let client = format!("{}-{PROD}-client", lab.node_netns_prefix("hv1"));
    let (px0, px10) = (address(&net, "px0")?, address(&net, "px10")?);
    let url = |host: &str, port: u16| format!("http://{host}:{port}/");
    // Warm-up: every server answers (the proxies once their config is read).
    let t0 = Instant::now();
    for u in [url(&web, 80), url(&px0, 8080), url(&px10, 8080)] {
        loop {
            let mut curl = weft_lab::netns::command_in(
                &client,
                &["curl", "-sf", "-o", "/dev/null", "--max-time", "2", &u],
            );
            if weft_lab::cmd::run(&mut curl).is_ok() {
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(90),
                "{u} does not answer"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let policy = json!({"share_ppm": SHARE_PPM, "key": "connection", "ports": [80]});
    let shadow_web = format!("{}-{SHADOW}-web", lab.node_netns_prefix("hv2"));
    let hv2_ns = lab.hypervisors()[1].netns.name().to_owned();
    let underlay_if = "ul0";

    // Sampling by a header: every eligible connection is copied and streamed, and the sink
    // frames every request. oha sends one X-User on every request, a user out of the
    // share: production pays the copies, the shadow gets nothing.
    let header_policy =
        json!({"share_ppm": SHARE_PPM, "key": "header", "header": "X-User", "ports": [80]});
    let user_out = (0..)
        .map(|i| format!("u{i}"))
        .find(|u| {
            !agent_common::hash::key_in_share(
                0,
                agent_common::hash::threshold_of(SHARE_PPM as u32),
                u.as_bytes(),
            )
        })
        .unwrap_or_default();
    let user_header = format!("X-User: {user_out}");
    let names = ["a", "px0", "px10", "w10", "w10-stop", "w10-down", "h10"];
    let mut runs: Vec<Vec<Load>> = vec![Vec::new(); names.len()];
    let mut create_times = Vec::new();
    // Rounds whose link-down run paused the tap.
    let mut paused_down = 0;
    for round in 0..rounds {
        sh::step(&format!("shadows: round {} of {rounds}", round + 1));
        runs[0].push(load(&client, &oha, &url(&web, 80), &[])?);
        runs[1].push(load(&client, &oha, &url(&px0, 8080), &[])?);
        runs[2].push(load(&client, &oha, &url(&px10, 8080), &[])?);
        create_times.push(create_shadow(&c, &policy)?);
        runs[3].push(load(&client, &oha, &url(&web, 80), &[])?);
        let pids = pids_in(&shadow_web);
        ensure!(!pids.is_empty(), "no process in {shadow_web}");
        signal(&pids, "-STOP");
        let stopped = load(&client, &oha, &url(&web, 80), &[]);
        signal(&pids, "-CONT");
        runs[4].push(stopped?);
        let down = |state: &str| {
            weft_lab::cmd::run(Command::new("ip").args([
                "-n",
                &hv2_ns,
                "link",
                "set",
                underlay_if,
                state,
            ]))
        };
        let pauses_before = pauses()?;
        down("down")?;
        let result = load(&client, &oha, &url(&web, 80), &[]);
        down("up")?;
        // Whether the taps' breaker took copying off while the shadow was unreachable.
        if pauses()? > pauses_before {
            paused_down += 1;
        }
        runs[5].push(result?);
        call_json(
            &c,
            "PUT",
            &format!("/shadows/{SHADOW}/policy"),
            Some(&header_policy),
            Duration::from_secs(10),
        )?;
        std::thread::sleep(Duration::from_secs(2));
        runs[6].push(load(&client, &oha, &url(&web, 80), &["-H", &user_header])?);
        delete_shadow(&c)?;
    }

    // The sampled share over new connections, from the taps' counters.
    sh::step("shadows: sampled share over 20,000 new connections");
    create_shadow(&c, &policy)?;
    std::thread::sleep(Duration::from_secs(3));
    let before = shadow_info(&c)?;
    load(&client, &oha, &url(&web, 80), &["--disable-keepalive"])?;
    // The counters come with the agents' next reports.
    std::thread::sleep(Duration::from_secs(5));
    let after = shadow_info(&c)?;
    let eligible =
        counter(&after, "connections_eligible") - counter(&before, "connections_eligible");
    let sampled = counter(&after, "connections_sampled") - counter(&before, "connections_sampled");
    let share = sampled as f64 / eligible.max(1) as f64;

    // Read-only: 100,000 mixed requests, half of them POSTs; none may reach the shadow.
    sh::step("shadows: read-only over 100,000 mixed requests");
    call_json(
        &c,
        "PUT",
        &format!("/shadows/{SHADOW}/policy"),
        Some(
            &json!({"share_ppm": SHARE_PPM, "key": "connection", "ports": [80], "read_only": true}),
        ),
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let (gets_before, posts_before) = (shadow_requests(&lab, "GET"), shadow_requests(&lab, "POST"));
    let skipped_before = counter(&shadow_info(&c)?, "requests_skipped_write");
    let oha_s = oha.display().to_string();
    let mixed = |method: &str| {
        let mut cmd = weft_lab::netns::command_in(
            &client,
            &[
                "timeout",
                "90",
                &oha_s,
                "-n",
                "50000",
                "-q",
                "2500",
                "-c",
                "25",
                "--no-tui",
                "--output-format",
                "json",
                "-m",
                method,
            ],
        );
        cmd.arg(url(&web, 80));
        cmd.spawn().context("oha")
    };
    let (mut g, mut p) = (mixed("GET")?, mixed("POST")?);
    let (gs, ps) = (g.wait()?, p.wait()?);
    ensure!(gs.success() && ps.success(), "mixed load: oha failed");
    std::thread::sleep(Duration::from_secs(5));
    let gets = shadow_requests(&lab, "GET") - gets_before;
    let posts = shadow_requests(&lab, "POST") - posts_before;
    let skipped = counter(&shadow_info(&c)?, "requests_skipped_write") - skipped_before;
    delete_shadow(&c)?;
    let load_after = loadavg();

    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(md, "## Shadow sampling: production's cost (issue 13)\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench shadows`, {rounds} rounds, each configuration {SECONDS} s of `oha -q {RATE} -c {CONNECTIONS} --latency-correction -w` from a node of the production network; load average {load_before} before, {load_after} after; {:.0} s in all. Cells: median (min–max) over rounds; latency in ms.\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| config | what | p50 ms | p99 ms | p99.9 ms | ok req/s | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let what = [
        "oha -> nginx, no shadow",
        "oha -> nginx reverse proxy (no mirror)",
        "oha -> nginx proxy with `mirror` of 10 % of requests",
        "oha -> nginx, weft shadow sampling 10 % of connections (on hv2)",
        "w10 with the shadow's nginx stopped (SIGSTOP)",
        "w10 with hv2's underlay link down",
        "oha -> nginx, weft shadow sampling 10 % by header `X-User` (every connection copied; oha's one user is out of the share)",
    ];
    let mut medians = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (p50, p50s) = cell(&runs[i], |l| l.p50_ms);
        let (p99, p99s) = cell(&runs[i], |l| l.p99_ms);
        let (_, p999s) = cell(&runs[i], |l| l.p999_ms);
        let (rps, rpss) = cell(&runs[i], |l| l.ok_per_second);
        let (_, errs) = cell(&runs[i], |l| l.errors as f64);
        medians.push((p50, p99, rps));
        let _ = writeln!(
            md,
            "| {name} | {} | {p50s} | {p99s} | {p999s} | {rpss} | {errs} |",
            what[i]
        );
    }
    let ratio = |a: usize, b: usize| (medians[a].1 / medians[b].1, medians[a].2 / medians[b].2);
    let (weft_p99, weft_rps) = ratio(3, 0);
    let (nginx_p99, nginx_rps) = ratio(2, 1);
    let (stop_p99, _) = ratio(4, 0);
    let (down_p99, _) = ratio(5, 0);
    let (header_p99, header_rps) = ratio(6, 0);
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "- **Production's p99 with 10 % sampling**: weft ×{weft_p99:.3} (w10/a; target ≤ ×1.03), nginx `mirror` ×{nginx_p99:.3} (px10/px0), same run. Throughput: weft ×{weft_rps:.3} (target ≥ ×0.98), nginx ×{nginx_rps:.3}."
    );
    let _ = writeln!(
        md,
        "- **Sampling by header** (h10/a): p99 ×{header_p99:.3}, throughput ×{header_rps:.3}: the taps copy every connection to port 80 and the sink frames every request, because a header is not known at the SYN."
    );
    let _ = writeln!(
        md,
        "- **Shadow stopped / unreachable**: production p99 ×{stop_p99:.3} with the shadow's nginx SIGSTOPped, ×{down_p99:.3} with hv2's underlay down (errors in the table); the production host's tap paused (its sinks took nothing: `weft_agent_shadow_tap_pauses_total`) during {paused_down} of {rounds} link-down runs."
    );
    let _ = writeln!(
        md,
        "- **Sampled share**: {sampled} of {eligible} new connections = {:.2} % (policy 10 %, target ±0.5 points), keep-alive off, from the taps' counters.",
        share * 100.0
    );
    let _ = writeln!(
        md,
        "- **Read-only**: 100,000 mixed requests (50,000 GET + 50,000 POST at 2,500/s each): the shadow's nginx logged {gets} GETs and **{posts} POSTs** (target 0); the sink counted {skipped} writes skipped."
    );
    let mut t: Vec<f64> = create_times.iter().map(Duration::as_secs_f64).collect();
    let _ = writeln!(
        md,
        "- Creating the shadow (`POST /shadows` until `sampling`: its copy of the 6-node network on hv2, PostgreSQL included): median {:.1} s.",
        median(&mut t)
    );
    let _ = writeln!(md, "{END}");
    print!("{md}");
    if posts > 0 {
        bail!("read-only: {posts} POSTs reached the shadow");
    }
    splice_section(&md, BEGIN, END, "shadows")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oha_json_is_read_in_milliseconds_with_non_2xx_as_errors() {
        let text = r#"{"summary":{"successRate":1.0,"total":10.0,"requestsPerSec":2000.0},
            "latencyPercentiles":{"p50":0.0002,"p99":0.0007,"p99.9":0.004},
            "statusCodeDistribution":{"200":19990,"502":10},
            "errorDistribution":{"connection closed":3}}"#;
        let l = parse_oha(text).unwrap();
        assert!((l.p50_ms - 0.2).abs() < 1e-9);
        assert!((l.p99_ms - 0.7).abs() < 1e-9);
        assert!((l.p999_ms - 4.0).abs() < 1e-9);
        assert!((l.ok_per_second - 1999.0).abs() < 1e-9);
        assert_eq!(l.errors, 13);
        assert!(parse_oha("not json").is_err());
    }

    #[test]
    fn cells_are_the_median_with_the_range() {
        let runs = [3.0, 1.0, 2.0].map(|p| Load {
            p99_ms: p,
            ..Load::default()
        });
        let (m, s) = cell(&runs, |l| l.p99_ms);
        assert_eq!(m, 2.0);
        assert_eq!(s, "2.00 (1.00–3.00)");
    }
}
