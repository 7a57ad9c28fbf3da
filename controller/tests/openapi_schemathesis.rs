//! The OpenAPI document against the live server, checked by a real client-side tool:
//! schemathesis (installed by `cargo xtask setup` under target/tools/schemathesis) runs
//! against a `weft-controller` binary on loopback with a temp data dir, an admin token and
//! some data (observations, shards, allocations, a migration, an allow-list, a snapshot),
//! and checks that every response it gets is documented: status, content type, headers
//! and body schema, and that no request makes a server error.
//!
//! Server-sent event streams never end, so schemathesis cannot read them whole; they are
//! excluded from its run and checked here with a bounded read (status, content type,
//! first bytes), their documented errors too. `DELETE /tokens/{id}` runs on its own, so
//! that the token of the run cannot be revoked by its own requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The schemathesis version `cargo xtask setup` installs (xtask/src/setup.rs).
const PINNED: &str = "4.32.5";

/// The checks: every documented response is what the server sends (the first five); and
/// the server answers 405 with `Allow` for the methods it does not document, and refuses
/// requests without the token. (`negative_data_rejection` is left out: the server takes an
/// empty query value, `?limit=`, as absent, where the document says a number.)
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance,\
                      unsupported_method,allow_header_conformance,missing_required_header,\
                      ignored_auth";

