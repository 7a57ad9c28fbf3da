//! `weft shadow create|get|list|policy|delete|watch`: shadow environments (the
//! controller's `/shadows` and `/events/shadows`).

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::shards::{call, enc, follow_events};

/// Which connections are sampled. Given to `policy`, it replaces the shadow's whole
/// policy: a flag left out takes its default.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Share of eligible connections sampled: "10%", "0.5%" or "100000ppm".
    #[arg(long, default_value = "10%")]
    share: String,
    /// What the decision hashes: connection (each connection on its own), source (a
    /// client is always in or always out) or header (the value of request header
    /// --header: a user or session is always in or always out; HTTP only).
    #[arg(long, default_value = "connection", value_parser = ["connection", "source", "header"])]
    key: String,
    /// The request header hashed with --key header (e.g. X-User).
    #[arg(long)]
    header: Option<String>,
    /// Server ports sampled (repeat, or comma-separated); none: every TCP port.
    #[arg(long = "port", value_delimiter = ',')]
    ports: Vec<u32>,
    /// Client prefixes sampled (repeat, or comma-separated); none: every client.
    #[arg(long = "source", value_delimiter = ',')]
    sources: Vec<String>,
    /// Only requests that read reach the shadow (HTTP GET/HEAD/OPTIONS, Redis reads,
    /// PostgreSQL SELECT/SHOW).
    #[arg(long)]
    read_only: bool,
    /// Sample only between these UTC times, "09:00-17:00" (may wrap midnight).
    #[arg(long)]
    window: Option<String>,
    /// Seed of the decision's hash (the same seed and share sample the same connections).
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Share of new connections (of --port) really sent to the shadow instead of
    /// production (a canary), as --share; hashed by --key.
    #[arg(long, default_value = "0%")]
    divert: String,
    /// Fail over: while production's node fails a TCP check on this port, every new
    /// connection goes to the shadow.
    #[arg(long)]
    failover_port: Option<u32>,
    /// Milliseconds between checks (default 100).
    #[arg(long, requires = "failover_port")]
    failover_interval_ms: Option<u32>,
    /// Failures in a row that switch (and successes that switch back; default 3).
    #[arg(long, requires = "failover_port")]
    failover_failures: Option<u32>,
    /// Sent after connecting (e.g. "GET /health HTTP/1.0\r\n\r\n", with \r \n
    /// escapes); the check then needs an answer, which a frozen server does not give.
    #[arg(long, requires = "failover_port")]
    failover_probe: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Mirror production network --production as network ID on --host, and sample its
    /// nodes' inbound connections into it.
    Create {
        id: String,
        /// The production network.
        #[arg(long)]
        production: String,
        /// Hypervisors to place the shadow on (repeat, or comma-separated).
        #[arg(long = "host", value_delimiter = ',', required = true)]
        hosts: Vec<String>,
        /// Production nodes sampled (repeat, or comma-separated); none: every node that
        /// declares ports.
        #[arg(long = "node", value_delimiter = ',')]
        nodes: Vec<String>,
        /// Also make `ID-baseline`, a second copy of production placed as the shadow is, as
        /// the noise baseline (what differs between production and it is noise).
        #[arg(long)]
        noise_baseline: bool,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
    /// A shadow's state, counters and production-against-shadow analysis.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    List,
    /// Replace a shadow's sampling policy (one map update on each production host).
    Policy {
        id: String,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
    /// Replay what the shadow's sinks recorded into the shadow at a multiple of its
    /// recorded rate (a load test with production's own requests).
    Synthetic {
        id: String,
        /// Times the recorded rate, e.g. 3 (three times as fast).
        #[arg(long, required_unless_present = "stop")]
        multiplier: Option<f64>,
        /// How long, in seconds.
        #[arg(long, default_value_t = 60)]
        duration: u32,
        /// Stop a run in progress.
        #[arg(long, conflicts_with = "multiplier")]
        stop: bool,
    },
    /// Stop sampling and remove the shadow's networks.
    Delete {
        id: String,
    },
    /// Follow the shadows' events (CloudEvents) until interrupted.
    Watch {
        /// Only this shadow's.
        id: Option<String>,
        /// Print each event as its CloudEvents JSON.
        #[arg(long)]
        json: bool,
    },
}

/// "10%", "0.25%" or "100000ppm" in millionths.
pub fn share_ppm(s: &str) -> anyhow::Result<u32> {
    ppm_of("--share", s)
}

/// "\r" and "\n" escapes of a probe as the bytes.
fn unescape(s: &str) -> String {
    s.replace("\\r", "\r").replace("\\n", "\n")
}

fn ppm_of(flag: &str, s: &str) -> anyhow::Result<u32> {
    let s = s.trim();
    let ppm = if let Some(p) = s.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| anyhow!("{flag} {s:?}: say a percentage such as 10%"))?;
        if !(0.0..=100.0).contains(&v) {
            bail!("{flag} {s:?}: between 0% and 100%");
        }
        (v * 10_000.0).round() as u32
    } else if let Some(p) = s.strip_suffix("ppm") {
        p.trim()
            .parse()
            .map_err(|_| anyhow!("{flag} {s:?}: say millionths such as 100000ppm"))?
    } else {
        bail!("{flag} {s:?}: say a percentage (10%) or millionths (100000ppm)");
    };
    Ok(ppm)
}

