//! `cargo xtask bench shards` (and the end of `cargo xtask bench`): the IP shard benchmarks
//! of issue 4, on release binaries.
//!
//! 1. Durable allocations per second over the REST API: a controller with its redb store on
//!    disk, many keep-alive HTTP/1.1 connections POSTing allocations for distinct workloads;
//!    afterwards every acknowledged address is checked (distinct, counted by the shards,
//!    readable per workload).
//! 2. Migration of a full default shard (/22) holding 256 workloads in the namespace lab: a
//!    UDP prober measures each workload's unreachability window while the shard migrates.
//!
//! The figures go into BENCHMARKS.md between the `shards` markers (other sections stay).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};
use weft_lab::links::{self, Place};
use weft_lab::netns::Netns;
use weft_lab::process::Child;
use weft_lab::weft::{Controller, free_port, target_dir, toml_str};
use weft_lab::{Lab, eventually, names};

use crate::sh;

const BEGIN: &str = "<!-- shards:begin (written by `cargo xtask bench shards`) -->";
const END: &str = "<!-- shards:end -->";

/// Allocation benchmark bounds: whichever comes first.
const ALLOC_MAX: u64 = 200_000;
const ALLOC_SECONDS: u64 = 20;
const ALLOC_CONNECTIONS: usize = 128;
const ALLOC_NETWORK: &str = "bench";

/// Migration benchmark.
const WORKLOADS: usize = 256;
const MIG_NETWORK: &str = "net1";
const ECHO_PORT: u16 = 7007;
/// Every workload's current addresses are probed this often.
const PROBE_EVERY: Duration = Duration::from_millis(10);

pub fn run() -> Result<()> {
    let started = Instant::now();
    sh::step("IP shard benchmarks: release controller and agent");
    sh::run_inherit(sh::cargo().args([
        "build",
        "--release",
        "-p",
        "weft-controller",
        "-p",
        "weft-agent",
    ]))?;
    let load_before = loadavg();
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(md, "## IP shards (release binaries)\n");
    let _ = writeln!(
        md,
        "- **Date**: {}",
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
    );
    let _ = writeln!(
        md,
        "- **Machine**: {} CPUs, {}, Linux {}",
        first_line(&mut Command::new("nproc")),
        cpu_model(),
        first_line(Command::new("uname").args(["-r"]))
    );
    let _ = writeln!(
        md,
        "- **Command**: `cargo xtask bench shards` (also the last part of `cargo xtask bench`); binaries from `cargo build --release -p weft-controller -p weft-agent`"
    );

    sh::step("durable allocations per second over the REST API");
    let alloc = bench_allocations();
    let load_mid = loadavg();
    let mig = if weft_lab::is_root() {
        sh::step(&format!(
            "migration of a full default shard holding {WORKLOADS} workloads (namespace lab)"
        ));
        Some(
            readdress_modes()
                .into_iter()
                .map(|mode| (mode.clone(), bench_migration_runs(&mode)))
                .collect::<Vec<_>>(),
        )
    } else {
        println!("    (not root: the migration benchmark needs the namespace lab)");
        None
    };
    let load_after = loadavg();
    let _ = writeln!(
        md,
        "- **Load average** (1/5/15 min): {load_before} before, {load_mid} between the two, {load_after} after ({} s in all; other work on the machine shows here)\n",
        started.elapsed().as_secs()
    );
    match alloc {
        Ok(a) => a.render(&mut md),
        Err(e) => {
            eprintln!("allocation benchmark failed: {e:#}");
            let _ = writeln!(
                md,
                "### Durable allocations over the API\n\nFailed: {}\n",
                one_line(&format!("{e:#}"))
            );
        }
    }
    match mig {
        Some(runs) => {
            for (mode, run) in runs {
                match run {
                    Ok(m) => m.render(&mut md),
                    Err(e) => {
                        eprintln!("migration benchmark ({mode}) failed: {e:#}");
                        let _ = writeln!(
                            md,
                            "### Migration of a full default shard ({WORKLOADS} workloads, `--readdress-mode {mode}`)\n\nFailed: {}\n",
                            one_line(&format!("{e:#}"))
                        );
                    }
                }
            }
        }
        None => {
            let _ = writeln!(
                md,
                "### Migration of a full default shard ({WORKLOADS} workloads)\n\nNot measured: the namespace lab needs root.\n"
            );
        }
    }
    let _ = writeln!(md, "{END}");
    splice(&md)?;
    Ok(())
}

/// The allocation benchmark alone (for working on it): figures printed, BENCHMARKS.md
/// left as it is.
pub fn run_allocations_only() -> Result<()> {
    sh::step("allocation benchmark only: release controller");
    sh::run_inherit(sh::cargo().args(["build", "--release", "-p", "weft-controller"]))?;
    let mut md = String::new();
    bench_allocations()?.render(&mut md);
    println!("{md}");
    Ok(())
}

/// The migration benchmark alone (for working on it): figures printed, BENCHMARKS.md
/// left as it is.
pub fn run_migration_only() -> Result<()> {
    crate::bench_networks::release_binaries("migration", &["weft-controller", "weft-agent"])?;
    let mut md = String::new();
    for mode in readdress_modes() {
        bench_migration_runs(&mode)?.render(&mut md);
    }
    println!("{md}");
    Ok(())
}

const FAILOVER_BEGIN: &str =
    "<!-- migration-failover:begin (written by `cargo xtask bench migration-failover`) -->";
const FAILOVER_END: &str = "<!-- migration-failover:end -->";

/// `cargo xtask bench migration-failover`: the migration of 256 workloads with two
/// controller replicas on a local etcd, the leader killed a quarter of the way through.
/// Not part of the full `cargo xtask bench` (it needs etcd and a minute of its own).
pub fn run_migration_failover() -> Result<()> {
    crate::bench_networks::release_binaries(
        "migration-failover",
        &["weft-controller", "weft-agent"],
    )?;
    ensure!(
        weft_store::etcd_process::available(),
        "etcd not found: run `cargo xtask setup`"
    );
    let dir = tempfile_dir("weft-bench-failover")?;
    let etcd = weft_store::etcd_process::EtcdCluster::start(&dir, 1)
        .map_err(|e| anyhow!("starting etcd: {e}"))?;
    let url = etcd.url();
    let mode = readdress_modes().into_iter().next().context("a mode")?;
    let figures = bench_migration_with(&mode, Some(&url));
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    let figures = figures?;
    let mut md = String::new();
    let _ = writeln!(md, "{FAILOVER_BEGIN}");
    let _ = writeln!(
        md,
        "## IP shard migration across a controller failover (release binaries)\n\n- **Date**: {}\n- **Machine**: {} CPUs, {}, Linux {}\n- **Command**: `cargo xtask bench migration-failover`\n",
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        first_line(&mut Command::new("nproc")),
        cpu_model(),
        first_line(Command::new("uname").args(["-r"]))
    );
    figures.render(&mut md);
    let _ = writeln!(md, "{FAILOVER_END}");
    println!("{md}");
    splice_between(&md, FAILOVER_BEGIN, FAILOVER_END)
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
    Ok(dir)
}

/// Replaces the shards section of BENCHMARKS.md (or appends it).
fn splice(section: &str) -> Result<()> {
    splice_between(section, BEGIN, END)
}

