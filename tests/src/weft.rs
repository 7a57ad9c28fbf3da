//! weft's own binaries in the lab: locating them, the agent's workloads file, the
//! controller in the root namespace and the agent in a hypervisor namespace.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::{Lab, Workload};
use crate::process::Child;
use crate::topology::Topology;

/// Controller and agent readiness bound.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The agent's metrics port (inside the hypervisor namespace).
pub const AGENT_METRICS_PORT: u16 = 9464;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The cargo target dir: `$CARGO_TARGET_DIR` (relative to the workspace root) or
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Path of a built binary of the workspace: debug profile, or the one `WEFT_LAB_PROFILE`
/// names (`release` for benchmarks).
pub fn binary(name: &str) -> Result<PathBuf> {
    let profile = std::env::var("WEFT_LAB_PROFILE").unwrap_or_else(|_| "debug".into());
    let p = target_dir().join(profile).join(name);
    if !p.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace` (or `cargo xtask build`) first",
            p.display()
        );
    }
    Ok(p)
}

/// A free TCP port on `ip` (bound and released; good enough for a lab that holds its
/// addresses alone).
pub fn free_port(ip: &str) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// The agent's workloads file (TOML), one `[[workload]]` table per workload.
pub fn workloads_toml(workloads: &[&Workload]) -> String {
    let mut s = String::new();
    for w in workloads {
        s.push_str("[[workload]]\n");
        s.push_str(&format!("name = {}\n", toml_str(&w.name)));
        s.push_str(&format!("interface = {}\n", toml_str(&w.host_if)));
        // Where the workload's own interface lives, so the agent can address it.
        s.push_str(&format!("netns = {}\n", toml_str(w.netns.name())));
        s.push_str("device = \"eth0\"\n");
        s.push_str(&format!(
            "addresses = [{}, {}]\n\n",
            toml_str(&w.ipv4),
            toml_str(&w.ipv6)
        ));
    }
    s
}

/// A TOML basic string.
pub fn toml_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The lab's certificates (`weft certs` into `<lab dir>/certs`): a CA made once per lab,
/// the controller's certificate for `grpc_ip`, and each agent's for its hypervisor.
pub fn lab_certs(lab: &Lab) -> PathBuf {
    lab.dir().join("certs")
}

/// Runs `weft certs ARGS` (the CLI is what a user runs).
fn weft_certs(args: &[&str]) -> Result<()> {
    let bin = binary("weft")?;
    let out = Command::new(&bin)
        .arg("certs")
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "weft certs {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The lab's certificate directory, with its CA made on first use (and its path as text).
fn ensure_ca(lab: &Lab) -> Result<(PathBuf, String)> {
    let dir = lab_certs(lab);
    let d = dir.to_string_lossy().into_owned();
    if !dir.join("ca.pem").is_file() {
        weft_certs(&["init", "--dir", &d, "--days", "2"])?;
    }
    Ok((dir, d))
}

/// Makes the lab's CA (once) and a controller certificate for the addresses `ips` (the
/// gRPC and the REST listener's), made again at every start.
pub fn ensure_controller_certs(lab: &Lab, ips: &[&str]) -> Result<PathBuf> {
    let (dir, d) = ensure_ca(lab)?;
    let mut args = vec!["issue", "controller"];
    for ip in ips {
        args.extend(["--san", ip]);
    }
    args.extend(["--dir", &d, "--days", "2", "--force"]);
    weft_certs(&args)?;
    Ok(dir)
}

/// The IP address of `host:port` (`[v6]:port` too).
fn ip_of(addr: &str) -> Result<&str> {
    addr.rsplit_once(':')
        .map(|(ip, _)| ip.trim_matches(['[', ']']))
        .with_context(|| format!("address {addr} without a port"))
}

/// An agent certificate for `host_id` signed by the lab's CA (made if missing).
pub fn ensure_agent_cert(lab: &Lab, host_id: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (dir, d) = ensure_ca(lab)?;
    let cert = dir.join(format!("agent-{host_id}.pem"));
    if !cert.is_file() {
        weft_certs(&[
            "issue",
            "agent",
            "--host-id",
            host_id,
            "--dir",
            &d,
            "--days",
            "2",
        ])?;
    }
    Ok((
        dir.join("ca.pem"),
        cert,
        dir.join(format!("agent-{host_id}.key")),
    ))
}

/// The controller, in the root namespace, gRPC on the lab's uplink address (mutual TLS
/// with the lab's certificates), REST over HTTPS with the same certificate and the admin
/// token it wrote at its first start.
pub struct Controller {
    pub child: Child,
    pub grpc_addr: String,
    pub http_addr: String,
    /// The admin token (`<data dir>/admin.token`).
    pub token: String,
    /// Whether gRPC and REST are plain text (`--insecure` among the extra flags).
    pub insecure: bool,
    /// The CA of the controller's certificate (none with `--insecure`).
    pub ca: Option<PathBuf>,
}

/// A controller started but not yet known to serve ([`Controller::spawn`]).
pub struct Starting {
    pub child: Child,
    grpc_addr: String,
    http_addr: String,
    data_dir: PathBuf,
    insecure: bool,
    ca: Option<PathBuf>,
}

impl Starting {
    /// Waits (up to `timeout`) for its `weft-controller listening` line.
    pub fn ready(self, timeout: Duration) -> Result<Controller> {
        self.announced("weft-controller listening", timeout)
    }

    /// Waits (up to `timeout`) for its `weft-controller following` line: a follower
    /// replica on etcd, serving beside the leader.
    pub fn following(self, timeout: Duration) -> Result<Controller> {
        self.announced("weft-controller following", timeout)
    }

    fn announced(mut self, line: &str, timeout: Duration) -> Result<Controller> {
        self.child.wait_for_line(&[line], timeout)?;
        let token_file = self.data_dir.join("admin.token");
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("the controller's admin token {}", token_file.display()))?
            .trim()
            .to_owned();
        Ok(Controller {
            child: self.child,
            grpc_addr: self.grpc_addr,
            http_addr: self.http_addr,
            token,
            insecure: self.insecure,
            ca: self.ca,
        })
    }

    /// Whether it announced that it serves.
    pub fn serving(&self) -> bool {
        self.child.output().contains("weft-controller listening")
    }
}

impl Controller {
    /// Starts `weft-controller` for `lab` on fresh ports and waits for its
    /// `weft-controller listening` line.
    pub fn start(lab: &Lab) -> Result<Controller> {
        let ip = lab.hypervisor().uplink_root_addr.clone();
        let grpc = format!("{ip}:{}", free_port(&ip)?);
        let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
        Self::start_on(lab, &grpc, &http)
    }

    /// Starts `weft-controller` on the given addresses (used to restart on the same ports).
    pub fn start_on(lab: &Lab, grpc_addr: &str, http_addr: &str) -> Result<Controller> {
        Self::start_with(lab, grpc_addr, http_addr, &[])
    }

    /// As [`Controller::start_on`], with extra flags. The controller keeps its store in
    /// the lab's directory, so a restart within the lab finds it and nothing outlives it.
    pub fn start_with(
        lab: &Lab,
        grpc_addr: &str,
        http_addr: &str,
        extra_args: &[&str],
    ) -> Result<Controller> {
        Self::spawn(lab, grpc_addr, http_addr, extra_args, "weft-controller")?.ready(START_TIMEOUT)
    }

    /// Starts `weft-controller` without waiting for it to serve (a standby on etcd serves
    /// only once it holds the writer's lease): [`Starting::ready`] waits. `name` names its
    /// log in the lab directory.
    pub fn spawn(
        lab: &Lab,
        grpc_addr: &str,
        http_addr: &str,
        extra_args: &[&str],
        name: &str,
    ) -> Result<Starting> {
        let bin = binary("weft-controller")?;
        let data_dir = lab.dir().join("controller-data");
        let mut c = Command::new(&bin);
        c.args(["--grpc-listen", grpc_addr, "--http-listen", http_addr]);
        c.arg("--data-dir").arg(&data_dir);
        let insecure = extra_args.contains(&"--insecure");
        let mut ca = None;
        if !insecure {
            let certs = ensure_controller_certs(lab, &[ip_of(grpc_addr)?, ip_of(http_addr)?])?;
            c.arg("--tls-cert").arg(certs.join("controller.pem"));
            c.arg("--tls-key").arg(certs.join("controller.key"));
            c.arg("--client-ca").arg(certs.join("ca.pem"));
            ca = Some(certs.join("ca.pem"));
        }
        c.args(extra_args);
        c.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let child = Child::spawn(c, lab.dir(), name)?;
        Ok(Starting {
            child,
            grpc_addr: grpc_addr.to_string(),
            http_addr: http_addr.to_string(),
            data_dir,
            insecure,
            ca,
        })
    }

    /// What the agent dials: `https://<grpc addr>` (or `http://` with `--insecure`).
    pub fn grpc_url(&self) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// `Bearer <admin token>`, for requests made outside these helpers.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The REST URL of `path`: `https://<http addr><path>` (`http://` with `--insecure`).
    pub fn http_url(&self, path: &str) -> String {
        let scheme = if self.insecure { "http" } else { "https" };
        format!("{scheme}://{}{path}", self.http_addr)
    }

    /// An HTTP client of the REST listener: trusts the lab's CA (HTTPS). Sends no token by
    /// itself ([`Controller::authorization`]).
    pub fn client(&self) -> Result<ureq::Agent> {
        let builder = ureq::AgentBuilder::new();
        let builder = match &self.ca {
            Some(ca) => {
                let pem = std::fs::read_to_string(ca)
                    .with_context(|| format!("the lab's CA {}", ca.display()))?;
                let config = weft_pki::https_client_config(&pem)
                    .with_context(|| format!("the lab's CA {}", ca.display()))?;
                builder.tls_config(std::sync::Arc::new(config))
            }
            None => builder,
        };
        Ok(builder.build())
    }

    /// GET `path` on the REST listener; fails unless 2xx.
    pub fn get(&self, path: &str) -> Result<String> {
        self.get_within(path, Duration::from_secs(5))
    }

    /// As [`Controller::get`], waiting at most `timeout` for the whole answer.
    pub fn get_within(&self, path: &str, timeout: Duration) -> Result<String> {
        let url = self.http_url(path);
        let resp = self
            .client()?
            .get(&url)
            .set("authorization", &self.authorization())
            .timeout(timeout)
            .call()
            .with_context(|| format!("GET {url}"))?;
        resp.into_string()
            .with_context(|| format!("read body of {url}"))
    }

    /// Sends `method path` with a JSON `body` to the REST listener; returns the status and
    /// the body, for any status.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String)> {
        let url = self.http_url(path);
        let req = self
            .client()?
            .request(method, &url)
            .set("authorization", &self.authorization())
            .timeout(Duration::from_secs(10));
        let result = match body {
            Some(b) => req
                .set("content-type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(e).with_context(|| format!("{method} {url}")),
        };
        let status = resp.status();
        let text = resp
            .into_string()
            .with_context(|| format!("read body of {url}"))?;
        Ok((status, text))
    }

    /// As [`Controller::send`], failing unless the status is 2xx; the body as JSON.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let (status, text) = self.send(method, path, body)?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    pub fn topology(&self) -> Result<Topology> {
        Topology::parse(&self.get("/topology?shape=weft")?)
    }

    /// Sum of the `/metrics` samples whose name contains `name` (e.g. "records_ingested").
    pub fn metric(&self, name: &str) -> Result<f64> {
        Ok(sum_metric(&self.get("/metrics")?, name))
    }
}

