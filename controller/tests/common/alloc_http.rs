//! A client of the allocation API over keep-alive HTTP/1.1 for the tests that drive a
//! real `weft-controller` binary (kill -9, standbys, etcd members killed): the address and
//! token, one connection, shards for network `blue`, and clients allocating in a burst.
#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::collections::HashMap;

use weft_shards::{Index, ShardConfig};
use weft_store::Store;

/// The controller's REST address and its admin token.
#[derive(Debug, Clone)]
pub struct Http {
    pub addr: String,
    pub token: String,
}

/// Starts the `weft-controller` binary (plain text, addresses of its own) with its store
/// in `data_dir` and `extra` flags; its REST address and admin token once it serves.
pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> (Child, Http) {
    let (child, http, _grpc) = start_with_grpc(data_dir, extra);
    (child, http)
}

/// As [`start`], and the gRPC address.
pub fn start_with_grpc(data_dir: &std::path::Path, extra: &[&str]) -> (Child, Http, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--insecure",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft-controller");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("announcement");
    let (grpc, http) = line
        .trim()
        .rsplit_once(" http=")
        .and_then(|(g, h)| Some((g.rsplit_once("grpc=")?.1.to_owned(), h.to_owned())))
        .unwrap_or_else(|| panic!("{line:?}"));
    let token = std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("the controller's admin token")
        .trim()
        .to_owned();
    (child, Http { addr: http, token }, grpc)
}

pub use weft_lab::http1::Conn;

impl Http {
    /// A keep-alive connection to the controller.
    pub fn connect(&self) -> std::io::Result<Conn> {
        Conn::open(&self.addr, &self.token)
    }
}

pub fn field<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v.get(name).unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Creates `shards` /20 shards for network `blue`.
pub fn prepare(http: &Http, shards: usize) {
    let mut c = http.connect().expect("connect");
    for _ in 0..shards {
        let (code, body) = c
            .request(
                "POST",
                "/shards",
                r#"{"prefix_len":20,"network_id":"blue"}"#,
            )
            .expect("create");
        assert_eq!(code, 201, "{body}");
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub address: String,
    pub seq: u64,
    pub workload: String,
}

/// The acknowledgement of `workload`'s allocation from a 201's body.
fn ack(workload: String, body: &str) -> Ack {
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    Ack {
        address: field(&v, "address").as_str().unwrap().to_owned(),
        seq: field(&v, "seq").as_u64().unwrap(),
        workload,
    }
}

/// Allocates for `n` new workloads over `c` and checks that none gets an address of
/// `taken` (the acknowledged allocations of before: `who` says which controller answers).
pub fn allocate_fresh(c: &mut Conn, n: usize, taken: &HashMap<&str, &Ack>, who: &str) {
    for i in 0..n {
        let (code, body) = c
            .request(
                "POST",
                "/networks/blue/addresses",
                &format!(r#"{{"workload":"after-{i}","host_id":"h0"}}"#),
            )
            .unwrap();
        assert_eq!(code, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let address = field(&v, "address").as_str().unwrap();
        assert!(
            !taken.contains_key(address),
            "{address} handed out again {who}"
        );
    }
}

/// Every allocation of `acks` is in `store` (what a controller rebuilds from) with its
/// sequence and workload, and the shard index it loads holds its invariants; the index.
pub fn assert_stored(store: &dyn Store, acks: &[Ack]) -> Index {
    let index = Index::load(store, Arc::new(ShardConfig::default())).expect("load");
    index.check_invariants().expect("invariants");
    for a in acks {
        let stored = index
            .allocation(a.address.parse().unwrap())
            .unwrap_or_else(|| panic!("acknowledged {} lost", a.address));
        assert_eq!(
            (stored.seq, stored.workload.as_str()),
            (a.seq, a.workload.as_str()),
            "{}",
            a.address
        );
    }
    index
}

/// `clients` threads allocating until `stop` (or the connection dies); every 201 is
/// recorded.
pub fn hammer(
    http: &Http,
    clients: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Vec<Ack>>> {
    (0..clients)
        .map(|t| {
            let http = http.clone();
            let stop = stop.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                let Ok(mut c) = http.connect() else {
                    return acks;
                };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let workload = format!("w{t}-{i}");
                    i += 1;
                    let body = format!(r#"{{"workload":"{workload}","host_id":"h{}"}}"#, t % 4);
                    match c.request("POST", "/networks/blue/addresses", &body) {
                        Ok((201, body)) => {
                            acks.push(ack(workload, &body));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((code, body)) => panic!("{code}: {body}"),
                        Err(_) => break, // killed
                    }
                }
                acks
            })
        })
        .collect()
}

/// `clients` threads allocating until `stop`, retrying after refusals (the store paused);
/// returns each thread's acknowledged allocations and how many requests were refused.
pub fn hammer_through_failures(
    http: &Http,
    clients: usize,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<(Vec<Ack>, u64)>> {
    (0..clients)
        .map(|t| {
            let http = http.clone();
            let stop = stop.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                let mut refused = 0;
                let mut c = http.connect().expect("connect");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let workload = format!("w{t}-{i}");
                    i += 1;
                    let body = format!(r#"{{"workload":"{workload}","host_id":"h{}"}}"#, t % 4);
                    match c.request("POST", "/networks/blue/addresses", &body) {
                        Ok((201, body)) => {
                            acks.push(ack(workload, &body));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((code, body)) => {
                            assert!(code >= 500, "{code}: {body}");
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(20));
                            c = http.connect().expect("reconnect");
                        }
                    }
                }
                (acks, refused)
            })
        })
        .collect()
}
