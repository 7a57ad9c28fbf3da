//! Real clients run inside a namespace, each bounded by a timeout: curl, wrk, pgbench,
//! redis-benchmark, socat (UDP), ping. Results are parsed from the tools' own output.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// What curl reported for one transfer (`-w`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurlTransfer {
    pub http_code: u16,
    pub size_download: u64,
    pub size_upload: u64,
    pub size_request: u64,
    pub size_header: u64,
    /// New connections curl opened for this transfer (0 when it reused one).
    pub num_connects: u64,
}

/// The `-w` format `parse_curl_line` reads.
pub const CURL_FORMAT: &str = "weft-curl %{http_code} %{size_download} %{size_upload} %{size_request} %{size_header} %{num_connects}\\n";

/// Parses one line written with `CURL_FORMAT`.
pub fn parse_curl_line(line: &str) -> Result<CurlTransfer> {
    let mut it = line.split_whitespace();
    if it.next() != Some("weft-curl") {
        bail!("not a curl report line: {line:?}");
    }
    let mut num = |what: &str| -> Result<u64> {
        let v = it
            .next()
            .with_context(|| format!("{what} missing in {line:?}"))?;
        v.parse::<u64>()
            .with_context(|| format!("{what} is {v:?} in {line:?}"))
    };
    let http_code = u16::try_from(num("http_code")?).context("http_code")?;
    Ok(CurlTransfer {
        http_code,
        size_download: num("size_download")?,
        size_upload: num("size_upload")?,
        size_request: num("size_request")?,
        size_header: num("size_header")?,
        num_connects: num("num_connects")?,
    })
}

/// Parses all report lines of a curl run.
pub fn parse_curl_output(out: &str) -> Result<Vec<CurlTransfer>> {
    out.lines()
        .filter(|l| l.starts_with("weft-curl"))
        .map(parse_curl_line)
        .collect()
}

/// Fetches `url` `times` times over ONE connection (curl reuses it: keep-alive).
/// Fails unless every transfer returned 2xx.
pub fn curl_keepalive(
    ns: &Netns,
    url: &str,
    times: usize,
    extra: &[&str],
) -> Result<Vec<CurlTransfer>> {
    let mut args = vec!["curl", "-sS", "--max-time", "20", "-w", CURL_FORMAT];
    args.extend_from_slice(extra);
    for _ in 0..times {
        args.extend(["-o", "/dev/null", url]);
    }
    let out = ns.exec_timeout(Duration::from_secs(30), &args)?;
    let t = parse_curl_output(&out)?;
    check_transfers(&t, times, url)?;
    Ok(t)
}

/// Fetches `url` `times` times, one curl process (and one TCP connection) per request.
pub fn curl_each(ns: &Netns, url: &str, times: usize, extra: &[&str]) -> Result<Vec<CurlTransfer>> {
    let mut all = Vec::new();
    for _ in 0..times {
        all.extend(curl_keepalive(ns, url, 1, extra)?);
    }
    Ok(all)
}

fn check_transfers(t: &[CurlTransfer], want: usize, url: &str) -> Result<()> {
    if t.len() != want {
        bail!(
            "curl reported {} transfers for {url}, expected {want}",
            t.len()
        );
    }
    if let Some(bad) = t.iter().find(|t| !(200..300).contains(&t.http_code)) {
        bail!("curl {url} got HTTP {}", bad.http_code);
    }
    Ok(())
}

/// Sum of bytes downloaded.
pub fn total_download(t: &[CurlTransfer]) -> u64 {
    t.iter().map(|t| t.size_download).sum()
}

/// wrk's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct WrkSummary {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub socket_errors: bool,
}

/// Parses wrk's output ("N requests in 5.00s, ..." and "Requests/sec: X").
pub fn parse_wrk(out: &str) -> Result<WrkSummary> {
    let requests = out
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.split_once(" requests in ")
                .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        })
        .with_context(|| format!("no request count in wrk output: {out}"))?;
    let requests_per_sec = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Requests/sec:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0);
    Ok(WrkSummary {
        requests,
        requests_per_sec,
        socket_errors: out.contains("Socket errors"),
    })
}

/// Runs `wrk -t1 -c<conns> -d<secs>s url` (keep-alive connections).
pub fn wrk(ns: &Netns, url: &str, conns: u32, secs: u64) -> Result<WrkSummary> {
    let c = format!("-c{conns}");
    let d = format!("-d{secs}s");
    let out = ns.exec_timeout(
        Duration::from_secs(secs + 15),
        &["wrk", "-t1", &c, &d, "--timeout", "5s", url],
    )?;
    parse_wrk(&out)
}

/// Runs `pgbench -i` against `host` (database `postgres`, user `postgres`).
pub fn pgbench_init(ns: &Netns, host: &str) -> Result<()> {
    ns.exec_timeout(
        Duration::from_secs(120),
        &[
            "pgbench", "-i", "-q", "-s", "1", "-h", host, "-p", "5432", "-U", "postgres",
            "postgres",
        ],
    )
    .context("pgbench -i")?;
    Ok(())
}

