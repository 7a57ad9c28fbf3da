//! Steering against the real kernel (root only): "hypervisor" namespaces with real
//! bridges and node namespaces made by the network kinds, TCP servers in the origin and
//! the target that answer with their name, a client on the origin's network. Everything
//! is bounded in time and removed by guards, also when a test fails.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use weft_proto::v1::resource::Spec;
use weft_proto::v1::{
    AddressAssignment, FirewallRule, NetworkNode, NetworkSegment, PortRange, Steer, SteerHealth,
    SteerTarget,
};

use super::*;
use crate::FLOW_OBJECT;
use crate::control::DesiredResource;
use crate::datapath::Datapath;
use crate::datapath::{Pins, pins};
use crate::networks::{Networks, NetworksConfig, NodeReconciler, SegmentReconciler};
use crate::testns::{TempPins, TestNetns, in_ns, require_root};

static NEXT: AtomicU32 = AtomicU32::new(0);
const PORT: u16 = 7900;

/// Removes the node namespaces of a prefix, also when a test fails.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_dir(namespaces::NETNS_DIR) {
            for e in dir.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.0))
                {
                    let _ = namespaces::remove(&e.path());
                }
            }
        }
    }
}

/// A server process in a node namespace; killed on drop (also when stopped).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1].encode() + b"\n"
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2])))
s.listen(1024)
print("ready", flush=True)
def serve(c):
    try:
        f = c.makefile("rb")
        for line in f:
            c.sendall(name)
    except Exception:
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Starts a server answering `name` to every line, in the namespace `netns`.
fn server(netns: &Path, name: &str) -> Server {
    let file = std::fs::File::open(netns).expect("node namespace");
    let fd = file.as_raw_fd();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SERVER, name, &PORT.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setns in the forked child before exec; `file` outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = Server(cmd.spawn().expect("python3"));
    let out = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server ready in 10 s");
    assert_eq!(line.trim(), "ready");
    drop(file);
    child
}

/// An open connection of the client; `talk` sends a line and returns the answer.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Self(BufReader::new(s)))
    }

    fn talk(&mut self) -> std::io::Result<String> {
        self.0.get_mut().write_all(b"hello\n")?;
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim().to_owned())
    }
}

