//! `cargo xtask setup`: the TOOLCHAIN.md recipe, cargo-fuzz, Debian packages, schemathesis,
//! bpffs. Every step checks first and does nothing when its work is already done.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::sh::{self, probe, run_inherit, step, tools_dir};

/// Debian packages the lab, the tests and the demo use.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "nftables",
    "ethtool",
    "tcpdump",
    "bpftool",
    "curl",
    "openssl",
    "socat",
    "python3",
    // The venv that schemathesis (the OpenAPI check) is installed into.
    "python3-venv",
    "iptables",
    "nginx",
    "postgresql",
    "redis-server",
    "redis-tools",
    "wrk",
    "graphviz",
    // A DNS server (binary only, no system service) and dig, for DNS-named services.
    "dnsmasq-base",
    "bind9-dnsutils",
    // Mirrors' volumes are copied incrementally by rsync (the agents run its daemon and
    // client).
    "rsync",
    // Weaves: nodes' volumes are btrfs subvolumes in a loop-mounted pool (mkfs.btrfs once
    // per agent; snapshots and clones are ioctls).
    "btrfs-progs",
    // Real clients and servers for exact request counts (issue 12 section 3): HTTP/2
    // (nghttp, h2c), MariaDB server and client, RabbitMQ with a Python client, WebSocket and
    // gRPC servers and clients in Python, and tshark to check weft flow by flow.
    "nghttp2-client",
    "mariadb-server",
    "mariadb-client",
    "rabbitmq-server",
    "python3-pika",
    "python3-websockets",
    "python3-grpcio",
    "tshark",
    // Builds the C reference flow programs (bench/flow-reference) that `cargo xtask bench`
    // measures weft's against in the same run.
    "clang",
    // promtool: the tests check /metrics (`promtool check metrics`) and the shipped
    // alerting rules (`promtool check rules`, `promtool test rules`).
    "prometheus",
    // The controller's etcd back end (`--etcd`): tests start their own members on
    // loopback.
    "etcd-server",
    // The web console's browser tests and the demo's screenshots: headless Chromium over
    // WebDriver, with a font to draw text in.
    "chromium",
    "chromium-driver",
    "fonts-dejavu-core",
];

/// Distro services that installing the packages may start in the root namespace; the lab
/// runs its own instances, so these are stopped.
const SERVICES: &[&str] = &[
    "nginx",
    "postgresql",
    "redis-server",
    "mariadb",
    "rabbitmq-server",
    "prometheus",
    "etcd",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    step("setup");
    rust_src()?;
    bpf_linker()?;
    crate::fuzz::cargo_fuzz()?;
    packages()?;
    crate::schemathesis::install()?;
    stop_services();
    bpffs()?;
    println!("    setup done");
    Ok(())
}

fn is_root() -> bool {
    weft_lab::is_root()
}

fn rust_src() -> Result<()> {
    let (ok, out) = probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    if ok
        && out
            .lines()
            .any(|l| l.trim() == "rust-src" || l.starts_with("rust-src"))
    {
        println!("    rust-src for nightly: installed");
        return Ok(());
    }
    run_inherit(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> Result<()> {
    let tools = tools_dir();
    let bin = tools.join("bin/bpf-linker");
    let (ok, out) = probe(Command::new(&bin).arg("--version"));
    if ok {
        println!("    bpf-linker: {} ({})", out.trim(), bin.display());
        return Ok(());
    }
    println!(
        "    bpf-linker: building {BPF_LINKER_VERSION} against the nightly toolchain's libLLVM (about a minute)"
    );
    let (ok, sysroot) = probe(Command::new("rustc").args(["+nightly", "--print", "sysroot"]));
    if !ok {
        bail!("`rustc +nightly --print sysroot` failed: is the nightly toolchain installed?");
    }
    let libdir = Path::new(sysroot.trim()).join("lib");
    let so = std::fs::read_dir(&libdir)
        .with_context(|| format!("read {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .min()
        .with_context(|| format!("no libLLVM.so.*-nightly in {}", libdir.display()))?;
    let (_, vv) = probe(Command::new("rustc").args(["+nightly", "-vV"]));
    let major = llvm_major(&vv).context("no `LLVM version:` in `rustc +nightly -vV`")?;
    let llvm_lib = tools.join("llvm/lib");
    std::fs::create_dir_all(&llvm_lib).with_context(|| format!("create {}", llvm_lib.display()))?;
    let so_name = so.file_name().context("libLLVM file name")?;
    for link in [llvm_lib.join("libLLVM.so"), llvm_lib.join(so_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    run_inherit(
        sh::cargo()
            .env("LLVM_PREFIX", tools.join("llvm"))
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .arg("--root")
            .arg(&tools),
    )?;
    let (ok, out) = probe(Command::new(&bin).arg("--version"));
    if !ok {
        bail!("{} was installed but does not run", bin.display());
    }
    println!("    bpf-linker: {}", out.trim());
    Ok(())
}

/// The LLVM major version from `rustc -vV` output.
fn llvm_major(vv: &str) -> Option<u32> {
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

fn installed(pkg: &str) -> bool {
    let (ok, out) = probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
    ok && out.trim() == "install ok installed"
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    Debian packages: all {} installed", PACKAGES.len());
        return Ok(());
    }
    println!("    Debian packages missing: {}", missing.join(" "));
    if !is_root() {
        bail!("installing packages needs root: run as root (sudo -E cargo xtask setup)");
    }
    run_inherit(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_inherit(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn stop_services() {
    for svc in SERVICES {
        let script = Path::new("/etc/init.d").join(svc);
        let (running, _) = if script.exists() {
            probe(Command::new("service").args([svc, "status"]))
        } else {
            (false, String::new())
        };
        if running {
            println!("    stopping the distro's {svc} service (the lab runs its own)");
            let (ok, _) = probe(Command::new("service").args([svc, "stop"]));
            if !ok {
                println!("    warning: `service {svc} stop` failed; the lab does not depend on it");
            }
        }
    }
}

fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        println!("    bpffs: mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        bail!("mounting bpffs needs root");
    }
    run_inherit(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn detects_bpffs() {
        assert!(bpffs_mounted("bpf /sys/fs/bpf bpf rw,nosuid 0 0\n"));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
    }
}
