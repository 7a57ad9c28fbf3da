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
        | TopologyCommand::Diff { format, .. } => Some(*format),
    }
}

/// Runs a topology command against the controller and returns what to print.
pub fn run(controller: &str, command: &TopologyCommand) -> anyhow::Result<String> {
    let body = fetch(controller, &request_path(command))?;
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
    }
    out
}
