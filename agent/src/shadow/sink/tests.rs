//! The sink against real servers in real namespaces: a fake tap streams recorded HTTP
//! traffic; the servers (python3's http.server, recording each request's head and body
//! hash) must receive it byte-identical, and read-only mode must keep writes from them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::io::AsyncWriteExt as _;
use weft_proto::v1::{ShadowFrame, ShadowHello, ShadowSink, ShadowTarget};

use super::*;
use crate::control::DesiredResource;
use crate::testns::{in_ns, ip, require_root};

/// Waits until `f` holds, at most `timeout`.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// A node namespace made with the agent's own function, removed on drop.
struct NodeNs {
    path: PathBuf,
    name: String,
}

impl NodeNs {
    fn new(prefix: &str, network: &str, node: &str) -> Self {
        let name = names::netns(prefix, network, node);
        let path = namespaces::path_of(&name);
        let p = path.clone();
        std::thread::spawn(move || {
            namespaces::prepare_dir().expect("/run/netns");
            let home = namespaces::home().expect("home namespace");
            namespaces::create(&p, &home, None, || Ok(()))
                .map(|_| ())
                .map_err(|(e, _)| e)
        })
        .join()
        .expect("namespace thread")
        .expect("creating the namespace");
        Self { path, name }
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.name, "ip"])
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?} in {}", self.name);
    }
}

impl Drop for NodeNs {
    fn drop(&mut self) {
        let _ = namespaces::remove(&self.path);
    }
}