/// `n` connections from the client, `messages` messages each: every connection's answers
/// (one side for its whole life, or an error).
fn connections(
    client: &Path,
    addr: SocketAddr,
    n: usize,
    messages: usize,
) -> Vec<Result<String, String>> {
    in_ns(client, move || {
        (0..n)
            .map(|_| {
                let mut c = Conn::open(addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
                let first = c.talk().map_err(|e| e.to_string())?;
                for _ in 1..messages {
                    let again = c.talk().map_err(|e| e.to_string())?;
                    if again != first {
                        return Err(format!("answered by {first}, then by {again}"));
                    }
                }
                Ok(first)
            })
            .collect()
    })
}

fn count(results: &[Result<String, String>], who: &str) -> usize {
    results
        .iter()
        .filter(|r| r.as_deref().ok() == Some(who))
        .count()
}

fn failures(results: &[Result<String, String>]) -> Vec<&String> {
    results.iter().filter_map(|r| r.as_ref().err()).collect()
}

/// One "hypervisor": a namespace with bridges and nodes, and its own datapath.
struct Hv {
    ns: TestNetns,
    prefix: String,
    seg: SegmentReconciler,
    nodes: NodeReconciler,
    datapath: SharedDatapath,
    _sweep: Sweep,
}

impl Hv {
    async fn new() -> Self {
        let ns = TestNetns::new();
        let prefix = format!(
            "wft-{:x}-st{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        );
        let sweep = Sweep(prefix.clone());
        let net = Networks::new(
            NetworksConfig {
                netns_prefix: prefix.clone(),
                ..Default::default()
            },
            None,
            Some(&ns.path),
        )
        .await
        .expect("networks");
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        let root = std::env::temp_dir().join(format!("{prefix}-nodes"));
        let mut cfg = weft_noderun::SupervisorConfig::new(root.clone());
        cfg.cgroup_root = prefix.clone();
        let supervisor = Arc::new(weft_noderun::Supervisor::new(cfg).expect("supervisor"));
        let datapath = Datapath::load(FLOW_OBJECT).expect("object").into_shared();
        Self {
            seg: SegmentReconciler {
                networks: net.clone(),
            },
            nodes: NodeReconciler::new(net, tx, supervisor, root),
            ns,
            prefix,
            datapath,
            _sweep: sweep,
        }
    }

    fn path(&self, network: &str, node: &str) -> PathBuf {
        namespaces::path_of(&names::netns(&self.prefix, network, node))
    }

    /// Networks (one bridge each, this host only) and their nodes (name, address).
    async fn build(&self, networks: &[(&str, &[(&str, &str)])]) {
        let segs: Vec<DesiredResource> = networks
            .iter()
            .map(|(n, _)| DesiredResource {
                key: (*n).into(),
                generation: 1,
                spec: Spec::NetworkSegment(NetworkSegment {
                    network: (*n).into(),
                    ..Default::default()
                }),
            })
            .collect();
        ok(&self.seg.reconcile(&segs, Scope::All).await);
        let nodes: Vec<DesiredResource> = networks
            .iter()
            .flat_map(|(net, nodes)| {
                nodes.iter().map(move |(node, cidr)| DesiredResource {
                    key: format!("{net}/{node}"),
                    generation: 1,
                    spec: Spec::NetworkNode(NetworkNode {
                        network: (*net).into(),
                        node: (*node).into(),
                        // The IPv4 address, and fd00:80::<its last byte>/64; an IPv6
                        // address alone: an IPv6-only node.
                        addresses: if cidr.contains(':') {
                            vec![(*cidr).to_owned()]
                        } else {
                            vec![(*cidr).to_owned(), v6_of(cidr)]
                        }
                        .into_iter()
                        .enumerate()
                        .map(|(i, cidr)| AddressAssignment {
                            cidr,
                            gateway: String::new(),
                            shard_id: "s".into(),
                            allocation_seq: i as u64 + 1,
                        })
                        .collect(),
                        firewall: vec![FirewallRule {
                            sources: vec!["198.18.0.0/15".into(), "fd00::/8".into()],
                            protocol: "tcp".into(),
                            ports: vec![PortRange {
                                first: u32::from(PORT),
                                last: u32::from(PORT),
                            }],
                            accept: true,
                        }],
                        ..Default::default()
                    }),
                })
            })
            .collect();
        ok(&self.nodes.reconcile(&nodes, Scope::All).await);
    }

    async fn steering(&self) -> Arc<Steering> {
        self.steering_with(None, Arc::new(SteerMetrics::default()))
            .await
    }

    async fn steering_with(
        &self,
        signals: Option<mpsc::Sender<DriftSignal>>,
        metrics: Arc<SteerMetrics>,
    ) -> Arc<Steering> {
        self.steering_on(self.datapath.clone(), signals, metrics)
            .await
    }

    /// Steering on another datapath than the hypervisor's (an agent of its own).
    async fn steering_on(
        &self,
        datapath: SharedDatapath,
        signals: Option<mpsc::Sender<DriftSignal>>,
        metrics: Arc<SteerMetrics>,
    ) -> Arc<Steering> {
        Steering::new(
            datapath,
            SteerSettings {
                netns_prefix: self.prefix.clone(),
                host_netns: Some(self.ns.path.clone()),
                ..Default::default()
            },
            signals,
            metrics,
        )
        .await
        .expect("steering")
    }

    /// The programs on `hook` of `iface` (kernel order), with their run time and count
    /// so far (counted while `aya::sys::enable_stats` is held).
    fn costs(&self, iface: &str, hook: Hook) -> Vec<(String, Duration, u64)> {
        let dp = self.datapath.clone();
        let name = iface.to_owned();
        let on = in_host(Some(&self.ns.path), move || {
            dp.lock().unwrap().query(&name, hook).unwrap()
        })
        .unwrap();
        let infos: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .collect();
        on.iter()
            .filter_map(|p| {
                let i = infos.iter().find(|i| i.id() == p.id)?;
                Some((p.name.clone(), i.run_time(), i.run_count()))
            })
            .collect()
    }
}

/// The IPv6 address of a test node: fd00:80::<last byte of its IPv4 address>/64.
fn v6_of(cidr4: &str) -> String {
    let last = cidr4
        .split('/')
        .next()
        .and_then(|a| a.rsplit('.').next())
        .unwrap_or("1");
    format!("fd00:80::{last}/64")
}

fn ok(reports: &[ResourceReport]) {
    for r in reports {
        assert!(r.error.is_none(), "{}: {:?}", r.key, r.error);
    }
}

fn measurement(r: &ResourceReport, name: &str) -> f64 {
    r.measurements
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(f64::NAN)
}

const KEY: &str = "shadow/lab/o";

fn steer(spec: Steer) -> Vec<DesiredResource> {
    vec![DesiredResource {
        key: KEY.into(),
        generation: 1,
        spec: Spec::Steer(spec),
    }]
}

fn same_host(share_ppm: u32, key: &str, failover: Option<SteerHealth>) -> Steer {
    Steer {
        owner: "shadow/lab".into(),
        network: "p".into(),
        node: "o".into(),
        ports: vec![u32::from(PORT)],
        share_ppm,
        key: key.into(),
        seed: 7,
        failover,
        target_network: "s".into(),
        target_node: "t".into(),
        target_host: String::new(),
        tunnel_id: 0,
        request_rules: Vec::new(),
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// The failover check of the lab's tests: the origin's port every 100 ms, 3 failures
/// switch, and an answer to a line needed (a frozen server completes handshakes).
fn health_check() -> SteerHealth {
    SteerHealth {
        port: u32::from(PORT),
        interval_ms: 100,
        failures: 3,
        probe: b"ping\n".to_vec(),
    }
}

/// Whether `steering`'s steer [`KEY`] is failed over now.
fn failed_over(steering: &Steering) -> bool {
    lock(&steering.steers)
        .get(KEY)
        .is_some_and(|s| lock(&s.failover).active)
}

/// The `steer-target` of the cross-host tests: s/t, reached from `origin_host`.
fn cross_target(origin_host: IpAddr, tunnel_id: u32) -> Vec<DesiredResource> {
    vec![DesiredResource {
        key: KEY.into(),
        generation: 1,
        spec: Spec::SteerTarget(SteerTarget {
            owner: "shadow/lab".into(),
            network: "s".into(),
            node: "t".into(),
            origin_host: origin_host.to_string(),
            tunnel_id,
        }),
    }]
}

/// One 200 KB line sent from namespace `c` to `addr` on a new connection: who answered
/// (a large exchange is segmented on the way, the underlay's too).
fn big_exchange(c: &Path, addr: SocketAddr) -> String {
    in_ns(c, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut msg = vec![b'x'; 200_000];
        msg.push(b'\n');
        s.write_all(&msg).unwrap();
        let mut r = BufReader::new(s);
        let mut out = String::new();
        r.read_line(&mut out).unwrap();
        out.trim().to_owned()
    })
}

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 80, 10);

/// One host, origin network p (origin o and client c) and target network s, a mirror
/// (target t with o's address, and c's copy, which answers ARP for c there); servers in
/// o and t answering with their name.
async fn mirror() -> (Hv, Server, Server) {
    let hv = Hv::new().await;
    hv.build(&[
        ("p", &[("o", "198.18.80.10/24"), ("c", "198.18.80.20/24")]),
        ("s", &[("t", "198.18.80.10/24"), ("c", "198.18.80.20/24")]),
    ])
    .await;
    let origin = server(&hv.path("p", "o"), "origin");
    let target = server(&hv.path("s", "t"), "target");
    (hv, origin, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_share_is_kept_per_connection_and_failover_moves_new_connections() {
    require_root!();
    let (hv, origin, _target) = mirror().await;
    let c = hv.path("p", "c");
    let addr = SocketAddr::from((A, PORT));

    // The flow observer is on the origin's interface first; steering goes after it.
    let vo = (names::host_veth("p", "o"), 0u32);
    let vo_index = links::by_name(&TestNetns::handle_of(&hv.ns.path).await, &vo.0)
        .await
        .unwrap()
        .expect("vo")
        .index;
    {
        let mut dp = hv.datapath.lock().unwrap();
        dp.load_classifier(FLOW_IN).unwrap();
    }
    let dp = hv.datapath.clone();
    let name = vo.0.clone();
    in_host(Some(&hv.ns.path), move || {
        dp.lock()
            .unwrap()
            .attach(&name, vo_index, Hook::Egress, FLOW_IN, Order::First)
    })
    .unwrap()
    .unwrap();

    let (signal_tx, mut signals) = mpsc::channel(64);
    let metrics = Arc::new(SteerMetrics::default());
    let steering = hv.steering_with(Some(signal_tx), metrics.clone()).await;
    let rec = SteerReconciler {
        steering: steering.clone(),
    };

    // A target that is not there yet: the steer fails and says why; the target's
    // interface appearing is drift of the steer (repaired at once, not at the resync).
    let early = Steer {
        target_node: "later".into(),
        ..same_host(0, "connection", None)
    };
    let rep = rec.reconcile(&steer(early), Scope::All).await;
    assert!(
        rep[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("not on this host"),
        "{rep:?}"
    );
    let appeared = HostEvent {
        netns: None,
        at: Instant::now(),
        change: Change::LinkNew {
            ifindex: 999,
            name: names::host_veth("s", "later"),
            up: true,
            kind: Some("veth".into()),
        },
    };
    let d = rec.drift(std::slice::from_ref(&appeared));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].key, KEY);

    // Share 0: every connection to the origin.
    ok(&rec
        .reconcile(&steer(same_host(0, "connection", None)), Scope::All)
        .await);
    let on_hook = {
        let dp = hv.datapath.clone();
        let name = vo.0.clone();
        in_host(Some(&hv.ns.path), move || {
            dp.lock().unwrap().query(&name, Hook::Egress).unwrap()
        })
        .unwrap()
    };
    let names_on: Vec<&str> = on_hook.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names_on, vec![FLOW_IN, PROG_ORIGIN]);
    let r = connections(&c, addr, 20, 3);
    assert_eq!(count(&r, "origin"), 20, "{r:?}");

    // 100 %: every new connection to the target, answered as the origin to the client.
    let r0 = rec
        .reconcile(&steer(same_host(1_000_000, "connection", None)), Scope::All)
        .await;
    ok(&r0);
    let r = connections(&c, addr, 20, 3);
    assert_eq!(count(&r, "target"), 20, "{r:?}");

    // 50 % by connection over 200 connections: both sides, each connection on one side.
    ok(&rec
        .reconcile(&steer(same_host(500_000, "connection", None)), Scope::All)
        .await);
    // Per-packet cost of the programs (bpf_stats, held for this run only).
    let stats_on = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let vt = names::host_veth("s", "t");
    let before: Vec<_> = [(&vo.0, Hook::Egress), (&vt, Hook::Ingress)]
        .iter()
        .flat_map(|(i, h)| hv.costs(i, *h))
        .collect();
    let r = connections(&c, addr, 200, 4);
    let after: Vec<_> = [(&vo.0, Hook::Egress), (&vt, Hook::Ingress)]
        .iter()
        .flat_map(|(i, h)| hv.costs(i, *h))
        .collect();
    drop(stats_on);
    for ((name, t0, n0), (_, t1, n1)) in before.iter().zip(&after) {
        let runs = n1.saturating_sub(*n0);
        if runs > 0 {
            eprintln!(
                "bpf_stats {name}: {runs} runs, {:.0} ns per packet",
                t1.saturating_sub(*t0).as_nanos() as f64 / runs as f64
            );
        }
    }
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    let (to_o, to_t) = (count(&r, "origin"), count(&r, "target"));
    assert_eq!(to_o + to_t, 200);
    assert!((60..=140).contains(&to_t), "origin {to_o} target {to_t}");
    let rep = rec
        .reconcile(&steer(same_host(500_000, "connection", None)), Scope::All)
        .await;
    let seen = measurement(&rep[0], "connections_seen");
    let steered = measurement(&rep[0], "connections_steered");
    assert!(seen >= 240.0, "{rep:?}");
    assert!(steered >= to_t as f64 + 20.0, "{rep:?}");
    eprintln!("50 %: origin {to_o}, target {to_t} of 200; counters seen {seen} steered {steered}");
    // The counters reach the registry and the driver hears of them (REFRESH).
    let refreshed = eventually(Duration::from_secs(3), || {
        while let Ok(sig) = signals.try_recv() {
            if sig.drift.key == KEY && sig.drift.what == REFRESH && sig.kind == STEER {
                return true;
            }
        }
        false
    })
    .await;
    assert!(refreshed, "a REFRESH signal for {KEY}");
    assert!(
        metrics.connections_seen.get() >= 240,
        "{}",
        metrics.connections_seen.get()
    );
    assert!(metrics.connections_steered.get() >= steered as u64);

    // Asked for again by a signal: in place, nothing written. A program taken off behind
    // weft's back is drift: put back.
    let only = vec![KEY.to_string()];
    let spec50 = steer(same_host(500_000, "connection", None));
    let rep = rec.reconcile(&spec50, Scope::Only(&only)).await;
    ok(&rep);
    assert_eq!(rep[0].changes, 0, "{rep:?}");
    let vt_index = lock(&steering.steers)[KEY].target_if.1;
    steering.detach(vt_index, Hook::Ingress, PROG_RETURN);
    let rep = rec.reconcile(&spec50, Scope::Only(&only)).await;
    ok(&rep);
    assert_eq!(rep[0].changes, 1, "{rep:?}");
    let r = connections(&c, addr, 20, 2);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));

    // IPv6: the same, once the addresses are past duplicate address detection.
    let addr6: SocketAddr = format!("[fd00:80::10]:{PORT}").parse().unwrap();
    let c6 = c.clone();
    let v6_up = eventually(Duration::from_secs(10), || {
        let c6 = c6.clone();
        in_ns(&c6, move || {
            TcpStream::connect_timeout(&addr6, Duration::from_millis(300)).is_ok()
        })
    })
    .await;
    assert!(v6_up, "IPv6 to the origin's address");
    let r = connections(&c, addr6, 200, 3);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    let (o6, t6) = (count(&r, "origin"), count(&r, "target"));
    assert!((60..=140).contains(&t6), "IPv6: origin {o6} target {t6}");
    eprintln!("IPv6 50 %: origin {o6}, target {t6} of 200");

    // Key "source": one client, so all of its connections go the same way.
    ok(&rec
        .reconcile(&steer(same_host(500_000, "source", None)), Scope::All)
        .await);
    let r = connections(&c, addr, 30, 2);
    assert!(
        count(&r, "origin") == 30 || count(&r, "target") == 30,
        "{r:?}"
    );

    // 100 switches between 0 and 100 % (weave activations) while four clients talk on
    // connections of several messages: none fails, none changes side.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talkers: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                in_ns(&c, move || {
                    let mut out: Vec<Result<String, String>> = Vec::new();
                    let end = Instant::now() + Duration::from_secs(30);
                    while !stop.load(Relaxed) && Instant::now() < end {
                        let r = (|| {
                            let mut c = Conn::open(addr, Duration::from_secs(2))
                                .map_err(|e| e.to_string())?;
                            let first = c.talk().map_err(|e| e.to_string())?;
                            for _ in 0..3 {
                                std::thread::sleep(Duration::from_millis(5));
                                let again = c.talk().map_err(|e| e.to_string())?;
                                if again != first {
                                    return Err(format!("{first}, then {again}"));
                                }
                            }
                            Ok(first)
                        })();
                        out.push(r);
                    }
                    out
                })
            })
        })
        .collect();
    let flips = Instant::now();
    for i in 0..100u32 {
        let share = if i % 2 == 0 { 1_000_000 } else { 0 };
        ok(&rec
            .reconcile(&steer(same_host(share, "connection", None)), Scope::All)
            .await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flips = flips.elapsed();
    stop.store(true, Relaxed);
    let mut talked = Vec::new();
    for t in talkers {
        talked.extend(t.join().expect("talker"));
    }
    eprintln!(
        "100 switches in {:.2} s: {} connections ({} origin, {} target), {} failed",
        flips.as_secs_f64(),
        talked.len(),
        count(&talked, "origin"),
        count(&talked, "target"),
        failures(&talked).len()
    );
    assert!(failures(&talked).is_empty(), "{:?}", failures(&talked));
    assert!(count(&talked, "origin") > 0 && count(&talked, "target") > 0);

    // Connections in flight keep their side when the share changes.
    ok(&rec
        .reconcile(&steer(same_host(0, "connection", None)), Scope::All)
        .await);
    let (before, after) = in_ns(&c, move || {
        let mut early: Vec<Conn> = (0..10)
            .map(|_| Conn::open(addr, Duration::from_secs(2)).unwrap())
            .collect();
        let e: Vec<String> = early.iter_mut().map(|c| c.talk().unwrap()).collect();
        (early, e)
    });
    assert!(after.iter().all(|a| a == "origin"), "{after:?}");
    ok(&rec
        .reconcile(&steer(same_host(1_000_000, "connection", None)), Scope::All)
        .await);
    let mut early = before;
    let (early_now, late) = in_ns(&c, move || {
        let mut late: Vec<Conn> = (0..10)
            .map(|_| Conn::open(addr, Duration::from_secs(2)).unwrap())
            .collect();
        let l: Vec<String> = late.iter_mut().map(|c| c.talk().unwrap()).collect();
        let e: Vec<String> = early.iter_mut().map(|c| c.talk().unwrap()).collect();
        (e, (late, l))
    });
    assert!(early_now.iter().all(|a| a == "origin"), "{early_now:?}");
    assert!(late.1.iter().all(|a| a == "target"), "{:?}", late.1);
    // And back to 0: the connections opened at 100 % stay on the target.
    ok(&rec
        .reconcile(&steer(same_host(0, "connection", None)), Scope::All)
        .await);
    let mut late_conns = late.0;
    let late_now = in_ns(&c, move || {
        late_conns
            .iter_mut()
            .map(|c| c.talk().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(late_now.iter().all(|a| a == "target"), "{late_now:?}");

    // Failover: share 0, the origin checked every 100 ms (3 failures switch).
    let health = health_check();
    ok(&rec
        .reconcile(
            &steer(same_host(0, "connection", Some(health.clone()))),
            Scope::All,
        )
        .await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let active = || failed_over(&steering);
    assert!(!active(), "the healthy origin is not failed over");
    // Four clients, each opening a connection every 10 ms with a 500 ms budget.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                in_ns(&c, move || {
                    let mut out: Vec<(Instant, Result<String, String>)> = Vec::new();
                    let end = Instant::now() + Duration::from_secs(20);
                    while !stop.load(Relaxed) && Instant::now() < end {
                        let at = Instant::now();
                        let r = Conn::open(addr, Duration::from_millis(500))
                            .and_then(|mut c| c.talk())
                            .map_err(|e| e.to_string());
                        out.push((at, r));
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    out
                })
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = Instant::now();
    origin.signal(libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(3), active).await,
        "failover within 3 s"
    );
    let switched = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Relaxed);
    let mut log = Vec::new();
    for cl in clients {
        log.extend(cl.join().expect("client"));
    }
    log.sort_by_key(|(at, _)| *at);
    let before_freeze = log.iter().filter(|(at, _)| *at < frozen).count();
    let first_target = log
        .iter()
        .find(|(at, r)| *at >= frozen && r.as_deref().ok() == Some("target"))
        .map(|(at, _)| at.duration_since(frozen));
    let after_switch: Vec<_> = log.iter().filter(|(at, _)| *at >= switched).collect();
    let failed_after: Vec<_> = after_switch
        .iter()
        .filter(|(_, r)| r.as_deref().ok() != Some("target"))
        .collect();
    let rep = rec
        .reconcile(
            &steer(same_host(0, "connection", Some(health.clone()))),
            Scope::Changed,
        )
        .await;
    let switch_s = measurement(&rep[0], "failover_switch_seconds");
    eprintln!(
        "failover: {before_freeze} connections before SIGSTOP; switch {:.3} s after the first failed check, {:.3} s after SIGSTOP; first connection served by the target {:?} after SIGSTOP; {} connections after the switch, {} failed",
        switch_s,
        switched.duration_since(frozen).as_secs_f64(),
        first_target,
        after_switch.len(),
        failed_after.len()
    );
    assert_eq!(measurement(&rep[0], "failover_active"), 1.0, "{rep:?}");
    assert_eq!(metrics.failovers.get(), 1);
    assert_eq!(metrics.failover_active.get(), 1);
    assert!(switch_s < 1.0, "{rep:?}");
    // New connections reach the target within 1 s of the freeze (the first one the
    // clients made after the switch; clients blocked on the frozen origin until their
    // 500 ms budget ran out make `first_target` later).
    assert!(
        switched.duration_since(frozen) < Duration::from_secs(1),
        "{:?}",
        switched.duration_since(frozen)
    );
    assert!(first_target.is_some(), "{first_target:?}");
    assert!(after_switch.len() > 20);
    assert!(failed_after.is_empty(), "{failed_after:?}");

    // The origin comes back: the flag clears after 3 good checks, new connections go to
    // the origin again (share 0).
    origin.signal(libc::SIGCONT);
    assert!(
        eventually(Duration::from_secs(3), || !active()).await,
        "failover cleared"
    );
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "origin"), 10, "{r:?}");

    // Removal: the program and every map entry go; the origin serves everything.
    ok(&rec.reconcile(&[], Scope::All).await);
    let left = steering
        .with_map::<SteerConnKey, SteerConn, usize>("STEER_CONNS", |m| Ok(m.keys().count()))
        .unwrap();
    assert_eq!(left, 0, "the steer's connections are forgotten with it");
    assert!(steering.datapath.lock().unwrap().attached(vo_index).len() == 1);
    let r = connections(&c, addr, 5, 2);
    assert_eq!(count(&r, "origin"), 5, "{r:?}");
}

