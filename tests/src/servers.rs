//! Real Debian servers inside workload namespaces, state in the lab's temp dir. Each start
//! function waits (bounded) until the server answers and returns its process guard.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd;
use crate::eventually::eventually;
use crate::lab::Workload;
use crate::process::Child;

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server.
pub struct Server {
    pub child: Child,
    /// The workload it runs in.
    pub workload: String,
    pub ipv4: String,
    pub ipv6: String,
    pub port: u16,
}

impl Server {
    /// `ipv4:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ipv4, self.port)
    }

    /// `http://ipv4:port`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ipv4, self.port)
    }
}

/// What an nginx instance serves.
pub enum Site {
    /// Static files from a docroot: (relative path, content).
    Static(Vec<(String, Vec<u8>)>),
    /// Everything proxied to `upstream` (`host:port`), keep-alive towards it.
    Proxy { upstream: String },
}

/// A deterministic body of exactly `size` bytes (printable, so logs stay readable).
pub fn blob(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789\n"[i % 37])
        .collect()
}

/// Renders an nginx.conf for one instance under `prefix`, listening on both addresses
/// (`ipv6` empty: on `ipv4` only).
pub fn nginx_conf(prefix: &Path, ipv4: &str, ipv6: &str, port: u16, site: &Site) -> String {
    let p = prefix.display();
    let mut c = String::new();
    let _ = write!(
        c,
        "user root;\nworker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n\
         \x20 access_log {p}/access.log;\n\
         \x20 client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {p}/tmp/fastcgi;\n  uwsgi_temp_path {p}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {p}/tmp/scgi;\n\
         \x20 keepalive_timeout 30s;\n  keepalive_requests 10000;\n  sendfile on;\n"
    );
    if let Site::Proxy { upstream } = site {
        let _ = write!(
            c,
            "  upstream backend {{\n    server {upstream};\n    keepalive 16;\n  }}\n"
        );
    }
    let _ = write!(c, "  server {{\n    listen {ipv4}:{port};\n");
    // No IPv6 address (an IPv4-only network node): IPv4 only.
    if !ipv6.is_empty() {
        let _ = writeln!(c, "    listen [{ipv6}]:{port};");
    }
    match site {
        Site::Static(_) => {
            let _ = write!(
                c,
                "    root {p}/www;\n    location / {{ try_files $uri $uri/ =404; }}\n\
                 \x20   location = /fail {{ return 503; }}\n"
            );
        }
        Site::Proxy { .. } => {
            let _ = write!(
                c,
                "    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
                 \x20     proxy_set_header Connection \"\";\n    }}\n"
            );
        }
    }
    c.push_str("  }\n}\n");
    c
}

/// Starts nginx in `w` on port 80 (both address families), waits until it answers.
pub fn nginx(w: &Workload, site: Site) -> Result<Server> {
    let port = 80;
    let prefix = server_dir(w, "nginx")?;
    for sub in ["tmp", "www"] {
        std::fs::create_dir_all(prefix.join(sub))?;
    }
    if let Site::Static(files) = &site {
        for (rel, content) in files {
            let path = prefix.join("www").join(rel.trim_start_matches('/'));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
        }
        // A default page so readiness checks get 200.
        let index = prefix.join("www/index.html");
        if !index.exists() {
            std::fs::write(&index, format!("<h1>{}</h1>\n", w.name))?;
        }
    }
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&prefix, &w.ipv4, &w.ipv6, port, &site))?;
    let conf_s = conf.to_string_lossy().into_owned();
    let prefix_s = prefix.to_string_lossy().into_owned();
    w.netns
        .exec(&["nginx", "-t", "-q", "-p", &prefix_s, "-c", &conf_s])
        .context("nginx rejected the generated config")?;
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("nginx-{}", w.name),
        &["nginx", "-p", &prefix_s, "-c", &conf_s],
    )?;
    let url = format!("http://{}:{port}/", w.ipv4);
    wait_ready(&mut child, "nginx", || {
        // Any HTTP answer means nginx is up (a proxy may answer 502 before its upstream runs).
        let code = w.netns.exec_timeout(
            Duration::from_secs(3),
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                &url,
            ],
        )?;
        anyhow::ensure!(code.trim() != "000", "no HTTP answer yet");
        Ok(())
    })?;
    Ok(server(child, w, port))
}

