//! A request router in a process of its own, so that the connections it serves outlive
//! the agent: a restart or an upgrade of the agent leaves the router serving (the routed
//! connections in flight and new ones alike), and the next agent adopts it.
//!
//! - The process is the agent's own executable run as `weft-agent request-router ...`
//!   (spawned from `/proc/self/exe`, so an upgrade that replaced the file still starts
//!   the running version), in a session of its own, its log in
//!   `<run dir>/<router namespace>.log`.
//! - The agent talks to it on a Unix socket, `<run dir>/<router namespace>.sock` (the
//!   directory 0700, root's): one JSON request per connection, one JSON reply.
//!   `hello` (what it serves, its pid and protocol), `rules` (the ports and their rules;
//!   replies the changes made and the counters), `counters`, `stop`.
//! - A new agent finds the socket of each router it needs: a router that serves the same
//!   namespaces under the same protocol is adopted (its counters continue), any other is
//!   stopped and a new one started.
//! - It ends on `stop`, on SIGTERM, and by itself when its namespace is removed
//!   (checked every second), so a router is never left serving nothing.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weft_reqroute::HeaderRule;

use super::serving::Serving;
use super::{RouterError, RouterRules};
use crate::networks::namespaces;

/// The first argument that makes the agent's executable a request router.
pub const SUBCOMMAND: &str = "request-router";
/// Changes when requests or replies change, or what a router's connections are to the
/// node's firewall: a router of another protocol is replaced, not adopted (its
/// connections end). 2: every upstream connection carries `weft_firewall::ROUTED_MARK`
/// (routers of 1 connected unmarked, past the node's firewall: not kept serving).
pub const PROTOCOL: u32 = 2;
/// Where routers keep their control sockets and logs, by default.
pub const DEFAULT_RUN_DIR: &str = "/run/weft/request-routers";
/// A request or reply is at most this long.
const MAX_MESSAGE: u64 = 1 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// A router's settings, as the agent passes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub key: String,
    /// The router's namespace.
    pub netns: PathBuf,
    pub origin: PathBuf,
    pub target: PathBuf,
    /// The origin has IPv6 addresses.
    pub v6: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Hello,
    Rules { ports: Vec<PortRules> },
    Counters,
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
struct PortRules {
    port: u16,
    /// `(header name, value)`; empty: the whole port to the target.
    rules: Vec<(String, Option<String>)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hello: Option<Hello>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counters: Option<Vec<(String, f64)>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    pid: u32,
    identity: Identity,
}

fn to_wire(rules: &RouterRules) -> Vec<PortRules> {
    rules
        .iter()
        .map(|(port, r)| PortRules {
            port: *port,
            rules: r
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        })
        .collect()
}

fn from_wire(ports: &[PortRules]) -> Result<RouterRules, String> {
    let mut out = RouterRules::new();
    for p in ports {
        let rules = p
            .rules
            .iter()
            .map(|(n, v)| HeaderRule::new(n, v.as_deref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("port {}: {e}", p.port))?;
        if out.insert(p.port, rules).is_some() {
            return Err(format!("port {} given twice", p.port));
        }
    }
    Ok(out)
}

/// The control socket of the router whose namespace is `netns`.
pub fn control_path(run_dir: &Path, netns: &Path) -> PathBuf {
    let name = netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    run_dir.join(format!("{name}.sock"))
}

// ---- the router's side ----

/// `weft-agent request-router --key K --netns R --origin O --target T --control SOCKET
/// [--v6]`: serves until stopped.
pub fn main(args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let (identity, control) = parse_args(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weft-router")
        .enable_all()
        .build()
        .context("the router's runtime")?;
    rt.block_on(serve(identity, control))
}

fn parse_args(args: &[String]) -> anyhow::Result<(Identity, PathBuf)> {
    let mut it = args.iter();
    let (mut key, mut netns, mut origin, mut target, mut control, mut v6) =
        (None, None, None, None, None, false);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--key" => key = Some(value()?),
            "--netns" => netns = Some(PathBuf::from(value()?)),
            "--origin" => origin = Some(PathBuf::from(value()?)),
            "--target" => target = Some(PathBuf::from(value()?)),
            "--control" => control = Some(PathBuf::from(value()?)),
            "--v6" => v6 = true,
            other => anyhow::bail!("{SUBCOMMAND}: unknown argument {other:?}"),
        }
    }
    let need = |v: Option<PathBuf>, name: &str| {
        v.ok_or_else(|| anyhow::anyhow!("{SUBCOMMAND}: --{name} is required"))
    };
    Ok((
        Identity {
            key: key.ok_or_else(|| anyhow::anyhow!("{SUBCOMMAND}: --key is required"))?,
            netns: need(netns, "netns")?,
            origin: need(origin, "origin")?,
            target: need(target, "target")?,
            v6,
        },
        need(control, "control")?,
    ))
}