/// A scratch directory removed on drop (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by its id, through the handle) on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SERVER: &str = r#"
import sys, json, hashlib, http.server, socketserver, time
addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "weft-test"
    sys_version = ""
    def any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        rec = {"line": self.requestline, "headers": [[k, v] for k, v in self.headers.items()],
               "sha256": hashlib.sha256(body).hexdigest(), "len": len(body)}
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        out = json.dumps({"path": self.path, "at": time.time_ns()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)
    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = any
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S((addr, port), H).serve_forever()
"#;

const ADDR: &str = "198.18.77.5";
const PORT: u16 = 8080;

fn serve(ns: &NodeNs, script: &Path, log: &Path) -> Server {
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"]);
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3"])
        .arg(script)
        .args([ADDR, &PORT.to_string()])
        .arg(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    Server(child)
}

/// One request as sent, and what the server must have recorded.
struct Sent {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (Vec<u8>, Sent) {
    let mut h: Vec<(String, String)> = vec![("Host".into(), "shop".into())];
    h.extend(
        headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    if !body.is_empty() {
        h.push(("Content-Length".into(), body.len().to_string()));
    }
    let line = format!("{method} {path} HTTP/1.1");
    let mut b = format!("{line}\r\n").into_bytes();
    for (n, v) in &h {
        b.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    (
        b,
        Sent {
            line,
            headers: h,
            body: body.to_vec(),
        },
    )
}

fn answer(path: &str, head: bool) -> Vec<u8> {
    let body = format!("{{\"path\": \"{path}\", \"at\": 1}}");
    let mut a = format!(
        "HTTP/1.1 200 OK\r\nServer: weft-test\r\nDate: Sat, 05 Dec 2026 06:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        a.extend_from_slice(body.as_bytes());
    }
    a
}

fn sha256_hex(b: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(b)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The recorded connection: frames (direction, bytes, at) and the requests in it.
fn recording() -> (Vec<(u32, Vec<u8>)>, Vec<Sent>) {
    let mut frames = Vec::new();
    let mut sent = Vec::new();
    // Pipelined reads.
    let mut burst = Vec::new();
    for (m, p, id) in [
        ("GET", "/a?page=1", "id-1"),
        ("HEAD", "/a", "id-2"),
        ("GET", "/b", "id-3"),
        ("GET", "/c", "id-4"),
    ] {
        let (b, s) = req(m, p, &[("X-Request-Id", id)], b"");
        burst.extend(b);
        sent.push(s);
    }
    frames.push((1, burst));
    let mut answers = answer("/a?page=1", false);
    answers.extend(answer("/a", true));
    // Production answered /b differently from what the shadow does: a real difference.
    answers.extend(answer("/b-old", false));
    answers.extend(answer("/c", false));
    frames.push((2, answers));
    // A 1 MB POST with Expect: 100-continue: the head, production's 100, then the body.
    let body: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (head, s) = req(
        "POST",
        "/upload",
        &[("X-Request-Id", "id-post"), ("Expect", "100-continue")],
        &body,
    );
    sent.push(s);
    frames.push((1, head));
    frames.push((2, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()));
    for c in body.chunks(256 * 1024) {
        frames.push((1, c.to_vec()));
    }
    frames.push((2, answer("/upload", false)));
    let (b, s) = req("DELETE", "/a/7", &[("X-Request-Id", "id-del")], b"");
    sent.push(s);
    frames.push((1, b));
    frames.push((2, answer("/a/7", false)));
    (frames, sent)
}

async fn send_tap(addr: SocketAddr, shadow: &str, server: &str, frames: &[(u32, Vec<u8>)]) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the sink");
    let mut out = Vec::new();
    ShadowHello {
        shadow: shadow.into(),
        host_id: "prod-host".into(),
    }
    .encode_length_delimited(&mut out)
    .expect("encode");
    let t0 = 1_700_000_000_000_000_000u64;
    for (i, (dir, data)) in frames.iter().enumerate() {
        ShadowFrame {
            connection: 7,
            direction: *dir,
            data: data.clone(),
            at_unix_ns: t0 + i as u64 * 1_000_000,
            open: i == 0,
            client: if i == 0 {
                "198.18.64.2:40112".into()
            } else {
                String::new()
            },
            server: if i == 0 {
                server.to_owned()
            } else {
                String::new()
            },
            close: i + 1 == frames.len(),
            gap: false,
        }
        .encode_length_delimited(&mut out)
        .expect("encode");
    }
    s.write_all(&out).await.expect("writing frames");
    s.shutdown().await.expect("shutdown");
}

fn logged(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn desired(key: &str, port: u16, read_only: bool) -> DesiredResource {
    DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowSink(ShadowSink {
            sample: None,
            synthetic: None,
            shadow: "shop-shadow".into(),
            listen_port: port as u32,
            peers: vec!["127.0.0.1".into()],
            targets: vec![
                ShadowTarget {
                    network: "n".into(),
                    node: "s".into(),
                },
                ShadowTarget {
                    network: "n".into(),
                    node: "b".into(),
                },
            ],
            read_only,
        }),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn measurement(r: &ResourceReport, name: &str) -> f64 {
    r.measurements
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_replays_recorded_http_byte_identical_and_keeps_writes_out_in_read_only_mode() {
    require_root!();
    if Command::new("python3").arg("-V").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let prefix = format!("wft-{:x}-sk", std::process::id());
    let scratch = Scratch::new(&format!("{prefix}-{}", free_port()));
    let dir = scratch.0.clone();
    let script = dir.join("server.py");
    std::fs::write(&script, SERVER).expect("script");
    let (shadow_ns, base_ns) = (
        NodeNs::new(&prefix, "n", "s"),
        NodeNs::new(&prefix, "n", "b"),
    );
    let (shadow_log, base_log) = (dir.join("shadow.jsonl"), dir.join("base.jsonl"));
    let _servers = [
        serve(&shadow_ns, &script, &shadow_log),
        serve(&base_ns, &script, &base_log),
    ];
    // Both servers answer before the replay starts.
    for ns in [&shadow_ns, &base_ns] {
        let path = ns.path.clone();
        let up = eventually(Duration::from_secs(10), || {
            let p = path.clone();
            std::thread::spawn(move || {
                let f = std::fs::File::open(&p).ok()?;
                use std::os::fd::AsRawFd as _;
                // SAFETY: setns on an open namespace fd, on this scratch thread only.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                std::net::TcpStream::connect((ADDR, PORT)).ok()
            })
            .join()
            .ok()
            .flatten()
            .is_some()
        })
        .await;
        assert!(up, "the test server in {} did not start", path.display());
    }

    let (signals, mut signal_rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let (frames, sent) = recording();

    // Full replay: everything reaches both targets, byte-identical.
    let key = "shop-shadow/s";
    let d = [desired(key, free_port(), false)];
    let r = sinks.reconcile(&d, Scope::All).await;
    assert_eq!(r.len(), 1);
    assert!(r[0].error.is_none(), "{:?}", r[0].error);
    assert_eq!(r[0].changes, 1);
    let addr = sinks.local_addr(key).expect("listening");
    send_tap(addr, "shop-shadow", &format!("{ADDR}:{PORT}"), &frames).await;
    let shared = sinks.shared(key).expect("sink");
    let done = eventually(Duration::from_secs(30), || {
        logged(&shadow_log).len() >= sent.len()
            && logged(&base_log).len() >= sent.len()
            && lock(&shared.stats)
                .endpoint("DELETE /a/{id}")
                .is_some_and(|e| e.shadow_requests == 1)
            && shared.counters.requests_unpaired.load(Relaxed) == 0
            && lock(&shared.stats)
                .report()
                .iter()
                .map(|e| e.compared)
                .sum::<u64>()
                == 6
    })
    .await;
    assert!(
        done,
        "replay incomplete: shadow log {:?}, stats {:?}, counters {:?}",
        logged(&shadow_log),
        lock(&shared.stats)
            .report()
            .iter()
            .map(|e| (
                e.endpoint.clone(),
                e.production_requests,
                e.shadow_requests,
                e.compared
            ))
            .collect::<Vec<_>>(),
        shared.counters
    );
    for log in [&shadow_log, &base_log] {
        let got = logged(log);
        assert_eq!(got.len(), sent.len(), "{got:?}");
        for (g, s) in got.iter().zip(&sent) {
            assert_eq!(g["line"], s.line.as_str());
            let headers: Vec<(String, String)> = g["headers"]
                .as_array()
                .expect("headers")
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap_or_default().to_owned(),
                        h[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            assert_eq!(headers, s.headers, "{}", s.line);
            assert_eq!(g["len"], s.body.len());
            assert_eq!(g["sha256"], sha256_hex(&s.body).as_str(), "{}", s.line);
        }
    }
    let ids = shared.recent_ids(0);
    assert_eq!(ids, ["id-1", "id-2", "id-3", "id-4", "id-post", "id-del"]);
    let r = sinks.reconcile(&d, Scope::Only(&[key.to_owned()])).await;
    assert_eq!(r[0].changes, 0);
    assert_eq!(measurement(&r[0], "requests_replayed"), 6.0);
    assert_eq!(measurement(&r[0], "requests_skipped_write"), 0.0);
    assert_eq!(measurement(&r[0], "connections_replayed"), 1.0);
    assert_eq!(measurement(&r[0], "connections_failed"), 0.0);
    let report = r[0].shadow.clone().expect("shadow report");
    let ep = |name: &str| {
        report
            .endpoints
            .iter()
            .find(|e| e.endpoint == name)
            .unwrap_or_else(|| panic!("no endpoint {name}: {report:?}"))
            .clone()
    };
    let a = ep("GET /a");
    assert_eq!(
        (a.production_requests, a.shadow_requests, a.compared),
        (1, 1, 1)
    );
    assert!(!a.production_latency.is_empty() && !a.shadow_latency.is_empty());
    // The baseline replica is measured as the shadow is.
    assert_eq!((a.baseline_requests, a.baseline_errors), (1, 0));
    assert!(!a.baseline_latency.is_empty());
    // The timestamp differs everywhere, also between production and the noise baseline
    // (a second copy of production): noise.
    assert!(a.differing_fields.is_empty(), "{a:?}");
    assert_eq!(a.differing, 0);
    // /b was answered differently by production than by both copies (they run the same
    // server): the baseline differs from production as the shadow does, so it is not the
    // shadow's own difference.
    let b = ep("GET /b");
    assert_eq!((b.compared, b.differing), (1, 0), "{b:?}");
    assert!(b.differing_fields.is_empty(), "{b:?}");
    let post = ep("POST /upload");
    assert_eq!(
        (
            post.production_requests,
            post.shadow_requests,
            post.production_errors
        ),
        (1, 1, 0)
    );
    // Production latency comes from the capture times: request at frame 6 (the body's
    // last chunk) to the answer at frame 7: 1 ms.
    let mut bytes = post.production_latency.as_slice();
    let h: weft_shadow::hdrhistogram::Histogram<u64> =
        weft_shadow::hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes)
            .expect("V2 histogram");
    assert_eq!(h.len(), 1);
    assert_eq!(h.max(), h.highest_equivalent(1000));
    // The refresh task asks for a report while results change.
    let sig = tokio::time::timeout(REFRESH_EVERY * 3, signal_rx.recv()).await;
    let sig = sig.expect("a refresh signal").expect("signal");
    assert_eq!(
        (sig.kind, sig.drift.key.as_str(), sig.drift.what.as_str()),
        (weft_proto::kinds::SHADOW_SINK, key, REFRESH)
    );

    // Read-only: the POST and the DELETE never reach the targets, and are counted.
    std::fs::write(&shadow_log, "").expect("truncating");
    std::fs::write(&base_log, "").expect("truncating");
    let d = [desired(key, free_port(), true)];
    let r = sinks.reconcile(&d, Scope::Changed).await;
    assert_eq!(r[0].changes, 1, "a changed spec restarts the sink");
    assert_eq!(measurement(&r[0], "requests_replayed"), 0.0);
    let addr = sinks.local_addr(key).expect("listening");
    send_tap(addr, "shop-shadow", &format!("{ADDR}:{PORT}"), &frames).await;
    let shared = sinks.shared(key).expect("sink");
    let done = eventually(Duration::from_secs(30), || {
        shared.counters.requests_skipped_write.load(Relaxed) == 2
            && logged(&shadow_log).len() >= 4
            && logged(&base_log).len() >= 4
            && lock(&shared.stats)
                .endpoint("GET /c")
                .is_some_and(|e| e.shadow_requests == 1)
            && shared.counters.connections_replayed.load(Relaxed) == 1
    })
    .await;
    assert!(
        done,
        "read-only replay incomplete: {:?}",
        logged(&shadow_log)
    );
    // Grace for a stray write to arrive, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for log in [&shadow_log, &base_log] {
        let lines: Vec<String> = logged(log)
            .iter()
            .map(|g| g["line"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            lines,
            [
                "GET /a?page=1 HTTP/1.1",
                "HEAD /a HTTP/1.1",
                "GET /b HTTP/1.1",
                "GET /c HTTP/1.1"
            ]
        );
    }
    let r = sinks.reconcile(&d, Scope::Only(&[key.to_owned()])).await;
    assert_eq!(measurement(&r[0], "requests_skipped_write"), 2.0);
    assert_eq!(measurement(&r[0], "requests_replayed"), 4.0);
    let report = r[0].shadow.clone().expect("report");
    let del = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "DELETE /a/{id}")
        .expect("DELETE counted");
    assert_eq!((del.production_requests, del.shadow_requests), (1, 0));

    // Removed: the listener closes.
    let r = sinks.reconcile(&[], Scope::All).await;
    assert_eq!((r.len(), r[0].changes), (1, 1));
    assert!(sinks.managed().is_empty());
}

#[tokio::test]
async fn a_frame_over_the_limit_ends_the_tap_with_an_error_not_a_panic() {
    let mut b: Vec<u8> = Vec::new();
    prost::encoding::encode_varint((MAX_FRAME + 1) as u64, &mut b);
    b.extend_from_slice(&[0; 16]);
    let e = read_delimited(&mut b.as_slice(), MAX_FRAME)
        .await
        .unwrap_err();
    assert!(matches!(e, TapError::TooLarge { .. }), "{e}");
    let bad = [0xffu8; 12];
    assert!(matches!(
        read_delimited(&mut bad.as_slice(), MAX_FRAME)
            .await
            .unwrap_err(),
        TapError::BadLength
    ));
    let empty: &[u8] = &[];
    assert!(
        read_delimited(&mut &*empty, MAX_FRAME)
            .await
            .unwrap()
            .is_none()
    );
    let mut ok = Vec::new();
    ShadowHello {
        shadow: "x".into(),
        host_id: "h".into(),
    }
    .encode_length_delimited(&mut ok)
    .unwrap();
    let got = read_delimited(&mut ok.as_slice(), MAX_FRAME)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ShadowHello::decode(got.as_slice()).unwrap().shadow, "x");
    // Cut short inside a message: an error, not a hang or a panic.
    assert!(
        read_delimited(&mut &ok[..ok.len() - 1], MAX_FRAME)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sinks_reject_specs_they_cannot_make_and_taps_of_other_hosts() {
    let (signals, _rx) = mpsc::channel(4);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().unwrap()),
            netns_prefix: "wft-none".into(),
            limits: Limits::default(),
        },
        signals,
    );
    let mut d = desired("x/y", 0, false);
    let r = sinks.reconcile(std::slice::from_ref(&d), Scope::All).await;
    assert!(
        r[0].error
            .as_deref()
            .unwrap_or_default()
            .contains("listen_port"),
        "{r:?}"
    );
    d = desired("x/y", free_port(), false);
    if let Spec::ShadowSink(s) = &mut d.spec {
        s.peers = vec!["198.18.0.9".into()];
    }
    let r = sinks.reconcile(std::slice::from_ref(&d), Scope::All).await;
    assert!(r[0].error.is_none(), "{r:?}");
    let addr = sinks.local_addr("x/y").unwrap();
    let shared = sinks.shared("x/y").unwrap();
    let _s = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || shared
            .counters
            .taps_rejected
            .load(Relaxed)
            == 1)
        .await
    );
    assert_eq!(shared.counters.taps_connected.load(Relaxed), 0);
    // Synthetic load starts a run in place (nothing recorded yet: it ends at once).
    let load = |multiplier, generation| weft_proto::v1::SyntheticLoad {
        multiplier,
        duration_seconds: 1,
        generation,
    };
    if let Spec::ShadowSink(s) = &mut d.spec {
        s.synthetic = Some(load(3.0, 1));
    }
    let r = sinks.reconcile(std::slice::from_ref(&d), Scope::All).await;
    assert_eq!((r[0].error.as_deref(), r[0].changes), (None, 1), "{r:?}");
    assert!(Arc::ptr_eq(&shared, &sinks.shared("x/y").unwrap()));
    assert!(
        eventually(Duration::from_secs(5), || shared
            .synthetic
            .runs_finished
            .load(Relaxed)
            == 1)
        .await
    );
    // The same load again starts nothing; a new generation another run.
    let r = sinks.reconcile(std::slice::from_ref(&d), Scope::All).await;
    assert_eq!(r[0].changes, 0, "{r:?}");
    if let Spec::ShadowSink(s) = &mut d.spec {
        s.synthetic = Some(load(3.0, 2));
    }
    let r = sinks.reconcile(std::slice::from_ref(&d), Scope::All).await;
    assert_eq!(r[0].changes, 1, "{r:?}");
    assert!(
        eventually(Duration::from_secs(5), || shared
            .synthetic
            .runs_finished
            .load(Relaxed)
            == 2)
        .await
    );
    // A load that cannot be made is refused, naming it.
    if let Spec::ShadowSink(s) = &mut d.spec {
        s.synthetic = Some(load(-1.0, 3));
    }
    let r = sinks.reconcile(std::slice::from_ref(&d), Scope::All).await;
    let e = r[0].error.as_deref().unwrap_or_default();
    assert!(e.contains("synthetic multiplier"), "{r:?}");
}

fn redis_cli(ns: &NodeNs, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "redis-cli",
            "-h",
            ADDR,
            "-p",
            "6379",
        ])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_replays_redis_reads_to_a_real_redis_and_keeps_its_writes_out() {
    require_root!();
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no redis-server");
        return;
    }
    let prefix = format!("wft-{:x}-sr", std::process::id());
    let ns = NodeNs::new(&prefix, "n", "r");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"]);
    let _redis = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "redis-server",
                "--bind",
                ADDR,
                "--port",
                "6379",
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let up = eventually(Duration::from_secs(10), || {
        redis_cli(&ns, &["PING"]) == "PONG"
    })
    .await;
    assert!(up, "redis-server did not start");
    assert_eq!(redis_cli(&ns, &["SET", "seen", "1"]), "OK");

    let (signals, _rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let key = "cache-shadow/r";
    let d = [DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowSink(ShadowSink {
            sample: None,
            synthetic: None,
            shadow: "cache-shadow".into(),
            listen_port: u32::from(free_port()),
            peers: vec!["127.0.0.1".into()],
            targets: vec![ShadowTarget {
                network: "n".into(),
                node: "r".into(),
            }],
            read_only: true,
        }),
    }];
    let r = sinks.reconcile(&d, Scope::All).await;
    assert!(r[0].error.is_none(), "{:?}", r[0].error);
    let frames = vec![
        (
            1,
            b"*2\r\n$3\r\nGET\r\n$4\r\nseen\r\n*3\r\n$3\r\nSET\r\n$7\r\nwritten\r\n$1\r\nx\r\nPING\r\n*2\r\n$4\r\nINCR\r\n$4\r\nseen\r\n".to_vec(),
        ),
        // Production's answers; its GET saw another value than the shadow has: a difference.
        (2, b"$1\r\n2\r\n+OK\r\n+PONG\r\n:3\r\n".to_vec()),
        (1, b"*2\r\n$6\r\nEXISTS\r\n$4\r\nseen\r\n".to_vec()),
        (2, b":1\r\n".to_vec()),
    ];
    send_tap(
        sinks.local_addr(key).expect("listening"),
        "cache-shadow",
        &format!("{ADDR}:6379"),
        &frames,
    )
    .await;
    let shared = sinks.shared(key).expect("sink");
    let done = eventually(Duration::from_secs(20), || {
        let st = lock(&shared.stats);
        ["redis GET", "redis PING", "redis EXISTS"]
            .iter()
            .all(|e| st.endpoint(e).is_some_and(|e| e.shadow_requests == 1))
            && shared.counters.requests_skipped_write.load(Relaxed) == 2
    })
    .await;
    assert!(done, "{:?}", lock(&shared.stats).report());
    // The writes never reached the shadow.
    assert_eq!(redis_cli(&ns, &["EXISTS", "written"]), "0");
    assert_eq!(redis_cli(&ns, &["GET", "seen"]), "1");
    let r = sinks.reconcile(&d, Scope::Only(&[key.to_owned()])).await;
    assert_eq!(measurement(&r[0], "requests_replayed"), 3.0);
    assert_eq!(measurement(&r[0], "requests_skipped_write"), 2.0);
    let report = r[0].shadow.clone().expect("report");
    let get = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "redis GET")
        .expect("GET");
    // No baseline: every raw difference counts; 1 of 1 is beyond both thresholds.
    assert_eq!((get.compared, get.differing), (1, 1));
    assert_eq!(get.differing_fields.get("reply"), Some(&1), "{get:?}");
    let ping = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "redis PING")
        .expect("PING");
    assert_eq!((ping.compared, ping.differing), (1, 0));
    let set = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "redis SET")
        .expect("SET counted");
    assert_eq!((set.production_requests, set.shadow_requests), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_stops_reading_is_dropped_and_counted_not_buffered() {
    require_root!();
    let prefix = format!("wft-{:x}-sl", std::process::id());
    let ns = NodeNs::new(&prefix, "n", "slow");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"]);
    // Accepts and never reads: the kernel's buffers fill, then every write blocks.
    let _stuck = Server(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c"])
            .arg(format!(
                "import socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{ADDR}', 8081))\ns.listen(8)\nc, _ = s.accept()\ntime.sleep(120)\n"
            ))
            .spawn()
            .expect("python3"),
    );
    let (signals, _rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let key = "slow/slow";
    let d = [DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowSink(ShadowSink {
            sample: None,
            synthetic: None,
            shadow: "slow".into(),
            listen_port: u32::from(free_port()),
            peers: vec!["127.0.0.1".into()],
            targets: vec![ShadowTarget {
                network: "n".into(),
                node: "slow".into(),
            }],
            read_only: false,
        }),
    }];
    let r = sinks.reconcile(&d, Scope::All).await;
    assert!(r[0].error.is_none(), "{:?}", r[0].error);
    // The listener must be up before the replay connects.
    let path = ns.path.clone();
    let up = eventually(Duration::from_secs(10), || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ss", "-ltn"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(":8081"))
            .unwrap_or(false);
        out && path.exists()
    })
    .await;
    assert!(up, "the stuck server did not start");
    // 400 POSTs of 64 KiB: 25 MiB, far more than the queues and socket buffers hold.
    let body = vec![b'z'; 64 * 1024];
    let mut frames = Vec::new();
    for i in 0..400 {
        let (mut b, _) = req("POST", &format!("/w/{i}"), &[], &body);
        b.extend_from_slice(&body);
        frames.push((1, b));
    }
    let started = Instant::now();
    send_tap(
        sinks.local_addr(key).expect("listening"),
        "slow",
        &format!("{ADDR}:8081"),
        &frames,
    )
    .await;
    let shared = sinks.shared(key).expect("sink");
    let dropped = eventually(Duration::from_secs(20), || {
        shared.counters.targets_dropped_slow.load(Relaxed)
            + shared.counters.connections_dropped.load(Relaxed)
            >= 1
            && shared.counters.taps_connected.load(Relaxed) == 0
    })
    .await;
    assert!(dropped, "{:?}", shared.counters);
    // Well before the write timeout: dropped because the queue was full, not timed out.
    assert!(started.elapsed() < WRITE_TIMEOUT, "{:?}", started.elapsed());
    let replayed = shared.counters.requests_replayed.load(Relaxed);
    // Requests stop being sent once the shadow is dropped; the queue bounds how many.
    assert!(replayed > 0 && replayed < 400, "{replayed} replayed");
    let r = sinks.reconcile(&d, Scope::Only(&[key.to_owned()])).await;
    assert!(
        measurement(&r[0], "targets_dropped_slow") + measurement(&r[0], "connections_dropped")
            >= 1.0
    );
}

