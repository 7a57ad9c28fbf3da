//! `cargo xtask bench networks` (and the end of `cargo xtask bench`): TDL networks made real
//! by the agent (issue 11), on release binaries in the namespace lab, each figure beside a
//! baseline measured in the same run.
//!
//! 1. Realize and remove N = 100 and 1,000 nodes on one hypervisor: `POST /networks` of a
//!    TDL star (N nodes, no image or command, no connections) until `GET
//!    /networks/{id}/status` says `in_sync` with every node applied; `DELETE` until every
//!    node namespace, the bridge and the host-side veths are gone. Baseline: the same
//!    topology made with iproute2's batch mode (one `ip -batch` in the hypervisor namespace
//!    for the namespaces, the bridge and the veth pairs, then one `ip -n NODE -batch` per
//!    node for `lo`/`eth0` up and its address; removal: one `ip -batch` of `netns del` and
//!    the bridge), waited for by the same check. The agent's own time comes from its debug
//!    lines (`network-node reconcile ... ms=`).
//! 2. Drift: a network of 3 nodes; 100 injections each of an address deleted in a node, the
//!    node's nftables table deleted, its eth0 set down. A bare netlink listener in the node's
//!    namespace (rtnetlink link/address/route groups and the nftables group) timestamps the
//!    kernel's events: injection -> event is the baseline (the least any event-driven
//!    detector can take), and the restoring event is the state back as seen from outside.
//!    The drift items of the status give the agent's detected/repaired times. A quiet period
//!    (no injection, one full resync included) counts false drift.
//!
//! 3. Propagation: network `propnet` (the drift network's shape) and its mirror `propnetdr`
//!    on the same hypervisor; 100 times an inbound rule of a source node deleted by hand
//!    (`nft delete rule`), kept there and carried to the mirror. Bare listeners in the
//!    source node's and the mirror node's namespaces timestamp the two kernel events (the
//!    rule deleted in the source, then in the mirror): the difference is the propagation,
//!    every step of it (the source agent's detection and report, the controller taking it
//!    in, the mirror's desired state and its agent's apply). Then `PUT` of the same TDL
//!    puts both back (a new definition replaces hand changes).
//!
//! The figures go into BENCHMARKS.md between the `networks` markers (other sections stay).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::Lab;
use weft_lab::weft::{Agent, Controller, free_port};

use crate::sh;

const BEGIN: &str = "<!-- networks:begin (written by `cargo xtask bench networks`) -->";
const END: &str = "<!-- networks:end -->";

/// Sizes of the star networks.
const SIZES: [usize; 2] = [100, 1000];
/// Shard network all the bench's networks take their addresses from.
const POOL_NETWORK: &str = "benchpool";
/// `--shard-pool`: a /21, two /22 shards (2 x 1,021 addresses) for 1,000 nodes.
/// `--shard-pool` of a bench lab numbered `x`: a /21 in the lab range (198.18.0.0/15) clear of
/// this lab's own 198.18.x.0/24 (other labs' blocks do not matter: the bench's workloads
/// and nodes are in namespaces of their own).
pub(crate) fn bench_shard_pool(x: u8) -> String {
    format!("{}/21", pool_base(x))
}

/// The first address of [`bench_shard_pool`].
fn pool_base(x: u8) -> Ipv4Addr {
    if x >= 248 {
        Ipv4Addr::new(198, 18, 240, 0)
    } else {
        Ipv4Addr::new(198, 18, 248, 0)
    }
}
const SHARD_PREFIX: u32 = 22;
/// Drift injections per kind.
const INJECTIONS: usize = 100;
/// Quiet period (no injection) for false drift: longer than the agent's 30 s resync.
const QUIET: Duration = Duration::from_secs(35);
const DRIFT_NET: &str = "driftnet";
const DRIFT_TDL: &str = "\
network: driftnet
addressing:
  shards: benchpool
nodes:
  a:
    ports: [7001]
  b:
    ports: [7001]
  c: {}
connections:
  a -> b:
    port: 7001
  c -> b:
    port: 7001