/// "09:00-17:00" as minutes of the day.
pub fn window(s: &str) -> anyhow::Result<(u32, u32)> {
    let minute = |t: &str| -> anyhow::Result<u32> {
        let (h, m) = t
            .trim()
            .split_once(':')
            .ok_or_else(|| anyhow!("--window {s:?}: times are HH:MM"))?;
        let (h, m): (u32, u32) = (
            h.parse()
                .map_err(|_| anyhow!("--window {s:?}: {h:?} is not an hour"))?,
            m.parse()
                .map_err(|_| anyhow!("--window {s:?}: {m:?} is not a minute"))?,
        );
        if h > 23 || m > 59 {
            bail!("--window {s:?}: {t:?} is not a time of day");
        }
        Ok(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow!("--window {s:?}: say START-END, e.g. 09:00-17:00"))?;
    Ok((minute(a)?, minute(b)?))
}

impl PolicyArgs {
    fn to_json(&self) -> anyhow::Result<Value> {
        let (start, end) = match &self.window {
            Some(w) => window(w)?,
            None => (0, 0),
        };
        let header = match (self.key.as_str(), &self.header) {
            ("header", Some(h)) => h.clone(),
            ("header", None) => bail!("--key header needs --header NAME (the header to hash)"),
            (_, Some(_)) => bail!("--header is hashed only with --key header"),
            (_, None) => String::new(),
        };
        Ok(json!({
            "share_ppm": share_ppm(&self.share)?,
            "key": self.key,
            "header": header,
            "ports": self.ports,
            "sources": self.sources,
            "read_only": self.read_only,
            "window_start_minute": start,
            "window_end_minute": end,
            "seed": self.seed,
            "divert_ppm": ppm_of("--divert", &self.divert)?,
            "failover": self.failover_port.map(|port| json!({
                "port": port,
                "interval_ms": self.failover_interval_ms.unwrap_or(0),
                "failures": self.failover_failures.unwrap_or(0),
                "probe": self.failover_probe.as_deref().map(unescape).unwrap_or_default(),
            })),
        }))
    }
}

fn hhmm(m: u64) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

fn policy_text(p: &Value) -> String {
    let list = |v: &Value| -> String {
        let items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect();
        if items.is_empty() {
            "any".into()
        } else {
            items.join(",")
        }
    };
    let (start, end) = (
        p["window_start_minute"].as_u64().unwrap_or(0),
        p["window_end_minute"].as_u64().unwrap_or(0),
    );
    let divert = p["divert_ppm"].as_f64().unwrap_or(0.0) / 10_000.0;
    let steering = format!(
        "{}{}",
        if divert > 0.0 {
            format!(", divert {divert}%")
        } else {
            String::new()
        },
        match p["failover"]["port"].as_u64() {
            Some(port) => format!(", failover on port {port}"),
            None => String::new(),
        }
    );
    format!(
        "{}% by {}, ports {}, sources {}{}{}{steering}",
        p["share_ppm"].as_f64().unwrap_or(0.0) / 10_000.0,
        match (p["key"].as_str(), p["header"].as_str()) {
            (Some("header"), Some(h)) => format!("header {h}"),
            (k, _) => k.unwrap_or("connection").to_owned(),
        },
        list(&p["ports"]),
        list(&p["sources"]),
        if p["read_only"] == json!(true) {
            ", read-only"
        } else {
            ""
        },
        if start == 0 && end == 0 {
            String::new()
        } else {
            format!(", {}-{} UTC", hhmm(start), hhmm(end))
        }
    )
}

fn summary_line(s: &Value) -> String {
    format!(
        "{:<20}  {:<16}  {:<12}  {}\n",
        s["id"].as_str().unwrap_or("-"),
        s["production"].as_str().unwrap_or("-"),
        s["state"].as_str().unwrap_or("-"),
        policy_text(&s["policy"])
    )
}

fn show(s: &Value) -> String {
    let strs = |v: &Value| -> String {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "shadow {} of {}: {}{}\n  networks: {}\n  nodes sampled: {}\n  hosts: {}\n  policy: {}\n",
        s["id"].as_str().unwrap_or("-"),
        s["production"].as_str().unwrap_or("-"),
        s["state"].as_str().unwrap_or("-"),
        match s["error"].as_str() {
            Some(e) if !e.is_empty() => format!(" ({e})"),
            _ => String::new(),
        },
        strs(&s["networks"]),
        strs(&s["nodes"]),
        strs(&s["hosts"]),
        policy_text(&s["policy"]),
    );
    for (node, sink) in s["sinks"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "  sink of {node}: {}:{}\n",
            sink["host"].as_str().unwrap_or("-"),
            sink["listen_port"]
        ));
    }
    let c = &s["counters"];
    out.push_str(&format!(
        "  connections: {} seen, {} sampled, {} lost; {} bytes streamed; requests: {} replayed, {} writes skipped{}\n",
        c["connections_seen"],
        c["connections_sampled"],
        c["connections_lost"],
        c["bytes_streamed"],
        c["requests_replayed"],
        c["requests_skipped_write"],
        match c["requests_unsampled"].as_u64() {
            Some(n) if n > 0 => format!(", {n} out of the header's share"),
            _ => String::new(),
        },
    ));
    if let Some(n) = c["taps_paused"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "  {n} taps paused: their sinks take nothing (shadow stopped or unreachable); copying resumes by itself\n"
        ));
    }
    if c["connections_diverted"].as_u64().unwrap_or(0) > 0
        || c["nodes_failed_over"].as_u64().unwrap_or(0) > 0
    {
        out.push_str(&format!(
            "  steered: {} connections diverted; {} nodes failed over now\n",
            c["connections_diverted"], c["nodes_failed_over"]
        ));
    }
    if let Some(run) = s["synthetic"].as_object() {
        out.push_str(&format!(
            "  synthetic load: run {} at {}x for {} s; {} connections, {} requests sent, {} runs done\n",
            run.get("generation").cloned().unwrap_or_default(),
            run.get("multiplier_milli")
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
                / 1000.0,
            run.get("duration_seconds").cloned().unwrap_or_default(),
            c["synthetic_connections"],
            c["synthetic_requests"],
            c["synthetic_runs_finished"],
        ));
    }
    for r in s["scaling"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  scale {} {}: {} -> {}{} ({})\n",
            r["node"].as_str().unwrap_or("-"),
            r["resource"].as_str().unwrap_or("-"),
            r["current"],
            r["recommended"],
            if r["applied"] == json!(true) {
                ", applied"
            } else {
                ", recommended"
            },
            r["reason"].as_str().unwrap_or("-"),
        ));
    }
    let analysis = s["analysis"].as_array().cloned().unwrap_or_default();
    if !analysis.is_empty() {
        out.push_str(&format!(
            "  {:<28}  {:>8}  {:>8}  {:>7}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}\n",
            "ENDPOINT",
            "PROD",
            "SHADOW",
            "PROD-ER",
            "SHAD-ER",
            "PROD-P50",
            "SHAD-P50",
            "PROD-P99",
            "SHAD-P99",
            "P-VALUE"
        ));
    }
    for a in &analysis {
        let f = |k: &str| a[k].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "  {:<28}  {:>8}  {:>8}  {:>6.2}%  {:>6.2}%  {:>7.2}ms  {:>7.2}ms  {:>7.2}ms  {:>7.2}ms  {:>8.2e}{}\n",
            a["endpoint"].as_str().unwrap_or("-"),
            a["production_requests"],
            a["shadow_requests"],
            f("production_error_rate") * 100.0,
            f("shadow_error_rate") * 100.0,
            f("production_p50_ms"),
            f("shadow_p50_ms"),
            f("production_p99_ms"),
            f("shadow_p99_ms"),
            f("latency_p_value"),
            if a["shadow_slower"] == json!(true) {
                "  SHADOW SLOWER"
            } else {
                ""
            }
        ));
        if a["shadow_errs_more"] == json!(true) {
            out.push_str(&format!(
                "    the shadow errs more than its reference ({}): p = {:.2e}\n",
                a["reference"].as_str().unwrap_or("-"),
                f("error_p_value")
            ));
        }
        if a["differing"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!(
                "    {} of {} responses differ beyond the noise: {}\n",
                a["differing"],
                a["compared"],
                a["differing_fields"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k} ({v})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

fn event_line(e: &Value, as_json: bool) -> String {
    if as_json {
        return format!("{e}\n");
    }
    let d = &e["data"];
    let detail = match e["type"].as_str().unwrap_or_default() {
        "weft.shadow.created" => format!(
            "of {} on {}",
            d["production"].as_str().unwrap_or("-"),
            d["hosts"]
        ),
        "weft.shadow.policy.changed" => policy_text(&d["policy"]),
        "weft.shadow.degraded" => d["error"].as_str().unwrap_or("-").to_owned(),
        "weft.shadow.failover.activated" | "weft.shadow.failover.recovered" => format!(
            "node {}{}",
            d["node"].as_str().unwrap_or("-"),
            d["switch_seconds"]
                .as_f64()
                .map(|s| format!(", switched in {s:.2} s"))
                .unwrap_or_default()
        ),
        "weft.shadow.scaling.recommended" | "weft.shadow.scaling.applied" => {
            let r = &d["recommendation"];
            format!(
                "{} {}: {} -> {} ({})",
                r["node"].as_str().unwrap_or("-"),
                r["resource"].as_str().unwrap_or("-"),
                r["current"],
                r["recommended"],
                r["reason"].as_str().unwrap_or("-")
            )
        }
        "weft.shadow.synthetic.asked" => format!(
            "{}x for {} s (run {})",
            d["multiplier"], d["duration_seconds"], d["generation"]
        ),
        _ => String::new(),
    };
    format!(
        "{}  {:<28}  {}  {}\n",
        e["time"].as_str().unwrap_or("-"),
        e["type"].as_str().unwrap_or("-"),
        e["subject"].as_str().unwrap_or("-"),
        detail
    )
}

fn watch(base: &str, id: Option<&str>, as_json: bool) -> anyhow::Result<String> {
    let path = match id {
        Some(id) => format!("/events/shadows?shadow={}", enc(id)),
        None => "/events/shadows".to_owned(),
    };
    follow_events(base, &path, |e| event_line(e, as_json))
}

pub fn run(base: &str, command: &ShadowCommand) -> anyhow::Result<String> {
    match command {
        ShadowCommand::Create {
            id,
            production,
            hosts,
            nodes,
            noise_baseline,
            policy,
        } => {
            let body = json!({
                "id": id,
                "production": production,
                "hosts": hosts,
                "nodes": nodes,
                "noise_baseline": noise_baseline,
                "policy": policy.to_json()?,
            });
            Ok(show(&call(base, "POST", "/shadows", Some(&body))?))
        }
        ShadowCommand::Get { id, json } => {
            let s = call(base, "GET", &format!("/shadows/{}", enc(id)), None)?;
            if *json {
                Ok(serde_json::to_string_pretty(&s)? + "\n")
            } else {
                Ok(show(&s))
            }
        }
        ShadowCommand::List => {
            let all = call(base, "GET", "/shadows", None)?;
            let mut out = format!(
                "{:<20}  {:<16}  {:<12}  {}\n",
                "SHADOW", "PRODUCTION", "STATE", "POLICY"
            );
            for s in all["shadows"].as_array().into_iter().flatten() {
                out.push_str(&summary_line(s));
            }
            Ok(out)
        }
        ShadowCommand::Policy { id, policy } => Ok(show(&call(
            base,
            "PUT",
            &format!("/shadows/{}/policy", enc(id)),
            Some(&policy.to_json()?),
        )?)),
        ShadowCommand::Synthetic {
            id,
            multiplier,
            duration,
            stop,
        } => {
            let body = json!({
                "multiplier": if *stop { 0.0 } else { multiplier.unwrap_or(0.0) },
                "duration_seconds": if *stop { 0 } else { *duration },
            });
            let s = call(
                base,
                "POST",
                &format!("/shadows/{}/synthetic", enc(id)),
                Some(&body),
            )?;
            Ok(if *stop {
                format!("synthetic load stopped: {}", summary_line(&s))
            } else {
                format!(
                    "synthetic load asked (run {}): {}",
                    s["synthetic"]["generation"],
                    summary_line(&s)
                )
            })
        }
        ShadowCommand::Delete { id } => {
            let s = call(base, "DELETE", &format!("/shadows/{}", enc(id)), None)?;
            Ok(format!("deleted {}", summary_line(&s)))
        }
        ShadowCommand::Watch { id, json } => watch(base, id.as_deref(), *json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_what_happened() {
        let e = json!({
            "type": "weft.shadow.failover.activated", "time": "t", "subject": "s",
            "data": {"node": "web", "switch_seconds": 0.312},
        });
        assert!(event_line(&e, false).contains("node web, switched in 0.31 s"));
        let e = json!({
            "type": "weft.shadow.scaling.applied", "time": "t", "subject": "s",
            "data": {"recommendation": {"node": "db", "resource": "memory", "current": 512,
                                        "recommended": 768, "reason": "near its limit"}},
        });
        assert!(event_line(&e, false).contains("db memory: 512 -> 768 (near its limit)"));
        let e = json!({
            "type": "weft.shadow.synthetic.asked", "time": "t", "subject": "s",
            "data": {"multiplier": 3.0, "duration_seconds": 60, "generation": 2},
        });
        assert!(event_line(&e, false).contains("3.0x for 60 s (run 2)"));
    }

    #[test]
    fn shares_and_windows_parse_or_are_refused() {
        assert_eq!(share_ppm("10%").unwrap(), 100_000);
        assert_eq!(share_ppm("0.25 %").unwrap(), 2_500);
        assert_eq!(share_ppm("100%").unwrap(), 1_000_000);
        assert_eq!(share_ppm("1234ppm").unwrap(), 1_234);
        assert!(share_ppm("101%").is_err());
        assert!(share_ppm("0.1").is_err());
        assert!(share_ppm("ten%").is_err());
        assert_eq!(window("09:00-17:30").unwrap(), (540, 1050));
        assert_eq!(window("23:00-01:00").unwrap(), (1380, 60));
        assert!(window("24:00-01:00").is_err());
        assert!(window("09:00").is_err());
    }

    #[test]
    fn command_lines_parse_into_the_policy_json() {
        use clap::Parser as _;
        let cli = crate::Cli::try_parse_from([
            "weft",
            "shadow",
            "create",
            "shop-shadow",
            "--production",
            "shop",
            "--host",
            "hv2,hv3",
            "--node",
            "web",
            "--share",
            "5%",
            "--key",
            "source",
            "--port",
            "80",
            "--port",
            "443",
            "--source",
            "198.18.0.0/16",
            "--read-only",
            "--window",
            "09:00-17:00",
            "--noise-baseline",
        ])
        .unwrap();
        let crate::Command::Shadow {
            command:
                ShadowCommand::Create {
                    hosts,
                    nodes,
                    noise_baseline,
                    policy,
                    ..
                },
        } = cli.command
        else {
            panic!("not shadow create");
        };
        assert_eq!(hosts, ["hv2", "hv3"]);
        assert_eq!(nodes, ["web"]);
        assert!(noise_baseline);
        let p = policy.to_json().unwrap();
        assert_eq!(p["share_ppm"], 50_000);
        assert_eq!(p["key"], "source");
        assert_eq!(p["ports"], json!([80, 443]));
        assert_eq!(p["read_only"], true);
        assert_eq!(p["window_start_minute"], 540);
        assert_eq!(p["window_end_minute"], 1020);
        assert_eq!(p["divert_ppm"], 0);
        assert_eq!(p["failover"], Value::Null);
        let cli = crate::Cli::try_parse_from([
            "weft",
            "shadow",
            "policy",
            "shop-shadow",
            "--share",
            "0%",
            "--divert",
            "2.5%",
            "--failover-port",
            "80",
            "--failover-interval-ms",
            "50",
            "--failover-probe",
            "GET /health HTTP/1.0\\r\\n\\r\\n",
        ])
        .unwrap();
        let crate::Command::Shadow {
            command: ShadowCommand::Policy { policy, .. },
        } = cli.command
        else {
            panic!("not shadow policy");
        };
        let p = policy.to_json().unwrap();
        assert_eq!(p["divert_ppm"], 25_000);
        assert_eq!(p["failover"]["port"], 80);
        assert_eq!(p["failover"]["interval_ms"], 50);
        assert_eq!(p["failover"]["failures"], 0);
        assert_eq!(p["failover"]["probe"], "GET /health HTTP/1.0\r\n\r\n");
        assert!(policy_text(&p).contains("divert 2.5%, failover on port 80"));
        let header_policy = |args: &[&str]| {
            let cli = crate::Cli::try_parse_from(
                ["weft", "shadow", "policy", "s", "--key", "header"]
                    .iter()
                    .chain(args),
            )
            .unwrap();
            let crate::Command::Shadow {
                command: ShadowCommand::Policy { policy, .. },
            } = cli.command
            else {
                panic!("not shadow policy");
            };
            policy.to_json()
        };
        let p = header_policy(&["--header", "X-User"]).unwrap();
        assert_eq!(
            (&p["key"], &p["header"]),
            (&json!("header"), &json!("X-User"))
        );
        assert!(
            policy_text(&p).contains("10% by header X-User"),
            "{}",
            policy_text(&p)
        );
        let e = header_policy(&[]).unwrap_err().to_string();
        assert!(e.contains("--header NAME"), "{e}");
        assert!(
            crate::Cli::try_parse_from([
                "weft",
                "shadow",
                "policy",
                "x",
                "--failover-interval-ms",
                "50"
            ])
            .is_err(),
            "--failover-interval-ms needs --failover-port"
        );
        assert!(
            ppm_of("--divert", "150%")
                .unwrap_err()
                .to_string()
                .contains("--divert")
        );
        assert!(
            crate::Cli::try_parse_from(["weft", "shadow", "create", "x", "--production", "p"])
                .is_err(),
            "--host is required"
        );
        assert!(
            crate::Cli::try_parse_from(["weft", "shadow", "policy", "x", "--key", "cookie"])
                .is_err()
        );
        assert!(crate::Cli::try_parse_from(["weft", "shadow", "watch"]).is_ok());
    }
}
