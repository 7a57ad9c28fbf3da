//! `cargo xtask fuzz [--seconds N] [--merge] [--dev] [TARGET...]`: builds the cargo-fuzz
//! targets in `fuzz/` once on the nightly toolchain, runs each for N seconds seeded from the
//! corpus kept in the repository (`fuzz/corpus/<target>/`, read-only; what a run finds goes
//! to `target/fuzz/corpus/<target>/`, which later runs start from too), prints runs/s and
//! the outcome per target, and fails if any target crashed, naming the input libFuzzer kept
//! (`fuzz/artifacts/<target>/`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use weft_lab::cmd::describe;

use crate::sh::{self, probe, root, run_inherit, step, tools_dir};

/// cargo-fuzz, installed into `target/tools` by `cargo xtask setup`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// A unit slower than this many seconds is a failure (libFuzzer's own default is 20 min).
const UNIT_TIMEOUT_S: u64 = 10;

pub struct Options {
    pub seconds: u64,
    pub targets: Vec<String>,
    /// Merge inputs that add coverage into the repository's corpus after the runs.
    pub merge: bool,
    /// Unoptimised build: compiles in a third of the time, runs several times slower (the
    /// short run of `cargo xtask test`).
    pub dev: bool,
    /// Start from the repository's corpus only (not from what earlier runs found), so that
    /// a short run takes the same time everywhere.
    pub fresh: bool,
}

impl Options {
    /// cargo-fuzz build flags: always debug assertions (arithmetic overflow panics as in a
    /// debug build); optimised unless `dev`.
    fn build_flags(&self) -> &'static [&'static str] {
        if self.dev {
            &["--dev"]
        } else {
            &["--release", "--debug-assertions"]
        }
    }

    /// Where runs of `target` write the inputs they find.
    fn scratch(&self, target: &str) -> PathBuf {
        let dir = if self.fresh {
            "target/fuzz/fresh-corpus"
        } else {
            "target/fuzz/corpus"
        };
        root().join(dir).join(target)
    }
}

/// How one target's run ended.
struct Outcome {
    target: String,
    runs: Option<u64>,
    runs_per_second: Option<u64>,
    /// `None`: ran its time without a crash. `Some(artifact)`: crashed (or failed to run).
    failure: Option<String>,
    log: PathBuf,
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// `cargo +nightly <args>` in `fuzz/`, with `target/tools/bin` (cargo-fuzz) on PATH. The
/// variables cargo sets for xtask itself would pin the stable toolchain: removed.
fn cargo_nightly() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(fuzz_dir())
        .env("PATH", sh::path_with_tools())
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .arg("+nightly");
    c
}

/// Setup step: cargo-fuzz in `target/tools/bin`, installed once.
pub fn cargo_fuzz() -> Result<()> {
    let bin = tools_dir().join("bin/cargo-fuzz");
    let (ok, out) = probe(Command::new(&bin).arg("--version"));
    if ok && out.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) {
        println!("    cargo-fuzz: {} ({})", out.trim(), bin.display());
        return Ok(());
    }
    println!("    cargo-fuzz: installing {CARGO_FUZZ_VERSION} (about a minute, once)");
    run_inherit(
        sh::cargo()
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(tools_dir()),
    )?;
    let (ok, out) = probe(Command::new(&bin).arg("--version"));
    if !ok {
        bail!("{} was installed but does not run", bin.display());
    }
    println!("    cargo-fuzz: {}", out.trim());
    Ok(())
}

