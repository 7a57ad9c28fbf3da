//! `cargo xtask bench etcd`: durable allocations per second with the controller's store on
//! etcd (one writer; one writer and a standby) beside the same controller on its redb file,
//! and beside an allocator in Calico's style on the same etcd, measured in the same run:
//! each allocation reads a block (one key holding a bitmap) and writes it back with a
//! compare-and-swap, one client on one block and then one block per client.
//!
//! The figures go into BENCHMARKS.md between the `etcd` markers.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::json;
use weft_lab::process::Child;
use weft_lab::weft::free_port;
use weft_store::etcd_process::EtcdCluster;
use weft_store::{EtcdConfig, EtcdStore, Store};

use crate::bench_shards::{Conn, cpu_model, fmt_int, release_binary, start_controller};
use crate::sh;

const BEGIN: &str = "<!-- etcd:begin (written by `cargo xtask bench etcd`) -->";
const END: &str = "<!-- etcd:end -->";

/// Each measurement runs this long.
const SECONDS: u64 = 10;
/// Keep-alive HTTP connections allocating at once.
const CONNECTIONS: usize = 64;
const NETWORK: &str = "bench";
/// Clients of the Calico-style allocator with a block each.
const BLOCK_CLIENTS: usize = 4;
/// /20 shards of the bench network (4,093 addresses each): more than any run allocates.
const SHARDS: usize = 64;

struct Rate {
    acked: u64,
    errors: u64,
    seconds: f64,
    p50_us: u32,
    p99_us: u32,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.acked as f64 / self.seconds
    }
}

/// `CONNECTIONS` clients POSTing allocations for `SECONDS`, client `t` to `https[t % n]`.
fn allocate_over_http(https: &[String]) -> Result<Rate> {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let t0 = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..CONNECTIONS {
        let (http, issued) = (https[t % https.len()].clone(), issued.clone());
        handles.push(std::thread::spawn(
            move || -> Result<(u64, u64, Vec<u32>)> {
                let mut conn = Conn::open(&http)?;
                let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
                let path = format!("/networks/{NETWORK}/addresses");
                while Instant::now() < deadline {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let body = format!(
                        r#"{{"workload":"w{t}-{n}","host_id":"hv-bench","family":"ipv4"}}"#
                    );
                    let s = Instant::now();
                    match conn.request("POST", &path, Some(&body)) {
                        Ok((status, _)) if (200..300).contains(&status) => {
                            ok += 1;
                            lat.push(s.elapsed().as_micros() as u32);
                        }
                        Ok(_) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            conn = Conn::open(&http)?;
                        }
                    }
                }
                Ok((ok, errors, lat))
            },
        ));
    }
    let (mut acked, mut errors, mut lat) = (0, 0, Vec::new());
    for h in handles {
        let (o, e, l) = h.join().map_err(|_| anyhow!("client thread panicked"))??;
        acked += o;
        errors += e;
        lat.extend(l);
    }
    lat.sort_unstable();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Rate {
        acked,
        errors,
        seconds: t0.elapsed().as_secs_f64(),
        p50_us: at(0.5),
        p99_us: at(0.99),
    })
}