/// Two "hypervisors" joined by a veth underlay (MTU 1600: VXLAN needs 50 more bytes on
/// IPv4, 70 on IPv6) with addresses `ua` and `ub` (IPv6 without duplicate address
/// detection: usable at once).
async fn underlay_with(a: &Hv, b: &Hv, ua: IpAddr, ub: IpAddr, prefix: u8) -> (IpAddr, IpAddr) {
    let ha = TestNetns::handle_of(&a.ns.path).await;
    let hb = TestNetns::handle_of(&b.ns.path).await;
    ha.link()
        .add(rtnetlink::LinkVeth::new("ul0", "ul1").mtu(1600).build())
        .execute()
        .await
        .expect("underlay veth");
    let ul1 = crate::testns::index_of(&ha, "ul1").await;
    let fd = std::fs::File::open(&b.ns.path).unwrap();
    ha.link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(ul1)
                .setns_by_fd(fd.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .expect("moving the underlay's end");
    for (h, name, ip) in [(&ha, "ul0", ua), (&hb, "ul1", ub)] {
        let i = crate::testns::index_of(h, name).await;
        let mut req = h.address().add(i, ip, prefix);
        if ip.is_ipv6() {
            req.message_mut().header.flags |=
                rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
        }
        req.execute().await.expect("underlay address");
        h.link()
            .set(
                rtnetlink::LinkUnspec::new_with_index(i)
                    .mtu(1600)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .expect("underlay up");
    }
    (ua, ub)
}

/// [`underlay_with`] on IPv4 (198.18.82.1 and .2).
async fn underlay(a: &Hv, b: &Hv) -> (IpAddr, IpAddr) {
    underlay_with(
        a,
        b,
        IpAddr::from([198, 18, 82, 1]),
        IpAddr::from([198, 18, 82, 2]),
        24,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_host_steering_goes_through_the_tunnel_and_back() {
    require_root!();
    let (h1, h2) = (Hv::new().await, Hv::new().await);
    let (u1, u2) = underlay(&h1, &h2).await;
    h1.build(&[("p", &[("o", "198.18.80.10/24"), ("c", "198.18.80.20/24")])])
        .await;
    h2.build(&[("s", &[("t", "198.18.80.10/24"), ("c", "198.18.80.20/24")])])
        .await;
    let (o, t, c) = (h1.path("p", "o"), h2.path("s", "t"), h1.path("p", "c"));
    let origin = server(&o, "origin");
    let _target = server(&t, "target");
    let addr = SocketAddr::from((A, PORT));

    let (s1, s2) = (h1.steering().await, h2.steering().await);
    let origin_rec = SteerReconciler {
        steering: s1.clone(),
    };
    let target_rec = SteerTargetReconciler {
        steering: s2.clone(),
    };
    let target = cross_target(u1, 4242);
    let rep = target_rec.reconcile(&target, Scope::All).await;
    ok(&rep);
    assert_eq!(measurement(&rep[0], "tunnel_ready"), 1.0, "{rep:?}");
    let cross = |share_ppm: u32| Steer {
        target_host: u2.to_string(),
        tunnel_id: 4242,
        ..same_host(share_ppm, "connection", None)
    };

    ok(&origin_rec.reconcile(&steer(cross(0)), Scope::All).await);
    let r = connections(&c, addr, 20, 3);
    assert_eq!(count(&r, "origin"), 20, "{r:?}");

    ok(&origin_rec
        .reconcile(&steer(cross(1_000_000)), Scope::All)
        .await);
    let r = connections(&c, addr, 20, 3);
    assert_eq!(count(&r, "target"), 20, "{r:?}");

    ok(&origin_rec
        .reconcile(&steer(cross(500_000)), Scope::All)
        .await);
    let r = connections(&c, addr, 200, 4);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    let (to_o, to_t) = (count(&r, "origin"), count(&r, "target"));
    assert!((60..=140).contains(&to_t), "origin {to_o} target {to_t}");
    eprintln!("cross-host 50 %: origin {to_o}, target {to_t} of 200");

    // Connections opened at 100 % stay on the target when the share goes to 0.
    ok(&origin_rec
        .reconcile(&steer(cross(1_000_000)), Scope::All)
        .await);
    let (mut open, first) = in_ns(&c, move || {
        let mut conns: Vec<Conn> = (0..10)
            .map(|_| Conn::open(addr, Duration::from_secs(2)).unwrap())
            .collect();
        let a: Vec<String> = conns.iter_mut().map(|c| c.talk().unwrap()).collect();
        (conns, a)
    });
    assert!(first.iter().all(|a| a == "target"), "{first:?}");
    ok(&origin_rec.reconcile(&steer(cross(0)), Scope::All).await);
    let (later, new) = in_ns(&c, move || {
        let later: Vec<String> = open.iter_mut().map(|c| c.talk().unwrap()).collect();
        let new = Conn::open(addr, Duration::from_secs(2))
            .and_then(|mut c| c.talk())
            .unwrap();
        (later, new)
    });
    assert!(later.iter().all(|a| a == "target"), "{later:?}");
    assert_eq!(new, "origin");
    ok(&origin_rec
        .reconcile(&steer(cross(500_000)), Scope::All)
        .await);

    // A large answer crosses the tunnel too (segmentation on the underlay).
    let big = big_exchange(&c, addr);
    assert!(big == "origin" || big == "target", "{big}");

    // The tunnel device set down behind weft's back is drift, repaired.
    let h1h = TestNetns::handle_of(&h1.ns.path).await;
    let tun = links::by_name(&h1h, TUNNEL_DEVICE)
        .await
        .unwrap()
        .expect("tunnel");
    links::set(&h1h, tun.index, TUNNEL_DEVICE, false, None, None)
        .await
        .unwrap();
    let down = HostEvent {
        netns: None,
        at: Instant::now(),
        change: Change::LinkNew {
            ifindex: tun.index,
            name: TUNNEL_DEVICE.into(),
            up: false,
            kind: Some("vxlan".into()),
        },
    };
    let d = origin_rec.drift(std::slice::from_ref(&down));
    assert_eq!(d.len(), 1, "{d:?}");
    let only = vec![KEY.to_string()];
    let rep = origin_rec
        .reconcile(&steer(cross(500_000)), Scope::Only(&only))
        .await;
    ok(&rep);
    assert!(rep[0].changes >= 1, "{rep:?}");
    assert!(
        links::by_name(&h1h, TUNNEL_DEVICE)
            .await
            .unwrap()
            .unwrap()
            .up
    );
    let r = connections(&c, addr, 20, 2);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));

    // Failover through the tunnel: share 0, the origin frozen, every new connection to
    // the target on the other host.
    let failover = Steer {
        failover: Some(health_check()),
        ..cross(0)
    };
    ok(&origin_rec
        .reconcile(&steer(failover.clone()), Scope::All)
        .await);
    let active = || failed_over(&s1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!active());
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "origin"), 10, "{r:?}");
    origin.signal(libc::SIGSTOP);
    assert!(eventually(Duration::from_secs(3), active).await, "failover");
    let r = connections(&c, addr, 20, 2);
    assert_eq!(count(&r, "target"), 20, "{r:?}");
    let rep = origin_rec.reconcile(&steer(failover), Scope::Changed).await;
    eprintln!(
        "cross-host failover: switch {:.3} s after the first failed check",
        measurement(&rep[0], "failover_switch_seconds")
    );
    origin.signal(libc::SIGCONT);
    assert!(eventually(Duration::from_secs(3), || !active()).await);

    let rep = target_rec.reconcile(&target, Scope::All).await;
    assert!(
        measurement(&rep[0], "connections_received") >= (20 + to_t) as f64,
        "{rep:?}"
    );

    // Removal on both sides: the tunnel devices go with the last user.
    ok(&origin_rec.reconcile(&[], Scope::All).await);
    ok(&target_rec.reconcile(&[], Scope::All).await);
    for hv in [&h1, &h2] {
        let h = TestNetns::handle_of(&hv.ns.path).await;
        assert!(links::by_name(&h, TUNNEL_DEVICE).await.unwrap().is_none());
    }
    let r = connections(&c, addr, 5, 2);
    assert_eq!(count(&r, "origin"), 5, "{r:?}");
}

