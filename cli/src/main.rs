//! `weft`: a command-line client of the controller's HTTP API.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};

mod certs;
mod credentials;
mod flows;
mod import;
mod networks;
mod progress;
mod shadows;
mod shards;
mod tokens;
mod topology;
mod weaves;

use topology::TopologyCommand;

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Client of the weft controller")]
struct Cli {
    /// Base URL of the controller's REST API: https:// (plain http:// only for a
    /// controller on this machine run with --insecure).
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROLLER",
        default_value = "https://127.0.0.1:7070"
    )]
    controller: String,
    /// The CA (PEM) of the controller's certificate, trusted for https:// (`weft certs
    /// init` makes it: ca.pem).
    #[arg(long, global = true, env = "WEFT_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// File holding the bearer token sent to the controller.
    #[arg(long, global = true, env = "WEFT_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The bearer token itself (prefer --token-file: a value shows in `ps`).
    #[arg(long, global = true, env = "WEFT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The application topology observed from traffic.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// The flows the agents reported last: endpoints, protocol, TLS SNI/ALPN, requests,
    /// errors, methods, statuses and paths of each.
    Flows(flows::FlowsArgs),
    /// Import traffic weft did not capture: a pcap, JSON lines of observations, or an
    /// Envoy access log; posted to the controller, or printed as a topology (--offline).
    Import(import::ImportArgs),
    /// IP shards: create, get, list, delete, allocate to / deallocate from a network;
    /// show or cancel a migration.
    Shards {
        #[command(subcommand)]
        command: shards::ShardsCommand,
    },
    /// Workload addresses from a network's shards: allocate, release, list.
    Addresses {
        #[command(subcommand)]
        command: shards::AddressesCommand,
    },
    /// Shard events (CloudEvents): the retained ones, or --follow new ones.
    Events(shards::EventsArgs),
    /// TDL files, offline: validate, format, plan (what goes on which hypervisor), diff;
    /// and export (a TDL of what runs, from the controller).
    Tdl {
        #[command(subcommand)]
        command: networks::TdlCommand,
    },
    /// TDL networks on the hypervisors: create, mirror, update, list, show, status, delete.
    Network {
        #[command(subcommand)]
        command: networks::NetworkCommand,
    },
    /// Shadow environments: a mirror of a production network fed a sampled share of its
    /// connections, compared with production: create, get, list, policy, delete, watch.
    Shadow {
        #[command(subcommand)]
        command: shadows::ShadowCommand,
    },
    /// Weaves: an environment as it was at a point of its history, running beside it,
    /// traffic routed to it: create, list, get, delete, route, activate, deactivate,
    /// sync, watch.
    Weave {
        #[command(subcommand)]
        command: weaves::WeaveCommand,
    },
    /// Client tokens of the controller: create, list, revoke (admin).
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// A CA and certificates for mutual TLS between agents and the controller (offline).
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Shell completions for `weft`, on stdout: e.g. `weft completions bash >
    /// /etc/bash_completion.d/weft`, `weft completions zsh > ~/.zfunc/_weft`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Man pages of `weft` and every subcommand (weft.1, weft-topology.1,
    /// weft-topology-show.1, ...), written into a directory: `weft man --dir
    /// /usr/local/share/man/man1`.
    Man {
        /// Where the pages go (made if missing).
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: std::path::PathBuf,
    },
}

/// Writes the completion script of `shell` for `weft` to `out`.
fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory as _;
    clap_complete::generate(shell, &mut Cli::command(), "weft", out);
}

/// Writes the man pages of `weft` and its subcommands into `dir`; the text for stdout.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<String> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("weft") && name.ends_with(".1"))
        .collect();
    pages.sort();
    Ok(format!(
        "wrote {} man pages into {}: {}\n",
        pages.len(),
        dir.display(),
        pages.join(" ")
    ))
}