/// Replaces the section between `begin` and `end` in BENCHMARKS.md (or appends it).
fn splice_between(section: &str, begin: &str, end: &str) -> Result<()> {
    let path = sh::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{}{}",
                &old[..b],
                section,
                &old[e + end.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote the IP shard sections of {}", path.display());
    Ok(())
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ").chars().take(600).collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(cmd: &mut Command) -> String {
    let (_, out) = sh::probe(cmd);
    out.lines().next().unwrap_or("unknown").trim().to_string()
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn release_binary(name: &str) -> Result<PathBuf> {
    let p = target_dir().join("release").join(name);
    ensure!(p.is_file(), "{} is not built", p.display());
    Ok(p)
}

/// The admin token of the controller the bench last started (the bench runs one at a
/// time); every request of [`Conn`] and the event follower carries it.
static TOKEN: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn authorization() -> String {
    format!("Bearer {}", TOKEN.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Starts the release controller with its store in `data_dir` (gRPC in plain text: the
/// bench measures migrations, not TLS).
pub(crate) fn start_controller(
    dir: &Path,
    grpc: &str,
    http: &str,
    data_dir: &Path,
    extra: &[&str],
) -> Result<Controller> {
    start_controller_as(
        dir,
        grpc,
        http,
        data_dir,
        extra,
        "weft-controller-release",
        "weft-controller listening",
    )
}

/// [`start_controller`] with its log named `log` and ready once it prints `ready` (a
/// follower replica prints "weft-controller following").
pub(crate) fn start_controller_as(
    dir: &Path,
    grpc: &str,
    http: &str,
    data_dir: &Path,
    extra: &[&str],
    log: &str,
    ready: &str,
) -> Result<Controller> {
    let mut c = Command::new(release_binary("weft-controller")?);
    c.args(["--grpc-listen", grpc, "--http-listen", http]);
    c.arg("--data-dir").arg(data_dir);
    c.arg("--insecure");
    c.args(extra);
    let mut child = Child::spawn(c, dir, log)?;
    child.wait_for_line(&[ready], Duration::from_secs(60))?;
    let token_file = data_dir.join("admin.token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading {}", token_file.display()))?
        .trim()
        .to_owned();
    *TOKEN.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
    Ok(Controller {
        child,
        grpc_addr: grpc.to_string(),
        http_addr: http.to_string(),
        token,
        insecure: true,
        ca: None,
    })
}

/// The value at quantile `q` of sorted `v`.
fn pct<T: Copy + Default>(v: &[T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    let i = ((v.len() as f64) * q).ceil() as usize;
    v[i.saturating_sub(1).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------
// 1. Durable allocations per second

struct AllocFigures {
    acked: u64,
    errors: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    shards: usize,
    verify: String,
    disk: String,
    fsync_note: String,
}

impl AllocFigures {
    fn render(&self, md: &mut String) {
        let rate = self.acked as f64 / self.seconds;
        let _ = writeln!(md, "### Durable allocations over the API\n");
        let _ = writeln!(
            md,
            "A release `weft-controller` with its redb store on disk ({}; {}), {} /20 shards of one network carved from `--shard-pool 10.0.0.0/12` (`--max-shards-per-network 64`), then {ALLOC_CONNECTIONS} keep-alive HTTP/1.1 connections (one client thread each, on the same 2 CPUs as the controller) POSTing `/networks/{ALLOC_NETWORK}/addresses` for distinct workloads, one request in flight per connection, until {} allocations or {ALLOC_SECONDS} s. Only 2xx answers count.\n",
            self.disk,
            self.fsync_note,
            self.shards,
            fmt_int(ALLOC_MAX as f64),
        );
        let _ = writeln!(md, "| figure | value |\n|---|---|");
        let _ = writeln!(
            md,
            "| acknowledged allocations | {} in {:.1} s ({} errors) |",
            fmt_int(self.acked as f64),
            self.seconds,
            self.errors
        );
        let _ = writeln!(md, "| **allocations/s** | **{}** |", fmt_int(rate));
        let _ = writeln!(
            md,
            "| latency per allocation (client view) | p50 {}, p99 {}, max {} |",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        );
        let _ = writeln!(md, "| verification | {} |\n", self.verify);
        let _ = writeln!(
            md,
            "Against the target (at least 20,000/s on this machine; Kea's best published figure is about 19,000 leases/s on 6 cores): {} ({:.0}% of the target, on 2 CPUs shared by the client and the server).\n",
            if rate >= 20_000.0 {
                "met"
            } else {
                "**not met**"
            },
            rate / 200.0
        );
    }
}

pub(crate) fn fmt_int(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One keep-alive HTTP/1.1 connection, one request in flight.
pub(crate) struct Conn {
    s: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) fn open(addr: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            s,
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request, returns (status, body).
    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n",
            self.host,
            authorization()
        );
        if let Some(b) = body {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            );
        } else {
            req.push_str("\r\n");
        }
        self.s.write_all(req.as_bytes())?;
        // Headers.
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line: {head}"))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .with_context(|| format!("no content-length: {head}"))?;
        let start = head_end + 4;
        while self.buf.len() < start + len {
            self.fill()?;
        }
        let body = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Ok((status, body))
    }

    fn fill(&mut self) -> Result<()> {
        let mut tmp = [0u8; 8192];
        let n = self.s.read(&mut tmp)?;
        ensure!(n > 0, "connection closed by the controller");
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

/// The string value of `"field":"..."` in a compact JSON object.
fn json_str_field<'a>(body: &'a [u8], field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\":\"");
    let at = find(body, key.as_bytes())? + key.len();
    let len = body[at..].iter().position(|&c| c == b'"')?;
    std::str::from_utf8(&body[at..at + len]).ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What one client thread saw: acknowledged (workload, address), latencies in us, errors.
type ClientResult = (Vec<(String, IpAddr)>, Vec<u32>, u64);

fn bench_allocations() -> Result<AllocFigures> {
    let dir = std::env::temp_dir().join(format!("weft-bench-alloc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = allocations_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn allocations_in(dir: &Path) -> Result<AllocFigures> {
    let disk = {
        let (_, out) = sh::probe(Command::new("df").args(["--output=source,fstype"]).arg(dir));
        let l = out
            .lines()
            .nth(1)
            .unwrap_or("unknown")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        format!("`{}` on {l}", dir.display())
    };
    let grpc = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let data = dir.join("data");
    let controller = start_controller(
        dir,
        &grpc,
        &http,
        &data,
        &[
            "--shard-pool",
            "10.0.0.0/12",
            "--max-shards-per-network",
            "64",
            // Every connection's request in flight at once: the group commit is measured.
            "--http-write-concurrency",
            "256",
        ],
    )?;
    let c = &controller;
    let shards = (ALLOC_MAX as usize).div_ceil(4094) + 1;
    for _ in 0..shards {
        c.json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": 20, "network_id": ALLOC_NETWORK})),
        )
        .with_context(|| controller.child.tail(20))?;
    }
    println!(
        "    {shards} /20 shards for network {ALLOC_NETWORK}; {ALLOC_CONNECTIONS} connections"
    );
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(ALLOC_SECONDS);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for t in 0..ALLOC_CONNECTIONS {
        let (http, issued) = (http.clone(), issued.clone());
        handles.push(std::thread::spawn(move || -> Result<ClientResult> {
            let mut conn = Conn::open(&http)?;
            let (mut ok, mut lat, mut errors) = (Vec::new(), Vec::new(), 0u64);
            let path = format!("/networks/{ALLOC_NETWORK}/addresses");
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= ALLOC_MAX || Instant::now() >= deadline {
                    break;
                }
                let workload = format!("w{t}-{n}");
                let body =
                    format!(r#"{{"workload":"{workload}","host_id":"hv-bench","family":"ipv4"}}"#);
                let s = Instant::now();
                match conn.request("POST", &path, Some(&body)) {
                    Ok((status, b)) if (200..300).contains(&status) => {
                        lat.push(s.elapsed().as_micros() as u32);
                        // Kept light (it shares the CPUs with the server): no JSON parse in the hot loop.
                        let a = json_str_field(&b, "address").with_context(|| {
                            format!("no address in {}", String::from_utf8_lossy(&b))
                        })?;
                        ok.push((workload, a.parse()?));
                    }
                    Ok((status, b)) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!(
                                "    allocation answered {status}: {}",
                                String::from_utf8_lossy(&b)
                            );
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("    allocation failed: {e:#}; reconnecting");
                        conn = Conn::open(&http)?;
                    }
                }
            }
            Ok((ok, lat, errors))
        }));
    }
    let mut acked: Vec<(String, IpAddr)> = Vec::new();
    let mut lat: Vec<u32> = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (o, l, e) = h.join().map_err(|_| anyhow!("client thread panicked"))??;
        acked.extend(o);
        lat.extend(l);
        errors += e;
    }
    let seconds = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "    {} acknowledged allocations in {seconds:.1} s: {:.0}/s, p50 {} us, p99 {} us, {errors} errors",
        acked.len(),
        acked.len() as f64 / seconds,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );

    // Verification: distinct addresses, the shards count them, each reads back.
    sh::step("verifying the acknowledged allocations");
    let distinct: HashSet<IpAddr> = acked.iter().map(|(_, a)| *a).collect();
    ensure!(
        distinct.len() == acked.len(),
        "{} acknowledged allocations but only {} distinct addresses: an address was handed twice",
        acked.len(),
        distinct.len()
    );
    let mut counted = 0u64;
    let mut token: Option<String> = None;
    loop {
        let mut path = format!("/shards?network_id={ALLOC_NETWORK}&limit=1000");
        if let Some(t) = &token {
            path.push_str(&format!("&page_token={t}"));
        }
        let v = c.json("GET", &path, None)?;
        for s in v["shards"].as_array().context("shards")? {
            counted += s["resource_count"].as_u64().unwrap_or(0);
        }
        match v["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    ensure!(
        counted == acked.len() as u64,
        "the shards count {counted} allocations, {} were acknowledged",
        acked.len()
    );
    // Every workload reads back its one address (64 connections again).
    let acked = Arc::new(acked);
    let next = Arc::new(AtomicU64::new(0));
    let vt = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..ALLOC_CONNECTIONS {
        let (http, acked, next) = (http.clone(), acked.clone(), next.clone());
        handles.push(std::thread::spawn(move || -> Result<()> {
            let mut conn = Conn::open(&http)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some((w, a)) = acked.get(i) else {
                    return Ok(());
                };
                let (status, b) = conn.request(
                    "GET",
                    &format!("/networks/{ALLOC_NETWORK}/workloads/{w}/addresses"),
                    None,
                )?;
                ensure!(status == 200, "GET addresses of {w}: {status}");
                let v: Value = serde_json::from_slice(&b)?;
                let held: Vec<&str> = v["addresses"]
                    .as_array()
                    .map(|x| x.iter().filter_map(|a| a["address"].as_str()).collect())
                    .unwrap_or_default();
                ensure!(
                    held == [a.to_string().as_str()],
                    "{w} holds {held:?}, was acknowledged {a}"
                );
            }
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow!("verify thread panicked"))??;
    }
    let verify = format!(
        "{} acknowledged addresses all distinct; the shards' resource counts sum to {counted}; every workload's GET returns exactly its acknowledged address ({:.1} s)",
        fmt_int(acked.len() as f64),
        vt.elapsed().as_secs_f64()
    );
    println!("    {verify}");
    Ok(AllocFigures {
        acked: acked.len() as u64,
        errors,
        seconds,
        p50: Duration::from_micros(pct(&lat, 0.5).into()),
        p99: Duration::from_micros(pct(&lat, 0.99).into()),
        max: Duration::from_micros(lat.last().copied().unwrap_or(0).into()),
        shards,
        verify,
        disk,
        fsync_note: "group commit: the shard writer commits up to 4,096 queued requests in one redb transaction, fsync'd, and answers each only after it".into(),
    })
}

// ---------------------------------------------------------------------------------------
// 2. Migration of a full default shard holding 256 workloads

struct MigFigures {
    workloads: usize,
    build_lab_s: f64,
    total: Duration,
    readdress: Vec<Duration>,
    gaps: Vec<Duration>,
    down_us: Vec<u64>,
    not_answered: usize,
    /// When each window began, after the DELETE (sorted).
    gap_starts: Vec<Duration>,
    prober_stall: Duration,
    breakdown: WindowBreakdown,
    flags: String,
    /// The kernel neighbour table thresholds of the run.
    neighbour_limits: String,
    /// The agent's --readdress-mode.
    mode: String,
    /// Every run of this mode, in order (total, p99 window, max window); empty for one.
    runs: Vec<(Duration, Duration, Duration)>,
    /// With two controller replicas: the leader's death during the migration.
    failover: Option<FailoverFigures>,
}

/// The migration with two controller replicas on etcd, the leader killed (SIGKILL) once a
/// quarter of the moves were done.
struct FailoverFigures {
    /// DELETE -> the kill.
    killed_after: Duration,
    moved_at_kill: u64,
    moves: u64,
    /// The kill -> the follower serving as the leader.
    takeover: Duration,
    /// Dependencies and packets in the topology both replicas answered alike at the end.
    dependencies: usize,
    requests: u64,
}

/// Waits (30 s at most) until `a` and `b` answer `GET /topology` with the same dependencies
/// and counters twice in a row 1 s apart (the agent sends its last records within its
/// 1 s drain interval); returns the number of dependencies and their packets.
fn same_topology(a: &Controller, b: &Controller) -> Result<(usize, u64)> {
    type Row = (String, String, String, u64, u64, u64, u64, u64, u64);
    let rows = |c: &Controller| -> Result<Vec<Row>> {
        let t = c.json("GET", "/topology?shape=weft", None)?;
        let mut v: Vec<Row> = t["dependencies"]
            .as_array()
            .context("dependencies")?
            .iter()
            .map(|d| {
                let n = |k: &str| d[k].as_u64().unwrap_or(0);
                (
                    d["source"].as_str().unwrap_or("").to_owned(),
                    d["target"].as_str().unwrap_or("").to_owned(),
                    d["transport"].as_str().unwrap_or("").to_owned(),
                    n("port"),
                    n("flows"),
                    n("packets_sent"),
                    n("packets_received"),
                    n("bytes_sent"),
                    n("bytes_received"),
                )
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let mut last: Option<Vec<Row>> = None;
    eventually(Duration::from_secs(30), Duration::from_secs(1), || {
        let from_a = rows(a)?;
        let from_b = rows(b)?;
        ensure!(!from_a.is_empty(), "no dependencies in the topology");
        if from_a != from_b {
            let only_a = from_a.iter().filter(|r| !from_b.contains(r)).count();
            let only_b = from_b.iter().filter(|r| !from_a.contains(r)).count();
            last = None;
            bail!(
                "the replicas answer differently: {} and {} dependencies, {only_a} rows only in the first, {only_b} only in the second",
                from_a.len(),
                from_b.len()
            );
        }
        let steady = last.as_ref() == Some(&from_a);
        last = Some(from_a.clone());
        ensure!(steady, "counters still moving");
        let packets = from_a.iter().map(|r| r.5 + r.6).sum();
        Ok((from_a.len(), packets))
    })
}

/// Where each workload's window goes, from the prober's side: the old address's last
/// answer, when the prober learned the new address, and the new address's first answer
/// (all after the DELETE; sorted, for percentiles).
#[derive(Default)]
struct WindowBreakdown {
    /// DELETE -> the old address's last answer.
    old_last: Vec<Duration>,
    /// DELETE -> the new address known to the prober.
    learned: Vec<Duration>,
    /// Old address's last answer -> new address's first answer (the swap as seen on the wire).
    swap: Vec<Duration>,
    /// New address known -> its first answer.
    learned_to_answer: Vec<Duration>,
}

impl WindowBreakdown {
    fn of(
        replies: &[Vec<(Instant, IpAddr)>],
        old_of: &[IpAddr],
        new_of: &[Option<IpAddr>],
        learned: &[Option<Instant>],
        started: Instant,
    ) -> Self {
        let mut b = Self::default();
        for (i, r) in replies.iter().enumerate() {
            let old_last = r
                .iter()
                .filter(|(t, a)| *a == old_of[i] && *t > started)
                .map(|(t, _)| *t)
                .max();
            let new_first = new_of[i].and_then(|n| {
                r.iter()
                    .filter(|(t, a)| *a == n && *t > started)
                    .map(|(t, _)| *t)
                    .min()
            });
            if let Some(o) = old_last {
                b.old_last.push(o.duration_since(started));
            }
            if let Some(l) = learned[i] {
                b.learned.push(l.saturating_duration_since(started));
                if let Some(n) = new_first {
                    b.learned_to_answer.push(n.saturating_duration_since(l));
                }
            }
            if let (Some(o), Some(n)) = (old_last, new_first) {
                b.swap.push(n.saturating_duration_since(o));
            }
        }
        for v in [
            &mut b.old_last,
            &mut b.learned,
            &mut b.swap,
            &mut b.learned_to_answer,
        ] {
            v.sort();
        }
        b
    }

    fn rows(&self) -> [(&'static str, &Vec<Duration>); 4] {
        [
            ("DELETE -> old address's last answer", &self.old_last),
            ("DELETE -> new address known to the prober", &self.learned),
            (
                "old address's last answer -> new address's first answer",
                &self.swap,
            ),
            (
                "new address known -> its first answer",
                &self.learned_to_answer,
            ),
        ]
    }

    fn print(&self) {
        for (name, v) in self.rows() {
            println!(
                "    {name}: p50 {} p99 {} max {} (n={})",
                ms(pct(v, 0.5)),
                ms(pct(v, 0.99)),
                ms(v.last().copied().unwrap_or_default()),
                v.len()
            );
        }
    }

    fn render(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "Where the windows go (prober's view):\n\n| interval | p50 | p99 | max |\n|---|---|---|---|"
        );
        for (name, v) in self.rows() {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                ms(pct(v, 0.5)),
                ms(pct(v, 0.99)),
                ms(v.last().copied().unwrap_or_default())
            );
        }
        let _ = writeln!(md);
    }
}

impl MigFigures {
    fn p99_gap(&self) -> Duration {
        let mut g = self.gaps.clone();
        g.sort();
        pct(&g, 0.99)
    }

    fn max_gap(&self) -> Duration {
        self.gaps.iter().max().copied().unwrap_or_default()
    }

    fn render(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "### Migration of a full default shard ({} workloads, `--readdress-mode {}`)\n",
            self.workloads, self.mode
        );
        let _ = writeln!(
            md,
            "A namespace lab (built in {:.0} s): one hypervisor (its bridge snooping multicast, with a querier), {} workload namespaces and a prober (kernel neighbour table, shared by all of them: {}). Release controller (`{}`) and agent (`--readdress-mode {}`). A /22 shard (1,024 addresses) of network `{MIG_NETWORK}`, one address allocated per workload, then a second /22 shard; once every workload has its address on eth0 (checked with `ip` in each namespace), the prober (one UDP socket) sends every {} ms to every current address of every workload, the echo answering with the payload that names the probed address, and the new addresses are followed from the migration's moves (probed from the moment the controller allocated them, learnt from its event stream `GET /events`; the old address is no longer probed once the new one answered). `DELETE /networks/{MIG_NETWORK}/shards/{{id}}` starts the migration; probing goes on until every new address answered. Re-address time: from the DELETE to the workload's first answer at its new address. Unreachability: the longest time without any answer from the workload between the DELETE and the end (resolution: the {} ms probe interval, so a workload that never dropped shows about that).\n",
            self.build_lab_s,
            self.workloads,
            self.neighbour_limits,
            self.flags,
            self.mode,
            PROBE_EVERY.as_millis(),
            PROBE_EVERY.as_millis(),
        );
        if let Some(f) = &self.failover {
            let _ = writeln!(
                md,
                "**Two controller replicas on one etcd** (`--etcd`, lease 2 s, `--replica-name ctl-a` the leader, `ctl-b` a serving follower; the agent given both, `--controller a,b`). The leader was killed (SIGKILL) {} after the DELETE, with {} of {} moves done; the follower served as the leader **{}** after the kill and completed the migration the dead leader started (every workload at a distinct new address, the old shard empty). The killed replica was then started again (a follower now) and both replicas answered `GET /topology` alike: {} dependencies, {} packets, the same on both twice in a row.\n",
                ms(f.killed_after),
                f.moved_at_kill,
                f.moves,
                ms(f.takeover),
                f.dependencies,
                fmt_int(f.requests as f64),
            );
        }
        let mut r = self.readdress.clone();
        r.sort();
        let mut g = self.gaps.clone();
        g.sort();
        let mut d = self.down_us.clone();
        d.sort();
        let dd = |v: u64| ms(Duration::from_micros(v));
        let _ = writeln!(
            md,
            "| figure | p50 | p95 | p99 | max |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            md,
            "| re-address time (DELETE -> first answer at the new address) | {} | {} | {} | {} |",
            ms(pct(&r, 0.5)),
            ms(pct(&r, 0.95)),
            ms(pct(&r, 0.99)),
            ms(r.last().copied().unwrap_or_default())
        );
        let _ = writeln!(
            md,
            "| unreachability window per workload (prober) | {} | {} | {} | {} |",
            ms(pct(&g, 0.5)),
            ms(pct(&g, 0.95)),
            ms(pct(&g, 0.99)),
            ms(g.last().copied().unwrap_or_default())
        );
        let _ = writeln!(
            md,
            "| link down, reported by the agent (`down_us`) | {} | {} | {} | {} |\n",
            dd(pct(&d, 0.5)),
            dd(pct(&d, 0.95)),
            dd(pct(&d, 0.99)),
            dd(d.last().copied().unwrap_or_default())
        );
        let last = r.last().copied().unwrap_or_default();
        let _ = writeln!(
            md,
            "Total migration time (DELETE -> migration Completed, polled every 20 ms): **{}**; last workload answering at its new address: {}. {} of {} workloads never answered at their new address within 10 s after completion.\n",
            ms(self.total),
            ms(last),
            self.not_answered,
            self.workloads
        );
        let _ = writeln!(
            md,
            "The windows began between {} and {} after the DELETE (p50 {}); the prober's own longest interval between two rounds was {} (a stall of the prober would show as a window of every workload at once).\n",
            ms(self.gap_starts.first().copied().unwrap_or_default()),
            ms(self.gap_starts.last().copied().unwrap_or_default()),
            ms(pct(&self.gap_starts, 0.5)),
            ms(self.prober_stall)
        );
        self.breakdown.render(md);
        if !self.runs.is_empty() {
            let _ = writeln!(
                md,
                "All {} runs of this mode (the detail above is the last):\n\n| run | total migration | unreachability p99 | max |\n|---|---|---|---|",
                self.runs.len()
            );
            for (i, (total, p99, max)) in self.runs.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    i + 1,
                    ms(*total),
                    ms(*p99),
                    ms(*max)
                );
            }
            let met = self
                .runs
                .iter()
                .filter(|(t, p, _)| *t <= Duration::from_secs(5) && *p <= Duration::from_millis(50))
                .count();
            let _ = writeln!(
                md,
                "\nBoth targets met in {met} of {} runs.\n",
                self.runs.len()
            );
        }
        let p99 = pct(&g, 0.99);
        let _ = writeln!(
            md,
            "Against the targets: all re-addressed within 5 s: {} ({} total, {} until the last answer); each unreachable at most 50 ms at p99: {} (p99 {}).\n",
            if self.total <= Duration::from_secs(5)
                && last <= Duration::from_secs(5)
                && self.not_answered == 0
            {
                "met"
            } else {
                "**not met**"
            },
            ms(self.total),
            ms(last),
            if p99 <= Duration::from_millis(50) && self.not_answered == 0 {
                "met"
            } else {
                "**not met**"
            },
            ms(p99),
        );
    }
}

/// Workload namespaces beyond what `Lab` holds (it numbers lab addresses in one /24): eth0
/// only, addressed by the agent from the shards. Deleted on drop.
struct ExtraWorkloads {
    ns: Vec<Netns>,
}

fn build_extra(lab: &Lab, n: usize) -> Result<ExtraWorkloads> {
    let hv = lab.hypervisor();
    let run = names::run_id();
    let mut extra = ExtraWorkloads { ns: Vec::new() };
    let t = Instant::now();
    for i in 0..n {
        let name = format!("w{i}");
        let ns = Netns::create(&names::netns_name(&run, lab.x(), &name))?;
        extra.ns.push(ns);
        let ns = extra.ns.last().context("pushed")?;
        let host_if = names::host_ifname(&name);
        links::veth(Place::Ns(&hv.netns), &host_if, Place::Ns(ns), "eth0")?;
        links::enslave(Place::Ns(&hv.netns), &host_if, weft_lab::lab::BRIDGE)?;
        if (i + 1) % 32 == 0 {
            println!(
                "    {} of {n} workload namespaces ({:.0} s)",
                i + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok(extra)
}

/// Echo threads: one UDP socket bound in each workload namespace, answering with the payload
/// and ignoring send errors (while the link is down there is no route back).
fn start_echoes(nss: &[String], stop: Arc<AtomicBool>) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut hs = Vec::new();
    for ns in nss {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .with_context(|| format!("open netns {ns}"))?;
        let stop = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        hs.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    // SAFETY: setns on this thread only, with a valid namespace fd.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let _ = tx.send(Err(anyhow!("setns: {}", std::io::Error::last_os_error())));
                        return;
                    }
                    instrument_priority();
                    let s = match UdpSocket::bind(("0.0.0.0", ECHO_PORT)) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = tx.send(Ok(()));
                    let mut buf = [0u8; 128];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = s.recv_from(&mut buf) {
                            let _ = s.send_to(&buf[..n], from);
                        }
                    }
                })?,
        );
        rx.recv()
            .map_err(|_| anyhow!("echo thread for {ns} died"))??;
    }
    Ok(hs)
}

/// The prober and the echo responders are measuring instruments: a real-time priority
/// (SCHED_FIFO 1, they block between packets) keeps them from waiting behind the agent,
/// the controller and each other on a small machine, which would show as windows of every
/// workload at once. The network path they measure (softirq work, the kernel's neighbour
/// and bridge code) gets no such help. Best effort.
fn instrument_priority() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid parameter.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
    }
}