/// The tunnel over an IPv6 underlay (no IPv4 between the hosts), with IPv6-only nodes:
/// connections cross both ways, a large answer is segmented on the underlay, and the
/// health check of an origin without IPv4 fails over through the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_host_steering_works_over_an_ipv6_underlay() {
    require_root!();
    let (h1, h2) = (Hv::new().await, Hv::new().await);
    let (u1, u2) = underlay_with(
        &h1,
        &h2,
        "fd00:82::1".parse().unwrap(),
        "fd00:82::2".parse().unwrap(),
        64,
    )
    .await;
    h1.build(&[("p", &[("o", "fd00:80::10/64"), ("c", "fd00:80::20/64")])])
        .await;
    h2.build(&[("s", &[("t", "fd00:80::10/64"), ("c", "fd00:80::20/64")])])
        .await;
    let (o, c) = (h1.path("p", "o"), h1.path("p", "c"));
    let origin = server(&o, "origin");
    let _target = server(&h2.path("s", "t"), "target");
    let addr = SocketAddr::from(("fd00:80::10".parse::<IpAddr>().unwrap(), PORT));

    let (s1, s2) = (h1.steering().await, h2.steering().await);
    let origin_rec = SteerReconciler {
        steering: s1.clone(),
    };
    let target_rec = SteerTargetReconciler {
        steering: s2.clone(),
    };
    let target = cross_target(u1, 4243);
    let rep = target_rec.reconcile(&target, Scope::All).await;
    ok(&rep);
    assert!(
        rep[0]
            .observed
            .iter()
            .any(|l| l.contains("from fd00:82::1")),
        "{rep:?}"
    );
    let cross = |share_ppm: u32| Steer {
        target_host: u2.to_string(),
        tunnel_id: 4243,
        ..same_host(share_ppm, "connection", None)
    };

    // The nodes' IPv6 addresses are usable as soon as they are made (no duplicate
    // address detection keeping them tentative).
    let r = connections(&c, addr, 3, 1);
    assert_eq!(count(&r, "origin"), 3, "{r:?}");
    ok(&origin_rec
        .reconcile(&steer(cross(1_000_000)), Scope::All)
        .await);
    let r = connections(&c, addr, 20, 3);
    assert_eq!(count(&r, "target"), 20, "{r:?}");
    ok(&origin_rec.reconcile(&steer(cross(0)), Scope::All).await);
    let r = connections(&c, addr, 20, 3);
    assert_eq!(count(&r, "origin"), 20, "{r:?}");
    ok(&origin_rec
        .reconcile(&steer(cross(500_000)), Scope::All)
        .await);
    let r = connections(&c, addr, 100, 2);
    assert!(failures(&r).is_empty(), "{:?}", failures(&r));
    let (to_o, to_t) = (count(&r, "origin"), count(&r, "target"));
    assert!((25..=75).contains(&to_t), "origin {to_o} target {to_t}");

    // A large answer from the target (segmentation on the IPv6 underlay).
    ok(&origin_rec
        .reconcile(&steer(cross(1_000_000)), Scope::All)
        .await);
    let big = big_exchange(&c, addr);
    assert_eq!(big, "target");

    // Failover: the origin has no IPv4 address, its health check goes to its IPv6 one.
    let failover = Steer {
        failover: Some(health_check()),
        ..cross(0)
    };
    ok(&origin_rec
        .reconcile(&steer(failover.clone()), Scope::All)
        .await);
    let active = || failed_over(&s1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!active(), "the IPv6-only origin answers its health check");
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "origin"), 10, "{r:?}");
    origin.signal(libc::SIGSTOP);
    assert!(eventually(Duration::from_secs(3), active).await, "failover");
    let r = connections(&c, addr, 20, 2);
    assert_eq!(count(&r, "target"), 20, "{r:?}");
    origin.signal(libc::SIGCONT);
    assert!(eventually(Duration::from_secs(3), || !active()).await);

    let rep = target_rec.reconcile(&target, Scope::All).await;
    assert!(
        measurement(&rep[0], "connections_received") >= (20 + 1 + 20 + to_t) as f64,
        "{rep:?}"
    );
    ok(&origin_rec.reconcile(&[], Scope::All).await);
    ok(&target_rec.reconcile(&[], Scope::All).await);
    for hv in [&h1, &h2] {
        let h = TestNetns::handle_of(&hv.ns.path).await;
        assert!(links::by_name(&h, TUNNEL_DEVICE).await.unwrap().is_none());
    }
}

