//! `cargo xtask soak shards-etcd`: the shard manager on etcd under random kills at full
//! size (two controllers on one etcd, at least 100,000 allocations and releases, at least
//! 50 kills; `weft_lab::shard_soak`, which the controller's test `etcd_soak` runs small).

use anyhow::{Context, Result, anyhow};
use weft_lab::shard_soak::{self, Options};

use crate::sh;

/// Builds the controller, runs the soak, prints its report; fails on any violation.
pub fn shards_etcd(seed: Option<u64>, ops: u64, kills: u32) -> Result<()> {
    sh::step("shard soak on etcd: controller build");
    sh::run_inherit(sh::cargo().args(["build", "-p", "weft-controller"]))?;
    let seed = shard_soak::seed_or_random(seed);
    sh::step(&format!(
        "shard soak on etcd: {ops} operations, {kills} kills, seed {seed} (`cargo xtask soak shards-etcd --seed {seed}` runs it again)"
    ));
    // A copy: the run starts the controller again at every kill, and a build during a
    // long run must not change the binary under test.
    let copy = BinaryCopy(
        std::env::temp_dir().join(format!("weft-controller-soak-{}", std::process::id())),
    );
    let built = weft_lab::weft::binary("weft-controller")?;
    std::fs::copy(&built, &copy.0)
        .with_context(|| format!("copying {} to {}", built.display(), copy.0.display()))?;
    let options = Options::new(copy.0.clone(), seed, ops, kills);
    let report = shard_soak::run(&options).map_err(|e| anyhow!("{e:#}"))?;
    println!("{report}");
    Ok(())
}

/// A copied binary, removed on drop.
struct BinaryCopy(std::path::PathBuf);

impl Drop for BinaryCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