/// Starts PostgreSQL 15 in `w` (initdb into the lab dir, trust auth for the lab subnets,
/// listening on the workload address), as user `postgres`; waits with pg_isready.
pub fn postgres(w: &Workload) -> Result<Server> {
    let port = 5432;
    let bin = Path::new("/usr/lib/postgresql/15/bin");
    let data = server_dir(w, "postgres")?;
    let sock = data.join("sock");
    let pgdata = data.join("data");
    std::fs::create_dir_all(&sock)?;
    chown_postgres(&data)?;
    chown_postgres(&sock)?;
    let initdb = bin.join("initdb");
    let pgdata_s = pgdata.to_string_lossy().into_owned();
    cmd::run(
        Command::new("runuser")
            .current_dir("/")
            .args(["-u", "postgres", "--"])
            .arg(&initdb)
            .args([
                "-D",
                &pgdata_s,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
    )
    .context("initdb")?;
    std::fs::write(
        pgdata.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all 198.18.0.0/15 trust\n\
         host all all fd00::/8 trust\n",
    )?;
    let postgres = bin.join("postgres").to_string_lossy().into_owned();
    let listen = if w.ipv6.is_empty() {
        format!("listen_addresses={}", w.ipv4)
    } else {
        format!("listen_addresses={},{}", w.ipv4, w.ipv6)
    };
    let sockdir = format!("unix_socket_directories={}", sock.display());
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("postgres-{}", w.name),
        &[
            "runuser",
            "-u",
            "postgres",
            "--",
            &postgres,
            "-D",
            &pgdata_s,
            "-c",
            &listen,
            "-c",
            &sockdir,
            "-c",
            "port=5432",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=50",
        ],
    )?;
    wait_ready(&mut child, "postgres", || {
        w.netns.exec_timeout(
            Duration::from_secs(5),
            &[
                "pg_isready",
                "-h",
                &w.ipv4,
                "-p",
                "5432",
                "-U",
                "postgres",
                "-t",
                "2",
            ],
        )?;
        Ok(())
    })?;
    Ok(server(child, w, port))
}

/// Starts Redis in `w` bound to the workload's IPv4 address, no persistence.
pub fn redis(w: &Workload) -> Result<Server> {
    redis_on(w, 6379)
}

/// Starts Redis on `port` (a non-standard port tests detection from payload).
pub fn redis_on(w: &Workload, port: u16) -> Result<Server> {
    let port_s = port.to_string();
    let dir = server_dir(w, &format!("redis-{port}"))?;
    let dir_s = dir.to_string_lossy().into_owned();
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("redis-{}-{port}", w.name),
        &[
            "redis-server",
            "--bind",
            &w.ipv4,
            "--port",
            &port_s,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir_s,
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ],
    )?;
    wait_ready(&mut child, "redis", || {
        let out = w.netns.exec_timeout(
            Duration::from_secs(3),
            &["redis-cli", "-h", &w.ipv4, "-p", &port_s, "ping"],
        )?;
        anyhow::ensure!(out.trim() == "PONG", "redis answered {out:?}");
        Ok(())
    })?;
    Ok(server(child, w, port))
}

/// Starts dnsmasq in `w` as an authoritative-only DNS server on port 53 answering `records`
/// (name, IPv4 address) and nothing else (no upstream, no hosts file).
pub fn dns(w: &Workload, records: &[(&str, &str)]) -> Result<Server> {
    let port = 53;
    let dir = server_dir(w, "dnsmasq")?;
    let mut args: Vec<String> = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--user=root",
        "--log-facility=-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--listen-address={}", w.ipv4));
    args.push(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    for (name, ip) in records {
        args.push(format!("--address=/{name}/{ip}"));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = w
        .netns
        .spawn(&w.dir, &format!("dnsmasq-{}", w.name), &argv)?;
    let probe = records
        .first()
        .map_or("probe.invalid", |(n, _)| *n)
        .to_string();
    wait_ready(&mut child, "dnsmasq", || {
        let out = w.netns.exec_timeout(
            Duration::from_secs(3),
            &[
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                &format!("@{}", w.ipv4),
                &probe,
            ],
        )?;
        anyhow::ensure!(
            records.is_empty() || !out.trim().is_empty(),
            "no answer yet"
        );
        Ok(())
    })?;
    Ok(server(child, w, port))
}

/// Starts a UDP echo server (socat) on `port` of the workload's IPv4 address.
pub fn udp_echo(w: &Workload, port: u16) -> Result<Server> {
    let listen = format!("UDP4-RECVFROM:{port},bind={},fork", w.ipv4);
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("udp-echo-{}", w.name),
        &["socat", &listen, "PIPE"],
    )?;
    wait_ready(&mut child, "udp echo", || {
        let out = w
            .netns
            .exec(&["ss", "-Hlun", &format!("sport = :{port}")])?;
        anyhow::ensure!(!out.trim().is_empty(), "not bound yet");
        Ok(())
    })?;
    Ok(server(child, w, port))
}

