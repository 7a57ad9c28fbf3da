//! Every error the REST API sends is `application/problem+json` with type, title, status
//! and detail, the framework's own rejections included: each kind of bad request, sent to
//! the `weft-controller` binary over a real socket.

#[path = "limits/harness.rs"]
#[allow(dead_code)] // the harness serves other tests too
mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use harness::{Controller, Response, read_response};

/// Asserts a problem of `status` with the four members; returns its detail.
fn problem(response: &Response, status: u16) -> String {
    let p = response.problem(status);
    assert_eq!(p["type"], "about:blank", "{p}");
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
    let detail = p["detail"].as_str().unwrap_or_default().to_owned();
    assert!(!detail.is_empty(), "{p}");
    detail
}

fn controller() -> Controller {
    Controller::start(&[
        "--http-max-body",
        "1KiB",
        "--http-request-timeout",
        "2s",
        "--sse-max-subscribers",
        "1",
    ])
}

#[test]
fn a_path_segment_that_is_not_utf8_is_a_problem() {
    let c = controller();
    for path in [
        "/services/%FF/dependencies",
        "/shards/%C3%28",
        "/networks/%FF/workloads/w/addresses",
    ] {
        let detail = problem(&c.get(path), 400);
        assert!(detail.to_lowercase().contains("utf-8"), "{path}: {detail}");
    }
}

#[test]
fn a_body_that_is_not_utf8_is_a_problem() {
    let c = controller();
    for (method, path) in [
        ("POST", "/observations"),
        ("PUT", "/policy/allowed-dependencies"),
        ("POST", "/analytics/classification"),
    ] {
        let r = c.request(
            method,
            path,
            &[("content-type", "text/plain")],
            b"\xff\xfe[]",
        );
        let detail = problem(&r, 400);
        assert!(detail.to_lowercase().contains("utf-8"), "{path}: {detail}");
    }
}

#[test]
fn json_syntax_and_data_errors_are_problems_naming_what_is_wrong() {
    let c = controller();
    let detail = problem(&c.post("/shards", br#"{"size":"#), 400);
    assert!(detail.contains("JSON"), "{detail}");
    let r = c.post("/tokens", br#"{"name":1,"role":"read"}"#);
    assert_eq!(problem(&r, 400), "field `name`: required, a string");
    let r = c.post("/shards", br#"{"size":3}"#);
    assert_eq!(r.problem(400)["parameter"], "size");
    let r = c.post("/weaves", br#"{"environment":7}"#);
    problem(&r, 400);
}

#[test]
fn a_wrong_content_type_is_a_problem() {
    let c = controller();
    // JSON declared, not JSON sent.
    let r = c.request(
        "POST",
        "/networks",
        &[("content-type", "application/json")],
        b"network: x",
    );
    problem(&r, 400);
    // A TDL declared (text), JSON sent: not a valid TDL.
    let r = c.request(
        "POST",
        "/networks",
        &[("content-type", "text/plain")],
        br#"{"tdl":"x"}"#,
    );
    problem(&r, 422);
}

#[test]
fn bodies_over_the_limit_are_413_problems_declared_or_chunked() {
    let c = controller();
    let big = vec![b' '; 4096];
    let detail = problem(&c.post("/observations", &big), 413);
    assert!(detail.contains("--http-max-body"), "{detail}");
    // Chunked: no Content-Length, the limit is found while reading.
    let mut stream = TcpStream::connect(&c.http).unwrap();
    stream
        .write_all(
            format!(
                "POST /observations HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\
                 connection: close\r\ntransfer-encoding: chunked\r\n\r\n1000\r\n",
                harness::TOKEN
            )
            .as_bytes(),
        )
        .unwrap();
    stream.write_all(&big).unwrap();
    stream.write_all(b"\r\n0\r\n\r\n").unwrap();
    problem(&read_response(&mut stream), 413);
}

#[test]
fn a_body_that_does_not_arrive_is_a_408_problem() {
    let c = controller();
    let mut stream = TcpStream::connect(&c.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            format!(
                "POST /observations HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\
                 connection: close\r\ncontent-length: 100\r\n\r\n[",
                harness::TOKEN
            )
            .as_bytes(),
        )
        .unwrap();
    let detail = problem(&read_response(&mut stream), 408);
    assert!(detail.contains("--http-request-timeout"), "{detail}");
}

#[test]
fn unknown_paths_methods_and_parameters_are_problems() {
    let c = controller();
    problem(&c.get("/no/such/thing"), 404);
    problem(&c.request("DELETE", "/topology", &[], b""), 405);
    problem(&c.request("PATCH", "/shards", &[], b""), 405);
    let r = c.get("/topology?color=blue");
    assert_eq!(r.problem(400)["parameter"], "color");
    let r = c.get("/topology?since=%FF");
    assert_eq!(r.problem(400)["parameter"], "since");
    let r = c.request("DELETE", "/weaves/w/routes/http", &[], b"");
    assert_eq!(r.problem(400)["parameter"], "port");
    problem(&c.get("/shards/shard-404"), 404);
}

#[test]
fn auth_refusals_are_problems() {
    let c = controller();
    let r = c.request_as("weft_nope", "GET", "/topology", &[], b"");
    problem(&r, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"weft\""));
    let created = c.post("/tokens", br#"{"name":"reader","role":"read"}"#);
    assert_eq!(created.status, 201, "{}", created.text());
    let reader = created.json()["token"].as_str().unwrap().to_owned();
    let r = c.request_as(
        &reader,
        "POST",
        "/shards",
        &[("content-type", "application/json")],
        b"{}",
    );
    problem(&r, 403);
    // Any reader may read the API's document.
    let r = c.request_as(&reader, "GET", "/openapi.json", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["openapi"], "3.1.0");
}

#[test]
fn a_stream_over_its_subscriber_limit_is_a_503_problem_with_retry_after() {
    let c = controller();
    let mut first = TcpStream::connect(&c.http).unwrap();
    first
        .write_all(
            format!(
                "GET /events/topology HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {}\r\n\r\n",
                harness::TOKEN
            )
            .as_bytes(),
        )
        .unwrap();
    // The first holds the only slot once its headers came back.
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut first, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let r = c.get("/events/topology");
    problem(&r, 503);
    r.retry_after();
}
