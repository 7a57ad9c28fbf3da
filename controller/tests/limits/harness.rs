//! A `weft-controller` process for the limit tests, and a small HTTP/1.1 client over a
//! plain socket (so that what is tested is the binary's own answer, byte for byte).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The admin token every harness controller adopts from its token file.
pub const TOKEN: &str =
    "weft_00112233445566ff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The controller, killed on drop.
pub struct Controller {
    child: Child,
    pub http: String,
    pub grpc: String,
}

impl Controller {
    /// Starts `weft-controller` on ephemeral loopback ports with an in-memory store and
    /// `args` after the defaults.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    /// Same, with extra environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft-controller"));
        command.args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ]);
        if !args.contains(&"--data-dir") {
            command.args(["--data-dir", ""]);
        }
        // Plain gRPC (the limits are what is tested here), and a known admin token.
        let token_file = std::env::temp_dir().join(format!(
            "weft-limits-{}-{}.token",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::write(&token_file, TOKEN).expect("write the token file");
        command
            .arg("--insecure")
            .arg("--admin-token-file")
            .arg(&token_file);
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
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
        Self {
            http: http.to_owned(),
            grpc: grpc.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc status of the controller");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Response {
        self.request("POST", path, &[("content-type", "application/json")], body)
    }

    /// One request on a fresh connection (`Connection: close`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.request_as(TOKEN, method, path, headers, body)
    }

    /// As [`Controller::request`], with the bearer token `token`.
    pub fn request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut stream = TcpStream::connect(&self.http).expect("connect to HTTP");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send head");
        stream.write_all(body).expect("send body");
        read_response(&mut stream)
    }

    /// The sum of the samples of `name` whose labels contain every `label` (`k="v"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.get("/metrics").text();
        metric_in(&text, name, labels)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_in(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads a whole response (the server closes the connection); undoes chunking.
pub fn read_response(stream: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(500)])
        )
    })
}

pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = unchunk(&body);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        data = &data[end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts a problem+json refusal with `status`; returns the problem.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{self:?}"
        );
        let problem = self.json();
        assert_eq!(problem["status"], status, "{problem}");
        problem
    }

    /// Asserts a `Retry-After` of at least one second.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .and_then(|v| v.parse().ok())
            .filter(|s| *s >= 1)
            .unwrap_or_else(|| panic!("no Retry-After in {self:?}"))
    }
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "weft-limits-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake Graphviz `dot` in a directory to put first on PATH: sleeps `seconds`, appends a
/// line to `runs` in the same directory, prints a tiny SVG.
pub fn fake_dot(seconds: f64) -> (TempDir, String) {
    let dir = TempDir::new("dot");
    let script = dir.0.join("dot");
    let runs = dir.0.join("runs");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho run >> '{}'\nsleep {seconds}\necho '<svg xmlns=\"http://www.w3.org/2000/svg\"/>'\n",
            runs.display()
        ),
    )
    .expect("write the fake dot");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        dir.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (dir, path)
}

/// How many times the fake `dot` of `dir` ran.
pub fn dot_runs(dir: &TempDir) -> usize {
    std::fs::read_to_string(dir.0.join("runs"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// One observation as JSON: `source` calls `destination`:80 over HTTP at `timestamp_ns`.
pub fn observation(source: &str, destination: &str, timestamp_ns: u64) -> Value {
    serde_json::json!({
        "timestamp_unix_ns": timestamp_ns,
        "source": {"host": source, "port": 40000},
        "destination": {"host": destination, "port": 80},
        "protocol": "http",
        "bytes_sent": 100,
        "bytes_received": 200,
        "latency_ms": 1.5,
        "status_code": 200,
        "method": "GET",
        "path": "/",
    })
}

pub fn now_ns() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("ns")
}
