//! A process supervisor for the lab: runs a command (inside a namespace or not), starts it
//! again when it exits, with a bounded number of restarts and a growing pause between
//! them, and keeps every run's output in its own files. Drop stops the watcher and the
//! process (its whole group).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::{self, Netns};
use crate::process::Child;

/// How often the watcher looks at the process.
const POLL: Duration = Duration::from_millis(20);

/// Restart policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Restarts after the first start; when they are used up the supervisor gives up.
    pub max_restarts: u32,
    /// Pause before the first restart; doubled for each further one, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// SIGTERM-to-SIGKILL grace when stopping.
    pub grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_restarts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            grace: Duration::from_secs(2),
        }
    }
}

impl Policy {
    /// The pause before restart number `n` (1-based).
    pub fn pause_before(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// One run of the command.
#[derive(Debug, Clone)]
pub struct Run {
    pub pid: u32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// How it ended (`None` while it runs, or when it was stopped by the supervisor).
    pub exit: Option<String>,
}

#[derive(Default)]
struct State {
    child: Option<Child>,
    runs: Vec<Run>,
    gave_up: bool,
    /// The last failure to start the command.
    spawn_error: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What to run and where.
#[derive(Clone)]
struct Spec {
    netns: Option<String>,
    args: Vec<String>,
    log_dir: PathBuf,
    label: String,
    policy: Policy,
}

impl Spec {
    fn spawn(&self) -> Result<Child> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let cmd = match &self.netns {
            Some(ns) => netns::command_in(ns, &args),
            None => {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            }
        };
        Ok(Child::spawn(cmd, &self.log_dir, &self.label)?.with_grace(self.policy.grace))
    }
}

/// A supervised command. Drop stops it.
pub struct Supervised {
    label: String,
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Starts `args` (inside `ns` when given) and watches it. Each run logs to
    /// `<log_dir>/<label>.<n>.stdout|stderr`. Fails if the first start fails.
    pub fn start(
        ns: Option<&Netns>,
        args: &[&str],
        log_dir: &Path,
        label: &str,
        policy: Policy,
    ) -> Result<Supervised> {
        if args.is_empty() {
            bail!("nothing to supervise");
        }
        let spec = Spec {
            netns: ns.map(|n| n.name().to_string()),
            args: args.iter().map(|a| a.to_string()).collect(),
            log_dir: log_dir.to_path_buf(),
            label: label.to_string(),
            policy,
        };
        let child = spec
            .spawn()
            .with_context(|| format!("start supervised {label}"))?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        {
            let mut st = shared.lock();
            st.runs.push(run_of(&child));
            st.child = Some(child);
        }
        let watcher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("supervise-{label}"))
                .spawn(move || watch(&shared, &spec))
                .context("start the supervisor thread")?
        };
        Ok(Supervised {
            label: label.to_string(),
            shared,
            watcher: Some(watcher),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The pid of the running process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let mut st = self.shared.lock();
        let c = st.child.as_mut()?;
        c.is_running().then(|| c.pid())
    }

    /// Every run so far, the first first.
    pub fn runs(&self) -> Vec<Run> {
        self.shared.lock().runs.clone()
    }

    /// Restarts so far (runs after the first).
    pub fn restarts(&self) -> u32 {
        u32::try_from(self.shared.lock().runs.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// Whether the restarts are used up and the process is not running.
    pub fn gave_up(&self) -> bool {
        self.shared.lock().gave_up
    }

    /// The last failure to start the command, if any.
    pub fn spawn_error(&self) -> Option<String> {
        self.shared.lock().spawn_error.clone()
    }

    /// Everything every run wrote, in order (stdout then stderr per run).
    pub fn output(&self) -> String {
        self.runs()
            .iter()
            .flat_map(|r| [&r.stdout, &r.stderr])
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Waits (at most `timeout`) until a process other than `old_pid` runs; its pid.
    pub fn wait_restarted(&self, old_pid: u32, timeout: Duration) -> Result<u32> {
        crate::eventually(timeout, POLL, || match self.pid() {
            Some(p) if p != old_pid => Ok(p),
            other => bail!(
                "{} not running again yet (pid {other:?}, runs {:?})",
                self.label,
                self.runs()
            ),
        })
    }

    /// Stops watching and stops the process (SIGTERM to its group, SIGKILL after the
    /// grace). Idempotent.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let child = self.shared.lock().child.take();
        if let Some(mut c) = child {
            c.stop();
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_of(c: &Child) -> Run {
    Run {
        pid: c.pid(),
        stdout: c.stdout_path().to_path_buf(),
        stderr: c.stderr_path().to_path_buf(),
        exit: None,
    }
}

/// The watcher: restarts the process when it exits, until stopped or out of restarts.
fn watch(shared: &Shared, spec: &Spec) {
    let policy = spec.policy;
    let mut restarts = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        {
            let mut st = shared.lock();
            let exited = match st.child.as_mut() {
                Some(c) => c.exit_status().map(|s| s.to_string()),
                None => Some("did not start".to_string()),
            };
            let Some(exit) = exited else {
                drop(st);
                std::thread::sleep(POLL);
                continue;
            };
            if let Some(mut old) = st.child.take() {
                // What the leader left behind in its group goes with it.
                old.stop();
            }
            if let Some(last) = st.runs.last_mut()
                && last.exit.is_none()
            {
                last.exit = Some(exit);
            }
            if restarts >= policy.max_restarts {
                st.gave_up = true;
                return;
            }
        }
        restarts += 1;
        if !pause(shared, policy.pause_before(restarts)) {
            return;
        }
        match spec.spawn() {
            Ok(c) => {
                let mut st = shared.lock();
                st.runs.push(run_of(&c));
                st.child = Some(c);
            }
            Err(e) => shared.lock().spawn_error = Some(format!("{e:#}")),
        }
    }
}

/// Sleeps `d` in small steps; false when asked to stop meanwhile.
fn pause(shared: &Shared, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !shared.stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let p = Policy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..Policy::default()
        };
        let pauses: Vec<u128> = (1..=5).map(|n| p.pause_before(n).as_millis()).collect();
        assert_eq!(pauses, vec![100, 200, 350, 350, 350]);
        assert_eq!(p.pause_before(200), Duration::from_millis(350));
    }

    /// Without a namespace (no root needed): a command that keeps failing is started
    /// exactly 1 + max_restarts times, each run with its own log.
    #[test]
    fn gives_up_after_the_bounded_restarts() {
        let dir = std::env::temp_dir().join(format!("weft-lab-sup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = Policy {
            max_restarts: 3,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            grace: Duration::from_secs(1),
        };
        let s = Supervised::start(
            None,
            &["sh", "-c", "echo run; exit 3"],
            &dir,
            "failing",
            policy,
        )
        .unwrap();
        crate::eventually(Duration::from_secs(10), Duration::from_millis(20), || {
            anyhow::ensure!(s.gave_up(), "still restarting: {:?}", s.runs());
            Ok(())
        })
        .unwrap();
        let runs = s.runs();
        assert_eq!(runs.len(), 4, "{runs:?}");
        assert_eq!(s.restarts(), 3);
        assert!(
            runs.iter()
                .all(|r| r.exit.as_deref() == Some("exit status: 3")),
            "{runs:?}"
        );
        assert_eq!(s.output().matches("run\n").count(), 4);
        assert_eq!(s.pid(), None);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