async fn serve(identity: Identity, control: PathBuf) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let serving = Arc::new(Serving::start(
        &identity.key,
        &identity.netns,
        &identity.origin,
        &identity.target,
        identity.v6,
    )?);
    if let Some(dir) = control.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&control);
    let listener = tokio::net::UnixListener::bind(&control)
        .with_context(|| format!("listening on {}", control.display()))?;
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| m.ino());
    let bound = inode(&control);
    let hello = Hello {
        protocol: PROTOCOL,
        pid: std::process::id(),
        identity: identity.clone(),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    info!(steer = %identity.key, namespace = %identity.netns.display(), control = %control.display(), "request router serving");
    let why = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let (serving, hello, stop) = (serving.clone(), hello.clone(), stop_tx.clone());
                    tokio::spawn(async move {
                        if let Err(e) = answer(conn, &serving, &hello, &stop).await {
                            debug!(error = %e, "request router: a control connection");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "request router: accepting on the control socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = every.tick() => {
                if !namespaces::is_mounted(&identity.netns) {
                    break "its namespace was removed";
                }
            }
            _ = stop_rx.wait_for(|s| *s) => break "stopped by the agent",
            _ = term.recv() => break "SIGTERM",
        }
    };
    serving.stop();
    // Another router may have taken the socket's name since (a replacement): only ours goes.
    if bound.is_some() && inode(&control) == bound {
        let _ = std::fs::remove_file(&control);
    }
    info!(steer = %identity.key, reason = why, "request router stopped");
    Ok(())
}

