//! A soak of the shard manager on etcd under random kills: two `weft-controller`
//! processes on one etcd (a writer and a standby), client threads running a seeded random
//! mix of allocations and releases against whichever of them serves, and a killer that
//! `kill -9`s the writer (and sometimes the standby) at random points and starts it again.
//!
//! Every answer is checked at once against a model of who holds which address:
//!
//! - an acknowledged allocation must not name an address that another acknowledged,
//!   unreleased allocation holds (no address has two owners), and its seq must be one
//!   never acknowledged before and greater than any earlier one of that address;
//! - a release of an address the client holds (with its seq) must succeed: a 404 or 409
//!   means an acknowledged allocation was lost;
//! - a lookup of a workload's addresses must list every allocation acknowledged to it and
//!   none released.
//!
//! A request whose answer was lost (the controller died with it, or refused it with a
//! 5xx after it may have reached the store) is *unknown*: never counted as acknowledged;
//! the client looks its workload up before touching it again and settles the model from
//! what the serving controller says. After each kill the clients pause and the store is
//! read directly from etcd ([`EtcdStore`], [`Index::load`]): every acknowledged allocation
//! is there with its seq, no acknowledged release is, and nothing else but allocations
//! whose answers were lost. At the end (every unknown settled) the store holds exactly the
//! model's allocations and the index's invariants hold.
//!
//! The seed fixes each client's operations and the killer's choices; the interleaving of
//! threads and processes is the machine's, so a run repeats in kind, not to the request.
//! Used by `cargo xtask soak shards-etcd` (full size) and the controller's test
//! `etcd_soak` (CI size).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use weft_shards::{Index, ShardConfig};
use weft_store::etcd_process::EtcdCluster;
use weft_store::{EtcdConfig, EtcdStore};

use crate::http1::Conn;
use crate::process::Child;
use crate::weft::free_port;

/// The network every client allocates in.
const NETWORK: &str = "soak";
/// Workloads per client (each is only ever touched by its client, one request at a time).
const WORKLOADS: usize = 16;
/// Addresses a workload holds at most: with 8 clients, 512 live allocations in two /22
/// shards (2,044 addresses), so addresses are reused about every two thousand allocations.
const MAX_HELD: usize = 4;
/// How long a client keeps trying to reach a serving controller for one request.
const NO_CONTROLLER: Duration = Duration::from_secs(60);
/// How long a takeover (or a paused client) may take before the run fails.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(30);
/// Violations kept for the report (the run stops at the first).
const MAX_VIOLATIONS: usize = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seeds every client's operations and the killer's choices.
    pub seed: u64,
    /// Operations that change the store (allocations and releases) to run at least.
    pub ops: u64,
    /// Kills (writer or standby) to make at least.
    pub kills: u32,
    /// Client threads.
    pub clients: usize,
    /// The `weft-controller` binary.
    pub controller: PathBuf,
    /// Where the run's directory (etcd data, controller logs) goes; removed afterwards.
    pub work_dir: PathBuf,
    /// The whole run fails past this.
    pub time_limit: Duration,
}