/// Starts a plain TCP echo server (socat) on `port`, both address families.
pub fn tcp_echo(w: &Workload, port: u16) -> Result<Server> {
    let listen = format!("TCP6-LISTEN:{port},ipv6only=0,reuseaddr,fork");
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("tcp-echo-{}", w.name),
        &["socat", &listen, "PIPE"],
    )?;
    wait_ready(&mut child, "tcp echo", || {
        let out = w
            .netns
            .exec(&["ss", "-Hltn", &format!("sport = :{port}")])?;
        anyhow::ensure!(!out.trim().is_empty(), "not listening yet");
        Ok(())
    })?;
    Ok(server(child, w, port))
}

fn server(child: Child, w: &Workload, port: u16) -> Server {
    Server {
        child,
        workload: w.name.clone(),
        ipv4: w.ipv4.clone(),
        ipv6: w.ipv6.clone(),
        port,
    }
}

fn server_dir(w: &Workload, kind: &str) -> Result<PathBuf> {
    let d = w.dir.join(format!("{kind}-{}", w.name));
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    Ok(d)
}

fn chown_postgres(path: &Path) -> Result<()> {
    cmd::run(
        Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(path),
    )
    .context("chown to postgres (is the postgresql package installed?)")?;
    Ok(())
}

fn wait_ready(child: &mut Child, what: &str, mut probe: impl FnMut() -> Result<()>) -> Result<()> {
    eventually(READY_TIMEOUT, Duration::from_millis(200), || {
        if !child.is_running() {
            anyhow::bail!("{what} exited; output:\n{}", child.tail(30));
        }
        probe()
    })
    .with_context(|| {
        format!(
            "{what} ({}) did not become ready; output:\n{}",
            child.name(),
            child.tail(20)
        )
    })
}

/// Starts MariaDB in `w` on port 3306 with a user `u`/`pw` allowed from anywhere (the lab's
/// addresses), no TLS.
pub fn mariadb(w: &Workload) -> Result<Server> {
    let port = 3306;
    let dir = server_dir(w, "mariadb")?;
    let data = dir.join("data");
    let sock = dir.join("sock");
    cmd::run(Command::new("chown").args(["-R", "mysql"]).arg(&dir)).context("chown mysql")?;
    cmd::run(
        Command::new("mariadb-install-db")
            .current_dir("/")
            .arg("--user=mysql")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db"),
    )
    .context("mariadb-install-db")?;
    let datadir = format!("--datadir={}", data.display());
    let socket = format!("--socket={}", sock.display());
    let pid = format!("--pid-file={}", dir.join("pid").display());
    let bind = format!("--bind-address={}", w.ipv4);
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("mariadb-{}", w.name),
        &[
            "runuser",
            "-u",
            "mysql",
            "--",
            "mariadbd",
            &datadir,
            &socket,
            &pid,
            &bind,
            "--port=3306",
            "--skip-log-bin",
            "--skip-ssl",
        ],
    )?;
    let sock_s = sock.to_string_lossy().into_owned();
    wait_ready(&mut child, "mariadb", || {
        w.netns.exec_timeout(
            Duration::from_secs(5),
            &["mariadb-admin", "--socket", &sock_s, "ping"],
        )?;
        Ok(())
    })?;
    w.netns.exec_timeout(
        Duration::from_secs(10),
        &[
            "mariadb",
            "--socket",
            &sock_s,
            "-e",
            "create user 'u'@'%' identified by 'pw'; grant all on *.* to 'u'@'%';",
        ],
    )?;
    Ok(server(child, w, port))
}