/// The second controller on the same etcd, if any.
#[derive(Clone, Copy)]
enum Second<'a> {
    None,
    /// `--standby wait`: serves nothing until it holds the writer's lease.
    Standby(&'a str),
    /// A follower replica serving beside the leader: half the clients allocate through it
    /// (it forwards to the leader).
    Follower(&'a str),
}

/// A release controller with `extra` flags, shards for the bench network, its rate.
fn controller_rate(dir: &Path, name: &str, extra: &[&str], second: Second<'_>) -> Result<Rate> {
    let grpc = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let data = dir.join(format!("{name}-data"));
    let mut flags = vec![
        "--shard-pool",
        "10.0.0.0/12",
        "--max-shards-per-network",
        "64",
        "--http-write-concurrency",
        "256",
        "--log",
        "warn",
    ];
    flags.extend_from_slice(extra);
    if matches!(second, Second::Follower(_)) {
        flags.extend_from_slice(&["--replica-name", "leader"]);
    }
    let controller = start_controller(dir, &grpc, &http, &data, &flags)?;
    let mut targets = vec![http.clone()];
    let _second = match second {
        Second::None => None,
        Second::Standby(etcd) | Second::Follower(etcd) => {
            let follower = matches!(second, Second::Follower(_));
            let second_http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
            let mut c = Command::new(release_binary("weft-controller")?);
            c.args([
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                second_http.as_str(),
                "--insecure",
            ])
            .args(["--etcd", etcd, "--log", "info", "--data-dir"])
            .arg(&data);
            if follower {
                c.args(["--replica-name", "follower"]);
                targets.push(second_http);
            } else {
                c.args(["--standby", "wait"]);
            }
            let mut child = Child::spawn(c, dir, &format!("{name}-second"))?;
            let line = if follower {
                "weft-controller following"
            } else {
                "standby"
            };
            child
                .wait_for_line(&[line], Duration::from_secs(20))
                .context("the second controller waits or follows")?;
            Some(child)
        }
    };
    for _ in 0..SHARDS {
        controller
            .json(
                "POST",
                "/shards",
                Some(&json!({"prefix_len": 20, "network_id": NETWORK})),
            )
            .with_context(|| controller.child.tail(20))?;
    }
    let rate = allocate_over_http(&targets)?;
    println!(
        "    {name}: {} allocations in {:.1} s = {:.0}/s (p50 {} us, p99 {} us, {} errors)",
        rate.acked,
        rate.seconds,
        rate.per_second(),
        rate.p50_us,
        rate.p99_us,
        rate.errors
    );
    Ok(rate)
}

/// Calico's block allocation on `store`: per allocation, read the block, set a free bit,
/// compare-and-swap it back; a lost race reads again. `clients` threads, on one shared
/// block or one block each.
fn calico_style(url: &str, clients: usize, shared_block: bool) -> Result<Rate> {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        handles.push(std::thread::spawn(
            move || -> Result<(u64, u64, Vec<u32>)> {
                let store = EtcdStore::open(EtcdConfig::parse(&format!("{url}/calico"))?)?;
                let key = if shared_block {
                    "block/0".to_owned()
                } else {
                    format!("block/{c}")
                };
                let (mut ok, mut conflicts, mut lat) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let s = Instant::now();
                    loop {
                        let old = store.get(&key)?;
                        let mut bitmap = old.clone().unwrap_or_else(|| vec![0u8; 8192]);
                        let Some(byte) = bitmap.iter().position(|b| *b != 0xff) else {
                            // Full: a new block, as Calico claims another.
                            store.put(&key, &vec![0u8; 8192])?;
                            continue;
                        };
                        let bit = bitmap[byte].trailing_ones();
                        bitmap[byte] |= 1 << bit;
                        if store.compare_and_swap(&key, old.as_deref(), Some(&bitmap))? {
                            break;
                        }
                        conflicts += 1;
                    }
                    ok += 1;
                    lat.push(s.elapsed().as_micros() as u32);
                }
                Ok((ok, conflicts, lat))
            },
        ));
    }
    let (mut acked, mut errors, mut lat) = (0, 0, Vec::new());
    for h in handles {
        let (o, e, l) = h
            .join()
            .map_err(|_| anyhow!("allocator thread panicked"))??;
        acked += o;
        errors += e;
        lat.extend(l);
    }
    lat.sort_unstable();
    let at = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let rate = Rate {
        acked,
        errors,
        seconds: t0.elapsed().as_secs_f64(),
        p50_us: at(0.5),
        p99_us: at(0.99),
    };
    println!(
        "    Calico-style, {clients} client(s){}: {:.0}/s ({} lost CAS races)",
        if shared_block {
            " on one block"
        } else {
            ", a block each"
        },
        rate.per_second(),
        rate.errors
    );
    Ok(rate)
}

