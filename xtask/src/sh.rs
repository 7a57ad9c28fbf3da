//! Running commands from xtask: printed before they run, PATH with the project's tools.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use weft_lab::cmd::describe;

/// The workspace root.
pub fn root() -> PathBuf {
    weft_lab::weft::workspace_root()
}

/// `<root>/target/tools`: bpf-linker and the libLLVM link it needs (`WEFT_TOOLS_DIR`
/// overrides it, e.g. to check a cold build of the tools).
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("WEFT_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root().join("target").join("tools"),
    }
}

/// PATH with `target/tools/bin` first (the agent's build script needs bpf-linker).
pub fn path_with_tools() -> String {
    let tools = tools_dir().join("bin");
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{}:{p}", tools.display()),
        _ => format!(
            "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            tools.display()
        ),
    }
}

/// A cargo command in the workspace root with the tools on PATH.
pub fn cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut c = Command::new(cargo);
    c.current_dir(root()).env("PATH", path_with_tools());
    c
}

/// Prints a step header.
pub fn step(what: &str) {
    println!("==> {what}");
}

/// Prints and runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run_inherit(cmd: &mut Command) -> Result<()> {
    println!("    $ {}", describe(cmd));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly; returns (success, stdout).
pub fn probe(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ),
        Err(_) => (false, String::new()),
    }
}
