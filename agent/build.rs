//! Builds the kernel programs (agent-ebpf) with the nightly toolchain and bpf-linker, so
//! that `cargo build` on stable produces a self-contained agent.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("agent has no parent dir"))?;
    // `cargo xtask setup` builds bpf-linker into target/tools/bin (README, "Two commands").
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let tools_bin = target_dir.join("tools/bin");
    let tools_bin = if tools_bin.is_absolute() {
        tools_bin
    } else {
        workspace.join(tools_bin)
    };
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_bin.clone()];
    paths.extend(env::split_paths(&path));
    if !paths.iter().any(|p| p.join("bpf-linker").is_file()) {
        return Err(anyhow!(
            "bpf-linker not found in {} or PATH: run `cargo xtask setup` first",
            tools_bin.display()
        ));
    }
    // SAFETY: build scripts are single-threaded.
    unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("agent-common/src").display()
    );

    let ebpf_dir = workspace.join("agent-ebpf");
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
