//! A `weft-controller` process for the gRPC tests (`--insecure`, an admin token in a
//! file, no store): start it, call it over plain HTTP/1.1 or gRPC with a token. Dropped:
//! killed, its token file removed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tonic::transport::Channel;

pub struct Controller {
    child: Child,
    pub grpc: String,
    pub http: String,
    pub admin: String,
    token_file: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// Starts `weft-controller --insecure` on loopback with a fresh admin token; `name` goes
/// into the token file's name.
pub fn start(name: &str, extra: &[&str]) -> Controller {
    let token_file = std::env::temp_dir().join(format!(
        "weft-{name}-{}-{}.token",
        std::process::id(),
        rand::random::<u32>()
    ));
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
        .arg(&token_file)
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
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    Controller {
        child,
        grpc: grpc.to_owned(),
        http: http.to_owned(),
        admin,
        token_file,
    }
}

/// One plain HTTP/1.1 request: status and JSON body.
pub fn http(c: &Controller, method: &str, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(&c.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    )
}

pub async fn channel(c: &Controller) -> Channel {
    Channel::from_shared(format!("http://{}", c.grpc))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}