impl Options {
    pub fn new(controller: PathBuf, seed: u64, ops: u64, kills: u32) -> Self {
        Self {
            seed,
            ops,
            kills,
            clients: 8,
            controller,
            work_dir: std::env::temp_dir(),
            // Generous: a takeover takes the lease TTL (2 s) and a start; a debug
            // controller on a busy machine runs a few hundred operations a second.
            time_limit: Duration::from_secs(60 + ops / 50 + u64::from(kills) * 15),
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    /// Allocations and releases sent (lookups not counted).
    pub ops: u64,
    pub lookups: u64,
    pub allocations_acked: u64,
    pub releases_acked: u64,
    /// Requests whose answer was lost or refused after they may have reached the store.
    pub unknowns: u64,
    /// Of those, the ones answered with a 5xx.
    pub refused: u64,
    /// Of those, allocations found applied afterwards (adopted by their client).
    pub unknown_allocations_applied: u64,
    /// Requests sent again elsewhere because no connection could be made (never sent).
    pub not_sent: u64,
    pub writer_kills: u32,
    pub standby_kills: u32,
    /// Controllers that exited by themselves (a writer that lost its lease exits 3).
    pub self_exits: u32,
    /// From each writer kill to the next controller serving.
    pub takeovers: Vec<Duration>,
    /// Reads of the whole store from etcd during the run (after each kill).
    pub store_checks: u32,
    /// Allocations in the store at the end (every one acknowledged or settled).
    pub live_at_end: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn kills(&self) -> u32 {
        self.writer_kills + self.standby_kills
    }

    fn takeover_quantile(&self, q: f64) -> Duration {
        let mut t = self.takeovers.clone();
        t.sort_unstable();
        let i = ((t.len() as f64 * q) as usize).min(t.len().saturating_sub(1));
        t.get(i).copied().unwrap_or_default()
    }

    pub fn takeover_p50(&self) -> Duration {
        self.takeover_quantile(0.5)
    }

    pub fn takeover_max(&self) -> Duration {
        self.takeovers.iter().max().copied().unwrap_or_default()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}", self.seed)?;
        writeln!(
            f,
            "operations {} ({:.0}/s over {:.1} s) + {} lookups",
            self.ops,
            self.ops as f64 / self.elapsed.as_secs_f64().max(1e-3),
            self.elapsed.as_secs_f64(),
            self.lookups
        )?;
        writeln!(
            f,
            "acknowledged {} allocations, {} releases; {} unknown (answer lost, or {} a 5xx; {} of them allocations found applied), {} resent as never sent",
            self.allocations_acked,
            self.releases_acked,
            self.unknowns,
            self.refused,
            self.unknown_allocations_applied,
            self.not_sent
        )?;
        writeln!(
            f,
            "kills {} ({} writer, {} standby), {} exits by themselves; takeover p50 {:.2} s, max {:.2} s",
            self.kills(),
            self.writer_kills,
            self.standby_kills,
            self.self_exits,
            self.takeover_p50().as_secs_f64(),
            self.takeover_max().as_secs_f64()
        )?;
        write!(
            f,
            "store read from etcd {} times during the run and once at the end: 0 acknowledged allocations lost, 0 addresses with two owners, 0 released allocations back; {} allocations live at the end",
            self.store_checks, self.live_at_end
        )
    }
}

/// A directory removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One of the two controllers: fixed ports, so clients know where to look, and the
/// process now running there.
struct Slot {
    name: &'static str,
    http: String,
    grpc: String,
    child: Option<Child>,
}

/// The two controllers on one etcd.
struct Pair {
    slots: [Slot; 2],
    bin: PathBuf,
    etcd: String,
    data_dir: PathBuf,
    log_dir: PathBuf,
}

impl Pair {
    fn spawn(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        if let Some(mut old) = slot.child.take() {
            old.kill_hard();
        }
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--grpc-listen", &slot.grpc, "--http-listen", &slot.http])
            .args(["--log", "warn", "--insecure", "--etcd", &self.etcd])
            .args(["--etcd-lease-ttl", "2s", "--standby", "wait", "--data-dir"])
            .arg(&self.data_dir);
        let child = Child::spawn(cmd, &self.log_dir, slot.name)?.with_grace(Duration::from_secs(1));
        slot.child = Some(child);
        Ok(())
    }

    /// The slot whose controller serves: running, and has announced its listeners (a
    /// standby does so only once it holds the lease).
    fn writer(&mut self) -> Option<usize> {
        (0..2).find(|&i| {
            self.slots[i]
                .child
                .as_mut()
                .is_some_and(|c| c.is_running() && c.count_lines(&["listening", "http="]) > 0)
        })
    }