/// One control request and its reply.
async fn answer(
    conn: tokio::net::UnixStream,
    serving: &Serving,
    hello: &Hello,
    stop: &tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_MESSAGE));
    tokio::time::timeout(CALL_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let mut stopping = false;
    let reply = match serde_json::from_str::<Request>(line.trim_end()) {
        Err(e) => Reply {
            error: Some(format!("request: {e}")),
            ..Default::default()
        },
        Ok(Request::Hello) => Reply {
            hello: Some(hello.clone()),
            ..Default::default()
        },
        Ok(Request::Counters) => Reply {
            counters: Some(serving.measurements()),
            ..Default::default()
        },
        Ok(Request::Rules { ports }) => match from_wire(&ports) {
            Err(e) => Reply {
                error: Some(e),
                ..Default::default()
            },
            Ok(rules) => match serving.set_rules(&rules).await {
                Ok(n) => Reply {
                    changes: Some(n),
                    counters: Some(serving.measurements()),
                    ..Default::default()
                },
                Err(e) => Reply {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            },
        },
        Ok(Request::Stop) => {
            stopping = true;
            Reply::default()
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.flush().await?;
    if stopping {
        stop.send_replace(true);
    }
    Ok(())
}

// ---- the agent's side ----

/// One request to the router at `control` (blocking, bounded by [`CALL_TIMEOUT`]).
fn call_blocking(control: &Path, request: &Request) -> Result<Reply, String> {
    let mut s = std::os::unix::net::UnixStream::connect(control)
        .map_err(|e| format!("connecting to {}: {e}", control.display()))?;
    s.set_read_timeout(Some(CALL_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(CALL_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let mut msg = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    msg.push(b'\n');
    s.write_all(&msg)
        .map_err(|e| format!("writing to {}: {e}", control.display()))?;
    let mut line = String::new();
    BufReader::new(s.take(MAX_MESSAGE))
        .read_line(&mut line)
        .map_err(|e| format!("reading from {}: {e}", control.display()))?;
    let reply: Reply = serde_json::from_str(line.trim_end())
        .map_err(|e| format!("the reply from {}: {e}", control.display()))?;
    match reply.error {
        Some(e) => Err(e),
        None => Ok(reply),
    }
}

async fn call(control: &Path, request: Request) -> Result<Reply, String> {
    let control = control.to_owned();
    tokio::task::spawn_blocking(move || call_blocking(&control, &request))
        .await
        .map_err(|e| e.to_string())?
}

/// Whether process `pid` has ended (gone, or a zombie not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

fn is_router(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == SUBCOMMAND.as_bytes()))
}

/// Stops the router at `control`, if one answers there, and waits until its process has
/// ended (killed after 3 s). Blocking. Returns what it served (the caller undoes what it
/// gave its sides: [`super::transparent::undo`]).
pub fn stop_blocking(control: &Path) -> Option<Identity> {
    let Ok(Reply { hello: Some(h), .. }) = call_blocking(control, &Request::Hello) else {
        return None;
    };
    let pid = h.pid;
    if let Err(e) = call_blocking(control, &Request::Stop) {
        debug!(pid, error = %e, "stopping a request router");
    }
    let waited = Instant::now();
    while !exited(pid) {
        if waited.elapsed() > Duration::from_secs(3) {
            if is_router(pid) {
                warn!(pid, "a request router did not stop within 3 s: killed");
                // SAFETY: a plain kill(2) of a process checked to be a router.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let killed = Instant::now();
            while !exited(pid) && killed.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(10));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    info!(pid, control = %control.display(), "request router stopped");
    Some(h.identity)
}

/// The agent's handle on a router process.
pub struct RouterProcess {
    control: PathBuf,
    pub pid: u32,
    counters: Arc<Mutex<Vec<(String, f64)>>>,
    alive: Arc<AtomicBool>,
    refresher: JoinHandle<()>,
    /// What the router stopped in its place served.
    replaced: Option<Identity>,
}

impl Drop for RouterProcess {
    /// The process goes on serving (the next agent adopts it).
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl RouterProcess {
    /// Adopts the router that serves `identity` at its control socket in `run_dir`, or
    /// starts one (`exe`: the agent's executable) after stopping whatever answered there.
    /// `on_gone` is called once if the process stops answering.
    pub async fn find_or_start(
        exe: &Path,
        run_dir: &Path,
        identity: &Identity,
        on_gone: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, RouterError> {
        let control = control_path(run_dir, &identity.netns);
        let found = call(&control, Request::Hello)
            .await
            .ok()
            .and_then(|r| r.hello);
        let mut replaced = None;
        let pid = match found {
            Some(h) if h.protocol == PROTOCOL && h.identity == *identity => {
                info!(steer = %identity.key, pid = h.pid, "adopted the previous agent's request router: its connections continue");
                h.pid
            }
            other => {
                if let Some(h) = other {
                    info!(steer = %identity.key, pid = h.pid, protocol = h.protocol, "a request router serving something else (or another protocol) is replaced");
                    let c = control.clone();
                    replaced = tokio::task::spawn_blocking(move || stop_blocking(&c))
                        .await
                        .ok()
                        .flatten();
                }
                start(exe, run_dir, &control, identity).await?
            }
        };
        let counters = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let refresher = tokio::spawn(refresh(
            control.clone(),
            counters.clone(),
            alive.clone(),
            on_gone,
        ));
        Ok(Self {
            control,
            pid,
            counters,
            alive,
            refresher,
            replaced,
        })
    }

    /// What the router this one replaced served (a previous agent's, for other
    /// namespaces or of another protocol), if it did.
    pub fn replaced(&self) -> Option<&Identity> {
        self.replaced.as_ref()
    }

    /// Sends the ports and rules; the changes the router made.
    pub async fn set_rules(&self, rules: &RouterRules) -> Result<usize, RouterError> {
        let reply = call(
            &self.control,
            Request::Rules {
                ports: to_wire(rules),
            },
        )
        .await
        .map_err(|e| RouterError::Other(format!("setting the router's rules: {e}")))?;
        if let Some(c) = reply.counters {
            *self.counters.lock().unwrap_or_else(|p| p.into_inner()) = c;
        }
        Ok(reply.changes.unwrap_or(0))
    }

    /// The counters last read (at most a second old).
    pub fn measurements(&self) -> Vec<(String, f64)> {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether it answered its last call.
    pub fn alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    /// Stops the process (its connections end) and waits for it to end.
    pub async fn stop(&self) {
        self.refresher.abort();
        let c = self.control.clone();
        let _ = tokio::task::spawn_blocking(move || stop_blocking(&c)).await;
    }

    /// [`RouterProcess::stop`], blocking (the agent's exit).
    pub fn stop_now(&self) {
        self.refresher.abort();
        stop_blocking(&self.control);
    }
}

/// Reads the counters every second; the first failure to answer marks it gone.
async fn refresh(
    control: PathBuf,
    counters: Arc<Mutex<Vec<(String, f64)>>>,
    alive: Arc<AtomicBool>,
    on_gone: Box<dyn Fn() + Send + Sync>,
) {
    let mut every = tokio::time::interval(REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match call(&control, Request::Counters).await {
            Ok(Reply {
                counters: Some(c), ..
            }) => {
                *counters.lock().unwrap_or_else(|p| p.into_inner()) = c;
                alive.store(true, Relaxed);
            }
            other => {
                if alive.swap(false, Relaxed) {
                    warn!(control = %control.display(), error = ?other.err(), "the request router does not answer: it is started again");
                    on_gone();
                }
            }
        }
    }
}

/// Starts a router process; returns its pid once it answers.
async fn start(
    exe: &Path,
    run_dir: &Path,
    control: &Path,
    identity: &Identity,
) -> Result<u32, RouterError> {
    let io = |what: String| move |source| RouterError::Io { what, source };
    std::fs::create_dir_all(run_dir).map_err(io(format!("making {}", run_dir.display())))?;
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("restricting {}", run_dir.display())))?;
    let log_path = control.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("opening {}", log_path.display())))?;
    let err_log = log
        .try_clone()
        .map_err(io(format!("opening {}", log_path.display())))?;
    let mut cmd = tokio::process::Command::new(exe);
    // `ps` shows `weft-agent request-router ...`, not the path it was started from.
    cmd.arg0("weft-agent")
        .arg(SUBCOMMAND)
        .arg("--key")
        .arg(&identity.key)
        .arg("--netns")
        .arg(&identity.netns)
        .arg("--origin")
        .arg(&identity.origin)
        .arg("--target")
        .arg(&identity.target)
        .arg("--control")
        .arg(control);
    if identity.v6 {
        cmd.arg("--v6");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .kill_on_drop(false);
    // SAFETY: setsid(2) only, between fork and exec: a session of its own, so that
    // signals to the agent's process group do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(io(format!("starting {} {SUBCOMMAND}", exe.display())))?;
    let pid = child.id().unwrap_or(0);
    let started = Instant::now();
    loop {
        if let Ok(Reply { hello: Some(h), .. }) = call(control, Request::Hello).await
            && h.pid == pid
        {
            info!(steer = %identity.key, pid, log = %log_path.display(), "request router started");
            // Dropped, the child is reaped by the runtime when it ends.
            return Ok(pid);
        }
        let ended = matches!(child.try_wait(), Ok(Some(_)));
        if ended || started.elapsed() > READY_TIMEOUT {
            if !ended {
                let _ = child.start_kill();
            }
            let tail = std::fs::read_to_string(&log_path)
                .map(|s| {
                    let lines: Vec<&str> = s.lines().collect();
                    lines[lines.len().saturating_sub(5)..].join("\n")
                })
                .unwrap_or_default();
            return Err(RouterError::Other(format!(
                "the request router process {} ({}): {tail}",
                if ended {
                    "ended at once"
                } else {
                    "did not answer within 10 s"
                },
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_survive_the_wire_and_bad_ones_name_their_port() {
        let mut rules = RouterRules::new();
        rules.insert(80, vec![HeaderRule::new("x-weave", Some("b")).unwrap()]);
        rules.insert(443, vec![HeaderRule::new("host", None).unwrap()]);
        rules.insert(5432, vec![]);
        let wire: Vec<PortRules> =
            serde_json::from_slice(&serde_json::to_vec(&to_wire(&rules)).unwrap()).unwrap();
        assert_eq!(from_wire(&wire).unwrap(), rules);
        let bad = vec![PortRules {
            port: 8080,
            rules: vec![("bad name".into(), None)],
        }];
        let e = from_wire(&bad).unwrap_err();
        assert!(e.starts_with("port 8080: header name"), "{e}");
        let twice = vec![
            PortRules {
                port: 1,
                rules: vec![],
            },
            PortRules {
                port: 1,
                rules: vec![],
            },
        ];
        assert_eq!(from_wire(&twice).unwrap_err(), "port 1 given twice");
    }

    #[test]
    fn arguments_are_required_and_unknown_ones_refused() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let (id, control) = parse_args(&args(
            "--key k --netns /run/netns/r --origin /o --target /t --control /c.sock --v6",
        ))
        .unwrap();
        assert_eq!(id.key, "k");
        assert!(id.v6);
        assert_eq!(control, PathBuf::from("/c.sock"));
        let e = parse_args(&args("--key k --netns /r --origin /o --target /t")).unwrap_err();
        assert!(e.to_string().contains("--control is required"), "{e}");
        let e = parse_args(&args("--key k --bogus 1")).unwrap_err();
        assert!(
            e.to_string().contains("unknown argument \"--bogus\""),
            "{e}"
        );
        let e = parse_args(&args("--key")).unwrap_err();
        assert!(e.to_string().contains("--key needs a value"), "{e}");
    }

    #[test]
    fn a_zombie_or_missing_process_counts_as_exited() {
        assert!(!exited(std::process::id()));
        assert!(exited(u32::MAX - 1));
    }
}
