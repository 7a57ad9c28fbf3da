//! `weft topology` analytics subcommands against a fake controller on a local socket.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::fake_controller;

fn weft(args: &[&str], addr: SocketAddr) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_CONTROLLER", format!("http://{addr}"))
        .output()
        .expect("run weft")
}

#[test]
fn bottlenecks_ask_for_the_threshold_and_stat_and_print_each_slow_dependency() {
    let (addr, server) = fake_controller(
        "200 OK",
        "application/json",
        r#"{"threshold_ms":30.0,"stat":"p99","dependencies":[{"source":"api","target":"db","protocol":"postgres","transport":"tcp","port":5432,"requests":7,"errors":1,"latency_ms":{"avg":40.5,"p99":150.0}}]}"#,
    );
    let output = weft(
        &[
            "topology",
            "bottlenecks",
            "--threshold-ms",
            "30",
            "--stat",
            "p99",
            "--since",
            "15m",
        ],
        addr,
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("api -> db  postgres tcp/5432  reqs=7 errors=1 avg=40.50ms p99=150.00ms"),
        "{stdout}"
    );
    assert_eq!(
        server.join().expect("server"),
        "GET /analytics/bottlenecks?since=15m&threshold_ms=30&stat=p99 HTTP/1.1"
    );
}

#[test]
fn a_bad_parameter_fails_with_the_controllers_message() {
    let (addr, server) = fake_controller(
        "400 Bad Request",
        "application/problem+json",
        r#"{"type":"about:blank","title":"Bad Request","status":400,"detail":"query parameter `since`: `yesterday` is neither an RFC 3339 time nor a relative one such as 15m","parameter":"since"}"#,
    );
    let output = weft(&["topology", "deps", "api", "--since", "yesterday"], addr);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("query parameter `since`"), "{stderr}");
    assert_eq!(
        server.join().expect("server"),
        "GET /services/api/dependencies?since=yesterday&direction=both HTTP/1.1"
    );
}