/// Runs `pgbench -T secs -c clients` (simple query protocol) and returns the number of
/// transactions processed.
pub fn pgbench_run(ns: &Netns, host: &str, secs: u64, clients: u32) -> Result<u64> {
    let t = secs.to_string();
    let c = clients.to_string();
    let out = ns.exec_timeout(
        Duration::from_secs(secs + 30),
        &[
            "pgbench", "-n", "-T", &t, "-c", &c, "-h", host, "-p", "5432", "-U", "postgres",
            "postgres",
        ],
    )?;
    parse_pgbench(&out)
}

/// Parses "number of transactions actually processed: N" from pgbench.
pub fn parse_pgbench(out: &str) -> Result<u64> {
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("number of transactions actually processed:")
                .and_then(|v| v.split('/').next())
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| format!("no transaction count in pgbench output: {out}"))
}

/// Runs `redis-benchmark -n requests -c clients -t set,get -q` against `host`.
pub fn redis_benchmark(ns: &Netns, host: &str, requests: u64, clients: u32) -> Result<String> {
    let n = requests.to_string();
    let c = clients.to_string();
    ns.exec_timeout(
        Duration::from_secs(120),
        &[
            "redis-benchmark",
            "-h",
            host,
            "-p",
            "6379",
            "-n",
            &n,
            "-c",
            &c,
            "-t",
            "set,get",
            "-q",
        ],
    )
}

/// Sends `count` UDP datagrams to `host:port` (one socat each) and returns how many echoes
/// came back.
pub fn udp_roundtrips(ns: &Netns, host: &str, port: u16, count: usize) -> Result<usize> {
    let target = if host.contains(':') {
        format!("UDP6:[{host}]:{port}")
    } else {
        format!("UDP4:{host}:{port}")
    };
    let mut echoed = 0;
    for i in 0..count {
        let script = format!("echo weft-udp-{i} | socat -t 2 - {target}");
        let out = ns.exec_timeout(Duration::from_secs(10), &["sh", "-c", &script])?;
        if out.contains(&format!("weft-udp-{i}")) {
            echoed += 1;
        }
    }
    Ok(echoed)
}

/// Pings `host` `count` times and returns the packet loss in percent (ping's non-zero
/// exit on loss is not an error; no summary at all is).
pub fn ping_loss(ns: &Netns, host: &str, count: u32) -> Result<f64> {
    let c = count.to_string();
    let secs = (u64::from(count) + 10).to_string();
    let mut cmd = ns.command(&[
        "timeout",
        "--kill-after=5",
        &secs,
        "ping",
        "-n",
        "-q",
        "-c",
        &c,
        "-i",
        "0.2",
        "-W",
        "2",
        host,
    ]);
    let out = crate::cmd::output(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping_loss(&text).with_context(|| {
        format!(
            "ping {host} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Reads "N% packet loss" from ping's summary.
pub fn parse_ping_loss(out: &str) -> Result<f64> {
    out.split(',')
        .find_map(|p| {
            p.trim()
                .strip_suffix("% packet loss")
                .and_then(|v| v.trim().parse().ok())
        })
        .with_context(|| format!("no packet loss figure in ping output: {out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_reports() {
        let out = "weft-curl 200 204800 0 78 238 1\nweft-curl 200 204800 0 78 238 0\n";
        let t = parse_curl_output(out).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].size_download, 204800);
        assert_eq!(t[0].num_connects, 1);
        assert_eq!(t[1].num_connects, 0);
        assert_eq!(total_download(&t), 409600);
    }

    #[test]
    fn rejects_malformed_curl_reports() {
        assert!(parse_curl_line("weft-curl 200 x 0 0 0 1").is_err());
        assert!(parse_curl_line("weft-curl 200").is_err());
        assert!(parse_curl_line("hello").is_err());
    }

    #[test]
    fn parses_wrk_summary() {
        let out = "Running 5s test @ http://198.18.1.12/\n  1 threads and 4 connections\n\
                   \x20 12345 requests in 5.00s, 3.45MB read\nRequests/sec:   2469.00\nTransfer/sec: 1MB\n";
        let s = parse_wrk(out).unwrap();
        assert_eq!(s.requests, 12345);
        assert!((s.requests_per_sec - 2469.0).abs() < 1e-9);
        assert!(!s.socket_errors);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn parses_pgbench_count() {
        let out = "number of clients: 2\nnumber of transactions actually processed: 4242\nlatency average = 1 ms\n";
        assert_eq!(parse_pgbench(out).unwrap(), 4242);
        let with_total = "number of transactions actually processed: 10/10\n";
        assert_eq!(parse_pgbench(with_total).unwrap(), 10);
        assert!(parse_pgbench("nothing").is_err());
    }

    #[test]
    fn parses_ping_loss() {
        let out = "--- 198.18.1.12 ping statistics ---\n5 packets transmitted, 5 received, 0% packet loss, time 801ms\n";
        assert_eq!(parse_ping_loss(out).unwrap(), 0.0);
        let lossy = "5 packets transmitted, 4 received, 20% packet loss, time 1ms";
        assert_eq!(parse_ping_loss(lossy).unwrap(), 20.0);
    }
}
