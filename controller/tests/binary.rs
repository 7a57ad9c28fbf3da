//! The `weft-controller` binary: announces its addresses, serves, stops on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn binary_announces_both_listeners_serves_http_and_exits_on_sigterm() {
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
            "",
        ])
        .arg("--admin-token-file")
        .arg(std::env::temp_dir().join(format!("weft-binary-test-{}.token", std::process::id())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weft-controller");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the announcement");
    let rest = line
        .trim()
        .strip_prefix("weft-controller listening grpc=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let (grpc, http) = rest.split_once(" http=").expect("http address");
    assert!(
        grpc.starts_with("127.0.0.1:") && !grpc.ends_with(":0"),
        "{grpc}"
    );

    let mut stream = TcpStream::connect(http).expect("connect to HTTP");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "exit status {exit}");
}

#[test]
fn a_bad_classifier_rules_file_stops_the_controller_with_the_line() {
    let dir = std::env::temp_dir().join(format!("weft-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, "[[rule]]\nmatch_port = 5432\ntype = \"toaster\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--insecure",
            "--data-dir",
            "",
        ])
        .arg("--classifier-rules")
        .arg(&rules)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rules.toml") && stderr.contains("line 3"),
        "{stderr}"
    );
}