/// The targets `fuzz/Cargo.toml` declares.
fn all_targets() -> Result<Vec<String>> {
    let out = cargo_nightly()
        .args(["fuzz", "list"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run `cargo +nightly fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo +nightly fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The targets to run: all, or the named ones (which must exist).
fn choose(named: &[String]) -> Result<Vec<String>> {
    let all = all_targets()?;
    if named.is_empty() {
        return Ok(all);
    }
    if let Some(unknown) = named.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {unknown:?} (targets: {})", all.join(", "));
    }
    Ok(named.to_vec())
}

pub fn run(opts: &Options) -> Result<()> {
    step("fuzz");
    cargo_fuzz()?;
    let targets = choose(&opts.targets)?;
    let started = Instant::now();
    step("cargo +nightly fuzz build (every target)");
    run_inherit(
        cargo_nightly()
            .args(["fuzz", "build"])
            .args(opts.build_flags()),
    )?;
    let built = started.elapsed();
    let mut outcomes = Vec::new();
    for target in &targets {
        step(&format!("fuzz {target} for {} s", opts.seconds));
        let outcome = run_target(target, opts)?;
        println!("    {}", summary(&outcome));
        outcomes.push(outcome);
    }
    if opts.merge {
        for target in &targets {
            merge(target, opts)?;
        }
    }
    println!(
        "    fuzzing took {:.0} s ({:.0} s of it building)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    report(&outcomes, opts)
}

/// Runs `target` for `opts.seconds` (after the build), its output in `target/fuzz/logs/`.
fn run_target(target: &str, opts: &Options) -> Result<Outcome> {
    let scratch = opts.scratch(target);
    if opts.fresh && scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("remove {}", scratch.display()))?;
    }
    let seeds = fuzz_dir().join("corpus").join(target);
    let logs = root().join("target/fuzz/logs");
    for dir in [&scratch, &seeds, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let err = file
        .try_clone()
        .with_context(|| format!("reopen {}", log.display()))?;
    let mut c = cargo_nightly();
    // New inputs go to the first corpus directory: the scratch one, not the repository.
    c.args(["fuzz", "run"])
        .args(opts.build_flags())
        .arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg(format!("-timeout={UNIT_TIMEOUT_S}"))
        .arg("-print_final_stats=1");
    println!("    $ {}  (output: {})", describe(&c), log.display());
    let status = c
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .with_context(|| format!("cannot start `{}`", describe(&c)))?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let failure = if status.success() {
        None
    } else {
        Some(artifact(&text).unwrap_or_else(|| format!("no input kept ({status}); see the log")))
    };
    if failure.is_some() {
        // The panic message and what libFuzzer said about it.
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            println!("    | {line}");
        }
    }
    Ok(Outcome {
        target: target.to_owned(),
        runs: stat(&text, "stat::number_of_executed_units"),
        runs_per_second: stat(&text, "stat::average_exec_per_sec"),
        failure,
        log,
    })
}

/// A `stat::name: value` line of libFuzzer's final statistics.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .filter_map(|rest| rest.trim_start_matches(':').trim().parse().ok())
        .next_back()
}

/// The input libFuzzer wrote for a crash, leak, timeout or out-of-memory.
fn artifact(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
        .next_back()
        .map(str::to_owned)
}

fn summary(o: &Outcome) -> String {
    let num = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |n| n.to_string());
    let result = match &o.failure {
        None => "no crash".to_string(),
        Some(a) => format!("CRASHED: {a}"),
    };
    format!(
        "{:<20} {:>10} runs {:>8} runs/s  {result}",
        o.target,
        num(o.runs),
        num(o.runs_per_second)
    )
}

fn report(outcomes: &[Outcome], opts: &Options) -> Result<()> {
    step("fuzz results");
    for o in outcomes {
        println!("    {}", summary(o));
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for o in &failed {
        println!(
            "    {}: reproduce with `cd fuzz && cargo +nightly fuzz run {} {} {}` (log: {})",
            o.target,
            opts.build_flags().join(" "),
            o.target,
            o.failure.as_deref().unwrap_or(""),
            o.log.display()
        );
    }
    bail!(
        "{} fuzz target(s) crashed: {}",
        failed.len(),
        failed
            .iter()
            .map(|o| o.target.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Adds the inputs of the scratch corpus that bring new coverage to the repository's.
fn merge(target: &str, opts: &Options) -> Result<()> {
    let scratch = opts.scratch(target);
    let seeds = fuzz_dir().join("corpus").join(target);
    step(&format!(
        "merge new coverage of {target} into {}",
        rel(&seeds)
    ));
    run_inherit(
        cargo_nightly()
            .args(["fuzz", "run"])
            .args(opts.build_flags())
            .arg(target)
            .arg(&seeds)
            .arg(&scratch)
            .args(["--", "-merge=1"]),
    )
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO: Running with entropic power schedule (0xFF, 100).\n\
        #1048576\tpulse  cov: 812 ft: 2973 corp: 301/12Kb exec/s: 52428 rss: 71Mb\n\
        Done 1601234 runs in 31 second(s)\n\
        stat::number_of_executed_units: 1601234\n\
        stat::average_exec_per_sec:     51652\n\
        stat::new_units_added:          12\n";

    #[test]
    fn reads_final_stats() {
        assert_eq!(stat(LOG, "stat::number_of_executed_units"), Some(1_601_234));
        assert_eq!(stat(LOG, "stat::average_exec_per_sec"), Some(51_652));
        assert_eq!(stat(LOG, "stat::peak_rss_mb"), None);
        assert_eq!(artifact(LOG), None);
    }

    #[test]
    fn finds_the_crash_input() {
        let log = "==123== ERROR: libFuzzer: deadly signal\n\
            MS: 2 ChangeBit-CopyPart-; base unit: 0000\n\
            artifact_prefix='/w/fuzz/artifacts/l7_dns/'; Test unit written to /w/fuzz/artifacts/l7_dns/crash-da39a3ee\n\
            Base64: AAEC\n";
        assert_eq!(
            artifact(log).as_deref(),
            Some("/w/fuzz/artifacts/l7_dns/crash-da39a3ee")
        );
    }
}
