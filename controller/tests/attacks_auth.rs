//! Trust boundaries of the running `weft-controller` (mutual TLS, tokens), each attacked
//! over real sockets; every attack is refused and changes nothing (issue 10, findings 1-3):
//!
//! 1. changing state without credentials, or with a token whose role is too low (REST and
//!    gRPC): 401 / 403, UNAUTHENTICATED / PERMISSION_DENIED;
//! 2. a report for a host forged by a caller whose certificate names another host, or that
//!    has none: refused, the host's applied generation is unchanged;
//! 3. registering as an existing host from another identity: refused; a certificate of
//!    another CA does not even get through the handshake.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use weft_pki::{Kind, Pem, issue, new_ca, write};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_control_service_client::AgentControlServiceClient;
use weft_proto::v1::agent_service_client::AgentServiceClient;
use weft_proto::v1::shard_service_client::ShardServiceClient;

struct Controller {
    child: Child,
    grpc: String,
    http: String,
    admin: String,
    dir: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, the controller's certificate for 127.0.0.1, agent certificates for hv1 and hv2,
/// and an hv1 certificate of another CA; then the controller with mutual TLS.
fn start() -> Controller {
    start_with(&[])
}

/// As [`start`], with more flags.
fn start_with(extra: &[&str]) -> Controller {
    let dir = std::env::temp_dir().join(format!(
        "weft-attacks-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let ca = new_ca("test CA", 1).unwrap();
    write(&dir, "ca", &ca, false).unwrap();
    let server = issue(
        &ca,
        &Kind::Controller {
            names: vec!["127.0.0.1".into()],
        },
        1,
    )
    .unwrap();
    write(&dir, "controller", &server, false).unwrap();
    for host in ["hv1", "hv2"] {
        let pem = issue(
            &ca,
            &Kind::Agent {
                host_id: host.into(),
            },
            1,
        )
        .unwrap();
        write(&dir, &format!("agent-{host}"), &pem, false).unwrap();
    }
    let rogue = new_ca("rogue CA", 1).unwrap();
    let forged = issue(
        &rogue,
        &Kind::Agent {
            host_id: "hv1".into(),
        },
        1,
    )
    .unwrap();
    write(&dir, "rogue-hv1", &forged, false).unwrap();

    let data = dir.join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-controller"))
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--tls-cert")
        .arg(dir.join("controller.pem"))
        .arg("--tls-key")
        .arg(dir.join("controller.key"))
        .arg("--client-ca")
        .arg(dir.join("ca.pem"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn weft-controller");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let rest = line
        .trim()
        .strip_prefix("weft-controller listening grpc=")
        .unwrap_or_else(|| panic!("{line:?}"));
    let (grpc, http) = rest.split_once(" http=").unwrap();
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    Controller {
        child,
        grpc: grpc.to_owned(),
        http: http.to_owned(),
        admin,
        dir,
    }
}

/// One HTTP/1.1 request (Connection: close) over TLS trusting the test CA: status, the
/// headers (lower-case), the body.
fn http(
    c: &Controller,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, Value) {
    https_via(c, &c.http, method, path, token, body)
}

/// The TLS configuration of a client that trusts the test CA.
fn tls_client(c: &Controller) -> Arc<rustls::ClientConfig> {
    Arc::new(weft_pki::https_client_config(&pem(&c.dir, "ca").cert).unwrap())
}

/// Everything readable from `r` until the peer closes (a close without TLS close_notify
/// ends it too).
fn read_all(r: &mut impl Read) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// As [`http`], connecting to `addr` (the controller or a relay in front of it).
fn https_via(
    c: &Controller,
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, Value) {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(tls_client(c), name).unwrap();
    let mut s = rustls::StreamOwned::new(connection, tcp);
    exchange(&mut s, method, path, token, body)
}

/// Writes one request on `s` and parses the answer.
fn exchange(
    s: &mut (impl Read + Write),
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, String, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    let text = read_all(s);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        head.to_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

fn pem(dir: &Path, name: &str) -> Pem {
    weft_pki::read(dir, name).unwrap()
}

/// A gRPC channel over TLS, with the client certificate `identity` (a file stem) if given.
async fn channel(
    c: &Controller,
    identity: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pem(&c.dir, "ca").cert))
        .domain_name("127.0.0.1");
    if let Some(name) = identity {
        let p = pem(&c.dir, name);
        tls = tls.identity(Identity::from_pem(p.cert, p.key));
    }
    Endpoint::from_shared(format!("https://{}", c.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn register(host: &str) -> wire::RegisterRequest {
    wire::RegisterRequest {
        host_id: host.into(),
        agent_instance: "00000000000000a1".into(),
        workloads: vec![],
        agent_version: "test".into(),
        underlay_address: String::new(),
    }
}

#[tokio::test]
async fn without_the_right_token_nothing_changes_over_rest_or_grpc() {
    let c = start();
    let admin = c.admin.clone();
    // A network with one workload address, made with the admin token.
    let (s, _, shard) = http(
        &c,
        "POST",
        "/shards",
        Some(&admin),
        Some(&json!({"prefix_len": 28, "network_id": "blue"})),
    );
    assert_eq!(s, 201, "{shard}");
    let (s, _, addr) = http(
        &c,
        "POST",
        "/networks/blue/addresses",
        Some(&admin),
        Some(&json!({"workload": "web", "host_id": "hv1"})),
    );
    assert_eq!(s, 201, "{addr}");
    let (s, _, read) = http(
        &c,
        "POST",
        "/tokens",
        Some(&admin),
        Some(&json!({"name": "dashboards", "role": "read"})),
    );
    assert_eq!(s, 201, "{read}");
    let read = read["token"].as_str().unwrap().to_owned();
    let (_, _, before) = http(
        &c,
        "GET",
        "/networks/blue/workloads/web/addresses",
        Some(&read),
        None,
    );

    // Finding 1 over REST: re-addressing a live workload without credentials, with a
    // token that is not one, with a token of the wrong role.
    let release = "/networks/blue/workloads/web/addresses";
    let (s, head, body) = http(&c, "DELETE", release, None, None);
    assert_eq!(s, 401, "{body}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let last = if admin.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &admin[..admin.len() - 1]);
    assert_eq!(http(&c, "DELETE", release, Some(&forged), None).0, 401);
    let (s, _, body) = http(&c, "DELETE", release, Some(&read), None);
    assert_eq!(s, 403, "{body}");
    assert_eq!(body["detail"], "this request needs the operate role");
    // Other writes and admin-only routes.
    assert_eq!(
        http(&c, "POST", "/observations", None, Some(&json!([]))).0,
        401
    );
    assert_eq!(
        http(
            &c,
            "PUT",
            "/policy/allowed-dependencies",
            Some(&read),
            Some(&json!({}))
        )
        .0,
        403
    );
    assert_eq!(
        http(
            &c,
            "POST",
            "/tokens",
            Some(&read),
            Some(&json!({"name": "x", "role": "admin"}))
        )
        .0,
        403
    );
    assert_eq!(http(&c, "GET", "/tokens", Some(&read), None).0, 403);
    assert_eq!(http(&c, "GET", "/topology", None, None).0, 401);
    assert_eq!(
        http(&c, "GET", "/metrics", None, None).0,
        401,
        "/metrics is closed unless --metrics-open"
    );
    assert_eq!(http(&c, "GET", "/healthz", None, None).0, 200);
    // Nothing changed.
    let (s, _, after) = http(
        &c,
        "GET",
        "/networks/blue/workloads/web/addresses",
        Some(&read),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(after, before);
    let (_, _, tokens) = http(&c, "GET", "/tokens", Some(&admin), None);
    assert_eq!(
        tokens["tokens"].as_array().map(Vec::len),
        Some(2),
        "{tokens}"
    );

    // Finding 1 over gRPC.
    let ch = channel(&c, None)
        .await
        .expect("clients connect without a certificate");
    let mut shards = ShardServiceClient::new(ch);
    let allocate = || wire::AllocateAddressRequest {
        network_id: "blue".into(),
        workload: "db".into(),
        host_id: "hv1".into(),
        family: String::new(),
    };
    let e = shards.allocate_address(allocate()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = shards
        .allocate_address(with_token(allocate(), &read))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let listed = shards
        .list_shards(with_token(wire::ListShardsRequest::default(), &read))
        .await
        .expect("read may list");
    assert_eq!(listed.get_ref().shards.len(), 1);
    let (_, _, db) = http(
        &c,
        "GET",
        "/networks/blue/workloads/db/addresses",
        Some(&read),
        None,
    );
    assert_eq!(
        db["addresses"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{db}"
    );
    // Revoked tokens stop working at once.
    let id = tokens["tokens"][1]["id"].as_str().unwrap();
    assert_eq!(
        http(&c, "DELETE", &format!("/tokens/{id}"), Some(&admin), None).0,
        200
    );
    assert_eq!(http(&c, "GET", "/topology", Some(&read), None).0, 401);
    let (_, _, metrics) = http(&c, "GET", "/metrics", Some(&admin), None);
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.lines().any(
            |l| l.starts_with("weft_controller_requests_forbidden_total ") && !l.ends_with(" 0")
        ),
        "{text}"
    );
}

#[tokio::test]
async fn an_agent_speaks_only_for_the_host_its_certificate_names() {
    let c = start();
    let hv1 = channel(&c, Some("agent-hv1")).await.unwrap();
    let hv2 = channel(&c, Some("agent-hv2")).await.unwrap();
    let anonymous = channel(&c, None).await.unwrap();

    // The real hv1 registers and watches its desired state.
    AgentServiceClient::new(hv1.clone())
        .register(register("hv1"))
        .await
        .expect("hv1 registers");
    let mut control = AgentControlServiceClient::new(hv1.clone());
    let mut stream = control
        .watch_desired_state(wire::WatchDesiredStateRequest {
            host_id: "hv1".into(),
            agent_instance: "00000000000000a1".into(),
            kinds: vec!["workload-addresses".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();

    // Finding 3: hv2's certificate, or none, cannot register as hv1.
    let e = AgentServiceClient::new(hv2.clone())
        .register(register("hv1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("\"hv2\""), "{e}");
    let e = AgentServiceClient::new(anonymous.clone())
        .register(register("hv1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // ... nor push flows or watch hv1's desired state.
    let batch = wire::FlowBatch {
        host_id: "hv1".into(),
        agent_instance: "00000000000000a1".into(),
        sequence: 1,
        records: vec![],
        dropped_records_total: 0,
    };
    let e = AgentServiceClient::new(hv2.clone())
        .push_flows(batch)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = AgentControlServiceClient::new(hv2.clone())
        .watch_desired_state(wire::WatchDesiredStateRequest {
            host_id: "hv1".into(),
            agent_instance: "x".into(),
            kinds: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    // Finding 2: a forged report with a huge generation, from hv2 or anonymous.
    let forged = wire::ObservedState {
        host_id: "hv1".into(),
        agent_instance: "00000000000000a1".into(),
        applied_generation: u64::MAX,
        controller_epoch: first.controller_epoch,
        resources: vec![],
        drift: vec![],
    };
    for ch in [&hv2, &anonymous] {
        let e = AgentControlServiceClient::new(ch.clone())
            .report_observed(forged.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
            "{e}"
        );
    }
    let (_, _, status) = http(&c, "GET", "/hosts/hv1/status", Some(&c.admin), None);
    assert_ne!(status["applied_generation"], json!(u64::MAX), "{status}");
    // The real agent's own report still goes through.
    let mut own = forged.clone();
    own.applied_generation = first.generation;
    control
        .report_observed(own)
        .await
        .expect("hv1 reports for itself");
    let (_, _, status) = http(&c, "GET", "/hosts/hv1/status", Some(&c.admin), None);
    assert_eq!(
        status["applied_generation"],
        json!(first.generation),
        "{status}"
    );

    // A certificate of another CA naming hv1 does not get through the TLS handshake.
    let rogue = channel(&c, Some("rogue-hv1")).await;
    let refused = match rogue {
        Err(_) => true,
        Ok(ch) => AgentServiceClient::new(ch)
            .register(register("hv1"))
            .await
            .is_err(),
    };
    assert!(refused, "a certificate of another CA was accepted");
}

/// A relay on 127.0.0.1 in front of `target` for one connection; everything that crossed
/// it (both directions) ends up in the returned buffer.
fn relay(target: &str) -> (String, Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let target = target.to_owned();
    let log = seen.clone();
    let handle = std::thread::spawn(move || {
        let (client, _) = listener.accept().unwrap();
        let server = TcpStream::connect(&target).unwrap();
        let pump = |mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<u8>>>| {
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        let up = pump(
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
            log.clone(),
        );
        let down = pump(server, client, log);
        let _ = up.join();
        let _ = down.join();
    });
    (addr, seen, handle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The REST listener is HTTPS with the controller's certificate: a token sent over it is
/// not in the bytes on the wire, plain HTTP gets a 400 saying to use https (and no API
/// answer), a client that does not trust the CA gets no connection.
#[test]
fn rest_is_https_and_the_token_never_crosses_in_clear() {
    let c = start();
    let secret = c.admin.rsplit('_').next().unwrap().to_owned();
    assert!(secret.len() >= 32, "{}", c.admin);

    // HTTPS with the CA and the admin token, through a relay that records the bytes.
    let (addr, seen, done) = relay(&c.http);
    let (status, head, tokens) = https_via(&c, &addr, "GET", "/tokens", Some(&c.admin), None);
    assert_eq!(status, 200, "{head} {tokens}");
    assert!(tokens.to_string().contains("admin"), "{tokens}");
    done.join().unwrap();
    let wire = seen.lock().unwrap().clone();
    assert!(wire.len() > 500, "{} bytes crossed", wire.len());
    assert_eq!(wire[0], 0x16, "the first byte is a TLS handshake record");
    for clear in [
        c.admin.as_bytes(),
        secret.as_bytes(),
        b"Bearer",
        b"GET /tokens",
        b"HTTP/1.1",
    ] {
        assert!(
            !contains(&wire, clear),
            "{:?} crossed in clear",
            String::from_utf8_lossy(clear)
        );
    }

    // Plain HTTP on the HTTPS port: 400, naming the way; no API answer.
    let mut plain = TcpStream::connect(&c.http).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (status, head, problem) = exchange(&mut plain, "GET", "/healthz", None, None);
    assert_eq!(status, 400, "{head} {problem}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("this listener speaks HTTPS: use https://"),
        "{problem}"
    );

    // A client trusting another CA: the handshake fails, nothing is answered.
    let rogue = Arc::new(weft_pki::https_client_config(&pem(&c.dir, "rogue-hv1").cert).unwrap());
    let tcp = TcpStream::connect(&c.http).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = rustls::StreamOwned::new(rustls::ClientConnection::new(rogue, name).unwrap(), tcp);
    let error = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .and_then(|()| s.flush());
    let error = match error {
        Err(e) => e,
        Ok(()) => s
            .read(&mut [0u8; 64])
            .expect_err("an answer to an untrusting client"),
    };
    assert!(
        error.to_string().contains("UnknownIssuer")
            || error.to_string().contains("invalid peer certificate"),
        "{error}"
    );
}

/// A TLS handshake holds a connection slot and is closed after
/// --http-tls-handshake-timeout: clients that connect and say nothing fill
/// --http-max-connections only for that long, and count in the limit's hits.
#[test]
fn slow_tls_handshakes_take_a_connection_slot_and_time_out() {
    let c = start_with(&[
        "--http-max-connections",
        "2",
        "--http-tls-handshake-timeout",
        "1500ms",
        "--metrics-open",
    ]);
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&c.http).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Both slots are taken: a third connection is closed without an answer.
    let tcp = TcpStream::connect(&c.http).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connection = rustls::ClientConnection::new(tls_client(&c), name).unwrap();
    let mut s = rustls::StreamOwned::new(connection, tcp);
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let _ = s.flush();
    assert_eq!(
        read_all(&mut s),
        "",
        "a connection beyond the limit was served"
    );
    // The silent ones are closed by the controller after the handshake timeout.
    let started = Instant::now();
    for mut conn in silent {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = conn.read(&mut [0u8; 16]).unwrap_or(0);
        assert_eq!(n, 0, "a silent connection got bytes");
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "silent handshakes closed after {waited:?}"
    );
    // Room again.
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, _) = http(&c, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    let (_, _, metrics) = http(&c, "GET", "/metrics", None, None);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let hits = |limit: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "weft_controller_limit_hits_total{{limit=\"{limit}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {limit} in {metrics}"))
    };
    assert_eq!(hits("http_tls_handshake_timeout"), 2);
    assert!(hits("http_connections") >= 1);
}

/// A token made with `expires_in` works until then, and is then refused 401 with a
/// problem saying only that it expired (REST and gRPC); the list shows the expiry; the
/// first admin token has none.
#[tokio::test]
async fn an_expired_token_is_refused_401_saying_it_expired() {
    let c = start();
    let (status, _, made) = http(
        &c,
        "POST",
        "/tokens",
        Some(&c.admin),
        Some(&json!({"name": "short", "role": "read", "expires_in": "1s"})),
    );
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(made["expires"].is_string(), "{made}");
    let (status, _, _) = http(&c, "GET", "/shards", Some(&token), None);
    assert_eq!(status, 200);
    for bad in [
        json!("soon"),
        json!(30),
        json!("0s"),
        json!("99999999999999999d"),
    ] {
        let (status, _, problem) = http(
            &c,
            "POST",
            "/tokens",
            Some(&c.admin),
            Some(&json!({"name": "bad", "role": "read", "expires_in": bad})),
        );
        assert_eq!(status, 400, "{bad}: {problem}");
        assert_eq!(problem["parameter"], "expires_in", "{problem}");
    }

    std::thread::sleep(Duration::from_millis(1_100));
    let (status, head, problem) = http(&c, "GET", "/shards", Some(&token), None);
    assert_eq!(status, 401, "{problem}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(
        problem["detail"], "the bearer token has expired",
        "{problem}"
    );
    assert_eq!(
        problem.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["detail", "status", "title", "type"],
        "{problem}"
    );
    let mut grpc = ShardServiceClient::new(channel(&c, None).await.unwrap());
    let refused = grpc
        .list_shards(with_token(wire::ListShardsRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(refused.message(), "the bearer token has expired");

    let (_, _, list) = http(&c, "GET", "/tokens", Some(&c.admin), None);
    let tokens = list["tokens"].as_array().unwrap();
    let short = tokens.iter().find(|t| t["name"] == "short").unwrap();
    assert_eq!(short["expired"], true, "{short}");
    let admin = tokens.iter().find(|t| t["role"] == "admin").unwrap();
    assert_eq!(admin["expires"], Value::Null, "{admin}");
    assert_eq!(admin["expired"], false, "{admin}");
}