/// `base` joined with an absolute `path`, without doubling the slash.
fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The most useful sentence of an error body: an RFC 9457 problem's `detail` (or
/// `title`), else the body itself.
fn problem_message(body: &str) -> String {
    let problem = serde_json::from_str::<serde_json::Value>(body).ok();
    let field = |name: &str| {
        problem
            .as_ref()
            .and_then(|p| p.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    field("detail")
        .or_else(|| field("title"))
        .unwrap_or_else(|| body.trim().to_owned())
}

fn fetch(base: &str, path: &str) -> anyhow::Result<String> {
    let url = endpoint(base, path);
    let agent = crate::credentials::http_agent(
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(30)),
    );
    match agent.get(&url).call() {
        Ok(response) => response
            .into_string()
            .with_context(|| format!("reading the answer of {url}")),
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            Err(anyhow!(
                "the controller answered {code} for {url}: {}",
                problem_message(&body)
            ))
        }
        Err(error @ ureq::Error::Transport(_)) => {
            Err(anyhow!(error)).with_context(|| crate::credentials::unreachable(base))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Offline and credential-free: no token or CA is read for them.
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            completions(*shell, &mut out);
            return out.flush().context("writing to stdout");
        }
        Command::Man { dir } => {
            let text = man_pages(dir)?;
            return std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .context("writing to stdout");
        }
        _ => {}
    }
    credentials::init(
        cli.token.as_deref(),
        cli.token_file.as_deref(),
        cli.ca.as_deref(),
        &cli.controller,
    )?;
    let text = match cli.command {
        Command::Tokens { command } => tokens::run(&cli.controller, &command)?,
        Command::Certs { command } => certs::run(&command)?,
        Command::Tdl { command } => networks::run_tdl(&cli.controller, &command)?,
        Command::Network { command } => networks::run_network(&cli.controller, &command)?,
        Command::Shadow { command } => shadows::run(&cli.controller, &command)?,
        Command::Weave { command } => weaves::run(&cli.controller, &command)?,
        Command::Topology { command } => topology::run(&cli.controller, &command)?,
        Command::Import(args) => import::run(&cli.controller, &args)?,
        Command::Flows(args) => flows::run(&cli.controller, &args)?,
        Command::Shards { command } => shards::run_shards(&cli.controller, &command)?,
        Command::Addresses { command } => shards::run_addresses(&cli.controller, &command)?,
        Command::Events(args) => shards::run_events(&cli.controller, &args)?,
        Command::Completions { .. } | Command::Man { .. } => String::new(),
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weft: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_subcommand() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let script = String::from_utf8(out).expect("UTF-8 script");
            for sub in ["topology", "shards", "weave", "network", "completions"] {
                assert!(script.contains(sub), "{shell}: no {sub} in\n{script}");
            }
        }
    }

    #[test]
    fn man_pages_cover_commands_and_subcommands() {
        let dir = std::env::temp_dir().join(format!("weft-man-{}", std::process::id()));
        let summary = man_pages(&dir).expect("man pages written");
        let page = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let top = page("weft.1");
        assert!(
            top.starts_with(".ie") || top.contains(".TH weft 1"),
            "{top}"
        );
        assert!(
            top.contains("topology") && top.contains("WEFT_CONTROLLER"),
            "{top}"
        );
        let deallocate = page("weft-shards-deallocate.1");
        assert!(deallocate.contains("wait"), "{deallocate}");
        assert!(summary.contains("weft-weave-create.1"), "{summary}");
        std::fs::remove_dir_all(&dir).expect("temporary dir removed");
    }

    #[test]
    fn endpoint_joins_without_doubling_slashes() {
        assert_eq!(
            endpoint("http://c:7070/", "/topology"),
            "http://c:7070/topology"
        );
        assert_eq!(
            endpoint("http://c:7070", "/topology.dot"),
            "http://c:7070/topology.dot"
        );
    }

    #[test]
    fn problem_detail_is_preferred_then_title_then_body() {
        let problem = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no resource at /x"}"#;
        assert_eq!(problem_message(problem), "no resource at /x");
        assert_eq!(problem_message(r#"{"title":"Bad Gateway"}"#), "Bad Gateway");
        assert_eq!(problem_message(" plain failure \n"), "plain failure");
    }

    #[test]
    fn formats_map_to_controller_paths() {
        use topology::Format;
        assert_eq!(Format::Ascii.path(), "/topology.txt");
        assert_eq!(Format::Dot.path(), "/topology.dot");
        assert_eq!(Format::Json.path(), "/topology");
        assert_eq!(Format::Svg.path(), "/topology.svg");
    }

    fn path_of(args: &[&str]) -> String {
        let mut full = vec!["weft", "topology"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full)
            .expect("valid command line")
            .command
        {
            Command::Topology { command } => topology::request_path(&command),
            _ => unreachable!("a topology command line"),
        }
    }

    #[test]
    fn topology_subcommands_map_to_controller_requests() {
        assert_eq!(
            path_of(&["show", "--since", "15m"]),
            "/topology.txt?since=15m"
        );
        assert_eq!(
            path_of(&[
                "show",
                "--format",
                "svg",
                "--since",
                "2026-11-23T16:00:00+01:00"
            ]),
            "/topology.svg?since=2026-11-23T16%3A00%3A00%2B01%3A00"
        );
        assert_eq!(path_of(&["services"]), "/services");
        assert_eq!(
            path_of(&["deps", "user service", "--direction", "inbound"]),
            "/services/user%20service/dependencies?direction=inbound"
        );
        assert_eq!(
            path_of(&["critical", "--until", "1h"]),
            "/analytics/critical?until=1h"
        );
        assert_eq!(
            path_of(&["bottlenecks", "--threshold-ms", "30", "--stat", "p99"]),
            "/analytics/bottlenecks?threshold_ms=30&stat=p99"
        );
        assert_eq!(path_of(&["patterns"]), "/analytics/patterns");
        assert_eq!(path_of(&["diff", "--from", "1h"]), "/topology/diff?from=1h");
    }

    #[test]
    fn bad_topology_arguments_are_refused() {
        for args in [
            vec!["weft", "topology", "deps"],
            vec!["weft", "topology", "deps", "x", "--direction", "sideways"],
            vec!["weft", "topology", "bottlenecks", "--stat", "p42"],
            vec!["weft", "topology", "bottlenecks", "--threshold-ms", "fast"],
            vec!["weft", "topology", "diff"],
            vec!["weft", "topology", "services", "--format", "dot"],
        ] {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn analytics_render_as_text() {
        let cmd = |args: &[&str]| {
            let mut full = vec!["weft", "topology"];
            full.extend_from_slice(args);
            match Cli::try_parse_from(full).expect("valid").command {
                Command::Topology { command } => command,
                _ => unreachable!("a topology command line"),
            }
        };
        let patterns = serde_json::json!({
            "total_observations": 455, "total_bytes": 10, "total_errors": 5,
            "avg_latency_ms": 26.2, "p50_latency_ms": 25.0, "p95_latency_ms": 53.0,
            "p99_latency_ms": 150.0, "error_rate": 5.0 / 455.0,
            "protocol_distribution": {"http": 205}, "service_count": 6, "dependency_count": 5,
        });
        let text = topology::render(&cmd(&["patterns"]), &patterns);
        assert!(text.contains("Total observations: 455"), "{text}");
        assert!(text.contains("Error rate: 1.10% (5 errors)"), "{text}");
        assert!(text.contains("http=205"), "{text}");
        let critical = serde_json::json!([{"service": "api", "connections": 3, "disconnects": 2}]);
        let text = topology::render(&cmd(&["critical"]), &critical);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("api") && l.ends_with('2')),
            "{text}"
        );
    }

    #[test]
    fn command_line_parses_format_and_controller() {
        let cli = Cli::try_parse_from([
            "weft",
            "topology",
            "show",
            "--format",
            "dot",
            "--controller",
            "http://h:1",
        ])
        .expect("valid command line");
        assert_eq!(cli.controller, "http://h:1");
        assert!(matches!(
            cli.command,
            Command::Topology {
                command: TopologyCommand::Show {
                    format: topology::Format::Dot,
                    ..
                }
            }
        ));
        assert!(Cli::try_parse_from(["weft", "topology", "show", "--format", "png"]).is_err());
    }
}