";
/// The node drift is injected into.
const DRIFT_NODE: &str = "b";
/// The propagation part's source network and its mirror (same shape as the drift one).
const PROP_NET: &str = "propnet";
const PROP_MIRROR: &str = "propnetdr";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn first_line(cmd: &mut Command) -> String {
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

/// A request to the controller's REST API with its own timeout; (status, body).
pub(crate) fn call(
    c: &Controller,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let url = c.http_url(path);
    let req = c
        .client()?
        .request(method, &url)
        .set("authorization", &c.authorization())
        .timeout(timeout);
    let result = match body {
        Some(b) => req
            .set("content-type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e).with_context(|| format!("{method} {url}")),
    };
    let status = resp.status();
    Ok((status, resp.into_string().context("reading the body")?))
}

pub(crate) fn call_json(
    c: &Controller,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value> {
    let (code, text) = call(c, method, path, body, timeout)?;
    ensure!(
        (200..300).contains(&code),
        "{method} {path}: {code} {}",
        text.chars().take(600).collect::<String>()
    );
    serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON"))
}

/// Builds the release binaries `packages` for a lab benchmark and checks it runs as root.
pub(crate) fn release_binaries(what: &str, packages: &[&str]) -> Result<()> {
    sh::step(&format!("{what}: release binaries"));
    let mut cargo = sh::cargo();
    cargo.args(["build", "--release"]);
    for p in packages {
        cargo.args(["-p", p]);
    }
    sh::run_inherit(&mut cargo)?;
    ensure!(
        weft_lab::is_root(),
        "the {what} benchmark needs root (namespace lab)"
    );
    Ok(())
}

/// Rounds of a lab benchmark: `WEFT_BENCH_ROUNDS`, default 3, at least 1.
pub(crate) fn bench_rounds() -> usize {
    std::env::var("WEFT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// The median of `v` (sorted in place); NaN when empty.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Waits (at most `limit` from `t0`) until network `name` is in sync with `nodes` nodes
/// applied.
pub(crate) fn wait_synced(
    c: &Controller,
    name: &str,
    nodes: usize,
    t0: std::time::Instant,
    limit: Duration,
) -> Result<()> {
    while !synced(&status(c, name)?, nodes) {
        ensure!(t0.elapsed() < limit, "{name} not in sync after {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `POST /networks` of `tdl` on `hosts`, retried for 30 s (until the agents registered).
pub(crate) fn post_network(c: &Controller, tdl: &str, file: &str, hosts: &[&str]) -> Result<Value> {
    let t0 = std::time::Instant::now();
    loop {
        let (code, body) = call(
            c,
            "POST",
            "/networks",
            Some(&json!({"tdl": tdl, "file_name": file, "hosts": hosts})),
            Duration::from_secs(60),
        )?;
        if code == 201 {
            return serde_json::from_str::<Value>(&body).context("POST /networks: not JSON");
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "POST /networks {file}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn status(c: &Controller, net: &str) -> Result<Value> {
    call_json(
        c,
        "GET",
        &format!("/networks/{net}/status"),
        None,
        Duration::from_secs(30),
    )
}

/// Whether the status says in sync with `nodes` network-node resources applied.
pub(crate) fn synced(s: &Value, nodes: usize) -> bool {
    if s["in_sync"] != json!(true) {
        return false;
    }
    let Some(hosts) = s["hosts"].as_array() else {
        return false;
    };
    if hosts.is_empty() {
        return false;
    }
    let applied = hosts
        .iter()
        .flat_map(|h| h["resources"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["kind"] == json!("network-node") && r["state"] == json!("applied"))
        .count();
    applied == nodes
}

/// Node namespaces whose name starts with `prefix` (a read of /run/netns).
fn count_netns(prefix: &str) -> usize {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

/// Whether the hypervisor namespace still has `bridge` or a link named `veth_prefix*`.
fn links_left(hv_ns: &str, bridge: &str, veth_prefix: &str) -> Result<(bool, usize)> {
    let out = weft_lab::cmd::run(Command::new("ip").args(["-n", hv_ns, "-o", "link", "show"]))?;
    let mut bridge_there = false;
    let mut veths = 0;
    for l in out.lines() {
        let Some(name) = l.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name == bridge {
            bridge_there = true;
        }
        if name.starts_with(veth_prefix) {
            veths += 1;
        }
    }
    Ok((bridge_there, veths))
}

/// Waits (bounded) until no namespace starts with `ns_prefix` and the hypervisor has
/// neither `bridge` nor `veth_prefix*` links; (namespaces gone, everything gone) since `t0`.
fn wait_gone(
    t0: Instant,
    hv_ns: &str,
    ns_prefix: &str,
    bridge: &str,
    veth_prefix: &str,
    limit: Duration,
) -> Result<(Duration, Duration)> {
    let mut ns_gone = None;
    loop {
        let elapsed = t0.elapsed();
        if ns_gone.is_none() && count_netns(ns_prefix) == 0 {
            ns_gone = Some(elapsed);
        }
        if let Some(ns) = ns_gone {
            let (b, v) = links_left(hv_ns, bridge, veth_prefix)?;
            if !b && v == 0 {
                return Ok((ns, t0.elapsed()));
            }
        }
        if elapsed > limit {
            bail!(
                "not removed within {limit:?}: {} namespaces {ns_prefix}*, links {:?}",
                count_netns(ns_prefix),
                links_left(hv_ns, bridge, veth_prefix).ok()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Figures of one realize/remove of N nodes.
#[derive(Debug, Default, Clone)]
struct Scale {
    nodes: usize,
    base_make: Duration,
    base_make_batch: Duration,
    base_remove_ns: Duration,
    base_remove: Duration,
    base_remove_batch: Duration,
    weft_post: Duration,
    weft_make: Duration,
    weft_remove_call: Duration,
    weft_remove_ns: Duration,
    weft_remove: Duration,
    /// The agent's debug lines during the make: (nodes, ms) of each network-node reconcile.
    agent_make: Vec<(u64, u64)>,
    agent_remove: Vec<(u64, u64)>,
    /// The agent's "applied" lines (took_us) during the make and the remove.
    agent_applied_make: Vec<u64>,
    agent_applied_remove: Vec<u64>,
    status_bytes: usize,
    status_polls: usize,
    /// The `steps` of the agent's largest network-node reconcile of the make.
    agent_steps: Option<String>,
}

/// `line` without ANSI escape sequences (the agent's log is coloured).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=value` of a log line, as a number.
fn field(line: &str, key: &str) -> Option<u64> {
    plain(line)
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

/// The agent's output lines from line `from` on.
fn agent_lines(agent: &Agent, from: usize) -> Vec<String> {
    agent
        .child
        .output()
        .lines()
        .skip(from)
        .map(str::to_owned)
        .collect()
}

fn reconcile_lines(lines: &[String]) -> (Vec<(u64, u64)>, Vec<u64>) {
    let mut node = Vec::new();
    let mut applied = Vec::new();
    for l in lines {
        if l.contains("network-node reconcile") {
            if let (Some(n), Some(ms)) = (field(l, "nodes"), field(l, "ms")) {
                node.push((n, ms));
            }
        } else if l.contains(" applied")
            && l.contains("took_us")
            && let Some(us) = field(l, "took_us")
        {
            applied.push(us);
        }
    }
    (node, applied)
}

fn star_tdl(net: &str, n: usize) -> String {
    let mut t = format!("network: {net}\naddressing:\n  shards: {POOL_NETWORK}\nnodes:\n");
    for i in 0..n {
        let _ = writeln!(t, "  n{i:04}: {{}}");
    }
    t
}

/// The ip-batch baseline of an N-node star in the hypervisor namespace `hv_ns`.
fn baseline(lab: &Lab, hv_ns: &str, n: usize, s: &mut Scale) -> Result<()> {
    let prefix = format!("{}-ipb{n}-", lab.node_netns_prefix("hv1"));
    let bridge = format!("ipbbr{n}");
    let dir = lab.dir().join(format!("ipbatch-{n}"));
    std::fs::create_dir_all(&dir)?;
    let mut main = format!("link add {bridge} type bridge\nlink set {bridge} up\n");
    for i in 0..n {
        let _ = writeln!(main, "netns add {prefix}{i}");
    }
    for i in 0..n {
        let _ = writeln!(
            main,
            "link add ipb{i} type veth peer name eth0 netns {prefix}{i}"
        );
        let _ = writeln!(main, "link set ipb{i} addrgenmode none master {bridge} up");
    }
    let main_file = dir.join("make.batch");
    std::fs::write(&main_file, main)?;
    let base = u32::from(pool_base(lab.x()));
    let mut per_node = Vec::with_capacity(n);
    for i in 0..n {
        let a = Ipv4Addr::from(base + 2 + i as u32);
        let f = dir.join(format!("n{i}.batch"));
        std::fs::write(
            &f,
            format!(
                "link set lo up\nlink set eth0 addrgenmode none up\naddr add {a}/21 dev eth0\n"
            ),
        )?;
        per_node.push(f);
    }
    let mut remove = String::new();
    for i in 0..n {
        let _ = writeln!(remove, "netns del {prefix}{i}");
    }
    let _ = writeln!(remove, "link del {bridge}");
    let remove_file = dir.join("remove.batch");
    std::fs::write(&remove_file, remove)?;

    let in_hv = |file: &Path| -> Result<()> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{hv_ns}"))
            .args(["--", "timeout", "120", "ip", "-batch"])
            .arg(file);
        weft_lab::cmd::run(&mut c).map(|_| ())
    };
    let t0 = Instant::now();
    in_hv(&main_file).context("ip -batch (make)")?;
    s.base_make_batch = t0.elapsed();
    for (i, f) in per_node.iter().enumerate() {
        let ns = format!("{prefix}{i}");
        let mut c = Command::new("ip");
        c.args(["-n", &ns, "-batch"]).arg(f);
        weft_lab::cmd::run(&mut c).with_context(|| format!("ip -n {ns} -batch"))?;
    }
    s.base_make = t0.elapsed();
    ensure!(
        count_netns(&prefix) == n,
        "ip-batch baseline: {} of {n} namespaces",
        count_netns(&prefix)
    );
    let last = format!("{prefix}{}", n - 1);
    let out = weft_lab::cmd::run(
        Command::new("ip").args(["-n", &last, "-4", "addr", "show", "dev", "eth0"]),
    )?;
    ensure!(
        out.contains(&format!("{}/21", Ipv4Addr::from(base + 1 + n as u32))),
        "ip-batch baseline: {last} eth0 {out}"
    );
    let t0 = Instant::now();
    in_hv(&remove_file).context("ip -batch (remove)")?;
    s.base_remove_batch = t0.elapsed();
    let (ns, all) = wait_gone(t0, hv_ns, &prefix, &bridge, "ipb", Duration::from_secs(120))?;
    s.base_remove_ns = ns;
    s.base_remove = all;
    Ok(())
}

/// weft: POST the star, until in sync; DELETE, until gone.
fn weft_star(
    lab: &Lab,
    c: &Controller,
    agent: &Agent,
    hv_ns: &str,
    n: usize,
    s: &mut Scale,
) -> Result<()> {
    let net = format!("star{n}");
    let tdl = star_tdl(&net, n);
    let ns_prefix = format!("{}-{net}-", lab.node_netns_prefix("hv1"));
    let bridge = agent_common_bridge(&net);
    let from = agent.child.output().lines().count();
    let t0 = Instant::now();
    let created = call_json(
        c,
        "POST",
        "/networks",
        Some(&json!({"tdl": tdl, "file_name": format!("{net}.tdl"), "hosts": ["hv1"]})),
        Duration::from_secs(120),
    )
    .context("POST /networks")?;
    s.weft_post = t0.elapsed();
    let limit = Duration::from_secs(180);
    loop {
        let (code, text) = call(
            c,
            "GET",
            &format!("/networks/{net}/status"),
            None,
            Duration::from_secs(30),
        )?;
        s.status_polls += 1;
        ensure!(code == 200, "status: {code} {text}");
        let v: Value = serde_json::from_str(&text)?;
        if synced(&v, n) {
            s.weft_make = t0.elapsed();
            s.status_bytes = text.len();
            break;
        }
        if t0.elapsed() > limit {
            let failed: Vec<&Value> = v["hosts"][0]["resources"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter(|x| x["state"] != json!("applied"))
                        .take(3)
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "{net} not in sync within {limit:?}; e.g. {failed:?}\nagent:\n{}",
                agent.child.tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = agent_lines(agent, from);
    // The agent's per-step totals of the big reconciles (where its own time went).
    let least = n.div_ceil(2) as u64;
    for l in lines
        .iter()
        .filter(|l| l.contains("network-node reconcile"))
    {
        if field(l, "nodes").is_some_and(|k| k >= least) {
            let l = plain(l);
            println!("    agent: {l}");
            if let Some((_, steps)) = l.split_once("steps=") {
                s.agent_steps = Some(steps.trim().to_owned());
            }
        }
    }
    let (rec, applied) = reconcile_lines(&lines);
    s.agent_make = rec;
    s.agent_applied_make = applied;
    // From outside: every namespace, and the last node's address on its eth0.
    ensure!(
        count_netns(&ns_prefix) == n,
        "{} of {n} namespaces {ns_prefix}*",
        count_netns(&ns_prefix)
    );
    let last = format!("n{:04}", n - 1);
    let addr = created["placement"][&last]["addresses"][0]
        .as_str()
        .with_context(|| format!("no address for {last}"))?
        .to_owned();
    let out = weft_lab::cmd::run(Command::new("ip").args([
        "-n",
        &format!("{ns_prefix}{last}"),
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
    ]))?;
    ensure!(out.contains(&addr), "{last}: {addr} not on eth0: {out}");

    let from = agent.child.output().lines().count();
    let t0 = Instant::now();
    call_json(
        c,
        "DELETE",
        &format!("/networks/{net}"),
        None,
        Duration::from_secs(120),
    )?;
    s.weft_remove_call = t0.elapsed();
    let (ns, all) = wait_gone(
        t0,
        hv_ns,
        &ns_prefix,
        &bridge,
        "wn",
        Duration::from_secs(180),
    )
    .with_context(|| format!("agent:\n{}", agent.child.tail(20)))?;
    s.weft_remove_ns = ns;
    s.weft_remove = all;
    // The agent's lines of the removal (they may come a moment after the check).
    std::thread::sleep(Duration::from_millis(300));
    let (rec, applied) = reconcile_lines(&agent_lines(agent, from));
    s.agent_remove = rec;
    s.agent_applied_remove = applied;
    Ok(())
}

/// The agent's bridge name of a network (agent-common's netnames, FNV-1a).
fn agent_common_bridge(network: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("wb{:08x}", h as u32)
}

// ---------------------------------------------------------------------------------------
// Drift.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Address,
    Table,
    Link,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Address => "address deleted (RTM_DELADDR, as `ip -n NS addr del`)",
            Kind::Table => {
                "nftables table deleted (NFT_MSG_DELTABLE, as `nft delete table inet weft`)"
            }
            Kind::Link => "eth0 set down (RTM_NEWLINK, as `ip -n NS link set eth0 down`)",
        }
    }
}

/// What the bare listener saw.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Link {
        name: String,
        up: bool,
    },
    Addr {
        new: bool,
        addr: Ipv4Addr,
    },
    DefaultRoute {
        new: bool,
    },
    Table {
        new: bool,
        name: String,
    },
    /// A rule added or deleted in table `table`.
    Rule {
        new: bool,
        table: String,
    },
}

#[derive(Debug, Default, Clone)]
struct Shot {
    /// Injection (just before the command) -> the kernel's event at the bare listener.
    event: Option<u64>,
    /// -> the agent's detected_unix_ns.
    detected: Option<u64>,
    /// -> the agent's repaired_unix_ns.
    repaired: Option<u64>,
    /// -> the restoring event at the bare listener (the state back, from outside).
    back: Option<u64>,
    /// Drift items this injection made.
    items: usize,
    /// The full state (address, link up, table, default route) checked after the repair.
    state_ok: bool,
}

fn nl_socket(proto: i32, groups: u32) -> Result<OwnedFd> {
    nl_socket_with(proto, groups, libc::SOCK_NONBLOCK)
}

fn nl_socket_with(proto: i32, groups: u32, extra: i32) -> Result<OwnedFd> {
    // SAFETY: plain socket calls; the fd is owned at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | extra,
            proto,
        );
        ensure!(
            fd >= 0,
            "netlink socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        let rc = libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        ensure!(rc == 0, "netlink bind: {}", std::io::Error::last_os_error());
        let size: libc::c_int = 4 << 20;
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        Ok(fd)
    }
}

fn attrs(buf: &[u8], mut off: usize, end: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while off + 4 <= end {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > end {
            break;
        }
        out.push((kind, &buf[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn parse(buf: &[u8], netfilter: bool) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
        if len < 16 || off + len > buf.len() {
            break;
        }
        let body = off + 16;
        let end = off + len;
        if netfilter {
            // NFNL_SUBSYS_NFTABLES (10) << 8 | NFT_MSG_NEWTABLE (0) / DELTABLE (2).
            let (sub, msg) = (kind >> 8, kind & 0xff);
            // NFT_MSG_NEWRULE (6) / DELRULE (8): NFTA_RULE_TABLE (1).
            if sub == 10 && (msg == 6 || msg == 8) && body + 4 <= end {
                let table = attrs(buf, body + 4, end)
                    .into_iter()
                    .find(|(k, _)| *k == 1)
                    .map(|(_, v)| String::from_utf8_lossy(v).trim_end_matches('\0').to_owned())
                    .unwrap_or_default();
                out.push(Ev::Rule {
                    new: msg == 6,
                    table,
                });
            }
            if sub == 10 && (msg == 0 || msg == 2) && body + 4 <= end {
                let name = attrs(buf, body + 4, end)
                    .into_iter()
                    .find(|(k, _)| *k == 1)
                    .map(|(_, v)| String::from_utf8_lossy(v).trim_end_matches('\0').to_owned())
                    .unwrap_or_default();
                out.push(Ev::Table {
                    new: msg == 0,
                    name,
                });
            }
        } else {
            match kind {
                libc::RTM_NEWLINK | libc::RTM_DELLINK if body + 16 <= end => {
                    let flags = u32::from_ne_bytes(buf[body + 8..body + 12].try_into().expect("4"));
                    let name = attrs(buf, body + 16, end)
                        .into_iter()
                        .find(|(k, _)| *k == libc::IFLA_IFNAME)
                        .map(|(_, v)| String::from_utf8_lossy(v).trim_end_matches('\0').to_owned())
                        .unwrap_or_default();
                    out.push(Ev::Link {
                        name,
                        up: kind == libc::RTM_NEWLINK && flags & libc::IFF_UP as u32 != 0,
                    });
                }
                libc::RTM_NEWADDR | libc::RTM_DELADDR
                    if body + 8 <= end && buf[body] == libc::AF_INET as u8 =>
                {
                    for (k, v) in attrs(buf, body + 8, end) {
                        if k == libc::IFA_LOCAL && v.len() == 4 {
                            out.push(Ev::Addr {
                                new: kind == libc::RTM_NEWADDR,
                                addr: Ipv4Addr::new(v[0], v[1], v[2], v[3]),
                            });
                        }
                    }
                }
                // rtmsg: family, dst_len, src_len, tos, table.
                libc::RTM_NEWROUTE | libc::RTM_DELROUTE
                    if body + 12 <= end
                        && buf[body] == libc::AF_INET as u8
                        && buf[body + 1] == 0
                        && buf[body + 4] == libc::RT_TABLE_MAIN =>
                {
                    out.push(Ev::DefaultRoute {
                        new: kind == libc::RTM_NEWROUTE,
                    });
                }
                _ => {}
            }
        }
        off += (len + 3) & !3;
    }
    out
}

/// A request message: header, fixed part, attributes (already laid out).
fn nlmsg(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity((len + 3) & !3);
    m.extend((len as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(body);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

fn nlattr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(4 + value.len() + 3);
    a.extend(((4 + value.len()) as u16).to_ne_bytes());
    a.extend(kind.to_ne_bytes());
    a.extend(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

/// Sends `msg` on `fd` (a blocking socket with a receive timeout) and reads the kernel's
/// acknowledgement; the unix ns just before the send.
fn request(fd: &OwnedFd, msg: &[u8], what: &str) -> Result<u64> {
    let t = now_ns();
    // SAFETY: sending our own buffer to the kernel.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    ensure!(
        sent == msg.len() as isize,
        "{what}: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 8192];
    // SAFETY: reading into our own buffer.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    ensure!(
        n >= 20,
        "{what}: no acknowledgement: {}",
        std::io::Error::last_os_error()
    );
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    ensure!(
        kind == libc::NLMSG_ERROR as u16,
        "{what}: answer of type {kind}"
    );
    let error = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
    ensure!(
        error == 0,
        "{what}: {}",
        std::io::Error::from_raw_os_error(-error)
    );
    Ok(t)
}

/// What the listener thread needs to inject drift itself (in its namespace).
struct Injector {
    route: OwnedFd,
    nft: OwnedFd,
    ifindex: u32,
    addr: Ipv4Addr,
    prefix: u8,
    seq: u32,
}

impl Injector {
    fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self> {
        let ifindex = {
            let name = c"eth0";
            // SAFETY: a NUL-terminated name.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        };
        ensure!(ifindex != 0, "no eth0 in the node's namespace");
        let blocking = |proto| -> Result<OwnedFd> {
            let fd = nl_socket_with(proto, 0, 0)?;
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: a receive timeout on our socket.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            Ok(fd)
        };
        Ok(Self {
            route: blocking(libc::NETLINK_ROUTE)?,
            nft: blocking(libc::NETLINK_NETFILTER)?,
            ifindex,
            addr,
            prefix,
            seq: 0,
        })
    }

    /// Makes the change of `kind` with one netlink request; the unix ns just before it.
    fn inject(&mut self, kind: Kind) -> Result<u64> {
        self.seq += 1;
        let ack = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        match kind {
            Kind::Address => {
                // ifaddrmsg: family, prefix, flags, scope, index; IFA_LOCAL, IFA_ADDRESS.
                let mut b = vec![libc::AF_INET as u8, self.prefix, 0, 0];
                b.extend(self.ifindex.to_ne_bytes());
                b.extend(nlattr(libc::IFA_LOCAL, &self.addr.octets()));
                b.extend(nlattr(libc::IFA_ADDRESS, &self.addr.octets()));
                request(
                    &self.route,
                    &nlmsg(libc::RTM_DELADDR, ack, self.seq, &b),
                    "RTM_DELADDR",
                )
            }
            Kind::Link => {
                // ifinfomsg: family, pad, type, index, flags (0: down), change (IFF_UP).
                let mut b = vec![0u8, 0, 0, 0];
                b.extend((self.ifindex as i32).to_ne_bytes());
                b.extend(0u32.to_ne_bytes());
                b.extend((libc::IFF_UP as u32).to_ne_bytes());
                request(
                    &self.route,
                    &nlmsg(libc::RTM_NEWLINK, ack, self.seq, &b),
                    "RTM_NEWLINK down",
                )
            }
            Kind::Table => {
                // One nfnetlink batch: begin, NFT_MSG_DELTABLE inet "weft", end.
                let subsys = 10u16; // NFNL_SUBSYS_NFTABLES
                let mut batch_gen = vec![libc::AF_UNSPEC as u8, 0];
                batch_gen.extend(subsys.to_be_bytes());
                let mut m = nlmsg(0x10, libc::NLM_F_REQUEST as u16, self.seq, &batch_gen);
                let mut del = vec![1u8 /* NFPROTO_INET */, 0, 0, 0];
                del.extend(nlattr(1 /* NFTA_TABLE_NAME */, b"weft\0"));
                m.extend(nlmsg((subsys << 8) | 2, ack, self.seq + 1, &del));
                m.extend(nlmsg(
                    0x11,
                    libc::NLM_F_REQUEST as u16,
                    self.seq + 2,
                    &batch_gen,
                ));
                self.seq += 2;
                request(&self.nft, &m, "NFT_MSG_DELTABLE")
            }
        }
    }
}

/// The bare listener: in namespace `netns` (this thread only), rtnetlink's link, IPv4
/// address and route groups and nftables' group; every event timestamped (unix ns) as it
/// is read.
/// Injection requests to the listener thread, answered with the injection's unix ns.
type Inject = (Kind, mpsc::Sender<Result<u64>>);

/// Moves this thread into namespace `netns`.
fn enter(netns: &Path) -> Result<()> {
    let f = std::fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns on this thread with a valid namespace fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns {}: {}",
            netns.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The injecting thread (its own, so that the listener is never busy injecting).
fn inject_loop(
    netns: PathBuf,
    target: (Ipv4Addr, u8),
    injections: mpsc::Receiver<Inject>,
) -> Result<()> {
    enter(&netns)?;
    let mut injector = Injector::new(target.0, target.1)?;
    while let Ok((kind, reply)) = injections.recv() {
        let _ = reply.send(injector.inject(kind));
    }
    Ok(())
}

fn listen(netns: PathBuf, tx: mpsc::Sender<(u64, Ev)>, stop: Arc<AtomicBool>) -> Result<()> {
    enter(&netns)?;
    let route = nl_socket(
        libc::NETLINK_ROUTE,
        (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV4_ROUTE) as u32,
    )?;
    let nft = nl_socket(libc::NETLINK_NETFILTER, 0)?;
    let group: libc::c_int = 7; // NFNLGRP_NFTABLES
    // SAFETY: joining a multicast group on our socket.
    let rc = unsafe {
        libc::setsockopt(
            nft.as_raw_fd(),
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            &group as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    ensure!(
        rc == 0,
        "NFNLGRP_NFTABLES: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            libc::pollfd {
                fd: route.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: nft.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polling our own fds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if n <= 0 {
            continue;
        }
        for (i, fd) in [&route, &nft].into_iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            loop {
                // SAFETY: reading into our own buffer.
                let r =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if r <= 0 {
                    break;
                }
                let at = now_ns();
                for ev in parse(&buf[..r as usize], i == 1) {
                    let _ = tx.send((at, ev));
                }
            }
        }
    }
    Ok(())
}

/// Drift items of the status: (key, detected, repaired, error).
fn drift_items(s: &Value) -> Vec<(String, u64, u64, String)> {
    s["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["drift"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            (
                d["key"].as_str().unwrap_or_default().to_owned(),
                d["detected_unix_ns"].as_u64().unwrap_or(0),
                d["repaired_unix_ns"].as_u64().unwrap_or(0),
                d["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

struct DriftResult {
    shots: BTreeMap<&'static str, (Kind, Vec<Shot>)>,
    quiet: Duration,
    false_items: usize,
    unexpected_items: usize,
    address: String,
    had_route: bool,
}

fn state_ok(ns: &str, addr: &str, had_route: bool) -> bool {
    let ip = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["-n", ns]).args(args);
        weft_lab::cmd::run(&mut c).unwrap_or_default()
    };
    let a = ip(&["-4", "-o", "addr", "show", "dev", "eth0"]).contains(&format!("{addr}/"));
    let l = ip(&["-o", "link", "show", "dev", "eth0"]).contains(",UP");
    let r = !had_route || ip(&["-4", "route", "show", "default"]).contains("default");
    let t = weft_lab::cmd::run(
        weft_lab::netns::command_in(
            ns,
            &["timeout", "5", "nft", "list", "table", "inet", "weft"],
        )
        .stderr(Stdio::null()),
    )
    .map(|o| o.contains("policy drop"))
    .unwrap_or(false);
    a && l && r && t
}

fn drift(lab: &Lab, c: &Controller, agent: &Agent) -> Result<DriftResult> {
    call_json(
        c,
        "POST",
        "/networks",
        // Repair measured here: with the default (propagate), this source would keep
        // the addresses removed by hand.
        Some(
            &json!({"tdl": DRIFT_TDL, "file_name": "driftnet.tdl", "hosts": ["hv1"], "source_drift": "repair"}),
        ),
        Duration::from_secs(30),
    )?;
    let net = call_json(
        c,
        "GET",
        &format!("/networks/{DRIFT_NET}"),
        None,
        Duration::from_secs(10),
    )?;
    let t0 = Instant::now();
    while !synced(&status(c, DRIFT_NET)?, 3) {
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "{DRIFT_NET} not in sync\n{}",
            agent.child.tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cidr = net["placement"][DRIFT_NODE]["addresses"][0]
        .as_str()
        .context("no address for the drift node")?
        .to_owned();
    let (addr, prefix) = cidr.split_once('/').context("address without prefix")?;
    let addr_v4: Ipv4Addr = addr.parse()?;
    let ns = format!("{}-{DRIFT_NET}-{DRIFT_NODE}", lab.node_netns_prefix("hv1"));
    let key = format!("{DRIFT_NET}/{DRIFT_NODE}");
    let had_route =
        weft_lab::cmd::run(Command::new("ip").args(["-n", &ns, "-4", "route", "show", "default"]))?
            .contains("default");
    ensure!(
        state_ok(&ns, addr, had_route),
        "{ns} not as desired before the injections"
    );

    // Quiet: no injection; any drift item is false drift.
    let quiet_from = now_ns();
    let before: usize = drift_items(&status(c, DRIFT_NET)?).len();
    println!("    quiet period: {} s without injections", QUIET.as_secs());
    std::thread::sleep(QUIET);
    let false_items = drift_items(&status(c, DRIFT_NET)?)
        .iter()
        .filter(|d| d.1 >= quiet_from)
        .count();
    let _ = before;

    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let path = PathBuf::from("/run/netns").join(&ns);
    let (inject_tx, inject_rx) = mpsc::channel::<Inject>();
    let target = (addr_v4, prefix.parse::<u8>().context("prefix")?);
    let path2 = path.clone();
    let listener = std::thread::spawn(move || listen(path, tx, stop2));
    let injecting = std::thread::spawn(move || inject_loop(path2, target, inject_rx));
    struct StopGuard(Arc<AtomicBool>);
    impl Drop for StopGuard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _guard = StopGuard(stop.clone());
    std::thread::sleep(Duration::from_millis(200));

    let mut shots: BTreeMap<&'static str, (Kind, Vec<Shot>)> = BTreeMap::new();
    let mut seen = now_ns();
    let mut unexpected = 0;
    for (label, kind) in [
        ("a_address", Kind::Address),
        ("b_table", Kind::Table),
        ("c_link", Kind::Link),
    ] {
        let mut list = Vec::with_capacity(INJECTIONS);
        for i in 0..INJECTIONS {
            std::thread::sleep(Duration::from_millis(20));
            while rx.try_recv().is_ok() {}
            let (reply_tx, reply_rx) = mpsc::channel();
            inject_tx
                .send((kind, reply_tx))
                .map_err(|_| anyhow::anyhow!("the listener thread ended"))?;
            let t_inj = reply_rx
                .recv_timeout(Duration::from_secs(5))
                .with_context(|| format!("{label} injection {i}: no answer"))?
                .with_context(|| format!("{label} injection {i}"))?;
            let mut shot = Shot::default();
            // The listener: the injected change, then the state back.
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && shot.back.is_none() {
                let Ok((at, ev)) = rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let (gone, back) = match (&ev, kind) {
                    (Ev::Addr { new, addr }, Kind::Address) if *addr == addr_v4 => (!new, *new),
                    (Ev::Table { new, name }, Kind::Table) if name == "weft" => (!new, *new),
                    (Ev::Link { name, up }, Kind::Link) if name == "eth0" => (!up, *up),
                    _ => (false, false),
                };
                if gone && shot.event.is_none() {
                    shot.event = Some(at.saturating_sub(t_inj));
                } else if back && shot.event.is_some() {
                    shot.back = Some(at.saturating_sub(t_inj));
                }
            }
            // The drift items of this injection, in the status.
            let end = Instant::now() + Duration::from_secs(3);
            loop {
                let items: Vec<_> = drift_items(&status(c, DRIFT_NET)?)
                    .into_iter()
                    .filter(|d| d.1 > seen)
                    .collect();
                let mine: Vec<_> = items.iter().filter(|d| d.0 == key).collect();
                if let Some(first) = mine.iter().min_by_key(|d| d.1)
                    && (first.2 > 0 || !first.3.is_empty())
                {
                    shot.detected = Some(first.1.saturating_sub(t_inj));
                    if first.2 > 0 {
                        shot.repaired = Some(first.2.saturating_sub(t_inj));
                    }
                    // Items that come a moment later for the same injection count too.
                    std::thread::sleep(Duration::from_millis(30));
                    let items: Vec<_> = drift_items(&status(c, DRIFT_NET)?)
                        .into_iter()
                        .filter(|d| d.1 > seen)
                        .collect();
                    shot.items = items.iter().filter(|d| d.0 == key).count();
                    unexpected += items.iter().filter(|d| d.0 != key).count();
                    seen = items.iter().map(|d| d.1).max().unwrap_or(seen);
                    break;
                }
                if Instant::now() > end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            shot.state_ok = state_ok(&ns, addr, had_route);
            if !shot.state_ok {
                // Give the repair a moment more before the next injection.
                std::thread::sleep(Duration::from_millis(500));
            }
            list.push(shot);
        }
        shots.insert(label, (kind, list));
    }
    stop.store(true, Ordering::Relaxed);
    drop(inject_tx);
    match injecting.join() {
        Ok(r) => r?,
        Err(_) => bail!("the injecting thread panicked"),
    }
    match listener.join() {
        Ok(r) => r?,
        Err(_) => bail!("the listener thread panicked"),
    }
    call_json(
        c,
        "DELETE",
        &format!("/networks/{DRIFT_NET}"),
        None,
        Duration::from_secs(30),
    )?;
    Ok(DriftResult {
        shots,
        quiet: QUIET,
        false_items,
        unexpected_items: unexpected,
        address: cidr,
        had_route,
    })
}

/// What the propagation part measured.
struct PropResult {
    /// Source's rule deleted -> the mirror's (kernel events at the two bare listeners), ns.
    propagated: Vec<u64>,
    /// Injections whose deletion never reached the mirror within 5 s.
    missing: usize,
    /// `PUT` of the TDL -> both rules back (status polled), ns.
    restored: Vec<u64>,
    injections: usize,
}

/// The user rules (`weft rule N` comments) of table `inet weft` in namespace `ns`, with
/// their handles.
fn user_rules(ns: &str) -> Result<Vec<String>> {
    let out = weft_lab::cmd::run(
        weft_lab::netns::command_in(
            ns,
            &[
                "timeout", "5", "nft", "-a", "list", "chain", "inet", "weft", "input",
            ],
        )
        .stderr(Stdio::null()),
    )?;
    Ok(out
        .lines()
        .filter(|l| l.contains("comment \"weft rule"))
        .filter_map(|l| l.rsplit("# handle ").next().map(|h| h.trim().to_owned()))
        .collect())
}

/// The first rule event of `table` on `rx` within `limit`, as (unix ns, new).
fn next_rule_event(rx: &mpsc::Receiver<(u64, Ev)>, new: bool, limit: Duration) -> Option<u64> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok((at, Ev::Rule { new: n, table })) = rx.recv_timeout(Duration::from_millis(20))
            && n == new
            && table == "weft"
        {
            return Some(at);
        }
    }
    None
}

fn propagation(lab: &Lab, c: &Controller, agent: &Agent) -> Result<PropResult> {
    let tdl = DRIFT_TDL.replace(DRIFT_NET, PROP_NET);
    call_json(
        c,
        "POST",
        "/networks",
        Some(&json!({"tdl": tdl, "file_name": "propnet.tdl", "hosts": ["hv1"]})),
        Duration::from_secs(30),
    )?;
    call_json(
        c,
        "POST",
        "/networks/mirror",
        Some(&json!({"source": PROP_NET, "destination": PROP_MIRROR, "hosts": ["hv1"]})),
        Duration::from_secs(30),
    )?;
    let t0 = Instant::now();
    while !(synced(&status(c, PROP_NET)?, 3) && synced(&status(c, PROP_MIRROR)?, 3)) {
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "{PROP_NET} and its mirror not in sync\n{}",
            agent.child.tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let src = format!("{}-{PROP_NET}-{DRIFT_NODE}", lab.node_netns_prefix("hv1"));
    let dr = format!(
        "{}-{PROP_MIRROR}-{DRIFT_NODE}",
        lab.node_netns_prefix("hv1")
    );
    let rules = user_rules(&src)?.len();
    ensure!(rules >= 2, "{src}: {rules} user rules, want 2");
    let stop = Arc::new(AtomicBool::new(false));
    struct StopGuard(Arc<AtomicBool>);
    impl Drop for StopGuard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _guard = StopGuard(stop.clone());
    let (src_tx, src_rx) = mpsc::channel();
    let (dr_tx, dr_rx) = mpsc::channel();
    let mut listeners = Vec::new();
    for (ns, tx) in [(&src, src_tx), (&dr, dr_tx)] {
        let path = PathBuf::from("/run/netns").join(ns);
        let stop = stop.clone();
        listeners.push(std::thread::spawn(move || listen(path, tx, stop)));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut out = PropResult {
        propagated: Vec::new(),
        missing: 0,
        restored: Vec::new(),
        injections: INJECTIONS,
    };
    for i in 0..INJECTIONS {
        std::thread::sleep(Duration::from_millis(20));
        while src_rx.try_recv().is_ok() {}
        while dr_rx.try_recv().is_ok() {}
        let handle = user_rules(&src)?
            .into_iter()
            .next()
            .with_context(|| format!("injection {i}: no user rule in {src}"))?;
        weft_lab::cmd::run(&mut weft_lab::netns::command_in(
            &src,
            &[
                "nft", "delete", "rule", "inet", "weft", "input", "handle", &handle,
            ],
        ))?;
        let at_src = next_rule_event(&src_rx, false, Duration::from_secs(3))
            .with_context(|| format!("injection {i}: no rule event in the source"))?;
        match next_rule_event(&dr_rx, false, Duration::from_secs(5)) {
            Some(at) => out.propagated.push(at.saturating_sub(at_src)),
            None => out.missing += 1,
        }
        // Both back: the same definition again replaces the hand change.
        let put = Instant::now();
        call_json(
            c,
            "PUT",
            &format!("/networks/{PROP_NET}"),
            Some(&json!({"tdl": tdl, "file_name": "propnet.tdl"})),
            Duration::from_secs(30),
        )?;
        loop {
            if user_rules(&src)?.len() == rules && user_rules(&dr)?.len() == rules {
                out.restored.push(put.elapsed().as_nanos() as u64);
                break;
            }
            ensure!(
                put.elapsed() < Duration::from_secs(10),
                "injection {i}: rules not back after PUT\n{}",
                agent.child.tail(20)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        match l.join() {
            Ok(r) => r?,
            Err(_) => bail!("a listener thread panicked"),
        }
    }
    for id in [PROP_MIRROR, PROP_NET] {
        call_json(
            c,
            "DELETE",
            &format!("/networks/{id}"),
            None,
            Duration::from_secs(30),
        )?;
    }
    Ok(out)
}

fn pct(v: &[u64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    Some(s[((s.len() - 1) as f64 * q).round() as usize] as f64 / 1e6)
}

fn ms(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.2} ms"))
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    release_binaries("networks", &["weft-controller", "weft-agent", "weft-cli"])?;
    // SAFETY: set before any thread of this process starts (the lab and the children read them).
    unsafe {
        std::env::set_var("WEFT_LAB_PROFILE", "release");
        // The agent's filter (`--log`, env WEFT_LOG): its reconcile and apply times.
        std::env::set_var(
            "WEFT_LOG",
            "info,netlink_packet_route=error,weft_agent::networks=debug,weft_agent::control::driver=debug",
        );
    }
    let load_before = loadavg();
    let lab = Lab::builder().hypervisor("hv1").build()?;
    let hv = lab.hypervisor();
    let hv_ns = hv.netns.name().to_owned();
    let ip = hv.uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let shard_pool = bench_shard_pool(lab.x());
    let c = Controller::start_with(&lab, &grpc, &http, &["--shard-pool", &shard_pool])?;
    let agent = Agent::start(&lab, 0, &c.grpc_url())?;
    for _ in 0..2 {
        c.json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": SHARD_PREFIX, "network_id": POOL_NETWORK})),
        )?;
    }
    // Until the agent registered, a network cannot be placed: a one-node warm-up network.
    let t0 = Instant::now();
    loop {
        let (code, body) = call(
            &c,
            "POST",
            "/networks",
            Some(&json!({"tdl": star_tdl("warm", 1), "file_name": "warm.tdl", "hosts": ["hv1"]})),
            Duration::from_secs(10),
        )?;
        if code == 201 {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "warm-up network: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    while !synced(&status(&c, "warm")?, 1) {
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "warm-up not in sync\n{}",
            agent.child.tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    call_json(
        &c,
        "DELETE",
        "/networks/warm",
        None,
        Duration::from_secs(30),
    )?;
    wait_gone(
        Instant::now(),
        &hv_ns,
        &format!("{}-warm-", lab.node_netns_prefix("hv1")),
        &agent_common_bridge("warm"),
        "wn",
        Duration::from_secs(30),
    )?;

    // WEFT_BENCH_SIZES=1000 (say): only those sizes (empty: none), and WEFT_BENCH_DRIFT=0
    // skips the drift part; for working on one figure (BENCHMARKS.md is then left as it is).
    let sizes: Vec<usize> = match std::env::var("WEFT_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => SIZES.to_vec(),
    };
    let partial = sizes != SIZES || std::env::var("WEFT_BENCH_DRIFT").as_deref() == Ok("0");
    let mut scales = Vec::new();
    for n in sizes {
        let mut s = Scale {
            nodes: n,
            ..Default::default()
        };
        sh::step(&format!("{n} nodes: ip -batch baseline"));
        baseline(&lab, &hv_ns, n, &mut s)?;
        println!(
            "    ip-batch: made in {} (main batch {}), removed in {} (namespaces gone {}, batch {})",
            ms(s.base_make),
            ms(s.base_make_batch),
            ms(s.base_remove),
            ms(s.base_remove_ns),
            ms(s.base_remove_batch)
        );
        std::thread::sleep(Duration::from_secs(2));
        sh::step(&format!("{n} nodes: weft (POST /networks, DELETE)"));
        weft_star(&lab, &c, &agent, &hv_ns, n, &mut s)?;
        println!(
            "    weft: in sync in {} (POST answered in {}), removed in {} (namespaces gone {}, DELETE answered in {}); agent node reconciles (nodes, ms): make {:?}, remove {:?}",
            ms(s.weft_make),
            ms(s.weft_post),
            ms(s.weft_remove),
            ms(s.weft_remove_ns),
            ms(s.weft_remove_call),
            s.agent_make,
            s.agent_remove
        );
        scales.push(s);
        std::thread::sleep(Duration::from_secs(2));
    }

    // WEFT_BENCH_DRIFT=0: no drift part (the propagation part still runs; a partial run).
    let d = if std::env::var("WEFT_BENCH_DRIFT").as_deref() == Ok("0") {
        None
    } else {
        sh::step(&format!("drift: {INJECTIONS} injections of each kind"));
        Some(drift(&lab, &c, &agent)?)
    };
    sh::step(&format!(
        "propagation: {INJECTIONS} rules deleted by hand in a source, carried to its mirror"
    ));
    let p = propagation(&lab, &c, &agent)?;
    println!(
        "    propagated p50 {}, p99 {} ({} of {} missing); restored by PUT p50 {}",
        fmt_opt(pct(&p.propagated, 0.5)),
        fmt_opt(pct(&p.propagated, 0.99)),
        p.missing,
        p.injections,
        fmt_opt(pct(&p.restored, 0.5))
    );
    let load_after = loadavg();
    let Some(d) = d else {
        println!("(partial run: BENCHMARKS.md left as it is)");
        return Ok(());
    };
    let md = render(
        &scales,
        &d,
        &p,
        &load_before,
        &load_after,
        started.elapsed(),
    );
    print!("{md}");
    if partial {
        println!("(partial run: BENCHMARKS.md left as it is)");
    } else {
        splice(&md)?;
    }
    Ok(())
}

fn agent_ms(v: &[(u64, u64)], min_nodes: usize) -> String {
    let big: Vec<String> = v
        .iter()
        .filter(|(n, _)| *n as usize >= min_nodes)
        .map(|(n, ms)| format!("{ms} ms ({n} nodes)"))
        .collect();
    if big.is_empty() {
        "–".into()
    } else {
        big.join(", ")
    }
}

fn render(
    scales: &[Scale],
    d: &DriftResult,
    p: &PropResult,
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(md, "## TDL networks on one hypervisor (release binaries)\n");
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let nproc = first_line(&mut Command::new("nproc"));
    let kernel = first_line(Command::new("uname").args(["-r"]));
    let iproute = first_line(Command::new("ip").arg("-V"));
    let _ = writeln!(md, "- **Date**: {date}");
    let _ = writeln!(
        md,
        "- **Machine**: {nproc} CPUs, {}, Linux {kernel}; {iproute}",
        cpu_model()
    );
    let _ = writeln!(
        md,
        "- **Command**: `cargo xtask bench networks` (also part of `cargo xtask bench`); binaries from `cargo build --release -p weft-controller -p weft-agent -p weft-cli`"
    );
    let _ = writeln!(
        md,
        "- **Load average** (1/5/15 min): {load_before} before, {load_after} after ({} s in all; other work on the machine shows here)\n",
        took.as_secs()
    );
    let _ = writeln!(md, "### Realize and remove a star of N nodes\n");
    let _ = writeln!(
        md,
        "The namespace lab with one hypervisor; release controller (`--shard-pool` a /21 of 198.18.0.0/15, two /{SHARD_PREFIX} shards of network `{POOL_NETWORK}`) and agent (`RUST_LOG=info,weft_agent::networks=debug`). **weft**: `POST /networks` of a TDL with N nodes (`nX: {{}}`: no image, no command, no connections; one address each from the shards) for `hosts: [hv1]`, then `GET /networks/{{id}}/status` every 20 ms until `in_sync` with N network-node resources applied (each node: a named namespace, a veth on the network's bridge, `lo` and `eth0` up, its address and default route, its nftables table `inet weft` with default-deny input); removal: `DELETE /networks/{{id}}` until no node namespace is left under /run/netns and neither the bridge nor any host-side veth is left in the hypervisor namespace (checked every 10 ms). **ip -batch baseline** of the same topology, in the same run and hypervisor namespace: one `ip -batch` (under `nsenter --net`) with the bridge, N `netns add` and N `link add ... type veth peer name eth0 netns NODE` + `link set ... addrgenmode none master BR up`, then one `ip -n NODE -batch` per node (`lo` up, `eth0` up with `addrgenmode none`, one address: 1 + N processes; iproute2 has no per-line namespace switch); removal: one `ip -batch` of N `netns del` and `link del BR`, waited for by the same check. The baseline makes no firewall and no default route; weft does both. Both make no IPv6 link-local address on either end of a node's veth (weft gives one only to nodes with IPv6 addresses): with them, each node's duplicate address detection and MLD reports are flooded to every port of the bridge (`ip -batch` of 1,000 nodes here: 6.3 s with, 4.2 s without).\n"
    );
    let _ = writeln!(
        md,
        "| N | phase | weft | ip -batch | weft / ip -batch | target | weft detail | agent's own time (network-node reconcile) |\n|---|---|---|---|---|---|---|---|"
    );
    for s in scales {
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                "–".to_string()
            } else {
                format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
            }
        };
        let target = |d: Duration| {
            if s.nodes == 1000 {
                if d <= Duration::from_secs(5) {
                    "≤ 5 s: met"
                } else {
                    "≤ 5 s: **not met**"
                }
            } else {
                "–"
            }
        };
        let _ = writeln!(
            md,
            "| {} | realize | **{}** | {} | {} | {} | POST answered in {}; {} status polls, the last {} KiB | {} |",
            fmt_int(s.nodes),
            ms(s.weft_make),
            ms(s.base_make),
            ratio(s.weft_make, s.base_make),
            target(s.weft_make),
            ms(s.weft_post),
            s.status_polls,
            s.status_bytes / 1024,
            agent_ms(&s.agent_make, 1),
        );
        let _ = writeln!(
            md,
            "| {} | remove | **{}** | {} | {} | {} | DELETE answered in {}; namespaces gone at {} (ip -batch: {}, its batch returned at {}) | {} |",
            fmt_int(s.nodes),
            ms(s.weft_remove),
            ms(s.base_remove),
            ratio(s.weft_remove, s.base_remove),
            target(s.weft_remove),
            ms(s.weft_remove_call),
            ms(s.weft_remove_ns),
            ms(s.base_remove_ns),
            ms(s.base_remove_batch),
            agent_ms(&s.agent_remove, 1),
        );
    }
    for s in scales {
        if let Some(steps) = &s.agent_steps {
            let _ = writeln!(
                md,
                "\nWhere the agent's time went at {} nodes (its reconcile's `steps`: step=count/total; a node step's total is summed over the nodes, up to 64 in flight at once (the agent's default), so it is waiting as much as working; `netns_create_all` and `nodes_all` are wall times): `{steps}`.",
                fmt_int(s.nodes),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nFor reference (issue 11, this kind of machine, a 1,000-host star): Mininet 21–43 s, one `ip` per step 26 s, `ip -batch` 12.2 s, raw netlink from one C program 7.8 s. The agent's own time is the `ms` of its `network-node reconcile` debug lines in the window (one line per reconcile pass of the node kind; the rest of the wall time is the controller's POST/DELETE (TDL, placement, address allocation), the desired state's trip to the agent, the report's trip back and the status poll).\n"
    );

    let _ = writeln!(md, "### Drift detection and repair\n");
    let _ = writeln!(
        md,
        "Network `{DRIFT_NET}` of 3 nodes (a -> b and c -> b on port 7001) on the same agent; node `{DRIFT_NODE}` ({}{}) gets {INJECTIONS} injections of each kind, 20 ms apart after the previous repair, each one netlink request from a thread in the node's namespace (its own thread; the same request `ip`/`nft` would send, without a process start in the measurement), timed from just before its send(2). A bare netlink listener in the node's namespace (rtnetlink groups link, IPv4 address, IPv4 route; nfnetlink group NFNLGRP_NFTABLES; poll(2), timestamped as read) sees the kernel's event of the change (**baseline**: the least any event-driven detector can take, in the same run) and the restoring event (the address added back, the table made again, eth0 up: **state back, seen from outside**). After each injection the status is read (every 5 ms) for the new drift item of `{DRIFT_NET}/{DRIFT_NODE}`: `detected_unix_ns` (when the agent received the event) and `repaired_unix_ns`, both against the injection time. Then the full state (address, eth0 up, table with its default drop, default route) is checked with `ip`/`nft`.\n",
        d.address,
        if d.had_route {
            ", with a default route"
        } else {
            ""
        },
    );
    let _ = writeln!(
        md,
        "| injection | n | baseline: kernel event at a bare listener p50 / p99 | weft detected p50 / p99 | detected / baseline (p50, p99) | weft repaired p50 / p99 | state back (listener) p50 / p99 | items per injection | state right after |\n|---|---|---|---|---|---|---|---|---|"
    );
    let mut all_det = Vec::new();
    let mut all_rep = Vec::new();
    for (kind, shots) in d.shots.values() {
        let ev: Vec<u64> = shots.iter().filter_map(|s| s.event).collect();
        let det: Vec<u64> = shots.iter().filter_map(|s| s.detected).collect();
        let rep: Vec<u64> = shots.iter().filter_map(|s| s.repaired).collect();
        let back: Vec<u64> = shots.iter().filter_map(|s| s.back).collect();
        all_det.extend(det.iter().copied());
        all_rep.extend(rep.iter().copied());
        let ratio = |q: f64| match (pct(&det, q), pct(&ev, q)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".into(),
        };
        let items: usize = shots.iter().map(|s| s.items).sum();
        let missing = shots.iter().filter(|s| s.detected.is_none()).count();
        let ok = shots.iter().filter(|s| s.state_ok).count();
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {} / {} | {}, {} | {} / {} | {} / {} | {:.2}{} | {ok} of {} |",
            kind.label(),
            shots.len(),
            fmt_opt(pct(&ev, 0.5)),
            fmt_opt(pct(&ev, 0.99)),
            fmt_opt(pct(&det, 0.5)),
            fmt_opt(pct(&det, 0.99)),
            ratio(0.5),
            ratio(0.99),
            fmt_opt(pct(&rep, 0.5)),
            fmt_opt(pct(&rep, 0.99)),
            fmt_opt(pct(&back, 0.5)),
            fmt_opt(pct(&back, 0.99)),
            items as f64 / shots.len().max(1) as f64,
            if missing > 0 {
                format!(" ({missing} without an item)")
            } else {
                String::new()
            },
            shots.len(),
        );
    }
    let det99 = pct(&all_det, 0.99);
    let rep99 = pct(&all_rep, 0.99);
    let verdict = |v: Option<f64>, t: f64| match v {
        Some(x) if x <= t => "met",
        Some(_) => "**not met**",
        None => "not measured",
    };
    let _ = writeln!(
        md,
        "\nAll {} injections: detected p99 {} (target ≤ 10 ms: {}), repaired p99 {} (target ≤ 100 ms: {}). False drift: {} drift items over a {} s quiet period without injections (one full resync included), {} items of other nodes during the injections.\n",
        all_det.len(),
        fmt_opt(det99),
        verdict(det99, 10.0),
        fmt_opt(rep99),
        verdict(rep99, 100.0),
        d.false_items,
        d.quiet.as_secs(),
        d.unexpected_items,
    );
    let _ = writeln!(
        md,
        "Why this baseline: bench_drift's approach (an in-process RTM_DELADDR, then waiting for the agent's RTM_NEWADDR) measures only the round trip and only for addresses; a bare listener in the same namespace sees the same kernel event at the same moment as the agent could at best, for all three kinds (including nftables), so `detected / baseline` is the agent's own overhead.\n"
    );
    let _ = writeln!(
        md,
        "### A change made by hand in a source, carried to its mirror\n"
    );
    let _ = writeln!(
        md,
        "Network `{PROP_NET}` (the drift network's shape; `source_drift: propagate`, the default) and its mirror `{PROP_MIRROR}`, both on the same agent. {} times one inbound rule of the source's node `{DRIFT_NODE}` is deleted with `nft delete rule inet weft input handle H`; the source's agent keeps it (not repaired) and reports it, the controller takes it into the source's desired state and the mirror's, and the mirror's agent deletes the rule there. Bare nf_tables listeners in both node namespaces timestamp the two kernel events: **source -> mirror** is the whole propagation. Then `PUT /networks/{PROP_NET}` of the same TDL replaces the hand change and both get the rule back (checked with `nft` every 5 ms).\n",
        p.injections
    );
    let _ = writeln!(
        md,
        "| | n | p50 | p99 |\n|---|---|---|---|\n| rule deleted in the source -> deleted in the mirror (kernel events) | {} | {} | {} |\n| `PUT` of the TDL -> the rule back in both | {} | {} | {} |\n",
        p.propagated.len(),
        fmt_opt(pct(&p.propagated, 0.5)),
        fmt_opt(pct(&p.propagated, 0.99)),
        p.restored.len(),
        fmt_opt(pct(&p.restored, 0.5)),
        fmt_opt(pct(&p.restored, 0.99)),
    );
    if p.missing > 0 {
        let _ = writeln!(
            md,
            "**{} of {} deletions never reached the mirror within 5 s.**\n",
            p.missing, p.injections
        );
    }
    let _ = writeln!(md, "{END}");
    md
}

fn fmt_int(value: usize) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Replaces the networks section of BENCHMARKS.md (or appends it).
fn splice(section: &str) -> Result<()> {
    splice_section(section, BEGIN, END, "networks")
}

/// Replaces the section of BENCHMARKS.md between the markers `begin` and `end` (which
/// `section` starts with and ends with), or appends it.
pub(crate) fn splice_section(section: &str, begin: &str, end: &str, name: &str) -> Result<()> {
    let path = sh::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            section,
            &old[e + end.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote the {name} section of {}", path.display());
    Ok(())
}
