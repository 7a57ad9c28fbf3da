//! The live topology survives `kill -9`: the controller checkpoints it to its store every
//! `--topology-checkpoint-interval`, and reads the checkpoint back at start, so the request
//! counts after a restart are the ones sent before it; without checkpoints
//! (`--topology-checkpoint-interval 0`) nothing is read back.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "common/alloc_http.rs"]
mod alloc_http;
use alloc_http::{Http, start};

fn start_with(dir: &Path, interval: &str) -> (Child, String, String) {
    let (child, http) = start(dir, &["--topology-checkpoint-interval", interval]);
    (child, http.addr, http.token)
}

fn request(http: &str, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let http = Http {
        addr: http.to_owned(),
        token: token.to_owned(),
    };
    http.connect()
        .expect("connect")
        .request(method, path, body)
        .expect("request")
}

/// `n` observations of `source` -> `target` on `port`, as JSON lines.
fn observations(source: &str, target: &str, port: u16, protocol: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({
                "timestamp_unix_ns": 0,
                "source": {"host": source, "port": 40000 + (i % 1000) as u16},
                "destination": {"host": target, "port": port},
                "protocol": protocol,
                "bytes_sent": 100, "bytes_received": 200,
                "latency_ms": 1.5 + (i % 7) as f64,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// Requests per (source, target) in weft's shape of the topology.
fn requests(http: &str, token: &str) -> Vec<(String, String, u64)> {
    let (status, body) = request(http, token, "GET", "/topology?shape=weft", "");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let mut out: Vec<(String, String, u64)> = v["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|d| {
            (
                d["source"].as_str().unwrap().to_owned(),
                d["target"].as_str().unwrap().to_owned(),
                d["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn post(http: &str, token: &str, body: &str, expected: u64) {
    let (status, answer) = request(http, token, "POST", "/observations", body);
    assert_eq!(status, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(v["accepted"].as_u64(), Some(expected), "{answer}");
}

#[test]
fn kill_9_keeps_the_topology_up_to_the_last_checkpoint() {
    let dir = std::env::temp_dir().join(format!(
        "weft-checkpoint-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let (mut child, http, token) = start_with(&dir, "500ms");
    post(
        &http,
        &token,
        &observations("web", "api", 8080, "http", 300),
        300,
    );
    post(
        &http,
        &token,
        &observations("api", "db", 5432, "postgres", 200),
        200,
    );
    let before = requests(&http, &token);
    assert_eq!(
        before,
        vec![
            ("api".to_owned(), "db".to_owned(), 200),
            ("web".to_owned(), "api".to_owned(), 300)
        ]
    );
    // Two checkpoint intervals, then kill -9 (no shutdown checkpoint).
    std::thread::sleep(Duration::from_millis(1_500));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let started = Instant::now();
    let (mut child, http, token) = start_with(&dir, "500ms");
    eprintln!("restarted and serving in {:?}", started.elapsed());
    assert_eq!(
        requests(&http, &token),
        before,
        "the same counts after kill -9"
    );
    // New traffic adds to what was read back.
    post(
        &http,
        &token,
        &observations("web", "api", 8080, "http", 50),
        50,
    );
    assert_eq!(
        requests(&http, &token),
        vec![
            ("api".to_owned(), "db".to_owned(), 200),
            ("web".to_owned(), "api".to_owned(), 350)
        ]
    );
    // A graceful stop writes a last checkpoint: the 50 survive even right after.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    child.wait().expect("reap");
    let (mut child, http, token) = start_with(&dir, "500ms");
    assert_eq!(requests(&http, &token)[1].2, 350);
    child.kill().expect("kill");
    child.wait().expect("reap");

    // Without checkpoints nothing is read back.
    let (mut child, http, token) = start_with(&dir, "0");
    assert!(requests(&http, &token).is_empty());
    child.kill().expect("kill");
    child.wait().expect("reap");
    let _ = std::fs::remove_dir_all(&dir);
}