/// Runs a Python 3 server script (Debian's interpreter, for Debian's modules) in `w` with
/// the workload's IPv4 address and `port` as arguments; ready when the port accepts.
pub fn python(w: &Workload, label: &str, script: &str, port: u16) -> Result<Server> {
    let dir = server_dir(w, label)?;
    let path = dir.join("server.py");
    std::fs::write(&path, script)?;
    let path_s = path.to_string_lossy().into_owned();
    let port_s = port.to_string();
    let mut child = w.netns.spawn(
        &w.dir,
        &format!("{label}-{}", w.name),
        &["/usr/bin/python3", &path_s, &w.ipv4, &port_s],
    )?;
    let probe = format!(
        "import socket; socket.create_connection(('{}', {port}), 1).close()",
        w.ipv4
    );
    wait_ready(&mut child, label, || {
        w.netns
            .exec_timeout(Duration::from_secs(3), &["/usr/bin/python3", "-c", &probe])?;
        Ok(())
    })?;
    Ok(server(child, w, port))
}

/// Starts RabbitMQ in `w` on port 5672 (guest/guest allowed from the lab's addresses), its
/// node, database and logs below the lab's directory.
pub fn rabbitmq(w: &Workload) -> Result<Server> {
    let port = 5672;
    let dir = server_dir(w, "rabbitmq")?;
    let conf = dir.join("rabbitmq.conf");
    std::fs::write(&conf, "loopback_users = none\n")?;
    // Debian's rabbitmq-server runs the broker as the rabbitmq user.
    cmd::run(Command::new("chown").args(["-R", "rabbitmq"]).arg(&dir)).context("chown rabbitmq")?;
    let env = |k: &str, v: &Path| format!("{k}={}", v.display());
    let node = format!(
        "RABBITMQ_NODENAME=weft-{}-{}@localhost",
        w.name,
        std::process::id()
    );
    let args = [
        "env".to_string(),
        format!("RABBITMQ_NODE_IP_ADDRESS={}", w.ipv4),
        "RABBITMQ_NODE_PORT=5672".to_string(),
        env("RABBITMQ_CONFIG_FILE", &conf),
        env("RABBITMQ_MNESIA_BASE", &dir.join("db")),
        env("RABBITMQ_LOG_BASE", &dir.join("log")),
        env("RABBITMQ_ENABLED_PLUGINS_FILE", &dir.join("plugins")),
        env("HOME", &dir),
        node,
        "rabbitmq-server".to_string(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = w
        .netns
        .spawn(&w.dir, &format!("rabbitmq-{}", w.name), &argv)?;
    let probe = format!(
        "import socket; socket.create_connection(('{}', {port}), 1).close()",
        w.ipv4
    );
    wait_ready(&mut child, "rabbitmq", || {
        w.netns
            .exec_timeout(Duration::from_secs(3), &["/usr/bin/python3", "-c", &probe])?;
        Ok(())
    })?;
    Ok(server(child, w, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_has_exact_size() {
        assert_eq!(blob(200 * 1024).len(), 204800);
        assert!(blob(0).is_empty());
    }

    #[test]
    fn nginx_proxy_conf_keeps_upstream_connections_alive() {
        let c = nginx_conf(
            Path::new("/tmp/x"),
            "198.18.1.12",
            "fd00:1::12",
            80,
            &Site::Proxy {
                upstream: "198.18.1.13:80".into(),
            },
        );
        assert!(c.contains("server 198.18.1.13:80;"));
        assert!(c.contains("keepalive 16;"));
        assert!(c.contains("proxy_http_version 1.1;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("listen [fd00:1::12]:80;"));
        assert!(c.contains("daemon off;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn nginx_static_conf_serves_docroot() {
        let c = nginx_conf(
            Path::new("/p"),
            "198.18.1.11",
            "fd00:1::11",
            80,
            &Site::Static(vec![]),
        );
        assert!(c.contains("root /p/www;"));
        assert!(!c.contains("upstream"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }
}
