//! `weft topology show` against a fake controller on a local socket.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};

use common::fake_controller;

fn weft(args: &[&str], controller: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_CONTROLLER", controller)
        .output()
        .expect("run weft")
}

#[test]
fn ascii_format_prints_the_controllers_text_map() {
    let (addr, server) = fake_controller("200 OK", "text/plain", "APPLICATION TOPOLOGY MAP\n");
    let output = weft(
        &["topology", "show", "--format", "ascii"],
        &format!("http://{addr}"),
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "APPLICATION TOPOLOGY MAP\n"
    );
    assert_eq!(server.join().expect("server"), "GET /topology.txt HTTP/1.1");
}

#[test]
fn json_format_fetches_topology_and_pretty_prints_it() {
    let (addr, server) = fake_controller(
        "200 OK",
        "application/json",
        r#"{"services":[],"dependencies":[]}"#,
    );
    let output = weft(
        &[
            "topology",
            "show",
            "--format",
            "json",
            "--controller",
            &format!("http://{addr}/"),
        ],
        "http://127.0.0.1:1",
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("\n  \"services\": []"), "{stdout}");
    assert_eq!(server.join().expect("server"), "GET /topology HTTP/1.1");
}

#[test]
fn dot_format_fetches_the_dot_path() {
    let (addr, server) = fake_controller(
        "200 OK",
        "text/vnd.graphviz",
        "digraph weft_topology {\n}\n",
    );
    let output = weft(
        &["topology", "show", "--format", "dot"],
        &format!("http://{addr}"),
    );
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("digraph"));
    assert_eq!(server.join().expect("server"), "GET /topology.dot HTTP/1.1");
}

#[test]
fn controller_error_prints_the_problem_detail_and_fails() {
    let (addr, _server) = fake_controller(
        "500 Internal Server Error",
        "application/problem+json",
        r#"{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"internal error: boom"}"#,
    );
    let output = weft(&["topology", "show"], &format!("http://{addr}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("answered 500"), "{stderr}");
    assert!(stderr.contains("internal error: boom"), "{stderr}");
}

#[test]
fn unreachable_controller_is_a_clear_error() {
    // Bind then drop: the port is very likely closed afterwards.
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address");
    let output = weft(&["topology", "show"], &format!("http://{addr}"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach the controller at http://{addr}")),
        "{stderr}"
    );
}
