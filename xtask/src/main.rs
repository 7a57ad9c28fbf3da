//! `cargo xtask <command>`: setup (toolchain, packages, bpffs), build, test, demo, fuzz,
//! bench, soak.

mod bench;
mod bench_drift;
mod bench_etcd;
mod bench_networks;
mod bench_shadows;
mod bench_shards;
mod bench_spoof;
mod bench_tls;
mod bench_weaves;
mod demo;
mod demo_console;
mod fuzz;
mod schemathesis;
mod setup;
mod sh;
mod soak;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    about = "weft's developer tasks (run as root on Debian 12)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what builds and tests need: nightly rust-src, bpf-linker, Debian packages,
    /// bpffs. Idempotent; seconds when everything is there.
    Setup,
    /// setup, then `cargo build` (the default members; the agent builds agent-ebpf).
    Build,
    /// setup, build, then `cargo test` of the default members (unit and end-to-end lab
    /// tests); without test arguments, then every fuzz target for a few seconds
    /// (`WEFT_FUZZ_SECONDS`, default 5; 0 skips them).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// setup, build, then a namespace lab with real servers and traffic; prints and writes
    /// the topology the controller built, checks its edges, and removes the lab.
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Where topology.json/.dot/.svg go (relative to the workspace root).
        #[arg(long, default_value = "demo-out")]
        out: String,
        /// Use the binaries already in the target dir instead of running setup and build.
        #[arg(long)]
        no_build: bool,
    },
    /// Long randomized fault runs. `shards-etcd`: two controllers on one etcd, clients
    /// allocating and releasing through whichever serves, the writer (sometimes the
    /// standby) killed with SIGKILL and started again at random; fails if an acknowledged
    /// allocation is lost, an address has two owners or a release is undone (checked at
    /// every answer and against the store read from etcd). Prints the seed.
    Soak {
        /// What to soak: `shards-etcd`.
        what: String,
        /// Repeats a run's operation mix and kills (default: a random seed, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Allocations and releases to run at least.
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Kills to make at least.
        #[arg(long, default_value_t = 50)]
        kills: u32,
    },
    /// Runs the cargo-fuzz targets in `fuzz/` (nightly), each for a fixed time, seeded from
    /// `fuzz/corpus/<target>/`; fails if any crashed, naming the input it kept.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Then add the inputs that brought new coverage to `fuzz/corpus/<target>/`.
        #[arg(long)]
        merge: bool,
        /// Unoptimised build (faster to build, slower to run), as `cargo xtask test` uses.
        #[arg(long)]
        dev: bool,
        /// Targets to run (default: all; `cargo +nightly fuzz list` in `fuzz/` lists them).
        targets: Vec<String>,
    },
    /// setup, build, then the benchmarks (controller ingestion, gRPC, memory, GET /topology;
    /// flow programs' run time per packet as root); writes BENCHMARKS.md.
    Bench {
        /// Skip setup and build (the binaries and the BPF object are already built).
        #[arg(long)]
        no_build: bool,
        /// `shards`: only the IP shard benchmarks (durable allocations/s over the API; the
        /// migration of a full default shard of 256 workloads), which also end a full run.
        /// `migration`, `allocations`: only that part, printed (BENCHMARKS.md is left as it is).
        /// `controller`: the controller benches alone (ingest, gRPC, memory, GET /topology),
        /// their section of BENCHMARKS.md rewritten.
        /// `flows`: the flow programs against the C reference (run time per packet, bytes per
        /// flow entry; its section of BENCHMARKS.md).
        /// `drift`: drift repair, printed. `spoof`: the controller's memory while 1,000,000
        /// spoofed sources send a datagram each (its section of BENCHMARKS.md). `tls`:
        /// records/s on the export path, plain vs mutual TLS, printed. `networks`: TDL
        /// networks: realize/remove 100 and 1,000 nodes beside an `ip -batch` baseline, drift
        /// detect/repair latency (its section of BENCHMARKS.md). `shadows`: production's
        /// latency and throughput with 10 % shadow sampling beside nginx's `mirror`, the
        /// sampled share, read-only mode (its section of BENCHMARKS.md). `weaves`: time from
        /// the API call to the first answer of a 3- and a 10-node weave beside making the
        /// environment anew, production's worst request meanwhile, 100 activations under
        /// 2,000 req/s, sync_volumes of 10 MiB in 1 GiB beside rsync (its section).
        /// `etcd`: allocations/s on etcd (one controller, a writer and a standby, a leader
        /// and a serving follower) beside the redb file and a Calico-style CAS allocator
        /// (its section). `migration-failover` (not in the full run): the 256-workload
        /// migration with two controller replicas on etcd, the leader killed a quarter of
        /// the way through; takeover time, windows, and the same topology from both replicas
        /// (its section).
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => setup::setup().and_then(|()| build()),
        Cmd::Test { args } => setup::setup()
            .and_then(|()| build_for_tests())
            .and_then(|()| test(&args))
            .and_then(|()| fuzz_smoke(&args)),
        Cmd::Fuzz {
            seconds,
            merge,
            dev,
            targets,
        } => fuzz::run(&fuzz::Options {
            seconds,
            targets,
            merge,
            dev,
            fresh: false,
        }),
        Cmd::Soak {
            what,
            seed,
            ops,
            kills,
        } => match what.as_str() {
            "shards-etcd" => soak::shards_etcd(seed, ops, kills),
            other => Err(anyhow::anyhow!(
                "unknown soak {other:?} (known: shards-etcd)"
            )),
        },
        Cmd::Demo {
            seconds,
            out,
            no_build,
        } => {
            let ready = if no_build {
                Ok(())
            } else {
                setup::setup().and_then(|()| build())
            };
            ready.and_then(|()| demo::run(seconds, &out))
        }
        Cmd::Bench { no_build, only } => {
            let ready = if no_build {
                Ok(())
            } else {
                setup::setup().and_then(|()| build())
            };
            ready.and_then(|()| match only.as_deref() {
                None => bench::run()
                    .and_then(|()| bench_shards::run())
                    .and_then(|()| bench_drift::run())
                    .and_then(|()| bench_spoof::run())
                    .and_then(|()| bench_tls::run(false))
                    .and_then(|()| bench_networks::run())
                    .and_then(|()| bench_shadows::run())
                    .and_then(|()| bench_weaves::run()),
                Some("controller") => bench::run_controller(),
                Some("flows") => bench::run_flows_only(),
                Some("drift") => bench_drift::run(),
                Some("networks") => bench_networks::run(),
                Some("shadows") => bench_shadows::run(),
                Some("weaves") => bench_weaves::run(),
                Some("etcd") => bench_etcd::run(),
                Some("spoof") => bench_spoof::run(),
                Some("tls") => bench_tls::run(no_build),
                Some("shards") => bench_shards::run(),
                Some("migration") => bench_shards::run_migration_only(),
                Some("migration-failover") => bench_shards::run_migration_failover(),
                Some("allocations") => bench_shards::run_allocations_only(),
                Some(other) => Err(anyhow::anyhow!(
                    "unknown bench {other:?} (known: controller, flows, shards, migration, migration-failover, allocations, etcd, drift, spoof, tls, networks, shadows, weaves)"
                )),
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<()> {
    sh::step("cargo build");
    sh::run_inherit(sh::cargo().args(["build"]))
}

/// The build before the tests: the binaries the lab tests start, without incremental
/// compilation (see `without_incremental`).
fn build_for_tests() -> Result<()> {
    sh::step("cargo build");
    sh::run_inherit(without_incremental(sh::cargo().args(["build"])))
}

/// A whole test run gains nothing from incremental compilation (every crate is built once)
/// and its caches took 5 GB of the 22 GB a fresh clone's `cargo xtask test` wrote; unless
/// the caller set CARGO_INCREMENTAL, builds for tests go without them.
fn without_incremental(c: &mut std::process::Command) -> &mut std::process::Command {
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

fn test(extra: &[String]) -> Result<()> {
    sh::step("cargo test (namespace labs run one at a time: they share a lock)");
    let mut c = sh::cargo();
    without_incremental(&mut c);
    c.args(["test"]);
    if !extra.is_empty() {
        c.args(extra);
    }
    sh::run_inherit(&mut c)
}

/// The short fuzz run of `cargo xtask test` (CI): every target for `WEFT_FUZZ_SECONDS`
/// (default 5) seconds. Skipped when test arguments narrow the run, or with 0.
fn fuzz_smoke(test_args: &[String]) -> Result<()> {
    if !test_args.is_empty() {
        println!("    (fuzz targets skipped: test arguments were given)");
        return Ok(());
    }
    let seconds = match std::env::var("WEFT_FUZZ_SECONDS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("WEFT_FUZZ_SECONDS={v:?} is not a number of seconds"))?,
        Err(_) => 5,
    };
    if seconds == 0 {
        println!("    (fuzz targets skipped: WEFT_FUZZ_SECONDS=0)");
        return Ok(());
    }
    fuzz::run(&fuzz::Options {
        seconds,
        targets: Vec::new(),
        merge: false,
        dev: true,
        fresh: true,
    })
}