pub fn run() -> Result<()> {
    sh::step("etcd benchmark: release controller");
    sh::run_inherit(sh::cargo().args(["build", "--release", "-p", "weft-controller"]))?;
    ensure!(
        weft_store::etcd_process::available(),
        "etcd not found: run `cargo xtask setup` (Debian etcd-server)"
    );
    let dir = std::env::temp_dir().join(format!("weft-bench-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let md = result?;
    println!("{md}");
    splice(&md)
}

fn measure(dir: &Path) -> Result<String> {
    sh::step("allocations on the redb file");
    let redb = controller_rate(dir, "redb", &[], Second::None)?;

    sh::step("allocations on etcd, one controller");
    let cluster = EtcdCluster::start(dir, 1).map_err(|e| anyhow!(e))?;
    let url = format!("{}/one", cluster.url());
    let one = controller_rate(dir, "etcd-one", &["--etcd", &url], Second::None)?;

    sh::step("allocations on etcd, a writer and a standby");
    let url2 = format!("{}/two", cluster.url());
    let two = controller_rate(dir, "etcd-two", &["--etcd", &url2], Second::Standby(&url2))?;

    sh::step("allocations on etcd, a leader and a serving follower (half the clients)");
    let url3 = format!("{}/three", cluster.url());
    let replicas = controller_rate(
        dir,
        "etcd-replicas",
        &["--etcd", &url3],
        Second::Follower(&url3),
    )?;

    sh::step("Calico-style CAS allocations on the same etcd");
    let calico_one = calico_style(&cluster.url(), 1, true)?;
    let calico_blocks = calico_style(&cluster.url(), BLOCK_CLIENTS, false)?;
    drop(cluster);

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{BEGIN}\n## IP shards on etcd (`cargo xtask bench etcd`)\n"
    );
    let _ = writeln!(
        md,
        "Machine: {} ({} CPUs). A release `weft-controller` (`--shard-pool 10.0.0.0/12`, {SHARDS} /20 shards of one network, room for {} addresses), {CONNECTIONS} keep-alive HTTP/1.1 connections POSTing allocations for {SECONDS} s each, on the same CPUs as the controller and etcd; Debian's etcd {} as one member on loopback (its data on the same disk as the redb file). Measured in one run, in this order.\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fmt_int((SHARDS * 4093) as f64),
        etcd_version()
    );
    let _ = writeln!(
        md,
        "| store | allocations/s | p50 | p99 | errors | beside redb | beside Calico-style (1 client) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, r: &Rate| {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} ms | {:.1} ms | {} | ×{:.2} | ×{:.1} |",
            fmt_int(r.per_second()),
            r.p50_us as f64 / 1e3,
            r.p99_us as f64 / 1e3,
            r.errors,
            r.per_second() / redb.per_second(),
            r.per_second() / calico_one.per_second()
        );
    };
    row(&mut md, "redb file (baseline)", &redb);
    row(&mut md, "etcd, one controller", &one);
    row(&mut md, "etcd, writer + standby", &two);
    row(
        &mut md,
        "etcd, leader + serving follower (half the clients through it)",
        &replicas,
    );
    row(
        &mut md,
        "Calico-style CAS, 1 client, one block",
        &calico_one,
    );
    row(
        &mut md,
        &format!("Calico-style CAS, {BLOCK_CLIENTS} clients, a block each"),
        &calico_blocks,
    );
    let _ = writeln!(
        md,
        "\nweft commits a group of queued allocations as one etcd transaction (fenced by the writer's lease), so its rate on etcd follows etcd's commit latency times the group size; the Calico-style allocator pays one read and one compare-and-swap per address. With a standby the writer's rate is the same: the standby only waits for the lease (`--standby wait`: it serves nothing until it takes over; `controller/tests/etcd_controllers.rs` measures the takeover). With a serving follower (the default) half the clients allocate through it: it forwards each request to the leader (one more HTTP hop on the same CPUs), and every allocation is still committed by the leader. For Calico-style errors count lost CAS races (retried).\n{END}"
    );
    Ok(md)
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn splice(section: &str) -> Result<()> {
    let path = sh::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            section.trim_end(),
            &old[e + END.len()..]
        ),
        _ => format!("{}\n\n{}\n", old.trim_end(), section.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    println!("==> wrote the etcd section of {}", path.display());
    Ok(())
}
