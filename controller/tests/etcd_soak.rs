//! The shard manager on etcd under random kills, CI-sized: two controllers on one etcd,
//! 5,000 allocations and releases from 8 clients while the writer (or the standby) is
//! killed with SIGKILL and started again 5 times; no acknowledged allocation lost, no
//! address with two owners, no release undone (`weft_lab::shard_soak`, which
//! `cargo xtask soak shards-etcd` runs at full size). `WEFT_SOAK_SEED` repeats a run.

use std::path::PathBuf;

use weft_lab::shard_soak::{self, Options};
use weft_store::etcd_process;

#[test]
fn shard_manager_on_etcd_under_random_kills_loses_and_duplicates_nothing() {
    if !etcd_process::available() {
        assert!(
            !weft_lab::is_root(),
            "etcd not found: run `cargo xtask setup`"
        );
        eprintln!("etcd not found; skipped");
        return;
    }
    let seed = shard_soak::seed_or_random(
        std::env::var("WEFT_SOAK_SEED")
            .ok()
            .map(|s| s.parse().expect("WEFT_SOAK_SEED is a number")),
    );
    eprintln!("shard soak: seed {seed} (WEFT_SOAK_SEED={seed} repeats it)");
    let options = Options::new(
        PathBuf::from(env!("CARGO_BIN_EXE_weft-controller")),
        seed,
        5_000,
        5,
    );
    let report = shard_soak::run(&options).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{report}");
    assert!(report.ops >= 5_000 && report.kills() >= 5, "{report}");
    assert!(
        report.allocations_acked > 1_000 && report.releases_acked > 1_000,
        "{report}"
    );
    assert!(report.writer_kills >= 1, "no writer was killed: {report}");
    assert_eq!(report.takeovers.len(), report.writer_kills as usize);
}
