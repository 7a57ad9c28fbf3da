//! `weft topology ...`: the controller's topology views and analytics, as text or JSON.

use std::fmt::Write as _;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::fetch;

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Print the topology map.
    Show {
        /// Output format (svg needs Graphviz on the controller host).
        #[arg(long, value_enum, default_value_t = Format::Ascii)]
        format: Format,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// List services with their type and endpoints.
    Services {
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Dependencies of one service.
    Deps {
        /// Service name.
        service: String,
        #[arg(long, value_enum, default_value_t = Direction::Both)]
        direction: Direction,
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Critical services: by the services their loss cuts off, then by connections.
    Critical {
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Dependencies slower than a threshold.
    Bottlenecks {
        /// Latency threshold in milliseconds.
        #[arg(long, default_value_t = 100.0)]
        threshold_ms: f64,
        /// Which latency statistic the threshold applies to.
        #[arg(long, value_enum, default_value_t = Stat::Avg)]
        stat: Stat,
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Traffic totals, latency, error rate and protocol distribution.
    Patterns {
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// What changed between a stored snapshot and another time (default: now).
    Diff {
        /// RFC 3339 time or relative (`1h` = an hour ago).
        #[arg(long)]
        from: String,
        /// RFC 3339 time or relative; default now.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
    },
    /// Service types: the rules' type and, for weak guesses, the type learned from the
    /// traffic shape of services known for sure (nearest centroid), with a confidence.
    Classify {
        /// TOML training labels: `[[example]] service = "x" type = "cache"` (posted to
        /// the controller with the request).
        #[arg(long)]
        classifier_examples: Option<std::path::PathBuf>,
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Dependencies whose latest complete minute departs from the baseline before it
    /// (request rate, error rate, p99 latency; robust z-score), and new dependencies.
    Anomalies {
        /// |robust z-score| above which a metric is anomalous.
        #[arg(long, default_value_t = 4.0)]
        threshold: f64,
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        /// `--since` starts the baseline (default an hour before `--until`, default now).
        #[command(flatten)]
        window: WindowArgs,
    },
    /// Scale out / in / hold per service, from its inbound rate trend, p99 vs a target,
    /// errors and saturation.
    Scaling {
        #[arg(long, default_value_t = 100.0)]
        latency_target_ms: f64,
        #[arg(long, value_enum, default_value_t = TableFormat::Ascii)]
        format: TableFormat,
        #[command(flatten)]
        window: WindowArgs,
    },
}

/// A time window: RFC 3339 (`2026-11-23T16:00:00Z`) or relative (`15m`, `2h`, `1d` ago).
#[derive(Debug, Clone, Default, Args)]
pub struct WindowArgs {
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Ascii,
    Dot,
    Json,
    Svg,
}

impl Format {
    /// The controller path serving this format.
    pub fn path(self) -> &'static str {
        match self {
            Self::Ascii => "/topology.txt",
            Self::Dot => "/topology.dot",
            Self::Json => "/topology",
            Self::Svg => "/topology.svg",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormat {
    Ascii,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    Inbound,
    Outbound,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stat {
    Avg,
    P50,
    P95,
    P99,
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `path?k=v&...` with the given (name, value) pairs, empty values left out.
pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn window_pairs(window: &WindowArgs) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("since", window.since.clone()),
        ("until", window.until.clone()),
    ]
}

fn value_name<T: ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// The controller path (with query) a command reads.
pub fn request_path(command: &TopologyCommand) -> String {
    match command {
        TopologyCommand::Show { format, window } => {
            with_query(format.path(), &window_pairs(window))
        }
        TopologyCommand::Services { window, .. } => with_query("/services", &window_pairs(window)),
        TopologyCommand::Deps {
            service,
            direction,
            window,
            ..
        } => {
            let mut pairs = window_pairs(window);
            pairs.push(("direction", Some(value_name(*direction))));
            with_query(
                &format!("/services/{}/dependencies", encode(service)),
                &pairs,
            )
        }
        TopologyCommand::Critical { window, .. } => {
            with_query("/analytics/critical", &window_pairs(window))
        }
        TopologyCommand::Bottlenecks {
            threshold_ms,
            stat,
            window,
            ..
        } => {
            let mut pairs = window_pairs(window);
            pairs.push(("threshold_ms", Some(threshold_ms.to_string())));
            pairs.push(("stat", Some(value_name(*stat))));
            with_query("/analytics/bottlenecks", &pairs)
        }
        TopologyCommand::Patterns { window, .. } => {
            with_query("/analytics/patterns", &window_pairs(window))
        }
        TopologyCommand::Diff { from, to, .. } => with_query(
            "/topology/diff",
            &[("from", Some(from.clone())), ("to", to.clone())],
        ),
        TopologyCommand::Classify { window, .. } => {
            with_query("/analytics/classification", &window_pairs(window))
        }
        TopologyCommand::Anomalies {
            threshold, window, ..
        } => {
            let mut pairs = window_pairs(window);
            pairs.push(("threshold", Some(threshold.to_string())));
            with_query("/analytics/anomalies", &pairs)
        }
        TopologyCommand::Scaling {
            latency_target_ms,
            window,
            ..
        } => {
            let mut pairs = window_pairs(window);
            pairs.push(("latency_target_ms", Some(latency_target_ms.to_string())));
            with_query("/analytics/scaling", &pairs)
        }
    }
}

fn table_format(command: &TopologyCommand) -> Option<TableFormat> {
    match command {
        TopologyCommand::Show { .. } => None,
        TopologyCommand::Services { format, .. }
        | TopologyCommand::Deps { format, .. }
        | TopologyCommand::Critical { format, .. }
        | TopologyCommand::Bottlenecks { format, .. }
        | TopologyCommand::Patterns { format, .. }
        | TopologyCommand::Diff { format, .. }
        | TopologyCommand::Classify { format, .. }
        | TopologyCommand::Anomalies { format, .. }
        | TopologyCommand::Scaling { format, .. } => Some(*format),
    }
}

/// Runs a topology command against the controller and returns what to print.
pub fn run(controller: &str, command: &TopologyCommand) -> anyhow::Result<String> {
    let body = match command {
        TopologyCommand::Classify {
            classifier_examples: Some(file),
            ..
        } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            // Checked here too, so a bad file is named before anything is sent.
            weft_topology::analytics::learned::Examples::parse(&text, &file.display().to_string())
                .map_err(anyhow::Error::msg)?;
            post_text(controller, &request_path(command), &text)?
        }
        _ => fetch(controller, &request_path(command))?,
    };
    let json = |body: &str| -> anyhow::Result<Value> {
        serde_json::from_str(body).context("the controller's answer is not valid JSON")
    };
    let mut text = match (command, table_format(command)) {
        (
            TopologyCommand::Show {
                format: Format::Json,
                ..
            },
            _,
        ) => serde_json::to_string_pretty(&json(&body)?)?,
        (TopologyCommand::Show { .. }, _) => body,
        (_, Some(TableFormat::Json)) => serde_json::to_string_pretty(&json(&body)?)?,
        (command, _) => render(command, &json(&body)?),
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// POSTs `text` and returns the answer's body.
fn post_text(base: &str, path: &str, text: &str) -> anyhow::Result<String> {
    let url = crate::endpoint(base, path);
    let agent = crate::credentials::http_agent(
        ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(30)),
    );
    match agent
        .post(&url)
        .set("content-type", "application/toml")
        .send_string(text)
    {
        Ok(response) => response
            .into_string()
            .with_context(|| format!("reading the answer of {url}")),
        Err(ureq::Error::Status(code, response)) => Err(anyhow::anyhow!(
            "the controller answered {code} for {url}: {}",
            crate::problem_message(&response.into_string().unwrap_or_default())
        )),
        Err(error @ ureq::Error::Transport(_)) => {
            Err(anyhow::anyhow!(error)).with_context(|| crate::credentials::unreachable(base))
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

fn dependency_line(d: &Value) -> String {
    format!(
        "{} -> {}  {} {}/{}  reqs={} errors={} avg={}ms p99={}ms",
        s(&d["source"]),
        s(&d["target"]),
        s(&d["protocol"]),
        s(&d["transport"]),
        s(&d["port"]),
        s(&d["requests"]),
        s(&d["errors"]),
        ms(&d["latency_ms"]["avg"]),
        ms(&d["latency_ms"]["p99"]),
    )
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Plain-text rendering of an analytics answer.
pub fn render(command: &TopologyCommand, v: &Value) -> String {
    let mut out = String::new();
    match command {
        TopologyCommand::Show { .. } => {}
        TopologyCommand::Services { .. } => {
            for service in list(v) {
                let endpoints: Vec<String> = list(&service["endpoints"])
                    .iter()
                    .map(|e| {
                        format!(
                            "{}:{} [{}]",
                            s(&e["address"]),
                            s(&e["port"]),
                            s(&e["protocol"])
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{} ({})  {}",
                    s(&service["name"]),
                    s(&service["type"]),
                    endpoints.join(", ")
                );
            }
        }
        TopologyCommand::Deps { .. } => {
            let _ = writeln!(out, "{} ({}):", s(&v["service"]), s(&v["direction"]));
            for d in list(&v["dependencies"]) {
                let _ = writeln!(out, "  {}", dependency_line(d));
            }
        }
        TopologyCommand::Critical { .. } => {
            let _ = writeln!(
                out,
                "{:<40} {:>11} {:>12}",
                "SERVICE", "CONNECTIONS", "DISCONNECTS"
            );
            for c in list(v) {
                let _ = writeln!(
                    out,
                    "{:<40} {:>11} {:>12}",
                    s(&c["service"]),
                    s(&c["connections"]),
                    s(&c["disconnects"])
                );
            }
        }
        TopologyCommand::Bottlenecks { .. } => {
            let _ = writeln!(
                out,
                "Dependencies with {} latency above {} ms:",
                s(&v["stat"]),
                s(&v["threshold_ms"])
            );
            for d in list(&v["dependencies"]) {
                let _ = writeln!(out, "  {}", dependency_line(d));
            }
        }
        TopologyCommand::Patterns { .. } => {
            let _ = writeln!(out, "Total observations: {}", s(&v["total_observations"]));
            let _ = writeln!(out, "Total bytes: {}", s(&v["total_bytes"]));
            let _ = writeln!(
                out,
                "Average latency: {} ms (p50 {}, p95 {}, p99 {})",
                ms(&v["avg_latency_ms"]),
                ms(&v["p50_latency_ms"]),
                ms(&v["p95_latency_ms"]),
                ms(&v["p99_latency_ms"])
            );
            let rate = v["error_rate"].as_f64().unwrap_or(0.0) * 100.0;
            let _ = writeln!(
                out,
                "Error rate: {rate:.2}% ({} errors)",
                s(&v["total_errors"])
            );
            let _ = writeln!(
                out,
                "Services: {}  Dependencies: {}",
                s(&v["service_count"]),
                s(&v["dependency_count"])
            );
            if let Some(map) = v["protocol_distribution"].as_object() {
                let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k}={}", s(n))).collect();
                let _ = writeln!(out, "Protocols: {}", parts.join(" "));
            }
        }
        TopologyCommand::Diff { .. } => {
            let _ = writeln!(out, "From {} to {}", s(&v["from"]), s(&v["to"]));
            for (title, key) in [("Appeared", "appeared"), ("Vanished", "vanished")] {
                for e in list(&v[key]) {
                    let _ = writeln!(
                        out,
                        "  {title}: {} -> {} [{}]",
                        s(&e["source"]),
                        s(&e["target"]),
                        s(&e["protocol"])
                    );
                }
            }
            for c in list(&v["changed"]) {
                let _ = writeln!(
                    out,
                    "  Changed: {} -> {} [{}] avg {} -> {} ms, p99 {} -> {} ms, error rate {} -> {} ({})",
                    s(&c["source"]),
                    s(&c["target"]),
                    s(&c["protocol"]),
                    ms(&c["avg_latency_ms"][0]),
                    ms(&c["avg_latency_ms"][1]),
                    ms(&c["p99_latency_ms"][0]),
                    ms(&c["p99_latency_ms"][1]),
                    ms(&c["error_rate"][0]),
                    ms(&c["error_rate"][1]),
                    list(&c["reasons"])
                        .iter()
                        .map(s)
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            if list(&v["appeared"]).is_empty()
                && list(&v["vanished"]).is_empty()
                && list(&v["changed"]).is_empty()
            {
                let _ = writeln!(out, "  no changes");
            }
        }
        TopologyCommand::Classify { .. } => {
            let _ = writeln!(
                out,
                "{:<32} {:<14} {:<9} {:<14} {:>10}  NEAREST",
                "SERVICE", "RULE TYPE", "BASIS", "LEARNED", "CONFIDENCE"
            );
            for c in list(&v["services"]) {
                let learned = if c["training"].as_bool() == Some(true) {
                    let label = if c["example_type"].is_null() {
                        &c["rule_type"]
                    } else {
                        &c["example_type"]
                    };
                    format!("(trains: {})", s(label))
                } else {
                    s(&c["learned_type"])
                };
                let confidence = c["confidence"].as_f64().map_or_else(
                    || "-".to_owned(),
                    |x| {
                        let flag = if c["ambiguous"].as_bool() == Some(true) {
                            "?"
                        } else {
                            ""
                        };
                        format!("{x:.2}{flag}")
                    },
                );
                let nearest: Vec<String> = list(&c["nearest"])
                    .iter()
                    .map(|n| {
                        format!(
                            "{} ({}, {:.2})",
                            s(&n["service"]),
                            s(&n["type"]),
                            n["distance"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{:<32} {:<14} {:<9} {:<14} {:>10}  {}",
                    s(&c["service"]),
                    s(&c["rule_type"]),
                    s(&c["basis"]),
                    learned,
                    confidence,
                    nearest.join(", ")
                );
            }
        }
        TopologyCommand::Anomalies { .. } => {
            let _ = writeln!(
                out,
                "Bucket {} against {} baseline buckets from {} (|z| > {}):",
                s(&v["current_bucket"]),
                s(&v["baseline_buckets"]),
                s(&v["baseline_since"]),
                s(&v["threshold"])
            );
            for a in list(&v["anomalies"]) {
                let score = a["score"]
                    .as_f64()
                    .map_or_else(|| "new".to_owned(), |z| format!("z={z:.1}"));
                let _ = writeln!(
                    out,
                    "  {} -> {} [{}/{}] {}: {} (baseline {}, {score}, {})",
                    s(&a["source"]),
                    s(&a["target"]),
                    s(&a["protocol"]),
                    s(&a["port"]),
                    s(&a["metric"]),
                    ms(&a["current"]),
                    ms(&a["baseline"]),
                    s(&a["direction"])
                );
            }
            if list(&v["anomalies"]).is_empty() {
                let _ = writeln!(out, "  no anomalies");
            }
        }
        TopologyCommand::Scaling { .. } => {
            let _ = writeln!(
                out,
                "{:<32} {:<10} {:>6} {:>9} {:>9} {:>9}  REASON",
                "SERVICE", "ACTION", "FACTOR", "RPS", "PROJECTED", "P99 MS"
            );
            for r in list(&v["services"]) {
                let _ = writeln!(
                    out,
                    "{:<32} {:<10} {:>6} {:>9} {:>9} {:>9}  {}",
                    s(&r["service"]),
                    s(&r["action"]),
                    ms(&r["factor"]),
                    ms(&r["current_rps"]),
                    ms(&r["projected_rps"]),
                    ms(&r["p99_latency_ms"]),
                    s(&r["reason"])
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod learned_tests {
    use super::*;

    #[test]
    fn classify_anomalies_and_scaling_render_their_answers() {
        let command = TopologyCommand::Anomalies {
            threshold: 4.0,
            format: TableFormat::Ascii,
            window: WindowArgs::default(),
        };
        assert_eq!(request_path(&command), "/analytics/anomalies?threshold=4");
        let answer = serde_json::json!({
            "threshold": 4.0, "current_bucket": "t", "baseline_buckets": 30, "baseline_since": "t0",
            "anomalies": [{"source": "a", "target": "b", "protocol": "http", "port": 80,
                "metric": "p99_latency_ms", "current": 400.0, "baseline": 10.0, "score": 39.0,
                "direction": "up"}],
        });
        let text = render(&command, &answer);
        assert!(
            text.contains("a -> b [http/80] p99_latency_ms: 400.00 (baseline 10.00, z=39.0, up)"),
            "{text}"
        );

        let command = TopologyCommand::Scaling {
            latency_target_ms: 50.0,
            format: TableFormat::Ascii,
            window: WindowArgs {
                since: Some("30m".into()),
                until: None,
            },
        };
        assert_eq!(
            request_path(&command),
            "/analytics/scaling?since=30m&latency_target_ms=50"
        );
        let answer = serde_json::json!({"services": [{"service": "b", "action": "scale_out",
            "factor": 2.0, "current_rps": 1.0, "projected_rps": 2.0, "p99_latency_ms": 10.0,
            "reason": "request rate rising"}]});
        assert!(render(&command, &answer).contains("scale_out"));

        let command = TopologyCommand::Classify {
            classifier_examples: None,
            format: TableFormat::Ascii,
            window: WindowArgs::default(),
        };
        assert_eq!(request_path(&command), "/analytics/classification");
        let answer = serde_json::json!({"services": [{"service": "kv", "rule_type": "microservice",
            "basis": "default", "training": false, "learned_type": "cache", "confidence": 0.9,
            "ambiguous": false, "nearest": [{"service": "redis", "type": "cache", "distance": 0.1}]}]});
        let text = render(&command, &answer);
        assert!(
            text.contains("cache") && text.contains("0.90") && text.contains("redis (cache, 0.10)"),
            "{text}"
        );
    }

    #[test]
    fn a_bad_examples_file_is_named_before_anything_is_sent() {
        let file = std::env::temp_dir().join(format!("weft-examples-{}.toml", std::process::id()));
        std::fs::write(&file, "[[example]]\nservice = \"a\"\ntype = \"toaster\"\n").expect("write");
        let command = TopologyCommand::Classify {
            classifier_examples: Some(file.clone()),
            format: TableFormat::Ascii,
            window: WindowArgs::default(),
        };
        // Nothing listens on port 9: the error must come from the file, not the network.
        let error = run("http://127.0.0.1:9", &command).unwrap_err().to_string();
        std::fs::remove_file(&file).ok();
        assert!(
            error.contains("line 3") && error.contains("weft-examples"),
            "{error}"
        );
    }
}