/// An HPACK literal header block without indexing, no Huffman (lower-case names).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in headers {
        b.push(0);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let l = payload.len();
    let mut f = vec![(l >> 16) as u8, (l >> 8) as u8, l as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_replays_h2c_to_nginx_per_stream_and_stops_at_a_write_in_read_only_mode() {
    require_root!();
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("skipped: no nginx");
        return;
    }
    let prefix = format!("wft-{:x}-h2", std::process::id());
    let scratch = Scratch::new(&format!("{prefix}-{}", free_port()));
    let dir = scratch.0.clone();
    let log = dir.join("access.log");
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  log_format f '$request_method $request_uri $server_protocol $http_x_request_id $status';\n  access_log {log} f;\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n  server {{\n    listen {ADDR}:8082 http2;\n    location / {{ return 200 \"ok $uri\\n\"; }}\n  }}\n}}\n",
            log = log.display()
        ),
    )
    .expect("nginx.conf");
    let ns = NodeNs::new(&prefix, "n", "web");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"]);
    let _nginx = Server(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "nginx", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .spawn()
            .expect("nginx"),
    );
    let up = eventually(Duration::from_secs(10), || {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "ss", "-ltn"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(":8082"))
            .unwrap_or(false)
    })
    .await;
    assert!(
        up,
        "nginx did not start: {:?}",
        std::fs::read_to_string(dir.join("error.log"))
    );

    // A recorded h2c connection: preface, SETTINGS and the ACK of the server's, three
    // streams (a GET, a POST with a body, a HEAD).
    let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    client.extend(h2_frame(4, 0, 0, &[]));
    client.extend(h2_frame(4, 1, 0, &[]));
    let base = [(":scheme", "http"), (":authority", "shop")];
    let hdrs = |m: &str, p: &str, id: &str| {
        let mut h = vec![(":method", m.to_owned()), (":path", p.to_owned())];
        h.extend(base.iter().map(|(n, v)| (*n, (*v).to_owned())));
        h.push(("x-request-id", id.to_owned()));
        hpack(&h.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>())
    };
    let mut frames: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut c1 = client.clone();
    c1.extend(h2_frame(1, 0x5, 1, &hdrs("GET", "/a?x=1", "h2-get")));
    frames.push((1, c1));
    let status = |s: &str| hpack(&[(":status", s)]);
    let mut a1 = h2_frame(4, 0, 0, &[]);
    a1.extend(h2_frame(4, 1, 0, &[]));
    a1.extend(h2_frame(1, 0x4, 1, &status("200")));
    a1.extend(h2_frame(0, 0x1, 1, b"ok /a\n"));
    frames.push((2, a1));
    let mut c2 = h2_frame(1, 0x4, 3, &hdrs("POST", "/p", "h2-post"));
    c2.extend(h2_frame(0, 0x1, 3, b"hello"));
    c2.extend(h2_frame(1, 0x5, 5, &hdrs("HEAD", "/h", "h2-head")));
    frames.push((1, c2));
    let mut a2 = h2_frame(1, 0x4, 3, &status("200"));
    a2.extend(h2_frame(0, 0x1, 3, b"ok /p\n"));
    a2.extend(h2_frame(1, 0x5, 5, &status("200")));
    frames.push((2, a2));
    // GOAWAY from the client, as a client closing its connection sends.
    frames.push((1, h2_frame(7, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0])));

    let (signals, _rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let key = "web-shadow/web";
    for read_only in [false, true] {
        std::fs::write(&log, "").expect("truncating the log");
        let desired = [DesiredResource {
            key: key.into(),
            generation: 1,
            spec: Spec::ShadowSink(ShadowSink {
                sample: None,
                synthetic: None,
                shadow: "web-shadow".into(),
                listen_port: u32::from(free_port()),
                peers: vec!["127.0.0.1".into()],
                targets: vec![ShadowTarget {
                    network: "n".into(),
                    node: "web".into(),
                }],
                read_only,
            }),
        }];
        let r = sinks.reconcile(&desired, Scope::All).await;
        assert!(r[0].error.is_none(), "{:?}", r[0].error);
        send_tap(
            sinks.local_addr(key).expect("listening"),
            "web-shadow",
            &format!("{ADDR}:8082"),
            &frames,
        )
        .await;
        let shared = sinks.shared(key).expect("sink");
        let want = if read_only { 1 } else { 3 };
        let done = eventually(Duration::from_secs(20), || {
            let st = lock(&shared.stats);
            let answered: u64 = ["GET /a", "POST /p", "HEAD /h"]
                .iter()
                .filter_map(|e| st.endpoint(e))
                .map(|e| e.shadow_requests)
                .sum();
            answered == want && shared.counters.connections_replayed.load(Relaxed) == 1
        })
        .await;
        assert!(
            done,
            "read_only {read_only}: {:?} {:?}",
            lock(&shared.stats).report(),
            shared.counters
        );
        let lines: Vec<String> = eventually_lines(&log, want as usize).await;
        if read_only {
            assert_eq!(lines, ["GET /a?x=1 HTTP/2.0 h2-get 200"]);
            assert_eq!(shared.counters.requests_skipped_write.load(Relaxed), 2);
        } else {
            assert_eq!(
                lines,
                [
                    "GET /a?x=1 HTTP/2.0 h2-get 200",
                    "POST /p HTTP/2.0 h2-post 200",
                    "HEAD /h HTTP/2.0 h2-head 200"
                ]
            );
            assert_eq!(shared.recent_ids(0), ["h2-get", "h2-post", "h2-head"]);
            let st = lock(&shared.stats);
            let get = st.endpoint("GET /a").expect("GET /a");
            assert_eq!((get.production_requests, get.shadow_requests), (1, 1));
        }
    }
}

async fn eventually_lines(log: &Path, n: usize) -> Vec<String> {
    let read = || -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    eventually(Duration::from_secs(5), || read().len() >= n).await;
    // A stray line, were there one, has time to come.
    tokio::time::sleep(Duration::from_millis(200)).await;
    read()
}

/// A postmaster started by the test, stopped (fast shutdown, by its pid) on drop.
struct Postgres(Child);

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn pg_result(column: &str, value: &str) -> Vec<u8> {
    let mut t = 1u16.to_be_bytes().to_vec();
    t.extend_from_slice(column.as_bytes());
    t.push(0);
    t.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0,
    ]);
    let mut d = 1u16.to_be_bytes().to_vec();
    d.extend_from_slice(&(value.len() as u32).to_be_bytes());
    d.extend_from_slice(value.as_bytes());
    let mut out = pg(b'T', &t);
    out.extend(pg(b'D', &d));
    out.extend(pg(b'C', b"SELECT 1\0"));
    out.extend(pg(b'Z', b"I"));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_replays_postgres_startup_and_queries_to_a_real_postgres_read_only() {
    require_root!();
    let bin = Path::new("/usr/lib/postgresql/15/bin");
    if !bin.join("postgres").exists() {
        eprintln!("skipped: no PostgreSQL 15");
        return;
    }
    let prefix = format!("wft-{:x}-pg", std::process::id());
    let scratch = Scratch::new(&format!("{prefix}-{}", free_port()));
    let dir = scratch.0.clone();
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status();
    assert!(chown.is_ok_and(|s| s.success()));
    let as_postgres = |c: &mut Command| {
        c.args([
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
        ]);
    };
    let data = dir.join("data");
    let mut init = Command::new("env");
    as_postgres(&mut init);
    let st = init
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-U", "app", "--no-sync", "-D"])
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .expect("initdb");
    assert!(st.success(), "initdb");
    // Trust over TCP too (initdb's trust covers only loopback and the socket).
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .expect("pg_hba.conf");
    writeln!(hba, "host all all 198.18.0.0/15 trust").expect("pg_hba.conf");
    let ns = NodeNs::new(&prefix, "n", "db");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", &format!("{ADDR}/32"), "dev", "lo"]);
    let mut run = Command::new("ip");
    run.args(["netns", "exec", &ns.name]);
    as_postgres(&mut run);
    let _pg = Postgres(
        run.arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-c",
                &format!("listen_addresses={ADDR}"),
                "-p",
                "5432",
                "-k",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres"),
    );
    let psql = |sql: &str| -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "psql", "-h", ADDR, "-U", "app", "-d", "postgres",
                "-tAc", sql,
            ])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let up = eventually(Duration::from_secs(20), || psql("SELECT 1") == "1").await;
    assert!(up, "postgres did not start");

    // A recorded session: startup (trust), a simple SELECT, a CREATE (a write), an
    // extended-protocol SELECT, Terminate.
    let mut startup_body = 196_608u32.to_be_bytes().to_vec();
    startup_body.extend_from_slice(b"user\0app\0database\0postgres\0\0");
    let mut startup = (startup_body.len() as u32 + 4).to_be_bytes().to_vec();
    startup.extend(startup_body);
    let mut ready = pg(b'R', &[0, 0, 0, 0]);
    ready.extend(pg(b'S', b"server_version\x0015.18\0"));
    ready.extend(pg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    ready.extend(pg(b'Z', b"I"));
    let mut extended = pg(b'P', b"\0SELECT 2 AS two\0\0\0");
    extended.extend(pg(b'B', b"\0\0\0\0\0\0\0\0"));
    extended.extend(pg(b'D', b"P\0"));
    extended.extend(pg(b'E', b"\0\0\0\0\0"));
    extended.extend(pg(b'S', b""));
    let mut extended_answer = pg(b'1', b"");
    extended_answer.extend(pg(b'2', b""));
    extended_answer.extend(pg_result("two", "2"));
    let mut create_answer = pg(b'C', b"CREATE TABLE\0");
    create_answer.extend(pg(b'Z', b"I"));
    let frames: Vec<(u32, Vec<u8>)> = vec![
        (1, startup),
        (2, ready),
        (1, pg(b'Q', b"SELECT 1 AS one\0")),
        (2, pg_result("one", "1")),
        (1, pg(b'Q', b"CREATE TABLE written (a int)\0")),
        (2, create_answer),
        (1, extended),
        (2, extended_answer),
        (1, pg(b'X', b"")),
    ];
    let (signals, _rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let key = "db-shadow/db";
    let d = [DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowSink(ShadowSink {
            sample: None,
            synthetic: None,
            shadow: "db-shadow".into(),
            listen_port: u32::from(free_port()),
            peers: vec!["127.0.0.1".into()],
            targets: vec![ShadowTarget {
                network: "n".into(),
                node: "db".into(),
            }],
            read_only: true,
        }),
    }];
    let r = sinks.reconcile(&d, Scope::All).await;
    assert!(r[0].error.is_none(), "{:?}", r[0].error);
    send_tap(
        sinks.local_addr(key).expect("listening"),
        "db-shadow",
        &format!("{ADDR}:5432"),
        &frames,
    )
    .await;
    let shared = sinks.shared(key).expect("sink");
    let done = eventually(Duration::from_secs(20), || {
        let st = lock(&shared.stats);
        st.endpoint("postgres SELECT")
            .is_some_and(|e| e.shadow_requests == 2)
            && st
                .endpoint("postgres startup")
                .is_some_and(|e| e.shadow_requests == 1)
            && shared.counters.requests_skipped_write.load(Relaxed) == 1
    })
    .await;
    assert!(
        done,
        "{:?} {:?}",
        lock(&shared.stats).report(),
        shared.counters
    );
    assert_eq!(
        psql("SELECT to_regclass('written') IS NULL"),
        "t",
        "the CREATE reached the shadow"
    );
    let r = sinks.reconcile(&d, Scope::Only(&[key.to_owned()])).await;
    let report = r[0].shadow.clone().expect("report");
    let select = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "postgres SELECT")
        .expect("SELECT");
    assert_eq!(
        (
            select.production_requests,
            select.shadow_requests,
            select.shadow_errors
        ),
        (2, 2, 0)
    );
    // Same rows, same column names, same command tags: nothing differs.
    assert_eq!((select.compared, select.differing), (2, 0), "{select:?}");
    let startup = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "postgres startup")
        .expect("startup");
    assert_eq!((startup.shadow_errors, startup.differing), (0, 0));
    let create = report
        .endpoints
        .iter()
        .find(|e| e.endpoint == "postgres CREATE")
        .expect("CREATE");
    assert_eq!((create.production_requests, create.shadow_requests), (1, 0));
    assert_eq!(measurement(&r[0], "requests_replayed"), 3.0);
    drop(_pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_gap_stops_the_replay_of_its_connection_only() {
    require_root!();
    let prefix = format!("wft-{:x}-gp", std::process::id());
    let scratch = Scratch::new(&format!("{prefix}-{}", free_port()));
    let script = scratch.0.join("server.py");
    std::fs::write(&script, SERVER).expect("script");
    let log = scratch.0.join("log.jsonl");
    let ns = NodeNs::new(&prefix, "n", "g");
    let _server = serve(&ns, &script, &log);
    let up = eventually(Duration::from_secs(10), || {
        Command::new("ip")
            .args(["netns", "exec", &ns.name, "ss", "-ltn"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{PORT}")))
            .unwrap_or(false)
    })
    .await;
    assert!(up, "the test server did not start");
    let (signals, _rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let key = "gap/g";
    let d = [DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowSink(ShadowSink {
            sample: None,
            synthetic: None,
            shadow: "gap".into(),
            listen_port: u32::from(free_port()),
            peers: vec!["127.0.0.1".into()],
            targets: vec![ShadowTarget {
                network: "n".into(),
                node: "g".into(),
            }],
            read_only: false,
        }),
    }];
    let r = sinks.reconcile(&d, Scope::All).await;
    assert!(r[0].error.is_none(), "{:?}", r[0].error);
    let mut s = tokio::net::TcpStream::connect(sinks.local_addr(key).expect("listening"))
        .await
        .expect("connecting");
    let mut out = Vec::new();
    ShadowHello {
        shadow: "gap".into(),
        host_id: "p".into(),
    }
    .encode_length_delimited(&mut out)
    .expect("encode");
    let frame = |connection: u64, open: bool, data: &[u8], gap: bool, close: bool| ShadowFrame {
        connection,
        direction: 1,
        data: data.to_vec(),
        at_unix_ns: 1,
        open,
        client: "198.18.64.2:1".into(),
        server: format!("{ADDR}:{PORT}"),
        close,
        gap,
    };
    let (first, _) = req("GET", "/before", &[], b"");
    let (after, _) = req("GET", "/after-gap", &[], b"");
    let (other, _) = req("GET", "/other", &[], b"");
    for f in [
        frame(1, true, &first, false, false),
        frame(2, true, &other, false, false),
        frame(1, false, &after, true, false),
        frame(1, false, &after, false, true),
        frame(2, false, &[], false, true),
    ] {
        f.encode_length_delimited(&mut out).expect("encode");
    }
    s.write_all(&out).await.expect("writing");
    s.shutdown().await.expect("shutdown");
    let shared = sinks.shared(key).expect("sink");
    let done = eventually(Duration::from_secs(20), || {
        logged(&log).len() >= 2 && shared.counters.connections_dropped.load(Relaxed) == 1
    })
    .await;
    assert!(done, "{:?} {:?}", logged(&log), shared.counters);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lines: Vec<String> = logged(&log)
        .iter()
        .map(|g| g["line"].as_str().unwrap_or_default().to_owned())
        .collect();
    lines.sort();
    assert_eq!(lines, ["GET /before HTTP/1.1", "GET /other HTTP/1.1"]);
}

#[test]
fn the_sink_wide_budgets_are_given_back_when_frames_and_connections_go() {
    let shared = Arc::new(SinkShared {
        spec: SinkSpec {
            sample: None,
            shadow: "s".into(),
            listen_port: 1,
            peers: vec![],
            targets: vec![("n".into(), "a".into())],
            read_only: false,
            synthetic: None,
        },
        read_only: std::sync::atomic::AtomicBool::new(false),
        sample: Mutex::new(None),
        recording: Default::default(),
        synthetic: Default::default(),
        target_netns: vec![],
        limits: Limits::default(),
        stats: Mutex::new(Stats::default()),
        counters: SinkCounters::default(),
        recent_ids: Mutex::new(vec![VecDeque::new()]),
        epoch: Instant::now(),
        queued_bytes: AtomicU64::new(0),
        live_connections: AtomicU64::new(0),
    });
    let frame = |n: usize| ShadowFrame {
        data: vec![0; n],
        ..Default::default()
    };
    let big = (MAX_QUEUED_BYTES / 2) as usize;
    let a = Queued::new(frame(big), &shared).expect("fits");
    let b = Queued::new(frame(big), &shared).expect("fits exactly");
    assert!(Queued::new(frame(1), &shared).is_none(), "over the budget");
    assert_eq!(shared.queued_bytes.load(Relaxed), MAX_QUEUED_BYTES);
    drop(a);
    let c = Queued::new(frame(1), &shared).expect("room again");
    drop((b, c));
    assert_eq!(shared.queued_bytes.load(Relaxed), 0);
    let slots: Vec<LiveSlot> = (0..MAX_CONNECTIONS)
        .map(|_| LiveSlot::take(&shared).expect("a slot"))
        .collect();
    assert!(LiveSlot::take(&shared).is_none());
    drop(slots);
    assert_eq!(shared.live_connections.load(Relaxed), 0);
    assert!(LiveSlot::take(&shared).is_some());
}

#[tokio::test]
async fn a_changed_sink_keeps_its_port_and_ends_its_taps_streams() {
    use tokio::io::AsyncReadExt as _;
    let (signals, _rx) = mpsc::channel(4);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().unwrap()),
            netns_prefix: "wft-none".into(),
            limits: Limits::default(),
        },
        signals,
    );
    let mut d = desired("c/d", free_port(), false);
    assert!(
        sinks.reconcile(std::slice::from_ref(&d), Scope::All).await[0]
            .error
            .is_none()
    );
    let addr = sinks.local_addr("c/d").unwrap();
    let shared = sinks.shared("c/d").unwrap();
    let mut tap = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = Vec::new();
    ShadowHello {
        shadow: "shop-shadow".into(),
        host_id: "h".into(),
    }
    .encode_length_delimited(&mut hello)
    .unwrap();
    tap.write_all(&hello).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || shared
            .counters
            .taps_connected
            .load(Relaxed)
            == 1)
        .await
    );
    // Read-only is changed in place: the tap's stream stays.
    if let Spec::ShadowSink(s) = &mut d.spec {
        s.read_only = true;
    }
    let r = sinks
        .reconcile(std::slice::from_ref(&d), Scope::Changed)
        .await;
    assert_eq!((r[0].error.as_deref(), r[0].changes), (None, 1));
    assert!(Arc::ptr_eq(&shared, &sinks.shared("c/d").unwrap()));
    assert!(shared.read_only.load(Relaxed));
    assert!(
        r[0].observed[0].contains("read-only"),
        "{:?}",
        r[0].observed
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_millis(300), tap.read(&mut buf)).await;
    assert!(n.is_err(), "the tap's stream must stay open: {n:?}");
    assert_eq!(shared.counters.taps_connected.load(Relaxed), 1);
    // Another change (the targets) makes the sink anew on the same port.
    if let Spec::ShadowSink(s) = &mut d.spec {
        s.targets.pop();
    }
    let r = sinks
        .reconcile(std::slice::from_ref(&d), Scope::Changed)
        .await;
    assert_eq!((r[0].error.as_deref(), r[0].changes), (None, 1));
    assert_eq!(sinks.local_addr("c/d"), Some(addr));
    // The old sink's tap stream is closed: the tap reconnects to the new one.
    let n = tokio::time::timeout(Duration::from_secs(5), tap.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    let shared = sinks.shared("c/d").unwrap();
    let mut again = tokio::net::TcpStream::connect(addr).await.unwrap();
    again.write_all(&hello).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || shared
            .counters
            .taps_connected
            .load(Relaxed)
            == 1)
        .await
    );
}

