//! Test set-up: network namespaces (named `weft-fw-<pid>-<n>`, removed on drop, also when
//! a test fails), veth pairs, running code inside a namespace. Set-up uses `ip`; the
//! crate under test never does. Shared by the integration tests and the `measure` example.
#![allow(dead_code)]

use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn unique_name() -> String {
    format!(
        "weft-fw-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

pub fn must(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace made for one test, deleted on drop.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique_name();
        must("ip", &["netns", "add", &name]);
        let ns = Netns {
            path: PathBuf::from(format!("/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        must("ip", &a)
    }

    /// `nft` inside the namespace (tests only: drift by hand, cross-checks).
    pub fn nft(&self, args: &[&str]) -> String {
        let mut a = vec!["netns", "exec", self.name.as_str(), "nft"];
        a.extend_from_slice(args);
        must("ip", &a)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(&self.path).expect("open netns");
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace fd; this thread only.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth between `a` (198.18.0.1/30, fd00::1/126) and `b` (198.18.0.2/30, fd00::2/126).
/// Waits (up to 5 s) until IPv4 and IPv6 get from `a` to `b`.
pub fn link(a: &Netns, b: &Netns) {
    for ns in [a, b] {
        // No duplicate address detection: addresses usable at once. /proc/sys/net is the
        // namespace of the thread that opens it.
        ns.run(|| {
            for c in ["all", "default"] {
                let f = format!("/proc/sys/net/ipv6/conf/{c}/accept_dad");
                std::fs::write(&f, "0").unwrap_or_else(|e| panic!("{f}: {e}"));
            }
        });
    }
    a.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", "198.18.0.1/30", "dev", "va"]);
    a.ip(&["addr", "add", "fd00::1/126", "dev", "va", "nodad"]);
    b.ip(&["addr", "add", "198.18.0.2/30", "dev", "vb"]);
    b.ip(&["addr", "add", "fd00::2/126", "dev", "vb", "nodad"]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    let t = std::time::Instant::now();
    for addr in ["198.18.0.2", "fd00::2"] {
        while !a.exec(&["ping", "-c1", "-W1", addr]).status.success() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(5),
                "{addr} unreachable"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Many namespaces, made and deleted with one `ip -batch` each way.
pub struct ManyNetns {
    pub names: Vec<String>,
}

fn ip_batch(lines: &str) {
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write ip batch");
    let st = child.wait().expect("ip -batch");
    assert!(st.success(), "ip -batch failed");
}

impl ManyNetns {
    pub fn new(n: usize) -> ManyNetns {
        let names: Vec<String> = (0..n).map(|_| unique_name()).collect();
        let mut guard = ManyNetns { names: Vec::new() };
        let mut lines = String::new();
        for name in &names {
            lines.push_str(&format!("netns add {name}\n"));
        }
        guard.names = names;
        ip_batch(&lines);
        guard
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.names
            .iter()
            .map(|n| PathBuf::from(format!("/run/netns/{n}")))
            .collect()
    }
}

impl Drop for ManyNetns {
    fn drop(&mut self) {
        let mut lines = String::new();
        for name in &self.names {
            lines.push_str(&format!("netns del {name}\n"));
        }
        let _ = std::panic::catch_unwind(|| ip_batch(&lines));
    }
}
