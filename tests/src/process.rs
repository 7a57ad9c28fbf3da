//! A guard for long-running processes (servers, agent, controller): its own process group,
//! output captured to files, killed (whole group) when dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::describe;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running process in its own process group. Drop sends SIGTERM to the group, then
/// SIGKILL after the grace period.
pub struct Child {
    name: String,
    command: String,
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
    grace: Duration,
    done: bool,
}

impl Child {
    /// Spawns `cmd` in a new process group, with stdout and stderr written to
    /// `<log_dir>/<name>.<n>.stdout|stderr`.
    pub fn spawn(mut cmd: Command, log_dir: &Path, name: &str) -> Result<Child> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let stdout = log_dir.join(format!("{name}.{n}.stdout"));
        let stderr = log_dir.join(format!("{name}.{n}.stderr"));
        let out = File::create(&stdout).with_context(|| format!("create {}", stdout.display()))?;
        let err = File::create(&stderr).with_context(|| format!("create {}", stderr.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: `{command}`"))?;
        Ok(Child {
            name: name.to_string(),
            command,
            child,
            stdout,
            stderr,
            grace: Duration::from_secs(5),
            done: false,
        })
    }

    /// Sets how long Drop/stop waits after SIGTERM before SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Everything the process wrote so far, stdout then stderr.
    pub fn output(&self) -> String {
        let mut s = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(&self.stderr).unwrap_or_default());
        s
    }

    /// The last `n` lines of the process's output, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let out = self.output();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        !self.done && matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the process has exited (reaps it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Number of output lines that contain every string of `needles`.
    pub fn count_lines(&self, needles: &[&str]) -> usize {
        self.output()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits (at most `timeout`) until a line of output contains every string of `needles`;
    /// returns that line. Fails early if the process exits.
    pub fn wait_for_line(&mut self, needles: &[&str], timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let out = self.output();
            if let Some(l) = out.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(l.to_string());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before printing {:?} (`{}`); last output:\n{}",
                    self.name,
                    needles,
                    self.command,
                    self.tail(30)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not print {:?} within {:?} (`{}`); last output:\n{}",
                    self.name,
                    needles,
                    timeout,
                    self.command,
                    self.tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL to the whole group at once and reaps the process (a crash, for tests).
    pub fn kill_hard(&mut self) {
        if self.done {
            return;
        }
        signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
        self.done = true;
    }

    /// SIGTERM to the process (a service manager's stop), then waits up to `timeout` for it
    /// to exit; fails (after killing the group) if it did not, or if it exited unsuccessfully.
    pub fn terminate(&mut self, timeout: Duration) -> Result<()> {
        if self.done {
            bail!("{} had already exited", self.name);
        }
        let pid = self.child.id();
        // SAFETY: a signal to our own child, by pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        signal_group(pid, libc::SIGKILL);
        let _ = self.child.wait();
        self.done = true;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!(
                "{} exited with {s} after SIGTERM:\n{}",
                self.name,
                self.tail(20)
            ),
            None => bail!(
                "{} still ran {timeout:?} after SIGTERM:\n{}",
                self.name,
                self.tail(20)
            ),
        }
    }

    /// SIGTERM to the group, then SIGKILL after the grace period. Idempotent.
    pub fn stop(&mut self) {
        if self.done {
            return;
        }
        let pid = self.child.id();
        signal_group(pid, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < self.grace {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Children of the leader may outlive it: always finish the group.
        signal_group(pid, libc::SIGKILL);
        let _ = self.child.wait();
        self.done = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; a negative pid addresses the group
    // this guard created with process_group(0), whose id is the leader's pid.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alive and not a zombie (the container's init may reap orphans late).
    fn running(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn waits_for_a_line_and_kills_the_group() {
        let dir = std::env::temp_dir().join(format!("weft-lab-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild.pid");
        let mut c = Command::new("sh");
        let script = format!(
            "sleep 1000 & echo $! > {}; echo ready now; wait",
            pidfile.display()
        );
        c.args(["-c", &script]);
        let mut child = Child::spawn(c, &dir, "sh")
            .unwrap()
            .with_grace(Duration::from_secs(1));
        let line = child
            .wait_for_line(&["ready"], Duration::from_secs(5))
            .unwrap();
        assert_eq!(line, "ready now");
        assert_eq!(child.count_lines(&["now"]), 1);
        let grandchild = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        assert!(running(&grandchild));
        drop(child);
        crate::eventually(Duration::from_secs(5), Duration::from_millis(20), || {
            anyhow::ensure!(
                !running(&grandchild),
                "grandchild {grandchild} still running"
            );
            Ok(())
        })
        .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn early_exit_is_reported_with_output() {
        let dir = std::env::temp_dir().join(format!("weft-lab-proc2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Command::new("sh");
        c.args(["-c", "echo boom >&2; exit 3"]);
        let mut child = Child::spawn(c, &dir, "failing").unwrap();
        let err = child
            .wait_for_line(&["never"], Duration::from_secs(5))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("exited") && msg.contains("boom"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