/// Reads one HTTP/1.1 response with a Content-Length (or until close) from `s`.
fn read_response(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return got;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_tap_streams_to_the_real_sink_and_the_shadow_gets_production_requests() {
    use crate::FLOW_OBJECT;
    use crate::attach::{PROG_EGRESS, PROG_INGRESS};
    use crate::datapath::{Datapath, Hook, Order};
    use crate::shadow::ShadowTapMetrics;
    use crate::shadow::tap::TapEngine;
    use crate::shadow::tap_policy::TapSpec;
    use crate::testns::TestNetns;
    use std::io::Write as _;
    require_root!();
    let prefix = format!("wft-{:x}-e2", std::process::id());
    let scratch = Scratch::new(&format!("{prefix}-{}", free_port()));
    let script = scratch.0.join("server.py");
    std::fs::write(&script, SERVER).expect("script");
    let (prod_log, shadow_log) = (scratch.0.join("prod.jsonl"), scratch.0.join("shadow.jsonl"));
    const PROD: &str = "198.18.78.2";

    // Production: a "host" namespace whose tp0 plays the node's host-side veth, and the
    // node's namespace with the server.
    let host = TestNetns::new();
    let node = TestNetns::new();
    ip(&[
        "-n", &host.name, "link", "add", "tp0", "type", "veth", "peer", "name", "eth0", "netns",
        &node.name,
    ]);
    ip(&[
        "-n",
        &host.name,
        "addr",
        "add",
        "198.18.78.1/24",
        "dev",
        "tp0",
    ]);
    ip(&["-n", &host.name, "link", "set", "tp0", "up"]);
    ip(&[
        "-n",
        &node.name,
        "addr",
        "add",
        &format!("{PROD}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &node.name, "link", "set", "eth0", "up"]);
    ip(&["-n", &node.name, "link", "set", "lo", "up"]);
    let _prod = Server(
        Command::new("ip")
            .args(["netns", "exec", &node.name, "python3"])
            .arg(&script)
            .args([PROD, &PORT.to_string()])
            .arg(&prod_log)
            .spawn()
            .expect("python3"),
    );
    // The shadow: a node namespace with production's address and the same server.
    let shadow = NodeNs::new(&prefix, "n", "web");
    shadow.ip(&["link", "set", "lo", "up"]);
    shadow.ip(&["addr", "add", &format!("{PROD}/32"), "dev", "lo"]);
    let _shadow_server = Server(
        Command::new("ip")
            .args(["netns", "exec", &shadow.name, "python3"])
            .arg(&script)
            .args([PROD, &PORT.to_string()])
            .arg(&shadow_log)
            .spawn()
            .expect("python3"),
    );
    for ns in [&node.name, &shadow.name] {
        let up = eventually(Duration::from_secs(10), || {
            Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-ltn"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{PORT}")))
                .unwrap_or(false)
        })
        .await;
        assert!(up, "server in {ns} did not start");
    }

    // The sink.
    let (signals, _rx) = mpsc::channel(16);
    let sinks = SinkReconciler::new(
        SinkConfig {
            underlay: Some("127.0.0.1".parse().expect("address")),
            netns_prefix: prefix.clone(),
            limits: Limits::default(),
        },
        signals,
    );
    let key = "s1/web";
    let d = [DesiredResource {
        key: key.into(),
        generation: 1,
        spec: Spec::ShadowSink(ShadowSink {
            sample: None,
            synthetic: None,
            shadow: "s1".into(),
            listen_port: u32::from(free_port()),
            peers: vec!["127.0.0.1".into()],
            targets: vec![ShadowTarget {
                network: "n".into(),
                node: "web".into(),
            }],
            read_only: false,
        }),
    }];
    let r = sinks.reconcile(&d, Scope::All).await;
    assert!(r[0].error.is_none(), "{:?}", r[0].error);
    let sink_addr = sinks.local_addr(key).expect("listening");

    // The tap: the flow observer, then the tap, sampling every connection to :8080.
    let ifindex = in_ns(&host.path, || {
        let c = std::ffi::CString::new("tp0").expect("name");
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    });
    assert_ne!(ifindex, 0);
    let mut dp = Datapath::load(FLOW_OBJECT).expect("flow object");
    for p in [PROG_INGRESS, PROG_EGRESS] {
        dp.load_classifier(p).expect("verifier");
    }
    let dp = dp.into_shared();
    let engine = TapEngine::new(
        dp.clone(),
        tokio::runtime::Handle::current(),
        "prod-host",
        None,
        Arc::new(ShadowTapMetrics::default()),
    );
    {
        let dp2 = dp.clone();
        in_ns(&host.path, move || {
            let mut dp = dp2.lock().expect("datapath");
            dp.attach("tp0", ifindex, Hook::Ingress, PROG_INGRESS, Order::First)
                .expect("attach");
            dp.attach("tp0", ifindex, Hook::Egress, PROG_EGRESS, Order::First)
                .expect("attach");
        });
    }
    let spec = TapSpec::from_wire(
        key,
        &weft_proto::v1::ShadowTap {
            shadow: "s1".into(),
            network: "prod".into(),
            node: "web".into(),
            policy: Some(weft_proto::v1::ShadowPolicy {
                share_ppm: 1_000_000,
                key: "connection".into(),
                ports: vec![u32::from(PORT)],
                ..Default::default()
            }),
            sinks: vec![sink_addr.to_string()],
        },
    )
    .expect("tap spec");
    let e2 = engine.clone();
    in_ns(&host.path, move || e2.apply(key, "tp0", ifindex, &spec)).expect("tap");
    let shared = sinks.shared(key).expect("sink");
    assert!(
        eventually(Duration::from_secs(10), || shared
            .counters
            .taps_connected
            .load(Relaxed)
            == 1)
        .await,
        "the tap did not connect"
    );

    // Production traffic: a GET, a 200 KB POST and a DELETE on one keep-alive connection.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let b2 = body.clone();
    let answers = in_ns(&host.path, move || {
        let mut s = std::net::TcpStream::connect((PROD, PORT)).expect("production");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut out = Vec::new();
        s.write_all(b"GET /e2e?q=1 HTTP/1.1\r\nHost: p\r\nX-Request-Id: e2e-1\r\n\r\n")
            .expect("GET");
        out.push(read_response(&mut s));
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: p\r\nX-Request-Id: e2e-2\r\nContent-Length: {}\r\n\r\n",
            b2.len()
        );
        s.write_all(head.as_bytes()).expect("POST");
        s.write_all(&b2).expect("POST body");
        out.push(read_response(&mut s));
        s.write_all(b"DELETE /e2e/5 HTTP/1.1\r\nHost: p\r\nX-Request-Id: e2e-3\r\nConnection: close\r\n\r\n").expect("DELETE");
        out.push(read_response(&mut s));
        out
    });
    assert!(
        answers.iter().all(|a| a.starts_with(b"HTTP/1.1 200")),
        "{answers:?}"
    );
    let done = eventually(Duration::from_secs(20), || logged(&shadow_log).len() >= 3).await;
    assert!(
        done,
        "shadow log {:?}, counters {:?}",
        logged(&shadow_log),
        shared.counters
    );
    let (prod, shadowed) = (logged(&prod_log), logged(&shadow_log));
    assert_eq!(prod.len(), 3);
    for (p, s) in prod.iter().zip(&shadowed) {
        assert_eq!(
            (&p["line"], &p["headers"], &p["sha256"], &p["len"]),
            (&s["line"], &s["headers"], &s["sha256"], &s["len"])
        );
    }
    assert_eq!(shadowed[1]["sha256"], sha256_hex(&body).as_str());
    assert!(eventually(Duration::from_secs(10), || shared.recent_ids(0).len() == 3).await);
    assert_eq!(shared.recent_ids(0), ["e2e-1", "e2e-2", "e2e-3"]);
    {
        let st = lock(&shared.stats);
        let get = st.endpoint("GET /e2e").expect("GET /e2e");
        assert_eq!((get.production_requests, get.shadow_requests), (1, 1));
    }

    // Synthetic load: the recorded connection (three requests) replayed into the shadow
    // at twice its rate for 2 s. One connection recorded: a cycle is 1 s at 1x, 0.5 s at
    // 2x, so four connections start (0, 0.5, 1, 1.5 s): twelve requests, each
    // byte-identical to what production got.
    assert!(eventually(Duration::from_secs(10), || shared.recording.len() == 1).await);
    let mut again = d[0].clone();
    if let Spec::ShadowSink(s) = &mut again.spec {
        s.synthetic = Some(weft_proto::v1::SyntheticLoad {
            multiplier: 2.0,
            duration_seconds: 2,
            generation: 1,
        });
    }
    let r = sinks
        .reconcile(std::slice::from_ref(&again), Scope::All)
        .await;
    assert_eq!((r[0].error.as_deref(), r[0].changes), (None, 1), "{r:?}");
    assert!(
        eventually(Duration::from_secs(15), || shared
            .synthetic
            .runs_finished
            .load(Relaxed)
            == 1)
        .await
    );
    assert_eq!(shared.synthetic.connections.load(Relaxed), 4);
    assert_eq!(shared.synthetic.requests.load(Relaxed), 12);
    assert_eq!(shared.synthetic.failed.load(Relaxed), 0);
    assert!(eventually(Duration::from_secs(10), || logged(&shadow_log).len() == 15).await);
    let all = logged(&shadow_log);
    for (i, s) in all[3..].iter().enumerate() {
        let p = &prod[i % 3];
        assert_eq!(
            (&p["line"], &p["sha256"]),
            (&s["line"], &s["sha256"]),
            "{i}"
        );
    }
    let m = &r[0].measurements;
    assert!(
        m.iter().any(|(n, _)| n == "synthetic_runs_started"),
        "{m:?}"
    );

    assert!(engine.remove(key));
    engine.shutdown();
    dp.lock().expect("datapath").detach_all();
}
