//! Prometheus' own checker, `promtool` (Debian's `prometheus` package, which
//! `cargo xtask setup` installs), run on what the controller exposes.

#![allow(dead_code)] // each test file uses part of it

use std::io::Write as _;
use std::process::{Command, Stdio};

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `promtool check metrics` on `text`: its lint (names, units, suffixes, help) must
/// find nothing. promtool comes with Debian's `prometheus` package (`cargo xtask setup`
/// installs it); without it a test run as root fails, one as a user skips.
pub fn promtool_check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if !is_root() => {
            eprintln!("promtool not found ({e}); skipped (cargo xtask setup installs it)");
            return;
        }
        Err(e) => panic!("promtool not found ({e}): run `cargo xtask setup`"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n---\n{text}"
    );
}

/// Runs `promtool ARGS` in `dir`; `None` when promtool is missing and the test is not
/// run as root (as root it must be there: `cargo xtask setup` installs it).
pub fn promtool(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) if !is_root() => {
            eprintln!("promtool not found ({e}); skipped (cargo xtask setup installs it)");
            return None;
        }
        Err(e) => panic!("promtool not found ({e}): run `cargo xtask setup`"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}: {report}");
    Some(report)
}