/// The pinned datapath of an agent on `pins` (as `main` loads it).
fn pinned_datapath(pins: &TempPins) -> SharedDatapath {
    Datapath::load_pinned(
        FLOW_OBJECT,
        Pins::open(&pins.0).expect("bpffs"),
        &pins::PINNED_GROUPS,
        &PROGRAMS,
    )
    .expect("object")
    .into_shared()
}

/// An agent's exit keeping its pins: its steering goes, its links are let go of.
fn exit_keeping_pins(steering: Arc<Steering>, datapath: SharedDatapath) {
    drop(steering);
    let kept = datapath.lock().unwrap().release_keeping_pins();
    assert_eq!(kept, 2, "the origin's and the target's links stay attached");
}

/// The steer's slot, from its report ("... slot N").
fn slot_of(r: &ResourceReport) -> String {
    r.observed[0].rsplit(' ').next().expect("a slot").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_the_pinned_steering_and_connections_keep_their_side() {
    require_root!();
    let (hv, _origin, _target) = mirror().await;
    let c = hv.path("p", "c");
    let addr = SocketAddr::from((A, PORT));
    // Dropped before `hv`: the pins go (detaching what they hold) before the namespaces.
    let pins = TempPins::new("steer-restart");
    let desired = steer(same_host(1_000_000, "connection", None));

    // The first agent: every new connection to the target; one stays open.
    let dp = pinned_datapath(&pins);
    let first = hv
        .steering_on(dp.clone(), None, Arc::new(SteerMetrics::default()))
        .await;
    let rep = SteerReconciler {
        steering: first.clone(),
    }
    .reconcile(&desired, Scope::All)
    .await;
    ok(&rep);
    let slot = slot_of(&rep[0]);
    let mut open = in_ns(&c, || Conn::open(addr, Duration::from_secs(2))).expect("connect");
    assert_eq!(open.talk().expect("steered"), "target");
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "target"), 10, "{r:?}");
    let steered = measurement(&rep[0], "connections_steered");

    // The agent exits keeping its pins; between the agents steering goes on.
    exit_keeping_pins(first, dp);
    assert_eq!(open.talk().expect("between the agents"), "target");
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "target"), 10, "between the agents: {r:?}");

    // The next agent: its programs loaded against the pinned maps, nothing applied yet.
    let dp = pinned_datapath(&pins);
    let second = hv
        .steering_on(dp.clone(), None, Arc::new(SteerMetrics::default()))
        .await;
    let rec = SteerReconciler {
        steering: second.clone(),
    };
    let targets = SteerTargetReconciler {
        steering: second.clone(),
    };
    assert_eq!(open.talk().expect("before the apply"), "target");
    // The same desired state: the slot is adopted (not emptied), the links taken over.
    let rep = rec.reconcile(&desired, Scope::All).await;
    ok(&rep);
    ok(&targets.reconcile(&[], Scope::All).await);
    assert_eq!(slot_of(&rep[0]), slot, "{rep:?}");
    assert!(
        measurement(&rep[0], "connections_steered") >= steered + 20.0,
        "the slot's counters continue: {rep:?}"
    );
    assert_eq!(open.talk().expect("after the apply"), "target");
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "target"), 10, "after the apply: {r:?}");
    let vo = names::host_veth("p", "o");
    let on_hook = {
        let dp = dp.clone();
        in_host(Some(&hv.ns.path), move || {
            dp.lock().unwrap().query(&vo, Hook::Egress).unwrap()
        })
        .unwrap()
    };
    assert_eq!(
        on_hook.len(),
        1,
        "one steering program, in the taken-over link: {on_hook:?}"
    );
    assert!(
        on_hook[0].ours && on_hook[0].name == PROG_ORIGIN,
        "{on_hook:?}"
    );
    // Level-triggered: the same state again changes nothing.
    let again = rec.reconcile(&desired, Scope::All).await;
    ok(&again);
    assert_eq!(again[0].changes, 0, "{again:?}");

    // SIGKILL-like: nothing let go of, the datapath just dropped with its pins in place.
    drop((rec, targets, second));
    drop(dp);
    assert_eq!(open.talk().expect("after a kill"), "target");

    // An agent whose desired state has no steer (removed while no agent ran): once both
    // kinds had their full reconcile, the leftovers go; new connections reach the origin.
    let dp = pinned_datapath(&pins);
    let third = hv
        .steering_on(dp.clone(), None, Arc::new(SteerMetrics::default()))
        .await;
    ok(&SteerReconciler {
        steering: third.clone(),
    }
    .reconcile(&[], Scope::All)
    .await);
    assert_eq!(
        open.talk().expect("kept until both kinds applied"),
        "target"
    );
    ok(&SteerTargetReconciler {
        steering: third.clone(),
    }
    .reconcile(&[], Scope::All)
    .await);
    let r = connections(&c, addr, 10, 2);
    assert_eq!(count(&r, "origin"), 10, "swept: {r:?}");
    let steer_links: Vec<_> = dp
        .lock()
        .unwrap()
        .pins()
        .unwrap()
        .link_pins(&PROGRAMS)
        .unwrap();
    assert!(steer_links.is_empty(), "{steer_links:?}");
    drop(third);
    dp.lock().unwrap().detach_all();
}

