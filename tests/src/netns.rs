//! A network namespace guard: `ip netns add` on create, processes killed and
//! `ip netns delete` on drop.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd;
use crate::process::Child;

/// A named network namespace that exists as long as this guard (unless it was made by
/// someone else: [`Netns::existing`]).
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// Creates namespace `name`, brings `lo` up and turns off IPv6 duplicate address
    /// detection (lab addresses are unique by construction; DAD only adds delay).
    pub fn create(name: &str) -> Result<Netns> {
        cmd::run(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("create network namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        for key in ["all", "default"] {
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{key}.accept_dad=0"),
            ])?;
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{key}.disable_ipv6=0"),
            ])?;
        }
        Ok(ns)
    }

    /// A namespace that someone else made and removes (a network node the agent made):
    /// dropping this handle leaves it alone.
    pub fn existing(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program args...` inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        command_in(&self.name, args)
    }

    /// Runs `args` inside the namespace to completion; returns stdout, fails on non-zero.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        cmd::run(&mut self.command(args)).with_context(|| format!("in namespace {}", self.name))
    }

    /// Like `exec`, but the command is killed after `limit` (coreutils `timeout`).
    pub fn exec_timeout(&self, limit: Duration, args: &[&str]) -> Result<String> {
        let secs = limit.as_secs().max(1).to_string();
        let mut full = vec!["timeout", "--kill-after=5", secs.as_str()];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]);
        c.args(args);
        cmd::run(&mut c)
    }

    /// Starts a long-running process inside the namespace, output logged under `log_dir`.
    pub fn spawn(&self, log_dir: &Path, label: &str, args: &[&str]) -> Result<Child> {
        Child::spawn(self.command(args), log_dir, label)
            .with_context(|| format!("in namespace {}", self.name))
    }

    /// Process ids of everything still running inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        pids_of(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            delete_netns(&self.name);
        }
    }
}

/// A command that runs `program args...` inside namespace `name` (`ip netns exec`).
pub fn command_in(name: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name]);
    c.args(args);
    // Servers may run as other users (postgres): start from a directory they can read.
    c.current_dir("/");
    c
}

/// Whether namespace `name` exists (`/run/netns/<name>`).
pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Process ids inside namespace `name`.
pub fn pids_of(name: &str) -> Vec<i32> {
    cmd::run(Command::new("ip").args(["netns", "pids", name]))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever still runs in namespace `name` and deletes it. Best effort: used from
/// Drop and for leftovers of killed runs.
pub fn delete_netns(name: &str) {
    for pid in pids_of(name) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = cmd::output(Command::new("ip").args(["netns", "delete", name]));
}

/// Names of all network namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = cmd::run(Command::new("ip").args(["netns", "list"]))?;
    Ok(parse_netns_list(&out))
}

/// Parses `ip netns list` output ("name (id: 3)" or "name" per line).
pub fn parse_netns_list(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netns_list_with_and_without_ids() {
        let out = "wft-1a-3-web (id: 2)\nblue\n\n";
        assert_eq!(
            parse_netns_list(out),
            vec!["wft-1a-3-web".to_string(), "blue".to_string()]
        );
    }
}
