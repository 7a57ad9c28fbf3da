//! The tap on a real kernel: a client namespace's interface plays the production node's
//! host-side veth (its egress goes into the server namespace, the "node"), the flow
//! observer and the tap are attached to it, and a TCP listener of the test is the sink.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::io::AsyncReadExt as _;
use weft_proto::v1::{ShadowFrame, ShadowHello, ShadowPolicy};

use super::ShadowTapMetrics;
use super::tap::TapEngine;
use super::tap_policy::{Decision, PolicySpec, TapSpec, decide};
use crate::FLOW_OBJECT;
use crate::attach::{PROG_EGRESS, PROG_INGRESS};
use crate::datapath::{Datapath, Hook, Order};
use crate::testns::{TestNetns, enter, in_ns, ip, require_root};

/// Deterministic bytes (xorshift), so that any reordering or loss shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the server answers to a request of `n` bytes from `peer`.
fn response_for(peer: SocketAddr, n: usize) -> Vec<u8> {
    let len = if n >= 1 << 20 {
        512 * 1024
    } else {
        1000 + n % 5000
    };
    pattern(u64::from(peer.port()) << 32 | n as u64, len)
}

/// A server in its namespace: reads each request to EOF, answers, closes.
fn serve(
    ns: PathBuf,
    addrs: Vec<SocketAddr>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    addrs
        .into_iter()
        .map(|addr| {
            let (ns, stop) = (ns.clone(), stop.clone());
            std::thread::spawn(move || {
                enter(&std::fs::File::open(&ns).expect("netns"));
                let l = TcpListener::bind(addr).expect("server bind");
                l.set_nonblocking(true).expect("nonblocking");
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Relaxed) && Instant::now() < deadline {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            std::thread::spawn(move || {
                                let _ = s.set_nonblocking(false);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                                let mut req = Vec::new();
                                if s.read_to_end(&mut req).is_ok() {
                                    let _ = s.write_all(&response_for(peer, req.len()));
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
            })
        })
        .collect()
}

struct Job {
    client: SocketAddr,
    server: SocketAddr,
    request: Vec<u8>,
}

/// Runs the jobs from `threads` client threads in the namespace; returns the failures.
fn run_clients(ns: &Path, jobs: Vec<Job>, threads: usize) -> Vec<String> {
    let jobs = Arc::new(Mutex::new(jobs));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (ns, jobs, failures) = (ns.to_owned(), jobs.clone(), failures.clone());
            std::thread::spawn(move || {
                enter(&std::fs::File::open(&ns).expect("netns"));
                loop {
                    let Some(job) = jobs.lock().unwrap().pop() else {
                        return;
                    };
                    if let Err(e) = one_client(&job) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{} -> {}: {e}", job.client, job.server));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    Arc::try_unwrap(failures).unwrap().into_inner().unwrap()
}

fn one_client(job: &Job) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&job.client.into())?;
    sock.connect_timeout(&job.server.into(), Duration::from_secs(5))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(&job.request)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    if resp != response_for(job.client, job.request.len()) {
        return Err(std::io::Error::other("wrong response"));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct SinkConn {
    client: String,
    server: String,
    up: Vec<u8>,
    down: Vec<u8>,
    closed: bool,
    gap: bool,
}

#[derive(Debug, Default)]
struct SinkLog {
    hello: Option<ShadowHello>,
    conns: BTreeMap<u64, SinkConn>,
    errors: Vec<String>,
}

/// The test's sink: decodes the stream into `log`.
async fn sink(l: tokio::net::TcpListener, log: Arc<Mutex<SinkLog>>) {
    let Ok((mut s, _)) = l.accept().await else {
        return;
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        loop {
            let mut rest = &buf[used..];
            let before = rest.len();
            let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
                break;
            };
            let hdr = before - rest.len();
            if rest.len() < len as usize {
                break;
            }
            let body = &rest[..len as usize];
            used += hdr + len as usize;
            let mut g = log.lock().unwrap();
            if g.hello.is_none() {
                match ShadowHello::decode(body) {
                    Ok(h) => g.hello = Some(h),
                    Err(e) => g.errors.push(format!("hello: {e}")),
                }
                continue;
            }
            let f = match ShadowFrame::decode(body) {
                Ok(f) => f,
                Err(e) => {
                    g.errors.push(format!("frame: {e}"));
                    continue;
                }
            };
            if f.open {
                if g.conns.contains_key(&f.connection) {
                    g.errors
                        .push(format!("connection {} opened twice", f.connection));
                }
                g.conns.insert(
                    f.connection,
                    SinkConn {
                        client: f.client.clone(),
                        server: f.server.clone(),
                        ..Default::default()
                    },
                );
                continue;
            }
            let Some(c) = g.conns.get_mut(&f.connection) else {
                g.errors
                    .push(format!("frame of unknown connection {}", f.connection));
                continue;
            };
            match f.direction {
                1 => c.up.extend_from_slice(&f.data),
                2 => c.down.extend_from_slice(&f.data),
                _ => {}
            }
            c.gap |= f.gap;
            c.closed |= f.close;
        }
        buf.drain(..used);
    }
}

fn policy(
    share_ppm: u32,
    key: &str,
    ports: Vec<u32>,
    sources: Vec<String>,
    seed: u32,
) -> ShadowPolicy {
    ShadowPolicy {
        share_ppm,
        key: key.into(),
        ports,
        sources,
        seed,
        ..Default::default()
    }
}

/// Run count and run time (ns) of each program on tp0's hooks (kernel.bpf_stats_enabled).
fn prog_stats(dp: &crate::datapath::SharedDatapath, host: &Path) -> Vec<(String, u64, u64)> {
    let dp = dp.clone();
    let on = in_ns(host, move || {
        let mut dp = dp.lock().unwrap();
        let mut v = dp.query("tp0", Hook::Ingress).unwrap_or_default();
        v.extend(dp.query("tp0", Hook::Egress).unwrap_or_default());
        v
    });
    on.into_iter()
        .filter_map(|p| {
            let out = std::process::Command::new("bpftool")
                .args(["prog", "show", "id", &p.id.to_string()])
                .output()
                .ok()?;
            let out = String::from_utf8_lossy(&out.stdout).into_owned();
            let field = |name: &str| -> Option<u64> {
                let mut it = out.split_whitespace();
                it.find(|w| *w == name)?;
                it.next()?.parse().ok()
            };
            Some((
                p.name,
                field("run_cnt").unwrap_or(0),
                field("run_time_ns").unwrap_or(0),
            ))
        })
        .collect()
}

/// Raises the interface's GSO limits (IFLA_GSO_MAX_SIZE, IFLA_GSO_IPV4_MAX_SIZE) to
/// 128 KiB; false where the kernel refuses.
async fn big_tcp(ns: &TestNetns, name: &str) -> bool {
    use rtnetlink::LinkUnspec;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::packet_utils::nla::DefaultNla;
    const IFLA_GSO_IPV4_MAX_SIZE: u16 = 63;
    let h = TestNetns::handle_of(&ns.path).await;
    let index = crate::testns::index_of(&h, name).await;
    let size: u32 = 128 * 1024;
    let msg = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::GsoMaxSize(size))
        .append_extra_attribute(LinkAttribute::Other(DefaultNla::new(
            IFLA_GSO_IPV4_MAX_SIZE,
            size.to_ne_bytes().to_vec(),
        )))
        .build();
    match h.link().set(msg).execute().await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("no BIG TCP on {name}: {e}");
            false
        }
    }
}

async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

/// Two namespaces joined by a veth: the host's `tp0` (198.18.`net`.1/24) plays the
/// production node's host-side interface, the node's `eth0` (198.18.`net`.2/24); the flow
/// observer is attached to tp0, as the agent's is before any tap.
struct TapLab {
    host: TestNetns,
    node: TestNetns,
    ifindex: u32,
    dp: crate::datapath::SharedDatapath,
}

fn tap_lab(net: u8) -> TapLab {
    let host = TestNetns::new();
    let node = TestNetns::new();
    ip(&[
        "-n", &host.name, "link", "add", "tp0", "type", "veth", "peer", "name", "eth0", "netns",
        &node.name,
    ]);
    for (ns, dev, h) in [(&host, "tp0", 1), (&node, "eth0", 2)] {
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("198.18.{net}.{h}/24"),
            "dev",
            dev,
        ]);
        ip(&["-n", &ns.name, "link", "set", dev, "up"]);
    }
    ip(&["-n", &node.name, "link", "set", "lo", "up"]);
    let ifindex = in_ns(&host.path, || {
        let c = std::ffi::CString::new("tp0").unwrap();
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    });
    assert_ne!(ifindex, 0);
    let mut dp = Datapath::load(FLOW_OBJECT).expect("flow object");
    for p in [PROG_INGRESS, PROG_EGRESS] {
        dp.load_classifier(p).expect("verifier");
    }
    let dp = dp.into_shared();
    let dp2 = dp.clone();
    in_ns(&host.path, move || {
        let mut dp = dp2.lock().unwrap();
        dp.attach("tp0", ifindex, Hook::Ingress, PROG_INGRESS, Order::First)
            .unwrap();
        dp.attach("tp0", ifindex, Hook::Egress, PROG_EGRESS, Order::First)
            .unwrap();
    });
    TapLab {
        host,
        node,
        ifindex,
        dp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_connections_reach_the_sink_byte_identical_as_predicted() {
    require_root!();
    let started = Instant::now();
    let TapLab {
        host,
        node,
        ifindex,
        dp,
    } = tap_lab(77);
    let inside: Vec<Ipv4Addr> = (10..30).map(|h| Ipv4Addr::new(198, 18, 77, h)).collect();
    let outside: Vec<Ipv4Addr> = (130..135).map(|h| Ipv4Addr::new(198, 18, 77, h)).collect();
    for a in inside.iter().chain(&outside) {
        ip(&[
            "-n",
            &host.name,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            "tp0",
        ]);
    }
    // BIG TCP (GSO packets past 64 KiB) where the kernel has it: frames longer than one
    // record holds are copied in tail records.
    let big_tcp = big_tcp(&host, "tp0").await && big_tcp(&node, "eth0").await;
    let metrics = Arc::new(ShadowTapMetrics::default());
    let engine = TapEngine::new(
        dp.clone(),
        tokio::runtime::Handle::current(),
        "test-host",
        None,
        metrics.clone(),
    );

    let sink_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink_l.local_addr().unwrap();
    let log = Arc::new(Mutex::new(SinkLog::default()));
    let sink_task = tokio::spawn(sink(sink_l, log.clone()));

    let server = SocketAddr::from(([198, 18, 77, 2], 8080));
    let other_port = SocketAddr::from(([198, 18, 77, 2], 8081));
    let spec_of = |p: ShadowPolicy| {
        TapSpec::from_wire(
            "s1/web",
            &weft_proto::v1::ShadowTap {
                shadow: "s1".into(),
                network: "prod".into(),
                node: "web".into(),
                policy: Some(p),
                sinks: vec![sink_addr.to_string()],
            },
        )
        .unwrap()
    };
    let spec1 = spec_of(policy(100_000, "connection", vec![8080], vec![], 7));

    let e2 = engine.clone();
    let s1 = spec1.clone();
    let changes = in_ns(&host.path, move || e2.apply("s1/web", "tp0", ifindex, &s1)).expect("tap");
    assert_eq!(changes, 3);
    {
        let dp2 = dp.clone();
        let on = in_ns(&host.path, move || {
            let mut dp = dp2.lock().unwrap();
            [Hook::Egress, Hook::Ingress].map(|h| {
                dp.query("tp0", h)
                    .unwrap()
                    .into_iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
            })
        });
        assert_eq!(on[0], [PROG_EGRESS, super::tap::PROG_TAP_IN]);
        assert_eq!(on[1], [PROG_INGRESS, super::tap::PROG_TAP_OUT]);
    }

    // WEFT_TAP_STATS=1: the programs' run time per packet (kernel.bpf_stats_enabled).
    let stats_was = std::env::var_os("WEFT_TAP_STATS").map(|_| {
        let was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        was
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let servers = serve(node.path.clone(), vec![server, other_port], stop.clone());
    std::thread::sleep(Duration::from_millis(200));

    // Phase 0 (WEFT_TAP_STATS only): the cost of the tap when it samples nothing.
    let base = prog_stats(&dp, &host.path);
    let mut phase0 = 0;
    if stats_was.is_some() {
        let e2 = engine.clone();
        let s0 = spec_of(policy(0, "connection", vec![8080], vec![], 7));
        in_ns(&host.path, move || e2.apply("s1/web", "tp0", ifindex, &s0)).expect("share 0");
        let jobs: Vec<Job> = (0..200u16)
            .map(|i| Job {
                client: SocketAddr::from(([198, 18, 77, 1], 40_000 + i)),
                server,
                request: pattern(u64::from(i), 100 + usize::from(i) * 37),
            })
            .collect();
        phase0 = jobs.len() as u64;
        let failures = run_clients(&host.path, jobs, 8);
        assert!(failures.is_empty(), "{failures:?}");
        let e2 = engine.clone();
        let s1 = spec1.clone();
        in_ns(&host.path, move || e2.apply("s1/web", "tp0", ifindex, &s1)).expect("share 10 %");
    }
    let unsampled = prog_stats(&dp, &host.path);

    // Phase 1: by connection, 10 %, port 8080 only.
    let p1 = PolicySpec::try_from(&policy(100_000, "connection", vec![8080], vec![], 7)).unwrap();
    let me = Ipv4Addr::new(198, 18, 77, 1);
    let mut jobs = Vec::new();
    let mut big_sampled = 0;
    let mut big_other = 0;
    let mut expected: HashMap<String, (Vec<u8>, Vec<u8>)> = HashMap::new();
    let mut predicted = BTreeSet::new();
    // Phase 1's small connections to the sampled port: (client, decision, request).
    let mut phase1: Vec<(SocketAddr, Decision, Vec<u8>)> = Vec::new();
    for i in 0..250u16 {
        let client = SocketAddr::from((me, 41_000 + i));
        let to = if i < 240 { server } else { other_port };
        let d = decide(&p1, true, client, to);
        let big = match d {
            Decision::Sampled if big_sampled < 3 => {
                big_sampled += 1;
                true
            }
            Decision::NotSampled if big_other < 2 => {
                big_other += 1;
                true
            }
            _ => false,
        };
        let len = if big {
            1 << 20
        } else {
            50 + (usize::from(i) * 997) % 6000
        };
        let request = pattern(u64::from(i) + 1, len);
        if !big && to == server {
            phase1.push((client, d, request.clone()));
        }
        if d == Decision::Sampled {
            predicted.insert(client.to_string());
            expected.insert(
                client.to_string(),
                (request.clone(), response_for(client, len)),
            );
        }
        jobs.push(Job {
            client,
            server: to,
            request,
        });
    }
    assert_eq!(big_sampled, 3, "some connections are predicted sampled");
    let n1 = predicted.len();
    // 10 % of 240 eligible: 24, sd 4.6.
    assert!((10..=40).contains(&n1), "predicted share {n1}/240");
    let failures = run_clients(&host.path, jobs, 8);
    assert!(
        failures.is_empty(),
        "production connections failed: {failures:?}"
    );

    // Phase 2: by source (sticky), 30 %, sources 198.18.77.0/25 only.
    let pol2 = policy(
        300_000,
        "source",
        vec![8080],
        vec!["198.18.77.0/25".into()],
        9,
    );
    let p2 = PolicySpec::try_from(&pol2).unwrap();
    let e2 = engine.clone();
    let s2 = spec_of(pol2);
    let changes =
        in_ns(&host.path, move || e2.apply("s1/web", "tp0", ifindex, &s2)).expect("policy change");
    assert_eq!(changes, 1);
    let mut jobs = Vec::new();
    let mut by_source: BTreeMap<IpAddr, BTreeSet<Decision>> = BTreeMap::new();
    let mut port = 42_000;
    for round in 0..3u64 {
        for a in inside.iter().chain(&outside) {
            let client = SocketAddr::from((*a, port));
            port += 1;
            let d = decide(&p2, true, client, server);
            by_source.entry(client.ip()).or_default().insert(d);
            let request = pattern(u64::from(port) * 3 + round, 100 + usize::from(port) % 3000);
            if d == Decision::Sampled {
                predicted.insert(client.to_string());
                expected.insert(
                    client.to_string(),
                    (request.clone(), response_for(client, request.len())),
                );
            }
            jobs.push(Job {
                client,
                server,
                request,
            });
        }
    }
    let sticky_in = by_source
        .iter()
        .filter(|(a, d)| {
            inside.iter().any(|x| IpAddr::V4(*x) == **a) && d.contains(&Decision::Sampled)
        })
        .count();
    assert!(
        sticky_in > 0 && sticky_in < inside.len(),
        "{sticky_in} of 20 sources sampled"
    );
    let failures = run_clients(&host.path, jobs, 8);
    assert!(
        failures.is_empty(),
        "production connections failed: {failures:?}"
    );

    // Phase 3: 5-tuples of phase 1 used again (four that phase 1 sampled, four it did not),
    // twice: every new connection on a reused 5-tuple is decided afresh under the policy
    // now in force and counted, whatever the old connection's decision was. The clients'
    // TIME_WAIT is reused (tcp_tw_reuse, after a second).
    in_ns(&host.path, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1").expect("tcp_tw_reuse")
    });
    let mut reused: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for want in [Decision::Sampled, Decision::NotSampled] {
        reused.extend(
            phase1
                .iter()
                .filter(|(_, d, _)| *d == want)
                .take(4)
                .map(|(c, _, r)| (*c, r.clone())),
        );
    }
    assert_eq!(reused.len(), 8, "phase 1 has both kinds");
    // Sampled connections and their bytes before phase 3 (client strings repeat in it).
    let base_sampled = predicted.len() as u64;
    let base_payload: u64 = expected
        .values()
        .map(|(u, d)| (u.len() + d.len()) as u64)
        .sum();
    let (mut extra_sampled, mut extra_payload) = (0u64, 0u64);
    let mut phase3 = 0u64;
    for _round in 0..2 {
        std::thread::sleep(Duration::from_millis(2_100));
        let jobs: Vec<Job> = reused
            .iter()
            .map(|(client, request)| Job {
                client: *client,
                server,
                request: request.clone(),
            })
            .collect();
        for (client, request) in &reused {
            let d = decide(&p2, true, *client, server);
            assert_ne!(d, Decision::Ineligible);
            if d == Decision::Sampled {
                let response = response_for(*client, request.len());
                extra_sampled += 1;
                extra_payload += (request.len() + response.len()) as u64;
                predicted.insert(client.to_string());
                expected.insert(client.to_string(), (request.clone(), response));
            }
        }
        phase3 += jobs.len() as u64;
        let failures = run_clients(&host.path, jobs, 8);
        assert!(failures.is_empty(), "reused 5-tuples: {failures:?}");
    }

    // Every predicted connection reaches the sink, whole, and nothing else does.
    let done = eventually(Duration::from_secs(30), || {
        let g = log.lock().unwrap();
        g.conns.len() as u64 >= base_sampled + extra_sampled && g.conns.values().all(|c| c.closed)
    })
    .await;
    let g = log.lock().unwrap();
    assert!(g.errors.is_empty(), "{:?}", g.errors);
    assert_eq!(g.hello.as_ref().map(|h| h.shadow.as_str()), Some("s1"));
    let got: BTreeSet<String> = g.conns.values().map(|c| c.client.clone()).collect();
    assert_eq!(got, predicted, "sampled set (done: {done})");
    for c in g.conns.values() {
        assert_eq!(c.server, server.to_string());
        assert!(!c.gap, "{} had a gap", c.client);
        assert!(c.closed, "{} not closed", c.client);
        let (up, down) = &expected[&c.client];
        assert!(
            c.up == *up,
            "{}: client->server {} bytes, sent {}",
            c.client,
            c.up.len(),
            up.len()
        );
        assert!(
            c.down == *down,
            "{}: server->client {} bytes, sent {}",
            c.client,
            c.down.len(),
            down.len()
        );
    }
    // Sticky: every connection of a source has its source's decision.
    let sampled_sources: BTreeSet<String> = g
        .conns
        .values()
        .filter_map(|c| c.client.parse::<SocketAddr>().ok())
        .filter(|a| a.port() >= 42_000)
        .map(|a| a.ip().to_string())
        .collect();
    for (src, decisions) in &by_source {
        assert_eq!(decisions.len(), 1, "{src} decided both ways");
        let n = g
            .conns
            .values()
            .filter(|c| {
                c.client.starts_with(&format!("{src}:"))
                    && c.client
                        .parse::<SocketAddr>()
                        .is_ok_and(|a| a.port() >= 42_000)
            })
            .count();
        assert!(n == 0 || n == 3, "{src}: {n} of its 3 connections sampled");
    }
    assert_eq!(sampled_sources.len(), sticky_in);
    let big_seen = g.conns.values().filter(|c| c.up.len() == 1 << 20).count();
    assert_eq!(big_seen, 3);
    drop(g);

    // The kernel's counters agree.
    let m = engine.refresh("s1/web").unwrap();
    let get = |k: &str| {
        m.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| *v as u64)
            .unwrap()
    };
    assert_eq!(get("connections_seen"), 250 + 75 + phase0 + phase3);
    assert_eq!(get("connections_eligible"), 240 + 60 + phase0 + phase3);
    assert_eq!(get("connections_sampled"), base_sampled + extra_sampled);
    assert_eq!(get("connections_lost"), 0);
    assert_eq!(get("copies_lost"), 0);
    assert_eq!(get("copies_ring_full"), 0);
    assert_eq!(get("sinks_connected"), 1);
    assert_eq!(get("bytes_streamed"), base_payload + extra_payload);
    assert_eq!(
        metrics.connections_sampled.get(),
        base_sampled + extra_sampled
    );
    eprintln!(
        "tap test: {} connections, {} sampled ({} by connection of 240, then {} sources of 20 by source), {} bytes streamed, {:?}",
        325,
        predicted.len(),
        n1,
        sticky_in,
        base_payload + extra_payload,
        started.elapsed()
    );

    let p = &engine.pipeline_stats;
    assert_eq!(p.invalid.load(Relaxed), 0);
    eprintln!(
        "tap test: {} records, {} tail records (BIG TCP: {big_tcp})",
        p.records.load(Relaxed),
        p.tails.load(Relaxed)
    );
    if big_tcp {
        assert!(
            p.tails.load(Relaxed) > 0,
            "BIG TCP frames came in one record each"
        );
    }
    if let Some(was) = stats_was {
        let after = prog_stats(&dp, &host.path);
        for (name, runs, ns) in &after {
            let (r0, n0) = base
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, r, n)| (*r, *n));
            let (r1, n1) = unsampled
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, r, n)| (*r, *n));
            eprintln!(
                "bpf_stats {name}: nothing sampled: {} runs, {:.0} ns/run; 10 % and 30 % sampled: {} runs, {:.0} ns/run",
                r1 - r0,
                (n1 - n0) as f64 / (r1 - r0).max(1) as f64,
                runs - r1,
                (ns - n1) as f64 / (runs - r1).max(1) as f64,
            );
        }
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", was.trim());
    }

    // Removal detaches the tap and leaves the observer.
    assert!(engine.remove("s1/web"));
    let dp2 = dp.clone();
    let on = in_ns(&host.path, move || {
        let mut dp = dp2.lock().unwrap();
        dp.query("tp0", Hook::Egress)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
    });
    assert_eq!(on, [PROG_EGRESS]);
    engine.shutdown();
    dp.lock().unwrap().detach_all();
    stop.store(true, Relaxed);
    for s in servers {
        let _ = s.join();
    }
    sink_task.abort();
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[tokio::test]
async fn the_reconciler_reports_what_is_missing() {
    use crate::control::{DesiredResource, Reconciler as _, Scope};
    use weft_proto::v1::resource::Spec;
    require_root!();
    let mut dp = Datapath::load(FLOW_OBJECT).expect("flow object");
    for p in [PROG_INGRESS, PROG_EGRESS] {
        dp.load_classifier(p).expect("verifier");
    }
    let engine = TapEngine::new(
        dp.into_shared(),
        tokio::runtime::Handle::current(),
        "h",
        None,
        Arc::new(ShadowTapMetrics::default()),
    );
    let r = super::tap_reconciler::ShadowTapReconciler {
        engine: engine.clone(),
        supervisor: None,
    };
    let tap = |key: &str, node: &str| DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowTap(weft_proto::v1::ShadowTap {
            shadow: "s9".into(),
            network: "nonet".into(),
            node: node.into(),
            policy: Some(policy(100_000, "connection", vec![], vec![], 1)),
            sinks: vec!["127.0.0.1:9".into()],
        }),
    };
    let desired = [tap("s9/other", "web"), tap("s9/web", "web")];
    let reports = r.reconcile(&desired, Scope::All).await;
    assert_eq!(reports.len(), 2);
    assert!(
        reports[0]
            .error
            .as_deref()
            .unwrap()
            .contains("<shadow>/<node>"),
        "{reports:?}"
    );
    let e = reports[1].error.as_deref().unwrap();
    assert!(
        e.contains(&crate::networks::names::host_veth("nonet", "web"))
            && e.contains("does not exist"),
        "{e}"
    );
    assert!(r.managed().is_empty());
    assert!(r.reconcile(&[], Scope::All).await.is_empty());
}