/// `ip rule show` in namespace `netns`: whether the request router's fwmark rule is there.
fn has_router_rule(netns: &Path) -> bool {
    let out = in_ns(netns, || {
        Command::new("ip")
            .args(["rule", "show"])
            .output()
            .expect("ip rule show")
    });
    String::from_utf8_lossy(&out.stdout).contains(&format!("{:#x}", router::transparent::MARK))
}

/// SYNs the calling thread's namespace has retransmitted (`TcpExt: TCPSynRetrans`).
fn retransmitted_syns() -> u64 {
    let netstat = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("netstat");
    let mut ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (ext.next().expect("names"), ext.next().expect("values"));
    let i = names
        .split_whitespace()
        .position(|n| n == "TCPSynRetrans")
        .expect("TCPSynRetrans");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Connections opened one after another from namespace `c` to `addr` (a line each way)
/// until `stop`: how many, those that failed, the slowest, and the SYNs retransmitted.
type Churn = (usize, Vec<(std::io::ErrorKind, String)>, Duration, u64);

fn churn(c: PathBuf, addr: SocketAddr, stop: Arc<std::sync::atomic::AtomicBool>) -> Churn {
    in_ns(&c, move || {
        let before = retransmitted_syns();
        let mut slowest = Duration::ZERO;
        let mut failed = Vec::new();
        let mut opened = 0;
        let started = Instant::now();
        while !stop.load(Relaxed) && opened < 5_000 && started.elapsed() < Duration::from_secs(10) {
            // One line each way: the server has taken each connection before the next is
            // opened (its accept queue never overflows).
            let t = Instant::now();
            match Conn::open(addr, Duration::from_secs(3)).and_then(|mut c| c.talk()) {
                Ok(_) => opened += 1,
                Err(e) => failed.push((e.kind(), e.to_string())),
            }
            slowest = slowest.max(t.elapsed());
        }
        (opened, failed, slowest, retransmitted_syns() - before)
    })
}

/// A route by header changed to the whole port, then removed, each while a client opens
/// connection after connection: the new target is in place before the request router
/// goes, so new connections never meet a router that is gone (their SYNs were lost and
/// retried a second later); and the router stops while its side is still there, so a
/// connection it had in flight is ended at once instead of hanging without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_by_header_made_whole_or_removed_loses_no_new_connection() {
    require_root!();
    let (hv, _origin, _target) = mirror().await;
    let steering = hv.steering().await;
    let rec = SteerReconciler {
        steering: steering.clone(),
    };
    let by_header = steer(Steer {
        request_rules: vec![weft_proto::v1::SteerRequestRule {
            port: u32::from(PORT),
            header: "x-weft-weave".into(),
            value: "s".into(),
        }],
        ..same_host(1_000_000, "connection", None)
    });
    let c = hv.path("p", "c");
    let addr = SocketAddr::from((A, PORT));
    let whole = steer(same_host(1_000_000, "connection", None));
    for (to, then) in [(whole.as_slice(), "target"), (&[][..], "origin")] {
        ok(&rec.reconcile(&by_header, Scope::All).await);
        assert!(lock(&steering.steers).get(KEY).unwrap().router.is_some());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || churn(c, addr, stop))
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        ok(&rec.reconcile(to, Scope::All).await);
        assert!(
            lock(&steering.steers)
                .get(KEY)
                .is_none_or(|s| s.router.is_none())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Relaxed);
        let (opened, failed, slowest, syns) = client.join().unwrap();
        eprintln!(
            "header -> {then}: {opened} connections, slowest {slowest:?}, {syns} SYNs retransmitted, ended: {failed:?}"
        );
        assert_eq!(syns, 0, "SYNs lost while the route changed (to the {then})");
        assert!(opened > 20, "{opened}");
        // At most the connection or two the router had in flight, ended by it (a reset
        // or an end of stream: never a wait for an answer that does not come).
        assert!(failed.len() <= 2, "{failed:?}");
        for (kind, e) in &failed {
            assert!(
                matches!(
                    kind,
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
                ),
                "{e}"
            );
        }
        assert!(
            slowest < Duration::from_secs(1),
            "a connection waited {slowest:?}"
        );
        let r = connections(&c, addr, 10, 2);
        assert_eq!(count(&r, then), 10, "{r:?}");
    }
    drop(rec);
    drop(steering);
    hv.datapath.lock().unwrap().detach_all();
}