    fn wait_writer(&mut self, limit: Duration) -> Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.writer() {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no controller serves {limit:?} after the kill; {}",
                    self.tails()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again a controller that exited by itself; how many did.
    fn restart_exited(&mut self) -> Result<u32> {
        let mut n = 0;
        for i in 0..2 {
            let exited = self.slots[i]
                .child
                .as_mut()
                .is_some_and(|c| !c.is_running());
            if exited {
                let status = self.slots[i].child.as_mut().and_then(Child::exit_status);
                eprintln!(
                    "soak: controller {} exited by itself ({status:?}); starting it again",
                    self.slots[i].name
                );
                self.spawn(i)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn tails(&self) -> String {
        self.slots
            .iter()
            .filter_map(|s| {
                s.child
                    .as_ref()
                    .map(|c| format!("{}:\n{}", s.name, c.tail(15)))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn kill_all(&mut self) {
        for s in &mut self.slots {
            if let Some(mut c) = s.child.take() {
                c.kill_hard();
            }
        }
    }
}

/// The model's view of one acknowledged allocation.
#[derive(Debug, Clone)]
struct Entry {
    workload: String,
    seq: u64,
    /// A release of it was sent and not answered yet, or its answer was lost.
    releasing: bool,
}

/// Who holds which address, as the acknowledgements say.
#[derive(Debug, Default)]
struct Model {
    live: HashMap<IpAddr, Entry>,
    /// Allocations acknowledged released, or found released.
    released: HashSet<(IpAddr, u64)>,
    /// Every seq acknowledged.
    seqs: HashSet<u64>,
    /// Workloads with an allocation whose answer was lost, not yet settled.
    pending: HashSet<String>,
}

impl Model {
    /// An allocation acknowledged (or found applied): checked against every other.
    fn acked(&mut self, address: IpAddr, seq: u64, workload: &str) -> Result<(), String> {
        if !self.seqs.insert(seq) {
            return Err(format!(
                "seq {seq} acknowledged twice (now {address} to {workload})"
            ));
        }
        if let Some(old) = self.live.get(&address) {
            if !old.releasing {
                return Err(format!(
                    "{address} acknowledged to {workload} (seq {seq}) while {} holds it (seq {}, acknowledged, never released)",
                    old.workload, old.seq
                ));
            }
            if old.seq >= seq {
                return Err(format!(
                    "{address} acknowledged to {workload} with seq {seq}, not after its earlier allocation (seq {})",
                    old.seq
                ));
            }
            // Its release's answer was lost, but it was applied: the address is free again.
            self.released.insert((address, old.seq));
        }
        self.live.insert(
            address,
            Entry {
                workload: workload.to_owned(),
                seq,
                releasing: false,
            },
        );
        Ok(())
    }

    fn set_releasing(&mut self, address: IpAddr, seq: u64, releasing: bool) {
        if let Some(e) = self.live.get_mut(&address).filter(|e| e.seq == seq) {
            e.releasing = releasing;
        }
    }

    fn gone(&mut self, address: IpAddr, seq: u64) {
        if self.live.get(&address).is_some_and(|e| e.seq == seq) {
            self.live.remove(&address);
        }
        self.released.insert((address, seq));
    }
}

/// What the clients and the killer share.
struct Shared {
    options: Options,
    addrs: [String; 2],
    token: String,
    model: Mutex<Model>,
    stop: AtomicBool,
    /// Set by the killer: clients finish their request and wait.
    pause: AtomicBool,
    paused: AtomicUsize,
    running: AtomicUsize,
    ops: AtomicU64,
    lookups: AtomicU64,
    allocations_acked: AtomicU64,
    releases_acked: AtomicU64,
    unknowns: AtomicU64,
    adopted: AtomicU64,
    not_sent: AtomicU64,
    refused: AtomicU64,
    violations: Mutex<Vec<String>>,
    deadline: Instant,
}

impl Shared {
    fn violation(&self, what: String) {
        eprintln!("soak: VIOLATION: {what}");
        let mut v = self.violations.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_VIOLATIONS {
            v.push(what);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What became of a request.
enum Sent {
    Answer(u16, String),
    /// Sent, and the answer lost (or a 5xx: the controller may have reached the store).
    Unknown,
}

#[derive(Debug, Clone)]
struct Held {
    address: IpAddr,
    seq: u64,
    /// A release was sent and its answer lost.
    release_unknown: bool,
}

#[derive(Debug, Default)]
struct Workload {
    name: String,
    held: Vec<Held>,
    /// An allocation for it was sent and its answer lost.
    pending_alloc: bool,
    /// Looked up before the next operation (something about it is unknown).
    dirty: bool,
}

struct Client<'a> {
    id: usize,
    shared: &'a Shared,
    rng: StdRng,
    at: usize,
    conn: Option<Conn>,
    workloads: Vec<Workload>,
}

fn parse_allocation(v: &Value) -> Option<(IpAddr, u64)> {
    Some((
        v.get("address")?.as_str()?.parse().ok()?,
        v.get("seq")?.as_u64()?,
    ))
}

impl<'a> Client<'a> {
    fn new(id: usize, shared: &'a Shared) -> Self {
        let seed = shared.options.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            id,
            shared,
            rng: StdRng::seed_from_u64(seed),
            at: 0,
            conn: None,
            workloads: (0..WORKLOADS)
                .map(|k| Workload {
                    name: format!("c{id}-w{k}"),
                    ..Workload::default()
                })
                .collect(),
        }
    }

    /// Sends one request to whichever controller serves: a connection that cannot be made
    /// (nothing sent) is tried on the other one, for up to [`NO_CONTROLLER`].
    fn send(&mut self, method: &str, path: &str, body: &str) -> Result<Sent> {
        let started = Instant::now();
        let mut failures = 0u32;
        loop {
            if let Some(c) = self.conn.as_mut()
                && c.closed_by_peer()
            {
                self.conn = None;
            }
            if self.conn.is_none() {
                match Conn::open(&self.shared.addrs[self.at], &self.shared.token) {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        self.shared.not_sent.fetch_add(1, Ordering::Relaxed);
                        self.at ^= 1;
                        failures += 1;
                        ensure!(
                            started.elapsed() < NO_CONTROLLER
                                && Instant::now() < self.shared.deadline,
                            "client {}: no controller took a connection for {:?} ({e})",
                            self.id,
                            started.elapsed()
                        );
                        if failures.is_multiple_of(2) {
                            std::thread::sleep(Duration::from_millis(25));
                        }
                        continue;
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            return Ok(match conn.request(method, path, body) {
                Ok((code, answer)) if code >= 500 => {
                    if self.shared.refused.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("soak: {method} {path} refused: {code} {answer}");
                    }
                    self.conn = None;
                    Sent::Unknown
                }
                Ok((code, body)) => Sent::Answer(code, body),
                Err(_) => {
                    self.conn = None;
                    Sent::Unknown
                }
            });
        }
    }

    fn unknown(&self) {
        self.shared.unknowns.fetch_add(1, Ordering::Relaxed);
    }

    fn allocate(&mut self, k: usize) -> Result<()> {
        let name = self.workloads[k].name.clone();
        let body = format!(r#"{{"workload":"{name}","host_id":"h{}"}}"#, self.id % 4);
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
        match self.send("POST", &format!("/networks/{NETWORK}/addresses"), &body)? {
            Sent::Answer(201, body) => {
                let (address, seq) = serde_json::from_str::<Value>(&body)
                    .ok()
                    .as_ref()
                    .and_then(parse_allocation)
                    .ok_or_else(|| anyhow!("allocation answer without address and seq: {body}"))?;
                let checked = self.shared.model().acked(address, seq, &name);
                if let Err(v) = checked {
                    self.shared.violation(v);
                }
                self.shared
                    .allocations_acked
                    .fetch_add(1, Ordering::Relaxed);
                self.workloads[k].held.push(Held {
                    address,
                    seq,
                    release_unknown: false,
                });
            }
            Sent::Answer(code, body) => {
                self.shared
                    .violation(format!("allocation for {name} answered {code}: {body}"));
            }
            Sent::Unknown => {
                self.unknown();
                self.shared.model().pending.insert(name);
                let w = &mut self.workloads[k];
                w.pending_alloc = true;
                w.dirty = true;
            }
        }
        Ok(())
    }

    fn release(&mut self, k: usize, i: usize) -> Result<()> {
        let name = self.workloads[k].name.clone();
        let h = self.workloads[k].held[i].clone();
        self.shared.model().set_releasing(h.address, h.seq, true);
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
        let path = format!("/networks/{NETWORK}/addresses/{}?seq={}", h.address, h.seq);
        match self.send("DELETE", &path, "")? {
            Sent::Answer(200, _) => {
                self.shared.model().gone(h.address, h.seq);
                self.shared.releases_acked.fetch_add(1, Ordering::Relaxed);
                self.workloads[k].held.remove(i);
            }
            Sent::Answer(404 | 409, _) if h.release_unknown => {
                // The release whose answer was lost was applied.
                self.shared.model().gone(h.address, h.seq);
                self.workloads[k].held.remove(i);
            }
            Sent::Answer(code, body) => self.shared.violation(format!(
                "acknowledged allocation {} (seq {}) of {name} lost: its release answered {code}: {body}",
                h.address, h.seq
            )),
            Sent::Unknown => {
                self.unknown();
                let w = &mut self.workloads[k];
                w.held[i].release_unknown = true;
                w.dirty = true;
            }
        }
        Ok(())
    }

    fn release_workload(&mut self, k: usize) -> Result<()> {
        let name = self.workloads[k].name.clone();
        {
            let mut model = self.shared.model();
            for h in &self.workloads[k].held {
                model.set_releasing(h.address, h.seq, true);
            }
        }
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
        let path = format!("/networks/{NETWORK}/workloads/{name}/addresses");
        match self.send("DELETE", &path, "")? {
            Sent::Answer(200, body) => {
                let released = listed(&body, "released")?;
                let w = &mut self.workloads[k];
                for h in &w.held {
                    if !h.release_unknown && !released.contains(&(h.address, h.seq)) {
                        self.shared.violation(format!(
                            "acknowledged allocation {} (seq {}) of {name} lost: releasing the workload did not release it ({body})",
                            h.address, h.seq
                        ));
                    }
                }
                let mut model = self.shared.model();
                for &(address, seq) in &released {
                    let known = w.held.iter().any(|h| (h.address, h.seq) == (address, seq));
                    if !known {
                        if !w.pending_alloc {
                            drop(model);
                            self.shared.violation(format!(
                                "releasing {name} released {address} (seq {seq}), which no request allocated to it"
                            ));
                            return Ok(());
                        }
                        // The allocation whose answer was lost was applied.
                        if let Err(v) = model.acked(address, seq, &name) {
                            drop(model);
                            self.shared.violation(v);
                            return Ok(());
                        }
                        w.pending_alloc = false;
                        self.shared.adopted.fetch_add(1, Ordering::Relaxed);
                    }
                    model.gone(address, seq);
                }
                for h in w.held.drain(..) {
                    // Released by a request whose answer was lost.
                    model.gone(h.address, h.seq);
                }
                self.shared
                    .releases_acked
                    .fetch_add(released.len() as u64, Ordering::Relaxed);
            }
            Sent::Answer(code, body) => self
                .shared
                .violation(format!("releasing workload {name} answered {code}: {body}")),
            Sent::Unknown => {
                self.unknown();
                let w = &mut self.workloads[k];
                for h in &mut w.held {
                    h.release_unknown = true;
                }
                w.dirty = true;
            }
        }
        Ok(())
    }

    /// Reads the workload's addresses from the serving controller and settles what was
    /// unknown; anything acknowledged and missing, or released and back, is a violation.
    fn lookup(&mut self, k: usize) -> Result<()> {
        let name = self.workloads[k].name.clone();
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        let path = format!("/networks/{NETWORK}/workloads/{name}/addresses");
        let body = match self.send("GET", &path, "")? {
            Sent::Answer(200, body) => body,
            Sent::Answer(code, body) => {
                self.shared
                    .violation(format!("lookup of {name} answered {code}: {body}"));
                return Ok(());
            }
            // Looked up again next time.
            Sent::Unknown => return Ok(()),
        };
        let listed = listed(&body, "addresses")?;
        let w = &mut self.workloads[k];
        let mut model = self.shared.model();
        let mut violations = Vec::new();
        w.held.retain_mut(|h| {
            let there = listed.contains(&(h.address, h.seq));
            match (there, h.release_unknown) {
                (true, true) => {
                    h.release_unknown = false;
                    model.set_releasing(h.address, h.seq, false);
                    true
                }
                (true, false) => true,
                (false, true) => {
                    model.gone(h.address, h.seq);
                    false
                }
                (false, false) => {
                    violations.push(format!(
                        "acknowledged allocation {} (seq {}) of {name} lost: the serving controller lists {body}",
                        h.address, h.seq
                    ));
                    true
                }
            }
        });
        for &(address, seq) in &listed {
            if w.held.iter().any(|h| (h.address, h.seq) == (address, seq)) {
                continue;
            }
            if model.released.contains(&(address, seq)) {
                violations.push(format!(
                    "released allocation {address} (seq {seq}) of {name} is back"
                ));
            } else if w.pending_alloc {
                // The allocation whose answer was lost was applied: the client holds it.
                if let Err(v) = model.acked(address, seq, &name) {
                    violations.push(v);
                }
                w.pending_alloc = false;
                w.held.push(Held {
                    address,
                    seq,
                    release_unknown: false,
                });
                self.shared.adopted.fetch_add(1, Ordering::Relaxed);
            } else {
                violations.push(format!(
                    "{name} holds {address} (seq {seq}), which no request allocated to it"
                ));
            }
        }
        w.pending_alloc = false;
        model.pending.remove(&name);
        w.dirty = false;
        drop(model);
        for v in violations {
            self.shared.violation(v);
        }
        Ok(())
    }

    /// One operation on a random workload of this client.
    fn step(&mut self) -> Result<()> {
        let k = self.rng.random_range(0..WORKLOADS);
        if self.workloads[k].dirty {
            return self.lookup(k);
        }
        let held = self.workloads[k].held.len();
        let roll = self.rng.random_range(0..100);
        match roll {
            // Allocate (a workload may hold several addresses).
            0..45 if held < MAX_HELD => self.allocate(k),
            // Release one it holds, with its seq.
            0..80 if held > 0 => {
                let i = self.rng.random_range(0..held);
                self.release(k, i)
            }
            // Re-allocate: release one and allocate again for the same workload.
            80..90 if held > 0 => {
                let i = self.rng.random_range(0..held);
                self.release(k, i)?;
                if !self.workloads[k].dirty {
                    self.allocate(k)?;
                }
                Ok(())
            }
            // Release everything the workload holds.
            90..95 if held > 0 => self.release_workload(k),
            // Look it up: the serving controller lists exactly what the model says.
            95.. => self.lookup(k),
            _ if held < MAX_HELD => self.allocate(k),
            _ => self.release_workload(k),
        }
    }

    fn run(&mut self) -> Result<()> {
        let s = self.shared;
        while !s.stop.load(Ordering::SeqCst) {
            ensure!(
                Instant::now() < s.deadline,
                "client {}: past the run's time limit",
                self.id
            );
            if s.pause.load(Ordering::SeqCst) {
                s.paused.fetch_add(1, Ordering::SeqCst);
                while s.pause.load(Ordering::SeqCst) && !s.stop.load(Ordering::SeqCst) {
                    ensure!(
                        Instant::now() < s.deadline,
                        "client {}: paused past the time limit",
                        self.id
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                s.paused.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            self.step()?;
        }
        Ok(())
    }

    /// At the end: every workload with something unknown is looked up until settled.
    fn settle(&mut self) -> Result<()> {
        for k in 0..WORKLOADS {
            let mut tries = 0;
            while self.workloads[k].dirty {
                tries += 1;
                ensure!(
                    tries <= 20 && Instant::now() < self.shared.deadline,
                    "client {}: could not settle {} (its lookups keep failing)",
                    self.id,
                    self.workloads[k].name
                );
                self.lookup(k)?;
            }
        }
        Ok(())
    }
}

/// The (address, seq) pairs of the allocations in `field` of a JSON answer.
fn listed(body: &str, field: &str) -> Result<HashSet<(IpAddr, u64)>> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("answer {body}"))?;
    v.get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no {field} in {body}"))?
        .iter()
        .map(|a| {
            parse_allocation(a)
                .ok_or_else(|| anyhow!("an allocation without address and seq in {body}"))
        })
        .collect()
}

/// Reads the store from etcd (no request in flight) and checks it against the model:
/// every acknowledged allocation there with its seq and workload, no acknowledged release,
/// nothing else than allocations whose answers were lost; with `exact` (everything
/// settled) nothing else at all, and the index's invariants. Returns the allocations held.
fn check_store(shared: &Shared, etcd: &str, exact: bool) -> Result<usize> {
    let store = EtcdStore::open(EtcdConfig::parse(etcd).map_err(|e| anyhow!(e))?)
        .map_err(|e| anyhow!(e))
        .context("opening the store on etcd")?;
    let index = Index::load(&store, Arc::new(ShardConfig::default()))
        .map_err(|e| anyhow!(e))
        .context("loading the shard index from etcd")?;
    let model = shared.model();
    let mut problems = Vec::new();
    if exact && let Err(e) = index.check_invariants() {
        problems.push(format!("the stored index breaks its invariants: {e}"));
    }
    for (address, e) in &model.live {
        match index.allocation(*address) {
            Some(a) if a.seq == e.seq && a.workload == e.workload => {}
            _ if e.releasing => {}
            other => problems.push(format!(
                "acknowledged allocation {address} (seq {}) of {} is not in the store: {:?}",
                e.seq,
                e.workload,
                other.map(|a| (a.seq, &a.workload))
            )),
        }
    }
    let mut held = 0;
    for a in index.allocations().filter(|a| a.network_id == NETWORK) {
        held += 1;
        if model.released.contains(&(a.address, a.seq)) {
            problems.push(format!(
                "released allocation {} (seq {}) of {} is in the store",
                a.address, a.seq, a.workload
            ));
            continue;
        }
        let known = model.live.get(&a.address).is_some_and(|e| e.seq == a.seq);
        if !known && (exact || !model.pending.contains(&a.workload)) {
            problems.push(format!(
                "the store holds {} (seq {}) of {}, which no acknowledged or unanswered request allocated",
                a.address, a.seq, a.workload
            ));
        }
    }
    drop(model);
    for p in problems.iter().take(MAX_VIOLATIONS) {
        shared.violation(p.clone());
    }
    ensure!(
        problems.is_empty(),
        "{} problems in the store",
        problems.len()
    );
    Ok(held)
}

/// Pauses the clients (each finishes its request), runs `f`, lets them go on.
fn paused<T>(shared: &Shared, f: impl FnOnce() -> Result<T>) -> Result<T> {
    shared.pause.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + TAKEOVER_LIMIT;
    let result = loop {
        if shared.paused.load(Ordering::SeqCst) >= shared.running.load(Ordering::SeqCst) {
            break f();
        }
        if Instant::now() >= deadline || shared.stop.load(Ordering::SeqCst) {
            break Err(anyhow!(
                "the clients did not pause within {TAKEOVER_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    shared.pause.store(false, Ordering::SeqCst);
    result
}

/// The killer: `kills` times, once the clients have done their share of the operations
/// (jittered), kill -9 the writer (four times in five) or the standby, start it again,
/// wait for a controller to serve, and check the store.
fn killer(shared: &Shared, pair: &mut Pair, report: &mut Report) -> Result<()> {
    let o = &shared.options;
    let mut rng = StdRng::seed_from_u64(o.seed);
    for k in 0..o.kills {
        let share = o.ops as f64 / f64::from(o.kills + 1);
        let target = ((f64::from(k) + rng.random_range(0.5..1.5)) * share) as u64;
        while shared.ops.load(Ordering::Relaxed) < target.min(o.ops) {
            ensure!(!shared.stop.load(Ordering::SeqCst), "stopped");
            ensure!(
                Instant::now() < shared.deadline,
                "past the run's time limit"
            );
            report.self_exits += pair.restart_exited()?;
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        report.self_exits += pair.restart_exited()?;
        let writer = pair.wait_writer(TAKEOVER_LIMIT)?;
        let standby_alive = pair.slots[writer ^ 1]
            .child
            .as_mut()
            .is_some_and(Child::is_running);
        if standby_alive && rng.random_bool(0.2) {
            let i = writer ^ 1;
            if let Some(c) = pair.slots[i].child.as_mut() {
                c.kill_hard();
            }
            report.standby_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
            pair.spawn(i)?;
        } else {
            let killed = Instant::now();
            if let Some(c) = pair.slots[writer].child.as_mut() {
                c.kill_hard();
            }
            report.writer_kills += 1;
            pair.spawn(writer)?;
            pair.wait_writer(TAKEOVER_LIMIT)?;
            report.takeovers.push(killed.elapsed());
        }
        paused(shared, || check_store(shared, &pair.etcd, false))?;
        report.store_checks += 1;
    }
    Ok(())
}

/// Runs the soak; an error names every violation found (and the seed).
pub fn run(o: &Options) -> Result<Report> {
    ensure!(
        o.clients > 0 && o.kills > 0 && o.ops > 0,
        "clients, kills and ops must be > 0"
    );
    ensure!(
        weft_store::etcd_process::available(),
        "etcd not found: run `cargo xtask setup` (Debian etcd-server)"
    );
    let started = Instant::now();
    let dir = WorkDir(o.work_dir.join(format!(
        "weft-soak-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )));
    let log_dir = dir.0.join("logs");
    let data_dir = dir.0.join("data");
    for d in [&log_dir, &data_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("making {}", d.display()))?;
    }
    let cluster = EtcdCluster::start(&dir.0, 1).map_err(|e| anyhow!(e))?;
    let port = || -> Result<String> { Ok(format!("127.0.0.1:{}", free_port("127.0.0.1")?)) };
    let mut pair = Pair {
        slots: [
            Slot {
                name: "controller-a",
                http: port()?,
                grpc: port()?,
                child: None,
            },
            Slot {
                name: "controller-b",
                http: port()?,
                grpc: port()?,
                child: None,
            },
        ],
        bin: o.controller.clone(),
        etcd: cluster.url(),
        data_dir: data_dir.clone(),
        log_dir,
    };
    let result = run_pair(o, &mut pair, started);
    if result.is_err() {
        eprintln!("soak: controllers' last output:\n{}", pair.tails());
    }
    pair.kill_all();
    drop(cluster);
    drop(dir);
    result
}

fn run_pair(o: &Options, pair: &mut Pair, started: Instant) -> Result<Report> {
    pair.spawn(0)?;
    pair.wait_writer(TAKEOVER_LIMIT)
        .context("the first controller becomes the writer")?;
    let token = std::fs::read_to_string(pair.data_dir.join("admin.token"))
        .context("the controller's admin token")?
        .trim()
        .to_owned();
    pair.spawn(1)?;
    {
        let mut c = Conn::open(&pair.slots[0].http, &token).context("connecting to the writer")?;
        for _ in 0..2 {
            let (code, body) = c.request(
                "POST",
                "/shards",
                &format!(r#"{{"prefix_len":22,"network_id":"{NETWORK}"}}"#),
            )?;
            ensure!(code == 201, "creating a shard: {code} {body}");
        }
    }
    let shared = Shared {
        options: o.clone(),
        addrs: [pair.slots[0].http.clone(), pair.slots[1].http.clone()],
        token,
        model: Mutex::default(),
        stop: AtomicBool::new(false),
        pause: AtomicBool::new(false),
        paused: AtomicUsize::new(0),
        running: AtomicUsize::new(o.clients),
        ops: AtomicU64::new(0),
        lookups: AtomicU64::new(0),
        allocations_acked: AtomicU64::new(0),
        releases_acked: AtomicU64::new(0),
        unknowns: AtomicU64::new(0),
        adopted: AtomicU64::new(0),
        not_sent: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        violations: Mutex::default(),
        deadline: started + o.time_limit,
    };
    let mut report = Report {
        seed: o.seed,
        ..Report::default()
    };
    let (killed, clients) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..o.clients)
            .map(|id| {
                let shared = &shared;
                scope.spawn(move || {
                    let mut client = Client::new(id, shared);
                    let result = client.run();
                    // Settling needs no pause: only this client touches its workloads.
                    shared.running.fetch_sub(1, Ordering::SeqCst);
                    if result.is_err() {
                        shared.stop.store(true, Ordering::SeqCst);
                    }
                    result.and_then(|()| client.settle())
                })
            })
            .collect();
        let killed = killer(&shared, pair, &mut report).and_then(|()| {
            // The kills are done: let the clients reach their operations, then stop.
            while shared.ops.load(Ordering::Relaxed) < o.ops && !shared.stop.load(Ordering::SeqCst)
            {
                ensure!(
                    Instant::now() < shared.deadline,
                    "past the run's time limit"
                );
                report.self_exits += pair.restart_exited()?;
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        shared.stop.store(true, Ordering::SeqCst);
        let clients: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect();
        (killed, clients)
    });
    let violations = shared
        .violations
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !violations.is_empty() {
        bail!(
            "seed {}: {} violation(s):\n  {}",
            o.seed,
            violations.len(),
            violations.join("\n  ")
        );
    }
    for c in clients {
        c.with_context(|| format!("seed {}: a client", o.seed))?;
    }
    killed.with_context(|| format!("seed {}: the killer", o.seed))?;
    // Both controllers stopped: the store as the next writer would load it.
    pair.kill_all();
    report.live_at_end = check_store(&shared, &pair.etcd, true)
        .with_context(|| format!("seed {}: the store at the end", o.seed))?;
    report.ops = shared.ops.load(Ordering::Relaxed);
    report.lookups = shared.lookups.load(Ordering::Relaxed);
    report.allocations_acked = shared.allocations_acked.load(Ordering::Relaxed);
    report.releases_acked = shared.releases_acked.load(Ordering::Relaxed);
    report.unknowns = shared.unknowns.load(Ordering::Relaxed);
    report.unknown_allocations_applied = shared.adopted.load(Ordering::Relaxed);
    report.not_sent = shared.not_sent.load(Ordering::Relaxed);
    report.refused = shared.refused.load(Ordering::Relaxed);
    report.elapsed = started.elapsed();
    ensure!(
        report.ops >= o.ops && report.kills() >= o.kills,
        "seed {}: ran {} operations and {} kills, fewer than asked",
        o.seed,
        report.ops,
        report.kills()
    );
    Ok(report)
}

/// `seed`, or a random one when none is given (print it: it is how a run is repeated).
pub fn seed_or_random(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(rand::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_acknowledged_to_a_second_owner_is_a_violation() {
        let mut m = Model::default();
        m.acked(ip("10.0.0.2"), 1, "a").unwrap();
        let err = m.acked(ip("10.0.0.2"), 2, "b").unwrap_err();
        assert!(err.contains("while a holds it"), "{err}");
    }

    #[test]
    fn an_address_whose_release_answer_was_lost_may_go_to_a_later_seq_only() {
        let mut m = Model::default();
        m.acked(ip("10.0.0.2"), 5, "a").unwrap();
        m.set_releasing(ip("10.0.0.2"), 5, true);
        let err = m.acked(ip("10.0.0.2"), 4, "b").unwrap_err();
        assert!(err.contains("not after"), "{err}");
        m.acked(ip("10.0.0.2"), 6, "b").unwrap();
        assert!(m.released.contains(&(ip("10.0.0.2"), 5)));
    }

    #[test]
    fn a_seq_acknowledged_twice_is_a_violation() {
        let mut m = Model::default();
        m.acked(ip("10.0.0.2"), 7, "a").unwrap();
        m.gone(ip("10.0.0.2"), 7);
        let err = m.acked(ip("10.0.0.3"), 7, "b").unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }
}