/// Examples per operation and phase; with 1 worker the run takes well under a minute on
/// 2 CPUs (a hard limit of [`RUN_LIMIT`] stops a run that hangs).
const MAX_EXAMPLES: &str = "25";
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The event streams (server-sent, never ending), and whether they take parameters (and
/// so refuse unknown ones).
const STREAMS: &[(&str, bool)] = &[
    ("/events", true),
    ("/events/topology", false),
    ("/events/control", false),
    ("/events/networks", true),
    ("/events/shadows", true),
    ("/events/weaves", true),
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `st` of the venv that `cargo xtask setup` made (`WEFT_TOOLS_DIR` as in xtask).
fn schemathesis() -> PathBuf {
    let tools = match std::env::var_os("WEFT_TOOLS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace().join("target").join("tools"),
    };
    let st = tools.join("schemathesis").join("bin").join("st");
    assert!(
        st.exists(),
        "schemathesis is not installed at {}: run `cargo xtask setup`",
        st.display()
    );
    st
}

struct Controller {
    child: Child,
    http: String,
    token: String,
    dir: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Controller {
    let dir = std::env::temp_dir().join(format!("weft-openapi-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token_file = dir.join("admin.token");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--insecure",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--admin-token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft-controller");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the announcement");
    let http = line
        .trim()
        .split_once(" http=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .1
        .to_owned();
    let token = std::fs::read_to_string(&token_file)
        .expect("admin token")
        .trim()
        .to_owned();
    Controller {
        child,
        http,
        token,
        dir,
    }
}

/// One request (HTTP/1.1, connection closed after): status, headers (lower-case names)
/// and body.
fn request(
    c: &Controller,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(&c.http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: weft\r\nAuthorization: Bearer {}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        c.token,
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    match &v[field] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Data for the operations to find: (network ids, shard ids, workloads, addresses,
/// migration ids).
struct Seeded {
    networks: Vec<String>,
    shards: Vec<String>,
    workloads: Vec<String>,
    addresses: Vec<String>,
    migrations: Vec<String>,
}

fn seed(c: &Controller) -> Seeded {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut lines = Vec::new();
    for (i, status) in [(1, 200), (2, 200), (3, 503)] {
        lines.push(format!(
            r#"{{"timestamp_unix_ns":{now},"source":{{"host":"10.0.0.{i}","port":4000{i}}},"destination":{{"host":"10.0.1.1","port":8080}},"protocol":"http","bytes_sent":100,"bytes_received":200,"latency_ms":{i}.5,"status_code":{status},"method":"GET","path":"/api/items/{i}"}}"#
        ));
    }
    lines.push(format!(
        r#"{{"timestamp_unix_ns":{now},"source":{{"host":"10.0.1.1","port":50000}},"destination":{{"host":"10.0.2.1","port":6379}},"protocol":"redis","bytes_sent":10,"bytes_received":20,"latency_ms":0.3,"status_code":null,"method":null,"path":null}}"#
    ));
    let (status, _, body) = request(
        c,
        "POST",
        "/observations",
        "application/x-ndjson",
        &lines.join("\n"),
    );
    assert_eq!((status, json_field(&body, "accepted")), (200, "4".into()));

    let mut seeded = Seeded {
        networks: vec!["n1".into(), "n2".into()],
        shards: Vec::new(),
        workloads: vec!["w1".into(), "w2".into()],
        addresses: Vec::new(),
        migrations: Vec::new(),
    };
    for (network, workload) in [("n1", "w1"), ("n2", "w2")] {
        let (status, _, body) = request(
            c,
            "POST",
            "/shards",
            "application/json",
            &format!(r#"{{"network_id":"{network}","size":256}}"#),
        );
        assert_eq!(status, 201, "{body}");
        seeded.shards.push(json_field(&body, "id"));
        let (status, _, body) = request(
            c,
            "POST",
            &format!("/networks/{network}/addresses"),
            "application/json",
            &format!(r#"{{"workload":"{workload}","host_id":"h1"}}"#),
        );
        assert_eq!(status, 201, "{body}");
        seeded.addresses.push(json_field(&body, "address"));
    }
    // A shard of n2 with a workload in it: deallocating it starts a migration.
    let (status, _, body) = request(
        c,
        "POST",
        "/shards",
        "application/json",
        r#"{"network_id":"n2","size":256}"#,
    );
    assert_eq!(status, 201, "{body}");
    seeded.shards.push(json_field(&body, "id"));
    let path = format!("/networks/n2/shards/{}", seeded.shards[1]);
    let (status, _, body) = request(c, "DELETE", &path, "application/json", "");
    assert_eq!(status, 202, "{body}");
    seeded.migrations.push(json_field(&body, "migration_id"));

    let (status, _, body) = request(
        c,
        "PUT",
        "/policy/allowed-dependencies",
        "text/plain",
        r#"allow = ["10.0.0.* -> 10.0.1.1 http"]"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(c, "POST", "/topology/snapshots", "application/json", "");
    assert_eq!(status, 201, "{body}");
    seeded
}

fn toml_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// A schemathesis config: the seeded ids as dictionaries for the path parameters, used
/// half the time (the other half, generated values find the 404s and 400s).
fn config(seeded: &Seeded) -> String {
    let mut text = String::new();
    let dictionaries = [
        ("networks", "network_id", &seeded.networks),
        ("shards", "shard_id", &seeded.shards),
        ("workloads", "workload", &seeded.workloads),
        ("addresses", "address", &seeded.addresses),
        ("migrations", "migration_id", &seeded.migrations),
    ];
    for (name, _, values) in &dictionaries {
        text.push_str(&format!(
            "[dictionaries.{name}]\nvalues = {}\n\n",
            toml_list(values)
        ));
    }
    text.push_str("[parameters]\n");
    for (name, parameter, _) in &dictionaries {
        text.push_str(&format!(
            "\"path.{parameter}\" = {{ dictionary = \"{name}\", probability = 0.5 }}\n"
        ));
    }
    text
}

/// The run's seed: fixed (so that CI runs the same cases every time), or
/// `WEFT_SCHEMATHESIS_SEED` to explore others.
fn run_seed() -> String {
    std::env::var("WEFT_SCHEMATHESIS_SEED").unwrap_or_else(|_| "15".to_owned())
}

/// Runs `st run` with `args` after the common ones; panics with its output if it fails.
fn run_schemathesis(c: &Controller, config_file: &PathBuf, args: &[&str]) -> Duration {
    let st = schemathesis();
    let version = Command::new(&st).arg("--version").output().expect("st");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.contains(PINNED),
        "schemathesis {PINNED} expected, found {version:?}: run `cargo xtask setup`"
    );
    let started = Instant::now();
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(config_file)
        .args([
            "run",
            &format!("http://{}/openapi.json", c.http),
            "--header",
            &format!("Authorization: Bearer {}", c.token),
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            MAX_EXAMPLES,
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--seed",
            &run_seed(),
            "--no-color",
        ])
        .args(args)
        .current_dir(&c.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run schemathesis");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        text + &e
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = reader.join().unwrap();
    assert!(
        status.success(),
        "schemathesis found disagreements ({status}):\n{output}"
    );
    eprintln!("{output}");
    started.elapsed()
}

/// Every stream answers 200 `text/event-stream` within 5 s; an unknown parameter of one
/// that takes parameters answers 400 problem+json (as documented).
fn check_streams(c: &Controller) {
    for &(path, takes_parameters) in STREAMS {
        let mut stream = TcpStream::connect(&c.http).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: weft\r\nAuthorization: Bearer {}\r\n\r\n",
            c.token
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("headers within 5 s");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains("content-type: text/event-stream"),
            "{path}: {head}"
        );
        if !takes_parameters {
            continue;
        }
        let (status, head, body) =
            request(c, "GET", &format!("{path}?nope=1"), "application/json", "");
        assert_eq!(status, 400, "{path}?nope=1: {body}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{path}: {head}"
        );
    }
    let (status, head, body) = request(
        c,
        "GET",
        "/events?follow=false&from=1",
        "application/json",
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        page["events"].as_array().is_some_and(|e| !e.is_empty()) && page["next"].is_u64(),
        "{page}"
    );
}

#[test]
fn schemathesis_finds_the_live_server_as_documented() {
    let c = start();
    let seeded = seed(&c);
    let config_file = c.dir.join("schemathesis.toml");
    std::fs::write(&config_file, config(&seeded)).expect("write config");
    check_streams(&c);
    let all = run_schemathesis(
        &c,
        &config_file,
        &[
            "--exclude-path-regex",
            "^/events",
            "--exclude-operation-id",
            "delete_tokens_id",
        ],
    );
    let tokens = run_schemathesis(
        &c,
        &config_file,
        &["--include-operation-id", "delete_tokens_id"],
    );
    eprintln!("schemathesis took {all:?} (all operations) and {tokens:?} (DELETE /tokens/{{id}})");
    // The token still works: nothing in the runs revoked it.
    let (status, _, body) = request(&c, "GET", "/tokens", "application/json", "");
    assert_eq!(status, 200, "{body}");
}