/// Two request routers that connect into one namespace (t: the first's target, the
/// second's origin, as a weave's node is when a weave is made of it): removing the first
/// leaves t what the second's connections need; removing the second takes it away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_two_request_routers_connect_to_keeps_their_rule_until_both_are_gone() {
    require_root!();
    let hv = Hv::new().await;
    hv.build(&[
        ("p", &[("o", "198.18.80.10/24"), ("c", "198.18.80.20/24")]),
        ("s", &[("t", "198.18.80.10/24"), ("c", "198.18.80.20/24")]),
        ("w", &[("u", "198.18.80.10/24"), ("c", "198.18.80.20/24")]),
    ])
    .await;
    let _servers = [
        server(&hv.path("p", "o"), "origin"),
        server(&hv.path("s", "t"), "target"),
        server(&hv.path("w", "u"), "weave of the target"),
    ];
    let steering = hv.steering().await;
    let rec = SteerReconciler {
        steering: steering.clone(),
    };
    let by_header =
        |network: &str, node: &str, target_network: &str, target_node: &str| DesiredResource {
            key: format!("weave/{target_network}/{node}"),
            generation: 1,
            spec: Spec::Steer(Steer {
                network: network.into(),
                node: node.into(),
                target_network: target_network.into(),
                target_node: target_node.into(),
                request_rules: vec![weft_proto::v1::SteerRequestRule {
                    port: u32::from(PORT),
                    header: "x-weft-weave".into(),
                    value: target_network.into(),
                }],
                ..same_host(1_000_000, "connection", None)
            }),
        };
    let first = by_header("p", "o", "s", "t");
    let second = by_header("s", "t", "w", "u");
    ok(&rec
        .reconcile(&[first.clone(), second.clone()], Scope::All)
        .await);
    let (o, t, u) = (hv.path("p", "o"), hv.path("s", "t"), hv.path("w", "u"));
    for ns in [&o, &t, &u] {
        assert!(has_router_rule(ns), "{} was prepared", ns.display());
    }
    // The first router goes: o is nobody's side any more, t is still the second's.
    ok(&rec
        .reconcile(std::slice::from_ref(&second), Scope::All)
        .await);
    assert!(!has_router_rule(&o), "o's rule stayed");
    assert!(has_router_rule(&t), "t's rule went with the first router");
    assert!(has_router_rule(&u));
    ok(&rec.reconcile(&[], Scope::All).await);
    for ns in [&o, &t, &u] {
        assert!(!has_router_rule(ns), "{} kept the rule", ns.display());
    }
    // The agent's exit without its pins kept: the routers stop and take their rules
    // with them (no later agent would).
    ok(&rec
        .reconcile(&[first.clone(), second.clone()], Scope::All)
        .await);
    for ns in [&o, &t, &u] {
        assert!(has_router_rule(ns), "{} was prepared again", ns.display());
    }
    steering.stop_routers().await;
    for ns in [&o, &t, &u] {
        assert!(
            !has_router_rule(ns),
            "{} kept the rule after the exit",
            ns.display()
        );
    }
    drop(rec);
    drop(steering);
    hv.datapath.lock().unwrap().detach_all();
}
