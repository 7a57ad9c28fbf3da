//! `weft import pcap|jsonl|envoy FILE`: traffic weft did not capture itself. Posted to the
//! controller (`POST /observations`), or with `--offline` turned into a topology here and
//! printed. Malformed lines or packets are reported on stderr and skipped; the command
//! fails only when nothing could be imported.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Args, ValueEnum};
use weft_topology::import::{self, Format, ImportOptions, ImportReport};
use weft_topology::mapper::{TopologyMapper, TopologyVisualizer};
use weft_topology::observation::TrafficObservation;

use crate::progress::Progress;

/// Observations per `POST /observations` request.
const POST_BATCH: usize = 5_000;
/// Per-line/packet errors printed before the rest are only counted.
const ERRORS_SHOWN: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// A tcpdump/tshark capture (pcap or pcapng).
    Pcap,
    /// JSON lines of TrafficObservation.
    Jsonl,
    /// An Envoy access log (default text format or JSON).
    Envoy,
}

impl From<Kind> for Format {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Pcap => Format::Pcap,
            Kind::Jsonl => Format::Jsonl,
            Kind::Envoy => Format::Envoy,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OfflineFormat {
    Ascii,
    Json,
    Dot,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What FILE holds.
    #[arg(value_enum)]
    pub kind: Kind,
    /// The file to import.
    pub file: PathBuf,
    /// Envoy: name of the calling (downstream) service, instead of the downstream address.
    #[arg(long)]
    pub source: Option<String>,
    /// Build the topology here and print it instead of posting to the controller.
    #[arg(long)]
    pub offline: bool,
    /// With --offline: how to print the topology.
    #[arg(long, value_enum, default_value_t = OfflineFormat::Ascii, requires = "offline")]
    pub format: OfflineFormat,
    /// pcap: print one JSON line per flow (endpoints, protocol, SNI/ALPN, requests, errors,
    /// methods, statuses, paths) instead of importing, to check weft flow by flow.
    #[arg(long, conflicts_with = "offline")]
    pub flows: bool,
}

/// One JSON line per flow of a capture.
fn flow_lines(report: &ImportReport) -> anyhow::Result<String> {
    let mut out = String::new();
    for flow in &report.flows {
        out.push_str(&serde_json::to_string(flow)?);
        out.push('\n');
    }
    Ok(out)
}

/// One line of summary for stderr.
fn summary(args: &ImportArgs, report: &ImportReport) -> String {
    let unit = if args.kind == Kind::Pcap {
        "packets"
    } else {
        "lines"
    };
    let mut text = format!(
        "{}: {} observations from {} {unit}, {} malformed",
        args.file.display(),
        report.observations.len(),
        report.units_read,
        report.errors.len()
    );
    if args.kind == Kind::Pcap {
        text.push_str(&format!(
            ", {} packets not TCP/UDP over IP; {} connections without a complete request/response imported as one observation each (latency 0)",
            report.skipped,
            report.flow_only.len()
        ));
    }
    text
}

/// The per-line/packet errors, at most [`ERRORS_SHOWN`] of them, then a count.
pub fn error_lines(file: &str, report: &ImportReport) -> Vec<String> {
    let mut lines: Vec<String> = report
        .errors
        .iter()
        .take(ERRORS_SHOWN)
        .map(|e| format!("weft: {file}: {e}"))
        .collect();
    if report.errors.len() > ERRORS_SHOWN {
        lines.push(format!(
            "weft: {file}: ... and {} more malformed",
            report.errors.len() - ERRORS_SHOWN
        ));
    }
    lines
}

fn offline(observations: &[TrafficObservation], format: OfflineFormat) -> anyhow::Result<String> {
    let mapper = TopologyMapper::new();
    let outcome = mapper.observe_traffic_batch(observations);
    for (index, error) in outcome.errors.iter().take(ERRORS_SHOWN) {
        eprintln!("weft: observation {}: refused: {error}", index + 1);
    }
    if outcome.accepted == 0 {
        bail!(
            "none of the {} observations was accepted",
            observations.len()
        );
    }
    let map = mapper.generate_topology_map();
    Ok(match format {
        OfflineFormat::Ascii => TopologyVisualizer::new(&map).generate_ascii_map(),
        OfflineFormat::Dot => TopologyVisualizer::new(&map).generate_dot_graph(),
        OfflineFormat::Json => {
            let mut json = map.to_json();
            json.push('\n');
            json
        }
    })
}

fn post(controller: &str, observations: &[TrafficObservation]) -> anyhow::Result<String> {
    let url = crate::endpoint(controller, "/observations");
    let agent = crate::credentials::http_agent(
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60)),
    );
    let mut accepted = 0u64;
    let mut refused = 0usize;
    let bar = Progress::items(observations.len() as u64, "posting observations");
    for (index, chunk) in observations.chunks(POST_BATCH).enumerate() {
        bar.set((index * POST_BATCH) as u64);
        let body = serde_json::to_value(chunk).context("encoding observations")?;
        let answer = match agent.post(&url).send_json(body) {
            Ok(response) => response
                .into_json::<serde_json::Value>()
                .with_context(|| format!("reading the answer of {url}"))?,
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                bail!(
                    "the controller answered {code} for {url}: {}",
                    crate::problem_message(&body)
                );
            }
            Err(error @ ureq::Error::Transport(_)) => {
                return Err(anyhow!(error))
                    .with_context(|| crate::credentials::unreachable(controller));
            }
        };
        accepted += answer.get("accepted").and_then(|v| v.as_u64()).unwrap_or(0);
        if let Some(errors) = answer.get("errors").and_then(|v| v.as_array()) {
            refused += errors.len();
            for e in errors.iter().take(ERRORS_SHOWN) {
                let message = e
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("refused");
                eprintln!("weft: the controller refused an observation: {message}");
            }
        }
    }
    if accepted == 0 {
        bail!(
            "the controller accepted none of the {} observations",
            observations.len()
        );
    }
    Ok(format!(
        "posted {} observations to {controller}: {accepted} accepted, {refused} refused\n",
        observations.len()
    ))
}

