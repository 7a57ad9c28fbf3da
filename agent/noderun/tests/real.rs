//! Real nodes, as root: namespaces made here (`wft-<pid hex>-nr<n>`, removed by a guard
//! also on failure), Debian's nginx/PostgreSQL/Redis, cgroups, htb shaping. Addresses in
//! 198.18.0.0/15 and fd00::/8, traffic only between the namespaces made here.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use weft_noderun::{
    CgroupParent, CgroupVersion, EgressLimit, NodeRun, RunEvent, Supervisor, SupervisorConfig,
    VM_NOTE, Volume, shape,
};

static NEXT: AtomicU32 = AtomicU32::new(1);

fn prefix() -> String {
    format!("wft-{:x}-", std::process::id())
}

fn ip(netns: Option<&str>, args: &[&str]) {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    let out = c.args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} in {netns:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command in a namespace, returns stdout (trimmed) and success.
fn exec_in(ns: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    )
}

/// A node namespace with `eth0` (198.18.<n>.1/24, fd00:<n>::1/64) veth'd to a peer
/// namespace (198.18.<n>.2 and .3, fd00:<n>::2), a data root and a cgroup root name.
struct Lab {
    n: u32,
    node: String,
    peer: String,
    root: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let node = format!("{}nr{n}", prefix());
        let peer = format!("{}nr{n}p", prefix());
        let root = std::env::temp_dir().join(format!("{}nr{n}-root", prefix()));
        let lab = Lab {
            n,
            node,
            peer,
            root,
        };
        ip(None, &["netns", "add", &lab.node]);
        ip(None, &["netns", "add", &lab.peer]);
        let (a, b) = (format!("wftnr{n}a"), format!("wftnr{n}b"));
        ip(
            None,
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        );
        ip(
            None,
            &["link", "set", &a, "netns", &lab.node, "name", "eth0"],
        );
        ip(
            None,
            &["link", "set", &b, "netns", &lab.peer, "name", "eth0"],
        );
        for (ns, hosts) in [(&lab.node, vec![1]), (&lab.peer, vec![2, 3])] {
            ip(Some(ns), &["link", "set", "lo", "up"]);
            ip(Some(ns), &["link", "set", "eth0", "up"]);
            for h in hosts {
                ip(
                    Some(ns),
                    &["addr", "add", &format!("198.18.{n}.{h}/24"), "dev", "eth0"],
                );
                if h < 3 {
                    ip(
                        Some(ns),
                        &[
                            "addr",
                            "add",
                            &format!("fd00:{n}::{h}/64"),
                            "dev",
                            "eth0",
                            "nodad",
                        ],
                    );
                }
            }
        }
        lab
    }

    fn addr(&self, h: u8) -> IpAddr {
        format!("198.18.{}.{h}", self.n).parse().unwrap()
    }

    fn netns(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.node)
    }

    fn config(&self) -> SupervisorConfig {
        let mut c = SupervisorConfig::new(&self.root);
        c.cgroup_root = format!("{}nr{}-cg", prefix(), self.n);
        // On v1 the groups nest under this test's own (a sandbox's accounting stays whole);
        // v2 does not allow that (no internal processes), so there they go to the top.
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        c.cgroup_parent = if v2 {
            CgroupParent::HierarchyRoot
        } else {
            CgroupParent::Own
        };
        c.stop_grace = Duration::from_secs(3);
        c.delete_data_on_remove = true;
        c
    }

    fn run(&self, name: &str) -> NodeRun {
        NodeRun {
            key: format!("net{}/{name}", self.n),
            netns: self.netns(),
            node_type: "container".into(),
            image: String::new(),
            command: Vec::new(),
            env: BTreeMap::new(),
            cpu_millis: 0,
            memory_bytes: 0,
            volumes: Vec::new(),
            listen: vec![self.addr(1), format!("fd00:{}::1", self.n).parse().unwrap()],
            ports: Vec::new(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.node, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn eventually<T>(bound: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<RunEvent>,
    bound: Duration,
    want: impl Fn(&RunEvent) -> bool,
) -> Option<RunEvent> {
    tokio::time::timeout(bound, async {
        loop {
            match rx.recv().await {
                Ok(e) if want(&e) => return Some(e),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_http_from_the_node() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("web");
    run.image = "nginx:latest".into();
    run.ports = vec![8080];
    let t0 = Instant::now();
    let st = sup.ensure(&run).await.unwrap();
    assert!(
        st.ready,
        "not ready: {st:?}\n{}",
        std::fs::read_to_string(&st.log_path).unwrap_or_default()
    );
    eprintln!("nginx ready in {:?}", t0.elapsed());
    assert_eq!(st.profile.as_deref(), Some("nginx"));
    let url = format!("http://{}:8080/", lab.addr(1));
    let (ok, code) = exec_in(
        &lab.peer,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            &url,
        ],
    );
    assert!(ok && code == "200", "curl: {code}");
    let url6 = format!("http://[fd00:{}::1]:8080/", lab.n);
    let (ok, body) = exec_in(&lab.peer, &["curl", "-s", "--max-time", "5", &url6]);
    // The profile's page names the node (not its network: a mirror's copy answers alike).
    let name = run.key.rsplit('/').next().unwrap_or(&run.key);
    assert!(
        ok && body.contains(&format!("<h1>{name}</h1>")),
        "curl v6: {body}"
    );
    assert!(st.data_dir.starts_with(&lab.root));
    sup.remove(&run.key).await.unwrap();
    assert!(
        !st.log_path.exists(),
        "data deleted with delete_data_on_remove"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_answers_ping() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("cache");
    run.image = "redis:7".into();
    let st = sup.ensure(&run).await.unwrap();
    assert!(
        st.ready,
        "not ready: {st:?}\n{}",
        std::fs::read_to_string(&st.log_path).unwrap_or_default()
    );
    let (ok, out) = exec_in(
        &lab.peer,
        &[
            "redis-cli",
            "-h",
            &lab.addr(1).to_string(),
            "-p",
            "6379",
            "ping",
        ],
    );
    assert!(ok && out == "PONG", "redis-cli: {out}");
    // Runs as the profile's user.
    let pid = st.pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(!uid.contains("\t0\t"), "redis runs as root: {uid}");
    sup.remove(&run.key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_select_1_with_data_in_its_volume() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("db");
    run.image = "postgres:16".into();
    run.node_type = "service".into();
    run.volumes = vec![Volume {
        name: "data".into(),
        path: "/var/lib/postgresql/data".into(),
        size_bytes: 1 << 30,
    }];
    let t0 = Instant::now();
    let st = sup.ensure(&run).await.unwrap();
    assert!(
        st.ready,
        "not ready: {st:?}\n{}",
        std::fs::read_to_string(&st.log_path).unwrap_or_default()
    );
    eprintln!("postgres (initdb + start) ready in {:?}", t0.elapsed());
    let (ok, out) = exec_in(
        &lab.peer,
        &[
            "psql",
            "-h",
            &lab.addr(1).to_string(),
            "-p",
            "5432",
            "-U",
            "postgres",
            "-tAc",
            "SELECT 1",
        ],
    );
    assert!(ok && out == "1", "psql: {out}");
    assert!(st.data_dir.starts_with(&lab.root));
    assert!(
        st.data_dir.ends_with("volumes/data"),
        "{}",
        st.data_dir.display()
    );
    assert!(st.data_dir.join("PG_VERSION").exists());
    assert!(
        st.notes.iter().any(|n| n.contains("not enforced")),
        "{:?}",
        st.notes
    );
    // Killed hard (a stale postmaster.pid, orphaned backends): restarted, recovers, answers.
    let mut events = sup.events();
    // SAFETY: kill(2) on the postmaster we started.
    unsafe { libc::kill(st.pid.unwrap() as i32, libc::SIGKILL) };
    let ready = next_event(&mut events, Duration::from_secs(30), |e| {
        matches!(e, RunEvent::Ready { .. })
    })
    .await;
    assert!(
        ready.is_some(),
        "not ready again:\n{}",
        std::fs::read_to_string(&st.log_path).unwrap_or_default()
    );
    let (ok, out) = exec_in(
        &lab.peer,
        &[
            "psql",
            "-h",
            &lab.addr(1).to_string(),
            "-p",
            "5432",
            "-U",
            "postgres",
            "-tAc",
            "SELECT 2",
        ],
    );
    assert!(ok && out == "2", "psql after restart: {out}");
    assert_eq!(sup.status(&run.key).unwrap().restarts, 1);
    sup.remove(&run.key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_is_restarted_and_remove_leaves_nothing() {
    let lab = Lab::new();
    let mut cfg = lab.config();
    cfg.delete_data_on_remove = false;
    let sup = Supervisor::new(cfg).unwrap();
    let mut events = sup.events();
    let mut run = lab.run("worker");
    // A tree: the shell and a sleeping child.
    run.command = vec!["echo hello-from-run; sleep 300 & wait".into()];
    let st = sup.ensure(&run).await.unwrap();
    assert_eq!(st.argv[0], "/bin/sh");
    let pid = st.pid.unwrap();
    assert!(
        next_event(&mut events, Duration::from_secs(5), |e| matches!(
            e,
            RunEvent::Started { .. }
        ))
        .await
        .is_some()
    );
    // The first run has spoken before it is killed.
    let said = |n: usize| {
        eventually(Duration::from_secs(5), || {
            let l = std::fs::read_to_string(&st.log_path).ok()?;
            (l.lines().filter(|x| *x == "hello-from-run").count() == n).then_some(())
        })
    };
    assert!(said(1).is_some(), "first run said nothing");
    // SAFETY: kill(2) on the process we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let exited = next_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, RunEvent::Exited { .. })
    })
    .await;
    assert_eq!(
        exited,
        Some(RunEvent::Exited {
            key: run.key.clone(),
            code: None,
            signal: Some(libc::SIGKILL)
        })
    );
    let restarted = next_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, RunEvent::Restarted { .. })
    })
    .await;
    let Some(RunEvent::Restarted {
        pid: pid2,
        restarts,
        ..
    }) = restarted
    else {
        panic!("no Restarted event")
    };
    assert_eq!(restarts, 1);
    assert_ne!(pid2, pid);
    let st = sup.status(&run.key).unwrap();
    assert_eq!(st.restarts, 1);
    assert_eq!(st.restart_log.len(), 1);
    assert!(
        st.restart_log[0].reason.contains("signal 9"),
        "{:?}",
        st.restart_log
    );
    assert!(
        said(2).is_some(),
        "log lacks both runs:\n{}",
        std::fs::read_to_string(&st.log_path).unwrap_or_default()
    );
    // The tree (shell + sleep) is in the node's group.
    let tree = procs(st.cgroup_paths.last().unwrap());
    assert!(tree.len() >= 2, "tree {tree:?}");
    sup.remove(&run.key).await.unwrap();
    for p in &tree {
        assert!(!alive(*p), "pid {p} of the tree is still alive");
    }
    assert!(sup.status(&run.key).is_none());
    for d in &st.cgroup_paths {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(
        st.log_path.exists(),
        "data kept without delete_data_on_remove"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_are_written_and_the_process_is_in_the_group() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("limited");
    run.node_type = "vm".into();
    run.command = vec!["sh".into(), "-c".into(), "sleep 30".into()];
    run.cpu_millis = 500;
    run.memory_bytes = 64 << 20;
    let st = sup.ensure(&run).await.unwrap();
    let pid = st.pid.unwrap();
    assert!(st.notes.iter().any(|n| n == VM_NOTE), "{:?}", st.notes);
    let read = |d: &Path, f: &str| {
        std::fs::read_to_string(d.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    match sup
        .cgroup_version()
        .expect("a cgroup hierarchy on the test host")
    {
        CgroupVersion::V1 => {
            let (cpu, mem) = (&st.cgroup_paths[0], &st.cgroup_paths[1]);
            assert_eq!(read(cpu, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(cpu, "cpu.cfs_period_us"), "100000");
            assert_eq!(
                read(mem, "memory.limit_in_bytes"),
                (64u64 << 20).to_string()
            );
        }
        CgroupVersion::V2 => {
            let d = &st.cgroup_paths[0];
            assert_eq!(read(d, "cpu.max"), "50000 100000");
            assert_eq!(read(d, "memory.max"), (64u64 << 20).to_string());
        }
    }
    for d in &st.cgroup_paths {
        assert!(procs(d).contains(&pid), "{pid} not in {}", d.display());
    }
    // The process is in the node's namespace.
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let want = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(lab.netns()).unwrap().ino()
    };
    assert_eq!(ns.to_string_lossy(), format!("net:[{want}]"));
    // A limits-only change is applied in place.
    run.cpu_millis = 1500;
    let st2 = sup.ensure(&run).await.unwrap();
    assert_eq!(st2.pid, Some(pid));
    if sup.cgroup_version() == Some(CgroupVersion::V1) {
        assert_eq!(read(&st.cgroup_paths[0], "cpu.cfs_quota_us"), "150000");
    }
    sup.remove(&run.key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_shows_a_busy_node_throttled_by_its_cpu_limit() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("busy");
    run.command = vec!["sh".into(), "-c".into(), "while :; do :; done".into()];
    run.cpu_millis = 100;
    run.memory_bytes = 64 << 20;
    sup.ensure(&run).await.unwrap();
    // A tenth of a CPU for a process that wants a whole one: throttled in most periods.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let u = loop {
        let u = sup.usage(&run.key).expect("supervised");
        if u.cpu_throttled_periods >= 5 || std::time::Instant::now() > deadline {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(u.cpu_throttled_periods >= 5, "{u:?}");
    assert!(u.cpu_periods >= u.cpu_throttled_periods, "{u:?}");
    assert!(u.cpu_throttled_seconds > 0.0, "{u:?}");
    assert!(u.cpu_seconds > 0.0, "{u:?}");
    assert_eq!(u.memory_limit_bytes, Some(64 << 20), "{u:?}");
    assert!(u.memory_bytes > 0, "{u:?}");
    assert!(sup.usage("no/such").is_none());
    sup.remove(&run.key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_is_idempotent_and_restarts_on_a_changed_spec() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("idem");
    run.command = vec!["sleep".into(), "100".into()];
    let a = sup.ensure(&run).await.unwrap();
    let b = sup.ensure(&run).await.unwrap();
    assert_eq!(a.pid, b.pid);
    assert_eq!(b.restarts, 0);
    run.command = vec!["sleep".into(), "200".into()];
    let c = sup.ensure(&run).await.unwrap();
    assert_ne!(c.pid, a.pid);
    assert_eq!(c.argv, vec!["sleep".to_string(), "200".into()]);
    assert_eq!(c.generation, 1);
    assert!(!alive(a.pid.unwrap()));
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", c.pid.unwrap())).unwrap();
    assert_eq!(cmdline, "sleep\u{0}200\u{0}");
    // Nothing to run: said so, nothing started.
    let mut idle = lab.run("idle");
    idle.node_type = "vm".into();
    let st = sup.ensure(&idle).await.unwrap();
    assert!(!st.running && st.pid.is_none());
    assert!(
        st.notes.iter().any(|n| n.contains("nothing to run")),
        "{:?}",
        st.notes
    );
    assert!(st.notes.iter().any(|n| n == VM_NOTE));
    sup.shutdown().await.unwrap();
    assert!(!alive(c.pid.unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_supervisor_takes_over_a_node_from_one_that_died() {
    let lab = Lab::new();
    let first = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("takeover");
    run.command = vec!["sleep".into(), "300".into()];
    let old = first.ensure(&run).await.unwrap().pid.unwrap();
    // The agent is killed: nothing stops its nodes' processes.
    std::mem::forget(first);
    assert!(alive(old));
    let second = Supervisor::new(lab.config()).unwrap();
    let new = second.ensure(&run).await.unwrap().pid.unwrap();
    assert_ne!(new, old);
    assert!(
        eventually(Duration::from_secs(5), || (!alive(old)).then_some(())).is_some(),
        "the earlier agent's process still runs beside the new one"
    );
    second.shutdown().await.unwrap();
    assert!(!alive(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_start_is_an_error_naming_the_node() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("bad");
    run.command = vec!["/nonexistent/program".into()];
    let e = sup.ensure(&run).await.unwrap_err().to_string();
    assert!(
        e.contains(&run.key) && e.contains("/nonexistent/program"),
        "{e}"
    );
    assert!(sup.status(&run.key).is_none());
    let bad = lab.root.join("bad-profiles.toml");
    std::fs::create_dir_all(&lab.root).unwrap();
    std::fs::write(
        &bad,
        "[[profile]]\nname = \"x\"\nimages = [\"a\"]\ncommand = [\"{nope}\"]\n",
    )
    .unwrap();
    let e = weft_noderun::Profiles::from_file(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2") && e.contains("{nope}") && e.contains("bad-profiles.toml"),
        "{e}"
    );
}

/// Enters namespace `ns` on this (throwaway) thread.
fn enter(ns: &str) {
    let f = File::open(Path::new("/run/netns").join(ns)).unwrap();
    // SAFETY: setns on an open namespace fd, this thread only.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

/// Sends `bytes` from the node to `dst` (a sink in the peer); seconds until the sink saw
/// all of it.
fn transfer(node: String, peer: String, dst: IpAddr, port: u16, bytes: usize) -> f64 {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = std::thread::spawn(move || {
        enter(&peer);
        let l = TcpListener::bind(SocketAddr::new(dst, port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        (n, Instant::now())
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let sender = std::thread::spawn(move || {
        enter(&node);
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(5))
            .unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k]).unwrap();
            left -= k;
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        t0
    });
    let t0 = sender.join().unwrap();
    let (n, t1) = sink.join().unwrap();
    assert_eq!(n, bytes);
    (t1 - t0).as_secs_f64()
}

fn qdisc(lab: &Lab) -> String {
    exec_in(&lab.node, &["tc", "-s", "qdisc", "show", "dev", "eth0"]).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_limit_slows_one_destination_only() {
    let lab = Lab::new();
    let (limited, free) = (lab.addr(2), lab.addr(3));
    let limits = vec![EgressLimit {
        destinations: vec![format!("{limited}/32"), format!("fd00:{}::2/128", lab.n)],
        bits_per_second: 10_000_000,
    }];
    const BYTES: usize = 2 * 1024 * 1024; // 16.8 Mbit: 1.68 s at 10 Mbit/s
    let measure = |dst: IpAddr, port: u16| {
        let (node, peer) = (lab.node.clone(), lab.peer.clone());
        tokio::task::spawn_blocking(move || transfer(node, peer, dst, port, BYTES))
    };
    let before = measure(limited, 7001).await.unwrap();
    shape(&lab.netns(), "eth0", &limits).await.unwrap();
    let q = qdisc(&lab);
    assert!(q.contains("qdisc htb 1: root"), "{q}");
    let (ok, classes) = exec_in(&lab.node, &["tc", "class", "show", "dev", "eth0"]);
    assert!(ok && classes.contains("rate 10Mbit"), "{classes}");
    let (ok, filters) = exec_in(&lab.node, &["tc", "filter", "show", "dev", "eth0"]);
    assert!(ok && filters.contains("flowid 1:10"), "{filters}");

    let slow = measure(limited, 7002).await.unwrap();
    let fast = measure(free, 7003).await.unwrap();
    // Idempotent: the same limits again change nothing (the qdisc's counters survive).
    let sent = |q: &str| -> u64 {
        q.lines()
            .skip_while(|l| !l.contains("qdisc htb 1: root"))
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Sent ")
                    .and_then(|r| r.split(' ').next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    let s1 = sent(&qdisc(&lab));
    shape(&lab.netns(), "eth0", &limits).await.unwrap();
    let s2 = sent(&qdisc(&lab));
    assert!(
        s1 > BYTES as u64 && s2 >= s1,
        "htb recreated: sent {s1} then {s2}"
    );
    shape(&lab.netns(), "eth0", &[]).await.unwrap();
    let q = qdisc(&lab);
    assert!(!q.contains("htb"), "{q}");
    let after = measure(limited, 7004).await.unwrap();
    eprintln!(
        "2 MiB node->peer: unshaped {before:.3} s; limited to 10 Mbit/s {slow:.3} s ({:.2} Mbit/s); \
         other destination {fast:.3} s; after removal {after:.3} s",
        BYTES as f64 * 8.0 / slow / 1e6
    );
    assert!(
        slow >= 1.4,
        "limited transfer took {slow:.3} s, expected >= 1.4 s"
    );
    assert!(
        slow <= 4.0,
        "limited transfer took {slow:.3} s, expected about 1.7 s"
    );
    assert!(fast < 0.8, "unlimited destination took {fast:.3} s");
    assert!(after < 0.8, "after removal took {after:.3} s");
    // Errors name what is wrong.
    let e = shape(&lab.netns(), "nope0", &limits)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_command_backs_off_doubling() {
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).unwrap();
    let mut run = lab.run("crashy");
    run.command = vec!["sh".into(), "-c".into(), "echo crash; exit 3".into()];
    sup.ensure(&run).await.unwrap();
    // 200 + 400 + 800 ms of backoff: three restarts within ~1.4 s (+ run time).
    let st = eventually(Duration::from_secs(5), || {
        let st = sup.status(&run.key)?;
        (st.restart_log.len() >= 4).then_some(st)
    })
    .expect("no four restarts within 5 s");
    let delays: Vec<u128> = st
        .restart_log
        .iter()
        .map(|r| r.backoff.as_millis())
        .collect();
    assert_eq!(&delays[..4], &[200, 400, 800, 1600], "{delays:?}");
    assert!(
        st.restart_log.iter().all(|r| r.reason == "exit code 3"),
        "{:?}",
        st.restart_log
    );
    assert_eq!(st.last_exit.as_ref().and_then(|e| e.code), Some(3));
    sup.remove(&run.key).await.unwrap();
}

/// Start/stop cost of many plain nodes in one namespace (`NODES`, default 200):
/// `cargo test -p weft-noderun --test real many_nodes -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn many_nodes() {
    let n: usize = std::env::var("NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let lab = Lab::new();
    let sup = std::sync::Arc::new(Supervisor::new(lab.config()).unwrap());
    let runs: Vec<NodeRun> = (0..n)
        .map(|i| {
            let mut r = lab.run(&format!("n{i}"));
            r.command = vec!["sleep".into(), "1000".into()];
            r.cpu_millis = 100;
            r.memory_bytes = 32 << 20;
            r
        })
        .collect();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for r in runs.clone() {
        let sup = sup.clone();
        set.spawn(async move { sup.ensure(&r).await.map(|s| s.pid) });
    }
    while let Some(r) = set.join_next().await {
        assert!(r.unwrap().unwrap().is_some());
    }
    let up = t0.elapsed();
    let t1 = Instant::now();
    for r in &runs {
        let sup = sup.clone();
        let key = r.key.clone();
        set.spawn(async move { sup.remove(&key).await.map(|_| None) });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    eprintln!(
        "{n} nodes (process + cgroup + limits): started in {up:?}, removed in {:?}",
        t1.elapsed()
    );
}

/// An agent that only observes must start on a host where no node can run (no cgroup
/// hierarchy mounted): the supervisor is made, says why, and each node fails with that.
/// The test runs itself again in a private mount namespace with every cgroup hierarchy
/// unmounted (the host's mounts are not touched).
#[tokio::test]
async fn without_cgroup_hierarchies_the_supervisor_starts_and_each_node_fails_saying_why() {
    const NAME: &str =
        "without_cgroup_hierarchies_the_supervisor_starts_and_each_node_fails_saying_why";
    if std::env::var_os("WEFT_NR_NO_CGROUPS").is_none() {
        let script = r#"findmnt -rn -t cgroup,cgroup2 -o TARGET | sort -r |
            while read -r m; do umount -l "$m" || exit 3; done
            exec "$0" "$@""#;
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(std::env::current_exe().expect("test binary"))
            .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
            .env("WEFT_NR_NO_CGROUPS", "1")
            .output()
            .expect("unshare");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("1 passed"),
            "the inner run ran the test: {text}"
        );
        return;
    }
    let lab = Lab::new();
    let sup = Supervisor::new(lab.config()).expect("the supervisor is made without cgroups");
    assert_eq!(sup.cgroup_version(), None);
    let why = sup.unavailable().expect("it says why").to_owned();
    assert!(why.contains("cgroup"), "{why}");
    let err = sup
        .ensure(&lab.run("web"))
        .await
        .expect_err("a node cannot run")
        .to_string();
    assert!(
        err.contains("nodes cannot run on this host") && err.contains(&why),
        "{err}"
    );
    assert!(sup.status(&lab.run("web").key).is_none());
}