/// Follows the controller's shard events (server-sent events, from now on) on a thread and
/// hands every address allocation (workload, address) to `learn` as the controller makes
/// it. Returns once the stream is open.
fn follow_allocations(
    http: &str,
    stop: Arc<AtomicBool>,
    learn: impl Fn(&str, IpAddr) + Send + 'static,
) -> Result<std::thread::JoinHandle<()>> {
    let mut s = TcpStream::connect(http).with_context(|| format!("connect {http}"))?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {http}\r\nAuthorization: {}\r\nAccept: text/event-stream\r\n\r\n",
        authorization()
    )?;
    // The response head: the subscription is in place once it is sent.
    let mut raw: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if let Some(p) = find(&raw, b"\r\n\r\n") {
            break p;
        }
        ensure!(
            Instant::now() < deadline,
            "no response head from GET /events"
        );
        match s.read(&mut buf) {
            Ok(0) => bail!("GET /events: connection closed"),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("GET /events"),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    ensure!(
        head.starts_with("http/1.1 200"),
        "GET /events: {}",
        head.lines().next().unwrap_or("")
    );
    let chunked = head.contains("transfer-encoding: chunked");
    raw.drain(..head_end + 4);
    Ok(std::thread::spawn(move || {
        let mut body: Vec<u8> = Vec::new();
        loop {
            if chunked {
                // Whole chunks only: size line, data, CRLF.
                while let Some(p) = find(&raw, b"\r\n") {
                    let size_text = String::from_utf8_lossy(&raw[..p]);
                    let Ok(size) =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                    else {
                        return;
                    };
                    if raw.len() < p + 2 + size + 2 {
                        break;
                    }
                    body.extend_from_slice(&raw[p + 2..p + 2 + size]);
                    raw.drain(..p + 2 + size + 2);
                }
            } else {
                body.append(&mut raw);
            }
            while let Some(p) = find(&body, b"\n") {
                let line: Vec<u8> = body.drain(..=p).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(data) = line.trim_end().strip_prefix("data:")
                    && let Ok(e) = serde_json::from_str::<Value>(data.trim())
                    && e["type"] == "weft.address.allocated"
                    && let (Some(w), Some(a)) = (
                        e["data"]["workload"].as_str(),
                        e["data"]["address"]
                            .as_str()
                            .and_then(|a| a.parse::<IpAddr>().ok()),
                    )
                {
                    learn(w, a);
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    }))
}

/// Replies per workload: (when, the address that was probed).
type Replies = Arc<Mutex<Vec<Vec<(Instant, IpAddr)>>>>;

/// Returns the prober's own longest interval between two rounds (a stall of the prober
/// would look like unreachability of every workload).
fn probe(
    netns: String,
    targets: Arc<Mutex<Vec<Vec<IpAddr>>>>,
    replies: Replies,
    stop: Arc<AtomicBool>,
) -> Result<Duration> {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).context("open prober netns")?;
    // SAFETY: setns on this thread only, with a valid namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    instrument_priority();
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    // Room for a round of answers.
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt with a valid fd and an int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.set_read_timeout(Some(Duration::from_millis(1)))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buf = [0u8; 128];
    let mut got: Vec<(usize, Instant, IpAddr)> = Vec::with_capacity(1024);
    let mut longest_round = Duration::ZERO;
    let mut last_round: Option<Instant> = None;
    let mut current: Vec<Vec<IpAddr>> = Vec::new();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let round = Instant::now();
        if let Some(l) = last_round {
            longest_round = longest_round.max(round - l);
        }
        last_round = Some(round);
        // Never waits for a lock another (lower-priority) thread holds: last round's
        // targets are used again, replies are handed over next round.
        if let Ok(t) = targets.try_lock() {
            current.clone_from(&t);
        }
        let t = &current;
        // Sends do not wait: probes to an address whose neighbour entry on the hypervisor
        // is still resolving are held there, charged to this socket; blocking sends would
        // stall the prober (a window for every workload at once) once they fill its send
        // buffer. A probe that does not fit is dropped, as a lost packet would be.
        sock.set_nonblocking(true)?;
        for (i, addrs) in t.iter().enumerate() {
            for a in addrs {
                let _ = sock.send_to(
                    format!("{i} {a}").as_bytes(),
                    SocketAddr::new(*a, ECHO_PORT),
                );
            }
        }
        sock.set_nonblocking(false)?;
        while round.elapsed() < PROBE_EVERY {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Some((i, a)) = std::str::from_utf8(&buf[..n]).unwrap_or("").split_once(' ')
                && let (Ok(i), Ok(a)) = (i.parse::<usize>(), a.parse::<IpAddr>())
            {
                got.push((i, Instant::now(), a));
            }
        }
        // A workload that answered at its newest address is no longer probed at the older
        // ones (its clients have moved on).
        if let Ok(mut t) = targets.try_lock() {
            for (i, _, a) in &got {
                if let Some(addrs) = t.get_mut(*i)
                    && addrs.len() > 1
                    && addrs.last() == Some(a)
                {
                    addrs.drain(..addrs.len() - 1);
                }
            }
        }
        if let Ok(mut r) = replies.try_lock() {
            for (i, t, a) in got.drain(..) {
                if let Some(v) = r.get_mut(i) {
                    v.push((t, a));
                }
            }
        }
    }
    let mut r = replies.lock().map_err(|_| anyhow!("poisoned"))?;
    for (i, t, a) in got.drain(..) {
        if let Some(v) = r.get_mut(i) {
            v.push((t, a));
        }
    }
    Ok(longest_round)
}

/// The longest time without any reply between `from` and `to`, and when it began.
fn longest_gap(replies: &[(Instant, IpAddr)], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut last = from;
    let mut gap = (Duration::ZERO, from);
    for (t, _) in replies.iter().filter(|(t, _)| *t >= from && *t <= to) {
        if t.duration_since(last) > gap.0 {
            gap = (t.duration_since(last), last);
        }
        last = *t;
    }
    if to.saturating_duration_since(last) > gap.0 {
        gap = (to.saturating_duration_since(last), last);
    }
    gap
}

struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Raises the kernel's neighbour table thresholds for the run, restores them on drop.
/// Every namespace of the host shares one table (the thresholds live in the initial
/// namespace): 256 workload namespaces with entries for their gateways, and the
/// hypervisor's for 256 old and 256 new addresses, pass the default hard limit of 1,024,
/// and above the soft limit of 512 the kernel evicts entries in use. A hypervisor whose
/// workloads are VMs keeps only its own entries there; hosts of many containers raise
/// these limits (as this run does).
struct NeighbourLimits {
    saved: Vec<(String, String)>,
}

impl NeighbourLimits {
    const RAISED: [(&'static str, u64); 3] = [
        ("gc_thresh1", 2048),
        ("gc_thresh2", 8192),
        ("gc_thresh3", 16384),
    ];

    fn raise() -> Result<Self> {
        let mut saved = Vec::new();
        for family in ["ipv4", "ipv6"] {
            for (name, value) in Self::RAISED {
                let path = format!("/proc/sys/net/{family}/neigh/default/{name}");
                let old =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                let old = old.trim().to_owned();
                if old.parse::<u64>().is_ok_and(|v| v < value) {
                    std::fs::write(&path, value.to_string())
                        .with_context(|| format!("writing {path}"))?;
                    saved.push((path, old));
                }
            }
        }
        Ok(Self { saved })
    }

    fn describe(&self) -> String {
        if self.saved.is_empty() {
            return "already at least gc_thresh1/2/3 = 2048/8192/16384".to_owned();
        }
        let v4: Vec<&str> = self
            .saved
            .iter()
            .filter(|(p, _)| p.contains("ipv4"))
            .map(|(_, o)| o.as_str())
            .collect();
        format!(
            "gc_thresh1/2/3 raised from {} to 2048/8192/16384 for the run (restored after)",
            v4.join("/")
        )
    }
}

impl Drop for NeighbourLimits {
    fn drop(&mut self) {
        for (path, old) in &self.saved {
            let _ = std::fs::write(path, old);
        }
    }
}

/// Migration runs per re-address mode: the windows move by some 15 ms from run to run on
/// a 2-CPU machine, so one run says little about the p99.
const MIG_RUNS: usize = 3;

/// [`MIG_RUNS`] migrations in `mode`: the last one in detail, the others in its summary.
fn bench_migration_runs(mode: &str) -> Result<MigFigures> {
    let mut runs = Vec::new();
    for i in 0..MIG_RUNS {
        println!("    run {} of {MIG_RUNS} ({mode})", i + 1);
        runs.push(bench_migration(mode)?);
    }
    let summary = runs
        .iter()
        .map(|r| (r.total, r.p99_gap(), r.max_gap()))
        .collect();
    let mut last = runs.pop().context("no run")?;
    last.runs = summary;
    Ok(last)
}

fn bench_migration(mode: &str) -> Result<MigFigures> {
    bench_migration_with(mode, None)
}

/// One migration; with `failover` (an etcd URL) two controller replicas on that etcd, the
/// leader killed a quarter of the way through ([`FailoverFigures`]).
fn bench_migration_with(mode: &str, failover: Option<&str>) -> Result<MigFigures> {
    let limits = NeighbourLimits::raise()?;
    let t_lab = Instant::now();
    println!("    building the lab: hypervisor hv1, prober, {WORKLOADS} workloads");
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("prober")
        .build()?;
    let extra = build_extra(&lab, WORKLOADS)?;
    // Echo threads hold sockets in the namespaces: they stop (guard below) before the
    // namespaces go.
    let result = migration_in(&lab, &extra, t_lab, mode, failover).map(|mut m| {
        m.neighbour_limits = limits.describe();
        m
    });
    drop(extra);
    drop(lab);
    drop(limits);
    result
}

fn migration_in(
    lab: &Lab,
    extra: &ExtraWorkloads,
    t_lab: Instant,
    mode: &str,
    failover: Option<&str>,
) -> Result<MigFigures> {
    let hv = lab.hypervisor();
    for key in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.br0.send_redirects=0",
    ] {
        hv.netns.exec(&["sysctl", "-q", "-w", key])?;
    }
    // The hypervisor's bridge forwards multicast only to the ports that joined it (IGMP/MLD
    // snooping, with the bridge as querier), as a bridge of hundreds of ports is set up:
    // otherwise every IPv6 neighbour solicitation and MLD report of a workload whose link
    // came up is flooded to all 257 ports (measured: p99 window 57-98 ms down-up without,
    // 44-51 ms with).
    hv.netns.ip(&[
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "mcast_snooping",
        "1",
        "mcast_querier",
        "1",
    ])?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let ns_names: Vec<String> = extra.ns.iter().map(|n| n.name().to_string()).collect();
    let echoes = start_echoes(&ns_names, stop.clone())?;
    let build_lab_s = t_lab.elapsed().as_secs_f64();
    println!("    lab ready in {build_lab_s:.1} s");

    let ip = hv.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    // WEFT_BENCH_MIGRATION_CONCURRENCY: the controller's --migration-concurrency (its
    // default otherwise).
    let concurrency = std::env::var("WEFT_BENCH_MIGRATION_CONCURRENCY").ok();
    let shard_pool = crate::bench_networks::bench_shard_pool(lab.x());
    let mut flags = vec![
        "--shard-pool",
        shard_pool.as_str(),
        "--migration-timeout",
        "10s",
    ];
    if let Some(c) = &concurrency {
        flags.extend(["--migration-concurrency", c.as_str()]);
    }
    let data_dir = lab.dir().join("controller-data");
    // Failover: two replicas on one etcd sharing the data directory (tokens), the first
    // the leader, the second a serving follower; a lease of 2 s.
    let replica = |name: &'static str| -> Vec<&str> {
        let mut f = flags.clone();
        if let Some(url) = failover {
            f.extend([
                "--etcd",
                url,
                "--etcd-lease-ttl",
                "2s",
                "--replica-name",
                name,
                "--topology-checkpoint-interval",
                "1s",
            ]);
        }
        f
    };
    let mut controller = start_controller(lab.dir(), &grpc, &http, &data_dir, &replica("ctl-a"))?;
    let (grpc_b, http_b) = (
        format!("{ip}:{}", free_port(&ip)?),
        format!("127.0.0.1:{}", free_port("127.0.0.1")?),
    );
    let mut follower = match failover {
        Some(_) => Some(start_controller_as(
            lab.dir(),
            &grpc_b,
            &http_b,
            &data_dir,
            &replica("ctl-b"),
            "weft-controller-b",
            "weft-controller following",
        )?),
        None => None,
    };
    // The replica the bench talks to (the follower once it took over).
    let c = &controller;

    // The agent, release, managing the 256 workloads (the prober is left out).
    let file = lab.dir().join("workloads-hv1.toml");
    let mut toml = String::new();
    for (i, ns) in ns_names.iter().enumerate() {
        let name = format!("w{i}");
        let _ = write!(
            toml,
            "[[workload]]\nname = {}\ninterface = {}\nnetns = {}\ndevice = \"eth0\"\n\n",
            toml_str(&name),
            toml_str(&names::host_ifname(&name)),
            toml_str(ns)
        );
    }
    std::fs::write(&file, toml)?;
    let agent_bin = release_binary("weft-agent")?.to_string_lossy().into_owned();
    let file_s = file.to_string_lossy().into_owned();
    let url = match failover {
        Some(_) => format!("http://{grpc},http://{grpc_b}"),
        None => format!("http://{grpc}"),
    };
    let prober_if = names::host_ifname("prober");
    // As the lab starts its agents: nsenter (the host's mount namespace, where cgroups and
    // bpffs are mounted; `ip netns exec` would remount /sys), its node directory, node
    // cgroup, volume pool and pins in the lab's own places.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", hv.netns.name()))
        .arg("--")
        .current_dir("/");
    cmd.arg(&agent_bin)
        .arg("--node-dir")
        .arg(lab.dir().join("nodes-hv1"))
        .args(["--node-cgroup", lab.node_netns_prefix(&hv.name).as_str()])
        .arg("--volume-pool")
        .arg(lab.dir().join("volume-pool-hv1"))
        .arg("--bpffs-dir")
        .arg(lab.bpffs_dir().join(&hv.name));
    cmd.args([
        "--host-id",
        &hv.name,
        "--controller",
        &url,
        "--insecure",
        "--workloads",
        &file_s,
        "--interfaces",
        "wl-*",
        "--metrics-listen",
        "127.0.0.1:9464",
        "--drain-interval-ms",
        "1000",
        "--exclude",
        &prober_if,
    ]);
    cmd.arg("--state-file")
        .arg(lab.dir().join("agent-state-hv1.json"));
    // The agent's re-address mode: the specification's down-up by default,
    // WEFT_BENCH_READDRESS_MODE=make-before-break to measure the other.
    cmd.args(["--readdress-mode", mode]);
    // WEFT_BENCH_AGENT_ARGS: more agent flags, for comparisons (e.g. `--drift-repair resync`).
    if let Ok(extra) = std::env::var("WEFT_BENCH_AGENT_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let mut agent = Child::spawn(cmd, lab.dir(), "weft-agent-release")?;
    let logs = |c: &Controller, a: &Child| {
        format!("controller:\n{}\nagent:\n{}", c.child.tail(20), a.tail(20))
    };
    let ta = Instant::now();
    eventually(Duration::from_secs(120), Duration::from_millis(200), || {
        ensure!(agent.is_running(), "the agent exited");
        let n = agent.count_lines(&["weft-agent attached"]);
        ensure!(
            n >= WORKLOADS,
            "agent attached to {n} of {WORKLOADS} interfaces"
        );
        Ok(())
    })
    .with_context(|| logs(c, &agent))?;
    println!(
        "    agent attached to {WORKLOADS} interfaces in {:.1} s",
        ta.elapsed().as_secs_f64()
    );

    let create = || {
        c.json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": 22, "network_id": MIG_NETWORK})),
        )
    };
    let old = create().with_context(|| logs(c, &agent))?;
    let old_id = old["id"].as_str().context("shard id")?.to_owned();
    let gw = |s: &Value| -> Result<String> {
        Ok(format!(
            "{}/{}",
            s["gateway"].as_str().context("gateway")?,
            s["prefix_len"].as_u64().context("prefix_len")?
        ))
    };
    hv.netns.ip(&["addr", "add", &gw(&old)?, "dev", "br0"])?;
    let mut first: Vec<IpAddr> = Vec::new();
    for i in 0..WORKLOADS {
        let a = c.json(
            "POST",
            &format!("/networks/{MIG_NETWORK}/addresses"),
            Some(&json!({"workload": format!("w{i}"), "host_id": hv.name, "family": "ipv4"})),
        )?;
        first.push(a["address"].as_str().context("address")?.parse()?);
    }
    let new = create()?;
    hv.netns.ip(&["addr", "add", &gw(&new)?, "dev", "br0"])?;
    println!(
        "    shard {old_id} holds {WORKLOADS} allocations; second shard {}",
        new["id"]
    );

    let tw = Instant::now();
    for (i, a) in first.iter().enumerate() {
        let ns = &extra.ns[i];
        eventually(Duration::from_secs(60), Duration::from_millis(100), || {
            let out = ns.ip(&["-4", "addr", "show", "dev", "eth0"])?;
            ensure!(out.contains(&format!("{a}/")), "w{i} has no {a} yet: {out}");
            Ok(())
        })
        .with_context(|| logs(c, &agent))?;
    }
    println!(
        "    every workload has its address on eth0 ({:.1} s)",
        tw.elapsed().as_secs_f64()
    );

    let targets = Arc::new(Mutex::new(
        first.iter().map(|a| vec![*a]).collect::<Vec<_>>(),
    ));
    let replies: Replies = Arc::new(Mutex::new(vec![Vec::new(); WORKLOADS]));
    let prober = {
        let (t, r, s) = (targets.clone(), replies.clone(), stop.clone());
        let ns = lab.workload("prober")?.netns.name().to_owned();
        std::thread::spawn(move || probe(ns, t, r, s))
    };
    eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        let r = replies.lock().map_err(|_| anyhow!("poisoned"))?;
        let silent = r.iter().filter(|v| v.is_empty()).count();
        ensure!(silent == 0, "{silent} workloads do not answer yet");
        Ok(())
    })
    .with_context(|| logs(c, &agent))?;
    // A second of steady probing before the migration.
    std::thread::sleep(Duration::from_secs(1));
    println!("    all {WORKLOADS} workloads answer the prober; deleting shard {old_id}");

    let index: Arc<HashMap<String, usize>> =
        Arc::new((0..WORKLOADS).map(|i| (format!("w{i}"), i)).collect());
    // When the prober learned each workload's new address.
    let learned: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; WORKLOADS]));
    let learn = {
        let (index, targets, learned) = (index.clone(), targets.clone(), learned.clone());
        move |workload: &str, a: IpAddr| {
            if let Some(w) = index.get(workload)
                && let Ok(mut t) = targets.lock()
                && !t[*w].contains(&a)
            {
                t[*w].push(a);
                if let Ok(mut l) = learned.lock() {
                    l[*w] = Some(Instant::now());
                }
            }
        }
    };
    // New addresses as the controller allocates them (its event stream), and from the
    // migration's moves as a fallback.
    let events = follow_allocations(&http, stop.clone(), learn.clone())?;
    let follow = |m: &Value| {
        for mv in m["moves"].as_array().into_iter().flatten() {
            if let (Some(w), Some(a)) = (
                mv["workload"].as_str(),
                mv["new_address"]
                    .as_str()
                    .and_then(|a| a.parse::<IpAddr>().ok()),
            ) {
                learn(w, a);
            }
        }
    };
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (status, body) = c.send(
        "DELETE",
        &format!("/networks/{MIG_NETWORK}/shards/{old_id}"),
        None,
    )?;
    ensure!(
        status == 202,
        "deallocating a shard in use starts a migration: {status} {body}"
    );
    let v: Value = serde_json::from_str(&body)?;
    let mid = v["migration_id"]
        .as_str()
        .context("migration id")?
        .to_owned();
    // Polled every 20 ms; with a follower, the leader is killed once a quarter of the
    // moves are done and the follower (restarting itself as the leader) is polled after.
    let mut failed_over: Option<FailoverFigures> = None;
    let mut later_events = None;
    let poll_until = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let current = match (&failed_over, &follower) {
            (Some(_), Some(b)) => b,
            _ => &controller,
        };
        let m = current
            .json("GET", &format!("/migrations/{mid}"), None)
            .with_context(|| logs(current, &agent))?;
        follow(&m);
        if m["state"] == "Completed" {
            break m;
        }
        ensure!(
            Instant::now() < poll_until,
            "migration {mid} not completed within 120 s: {m}\n{}",
            logs(current, &agent)
        );
        let moved = m["moved"].as_u64().unwrap_or(0);
        let moves = m["total"].as_u64().unwrap_or(WORKLOADS as u64);
        if failed_over.is_none() && follower.is_some() && moved * 4 >= moves {
            controller.child.kill_hard();
            let killed = Instant::now();
            let b = follower.as_mut().context("the follower")?;
            b.child
                .wait_for_line(&["weft-controller listening"], Duration::from_secs(30))
                .context("the follower takes over")?;
            let takeover = killed.elapsed();
            println!(
                "    leader killed with {moved} of {moves} moves done ({} after the DELETE); the follower serves as the leader {} later",
                ms(killed.duration_since(started)),
                ms(takeover)
            );
            later_events = Some(follow_allocations(
                &b.http_addr,
                stop.clone(),
                learn.clone(),
            )?);
            failed_over = Some(FailoverFigures {
                killed_after: killed.duration_since(started),
                moved_at_kill: moved,
                moves,
                takeover,
                dependencies: 0,
                requests: 0,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(
        follower.is_none() || failed_over.is_some(),
        "the migration completed before a quarter of its moves was seen: the leader was never killed"
    );
    let total = started.elapsed();
    let c = match (&failed_over, &follower) {
        (Some(_), Some(b)) => b,
        _ => &controller,
    };
    follow(&done);
    println!("    migration completed in {}", ms(total));
    let new_of: Vec<Option<IpAddr>> = {
        let mut v = vec![None; WORKLOADS];
        for mv in done["moves"].as_array().context("moves")? {
            if let (Some(w), Some(a)) = (
                mv["workload"].as_str().and_then(|w| index.get(w)),
                mv["new_address"]
                    .as_str()
                    .and_then(|a| a.parse::<IpAddr>().ok()),
            ) {
                v[*w] = Some(a);
            }
        }
        v
    };
    let answered_new = |r: &[Vec<(Instant, IpAddr)>]| -> usize {
        (0..WORKLOADS)
            .filter(|&i| {
                new_of[i].is_some_and(|a| r[i].iter().any(|(t, x)| *x == a && *t > started))
            })
            .count()
    };
    let _ = eventually(Duration::from_secs(10), Duration::from_millis(10), || {
        let r = replies.lock().map_err(|_| anyhow!("poisoned"))?;
        let n = answered_new(&r);
        ensure!(
            n == WORKLOADS,
            "{n} of {WORKLOADS} answered at their new address"
        );
        Ok(())
    });
    // A little more probing, so the end of each window is seen.
    std::thread::sleep(Duration::from_millis(200));
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let prober_stall = prober.join().map_err(|_| anyhow!("prober panicked"))??;
    let _ = events.join();
    if let Some(e) = later_events {
        let _ = e.join();
    }
    for h in echoes {
        let _ = h.join();
    }

    let r = replies.lock().map_err(|_| anyhow!("poisoned"))?;
    let mut readdress = Vec::new();
    let mut gaps = Vec::new();
    let mut gap_starts = Vec::new();
    let mut not_answered = 0;
    for i in 0..WORKLOADS {
        match new_of[i].and_then(|a| r[i].iter().find(|(t, x)| *x == a && *t > started)) {
            Some((t, _)) => readdress.push(t.duration_since(started)),
            None => not_answered += 1,
        }
        let (gap, from) = longest_gap(&r[i], started, end);
        gaps.push(gap);
        gap_starts.push(from.duration_since(started));
    }
    let down_us: Vec<u64> = done["moves"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|mv| mv["down_us"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let learned = learned.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    if let Ok(path) = std::env::var("WEFT_BENCH_DUMP") {
        // Every reply, for working on the windows: one line per workload.
        let mut out = String::new();
        let at = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1e3;
        for i in 0..WORKLOADS {
            let rs: Vec<(f64, bool)> = r[i]
                .iter()
                .filter(|(t, _)| *t > started)
                .map(|(t, a)| (at(*t), *a == first[i]))
                .collect();
            let _ = writeln!(
                out,
                "{}",
                json!({"w": i, "old": first[i].to_string(), "new": new_of[i].map(|a| a.to_string()),
                       "learned_ms": learned[i].map(at), "replies": rs})
            );
        }
        let _ = writeln!(out, "{}", json!({"started_unix_ms": started_wall}));
        std::fs::write(&path, out)?;
        for e in std::fs::read_dir(lab.dir())?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("weft-agent") || name.starts_with("controller") {
                let _ = std::fs::copy(e.path(), format!("{path}.{name}"));
            }
        }
    }
    let breakdown = WindowBreakdown::of(&r, &first, &new_of, &learned, started);
    breakdown.print();
    let mut g = gaps.clone();
    g.sort();
    println!(
        "    unreachability p50 {} p99 {} max {}; {not_answered} never answered at the new address",
        ms(pct(&g, 0.5)),
        ms(pct(&g, 0.99)),
        ms(g.last().copied().unwrap_or_default())
    );
    gap_starts.sort();
    println!(
        "    windows began {} to {} after the DELETE (p50 {}); the prober's longest round interval {}",
        ms(gap_starts.first().copied().unwrap_or_default()),
        ms(gap_starts.last().copied().unwrap_or_default()),
        ms(pct(&gap_starts, 0.5)),
        ms(prober_stall)
    );
    let old_shard = c.json("GET", &format!("/shards/{old_id}"), None)?;
    ensure!(
        old_shard["resource_count"] == 0,
        "the old shard still counts allocations: {old_shard}"
    );
    let moved_to: HashSet<IpAddr> = new_of.iter().flatten().copied().collect();
    ensure!(
        moved_to.len() == WORKLOADS,
        "{} distinct new addresses for {WORKLOADS} workloads: one missing or handed out twice",
        moved_to.len()
    );
    let mut restarted = None;
    if let Some(f) = failed_over.as_mut() {
        // The killed replica comes back as a follower (the other holds the lease); once
        // the agent's last records are in (the prober stopped), either replica must give
        // the same topology, which merges what each replica holds.
        let a = start_controller_as(
            lab.dir(),
            &grpc,
            &http,
            &data_dir,
            &replica("ctl-a"),
            "weft-controller-a2",
            "weft-controller following",
        )?;
        let (dependencies, requests) = same_topology(c, &a)?;
        println!(
            "    both replicas answer the same topology: {dependencies} dependencies, {requests} packets"
        );
        f.dependencies = dependencies;
        f.requests = requests;
        restarted = Some(a);
    }
    // WEFT_BENCH_KEEP_LOGS=DIR: the agent's and the controller's output kept there (the
    // lab's directory goes with the lab).
    if let Ok(dir) = std::env::var("WEFT_BENCH_KEEP_LOGS") {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            std::path::Path::new(&dir).join(format!("agent-{mode}.log")),
            agent.output(),
        )?;
        std::fs::write(
            std::path::Path::new(&dir).join(format!("controller-{mode}.log")),
            controller.child.output(),
        )?;
    }
    drop(agent);
    drop(restarted);
    drop(follower);
    drop(controller);
    Ok(MigFigures {
        failover: failed_over,
        workloads: WORKLOADS,
        build_lab_s,
        total,
        readdress,
        gaps,
        down_us,
        not_answered,
        gap_starts,
        prober_stall,
        breakdown,
        neighbour_limits: String::new(),
        mode: mode.to_owned(),
        runs: Vec::new(),
        flags: if concurrency.is_some() {
            flags.join(" ")
        } else {
            format!("{} (default --migration-concurrency)", flags.join(" "))
        },
    })
}

/// The agent's re-address modes the migration benchmark runs: both (the specification's
/// down-up, then make-before-break), or the one WEFT_BENCH_READDRESS_MODE names.
fn readdress_modes() -> Vec<String> {
    match std::env::var("WEFT_BENCH_READDRESS_MODE") {
        Ok(m) => vec![m],
        Err(_) => vec!["down-up".to_owned(), "make-before-break".to_owned()],
    }
}