/// A measurement of `engine.refresh(key)`.
fn measured(m: &[(String, f64)], k: &str) -> u64 {
    m.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| *v as u64)
        .unwrap_or_else(|| panic!("no measurement {k} in {m:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_whose_sink_takes_nothing_stops_copying_until_the_sink_is_back() {
    require_root!();
    let started = Instant::now();
    let TapLab {
        host,
        node,
        ifindex,
        dp,
    } = tap_lab(79);
    let metrics = Arc::new(ShadowTapMetrics::default());
    let engine = TapEngine::new(
        dp.clone(),
        tokio::runtime::Handle::current(),
        "test-host",
        None,
        metrics.clone(),
    );
    let sink_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = sink_l.local_addr().unwrap();
    let first = Arc::new(Mutex::new(SinkLog::default()));
    let first_task = tokio::spawn(sink(sink_l, first.clone()));
    let server = SocketAddr::from(([198, 18, 79, 2], 8080));
    // Every connection sampled.
    let spec = TapSpec::from_wire(
        "s2/web",
        &weft_proto::v1::ShadowTap {
            shadow: "s2".into(),
            network: "prod".into(),
            node: "web".into(),
            policy: Some(policy(1_000_000, "connection", vec![8080], vec![], 3)),
            sinks: vec![sink_addr.to_string()],
        },
    )
    .unwrap();
    let e2 = engine.clone();
    in_ns(&host.path, move || {
        e2.apply("s2/web", "tp0", ifindex, &spec)
    })
    .expect("tap");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let servers = serve(node.path.clone(), vec![server], stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let mut port = 45_000u16;
    let mut batch = |n: u16| {
        let jobs: Vec<Job> = (0..n)
            .map(|i| Job {
                client: SocketAddr::from(([198, 18, 79, 1], port + i)),
                server,
                request: pattern(u64::from(port + i), 200),
            })
            .collect();
        port += n;
        let failures = run_clients(&host.path, jobs, 4);
        assert!(failures.is_empty(), "production failed: {failures:?}");
    };

    // A sink that takes the copies.
    batch(20);
    assert!(
        eventually(Duration::from_secs(10), || first
            .lock()
            .unwrap()
            .conns
            .len()
            == 20)
        .await,
        "the sink got {} connections of 20",
        first.lock().unwrap().conns.len()
    );
    let m = engine.refresh("s2/web").unwrap();
    assert_eq!(measured(&m, "connections_sampled"), 20);
    assert_eq!(measured(&m, "paused"), 0);

    // The sink goes: within seconds the tap pauses.
    first_task.abort();
    let _ = first_task.await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut m = engine.refresh("s2/web").unwrap();
    while measured(&m, "paused") == 0 && Instant::now() < deadline {
        batch(10);
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = engine.refresh("s2/web").unwrap();
    }
    assert_eq!(measured(&m, "paused"), 1, "the tap did not pause: {m:?}");
    assert!(measured(&m, "frames_refused") > 0);
    assert!(metrics.pauses.get() >= 1);
    // While paused the kernel samples nothing: new connections are seen, not eligible.
    // (A look that spans a resume is taken again; the backoff grows while the sink
    // stays away.)
    let mut checked = false;
    while !checked && Instant::now() < deadline + Duration::from_secs(40) {
        let before = engine.refresh("s2/web").unwrap();
        if measured(&before, "paused") == 0 {
            batch(5);
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        batch(20);
        let after = engine.refresh("s2/web").unwrap();
        if measured(&after, "paused") == 1
            && measured(&after, "pauses") == measured(&before, "pauses")
        {
            assert_eq!(
                measured(&after, "connections_seen"),
                measured(&before, "connections_seen") + 20
            );
            assert_eq!(
                measured(&after, "connections_sampled"),
                measured(&before, "connections_sampled"),
                "sampled while paused"
            );
            assert_eq!(
                measured(&after, "connections_eligible"),
                measured(&before, "connections_eligible")
            );
            checked = true;
        }
    }
    assert!(checked, "no paused window seen");

    // A sink is back at the same address: copying resumes and its copies are whole.
    let second = Arc::new(Mutex::new(SinkLog::default()));
    let sink_l = tokio::net::TcpListener::bind(sink_addr).await.unwrap();
    let second_task = tokio::spawn(sink(sink_l, second.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let whole = || {
        second
            .lock()
            .unwrap()
            .conns
            .values()
            .filter(|c| c.closed && !c.gap && c.up.len() == 200)
            .count()
    };
    while whole() < 5 && Instant::now() < deadline {
        batch(5);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(whole() >= 5, "copies after the sink came back: {}", whole());
    let m = engine.refresh("s2/web").unwrap();
    assert_eq!(measured(&m, "sinks_connected"), 1);
    eprintln!(
        "breaker test: {} pauses, {} frames refused, {:?}",
        measured(&m, "pauses"),
        measured(&m, "frames_refused"),
        started.elapsed()
    );

    engine.shutdown();
    dp.lock().unwrap().detach_all();
    stop.store(true, Relaxed);
    for s in servers {
        let _ = s.join();
    }
    second_task.abort();
}