/// Runs the command; the text for stdout.
pub fn run(controller: &str, args: &ImportArgs) -> anyhow::Result<String> {
    if args.source.is_some() && args.kind != Kind::Envoy {
        eprintln!("weft: --source applies to Envoy logs only; ignored");
    }
    let options = ImportOptions {
        source: args.source.clone(),
    };
    if args.flows && args.kind != Kind::Pcap {
        bail!("--flows applies to pcap captures only");
    }
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let bar = Progress::bytes(bytes.len() as u64, "parsing");
    let report =
        import::import_bytes_with_progress(args.kind.into(), &bytes, &options, &mut |at| {
            bar.set(at as u64)
        });
    bar.finish();
    drop(bytes);
    if args.flows {
        for line in error_lines(&args.file.display().to_string(), &report) {
            eprintln!("{line}");
        }
        return flow_lines(&report);
    }
    let file = args.file.display().to_string();
    for line in error_lines(&file, &report) {
        eprintln!("{line}");
    }
    eprintln!("weft: {}", summary(args, &report));
    if report.observations.is_empty() {
        bail!("nothing could be imported from {file}");
    }
    if args.offline {
        offline(&report.observations, args.format)
    } else {
        post(controller, &report.observations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl_file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("weft-cli-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("temp file");
        path
    }

    fn args(kind: Kind, file: PathBuf, format: OfflineFormat) -> ImportArgs {
        ImportArgs {
            kind,
            file,
            source: None,
            offline: true,
            format,
            flows: false,
        }
    }

    #[test]
    fn offline_jsonl_import_prints_the_topology_and_survives_bad_lines() {
        let file = jsonl_file(
            "good.jsonl",
            "{\"source_host\":\"web\",\"source_port\":1,\"dest_host\":\"db.internal\",\"dest_port\":5432,\"protocol\":\"postgres\",\"latency_ms\":4}\nnot json\n",
        );
        let text = run(
            "http://unused",
            &args(Kind::Jsonl, file.clone(), OfflineFormat::Json),
        )
        .expect("one good line is enough");
        let _ = std::fs::remove_file(&file);
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON topology");
        assert!(text.contains("db.internal"), "{json}");
    }

    #[test]
    fn flows_are_json_lines_one_per_flow_with_the_clients_counts() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../l7/fixtures");
        let flows = |name: &str| -> Vec<serde_json::Value> {
            let args = ImportArgs {
                flows: true,
                offline: false,
                ..args(
                    Kind::Pcap,
                    format!("{fixtures}/{name}.pcap").into(),
                    OfflineFormat::Ascii,
                )
            };
            let text = run("http://127.0.0.1:9", &args).expect("flows");
            text.lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect()
        };
        // grpcio: 2 good calls and 1 failing, on one connection.
        let grpc = flows("grpc");
        assert_eq!(grpc.len(), 1, "{grpc:?}");
        let f = &grpc[0];
        assert_eq!(f["protocol"], "grpc");
        assert_eq!(
            (f["requests"].as_u64(), f["errors"].as_u64()),
            (Some(3), Some(1))
        );
        assert_eq!(f["paths"]["/demo.Echo/Say"], 2);
        assert_eq!(f["paths"]["/demo.Echo/Fail"], 1);
        assert_eq!(f["statuses"]["200"], 3);
        assert_eq!(f["server"], "198.18.250.1:50051");
        // curl to an openssl s_server: SNI and ALPN per flow.
        let tls = flows("tls");
        assert_eq!(tls.len(), 1, "{tls:?}");
        assert_eq!(tls[0]["protocol"], "tls");
        assert_eq!(tls[0]["sni"], "api.weft.test");
        assert_eq!(tls[0]["alpn"], serde_json::json!(["http/1.1"]));
        // websockets: one upgrade request, 5 messages (3 text, a ping, the close).
        let ws = flows("ws");
        assert_eq!(
            (ws[0]["requests"].as_u64(), ws[0]["messages"].as_u64()),
            (Some(1), Some(5))
        );
        assert_eq!(ws[0]["statuses"], serde_json::json!({"101": 1}));
        assert_eq!(ws[0]["errors"], 0);
    }

    #[test]
    fn nothing_importable_is_an_error() {
        let file = jsonl_file("bad.jsonl", "not json\n{}\n");
        let error = run(
            "http://unused",
            &args(Kind::Jsonl, file.clone(), OfflineFormat::Ascii),
        )
        .expect_err("nothing imported");
        let _ = std::fs::remove_file(&file);
        assert!(
            error.to_string().contains("nothing could be imported"),
            "{error}"
        );
        let missing = run(
            "http://unused",
            &args(
                Kind::Pcap,
                PathBuf::from("/nonexistent/x.pcap"),
                OfflineFormat::Ascii,
            ),
        )
        .expect_err("missing file");
        assert!(format!("{missing:#}").contains("/nonexistent/x.pcap"));
    }

    #[test]
    fn errors_beyond_the_limit_are_counted() {
        let report = ImportReport {
            errors: (1..=60)
                .map(|n| import::ImportError {
                    location: format!("line {n}"),
                    message: "bad".into(),
                })
                .collect(),
            ..Default::default()
        };
        let lines = error_lines("f", &report);
        assert_eq!(lines.len(), ERRORS_SHOWN + 1);
        assert_eq!(lines[0], "weft: f: line 1: bad");
        assert_eq!(lines[ERRORS_SHOWN], "weft: f: ... and 10 more malformed");
    }
}