/// Sums the samples of Prometheus text whose metric name contains `name`.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            if metric.contains(name) {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// The agent, inside a hypervisor namespace.
pub struct Agent {
    pub child: Child,
    pub workloads_file: PathBuf,
    hv_index: usize,
}

impl Agent {
    /// Writes the workloads file for the workloads on hypervisor `hv_index`, starts
    /// `weft-agent` in that namespace and waits until it attached to every workload
    /// interface (a `weft-agent attached` line naming each).
    pub fn start(lab: &Lab, hv_index: usize, controller_url: &str) -> Result<Agent> {
        Self::start_with(lab, hv_index, controller_url, &[])
    }

    /// As [`Agent::start`], with extra command-line flags.
    pub fn start_with(
        lab: &Lab,
        hv_index: usize,
        controller_url: &str,
        extra_args: &[&str],
    ) -> Result<Agent> {
        Self::start_excluding(lab, hv_index, controller_url, &[], extra_args)
    }

    /// As [`Agent::start_with`], leaving the workloads named in `unmanaged` out of the
    /// agent's workloads file and interfaces (as if they were hosts weft does not manage).
    pub fn start_excluding(
        lab: &Lab,
        hv_index: usize,
        controller_url: &str,
        unmanaged: &[&str],
        extra_args: &[&str],
    ) -> Result<Agent> {
        let hv = lab
            .hypervisors()
            .get(hv_index)
            .context("no such hypervisor")?;
        let workloads: Vec<&Workload> = lab
            .workloads()
            .iter()
            .filter(|w| w.hypervisor == hv_index && !unmanaged.contains(&w.name.as_str()))
            .collect();
        let excluded: Vec<String> = lab
            .workloads()
            .iter()
            .filter(|w| unmanaged.contains(&w.name.as_str()))
            .flat_map(|w| ["--exclude".to_string(), w.host_if.clone()])
            .collect();
        let file = lab.dir().join(format!("workloads-{}.toml", hv.name));
        std::fs::write(&file, workloads_toml(&workloads))
            .with_context(|| format!("write {}", file.display()))?;
        let bin = binary("weft-agent")?;
        let bin_s = bin.to_string_lossy().into_owned();
        let file_s = file.to_string_lossy().into_owned();
        let metrics = format!("127.0.0.1:{AGENT_METRICS_PORT}");
        // nsenter, not `ip netns exec`: the agent must share the host's mount namespace,
        // or the node namespaces it mounts under /run/netns are invisible outside it.
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", hv.netns.name()))
            .arg("--")
            .current_dir("/");
        let node_prefix = lab.node_netns_prefix(&hv.name);
        cmd.args([
            bin_s.as_str(),
            "--host-id",
            &hv.name,
            "--controller",
            controller_url,
            "--workloads",
            &file_s,
            "--interfaces",
            "wl-*",
            "--metrics-listen",
            &metrics,
            "--drain-interval-ms",
            "1000",
            "--node-netns-prefix",
            node_prefix.as_str(),
        ]);
        if let Some(u) = &hv.underlay {
            cmd.arg("--underlay-address").arg(&u.addr4);
        }
        // Network nodes' data and logs in the lab directory, their cgroups named after
        // the lab (two labs' agents never share one).
        cmd.arg("--node-dir")
            .arg(lab.dir().join(format!("nodes-{}", hv.name)))
            .arg("--node-cgroup")
            .arg(&node_prefix);
        // Its own volume pool (two agents on one machine never share one; the agent
        // unmounts it at exit).
        cmd.arg("--volume-pool")
            .arg(lab.dir().join(format!("volume-pool-{}", hv.name)));
        // Pins in the lab's own bpffs directory (removed with the lab): a restarted agent of
        // this hypervisor takes them over, and no other lab's agent ever sees them.
        cmd.arg("--bpffs-dir").arg(lab.bpffs_dir().join(&hv.name));
        // Request routers' control sockets and logs in the lab directory (a router
        // outlives a restarted agent, and its namespace's removal ends it).
        cmd.arg("--router-run-dir")
            .arg(lab.dir().join(format!("routers-{}", hv.name)));
        // Kept in the lab directory: a restarted agent of this hypervisor finds it again.
        let state = lab.dir().join(format!("agent-state-{}.json", hv.name));
        cmd.arg("--state-file").arg(&state);
        if controller_url.starts_with("https://") {
            let (ca, cert, key) = ensure_agent_cert(lab, &hv.name)?;
            cmd.arg("--ca")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        } else {
            cmd.arg("--insecure");
        }
        cmd.args(extra_args);
        cmd.args(&excluded);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut child = Child::spawn(cmd, lab.dir(), &format!("weft-agent-{}", hv.name))?;
        for w in &workloads {
            child.wait_for_line(&["weft-agent attached", &w.host_if], START_TIMEOUT)?;
        }
        Ok(Agent {
            child,
            workloads_file: file,
            hv_index,
        })
    }

    /// The agent's `/metrics` text (read from inside its namespace).
    pub fn metrics(&self, lab: &Lab) -> Result<String> {
        let hv = lab
            .hypervisors()
            .get(self.hv_index)
            .context("no such hypervisor")?;
        hv.netns.exec_timeout(
            Duration::from_secs(5),
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://127.0.0.1:{AGENT_METRICS_PORT}/metrics"),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("web"), "\"web\"");
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(toml_str("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn sums_metric_samples_by_name() {
        let text = "# HELP weft_controller_records_ingested_total x\n\
                    weft_controller_records_ingested_total 40\n\
                    weft_controller_records_ingested_total{agent=\"hv2\"} 2\n\
                    weft_other 7\n";
        assert_eq!(sum_metric(text, "records_ingested"), 42.0);
        assert_eq!(sum_metric(text, "missing"), 0.0);
    }

    #[test]
    fn target_dir_defaults_under_the_workspace() {
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            assert_eq!(target_dir(), workspace_root().join("target"));
        }
        assert!(workspace_root().join("Cargo.toml").is_file());
    }
}
